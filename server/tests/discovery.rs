//! Clients discover gateway nodes through a real `tether-registry` process: the SDK, given only
//! the registry's URL, connects to the least-loaded `UP` node, never to one out of service,
//! fails over to another discovered node when its node dies (losing no message), moves at once
//! when its node drains (`go_away`), and, with the registry gone, reconnects from the node
//! list it fetched before (in memory, and from its state dir after a restart).
//!
//! The nodes' instances are registered here through the registry's HTTP API, with the `quic`
//! metadata pointing at each node, so that the test sets the session counts and statuses the
//! choice is made on.

#[path = "support/postgres.rs"]
mod postgres;

#[path = "support/redis.rs"]
mod redis_server;

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tether_sdk::{Client, ClientConfig, Credential, Events, Trust};

/// The `tether-registry` binary: `$TETHER_REGISTRY_BIN`, else `target/debug/tether-registry`
/// next to this test's own binary, built with cargo when it is missing (it is a binary of the
/// `registry` crate, not of this one, so cargo does not build it for this test).
fn registry_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TETHER_REGISTRY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/discovery-<hash> -> target/<profile>
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir").to_path_buf();
    let bin = profile_dir.join("tether-registry");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "tether-registry", "--manifest-path", manifest]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build -p tether-registry");
        assert!(status.success(), "cargo build -p tether-registry failed");
    }
    assert!(bin.exists(), "{} missing after building it", bin.display());
    bin
}

/// A running `tether-registry` process on a free loopback port.
struct Registry {
    addr: SocketAddr,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let mut child = Command::new(registry_bin())
            .args(["--listen", "127.0.0.1:0", "--log", "info"])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn tether-registry");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ready line");
        let addr = line
            .split_whitespace()
            .find_map(|p| p.strip_prefix("listen="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("registry did not start: {line:?}"));
        Registry { addr, child: Some(child), _dir: dir }
    }

    /// The base URL clients are given.
    fn url(&self) -> String {
        format!("http://{}/eureka/", self.addr)
    }

    /// Registers (or re-registers) node `id` as an instance of `TETHER` reached at `node`'s
    /// QUIC address, publishing `sessions` live sessions.
    async fn register(&self, id: &str, node: &Server, sessions: u64) {
        let body = serde_json::json!({"instance": {
            "instanceId": id,
            "hostName": "127.0.0.1",
            "app": "TETHER",
            "ipAddr": "127.0.0.1",
            "status": "UP",
            "port": {"$": node.admin.port(), "@enabled": "true"},
            "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
            "leaseInfo": {"durationInSecs": 90},
            "vipAddress": "tether",
            "metadata": {"quic": node.quic.to_string(), "sessions": sessions.to_string(), "zone": "test", "node_id": id},
        }});
        let (status, text) = http(self.addr, "POST", "/eureka/apps/TETHER", Some(body), None).await;
        assert_eq!(status, 204, "register {id}: {text}");
    }

    /// Sets node `id`'s status (`OUT_OF_SERVICE` while it drains, `UP`).
    async fn set_status(&self, id: &str, value: &str) {
        let path = format!("/eureka/apps/TETHER/{id}/status?value={value}");
        let (status, text) = http(self.addr, "PUT", &path, None, None).await;
        assert_eq!(status, 200, "status of {id}: {text}");
    }

    /// SIGKILL.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `n` SQLite nodes (each its own store) sharing the first one's certificate.
fn nodes(n: usize, extra: &[&str]) -> Vec<Server> {
    let first = Server::start(extra);
    let (cert, key) = (first.cert().display().to_string(), first.data.join("dev-key.pem").display().to_string());
    let mut all = vec![first];
    for _ in 1..n {
        let mut args = extra.to_vec();
        args.extend(["--tls-cert", &cert, "--tls-key", &key]);
        all.push(Server::start(&args));
    }
    all
}

/// A client of `user` that knows nothing but the registry's URL, with the test's fast timers.
fn discovering(registry: &Registry, node: &Server, user: &str, device_id: &str) -> ClientConfig {
    let mut cfg = node.client_config(Credential::Token(token(user, 3600)), "phone", device_id);
    cfg.server = String::new();
    cfg.registry_urls = vec![registry.url()];
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.registry_timeout = Duration::from_secs(1);
    cfg.trust = Trust::pinned(node.cert());
    cfg
}

async fn start_online(cfg: ClientConfig) -> (Client, Events) {
    let (c, e) = Client::start(cfg).await.expect("client start");
    tokio::time::timeout(Duration::from_secs(15), c.wait_online()).await.expect("online in time").expect("online");
    (c, e)
}

/// The node the client is connected to, once it is online there.
async fn node_of(client: &Client) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = client.status().await.expect("status");
        if let (tether_sdk::ConnectionState::Online, Some(server)) = (&status.state, &status.server) {
            return server.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "not online: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the client is online on `node`.
async fn online_on(client: &Client, node: &Server, secs: u64) {
    let want = node.quic.to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let status = client.status().await.expect("status");
        if status.state == tether_sdk::ConnectionState::Online && status.server.as_deref() == Some(&want) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "not online on {want} within {secs}s: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next `n` message texts.
async fn texts(events: &mut Events, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let m = next_message(events, 20).await;
        out.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    out
}

async fn nothing_more(events: &mut Events) {
    let extra = tokio::time::timeout(Duration::from_millis(800), next_message(events, 1)).await;
    assert!(extra.is_err(), "nothing delivered twice: {extra:?}");
}

async fn send_all(client: &Client, to: &str, prefix: &str, range: std::ops::Range<usize>) {
    let handles: Vec<_> = range.map(|i| client.send_text(to, &format!("{prefix}{i}"))).collect();
    for (i, h) in handles.into_iter().enumerate() {
        let ack = tokio::time::timeout(Duration::from_secs(20), h).await.expect("acked in time");
        ack.unwrap_or_else(|e| panic!("{prefix} message {i} failed: {e:?}"));
    }
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_least_loaded_up_node_is_chosen_and_never_one_out_of_service() {
    let t0 = Instant::now();
    let registry = Registry::start();
    let n = nodes(3, &[]);
    registry.register("gw-a", &n[0], 7).await;
    registry.register("gw-b", &n[1], 2).await;
    registry.register("gw-c", &n[2], 0).await;
    registry.set_status("gw-c", "OUT_OF_SERVICE").await; // the emptiest node is draining

    let (alice, _alice_events) = start_online(discovering(&registry, &n[0], "alice", "alice-1")).await;
    assert_eq!(node_of(&alice).await, n[1].quic.to_string(), "the least-loaded UP node");
    let status = alice.status().await.expect("status");
    assert_eq!(status.nodes.len(), 3, "the whole list is known: {:?}", status.nodes);

    // B is taken out of service too: new clients go to A, never to C (fewest sessions, but
    // out of service) nor to B.
    registry.set_status("gw-b", "OUT_OF_SERVICE").await;
    for i in 0..3 {
        let (c, _e) = start_online(discovering(&registry, &n[0], &format!("user{i}"), &format!("dev-{i}"))).await;
        assert_eq!(node_of(&c).await, n[0].quic.to_string(), "client {i}");
        c.close().await;
    }
    // With no node UP at all, a client has nowhere to go: it does not pick a draining node.
    registry.set_status("gw-a", "OUT_OF_SERVICE").await;
    let (nobody, _e) = Client::start(discovering(&registry, &n[0], "nobody", "nobody-1")).await.expect("start");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = nobody.status().await.expect("status");
    assert_ne!(status.state, tether_sdk::ConnectionState::Online, "{status:?}");
    assert_eq!(status.server, None);
    // Back UP: the waiting client gets there (the list is fetched again since nothing was left).
    registry.set_status("gw-a", "UP").await;
    online_on(&nobody, &n[0], 15).await;
    nobody.close().await;
    alice.close().await;
    eprintln!("least-loaded choice took {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_fails_over_to_another_discovered_node_and_loses_no_message() {
    let t0 = Instant::now();
    let pg = postgres::Postgres::start(false);
    let db = pg.fresh_db().await;
    let redis = redis_server::Redis::start();
    let redis_url = redis.url();
    let shared = |id: &str, tls: &[String]| -> Vec<String> {
        let mut args: Vec<String> = [
            "--database-url",
            &db,
            "--redis-url",
            &redis_url,
            "--resume-secret",
            "discovery-test-resume-secret",
            "--node-lease",
            "3s",
            "--node-id",
            id,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(tls.iter().cloned());
        args
    };
    let a_args = shared("1", &[]);
    let mut a = Server::start(&a_args.iter().map(String::as_str).collect::<Vec<_>>());
    let tls = [
        "--tls-cert".to_string(),
        a.cert().display().to_string(),
        "--tls-key".to_string(),
        a.data.join("dev-key.pem").display().to_string(),
    ];
    let b_args = shared("2", &tls);
    let b = Server::start(&b_args.iter().map(String::as_str).collect::<Vec<_>>());
    let registry = Registry::start();
    registry.register("gw-1", &a, 0).await;
    registry.register("gw-2", &b, 5).await;

    // Bob is on node B; Alice finds node A through the registry.
    let mut bob_cfg = b.client_config(Credential::Token(token("bob", 3600)), "phone", "bob-1");
    bob_cfg.trust = Trust::pinned(a.cert());
    let (bob, mut bob_events) = start_online(bob_cfg).await;
    let (alice, mut alice_events) = start_online(discovering(&registry, &a, "alice", "alice-1")).await;
    assert_eq!(node_of(&alice).await, a.quic.to_string());

    // Messages both ways across the two nodes.
    send_all(&alice, "bob", "a", 0..20).await;
    assert_eq!(texts(&mut bob_events, 20).await, names("a", 0..20));
    send_all(&bob, "alice", "b", 0..10).await;
    assert_eq!(texts(&mut alice_events, 10).await, names("b", 0..10));

    // Node A dies (SIGKILL: no goodbye) with Alice's next messages on the way.
    let handles: Vec<_> = (20..40).map(|i| alice.send_text("bob", &format!("a{i}"))).collect();
    a.kill();
    let killed = tokio::time::Instant::now();
    let more: Vec<_> = (40..60).map(|i| alice.send_text("bob", &format!("a{i}"))).collect();
    online_on(&alice, &b, 15).await;
    eprintln!("alice back online on node B {:?} after the kill", killed.elapsed());
    for (i, h) in handles.into_iter().chain(more).enumerate() {
        let ack = tokio::time::timeout(Duration::from_secs(20), h).await.expect("acked in time");
        ack.unwrap_or_else(|e| panic!("message a{} failed: {e:?}", i + 20));
    }
    // Bob gets every message once, in order; Alice gets Bob's later ones on node B.
    assert_eq!(texts(&mut bob_events, 40).await, names("a", 20..60));
    send_all(&bob, "alice", "b", 10..20).await;
    assert_eq!(texts(&mut alice_events, 10).await, names("b", 10..20));
    nothing_more(&mut bob_events).await;
    nothing_more(&mut alice_events).await;
    alice.close().await;
    bob.close().await;
    eprintln!("failover test took {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_node_sends_its_clients_to_another_node_at_once() {
    let t0 = Instant::now();
    let registry = Registry::start();
    let n = nodes(2, &["--drain-timeout", "5s"]);
    registry.register("gw-a", &n[0], 0).await;
    registry.register("gw-b", &n[1], 3).await;
    let mut cfg = discovering(&registry, &n[0], "alice", "alice-1");
    // A backoff would show: make it long.
    cfg.session.backoff_base = Duration::from_secs(5);
    cfg.session.backoff_max = Duration::from_secs(5);
    let (alice, mut alice_events) = start_online(cfg).await;
    assert_eq!(node_of(&alice).await, n[0].quic.to_string());
    let mut bob_cfg = n[1].client_config(Credential::Token(token("bob", 3600)), "phone", "bob-1");
    bob_cfg.trust = Trust::pinned(n[0].cert());
    let (bob, mut bob_events) = start_online(bob_cfg).await;

    // Node A drains: OUT_OF_SERVICE in the registry, then `go_away` to its sessions.
    registry.set_status("gw-a", "OUT_OF_SERVICE").await;
    let drained = tokio::time::Instant::now();
    let (status, body) = n[0].admin("POST", "/v1/drain", None).await;
    assert_eq!(status, 200, "drain: {body}");
    online_on(&alice, &n[1], 4).await;
    let moved = drained.elapsed();
    assert!(moved < Duration::from_secs(3), "moved at once, not after a backoff: {moved:?}");
    eprintln!("alice moved to node B {moved:?} after the drain");

    // And works there: both ways.
    send_all(&alice, "bob", "a", 0..5).await;
    assert_eq!(texts(&mut bob_events, 5).await, names("a", 0..5));
    send_all(&bob, "alice", "b", 0..5).await;
    assert_eq!(texts(&mut alice_events, 5).await, names("b", 0..5));
    alice.close().await;
    bob.close().await;
    eprintln!("drain test took {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_registry_down_a_client_reconnects_from_the_list_it_fetched_before() {
    let t0 = Instant::now();
    let mut registry = Registry::start();
    let mut n = nodes(2, &[]);
    registry.register("gw-a", &n[0], 0).await;
    registry.register("gw-b", &n[1], 1).await;
    let state = tempfile::tempdir().expect("state dir");
    let mut cfg = discovering(&registry, &n[0], "alice", "alice-1");
    cfg.state_dir = Some(state.path().display().to_string());
    // Every reconnect fetches the list first, so the failover below does try the registry.
    cfg.discovery.refresh_interval = Duration::ZERO;
    let (alice, _alice_events) = start_online(cfg.clone()).await;
    assert_eq!(node_of(&alice).await, n[0].quic.to_string());
    let cache = std::fs::read_to_string(state.path().join(tether_sdk::discovery::NODE_CACHE_FILE)).expect("cache");
    assert!(cache.contains(&n[1].quic.to_string()), "the list is kept in the state dir: {cache}");

    // The registry goes away, then Alice's node: she reconnects to the other node she knows of.
    registry.kill();
    n[0].kill();
    online_on(&alice, &n[1], 15).await;
    let ack = tokio::time::timeout(Duration::from_secs(10), alice.send_text("bob", "after the failover"))
        .await
        .expect("acked in time")
        .expect("stored");
    assert!(ack.seq > 0);
    alice.close().await;

    // A cold start with the registry still down and no server configured: the list in the
    // state dir is all the client has. Node A (first on it) is dead; node B is found.
    let cold_start = tokio::time::Instant::now();
    let (alice, _alice_events) = start_online(cfg).await;
    assert_eq!(node_of(&alice).await, n[1].quic.to_string());
    eprintln!("cold start online via the cached list in {:?}", cold_start.elapsed());
    alice.close().await;
    eprintln!("registry-down test took {:?}", t0.elapsed());
}
