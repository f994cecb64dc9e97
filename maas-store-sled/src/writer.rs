//! The writer thread: every change to the database runs here, one at a
//! time, and a change whose answer must survive a crash is answered only
//! after a flush that covers it (group commit).
//!
//! Why a thread of its own:
//! - **Nothing that waits on disk runs on the async runtime.** A sled write
//!   can wait for a log buffer to be written, a flush always waits for the
//!   disk. Callers await a reply instead of blocking a runtime worker.
//! - **Group commit.** Each round takes every waiting change, applies them
//!   all, flushes once, then answers them all: concurrent callers share one
//!   flush, and a flush that runs meanwhile collects the next round.
//! - **One writer per database.** sled 0.34 guards every operation with a
//!   process-wide lock that transactions take exclusively; a flush holds it
//!   shared while it waits for the disk. Transactions and flushes of one
//!   store run one after the other on this thread, so neither ever waits
//!   for the other; across stores of one process the [`GATE`] keeps
//!   transactions from queueing on sled's lock behind another store's flush
//!   (the hang of spacejam/sled#1412 seen in `tests/stress.rs`). No flush
//!   runs on sled's thread pool, so flushes cannot starve the log writes
//!   they wait for.
//! - **Background work does not hold up answers.** Last-used times and
//!   usage arrive in large batches; they run in chunks from a second queue,
//!   one chunk per round, so a spend queued behind them waits for one chunk,
//!   not for the whole batch.

use std::collections::VecDeque;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, LazyLock, Mutex, PoisonError, RwLock};
use std::thread::{JoinHandle, ThreadId};

use maas_core::{Error, Result};

use crate::store::{Trees, map_sled};

/// Transactions (exclusive) and flushes (shared) of every store in the
/// process pass this gate, so a transaction is never queued on sled's
/// process-wide lock while another store's flush holds it.
static GATE: LazyLock<RwLock<()>> = LazyLock::new(|| RwLock::new(()));

/// Runs `f` holding the gate exclusively (a sled transaction).
pub(crate) fn exclusive<T>(f: impl FnOnce() -> T) -> T {
    let _held = GATE.write().unwrap_or_else(PoisonError::into_inner);
    f()
}

/// What a job does once the round's flush is over: answers its caller with
/// its own result, or with the flush's error if it needed the flush.
type Answer = Box<dyn FnOnce(Option<&Error>) + Send>;

/// A change, run on the writer thread.
type Work = Box<dyn FnOnce(&Trees) -> Answer + Send>;

struct Job {
    work: Work,
    /// Whether its answer waits for a flush.
    durable: bool,
}

/// Which queue a change waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Answers callers wait for: counters, configuration.
    Foreground,
    /// Batches written behind (last-used times, usage): one job per round.
    Background,
}

#[derive(Default)]
struct Queues {
    foreground: VecDeque<Job>,
    background: VecDeque<Job>,
    closing: bool,
}

struct Shared {
    queues: Mutex<Queues>,
    wake: Condvar,
}

/// The writer thread of one database. Dropping it runs what is queued,
/// flushes, and joins the thread.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    thread_id: ThreadId,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

fn stopped() -> Error {
    Error::unavailable("the sled store's writer has stopped", false)
}

impl Writer {
    /// Starts the writer thread of `trees`.
    pub(crate) fn start(trees: Arc<Trees>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            wake: Condvar::new(),
        });
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("maas-sled-writer".into())
            .spawn(move || run(&theirs, &trees))?;
        Ok(Writer {
            thread_id: thread.thread().id(),
            shared,
            thread: Some(thread),
        })
    }

    fn submit(&self, lane: Lane, job: Job) -> bool {
        let mut q = self
            .shared
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if q.closing {
            return false;
        }
        match lane {
            Lane::Foreground => q.foreground.push_back(job),
            Lane::Background => q.background.push_back(job),
        }
        drop(q);
        self.shared.wake.notify_one();
        true
    }

    /// Runs `f` on the writer thread and returns its result; with `durable`,
    /// only once a flush that started after `f` ran has finished.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        lane: Lane,
        durable: bool,
        f: impl FnOnce(&Trees) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let work: Work = Box::new(move |t: &Trees| {
            let out = f(t);
            Box::new(move |flushed: Option<&Error>| {
                let out = match (out, flushed) {
                    (Ok(_), Some(e)) => Err(e.clone()),
                    (out, _) => out,
                };
                let _ = tx.send(out);
            })
        });
        if !self.submit(lane, Job { work, durable }) {
            return Err(stopped());
        }
        rx.await.map_err(|_| stopped())?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closing = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            if std::thread::current().id() != self.thread_id {
                let _ = t.join();
            }
        }
    }
}

/// The writer loop: one round per wake-up, until closed and drained.
fn run(shared: &Shared, trees: &Trees) {
    loop {
        let (mut round, chunk) = {
            let mut q = shared.queues.lock().unwrap_or_else(PoisonError::into_inner);
            while q.foreground.is_empty() && q.background.is_empty() && !q.closing {
                q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
            if q.foreground.is_empty() && q.background.is_empty() {
                break;
            }
            let round: Vec<Job> = q.foreground.drain(..).collect();
            (round, q.background.pop_front())
        };
        round.extend(chunk);
        let mut answers = Vec::with_capacity(round.len());
        let mut flush = false;
        for job in round {
            flush |= job.durable;
            // A job that panics drops its answer: its caller gets "stopped"
            // and the writer goes on with the others.
            if let Ok(answer) = std::panic::catch_unwind(AssertUnwindSafe(|| (job.work)(trees))) {
                answers.push((job.durable, answer));
            }
        }
        let failed = if flush {
            trees.flush_blocking().err()
        } else {
            None
        };
        for (durable, answer) in answers {
            answer(if durable { failed.as_ref() } else { None });
        }
    }
    // Closed: whatever was written behind reaches the disk too.
    if let Err(e) = trees.flush_blocking() {
        tracing::warn!("maas-store-sled: the last flush before closing failed: {e}");
    }
}

impl Trees {
    /// Flushes sled's log to disk, holding the gate shared.
    pub(crate) fn flush_blocking(&self) -> Result<()> {
        let _shared = GATE.read().unwrap_or_else(PoisonError::into_inner);
        self.db().flush().map(|_| ()).map_err(map_sled)
    }
}
