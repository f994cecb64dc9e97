//! Identifiers: a type per kind of thing, each a short prefix and a
//! time-ordered random part (`key_01JGF9...`).
//!
//! The random part is 26 characters of Crockford base32 over 128 bits: 48 bits
//! of milliseconds from the service's clock, then 80 random bits. Ids created
//! later sort after ids created earlier (to the millisecond), which gives lists
//! a stable creation order and cursors that are just the last id seen.
//!
//! The same 128 bits can be shown as a UUID (`to_uuid`), for APIs whose
//! documents type ids as UUIDs (seed 001's projects, keys and data planes);
//! ids generated since this was added are valid UUIDv7s (version 7, RFC
//! 9562 variant: 74 of the 80 random bits stay random), and `parse_any`
//! accepts either form.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::{Error, Result};

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The longest identifier accepted from a caller, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// A new time-ordered random identifier body (26 characters).
pub(crate) fn ordered_random(now: Timestamp) -> String {
    let ms = u128::from(now.as_millis().clamp(0, (1 << 48) - 1) as u64);
    let mut rnd = [0u8; 10];
    rand::rng().fill_bytes(&mut rnd);
    let mut r: u128 = 0;
    for b in rnd {
        r = (r << 8) | u128::from(b);
    }
    // UUIDv7: version 7 in the 4 bits after the milliseconds, variant 0b10
    // in the 2 bits after the next 12.
    r = (r & !(0xF << 76)) | (0x7 << 76);
    r = (r & !(0b11 << 62)) | (0b10 << 62);
    bits_body((ms << 80) | r)
}

/// The 128 bits of a generated id's 26-character body, if it is one.
fn body_bits(body: &str) -> Option<u128> {
    if body.len() != 26 {
        return None;
    }
    let mut v: u128 = 0;
    for (i, c) in body.bytes().enumerate() {
        let d = CROCKFORD.iter().position(|&x| x == c)? as u128;
        // 26 × 5 = 130 bits: the first character carries only 3.
        if i == 0 && d > 7 {
            return None;
        }
        v = (v << 5) | d;
    }
    Some(v)
}

fn bits_body(mut v: u128) -> String {
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = CROCKFORD[(v & 31) as usize];
        v >>= 5;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// `v` as a lower-case hyphenated UUID.
fn uuid_string(v: u128) -> String {
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The 128 bits of a hyphenated UUID (either case), if `s` is one.
fn uuid_bits(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok()
}

/// Serde for ids shown as UUIDs: written as [`KeyId::to_uuid`] and the like
/// (an id maas did not generate stays as it is), read in either form.
pub mod uuid_form {
    use serde::{Deserialize, Deserializer, Serializer};

    /// An id of any kind, for [`serialize`] and [`deserialize`].
    pub trait UuidId: Sized {
        /// The UUID form, if any.
        fn uuid(&self) -> Option<String>;
        /// The id as stored.
        fn raw(&self) -> &str;
        /// From either form.
        fn from_any(s: &str) -> crate::error::Result<Self>;
    }

    /// Writes the UUID form.
    pub fn serialize<S: Serializer, T: UuidId>(id: &T, s: S) -> Result<S::Ok, S::Error> {
        match id.uuid() {
            Some(u) => s.serialize_str(&u),
            None => s.serialize_str(id.raw()),
        }
    }

    /// Reads either form.
    pub fn deserialize<'de, D: Deserializer<'de>, T: UuidId>(d: D) -> Result<T, D::Error> {
        let s = String::deserialize(d)?;
        T::from_any(&s).map_err(serde::de::Error::custom)
    }
}

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub struct $name(String);

        impl $name {
            /// The prefix of generated identifiers of this kind.
            pub const PREFIX: &'static str = $prefix;

            /// A new identifier, ordered by `now`.
            pub fn generate(now: Timestamp) -> Self {
                $name(format!("{}_{}", $prefix, ordered_random(now)))
            }

            /// An identifier taken from a caller: any non-empty string of at
            /// most [`MAX_ID_LEN`] bytes without control characters. (An id
            /// that was never issued is then simply not found.)
            pub fn parse(s: &str) -> Result<Self> {
                if s.is_empty() || s.len() > MAX_ID_LEN || s.chars().any(char::is_control) {
                    return Err(Error::invalid(
                        concat!($kind, "Id"),
                        "must be 1 to 128 bytes without control characters",
                    ));
                }
                Ok($name(s.to_owned()))
            }

            /// The identifier as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Its 128 bits as a UUID (lower case), if maas generated it.
            pub fn to_uuid(&self) -> Option<String> {
                let body = self.0.strip_prefix(concat!($prefix, "_"))?;
                body_bits(body).map(uuid_string)
            }

            /// The identifier whose UUID form is `s`, if `s` is a UUID.
            pub fn from_uuid(s: &str) -> Option<Self> {
                uuid_bits(s).map(|v| $name(format!("{}_{}", $prefix, bits_body(v))))
            }

            /// An identifier taken from a caller in either form: a UUID is
            /// read as [`Self::from_uuid`], anything else as [`Self::parse`].
            pub fn parse_any(s: &str) -> Result<Self> {
                match Self::from_uuid(s) {
                    Some(id) => Ok(id),
                    None => Self::parse(s),
                }
            }
        }

        impl uuid_form::UuidId for $name {
            fn uuid(&self) -> Option<String> {
                self.to_uuid()
            }
            fn raw(&self) -> &str {
                &self.0
            }
            fn from_any(s: &str) -> Result<Self> {
                Self::parse_any(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

define_id!(
    /// Identifies a [`Tenant`](crate::tenant::Tenant).
    TenantId,
    "ten",
    "tenant"
);
define_id!(
    /// Identifies a [`Keyspace`](crate::keyspace::Keyspace) (an Unkey "API").
    KeyspaceId,
    "ks",
    "keyspace"
);
define_id!(
    /// Identifies a [`Key`](crate::key::Key). Not a secret.
    KeyId,
    "key",
    "key"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_are_unique() {
        let a = KeyId::generate(Timestamp::from_millis(1_000));
        let b = KeyId::generate(Timestamp::from_millis(1_001));
        let c = KeyId::generate(Timestamp::from_millis(1_001));
        assert!(a < b && a < c);
        assert_ne!(b, c);
        assert!(a.as_str().starts_with("key_"));
        assert_eq!(a.as_str().len(), 4 + 26);
    }

    #[test]
    fn parse_rejects_empty_long_and_control() {
        assert!(KeyId::parse("").is_err());
        assert!(KeyId::parse(&"x".repeat(129)).is_err());
        assert!(KeyId::parse("a\nb").is_err());
        assert_eq!(KeyId::parse("key_1").unwrap().as_str(), "key_1");
        match TenantId::parse("").unwrap_err() {
            Error::InvalidInput { field, .. } => assert_eq!(field, "tenantId"),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn ids_are_uuid_v7s_both_ways() {
        let now = Timestamp::from_millis(1_735_689_600_123);
        let id = KeyspaceId::generate(now);
        let u = id.to_uuid().unwrap();
        assert_eq!(u.len(), 36);
        // Version 7, RFC 9562 variant, the milliseconds first.
        assert_eq!(&u[14..15], "7");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        assert_eq!(
            i64::from_str_radix(&u[..13].replace('-', ""), 16).unwrap(),
            1_735_689_600_123
        );
        assert_eq!(KeyspaceId::from_uuid(&u).unwrap(), id);
        assert_eq!(KeyspaceId::parse_any(&u.to_uppercase()).unwrap(), id);
        assert_eq!(KeyspaceId::parse_any(id.as_str()).unwrap(), id);
        // Not generated by maas: no UUID form; not a UUID: taken as it is.
        assert_eq!(KeyspaceId::parse("ks_nope").unwrap().to_uuid(), None);
        assert_eq!(KeyId::parse_any("key_1").unwrap().as_str(), "key_1");
        assert!(KeyId::from_uuid("0190-not-a-uuid").is_none());
        // Every 128-bit value round-trips.
        for v in [
            0u128,
            1,
            u128::MAX,
            0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
        ] {
            assert_eq!(body_bits(&bits_body(v)), Some(v));
            assert_eq!(uuid_bits(&uuid_string(v)), Some(v));
        }
    }
}
