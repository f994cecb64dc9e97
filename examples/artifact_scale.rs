//! Issue 20's artifact goal, measured: a control plane's configuration with
//! `--keys` API keys (default 100,000) on sled is built into an artifact and
//! published; a data plane's sled store applies it fresh, then applies the
//! next artifact (a few keys changed) while tasks verify keys on the data
//! plane, whose latency is reported beside the same verifications with no
//! apply running (the floor, same run). Prints the figures and writes
//! `target/load/artifact.json` (for BENCHMARKS.md).
//!
//! ```sh
//! cargo run --release --example artifact_scale -- --keys 100000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt as _;
use maas_core::artifact::{Artifacts, Content, KeyTable};
use maas_core::{
    Actor, Clock, KeyHasher, KeyService, KeyUpdate, NewKey, NewKeyspace, SystemClock, VerifyOptions,
};
use maas_store_sled::SledStore;

/// Build and apply an artifact of many keys.
#[derive(Debug, Parser)]
struct Args {
    /// API keys in the configuration (1..=1,000,000).
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Tasks verifying on the data plane during the apply (1..=64).
    #[arg(long, default_value_t = 4)]
    verifiers: usize,
    /// Where to write the figures as JSON.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

const SECRET: &[u8] = b"artifact-scale-key-secret";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Verifies `secrets` round-robin from `tasks` tasks until `done`, bounded
/// at 60 s; every latency.
async fn verify_while(
    keys: &KeyService,
    secrets: &[String],
    tasks: usize,
    done: tokio::sync::watch::Receiver<bool>,
) -> Vec<Duration> {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (keys, secrets, done) = (keys.clone(), secrets.to_vec(), done.clone());
        handles.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut out = Vec::new();
            let mut i = t;
            while !*done.borrow() && started.elapsed() < Duration::from_secs(60) {
                let at = Instant::now();
                let v = keys
                    .verify(&secrets[i % secrets.len()], &VerifyOptions::default())
                    .await;
                out.push(at.elapsed());
                if v.is_err() {
                    break;
                }
                i += tasks;
                tokio::task::yield_now().await;
            }
            out
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap_or_default());
    }
    all.sort();
    all
}

/// Applies `content` as the example server's data plane does: the
/// configuration into the store, the keys into the table (off the
/// runtime's workers); the keys changed.
async fn apply(
    mut content: Content,
    dp: &maas_core::storage::Storage,
    table: &Arc<KeyTable>,
    admin: &Actor,
    now: maas_core::Timestamp,
) -> Result<Vec<maas_core::KeyId>, Box<dyn std::error::Error>> {
    content.apply_config(dp, admin, now).await?;
    let (table, keys) = (Arc::clone(table), std::mem::take(&mut content.keys));
    Ok(tokio::task::spawn_blocking(move || table.replace(keys, now)).await?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let n = args.keys.clamp(1, 1_000_000);
    let verifiers = args.verifiers.clamp(1, 64);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let admin = Actor::new("artifact-scale");
    let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);

    // The control plane: n keys in one keyspace.
    let cp = SledStore::open(dirs.0.path().join("cp.db"))?.storage();
    let cp_keys =
        KeyService::new_with_clock(cp.clone(), KeyHasher::from_secret(SECRET), clock.clone());
    let ks = cp_keys
        .create_keyspace(
            &admin,
            NewKeyspace {
                name: "tenants".into(),
                prefix: Some("sk".into()),
                ..Default::default()
            },
        )
        .await?;
    let started = Instant::now();
    let created: Vec<_> = futures_util::stream::iter(0..n)
        .map(|_| {
            let (keys, admin, id) = (cp_keys.clone(), admin.clone(), ks.id.clone());
            async move { keys.create(&admin, NewKey::in_keyspace(id)).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let created = created.into_iter().collect::<Result<Vec<_>, _>>()?;
    println!("setup: {n} keys created in {:?}", started.elapsed());

    // Build and publish.
    let started = Instant::now();
    let content = Content::of(&cp).await?;
    let read = started.elapsed();
    let bytes = content.to_bytes()?;
    let build = started.elapsed();
    let artifacts = Artifacts::open(cp.clone(), clock.clone()).await?;
    let started = Instant::now();
    let meta = artifacts.publish(&admin, &bytes).await?;
    let publish = started.elapsed();
    let started = Instant::now();
    let (_, downloaded) = artifacts
        .get(&meta.artifact_id)
        .await?
        .ok_or("the artifact just published is gone")?;
    let download = started.elapsed();
    println!(
        "build: {build:?} (reading the store {read:?}), {} MB; publish (sign, store) {publish:?}; read for download {download:?}",
        bytes.len() / 1_000_000
    );

    // A fresh data plane applies it.
    // As the example server's data plane: its keys a table in memory.
    let mut dp = SledStore::open(dirs.1.path().join("dp.db"))?.storage();
    let table = Arc::new(KeyTable::new());
    dp.keys = table.clone();
    let dp_keys =
        KeyService::new_with_clock(dp.clone(), KeyHasher::from_secret(SECRET), clock.clone());
    let started = Instant::now();
    let verified = maas_core::artifact::verify(&meta, &downloaded, artifacts.public_key());
    verified?;
    let parsed = Content::from_bytes(&downloaded)?;
    let check = started.elapsed();
    apply(parsed, &dp, &table, &admin, clock.now()).await?;
    let first_apply = started.elapsed();
    println!("first apply on a fresh data plane: {first_apply:?} (checking and parsing {check:?})");

    // The next artifact: a few keys disabled and one deleted.
    for k in created.iter().take(5) {
        cp_keys
            .update(
                &admin,
                &k.key_id,
                KeyUpdate {
                    enabled: Some(false),
                    ..KeyUpdate::default()
                },
            )
            .await?;
    }
    cp_keys.delete(&admin, &created[5].key_id).await?;
    let started = Instant::now();
    let next = Content::of(&cp).await?.to_bytes()?;
    let rebuild = started.elapsed();
    let meta2 = artifacts.publish(&admin, &next).await?;

    // Verifications on the data plane: the floor (nothing applied), then
    // during the apply.
    let secrets: Vec<String> = created
        .iter()
        .skip(10)
        .take(1_000)
        .map(|k| k.key.clone())
        .collect();
    for s in &secrets {
        dp_keys.verify(s, &VerifyOptions::default()).await?;
    }
    let (stop, done) = tokio::sync::watch::channel(false);
    let floor_run = {
        let (keys, secrets) = (dp_keys.clone(), secrets.clone());
        tokio::spawn(async move { verify_while(&keys, &secrets, verifiers, done).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(true);
    let floor = floor_run.await?;

    let (stop, done) = tokio::sync::watch::channel(false);
    let during_run = {
        let (keys, secrets) = (dp_keys.clone(), secrets.clone());
        tokio::spawn(async move { verify_while(&keys, &secrets, verifiers, done).await })
    };
    // As the example server's data plane does: checked and parsed off the
    // runtime's workers, then applied.
    let started = Instant::now();
    let (meta3, next3, public) = (
        meta2.clone(),
        next.clone(),
        artifacts.public_key().to_owned(),
    );
    let parsed = tokio::task::spawn_blocking(move || {
        maas_core::artifact::verify(&meta3, &next3, &public)?;
        Content::from_bytes(&next3)
    })
    .await??;
    let changed = apply(parsed, &dp, &table, &admin, clock.now()).await?;
    dp_keys.reload(&changed).await?;
    let apply = started.elapsed();
    let _ = stop.send(true);
    let during = during_run.await?;
    println!(
        "next artifact: rebuilt in {rebuild:?}; applied on the data plane in {apply:?} ({} keys changed)",
        changed.len()
    );
    let (f50, f99) = (percentile(&floor, 0.5), percentile(&floor, 0.99));
    let (d50, d99) = (percentile(&during, 0.5), percentile(&during, 0.99));
    let (fmax, dmax) = (percentile(&floor, 1.0), percentile(&during, 1.0));
    println!(
        "verifications on the data plane: p50 {f50:?} p99 {f99:?} max {fmax:?} with no apply ({} calls); p50 {d50:?} p99 {d99:?} max {dmax:?} during the apply ({} calls)",
        floor.len(),
        during.len()
    );

    let json = serde_json::json!({
        "keys": n,
        "verifiers": verifiers,
        "bytes": bytes.len(),
        "build_ms": build.as_secs_f64() * 1e3,
        "publish_ms": publish.as_secs_f64() * 1e3,
        "first_apply_ms": first_apply.as_secs_f64() * 1e3,
        "rebuild_ms": rebuild.as_secs_f64() * 1e3,
        "apply_ms": apply.as_secs_f64() * 1e3,
        "verify_floor_p50_us": f50.as_secs_f64() * 1e6,
        "verify_floor_p99_us": f99.as_secs_f64() * 1e6,
        "verify_during_p50_us": d50.as_secs_f64() * 1e6,
        "verify_during_p99_us": d99.as_secs_f64() * 1e6,
        "verify_floor_max_us": fmax.as_secs_f64() * 1e6,
        "verify_during_max_us": dmax.as_secs_f64() * 1e6,
    });
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec(&json)?)?;
    }
    Ok(())
}
