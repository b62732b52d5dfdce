//! The collector's file operations, on a folder ([`files`]) or a bucket
//! ([`Bucket`](crate::bucket::Bucket)), whichever the tables are in.

use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;

use crate::{Collector, Error, files};

impl Collector {
    pub(crate) fn write_file(
        &self,
        dir: &Path,
        batch: &RecordBatch,
        first_ts_us: u64,
    ) -> Result<(PathBuf, u64), Error> {
        match &self.inner.opts.bucket {
            Some(b) => b.write_file(dir, batch, first_ts_us, &self.inner.files),
            None => files::write_file(dir, batch, first_ts_us, &self.inner.files),
        }
    }

    pub(crate) fn parquet_files(&self, dir: &Path) -> Result<Vec<PathBuf>, Error> {
        match &self.inner.opts.bucket {
            Some(b) => b.parquet_files(dir),
            None => Ok(files::parquet_files(dir)),
        }
    }

    pub(crate) fn read_files(&self, paths: &[PathBuf]) -> Result<Vec<RecordBatch>, Error> {
        match &self.inner.opts.bucket {
            Some(b) => b.read_files(paths),
            None => files::read_files(paths),
        }
    }

    pub(crate) fn partitions(
        &self,
        dir: &Path,
        key: &str,
    ) -> Result<Vec<(String, PathBuf)>, Error> {
        match &self.inner.opts.bucket {
            Some(b) => b.partitions(dir, key),
            None => Ok(files::partitions(dir, key)),
        }
    }

    pub(crate) fn exists(&self, dir: &Path) -> Result<bool, Error> {
        match &self.inner.opts.bucket {
            Some(b) => b.exists(dir),
            None => Ok(dir.exists()),
        }
    }

    pub(crate) fn remove(&self, dir: &Path) -> Result<(), Error> {
        match &self.inner.opts.bucket {
            Some(b) => b.remove(dir),
            None => std::fs::remove_dir_all(dir)
                .map_err(|e| Error::Io(format!("cannot remove {}: {e}", dir.display()))),
        }
    }

    /// Makes `batch` the only file of `dir`: a reader sees the old files or
    /// the new one, never both or neither.
    pub(crate) fn swap_in(&self, dir: &Path, batch: &RecordBatch) -> Result<(), Error> {
        match &self.inner.opts.bucket {
            Some(b) => b.swap_in(dir, batch, &self.inner.files),
            None => files::swap_in(&self.inner.opts.root, dir, batch, &self.inner.files),
        }
    }

    /// Compacts a partition's files into one. Returns the rows compacted.
    pub(crate) fn compact_partition(&self, dir: &Path) -> Result<Option<u64>, Error> {
        let files = self.parquet_files(dir)?;
        if files.len() < 2 {
            return Ok(None);
        }
        let Some(sorted) = files::compacted(&self.read_files(&files)?)
            .map_err(|e| Error::Io(format!("cannot compact {}: {e}", dir.display())))?
        else {
            return Ok(None);
        };
        self.swap_in(dir, &sorted)?;
        Ok(Some(sorted.num_rows() as u64))
    }
}
