//! Test harness for the Kafka tests: a real Kafka-protocol broker and real
//! `resevent` processes.
//!
//! The broker is Tansu (started here on a free loopback port, one per test),
//! or any broker given in `RESEVENT_TEST_BOOTSTRAP` (for example a real Apache
//! Kafka). `scripts/test` installs Tansu and sets `RESEVENT_TANSU`; without
//! either variable the tests fail loudly rather than skip.
//!
//! By concern:
//! - `process`: free ports, helper servers started and waited for, killed on drop;
//! - `broker`: the brokers (plain, behind a proxy that cuts the network,
//!   behind TLS, requiring SASL, transactional), topics and producing;
//! - `readers`: what a test reads back — a topic's records, a consumer
//!   group's lag — and the waits built on them;
//! - `instance`: `resevent run` instances and other long-running `resevent`
//!   commands (`resevent capture`), their logs and HTTP endpoints;
//! - `events`: the built-in workload, `resevent replay`'s view of it, and
//!   comparing business events;
//! - `http`, `tls`: a plain HTTP GET; test certificates and a TLS front;
//! - `registry`: a Schema Registry test double.

#![allow(dead_code)]

mod broker;
mod events;
mod http;
mod instance;
mod process;
mod readers;
pub mod registry;
mod tls;

// Each test uses some of these; the rest is not an unused import.
#[allow(unused_imports)]
pub use broker::*;
#[allow(unused_imports)]
pub use events::*;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use instance::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use readers::*;
#[allow(unused_imports)]
pub use tls::*;
