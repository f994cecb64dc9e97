//! The webhook dispatcher: posts the deliveries `maas_core::webhook` has
//! queued, signed, and records each attempt (the core decides retries and
//! backoff); scans for keys about to expire.
//!
//! A delivery is `POST {url}` with the event's JSON, `content-type:
//! application/json`, `x-maas-event: <type>`, `x-maas-delivery: <id>` and
//! `x-maas-signature: sha256=<hex HMAC-SHA256 of the body>`. Redirects are
//! not followed (a 3xx is a failed attempt); an attempt that takes longer
//! than [`DispatcherConfig::timeout`] fails. Nothing here runs on a
//! request's path.

use std::time::Duration;

use maas_core::clock::SharedClock;
use maas_core::webhook::{Event, EventType, Webhook, Webhooks, sign};
use maas_core::{Clock, KeyQuery, KeyService, KeyspaceId, PageRequest, Result, UserKeys};

/// Settings of the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatcherConfig {
    /// The longest one attempt may take (connect to answer). Default 10 s.
    pub timeout: Duration,
    /// How often due deliveries are looked for without a wake-up. Default 1 s.
    pub poll: Duration,
    /// How often keys about to expire are looked for. Default 10 min.
    pub expiring_scan: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            timeout: Duration::from_secs(10),
            poll: Duration::from_secs(1),
            expiring_scan: Duration::from_secs(600),
        }
    }
}

/// How far ahead `key.expiring` looks.
const EXPIRING_WITHIN_MS: i64 = 24 * 3_600_000;

/// Posts due deliveries and records what happened.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    webhooks: Webhooks,
    client: reqwest::Client,
    config: DispatcherConfig,
}

impl Dispatcher {
    /// A dispatcher of `webhooks`' deliveries.
    pub fn new(webhooks: Webhooks, config: DispatcherConfig) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .no_proxy()
            .build()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "webhook client settings refused; using defaults");
                reqwest::Client::new()
            });
        Dispatcher {
            webhooks,
            client,
            config,
        }
    }

    /// Posts every delivery due now, one after another, recording each
    /// attempt; returns how many were attempted.
    pub async fn run_once(&self) -> Result<usize> {
        let due = self.webhooks.due().await?;
        let n = due.len();
        for (hook, delivery) in due {
            let (status, error) = self.post(&hook, &delivery.id, &delivery.event).await;
            self.webhooks
                .record_attempt(&delivery.id, status, error)
                .await?;
        }
        Ok(n)
    }

    async fn post(
        &self,
        hook: &Webhook,
        delivery_id: &str,
        event: &Event,
    ) -> (Option<u16>, Option<String>) {
        let body = match serde_json::to_vec(event) {
            Ok(b) => b,
            Err(e) => return (None, Some(format!("unserialisable event: {e}"))),
        };
        let signature = sign(&self.webhooks.secret_of(hook), &body);
        let sent = self
            .client
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("x-maas-event", event.kind.as_str())
            .header("x-maas-delivery", delivery_id)
            .header("x-maas-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(res) => {
                let status = res.status();
                let error = (!status.is_success()).then(|| format!("answered {status}"));
                (Some(status.as_u16()), error)
            }
            Err(e) if e.is_timeout() => (
                None,
                Some(format!(
                    "no answer within {} s",
                    self.config.timeout.as_secs()
                )),
            ),
            Err(e) => (None, Some(format!("could not post: {e}"))),
        }
    }

    /// Runs until `stop` resolves: due deliveries whenever one is queued
    /// and every [`DispatcherConfig::poll`], the API keys of `expiring`
    /// (users' and tenants' keys, if given) about to expire every
    /// [`DispatcherConfig::expiring_scan`]. Failures are logged and tried
    /// again at the next turn.
    pub async fn run(
        self,
        expiring: Option<(UserKeys, SharedClock)>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut poll = tokio::time::interval(self.config.poll);
        let mut scan = tokio::time::interval(self.config.expiring_scan);
        for t in [&mut poll, &mut scan] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = self.webhooks.queued() => {}
                _ = poll.tick() => {}
                _ = scan.tick() => {
                    if let Some((keys, clock)) = &expiring {
                        // Never creates the keyspace: on a data plane the
                        // control plane's arrives with its first artifact.
                        let scanned = match keys.existing_keyspace().await {
                            Ok(Some(ks)) => scan_expiring(&self.webhooks, keys.key_service(), &ks, &**clock).await,
                            Ok(None) => Ok(0),
                            Err(e) => Err(e),
                        };
                        if let Err(e) = scanned {
                            tracing::warn!(error = %e, "scanning for expiring keys failed");
                        }
                    }
                }
            }
            if let Err(e) = self.run_once().await {
                tracing::warn!(error = %e, "webhook deliveries failed; retrying");
            }
        }
    }
}

/// Emits `key.expiring` (once per key and expiry) for every live key of
/// `keyspace` that expires within 24 hours; returns how many were new.
pub async fn scan_expiring(
    webhooks: &Webhooks,
    keys: &KeyService,
    keyspace: &KeyspaceId,
    clock: &dyn Clock,
) -> Result<usize> {
    let now = clock.now();
    let horizon = now.add_millis(EXPIRING_WITHIN_MS);
    let mut query = KeyQuery {
        keyspace_id: Some(keyspace.clone()),
        owner_id: None,
        include_deleted: false,
        page: PageRequest::first(maas_core::storage::MAX_PAGE_SIZE),
    };
    let mut emitted = 0;
    loop {
        // Page after page with no count (a count scans the whole index).
        let page = keys.scan(&query).await?;
        for k in &page.items {
            let Some(expires) = k.expires else { continue };
            if expires <= now || expires > horizon || !k.enabled {
                continue;
            }
            let event = Event::new(
                EventType::KeyExpiring,
                now,
                serde_json::json!({
                    "key_id": k.id,
                    "name": k.name,
                    "owner": k.owner_id,
                    "expires_at": expires,
                }),
            );
            let once = format!("key.expiring:{}:{}", k.id, expires.as_millis());
            if webhooks.emit_once(&once, &event).await? {
                emitted += 1;
            }
        }
        match page.cursor {
            Some(c) => query.page.cursor = Some(c),
            None => break,
        }
    }
    Ok(emitted)
}
