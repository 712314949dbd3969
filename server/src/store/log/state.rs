//! The log's records and the in-memory state they build: inbox and room indexes, dedup,
//! cursors, tickets, rooms and members. Replay and live writes go through the same
//! [`State::apply`], so what a node serves after a restart is exactly what it served before.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tether_proto::AddressKind;

use crate::store::StoredMessage;

/// The index's hash map (foldhash: fast, seeded per process).
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// One durable change. A record is written whole or not at all (its checksum covers it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Record {
    /// Messages with the seqs they were given, and cursor updates (forward only).
    Batch {
        /// New messages, in order.
        msgs: Vec<Logged>,
        /// Cursor updates.
        cursors: Vec<CursorRec>,
    },
    /// A cursor set to exactly this seq (also backwards).
    SetCursor(CursorRec),
    /// A login ticket issued.
    Ticket {
        /// Hash of the ticket.
        hash: String,
        /// Its user.
        user: String,
        /// Expiry, ms since the epoch.
        expires_ms: u64,
    },
    /// A ticket consumed.
    TicketUsed {
        /// Hash of the ticket.
        hash: String,
    },
    /// A room created.
    RoomCreated {
        /// Room id.
        room: String,
    },
    /// A room deleted with its members, log and cursors.
    RoomDeleted {
        /// Room id.
        room: String,
    },
    /// A member added.
    MemberAdded {
        /// Room id.
        room: String,
        /// User.
        user: String,
    },
    /// A member removed (with its cursors in the room).
    MemberRemoved {
        /// Room id.
        room: String,
        /// User.
        user: String,
    },
    /// Room history before `first` dropped, per room.
    Pruned(Vec<(String, u64)>),
    /// Expired tickets dropped (issued to expire at or before `before_ms`).
    TicketsExpired {
        /// Cut-off, ms since the epoch.
        before_ms: u64,
    },
    /// No change: a write that proves the writer commits (readiness).
    Mark,
}

/// A message as logged: the message and the seqs it was given.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Logged {
    /// The message.
    pub msg: StoredMessage,
    /// Its seq in the sender's inbox, or in the room's log for a room message.
    pub seq: u64,
    /// Its seq in the recipient's inbox (a 1:1 message to someone else).
    pub to_seq: Option<u64>,
}

/// What a spill needs of a logged `Batch` record: who each message is from and to and its
/// seqs. Decoding into it skips the rest (bodies, ids, payload) without allocating.
#[derive(Debug, Deserialize)]
pub enum RecordIds<'a> {
    /// [`Record::Batch`], the first variant (other records hold no messages).
    Batch {
        /// The messages' ids.
        #[serde(borrow)]
        msgs: Vec<LoggedIds<'a>>,
        /// Skipped.
        cursors: serde::de::IgnoredAny,
    },
}

/// The ids of a [`Logged`] message.
#[derive(Debug, Deserialize)]
pub struct LoggedIds<'a> {
    /// The message's addressing.
    #[serde(borrow)]
    pub msg: MsgIds<'a>,
    /// [`Logged::seq`].
    pub seq: u64,
    /// [`Logged::to_seq`].
    pub to_seq: Option<u64>,
}

/// Sender and recipient of a [`StoredMessage`], fields in its order.
#[derive(Debug, Deserialize)]
pub struct MsgIds<'a> {
    #[serde(rename = "msg_id")]
    _msg_id: serde::de::IgnoredAny,
    /// Sending user.
    pub sender: &'a str,
    #[serde(rename = "sender_device")]
    _sender_device: serde::de::IgnoredAny,
    #[serde(rename = "client_msg_id")]
    _client_msg_id: serde::de::IgnoredAny,
    /// Recipient kind.
    #[serde(borrow)]
    pub to: AddressIds<'a>,
    #[serde(rename = "ts")]
    _ts: serde::de::IgnoredAny,
    #[serde(rename = "content_type")]
    _content_type: serde::de::IgnoredAny,
    #[serde(rename = "payload")]
    _payload: serde::de::IgnoredAny,
}

/// An [`tether_proto::Address`], borrowed.
#[derive(Debug, Deserialize)]
pub struct AddressIds<'a> {
    /// User or room.
    pub kind: AddressKind,
    /// Its id.
    pub id: &'a str,
}

/// A cursor update.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CursorRec {
    /// User.
    pub user: String,
    /// Device.
    pub device: String,
    /// Room, or `None` for the inbox.
    pub room: Option<String>,
    /// Seq.
    pub seq: u64,
}

/// Where a logged message lies: the record's segment and offset and its index in the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loc {
    /// Segment id.
    pub seg: u64,
    /// Offset of the record's frame.
    pub offset: u64,
    /// Index of the message in the record.
    pub index: u32,
}

/// What the index keeps of a message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// Where it is logged.
    pub loc: Loc,
    /// Its seq in the sender's inbox, or in the room log.
    pub seq: u64,
    /// Server timestamp.
    pub ts: u64,
    /// Dedup key ([`dedup_key`]).
    pub key: u64,
    /// The message itself while it is in the hot range.
    #[serde(skip)]
    pub hot: Option<Arc<StoredMessage>>,
}

/// A room.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Room {
    /// Highest seq ever given.
    pub head: u64,
    /// Message positions of seqs `first..=head`.
    pub log: VecDeque<u64>,
    /// Members.
    pub members: BTreeSet<String>,
    /// Cursors: (user, device) -> seq.
    pub cursors: HashMap<(String, String), u64>,
}

impl Room {
    /// The oldest seq still kept (`head + 1` when the log is empty).
    pub fn first(&self) -> u64 {
        self.head + 1 - self.log.len() as u64
    }
}

/// An inbox: the message position of each seq. Seqs `1..=cold` are in the cold index on disk;
/// `hot[i]` is the position of seq `cold + 1 + i`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "InboxRepr")]
pub struct Inbox {
    /// Seqs kept in the cold index.
    pub cold: u64,
    /// Positions of the seqs after them.
    pub hot: VecDeque<u64>,
}

/// How an inbox is read from a checkpoint: as written now, or as a plain list of positions
/// (checkpoints written before the cold index existed).
#[derive(Deserialize)]
#[serde(untagged)]
enum InboxRepr {
    Positions(Vec<u64>),
    Split(u64, VecDeque<u64>),
}

impl From<InboxRepr> for Inbox {
    fn from(r: InboxRepr) -> Self {
        match r {
            InboxRepr::Positions(v) => Inbox { cold: 0, hot: v.into() },
            InboxRepr::Split(cold, hot) => Inbox { cold, hot },
        }
    }
}

impl Inbox {
    /// Highest seq.
    pub fn head(&self) -> u64 {
        self.cold + self.hot.len() as u64
    }

    /// The position of `seq` if it is in memory.
    pub fn hot_pos(&self, seq: u64) -> Option<u64> {
        let i = seq.checked_sub(self.cold + 1)?;
        self.hot.get(usize::try_from(i).ok()?).copied()
    }
}

/// Messages by position: a deque from the oldest still indexed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Msgs {
    /// Position of the first slot.
    base: u64,
    slots: VecDeque<Option<Meta>>,
    /// Slots holding a message (recounted after a checkpoint is loaded).
    #[serde(skip)]
    count: usize,
}

impl Msgs {
    /// The message at `pos`, if indexed.
    pub fn get(&self, pos: &u64) -> Option<&Meta> {
        self.slots.get(pos.checked_sub(self.base)? as usize)?.as_ref()
    }

    fn get_mut(&mut self, pos: u64) -> Option<&mut Meta> {
        self.slots.get_mut(pos.checked_sub(self.base)? as usize)?.as_mut()
    }

    fn push(&mut self, pos: u64, meta: Meta) {
        if self.slots.is_empty() {
            self.base = pos;
        }
        // Positions are given in order; a gap (never expected) stays empty.
        while self.base + (self.slots.len() as u64) < pos {
            self.slots.push_back(None);
        }
        self.slots.push_back(Some(meta));
        self.count += 1;
    }

    /// Takes the slots of every position below `to` out, oldest first.
    fn take_below(&mut self, to: u64) -> Vec<(u64, Meta)> {
        let mut out = Vec::new();
        while self.base < to {
            let Some(slot) = self.slots.pop_front() else { break };
            if let Some(meta) = slot {
                self.count -= 1;
                out.push((self.base, meta));
            }
            self.base += 1;
        }
        out
    }

    fn remove(&mut self, pos: u64) -> Option<Meta> {
        let i = pos.checked_sub(self.base)? as usize;
        let meta = self.slots.get_mut(i)?.take();
        if meta.is_some() {
            self.count -= 1;
        }
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
        meta
    }

    /// Messages indexed.
    pub fn len(&self) -> usize {
        self.count
    }

    /// No message indexed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Counts the indexed messages again (the count is not part of a checkpoint).
    pub fn recount(&mut self) {
        self.count = self.slots.iter().filter(|s| s.is_some()).count();
    }
}

/// The value of `key` in `map`, inserted as default first if absent (without allocating the
/// key when it is there).
fn slot<'a, V: Default>(map: &'a mut HashMap<String, V>, key: &str) -> &'a mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    match map.get_mut(key) {
        Some(v) => v,
        None => unreachable!("inserted above"),
    }
}

/// A position no message has (a seq lost to a repaired segment).
pub const LOST: u64 = u64::MAX;

/// A position in the log: segment and offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pos {
    /// Segment id.
    pub seg: u64,
    /// Byte offset in it.
    pub offset: u64,
}

/// Everything the log's records build, by key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// The end of the last record applied (where replay after a checkpoint of this state starts).
    pub end: Pos,
    /// Position the next logged message gets.
    pub next_pos: u64,
    /// Messages by position (`None` once forgotten).
    pub msgs: Msgs,
    /// Inboxes.
    pub inboxes: HashMap<String, Inbox>,
    /// Rooms.
    pub rooms: HashMap<String, Room>,
    /// Rooms per user.
    pub member_of: HashMap<String, BTreeSet<String>>,
    /// Dedup key -> position, for messages inside the dedup window.
    pub dedup: HashMap<u64, u64>,
    /// Keys that collided with another message's: (sender, client id) -> position.
    pub dedup_exact: HashMap<(String, String), u64>,
    /// Positions below this are outside the dedup window.
    pub dedup_floor: u64,
    /// 1:1 messages stored per sender.
    pub sent: HashMap<String, u64>,
    /// Inbox cursors: (user, device) -> seq.
    pub cursors: HashMap<(String, String), u64>,
    /// Tickets: hash -> (user, expires).
    pub tickets: HashMap<String, (String, u64)>,
    /// Messages still indexed, per segment (a segment with none is garbage once checkpointed).
    pub live: BTreeMap<u64, u64>,
    /// Positions below this were spilled: 1:1 messages' entries (meta, inbox seqs, dedup keys)
    /// are in the cold index on disk, room messages' metas in `room_cold`.
    #[serde(default)]
    pub cold_floor: u64,
    /// Metas of room messages below `cold_floor` (room history is bounded by retention).
    #[serde(default)]
    pub room_cold: BTreeMap<u64, Meta>,
    /// Spilled ranges, oldest first, until they leave the dedup window: (end position, newest
    /// timestamp in the range); each starts where the one before ended.
    #[serde(default)]
    pub cold_chunks: VecDeque<(u64, u64)>,
    /// Hot messages, oldest first: (position, bytes).
    #[serde(skip)]
    pub hot: VecDeque<(u64, usize)>,
    /// Bytes of the hot messages.
    #[serde(skip)]
    pub hot_bytes: usize,
}

/// The dedup key of (sender, client id): FNV-1a, stable across builds (checkpoints keep it).
pub fn dedup_key(sender: &str, client_msg_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sender.bytes().chain([0xff]).chain(client_msg_id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// What a message costs in the hot range.
pub fn msg_bytes(m: &StoredMessage) -> usize {
    m.payload.len() + m.sender.len() + m.sender_device.len() + m.client_msg_id.len() + m.to.id.len() + 128
}

/// A record contradicts the state it is applied to.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Inconsistent(pub String);

impl State {
    /// Highest seq of `user`'s inbox.
    pub fn inbox_head(&self, user: &str) -> u64 {
        self.inboxes.get(user).map_or(0, Inbox::head)
    }

    /// The meta of the message at `pos` when it is in memory: hot, or a room message below the
    /// cold floor. A 1:1 message below the floor is in the cold index.
    pub fn meta(&self, pos: u64) -> Option<&Meta> {
        if pos >= self.cold_floor {
            self.msgs.get(&pos)
        } else {
            self.room_cold.get(&pos)
        }
    }

    /// Messages whose index is in memory.
    pub fn in_memory(&self) -> usize {
        self.msgs.len() + self.room_cold.len()
    }

    /// Applies one durable record found at `seg`/`offset`. `hot_limit` bounds the bytes of
    /// messages kept in memory.
    pub fn apply(&mut self, rec: Record, seg: u64, offset: u64, hot_limit: usize) -> Result<(), Inconsistent> {
        match rec {
            Record::Batch { msgs, cursors } => {
                for (i, l) in msgs.into_iter().enumerate() {
                    let loc = Loc { seg, offset, index: i as u32 };
                    self.add_message(l, loc, hot_limit)?;
                }
                for c in cursors {
                    self.set_cursor(c, false);
                }
            }
            Record::SetCursor(c) => self.set_cursor(c, true),
            Record::Ticket { hash, user, expires_ms } => {
                self.tickets.insert(hash, (user, expires_ms));
            }
            Record::TicketUsed { hash } => {
                self.tickets.remove(&hash);
            }
            Record::TicketsExpired { before_ms } => self.tickets.retain(|_, (_, exp)| *exp > before_ms),
            Record::RoomCreated { room } => {
                self.rooms.entry(room).or_default();
            }
            Record::RoomDeleted { room } => {
                if let Some(r) = self.rooms.remove(&room) {
                    for m in &r.members {
                        if let Some(set) = self.member_of.get_mut(m) {
                            set.remove(&room);
                        }
                    }
                    for pos in r.log {
                        self.forget(pos);
                    }
                }
            }
            Record::MemberAdded { room, user } => {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.members.insert(user.clone());
                    self.member_of.entry(user).or_default().insert(room);
                }
            }
            Record::MemberRemoved { room, user } => {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.members.remove(&user);
                    r.cursors.retain(|(u, _), _| *u != user);
                }
                if let Some(set) = self.member_of.get_mut(&user) {
                    set.remove(&room);
                }
            }
            Record::Pruned(cuts) => {
                for (room, first) in cuts {
                    let mut gone = Vec::new();
                    if let Some(r) = self.rooms.get_mut(&room) {
                        while r.first() < first && !r.log.is_empty() {
                            if let Some(pos) = r.log.pop_front() {
                                gone.push(pos);
                            }
                        }
                    }
                    for pos in gone {
                        self.forget(pos);
                    }
                }
            }
            Record::Mark => {}
        }
        Ok(())
    }

    fn set_cursor(&mut self, c: CursorRec, exact: bool) {
        let slot = match c.room {
            None => self.cursors.entry((c.user, c.device)).or_insert(0),
            Some(room) => self.rooms.entry(room).or_default().cursors.entry((c.user, c.device)).or_insert(0),
        };
        if exact || c.seq > *slot {
            *slot = c.seq;
        }
    }

    fn add_message(&mut self, l: Logged, loc: Loc, hot_limit: usize) -> Result<(), Inconsistent> {
        let pos = self.next_pos;
        self.next_pos += 1;
        let m = l.msg;
        let key = dedup_key(&m.sender, &m.client_msg_id);
        match m.to.kind {
            AddressKind::User => {
                put_seq(slot(&mut self.inboxes, &m.sender), l.seq, pos, &m.sender)?;
                if let Some(to_seq) = l.to_seq {
                    put_seq(slot(&mut self.inboxes, &m.to.id), to_seq, pos, &m.to.id)?;
                }
                *slot(&mut self.sent, &m.sender) += 1;
            }
            AddressKind::Room => {
                let r = slot(&mut self.rooms, &m.to.id);
                if l.seq <= r.head {
                    return Err(Inconsistent(format!("room {} seq {} given twice", m.to.id, l.seq)));
                }
                while r.head + 1 < l.seq {
                    r.log.push_back(LOST);
                    r.head += 1;
                }
                r.log.push_back(pos);
                r.head = l.seq;
            }
        }
        if let Some(prev) = self.dedup.insert(key, pos) {
            if prev != pos {
                // Another message had this key: keep it reachable by its exact pair. (Replay
                // cannot tell the pair of `prev` without reading it, so the writer records
                // collisions itself, see `LogStore::plan`.)
                self.dedup.insert(key, prev);
                self.dedup_exact.insert((m.sender.clone(), m.client_msg_id.clone()), pos);
            }
        }
        *self.live.entry(loc.seg).or_default() += 1;
        let bytes = msg_bytes(&m);
        self.msgs.push(pos, Meta { loc, seq: l.seq, ts: m.ts, key, hot: Some(Arc::new(m)) });
        self.hot.push_back((pos, bytes));
        self.hot_bytes += bytes;
        while self.hot_bytes > hot_limit {
            let Some((p, b)) = self.hot.pop_front() else { break };
            self.hot_bytes -= b;
            if let Some(meta) = self.msgs.get_mut(p) {
                meta.hot = None;
            }
        }
        Ok(())
    }

    /// Drops a message from the index (its room history was pruned or deleted).
    fn forget(&mut self, pos: u64) {
        let meta = if pos >= self.cold_floor { self.msgs.remove(pos) } else { self.room_cold.remove(&pos) };
        if let Some(meta) = meta {
            if self.dedup.get(&meta.key) == Some(&pos) {
                self.dedup.remove(&meta.key);
            }
            if let Some(n) = self.live.get_mut(&meta.loc.seg) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Drops dedup entries of messages older than `min_ts` (outside the window). Returns the
    /// spilled ranges that left the window: their dedup keys in the cold index are no longer
    /// consulted and can be dropped there.
    pub fn expire_dedup(&mut self, min_ts: u64) -> Vec<(u64, u64)> {
        let mut left = Vec::new();
        // Spilled ranges go whole, once their newest message is outside the window.
        while let Some(&(end, max_ts)) = self.cold_chunks.front() {
            if end > self.dedup_floor {
                if max_ts >= min_ts {
                    break;
                }
                let from = self.dedup_floor;
                let gone: Vec<u64> = self.room_cold.range(from..end).map(|(_, m)| m.key).collect();
                for key in gone {
                    if self.dedup.get(&key).is_some_and(|p| (from..end).contains(p)) {
                        self.dedup.remove(&key);
                    }
                }
                left.push((from, end));
                self.dedup_floor = end;
            }
            self.cold_chunks.pop_front();
        }
        while self.dedup_floor < self.next_pos && self.dedup_floor >= self.cold_floor {
            let pos = self.dedup_floor;
            if let Some(meta) = self.msgs.get(&pos) {
                if meta.ts >= min_ts {
                    break;
                }
                if self.dedup.get(&meta.key) == Some(&pos) {
                    self.dedup.remove(&meta.key);
                }
            }
            self.dedup_floor += 1;
        }
        let floor = self.dedup_floor;
        self.dedup_exact.retain(|_, p| *p >= floor);
        left
    }

    /// Forgets what a spill moved to the cold index: the metas of its 1:1 messages (room
    /// messages' metas move to `room_cold`), their inbox seqs and dedup keys. The spill was
    /// built from this state's records (`spill.from` is the cold floor) and written to the
    /// cold index first.
    pub fn apply_spill(&mut self, spill: &super::cold::Spill) -> Result<(), Inconsistent> {
        if spill.from != self.cold_floor || spill.to > self.next_pos {
            return Err(Inconsistent(format!(
                "spill of {}..{} does not follow the cold floor {} (next position {})",
                spill.from, spill.to, self.cold_floor, self.next_pos
            )));
        }
        // Entries come grouped by user (see `Spill::inbox`): one lookup per user.
        for group in spill.inbox.chunk_by(|a, b| a.0 == b.0) {
            let user = &group[0].0;
            let Some(inbox) = self.inboxes.get_mut(user) else {
                return Err(Inconsistent(format!("spilled inbox {user} is not indexed")));
            };
            for (_, seq, pos, _) in group {
                while inbox.cold + 1 < *seq && inbox.hot.front() == Some(&LOST) {
                    inbox.hot.pop_front();
                    inbox.cold += 1;
                }
                if inbox.cold + 1 != *seq || inbox.hot.front() != Some(pos) {
                    return Err(Inconsistent(format!("spilled inbox {user} seq {seq} is not at position {pos}")));
                }
                inbox.hot.pop_front();
                inbox.cold += 1;
            }
        }
        let mut one_to_one = spill.msgs.iter().map(|m| m.pos).peekable();
        for (pos, mut meta) in self.msgs.take_below(spill.to) {
            while one_to_one.next_if(|p| *p < pos).is_some() {}
            if one_to_one.next_if_eq(&pos).is_some() {
                if self.dedup.get(&meta.key) == Some(&pos) {
                    self.dedup.remove(&meta.key);
                }
            } else {
                meta.hot = None;
                self.room_cold.insert(pos, meta);
            }
        }
        while let Some(&(p, b)) = self.hot.front() {
            if p >= spill.to {
                break;
            }
            self.hot.pop_front();
            self.hot_bytes -= b;
        }
        // Colliding keys' exact entries: the cold index lists every message under its key.
        if !self.dedup_exact.is_empty() {
            self.dedup_exact.retain(|_, p| *p >= spill.to);
        }
        self.cold_floor = spill.to;
        if spill.to > self.dedup_floor {
            self.cold_chunks.push_back((spill.to, spill.max_ts));
        }
        Ok(())
    }
}

fn put_seq(inbox: &mut Inbox, seq: u64, pos: u64, user: &str) -> Result<(), Inconsistent> {
    if seq <= inbox.head() {
        return Err(Inconsistent(format!("inbox {user} seq {seq} given twice")));
    }
    // Seqs between (lost to a repaired segment) stay gaps.
    while inbox.head() + 1 < seq {
        inbox.hot.push_back(LOST);
    }
    inbox.hot.push_back(pos);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_record_decodes_to_its_ids() {
        let m = |sender: &str, to: tether_proto::Address| StoredMessage {
            msg_id: 7,
            sender: sender.into(),
            sender_device: "phone".into(),
            client_msg_id: "c1".into(),
            to,
            ts: 99,
            content_type: "text/plain".into(),
            payload: vec![1, 2, 3],
        };
        let rec = Record::Batch {
            msgs: vec![
                Logged { msg: m("alice", tether_proto::Address::user("bob")), seq: 4, to_seq: Some(9) },
                Logged { msg: m("carol", tether_proto::Address::room("r")), seq: 12, to_seq: None },
            ],
            cursors: vec![CursorRec { user: "bob".into(), device: "p".into(), room: None, seq: 3 }],
        };
        let bytes = rmp_serde::to_vec(&rec).expect("encode");
        let RecordIds::Batch { msgs, .. } = rmp_serde::from_slice::<RecordIds>(&bytes).expect("decode ids");
        let got: Vec<_> = msgs.iter().map(|l| (l.msg.sender, l.msg.to.kind, l.msg.to.id, l.seq, l.to_seq)).collect();
        assert_eq!(got, [("alice", AddressKind::User, "bob", 4, Some(9)), ("carol", AddressKind::Room, "r", 12, None)]);
        // Other records are not batches.
        assert!(rmp_serde::from_slice::<RecordIds>(&rmp_serde::to_vec(&Record::Mark).expect("encode")).is_err());
    }

    #[test]
    fn an_inbox_from_a_checkpoint_before_the_cold_index_reads_as_all_hot() {
        // Checkpoints written before the cold index kept each inbox as a plain list.
        let mut old: HashMap<String, Vec<u64>> = HashMap::default();
        old.insert("bob".into(), vec![3, LOST, 9]);
        let bytes = rmp_serde::to_vec(&old).expect("encode");
        let read: HashMap<String, Inbox> = rmp_serde::from_slice(&bytes).expect("decode");
        let bob = &read["bob"];
        assert_eq!((bob.cold, bob.head(), bob.hot_pos(3)), (0, 3, Some(9)));
        // And as written now.
        let now = Inbox { cold: 7, hot: VecDeque::from([11, 12]) };
        let back: Inbox = rmp_serde::from_slice(&rmp_serde::to_vec(&now).expect("encode")).expect("decode");
        assert_eq!((back.cold, back.head(), back.hot_pos(8), back.hot_pos(7)), (7, 9, Some(11), None));
    }
}
