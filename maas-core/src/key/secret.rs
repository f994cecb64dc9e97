//! Key secrets: generation, the keyed hash that is stored in their place, and
//! the cheap format check that turns garbage away before any lookup.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::keyspace::MAX_BYTE_LENGTH;

/// The longest key accepted for verification, in bytes; longer ones are
/// `NOT_FOUND` without a lookup.
pub const MAX_KEY_LEN: usize = 512;
/// Characters of the random part kept in `start` for identification.
pub const START_CHARS: usize = 4;

const BASE58: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Byte classes for the format check: bit 0 = base58, bit 1 = prefix character.
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < BASE58.len() {
        t[BASE58[i] as usize] |= 1;
        i += 1;
    }
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' {
            t[b] |= 2;
        }
        b += 1;
    }
    t
};
/// Base58 characters needed for `MAX_BYTE_LENGTH` bytes: ceil(255 * log(256) / log(58)).
const MAX_RANDOM_CHARS: usize = 349;
/// The fewest base58 characters a 16-byte secret can encode to.
const MIN_RANDOM_CHARS: usize = 16;

/// The keyed blake3 hash of a key: what is stored instead of the key.
///
/// Equality is constant-time. Serialized as 64 hex characters.
#[derive(Clone, Copy)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// The hash from its 32 bytes.
    pub const fn from_bytes(b: [u8; 32]) -> Self {
        KeyHash(b)
    }

    /// The 32 bytes of the hash.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The hash as lowercase hex.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl PartialEq for KeyHash {
    fn eq(&self, other: &Self) -> bool {
        // blake3::Hash compares in constant time.
        blake3::Hash::from_bytes(self.0) == blake3::Hash::from_bytes(other.0)
    }
}

impl Eq for KeyHash {}

impl std::hash::Hash for KeyHash {
    /// The hash is already uniformly distributed: its first 8 bytes are enough
    /// (and let maps use a pass-through hasher).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        write!(f, "KeyHash({}…)", &hex[..8])
    }
}

impl Serialize for KeyHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        blake3::Hash::from_hex(&s)
            .map(|h| KeyHash(*h.as_bytes()))
            .map_err(serde::de::Error::custom)
    }
}

/// Hashes keys with a deployment secret, so that a copy of the store alone
/// cannot be used to test guessed keys offline.
///
/// The secret is held outside the store (configuration, environment, a
/// secret manager) and must stay the same for the life of the keys: keys
/// hashed under another secret no longer verify. `Debug` does not show it.
#[derive(Clone)]
pub struct KeyHasher {
    key: [u8; 32],
}

impl KeyHasher {
    /// A hasher with a 32-byte secret.
    pub const fn new(secret: [u8; 32]) -> Self {
        KeyHasher { key: secret }
    }

    /// A hasher with a secret of any length (e.g. from configuration),
    /// stretched to 32 bytes with blake3's key derivation.
    pub fn from_secret(secret: &[u8]) -> Self {
        KeyHasher {
            key: blake3::derive_key("maas 2025 key hash secret v1", secret),
        }
    }

    /// A hasher with a fresh random secret (tests, ephemeral deployments:
    /// keys do not survive a restart with another secret).
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        KeyHasher { key }
    }

    /// The hash of `key`.
    #[inline]
    pub fn hash(&self, key: &[u8]) -> KeyHash {
        KeyHash(*blake3::keyed_hash(&self.key, key).as_bytes())
    }
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHasher(<secret>)")
    }
}

/// A freshly generated key: the secret (shown once) and its `start`.
#[derive(Clone)]
pub(crate) struct NewSecret {
    pub(crate) key: String,
    pub(crate) start: String,
}

/// Generates `prefix_` + base58 of `byte_length` bytes from the thread's CSPRNG.
pub(crate) fn generate(prefix: Option<&str>, byte_length: u16) -> NewSecret {
    let n = usize::from(byte_length.min(MAX_BYTE_LENGTH));
    let mut buf = [0u8; MAX_BYTE_LENGTH as usize];
    rand::rng().fill_bytes(&mut buf[..n]);
    let random = bs58::encode(&buf[..n]).into_string();
    buf.fill(0);
    let head: String = random.chars().take(START_CHARS).collect();
    match prefix {
        Some(p) => NewSecret {
            key: format!("{p}_{random}"),
            start: format!("{p}_{head}"),
        },
        None => NewSecret {
            key: random,
            start: head,
        },
    }
}

/// Whether `key` could be a key this system issued: at most
/// [`MAX_KEY_LEN`] bytes, UTF-8, an optional valid prefix and `_`, then
/// 16..=349 base58 characters. Anything else cannot match and is turned away
/// without a lookup.
pub(crate) fn plausible(key: &[u8]) -> bool {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return false;
    }
    let (prefix, random) = match key.iter().rposition(|&b| b == b'_') {
        Some(i) => (&key[..i], &key[i + 1..]),
        None => (&key[..0], key),
    };
    if prefix.len() > crate::keyspace::MAX_PREFIX_LEN
        || !prefix.iter().all(|&b| CLASS[usize::from(b)] & 2 != 0)
    {
        return false;
    }
    (MIN_RANDOM_CHARS..=MAX_RANDOM_CHARS).contains(&random.len())
        && random.iter().all(|&b| CLASS[usize::from(b)] & 1 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_plausible_and_distinct() {
        for len in [16u16, 32, 255] {
            let a = generate(Some("sk"), len);
            let b = generate(Some("sk"), len);
            assert_ne!(a.key, b.key);
            assert!(a.key.starts_with("sk_"));
            assert!(a.key.starts_with(&a.start));
            assert_eq!(a.start.len(), 3 + START_CHARS);
            assert!(plausible(a.key.as_bytes()), "{}", a.key);
        }
        let bare = generate(None, 16);
        assert!(!bare.key.contains('_'));
        assert!(plausible(bare.key.as_bytes()));
    }

    #[test]
    fn implausible_keys() {
        assert!(!plausible(b""));
        assert!(!plausible(&[b'a'; 513]));
        assert!(!plausible(b"sk_0OIl0OIl0OIl0OIl0OIl")); // not base58
        assert!(!plausible(b"waytoolongprefix_5KJvsngHeMpm88rD"));
        assert!(!plausible(b"sk_short"));
        assert!(!plausible(b"s k_5KJvsngHeMpm88rDWeWiMj"));
        assert!(!plausible(&[0xff, 0xfe, b'_', b'a']));
    }

    #[test]
    fn hashes_depend_on_the_secret_and_compare_equal() {
        let a = KeyHasher::from_secret(b"one");
        let b = KeyHasher::from_secret(b"two");
        assert_ne!(a.hash(b"k"), b.hash(b"k"));
        assert_eq!(a.hash(b"k"), a.hash(b"k"));
        let h = a.hash(b"k");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<KeyHash>(&json).unwrap(), h);
        assert!(!format!("{a:?}").contains("one"));
    }
}
