//! `fanout`, `burst` and `cluster`: subscribers (spread over one or more nodes and channels)
//! receive M publications sent through the HTTP API of the first node, at a fixed rate or as fast
//! as possible, optionally in `batch_events` requests. Latency is publish→delivery, measured with
//! the send time carried in the event data.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api::Publisher;
use crate::fleet::{self, now_us, Ctx, Fleet};
use crate::procstat;
use crate::pusher::{self, Event};
use crate::report::Report;
use crate::session::{self, keepalive};
use crate::stats::{Latency, LatencySummary};
use crate::target::Target;
use crate::ws::Conn;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub connections: usize,
    pub channels: usize,
    pub messages: u64,
    /// Messages per second over all publishers; 0 means as fast as possible.
    pub rate: f64,
    pub publishers: usize,
    /// Publishers start evenly apart within the interval (else all at once).
    pub spread: bool,
    pub batch: usize,
    pub payload_bytes: usize,
    pub drain_timeout_s: u64,
    pub max_publish_s: u64,
}

struct Shared {
    fleet: Fleet,
    /// One histogram per node.
    latency: Vec<Latency>,
    received: AtomicU64,
    violations: AtomicU64,
    last_delivery_us: AtomicU64,
    subscribers_on: Vec<AtomicUsize>,
    published_on: Vec<AtomicU64>,
    published: AtomicU64,
    publish_failed: AtomicU64,
}

pub async fn run(ctx: &Ctx, scenario: &str, plan: Plan) -> Result<Report> {
    let nodes = ctx.target.endpoints.len();
    let channels = plan.channels.max(1);
    let publishers = plan.publishers.max(1);
    let mut report = Report::new(scenario, &ctx.label, serde_json::to_value(&plan)?);
    let run_id = now_us() % 1_000_000;
    let names: Arc<Vec<String>> = Arc::new(
        (0..channels)
            .map(|c| format!("bench-{run_id}-{c}"))
            .collect(),
    );
    let shared = Arc::new(Shared {
        fleet: Fleet::default(),
        latency: (0..nodes).map(|_| Latency::default()).collect(),
        received: AtomicU64::new(0),
        violations: AtomicU64::new(0),
        last_delivery_us: AtomicU64::new(0),
        subscribers_on: (0..channels).map(|_| AtomicUsize::new(0)).collect(),
        published_on: (0..channels).map(|_| AtomicU64::new(0)).collect(),
        published: AtomicU64::new(0),
        publish_failed: AtomicU64::new(0),
    });

    // Subscribers.
    let limit = fleet::handshake_limit(ctx.concurrency);
    let (stop_tx, stop_rx) = fleet::stop_signal();
    let mut tasks = JoinSet::new();
    for i in 0..plan.connections {
        let (target, shared, limit, stop, names) = (
            ctx.target.clone(),
            shared.clone(),
            limit.clone(),
            stop_rx.clone(),
            names.clone(),
        );
        tasks.spawn(async move {
            let node = i % nodes;
            let channel = i % channels;
            let result = async {
                let _permit = limit.acquire().await?;
                let (mut conn, socket_id) = session::establish(&target, node, i).await?;
                session::subscribe(&mut conn, &target, &socket_id, &names[channel], None).await?;
                Ok::<_, anyhow::Error>(conn)
            }
            .await;
            match result {
                Ok(conn) => {
                    shared.subscribers_on[channel].fetch_add(1, Ordering::Relaxed);
                    shared.fleet.subscribed.fetch_add(1, Ordering::Relaxed);
                    receive(conn, stop, &shared, i, node, publishers).await;
                }
                Err(e) => {
                    shared.fleet.failed.fetch_add(1, Ordering::Relaxed);
                    shared.fleet.error(&e);
                }
            }
        });
    }
    let s = shared.clone();
    fleet::wait_for(
        plan.connections as u64,
        "subscribing",
        ctx.ramp_timeout,
        move || {
            (s.fleet.subscribed.load(Ordering::Relaxed) + s.fleet.failed.load(Ordering::Relaxed))
                as u64
        },
    )
    .await;
    // Let the last subscriptions settle (on a cluster, interest has to reach the bus).
    tokio::time::sleep(Duration::from_millis(if nodes > 1 { 1000 } else { 200 })).await;

    // Publishers.
    let before = ctx.watch.snapshot();
    let publish_start_us = now_us();
    let started = Instant::now();
    let mut pubs = JoinSet::new();
    for w in 0..publishers {
        let (target, shared, names, plan) = (
            ctx.target.clone(),
            shared.clone(),
            names.clone(),
            plan.clone(),
        );
        pubs.spawn(async move {
            if let Err(e) = publish(w, &target, &shared, &names, &plan).await {
                shared.fleet.error(&e.context("publisher"));
            }
        });
    }
    let s = shared.clone();
    let publish_bar = fleet::bar(plan.messages, "publishing");
    while !pubs.is_empty() {
        tokio::select! {
            _ = pubs.join_next() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                publish_bar.set_position(s.published.load(Ordering::Relaxed) + s.publish_failed.load(Ordering::Relaxed));
            }
        }
    }
    publish_bar.finish_and_clear();
    let publish_secs = started.elapsed().as_secs_f64();
    let expected: u64 = (0..channels)
        .map(|c| {
            shared.published_on[c].load(Ordering::Relaxed)
                * shared.subscribers_on[c].load(Ordering::Relaxed) as u64
        })
        .sum();
    let s = shared.clone();
    fleet::wait_for(
        expected,
        "delivering",
        Duration::from_secs(plan.drain_timeout_s),
        move || s.received.load(Ordering::Relaxed),
    )
    .await;
    let after = ctx.watch.snapshot();

    let received = shared.received.load(Ordering::Relaxed);
    let published = shared.published.load(Ordering::Relaxed);
    let last = shared.last_delivery_us.load(Ordering::Relaxed);
    let delivery_secs = last.saturating_sub(publish_start_us) as f64 / 1e6;
    report.metric(
        "subscribers",
        shared.fleet.subscribed.load(Ordering::Relaxed) as f64,
        "",
    );
    report.metric(
        "subscribe failures",
        shared.fleet.failed.load(Ordering::Relaxed) as f64,
        "",
    );
    report.metric("messages published", published as f64, "");
    report.metric(
        "publish failures",
        shared.publish_failed.load(Ordering::Relaxed) as f64,
        "",
    );
    report.metric("publish rate", published as f64 / publish_secs, "msg/s");
    report.metric("deliveries expected", expected as f64, "");
    report.metric("deliveries received", received as f64, "");
    report.metric("lost", expected.saturating_sub(received) as f64, "");
    report.metric(
        "order violations",
        shared.violations.load(Ordering::Relaxed) as f64,
        "",
    );
    report.metric(
        "disconnected during run",
        shared.fleet.dropped.load(Ordering::Relaxed) as f64,
        "",
    );
    report.metric("first publish to last delivery", delivery_secs, "s");
    report.metric(
        "deliveries per second",
        received as f64 / delivery_secs.max(1e-6),
        "/s",
    );
    let deltas = before.delta(&after);
    if let Some((cpu, _, rss)) = procstat::server_totals(&deltas) {
        report.metric("server CPU", cpu, "s");
        report.metric(
            "server CPU per 1M deliveries",
            cpu * 1e6 / received.max(1) as f64,
            "s",
        );
        report.metric("server RSS at end", rss as f64 / 1048576.0, "MiB");
    }
    let tool = procstat::tool_cpu(&deltas);
    report.metric("tool CPU", tool, "s");
    report.metric(
        "tool CPU per 1M deliveries",
        tool * 1e6 / received.max(1) as f64,
        "s",
    );

    let mut all = shared.latency[0].merged();
    for l in &shared.latency[1..] {
        let _ = all.add(l.merged());
    }
    report
        .latency
        .push(LatencySummary::of("publish→deliver", &all));
    if nodes > 1 {
        let mut cross = shared.latency[1].merged();
        for l in &shared.latency[2..] {
            let _ = cross.add(l.merged());
        }
        report
            .latency
            .push(LatencySummary::of("same node", &shared.latency[0].merged()));
        report
            .latency
            .push(LatencySummary::of("cross-node", &cross));
    }
    report.processes = deltas;
    report.errors = shared.fleet.errors();

    fleet::shut_down(&stop_tx, &mut tasks).await;
    Ok(report)
}

async fn receive(
    mut conn: Conn,
    mut stop: watch::Receiver<bool>,
    shared: &Shared,
    i: usize,
    node: usize,
    publishers: usize,
) {
    // Order is only guaranteed per publisher connection, so check it per publisher.
    let mut last_seq = vec![u64::MAX; publishers];
    // One waiter registration for the whole loop: a fresh `changed()` per event would lock
    // the channel's shared waiter list twice per delivery, across every task.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            event = conn.next_event() => {
                let result = match event {
                    Ok(Event::Data { sent_us, seq }) => {
                        let now = now_us();
                        shared.latency[node].record(i, now.saturating_sub(sent_us));
                        shared.received.fetch_add(1, Ordering::Relaxed);
                        shared.last_delivery_us.fetch_max(now, Ordering::Relaxed);
                        let w = (seq % publishers as u64) as usize;
                        if last_seq[w] != u64::MAX && seq <= last_seq[w] {
                            shared.violations.fetch_add(1, Ordering::Relaxed);
                        }
                        last_seq[w] = seq;
                        Ok(())
                    }
                    Ok(other) => keepalive(&mut conn, other).await.map(|_| ()),
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    shared.fleet.dropped.fetch_add(1, Ordering::Relaxed);
                    shared.fleet.error(&e.context("while receiving"));
                    let _ = (&mut stopped).await;
                    return;
                }
            }
            _ = &mut stopped => return,
        }
    }
}

/// Publisher `w` sends messages w, w+P, w+2P, … below `plan.messages`; message `seq` goes to
/// channel `seq % channels`.
async fn publish(
    w: usize,
    target: &Target,
    shared: &Shared,
    names: &[String],
    plan: &Plan,
) -> Result<()> {
    let publishers = plan.publishers.max(1) as u64;
    let batch = plan.batch.max(1);
    let mut publisher = Publisher::connect(target.api[0], target.creds.clone()).await?;
    let per_request = (plan.rate > 0.0)
        .then(|| Duration::from_secs_f64(batch as f64 * publishers as f64 / plan.rate));
    if let (true, Some(every)) = (plan.spread, per_request) {
        tokio::time::sleep(every.mul_f64(w as f64 / publishers as f64)).await;
    }
    let mut ticker = per_request.map(|every| {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let deadline = Instant::now() + Duration::from_secs(plan.max_publish_s);
    let mut next = w as u64;
    let mut items: Vec<(String, String)> = Vec::with_capacity(batch);
    let mut seqs: Vec<u64> = Vec::with_capacity(batch);
    while next < plan.messages && Instant::now() < deadline {
        seqs.clear();
        while seqs.len() < batch && next < plan.messages {
            seqs.push(next);
            next += publishers;
        }
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let sent = now_us();
        let result = if batch == 1 {
            let seq = seqs[0];
            let ch = &names[(seq % names.len() as u64) as usize];
            publisher
                .trigger(ch, &pusher::payload(sent, seq, plan.payload_bytes))
                .await
        } else {
            items.clear();
            for &seq in &seqs {
                let ch = names[(seq % names.len() as u64) as usize].clone();
                items.push((ch, pusher::payload(sent, seq, plan.payload_bytes)));
            }
            publisher.trigger_batch(&items).await
        };
        match result {
            Ok(()) => {
                for &seq in &seqs {
                    shared.published_on[(seq % names.len() as u64) as usize]
                        .fetch_add(1, Ordering::Relaxed);
                }
                shared
                    .published
                    .fetch_add(seqs.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                shared
                    .publish_failed
                    .fetch_add(seqs.len() as u64, Ordering::Relaxed);
                shared.fleet.error(&e);
                if publisher_broken(&e) {
                    publisher = Publisher::connect(target.api[0], target.creds.clone()).await?;
                }
            }
        }
    }
    Ok(())
}

fn publisher_broken(e: &anyhow::Error) -> bool {
    !format!("{e}").starts_with("HTTP ")
}
