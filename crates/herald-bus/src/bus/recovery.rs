//! Staying correct through Redis trouble.
//!
//! - A stalled Redis keeps its TCP connections up, so both connections are pinged; a ping
//!   unanswered in time makes the node not ready at once (and fred closes a connection whose
//!   commands stay unanswered, which reconnects it).
//! - After any reconnect, Redis Cluster slot move or lease lapse, one recovery round runs: not
//!   ready, every topic subscribed again, the node's whole state written again from its own
//!   record (Redis may have restarted empty, or another node may have taken this one for dead
//!   and removed it), a settle period so the other nodes can do the same, then ready. A
//!   notice that arrives during the round gets a round of its own.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use herald_protocol::presence::Member;
use herald_protocol::{ChannelName, SocketId};

use crate::bus::state::{ChannelKey, Shared};
use crate::bus::{counts, lease, presence, topics};

/// Pings both connections every `ping_interval`; a ping unanswered within `ping_timeout`
/// makes the node not ready until the next one that is answered.
pub(crate) async fn ping_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.cfg.ping_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.cancel.cancelled() => return,
        }
        if !shared.client.is_connected() || !shared.subscriber.is_connected() {
            continue; // the reconnect handles it
        }
        let wait = shared.cfg.ping_timeout;
        let (cmd, sub) = tokio::join!(
            tokio::time::timeout(wait, shared.client.ping::<()>(None)),
            tokio::time::timeout(wait, shared.subscriber.ping::<()>(None)),
        );
        let ok = matches!(cmd, Ok(Ok(()))) && matches!(sub, Ok(Ok(())));
        let was_failing = shared.health.ping_failed.swap(!ok, Ordering::AcqRel);
        if !ok {
            shared.gate.trouble();
            if !was_failing {
                metrics::counter!("herald_bus_stalls_total").increment(1);
            }
        }
        if ok == was_failing {
            shared.update_ready();
        }
    }
}

/// What woke the recovery loop.
enum Notice {
    Reconnect,
    Recover,
}

/// Discards pending reconnect notices; how many there were (lagged ones included).
fn drain<T: Clone>(rx: &mut tokio::sync::broadcast::Receiver<T>) -> u64 {
    use tokio::sync::broadcast::error::TryRecvError;
    let mut n = 0;
    loop {
        match rx.try_recv() {
            Ok(_) => n += 1,
            Err(TryRecvError::Lagged(lost)) => n += lost,
            Err(TryRecvError::Empty | TryRecvError::Closed) => return n,
        }
    }
}

/// Runs a recovery round after every reconnect, slot move or lease lapse.
pub(crate) async fn recovery_loop(shared: Arc<Shared>) {
    let mut sub_rx = shared.subscriber.reconnect_rx();
    let mut cmd_rx = shared.client.reconnect_rx();
    let mut check = tokio::time::interval(Duration::from_millis(100));
    loop {
        use tokio::sync::broadcast::error::RecvError;
        let notice = tokio::select! {
            r = sub_rx.recv() => Some(r.map(|_| Notice::Reconnect)),
            r = cmd_rx.recv() => Some(r.map(|_| Notice::Reconnect)),
            _ = shared.recover.notify.notified() => Some(Ok(Notice::Recover)),
            _ = check.tick() => { shared.update_ready(); None }
            _ = shared.cancel.cancelled() => return,
        };
        match notice {
            None => continue,
            // The clients are gone: the bus is shutting down.
            Some(Err(RecvError::Closed)) => return,
            Some(Ok(Notice::Reconnect)) => {
                metrics::counter!("herald_bus_reconnects_total").increment(1)
            }
            Some(_) => {}
        }
        shared.health.resyncing.store(true, Ordering::Release);
        shared.update_ready();
        let mut returned = Vec::new();
        let mut departed = Vec::new();
        loop {
            let drained = drain(&mut sub_rx) + drain(&mut cmd_rx);
            metrics::counter!("herald_bus_reconnects_total").increment(drained);
            shared.recover.slots_moved.store(false, Ordering::Release);
            let lapsed = shared.recover.lease_lapsed.swap(false, Ordering::AcqRel);
            shared.gate.begin_recovery();
            let round = async {
                let reaped = if lapsed {
                    lease::after_lapse(&shared).await?
                } else {
                    false
                };
                topics::resubscribe_all(&shared).await?;
                resync(&shared, reaped).await
            };
            match round.await {
                Ok(found) => {
                    departed.extend(found.departed);
                    returned.extend(found.returned);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "restoring bus state failed; retrying");
                    if lapsed {
                        shared.recover.lease_lapsed.store(true, Ordering::Release);
                    }
                    tokio::time::sleep(shared.cfg.reconnect_delay).await;
                    continue;
                }
            }
            tokio::time::sleep(shared.cfg.settle).await;
            if sub_rx.is_empty()
                && cmd_rx.is_empty()
                && !shared.recover.slots_moved.load(Ordering::Acquire)
                && !shared.recover.lease_lapsed.load(Ordering::Acquire)
            {
                break;
            }
        }
        shared.health.resyncing.store(false, Ordering::Release);
        shared.update_ready();
        // Announced once the bus publishes again.
        for (app, channel, users) in departed {
            shared.members_departed(&app, &channel, users);
        }
        if let Some(sink) = shared.sink() {
            for (app, channel, members) in returned {
                sink.members_returned(&app, &channel, members);
            }
            // Whatever was published while the subscriptions were down is in the streams.
            sink.subscriptions_restored();
        }
    }
}

/// Announcements a resync found.
#[derive(Default)]
pub(crate) struct Resynced {
    /// Members whose last socket was gone but still in Redis (a leave that failed).
    pub departed: Vec<(Arc<str>, ChannelName, Vec<String>)>,
    /// This node's members that others had been told were gone (only when it was reaped).
    pub returned: Vec<(Arc<str>, ChannelName, Vec<Member>)>,
}

/// Writes this node's state again from its own record: lease, subscription counts, presence
/// memberships (exactly the node's, per channel), connection counts and the node's index.
pub(crate) async fn resync(shared: &Shared, reaped: bool) -> Result<Resynced, Error> {
    lease::renew(shared).await?;
    let keys: Vec<ChannelKey> = shared
        .local
        .counts
        .iter()
        .map(|e| e.key().clone())
        .collect();
    shared.local.dirty_counts.lock().extend(keys);
    counts::flush(shared).await?;

    // Every channel where this node has or had memberships: its own record, the channels a
    // failed operation marked, and what Redis's index still lists.
    let mut by_channel: HashMap<ChannelKey, Vec<(SocketId, Member)>> = HashMap::new();
    for e in shared.local.members.iter() {
        let ((key, socket), member) = (e.key().clone(), e.value().clone());
        by_channel.entry(key).or_default().push((socket, member));
    }
    for key in shared.local.dirty_presence.lock().drain() {
        by_channel.entry(key).or_default();
    }
    let index: Vec<String> = shared
        .client
        .smembers(shared.keys.node_index(&shared.cfg.node_id))
        .await?;
    for entry in index {
        if let Some((app, channel)) = entry.split_once('\t') {
            if let Ok(channel) = ChannelName::parse_internal(channel) {
                by_channel.entry((Arc::from(app), channel)).or_default();
            }
        }
    }
    let mut found = Resynced::default();
    for (key, mine) in by_channel {
        let (removed, added) = match presence::sync_channel(shared, &key, &mine).await {
            Ok(r) => r,
            Err(e) => {
                shared.local.dirty_presence.lock().insert(key);
                return Err(e);
            }
        };
        if !removed.is_empty() {
            found.departed.push((key.0.clone(), key.1.clone(), removed));
        }
        if reaped && !added.is_empty() {
            found.returned.push((key.0, key.1, added));
        }
    }
    let apps: Vec<Arc<str>> = shared
        .local
        .connections
        .iter()
        .map(|e| e.key().clone())
        .collect();
    shared.local.dirty_connections.lock().extend(apps);
    counts::flush_connections(shared).await?;
    Ok(found)
}

/// Writes counts, connection counts and uncertain memberships, and drops idle topics, every
/// flush interval (at once when a first subscriber waits).
pub(crate) async fn flush_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.cfg.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.local.flush_now.notified() => {}
            _ = shared.cancel.cancelled() => return,
        }
        if !shared.client.is_connected() {
            continue;
        }
        if let Err(e) = counts::flush(&shared).await {
            tracing::debug!(error = %e, "flushing subscription counts failed; retrying");
        }
        if let Err(e) = counts::flush_connections(&shared).await {
            tracing::debug!(error = %e, "flushing connection counts failed; retrying");
        }
        if shared.is_ready() {
            if let Err(e) = presence::sync_dirty(&shared).await {
                tracing::debug!(error = %e, "writing uncertain memberships failed; retrying");
            }
        }
        topics::drop_idle(&shared).await;
    }
}
