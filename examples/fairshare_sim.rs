//! A deterministic discrete-event simulator of an inference server, driving
//! the real [`FairShare`] scheduler, that checks its fairness targets.
//!
//! The server has `max_in_flight` slots. Each iteration takes
//! τ = 15 ms + 1 ms · running + 0.05 ms per prefill token admitted in it, and
//! every running request emits one output token per iteration. Arrivals come
//! from a seeded RNG (xorshift). Each workload runs three ways on the same
//! trace: VTC (the real scheduler, tenants and groups as configured), FCFS
//! (the real scheduler with every request in one tenant: one FIFO queue), and
//! a per-client request-rate limiter in front of FCFS (each client may start
//! `capacity / clients` requests per second; the rest are refused).
//!
//! Per workload it reports, for VTC: D, the largest difference of weighted
//! service (`(w_in·in + w_out·out) / weight`, from token events) between two
//! clients over any interval where both stay backlogged (groups, for the
//! two-level workloads), beside 2U with
//! U = max(w_in · longest input, w_out · max_in_flight · longest output) (the
//! output tokens that can be in flight); Jain's index of weighted shares among
//! clients backlogged through the measuring window (the last 80%); shares of
//! service (beside FCFS); throughput beside FCFS; idle-slot time while
//! requests wait; per-client p50/p99 queueing delay (beside FCFS).
//!
//! `cargo run --release --example fairshare_sim` runs the full workloads
//! and writes FAIRNESS.md; `-- --short` runs them shortened (times × 0.25),
//! as the test `tests/fairshare_sim.rs` does. Exit status 1 if a check fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    dead_code,
    unreachable_pub
)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use maas::core::fairshare::{
    Admission, FairShare, FairShareConfig, OutputCharging, Permit, Request, Waiting,
};
use maas::core::{ManualClock, Timestamp};

const W_IN: f64 = 1.0;
const W_OUT: f64 = 2.0;
const SLOTS: usize = 16;
const SEED: u64 = 0x5eed_fa1e;

// ---------------------------------------------------------------- workloads

#[derive(Debug, Clone)]
pub enum Arrivals {
    /// Every 1/rate seconds, random phase.
    Periodic(f64),
    /// Poisson process of this rate.
    Poisson(f64),
    /// Periodic at `rate`, on for `period` s, off for `period` s, ...
    OnOff { rate: f64, period: f64 },
    /// Rate ramping linearly from `from` to `to` over the run.
    Ramp { from: f64, to: f64 },
    /// Periodic, with one rate per phase of `phase` s.
    Phases { rates: Vec<f64>, phase: f64 },
    /// Periodic, silent from `from` s to `to` s.
    Gap { rate: f64, from: f64, to: f64 },
}

#[derive(Debug, Clone)]
pub struct Client {
    pub name: String,
    pub group: &'static str,
    pub weight: u32,
    pub input: u64,
    pub output: u64,
    pub arrivals: Arrivals,
}

#[derive(Debug, Clone)]
pub enum Check {
    /// Jain's index of weighted shares ≥ this.
    Jain(f64),
    /// Service shares of the clients (VTC) within `tol` of these.
    Shares(Vec<f64>, f64),
    /// Service shares of the groups within `tol` of these.
    GroupShares(Vec<f64>, f64),
    /// Service shares of the groups between two times (s) within `tol`.
    GroupSharesBetween(f64, f64, Vec<f64>, f64),
    /// These clients get their full demand, and a p99 queueing delay below
    /// this fraction of FCFS's.
    FullDemand(Vec<usize>, f64),
    /// On each return after the first on-period (of this many seconds), this
    /// client gets between 40% and 60% of the service, and never holds more
    /// than 65% of the slots (no catch-up burst).
    ReturnsToHalf(usize, f64),
}

#[derive(Debug, Clone)]
pub struct Workload {
    pub name: &'static str,
    pub clients: Vec<Client>,
    /// (group, weight); empty: one flat group.
    pub groups: Vec<(&'static str, u32)>,
    pub duration: f64,
    pub capacity_change: Option<(f64, usize)>,
    pub checks: Vec<Check>,
}

fn client(name: &str, arrivals: Arrivals) -> Client {
    Client {
        name: name.to_string(),
        group: "default",
        weight: 1,
        input: 256,
        output: 256,
        arrivals,
    }
}

fn flat(name: &'static str, clients: Vec<Client>, checks: Vec<Check>) -> Workload {
    Workload {
        name,
        clients,
        groups: Vec::new(),
        duration: 600.0,
        capacity_change: None,
        checks,
    }
}

fn two_level(name: &'static str, ga: u32, gb: u32, b_gap: bool, checks: Vec<Check>) -> Workload {
    let mut clients = vec![Client {
        group: "A",
        ..client("a1", Arrivals::Periodic(2.0))
    }];
    for i in 1..=4 {
        let arrivals = if b_gap {
            Arrivals::Gap {
                rate: 0.3,
                from: 120.0,
                to: 240.0,
            }
        } else {
            Arrivals::Periodic(1.0)
        };
        clients.push(Client {
            group: "B",
            ..client(&format!("b{i}"), arrivals)
        });
    }
    Workload {
        name,
        clients,
        groups: vec![("A", ga), ("B", gb)],
        duration: 600.0,
        capacity_change: None,
        checks,
    }
}

/// Every workload of the issue, with its checks.
pub fn workloads() -> Vec<Workload> {
    use Arrivals::*;
    let p = |n: &str, r: f64| client(n, Periodic(r));
    let mut v = vec![
        flat(
            "overload",
            vec![p("c1.5", 1.5), p("c3", 3.0)],
            vec![Check::Jain(0.998), Check::Shares(vec![0.5, 0.5], 0.02)],
        ),
        flat(
            "overload-multi",
            (0..3)
                .map(|i| p(&format!("a{i}"), 0.4))
                .chain((0..5).map(|i| p(&format!("b{i}"), 0.6)))
                .collect(),
            vec![Check::Jain(0.998)],
        ),
        flat(
            "weighted",
            [0.4, 0.8, 1.2, 1.6]
                .iter()
                .enumerate()
                .map(|(i, r)| Client {
                    weight: i as u32 + 1,
                    ..p(&format!("w{}", i + 1), *r)
                })
                .collect(),
            vec![
                Check::Jain(0.998),
                Check::Shares(vec![0.1, 0.2, 0.3, 0.4], 0.02),
            ],
        ),
        flat(
            "proportional",
            vec![p("c0.25", 0.25), p("c0.5", 0.5), p("c1.5", 1.5)],
            vec![Check::FullDemand(vec![0, 1], 0.2)],
        ),
        flat(
            "on_off_less",
            vec![
                client(
                    "onoff0.5",
                    OnOff {
                        rate: 0.5,
                        period: 60.0,
                    },
                ),
                p("c2", 2.0),
            ],
            vec![Check::FullDemand(vec![0], 0.2)],
        ),
        flat(
            "on_off_overload",
            vec![
                client(
                    "onoff2",
                    OnOff {
                        rate: 2.0,
                        period: 60.0,
                    },
                ),
                p("c3", 3.0),
            ],
            vec![Check::ReturnsToHalf(0, 60.0)],
        ),
        flat(
            "poisson_short_long",
            vec![
                Client {
                    input: 64,
                    output: 64,
                    ..client("short", Poisson(8.0))
                },
                client("long", Poisson(1.5)),
            ],
            vec![],
        ),
        flat(
            "short_long_2",
            vec![
                Client {
                    input: 512,
                    output: 32,
                    ..p("in512", 8.0)
                },
                Client {
                    input: 32,
                    output: 512,
                    ..p("out512", 1.5)
                },
            ],
            vec![Check::Shares(vec![0.5, 0.5], 0.03)],
        ),
        flat(
            "increase",
            vec![p("c0.5", 0.5), client("ramp", Ramp { from: 0.2, to: 2.0 })],
            vec![],
        ),
        Workload {
            duration: 900.0,
            ..flat(
                "dist_shift",
                [
                    vec![2.0, 0.2, 0.5],
                    vec![0.5, 2.0, 0.2],
                    vec![0.2, 0.5, 2.0],
                ]
                .iter()
                .enumerate()
                .map(|(i, _)| {
                    let rates = [[2.0, 0.5, 0.2], [0.2, 2.0, 0.5], [0.5, 0.2, 2.0]][i].to_vec();
                    client(
                        &format!("s{i}"),
                        Phases {
                            rates,
                            phase: 300.0,
                        },
                    )
                })
                .collect(),
                vec![],
            )
        },
        two_level(
            "H1",
            1,
            1,
            false,
            vec![
                Check::Jain(0.998),
                Check::Shares(vec![0.5, 0.125, 0.125, 0.125, 0.125], 0.02),
            ],
        ),
        two_level(
            "H2",
            3,
            1,
            false,
            vec![Check::GroupShares(vec![0.75, 0.25], 0.02)],
        ),
        two_level(
            "H3",
            1,
            1,
            true,
            vec![
                // B idle: A gets (nearly) everything; B back: halves again.
                Check::GroupSharesBetween(180.0, 240.0, vec![1.0, 0.0], 0.02),
                Check::GroupSharesBetween(270.0, 600.0, vec![0.5, 0.5], 0.03),
            ],
        ),
        Workload {
            capacity_change: Some((200.0, 8)),
            ..flat(
                "capacity_change",
                vec![p("c1.5", 1.5), p("c3", 3.0)],
                vec![Check::Shares(vec![0.5, 0.5], 0.02)],
            )
        },
    ];
    // Two-level Jain uses each tenant's ideal share as its weight (below).
    v.shrink_to_fit();
    v
}

// ---------------------------------------------------------------- trace

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone, Copy)]
struct Arrival {
    t: f64, // ms
    client: usize,
    input: u64,
    output: u64,
}

fn rate_at(a: &Arrivals, t: f64, scale: f64) -> f64 {
    match a {
        Arrivals::Periodic(r) | Arrivals::Poisson(r) => *r,
        Arrivals::OnOff { rate, period } => {
            if ((t / (period * scale)) as u64).is_multiple_of(2) {
                *rate
            } else {
                0.0
            }
        }
        Arrivals::Ramp { .. } => 0.0,
        Arrivals::Phases { rates, phase } => {
            let i = ((t / (phase * scale)) as usize).min(rates.len() - 1);
            rates[i]
        }
        Arrivals::Gap { rate, from, to } => {
            if t >= from * scale && t < to * scale {
                0.0
            } else {
                *rate
            }
        }
    }
}

fn trace(w: &Workload, scale: f64) -> Vec<Arrival> {
    let mut rng = Rng(SEED ^ (w.name.len() as u64 * 0x9e37_79b9));
    let end = w.duration * scale;
    let mut out = Vec::new();
    for (i, c) in w.clients.iter().enumerate() {
        let mut push = |t: f64| {
            out.push(Arrival {
                t: t * 1000.0,
                client: i,
                input: c.input,
                output: c.output,
            })
        };
        match &c.arrivals {
            Arrivals::Poisson(r) => {
                let mut t = 0.0;
                loop {
                    t += -(1.0 - rng.next()).ln() / r;
                    if t >= end {
                        break;
                    }
                    push(t);
                }
            }
            Arrivals::Ramp { from, to } => {
                let mut t = rng.next() / from;
                while t < end {
                    push(t);
                    t += 1.0 / (from + (to - from) * t / end);
                }
            }
            a => {
                // Periodic with a random phase, silent where the rate is 0.
                let peak = match a {
                    Arrivals::Periodic(r) => *r,
                    Arrivals::OnOff { rate, .. } | Arrivals::Gap { rate, .. } => *rate,
                    Arrivals::Phases { rates, .. } => rates.iter().cloned().fold(0.0, f64::max),
                    _ => 1.0,
                };
                let mut t = rng.next() / peak;
                while t < end {
                    let r = rate_at(a, t, scale);
                    if r > 0.0 {
                        push(t);
                        t += 1.0 / r;
                    } else {
                        t += 0.1;
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| a.t.total_cmp(&b.t).then(a.client.cmp(&b.client)));
    out
}

// ---------------------------------------------------------------- simulation

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Vtc,
    Fcfs,
    RateLimit,
}

struct Ready {
    id: u64,
    list: Arc<Mutex<Vec<u64>>>,
}

impl Wake for Ready {
    fn wake(self: Arc<Self>) {
        self.list.lock().unwrap().push(self.id);
    }
}

struct Run {
    client: usize,
    permit: Permit,
    left: u64,
}

#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub service: Vec<f64>,
    pub window_service: Vec<f64>,
    pub delays: Vec<Vec<f64>>,
    pub arrived: Vec<u64>,
    pub admitted: Vec<u64>,
    pub rejected: Vec<u64>,
    pub d: f64,
    pub idle_slot_ms: f64,
    /// Slot time idle whatever waits (ms · slots).
    pub idle_any_ms: f64,
    pub backlog_frac: Vec<f64>,
    /// (time ms, client) of every admission.
    pub admissions: Vec<(f64, usize)>,
    /// Input plus output tokens served.
    pub tokens: u64,
    /// Output tokens generated.
    pub output_tokens: u64,
    /// Per iteration: (time ms, cumulative service per client, running per client).
    pub timeline: Vec<(f64, Vec<f64>, Vec<usize>)>,
}

fn group_index(w: &Workload, c: &Client) -> usize {
    w.groups.iter().position(|g| g.0 == c.group).unwrap_or(0)
}

/// Weight of each unit that D is measured between: clients (flat) or groups.
fn d_units(w: &Workload) -> (Vec<usize>, Vec<f64>) {
    if w.groups.is_empty() {
        (
            (0..w.clients.len()).collect(),
            w.clients.iter().map(|c| f64::from(c.weight)).collect(),
        )
    } else {
        (
            w.clients.iter().map(|c| group_index(w, c)).collect(),
            w.groups.iter().map(|g| f64::from(g.1)).collect(),
        )
    }
}

/// Each client's ideal share as a weight (two-level: group share × share in group).
pub fn ideal_weights(w: &Workload) -> Vec<f64> {
    if w.groups.is_empty() {
        return w.clients.iter().map(|c| f64::from(c.weight)).collect();
    }
    let gsum: f64 = w.groups.iter().map(|g| f64::from(g.1)).sum();
    w.clients
        .iter()
        .map(|c| {
            let g = &w.groups[group_index(w, c)];
            let tsum: f64 = w
                .clients
                .iter()
                .filter(|o| o.group == c.group)
                .map(|o| f64::from(o.weight))
                .sum();
            f64::from(g.1) / gsum * f64::from(c.weight) / tsum
        })
        .collect()
}

pub fn simulate(w: &Workload, scale: f64, policy: Policy) -> Outcome {
    let arrivals = trace(w, scale);
    let n = w.clients.len();
    let clock = ManualClock::new(Timestamp::EPOCH);
    let sched = FairShare::with_clock(
        FairShareConfig {
            max_in_flight: SLOTS,
            input_weight: W_IN,
            output_weight: W_OUT,
            max_queue_per_tenant: usize::MAX,
            queue_timeout: None,
            output_charging: OutputCharging::Reported,
        },
        Arc::new(clock.clone()),
    )
    .unwrap();
    if policy == Policy::Vtc {
        for (g, wt) in &w.groups {
            sched.set_group_weight(g, *wt).unwrap();
        }
        for c in &w.clients {
            sched.set_tenant(&c.name, c.weight, c.group).unwrap();
        }
    }
    let tenant = |c: usize| -> &str {
        if policy == Policy::Vtc {
            &w.clients[c].name
        } else {
            "all"
        }
    };
    // Rate limiter: each client may start capacity / n requests per second.
    let mean_out = w.clients.iter().map(|c| c.output as f64).sum::<f64>() / n as f64;
    let capacity = SLOTS as f64 * 1000.0 / (mean_out * (15.0 + SLOTS as f64 + 1.0));
    let limit_rate = capacity / n as f64;
    let mut bucket = vec![(1.0f64, 0.0f64); n]; // (tokens, last ms)

    let (unit_of, unit_w) = d_units(w);
    let units = unit_w.len();
    let mut pair: Vec<Option<(f64, f64)>> = vec![None; units * units];
    let mut unit_service = vec![0.0; units];

    let ready = Arc::new(Mutex::new(Vec::<u64>::new()));
    let mut waiting: HashMap<u64, (Waiting, Arrival)> = HashMap::new();
    let mut next_id = 0u64;
    let mut wait_count = vec![0usize; n];
    let mut running: Vec<Run> = Vec::new();
    let mut joiners: Vec<(Permit, Arrival)> = Vec::new();
    let mut o = Outcome {
        service: vec![0.0; n],
        window_service: vec![0.0; n],
        delays: vec![Vec::new(); n],
        arrived: vec![0; n],
        admitted: vec![0; n],
        rejected: vec![0; n],
        backlog_frac: vec![0.0; n],
        ..Outcome::default()
    };
    let end = w.duration * scale * 1000.0;
    let warm = 0.2 * end;
    let mut window_time = 0.0;
    let mut max = SLOTS;
    let mut changed = false;
    let mut ai = 0;
    let mut t = 0.0f64;
    let noop = Waker::noop();
    while t < end {
        clock.set(Timestamp::from_millis(t as i64));
        if let Some((at, m)) = w.capacity_change
            && !changed
            && t >= at * scale * 1000.0
        {
            changed = true;
            max = m;
            sched.set_max_in_flight(m);
        }
        while ai < arrivals.len() && arrivals[ai].t <= t {
            let a = arrivals[ai];
            ai += 1;
            o.arrived[a.client] += 1;
            if policy == Policy::RateLimit {
                let b = &mut bucket[a.client];
                b.0 = (b.0 + (a.t - b.1) / 1000.0 * limit_rate).min(1.0);
                b.1 = a.t;
                if b.0 < 1.0 {
                    o.rejected[a.client] += 1;
                    continue;
                }
                b.0 -= 1.0;
            }
            match sched
                .try_acquire(Request::new(tenant(a.client), a.input, a.output))
                .unwrap()
            {
                Admission::Admitted(p) => joiners.push((p, a)),
                Admission::Queued(mut wt) => {
                    next_id += 1;
                    let waker = Waker::from(Arc::new(Ready {
                        id: next_id,
                        list: ready.clone(),
                    }));
                    match Pin::new(&mut wt).poll(&mut Context::from_waker(&waker)) {
                        Poll::Ready(p) => joiners.push((p, a)),
                        Poll::Pending => {
                            wait_count[a.client] += 1;
                            waiting.insert(next_id, (wt, a));
                        }
                    }
                }
            }
        }
        let woken: Vec<u64> = std::mem::take(&mut *ready.lock().unwrap());
        for id in woken {
            if let Some((mut wt, a)) = waiting.remove(&id) {
                match Pin::new(&mut wt).poll(&mut Context::from_waker(noop)) {
                    Poll::Ready(p) => {
                        wait_count[a.client] -= 1;
                        joiners.push((p, a));
                    }
                    Poll::Pending => {
                        waiting.insert(id, (wt, a));
                    }
                }
            }
        }
        if running.is_empty() && joiners.is_empty() {
            if ai >= arrivals.len() {
                break;
            }
            t = t.max(arrivals[ai].t);
            continue;
        }
        let mut prefill = 0u64;
        for (p, a) in joiners.drain(..) {
            prefill += a.input;
            let s = W_IN * a.input as f64;
            o.service[a.client] += s;
            unit_service[unit_of[a.client]] += s;
            if t >= warm {
                o.window_service[a.client] += s;
            }
            o.delays[a.client].push(t - a.t);
            o.admitted[a.client] += 1;
            o.admissions.push((t, a.client));
            o.tokens += a.input;
            running.push(Run {
                client: a.client,
                permit: p,
                left: a.output,
            });
        }
        let tau = 15.0 + running.len() as f64 + 0.05 * prefill as f64;
        if running.len() < max {
            o.idle_any_ms += tau * (max - running.len()) as f64;
        }
        if !waiting.is_empty() && running.len() < max {
            o.idle_slot_ms += tau * (max - running.len()) as f64;
        }
        // D: weighted service difference of units both backlogged.
        let mut backlogged = vec![false; units];
        for c in 0..n {
            if wait_count[c] > 0 {
                backlogged[unit_of[c]] = true;
            }
        }
        for i in 0..units {
            for j in (i + 1)..units {
                let k = i * units + j;
                if backlogged[i] && backlogged[j] {
                    let f = unit_service[i] / unit_w[i] - unit_service[j] / unit_w[j];
                    let e = pair[k].get_or_insert((f, f));
                    e.0 = e.0.min(f);
                    e.1 = e.1.max(f);
                    o.d = o.d.max(e.1 - e.0);
                } else {
                    pair[k] = None;
                }
            }
        }
        if t >= warm {
            window_time += tau;
            for (f, &w) in o.backlog_frac.iter_mut().zip(&wait_count) {
                if w > 0 {
                    *f += tau;
                }
            }
        }
        let mut per_client = vec![0usize; n];
        for r in &running {
            per_client[r.client] += 1;
        }
        o.timeline.push((t, o.service.clone(), per_client));
        t += tau;
        for r in &mut running {
            r.permit.record_output(1);
            r.left -= 1;
            o.service[r.client] += W_OUT;
            unit_service[unit_of[r.client]] += W_OUT;
            if t >= warm {
                o.window_service[r.client] += W_OUT;
            }
            o.tokens += 1;
            o.output_tokens += 1;
        }
        running.retain(|r| r.left > 0);
    }
    for f in &mut o.backlog_frac {
        *f /= window_time.max(1.0);
    }
    o
}

// ---------------------------------------------------------------- report

fn pct(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}

fn shares(v: &[f64]) -> Vec<f64> {
    let sum: f64 = v.iter().sum::<f64>().max(1e-9);
    v.iter().map(|x| x / sum).collect()
}

fn jain(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 1.0;
    }
    let s: f64 = xs.iter().sum();
    let q: f64 = xs.iter().map(|x| x * x).sum();
    s * s / (xs.len() as f64 * q.max(1e-12))
}

fn fmt_shares(v: &[f64]) -> String {
    v.iter()
        .map(|s| format!("{:.3}", s))
        .collect::<Vec<_>>()
        .join(" / ")
}

#[derive(Debug, Clone)]
pub struct WorkloadResult {
    pub name: &'static str,
    pub d: f64,
    pub two_u: f64,
    pub jain: f64,
    pub vtc_shares: Vec<f64>,
    pub fcfs_shares: Vec<f64>,
    pub throughput: f64,
    pub all_tokens: f64,
    pub rl_throughput: f64,
    pub idle_ms: f64,
    /// Idle slot time of the rate limiter, whatever waits (slot-seconds).
    pub rl_idle_s: f64,
    pub p50_p99: Vec<(f64, f64, f64, f64)>,
    pub checks: Vec<(String, bool)>,
}

impl WorkloadResult {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.1)
    }
}

pub fn evaluate(w: &Workload, scale: f64) -> WorkloadResult {
    let vtc = simulate(w, scale, Policy::Vtc);
    let fcfs = simulate(w, scale, Policy::Fcfs);
    let rl = simulate(w, scale, Policy::RateLimit);
    let max_in = w.clients.iter().map(|c| c.input).max().unwrap_or(0) as f64;
    let max_out = w.clients.iter().map(|c| c.output).max().unwrap_or(0) as f64;
    let u = (W_IN * max_in).max(W_OUT * SLOTS as f64 * max_out);
    let ideal = ideal_weights(w);
    let steady: Vec<f64> = (0..w.clients.len())
        .filter(|&c| vtc.backlog_frac[c] >= 0.95)
        .map(|c| vtc.window_service[c] / ideal[c])
        .collect();
    let j = jain(&steady);
    let vs = shares(&vtc.window_service);
    let fs = shares(&fcfs.window_service);
    // Throughput: output tokens generated (decode throughput). Tokens of any
    // kind also depend on the mix of requests admitted, which fair sharing
    // changes by design (short_long_2): reported beside it.
    let throughput = vtc.output_tokens as f64 / fcfs.output_tokens.max(1) as f64;
    let all_tokens = vtc.tokens as f64 / fcfs.tokens.max(1) as f64;
    let rl_throughput = rl.output_tokens as f64 / fcfs.output_tokens.max(1) as f64;
    let mut checks = vec![
        (
            format!("D {:.0} <= 2U {:.0}", vtc.d, 2.0 * u),
            vtc.d <= 2.0 * u,
        ),
        (
            format!(
                "output-token throughput {throughput:.4} >= 0.995 of FCFS (input+output tokens: {all_tokens:.4})"
            ),
            throughput >= 0.995,
        ),
        (
            format!(
                "idle slot time while waiting {:.0} ms = 0",
                vtc.idle_slot_ms
            ),
            vtc.idle_slot_ms == 0.0,
        ),
    ];
    for c in &w.checks {
        match c {
            Check::Jain(min) => checks.push((format!("Jain {j:.4} >= {min}"), j >= *min)),
            Check::Shares(exp, tol) => {
                let ok = vs.iter().zip(exp).all(|(a, b)| (a - b).abs() <= *tol);
                checks.push((
                    format!(
                        "shares {} ~ {} (FCFS {})",
                        fmt_shares(&vs),
                        fmt_shares(exp),
                        fmt_shares(&fs)
                    ),
                    ok,
                ));
            }
            Check::GroupShares(exp, tol) => {
                let mut g = vec![0.0; w.groups.len()];
                for (c, cl) in w.clients.iter().enumerate() {
                    g[group_index(w, cl)] += vtc.window_service[c];
                }
                let gs = shares(&g);
                let ok = gs.iter().zip(exp).all(|(a, b)| (a - b).abs() <= *tol);
                checks.push((
                    format!("group shares {} ~ {}", fmt_shares(&gs), fmt_shares(exp)),
                    ok,
                ));
            }
            Check::GroupSharesBetween(from, to, exp, tol) => {
                let at = |x: f64| {
                    let i = vtc.timeline.partition_point(|e| e.0 < x * scale * 1000.0);
                    &vtc.timeline[i.min(vtc.timeline.len() - 1)].1
                };
                let (a, b) = (at(*from), at(*to));
                let mut g = vec![0.0; w.groups.len()];
                for (c, cl) in w.clients.iter().enumerate() {
                    g[group_index(w, cl)] += b[c] - a[c];
                }
                let gs = shares(&g);
                let ok = gs.iter().zip(exp).all(|(a, b)| (a - b).abs() <= *tol);
                checks.push((
                    format!(
                        "group shares {:.0}-{:.0} s: {} ~ {}",
                        from * scale,
                        to * scale,
                        fmt_shares(&gs),
                        fmt_shares(exp)
                    ),
                    ok,
                ));
            }
            Check::FullDemand(cs, factor) => {
                for &c in cs {
                    let served = vtc.admitted[c] as f64 / vtc.arrived[c].max(1) as f64;
                    let p99 = pct(&vtc.delays[c], 0.99);
                    let fp99 = pct(&fcfs.delays[c], 0.99);
                    // All but the requests that arrived in the last seconds.
                    let ok = served >= 0.97 && p99 <= factor * fp99.max(1.0);
                    checks.push((
                        format!(
                            "{}: admitted {:.3} of demand, p99 wait {:.0} ms vs FCFS {:.0} ms",
                            w.clients[c].name, served, p99, fp99
                        ),
                        ok,
                    ));
                }
            }
            Check::ReturnsToHalf(c, period) => {
                let p = period * scale * 1000.0;
                let end = w.duration * scale * 1000.0;
                let at = |x: f64| {
                    let i = vtc.timeline.partition_point(|e| e.0 < x);
                    &vtc.timeline[i.min(vtc.timeline.len() - 1)]
                };
                let mut k = 2.0;
                while (k + 1.0) * p <= end {
                    let (s, e) = (k * p, (k + 1.0) * p);
                    let (a, b) = (at(s), at(e));
                    let mine = b.1[*c] - a.1[*c];
                    let all: f64 = b.1.iter().sum::<f64>() - a.1.iter().sum::<f64>();
                    let share = mine / all.max(1.0);
                    let peak = vtc
                        .timeline
                        .iter()
                        .filter(|x| x.0 >= s && x.0 < e)
                        .map(|x| x.2[*c] as f64 / x.2.iter().sum::<usize>().max(1) as f64)
                        .fold(0.0, f64::max);
                    checks.push((
                        format!(
                            "{} returns at {:.0} s: {:.3} of the service, at most {:.3} of the slots",
                            w.clients[*c].name,
                            s / 1000.0,
                            share,
                            peak
                        ),
                        (0.4..=0.6).contains(&share) && peak <= 0.65,
                    ));
                    k += 2.0;
                }
            }
        }
    }
    let p50_p99 = (0..w.clients.len())
        .map(|c| {
            (
                pct(&vtc.delays[c], 0.5),
                pct(&vtc.delays[c], 0.99),
                pct(&fcfs.delays[c], 0.5),
                pct(&fcfs.delays[c], 0.99),
            )
        })
        .collect();
    WorkloadResult {
        name: w.name,
        d: vtc.d,
        two_u: 2.0 * u,
        jain: j,
        vtc_shares: vs,
        fcfs_shares: fs,
        throughput,
        all_tokens,
        rl_throughput,
        idle_ms: vtc.idle_slot_ms,
        rl_idle_s: (rl.idle_any_ms - fcfs.idle_any_ms).max(0.0) / 1000.0,
        p50_p99,
        checks,
    }
}

pub fn report(ws: &[Workload], rs: &[WorkloadResult], scale: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Fair-share simulator results\n\nWritten by `cargo run --release --example fairshare_sim`{} \
         (seed {SEED:#x}, {SLOTS} slots, w_in {W_IN}, w_out {W_OUT}, time scale {scale}).\n\
         τ = 15 ms + 1 ms · running + 0.05 ms · prefill tokens; one token per running request per \
         iteration. D: largest weighted-service gap between two backlogged clients (groups for H1-H3); \
         U = max(w_in · longest input, w_out · max_in_flight · longest output). Shares: of service in the \
         last 80% of the run. Throughput: output tokens generated relative to FCFS on the same trace (in brackets: input+output tokens, which also depend on the mix of requests served). RL: the \
         per-client request-rate limiter baseline (throughput relative to FCFS, and slot-seconds it \
         left idle beyond FCFS while refusing requests).\n",
        if scale < 1.0 { " -- --short" } else { "" }
    );
    let _ = writeln!(
        s,
        "| workload | D | 2U | Jain | VTC shares | FCFS shares | thr. vs FCFS (all tokens) | RL thr. | VTC idle slot time while waiting | RL idle slot-s beyond FCFS | result |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rs {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.4} | {} | {} | {:.4} ({:.3}) | {:.3} | {:.0} ms | {:.0} | {} |",
            r.name,
            r.d,
            r.two_u,
            r.jain,
            fmt_shares(&r.vtc_shares),
            fmt_shares(&r.fcfs_shares),
            r.throughput,
            r.all_tokens,
            r.rl_throughput,
            r.idle_ms,
            r.rl_idle_s,
            if r.passed() { "pass" } else { "FAIL" }
        );
    }
    let _ = writeln!(s, "\n## Checks and queueing delay per workload\n");
    for (w, r) in ws.iter().zip(rs) {
        let _ = writeln!(s, "### {}\n", r.name);
        for (c, ok) in &r.checks {
            let _ = writeln!(s, "- {} {}", if *ok { "pass" } else { "FAIL" }, c);
        }
        let _ = writeln!(
            s,
            "\n| client | VTC p50 | VTC p99 | FCFS p50 | FCFS p99 |\n|---|---|---|---|---|"
        );
        for (c, d) in w.clients.iter().zip(&r.p50_p99) {
            let _ = writeln!(
                s,
                "| {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
                c.name, d.0, d.1, d.2, d.3
            );
        }
        let _ = writeln!(s);
    }
    s
}

fn main() {
    let short = std::env::args().any(|a| a == "--short");
    let scale = if short { 0.25 } else { 1.0 };
    let ws = workloads();
    let rs: Vec<WorkloadResult> = ws.iter().map(|w| evaluate(w, scale)).collect();
    let text = report(&ws, &rs, scale);
    print!("{text}");
    if !short {
        std::fs::write("FAIRNESS.md", &text).unwrap();
    }
    if rs.iter().any(|r| !r.passed()) {
        std::process::exit(1);
    }
}
