//! Routable QUIC connection ids in the plaintext (unencrypted) format of QUIC-LB
//! (draft-ietf-quic-load-balancers, "QUIC-LB: Generating Routable QUIC Connection IDs").
//!
//! Every connection id this node issues (the server's first Source Connection ID and every
//! `NEW_CONNECTION_ID`) names the node, so a QUIC-LB-aware layer-4 load balancer routes a
//! client's packets to the node that holds its session even after the client's address changes
//! (connection migration, NAT rebinding):
//!
//! ```text
//!  octet 0            octets 1 ..= S       octets S+1 ..= S+N
//! +-----+-----------+--------------------+--------------------+
//! | CR  | LEN       | server id (S bytes) | nonce (N bytes)    |
//! | 3 b | 5 b       | 1..=15              | 4..=18, random     |
//! +-----+-----------+--------------------+--------------------+
//!   CR  = config id (config rotation bits), 0..=6; 7 means "unroutable"
//!   LEN = CID length minus one (length self-description) = S + N
//! ```
//!
//! The server side is [`QuicLbCidGenerator`] (a [`quinn::ConnectionIdGenerator`]) and
//! [`endpoint_config`]; the load balancer side is [`packet_dcid`], [`decode`] and [`route`].
//! docs/quic-lb.md is the operator's page.

use std::time::Duration;

use rand::RngCore;
use thiserror::Error;

/// The config id (config rotation codepoint) reserved for unroutable connection ids.
pub const UNROUTABLE_CONFIG_ID: u8 = 0b111;

/// The longest connection id QUIC version 1 allows.
pub const MAX_CID_LEN: usize = 20;

/// Shortest server id, in bytes.
pub const MIN_SERVER_ID_LEN: usize = 1;
/// Longest server id, in bytes.
pub const MAX_SERVER_ID_LEN: usize = 15;
/// Shortest nonce, in bytes.
pub const MIN_NONCE_LEN: u8 = 4;
/// Longest nonce, in bytes.
pub const MAX_NONCE_LEN: u8 = 18;

/// Default `--quic-lb-config-id`.
pub const DEFAULT_CONFIG_ID: u8 = 0;
/// Default `--quic-lb-nonce-len`.
pub const DEFAULT_NONCE_LEN: u8 = 6;

/// A QUIC-LB configuration that is not usable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuicLbError {
    /// The config id is not in 0..=6 (7 is reserved for unroutable connection ids).
    #[error("QUIC-LB config id {0} out of range: must be 0..=6 (7 is reserved for unroutable CIDs)")]
    ConfigId(u8),
    /// The server id is not 1..=15 bytes long.
    #[error("QUIC-LB server id is {0} bytes: must be 1..=15")]
    ServerIdLen(usize),
    /// The nonce length is not in 4..=18.
    #[error("QUIC-LB nonce length {0} out of range: must be 4..=18")]
    NonceLen(u8),
    /// First octet + server id + nonce exceed the 20-byte QUIC v1 connection id limit.
    #[error("QUIC-LB connection id would be {0} bytes (1 + server id + nonce): QUIC allows at most 20")]
    CidTooLong(usize),
    /// The server id given as text is not hexadecimal.
    #[error("QUIC-LB server id {0:?} is not hex (expected e.g. 0007 for two bytes)")]
    ServerIdHex(String),
    /// An explicit nonce does not have the configured length.
    #[error("nonce is {got} bytes, the config says {want}")]
    NonceMismatch {
        /// Bytes given.
        got: usize,
        /// Bytes the config asks for.
        want: usize,
    },
}

/// One QUIC-LB plaintext configuration, as the node that issues connection ids sees it.
///
/// A load balancer holds one of these per server (same `config_id`, `nonce_len` and server id
/// length for all servers of one config; a different `server_id` each).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QuicLbConfig {
    /// Config rotation codepoint, 0..=6, written to the top 3 bits of the first octet.
    pub config_id: u8,
    /// This node's server id, 1..=15 opaque bytes, written in clear after the first octet.
    pub server_id: Vec<u8>,
    /// Random bytes after the server id, 4..=18.
    pub nonce_len: u8,
}

impl QuicLbConfig {
    /// A validated configuration.
    pub fn new(config_id: u8, server_id: Vec<u8>, nonce_len: u8) -> Result<Self, QuicLbError> {
        let cfg = QuicLbConfig { config_id, server_id, nonce_len };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The default for a node: config id 0, server id = `node_id` as 2 bytes big-endian,
    /// 6-byte nonce, hence 9-byte connection ids.
    pub fn for_node(node_id: u16) -> Self {
        QuicLbConfig {
            config_id: DEFAULT_CONFIG_ID,
            server_id: node_id.to_be_bytes().to_vec(),
            nonce_len: DEFAULT_NONCE_LEN,
        }
    }

    /// The configuration from the operator flags `--quic-lb-config-id`, `--quic-lb-server-id`
    /// (hex; `None` or empty = `node_id` as 2 bytes big-endian) and `--quic-lb-nonce-len`.
    pub fn from_flags(
        config_id: u8,
        server_id_hex: Option<&str>,
        nonce_len: u8,
        node_id: u16,
    ) -> Result<Self, QuicLbError> {
        let server_id = match server_id_hex.map(str::trim).filter(|s| !s.is_empty()) {
            None => node_id.to_be_bytes().to_vec(),
            Some(h) => {
                let h = h.strip_prefix("0x").or_else(|| h.strip_prefix("0X")).unwrap_or(h);
                hex::decode(h).map_err(|_| QuicLbError::ServerIdHex(h.to_string()))?
            }
        };
        QuicLbConfig::new(config_id, server_id, nonce_len)
    }

    /// Checks the limits of the draft: config id 0..=6, server id 1..=15 bytes, nonce 4..=18
    /// bytes, whole connection id at most 20 bytes.
    pub fn validate(&self) -> Result<(), QuicLbError> {
        if self.config_id >= UNROUTABLE_CONFIG_ID {
            return Err(QuicLbError::ConfigId(self.config_id));
        }
        if !(MIN_SERVER_ID_LEN..=MAX_SERVER_ID_LEN).contains(&self.server_id.len()) {
            return Err(QuicLbError::ServerIdLen(self.server_id.len()));
        }
        if !(MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&self.nonce_len) {
            return Err(QuicLbError::NonceLen(self.nonce_len));
        }
        if self.cid_len() > MAX_CID_LEN {
            return Err(QuicLbError::CidTooLong(self.cid_len()));
        }
        Ok(())
    }

    /// Length of the connection ids of this config: 1 + server id + nonce.
    pub fn cid_len(&self) -> usize {
        1 + self.server_id.len() + usize::from(self.nonce_len)
    }

    /// The first octet of every connection id of this config: the config id in the top 3 bits,
    /// the connection id length minus one in the low 5 bits (length self-description).
    pub fn first_octet(&self) -> u8 {
        // cid_len() - 1 <= 19 for a valid config; the mask keeps an invalid one from spilling
        // into the config bits.
        ((self.config_id & 0b111) << 5) | ((self.cid_len() - 1) as u8 & 0b1_1111)
    }

    /// The server id as lowercase hex (as `--quic-lb-server-id` takes it).
    pub fn server_id_hex(&self) -> String {
        hex::encode(&self.server_id)
    }

    /// The connection id with an explicit nonce: first octet, server id, nonce. For test
    /// vectors and documentation; the generator draws a fresh random nonce for every id.
    pub fn build_cid(&self, nonce: &[u8]) -> Result<Vec<u8>, QuicLbError> {
        self.validate()?;
        if nonce.len() != usize::from(self.nonce_len) {
            return Err(QuicLbError::NonceMismatch { got: nonce.len(), want: usize::from(self.nonce_len) });
        }
        let mut cid = Vec::with_capacity(self.cid_len());
        cid.push(self.first_octet());
        cid.extend_from_slice(&self.server_id);
        cid.extend_from_slice(nonce);
        Ok(cid)
    }
}

/// A [`quinn::ConnectionIdGenerator`] that issues QUIC-LB plaintext connection ids: first
/// octet (config id + length), server id, then a nonce from the thread-local CSPRNG, fresh for
/// every id, so ids of one connection share nothing an observer could link beyond the server id.
#[derive(Debug, Clone)]
pub struct QuicLbCidGenerator {
    cfg: QuicLbConfig,
    lifetime: Option<Duration>,
}

impl QuicLbCidGenerator {
    /// A generator for a validated configuration.
    pub fn new(cfg: QuicLbConfig) -> Result<Self, QuicLbError> {
        cfg.validate()?;
        Ok(QuicLbCidGenerator { cfg, lifetime: None })
    }

    /// Retire and replace each issued connection id after `d` (quinn's
    /// [`cid_lifetime`](quinn::ConnectionIdGenerator::cid_lifetime)); the default is never.
    pub fn with_lifetime(mut self, d: Duration) -> Self {
        self.lifetime = Some(d);
        self
    }

    /// The configuration the ids follow.
    pub fn config(&self) -> &QuicLbConfig {
        &self.cfg
    }
}

impl quinn::ConnectionIdGenerator for QuicLbCidGenerator {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let sid = self.cfg.server_id.len();
        let len = self.cfg.cid_len();
        let mut buf = [0u8; MAX_CID_LEN];
        buf[0] = self.cfg.first_octet();
        buf[1..1 + sid].copy_from_slice(&self.cfg.server_id);
        rand::rng().fill_bytes(&mut buf[1 + sid..len]);
        quinn::ConnectionId::new(&buf[..len])
    }

    fn cid_len(&self) -> usize {
        self.cfg.cid_len()
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        self.lifetime
    }
}

/// A [`quinn::EndpointConfig`] (defaults otherwise, random stateless-reset key) whose endpoint
/// issues QUIC-LB connection ids for `cfg`, or the reason `cfg` is unusable.
pub fn try_endpoint_config(cfg: &QuicLbConfig) -> Result<quinn::EndpointConfig, QuicLbError> {
    let generator = QuicLbCidGenerator::new(cfg.clone())?;
    let mut ec = quinn::EndpointConfig::default();
    ec.cid_generator(move || Box::new(generator.clone()));
    Ok(ec)
}

/// A [`quinn::EndpointConfig`] whose endpoint issues QUIC-LB connection ids for `cfg`.
///
/// # Panics
///
/// If `cfg` is invalid: check it first ([`QuicLbConfig::new`], [`QuicLbConfig::from_flags`],
/// [`QuicLbConfig::validate`]) or use [`try_endpoint_config`].
pub fn endpoint_config(cfg: &QuicLbConfig) -> quinn::EndpointConfig {
    match try_endpoint_config(cfg) {
        Ok(ec) => ec,
        Err(e) => panic!("invalid QUIC-LB config: {e}"),
    }
}

/// What a load balancer reads from a connection id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decoded {
    /// The config id (top 3 bits of the first octet).
    pub config_id: u8,
    /// The server id that follows the first octet.
    pub server_id: Vec<u8>,
}

/// Reads the config id and the server id from a destination connection id (or from at least
/// its first `cid_len` bytes, e.g. a short-header packet from byte 1 on), with the load
/// balancer's `configs` (only `config_id`, the server id length and `nonce_len` are used).
///
/// `None` (unroutable, use the fallback) for config id 7, a config id none of `configs` has,
/// or a connection id shorter than that config's length.
pub fn decode(dcid: &[u8], configs: &[QuicLbConfig]) -> Option<Decoded> {
    let first = *dcid.first()?;
    let config_id = first >> 5;
    if config_id == UNROUTABLE_CONFIG_ID {
        return None;
    }
    let cfg = configs.iter().find(|c| c.config_id == config_id)?;
    if dcid.len() < cfg.cid_len() {
        return None;
    }
    let server_id = dcid.get(1..1 + cfg.server_id.len())?.to_vec();
    Some(Decoded { config_id, server_id })
}

/// The configured server a destination connection id routes to: the entry of `configs` (one
/// per server) whose config id and server id it carries. `None` = unroutable.
pub fn route<'a>(dcid: &[u8], configs: &'a [QuicLbConfig]) -> Option<&'a QuicLbConfig> {
    let d = decode(dcid, configs)?;
    configs.iter().find(|c| c.config_id == d.config_id && c.server_id == d.server_id)
}

/// The header form of a QUIC packet (the 0x80 bit of its first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderForm {
    /// 0x80 clear: 1-RTT packet; the DCID starts at byte 1 and its length is not on the wire.
    Short,
    /// 0x80 set: Initial, 0-RTT, Handshake, Retry or version negotiation; the DCID length is
    /// byte 5 and the DCID follows it.
    Long,
}

/// The destination connection id of a packet, as [`packet_dcid`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketDcid<'a> {
    /// Short or long header.
    pub form: HeaderForm,
    /// The destination connection id bytes.
    pub dcid: &'a [u8],
}

/// Finds the destination connection id of a QUIC packet (the first packet of a UDP datagram;
/// coalesced packets share it), following the version-independent invariants (RFC 8999).
/// `short_cid_len` is the length the servers use (a short header does not carry it:
/// [`QuicLbConfig::cid_len`]). `None` if the datagram is too short to hold it.
pub fn packet_dcid(packet: &[u8], short_cid_len: usize) -> Option<PacketDcid<'_>> {
    let first = *packet.first()?;
    if first & 0x80 == 0 {
        let dcid = packet.get(1..1 + short_cid_len)?;
        Some(PacketDcid { form: HeaderForm::Short, dcid })
    } else {
        let len = usize::from(*packet.get(5)?);
        let dcid = packet.get(6..6 + len)?;
        Some(PacketDcid { form: HeaderForm::Long, dcid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::ConnectionIdGenerator;

    fn cfg(config_id: u8, sid: &[u8], nonce_len: u8) -> QuicLbConfig {
        QuicLbConfig::new(config_id, sid.to_vec(), nonce_len).expect("valid config")
    }

    #[test]
    fn generated_cids_round_trip_through_decode_for_several_configs() {
        let configs = [
            QuicLbConfig::for_node(0),
            QuicLbConfig::for_node(7),
            QuicLbConfig::for_node(u16::MAX),
            cfg(1, &[0xab], 4),
            cfg(2, &[0x01, 0x02, 0x03], 8),
            cfg(5, &[0x11; 15], 4),
            cfg(6, &[0xfe], 18),
        ];
        for c in &configs {
            let mut g = QuicLbCidGenerator::new(c.clone()).expect("generator");
            assert_eq!(g.cid_len(), c.cid_len());
            assert_eq!(g.cid_lifetime(), None);
            for _ in 0..32 {
                let cid = g.generate_cid();
                assert_eq!(cid.len(), c.cid_len(), "{c:?}");
                assert_eq!(cid[0] >> 5, c.config_id);
                assert_eq!(usize::from(cid[0] & 0x1f), c.cid_len() - 1, "length self-description");
                let d = decode(&cid, std::slice::from_ref(c)).expect("decodes");
                assert_eq!(d, Decoded { config_id: c.config_id, server_id: c.server_id.clone() });
                // Through a short-header packet too, with the payload behind the DCID.
                let mut pkt = vec![0x41];
                pkt.extend_from_slice(&cid);
                pkt.extend_from_slice(&[0xee; 30]);
                let p = packet_dcid(&pkt, c.cid_len()).expect("dcid");
                assert_eq!(p.form, HeaderForm::Short);
                assert_eq!(p.dcid, &cid[..]);
                assert_eq!(decode(p.dcid, std::slice::from_ref(c)), Some(d));
            }
        }
    }

    #[test]
    fn for_node_is_config_0_two_byte_server_id_six_byte_nonce() {
        let c = QuicLbConfig::for_node(0x0102);
        assert_eq!(c, QuicLbConfig { config_id: 0, server_id: vec![1, 2], nonce_len: 6 });
        assert_eq!(c.cid_len(), 9);
        assert_eq!(c.first_octet(), 0x08);
        assert!(c.validate().is_ok());
        assert_eq!(c.server_id_hex(), "0102");
    }

    #[test]
    fn nonce_differs_between_cids() {
        let mut g = QuicLbCidGenerator::new(QuicLbConfig::for_node(3)).expect("generator");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let cid = g.generate_cid();
            assert_eq!(&cid[..3], &[0x08, 0x00, 0x03]);
            assert!(seen.insert(cid[3..].to_vec()), "nonce repeated");
        }
    }

    #[test]
    fn invalid_configs_are_refused() {
        assert_eq!(QuicLbConfig::new(7, vec![1], 6), Err(QuicLbError::ConfigId(7)));
        assert_eq!(QuicLbConfig::new(200, vec![1], 6), Err(QuicLbError::ConfigId(200)));
        assert_eq!(QuicLbConfig::new(0, vec![], 6), Err(QuicLbError::ServerIdLen(0)));
        assert_eq!(QuicLbConfig::new(0, vec![0; 16], 4), Err(QuicLbError::ServerIdLen(16)));
        assert_eq!(QuicLbConfig::new(0, vec![1], 3), Err(QuicLbError::NonceLen(3)));
        assert_eq!(QuicLbConfig::new(0, vec![1], 19), Err(QuicLbError::NonceLen(19)));
        assert_eq!(QuicLbConfig::new(0, vec![0; 15], 5), Err(QuicLbError::CidTooLong(21)));
        assert_eq!(QuicLbConfig::new(0, vec![0; 3], 18), Err(QuicLbError::CidTooLong(22)));
        // The limits themselves are fine.
        assert!(QuicLbConfig::new(6, vec![0; 15], 4).is_ok());
        assert!(QuicLbConfig::new(0, vec![0; 1], 18).is_ok());
        let bad = QuicLbConfig { config_id: 7, server_id: vec![1], nonce_len: 6 };
        assert!(QuicLbCidGenerator::new(bad.clone()).is_err());
        assert!(try_endpoint_config(&bad).is_err());
        assert!(try_endpoint_config(&QuicLbConfig::for_node(1)).is_ok());
        assert!(bad.build_cid(&[0; 6]).is_err());
        assert_eq!(QuicLbConfig::for_node(1).build_cid(&[0; 5]), Err(QuicLbError::NonceMismatch { got: 5, want: 6 }));
    }

    #[test]
    fn from_flags_defaults_to_the_node_id_and_parses_hex() {
        assert_eq!(QuicLbConfig::from_flags(0, None, 6, 42), Ok(QuicLbConfig::for_node(42)));
        assert_eq!(QuicLbConfig::from_flags(0, Some(""), 6, 42), Ok(QuicLbConfig::for_node(42)));
        assert_eq!(QuicLbConfig::from_flags(2, Some("0xC4605e"), 4, 1), Ok(cfg(2, &[0xc4, 0x60, 0x5e], 4)));
        assert_eq!(QuicLbConfig::from_flags(0, Some("abc"), 6, 1), Err(QuicLbError::ServerIdHex("abc".into())));
        assert_eq!(QuicLbConfig::from_flags(0, Some("zz"), 6, 1), Err(QuicLbError::ServerIdHex("zz".into())));
        assert_eq!(QuicLbConfig::from_flags(7, None, 6, 1), Err(QuicLbError::ConfigId(7)));
    }

    #[test]
    fn unroutable_or_unknown_config_ids_decode_to_none() {
        let configs = [QuicLbConfig::for_node(1), cfg(3, &[9], 4)];
        // Config id 7, even with a well-formed rest.
        let mut cid = configs[0].build_cid(&[1, 2, 3, 4, 5, 6]).expect("cid");
        cid[0] |= 0b1110_0000;
        assert_eq!(decode(&cid, &configs), None);
        // Config ids the load balancer does not know.
        for id in [1u8, 2, 4, 5, 6] {
            cid[0] = (id << 5) | (cid[0] & 0x1f);
            assert_eq!(decode(&cid, &configs), None, "config id {id}");
        }
        // A known config id decodes with that config's server id length.
        cid[0] = 3 << 5;
        assert_eq!(decode(&cid, &configs), Some(Decoded { config_id: 3, server_id: vec![0x00] }));
        // Too short for its config, or empty.
        assert_eq!(decode(&[0x08, 0x00, 0x01, 1, 2], &configs), None);
        assert_eq!(decode(&[], &configs), None);
        // No configs at all: everything is unroutable.
        assert_eq!(decode(&configs[0].build_cid(&[0; 6]).expect("cid"), &[]), None);
    }

    #[test]
    fn route_picks_the_server_the_cid_names() {
        let pool = [QuicLbConfig::for_node(1), QuicLbConfig::for_node(2)];
        for (i, c) in pool.iter().enumerate() {
            let cid = QuicLbCidGenerator::new(c.clone()).expect("generator").generate_cid();
            assert_eq!(route(&cid, &pool), Some(&pool[i]));
        }
        // A server id no server has.
        let stranger = QuicLbConfig::for_node(3).build_cid(&[0; 6]).expect("cid");
        assert_eq!(route(&stranger, &pool), None);
    }

    #[test]
    fn draft_test_vector_unencrypted() {
        // draft-ietf-quic-load-balancers, "Load Balancer Test Vectors", unencrypted CIDs:
        // cr_bits 0, sid c4605e, nonce 4504cc4f -> cid 07c4605e4504cc4f.
        let c = cfg(0, &[0xc4, 0x60, 0x5e], 4);
        let cid = c.build_cid(&[0x45, 0x04, 0xcc, 0x4f]).expect("cid");
        assert_eq!(hex::encode(&cid), "07c4605e4504cc4f");
        assert_eq!(decode(&cid, &[c]), Some(Decoded { config_id: 0, server_id: vec![0xc4, 0x60, 0x5e] }));
    }

    #[test]
    fn worked_example_of_the_docs() {
        // docs/quic-lb.md: node 3 with the defaults, nonce 5f1a93c20d7b.
        let c = QuicLbConfig::for_node(3);
        let cid = c.build_cid(&[0x5f, 0x1a, 0x93, 0xc2, 0x0d, 0x7b]).expect("cid");
        assert_eq!(hex::encode(&cid), "0800035f1a93c20d7b");
        // A 1-RTT packet to it, as the load balancer receives it.
        let pkt = hex::decode("430800035f1a93c20d7b9e41d7").expect("hex");
        let p = packet_dcid(&pkt, 9).expect("dcid");
        assert_eq!((p.form, p.dcid), (HeaderForm::Short, &cid[..]));
        assert_eq!(
            decode(p.dcid, std::slice::from_ref(&c)),
            Some(Decoded { config_id: 0, server_id: vec![0x00, 0x03] })
        );
        // With config id 2 the first octet becomes 0x48.
        let c2 = QuicLbConfig { config_id: 2, ..c.clone() };
        assert_eq!(c2.first_octet(), 0x48);
        // --quic-lb-config-id 2 --quic-lb-server-id 0a0b0c --quic-lb-nonce-len 8.
        let c3 = QuicLbConfig::from_flags(2, Some("0a0b0c"), 8, 3).expect("config");
        assert_eq!(c3.cid_len(), 12);
        let cid3 = c3.build_cid(&hex::decode("0123456789abcdef").expect("hex")).expect("cid");
        assert_eq!(hex::encode(&cid3), "4b0a0b0c0123456789abcdef");
        assert_eq!(route(&cid3, &[c.clone(), c3.clone()]), Some(&c3));
        // A Handshake packet (long header): version 1, DCID length 9 at byte 5.
        let long = hex::decode("e300000001090800035f1a93c20d7b08aabbccddeeff0011").expect("hex");
        let p = packet_dcid(&long, 9).expect("dcid");
        assert_eq!((p.form, p.dcid), (HeaderForm::Long, &cid[..]));
    }

    #[test]
    fn packet_dcid_refuses_truncated_packets() {
        assert_eq!(packet_dcid(&[], 9), None);
        assert_eq!(packet_dcid(&[0x40, 0x08, 0x00], 9), None);
        assert_eq!(packet_dcid(&[0xc0, 0, 0, 0, 1], 9), None);
        assert_eq!(packet_dcid(&[0xc0, 0, 0, 0, 1, 4, 1, 2, 3], 9), None);
        let p = packet_dcid(&[0xc0, 0, 0, 0, 1, 0], 9).expect("empty dcid");
        assert_eq!((p.form, p.dcid), (HeaderForm::Long, &[][..]));
    }
}
