//! PostgreSQL backend: the shared store of a cluster, written by several nodes at once.
//!
//! What makes it correct with several writers (docs/architecture.md, "The shared store"):
//! - Inbox and room seqs are allocated inside the database, in the transaction that writes the
//!   rows: a head row per inbox (`inbox_heads`) and per room (`rooms.head`) is moved by the
//!   batch's count and read back (`RETURNING`), which also locks it until the commit. Nothing is
//!   cached in memory, so another node's appends are always seen. Head rows are locked in key
//!   order, so two nodes' batches do not deadlock on them.
//! - Dedup on (sender, client_msg_id): the batch looks up what is stored; a twin being written
//!   by another node at the same moment makes the insert fail on the unique index, the
//!   transaction rolls back (no seq is used) and the append runs again, now finding it.
//! - Deadlocks, serialization failures and those unique violations are retried inside the store
//!   ([`MAX_ATTEMPTS`]); callers only see errors that are not about concurrency.
//! - Tickets are consumed by one `DELETE ... RETURNING`, which at most one login gets a row from.
//! - One pruner at a time across nodes: pruning holds a transaction-level advisory lock and skips
//!   its turn when another node holds it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};
use tether_proto::{Address, AddressKind};

use super::faults::FaultStep;
use super::sqlite::StoreHooks;
use super::*;

/// Attempts of one write before a concurrency failure (deadlock, serialization failure, a
/// duplicate committed by another node meanwhile) is given up on and reported.
pub const MAX_ATTEMPTS: u32 = 8;

/// Advisory lock key of the room pruner (one pruner at a time across nodes).
const PRUNE_LOCK: i64 = 0x7465_7468_6572_0001;

/// Connection settings of a shared store.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Connections per node.
    pub max_connections: u32,
    /// How long a request waits for a connection before it fails (a database that is down
    /// makes sends fail this fast).
    pub acquire_timeout: Duration,
    /// Longest a statement may run (`statement_timeout`); also bounds lock waits.
    pub statement_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
        }
    }
}

/// The PostgreSQL store.
pub struct PgStore {
    pool: PgPool,
    hooks: StoreHooks,
    /// This node's row in `writer_probe`.
    node: String,
    /// False from a failed write until a write succeeds again.
    writer_ok: AtomicBool,
}

/// Columns of a message row, in the order [`message_from_row`] reads them.
const MESSAGE_COLS: &str =
    "m.id, m.sender, m.sender_device, m.client_msg_id, m.to_kind, m.to_id, m.ts, m.content_type, m.payload";

/// Columns of a room log row, in the order [`room_message_from_row`] reads them.
const ROOM_COLS: &str =
    "l.room, l.seq, l.id, l.sender, l.sender_device, l.client_msg_id, l.ts, l.content_type, l.payload";

fn message_from_row(row: &PgRow, at: usize) -> Result<StoredMessage, StoreError> {
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

fn room_message_from_row(row: &PgRow) -> Result<(u64, StoredMessage), StoreError> {
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

/// Whether a failure is about concurrency with another writer and the write should run again:
/// serialization failure, deadlock, or a unique violation (a twin committed by another node
/// after this transaction looked).
fn retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Db(sqlx::Error::Database(d)) => matches!(d.code().as_deref(), Some("40001" | "40P01" | "23505")),
        _ => false,
    }
}

type DedupKey = (String, String);

impl PgStore {
    /// Connects to the database at `url` (`postgres://...`), applies the embedded migrations,
    /// and refuses a database whose schema is newer than this build knows.
    pub async fn open(url: &str, settings: &PoolSettings, hooks: StoreHooks) -> Result<Self, StoreError> {
        let opts = PgConnectOptions::from_str(url)?
            .options([("statement_timeout", format!("{}", settings.statement_timeout.as_millis()))])
            .application_name("tether-server");
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .min_connections(1)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        hooks.metrics.store_writer_ready.set(1);
        let node = format!("{}-{}", std::process::id(), crate::ids::now_ms());
        Ok(PgStore { pool, hooks, node, writer_ok: AtomicBool::new(true) })
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Whether the last write succeeded.
    pub fn writer_ok(&self) -> bool {
        self.writer_ok.load(Ordering::SeqCst)
    }

    fn write_succeeded(&self) {
        if !self.writer_ok.swap(true, Ordering::SeqCst) {
            tracing::info!("store writes succeed again");
        }
        self.hooks.metrics.store_writer_ready.set(1);
    }

    fn write_failed(&self, op: &'static str, e: &StoreError) {
        self.hooks.metrics.store_error(op);
        self.hooks.metrics.store_writer_ready.set(0);
        if self.writer_ok.swap(false, Ordering::SeqCst) {
            tracing::warn!(op, error = %e, "store write failed");
        }
    }

    /// Runs a write, again on a concurrency failure (after a short, growing pause), and keeps
    /// the writer state and metrics.
    async fn write<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => {
                    self.write_succeeded();
                    return Ok(v);
                }
                Err(e) if attempt < MAX_ATTEMPTS && retryable(&e) => {
                    self.hooks.metrics.store_retry(op);
                    let pause = Duration::from_micros(500 << attempt.min(6))
                        + Duration::from_micros(rand::random::<u64>() % 500);
                    tracing::debug!(op, attempt, error = %e, "concurrent write conflict: retrying");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(e) => {
                    self.write_failed(op, &e);
                    return Err(e);
                }
            }
        }
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.hooks.faults.check(FaultStep::Begin)?;
        Ok(self.pool.begin().await?)
    }

    /// Commits; an injected `fsync` fault reports a committed transaction as failed (the
    /// outcome a lost connection during COMMIT leaves the node with).
    async fn commit(&self, tx: Transaction<'static, Postgres>) -> Result<(), StoreError> {
        self.hooks.faults.check(FaultStep::Commit)?;
        tx.commit().await?;
        self.hooks.faults.check(FaultStep::Fsync)?;
        Ok(())
    }

    /// Stored messages among the batch's (sender, client_msg_id), with their (sender or room)
    /// seq.
    async fn lookup_existing(
        tx: &mut Transaction<'static, Postgres>,
        batch: &[NewMessage],
    ) -> Result<HashMap<DedupKey, (Arc<StoredMessage>, u64)>, StoreError> {
        let senders: Vec<&str> = batch.iter().map(|m| m.sender.as_str()).collect();
        let ids: Vec<&str> = batch.iter().map(|m| m.client_msg_id.as_str()).collect();
        let mut existing = HashMap::new();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLS}, m.sender_seq FROM unnest($1::text[], $2::text[]) AS v(s, c) \
             JOIN messages m ON m.sender = v.s AND m.client_msg_id = v.c"
        )))
        .bind(&senders)
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?;
        for row in rows {
            let msg = message_from_row(&row, 0)?;
            let seq = to_u64(row.try_get(9)?, "sender_seq")?;
            existing.insert((msg.sender.clone(), msg.client_msg_id.clone()), (Arc::new(msg), seq));
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROOM_COLS} FROM unnest($1::text[], $2::text[]) AS v(s, c) \
             JOIN room_log l ON l.sender = v.s AND l.client_msg_id = v.c"
        )))
        .bind(&senders)
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?;
        for row in rows {
            let (seq, msg) = room_message_from_row(&row)?;
            existing.insert((msg.sender.clone(), msg.client_msg_id.clone()), (Arc::new(msg), seq));
        }
        Ok(existing)
    }

    /// Moves the head rows of `counts` (inbox user or room -> how many new entries) and
    /// returns the first new seq of each. Rooms that do not exist are left out.
    async fn allocate(
        tx: &mut Transaction<'static, Postgres>,
        users: &BTreeMap<String, u64>,
        rooms: &BTreeMap<String, u64>,
    ) -> Result<(HashMap<String, u64>, HashMap<String, u64>), StoreError> {
        let mut user_next = HashMap::new();
        if !users.is_empty() {
            let names: Vec<&str> = users.keys().map(String::as_str).collect();
            let counts: Vec<i64> = users.values().map(|n| to_i64(*n)).collect();
            // In key order (BTreeMap), so that two batches lock shared heads in the same order.
            let rows = sqlx::query(
                "INSERT INTO inbox_heads (user_id, head) \
                 SELECT u, n FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS v(u, n, o) ORDER BY o \
                 ON CONFLICT (user_id) DO UPDATE SET head = inbox_heads.head + EXCLUDED.head \
                 RETURNING user_id, head",
            )
            .bind(&names)
            .bind(&counts)
            .fetch_all(&mut **tx)
            .await?;
            for row in rows {
                let user: String = row.try_get(0)?;
                let head = to_u64(row.try_get(1)?, "inbox head")?;
                let n = users.get(&user).copied().unwrap_or(0);
                user_next.insert(user, head - n + 1);
            }
        }
        let mut room_next = HashMap::new();
        for (room, n) in rooms {
            // One statement per room, in key order: the lock order is the order of the calls.
            let head: Option<i64> =
                sqlx::query_scalar("UPDATE rooms SET head = head + $2 WHERE room = $1 RETURNING head")
                    .bind(room)
                    .bind(to_i64(*n))
                    .fetch_optional(&mut **tx)
                    .await?;
            if let Some(head) = head {
                room_next.insert(room.clone(), to_u64(head, "room head")? - n + 1);
            }
        }
        Ok((user_next, room_next))
    }

    async fn try_append(
        &self,
        batch: &[NewMessage],
        cursors: &[CursorUpdate],
    ) -> Result<Vec<Result<Appended, Refusal>>, StoreError> {
        if let Some(done) = self.append_fresh_to_users(batch, cursors).await? {
            return Ok(done);
        }
        let mut tx = self.begin().await?;
        let existing = Self::lookup_existing(&mut tx, batch).await?;

        // First pass: how many new entries each inbox and room log gets.
        let mut fresh_keys: HashSet<DedupKey> = HashSet::new();
        let mut user_counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut room_counts: BTreeMap<String, u64> = BTreeMap::new();
        for m in batch {
            let key = (m.sender.clone(), m.client_msg_id.clone());
            if existing.contains_key(&key) || !fresh_keys.insert(key) {
                continue;
            }
            if m.to.kind == AddressKind::Room {
                *room_counts.entry(m.to.id.clone()).or_default() += 1;
            } else {
                *user_counts.entry(m.sender.clone()).or_default() += 1;
                if m.to.id != m.sender {
                    *user_counts.entry(m.to.id.clone()).or_default() += 1;
                }
            }
        }
        let (mut user_next, mut room_next) = Self::allocate(&mut tx, &user_counts, &room_counts).await?;

        // Second pass, in batch order: seqs, duplicates, refusals.
        let mut known = existing;
        let mut results: Vec<Result<Appended, Refusal>> = Vec::with_capacity(batch.len());
        let mut fresh: Vec<(Arc<StoredMessage>, u64, u64)> = Vec::new();
        let mut fresh_rooms: Vec<(Arc<StoredMessage>, u64)> = Vec::new();
        for m in batch {
            let key = (m.sender.clone(), m.client_msg_id.clone());
            if let Some((msg, seq)) = known.get(&key) {
                results.push(Ok(Appended {
                    msg: msg.clone(),
                    sender_seq: *seq,
                    recipients: Vec::new(),
                    duplicate: true,
                }));
                continue;
            }
            if m.to.kind == AddressKind::Room {
                let Some(next) = room_next.get_mut(&m.to.id) else {
                    results.push(Err(Refusal {
                        code: tether_proto::ErrorCode::NoSuchRoom,
                        message: format!("no room `{}`", m.to.id),
                    }));
                    continue;
                };
                let seq = *next;
                *next += 1;
                let msg = Arc::new(m.clone());
                known.insert(key, (msg.clone(), seq));
                fresh_rooms.push((msg.clone(), seq));
                results.push(Ok(Appended { msg, sender_seq: seq, recipients: Vec::new(), duplicate: false }));
                continue;
            }
            let mut users = vec![m.sender.clone()];
            if m.to.id != m.sender {
                users.push(m.to.id.clone());
            }
            let mut recipients = Vec::with_capacity(users.len());
            for u in users {
                let next = user_next
                    .get_mut(&u)
                    .ok_or_else(|| StoreError::Corrupt(format!("no head allocated for inbox {u}")))?;
                recipients.push((u, *next));
                *next += 1;
            }
            let sender_seq = recipients[0].1;
            let to_seq = recipients.last().map(|r| r.1).unwrap_or(sender_seq);
            let msg = Arc::new(m.clone());
            known.insert(key, (msg.clone(), sender_seq));
            fresh.push((msg.clone(), sender_seq, to_seq));
            results.push(Ok(Appended { msg, sender_seq, recipients, duplicate: false }));
        }

        if !fresh.is_empty() {
            sqlx::query(
                "INSERT INTO messages (id, sender, sender_device, client_msg_id, to_kind, to_id, sender_seq, to_seq, ts, content_type, payload) \
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                                      $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], $11::bytea[])",
            )
            .bind(fresh.iter().map(|(m, _, _)| to_i64(m.msg_id)).collect::<Vec<_>>())
            .bind(fresh.iter().map(|(m, _, _)| m.sender.as_str()).collect::<Vec<_>>())
            .bind(fresh.iter().map(|(m, _, _)| m.sender_device.as_str()).collect::<Vec<_>>())
            .bind(fresh.iter().map(|(m, _, _)| m.client_msg_id.as_str()).collect::<Vec<_>>())
            .bind(fresh.iter().map(|(m, _, _)| kind_str(m.to.kind)).collect::<Vec<_>>())
            .bind(fresh.iter().map(|(m, _, _)| m.to.id.as_str()).collect::<Vec<_>>())
            .bind(fresh.iter().map(|(_, s, _)| to_i64(*s)).collect::<Vec<_>>())
            .bind(fresh.iter().map(|(_, _, t)| to_i64(*t)).collect::<Vec<_>>())
            .bind(fresh.iter().map(|(m, _, _)| to_i64(m.ts)).collect::<Vec<_>>())
            .bind(fresh.iter().map(|(m, _, _)| m.content_type.as_str()).collect::<Vec<_>>())
            .bind(fresh.iter().map(|(m, _, _)| m.payload.as_slice()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        if !fresh_rooms.is_empty() {
            sqlx::query(
                "INSERT INTO room_log (room, seq, id, sender, sender_device, client_msg_id, ts, content_type, payload) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
                                      $7::bigint[], $8::text[], $9::bytea[])",
            )
            .bind(fresh_rooms.iter().map(|(m, _)| m.to.id.as_str()).collect::<Vec<_>>())
            .bind(fresh_rooms.iter().map(|(_, s)| to_i64(*s)).collect::<Vec<_>>())
            .bind(fresh_rooms.iter().map(|(m, _)| to_i64(m.msg_id)).collect::<Vec<_>>())
            .bind(fresh_rooms.iter().map(|(m, _)| m.sender.as_str()).collect::<Vec<_>>())
            .bind(fresh_rooms.iter().map(|(m, _)| m.sender_device.as_str()).collect::<Vec<_>>())
            .bind(fresh_rooms.iter().map(|(m, _)| m.client_msg_id.as_str()).collect::<Vec<_>>())
            .bind(fresh_rooms.iter().map(|(m, _)| to_i64(m.ts)).collect::<Vec<_>>())
            .bind(fresh_rooms.iter().map(|(m, _)| m.content_type.as_str()).collect::<Vec<_>>())
            .bind(fresh_rooms.iter().map(|(m, _)| m.payload.as_slice()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        self.hooks.faults.check(FaultStep::Insert)?;
        Self::write_cursors(&mut tx, cursors).await?;
        self.commit(tx).await?;
        Ok(results)
    }

    /// The common case in two round trips instead of six: a batch of messages to users, none of
    /// them stored yet (one read says so), written by one statement that is its own
    /// transaction: head rows moved (in byte order of the user id, as the general path locks
    /// them), seqs numbered in batch order per inbox, rows inserted, cursors moved forward.
    /// `None` when the batch is not such a batch (rooms, twins, retries of stored messages):
    /// the general path takes it. A twin committed by another node between the read and the
    /// write fails the statement on the unique index, and the retry finds it.
    async fn append_fresh_to_users(
        &self,
        batch: &[NewMessage],
        cursors: &[CursorUpdate],
    ) -> Result<Option<Vec<Result<Appended, Refusal>>>, StoreError> {
        if batch.is_empty() || batch.iter().any(|m| m.to.kind != AddressKind::User) {
            return Ok(None);
        }
        let mut keys = HashSet::with_capacity(batch.len());
        if !batch.iter().all(|m| keys.insert((m.sender.as_str(), m.client_msg_id.as_str()))) {
            return Ok(None);
        }
        let senders: Vec<&str> = batch.iter().map(|m| m.sender.as_str()).collect();
        let ids: Vec<&str> = batch.iter().map(|m| m.client_msg_id.as_str()).collect();
        let stored: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM unnest($1::text[], $2::text[]) AS v(s, c) \
                            JOIN messages m ON m.sender = v.s AND m.client_msg_id = v.c) \
                 OR EXISTS (SELECT 1 FROM unnest($1::text[], $2::text[]) AS v(s, c) \
                            JOIN room_log l ON l.sender = v.s AND l.client_msg_id = v.c)",
        )
        .bind(&senders)
        .bind(&ids)
        .fetch_one(&self.pool)
        .await?;
        if stored {
            return Ok(None);
        }
        let faults = &self.hooks.faults;
        faults.check(FaultStep::Begin)?;
        faults.check(FaultStep::Insert)?;
        faults.check(FaultStep::Commit)?;
        let (inbox, rooms) = coalesce_cursors(cursors);
        let rows = sqlx::query(
            "WITH v AS ( \
               SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], \
                                    $7::text[], $8::bytea[]) \
                 WITH ORDINALITY AS v(id, sender, device, cmid, to_id, ts, ctype, payload, o)), \
             e AS (SELECT o, sender AS u, true AS own FROM v \
                   UNION ALL SELECT o, to_id, false FROM v WHERE to_id <> sender), \
             c AS (SELECT u, count(*)::bigint AS n FROM e GROUP BY u), \
             h AS (INSERT INTO inbox_heads (user_id, head) SELECT u, n FROM c ORDER BY u COLLATE \"C\" \
                   ON CONFLICT (user_id) DO UPDATE SET head = inbox_heads.head + EXCLUDED.head \
                   RETURNING user_id, head), \
             s AS (SELECT e.o, e.own, h.head - c.n + row_number() OVER (PARTITION BY e.u ORDER BY e.o) AS seq \
                   FROM e JOIN c ON c.u = e.u JOIN h ON h.user_id = e.u), \
             ins AS (INSERT INTO messages (id, sender, sender_device, client_msg_id, to_kind, to_id, sender_seq, to_seq, \
                                           ts, content_type, payload) \
                     SELECT v.id, v.sender, v.device, v.cmid, 'user', v.to_id, so.seq, coalesce(t.seq, so.seq), \
                            v.ts, v.ctype, v.payload \
                     FROM v JOIN s so ON so.o = v.o AND so.own LEFT JOIN s t ON t.o = v.o AND NOT t.own \
                     RETURNING id, sender_seq, to_seq), \
             cur AS (INSERT INTO device_cursors (user_id, device_id, seq, updated_ms) \
                     SELECT * FROM unnest($9::text[], $10::text[], $11::bigint[], $12::bigint[]) \
                     ON CONFLICT (user_id, device_id) DO UPDATE \
                     SET seq = GREATEST(device_cursors.seq, EXCLUDED.seq), updated_ms = EXCLUDED.updated_ms), \
             rcur AS (INSERT INTO room_cursors (user_id, device_id, room, seq, updated_ms) \
                      SELECT * FROM unnest($13::text[], $14::text[], $15::text[], $16::bigint[], $17::bigint[]) \
                      ON CONFLICT (user_id, device_id, room) DO UPDATE \
                      SET seq = GREATEST(room_cursors.seq, EXCLUDED.seq), updated_ms = EXCLUDED.updated_ms) \
             SELECT id, sender_seq, to_seq FROM ins",
        )
        .bind(batch.iter().map(|m| to_i64(m.msg_id)).collect::<Vec<_>>())
        .bind(&senders)
        .bind(batch.iter().map(|m| m.sender_device.as_str()).collect::<Vec<_>>())
        .bind(&ids)
        .bind(batch.iter().map(|m| m.to.id.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|m| to_i64(m.ts)).collect::<Vec<_>>())
        .bind(batch.iter().map(|m| m.content_type.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|m| m.payload.as_slice()).collect::<Vec<_>>())
        .bind(inbox.iter().map(|c| c.user.as_str()).collect::<Vec<_>>())
        .bind(inbox.iter().map(|c| c.device_id.as_str()).collect::<Vec<_>>())
        .bind(inbox.iter().map(|c| to_i64(c.seq)).collect::<Vec<_>>())
        .bind(inbox.iter().map(|c| to_i64(c.at_ms)).collect::<Vec<_>>())
        .bind(rooms.iter().map(|c| c.user.as_str()).collect::<Vec<_>>())
        .bind(rooms.iter().map(|c| c.device_id.as_str()).collect::<Vec<_>>())
        .bind(rooms.iter().map(|c| c.room.as_deref().unwrap_or_default()).collect::<Vec<_>>())
        .bind(rooms.iter().map(|c| to_i64(c.seq)).collect::<Vec<_>>())
        .bind(rooms.iter().map(|c| to_i64(c.at_ms)).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await?;
        faults.check(FaultStep::Fsync)?;
        let mut seqs: HashMap<i64, (u64, u64)> = HashMap::with_capacity(rows.len());
        for r in &rows {
            seqs.insert(r.try_get(0)?, (to_u64(r.try_get(1)?, "seq")?, to_u64(r.try_get(2)?, "seq")?));
        }
        if seqs.len() != batch.len() {
            return Err(StoreError::Corrupt(format!("{} of {} rows written", seqs.len(), batch.len())));
        }
        let mut results = Vec::with_capacity(batch.len());
        for m in batch {
            let (sender_seq, to_seq) = seqs
                .get(&to_i64(m.msg_id))
                .copied()
                .ok_or_else(|| StoreError::Corrupt(format!("message {} not written", m.msg_id)))?;
            let mut recipients = vec![(m.sender.clone(), sender_seq)];
            if m.to.id != m.sender {
                recipients.push((m.to.id.clone(), to_seq));
            }
            results.push(Ok(Appended { msg: Arc::new(m.clone()), sender_seq, recipients, duplicate: false }));
        }
        Ok(Some(results))
    }

    /// Moves cursors forward (never back), the highest per device (and room), in key order.
    async fn write_cursors(
        tx: &mut Transaction<'static, Postgres>,
        cursors: &[CursorUpdate],
    ) -> Result<(), StoreError> {
        let (inbox, rooms) = coalesce_cursors(cursors);
        if !inbox.is_empty() {
            sqlx::query(
                "INSERT INTO device_cursors (user_id, device_id, seq, updated_ms) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) \
                 ON CONFLICT (user_id, device_id) DO UPDATE \
                 SET seq = GREATEST(device_cursors.seq, EXCLUDED.seq), updated_ms = EXCLUDED.updated_ms",
            )
            .bind(inbox.iter().map(|c| c.user.as_str()).collect::<Vec<_>>())
            .bind(inbox.iter().map(|c| c.device_id.as_str()).collect::<Vec<_>>())
            .bind(inbox.iter().map(|c| to_i64(c.seq)).collect::<Vec<_>>())
            .bind(inbox.iter().map(|c| to_i64(c.at_ms)).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await?;
        }
        if !rooms.is_empty() {
            sqlx::query(
                "INSERT INTO room_cursors (user_id, device_id, room, seq, updated_ms) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[]) \
                 ON CONFLICT (user_id, device_id, room) DO UPDATE \
                 SET seq = GREATEST(room_cursors.seq, EXCLUDED.seq), updated_ms = EXCLUDED.updated_ms",
            )
            .bind(rooms.iter().map(|c| c.user.as_str()).collect::<Vec<_>>())
            .bind(rooms.iter().map(|c| c.device_id.as_str()).collect::<Vec<_>>())
            .bind(rooms.iter().map(|c| c.room.as_deref().unwrap_or_default()).collect::<Vec<_>>())
            .bind(rooms.iter().map(|c| to_i64(c.seq)).collect::<Vec<_>>())
            .bind(rooms.iter().map(|c| to_i64(c.at_ms)).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Store for PgStore {
    async fn append(
        &self,
        batch: Vec<NewMessage>,
        cursors: Vec<CursorUpdate>,
    ) -> Result<Vec<Result<Appended, Refusal>>, StoreError> {
        self.write("append", || self.try_append(&batch, &cursors)).await
    }

    async fn fetch_inbox(
        &self,
        user: &str,
        after: u64,
        until: Option<u64>,
        limit: u32,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        let sql = format!(
            "SELECT * FROM ( \
               (SELECT {MESSAGE_COLS}, m.sender_seq AS seq FROM messages m \
                 WHERE m.sender = $1 AND m.sender_seq > $2 AND m.sender_seq <= $3 ORDER BY m.sender_seq LIMIT $4) \
               UNION ALL \
               (SELECT {MESSAGE_COLS}, m.to_seq AS seq FROM messages m \
                 WHERE m.to_kind = 'user' AND m.to_id = $1 AND m.to_seq > $2 AND m.to_seq <= $3 AND m.sender <> $1 \
                 ORDER BY m.to_seq LIMIT $4) \
             ) AS inbox ORDER BY seq LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user)
            .bind(to_i64(after))
            .bind(until.map(to_i64).unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(InboxEntry { seq: to_u64(r.try_get(9)?, "seq")?, msg: Arc::new(message_from_row(r, 0)?) }))
            .collect()
    }

    async fn inbox_head(&self, user: &str) -> Result<u64, StoreError> {
        let h: Option<i64> = sqlx::query_scalar("SELECT head FROM inbox_heads WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        h.map(|h| to_u64(h, "inbox head")).transpose().map(Option::unwrap_or_default)
    }

    async fn device_cursor(&self, user: &str, device_id: &str) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT seq FROM device_cursors WHERE user_id = $1 AND device_id = $2")
            .bind(user)
            .bind(device_id)
            .fetch_optional(&self.pool)
            .await?;
        v.map(|v| to_u64(v, "cursor")).transpose()
    }

    async fn create_ticket(&self, hash: &str, user: &str, expires_ms: u64) -> Result<(), StoreError> {
        self.write("create_ticket", || async {
            let mut tx = self.begin().await?;
            // Expired tickets go with each new one, so unused tickets cannot pile up.
            sqlx::query("DELETE FROM tickets WHERE expires_ms < $1")
                .bind(to_i64(crate::ids::now_ms()))
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO tickets (hash, user_id, expires_ms) VALUES ($1, $2, $3)")
                .bind(hash)
                .bind(user)
                .bind(to_i64(expires_ms))
                .execute(&mut *tx)
                .await?;
            self.commit(tx).await
        })
        .await
    }

    async fn consume_ticket(&self, hash: &str, now_ms: u64) -> Result<TicketUse, StoreError> {
        // One statement: of concurrent logins with the same ticket (on any node), exactly one
        // gets the row; the login goes ahead only after the removal is committed.
        let row = self
            .write("consume_ticket", || async {
                let mut tx = self.begin().await?;
                let row = sqlx::query("DELETE FROM tickets WHERE hash = $1 RETURNING user_id, expires_ms")
                    .bind(hash)
                    .fetch_optional(&mut *tx)
                    .await?;
                self.commit(tx).await?;
                Ok(row)
            })
            .await?;
        let Some(row) = row else {
            return Ok(TicketUse::Invalid);
        };
        let user: String = row.try_get(0)?;
        let expires = to_u64(row.try_get(1)?, "expires_ms")?;
        Ok(if expires <= now_ms { TicketUse::Expired } else { TicketUse::Valid(user) })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.ping().await?;
        if self.writer_ok() {
            return Ok(());
        }
        let pad = vec![0u8; tether_proto::DEFAULT_MAX_FRAME as usize];
        self.write("probe", || async {
            let mut tx = self.begin().await?;
            sqlx::query(
                "INSERT INTO writer_probe (node, at_ms, pad) VALUES ($1, $2, $3) \
                 ON CONFLICT (node) DO UPDATE SET at_ms = EXCLUDED.at_ms, pad = EXCLUDED.pad",
            )
            .bind(&self.node)
            .bind(to_i64(crate::ids::now_ms()))
            .bind(&pad)
            .execute(&mut *tx)
            .await?;
            self.commit(tx).await
        })
        .await
    }

    async fn set_cursor(&self, user: &str, device_id: &str, room: Option<&str>, seq: u64) -> Result<(), StoreError> {
        self.write("set_cursor", || async {
            let mut tx = self.begin().await?;
            let now = to_i64(crate::ids::now_ms());
            match room {
                None => sqlx::query(
                    "INSERT INTO device_cursors (user_id, device_id, seq, updated_ms) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (user_id, device_id) DO UPDATE SET seq = EXCLUDED.seq, updated_ms = EXCLUDED.updated_ms",
                )
                .bind(user)
                .bind(device_id)
                .bind(to_i64(seq))
                .bind(now)
                .execute(&mut *tx)
                .await?,
                Some(room) => sqlx::query(
                    "INSERT INTO room_cursors (user_id, device_id, room, seq, updated_ms) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (user_id, device_id, room) DO UPDATE SET seq = EXCLUDED.seq, updated_ms = EXCLUDED.updated_ms",
                )
                .bind(user)
                .bind(device_id)
                .bind(room)
                .bind(to_i64(seq))
                .bind(now)
                .execute(&mut *tx)
                .await?,
            };
            self.commit(tx).await
        })
        .await
    }

    async fn count_from(&self, sender: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE sender = $1")
            .bind(sender)
            .fetch_one(&self.pool)
            .await?;
        to_u64(n, "count")
    }

    async fn create_room(&self, room: &str, now_ms: u64) -> Result<bool, StoreError> {
        self.write("create_room", || async {
            let mut tx = self.begin().await?;
            let r = sqlx::query(
                "INSERT INTO rooms (room, created_ms, head) VALUES ($1, $2, 0) ON CONFLICT (room) DO NOTHING",
            )
            .bind(room)
            .bind(to_i64(now_ms))
            .execute(&mut *tx)
            .await?;
            self.commit(tx).await?;
            Ok(r.rows_affected() == 1)
        })
        .await
    }

    async fn delete_room(&self, room: &str) -> Result<bool, StoreError> {
        self.write("delete_room", || async {
            let mut tx = self.begin().await?;
            let existed =
                sqlx::query("DELETE FROM rooms WHERE room = $1").bind(room).execute(&mut *tx).await?.rows_affected();
            for sql in [
                "DELETE FROM room_members WHERE room = $1",
                "DELETE FROM room_log WHERE room = $1",
                "DELETE FROM room_cursors WHERE room = $1",
            ] {
                sqlx::query(sql).bind(room).execute(&mut *tx).await?;
            }
            self.commit(tx).await?;
            Ok(existed == 1)
        })
        .await
    }

    async fn room_head(&self, room: &str) -> Result<Option<u64>, StoreError> {
        let h: Option<i64> =
            sqlx::query_scalar("SELECT head FROM rooms WHERE room = $1").bind(room).fetch_optional(&self.pool).await?;
        h.map(|h| to_u64(h, "room head")).transpose()
    }

    async fn add_member(&self, room: &str, user: &str, now_ms: u64) -> Result<bool, StoreError> {
        self.write("add_member", || async {
            let mut tx = self.begin().await?;
            let r = sqlx::query(
                "INSERT INTO room_members (room, user_id, joined_ms) VALUES ($1, $2, $3) ON CONFLICT (room, user_id) DO NOTHING",
            )
            .bind(room)
            .bind(user)
            .bind(to_i64(now_ms))
            .execute(&mut *tx)
            .await?;
            self.commit(tx).await?;
            Ok(r.rows_affected() == 1)
        })
        .await
    }

    async fn remove_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        self.write("remove_member", || async {
            let mut tx = self.begin().await?;
            let r = sqlx::query("DELETE FROM room_members WHERE room = $1 AND user_id = $2")
                .bind(room)
                .bind(user)
                .execute(&mut *tx)
                .await?;
            // A later rejoin starts at the head, not where this membership left off.
            sqlx::query("DELETE FROM room_cursors WHERE room = $1 AND user_id = $2")
                .bind(room)
                .bind(user)
                .execute(&mut *tx)
                .await?;
            self.commit(tx).await?;
            Ok(r.rows_affected() == 1)
        })
        .await
    }

    async fn members(&self, room: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT user_id FROM room_members WHERE room = $1 ORDER BY user_id")
            .bind(room)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn rooms_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT room FROM room_members WHERE user_id = $1 ORDER BY room")
            .bind(user)
            .fetch_all(&self.pool)
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
            "SELECT {ROOM_COLS} FROM room_log l WHERE l.room = $1 AND l.seq > $2 AND l.seq <= $3 ORDER BY l.seq LIMIT $4"
        )))
        .bind(room)
        .bind(to_i64(after))
        .bind(until.map(to_i64).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let entries = rows
            .iter()
            .map(|r| room_message_from_row(r).map(|(seq, msg)| InboxEntry { seq, msg: Arc::new(msg) }))
            .collect::<Result<Vec<_>, _>>()?;
        let first: Option<i64> = sqlx::query_scalar(
            "SELECT coalesce((SELECT min(seq) FROM room_log WHERE room = $1), (SELECT head + 1 FROM rooms WHERE room = $1))",
        )
        .bind(room)
        .fetch_one(&self.pool)
        .await?;
        Ok((entries, first.map(|f| to_u64(f, "first seq")).transpose()?.unwrap_or(1)))
    }

    async fn room_cursor(&self, user: &str, device_id: &str, room: &str) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM room_cursors WHERE user_id = $1 AND device_id = $2 AND room = $3")
                .bind(user)
                .bind(device_id)
                .bind(room)
                .fetch_optional(&self.pool)
                .await?;
        v.map(|v| to_u64(v, "room cursor")).transpose()
    }

    async fn claim_node_id(&self, node_id: u16, instance: &str, ttl_ms: u64, now_ms: u64) -> Result<bool, StoreError> {
        // Taken when free, lapsed, or already ours; a row comes back only then.
        let row: Option<String> = sqlx::query_scalar(
            "INSERT INTO node_leases (node_id, instance, expires_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (node_id) DO UPDATE SET instance = EXCLUDED.instance, expires_ms = EXCLUDED.expires_ms \
             WHERE node_leases.instance = EXCLUDED.instance OR node_leases.expires_ms < $4 \
             RETURNING instance",
        )
        .bind(i32::from(node_id))
        .bind(instance)
        .bind(to_i64(now_ms.saturating_add(ttl_ms)))
        .bind(to_i64(now_ms))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn prune_rooms(&self, max_count: u64, min_ts_ms: u64) -> Result<u64, StoreError> {
        self.write("prune_rooms", || async {
            let mut tx = self.begin().await?;
            // One pruner at a time across nodes: a node that finds the lock taken skips its turn.
            let locked: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)").bind(PRUNE_LOCK).fetch_one(&mut *tx).await?;
            if !locked {
                return Ok(0);
            }
            let by_age =
                sqlx::query("DELETE FROM room_log WHERE ts < $1").bind(to_i64(min_ts_ms)).execute(&mut *tx).await?;
            let by_count =
                sqlx::query("DELETE FROM room_log l USING rooms r WHERE r.room = l.room AND l.seq + $1 <= r.head")
                    .bind(to_i64(max_count))
                    .execute(&mut *tx)
                    .await?;
            self.commit(tx).await?;
            Ok(by_age.rows_affected() + by_count.rows_affected())
        })
        .await
    }
}
