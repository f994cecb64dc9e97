//! The usage store on two sled trees.
//!
//! - `usage`: key = minute start (8 bytes, big-endian unsigned ms) followed
//!   by `tenant \0 key_id \0 model \0 currency`; value = the ten sums of
//!   [`UsageSums::to_array`], 8 bytes big-endian each.
//! - `verifications`: key = minute, then `keyspace_id \0 key_id \0
//!   owner_id`; value = the four sums of [`VerificationSums::to_array`].
//!
//! Big-endian minutes first make a time range one range scan, in the order of
//! [`UsageKey`]/[`VerificationKey`] (parts hold no NUL, and NUL sorts before
//! every other byte, so `a \0 …` sorts like the tuple). Each batch is added
//! on the writer thread and journaled in one record: all of it or none.

use maas_core::usage::{
    UsageBucket, UsageFilter, UsageKey, UsageSums, VerificationBucket, VerificationFilter,
    VerificationKey, VerificationSums,
};
use maas_core::{Error, Result, Timestamp};
use std::collections::HashMap;

use crate::codec::joined;
use crate::journal::{Journal, Journaled};
use crate::store::Trees;

/// The big-endian minute of a stored key; negative minutes cannot be stored.
fn minute_bytes(minute: Timestamp) -> Result<[u8; 8]> {
    u64::try_from(minute.as_millis())
        .map(u64::to_be_bytes)
        .map_err(|_| Error::invalid("minute", "must not be before 1970-01-01"))
}

fn key_bytes(minute: Timestamp, parts: &[&str]) -> Result<Vec<u8>> {
    let mut k = minute_bytes(minute)?.to_vec();
    k.extend_from_slice(&joined(parts));
    Ok(k)
}

fn corrupt(what: &str) -> Error {
    Error::internal(format!("a stored {what} bucket is unreadable"))
}

/// The minute and the `N` parts of a stored key.
fn split_key<const N: usize>(what: &str, k: &[u8]) -> Result<(Timestamp, [String; N])> {
    let (m, rest) = k.split_at_checked(8).ok_or_else(|| corrupt(what))?;
    let m = <[u8; 8]>::try_from(m).map_err(|_| corrupt(what))?;
    let m = i64::try_from(u64::from_be_bytes(m)).map_err(|_| corrupt(what))?;
    let mut parts: [String; N] = std::array::from_fn(|_| String::new());
    let mut it = rest.split(|&b| b == 0);
    for p in &mut parts {
        let bytes = it.next().ok_or_else(|| corrupt(what))?;
        *p = std::str::from_utf8(bytes)
            .map_err(|_| corrupt(what))?
            .to_owned();
    }
    if it.next().is_some() {
        return Err(corrupt(what));
    }
    Ok((Timestamp::from_millis(m), parts))
}

fn decode_sums<const N: usize>(what: &str, v: &[u8]) -> Result<[u64; N]> {
    if v.len() != N * 8 {
        return Err(corrupt(what));
    }
    let mut out = [0u64; N];
    for (o, c) in out.iter_mut().zip(v.chunks_exact(8)) {
        *o = u64::from_be_bytes(<[u8; 8]>::try_from(c).map_err(|_| corrupt(what))?);
    }
    Ok(out)
}

fn encode_sums<const N: usize>(a: [u64; N]) -> Vec<u8> {
    a.iter().flat_map(|x| x.to_be_bytes()).collect()
}

/// Adds each `(key, sums)` into the tree `which`, on the writer thread. All
/// sums are computed before the first write, and the writes go into one
/// journal record: a crash keeps all of a batch that was answered, and
/// none of it is counted twice.
pub(crate) fn add<const N: usize>(
    t: &Trees,
    j: &mut Journal,
    which: Journaled,
    what: &'static str,
    entries: &[(Vec<u8>, [u64; N])],
) -> Result<()> {
    // A key may come more than once in a batch: each adds to the sum so far.
    let mut sums: Vec<(&[u8], [u64; N])> = Vec::with_capacity(entries.len());
    let mut at: HashMap<&[u8], usize> = HashMap::with_capacity(entries.len());
    for (k, add) in entries {
        let i = match at.get(k.as_slice()) {
            Some(&i) => i,
            None => {
                let cur = match t.get_journaled(which, k)? {
                    Some(v) => decode_sums::<N>(what, &v)?,
                    None => [0; N],
                };
                sums.push((k, cur));
                at.insert(k, sums.len() - 1);
                sums.len() - 1
            }
        };
        for (c, a) in sums[i].1.iter_mut().zip(add) {
            *c = c.saturating_add(*a);
        }
    }
    for (k, v) in sums {
        t.put_journaled(j, which, k, Some(&encode_sums(v)))?;
    }
    Ok(())
}

/// Adds a usage report's entries unless its source's last sequence is at or
/// above `sequence`, and notes the sequence: one journal record with the
/// buckets, so a crash keeps both or neither.
pub(crate) fn add_report(
    t: &Trees,
    j: &mut Journal,
    source: &str,
    sequence: u64,
    usage: &[(Vec<u8>, [u64; 10])],
    verifications: &[(Vec<u8>, [u64; 4])],
) -> Result<bool> {
    let last = match t.get_journaled(Journaled::Reports, source.as_bytes())? {
        Some(v) => u64::from_be_bytes(
            <[u8; 8]>::try_from(v.as_slice()).map_err(|_| corrupt("usage report"))?,
        ),
        None => 0,
    };
    if last >= sequence {
        return Ok(false);
    }
    add(t, j, Journaled::Usage, "usage", usage)?;
    add(
        t,
        j,
        Journaled::Verifications,
        "verification",
        verifications,
    )?;
    t.put_journaled(
        j,
        Journaled::Reports,
        source.as_bytes(),
        Some(&sequence.to_be_bytes()),
    )?;
    Ok(true)
}

/// The stored entries of minutes in `[from, to)`.
fn scan(
    t: &Trees,
    which: Journaled,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let from = Timestamp::from_millis(from.as_millis().max(0));
    if to <= from {
        return Ok(Vec::new());
    }
    let (lo, hi) = (minute_bytes(from)?, minute_bytes(to)?);
    t.range_journaled(which, &lo, &hi)
}

/// The stored keys and sums of usage buckets.
pub(crate) fn usage_entries(buckets: &[UsageBucket]) -> Result<Vec<(Vec<u8>, [u64; 10])>> {
    buckets
        .iter()
        .map(|b| {
            let k = &b.key;
            let key = key_bytes(k.minute, &[&k.tenant, &k.key_id, &k.model, &k.currency])?;
            Ok((key, b.sums.to_array()))
        })
        .collect()
}

/// The stored keys and sums of verification buckets.
pub(crate) fn verification_entries(
    buckets: &[VerificationBucket],
) -> Result<Vec<(Vec<u8>, [u64; 4])>> {
    buckets
        .iter()
        .map(|b| {
            let k = &b.key;
            let key = key_bytes(k.minute, &[&k.keyspace_id, &k.key_id, &k.owner_id])?;
            Ok((key, b.sums.to_array()))
        })
        .collect()
}

impl Trees {
    pub(crate) fn usage_buckets(&self, filter: &UsageFilter) -> Result<Vec<UsageBucket>> {
        let mut out = Vec::new();
        for (k, v) in scan(self, Journaled::Usage, filter.from, filter.to)? {
            let (minute, [tenant, key_id, model, currency]) = split_key::<4>("usage", &k)?;
            let key = UsageKey {
                minute,
                tenant,
                key_id,
                model,
                currency,
            };
            if filter.matches(&key) {
                let sums = UsageSums::from_array(decode_sums("usage", &v)?);
                out.push(UsageBucket { key, sums });
            }
        }
        Ok(out)
    }

    pub(crate) fn verification_buckets(
        &self,
        filter: &VerificationFilter,
    ) -> Result<Vec<VerificationBucket>> {
        let mut out = Vec::new();
        for (k, v) in scan(self, Journaled::Verifications, filter.from, filter.to)? {
            let (minute, [keyspace_id, key_id, owner_id]) = split_key::<3>("verification", &k)?;
            let key = VerificationKey {
                minute,
                keyspace_id,
                key_id,
                owner_id,
            };
            if filter.matches(&key) {
                let sums = VerificationSums::from_array(decode_sums("verification", &v)?);
                out.push(VerificationBucket { key, sums });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_roundtrip_and_sort_like_tuples() {
        let m = Timestamp::from_millis(1_735_689_600_000);
        let k = key_bytes(m, &["acme", "", "llama", "USD"]).unwrap();
        let (minute, parts) = split_key::<4>("usage", &k).unwrap();
        assert_eq!(minute, m);
        assert_eq!(parts, ["acme", "", "llama", "USD"].map(String::from));
        let a = key_bytes(m, &["a", "", "m", ""]).unwrap();
        let b = key_bytes(m, &["ab", "", "m", ""]).unwrap();
        assert!(a < b);
        let later = key_bytes(m.add_millis(60_000), &["a", "", "m", ""]).unwrap();
        assert!(b < later);
        assert!(key_bytes(Timestamp::from_millis(-60_000), &["a"]).is_err());
        assert!(split_key::<4>("usage", b"short").is_err());
        assert!(split_key::<2>("usage", &k).is_err());
        let sums = [1, 2, 3, u64::MAX];
        assert_eq!(decode_sums::<4>("x", &encode_sums(sums)).unwrap(), sums);
        assert!(decode_sums::<4>("x", &[0; 31]).is_err());
    }
}
