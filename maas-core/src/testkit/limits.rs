//! Limit scenarios: multi-counter reservations (all or none), settlement,
//! and their exactness under concurrency.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::run_prop;
use crate::clock::{Clock, ManualClock, Timestamp};
use crate::counter::{LimitOp, LimitSpec, Period, PeriodSpec, SettleOp, SlidingSpec, WindowSpec};
use crate::error::Error;
use crate::ratelimit::{LimitRequest, OverrideLimit, RateLimitConfig, RateLimiter};
use crate::storage::Storage;

fn bucket(limit: u64) -> LimitSpec {
    LimitSpec::Bucket(WindowSpec::fixed(limit, 60_000))
}

fn sliding(limit: u64) -> LimitSpec {
    LimitSpec::Sliding(SlidingSpec {
        limit,
        window_ms: 60_000,
    })
}

fn period(limit: u64) -> LimitSpec {
    LimitSpec::Period(PeriodSpec {
        limit,
        period: Period::Daily,
    })
}

fn op(id: &str, spec: LimitSpec, cost: u64) -> LimitOp {
    LimitOp {
        id: id.into(),
        spec,
        cost,
    }
}

fn settle(op: &LimitOp, taken_at: Timestamp, used: u64) -> SettleOp {
    SettleOp {
        id: op.id.clone(),
        spec: op.spec,
        taken_at,
        reserved: op.cost,
        used,
    }
}

async fn remaining(storage: &Storage, id: &str, spec: LimitSpec, now: Timestamp) -> u64 {
    let r = storage
        .counters
        .reserve(&[op(id, spec, 0)], now)
        .await
        .unwrap();
    r.decisions[0].remaining
}

/// A reservation over a bucket, a sliding window and a period is all or
/// none: one op that does not fit leaves every counter untouched and says
/// which; settling gives back to each counter, or charges the excess.
pub async fn counters_reserve_all_or_none(storage: Storage, clock: ManualClock) {
    let now = clock.now();
    let c = &storage.counters;
    let ops = vec![
        op("r:req", bucket(10), 1),
        op("r:tok", sliding(100), 60),
        op("r:budget", period(1000), 300),
    ];
    let r = c.reserve(&ops, now).await.unwrap();
    assert!(r.admitted);
    assert_eq!(
        r.decisions.iter().map(|d| d.remaining).collect::<Vec<_>>(),
        vec![9, 40, 700]
    );
    assert!(r.decisions.iter().all(|d| d.allowed));

    // 60 more tokens do not fit: nothing is taken from the other two.
    let denied = c.reserve(&ops, now).await.unwrap();
    assert!(!denied.admitted);
    assert_eq!(denied.first_denied(), Some(1));
    assert_eq!(denied.decisions[1].remaining, 40);
    assert_eq!(denied.decisions[1].limit, 100);
    assert!(denied.decisions[0].allowed && denied.decisions[2].allowed);
    assert_eq!(remaining(&storage, "r:req", bucket(10), now).await, 9);
    assert_eq!(
        remaining(&storage, "r:budget", period(1000), now).await,
        700
    );

    // The request used 20 tokens and cost 100: the rest comes back.
    let after = c
        .settle(&[settle(&ops[1], now, 20), settle(&ops[2], now, 100)], now)
        .await
        .unwrap();
    assert_eq!(after.len(), 2);
    assert_eq!(remaining(&storage, "r:tok", sliding(100), now).await, 80);
    assert_eq!(
        remaining(&storage, "r:budget", period(1000), now).await,
        900
    );

    // A release gives everything back; an overrun is charged past the limit.
    c.settle(&[settle(&ops[0], now, 0)], now).await.unwrap();
    assert_eq!(remaining(&storage, "r:req", bucket(10), now).await, 10);
    c.settle(&[settle(&ops[1], now, 150)], now).await.unwrap();
    assert_eq!(remaining(&storage, "r:tok", sliding(100), now).await, 0);

    // The same counter twice in one reservation counts both.
    let twice = vec![op("r:dup", bucket(10), 6), op("r:dup", bucket(10), 6)];
    assert!(!c.reserve(&twice, now).await.unwrap().admitted);
    assert_eq!(remaining(&storage, "r:dup", bucket(10), now).await, 10);

    // Windows move on: the bucket and the sliding window refill.
    clock.advance(std::time::Duration::from_secs(120));
    let later = clock.now();
    assert_eq!(remaining(&storage, "r:tok", sliding(100), later).await, 100);
    assert_eq!(remaining(&storage, "r:req", bucket(10), later).await, 10);
}

/// 32 tasks reserve (1 request, n tokens, 3n budget) and then reconcile or
/// release, concurrently: the counters end exactly at the limit minus what
/// was kept, and what was kept never exceeds any limit.
pub async fn counters_reserve_concurrently_exact(storage: Storage, clock: ManualClock) {
    let now = clock.now();
    let specs = [bucket(150), sliding(700), period(1800)];
    let mut tasks = Vec::new();
    for t in 0..32u64 {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            let mut kept = [0u64; 3];
            for i in 0..16u64 {
                let n = 1 + (t * 7 + i * 3) % 9;
                let ops = vec![
                    op("c:req", specs[0], 1),
                    op("c:tok", specs[1], n),
                    op("c:budget", specs[2], 3 * n),
                ];
                let r = storage.counters.reserve(&ops, now).await.unwrap();
                if !r.admitted {
                    continue;
                }
                // Every third is released; the others used half the tokens.
                let used = if (t + i) % 3 == 0 { 0 } else { n / 2 };
                let used = [u64::from(used > 0), used, 3 * used];
                let settles: Vec<SettleOp> = ops
                    .iter()
                    .zip(used)
                    .map(|(o, u)| settle(o, now, u))
                    .collect();
                storage.counters.settle(&settles, now).await.unwrap();
                for k in 0..3 {
                    kept[k] += used[k];
                }
            }
            kept
        }));
    }
    let mut kept = [0u64; 3];
    for t in tasks {
        let k = t.await.unwrap();
        for i in 0..3 {
            kept[i] += k[i];
        }
    }
    for (i, id) in ["c:req", "c:tok", "c:budget"].iter().enumerate() {
        let limit = specs[i].limit();
        assert!(kept[i] <= limit, "{id}: kept {} > {limit}", kept[i]);
        assert_eq!(
            remaining(&storage, id, specs[i], now).await,
            limit - kept[i],
            "{id}"
        );
    }
    assert!(kept[0] > 0, "some requests were admitted");
}

/// For any interleaving of reservations, reconciliations and releases from
/// concurrent tasks, the counters end at exactly the limit minus what was
/// kept; a denied reservation spends nothing (its decision reports the state
/// it saw, which never shows more than the limit in use).
pub async fn prop_reserve_never_over_admits(storage: Storage, clock: ManualClock) {
    // Per task: a list of (tokens, fraction used in tenths; 0 = release).
    let task = proptest::collection::vec((1u64..40, 0u64..=10), 1..12);
    let strategy = (1u64..20, 20u64..200, proptest::collection::vec(task, 1..6));
    run_prop(24, strategy, |(rpm, tpm, tasks)| {
        let storage = storage.clone();
        let now = clock.now();
        async move {
            let n = super::props::fresh_id("limits");
            let specs = [bucket(rpm), sliding(tpm), period(tpm * 2)];
            let ids: Vec<String> = ["req", "tok", "budget"]
                .iter()
                .map(|k| format!("{n}:{k}"))
                .collect();
            let ids = Arc::new(ids);
            let mut handles = Vec::new();
            for script in tasks {
                let storage = storage.clone();
                let ids = Arc::clone(&ids);
                handles.push(tokio::spawn(async move {
                    let mut kept = [0u64; 3];
                    for (tokens, tenths) in script {
                        let ops = vec![
                            op(&ids[0], specs[0], 1),
                            op(&ids[1], specs[1], tokens),
                            op(&ids[2], specs[2], tokens * 2),
                        ];
                        let r = storage.counters.reserve(&ops, now).await.unwrap();
                        if !r.admitted {
                            let d = r.first_denied().unwrap();
                            assert!(!r.decisions[d].allowed);
                            assert!(r.decisions[d].remaining < ops[d].cost);
                            continue;
                        }
                        let used = tokens * tenths / 10;
                        let used = [u64::from(tenths > 0), used, used * 2];
                        let settles: Vec<SettleOp> = ops
                            .iter()
                            .zip(used)
                            .map(|(o, u)| settle(o, now, u))
                            .collect();
                        storage.counters.settle(&settles, now).await.unwrap();
                        for k in 0..3 {
                            kept[k] += used[k];
                        }
                    }
                    kept
                }));
            }
            let mut kept = [0u64; 3];
            for h in handles {
                let k = h.await.unwrap();
                for i in 0..3 {
                    kept[i] += k[i];
                }
            }
            for i in 0..3 {
                let limit = specs[i].limit();
                prop_assert!(kept[i] <= limit);
                prop_assert_eq!(
                    remaining(&storage, &ids[i], specs[i], now).await,
                    limit - kept[i]
                );
            }
            Ok(())
        }
    });
}

fn rl(identifier: &str, limit: i64, duration: i64, cost: Option<i64>, fast: bool) -> LimitRequest {
    LimitRequest {
        namespace: Some("email.outbound".into()),
        identifier: identifier.into(),
        limit,
        duration,
        cost,
        fast,
    }
}

fn limiter(storage: &Storage, clock: &ManualClock) -> RateLimiter {
    RateLimiter::with_config(
        storage.clone(),
        RateLimitConfig {
            sync_interval: Duration::from_millis(100),
            override_ttl: Duration::from_secs(10),
        },
        Arc::new(clock.clone()),
    )
}

/// Consistent namespace limits: a sliding window with limit, remaining and
/// reset; a cost larger than what is left is refused and spends nothing;
/// the window slides; identifiers and namespaces are apart; invalid input
/// names its field and takes nothing.
pub async fn ratelimit_consistent_window(storage: Storage, clock: ManualClock) {
    clock.set(Timestamp::from_millis(1_700_000_000_000));
    let l = limiter(&storage, &clock);
    let first = l
        .limit(&rl("user_1", 10, 60_000, Some(4), false))
        .await
        .unwrap();
    assert!(first.success);
    assert_eq!((first.limit, first.remaining), (10, 6));
    assert_eq!(first.reset.as_millis() % 60_000, 0);
    assert!(first.reset > clock.now());
    let too_much = l
        .limit(&rl("user_1", 10, 60_000, Some(7), false))
        .await
        .unwrap();
    assert!(!too_much.success);
    assert_eq!(too_much.remaining, 6, "a refusal spends nothing");
    let rest = l
        .limit(&rl("user_1", 10, 60_000, Some(6), false))
        .await
        .unwrap();
    assert!(rest.success);
    assert_eq!(rest.remaining, 0);
    assert!(
        !l.limit(&rl("user_1", 10, 60_000, None, false))
            .await
            .unwrap()
            .success
    );
    // Another identifier, or the same one in another namespace, is apart.
    assert!(
        l.limit(&rl("user_2", 10, 60_000, None, false))
            .await
            .unwrap()
            .success
    );
    let mut other_ns = rl("user_1", 10, 60_000, None, false);
    other_ns.namespace = None;
    assert!(l.limit(&other_ns).await.unwrap().success);

    // Two windows later all of it has slid out.
    clock.advance(Duration::from_secs(120));
    let later = l
        .limit(&rl("user_1", 10, 60_000, None, false))
        .await
        .unwrap();
    assert!(later.success);
    assert_eq!(later.remaining, 9);

    for (req, field) in [
        (rl("u", 0, 60_000, None, false), "limit"),
        (rl("u", -3, 60_000, None, false), "limit"),
        (rl("u", 10, 999, None, false), "duration"),
        (rl("u", 10, 0, None, false), "duration"),
        (rl("u", 10, 60_000, Some(0), false), "cost"),
        (rl("u", 10, 60_000, Some(-1), true), "cost"),
        (rl("", 10, 60_000, None, false), "identifier"),
        (rl("a\nb", 10, 60_000, None, false), "identifier"),
        (
            LimitRequest {
                namespace: Some(" ".into()),
                ..rl("u", 10, 60_000, None, false)
            },
            "namespace",
        ),
    ] {
        match l.limit(&req).await {
            Err(Error::InvalidInput { field: f, .. }) => assert_eq!(f, field, "{req:?}"),
            other => panic!("{req:?}: {other:?}"),
        }
    }
    let untouched = l
        .limit(&rl("u", 10, 60_000, Some(10), false))
        .await
        .unwrap();
    assert!(untouched.success, "invalid requests took nothing");
}

/// 32 tasks on one identifier, in either mode on one node: exactly the
/// limit is admitted.
pub async fn ratelimit_concurrently_exact(storage: Storage, clock: ManualClock) {
    for fast in [false, true] {
        let l = limiter(&storage, &clock);
        let identifier = format!("hot-{fast}");
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let l = l.clone();
            let identifier = identifier.clone();
            tasks.push(tokio::spawn(async move {
                let mut ok = 0u64;
                for _ in 0..10 {
                    let r = l
                        .limit(&rl(&identifier, 100, 3_600_000, Some(1), fast))
                        .await
                        .unwrap();
                    ok += u64::from(r.success);
                }
                ok
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert_eq!(total, 100, "fast = {fast}");
    }
}

/// Fast mode decides in process and syncs: one node is exact; a second node
/// sees the first's admissions once both have synced; unsynced counts reach
/// the store on shutdown.
pub async fn ratelimit_fast_syncs_between_nodes(storage: Storage, clock: ManualClock) {
    clock.set(Timestamp::from_millis(1_700_000_000_000));
    let a = limiter(&storage, &clock);
    let b = limiter(&storage, &clock);
    let req = |cost| rl("shared", 10, 3_600_000, Some(cost), true);
    assert!(a.limit(&req(6)).await.unwrap().success);
    assert!(
        !a.limit(&req(5)).await.unwrap().success,
        "exact on one node"
    );
    a.sync().await.unwrap();
    // B's first use starts from the store: 6 of 10 are used.
    let seen = b.limit(&req(4)).await.unwrap();
    assert!(seen.success);
    assert_eq!(seen.remaining, 0);
    assert!(!b.limit(&req(1)).await.unwrap().success);
    b.sync().await.unwrap();
    // A's counter was used since its last sync: the next sync refreshes it;
    // one more sync without use drops it, and the next use seeds it again.
    a.sync().await.unwrap();
    assert!(!a.limit(&req(1)).await.unwrap().success, "A learned B's 4");
    a.sync().await.unwrap();
    a.sync().await.unwrap();
    assert_eq!(a.local_counters(), 0);
    assert!(!a.limit(&req(1)).await.unwrap().success, "seeded again");

    // A handle's shutdown syncs what is pending.
    let c = limiter(&storage, &clock);
    let handle = c.spawn_sync();
    assert!(
        c.limit(&rl("other", 5, 3_600_000, Some(5), true))
            .await
            .unwrap()
            .success
    );
    handle.shutdown().await.unwrap();
    let d = limiter(&storage, &clock);
    assert!(
        !d.limit(&rl("other", 5, 3_600_000, Some(1), true))
            .await
            .unwrap()
            .success
    );

    // Windows slide for fast counters as for consistent ones.
    clock.advance(Duration::from_secs(3 * 3600));
    assert!(a.limit(&req(10)).await.unwrap().success);
}

/// An override replaces the limit and window of one identifier; others keep
/// the request's; deleting it restores them; another node sees it within
/// its snapshot TTL.
pub async fn ratelimit_overrides(storage: Storage, clock: ManualClock) {
    let admin = crate::audit::Actor::new("admin");
    let l = limiter(&storage, &clock);
    let other = limiter(&storage, &clock);
    // The other node loads its (empty) snapshot first.
    assert!(
        other
            .limit(&rl("vip", 1, 60_000, None, false))
            .await
            .unwrap()
            .success
    );
    let o = l
        .set_override(
            &admin,
            "email.outbound",
            "vip",
            OverrideLimit {
                limit: 100,
                duration: 60_000,
                fast: None,
            },
        )
        .await
        .unwrap();
    assert_eq!((o.limit, o.duration, o.version), (100, 60_000, 1));
    let r = l
        .limit(&rl("vip", 1, 60_000, Some(50), false))
        .await
        .unwrap();
    assert!(r.success);
    assert_eq!(r.limit, 100);
    assert!(
        !l.limit(&rl("plain", 1, 60_000, Some(2), false))
            .await
            .unwrap()
            .success
    );
    assert!(
        !other
            .limit(&rl("vip", 1, 60_000, Some(2), false))
            .await
            .unwrap()
            .success,
        "stale snapshot"
    );
    clock.advance(Duration::from_secs(11));
    assert!(
        other
            .limit(&rl("vip", 1, 60_000, Some(2), false))
            .await
            .unwrap()
            .success
    );

    let again = l
        .set_override(
            &admin,
            "email.outbound",
            "vip",
            OverrideLimit {
                limit: 5,
                duration: 1000,
                fast: Some(true),
            },
        )
        .await
        .unwrap();
    assert_eq!((again.limit, again.version), (5, 2));
    assert_eq!(l.list_overrides("email.outbound").await.unwrap().len(), 1);
    assert!(l.list_overrides("default").await.unwrap().is_empty());
    assert!(matches!(
        l.set_override(
            &admin,
            "email.outbound",
            "vip",
            OverrideLimit {
                limit: 0,
                duration: 1000,
                fast: None
            }
        )
        .await,
        Err(Error::InvalidInput { .. })
    ));
    l.delete_override(&admin, "email.outbound", "vip")
        .await
        .unwrap();
    assert!(
        l.get_override("email.outbound", "vip")
            .await
            .unwrap_err()
            .is_not_found()
    );
    let r = l
        .limit(&rl("vip", 3, 60_000, Some(3), false))
        .await
        .unwrap();
    assert_eq!(r.limit, 3);
    let audit = storage
        .audit
        .list_audit(&crate::audit::AuditQuery::default())
        .await
        .unwrap();
    let actions: Vec<&str> = audit.items.iter().map(|e| e.action.as_str()).collect();
    assert!(actions.starts_with(&[
        "ratelimit_override.delete",
        "ratelimit_override.update",
        "ratelimit_override.create"
    ]));
}
