//! # maas-store-redis
//!
//! The Redis backend of maas: state shared by every replica of a
//! deployment. [`RedisStore`] implements every storage trait and runs the
//! whole conformance suite of `maas-core`. This module holds the counters
//! that must be exact (remaining uses, rate-limit windows, token limits and
//! budgets, the all-or-none reservation of admission); `store` the
//! configuration, the audit log and usage.
//!
//! ## How a counter operation stays exact
//!
//! The operations of the request path — a remaining use spent, a window
//! taken, the all-or-none reservation of admission and its settlement —
//! are each one script run (`script::OPS`): it reads the counters, runs
//! the arithmetic of `maas_core::counter` on them and writes the result,
//! atomically on the server. One round trip, whatever other replicas do at
//! the same moment: no retry, no lock, no lost update, and a reservation is
//! all or none. The script answers the states it read; the answer given is
//! the model's own, computed from them, and the script must have written
//! exactly what the model would have (the two disagreeing is an internal
//! error, never a silent drift; proptests drive both over arbitrary states).
//!
//! Lua's numbers are doubles, exact only up to 2^53, while budgets count in
//! 10⁻⁹ units up to 10¹⁸ and hold counters have a limit of `u64::MAX`. An
//! operation with a number past 2^53 (in its limits, its costs or the
//! stored states) takes the exact path instead: it starts from the
//! counters as this process last wrote or read them (versions remembered),
//! computes the new states in Rust, and writes them with a compare-and-set
//! script that checks no version moved; if one did, the script answers the
//! current states and the operation is computed again from them (a striped
//! lock keeps this process's own changes of one counter in turn). The
//! administrative changes (a balance set or adjusted, a window reset) take
//! that path too.
//!
//! Every counter write also sets a marker key (see `CAS` and
//! `script::OPS`), so a write whose answer was lost is never applied
//! twice.
//!
//! Counters live under `{prefix}b:{id}` (balances) and `{prefix}l:{id}`
//! (limit counters), as hashes of `v` (version) and `s` (the state, JSON).
//! The braces are literal: the prefix is a Redis Cluster hash tag, so
//! every key one script touches is in the deployment's one slot.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use maas_core::counter::{
    Balance, BalanceOp, LimitOp, LimitSpec, LimitState, Refill, Reserved, SettleOp, Spend,
    WindowSpec, WindowTake, reserve_all,
};
use maas_core::storage::CounterStore;
use maas_core::{Error, Result, Timestamp};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;

mod script;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

/// How many times an operation is tried when other replicas keep changing
/// its counters in between; past it, the operation fails as unavailable.
pub const MAX_TRIES: usize = 64;

/// Writes new states if every version is still the one read: `KEYS` the
/// counters then this write's marker, `ARGV` their versions (`0`: absent),
/// their new states (`""`: remove), then how long the marker lives (ms).
/// Returns 1 when written (and the marker set, so that a caller who lost
/// the answer can learn that it was applied); when a version moved, every
/// counter's current version and state (`0` and `""`: absent), so the
/// caller retries without reading again.
const CAS: &str = r#"
local n = #KEYS - 1
for i = 1, n do
  local v = redis.call('HGET', KEYS[i], 'v')
  if (v or '0') ~= ARGV[i] then
    local now = {}
    for j = 1, n do
      local cur = redis.call('HMGET', KEYS[j], 'v', 's')
      now[2 * j - 1] = cur[1] or '0'
      now[2 * j] = cur[2] or ''
    end
    return now
  end
end
for i = 1, n do
  local s = ARGV[n + i]
  if s == '' then
    redis.call('DEL', KEYS[i])
  else
    redis.call('HSET', KEYS[i], 'v', tostring(tonumber(ARGV[i]) + 1), 's', s)
  end
end
redis.call('SET', KEYS[n + 1], '1', 'PX', ARGV[2 * n + 1])
return 1
"#;

/// Settings of a [`RedisStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port/db` (or `rediss://`, `redis+unix://`).
    pub url: String,
    /// Names this deployment's keys, so deployments can share a server:
    /// every key is `{prefix}name`, the braces making the prefix a Redis
    /// Cluster hash tag. All of a deployment's keys hash to one slot, so
    /// every script's keys do too and the store runs on a Redis Cluster
    /// as on one server (on one shard of it: a deployment is not spread
    /// over several). No `{` or `}` in it.
    pub prefix: String,
    /// The longest one command, or connecting, may take before the operation
    /// fails as unavailable. Default 1 s.
    pub timeout: Duration,
}

impl RedisConfig {
    /// The server at `url`, keys named `{maas}…` (the prefix `maas`).
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "maas".into(),
            timeout: Duration::from_secs(1),
        }
    }
}

/// Every storage trait on Redis, shared by every replica connected to it.
/// Cheap to clone (one multiplexed, self-reconnecting connection).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    con: ConnectionManager,
    prefix: String,
    cas: redis::Script,
    ops: redis::Script,
    tx: redis::Script,
    touch: redis::Script,
    /// The version and JSON state this process last wrote or saw of each
    /// counter: a change starts from them and checks them in its write (one
    /// round trip); if another replica moved one, the write answers the
    /// current states and the change is computed again from those.
    known: std::sync::Mutex<std::collections::HashMap<String, Row>>,
    /// Changes of one counter from this process wait for each other here,
    /// so only other replicas can move a version under a change (striped
    /// by key; several stripes are taken in index order).
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Counters another replica changed lately: operations left until a
    /// compare-and-set from remembered states is tried again.
    contended: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// Names this process's writes (with `writes`): see [`CAS`].
    nonce: u64,
    writes: std::sync::atomic::AtomicU64,
    /// How long a write's marker lives: ten times the command timeout,
    /// ample for asking after a lost answer.
    marker_ms: u64,
}

/// The number of lock stripes of one store.
const STRIPES: usize = 64;

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

pub(crate) fn unavailable(e: &redis::RedisError) -> Error {
    Error::unavailable(format!("redis: {e}"), true)
}

fn corrupt(key: &str) -> Error {
    Error::internal(format!("the counter {key} in redis is unreadable"))
}

/// A counter as read: its key, version and state.
struct Read<T> {
    key: String,
    version: u64,
    state: Option<T>,
}

/// A counter's version and JSON state as stored (`0`, `None`: absent).
type Row = (u64, Option<String>);

/// What a compare-and-set answered.
enum Cas {
    Written,
    /// A version moved: each counter's current version and JSON state.
    Moved(Vec<Row>),
    /// The answer was lost (a timeout, a dropped connection): applied or
    /// not, its marker tells.
    Lost(Error),
}

/// At most this many counters' last known versions are remembered.
const KNOWN_MAX: usize = 100_000;

/// After another replica was seen changing a counter, this many operations
/// on it go straight to the script instead of trying a compare-and-set
/// from remembered states first.
const CONTENDED_OPS: u32 = 64;

impl RedisStore {
    /// Connects to the server of `config`.
    pub async fn connect(config: &RedisConfig) -> Result<Self> {
        if config.prefix.contains(['{', '}']) {
            return Err(Error::invalid(
                "redis",
                "the key prefix must not contain '{' or '}' (it is the deployment's hash tag)",
            ));
        }
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| Error::invalid("redis", format!("not a redis URL: {e}")))?;
        // Fail fast, never hang: each attempt and each command is bounded,
        // and a lost connection is retried in the background.
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1);
        let con = client
            .get_connection_manager_with_config(settings)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                con,
                prefix: format!("{{{}}}", config.prefix),
                cas: redis::Script::new(CAS),
                ops: redis::Script::new(script::OPS),
                tx: redis::Script::new(store::TX_SCRIPT),
                touch: redis::Script::new(store::TOUCH_SCRIPT),
                stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
                known: std::sync::Mutex::new(std::collections::HashMap::new()),
                contended: std::sync::Mutex::new(std::collections::HashMap::new()),
                nonce: rand::random(),
                writes: std::sync::atomic::AtomicU64::new(0),
                marker_ms: u64::try_from(config.timeout.as_millis().saturating_mul(10))
                    .unwrap_or(u64::MAX)
                    .max(1_000),
            }),
        })
    }

    /// Refuses a server that may evict this store's keys: any
    /// `maxmemory-policy` but `noeviction`. The `allkeys-*` policies drop
    /// keys of any kind under memory pressure, counters and keys included;
    /// the `volatile-*` ones drop keys with a TTL, which here are the
    /// markers that make a retried counter write apply once. A server that
    /// does not answer `CONFIG GET` (renamed or forbidden by an ACL) is
    /// accepted: the operator vouches for it.
    pub async fn check_eviction(&self) -> Result<()> {
        let mut con = self.inner.con.clone();
        let got: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut con)
            .await;
        match got {
            Ok(kv) => match kv.get(1) {
                Some(policy) if policy != "noeviction" => Err(Error::invalid(
                    "redis",
                    format!(
                        "maxmemory-policy is {policy}: Redis may evict maas's keys and counters under \
                         memory pressure; set maxmemory-policy noeviction"
                    ),
                )),
                _ => Ok(()),
            },
            Err(e) if e.kind() == redis::ErrorKind::Io => Err(unavailable(&e)),
            Err(_) => Ok(()),
        }
    }

    /// The storage traits bundle over this store.
    pub fn storage(self) -> maas_core::Storage {
        maas_core::Storage::from_backend(Arc::new(self))
    }

    /// Holds the stripes of `keys` (in index order: no deadlock) until the
    /// guards drop.
    pub(crate) async fn lock(&self, keys: &[String]) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let idx = Self::stripes_of(keys);
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            if let Some(m) = self.inner.stripes.get(i) {
                guards.push(m.lock().await);
            }
        }
        guards
    }

    /// The stripe indexes of `keys`, sorted, each once.
    fn stripes_of(keys: &[String]) -> Vec<usize> {
        use std::hash::{Hash, Hasher};
        let mut idx: Vec<usize> = keys
            .iter()
            .map(|k| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                k.hash(&mut h);
                (h.finish() % STRIPES as u64) as usize
            })
            .collect();
        idx.sort_unstable();
        idx.dedup();
        idx
    }

    /// The stripes of `keys` if none is held now (see [`Self::lock`]).
    fn try_lock(&self, keys: &[String]) -> Option<Vec<tokio::sync::MutexGuard<'_, ()>>> {
        Self::stripes_of(keys)
            .into_iter()
            .map(|i| self.inner.stripes.get(i).and_then(|m| m.try_lock().ok()))
            .collect()
    }

    /// Whether another replica changed one of `keys` lately (a
    /// compare-and-set on it failed within its last [`CONTENDED_OPS`]
    /// operations here); counts this operation.
    fn contended(&self, keys: &[String]) -> bool {
        let mut c = self
            .inner
            .contended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut any = false;
        for k in keys {
            if let Some(left) = c.get_mut(k) {
                any = true;
                *left -= 1;
                if *left == 0 {
                    c.remove(k);
                }
            }
        }
        any
    }

    fn mark_contended(&self, keys: &[String]) {
        let mut c = self
            .inner
            .contended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.len() + keys.len() > KNOWN_MAX {
            c.clear();
        }
        for k in keys {
            c.insert(k.clone(), CONTENDED_OPS);
        }
    }

    /// `name` under this store's prefix.
    pub(crate) fn k(&self, name: &str) -> String {
        format!("{}{name}", self.inner.prefix)
    }

    fn balance_key(&self, id: &str) -> String {
        self.k(&format!("b:{id}"))
    }

    fn limit_key(&self, id: &str) -> String {
        self.k(&format!("l:{id}"))
    }

    /// The distinct ids among `ids`, in first-seen order (an id
    /// may come twice in one reservation or settlement).
    fn distinct<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
        let mut out: Vec<&str> = Vec::new();
        for id in ids {
            if !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }

    /// Reads `keys` (with their versions) in one round trip.
    async fn read<T: DeserializeOwned>(&self, keys: Vec<String>) -> Result<Vec<Read<T>>> {
        let rows = self.read_raw(&keys).await?;
        Self::decode(keys, rows)
    }

    fn decode<T: DeserializeOwned>(keys: Vec<String>, rows: Vec<Row>) -> Result<Vec<Read<T>>> {
        keys.into_iter()
            .zip(rows)
            .map(|(key, (version, state))| {
                let state = match state.filter(|s| !s.is_empty()) {
                    Some(s) => Some(serde_json::from_str(&s).map_err(|_| corrupt(&key))?),
                    None => None,
                };
                Ok(Read {
                    key,
                    version,
                    state,
                })
            })
            .collect()
    }

    fn known(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Row>> {
        self.inner
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The last known versions and states of `keys`, if all are known.
    fn remembered(&self, keys: &[String]) -> Option<Vec<Row>> {
        let known = self.known();
        keys.iter().map(|k| known.get(k).cloned()).collect()
    }

    fn remember(&self, keys: &[String], rows: &[Row]) {
        let mut known = self.known();
        if known.len() + keys.len() > KNOWN_MAX {
            known.clear();
        }
        for (k, row) in keys.iter().zip(rows) {
            known.insert(k.clone(), row.clone());
        }
    }

    fn forget(&self, keys: &[String]) {
        let mut known = self.known();
        for k in keys {
            known.remove(k);
        }
    }

    /// A key naming one write, set by the write itself (see [`CAS`]).
    fn marker(&self) -> String {
        let n = self
            .inner
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.k(&format!("w:{:x}.{n:x}", self.inner.nonce))
    }

    /// Whether the write that set `marker` was applied: asked after its
    /// answer was lost, on the same connection (so after the write, if
    /// Redis received it) or on a new one (the old one is gone).
    async fn applied(&self, marker: &str) -> Result<bool> {
        self.idempotent(|mut con| async move {
            redis::cmd("EXISTS").arg(marker).query_async(&mut con).await
        })
        .await
    }

    /// Runs a command that changes nothing, again if it met a dropped
    /// connection (the manager replaces it on the way), at most 3 times.
    async fn idempotent<T, F, Fut>(&self, mut command: F) -> Result<T>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let mut tries = 0;
        loop {
            match command(self.inner.con.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(e) if tries < 3 && (e.is_connection_dropped() || e.is_io_error()) => {
                    tries += 1;
                }
                Err(e) => return Err(unavailable(&e)),
            }
        }
    }

    /// Writes `new` states over what `read` saw, if nothing moved since;
    /// the write sets `marker`.
    async fn write<T>(
        &self,
        read: &[Read<T>],
        new: &[Option<String>],
        marker: &str,
    ) -> Result<Cas> {
        let mut call = self.inner.cas.prepare_invoke();
        for r in read {
            call.key(&r.key);
        }
        call.key(marker);
        for r in read {
            call.arg(r.version);
        }
        for s in new {
            call.arg(s.as_deref().unwrap_or(""));
        }
        call.arg(self.inner.marker_ms);
        let mut con = self.inner.con.clone();
        let answer: redis::Value = match call.invoke_async(&mut con).await {
            Ok(answer) => answer,
            // Sent, maybe applied, answer lost.
            Err(e) if e.is_timeout() || e.is_connection_dropped() || e.is_io_error() => {
                return Ok(Cas::Lost(unavailable(&e)));
            }
            Err(e) => return Err(unavailable(&e)),
        };
        match answer {
            redis::Value::Int(1) => Ok(Cas::Written),
            redis::Value::Array(items) => {
                let strings: Vec<String> = items
                    .into_iter()
                    .map(redis::from_redis_value::<String>)
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| Error::internal(format!("redis: unreadable counters: {e}")))?;
                let rows = strings
                    .chunks(2)
                    .map(|c| {
                        let version = c.first().and_then(|v| v.parse().ok()).unwrap_or(0);
                        let state = c.get(1).filter(|s| !s.is_empty()).cloned();
                        (version, state)
                    })
                    .collect();
                Ok(Cas::Moved(rows))
            }
            other => Err(Error::internal(format!(
                "redis: unexpected answer to a counter write: {other:?}"
            ))),
        }
    }

    /// The cheapest way to run a counter operation when this process wrote
    /// its counters last: one compare-and-set from the remembered states (a
    /// tiny script). `None` (go on to [`Self::compute`]) when a state is
    /// not remembered, another operation of this process holds one of the
    /// counters, another replica changed them lately or just now, or the
    /// answer would write nothing (a refusal is only given from states just
    /// read).
    async fn try_remembered<T, R>(
        &self,
        keys: &[String],
        step: &mut impl FnMut(&[Option<T>]) -> (Option<Vec<Option<T>>>, R),
    ) -> Result<Option<R>>
    where
        T: DeserializeOwned + Serialize + Clone,
    {
        if self.contended(keys) {
            return Ok(None);
        }
        let Some(_held) = self.try_lock(keys) else {
            return Ok(None);
        };
        let Some(rows) = self.remembered(keys) else {
            return Ok(None);
        };
        let read: Vec<Read<T>> = Self::decode(keys.to_vec(), rows.clone())?;
        let states: Vec<Option<T>> = read.iter().map(|r| r.state.clone()).collect();
        let (Some(new), answer) = step(&states) else {
            return Ok(None);
        };
        let json: Vec<Option<String>> = new
            .iter()
            .map(|s| s.as_ref().map(to_json).transpose())
            .collect::<Result<_>>()?;
        let marker = self.marker();
        let landed = match self.write(&read, &json, &marker).await? {
            Cas::Written => true,
            Cas::Moved(_) => false,
            Cas::Lost(e) => match self.applied(&marker).await {
                Ok(landed) => landed,
                Err(_) => {
                    self.forget(keys);
                    return Err(e);
                }
            },
        };
        if !landed {
            self.forget(keys);
            self.mark_contended(keys);
            return Ok(None);
        }
        self.remember(keys, &Self::after(&rows, &json));
        Ok(Some(answer))
    }

    /// The rows after writing `json` over `rows`.
    fn after(rows: &[Row], json: &[Option<String>]) -> Vec<Row> {
        rows.iter()
            .zip(json)
            .map(|((v, _), s)| match s {
                Some(s) => (v + 1, Some(s.clone())),
                None => (0, None),
            })
            .collect()
    }

    /// A counter operation of the request path: the cheap compare-and-set
    /// from remembered states, else the computing script with `args`, else
    /// (no `args`, or declined: numbers past 2^53) the exact path.
    async fn counter_op<T, R>(
        &self,
        keys: Vec<String>,
        args: Option<Vec<String>>,
        mut step: impl FnMut(&[Option<T>]) -> (Option<Vec<Option<T>>>, R),
    ) -> Result<R>
    where
        T: DeserializeOwned + Serialize + Clone + PartialEq,
    {
        if let Some(args) = args {
            if let Some(answer) = self.try_remembered(&keys, &mut step).await? {
                return Ok(answer);
            }
            if let Some(answer) = self.compute(&keys, args, &mut step).await? {
                return Ok(answer);
            }
        }
        self.update(keys, step).await
    }

    /// Runs a counter operation inside Redis ([`script::OPS`] with `args`)
    /// over `keys`: one round trip, whatever other replicas do. The answer
    /// is the model's (`step`) from the states the script read, and the
    /// script must have written what the model would have (else an internal
    /// error: the two disagree). `None` when the script declined (a number
    /// past what Lua holds exactly): the caller takes the exact path.
    async fn compute<T, R>(
        &self,
        keys: &[String],
        mut args: Vec<String>,
        step: &mut impl FnMut(&[Option<T>]) -> (Option<Vec<Option<T>>>, R),
    ) -> Result<Option<R>>
    where
        T: DeserializeOwned + Clone + PartialEq,
    {
        let n = keys.len();
        if let Some(ttl) = args.get_mut(2) {
            *ttl = self.inner.marker_ms.to_string();
        }
        for _ in 0..3 {
            let marker = self.marker();
            let mut call = self.inner.ops.prepare_invoke();
            for k in keys {
                call.key(k);
            }
            call.key(&marker);
            for a in &args {
                call.arg(a);
            }
            let mut con = self.inner.con.clone();
            type Answer = (bool, Vec<Row>, Option<Vec<Row>>, Option<Vec<u64>>);
            let (written, read, wrote, versions): Answer = match call
                .invoke_async::<Vec<redis::Value>>(&mut con)
                .await
            {
                Ok(answer) => {
                    let strings = |range: std::ops::Range<usize>| -> Result<Vec<Row>> {
                        answer
                            .get(range)
                            .ok_or_else(|| Error::internal("redis: a short counter answer"))?
                            .iter()
                            .map(|v| {
                                let s: String = redis::from_redis_value_ref(v).map_err(|e| {
                                    Error::internal(format!("redis: unreadable counters: {e}"))
                                })?;
                                Ok((0, Some(s).filter(|s| !s.is_empty())))
                            })
                            .collect()
                    };
                    let status: i64 = answer
                        .first()
                        .and_then(|v| redis::from_redis_value_ref(v).ok())
                        .unwrap_or(-1);
                    let versions = |from: usize| -> Option<Vec<u64>> {
                        answer
                            .get(from..from + n)?
                            .iter()
                            .map(|v| redis::from_redis_value_ref(v).ok())
                            .collect()
                    };
                    match status {
                        1 => (
                            true,
                            strings(1..1 + n)?,
                            Some(strings(1 + n..1 + 2 * n)?),
                            versions(1 + 2 * n),
                        ),
                        0 => (false, strings(1..1 + n)?, None, versions(1 + n)),
                        _ => return Ok(None),
                    }
                }
                // Sent, maybe applied, answer lost: the marker holds
                // the states it read if it was.
                Err(e) if e.is_timeout() || e.is_connection_dropped() || e.is_io_error() => {
                    let lost = unavailable(&e);
                    let got: Option<String> = match self
                        .idempotent(|mut con| {
                            let marker = marker.clone();
                            async move { redis::cmd("GET").arg(marker).query_async(&mut con).await }
                        })
                        .await
                    {
                        Ok(got) => got,
                        Err(_) => {
                            self.forget(keys);
                            return Err(lost);
                        }
                    };
                    let Some(got) = got else { continue };
                    let rows = got
                        .split('\n')
                        .map(|s| (0, Some(s.to_owned()).filter(|s| !s.is_empty())))
                        .collect::<Vec<Row>>();
                    if rows.len() != n {
                        return Err(Error::internal("redis: an unreadable write marker"));
                    }
                    (true, rows, None, None)
                }
                Err(e) => return Err(unavailable(&e)),
            };
            // Remembered for a cheap compare-and-set next time: the states
            // now in Redis, with their versions.
            match (&versions, &wrote) {
                (Some(v), Some(w)) => {
                    let rows: Vec<Row> = v
                        .iter()
                        .zip(w)
                        .map(|(v, (_, s))| (v + 1, s.clone()))
                        .collect();
                    self.remember(keys, &rows);
                }
                (Some(v), None) if !written => {
                    let rows: Vec<Row> = v
                        .iter()
                        .zip(&read)
                        .map(|(v, (_, s))| (*v, s.clone()))
                        .collect();
                    self.remember(keys, &rows);
                }
                _ => self.forget(keys),
            }
            let states: Vec<Option<T>> = Self::decode(keys.to_vec(), read)?
                .into_iter()
                .map(|r| r.state)
                .collect();
            let (new, answer) = step(&states);
            let agree = match (written, new, wrote) {
                (false, None, _) => true,
                (true, Some(_), None) => true,
                (true, Some(new), Some(wrote)) => {
                    let wrote: Vec<Option<T>> = Self::decode(keys.to_vec(), wrote)?
                        .into_iter()
                        .map(|r| r.state)
                        .collect();
                    wrote == new
                }
                _ => false,
            };
            if !agree {
                return Err(Error::internal(format!(
                    "redis: the counter script and the model disagree on {}",
                    keys.join(", ")
                )));
            }
            return Ok(Some(answer));
        }
        Err(Error::unavailable(
            "redis: a counter write was lost three times",
            true,
        ))
    }

    /// Runs `step` over the states of `keys` until its writes land: `step`
    /// returns the new states (`None` in the outer option: write nothing)
    /// and the answer. It starts from the states this process last knew
    /// (one round trip when no other replica changed them); an answer
    /// that writes nothing is only given from states just read.
    async fn update<T, S, R>(
        &self,
        keys: Vec<String>,
        mut step: impl FnMut(&[Option<T>]) -> (Option<Vec<Option<S>>>, R),
    ) -> Result<R>
    where
        T: DeserializeOwned + Clone,
        S: Serialize,
    {
        let _held = self.lock(&keys).await;
        // (rows, fresh): fresh when read from Redis just now.
        let mut current: Option<(Vec<Row>, bool)> = self.remembered(&keys).map(|r| (r, false));
        for _ in 0..MAX_TRIES {
            let (rows, fresh) = match current.take() {
                Some(c) => c,
                None => (self.read_raw(&keys).await?, true),
            };
            let read: Vec<Read<T>> = Self::decode(keys.clone(), rows.clone())?;
            let states: Vec<Option<T>> = read.iter().map(|r| r.state.clone()).collect();
            let (new, answer) = step(&states);
            let Some(new) = new else {
                if fresh {
                    self.remember(&keys, &rows);
                    return Ok(answer);
                }
                // Decided from remembered states: read them and decide again.
                continue;
            };
            let json: Vec<Option<String>> = new
                .iter()
                .map(|s| s.as_ref().map(to_json).transpose())
                .collect::<Result<_>>()?;
            let marker = self.marker();
            let written = match self.write(&read, &json, &marker).await {
                Ok(Cas::Written) => true,
                Ok(Cas::Moved(now)) => {
                    current = Some((now, true));
                    false
                }
                // A retry must not apply the change twice: its marker says
                // whether it landed; if not, it is decided again from
                // what Redis holds now.
                Ok(Cas::Lost(e)) => match self.applied(&marker).await {
                    Ok(landed) => landed,
                    Err(_) => {
                        self.forget(&keys);
                        return Err(e);
                    }
                },
                Err(e) => {
                    // Applied or not: unknown. Start from Redis next time.
                    self.forget(&keys);
                    return Err(e);
                }
            };
            if written {
                self.remember(&keys, &Self::after(&rows, &json));
                return Ok(answer);
            }
        }
        self.forget(&keys);
        Err(Error::unavailable(
            format!("redis: counters kept changing over {MAX_TRIES} tries"),
            true,
        ))
    }

    /// The versions and raw JSON states of `keys`, in one round trip.
    async fn read_raw(&self, keys: &[String]) -> Result<Vec<Row>> {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("HMGET").arg(k).arg("v").arg("s");
        }
        let pipe = &pipe;
        let rows: Vec<(Option<u64>, Option<String>)> = self
            .idempotent(|mut con| async move { pipe.query_async(&mut con).await })
            .await?;
        Ok(rows.into_iter().map(|(v, s)| (v.unwrap_or(0), s)).collect())
    }
}

fn to_json<S: Serialize>(s: &S) -> Result<String> {
    serde_json::to_string(s).map_err(|e| Error::internal(format!("cannot encode a counter: {e}")))
}

#[async_trait]
impl CounterStore for RedisStore {
    async fn balance(&self, id: &str) -> Result<Option<Balance>> {
        let read: Vec<Read<Balance>> = self.read(vec![self.balance_key(id)]).await?;
        Ok(read.into_iter().next().and_then(|r| r.state))
    }

    async fn put_balance(&self, id: &str, balance: Option<Balance>) -> Result<()> {
        self.update(vec![self.balance_key(id)], |_: &[Option<Balance>]| {
            (Some(vec![balance]), ())
        })
        .await
    }

    async fn spend(
        &self,
        id: &str,
        cost: u64,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Spend> {
        let keys = vec![self.balance_key(id)];
        let step = |s: &[Option<Balance>]| match s.first().copied().flatten() {
            None => (
                None,
                Spend {
                    spent: false,
                    balance: None,
                },
            ),
            Some(b) => {
                let (spent, after) = b.refilled(refill, now).spend(cost);
                (
                    Some(vec![Some(after)]),
                    Spend {
                        spent,
                        balance: Some(after),
                    },
                )
            }
        };
        self.counter_op(keys, script::spend_args(cost, refill, now), step)
            .await
    }

    async fn adjust(
        &self,
        id: &str,
        op: BalanceOp,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Option<Balance>> {
        self.update(vec![self.balance_key(id)], |s: &[Option<Balance>]| match s
            .first()
            .copied()
            .flatten()
        {
            None => (None, None),
            Some(b) => {
                let after = op.apply(b.refilled(refill, now));
                (Some(vec![Some(after)]), Some(after))
            }
        })
        .await
    }

    async fn take(
        &self,
        id: &str,
        spec: &WindowSpec,
        cost: u64,
        now: Timestamp,
    ) -> Result<WindowTake> {
        let spec = LimitSpec::Bucket(*spec);
        let keys = vec![self.limit_key(id)];
        let step = |s: &[Option<LimitState>]| {
            let (next, take) = spec.take(s.first().copied().flatten(), cost, now);
            (Some(vec![Some(next)]), take)
        };
        let op = LimitOp {
            id: id.to_owned(),
            spec,
            cost,
        };
        self.counter_op(
            keys,
            script::take_args("T", std::slice::from_ref(&op), &[id], now),
            step,
        )
        .await
    }

    async fn reset_window(&self, id: &str) -> Result<()> {
        self.update(vec![self.limit_key(id)], |_: &[Option<LimitState>]| {
            (Some(vec![None::<LimitState>]), ())
        })
        .await
    }

    async fn reserve(&self, ops: &[LimitOp], now: Timestamp) -> Result<Reserved> {
        // Each distinct counter once (`reserve_all` continues from its own
        // take of an id that comes twice).
        let ids = Self::distinct(ops.iter().map(|o| o.id.as_str()));
        let keys: Vec<String> = ids.iter().map(|id| self.limit_key(id)).collect();
        let step = |s: &[Option<LimitState>]| {
            let get = |id: &str| {
                ids.iter()
                    .position(|i| *i == id)
                    .and_then(|p| s.get(p).copied().flatten())
            };
            let (out, states) = reserve_all(ops, now, get);
            if !out.admitted {
                return (None, out);
            }
            // The last state of each counter.
            let mut new: Vec<Option<LimitState>> = ids.iter().map(|id| get(id)).collect();
            for (op, state) in ops.iter().zip(states) {
                if let Some(p) = ids.iter().position(|i| *i == op.id) {
                    new[p] = Some(state);
                }
            }
            (Some(new), out)
        };
        self.counter_op(keys, script::take_args("R", ops, &ids, now), step)
            .await
    }

    async fn settle(&self, ops: &[SettleOp], now: Timestamp) -> Result<Vec<LimitState>> {
        // All of them in one read and one write (each op atomic, as the
        // trait asks; together too), an id seen twice continuing from its
        // own settlement.
        let ids = Self::distinct(ops.iter().map(|o| o.id.as_str()));
        let keys: Vec<String> = ids.iter().map(|id| self.limit_key(id)).collect();
        let step = |s: &[Option<LimitState>]| {
            let mut states: Vec<Option<LimitState>> = s.to_vec();
            let mut out = Vec::with_capacity(ops.len());
            for op in ops {
                let Some(p) = ids.iter().position(|i| *i == op.id) else {
                    continue;
                };
                let (next, _) = op.spec.settle(
                    states.get(p).copied().flatten(),
                    op.taken_at,
                    op.reserved,
                    op.used,
                    now,
                );
                if let Some(slot) = states.get_mut(p) {
                    *slot = Some(next);
                }
                out.push(next);
            }
            (Some(states), out)
        };
        self.counter_op(keys, script::settle_args(ops, &ids, now), step)
            .await
    }
}
