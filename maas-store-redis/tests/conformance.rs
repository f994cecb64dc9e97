//! The whole storage conformance suite of maas-core, on Redis: one
//! `redis-server` for the process, a fresh key prefix per scenario.

use std::sync::atomic::{AtomicU64, Ordering};

static NEXT: AtomicU64 = AtomicU64::new(0);

async fn fresh() -> maas_core::Storage {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let config = maas_store_redis::RedisConfig {
        prefix: format!("conformance-{n}"),
        ..maas_store_redis::RedisConfig::new(maas_store_redis::testing::shared_url())
    };
    match maas_store_redis::RedisStore::connect(&config).await {
        Ok(store) => store.storage(),
        Err(e) => panic!("redis: {e}"),
    }
}

maas_core::conformance_suite!(fresh);
