//! Fair-share admission: one admit + release with 10 and 10,000 backlogged
//! tenants, beside tokio's `Semaphore` acquire/release as the floor.
//!
//! Each iteration of `admit_release/N` drops the running permit (releasing
//! its slot: the VTC picks the lowest group, then the lowest tenant, and
//! grants its oldest request), takes the granted permit from its waiter, and
//! queues a new request for that tenant (which re-joins the backlog, with the
//! lift). One slot; N tenants each with one request waiting; equal weights.
//! Goal: median ≤ 1 µs at 10,000.
//!
//! `cargo bench -- fairshare/`; `-- --test` runs each once.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use criterion::{Criterion, criterion_group};
use maas::core::fairshare::{Admission, FairShare, FairShareConfig, Permit, Request, Waiting};
use tokio::sync::Semaphore;

struct Mark {
    index: usize,
    woken: Arc<AtomicUsize>,
}

impl Wake for Mark {
    fn wake(self: Arc<Self>) {
        self.woken.store(self.index, Ordering::Relaxed);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(self.index, Ordering::Relaxed);
    }
}

struct Setup {
    sched: FairShare,
    names: Vec<String>,
    wakers: Vec<Waker>,
    waiting: Vec<Option<Waiting>>,
    woken: Arc<AtomicUsize>,
    running: Option<Permit>,
}

fn queue(s: &FairShare, name: &str, waker: &Waker) -> Waiting {
    let Admission::Queued(mut w) = s.try_acquire(Request::new(name, 256, 256)).unwrap() else {
        panic!("expected to queue");
    };
    assert!(
        Pin::new(&mut w)
            .poll(&mut Context::from_waker(waker))
            .is_pending()
    );
    w
}

fn setup(tenants: usize) -> Setup {
    let sched = FairShare::new(FairShareConfig {
        max_in_flight: 1,
        max_queue_per_tenant: 4,
        queue_timeout: None,
        ..FairShareConfig::default()
    })
    .unwrap();
    let woken = Arc::new(AtomicUsize::new(usize::MAX));
    let names: Vec<String> = (0..tenants).map(|i| format!("tenant-{i}")).collect();
    for n in &names {
        sched.set_tenant(n, 100, "default").unwrap();
    }
    let wakers: Vec<Waker> = (0..tenants)
        .map(|index| {
            Waker::from(Arc::new(Mark {
                index,
                woken: woken.clone(),
            }))
        })
        .collect();
    let Admission::Admitted(running) = sched.try_acquire(Request::new("holder", 1, 1)).unwrap()
    else {
        panic!("expected a slot");
    };
    let waiting = names
        .iter()
        .zip(&wakers)
        .map(|(n, w)| Some(queue(&sched, n, w)))
        .collect();
    Setup {
        sched,
        names,
        wakers,
        waiting,
        woken,
        running: Some(running),
    }
}

fn step(s: &mut Setup) {
    drop(s.running.take());
    let i = s.woken.load(Ordering::Relaxed);
    let mut w = s.waiting[i].take().unwrap();
    let Poll::Ready(p) = Pin::new(&mut w).poll(&mut Context::from_waker(&s.wakers[i])) else {
        panic!("granted waiter not ready");
    };
    drop(w);
    s.running = Some(p);
    s.waiting[i] = Some(queue(&s.sched, &s.names[i], &s.wakers[i]));
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("fairshare");
    for n in [10usize, 10_000] {
        let mut s = setup(n);
        g.bench_function(format!("admit_release/{n}"), |b| b.iter(|| step(&mut s)));
    }
    let sem = Semaphore::new(1);
    g.bench_function("tokio_semaphore_acquire_release", |b| {
        b.iter(|| drop(black_box(sem.try_acquire().unwrap())))
    });
    g.finish();
}

criterion_group!(benches, bench);
