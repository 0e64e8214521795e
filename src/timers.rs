//! Timers and retention on stream time: what is due for a reservation, and
//! what firing it does. Pure, like the state machine: no clock, no I/O.
//!
//! **Stream time** is per input partition: the largest event time
//! (`clusterTime` or `wallTime`; Debezium `source.ts_ms`) of the changes seen
//! on it so far. It never goes back, and only input moves it, so a replay of
//! the same input fires the same timers at the same places.
//!
//! A `[[timer]]` row arms a timer for a reservation in the row's `state` whose
//! date `field` is set: it is due at that date plus `after`. Before a change is
//! applied, stream time moves to the change's event time and every timer due by
//! then fires first, in (due, reservation id, event type) order; a timer that a
//! change arms already due fires right after that change. Each fires once per
//! (reservation, event type, due): the state remembers what fired
//! ([`ReservationState::fired`]), a change of state disarms the timer (a
//! return to the state, or to a date, whose due time fired does not fire it
//! again) and a changed date re-arms it at the new due time. The event carries the stored
//! state, `occurredAt` = the due time, and an eventId made from (reservation,
//! event type, due), so a timer fired again after a crash has the same id.
//!
//! **Retention**: a reservation DEPARTED, or deleted, for longer than the
//! retention period (counted from the event time of the change that made it
//! so) is removed from the state and from the changelog. It emits nothing.
//!
//! Due times are kept in an index beside the state (see `store`), so firing
//! never scans every reservation.

use sha2::{Digest, Sha256};

use crate::change::Field;
use crate::machine::{BusinessEvent, ReservationState};
use crate::pipeline::{EventType, Pipeline, State};
use crate::time;

/// What falls due: a timer row's event, or the reservation's retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Due {
    Timer(EventType),
    Retention,
}

impl Due {
    /// One byte for the index key.
    pub fn code(self) -> u8 {
        match self {
            Due::Timer(t) => t.code(),
            Due::Retention => 0xff,
        }
    }

    pub fn from_code(code: u8) -> Option<Due> {
        if code == 0xff {
            Some(Due::Retention)
        } else {
            EventType::from_code(code).map(Due::Timer)
        }
    }

    /// For ordering timers due at the same moment: by event type name.
    fn order_name(self) -> &'static str {
        match self {
            Due::Timer(t) => t.name(),
            Due::Retention => "~retention",
        }
    }
}

/// A timer or retention due at `due` (ms) for one reservation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pending {
    pub due: i64,
    pub id: String,
    pub what: Due,
}

impl Pending {
    /// PRODUCT.md's firing order: due time, reservation id, then the row
    /// (its event type; retention last).
    pub fn order_key(&self) -> (i64, &str, &'static str) {
        (self.due, self.id.as_str(), self.what.order_name())
    }
}

fn date_ms(s: &ReservationState, f: Field) -> Option<i64> {
    time::parse_millis(s.get(f)?)
}

/// When the row's timer is due for this state, if the state arms it (fired
/// or not).
fn timer_due(p: &Pipeline, s: &ReservationState, t: EventType) -> Option<i64> {
    let row = p.timers.iter().find(|r| r.event == t)?;
    if s.state != row.state {
        return None;
    }
    date_ms(s, row.field)?.checked_add(row.after_ms)
}

fn retention_due(p: &Pipeline, s: &ReservationState) -> Option<i64> {
    let after = p.retention_ms?;
    if !matches!(s.state, State::Departed | State::None) {
        return None;
    }
    s.changed_at_ms?.checked_add(after)
}

/// Everything this state has armed and not yet fired, for the index.
pub fn armed(p: &Pipeline, id: &str, s: &ReservationState) -> Vec<Pending> {
    let mut out = Vec::new();
    for row in &p.timers {
        if let Some(due) = timer_due(p, s, row.event) {
            if !s.fired.contains(&(row.event, due)) {
                out.push(Pending {
                    due,
                    id: id.to_string(),
                    what: Due::Timer(row.event),
                });
            }
        }
    }
    if let Some(due) = retention_due(p, s) {
        out.push(Pending {
            due,
            id: id.to_string(),
            what: Due::Retention,
        });
    }
    out
}

/// How many fired timers a state remembers: each fires once per
/// (reservation, event type, due) — its eventId is made of exactly that, so
/// a second firing would be dropped downstream as a repeat — and a date
/// moved back to an earlier value must not fire that due time again. Only
/// the oldest are forgotten past this many.
const FIRED_KEPT: usize = 16;

/// What firing a pending entry did.
#[derive(Debug, PartialEq, Eq)]
pub enum Fired {
    /// No longer armed with this due time (the state moved on, or it fired
    /// already): a stale index entry. Nothing changes.
    Stale,
    /// The timer fired: the new state remembers it; the event is `None` when
    /// the allowlist holds it back.
    Timer {
        state: ReservationState,
        event: Option<BusinessEvent>,
    },
    /// Retention ran out: remove the reservation.
    Remove,
}

/// Fires `pending` against the reservation's current state (`None`: not in
/// the state any more).
pub fn fire(p: &Pipeline, pending: &Pending, s: Option<&ReservationState>) -> Fired {
    let Some(s) = s else { return Fired::Stale };
    match pending.what {
        Due::Retention => {
            if retention_due(p, s) == Some(pending.due) {
                Fired::Remove
            } else {
                Fired::Stale
            }
        }
        Due::Timer(t) => {
            if timer_due(p, s, t) != Some(pending.due) || s.fired.contains(&(t, pending.due)) {
                return Fired::Stale;
            }
            let mut state = s.clone();
            state.fired.push((t, pending.due));
            if state.fired.len() > FIRED_KEPT {
                let oldest = state
                    .fired
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, (_, due))| *due)
                    .map(|(i, _)| i)
                    .expect("not empty");
                state.fired.remove(oldest);
            }
            let event = p
                .allowlist
                .allows(s.get(Field::Property))
                .then(|| BusinessEvent {
                    event_id: timer_event_id(&pending.id, t, pending.due),
                    event_type: t.name(),
                    reservation_id: pending.id.clone(),
                    property_id: s.fields[Field::Property as usize].clone(),
                    booking_status: s.status.clone(),
                    previous_booking_status: s.status.clone(),
                    room_number: s.fields[Field::Room as usize].clone(),
                    previous_room_number: None,
                    arrival_date: s.fields[Field::Arrival as usize].clone(),
                    departure_date: s.fields[Field::Departure as usize].clone(),
                    previous_departure_date: None,
                    occurred_at: Some(time::format_millis(pending.due)),
                    source_position: s.position.map(|p| p.to_string()),
                    fired_by: p.timers.iter().position(|r| r.event == t).map(|i| crate::machine::FiredBy::Timer(i + 1)),
                });
            Fired::Timer { state, event }
        }
    }
}

/// A timer's eventId: from (reservation, event type, due), nothing else, so
/// the same timer fired again (a retried interval, a replay) has the same id.
pub fn timer_event_id(reservation_id: &str, t: EventType, due: i64) -> String {
    let mut h = Sha256::new();
    h.update(reservation_id.as_bytes());
    h.update([0x1f]);
    h.update(b"timer");
    h.update([0x1f]);
    h.update(t.name().as_bytes());
    h.update([0x1f]);
    h.update(due.to_be_bytes());
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Stream time of one input partition: the largest event time seen on it.
/// `None` until a change with an event time arrives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamClock(pub Option<i64>);

impl StreamClock {
    /// Moves to `t` if that is later; whether it moved.
    pub fn advance(&mut self, t: i64) -> bool {
        if self.0.is_none_or(|now| t > now) {
            self.0 = Some(t);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::SourcePosition;

    fn pipeline() -> Pipeline {
        let text = crate::pipeline::DEFAULT_PIPELINE.to_string()
            + "\n[[timer]]\nevent = \"NO_SHOW\"\nstate = \"NOT_ARRIVED\"\nfield = \"arrival\"\nafter = \"1d\"\n\
               [[timer]]\nevent = \"OVERSTAY\"\nstate = \"IN_HOUSE\"\nfield = \"departure\"\nafter = \"12h\"\n\
               [retention]\nafter = \"30d\"\n";
        Pipeline::parse(&text, "t").unwrap()
    }

    fn in_house(departure: &str) -> ReservationState {
        ReservationState {
            state: State::InHouse,
            status: Some("Arrived".into()),
            fields: [
                Some("P-1".into()),
                Some("101".into()),
                Some("2026-11-20T00:00:00Z".into()),
                Some(departure.into()),
            ],
            position: Some(SourcePosition::Cluster { t: 1, i: 1 }),
            changed_at_ms: Some(0),
            ..Default::default()
        }
    }

    #[test]
    fn a_timer_fires_once_at_its_due_time_and_a_new_date_rearms_it() {
        let p = pipeline();
        let s = in_house("2026-11-24T00:00:00Z");
        let due = time::parse_millis("2026-11-24T12:00:00Z").unwrap();
        let pending = armed(&p, "r1", &s);
        assert_eq!(
            pending,
            vec![Pending {
                due,
                id: "r1".into(),
                what: Due::Timer(EventType::Overstay)
            }]
        );
        let Fired::Timer { state, event } = fire(&p, &pending[0], Some(&s)) else {
            panic!("fires")
        };
        let event = event.unwrap();
        assert_eq!(
            (event.event_type, event.occurred_at.as_deref()),
            ("OVERSTAY", Some("2026-11-24T12:00:00Z"))
        );
        assert_eq!(
            event.event_id,
            timer_event_id("r1", EventType::Overstay, due)
        );
        assert!(armed_is_empty(&p, &state), "fired: nothing armed any more");
        assert_eq!(fire(&p, &pending[0], Some(&state)), Fired::Stale, "once");
        // A later departure re-arms it; the old entry is stale.
        let moved = ReservationState {
            fields: in_house("2026-11-26T00:00:00Z").fields,
            ..state.clone()
        };
        assert_eq!(
            armed(&p, "r1", &moved)[0].due,
            time::parse_millis("2026-11-26T12:00:00Z").unwrap()
        );
        assert_eq!(fire(&p, &pending[0], Some(&moved)), Fired::Stale);
        // Moved back to the first date: that due time fired already.
        let back = ReservationState {
            fields: s.fields.clone(),
            ..moved
        };
        assert!(
            armed(&p, "r1", &back).is_empty(),
            "once per (reservation, type, due)"
        );
    }

    fn armed_is_empty(p: &Pipeline, s: &ReservationState) -> bool {
        armed(p, "r1", s).is_empty()
    }

    #[test]
    fn a_change_of_state_disarms_and_retention_follows_departure() {
        let p = pipeline();
        let mut s = in_house("2026-11-24T00:00:00Z");
        let overstay = armed(&p, "r1", &s).remove(0);
        s.state = State::Departed;
        s.status = Some("Departure".into());
        s.changed_at_ms = Some(1_000);
        assert_eq!(
            fire(&p, &overstay, Some(&s)),
            Fired::Stale,
            "checked out: no overstay"
        );
        let retention = armed(&p, "r1", &s);
        assert_eq!(
            retention,
            vec![Pending {
                due: 1_000 + 30 * 86_400_000,
                id: "r1".into(),
                what: Due::Retention
            }]
        );
        assert_eq!(fire(&p, &retention[0], Some(&s)), Fired::Remove);
        assert_eq!(fire(&p, &retention[0], None), Fired::Stale);
    }

    #[test]
    fn a_return_to_the_state_with_the_same_date_does_not_fire_again() {
        let p = pipeline();
        let s = in_house("2026-11-24T00:00:00Z");
        let pending = armed(&p, "r1", &s).remove(0);
        let Fired::Timer { state, .. } = fire(&p, &pending, Some(&s)) else {
            panic!()
        };
        let out = ReservationState {
            state: State::Departed,
            status: Some("Departure".into()),
            ..state
        };
        let back = ReservationState {
            state: State::InHouse,
            status: Some("Arrived".into()),
            ..out
        };
        assert!(
            armed(&p, "r1", &back)
                .iter()
                .all(|x| x.what == Due::Retention || x.due != pending.due),
            "once per (reservation, type, due)"
        );
        assert_eq!(fire(&p, &pending, Some(&back)), Fired::Stale);
    }

    #[test]
    fn the_allowlist_holds_the_event_back_but_the_timer_counts_as_fired() {
        let mut p = pipeline();
        p.allowlist = crate::pipeline::Allowlist::Only(vec!["P-2".into()]);
        let s = in_house("2026-11-24T00:00:00Z");
        let pending = armed(&p, "r1", &s).remove(0);
        let Fired::Timer { state, event } = fire(&p, &pending, Some(&s)) else {
            panic!()
        };
        assert!(event.is_none());
        assert_eq!(state.fired.len(), 1);
    }

    #[test]
    fn stream_time_never_goes_back() {
        let mut c = StreamClock::default();
        assert!(c.advance(5));
        assert!(!c.advance(3));
        assert!(!c.advance(5));
        assert!(c.advance(6));
        assert_eq!(c, StreamClock(Some(6)));
    }
}
