//! Property scenarios: invariants of verification and counting, checked with
//! proptest against simple models, on the storage under test.

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::{Fixture, Probe, run_prop};
use crate::clock::{Clock, ManualClock, Timestamp};
use crate::counter::{Balance, Refill, RefillInterval, WindowSpec};
use crate::error::Error;
use crate::key::{NewKey, RemainingOp, VerifyCode, VerifyOptions, plausible};
use crate::storage::Storage;

const DAY: i64 = 86_400_000;

/// Arbitrary byte strings, key-shaped strings and one-byte mutations of a
/// real key never panic the verifier, never write, and never verify; only
/// plausible keys are looked up.
pub async fn prop_verify_never_panics(storage: Storage, clock: ManualClock) {
    let (probe, storage) = Probe::wrap(storage);
    let f = Fixture::new(storage, clock).await;
    let real = f
        .keys
        .create(&f.admin, NewKey::in_keyspace(f.ks.id.clone()))
        .await
        .unwrap();
    let real_bytes = real.key.clone().into_bytes();
    let len = real_bytes.len();
    let inputs = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..700),
        "[a-zA-Z0-9_-]{0,10}_[1-9A-HJ-NP-Za-km-z]{0,60}".prop_map(String::into_bytes),
        any::<String>().prop_map(String::into_bytes),
        (0..len, any::<u8>()).prop_map(move |(i, b)| {
            let mut k = real_bytes.clone();
            k[i] = b;
            k
        }),
    ];
    let writes = probe.counts().writes;
    run_prop(512, inputs, |input| {
        let f = &f;
        let probe = &probe;
        let real = &real.key;
        async move {
            let reads = probe.counts().reads;
            let v = f
                .keys
                .verify(&input, &VerifyOptions::default())
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            if input == real.as_bytes() {
                prop_assert!(v.valid());
            } else {
                prop_assert_eq!(v.code(), VerifyCode::NotFound);
            }
            if !plausible(&input) {
                prop_assert_eq!(probe.counts().reads, reads);
            }
            prop_assert_eq!(probe.counts().writes, writes);
            Ok(())
        }
    });
}

#[derive(Debug, Clone)]
enum RemOp {
    Update(RemainingOp, Option<i64>),
    Verify,
}

fn rem_value() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![
        1 => Just(None),
        8 => (-3i64..60).prop_map(Some),
        1 => Just(Some(i64::MAX)),
    ]
}

fn rem_op() -> impl Strategy<Value = RemOp> {
    prop_oneof![
        (
            prop_oneof![
                Just(RemainingOp::Set),
                Just(RemainingOp::Increment),
                Just(RemainingOp::Decrement)
            ],
            rem_value()
        )
            .prop_map(|(op, v)| RemOp::Update(op, v)),
        Just(RemOp::Verify),
    ]
}

/// The model of `updateRemaining`: `Ok(new)` or `Err(field)`.
fn model_update(
    rem: Option<i64>,
    op: RemainingOp,
    v: Option<i64>,
) -> Result<Option<i64>, &'static str> {
    match (op, v, rem) {
        (_, Some(v), _) if v < 0 => Err("value"),
        (RemainingOp::Set, v, _) => Ok(v),
        (_, None, _) => Err("value"),
        (_, Some(_), None) => Err("op"),
        (RemainingOp::Increment, Some(v), Some(r)) => Ok(Some(r.saturating_add(v))),
        (RemainingOp::Decrement, Some(v), Some(r)) => Ok(Some(r.saturating_sub(v).max(0))),
    }
}

/// Any sequence of `updateRemaining` operations and verifications agrees with
/// a model of the balance.
pub async fn prop_update_remaining_agrees_with_model(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let strategy = (
        proptest::option::of(0i64..20),
        proptest::collection::vec(rem_op(), 0..30),
    );
    run_prop(96, strategy, |(initial, ops)| {
        let f = &f;
        async move {
            let k = f
                .keys
                .create(
                    &f.admin,
                    NewKey {
                        remaining: initial,
                        ..NewKey::in_keyspace(f.ks.id.clone())
                    },
                )
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut model = initial;
            for op in ops {
                match op {
                    RemOp::Update(op, v) => {
                        let got = f.keys.update_remaining(&f.admin, &k.key_id, op, v).await;
                        match (model_update(model, op, v), got) {
                            (Ok(want), Ok(got)) => {
                                prop_assert_eq!(want, got);
                                model = want;
                            }
                            (Err(field), Err(Error::InvalidInput { field: got, .. })) => {
                                prop_assert_eq!(field, got.as_ref());
                            }
                            (want, got) => prop_assert!(false, "model {want:?}, got {got:?}"),
                        }
                    }
                    RemOp::Verify => {
                        let v = f
                            .keys
                            .verify(&k.key, &VerifyOptions::default())
                            .await
                            .unwrap();
                        match model {
                            None => prop_assert!(v.valid()),
                            Some(r) if r > 0 => {
                                prop_assert!(v.valid());
                                model = Some(r - 1);
                                prop_assert_eq!(v.remaining(), model);
                            }
                            Some(_) => prop_assert_eq!(v.code(), VerifyCode::UsageExceeded),
                        }
                    }
                }
                let view = f.keys.get(&k.key_id).await.unwrap();
                prop_assert_eq!(view.remaining, model);
            }
            Ok(())
        }
    });
}

/// Verifications of a key with a daily refill over random steps of time agree
/// with a model that resets the balance at the first use after each UTC
/// midnight.
pub async fn prop_refill_agrees_with_model(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let steps = proptest::collection::vec((0i64..2 * DAY, 0usize..4), 1..12);
    let strategy = (1u64..6, 0i64..6, 0i64..DAY, steps);
    run_prop(64, strategy, |(amount, initial, offset, steps)| {
        let f = &f;
        async move {
            f.clock.advance_millis(offset);
            let created = f.clock.now();
            let k = f
                .keys
                .create(
                    &f.admin,
                    NewKey {
                        remaining: Some(initial),
                        refill: Some(Refill {
                            interval: RefillInterval::Daily,
                            amount,
                            day: None,
                        }),
                        ..NewKey::in_keyspace(f.ks.id.clone())
                    },
                )
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let (mut remaining, mut refilled_at) = (initial, created.as_millis());
            for (advance, verifies) in steps {
                f.clock.advance_millis(advance);
                let now = f.clock.now().as_millis();
                for _ in 0..verifies {
                    let midnight = now - now.rem_euclid(DAY);
                    if refilled_at < midnight {
                        remaining = i64::try_from(amount).unwrap();
                        refilled_at = now;
                    }
                    let v = f
                        .keys
                        .verify(&k.key, &VerifyOptions::default())
                        .await
                        .unwrap();
                    if remaining > 0 {
                        remaining -= 1;
                        prop_assert!(v.valid());
                        prop_assert_eq!(v.remaining(), Some(remaining));
                    } else {
                        prop_assert_eq!(v.code(), VerifyCode::UsageExceeded);
                    }
                }
            }
            Ok(())
        }
    });
}

static NEXT: AtomicU64 = AtomicU64::new(0);

pub(super) fn fresh_id(kind: &str) -> String {
    format!("prop:{kind}:{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Spending never takes more than the balance, and a refusal means the
/// balance was short.
pub async fn prop_balance_never_overspends(storage: Storage, clock: ManualClock) {
    let strategy = (0i64..100, proptest::collection::vec(0u64..12, 0..60));
    run_prop(128, strategy, |(initial, costs)| {
        let storage = &storage;
        let now = clock.now();
        async move {
            let id = fresh_id("balance");
            let c = &storage.counters;
            c.put_balance(&id, Some(Balance::new(initial, now)))
                .await
                .unwrap();
            let mut remaining = initial;
            let mut spent_total = 0i64;
            for cost in costs {
                let s = c.spend(&id, cost, None, now).await.unwrap();
                let after = s.balance.map(|b| b.remaining);
                let cost = i64::try_from(cost).unwrap();
                if s.spent {
                    prop_assert!(remaining >= cost);
                    remaining -= cost;
                    spent_total += cost;
                } else {
                    prop_assert!(remaining < cost);
                }
                prop_assert_eq!(after, Some(remaining));
            }
            prop_assert!(spent_total <= initial);
            prop_assert_eq!(
                c.balance(&id).await.unwrap().map(|b| b.remaining),
                Some(remaining)
            );
            Ok(())
        }
    });
}

/// A window never admits more than its limit in one window, nor more than
/// `limit + refill × windows` over time, and refuses only when it must.
pub async fn prop_window_never_over_admits(storage: Storage, clock: ManualClock) {
    let strategy = (
        1u64..20,
        1u64..20,
        1u64..5_000,
        proptest::collection::vec((0i64..3_000, 0u64..6), 1..80),
    );
    run_prop(128, strategy, |(limit, refill, window_ms, ops)| {
        let storage = &storage;
        let start = clock.now().as_millis();
        async move {
            let refill = refill.min(limit);
            let spec = WindowSpec {
                limit,
                refill,
                window_ms,
            };
            let id = fresh_id("window");
            let w = i64::try_from(window_ms).unwrap();
            let mut t = start;
            let first = t.div_euclid(w);
            let (mut cur, mut in_window, mut total) = (first, 0u64, 0u64);
            for (advance, cost) in ops {
                t += advance;
                let win = t.div_euclid(w);
                if win != cur {
                    cur = win;
                    in_window = 0;
                }
                let take = storage
                    .counters
                    .take(&id, &spec, cost, Timestamp::from_millis(t))
                    .await
                    .unwrap();
                if take.allowed {
                    in_window += cost;
                    total += cost;
                } else if refill == limit {
                    // A fixed window refuses only what would pass the limit.
                    prop_assert!(
                        in_window + cost > limit,
                        "refused {cost} with {in_window}/{limit} used"
                    );
                }
                prop_assert!(in_window <= limit);
                let windows = u64::try_from(cur - first).unwrap();
                prop_assert!(total <= limit + refill * windows);
                prop_assert_eq!(take.reset, Timestamp::from_millis((cur + 1) * w));
            }
            Ok(())
        }
    });
}

/// One step of [`prop_budget_holds_never_overspend`].
#[derive(Debug, Clone)]
enum BudgetStep {
    /// Reserve `prompt` tokens and up to `max` output tokens.
    Reserve { prompt: u64, max: u64 },
    /// Settle the held request at `at` (modulo the number held) having used
    /// fractions (per 8) of its prompt and output, part of the prompt cached.
    Settle {
        at: usize,
        input: u64,
        output: u64,
        cached: u64,
    },
    /// Give the held request at `at` back unused.
    Release { at: usize },
}

fn budget_step() -> impl Strategy<Value = BudgetStep> {
    prop_oneof![
        (0u64..40, 1u64..40).prop_map(|(prompt, max)| BudgetStep::Reserve { prompt, max }),
        (0usize..8, 0u64..=8, 0u64..=8, 0u64..=8).prop_map(|(at, input, output, cached)| {
            BudgetStep::Settle {
                at,
                input,
                output,
                cached,
            }
        }),
        (0usize..8).prop_map(|at| BudgetStep::Release { at }),
    ]
}

/// For any interleaving of reservations, settlements and releases against a
/// budget, what is spent plus what is reserved never passes the amount;
/// `reserved` is exactly the worst case of the requests held, `spent`
/// exactly what the settled ones used (cached tokens at their price), and
/// a reservation is refused only when its worst case does not fit.
pub async fn prop_budget_holds_never_overspend(storage: Storage, clock: ManualClock) {
    use crate::admission::{ActualUsage, BudgetScope, NewBudget};
    use crate::counter::Period;
    use crate::model::Pricing;
    use crate::usage::{billed_nanos, worst_case_nanos};

    let strategy = (1u64..200, proptest::collection::vec(budget_step(), 1..40));
    run_prop(64, strategy, |(amount, steps)| {
        let storage = &storage;
        let clock = &clock;
        async move {
            let l = super::admission::limits(storage, clock);
            let t = super::admission::tier(1_000_000, 1_000_000_000, None);
            let tenant = fresh_id("budget");
            let scope = BudgetScope::Tenant(tenant.clone());
            // A cent per token in, 3 per token out, half a cent cached.
            let price = Pricing {
                cached_input_per_million: Some(5_000.0),
                ..Pricing::usd(10_000.0, 30_000.0)
            };
            let amount_nanos = amount * 10_000_000; // amount cents
            l.set_budget(
                &crate::audit::Actor::new("admin"),
                scope.clone(),
                NewBudget {
                    amount: amount as f64 / 100.0,
                    currency: None,
                    period: Period::Monthly,
                    soft_threshold: None,
                },
            )
            .await
            .unwrap();
            let mut held = Vec::new();
            let (mut reserved, mut spent) = (0u64, 0u64);
            for step in steps {
                match step {
                    BudgetStep::Reserve { prompt, max } => {
                        let worst = worst_case_nanos(&price, prompt, max);
                        let r = l
                            .reserve(&crate::admission::AdmissionRequest {
                                pricing: Some(&price),
                                ..super::admission::req(&tenant, &t, prompt, Some(max))
                            })
                            .await
                            .unwrap();
                        match r {
                            Ok(r) => {
                                prop_assert!(spent + reserved + worst <= amount_nanos);
                                reserved += worst;
                                held.push((r, prompt, max, worst));
                            }
                            Err(_) => prop_assert!(spent + reserved + worst > amount_nanos),
                        }
                    }
                    BudgetStep::Settle {
                        at,
                        input,
                        output,
                        cached,
                    } if !held.is_empty() => {
                        let (r, prompt, max, worst) = held.remove(at % held.len());
                        let input = prompt * input / 8;
                        let usage = ActualUsage {
                            input_tokens: input,
                            output_tokens: max * output / 8,
                            cached_tokens: input * cached / 8,
                        };
                        r.reconcile(usage).await.unwrap();
                        reserved -= worst;
                        spent += billed_nanos(
                            &price,
                            usage.input_tokens,
                            usage.cached_tokens,
                            usage.output_tokens,
                        );
                    }
                    BudgetStep::Release { at } if !held.is_empty() => {
                        let (r, _, _, worst) = held.remove(at % held.len());
                        r.release().await.unwrap();
                        reserved -= worst;
                    }
                    _ => {}
                }
                let st = l.budget_status(&scope).await.unwrap();
                let nanos = |x: f64| (x * 1e9).round() as u64;
                prop_assert_eq!(nanos(st.reserved), reserved);
                prop_assert_eq!(nanos(st.spent), spent);
                prop_assert!(spent + reserved <= amount_nanos);
            }
            for (r, ..) in held {
                r.release().await.unwrap();
            }
            let st = l.budget_status(&scope).await.unwrap();
            prop_assert_eq!(st.reserved, 0.0);
            Ok(())
        }
    });
}
