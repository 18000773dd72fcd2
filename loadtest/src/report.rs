//! The result of one run: printed as a table, written as JSON, and merged across runs (one per
//! server) into side-by-side markdown tables by the `report` subcommand.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::procstat::ProcDelta;
use crate::stats::LatencySummary;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub label: String,
    pub params: serde_json::Value,
    pub metrics: Vec<Metric>,
    pub latency: Vec<LatencySummary>,
    pub processes: Vec<ProcDelta>,
    pub errors: Vec<String>,
}

impl Report {
    pub fn new(scenario: &str, label: &str, params: serde_json::Value) -> Report {
        Report {
            scenario: scenario.into(),
            label: label.into(),
            params,
            metrics: Vec::new(),
            latency: Vec::new(),
            processes: Vec::new(),
            errors: Vec::new(),
        }
    }

    pub fn metric(&mut self, name: &str, value: f64, unit: &str) {
        self.metrics.push(Metric {
            name: name.into(),
            value,
            unit: unit.into(),
        });
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\n{} — {}  {}", self.scenario, self.label, self.params);
        let width = self
            .metrics
            .iter()
            .map(|m| m.name.len())
            .max()
            .unwrap_or(10)
            .max(24);
        for m in &self.metrics {
            let _ = writeln!(
                out,
                "  {:<width$}  {:>14} {}",
                m.name,
                fmt_value(m.value),
                m.unit
            );
        }
        if !self.latency.is_empty() {
            let _ = writeln!(
                out,
                "\n  {:<16} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "latency (ms)", "count", "mean", "p50", "p90", "p99", "p99.9", "max"
            );
            for l in &self.latency {
                let _ = writeln!(
                    out,
                    "  {:<16} {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                    l.name, l.count, l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
                );
            }
        }
        let _ = writeln!(
            out,
            "\n  {:<10} {:>12} {:>14} {:>14}",
            "process", "cpu s", "rss start MiB", "rss end MiB"
        );
        for p in &self.processes {
            let _ = writeln!(
                out,
                "  {:<10} {:>12.2} {:>14.1} {:>14.1}",
                p.pid,
                p.cpu_seconds,
                p.rss_start_bytes as f64 / 1048576.0,
                p.rss_end_bytes as f64 / 1048576.0
            );
        }
        for e in &self.errors {
            let _ = writeln!(out, "  error: {e}");
        }
        out
    }
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Reads JSON reports and prints one markdown table per scenario, one column per label.
pub fn compare(files: &[PathBuf]) -> Result<String> {
    let mut reports = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
        let r: Report =
            serde_json::from_str(&text).with_context(|| format!("parse {}", f.display()))?;
        reports.push(r);
    }
    let mut scenarios: Vec<String> = Vec::new();
    for r in &reports {
        let key = format!("{} {}", r.scenario, r.params);
        if !scenarios.contains(&key) {
            scenarios.push(key);
        }
    }
    let mut out = String::new();
    for key in scenarios {
        let group: Vec<&Report> = reports
            .iter()
            .filter(|r| format!("{} {}", r.scenario, r.params) == key)
            .collect();
        let _ = writeln!(
            out,
            "\n#### {}\n\n`{}`\n",
            group[0].scenario, group[0].params
        );
        let _ = write!(out, "| figure |");
        for r in &group {
            let _ = write!(out, " {} |", r.label);
        }
        let _ = write!(out, "\n|---|");
        for _ in &group {
            let _ = write!(out, "---:|");
        }
        let _ = writeln!(out);
        let mut rows: Vec<(String, String)> = Vec::new();
        for r in &group {
            for m in &r.metrics {
                if !rows.iter().any(|(n, _)| *n == m.name) {
                    rows.push((m.name.clone(), m.unit.clone()));
                }
            }
        }
        for (name, unit) in rows {
            if unit.is_empty() {
                let _ = write!(out, "| {name} |");
            } else {
                let _ = write!(out, "| {name} ({unit}) |");
            }
            for r in &group {
                let v = r
                    .metrics
                    .iter()
                    .find(|m| m.name == name)
                    .map(|m| fmt_value(m.value));
                let _ = write!(out, " {} |", v.unwrap_or_else(|| "–".into()));
            }
            let _ = writeln!(out);
        }
        let mut series: Vec<String> = Vec::new();
        for r in &group {
            for l in &r.latency {
                if !series.contains(&l.name) {
                    series.push(l.name.clone());
                }
            }
        }
        for s in series {
            let _ = write!(out, "| {s} latency p50 / p99 / p99.9 / max (ms) |");
            for r in &group {
                match r.latency.iter().find(|l| l.name == s) {
                    Some(l) => {
                        let _ = write!(
                            out,
                            " {:.2} / {:.2} / {:.2} / {:.2} |",
                            l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
                        );
                    }
                    None => {
                        let _ = write!(out, " – |");
                    }
                }
            }
            let _ = writeln!(out);
        }
        let errors: Vec<String> = group
            .iter()
            .flat_map(|r| r.errors.iter().map(move |e| format!("{}: {e}", r.label)))
            .collect();
        for e in errors.iter().take(6) {
            let _ = writeln!(out, "\n> {e}");
        }
    }
    Ok(out)
}
