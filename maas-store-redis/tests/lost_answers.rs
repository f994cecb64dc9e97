//! A counter write whose answer is lost (the connection drops after Redis
//! applied it, or before Redis received it) is applied exactly once: the
//! store asks the write's marker instead of guessing, and writes again only
//! if it did not land. Driven through a TCP proxy of the test's own that
//! drops one answer or one request, then cuts the connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use maas_core::Timestamp;
use maas_core::counter::{Balance, LimitOp, LimitSpec, WindowSpec};
use maas_core::storage::CounterStore;
use maas_store_redis::testing::RedisServer;
use maas_store_redis::{RedisConfig, RedisStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PASS: u8 = 0;
/// The next bytes Redis sends are dropped and the connection cut: Redis
/// applied the command, the client never hears of it.
const DROP_ANSWER: u8 = 1;
/// The next bytes the client sends are dropped and the connection cut:
/// Redis never sees the command.
const DROP_REQUEST: u8 = 2;

/// A loopback proxy to `upstream`, with one-shot faults.
struct Proxy {
    url: String,
    mode: Arc<AtomicU8>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}/", listener.local_addr().unwrap());
        let mode = Arc::new(AtomicU8::new(PASS));
        let m = Arc::clone(&mode);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&upstream).await.unwrap();
                tokio::spawn(pipe(client, server, Arc::clone(&m)));
            }
        });
        Proxy { url, mode }
    }

    fn arm(&self, fault: u8) {
        self.mode.store(fault, Ordering::SeqCst);
    }

    fn fired(&self) -> bool {
        self.mode.load(Ordering::SeqCst) == PASS
    }
}

/// Copies both ways until either side closes or a fault fires (then both
/// sockets are dropped: the connection is cut).
async fn pipe(mut client: TcpStream, mut server: TcpStream, mode: Arc<AtomicU8>) {
    let (mut a, mut b) = ([0u8; 16 * 1024], [0u8; 16 * 1024]);
    loop {
        tokio::select! {
            n = client.read(&mut a) => {
                let Ok(n @ 1..) = n else { return };
                if mode.compare_exchange(DROP_REQUEST, PASS, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    return;
                }
                if server.write_all(&a[..n]).await.is_err() { return }
            }
            n = server.read(&mut b) => {
                let Ok(n @ 1..) = n else { return };
                if mode.compare_exchange(DROP_ANSWER, PASS, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    return;
                }
                if client.write_all(&b[..n]).await.is_err() { return }
            }
        }
    }
}

async fn store(url: &str) -> RedisStore {
    RedisStore::connect(&RedisConfig {
        prefix: "lost".into(),
        timeout: Duration::from_millis(500),
        ..RedisConfig::new(url)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_is_lost_is_applied_once() {
    let redis = RedisServer::start().await;
    let upstream = redis
        .url
        .trim_start_matches("redis://")
        .trim_end_matches('/');
    let proxy = Proxy::start(upstream.to_owned()).await;
    let through = store(&proxy.url).await;
    let direct = store(&redis.url).await;
    let t = Timestamp::from_millis(1_735_689_600_000);
    through
        .put_balance("key", Some(Balance::new(10, t)))
        .await
        .unwrap();

    // Applied, answer lost: the marker says it landed; not spent twice.
    proxy.arm(DROP_ANSWER);
    let spend = through.spend("key", 1, None, t).await.unwrap();
    assert!(proxy.fired());
    assert!(spend.spent);
    assert_eq!(spend.balance.map(|b| b.remaining), Some(9));
    assert_eq!(direct.balance("key").await.unwrap().unwrap().remaining, 9);

    // Never received: written again, once.
    proxy.arm(DROP_REQUEST);
    let spend = through.spend("key", 1, None, t).await.unwrap();
    assert!(proxy.fired());
    assert_eq!(spend.balance.map(|b| b.remaining), Some(8));
    assert_eq!(direct.balance("key").await.unwrap().unwrap().remaining, 8);

    // The same for an admission reservation.
    let ops = [LimitOp {
        id: "rpm".into(),
        spec: LimitSpec::Bucket(WindowSpec::fixed(5, 60_000)),
        cost: 1,
    }];
    assert!(through.reserve(&ops, t).await.unwrap().admitted);
    proxy.arm(DROP_ANSWER);
    assert!(through.reserve(&ops, t).await.unwrap().admitted);
    assert!(proxy.fired());
    proxy.arm(DROP_REQUEST);
    assert!(through.reserve(&ops, t).await.unwrap().admitted);
    assert!(proxy.fired());
    // Exactly three taken of five: two more admitted, then refused.
    for _ in 0..2 {
        assert!(direct.reserve(&ops, t).await.unwrap().admitted);
    }
    assert!(!direct.reserve(&ops, t).await.unwrap().admitted);

    // A read whose answer is lost is read again (it changes nothing).
    proxy.arm(DROP_ANSWER);
    assert_eq!(through.balance("key").await.unwrap().unwrap().remaining, 8);
    assert!(proxy.fired());
}
