//! The tests' Confluent Schema Registry double (tests/common/registry.rs) as a
//! process of its own, so that scripts/bench uses the same double as the
//! tests rather than a second one: it serves on a free loopback port, prints
//! its URL (`http://127.0.0.1:PORT`) as the first line on stdout, and serves
//! until its stdin is closed (or it is killed).
//!
//!   cargo build --release --example registry_double
//!   $CARGO_TARGET_DIR/release/examples/registry_double

// The double as the tests have it; not every helper of theirs is used here.
#[allow(dead_code)]
#[path = "../tests/common/registry.rs"]
mod registry;

use std::io::{Read, Write};

fn main() {
    let registry = registry::Registry::start();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", registry.url()).expect("stdout");
    out.flush().expect("stdout");
    drop(out);
    // Serve until stdin ends: the bench closes it, or exits.
    let mut sink = [0u8; 256];
    let mut stdin = std::io::stdin().lock();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    drop(registry);
}
