//! Crash test: a child process creates keys and prints each acknowledged one;
//! it is killed with SIGKILL at different points; after each kill the database
//! reopens with every acknowledged key verifying and every index consistent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use maas_core::{KeyHasher, KeyId, KeyService, VerifyCode, VerifyOptions};
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

fn spawn_writer(path: &std::path::Path, run: usize) -> Child {
    Command::new(env!("CARGO_BIN_EXE_maas-sled-crash-writer"))
        .arg(path)
        .arg(SECRET)
        .arg(run.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the writer")
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
        let mut child = spawn_writer(&path, run);
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
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
