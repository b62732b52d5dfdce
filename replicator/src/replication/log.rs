//! The local replication log as the shippers read it: the newest entries
//! in memory, the rest from the write-ahead log files (the writer hands
//! over a fresh reader whenever files come or go).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use parallax_core::protocol::LogEntry;

use super::Replication;
use crate::wal::WalReader;

/// Most bytes of log entries kept in memory for shippers.
const RECENT_LOG_BYTES: usize = 64 << 20;

/// The log, for the shippers.
#[derive(Debug)]
pub(super) struct ShipLog {
    recent: Mutex<RecentLog>,
    wal_reader: RwLock<Arc<WalReader>>,
    /// Entries up to here were removed (every peer had them).
    truncated: AtomicU64,
    /// Moving average of an entry's size (bytes), for backlog estimates.
    avg_entry_bytes: AtomicU64,
}

impl Default for ShipLog {
    fn default() -> ShipLog {
        ShipLog {
            recent: Mutex::new(RecentLog::default()),
            wal_reader: RwLock::new(Arc::new(WalReader::empty())),
            truncated: AtomicU64::new(0),
            avg_entry_bytes: AtomicU64::new(256),
        }
    }
}

impl ShipLog {
    pub(super) fn truncated(&self) -> u64 {
        self.truncated.load(Ordering::Relaxed)
    }
}

/// The newest log entries, in memory, so shippers rarely read the files.
#[derive(Debug, Default)]
struct RecentLog {
    entries: VecDeque<LogEntry>,
    bytes: usize,
}

impl Replication {
    /// Keeps newly logged entries in memory for the shippers.
    pub(crate) fn remember(&self, entries: Vec<LogEntry>) {
        let mut recent = self.log.recent.lock().expect("recent lock");
        for e in entries {
            recent.bytes += e.size();
            recent.entries.push_back(e);
        }
        while recent.bytes > RECENT_LOG_BYTES {
            match recent.entries.pop_front() {
                Some(e) => recent.bytes -= e.size(),
                None => break,
            }
        }
    }

    pub(crate) fn set_wal_reader(&self, reader: WalReader) {
        *self.log.wal_reader.write().expect("reader lock") = Arc::new(reader);
    }

    /// Log entries with sequence in `from..=upto`, from memory when they are
    /// recent, else from the write-ahead log files.
    pub(crate) fn read_log(
        &self,
        from: u64,
        upto: u64,
        max_ops: usize,
        max_bytes: usize,
    ) -> parallax_core::Result<Vec<LogEntry>> {
        {
            let recent = self.log.recent.lock().expect("recent lock");
            if let Some(front) = recent.entries.front()
                && front.seq <= from
            {
                let skip = (from - front.seq) as usize;
                let mut out = Vec::new();
                let mut bytes = 0;
                for e in recent
                    .entries
                    .iter()
                    .skip(skip)
                    .take_while(|e| e.seq <= upto)
                {
                    bytes += e.size();
                    out.push(e.clone());
                    if out.len() >= max_ops || bytes >= max_bytes {
                        break;
                    }
                }
                return Ok(out);
            }
        }
        let reader = Arc::clone(&self.log.wal_reader.read().expect("reader lock"));
        reader.read(from, upto, max_ops, max_bytes)
    }

    pub(crate) fn set_truncated(&self, upto: u64) {
        self.log.truncated.store(upto, Ordering::Relaxed);
    }

    pub(crate) fn note_entry_size(&self, bytes: u64) {
        let avg = &self.log.avg_entry_bytes;
        let old = avg.load(Ordering::Relaxed);
        avg.store((old * 7 + bytes) / 8, Ordering::Relaxed);
    }

    /// Average size of a log entry (bytes).
    pub(crate) fn avg_entry_bytes(&self) -> u64 {
        self.log.avg_entry_bytes.load(Ordering::Relaxed)
    }
}
