//! [`MemoryUsageStore`]: the usage store in memory, for the memory backend,
//! embedding and tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use super::{
    UsageBucket, UsageFilter, UsageKey, UsageReport, UsageSums, VerificationBucket,
    VerificationFilter, VerificationKey, VerificationSums,
};
use crate::clock::Timestamp;
use crate::error::Result;
use crate::storage::UsageStore;

/// A [`UsageStore`] in two ordered maps, each under its own lock: a batch is
/// added under one lock acquisition, so it is atomic. A report takes the
/// reports' lock, then both maps'. Nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryUsageStore {
    usage: Mutex<BTreeMap<UsageKey, UsageSums>>,
    verifications: Mutex<BTreeMap<VerificationKey, VerificationSums>>,
    /// The last sequence added of each report source.
    reports: Mutex<HashMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Additions check nothing and cannot panic half-way: a poisoned map is
    // still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn first_usage_key(minute: Timestamp) -> UsageKey {
    UsageKey {
        minute,
        tenant: String::new(),
        key_id: String::new(),
        model: String::new(),
        currency: String::new(),
    }
}

fn first_verification_key(minute: Timestamp) -> VerificationKey {
    VerificationKey {
        minute,
        keyspace_id: String::new(),
        key_id: String::new(),
        owner_id: String::new(),
    }
}

#[async_trait]
impl UsageStore for MemoryUsageStore {
    async fn add_usage(&self, buckets: &[UsageBucket]) -> Result<()> {
        let mut map = lock(&self.usage);
        for b in buckets {
            map.entry(b.key.clone()).or_default().add(&b.sums);
        }
        Ok(())
    }

    async fn add_verifications(&self, buckets: &[VerificationBucket]) -> Result<()> {
        let mut map = lock(&self.verifications);
        for b in buckets {
            map.entry(b.key.clone()).or_default().add(&b.sums);
        }
        Ok(())
    }

    async fn add_report(&self, report: &UsageReport) -> Result<bool> {
        let mut reports = lock(&self.reports);
        if reports
            .get(&report.source)
            .is_some_and(|&last| last >= report.sequence)
        {
            return Ok(false);
        }
        {
            let mut map = lock(&self.usage);
            for b in &report.usage {
                map.entry(b.key.clone()).or_default().add(&b.sums);
            }
        }
        {
            let mut map = lock(&self.verifications);
            for b in &report.verifications {
                map.entry(b.key.clone()).or_default().add(&b.sums);
            }
        }
        reports.insert(report.source.clone(), report.sequence);
        Ok(true)
    }

    async fn usage_buckets(&self, filter: &UsageFilter) -> Result<Vec<UsageBucket>> {
        if filter.from >= filter.to {
            return Ok(Vec::new());
        }
        let map = lock(&self.usage);
        Ok(map
            .range(first_usage_key(filter.from)..first_usage_key(filter.to))
            .filter(|(k, _)| filter.matches(k))
            .map(|(k, s)| UsageBucket {
                key: k.clone(),
                sums: *s,
            })
            .collect())
    }

    async fn verification_buckets(
        &self,
        filter: &VerificationFilter,
    ) -> Result<Vec<VerificationBucket>> {
        if filter.from >= filter.to {
            return Ok(Vec::new());
        }
        let map = lock(&self.verifications);
        Ok(map
            .range(first_verification_key(filter.from)..first_verification_key(filter.to))
            .filter(|(k, _)| filter.matches(k))
            .map(|(k, s)| VerificationBucket {
                key: k.clone(),
                sums: *s,
            })
            .collect())
    }
}
