//! Regression test for two sled 0.34 hangs that durable writes can run into:
//! a flush holding sled's process-wide lock while a transaction queues for it
//! (the gate in `store.rs`), and as many concurrent flushes as sled's I/O
//! threads, starving the writes they wait for (one flush at a time). Many
//! durable changes from many tasks on several stores at once must all
//! complete; without those two guards this workload hung in about one run of
//! five.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc;
use std::time::Duration;

use maas_core::{Actor, KeyHasher, KeyService, NewKey, NewKeyspace, RemainingOp};
use maas_store_sled::SledStore;

#[test]
fn concurrent_durable_writes_on_several_stores_complete() {
    let (done, finished) = mpsc::channel();
    // The work runs on its own thread so that a deadlock is reported as a
    // failure instead of hanging CI; the wait returns as soon as it is done.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .unwrap();
        let created = rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..3 {
                let keys = KeyService::new(
                    SledStore::temporary().unwrap().storage(),
                    KeyHasher::random(),
                );
                let admin = Actor::new("stress");
                let ks = keys
                    .create_keyspace(
                        &admin,
                        NewKeyspace {
                            name: "s".into(),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                for _ in 0..8 {
                    let (keys, admin, ks) = (keys.clone(), admin.clone(), ks.id.clone());
                    tasks.push(tokio::spawn(async move {
                        for _ in 0..15 {
                            let k = keys
                                .create(
                                    &admin,
                                    NewKey {
                                        remaining: Some(5),
                                        ..NewKey::in_keyspace(ks.clone())
                                    },
                                )
                                .await
                                .unwrap();
                            keys.update_remaining(
                                &admin,
                                &k.key_id,
                                RemainingOp::Increment,
                                Some(1),
                            )
                            .await
                            .unwrap();
                            assert!(
                                keys.verify(&k.key, &Default::default())
                                    .await
                                    .unwrap()
                                    .valid()
                            );
                        }
                        15
                    }));
                }
            }
            let mut n = 0;
            for t in tasks {
                n += t.await.unwrap();
            }
            n
        });
        let _ = done.send(created);
    });
    let created = finished
        .recv_timeout(Duration::from_secs(120))
        .expect("durable writes deadlocked (or took over two minutes)");
    assert_eq!(created, 3 * 8 * 15);
}
