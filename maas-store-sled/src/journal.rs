//! The counter journal: where a spend, a limit take, a reservation, a
//! settlement or a usage add is made durable before its answer leaves.
//!
//! sled's own flush hands its log buffer to sled's I/O thread pool, which
//! wakes every idle pool thread for each buffer written: at one flush per
//! writer round, the wake-ups cost more CPU than the requests they served
//! (scripts/load/verify.sh with `remaining`: 12-13k verifications/s with a
//! sled flush per round, 18-24k without). So counters keep their own log:
//! each writer round appends one record with the new value of every counter
//! it changed, and syncs it (`fdatasync`) on the writer thread itself. The
//! values reach sled later (`crate::overlay`), before a checkpoint voids
//! their records; opening the store replays the journal into sled, so the
//! last value of each counter is whichever was last acknowledged (or
//! later).
//!
//! - **Layout.** One preallocated file, `maas-journal` in the database
//!   directory. A header (magic, format, epoch, CRC) at offset 0; records
//!   from [`HEADER`] on: `len u32 | crc32 u32 | epoch u64 | payload`, all
//!   little-endian, the CRC over epoch and payload. A payload is a list of
//!   entries `tree u8 | key_len u16 | key | value_len u32 | value`, a
//!   `value_len` of `u32::MAX` meaning the key was removed.
//! - **Replay** reads records while their length, CRC and epoch hold: a
//!   torn last record (the crash came during its write) ends the journal,
//!   and so does a record of an older epoch left from before a checkpoint.
//!   Entries carry values, not deltas, so replaying twice changes nothing.
//! - **Checkpoint.** When the journal is half full, the overlay is drained
//!   into sled over the next rounds, then sled is flushed and its data file
//!   synced, then the header gets the next epoch: every record
//!   before is void at once, and the same file is written from the start
//!   again. The file is written with zeros once at creation, so later syncs
//!   never change its size or block map (no metadata to sync).
//! - **Power loss.** `fdatasync` returns once the device has the record, so
//!   an acknowledged counter survives a power cut as well as a `kill -9`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Where records start; the header fits in one sector, well before.
pub(crate) const HEADER: u64 = 4096;
/// The journal's size on disk (written once at creation).
pub(crate) const DEFAULT_SIZE: u64 = 32 << 20;
/// The file's name in the database directory.
pub(crate) const FILE_NAME: &str = "maas-journal";

const MAGIC: &[u8; 8] = b"MAASJRNL";
const FORMAT: u32 = 1;
const REMOVED: u32 = u32::MAX;
/// Record header: length, CRC, epoch.
const RECORD_HEAD: usize = 16;

/// The trees whose changes are journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Journaled {
    /// Remaining-uses balances.
    Balances = 1,
    /// Limit counters (rate limits, token limits, budgets).
    Windows = 2,
    /// Usage buckets.
    Usage = 3,
    /// Verification buckets.
    Verifications = 4,
    /// The last sequence added of each usage-report source.
    Reports = 5,
}

impl Journaled {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Journaled::Balances,
            2 => Journaled::Windows,
            3 => Journaled::Usage,
            4 => Journaled::Verifications,
            5 => Journaled::Reports,
            _ => return None,
        })
    }
}

/// One change read back from the journal: the tree, the key, and the value
/// (`None`: removed).
pub(crate) type Entry = (Journaled, Vec<u8>, Option<Vec<u8>>);

/// The journal file and the entries of the round being written.
#[derive(Debug)]
pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    size: u64,
    epoch: u64,
    /// Where the next record goes.
    at: u64,
    /// The current round's entries (a payload).
    pending: Vec<u8>,
}

fn crc(epoch: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&epoch.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn header(epoch: u64) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    h[12..20].copy_from_slice(&epoch.to_le_bytes());
    let c = crc(epoch, &h[..12]);
    h[20..24].copy_from_slice(&c.to_le_bytes());
    h
}

/// The epoch of a valid header; `None` for zeros or a torn write.
fn read_header(h: &[u8; 24]) -> Option<u64> {
    if &h[..8] != MAGIC || h[8..12] != FORMAT.to_le_bytes() {
        return None;
    }
    let epoch = u64::from_le_bytes(h[12..20].try_into().ok()?);
    let c = u32::from_le_bytes(h[20..24].try_into().ok()?);
    (c == crc(epoch, &h[..12])).then_some(epoch)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The entries of one payload; `None` if it does not parse (treated as the
/// end of the journal, like a bad CRC).
fn parse_payload(p: &[u8], out: &mut Vec<Entry>) -> Option<()> {
    let mut at = 0;
    while at < p.len() {
        let tree = Journaled::from_u8(*p.get(at)?)?;
        let klen = usize::from(u16_at(p, at + 1)?);
        let key = p.get(at + 3..at + 3 + klen)?.to_vec();
        at += 3 + klen;
        let vlen = u32_at(p, at)?;
        at += 4;
        let value = if vlen == REMOVED {
            None
        } else {
            let vlen = usize::try_from(vlen).ok()?;
            let v = p.get(at..at + vlen)?.to_vec();
            at += vlen;
            Some(v)
        };
        out.push((tree, key, value));
    }
    Some(())
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

impl Journal {
    /// Opens the journal in `dir` (creating it, `size` bytes of zeros, if
    /// missing) and returns it with the entries to replay, oldest first.
    pub(crate) fn open(dir: &Path, size: u64) -> std::io::Result<(Self, Vec<Entry>)> {
        let path = dir.join(FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let len = file.metadata()?.len();
        let size = size.max(HEADER * 2);
        if len < size {
            // Zeros up to the full size, once: later syncs change no metadata.
            file.seek(SeekFrom::Start(len))?;
            let chunk = vec![0u8; 1 << 20];
            let mut left = size - len;
            while left > 0 {
                let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
                file.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            file.sync_all()?;
            if let Ok(d) = File::open(dir) {
                // The new file's name, on disk too (best effort: not every
                // platform can sync a directory).
                let _ = d.sync_all();
            }
        }
        let size = size.max(len);
        let mut all = Vec::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_end(&mut all)?;
        let mut h = [0u8; 24];
        h.copy_from_slice(&all[..24]);
        let mut entries = Vec::new();
        let (epoch, at) = match read_header(&h) {
            None if all[..24].iter().all(|&b| b == 0) => (0, HEADER),
            None => {
                return Err(invalid(format!(
                    "{} has no valid header: not a maas journal, or torn while being \
                     reset (after everything in it had reached the database); move it \
                     away to open the database without it",
                    path.display()
                )));
            }
            Some(epoch) => {
                let mut at = HEADER;
                while let Some(record) = Self::record_at(&all, at, epoch) {
                    if parse_payload(record, &mut entries).is_none() {
                        break;
                    }
                    at += (RECORD_HEAD + record.len()) as u64;
                }
                (epoch, at)
            }
        };
        let journal = Journal {
            file,
            path,
            size,
            epoch,
            at,
            pending: Vec::new(),
        };
        Ok((journal, entries))
    }

    /// The payload of the record at `at`, if it is whole and of `epoch`.
    fn record_at(all: &[u8], at: u64, epoch: u64) -> Option<&[u8]> {
        let at = usize::try_from(at).ok()?;
        let len = usize::try_from(u32_at(all, at)?).ok()?;
        if len == 0 {
            return None;
        }
        let c = u32_at(all, at + 4)?;
        let e = u64_at(all, at + 8)?;
        let payload = all.get(at + RECORD_HEAD..at + RECORD_HEAD + len)?;
        (e == epoch && c == crc(e, payload)).then_some(payload)
    }

    /// The journal's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Notes a change of the current round.
    pub(crate) fn note(&mut self, tree: Journaled, key: &[u8], value: Option<&[u8]>) {
        // Keys are counter ids and bucket keys: far below 64 KiB. A longer
        // one is cut, which only makes its replay land elsewhere; values
        // are fixed-width counters and sums.
        let klen = u16::try_from(key.len()).unwrap_or(u16::MAX);
        self.pending.push(tree as u8);
        self.pending.extend_from_slice(&klen.to_le_bytes());
        self.pending.extend_from_slice(&key[..usize::from(klen)]);
        match value {
            Some(v) => {
                let vlen = u32::try_from(v.len()).unwrap_or(REMOVED - 1);
                self.pending.extend_from_slice(&vlen.to_le_bytes());
                self.pending.extend_from_slice(&v[..vlen as usize]);
            }
            None => self.pending.extend_from_slice(&REMOVED.to_le_bytes()),
        }
    }

    /// Whether the current round changed a journaled counter.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether the journal is past half full: time to drain the overlay
    /// into sled and then checkpoint (`crate::writer`).
    pub(crate) fn wants_checkpoint(&self) -> bool {
        self.must_checkpoint() || self.at > self.size / 2
    }

    /// Whether the current round's record would not fit, or the journal is
    /// past seven eighths full (a drain that did not keep up): a checkpoint
    /// now, instead of the record.
    pub(crate) fn must_checkpoint(&self) -> bool {
        let after = self.at + (RECORD_HEAD + self.pending.len()) as u64;
        after > self.size || self.at > self.size / 8 * 7
    }

    /// Writes the current round's record and syncs it.
    #[cfg(test)]
    pub(crate) fn commit(&mut self) -> std::io::Result<()> {
        self.write()?;
        self.sync()
    }

    /// Makes what was written durable (`fdatasync`).
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Writes the current round's record, not synced yet: a sync of
    /// [`Self::file`] afterwards makes it durable.
    pub(crate) fn write(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let len = u32::try_from(self.pending.len())
            .map_err(|_| invalid("a journal record over 4 GiB".into()))?;
        let mut record = Vec::with_capacity(RECORD_HEAD + self.pending.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&crc(self.epoch, &self.pending).to_le_bytes());
        record.extend_from_slice(&self.epoch.to_le_bytes());
        record.extend_from_slice(&self.pending);
        let mut f = &self.file;
        f.seek(SeekFrom::Start(self.at))?;
        f.write_all(&record)?;
        self.at += record.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Voids every record (once the database holds all of them, synced):
    /// the next epoch in the header, records from the start again.
    pub(crate) fn reset(&mut self) -> std::io::Result<()> {
        let epoch = self.epoch + 1;
        let mut f = &self.file;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&header(epoch))?;
        f.sync_data()?;
        self.epoch = epoch;
        self.at = HEADER;
        self.pending.clear();
        Ok(())
    }

    /// Drops the current round's entries (a checkpoint covered them).
    pub(crate) fn discard_pending(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn records_replay_in_order_and_a_reset_voids_them() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let (mut j, replay) = Journal::open(d, 64 * 1024).unwrap();
        assert!(replay.is_empty());
        j.reset().unwrap();
        j.note(Journaled::Balances, b"rem:a", Some(&[1; 16]));
        j.note(Journaled::Windows, b"rl:a", None);
        j.commit().unwrap();
        j.note(Journaled::Balances, b"rem:a", Some(&[2; 16]));
        j.commit().unwrap();
        // Not committed: lost, as in a crash before the sync.
        j.note(Journaled::Usage, b"u", Some(&[3; 80]));
        drop(j);
        let (mut j, replay) = Journal::open(d, 64 * 1024).unwrap();
        assert_eq!(
            replay,
            vec![
                (Journaled::Balances, b"rem:a".to_vec(), Some(vec![1; 16])),
                (Journaled::Windows, b"rl:a".to_vec(), None),
                (Journaled::Balances, b"rem:a".to_vec(), Some(vec![2; 16])),
            ]
        );
        j.reset().unwrap();
        drop(j);
        let (_, replay) = Journal::open(d, 64 * 1024).unwrap();
        assert!(replay.is_empty(), "{replay:?}");
    }

    #[test]
    fn a_torn_record_ends_the_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let (mut j, _) = Journal::open(d, 64 * 1024).unwrap();
        j.reset().unwrap();
        j.note(Journaled::Balances, b"k1", Some(&[1; 16]));
        j.commit().unwrap();
        let second = j.at;
        j.note(Journaled::Balances, b"k2", Some(&[2; 16]));
        j.commit().unwrap();
        drop(j);
        // Flip a byte of the second record's payload.
        let path = d.join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[second as usize + RECORD_HEAD + 1] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (_, replay) = Journal::open(d, 64 * 1024).unwrap();
        assert_eq!(replay.len(), 1);
        assert_eq!(replay[0].1, b"k1");
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join(FILE_NAME), vec![7u8; 128 * 1024]).unwrap();
        let e = Journal::open(d, 64 * 1024).unwrap_err();
        assert!(e.to_string().contains("no valid header"), "{e}");
    }
}
