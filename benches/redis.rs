//! Counters on Redis, each beside the floor of one round trip measured in
//! the same run, against a `redis-server` the bench starts (installed with
//! apt-get when missing; loopback, no persistence).
//!
//! Group `redis` (1,000 tenants, a random one per iteration):
//! - `reserve_3_limits`: `CounterStore::reserve` of a request's requests,
//!   tokens and quota counters (sliding minute windows), what admission
//!   takes; `settle_3_limits`: their settlement;
//! - `spend`: a key's remaining use spent (`CounterStore::spend`);
//! - `floor_evalsha`: `EVALSHA` of a script returning 1, on the same kind of
//!   connection: one round trip. Issue 19's goal: reserve and spend ≤ 1.5×
//!   it.
//!
//! Limits and balances are 2^50, within Lua's exact integers, as real ones
//! are: one client alone, each operation is the compare-and-set from the
//! states it remembers (the computing script serves contended counters;
//! `scripts/load/replicas.sh` measures that case).
//!
//! `cargo bench -- redis`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::Arc;

use common::Pick;
use criterion::{Criterion, criterion_group};
use maas::core::Timestamp;
use maas::core::counter::{Balance, LimitOp, LimitSpec, SettleOp, SlidingSpec};
use maas::core::storage::CounterStore;
use maas_store_redis::testing::RedisServer;
use maas_store_redis::{RedisConfig, RedisStore};
use tokio::runtime::Runtime;

const TENANTS: usize = 1_000;

fn ops(tenant: &str) -> Vec<LimitOp> {
    let minute = |limit| {
        LimitSpec::Sliding(SlidingSpec {
            limit,
            window_ms: 60_000,
        })
    };
    vec![
        LimitOp {
            id: format!("rpm\x1f{tenant}"),
            spec: minute(1 << 50),
            cost: 1,
        },
        LimitOp {
            id: format!("tpm\x1f{tenant}"),
            spec: minute(1 << 50),
            cost: 500,
        },
        LimitOp {
            id: format!("quota\x1f{tenant}"),
            spec: minute(1 << 50),
            cost: 500,
        },
    ]
}

fn bench_redis(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let server = rt.block_on(RedisServer::start());
    let store = Arc::new(
        rt.block_on(RedisStore::connect(&RedisConfig::new(server.url.clone())))
            .unwrap(),
    );
    let con = rt
        .block_on(
            redis::Client::open(server.url.as_str())
                .unwrap()
                .get_multiplexed_async_connection(),
        )
        .unwrap();
    let names: Vec<String> = (0..TENANTS).map(|i| format!("tenant-{i}")).collect();
    let now = Timestamp::from_millis(1_800_000_000_000);
    rt.block_on(async {
        for n in &names {
            store
                .put_balance(n, Some(Balance::new(1 << 50, now)))
                .await
                .unwrap();
        }
    });
    let mut g = c.benchmark_group("redis");
    let pick = Pick::new();
    g.bench_function("reserve_3_limits", |b| {
        b.to_async(&rt).iter(|| {
            let (store, ops) = (Arc::clone(&store), ops(&names[pick.below(TENANTS)]));
            async move { store.reserve(&ops, now).await }
        })
    });
    let pick = Pick::new();
    g.bench_function("settle_3_limits", |b| {
        b.to_async(&rt).iter(|| {
            let settle: Vec<SettleOp> = ops(&names[pick.below(TENANTS)])
                .into_iter()
                .map(|o| SettleOp {
                    id: o.id,
                    spec: o.spec,
                    taken_at: now,
                    reserved: o.cost,
                    used: o.cost / 2,
                })
                .collect();
            let store = Arc::clone(&store);
            async move { store.settle(&settle, now).await }
        })
    });
    let pick = Pick::new();
    g.bench_function("spend", |b| {
        b.to_async(&rt)
            .iter(|| store.spend(&names[pick.below(TENANTS)], 1, None, now))
    });
    let trivial = redis::Script::new("return 1");
    g.bench_function("floor_evalsha", |b| {
        b.to_async(&rt).iter(|| {
            let mut con = con.clone();
            let trivial = trivial.clone();
            async move {
                let one: i64 = trivial.invoke_async(&mut con).await.unwrap();
                one
            }
        })
    });
    g.finish();
    drop(server);
}

criterion_group!(benches, bench_redis);
