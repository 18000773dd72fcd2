//! `recovery` (Herald only): N clients on C history channels drop at once (abortive close),
//! M events are published to every channel while they are away, then all of them reconnect at
//! once and resume where they left off, as the `herald-recovery` plugin does. Reports the time
//! until every client has been told `recovered` and has received its M missed events, how many
//! were not recovered, and the servers' CPU (Redis included when its pid is given).
//!
//! The server must keep history on the channels (`[[apps.history]]` with prefix `recovery-`,
//! `size` at least M).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::api::Publisher;
use crate::fleet::{self, now_us, Ctx, Fleet};
use crate::procstat;
use crate::pusher::{self, Event};
use crate::report::Report;
use crate::session::{self, keepalive};
use crate::stats::{Latency, LatencySummary};

struct Shared {
    fleet: Fleet,
    recovered: AtomicUsize,
    not_recovered: AtomicUsize,
    gave_up: AtomicUsize,
    replayed: AtomicU64,
    storm_at_us: AtomicU64,
    last_done_us: AtomicU64,
    done: Latency,
}

pub async fn run(
    ctx: &Ctx,
    connections: usize,
    channels: usize,
    missed: u64,
    timeout_s: u64,
) -> Result<Report> {
    let params =
        serde_json::json!({ "connections": connections, "channels": channels, "missed": missed });
    let mut report = Report::new("recovery", &ctx.label, params);
    let run_id = now_us() % 1_000_000;
    let channel_of = |i: usize| format!("recovery-{run_id}-{}", i % channels.max(1));
    let shared = Arc::new(Shared {
        fleet: Fleet::default(),
        recovered: AtomicUsize::new(0),
        not_recovered: AtomicUsize::new(0),
        gave_up: AtomicUsize::new(0),
        replayed: AtomicU64::new(0),
        storm_at_us: AtomicU64::new(0),
        last_done_us: AtomicU64::new(0),
        done: Latency::default(),
    });
    let limit = fleet::handshake_limit(ctx.concurrency);
    // Every client's position is its channel's: they all saw the same events.
    let (positions_tx, positions_rx) = watch::channel(Arc::new(Vec::<(String, u64)>::new()));
    let (storm_tx, storm_rx) = fleet::stop_signal();
    let (back_tx, back_rx) = fleet::stop_signal();
    let mut tasks = JoinSet::new();
    for i in 0..connections {
        let (target, shared, limit) = (ctx.target.clone(), shared.clone(), limit.clone());
        let (mut storm, mut back, positions) =
            (storm_rx.clone(), back_rx.clone(), positions_rx.clone());
        let channel = channel_of(i);
        let ch_index = i % channels.max(1);
        tasks.spawn(async move {
            let first = async {
                let _permit = limit.acquire().await?;
                let (mut conn, socket_id) = session::establish(&target, 0, i).await?;
                conn.send_text(pusher::POSITIONS).await?;
                session::subscribe(&mut conn, &target, &socket_id, &channel, None).await?;
                Ok::<_, anyhow::Error>(conn)
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
            let _ = storm.changed().await;
            drop(conn); // RST: the server sees the connection die.
            let _ = back.changed().await;
            let (epoch, offset) = positions.borrow()[ch_index].clone();
            let deadline = Instant::now() + Duration::from_secs(timeout_s);
            let outcome = loop {
                match resume(&target, i, &channel, &epoch, offset, missed).await {
                    Ok(outcome) => break Some(outcome),
                    Err(e) => {
                        shared.fleet.error(&e.context("resume"));
                        if Instant::now() >= deadline {
                            break None;
                        }
                        tokio::time::sleep(Duration::from_millis(100 + (i as u64 % 100))).await;
                    }
                }
            };
            match outcome {
                Some((true, replayed)) => {
                    let now = now_us();
                    shared.recovered.fetch_add(1, Ordering::Relaxed);
                    shared.replayed.fetch_add(replayed, Ordering::Relaxed);
                    shared.done.record(
                        i,
                        now.saturating_sub(shared.storm_at_us.load(Ordering::Relaxed)),
                    );
                    shared.last_done_us.fetch_max(now, Ordering::Relaxed);
                }
                Some((false, _)) => {
                    shared.not_recovered.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    shared.gave_up.fetch_add(1, Ordering::Relaxed);
                }
            }
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
    let _ = storm_tx.send(true);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Away: every channel gets `missed` events, then its position is read.
    let mut publisher = Publisher::connect(ctx.target.api[0], ctx.target.creds.clone()).await?;
    let started_publishing = Instant::now();
    for seq in 0..missed {
        for ch in 0..channels.max(1) {
            publisher
                .trigger(&channel_of(ch), &pusher::payload(now_us(), seq, 16))
                .await?;
        }
    }
    let publish_s = started_publishing.elapsed().as_secs_f64();
    let mut positions = Vec::with_capacity(channels);
    for ch in 0..channels.max(1) {
        let (epoch, offset) = publisher.position(&channel_of(ch)).await?;
        positions.push((epoch, offset.saturating_sub(missed)));
    }
    let _ = positions_tx.send(Arc::new(positions));

    let before = ctx.watch.snapshot();
    let storm_at = now_us();
    shared.storm_at_us.store(storm_at, Ordering::Relaxed);
    let _ = back_tx.send(true);
    let s = shared.clone();
    let all_done = fleet::wait_for(
        subscribed as u64,
        "resuming",
        Duration::from_secs(timeout_s + 5),
        move || {
            (s.recovered.load(Ordering::Relaxed)
                + s.not_recovered.load(Ordering::Relaxed)
                + s.gave_up.load(Ordering::Relaxed)) as u64
        },
    )
    .await;
    let after = ctx.watch.snapshot();
    let recovered = shared.recovered.load(Ordering::Relaxed);
    let last = shared
        .last_done_us
        .load(Ordering::Relaxed)
        .saturating_sub(storm_at) as f64
        / 1e6;

    report.metric("clients before the cut", subscribed as f64, "");
    report.metric("events missed per client", missed as f64, "");
    report.metric("publishing while away", publish_s, "s");
    report.metric("recovered", recovered as f64, "");
    report.metric(
        "not recovered",
        shared.not_recovered.load(Ordering::Relaxed) as f64,
        "",
    );
    report.metric("gave up", shared.gave_up.load(Ordering::Relaxed) as f64, "");
    report.metric(
        "events replayed",
        shared.replayed.load(Ordering::Relaxed) as f64,
        "",
    );
    report.metric(
        "all recovered",
        if all_done && recovered == subscribed {
            1.0
        } else {
            0.0
        },
        "yes=1",
    );
    report.metric("time until all recovered", last, "s");
    let deltas = before.delta(&after);
    if let Some((cpu, _, rss)) = procstat::server_totals(&deltas) {
        report.metric("server CPU while resuming", cpu, "s");
        report.metric("server RSS at end", rss as f64 / 1048576.0, "MiB");
    }
    report.metric("tool CPU while resuming", procstat::tool_cpu(&deltas), "s");
    report.latency.push(LatencySummary::of(
        "reconnect→recovered",
        &shared.done.merged(),
    ));
    report.processes = deltas;
    report.errors = shared.fleet.errors();
    while tasks.join_next().await.is_some() {}
    Ok(report)
}

/// Reconnects and resumes one client; `(recovered, replayed)` once its missed events arrived.
async fn resume(
    target: &crate::target::Target,
    i: usize,
    channel: &str,
    epoch: &str,
    offset: u64,
    missed: u64,
) -> Result<(bool, u64)> {
    let (mut conn, _) = session::establish(target, 0, i).await?;
    conn.send_text(pusher::POSITIONS).await?;
    conn.send_text(pusher::subscribe_at(channel, epoch, offset).as_bytes())
        .await?;
    let wait = Duration::from_secs(15);
    let verdict = timeout(wait, async {
        let mut verdict = None;
        let mut events = 0u64;
        loop {
            let event = conn.next_event().await?;
            match keepalive(&mut conn, event).await? {
                Some(Event::Recovery {
                    recovered,
                    replayed,
                }) => {
                    if !recovered {
                        return Ok::<_, anyhow::Error>((false, 0));
                    }
                    verdict = Some(replayed);
                }
                Some(Event::Data { .. }) => events += 1,
                _ => {}
            }
            if let Some(replayed) = verdict {
                if events >= missed {
                    return Ok((true, replayed));
                }
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("not resumed within {wait:?}"))??;
    if verdict.0 && verdict.1 != missed {
        bail!("replayed {} events, {missed} were missed", verdict.1);
    }
    drop(conn); // the measurement is done
    Ok(verdict)
}
