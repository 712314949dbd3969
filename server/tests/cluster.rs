//! Three gateway processes on one PostgreSQL and one real Redis: messages, rooms, presence and
//! kicks cross nodes; a node killed mid-traffic or Redis restarted mid-traffic loses nothing.

#[path = "support/postgres.rs"]
mod postgres;

#[path = "support/redis.rs"]
mod redis_server;

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use tether_sdk::{Client, Credential, Event, Events, Target};

/// Three nodes (ids 1..=3) on `db` with Redis at `redis` (`--redis-cluster` when `sharded`),
/// sharing one certificate and resume secret, with a short node lease.
fn three_nodes(db: &str, redis: &str, sharded: bool) -> Vec<Server> {
    let mut common_args = vec![
        "--database-url".to_string(),
        db.to_string(),
        "--redis-url".to_string(),
        redis.to_string(),
        "--resume-secret".to_string(),
        "cluster-test-resume-secret".to_string(),
        "--node-lease".to_string(),
        "3s".to_string(),
    ];
    if sharded {
        common_args.push("--redis-cluster".to_string());
    }
    let args = |id: &str, tls: &[String]| {
        let mut a = common_args.clone();
        a.extend(["--node-id".to_string(), id.to_string()]);
        a.extend(tls.iter().cloned());
        a
    };
    let first_args = args("1", &[]);
    let first = Server::start(&first_args.iter().map(String::as_str).collect::<Vec<_>>());
    let tls = vec![
        "--tls-cert".to_string(),
        first.cert().display().to_string(),
        "--tls-key".to_string(),
        first.data.join("dev-key.pem").display().to_string(),
    ];
    let mut nodes = vec![first];
    for id in ["2", "3"] {
        let a = args(id, &tls);
        nodes.push(Server::start(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    nodes
}

/// A client of `user` on node `k`, failing over to the other nodes.
async fn client_on(nodes: &[Server], k: usize, user: &str, device_id: &str) -> (Client, Events) {
    let mut cfg = nodes[0].client_config(Credential::Token(token(user, 3600)), "phone", device_id);
    cfg.server = nodes[k].quic.to_string();
    cfg.fallback_servers = nodes.iter().enumerate().filter(|(i, _)| *i != k).map(|(_, n)| n.quic.to_string()).collect();
    let (c, e) = Client::start(cfg).await.expect("client start");
    tokio::time::timeout(Duration::from_secs(20), c.wait_online()).await.expect("online in time").expect("online");
    (c, e)
}

async fn presence_of(events: &mut Events, user: &str, online: bool) -> tether_sdk::Presence {
    wait_event(events, 20, |e| match e {
        Event::Presence(p) if p.user == user && p.online == online => Some(p.clone()),
        _ => None,
    })
    .await
}

/// Sum of a metric line over the nodes.
async fn metric_sum(nodes: &[Server], line: &str) -> f64 {
    let mut sum = 0.0;
    for n in nodes {
        sum += n.metric(line).await;
    }
    sum
}

/// Cross-node 1:1 messages, presence of a user on node A seen by a watcher on node C (and
/// its disconnect), a room with a member on each node seeing one order and the right counts,
/// and no node receiving 1:1 traffic it did not need.
async fn messages_rooms_and_presence_cross_nodes(db: &str, redis: &str, sharded: bool) {
    let nodes = three_nodes(db, redis, sharded);
    let (alice, mut alice_ev) = client_on(&nodes, 0, "alice", "a1").await;
    let (bob, mut bob_ev) = client_on(&nodes, 1, "bob", "b1").await;
    let (carol, mut carol_ev) = client_on(&nodes, 2, "carol", "c1").await;

    // Presence: carol (node 3) watches alice (node 1).
    carol.subscribe_presence(vec!["alice".into()]).expect("subscribe");
    let p = presence_of(&mut carol_ev, "alice", true).await;
    assert_eq!(p.devices.len(), 1);
    assert_eq!(p.devices[0].node, "node-1", "alice's session is on node 1: {p:?}");

    // 1:1 across nodes, each way.
    alice.send_text("bob", "a->b").await.expect("ack");
    bob.send_text("carol", "b->c").await.expect("ack");
    carol.send_text("alice", "c->a").await.expect("ack");
    assert_eq!(next_message(&mut bob_ev, 20).await.payload, b"a->b");
    assert_eq!(next_message(&mut carol_ev, 20).await.payload, b"b->c");
    assert_eq!(next_message(&mut alice_ev, 20).await.payload, b"c->a");
    for i in 0..50 {
        drop(alice.send_text("bob", &format!("n{i}")));
    }
    for i in 0..50 {
        let m = next_message(&mut bob_ev, 20).await;
        assert_eq!(m.payload, format!("n{i}").as_bytes(), "in order across nodes");
    }
    assert_eq!(
        metric_sum(&nodes, "tether_bus_received_total{kind=\"inbox\",used=\"unneeded\"}").await,
        0.0,
        "no node received 1:1 traffic it did not need"
    );
    assert!(metric_sum(&nodes, "tether_bus_received_total{kind=\"inbox\",used=\"needed\"}").await >= 3.0);

    // A room with a member on every node.
    let j = alice.join_room("r").await.expect("join");
    assert_eq!((j.members, j.online), (1, 1));
    bob.join_room("r").await.expect("join");
    let j = carol.join_room("r").await.expect("join");
    assert_eq!((j.members, j.online), (3, 3), "counts cover all nodes");
    // alice (node 1) hears carol (node 3) enter, with the counts.
    let ev = wait_event(&mut alice_ev, 20, |e| match e {
        Event::RoomEvent(ev) if ev.user == "carol" => Some(ev.clone()),
        _ => None,
    })
    .await;
    assert_eq!((ev.members, ev.online), (3, 3));
    let senders = [(&alice, "a"), (&bob, "b"), (&carol, "c")];
    for i in 0..10 {
        for (c, p) in &senders {
            drop(c.send_to_room("r", "text/plain", format!("{p}{i}").into_bytes()));
        }
    }
    let mut orders = Vec::new();
    for (ev, me) in [(&mut alice_ev, "a"), (&mut bob_ev, "b"), (&mut carol_ev, "c")] {
        // Each member gets the 20 messages of the others; its own are acked with their seq.
        let mut got = BTreeMap::new();
        while got.len() < 20 {
            let m = next_message(ev, 30).await;
            if m.to == Target::Room("r".into()) {
                let text = String::from_utf8_lossy(&m.payload).into_owned();
                assert!(!text.starts_with(me), "own message delivered back");
                assert!(got.insert(m.seq, text).is_none(), "delivered twice");
            }
        }
        orders.push(got);
    }
    // One order: where two members saw the same message, it had the same seq.
    for (i, a) in orders.iter().enumerate() {
        for b in orders.iter().skip(i + 1) {
            for (seq, text) in a {
                if let Some(t) = b.get(seq) {
                    assert_eq!(t, text, "seq {seq} names one message everywhere");
                }
            }
        }
    }
    let all: std::collections::BTreeSet<u64> = orders.iter().flat_map(|o| o.keys().copied()).collect();
    assert_eq!(all, (1..=30).collect(), "30 messages, gapless seqs");

    // alice leaves: carol (node 3) sees her go offline, and the room hears it.
    alice.close().await;
    let p = presence_of(&mut carol_ev, "alice", false).await;
    assert!(p.devices.is_empty());
    let ev = wait_event(&mut bob_ev, 20, |e| match e {
        Event::RoomEvent(ev) if ev.user == "alice" && ev.kind == tether_sdk::RoomEventKind::Offline => Some(ev.clone()),
        _ => None,
    })
    .await;
    assert_eq!((ev.members, ev.online), (3, 2));
    bob.close().await;
    carol.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_rooms_and_presence_cross_three_nodes() {
    let pg = postgres::Postgres::start(false);
    let db = pg.fresh_db().await;
    let redis = redis_server::Redis::start();
    messages_rooms_and_presence_cross_nodes(&db, &redis.url(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_rooms_and_presence_cross_three_nodes_on_a_redis_cluster() {
    let pg = postgres::Postgres::start(false);
    let db = pg.fresh_db().await;
    let redis = redis_server::RedisCluster::start();
    messages_rooms_and_presence_cross_nodes(&db, &redis.urls(), true).await;
}

/// A second login of the same user and device type on another node kicks the first session
/// there; the admin API of a third node lists the new session only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relogin_on_another_node_kicks_the_old_session() {
    let pg = postgres::Postgres::start(false);
    let db = pg.fresh_db().await;
    let redis = redis_server::Redis::start();
    relogin_kicks(&db, &redis.url(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relogin_on_another_node_kicks_the_old_session_on_a_redis_cluster() {
    let pg = postgres::Postgres::start(false);
    let db = pg.fresh_db().await;
    let redis = redis_server::RedisCluster::start();
    relogin_kicks(&db, &redis.urls(), true).await;
}

async fn relogin_kicks(db: &str, redis: &str, sharded: bool) {
    let nodes = three_nodes(db, redis, sharded);
    let (_old, mut old_ev) = client_on(&nodes, 0, "dave", "d1").await;
    let (_new, _new_ev) = client_on(&nodes, 1, "dave", "d2").await;
    let kicked = wait_event(&mut old_ev, 20, |e| match e {
        Event::Kicked(k) => Some(k.clone()),
        _ => None,
    })
    .await;
    assert_eq!(kicked.reason, tether_sdk::KickReason::Replaced);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = nodes[2].admin("GET", "/v1/users/dave/sessions", None).await;
        assert_eq!(status, 200);
        let sessions = body["sessions"].as_array().cloned().unwrap_or_default();
        if sessions.len() == 1 {
            assert_eq!(sessions[0]["device_id"], "d2");
            assert_eq!(sessions[0]["node"], "node-2");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "sessions: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Traffic from a client on node 1 to one on node 3 and back; node 1 is SIGKILLed midway. The
/// client fails over and each side gets every message of the other exactly once, in order.
/// A user of node 1 whose app has no other node to go to is announced offline to a watcher on
/// node 3 once node 1's lease has run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_mid_traffic_loses_nothing() {
    let pg = postgres::Postgres::start(false);
    let db = pg.fresh_db().await;
    let redis = redis_server::Redis::start();
    node_kill_loses_nothing(&db, &redis.url(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_mid_traffic_loses_nothing_on_a_redis_cluster() {
    let pg = postgres::Postgres::start(false);
    let db = pg.fresh_db().await;
    let redis = redis_server::RedisCluster::start();
    node_kill_loses_nothing(&db, &redis.urls(), true).await;
}

async fn node_kill_loses_nothing(db: &str, redis: &str, sharded: bool) {
    let mut nodes = three_nodes(db, redis, sharded);
    let (alice, alice_ev) = client_on(&nodes, 0, "alice", "a1").await;
    let (bob, bob_ev) = client_on(&nodes, 2, "bob", "b1").await;
    // erin's app knows node 1 only; carol on node 2 watches her.
    let (_erin, _erin_ev) = nodes[0].client("erin", "phone", "e1").await;
    let (carol, mut carol_ev) = client_on(&nodes, 1, "carol", "c1").await;
    carol.subscribe_presence(vec!["erin".into()]).expect("subscribe");
    presence_of(&mut carol_ev, "erin", true).await;
    traffic_with_a_fault(&alice, alice_ev, &bob, bob_ev, 300, || nodes[0].kill()).await;
    let p = presence_of(&mut carol_ev, "erin", false).await;
    assert!(p.devices.is_empty());
    // The reaper counts the node once it has announced all of its users.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric_sum(&nodes[1..], "tether_nodes_reaped_total").await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "no live node reaped node 1");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The same traffic between nodes 1 and 2 while Redis is killed (losing every key and
/// subscription) and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_mid_traffic_loses_nothing() {
    let pg = postgres::Postgres::start(false);
    let db = pg.fresh_db().await;
    let mut redis = redis_server::Redis::start();
    let url = redis.url();
    redis_restart_loses_nothing(&db, &url, false, move || {
        redis.kill();
        std::thread::sleep(Duration::from_secs(2));
        redis.restart();
        redis
    })
    .await;
}

/// The same with every master of a Redis Cluster killed (losing every key and subscription)
/// and started again (the cluster's configuration survives in its nodes.conf files).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_mid_traffic_loses_nothing_on_a_redis_cluster() {
    let pg = postgres::Postgres::start(false);
    let db = pg.fresh_db().await;
    let mut redis = redis_server::RedisCluster::start();
    let urls = redis.urls();
    redis_restart_loses_nothing(&db, &urls, true, move || {
        redis.kill_all();
        std::thread::sleep(Duration::from_secs(2));
        redis.restart_all();
        redis
    })
    .await;
}

async fn redis_restart_loses_nothing<R: Send + 'static>(
    db: &str,
    redis: &str,
    sharded: bool,
    restart: impl FnOnce() -> R + Send + 'static,
) {
    let nodes = three_nodes(db, redis, sharded);
    let (alice, alice_ev) = client_on(&nodes, 0, "alice", "a1").await;
    let (bob, bob_ev) = client_on(&nodes, 1, "bob", "b1").await;
    let kept = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot = kept.clone();
    traffic_with_a_fault(&alice, alice_ev, &bob, bob_ev, 300, move || {
        // Keep the restarted Redis alive until the end of the test.
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(restart());
    })
    .await;
    // The nodes found their way back: presence is in Redis again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) =
            nodes[2].admin("POST", "/v1/presence", Some(serde_json::json!({"users": ["alice", "bob"]}))).await;
        let online: Vec<bool> =
            body["presence"].as_array().into_iter().flatten().map(|p| p["online"].as_bool().unwrap_or(false)).collect();
        if online == vec![true, true] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "presence not restored: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric_sum(&nodes, "tether_cluster_resyncs_total").await >= 2.0, "the nodes resynced their sessions");
    drop(kept);
}

/// `n` messages each way between alice and bob, with `fault` run a third of the way in.
async fn traffic_with_a_fault(
    alice: &Client,
    alice_ev: Events,
    bob: &Client,
    bob_ev: Events,
    n: usize,
    fault: impl FnOnce(),
) {
    let receive = |mut events: Events, prefix: &'static str| {
        tokio::spawn(async move {
            let mut got = Vec::with_capacity(n);
            while got.len() < n {
                let m = next_message(&mut events, 90).await;
                let text = String::from_utf8_lossy(&m.payload).into_owned();
                if text.starts_with(prefix) {
                    got.push(text);
                }
            }
            got
        })
    };
    let bob_gets = receive(bob_ev, "a");
    let alice_gets = receive(alice_ev, "b");
    let mut handles = Vec::with_capacity(2 * n);
    let mut fault = Some(fault);
    for i in 0..n {
        handles.push(alice.send_text("bob", &format!("a{i}")));
        handles.push(bob.send_text("alice", &format!("b{i}")));
        if i == n / 3 {
            if let Some(f) = fault.take() {
                f();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (i, h) in handles.into_iter().enumerate() {
        let ack = tokio::time::timeout(Duration::from_secs(90), h).await.expect("acked in time");
        ack.unwrap_or_else(|e| panic!("send {i} failed for good: {e:?}"));
    }
    let expect = |p: &str| (0..n).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    let bob_got = tokio::time::timeout(Duration::from_secs(90), bob_gets).await.expect("bob in time").expect("bob");
    let alice_got =
        tokio::time::timeout(Duration::from_secs(90), alice_gets).await.expect("alice in time").expect("alice");
    assert_eq!(bob_got, expect("a"), "bob saw each of alice's messages once, in order");
    assert_eq!(alice_got, expect("b"), "alice saw each of bob's messages once, in order");
}

/// Instances of app TETHER in the registry at `admin`: (instance id, status, quic), read with
/// the registry's client (Eureka JSON).
async fn registered(admin: std::net::SocketAddr) -> Vec<(String, String, String)> {
    let Ok(client) = tether_registry::EurekaClient::new([format!("http://{admin}/eureka/")]) else { return Vec::new() };
    let Ok(Some(app)) = client.app("TETHER").await else { return Vec::new() };
    let mut out: Vec<(String, String, String)> = app
        .instances
        .iter()
        .map(|i| {
            (i.instance_id.clone(), i.status.as_str().to_string(), i.metadata.get("quic").cloned().unwrap_or_default())
        })
        .collect();
    out.sort();
    out
}

/// (instance id, published session count) of every registered node.
async fn sessions_in_registry(admin: std::net::SocketAddr) -> Vec<(String, u64)> {
    let Ok(client) = tether_registry::EurekaClient::new([format!("http://{admin}/eureka/")]) else { return Vec::new() };
    let Ok(Some(app)) = client.app("TETHER").await else { return Vec::new() };
    let mut out: Vec<(String, u64)> = app
        .instances
        .iter()
        .map(|i| (i.instance_id.clone(), i.metadata.get("sessions").and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)))
        .collect();
    out.sort();
    out
}

async fn wait_registered(admin: std::net::SocketAddr, want: impl Fn(&[(String, String, String)]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = registered(admin).await;
        if want(&r) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "registry never showed what was expected: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nodes register (with the QUIC address clients reach them at), a drained node goes
/// OUT_OF_SERVICE, stops being ready and moves its clients to other nodes with `go_away`
/// without losing a message, and a node stopped with SIGTERM cancels its registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_register_and_a_drained_node_moves_its_clients_without_loss() {
    let pg = postgres::Postgres::start(false);
    let db = pg.fresh_db().await;
    let redis = redis_server::Redis::start();
    let mut nodes = three_nodes(&db, &redis.url(), false);
    // Node 1's embedded registry is the cluster's registry here: nodes 2 and 3 restart onto it.
    nodes[0].extra.extend(["--registry-renew".to_string(), "300ms".to_string()]);
    nodes[0].restart();
    let registry = nodes[0].admin;
    let url = format!("http://{registry}/eureka/");
    for node in nodes.iter_mut().skip(1) {
        node.extra.extend([
            "--registry-url".to_string(),
            url.clone(),
            "--registry-renew".to_string(),
            "300ms".to_string(),
        ]);
        node.restart();
    }
    let quics: Vec<String> = nodes.iter().map(|n| n.quic.to_string()).collect();
    wait_registered(registry, |r| {
        r.len() == 3 && r.iter().all(|(_, status, quic)| status == "UP" && quics.contains(quic))
    })
    .await;

    let (alice, alice_ev) = client_on(&nodes, 0, "alice", "a1").await;
    let (bob, bob_ev) = client_on(&nodes, 2, "bob", "b1").await;
    // The live session counts reach the registry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sessions_in_registry(registry).await
        != [("node-1".to_string(), 1), ("node-2".into(), 0), ("node-3".into(), 1)]
    {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", sessions_in_registry(registry).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain_at = nodes[0].admin;
    // Node 1 is drained a third of the way into the traffic.
    traffic_with_a_fault(&alice, alice_ev, &bob, bob_ev, 300, move || {
        let (status, body) = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(admin_call(
                drain_at,
                "POST",
                "/v1/drain",
                None,
                Some(ADMIN_TOKEN),
            ))
        });
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["draining"], true);
        assert_eq!(body["sessions_told"], 1, "alice's session was told to move");
    })
    .await;
    let (status, _) = http(drain_at, "GET", "/readyz", None, None).await;
    assert_eq!(status, 503, "a draining node is not ready");
    wait_registered(registry, |r| r.iter().any(|(id, status, _)| id == "node-1" && status == "OUT_OF_SERVICE")).await;
    // alice moved to another node: she can still talk to bob, and node 1 holds no session.
    let ack = tokio::time::timeout(Duration::from_secs(30), alice.send_text("bob", "after the drain"))
        .await
        .expect("acked in time")
        .expect("ack");
    assert!(ack.seq > 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while nodes[0].metric("tether_sessions").await > 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "sessions stayed on the draining node");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(nodes[0].metric("tether_session_closes_total{reason=\"going_away\"}").await >= 1.0);
    // SIGTERM on node 2: it leaves the registry.
    let status = nodes[1].terminate().expect("node 2 exit status");
    assert!(status.success(), "node 2 exited cleanly: {status:?}");
    wait_registered(registry, |r| !r.iter().any(|(id, _, _)| id == "node-2")).await;
}
