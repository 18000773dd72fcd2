//! Latency recording shared by many connection tasks, and its summary.

use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

const SHARDS: usize = 16;
/// Highest value recorded, in µs (one minute); larger values are clamped.
const MAX_US: u64 = 60_000_000;

/// A latency histogram in µs, sharded so that tasks on different threads rarely share a lock.
pub struct Latency {
    shards: Vec<Mutex<Histogram<u64>>>,
}

fn histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static histogram bounds are valid")
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            shards: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
        }
    }
}

impl Latency {
    pub fn record(&self, key: usize, us: u64) {
        if let Ok(mut h) = self.shards[key % SHARDS].lock() {
            h.saturating_record(us.clamp(1, MAX_US));
        }
    }

    pub fn merged(&self) -> Histogram<u64> {
        let mut all = histogram();
        for shard in &self.shards {
            if let Ok(h) = shard.lock() {
                let _ = all.add(&*h);
            }
        }
        all
    }
}

/// Percentiles of one latency series, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencySummary {
    pub name: String,
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// (percentile, ms) points for plotting.
    pub curve: Vec<(f64, f64)>,
}

const CURVE: &[f64] = &[
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.75, 99.9, 99.95, 99.99, 99.999,
    100.0,
];

impl LatencySummary {
    pub fn of(name: &str, h: &Histogram<u64>) -> LatencySummary {
        let ms = |us: u64| us as f64 / 1000.0;
        let q = |p: f64| ms(h.value_at_quantile(p / 100.0));
        LatencySummary {
            name: name.to_owned(),
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: q(50.0),
            p90_ms: q(90.0),
            p99_ms: q(99.0),
            p999_ms: q(99.9),
            max_ms: ms(h.max()),
            curve: CURVE
                .iter()
                .map(|p| (*p, if *p >= 100.0 { ms(h.max()) } else { q(*p) }))
                .collect(),
        }
    }
}
