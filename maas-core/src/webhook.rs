//! Webhooks: operators subscribe a URL to events (a budget past its soft
//! limit or exhausted, a key about to expire, a test); each event becomes a
//! delivery per subscribed webhook, stored before anything is sent, so it
//! is delivered at least once across restarts.
//!
//! - **Secrets.** A webhook's signing secret is derived from the
//!   deployment's key-hash secret ([`KeyHasher`]) and a random nonce kept
//!   with the webhook; it is shown once, at creation, and never stored.
//! - **Signatures.** A delivery is `POST {url}` with the JSON event
//!   `{id, type, created_at, data}`, `x-maas-event: <type>` and
//!   `x-maas-signature: sha256=<hex HMAC-SHA256 of the raw body>`
//!   ([`sign`]).
//! - **Once per period.** [`Webhooks::emit_once`] marks an event key (say,
//!   a budget's exhaustion in one period) with a create-if-absent record:
//!   of any number of nodes and requests, one emits it.
//! - **Retries.** A delivery that fails (an error, a timeout, any answer
//!   but 2xx) is tried again after 1 s, 2 s, 4 s, … (at most
//!   [`WebhookConfig::max_backoff`]) until [`WebhookConfig::retry_for`] has
//!   passed since the event, then marked failed. Each attempt is kept
//!   ([`Webhooks::deliveries`]).
//! - The sending itself is the caller's (`maas-http`'s dispatcher): this
//!   module says what is due ([`Webhooks::due`]) and records what happened
//!   ([`Webhooks::record_attempt`]).

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::audit::Actor;
use crate::catalog::{self, Entry};
use crate::clock::{Clock, SharedClock, SystemClock, Timestamp};
use crate::error::{Error, Result};
use crate::key::KeyHasher;
use crate::storage::Storage;
use crate::versioned::Versioned;

/// The record kind of webhooks.
pub const WEBHOOK_KIND: &str = "webhook";
/// The record kind of pending deliveries (what the dispatcher reads).
pub const DELIVERY_KIND: &str = "webhook_delivery";
/// The record kind of finished deliveries (delivered or failed), kept for
/// [`Webhooks::deliveries`] and never read by the dispatcher.
pub const FINISHED_KIND: &str = "webhook_delivery_done";
/// The record kind of events emitted once ([`Webhooks::emit_once`]).
pub const EVENT_MARK_KIND: &str = "webhook_event";
/// The longest webhook URL accepted.
pub const MAX_URL: usize = 2048;

/// What a webhook can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EventType {
    /// A budget's spent and reserved money passed its soft limit (once per
    /// budget period).
    #[serde(rename = "budget.soft_limit_reached")]
    BudgetSoftLimitReached,
    /// A budget refused a request: nothing is left this period (once per
    /// budget period).
    #[serde(rename = "budget.exhausted")]
    BudgetExhausted,
    /// An API key expires within 24 hours (once per key and expiry).
    #[serde(rename = "key.expiring")]
    KeyExpiring,
    /// Sent on demand ([`Webhooks::test`]).
    #[serde(rename = "webhook.test")]
    WebhookTest,
}

impl EventType {
    /// The name on the wire (`budget.exhausted`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::BudgetSoftLimitReached => "budget.soft_limit_reached",
            EventType::BudgetExhausted => "budget.exhausted",
            EventType::KeyExpiring => "key.expiring",
            EventType::WebhookTest => "webhook.test",
        }
    }
}

/// A subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// Identifier (`whk_…`).
    pub id: String,
    /// Where events are posted.
    pub url: String,
    /// What it receives.
    pub events: Vec<EventType>,
    /// With the deployment secret, derives the signing secret (not the
    /// secret itself).
    nonce: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// Optimistic-concurrency version.
    #[serde(default)]
    pub version: u64,
}

impl Versioned for Webhook {
    fn version(&self) -> u64 {
        self.version
    }
    fn set_version(&mut self, v: u64) {
        self.version = v;
    }
}

impl Entry for Webhook {
    const KIND: &'static str = WEBHOOK_KIND;
    fn id(&self) -> &str {
        &self.id
    }
    fn created_at(&self) -> Timestamp {
        self.created_at
    }
    fn audit_value(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({"id": self.id, "url": self.url, "events": self.events}))
    }
}

/// What to create a webhook with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// An `http` or `https` URL.
    pub url: String,
    /// At least one event type.
    pub events: Vec<EventType>,
}

/// A new webhook with its signing secret, shown this once.
#[derive(Clone, PartialEq, Eq)]
pub struct CreatedWebhook {
    /// The webhook.
    pub webhook: Webhook,
    /// The signing secret (`whsec_…`): keep it to check signatures.
    pub secret: String,
}

impl std::fmt::Debug for CreatedWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedWebhook")
            .field("webhook", &self.webhook)
            .field("secret", &"<secret>")
            .finish()
    }
}

/// An event as delivered: the body of the POST.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// Identifier (`evt_…`), the same in every delivery and retry.
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When (unix ms).
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub created_at: Timestamp,
    /// The details (the budget, the key, ...).
    pub data: serde_json::Value,
}

impl Event {
    /// A new event of `kind` at `now`.
    pub fn new(kind: EventType, now: Timestamp, data: serde_json::Value) -> Self {
        Event {
            id: format!("evt_{}", crate::id::ordered_random(now)),
            kind,
            created_at: now,
            data,
        }
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not delivered yet; tried again at `next_at`.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Given up after [`WebhookConfig::retry_for`].
    Failed,
}

/// One try of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attempt {
    /// When (unix ms).
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub at: Timestamp,
    /// The HTTP status answered, if any.
    pub status: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// An event on its way to one webhook, with every attempt so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Delivery {
    /// `{webhook_id}:{event_id}`.
    pub id: String,
    /// The webhook.
    pub webhook_id: String,
    /// The event (the body sent).
    pub event: Event,
    /// Where it stands.
    pub state: DeliveryState,
    /// When it is tried next, while pending (unix ms).
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub next_at: Timestamp,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
    /// Optimistic-concurrency version.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub version: u64,
}

impl Versioned for Delivery {
    fn version(&self) -> u64 {
        self.version
    }
    fn set_version(&mut self, v: u64) {
        self.version = v;
    }
}

impl Entry for Delivery {
    const KIND: &'static str = DELIVERY_KIND;
    fn id(&self) -> &str {
        &self.id
    }
    fn created_at(&self) -> Timestamp {
        self.event.created_at
    }
    fn audit_value(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "event": self.event.id, "type": self.event.kind, "state": self.state,
            "attempts": self.attempts.len(),
        }))
    }
}

/// A finished delivery, stored under [`FINISHED_KIND`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
struct Finished(Delivery);

impl Versioned for Finished {
    fn version(&self) -> u64 {
        self.0.version
    }
    fn set_version(&mut self, v: u64) {
        self.0.version = v;
    }
}

impl Entry for Finished {
    const KIND: &'static str = FINISHED_KIND;
    fn id(&self) -> &str {
        &self.0.id
    }
    fn created_at(&self) -> Timestamp {
        self.0.event.created_at
    }
    fn audit_value(&self) -> Option<serde_json::Value> {
        self.0.audit_value()
    }
}

/// The mark of an event emitted once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EventMark {
    id: String,
    event_id: String,
    created_at: Timestamp,
    #[serde(default)]
    version: u64,
}

impl Versioned for EventMark {
    fn version(&self) -> u64 {
        self.version
    }
    fn set_version(&mut self, v: u64) {
        self.version = v;
    }
}

impl Entry for EventMark {
    const KIND: &'static str = EVENT_MARK_KIND;
    fn id(&self) -> &str {
        &self.id
    }
    fn created_at(&self) -> Timestamp {
        self.created_at
    }
}

/// Settings of [`Webhooks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookConfig {
    /// How long after an event its delivery is retried. Default 24 h.
    pub retry_for: Duration,
    /// The first wait after a failure; doubled after each. Default 1 s.
    pub first_backoff: Duration,
    /// The longest wait between two attempts. Default 1 h.
    pub max_backoff: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            retry_for: Duration::from_secs(24 * 3600),
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3600),
        }
    }
}

/// The `x-maas-signature` value of `body` signed with `secret`:
/// `sha256=<hex HMAC-SHA256>`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Webhooks and their deliveries. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    storage: Storage,
    hasher: KeyHasher,
    clock: SharedClock,
    config: WebhookConfig,
    /// Woken when a delivery is queued.
    queued: Notify,
}

fn system() -> Actor {
    Actor::system()
}

fn check_url(url: &str) -> Result<()> {
    let ok = url.len() <= MAX_URL
        && (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() > "https://".len()
        && !url.chars().any(|c| c.is_control() || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "url",
            "must be an http:// or https:// URL (at most 2048 bytes, no spaces)",
        ))
    }
}

impl Webhooks {
    /// Webhooks over `storage`, their secrets derived with `hasher`'s
    /// secret, on the system clock.
    pub fn new(storage: Storage, hasher: KeyHasher) -> Self {
        Self::with_config(
            storage,
            hasher,
            WebhookConfig::default(),
            Arc::new(SystemClock),
        )
    }

    /// As [`Self::new`], with `config` and `clock`.
    pub fn with_config(
        storage: Storage,
        hasher: KeyHasher,
        config: WebhookConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Webhooks {
            inner: Arc::new(Inner {
                storage,
                hasher,
                clock,
                config,
                queued: Notify::new(),
            }),
        }
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn records(&self) -> &dyn crate::storage::RecordStore {
        &*self.inner.storage.records
    }

    /// The signing secret of `webhook`.
    pub fn secret_of(&self, webhook: &Webhook) -> String {
        let material = format!("maas webhook secret v1\0{}\0{}", webhook.id, webhook.nonce);
        format!(
            "whsec_{}",
            self.inner.hasher.hash(material.as_bytes()).to_hex()
        )
    }

    /// Creates a webhook; its secret is in the answer only. Bad input
    /// ([`Error::InvalidInput`] naming `url` or `events`) writes nothing.
    pub async fn create(&self, actor: &Actor, new: NewWebhook) -> Result<CreatedWebhook> {
        check_url(&new.url)?;
        if new.events.is_empty() {
            return Err(Error::invalid("events", "must name at least one event"));
        }
        let mut events = new.events;
        events.sort_by_key(|e| e.as_str());
        events.dedup();
        let now = self.now();
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let webhook = Webhook {
            id: format!("whk_{}", crate::id::ordered_random(now)),
            url: new.url,
            events,
            nonce: nonce.iter().map(|b| format!("{b:02x}")).collect(),
            created_at: now,
            version: 1,
        };
        catalog::create_entry(self.records(), actor, &webhook, now).await?;
        let secret = self.secret_of(&webhook);
        Ok(CreatedWebhook { webhook, secret })
    }

    /// The webhook `id`.
    pub async fn get(&self, id: &str) -> Result<Webhook> {
        catalog::get_entry(self.records(), id).await
    }

    /// Every webhook, by id.
    pub async fn list(&self) -> Result<Vec<Webhook>> {
        catalog::list_entries(self.records()).await
    }

    /// Removes the webhook `id` (its pending deliveries are dropped when
    /// they come due).
    pub async fn delete(&self, actor: &Actor, id: &str) -> Result<()> {
        catalog::delete_entry::<Webhook>(self.records(), actor, id, self.now()).await
    }

    /// Queues `event` for every webhook subscribed to its type; returns how
    /// many deliveries were queued.
    pub async fn emit(&self, event: &Event) -> Result<usize> {
        let hooks = self.list().await?;
        let mut n = 0;
        for w in hooks.iter().filter(|w| w.events.contains(&event.kind)) {
            self.queue(w, event).await?;
            n += 1;
        }
        Ok(n)
    }

    /// Emits `event` unless an event was emitted under `key` before (by any
    /// node): `Ok(false)` then. The event's id is derived from `key`, so
    /// nodes emitting it at once queue the same deliveries (each stored
    /// once); the key is marked only after the deliveries are queued, so a
    /// crash in between makes the next emit queue what is missing (at least
    /// once) rather than lose the event.
    pub async fn emit_once(&self, key: &str, event: &Event) -> Result<bool> {
        if self
            .records()
            .get_record(EVENT_MARK_KIND, key)
            .await?
            .is_some()
        {
            return Ok(false);
        }
        let hash = blake3::hash(format!("maas webhook event v1\0{key}").as_bytes());
        let event = Event {
            id: format!("evt_{}", &hash.to_hex()[..26]),
            ..event.clone()
        };
        self.emit(&event).await?;
        let mark = EventMark {
            id: key.to_owned(),
            event_id: event.id.clone(),
            created_at: event.created_at,
            version: 1,
        };
        match catalog::create_entry(self.records(), &system(), &mark, event.created_at).await {
            Ok(()) | Err(Error::Conflict { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Sends a `webhook.test` event to the webhook `id` only.
    pub async fn test(&self, id: &str) -> Result<Event> {
        let w = self.get(id).await?;
        let event = Event::new(
            EventType::WebhookTest,
            self.now(),
            serde_json::json!({"webhook_id": w.id}),
        );
        self.queue(&w, &event).await?;
        Ok(event)
    }

    async fn queue(&self, w: &Webhook, event: &Event) -> Result<()> {
        let d = Delivery {
            id: format!("{}:{}", w.id, event.id),
            webhook_id: w.id.clone(),
            event: event.clone(),
            state: DeliveryState::Pending,
            next_at: event.created_at,
            attempts: Vec::new(),
            version: 1,
        };
        match catalog::create_entry(self.records(), &system(), &d, event.created_at).await {
            // Queued before (a retried emit): once is enough.
            Ok(()) | Err(Error::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
        self.inner.queued.notify_one();
        Ok(())
    }

    /// Waits until a delivery is queued (the dispatcher's wake-up).
    pub async fn queued(&self) {
        self.inner.queued.notified().await;
    }

    /// Every delivery of the webhook `id`, oldest event first (by time, then id).
    pub async fn deliveries(&self, id: &str) -> Result<Vec<Delivery>> {
        self.get(id).await?;
        let prefix = format!("{id}:");
        let finished = catalog::list_entries::<Finished>(self.records()).await?;
        let mut out: Vec<Delivery> = catalog::list_entries::<Delivery>(self.records())
            .await?
            .into_iter()
            .chain(finished.into_iter().map(|f| f.0))
            .filter(|d| d.id.starts_with(&prefix))
            .collect();
        // A delivery moved while both were listed: once, its latest state.
        out.sort_by(|a, b| {
            (a.event.created_at, &a.event.id)
                .cmp(&(b.event.created_at, &b.event.id))
                .then(b.attempts.len().cmp(&a.attempts.len()))
        });
        out.dedup_by(|later, earlier| later.id == earlier.id);
        Ok(out)
    }

    /// The pending deliveries due at `now`, with their webhooks (deliveries
    /// of removed webhooks are marked failed). Reads pending deliveries
    /// only: finished ones have moved to [`FINISHED_KIND`].
    pub async fn due(&self) -> Result<Vec<(Webhook, Delivery)>> {
        let now = self.now();
        let mut out = Vec::new();
        for d in catalog::list_entries::<Delivery>(self.records()).await? {
            if d.state != DeliveryState::Pending || d.next_at > now {
                continue;
            }
            match self.get(&d.webhook_id).await {
                Ok(w) => out.push((w, d)),
                Err(e) if e.is_not_found() => {
                    self.finish(&d, DeliveryState::Failed).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Records an attempt of delivery `id` that got `status` (or `error`):
    /// delivered on a 2xx, otherwise retried after the next backoff, or
    /// failed once [`WebhookConfig::retry_for`] has passed.
    pub async fn record_attempt(
        &self,
        id: &str,
        status: Option<u16>,
        error: Option<String>,
    ) -> Result<Delivery> {
        let now = self.now();
        let cfg = self.inner.config;
        let d = catalog::update_entry(
            self.records(),
            &system(),
            id,
            "webhook_delivery.attempt",
            now,
            |d: &mut Delivery| {
                d.attempts.push(Attempt {
                    at: now,
                    status,
                    error: error.clone(),
                });
                if status.is_some_and(|s| (200..300).contains(&s)) {
                    d.state = DeliveryState::Delivered;
                    return Ok(());
                }
                let tries = u32::try_from(d.attempts.len()).unwrap_or(u32::MAX);
                let wait = cfg
                    .first_backoff
                    .saturating_mul(2u32.saturating_pow(tries.saturating_sub(1).min(30)))
                    .min(cfg.max_backoff);
                let next = now.add_millis(catalog::millis(wait));
                let give_up = d
                    .event
                    .created_at
                    .add_millis(catalog::millis(cfg.retry_for));
                if next > give_up {
                    d.state = DeliveryState::Failed;
                } else {
                    d.next_at = next;
                }
                Ok(())
            },
        )
        .await?;
        if d.state != DeliveryState::Pending {
            self.move_finished(&d).await?;
        }
        Ok(d)
    }

    /// Moves a finished delivery out of the pending ones: its finished copy
    /// first, so a crash in between leaves it twice (shown once), never lost.
    async fn move_finished(&self, d: &Delivery) -> Result<()> {
        let now = self.now();
        let done = Finished(Delivery {
            version: 1,
            ..d.clone()
        });
        match catalog::create_entry(self.records(), &system(), &done, now).await {
            Ok(()) | Err(Error::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
        match catalog::delete_entry::<Delivery>(self.records(), &system(), &d.id, now).await {
            Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn finish(&self, d: &Delivery, state: DeliveryState) -> Result<()> {
        let done = Delivery { state, ..d.clone() };
        self.move_finished(&done).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn event_types_have_their_wire_names() {
        for t in [
            EventType::BudgetSoftLimitReached,
            EventType::BudgetExhausted,
            EventType::KeyExpiring,
            EventType::WebhookTest,
        ] {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        assert!(serde_json::from_str::<EventType>("\"budget.nope\"").is_err());
    }

    #[test]
    fn urls_are_checked() {
        for ok in ["http://127.0.0.1:9/hook", "https://example.com/x?y=1"] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ftp://x",
            "http://",
            "https://a b",
            "javascript:alert(1)",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
