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

/// What the cold index keeps of a 1:1 message (the in-memory [`super::state::Meta`] without
/// its body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColdMeta {
    /// Where it is logged.
    pub loc: Loc,
    /// Its seq in the sender's inbox.
    pub seq: u64,
    /// Server timestamp.
    pub ts: u64,
    /// Dedup key.
    pub key: u64,
}

const META_LEN: usize = 8 + 8 + 4 + 8 + 8 + 8;

impl ColdMeta {
    fn encode(&self) -> [u8; META_LEN] {
        let mut b = [0u8; META_LEN];
        b[0..8].copy_from_slice(&self.loc.seg.to_be_bytes());
        b[8..16].copy_from_slice(&self.loc.offset.to_be_bytes());
        b[16..20].copy_from_slice(&self.loc.index.to_be_bytes());
        b[20..28].copy_from_slice(&self.seq.to_be_bytes());
        b[28..36].copy_from_slice(&self.ts.to_be_bytes());
        b[36..44].copy_from_slice(&self.key.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<ColdMeta> {
        if b.len() != META_LEN {
            return None;
        }
        let u64_at = |i: usize| b.get(i..i + 8).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes);
        let index = b.get(16..20).and_then(|s| s.try_into().ok()).map(u32::from_be_bytes)?;
        Some(ColdMeta {
            loc: Loc { seg: u64_at(0)?, offset: u64_at(8)?, index },
            seq: u64_at(20)?,
            ts: u64_at(28)?,
            key: u64_at(36)?,
        })
    }
}

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
    /// 1:1 messages: position and index entry.
    pub metas: Vec<(u64, ColdMeta)>,
    /// Inbox entries: user, seq, position.
    pub inbox: Vec<(String, u64, u64)>,
    /// Newest server timestamp of the range (for the dedup window).
    pub max_ts: u64,
    /// Dedup keys are written for positions from here on (older ones left the window).
    pub dedup_from: u64,
}

/// The on-disk index.
pub struct ColdIndex {
    ks: Keyspace,
    meta: PartitionHandle,
    inbox: PartitionHandle,
    dedup: PartitionHandle,
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

fn positions(v: &[u8]) -> impl Iterator<Item = u64> + '_ {
    v.chunks_exact(8).filter_map(|c| c.try_into().ok()).map(u64::from_be_bytes)
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
        // Metas and inbox entries are read by range (positions and seqs are dense): no bloom
        // filters. Dedup keys are looked up by point for every new message: bloom filters.
        let ranged = || {
            PartitionCreateOptions::default()
                .bloom_filter_bits(None)
                .max_memtable_size(8 * 1024 * 1024)
                .manual_journal_persist(true)
        };
        let meta = ks.open_partition("meta", ranged()).map_err(cold_err)?;
        let inbox = ks.open_partition("inbox", ranged()).map_err(cold_err)?;
        let dedup = ks
            .open_partition(
                "dedup",
                PartitionCreateOptions::default().max_memtable_size(8 * 1024 * 1024).manual_journal_persist(true),
            )
            .map_err(cold_err)?;
        Ok(ColdIndex { ks, meta, inbox, dedup })
    }

    /// Writes a spill's entries (not yet synced: see [`ColdIndex::persist`]).
    pub fn write(&self, spill: &Spill) -> Result<(), StoreError> {
        let mut batch = self.ks.batch();
        for (pos, meta) in &spill.metas {
            batch.insert(&self.meta, pos.to_be_bytes(), meta.encode());
        }
        for (user, seq, pos) in &spill.inbox {
            batch.insert(&self.inbox, inbox_key(user, *seq), pos.to_be_bytes());
        }
        // Dedup keys: a key's value lists its positions (more than one only on a collision).
        let mut keys: std::collections::HashMap<u64, Vec<u8>> = std::collections::HashMap::new();
        for (pos, meta) in spill.metas.iter().filter(|(p, _)| *p >= spill.dedup_from) {
            let v = match keys.entry(meta.key) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(
                    self.dedup.get(meta.key.to_be_bytes()).map_err(cold_err)?.map(|v| v.to_vec()).unwrap_or_default(),
                ),
            };
            if !positions(v).any(|p| p == *pos) {
                v.extend_from_slice(&pos.to_be_bytes());
            }
        }
        for (key, v) in keys {
            batch.insert(&self.dedup, key.to_be_bytes(), v);
        }
        batch.commit().map_err(cold_err)
    }

    /// Makes everything written so far durable.
    pub fn persist(&self) -> Result<(), StoreError> {
        self.ks.persist(PersistMode::SyncAll).map_err(cold_err)
    }

    /// The index entry of the 1:1 message at `pos`.
    pub fn meta(&self, pos: u64) -> Result<Option<ColdMeta>, StoreError> {
        match self.meta.get(pos.to_be_bytes()).map_err(cold_err)? {
            None => Ok(None),
            Some(v) => ColdMeta::decode(&v)
                .map(Some)
                .ok_or_else(|| cold_err(format!("entry of position {pos} is {} bytes", v.len()))),
        }
    }

    /// Entries (seq, position) of `user`'s inbox for seqs `from..=to`, at most `limit`; a seq
    /// the index has no entry for was lost to a repair ([`LOST`]).
    pub fn inbox(&self, user: &str, from: u64, to: u64, limit: usize) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut out = Vec::new();
        if from > to || limit == 0 {
            return Ok(out);
        }
        let mut next = from;
        for kv in self.inbox.range(inbox_key(user, from)..=inbox_key(user, to)) {
            let (k, v) = kv.map_err(cold_err)?;
            let seq =
                k.len().checked_sub(8).and_then(|i| k.get(i..)).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes);
            let pos = v.as_ref().try_into().ok().map(u64::from_be_bytes);
            let (Some(seq), Some(pos)) = (seq, pos) else {
                return Err(cold_err(format!("inbox entry of {user} is malformed")));
            };
            while next < seq && out.len() < limit {
                out.push((next, LOST));
                next += 1;
            }
            if out.len() >= limit {
                return Ok(out);
            }
            out.push((seq, pos));
            next = seq + 1;
        }
        while next <= to && out.len() < limit {
            out.push((next, LOST));
            next += 1;
        }
        Ok(out)
    }

    /// Positions whose dedup key is `key`.
    pub fn dedup(&self, key: u64) -> Result<Vec<u64>, StoreError> {
        Ok(self.dedup.get(key.to_be_bytes()).map_err(cold_err)?.map(|v| positions(&v).collect()).unwrap_or_default())
    }

    /// Drops the dedup keys of the 1:1 messages at positions `from..to` (they left the window).
    pub fn drop_dedup(&self, from: u64, to: u64) -> Result<(), StoreError> {
        if from >= to {
            return Ok(());
        }
        let mut batch = self.ks.batch();
        for kv in self.meta.range(from.to_be_bytes()..to.to_be_bytes()) {
            let (_, v) = kv.map_err(cold_err)?;
            let Some(m) = ColdMeta::decode(&v) else { continue };
            let key = m.key.to_be_bytes();
            let Some(old) = self.dedup.get(key).map_err(cold_err)? else { continue };
            let kept: Vec<u8> =
                positions(&old).filter(|p| !(from..to).contains(p)).flat_map(u64::to_be_bytes).collect();
            if kept.is_empty() {
                batch.remove(&self.dedup, key);
            } else if kept.len() != old.len() {
                batch.insert(&self.dedup, key, kept);
            }
        }
        batch.commit().map_err(cold_err)
    }
}
