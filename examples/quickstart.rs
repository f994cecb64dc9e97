//! The smallest embedding of maas: an in-memory key service, one keyspace,
//! one key with 3 uses and a rate limit, verified until its uses run out,
//! then disabled.
//!
//! `cargo run --example quickstart`

use maas::core::{
    Actor, KeyHasher, KeyRateLimit, KeyService, NewKey, NewKeyspace, RateLimitKind, VerifyOptions,
};
use maas::memory::MemoryStore;

#[tokio::main(flavor = "current_thread")]
async fn main() -> maas::core::Result<()> {
    // The hashing secret lives outside the store (configuration, a secret
    // manager); keys hashed under another secret no longer verify.
    let keys = KeyService::new(
        MemoryStore::new().storage(),
        KeyHasher::from_secret(b"deployment secret"),
    );
    let admin = Actor::new("admin");

    let api = keys
        .create_keyspace(
            &admin,
            NewKeyspace {
                name: "quickstart".into(),
                prefix: Some("sk".into()),
                ..Default::default()
            },
        )
        .await?;

    let created = keys
        .create(
            &admin,
            NewKey {
                name: Some("demo".into()),
                remaining: Some(3),
                // 10 requests at once, then 1 more every second.
                ratelimit: Some(KeyRateLimit {
                    kind: RateLimitKind::Fast,
                    limit: 10,
                    refill_rate: 1,
                    refill_interval: 1_000,
                }),
                ..NewKey::in_keyspace(api.id.clone())
            },
        )
        .await?;
    // The secret is shown this once; only its hash is stored.
    println!("issued {} ({}…)", created.key_id, created.start);

    let opts = VerifyOptions {
        keyspace_id: Some(&api.id),
        ..Default::default()
    };
    for attempt in 1..=4 {
        let v = keys.verify(&created.key, &opts).await?;
        let ratelimit = v.ratelimit().map(|rl| rl.remaining);
        println!(
            "verify #{attempt}: {:<14} remaining uses: {:?}, rate limit left: {:?}",
            v.code().as_str(),
            v.remaining(),
            ratelimit,
        );
    }

    keys.set_enabled(&admin, &created.key_id, false).await?;
    let v = keys.verify(&created.key, &opts).await?;
    println!("after disabling: {}", v.code());

    Ok(())
}
