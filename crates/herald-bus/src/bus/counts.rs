//! Subscription and connection counts: written per node, batched. A channel's count is marked
//! dirty on every change and its latest value written every flush interval (one script per
//! changed channel however many clients came and went); a channel's first local subscriber
//! flushes at once and waits for it, so every node's API sees the channel occupied before the
//! client is told it subscribed. Counts are written as absolute values, so a failed or lost
//! write is mended by the next one.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use herald_hub::BusError;
use herald_protocol::ChannelName;
use tokio::sync::watch;

use crate::bus::state::{ChannelKey, Shared};
use crate::bus::topics;
use crate::keys::{index_channel, index_connections};
use crate::scripts;

/// Records the node's local subscriber count of a channel for the next flush; a first local
/// subscriber flushes at once.
pub(crate) fn set_interest(
    shared: &Arc<Shared>,
    app_id: &str,
    channel: &ChannelName,
    local: usize,
) {
    let key: ChannelKey = (Arc::from(app_id), channel.clone());
    let first = if local == 0 {
        shared.local.counts.remove(&key);
        false
    } else {
        shared.local.counts.insert(key.clone(), local).is_none()
    };
    shared.local.dirty_counts.lock().insert(key.clone());
    if first {
        shared
            .local
            .first_waiters
            .lock()
            .entry(key)
            .or_insert_with(|| watch::channel(false).0);
        shared.local.flush_now.notify_one();
    }
    topics::set_interest(shared, shared.keys.topic(app_id, channel), local);
}

/// Waits until a channel's first local subscriber is counted in Redis (if it is pending).
pub(crate) async fn await_counted(
    shared: &Shared,
    app_id: &str,
    channel: &ChannelName,
    wait: Duration,
) -> Result<(), BusError> {
    let key: ChannelKey = (Arc::from(app_id), channel.clone());
    let pending = shared
        .local
        .first_waiters
        .lock()
        .get(&key)
        .map(watch::Sender::subscribe);
    let Some(mut rx) = pending else {
        return Ok(());
    };
    let counted = matches!(
        tokio::time::timeout(wait, rx.wait_for(|done| *done)).await,
        Ok(Ok(_))
    );
    if counted {
        Ok(())
    } else {
        Err(BusError::Unavailable(
            "the cluster did not record the subscription in time".into(),
        ))
    }
}

/// Writes the dirty subscription counts, and tells the hub of channels this node's change
/// filled or emptied cluster-wide (occupancy webhooks).
pub(crate) async fn flush(shared: &Shared) -> Result<(), Error> {
    let dirty: Vec<ChannelKey> = shared.local.dirty_counts.lock().drain().collect();
    if dirty.is_empty() {
        return Ok(());
    }
    let node = shared.cfg.node_id.clone();
    let index = shared.keys.node_index(&node);
    // One script per changed channel, all in flight at once on the multiplexed connection.
    let mut tasks = tokio::task::JoinSet::new();
    for (app, channel) in dirty.iter().cloned() {
        let count = shared
            .local
            .counts
            .get(&(app.clone(), channel.clone()))
            .map(|c| *c)
            .unwrap_or(0);
        let holds_members = shared
            .local
            .member_counts
            .contains_key(&(app.clone(), channel.clone()));
        let client = shared.client.clone();
        let (subs, app_channels, index, node) = (
            shared.keys.subs(&app, channel.as_str()),
            shared.keys.app_channels(&app),
            index.clone(),
            node.clone(),
        );
        tasks.spawn(async move {
            let entry = index_channel(&app, channel.as_str());
            // The index first: a node that dies right after still has this state reaped.
            if count > 0 {
                let _: i64 = client.sadd(&index, &entry).await?;
            }
            let totals: (i64, i64) = scripts::SUBS_SET
                .evalsha_with_reload(&client, vec![subs], vec![node, count.to_string()])
                .await?;
            if count > 0 {
                let _: i64 = client.sadd(app_channels, channel.as_str()).await?;
            } else if !holds_members {
                let _: i64 = client.srem(index, entry).await?;
            }
            Ok::<_, Error>((app, channel, totals))
        });
    }
    let mut failed = None;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok((app, channel, (before, after)))) => {
                let key = (app.clone(), channel.clone());
                if let Some(tx) = shared.local.first_waiters.lock().remove(&key) {
                    let _ = tx.send(true);
                }
                let Some(sink) = shared.sink() else {
                    continue;
                };
                if before == 0 && after > 0 {
                    sink.channel_occupancy(&app, &channel, true);
                } else if before > 0 && after == 0 {
                    sink.channel_occupancy(&app, &channel, false);
                }
            }
            Ok(Err(e)) => failed = Some(e),
            Err(e) => failed = Some(Error::new(ErrorKind::Unknown, e.to_string())),
        }
    }
    if let Some(e) = failed {
        // Try again on the next flush (the writes are absolute, so repeating is harmless).
        shared.local.dirty_counts.lock().extend(dirty);
        return Err(e);
    }
    Ok(())
}

/// Writes the dirty per-app connection counts (absolute values).
pub(crate) async fn flush_connections(shared: &Shared) -> Result<(), Error> {
    let dirty: Vec<Arc<str>> = shared.local.dirty_connections.lock().drain().collect();
    let index = shared.keys.node_index(&shared.cfg.node_id);
    for (i, app) in dirty.iter().enumerate() {
        let key = shared.keys.app_connections(app);
        let node = shared.cfg.node_id.as_str();
        let written: Result<(), Error> = async {
            // No admission is between its script and its local count while this is held.
            let _gate = shared.local.connections_gate.write().await;
            let n = shared.local.connections.get(app).map(|n| *n).unwrap_or(0);
            if n > 0 {
                let _: i64 = shared.client.sadd(&index, index_connections(app)).await?;
                let _: () = shared.client.hset(key, (node, n as i64)).await?;
            } else {
                let _: i64 = shared.client.hdel(key, node).await?;
                let _: i64 = shared.client.srem(&index, index_connections(app)).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = written {
            shared
                .local
                .dirty_connections
                .lock()
                .extend(dirty[i..].iter().cloned());
            return Err(e);
        }
    }
    Ok(())
}

/// Marks an app's connection count for rewriting unless disarmed: an admission that failed or
/// was cancelled after its script was sent may have been counted in Redis.
struct Unsettled<'a> {
    shared: &'a Shared,
    app_id: &'a str,
    armed: bool,
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared
                .local
                .dirty_connections
                .lock()
                .insert(Arc::from(self.app_id));
        }
    }
}

/// Counts a new connection against the app's cluster-wide limit.
pub(crate) async fn connection_opened(
    shared: &Shared,
    app_id: &str,
    limit: u64,
) -> Result<bool, BusError> {
    if limit == 0 {
        return Ok(true);
    }
    let _gate = shared.local.connections_gate.read().await;
    if shared.local.connections.get(app_id).is_none_or(|n| *n == 0) {
        // The index first: a node that dies right after still has this count reaped.
        let index = shared.keys.node_index(&shared.cfg.node_id);
        let _: i64 = shared
            .client
            .sadd(index, index_connections(app_id))
            .await
            .map_err(crate::bus::state::unavailable)?;
    }
    let mut unsettled = Unsettled {
        shared,
        app_id,
        armed: true,
    };
    let counted: i64 = scripts::CONNECTION_OPEN
        .evalsha_with_reload(
            &shared.client,
            vec![shared.keys.app_connections(app_id)],
            vec![shared.cfg.node_id.clone(), limit.to_string()],
        )
        .await
        .map_err(crate::bus::state::unavailable)?;
    unsettled.armed = false;
    if counted == 1 {
        *shared
            .local
            .connections
            .entry(Arc::from(app_id))
            .or_insert(0) += 1;
    }
    Ok(counted == 1)
}

/// A connection counted by [`connection_opened`] closed.
pub(crate) fn connection_closed(shared: &Shared, app_id: &str) {
    let counted = match shared.local.connections.get_mut(app_id) {
        Some(mut n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    };
    if counted {
        shared
            .local
            .dirty_connections
            .lock()
            .insert(Arc::from(app_id));
    }
}
