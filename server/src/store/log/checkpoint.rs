//! Checkpoints of the log store's state, and the deletion of segments they make unnecessary.
//!
//! A checkpoint is the whole index state (without message bodies) as of a log position,
//! written to `checkpoint-<segment>-<offset>.ckpt` as one checksummed record: written to a
//! temporary file, fsynced, renamed, directory fsynced. Start-up loads the newest intact one and
//! replays the log after its position. The two newest are kept; a segment older than the
//! older of them that no indexed message lives in any more is deleted (its records are in both
//! checkpoints), so disk use follows what retention keeps.

use std::path::{Path, PathBuf};

use super::segment;
use super::state::{Pos, State};
use super::{log_err, Inner};
use crate::store::faults::FaultStep;
use crate::store::StoreError;

fn name(pos: Pos) -> String {
    format!("checkpoint-{:020}-{:020}.ckpt", pos.seg, pos.offset)
}

/// Checkpoints in `dir`, newest first.
fn list(dir: &Path) -> std::io::Result<Vec<(Pos, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let n = e.file_name();
        let Some(n) = n.to_str() else { continue };
        let Some(rest) = n.strip_prefix("checkpoint-").and_then(|r| r.strip_suffix(".ckpt")) else { continue };
        let Some((seg, offset)) = rest.split_once('-') else { continue };
        if let (Ok(seg), Ok(offset)) = (seg.parse(), offset.parse()) {
            out.push((Pos { seg, offset }, e.path()));
        }
    }
    out.sort_by_key(|c| std::cmp::Reverse(c.0));
    Ok(out)
}

/// The newest intact checkpoint's state and the position to replay from; an empty state at the
/// log's first segment when there is none. A damaged checkpoint is passed over (with a
/// warning) for the one before it, whose segments are still all there.
pub fn load(dir: &Path) -> Result<(State, Pos), StoreError> {
    let found = list(dir)?;
    for (pos, path) in &found {
        let data = std::fs::read(path)?;
        let state = segment::unframe(&data).and_then(|body| rmp_serde::from_slice::<State>(body).ok());
        match state {
            Some(mut s) => {
                s.end = *pos;
                s.msgs.recount();
                return Ok((s, *pos));
            }
            None => tracing::warn!(checkpoint = %path.display(), "damaged checkpoint passed over for an older one"),
        }
    }
    if !found.is_empty() {
        return Err(log_err(format!(
            "every checkpoint in {} is damaged and older segments may be gone: refusing to start; see docs/operations.md \"Repairing the log\"",
            dir.display()
        )));
    }
    let first = segment::list(dir)?.first().copied().unwrap_or(1);
    if first != 1 {
        return Err(log_err(format!(
            "{} has no checkpoint and its first segment is {first}: segments before it are missing; refusing to start",
            dir.display()
        )));
    }
    Ok((State::default(), Pos { seg: 1, offset: 0 }))
}

/// What one checkpoint cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckpointStats {
    /// Size of the checkpoint file.
    pub bytes: u64,
    /// How long the index was read-locked (commits' index step waited at most this long).
    pub index_locked: std::time::Duration,
}

/// Writes a checkpoint of the current state, drops checkpoints older than the previous one and
/// deletes segments nothing needs any more.
pub(super) fn write(inner: &Inner) -> Result<CheckpointStats, StoreError> {
    inner.hooks.faults.check(FaultStep::Checkpoint)?;
    let dir = &inner.dir;
    // A copy of the index under the read lock (commits go on meanwhile; only their step into
    // the index waits, for the copy: mostly memcpy), encoded after it is released.
    let locked = std::time::Instant::now();
    let copy = inner.state.read().clone();
    let held = locked.elapsed();
    // The copy forgets what was spilled below its cold floor: that must be durable in the
    // cold index before a checkpoint relies on it.
    inner.cold.persist()?;
    let pos = copy.end;
    let body = rmp_serde::to_vec(&copy).map_err(|e| log_err(format!("encode checkpoint: {e}")))?;
    drop(copy);
    if list(dir)?.first().is_some_and(|(p, _)| *p == pos) {
        return Ok(CheckpointStats { bytes: 0, index_locked: held });
    }
    let mut framed = Vec::with_capacity(body.len() + 8);
    segment::frame(&mut framed, &body);
    drop(body);
    let tmp = dir.join("checkpoint.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&framed)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name(pos)))?;
    segment::sync_dir(dir)?;
    tracing::info!(bytes = framed.len(), index_locked_ms = held.as_millis() as u64, "log checkpoint written");
    if let Ok(mut w) = inner.writer.lock() {
        w.since_checkpoint = 0;
    }
    // Keep the two newest; segments before the older of them with no live message can go.
    let all = list(dir)?;
    for (_, path) in all.iter().skip(2) {
        std::fs::remove_file(path)?;
    }
    let stats = CheckpointStats { bytes: framed.len() as u64, index_locked: held };
    let Some((keep_from, _)) = all.get(1).or(all.first()) else { return Ok(stats) };
    let live = inner.state.read().live.clone();
    let mut removed = 0;
    for id in segment::list(dir)? {
        if id >= keep_from.seg {
            break;
        }
        if live.get(&id).copied().unwrap_or(0) == 0 {
            std::fs::remove_file(segment::path(dir, id))?;
            if let Ok(mut files) = inner.files.lock() {
                files.remove(&id);
            }
            removed += 1;
        }
    }
    if removed > 0 {
        segment::sync_dir(dir)?;
        tracing::info!(removed, "log segments no longer needed were deleted");
    }
    Ok(stats)
}
