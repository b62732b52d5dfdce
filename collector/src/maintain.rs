//! The maintenance pass: closed hours compacted, each date of a rollup
//! rewritten as one file (the hours just compacted rebuilt from their raw
//! files, the hourly rollups summed again from the 5-minute ones), and
//! partitions past retention deleted.

use std::collections::{BTreeMap, BTreeSet};

use crate::tables::date_hour;
use crate::{Collector, Error, rollup, tables};

/// Whether the hour (`date`, `hour` as in their partitions' names) has closed.
type IsClosed<'a> = &'a dyn Fn(&str, &str) -> bool;

impl Collector {
    /// Compacts closed hours, rewrites each date's rollup as one file
    /// (rebuilding the hours just compacted from their raw files), and
    /// deletes partitions past retention. Returns (partitions compacted or
    /// rewritten, partitions deleted).
    pub fn maintain(&self) -> Result<(u64, u64), Error> {
        let cfg = &self.inner.opts.config;
        let now = self.inner.opts.clock.now_us();
        let (today, hour_now) = date_hour(now);
        let closed = |date: &str, hour: &str| {
            date < today.as_str() || hour.parse::<u32>().is_ok_and(|h| h < hour_now)
        };
        let oldest_kept =
            |days: u32| date_hour(now.saturating_sub(u64::from(days) * 86_400_000_000)).0;
        let (raw_kept, rollups_kept) = (
            oldest_kept(cfg.retention_days),
            oldest_kept(cfg.rollup_retention_days),
        );
        let (mut compacted, mut deleted) = (0, 0);
        // The hours compacted now, by rollup and date: their rollup rows
        // are rebuilt from the compacted files.
        let mut rebuild: BTreeMap<(&str, String), BTreeSet<u32>> = BTreeMap::new();
        // Once after start: every closed raw hour without rollup rows gets them.
        let backfill = !self
            .inner
            .backfilled
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        // In a bucket every listing is a request: after the first pass, only
        // yesterday's and today's hours are looked at for compaction.
        let recent = date_hour(now.saturating_sub(86_400_000_000)).0;
        let look_back = backfill || self.inner.opts.bucket.is_none();
        for table in tables::TABLES {
            for (date, date_dir) in self.partitions(&self.region_dir(table), "date")? {
                if date < raw_kept {
                    self.remove(&date_dir)?;
                    deleted += 1;
                    continue;
                }
                if !cfg.compact || (!look_back && date < recent) {
                    continue;
                }
                for (hour, hour_dir) in self.partitions(&date_dir, "hour")? {
                    if !closed(&date, &hour) {
                        continue;
                    }
                    let _disk = self.inner.disk.lock().expect("disk lock");
                    if self.compact_partition(&hour_dir)?.is_none() {
                        continue;
                    }
                    self.inner.metrics.wrote(table, 0);
                    compacted += 1;
                    if let (Some(r), Ok(h)) = (rollup::rollups_of(table).first(), hour.parse()) {
                        rebuild.entry((r, date.clone())).or_default().insert(h);
                    }
                }
            }
        }
        // The dates of each 5-minute rollup rewritten now: their hourly
        // rollup is summed from them again.
        let mut rewritten: BTreeSet<(&str, String)> = BTreeSet::new();
        for r in rollup::ROLLUPS {
            let raw = rollup::raw_of(r).expect("a rollup's raw table");
            let finer = rollup::finer_of(r);
            let mut dates: BTreeSet<String> = self
                .partitions(&self.region_dir(r), "date")?
                .into_iter()
                .map(|d| d.0)
                .collect();
            if backfill {
                dates.extend(
                    self.partitions(&self.region_dir(finer.unwrap_or(raw)), "date")?
                        .into_iter()
                        .map(|d| d.0),
                );
            }
            for date in dates {
                let dir = self.date_dir(r, &date);
                if date < rollups_kept {
                    if self.exists(&dir)? {
                        self.remove(&dir)?;
                        deleted += 1;
                    }
                    continue;
                }
                let rebuilt = rebuild.contains_key(&(r, date.clone()))
                    || finer.is_some_and(|f| rewritten.contains(&(f, date.clone())));
                if !cfg.compact || (!look_back && date < recent && !rebuilt) {
                    continue;
                }
                let did = match finer {
                    Some(finer) => {
                        // A date written before hourly rollups existed has none yet.
                        let resum = rewritten.contains(&(finer, date.clone()))
                            || (backfill && !self.exists(&dir)?);
                        self.rewrite_coarser(r, finer, &date, resum)?
                    }
                    None => {
                        let hours = rebuild.remove(&(r, date.clone())).unwrap_or_default();
                        // Only dates that still have raw rows can lack rollup rows.
                        let raw_date = self.date_dir(raw, &date);
                        let covered: Option<IsClosed<'_>> =
                            (backfill && self.exists(&raw_date)?).then_some(&closed);
                        self.rewrite_rollup(r, raw, &date, hours, covered)?
                    }
                };
                if did {
                    rewritten.insert((r, date));
                    compacted += 1;
                }
            }
        }
        Ok((compacted, deleted))
    }

    /// Rewrites one date of a rollup as one file: its rows merged (one per
    /// bucket and keys), those of the hours in `rebuild` recomputed from
    /// the raw files (which also counts what a crash between a raw file and
    /// its rollup file left out). With `backfill` (which says whether a
    /// raw hour is closed), closed raw hours without rollup rows are
    /// rebuilt too. Does nothing to a date already one file with nothing to
    /// rebuild. Returns whether it rewrote.
    fn rewrite_rollup(
        &self,
        rollup: &str,
        raw: &str,
        date: &str,
        mut rebuild: BTreeSet<u32>,
        backfill: Option<IsClosed<'_>>,
    ) -> Result<bool, Error> {
        let _disk = self.inner.disk.lock().expect("disk lock");
        let dir = self.date_dir(rollup, date);
        let current = self.parquet_files(&dir)?;
        if backfill.is_none() && rebuild.is_empty() && current.len() <= 1 {
            return Ok(false);
        }
        let rows = self.read_files(&current)?;
        let raw_dir = self.date_dir(raw, date);
        if let Some(closed) = backfill {
            let covered = rollup::hours_of(&rows);
            for (hour, hour_dir) in self.partitions(&raw_dir, "hour")? {
                if let Ok(h) = hour.parse::<u32>()
                    && closed(date, &hour)
                    && !covered.contains(&h)
                    && !self.parquet_files(&hour_dir)?.is_empty()
                {
                    rebuild.insert(h);
                }
            }
        }
        if rebuild.is_empty() && current.len() <= 1 {
            return Ok(false);
        }
        let mut parts = rollup::without_hours(&rows, &rebuild)?;
        for h in &rebuild {
            let raw_rows =
                self.read_files(&self.parquet_files(&raw_dir.join(format!("hour={h}")))?)?;
            if let Some(b) = rollup::roll_up(raw, &raw_rows, &self.inner.opts.bounds)? {
                parts.push(b);
            }
        }
        self.publish(rollup, &dir, &parts)
    }

    /// Rewrites one date of a rollup summed from another (`finer`: the
    /// hourly ones from the 5-minute ones, the latency ones from the
    /// requests ones) as one file: summed again from `finer` when `resum`
    /// (that date of it was just rewritten, or this one has none yet), else
    /// its own files merged if there are several. Returns whether it
    /// rewrote.
    fn rewrite_coarser(
        &self,
        rollup: &str,
        finer: &str,
        date: &str,
        resum: bool,
    ) -> Result<bool, Error> {
        let _disk = self.inner.disk.lock().expect("disk lock");
        let dir = self.date_dir(rollup, date);
        let sources = if resum {
            self.parquet_files(&self.date_dir(finer, date))?
        } else {
            let current = self.parquet_files(&dir)?;
            if current.len() <= 1 {
                return Ok(false);
            }
            current
        };
        self.publish(rollup, &dir, &self.read_files(&sources)?)
    }

    /// Makes `parts`, merged, the one file of a rollup's date `dir` (none:
    /// the date is removed). Returns whether it changed anything.
    fn publish(
        &self,
        rollup: &str,
        dir: &std::path::Path,
        parts: &[arrow::record_batch::RecordBatch],
    ) -> Result<bool, Error> {
        match rollup::merge(rollup, parts)? {
            Some(merged) => self.swap_in(dir, &merged)?,
            None if self.exists(dir)? => self.remove(dir)?,
            None => return Ok(false),
        }
        self.inner.metrics.wrote(rollup, 0);
        Ok(true)
    }
}
