//! The store's reader threads.
//!
//! A sled read can wait on disk (a page not in sled's cache), so reads do
//! not run on the async runtime's workers. They used to run on tokio's
//! blocking pool, which starts a thread for each call that finds no idle
//! one: under 64 connections creating keys the server grew to 140 threads,
//! and with mimalloc each thread keeps a heap of its own, so RSS doubled
//! (730 MB against 355 MB at 100k keys). Here a fixed number of threads
//! ([`SledConfig::read_threads`](crate::SledConfig::read_threads)) take
//! reads from one queue, whatever runtime (if any) the caller runs on.

use crate::store::Trees;
use maas_core::{Error, Result};
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce(&Trees) + Send>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closing: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// A fixed pool of reader threads over one database. Dropping it runs what
/// is queued and joins the threads.
pub(crate) struct Readers {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Readers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readers")
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

fn stopped() -> Error {
    Error::unavailable("the sled store's readers have stopped", false)
}

impl Readers {
    /// Starts `n` (at least one) reader threads over `trees`.
    pub(crate) fn start(trees: &Arc<Trees>, n: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let mut readers = Readers {
            shared,
            threads: Vec::new(),
        };
        for i in 0..n.max(1) {
            let (shared, trees) = (Arc::clone(&readers.shared), Arc::clone(trees));
            // On failure `readers` drops here: the threads started stop.
            let thread = std::thread::Builder::new()
                .name(format!("maas-sled-read-{i}"))
                .spawn(move || serve(&shared, &trees))?;
            readers.threads.push(thread);
        }
        Ok(readers)
    }

    /// Runs `f` on a reader thread and returns its result.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Trees) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |t| {
            let _ = tx.send(f(t));
        });
        {
            let mut q = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if q.closing {
                return Err(stopped());
            }
            q.jobs.push_back(job);
        }
        self.shared.wake.notify_one();
        // A job that panicked drops its sender: an error, not a hang.
        rx.await.map_err(|_| {
            Error::internal("a sled read failed (its reader thread panicked)".to_owned())
        })?
    }
}

fn serve(shared: &Shared, trees: &Trees) {
    loop {
        let job = {
            let mut q = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.closing {
                    return;
                }
                q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        };
        // A panicking read must not take the thread (and the pool) with it.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(trees)));
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closing = true;
        self.shared.wake.notify_all();
        let me = std::thread::current().id();
        for t in self.threads.drain(..) {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trees() -> Arc<Trees> {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .expect("a temporary sled db");
        Arc::new(Trees::open(db, std::path::PathBuf::from("<temporary>")).expect("trees"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_reads_share_a_fixed_set_of_threads() {
        let readers = Arc::new(Readers::start(&trees(), 3).expect("readers"));
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let r = Arc::clone(&readers);
            tasks.push(tokio::spawn(async move {
                r.run(move |_| Ok((i, std::thread::current().name().map(str::to_owned))))
                    .await
            }));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, t) in tasks.into_iter().enumerate() {
            let (got, name) = t.await.expect("task").expect("read");
            assert_eq!(got as usize, i);
            names.insert(name.expect("reader threads are named"));
        }
        assert!(names.len() <= 3, "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("maas-sled-read-")));
    }

    #[tokio::test]
    async fn a_panicking_read_is_an_error_and_the_pool_goes_on() {
        let readers = Readers::start(&trees(), 1).expect("readers");
        let err = readers
            .run(|_| -> Result<()> { panic!("a read that panics") })
            .await
            .expect_err("a panic is an error");
        assert!(err.to_string().contains("panicked"), "{err}");
        assert_eq!(readers.run(|_| Ok(7)).await.expect("the next read"), 7);
    }

    #[tokio::test]
    async fn dropping_the_pool_joins_its_threads() {
        let readers = Readers::start(&trees(), 2).expect("readers");
        assert_eq!(readers.run(|_| Ok(1)).await.expect("read"), 1);
        let shared = Arc::clone(&readers.shared);
        drop(readers);
        // Joined: no thread holds the queue any more.
        assert_eq!(Arc::strong_count(&shared), 1);
        assert!(shared.queue.lock().expect("queue").closing);
    }
}
