//! `herald-loadtest`: a persistent-connection load generator for any Pusher protocol 7 server
//! (Herald, Sockudo, soketi, …). It opens many WebSocket connections, subscribes them, publishes
//! through the signed HTTP API and measures what arrives.
//!
//! Layout: `ws` (minimal WebSocket client), `pusher` (frames and a byte-level classifier),
//! `session` (connect/subscribe steps), `api` (HTTP publisher), `fleet` (shared clock, counters,
//! progress), `scenario/*` (one file per scenario), `stats`/`procstat`/`report`/`plot` (output).
//! It knows nothing of Herald's internals: only the protocol and `herald-protocol`'s signing.

mod api;
mod cli;
mod fleet;
mod plot;
mod procstat;
mod pusher;
mod report;
mod scenario;
mod session;
mod stats;
mod target;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

use cli::{Cli, Command, Common, DeliverArgs};
use fleet::Ctx;
use report::Report;
use scenario::deliver::Plan;
use target::Target;

fn main() -> Result<()> {
    let cli = Cli::parse();
    fleet::now_us();
    if let Command::Report {
        files,
        plot,
        series,
    } = &cli.command
    {
        print!("{}", report::compare(files)?);
        if let Some(path) = plot {
            write_compare_plot(files, path, series)?;
        }
        return Ok(());
    }
    raise_fd_limit();
    let threads = match &cli.command {
        Command::Idle { common, .. }
        | Command::Storm { common, .. }
        | Command::Recovery { common, .. }
        | Command::Presence { common, .. } => common.threads,
        Command::Fanout(a) | Command::Burst(a) | Command::Cluster(a) => a.common.threads,
        Command::Report { .. } => 0,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    let runtime = builder.enable_all().build()?;
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> Result<()> {
    let (common, total) = match &command {
        Command::Idle {
            common,
            connections,
            ..
        }
        | Command::Storm {
            common,
            connections,
            ..
        }
        | Command::Recovery {
            common,
            connections,
            ..
        } => (common.clone(), *connections),
        Command::Fanout(a) | Command::Burst(a) | Command::Cluster(a) => {
            (a.common.clone(), a.connections)
        }
        Command::Presence {
            common,
            channels,
            members,
            ..
        } => (common.clone(), channels * (members + 1)),
        Command::Report { .. } => unreachable!("handled in main"),
    };
    let max = common.max_seconds;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(max));
        eprintln!("herald-loadtest: --max-seconds {max} reached, exiting");
        std::process::exit(3);
    });
    let ctx = context(&common, total)?;
    let report = match command {
        Command::Idle {
            connections,
            channels,
            hold,
            ..
        } => scenario::idle::run(&ctx, connections, channels, hold).await?,
        Command::Fanout(a) => scenario::deliver::run(&ctx, "fanout", plan(&a, 100.0)).await?,
        Command::Burst(a) => scenario::deliver::run(&ctx, "burst", plan(&a, 0.0)).await?,
        Command::Cluster(a) => scenario::deliver::run(&ctx, "cluster", plan(&a, 1000.0)).await?,
        Command::Presence {
            channels,
            members,
            rate,
            duration,
            ..
        } => scenario::presence::run(&ctx, channels, members, rate, duration).await?,
        Command::Storm {
            connections,
            channels,
            reconnect_concurrency,
            timeout,
            ..
        } => {
            scenario::storm::run(&ctx, connections, channels, reconnect_concurrency, timeout)
                .await?
        }
        Command::Recovery {
            connections,
            channels,
            missed,
            timeout,
            ..
        } => scenario::recovery::run(&ctx, connections, channels, missed, timeout).await?,
        Command::Report { .. } => unreachable!("handled in main"),
    };
    output(&common, &report)
}

fn context(common: &Common, total: usize) -> Result<Ctx> {
    let creds = pusher::AppCredentials {
        app_id: common.app_id.clone(),
        key: common.key.clone(),
        secret: common.secret.clone(),
    };
    let target = Target::new(
        &common.urls,
        common.api_url.as_deref(),
        creds,
        total,
        common.source_ips,
    )?;
    Ok(Ctx {
        target: Arc::new(target),
        watch: procstat::Watch::new(common.server_pids.clone()),
        label: common.label.clone(),
        concurrency: common.concurrency,
        ramp_timeout: Duration::from_secs(common.ramp_timeout),
    })
}

fn plan(a: &DeliverArgs, default_rate: f64) -> Plan {
    Plan {
        connections: a.connections,
        channels: a.channels,
        messages: a.messages,
        rate: a.rate.unwrap_or(default_rate),
        publishers: a.publishers,
        spread: a.spread,
        batch: a.batch,
        payload_bytes: a.payload,
        drain_timeout_s: a.drain_timeout,
        max_publish_s: a.max_publish,
    }
}

fn output(common: &Common, report: &Report) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    if common.json {
        println!("{json}");
    } else {
        print!("{}", report.table());
    }
    if let Some(path) = &common.out {
        std::fs::write(path, &json).with_context(|| format!("write {}", path.display()))?;
    }
    if let Some(path) = &common.plot {
        let series: Vec<_> = report
            .latency
            .iter()
            .map(|l| (l.name.clone(), l.curve.clone()))
            .collect();
        let title = format!("{} — {}", report.scenario, report.label);
        std::fs::write(path, plot::svg(&title, &series))
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn write_compare_plot(
    files: &[std::path::PathBuf],
    path: &std::path::Path,
    series: &str,
) -> Result<()> {
    let mut lines = Vec::new();
    let mut title = String::new();
    for f in files {
        let r: Report = serde_json::from_str(&std::fs::read_to_string(f)?)?;
        if let Some(l) = r.latency.iter().find(|l| l.name == series) {
            title = format!("{} — {series}", r.scenario);
            lines.push((r.label.clone(), l.curve.clone()));
        }
    }
    std::fs::write(path, plot::svg(&title, &lines))?;
    Ok(())
}

/// Many connections need many descriptors: raise the soft limit, and the hard one when allowed.
fn raise_fd_limit() {
    let want = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20)
        .min(1 << 20);
    if rlimit::setrlimit(rlimit::Resource::NOFILE, want, want).is_err() {
        let _ = rlimit::increase_nofile_limit(want);
    }
}
