//! resevent: MongoDB reservation change events in, hotel business events out.
//!
//! The library is the whole engine; `main.rs` parses the command line, builds
//! each command's configuration and hands it over. Modules sit in layers,
//! and every `use crate::…` points down (or across one layer, never in a
//! circle); `tests/layers.rs` reads the source and holds it to this map:
//!
//! | layer | modules | what |
//! |---|---|---|
//! | 1 vocabulary | `change`, `time`, `secrets`, `config`, `fault`, `workload` | the normalized change and field paths, RFC 3339, secret scrubbing, config layering and the Kafka settings view, transient vs fatal, the benchmark's generator |
//! | 2 decode | `decode` | record bytes → one normalized change, every connector format and Avro input; pure |
//! | 3 table | `pipeline` | the pipeline file checked into a typed table |
//! | 4 core | `machine`, `timers` | (previous state, change) → (new state, events); timers on stream time; pure |
//! | 5 state | `state` | RocksDB store, the state record, the write-back cache |
//! | 6 engine | `engine`, `invariants` | one batch through decode, machine and state; computes, writes nothing |
//! | 7 edges | `kafka`, `registry` | Kafka clients, contexts and topics; the Schema Registry client |
//! | 8 outputs | `sink` | the event codec, dead letters, the record collector |
//! | 9 commands | `replay`, `diff`, `run`, `capture`, `dlq`, `tail`, `inspect` | what `resevent <command>` runs |

pub mod change;
pub mod config;
pub mod fault;
pub mod secrets;
pub mod time;
pub mod workload;

pub mod decode;

pub mod pipeline;

pub mod machine;
pub mod timers;

pub mod state;

pub mod engine;
pub mod invariants;

pub mod kafka;
pub mod registry;

pub mod sink;

pub mod capture;
pub mod diff;
pub mod dlq;
pub mod inspect;
pub mod replay;
pub mod run;
pub mod tail;
