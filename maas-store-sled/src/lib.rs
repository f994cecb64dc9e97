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
//! `keys_by_owner`) and `meta` (format version, audit count).
//! A record and every index entry that points at it are written in one sled
//! transaction, so an index never points at nothing and a crash never
//! leaves half a write. Beside sled's files, `maas-journal` holds the
//! counter changes acknowledged since the last checkpoint (see the
//! module `journal`).
//!
//! Records (tenants, keyspaces, keys, catalog records, audit events) are
//! compact binary rows (postcard, see the module `records`), a bare key under a
//! third of its JSON; only free-form values (`meta`, a record's body, an
//! audit event's before and after) stay JSON text inside them. Audit events
//! carry what changed, not two whole records. Counters are fixed 16-byte
//! big-endian binary.
//!
//! A database written by format 1 (the previous release: JSON records) is
//! migrated on open, resumably (see the module `migrate`); one written by a
//! newer format is refused with [`SledError::NewerFormat`].
//!
//! ## Durability: what a crash can and cannot lose
//!
//! Every change runs on the store's writer thread; concurrent changes share
//! one sync (group commit), and no answer leaves before its change is on
//! disk.
//!
//! - **Configuration** (tenants, keyspaces, keys, catalog records, audit
//!   events): one sled transaction with its audit event, then a flush of
//!   sled's log, before the answer.
//! - **Counters** (remaining uses spent or set, rate-limit takes, token
//!   limit and budget reservations and settlements, namespace limits) and
//!   **usage** added by the ledger: written to the counter journal
//!   (`maas-journal` in the directory, see the module `journal`), whose
//!   record for the round is synced (`fdatasync`) before the answer, and
//!   held in memory (the module `overlay`) until they are written into
//!   sled, once per counter however often it changed, before the journal
//!   is voided. Opening the store replays the journal into sled. So
//!   `kill -9` at any moment never gives back a use, a rate-limit take or a
//!   budget reservation that was answered.
//! - **Usage not yet added:** the ledger of `maas-core` holds completed
//!   requests and verification outcomes in memory for up to its
//!   `flush_interval` (50 ms by default) before it adds them here; a
//!   `kill -9` loses those, a graceful shutdown none.
//! - **Written behind:** last-used times of keys, at most
//!   [`SledConfig::flush_every_ms`] (default 500 ms) late.
//! - **Power loss** (beyond a process crash): the journal's sync reaches the
//!   device, so counters and usage survive it. sled's own flush writes its
//!   log with `sync_file_range`, which neither flushes a device's volatile
//!   write cache nor the file's metadata; sled's flusher syncs the file
//!   fully every `flush_every_ms`, and so does every journal checkpoint. On
//!   a device with a volatile write cache, a power cut can therefore lose
//!   configuration changes of the last `flush_every_ms`.
//! - Everything is atomic: after a crash each configuration transaction,
//!   and each round's journal record, is either wholly there or wholly
//!   absent.
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
mod journal;
mod migrate;
mod overlay;
mod readers;
mod records;
mod store;
mod usage;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use maas_core::Storage;

pub use store::IntegrityReport;

/// The journal size of [`SledStore::temporary`] databases.
const TEMPORARY_JOURNAL_SIZE: u64 = 1 << 20;

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u32 = 3;

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
    /// Reading or writing the database's files failed.
    #[error("the database at {path} cannot be read or written: {detail}")]
    Io {
        /// The database directory.
        path: PathBuf,
        /// What failed.
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
    /// How often sled's background flusher writes pending changes to disk
    /// and syncs its file, in milliseconds: how late last-used times may be
    /// written, and what a power loss (not a process crash) can lose of
    /// configuration. Configuration, counters and usage are durable before a
    /// call returns, whatever this says. Default 500.
    pub flush_every_ms: u64,
    /// sled's page cache, in bytes. Default 64 MiB.
    pub cache_capacity: u64,
    /// How long to keep trying when the database is locked before failing
    /// with [`SledError::Locked`]. A short wait bridges sled's background
    /// thread letting go of the lock just after a handle was dropped in this
    /// process. Default 1 s.
    pub lock_wait: Duration,
    /// The size of the counter journal on disk, in bytes (written once;
    /// a checkpoint folds it into sled when half full). Default 32 MiB.
    pub journal_size: u64,
    /// How many threads serve reads (and the written-behind last-used
    /// times): reads can wait on disk, so they run on threads of the store's
    /// own, never on the async runtime's workers. Default 4.
    pub read_threads: usize,
}

impl Default for SledConfig {
    fn default() -> Self {
        SledConfig {
            path: None,
            flush_every_ms: 500,
            cache_capacity: 64 * 1024 * 1024,
            lock_wait: Duration::from_secs(1),
            journal_size: journal::DEFAULT_SIZE,
            read_threads: DEFAULT_READ_THREADS,
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
    /// Then the readers, which finish the reads queued.
    readers: readers::Readers,
    t: Arc<store::Trees>,
}

/// [`SledConfig::read_threads`] by default.
pub const DEFAULT_READ_THREADS: usize = 4;

fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

impl SledStore {
    /// Opens (or creates) the database at `path` with default settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SledError> {
        Self::open_with(SledConfig::at(path))
    }

    /// A temporary database, removed when the last handle is dropped, with
    /// a 1 MiB journal (on Linux it lives in `/dev/shm`, in memory).
    pub fn temporary() -> Result<Self, SledError> {
        Self::open_with(SledConfig {
            journal_size: TEMPORARY_JOURNAL_SIZE,
            ..SledConfig::default()
        })
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
        let dir = sc.get_path();
        let trees = store::Trees::open(db, dir.clone())?;
        trees.check_format(&path)?;
        // Counters acknowledged since the last checkpoint are in the
        // journal: put them into sled, make sled hold them, void the journal.
        let io = |e: std::io::Error| SledError::Io {
            path: path.clone(),
            detail: e.to_string(),
        };
        let (mut journal, replay) =
            journal::Journal::open(&dir, config.journal_size).map_err(io)?;
        let core = |e: maas_core::Error| SledError::Io {
            path: path.clone(),
            detail: e.to_string(),
        };
        trees.replay(&replay).map_err(core)?;
        writer::checkpoint(&trees, &mut journal).map_err(core)?;
        let t = Arc::new(trees);
        let readers = readers::Readers::start(&t, config.read_threads).map_err(io)?;
        let writer = writer::Writer::start(Arc::clone(&t), journal).map_err(io)?;
        Ok(SledStore {
            inner: Arc::new(Inner { writer, readers, t }),
        })
    }

    fn writer(&self) -> &writer::Writer {
        &self.inner.writer
    }

    /// A configuration change (a sled transaction): on the writer thread,
    /// answered once sled's log is flushed.
    async fn configure<T: Send + 'static>(
        &self,
        f: impl FnOnce(&store::Trees) -> maas_core::Result<T> + Send + 'static,
    ) -> maas_core::Result<T> {
        self.writer()
            .run(
                writer::Lane::Foreground,
                writer::Durable::Sled,
                move |t, _| f(t),
            )
            .await
    }

    /// A counter change: on the writer thread, answered once the round's
    /// journal record is synced.
    async fn count<T: Send + 'static>(
        &self,
        f: impl FnOnce(&store::Trees, &mut journal::Journal) -> maas_core::Result<T> + Send + 'static,
    ) -> maas_core::Result<T> {
        self.writer()
            .run(writer::Lane::Foreground, writer::Durable::Journal, f)
            .await
    }

    /// A read, on the store's reader threads; also the last-used times,
    /// which the writer thread does not write.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&store::Trees) -> maas_core::Result<T> + Send + 'static,
    ) -> maas_core::Result<T> {
        self.inner.readers.run(f).await
    }

    /// The store as the [`Storage`] bundle services are built on.
    pub fn storage(self) -> Storage {
        Storage::from_backend(Arc::new(self))
    }

    /// Writes everything queued or written behind (last-used times) to
    /// disk.
    pub async fn flush(&self) -> maas_core::Result<()> {
        self.writer()
            .run(writer::Lane::Background, writer::Durable::Sled, |_, _| {
                Ok(())
            })
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
