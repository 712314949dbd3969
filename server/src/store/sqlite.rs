//! SQLite backend: one file in the data dir, WAL mode, one writer connection for batched
//! appends and a small pool of readers.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use tether_proto::{Address, AddressKind};
use tokio::sync::{Mutex, MutexGuard};

use super::faults::{FaultStep, Faults};
use super::*;
use crate::config::StoreSync;
use crate::metrics::Metrics;

/// The SQLite store.
pub struct SqliteStore {
    /// The one writer connection (held directly, not through a pool: a pool's acquire and
    /// release cost up to milliseconds per batch under load) and the heads it allocated.
    writer: Mutex<Slot>,
    /// How to open a writer again after one was discarded.
    opts: SqliteConnectOptions,
    readers: SqlitePool,
    hooks: StoreHooks,
    /// False from a failed write until a write succeeds again.
    writer_ok: AtomicBool,
}

/// What the store reports to and takes faults from.
#[derive(Clone, Default)]
pub struct StoreHooks {
    /// Injected faults (none unless a test or `--fault-injection` asks).
    pub faults: Arc<Faults>,
    /// Where store errors and writer readiness are counted.
    pub metrics: Arc<Metrics>,
}

/// The writer's state.
enum Slot {
    /// A connection known to be in autocommit mode between operations.
    Open(Writer),
    /// The last connection was discarded after a failure; the next operation opens a new one.
    Lost,
    /// [`SqliteStore::close`] was called.
    Closed,
}

struct Writer {
    conn: SqliteConnection,
    /// Inbox heads known to the writer.
    heads: HashMap<String, u64>,
    /// Room log heads known to the writer.
    room_heads: HashMap<String, u64>,
    /// The `max_page_count` fault last applied (0 = none).
    max_pages: u64,
}

impl Writer {
    /// A writer on a freshly opened connection, with nothing cached.
    fn new(conn: SqliteConnection) -> Self {
        Writer { conn, heads: HashMap::new(), room_heads: HashMap::new(), max_pages: 0 }
    }
}

/// Columns of a message row, in the order [`message_from_row`] reads them.
const MESSAGE_COLS: &str =
    "m.id, m.sender, m.sender_device, m.client_msg_id, m.to_kind, m.to_id, m.ts, m.content_type, m.payload";

/// Reads the [`MESSAGE_COLS`] of a row, starting at column `at`.
fn message_from_row(row: &SqliteRow, at: usize) -> Result<StoredMessage, StoreError> {
    Ok(StoredMessage {
        msg_id: to_u64(row.try_get(at)?, "msg id")?,
        sender: row.try_get(at + 1)?,
        sender_device: row.try_get(at + 2)?,
        client_msg_id: row.try_get(at + 3)?,
        to: Address { kind: kind_from(row.try_get::<&str, _>(at + 4)?)?, id: row.try_get(at + 5)? },
        ts: to_u64(row.try_get(at + 6)?, "ts")?,
        content_type: row.try_get(at + 7)?,
        payload: row.try_get(at + 8)?,
    })
}

/// Whether SQLite itself (not sqlx's bookkeeping) is outside any transaction on `conn`.
async fn in_autocommit(conn: &mut SqliteConnection) -> Result<bool, StoreError> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle();
    // SAFETY: `db` is the live handle of this connection, held locked by `handle` for the
    // duration of the call; sqlite3_get_autocommit only reads a flag of it.
    Ok(unsafe { libsqlite3_sys::sqlite3_get_autocommit(db.as_ptr()) } != 0)
}

/// Bytes the readiness probe writes: as much as the largest message (the default frame limit),
/// so a writer that can commit the probe can commit a message.
const PROBE_BYTES: i64 = tether_proto::DEFAULT_MAX_FRAME as i64;

/// Exclusive use of the writer for one operation.
///
/// Unless [`WriterGuard::succeeded`] is called, dropping the guard (an error returned with
/// `?`, a panic, a cancelled future) discards the connection: closing it rolls back whatever
/// transaction it had open, the heads it cached are forgotten, and the next operation opens
/// a fresh connection. So nothing a failure leaves behind (a transaction SQLite rolled back on
/// its own, one still open, sqlx's idea of the nesting depth) can turn a later "commit" into
/// something that is not one. Transactions are plain `BEGIN IMMEDIATE` / `COMMIT`, never
/// savepoints, and each commit is checked against SQLite's own autocommit flag.
struct WriterGuard<'a> {
    slot: MutexGuard<'a, Slot>,
    store: &'a SqliteStore,
    op: &'static str,
    ok: bool,
}

impl WriterGuard<'_> {
    fn w(&mut self) -> &mut Writer {
        match &mut *self.slot {
            Slot::Open(w) => w,
            // A guard is only made over an open writer.
            Slot::Lost | Slot::Closed => unreachable!("writer guard without a writer"),
        }
    }

    fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.w().conn
    }

    fn faults(&self) -> &Faults {
        &self.store.hooks.faults
    }

    /// Starts a write transaction. An open writer is always in autocommit mode here (every
    /// operation that kept it ended with a verified COMMIT or ROLLBACK); were it not, SQLite
    /// refuses a nested `BEGIN` and the guard discards the connection.
    async fn begin(&mut self) -> Result<(), StoreError> {
        sqlx::query("BEGIN IMMEDIATE").execute(self.conn()).await?;
        self.faults().check(FaultStep::Begin)?;
        Ok(())
    }

    /// Commits, and succeeds only when SQLite is back in autocommit mode afterwards.
    async fn commit(&mut self) -> Result<(), StoreError> {
        self.faults().check(FaultStep::Commit)?;
        sqlx::query("COMMIT").execute(self.conn()).await?;
        if !in_autocommit(self.conn()).await? {
            return Err(StoreError::NotCommitted("still inside a transaction after COMMIT".into()));
        }
        self.faults().check(FaultStep::Fsync)?;
        Ok(())
    }

    /// Rolls back, and succeeds only when SQLite is back in autocommit mode afterwards.
    async fn rollback(&mut self) -> Result<(), StoreError> {
        sqlx::query("ROLLBACK").execute(self.conn()).await?;
        if !in_autocommit(self.conn()).await? {
            return Err(StoreError::NotCommitted("still inside a transaction after ROLLBACK".into()));
        }
        Ok(())
    }

    /// Marks the operation as done: the connection is kept for the next one.
    fn succeeded(mut self) {
        self.ok = true;
        if !self.store.writer_ok.swap(true, Ordering::SeqCst) {
            tracing::info!(op = self.op, "store writer commits again");
        }
        self.store.hooks.metrics.store_writer_ready.set(1);
    }
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        if self.ok {
            return;
        }
        if matches!(*self.slot, Slot::Open(_)) {
            // Dropping the connection closes it; SQLite rolls back an open transaction.
            *self.slot = Slot::Lost;
        }
        self.store.writer_failed(self.op);
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` and applies migrations.
    pub async fn open(url: &str, sync: StoreSync) -> Result<Self, StoreError> {
        Self::open_with(url, sync, StoreHooks::default()).await
    }

    /// [`SqliteStore::open`] with fault injection and metrics.
    pub async fn open_with(url: &str, sync: StoreSync, hooks: StoreHooks) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match sync {
                StoreSync::Full => SqliteSynchronous::Full,
                StoreSync::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(false)
            .page_size(2048)
            .pragma("cache_size", "-65536")
            // Statement journals (multi-row inserts under unique indexes) in memory, not in a
            // temp file.
            .pragma("temp_store", "memory")
            // Checkpoints run in the background (see below), not in the writer's commits; this
            // is only a backstop should they fall behind.
            .pragma("wal_autocheckpoint", "16384");
        let mut conn = opts.connect().await?;
        sqlx::migrate!("./migrations/sqlite").run(&mut conn).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts.clone())
            .await?;
        let checkpointer = readers.clone();
        let (faults, metrics) = (hooks.faults.clone(), hooks.metrics.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                if checkpointer.is_closed() {
                    return;
                }
                let res = match faults.check(FaultStep::Checkpoint) {
                    Err(e) => Err(StoreError::from(e)),
                    Ok(()) => sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                        .execute(&checkpointer)
                        .await
                        .map(|_| ())
                        .map_err(StoreError::from),
                };
                if let Err(e) = res {
                    metrics.store_error("checkpoint");
                    tracing::warn!(error = %e, "background checkpoint failed");
                }
            }
        });
        hooks.metrics.store_writer_ready.set(1);
        Ok(SqliteStore {
            writer: Mutex::new(Slot::Open(Writer::new(conn))),
            opts,
            readers,
            hooks,
            writer_ok: AtomicBool::new(true),
        })
    }

    /// Closes the writer and the readers.
    pub async fn close(&self) {
        let mut slot = self.writer.lock().await;
        if let Slot::Open(w) = std::mem::replace(&mut *slot, Slot::Closed) {
            let _ = w.conn.close().await;
        }
        self.readers.close().await;
    }

    /// Takes the writer for `op`, opening a new connection if the last one was discarded.
    async fn writer(&self, op: &'static str) -> Result<WriterGuard<'_>, StoreError> {
        let mut slot = self.writer.lock().await;
        match &*slot {
            Slot::Closed => return Err(StoreError::Closed),
            Slot::Open(_) => {}
            Slot::Lost => match self.opts.connect().await {
                Ok(conn) => {
                    tracing::info!("store writer reopened");
                    *slot = Slot::Open(Writer::new(conn));
                }
                Err(e) => {
                    self.writer_failed(op);
                    return Err(e.into());
                }
            },
        }
        let mut guard = WriterGuard { slot, store: self, op, ok: false };
        let want = self.hooks.faults.max_pages();
        if guard.w().max_pages != want {
            // 0 restores SQLite's default limit (about 2^32 pages).
            let pages = if want == 0 { 4_294_967_294 } else { want };
            sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA max_page_count = {pages}"))).execute(guard.conn()).await?;
            guard.w().max_pages = want;
        }
        Ok(guard)
    }

    fn writer_failed(&self, op: &'static str) {
        self.hooks.metrics.store_error(op);
        self.hooks.metrics.store_writer_ready.set(0);
        if self.writer_ok.swap(false, Ordering::SeqCst) {
            tracing::warn!(op, "store write failed: the writer is discarded and reopened on next use");
        }
    }

    /// Whether the last write succeeded.
    pub fn writer_ok(&self) -> bool {
        self.writer_ok.load(Ordering::SeqCst)
    }
}

type DedupKey = (String, String);

/// Rows per multi-row statement. Batches are cut into chunks of this size and then powers of
/// two, so only a handful of statement shapes exist and all stay in the statement cache.
const CHUNK_ROWS: usize = 128;

/// Sizes to cut `n` rows into: full chunks, then the remainder as powers of two.
fn chunk_sizes(n: usize) -> impl Iterator<Item = usize> {
    let full = n / CHUNK_ROWS;
    let rest = n % CHUNK_ROWS;
    std::iter::repeat_n(CHUNK_ROWS, full)
        .chain((0..usize::BITS).rev().map(|b| 1usize << b).filter(move |bit| rest & bit != 0))
}

/// Splits `items` into slices of [`chunk_sizes`].
fn chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut at = 0;
    chunk_sizes(items.len()).map(move |n| {
        let c = &items[at..at + n];
        at += n;
        c
    })
}

/// What a batch turns into: the results in input order, the rows to write, the new heads.
struct Plan {
    results: Vec<Result<Appended, Refusal>>,
    /// New rows to users: message, sender seq, recipient seq.
    fresh: Vec<(Arc<StoredMessage>, u64, u64)>,
    /// New rows to rooms: message, room seq.
    fresh_rooms: Vec<(Arc<StoredMessage>, u64)>,
    new_heads: HashMap<String, u64>,
    new_room_heads: HashMap<String, u64>,
}

/// Columns of a room log row, in the order [`room_message_from_row`] reads them.
const ROOM_COLS: &str =
    "l.room, l.seq, l.id, l.sender, l.sender_device, l.client_msg_id, l.ts, l.content_type, l.payload";

/// Reads [`ROOM_COLS`]: (seq, message).
fn room_message_from_row(row: &SqliteRow) -> Result<(u64, StoredMessage), StoreError> {
    let seq = to_u64(row.try_get(1)?, "room seq")?;
    Ok((
        seq,
        StoredMessage {
            msg_id: to_u64(row.try_get(2)?, "msg id")?,
            sender: row.try_get(3)?,
            sender_device: row.try_get(4)?,
            client_msg_id: row.try_get(5)?,
            to: Address::room(row.try_get::<String, _>(0)?),
            ts: to_u64(row.try_get(6)?, "ts")?,
            content_type: row.try_get(7)?,
            payload: row.try_get(8)?,
        },
    ))
}

/// Highest seq of a user's inbox: the larger of its two indexes' maxima.
const HEAD_SQL: &str = "SELECT max(coalesce((SELECT max(sender_seq) FROM messages WHERE sender = ?1), 0), \
     coalesce((SELECT max(to_seq) FROM messages WHERE to_kind = 'user' AND to_id = ?1), 0))";

impl SqliteStore {
    /// Stored messages among the batch's (sender, client_msg_id), with their sender seq.
    async fn lookup_existing(
        tx: &mut sqlx::SqliteConnection,
        batch: &[NewMessage],
    ) -> Result<HashMap<DedupKey, (Arc<StoredMessage>, u64)>, StoreError> {
        let mut existing = HashMap::new();
        for chunk in chunks(batch) {
            // A join with a VALUES list, which SQLite answers with one index search per row
            // (a row-value `IN` would scan the whole index).
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT ");
            q.push(MESSAGE_COLS).push(", m.sender_seq FROM (VALUES ");
            let mut sep = q.separated(", ");
            for m in chunk {
                sep.push("(").push_bind_unseparated(&m.sender).push_unseparated(", ");
                sep.push_bind_unseparated(&m.client_msg_id).push_unseparated(")");
            }
            q.push(") v JOIN messages m ON m.sender = v.column1 AND m.client_msg_id = v.column2");
            for row in q.build().fetch_all(&mut *tx).await? {
                let msg = message_from_row(&row, 0)?;
                let seq = to_u64(row.try_get(9)?, "sender_seq")?;
                existing.insert((msg.sender.clone(), msg.client_msg_id.clone()), (Arc::new(msg), seq));
            }
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT ");
            q.push(ROOM_COLS).push(" FROM (VALUES ");
            let mut sep = q.separated(", ");
            for m in chunk {
                sep.push("(").push_bind_unseparated(&m.sender).push_unseparated(", ");
                sep.push_bind_unseparated(&m.client_msg_id).push_unseparated(")");
            }
            q.push(") v JOIN room_log l ON l.sender = v.column1 AND l.client_msg_id = v.column2");
            for row in q.build().fetch_all(&mut *tx).await? {
                let (seq, msg) = room_message_from_row(&row)?;
                existing.insert((msg.sender.clone(), msg.client_msg_id.clone()), (Arc::new(msg), seq));
            }
        }
        Ok(existing)
    }

    /// Allocates seqs for the batch, treating `existing` (and twins within the batch) as
    /// duplicates. Reads heads it does not know yet; changes no cached head.
    async fn plan(
        tx: &mut sqlx::SqliteConnection,
        heads: &HashMap<String, u64>,
        room_heads: &HashMap<String, u64>,
        batch: &[NewMessage],
        mut existing: HashMap<DedupKey, (Arc<StoredMessage>, u64)>,
    ) -> Result<Plan, StoreError> {
        let mut plan = Plan {
            results: Vec::with_capacity(batch.len()),
            fresh: Vec::with_capacity(batch.len()),
            fresh_rooms: Vec::new(),
            new_heads: HashMap::new(),
            new_room_heads: HashMap::new(),
        };
        for m in batch {
            let key = (m.sender.clone(), m.client_msg_id.clone());
            if let Some((msg, seq)) = existing.get(&key) {
                plan.results.push(Ok(Appended {
                    msg: msg.clone(),
                    sender_seq: *seq,
                    recipients: Vec::new(),
                    duplicate: true,
                }));
                continue;
            }
            if m.to.kind == AddressKind::Room {
                let room = &m.to.id;
                let head = match plan.new_room_heads.get(room).or_else(|| room_heads.get(room)) {
                    Some(h) => Some(*h),
                    None => {
                        let h: Option<i64> = sqlx::query_scalar("SELECT head FROM rooms WHERE room = ?")
                            .bind(room)
                            .fetch_optional(&mut *tx)
                            .await?;
                        h.map(|h| to_u64(h, "room head")).transpose()?
                    }
                };
                let Some(head) = head else {
                    plan.results.push(Err(Refusal {
                        code: tether_proto::ErrorCode::NoSuchRoom,
                        message: format!("no room `{room}`"),
                    }));
                    continue;
                };
                plan.new_room_heads.insert(room.clone(), head + 1);
                let msg = Arc::new(m.clone());
                existing.insert(key, (msg.clone(), head + 1));
                plan.fresh_rooms.push((msg.clone(), head + 1));
                plan.results.push(Ok(Appended { msg, sender_seq: head + 1, recipients: Vec::new(), duplicate: false }));
                continue;
            }
            let mut users = vec![m.sender.clone()];
            if m.to.id != m.sender {
                users.push(m.to.id.clone());
            }
            let mut recipients = Vec::with_capacity(users.len());
            for u in users {
                let head = match plan.new_heads.get(&u).or_else(|| heads.get(&u)) {
                    Some(h) => *h,
                    None => {
                        let h: i64 = sqlx::query_scalar(HEAD_SQL).bind(&u).fetch_one(&mut *tx).await?;
                        to_u64(h, "seq")?
                    }
                };
                plan.new_heads.insert(u.clone(), head + 1);
                recipients.push((u, head + 1));
            }
            let sender_seq = recipients[0].1;
            let to_seq = recipients.last().map(|r| r.1).unwrap_or(sender_seq);
            let msg = Arc::new(m.clone());
            existing.insert(key, (msg.clone(), sender_seq));
            plan.fresh.push((msg.clone(), sender_seq, to_seq));
            plan.results.push(Ok(Appended { msg, sender_seq, recipients, duplicate: false }));
        }
        Ok(plan)
    }

    /// Inserts room log rows like [`SqliteStore::insert_messages`]; returns how many went in.
    async fn insert_room_rows(
        tx: &mut sqlx::SqliteConnection,
        rows: &[(Arc<StoredMessage>, u64)],
    ) -> Result<u64, StoreError> {
        let mut inserted = 0;
        for chunk in chunks(rows) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT OR IGNORE INTO room_log (room, seq, id, sender, sender_device, client_msg_id, ts, content_type, payload) ",
            );
            q.push_values(chunk, |mut b, (m, seq)| {
                b.push_bind(&m.to.id)
                    .push_bind(to_i64(*seq))
                    .push_bind(to_i64(m.msg_id))
                    .push_bind(&m.sender)
                    .push_bind(&m.sender_device)
                    .push_bind(&m.client_msg_id)
                    .push_bind(to_i64(m.ts))
                    .push_bind(&m.content_type)
                    .push_bind(&m.payload);
            });
            inserted += q.build().execute(&mut *tx).await?.rows_affected();
        }
        Ok(inserted)
    }

    /// Inserts a plan's rows; true when every planned row went in (no duplicate).
    async fn insert_plan(tx: &mut sqlx::SqliteConnection, plan: &Plan) -> Result<bool, StoreError> {
        let users = Self::insert_messages(tx, &plan.fresh).await?;
        let rooms = Self::insert_room_rows(tx, &plan.fresh_rooms).await?;
        Ok(users == plan.fresh.len() as u64 && rooms == plan.fresh_rooms.len() as u64)
    }

    /// Inserts message rows, skipping any that conflicts with a stored one; returns how many
    /// were inserted. The caller treats a shortfall as "some were duplicates" and re-plans,
    /// and a shortfall on the re-planned batch as corruption, so nothing is skipped silently.
    ///
    /// `OR IGNORE` rather than an upsert clause: a statement that cannot abort needs no
    /// statement journal, which otherwise copies every page the insert touches.
    async fn insert_messages(
        tx: &mut sqlx::SqliteConnection,
        fresh: &[(Arc<StoredMessage>, u64, u64)],
    ) -> Result<u64, StoreError> {
        let mut inserted = 0;
        for chunk in chunks(fresh) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT OR IGNORE INTO messages (id, sender, sender_device, client_msg_id, to_kind, to_id, sender_seq, to_seq, ts, content_type, payload) ",
            );
            q.push_values(chunk, |mut b, (m, seq, to_seq)| {
                b.push_bind(to_i64(m.msg_id))
                    .push_bind(&m.sender)
                    .push_bind(&m.sender_device)
                    .push_bind(&m.client_msg_id)
                    .push_bind(kind_str(m.to.kind))
                    .push_bind(&m.to.id)
                    .push_bind(to_i64(*seq))
                    .push_bind(to_i64(*to_seq))
                    .push_bind(to_i64(m.ts))
                    .push_bind(&m.content_type)
                    .push_bind(&m.payload);
            });
            inserted += q.build().execute(&mut *tx).await?.rows_affected();
        }
        Ok(inserted)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(
        &self,
        batch: Vec<NewMessage>,
        cursors: Vec<CursorUpdate>,
    ) -> Result<Vec<Result<Appended, Refusal>>, StoreError> {
        let mut g = self.writer("append").await?;
        g.begin().await?;

        // Optimistic path: retries are rare, so plan as if nothing of the batch were stored and
        // let the unique indexes tell. If any row was a duplicate, roll the transaction back and
        // plan again knowing which ones (seqs must stay gapless). A whole-transaction rollback
        // rather than a savepoint: with a savepoint open SQLite copies every page it touches
        // to a sub-journal first, which cost a quarter of the writer's time.
        let mut plan = {
            let Writer { conn, heads, room_heads, .. } = g.w();
            Self::plan(conn, heads, room_heads, &batch, HashMap::new()).await?
        };
        if !Self::insert_plan(g.conn(), &plan).await? {
            g.rollback().await?;
            g.begin().await?;
            let Writer { conn, heads, room_heads, .. } = g.w();
            let existing = Self::lookup_existing(conn, &batch).await?;
            plan = Self::plan(conn, heads, room_heads, &batch, existing).await?;
            if !Self::insert_plan(conn, &plan).await? {
                return Err(StoreError::Corrupt("duplicate appeared during an append".into()));
            }
        }
        g.faults().check(FaultStep::Insert)?;
        for (room, head) in &plan.new_room_heads {
            sqlx::query("UPDATE rooms SET head = ? WHERE room = ?")
                .bind(to_i64(*head))
                .bind(room)
                .execute(g.conn())
                .await?;
        }

        // Coalesce cursor updates: the highest per device (and room).
        let (inbox, rooms) = coalesce_cursors(&cursors);
        for chunk in chunks(&inbox) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO device_cursors (user, device_id, seq, updated_ms) ");
            q.push_values(chunk, |mut b, c| {
                b.push_bind(&c.user).push_bind(&c.device_id).push_bind(to_i64(c.seq)).push_bind(to_i64(c.at_ms));
            });
            q.push(
                " ON CONFLICT (user, device_id) DO UPDATE SET seq = max(seq, excluded.seq), updated_ms = excluded.updated_ms",
            );
            q.build().execute(g.conn()).await?;
        }
        for chunk in chunks(&rooms) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO room_cursors (user, device_id, room, seq, updated_ms) ");
            q.push_values(chunk, |mut b, c| {
                b.push_bind(&c.user)
                    .push_bind(&c.device_id)
                    .push_bind(c.room.as_deref().unwrap_or_default())
                    .push_bind(to_i64(c.seq))
                    .push_bind(to_i64(c.at_ms));
            });
            q.push(" ON CONFLICT (user, device_id, room) DO UPDATE SET seq = max(seq, excluded.seq), updated_ms = excluded.updated_ms");
            q.build().execute(g.conn()).await?;
        }
        g.commit().await?;
        // Heads move only after a verified commit.
        let w = g.w();
        if w.heads.len() > 1_000_000 {
            w.heads.clear();
        }
        w.heads.extend(plan.new_heads);
        if w.room_heads.len() > 1_000_000 {
            w.room_heads.clear();
        }
        w.room_heads.extend(plan.new_room_heads);
        g.succeeded();
        Ok(plan.results)
    }

    async fn fetch_inbox(
        &self,
        user: &str,
        after: u64,
        until: Option<u64>,
        limit: u32,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        // Both halves of the inbox, each bounded by the limit, merged by seq.
        let sql = format!(
            "SELECT * FROM ( \
               SELECT * FROM (SELECT {MESSAGE_COLS}, m.sender_seq AS seq FROM messages m \
                 WHERE m.sender = ?1 AND m.sender_seq > ?2 AND m.sender_seq <= ?3 ORDER BY m.sender_seq LIMIT ?4) \
               UNION ALL \
               SELECT * FROM (SELECT {MESSAGE_COLS}, m.to_seq AS seq FROM messages m \
                 WHERE m.to_kind = 'user' AND m.to_id = ?1 AND m.to_seq > ?2 AND m.to_seq <= ?3 AND m.sender <> ?1 \
                 ORDER BY m.to_seq LIMIT ?4) \
             ) ORDER BY seq LIMIT ?4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user)
            .bind(to_i64(after))
            .bind(until.map(to_i64).unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&self.readers)
            .await?;
        rows.iter()
            .map(|r| Ok(InboxEntry { seq: to_u64(r.try_get(9)?, "seq")?, msg: Arc::new(message_from_row(r, 0)?) }))
            .collect()
    }

    async fn inbox_head(&self, user: &str) -> Result<u64, StoreError> {
        let h: i64 = sqlx::query_scalar(HEAD_SQL).bind(user).fetch_one(&self.readers).await?;
        to_u64(h, "seq")
    }

    async fn device_cursor(&self, user: &str, device_id: &str) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT seq FROM device_cursors WHERE user = ? AND device_id = ?")
            .bind(user)
            .bind(device_id)
            .fetch_optional(&self.readers)
            .await?;
        v.map(|v| to_u64(v, "cursor")).transpose()
    }

    async fn create_ticket(&self, hash: &str, user: &str, expires_ms: u64) -> Result<(), StoreError> {
        let mut g = self.writer("create_ticket").await?;
        g.begin().await?;
        // Expired tickets go with each new one, so unused tickets cannot pile up.
        sqlx::query("DELETE FROM tickets WHERE expires_ms < ?")
            .bind(to_i64(crate::ids::now_ms()))
            .execute(g.conn())
            .await?;
        sqlx::query("INSERT INTO tickets (hash, user, expires_ms) VALUES (?, ?, ?)")
            .bind(hash)
            .bind(user)
            .bind(to_i64(expires_ms))
            .execute(g.conn())
            .await?;
        g.commit().await?;
        g.succeeded();
        Ok(())
    }

    async fn consume_ticket(&self, hash: &str, now_ms: u64) -> Result<TicketUse, StoreError> {
        // A ticket nobody issued costs one read, not a write.
        let known: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM tickets WHERE hash = ?").bind(hash).fetch_optional(&self.readers).await?;
        if known.is_none() {
            return Ok(TicketUse::Invalid);
        }
        // The login may only go ahead once the ticket's removal is committed: a ticket must
        // never log in twice, also not across a failed commit.
        let mut g = self.writer("consume_ticket").await?;
        g.begin().await?;
        let row = sqlx::query("DELETE FROM tickets WHERE hash = ? RETURNING user, expires_ms")
            .bind(hash)
            .fetch_optional(g.conn())
            .await?;
        g.commit().await?;
        g.succeeded();
        let Some(row) = row else {
            return Ok(TicketUse::Invalid);
        };
        let user: String = row.try_get(0)?;
        let expires = to_u64(row.try_get(1)?, "expires_ms")?;
        if expires <= now_ms {
            Ok(TicketUse::Expired)
        } else {
            Ok(TicketUse::Valid(user))
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.ping().await?;
        if self.writer_ok() {
            return Ok(());
        }
        let mut g = self.writer("probe").await?;
        g.begin().await?;
        sqlx::query("INSERT OR REPLACE INTO writer_probe (id, at_ms, pad) VALUES (1, ?, zeroblob(?))")
            .bind(to_i64(crate::ids::now_ms()))
            .bind(PROBE_BYTES)
            .execute(g.conn())
            .await?;
        g.commit().await?;
        g.succeeded();
        Ok(())
    }

    async fn set_cursor(&self, user: &str, device_id: &str, room: Option<&str>, seq: u64) -> Result<(), StoreError> {
        let mut g = self.writer("set_cursor").await?;
        g.begin().await?;
        let now = to_i64(crate::ids::now_ms());
        match room {
            None => sqlx::query(
                "INSERT INTO device_cursors (user, device_id, seq, updated_ms) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (user, device_id) DO UPDATE SET seq = excluded.seq, updated_ms = excluded.updated_ms",
            )
            .bind(user)
            .bind(device_id)
            .bind(to_i64(seq))
            .bind(now)
            .execute(g.conn())
            .await?,
            Some(room) => sqlx::query(
                "INSERT INTO room_cursors (user, device_id, room, seq, updated_ms) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (user, device_id, room) DO UPDATE SET seq = excluded.seq, updated_ms = excluded.updated_ms",
            )
            .bind(user)
            .bind(device_id)
            .bind(room)
            .bind(to_i64(seq))
            .bind(now)
            .execute(g.conn())
            .await?,
        };
        g.commit().await?;
        g.succeeded();
        Ok(())
    }

    async fn count_from(&self, sender: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE sender = ?")
            .bind(sender)
            .fetch_one(&self.readers)
            .await?;
        to_u64(n, "count")
    }

    async fn create_room(&self, room: &str, now_ms: u64) -> Result<bool, StoreError> {
        let mut g = self.writer("create_room").await?;
        g.begin().await?;
        let r = sqlx::query("INSERT OR IGNORE INTO rooms (room, created_ms, head) VALUES (?, ?, 0)")
            .bind(room)
            .bind(to_i64(now_ms))
            .execute(g.conn())
            .await?;
        g.commit().await?;
        g.succeeded();
        Ok(r.rows_affected() == 1)
    }

    async fn delete_room(&self, room: &str) -> Result<bool, StoreError> {
        let mut g = self.writer("delete_room").await?;
        g.begin().await?;
        let existed =
            sqlx::query("DELETE FROM rooms WHERE room = ?").bind(room).execute(g.conn()).await?.rows_affected();
        for sql in [
            "DELETE FROM room_members WHERE room = ?",
            "DELETE FROM room_log WHERE room = ?",
            "DELETE FROM room_cursors WHERE room = ?",
        ] {
            sqlx::query(sql).bind(room).execute(g.conn()).await?;
        }
        g.commit().await?;
        g.w().room_heads.remove(room);
        g.succeeded();
        Ok(existed == 1)
    }

    async fn room_head(&self, room: &str) -> Result<Option<u64>, StoreError> {
        let h: Option<i64> = sqlx::query_scalar("SELECT head FROM rooms WHERE room = ?")
            .bind(room)
            .fetch_optional(&self.readers)
            .await?;
        h.map(|h| to_u64(h, "room head")).transpose()
    }

    async fn add_member(&self, room: &str, user: &str, now_ms: u64) -> Result<bool, StoreError> {
        let mut g = self.writer("add_member").await?;
        g.begin().await?;
        let r = sqlx::query("INSERT OR IGNORE INTO room_members (room, user, joined_ms) VALUES (?, ?, ?)")
            .bind(room)
            .bind(user)
            .bind(to_i64(now_ms))
            .execute(g.conn())
            .await?;
        g.commit().await?;
        g.succeeded();
        Ok(r.rows_affected() == 1)
    }

    async fn remove_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        let mut g = self.writer("remove_member").await?;
        g.begin().await?;
        let r = sqlx::query("DELETE FROM room_members WHERE room = ? AND user = ?")
            .bind(room)
            .bind(user)
            .execute(g.conn())
            .await?;
        // A later rejoin starts at the head, not where this membership left off.
        sqlx::query("DELETE FROM room_cursors WHERE room = ? AND user = ?")
            .bind(room)
            .bind(user)
            .execute(g.conn())
            .await?;
        g.commit().await?;
        g.succeeded();
        Ok(r.rows_affected() == 1)
    }

    async fn members(&self, room: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT user FROM room_members WHERE room = ? ORDER BY user")
            .bind(room)
            .fetch_all(&self.readers)
            .await?)
    }

    async fn rooms_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT room FROM room_members WHERE user = ? ORDER BY room")
            .bind(user)
            .fetch_all(&self.readers)
            .await?)
    }

    async fn fetch_room(
        &self,
        room: &str,
        after: u64,
        until: Option<u64>,
        limit: u32,
    ) -> Result<(Vec<InboxEntry>, u64), StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROOM_COLS} FROM room_log l WHERE l.room = ? AND l.seq > ? AND l.seq <= ? ORDER BY l.seq LIMIT ?"
        )))
        .bind(room)
        .bind(to_i64(after))
        .bind(until.map(to_i64).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await?;
        let entries = rows
            .iter()
            .map(|r| room_message_from_row(r).map(|(seq, msg)| InboxEntry { seq, msg: Arc::new(msg) }))
            .collect::<Result<Vec<_>, _>>()?;
        let first: Option<i64> = sqlx::query_scalar(
            "SELECT coalesce((SELECT min(seq) FROM room_log WHERE room = ?1), (SELECT head + 1 FROM rooms WHERE room = ?1))",
        )
        .bind(room)
        .fetch_one(&self.readers)
        .await?;
        Ok((entries, first.map(|f| to_u64(f, "first seq")).transpose()?.unwrap_or(1)))
    }

    async fn room_cursor(&self, user: &str, device_id: &str, room: &str) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM room_cursors WHERE user = ? AND device_id = ? AND room = ?")
                .bind(user)
                .bind(device_id)
                .bind(room)
                .fetch_optional(&self.readers)
                .await?;
        v.map(|v| to_u64(v, "room cursor")).transpose()
    }

    async fn prune_rooms(&self, max_count: u64, min_ts_ms: u64) -> Result<u64, StoreError> {
        let mut g = self.writer("prune_rooms").await?;
        g.begin().await?;
        let by_age = sqlx::query("DELETE FROM room_log WHERE ts < ?").bind(to_i64(min_ts_ms)).execute(g.conn()).await?;
        let by_count = sqlx::query(
            "DELETE FROM room_log WHERE (room, seq) IN \
             (SELECT l.room, l.seq FROM room_log l JOIN rooms r ON r.room = l.room WHERE l.seq + ? <= r.head)",
        )
        .bind(to_i64(max_count))
        .execute(g.conn())
        .await?;
        g.commit().await?;
        g.succeeded();
        Ok(by_age.rows_affected() + by_count.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open_temp() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let s = SqliteStore::open(&url, StoreSync::Full).await.unwrap();
        (dir, s)
    }

    fn ok(r: &Result<Appended, Refusal>) -> &Appended {
        r.as_ref().expect("appended")
    }

    fn msg(id: u64, from: &str, cid: &str, to: &str) -> NewMessage {
        NewMessage {
            msg_id: id,
            sender: from.into(),
            sender_device: "d".into(),
            client_msg_id: cid.into(),
            to: Address::user(to),
            ts: 1000 + id,
            content_type: "text/plain".into(),
            payload: format!("m{id}").into_bytes(),
        }
    }

    #[tokio::test]
    async fn seqs_are_gapless_per_inbox_and_dups_return_the_original() {
        let (_d, s) = open_temp().await;
        let r = s
            .append(vec![msg(1, "a", "c1", "b"), msg(2, "a", "c2", "b"), msg(3, "b", "x", "a")], vec![])
            .await
            .unwrap();
        assert_eq!(ok(&r[0]).recipients, vec![("a".to_string(), 1), ("b".to_string(), 1)]);
        assert_eq!(ok(&r[1]).recipients, vec![("a".to_string(), 2), ("b".to_string(), 2)]);
        assert_eq!(ok(&r[2]).recipients, vec![("b".to_string(), 3), ("a".to_string(), 3)]);
        // A retry in a later batch and a twin inside one batch: the original ack, nothing stored.
        let r = s
            .append(vec![msg(9, "a", "c2", "b"), msg(10, "a", "c4", "b"), msg(11, "a", "c4", "b")], vec![])
            .await
            .unwrap();
        assert!(ok(&r[0]).duplicate);
        assert_eq!((ok(&r[0]).msg.msg_id, ok(&r[0]).sender_seq), (2, 2));
        assert!(!ok(&r[1]).duplicate);
        assert!(ok(&r[2]).duplicate);
        assert_eq!(ok(&r[2]).msg.msg_id, 10);
        assert_eq!(s.count_from("a").await.unwrap(), 3);
        let inbox = s.fetch_inbox("b", 0, None, 100).await.unwrap();
        let seqs: Vec<u64> = inbox.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        assert_eq!(inbox[3].msg.msg_id, 10);
        assert_eq!(s.fetch_inbox("b", 1, Some(2), 100).await.unwrap().len(), 1);
        assert_eq!(s.inbox_head("a").await.unwrap(), 4);
    }

    fn big(id: u64, from: &str, cid: &str, to: &str) -> NewMessage {
        NewMessage { payload: vec![b'x'; 1500], ..msg(id, from, cid, to) }
    }

    /// Drives a store through a full database the way clients do: each batch carries new
    /// messages, retries of refused ones (same client id) and one retry of an acknowledged one
    /// (an ack lost on the way). Returns every (client id, msg id) that was acknowledged and
    /// how many appends failed.
    async fn run_until_full_and_back(s: &SqliteStore, faults: &Faults, limit: u64) -> (Vec<(String, u64)>, usize) {
        let mut acked: Vec<(String, u64)> = Vec::new();
        let mut refused: Vec<NewMessage> = Vec::new();
        let mut failures = 0;
        let mut next = 0u64;
        for round in 0..400u64 {
            if round == 10 {
                faults.set_max_pages(limit);
            }
            if round == 200 {
                faults.set_max_pages(0);
            }
            let mut batch: Vec<NewMessage> = std::mem::take(&mut refused);
            if round < 300 {
                for _ in 0..4 {
                    next += 1;
                    batch.push(big(next, "a", &format!("c{next}"), "b"));
                }
            }
            if let Some((cid, _)) = acked.last() {
                batch.push(big(next + 1_000_000, "a", cid, "b"));
            }
            match s.append(batch.clone(), vec![]).await {
                Ok(results) => {
                    for r in &results {
                        let a = ok(r);
                        acked.push((a.msg.client_msg_id.clone(), a.msg.msg_id));
                    }
                }
                Err(_) => {
                    failures += 1;
                    refused = batch.into_iter().filter(|m| m.msg_id < 1_000_000).collect();
                }
            }
        }
        assert!(refused.is_empty(), "every refused message got in once space was back");
        (acked, failures)
    }

    #[tokio::test]
    async fn a_full_database_never_acknowledges_what_it_did_not_commit() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let hooks = StoreHooks::default();
        let s = SqliteStore::open_with(&url, StoreSync::Full, hooks.clone()).await.unwrap();
        s.append(vec![msg(0, "a", "warmup", "b")], vec![]).await.unwrap();
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&s.readers).await.unwrap();
        let (acked, failures) = run_until_full_and_back(&s, &hooks.faults, pages as u64 + 40).await;
        assert!(failures >= 10, "the page limit made appends fail ({failures})");
        assert!(s.writer_ok(), "the writer recovered without a restart");
        assert_eq!(hooks.metrics.store_writer_ready.get(), 1);
        assert!(hooks.metrics.render().contains("tether_store_errors_total{op=\"append\"}"));
        s.close().await;

        // Everything acknowledged is on disk, once, with gapless seqs.
        let s = SqliteStore::open(&url, StoreSync::Full).await.unwrap();
        let inbox = s.fetch_inbox("b", 0, None, 100_000).await.unwrap();
        let stored: HashMap<String, u64> = inbox.iter().map(|e| (e.msg.client_msg_id.clone(), e.msg.msg_id)).collect();
        assert_eq!(stored.len(), inbox.len(), "no client id stored twice");
        for (cid, id) in &acked {
            assert_eq!(stored.get(cid), Some(id), "acknowledged {cid} is stored with the acknowledged id");
        }
        let seqs: Vec<u64> = inbox.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=inbox.len() as u64).collect::<Vec<_>>());
        assert_eq!(inbox.len(), 1 + 300 * 4, "every message got in exactly once");
    }

    #[tokio::test]
    async fn each_failed_step_leaves_nothing_acknowledged_unstored() {
        for step in [FaultStep::Begin, FaultStep::Insert, FaultStep::Commit, FaultStep::Fsync] {
            let (_d, s) = open_temp().await;
            s.append(vec![msg(1, "a", "c1", "b")], vec![]).await.unwrap();
            s.hooks.faults.fail(step, 1);
            let failed = s.append(vec![msg(2, "a", "c2", "b"), msg(3, "a", "c3", "b")], vec![]).await;
            assert!(failed.is_err(), "{step:?}: the failed step is reported");
            assert!(!s.writer_ok());
            // The retry (same client ids) lands once, whatever the failed attempt left behind.
            let r =
                s.append(vec![msg(4, "a", "c2", "b"), msg(5, "a", "c3", "b"), msg(6, "a", "c4", "b")], vec![]).await;
            let r = r.unwrap_or_else(|e| panic!("{step:?}: retry failed: {e}"));
            assert!(s.writer_ok());
            let seqs: Vec<u64> = r.iter().map(|r| ok(r).sender_seq).collect();
            assert_eq!(seqs, vec![2, 3, 4], "{step:?}");
            // After a commit whose outcome was unknown, the retries are the stored originals.
            let dup = step == FaultStep::Fsync;
            assert_eq!(ok(&r[0]).duplicate, dup, "{step:?}");
            assert_eq!(ok(&r[0]).msg.msg_id, if dup { 2 } else { 4 }, "{step:?}");
            let inbox = s.fetch_inbox("b", 0, None, 100).await.unwrap();
            assert_eq!(inbox.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4], "{step:?}");
        }
    }

    #[tokio::test]
    async fn readiness_follows_the_writer_and_recovers_on_its_own() {
        let (_d, s) = open_temp().await;
        assert!(s.ready().await.is_ok());
        s.hooks.faults.fail(FaultStep::Commit, 2);
        assert!(s.append(vec![msg(1, "a", "c1", "b")], vec![]).await.is_err());
        // The probe write hits the second pending fault: still not ready.
        assert!(s.ready().await.is_err());
        assert_eq!(s.hooks.metrics.store_writer_ready.get(), 0);
        // The fault is gone: the probe commits and the node is ready again, with no restart.
        assert!(s.ready().await.is_ok());
        assert_eq!(s.hooks.metrics.store_writer_ready.get(), 1);
        assert!(s.append(vec![msg(2, "a", "c1", "b")], vec![]).await.is_ok());
    }

    #[tokio::test]
    async fn every_writer_operation_recovers_from_a_failed_commit() {
        let (_d, s) = open_temp().await;
        s.hooks.faults.fail(FaultStep::Commit, 1);
        assert!(s.create_room("r", 1).await.is_err());
        assert_eq!(s.room_head("r").await.unwrap(), None, "a failed create left no room");
        assert!(s.create_room("r", 1).await.unwrap());
        s.hooks.faults.fail(FaultStep::Commit, 1);
        assert!(s.add_member("r", "a", 1).await.is_err());
        assert!(s.members("r").await.unwrap().is_empty());
        assert!(s.add_member("r", "a", 1).await.unwrap());
        s.hooks.faults.fail(FaultStep::Begin, 1);
        assert!(s.remove_member("r", "a").await.is_err());
        assert_eq!(s.members("r").await.unwrap(), vec!["a".to_string()]);
        // Tickets: a failed consume does not log in, and the ticket still works afterwards.
        s.create_ticket("h", "alice", u64::MAX / 2).await.unwrap();
        s.hooks.faults.fail(FaultStep::Commit, 1);
        assert!(s.consume_ticket("h", 1).await.is_err());
        assert_eq!(s.consume_ticket("h", 1).await.unwrap(), TicketUse::Valid("alice".into()));
        assert_eq!(s.consume_ticket("h", 1).await.unwrap(), TicketUse::Invalid);
        // A ticket consumed in a commit whose outcome was unknown is not handed out again.
        s.create_ticket("h2", "bob", u64::MAX / 2).await.unwrap();
        s.hooks.faults.fail(FaultStep::Fsync, 1);
        assert!(s.consume_ticket("h2", 1).await.is_err());
        assert_eq!(s.consume_ticket("h2", 1).await.unwrap(), TicketUse::Invalid);
        assert!(s.ready().await.is_ok());
        assert!(s.writer_ok());
    }

    #[tokio::test]
    async fn a_cancelled_write_does_not_leave_its_transaction_behind() {
        let (_d, s) = open_temp().await;
        // Poll an append once and drop it, possibly in the middle of its transaction.
        let fut = s.append(vec![msg(1, "a", "c1", "b")], vec![]);
        let _ = futures_poll_once(fut).await;
        let r = s.append(vec![msg(2, "a", "c2", "b")], vec![]).await.unwrap();
        s.close().await;
        let s2 = SqliteStore::open(&format!("sqlite://{}", _d.path().join("t.db").display()), StoreSync::Full)
            .await
            .unwrap();
        let inbox = s2.fetch_inbox("b", 0, None, 10).await.unwrap();
        assert!(inbox.iter().any(|e| e.msg.client_msg_id == "c2" && e.seq == ok(&r[0]).sender_seq));
    }

    /// Polls `fut` once, then drops it.
    async fn futures_poll_once<F: std::future::Future>(fut: F) -> Option<F::Output> {
        let mut fut = Box::pin(fut);
        std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }

    #[test]
    fn chunks_cover_everything_with_few_shapes() {
        for n in [0, 1, 5, 127, 128, 129, 1000, 4097] {
            let sizes: Vec<usize> = chunk_sizes(n).collect();
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(sizes.iter().all(|s| s.is_power_of_two() && *s <= CHUNK_ROWS));
        }
        let items: Vec<u32> = (0..300).collect();
        let joined: Vec<u32> = chunks(&items).flatten().copied().collect();
        assert_eq!(joined, items);
    }

    #[tokio::test]
    async fn message_to_self_has_one_inbox_entry() {
        let (_d, s) = open_temp().await;
        let r = s.append(vec![msg(1, "a", "c1", "a")], vec![]).await.unwrap();
        assert_eq!(ok(&r[0]).recipients, vec![("a".to_string(), 1)]);
        assert_eq!(s.fetch_inbox("a", 0, None, 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn heads_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        {
            let s = SqliteStore::open(&url, StoreSync::Full).await.unwrap();
            s.append(vec![msg(1, "a", "c1", "b"), msg(2, "a", "c2", "b")], vec![]).await.unwrap();
            s.close().await;
        }
        let s = SqliteStore::open(&url, StoreSync::Full).await.unwrap();
        let r = s.append(vec![msg(3, "a", "c3", "b")], vec![]).await.unwrap();
        assert_eq!(ok(&r[0]).recipients, vec![("a".to_string(), 3), ("b".to_string(), 3)]);
    }

    #[tokio::test]
    async fn room_logs_have_their_own_gapless_seq_and_membership() {
        let (_d, s) = open_temp().await;
        assert!(s.create_room("r", 1).await.unwrap());
        assert!(!s.create_room("r", 1).await.unwrap());
        assert!(s.add_member("r", "a", 1).await.unwrap());
        assert!(!s.add_member("r", "a", 1).await.unwrap());
        s.add_member("r", "b", 1).await.unwrap();
        assert_eq!(s.members("r").await.unwrap(), vec!["a".to_string(), "b".to_string()]);
        assert_eq!(s.rooms_of("a").await.unwrap(), vec!["r".to_string()]);
        let to_room = |id: u64, cid: &str| NewMessage { to: Address::room("r"), ..msg(id, "a", cid, "x") };
        let r = s
            .append(vec![to_room(1, "c1"), msg(2, "a", "c2", "b"), to_room(3, "c3"), to_room(4, "c1")], vec![])
            .await
            .unwrap();
        assert_eq!((ok(&r[0]).sender_seq, ok(&r[2]).sender_seq), (1, 2));
        assert!(ok(&r[3]).duplicate);
        // The user message got the sender's inbox seq 1: room seqs do not touch inboxes.
        assert_eq!(ok(&r[1]).sender_seq, 1);
        let nowhere = NewMessage { to: Address::room("nowhere"), ..msg(5, "a", "c5", "x") };
        let r = s.append(vec![nowhere, to_room(6, "c3")], vec![]).await.unwrap();
        assert_eq!(r[0].as_ref().err().map(|e| e.code), Some(tether_proto::ErrorCode::NoSuchRoom));
        assert!(ok(&r[1]).duplicate, "a retry of a room message in a later batch");
        let (entries, first) = s.fetch_room("r", 0, None, 10).await.unwrap();
        assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(first, 1);
        assert_eq!(entries[0].msg.to, Address::room("r"));
        assert_eq!(s.room_head("r").await.unwrap(), Some(2));
        // Cursors per room, pruning keeps the head.
        let cu = CursorUpdate { user: "b".into(), device_id: "d".into(), room: Some("r".into()), seq: 2, at_ms: 1 };
        s.append(vec![], vec![cu]).await.unwrap();
        assert_eq!(s.room_cursor("b", "d", "r").await.unwrap(), Some(2));
        assert_eq!(s.prune_rooms(1, 0).await.unwrap(), 1);
        let (entries, first) = s.fetch_room("r", 0, None, 10).await.unwrap();
        assert_eq!((entries.len(), first), (1, 2));
        let r = s.append(vec![to_room(7, "c7")], vec![]).await.unwrap();
        assert_eq!(ok(&r[0]).sender_seq, 3);
        assert!(s.remove_member("r", "b").await.unwrap());
        assert!(s.delete_room("r").await.unwrap());
        assert_eq!(s.room_head("r").await.unwrap(), None);
        assert!(s.members("r").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn cursors_only_move_forward() {
        let (_d, s) = open_temp().await;
        let cu = |seq| CursorUpdate { user: "a".into(), device_id: "d1".into(), room: None, seq, at_ms: 1 };
        s.append(vec![], vec![cu(5), cu(3)]).await.unwrap();
        assert_eq!(s.device_cursor("a", "d1").await.unwrap(), Some(5));
        s.append(vec![], vec![cu(2)]).await.unwrap();
        assert_eq!(s.device_cursor("a", "d1").await.unwrap(), Some(5));
        assert_eq!(s.device_cursor("a", "d2").await.unwrap(), None);
    }

    #[tokio::test]
    async fn tickets_are_single_use_and_expire() {
        let (_d, s) = open_temp().await;
        let now = crate::ids::now_ms();
        s.create_ticket("h1", "alice", now + 60_000).await.unwrap();
        s.create_ticket("h2", "bob", now + 60_000).await.unwrap();
        assert_eq!(s.consume_ticket("h1", now).await.unwrap(), TicketUse::Valid("alice".into()));
        assert_eq!(s.consume_ticket("h1", now).await.unwrap(), TicketUse::Invalid);
        assert_eq!(s.consume_ticket("h2", now + 120_000).await.unwrap(), TicketUse::Expired);
        assert_eq!(s.consume_ticket("nope", now).await.unwrap(), TicketUse::Invalid);
        // Creating a ticket sweeps the expired ones.
        s.create_ticket("old", "carol", now - 1).await.unwrap();
        s.create_ticket("h3", "dave", now + 60_000).await.unwrap();
        assert_eq!(s.consume_ticket("old", now - 10).await.unwrap(), TicketUse::Invalid);
    }
}
