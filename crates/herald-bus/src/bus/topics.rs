//! Interest routing: a node subscribes to a channel's topic while it has local subscribers.
//! The first local subscriber waits for the SUBSCRIBE; the last one leaving starts a delay
//! after which the topic is dropped, so churn costs no round trips. SUBSCRIBE and UNSUBSCRIBE
//! are serialised, so a re-subscription never loses to an idle drop.

use std::collections::HashMap;
use std::sync::Arc;

use fred::prelude::*;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::bus::state::Shared;

/// Topics per `SUBSCRIBE` when re-subscribing after a reconnect.
const RESUBSCRIBE_BATCH: usize = 1000;

#[derive(Debug)]
enum TopicState {
    /// SUBSCRIBE sent; the watch turns true when it is confirmed.
    Subscribing(watch::Receiver<bool>),
    Subscribed,
}

#[derive(Debug)]
struct Topic {
    state: TopicState,
    /// When the last local subscriber left (the topic is dropped after the delay).
    idle_since: Option<Instant>,
}

/// The topics this node listens to.
pub(crate) struct Topics {
    map: Mutex<HashMap<String, Topic>>,
    /// Serialises SUBSCRIBE/UNSUBSCRIBE commands (see [`drop_idle`]).
    ops: tokio::sync::Mutex<()>,
}

impl Topics {
    pub fn new() -> Self {
        Topics {
            map: Mutex::new(HashMap::new()),
            ops: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether this node's subscription to `topic` is confirmed.
    pub fn is_subscribed(&self, topic: &str) -> bool {
        matches!(
            self.map.lock().get(topic),
            Some(Topic {
                state: TopicState::Subscribed,
                ..
            })
        )
    }

    /// A pending subscription to wait for, if there is one.
    pub fn pending(&self, topic: &str) -> Option<watch::Receiver<bool>> {
        match self.map.lock().get(topic) {
            Some(Topic {
                state: TopicState::Subscribing(rx),
                ..
            }) => Some(rx.clone()),
            _ => None,
        }
    }
}

/// The node now has `local` subscribers of the channel whose topic this is: marks it idle,
/// busy again, or subscribes to it (in the background).
pub(crate) fn set_interest(shared: &Arc<Shared>, topic: String, local: usize) {
    let mut topics = shared.topics.map.lock();
    match topics.get_mut(&topic) {
        Some(t) => t.idle_since = (local == 0).then(Instant::now),
        None if local > 0 => {
            let (tx, rx) = watch::channel(false);
            topics.insert(
                topic.clone(),
                Topic {
                    state: TopicState::Subscribing(rx),
                    idle_since: None,
                },
            );
            metrics::gauge!("herald_bus_topics").set(topics.len() as f64);
            let shared = shared.clone();
            shared.tasks.clone().spawn(async move {
                let ops = shared.topics.ops.lock().await;
                let subscribed = subscribe(&shared, vec![topic.clone()]).await;
                drop(ops);
                match subscribed {
                    Ok(()) => {
                        if let Some(t) = shared.topics.map.lock().get_mut(&topic) {
                            t.state = TopicState::Subscribed;
                        }
                        let _ = tx.send(true);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "subscribing a topic failed");
                        shared.topics.map.lock().remove(&topic);
                        // Dropping tx tells the waiters it failed.
                    }
                }
            });
        }
        None => {}
    }
}

async fn subscribe(shared: &Shared, topics: Vec<String>) -> Result<(), Error> {
    if topics.is_empty() {
        return Ok(());
    }
    if shared.sharded() {
        for t in topics {
            shared.subscriber.ssubscribe(t).await?;
        }
        Ok(())
    } else {
        shared.subscriber.subscribe(topics).await
    }
}

async fn unsubscribe(shared: &Shared, topics: Vec<String>) -> Result<(), Error> {
    if topics.is_empty() {
        return Ok(());
    }
    if shared.sharded() {
        for t in topics {
            shared.subscriber.sunsubscribe(t).await?;
        }
        Ok(())
    } else {
        shared.subscriber.unsubscribe(topics).await
    }
}

/// Subscribes to a topic for the life of the node (its liveness topic): it is in the map, so
/// every re-subscription restores it, and never idle.
pub(crate) async fn subscribe_for_life(shared: &Shared, topic: String) -> Result<(), Error> {
    let _ops = shared.topics.ops.lock().await;
    subscribe(shared, vec![topic.clone()]).await?;
    shared.topics.map.lock().insert(
        topic,
        Topic {
            state: TopicState::Subscribed,
            idle_since: None,
        },
    );
    Ok(())
}

/// Subscribes every topic of the map again (after a reconnect; subscribing twice is a no-op in
/// Redis). The map is the source of truth, not fred's tracked sets: fred's own
/// `resubscribe_all` sends `SUBSCRIBE`/`PSUBSCRIBE` with no arguments when a set is empty, and
/// on a cluster connection that error reply is taken as the answer to the next command, which
/// shifts every later reply by one.
pub(crate) async fn resubscribe_all(shared: &Shared) -> Result<(), Error> {
    let _ops = shared.topics.ops.lock().await;
    // The liveness topic first: until it is back, other nodes count this one as gone.
    let alive = shared.keys.alive(&shared.cfg.node_id);
    subscribe(shared, vec![alive.clone()]).await?;
    let topics: Vec<String> = shared
        .topics
        .map
        .lock()
        .keys()
        .filter(|t| **t != alive)
        .cloned()
        .collect();
    for chunk in topics.chunks(RESUBSCRIBE_BATCH) {
        subscribe(shared, chunk.to_vec()).await?;
    }
    Ok(())
}

/// Unsubscribes topics idle for longer than the delay.
pub(crate) async fn drop_idle(shared: &Shared) {
    let delay = shared.cfg.unsubscribe_delay;
    // Held until the UNSUBSCRIBE is sent, so a SUBSCRIBE for a topic dropped here (a new
    // subscriber arriving meanwhile) reaches Redis after it, never before.
    let _ops = shared.topics.ops.lock().await;
    let idle: Vec<String> = {
        let mut topics = shared.topics.map.lock();
        let names: Vec<String> = topics
            .iter()
            .filter(|(_, t)| {
                t.idle_since.is_some_and(|s| s.elapsed() >= delay)
                    && matches!(t.state, TopicState::Subscribed)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in &names {
            topics.remove(n);
        }
        metrics::gauge!("herald_bus_topics").set(topics.len() as f64);
        names
    };
    if let Err(e) = unsubscribe(shared, idle).await {
        tracing::warn!(error = %e, "unsubscribing idle topics failed");
    }
}
