//! One store conformance suite, the same code run against every backend: real SQLite files and
//! a real PostgreSQL server (started here on a free port). Every `Store` operation, and, for the
//! shared backends, two store instances (as two nodes hold them) appending to the same inboxes
//! and rooms from many tasks at once, with retries sent to both.

#[path = "support/postgres.rs"]
mod postgres;

#[path = "support/mariadb.rs"]
mod mariadb;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use tether_proto::{Address, AddressKind, ErrorCode};
use tether_server::store::log::{LogSettings, LogStore};
use tether_server::store::mysql::MySqlStore;
use tether_server::store::postgres::{PgStore, PoolSettings};
use tether_server::store::sqlite::{SqliteStore, StoreHooks};
use tether_server::store::{Appended, CursorUpdate, InboxEntry, NewMessage, Refusal, Store, StoreError, TicketUse};

// Not `Send`: sqlx's SQLite migration future is not general enough to be `Send` boxed; the suite
// runs on the test's own task.
type BoxFut<T> = Pin<Box<dyn Future<Output = T>>>;
/// Opens one more store instance on a database.
type Opener = Box<dyn Fn() -> BoxFut<Arc<dyn Store>> + Send + Sync>;

/// A backend under test: `fresh()` makes an empty database and returns a way to open store
/// instances on it (each call one more instance, as one more node would hold).
struct Backend {
    name: &'static str,
    /// Several instances may write one database at once.
    shared: bool,
    fresh: Box<dyn Fn() -> BoxFut<Opener> + Send + Sync>,
}

fn msg(id: u64, from: &str, cid: &str, to: Address) -> NewMessage {
    NewMessage {
        msg_id: id,
        sender: from.into(),
        sender_device: "d1".into(),
        client_msg_id: cid.into(),
        to,
        ts: 1_000 + id,
        content_type: "text/plain".into(),
        payload: format!("payload {id}").into_bytes(),
    }
}

fn user(id: &str) -> Address {
    Address { kind: AddressKind::User, id: id.into() }
}

fn ok(r: &Result<Appended, Refusal>) -> &Appended {
    r.as_ref().unwrap_or_else(|e| panic!("refused: {e:?}"))
}

async fn seqs_are_gapless_and_retries_get_the_original(s: Arc<dyn Store>) {
    let r = s
        .append(
            vec![
                msg(1, "alice", "c1", user("bob")),
                msg(2, "alice", "c2", user("bob")),
                msg(3, "bob", "c1", user("alice")),
            ],
            vec![],
        )
        .await
        .expect("append");
    assert_eq!(ok(&r[0]).sender_seq, 1);
    assert_eq!(ok(&r[0]).recipients, vec![("alice".to_string(), 1), ("bob".to_string(), 1)]);
    assert_eq!(ok(&r[1]).recipients, vec![("alice".to_string(), 2), ("bob".to_string(), 2)]);
    assert_eq!(ok(&r[2]).recipients, vec![("bob".to_string(), 3), ("alice".to_string(), 3)]);
    // A retry (and a twin within one batch) gets the original, with no seq used.
    let r = s
        .append(
            vec![
                msg(9, "alice", "c2", user("bob")),
                msg(4, "alice", "c4", user("bob")),
                msg(10, "alice", "c4", user("bob")),
            ],
            vec![],
        )
        .await
        .expect("append");
    assert!(ok(&r[0]).duplicate);
    assert_eq!(ok(&r[0]).msg.msg_id, 2);
    assert_eq!(ok(&r[0]).sender_seq, 2);
    assert!(!ok(&r[1]).duplicate);
    assert_eq!(ok(&r[1]).sender_seq, 4);
    assert!(ok(&r[2]).duplicate);
    assert_eq!(ok(&r[2]).msg.msg_id, 4);
    assert_eq!(s.inbox_head("alice").await.expect("head"), 4);
    assert_eq!(s.inbox_head("bob").await.expect("head"), 4);
    assert_eq!(s.inbox_head("nobody").await.expect("head"), 0);
    let inbox = s.fetch_inbox("bob", 0, None, 100).await.expect("fetch");
    assert_eq!(inbox.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(inbox.iter().map(|e| e.msg.msg_id).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(inbox[2].msg.payload, b"payload 3");
    assert_eq!(inbox[2].msg.to, user("alice"));
    let page = s.fetch_inbox("bob", 1, Some(3), 1).await.expect("fetch");
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    let page = s.fetch_inbox("bob", 1, Some(3), 10).await.expect("fetch");
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(s.count_from("alice").await.expect("count"), 3);
}

async fn a_message_to_oneself_has_one_entry(s: Arc<dyn Store>) {
    let r = s.append(vec![msg(1, "carol", "n1", user("carol"))], vec![]).await.expect("append");
    assert_eq!(ok(&r[0]).recipients, vec![("carol".to_string(), 1)]);
    let inbox = s.fetch_inbox("carol", 0, None, 10).await.expect("fetch");
    assert_eq!(inbox.len(), 1);
    assert_eq!(s.inbox_head("carol").await.expect("head"), 1);
}

async fn rooms_have_their_own_log_membership_and_refusals(s: Arc<dyn Store>) {
    assert!(s.create_room("r1", 1).await.expect("create"));
    assert!(!s.create_room("r1", 2).await.expect("create again"));
    assert_eq!(s.room_head("r1").await.expect("head"), Some(0));
    assert_eq!(s.room_head("nope").await.expect("head"), None);
    assert!(s.add_member("r1", "alice", 1).await.expect("add"));
    assert!(!s.add_member("r1", "alice", 1).await.expect("add again"));
    assert!(s.add_member("r1", "bob", 1).await.expect("add"));
    assert_eq!(s.members("r1").await.expect("members"), ["alice", "bob"]);
    assert_eq!(s.rooms_of("alice").await.expect("rooms"), ["r1"]);
    let r = s
        .append(
            vec![
                msg(1, "alice", "r-1", Address::room("r1")),
                msg(2, "bob", "r-2", Address::room("r1")),
                msg(3, "bob", "x-1", Address::room("nope")),
                msg(4, "alice", "u-1", user("bob")),
            ],
            vec![],
        )
        .await
        .expect("append");
    assert_eq!(ok(&r[0]).sender_seq, 1);
    assert!(ok(&r[0]).recipients.is_empty());
    assert_eq!(ok(&r[1]).sender_seq, 2);
    assert_eq!(r[2].as_ref().err().map(|e| e.code), Some(ErrorCode::NoSuchRoom));
    // Room traffic takes no inbox seq.
    assert_eq!(ok(&r[3]).recipients, vec![("alice".to_string(), 1), ("bob".to_string(), 1)]);
    assert_eq!(s.room_head("r1").await.expect("head"), Some(2));
    let retry = s.append(vec![msg(7, "alice", "r-1", Address::room("r1"))], vec![]).await.expect("append");
    assert!(ok(&retry[0]).duplicate);
    assert_eq!(ok(&retry[0]).sender_seq, 1);
    let (log, first) = s.fetch_room("r1", 0, None, 10).await.expect("fetch room");
    assert_eq!(log.iter().map(|e| (e.seq, e.msg.msg_id)).collect::<Vec<_>>(), [(1, 1), (2, 2)]);
    assert_eq!(log[1].msg.to, Address::room("r1"));
    assert_eq!(first, 1);
    // Room cursors move forward with appends; leaving forgets them.
    let c = |seq| CursorUpdate { user: "bob".into(), device_id: "d1".into(), room: Some("r1".into()), seq, at_ms: 5 };
    s.append(vec![], vec![c(2), c(1)]).await.expect("cursors");
    assert_eq!(s.room_cursor("bob", "d1", "r1").await.expect("cursor"), Some(2));
    assert!(s.remove_member("r1", "bob").await.expect("remove"));
    assert!(!s.remove_member("r1", "bob").await.expect("remove again"));
    assert_eq!(s.room_cursor("bob", "d1", "r1").await.expect("cursor"), None);
    assert_eq!(s.members("r1").await.expect("members"), ["alice"]);
    assert!(s.delete_room("r1").await.expect("delete"));
    assert!(!s.delete_room("r1").await.expect("delete again"));
    assert_eq!(s.room_head("r1").await.expect("head"), None);
    assert!(s.rooms_of("alice").await.expect("rooms").is_empty());
    let (log, first) = s.fetch_room("r1", 0, None, 10).await.expect("fetch room");
    assert!(log.is_empty());
    assert_eq!(first, 1);
}

async fn pruning_keeps_the_head_and_reports_where_history_starts(s: Arc<dyn Store>) {
    s.create_room("r2", 1).await.expect("create");
    let batch = (1..=10).map(|i| msg(i, "alice", &format!("p{i}"), Address::room("r2"))).collect();
    s.append(batch, vec![]).await.expect("append");
    // By count: the newest 4 stay.
    let gone = s.prune_rooms(4, 0).await.expect("prune");
    assert_eq!(gone, 6);
    let (log, first) = s.fetch_room("r2", 0, None, 100).await.expect("fetch");
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), [7, 8, 9, 10]);
    assert_eq!(first, 7);
    // By age (ts = 1000 + id): older than 1009 goes.
    let gone = s.prune_rooms(100, 1_009).await.expect("prune");
    assert_eq!(gone, 2);
    let (_, first) = s.fetch_room("r2", 0, None, 100).await.expect("fetch");
    assert_eq!(first, 9);
    s.prune_rooms(0, u64::MAX).await.expect("prune all");
    let (log, first) = s.fetch_room("r2", 0, None, 100).await.expect("fetch");
    assert!(log.is_empty());
    assert_eq!(first, 11, "an empty log starts after the head");
    assert_eq!(s.room_head("r2").await.expect("head"), Some(10));
    let r = s.append(vec![msg(11, "alice", "p11", Address::room("r2"))], vec![]).await.expect("append");
    assert_eq!(ok(&r[0]).sender_seq, 11, "the head survives pruning");
}

async fn cursors_only_move_forward_unless_set(s: Arc<dyn Store>) {
    let c = |seq| CursorUpdate { user: "dave".into(), device_id: "p".into(), room: None, seq, at_ms: 1 };
    s.append(vec![], vec![c(5), c(3)]).await.expect("cursors");
    assert_eq!(s.device_cursor("dave", "p").await.expect("cursor"), Some(5));
    s.append(vec![], vec![c(2)]).await.expect("cursors");
    assert_eq!(s.device_cursor("dave", "p").await.expect("cursor"), Some(5));
    assert_eq!(s.device_cursor("dave", "other").await.expect("cursor"), None);
    s.set_cursor("dave", "p", None, 1).await.expect("set");
    assert_eq!(s.device_cursor("dave", "p").await.expect("cursor"), Some(1));
    s.set_cursor("dave", "p", Some("r9"), 4).await.expect("set room");
    assert_eq!(s.room_cursor("dave", "p", "r9").await.expect("cursor"), Some(4));
}

async fn tickets_are_single_use_and_expire(s: Arc<dyn Store>) {
    s.create_ticket("h1", "erin", 10_000_000_000_000).await.expect("create");
    s.create_ticket("h2", "erin", 1).await.expect("create");
    assert_eq!(s.consume_ticket("h1", 5).await.expect("consume"), TicketUse::Valid("erin".into()));
    assert_eq!(s.consume_ticket("h1", 5).await.expect("consume"), TicketUse::Invalid);
    assert_eq!(s.consume_ticket("nope", 5).await.expect("consume"), TicketUse::Invalid);
    // h2 expired long ago (creating h1 after it did not remove it: h2 was created later).
    let h2 = s.consume_ticket("h2", 5).await.expect("consume");
    assert!(matches!(h2, TicketUse::Expired | TicketUse::Invalid), "{h2:?}");
    s.ping().await.expect("ping");
    s.ready().await.expect("ready");
}

/// Two store instances (two nodes) and many tasks append to the same three inboxes and one
/// room at once; each message is sent twice, to different instances (a retry that lands on
/// the other node). Every seq 1..N appears exactly once per inbox and room, each message once,
/// and both copies of a message got the same ack.
async fn concurrent_writers_keep_seqs_gapless_and_dedup(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    a.create_room("busy", 1).await.expect("create");
    let users = ["u1", "u2", "u3"];
    let tasks = 8;
    let per_task = 60;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (a, b) = (a.clone(), b.clone());
        handles.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..per_task {
                let n = (t * per_task + i) as u64;
                let from = users[(t + i) % 3];
                let to = if i % 4 == 3 { Address::room("busy") } else { user(users[(t + i + 1) % 3]) };
                let m = msg(n + 1, from, &format!("t{t}-{i}"), to);
                let batch = vec![m.clone()];
                // The first copy goes to one node, the retry to the other, sometimes both at once.
                let (x, y) = if n.is_multiple_of(2) { (a.clone(), b.clone()) } else { (b.clone(), a.clone()) };
                let (r1, r2) = if n.is_multiple_of(3) {
                    tokio::join!(x.append(batch.clone(), vec![]), y.append(batch, vec![]))
                } else {
                    let r1 = x.append(batch.clone(), vec![]).await;
                    (r1, y.append(batch, vec![]).await)
                };
                let (r1, r2) = (r1.expect("append"), r2.expect("append"));
                let (o1, o2) = (ok(&r1[0]).clone(), ok(&r2[0]).clone());
                assert_eq!(o1.sender_seq, o2.sender_seq, "both copies got the same ack");
                assert_eq!(o1.msg.msg_id, o2.msg.msg_id);
                assert!(o1.duplicate != o2.duplicate, "exactly one copy was stored");
                acks.push(m);
            }
            acks
        }));
    }
    let mut sent = Vec::new();
    for h in handles {
        sent.extend(h.await.expect("task"));
    }
    for u in users {
        let inbox = a.fetch_inbox(u, 0, None, 10_000).await.expect("fetch");
        let seqs: Vec<u64> = inbox.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "inbox {u}: gapless, each seq once");
        let expected: HashSet<u64> = sent
            .iter()
            .filter(|m| m.to.kind == AddressKind::User && (m.sender == u || m.to.id == u))
            .map(|m| m.msg_id)
            .collect();
        let got: Vec<u64> = inbox.iter().map(|e| e.msg.msg_id).collect();
        assert_eq!(got.len(), expected.len(), "inbox {u}: each message once");
        assert_eq!(got.iter().copied().collect::<HashSet<_>>(), expected);
        assert_eq!(b.inbox_head(u).await.expect("head"), seqs.len() as u64);
    }
    let (log, _) = b.fetch_room("busy", 0, None, 10_000).await.expect("fetch room");
    let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
    let expected = sent.iter().filter(|m| m.to.kind == AddressKind::Room).count();
    assert_eq!(seqs, (1..=expected as u64).collect::<Vec<_>>(), "room log: gapless, each message once");
    let mut per_sender: HashMap<&str, u64> = HashMap::new();
    for m in &sent {
        if m.to.kind == AddressKind::User {
            *per_sender.entry(m.sender.as_str()).or_default() += 1;
        }
    }
    for (u, n) in per_sender {
        assert_eq!(a.count_from(u).await.expect("count"), n, "{u}: stored once each");
    }
}

/// A ticket raced for by many logins on two nodes is valid for exactly one.
async fn a_ticket_is_consumed_once_across_nodes(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    a.create_ticket("race", "frank", 10_000_000_000_000).await.expect("create");
    let mut handles = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        handles.push(tokio::spawn(async move { s.consume_ticket("race", 5).await.expect("consume") }));
    }
    let mut valid = 0;
    for h in handles {
        if matches!(h.await.expect("task"), TicketUse::Valid(_)) {
            valid += 1;
        }
    }
    assert_eq!(valid, 1);
}

/// A node id is held by one live instance at a time; its holder renews it; a lapsed lease can
/// be taken over.
async fn a_node_id_is_held_by_one_live_instance(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    assert!(a.claim_node_id(3, "node-a", 30_000, 1_000).await.expect("claim"));
    assert!(!b.claim_node_id(3, "node-b", 30_000, 2_000).await.expect("claim"), "held by node-a");
    assert!(b.claim_node_id(4, "node-b", 30_000, 2_000).await.expect("claim"), "another id is free");
    assert!(a.claim_node_id(3, "node-a", 30_000, 20_000).await.expect("renew"), "the holder renews");
    assert!(!b.claim_node_id(3, "node-b", 30_000, 40_000).await.expect("claim"), "renewed until 50,000");
    assert!(b.claim_node_id(3, "node-b", 30_000, 60_000).await.expect("claim"), "a lapsed lease is taken over");
    assert!(!a.claim_node_id(3, "node-a", 30_000, 61_000).await.expect("claim"), "and is node-b's now");
}

async fn run_suite(backend: Backend) {
    macro_rules! case {
        ($name:ident) => {{
            let open = (backend.fresh)().await;
            eprintln!("{}: {}", backend.name, stringify!($name));
            $name(open().await).await;
        }};
    }
    case!(seqs_are_gapless_and_retries_get_the_original);
    case!(a_message_to_oneself_has_one_entry);
    case!(rooms_have_their_own_log_membership_and_refusals);
    case!(pruning_keeps_the_head_and_reports_where_history_starts);
    case!(cursors_only_move_forward_unless_set);
    case!(tickets_are_single_use_and_expire);
    let open = (backend.fresh)().await;
    let a = open().await;
    // A single-node backend gets the same load through one instance.
    let b = if backend.shared { open().await } else { a.clone() };
    eprintln!("{}: concurrent_writers_keep_seqs_gapless_and_dedup", backend.name);
    concurrent_writers_keep_seqs_gapless_and_dedup(a.clone(), b.clone()).await;
    eprintln!("{}: a_ticket_is_consumed_once_across_nodes", backend.name);
    a_ticket_is_consumed_once_across_nodes(a.clone(), b.clone()).await;
    if backend.shared {
        eprintln!("{}: a_node_id_is_held_by_one_live_instance", backend.name);
        a_node_id_is_held_by_one_live_instance(a, b).await;
    }
}

/// A dedup window reaching back to the messages' timestamps here (`1000 + id` ms after the
/// epoch), so the log store's maintenance (every second) keeps them all in it.
const EPOCH_WINDOW: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

/// Log store settings with small segments and a small body cache (rollover and reads from
/// disk in every case), `index_hot` messages indexed in memory, and [`EPOCH_WINDOW`].
fn small_log(index_hot: usize) -> LogSettings {
    LogSettings {
        segment_bytes: 4096,
        hot_bytes: 2048,
        index_hot,
        dedup_window: EPOCH_WINDOW,
        ..LogSettings::default()
    }
}

/// A single-node backend kept in files: each case gets a fresh path under one temp dir, and
/// `open` opens (and reopens) a store there.
fn embedded(name: &'static str, open: fn(PathBuf) -> BoxFut<Arc<dyn Store>>) -> Backend {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    Backend {
        name,
        shared: false,
        fresh: Box::new(move || {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.path().join(format!("{name}{n}"));
            Box::pin(async move { Box::new(move || open(path.clone())) as Opener })
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_conforms() {
    run_suite(embedded("log", |path| {
        Box::pin(async move {
            // Small segments and a small hot range: rollover and reads from disk are part of
            // every case.
            let settings = small_log(LogSettings::default().index_hot);
            Arc::new(LogStore::open(&path, settings, StoreHooks::default()).expect("open log")) as Arc<dyn Store>
        })
    }))
    .await;
}

/// The log store with every index entry moved to the cold index after each write: each case's
/// reads, dedup and room pruning then go through the on-disk index.
struct Spilling(LogStore);

impl Spilling {
    async fn spill<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        let r = r?;
        self.0.spill_index().await?;
        Ok(r)
    }
}

#[async_trait::async_trait]
impl Store for Spilling {
    async fn append(
        &self,
        batch: Vec<NewMessage>,
        cursors: Vec<CursorUpdate>,
    ) -> Result<Vec<Result<Appended, Refusal>>, StoreError> {
        self.spill(self.0.append(batch, cursors).await).await
    }
    async fn fetch_inbox(
        &self,
        user: &str,
        after: u64,
        until: Option<u64>,
        limit: u32,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        self.0.fetch_inbox(user, after, until, limit).await
    }
    async fn inbox_head(&self, user: &str) -> Result<u64, StoreError> {
        self.0.inbox_head(user).await
    }
    async fn device_cursor(&self, user: &str, device_id: &str) -> Result<Option<u64>, StoreError> {
        self.0.device_cursor(user, device_id).await
    }
    async fn create_ticket(&self, hash: &str, user: &str, expires_ms: u64) -> Result<(), StoreError> {
        self.0.create_ticket(hash, user, expires_ms).await
    }
    async fn consume_ticket(&self, hash: &str, now_ms: u64) -> Result<TicketUse, StoreError> {
        self.0.consume_ticket(hash, now_ms).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.0.ping().await
    }
    async fn ready(&self) -> Result<(), StoreError> {
        self.0.ready().await
    }
    async fn set_cursor(&self, user: &str, device_id: &str, room: Option<&str>, seq: u64) -> Result<(), StoreError> {
        self.0.set_cursor(user, device_id, room, seq).await
    }
    async fn count_from(&self, sender: &str) -> Result<u64, StoreError> {
        self.0.count_from(sender).await
    }
    async fn create_room(&self, room: &str, now_ms: u64) -> Result<bool, StoreError> {
        self.0.create_room(room, now_ms).await
    }
    async fn delete_room(&self, room: &str) -> Result<bool, StoreError> {
        self.spill(self.0.delete_room(room).await).await
    }
    async fn room_head(&self, room: &str) -> Result<Option<u64>, StoreError> {
        self.0.room_head(room).await
    }
    async fn add_member(&self, room: &str, user: &str, now_ms: u64) -> Result<bool, StoreError> {
        self.0.add_member(room, user, now_ms).await
    }
    async fn remove_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        self.0.remove_member(room, user).await
    }
    async fn members(&self, room: &str) -> Result<Vec<String>, StoreError> {
        self.0.members(room).await
    }
    async fn rooms_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        self.0.rooms_of(user).await
    }
    async fn fetch_room(
        &self,
        room: &str,
        after: u64,
        until: Option<u64>,
        limit: u32,
    ) -> Result<(Vec<InboxEntry>, u64), StoreError> {
        self.0.fetch_room(room, after, until, limit).await
    }
    async fn room_cursor(&self, user: &str, device_id: &str, room: &str) -> Result<Option<u64>, StoreError> {
        self.0.room_cursor(user, device_id, room).await
    }
    async fn prune_rooms(&self, max_count: u64, min_ts_ms: u64) -> Result<u64, StoreError> {
        self.spill(self.0.prune_rooms(max_count, min_ts_ms).await).await
    }
    fn wants_own_thread(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_with_a_cold_index_conforms() {
    run_suite(embedded("log-cold", |path| {
        Box::pin(async move {
            let settings = small_log(0);
            let log = LogStore::open(&path, settings, StoreHooks::default()).expect("open log");
            Arc::new(Spilling(log)) as Arc<dyn Store>
        })
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_conforms() {
    run_suite(embedded("sqlite", |path| {
        Box::pin(async move {
            let url = format!("sqlite://{}", path.display());
            Arc::new(SqliteStore::open(&url, tether_server::config::StoreSync::Full).await.expect("open sqlite"))
                as Arc<dyn Store>
        })
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_conforms() {
    let pg = Arc::new(postgres::Postgres::start(false));
    let server = pg.clone();
    let metrics = Arc::new(tether_server::metrics::Metrics::new());
    let counted = metrics.clone();
    run_suite(Backend {
        name: "postgres",
        shared: true,
        fresh: Box::new(move || {
            let pg = server.clone();
            let metrics = counted.clone();
            Box::pin(async move {
                let url = pg.fresh_db().await;
                Box::new(move || {
                    let url = url.clone();
                    let metrics = metrics.clone();
                    Box::pin(async move {
                        Arc::new(
                            PgStore::open(
                                &url,
                                &PoolSettings::default(),
                                StoreHooks { faults: Default::default(), metrics: metrics.clone() },
                            )
                            .await
                            .expect("open postgres"),
                        ) as Arc<dyn Store>
                    }) as BoxFut<Arc<dyn Store>>
                }) as Opener
            })
        }),
    })
    .await;
    // The racing retries above met each other inside the database: the suite exercised the
    // conflict path, not only the happy one.
    let retries = metrics.render();
    assert!(retries.contains("tether_store_retries_total{op=\"append\"}"), "no append was retried:\n{retries}");
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_conforms() {
    let db = Arc::new(mariadb::MariaDb::start());
    let server = db.clone();
    let metrics = Arc::new(tether_server::metrics::Metrics::new());
    let counted = metrics.clone();
    run_suite(Backend {
        name: "mariadb",
        shared: true,
        fresh: Box::new(move || {
            let db = server.clone();
            let metrics = counted.clone();
            Box::pin(async move {
                let url = db.fresh_db().await;
                Box::new(move || {
                    let url = url.clone();
                    let metrics = metrics.clone();
                    Box::pin(async move {
                        Arc::new(
                            MySqlStore::open(
                                &url,
                                &PoolSettings::default(),
                                StoreHooks { faults: Default::default(), metrics: metrics.clone() },
                            )
                            .await
                            .expect("open mariadb"),
                        ) as Arc<dyn Store>
                    }) as BoxFut<Arc<dyn Store>>
                }) as Opener
            })
        }),
    })
    .await;
    let retries = metrics.render();
    assert!(retries.contains("tether_store_retries_total{op=\"append\"}"), "no append was retried:\n{retries}");
    drop(db);
}

/// A database migrated by a newer build (a migration this one does not know) is refused.
async fn newer_schema_is_refused(opened: Result<Arc<dyn Store>, tether_server::store::StoreError>) {
    match opened {
        Err(tether_server::store::StoreError::SchemaTooNew(v)) => assert_eq!(v, 9999),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a store opened a database with a newer schema"),
    }
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    use sqlx::Connection;
    // SQLite.
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    SqliteStore::open(&url, tether_server::config::StoreSync::Full).await.expect("open").close().await;
    let mut c = sqlx::SqliteConnection::connect(&url).await.expect("connect");
    sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (9999, 'future', 1, x'00', 0)")
        .execute(&mut c)
        .await
        .expect("mark");
    c.close().await.expect("close");
    newer_schema_is_refused(
        SqliteStore::open(&url, tether_server::config::StoreSync::Full).await.map(|s| Arc::new(s) as Arc<dyn Store>),
    )
    .await;
    // PostgreSQL.
    let pg = postgres::Postgres::start(false);
    let url = pg.fresh_db().await;
    PgStore::open(&url, &PoolSettings::default(), StoreHooks::default()).await.expect("open").close().await;
    let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (9999, 'future', true, '\\x00', 0)")
        .execute(&mut c)
        .await
        .expect("mark");
    c.close().await.expect("close");
    newer_schema_is_refused(
        PgStore::open(&url, &PoolSettings::default(), StoreHooks::default())
            .await
            .map(|s| Arc::new(s) as Arc<dyn Store>),
    )
    .await;
}

/// TLS to PostgreSQL with rustls: `verify-full` against the server's CA works, against another
/// CA it is refused.
#[tokio::test]
async fn postgres_over_tls_checks_the_server_certificate() {
    let pg = postgres::Postgres::start(false);
    let url = pg.fresh_db().await.replace("127.0.0.1", "localhost");
    let verified = format!("{url}?sslmode=verify-full&sslrootcert={}", pg.ca_file().display());
    let s = PgStore::open(&verified, &PoolSettings::default(), StoreHooks::default()).await.expect("verified TLS");
    s.create_room("tls", 1).await.expect("a write over TLS");
    assert_eq!(s.room_head("tls").await.expect("a read over TLS"), Some(0));
    s.close().await;
    let other = postgres::Postgres::start(false);
    let wrong = format!("{url}?sslmode=verify-full&sslrootcert={}", other.ca_file().display());
    let refused = PgStore::open(&wrong, &PoolSettings::default(), StoreHooks::default()).await;
    assert!(refused.is_err(), "a server certificate from another CA was accepted");
}
