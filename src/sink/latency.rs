//! End-to-end latency: from an input record's timestamp to the moment the
//! business events of its batch were acknowledged by the broker.
//!
//! A fixed histogram of 1 ms buckets up to 60 s (plus the exact maximum), so a
//! service that runs for months keeps a constant 480 KB, not a sample per record.

const BUCKETS: usize = 60_000;

#[derive(Clone)]
pub struct Latency {
    buckets: Box<[u64]>,
    count: u64,
    max_ms: u64,
    /// Sum of all samples, for the Prometheus histogram's `_sum`.
    sum_ms: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency { buckets: vec![0; BUCKETS].into_boxed_slice(), count: 0, max_ms: 0, sum_ms: 0 }
    }
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Latency {{ count: {}, p50: {:?}, p99: {:?}, max: {} }}", self.count, self.quantile(0.5), self.quantile(0.99), self.max_ms)
    }
}

impl Latency {
    /// Records one latency in milliseconds (negative clock skew counts as 0).
    pub fn record(&mut self, ms: i64) {
        let ms = ms.max(0) as u64;
        self.buckets[(ms as usize).min(BUCKETS - 1)] += 1;
        self.count += 1;
        self.max_ms = self.max_ms.max(ms);
        self.sum_ms += ms;
    }

    /// How many samples were at most `ms`.
    pub fn count_at_most(&self, ms: u64) -> u64 {
        if ms as usize >= BUCKETS - 1 {
            return self.buckets[..BUCKETS - 1].iter().sum::<u64>() + if self.max_ms <= ms { self.buckets[BUCKETS - 1] } else { 0 };
        }
        self.buckets[..=ms as usize].iter().sum()
    }

    pub fn sum_ms(&self) -> u64 {
        self.sum_ms
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max_ms(&self) -> u64 {
        self.max_ms
    }

    /// The smallest bucket (ms) at or below which `q` of the samples lie;
    /// `None` with no samples. Above 60 s the quantile reads as the maximum.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (ms, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(if ms == BUCKETS - 1 { self.max_ms } else { ms as u64 });
            }
        }
        Some(self.max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut l = Latency::default();
        assert_eq!(l.quantile(0.5), None);
        for ms in 1..=100 {
            l.record(ms);
        }
        assert_eq!(l.quantile(0.5), Some(50));
        assert_eq!(l.quantile(0.99), Some(99));
        assert_eq!(l.quantile(1.0), Some(100));
        l.record(-5);
        l.record(90_000);
        assert_eq!(l.count(), 102);
        assert_eq!(l.max_ms(), 90_000);
        assert_eq!(l.quantile(1.0), Some(90_000));
        assert_eq!(l.quantile(0.0), Some(0));
        assert_eq!(l.count_at_most(50), 51, "1..=50 and the clamped -5");
        assert_eq!(l.sum_ms(), 5050 + 90_000);
    }
}
