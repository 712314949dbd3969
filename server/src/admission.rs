//! Admission of new connections, before any TLS work is spent on them: caps on open and
//! not-yet-logged-in connections, a handshake rate per source address, QUIC address validation
//! (a stateless retry) under load, and a growing back-off for addresses whose logins keep
//! failing.
//!
//! [`Admission`] is a pure state machine with time as an argument; the node's accept loop asks
//! it about each `quinn::Incoming` and holds an [`AdmissionGuard`] for each accepted connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

use crate::limits::TokenBucket;

/// The limits, all configurable (see `Config`).
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Open connections, logged in or not.
    pub max_connections: usize,
    /// Connections between the first packet and `login_ok`.
    pub max_pending_logins: usize,
    /// New connections per second from one address, sustained.
    pub handshakes_per_ip: u32,
    /// Burst of new connections from one address.
    pub handshake_burst: u32,
    /// Failed logins from one address before it is backed off.
    pub login_failures_per_ip: u32,
    /// Longest back-off (it starts at one second and doubles with each further failure).
    pub login_backoff_max: Duration,
}

/// Addresses tracked at most; past this, idle entries are forgotten.
pub const MAX_TRACKED_ADDRESSES: usize = 100_000;

/// What to do with a new connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead with the handshake.
    Accept,
    /// Ask the client to prove its address first (QUIC retry); it comes back validated.
    Retry,
    /// Turn it away (QUIC `CONNECTION_REFUSED`), for this reason.
    Refuse(Refusal),
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached.
    Connections,
    /// `max_pending_logins` reached.
    PendingLogins,
    /// The address opened connections faster than `handshakes_per_ip`.
    HandshakeRate,
    /// The address is backed off after failed logins.
    LoginBackoff,
}

impl Refusal {
    /// Label for the `tether_admission_total{result}` metric.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Connections => "refused_connections",
            Refusal::PendingLogins => "refused_pending_logins",
            Refusal::HandshakeRate => "refused_handshake_rate",
            Refusal::LoginBackoff => "refused_login_backoff",
        }
    }
}

#[derive(Debug)]
struct Address {
    handshakes: TokenBucket,
    failures: u32,
    backoff_until: Option<Instant>,
    last_seen: Instant,
}

/// Connection admission state of a node.
#[derive(Debug)]
pub struct Admission {
    cfg: AdmissionConfig,
    addresses: HashMap<IpAddr, Address>,
    connections: usize,
    pending: usize,
    /// Most connections open at once since [`Admission::take_peak`].
    peak: usize,
}

impl Admission {
    /// No connections yet.
    pub fn new(cfg: AdmissionConfig) -> Self {
        Admission { cfg, addresses: HashMap::new(), connections: 0, pending: 0, peak: 0 }
    }

    /// The most connections open at once since the last call (at least the current number).
    pub fn take_peak(&mut self) -> usize {
        std::mem::replace(&mut self.peak, self.connections).max(self.connections)
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// Connections not logged in yet.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Decides about a connection attempt from `ip`; `validated` when QUIC has proven the
    /// address (a retry token). On `Accept` the connection counts as open and pending.
    pub fn incoming(&mut self, ip: IpAddr, validated: bool, now: Instant) -> Verdict {
        if self.connections >= self.cfg.max_connections {
            return Verdict::Refuse(Refusal::Connections);
        }
        if self.pending >= self.cfg.max_pending_logins {
            return Verdict::Refuse(Refusal::PendingLogins);
        }
        // Under load (half the login slots taken) an address must be proven before any TLS
        // work is spent on it: a spoofed flood cannot answer a retry.
        if !validated && self.pending >= self.cfg.max_pending_logins / 2 {
            return Verdict::Retry;
        }
        let addr = self.address(ip, now);
        if let Some(until) = addr.backoff_until {
            if now < until {
                return Verdict::Refuse(Refusal::LoginBackoff);
            }
        }
        if !addr.handshakes.try_take(now) {
            return Verdict::Refuse(Refusal::HandshakeRate);
        }
        self.connections += 1;
        self.pending += 1;
        self.peak = self.peak.max(self.connections);
        Verdict::Accept
    }

    /// A connection of `ip` logged in: it no longer counts as pending, and the address's
    /// failures are forgiven.
    pub fn logged_in(&mut self, ip: IpAddr) {
        self.pending = self.pending.saturating_sub(1);
        if let Some(a) = self.addresses.get_mut(&ip) {
            a.failures = 0;
            a.backoff_until = None;
        }
    }

    /// A login from `ip` failed. Past `login_failures_per_ip` failures the address is backed
    /// off: one second, doubling with every further failure up to `login_backoff_max`.
    /// Returns the back-off now in force, if any.
    pub fn login_failed(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let limit = self.cfg.login_failures_per_ip;
        let max = self.cfg.login_backoff_max;
        let a = self.address(ip, now);
        a.failures = a.failures.saturating_add(1);
        if a.failures < limit.max(1) {
            return None;
        }
        let doublings = (a.failures - limit.max(1)).min(30);
        let backoff = Duration::from_secs(1u64 << doublings).min(max);
        a.backoff_until = Some(now + backoff);
        Some(backoff)
    }

    /// A connection ended; `pending` when it never logged in.
    pub fn closed(&mut self, pending: bool) {
        self.connections = self.connections.saturating_sub(1);
        if pending {
            self.pending = self.pending.saturating_sub(1);
        }
    }

    /// Addresses tracked.
    pub fn tracked(&self) -> usize {
        self.addresses.len()
    }

    fn address(&mut self, ip: IpAddr, now: Instant) -> &mut Address {
        if self.addresses.len() >= MAX_TRACKED_ADDRESSES && !self.addresses.contains_key(&ip) {
            // Forget addresses whose bucket has refilled and that are not backed off: they
            // would start the same way again.
            let refill = Duration::from_secs_f64(
                f64::from(self.cfg.handshake_burst.max(1)) / f64::from(self.cfg.handshakes_per_ip.max(1)),
            );
            self.addresses.retain(|_, a| {
                a.backoff_until.is_some_and(|u| u > now) || now.saturating_duration_since(a.last_seen) < refill
            });
        }
        let (rate, burst) = (self.cfg.handshakes_per_ip, self.cfg.handshake_burst);
        let a = self.addresses.entry(ip).or_insert_with(|| Address {
            handshakes: TokenBucket::new(rate, burst, now),
            failures: 0,
            backoff_until: None,
            last_seen: now,
        });
        a.last_seen = now;
        a
    }
}

/// An accepted connection's place in the [`Admission`] counts, given back when it is dropped.
///
/// It also keeps the `tether_pending_logins` gauge: up while the connection has not logged in.
#[derive(Debug)]
pub struct AdmissionGuard {
    admission: Arc<Mutex<Admission>>,
    ip: IpAddr,
    pending: bool,
    pending_gauge: Gauge,
}

fn lock(m: &Mutex<Admission>) -> std::sync::MutexGuard<'_, Admission> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AdmissionGuard {
    /// Takes over a connection that [`Admission::incoming`] accepted; `pending_gauge` counts
    /// it until it logs in or ends.
    pub fn new(admission: Arc<Mutex<Admission>>, ip: IpAddr, pending_gauge: Gauge) -> Self {
        pending_gauge.inc();
        AdmissionGuard { admission, ip, pending: true, pending_gauge }
    }

    /// The connection logged in.
    pub fn logged_in(&mut self) {
        if std::mem::replace(&mut self.pending, false) {
            self.pending_gauge.dec();
            lock(&self.admission).logged_in(self.ip);
        }
    }

    /// A login on this connection failed; returns the back-off its address is now under.
    pub fn login_failed(&self, now: Instant) -> Option<Duration> {
        lock(&self.admission).login_failed(self.ip, now)
    }
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        if self.pending {
            self.pending_gauge.dec();
        }
        lock(&self.admission).closed(self.pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AdmissionConfig {
        AdmissionConfig {
            max_connections: 10,
            max_pending_logins: 4,
            handshakes_per_ip: 1,
            handshake_burst: 3,
            login_failures_per_ip: 2,
            login_backoff_max: Duration::from_secs(8),
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn pending_logins_are_capped_and_validated_under_load() {
        let t = Instant::now();
        let mut a = Admission::new(cfg());
        assert_eq!(a.incoming(ip(1), false, t), Verdict::Accept);
        assert_eq!(a.incoming(ip(2), false, t), Verdict::Accept);
        // Half the login slots are taken: unproven addresses are asked to retry.
        assert_eq!(a.incoming(ip(3), false, t), Verdict::Retry);
        assert_eq!(a.incoming(ip(3), true, t), Verdict::Accept);
        assert_eq!(a.incoming(ip(4), true, t), Verdict::Accept);
        assert_eq!(a.incoming(ip(5), true, t), Verdict::Refuse(Refusal::PendingLogins));
        // A login frees a slot; a connection that ends before its login frees one too.
        a.logged_in(ip(1));
        assert_eq!(a.pending(), 3);
        assert_eq!(a.incoming(ip(5), true, t), Verdict::Accept);
        a.closed(true);
        a.closed(false);
        assert_eq!((a.connections(), a.pending()), (3, 3));
        assert_eq!(a.take_peak(), 5, "five were open at once");
        assert_eq!(a.take_peak(), 3, "since then: the current number");
    }

    #[test]
    fn open_connections_are_capped() {
        let t = Instant::now();
        let mut a = Admission::new(AdmissionConfig { max_connections: 2, handshake_burst: 10, ..cfg() });
        for n in 0..2 {
            assert_eq!(a.incoming(ip(n), true, t), Verdict::Accept);
            a.logged_in(ip(n));
        }
        assert_eq!(a.incoming(ip(9), true, t), Verdict::Refuse(Refusal::Connections));
        a.closed(false);
        assert_eq!(a.incoming(ip(9), true, t), Verdict::Accept);
    }

    #[test]
    fn one_address_gets_its_burst_then_its_rate() {
        let t = Instant::now();
        let mut a = Admission::new(AdmissionConfig { max_pending_logins: 100, ..cfg() });
        for _ in 0..3 {
            assert_eq!(a.incoming(ip(1), true, t), Verdict::Accept);
            a.logged_in(ip(1));
        }
        assert_eq!(a.incoming(ip(1), true, t), Verdict::Refuse(Refusal::HandshakeRate));
        // Another address is not affected.
        assert_eq!(a.incoming(ip(2), true, t), Verdict::Accept);
        // One second later: one more.
        let t1 = t + Duration::from_secs(1);
        assert_eq!(a.incoming(ip(1), true, t1), Verdict::Accept);
        assert_eq!(a.incoming(ip(1), true, t1), Verdict::Refuse(Refusal::HandshakeRate));
    }

    #[test]
    fn failed_logins_back_an_address_off_doubling_up_to_the_maximum() {
        let t = Instant::now();
        let mut a = Admission::new(AdmissionConfig { handshake_burst: 100, handshakes_per_ip: 100, ..cfg() });
        assert_eq!(a.login_failed(ip(1), t), None);
        assert_eq!(a.login_failed(ip(1), t), Some(Duration::from_secs(1)));
        assert_eq!(a.incoming(ip(1), true, t), Verdict::Refuse(Refusal::LoginBackoff));
        assert_eq!(a.incoming(ip(2), true, t), Verdict::Accept, "other addresses are not affected");
        let t1 = t + Duration::from_secs(1);
        assert_eq!(a.incoming(ip(1), true, t1), Verdict::Accept, "the back-off is over");
        assert_eq!(a.login_failed(ip(1), t1), Some(Duration::from_secs(2)));
        assert_eq!(a.login_failed(ip(1), t1), Some(Duration::from_secs(4)));
        assert_eq!(a.login_failed(ip(1), t1), Some(Duration::from_secs(8)));
        assert_eq!(a.login_failed(ip(1), t1), Some(Duration::from_secs(8)), "capped");
        assert_eq!(a.incoming(ip(1), true, t1 + Duration::from_secs(7)), Verdict::Refuse(Refusal::LoginBackoff));
        // A successful login forgives.
        a.logged_in(ip(1));
        assert_eq!(a.incoming(ip(1), true, t1), Verdict::Accept);
        assert_eq!(a.login_failed(ip(1), t1), None);
    }

    #[test]
    fn tracked_addresses_are_bounded() {
        let t = Instant::now();
        let mut a =
            Admission::new(AdmissionConfig { max_connections: usize::MAX, max_pending_logins: usize::MAX, ..cfg() });
        for n in 0..(MAX_TRACKED_ADDRESSES as u32 + 10) {
            a.incoming(IpAddr::from(n.to_be_bytes()), true, t);
        }
        let later = t + Duration::from_secs(60);
        a.incoming(ip(200), true, later);
        assert!(a.tracked() < 10, "idle addresses were forgotten: {}", a.tracked());
    }
}
