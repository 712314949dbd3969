//! A node on the shared store (a real PostgreSQL started here), end to end: the database goes
//! away mid-traffic and comes back; nothing acknowledged is lost, nothing is stored twice.

#[path = "support/postgres.rs"]
mod postgres;

#[path = "support/mariadb.rs"]
mod mariadb;

mod common;

use std::time::Duration;

use common::*;
use tether_server::store::postgres::{PgStore, PoolSettings};
use tether_server::store::sqlite::StoreHooks;
use tether_server::store::Store;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_loses_and_duplicates_nothing() {
    // Durable settings: a transaction PostgreSQL acknowledged must survive its SIGKILL.
    let mut pg = postgres::Postgres::start(true);
    let url = pg.fresh_db().await;
    let server =
        Server::start(&["--database-url", &url, "--db-acquire-timeout", "500ms", "--db-statement-timeout", "2s"]);
    let (status, _) = http(server.admin, "GET", "/readyz", None, None).await;
    assert_eq!(status, 200, "ready on PostgreSQL");
    let (alice, _alice_events) = server.client("alice", "phone", "alice-1").await;
    let (_bob, mut bob_events) = server.client("bob", "phone", "bob-1").await;

    // 300 messages over about 6 s; the database is killed after 2 s and is away for 10 s.
    const N: usize = 300;
    let sender = {
        let alice = alice.clone();
        tokio::spawn(async move {
            let mut handles = Vec::with_capacity(N);
            for i in 0..N {
                handles.push(alice.send_text("bob", &format!("m{i}")));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            handles
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.kill();
    let down_at = tokio::time::Instant::now();
    let mut saw_not_ready = false;
    while down_at.elapsed() < Duration::from_secs(10) {
        let (status, _) = http(server.admin, "GET", "/readyz", None, None).await;
        saw_not_ready |= status == 503;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(saw_not_ready, "/readyz reported not ready while the database was down");
    pg.restart();

    // Every send is acknowledged in the end (the SDK retried the refused ones).
    let handles = sender.await.expect("sender");
    for h in handles {
        let ack = tokio::time::timeout(Duration::from_secs(90), h).await.expect("acked in time");
        ack.unwrap_or_else(|e| panic!("a send failed for good: {e:?}"));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = http(server.admin, "GET", "/readyz", None, None).await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "ready again after the database came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The recipient sees each message exactly once, in the order they were sent.
    for i in 0..N {
        let m = next_message(&mut bob_events, 60).await;
        assert_eq!(String::from_utf8_lossy(&m.payload), format!("m{i}"), "message {i}");
    }
    let extra = tokio::time::timeout(Duration::from_millis(1500), next_message(&mut bob_events, 2)).await;
    assert!(extra.is_err(), "nothing delivered twice: {extra:?}");

    // And the database holds each once, with gapless seqs.
    let store = PgStore::open(&url, &PoolSettings::default(), StoreHooks::default()).await.expect("open");
    assert_eq!(store.count_from("alice").await.expect("count"), N as u64);
    let inbox = store.fetch_inbox("bob", 0, None, 10_000).await.expect("fetch");
    assert_eq!(inbox.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=N as u64).collect::<Vec<_>>());
    let errors = server.metric(r#"tether_store_errors_total{op="append"}"#).await;
    assert!(errors >= 1.0, "the outage was seen by the writer ({errors} failed appends)");
    store.close().await;
}

/// Everything a device needs to resume, with room history, moves from an embedded node's
/// log store (the default) to PostgreSQL with `tether-server store copy`; the device then
/// resumes against a node on PostgreSQL with nothing missed or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_copy_moves_a_node_to_postgres_and_devices_resume_where_they_were() {
    let pg = postgres::Postgres::start(false);
    copy_then_resume(pg.fresh_db().await, Embedded::Log).await;
}

/// The same move from a node's SQLite file into MariaDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_copy_moves_a_node_to_mariadb_and_devices_resume_where_they_were() {
    let db = mariadb::MariaDb::start();
    copy_then_resume(db.fresh_db().await, Embedded::Sqlite).await;
}

/// The embedded store a node is moved from.
enum Embedded {
    Log,
    Sqlite,
}

async fn open_shared(url: &str) -> std::sync::Arc<dyn tether_server::store::Store> {
    if url.starts_with("mysql:") {
        std::sync::Arc::new(
            tether_server::store::mysql::MySqlStore::open(url, &PoolSettings::default(), StoreHooks::default())
                .await
                .expect("open"),
        )
    } else {
        std::sync::Arc::new(PgStore::open(url, &PoolSettings::default(), StoreHooks::default()).await.expect("open"))
    }
}

async fn copy_then_resume(target: String, from: Embedded) {
    let db = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", db.path().join("tether.db").display());
    let mut server = match from {
        Embedded::Log => Server::start(&[]),
        Embedded::Sqlite => Server::start(&["--database-url", &url]),
    };
    let bob_state = tempfile::tempdir().expect("state dir");
    let bob_config = |server: &Server| {
        let mut c = server.client_config(tether_sdk::Credential::Token(token("bob", 3600)), "phone", "bob-1");
        c.state_dir = Some(bob_state.path().display().to_string());
        c
    };
    let (alice, _alice_events) = server.client("alice", "phone", "alice-1").await;
    alice.join_room("club").await.expect("alice joins");
    // Bob reads part of the history, then goes offline.
    let (bob, mut bob_events) = tether_sdk::Client::start(bob_config(&server)).await.expect("bob");
    bob.wait_online().await.expect("online");
    bob.join_room("club").await.expect("bob joins");
    for i in 0..5 {
        alice.send_text("bob", &format!("before {i}")).await.expect("ack");
        alice
            .send(tether_sdk::Target::Room("club".into()), "text/plain", format!("room before {i}").into_bytes())
            .await
            .expect("ack");
    }
    let mut seen = Vec::new();
    while seen.len() < 10 {
        seen.push(String::from_utf8_lossy(&next_message(&mut bob_events, 20).await.payload).into_owned());
    }
    bob.close().await;
    // While bob is away: more to him and to the room.
    for i in 0..7 {
        alice.send_text("bob", &format!("missed {i}")).await.expect("ack");
        alice
            .send(tether_sdk::Target::Room("club".into()), "text/plain", format!("room missed {i}").into_bytes())
            .await
            .expect("ack");
    }
    alice.close().await;
    server.kill();

    // Copy, twice: the second run finds everything there.
    let bin = env!("CARGO_BIN_EXE_tether-server");
    let run = || {
        let out = std::process::Command::new(bin)
            .args(["store", "copy", "--from", &server.db_url(), "--to", &target, "--chunk", "4"])
            .output()
            .expect("run store copy");
        assert!(out.status.success(), "store copy: {}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (first, bar) = run();
    assert!(first.contains("copied: 12 messages, 12 room log entries, 1 rooms, 2 members"), "{first}");
    assert!(bar.contains("100%"), "a progress bar: {bar}");
    let (second, _) = run();
    assert!(
        second.contains("copied: 0 messages, 0 room log entries, 0 rooms, 0 members, 0 cursors, 0 tickets"),
        "{second}"
    );
    // An interrupted copy (its last chunks never committed) is finished by running it again.
    {
        use sqlx::Connection;
        if target.starts_with("mysql:") {
            let mut c = sqlx::MySqlConnection::connect(&target).await.expect("connect to the target");
            sqlx::query("DELETE FROM messages ORDER BY id DESC LIMIT 5").execute(&mut c).await.expect("drop");
        } else {
            let mut c = sqlx::PgConnection::connect(&target).await.expect("connect to the target");
            sqlx::query("DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id DESC LIMIT 5)")
                .execute(&mut c)
                .await
                .expect("drop");
        }
        let (third, _) = run();
        assert!(third.contains("copied: 5 messages, 0 room log entries"), "{third}");
    }

    // The node comes back on the shared database (same data dir: certificate, secrets).
    server.extra = vec!["--database-url".into(), target.clone()];
    server.restart();
    let (bob, mut bob_events) = tether_sdk::Client::start(bob_config(&server)).await.expect("bob again");
    bob.wait_online().await.expect("online on postgres");
    let mut got = Vec::new();
    while got.len() < 14 {
        let m = next_message(&mut bob_events, 30).await;
        got.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    let mut expected: Vec<String> = (0..7).map(|i| format!("missed {i}")).collect();
    expected.extend((0..7).map(|i| format!("room missed {i}")));
    let mut sorted = got.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "what bob missed, each once, nothing he had seen");
    // New traffic continues the same inbox and room seqs.
    let (alice, _e) = server.client("alice", "phone", "alice-1").await;
    let ack = alice.send_text("bob", "after the move").await.expect("ack");
    assert_eq!(ack.seq, 13, "alice's inbox continues after 12 copied entries");
    let m = next_message(&mut bob_events, 20).await;
    assert_eq!(m.payload, b"after the move");
    assert_eq!(m.seq, 13);
    let extra = tokio::time::timeout(Duration::from_millis(1000), next_message(&mut bob_events, 2)).await;
    assert!(extra.is_err(), "nothing repeated: {extra:?}");
    // It went to the shared database (the node is not on the old file).
    let store = open_shared(&target).await;
    assert_eq!(store.count_from("alice").await.expect("count"), 13);
    bob.close().await;
    alice.close().await;
}

/// Two nodes on one PostgreSQL, a client on each, 1,000 messages each way; the sender's node is
/// SIGKILLed midway, the sender's SDK fails over to the other node and sends its retries there,
/// and the killed node is restarted. Each app sees each of the other's messages exactly once,
/// in the order they were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_on_one_database_exactly_once_across_a_node_kill() {
    let pg = postgres::Postgres::start(false);
    let url = pg.fresh_db().await;
    let secret = "two-node-resume-secret";
    let mut a = Server::start(&["--database-url", &url, "--node-id", "1", "--resume-secret", secret]);
    let (cert, key) = (a.cert().display().to_string(), a.data.join("dev-key.pem").display().to_string());
    let b = Server::start(&[
        "--database-url",
        &url,
        "--node-id",
        "2",
        "--resume-secret",
        secret,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    // Alice on node A with node B as her fallback; Bob on node B. Both pin the one certificate.
    let mut alice_cfg = a.client_config(tether_sdk::Credential::Token(token("alice", 3600)), "phone", "alice-1");
    alice_cfg.fallback_servers = vec![b.quic.to_string()];
    let mut bob_cfg = a.client_config(tether_sdk::Credential::Token(token("bob", 3600)), "phone", "bob-1");
    bob_cfg.server = b.quic.to_string();
    let (alice, alice_events) = tether_sdk::Client::start(alice_cfg).await.expect("alice");
    let (bob, bob_events) = tether_sdk::Client::start(bob_cfg).await.expect("bob");
    alice.wait_online().await.expect("alice online");
    bob.wait_online().await.expect("bob online");

    const N: usize = 1000;
    let receive = |mut events: tether_sdk::Events, prefix: &'static str| {
        tokio::spawn(async move {
            let mut got = Vec::with_capacity(N);
            while got.len() < N {
                let m = next_message(&mut events, 90).await;
                let text = String::from_utf8_lossy(&m.payload).into_owned();
                if text.starts_with(prefix) {
                    got.push(text);
                }
            }
            (got, events)
        })
    };
    let bob_gets = receive(bob_events, "a");
    let alice_gets = receive(alice_events, "b");
    let bob_sends = {
        let bob = bob.clone();
        tokio::spawn(async move {
            let mut handles = Vec::with_capacity(N);
            for i in 0..N {
                handles.push(bob.send_text("alice", &format!("b{i}")));
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            handles
        })
    };
    let mut alice_handles = Vec::with_capacity(N);
    for i in 0..N {
        alice_handles.push(alice.send_text("bob", &format!("a{i}")));
        if i == N / 2 {
            // Let part of it be stored on node A, then kill A mid-stream.
            tokio::time::sleep(Duration::from_millis(200)).await;
            a.kill();
        }
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for (i, h) in alice_handles.into_iter().enumerate() {
        let ack = tokio::time::timeout(Duration::from_secs(90), h).await.expect("acked in time");
        ack.unwrap_or_else(|e| panic!("alice's message {i} failed for good: {e:?}"));
    }
    a.restart();
    for (i, h) in bob_sends.await.expect("bob's sends").into_iter().enumerate() {
        let ack = tokio::time::timeout(Duration::from_secs(90), h).await.expect("acked in time");
        ack.unwrap_or_else(|e| panic!("bob's message {i} failed for good: {e:?}"));
    }
    // Each side learns what the other node stored through gaps its own traffic reveals; a
    // last message each way makes sure the tail is seen too.
    alice.send_text("bob", "a-end").await.expect("end");
    bob.send_text("alice", "b-end").await.expect("end");
    let (bob_got, _) = bob_gets.await.expect("bob received");
    let (alice_got, _) = alice_gets.await.expect("alice received");
    let expect = |p: &str| (0..N).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    assert_eq!(bob_got, expect("a"), "bob saw each of alice's messages once, in order");
    assert_eq!(alice_got, expect("b"), "alice saw each of bob's messages once, in order");
    let store = PgStore::open(&url, &PoolSettings::default(), StoreHooks::default()).await.expect("open");
    assert_eq!(store.count_from("alice").await.expect("count"), N as u64 + 1, "each stored once");
    assert_eq!(store.count_from("bob").await.expect("count"), N as u64 + 1, "each stored once");
    store.close().await;
    alice.close().await;
    bob.close().await;
}

/// Message ids embed the node id: a second node with the same `--node-id` on one database is
/// refused at start with a message that says so; the node itself restarting keeps its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_id_in_use_on_the_database_is_refused() {
    let pg = postgres::Postgres::start(false);
    let url = pg.fresh_db().await;
    let mut first = Server::start(&["--database-url", &url, "--node-id", "7"]);
    let dir = tempfile::tempdir().expect("dir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether-server"))
        .args(["--data-dir", &dir.path().display().to_string(), "--quic-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0", "--database-url", &url, "--node-id", "7", "--log", "warn"])
        .args(["--jwt-secret", JWT_SECRET])
        .output()
        .expect("run a second node");
    assert!(!out.status.success(), "a second node with the same id started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node id 7 is held by another live node"), "{err}");
    // The node itself, killed and started again at once, keeps its id.
    first.restart();
    let (status, _) = http(first.admin, "GET", "/readyz", None, None).await;
    assert_eq!(status, 200);
}
