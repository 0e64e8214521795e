//! State: where the latest state of every reservation lives between changes.
//!
//! - [`store`]: RocksDB, one column family per task, the reservations, the
//!   task's markers (changelog checkpoint, stream time) and its due-time
//!   index, each commit one WriteBatch;
//! - [`record`]: the bytes a state is stored as, in RocksDB and on the
//!   changelog alike;
//! - [`cache`]: the write-back cache in front of the store (Kafka Streams'
//!   record cache), which holds an interval's new states until its commit.
//!
//! Below the engine, above the state machine: nothing here knows Kafka.

pub mod cache;
pub mod record;
pub mod store;

/// The name a task's state goes by in the store (its column family is
/// `partition/task/N`): task N is input partition N.
pub fn task_name(partition: i32) -> String {
    format!("task/{partition}")
}

/// The JSON shape of one stored reservation, as `resevent state get` and
/// the status page's lookup show it.
pub fn reservation_json(id: &str, partition: &str, s: &crate::machine::ReservationState) -> serde_json::Value {
    serde_json::json!({
        "reservationId": id,
        "partition": partition,
        "state": s.state.name(),
        "bookingStatus": s.status,
        "propertyId": s.fields[crate::change::Field::Property as usize],
        "roomNumber": s.fields[crate::change::Field::Room as usize],
        "arrivalDate": s.fields[crate::change::Field::Arrival as usize],
        "departureDate": s.fields[crate::change::Field::Departure as usize],
        "sourcePosition": s.position.map(|p| p.to_string()),
        "changesAtPosition": s.applied.len(),
        "lastChangeAt": s.changed_at_ms.map(crate::time::format_millis),
        "timersFired": s.fired.iter().map(|(t, due)| serde_json::json!({"eventType": t.name(), "due": crate::time::format_millis(*due)})).collect::<Vec<_>>(),
    })
}
