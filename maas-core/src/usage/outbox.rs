//! [`UsageOutbox`]: what a node's ledger wrote, kept to be reported
//! elsewhere (a data plane's usage, for its control plane).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{
    UsageBucket, UsageFilter, UsageKey, UsageReport, UsageSums, VerificationBucket,
    VerificationFilter, VerificationKey, VerificationSums,
};
use crate::error::Result;
use crate::storage::UsageStore;

/// The buckets a ledger wrote and nobody has taken yet, merged by key.
///
/// [`UsageOutbox::wrap`] puts it between a [`UsageLedger`](super::UsageLedger)
/// and its store: each batch the store took is added here too (after the
/// store took it, so a batch the store refused and the ledger sends again is
/// not collected twice). [`UsageOutbox::take_into`] hands out what was collected.
/// Cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct UsageOutbox {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    pending: Mutex<Pending>,
    added: Notify,
}

#[derive(Default)]
struct Pending {
    usage: BTreeMap<UsageKey, UsageSums>,
    verifications: BTreeMap<VerificationKey, VerificationSums>,
}

impl fmt::Debug for UsageOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (u, v) = self.len();
        f.debug_struct("UsageOutbox")
            .field("usage", &u)
            .field("verifications", &v)
            .finish()
    }
}

impl UsageOutbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Additions cannot panic half-way: a poisoned map is consistent.
        self.inner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `store`, with every batch it takes collected here as well.
    pub fn wrap(&self, store: Arc<dyn UsageStore>) -> Arc<dyn UsageStore> {
        Arc::new(Collecting {
            store,
            outbox: self.clone(),
        })
    }

    /// How many usage and verification buckets wait.
    pub fn len(&self) -> (usize, usize) {
        let p = self.lock();
        (p.usage.len(), p.verifications.len())
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }

    /// Resolves when something is collected (after a [`Self::take_into`] left
    /// the outbox empty, the next collection wakes one waiter).
    pub async fn added(&self) {
        self.inner.added.notified().await;
    }

    /// Takes up to `max` buckets (usage first, oldest minutes first) into
    /// `report`, merging each into the bucket with its key there; what is
    /// left waits for the next take.
    pub fn take_into(&self, report: &mut UsageReport, max: usize) {
        let mut p = self.lock();
        let mut room = max;
        merge_into(&mut report.usage, &mut p.usage, &mut room, |b| &b.key);
        merge_into(
            &mut report.verifications,
            &mut p.verifications,
            &mut room,
            |b| &b.key,
        );
    }

    /// Puts buckets back (a report that could not be kept), merged.
    pub fn put_back(&self, report: UsageReport) {
        let mut p = self.lock();
        for b in report.usage {
            p.usage.entry(b.key).or_default().add(&b.sums);
        }
        for b in report.verifications {
            p.verifications.entry(b.key).or_default().add(&b.sums);
        }
    }

    fn collect_usage(&self, buckets: &[UsageBucket]) {
        if buckets.is_empty() {
            return;
        }
        {
            let mut p = self.lock();
            for b in buckets {
                p.usage.entry(b.key.clone()).or_default().add(&b.sums);
            }
        }
        self.inner.added.notify_one();
    }

    fn collect_verifications(&self, buckets: &[VerificationBucket]) {
        if buckets.is_empty() {
            return;
        }
        {
            let mut p = self.lock();
            for b in buckets {
                p.verifications
                    .entry(b.key.clone())
                    .or_default()
                    .add(&b.sums);
            }
        }
        self.inner.added.notify_one();
    }
}

/// A bucket of a report: its key and sums.
trait Bucket {
    type Key: Ord + Clone;
    type Sums: Copy;
    fn new(key: Self::Key, sums: Self::Sums) -> Self;
    fn add(&mut self, sums: &Self::Sums);
}

impl Bucket for UsageBucket {
    type Key = UsageKey;
    type Sums = UsageSums;
    fn new(key: UsageKey, sums: UsageSums) -> Self {
        UsageBucket { key, sums }
    }
    fn add(&mut self, sums: &UsageSums) {
        self.sums.add(sums);
    }
}

impl Bucket for VerificationBucket {
    type Key = VerificationKey;
    type Sums = VerificationSums;
    fn new(key: VerificationKey, sums: VerificationSums) -> Self {
        VerificationBucket { key, sums }
    }
    fn add(&mut self, sums: &VerificationSums) {
        self.sums.add(sums);
    }
}

/// Moves entries of `from` into `into` (merging into a bucket with the same
/// key there, else appending while `room` lasts).
fn merge_into<B: Bucket>(
    into: &mut Vec<B>,
    from: &mut BTreeMap<B::Key, B::Sums>,
    room: &mut usize,
    key: impl Fn(&B) -> &B::Key,
) {
    let mut at: BTreeMap<B::Key, usize> = into
        .iter()
        .enumerate()
        .map(|(i, b)| (key(b).clone(), i))
        .collect();
    let keys: Vec<B::Key> = from.keys().cloned().collect();
    for k in keys {
        match at.get(&k) {
            Some(&i) => {
                if let (Some(b), Some(s)) = (into.get_mut(i), from.remove(&k)) {
                    b.add(&s);
                }
            }
            None if *room > 0 => {
                if let Some(s) = from.remove(&k) {
                    at.insert(k.clone(), into.len());
                    into.push(B::new(k, s));
                    *room -= 1;
                }
            }
            None => {}
        }
    }
}

/// The store [`UsageOutbox::wrap`] returns.
#[derive(Debug)]
struct Collecting {
    store: Arc<dyn UsageStore>,
    outbox: UsageOutbox,
}

#[async_trait]
impl UsageStore for Collecting {
    async fn add_usage(&self, buckets: &[UsageBucket]) -> Result<()> {
        self.store.add_usage(buckets).await?;
        self.outbox.collect_usage(buckets);
        Ok(())
    }

    async fn add_verifications(&self, buckets: &[VerificationBucket]) -> Result<()> {
        self.store.add_verifications(buckets).await?;
        self.outbox.collect_verifications(buckets);
        Ok(())
    }

    async fn add_report(&self, report: &UsageReport) -> Result<bool> {
        // Reported from elsewhere: not this node's to report again.
        self.store.add_report(report).await
    }

    async fn usage_buckets(&self, filter: &UsageFilter) -> Result<Vec<UsageBucket>> {
        self.store.usage_buckets(filter).await
    }

    async fn verification_buckets(
        &self,
        filter: &VerificationFilter,
    ) -> Result<Vec<VerificationBucket>> {
        self.store.verification_buckets(filter).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::usage::memory::MemoryUsageStore;

    fn ub(minute: i64, tenant: &str, requests: u64) -> UsageBucket {
        UsageBucket {
            key: UsageKey {
                minute: Timestamp::from_millis(minute * 60_000),
                tenant: tenant.into(),
                key_id: String::new(),
                model: "m".into(),
                currency: String::new(),
            },
            sums: UsageSums {
                requests,
                ..UsageSums::default()
            },
        }
    }

    fn empty(sequence: u64) -> UsageReport {
        UsageReport {
            source: "dp".into(),
            sequence,
            usage: vec![],
            verifications: vec![],
        }
    }

    #[tokio::test]
    async fn collects_what_the_store_took_and_hands_it_out_merged() {
        let outbox = UsageOutbox::new();
        let inner: Arc<dyn UsageStore> = Arc::new(MemoryUsageStore::default());
        let store = outbox.wrap(Arc::clone(&inner));
        store
            .add_usage(&[ub(1, "a", 2), ub(1, "b", 1)])
            .await
            .unwrap();
        store
            .add_usage(&[ub(1, "a", 3), ub(2, "a", 1)])
            .await
            .unwrap();
        assert_eq!(outbox.len(), (3, 0));
        // The store has it too.
        let all = inner
            .usage_buckets(&UsageFilter::range(
                Timestamp::EPOCH,
                Timestamp::from_millis(i64::MAX),
            ))
            .await
            .unwrap();
        assert_eq!(all.iter().map(|b| b.sums.requests).sum::<u64>(), 7);

        // Two at most: the oldest minute's, merged.
        let mut r = empty(1);
        outbox.take_into(&mut r, 2);
        let got: Vec<_> = r
            .usage
            .iter()
            .map(|b| (b.key.tenant.as_str(), b.sums.requests))
            .collect();
        assert_eq!(got, [("a", 5), ("b", 1)]);
        assert_eq!(outbox.len(), (1, 0));
        // More of a bucket already in the report merges into it, room or not.
        store.add_usage(&[ub(1, "a", 10)]).await.unwrap();
        outbox.take_into(&mut r, 0);
        assert_eq!(r.usage[0].sums.requests, 15);
        assert_eq!(outbox.len(), (1, 0));
        // Put back, taken again whole.
        outbox.put_back(r);
        let mut again = empty(2);
        outbox.take_into(&mut again, 100);
        assert_eq!(again.usage.iter().map(|b| b.sums.requests).sum::<u64>(), 17);
        assert!(outbox.is_empty());
    }

    #[tokio::test]
    async fn a_batch_the_store_refused_is_not_collected() {
        #[derive(Debug)]
        struct Refusing;
        #[async_trait]
        impl UsageStore for Refusing {
            async fn add_usage(&self, _: &[UsageBucket]) -> Result<()> {
                Err(crate::Error::unavailable("down", true))
            }
            async fn add_verifications(&self, _: &[VerificationBucket]) -> Result<()> {
                Err(crate::Error::unavailable("down", true))
            }
            async fn add_report(&self, _: &UsageReport) -> Result<bool> {
                Err(crate::Error::unavailable("down", true))
            }
            async fn usage_buckets(&self, _: &UsageFilter) -> Result<Vec<UsageBucket>> {
                Ok(vec![])
            }
            async fn verification_buckets(
                &self,
                _: &VerificationFilter,
            ) -> Result<Vec<VerificationBucket>> {
                Ok(vec![])
            }
        }
        let outbox = UsageOutbox::new();
        let store = outbox.wrap(Arc::new(Refusing));
        assert!(store.add_usage(&[ub(1, "a", 1)]).await.is_err());
        assert!(outbox.is_empty());
    }
}
