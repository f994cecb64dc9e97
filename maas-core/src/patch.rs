//! [`Patch`]: a field of an update that distinguishes "absent" (leave it),
//! `null` (clear it) and a value (set it), as `keys.updateKey` does.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One field of a partial update.
///
/// With serde, put `#[serde(default)]` on the field: an absent field stays
/// [`Patch::Keep`], `null` becomes [`Patch::Clear`], a value [`Patch::Set`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Patch<T> {
    /// Leave the field as it is.
    #[default]
    Keep,
    /// Clear the field (set it to "none").
    Clear,
    /// Set the field to this value.
    Set(T),
}

impl<T> Patch<T> {
    /// Whether this patch changes anything.
    pub fn is_keep(&self) -> bool {
        matches!(self, Patch::Keep)
    }

    /// Applies the patch to an optional field.
    pub fn apply_to(self, field: &mut Option<T>) {
        match self {
            Patch::Keep => {}
            Patch::Clear => *field = None,
            Patch::Set(v) => *field = Some(v),
        }
    }

    /// The patch with its value borrowed.
    pub fn as_ref(&self) -> Patch<&T> {
        match self {
            Patch::Keep => Patch::Keep,
            Patch::Clear => Patch::Clear,
            Patch::Set(v) => Patch::Set(v),
        }
    }

    /// The patch with its value mapped.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Patch<U> {
        match self {
            Patch::Keep => Patch::Keep,
            Patch::Clear => Patch::Clear,
            Patch::Set(v) => Patch::Set(f(v)),
        }
    }
}

impl<T> From<Option<T>> for Patch<T> {
    /// `Some(v)` sets, `None` clears.
    fn from(v: Option<T>) -> Self {
        match v {
            Some(v) => Patch::Set(v),
            None => Patch::Clear,
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<T>::deserialize(d).map(Patch::from)
    }
}

impl<T: Serialize> Serialize for Patch<T> {
    /// `Keep` and `Clear` both serialize as `null`; skip `Keep` fields with
    /// `#[serde(skip_serializing_if = "Patch::is_keep")]`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Patch::Set(v) => s.serialize_some(v),
            _ => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Upd {
        #[serde(default)]
        name: Patch<String>,
        #[serde(default)]
        remaining: Patch<i64>,
        #[serde(default)]
        meta: Patch<String>,
    }

    #[test]
    fn absent_null_and_value_differ() {
        let u: Upd = serde_json::from_str(r#"{"name":null,"remaining":5}"#).unwrap();
        assert_eq!(u.name, Patch::Clear);
        assert_eq!(u.remaining, Patch::Set(5));
        assert_eq!(u.meta, Patch::Keep);
        let mut f = Some(1);
        Patch::Keep.apply_to(&mut f);
        assert_eq!(f, Some(1));
        Patch::Clear.apply_to(&mut f);
        assert_eq!(f, None);
    }
}
