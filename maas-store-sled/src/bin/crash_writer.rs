//! Crash-test writer: opens the sled database at `argv[1]` and writes until
//! it is killed, printing each write once it has returned (so is durable).
//! The crash tests kill it with SIGKILL at arbitrary points and check that
//! everything acknowledged survived.
//!
//! - `maas-sled-crash-writer <db> <secret> <run>`: creates keys in a loop
//!   (key-hash secret `<secret>`), printing `ACK <id> <key>` per creation and
//!   `UPD <id> <name>` per rename.
//! - `maas-sled-crash-writer <db> <secret> <run> money <key> [journal bytes]`:
//!   spends the remaining uses of `<key>` by verifying it, reserves a monthly
//!   budget, records usage and adds usage reports (source `r<run>-<task>`,
//!   one request each, sequences 1, 2, …), from several tasks at once,
//!   printing `SPENT`, `RESERVED <units>`, `USAGE <requests>` and `REPORT
//!   <source> <sequence>` per acknowledged write. A
//!   small journal makes checkpoints frequent, so kills land in them too.
//!
//! Not part of the library's API.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use maas_core::counter::{LimitOp, LimitSpec, Period, PeriodSpec};
use maas_core::usage::{
    UsageBucket, UsageConfig, UsageKey, UsageLedger, UsageRecord, UsageReport, UsageSums,
};
use maas_core::{
    Actor, Clock, KeyHasher, KeyRateLimit, KeyService, KeyUpdate, ManualClock, NewKey, NewKeyspace,
    PageRequest, Patch, RateLimitKind, SystemClock, Timestamp, VerifyOptions,
};
use maas_store_sled::{SledConfig, SledStore};
use tokio::sync::mpsc;

/// The budget counter of the money mode.
const BUDGET: &str = "budget:crash";
/// Its limit: more than any run reserves.
const BUDGET_LIMIT: u64 = u64::MAX / 4;
/// Tasks writing at once in the money mode (their writes share flushes).
const TASKS: usize = 6;
/// The money mode's clock stands still here (2026-01-15), so its budget
/// period and usage minute are the same in every run.
const MONEY_AT_MS: i64 = 1_768_435_200_000;

/// Bounded: the test kills it long before.
const MAX_KEYS: usize = 100_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(secret), run) = (args.next(), args.next(), args.next()) else {
        return Err("usage: maas-sled-crash-writer <db path> <secret> [run]".into());
    };
    let run = run.unwrap_or_default();
    if args.next().as_deref() == Some("money") {
        let key = args.next().ok_or("money needs the key to spend")?;
        let journal = match args.next() {
            Some(n) => n.parse()?,
            None => SledConfig::default().journal_size,
        };
        return money(&path, &secret, &key, journal, &run);
    }
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

/// One acknowledged write of the money mode.
enum Ack {
    Spent,
    Reserved(u64),
    Usage(u64),
    Report(String, u64),
}

/// Spends, reserves and records usage from [`TASKS`] tasks until killed
/// (bounded: [`MAX_KEYS`] rounds per task).
fn money(
    path: &str,
    secret: &str,
    key: &str,
    journal_size: u64,
    run: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    // One runtime thread is enough: the tasks wait on the store's writer
    // thread, whose rounds their writes share.
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(async move {
        let store = SledStore::open_with(SledConfig {
            lock_wait: Duration::from_secs(10),
            journal_size,
            ..SledConfig::at(path)
        })?;
        let storage = store.storage();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Timestamp::from_millis(MONEY_AT_MS)));
        let keys = KeyService::new_with_clock(
            storage.clone(),
            KeyHasher::from_secret(secret.as_bytes()),
            clock.clone(),
        );
        let ledger = UsageLedger::new_with_clock(&storage, UsageConfig::default(), clock.clone());
        let (acks, mut acked) = mpsc::unbounded_channel();
        for task in 0..TASKS {
            let (keys, ledger, storage, clock, acks) = (
                keys.clone(),
                ledger.clone(),
                storage.clone(),
                clock.clone(),
                acks.clone(),
            );
            let key = key.to_owned();
            let source = format!("r{run}-{task}");
            let mut sequence = 0;
            tokio::spawn(async move {
                for i in 0..MAX_KEYS {
                    let ack = match (task + i) % 4 {
                        0 => {
                            let v = keys
                                .verify(&key, &VerifyOptions::default())
                                .await
                                .map_err(|e| e.to_string())?;
                            if !v.valid() {
                                return Err(format!("verify: {:?}", v.code()));
                            }
                            Ack::Spent
                        }
                        1 => {
                            let units = 1 + (i as u64 % 7);
                            let op = LimitOp {
                                id: BUDGET.into(),
                                spec: LimitSpec::Period(PeriodSpec {
                                    limit: BUDGET_LIMIT,
                                    period: Period::Monthly,
                                }),
                                cost: units,
                            };
                            let r = storage.counters.reserve(&[op], clock.now()).await;
                            if !r.map_err(|e| e.to_string())?.admitted {
                                return Err("the budget refused".into());
                            }
                            Ack::Reserved(units)
                        }
                        2 => {
                            sequence += 1;
                            let minute = clock.now().as_millis() / 60_000 * 60_000;
                            let report = UsageReport {
                                source: source.clone(),
                                sequence,
                                usage: vec![UsageBucket {
                                    key: UsageKey {
                                        minute: Timestamp::from_millis(minute),
                                        tenant: source.clone(),
                                        key_id: String::new(),
                                        model: "model".into(),
                                        currency: String::new(),
                                    },
                                    sums: UsageSums {
                                        requests: 1,
                                        ..UsageSums::default()
                                    },
                                }],
                                verifications: vec![],
                            };
                            if !ledger
                                .add_report(&report)
                                .await
                                .map_err(|e| e.to_string())?
                            {
                                return Err("a new report was not added".into());
                            }
                            Ack::Report(source.clone(), sequence)
                        }
                        _ => {
                            let r = UsageRecord::new(clock.now(), "crash-tenant", "model");
                            ledger.record(&r).map_err(|e| e.to_string())?;
                            ledger.flush().await.map_err(|e| e.to_string())?;
                            Ack::Usage(1)
                        }
                    };
                    if acks.send(ack).is_err() {
                        break;
                    }
                }
                Ok::<(), String>(())
            });
        }
        drop(acks);
        let mut out = std::io::stdout().lock();
        while let Some(ack) = acked.recv().await {
            match ack {
                Ack::Spent => writeln!(out, "SPENT")?,
                Ack::Reserved(n) => writeln!(out, "RESERVED {n}")?,
                Ack::Usage(n) => writeln!(out, "USAGE {n}")?,
                Ack::Report(source, n) => writeln!(out, "REPORT {source} {n}")?,
            }
            out.flush()?;
        }
        Ok(())
    })
}
