//! The Redis counters against a real `redis-server`: the same answers as the
//! memory backend for any sequence of operations (proptest), and exact under
//! concurrency from several replicas (connections).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use maas_core::Timestamp;
use maas_core::counter::{
    Balance, BalanceOp, LimitOp, LimitSpec, Period, PeriodSpec, Refill, RefillInterval, SettleOp,
    SlidingSpec, WindowSpec,
};
use maas_core::storage::CounterStore;
use maas_store_redis::testing::RedisServer;
use maas_store_redis::{RedisConfig, RedisStore};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const T0: i64 = 1_735_689_600_000;

async fn replica(server: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::connect(&RedisConfig {
        prefix: prefix.into(),
        ..RedisConfig::new(server.url.clone())
    })
    .await
    .unwrap()
}

/// One step of the model comparison.
#[derive(Debug, Clone)]
enum Step {
    Put(u8, Option<i64>),
    Spend(u8, u64, bool),
    Adjust(u8, i64, u8),
    Take(u8, u64),
    Reset(u8),
    Reserve(Vec<(u8, u8, u64)>),
    Settle(u8, u8, u64, u64, i64),
    /// A take too large for Lua's exact numbers (the exact path), on the
    /// counter a later sliding op reads: the script must decline it.
    Huge(u8),
    Advance(i64),
}

/// Kinds 0, 1, 3 and 4 are computed by the script, 2 and 5 (numbers past
/// 2^53) by the compare-and-set path.
const KINDS: u8 = 6;

fn spec(kind: u8) -> LimitSpec {
    match kind % KINDS {
        0 => LimitSpec::Bucket(WindowSpec {
            limit: 10,
            refill: 3,
            window_ms: 1_000,
        }),
        1 => LimitSpec::Sliding(SlidingSpec {
            limit: 12,
            window_ms: 2_000,
        }),
        2 => LimitSpec::Period(PeriodSpec {
            limit: 1_000_000_000_000_000_000,
            period: Period::Daily,
        }),
        3 => LimitSpec::Period(PeriodSpec {
            limit: 20,
            period: Period::Weekly,
        }),
        4 => LimitSpec::Period(PeriodSpec {
            limit: 25,
            period: Period::Monthly,
        }),
        _ => LimitSpec::Bucket(WindowSpec {
            limit: u64::MAX / 2,
            refill: 1 << 60,
            window_ms: 1_000,
        }),
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..3, proptest::option::of(0i64..20)).prop_map(|(i, b)| Step::Put(i, b)),
        (0u8..3, 0u64..6, any::<bool>()).prop_map(|(i, c, r)| Step::Spend(i, c, r)),
        (0u8..3, -5i64..10, 0u8..3).prop_map(|(i, v, k)| Step::Adjust(i, v, k)),
        (0u8..3, 0u64..6).prop_map(|(i, c)| Step::Take(i, c)),
        (0u8..3).prop_map(Step::Reset),
        proptest::collection::vec((0u8..3, 0u8..KINDS, 0u64..8), 1..4).prop_map(Step::Reserve),
        (0u8..3, 0u8..KINDS, 0u64..8, 0u64..8, 0i64..5_000)
            .prop_map(|(i, k, r, u, ago)| Step::Settle(i, k, r, u, ago)),
        (0u8..3).prop_map(Step::Huge),
        (0i64..5_000).prop_map(Step::Advance),
        // Hours to days: refills and budget periods come due.
        (3_600_000i64..200_000_000).prop_map(Step::Advance),
        // Weeks: weekly and monthly periods.
        (200_000_000i64..3_000_000_000).prop_map(Step::Advance),
    ]
}

/// Runs `steps` on `c` and returns every answer, as text.
async fn run(c: &dyn CounterStore, steps: &[Step]) -> Vec<String> {
    let refill = Refill {
        interval: RefillInterval::Daily,
        amount: 7,
        day: None,
    };
    let mut now = T0;
    let mut out = Vec::new();
    for s in steps {
        let t = Timestamp::from_millis(now);
        let answer = match s {
            Step::Put(i, b) => {
                c.put_balance(&format!("b{i}"), b.map(|r| Balance::new(r, t)))
                    .await
                    .unwrap();
                format!("{:?}", c.balance(&format!("b{i}")).await.unwrap())
            }
            Step::Spend(i, cost, r) => format!(
                "{:?}",
                c.spend(&format!("b{i}"), *cost, r.then_some(&refill), t)
                    .await
                    .unwrap()
            ),
            Step::Adjust(i, v, k) => {
                let op = match k {
                    0 => BalanceOp::Set(*v),
                    1 => BalanceOp::Increment(*v),
                    _ => BalanceOp::Decrement(*v),
                };
                let refill = (*k == 2).then_some(&refill);
                format!(
                    "{:?}",
                    c.adjust(&format!("b{i}"), op, refill, t).await.unwrap()
                )
            }
            Step::Take(i, cost) => {
                let w = WindowSpec {
                    limit: 5,
                    refill: 2,
                    window_ms: 700,
                };
                format!(
                    "{:?}",
                    c.take(&format!("w{i}"), &w, *cost, t).await.unwrap()
                )
            }
            Step::Reset(i) => {
                c.reset_window(&format!("w{i}")).await.unwrap();
                String::new()
            }
            Step::Reserve(ops) => {
                let ops: Vec<LimitOp> = ops
                    .iter()
                    .map(|(i, k, cost)| LimitOp {
                        id: format!("l{i}-{}", k % KINDS),
                        spec: spec(*k),
                        cost: *cost,
                    })
                    .collect();
                format!("{:?}", c.reserve(&ops, t).await.unwrap())
            }
            Step::Settle(i, k, reserved, used, ago) => {
                let op = SettleOp {
                    id: format!("l{i}-{}", k % KINDS),
                    spec: spec(*k),
                    taken_at: Timestamp::from_millis(now - ago),
                    reserved: *reserved,
                    used: *used,
                };
                format!("{:?}", c.settle(&[op], t).await.unwrap())
            }
            Step::Huge(i) => {
                let op = LimitOp {
                    id: format!("l{i}-1"),
                    spec: LimitSpec::Sliding(SlidingSpec {
                        limit: u64::MAX / 4,
                        window_ms: 2_000,
                    }),
                    cost: 1 << 55,
                };
                format!("{:?}", c.reserve(&[op], t).await.unwrap())
            }
            Step::Advance(ms) => {
                now += ms;
                String::new()
            }
        };
        out.push(answer);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_answers_as_the_memory_backend_for_any_sequence() {
    let server = RedisServer::start().await;
    let handle = tokio::runtime::Handle::current();
    let case = std::sync::atomic::AtomicU64::new(0);
    tokio::task::block_in_place(|| {
        let mut runner = TestRunner::new(Config {
            cases: 96,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&proptest::collection::vec(step(), 1..40), |steps| {
                handle.block_on(async {
                    let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let redis = replica(&server, &format!("case{n}:")).await;
                    let memory = maas_store_memory::MemoryStore::new().storage();
                    let got = run(&redis, &steps).await;
                    let want = run(&*memory.counters, &steps).await;
                    prop_assert_eq!(got, want);
                    Ok(())
                })
            })
            .unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_spend_exactly_what_there_is() {
    let server = RedisServer::start().await;
    let replicas = Arc::new([
        replica(&server, "x:").await,
        replica(&server, "x:").await,
        replica(&server, "x:").await,
    ]);
    let t = Timestamp::from_millis(T0);
    replicas[0]
        .put_balance("key", Some(Balance::new(50, t)))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..150)
        .map(|i| {
            let replicas = Arc::clone(&replicas);
            tokio::spawn(async move {
                replicas[i % 3]
                    .spend("key", 1, None, t)
                    .await
                    .unwrap()
                    .spent
            })
        })
        .collect();
    let mut spent = 0;
    for task in tasks {
        spent += usize::from(task.await.unwrap());
    }
    assert_eq!(spent, 50);
    let left = replicas[1].balance("key").await.unwrap().unwrap();
    assert_eq!(left.remaining, 0);

    // A namespace of 30 per minute and an admission of two limits, raced
    // from all three: exactly 30 admitted, both counters agree.
    let minute = LimitSpec::Sliding(SlidingSpec {
        limit: 30,
        window_ms: 60_000,
    });
    let wide = LimitSpec::Sliding(SlidingSpec {
        limit: 1_000,
        window_ms: 60_000,
    });
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let replicas = Arc::clone(&replicas);
            let ops = vec![
                LimitOp {
                    id: "tpm".into(),
                    spec: wide,
                    cost: 2,
                },
                LimitOp {
                    id: "rpm".into(),
                    spec: minute,
                    cost: 1,
                },
            ];
            tokio::spawn(async move { replicas[i % 3].reserve(&ops, t).await.unwrap().admitted })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap());
    }
    assert_eq!(admitted, 30);
    let peek = replicas[2]
        .reserve(
            &[
                LimitOp {
                    id: "tpm".into(),
                    spec: wide,
                    cost: 0,
                },
                LimitOp {
                    id: "rpm".into(),
                    spec: minute,
                    cost: 0,
                },
            ],
            t,
        )
        .await
        .unwrap();
    assert_eq!(peek.decisions[0].remaining, 1_000 - 60, "all or none");
    assert_eq!(peek.decisions[1].remaining, 0);
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_not_a_hang() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = RedisStore::connect(&RedisConfig::new(format!("redis://127.0.0.1:{port}/")))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    let err = RedisStore::connect(&RedisConfig::new("not a url"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, maas_core::Error::InvalidInput { .. }),
        "{err}"
    );
}

/// A limit of any shape the script computes, with small numbers.
fn small_spec() -> impl Strategy<Value = LimitSpec> {
    prop_oneof![
        (1u64..50, 1u64..50, 1u64..5_000).prop_map(|(limit, refill, window_ms)| {
            LimitSpec::Bucket(WindowSpec {
                limit,
                refill: refill.min(limit),
                window_ms,
            })
        }),
        // Short windows too: remainders of the previous window's share.
        (1u64..50, prop_oneof![1u64..8, 1u64..5_000])
            .prop_map(|(limit, window_ms)| LimitSpec::Sliding(SlidingSpec { limit, window_ms })),
        (1u64..50, 0u8..3).prop_map(|(limit, p)| {
            LimitSpec::Period(PeriodSpec {
                limit,
                period: [Period::Daily, Period::Weekly, Period::Monthly][usize::from(p)],
            })
        }),
    ]
}

/// A stored state as JSON, of any shape, near `now` (windows a few either
/// side, including ahead of it: a replica whose clock is behind).
fn raw_state() -> impl Strategy<Value = Option<(u8, i64, u64, u64)>> {
    let units = || prop_oneof![0u64..8, 0u64..60];
    proptest::option::of((0u8..3, -3i64..4, units(), units()))
}

fn state_json(raw: (u8, i64, u64, u64), spec: &LimitSpec, now: i64) -> String {
    let (shape, shift, a, b) = raw;
    let window = |ms: u64| now.div_euclid(i64::try_from(ms).unwrap()) + shift;
    match shape {
        0 => {
            let w = match spec {
                LimitSpec::Bucket(w) => window(w.window_ms),
                _ => shift,
            };
            format!(r#"{{"Bucket":{{"window":{w},"available":{a}}}}}"#)
        }
        1 => {
            let w = match spec {
                LimitSpec::Sliding(s) => window(s.window_ms),
                _ => shift,
            };
            format!(r#"{{"Sliding":{{"window":{w},"current":{a},"previous":{b}}}}}"#)
        }
        _ => {
            let start = match spec {
                LimitSpec::Period(p) => {
                    let (s, e) = p.period.bounds(Timestamp::from_millis(now));
                    s.as_millis() + shift * (e.as_millis() - s.as_millis())
                }
                _ => now + shift * 86_400_000,
            };
            format!(r#"{{"Period":{{"start":{start},"used":{a}}}}}"#)
        }
    }
}

/// The script against the model on arbitrary stored states, limits, times
/// and reservations: each operation compares what the script wrote with
/// what the model would have and fails on any difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_writes_what_the_model_would_on_any_state() {
    let server = RedisServer::start().await;
    let store = replica(&server, "model").await;
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let con = client.get_multiplexed_async_connection().await.unwrap();
    let handle = tokio::runtime::Handle::current();
    let case = std::sync::atomic::AtomicU64::new(0);
    let ops = proptest::collection::vec(
        (
            small_spec(),
            raw_state(),
            0u64..20,
            0u64..20,
            0i64..10_000,
            proptest::option::of(-1i64..2),
        ),
        1..4,
    );
    tokio::task::block_in_place(|| {
        let mut runner = TestRunner::new(Config {
            cases: 2_000,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(
                &(ops, 0i64..5_000_000_000, any::<bool>()),
                |(ops, at, settle)| {
                    handle.block_on(async {
                        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let now = T0 + at;
                        let mut con = con.clone();
                        let mut reserve = Vec::new();
                        let mut settles = Vec::new();
                        for (i, (spec, raw, a, b, ago, edge)) in ops.iter().enumerate() {
                            let id = format!("c{n}-{i}");
                            let t = Timestamp::from_millis(now);
                            let state: Option<maas_core::counter::LimitState> = raw
                                .map(|r| serde_json::from_str(&state_json(r, spec, now)).unwrap());
                            // Often exactly at what is left (or one either side):
                            // where an off-by-one in the arithmetic shows.
                            let a = match edge {
                                Some(d) => spec.peek(state, t).remaining.saturating_add_signed(*d),
                                None => *a,
                            };
                            if let Some(raw) = raw {
                                let _: () = redis::cmd("HSET")
                                    .arg(format!("{{model}}l:{id}"))
                                    .arg("v")
                                    .arg(1)
                                    .arg("s")
                                    .arg(state_json(*raw, spec, now))
                                    .query_async(&mut con)
                                    .await
                                    .unwrap();
                            }
                            reserve.push(LimitOp {
                                id: id.clone(),
                                spec: *spec,
                                cost: a,
                            });
                            settles.push(SettleOp {
                                id,
                                spec: *spec,
                                taken_at: Timestamp::from_millis(now - ago),
                                reserved: a,
                                used: *b,
                            });
                        }
                        let t = Timestamp::from_millis(now);
                        if settle {
                            store.settle(&settles, t).await.unwrap();
                        } else {
                            store.reserve(&reserve, t).await.unwrap();
                        }
                        if let LimitSpec::Bucket(w) = &reserve[0].spec {
                            store.take(&reserve[0].id, w, 1, t).await.unwrap();
                        }
                        Ok(())
                    })
                },
            )
            .unwrap();
    });
}

/// The previous window's share rounds up: 2 units over a 3 ms window,
/// 2 ms of it still overlapped, count as ⌈4/3⌉ = 2.
#[tokio::test]
async fn the_script_rounds_the_previous_share_up() {
    let server = RedisServer::start().await;
    let store = replica(&server, "share").await;
    let spec = LimitSpec::Sliding(SlidingSpec {
        limit: 3,
        window_ms: 3,
    });
    let take = |cost, at| {
        let op = LimitOp {
            id: "s".into(),
            spec,
            cost,
        };
        let store = store.clone();
        async move {
            store
                .reserve(&[op], Timestamp::from_millis(at))
                .await
                .unwrap()
        }
    };
    let w = T0 - T0.rem_euclid(3);
    assert!(take(2, w).await.admitted);
    // Next window, 1 ms in: used = ⌈2 × 2 / 3⌉ = 2, one left.
    let r = take(2, w + 4).await;
    assert!(!r.admitted);
    assert_eq!(r.decisions[0].remaining, 1);
    assert!(take(1, w + 4).await.admitted);
}

/// Three replicas reserving the same counters at once: each reservation
/// is one script run — one round trip, no retry however the replicas
/// interleave — but for a few tries of a compare-and-set, and exactly the
/// limit is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contended_reservations_take_one_round_trip_each() {
    let server = RedisServer::start().await;
    let replicas = Arc::new([
        replica(&server, "hot").await,
        replica(&server, "hot").await,
        replica(&server, "hot").await,
    ]);
    let t = Timestamp::from_millis(T0);
    let ops = Arc::new(vec![
        LimitOp {
            id: "rpm".into(),
            spec: LimitSpec::Sliding(SlidingSpec {
                limit: 100,
                window_ms: 60_000,
            }),
            cost: 1,
        },
        LimitOp {
            id: "tpm".into(),
            spec: LimitSpec::Sliding(SlidingSpec {
                limit: 1_000_000,
                window_ms: 60_000,
            }),
            cost: 500,
        },
    ]);
    let warm = LimitOp {
        id: "warm".into(),
        ..ops[0].clone()
    };
    for r in replicas.iter() {
        r.reserve(std::slice::from_ref(&warm), t).await.unwrap();
    }
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut con)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..150)
        .map(|i| {
            let (replicas, ops) = (Arc::clone(&replicas), Arc::clone(&ops));
            tokio::spawn(async move { replicas[i % 3].reserve(&ops, t).await.unwrap().admitted })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap());
    }
    assert_eq!(admitted, 100);
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut con)
        .await
        .unwrap();
    let calls = |cmd: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    // A replica tries a cheap compare-and-set from what it wrote last; once
    // it sees another replica write in between, it goes straight to the
    // computing script for a while: a few wasted tries per replica at
    // most, never a retry storm (compare-and-set alone took ~2.5 tries per
    // reservation here).
    let evals = calls("evalsha");
    assert!((150..=165).contains(&evals), "{evals} scripts run: {stats}");
    assert_eq!(calls("eval"), 0, "{stats}");
}
