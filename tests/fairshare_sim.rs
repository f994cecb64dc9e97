//! The fair-share simulator's checks on shortened workloads (times × 0.25):
//! every workload of `examples/fairshare_sim.rs` against the real scheduler,
//! beside FCFS and a rate limiter. The full run is
//! `cargo run --release --example fairshare_sim`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../examples/fairshare_sim.rs"]
mod sim;

#[test]
fn shortened_workloads_meet_every_target() {
    let ws = sim::workloads();
    let rs: Vec<sim::WorkloadResult> = ws.iter().map(|w| sim::evaluate(w, 0.25)).collect();
    let failed: Vec<String> = rs
        .iter()
        .flat_map(|r| {
            r.checks
                .iter()
                .filter(|c| !c.1)
                .map(move |c| format!("{}: {}", r.name, c.0))
        })
        .collect();
    assert!(failed.is_empty(), "{}", sim::report(&ws, &rs, 0.25));
    // The comparisons the issue names.
    let overload = &rs[0];
    assert!((overload.vtc_shares[0] - 0.5).abs() < 0.02);
    assert!((overload.fcfs_shares[0] - 1.0 / 3.0).abs() < 0.02);
    assert!(rs.iter().all(|r| r.idle_ms == 0.0 && r.d <= r.two_u));
}

#[test]
fn the_simulation_is_deterministic() {
    let w = &sim::workloads()[0];
    let a = sim::simulate(w, 0.1, sim::Policy::Vtc);
    let b = sim::simulate(w, 0.1, sim::Policy::Vtc);
    assert_eq!(a.service, b.service);
    assert_eq!(a.admissions, b.admissions);
}
