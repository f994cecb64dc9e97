//! The memory and sled backends side by side, in one group, with an fsync
//! floor measured in the same run:
//!
//! - `verify_hot_1000` and `verify_random_of_N`: verification on the cache of
//!   `KeyService` (the same code whichever the backend);
//! - `verify_reload`: verification with a cache TTL of 0, so each one reads
//!   the key from the store (the cost a cache miss or an expired entry adds);
//! - `create_key_durable`: issuing a key, which returns once it is durable
//!   (an fsync on sled), beside two floors: `floor_fsync_4k` (append 4 KiB to
//!   a file + `fdatasync`) and `floor_sled_insert_flush` (one raw sled insert
//!   of 1 KiB + `flush_async`, on a database of its own);
//! - `update_remaining`: `keys.updateRemaining` increment, audited (durable);
//! - `verify_random_of_N_cache_100000/sled`: verification of a random key of
//!   N with the default cache capacity (100,000 keys), so most read the
//!   store, beside `floor_sled_get_random_of_N`: a raw sled get of a random
//!   key of N records of the same size, on a database of its own.
//!
//! `cargo bench -- backends/` (set `MAAS_BENCH_KEYS` for fewer keys than
//! 1,000,000). Keys are issued by 32 concurrent tasks during setup.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::cell::{Cell, LazyCell};
use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group};
use maas::core::{
    Actor, KeyHasher, KeyId, KeyService, KeyServiceConfig, KeyspaceId, NewKey, NewKeyspace,
    RemainingOp, Storage, SystemClock, VerifyOptions,
};
use maas::memory::MemoryStore;
use maas::sled::SledStore;
use tokio::runtime::Runtime;

use crate::common;
use common::{Pick, key_count};

struct Backend {
    storage: Storage,
    keys: KeyService,
    ks: KeyspaceId,
    secrets: Vec<String>,
    limited: KeyId,
}

fn service(storage: &Storage, ttl: Duration) -> KeyService {
    bounded_service(storage, ttl, usize::MAX)
}

fn bounded_service(storage: &Storage, ttl: Duration, capacity: usize) -> KeyService {
    KeyService::new_with_config(
        storage.clone(),
        KeyHasher::from_secret(b"bench"),
        KeyServiceConfig {
            cache_ttl: ttl,
            cache_capacity: capacity,
        },
        Arc::new(SystemClock),
    )
}

fn backend(rt: &Runtime, storage: Storage, n: usize) -> Backend {
    let keys = service(&storage, Duration::from_secs(3_600));
    let admin = Actor::new("bench");
    rt.block_on(async {
        let ks = keys
            .create_keyspace(
                &admin,
                NewKeyspace {
                    name: "bench".into(),
                    prefix: Some("sk".into()),
                    default_byte_length: None,
                },
            )
            .await
            .unwrap();
        let tasks = 32;
        let mut handles = Vec::new();
        for t in 0..tasks {
            let keys = keys.clone();
            let admin = admin.clone();
            let ks = ks.id.clone();
            let count = n / tasks + usize::from(t < n % tasks);
            handles.push(tokio::spawn(async move {
                let mut out = Vec::with_capacity(count);
                for _ in 0..count {
                    out.push(
                        keys.create(&admin, NewKey::in_keyspace(ks.clone()))
                            .await
                            .unwrap()
                            .key,
                    );
                }
                out
            }));
        }
        let mut secrets = Vec::with_capacity(n);
        for h in handles {
            secrets.extend(h.await.unwrap());
        }
        let limited = keys
            .create(
                &admin,
                NewKey {
                    remaining: Some(0),
                    ..NewKey::in_keyspace(ks.id.clone())
                },
            )
            .await
            .unwrap()
            .key_id;
        Backend {
            storage,
            keys,
            ks: ks.id,
            secrets,
            limited,
        }
    })
}

fn bench_backends(c: &mut Criterion) {
    let n = key_count();
    let hot = n.min(1_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let sled_path = dir.path().join("bench.db");
    // Each backend is populated on first use, so a filter that selects none
    // of its benches (`cargo bench -- floor_`) skips the minutes of setup.
    let populate = |name: &'static str, storage: Storage| {
        let setup = std::time::Instant::now();
        let b = backend(&rt, storage, n);
        eprintln!("setup: {n} keys on {name} in {:?}", setup.elapsed());
        b
    };
    type Lazy<'a> = LazyCell<Backend, Box<dyn FnOnce() -> Backend + 'a>>;
    let backends: [(&str, Lazy<'_>); 2] = [
        (
            "memory",
            LazyCell::new(Box::new(|| {
                populate("memory", MemoryStore::new().storage())
            })),
        ),
        (
            "sled",
            LazyCell::new(Box::new(|| {
                populate("sled", SledStore::open(&sled_path).expect("sled").storage())
            })),
        ),
    ];

    let mut group = c.benchmark_group("backends");
    group.measurement_time(Duration::from_secs(5));
    let opts = VerifyOptions::default();
    let pick = Pick::new();

    for (name, b) in &backends {
        group.bench_function(
            BenchmarkId::new(format!("verify_hot_{hot}"), name),
            |bench| {
                let b = &**b;
                bench.to_async(&rt).iter(|| async {
                    let v = b
                        .keys
                        .verify(b.secrets[pick.below(hot)].as_bytes(), &opts)
                        .await
                        .unwrap();
                    assert!(v.valid());
                    v
                })
            },
        );
    }
    for (name, b) in &backends {
        group.bench_function(
            BenchmarkId::new(format!("verify_random_of_{n}"), name),
            |bench| {
                let b = &**b;
                bench.to_async(&rt).iter(|| async {
                    let v = b
                        .keys
                        .verify(b.secrets[pick.below(n)].as_bytes(), &opts)
                        .await
                        .unwrap();
                    assert!(v.valid());
                    v
                })
            },
        );
    }
    for (name, b) in &backends {
        let uncached = LazyCell::new(|| service(&b.storage, Duration::ZERO));
        group.bench_function(BenchmarkId::new("verify_reload", name), |bench| {
            let (b, uncached) = (&**b, &*uncached);
            bench.to_async(&rt).iter(|| async {
                let v = uncached
                    .verify(b.secrets[pick.below(hot)].as_bytes(), &opts)
                    .await
                    .unwrap();
                assert!(v.valid());
                v
            })
        });
    }

    {
        let (name, b) = &backends[1];
        let capacity = maas::core::key::DEFAULT_KEY_CACHE_CAPACITY;
        let bounded =
            LazyCell::new(|| bounded_service(&b.storage, Duration::from_secs(3_600), capacity));
        group.bench_function(
            BenchmarkId::new(format!("verify_random_of_{n}_cache_{capacity}"), name),
            |bench| {
                let (b, bounded) = (&**b, &*bounded);
                bench.to_async(&rt).iter(|| async {
                    let v = bounded
                        .verify(b.secrets[pick.below(n)].as_bytes(), &opts)
                        .await
                        .unwrap();
                    assert!(v.valid());
                    v
                })
            },
        );
    }
    // Floor: a raw sled get of a random key of n records of a key's size.
    let floor_db = LazyCell::new(|| {
        let db = sled::open(dir.path().join("floor-get.db")).expect("floor sled");
        let tree = db.open_tree("records").expect("tree");
        let record = [0x42u8; 130];
        for i in 0..n as u64 {
            tree.insert(blake3::hash(&i.to_le_bytes()).as_bytes(), &record[..])
                .unwrap();
        }
        db.flush().unwrap();
        (db, tree)
    });
    group.bench_function(format!("floor_sled_get_random_of_{n}"), |bench| {
        let (_, tree) = &*floor_db;
        bench.iter(|| {
            let i = pick.below(n) as u64;
            tree.get(blake3::hash(&i.to_le_bytes()).as_bytes()).unwrap()
        })
    });

    let mut file = tempfile::tempfile_in(dir.path()).expect("temp file");
    let page = [0x5Au8; 4096];
    group.bench_function("floor_fsync_4k", |bench| {
        bench.iter(|| {
            file.write_all(black_box(&page)).unwrap();
            file.sync_data().unwrap();
        })
    });
    // Floor: what sled itself takes to make one small write durable.
    let raw = sled::open(dir.path().join("raw.db")).expect("raw sled");
    let value = [0xA5u8; 1024];
    let counter = Cell::new(0u64);
    group.bench_function("floor_sled_insert_flush", |bench| {
        bench.to_async(&rt).iter(|| async {
            counter.set(counter.get() + 1);
            raw.insert(counter.get().to_be_bytes(), &value[..]).unwrap();
            raw.flush_async().await.unwrap()
        })
    });
    let admin = Actor::new("bench");
    for (name, b) in &backends {
        group.bench_function(BenchmarkId::new("create_key_durable", name), |bench| {
            let b = &**b;
            bench.to_async(&rt).iter(|| async {
                b.keys
                    .create(&admin, NewKey::in_keyspace(b.ks.clone()))
                    .await
                    .unwrap()
            })
        });
    }
    for (name, b) in &backends {
        group.bench_function(BenchmarkId::new("update_remaining", name), |bench| {
            let b = &**b;
            bench.to_async(&rt).iter(|| async {
                b.keys
                    .update_remaining(&admin, &b.limited, RemainingOp::Increment, Some(1))
                    .await
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_backends);
