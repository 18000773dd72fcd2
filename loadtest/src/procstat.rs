//! CPU time and resident memory of processes, read from `/proc`, so a report shows whether the
//! server or the load tool was the limit.

use std::fs;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Kernel clock ticks per second for `/proc/*/stat` times (USER_HZ, 100 on Linux x86-64/arm64).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

pub fn sample(pid: &str) -> Result<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu_seconds = (ticks(11) + ticks(12)) as f64 / TICKS_PER_SECOND;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Ok(Sample {
        cpu_seconds,
        rss_bytes: rss_kib * 1024,
    })
}

/// The processes being watched: the servers (`--server-pid`) and this tool.
#[derive(Debug, Clone)]
pub struct Watch {
    pids: Vec<u32>,
}

/// Per-process figures between two snapshots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcDelta {
    pub pid: String,
    pub cpu_seconds: f64,
    pub rss_start_bytes: u64,
    pub rss_end_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    samples: Vec<(String, Sample)>,
}

impl Watch {
    pub fn new(pids: Vec<u32>) -> Watch {
        Watch { pids }
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut samples: Vec<(String, Sample)> = self
            .pids
            .iter()
            .map(|p| (p.to_string(), sample(&p.to_string()).unwrap_or_default()))
            .collect();
        samples.push(("self".into(), sample("self").unwrap_or_default()));
        Snapshot { samples }
    }
}

impl Snapshot {
    pub fn delta(&self, later: &Snapshot) -> Vec<ProcDelta> {
        self.samples
            .iter()
            .zip(&later.samples)
            .map(|((pid, a), (_, b))| ProcDelta {
                pid: pid.clone(),
                cpu_seconds: b.cpu_seconds - a.cpu_seconds,
                rss_start_bytes: a.rss_bytes,
                rss_end_bytes: b.rss_bytes,
            })
            .collect()
    }
}

/// Sums over the server processes (everything but `self`).
pub fn server_totals(deltas: &[ProcDelta]) -> Option<(f64, i64, u64)> {
    let servers: Vec<_> = deltas.iter().filter(|d| d.pid != "self").collect();
    if servers.is_empty() {
        return None;
    }
    let cpu = servers.iter().map(|d| d.cpu_seconds).sum();
    let rss_growth = servers
        .iter()
        .map(|d| d.rss_end_bytes as i64 - d.rss_start_bytes as i64)
        .sum();
    let rss_end = servers.iter().map(|d| d.rss_end_bytes).sum();
    Some((cpu, rss_growth, rss_end))
}

pub fn tool_cpu(deltas: &[ProcDelta]) -> f64 {
    deltas
        .iter()
        .find(|d| d.pid == "self")
        .map_or(0.0, |d| d.cpu_seconds)
}
