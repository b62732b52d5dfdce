//! Backups of a region's store, and restoring one.
//!
//! A backup is one read transaction of the store (a consistent snapshot,
//! taken while the region serves) written as a stream of records: the
//! entities (the internal classes too: ownership delegations and rollout
//! stages), the reconciliation queue, the conflict log and the replication
//! bookkeeping. The change feed is left out (a restored region's feed
//! starts afresh, past every position it handed out).
//!
//! Format: the magic `PARALLAX-BACKUP\n`, a format byte, then records
//! `[kind: u8][key len: u32 LE][key][value len: u32 LE][value]`; the first
//! record is the header (the region and when, MessagePack), the last the
//! trailer (the record count and the BLAKE3 hash of every byte before the
//! trailer), so a cut or altered file is refused whole.
//!
//! Restoring builds a new store from a backup under a temporary name and
//! renames it into place. A region's log sequence numbers must never be
//! handed out twice (its peers skip entries at or below what they applied
//! from it, and they may have applied entries the backup does not hold),
//! so the restored log restarts at the wall clock in microseconds, past any
//! sequence a region can reach; every peer is marked for anti-entropy,
//! which repairs what the backup missed in both directions. A backup
//! restored as another region (seeding a new one) carries the origin's
//! writes up to its checkpoint, which become the new region's watermark for
//! the origin.

use std::io::{Read, Write};
use std::path::Path;

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{CONFLICT_LOG, Db, ENTITIES, META, QUEUE, Store, bytes_u64, u64_bytes};
use parallax_core::error::{Error, Result};

const MAGIC: &[u8; 16] = b"PARALLAX-BACKUP\n";
const FORMAT: u8 = 1;

const HEADER: u8 = 1;
const ENTITY: u8 = 2;
const META_ENTRY: u8 = 3;
const QUEUE_ENTRY: u8 = 4;
const CONFLICT: u8 = 5;
const TRAILER: u8 = 9;

/// Largest key or value a backup record may carry (a guard against a
/// corrupt length).
const MAX_FIELD: u32 = 256 << 20;
/// Records written to the restored store per transaction.
const RESTORE_BATCH: u64 = 50_000;

/// Who a backup is of, and when it was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The region whose store it is.
    pub region: String,
    /// When its snapshot was taken (µs since the epoch).
    pub taken_at_us: u64,
    /// The region's log sequence at its last checkpoint in the snapshot.
    pub checkpoint: u64,
}

/// What a backup holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// Whose and when.
    pub header: BackupHeader,
    /// Entities (internal classes included).
    pub entities: u64,
    /// Records of every kind.
    pub records: u64,
}

/// Writes records while hashing them.
struct Framer<'a> {
    out: &'a mut dyn Write,
    hash: blake3::Hasher,
    records: u64,
}

impl Framer<'_> {
    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.hash.update(bytes);
        self.out
            .write_all(bytes)
            .map_err(|e| Error::Storage(format!("cannot write the backup: {e}")))
    }

    fn record(&mut self, kind: u8, key: &[u8], value: &[u8]) -> Result<()> {
        self.raw(&[kind])?;
        self.raw(&(key.len() as u32).to_le_bytes())?;
        self.raw(key)?;
        self.raw(&(value.len() as u32).to_le_bytes())?;
        self.raw(value)?;
        self.records += 1;
        Ok(())
    }
}

impl Store {
    /// Writes a consistent snapshot of the store, region `region`'s, to
    /// `out` in the backup format. The region keeps serving meanwhile.
    pub fn backup(&self, region: &str, now_us: u64, out: &mut dyn Write) -> Result<BackupSummary> {
        let txn = self.db.begin_read().db()?;
        let meta = txn.open_table(META).db()?;
        let checkpoint = meta
            .get("checkpoint")
            .db()?
            .map_or(0, |v| bytes_u64(v.value()));
        let header = BackupHeader {
            region: region.to_owned(),
            taken_at_us: now_us,
            checkpoint,
        };
        let mut f = Framer {
            out,
            hash: blake3::Hasher::new(),
            records: 0,
        };
        f.raw(MAGIC)?;
        f.raw(&[FORMAT])?;
        let encoded = rmp_serde::to_vec_named(&header).expect("a header encodes");
        f.record(HEADER, b"", &encoded)?;
        for item in meta.iter().db()? {
            let (k, v) = item.db()?;
            f.record(META_ENTRY, k.value().as_bytes(), v.value())?;
        }
        let mut entities = 0;
        for item in txn.open_table(ENTITIES).db()?.iter().db()? {
            let (k, v) = item.db()?;
            f.record(ENTITY, k.value(), v.value())?;
            entities += 1;
        }
        for item in txn.open_table(QUEUE).db()?.iter().db()? {
            let (k, v) = item.db()?;
            f.record(QUEUE_ENTRY, k.value(), &u64_bytes(v.value()))?;
        }
        for item in txn.open_table(CONFLICT_LOG).db()?.iter().db()? {
            let (k, v) = item.db()?;
            f.record(CONFLICT, &u64_bytes(k.value()), v.value())?;
        }
        let records = f.records;
        let hash = *f.hash.finalize().as_bytes();
        f.record(TRAILER, &u64_bytes(records), &hash)?;
        f.out
            .flush()
            .map_err(|e| Error::Storage(format!("cannot write the backup: {e}")))?;
        Ok(BackupSummary {
            header,
            entities,
            records,
        })
    }
}

/// How to restore a backup: as which region, among which peers, and the
/// sequence its log restarts after.
#[derive(Clone, Debug)]
pub struct RestorePlan {
    /// The region the store is for.
    pub region: String,
    /// The other regions of the cluster.
    pub peers: Vec<String>,
    /// The restored log's first sequence is past this (the wall clock in
    /// µs: past every sequence handed out before).
    pub log_floor: u64,
}

/// Reads records while hashing them.
struct Unframer<R: Read> {
    input: R,
    hash: blake3::Hasher,
}

impl<R: Read> Unframer<std::io::BufReader<R>> {
    fn new(input: R) -> Self {
        Unframer {
            input: std::io::BufReader::new(input),
            hash: blake3::Hasher::new(),
        }
    }
}

impl<R: Read> Unframer<R> {
    fn exact(&mut self, n: usize, hash: bool) -> Result<Vec<u8>> {
        let mut buf = vec![0; n];
        self.input.read_exact(&mut buf).map_err(|e| {
            Error::Storage(format!(
                "the backup ends early or cannot be read ({e}): it is cut off; take it again"
            ))
        })?;
        if hash {
            self.hash.update(&buf);
        }
        Ok(buf)
    }

    fn field(&mut self, hash: bool) -> Result<Vec<u8>> {
        let len = u32::from_le_bytes(self.exact(4, hash)?.try_into().expect("4 bytes"));
        if len > MAX_FIELD {
            return Err(Error::Storage(format!(
                "the backup holds a record of {len} bytes: it is damaged"
            )));
        }
        self.exact(len as usize, hash)
    }

    /// The next record: kind, key, value. The trailer is not hashed.
    fn record(&mut self) -> Result<(u8, Vec<u8>, Vec<u8>)> {
        let mut kind = [0u8; 1];
        self.input.read_exact(&mut kind).map_err(|e| {
            Error::Storage(format!(
                "the backup ends early ({e}): it is cut off; take it again"
            ))
        })?;
        let hash = kind[0] != TRAILER;
        if hash {
            self.hash.update(&kind);
        }
        let key = self.field(hash)?;
        let value = self.field(hash)?;
        Ok((kind[0], key, value))
    }
}

/// The meta entries of a restored store: the backup's, with the log
/// restarted past `plan.log_floor`, every peer's cursor there and every
/// peer marked for anti-entropy, and the watermarks of what the snapshot
/// holds.
fn restored_meta(
    plan: &RestorePlan,
    header: &BackupHeader,
    meta: Vec<(String, Vec<u8>)>,
) -> Vec<(String, Vec<u8>)> {
    let floor = plan.log_floor.max(header.checkpoint + 1);
    let own = format!("applied/{}", plan.region);
    // The snapshot holds the origin's writes up to its checkpoint.
    let origin = format!("applied/{}", header.region);
    let seeded = header.region != plan.region;
    let mut out: Vec<(String, Vec<u8>)> = meta
        .into_iter()
        .filter(|(k, _)| {
            !(["checkpoint", "feed_last", "feed_trimmed"].contains(&k.as_str())
                || k.starts_with("cursor/")
                || k.starts_with("ae/")
                || *k == own
                || (seeded && *k == origin))
        })
        .collect();
    if seeded {
        out.push((origin, u64_bytes(header.checkpoint).to_vec()));
    }
    out.push(("checkpoint".into(), u64_bytes(floor).to_vec()));
    for peer in &plan.peers {
        out.push((format!("cursor/{peer}"), u64_bytes(floor).to_vec()));
        out.push((format!("ae/{peer}"), vec![1]));
    }
    // The feed restarts past every position handed out before.
    out.push(("feed_last".into(), u64_bytes(floor).to_vec()));
    out
}

/// Reads a whole backup and checks it (its header, every record, the
/// trailer's count and checksum) without writing anything.
pub fn verify(input: impl Read) -> Result<BackupSummary> {
    let mut r = Unframer::new(input);
    let header = read_header(&mut r)?;
    let (mut records, mut entities) = (1u64, 0u64);
    let (count, hash) = loop {
        let (kind, key, value) = r.record()?;
        match kind {
            TRAILER => break (key, value),
            ENTITY => entities += 1,
            _ => {}
        }
        records += 1;
    };
    check_trailer(&r, records, &count, &hash)?;
    Ok(BackupSummary {
        header,
        entities,
        records,
    })
}

fn read_header<R: Read>(r: &mut Unframer<R>) -> Result<BackupHeader> {
    let magic = r.exact(MAGIC.len() + 1, true)?;
    if magic[..MAGIC.len()] != MAGIC[..] {
        return Err(Error::Storage(
            "not a parallax backup (its first bytes are not PARALLAX-BACKUP). Fix: pass a file `parallax backup` wrote".into(),
        ));
    }
    if magic[MAGIC.len()] != FORMAT {
        return Err(Error::Storage(format!(
            "the backup has format {}, newer than this build ({FORMAT}); upgrade parallax",
            magic[MAGIC.len()]
        )));
    }
    let (kind, _, value) = r.record()?;
    if kind != HEADER {
        return Err(Error::Storage(
            "the backup has no header: it is damaged".into(),
        ));
    }
    rmp_serde::from_slice(&value)
        .map_err(|e| Error::Storage(format!("the backup's header is damaged: {e}")))
}

fn check_trailer<R: Read>(r: &Unframer<R>, records: u64, count: &[u8], hash: &[u8]) -> Result<()> {
    if bytes_u64(count) != records || hash != r.hash.finalize().as_bytes() {
        return Err(Error::Storage(
            "the backup's checksum does not match its contents: it is damaged; take it again"
                .into(),
        ));
    }
    Ok(())
}

/// Builds the store at `path` from the backup read from `input`, as
/// `plan` says; nothing is at `path` until the whole backup is checked and
/// written. Refuses a cut, damaged or foreign file.
pub fn restore(input: impl Read, path: &Path, plan: &RestorePlan) -> Result<BackupSummary> {
    let mut r = Unframer::new(input);
    let header = read_header(&mut r)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".restoring");
    let tmp = path.with_file_name(name);
    let _ = std::fs::remove_file(&tmp);
    let written = write_store(&mut r, &tmp, plan, &header);
    let (entities, records) = match written {
        Ok(counts) => counts,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, path).map_err(|e| {
        Error::Storage(format!(
            "cannot rename {} to {}: {e}",
            tmp.display(),
            path.display()
        ))
    })?;
    Ok(BackupSummary {
        header,
        entities,
        records,
    })
}

/// Writes the records after the header into a new store at `tmp`, then
/// the restored meta once the trailer checks out; (entities, records).
fn write_store<R: Read>(
    r: &mut Unframer<R>,
    tmp: &Path,
    plan: &RestorePlan,
    header: &BackupHeader,
) -> Result<(u64, u64)> {
    let store = Store::open(tmp)?;
    let (mut records, mut entities) = (1u64, 0u64);
    let mut meta = Vec::new();
    let trailer = loop {
        // One transaction per batch of records.
        let txn = store.db.begin_write().db()?;
        let mut trailer = None;
        {
            let mut ents = txn.open_table(ENTITIES).db()?;
            let mut queue = txn.open_table(QUEUE).db()?;
            let mut log = txn.open_table(CONFLICT_LOG).db()?;
            for _ in 0..RESTORE_BATCH {
                let (kind, key, value) = r.record()?;
                match kind {
                    TRAILER => {
                        trailer = Some((key, value));
                        break;
                    }
                    META_ENTRY => {
                        let k = String::from_utf8(key)
                            .map_err(|_| Error::Storage("the backup's meta is damaged".into()))?;
                        meta.push((k, value));
                    }
                    ENTITY => {
                        ents.insert(key.as_slice(), value.as_slice()).db()?;
                        entities += 1;
                    }
                    QUEUE_ENTRY => {
                        queue.insert(key.as_slice(), bytes_u64(&value)).db()?;
                    }
                    CONFLICT => {
                        log.insert(bytes_u64(&key), value.as_slice()).db()?;
                    }
                    other => {
                        return Err(Error::Storage(format!(
                            "the backup holds a record of unknown kind {other}: it is damaged or newer than this build"
                        )));
                    }
                }
                records += 1;
            }
        }
        txn.commit().db()?;
        if let Some(t) = trailer {
            break t;
        }
    };
    let (count, hash) = trailer;
    check_trailer(r, records, &count, &hash)?;
    let mut txn = store.db.begin_write().db()?;
    {
        let mut table = txn.open_table(META).db()?;
        for (k, v) in restored_meta(plan, header, meta) {
            table.insert(k.as_str(), v.as_slice()).db()?;
        }
    }
    txn.set_durability(redb::Durability::Immediate).db()?;
    txn.commit().db()?;
    Ok((entities, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(dir: &Path, n: u64) -> Store {
        let store = Store::open(&dir.join("a.redb")).unwrap();
        let txn = store.begin(true).unwrap();
        for i in 0..n {
            txn.put_entity("likes", &format!("k{i}"), format!("v{i}").as_bytes())
                .unwrap();
        }
        txn.enqueue("notes", "n1", 7).unwrap();
        txn.set_u64("checkpoint", 40).unwrap();
        txn.set_u64("applied/b", 12).unwrap();
        txn.set_u64("applied/a", 3).unwrap();
        txn.set_u64("cursor/b", 39).unwrap();
        txn.commit().unwrap();
        store
    }

    fn plan(region: &str, peers: &[&str]) -> RestorePlan {
        RestorePlan {
            region: region.into(),
            peers: peers.iter().map(|p| (*p).to_owned()).collect(),
            log_floor: 1_000_000,
        }
    }

    #[test]
    fn a_restored_store_holds_the_snapshot_and_restarts_its_log_past_every_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), 1_000);
        let mut bytes = Vec::new();
        let summary = store.backup("a", 5, &mut bytes).unwrap();
        assert_eq!(summary.entities, 1_000);
        let path = dir.path().join("restored.redb");
        let restored = restore(bytes.as_slice(), &path, &plan("a", &["b", "c"])).unwrap();
        assert_eq!(restored, summary);
        let back = Store::open(&path).unwrap();
        assert_eq!(
            back.read_raw("likes", "k999").unwrap().as_deref(),
            Some(&b"v999"[..])
        );
        assert_eq!(back.queue_len().unwrap(), 1);
        let meta = back.load_meta().unwrap();
        assert_eq!(meta.checkpoint, 1_000_000, "the log restarts at the floor");
        assert_eq!(meta.cursors["b"], 1_000_000);
        assert_eq!(meta.cursors["c"], 1_000_000);
        assert!(meta.needs_anti_entropy["b"] && meta.needs_anti_entropy["c"]);
        assert_eq!(meta.applied.get("b"), Some(&12));
        assert_eq!(meta.applied.get("a"), None, "no watermark of itself");
        assert!(
            back.feed_start() > 1_000_000,
            "the feed restarts past the floor"
        );
    }

    #[test]
    fn a_backup_restored_as_another_region_takes_the_origins_checkpoint_as_its_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), 10);
        let mut bytes = Vec::new();
        store.backup("a", 5, &mut bytes).unwrap();
        let path = dir.path().join("d.redb");
        restore(bytes.as_slice(), &path, &plan("d", &["a", "b"])).unwrap();
        let meta = Store::open(&path).unwrap().load_meta().unwrap();
        assert_eq!(meta.applied.get("a"), Some(&40));
        assert_eq!(meta.applied.get("b"), Some(&12));
        assert_eq!(meta.applied.get("d"), None);
    }

    #[test]
    fn a_cut_or_altered_backup_is_refused_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), 100);
        let mut bytes = Vec::new();
        store.backup("a", 5, &mut bytes).unwrap();
        let path = dir.path().join("r.redb");
        let cut = &bytes[..bytes.len() - 10];
        let e = restore(cut, &path, &plan("a", &["b"])).unwrap_err();
        assert!(e.to_string().contains("cut off"), "{e}");
        let mut altered = bytes.clone();
        let at = altered.len() / 2;
        altered[at] ^= 1;
        let e = restore(altered.as_slice(), &path, &plan("a", &["b"])).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
        assert!(!path.exists());
        let e = restore(&b"hello world, not a backup"[..], &path, &plan("a", &["b"])).unwrap_err();
        assert!(e.to_string().contains("not a parallax backup"), "{e}");
        assert!(verify(cut).is_err() && verify(altered.as_slice()).is_err());
        assert_eq!(verify(bytes.as_slice()).unwrap().entities, 100);
        restore(bytes.as_slice(), &path, &plan("a", &["b"])).unwrap();
    }
}
