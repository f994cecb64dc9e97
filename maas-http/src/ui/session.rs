//! Server-side browser sessions and the login rate limit.
//!
//! A session is a random 256-bit id in a cookie; the server keeps only its
//! keyed hash (a memory dump does not hold live cookies), with who it is
//! for, when it started and when it was last used. It ends after
//! [`SessionConfig::idle`] without use, after [`SessionConfig::absolute`]
//! whatever, or at logout. Time is the [`Clock`](maas_core::Clock)'s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use maas_core::clock::{SharedClock, Timestamp};
use rand::Rng;

/// How long sessions last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// A session not used for this long ends. Default 30 minutes.
    pub idle: Duration,
    /// A session ends this long after login, used or not. Default 12 hours.
    pub absolute: Duration,
    /// The most sessions kept at once (the oldest go first). Default 10,000.
    pub max_sessions: usize,
    /// Failed logins allowed per client address per minute. Default 10.
    pub logins_per_minute: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(12 * 3600),
            max_sessions: 10_000,
            logins_per_minute: 10,
        }
    }
}

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Who logged in (`admin`, or the portal's caller).
    pub subject: String,
    /// The subject's groups, as the login found them (the portal's caller;
    /// none for the dashboard).
    pub groups: Vec<String>,
    /// The credential's kind or scope, as the login recorded it.
    pub detail: String,
    /// The id of the API key logged in with, if it was one (an id, never a
    /// secret).
    pub key_id: Option<String>,
    /// When it started.
    pub started: Timestamp,
    /// When it ends at the latest besides [`SessionConfig::absolute`] (the
    /// credential's own expiry), if earlier.
    pub until: Option<Timestamp>,
    seen: Timestamp,
}

/// Who a new session is for ([`Sessions::start_for`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewSession {
    /// Who logged in.
    pub subject: String,
    /// Their groups.
    pub groups: Vec<String>,
    /// The credential's kind or scope.
    pub detail: String,
    /// The id of the API key logged in with, if any.
    pub key_id: Option<String>,
    /// The credential's expiry, if it has one: the session ends then too.
    pub until: Option<Timestamp>,
}

/// The sessions of one site (the dashboard's or the portal's).
#[derive(Debug, Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: SessionConfig,
    clock: SharedClock,
    key: [u8; 32],
    live: Mutex<HashMap<[u8; 32], Session>>,
    failures: Mutex<HashMap<String, (Timestamp, u32)>>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Sessions {
    /// No sessions yet.
    pub fn new(config: SessionConfig, clock: SharedClock) -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Sessions {
            inner: Arc::new(Inner {
                config,
                clock,
                key,
                live: Mutex::new(HashMap::new()),
                failures: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &SessionConfig {
        &self.inner.config
    }

    fn hash(&self, id: &str) -> [u8; 32] {
        *blake3::keyed_hash(&self.inner.key, id.as_bytes()).as_bytes()
    }

    fn expired(&self, s: &Session, now: Timestamp) -> bool {
        let c = &self.inner.config;
        now.as_millis() - s.seen.as_millis() >= ms(c.idle)
            || now.as_millis() - s.started.as_millis() >= ms(c.absolute)
            || s.until.is_some_and(|u| now >= u)
    }

    /// Starts a session for `subject`; its id (for the cookie).
    pub fn start(&self, subject: &str, detail: &str) -> String {
        self.start_for(NewSession {
            subject: subject.to_owned(),
            detail: detail.to_owned(),
            ..NewSession::default()
        })
    }

    /// Starts a session for `new`; its id (for the cookie).
    pub fn start_for(&self, new: NewSession) -> String {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let now = self.inner.clock.now();
        let mut live = self
            .inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if live.len() >= self.inner.config.max_sessions {
            live.retain(|_, s| !self.expired(s, now));
            while live.len() >= self.inner.config.max_sessions {
                let oldest = live.iter().min_by_key(|(_, s)| s.seen).map(|(k, _)| *k);
                match oldest {
                    Some(k) => live.remove(&k),
                    None => break,
                };
            }
        }
        live.insert(
            self.hash(&id),
            Session {
                subject: new.subject,
                groups: new.groups,
                detail: new.detail,
                key_id: new.key_id,
                started: now,
                until: new.until,
                seen: now,
            },
        );
        id
    }

    /// The live session of `id`, marked used now; `None` when there is none
    /// or it expired (it is then forgotten).
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = self.inner.clock.now();
        let key = self.hash(id);
        let mut live = self
            .inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let s = live.get_mut(&key)?;
        if self.expired(s, now) {
            live.remove(&key);
            return None;
        }
        s.seen = now;
        Some(s.clone())
    }

    /// Ends the session of `id`.
    pub fn end(&self, id: &str) {
        let key = self.hash(id);
        self.inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
    }

    /// Whether `client` may try to log in now (fewer than
    /// [`SessionConfig::logins_per_minute`] failures in its current minute).
    pub fn may_try(&self, client: &str) -> bool {
        let now = self.inner.clock.now();
        let failures = self
            .inner
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match failures.get(client) {
            Some((start, n)) if now.as_millis() - start.as_millis() < 60_000 => {
                *n < self.inner.config.logins_per_minute
            }
            _ => true,
        }
    }

    /// Counts a failed login of `client`.
    pub fn failed(&self, client: &str) {
        let now = self.inner.clock.now();
        let mut failures = self
            .inner
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if failures.len() >= 100_000 {
            failures.retain(|_, (start, _)| now.as_millis() - start.as_millis() < 60_000);
        }
        let entry = failures.entry(client.to_owned()).or_insert((now, 0));
        if now.as_millis() - entry.0.as_millis() >= 60_000 {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use maas_core::ManualClock;

    #[test]
    fn sessions_end_when_idle_when_old_and_at_logout() {
        let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
        let s = Sessions::new(SessionConfig::default(), Arc::new(clock.clone()));
        let id = s.start("admin", "admin token");
        assert_eq!(id.len(), 64);
        assert_eq!(s.get(&id).unwrap().subject, "admin");
        assert!(s.get("not-a-session").is_none());
        // Used every 29 minutes: alive until 12 hours.
        for _ in 0..24 {
            clock.advance(Duration::from_secs(29 * 60));
            assert!(s.get(&id).is_some());
        }
        clock.advance(Duration::from_secs(29 * 60));
        assert!(s.get(&id).is_none(), "12 h absolute");
        let id = s.start("admin", "");
        clock.advance(Duration::from_secs(30 * 60));
        assert!(s.get(&id).is_none(), "30 min idle");
        let id = s.start("admin", "");
        s.end(&id);
        assert!(s.get(&id).is_none(), "logged out");
    }

    #[test]
    fn failed_logins_are_limited_per_client_and_minute() {
        let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
        let s = Sessions::new(SessionConfig::default(), Arc::new(clock.clone()));
        for _ in 0..10 {
            assert!(s.may_try("10.0.0.1"));
            s.failed("10.0.0.1");
        }
        assert!(!s.may_try("10.0.0.1"));
        assert!(s.may_try("10.0.0.2"), "another client");
        clock.advance(Duration::from_secs(60));
        assert!(s.may_try("10.0.0.1"), "a new minute");
    }

    #[test]
    fn a_session_ends_with_its_credential() {
        let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
        let s = Sessions::new(SessionConfig::default(), Arc::new(clock.clone()));
        let id = s.start_for(NewSession {
            subject: "alice".into(),
            groups: vec!["premium-users".into()],
            detail: "maas token".into(),
            key_id: None,
            until: Some(Timestamp::from_millis(1_000_000 + 10 * 60_000)),
        });
        assert_eq!(s.get(&id).unwrap().groups, ["premium-users"]);
        clock.advance(Duration::from_secs(9 * 60));
        assert!(s.get(&id).is_some());
        clock.advance(Duration::from_secs(60));
        assert!(s.get(&id).is_none(), "the token expired");
    }

    #[test]
    fn the_oldest_sessions_go_past_the_cap() {
        let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
        let config = SessionConfig {
            max_sessions: 2,
            ..SessionConfig::default()
        };
        let s = Sessions::new(config, Arc::new(clock.clone()));
        let a = s.start("a", "");
        clock.advance(Duration::from_secs(1));
        let b = s.start("b", "");
        clock.advance(Duration::from_secs(1));
        let c = s.start("c", "");
        assert!(s.get(&a).is_none());
        assert!(s.get(&b).is_some() && s.get(&c).is_some());
    }
}
