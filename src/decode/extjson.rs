//! MongoDB Extended JSON, all three dialects, reduced to the text resevent keeps.
//!
//! Legacy/strict (`{"$date": 1683793627000}`, `{"$oid": "…"}`), canonical
//! (`{"$date": {"$numberLong": "…"}}`, `{"$numberInt": "87"}`) and relaxed or
//! simplified (ids and dates as plain strings, `{"$date": "2022-…Z"}`) all land on
//! the same text, so a reservation's state does not depend on the formatter the
//! connector happened to use. Pure functions over `serde_json::Value`.

use serde_json::{Map, Value};

use crate::time;

/// The wrapper key of a one-key Extended JSON object, if `v` is one.
fn wrapper(v: &Value) -> Option<(&str, &Value)> {
    match v {
        Value::Object(m) if m.len() == 1 => m.iter().next().map(|(k, v)| (k.as_str(), v)).filter(|(k, _)| k.starts_with('$')),
        _ => None,
    }
}

/// Decimal text of a JSON number: integral floats lose their `.0`, so `305`,
/// `305.0` and `{"$numberDouble": "305.0"}` are the same room.
pub(crate) fn number_text(n: &serde_json::Number) -> String {
    if n.is_f64() {
        if let Some(f) = n.as_f64() {
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                return format!("{}", f as i64);
            }
        }
    }
    n.to_string()
}

pub(crate) fn numeric_string_text(s: &str) -> String {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 && s.contains(['.', 'e', 'E']) => format!("{}", f as i64),
        _ => s.to_string(),
    }
}

/// Epoch milliseconds of a date in any dialect, or of a bare number of ms (the
/// form Debezium's ExtractNewDocumentState writes for a BSON date).
pub fn date_millis(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => time::parse_millis(s),
        _ => match wrapper(v)? {
            ("$date", inner) => match inner {
                Value::Object(_) => match wrapper(inner)? {
                    ("$numberLong", Value::String(s)) => s.parse().ok(),
                    _ => None,
                },
                other => date_millis(other),
            },
            ("$numberLong", Value::String(s)) => s.parse().ok(),
            _ => None,
        },
    }
}

/// A date field as RFC 3339 UTC; text that is not a date is kept as written
/// (a PMS may store `"TBD"`), so nothing is silently lost.
pub fn date_text(v: &Value) -> Option<String> {
    if v.is_null() {
        return None;
    }
    match date_millis(v) {
        Some(ms) => Some(time::format_millis(ms)),
        None => scalar_text(v),
    }
}

/// `v` as JSON text with every object's keys sorted: the text ids and
/// identities are made of must not depend on whether serde_json keeps
/// insertion order (its `preserve_order` feature, which a dependency may
/// switch on for the whole build), so it is spelled out here.
pub fn canonical_text(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut entries: Vec<(&String, &Value)> = m.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(v, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// A scalar field (status, property, room) as text.
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(number_text(n)),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(_) => Some(canonical_text(v)),
        Value::Object(_) => match wrapper(v) {
            Some(("$numberInt" | "$numberLong" | "$numberDouble" | "$numberDecimal", Value::String(s))) => Some(numeric_string_text(s)),
            Some(("$oid" | "$symbol" | "$uuid", Value::String(s))) => Some(s.clone()),
            // A `$date` holding no date is kept as its JSON text (not read as a
            // date again, which would never end).
            Some(("$date", _)) => Some(date_millis(v).map_or_else(|| canonical_text(v), time::format_millis)),
            _ => Some(canonical_text(v)),
        },
    }
}

/// Why a value cannot be a reservation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadId(pub String);

/// A document `_id` as the text PRODUCT.md fixes: an ObjectId as its 24 hex
/// digits, a string as itself, a number in decimal. A UUID (binary subtype 4,
/// or `$uuid`) is its lowercase hyphenated form, whichever of the dialects
/// wrote it: Debezium writes the same id as `{"$binary": "…", "$type": "04"}`
/// in `after` and as `{"$binary": {"base64": "…", "subType": "04"}}` in the
/// key, and both must name one reservation. Other binary ids take the second
/// form. Other documents (compound ids) become their compact JSON with keys
/// sorted, so the text does not depend on the order a writer put them in.
/// (Sorted by hand: `serde_json::Map` keeps insertion order in this build,
/// because the `mongodb` crate's `bson` turns on serde_json's `preserve_order`.)
/// A string holding an Extended JSON id (`"{\"$oid\": …}"`, as the MongoDB
/// connector's inferred schemas write ObjectIds) is read as that id.
pub fn id_text(v: &Value) -> Result<String, BadId> {
    if let Some(text) = binary_id_text(v) {
        return Ok(text);
    }
    match v {
        Value::String(s) if s.starts_with("{\"$") => match serde_json::from_str::<Value>(s) {
            Ok(inner @ Value::Object(_)) => id_text(&inner),
            _ => Ok(s.clone()),
        },
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::String(_) => Err(BadId("the id is an empty string".into())),
        Value::Number(n) => Ok(number_text(n)),
        Value::Object(m) if m.is_empty() => Err(BadId("the id is an empty document".into())),
        Value::Object(_) => match wrapper(v) {
            Some(("$oid", Value::String(s))) if s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(s.to_ascii_lowercase()),
            Some(("$oid", other)) => Err(BadId(format!("{{\"$oid\": {other}}} is not 24 hex digits"))),
            Some(("$numberInt" | "$numberLong" | "$numberDouble" | "$numberDecimal", Value::String(s))) => Ok(numeric_string_text(s)),
            Some(("$uuid", Value::String(s))) => Ok(s.to_ascii_lowercase()),
            Some(("$date", _)) => date_text(v).ok_or_else(|| BadId("the id is an unreadable date".into())),
            _ => Ok(canonical_text(v)),
        },
        Value::Null => Err(BadId("the id is null".into())),
        Value::Bool(_) => Err(BadId("the id is a boolean".into())),
        Value::Array(_) => Err(BadId("the id is an array (MongoDB forbids array ids)".into())),
    }
}

/// A binary id in either Extended JSON shape (v2 `{"$binary": {"base64",
/// "subType"}}`, or legacy `{"$binary": "…", "$type": "…"}`): a UUID (subtype
/// 4, 16 bytes) as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, any other as the v2
/// shape with a two-digit subtype. `None` when `v` is no binary value.
fn binary_id_text(v: &Value) -> Option<String> {
    let Value::Object(m) = v else { return None };
    let (base64, subtype) = match (m.len(), m.get("$binary")?) {
        (1, Value::Object(b)) => (b.get("base64")?.as_str()?, b.get("subType")?.as_str()?),
        (2, Value::String(b64)) => (b64.as_str(), m.get("$type")?.as_str()?),
        _ => return None,
    };
    let subtype = u8::from_str_radix(subtype, 16).ok()?;
    let bytes = mongodb::bson::Binary::from_base64(base64, None).ok()?.bytes;
    if subtype == 4 && bytes.len() == 16 {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        return Some(format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]));
    }
    Some(format!("{{\"$binary\":{{\"base64\":{},\"subType\":\"{subtype:02x}\"}}}}", Value::String(base64.to_string())))
}

/// The value at a dotted path (`stay.room`) inside a document.
pub fn at_path<'v>(doc: &'v Map<String, Value>, path: &str) -> Option<&'v Value> {
    let mut parts = path.split('.');
    let mut cur = doc.get(parts.next()?)?;
    for part in parts {
        cur = match cur {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// A BSON timestamp `{"$timestamp": {"t": …, "i": …}}` (every dialect writes it
/// so), or a bare 64-bit number holding `t << 32 | i`.
pub fn timestamp(v: &Value) -> Option<(u32, u32)> {
    match v {
        Value::Number(n) => n.as_u64().map(|x| ((x >> 32) as u32, x as u32)),
        _ => match wrapper(v)? {
            ("$timestamp", Value::Object(ti)) => {
                let part = |k: &str| ti.get(k).and_then(|x| x.as_u64().or_else(|| x.as_str()?.parse().ok())).and_then(|x| u32::try_from(x).ok());
                Some((part("t")?, part("i")?))
            }
            _ => None,
        },
    }
}

/// The cluster time inside a change stream resume token (`_id._data`): its
/// KeyString starts with type byte 0x82 and the 8-byte big-endian timestamp.
/// Used only when a record lost its `clusterTime`.
pub fn resume_token_time(token: &Value) -> Option<(u32, u32)> {
    resume_token_data_time(token.get("_data")?.as_str()?)
}

/// [`resume_token_time`] given the token's `_data` text.
pub(crate) fn resume_token_data_time(data: &str) -> Option<(u32, u32)> {
    // `get`, not slicing: the token is untrusted text and may not be ASCII.
    if data.len() < 18 || !data.get(..2)?.eq_ignore_ascii_case("82") {
        return None;
    }
    let t = u32::from_str_radix(data.get(2..10)?, 16).ok()?;
    let i = u32::from_str_radix(data.get(10..18)?, 16).ok()?;
    Some((t, i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates_agree_across_dialects() {
        let legacy = json!({"$date": 1683793627000i64});
        let canonical = json!({"$date": {"$numberLong": "1683793627000"}});
        let relaxed = json!({"$date": "2023-05-11T08:27:07Z"});
        let simplified = json!("2023-05-11T08:27:07.000Z");
        let flattened = json!(1683793627000i64);
        for v in [legacy, canonical, relaxed, simplified, flattened] {
            assert_eq!(date_text(&v).as_deref(), Some("2023-05-11T08:27:07Z"), "{v}");
        }
        assert_eq!(date_text(&json!("TBD")).as_deref(), Some("TBD"));
        // Wrappers that hold no date are kept as text, never read again (that recursed forever).
        assert_eq!(date_text(&json!({"$date": "TBD"})).as_deref(), Some(r#"{"$date":"TBD"}"#));
        assert_eq!(scalar_text(&json!({"$date": null})).as_deref(), Some(r#"{"$date":null}"#));
        assert_eq!(date_text(&json!({"$date": {"x": 1}})).as_deref(), Some(r#"{"$date":{"x":1}}"#));
        assert_eq!(date_text(&Value::Null), None);
    }

    #[test]
    fn numbers_agree_across_dialects() {
        for v in [json!(305), json!(305.0), json!("305"), json!({"$numberInt": "305"}), json!({"$numberLong": "305"}), json!({"$numberDouble": "305.0"})] {
            assert_eq!(scalar_text(&v).as_deref(), Some("305"), "{v}");
        }
        assert_eq!(scalar_text(&json!(30.5)).as_deref(), Some("30.5"));
    }

    #[test]
    fn ids_follow_the_product_rules() {
        assert_eq!(id_text(&json!({"$oid": "6502AAAAAAAAAAAAAAAAAAAA"})).unwrap(), "6502aaaaaaaaaaaaaaaaaaaa");
        assert_eq!(id_text(&json!("R-1")).unwrap(), "R-1");
        assert_eq!(id_text(&json!(42)).unwrap(), "42");
        assert_eq!(id_text(&json!({"$numberLong": "42"})).unwrap(), "42");
        assert_eq!(id_text(&json!({"b": 1, "a": 2})).unwrap(), r#"{"a":2,"b":1}"#);
        // One UUID in every shape the dialects write it in (Python's
        // uuid.UUID("550e8400-e29b-41d4-a716-446655440000").bytes, base64).
        let uuid = "550e8400-e29b-41d4-a716-446655440000";
        for shape in [
            json!({"$binary": {"base64": "VQ6EAOKbQdSnFkRmVUQAAA==", "subType": "04"}}),
            json!({"$binary": "VQ6EAOKbQdSnFkRmVUQAAA==", "$type": "04"}),
            json!({"$binary": "VQ6EAOKbQdSnFkRmVUQAAA==", "$type": "4"}),
            json!({"$uuid": "550E8400-E29B-41D4-A716-446655440000"}),
        ] {
            assert_eq!(id_text(&shape).unwrap(), uuid, "{shape}");
        }
        // Other binary subtypes: one text for both shapes.
        let legacy = id_text(&json!({"$binary": "AAEC", "$type": "00"})).unwrap();
        assert_eq!(legacy, r#"{"$binary":{"base64":"AAEC","subType":"00"}}"#);
        assert_eq!(id_text(&json!({"$binary": {"base64": "AAEC", "subType": "0"}})).unwrap(), legacy);
        // An inferred schema's ObjectId: Extended JSON inside a string.
        assert_eq!(id_text(&json!("{\"$oid\": \"6502AAAAAAAAAAAAAAAAAAAA\"}")).unwrap(), "6502aaaaaaaaaaaaaaaaaaaa");
        for bad in [json!(null), json!(true), json!([1]), json!(""), json!({}), json!({"$oid": "xyz"})] {
            assert!(id_text(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_and_resume_tokens() {
        assert_eq!(timestamp(&json!({"$timestamp": {"t": 1795300000u32, "i": 4}})), Some((1_795_300_000, 4)));
        assert_eq!(timestamp(&json!((7u64 << 32) | 9)), Some((7, 9)));
        let token = json!({"_data": "8263F1A2B3000000042B022C0100296E5A1004"});
        assert_eq!(resume_token_time(&token), Some((0x63F1A2B3, 4)));
        assert_eq!(resume_token_time(&json!({"_data": "zz"})), None);
        // Once a panic: slicing a non-ASCII token at a byte index.
        assert_eq!(resume_token_time(&json!({"_data": "\u{bb79d}L*$V\u{468}\t{\u{1049af}u"})), None);
    }
}
