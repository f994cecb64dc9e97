//! # maas-store-sled
//!
//! The persistent embedded storage backend of maas, on [sled]: one directory
//! on disk, no external service. It implements every storage trait of
//! `maas-core` and passes the same conformance suite as the memory backend.
//!
//! ```no_run
//! # async fn run() -> Result<(), maas_store_sled::SledError> {
//! let store = maas_store_sled::SledStore::open("/var/lib/maas")?;
//! let storage = store.storage();
//! # let _ = storage;
//! # Ok(()) }
//! ```
//!
//! ## Layout
//!
//! One sled tree per aggregate (`tenants`, `keyspaces`, `keys`, `audit`,
//! `balances`, `windows`, `records`, `usage`, `verifications`) plus index
//! trees (`tenant_names`, `key_hashes`, `key_unique`, `keys_by_keyspace`,
//! `keys_by_owner`, `key_flags`) and `meta` (format version, audit count).
//! A record and every index entry that points at it are written in one sled
//! transaction, so an index never points at nothing and a crash never
//! leaves half a write.
//!
//! Records are JSON (serde_json): they carry free-form JSON (`meta`, audit
//! before/after) that compact binary formats such as bincode or postcard
//! cannot round-trip (`deserialize_any`), the format is self-describing so
//! fields can be added without a migration, and a database can be inspected
//! with any JSON tool. Configuration is written rarely, so the size cost does
//! not matter; counters, which are written on the hot path, are fixed 16-byte
//! big-endian binary.
//!
//! ## Durability: what a crash can and cannot lose
//!
//! - **Never lost once acknowledged:** tenants, keyspaces, keys (every field,
//!   including a key's initial or administratively set balance) and audit
//!   events. Each call that changes them commits a transaction and then awaits
//!   `flush_async` (an fsync) before it returns.
//! - **May be lost, up to [`SledConfig::flush_every_ms`] (default 500 ms):**
//!   counter changes made by traffic — uses spent by verifications (after a
//!   crash those uses are available again), rate-limit windows (they may
//!   admit again what they admitted just before the crash) — and last-used
//!   times. These are written behind by sled's background flusher, because
//!   an fsync per verification would make the hot path disk-bound.
//! - **May be lost, up to `flush_every_ms` more:** usage and verification
//!   buckets. The usage ledger of `maas-core` already writes them behind
//!   (its own flush interval, see `maas_core::usage`); the buckets it flushes
//!   are then on disk within `flush_every_ms`, so a crash can lose both
//!   windows' worth of usage. Usage buckets are fixed-width binary (ten
//!   big-endian `u64`), keyed by big-endian minute first so a time range is
//!   one range scan.
//! - Everything is atomic: after a crash each transaction is either wholly
//!   there or wholly absent.
//!
//! ## Verification speed
//!
//! Verification reads keys from the cache of `maas-core`'s `KeyService`,
//! the same for every backend; the store is read only on a cache miss or
//! after the cache TTL.

#![forbid(unsafe_code)]

mod api;
mod codec;
mod counters;
mod store;
mod usage;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use maas_core::Storage;

pub use store::IntegrityReport;

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Why a database could not be opened (or a sled operation failed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SledError {
    /// Another process (or another open handle in this one) holds the database.
    #[error(
        "the database at {path} is locked by another process (is another maas running?): {detail}"
    )]
    Locked {
        /// The database directory.
        path: PathBuf,
        /// What sled reported.
        detail: String,
    },
    /// The database was written by a newer version of maas-store-sled.
    #[error(
        "the database at {path} has on-disk format version {found}, newer than version \
         {supported} that this build of maas-store-sled supports; upgrade maas"
    )]
    NewerFormat {
        /// The database directory.
        path: PathBuf,
        /// The version found on disk.
        found: u32,
        /// The newest version this build supports.
        supported: u32,
    },
    /// The database holds something this backend cannot read.
    #[error("the database at {path} is not a readable maas database: {detail}")]
    Corrupt {
        /// The database directory.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// sled failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
}

impl From<SledError> for maas_core::Error {
    fn from(e: SledError) -> Self {
        match e {
            SledError::Sled(e) => store::map_sled(e),
            SledError::Locked { .. } => maas_core::Error::unavailable(e.to_string(), true),
            other => maas_core::Error::unavailable(other.to_string(), false),
        }
    }
}

/// How to open a [`SledStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SledConfig {
    /// The database directory (created if missing); `None` for a temporary
    /// database removed when the store is dropped.
    pub path: Option<PathBuf>,
    /// How often sled's background flusher writes pending changes (counters,
    /// last-used times) to disk, in milliseconds: the most traffic-driven
    /// state a crash can lose. Configuration is always flushed before a call
    /// returns, whatever this says. Default 500.
    pub flush_every_ms: u64,
    /// sled's page cache, in bytes. Default 256 MiB.
    pub cache_capacity: u64,
    /// How long to keep trying when the database is locked before failing
    /// with [`SledError::Locked`]. A short wait bridges sled's background
    /// thread letting go of the lock just after a handle was dropped in this
    /// process. Default 1 s.
    pub lock_wait: Duration,
}

impl Default for SledConfig {
    fn default() -> Self {
        SledConfig {
            path: None,
            flush_every_ms: 500,
            cache_capacity: 256 * 1024 * 1024,
            lock_wait: Duration::from_secs(1),
        }
    }
}

impl SledConfig {
    /// The default configuration for the database at `path`.
    pub fn at(path: impl AsRef<Path>) -> Self {
        SledConfig {
            path: Some(path.as_ref().to_path_buf()),
            ..SledConfig::default()
        }
    }
}

/// The sled backend. Cheap to clone (shared handles); implements every
/// storage trait of `maas-core`.
///
/// Its writer thread (one per database) stops when the last handle is
/// dropped, after writing what is queued and a last flush.
#[derive(Debug, Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Declared first, so dropped first: its thread drains and flushes
    /// while the trees are still open.
    writer: writer::Writer,
    t: Arc<store::Trees>,
}

fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

impl SledStore {
    /// Opens (or creates) the database at `path` with default settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SledError> {
        Self::open_with(SledConfig::at(path))
    }

    /// A temporary database, removed when the last handle is dropped.
    pub fn temporary() -> Result<Self, SledError> {
        Self::open_with(SledConfig::default())
    }

    /// Opens (or creates) a database as configured.
    ///
    /// Fails with [`SledError::Locked`] if another process holds it (after
    /// [`SledConfig::lock_wait`]), and with [`SledError::NewerFormat`] if it
    /// was written by a newer format version.
    pub fn open_with(config: SledConfig) -> Result<Self, SledError> {
        let mut sc = sled::Config::new()
            .cache_capacity(config.cache_capacity)
            .flush_every_ms(Some(config.flush_every_ms.max(1)));
        let path = match &config.path {
            Some(p) => {
                sc = sc.path(p);
                p.clone()
            }
            None => {
                sc = sc.temporary(true);
                PathBuf::from("<temporary>")
            }
        };
        let deadline = Instant::now() + config.lock_wait;
        let db = loop {
            match sc.open() {
                Ok(db) => break db,
                Err(e) if is_lock_error(&e) => {
                    if Instant::now() >= deadline {
                        return Err(SledError::Locked {
                            path,
                            detail: e.to_string(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let trees = store::Trees::open(db)?;
        trees.check_format(&path)?;
        let t = Arc::new(trees);
        let writer = writer::Writer::start(Arc::clone(&t)).map_err(|e| SledError::Corrupt {
            path: path.clone(),
            detail: format!("cannot start the writer thread: {e}"),
        })?;
        Ok(SledStore {
            inner: Arc::new(Inner { writer, t }),
        })
    }

    fn writer(&self) -> &writer::Writer {
        &self.inner.writer
    }

    /// A configuration or counter change: on the writer thread, answered
    /// once it is durable.
    async fn change<T: Send + 'static>(
        &self,
        f: impl FnOnce(&store::Trees) -> maas_core::Result<T> + Send + 'static,
    ) -> maas_core::Result<T> {
        self.writer().run(writer::Lane::Foreground, true, f).await
    }

    /// A read, on tokio's blocking pool (inline outside a tokio runtime).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&store::Trees) -> maas_core::Result<T> + Send + 'static,
    ) -> maas_core::Result<T> {
        let t = Arc::clone(&self.inner.t);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt
                .spawn_blocking(move || f(&t))
                .await
                .map_err(|e| maas_core::Error::internal(format!("a sled read failed: {e}")))?,
            Err(_) => f(&t),
        }
    }

    /// The store as the [`Storage`] bundle services are built on.
    pub fn storage(self) -> Storage {
        Storage::from_backend(Arc::new(self))
    }

    /// Writes everything queued or written behind (last-used times) to
    /// disk.
    pub async fn flush(&self) -> maas_core::Result<()> {
        self.writer()
            .run(writer::Lane::Background, true, |_| Ok(()))
            .await
    }

    /// The on-disk format version of the open database.
    pub fn format_version(&self) -> u32 {
        FORMAT_VERSION
    }

    /// Checks that every index agrees with the records: each key's hash,
    /// keyspace, owner, flag and unique-name entries exist and point back at
    /// it, and no index entry points at nothing. Reads the whole database.
    pub fn check_integrity(&self) -> maas_core::Result<IntegrityReport> {
        self.inner.t.check_integrity()
    }
}
