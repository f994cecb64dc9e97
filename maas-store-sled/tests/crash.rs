//! Crash tests: a child process writes and prints each acknowledged write; it
//! is killed with SIGKILL at different points; after each kill the database
//! reopens with everything acknowledged in it.
//!
//! - Keys: every acknowledged key verifies, every index is consistent.
//! - Money: every acknowledged spend of a key's remaining uses, budget
//!   reservation and usage record is in the store (`spent_acknowledged <=
//!   spent_in_store` for each counter), for many kill points.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use maas_core::counter::{LimitOp, LimitSpec, Period, PeriodSpec};
use maas_core::usage::{UsageFilter, UsageReport};
use maas_core::{
    Actor, KeyHasher, KeyId, KeyService, NewKey, NewKeyspace, Timestamp, VerifyCode, VerifyOptions,
};
use maas_store_sled::{SledConfig, SledError, SledStore};

const SECRET: &str = "crash-test-secret";

/// What the writer acknowledged: key id -> (secret, latest acknowledged name).
#[derive(Default)]
struct Acked {
    keys: HashMap<String, (String, Option<String>)>,
    order: Vec<String>,
}

impl Acked {
    /// Takes one line of the writer; returns whether it was a new key.
    fn take(&mut self, line: &str) -> bool {
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("ACK"), Some(id), Some(key)) => {
                self.keys.insert(id.to_owned(), (key.to_owned(), None));
                self.order.push(id.to_owned());
                true
            }
            (Some("UPD"), Some(id), Some(name)) => {
                if let Some(k) = self.keys.get_mut(id) {
                    k.1 = Some(name.to_owned());
                }
                false
            }
            _ => panic!("unexpected line from the writer: {line:?}"),
        }
    }
}

/// Starts the writer on `path` for `run` with `more` arguments; returns it
/// and the lines it prints.
fn spawn_writer(
    path: &std::path::Path,
    run: usize,
    more: &[&str],
) -> (Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_maas-sled-crash-writer"))
        .arg(path)
        .arg(SECRET)
        .arg(run.to_string())
        .args(more)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the writer");
    let stdout = child.stdout.take().expect("piped stdout");
    (child, BufReader::new(stdout).lines())
}

#[test]
fn killed_writer_loses_nothing_it_acknowledged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("maas.db");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let mut acked = Acked::default();
    // Kill after this many acknowledged keys: early, mid-stream, later.
    for (run, kill_after) in [1usize, 6, 23, 3, 41].into_iter().enumerate() {
        let (mut child, mut lines) = spawn_writer(&path, run, &[]);
        let mut new_keys = 0;
        while new_keys < kill_after {
            let line = lines
                .next()
                .expect("the writer stopped early")
                .expect("read the writer");
            if acked.take(&line) {
                new_keys += 1;
            }
        }
        if run == 0 {
            // While the writer runs, the database is locked: a clear error, at once.
            let locked = SledStore::open_with(SledConfig {
                lock_wait: Duration::ZERO,
                ..SledConfig::at(&path)
            });
            match locked {
                Err(e @ SledError::Locked { .. }) => {
                    assert!(e.to_string().contains("locked by another process"), "{e}");
                }
                other => panic!("expected Locked, got {other:?}"),
            }
        }
        child.kill().expect("SIGKILL the writer");
        child.wait().expect("reap the writer");
        // Whatever it printed before dying was acknowledged too.
        for line in lines {
            acked.take(&line.expect("read the writer"));
        }

        rt.block_on(async {
            let store = SledStore::open(&path).expect("reopen after the kill");
            let report = store.check_integrity().expect("integrity scan");
            assert!(report.is_ok(), "after run {run}: {:?}", report.problems);
            assert!(report.keys >= acked.order.len() as u64);
            let keys = KeyService::new(
                store.clone().storage(),
                KeyHasher::from_secret(SECRET.as_bytes()),
            );
            for id in &acked.order {
                let (secret, renamed) = &acked.keys[id];
                let v = keys
                    .verify(secret, &VerifyOptions::default())
                    .await
                    .expect("verify");
                assert_eq!(
                    v.code(),
                    VerifyCode::Valid,
                    "run {run}: acknowledged key {id}"
                );
                assert_eq!(v.key_id().map(KeyId::as_str), Some(id.as_str()));
                let key = keys.get(&KeyId::parse(id).expect("id")).await.expect("get");
                if let Some(name) = renamed {
                    assert_eq!(
                        key.name.as_deref(),
                        Some(name.as_str()),
                        "acknowledged rename of {id}"
                    );
                }
                assert!(
                    key.remaining.is_some_and(|r| r > 0),
                    "its balance survived too"
                );
            }
            store.flush().await.expect("flush");
        });
    }
    assert!(acked.order.len() >= 74);
}

/// The writer's budget counter and its clock in the money mode (as in
/// `src/bin/crash_writer.rs`).
const BUDGET: &str = "budget:crash";
const MONEY_AT_MS: i64 = 1_768_435_200_000;

/// The initial remaining uses of the money test's key.
const REMAINING: i64 = 1_000_000_000;

/// A small deterministic generator of kill points (xorshift64*).
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Totals the money writer acknowledged.
#[derive(Debug, Default, Clone)]
struct Money {
    spent: u64,
    reserved: u64,
    usage: u64,
    /// The last acknowledged sequence of each report source.
    reports: HashMap<String, u64>,
}

impl Money {
    fn take(&mut self, line: &str) {
        let mut parts = line.split(' ');
        match (parts.next(), parts.next()) {
            (Some("SPENT"), None) => self.spent += 1,
            (Some("RESERVED"), Some(n)) => self.reserved += n.parse::<u64>().unwrap(),
            (Some("USAGE"), Some(n)) => self.usage += n.parse::<u64>().unwrap(),
            (Some("REPORT"), Some(source)) => {
                let n: u64 = parts.next().unwrap().parse().unwrap();
                let last = self.reports.entry(source.to_owned()).or_default();
                *last = (*last).max(n);
            }
            _ => panic!("unexpected line from the writer: {line:?}"),
        }
    }
}

#[test]
fn killed_spender_never_spends_an_acknowledged_credit_twice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("maas.db");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let (key_id, key) = rt.block_on(async {
        let store = SledStore::open(&path).expect("open");
        let keys = KeyService::new(store.storage(), KeyHasher::from_secret(SECRET.as_bytes()));
        let admin = Actor::new("crash-test");
        let ks = keys
            .create_keyspace(
                &admin,
                NewKeyspace {
                    name: "money".into(),
                    ..Default::default()
                },
            )
            .await
            .expect("keyspace");
        let k = keys
            .create(
                &admin,
                NewKey {
                    remaining: Some(REMAINING),
                    ..NewKey::in_keyspace(ks.id)
                },
            )
            .await
            .expect("key");
        (k.key_id, k.key)
    });
    let mut acked = Money::default();
    let mut seeds = Seeded(0x9E37_79B9_7F4A_7C15);
    for run in 0..16 {
        // Kill after 1 to 300 acknowledged writes, plus 0 to 2 ms more:
        // mid-round, mid-sync, mid-checkpoint.
        let kill_after = 1 + seeds.below(300);
        let extra = Duration::from_micros(seeds.below(2_000));
        // Every other run on a small journal: checkpoints every few rounds.
        let journal = if run % 2 == 1 { "16384" } else { "33554432" };
        let (mut child, mut lines) = spawn_writer(&path, run, &["money", &key, journal]);
        let mut seen = 0;
        while seen < kill_after {
            let line = lines
                .next()
                .expect("the writer stopped early")
                .expect("read the writer");
            acked.take(&line);
            seen += 1;
        }
        std::thread::sleep(extra);
        child.kill().expect("SIGKILL the writer");
        child.wait().expect("reap the writer");
        for line in lines {
            acked.take(&line.expect("read the writer"));
        }

        let stored = rt.block_on(async {
            let store = SledStore::open(&path).expect("reopen after the kill");
            let storage = store.clone().storage();
            let left = storage
                .counters
                .balance(&format!("rem:{key_id}"))
                .await
                .expect("balance")
                .expect("the key's balance")
                .remaining;
            let at = Timestamp::from_millis(MONEY_AT_MS);
            let budget = storage
                .counters
                .reserve(
                    &[LimitOp {
                        id: BUDGET.into(),
                        spec: LimitSpec::Period(PeriodSpec {
                            limit: u64::MAX / 4,
                            period: Period::Monthly,
                        }),
                        cost: 0,
                    }],
                    at,
                )
                .await
                .expect("read the budget");
            let buckets = storage
                .usage
                .usage_buckets(&UsageFilter::range(
                    Timestamp::from_millis(0),
                    at.add_millis(3_600_000),
                ))
                .await
                .expect("usage");
            let requests_of = |tenant: &str| -> u64 {
                buckets
                    .iter()
                    .filter(|b| b.key.tenant == tenant)
                    .map(|b| b.sums.requests)
                    .sum()
            };
            // Each report adds one request: a source's requests are its
            // last sequence stored, and the sequence stored with them
            // (a report at it is not added again; the next one is).
            let mut reports = HashMap::new();
            for source in acked.reports.keys() {
                let n = requests_of(source);
                let report = |sequence| UsageReport {
                    source: source.clone(),
                    sequence,
                    usage: vec![],
                    verifications: vec![],
                };
                // Sources of earlier runs were probed (and moved on) then.
                if !source.starts_with(&format!("r{run}-")) {
                    reports.insert(source.clone(), n);
                    continue;
                }
                if n > 0 {
                    assert!(
                        !storage.usage.add_report(&report(n)).await.unwrap(),
                        "{source}: {n} requests, sequence {n} not stored with them"
                    );
                }
                assert!(
                    storage.usage.add_report(&report(n + 1)).await.unwrap(),
                    "{source}: {n} requests, a later sequence stored"
                );
                reports.insert(source.clone(), n);
            }
            Money {
                spent: u64::try_from(REMAINING - left).expect("never more than the balance"),
                reserved: u64::MAX / 4 - budget.decisions[0].remaining,
                usage: requests_of("crash-tenant"),
                reports,
            }
        });
        assert!(
            acked.spent <= stored.spent
                && acked.reserved <= stored.reserved
                && acked.usage <= stored.usage
                && acked
                    .reports
                    .iter()
                    .all(|(source, n)| stored.reports.get(source).is_some_and(|s| s >= n)),
            "run {run} (killed after {kill_after} acks + {extra:?}): acknowledged {acked:?}, stored {stored:?}"
        );
    }
    assert!(
        acked.spent > 0 && acked.reserved > 0 && acked.usage > 0 && !acked.reports.is_empty(),
        "{acked:?}"
    );
}
