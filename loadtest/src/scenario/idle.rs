//! `idle`: ramp N subscribed connections at a given handshake concurrency, hold them, and report
//! ramp time, handshakes/s and server memory per connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::task::JoinSet;

use crate::fleet::{self, Ctx, Fleet};
use crate::procstat;
use crate::report::Report;
use crate::session;
use crate::stats::LatencySummary;

pub async fn run(ctx: &Ctx, connections: usize, channels: usize, hold_secs: u64) -> Result<Report> {
    let params = serde_json::json!({ "connections": connections, "channels": channels, "concurrency": ctx.concurrency, "hold_s": hold_secs });
    let mut report = Report::new("idle", &ctx.label, params);
    let run_id = fleet::now_us() % 1_000_000;
    let fleet = Arc::new(Fleet::default());
    let limit = fleet::handshake_limit(ctx.concurrency);
    let (stop_tx, stop_rx) = fleet::stop_signal();
    let before = ctx.watch.snapshot();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..connections {
        let (target, fleet, limit, stop) = (
            ctx.target.clone(),
            fleet.clone(),
            limit.clone(),
            stop_rx.clone(),
        );
        let channel = format!("idle-{run_id}-{}", i % channels.max(1));
        tasks.spawn(async move {
            let result = async {
                let _permit = limit.acquire().await?;
                let t0 = Instant::now();
                let (mut conn, socket_id) = session::establish(&target, 0, i).await?;
                session::subscribe(&mut conn, &target, &socket_id, &channel, None).await?;
                fleet
                    .connect_latency
                    .record(i, t0.elapsed().as_micros() as u64);
                Ok::<_, anyhow::Error>(conn)
            }
            .await;
            match result {
                Ok(conn) => {
                    fleet.subscribed.fetch_add(1, Ordering::Relaxed);
                    drop(fleet::hold(conn, stop, &fleet).await);
                }
                Err(e) => {
                    fleet.failed.fetch_add(1, Ordering::Relaxed);
                    fleet.error(&e);
                }
            }
        });
    }
    let f = fleet.clone();
    fleet::wait_for(
        connections as u64,
        "connecting",
        ctx.ramp_timeout,
        move || (f.subscribed.load(Ordering::Relaxed) + f.failed.load(Ordering::Relaxed)) as u64,
    )
    .await;
    let ramp = started.elapsed().as_secs_f64();
    let after_ramp = ctx.watch.snapshot();
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    let after_hold = ctx.watch.snapshot();
    let subscribed = fleet.subscribed.load(Ordering::Relaxed);

    report.metric("connections subscribed", subscribed as f64, "");
    report.metric(
        "connections failed",
        fleet.failed.load(Ordering::Relaxed) as f64,
        "",
    );
    report.metric(
        "dropped while idle",
        fleet.dropped.load(Ordering::Relaxed) as f64,
        "",
    );
    report.metric("ramp time", ramp, "s");
    report.metric(
        "handshakes+subscribes per second",
        subscribed as f64 / ramp,
        "/s",
    );
    let ramp_deltas = before.delta(&after_ramp);
    let hold_deltas = before.delta(&after_hold);
    if let Some((cpu, _, _)) = procstat::server_totals(&ramp_deltas) {
        report.metric("server CPU during ramp", cpu, "s");
        report.metric(
            "server CPU per 1k connections",
            cpu * 1000.0 / subscribed.max(1) as f64,
            "s",
        );
    }
    if let Some((cpu, growth, end)) = procstat::server_totals(&hold_deltas) {
        report.metric(
            "server CPU while idle",
            cpu - procstat::server_totals(&ramp_deltas).map_or(0.0, |t| t.0),
            "s",
        );
        report.metric("server RSS after hold", end as f64 / 1048576.0, "MiB");
        report.metric("server RSS growth", growth as f64 / 1048576.0, "MiB");
        report.metric(
            "server RSS per connection",
            growth as f64 / subscribed.max(1) as f64 / 1024.0,
            "KiB",
        );
    }
    report.metric(
        "tool CPU during ramp",
        procstat::tool_cpu(&ramp_deltas),
        "s",
    );
    report.latency.push(LatencySummary::of(
        "connect+subscribe",
        &fleet.connect_latency.merged(),
    ));
    report.processes = hold_deltas;
    report.errors = fleet.errors();

    fleet::shut_down(&stop_tx, &mut tasks).await;
    Ok(report)
}
