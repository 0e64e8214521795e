//! The ID-document service, as a consumer of resevent's business events:
//! guests' ID scans are deleted after checkout, so a checkout schedules the
//! deletion and an accidental checkout (a checkout undone) cancels it. Every
//! other event type is skipped by its header, without decoding. Here each
//! action is printed as one JSON line instead of touching a document store.
//!
//!   cargo run --release --example id_documents -- --topic reservation-events \
//!       --schema-registry-url http://127.0.0.1:8081

mod common;

use clap::Parser;
use common::{FeedArgs, run_feed};
use serde_json::json;

const HANDLED: [&str; 2] = ["CHECKED_OUT", "ACCIDENTAL_CHECKOUT"];

fn main() -> anyhow::Result<()> {
    let args = FeedArgs::parse();
    let counts = run_feed(&args, "id-document-service", &HANDLED, |e| {
        let action = if e.event_type == "CHECKED_OUT" { "SCHEDULE_DELETION" } else { "CANCEL_DELETION" };
        println!("{}", json!({"action": action, "reservationId": e.reservation_id, "after": e.occurred_at, "eventId": e.event_id}));
    })?;
    eprintln!("id_documents: {} events handled, {} skipped by header, {} repeats dropped", counts.handled, counts.skipped_by_header, counts.repeats_dropped);
    Ok(())
}
