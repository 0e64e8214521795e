//! A lean JSON value that borrows from the record, for the few entries
//! resevent keeps, and the Extended JSON readings of it.
//!
//! Pure, like the rest of the decoder. Why not `serde_json::Value`: a tracked
//! `{"$date": 1683793627000}` became a `BTreeMap` node plus a `String` key, and
//! every string value its own `String`; a dozen such values per record were
//! most of the decoder's allocations. `LeanValue` borrows strings and keys from the
//! input and keeps an object's entries in a `Vec`.
//!
//! Behaviour is `Value`'s by construction:
//! - `LeanValue` is built by the same deserializer calls `Value`'s `Deserialize` makes
//!   (`deserialize_any` at every level, the raw-value key check on each
//!   object's first key), so the same inputs fail with the same errors, the
//!   recursion limit included.
//! - An object keeps duplicate keys, and lookups take the last one, which is
//!   what `Map::insert` leaves.
//! - The readings below only answer the common shapes themselves (plain
//!   scalars, one-entry Extended JSON wrappers); anything else is converted to
//!   a `Value` and handed to the functions in [`extjson`], so odd input keeps
//!   exactly today's answers.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::extjson::{self, BadId};
use crate::time;

/// A JSON value; strings and keys borrowed from the input when it has no
/// escapes.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum LeanValue<'de> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'de, str>),
    Array(Vec<LeanValue<'de>>),
    /// Entries in input order, repeated keys kept (lookups take the last).
    Object(Vec<(Cow<'de, str>, LeanValue<'de>)>),
}

/// The key `serde_json` gives its raw-value trick (`serde_json::raw::TOKEN`,
/// which is private); `Value` reads an object whose first key is this as the
/// JSON text of the string that follows, so `LeanValue` does too.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

impl<'de> LeanValue<'de> {
    /// The same tree as a `Value` (for the fallbacks and error messages).
    pub(super) fn to_value(&self) -> Value {
        match self {
            LeanValue::Null => Value::Null,
            LeanValue::Bool(b) => Value::Bool(*b),
            LeanValue::Number(n) => Value::Number(n.clone()),
            LeanValue::Str(s) => Value::String(s.as_ref().to_owned()),
            LeanValue::Array(a) => Value::Array(a.iter().map(LeanValue::to_value).collect()),
            LeanValue::Object(entries) => {
                let mut m = Map::new();
                for (k, v) in entries {
                    m.insert(k.as_ref().to_owned(), v.to_value());
                }
                Value::Object(m)
            }
        }
    }

    pub(super) fn from_value(v: &Value) -> LeanValue<'static> {
        match v {
            Value::Null => LeanValue::Null,
            Value::Bool(b) => LeanValue::Bool(*b),
            Value::Number(n) => LeanValue::Number(n.clone()),
            Value::String(s) => LeanValue::Str(Cow::Owned(s.clone())),
            Value::Array(a) => LeanValue::Array(a.iter().map(LeanValue::from_value).collect()),
            Value::Object(m) => LeanValue::Object(m.iter().map(|(k, v)| (Cow::Owned(k.clone()), LeanValue::from_value(v))).collect()),
        }
    }

    /// Detaches the value from the text it was read from.
    pub(super) fn into_owned(self) -> LeanValue<'static> {
        match self {
            LeanValue::Null => LeanValue::Null,
            LeanValue::Bool(b) => LeanValue::Bool(b),
            LeanValue::Number(n) => LeanValue::Number(n),
            LeanValue::Str(s) => LeanValue::Str(Cow::Owned(s.into_owned())),
            LeanValue::Array(a) => LeanValue::Array(a.into_iter().map(LeanValue::into_owned).collect()),
            LeanValue::Object(e) => LeanValue::Object(e.into_iter().map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned())).collect()),
        }
    }

    /// An object's entry, as `Value::get` finds it: the last of repeated keys.
    pub(super) fn get(&self, key: &str) -> Option<&LeanValue<'de>> {
        match self {
            LeanValue::Object(entries) => entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            LeanValue::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_u64(&self) -> Option<u64> {
        match self {
            LeanValue::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    /// The entry of a one-entry object. A `Map` would also collapse repeated
    /// keys into one entry; such objects are not "single" here and take the
    /// `Value` fallback, which sees them as `Map` does.
    fn single(&self) -> Option<(&str, &LeanValue<'de>)> {
        match self {
            LeanValue::Object(entries) if entries.len() == 1 => Some((&entries[0].0, &entries[0].1)),
            _ => None,
        }
    }
}

/// Compact JSON with sorted keys (`extjson::canonical_text`): identities are
/// hashed from it and error messages quote it.
impl fmt::Display for LeanValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&super::extjson::canonical_text(&self.to_value()))
    }
}

impl<'de> de::Deserialize<'de> for LeanValue<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LvVisitor)
    }
}

/// Mirrors `serde_json::Value`'s visitor call for call.
struct LvVisitor;

impl<'de> Visitor<'de> for LvVisitor {
    type Value = LeanValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<LeanValue<'de>, E> {
        Ok(LeanValue::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<LeanValue<'de>, E> {
        Ok(LeanValue::Number(n.into()))
    }
    fn visit_i128<E: de::Error>(self, n: i128) -> Result<LeanValue<'de>, E> {
        de::Deserialize::deserialize(de::value::I128Deserializer::new(n)).map(LeanValue::Number)
    }
    fn visit_u64<E>(self, n: u64) -> Result<LeanValue<'de>, E> {
        Ok(LeanValue::Number(n.into()))
    }
    fn visit_u128<E: de::Error>(self, n: u128) -> Result<LeanValue<'de>, E> {
        de::Deserialize::deserialize(de::value::U128Deserializer::new(n)).map(LeanValue::Number)
    }
    fn visit_f64<E>(self, f: f64) -> Result<LeanValue<'de>, E> {
        Ok(Number::from_f64(f).map_or(LeanValue::Null, LeanValue::Number))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<LeanValue<'de>, E> {
        Ok(LeanValue::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<LeanValue<'de>, E> {
        Ok(LeanValue::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<LeanValue<'de>, E> {
        Ok(LeanValue::Str(Cow::Owned(s)))
    }
    fn visit_none<E>(self) -> Result<LeanValue<'de>, E> {
        Ok(LeanValue::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<LeanValue<'de>, D::Error> {
        de::Deserialize::deserialize(d)
    }
    fn visit_unit<E>(self) -> Result<LeanValue<'de>, E> {
        Ok(LeanValue::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LeanValue<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(LeanValue::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LeanValue<'de>, A::Error> {
        let Some(Key(first)) = map.next_key::<Key>()? else { return Ok(LeanValue::Object(Vec::new())) };
        if first == RAW_VALUE_TOKEN {
            let text = map.next_value_seed(RawText)?;
            let v: Value = serde_json::from_str(&text).map_err(de::Error::custom)?;
            return Ok(LeanValue::from_value(&v));
        }
        let mut entries = vec![(first, map.next_value()?)];
        while let Some(Key(key)) = map.next_key::<Key>()? {
            entries.push((key, map.next_value()?));
        }
        Ok(LeanValue::Object(entries))
    }
}

/// The string after a raw-value key, read as `serde_json`'s private
/// `BoxedFromString` reads it (same expectation in its error).
struct RawText;

impl<'de> DeserializeSeed<'de> for RawText {
    type Value = String;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for RawText {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("raw value")
    }
    fn visit_str<E>(self, s: &str) -> Result<String, E> {
        Ok(s.to_owned())
    }
    fn visit_string<E>(self, s: String) -> Result<String, E> {
        Ok(s)
    }
}

/// [`extjson::at_path`] over an object `LeanValue`.
pub(super) fn at_path<'v, 'de>(doc: &'v LeanValue<'de>, path: &str) -> Option<&'v LeanValue<'de>> {
    let mut parts = path.split('.');
    let mut cur = doc.get(parts.next()?)?;
    for part in parts {
        cur = match cur {
            LeanValue::Object(_) => cur.get(part)?,
            LeanValue::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// [`extjson::date_millis`].
pub(super) fn date_millis(v: &LeanValue) -> Option<i64> {
    match v {
        LeanValue::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        LeanValue::Str(s) => time::parse_millis(s),
        LeanValue::Null | LeanValue::Bool(_) | LeanValue::Array(_) => None,
        LeanValue::Object(_) => match v.single() {
            Some(("$date", inner @ (LeanValue::Number(_) | LeanValue::Str(_)))) => date_millis(inner),
            Some(("$date", inner @ LeanValue::Object(_))) => match inner.single() {
                Some(("$numberLong", LeanValue::Str(s))) => s.parse().ok(),
                _ => extjson::date_millis(&v.to_value()),
            },
            Some(("$numberLong", LeanValue::Str(s))) => s.parse().ok(),
            _ => extjson::date_millis(&v.to_value()),
        },
    }
}

/// [`extjson::scalar_text`].
pub(super) fn scalar_text(v: &LeanValue) -> Option<String> {
    match v {
        LeanValue::Null => None,
        LeanValue::Str(s) => Some(s.as_ref().to_owned()),
        LeanValue::Number(n) => Some(extjson::number_text(n)),
        LeanValue::Bool(b) => Some(b.to_string()),
        _ => match v.single() {
            Some(("$numberInt" | "$numberLong" | "$numberDouble" | "$numberDecimal", LeanValue::Str(s))) => Some(extjson::numeric_string_text(s)),
            Some(("$oid" | "$symbol" | "$uuid", LeanValue::Str(s))) => Some(s.as_ref().to_owned()),
            // A `$date` holding no date is kept as its JSON text (not read as a
            // date again, which would never end).
            Some(("$date", _)) => Some(date_millis(v).map_or_else(|| v.to_string(), time::format_millis)),
            _ => extjson::scalar_text(&v.to_value()),
        },
    }
}

/// [`extjson::id_text`].
pub(super) fn id_text(v: &LeanValue) -> Result<String, BadId> {
    match v {
        LeanValue::Str(s) if !s.is_empty() && !s.starts_with("{\"$") => Ok(s.as_ref().to_owned()),
        LeanValue::Number(n) => Ok(extjson::number_text(n)),
        _ => match v.single() {
            Some(("$oid", LeanValue::Str(s))) if s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(s.to_ascii_lowercase()),
            _ => extjson::id_text(&v.to_value()),
        },
    }
}

/// [`extjson::timestamp`].
pub(super) fn timestamp(v: &LeanValue) -> Option<(u32, u32)> {
    match v {
        LeanValue::Number(n) => n.as_u64().map(|x| ((x >> 32) as u32, x as u32)),
        _ => match v.single() {
            Some(("$timestamp", ti @ LeanValue::Object(_))) => {
                let part = |k: &str| ti.get(k).and_then(|x| x.as_u64().or_else(|| x.as_str()?.parse().ok())).and_then(|x| u32::try_from(x).ok());
                Some((part("t")?, part("i")?))
            }
            _ => extjson::timestamp(&v.to_value()),
        },
    }
}

/// [`extjson::resume_token_time`].
pub(super) fn resume_token_time(token: &LeanValue) -> Option<(u32, u32)> {
    extjson::resume_token_data_time(token.get("_data")?.as_str()?)
}

/// What a date field accepts, for error messages.
pub(crate) const DATE_EXPECTED: &str = "a date ({\"$date\": millis}, {\"$date\": {\"$numberLong\": \"…\"}}, epoch millis or RFC 3339 text, in years 0000–9999)";
/// What a room number accepts.
pub(crate) const ROOM_EXPECTED: &str = "a room number (a string, or an integer or decimal number)";
/// What a property id accepts.
pub(crate) const PROPERTY_EXPECTED: &str = "a property id (a string, a number or an ObjectId)";

/// A date field's value as epoch ms, strictly: the forms a MongoDB date takes
/// in every dialect (and the bare millis of Debezium's flattened form),
/// within the range RFC 3339 can write. `None` for anything else.
pub(crate) fn strict_date_millis(v: &LeanValue) -> Option<i64> {
    let ms = match v {
        LeanValue::Number(n) => match n.as_i64() {
            Some(ms) => ms,
            // A float (`1.5e12`): whole milliseconds, if it is in range at all.
            None => n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e16).map(|f| f.floor() as i64)?,
        },
        LeanValue::Str(s) => time::parse_millis(s)?,
        LeanValue::Object(_) => match v.single()? {
            ("$date", inner @ (LeanValue::Number(_) | LeanValue::Str(_))) => strict_date_millis(inner)?,
            ("$date", inner @ LeanValue::Object(_)) => match inner.single()? {
                ("$numberLong", LeanValue::Str(s)) => s.parse().ok()?,
                _ => return None,
            },
            ("$numberLong", LeanValue::Str(s)) => s.parse().ok()?,
            _ => return None,
        },
        LeanValue::Null | LeanValue::Bool(_) | LeanValue::Array(_) => return None,
    };
    time::writable(ms).then_some(ms)
}

/// A room number or property id as text, strictly: a string (one that is
/// not JSON text: no `{` or `[`), a number in decimal, a `$number…` wrapper
/// holding a finite decimal; a property may also be an ObjectId, UUID or
/// symbol. `None` for anything else (documents, arrays, booleans, numbers
/// only an exponent can write).
pub(crate) fn strict_text(v: &LeanValue, property: bool) -> Option<String> {
    let decimal = |text: String| (!text.contains(['e', 'E'])).then_some(text);
    match v {
        LeanValue::Str(s) => (!s.contains(['{', '['])).then(|| s.as_ref().to_owned()),
        LeanValue::Number(n) => decimal(extjson::number_text(n)),
        LeanValue::Object(_) => match v.single()? {
            ("$numberInt" | "$numberLong" | "$numberDouble" | "$numberDecimal", LeanValue::Str(s)) => {
                s.parse::<f64>().ok().filter(|f| f.is_finite())?;
                decimal(extjson::numeric_string_text(s))
            }
            ("$symbol", LeanValue::Str(s)) => (!s.contains(['{', '['])).then(|| s.as_ref().to_owned()),
            ("$oid" | "$uuid", LeanValue::Str(s)) if property && !s.contains(['{', '[']) => Some(s.as_ref().to_owned()),
            _ => None,
        },
        LeanValue::Null | LeanValue::Bool(_) | LeanValue::Array(_) => None,
    }
}

/// A map key, borrowed when the input allows it (no escapes), so skipped keys
/// cost no allocation.
pub(super) struct Key<'de>(pub(super) Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}
