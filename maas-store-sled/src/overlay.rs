//! The overlay: journaled values not yet written into sled.
//!
//! A counter change (a spend, a limit take, a usage add) is durable once its
//! journal record is synced (`crate::journal`); writing it into sled as well
//! is only needed before the journal is voided at a checkpoint. So the
//! writer keeps the last value of each changed counter here and writes it
//! into sled later, once, however often it changed in between: with keys
//! spent over and over, most sled writes (a page-cache lookup and a node
//! copy each, the largest share of the writer's CPU in a profile of
//! verifyKey with `remaining`) fold into one.
//!
//! - **Reads** of journaled trees look here first, then in sled. A value is
//!   written into sled before it leaves the overlay, so a reader that misses
//!   it here finds it (or a later one) there.
//! - **Draining** ([`Overlay::drain`]) writes values into sled, oldest keys
//!   of each tree first (usage keys start with their minute), a bounded
//!   number per writer round, so no round stalls on a large overlay: from
//!   the moment the journal is half full until the overlay is empty, when
//!   the checkpoint then only has to flush; and whenever the overlay holds
//!   more than its cap ([`CAP`] entries), which bounds its memory.
//! - Only the writer thread changes the overlay; readers only look.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use maas_core::Result;

use crate::journal::Journaled;
use crate::store::{Trees, map_sled};

/// The most entries the overlay holds before it drains outside checkpoints
/// (about 100 bytes each with their keys and values).
pub(crate) const CAP: usize = 1 << 17;

/// A value in the overlay: `None` when the key was removed.
type Value = Option<Vec<u8>>;

/// The journaled values of each journaled tree not yet written into sled.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    trees: [Mutex<BTreeMap<Vec<u8>, Value>>; 5],
    len: AtomicUsize,
}

fn slot(which: Journaled) -> usize {
    match which {
        Journaled::Balances => 0,
        Journaled::Windows => 1,
        Journaled::Usage => 2,
        Journaled::Verifications => 3,
        Journaled::Reports => 4,
    }
}

const ALL: [Journaled; 5] = [
    Journaled::Balances,
    Journaled::Windows,
    Journaled::Usage,
    Journaled::Verifications,
    Journaled::Reports,
];

impl Overlay {
    fn map(&self, which: Journaled) -> MutexGuard<'_, BTreeMap<Vec<u8>, Value>> {
        self.trees[slot(which)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The value of `key` here: `None` when the overlay does not hold it,
    /// `Some(None)` when it holds its removal.
    pub(crate) fn get(&self, which: Journaled, key: &[u8]) -> Option<Value> {
        self.map(which).get(key).cloned()
    }

    /// Sets `key` to `value` (`None`: removed). Writer thread only.
    pub(crate) fn put(&self, which: Journaled, key: &[u8], value: Option<&[u8]>) {
        let value = value.map(<[u8]>::to_vec);
        let mut m = self.map(which);
        if let Some(slot) = m.get_mut(key) {
            *slot = value;
        } else {
            m.insert(key.to_vec(), value);
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The entries held for keys in `[lo, hi)`.
    pub(crate) fn range(&self, which: Journaled, lo: &[u8], hi: &[u8]) -> Vec<(Vec<u8>, Value)> {
        self.map(which)
            .range::<[u8], _>((Bound::Included(lo), Bound::Excluded(hi)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// How many entries the overlay holds.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Writes up to `budget` entries into sled (all of them with
    /// `usize::MAX`), each before it leaves the overlay; returns how many
    /// are left. Writer thread only.
    pub(crate) fn drain(&self, trees: &Trees, mut budget: usize) -> Result<usize> {
        for which in ALL {
            let tree = trees.journaled(which);
            while budget > 0 {
                // Copied out, so no reader waits while sled writes.
                let Some((key, value)) = self
                    .map(which)
                    .first_key_value()
                    .map(|(k, v)| (k.clone(), v.clone()))
                else {
                    break;
                };
                match &value {
                    Some(v) => tree.insert(&key[..], &v[..]).map(drop),
                    None => tree.remove(&key[..]).map(drop),
                }
                .map_err(map_sled)?;
                self.map(which).remove(&key);
                self.len.fetch_sub(1, Ordering::Relaxed);
                budget -= 1;
            }
        }
        Ok(self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_last_value_and_counts_keys_once() {
        let o = Overlay::default();
        o.put(Journaled::Balances, b"a", Some(b"1"));
        o.put(Journaled::Balances, b"a", Some(b"2"));
        o.put(Journaled::Windows, b"a", None);
        assert_eq!(o.len(), 2);
        assert_eq!(o.get(Journaled::Balances, b"a"), Some(Some(b"2".to_vec())));
        assert_eq!(o.get(Journaled::Windows, b"a"), Some(None));
        assert_eq!(o.get(Journaled::Usage, b"a"), None);
        o.put(Journaled::Usage, b"m1k", Some(b"x"));
        o.put(Journaled::Usage, b"m2k", Some(b"y"));
        o.put(Journaled::Usage, b"m3k", Some(b"z"));
        let r = o.range(Journaled::Usage, b"m2", b"m3");
        assert_eq!(r, vec![(b"m2k".to_vec(), Some(b"y".to_vec()))]);
    }
}
