//! Configuration of a registry node: one typed struct with embedded defaults; every setting is
//! a flag and a `TETHER_REGISTRY_*` environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::core::RegistrySettings;

/// Settings of `tether-registry` (and of a registry embedded in a gateway node).
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(name = "tether-registry", version, about = "Tether service registry speaking Netflix Eureka's REST API")]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "TETHER_REGISTRY_LISTEN", default_value = "127.0.0.1:8761")]
    pub listen: SocketAddr,

    /// Peer registries' base URLs (`http://host:port/eureka/`), comma-separated. Changes from
    /// clients are replicated to every peer; at start the registry copies the first peer that
    /// answers. A URL naming this node's own listen address is skipped.
    #[arg(long, env = "TETHER_REGISTRY_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,

    /// Lease duration for instances that do not set `leaseInfo.durationInSecs` (e.g. `90s`).
    #[arg(long, env = "TETHER_REGISTRY_LEASE_DURATION", default_value = "90s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// How often expired leases are evicted.
    #[arg(long, env = "TETHER_REGISTRY_EVICTION_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub eviction_interval: Duration,

    /// How long changes stay in `GET apps/delta`.
    #[arg(long, env = "TETHER_REGISTRY_DELTA_RETENTION", default_value = "180s", value_parser = parse_duration)]
    pub delta_retention: Duration,

    /// Largest accepted request body, in bytes (larger: 413).
    #[arg(long, env = "TETHER_REGISTRY_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Timeout of one request to a peer (connect included).
    #[arg(long, env = "TETHER_REGISTRY_PEER_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub peer_timeout: Duration,

    /// How long a change is retried (with exponential backoff) before replication to a peer
    /// gives up on it. Later renewals heal what was lost (a peer answering 404 gets the instance).
    #[arg(long, env = "TETHER_REGISTRY_REPLICATION_RETRY_FOR", default_value = "30s", value_parser = parse_duration)]
    pub replication_retry_for: Duration,

    /// Changes queued per peer at most; beyond, new changes for that peer are dropped (and healed
    /// by later renewals).
    #[arg(long, env = "TETHER_REGISTRY_REPLICATION_QUEUE", default_value_t = 10_000)]
    pub replication_queue: usize,

    /// Passes over the peer list when copying the registry at start (1 s apart).
    #[arg(long, env = "TETHER_REGISTRY_SYNC_ATTEMPTS", default_value_t = 1)]
    pub sync_attempts: u32,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `tether_registry=debug`.
    #[arg(long, env = "TETHER_REGISTRY_LOG", default_value = "info")]
    pub log: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8761)),
            peers: Vec::new(),
            lease_duration: Duration::from_secs(90),
            eviction_interval: Duration::from_secs(60),
            delta_retention: Duration::from_secs(180),
            max_body_bytes: 64 * 1024,
            peer_timeout: Duration::from_secs(5),
            replication_retry_for: Duration::from_secs(30),
            replication_queue: 10_000,
            sync_attempts: 1,
            log: "info".into(),
        }
    }
}

impl Config {
    /// The core registry's settings.
    pub fn registry_settings(&self) -> RegistrySettings {
        RegistrySettings {
            default_lease_duration_ms: u64::try_from(self.lease_duration.as_millis()).unwrap_or(u64::MAX),
            delta_retention_ms: u64::try_from(self.delta_retention.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// A duration that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: use e.g. 90s, 500ms, 2m, 1h or plain seconds")]
pub struct DurationError(pub String);

/// Parses `90s`, `500ms`, `2m`, `1h`, `1.5s` or plain seconds (`90`).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    let err = || DurationError(s.into());
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(err());
    }
    let value: f64 = num.parse().map_err(|_| err())?;
    let secs_per_unit = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(value * secs_per_unit).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 1h "), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "10x", "-1s", "1..2s", "ms10"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flag_defaults_equal_the_embedded_defaults() {
        let parsed = Config::try_parse_from(["tether-registry"]).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn flags_parse() {
        let c = Config::try_parse_from([
            "tether-registry",
            "--listen",
            "127.0.0.1:0",
            "--peers",
            "http://a:1/eureka/,http://b:2/eureka/",
            "--lease-duration",
            "500ms",
            "--delta-retention",
            "3",
        ])
        .unwrap();
        assert_eq!(c.peers, ["http://a:1/eureka/", "http://b:2/eureka/"]);
        assert_eq!(c.registry_settings().default_lease_duration_ms, 500);
        assert_eq!(c.registry_settings().delta_retention_ms, 3000);
    }
}
