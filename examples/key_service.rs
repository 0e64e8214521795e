//! The door-key service, as a consumer of resevent's business events: it
//! issues a key when a guest checks in, moves it when the room changes,
//! changes its expiry with the departure date, revokes it at checkout (or
//! when a check-in is reversed) and issues it again when a checkout was a
//! mistake. Here each action is printed as one JSON line instead of talking
//! to a lock system.
//!
//!   cargo run --release --example key_service -- --topic reservation-events \
//!       --schema-registry-url http://127.0.0.1:8081

mod common;

use clap::Parser;
use common::{Event, FeedArgs, run_feed};
use serde_json::json;

/// The event types this service acts on; every other type is skipped by its header.
const HANDLED: [&str; 6] = ["CHECKED_IN", "ROOM_CHANGED", "DEPARTURE_CHANGED", "CHECKED_OUT", "ACCIDENTAL_CHECKOUT", "CHECKIN_REVERSED"];

/// The key actions one event asks for.
fn actions(e: &Event) -> Vec<serde_json::Value> {
    let key = |action: &str, room: &Option<String>| json!({"action": action, "reservationId": e.reservation_id, "room": room, "validUntil": e.departure_date, "eventId": e.event_id});
    match e.event_type.as_str() {
        "CHECKED_IN" | "ACCIDENTAL_CHECKOUT" => vec![key("ISSUE_KEY", &e.room_number)],
        "ROOM_CHANGED" => vec![key("REVOKE_KEY", &e.previous_room_number), key("ISSUE_KEY", &e.room_number)],
        "DEPARTURE_CHANGED" => vec![key("UPDATE_EXPIRY", &e.room_number)],
        "CHECKED_OUT" | "CHECKIN_REVERSED" => vec![key("REVOKE_KEY", &e.room_number)],
        _ => Vec::new(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = FeedArgs::parse();
    let counts = run_feed(&args, "key-service", &HANDLED, |e| {
        for a in actions(e) {
            println!("{a}");
        }
    })?;
    eprintln!("key_service: {} events handled, {} skipped by header, {} repeats dropped", counts.handled, counts.skipped_by_header, counts.repeats_dropped);
    Ok(())
}
