//! Optimistic updates: read, change, write if the version did not move;
//! retry when a concurrent writer won.

use std::future::Future;

use crate::error::{Error, Result};

/// A record with an optimistic-concurrency version.
pub(crate) trait Versioned: Clone {
    fn version(&self) -> u64;
    fn set_version(&mut self, v: u64);
}

/// How many times an update is retried after losing to a concurrent one.
const MAX_RETRIES: usize = 64;

/// Reads the record with `read`, applies `change`, bumps the version and
/// stores it with `write(after, expected_version)`. A conflict is retried if
/// the stored version moved meanwhile (a concurrent writer won: read again),
/// and returned if it did not (the conflict is about the content, e.g. a
/// taken name). Returns the records before and after.
///
/// (`read` and `write` are closures returning futures over owned values, not
/// async closures over references: the resulting future must stay `Send`.)
pub(crate) async fn update<T, R, RF, W, WF>(
    what: &str,
    mut read: R,
    mut change: impl FnMut(&mut T) -> Result<()>,
    mut write: W,
) -> Result<(T, T)>
where
    T: Versioned,
    R: FnMut() -> RF,
    RF: Future<Output = Result<T>>,
    W: FnMut(T, T) -> WF,
    WF: Future<Output = Result<()>>,
{
    for _ in 0..MAX_RETRIES {
        let before = read().await?;
        let mut after = before.clone();
        change(&mut after)?;
        after.set_version(before.version() + 1);
        match write(before.clone(), after.clone()).await {
            Ok(()) => return Ok((before, after)),
            Err(e @ Error::Conflict { .. }) => {
                if read().await?.version() == before.version() {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::conflict(format!("{what} keeps changing; try again")))
}

macro_rules! versioned {
    ($($t:ty),*) => {$(
        impl Versioned for $t {
            fn version(&self) -> u64 {
                self.version
            }
            fn set_version(&mut self, v: u64) {
                self.version = v;
            }
        }
    )*};
}

versioned!(
    crate::tenant::Tenant,
    crate::keyspace::Keyspace,
    crate::key::KeyRecord,
    crate::tier::Tier,
    crate::model::Model
);
