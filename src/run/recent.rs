//! The last business events each reservation caused, for `/reservations/{id}`
//! and the status page's lookup: in memory, bounded, since this instance
//! started (the business topic, not this, is the record of what was sent).
//!
//! Updated once per batch; no I/O.

use std::collections::{HashMap, VecDeque};

/// Events kept per reservation, and reservations kept (the least recently
/// changed go first).
const PER_RESERVATION: usize = 5;
const RESERVATIONS: usize = 100_000;

/// One event as a lookup shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecentEvent {
    pub event_type: &'static str,
    pub event_id: String,
    pub occurred_at: Option<String>,
    pub source_position: Option<String>,
    /// The pipeline row that fired it (`file:line [[rule]] #n`), as `replay --explain` names it.
    pub fired_by: Option<String>,
}

#[derive(Default)]
pub struct RecentEvents {
    by_reservation: HashMap<String, (u64, VecDeque<RecentEvent>)>,
    /// (sequence, reservation) in the order they were last changed; stale
    /// entries (an older sequence) are skipped on eviction.
    order: VecDeque<(u64, String)>,
    seq: u64,
}

impl RecentEvents {
    pub fn record(&mut self, reservation: &str, event: RecentEvent) {
        self.seq += 1;
        let seq = self.seq;
        let entry = self.by_reservation.entry(reservation.to_owned()).or_default();
        entry.0 = seq;
        entry.1.push_back(event);
        if entry.1.len() > PER_RESERVATION {
            entry.1.pop_front();
        }
        self.order.push_back((seq, reservation.to_owned()));
        while self.by_reservation.len() > RESERVATIONS || self.order.len() > 4 * RESERVATIONS {
            let Some((s, id)) = self.order.pop_front() else { break };
            if self.by_reservation.get(&id).is_some_and(|(last, _)| *last == s) {
                self.by_reservation.remove(&id);
            }
        }
    }

    /// Oldest first.
    pub fn of(&self, reservation: &str) -> Vec<RecentEvent> {
        self.by_reservation.get(reservation).map(|(_, v)| v.iter().cloned().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: usize) -> RecentEvent {
        RecentEvent { event_type: "ROOM_CHANGED", event_id: n.to_string(), occurred_at: None, source_position: None, fired_by: None }
    }

    #[test]
    fn keeps_the_last_few_per_reservation_in_order() {
        let mut r = RecentEvents::default();
        for n in 0..8 {
            r.record("a", ev(n));
        }
        r.record("b", ev(100));
        assert_eq!(r.of("a").iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(), vec!["3", "4", "5", "6", "7"]);
        assert_eq!(r.of("b").len(), 1);
        assert!(r.of("c").is_empty());
    }
}
