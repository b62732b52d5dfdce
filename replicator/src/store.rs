//! The region's embedded, durable store: one redb file per region.
//!
//! Tables:
//! - `entities`: `class \0 key` -> encoded [`Entity`];
//! - `meta`: the checkpoint (last log sequence included), per-peer cursors,
//!   per-origin applied watermarks, the last HLC stamp, peers marked for
//!   anti-entropy;
//! - `queue`: `class \0 key` -> first seen (µs): the reconciliation queue;
//! - `conflict_log`: id -> [`ConflictRecord`], recorded conflict outcomes;
//! - `changes`: feed position -> [`StoredChange`], the change feed: every
//!   version the region applied, in the order it applied them, written in
//!   the same transaction as the entity.
//!
//! Feed positions only grow, across restarts and crashes: the transactions
//! between checkpoints are not synced, so a crash can take back the last
//! positions handed out; a reopened store therefore starts `FEED_GAP` past
//! the newest position it holds (or recorded at its last checkpoint). A
//! reader whose cursor was among the lost positions resumes with the
//! changes after the gap, which include the lost ones applied again
//! (replayed from the log, or shipped again by their origin).
//!
//! The replication log itself lives in the write-ahead log ([`crate::wal`]).
//! Only the writer ([`crate::writer`]) writes; anyone reads.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use parallax_core::api::{ConflictRecord, QueuedConflict};
use parallax_core::clock::Hlc;
use parallax_core::entity::Entity;
use parallax_core::error::{Error, Result};

const ENTITIES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("entities");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const QUEUE: TableDefinition<'_, &[u8], u64> = TableDefinition::new("queue");
const CONFLICT_LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("conflict_log");
const CHANGES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("changes");

mod backup;
mod feed;

pub use backup::{BackupHeader, BackupSummary, RestorePlan, restore, verify};
pub use feed::{FEED_GAP, FeedPage, StoredChange};

/// Turns a redb error into a storage error (redb is the replicator's
/// alone, so [`Error`] does not know it).
pub(crate) trait Db<T> {
    fn db(self) -> Result<T>;
}

impl<T, E: std::fmt::Display> Db<T> for std::result::Result<T, E> {
    fn db(self) -> Result<T> {
        self.map_err(|e| Error::Storage(e.to_string()))
    }
}

/// Format marker of the store as a whole.
const STORE_FORMAT: u64 = 1;
/// Format marker of encoded conflict records.
const RECORD_FORMAT: u8 = 1;

/// Replication bookkeeping loaded at start-up.
#[derive(Clone, Debug, Default)]
pub struct Meta {
    /// Last local log sequence included in the durable checkpoint.
    pub checkpoint: u64,
    /// Per peer: last sequence it acknowledged.
    pub cursors: BTreeMap<String, u64>,
    /// Per origin: last sequence applied here.
    pub applied: BTreeMap<String, u64>,
    /// Last HLC stamp issued or observed.
    pub hlc: Option<Hlc>,
    /// Peers whose log was dropped (backlog cap) and need anti-entropy.
    pub needs_anti_entropy: BTreeMap<String, bool>,
    /// Next conflict record id.
    pub next_conflict_id: u64,
}

/// The region's store.
#[derive(Clone, Debug)]
pub struct Store {
    db: Arc<Database>,
    /// The first feed position this opening hands out.
    feed_start: u64,
}

/// The key under which an entity is stored: class, NUL, the first four
/// bytes of BLAKE3(key), key. Entities are thus ordered by Merkle bucket, so
/// the entries of a bucket are one range scan.
pub fn entity_key(class: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(class.len() + key.len() + 5);
    k.extend_from_slice(class.as_bytes());
    k.push(0);
    k.extend_from_slice(&parallax_core::merkle::key_prefix(key));
    k.extend_from_slice(key.as_bytes());
    k
}

fn class_prefix(class: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(class.len() + 1);
    k.extend_from_slice(class.as_bytes());
    k.push(0);
    k
}

fn split_entity_key(k: &[u8]) -> (String, String) {
    let at = k.iter().position(|&b| b == 0).unwrap_or(k.len());
    let class = String::from_utf8_lossy(&k[..at]).into_owned();
    let key = String::from_utf8_lossy(k.get(at + 5..).unwrap_or_default()).into_owned();
    (class, key)
}

/// The key of a reconciliation queue entry: class, NUL, key.
fn queue_key(class: &str, key: &str) -> Vec<u8> {
    let mut k = class_prefix(class);
    k.extend_from_slice(key.as_bytes());
    k
}

fn split_queue_key(k: &[u8]) -> (String, String) {
    let at = k.iter().position(|&b| b == 0).unwrap_or(k.len());
    let class = String::from_utf8_lossy(&k[..at]).into_owned();
    let key = String::from_utf8_lossy(k.get(at + 1..).unwrap_or_default()).into_owned();
    (class, key)
}

fn encode_record<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_FORMAT];
    rmp_serde::encode::write(&mut out, value).expect("record encodes");
    out
}

fn decode_record<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T> {
    match bytes.split_first() {
        Some((&RECORD_FORMAT, rest)) => rmp_serde::from_slice(rest)
            .map_err(|e| Error::Storage(format!("undecodable {what}: {e}"))),
        Some((v, _)) => Err(Error::Storage(format!(
            "{what} format {v} is newer than this build understands; upgrade parallax"
        ))),
        None => Err(Error::Storage(format!("empty {what}"))),
    }
}

fn u64_bytes(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

fn bytes_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[8 - n..].copy_from_slice(&b[b.len() - n..]);
    u64::from_be_bytes(a)
}

/// Creates a new, empty store under a temporary name and renames it to
/// `path` once its header and tables are durable, so a process killed while
/// creating its first store leaves either no store or a whole one (never a
/// file redb refuses as "not a redb database"). A leftover temporary file
/// from such a kill is discarded.
fn create_atomically(path: &Path) -> Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".creating");
    let tmp = path.with_file_name(name);
    let io = |what: &str, e: std::io::Error| {
        Error::Storage(format!("cannot {what} {}: {e}", tmp.display()))
    };
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove the leftover", e)),
    }
    {
        let db = Database::builder()
            .create(&tmp)
            .map_err(|e| Error::Storage(format!("cannot create store {}: {e}", tmp.display())))?;
        let txn = db.begin_write().db()?;
        {
            txn.open_table(ENTITIES).db()?;
            txn.open_table(QUEUE).db()?;
            txn.open_table(CONFLICT_LOG).db()?;
            txn.open_table(CHANGES).db()?;
            let mut meta = txn.open_table(META).db()?;
            meta.insert("format", u64_bytes(STORE_FORMAT).as_slice())
                .db()?;
        }
        txn.commit().db()?;
    }
    std::fs::rename(&tmp, path).map_err(|e| io("rename into place", e))?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync the directory of", e))?;
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Storage(format!(
                    "cannot create data directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        if !path.exists() {
            create_atomically(path)?;
        }
        let db = Database::builder().set_cache_size(256 << 20).create(path).map_err(|e| {
            let hint = if matches!(e, redb::DatabaseError::DatabaseAlreadyOpen) {
                ". Fix: another parallax process uses this data directory; stop it or pass another --data-dir"
            } else {
                ""
            };
            Error::Storage(format!("cannot open store {}: {e}{hint}", path.display()))
        })?;
        let txn = db.begin_write().db()?;
        {
            txn.open_table(ENTITIES).db()?;
            txn.open_table(QUEUE).db()?;
            txn.open_table(CONFLICT_LOG).db()?;
            txn.open_table(CHANGES).db()?;
            let mut meta = txn.open_table(META).db()?;
            let format = meta.get("format").db()?.map(|v| bytes_u64(v.value()));
            match format {
                None => {
                    meta.insert("format", u64_bytes(STORE_FORMAT).as_slice())
                        .db()?;
                }
                Some(STORE_FORMAT) => {}
                Some(v) => {
                    return Err(Error::Storage(format!(
                        "store {} has format {v}, newer than this build ({STORE_FORMAT}); upgrade parallax",
                        path.display()
                    )));
                }
            }
        }
        txn.commit().db()?;
        let feed_start = {
            let txn = db.begin_read().db()?;
            let changes = txn.open_table(CHANGES).db()?;
            let meta = txn.open_table(META).db()?;
            let newest = changes.last().db()?.map_or(0, |(k, _)| k.value());
            let recorded = meta
                .get("feed_last")
                .db()?
                .map_or(0, |v| bytes_u64(v.value()));
            match newest.max(recorded) {
                0 => 1,
                last => last + FEED_GAP,
            }
        };
        Ok(Store {
            db: Arc::new(db),
            feed_start,
        })
    }

    /// The first feed position this opening of the store hands out.
    pub fn feed_start(&self) -> u64 {
        self.feed_start
    }

    /// Reads one entity.
    pub fn read_entity(&self, class: &str, key: &str) -> Result<Option<Entity>> {
        let txn = self.db.begin_read().db()?;
        let table = txn.open_table(ENTITIES).db()?;
        match table.get(entity_key(class, key).as_slice()).db()? {
            Some(v) => Entity::decode(v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Loads the replication bookkeeping.
    pub fn load_meta(&self) -> Result<Meta> {
        let txn = self.db.begin_read().db()?;
        let table = txn.open_table(META).db()?;
        let mut meta = Meta::default();
        for item in table.iter().db()? {
            let (k, v) = item.db()?;
            let (k, v) = (k.value(), v.value());
            if k == "checkpoint" {
                meta.checkpoint = bytes_u64(v);
            } else if k == "next_conflict_id" {
                meta.next_conflict_id = bytes_u64(v);
            } else if k == "hlc" {
                meta.hlc = Some(decode_record(v, "hlc")?);
            } else if let Some(peer) = k.strip_prefix("cursor/") {
                meta.cursors.insert(peer.to_owned(), bytes_u64(v));
            } else if let Some(origin) = k.strip_prefix("applied/") {
                meta.applied.insert(origin.to_owned(), bytes_u64(v));
            } else if let Some(peer) = k.strip_prefix("ae/") {
                meta.needs_anti_entropy
                    .insert(peer.to_owned(), v.first() == Some(&1));
            }
        }
        Ok(meta)
    }

    /// The reconciliation queue, optionally for one class.
    pub fn queue(&self, class: Option<&str>, limit: usize) -> Result<Vec<QueuedConflict>> {
        let txn = self.db.begin_read().db()?;
        let table = txn.open_table(QUEUE).db()?;
        let mut out = Vec::new();
        let prefix = class.map(class_prefix);
        let iter = match &prefix {
            Some(p) => table.range(p.as_slice()..).db()?,
            None => table.range::<&[u8]>(..).db()?,
        };
        for item in iter {
            let (k, v) = item.db()?;
            if let Some(p) = &prefix
                && !k.value().starts_with(p)
            {
                break;
            }
            let (class, key) = split_queue_key(k.value());
            out.push(QueuedConflict {
                class,
                key,
                first_seen_us: v.value(),
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Number of entries in the reconciliation queue.
    pub fn queue_len(&self) -> Result<u64> {
        let txn = self.db.begin_read().db()?;
        redb::ReadableTableMetadata::len(&txn.open_table(QUEUE).db()?).db()
    }

    /// Recorded conflict outcomes with id `> after`, oldest first.
    pub fn conflict_log(&self, after: u64, limit: usize) -> Result<Vec<ConflictRecord>> {
        let txn = self.db.begin_read().db()?;
        let table = txn.open_table(CONFLICT_LOG).db()?;
        let mut out = Vec::new();
        for item in table.range(after.saturating_add(1)..).db()? {
            let (_, v) = item.db()?;
            out.push(decode_record(v.value(), "conflict record")?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Every entity of a class, in key order, from `after` (exclusive), at most `limit`.
    pub fn scan_class(
        &self,
        class: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Entity)>> {
        let txn = self.db.begin_read().db()?;
        let table = txn.open_table(ENTITIES).db()?;
        let prefix = class_prefix(class);
        let start = match after {
            Some(k) => {
                let mut s = entity_key(class, k);
                s.push(0);
                s
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for item in table.range(start.as_slice()..).db()? {
            let (k, v) = item.db()?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            let (_, key) = split_entity_key(k.value());
            out.push((key, Entity::decode(v.value())?));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Reads the stored bytes of one entity.
    pub fn read_raw(&self, class: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read().db()?;
        let table = txn.open_table(ENTITIES).db()?;
        Ok(table
            .get(entity_key(class, key).as_slice())
            .db()?
            .map(|v| v.value().to_vec()))
    }

    /// The entities of a class whose Merkle bucket is in `buckets`, as
    /// (key, stored bytes), in bucket order; at most `limit`.
    pub fn scan_buckets(
        &self,
        class: &str,
        buckets: std::ops::Range<u32>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let shift = 32 - parallax_core::merkle::BUCKET_BITS;
        let bound = |b: u32| {
            let mut k = class_prefix(class);
            match b
                .checked_shl(shift)
                .filter(|_| u64::from(b) < u64::from(parallax_core::merkle::BUCKETS))
            {
                Some(p) => k.extend_from_slice(&p.to_be_bytes()),
                // Past the last bucket: everything of the class.
                None => {
                    k.pop();
                    k.push(1);
                }
            }
            k
        };
        let (start, end) = (bound(buckets.start), bound(buckets.end));
        let txn = self.db.begin_read().db()?;
        let table = txn.open_table(ENTITIES).db()?;
        let mut out = Vec::new();
        for item in table.range(start.as_slice()..end.as_slice()).db()? {
            let (k, v) = item.db()?;
            let (_, key) = split_entity_key(k.value());
            out.push((key, v.value().to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Calls `f(key, stored bytes)` for every entity of a class, in bucket order.
    pub fn for_each_raw(&self, class: &str, mut f: impl FnMut(&str, &[u8])) -> Result<()> {
        let txn = self.db.begin_read().db()?;
        let table = txn.open_table(ENTITIES).db()?;
        let prefix = class_prefix(class);
        for item in table.range(prefix.as_slice()..).db()? {
            let (k, v) = item.db()?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            let (_, key) = split_entity_key(k.value());
            f(&key, v.value());
        }
        Ok(())
    }

    /// Starts the (single) write transaction; `durable` makes its commit a
    /// checkpoint that survives a crash (with fast repair on reopen).
    pub(crate) fn begin(&self, durable: bool) -> Result<StoreTxn> {
        let mut txn = self.db.begin_write().db()?;
        if durable {
            txn.set_durability(redb::Durability::Immediate).db()?;
            txn.set_quick_repair(true);
        } else {
            txn.set_durability(redb::Durability::None).db()?;
        }
        Ok(StoreTxn { txn })
    }
}

/// A write transaction over the store's tables.
pub(crate) struct StoreTxn {
    txn: redb::WriteTransaction,
}

impl StoreTxn {
    pub(crate) fn get_raw(&self, class: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let table = self.txn.open_table(ENTITIES).db()?;
        Ok(table
            .get(entity_key(class, key).as_slice())
            .db()?
            .map(|v| v.value().to_vec()))
    }

    pub(crate) fn remove_entity(&self, class: &str, key: &str) -> Result<()> {
        let mut table = self.txn.open_table(ENTITIES).db()?;
        table.remove(entity_key(class, key).as_slice()).db()?;
        Ok(())
    }

    pub(crate) fn put_entity(&self, class: &str, key: &str, encoded: &[u8]) -> Result<()> {
        let mut table = self.txn.open_table(ENTITIES).db()?;
        table
            .insert(entity_key(class, key).as_slice(), encoded)
            .db()?;
        Ok(())
    }

    pub(crate) fn set_u64(&self, key: &str, value: u64) -> Result<()> {
        let mut table = self.txn.open_table(META).db()?;
        table.insert(key, u64_bytes(value).as_slice()).db()?;
        Ok(())
    }

    pub(crate) fn set_flag(&self, key: &str, value: bool) -> Result<()> {
        let mut table = self.txn.open_table(META).db()?;
        table.insert(key, [u8::from(value)].as_slice()).db()?;
        Ok(())
    }

    pub(crate) fn set_hlc(&self, hlc: &Hlc) -> Result<()> {
        let mut table = self.txn.open_table(META).db()?;
        table.insert("hlc", encode_record(hlc).as_slice()).db()?;
        Ok(())
    }

    /// Puts a key in the reconciliation queue unless it is there; returns
    /// when it was first seen.
    pub(crate) fn enqueue(&self, class: &str, key: &str, now_us: u64) -> Result<(u64, bool)> {
        let mut table = self.txn.open_table(QUEUE).db()?;
        let k = queue_key(class, key);
        if let Some(v) = table.get(k.as_slice()).db()? {
            return Ok((v.value(), false));
        }
        table.insert(k.as_slice(), now_us).db()?;
        Ok((now_us, true))
    }

    /// Takes a key out of the queue; returns when it was first seen.
    pub(crate) fn dequeue(&self, class: &str, key: &str) -> Result<Option<u64>> {
        let mut table = self.txn.open_table(QUEUE).db()?;
        Ok(table
            .remove(queue_key(class, key).as_slice())
            .db()?
            .map(|v| v.value()))
    }

    pub(crate) fn record_conflict(&self, record: &ConflictRecord, keep: u64) -> Result<()> {
        let mut table = self.txn.open_table(CONFLICT_LOG).db()?;
        table
            .insert(record.id, encode_record(record).as_slice())
            .db()?;
        if record.id > keep && record.id.is_multiple_of(1024) {
            table.retain_in(..=record.id - keep, |_, _| false).db()?;
        }
        Ok(())
    }

    pub(crate) fn commit(self) -> Result<()> {
        self.txn.commit().db()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_keys_split_back() {
        let k = entity_key("likes", "a:b\u{1}c");
        assert_eq!(
            split_entity_key(&k),
            ("likes".to_owned(), "a:b\u{1}c".to_owned())
        );
    }

    #[test]
    fn u64_codec() {
        assert_eq!(bytes_u64(&u64_bytes(123_456_789)), 123_456_789);
    }

    #[test]
    fn meta_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.redb");
        {
            let store = Store::open(&path).unwrap();
            let txn = store.begin(true).unwrap();
            txn.set_u64("checkpoint", 5).unwrap();
            txn.set_u64("cursor/us", 3).unwrap();
            txn.set_u64("applied/eu", 9).unwrap();
            txn.set_flag("ae/us", true).unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let meta = store.load_meta().unwrap();
        assert_eq!(meta.checkpoint, 5);
        assert_eq!(meta.cursors["us"], 3);
        assert_eq!(meta.applied["eu"], 9);
        assert!(meta.needs_anti_entropy["us"]);
    }

    #[test]
    fn a_store_half_created_by_a_killed_process_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.redb");
        // What a kill -9 during the first start leaves: a partial file
        // under the temporary name, nothing under the real one.
        std::fs::write(dir.path().join("r.redb.creating"), [0u8; 100]).unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(store.load_meta().unwrap().checkpoint, 0);
        assert!(!dir.path().join("r.redb.creating").exists());
        drop(store);
        Store::open(&path).unwrap();
    }
}
