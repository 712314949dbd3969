//! The node directory: parsing the registry's answer, the choice, cool-downs and staleness,
//! with an injected clock.

use super::*;
use crate::discovery::{
    parse_application, valid_address, DiscoveredNode, DiscoveryConfig, DiscoveryError, NodeCache, NodeDirectory,
    NodeStatus,
};

const T0_MS: u64 = 1_700_000_000_000;

fn node(id: &str, address: &str, status: NodeStatus, sessions: Option<u64>) -> DiscoveredNode {
    DiscoveredNode { instance_id: id.into(), address: address.into(), status, sessions, zone: None }
}

fn up(id: &str, address: &str, sessions: u64) -> DiscoveredNode {
    node(id, address, NodeStatus::Up, Some(sessions))
}

fn directory(statics: &[&str]) -> (NodeDirectory, Instant) {
    let dir = NodeDirectory::new(DiscoveryConfig::default(), true, statics.iter().map(|s| s.to_string()).collect());
    (dir, Instant::now())
}

#[test]
fn parses_an_eureka_application_with_a_list_of_instances() {
    let body = br#"{"application":{"name":"TETHER","instance":[
        {"instanceId":"gw-1","hostName":"gw1","app":"TETHER","status":"UP","overriddenStatus":"UNKNOWN",
         "port":{"$":7080,"@enabled":"true"},
         "metadata":{"quic":"gw1.example:7443","sessions":"12","zone":"eu-1","node_id":"gw-1"}},
        {"instanceId":"gw-2","status":"OUT_OF_SERVICE","metadata":{"quic":"10.0.0.2:7443","sessions":3}},
        {"instanceId":"gw-3","metadata":{"quic":"[::1]:7443"}},
        {"instanceId":"gw-4","status":"UP","metadata":{"@class":"java.util.Collections$EmptyMap"}},
        {"instanceId":"gw-5","status":"UP","metadata":{"quic":"no-port"}},
        {"instanceId":"gw-6","status":"UP","metadata":{"quic":"gw1.example:7443"}},
        {"hostName":"gw7","status":"starting","metadata":{"quic":"gw7:1","sessions":"many"}},
        "not an instance"
    ]}}"#;
    let nodes = parse_application(body).expect("parses");
    assert_eq!(
        nodes,
        [
            DiscoveredNode {
                instance_id: "gw-1".into(),
                address: "gw1.example:7443".into(),
                status: NodeStatus::Up,
                sessions: Some(12),
                zone: Some("eu-1".into()),
            },
            node("gw-2", "10.0.0.2:7443", NodeStatus::OutOfService, Some(3)),
            // A missing status is UP, as in Eureka.
            node("gw-3", "[::1]:7443", NodeStatus::Up, None),
            // gw-4 (no quic), gw-5 (no port) and gw-6 (gw-1's address again) are skipped.
            node("gw7", "gw7:1", NodeStatus::Starting, None),
        ]
    );
}

#[test]
fn parses_a_single_instance_object_and_an_application_without_instances() {
    let one = br#"{"application":{"name":"TETHER","instance":
        {"instanceId":"gw-1","status":"UP","metadata":{"quic":"127.0.0.1:7443","sessions":"0"}}}}"#;
    assert_eq!(parse_application(one).expect("parses"), [up("gw-1", "127.0.0.1:7443", 0)]);
    assert_eq!(parse_application(br#"{"application":{"name":"TETHER"}}"#).expect("parses"), []);
    assert_eq!(parse_application(br#"{"application":{"name":"TETHER","instance":[]}}"#).expect("parses"), []);
}

#[test]
fn refuses_what_is_not_an_application() {
    assert!(matches!(parse_application(b"<application/>"), Err(DiscoveryError::Json(_))));
    assert!(matches!(parse_application(b""), Err(DiscoveryError::Json(_))));
    assert!(matches!(parse_application(br#"{"applications":{}}"#), Err(DiscoveryError::Shape(_))));
    assert!(matches!(parse_application(br#"{"application":[]}"#), Err(DiscoveryError::Shape(_))));
    assert!(matches!(parse_application(br#"{"application":{"instance":"x"}}"#), Err(DiscoveryError::Shape(_))));
}

#[test]
fn addresses_must_be_host_and_port() {
    for ok in ["a:1", "10.0.0.1:7443", "[::1]:7443", "gw.example.com:65535"] {
        assert!(valid_address(ok), "{ok}");
    }
    for bad in ["", "a", "a:", ":7443", "a:0", "a:65536", "::1:7443", "[]:1", "http://a:1", "a b:1"] {
        assert!(!valid_address(bad), "{bad}");
    }
}

#[test]
fn the_least_loaded_up_node_is_chosen_ties_by_instance_id() {
    let (mut dir, now) = directory(&[]);
    assert!(dir.refreshed(
        vec![
            up("gw-3", "10.0.0.3:1", 4),
            up("gw-2", "10.0.0.2:1", 2),
            node("gw-0", "10.0.0.9:1", NodeStatus::OutOfService, Some(0)),
            node("gw-8", "10.0.0.8:1", NodeStatus::Down, Some(0)),
            node("gw-7", "10.0.0.7:1", NodeStatus::Starting, Some(0)),
            node("gw-6", "10.0.0.6:1", NodeStatus::Unknown, Some(0)),
            up("gw-1", "10.0.0.1:1", 2),
            node("gw-5", "10.0.0.5:1", NodeStatus::Up, None),
        ],
        now,
        T0_MS,
    ));
    assert_eq!(dir.choose(now).as_deref(), Some("10.0.0.1:1"));
    // Never a node that is not UP, even with fewer sessions; no count published: last.
    assert_eq!(dir.candidates(now), ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1", "10.0.0.5:1"]);
    // The same list in another order gives the same choice.
    let mut shuffled = dir.nodes().to_vec();
    shuffled.reverse();
    let (mut other, _) = directory(&[]);
    other.refreshed(shuffled, now, T0_MS);
    assert_eq!(other.candidates(now), dir.candidates(now));
}

#[test]
fn failed_nodes_cool_down_unless_nothing_else_is_left() {
    let (mut dir, t0) = directory(&[]);
    dir.refreshed(vec![up("a", "a:1", 0), up("b", "b:1", 1), up("c", "c:1", 2)], t0, T0_MS);
    dir.mark_failed("a:1", t0);
    assert_eq!(dir.candidates(t0), ["b:1", "c:1", "a:1"]);
    let t1 = t0 + secs(10);
    dir.mark_failed("b:1", t1);
    dir.mark_failed("c:1", t1 + secs(1));
    // Everything is cooling: the one whose cool-down ends first first.
    assert_eq!(dir.candidates(t1 + secs(1)), ["a:1", "b:1", "c:1"]);
    // a's cool-down (60 s) is over: it is the best choice again.
    assert_eq!(dir.choose(t0 + secs(60)).as_deref(), Some("a:1"));
    assert!(!dir.cooling("a:1", t0 + secs(60)));
    assert!(dir.cooling("b:1", t0 + secs(60)));
    // A login forgives at once.
    dir.mark_ok("b:1");
    assert_eq!(dir.candidates(t1 + secs(1)), ["b:1", "a:1", "c:1"]);
}

#[test]
fn configured_servers_are_the_last_resort() {
    let (mut dir, t0) = directory(&["seed:1", "", "fallback:1", "seed:1"]);
    assert_eq!(dir.statics(), ["seed:1", "fallback:1"]);
    // Nothing discovered yet: the configured servers, in order.
    assert_eq!(dir.candidates(t0), ["seed:1", "fallback:1"]);
    dir.refreshed(vec![up("a", "a:1", 3), up("b", "b:1", 1)], t0, T0_MS);
    assert_eq!(dir.candidates(t0), ["b:1", "a:1", "seed:1", "fallback:1"]);
    // Discovered nodes that failed come after the configured servers that did not.
    dir.mark_failed("b:1", t0);
    dir.mark_failed("a:1", t0 + secs(1));
    assert_eq!(dir.candidates(t0 + secs(1)), ["seed:1", "fallback:1", "b:1", "a:1"]);
    // A configured server the registry lists as draining is never chosen.
    dir.refreshed(
        vec![up("a", "a:1", 3), node("seed", "seed:1", NodeStatus::OutOfService, Some(0))],
        t0 + secs(2),
        T0_MS,
    );
    assert_eq!(dir.candidates(t0 + secs(2)), ["fallback:1", "a:1"]);
    // Nowhere to go at all.
    let (mut empty, _) = directory(&[]);
    assert_eq!(empty.choose(t0), None);
    empty.refreshed(vec![node("x", "x:1", NodeStatus::OutOfService, Some(0))], t0, T0_MS);
    assert_eq!(empty.choose(t0), None, "an OUT_OF_SERVICE node is never chosen");
}

#[test]
fn without_registries_the_configured_servers_take_turns_on_failure() {
    let mut dir = NodeDirectory::new(DiscoveryConfig::default(), false, vec!["a:1".into(), "b:1".into()]);
    let t0 = Instant::now();
    assert!(!dir.needs_refresh(t0));
    let mut now = t0;
    let mut seen = vec![];
    for _ in 0..4 {
        let next = dir.choose(now).expect("a server");
        seen.push(next.clone());
        dir.mark_failed(&next, now);
        now += secs(1);
    }
    assert_eq!(seen, ["a:1", "b:1", "a:1", "b:1"]);
    // Restoring a cache does nothing without registries.
    let cache = NodeCache { app: "TETHER".into(), fetched_ms: T0_MS, nodes: vec![up("x", "x:1", 0)] };
    assert!(!dir.restore(cache, "TETHER"));
    assert!(dir.nodes().is_empty());
}

#[test]
fn the_list_is_refreshed_when_stale_or_used_up() {
    let (mut dir, t0) = directory(&[]);
    assert!(dir.needs_refresh(t0), "never fetched");
    dir.refreshed(vec![up("a", "a:1", 0), up("b", "b:1", 0)], t0, T0_MS);
    assert!(!dir.needs_refresh(t0));
    assert!(!dir.needs_refresh(t0 + secs(29)));
    assert!(dir.needs_refresh(t0 + secs(30)), "older than the interval");
    // Every discovered node is cooling: the list may be out of date, fetch again.
    dir.mark_failed("a:1", t0 + secs(1));
    assert!(!dir.needs_refresh(t0 + secs(1)));
    dir.mark_failed("b:1", t0 + secs(2));
    assert!(dir.needs_refresh(t0 + secs(2)));
}

#[test]
fn a_failed_fetch_keeps_the_list_and_waits_before_the_next() {
    let (mut dir, t0) = directory(&["seed:1"]);
    dir.refreshed(vec![up("a", "a:1", 0)], t0, T0_MS);
    let t1 = t0 + secs(31);
    assert!(dir.needs_refresh(t1));
    dir.refresh_failed(t1);
    assert!(!dir.needs_refresh(t1 + secs(4)), "not on every reconnect while the registries are down");
    assert!(dir.needs_refresh(t1 + secs(5)));
    assert_eq!(dir.choose(t1).as_deref(), Some("a:1"), "the list in hand is still used");
    // An answer without a single node (a registry that just restarted) is not taken.
    assert!(!dir.refreshed(vec![], t1 + secs(5), T0_MS + 36_000));
    assert_eq!(dir.nodes().len(), 1);
    assert!(!dir.needs_refresh(t1 + secs(6)));
    // A good answer replaces the list and ends the wait.
    assert!(dir.refreshed(vec![up("b", "b:1", 0)], t1 + secs(10), T0_MS + 41_000));
    assert_eq!(dir.candidates(t1 + secs(10)), ["b:1", "seed:1"]);
    assert!(!dir.needs_refresh(t1 + secs(11)));
    // With a refresh interval below the retry interval, the interval wins.
    let cfg = DiscoveryConfig { refresh_interval: Duration::ZERO, ..DiscoveryConfig::default() };
    let mut eager = NodeDirectory::new(cfg, true, vec![]);
    eager.refresh_failed(t0);
    assert!(eager.needs_refresh(t0), "every (re)connect fetches first");
}

#[test]
fn the_cache_survives_a_restart_and_is_refreshed_before_use() {
    let (mut dir, t0) = directory(&[]);
    assert_eq!(dir.cache("TETHER"), None, "nothing fetched, nothing to keep");
    dir.refreshed(vec![up("b", "b:1", 7), node("a", "a:1", NodeStatus::OutOfService, Some(0))], t0, T0_MS);
    let cache = dir.cache("TETHER").expect("a list to keep");
    assert_eq!(cache.fetched_ms, T0_MS);
    let json = serde_json::to_string(&cache).expect("json");
    assert!(json.contains(r#""status":"OUT_OF_SERVICE""#), "{json}");
    let back: NodeCache = serde_json::from_str(&json).expect("reads back");
    assert_eq!(back, cache);

    // A cold start: the restored list is used, but fetched again first.
    let (mut cold, t1) = directory(&[]);
    assert!(!cold.restore(back.clone(), "OTHER"), "a list of another application is not taken");
    assert!(cold.restore(back, "tether"));
    assert!(cold.needs_refresh(t1));
    cold.refresh_failed(t1);
    assert_eq!(cold.candidates(t1), ["b:1"]);
    assert_eq!(cold.cache("TETHER").map(|c| c.fetched_ms), Some(T0_MS));
}
