//! The index behind the hot range, on disk: 1:1 messages' index entries (where each is logged,
//! its seq, time and dedup key), inbox seqs and dedup keys of positions below the state's
//! `cold_floor`, in an LSM-tree (fjall) in the log directory's `index/`.
//!
//! The log stays the point of durability; this index is a copy of what the log's records
//! built, moved out of memory by maintenance ([`super::LogStore::spill_index`]). It is written
//! before the in-memory state forgets what it holds, and synced before a checkpoint that
//! relies on it is written, so a crash at any point leaves either the entries in memory (the
//! checkpoint before the spill, plus the log replayed) or here. Entries are never changed once
//! written except dedup keys, which are dropped when they leave the dedup window; writing the
//! same spill twice (a crash between spill and checkpoint) writes the same values again.

use std::path::Path;

use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};

use super::state::{Loc, LOST};
use crate::store::StoreError;

/// One inbox entry read from the cold index: its seq, the message's position and where it is
/// logged (`None` for a seq lost to a repair, whose position is [`LOST`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColdEntry {
    /// Seq in the inbox.
    pub seq: u64,
    /// Position of the message.
    pub pos: u64,
    /// Where it is logged.
    pub loc: Option<Loc>,
}

/// A message found by its dedup key: position, location and seq in its sender's inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupHit {
    /// Position.
    pub pos: u64,
    /// Where it is logged.
    pub loc: Loc,
    /// Seq in the sender's inbox.
    pub seq: u64,
}

/// A spilled 1:1 message.
#[derive(Debug, Clone, Copy)]
pub struct SpilledMsg {
    /// Position.
    pub pos: u64,
    /// Where it is logged.
    pub loc: Loc,
    /// Seq in the sender's inbox.
    pub seq: u64,
    /// Dedup key.
    pub key: u64,
}

const LOC_LEN: usize = 8 + 8 + 4;

fn put_loc(b: &mut Vec<u8>, loc: &Loc) {
    b.extend_from_slice(&loc.seg.to_be_bytes());
    b.extend_from_slice(&loc.offset.to_be_bytes());
    b.extend_from_slice(&loc.index.to_be_bytes());
}

fn u64_at(b: &[u8], i: usize) -> Option<u64> {
    b.get(i..i + 8).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes)
}

fn loc_at(b: &[u8], i: usize) -> Option<Loc> {
    let index = b.get(i + 16..i + 20).and_then(|s| s.try_into().ok()).map(u32::from_be_bytes)?;
    Some(Loc { seg: u64_at(b, i)?, offset: u64_at(b, i + 8)?, index })
}

/// Inbox chunk values: per consecutive seq, position and location.
const INBOX_ENTRY: usize = 8 + LOC_LEN;
/// Dedup values: per message with the key, position, location and seq.
const DEDUP_ENTRY: usize = 8 + LOC_LEN + 8;

/// Settings of the cold index's LSM-tree (memory it may use).
#[derive(Debug, Clone, Copy)]
pub struct ColdSettings {
    /// Block cache, bytes.
    pub cache_bytes: u64,
    /// All memtables together, bytes.
    pub write_buffer_bytes: u64,
}

impl Default for ColdSettings {
    fn default() -> Self {
        ColdSettings { cache_bytes: 16 * 1024 * 1024, write_buffer_bytes: 24 * 1024 * 1024 }
    }
}

/// One spill: the index entries of positions `from..to` that leave memory.
#[derive(Debug, Default)]
pub struct Spill {
    /// First position.
    pub from: u64,
    /// One past the last position.
    pub to: u64,
    /// The 1:1 messages among them, in position order.
    pub msgs: Vec<SpilledMsg>,
    /// Inbox entries: user, seq, position, location; grouped by user, each user's in seq
    /// order.
    pub inbox: Vec<(String, u64, u64, Loc)>,
    /// Newest server timestamp of the range (for the dedup window).
    pub max_ts: u64,
    /// Dedup keys are written for positions from here on (older ones left the window).
    pub dedup_from: u64,
}

/// The on-disk index.
pub struct ColdIndex {
    ks: Keyspace,
    /// (user, first seq) -> entries of consecutive seqs spilled together.
    inbox: PartitionHandle,
    /// Dedup key -> the spilled messages with that key (more than one only on a collision).
    dedup: PartitionHandle,
    /// End position of a spill -> the dedup keys it wrote (to drop them with the window).
    dedup_keys: PartitionHandle,
}

fn cold_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Log(format!("cold index: {e}"))
}

fn inbox_key(user: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + user.len() + 8);
    k.extend_from_slice(&(user.len() as u32).to_be_bytes());
    k.extend_from_slice(user.as_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn dedup_entries(v: &[u8]) -> impl Iterator<Item = DedupHit> + '_ {
    v.chunks_exact(DEDUP_ENTRY)
        .filter_map(|c| Some(DedupHit { pos: u64_at(c, 0)?, loc: loc_at(c, 8)?, seq: u64_at(c, 8 + LOC_LEN)? }))
}

impl ColdIndex {
    /// Opens (or creates) the index in `dir`.
    pub fn open(dir: &Path, settings: ColdSettings) -> Result<ColdIndex, StoreError> {
        let ks = fjall::Config::new(dir)
            .cache_size(settings.cache_bytes)
            .max_write_buffer_size(settings.write_buffer_bytes.max(1024 * 1024))
            .max_journaling_size(32 * 1024 * 1024)
            .manual_journal_persist(true)
            .flush_workers(1)
            .compaction_workers(1)
            .open()
            .map_err(cold_err)?;
        // Inbox chunks are read by range: no Bloom filters. Dedup keys are looked up by point
        // for every new message: Bloom filters, a small memtable (the probe of unflushed keys
        // stays short), and leveled compaction (tables of a level do not overlap, so a probe
        // checks one table per level; size-tiered runs overlap and a probe checks every one),
        // uncompressed (hashes and positions do not compress; lz4 only cost CPU in compaction).
        let opts =
            |memtable: u32| PartitionCreateOptions::default().max_memtable_size(memtable).manual_journal_persist(true);
        let inbox = ks.open_partition("inbox", opts(8 << 20).bloom_filter_bits(None)).map_err(cold_err)?;
        let dedup =
            ks.open_partition("dedup", opts(2 << 20).compression(fjall::CompressionType::None)).map_err(cold_err)?;
        let dedup_keys = ks.open_partition("dedup_keys", opts(2 << 20).bloom_filter_bits(None)).map_err(cold_err)?;
        Ok(ColdIndex { ks, inbox, dedup, dedup_keys })
    }

    /// Writes a spill's entries (not yet synced: see [`ColdIndex::persist`]). Writing the same
    /// spill again writes the same entries.
    pub fn write(&self, spill: &Spill) -> Result<(), StoreError> {
        let mut batch = self.ks.batch();
        // One entry per user and run of consecutive seqs.
        let mut runs: std::collections::HashMap<&str, Vec<(u64, Vec<u8>)>> = std::collections::HashMap::new();
        for (user, seq, pos, loc) in &spill.inbox {
            let user_runs = runs.entry(user.as_str()).or_default();
            let next = user_runs.last().map(|(first, v)| first + (v.len() / INBOX_ENTRY) as u64);
            if next != Some(*seq) {
                user_runs.push((*seq, Vec::new()));
            }
            if let Some((_, v)) = user_runs.last_mut() {
                v.extend_from_slice(&pos.to_be_bytes());
                put_loc(v, loc);
            }
        }
        for (user, user_runs) in runs {
            for (first, v) in user_runs {
                batch.insert(&self.inbox, inbox_key(user, first), v);
            }
        }
        // Dedup keys: a key's value lists its messages.
        let mut keys: std::collections::HashMap<u64, Vec<u8>> = std::collections::HashMap::new();
        for m in spill.msgs.iter().filter(|m| m.pos >= spill.dedup_from) {
            let v = match keys.entry(m.key) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(
                    self.dedup.get(m.key.to_be_bytes()).map_err(cold_err)?.map(|v| v.to_vec()).unwrap_or_default(),
                ),
            };
            if !dedup_entries(v).any(|h| h.pos == m.pos) {
                v.extend_from_slice(&m.pos.to_be_bytes());
                put_loc(v, &m.loc);
                v.extend_from_slice(&m.seq.to_be_bytes());
            }
        }
        let listed: Vec<u8> = keys.keys().flat_map(|k| k.to_be_bytes()).collect();
        for (key, v) in keys {
            batch.insert(&self.dedup, key.to_be_bytes(), v);
        }
        if !listed.is_empty() {
            batch.insert(&self.dedup_keys, spill.to.to_be_bytes(), listed);
        }
        batch.commit().map_err(cold_err)
    }

    /// Makes everything written so far durable.
    pub fn persist(&self) -> Result<(), StoreError> {
        self.ks.persist(PersistMode::SyncAll).map_err(cold_err)
    }

    /// Entries of `user`'s inbox for seqs `from..=to`, at most `limit`; a seq the index has no
    /// entry for was lost to a repair ([`LOST`]).
    pub fn inbox(&self, user: &str, from: u64, to: u64, limit: usize) -> Result<Vec<ColdEntry>, StoreError> {
        let mut out = Vec::new();
        if from > to || limit == 0 {
            return Ok(out);
        }
        let mut next = from;
        // The run holding `from` starts at or before it; later runs start after it.
        let before = self.inbox.range(inbox_key(user, 0)..=inbox_key(user, from)).next_back();
        let after = self.inbox.range(inbox_key(user, from.saturating_add(1))..=inbox_key(user, to));
        for kv in before.into_iter().chain(after) {
            let (k, v) = kv.map_err(cold_err)?;
            let Some(first) = k.len().checked_sub(8).and_then(|i| u64_at(&k, i)) else {
                return Err(cold_err(format!("inbox entry of {user} is malformed")));
            };
            for (i, e) in v.chunks_exact(INBOX_ENTRY).enumerate() {
                let seq = first + i as u64;
                if seq < next {
                    continue;
                }
                if seq > to || out.len() >= limit {
                    return Ok(out);
                }
                while next < seq && out.len() < limit {
                    out.push(ColdEntry { seq: next, pos: LOST, loc: None });
                    next += 1;
                }
                if out.len() >= limit {
                    return Ok(out);
                }
                let (Some(pos), Some(loc)) = (u64_at(e, 0), loc_at(e, 8)) else {
                    return Err(cold_err(format!("inbox entry of {user} is malformed")));
                };
                let loc = (pos != LOST).then_some(loc);
                out.push(ColdEntry { seq, pos, loc });
                next = seq + 1;
            }
        }
        while next <= to && out.len() < limit {
            out.push(ColdEntry { seq: next, pos: LOST, loc: None });
            next += 1;
        }
        Ok(out)
    }

    /// Spilled messages whose dedup key is `key`.
    pub fn dedup(&self, key: u64) -> Result<Vec<DedupHit>, StoreError> {
        Ok(self
            .dedup
            .get(key.to_be_bytes())
            .map_err(cold_err)?
            .map(|v| dedup_entries(&v).collect())
            .unwrap_or_default())
    }

    /// Drops the dedup keys of the messages at positions `from..to`, the end of a spill (they
    /// left the window).
    pub fn drop_dedup(&self, from: u64, to: u64) -> Result<(), StoreError> {
        let Some(listed) = self.dedup_keys.get(to.to_be_bytes()).map_err(cold_err)? else {
            return Ok(());
        };
        let mut batch = self.ks.batch();
        for key in listed.chunks_exact(8).filter_map(|c| c.try_into().ok()).map(u64::from_be_bytes) {
            let key = key.to_be_bytes();
            let Some(old) = self.dedup.get(key).map_err(cold_err)? else { continue };
            let kept: Vec<u8> = old
                .chunks_exact(DEDUP_ENTRY)
                .filter(|c| u64_at(c, 0).is_none_or(|p| !(from..to).contains(&p)))
                .flatten()
                .copied()
                .collect();
            if kept.is_empty() {
                batch.remove(&self.dedup, key);
            } else if kept.len() != old.len() {
                batch.insert(&self.dedup, key, kept);
            }
        }
        batch.remove(&self.dedup_keys, to.to_be_bytes());
        batch.commit().map_err(cold_err)
    }
}
