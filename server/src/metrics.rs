//! Prometheus metrics of a node, served at `/metrics` by the admin API.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label set `{result="..."}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// Outcome.
    pub result: String,
}

/// Label set `{op="..."}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// Store operation.
    pub op: String,
}

/// Label set `{reason="..."}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Close reason.
    pub reason: String,
}

/// Every metric of a node.
pub struct Metrics {
    /// The registry rendered at `/metrics`.
    pub registry: Registry,
    /// Open QUIC connections.
    pub connections: Gauge,
    /// Logged-in sessions.
    pub sessions: Gauge,
    /// Login attempts by result.
    pub logins: Family<ResultLabel, Counter>,
    /// Sessions ended, by close reason.
    pub closes: Family<ReasonLabel, Counter>,
    /// `send` frames accepted and stored (new messages).
    pub messages_in: Counter,
    /// `deliver` frames written to sessions.
    pub messages_out: Counter,
    /// `ack` frames received.
    pub acks: Counter,
    /// Acks beyond what the session had delivered, clamped to it.
    pub acks_clamped: Counter,
    /// Stored cursors found above the head at login and repaired.
    pub cursors_repaired: Counter,
    /// Retried sends answered from the store (duplicates).
    pub retries: Counter,
    /// Times a session read missed messages from the store (resume, sync, lag).
    pub sync_gaps: Counter,
    /// Messages sent from the store to close a gap.
    pub sync_messages: Counter,
    /// Sends refused, by error code.
    pub send_errors: Family<ResultLabel, Counter>,
    /// Store latency by operation.
    pub store_latency: Family<OpLabel, Histogram>,
    /// Messages per store batch.
    pub store_batch: Histogram,
    /// Store operations that failed, by operation (`append`, `checkpoint`, `consume_ticket`...).
    pub store_errors: Family<OpLabel, Counter>,
    /// Store writes run again after a conflict with another writer (deadlock, serialization
    /// failure, a duplicate committed meanwhile by another node), by operation.
    pub store_retries: Family<OpLabel, Counter>,
    /// 1 while the store's writer commits, 0 from a failed write until one succeeds again.
    pub store_writer_ready: Gauge,
    /// CPU time of the log store's writer thread while it writes (plan, encode, write, sync
    /// call, index update), seconds: divided by messages stored, the write path's CPU cost.
    pub store_writer_cpu: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Messages in the log store's in-memory index (about 133 bytes of RAM each; held near
    /// `--log-index-hot` by moves to the cold index, docs/operations.md "Memory").
    pub store_indexed_messages: Gauge,
    /// Connection attempts by admission result (`accepted`, `retry`, `refused_*`).
    pub admission: Family<ResultLabel, Counter>,
    /// Connections that have not logged in yet.
    pub pending_logins: Gauge,
    /// Times free heap memory was handed back to the OS after connections closed.
    pub memory_trims: Counter,
    /// Frames refused as undecodable or oversized.
    pub bad_frames: Counter,
    /// Webhook deliveries by result (`ok`, `retry`, `dropped`).
    pub webhooks: Family<ResultLabel, Counter>,
    /// Room events sent.
    pub room_events: Counter,
    /// Cluster: pub/sub messages this node published, by kind.
    pub bus_published: Family<BusLabel, Counter>,
    /// Cluster: pub/sub messages this node received, by kind and use (`needed`: it had a
    /// session to hand it to; `unneeded`: none; `own`: its own publish coming back).
    pub bus_received: Family<BusLabel, Counter>,
    /// Cluster: Redis operation latency by operation.
    pub redis_latency: Family<OpLabel, Histogram>,
    /// Cluster: Redis operations that failed, by operation.
    pub redis_errors: Family<OpLabel, Counter>,
    /// Cluster: 1 while the node reaches Redis.
    pub redis_up: Gauge,
    /// Cluster: times this node's sessions read the store after a Redis outage.
    pub cluster_resyncs: Counter,
    /// Cluster: dead nodes whose sessions this node announced gone.
    pub nodes_reaped: Counter,
}

/// Labels of the cluster's pub/sub counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BusLabel {
    /// Message kind (`inbox`, `room`, `room_event`, `frame`, `kick`, `presence`, `member`, ...).
    pub kind: String,
    /// For received messages: `needed`, `unneeded` or `own`; empty when published.
    pub used: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tether");
        let m = Metrics {
            connections: Gauge::default(),
            sessions: Gauge::default(),
            logins: Family::default(),
            closes: Family::default(),
            messages_in: Counter::default(),
            messages_out: Counter::default(),
            acks: Counter::default(),
            acks_clamped: Counter::default(),
            cursors_repaired: Counter::default(),
            retries: Counter::default(),
            sync_gaps: Counter::default(),
            sync_messages: Counter::default(),
            send_errors: Family::default(),
            store_latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 16))),
            store_batch: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            store_errors: Family::default(),
            store_retries: Family::default(),
            store_writer_ready: Gauge::default(),
            store_writer_cpu: Counter::default(),
            store_indexed_messages: Gauge::default(),
            bad_frames: Counter::default(),
            admission: Family::default(),
            pending_logins: Gauge::default(),
            memory_trims: Counter::default(),
            webhooks: Family::default(),
            room_events: Counter::default(),
            bus_published: Family::default(),
            bus_received: Family::default(),
            redis_latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 16))),
            redis_errors: Family::default(),
            redis_up: Gauge::default(),
            cluster_resyncs: Counter::default(),
            nodes_reaped: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("connections", "Open QUIC connections", m.connections.clone());
        registry.register("sessions", "Logged-in sessions", m.sessions.clone());
        registry.register("logins", "Login attempts by result", m.logins.clone());
        registry.register("session_closes", "Sessions ended by reason", m.closes.clone());
        registry.register("messages_in", "Messages accepted and stored", m.messages_in.clone());
        registry.register("messages_out", "Deliver frames written", m.messages_out.clone());
        registry.register("acks", "Ack frames received", m.acks.clone());
        registry.register("acks_clamped", "Acks beyond what was delivered, clamped", m.acks_clamped.clone());
        registry.register(
            "cursors_repaired",
            "Stored cursors above the head repaired at login",
            m.cursors_repaired.clone(),
        );
        registry.register("send_retries", "Retried sends answered with the original ack", m.retries.clone());
        registry.register("sync_gaps", "Gaps closed from the store", m.sync_gaps.clone());
        registry.register("sync_messages", "Messages sent from the store to close gaps", m.sync_messages.clone());
        registry.register("send_errors", "Sends refused by code", m.send_errors.clone());
        registry.register("store_latency_seconds", "Store operation latency", m.store_latency.clone());
        registry.register("store_batch_messages", "Messages per store batch", m.store_batch.clone());
        registry.register("store_errors", "Store operations that failed, by operation", m.store_errors.clone());
        registry.register(
            "store_retries",
            "Store writes run again after a conflict with another writer, by operation",
            m.store_retries.clone(),
        );
        registry.register("store_writer_ready", "1 while the store writer commits", m.store_writer_ready.clone());
        registry.register(
            "store_writer_cpu_seconds",
            "CPU time of the log store's writer thread while writing",
            m.store_writer_cpu.clone(),
        );
        registry.register(
            "store_indexed_messages",
            "Messages in the log store's in-memory index",
            m.store_indexed_messages.clone(),
        );
        registry.register("admission", "Connection attempts by admission result", m.admission.clone());
        registry.register("pending_logins", "Connections not logged in yet", m.pending_logins.clone());
        registry.register("memory_trims", "Heap trims after connections closed", m.memory_trims.clone());
        registry.register("bad_frames", "Frames refused as undecodable or oversized", m.bad_frames.clone());
        registry.register("webhooks", "Webhook deliveries by result", m.webhooks.clone());
        registry.register("room_events", "Room events sent", m.room_events.clone());
        registry.register("bus_published", "Cluster pub/sub messages published, by kind", m.bus_published.clone());
        registry.register(
            "bus_received",
            "Cluster pub/sub messages received, by kind and use (needed, unneeded, own)",
            m.bus_received.clone(),
        );
        registry.register("redis_latency_seconds", "Redis operation latency", m.redis_latency.clone());
        registry.register("redis_errors", "Redis operations that failed, by operation", m.redis_errors.clone());
        registry.register("redis_up", "1 while the node reaches Redis", m.redis_up.clone());
        registry.register(
            "cluster_resyncs",
            "Store resyncs of every session after a Redis outage",
            m.cluster_resyncs.clone(),
        );
        registry.register("nodes_reaped", "Dead nodes whose sessions this node announced gone", m.nodes_reaped.clone());
        Metrics { registry, ..m }
    }

    /// Counts a login outcome.
    pub fn login(&self, result: &str) {
        self.logins.get_or_create(&ResultLabel { result: result.to_owned() }).inc();
    }

    /// Counts a session close.
    pub fn closed(&self, reason: &str) {
        self.closes.get_or_create(&ReasonLabel { reason: reason.to_owned() }).inc();
    }

    /// Records a store operation's latency.
    pub fn store_op(&self, op: &str, secs: f64) {
        self.store_latency.get_or_create(&OpLabel { op: op.to_owned() }).observe(secs);
    }

    /// Counts a failed store operation.
    pub fn store_error(&self, op: &str) {
        self.store_errors.get_or_create(&OpLabel { op: op.to_owned() }).inc();
    }

    /// Counts a store write run again after a conflict.
    pub fn store_retry(&self, op: &str) {
        self.store_retries.get_or_create(&OpLabel { op: op.to_owned() }).inc();
    }

    /// Renders the text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
