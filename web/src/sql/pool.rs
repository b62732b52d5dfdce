//! Where user queries run (the SQL console, `POST /api/v1/sql`, `parallax
//! sql`): a tokio runtime of their own, apart from the one that serves
//! pages and evaluates alerts, as InfluxDB 3 runs DataFusion on a dedicated
//! executor.
//!
//! A query there can burn every core of its runtime for its whole time
//! limit without delaying a page: the server's runtime keeps its threads,
//! and on Linux the pool's threads run at the lowest priority (nice 19), so
//! the scheduler hands the CPU to the server's threads (pages, dashboards'
//! own queries, alert evaluation) whenever they want it. At most
//! `max_concurrent` user queries run at once; one more waits up to
//! [`QUEUE_WAIT`] for a slot, then is refused. Dropping a [`Running`]
//! query (its time limit passed, or its HTTP client went away) cancels its
//! [`Stop`] and aborts its task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::SqlError;
use crate::stop::Stop;

/// How long a query over the concurrency bound waits for a slot.
pub(crate) const QUEUE_WAIT: Duration = Duration::from_secs(1);

/// The nice value of the pool's threads: the lowest priority there is.
#[cfg(target_os = "linux")]
const NICE: i32 = 19;

/// The user-query runtime and its slots.
#[derive(Debug)]
pub(crate) struct Pool {
    /// Taken on drop, to shut down without blocking (the pool may be
    /// dropped on an async thread, where a blocking drop panics).
    runtime: Option<Runtime>,
    handle: Handle,
    slots: Arc<Semaphore>,
    max_concurrent: usize,
}

impl Pool {
    /// A pool of one thread per core running at most `max_concurrent` queries.
    pub(crate) fn new(max_concurrent: usize) -> Result<Pool, SqlError> {
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("parallax-sql")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()
            .map_err(|e| SqlError::Failed(format!("cannot start the SQL query threads: {e}")))?;
        Ok(Pool {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
        })
    }

    /// A slot for one query: at once, or within [`QUEUE_WAIT`], or
    /// [`SqlError::Busy`]. The query holds it until its task has ended.
    pub(crate) async fn admit(&self) -> Result<OwnedSemaphorePermit, SqlError> {
        match tokio::time::timeout(QUEUE_WAIT, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(slot)) => Ok(slot),
            _ => Err(SqlError::Busy(self.max_concurrent)),
        }
    }

    /// Runs `query` on the pool, to be stopped by `stop`.
    pub(crate) fn spawn<T: Send + 'static>(
        &self,
        stop: Arc<Stop>,
        query: impl Future<Output = T> + Send + 'static,
    ) -> Running<T> {
        Running {
            task: self.handle.spawn(query),
            stop,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A query running on the pool: awaiting it gives its answer; dropping it
/// first stops it (at its next batch, or its next `.await`).
#[derive(Debug)]
pub(crate) struct Running<T> {
    task: JoinHandle<T>,
    stop: Arc<Stop>,
}

impl<T> Future for Running<T> {
    type Output = Result<T, SqlError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.task)
            .poll(cx)
            .map_err(|e| SqlError::Failed(format!("the query's task failed: {e}")))
    }
}

impl<T> Drop for Running<T> {
    fn drop(&mut self) {
        if !self.task.is_finished() {
            tracing::info!("SQL query stopped: its time limit passed or its client went away");
        }
        self.stop.cancel();
        self.task.abort();
    }
}

/// Lowers the calling thread's scheduling priority (Linux: `setpriority`
/// on the thread id changes that thread only).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICE) {
        tracing::warn!(
            error = %e,
            "cannot lower the priority of a SQL query thread; user queries compete with pages for the CPU"
        );
    }
}
