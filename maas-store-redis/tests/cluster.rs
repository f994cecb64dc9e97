//! The whole storage conformance suite on a Redis Cluster (one node serving
//! every slot): a cluster refuses a script whose keys are in different
//! slots (`CROSSSLOT`), so passing here shows that every change's keys
//! share the deployment's hash tag.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};

static NEXT: AtomicU64 = AtomicU64::new(0);

async fn fresh() -> maas_core::Storage {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let config = maas_store_redis::RedisConfig {
        prefix: format!("cluster-{n}"),
        ..maas_store_redis::RedisConfig::new(maas_store_redis::testing::shared_cluster_url())
    };
    match maas_store_redis::RedisStore::connect(&config).await {
        Ok(store) => store.storage(),
        Err(e) => panic!("redis: {e}"),
    }
}

maas_core::conformance_suite!(fresh);

/// Without the hash tag the cluster would refuse: a check that the test
/// above proves something.
#[tokio::test]
async fn a_cluster_refuses_scripts_across_slots() {
    let client = redis::Client::open(maas_store_redis::testing::shared_cluster_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let err = redis::Script::new("return redis.call('SET', KEYS[1], KEYS[2])")
        .key("maas:a")
        .key("maas:b")
        .invoke_async::<()>(&mut con)
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("crossslot"),
        "{err}"
    );
}
