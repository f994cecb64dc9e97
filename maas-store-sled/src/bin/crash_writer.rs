//! Crash-test writer: opens the sled database at `argv[1]`, then creates keys
//! in a loop (with a key-hash secret of `argv[2]`), printing `ACK <id> <key>`
//! once each creation has returned (so is durable), and `UPD <id> <name>`
//! once a rename has returned. The crash test kills it with SIGKILL at
//! arbitrary points and checks that everything acknowledged survived.
//!
//! Not part of the library's API.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use maas_core::{
    Actor, KeyHasher, KeyRateLimit, KeyService, KeyUpdate, NewKey, NewKeyspace, PageRequest, Patch,
    RateLimitKind, SystemClock,
};
use maas_store_sled::{SledConfig, SledStore};

/// Bounded: the test kills it long before.
const MAX_KEYS: usize = 100_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(secret), run) = (args.next(), args.next(), args.next()) else {
        return Err("usage: maas-sled-crash-writer <db path> <secret> [run]".into());
    };
    let run = run.unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(async move {
        let store = SledStore::open_with(SledConfig {
            lock_wait: Duration::from_secs(10),
            ..SledConfig::at(&path)
        })?;
        let keys = KeyService::new_with_clock(
            store.storage(),
            KeyHasher::from_secret(secret.as_bytes()),
            Arc::new(SystemClock),
        );
        let actor = Actor::new("crash-writer");
        let existing = keys.list_keyspaces(&PageRequest::first(1)).await?;
        let ks = match existing.items.into_iter().next() {
            Some(ks) => ks,
            None => {
                keys.create_keyspace(
                    &actor,
                    NewKeyspace {
                        name: "crash".into(),
                        prefix: Some("ck".into()),
                        default_byte_length: None,
                    },
                )
                .await?
            }
        };
        let mut out = std::io::stdout().lock();
        for i in 0..MAX_KEYS {
            let created = keys
                .create(
                    &actor,
                    NewKey {
                        name: Some(format!("run{run}-key{i}")),
                        unique_name: true,
                        owner_id: Some(format!("owner{}", i % 3)),
                        remaining: Some(1_000),
                        ratelimit: Some(KeyRateLimit {
                            kind: RateLimitKind::Consistent,
                            limit: 100,
                            refill_rate: 100,
                            refill_interval: 1_000,
                        }),
                        ..NewKey::in_keyspace(ks.id.clone())
                    },
                )
                .await?;
            writeln!(out, "ACK {} {}", created.key_id, created.key)?;
            out.flush()?;
            if i % 4 == 3 {
                let name = format!("run{run}-renamed{i}");
                keys.update(
                    &actor,
                    &created.key_id,
                    KeyUpdate {
                        name: Patch::Set(name.clone()),
                        ..KeyUpdate::default()
                    },
                )
                .await?;
                writeln!(out, "UPD {} {name}", created.key_id)?;
                out.flush()?;
            }
        }
        Ok(())
    })
}
