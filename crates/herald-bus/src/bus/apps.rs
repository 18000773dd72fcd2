//! App-change notices: a node that changed apps in the store says which, on one topic every
//! node listens to for life; each node reads those apps again from the store. Best effort: a
//! notice lost while Redis is down is made up by each node's reload after its recovery round
//! (`BusSink::subscriptions_restored`) and by its periodic reload.

use fred::prelude::*;
use herald_hub::BusSink;
use serde::{Deserialize, Serialize};

use crate::bus::state::Shared;

/// Most ids one notice carries (the admin API changes one app at a time).
const MAX_IDS: usize = 1000;

#[derive(Serialize, Deserialize)]
struct Notice<'a> {
    #[serde(borrow)]
    origin: &'a str,
    ids: Vec<String>,
}

pub(crate) async fn publish(shared: &Shared, origin: &str, ids: &[String]) {
    let notice = Notice {
        origin,
        ids: ids.to_vec(),
    };
    let Ok(body) = serde_json::to_string(&notice) else {
        return;
    };
    let topic = shared.keys.apps_topic();
    let sent: Result<i64, Error> = if shared.sharded() {
        shared.client.spublish(topic, body).await
    } else {
        shared.client.publish(topic, body).await
    };
    match sent {
        Ok(_) => tracing::debug!(apps = ?ids, "app change announced"),
        Err(e) => {
            tracing::warn!(error = %e, apps = ?ids, "app change not announced; other nodes pick it up at their next reload")
        }
    }
}

/// Hands a notice from the topic to the hub; a malformed one is dropped.
pub(crate) fn receive(sink: &dyn BusSink, bytes: &[u8]) {
    match serde_json::from_slice::<Notice<'_>>(bytes) {
        Ok(n) if n.ids.len() <= MAX_IDS => sink.apps_changed(n.origin, n.ids),
        _ => tracing::warn!("dropped a malformed app-change notice"),
    }
}
