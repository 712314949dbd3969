//! File-backed journal of the session's durable state.
//!
//! A state directory holds `snapshot.json` (a whole [`PersistedState`]) and `journal.jsonl`
//! (the [`PersistOp`]s applied since, one JSON object per line). Opening replays the journal
//! onto the snapshot; [`StateStore::apply`] appends. When the journal grows past a threshold the
//! store writes a new snapshot atomically (temporary file, fsync, rename, fsync of the
//! directory) and truncates the journal.
//!
//! Crash safety:
//! * An append interrupted by a crash leaves a torn last line; opening drops it (and cuts it off
//!   the file). A bad line anywhere else is reported as [`StateError::Corrupt`].
//! * A crash between the snapshot's rename and the journal's truncation replays ops onto the
//!   state that already contains them, which [`PersistedState::apply`] makes harmless.
//!
//! No lock is taken: one process owns a directory at a time.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::{PersistOp, PersistedState};

/// File name of the snapshot.
pub const SNAPSHOT_FILE: &str = "snapshot.json";
/// File name of the journal.
pub const JOURNAL_FILE: &str = "journal.jsonl";
const SNAPSHOT_TMP: &str = "snapshot.json.tmp";
/// Snapshot format version. Fields added since (`room_cursors`) default when absent, so older
/// snapshots and journals still load; a journal with room ops cannot be read by an SDK older
/// than them.
const SNAPSHOT_VERSION: u32 = 1;

/// Default number of journal lines that triggers compaction.
pub const DEFAULT_COMPACT_OPS: u64 = 4096;
/// Default journal size in bytes that triggers compaction.
pub const DEFAULT_COMPACT_BYTES: u64 = 1024 * 1024;

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file operation failed.
    #[error("state i/o error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A journal line (1-based; 0 for the snapshot) is not a valid record.
    #[error("corrupt state at line {line}: {reason}")]
    Corrupt {
        /// 1-based journal line, or 0 for `snapshot.json`.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A record could not be encoded.
    #[error("cannot encode state: {0}")]
    Encode(#[from] serde_json::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_owned(), source }
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    state: PersistedState,
}

/// The journal of one state directory.
#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
    journal: File,
    state: PersistedState,
    journal_ops: u64,
    journal_bytes: u64,
    sync: bool,
    compact_ops: u64,
    compact_bytes: u64,
}

impl StateStore {
    /// Opens (creating if needed) the state directory `dir` and returns the store and the state
    /// it holds. A torn last journal line is dropped.
    pub fn open(dir: &Path) -> Result<(StateStore, PersistedState), StateError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let mut state = match fs::read(&snapshot_path) {
            Ok(bytes) => {
                let snap: Snapshot = serde_json::from_slice(&bytes)
                    .map_err(|e| StateError::Corrupt { line: 0, reason: format!("{SNAPSHOT_FILE}: {e}") })?;
                if snap.version != SNAPSHOT_VERSION {
                    return Err(StateError::Corrupt {
                        line: 0,
                        reason: format!("{SNAPSHOT_FILE}: unsupported version {}", snap.version),
                    });
                }
                snap.state
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => PersistedState::default(),
            Err(e) => return Err(io_err(&snapshot_path)(e)),
        };

        let journal_path = dir.join(JOURNAL_FILE);
        let mut journal = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&journal_path)
            .map_err(io_err(&journal_path))?;
        let mut bytes = Vec::new();
        journal.read_to_end(&mut bytes).map_err(io_err(&journal_path))?;
        let replay = replay(&bytes, &mut state)?;
        if replay.good_len < bytes.len() as u64 {
            // Cut the torn tail off so later appends start on a clean line.
            journal.set_len(replay.good_len).map_err(io_err(&journal_path))?;
            journal.sync_data().map_err(io_err(&journal_path))?;
        } else if replay.missing_newline {
            journal.write_all(b"\n").map_err(io_err(&journal_path))?;
        }

        let mut store = StateStore {
            dir: dir.to_owned(),
            journal,
            state: state.clone(),
            journal_ops: replay.ops,
            journal_bytes: replay.good_len + u64::from(replay.missing_newline),
            sync: true,
            compact_ops: DEFAULT_COMPACT_OPS,
            compact_bytes: DEFAULT_COMPACT_BYTES,
        };
        store.maybe_compact()?;
        Ok((store, state))
    }

    /// Whether every [`StateStore::apply`] and compaction ends with an fsync (default: yes).
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    /// Sets the compaction thresholds: journal lines and bytes (either one triggers).
    pub fn set_compact_threshold(&mut self, ops: u64, bytes: u64) {
        self.compact_ops = ops.max(1);
        self.compact_bytes = bytes.max(1);
    }

    /// The state as of the last successful [`StateStore::apply`].
    pub fn state(&self) -> &PersistedState {
        &self.state
    }

    /// Number of ops in the journal since the last snapshot.
    pub fn journal_len(&self) -> u64 {
        self.journal_ops
    }

    /// Appends `ops` to the journal in one write, then flushes (and fsyncs if enabled), and
    /// compacts when the journal passed its threshold.
    pub fn apply(&mut self, ops: &[PersistOp]) -> Result<(), StateError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for op in ops {
            serde_json::to_writer(&mut buf, op)?;
            buf.push(b'\n');
        }
        let path = self.dir.join(JOURNAL_FILE);
        self.journal.write_all(&buf).map_err(io_err(&path))?;
        self.journal.flush().map_err(io_err(&path))?;
        if self.sync {
            self.journal.sync_data().map_err(io_err(&path))?;
        }
        for op in ops {
            self.state.apply(op);
        }
        self.journal_ops += ops.len() as u64;
        self.journal_bytes += buf.len() as u64;
        self.maybe_compact()
    }

    fn maybe_compact(&mut self) -> Result<(), StateError> {
        if self.journal_ops >= self.compact_ops || self.journal_bytes >= self.compact_bytes {
            self.compact()?;
        }
        Ok(())
    }

    /// Writes the current state as the new snapshot, atomically, and empties the journal.
    pub fn compact(&mut self) -> Result<(), StateError> {
        let tmp = self.dir.join(SNAPSHOT_TMP);
        let snapshot = self.dir.join(SNAPSHOT_FILE);
        let body = serde_json::to_vec(&Snapshot { version: SNAPSHOT_VERSION, state: self.state.clone() })?;
        {
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(&body).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        fs::rename(&tmp, &snapshot).map_err(io_err(&snapshot))?;
        sync_dir(&self.dir)?;
        let journal = self.dir.join(JOURNAL_FILE);
        self.journal.set_len(0).map_err(io_err(&journal))?;
        if self.sync {
            self.journal.sync_all().map_err(io_err(&journal))?;
        }
        self.journal_ops = 0;
        self.journal_bytes = 0;
        Ok(())
    }
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StateError> {
    #[cfg(unix)]
    {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

struct Replay {
    /// Lines applied.
    ops: u64,
    /// Length of the journal prefix made of good lines.
    good_len: u64,
    /// The last good line lacks its newline.
    missing_newline: bool,
}

/// Applies every journal line in `bytes` to `state`. The last line may be torn (a crash during
/// an append) and is then ignored; a bad line before it is an error.
fn replay(bytes: &[u8], state: &mut PersistedState) -> Result<Replay, StateError> {
    let mut out = Replay { ops: 0, good_len: 0, missing_newline: false };
    let mut pos = 0usize;
    let mut line_no = 0usize;
    while pos < bytes.len() {
        line_no += 1;
        let rest = &bytes[pos..];
        let (line, next, terminated) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..i], pos + i + 1, true),
            None => (rest, bytes.len(), false),
        };
        let is_last = next >= bytes.len();
        if line.iter().all(u8::is_ascii_whitespace) {
            if terminated {
                out.good_len = next as u64;
            }
            pos = next;
            continue;
        }
        match serde_json::from_slice::<PersistOp>(line) {
            Ok(op) => {
                state.apply(&op);
                out.ops += 1;
                out.good_len = next as u64;
                out.missing_newline = !terminated;
            }
            Err(_) if is_last => break, // torn tail
            Err(e) => return Err(StateError::Corrupt { line: line_no, reason: e.to_string() }),
        }
        pos = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
