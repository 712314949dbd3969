//! SQLite backend: one file in the data dir, WAL mode, one writer connection for batched
//! appends and a small pool of readers.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use tether_proto::{Address, AddressKind};
use tokio::sync::Mutex;

use super::*;
use crate::config::StoreSync;

/// The SQLite store.
pub struct SqliteStore {
    /// The one writer connection (held directly, not through a pool: a pool's acquire and
    /// release cost up to milliseconds per batch under load) and the inbox heads it allocated.
    writer: Mutex<Option<Writer>>,
    readers: SqlitePool,
}

struct Writer {
    conn: SqliteConnection,
    /// Inbox heads known to the writer.
    heads: HashMap<String, u64>,
    /// Room log heads known to the writer.
    room_heads: HashMap<String, u64>,
}

/// Columns of a message row, in the order [`message_from_row`] reads them.
const MESSAGE_COLS: &str =
    "m.id, m.sender, m.sender_device, m.client_msg_id, m.to_kind, m.to_id, m.ts, m.content_type, m.payload";

fn to_i64(v: u64) -> i64 {
    // Values we write (snowflake ids, seqs, ms timestamps) are far below 2^63.
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what}: {v}")))
}

fn kind_str(k: AddressKind) -> &'static str {
    match k {
        AddressKind::User => "user",
        AddressKind::Room => "room",
    }
}

fn kind_from(s: &str) -> Result<AddressKind, StoreError> {
    match s {
        "user" => Ok(AddressKind::User),
        "room" => Ok(AddressKind::Room),
        other => Err(StoreError::Corrupt(format!("address kind {other}"))),
    }
}

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

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` and applies migrations.
    pub async fn open(url: &str, sync: StoreSync) -> Result<Self, StoreError> {
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
            .connect_with(opts)
            .await?;
        let checkpointer = readers.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                if checkpointer.is_closed() {
                    return;
                }
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&checkpointer).await {
                    tracing::debug!(error = %e, "background checkpoint failed");
                }
            }
        });
        Ok(SqliteStore {
            writer: Mutex::new(Some(Writer { conn, heads: HashMap::new(), room_heads: HashMap::new() })),
            readers,
        })
    }

    /// Closes the writer and the readers.
    pub async fn close(&self) {
        if let Some(w) = self.writer.lock().await.take() {
            let _ = w.conn.close().await;
        }
        self.readers.close().await;
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
        let mut guard = self.writer.lock().await;
        let Writer { conn, heads, room_heads } = guard.as_mut().ok_or(StoreError::Closed)?;
        let mut tx = conn.begin().await?;

        // Optimistic path: retries are rare, so plan as if nothing of the batch were stored and
        // let the unique indexes tell. If any row was a duplicate, roll the transaction back and
        // plan again knowing which ones (seqs must stay gapless). A whole-transaction rollback
        // rather than a savepoint: with a savepoint open SQLite copies every page it touches
        // to a sub-journal first, which cost a quarter of the writer's time.
        let mut plan = Self::plan(&mut tx, heads, room_heads, &batch, HashMap::new()).await?;
        if !Self::insert_plan(&mut tx, &plan).await? {
            tx.rollback().await?;
            tx = conn.begin().await?;
            let existing = Self::lookup_existing(&mut tx, &batch).await?;
            plan = Self::plan(&mut tx, heads, room_heads, &batch, existing).await?;
            if !Self::insert_plan(&mut tx, &plan).await? {
                return Err(StoreError::Corrupt("duplicate appeared during an append".into()));
            }
        }
        for (room, head) in &plan.new_room_heads {
            sqlx::query("UPDATE rooms SET head = ? WHERE room = ?")
                .bind(to_i64(*head))
                .bind(room)
                .execute(&mut *tx)
                .await?;
        }

        // Coalesce cursor updates: the highest per device (and room).
        let mut best: HashMap<(&str, &str, Option<&str>), &CursorUpdate> = HashMap::new();
        for c in &cursors {
            let e = best.entry((&c.user, &c.device_id, c.room.as_deref())).or_insert(c);
            if c.seq > e.seq {
                *e = c;
            }
        }
        let (inbox, rooms): (Vec<&CursorUpdate>, Vec<&CursorUpdate>) =
            best.into_values().partition(|c| c.room.is_none());
        for chunk in chunks(&inbox) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO device_cursors (user, device_id, seq, updated_ms) ");
            q.push_values(chunk, |mut b, c| {
                b.push_bind(&c.user).push_bind(&c.device_id).push_bind(to_i64(c.seq)).push_bind(to_i64(c.at_ms));
            });
            q.push(
                " ON CONFLICT (user, device_id) DO UPDATE SET seq = max(seq, excluded.seq), updated_ms = excluded.updated_ms",
            );
            q.build().execute(&mut *tx).await?;
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
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        if heads.len() > 1_000_000 {
            heads.clear();
        }
        heads.extend(plan.new_heads);
        if room_heads.len() > 1_000_000 {
            room_heads.clear();
        }
        room_heads.extend(plan.new_room_heads);
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
        sqlx::query("INSERT INTO tickets (hash, user, expires_ms) VALUES (?, ?, ?)")
            .bind(hash)
            .bind(user)
            .bind(to_i64(expires_ms))
            .execute(&self.readers)
            .await?;
        Ok(())
    }

    async fn consume_ticket(&self, hash: &str, now_ms: u64) -> Result<TicketUse, StoreError> {
        let row = sqlx::query("DELETE FROM tickets WHERE hash = ? RETURNING user, expires_ms")
            .bind(hash)
            .fetch_optional(&self.readers)
            .await?;
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

    async fn count_from(&self, sender: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE sender = ?")
            .bind(sender)
            .fetch_one(&self.readers)
            .await?;
        to_u64(n, "count")
    }

    async fn create_room(&self, room: &str, now_ms: u64) -> Result<bool, StoreError> {
        let mut guard = self.writer.lock().await;
        let w = guard.as_mut().ok_or(StoreError::Closed)?;
        let r = sqlx::query("INSERT OR IGNORE INTO rooms (room, created_ms, head) VALUES (?, ?, 0)")
            .bind(room)
            .bind(to_i64(now_ms))
            .execute(&mut w.conn)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn delete_room(&self, room: &str) -> Result<bool, StoreError> {
        let mut guard = self.writer.lock().await;
        let w = guard.as_mut().ok_or(StoreError::Closed)?;
        let mut tx = w.conn.begin().await?;
        let existed =
            sqlx::query("DELETE FROM rooms WHERE room = ?").bind(room).execute(&mut *tx).await?.rows_affected();
        for sql in [
            "DELETE FROM room_members WHERE room = ?",
            "DELETE FROM room_log WHERE room = ?",
            "DELETE FROM room_cursors WHERE room = ?",
        ] {
            sqlx::query(sql).bind(room).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        w.room_heads.remove(room);
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
        let mut guard = self.writer.lock().await;
        let w = guard.as_mut().ok_or(StoreError::Closed)?;
        let r = sqlx::query("INSERT OR IGNORE INTO room_members (room, user, joined_ms) VALUES (?, ?, ?)")
            .bind(room)
            .bind(user)
            .bind(to_i64(now_ms))
            .execute(&mut w.conn)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn remove_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        let mut guard = self.writer.lock().await;
        let w = guard.as_mut().ok_or(StoreError::Closed)?;
        let mut tx = w.conn.begin().await?;
        let r = sqlx::query("DELETE FROM room_members WHERE room = ? AND user = ?")
            .bind(room)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        // A later rejoin starts at the head, not where this membership left off.
        sqlx::query("DELETE FROM room_cursors WHERE room = ? AND user = ?")
            .bind(room)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
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
        let mut guard = self.writer.lock().await;
        let w = guard.as_mut().ok_or(StoreError::Closed)?;
        let by_age =
            sqlx::query("DELETE FROM room_log WHERE ts < ?").bind(to_i64(min_ts_ms)).execute(&mut w.conn).await?;
        let by_count = sqlx::query(
            "DELETE FROM room_log WHERE (room, seq) IN \
             (SELECT l.room, l.seq FROM room_log l JOIN rooms r ON r.room = l.room WHERE l.seq + ? <= r.head)",
        )
        .bind(to_i64(max_count))
        .execute(&mut w.conn)
        .await?;
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
        s.create_ticket("h1", "alice", 2000).await.unwrap();
        s.create_ticket("h2", "bob", 2000).await.unwrap();
        assert_eq!(s.consume_ticket("h1", 1000).await.unwrap(), TicketUse::Valid("alice".into()));
        assert_eq!(s.consume_ticket("h1", 1000).await.unwrap(), TicketUse::Invalid);
        assert_eq!(s.consume_ticket("h2", 3000).await.unwrap(), TicketUse::Expired);
        assert_eq!(s.consume_ticket("nope", 0).await.unwrap(), TicketUse::Invalid);
    }
}
