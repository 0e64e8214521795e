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
