//! The reservation state record: the bytes a state is stored as, in RocksDB
//! and on the changelog topic alike, and every version of them that still
//! decodes. Pure: no I/O.

use crate::change::{ChangeId, SourcePosition};
use crate::machine::ReservationState;
use crate::pipeline::{EventType, State};

/// Record layout versions, first byte of every reservation record. v2 adds
/// the identities applied at the stored position; v1 records still decode
/// (with none, which the state machine reads as "any change at this
/// position was applied", as v1 did).
pub(crate) const RECORD_V1: u8 = 1;
pub(crate) const RECORD_V2: u8 = 2;
/// v3 adds the event time of the last change and the timers fired.
pub(crate) const RECORD_V3: u8 = 3;

/// Record layout v3: version, state, position kind (0 none, 1 cluster,
/// 2 input) and 8 bytes of position when present, then status and the four
/// fields, each as a u32 length (u32::MAX = absent) and UTF-8 bytes, then the
/// applied identities as a u32 count and 8 bytes each, then the event time of
/// the last change (a byte 0 or 1, then 8 bytes when 1) and the timers fired
/// (a u32 count, then an event type code byte and 8 bytes of due time each).
/// v2 ends after the identities; v1 before them. The changelog carries the
/// same bytes. A state without the v3 parts is written as v2, so an instance
/// without timers writes what the previous release reads.
pub fn encode(s: &ReservationState) -> Vec<u8> {
    let v3 = s.changed_at_ms.is_some() || !s.fired.is_empty();
    let mut out = Vec::with_capacity(64 + 8 * s.applied.len() + 9 * s.fired.len());
    out.push(if v3 { RECORD_V3 } else { RECORD_V2 });
    out.push(s.state as u8);
    match s.position {
        None => out.push(0),
        Some(SourcePosition::Cluster { t, i }) => {
            out.push(1);
            out.extend_from_slice(&((u64::from(t) << 32) | u64::from(i)).to_be_bytes());
        }
        Some(SourcePosition::Input(n)) => {
            out.push(2);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
    for v in std::iter::once(&s.status).chain(s.fields.iter()) {
        match v {
            None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
            Some(text) => {
                out.extend_from_slice(&(text.len() as u32).to_le_bytes());
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
    out.extend_from_slice(&(s.applied.len() as u32).to_le_bytes());
    for id in &s.applied {
        out.extend_from_slice(&id.0.to_le_bytes());
    }
    if v3 {
        match s.changed_at_ms {
            None => out.push(0),
            Some(ms) => {
                out.push(1);
                out.extend_from_slice(&ms.to_le_bytes());
            }
        }
        out.extend_from_slice(&(s.fired.len() as u32).to_le_bytes());
        for (t, due) in &s.fired {
            out.push(t.code());
            out.extend_from_slice(&due.to_le_bytes());
        }
    }
    out
}

pub fn decode(mut b: &[u8]) -> Result<ReservationState, &'static str> {
    let mut take = |n: usize| -> Result<&[u8], &'static str> {
        if b.len() < n {
            return Err("record is truncated");
        }
        let (head, tail) = b.split_at(n);
        b = tail;
        Ok(head)
    };
    let version = take(1)?[0];
    if !matches!(version, RECORD_V1 | RECORD_V2 | RECORD_V3) {
        return Err("unknown record version");
    }
    let state = State::from_u8(take(1)?[0]).ok_or("unknown state byte")?;
    let position = match take(1)?[0] {
        0 => None,
        1 => {
            let x = u64::from_be_bytes(take(8)?.try_into().expect("8 bytes"));
            Some(SourcePosition::Cluster { t: (x >> 32) as u32, i: x as u32 })
        }
        2 => Some(SourcePosition::Input(u64::from_be_bytes(take(8)?.try_into().expect("8 bytes")))),
        _ => return Err("unknown position kind"),
    };
    let mut text = || -> Result<Option<String>, &'static str> {
        let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
        if len == u32::MAX {
            return Ok(None);
        }
        let bytes = take(len as usize)?;
        String::from_utf8(bytes.to_vec()).map(Some).map_err(|_| "text is not UTF-8")
    };
    let status = text()?;
    let fields = [text()?, text()?, text()?, text()?];
    drop(text);
    let mut applied = Vec::new();
    if version >= RECORD_V2 {
        let n = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
        // Checked entry by entry by `take`: a count beyond the record fails
        // at the first missing identity, before it can allocate much.
        for _ in 0..n.min(1024) {
            applied.push(ChangeId(u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"))));
        }
    }
    let mut changed_at_ms = None;
    let mut fired = Vec::new();
    if version == RECORD_V3 {
        changed_at_ms = match take(1)?[0] {
            0 => None,
            1 => Some(i64::from_le_bytes(take(8)?.try_into().expect("8 bytes"))),
            _ => return Err("unknown event time flag"),
        };
        let n = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
        for _ in 0..n.min(256) {
            let t = EventType::from_code(take(1)?[0]).ok_or("unknown event type code")?;
            fired.push((t, i64::from_le_bytes(take(8)?.try_into().expect("8 bytes"))));
        }
    }
    if !b.is_empty() {
        return Err("trailing bytes after the record");
    }
    Ok(ReservationState { state, status, fields, position, applied, changed_at_ms, fired })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> ReservationState {
        ReservationState {
            state: State::InHouse,
            status: Some("Arrived".into()),
            fields: [Some("P-OSL-01".into()), Some("305".into()), None, Some("2026-11-24T00:00:00Z".into())],
            position: Some(SourcePosition::Cluster { t: 1_795_300_000, i: 7 }),
            applied: vec![ChangeId(7), ChangeId(u64::MAX)],
            changed_at_ms: Some(-5),
            fired: vec![(EventType::Overstay, 1_795_300_000_000)],
        }
    }

    #[test]
    fn records_round_trip() {
        let s = sample();
        assert_eq!(decode(&encode(&s)).unwrap(), s);
        let tomb = ReservationState { position: Some(SourcePosition::Input(9)), ..Default::default() };
        assert_eq!(decode(&encode(&tomb)).unwrap(), tomb);
        assert_eq!(encode(&tomb)[0], RECORD_V2, "without timer parts, what the previous release reads");
        let bytes = encode(&s);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "truncated at {cut} must not decode");
        }
    }

    #[test]
    fn v1_records_still_decode_with_no_identities() {
        let s = ReservationState { changed_at_ms: None, fired: Vec::new(), ..sample() };
        let v2 = encode(&s);
        assert_eq!(v2[0], RECORD_V2);
        // v1 is v2 without the identity list at the end.
        let mut v1 = v2[..v2.len() - 4 - 8 * s.applied.len()].to_vec();
        v1[0] = RECORD_V1;
        assert_eq!(decode(&v1).unwrap(), ReservationState { applied: Vec::new(), ..s });
    }
}
