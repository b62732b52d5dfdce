//! The write-ahead log: the region's replication log, on disk, and what
//! makes a write durable.
//!
//! A group of local writes is appended here and synced with one
//! `fdatasync` before any of them is acknowledged. The entity table in redb
//! is updated in the same group but committed without a sync; a periodic
//! checkpoint makes it durable and records the last log sequence it
//! includes. After a crash, the store comes back at its last checkpoint and
//! every log entry after it is applied again, so no acknowledged write is
//! lost while the random page writes of the B-tree are paid once per
//! checkpoint instead of once per request.
//!
//! Files: `wal/<first-seq, 20 digits>.log`, each a sequence of records
//! `[len: u32 LE][crc32: u32 LE][payload]`, payload = format byte +
//! MessagePack [`LogEntry`]. A torn record at the end of the last file (a
//! crash mid-append) is cut off on open.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use parallax_core::error::{Error, Result};
use parallax_core::protocol::LogEntry;

const RECORD_FORMAT: u8 = 1;
/// Largest record accepted when reading (a guard against a corrupt length).
const MAX_RECORD: u32 = 256 << 20;
/// One index point per this many records.
const INDEX_EVERY: u64 = 256;

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    last_seq: u64,
    path: PathBuf,
    /// Sparse index: (sequence, byte offset of its record).
    index: Vec<(u64, u64)>,
    len: u64,
}

/// The write-ahead log of one region.
#[derive(Debug)]
pub(crate) struct Wal {
    dir: PathBuf,
    segments: Vec<Segment>,
    file: Option<File>,
    segment_max_bytes: u64,
    buf: Vec<u8>,
}

fn io(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Storage(format!("{what} {}: {e}", path.display()))
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.log"))
}

fn encode(entry: &LogEntry, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.push(RECORD_FORMAT);
    rmp_serde::encode::write(out, entry).expect("log entry encodes");
    let payload = &out[start + 8..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads one record; `Ok(None)` at a clean end or a torn/corrupt tail.
fn read_record(r: &mut impl Read) -> std::io::Result<Option<(LogEntry, u64)>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD {
        return Ok(None);
    }
    let mut payload = vec![0u8; len as usize];
    match r.read_exact(&mut payload) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if crc32fast::hash(&payload) != crc || payload[0] != RECORD_FORMAT {
        return Ok(None);
    }
    match rmp_serde::from_slice::<LogEntry>(&payload[1..]) {
        Ok(entry) => Ok(Some((entry, 8 + u64::from(len)))),
        Err(_) => Ok(None),
    }
}

impl Wal {
    /// Opens the log in `dir`, cutting off a torn tail. Returns the log and
    /// every entry with sequence `> after` (for replay after a crash).
    pub(crate) fn open(
        dir: &Path,
        after: u64,
        segment_max_bytes: u64,
    ) -> Result<(Wal, Vec<LogEntry>)> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, "cannot create", e))?;
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| io(dir, "cannot list", e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
            .collect();
        firsts.sort_unstable();
        let mut segments = Vec::new();
        let mut replay = Vec::new();
        let mut previous_last = 0u64;
        for (i, first) in firsts.iter().enumerate() {
            if *first <= previous_last {
                return Err(Error::Storage(format!(
                    "write-ahead log file {} overlaps the file before it: the log is damaged",
                    segment_path(dir, *first).display()
                )));
            }
            let mut expected = Some(*first);
            let path = segment_path(dir, *first);
            let file = File::open(&path).map_err(|e| io(&path, "cannot open", e))?;
            let mut reader = BufReader::new(file);
            let mut seg = Segment {
                first_seq: *first,
                last_seq: first.saturating_sub(1),
                path: path.clone(),
                index: Vec::new(),
                len: 0,
            };
            let mut n = 0u64;
            while let Some((entry, size)) =
                read_record(&mut reader).map_err(|e| io(&path, "cannot read", e))?
            {
                if expected.is_some_and(|x| entry.seq != x) {
                    return Err(Error::Storage(format!(
                        "write-ahead log {} jumps from sequence {} to {}: the log is damaged",
                        path.display(),
                        expected.unwrap_or(1) - 1,
                        entry.seq
                    )));
                }
                if n.is_multiple_of(INDEX_EVERY) {
                    seg.index.push((entry.seq, seg.len));
                }
                n += 1;
                seg.len += size;
                seg.last_seq = entry.seq;
                expected = Some(entry.seq + 1);
                if entry.seq > after {
                    replay.push(entry);
                }
            }
            let file_len = std::fs::metadata(&path)
                .map_err(|e| io(&path, "cannot stat", e))?
                .len();
            if file_len > seg.len {
                if i + 1 != firsts.len() {
                    return Err(Error::Storage(format!(
                        "write-ahead log {} is damaged before its end (not the last file)",
                        path.display()
                    )));
                }
                tracing::warn!(file = %path.display(), kept = seg.len, dropped = file_len - seg.len, "Cutting a torn record off the end of the write-ahead log.");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io(&path, "cannot open", e))?;
                f.set_len(seg.len)
                    .map_err(|e| io(&path, "cannot truncate", e))?;
                f.sync_all().map_err(|e| io(&path, "cannot sync", e))?;
            }
            previous_last = seg.last_seq.max(*first);
            segments.push(seg);
        }
        let mut wal = Wal {
            dir: dir.to_owned(),
            segments,
            file: None,
            segment_max_bytes,
            buf: Vec::new(),
        };
        if let Some(last) = wal.segments.last() {
            let path = last.path.clone();
            let f = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| io(&path, "cannot open", e))?;
            wal.file = Some(f);
        }
        Ok((wal, replay))
    }

    /// Sequence of the last entry in the log (0 if empty).
    pub(crate) fn last_seq(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.last_seq)
    }

    /// Sequence of the first entry still in the log.
    pub(crate) fn first_seq(&self) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| s.last_seq >= s.first_seq)
            .map(|s| s.first_seq)
    }

    /// Appends entries (consecutive sequences) and syncs them to disk.
    pub(crate) fn append(&mut self, entries: &[LogEntry]) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let rotate = match self.segments.last() {
            None => true,
            Some(s) => s.len >= self.segment_max_bytes || s.last_seq + 1 != first.seq,
        };
        if rotate {
            self.rotate(first.seq)?;
        }
        self.buf.clear();
        let seg = self.segments.last_mut().expect("a segment after rotate");
        for e in entries {
            if (e.seq - seg.first_seq).is_multiple_of(INDEX_EVERY) {
                seg.index.push((e.seq, seg.len + self.buf.len() as u64));
            }
            encode(e, &mut self.buf);
        }
        let file = self.file.as_mut().expect("an open segment");
        file.write_all(&self.buf)
            .map_err(|e| io(&seg.path, "cannot append to", e))?;
        file.sync_data()
            .map_err(|e| io(&seg.path, "cannot sync", e))?;
        seg.len += self.buf.len() as u64;
        seg.last_seq = entries.last().map_or(seg.last_seq, |e| e.seq);
        Ok(())
    }

    fn rotate(&mut self, first_seq: u64) -> Result<()> {
        let path = segment_path(&self.dir, first_seq);
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, "cannot create", e))?;
        // Make the new file's directory entry durable before relying on it.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.file = Some(f);
        self.segments.push(Segment {
            first_seq,
            last_seq: first_seq - 1,
            path,
            index: Vec::new(),
            len: 0,
        });
        Ok(())
    }

    /// Removes whole files whose entries are all `<= upto`, keeping the
    /// file being written.
    pub(crate) fn truncate(&mut self, upto: u64) -> Result<()> {
        while self.segments.len() > 1 && self.segments[0].last_seq <= upto {
            let seg = self.segments.remove(0);
            std::fs::remove_file(&seg.path).map_err(|e| io(&seg.path, "cannot remove", e))?;
        }
        Ok(())
    }

    /// A reader for shippers (it sees what was appended before it reads).
    /// The last segment is read up to whatever it holds when read, so the
    /// snapshot only needs renewing when files are added or removed.
    pub(crate) fn reader(&self) -> WalReader {
        let n = self.segments.len();
        WalReader {
            segments: self
                .segments
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let last = if i + 1 == n { u64::MAX } else { s.last_seq };
                    (s.first_seq, last, s.path.clone(), s.index.clone())
                })
                .collect(),
        }
    }

    /// Number of files (a change means readers need a new snapshot).
    pub(crate) fn files(&self) -> usize {
        self.segments.len()
    }
}

/// One file as a reader sees it: first and last sequence, path, sparse index.
type FileView = (u64, u64, PathBuf, Vec<(u64, u64)>);

/// A snapshot of the log's files, for reading entries back.
#[derive(Debug, Clone)]
pub(crate) struct WalReader {
    segments: Vec<FileView>,
}

impl WalReader {
    /// A reader over no files.
    pub(crate) fn empty() -> WalReader {
        WalReader {
            segments: Vec::new(),
        }
    }

    /// Entries with sequence in `from..=upto`, at most `max_ops`/about `max_bytes`.
    pub(crate) fn read(
        &self,
        from: u64,
        upto: u64,
        max_ops: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogEntry>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (first, last, path, index) in &self.segments {
            if *last < from || *first > upto {
                continue;
            }
            let (start_seq, offset) = index
                .iter()
                .take_while(|(s, _)| *s <= from)
                .last()
                .copied()
                .unwrap_or((*first, 0));
            let mut file = match File::open(path) {
                Ok(f) => f,
                // Removed by truncation since the snapshot: those entries are gone.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(path, "cannot open", e)),
            };
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| io(path, "cannot seek", e))?;
            let mut reader = BufReader::new(file);
            let mut seq = start_seq;
            while seq <= (*last).min(upto) {
                let Some((entry, _)) =
                    read_record(&mut reader).map_err(|e| io(path, "cannot read", e))?
                else {
                    break;
                };
                seq = entry.seq + 1;
                if entry.seq < from {
                    continue;
                }
                bytes += entry.size();
                out.push(entry);
                if out.len() >= max_ops || bytes >= max_bytes {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> LogEntry {
        LogEntry {
            seq,
            class: "c".into(),
            key: format!("k{seq}"),
            wall_ms: seq,
            entity: vec![seq as u8; 40],
        }
    }

    #[test]
    fn append_read_rotate_truncate_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, replay) = Wal::open(dir.path(), 0, 2_000).unwrap();
        assert!(replay.is_empty());
        for chunk in (1..=300u64).collect::<Vec<_>>().chunks(7) {
            wal.append(&chunk.iter().map(|s| entry(*s)).collect::<Vec<_>>())
                .unwrap();
        }
        assert_eq!(wal.last_seq(), 300);
        assert!(wal.segments.len() > 5, "small segments rotate");
        let got = wal.reader().read(123, 300, 10, 1 << 20).unwrap();
        assert_eq!(
            got.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (123..133).collect::<Vec<_>>()
        );
        assert_eq!(got[0], entry(123));
        assert_eq!(wal.reader().read(295, 298, 100, 1 << 20).unwrap().len(), 4);
        wal.truncate(150).unwrap();
        let first = wal.first_seq().unwrap();
        assert!(first > 100 && first <= 151, "first {first}");
        drop(wal);
        let (wal, replay) = Wal::open(dir.path(), 250, 2_000).unwrap();
        assert_eq!(
            replay.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (251..=300).collect::<Vec<_>>()
        );
        assert_eq!(wal.last_seq(), 300);
    }

    #[test]
    fn a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0, 1 << 20).unwrap();
        wal.append(&[entry(1), entry(2), entry(3)]).unwrap();
        let path = wal.segments[0].path.clone();
        drop(wal);
        let full = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full - 5).unwrap();
        drop(f);
        let (mut wal, replay) = Wal::open(dir.path(), 0, 1 << 20).unwrap();
        assert_eq!(replay.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        wal.append(&[entry(3)]).unwrap();
        drop(wal);
        let (_, replay) = Wal::open(dir.path(), 0, 1 << 20).unwrap();
        assert_eq!(
            replay.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn a_corrupt_record_ends_the_log_there() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0, 1 << 20).unwrap();
        wal.append(&[entry(1), entry(2)]).unwrap();
        let path = wal.segments[0].path.clone();
        drop(wal);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let (_, replay) = Wal::open(dir.path(), 0, 1 << 20).unwrap();
        assert_eq!(replay.len(), 1);
    }
}
