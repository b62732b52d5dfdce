//! Background work, one way: every loop a process runs besides serving
//! requests (shippers, the lag sampler, checkpoints, anti-entropy, the
//! telemetry relay; the collector's flush, compaction, retention and probes;
//! the web app's alert evaluation) is a named worker started through
//! [`Workers`]. Each reports what it is doing through its [`Worker`] handle,
//! so `/v1/stats` can show every loop's state, last run and last error, and
//! all of them stop one way: [`Workers::stop`].

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::clock::Clock;

/// What a worker is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Started, doing work.
    #[default]
    Running,
    /// Waiting for work or for its next turn.
    Idle,
    /// Finished: told to stop, or its loop ended (see `last_error`).
    Stopped,
}

/// One worker as `/v1/stats` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its name, e.g. `shipper:us-east`.
    pub name: String,
    /// What it is doing now.
    pub state: WorkerState,
    /// Units of work finished (a batch shipped, a pass, a flush).
    pub runs: u64,
    /// When the last unit of work finished (µs since epoch).
    pub last_run_us: Option<u64>,
    /// The last error, if the latest unit of work failed.
    pub last_error: Option<String>,
    /// Units of work that failed.
    pub errors: u64,
}

/// A worker's handle on its own status and on the stop signal.
#[derive(Clone)]
pub struct Worker {
    status: Arc<Mutex<WorkerStatus>>,
    stop: watch::Receiver<bool>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.status.lock().expect("worker status").name)
            .finish()
    }
}

impl Worker {
    /// Resolves when the worker is told to stop (at once if it already was).
    pub async fn stopping(&mut self) {
        while !*self.stop.borrow_and_update() {
            if self.stop.changed().await.is_err() {
                // The owner is gone: nothing will ever tell it to go on.
                return;
            }
        }
    }

    /// Whether the worker has been told to stop.
    pub fn should_stop(&self) -> bool {
        *self.stop.borrow()
    }

    /// The stop signal itself, for loops that select on it directly.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    /// Sleeps `pause` as an idle worker; false when told to stop meanwhile.
    pub async fn idle_for(&mut self, pause: Duration) -> bool {
        self.idle();
        tokio::select! {
            _ = tokio::time::sleep(pause) => true,
            _ = self.stopping() => false,
        }
    }

    /// Waits, idle, for the next tick of `every` (ticks missed while busy
    /// are not made up); marks the worker busy and answers true, or false
    /// when it is told to stop meanwhile.
    pub async fn next_tick(&mut self, every: &mut tokio::time::Interval) -> bool {
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.idle();
        let go = tokio::select! {
            _ = every.tick() => true,
            _ = self.stopping() => false,
        };
        if go {
            self.busy();
        }
        go
    }

    /// Marks the worker busy.
    pub fn busy(&self) {
        self.status.lock().expect("worker status").state = WorkerState::Running;
    }

    /// Marks the worker idle.
    pub fn idle(&self) {
        self.status.lock().expect("worker status").state = WorkerState::Idle;
    }

    /// Records a finished unit of work and whether it failed.
    pub fn ran<E: std::fmt::Display>(&self, result: Result<(), E>) {
        let now = self.clock.now_us();
        let mut s = self.status.lock().expect("worker status");
        s.runs += 1;
        s.last_run_us = Some(now);
        match result {
            Ok(()) => s.last_error = None,
            Err(e) => {
                s.errors += 1;
                s.last_error = Some(e.to_string());
            }
        }
    }
}

struct Running {
    status: Arc<Mutex<WorkerStatus>>,
    task: AbortHandle,
}

/// The workers of one process part (a region node, the collector, the web
/// app), with one stop signal. Cheap to clone: clones share the workers.
#[derive(Clone)]
pub struct Workers {
    shared: Arc<Shared>,
}

struct Shared {
    stop: watch::Sender<bool>,
    running: Mutex<Vec<Running>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.status()).finish()
    }
}

impl Workers {
    /// No workers yet; `clock` stamps their runs.
    pub fn new(clock: Arc<dyn Clock>) -> Workers {
        Workers {
            shared: Arc::new(Shared {
                stop: watch::channel(false).0,
                running: Mutex::new(Vec::new()),
                clock,
            }),
        }
    }

    /// Starts a worker named `name` on the current runtime: `work` gets its
    /// handle and should return once the handle says to stop. If it ends
    /// on its own (or panics), its status says so.
    pub fn spawn<F, Fut>(&self, name: impl Into<String>, work: F)
    where
        F: FnOnce(Worker) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let status = Arc::new(Mutex::new(WorkerStatus {
            name: name.into(),
            ..WorkerStatus::default()
        }));
        let handle = Worker {
            status: Arc::clone(&status),
            stop: self.shared.stop.subscribe(),
            clock: Arc::clone(&self.shared.clock),
        };
        let fut = work(handle);
        let watched = Arc::clone(&status);
        let task = tokio::spawn(async move {
            let outcome = std::panic::AssertUnwindSafe(fut).catch_unwind().await;
            let mut s = watched.lock().expect("worker status");
            s.state = WorkerState::Stopped;
            if let Err(panic) = outcome {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|m| (*m).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                s.errors += 1;
                s.last_error = Some(format!("panicked: {what}"));
                tracing::error!(worker = %s.name, panic = %what, "A background worker panicked.");
            }
        });
        self.shared.running.lock().expect("workers").push(Running {
            status,
            task: task.abort_handle(),
        });
    }

    /// Every worker's status, in the order they started.
    pub fn status(&self) -> Vec<WorkerStatus> {
        self.shared
            .running
            .lock()
            .expect("workers")
            .iter()
            .map(|r| r.status.lock().expect("worker status").clone())
            .collect()
    }

    /// Tells every worker to stop.
    pub fn stop(&self) {
        self.shared.stop.send_replace(true);
    }

    /// Tells every worker to stop and waits at most `deadline` for them;
    /// those still running then are aborted. Returns the names of those.
    pub async fn shutdown(&self, deadline: Duration) -> Vec<String> {
        self.stop();
        let tasks: Vec<AbortHandle> = self
            .shared
            .running
            .lock()
            .expect("workers")
            .iter()
            .map(|r| r.task.clone())
            .collect();
        let wait = async {
            for t in &tasks {
                while !t.is_finished() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        let mut late = Vec::new();
        for r in self.shared.running.lock().expect("workers").iter() {
            if !r.task.is_finished() {
                late.push(r.status.lock().expect("worker status").name.clone());
                r.task.abort();
            }
        }
        late
    }

    /// Stops every worker at once, as a crash would.
    pub fn abort(&self) {
        self.stop();
        for r in self.shared.running.lock().expect("workers").iter() {
            r.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    #[tokio::test]
    async fn workers_report_runs_errors_and_stop_one_way() {
        let workers = Workers::new(Arc::new(SystemClock));
        let (go, mut gone) = tokio::sync::mpsc::channel::<u32>(4);
        workers.spawn("counter", move |mut w| async move {
            let mut n = 0u32;
            loop {
                w.busy();
                n += 1;
                w.ran(if n.is_multiple_of(2) {
                    Err("even")
                } else {
                    Ok(())
                });
                let _ = go.send(n).await;
                if !w.idle_for(Duration::from_millis(5)).await {
                    return;
                }
            }
        });
        workers.spawn("ends", |_w| async {});
        while gone.recv().await.expect("worker alive") < 2 {}
        let status = workers.status();
        assert_eq!(status[0].name, "counter");
        assert!(status[0].runs >= 2, "{status:?}");
        assert!(status[0].errors >= 1, "{status:?}");
        assert!(status[0].last_run_us.is_some());
        assert_ne!(status[0].state, WorkerState::Stopped);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(workers.status()[1].state, WorkerState::Stopped);
        let late = workers.shutdown(Duration::from_secs(5)).await;
        assert!(late.is_empty(), "{late:?} did not stop when told");
        for _ in 0..200 {
            if workers.status()[0].state == WorkerState::Stopped {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(workers.status()[0].state, WorkerState::Stopped);
    }

    #[tokio::test]
    async fn a_panicking_worker_shows_as_stopped_with_its_error() {
        let workers = Workers::new(Arc::new(SystemClock));
        workers.spawn("doomed", |_w| async { panic!("boom") });
        for _ in 0..200 {
            if workers.status()[0].state == WorkerState::Stopped {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let s = &workers.status()[0];
        assert_eq!(s.state, WorkerState::Stopped);
        assert!(
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("panicked")),
            "{s:?}"
        );
    }
}
