//! Leases and the removal of dead nodes' state.
//!
//! Each node renews a lease every third of `lease` on Redis's clock. Every node looks for
//! expired leases at the same cadence; for each, the node that takes the reap lock checks the
//! lease is still expired, marks the node reaped, removes its sockets (the hub announces the
//! members whose last socket went), counts and connection counts using the node's index,
//! removes the lease only if it is still expired, and releases the lock.
//!
//! A crashed node's connections close at once, so its liveness topic (which only its
//! subscriber connection listens to) stops having a subscriber. One node at a time (the
//! prober) publishes to every node's liveness topic each second; a node that reaches no one
//! three times running is reaped then, instead of a lease later, and its lease removed so
//! that, should it be alive after all, it rejoins.
//!
//! A node that was alive all along (Redis stalled, its link froze) finds out at its next
//! renewal: the lease it renews had lapsed. It then waits for any reaper to finish, and
//! writes its whole state again; if it was reaped, its members are announced again to the
//! clients who were told they had left.

use std::sync::atomic::Ordering;
use std::time::Duration;

use fred::prelude::*;
use fred::types::{Expiration, SetOptions};
use herald_protocol::ChannelName;
use tokio::time::Instant;

use crate::bus::state::{now_ms, Shared};
use crate::scripts;

/// Renews the lease. Returns whether it had lapsed (expired or removed) before this renewal,
/// and measures the offset between Redis's clock and this node's.
pub(crate) async fn renew(shared: &Shared) -> Result<bool, Error> {
    let sent = now_ms();
    let (previous, redis_now): (i64, i64) = scripts::LEASE_RENEW
        .evalsha_with_reload(
            &shared.client,
            vec![shared.keys.nodes()],
            vec![
                shared.cfg.node_id.clone(),
                shared.cfg.lease.as_millis().to_string(),
            ],
        )
        .await?;
    let received = now_ms();
    let local_mid = (sent + received) / 2;
    shared
        .health
        .clock_offset_ms
        .store(redis_now - local_mid as i64, Ordering::Release);
    *shared.health.renewed_at.lock() = Instant::now();
    Ok(previous < 0 || previous < redis_now)
}

/// Waits while a lease for this node id is live. A previous life's lease lapses within one
/// lease; one that keeps being renewed belongs to another live node with the same id.
pub(crate) async fn wait_for_own_lease(shared: &Shared) -> Result<(), herald_hub::BusError> {
    let started = Instant::now();
    let mut warned = false;
    loop {
        let score: Option<f64> = shared
            .client
            .zscore(shared.keys.nodes(), shared.cfg.node_id.as_str())
            .await
            .map_err(crate::bus::state::unavailable)?;
        match score {
            Some(expiry) if expiry > shared.redis_now_ms() as f64 => {
                if started.elapsed() > shared.cfg.lease * 2 {
                    return Err(herald_hub::BusError::Backend(format!(
                        "node id {:?} is in use by another live node (its lease keeps being renewed); give every node its own server.node_id",
                        shared.cfg.node_id
                    )));
                }
                if !warned {
                    tracing::warn!(node = %shared.cfg.node_id, "a lease for this node id is live; waiting for it to lapse");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            _ => return Ok(()),
        }
    }
}

/// Measures the clock offset without touching the lease (before the first registration).
pub(crate) async fn measure_clock(shared: &Shared) -> Result<(), Error> {
    let sent = now_ms();
    let redis_now: i64 = scripts::NOW_MS
        .evalsha_with_reload(&shared.client, Vec::<String>::new(), Vec::<String>::new())
        .await?;
    let received = now_ms();
    shared.health.clock_offset_ms.store(
        redis_now - ((sent + received) / 2) as i64,
        Ordering::Release,
    );
    Ok(())
}

/// Whether `node`'s lease is (still) expired; `drop` also removes it then.
async fn lease_expired(shared: &Shared, node: &str, drop: bool) -> Result<bool, Error> {
    let expired: i64 = scripts::LEASE_EXPIRED
        .evalsha_with_reload(
            &shared.client,
            vec![shared.keys.nodes()],
            vec![node.to_owned(), if drop { "1" } else { "0" }.to_owned()],
        )
        .await?;
    Ok(expired == 1)
}

/// Finds nodes whose lease expired and reaps each one this node wins the lock for.
pub(crate) async fn reap_expired(shared: &Shared) {
    let expired: Vec<String> = match scripts::EXPIRED_NODES
        .evalsha_with_reload(
            &shared.client,
            vec![shared.keys.nodes()],
            Vec::<String>::new(),
        )
        .await
    {
        Ok(n) => n,
        Err(_) => return,
    };
    for node in expired {
        if node == shared.cfg.node_id {
            continue;
        }
        let lock_key = shared.keys.reap_lock(&node);
        let lock: Result<Option<String>, _> = shared
            .client
            .set(
                &lock_key,
                shared.cfg.node_id.as_str(),
                Some(Expiration::PX(shared.cfg.lease.as_millis() as i64 * 3)),
                Some(SetOptions::NX),
                false,
            )
            .await;
        if !matches!(lock, Ok(Some(_))) {
            continue;
        }
        // Checked under the lock: a node that renewed meanwhile is alive, and a node that
        // renews from now on waits for this lock before it writes its state again.
        if matches!(lease_expired(shared, &node, false).await, Ok(true)) {
            let _: Result<(), _> = shared
                .client
                .set(
                    shared.keys.reaped(&node),
                    now_ms().to_string(),
                    Some(Expiration::EX(24 * 3600)),
                    None,
                    false,
                )
                .await;
            if reap(shared, &node).await {
                let _ = lease_expired(shared, &node, true).await;
            }
        }
        let _: Result<i64, _> = shared.client.del(&lock_key).await;
    }
}

/// Removes a node's state: presence sockets (the hub announces members whose last socket it
/// held), subscription counts and connection counts. Safe to run twice. Returns whether every
/// part was removed (else the index is kept for the next try).
pub(crate) async fn reap(shared: &Shared, node: &str) -> bool {
    let index = shared.keys.node_index(node);
    let entries: Vec<String> = match shared.client.smembers(&index).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(node, error = %e, "reading a node's index failed");
            return false;
        }
    };
    let mut removed_members = 0usize;
    for entry in &entries {
        if let Some(app) = entry.strip_prefix("\tconnections\t") {
            let _: Result<i64, _> = shared
                .client
                .hdel(shared.keys.app_connections(app), node)
                .await;
            continue;
        }
        let Some((app, channel)) = entry.split_once('\t') else {
            continue;
        };
        let Ok(channel) = ChannelName::parse_internal(channel) else {
            continue;
        };
        let mut removed: Vec<String> = match scripts::REAP_CHANNEL
            .evalsha_with_reload(
                &shared.client,
                shared.keys.channel_keys(app, channel.as_str()),
                vec![node],
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(node, error = %e, "reaping a channel failed");
                return false; // keep the index; the next reaper tries again
            }
        };
        let vacated = !removed.is_empty() && removed.remove(0) == "1";
        removed_members += removed.len();
        if vacated {
            if let Some(sink) = shared.sink() {
                sink.channel_occupancy(app, &channel, false);
            }
        }
        shared.members_departed(app, &channel, removed);
    }
    let _: Result<i64, _> = shared.client.del(&index).await;
    if node != shared.cfg.node_id {
        tracing::info!(
            node,
            entries = entries.len(),
            removed_members,
            "removed the state of a dead node"
        );
    }
    true
}

/// After this node's lease lapsed: waits (at most one lease) for a node that may be reaping
/// it to finish, then takes the reaped mark. Returns whether this node was reaped.
pub(crate) async fn after_lapse(shared: &Shared) -> Result<bool, Error> {
    let lock_key = shared.keys.reap_lock(&shared.cfg.node_id);
    let deadline = Instant::now() + shared.cfg.lease;
    loop {
        let held: i64 = shared.client.exists(&lock_key).await?;
        if held == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mark: Option<String> = shared
        .client
        .getdel(shared.keys.reaped(&shared.cfg.node_id))
        .await?;
    Ok(mark.is_some())
}

/// How often the prober checks every node's liveness topic, and how many misses in a row
/// make a node dead.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_MISSES: u32 = 3;

/// Publishes an empty probe on a node's liveness topic; how many subscriber connections got
/// it.
async fn probe(shared: &Shared, node: &str) -> Result<i64, Error> {
    let topic = shared.keys.alive(node);
    if shared.sharded() {
        shared.client.spublish(topic, "").await
    } else {
        shared.client.publish(topic, "").await
    }
}

/// Takes or keeps the prober role (one node probes at a time).
async fn hold_prober(shared: &Shared) -> Result<bool, Error> {
    let held: i64 = scripts::HOLD
        .evalsha_with_reload(
            &shared.client,
            vec![shared.keys.prober()],
            vec![
                shared.cfg.node_id.clone(),
                (PROBE_EVERY.as_millis() * 3).to_string(),
            ],
        )
        .await?;
    Ok(held == 1)
}

/// On the prober: reaps nodes whose subscriber connection has been gone for
/// [`PROBE_MISSES`] probes in a row.
pub(crate) async fn crash_loop(shared: std::sync::Arc<Shared>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut misses: std::collections::HashMap<String, u32> = Default::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.cancel.cancelled() => return,
        }
        if !shared.is_ready() || !matches!(hold_prober(&shared).await, Ok(true)) {
            misses.clear();
            continue;
        }
        let nodes: Vec<String> = match shared
            .client
            .zrange(shared.keys.nodes(), 0, -1, None, false, None, false)
            .await
        {
            Ok(n) => n,
            Err(_) => continue,
        };
        misses.retain(|n, _| nodes.contains(n));
        for node in nodes {
            if node == shared.cfg.node_id {
                continue;
            }
            match probe(&shared, &node).await {
                Ok(0) => {
                    let n = misses.entry(node.clone()).or_insert(0);
                    *n += 1;
                    if *n >= PROBE_MISSES {
                        misses.remove(&node);
                        reap_crashed(&shared, &node).await;
                    }
                }
                Ok(_) => {
                    misses.remove(&node);
                }
                Err(_) => {}
            }
        }
    }
}

/// Reaps a node whose subscriber connection is gone, under the reap lock, after one more
/// probe; removes its lease too, so that a node that was alive after all rejoins.
async fn reap_crashed(shared: &Shared, node: &str) {
    let lock_key = shared.keys.reap_lock(node);
    let lock: Result<Option<String>, _> = shared
        .client
        .set(
            &lock_key,
            shared.cfg.node_id.as_str(),
            Some(Expiration::PX(shared.cfg.lease.as_millis() as i64 * 3)),
            Some(SetOptions::NX),
            false,
        )
        .await;
    if !matches!(lock, Ok(Some(_))) {
        return;
    }
    if matches!(probe(shared, node).await, Ok(0)) {
        tracing::warn!(
            node,
            "a node's connections to Redis are gone; removing its state"
        );
        let _: Result<(), _> = shared
            .client
            .set(
                shared.keys.reaped(node),
                now_ms().to_string(),
                Some(Expiration::EX(24 * 3600)),
                None,
                false,
            )
            .await;
        if reap(shared, node).await {
            let _: Result<i64, _> = shared.client.zrem(shared.keys.nodes(), node).await;
        }
    }
    let _: Result<i64, _> = shared.client.del(&lock_key).await;
}

/// Renews the lease every third of it, notices a lapse (then asks for a rejoin), and reaps
/// dead nodes.
pub(crate) async fn lease_loop(shared: std::sync::Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.cfg.lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.cancel.cancelled() => return,
        }
        let stale = shared.health.renewed_at.lock().elapsed() > shared.cfg.lease;
        if stale && !shared.health.lease_lapsed.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                "this node's lease was not renewed in time; other nodes may take it for dead"
            );
            shared.update_ready();
        }
        if !shared.client.is_connected() {
            continue;
        }
        match tokio::time::timeout(shared.cfg.command_timeout, renew(&shared)).await {
            Ok(Ok(lapsed)) => {
                if lapsed || shared.health.lease_lapsed.load(Ordering::Acquire) {
                    tracing::warn!("this node's lease had lapsed; rejoining the cluster");
                    // Not ready until the rejoin has written the state again.
                    shared.health.resyncing.store(true, Ordering::Release);
                    shared.recover.lease_lapsed.store(true, Ordering::Release);
                    shared.recover.notify.notify_one();
                }
                shared.health.lease_lapsed.store(false, Ordering::Release);
                shared.update_ready();
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "renewing the node lease failed"),
            Err(_) => tracing::warn!("renewing the node lease timed out"),
        }
        reap_expired(&shared).await;
    }
}
