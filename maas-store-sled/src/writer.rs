//! The writer thread: every change to the database runs here, one at a
//! time, and a change whose answer must survive a crash is answered only
//! after a flush that covers it (group commit).
//!
//! Why a thread of its own:
//! - **Nothing that waits on disk runs on the async runtime.** A sled write
//!   can wait for a log buffer to be written, a flush always waits for the
//!   disk. Callers await a reply instead of blocking a runtime worker.
//! - **Group commit.** Each round takes every waiting change, applies them
//!   all, writes one journal record (`crate::journal`), syncs it and
//!   answers: one sync covers the whole round, and what arrives while it
//!   waits for the disk makes up the next round. Configuration (sled
//!   transactions) is flushed by sled on this thread before its answer is
//!   handed over.
//! - **One writer per database.** sled 0.34 guards every operation with a
//!   process-wide lock that transactions take exclusively; a flush holds it
//!   shared while it waits for the disk. Transactions and flushes of one
//!   store run one after the other on this thread, so neither ever waits
//!   for the other; across stores of one process the [`GATE`] keeps
//!   transactions from queueing on sled's lock behind another store's flush
//!   (the hang of spacejam/sled#1412 seen in `tests/stress.rs`). No flush
//!   runs on sled's thread pool, so flushes cannot starve the log writes
//!   they wait for.
//! - **Background work does not hold up answers.** Usage arrives in
//!   batches (of at most 512 buckets from the ledger); they wait in a second
//!   queue, one batch per round, so a spend queued behind them waits for one
//!   batch, not for all of them. Last-used times are not written here at
//!   all (see `KeyStore::touch_keys` in `crate::api`).

use std::collections::VecDeque;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, LazyLock, Mutex, PoisonError, RwLock};
use std::thread::{JoinHandle, ThreadId};

use maas_core::{Error, Result};

use crate::journal::Journal;
use crate::overlay;
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

/// A change, run on the writer thread (`None`: the writer is broken, the
/// change is not run).
type Work = Box<dyn FnOnce(Option<(&Trees, &mut Journal)>) -> Answer + Send>;

struct Job {
    work: Work,
    /// What its answer waits for.
    durable: Durable,
}

/// What makes a change durable before its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durable {
    /// The round's journal record (counters and usage, see `crate::journal`).
    Journal,
    /// A flush of sled's log (configuration: sled transactions).
    Sled,
}

/// Which queue a change waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Answers callers wait for: counters, configuration.
    Foreground,
    /// Batches written behind (usage, at most 512 buckets each): one job
    /// per round.
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
    /// Starts the writer thread of `trees`, which owns `journal` from now on.
    pub(crate) fn start(trees: Arc<Trees>, journal: Journal) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            wake: Condvar::new(),
        });
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("maas-sled-writer".into())
            .spawn(move || run(&theirs, &trees, journal))?;
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

    /// Runs `f` on the writer thread and returns its result, once what
    /// `durable` says has made it durable.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        lane: Lane,
        durable: Durable,
        f: impl FnOnce(&Trees, &mut Journal) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let work: Work = Box::new(move |ctx: Option<(&Trees, &mut Journal)>| {
            let out = match ctx {
                Some((t, j)) => f(t, j),
                None => Err(stopped()),
            };
            Box::new(move |failed: Option<&Error>| {
                let out = match failed {
                    Some(e) => Err(e.clone()),
                    None => out,
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
        if let Some(t) = self.thread.take()
            && std::thread::current().id() != self.thread_id
        {
            let _ = t.join();
        }
    }
}

/// The writer's failure state: after the first failed write, sync or
/// checkpoint no change runs any more (the disk holds the last state
/// answered; a restart replays it).
#[derive(Default)]
struct Broken(Option<Error>);

impl Broken {
    fn fail(&mut self, e: Error) {
        if self.0.is_none() {
            tracing::error!("maas-store-sled: writes stopped, restart to recover: {e}");
            self.0 = Some(e);
        }
    }
}

/// The writer loop: one round per wake-up, until closed and drained.
///
/// A round applies every waiting change, writes one journal record, flushes
/// sled if a configuration change needs it, syncs the journal (`fdatasync`)
/// and answers. Changes that arrive during the sync wait for the next
/// round, so one sync covers all of them. (A second thread that synced
/// while the writer applied the next round cost a thread hand-off per
/// round: on 2 cores, verifyKey with `remaining` over HTTP, 16 connections,
/// runs alternating between the two builds, served 16.4-18.2k/s that way
/// and 17.7-19.9k/s, 6-9% more in each pair, with the sync here.)
fn run(shared: &Shared, trees: &Trees, mut journal: Journal) {
    let mut broken = Broken::default();
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
        if let Some(e) = &broken.0 {
            for job in round {
                (job.work)(None)(Some(e));
            }
            continue;
        }
        let held = trees.overlay.len();
        let mut answers = Vec::with_capacity(round.len());
        let mut sled_flush = false;
        for job in round {
            // A job that panics drops its answer: its caller gets "stopped"
            // and the writer goes on with the others.
            let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                (job.work)(Some((trees, &mut journal)))
            }));
            let Ok(answer) = ran else { continue };
            sled_flush |= job.durable == Durable::Sled;
            answers.push(answer);
        }
        let mut failed = None;
        if journal.has_pending() && journal.must_checkpoint() {
            // The checkpoint's flush and sync cover this round too.
            journal.discard_pending();
            failed = checkpoint(trees, &mut journal).err();
            sled_flush = false;
        }
        if failed.is_none() {
            failed = journal
                .write()
                .map_err(|e| journal_error(&journal, &e))
                .err();
        }
        if failed.is_none() && sled_flush {
            failed = trees.flush_blocking().err();
        }
        if failed.is_none()
            && !answers.is_empty()
            && let Err(e) = journal.sync()
        {
            failed = Some(journal_error(&journal, &e));
        }
        if let Some(e) = failed {
            broken.fail(e);
        }
        for answer in answers {
            answer(broken.0.as_ref());
        }
        // Past half full: drain the overlay into sled a bounded part per
        // round, then checkpoint (this round's record is synced; the
        // checkpoint voids it only once sled holds it, synced). Past its
        // cap: drain some anyway.
        let draining = journal.wants_checkpoint();
        if broken.0.is_none() && (draining || trees.overlay.len() > overlay::CAP) {
            let grew = trees.overlay.len().saturating_sub(held);
            let drained = trees.overlay.drain(trees, DRAIN_PER_ROUND + 2 * grew);
            let done = match drained {
                Ok(left) if draining && left == 0 => checkpoint(trees, &mut journal),
                other => other.map(drop),
            };
            if let Err(e) = done {
                broken.fail(e);
            }
        }
    }
    // Closed: whatever was written behind reaches the disk too, and the
    // journal is folded into the database.
    if broken.0.is_none()
        && let Err(e) = checkpoint(trees, &mut journal)
    {
        tracing::warn!("maas-store-sled: the last flush before closing failed: {e}");
    }
}

fn journal_error(journal: &Journal, e: &std::io::Error) -> Error {
    Error::unavailable(
        format!("cannot write the journal {}: {e}", journal.path().display()),
        false,
    )
}

/// Overlay entries written into sled per writer round while it drains, on
/// top of twice the entries the round added (so a drain always ends). At
/// a few microseconds per sled write, about a millisecond per round.
const DRAIN_PER_ROUND: usize = 256;

/// Makes sled hold every change (the overlay drained, sled flushed, its
/// data file synced), then voids the journal's records.
pub(crate) fn checkpoint(trees: &Trees, journal: &mut Journal) -> Result<()> {
    trees.overlay.drain(trees, usize::MAX)?;
    trees.flush_blocking()?;
    trees.sync_data_file()?;
    journal.reset().map_err(|e| journal_error(journal, &e))
}

impl Trees {
    /// Flushes sled's log to disk, holding the gate shared.
    pub(crate) fn flush_blocking(&self) -> Result<()> {
        let _shared = GATE.read().unwrap_or_else(PoisonError::into_inner);
        self.db().flush().map(|_| ()).map_err(map_sled)
    }

    /// Syncs sled's data file (sled's own flush stops short of the device's
    /// cache): after it, a power loss keeps what was flushed.
    pub(crate) fn sync_data_file(&self) -> Result<()> {
        let path = self.dir().join("db");
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::unavailable(format!("cannot sync {}: {e}", path.display()), true))
    }
}
