//! Durable storage of messages, inboxes, device cursors and tickets.
//!
//! The gateway talks to storage only through [`Store`], so SQLite (the default, [`sqlite`]) and
//! the PostgreSQL / MySQL backends of a cluster are interchangeable. Batching of writes lives
//! above the trait, in [`crate::pipeline`]: a backend gets whole batches and commits each in one
//! transaction.

pub mod copy;
pub mod faults;
pub mod log;
pub mod mysql;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use tether_proto::Address;
use thiserror::Error;

/// A storage failure.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// The database was migrated by a newer build: this one does not know its schema and
    /// refuses to run on it.
    #[error("the database schema has migration {0}, which this build does not know: run a tether-server at least as new as the one that migrated it")]
    SchemaTooNew(i64),
    /// A stored row does not fit the schema (negative seq, unknown address kind...).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The store is shut down.
    #[error("store closed")]
    Closed,
    /// A fault injected by a test ([`faults`]).
    #[error("{0}")]
    Injected(#[from] faults::InjectedFault),
    /// The database URL names no backend this build has.
    #[error("{0}")]
    Unsupported(String),
    /// A file of the log store failed (a full disk, an I/O error).
    #[error("log i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The log store cannot go on (damage found at start, a lock held by another process...).
    #[error("log: {0}")]
    Log(String),
    /// SQLite was still (or already) inside a transaction where it must not be: the write is
    /// not known to be durable.
    #[error("not committed: {0}")]
    NotCommitted(String),
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::VersionMissing(v) => StoreError::SchemaTooNew(v),
            e => StoreError::Migrate(e),
        }
    }
}

/// How [`open`] opens a store.
#[derive(Clone, Default)]
pub struct OpenOptions {
    /// SQLite durability of a commit.
    pub sync: crate::config::StoreSync,
    /// Connection settings of a shared database.
    pub pool: postgres::PoolSettings,
    /// Settings of the log store.
    pub log: log::LogSettings,
    /// Faults and metrics.
    pub hooks: sqlite::StoreHooks,
}

/// Opens the store a database URL names: `log://DIR`, `sqlite://PATH`, `postgres://...` or
/// `mysql://...` (`mariadb://...`).
pub async fn open(url: &str, opts: OpenOptions) -> Result<Arc<dyn Store>, StoreError> {
    let store: Arc<dyn Store> = if let Some(dir) = log::dir_of(url) {
        Arc::new(log::LogStore::open(&dir, opts.log, opts.hooks)?)
    } else if url.starts_with("sqlite:") {
        Arc::new(sqlite::SqliteStore::open_with(url, opts.sync, opts.hooks).await?)
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Arc::new(postgres::PgStore::open(url, &opts.pool, opts.hooks).await?)
    } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
        Arc::new(mysql::MySqlStore::open(&url.replacen("mariadb:", "mysql:", 1), &opts.pool, opts.hooks).await?)
    } else {
        return Err(StoreError::Unsupported(format!(
            "database `{}`: supported are log://, sqlite://, postgres:// and mysql:// URLs",
            url.split('@').next_back().unwrap_or_default()
        )));
    };
    Ok(store)
}

/// An id, seq or ms timestamp for a signed 64-bit column (values we write are far below 2^63).
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A signed 64-bit column read back; negative means the row does not fit the schema.
pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what}: {v}")))
}

/// The `to_kind` column of an address kind.
pub(crate) fn kind_str(k: tether_proto::AddressKind) -> &'static str {
    match k {
        tether_proto::AddressKind::User => "user",
        tether_proto::AddressKind::Room => "room",
    }
}

/// An address kind read back from `to_kind`.
pub(crate) fn kind_from(s: &str) -> Result<tether_proto::AddressKind, StoreError> {
    match s {
        "user" => Ok(tether_proto::AddressKind::User),
        "room" => Ok(tether_proto::AddressKind::Room),
        other => Err(StoreError::Corrupt(format!("address kind {other}"))),
    }
}

/// The highest update per device (inbox cursors) and per device and room (room cursors), each
/// in key order: an upsert may not touch a row twice, and key order is the lock order.
pub(crate) fn coalesce_cursors(cursors: &[CursorUpdate]) -> (Vec<&CursorUpdate>, Vec<&CursorUpdate>) {
    let mut best: std::collections::BTreeMap<(&str, &str, Option<&str>), &CursorUpdate> =
        std::collections::BTreeMap::new();
    for c in cursors {
        let e = best.entry((&c.user, &c.device_id, c.room.as_deref())).or_insert(c);
        if c.seq > e.seq {
            *e = c;
        }
    }
    best.into_values().partition(|c| c.room.is_none())
}

/// A message to append, as accepted from a session or the admin API: it has exactly the
/// fields it is stored with.
pub type NewMessage = StoredMessage;

/// A message as stored (shared by all deliveries of it; carried between nodes as MessagePack).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredMessage {
    /// Server-wide id allocated by the node ([`crate::ids::MsgIdGen`]).
    pub msg_id: u64,
    /// Sending user.
    pub sender: String,
    /// Sending device id.
    pub sender_device: String,
    /// The sender's id for the message.
    pub client_msg_id: String,
    /// Recipient.
    pub to: Address,
    /// Server timestamp.
    pub ts: u64,
    /// Payload type.
    pub content_type: String,
    /// Payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl StoredMessage {
    /// The `deliver` frame for this message at `seq` of some inbox, over its fields (encode it
    /// with [`tether_proto::encode_deliver`]: nothing is copied).
    pub fn deliver_ref(&self, seq: u64) -> tether_proto::DeliverRef<'_> {
        tether_proto::DeliverRef {
            msg_id: self.msg_id,
            seq,
            from: &self.sender,
            from_device: &self.sender_device,
            client_msg_id: &self.client_msg_id,
            to: &self.to,
            ts: self.ts,
            content_type: &self.content_type,
            payload: &self.payload,
        }
    }
}

/// Where one message of a batch ended up.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The stored message (the original one for a duplicate).
    pub msg: Arc<StoredMessage>,
    /// Seq of the sender's own copy in the sender's inbox.
    pub sender_seq: u64,
    /// Inbox entries written by this append: (user, seq). Empty for a duplicate. For a message
    /// to oneself, only the sender's entry.
    pub recipients: Vec<(String, u64)>,
    /// This was a retry of an already stored (sender, client_msg_id).
    pub duplicate: bool,
}

/// One inbox entry read back.
#[derive(Debug, Clone)]
pub struct InboxEntry {
    /// Seq in the inbox.
    pub seq: u64,
    /// The message.
    pub msg: Arc<StoredMessage>,
}

/// Outcome of consuming a one-time ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketUse {
    /// The ticket was valid and is now consumed; it belongs to this user.
    Valid(String),
    /// The ticket existed but had expired (it is consumed too).
    Expired,
    /// No such ticket: never issued or already used.
    Invalid,
}

/// A message the store refused (it was not stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Wire error code for the sender.
    pub code: tether_proto::ErrorCode,
    /// Detail.
    pub message: String,
}

/// A device's acknowledged position, written in batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorUpdate {
    /// User.
    pub user: String,
    /// Device id.
    pub device_id: String,
    /// The room this cursor is for; `None` for the user's inbox.
    pub room: Option<String>,
    /// Highest contiguous seq acknowledged.
    pub seq: u64,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
}

/// Storage backend.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Appends a batch in one transaction, deduplicating on (sender, client_msg_id) against the
    /// store and within the batch, and allocating inbox seqs without gaps. Results are in
    /// input order. Either the whole batch is durable or none of it is.
    ///
    /// A message to a room gets the next seq of the room's log (`sender_seq` of its
    /// [`Appended`] is that seq, `recipients` is empty); one to a room that does not exist is
    /// refused.
    async fn append(
        &self,
        batch: Vec<NewMessage>,
        cursors: Vec<CursorUpdate>,
    ) -> Result<Vec<Result<Appended, Refusal>>, StoreError>;

    /// Inbox entries of `user` with `after < seq <= until`, in seq order, at most `limit`.
    async fn fetch_inbox(
        &self,
        user: &str,
        after: u64,
        until: Option<u64>,
        limit: u32,
    ) -> Result<Vec<InboxEntry>, StoreError>;

    /// Highest seq in `user`'s inbox (0 if empty).
    async fn inbox_head(&self, user: &str) -> Result<u64, StoreError>;

    /// The stored cumulative ack of a device.
    async fn device_cursor(&self, user: &str, device_id: &str) -> Result<Option<u64>, StoreError>;

    /// Stores a ticket (by hash) for `user` until `expires_ms`.
    async fn create_ticket(&self, hash: &str, user: &str, expires_ms: u64) -> Result<(), StoreError>;

    /// Consumes a ticket atomically: at most one caller ever gets `Valid`.
    async fn consume_ticket(&self, hash: &str, now_ms: u64) -> Result<TicketUse, StoreError>;

    /// Cheap round trip for liveness checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Readiness: `Ok` when the store can be read and its writer commits. After a failed write
    /// this proves the writer commits again (with a small write of its own) before it answers
    /// `Ok`, so a node is never reported ready while its writes fail.
    async fn ready(&self) -> Result<(), StoreError>;

    /// Sets a device's stored cursor (inbox when `room` is `None`) to exactly `seq`, also
    /// backwards: used to repair a cursor found above the head at login.
    async fn set_cursor(&self, user: &str, device_id: &str, room: Option<&str>, seq: u64) -> Result<(), StoreError>;

    /// Counts stored messages from `sender` (used by admin and tests).
    async fn count_from(&self, sender: &str) -> Result<u64, StoreError>;

    /// Creates a room; false if it existed.
    async fn create_room(&self, room: &str, now_ms: u64) -> Result<bool, StoreError>;

    /// Deletes a room with its members, log and cursors; false if there was none.
    async fn delete_room(&self, room: &str) -> Result<bool, StoreError>;

    /// The room's head (highest seq ever given), or `None` if the room does not exist.
    async fn room_head(&self, room: &str) -> Result<Option<u64>, StoreError>;

    /// Adds a member; false if the user already was one. The room must exist.
    async fn add_member(&self, room: &str, user: &str, now_ms: u64) -> Result<bool, StoreError>;

    /// Removes a member; false if the user was none.
    async fn remove_member(&self, room: &str, user: &str) -> Result<bool, StoreError>;

    /// Members of a room.
    async fn members(&self, room: &str) -> Result<Vec<String>, StoreError>;

    /// Rooms a user is a member of.
    async fn rooms_of(&self, user: &str) -> Result<Vec<String>, StoreError>;

    /// Room log entries with `after < seq <= until`, in order, at most `limit`, and the oldest
    /// seq still kept (`head + 1` when the log is empty).
    async fn fetch_room(
        &self,
        room: &str,
        after: u64,
        until: Option<u64>,
        limit: u32,
    ) -> Result<(Vec<InboxEntry>, u64), StoreError>;

    /// The stored cumulative ack of a device in a room.
    async fn room_cursor(&self, user: &str, device_id: &str, room: &str) -> Result<Option<u64>, StoreError>;

    /// Drops room history beyond `max_count` messages per room or older than `min_ts_ms`;
    /// returns how many messages went.
    async fn prune_rooms(&self, max_count: u64, min_ts_ms: u64) -> Result<u64, StoreError>;

    /// Whether the write pipeline should run its writer loop for this store on an OS thread of
    /// its own instead of among the session tasks: an embedded store that commits in a few
    /// microseconds per message, where waiting for a runtime worker behind thousands of session
    /// wake-ups would be most of a message's latency.
    fn wants_own_thread(&self) -> bool {
        false
    }

    /// Claims (or renews) node id `node_id` for this process (`instance`) until
    /// `now_ms + ttl_ms`: false when another live process holds it. Message ids embed the node
    /// id, so on a shared store two live nodes must never use the same one. An embedded store
    /// has one node and always grants it.
    async fn claim_node_id(&self, node_id: u16, instance: &str, ttl_ms: u64, now_ms: u64) -> Result<bool, StoreError> {
        let _ = (node_id, instance, ttl_ms, now_ms);
        Ok(true)
    }
}
