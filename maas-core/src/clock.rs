//! Time: the [`Clock`] trait, the [`SystemClock`] used in production and the
//! [`ManualClock`] that tests advance explicitly.
//!
//! Domain code never reads the wall clock; it asks the clock it was built with.
//! Every constructor that needs time has a `*_with_clock` twin, and the plain
//! constructor calls it with a [`SystemClock`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A point in time: milliseconds since the Unix epoch, UTC.
///
/// Milliseconds are the unit of the Unkey API (`expires`, `createdAt`, `reset`)
/// and fine enough for rate-limit windows. Serialized as a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// A timestamp from milliseconds since the Unix epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// This timestamp moved forward by `d` (saturating).
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_millis(d)))
    }

    /// This timestamp moved forward by `ms` milliseconds (saturating; negative moves back).
    pub const fn add_millis(self, ms: i64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }

    /// The same instant as a [`time::OffsetDateTime`] in UTC; `None` if out of
    /// the range `time` can represent.
    pub fn to_datetime(self) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000).ok()
    }

    /// The instant of `dt`, truncated to milliseconds (saturating).
    pub fn from_datetime(dt: OffsetDateTime) -> Self {
        let ms = dt.unix_timestamp_nanos().div_euclid(1_000_000);
        Timestamp(i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX }))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_datetime().and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        }) {
            Some(s) => f.write_str(&s),
            None => write!(f, "{}ms", self.0),
        }
    }
}

fn duration_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A source of the current time.
///
/// Object safe; shared as `Arc<dyn Clock>`.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(duration_millis(d)),
            Err(e) => Timestamp(-duration_millis(e.duration())),
        }
    }
}

/// A clock that only moves when told to. Clones share the same time, so a test
/// keeps one handle and gives another to the code under test.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
}

impl ManualClock {
    /// A manual clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock {
            now: Arc::new(AtomicI64::new(start.0)),
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.now.fetch_add(duration_millis(d), Ordering::SeqCst);
    }

    /// Moves the clock forward by `ms` milliseconds (backward if negative).
    pub fn advance_millis(&self, ms: i64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `t` (which may be in the past: clocks do step back).
    pub fn set(&self, t: Timestamp) {
        self.now.store(t.0, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    /// A manual clock at 2025-01-01T00:00:00Z.
    fn default() -> Self {
        ManualClock::new(Timestamp(1_735_689_600_000))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now.load(Ordering::SeqCst))
    }
}

/// A shared clock handle, as held by services.
pub type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_is_shared_by_clones() {
        let a = ManualClock::new(Timestamp::from_millis(1_000));
        let b = a.clone();
        a.advance(Duration::from_secs(2));
        assert_eq!(b.now(), Timestamp::from_millis(3_000));
        b.set(Timestamp::from_millis(10));
        assert_eq!(a.now().as_millis(), 10);
    }

    #[test]
    fn timestamp_roundtrips_through_datetime() {
        let t = Timestamp::from_millis(1_735_689_600_123);
        let dt = t.to_datetime().unwrap();
        assert_eq!(Timestamp::from_datetime(dt), t);
        assert_eq!(t.to_string(), "2025-01-01T00:00:00.123Z");
        assert!(Timestamp::from_millis(i64::MAX).to_datetime().is_none());
    }

    #[test]
    fn system_clock_is_after_2024() {
        assert!(SystemClock.now() > Timestamp::from_millis(1_704_067_200_000));
    }
}

/// Serde of a [`Timestamp`] as an RFC 3339 string (`2025-03-12T10:00:00Z`)
/// instead of unix milliseconds: `#[serde(with = "maas_core::clock::rfc3339")]`.
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Timestamp;

    /// Writes the time as RFC 3339.
    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(t)
    }

    /// Reads an RFC 3339 time.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
            .map(Timestamp::from_datetime)
            .map_err(serde::de::Error::custom)
    }

    /// The same for `Option<Timestamp>` (`null` for none).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        use super::Timestamp;

        /// Writes the time as RFC 3339, or `null`.
        pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.collect_str(t),
                None => s.serialize_none(),
            }
        }

        /// Reads an RFC 3339 time or `null`.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|s| {
                    time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                        .map(Timestamp::from_datetime)
                        .map_err(serde::de::Error::custom)
                })
                .transpose()
        }
    }
}
