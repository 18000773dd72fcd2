//! `presence`: C presence channels, each with M stable members and one churner that joins and
//! leaves again and again (a fresh user id each time). Reports join latency (subscribe →
//! subscription_succeeded), member_added propagation latency to the stable members, and whether
//! every member_added / member_removed arrived.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::fleet::{self, now_us, Ctx, Fleet};
use crate::procstat;
use crate::pusher::{self, Event};
use crate::report::Report;
use crate::session::{self, keepalive};
use crate::stats::{Latency, LatencySummary};
use crate::ws::Conn;

struct Shared {
    fleet: Fleet,
    /// Member events are counted only once the churn starts (not during the ramp).
    churning: AtomicBool,
    /// Send time of the churner's current join, per channel.
    join_sent_us: Vec<AtomicU64>,
    joins: AtomicU64,
    leaves: AtomicU64,
    added: AtomicU64,
    removed: AtomicU64,
    join_latency: Latency,
    added_latency: Latency,
}

pub async fn run(
    ctx: &Ctx,
    channels: usize,
    members: usize,
    rate: f64,
    duration_s: u64,
) -> Result<Report> {
    let channels = channels.max(1);
    let params = serde_json::json!({ "channels": channels, "members": members, "joins_per_s": rate, "duration_s": duration_s });
    let mut report = Report::new("presence", &ctx.label, params);
    let run_id = now_us() % 1_000_000;
    let names: Arc<Vec<String>> = Arc::new(
        (0..channels)
            .map(|c| format!("presence-bench-{run_id}-{c}"))
            .collect(),
    );
    let shared = Arc::new(Shared {
        fleet: Fleet::default(),
        churning: AtomicBool::new(false),
        join_sent_us: (0..channels).map(|_| AtomicU64::new(0)).collect(),
        joins: AtomicU64::new(0),
        leaves: AtomicU64::new(0),
        added: AtomicU64::new(0),
        removed: AtomicU64::new(0),
        join_latency: Latency::default(),
        added_latency: Latency::default(),
    });
    let limit = fleet::handshake_limit(ctx.concurrency);
    let (stop_tx, stop_rx) = fleet::stop_signal();
    let mut tasks = JoinSet::new();
    let stable = channels * members;
    for i in 0..stable {
        let (target, shared, limit, stop, names) = (
            ctx.target.clone(),
            shared.clone(),
            limit.clone(),
            stop_rx.clone(),
            names.clone(),
        );
        tasks.spawn(async move {
            let channel = i % channels;
            let result = async {
                let _permit = limit.acquire().await?;
                let (mut conn, socket_id) = session::establish(&target, 0, i).await?;
                let user = format!("member-{i}");
                session::subscribe(&mut conn, &target, &socket_id, &names[channel], Some(&user))
                    .await?;
                Ok::<_, anyhow::Error>(conn)
            }
            .await;
            match result {
                Ok(conn) => {
                    shared.fleet.subscribed.fetch_add(1, Ordering::Relaxed);
                    member(conn, stop, &shared, i, channel).await;
                }
                Err(e) => {
                    shared.fleet.failed.fetch_add(1, Ordering::Relaxed);
                    shared.fleet.error(&e);
                }
            }
        });
    }
    let s = shared.clone();
    fleet::wait_for(stable as u64, "members", ctx.ramp_timeout, move || {
        (s.fleet.subscribed.load(Ordering::Relaxed) + s.fleet.failed.load(Ordering::Relaxed)) as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = ctx.watch.snapshot();
    shared.churning.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let period = Duration::from_secs_f64(channels as f64 / rate.max(0.001));
    let deadline = started + Duration::from_secs(duration_s);
    let mut churners = JoinSet::new();
    for c in 0..channels {
        let (target, shared, names) = (ctx.target.clone(), shared.clone(), names.clone());
        churners.spawn(async move {
            if let Err(e) =
                churn(&target, &shared, &names[c], c, stable + c, period, deadline).await
            {
                shared.fleet.error(&e.context("churner"));
            }
        });
    }
    while churners.join_next().await.is_some() {}
    let churn_secs = started.elapsed().as_secs_f64();
    let joins = shared.joins.load(Ordering::Relaxed);
    let leaves = shared.leaves.load(Ordering::Relaxed);
    let subscribed = shared.fleet.subscribed.load(Ordering::Relaxed);
    let per_channel = subscribed as f64 / channels as f64;
    let expected = ((joins + leaves) as f64 * per_channel).round() as u64;
    let s = shared.clone();
    fleet::wait_for(
        expected,
        "member events",
        Duration::from_secs(5),
        move || s.added.load(Ordering::Relaxed) + s.removed.load(Ordering::Relaxed),
    )
    .await;
    let after = ctx.watch.snapshot();

    let added = shared.added.load(Ordering::Relaxed);
    let removed = shared.removed.load(Ordering::Relaxed);
    report.metric("stable members", subscribed as f64, "");
    report.metric(
        "member connect failures",
        shared.fleet.failed.load(Ordering::Relaxed) as f64,
        "",
    );
    report.metric("joins", joins as f64, "");
    report.metric("leaves", leaves as f64, "");
    report.metric("joins per second", joins as f64 / churn_secs, "/s");
    report.metric(
        "member_added expected",
        (joins as f64 * per_channel).round(),
        "",
    );
    report.metric("member_added received", added as f64, "");
    report.metric(
        "member_removed expected",
        (leaves as f64 * per_channel).round(),
        "",
    );
    report.metric("member_removed received", removed as f64, "");
    report.metric(
        "member events missing",
        expected.saturating_sub(added + removed) as f64,
        "",
    );
    report.metric(
        "disconnected during run",
        shared.fleet.dropped.load(Ordering::Relaxed) as f64,
        "",
    );
    let deltas = before.delta(&after);
    if let Some((cpu, _, rss)) = procstat::server_totals(&deltas) {
        report.metric("server CPU", cpu, "s");
        report.metric("server RSS at end", rss as f64 / 1048576.0, "MiB");
    }
    report.metric("tool CPU", procstat::tool_cpu(&deltas), "s");
    report
        .latency
        .push(LatencySummary::of("join", &shared.join_latency.merged()));
    report.latency.push(LatencySummary::of(
        "member_added",
        &shared.added_latency.merged(),
    ));
    report.processes = deltas;
    report.errors = shared.fleet.errors();

    fleet::shut_down(&stop_tx, &mut tasks).await;
    Ok(report)
}

async fn member(
    mut conn: Conn,
    mut stop: watch::Receiver<bool>,
    shared: &Shared,
    i: usize,
    channel: usize,
) {
    // One waiter registration for the whole loop: a fresh `changed()` per event would lock
    // the channel's shared waiter list twice per delivery, across every task.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            event = conn.next_event() => {
                let result = match event {
                    Ok(Event::MemberAdded) if shared.churning.load(Ordering::Relaxed) => {
                        let sent = shared.join_sent_us[channel].load(Ordering::Relaxed);
                        if sent > 0 {
                            shared.added_latency.record(i, now_us().saturating_sub(sent));
                        }
                        shared.added.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Ok(Event::MemberRemoved) if shared.churning.load(Ordering::Relaxed) => {
                        shared.removed.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Ok(other) => keepalive(&mut conn, other).await.map(|_| ()),
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    shared.fleet.dropped.fetch_add(1, Ordering::Relaxed);
                    shared.fleet.error(&e.context("member"));
                    let _ = (&mut stopped).await;
                    return;
                }
            }
            _ = &mut stopped => return,
        }
    }
}

/// Joins (fresh user id) and leaves `channel` once per `period` until `deadline`.
async fn churn(
    target: &crate::target::Target,
    shared: &Shared,
    channel: &str,
    c: usize,
    i: usize,
    period: Duration,
    deadline: Instant,
) -> Result<()> {
    let (mut conn, socket_id) = session::establish(target, 0, i).await?;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cycle = 0u64;
    while Instant::now() < deadline {
        ticker.tick().await;
        let user = format!("churn-{c}-{cycle}");
        let sent = now_us();
        shared.join_sent_us[c].store(sent, Ordering::Relaxed);
        session::subscribe(&mut conn, target, &socket_id, channel, Some(&user)).await?;
        shared.join_latency.record(i, now_us().saturating_sub(sent));
        shared.joins.fetch_add(1, Ordering::Relaxed);
        // Stay a member for half a period, answering pings, then leave.
        let stay = tokio::time::sleep(period / 2);
        tokio::pin!(stay);
        loop {
            tokio::select! {
                event = conn.next_event() => { keepalive(&mut conn, event?).await?; }
                _ = &mut stay => break,
            }
        }
        conn.send_text(pusher::unsubscribe(channel).as_bytes())
            .await?;
        shared.leaves.fetch_add(1, Ordering::Relaxed);
        cycle += 1;
    }
    if cycle == 0 {
        bail!("no churn cycle completed");
    }
    Ok(())
}
