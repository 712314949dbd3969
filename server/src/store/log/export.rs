//! Export of a log store into a SQLite file with the SQLite store's schema, so
//! `tether-server store copy --from log://DIR` can move an embedded node's data into a shared
//! database through the same copy as a SQLite node's.

use std::collections::HashMap;
use std::path::Path;

use sqlx::Connection;
use tether_proto::AddressKind;

use super::state::{Inbox, LOST};
use super::{LogSettings, LogStore};
use crate::store::sqlite::{SqliteStore, StoreHooks};
use crate::store::{kind_str, to_i64, StoreError};

/// Rows written by an export.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// Messages to users.
    pub messages: u64,
    /// Room log entries.
    pub room_log: u64,
}

/// Writes everything the log store in `dir` holds into the (new or empty) SQLite database at
/// `sqlite_url`. The node must be stopped (the log is locked while it runs).
pub async fn export_sqlite(dir: &Path, sqlite_url: &str) -> Result<ExportReport, StoreError> {
    let log = LogStore::open(dir, LogSettings::default(), StoreHooks::default())?;
    SqliteStore::open(sqlite_url, crate::config::StoreSync::Full).await?.close().await;
    let mut conn = sqlx::SqliteConnection::connect(sqlite_url).await?;
    let mut tx = conn.begin().await?;
    let mut report = ExportReport::default();
    let inner = log.inner.clone();
    // Each 1:1 message's seq in its recipient's inbox (inboxes from the cold index and memory).
    let (inboxes, rooms) = {
        let st = inner.state.read();
        let inboxes: Vec<(String, Inbox)> = st.inboxes.iter().map(|(u, i)| (u.clone(), i.clone())).collect();
        let rooms: Vec<_> = st.rooms.iter().map(|(id, r)| (id.clone(), r.clone())).collect();
        (inboxes, rooms)
    };
    let mut to_seqs: HashMap<u64, u64> = HashMap::new();
    let mut user_msgs = Vec::new();
    for (user, inbox) in inboxes {
        let mut entries = inner.cold.inbox(&user, 1, inbox.cold, usize::MAX)?;
        entries.extend(inbox.hot.iter().enumerate().map(|(i, p)| (inbox.cold + 1 + i as u64, *p)));
        for (seq, pos) in entries {
            if pos == LOST {
                continue;
            }
            let meta = {
                let st = inner.state.read();
                inner.meta(&st, pos)?
            };
            if meta.is_some_and(|m| m.seq != seq) {
                to_seqs.insert(pos, seq);
            }
            user_msgs.push(pos);
        }
    }
    user_msgs.sort_unstable();
    user_msgs.dedup();
    for pos in user_msgs {
        let (msg, seq) = {
            let st = inner.state.read();
            let seq = inner.meta(&st, pos)?.map_or(0, |m| m.seq);
            (inner.message(&st, pos)?, seq)
        };
        if msg.to.kind != AddressKind::User {
            continue;
        }
        let to_seq = to_seqs.get(&pos).copied().unwrap_or(seq);
        sqlx::query(
            "INSERT INTO messages (id, sender, sender_device, client_msg_id, to_kind, to_id, sender_seq, to_seq, ts, content_type, payload) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(to_i64(msg.msg_id))
        .bind(&msg.sender)
        .bind(&msg.sender_device)
        .bind(&msg.client_msg_id)
        .bind(kind_str(msg.to.kind))
        .bind(&msg.to.id)
        .bind(to_i64(seq))
        .bind(to_i64(to_seq))
        .bind(to_i64(msg.ts))
        .bind(&msg.content_type)
        .bind(&msg.payload)
        .execute(&mut *tx)
        .await?;
        report.messages += 1;
    }
    for (id, room) in rooms {
        sqlx::query("INSERT INTO rooms (room, created_ms, head) VALUES (?, 0, ?)")
            .bind(&id)
            .bind(to_i64(room.head))
            .execute(&mut *tx)
            .await?;
        for m in &room.members {
            sqlx::query("INSERT INTO room_members (room, user, joined_ms) VALUES (?, ?, 0)")
                .bind(&id)
                .bind(m)
                .execute(&mut *tx)
                .await?;
        }
        let first = room.first();
        for (i, pos) in room.log.iter().enumerate() {
            if *pos == LOST {
                continue;
            }
            let msg = {
                let st = inner.state.read();
                inner.message(&st, *pos)?
            };
            sqlx::query(
                "INSERT INTO room_log (room, seq, id, sender, sender_device, client_msg_id, ts, content_type, payload) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&id)
            .bind(to_i64(first + i as u64))
            .bind(to_i64(msg.msg_id))
            .bind(&msg.sender)
            .bind(&msg.sender_device)
            .bind(&msg.client_msg_id)
            .bind(to_i64(msg.ts))
            .bind(&msg.content_type)
            .bind(&msg.payload)
            .execute(&mut *tx)
            .await?;
            report.room_log += 1;
        }
        for ((user, device), seq) in &room.cursors {
            sqlx::query("INSERT INTO room_cursors (user, device_id, room, seq, updated_ms) VALUES (?, ?, ?, ?, 0)")
                .bind(user)
                .bind(device)
                .bind(&id)
                .bind(to_i64(*seq))
                .execute(&mut *tx)
                .await?;
        }
    }
    let (cursors, tickets) = {
        let st = inner.state.read();
        (
            st.cursors.iter().map(|(k, v)| (k.clone(), *v)).collect::<Vec<_>>(),
            st.tickets.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>(),
        )
    };
    for ((user, device), seq) in cursors {
        sqlx::query("INSERT INTO device_cursors (user, device_id, seq, updated_ms) VALUES (?, ?, ?, 0)")
            .bind(user)
            .bind(device)
            .bind(to_i64(seq))
            .execute(&mut *tx)
            .await?;
    }
    for (hash, (user, expires)) in tickets {
        sqlx::query("INSERT INTO tickets (hash, user, expires_ms) VALUES (?, ?, ?)")
            .bind(hash)
            .bind(user)
            .bind(to_i64(expires))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    conn.close().await?;
    log.close();
    Ok(report)
}
