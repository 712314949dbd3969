//! Export of a log store into a SQLite file with the SQLite store's schema, so
//! `tether-server store copy --from log://DIR` can move an embedded node's data into a shared
//! database through the same copy as a SQLite node's.

use std::collections::BTreeMap;
use std::path::Path;

use sqlx::Connection;
use tether_proto::AddressKind;

use super::state::{Inbox, Loc, LOST};
use super::{LogSettings, LogStore};
use crate::store::sqlite::{SqliteStore, StoreHooks};
use crate::store::{kind_str, to_i64, StoreError};

/// A 1:1 message's location (when the cold index gave it) and (user, seq) inbox entries.
type Entries = (Option<Loc>, Vec<(String, u64)>);

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
    // Per message: where it is logged when the cold index said so, and its (user, seq)
    // entries (the sender's and the recipient's, one for a message to oneself).
    let mut entries: BTreeMap<u64, Entries> = BTreeMap::new();
    for (user, inbox) in inboxes {
        let cold = inner.cold.inbox(&user, 1, inbox.cold, usize::MAX)?.into_iter().map(|e| (e.seq, e.pos, e.loc));
        let hot = inbox.hot.iter().enumerate().map(|(i, p)| (inbox.cold + 1 + i as u64, *p, None));
        for (seq, pos, loc) in cold.chain(hot) {
            if pos != LOST {
                let e = entries.entry(pos).or_default();
                e.0 = e.0.or(loc);
                e.1.push((user.clone(), seq));
            }
        }
    }
    for (pos, (loc, seqs)) in entries {
        let msg = match loc {
            Some(loc) => inner.read_cold(loc)?,
            None => {
                let st = inner.state.read();
                inner.message(&st, pos)?
            }
        };
        if msg.to.kind != AddressKind::User {
            continue;
        }
        let seq_of = |user: &str| seqs.iter().find(|(u, _)| u == user).map_or(0, |(_, s)| *s);
        let (seq, to_seq) = (seq_of(&msg.sender), seq_of(&msg.to.id));
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
