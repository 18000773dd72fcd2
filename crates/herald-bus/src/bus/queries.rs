//! Questions the HTTP API asks the cluster, and the cache channels' last events.

use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use herald_hub::{BusError, CachePut, ChannelStats, History, HistoryRule};
use herald_protocol::server::Position;
use herald_protocol::{ChannelKind, ChannelName};

use crate::bus::state::{unavailable, Shared};
use crate::scripts;

pub(crate) async fn subscription_count(
    shared: &Shared,
    app_id: &str,
    channel: &ChannelName,
) -> Result<u64, BusError> {
    let counts: Vec<i64> = shared
        .client
        .hvals(shared.keys.subs(app_id, channel.as_str()))
        .await
        .map_err(unavailable)?;
    Ok(counts.into_iter().filter(|c| *c > 0).sum::<i64>() as u64)
}

/// Occupied channels of an app: the app's channel set, each checked against its counts (one
/// pipeline), vacated ones dropped from the set.
pub(crate) async fn channels(
    shared: &Shared,
    app_id: &str,
    prefix: &str,
) -> Result<Vec<ChannelStats>, BusError> {
    let names: Vec<String> = shared
        .client
        .smembers(shared.keys.app_channels(app_id))
        .await
        .map_err(unavailable)?;
    let channels: Vec<ChannelName> = names
        .iter()
        .filter(|n| n.starts_with(prefix))
        .filter_map(|n| ChannelName::parse(n).ok())
        .collect();
    if channels.is_empty() {
        return Ok(Vec::new());
    }
    let pipeline = shared.client.pipeline();
    for channel in &channels {
        let _: () = pipeline
            .hvals(shared.keys.subs(app_id, channel.as_str()))
            .await
            .map_err(unavailable)?;
        let _: () = pipeline
            .hlen(shared.keys.members(app_id, channel.as_str()))
            .await
            .map_err(unavailable)?;
    }
    let replies: Vec<Value> = pipeline.all().await.map_err(unavailable)?;
    let mut out = Vec::new();
    let mut vacated = Vec::new();
    for (channel, pair) in channels.into_iter().zip(replies.chunks(2)) {
        let [counts, users] = pair else { continue };
        let count: u64 = match counts {
            Value::Array(vals) => vals
                .iter()
                .filter_map(Value::as_i64)
                .filter(|c| *c > 0)
                .sum::<i64>() as u64,
            _ => 0,
        };
        if count == 0 {
            vacated.push(channel.to_string());
            continue;
        }
        out.push(ChannelStats {
            user_count: (channel.kind() == ChannelKind::Presence)
                .then(|| users.as_i64().unwrap_or(0) as u64),
            name: channel.to_string(),
            subscription_count: count,
        });
    }
    if !vacated.is_empty() {
        let _: Result<i64, _> = shared
            .client
            .srem(shared.keys.app_channels(app_id), vacated)
            .await;
    }
    Ok(out)
}

pub(crate) async fn cache_put(
    shared: &Shared,
    app_id: &str,
    channel: &ChannelName,
    frame: Bytes,
    ttl: Duration,
    max_bytes: u64,
) -> Result<CachePut, BusError> {
    let (stored, total): (i64, i64) = scripts::CACHE_PUT
        .evalsha_with_reload(
            &shared.client,
            shared.keys.app_cache(app_id).to_vec(),
            vec![
                Value::from(channel.as_str()),
                Value::Bytes(frame),
                (ttl.as_millis().max(1) as i64).into(),
                (max_bytes.min(i64::MAX as u64) as i64).into(),
            ],
        )
        .await
        .map_err(unavailable)?;
    herald_hub::metrics::cache_bytes(app_id, total.max(0) as u64);
    Ok(if stored == 1 {
        CachePut::Stored
    } else {
        CachePut::Full {
            used: total.max(0) as u64,
            limit: max_bytes,
        }
    })
}

pub(crate) async fn cache_get(
    shared: &Shared,
    app_id: &str,
    channel: &ChannelName,
) -> Result<Option<(Bytes, Duration)>, BusError> {
    let [hash, expiry, _] = shared.keys.app_cache(app_id);
    let reply: Value = scripts::CACHE_GET
        .evalsha_with_reload(&shared.client, vec![hash, expiry], vec![channel.as_str()])
        .await
        .map_err(unavailable)?;
    let Value::Array(parts) = reply else {
        return Ok(None);
    };
    match parts.as_slice() {
        [frame, left] => {
            let frame = match frame {
                Value::Bytes(b) => b.clone(),
                Value::String(s) => Bytes::copy_from_slice(s.as_bytes()),
                _ => return Ok(None),
            };
            let left = left.as_i64().unwrap_or(0).max(0) as u64;
            Ok(Some((frame, Duration::from_millis(left))))
        }
        _ => Ok(None),
    }
}

/// A history channel's stream after `after`.
pub(crate) async fn history(
    shared: &Shared,
    app_id: &str,
    channel: &ChannelName,
    rule: &HistoryRule,
    after: u64,
    limit: usize,
    create: bool,
) -> Result<History, BusError> {
    let [stream, meta] = shared.keys.history(app_id, channel.as_str());
    let reply: Vec<Value> = scripts::HISTORY_READ
        .evalsha_with_reload(
            &shared.client,
            vec![stream, meta],
            vec![
                Value::from(after.to_string()),
                (limit.min(i64::MAX as usize) as i64).into(),
                (rule.ttl().as_millis() as i64).into(),
                i64::from(create).into(),
                herald_hub::local_bus::new_epoch().into(),
            ],
        )
        .await
        .map_err(unavailable)?;
    let mut parts = reply.into_iter();
    let (Some(epoch), Some(top)) = (parts.next(), parts.next()) else {
        return Ok(History::default());
    };
    let top = Position {
        epoch: epoch.as_string().unwrap_or_default(),
        offset: top.as_u64().unwrap_or(0),
    };
    let mut events = Vec::new();
    while let (Some(offset), Some(frame)) = (parts.next(), parts.next()) {
        let frame = match frame {
            Value::Bytes(b) => b,
            Value::String(s) => Bytes::copy_from_slice(s.as_bytes()),
            _ => continue,
        };
        events.push((offset.as_u64().unwrap_or(0), frame));
    }
    Ok(History {
        top: Some(top),
        events,
    })
}
