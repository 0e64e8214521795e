//! A plain HTTP/1.1 client for the processes' operations endpoints, and
//! reading their Prometheus metrics.

use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A plain HTTP/1.1 GET over loopback: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(body) } else { body.to_string() };
    (status, body)
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// The sum of every sample named `name` (all label sets) in a Prometheus
/// text scrape, 0 when there is none yet. The sample's own name: a counter's
/// `…_total`, a histogram's `…_count`.
pub fn metric_sum(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series.split('{').next()?.trim() == name).then(|| value.trim().parse::<f64>().expect("a sample value"))
        })
        .sum()
}

/// Waits until metric `name` on the process serving `addr` reaches `at_least`
/// (summed over its label sets), looking every 10 ms so that a test acting
/// on it (a kill) acts close to that point; returns the value seen.
pub fn wait_metric(addr: &str, name: &str, at_least: f64, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let (status, scrape) = http_get(addr, "/metrics");
        let v = if status == 200 { metric_sum(&scrape, name) } else { 0.0 };
        if v >= at_least {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} at {addr} is {v}, not {at_least}, after {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
