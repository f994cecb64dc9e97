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
    Settle(u8, u8, u64, u64),
    Advance(i64),
}

fn spec(kind: u8) -> LimitSpec {
    match kind % 3 {
        0 => LimitSpec::Bucket(WindowSpec {
            limit: 10,
            refill: 3,
            window_ms: 1_000,
        }),
        1 => LimitSpec::Sliding(SlidingSpec {
            limit: 12,
            window_ms: 2_000,
        }),
        _ => LimitSpec::Period(PeriodSpec {
            limit: 1_000_000_000_000_000_000,
            period: Period::Daily,
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
        proptest::collection::vec((0u8..3, 0u8..3, 0u64..8), 1..4).prop_map(Step::Reserve),
        (0u8..3, 0u8..3, 0u64..8, 0u64..8).prop_map(|(i, k, r, u)| Step::Settle(i, k, r, u)),
        (0i64..5_000).prop_map(Step::Advance),
        // Hours to days: refills and budget periods come due.
        (3_600_000i64..200_000_000).prop_map(Step::Advance),
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
                        id: format!("l{i}-{}", k % 3),
                        spec: spec(*k),
                        cost: *cost,
                    })
                    .collect();
                format!("{:?}", c.reserve(&ops, t).await.unwrap())
            }
            Step::Settle(i, k, reserved, used) => {
                let op = SettleOp {
                    id: format!("l{i}-{}", k % 3),
                    spec: spec(*k),
                    taken_at: Timestamp::from_millis(now - 500),
                    reserved: *reserved,
                    used: *used,
                };
                format!("{:?}", c.settle(&[op], t).await.unwrap())
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
            cases: 48,
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
