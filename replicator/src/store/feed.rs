//! The change feed's part of the store: the `changes` table, read by
//! position and trimmed by age and count (see the parent module for why
//! positions only grow).

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::{CHANGES, Db, META, Store, StoreTxn, bytes_u64, decode_record, encode_record};
use parallax_core::error::Result;

/// How far past its newest durable feed position a reopened store starts:
/// more than a checkpoint interval of changes can ever number.
pub const FEED_GAP: u64 = 1 << 32;

/// One entry of the change feed as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredChange {
    /// When the region applied it (µs).
    pub ts_us: u64,
    /// Class of the entity.
    pub class: String,
    /// Key of the entity.
    pub key: String,
    /// How it arrived (`local`, `replicated`, `repair`, `replay`, `fault`).
    pub source: String,
    /// The stored entity after the change; `None` when removed.
    #[serde(with = "serde_bytes")]
    pub entity: Option<Vec<u8>>,
}

/// A page read from the change feed.
#[derive(Clone, Debug, Default)]
pub struct FeedPage {
    /// `(position, change)`, oldest first.
    pub changes: Vec<(u64, StoredChange)>,
    /// The newest position.
    pub head: u64,
    /// Positions at or below this were trimmed.
    pub trimmed: u64,
}

impl Store {
    /// Up to `limit` changes after position `after`, optionally of one
    /// class, with the feed's head and trimmed positions.
    pub fn changes(&self, after: u64, limit: usize, class: Option<&str>) -> Result<FeedPage> {
        let txn = self.db.begin_read().db()?;
        let table = txn.open_table(CHANGES).db()?;
        let meta = txn.open_table(META).db()?;
        let trimmed = meta
            .get("feed_trimmed")
            .db()?
            .map_or(0, |v| bytes_u64(v.value()));
        let head = table
            .last()
            .db()?
            .map_or(0, |(k, _)| k.value())
            .max(self.feed_start - 1);
        let mut changes = Vec::new();
        if after < u64::MAX {
            for item in table.range(after + 1..).db()? {
                let (k, v) = item.db()?;
                let change: StoredChange = decode_record(v.value(), "feed change")?;
                if class.is_none_or(|c| c == change.class) {
                    changes.push((k.value(), change));
                    if changes.len() >= limit {
                        break;
                    }
                }
            }
        }
        Ok(FeedPage {
            changes,
            head,
            trimmed,
        })
    }
}

impl StoreTxn {
    /// Appends a change to the feed at position `seq`.
    pub(crate) fn put_change(&self, seq: u64, change: &StoredChange) -> Result<()> {
        let mut table = self.txn.open_table(CHANGES).db()?;
        table.insert(seq, encode_record(change).as_slice()).db()?;
        Ok(())
    }

    /// Trims the feed to changes applied at or after `keep_since_us` and to
    /// the newest `max_entries`, removing at most `budget` changes (so one
    /// checkpoint never stalls on a long trim); records the newest position
    /// removed. Returns how many it removed.
    pub(crate) fn trim_changes(
        &self,
        keep_since_us: u64,
        max_entries: u64,
        budget: usize,
    ) -> Result<usize> {
        let mut table = self.txn.open_table(CHANGES).db()?;
        let len = table.len().db()?;
        let mut over = len.saturating_sub(max_entries);
        let mut upto = None;
        let mut n = 0;
        for item in table.iter().db()? {
            if n >= budget {
                break;
            }
            let (k, v) = item.db()?;
            let ts = decode_record::<StoredChange>(v.value(), "feed change").map_or(0, |c| c.ts_us);
            if over == 0 && ts >= keep_since_us {
                break;
            }
            over = over.saturating_sub(1);
            upto = Some(k.value());
            n += 1;
        }
        if let Some(upto) = upto {
            table.retain_in(..=upto, |_, _| false).db()?;
            drop(table);
            self.set_u64("feed_trimmed", upto)?;
        }
        Ok(n)
    }
}
