//! The fair-share scheduler: selection, lift, weights, groups, cancellation,
//! capacity changes, queue limits and timeouts, predicted output, snapshot.
//! Futures are polled by hand (no runtime) except where tokio's paused time
//! drives a timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use maas_core::fairshare::{
    Admission, FairShare, FairShareConfig, OutputCharging, Permit, RejectReason, Request, Waiting,
};
use maas_core::{Error, ManualClock};

fn sched(slots: usize) -> FairShare {
    sched_with(FairShareConfig {
        max_in_flight: slots,
        queue_timeout: None,
        ..FairShareConfig::default()
    })
}

fn sched_with(cfg: FairShareConfig) -> FairShare {
    FairShare::with_clock(cfg, Arc::new(ManualClock::default())).unwrap()
}

fn req(t: &str, input: u64) -> Request {
    Request::new(t, input, 0)
}

fn admitted(s: &FairShare, r: Request) -> Permit {
    match s.try_acquire(r).unwrap() {
        Admission::Admitted(p) => p,
        Admission::Queued(_) => panic!("expected a slot at once"),
    }
}

fn queued(s: &FairShare, r: Request) -> Waiting {
    match s.try_acquire(r).unwrap() {
        Admission::Queued(w) => w,
        Admission::Admitted(_) => panic!("expected to wait"),
    }
}

fn poll(w: &mut Waiting) -> Option<Permit> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(w).poll(&mut cx) {
        Poll::Ready(p) => Some(p),
        Poll::Pending => None,
    }
}

/// Polls every waiter; returns those that got a slot, by index.
fn granted(ws: &mut [Waiting]) -> Vec<(usize, Permit)> {
    ws.iter_mut()
        .enumerate()
        .filter_map(|(i, w)| poll(w).map(|p| (i, p)))
        .collect()
}

fn counter(s: &FairShare, tenant: &str) -> f64 {
    s.snapshot()
        .groups
        .iter()
        .flat_map(|g| g.tenants.iter())
        .find(|t| t.name == tenant)
        .map(|t| t.counter)
        .unwrap()
}

fn group_counter(s: &FairShare, group: &str) -> f64 {
    s.snapshot()
        .groups
        .iter()
        .find(|g| g.name == group)
        .unwrap()
        .counter
}

#[test]
fn slots_then_fifo_queue_and_totals() {
    let s = sched(2);
    let a = admitted(&s, req("a", 10));
    let _b = admitted(&s, req("a", 10));
    let mut w1 = queued(&s, req("a", 1));
    let mut w2 = queued(&s, req("a", 2));
    assert!(poll(&mut w1).is_none());
    let snap = s.snapshot();
    assert_eq!((snap.in_flight, snap.queued, snap.max_in_flight), (2, 2, 2));
    let t = &snap.groups[0].tenants[0];
    assert_eq!((t.in_flight, t.queued, t.input_tokens), (2, 2, 20));
    drop(a);
    // FIFO within a tenant: the older request goes first.
    assert!(poll(&mut w2).is_none());
    let p1 = poll(&mut w1).unwrap();
    assert_eq!(p1.input_tokens(), 1);
    let snap = s.snapshot();
    assert_eq!((snap.in_flight, snap.queued), (2, 1));
}

#[test]
fn charges_input_at_admission_and_output_as_reported() {
    let s = sched(4);
    s.set_tenant("a", 100, "default").unwrap();
    let mut p = admitted(&s, req("a", 50));
    assert_eq!(counter(&s, "a"), 50.0 / 100.0);
    p.record_output(10);
    assert_eq!(counter(&s, "a"), (50.0 + 20.0) / 100.0);
    p.finish(25); // 15 more: 25 reported in all
    assert_eq!(counter(&s, "a"), (50.0 + 50.0) / 100.0);
    let snap = s.snapshot();
    let t = &snap.groups[0].tenants[0];
    assert_eq!(
        (t.input_tokens, t.output_tokens, t.tokens_served),
        (50, 25, 75)
    );
    assert_eq!(snap.in_flight, 0);
    // Input reconciled to the actual count.
    let mut p = admitted(&s, req("a", 10));
    p.set_input_tokens(4);
    drop(p);
    assert_eq!(counter(&s, "a"), (100.0 + 4.0) / 100.0);
}

#[test]
fn lowest_counter_is_selected() {
    let s = sched(1);
    let hold = admitted(&s, req("x", 0));
    // b has more service than a before both queue.
    let mut wa = queued(&s, req("a", 1));
    let mut wb = queued(&s, req("b", 1));
    drop(hold);
    // a joined first with counter 0; b was lifted to 0 too; tie -> a first.
    let pa = poll(&mut wa).unwrap();
    assert!(poll(&mut wb).is_none());
    let mut wa2 = queued(&s, req("a", 1));
    drop(pa);
    // a now has counter 0.01 > b's 0 -> b goes next.
    assert!(poll(&mut wa2).is_none());
    assert!(poll(&mut wb).is_some());
}

/// Keeps `depth` requests of `input` tokens queued for each of `names` behind
/// one slot for `rounds` admissions; returns admissions per tenant.
fn backlogged_rounds(s: &FairShare, names: &[&str], input: u64, rounds: usize) -> Vec<u32> {
    use std::collections::VecDeque;
    let depth = 2;
    let mut hold = Some(admitted(s, req("z", 0)));
    let mut qs: Vec<VecDeque<Waiting>> = names
        .iter()
        .map(|n| (0..depth).map(|_| queued(s, req(n, input))).collect())
        .collect();
    let mut served = vec![0u32; names.len()];
    for _ in 0..rounds {
        drop(hold.take());
        let mut got = Vec::new();
        for (i, q) in qs.iter_mut().enumerate() {
            if let Some(p) = q.front_mut().and_then(poll) {
                got.push((i, p));
            }
        }
        assert_eq!(got.len(), 1);
        let (i, p) = got.pop().unwrap();
        served[i] += 1;
        qs[i].pop_front();
        qs[i].push_back(queued(s, req(names[i], input)));
        hold = Some(p);
    }
    served
}

#[test]
fn weights_share_service_proportionally() {
    let s = sched(1);
    s.set_tenant("light", 1, "default").unwrap();
    s.set_tenant("heavy", 3, "default").unwrap();
    assert_eq!(
        backlogged_rounds(&s, &["light", "heavy"], 100, 400),
        [100, 300]
    );
}

#[test]
fn groups_are_selected_first_then_tenants() {
    let s = sched(1);
    s.set_group_weight("A", 1).unwrap();
    s.set_group_weight("B", 1).unwrap();
    s.set_tenant("a1", 1, "A").unwrap();
    for n in ["b1", "b2", "b3", "b4"] {
        s.set_tenant(n, 1, "B").unwrap();
    }
    let names = ["a1", "b1", "b2", "b3", "b4"];
    // Group A's one tenant gets half; B's four share the other half.
    assert_eq!(
        backlogged_rounds(&s, &names, 10, 800),
        [400, 100, 100, 100, 100]
    );
    // Group weights 3:1.
    let s = sched(1);
    s.set_group_weight("A", 3).unwrap();
    s.set_group_weight("B", 1).unwrap();
    s.set_tenant("a1", 1, "A").unwrap();
    for n in ["b1", "b2", "b3", "b4"] {
        s.set_tenant(n, 1, "B").unwrap();
    }
    assert_eq!(
        backlogged_rounds(&s, &names, 10, 800),
        [600, 50, 50, 50, 50]
    );
}

#[test]
fn lift_on_becoming_backlogged_banks_no_idle_time() {
    let s = sched(1);
    let mut hold = Some(admitted(&s, req("z", 0)));
    let mut wa = queued(&s, req("a", 100));
    // a runs alone for a while: counter grows to 10.
    for _ in 0..10 {
        drop(hold.take());
        hold = Some(poll(&mut wa).unwrap());
        wa = queued(&s, req("a", 100));
    }
    assert!(counter(&s, "a") >= 10.0);
    // b shows up with counter 0 and is lifted to a's counter.
    let mut wb = queued(&s, req("b", 100));
    assert_eq!(counter(&s, "b"), counter(&s, "a"));
    // So they alternate instead of b catching up for 10 turns.
    let mut order = String::new();
    for _ in 0..6 {
        drop(hold.take());
        if let Some(p) = poll(&mut wa) {
            order.push('a');
            wa = queued(&s, req("a", 100));
            hold = Some(p);
        } else {
            hold = Some(poll(&mut wb).unwrap());
            order.push('b');
            wb = queued(&s, req("b", 100));
        }
    }
    assert!(order == "ababab" || order == "bababa", "{order}");
}

#[test]
fn lift_from_last_departed_when_nothing_waits() {
    let s = sched(1);
    let hold = admitted(&s, req("z", 0));
    let mut wa = queued(&s, req("a", 500));
    drop(hold);
    let pa = poll(&mut wa).unwrap(); // a leaves the backlog with counter 5
    drop(wa);
    let mut wb = queued(&s, req("b", 1));
    // Nothing else backlogged: b lifted to the last departed counter.
    assert_eq!(counter(&s, "b"), 5.0);
    drop(pa);
    assert!(poll(&mut wb).is_some());
    // The group level lifts the same way.
    assert!(group_counter(&s, "default") > 5.0);
}

#[test]
fn dropping_a_waiter_leaves_the_queue() {
    let s = sched(1);
    let hold = admitted(&s, req("a", 1));
    let w1 = queued(&s, req("a", 1));
    let mut w2 = queued(&s, req("b", 1));
    assert_eq!(s.snapshot().queued, 2);
    drop(w1);
    assert_eq!(s.snapshot().queued, 1);
    drop(hold);
    assert!(poll(&mut w2).is_some());
    assert_eq!(s.snapshot().queued, 0);
}

#[test]
fn a_granted_slot_not_taken_is_handed_on_and_refunded() {
    let s = sched(1);
    let hold = admitted(&s, req("z", 0));
    let w1 = queued(&s, req("a", 300));
    let mut w2 = queued(&s, req("b", 7));
    drop(hold); // a gets the slot (tie, joined first) but never polls it
    assert_eq!(s.snapshot().in_flight, 1);
    drop(w1);
    // refunded, and the slot went to b
    assert_eq!(counter(&s, "a"), 0.0);
    let p = poll(&mut w2).unwrap();
    assert_eq!(p.input_tokens(), 7);
    assert_eq!(s.snapshot().in_flight, 1);
}

#[test]
fn capacity_grows_and_shrinks_live() {
    let s = sched(1);
    let p1 = admitted(&s, req("a", 1));
    let mut ws: Vec<Waiting> = (0..4).map(|_| queued(&s, req("a", 1))).collect();
    s.set_max_in_flight(3);
    let mut running: Vec<Permit> = granted(&mut ws).into_iter().map(|(_, p)| p).collect();
    assert_eq!(running.len(), 2);
    assert_eq!(s.snapshot().in_flight, 3);
    // Shrink: nothing is dropped, nothing new starts until below 1.
    s.set_max_in_flight(1);
    assert_eq!(s.snapshot().in_flight, 3);
    drop(p1);
    running.pop();
    assert!(granted(&mut ws).is_empty());
    assert_eq!(s.snapshot().in_flight, 1);
    running.pop();
    let g = granted(&mut ws);
    assert_eq!(g.len(), 1);
    let snap = s.snapshot();
    assert_eq!((snap.in_flight, snap.queued, snap.max_in_flight), (1, 1, 1));
    // 0 pauses admission.
    s.set_max_in_flight(0);
    assert!(matches!(
        s.try_acquire(req("b", 1)).unwrap(),
        Admission::Queued(_)
    ));
}

#[test]
fn full_queue_is_rejected_with_a_reason_and_hint() {
    let s = sched_with(FairShareConfig {
        max_in_flight: 1,
        max_queue_per_tenant: 2,
        queue_timeout: None,
        ..FairShareConfig::default()
    });
    let _p = admitted(&s, req("a", 1));
    let _w1 = queued(&s, req("a", 1));
    let _w2 = queued(&s, req("a", 1));
    let r = s.try_acquire(req("a", 1)).unwrap_err();
    assert_eq!(r.reason, RejectReason::QueueFull);
    assert_eq!(r.limit, 2);
    assert!(r.retry_after >= Duration::from_millis(100));
    assert!(r.to_string().contains("queue of tenant 'a' is full"), "{r}");
    assert!(r.to_string().contains("retry after"), "{r}");
    // Other tenants still queue.
    let _wb = queued(&s, req("b", 1));
    let e: Error = r.into();
    assert!(e.is_transient());
}

#[tokio::test(start_paused = true)]
async fn queue_timeout_rejects_and_leaves_the_queue() {
    let s = sched_with(FairShareConfig {
        max_in_flight: 1,
        queue_timeout: Some(Duration::from_secs(5)),
        ..FairShareConfig::default()
    });
    let p = s.acquire(req("a", 1)).await.unwrap();
    let s2 = s.clone();
    let waiter = tokio::spawn(async move { s2.acquire(req("b", 1)).await });
    tokio::task::yield_now().await;
    assert_eq!(s.snapshot().queued, 1);
    tokio::time::advance(Duration::from_secs(6)).await;
    let r = waiter.await.unwrap().unwrap_err();
    assert_eq!(r.reason, RejectReason::QueueTimeout);
    assert_eq!(r.limit, 5_000);
    assert!(r.to_string().contains("within 5000 ms"), "{r}");
    assert_eq!(s.snapshot().queued, 0);
    // A waiter granted before its deadline gets the permit.
    let s3 = s.clone();
    let waiter = tokio::spawn(async move { s3.acquire(req("b", 1)).await.map(|_| ()) });
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    drop(p);
    assert!(waiter.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn cancelling_acquire_leaves_the_queue() {
    let s = sched(1);
    let _p = s.acquire(req("a", 1)).await.unwrap();
    let r = tokio::time::timeout(Duration::from_millis(10), s.acquire(req("b", 1))).await;
    assert!(r.is_err());
    assert_eq!(s.snapshot().queued, 0);
    assert_eq!(s.snapshot().in_flight, 1);
}

#[test]
fn predicted_output_is_charged_then_reconciled() {
    let s = sched_with(FairShareConfig {
        max_in_flight: 2,
        output_charging: OutputCharging::Predicted,
        queue_timeout: None,
        ..FairShareConfig::default()
    });
    let mut p = admitted(&s, Request::new("a", 10, 100));
    assert_eq!(counter(&s, "a"), (10.0 + 200.0) / 100.0);
    p.record_output(60); // within the estimate: no new charge
    assert_eq!(counter(&s, "a"), 2.1);
    p.finish(70); // 30 short of the estimate: refunded
    assert_eq!(counter(&s, "a"), (10.0 + 140.0) / 100.0);
    let mut p = admitted(&s, Request::new("b", 0, 5));
    p.record_output(8); // 3 beyond the estimate
    drop(p);
    assert_eq!(counter(&s, "b"), 16.0 / 100.0);
}

#[test]
fn moving_a_backlogged_tenant_between_groups() {
    let s = sched(1);
    s.set_group_weight("g2", 100).unwrap();
    let hold = admitted(&s, req("a", 1));
    let mut wa = queued(&s, req("a", 1));
    s.set_tenant("a", 100, "g2").unwrap();
    let snap = s.snapshot();
    let g2 = snap.groups.iter().find(|g| g.name == "g2").unwrap();
    let d = snap.groups.iter().find(|g| g.name == "default").unwrap();
    assert_eq!(
        (g2.in_flight, g2.queued, d.in_flight, d.queued),
        (1, 1, 0, 0)
    );
    drop(hold);
    assert!(poll(&mut wa).is_some());
    assert_eq!(s.snapshot().queued, 0);
}

#[test]
fn bad_settings_are_refused() {
    let s = sched(1);
    assert!(matches!(
        s.set_tenant("a", 0, "g"),
        Err(Error::InvalidInput { .. })
    ));
    assert!(s.set_group_weight("g", 2_000_000).is_err());
    assert!(s.set_tenant("", 1, "g").is_err());
    let bad = FairShareConfig {
        output_weight: f64::NAN,
        ..FairShareConfig::default()
    };
    assert!(FairShare::new(bad).is_err());
}

/// Random operations (arrivals of several tenants in two groups, releases,
/// cancellations, output reports, capacity and weight changes); after each:
/// the totals match the per-tenant and per-group views, a free slot never
/// idles while something waits, and nothing is lost.
#[test]
fn random_operations_keep_the_invariants() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let s = sched_with(FairShareConfig {
        max_in_flight: 3,
        max_queue_per_tenant: 5,
        queue_timeout: None,
        output_charging: OutputCharging::Predicted,
        ..FairShareConfig::default()
    });
    s.set_group_weight("g1", 1).unwrap();
    s.set_group_weight("g2", 3).unwrap();
    let names = ["t0", "t1", "t2", "t3", "t4"];
    for (i, n) in names.iter().enumerate() {
        s.set_tenant(n, 1 + i as u32, if i % 2 == 0 { "g1" } else { "g2" })
            .unwrap();
    }
    let mut running: Vec<Permit> = Vec::new();
    let mut waiting: Vec<Waiting> = Vec::new();
    let (mut arrived, mut rejected, mut cancelled, mut finished) = (0u64, 0u64, 0u64, 0u64);
    for step in 0..5_000 {
        match rnd(10) {
            0..=3 => {
                arrived += 1;
                let r = Request::new(names[rnd(5) as usize], rnd(500), rnd(300));
                match s.try_acquire(r) {
                    Ok(Admission::Admitted(p)) => running.push(p),
                    Ok(Admission::Queued(w)) => waiting.push(w),
                    Err(e) => {
                        assert_eq!(e.reason, RejectReason::QueueFull);
                        rejected += 1;
                    }
                }
            }
            4..=5 if !running.is_empty() => {
                let p = running.swap_remove(rnd(running.len() as u64) as usize);
                p.finish(rnd(400));
                finished += 1;
            }
            6 if !waiting.is_empty() => {
                drop(waiting.swap_remove(rnd(waiting.len() as u64) as usize));
                cancelled += 1;
            }
            7 if !running.is_empty() => {
                let i = rnd(running.len() as u64) as usize;
                running[i].record_output(1 + rnd(20));
            }
            8 => s.set_max_in_flight(rnd(6) as usize),
            9 => {
                let n = names[rnd(5) as usize];
                let g = if rnd(2) == 0 { "g1" } else { "g2" };
                s.set_tenant(n, 1 + rnd(10) as u32, g).unwrap();
            }
            _ => {}
        }
        // Collect grants.
        let mut i = 0;
        while i < waiting.len() {
            if let Some(p) = poll(&mut waiting[i]) {
                running.push(p);
                waiting.swap_remove(i);
            } else {
                i += 1;
            }
        }
        let snap = s.snapshot();
        assert_eq!(snap.in_flight, running.len(), "step {step}");
        assert_eq!(snap.queued, waiting.len(), "step {step}");
        if snap.queued > 0 {
            assert!(
                snap.in_flight >= snap.max_in_flight,
                "idle slot at step {step}"
            );
        }
        let (gi, gq): (usize, usize) = snap
            .groups
            .iter()
            .fold((0, 0), |a, g| (a.0 + g.in_flight, a.1 + g.queued));
        assert_eq!((gi, gq), (snap.in_flight, snap.queued));
        for g in &snap.groups {
            let ti: usize = g.tenants.iter().map(|t| t.in_flight).sum();
            let tq: usize = g.tenants.iter().map(|t| t.queued).sum();
            assert_eq!((ti, tq), (g.in_flight, g.queued), "group {}", g.name);
            assert!(g.counter.is_finite());
        }
    }
    assert_eq!(
        arrived,
        rejected + cancelled + finished + running.len() as u64 + waiting.len() as u64
    );
    drop(waiting);
    drop(running);
    let snap = s.snapshot();
    assert_eq!((snap.in_flight, snap.queued), (0, 0));
}
