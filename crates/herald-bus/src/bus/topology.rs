//! Redis Cluster: a failover or a slot migration moves slots to another master while every
//! connection stays up, and Redis drops the sharded subscriptions of the moved slots (the
//! `SUNSUBSCRIBE` it pushes is swallowed by fred). So the slot map is read every
//! `topology_check` with `CLUSTER SLOTS` on a connection the client already has, and the
//! command client's own map changes (after a `MOVED`) are watched too; when the masters change,
//! publishes wait a settle period and every topic is subscribed again on the new masters.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use fred::prelude::*;
use fred::types::config::Server;

use crate::bus::state::{Shared, SlotOwners};

/// Redis Cluster: who serves which slots.
pub(crate) fn slot_owners(routing: Option<fred::types::cluster::ClusterRouting>) -> SlotOwners {
    routing
        .map(|r| {
            r.slots()
                .iter()
                .map(|s| (s.start, s.end, s.primary.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The masters in a `CLUSTER SLOTS` answer: (first slot, last slot, host, port).
fn masters_of(v: &Value) -> Vec<(i64, i64, String, i64)> {
    let Value::Array(ranges) = v else {
        return Vec::new();
    };
    let mut out: Vec<(i64, i64, String, i64)> = ranges
        .iter()
        .filter_map(|r| {
            let Value::Array(r) = r else { return None };
            let Value::Array(master) = r.get(2)? else {
                return None;
            };
            Some((
                r.first()?.as_i64()?,
                r.get(1)?.as_i64()?,
                master.first()?.as_string()?,
                master.get(1)?.as_i64()?,
            ))
        })
        .collect();
    out.sort();
    out
}

/// The master serving `slot` in a slot map.
pub(crate) fn owner_of(owners: &SlotOwners, slot: u16) -> Option<&Server> {
    owners
        .iter()
        .find(|(start, end, _)| (*start..=*end).contains(&slot))
        .map(|(_, _, server)| server)
}

/// Redis Cluster: a failover or a slot migration moves slots to another master while every
/// connection stays up, and Redis drops the sharded subscriptions of the moved slots (the
/// `SUNSUBSCRIBE` it pushes is swallowed by fred). So the subscriber's slot map is refreshed every
/// `topology_check`, and the command client's changes (after a `MOVED`) are watched too; when
/// the owners change, publishes wait a settle period and every topic is subscribed again.
pub(crate) async fn topology_loop(inner: Arc<Shared>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut sub_changes = inner.subscriber.cluster_change_rx();
    let mut cmd_changes = inner.client.cluster_change_rx();
    let mut tick = tokio::time::interval(inner.cfg.topology_check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The subscriber's map as last handled; the command client's is `handled_owners`.
    let mut known = slot_owners(inner.subscriber.cached_cluster_state());
    *inner.gate.handled_owners.write() = slot_owners(inner.client.cached_cluster_state());
    let mut served = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // CLUSTER SLOTS on a connection the client already has; fred's own refresh
                // (which opens a connection) only when the answer changed.
                let now = match inner.client.cluster_slots::<Value>().await {
                    Ok(v) => masters_of(&v),
                    Err(e) => {
                        tracing::debug!(error = %e, "CLUSTER SLOTS failed");
                        continue;
                    }
                };
                if now.is_empty() || now == served {
                    continue;
                }
                let first = served.is_empty();
                served = now;
                if first {
                    continue;
                }
                for result in [inner.subscriber.sync_cluster().await, inner.client.sync_cluster().await] {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "refreshing the Redis Cluster slot map failed");
                    }
                }
            }
            r = sub_changes.recv() => if matches!(r, Err(RecvError::Closed)) { return },
            r = cmd_changes.recv() => if matches!(r, Err(RecvError::Closed)) { return },
            _ = inner.cancel.cancelled() => return,
        }
        let (sub_now, cmd_now) = (
            slot_owners(inner.subscriber.cached_cluster_state()),
            slot_owners(inner.client.cached_cluster_state()),
        );
        // An empty map is a client between connections; the reconnect handles that.
        if sub_now.is_empty()
            || cmd_now.is_empty()
            || (sub_now == known && cmd_now == *inner.gate.handled_owners.read())
        {
            continue;
        }
        tracing::info!("Redis Cluster slots changed hands; subscribing every topic again");
        metrics::counter!("herald_bus_topology_changes_total").increment(1);
        inner.gate.begin_recovery();
        *inner.gate.handled_owners.write() = cmd_now;
        known = sub_now;
        inner.recover.slots_moved.store(true, Ordering::Release);
        inner.recover.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: i64, end: i64, host: &str, port: i64, replica_port: Option<i64>) -> Value {
        let mut r = vec![
            Value::Integer(start),
            Value::Integer(end),
            Value::Array(vec![
                Value::String(host.into()),
                Value::Integer(port),
                Value::String("id".into()),
            ]),
        ];
        if let Some(p) = replica_port {
            r.push(Value::Array(vec![
                Value::String(host.into()),
                Value::Integer(p),
            ]));
        }
        Value::Array(r)
    }

    #[test]
    fn cluster_slots_masters_ignore_order_and_replicas() {
        let a = Value::Array(vec![
            range(5461, 16383, "10.0.0.2", 6379, Some(6380)),
            range(0, 5460, "10.0.0.1", 6379, None),
        ]);
        let b = Value::Array(vec![
            range(0, 5460, "10.0.0.1", 6379, Some(6381)),
            range(5461, 16383, "10.0.0.2", 6379, None),
        ]);
        assert_eq!(masters_of(&a), masters_of(&b));
        assert_eq!(masters_of(&a)[0], (0, 5460, "10.0.0.1".to_owned(), 6379));
        // A failover: the replica now serves the first range.
        let c = Value::Array(vec![
            range(0, 5460, "10.0.0.1", 6381, Some(6379)),
            range(5461, 16383, "10.0.0.2", 6379, None),
        ]);
        assert_ne!(masters_of(&a), masters_of(&c));
        assert!(masters_of(&Value::Null).is_empty());
    }
}
