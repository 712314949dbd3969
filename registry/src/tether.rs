//! How Tether gateway nodes appear in the registry: application `TETHER`, instance id = node
//! id, and metadata `quic` (public `host:port` of the QUIC listener), `zone`, `sessions` (live
//! session count) and `node_id`.

use crate::model::{Application, InstanceInfo, InstanceStatus};

/// The application gateway nodes register under.
pub const APP: &str = "TETHER";
/// Metadata key: public `host:port` of the node's QUIC listener.
pub const META_QUIC: &str = "quic";
/// Metadata key: the node's zone.
pub const META_ZONE: &str = "zone";
/// Metadata key: live session count.
pub const META_SESSIONS: &str = "sessions";
/// Metadata key: the node id.
pub const META_NODE_ID: &str = "node_id";

/// What a gateway node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRegistration {
    /// Node id (also the instance id).
    pub node_id: String,
    /// Host name the node is reached at.
    pub host_name: String,
    /// IP address the node is reached at.
    pub ip_addr: String,
    /// Public `host:port` of the QUIC listener.
    pub quic: String,
    /// Zone (free-form, e.g. `eu-west-1a`).
    pub zone: String,
    /// Port of the node's HTTP (admin) listener, published as the instance's `port`.
    pub http_port: u16,
}

impl GatewayRegistration {
    /// The instance to register: app `TETHER`, VIP `tether`, metadata `quic`, `zone`,
    /// `sessions` = 0 and `node_id`.
    pub fn instance(&self) -> InstanceInfo {
        let mut i = InstanceInfo::new(APP, &self.node_id, &self.host_name, &self.ip_addr, self.http_port);
        i.metadata.insert(META_QUIC.into(), self.quic.clone());
        i.metadata.insert(META_ZONE.into(), self.zone.clone());
        i.metadata.insert(META_SESSIONS.into(), "0".into());
        i.metadata.insert(META_NODE_ID.into(), self.node_id.clone());
        i
    }
}

/// The metadata update publishing a new live session count.
pub fn sessions_update(sessions: u64) -> Vec<(String, String)> {
    vec![(META_SESSIONS.to_string(), sessions.to_string())]
}

/// A gateway node as discovered in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayNode {
    /// Node id.
    pub node_id: String,
    /// Public `host:port` of its QUIC listener.
    pub quic: String,
    /// Zone, if published.
    pub zone: Option<String>,
    /// Live session count, if published.
    pub sessions: Option<u64>,
    /// Registry status (only UP nodes should get new clients).
    pub status: InstanceStatus,
}

/// The gateway nodes of a `TETHER` application listing (instances without a `quic` entry are
/// skipped), UP ones first, then by fewest sessions.
pub fn gateway_nodes(app: &Application) -> Vec<GatewayNode> {
    let mut nodes: Vec<GatewayNode> = app
        .instances
        .iter()
        .filter_map(|i| {
            Some(GatewayNode {
                node_id: i.metadata.get(META_NODE_ID).cloned().unwrap_or_else(|| i.instance_id.clone()),
                quic: i.metadata.get(META_QUIC)?.clone(),
                zone: i.metadata.get(META_ZONE).cloned(),
                sessions: i.metadata.get(META_SESSIONS).and_then(|s| s.parse().ok()),
                status: i.status,
            })
        })
        .collect();
    nodes.sort_by_key(|n| (n.status != InstanceStatus::Up, n.sessions.unwrap_or(u64::MAX), n.node_id.clone()));
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_and_discovery() {
        let reg = GatewayRegistration {
            node_id: "gw-1".into(),
            host_name: "gw1.example".into(),
            ip_addr: "10.0.0.1".into(),
            quic: "gw1.example:4433".into(),
            zone: "z1".into(),
            http_port: 8080,
        };
        let a = reg.instance();
        assert_eq!(a.app, "TETHER");
        assert_eq!(a.validate_registration(APP), Ok(()));
        let mut b = GatewayRegistration { node_id: "gw-2".into(), quic: "gw2.example:4433".into(), ..reg }.instance();
        b.metadata.extend(sessions_update(3));
        let mut c = a.clone();
        c.instance_id = "gw-3".into();
        c.metadata.insert(META_NODE_ID.into(), "gw-3".into());
        c.status = InstanceStatus::OutOfService;
        let nodes = gateway_nodes(&Application { name: APP.into(), instances: vec![c, b, a] });
        let ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
        assert_eq!(ids, ["gw-1", "gw-2", "gw-3"]);
        assert_eq!(nodes[1].sessions, Some(3));
        assert_eq!(nodes[0].quic, "gw1.example:4433");
    }
}
