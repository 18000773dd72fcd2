//! The debug console across nodes: records travel on one topic that every node listens to;
//! which apps are watched, and each node's report, are kept in two small hashes.

use std::collections::HashMap;

use bytes::Bytes;
use fred::prelude::*;
use herald_hub::NodeReport;

use crate::bus::state::{now_ms, Shared};

/// How long a console's watch lasts without renewal (nodes renew every 2 s).
const WATCH_TTL_MS: u64 = 10_000;
/// Reports older than this are of nodes gone quiet, and left out.
const REPORT_TTL_MS: u64 = 10_000;

pub(crate) async fn publish(shared: &Shared, records: Bytes) {
    let topic = shared.keys.console_topic();
    let sent: Result<i64, Error> = if shared.sharded() {
        shared.client.spublish(topic, records).await
    } else {
        shared.client.publish(topic, records).await
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "console records not sent");
    }
}

pub(crate) async fn watch(shared: &Shared, here: &[(String, bool)]) -> HashMap<String, bool> {
    let key = shared.keys.console_watched();
    let node = &shared.cfg.node_id;
    let now = now_ms();
    if !here.is_empty() {
        let fields: Vec<(String, String)> = here
            .iter()
            .map(|(app, payloads)| {
                (
                    format!("{app}|{node}"),
                    format!("{}:{}", now + WATCH_TTL_MS, u8::from(*payloads)),
                )
            })
            .collect();
        let _: Result<(), Error> = shared.client.hset(&key, fields).await;
    }
    let all: HashMap<String, String> = match shared.client.hgetall(&key).await {
        Ok(m) => m,
        Err(_) => return HashMap::new(),
    };
    let mut elsewhere = HashMap::new();
    let mut stale = Vec::new();
    for (field, value) in all {
        let Some((app, watcher)) = field.rsplit_once('|') else {
            continue;
        };
        let (until, payloads) = value.split_once(':').unwrap_or((&value, "0"));
        if until.parse::<u64>().unwrap_or(0) < now {
            stale.push(field.clone());
            continue;
        }
        if watcher != node {
            *elsewhere.entry(app.to_owned()).or_insert(false) |= payloads == "1";
        }
    }
    if !stale.is_empty() {
        let _: Result<i64, Error> = shared.client.hdel(&key, stale).await;
    }
    elsewhere
}

pub(crate) async fn report(shared: &Shared, report: &NodeReport) {
    let mut value = serde_json::to_value(report).unwrap_or_default();
    value["at"] = now_ms().into();
    let _: Result<i64, Error> = shared
        .client
        .hset(
            shared.keys.node_reports(),
            (shared.cfg.node_id.as_str(), value.to_string()),
        )
        .await;
}

pub(crate) async fn nodes(shared: &Shared) -> Vec<NodeReport> {
    let all: HashMap<String, String> = shared
        .client
        .hgetall(shared.keys.node_reports())
        .await
        .unwrap_or_default();
    let now = now_ms();
    all.into_values()
        .filter_map(|v| serde_json::from_str::<serde_json::Value>(&v).ok())
        .filter(|v| now.saturating_sub(v["at"].as_u64().unwrap_or(0)) < REPORT_TTL_MS)
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect()
}
