//! resevent: MongoDB reservation change events in, hotel business events out.
//!
//! The library is the whole engine; `main.rs` only builds the pieces from the
//! command line and hands them their I/O. Modules, from the wire inwards:
//! `decode` (record bytes → normalized [`change::Change`]), `pipeline` (the
//! checked table), `machine` (the pure state machine), `store` (RocksDB
//! state), `engine` (one batch through all of them) and `replay` (files in,
//! events out).

pub mod capture;
pub mod change;
pub mod config;
pub mod decode;
pub mod dlq;
pub mod engine;
pub mod fault;
pub mod invariants;
pub mod kafka;
pub mod inspect;
pub mod machine;
pub mod pipeline;
pub mod registry;
pub mod replay;
pub mod run;
pub mod secrets;
pub mod sink;
pub mod state;
pub mod tail;
pub mod time;
pub mod timers;
pub mod workload;
