//! Outputs: what leaves resevent for Kafka, and how.
//!
//! - [`codec`]: a business event as a record value, JSON or Avro; pure;
//! - [`deadletter`]: a rejected record as its dead letter (the original
//!   bytes, the reason in headers), and reading one back; pure;
//! - [`collector`]: the record collector, Kafka Streams' name for it: every
//!   output (business events, routes, dead letters, changelog records) sent
//!   without waiting, acknowledged together when an interval commits, and
//!   [`latency`], the time from a record to its event acknowledged.
//!
//! Above the engine and the Kafka clients, below the commands.

pub mod codec;
pub mod collector;
pub mod deadletter;
pub mod latency;
