//! The Tether wire protocol.
//!
//! A Tether session is one ordered, reliable byte stream (a QUIC bidirectional stream today)
//! carrying *frames*. Each frame is a big-endian `u32` length followed by that many bytes of
//! MessagePack: a map with named fields, one of which, `type`, names the frame. The full
//! specification, with test vectors, is `docs/protocol.md`; this crate is its reference
//! implementation and holds no I/O, no runtime and no clock.
//!
//! ```
//! use bytes::BytesMut;
//! use tether_proto::{Decoded, Decoder, Frame, Ping};
//!
//! let mut buf = BytesMut::new();
//! tether_proto::encode(&Frame::Ping(Ping { nonce: 7 }), &mut buf).unwrap();
//! let mut decoder = Decoder::new(64 * 1024);
//! match decoder.decode(&mut buf).unwrap() {
//!     Some(Decoded::Frame(Frame::Ping(p))) => assert_eq!(p.nonce, 7),
//!     other => panic!("unexpected {other:?}"),
//! }
//! ```

mod codec;
mod error;
mod frame;
pub mod metadata;
pub mod vectors;

pub use codec::{encode, encode_body, encode_deliver, Decoded, Decoder, LEN_PREFIX};
pub use error::{DecodeError, EncodeError};
pub use frame::*;

/// The ALPN protocol id a Tether client and server negotiate in the TLS handshake.
pub const ALPN: &[u8] = b"tether/1";

/// The highest protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The lowest protocol version this crate still accepts.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// Default maximum frame body size in bytes (the length prefix excluded).
pub const DEFAULT_MAX_FRAME: u32 = 64 * 1024;

/// Picks the protocol version for a session: the highest version both sides speak.
///
/// `client_max` is the version a client sends in [`Login`]; returns `None` when the client is
/// older than [`MIN_PROTOCOL_VERSION`].
pub fn negotiate_version(client_max: u32) -> Option<u32> {
    if client_max < MIN_PROTOCOL_VERSION {
        None
    } else {
        Some(client_max.min(PROTOCOL_VERSION))
    }
}
