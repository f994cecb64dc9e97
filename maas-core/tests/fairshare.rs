//! The fair-share scheduler: selection, lift, weights, groups, cancellation,
//! capacity changes, queue limits and timeouts, predicted output, snapshot,
//! and pools (per-model slots with shared counters).
//! Futures are polled by hand (no runtime) except where tokio's paused time
//! drives a timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use maas_core::fairshare::{
    Admission, FairShare, FairShareConfig, OutputCharging, Permit, PoolCounts, PoolSnapshot,
    RejectReason, Request, Waiting,
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

/// A request of `t` in pool `pool` carrying capacity `cap`.
fn preq(t: &str, input: u64, pool: &str, cap: Option<usize>) -> Request {
    Request::new(t, input, 0).in_pool(pool, cap)
}

/// `(max_in_flight, in_flight, queued)` of pool `name`.
fn pool(s: &FairShare, name: &str) -> (usize, usize, usize) {
    let c = s.pool_counts(name).unwrap();
    (c.max_in_flight, c.in_flight, c.queued)
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
    backlogged_rounds_in(s, &|t, n| req(t, n), names, input, rounds, &mut || {})
}

/// [`backlogged_rounds`] with requests made by `mk` (in a pool of one slot),
/// running `each_round` before every admission.
fn backlogged_rounds_in(
    s: &FairShare,
    mk: &dyn Fn(&str, u64) -> Request,
    names: &[&str],
    input: u64,
    rounds: usize,
    each_round: &mut dyn FnMut(),
) -> Vec<u32> {
    use std::collections::VecDeque;
    let req = mk;
    let depth = 2;
    let mut hold = Some(admitted(s, req("z", 0)));
    let mut qs: Vec<VecDeque<Waiting>> = names
        .iter()
        .map(|n| (0..depth).map(|_| queued(s, req(n, input))).collect())
        .collect();
    let mut served = vec![0u32; names.len()];
    for _ in 0..rounds {
        each_round();
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
/// cancellations, output reports, capacity and weight changes), first in the
/// default pool only, then also in three named pools with small capacities
/// (carried by requests and set directly); after each: the totals match the
/// per-tenant, per-group and per-pool views, a free slot of a pool never
/// idles while something of it waits, a pool runs more than its capacity only
/// when the capacity shrank, and nothing is lost.
#[test]
fn random_operations_keep_the_invariants() {
    random_operations(false);
    random_operations(true);
}

fn random_operations(pooled: bool) {
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
    // Pool 0 is the default pool.
    let pool = |name, carried| RandomPool {
        name,
        carried,
        has: None,
    };
    let mut pools = vec![RandomPool {
        has: Some(None),
        ..pool(None, None)
    }];
    if pooled {
        pools.push(pool(Some("m1"), Some(1)));
        pools.push(pool(Some("m2"), Some(2)));
        pools.push(pool(Some("m3"), None));
    }
    let mut max = 3usize;
    let mut running: Vec<(usize, Permit)> = Vec::new();
    let mut waiting: Vec<(usize, Waiting)> = Vec::new();
    let mut last_in_flight = vec![0usize; pools.len()];
    // Steps where a named pool had requests waiting, and ran over its
    // capacity (after it shrank): the pooled run must see both.
    let (mut named_waits, mut over_capacity) = (0u32, 0u32);
    let (mut arrived, mut rejected, mut cancelled, mut finished) = (0u64, 0u64, 0u64, 0u64);
    for step in 0..5_000 {
        match rnd(if pooled { 11 } else { 10 }) {
            0..=3 => {
                arrived += 1;
                let pi = if pooled {
                    rnd(pools.len() as u64) as usize
                } else {
                    0
                };
                let mut r = Request::new(names[rnd(5) as usize], rnd(500), rnd(300));
                if let Some(name) = pools[pi].name {
                    r = r.in_pool(name, pools[pi].carried);
                    pools[pi].has = Some(pools[pi].carried);
                }
                match s.try_acquire(r) {
                    Ok(Admission::Admitted(p)) => running.push((pi, p)),
                    Ok(Admission::Queued(w)) => waiting.push((pi, w)),
                    Err(e) => {
                        assert_eq!(e.reason, RejectReason::QueueFull);
                        rejected += 1;
                    }
                }
            }
            4..=5 if !running.is_empty() => {
                let (_, p) = running.swap_remove(rnd(running.len() as u64) as usize);
                p.finish(rnd(400));
                finished += 1;
            }
            6 if !waiting.is_empty() => {
                drop(waiting.swap_remove(rnd(waiting.len() as u64) as usize));
                cancelled += 1;
            }
            7 if !running.is_empty() => {
                let i = rnd(running.len() as u64) as usize;
                running[i].1.record_output(1 + rnd(20));
            }
            8 => {
                max = rnd(6) as usize;
                s.set_max_in_flight(max);
            }
            9 => {
                let n = names[rnd(5) as usize];
                let g = if rnd(2) == 0 { "g1" } else { "g2" };
                s.set_tenant(n, 1 + rnd(10) as u32, g).unwrap();
            }
            10 => {
                // A named pool's capacity changes: set directly (the next
                // request may carry the old one back), or carried by its
                // next request.
                let pi = 1 + rnd(pools.len() as u64 - 1) as usize;
                let cap = match rnd(4) {
                    0 => None,
                    n => Some(n as usize - 1),
                };
                if rnd(2) == 0 {
                    s.set_pool_capacity(pools[pi].name.unwrap(), cap);
                    pools[pi].has = Some(cap);
                } else {
                    pools[pi].carried = cap;
                }
            }
            _ => {}
        }
        // Collect grants.
        let mut i = 0;
        while i < waiting.len() {
            if let Some(p) = poll(&mut waiting[i].1) {
                let (pi, _) = waiting.swap_remove(i);
                assert_eq!(p.pool(), pools[pi].name);
                running.push((pi, p));
            } else {
                i += 1;
            }
        }
        let snap = s.snapshot();
        assert_eq!(snap.in_flight, running.len(), "step {step}");
        assert_eq!(snap.queued, waiting.len(), "step {step}");
        assert_eq!(snap.max_in_flight, max);
        assert_eq!(s.counts(), (snap.in_flight, snap.queued));
        if !pooled && snap.queued > 0 {
            assert!(
                snap.in_flight >= snap.max_in_flight,
                "idle slot at step {step}"
            );
        }
        // Per pool, from the caller's side and the scheduler's.
        let mut model_sums = (0, 0);
        for (pi, RandomPool { name, has: cap, .. }) in pools.iter().enumerate() {
            let in_flight = running.iter().filter(|(p, _)| *p == pi).count();
            let queued = waiting.iter().filter(|(p, _)| *p == pi).count();
            let Some(cap) = cap else {
                assert_eq!(s.pool_counts(name.unwrap()), None);
                continue;
            };
            let cap = cap.unwrap_or(max);
            if let Some(name) = name {
                let c = s.pool_counts(name).unwrap();
                assert_eq!(
                    c,
                    PoolCounts {
                        max_in_flight: cap,
                        in_flight,
                        queued
                    },
                    "pool {name} at step {step}"
                );
                let m = snap.models.iter().find(|m| m.model == *name).unwrap();
                assert_eq!(
                    (m.max_in_flight, m.in_flight, m.queued),
                    (cap, in_flight, queued)
                );
                model_sums = (model_sums.0 + in_flight, model_sums.1 + queued);
            }
            if queued > 0 {
                assert!(in_flight >= cap, "idle slot of pool {pi} at step {step}");
                named_waits += u32::from(pi > 0);
            }
            over_capacity += u32::from(in_flight > cap);
            assert!(
                in_flight <= cap || in_flight <= last_in_flight[pi],
                "pool {pi} over its capacity at step {step}"
            );
            last_in_flight[pi] = in_flight;
        }
        let in_default = running.iter().filter(|(p, _)| *p == 0).count();
        let waiting_default = waiting.iter().filter(|(p, _)| *p == 0).count();
        assert_eq!(
            (model_sums.0 + in_default, model_sums.1 + waiting_default),
            (snap.in_flight, snap.queued)
        );
        assert!(snap.models.windows(2).all(|w| w[0].model < w[1].model));
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
    if pooled {
        assert!(snap_models(&s) == 3, "every pool was used");
        assert!(
            named_waits > 100 && over_capacity > 100,
            "{named_waits} {over_capacity}"
        );
    }
    drop(waiting);
    drop(running);
    let snap = s.snapshot();
    assert_eq!((snap.in_flight, snap.queued), (0, 0));
    assert!(
        snap.models
            .iter()
            .all(|m| (m.in_flight, m.queued) == (0, 0))
    );
}

/// A pool of [`random_operations`]: its name (`None`: the default pool), the
/// capacity its requests carry, and the one it has (`None`: not created yet).
struct RandomPool {
    name: Option<&'static str>,
    carried: Option<usize>,
    has: Option<Option<usize>>,
}

fn snap_models(s: &FairShare) -> usize {
    s.snapshot().models.len()
}

// ----- pools ----------------------------------------------------------------

#[test]
fn pools_have_their_own_slots() {
    let s = sched(8);
    let a1 = admitted(&s, preq("x", 1, "A", Some(1)));
    assert_eq!(a1.pool(), Some("A"));
    // A is full: its next request waits, while B admits.
    let mut a2 = queued(&s, preq("y", 1, "A", Some(1)));
    assert_eq!(a2.pool(), Some("A"));
    let b1 = admitted(&s, preq("y", 1, "B", Some(1)));
    assert_eq!(pool(&s, "A"), (1, 1, 1));
    assert_eq!(pool(&s, "B"), (1, 1, 0));
    assert_eq!(s.counts(), (2, 1));
    let mut b2 = queued(&s, preq("x", 1, "B", Some(1)));
    // Releasing B's slot admits B's waiter only.
    drop(b1);
    assert!(poll(&mut a2).is_none());
    let pb2 = poll(&mut b2).unwrap();
    assert_eq!(pb2.pool(), Some("B"));
    // The default pool has max_in_flight slots of its own.
    let d: Vec<Permit> = (0..8).map(|_| admitted(&s, req("x", 1))).collect();
    assert_eq!(d[0].pool(), None);
    let mut d9 = queued(&s, req("y", 1));
    assert_eq!(d9.pool(), None);
    assert_eq!(s.counts(), (10, 2));
    drop(a1);
    assert!(poll(&mut d9).is_none());
    let _pa2 = poll(&mut a2).unwrap();
    assert_eq!(pool(&s, "A"), (1, 1, 0));
    assert_eq!(s.pool_counts("C"), None);
}

#[test]
fn a_pool_without_capacity_follows_max_in_flight() {
    let s = sched(1);
    let _f1 = admitted(&s, preq("a", 1, "follow", None));
    let mut fw: Vec<Waiting> = (0..3)
        .map(|_| queued(&s, preq("a", 1, "follow", None)))
        .collect();
    let _x: Vec<Permit> = (0..2)
        .map(|_| admitted(&s, preq("b", 1, "fixed", Some(2))))
        .collect();
    let mut xw = vec![queued(&s, preq("b", 1, "fixed", Some(2)))];
    // The pools do not share the global slots: each following pool has them.
    let _d = admitted(&s, req("c", 1));
    assert_eq!(pool(&s, "follow"), (1, 1, 3));
    s.set_max_in_flight(3);
    let fg = granted(&mut fw);
    assert_eq!(fg.len(), 2);
    assert!(granted(&mut xw).is_empty());
    assert_eq!(pool(&s, "follow"), (3, 3, 1));
    assert_eq!(pool(&s, "fixed"), (2, 2, 1));
    s.set_max_in_flight(1);
    assert_eq!(pool(&s, "follow"), (1, 3, 1));
    assert_eq!(pool(&s, "fixed"), (2, 2, 1));
    // Set to follow, the fixed pool shrinks with the global value.
    s.set_pool_capacity("fixed", None);
    assert_eq!(pool(&s, "fixed"), (1, 2, 1));
    s.set_max_in_flight(4);
    let xg = granted(&mut xw);
    assert_eq!(xg.len(), 1);
    assert_eq!(pool(&s, "fixed"), (4, 3, 0));
    assert_eq!(pool(&s, "follow"), (4, 4, 0));
    // A pool can be configured before its first request.
    s.set_pool_capacity("later", Some(0));
    assert_eq!(pool(&s, "later"), (0, 0, 0));
}

#[test]
fn the_capacity_a_request_carries_changes_its_pool_live() {
    let s = sched(8);
    let p1 = admitted(&s, preq("a", 1, "m", Some(1)));
    let mut ws: Vec<Waiting> = (0..3)
        .map(|_| queued(&s, preq("a", 1, "m", Some(1))))
        .collect();
    // Growing to 3 admits two waiters at once; the new request queues behind
    // the third.
    let mut w = queued(&s, preq("b", 1, "m", Some(3)));
    let mut running: Vec<Permit> = granted(&mut ws).into_iter().map(|(_, p)| p).collect();
    assert_eq!(running.len(), 2);
    assert_eq!(pool(&s, "m"), (3, 3, 2));
    // Shrinking to 1 lets the three finish; no one starts until below 1.
    let mut w2 = queued(&s, preq("c", 1, "m", Some(1)));
    assert_eq!(pool(&s, "m"), (1, 3, 3));
    drop(p1);
    running.pop();
    assert!(granted(&mut ws).is_empty() && poll(&mut w).is_none());
    running.pop();
    let g = granted(&mut ws);
    assert_eq!(g.len(), 1);
    assert_eq!(pool(&s, "m"), (1, 1, 2));
    // set_pool_capacity grows it too.
    s.set_pool_capacity("m", Some(3));
    let (_p, _p2) = (poll(&mut w).unwrap(), poll(&mut w2).unwrap());
    assert_eq!(pool(&s, "m"), (3, 3, 0));
    // The other pools and the default one were never touched.
    assert_eq!(s.max_in_flight(), 8);
}

#[test]
fn counters_are_shared_across_pools() {
    // A lift in pool B sees the service received in pool A.
    let s = sched(8);
    for _ in 0..10 {
        admitted(&s, preq("heavy", 100, "A", Some(1))).finish(50);
    }
    assert_eq!(counter(&s, "heavy"), 20.0);
    let hold = admitted(&s, preq("z", 0, "B", Some(1)));
    let mut wo = queued(&s, preq("other", 1, "B", Some(1)));
    let mut wh = queued(&s, preq("heavy", 1, "B", Some(1)));
    let mut wf = queued(&s, preq("fresh", 1, "B", Some(1)));
    // fresh is lifted only to the lowest counter waiting in B (other's 0).
    assert_eq!(counter(&s, "fresh"), 0.0);
    drop(hold);
    let po = poll(&mut wo).unwrap();
    drop(po);
    // heavy waited before fresh, but was served more (in A): fresh first.
    assert!(poll(&mut wh).is_none());
    let pf = poll(&mut wf).unwrap();
    drop(pf);
    assert!(poll(&mut wh).is_some());

    // A charge in pool A repositions the tenant where it waits in pool B.
    let s = sched(8);
    let hold = admitted(&s, preq("z", 0, "B", Some(1)));
    let mut wh = queued(&s, preq("heavy", 1, "B", Some(1)));
    let mut wf = queued(&s, preq("fresh", 1, "B", Some(1)));
    // Tied at 0; heavy joined first, but then runs a large request in A.
    admitted(&s, preq("heavy", 1_000, "A", None)).finish(0);
    drop(hold);
    assert!(poll(&mut wh).is_none());
    assert!(poll(&mut wf).is_some());

    // The same for groups.
    let s = sched(8);
    s.set_tenant("heavy", 100, "G1").unwrap();
    s.set_tenant("fresh", 100, "G2").unwrap();
    let hold = admitted(&s, preq("z", 0, "B", Some(1)));
    let mut wh = queued(&s, preq("heavy", 1, "B", Some(1)));
    let mut wf = queued(&s, preq("fresh", 1, "B", Some(1)));
    admitted(&s, preq("heavy", 1_000, "A", None)).finish(0);
    assert_eq!(group_counter(&s, "G1"), 1_000.0 / 100.0);
    drop(hold);
    assert!(poll(&mut wh).is_none());
    assert!(poll(&mut wf).is_some());
}

#[test]
fn weights_hold_within_a_pool_while_another_is_busy() {
    let s = sched(8);
    s.set_tenant("light", 1, "default").unwrap();
    s.set_tenant("heavy", 3, "default").unwrap();
    // Pool B stays busy (one slot, always a request waiting) all along.
    let mut b_hold = Some(admitted(&s, preq("other", 10, "B", Some(1))));
    let mut b_wait = queued(&s, preq("other", 10, "B", Some(1)));
    let mut b_served = 0;
    let served = backlogged_rounds_in(
        &s,
        &|t, n| preq(t, n, "A", Some(1)),
        &["light", "heavy"],
        100,
        400,
        &mut || {
            drop(b_hold.take());
            b_hold = Some(poll(&mut b_wait).unwrap());
            b_wait = queued(&s, preq("other", 10, "B", Some(1)));
            b_served += 1;
        },
    );
    assert_eq!(served, [100, 300]);
    assert_eq!(b_served, 400);
    assert_eq!(pool(&s, "A"), (1, 0, 0));
    assert_eq!(pool(&s, "B"), (1, 1, 1));
}

#[test]
fn a_dropped_or_untaken_waiter_hands_the_slot_on_within_its_pool() {
    let s = sched(8);
    let hold_a = admitted(&s, preq("z", 0, "A", Some(1)));
    let hold_b = admitted(&s, preq("z", 0, "B", Some(1)));
    let w1 = queued(&s, preq("a", 300, "A", Some(1)));
    let mut w2 = queued(&s, preq("b", 7, "A", Some(1)));
    let mut wb = queued(&s, preq("c", 1, "B", Some(1)));
    // Dropping a waiter leaves its pool's queue only.
    let w3 = queued(&s, preq("d", 1, "A", Some(1)));
    assert_eq!(pool(&s, "A"), (1, 1, 3));
    drop(w3);
    assert_eq!(pool(&s, "A"), (1, 1, 2));
    assert_eq!(pool(&s, "B"), (1, 1, 1));
    drop(hold_a); // a gets A's slot (tie, joined first) but never polls it
    assert_eq!(pool(&s, "A"), (1, 1, 1));
    drop(w1);
    // Refunded, and the slot went to b in A, not to c in B.
    assert_eq!(counter(&s, "a"), 0.0);
    assert!(poll(&mut wb).is_none());
    let p = poll(&mut w2).unwrap();
    assert_eq!((p.input_tokens(), p.pool()), (7, Some("A")));
    assert_eq!(pool(&s, "A"), (1, 1, 0));
    assert_eq!(pool(&s, "B"), (1, 1, 1));
    drop(hold_b);
    let _pb = poll(&mut wb).unwrap();
    assert_eq!(s.counts(), (2, 0));
}

#[test]
fn the_retry_hint_uses_the_requests_pool() {
    let s = sched_with(FairShareConfig {
        max_in_flight: 8,
        max_queue_per_tenant: 2,
        queue_timeout: None,
        ..FairShareConfig::default()
    });
    let _a = admitted(&s, preq("z", 1, "A", Some(1)));
    let _b = admitted(&s, preq("z", 1, "B", Some(1)));
    let _w: Vec<Waiting> = ["a", "a", "b", "b"]
        .iter()
        .map(|t| queued(&s, preq(t, 1, "A", Some(1))))
        .collect();
    // No hold time measured yet: 1 s × (1 + 4 waiting per slot of A).
    let r = s.try_acquire(preq("a", 1, "A", Some(1))).unwrap_err();
    assert_eq!(r.reason, RejectReason::QueueFull);
    assert_eq!(r.retry_after, Duration::from_secs(5));
    // The queue limit counts the tenant's waiting requests in all pools; the
    // hint is B's (nothing waits there).
    let r = s.try_acquire(preq("a", 1, "B", Some(1))).unwrap_err();
    assert_eq!(r.retry_after, Duration::from_secs(1));
    // Pool B with a free slot admits at once.
    assert!(matches!(
        s.try_acquire(preq("a", 1, "B", Some(2))).unwrap(),
        Admission::Admitted(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn queue_timeout_in_a_pool() {
    let s = sched_with(FairShareConfig {
        max_in_flight: 4,
        queue_timeout: Some(Duration::from_secs(5)),
        ..FairShareConfig::default()
    });
    let p = s.acquire(preq("a", 1, "A", Some(1))).await.unwrap();
    let s2 = s.clone();
    let waiter = tokio::spawn(async move { s2.acquire(preq("b", 1, "A", Some(1))).await });
    tokio::task::yield_now().await;
    assert_eq!(pool(&s, "A"), (1, 1, 1));
    // Pool B admits at once meanwhile.
    let pb = s.acquire(preq("b", 1, "B", Some(1))).await.unwrap();
    tokio::time::advance(Duration::from_secs(6)).await;
    let r = waiter.await.unwrap().unwrap_err();
    assert_eq!(r.reason, RejectReason::QueueTimeout);
    assert_eq!(r.limit, 5_000);
    assert_eq!(pool(&s, "A"), (1, 1, 0));
    // Freeing B's slot does not admit anything of A; freeing A's does.
    let s3 = s.clone();
    let waiter =
        tokio::spawn(async move { s3.acquire(preq("b", 1, "A", Some(1))).await.map(|_| ()) });
    tokio::task::yield_now().await;
    drop(pb);
    tokio::task::yield_now().await;
    assert_eq!(pool(&s, "A"), (1, 1, 1));
    tokio::time::advance(Duration::from_secs(1)).await;
    drop(p);
    assert!(waiter.await.unwrap().is_ok());
    assert_eq!(s.counts(), (0, 0));
}

#[test]
fn moving_a_tenant_between_groups_moves_it_in_every_pool() {
    let s = sched(8);
    s.set_group_weight("g2", 100).unwrap();
    let hold_a = admitted(&s, preq("a", 1, "A", Some(1)));
    let hold_b = admitted(&s, preq("z", 1, "B", Some(1)));
    let mut wa = queued(&s, preq("a", 1, "A", Some(1)));
    let mut wb = queued(&s, preq("a", 1, "B", Some(1)));
    let mut wc = queued(&s, preq("c", 1, "B", Some(1)));
    s.set_tenant("a", 100, "g2").unwrap();
    let snap = s.snapshot();
    let g2 = snap.groups.iter().find(|g| g.name == "g2").unwrap();
    let d = snap.groups.iter().find(|g| g.name == "default").unwrap();
    assert_eq!(
        (g2.in_flight, g2.queued, d.in_flight, d.queued),
        (1, 2, 1, 1)
    );
    drop(hold_a);
    let _pa = poll(&mut wa).unwrap();
    drop(hold_b);
    // Pool B: g2 joined its backlog when a moved, lifted to the default
    // group's counter (the lowest there): a tie, and default was first.
    assert_eq!(group_counter(&s, "g2"), group_counter(&s, "default"));
    let pc = poll(&mut wc).unwrap();
    assert!(poll(&mut wb).is_none());
    drop(pc);
    let _pb = poll(&mut wb).unwrap();
    assert_eq!(s.counts(), (2, 0));
}

#[test]
fn the_snapshot_lists_the_pools_by_name() {
    let s = sched(4);
    let _p = admitted(&s, preq("a", 1, "zeta", Some(1)));
    let _w = queued(&s, preq("a", 1, "zeta", Some(1)));
    let _q = admitted(&s, preq("a", 1, "alpha", None));
    let _d = admitted(&s, req("a", 1));
    s.set_pool_capacity("mid", Some(7));
    let snap = s.snapshot();
    let pool = |model: &str, max_in_flight, in_flight, queued| PoolSnapshot {
        model: model.to_owned(),
        max_in_flight,
        in_flight,
        queued,
    };
    assert_eq!(
        snap.models,
        [
            pool("alpha", 4, 1, 0),
            pool("mid", 7, 0, 0),
            pool("zeta", 1, 1, 1)
        ]
    );
    assert_eq!((snap.max_in_flight, snap.in_flight, snap.queued), (4, 3, 1));
    let t = &snap.groups[0].tenants[0];
    assert_eq!((t.name.as_str(), t.in_flight, t.queued), ("a", 3, 1));
    assert_eq!((snap.groups[0].in_flight, snap.groups[0].queued), (3, 1));
    let json = serde_json::to_value(&snap).unwrap();
    assert_eq!(json["models"][2]["model"], "zeta");
}
