//! The data plane's usage reports: what its ledger wrote, taken from the
//! [`UsageOutbox`] every second into numbered [`UsageReport`]s, each kept in
//! the data dir (written, synced, renamed) until the control plane
//! acknowledged it, and sent one at a time in order. The control plane adds
//! a report once per source and sequence, so a report sent again after a
//! lost acknowledgement, a reconnect or a restart is not counted twice.
//!
//! A report not sent yet takes in what was collected since (up to
//! [`MAX_BUCKETS`]), so a long outage of the control plane makes a few full
//! reports, not one a second. At most [`MAX_QUEUED`] wait; beyond, the
//! oldest is dropped with a warning. The source is a random UUID, kept with
//! the reports: a data plane started with none waiting starts a new source.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use maas_core::usage::{UsageOutbox, UsageReport};

/// The most buckets (usage and verifications) in one report.
pub const MAX_BUCKETS: usize = 2_000;

/// The most reports waiting for the control plane.
pub const MAX_QUEUED: usize = 1_000;

/// A report waiting, and whether it went out since this process made it
/// (one that did, or that a previous process made, is never changed again:
/// the control plane may have added it).
struct Queued {
    report: UsageReport,
    sent: bool,
}

/// The reports waiting for the control plane, in sequence order.
pub(super) struct ReportQueue {
    dir: Option<PathBuf>,
    source: String,
    next: u64,
    queue: VecDeque<Queued>,
}

/// A new source: 122 random bits, as a version-4 UUID.
fn new_source() -> String {
    let b = (rand::random::<u128>() & !(0xf << 76) & !(0b11 << 62)) | (0x4 << 76) | (0b10 << 62);
    let h = format!("{b:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn file_name(sequence: u64) -> String {
    format!("{sequence:020}.json")
}

impl ReportQueue {
    /// The reports kept in `dir` (none without one), and the source and
    /// next sequence to go on with.
    pub(super) async fn open(dir: Option<PathBuf>) -> Self {
        let mut queue = Vec::new();
        if let Some(dir) = &dir
            && let Ok(mut entries) = tokio::fs::read_dir(dir).await
        {
            while let Ok(Some(e)) = entries.next_entry().await {
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                if !name.ends_with(".json") {
                    continue;
                }
                match tokio::fs::read(e.path())
                    .await
                    .map(|b| serde_json::from_slice::<UsageReport>(&b))
                {
                    Ok(Ok(r)) => queue.push(r),
                    _ => tracing::warn!(file = name, "an unreadable usage report is ignored"),
                }
            }
        }
        queue.sort_by_key(|r| r.sequence);
        // One source: the newest's (a report of another is left over).
        let source = queue
            .last()
            .map(|r| r.source.clone())
            .unwrap_or_else(new_source);
        queue.retain(|r| r.source == source);
        let next = queue.last().map_or(1, |r| r.sequence + 1);
        ReportQueue {
            dir,
            source,
            next,
            queue: queue
                .into_iter()
                .map(|report| Queued { report, sent: true })
                .collect(),
        }
    }

    /// How many reports wait.
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    fn gauge(&self) {
        ::metrics::gauge!(crate::metrics::DATA_PLANE_REPORTS_WAITING).set(self.len() as f64);
    }

    /// Takes what `outbox` collected into the last report if it was not sent
    /// yet and has room, else into new ones, and keeps each changed report.
    pub(super) async fn collect(&mut self, outbox: &UsageOutbox) {
        while !outbox.is_empty() {
            let reuse = self.queue.back().is_some_and(|q| {
                !q.sent && q.report.usage.len() + q.report.verifications.len() < MAX_BUCKETS
            });
            if !reuse {
                if self.queue.len() >= MAX_QUEUED
                    && let Some(old) = self.queue.pop_front()
                {
                    tracing::warn!(
                        sequence = old.report.sequence,
                        "too many usage reports wait for the control plane: the oldest is dropped"
                    );
                    self.remove_file(old.report.sequence).await;
                }
                self.queue.push_back(Queued {
                    report: UsageReport {
                        source: self.source.clone(),
                        sequence: self.next,
                        usage: Vec::new(),
                        verifications: Vec::new(),
                    },
                    sent: false,
                });
                self.next += 1;
            }
            let Some(last) = self.queue.back_mut() else {
                return;
            };
            let room = MAX_BUCKETS
                .saturating_sub(last.report.usage.len() + last.report.verifications.len());
            outbox.take_into(&mut last.report, room);
            let report = last.report.clone();
            if let Some(dir) = &self.dir
                && let Err(e) = keep(dir, &report).await
            {
                tracing::warn!("a usage report could not be kept (it is sent anyway): {e}");
            }
        }
        self.gauge();
    }

    /// The first report waiting, marked as sent.
    pub(super) fn next_to_send(&mut self) -> Option<&UsageReport> {
        let q = self.queue.front_mut()?;
        q.sent = true;
        Some(&q.report)
    }

    /// The control plane is done with `sequence` (added, or refused for
    /// good): forgets it.
    pub(super) async fn done(&mut self, sequence: u64) {
        if self
            .queue
            .front()
            .is_some_and(|q| q.report.sequence == sequence)
        {
            self.queue.pop_front();
            self.remove_file(sequence).await;
            self.gauge();
        }
    }

    async fn remove_file(&self, sequence: u64) {
        if let Some(dir) = &self.dir {
            let _ = tokio::fs::remove_file(dir.join(file_name(sequence))).await;
        }
    }
}

/// Keeps `report` in `dir`: written beside, synced, renamed over.
async fn keep(dir: &Path, report: &UsageReport) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(report).map_err(std::io::Error::other)?;
    super::write_durably(dir, &file_name(report.sequence), bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use maas_core::Timestamp;
    use maas_core::usage::{UsageBucket, UsageKey, UsageSums};
    use std::sync::Arc;

    fn ub(minute: i64, tenant: &str) -> UsageBucket {
        UsageBucket {
            key: UsageKey {
                minute: Timestamp::from_millis(minute * 60_000),
                tenant: tenant.into(),
                key_id: String::new(),
                model: "m".into(),
                currency: String::new(),
            },
            sums: UsageSums {
                requests: 1,
                ..UsageSums::default()
            },
        }
    }

    #[tokio::test]
    async fn reports_are_numbered_kept_and_resumed_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = UsageOutbox::new();
        let store = outbox.wrap(Arc::new(maas_core::usage::MemoryUsageStore::default()));
        let mut q = ReportQueue::open(Some(dir.path().into())).await;
        store.add_usage(&[ub(1, "a")]).await.unwrap();
        q.collect(&outbox).await;
        // Not sent yet: more goes into the same report.
        store.add_usage(&[ub(1, "a"), ub(1, "b")]).await.unwrap();
        q.collect(&outbox).await;
        assert_eq!(q.len(), 1);
        let first = q.next_to_send().unwrap().clone();
        assert_eq!(first.sequence, 1);
        assert_eq!(first.usage.len(), 2);
        // Sent: what comes next is a new report.
        store.add_usage(&[ub(2, "a")]).await.unwrap();
        q.collect(&outbox).await;
        assert_eq!(q.len(), 2);

        // A restart: both come back, sent (never changed again), same source.
        let mut again = ReportQueue::open(Some(dir.path().into())).await;
        assert_eq!(again.len(), 2);
        assert_eq!(again.source, first.source);
        assert_eq!(again.next, 3);
        assert_eq!(again.next_to_send().unwrap(), &first);
        again.done(1).await;
        assert_eq!(again.next_to_send().unwrap().sequence, 2);
        again.done(2).await;
        assert_eq!(again.len(), 0);
        // Nothing waits: a new process starts a new source.
        let fresh = ReportQueue::open(Some(dir.path().into())).await;
        assert_eq!(fresh.len(), 0);
        assert_ne!(fresh.source, first.source);
        assert_eq!(fresh.next, 1);
    }

    #[tokio::test]
    async fn a_full_report_is_followed_by_another() {
        let outbox = UsageOutbox::new();
        let store = outbox.wrap(Arc::new(maas_core::usage::MemoryUsageStore::default()));
        let buckets: Vec<_> = (0..MAX_BUCKETS + 5)
            .map(|i| ub(1, &format!("t{i}")))
            .collect();
        store.add_usage(&buckets).await.unwrap();
        let mut q = ReportQueue::open(None).await;
        q.collect(&outbox).await;
        assert_eq!(q.len(), 2);
        assert_eq!(q.next_to_send().unwrap().usage.len(), MAX_BUCKETS);
        q.done(1).await;
        assert_eq!(q.next_to_send().unwrap().usage.len(), 5);
        assert!(outbox.is_empty());
    }
}
