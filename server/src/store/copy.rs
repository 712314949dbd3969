//! `tether-server store copy`: moves an embedded node's SQLite data into a shared database.
//!
//! Copies rooms, members, messages (with the inbox heads they imply), room logs, device and
//! room cursors and tickets. Idempotent and resumable: every row is written with
//! `ON CONFLICT DO NOTHING` (cursors and heads only move forward), messages and room log entries
//! go in id order in committed chunks and a new run starts after the highest id the target
//! already has, so a copy that was interrupted (or run while the node still took traffic) is
//! finished by running it again. Run the last pass with the node stopped.

use std::collections::HashMap;
use std::str::FromStr;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{PgPool, Row, SqlitePool};

use super::postgres::{PgStore, PoolSettings};
use super::sqlite::{SqliteStore, StoreHooks};
use super::StoreError;
use crate::config::StoreSync;

/// Why a copy could not run.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source or target URL is not one this command copies between.
    #[error("{0}")]
    Unsupported(String),
    /// Reading or writing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for CopyError {
    fn from(e: sqlx::Error) -> Self {
        CopyError::Store(StoreError::Db(e))
    }
}

/// Rows written to the target by one run (rows already there are not counted).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Rooms.
    pub rooms: u64,
    /// Room memberships.
    pub members: u64,
    /// Messages to users.
    pub messages: u64,
    /// Room log entries.
    pub room_log: u64,
    /// Device and room cursors created or moved forward.
    pub cursors: u64,
    /// Tickets.
    pub tickets: u64,
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

/// Copies `from` (`log://...` or `sqlite://...`) into `to` (`postgres://...` or `mysql://...`), `chunk` rows per transaction.
/// `progress(table, done, total)` is called after every chunk.
pub async fn copy(
    from: &str,
    to: &str,
    chunk: u32,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<CopyReport, CopyError> {
    if let Some(dir) = super::log::dir_of(from) {
        // The log store is exported into a SQLite file next to it first, then copied from there.
        let export = dir.with_extension("export.db");
        let _ = std::fs::remove_file(&export);
        let url = format!("sqlite://{}", export.display());
        progress("export", 0, 1);
        super::log::export::export_sqlite(&dir, &url).await?;
        progress("export", 1, 1);
        let report = Box::pin(copy(&url, to, chunk, progress)).await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", export.display()));
        }
        return report;
    }
    if !from.starts_with("sqlite:") {
        return Err(CopyError::Unsupported(format!(
            "copy from `{from}`: the source must be a log:// or sqlite:// URL"
        )));
    }
    let mysql = to.starts_with("mysql:") || to.starts_with("mariadb:");
    if !(to.starts_with("postgres:") || to.starts_with("postgresql:") || mysql) {
        return Err(CopyError::Unsupported("copy to: the target must be a postgres:// or mysql:// URL".into()));
    }
    // Both schemas at this build's version (an older node's file is migrated first).
    SqliteStore::open(from, StoreSync::Full).await?.close().await;
    let src = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::from_str(from)?.read_only(true))
        .await?;
    let chunk = i64::from(chunk.max(1));
    if mysql {
        let to = to.replacen("mariadb:", "mysql:", 1);
        super::mysql::MySqlStore::open(&to, &PoolSettings::default(), StoreHooks::default()).await?.close().await;
        let dst = sqlx::mysql::MySqlPoolOptions::new().max_connections(2).connect(&to).await?;
        let report = copy_to_mysql(&src, &dst, chunk, progress).await;
        src.close().await;
        dst.close().await;
        return report;
    }
    PgStore::open(to, &PoolSettings::default(), StoreHooks::default()).await?.close().await;
    let dst = PgPoolOptions::new().max_connections(2).connect(to).await?;

    let mut report = CopyReport {
        messages: copy_messages(&src, &dst, chunk, progress).await?,
        room_log: copy_room_log(&src, &dst, chunk, progress).await?,
        ..Default::default()
    };

    // Rooms after their logs, so a room's head is never below its copied log (heads only move
    // forward), and members.
    let rows = sqlx::query("SELECT room, created_ms, head FROM rooms").fetch_all(&src).await?;
    let total = rows.len() as u64;
    for (i, part) in rows.chunks(chunk as usize).enumerate() {
        let r = sqlx::query(
            "INSERT INTO rooms (room, created_ms, head) SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) \
             ON CONFLICT (room) DO UPDATE SET head = GREATEST(rooms.head, EXCLUDED.head) WHERE rooms.head < EXCLUDED.head",
        )
        .bind(part.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<Vec<_>, _>>()?)
        .bind(part.iter().map(|r| r.try_get::<i64, _>(1)).collect::<Result<Vec<_>, _>>()?)
        .bind(part.iter().map(|r| r.try_get::<i64, _>(2)).collect::<Result<Vec<_>, _>>()?)
        .execute(&dst)
        .await?;
        report.rooms += r.rows_affected();
        progress("rooms", ((i + 1) * part.len()).min(rows.len()) as u64, total);
    }
    let rows = sqlx::query("SELECT room, user, joined_ms FROM room_members").fetch_all(&src).await?;
    let total = rows.len() as u64;
    let mut done = 0;
    for part in rows.chunks(chunk as usize) {
        let r = sqlx::query(
            "INSERT INTO room_members (room, user_id, joined_ms) SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(part.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<Vec<_>, _>>()?)
        .bind(part.iter().map(|r| r.try_get::<String, _>(1)).collect::<Result<Vec<_>, _>>()?)
        .bind(part.iter().map(|r| r.try_get::<i64, _>(2)).collect::<Result<Vec<_>, _>>()?)
        .execute(&dst)
        .await?;
        report.members += r.rows_affected();
        done += part.len() as u64;
        progress("members", done, total);
    }

    // Cursors: only forward.
    let rows = sqlx::query("SELECT user, device_id, seq, updated_ms FROM device_cursors").fetch_all(&src).await?;
    let total = rows.len() as u64;
    let mut done = 0;
    for part in rows.chunks(chunk as usize) {
        let r = sqlx::query(
            "INSERT INTO device_cursors (user_id, device_id, seq, updated_ms) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) \
             ON CONFLICT (user_id, device_id) DO UPDATE SET seq = EXCLUDED.seq, updated_ms = EXCLUDED.updated_ms \
             WHERE device_cursors.seq < EXCLUDED.seq",
        )
        .bind(part.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<Vec<_>, _>>()?)
        .bind(part.iter().map(|r| r.try_get::<String, _>(1)).collect::<Result<Vec<_>, _>>()?)
        .bind(part.iter().map(|r| r.try_get::<i64, _>(2)).collect::<Result<Vec<_>, _>>()?)
        .bind(part.iter().map(|r| r.try_get::<i64, _>(3)).collect::<Result<Vec<_>, _>>()?)
        .execute(&dst)
        .await?;
        report.cursors += r.rows_affected();
        done += part.len() as u64;
        progress("device cursors", done, total);
    }
    let rows = sqlx::query("SELECT user, device_id, room, seq, updated_ms FROM room_cursors").fetch_all(&src).await?;
    let total = rows.len() as u64;
    let mut done = 0;
    for part in rows.chunks(chunk as usize) {
        let r = sqlx::query(
            "INSERT INTO room_cursors (user_id, device_id, room, seq, updated_ms) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[]) \
             ON CONFLICT (user_id, device_id, room) DO UPDATE SET seq = EXCLUDED.seq, updated_ms = EXCLUDED.updated_ms \
             WHERE room_cursors.seq < EXCLUDED.seq",
        )
        .bind(part.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<Vec<_>, _>>()?)
        .bind(part.iter().map(|r| r.try_get::<String, _>(1)).collect::<Result<Vec<_>, _>>()?)
        .bind(part.iter().map(|r| r.try_get::<String, _>(2)).collect::<Result<Vec<_>, _>>()?)
        .bind(part.iter().map(|r| r.try_get::<i64, _>(3)).collect::<Result<Vec<_>, _>>()?)
        .bind(part.iter().map(|r| r.try_get::<i64, _>(4)).collect::<Result<Vec<_>, _>>()?)
        .execute(&dst)
        .await?;
        report.cursors += r.rows_affected();
        done += part.len() as u64;
        progress("room cursors", done, total);
    }
    let rows = sqlx::query("SELECT hash, user, expires_ms FROM tickets").fetch_all(&src).await?;
    let total = rows.len() as u64;
    let mut done = 0;
    for part in rows.chunks(chunk as usize) {
        let r = sqlx::query(
            "INSERT INTO tickets (hash, user_id, expires_ms) SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(part.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<Vec<_>, _>>()?)
        .bind(part.iter().map(|r| r.try_get::<String, _>(1)).collect::<Result<Vec<_>, _>>()?)
        .bind(part.iter().map(|r| r.try_get::<i64, _>(2)).collect::<Result<Vec<_>, _>>()?)
        .execute(&dst)
        .await?;
        report.tickets += r.rows_affected();
        done += part.len() as u64;
        progress("tickets", done, total);
    }
    src.close().await;
    dst.close().await;
    Ok(report)
}

/// Messages to users, in id order from after the highest id the target has; each chunk commits
/// with the inbox heads it implies.
async fn copy_messages(
    src: &SqlitePool,
    dst: &PgPool,
    chunk: i64,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<u64, CopyError> {
    let total = to_u64(sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(src).await?);
    let mut after: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM messages").fetch_one(dst).await?;
    let mut done =
        to_u64(sqlx::query_scalar("SELECT count(*) FROM messages WHERE id <= ?").bind(after).fetch_one(src).await?);
    let mut inserted = 0;
    loop {
        let rows = sqlx::query(
            "SELECT id, sender, sender_device, client_msg_id, to_kind, to_id, sender_seq, to_seq, ts, content_type, payload \
             FROM messages WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(chunk)
        .fetch_all(src)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get(0)?;
        let col_i = |i: usize| rows.iter().map(|r| r.try_get::<i64, _>(i)).collect::<Result<Vec<_>, _>>();
        let col_s = |i: usize| rows.iter().map(|r| r.try_get::<String, _>(i)).collect::<Result<Vec<_>, _>>();
        let payloads = rows.iter().map(|r| r.try_get::<Vec<u8>, _>(10)).collect::<Result<Vec<_>, _>>()?;
        let mut heads: HashMap<String, i64> = HashMap::new();
        for r in &rows {
            let (sender, sender_seq): (String, i64) = (r.try_get(1)?, r.try_get(6)?);
            let h = heads.entry(sender).or_default();
            *h = (*h).max(sender_seq);
            if r.try_get::<&str, _>(4)? == "user" {
                let (to, to_seq): (String, i64) = (r.try_get(5)?, r.try_get(7)?);
                let h = heads.entry(to).or_default();
                *h = (*h).max(to_seq);
            }
        }
        let mut heads: Vec<(String, i64)> = heads.into_iter().collect();
        heads.sort();
        let mut tx = dst.begin().await?;
        let r = sqlx::query(
            "INSERT INTO messages (id, sender, sender_device, client_msg_id, to_kind, to_id, sender_seq, to_seq, ts, content_type, payload) \
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                                  $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], $11::bytea[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(col_i(0)?)
        .bind(col_s(1)?)
        .bind(col_s(2)?)
        .bind(col_s(3)?)
        .bind(col_s(4)?)
        .bind(col_s(5)?)
        .bind(col_i(6)?)
        .bind(col_i(7)?)
        .bind(col_i(8)?)
        .bind(col_s(9)?)
        .bind(payloads)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO inbox_heads (user_id, head) SELECT * FROM unnest($1::text[], $2::bigint[]) \
             ON CONFLICT (user_id) DO UPDATE SET head = EXCLUDED.head WHERE inbox_heads.head < EXCLUDED.head",
        )
        .bind(heads.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>())
        .bind(heads.iter().map(|(_, h)| *h).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        inserted += r.rows_affected();
        done += rows.len() as u64;
        progress("messages", done, total);
    }
    Ok(inserted)
}

/// Room log entries, in id order from after the highest id the target's log has.
async fn copy_room_log(
    src: &SqlitePool,
    dst: &PgPool,
    chunk: i64,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<u64, CopyError> {
    let total = to_u64(sqlx::query_scalar("SELECT count(*) FROM room_log").fetch_one(src).await?);
    let mut after: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM room_log").fetch_one(dst).await?;
    let mut done =
        to_u64(sqlx::query_scalar("SELECT count(*) FROM room_log WHERE id <= ?").bind(after).fetch_one(src).await?);
    let mut inserted = 0;
    loop {
        let rows = sqlx::query(
            "SELECT room, seq, id, sender, sender_device, client_msg_id, ts, content_type, payload \
             FROM room_log WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(chunk)
        .fetch_all(src)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get(2)?;
        let col_i = |i: usize| rows.iter().map(|r| r.try_get::<i64, _>(i)).collect::<Result<Vec<_>, _>>();
        let col_s = |i: usize| rows.iter().map(|r| r.try_get::<String, _>(i)).collect::<Result<Vec<_>, _>>();
        let payloads = rows.iter().map(|r| r.try_get::<Vec<u8>, _>(8)).collect::<Result<Vec<_>, _>>()?;
        let r = sqlx::query(
            "INSERT INTO room_log (room, seq, id, sender, sender_device, client_msg_id, ts, content_type, payload) \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
                                  $7::bigint[], $8::text[], $9::bytea[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(col_s(0)?)
        .bind(col_i(1)?)
        .bind(col_i(2)?)
        .bind(col_s(3)?)
        .bind(col_s(4)?)
        .bind(col_s(5)?)
        .bind(col_i(6)?)
        .bind(col_s(7)?)
        .bind(payloads)
        .execute(dst)
        .await?;
        inserted += r.rows_affected();
        done += rows.len() as u64;
        progress("room log", done, total);
    }
    Ok(inserted)
}

/// The same copy into MySQL / MariaDB: multi-row `INSERT IGNORE` (rows already there are kept)
/// and `ON DUPLICATE KEY UPDATE ... GREATEST` (heads and cursors only move forward).
async fn copy_to_mysql(
    src: &SqlitePool,
    dst: &sqlx::MySqlPool,
    chunk: i64,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<CopyReport, CopyError> {
    use sqlx::{MySql, QueryBuilder};
    let chunk = chunk.clamp(1, 2000);
    let mut report = CopyReport::default();

    // Messages, with the inbox heads each chunk implies, in id order from the target's highest.
    let total = to_u64(sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(src).await?);
    let mut after: i64 =
        sqlx::query_scalar("SELECT CAST(coalesce(max(id), 0) AS SIGNED) FROM messages").fetch_one(dst).await?;
    let mut done =
        to_u64(sqlx::query_scalar("SELECT count(*) FROM messages WHERE id <= ?").bind(after).fetch_one(src).await?);
    loop {
        let rows = sqlx::query(
            "SELECT id, sender, sender_device, client_msg_id, to_kind, to_id, sender_seq, to_seq, ts, content_type, payload \
             FROM messages WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(chunk)
        .fetch_all(src)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get(0)?;
        let mut heads: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
        for r in &rows {
            let (sender, sender_seq): (String, i64) = (r.try_get(1)?, r.try_get(6)?);
            let h = heads.entry(sender).or_default();
            *h = (*h).max(sender_seq);
            if r.try_get::<&str, _>(4)? == "user" {
                let (to, to_seq): (String, i64) = (r.try_get(5)?, r.try_get(7)?);
                let h = heads.entry(to).or_default();
                *h = (*h).max(to_seq);
            }
        }
        let mut tx = dst.begin().await?;
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT IGNORE INTO messages (id, sender, sender_device, client_msg_id, to_kind, to_id, sender_seq, to_seq, ts, content_type, payload) ",
        );
        let mut bad = None;
        q.push_values(&rows, |mut b, r| {
            let cols = (|| -> Result<_, sqlx::Error> {
                Ok((
                    r.try_get::<i64, _>(0)?,
                    r.try_get::<String, _>(1)?,
                    r.try_get::<String, _>(2)?,
                    r.try_get::<String, _>(3)?,
                    r.try_get::<String, _>(4)?,
                    r.try_get::<String, _>(5)?,
                    r.try_get::<i64, _>(6)?,
                    r.try_get::<i64, _>(7)?,
                    r.try_get::<i64, _>(8)?,
                    r.try_get::<String, _>(9)?,
                    r.try_get::<Vec<u8>, _>(10)?,
                ))
            })();
            match cols {
                Ok(c) => {
                    b.push_bind(c.0).push_bind(c.1).push_bind(c.2).push_bind(c.3).push_bind(c.4).push_bind(c.5);
                    b.push_bind(c.6).push_bind(c.7).push_bind(c.8).push_bind(c.9).push_bind(c.10);
                }
                Err(e) => bad = Some(e),
            }
        });
        if let Some(e) = bad {
            return Err(e.into());
        }
        report.messages += q.build().execute(&mut *tx).await?.rows_affected();
        let mut q: QueryBuilder<MySql> = QueryBuilder::new("INSERT INTO inbox_heads (user_id, head) ");
        q.push_values(&heads, |mut b, (u, h)| {
            b.push_bind(u.as_str()).push_bind(*h);
        });
        q.push(" ON DUPLICATE KEY UPDATE head = GREATEST(head, VALUES(head))");
        q.build().execute(&mut *tx).await?;
        tx.commit().await?;
        done += rows.len() as u64;
        progress("messages", done, total);
    }

    // Room log entries, in id order from the target's highest.
    let total = to_u64(sqlx::query_scalar("SELECT count(*) FROM room_log").fetch_one(src).await?);
    let mut after: i64 =
        sqlx::query_scalar("SELECT CAST(coalesce(max(id), 0) AS SIGNED) FROM room_log").fetch_one(dst).await?;
    let mut done =
        to_u64(sqlx::query_scalar("SELECT count(*) FROM room_log WHERE id <= ?").bind(after).fetch_one(src).await?);
    loop {
        let rows = sqlx::query(
            "SELECT room, seq, id, sender, sender_device, client_msg_id, ts, content_type, payload \
             FROM room_log WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(chunk)
        .fetch_all(src)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get(2)?;
        let mut cols = Vec::with_capacity(rows.len());
        for r in &rows {
            cols.push((
                r.try_get::<String, _>(0)?,
                r.try_get::<i64, _>(1)?,
                r.try_get::<i64, _>(2)?,
                r.try_get::<String, _>(3)?,
                r.try_get::<String, _>(4)?,
                r.try_get::<String, _>(5)?,
                r.try_get::<i64, _>(6)?,
                r.try_get::<String, _>(7)?,
                r.try_get::<Vec<u8>, _>(8)?,
            ));
        }
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT IGNORE INTO room_log (room, seq, id, sender, sender_device, client_msg_id, ts, content_type, payload) ",
        );
        q.push_values(cols, |mut b, c| {
            b.push_bind(c.0).push_bind(c.1).push_bind(c.2).push_bind(c.3).push_bind(c.4);
            b.push_bind(c.5).push_bind(c.6).push_bind(c.7).push_bind(c.8);
        });
        report.room_log += q.build().execute(dst).await?.rows_affected();
        done += rows.len() as u64;
        progress("room log", done, total);
    }

    // The small tables, whole. MySQL reports a row found unchanged like a new one, so rooms
    // and cursors are counted as rows the table gained.
    let count = |table: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}"))).fetch_one(dst).await
    };
    let (rooms_before, cursors_before, room_cursors_before) =
        (count("rooms").await?, count("device_cursors").await?, count("room_cursors").await?);
    let rooms: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT room, created_ms, head FROM rooms").fetch_all(src).await?;
    for part in rooms.chunks(chunk as usize) {
        let mut q: QueryBuilder<MySql> = QueryBuilder::new("INSERT INTO rooms (room, created_ms, head) ");
        q.push_values(part, |mut b, r| {
            b.push_bind(&r.0).push_bind(r.1).push_bind(r.2);
        });
        q.push(" ON DUPLICATE KEY UPDATE head = GREATEST(head, VALUES(head))");
        q.build().execute(dst).await?;
    }
    report.rooms = to_u64(count("rooms").await? - rooms_before);
    progress("rooms", rooms.len() as u64, rooms.len() as u64);
    let members: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT room, user, joined_ms FROM room_members").fetch_all(src).await?;
    for part in members.chunks(chunk as usize) {
        let mut q: QueryBuilder<MySql> =
            QueryBuilder::new("INSERT IGNORE INTO room_members (room, user_id, joined_ms) ");
        q.push_values(part, |mut b, r| {
            b.push_bind(&r.0).push_bind(&r.1).push_bind(r.2);
        });
        report.members += q.build().execute(dst).await?.rows_affected();
    }
    progress("members", members.len() as u64, members.len() as u64);
    let cursors: Vec<(String, String, i64, i64)> =
        sqlx::query_as("SELECT user, device_id, seq, updated_ms FROM device_cursors").fetch_all(src).await?;
    for part in cursors.chunks(chunk as usize) {
        let mut q: QueryBuilder<MySql> =
            QueryBuilder::new("INSERT INTO device_cursors (user_id, device_id, seq, updated_ms) ");
        q.push_values(part, |mut b, r| {
            b.push_bind(&r.0).push_bind(&r.1).push_bind(r.2).push_bind(r.3);
        });
        q.push(" ON DUPLICATE KEY UPDATE updated_ms = IF(VALUES(seq) > seq, VALUES(updated_ms), updated_ms), seq = GREATEST(seq, VALUES(seq))");
        q.build().execute(dst).await?;
    }
    let room_cursors: Vec<(String, String, String, i64, i64)> =
        sqlx::query_as("SELECT user, device_id, room, seq, updated_ms FROM room_cursors").fetch_all(src).await?;
    for part in room_cursors.chunks(chunk as usize) {
        let mut q: QueryBuilder<MySql> =
            QueryBuilder::new("INSERT INTO room_cursors (user_id, device_id, room, seq, updated_ms) ");
        q.push_values(part, |mut b, r| {
            b.push_bind(&r.0).push_bind(&r.1).push_bind(&r.2).push_bind(r.3).push_bind(r.4);
        });
        q.push(" ON DUPLICATE KEY UPDATE updated_ms = IF(VALUES(seq) > seq, VALUES(updated_ms), updated_ms), seq = GREATEST(seq, VALUES(seq))");
        q.build().execute(dst).await?;
    }
    report.cursors = to_u64(count("device_cursors").await? - cursors_before)
        + to_u64(count("room_cursors").await? - room_cursors_before);
    progress("cursors", (cursors.len() + room_cursors.len()) as u64, (cursors.len() + room_cursors.len()) as u64);
    let tickets: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT hash, user, expires_ms FROM tickets").fetch_all(src).await?;
    for part in tickets.chunks(chunk as usize) {
        let mut q: QueryBuilder<MySql> = QueryBuilder::new("INSERT IGNORE INTO tickets (hash, user_id, expires_ms) ");
        q.push_values(part, |mut b, r| {
            b.push_bind(&r.0).push_bind(&r.1).push_bind(r.2);
        });
        report.tickets += q.build().execute(dst).await?.rows_affected();
    }
    progress("tickets", tickets.len() as u64, tickets.len() as u64);
    Ok(report)
}
