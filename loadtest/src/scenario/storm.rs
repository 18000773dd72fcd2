//! `storm`: N subscribed connections drop at the same moment (abortive TCP close, as when a
//! network path or a load balancer fails) and all reconnect and resubscribe at once. Reports the
//! time until every connection is back and subscribed, and the reconnect-time distribution.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::fleet::{self, now_us, Ctx, Fleet};
use crate::procstat;
use crate::report::Report;
use crate::session::{self, keepalive};
use crate::stats::{Latency, LatencySummary};
use crate::target::Target;
use crate::ws::Conn;

struct Shared {
    fleet: Fleet,
    back: AtomicUsize,
    gave_up: AtomicUsize,
    retries: AtomicU64,
    storm_at_us: AtomicU64,
    last_back_us: AtomicU64,
    reconnect: Latency,
}

pub async fn run(
    ctx: &Ctx,
    connections: usize,
    channels: usize,
    reconnect_concurrency: usize,
    timeout_s: u64,
) -> Result<Report> {
    let params = serde_json::json!({ "connections": connections, "channels": channels, "reconnect_concurrency": reconnect_concurrency, "timeout_s": timeout_s });
    let mut report = Report::new("storm", &ctx.label, params);
    let run_id = now_us() % 1_000_000;
    let shared = Arc::new(Shared {
        fleet: Fleet::default(),
        back: AtomicUsize::new(0),
        gave_up: AtomicUsize::new(0),
        retries: AtomicU64::new(0),
        storm_at_us: AtomicU64::new(0),
        last_back_us: AtomicU64::new(0),
        reconnect: Latency::default(),
    });
    let limit = fleet::handshake_limit(ctx.concurrency);
    let relimit = Arc::new(Semaphore::new(if reconnect_concurrency == 0 {
        Semaphore::MAX_PERMITS
    } else {
        reconnect_concurrency
    }));
    let (storm_tx, storm_rx) = fleet::stop_signal();
    let (stop_tx, stop_rx) = fleet::stop_signal();
    let mut tasks = JoinSet::new();
    for i in 0..connections {
        let (target, shared, limit, relimit) = (
            ctx.target.clone(),
            shared.clone(),
            limit.clone(),
            relimit.clone(),
        );
        let (storm, stop) = (storm_rx.clone(), stop_rx.clone());
        let channel = format!("storm-{run_id}-{}", i % channels.max(1));
        tasks.spawn(async move {
            let first = async {
                let _permit = limit.acquire().await?;
                connect(&target, i, &channel).await
            }
            .await;
            let conn = match first {
                Ok(c) => c,
                Err(e) => {
                    shared.fleet.failed.fetch_add(1, Ordering::Relaxed);
                    shared.fleet.error(&e);
                    return;
                }
            };
            shared.fleet.subscribed.fetch_add(1, Ordering::Relaxed);
            let Some(conn) = wait_signal(conn, storm, &shared.fleet).await else {
                shared.gave_up.fetch_add(1, Ordering::Relaxed);
                return;
            };
            drop(conn); // RST: the server sees the connection die.
            let deadline = Instant::now() + Duration::from_secs(timeout_s);
            let mut attempt = 0u32;
            let conn = loop {
                let result = async {
                    let _permit = relimit.acquire().await?;
                    connect(&target, i, &channel).await
                }
                .await;
                match result {
                    Ok(c) => break Some(c),
                    Err(e) => {
                        shared.retries.fetch_add(1, Ordering::Relaxed);
                        shared.fleet.error(&e.context("reconnect"));
                        attempt += 1;
                        if Instant::now() >= deadline {
                            break None;
                        }
                        // Small, growing, jittered backoff like a real client library's.
                        let ms = (50u64 << attempt.min(5)) + (i as u64 % 50);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                }
            };
            let Some(conn) = conn else {
                shared.gave_up.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let now = now_us();
            shared.reconnect.record(
                i,
                now.saturating_sub(shared.storm_at_us.load(Ordering::Relaxed)),
            );
            shared.last_back_us.fetch_max(now, Ordering::Relaxed);
            shared.back.fetch_add(1, Ordering::Relaxed);
            drop(fleet::hold(conn, stop, &shared.fleet).await);
        });
    }
    let s = shared.clone();
    fleet::wait_for(
        connections as u64,
        "connecting",
        ctx.ramp_timeout,
        move || {
            (s.fleet.subscribed.load(Ordering::Relaxed) + s.fleet.failed.load(Ordering::Relaxed))
                as u64
        },
    )
    .await;
    let subscribed = shared.fleet.subscribed.load(Ordering::Relaxed);
    // Let the server finish its post-ramp work so it does not count against the storm.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let before = ctx.watch.snapshot();
    let storm_at = now_us();
    shared.storm_at_us.store(storm_at, Ordering::Relaxed);
    let _ = storm_tx.send(true);
    let s = shared.clone();
    let all_back = fleet::wait_for(
        subscribed as u64,
        "reconnecting",
        Duration::from_secs(timeout_s + 5),
        move || (s.back.load(Ordering::Relaxed) + s.gave_up.load(Ordering::Relaxed)) as u64,
    )
    .await;
    let after = ctx.watch.snapshot();
    let back = shared.back.load(Ordering::Relaxed);
    let last = shared
        .last_back_us
        .load(Ordering::Relaxed)
        .saturating_sub(storm_at) as f64
        / 1e6;

    report.metric("connections before storm", subscribed as f64, "");
    report.metric(
        "initial connect failures",
        shared.fleet.failed.load(Ordering::Relaxed) as f64,
        "",
    );
    report.metric("back and resubscribed", back as f64, "");
    report.metric("gave up", shared.gave_up.load(Ordering::Relaxed) as f64, "");
    report.metric(
        "reconnect retries",
        shared.retries.load(Ordering::Relaxed) as f64,
        "",
    );
    report.metric(
        "all back",
        if all_back && back == subscribed {
            1.0
        } else {
            0.0
        },
        "yes=1",
    );
    report.metric("time until all back", last, "s");
    report.metric("reconnect rate", back as f64 / last.max(1e-6), "conn/s");
    let deltas = before.delta(&after);
    if let Some((cpu, _, rss)) = procstat::server_totals(&deltas) {
        report.metric("server CPU during storm", cpu, "s");
        report.metric("server RSS at end", rss as f64 / 1048576.0, "MiB");
    }
    report.metric("tool CPU during storm", procstat::tool_cpu(&deltas), "s");
    report
        .latency
        .push(LatencySummary::of("reconnect", &shared.reconnect.merged()));
    report.processes = deltas;
    report.errors = shared.fleet.errors();

    fleet::shut_down(&stop_tx, &mut tasks).await;
    Ok(report)
}

async fn connect(target: &Target, i: usize, channel: &str) -> Result<Conn> {
    let (mut conn, socket_id) = session::establish(target, 0, i).await?;
    session::subscribe(&mut conn, target, &socket_id, channel, None).await?;
    Ok(conn)
}

/// Keeps the connection alive until the storm signal; `None` if it died before.
async fn wait_signal(
    mut conn: Conn,
    mut signal: watch::Receiver<bool>,
    fleet: &Fleet,
) -> Option<Conn> {
    // One waiter registration for the whole loop: a fresh `changed()` per event would lock
    // the channel's shared waiter list twice per delivery, across every task.
    let stopped = signal.changed();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            event = conn.next_event() => {
                let ok = match event {
                    Ok(e) => keepalive(&mut conn, e).await.map(|_| ()),
                    Err(e) => Err(e),
                };
                if let Err(e) = ok {
                    fleet.dropped.fetch_add(1, Ordering::Relaxed);
                    fleet.error(&e.context("before the storm"));
                    return None;
                }
            }
            _ = &mut stopped => return Some(conn),
        }
    }
}
