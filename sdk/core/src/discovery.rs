//! Node discovery, sans I/O: which gateway node the next connection goes to.
//!
//! Gateway nodes register in an Eureka-compatible registry as application `TETHER` (see
//! docs/registry.md), with their QUIC address in the instance metadata. The driver fetches the
//! application (`GET {registry}/apps/TETHER`, JSON) and hands the body to
//! [`parse_application`]; a [`NodeDirectory`] keeps the list and decides, with the current time
//! passed in, where to connect and when the list must be fetched again. It does no I/O and
//! reads no clock, so every rule below is tested with an injected clock.
//!
//! # The choice ([`NodeDirectory::candidates`])
//!
//! 1. Discovered nodes whose status is `UP` and that are not cooling down, fewest live
//!    sessions first (a node that publishes no count comes last), ties broken by instance id,
//!    so the order is stable.
//! 2. Then the configured servers (`server`, then `fallback_servers`, in that order) that are
//!    not cooling down. A configured server the registry lists with another status than `UP`
//!    (draining, down) is left out.
//! 3. Then, when nothing else is left, the nodes and servers of 1 and 2 that are cooling down,
//!    the one whose cool-down ends first first.
//!
//! A node *cools down* for [`DiscoveryConfig::failure_cooldown`] after it failed the client: a
//! connection attempt that failed, a connection that was lost or given up (no answer to the
//! heartbeat, no answer to the login), or a `go_away` (the node is draining). A node that
//! accepts a login again is forgiven at once ([`NodeDirectory::mark_ok`]). Nodes with any status
//! other than `UP` (`OUT_OF_SERVICE` while draining, `DOWN`, `STARTING`, `UNKNOWN`) are never
//! chosen.
//!
//! # Staleness ([`NodeDirectory::needs_refresh`])
//!
//! At every (re)connect the driver asks whether to fetch the list first: yes when it was never
//! fetched in this run (a list restored from the state dir is used, but refreshed first), when
//! it is older than [`DiscoveryConfig::refresh_interval`], or when no discovered `UP` node is
//! left outside its cool-down. After a failed fetch (every registry down, or an answer without
//! a single node) the list in hand is kept and used, and the next fetch waits at least
//! [`DiscoveryConfig::retry_interval`], so a client with its registries down does not pay for
//! a fetch on every reconnect.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The registry application gateway nodes register under.
pub const DEFAULT_REGISTRY_APP: &str = "TETHER";
/// Instance metadata key: public `host:port` of the node's QUIC listener.
pub const META_QUIC: &str = "quic";
/// Instance metadata key: the node's live session count.
pub const META_SESSIONS: &str = "sessions";
/// Instance metadata key: the node's zone.
pub const META_ZONE: &str = "zone";
/// Instance metadata key: the node id.
pub const META_NODE_ID: &str = "node_id";

/// A node's status in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeStatus {
    /// Serving: the only status that gets new clients.
    Up,
    /// Down.
    Down,
    /// Starting, not serving yet.
    Starting,
    /// Taken out of service (a node that is draining).
    OutOfService,
    /// Anything else.
    Unknown,
}

impl NodeStatus {
    /// Eureka's status names (`UP`, `DOWN`, `STARTING`, `OUT_OF_SERVICE`), case-insensitive;
    /// anything else is [`NodeStatus::Unknown`].
    pub fn parse(s: &str) -> NodeStatus {
        match s.trim().to_ascii_uppercase().as_str() {
            "UP" => NodeStatus::Up,
            "DOWN" => NodeStatus::Down,
            "STARTING" => NodeStatus::Starting,
            "OUT_OF_SERVICE" => NodeStatus::OutOfService,
            _ => NodeStatus::Unknown,
        }
    }
}

/// A gateway node as the registry lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveredNode {
    /// The registry's instance id (the node id).
    pub instance_id: String,
    /// Public `host:port` of the node's QUIC listener (metadata `quic`).
    pub address: String,
    /// Registry status.
    pub status: NodeStatus,
    /// Live session count (metadata `sessions`), if published.
    #[serde(default)]
    pub sessions: Option<u64>,
    /// Zone (metadata `zone`), if published.
    #[serde(default)]
    pub zone: Option<String>,
}

/// Why a registry answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The body is not JSON.
    #[error("registry answer is not JSON: {0}")]
    Json(String),
    /// The JSON is not an Eureka application (`{"application": {...}}`).
    #[error("registry answer is not an application: {0}")]
    Shape(&'static str),
}

/// Reads the gateway nodes from the JSON answer to `GET {registry}/apps/{app}`
/// (`{"application":{"name":..,"instance":[...]}}`; `instance` may also be a single object, or
/// absent when the application has none).
///
/// Read leniently, as Eureka's own codec does: numbers may be strings, a missing `status` is
/// `UP`, unknown fields are skipped. An instance without a usable `quic` address (`host:port`
/// with a port in 1..=65535) is skipped, as is a second instance with the same address.
pub fn parse_application(body: &[u8]) -> Result<Vec<DiscoveredNode>, DiscoveryError> {
    let json: Value = serde_json::from_slice(body).map_err(|e| DiscoveryError::Json(e.to_string()))?;
    let app = json.get("application").ok_or(DiscoveryError::Shape("no `application` object"))?;
    if !app.is_object() {
        return Err(DiscoveryError::Shape("`application` is not an object"));
    }
    let instances: Vec<&Value> = match app.get("instance") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list.iter().collect(),
        Some(one @ Value::Object(_)) => vec![one],
        Some(_) => return Err(DiscoveryError::Shape("`instance` is neither a list nor an object")),
    };
    let mut seen = HashSet::new();
    let mut nodes = Vec::new();
    for instance in instances {
        let Some(node) = parse_instance(instance) else { continue };
        if seen.insert(node.address.clone()) {
            nodes.push(node);
        }
    }
    Ok(nodes)
}

/// A JSON string, or a number written out (Eureka's codecs write some numbers as strings).
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn parse_instance(v: &Value) -> Option<DiscoveredNode> {
    let metadata = v.get("metadata");
    let meta = |key: &str| text(metadata.and_then(|m| m.get(key)));
    let address = meta(META_QUIC).map(|a| a.trim().to_owned()).filter(|a| valid_address(a))?;
    let instance_id = text(v.get("instanceId"))
        .filter(|s| !s.is_empty())
        .or_else(|| meta(META_NODE_ID).filter(|s| !s.is_empty()))
        .or_else(|| text(v.get("hostName")).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| address.clone());
    let status = text(v.get("status")).map_or(NodeStatus::Up, |s| NodeStatus::parse(&s));
    Some(DiscoveredNode {
        instance_id,
        address,
        status,
        sessions: meta(META_SESSIONS).and_then(|s| s.trim().parse().ok()),
        zone: meta(META_ZONE).filter(|z| !z.is_empty()),
    })
}

/// Whether `s` looks like `host:port` (`[v6]:port` for IPv6) with a port in 1..=65535.
pub fn valid_address(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else { return false };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner.strip_suffix(']').is_some_and(|h| !h.is_empty())
    } else {
        !host.is_empty() && !host.contains([':', '/', ' '])
    };
    port_ok && host_ok
}

/// Tunables of a [`NodeDirectory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// A list older than this is fetched again at the next (re)connect. Default 30 s (the
    /// nodes publish their session counts at their renewal interval, 30 s by default).
    pub refresh_interval: Duration,
    /// How long a node that failed the client (connect failure, lost connection, `go_away`)
    /// is skipped while anything else is left. Default 60 s.
    pub failure_cooldown: Duration,
    /// After a fetch that failed (every registry down), the next one waits at least this long
    /// (at most `refresh_interval`); the list in hand is used meanwhile. Default 5 s.
    pub retry_interval: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            refresh_interval: Duration::from_secs(30),
            failure_cooldown: Duration::from_secs(60),
            retry_interval: Duration::from_secs(5),
        }
    }
}

/// The discovered node list as kept in the client's state dir, so that a cold start with every
/// registry down still finds nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCache {
    /// The registry application the list is of.
    pub app: String,
    /// When it was fetched, ms since the Unix epoch.
    pub fetched_ms: u64,
    /// The nodes, as the registry listed them.
    pub nodes: Vec<DiscoveredNode>,
}

/// The node list, the choice, the cool-downs and the staleness rule (see the
/// [module docs](self)). Sans I/O: every time-dependent call takes `now`.
#[derive(Debug, Clone)]
pub struct NodeDirectory {
    config: DiscoveryConfig,
    /// Registries are configured: the list is fetched and refreshed.
    discovery: bool,
    /// `server` and `fallback_servers`, in order.
    statics: Vec<String>,
    /// The discovered nodes, in preference order (fewest sessions, then instance id).
    nodes: Vec<DiscoveredNode>,
    /// When the list was last fetched in this run (`None`: never; a restored list is stale).
    fetched_at: Option<Instant>,
    /// Wall-clock time of the list (for the cache).
    fetched_ms: Option<u64>,
    /// When the last fetch failed.
    failed_at: Option<Instant>,
    /// Address -> end of its cool-down.
    cooldowns: HashMap<String, Instant>,
}

impl NodeDirectory {
    /// A directory over the configured servers `statics` (`server`, then `fallback_servers`;
    /// empty strings are left out). `discovery`: registries are configured, so the list is
    /// fetched ([`NodeDirectory::needs_refresh`]); without it only `statics` are chosen from.
    pub fn new(config: DiscoveryConfig, discovery: bool, statics: Vec<String>) -> Self {
        let mut unique = Vec::new();
        for s in statics.into_iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()) {
            if !unique.contains(&s) {
                unique.push(s);
            }
        }
        NodeDirectory {
            config,
            discovery,
            statics: unique,
            nodes: Vec::new(),
            fetched_at: None,
            fetched_ms: None,
            failed_at: None,
            cooldowns: HashMap::new(),
        }
    }

    /// Whether registries are configured.
    pub fn discovery(&self) -> bool {
        self.discovery
    }

    /// The configured servers, in order.
    pub fn statics(&self) -> &[String] {
        &self.statics
    }

    /// The discovered nodes (every status), in preference order.
    pub fn nodes(&self) -> &[DiscoveredNode] {
        &self.nodes
    }

    /// Takes a list restored from the state dir (when it is of `app`; returns whether it was
    /// taken). It is used until a fetch succeeds, and does not count as fresh: the next
    /// (re)connect fetches first.
    pub fn restore(&mut self, cache: NodeCache, app: &str) -> bool {
        if !self.discovery || !cache.app.eq_ignore_ascii_case(app) || cache.nodes.is_empty() {
            return false;
        }
        self.set_nodes(cache.nodes);
        self.fetched_ms = Some(cache.fetched_ms);
        true
    }

    /// The list to keep in the state dir, once there is one.
    pub fn cache(&self, app: &str) -> Option<NodeCache> {
        let fetched_ms = self.fetched_ms?;
        (!self.nodes.is_empty()).then(|| NodeCache { app: app.to_owned(), fetched_ms, nodes: self.nodes.clone() })
    }

    /// Whether the driver should fetch the list before connecting at `now`.
    pub fn needs_refresh(&self, now: Instant) -> bool {
        if !self.discovery {
            return false;
        }
        let retry = self.config.retry_interval.min(self.config.refresh_interval);
        if self.failed_at.is_some_and(|at| now < at + retry) {
            return false;
        }
        match self.fetched_at {
            None => true,
            Some(at) => now >= at + self.config.refresh_interval || !self.has_usable_node(now),
        }
    }

    /// A fetch at `now` (wall clock `now_ms`) answered with `nodes`. An answer without a
    /// single node keeps the list in hand and counts as a failed fetch (a registry that has
    /// just restarted knows nothing until the nodes renew). Returns whether the list was taken.
    pub fn refreshed(&mut self, nodes: Vec<DiscoveredNode>, now: Instant, now_ms: u64) -> bool {
        if nodes.is_empty() {
            self.refresh_failed(now);
            return false;
        }
        self.set_nodes(nodes);
        self.fetched_at = Some(now);
        self.fetched_ms = Some(now_ms);
        self.failed_at = None;
        true
    }

    /// No registry answered at `now`: the list in hand stays in use.
    pub fn refresh_failed(&mut self, now: Instant) {
        self.failed_at = Some(now);
    }

    /// The node `address` failed the client at `now` (connect failure, lost connection,
    /// `go_away`): it cools down for [`DiscoveryConfig::failure_cooldown`].
    pub fn mark_failed(&mut self, address: &str, now: Instant) {
        self.cooldowns.retain(|_, until| *until > now);
        self.cooldowns.insert(address.to_owned(), now + self.config.failure_cooldown);
    }

    /// The node `address` accepted a login: its cool-down, if any, ends.
    pub fn mark_ok(&mut self, address: &str) {
        self.cooldowns.remove(address);
    }

    /// Whether `address` is cooling down at `now`.
    pub fn cooling(&self, address: &str, now: Instant) -> bool {
        self.cooldowns.get(address).is_some_and(|until| *until > now)
    }

    /// Where the next connection goes at `now`: the first of [`NodeDirectory::candidates`];
    /// `None` when there is nowhere to go (no `UP` node and no configured server).
    pub fn choose(&self, now: Instant) -> Option<String> {
        self.candidates(now).into_iter().next()
    }

    /// Every address worth trying at `now`, best first (see the [module docs](self)).
    pub fn candidates(&self, now: Instant) -> Vec<String> {
        let not_up: HashSet<&str> =
            self.nodes.iter().filter(|n| n.status != NodeStatus::Up).map(|n| n.address.as_str()).collect();
        let all: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.status == NodeStatus::Up)
            .map(|n| n.address.as_str())
            .chain(self.statics.iter().map(String::as_str).filter(|s| !not_up.contains(s)))
            .collect();
        let mut out: Vec<String> = Vec::with_capacity(all.len());
        for a in all.iter().filter(|a| !self.cooling(a, now)) {
            if !out.iter().any(|o| o == a) {
                out.push((*a).to_owned());
            }
        }
        let mut cooling: Vec<(Instant, usize, &str)> = all
            .iter()
            .enumerate()
            .filter_map(|(i, a)| self.cooldowns.get(*a).filter(|until| **until > now).map(|until| (*until, i, *a)))
            .collect();
        cooling.sort();
        for (_, _, a) in cooling {
            if !out.iter().any(|o| o == a) {
                out.push(a.to_owned());
            }
        }
        out
    }

    /// Whether a discovered `UP` node is outside its cool-down at `now`.
    fn has_usable_node(&self, now: Instant) -> bool {
        self.nodes.iter().any(|n| n.status == NodeStatus::Up && !self.cooling(&n.address, now))
    }

    /// Keeps `nodes` with usable addresses, once per address, in preference order.
    fn set_nodes(&mut self, nodes: Vec<DiscoveredNode>) {
        let mut nodes: Vec<DiscoveredNode> = nodes.into_iter().filter(|n| valid_address(&n.address)).collect();
        nodes.sort_by(|a, b| {
            (a.sessions.unwrap_or(u64::MAX), &a.instance_id, &a.address).cmp(&(
                b.sessions.unwrap_or(u64::MAX),
                &b.instance_id,
                &b.address,
            ))
        });
        let mut seen = HashSet::new();
        nodes.retain(|n| seen.insert(n.address.clone()));
        self.nodes = nodes;
    }
}
