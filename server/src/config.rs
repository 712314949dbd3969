//! Node configuration: one typed struct, every field a flag and a `TETHER_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// How hard SQLite syncs a commit to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum StoreSync {
    /// fsync the WAL on every commit: a `send_ack` survives power loss. Commits are batched, so
    /// this costs one fsync per batch, not per message.
    #[default]
    Full,
    /// fsync only at checkpoints: a `send_ack` survives a process crash but not power loss.
    Normal,
}

/// Commands besides running a node.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Store maintenance.
    Store {
        /// What to do.
        #[command(subcommand)]
        op: StoreCommand,
    },
}

/// `tether-server store ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum StoreCommand {
    /// Copies an embedded node's data (log store or SQLite) into a shared database (PostgreSQL, MySQL): messages,
    /// inboxes, rooms, members, room logs, cursors and tickets. Idempotent and resumable: run
    /// it again to finish an interrupted copy or to catch up; run the last pass with the node
    /// stopped.
    Copy {
        /// Source, `log://DIR` (an embedded node's `<data dir>/log`) or `sqlite://PATH`.
        #[arg(long)]
        from: String,
        /// Target, `postgres://...` or `mysql://...`.
        #[arg(long)]
        to: String,
        /// Rows per transaction.
        #[arg(long, default_value_t = 2000)]
        chunk: u32,
    },
    /// Repairs a damaged log store (the node must be stopped): cuts each damaged record out
    /// of its segment, keeping a copy of the damaged file as `<segment>.seg.corrupt-N`. What a
    /// damaged record held is lost; every intact record before and after it is kept.
    Repair {
        /// The log directory (`<data dir>/log` by default).
        #[arg(long)]
        log: std::path::PathBuf,
    },
}

/// Configuration of one gateway node. Defaults start a complete single node.
#[derive(Debug, Clone, Parser)]
#[command(name = "tether-server", version, about = "Tether gateway node")]
pub struct Config {
    /// UDP address of the QUIC listener.
    #[arg(long, env = "TETHER_QUIC_ADDR", default_value = "0.0.0.0:7443")]
    pub quic_addr: SocketAddr,

    /// TCP address of the admin HTTP API (health, metrics, push, tickets, kick, sessions).
    #[arg(long, env = "TETHER_ADMIN_ADDR", default_value = "127.0.0.1:7080")]
    pub admin_addr: SocketAddr,

    /// Directory for the SQLite database, the dev certificate and generated secrets.
    #[arg(long, env = "TETHER_DATA_DIR", default_value = "./tether-data")]
    pub data_dir: PathBuf,

    /// What to do instead of running a node.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Database URL. Default: `log://<data dir>/log`, the embedded log store (a data dir with
    /// a `tether.db` from an older build and no log keeps SQLite). `sqlite://PATH` for one
    /// SQLite file. `postgres://user:pass@host/db`
    /// for a shared store (several nodes on one database); TLS with `?sslmode=require` or
    /// `verify-full` (rustls).
    #[arg(long, env = "TETHER_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Redis for a cluster of nodes: presence (user -> device -> node) and pub/sub routing
    /// between nodes. Unset: the node runs alone. Several comma-separated URLs with
    /// `--redis-cluster`: seed nodes of a Redis Cluster (sharded pub/sub).
    #[arg(long, env = "TETHER_REDIS_URL")]
    pub redis_url: Option<String>,

    /// `--redis-url` names seed nodes of a Redis Cluster: keys are hash-tagged and pub/sub is
    /// sharded (SSUBSCRIBE / SPUBLISH, Redis 7).
    #[arg(long, env = "TETHER_REDIS_CLUSTER", default_value_t = false)]
    pub redis_cluster: bool,

    /// Prefix of every Redis key and channel of this cluster (several clusters can share a Redis).
    #[arg(long, env = "TETHER_REDIS_PREFIX", default_value = "tether")]
    pub redis_prefix: String,

    /// How long a node's ownership of its users' presence outlives its last heartbeat to Redis:
    /// after this, other nodes treat its sessions as gone and announce them offline. The node
    /// renews it every third of this.
    #[arg(long, env = "TETHER_NODE_LEASE", default_value = "10s", value_parser = parse_duration)]
    pub node_lease: Duration,

    /// Eureka registries this node registers with (comma-separated base URLs such as
    /// `http://10.0.0.5:8761/eureka/`). Unset: the node registers with its embedded registry
    /// when that is on.
    #[arg(long, env = "TETHER_REGISTRY_URL", value_delimiter = ',')]
    pub registry_url: Vec<String>,

    /// Serve an Eureka-compatible registry on the admin listener (`/eureka/`, `/eureka/v2/`).
    #[arg(long, env = "TETHER_EMBEDDED_REGISTRY", default_value_t = true, action = clap::ArgAction::Set)]
    pub embedded_registry: bool,

    /// The `host:port` clients reach this node's QUIC listener at, published in the registry.
    /// Default: the listener's address (127.0.0.1 when it listens on every address).
    #[arg(long, env = "TETHER_PUBLIC_QUIC_ADDR")]
    pub public_quic_addr: Option<String>,

    /// Zone published in the registry (free-form, e.g. `eu-west-1a`).
    #[arg(long, env = "TETHER_ZONE", default_value = "default")]
    pub zone: String,

    /// How often the node renews its registration (Eureka's default: 30 s) and publishes its
    /// live session count.
    #[arg(long, env = "TETHER_REGISTRY_RENEW", default_value = "30s", value_parser = parse_duration)]
    pub registry_renew: Duration,

    /// Lease of an instance in the embedded registry without renewal (Eureka's default: 90 s).
    #[arg(long, env = "TETHER_REGISTRY_LEASE", default_value = "90s", value_parser = parse_duration)]
    pub registry_lease: Duration,

    /// How long a draining node (`POST /v1/drain`, or SIGTERM) waits for its sessions to move
    /// to other nodes after `go_away` before it closes what is left.
    #[arg(long, env = "TETHER_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// QUIC-LB config id (0..=6) in the first octet of the connection ids this node issues
    /// (docs/quic-lb.md): a QUIC-LB load balancer routes packets by the server id after it.
    #[arg(long, env = "TETHER_QUIC_LB_CONFIG_ID", default_value_t = 0)]
    pub quic_lb_config_id: u8,

    /// QUIC-LB server id of this node, in hex (1..=15 bytes). Default: `--node-id` as 2 bytes.
    #[arg(long, env = "TETHER_QUIC_LB_SERVER_ID")]
    pub quic_lb_server_id: Option<String>,

    /// Random bytes after the server id in each connection id (4..=18).
    #[arg(long, env = "TETHER_QUIC_LB_NONCE_LEN", default_value_t = 6)]
    pub quic_lb_nonce_len: u8,

    /// Connections per node to a shared database (PostgreSQL).
    #[arg(long, env = "TETHER_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// How long a store request waits for a database connection before it fails: with the
    /// database down, sends are refused (transient) this fast.
    #[arg(long, env = "TETHER_DB_ACQUIRE_TIMEOUT", value_parser = parse_duration, default_value = "2s")]
    pub db_acquire_timeout: Duration,

    /// Longest a statement may run on a shared database (`statement_timeout`).
    #[arg(long, env = "TETHER_DB_STATEMENT_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub db_statement_timeout: Duration,

    /// PEM certificate chain for QUIC/TLS. Without it a self-signed dev certificate is written
    /// to `<data dir>/dev-cert.pem` (key `dev-key.pem`) and used.
    #[arg(long, env = "TETHER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "TETHER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Extra DNS names / IPs for the dev certificate (localhost and 127.0.0.1 are always in).
    #[arg(long, env = "TETHER_DEV_CERT_NAMES", value_delimiter = ',')]
    pub dev_cert_names: Vec<String>,

    /// Shared secret for HS256 JWTs minted by the app's backend.
    #[arg(long, env = "TETHER_JWT_SECRET")]
    pub jwt_secret: Option<String>,

    /// PEM public key (RSA or EC P-256) for RS256 / ES256 JWTs.
    #[arg(long, env = "TETHER_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Clock skew allowed when checking a JWT's `exp` and `nbf`, in seconds.
    #[arg(long, env = "TETHER_JWT_LEEWAY_SECS", default_value_t = 5)]
    pub jwt_leeway_secs: u64,

    /// Audiences a JWT may be for (comma-separated). When set, `aud` is required and must name
    /// one of them; when unset, `aud` is not checked.
    #[arg(long, env = "TETHER_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,

    /// Issuer a JWT must come from. When set, `iss` is required and must equal it.
    #[arg(long, env = "TETHER_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Bearer token for the admin API. Without it one is generated into `<data dir>/admin-token`.
    #[arg(long, env = "TETHER_ADMIN_TOKEN")]
    pub admin_token: Option<String>,

    /// Secret that signs resume tokens. Nodes of one cluster must share it. Without it one is
    /// generated into `<data dir>/resume-secret`.
    #[arg(long, env = "TETHER_RESUME_SECRET")]
    pub resume_secret: Option<String>,

    /// Lifetime of a resume token handed out in `login_ok`.
    #[arg(long, env = "TETHER_RESUME_TTL", default_value = "7d", value_parser = parse_duration)]
    pub resume_ttl: Duration,

    /// Default lifetime of a one-time login ticket (the admin API may ask for less or more).
    #[arg(long, env = "TETHER_TICKET_TTL", default_value = "60s", value_parser = parse_duration)]
    pub ticket_ttl: Duration,

    /// Largest frame body accepted, in bytes (the length prefix is checked before allocation).
    #[arg(long, env = "TETHER_MAX_FRAME", default_value_t = tether_proto::DEFAULT_MAX_FRAME)]
    pub max_frame: u32,

    /// Time allowed between the QUIC handshake and a `login` frame.
    #[arg(long, env = "TETHER_LOGIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub login_timeout: Duration,

    /// Open connections accepted at once (logged in or not); past it new ones are refused.
    #[arg(long, env = "TETHER_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Connections accepted at once that have not logged in yet; past it new ones are refused.
    /// From half of it on, a client must first prove its address (a QUIC retry).
    #[arg(long, env = "TETHER_MAX_PENDING_LOGINS", default_value_t = 1_000)]
    pub max_pending_logins: usize,

    /// New connections per second allowed from one IP address, sustained.
    #[arg(long, env = "TETHER_HANDSHAKES_PER_IP", default_value_t = 20)]
    pub handshakes_per_ip: u32,

    /// Burst of new connections allowed from one IP address.
    #[arg(long, env = "TETHER_HANDSHAKE_BURST", default_value_t = 200)]
    pub handshake_burst: u32,

    /// Failed logins (refused credentials, login timeouts) from one IP address before new
    /// connections from it are refused for a while: 1 s, doubling per further failure.
    #[arg(long, env = "TETHER_LOGIN_FAILURES_PER_IP", default_value_t = 20)]
    pub login_failures_per_ip: u32,

    /// Longest back-off of an address after failed logins.
    #[arg(long, env = "TETHER_LOGIN_BACKOFF_MAX", default_value = "60s", value_parser = parse_duration)]
    pub login_backoff_max: Duration,

    /// How often to check whether freed memory should go back to the OS (after many
    /// connections closed); 0 turns it off.
    #[arg(long, env = "TETHER_MEMORY_TRIM_EVERY", default_value = "10s", value_parser = parse_duration)]
    pub memory_trim_every: Duration,

    /// A session that sends nothing (not even a ping) for this long is closed.
    #[arg(long, env = "TETHER_IDLE_TIMEOUT", default_value = "90s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Sustained `send` frames per second allowed per session.
    #[arg(long, env = "TETHER_SEND_RATE", default_value_t = 2000)]
    pub send_rate: u32,

    /// Burst of `send` frames allowed above the rate.
    #[arg(long, env = "TETHER_SEND_BURST", default_value_t = 4000)]
    pub send_burst: u32,

    /// Receive and send buffer asked for the QUIC UDP socket, in bytes (the kernel caps it at
    /// net.core.rmem_max / wmem_max). Small buffers drop packets under bursts, which QUIC then
    /// recovers from with delay.
    #[arg(long, env = "TETHER_UDP_BUFFER", default_value_t = 8 * 1024 * 1024)]
    pub udp_buffer: usize,

    /// Largest number of messages written in one store transaction.
    #[arg(long, env = "TETHER_STORE_BATCH", default_value_t = 2048)]
    pub store_batch: usize,

    /// Write pipelines (concurrent store transactions) per node; 0 = automatic: 1 on SQLite
    /// (one writer connection), 4 on a shared database. A sender always uses the same one, so
    /// its messages are stored in order.
    #[arg(long, env = "TETHER_STORE_WRITERS", default_value_t = 0)]
    pub store_writers: usize,

    /// SQLite durability of a commit.
    #[arg(long, env = "TETHER_STORE_SYNC", value_enum, default_value_t = StoreSync::Full)]
    pub store_sync: StoreSync,

    /// Log store: a segment file is closed and a new one started at this size (bytes).
    #[arg(long, env = "TETHER_LOG_SEGMENT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub log_segment_bytes: u64,

    /// Log store: prepare the next segment (zero bytes written in full, fsynced) once the
    /// current one is half full, so a commit's fsync flushes data only, not the file's size
    /// too. Off on copy-on-write filesystems (btrfs, ZFS), where writing over zeros gains
    /// nothing.
    #[arg(long, env = "TETHER_LOG_PREALLOCATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub log_preallocate: bool,

    /// Log store: bytes of the newest message bodies kept in memory; older ones are read from
    /// their segment when a device asks for them.
    #[arg(long, env = "TETHER_LOG_HOT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub log_hot_bytes: usize,

    /// Log store: how long a (sender, client_msg_id) is remembered, so a retry within it gets
    /// the original acknowledgement. A retry arriving later is stored as a new message.
    #[arg(long, env = "TETHER_DEDUP_WINDOW", value_parser = parse_duration, default_value = "7d")]
    pub dedup_window: Duration,

    /// Log store: how often a checkpoint of the indexes is considered (one is written after
    /// `--log-checkpoint-bytes` of log, or after ten idle periods with changes); segments no
    /// checkpoint or indexed message needs are deleted then.
    #[arg(long, env = "TETHER_LOG_CHECKPOINT_EVERY", value_parser = parse_duration, default_value = "30s")]
    pub log_checkpoint_every: Duration,

    /// Log store: log bytes after which a checkpoint is written.
    #[arg(long, env = "TETHER_LOG_CHECKPOINT_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub log_checkpoint_bytes: u64,

    /// Log store: messages whose index entries stay in memory (the newest); older 1:1
    /// messages' entries (position, inbox seqs, dedup key) move to the cold index on disk.
    #[arg(long, env = "TETHER_LOG_INDEX_HOT", default_value_t = 1_000_000)]
    pub log_index_hot: usize,

    /// Messages read from the store per page when a device catches up.
    #[arg(long, env = "TETHER_SYNC_PAGE", default_value_t = 256)]
    pub sync_page: u32,

    /// Live deliveries queued per session before it falls back to reading the store.
    #[arg(long, env = "TETHER_SESSION_QUEUE", default_value_t = 4096)]
    pub session_queue: usize,

    /// A `join_room` for a room that does not exist creates it (otherwise rooms are created
    /// through the admin API and joining a missing one is refused with `no_such_room`).
    #[arg(long, env = "TETHER_ROOMS_AUTO_CREATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub rooms_auto_create: bool,

    /// Room history kept per room, in messages; older ones are pruned and a device asking for
    /// them gets `history_truncated`.
    #[arg(long, env = "TETHER_ROOM_HISTORY_MAX", default_value_t = 10_000)]
    pub room_history_max: u64,

    /// Room history kept, in time.
    #[arg(long, env = "TETHER_ROOM_HISTORY_AGE", default_value = "30d", value_parser = parse_duration)]
    pub room_history_age: Duration,

    /// How often room history is pruned.
    #[arg(long, env = "TETHER_ROOM_PRUNE_EVERY", default_value = "60s", value_parser = parse_duration)]
    pub room_prune_every: Duration,

    /// Largest connection metadata accepted at login, in bytes (keys and values together);
    /// at most 16 entries, keys up to 64 bytes.
    #[arg(long, env = "TETHER_MAX_METADATA", default_value_t = 2048)]
    pub max_metadata: usize,

    /// URL the webhook events are POSTed to (http:// or https://); none by default.
    #[arg(long, env = "TETHER_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Secret for the `X-Tether-Signature` HMAC-SHA256 of each webhook body.
    #[arg(long, env = "TETHER_WEBHOOK_SECRET", default_value = "")]
    pub webhook_secret: String,

    /// Webhook events queued while the receiver is unreachable; past it new events are dropped
    /// (and counted in `tether_webhooks_total{result="dropped"}`).
    #[arg(long, env = "TETHER_WEBHOOK_QUEUE", default_value_t = 100_000)]
    pub webhook_queue: usize,

    /// Node id (0-1023) that makes message ids unique across a cluster.
    #[arg(long, env = "TETHER_NODE_ID", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..1024))]
    pub node_id: u16,

    /// Testing only: serve `/v1/faults` on the admin API, which makes store steps fail on
    /// demand (see docs/operations.md). Never on in production.
    #[arg(long, env = "TETHER_FAULT_INJECTION", default_value_t = false)]
    pub fault_injection: bool,

    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "TETHER_LOG", default_value = "info")]
    pub log: String,
}

impl Config {
    /// The configuration with every default, data in `data_dir`, listeners on the given ports
    /// (0 = any free port). Used by tests and embedders.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut c = Config::parse_from(["tether-server"]);
        c.data_dir = data_dir.into();
        c
    }

    /// The database URL in force: the one given, else the embedded log store in
    /// `<data dir>/log`, except for a data dir that already holds a SQLite database from an
    /// older build and no log (that node keeps its SQLite store).
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => {
                let sqlite = self.data_dir.join("tether.db");
                let log = self.data_dir.join("log");
                if sqlite.exists() && !log.exists() {
                    format!("sqlite://{}", sqlite.display())
                } else {
                    format!("log://{}", log.display())
                }
            }
        }
    }

    /// Settings of the log store.
    pub fn log_settings(&self) -> crate::store::log::LogSettings {
        crate::store::log::LogSettings {
            segment_bytes: self.log_segment_bytes.max(4096),
            preallocate: self.log_preallocate,
            hot_bytes: self.log_hot_bytes,
            dedup_window: self.dedup_window,
            checkpoint_every: self.log_checkpoint_every,
            checkpoint_bytes: self.log_checkpoint_bytes,
            index_hot: self.log_index_hot,
            ..Default::default()
        }
    }
}

/// Parses `250ms`, `10s`, `5m`, `2h`, `7d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration `{s}`"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        other => return Err(format!("unknown duration unit `{other}` in `{s}`")),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = Config::parse_from(["tether-server"]);
        assert_eq!(c.quic_addr.port(), 7443);
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:7080");
        assert_eq!(c.data_dir, PathBuf::from("./tether-data"));
        assert_eq!(c.max_frame, 64 * 1024);
    }
}
