//! Fault injection for the store's write path, so tests can fail any step of a commit and
//! check that no failure is ever followed by a success answer.
//!
//! A [`Faults`] is shared by the store and whoever injects (unit tests directly, end-to-end
//! tests through the admin API of a node started with `--fault-injection`). Each [`FaultStep`]
//! holds a count of the next operations to fail; a step with a count of zero costs one atomic
//! load.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// A step of the store's write path that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultStep {
    /// Fails right after `BEGIN IMMEDIATE` succeeded: the transaction is open.
    Begin,
    /// Fails right after a batch's rows were inserted: the transaction is open and dirty.
    Insert,
    /// Fails instead of `COMMIT`: the transaction is open and never committed.
    Commit,
    /// Fails right after `COMMIT` succeeded, as a failed fsync does: the outcome is unknown to
    /// the caller (the rows may well be durable), so nobody may be told it succeeded.
    Fsync,
    /// Fails a background WAL checkpoint.
    Checkpoint,
}

impl FaultStep {
    /// Every step, in commit order.
    pub const ALL: [FaultStep; 5] =
        [FaultStep::Begin, FaultStep::Insert, FaultStep::Commit, FaultStep::Fsync, FaultStep::Checkpoint];

    /// The name used in metrics and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            FaultStep::Begin => "begin",
            FaultStep::Insert => "insert",
            FaultStep::Commit => "commit",
            FaultStep::Fsync => "fsync",
            FaultStep::Checkpoint => "checkpoint",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The error an injected fault produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("injected fault at {}", .0.name())]
pub struct InjectedFault(pub FaultStep);

/// Pending faults per step, and a page limit that makes the database file "full".
#[derive(Debug, Default)]
pub struct Faults {
    pending: [AtomicU32; 5],
    /// `PRAGMA max_page_count` applied to the writer (0 = SQLite's default): a real
    /// `SQLITE_FULL` from SQLite itself, without a small filesystem.
    max_pages: AtomicU64,
}

impl Faults {
    /// No faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `times` operations reaching `step` fail.
    pub fn fail(&self, step: FaultStep, times: u32) {
        self.pending[step.index()].store(times, Ordering::SeqCst);
    }

    /// Clears every pending fault and the page limit.
    pub fn clear(&self) {
        for p in &self.pending {
            p.store(0, Ordering::SeqCst);
        }
        self.max_pages.store(0, Ordering::SeqCst);
    }

    /// Faults still pending at `step`.
    pub fn pending(&self, step: FaultStep) -> u32 {
        self.pending[step.index()].load(Ordering::SeqCst)
    }

    /// Consumes one pending fault at `step`, if there is one.
    pub fn check(&self, step: FaultStep) -> Result<(), InjectedFault> {
        let p = &self.pending[step.index()];
        if p.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        match p.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
            Ok(_) => Err(InjectedFault(step)),
            Err(_) => Ok(()),
        }
    }

    /// Limits the database to `pages` pages (0 lifts the limit); applied when the writer is
    /// next opened or used.
    pub fn set_max_pages(&self, pages: u64) {
        self.max_pages.store(pages, Ordering::SeqCst);
    }

    /// The page limit in force (0 = none).
    pub fn max_pages(&self) -> u64 {
        self.max_pages.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_fires_exactly_as_often_as_asked() {
        let f = Faults::new();
        assert!(f.check(FaultStep::Commit).is_ok());
        f.fail(FaultStep::Commit, 2);
        assert_eq!(f.check(FaultStep::Insert), Ok(()));
        assert_eq!(f.check(FaultStep::Commit), Err(InjectedFault(FaultStep::Commit)));
        assert_eq!(f.pending(FaultStep::Commit), 1);
        assert_eq!(f.check(FaultStep::Commit), Err(InjectedFault(FaultStep::Commit)));
        assert_eq!(f.check(FaultStep::Commit), Ok(()));
        f.fail(FaultStep::Begin, 5);
        f.clear();
        assert_eq!(f.check(FaultStep::Begin), Ok(()));
    }

    #[test]
    fn steps_have_stable_names() {
        let names: Vec<&str> = FaultStep::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["begin", "insert", "commit", "fsync", "checkpoint"]);
        let s: FaultStep = serde_json::from_str("\"fsync\"").expect("parse");
        assert_eq!(s, FaultStep::Fsync);
    }
}
