//! Counters wait in an in-memory overlay after their journal record and are
//! written into sled later (`src/overlay.rs`). On a small journal the writer
//! drains the overlay and checkpoints every few rounds: every read (point
//! reads and usage range scans, from other threads while it drains) must see
//! the last value written, and so must a reopened store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use maas_core::counter::Balance;
use maas_core::storage::{CounterStore, UsageStore};
use maas_core::usage::{MINUTE_MS, UsageBucket, UsageFilter, UsageKey, UsageSums};
use maas_core::{Timestamp, WindowSpec};
use maas_store_sled::{SledConfig, SledStore};

const KEYS: usize = 40;
const MINUTES: i64 = 5;

fn open(path: &std::path::Path) -> SledStore {
    SledStore::open_with(SledConfig {
        // A few dozen rounds' records: drains and checkpoints all the time.
        journal_size: 16 * 1024,
        ..SledConfig::at(path)
    })
    .unwrap()
}

fn bucket(minute: i64, key: usize, requests: u64) -> UsageBucket {
    UsageBucket {
        key: UsageKey {
            minute: Timestamp::from_millis(1_800_000_000_000 + minute * MINUTE_MS),
            tenant: "acme".into(),
            key_id: format!("key_{key:03}"),
            model: "llama".into(),
            currency: String::new(),
        },
        sums: UsageSums {
            requests,
            input_tokens: requests * 3,
            ..UsageSums::default()
        },
    }
}

fn all_minutes() -> UsageFilter {
    UsageFilter {
        from: Timestamp::from_millis(0),
        to: Timestamp::from_millis(i64::MAX / 2),
        tenant: None,
        key_id: None,
        model: None,
    }
}

/// The requests per (minute, key) the store holds.
async fn usage_of(store: &SledStore) -> BTreeMap<(Timestamp, String), u64> {
    let mut out = BTreeMap::new();
    for b in store.usage_buckets(&all_minutes()).await.unwrap() {
        assert_eq!(b.sums.input_tokens, b.sums.requests * 3, "{b:?}");
        out.insert((b.key.minute, b.key.key_id), b.sums.requests);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_the_last_value_while_the_overlay_drains_and_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("maas.db");
    let now = Timestamp::from_millis(1_800_000_000_000);
    let window = WindowSpec::fixed(1_000_000, 3_600_000);
    let mut remaining = vec![1_000_i64; KEYS];
    let mut usage: BTreeMap<(Timestamp, String), u64> = BTreeMap::new();
    let mut taken = 0u64;
    {
        let store = Arc::new(open(&path));
        for (k, r) in remaining.iter().enumerate() {
            store
                .put_balance(&format!("bal_{k:03}"), Some(Balance::new(*r, now)))
                .await
                .unwrap();
        }
        // A reader that keeps reading while the writer drains: balances
        // never go up (spends only), usage never goes down.
        let reader = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut last_bal = vec![i64::MAX; KEYS];
                let mut last_usage: BTreeMap<(Timestamp, String), u64> = BTreeMap::new();
                for _ in 0..200 {
                    for (k, last) in last_bal.iter_mut().enumerate() {
                        let b = store
                            .balance(&format!("bal_{k:03}"))
                            .await
                            .unwrap()
                            .unwrap();
                        assert!(
                            b.remaining <= *last,
                            "bal_{k:03} went up to {}",
                            b.remaining
                        );
                        *last = b.remaining;
                    }
                    let now_usage = usage_of(&store).await;
                    for (k, v) in &last_usage {
                        assert!(
                            now_usage.get(k).copied().unwrap_or(0) >= *v,
                            "{k:?} went down"
                        );
                    }
                    last_usage = now_usage;
                    tokio::task::yield_now().await;
                }
            })
        };
        for round in 0..300usize {
            let mut tasks = Vec::new();
            for i in 0..4usize {
                let k = (round * 7 + i * 13) % KEYS;
                remaining[k] -= 1;
                let store = Arc::clone(&store);
                tasks.push(tokio::spawn(async move {
                    let s = store
                        .spend(&format!("bal_{k:03}"), 1, None, now)
                        .await
                        .unwrap();
                    assert!(s.spent);
                    store.take("win", &window, 2, now).await.unwrap();
                }));
                taken += 2;
            }
            let batch: Vec<UsageBucket> = (0..6)
                .map(|i| {
                    bucket(
                        (round as i64 + i) % MINUTES,
                        (round + i as usize * 5) % KEYS,
                        1,
                    )
                })
                .collect();
            for b in &batch {
                *usage
                    .entry((b.key.minute, b.key.key_id.clone()))
                    .or_default() += 1;
            }
            store.add_usage(&batch).await.unwrap();
            for t in tasks {
                t.await.unwrap();
            }
            if round % 50 == 0 {
                assert_eq!(usage_of(&store).await, usage, "round {round}");
            }
        }
        reader.await.unwrap();
        for (k, r) in remaining.iter().enumerate() {
            let b = store
                .balance(&format!("bal_{k:03}"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(b.remaining, *r, "bal_{k:03}");
        }
        assert_eq!(usage_of(&store).await, usage);
        let t = store.take("win", &window, 0, now).await.unwrap();
        assert_eq!(t.remaining, window.limit - taken);
    }
    // Closed (drained, checkpointed) and opened again: the same values.
    let store = open(&path);
    for (k, r) in remaining.iter().enumerate() {
        let b = store
            .balance(&format!("bal_{k:03}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.remaining, *r, "bal_{k:03} after reopening");
    }
    assert_eq!(usage_of(&store).await, usage);
    let t = store.take("win", &window, 0, now).await.unwrap();
    assert_eq!(t.remaining, window.limit - taken);
}
