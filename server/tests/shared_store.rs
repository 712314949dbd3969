//! A node on the shared store (a real PostgreSQL started here), end to end: the database goes
//! away mid-traffic and comes back; nothing acknowledged is lost, nothing is stored twice.

#[path = "support/postgres.rs"]
mod postgres;

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
