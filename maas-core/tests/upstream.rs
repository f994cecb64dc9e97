//! Balancing over a model's upstreams: weights, least outstanding, per
//! upstream limits, passive health (ejection, half-open probe), the retry
//! budget. Time is a manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use maas_core::model::Upstream;
use maas_core::upstream::{BalancerConfig, HealthState, Outcome, Upstreams};
use maas_core::{Clock, ManualClock, Model, Timestamp};

fn model(id: &str, upstreams: &[(&str, u32, Option<u32>)]) -> Model {
    Model {
        id: id.into(),
        name: id.into(),
        upstream_url: upstreams[0].0.into(),
        upstreams: upstreams
            .iter()
            .map(|(url, weight, max)| Upstream {
                url: (*url).into(),
                weight: *weight,
                max_in_flight: *max,
            })
            .collect(),
        max_in_flight: None,
        fallbacks: Vec::new(),
        api: vec![maas_core::model::ModelApi::Openai],
        owned_by: "o".into(),
        created: Timestamp::from_millis(0),
        ready: true,
        tiers: Vec::new(),
        pricing: None,
        cache: Default::default(),
        created_at: Timestamp::from_millis(0),
        updated_at: Timestamp::from_millis(0),
        version: 1,
    }
}

fn setup(config: BalancerConfig) -> (Upstreams, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_000_000)));
    (Upstreams::new(config, clock.clone()), clock)
}

fn count(picks: &[String], url: &str) -> usize {
    picks.iter().filter(|p| *p == url).count()
}

#[test]
fn idle_requests_follow_the_weights() {
    let (ups, _) = setup(BalancerConfig::default());
    let pool = ups.pool(&model("m", &[("http://a", 1, None), ("http://b", 3, None)]));
    let picks: Vec<String> = (0..1000)
        .map(|_| pool.pick().unwrap().url().to_owned())
        .collect();
    let b = count(&picks, "http://b");
    assert!(
        (675..=825).contains(&b),
        "b got {b} of 1000 (want 750 ± 10%)"
    );
    // Smooth: never more than 3 b's in a row.
    assert!(!picks.windows(4).any(|w| w.iter().all(|p| p == "http://b")));
}

#[test]
fn busy_upstreams_are_picked_less() {
    let (ups, _) = setup(BalancerConfig::default());
    let pool = ups.pool(&model("m", &[("http://a", 1, None), ("http://b", 1, None)]));
    // a holds three requests that do not end.
    let mut held = Vec::new();
    while held.len() < 3 {
        let p = pool.pick().unwrap();
        if p.url() == "http://a" {
            held.push(p);
        }
    }
    let picks: Vec<String> = (0..100)
        .map(|_| pool.pick().unwrap().url().to_owned())
        .collect();
    assert!(
        count(&picks, "http://b") >= 75,
        "b (idle) should take most: {}",
        count(&picks, "http://b")
    );
    let snap = pool.snapshot();
    assert_eq!(snap.upstreams[0].in_flight, 3);
    drop(held);
    assert_eq!(pool.snapshot().upstreams[0].in_flight, 0);
}

#[test]
fn an_upstream_at_its_limit_is_skipped_while_another_has_room() {
    let (ups, _) = setup(BalancerConfig::default());
    let pool = ups.pool(&model(
        "m",
        &[("http://a", 10, Some(1)), ("http://b", 1, Some(4))],
    ));
    let held: Vec<_> = (0..5).map(|_| pool.pick().unwrap()).collect();
    let on = |u: &str| held.iter().filter(|p| p.url() == u).count();
    assert_eq!((on("http://a"), on("http://b")), (1, 4));
    // Both full: still served (the fair-share capacity is the real bound).
    assert!(pool.pick().is_some());
}

#[test]
fn failures_in_a_row_eject_then_one_probe_decides() {
    let cfg = BalancerConfig {
        failures_to_eject: 3,
        base_ejection: Duration::from_secs(10),
        ..BalancerConfig::default()
    };
    let (ups, clock) = setup(cfg);
    let pool = ups.pool(&model("m", &[("http://a", 1, None), ("http://b", 1, None)]));
    let fail_a = |n: usize| {
        let mut failed = 0;
        while failed < n {
            let mut p = pool.pick().unwrap();
            if p.url() == "http://a" {
                p.record(Outcome::Failed);
                failed += 1;
            } else {
                p.record(Outcome::Answered);
            }
        }
    };
    // Two failures, then an answer: the count starts again.
    fail_a(2);
    let mut p = loop {
        let p = pool.pick().unwrap();
        if p.url() == "http://a" {
            break p;
        }
    };
    assert!(p.record(Outcome::Answered).is_none());
    drop(p);
    fail_a(2);
    assert_eq!(pool.snapshot().upstreams[0].state, HealthState::Healthy);
    fail_a(1);
    let snap = pool.snapshot();
    assert_eq!(snap.upstreams[0].state, HealthState::Ejected);
    assert_eq!(snap.upstreams[0].ejections, 1);
    // Ejected: every pick goes to b.
    for _ in 0..20 {
        assert_eq!(pool.pick().unwrap().url(), "http://b");
    }
    // Half-open after 10 s: exactly one probe at a time.
    clock.advance(Duration::from_secs(10));
    assert_eq!(pool.snapshot().upstreams[0].state, HealthState::HalfOpen);
    let mut probe = loop {
        let p = pool.pick().unwrap();
        if p.url() == "http://a" {
            break p;
        }
    };
    assert!(probe.is_probe());
    for _ in 0..20 {
        assert_eq!(
            pool.pick().unwrap().url(),
            "http://b",
            "one probe at a time"
        );
    }
    // The probe fails: out again, twice as long.
    let ejected = probe.record(Outcome::Failed).unwrap();
    assert_eq!(ejected.length, Duration::from_secs(20));
    drop(probe);
    clock.advance(Duration::from_secs(19));
    for _ in 0..5 {
        assert_eq!(pool.pick().unwrap().url(), "http://b");
    }
    clock.advance(Duration::from_secs(1));
    let mut probe = loop {
        let p = pool.pick().unwrap();
        if p.url() == "http://a" {
            break p;
        }
    };
    // The probe succeeds: healthy, its next ejection is short again.
    probe.record(Outcome::Answered);
    drop(probe);
    assert_eq!(pool.snapshot().upstreams[0].state, HealthState::Healthy);
    let picks: Vec<String> = (0..10)
        .map(|_| pool.pick().unwrap().url().to_owned())
        .collect();
    assert_eq!(count(&picks, "http://a"), 5, "back in the rotation");
    fail_a(3);
    assert_eq!(
        pool.snapshot().upstreams[0].ejected_until,
        Some(Timestamp::from_millis(clock.now().as_millis() + 10_000))
    );
}

#[test]
fn a_probe_abandoned_without_an_answer_lets_the_next_request_probe() {
    let cfg = BalancerConfig {
        failures_to_eject: 1,
        ..BalancerConfig::default()
    };
    let (ups, clock) = setup(cfg);
    let pool = ups.pool(&model("m", &[("http://a", 1, None)]));
    pool.pick().unwrap().record(Outcome::Failed);
    assert!(pool.pick().is_none(), "its only upstream is out");
    assert!(!pool.available());
    assert_eq!(pool.retry_after(), Some(Duration::from_secs(10)));
    clock.advance(Duration::from_secs(4));
    assert_eq!(pool.retry_after(), Some(Duration::from_secs(6)));
    clock.advance(Duration::from_secs(6));
    let probe = pool.pick().unwrap();
    assert!(probe.is_probe());
    assert!(pool.pick().is_none(), "a probe runs");
    assert_eq!(pool.retry_after(), Some(Duration::ZERO));
    drop(probe);
    assert!(pool.pick().unwrap().is_probe());
}

#[test]
fn a_retry_goes_to_another_upstream_and_never_in_a_pool_of_one() {
    let (ups, _) = setup(BalancerConfig {
        retry_ratio: 1.0,
        ..BalancerConfig::default()
    });
    let pool = ups.pool(&model("m", &[("http://a", 1, None), ("http://b", 1, None)]));
    for _ in 0..10 {
        let mut first = pool.pick().unwrap();
        first.record(Outcome::Failed);
        let retry = pool.try_retry(&first).unwrap();
        assert_ne!(retry.url(), first.url());
        // Answers keep both healthy.
        first = pool.pick().unwrap();
        first.record(Outcome::Answered);
        drop(first);
        let mut other = pool.pick().unwrap();
        other.record(Outcome::Answered);
    }
    let single = ups.pool(&model("one", &[("http://a", 1, None)]));
    let first = single.pick().unwrap();
    assert!(single.try_retry(&first).is_none());
}

#[test]
fn the_retry_budget_caps_retries_during_a_full_outage() {
    // Ejection off: every request fails and asks for a retry.
    let cfg = BalancerConfig {
        failures_to_eject: u32::MAX,
        retry_ratio: 0.2,
        min_retries: 3,
        retry_window: Duration::from_secs(10),
        ..BalancerConfig::default()
    };
    let (ups, clock) = setup(cfg);
    let pool = ups.pool(&model(
        "m",
        &[
            ("http://a", 1, None),
            ("http://b", 1, None),
            ("http://c", 1, None),
        ],
    ));
    let mut retries = 0;
    for i in 0..1000 {
        if i % 100 == 0 {
            clock.advance(Duration::from_millis(500));
        }
        let mut first = pool.pick().unwrap();
        first.record(Outcome::Failed);
        if let Some(mut r) = pool.try_retry(&first) {
            r.record(Outcome::Failed);
            retries += 1;
        }
    }
    // 1,000 requests over 5 s, one window: at most 20% + 3.
    assert!(retries <= 203, "{retries} retries");
    assert!(retries >= 150, "the budget is used: {retries}");
    // A new window (no traffic for 20 s) starts with the minimum only.
    clock.advance(Duration::from_secs(20));
    let mut granted = 0;
    for _ in 0..10 {
        let first = pool.pick().unwrap();
        if pool.try_retry(&first).is_some() {
            granted += 1;
        }
    }
    assert!(granted <= 3 + 2, "{granted}");
}

#[test]
fn a_changed_model_keeps_the_health_of_the_upstreams_it_keeps() {
    let cfg = BalancerConfig {
        failures_to_eject: 1,
        ..BalancerConfig::default()
    };
    let (ups, _) = setup(cfg);
    let mut m = model("m", &[("http://a", 1, None), ("http://b", 1, None)]);
    let pool = ups.pool(&m);
    assert!(Arc::ptr_eq(&pool, &ups.pool(&m)), "same version, same pool");
    loop {
        let mut p = pool.pick().unwrap();
        if p.url() == "http://a" {
            p.record(Outcome::Failed);
            break;
        }
    }
    m.upstreams.push(Upstream::new("http://c"));
    m.version = 2;
    let changed = ups.pool(&m);
    assert!(!Arc::ptr_eq(&pool, &changed));
    let snap = changed.snapshot();
    assert_eq!(snap.upstreams.len(), 3);
    assert_eq!(snap.upstreams[0].state, HealthState::Ejected);
    assert_eq!(snap.upstreams[2].state, HealthState::Healthy);
    assert_eq!(ups.snapshot().len(), 1);
    ups.retain(&[]);
    assert!(ups.snapshot().is_empty());
}
