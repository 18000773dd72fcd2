//! Publishing: one script per publish (`scripts::PUBLISH`) on the channel's shard, which
//! publishes the envelope and counts who got it.
//!
//! The answer is honest about what happened:
//! - refused before Redis (not ready, recovering) or by Redis (run after its deadline): nothing
//!   was published anywhere;
//! - fewer receivers than nodes with subscribers of the channel (a node's subscriber connection
//!   was cut), a reconnect or slot move during the publish, or no answer: it may have reached
//!   some subscribers and not others.
//!
//! A keyed script is redirected by a Redis Cluster replica with `MOVED` (fred follows it), so a
//! publish never lands on a demoted master that would accept `SPUBLISH` and reach no one.

use std::sync::atomic::Ordering;

use fred::prelude::*;
use herald_hub::local_bus::HISTORY_META_TTL;
use herald_hub::{BusMessage, BusPayload, HistoryRule, PublishError};
use herald_protocol::server::Position;

use crate::bus::state::{now_ms, Shared};
use crate::bus::topology::owner_of;
use crate::{scripts, wire};

pub(crate) async fn publish(
    shared: &Shared,
    msg: BusMessage,
    history: Option<&HistoryRule>,
) -> Result<Option<Position>, PublishError> {
    if let Err(why) = shared.readiness() {
        return Err(PublishError::NotPublished(why));
    }
    // The counter before the trouble time (they are written in the other order).
    let recoveries = shared.gate.recoveries.load(Ordering::Acquire);
    let settle = shared.cfg.settle.as_millis() as u64;
    if now_ms().saturating_sub(shared.gate.last_trouble_ms.load(Ordering::Acquire)) < settle {
        return Err(PublishError::NotPublished(
            "Redis is recovering; subscriptions are being restored".into(),
        ));
    }
    let topic = shared.keys.topic(&msg.app_id, &msg.channel);
    let slot = shared
        .sharded()
        .then(|| fred::util::redis_keyslot(topic.as_bytes()));
    let reply = match history {
        None => run_publish(shared, &msg, topic).await,
        Some(rule) => run_publish_history(shared, &msg, topic, rule).await,
    };
    let (receivers, expected, position) = match reply {
        Ok(r) => r,
        Err(e) => {
            shared.gate.trouble();
            return Err(PublishError::Unconfirmed(e.to_string()));
        }
    };
    if receivers < 0 {
        return Err(PublishError::NotPublished(format!(
            "Redis ran the publish more than {} ms after it was sent and dropped it",
            shared.cfg.publish_window.as_millis()
        )));
    }
    // Give a reconnect notice that raced this command the chance to be seen.
    tokio::task::yield_now().await;
    if shared.gate.recoveries.load(Ordering::Acquire) != recoveries {
        return Err(PublishError::Unconfirmed(
            "Redis reconnected during the publish".into(),
        ));
    }
    if slot.is_some_and(|slot| !slot_owner_handled(shared, slot)) {
        return Err(PublishError::Unconfirmed(
            "Redis Cluster moved the channel's slot during the publish".into(),
        ));
    }
    if receivers < expected {
        metrics::counter!("herald_bus_publishes_partial_total").increment(1);
        return Err(PublishError::Partial {
            reached: receivers as u64,
            expected: expected as u64,
            position,
        });
    }
    metrics::counter!("herald_bus_messages_published_total").increment(1);
    Ok(position)
}

/// The deadline past which Redis drops the publish (on Redis's clock).
fn deadline(shared: &Shared) -> i64 {
    (shared.redis_now_ms() + shared.cfg.publish_window.as_millis() as u64) as i64
}

async fn run_publish(
    shared: &Shared,
    msg: &BusMessage,
    topic: String,
) -> Result<(i64, i64, Option<Position>), Error> {
    let listening = shared.topics.is_subscribed(&topic);
    let (n, expected): (i64, i64) = scripts::PUBLISH
        .evalsha_with_reload(
            &shared.client,
            vec![shared.keys.subs(&msg.app_id, msg.channel.as_str())],
            vec![
                Value::from(topic),
                Value::Bytes(wire::encode(msg)),
                deadline(shared).into(),
                shared.cfg.node_id.as_str().into(),
                i64::from(listening).into(),
                i64::from(shared.sharded()).into(),
            ],
        )
        .await?;
    Ok((n, expected, None))
}

async fn run_publish_history(
    shared: &Shared,
    msg: &BusMessage,
    topic: String,
    rule: &HistoryRule,
) -> Result<(i64, i64, Option<Position>), Error> {
    let BusPayload::Frame(frame) = &msg.payload else {
        return run_publish(shared, msg, topic).await;
    };
    let listening = shared.topics.is_subscribed(&topic);
    let [stream, meta] = shared.keys.history(&msg.app_id, msg.channel.as_str());
    let reply: Vec<Value> = scripts::PUBLISH_HISTORY
        .evalsha_with_reload(
            &shared.client,
            vec![
                shared.keys.subs(&msg.app_id, msg.channel.as_str()),
                stream,
                meta,
            ],
            vec![
                Value::from(topic),
                Value::Bytes(wire::encode_head(msg)),
                Value::Bytes(frame.clone()),
                deadline(shared).into(),
                shared.cfg.node_id.as_str().into(),
                i64::from(listening).into(),
                i64::from(shared.sharded()).into(),
                (rule.size as i64).into(),
                (rule.ttl().as_millis() as i64).into(),
                herald_hub::local_bus::new_epoch().into(),
                (HISTORY_META_TTL.as_millis() as i64).into(),
            ],
        )
        .await?;
    let int = |i: usize| reply.get(i).and_then(Value::as_i64).unwrap_or(-1);
    let (n, expected, offset) = (int(0), int(1), int(2));
    let epoch = reply.get(3).and_then(Value::as_string).unwrap_or_default();
    let position = (n >= 0 && offset > 0 && !epoch.is_empty()).then_some(Position {
        epoch,
        offset: offset as u64,
    });
    Ok((n, expected, position))
}

/// Whether the master now serving `slot` (in the command client's map, updated on `MOVED`) is
/// the one the topology watcher last handled, i.e. every node has subscribed there.
fn slot_owner_handled(shared: &Shared, slot: u16) -> bool {
    let Some(routing) = shared.client.cached_cluster_state() else {
        return false;
    };
    let handled = shared.gate.handled_owners.read();
    routing.get_server(slot) == owner_of(&handled, slot)
}
