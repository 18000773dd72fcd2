//! Presence: members and the sockets holding them, per channel, in Redis. Join and leave are
//! scripts, so "first socket of this user" and "last socket gone" are decided atomically and
//! announced once cluster-wide. The node keeps its own memberships; a join or leave that
//! fails or times out marks the channel, and the node's memberships there are written to
//! Redis again as they are (`PRESENCE_SYNC`), announcing departures that the failed leave
//! could not.

use std::collections::HashMap;
use std::sync::Arc;

use fred::prelude::*;
use herald_hub::{BusError, PresenceJoin};
use herald_protocol::presence::Member;
use herald_protocol::{ChannelName, SocketId};

use crate::bus::state::{unavailable, ChannelKey, Shared};
use crate::keys::index_channel;
use crate::scripts;

fn members_of(flat: Vec<String>) -> Vec<Member> {
    flat.chunks(2)
        .filter_map(|kv| match kv {
            [id, info] => Some(Member {
                user_id: id.clone(),
                user_info: (!info.is_empty()).then(|| info.clone()),
            }),
            _ => None,
        })
        .collect()
}

fn presence_keys(shared: &Shared, app: &str, channel: &str) -> Vec<String> {
    shared.keys.channel_keys(app, channel)[..3].to_vec()
}

fn mark_dirty(shared: &Shared, key: ChannelKey) {
    shared.local.dirty_presence.lock().insert(key);
}

pub(crate) async fn join(
    shared: &Shared,
    app_id: &str,
    channel: &ChannelName,
    member: &Member,
    socket: SocketId,
    max_members: usize,
) -> Result<PresenceJoin, BusError> {
    if !shared.is_ready() {
        return Err(BusError::Unavailable(
            "Redis is not connected or the cluster state is being restored".into(),
        ));
    }
    let _: i64 = shared
        .client
        .sadd(
            shared.keys.node_index(&shared.cfg.node_id),
            index_channel(app_id, channel.as_str()),
        )
        .await
        .map_err(unavailable)?;
    let args = vec![
        member.user_id.clone(),
        member.user_info.clone().unwrap_or_default(),
        shared.socket_field(socket),
        max_members.to_string(),
    ];
    let key: ChannelKey = (Arc::from(app_id), channel.clone());
    let (first, flat): (i64, Vec<String>) = scripts::PRESENCE_JOIN
        .evalsha_with_reload(
            &shared.client,
            presence_keys(shared, app_id, channel.as_str()),
            args,
        )
        .await
        .map_err(|e| {
            // The join may have run: the channel is written again from the node's record.
            mark_dirty(shared, key.clone());
            unavailable(e)
        })?;
    if first < 0 {
        return Ok(PresenceJoin::Full);
    }
    if shared
        .local
        .members
        .insert((key.clone(), socket), member.clone())
        .is_none()
    {
        *shared.local.member_counts.entry(key).or_insert(0) += 1;
    }
    Ok(PresenceJoin::Joined {
        first: first == 1,
        members: members_of(flat),
    })
}

pub(crate) async fn leave(
    shared: &Shared,
    app_id: &str,
    channel: &ChannelName,
    user_id: &str,
    socket: SocketId,
) -> Result<bool, BusError> {
    let key: ChannelKey = (Arc::from(app_id), channel.clone());
    if shared
        .local
        .members
        .remove(&(key.clone(), socket))
        .is_some()
    {
        shared.local.member_counts.remove_if_mut(&key, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
    let last: Result<i64, Error> = scripts::PRESENCE_LEAVE
        .evalsha_with_reload(
            &shared.client,
            presence_keys(shared, app_id, channel.as_str()),
            vec![user_id.to_owned(), shared.socket_field(socket)],
        )
        .await;
    match last {
        Ok(last) => Ok(last == 1),
        Err(e) => {
            // Written again (and the departure announced) once Redis answers.
            mark_dirty(shared, key);
            Err(unavailable(e))
        }
    }
}

pub(crate) async fn members(
    shared: &Shared,
    app_id: &str,
    channel: &ChannelName,
) -> Result<Vec<Member>, BusError> {
    let map: HashMap<String, String> = shared
        .client
        .hgetall(shared.keys.members(app_id, channel.as_str()))
        .await
        .map_err(unavailable)?;
    let mut members: Vec<Member> = map
        .into_iter()
        .map(|(id, info)| Member {
            user_id: id,
            user_info: (!info.is_empty()).then_some(info),
        })
        .collect();
    members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    Ok(members)
}

pub(crate) async fn users_online(
    shared: &Shared,
    app_id: &str,
    user_ids: &[String],
) -> Result<Vec<bool>, BusError> {
    if user_ids.is_empty() {
        return Ok(Vec::new());
    }
    let pipeline = shared.client.pipeline();
    for id in user_ids {
        let channel = format!("{}{id}", herald_protocol::channel::SERVER_TO_USER_PREFIX);
        let _: () = pipeline
            .hlen(shared.keys.members(app_id, &channel))
            .await
            .map_err(unavailable)?;
    }
    let counts: Vec<i64> = pipeline.all().await.map_err(unavailable)?;
    Ok(counts.into_iter().map(|n| n > 0).collect())
}

/// Writes the node's memberships of one channel to Redis as they are. Returns the users whose
/// last socket went (departures nobody announced) and the members whose first socket came
/// back (arrivals; announced only when others were told they had left).
pub(crate) async fn sync_channel(
    shared: &Shared,
    key: &ChannelKey,
    mine: &[(SocketId, Member)],
) -> Result<(Vec<String>, Vec<Member>), Error> {
    let (app, channel) = key;
    let mut args = Vec::with_capacity(1 + mine.len() * 3);
    args.push(format!("{}|", shared.cfg.node_id));
    for (socket, member) in mine {
        args.push(shared.socket_field(*socket));
        args.push(member.user_id.clone());
        args.push(member.user_info.clone().unwrap_or_default());
    }
    if !mine.is_empty() {
        let _: i64 = shared
            .client
            .sadd(
                shared.keys.node_index(&shared.cfg.node_id),
                index_channel(app, channel.as_str()),
            )
            .await?;
    }
    let (removed, added): (Vec<String>, Vec<String>) = scripts::PRESENCE_SYNC
        .evalsha_with_reload(
            &shared.client,
            presence_keys(shared, app, channel.as_str()),
            args,
        )
        .await?;
    let added = added
        .into_iter()
        .filter_map(|id| {
            mine.iter()
                .find(|(_, m)| m.user_id == id)
                .map(|(_, m)| m.clone())
        })
        .collect();
    Ok((removed, added))
}

/// Writes again the channels whose memberships a failed join or leave left uncertain, and
/// announces the departures found.
pub(crate) async fn sync_dirty(shared: &Shared) -> Result<(), Error> {
    let dirty: Vec<ChannelKey> = shared.local.dirty_presence.lock().drain().collect();
    for (i, key) in dirty.iter().enumerate() {
        let mine = shared.local.channel_members(key);
        match sync_channel(shared, key, &mine).await {
            Ok((removed, _)) => shared.members_departed(&key.0, &key.1, removed),
            Err(e) => {
                shared
                    .local
                    .dirty_presence
                    .lock()
                    .extend(dirty[i..].iter().cloned());
                return Err(e);
            }
        }
    }
    Ok(())
}
