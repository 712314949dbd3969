//! MySQL 8 / MariaDB 10.6+ backend: the shared store in MySQL's dialect, with the same rules as
//! [`super::postgres`] (seqs allocated under head-row locks in the appending transaction, taken
//! in key order; dedup by lookup plus the unique indexes; conflicts retried inside the store;
//! tickets consumed under a row lock; one pruner at a time by a named lock).
//!
//! MySQL has no `RETURNING` and no arrays, so head rows are created if missing, read
//! `FOR UPDATE` and written back, and rows go in as multi-row `VALUES` lists. Connections run at
//! READ COMMITTED (no gap locks between nodes appending to different inboxes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlRow};
use sqlx::{Executor, MySql, MySqlPool, QueryBuilder, Row, Transaction};
use tether_proto::{Address, AddressKind};

use super::faults::FaultStep;
use super::postgres::{PoolSettings, MAX_ATTEMPTS};
use super::sqlite::StoreHooks;
use super::*;

/// Rows per multi-row statement (MySQL allows 65,535 placeholders per statement).
const CHUNK_ROWS: usize = 512;

/// `items` cut into full chunks and then powers of two, so that only a handful of statement
/// shapes exist and all stay prepared: a statement the cache evicts is closed and the next one
/// prepared, two writes before a read, which Nagle's algorithm and delayed ACKs turn into a
/// 40 ms stall (sqlx does not set TCP_NODELAY).
fn chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let left = items.len() - at;
        if left == 0 {
            return None;
        }
        let n = if left >= CHUNK_ROWS { CHUNK_ROWS } else { 1 << (usize::BITS - 1 - left.leading_zeros()) };
        let c = &items[at..at + n];
        at += n;
        Some(c)
    })
}

/// The MySQL / MariaDB store.
pub struct MySqlStore {
    pool: MySqlPool,
    hooks: StoreHooks,
    node: String,
    writer_ok: AtomicBool,
}

const MESSAGE_COLS: &str =
    "m.id, m.sender, m.sender_device, m.client_msg_id, m.to_kind, m.to_id, m.ts, m.content_type, m.payload";
const ROOM_COLS: &str =
    "l.room, l.seq, l.id, l.sender, l.sender_device, l.client_msg_id, l.ts, l.content_type, l.payload";

fn message_from_row(row: &MySqlRow, at: usize) -> Result<StoredMessage, StoreError> {
    Ok(StoredMessage {
        msg_id: to_u64(row.try_get(at)?, "msg id")?,
        sender: row.try_get(at + 1)?,
        sender_device: row.try_get(at + 2)?,
        client_msg_id: row.try_get(at + 3)?,
        to: Address { kind: kind_from(&row.try_get::<String, _>(at + 4)?)?, id: row.try_get(at + 5)? },
        ts: to_u64(row.try_get(at + 6)?, "ts")?,
        content_type: row.try_get(at + 7)?,
        payload: row.try_get(at + 8)?,
    })
}

fn room_message_from_row(row: &MySqlRow) -> Result<(u64, StoredMessage), StoreError> {
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

/// Deadlocks and serialization failures (SQLSTATE 40001) and duplicate keys (23000: a twin
/// committed by another node after this transaction looked) run the write again.
fn retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Db(sqlx::Error::Database(d)) => matches!(d.code().as_deref(), Some("40001" | "23000")),
        _ => false,
    }
}

type DedupKey = (String, String);

impl MySqlStore {
    /// Connects to `url` (`mysql://...`), applies the embedded migrations, refuses a newer
    /// schema.
    pub async fn open(url: &str, settings: &PoolSettings, hooks: StoreHooks) -> Result<Self, StoreError> {
        let opts = MySqlConnectOptions::from_str(url)?.charset("utf8mb4").statement_cache_capacity(512);
        let timeout_ms = settings.statement_timeout.as_millis();
        let pool = MySqlPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .min_connections(1)
            .acquire_timeout(settings.acquire_timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
                    // Lock waits bounded like statements (seconds, at least 1), and statements
                    // themselves: MariaDB's max_statement_time (seconds), else MySQL's
                    // max_execution_time (milliseconds, read-only statements).
                    let secs = (timeout_ms / 1000).max(1);
                    conn.execute(sqlx::AssertSqlSafe(format!("SET SESSION innodb_lock_wait_timeout = {secs}"))).await?;
                    let maria = format!("SET SESSION max_statement_time = {}", timeout_ms as f64 / 1000.0);
                    if conn.execute(sqlx::AssertSqlSafe(maria)).await.is_err() {
                        conn.execute(sqlx::AssertSqlSafe(format!("SET SESSION max_execution_time = {timeout_ms}")))
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/mysql").run(&pool).await?;
        hooks.metrics.store_writer_ready.set(1);
        let node = format!("{}-{}", std::process::id(), crate::ids::now_ms());
        Ok(MySqlStore { pool, hooks, node, writer_ok: AtomicBool::new(true) })
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn writer_ok(&self) -> bool {
        self.writer_ok.load(Ordering::SeqCst)
    }

    async fn write<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => {
                    if !self.writer_ok.swap(true, Ordering::SeqCst) {
                        tracing::info!("store writes succeed again");
                    }
                    self.hooks.metrics.store_writer_ready.set(1);
                    return Ok(v);
                }
                Err(e) if attempt < MAX_ATTEMPTS && retryable(&e) => {
                    self.hooks.metrics.store_retry(op);
                    let pause = Duration::from_micros(500 << attempt.min(6))
                        + Duration::from_micros(rand::random::<u64>() % 500);
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(e) => {
                    self.hooks.metrics.store_error(op);
                    self.hooks.metrics.store_writer_ready.set(0);
                    if self.writer_ok.swap(false, Ordering::SeqCst) {
                        tracing::warn!(op, error = %e, "store write failed");
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn begin(&self) -> Result<Transaction<'static, MySql>, StoreError> {
        self.hooks.faults.check(FaultStep::Begin)?;
        Ok(self.pool.begin().await?)
    }

    async fn commit(&self, tx: Transaction<'static, MySql>) -> Result<(), StoreError> {
        self.hooks.faults.check(FaultStep::Commit)?;
        tx.commit().await?;
        self.hooks.faults.check(FaultStep::Fsync)?;
        Ok(())
    }

    async fn lookup_existing(
        tx: &mut Transaction<'static, MySql>,
        batch: &[NewMessage],
    ) -> Result<HashMap<DedupKey, (Arc<StoredMessage>, u64)>, StoreError> {
        let mut existing = HashMap::new();
        for chunk in chunks(batch) {
            let mut q: QueryBuilder<MySql> = QueryBuilder::new("SELECT ");
            q.push(MESSAGE_COLS).push(", m.sender_seq FROM messages m WHERE (m.sender, m.client_msg_id) IN (");
            let mut sep = q.separated(", ");
            for m in chunk {
                sep.push("(").push_bind_unseparated(&m.sender).push_unseparated(", ");
                sep.push_bind_unseparated(&m.client_msg_id).push_unseparated(")");
            }
            q.push(")");
            for row in q.build().fetch_all(&mut **tx).await? {
                let msg = message_from_row(&row, 0)?;
                let seq = to_u64(row.try_get(9)?, "sender_seq")?;
                existing.insert((msg.sender.clone(), msg.client_msg_id.clone()), (Arc::new(msg), seq));
            }
            let mut q: QueryBuilder<MySql> = QueryBuilder::new("SELECT ");
            q.push(ROOM_COLS).push(" FROM room_log l WHERE (l.sender, l.client_msg_id) IN (");
            let mut sep = q.separated(", ");
            for m in chunk {
                sep.push("(").push_bind_unseparated(&m.sender).push_unseparated(", ");
                sep.push_bind_unseparated(&m.client_msg_id).push_unseparated(")");
            }
            q.push(")");
            for row in q.build().fetch_all(&mut **tx).await? {
                let (seq, msg) = room_message_from_row(&row)?;
                existing.insert((msg.sender.clone(), msg.client_msg_id.clone()), (Arc::new(msg), seq));
            }
        }
        Ok(existing)
    }

    /// Moves the head rows by the counts (in key order) and returns the first new seq of
    /// each; rooms that do not exist are left out.
    async fn allocate(
        tx: &mut Transaction<'static, MySql>,
        users: &BTreeMap<String, u64>,
        rooms: &BTreeMap<String, u64>,
    ) -> Result<(HashMap<String, u64>, HashMap<String, u64>), StoreError> {
        let mut user_next = HashMap::new();
        let names: Vec<&String> = users.keys().collect();
        for chunk in chunks(&names) {
            // One upsert for the batch's inboxes, rows in key order (the lock order), then one
            // read of the heads it left (this transaction's own writes).
            let mut q: QueryBuilder<MySql> = QueryBuilder::new("INSERT INTO inbox_heads (user_id, head) ");
            q.push_values(chunk, |mut b, u| {
                b.push_bind(*u).push_bind(to_i64(users.get(*u).copied().unwrap_or(0)));
            });
            q.push(" ON DUPLICATE KEY UPDATE head = head + VALUES(head)");
            q.build().execute(&mut **tx).await?;
            let mut q: QueryBuilder<MySql> =
                QueryBuilder::new("SELECT user_id, head FROM inbox_heads WHERE user_id IN (");
            let mut sep = q.separated(", ");
            for u in chunk {
                sep.push_bind(*u);
            }
            q.push(")");
            for row in q.build().fetch_all(&mut **tx).await? {
                let user: String = row.try_get(0)?;
                let head = to_u64(row.try_get(1)?, "inbox head")?;
                let n = users.get(&user).copied().unwrap_or(0);
                user_next.insert(user, head - n + 1);
            }
        }
        let mut room_next = HashMap::new();
        for (room, n) in rooms {
            let r = sqlx::query("UPDATE rooms SET head = head + ? WHERE room = ?")
                .bind(to_i64(*n))
                .bind(room)
                .execute(&mut **tx)
                .await?;
            if r.rows_affected() == 1 {
                let head: i64 =
                    sqlx::query_scalar("SELECT head FROM rooms WHERE room = ?").bind(room).fetch_one(&mut **tx).await?;
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
        let mut tx = self.begin().await?;
        let existing = Self::lookup_existing(&mut tx, batch).await?;
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
        let mut known = existing;
        let mut results = Vec::with_capacity(batch.len());
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
        for chunk in chunks(&fresh) {
            let mut q: QueryBuilder<MySql> = QueryBuilder::new(
                "INSERT INTO messages (id, sender, sender_device, client_msg_id, to_kind, to_id, sender_seq, to_seq, ts, content_type, payload) ",
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
            q.build().execute(&mut *tx).await?;
        }
        for chunk in chunks(&fresh_rooms) {
            let mut q: QueryBuilder<MySql> = QueryBuilder::new(
                "INSERT INTO room_log (room, seq, id, sender, sender_device, client_msg_id, ts, content_type, payload) ",
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
            q.build().execute(&mut *tx).await?;
        }
        self.hooks.faults.check(FaultStep::Insert)?;
        Self::write_cursors(&mut tx, cursors).await?;
        self.commit(tx).await?;
        Ok(results)
    }

    async fn write_cursors(tx: &mut Transaction<'static, MySql>, cursors: &[CursorUpdate]) -> Result<(), StoreError> {
        let (inbox, rooms) = coalesce_cursors(cursors);
        for chunk in chunks(&inbox) {
            let mut q: QueryBuilder<MySql> =
                QueryBuilder::new("INSERT INTO device_cursors (user_id, device_id, seq, updated_ms) ");
            q.push_values(chunk, |mut b, c| {
                b.push_bind(&c.user).push_bind(&c.device_id).push_bind(to_i64(c.seq)).push_bind(to_i64(c.at_ms));
            });
            q.push(" ON DUPLICATE KEY UPDATE updated_ms = IF(VALUES(seq) > seq, VALUES(updated_ms), updated_ms), seq = GREATEST(seq, VALUES(seq))");
            q.build().execute(&mut **tx).await?;
        }
        for chunk in chunks(&rooms) {
            let mut q: QueryBuilder<MySql> =
                QueryBuilder::new("INSERT INTO room_cursors (user_id, device_id, room, seq, updated_ms) ");
            q.push_values(chunk, |mut b, c| {
                b.push_bind(&c.user)
                    .push_bind(&c.device_id)
                    .push_bind(c.room.as_deref().unwrap_or_default())
                    .push_bind(to_i64(c.seq))
                    .push_bind(to_i64(c.at_ms));
            });
            q.push(" ON DUPLICATE KEY UPDATE updated_ms = IF(VALUES(seq) > seq, VALUES(updated_ms), updated_ms), seq = GREATEST(seq, VALUES(seq))");
            q.build().execute(&mut **tx).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Store for MySqlStore {
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
                 WHERE m.sender = ? AND m.sender_seq > ? AND m.sender_seq <= ? ORDER BY m.sender_seq LIMIT ?) \
               UNION ALL \
               (SELECT {MESSAGE_COLS}, m.to_seq AS seq FROM messages m \
                 WHERE m.to_id = ? AND m.to_seq > ? AND m.to_seq <= ? AND m.sender <> ? ORDER BY m.to_seq LIMIT ?) \
             ) AS inbox ORDER BY seq LIMIT ?"
        );
        let (after, until, limit) = (to_i64(after), until.map(to_i64).unwrap_or(i64::MAX), i64::from(limit));
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user)
            .bind(after)
            .bind(until)
            .bind(limit)
            .bind(user)
            .bind(after)
            .bind(until)
            .bind(user)
            .bind(limit)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(InboxEntry { seq: to_u64(r.try_get(9)?, "seq")?, msg: Arc::new(message_from_row(r, 0)?) }))
            .collect()
    }

    async fn inbox_head(&self, user: &str) -> Result<u64, StoreError> {
        let h: Option<i64> = sqlx::query_scalar("SELECT head FROM inbox_heads WHERE user_id = ?")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        h.map(|h| to_u64(h, "inbox head")).transpose().map(Option::unwrap_or_default)
    }

    async fn device_cursor(&self, user: &str, device_id: &str) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT seq FROM device_cursors WHERE user_id = ? AND device_id = ?")
            .bind(user)
            .bind(device_id)
            .fetch_optional(&self.pool)
            .await?;
        v.map(|v| to_u64(v, "cursor")).transpose()
    }

    async fn create_ticket(&self, hash: &str, user: &str, expires_ms: u64) -> Result<(), StoreError> {
        self.write("create_ticket", || async {
            let mut tx = self.begin().await?;
            sqlx::query("DELETE FROM tickets WHERE expires_ms < ?")
                .bind(to_i64(crate::ids::now_ms()))
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO tickets (hash, user_id, expires_ms) VALUES (?, ?, ?)")
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
        // The row lock makes concurrent logins with one ticket (on any node) take turns; the
        // second finds it gone.
        let row = self
            .write("consume_ticket", || async {
                let mut tx = self.begin().await?;
                let row = sqlx::query("SELECT user_id, expires_ms FROM tickets WHERE hash = ? FOR UPDATE")
                    .bind(hash)
                    .fetch_optional(&mut *tx)
                    .await?;
                let row = match row {
                    Some(r) => Some((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)),
                    None => None,
                };
                if row.is_some() {
                    sqlx::query("DELETE FROM tickets WHERE hash = ?").bind(hash).execute(&mut *tx).await?;
                }
                self.commit(tx).await?;
                Ok(row)
            })
            .await?;
        let Some((user, expires)) = row else {
            return Ok(TicketUse::Invalid);
        };
        Ok(if to_u64(expires, "expires_ms")? <= now_ms { TicketUse::Expired } else { TicketUse::Valid(user) })
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
                "INSERT INTO writer_probe (node, at_ms, pad) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE at_ms = VALUES(at_ms), pad = VALUES(pad)",
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
                None => {
                    sqlx::query(
                        "INSERT INTO device_cursors (user_id, device_id, seq, updated_ms) VALUES (?, ?, ?, ?) \
                     ON DUPLICATE KEY UPDATE seq = VALUES(seq), updated_ms = VALUES(updated_ms)",
                    )
                    .bind(user)
                    .bind(device_id)
                    .bind(to_i64(seq))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                }
                Some(room) => {
                    sqlx::query(
                        "INSERT INTO room_cursors (user_id, device_id, room, seq, updated_ms) VALUES (?, ?, ?, ?, ?) \
                     ON DUPLICATE KEY UPDATE seq = VALUES(seq), updated_ms = VALUES(updated_ms)",
                    )
                    .bind(user)
                    .bind(device_id)
                    .bind(room)
                    .bind(to_i64(seq))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                }
            };
            self.commit(tx).await
        })
        .await
    }

    async fn count_from(&self, sender: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE sender = ?")
            .bind(sender)
            .fetch_one(&self.pool)
            .await?;
        to_u64(n, "count")
    }

    async fn create_room(&self, room: &str, now_ms: u64) -> Result<bool, StoreError> {
        self.write("create_room", || async {
            let mut tx = self.begin().await?;
            let r = sqlx::query("INSERT IGNORE INTO rooms (room, created_ms, head) VALUES (?, ?, 0)")
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
                sqlx::query("DELETE FROM rooms WHERE room = ?").bind(room).execute(&mut *tx).await?.rows_affected();
            for sql in [
                "DELETE FROM room_members WHERE room = ?",
                "DELETE FROM room_log WHERE room = ?",
                "DELETE FROM room_cursors WHERE room = ?",
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
            sqlx::query_scalar("SELECT head FROM rooms WHERE room = ?").bind(room).fetch_optional(&self.pool).await?;
        h.map(|h| to_u64(h, "room head")).transpose()
    }

    async fn add_member(&self, room: &str, user: &str, now_ms: u64) -> Result<bool, StoreError> {
        self.write("add_member", || async {
            let mut tx = self.begin().await?;
            let r = sqlx::query("INSERT IGNORE INTO room_members (room, user_id, joined_ms) VALUES (?, ?, ?)")
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
            let r = sqlx::query("DELETE FROM room_members WHERE room = ? AND user_id = ?")
                .bind(room)
                .bind(user)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM room_cursors WHERE room = ? AND user_id = ?")
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
        Ok(sqlx::query_scalar("SELECT user_id FROM room_members WHERE room = ? ORDER BY user_id")
            .bind(room)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn rooms_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT room FROM room_members WHERE user_id = ? ORDER BY room")
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
            "SELECT {ROOM_COLS} FROM room_log l WHERE l.room = ? AND l.seq > ? AND l.seq <= ? ORDER BY l.seq LIMIT ?"
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
            "SELECT coalesce((SELECT min(seq) FROM room_log WHERE room = ?), (SELECT head + 1 FROM rooms WHERE room = ?))",
        )
        .bind(room)
        .bind(room)
        .fetch_one(&self.pool)
        .await?;
        Ok((entries, first.map(|f| to_u64(f, "first seq")).transpose()?.unwrap_or(1)))
    }

    async fn room_cursor(&self, user: &str, device_id: &str, room: &str) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM room_cursors WHERE user_id = ? AND device_id = ? AND room = ?")
                .bind(user)
                .bind(device_id)
                .bind(room)
                .fetch_optional(&self.pool)
                .await?;
        v.map(|v| to_u64(v, "room cursor")).transpose()
    }

    async fn claim_node_id(&self, node_id: u16, instance: &str, ttl_ms: u64, now_ms: u64) -> Result<bool, StoreError> {
        // Taken when free, lapsed, or already ours (the row lock orders racing claims).
        let mut tx = self.pool.begin().await?;
        let holder: Option<(String, i64)> =
            sqlx::query_as("SELECT instance, expires_ms FROM node_leases WHERE node_id = ? FOR UPDATE")
                .bind(i32::from(node_id))
                .fetch_optional(&mut *tx)
                .await?;
        let free = match &holder {
            None => true,
            Some((who, expires)) => who == instance || *expires < to_i64(now_ms),
        };
        if free {
            sqlx::query(
                "INSERT INTO node_leases (node_id, instance, expires_ms) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE instance = VALUES(instance), expires_ms = VALUES(expires_ms)",
            )
            .bind(i32::from(node_id))
            .bind(instance)
            .bind(to_i64(now_ms.saturating_add(ttl_ms)))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(free)
    }

    async fn prune_rooms(&self, max_count: u64, min_ts_ms: u64) -> Result<u64, StoreError> {
        self.write("prune_rooms", || async {
            // A named lock on one connection: one pruner at a time across nodes.
            let mut conn = self.pool.acquire().await?;
            let locked: Option<i64> =
                sqlx::query_scalar("SELECT GET_LOCK('tether_prune', 0)").fetch_one(&mut *conn).await?;
            if locked != Some(1) {
                return Ok(0);
            }
            let res = async {
                let by_age = sqlx::query("DELETE FROM room_log WHERE ts < ?")
                    .bind(to_i64(min_ts_ms))
                    .execute(&mut *conn)
                    .await?;
                let by_count =
                    sqlx::query("DELETE l FROM room_log l JOIN rooms r ON r.room = l.room WHERE l.seq + ? <= r.head")
                        .bind(to_i64(max_count))
                        .execute(&mut *conn)
                        .await?;
                Ok::<u64, StoreError>(by_age.rows_affected() + by_count.rows_affected())
            }
            .await;
            sqlx::query("SELECT RELEASE_LOCK('tether_prune')").execute(&mut *conn).await?;
            res
        })
        .await
    }
}
