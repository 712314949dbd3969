//! Segment files of the append-only log: naming, record framing, scanning with torn-tail and
//! corruption detection, the appending writer and the repair of a corrupt segment.
//!
//! A segment is `<20-digit id>.seg`: a 16-byte header (`TTHRLOG1` + the id, little-endian) and
//! then records, each `len: u32 LE | crc: u32 LE | body[len]`, where `crc` is the CRC-32 of the
//! four length bytes followed by the body. Only the newest segment is ever appended to; a new
//! one is created (file and directory fsynced) once the current one is full.
//!
//! A busy log writes into space prepared ahead: the next segment is written in full as the
//! header and zero bytes under a temporary name (`<id>.seg.prep`), fsynced, and renamed into
//! place when the current one is full. An `fdatasync` of bytes written over that space flushes
//! the data alone; one of bytes appended past a file's end must also write the inode (its new
//! size), a second I/O per commit. So the newest segment may end in zero bytes (space not
//! written yet); a closed segment is cut to its last record before the next one starts.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The first bytes of every segment.
pub const MAGIC: &[u8; 8] = b"TTHRLOG1";
/// Header length: magic and segment id.
pub const HEADER: u64 = 16;
/// Record framing: length and checksum.
pub const FRAME: u64 = 8;
/// The largest record body accepted when reading (a longer length field is damage).
pub const MAX_RECORD: u32 = 256 * 1024 * 1024;

/// Path of segment `id` in `dir`.
pub fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// Segment ids in `dir`, ascending.
pub fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".seg") {
            if stem.len() == 20 {
                if let Ok(id) = stem.parse::<u64>() {
                    ids.push(id);
                }
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Fsyncs a directory, so a file created (or renamed, or removed) in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The checksum of a record: CRC-32 over its length field and its body.
pub fn checksum(len: u32, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// Appends one framed record to `buf`.
pub fn frame(buf: &mut Vec<u8>, body: &[u8]) {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&checksum(len, body).to_le_bytes());
    buf.extend_from_slice(body);
}

/// The record framed at `at` of `data`, if a whole and intact one is there: its body range.
fn record_at(data: &[u8], at: usize) -> Option<std::ops::Range<usize>> {
    let head = data.get(at..at + FRAME as usize)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let start = at + FRAME as usize;
    let body = data.get(start..start + len as usize)?;
    (checksum(len, body) == crc).then_some(start..start + len as usize)
}

/// The body of `data` when it is exactly one intact framed record.
pub fn unframe(data: &[u8]) -> Option<&[u8]> {
    record_at(data, 0).filter(|r| r.end == data.len()).map(|r| &data[r])
}

/// One record found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Offset of its frame in the segment.
    pub offset: u64,
    /// Its body.
    pub body: Vec<u8>,
}

/// What a scan found after the last intact record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// The segment ends exactly after its last record.
    Clean,
    /// Bytes after the last intact record that hold no intact record anywhere: a write cut
    /// short by a crash. Only acceptable at the end of the newest segment.
    Torn {
        /// Where the torn bytes start (the length to truncate to).
        at: u64,
        /// How many bytes.
        bytes: u64,
    },
    /// Zero bytes from `at` to the end of the file and nothing else: space prepared for records
    /// not written yet. Only acceptable at the end of the newest segment.
    Zeros {
        /// Where the zero bytes start (where the next record goes).
        at: u64,
    },
    /// A damaged record with intact records after it: data that was durable is damaged.
    Corrupt {
        /// Where the damage starts.
        at: u64,
        /// Where the next intact record starts.
        next: u64,
    },
}

/// A whole segment read and checked.
#[derive(Debug)]
pub struct Scan {
    /// Segment id from the header.
    pub id: u64,
    /// Intact records up to the first damage, in order.
    pub records: Vec<Found>,
    /// What follows them.
    pub tail: Tail,
}

/// Why a segment cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// An I/O error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The header is not a Tether log header or names another segment.
    #[error("{path}: not a Tether log segment (bad header)")]
    BadHeader {
        /// The file.
        path: PathBuf,
    },
}

/// Reads and checks segment `id`. A header cut short (a crash right after the file was
/// created) reads as an empty segment with a torn tail.
pub fn scan(dir: &Path, id: u64) -> Result<Scan, SegmentError> {
    let p = path(dir, id);
    let io_err = |source| SegmentError::Io { path: p.clone(), source };
    let mut data = Vec::new();
    File::open(&p).and_then(|mut f| f.read_to_end(&mut data)).map_err(io_err)?;
    if (data.len() as u64) < HEADER {
        if MAGIC.starts_with(&data[..data.len().min(MAGIC.len())]) {
            let bytes = data.len() as u64;
            return Ok(Scan { id, records: Vec::new(), tail: Tail::Torn { at: 0, bytes } });
        }
        return Err(SegmentError::BadHeader { path: p });
    }
    let mut idb = [0u8; 8];
    idb.copy_from_slice(&data[8..16]);
    if &data[..8] != MAGIC || u64::from_le_bytes(idb) != id {
        return Err(SegmentError::BadHeader { path: p });
    }
    let mut at = HEADER as usize;
    let mut records = Vec::new();
    while at < data.len() {
        match record_at(&data, at) {
            Some(body) => {
                records.push(Found { offset: at as u64, body: data[body.clone()].to_vec() });
                at = body.end;
            }
            None if zeros_from(&data, at) => {
                return Ok(Scan { id, records, tail: Tail::Zeros { at: at as u64 } });
            }
            None => {
                let next = (at + 1..data.len()).find(|&i| record_at(&data, i).is_some());
                let tail = match next {
                    Some(next) => Tail::Corrupt { at: at as u64, next: next as u64 },
                    None => Tail::Torn { at: at as u64, bytes: (data.len() - at) as u64 },
                };
                return Ok(Scan { id, records, tail });
            }
        }
    }
    Ok(Scan { id, records, tail: Tail::Clean })
}

/// The header of segment `id`: the magic, then the id.
fn header(id: u64) -> [u8; HEADER as usize] {
    let mut head = [0u8; HEADER as usize];
    head[..8].copy_from_slice(MAGIC);
    head[8..].copy_from_slice(&id.to_le_bytes());
    head
}

/// Whether `data` holds only zero bytes from `at` on: space prepared for records not written
/// yet (see [`prepare`]).
fn zeros_from(data: &[u8], at: usize) -> bool {
    data[at..].iter().all(|b| *b == 0)
}

/// Where segment `id` is prepared before it is renamed into place.
pub fn prep_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg.prep"))
}

/// Zero bytes written per step while a segment is prepared (each step is fsynced, so the
/// device never has a whole segment to flush at once in front of the log's own syncs).
const PREPARE_STEP: usize = 4 * 1024 * 1024;

/// Prepares segment `id` under its temporary name: the header, then zero bytes up to `size`,
/// written and fsynced. Nothing of it is left behind when it fails (a full disk).
pub fn prepare(dir: &Path, id: u64, size: u64) -> io::Result<()> {
    let p = prep_path(dir, id);
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new().create(true).truncate(true).write(true).open(&p)?;
        f.write_all(&header(id))?;
        let zeros = vec![0u8; PREPARE_STEP];
        let mut left = size.saturating_sub(HEADER);
        while left > 0 {
            let n = left.min(PREPARE_STEP as u64) as usize;
            f.write_all(&zeros[..n])?;
            f.sync_data()?;
            left -= n as u64;
        }
        f.sync_all()
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&p);
    })
}

/// Removes prepared segments left by a stopped process (they were never part of the log).
pub fn remove_prepared(dir: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name().to_str().is_some_and(|n| n.ends_with(".seg.prep")) {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// Creates segment `id` with its header, fsyncs it and the directory.
pub fn create(dir: &Path, id: u64) -> io::Result<File> {
    let p = path(dir, id);
    let mut f = OpenOptions::new().create_new(true).read(true).write(true).open(&p)?;
    let res = f.write_all(&header(id)).and_then(|()| f.sync_all()).and_then(|()| sync_dir(dir));
    if let Err(e) = res {
        // Not started after all (a full disk): the next attempt creates it afresh.
        let _ = std::fs::remove_file(&p);
        return Err(e);
    }
    Ok(f)
}

/// The newest segment, open for appending at its durable length.
pub struct Appender {
    dir: PathBuf,
    file: File,
    /// Segment id.
    pub id: u64,
    /// Length of what is known durable (everything before it was fsynced).
    pub durable: u64,
    /// Length written (durable + what awaits the next sync).
    pub written: u64,
}

impl Appender {
    /// Opens segment `id` to append at `len`: anything after it is cut off (a torn tail),
    /// unless it is prepared space (`zeros`), which is kept and written over.
    pub fn open(dir: &Path, id: u64, len: u64, zeros: bool) -> io::Result<Self> {
        let mut file = OpenOptions::new().read(true).write(true).open(path(dir, id))?;
        if !zeros && file.metadata()?.len() != len {
            file.set_len(len)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::Start(len))?;
        Ok(Appender { dir: dir.to_path_buf(), file, id, durable: len, written: len })
    }

    /// Creates segment `id` and opens it for appending.
    pub fn create(dir: &Path, id: u64) -> io::Result<Self> {
        Ok(Appender::after_header(dir, create(dir, id)?, id))
    }

    /// Segment `id`, open as `file`, to append right after its header.
    fn after_header(dir: &Path, file: File, id: u64) -> Self {
        Appender { dir: dir.to_path_buf(), file, id, durable: HEADER, written: HEADER }
    }

    /// Writes framed bytes (not yet durable); returns the offset they start at.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<u64> {
        let at = self.written;
        // Position explicitly: a failed write may have moved the cursor.
        self.file.write_all_at(bytes, at)?;
        self.written += bytes.len() as u64;
        Ok(at)
    }

    /// Makes everything written durable (`fdatasync`).
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.durable = self.written;
        Ok(())
    }

    /// Drops everything after `len` (what a failed write left, or a record whose sync was
    /// reported failed) and makes the truncation itself durable.
    pub fn roll_back(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_all()?;
        self.durable = len;
        self.written = len;
        Ok(())
    }

    /// Moves on to a new segment `self.id + 1` (the current one is durable and complete):
    /// the prepared one when `prepared` (see [`prepare`]), else a new file. The current one
    /// is first cut to its last record, so only the newest segment ever ends in zero bytes.
    pub fn roll_over(&mut self, prepared: bool) -> io::Result<()> {
        if self.file.metadata()?.len() > self.written {
            self.file.set_len(self.written)?;
            self.file.sync_all()?;
        }
        let id = self.id + 1;
        let next = if prepared {
            std::fs::rename(prep_path(&self.dir, id), path(&self.dir, id))?;
            sync_dir(&self.dir)?;
            let file = OpenOptions::new().read(true).write(true).open(path(&self.dir, id))?;
            Appender::after_header(&self.dir, file, id)
        } else {
            Appender::create(&self.dir, id)?
        };
        *self = next;
        Ok(())
    }
}

/// Reads the body of the record framed at `offset` of an open segment, checking it.
pub fn read_record(file: &File, offset: u64) -> io::Result<Vec<u8>> {
    let mut head = [0u8; FRAME as usize];
    file.read_exact_at(&mut head, offset)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 || len > MAX_RECORD {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad record length {len} at {offset}")));
    }
    let mut body = vec![0u8; len as usize];
    file.read_exact_at(&mut body, offset + FRAME)?;
    if checksum(len, &body) != crc {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("checksum mismatch at {offset}")));
    }
    Ok(body)
}

/// What [`repair`] did to one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// Segment id.
    pub id: u64,
    /// Damaged byte ranges cut out: (offset, length).
    pub cut: Vec<(u64, u64)>,
    /// Where the original was kept.
    pub backup: PathBuf,
}

/// Cuts every damaged range out of segment `id` (keeping every intact record before and after
/// them, and dropping a torn tail), after copying the original to `<id>.seg.corrupt-<n>`.
/// Returns `None` when the segment has no damage.
pub fn repair(dir: &Path, id: u64) -> Result<Option<Repaired>, SegmentError> {
    let p = path(dir, id);
    let io_err = |source| SegmentError::Io { path: p.clone(), source };
    let mut data = Vec::new();
    File::open(&p).and_then(|mut f| f.read_to_end(&mut data)).map_err(io_err)?;
    if (data.len() as u64) < HEADER || &data[..8] != MAGIC {
        return Err(SegmentError::BadHeader { path: p });
    }
    let mut out = data[..HEADER as usize].to_vec();
    let mut cut = Vec::new();
    let mut at = HEADER as usize;
    while at < data.len() {
        match record_at(&data, at) {
            Some(body) => {
                out.extend_from_slice(&data[at..body.end]);
                at = body.end;
            }
            // Prepared space at the end is not damage: the rewrite simply ends before it.
            None if zeros_from(&data, at) => break,
            None => {
                let next = (at + 1..data.len()).find(|&i| record_at(&data, i).is_some()).unwrap_or(data.len());
                cut.push((at as u64, (next - at) as u64));
                at = next;
            }
        }
    }
    if cut.is_empty() {
        return Ok(None);
    }
    let backup = (0..)
        .map(|n| dir.join(format!("{id:020}.seg.corrupt-{n}")))
        .find(|b| !b.exists())
        .unwrap_or_else(|| dir.join(format!("{id:020}.seg.corrupt")));
    std::fs::copy(&p, &backup).map_err(io_err)?;
    let tmp = dir.join(format!("{id:020}.seg.repair"));
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)?;
        sync_dir(dir)
    };
    write().map_err(io_err)?;
    Ok(Some(Repaired { id, cut, backup }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment_with(dir: &Path, id: u64, bodies: &[&[u8]]) -> Vec<u64> {
        let mut a = Appender::create(dir, id).expect("create");
        let mut offsets = Vec::new();
        for b in bodies {
            let mut buf = Vec::new();
            frame(&mut buf, b);
            offsets.push(a.write(&buf).expect("write"));
        }
        a.sync().expect("sync");
        offsets
    }

    #[test]
    fn records_read_back_in_order_and_by_offset() {
        let dir = tempfile::tempdir().expect("dir");
        let offsets = segment_with(dir.path(), 7, &[b"one", b"two", b"three"]);
        let s = scan(dir.path(), 7).expect("scan");
        assert_eq!(s.tail, Tail::Clean);
        let bodies: Vec<&[u8]> = s.records.iter().map(|r| r.body.as_slice()).collect();
        assert_eq!(bodies, [b"one".as_slice(), b"two", b"three"]);
        let f = File::open(path(dir.path(), 7)).expect("open");
        assert_eq!(read_record(&f, offsets[1]).expect("read"), b"two");
        assert_eq!(list(dir.path()).expect("list"), [7]);
    }

    #[test]
    fn a_flipped_byte_in_the_middle_is_corruption_not_a_tail() {
        let dir = tempfile::tempdir().expect("dir");
        let offsets = segment_with(dir.path(), 1, &[b"aaaa", b"bbbb", b"cccc"]);
        let p = path(dir.path(), 1);
        let mut data = std::fs::read(&p).expect("read");
        data[offsets[1] as usize + 9] ^= 0x40;
        std::fs::write(&p, &data).expect("write");
        let s = scan(dir.path(), 1).expect("scan");
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.tail, Tail::Corrupt { at: offsets[1], next: offsets[2] });
        let f = File::open(&p).expect("open");
        assert!(read_record(&f, offsets[1]).is_err(), "a damaged record is never returned");
        // Repair cuts out exactly the damaged record and keeps the original.
        let r = repair(dir.path(), 1).expect("repair").expect("something repaired");
        assert_eq!(r.cut, vec![(offsets[1], offsets[2] - offsets[1])]);
        assert!(r.backup.exists());
        let s = scan(dir.path(), 1).expect("scan");
        assert_eq!(s.tail, Tail::Clean);
        let bodies: Vec<&[u8]> = s.records.iter().map(|r| r.body.as_slice()).collect();
        assert_eq!(bodies, [b"aaaa".as_slice(), b"cccc"]);
        assert_eq!(repair(dir.path(), 1).expect("repair"), None, "nothing left to repair");
    }

    #[test]
    fn a_zero_tail_is_space_to_write_over_and_a_cut_or_dirty_tail_is_torn() {
        let dir = tempfile::tempdir().expect("dir");
        segment_with(dir.path(), 1, &[b"first", b"second"]);
        let p = path(dir.path(), 1);
        let len = std::fs::metadata(&p).expect("meta").len();
        // Zeros after the last record: prepared space (or a size extended whose data never
        // reached the disk): the next record goes at its start.
        let mut f = OpenOptions::new().append(true).open(&p).expect("open");
        f.write_all(&[0u8; 100]).expect("zeros");
        let s = scan(dir.path(), 1).expect("scan");
        assert_eq!(s.records.len(), 2);
        assert_eq!(s.tail, Tail::Zeros { at: len });
        // Reopened over prepared space, the zeros stay (written over, not cut).
        let mut a = Appender::open(dir.path(), 1, len, true).expect("open");
        assert_eq!((a.durable, a.written), (len, len));
        assert_eq!(std::fs::metadata(&p).expect("meta").len(), len + 100);
        let mut rec = Vec::new();
        frame(&mut rec, b"third");
        assert_eq!(a.write(&rec).expect("write"), len);
        a.sync().expect("sync");
        let s = scan(dir.path(), 1).expect("scan");
        assert_eq!(s.records.len(), 3);
        assert_eq!(s.tail, Tail::Zeros { at: len + rec.len() as u64 });
        // Zeros, then half a record: torn; reopening cuts it off (and the zeros with it).
        f.write_all(&rec[..7]).expect("half");
        let s = scan(dir.path(), 1).expect("scan");
        let end = len + rec.len() as u64;
        assert_eq!(s.tail, Tail::Torn { at: end, bytes: 100 - rec.len() as u64 + 7 });
        let a = Appender::open(dir.path(), 1, end, false).expect("open");
        assert_eq!(a.durable, end);
        assert_eq!(std::fs::metadata(&p).expect("meta").len(), end);
    }

    #[test]
    fn a_prepared_segment_is_renamed_into_place_and_the_closed_one_cut_to_its_records() {
        let dir = tempfile::tempdir().expect("dir");
        let mut a = Appender::create(dir.path(), 1).expect("create");
        let mut rec = Vec::new();
        frame(&mut rec, b"one");
        a.write(&rec).expect("write");
        a.sync().expect("sync");
        prepare(dir.path(), 2, 10_000).expect("prepare");
        // Not part of the log until it is renamed.
        assert_eq!(list(dir.path()).expect("list"), vec![1]);
        assert_eq!(std::fs::metadata(prep_path(dir.path(), 2)).expect("meta").len(), 10_000);
        a.roll_over(true).expect("roll over");
        assert_eq!(list(dir.path()).expect("list"), vec![1, 2]);
        assert!(!prep_path(dir.path(), 2).exists());
        assert_eq!(a.written, HEADER);
        a.write(&rec).expect("write");
        a.sync().expect("sync");
        let s = scan(dir.path(), 2).expect("scan");
        assert_eq!((s.records.len(), s.tail), (1, Tail::Zeros { at: HEADER + rec.len() as u64 }));
        // Closing segment 2 (prepared, half empty) cuts its zeros: only the newest may have any.
        a.roll_over(false).expect("roll over");
        assert_eq!(std::fs::metadata(path(dir.path(), 2)).expect("meta").len(), HEADER + rec.len() as u64);
        assert_eq!(scan(dir.path(), 2).expect("scan").tail, Tail::Clean);
        // A prepared segment a stopped process left behind is removed.
        prepare(dir.path(), 4, 5_000).expect("prepare");
        remove_prepared(dir.path()).expect("remove");
        assert!(!prep_path(dir.path(), 4).exists());
        assert_eq!(list(dir.path()).expect("list"), vec![1, 2, 3]);
    }

    #[test]
    fn a_header_cut_short_is_an_empty_torn_segment_and_a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(path(dir.path(), 3), &MAGIC[..5]).expect("write");
        let s = scan(dir.path(), 3).expect("scan");
        assert!(s.records.is_empty());
        assert_eq!(s.tail, Tail::Torn { at: 0, bytes: 5 });
        std::fs::write(path(dir.path(), 4), b"SQLite format 3\0 and more").expect("write");
        assert!(matches!(scan(dir.path(), 4), Err(SegmentError::BadHeader { .. })));
    }
}
