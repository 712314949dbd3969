//! The embedded log store (`log://DIR`): an append-only, checksummed log of segment files is
//! the point of durability, and the indexes (inboxes, room logs, dedup, cursors, tickets,
//! rooms) live in memory beside it, rebuilt from a checkpoint and the log at start.
//!
//! One writer appends each batch as one record and makes it durable with one `fdatasync`
//! (group commit: the pipeline hands over whatever queued during the previous sync); the
//! in-memory state changes only after that, so a reader never sees what is not durable. A
//! failed write or sync truncates the segment back to its durable length, so the log never
//! holds a record nobody was told about. Message bodies stay in memory for the newest
//! `hot_bytes`; older ones are read back from their segment when asked for.
//!
//! Start-up replays the newest checkpoint and the segments after it. A damaged record at the
//! very end of the newest segment with nothing intact after it is a write a crash cut short:
//! it is truncated (and logged). Damage anywhere else is data that was durable: the store
//! refuses to open and names the repair command ([`repair`]), which cuts the damaged bytes out
//! and keeps a copy of the original.
//!
//! See docs/architecture.md ("The write path") for the measurements behind this design.

pub mod checkpoint;
pub mod cold;
pub mod export;
pub mod segment;
pub mod state;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use tether_proto::{Address, AddressKind, ErrorCode};

use self::segment::{Appender, Tail};
use self::state::{dedup_key, CursorRec, Logged, Record, State, LOST};
use super::faults::FaultStep;
use super::sqlite::StoreHooks;
use super::{Appended, CursorUpdate, InboxEntry, NewMessage, Refusal, Store, StoreError, StoredMessage, TicketUse};

/// Settings of the log store.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// A segment is closed and a new one started once it reaches this size.
    pub segment_bytes: u64,
    /// Bytes of message bodies kept in memory (the newest); older ones are read from disk.
    pub hot_bytes: usize,
    /// How long a (sender, client_msg_id) is remembered for dedup.
    pub dedup_window: Duration,
    /// How often a checkpoint is considered.
    pub checkpoint_every: Duration,
    /// A checkpoint is written when this many log bytes were appended since the last one (or
    /// at the next `checkpoint_every` tick when anything changed and the last is older than
    /// ten ticks).
    pub checkpoint_bytes: u64,
    /// Messages whose index entries stay in memory (the newest); maintenance moves older 1:1
    /// messages' entries to the cold index on disk ([`cold`]).
    pub index_hot: usize,
    /// Memory of the cold index's LSM-tree.
    pub cold: cold::ColdSettings,
    /// Prepare the next segment (written in full as zero bytes) once the current one is half
    /// full, so commits write over allocated space ([`segment`]).
    pub preallocate: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            segment_bytes: 64 * 1024 * 1024,
            hot_bytes: 64 * 1024 * 1024,
            dedup_window: Duration::from_secs(7 * 24 * 3600),
            checkpoint_every: Duration::from_secs(30),
            checkpoint_bytes: 256 * 1024 * 1024,
            index_hot: 1_000_000,
            cold: cold::ColdSettings::default(),
            preallocate: true,
        }
    }
}

/// The directory of a `log://DIR` URL.
pub fn dir_of(url: &str) -> Option<PathBuf> {
    url.strip_prefix("log://").filter(|d| !d.is_empty()).map(PathBuf::from)
}

/// The embedded log store.
pub struct LogStore {
    inner: Arc<Inner>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

struct Inner {
    dir: PathBuf,
    settings: LogSettings,
    writer: Mutex<Writer>,
    state: RwLock<State>,
    /// The index behind the hot range.
    cold: cold::ColdIndex,
    /// Held by maintenance (dedup expiry and spills run one at a time).
    maint: Mutex<()>,
    /// Read handles of segments, for bodies outside the hot range.
    files: Mutex<HashMap<u64, Arc<File>>>,
    hooks: StoreHooks,
    /// False from a failed write until a write succeeds again.
    writer_ok: AtomicBool,
    /// Held for the life of the store: one process per log directory.
    _lock: File,
}

struct Writer {
    app: Appender,
    buf: Vec<u8>,
    /// A failed write could not be rolled back yet: cut the segment back to this length
    /// before anything else.
    dirty: Option<u64>,
    closed: bool,
    /// Bytes appended since the last checkpoint.
    since_checkpoint: u64,
    /// The next segment is prepared (its id), see [`segment::prepare`].
    prepared: Option<u64>,
}

/// One message of a batch as planned: new (with its seqs) or a duplicate of a stored one.
enum Plan {
    New { seq: u64, to_seq: Option<u64> },
    Duplicate { msg: Arc<StoredMessage>, seq: u64 },
    DuplicateInBatch(usize),
    Refused(Refusal),
}

fn log_err(what: impl std::fmt::Display) -> StoreError {
    StoreError::Log(what.to_string())
}

impl LogStore {
    /// Opens (or creates) the log in `dir`: loads the newest checkpoint, replays the segments
    /// after it, truncates a torn tail of the newest segment, and refuses damage elsewhere.
    pub fn open(dir: &Path, settings: LogSettings, hooks: StoreHooks) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let Some(lock) = lock_dir(dir)? else {
            return Err(log_err(format!("{} is in use by another tether-server process", dir.display())));
        };
        let (mut state, from) = checkpoint::load(dir)?;
        let index = dir.join("index");
        if state.cold_floor > 0 && !index.exists() {
            // Opening would make an empty one, and the spilled seqs would read as lost.
            return Err(log_err(format!(
                "{} is missing but the newest checkpoint relies on it (the index of {} spilled messages): \
                 refusing to start; restore it with the rest of the log directory (docs/operations.md \"The log store\")",
                index.display(),
                state.cold_floor
            )));
        }
        let cold = cold::ColdIndex::open(&index, settings.cold)?;
        segment::remove_prepared(dir)?;
        let mut ids = segment::list(dir)?;
        ids.retain(|id| *id >= from.seg);
        let hot = settings.hot_bytes;
        let mut app = None;
        let last = ids.last().copied();
        for (i, id) in ids.iter().copied().enumerate() {
            if i > 0 && ids[i - 1] + 1 != id {
                return Err(log_err(format!(
                    "segment {} is missing from {} (found {} and {id}): refusing to start; see docs/operations.md \"Repairing the log\"",
                    ids[i - 1] + 1,
                    dir.display(),
                    ids[i - 1]
                )));
            }
            let scan = segment::scan(dir, id).map_err(log_err)?;
            let mut end = segment::HEADER;
            for r in scan.records {
                end = r.offset + segment::FRAME + r.body.len() as u64;
                if id == from.seg && r.offset < from.offset {
                    continue;
                }
                let rec: Record = rmp_serde::from_slice(&r.body).map_err(|e| {
                    log_err(format!(
                        "segment {} offset {}: intact record that does not decode ({e}): refusing to start",
                        segment::path(dir, id).display(),
                        r.offset
                    ))
                })?;
                state.apply(rec, id, r.offset, hot).map_err(|e| {
                    log_err(format!(
                        "segment {} offset {}: {e}: refusing to start",
                        segment::path(dir, id).display(),
                        r.offset
                    ))
                })?;
                // A checkpoint written before the next commit names where this state ends.
                state.end = state::Pos { seg: id, offset: end };
            }
            let mut zeros = false;
            match scan.tail {
                Tail::Clean => {}
                Tail::Zeros { at } if Some(id) == last => {
                    // Prepared space not written yet: the next record goes over it.
                    end = at;
                    zeros = true;
                }
                Tail::Torn { at, bytes } if Some(id) == last => {
                    tracing::warn!(segment = %segment::path(dir, id).display(), at, bytes, "torn write at the end of the log (a crash during a write): truncated");
                    end = at.max(segment::HEADER);
                    if at < segment::HEADER {
                        // The header itself was cut short: write the segment anew.
                        std::fs::remove_file(segment::path(dir, id))?;
                        app = Some(Appender::create(dir, id)?);
                        continue;
                    }
                }
                Tail::Torn { at, .. } | Tail::Zeros { at } | Tail::Corrupt { at, .. } => {
                    return Err(log_err(format!(
                        "segment {} is damaged at offset {at} (data that was durable): refusing to start. \
                         Stop the node and run `tether-server store repair --log {}` (it keeps a copy of the \
                         damaged file and cuts out only the damaged records); see docs/operations.md \"Repairing the log\"",
                        segment::path(dir, id).display(),
                        dir.display()
                    )));
                }
            }
            if Some(id) == last {
                app = Some(Appender::open(dir, id, end, zeros)?);
            }
        }
        let app = match app {
            Some(a) => a,
            None => Appender::create(dir, from.seg.max(1))?,
        };
        hooks.metrics.store_writer_ready.set(1);
        hooks.metrics.store_indexed_messages.set(state.in_memory() as i64);
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            settings,
            writer: Mutex::new(Writer {
                app,
                buf: Vec::new(),
                dirty: None,
                closed: false,
                since_checkpoint: 0,
                prepared: None,
            }),
            state: RwLock::new(state),
            cold,
            maint: Mutex::new(()),
            files: Mutex::new(HashMap::new()),
            hooks,
            writer_ok: AtomicBool::new(true),
            _lock: lock,
        });
        let ticker = tokio::runtime::Handle::try_current().ok().map(|h| {
            let inner = Arc::downgrade(&inner);
            h.spawn(async move {
                let every = match inner.upgrade() {
                    Some(i) => i.settings.checkpoint_every.max(Duration::from_millis(50)),
                    None => return,
                };
                // The index is kept near its hot size every second (a node can index a hundred
                // thousand messages a second); the rest of maintenance runs every `every`.
                let mut tick = tokio::time::interval(every.min(UPKEEP_EVERY));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                let mut idle_ticks = 0u32;
                let mut last = tokio::time::Instant::now();
                loop {
                    tick.tick().await;
                    let Some(i) = inner.upgrade() else { return };
                    let full = last.elapsed() >= every;
                    if full {
                        last = tokio::time::Instant::now();
                        idle_ticks += 1;
                    }
                    let mut ticks = idle_ticks;
                    idle_ticks = tokio::task::spawn_blocking(move || {
                        if full {
                            i.maintain(&mut ticks);
                        } else {
                            i.upkeep(crate::ids::now_ms());
                        }
                        ticks
                    })
                    .await
                    .unwrap_or(0);
                }
            })
        });
        Ok(LogStore { inner, ticker })
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Writes a checkpoint now and deletes segments nothing refers to any more.
    pub async fn checkpoint(&self) -> Result<checkpoint::CheckpointStats, StoreError> {
        let i = self.inner.clone();
        tokio::task::spawn_blocking(move || i.checkpoint()).await.map_err(|_| StoreError::Closed)?
    }

    /// Moves the index entries of the oldest messages beyond `index_hot` to the cold index
    /// now (maintenance does it on its own on every tick). Returns the messages moved.
    pub async fn spill_index(&self) -> Result<u64, StoreError> {
        let i = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _m = i.maint.lock().map_err(|_| StoreError::Closed)?;
            i.spill()
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Runs maintenance now: next segment prepared when due, dedup window, expired tickets,
    /// spill, checkpoint when due.
    pub async fn maintain(&self) {
        let i = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || i.maintain(&mut 0)).await;
    }

    /// Messages whose index entries are in memory.
    pub fn indexed_in_memory(&self) -> usize {
        self.inner.state.read().in_memory()
    }

    /// Stops writing; later writes fail with [`StoreError::Closed`].
    pub fn close(&self) {
        if let Ok(mut w) = self.inner.writer.lock() {
            w.closed = true;
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        // On the pipeline's own writer thread (see `Store::wants_own_thread`) the work runs
        // right there: blocking that thread is what it is for. Elsewhere it moves to a
        // blocking thread, off the runtime's workers.
        if std::thread::current().name().is_some_and(|n| n.starts_with(crate::pipeline::WRITER_THREAD)) {
            return f(&self.inner);
        }
        let i = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&i)).await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
    }
}

impl Inner {
    fn writer_failed(&self, op: &'static str) {
        self.hooks.metrics.store_error(op);
        self.hooks.metrics.store_writer_ready.set(0);
        if self.writer_ok.swap(false, Ordering::SeqCst) {
            tracing::warn!(op, "log write failed: what was written after the last durable record is rolled back");
        }
    }

    fn writer_succeeded(&self) {
        if !self.writer_ok.swap(true, Ordering::SeqCst) {
            tracing::info!("log writer commits again");
        }
        self.hooks.metrics.store_writer_ready.set(1);
    }

    fn lock_writer(&self) -> Result<std::sync::MutexGuard<'_, Writer>, StoreError> {
        let w = self.writer.lock().map_err(|_| StoreError::Closed)?;
        if w.closed {
            return Err(StoreError::Closed);
        }
        Ok(w)
    }

    /// Appends `rec` durably (one write, one fdatasync), then applies it to the state. On any
    /// failure nothing of it stays in the log and the state is untouched.
    /// Returns the index entries of the messages the record added (taken under the same lock
    /// that applied it, before maintenance can move them to the cold index).
    fn commit(&self, w: &mut Writer, op: &'static str, rec: Record) -> Result<Vec<state::Meta>, StoreError> {
        if let Some(len) = w.dirty {
            if let Err(e) = w.app.roll_back(len) {
                self.writer_failed(op);
                return Err(e.into());
            }
            w.dirty = None;
        }
        // Everything up to here is durable and known to the state; a failure below cuts the
        // segment back to it, also after a sync that succeeded but was reported failed.
        let good = w.app.durable;
        let res = self.write_durably(w, &rec);
        let (seg, offset) = match res {
            Ok(at) => at,
            Err(e) => {
                self.writer_failed(op);
                match w.app.roll_back(good) {
                    Ok(()) => w.dirty = None,
                    Err(re) => {
                        w.dirty = Some(good);
                        tracing::error!(error = %re, "log roll-back failed; retried before the next write");
                    }
                }
                return Err(e);
            }
        };
        self.writer_succeeded();
        let hot = self.settings.hot_bytes;
        let added = {
            let mut st = self.state.write();
            let first = st.next_pos;
            st.apply(rec, seg, offset, hot).map_err(log_err)?;
            st.end = state::Pos { seg, offset: w.app.written };
            self.hooks.metrics.store_indexed_messages.set(st.in_memory() as i64);
            (first..st.next_pos).filter_map(|p| st.msgs.get(&p).cloned()).collect()
        };
        if w.app.written >= self.settings.segment_bytes {
            let prepared = w.prepared.take() == Some(w.app.id + 1);
            if let Err(e) = w.app.roll_over(prepared) {
                // The current segment simply grows; the next write tries again.
                tracing::warn!(error = %e, "could not start a new log segment");
                self.hooks.metrics.store_error("segment");
            }
        }
        Ok(added)
    }

    fn write_durably(&self, w: &mut Writer, rec: &Record) -> Result<(u64, u64), StoreError> {
        let faults = &self.hooks.faults;
        faults.check(FaultStep::Begin)?;
        let body = rmp_serde::to_vec(rec).map_err(|e| log_err(format!("encode: {e}")))?;
        w.buf.clear();
        segment::frame(&mut w.buf, &body);
        let seg = w.app.id;
        if faults.check(FaultStep::Insert).is_err() {
            // Half a record reaches the file, as a crash or a full disk mid-write leaves it.
            let half = w.buf.len() / 2;
            w.app.write(&w.buf[..half])?;
            return Err(StoreError::Injected(super::faults::InjectedFault(FaultStep::Insert)));
        }
        let offset = w.app.write(&w.buf)?;
        faults.check(FaultStep::Commit)?;
        w.app.sync()?;
        // A failure reported after the sync: the record may be durable, but nobody may be told
        // so; it is rolled back like any other failure.
        faults.check(FaultStep::Fsync)?;
        w.since_checkpoint += w.buf.len() as u64;
        if w.buf.capacity() > 4 * 1024 * 1024 {
            w.buf = Vec::new();
        }
        Ok((seg, offset))
    }

    /// The message at `pos` (indexed in memory), from memory or from its segment.
    fn message(&self, st: &State, pos: u64) -> Result<Arc<StoredMessage>, StoreError> {
        let meta = st.meta(pos).ok_or_else(|| log_err(format!("message {pos} not indexed")))?;
        if let Some(m) = &meta.hot {
            return Ok(m.clone());
        }
        self.read_cold(meta.loc)
    }

    /// The messages of the record at `seg`/`offset`.
    fn read_batch(&self, seg: u64, offset: u64) -> Result<Vec<Logged>, StoreError> {
        let body = self.read_body(seg, offset)?;
        match rmp_serde::from_slice::<Record>(&body) {
            Ok(Record::Batch { msgs, .. }) => Ok(msgs),
            _ => Err(log_err(format!("segment {seg} offset {offset}: no messages there"))),
        }
    }

    /// The body of the record at `seg`/`offset` (checksum checked).
    fn read_body(&self, seg: u64, offset: u64) -> Result<Vec<u8>, StoreError> {
        let file = {
            let mut files = self.files.lock().map_err(|_| StoreError::Closed)?;
            match files.get(&seg) {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(File::open(segment::path(&self.dir, seg))?);
                    files.insert(seg, f.clone());
                    f
                }
            }
        };
        Ok(segment::read_record(&file, offset)?)
    }

    fn read_cold(&self, loc: state::Loc) -> Result<Arc<StoredMessage>, StoreError> {
        let mut msgs = self.read_batch(loc.seg, loc.offset)?;
        if (loc.index as usize) < msgs.len() {
            return Ok(Arc::new(msgs.swap_remove(loc.index as usize).msg));
        }
        Err(log_err(format!("segment {} offset {}: no message {} there", loc.seg, loc.offset, loc.index)))
    }

    /// Entries (seq, position) to fetch, with the hot ones resolved; cold ones read after the
    /// state lock is released.
    fn resolve(&self, picked: Vec<Pick>, to: &Address) -> Result<Vec<InboxEntry>, StoreError> {
        let mut out = Vec::with_capacity(picked.len());
        let mut cold = Vec::new();
        let mut spilled = Vec::new();
        {
            let st = self.state.read();
            for Pick { seq, pos, loc } in picked {
                if pos == LOST {
                    out.push(Ok(InboxEntry { seq, msg: Arc::new(lost(to)) }));
                    continue;
                }
                if let Some(loc) = loc {
                    cold.push((out.len(), loc));
                    out.push(Err(seq));
                    continue;
                }
                match st.meta(pos) {
                    Some(meta) => match &meta.hot {
                        Some(m) => out.push(Ok(InboxEntry { seq, msg: m.clone() })),
                        None => {
                            cold.push((out.len(), meta.loc));
                            out.push(Err(seq));
                        }
                    },
                    // A 1:1 message moved to the cold index meanwhile (its entries there never
                    // change).
                    None if pos < st.cold_floor && to.kind == AddressKind::User => {
                        spilled.push((out.len(), seq));
                        out.push(Err(seq));
                    }
                    // An entry pruned meanwhile is left out.
                    None => {}
                }
            }
        }
        for (i, seq) in spilled {
            let found = self.cold.inbox(&to.id, seq, seq, 1)?;
            let loc = found.first().and_then(|e| e.loc).ok_or_else(|| {
                log_err(format!("inbox {} seq {seq} is neither in memory nor in the cold index", to.id))
            })?;
            cold.push((i, loc));
        }
        for (i, loc) in cold {
            let msg = self.read_cold(loc)?;
            if let Err(seq) = out[i] {
                out[i] = Ok(InboxEntry { seq, msg });
            }
        }
        Ok(out.into_iter().filter_map(Result::ok).collect())
    }

    fn plan(&self, batch: &[NewMessage]) -> Result<Vec<Plan>, StoreError> {
        let st = self.state.read();
        let mut heads: HashMap<&str, u64> = HashMap::new();
        let mut room_heads: HashMap<&str, u64> = HashMap::new();
        let mut in_batch: HashMap<(&str, &str), usize> = HashMap::new();
        let mut plans = Vec::with_capacity(batch.len());
        for (i, m) in batch.iter().enumerate() {
            if let Some(&j) = in_batch.get(&(m.sender.as_str(), m.client_msg_id.as_str())) {
                plans.push(Plan::DuplicateInBatch(j));
                continue;
            }
            if let Some((msg, seq)) = self.find_duplicate(&st, m)? {
                plans.push(Plan::Duplicate { msg, seq });
                continue;
            }
            let plan = match m.to.kind {
                AddressKind::User => {
                    let s = heads.entry(&m.sender).or_insert_with(|| st.inbox_head(&m.sender));
                    *s += 1;
                    let seq = *s;
                    let to_seq = (m.to.id != m.sender).then(|| {
                        let r = heads.entry(&m.to.id).or_insert_with(|| st.inbox_head(&m.to.id));
                        *r += 1;
                        *r
                    });
                    Plan::New { seq, to_seq }
                }
                AddressKind::Room => match st.rooms.get(&m.to.id) {
                    None => {
                        Plan::Refused(Refusal { code: ErrorCode::NoSuchRoom, message: format!("no room {}", m.to.id) })
                    }
                    Some(r) => {
                        let h = room_heads.entry(&m.to.id).or_insert(r.head);
                        *h += 1;
                        Plan::New { seq: *h, to_seq: None }
                    }
                },
            };
            if matches!(plan, Plan::New { .. }) {
                in_batch.insert((m.sender.as_str(), m.client_msg_id.as_str()), i);
            }
            plans.push(plan);
        }
        Ok(plans)
    }

    /// The stored message with the same (sender, client id) within the dedup window, and its
    /// seq in the sender's inbox (or the room's log).
    fn find_duplicate(&self, st: &State, m: &NewMessage) -> Result<Option<(Arc<StoredMessage>, u64)>, StoreError> {
        let in_memory = |pos: u64| -> Result<(Arc<StoredMessage>, u64), StoreError> {
            Ok((self.message(st, pos)?, st.meta(pos).map_or(0, |meta| meta.seq)))
        };
        if !st.dedup_exact.is_empty() {
            if let Some(&pos) = st.dedup_exact.get(&(m.sender.clone(), m.client_msg_id.clone())) {
                return in_memory(pos).map(Some);
            }
        }
        let key = dedup_key(&m.sender, &m.client_msg_id);
        let same = |stored: &StoredMessage| stored.sender == m.sender && stored.client_msg_id == m.client_msg_id;
        if let Some(&pos) = st.dedup.get(&key) {
            let found = in_memory(pos)?;
            if same(&found.0) {
                return Ok(Some(found));
            }
        }
        // Spilled messages still inside the window have their keys in the cold index.
        if st.dedup_floor < st.cold_floor {
            for hit in self.cold.dedup(key)? {
                if (st.dedup_floor..st.cold_floor).contains(&hit.pos) {
                    let msg = self.read_cold(hit.loc)?;
                    if same(&msg) {
                        return Ok(Some((msg, hit.seq)));
                    }
                }
            }
        }
        Ok(None)
    }

    fn append(
        &self,
        batch: Vec<NewMessage>,
        cursors: Vec<CursorUpdate>,
    ) -> Result<Vec<Result<Appended, Refusal>>, StoreError> {
        let cpu = thread_cpu();
        let res = self.append_timed(batch, cursors);
        self.hooks.metrics.store_writer_cpu.inc_by((thread_cpu() - cpu).max(0.0));
        res
    }

    fn append_timed(
        &self,
        batch: Vec<NewMessage>,
        cursors: Vec<CursorUpdate>,
    ) -> Result<Vec<Result<Appended, Refusal>>, StoreError> {
        let mut w = self.lock_writer()?;
        let plans = self.plan(&batch)?;
        let (best_inbox, best_room) = super::coalesce_cursors(&cursors);
        let cursors: Vec<CursorRec> = best_inbox
            .into_iter()
            .chain(best_room)
            .map(|c| CursorRec { user: c.user.clone(), device: c.device_id.clone(), room: c.room.clone(), seq: c.seq })
            .collect();
        // The new messages move into the record; the state keeps them (no copy).
        let msgs: Vec<Logged> = batch
            .into_iter()
            .zip(&plans)
            .filter_map(|(msg, p)| match p {
                Plan::New { seq, to_seq } => Some(Logged { msg, seq: *seq, to_seq: *to_seq }),
                _ => None,
            })
            .collect();
        let added = if !msgs.is_empty() || !cursors.is_empty() {
            self.commit(&mut w, "append", Record::Batch { msgs, cursors })?
        } else {
            Vec::new()
        };
        drop(w);
        // Answers from the state the record built.
        let mut added = added.into_iter();
        let mut out: Vec<Result<Appended, Refusal>> = Vec::with_capacity(plans.len());
        for p in &plans {
            let r = match p {
                Plan::New { seq, to_seq } => {
                    let meta = added.next().ok_or_else(|| log_err("a committed message is not indexed"))?;
                    let msg = match meta.hot {
                        Some(m) => m,
                        None => self.read_cold(meta.loc)?,
                    };
                    let mut recipients = Vec::new();
                    if msg.to.kind == AddressKind::User {
                        recipients.reserve(2);
                        recipients.push((msg.sender.clone(), *seq));
                        if let Some(t) = to_seq {
                            recipients.push((msg.to.id.clone(), *t));
                        }
                    }
                    Ok(Appended { msg, sender_seq: *seq, recipients, duplicate: false })
                }
                Plan::Duplicate { msg, seq } => {
                    Ok(Appended { msg: msg.clone(), sender_seq: *seq, recipients: Vec::new(), duplicate: true })
                }
                Plan::DuplicateInBatch(j) => match &out[*j] {
                    Ok(a) => Ok(Appended { recipients: Vec::new(), duplicate: true, ..a.clone() }),
                    Err(e) => Err(e.clone()),
                },
                Plan::Refused(r) => Err(r.clone()),
            };
            out.push(r);
        }
        Ok(out)
    }

    /// Commits `rec` if `check`, run on the state under the writer lock (so nothing changes
    /// between the check and the write), says so; returns whether it was written.
    fn commit_if(
        &self,
        op: &'static str,
        check: impl FnOnce(&State) -> Result<bool, StoreError>,
        rec: Record,
    ) -> Result<bool, StoreError> {
        let mut w = self.lock_writer()?;
        if !check(&self.state.read())? {
            return Ok(false);
        }
        self.commit(&mut w, op, rec)?;
        Ok(true)
    }

    fn write_one(&self, op: &'static str, rec: Record) -> Result<(), StoreError> {
        let mut w = self.lock_writer()?;
        self.commit(&mut w, op, rec).map(drop)
    }

    /// Periodic work: the next segment, dedup window and spill ([`Inner::upkeep`]), expired
    /// tickets, checkpoint when due.
    fn maintain(&self, idle_ticks: &mut u32) {
        let now = crate::ids::now_ms();
        self.upkeep(now);
        self.tickets_and_checkpoint(now, idle_ticks);
    }

    /// What runs on every tick: the next segment prepared when due, the index kept near its
    /// hot size.
    fn upkeep(&self, now: u64) {
        self.prepare_segment();
        self.index_upkeep(now);
    }

    /// Prepares the next segment once the current one is half full (see [`segment::prepare`]):
    /// written outside the writer's lock, offered to the writer only if it still follows the
    /// current segment. Without one (preallocation off, a full disk, not ready in time) the
    /// writer creates the next segment itself.
    fn prepare_segment(&self) {
        if !self.settings.preallocate {
            return;
        }
        let next = match self.writer.lock() {
            Ok(w) if !w.closed && w.prepared.is_none() && w.app.written >= self.settings.segment_bytes / 2 => {
                w.app.id + 1
            }
            _ => return,
        };
        let started = std::time::Instant::now();
        if let Err(e) = segment::prepare(&self.dir, next, self.settings.segment_bytes) {
            self.hooks.metrics.store_error("prepare");
            tracing::warn!(error = %e, segment = next, "could not prepare the next log segment; it is created when needed");
            return;
        }
        self.hooks.metrics.store_op("prepare", started.elapsed().as_secs_f64());
        let taken = match self.writer.lock() {
            Ok(mut w) if w.app.id + 1 == next && w.prepared.is_none() => {
                w.prepared = Some(next);
                true
            }
            _ => false,
        };
        if !taken {
            // The writer moved on without it.
            let _ = std::fs::remove_file(segment::prep_path(&self.dir, next));
        }
    }

    /// Moves the dedup window on to `now` (dropping spilled keys that left it) and spills the
    /// index beyond the hot range.
    fn index_upkeep(&self, now: u64) {
        let window = u64::try_from(self.settings.dedup_window.as_millis()).unwrap_or(u64::MAX);
        if let Ok(_m) = self.maint.lock() {
            let left = self.state.write().expire_dedup(now.saturating_sub(window));
            for (from, to) in left {
                // Keys below the dedup floor are never consulted: dropping them only frees disk.
                if let Err(e) = self.cold.drop_dedup(from, to) {
                    tracing::warn!(error = %e, "could not drop expired dedup keys from the cold index");
                }
            }
            if let Err(e) = self.spill() {
                self.hooks.metrics.store_error("spill");
                tracing::warn!(error = %e, "could not move index entries to the cold index");
            }
        }
    }

    /// Drops expired tickets and writes a checkpoint when one is due.
    fn tickets_and_checkpoint(&self, now: u64, idle_ticks: &mut u32) {
        let expired = self.state.read().tickets.values().any(|(_, exp)| *exp <= now);
        if expired {
            if let Err(e) = self.write_one("expire_tickets", Record::TicketsExpired { before_ms: now }) {
                tracing::warn!(error = %e, "could not drop expired tickets");
            }
        }
        let due = {
            let Ok(w) = self.writer.lock() else { return };
            w.since_checkpoint >= self.settings.checkpoint_bytes || (w.since_checkpoint > 0 && *idle_ticks >= 10)
        };
        let pending_fault = self.hooks.faults.pending(FaultStep::Checkpoint) > 0;
        if due || pending_fault {
            *idle_ticks = 0;
            if let Err(e) = self.checkpoint() {
                tracing::warn!(error = %e, "log checkpoint failed; the log is replayed from the previous one");
            }
        }
    }

    /// Moves index entries beyond `index_hot` to the cold index, oldest first, in steps of at
    /// most [`SPILL_STEP`] positions: read the step's records from the log (no lock held),
    /// write their entries to the cold index, then forget them in memory (write lock, brief).
    /// The caller holds `maint`.
    fn spill(&self) -> Result<u64, StoreError> {
        let limit = self.settings.index_hot;
        let mut moved = 0u64;
        loop {
            let (from, to, dedup_from, metas) = {
                let st = self.state.read();
                if st.msgs.len() <= limit {
                    break;
                }
                let keep = (limit as u64 / 4) * 3;
                let from = st.cold_floor;
                let to = st.next_pos.saturating_sub(keep).min(from + SPILL_STEP).max(from + 1);
                let metas: Vec<(u64, state::Loc, u64, u64, u64)> =
                    (from..to).filter_map(|p| st.msgs.get(&p).map(|m| (p, m.loc, m.seq, m.ts, m.key))).collect();
                (from, to, st.dedup_floor, metas)
            };
            let mut spill = cold::Spill { from, to, dedup_from, ..Default::default() };
            // Records are read back once each, decoding only who each message is from and to.
            let mut i = 0;
            while let Some(&(_, first, ..)) = metas.get(i) {
                let at = (first.seg, first.offset);
                let bytes = self.read_body(at.0, at.1)?;
                let ids = match rmp_serde::from_slice::<state::RecordIds>(&bytes) {
                    Ok(state::RecordIds::Batch { msgs, .. }) => msgs,
                    Err(e) => return Err(log_err(format!("segment {} offset {}: {e}", at.0, at.1))),
                };
                while let Some(&(pos, loc, seq, ts, key)) = metas.get(i).filter(|m| (m.1.seg, m.1.offset) == at) {
                    i += 1;
                    spill.max_ts = spill.max_ts.max(ts);
                    let Some(l) = ids.get(loc.index as usize) else {
                        return Err(log_err(format!(
                            "segment {} offset {}: no message {} there",
                            at.0, at.1, loc.index
                        )));
                    };
                    if l.msg.to.kind != AddressKind::User {
                        continue;
                    }
                    spill.msgs.push(cold::SpilledMsg { pos, loc, seq, key });
                    spill.inbox.push((l.msg.sender.to_owned(), l.seq, pos, loc));
                    if let Some(to_seq) = l.to_seq {
                        spill.inbox.push((l.msg.to.id.to_owned(), to_seq, pos, loc));
                    }
                }
            }
            // Grouped by user (stable: each user's entries stay in seq order), outside the lock.
            spill.inbox.sort_by(|a, b| a.0.cmp(&b.0));
            self.cold.write(&spill)?;
            let locked = std::time::Instant::now();
            let mut st = self.state.write();
            let before = st.in_memory();
            st.apply_spill(&spill).map_err(log_err)?;
            let step = before.saturating_sub(st.in_memory());
            self.hooks.metrics.store_indexed_messages.set(st.in_memory() as i64);
            drop(st);
            // How long commits' step into the index waited for this one.
            let held = locked.elapsed();
            self.hooks.metrics.store_op("spill_lock", held.as_secs_f64());
            tracing::debug!(moved = step, lock_us = held.as_micros() as u64, "index entries moved to the cold index");
            moved += step as u64;
        }
        Ok(moved)
    }

    fn checkpoint(&self) -> Result<checkpoint::CheckpointStats, StoreError> {
        let started = std::time::Instant::now();
        let res = checkpoint::write(self);
        match &res {
            Ok(_) => self.hooks.metrics.store_op("checkpoint", started.elapsed().as_secs_f64()),
            Err(_) => self.hooks.metrics.store_error("checkpoint"),
        }
        res
    }
}

#[async_trait]
impl Store for LogStore {
    async fn append(
        &self,
        batch: Vec<NewMessage>,
        cursors: Vec<CursorUpdate>,
    ) -> Result<Vec<Result<Appended, Refusal>>, StoreError> {
        self.blocking(move |i| i.append(batch, cursors)).await
    }

    async fn fetch_inbox(
        &self,
        user: &str,
        after: u64,
        until: Option<u64>,
        limit: u32,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        let (cold_seqs, mut picked): (_, Vec<Pick>) = {
            let st = self.inner.state.read();
            let Some(inbox) = st.inboxes.get(user) else { return Ok(Vec::new()) };
            let until = until.unwrap_or(u64::MAX).min(inbox.head());
            let from = after.saturating_add(1);
            // Seqs up to `inbox.cold` are in the cold index (and stay there): read after the lock.
            let cold_seqs = (from <= inbox.cold).then(|| (from, until.min(inbox.cold)));
            let hot = (from.max(inbox.cold + 1)..=until)
                .filter_map(|seq| inbox.hot_pos(seq).map(|pos| Pick { seq, pos, loc: None }))
                .take(limit as usize)
                .collect();
            (cold_seqs, hot)
        };
        if let Some((from, to)) = cold_seqs {
            let user = user.to_string();
            let cold = self.blocking(move |i| i.cold.inbox(&user, from, to, limit as usize)).await?;
            let mut cold: Vec<Pick> = cold.into_iter().map(|e| Pick { seq: e.seq, pos: e.pos, loc: e.loc }).collect();
            cold.extend(picked);
            cold.truncate(limit as usize);
            picked = cold;
        }
        self.resolve_async(picked, Address::user(user)).await
    }

    async fn inbox_head(&self, user: &str) -> Result<u64, StoreError> {
        Ok(self.inner.state.read().inbox_head(user))
    }

    async fn device_cursor(&self, user: &str, device_id: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.inner.state.read().cursors.get(&(user.to_string(), device_id.to_string())).copied())
    }

    async fn create_ticket(&self, hash: &str, user: &str, expires_ms: u64) -> Result<(), StoreError> {
        let rec = Record::Ticket { hash: hash.into(), user: user.into(), expires_ms };
        self.blocking(move |i| i.write_one("create_ticket", rec)).await
    }

    async fn consume_ticket(&self, hash: &str, now_ms: u64) -> Result<TicketUse, StoreError> {
        if !self.inner.state.read().tickets.contains_key(hash) {
            return Ok(TicketUse::Invalid);
        }
        let hash = hash.to_string();
        self.blocking(move |i| {
            let mut w = i.lock_writer()?;
            // Checked again under the writer: one consumer only.
            let Some((user, expires)) = i.state.read().tickets.get(&hash).cloned() else {
                return Ok(TicketUse::Invalid);
            };
            i.commit(&mut w, "consume_ticket", Record::TicketUsed { hash })?;
            Ok(if expires <= now_ms { TicketUse::Expired } else { TicketUse::Valid(user) })
        })
        .await
    }

    fn wants_own_thread(&self) -> bool {
        true
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match self.inner.writer.lock() {
            Ok(w) if !w.closed => Ok(()),
            _ => Err(StoreError::Closed),
        }
    }

    async fn ready(&self) -> Result<(), StoreError> {
        // A disk this full fails the next batch: not ready, without writing anything.
        if let Some(free) = free_bytes(&self.inner.dir) {
            if free < MIN_FREE_BYTES {
                return Err(log_err(format!("{} has {free} bytes free (disk full)", self.inner.dir.display())));
            }
        }
        if self.inner.writer_ok.load(Ordering::SeqCst) {
            return self.ping().await;
        }
        self.blocking(|i| i.write_one("ready", Record::Mark)).await
    }

    async fn set_cursor(&self, user: &str, device_id: &str, room: Option<&str>, seq: u64) -> Result<(), StoreError> {
        let rec = Record::SetCursor(CursorRec {
            user: user.into(),
            device: device_id.into(),
            room: room.map(Into::into),
            seq,
        });
        self.blocking(move |i| i.write_one("set_cursor", rec)).await
    }

    async fn count_from(&self, sender: &str) -> Result<u64, StoreError> {
        Ok(self.inner.state.read().sent.get(sender).copied().unwrap_or(0))
    }

    async fn create_room(&self, room: &str, _now_ms: u64) -> Result<bool, StoreError> {
        let (room, rec) = (room.to_string(), Record::RoomCreated { room: room.to_string() });
        self.blocking(move |i| i.commit_if("create_room", |st| Ok(!st.rooms.contains_key(&room)), rec)).await
    }

    async fn delete_room(&self, room: &str) -> Result<bool, StoreError> {
        let (room, rec) = (room.to_string(), Record::RoomDeleted { room: room.to_string() });
        self.blocking(move |i| i.commit_if("delete_room", |st| Ok(st.rooms.contains_key(&room)), rec)).await
    }

    async fn room_head(&self, room: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.inner.state.read().rooms.get(room).map(|r| r.head))
    }

    async fn add_member(&self, room: &str, user: &str, _now_ms: u64) -> Result<bool, StoreError> {
        let (room, user) = (room.to_string(), user.to_string());
        let rec = Record::MemberAdded { room: room.clone(), user: user.clone() };
        self.blocking(move |i| {
            i.commit_if(
                "add_member",
                |st| match st.rooms.get(&room) {
                    None => Err(log_err(format!("no room {room}"))),
                    Some(r) => Ok(!r.members.contains(&user)),
                },
                rec,
            )
        })
        .await
    }

    async fn remove_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        let (room, user) = (room.to_string(), user.to_string());
        let rec = Record::MemberRemoved { room: room.clone(), user: user.clone() };
        self.blocking(move |i| {
            i.commit_if("remove_member", |st| Ok(st.rooms.get(&room).is_some_and(|r| r.members.contains(&user))), rec)
        })
        .await
    }

    async fn members(&self, room: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.inner.state.read().rooms.get(room).map(|r| r.members.iter().cloned().collect()).unwrap_or_default())
    }

    async fn rooms_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.inner.state.read().member_of.get(user).map(|s| s.iter().cloned().collect()).unwrap_or_default())
    }

    async fn fetch_room(
        &self,
        room: &str,
        after: u64,
        until: Option<u64>,
        limit: u32,
    ) -> Result<(Vec<InboxEntry>, u64), StoreError> {
        let (picked, first) = {
            let st = self.inner.state.read();
            let Some(r) = st.rooms.get(room) else { return Ok((Vec::new(), 1)) };
            let first = r.first();
            let until = until.unwrap_or(u64::MAX).min(r.head);
            let picked: Vec<Pick> = (after.saturating_add(1).max(first)..=until)
                .filter_map(|seq| r.log.get((seq - first) as usize).map(|p| Pick { seq, pos: *p, loc: None }))
                .take(limit as usize)
                .collect();
            // The oldest kept seq, as the SQL stores report it: the first message still there.
            let kept = r.log.iter().position(|p| *p != LOST).map_or(r.head + 1, |i| first + i as u64);
            (picked, kept)
        };
        Ok((self.resolve_async(picked, Address::room(room)).await?, first))
    }

    async fn room_cursor(&self, user: &str, device_id: &str, room: &str) -> Result<Option<u64>, StoreError> {
        let st = self.inner.state.read();
        Ok(st.rooms.get(room).and_then(|r| r.cursors.get(&(user.to_string(), device_id.to_string())).copied()))
    }

    async fn prune_rooms(&self, max_count: u64, min_ts_ms: u64) -> Result<u64, StoreError> {
        self.blocking(move |i| {
            let mut w = i.lock_writer()?;
            let (cuts, gone) = {
                let st = i.state.read();
                let mut cuts = Vec::new();
                let mut gone = 0;
                for (id, r) in &st.rooms {
                    let first = r.first();
                    let mut new_first = first.max((r.head + 1).saturating_sub(max_count));
                    // By age: seqs are in time order, so cut through the old ones.
                    for (k, pos) in r.log.iter().enumerate() {
                        let seq = first + k as u64;
                        if seq < new_first {
                            continue;
                        }
                        let old = *pos == LOST || st.meta(*pos).is_some_and(|m| m.ts < min_ts_ms);
                        if !old {
                            break;
                        }
                        new_first = seq + 1;
                    }
                    if new_first > first {
                        gone += r.log.iter().take((new_first - first) as usize).filter(|p| **p != LOST).count() as u64;
                        cuts.push((id.clone(), new_first));
                    }
                }
                (cuts, gone)
            };
            if !cuts.is_empty() {
                i.commit(&mut w, "prune_rooms", Record::Pruned(cuts))?;
            }
            Ok(gone)
        })
        .await
    }
}

impl LogStore {
    async fn resolve_async(&self, picked: Vec<Pick>, to: Address) -> Result<Vec<InboxEntry>, StoreError> {
        let all_hot = {
            let st = self.inner.state.read();
            picked.iter().all(|p| match st.meta(p.pos) {
                Some(m) => m.hot.is_some(),
                None => p.loc.is_none() && (p.pos == LOST || p.pos >= st.cold_floor),
            })
        };
        if all_hot {
            self.inner.resolve(picked, &to)
        } else {
            self.blocking(move |i| i.resolve(picked, &to)).await
        }
    }
}

/// An entry to fetch: seq, message position, and where it is logged when that is known
/// already (read from the cold index).
struct Pick {
    seq: u64,
    pos: u64,
    loc: Option<state::Loc>,
}

/// How often the index is kept near its hot size (at most).
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Positions moved to the cold index per step (one write lock each: measured 32-64 ms for
/// 65,536 on a loaded 2-core machine, so steps are kept small).
pub const SPILL_STEP: u64 = 8_192;

/// Content type of the placeholder delivered for a seq whose record a repair cut out.
pub const LOST_CONTENT_TYPE: &str = "application/vnd.tether.lost";

/// The placeholder for a seq whose message was lost to a repair: devices keep a gapless log and
/// apps can show that something is missing.
fn lost(to: &Address) -> StoredMessage {
    StoredMessage {
        msg_id: 0,
        sender: String::new(),
        sender_device: String::new(),
        client_msg_id: String::new(),
        to: to.clone(),
        ts: 0,
        content_type: LOST_CONTENT_TYPE.into(),
        payload: Vec::new(),
    }
}

/// CPU time of the calling thread, seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a timespec we own; CLOCK_THREAD_CPUTIME_ID needs nothing else.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Free space below which the store reports itself not ready.
pub const MIN_FREE_BYTES: u64 = 1024 * 1024;

/// Bytes available to this process on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a statvfs struct we own.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::useless_conversion)] // c_ulong / fsblkcnt_t differ by platform
    let free = u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize));
    Some(free)
}

/// Takes the exclusive lock of the log in `dir` (its `LOCK` file, held while the returned
/// file is open): `None` when another process holds it.
fn lock_dir(dir: &Path) -> Result<Option<File>, StoreError> {
    let lock = File::options().create(true).truncate(false).write(true).open(dir.join("LOCK"))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(None);
    }
    Ok(Some(lock))
}

/// What `tether-server store repair` did.
#[derive(Debug)]
pub struct RepairReport {
    /// Segments repaired.
    pub repaired: Vec<segment::Repaired>,
}

/// Cuts damaged records out of every segment of the log in `dir` (the node must be stopped),
/// keeping a copy of each damaged file next to it. What a damaged record held is lost; every
/// intact record before and after it is kept.
pub fn repair(dir: &Path) -> Result<RepairReport, StoreError> {
    let Some(_lock) = lock_dir(dir)? else {
        return Err(log_err(format!("{} is in use by a running tether-server: stop it first", dir.display())));
    };
    let mut repaired = Vec::new();
    for id in segment::list(dir)? {
        if let Some(r) = segment::repair(dir, id).map_err(log_err)? {
            repaired.push(r);
        }
    }
    Ok(RepairReport { repaired })
}
