//! The bus: how a hub reaches the rest of the cluster, and where cluster-wide state lives.
//!
//! The hub asks the bus to publish to a channel's topic, tells it how many local subscribers a
//! channel has (so a node listens to a topic only while it has subscribers), and asks it the
//! questions only the whole cluster can answer: presence members, subscription counts,
//! occupied channels, per-app connection counts. Messages from other nodes come back through
//! [`BusSink`]. [`LocalBus`] is the single-node implementation; the Redis implementation lives in
//! `herald-bus` and answers the same questions for a cluster.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use herald_protocol::presence::Member;
use herald_protocol::{ChannelName, SocketId};
use thiserror::Error;

/// What travels on a channel's topic.
#[derive(Debug, Clone, PartialEq)]
pub enum BusPayload {
    /// An encoded frame to deliver as-is to the channel's local subscribers.
    Frame(Bytes),
    /// Close every connection signed in as the user of this `#server-to-user-` channel.
    TerminateUser,
}

/// A message on a channel's topic.
#[derive(Debug, Clone, PartialEq)]
pub struct BusMessage {
    /// Node that published it; that node has already delivered it locally.
    pub origin: Arc<str>,
    pub app_id: Arc<str>,
    pub channel: ChannelName,
    /// A connection not to deliver to (the publisher's own socket).
    pub exclude: Option<SocketId>,
    /// When the publish arrived at its first node, Unix microseconds (for latency metrics).
    pub published_at_us: u64,
    pub payload: BusPayload,
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BusError {
    #[error("the cluster bus is unavailable: {0}")]
    Unavailable(String),
    #[error("the cluster bus answered with an error: {0}")]
    Backend(String),
}

/// Outcome of a presence join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceJoin {
    /// `first` = this is the user's first socket on the channel (send member_added);
    /// `members` = the channel's members including this one.
    Joined { first: bool, members: Vec<Member> },
    /// The channel has its maximum of distinct users and this user is not one of them.
    Full,
}

/// Counts for one occupied channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStats {
    pub name: String,
    pub subscription_count: u64,
    pub user_count: Option<u64>,
}

/// Receives messages published by other nodes.
pub trait BusSink: Send + Sync {
    fn deliver(&self, msg: BusMessage);

    /// A channel got its first subscriber cluster-wide (`true`) or lost its last (`false`).
    /// Called on exactly one node per change.
    fn channel_occupancy(&self, _app_id: &str, _channel: &ChannelName, _occupied: bool) {}

    /// A dead node's member left a presence channel (the reaping node calls this).
    fn member_removed(&self, _app_id: &str, _channel: &ChannelName, _user_id: &str) {}
}

/// The cluster seam. Every method answers for the whole cluster.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Hands the bus the hub that receives remote messages. Called once, before use.
    fn attach(&self, sink: Arc<dyn BusSink>);

    /// Publishes to the channel's topic for every other node.
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError>;

    /// This node now has `local` subscribers on the channel. Must not block; a cluster bus
    /// batches these into topic (un)subscriptions and count updates.
    fn set_interest(&self, app_id: &str, channel: &ChannelName, local: usize);

    /// Waits until this node receives the channel's topic (after the first local subscriber
    /// arrived), so a subscriber told "subscribed" misses nothing published after that.
    async fn await_interest(&self, app_id: &str, channel: &ChannelName) -> Result<(), BusError>;

    async fn presence_join(
        &self,
        app_id: &str,
        channel: &ChannelName,
        member: &Member,
        socket: SocketId,
        max_members: usize,
    ) -> Result<PresenceJoin, BusError>;

    /// Removes a socket's membership; `Ok(true)` when it was the user's last socket there.
    async fn presence_leave(
        &self,
        app_id: &str,
        channel: &ChannelName,
        user_id: &str,
        socket: SocketId,
    ) -> Result<bool, BusError>;

    async fn presence_members(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, BusError>;

    async fn subscription_count(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<u64, BusError>;

    /// Whether each user is signed in on at least one connection anywhere in the cluster.
    async fn users_online(&self, app_id: &str, user_ids: &[String]) -> Result<Vec<bool>, BusError>;

    /// Keeps a cache channel's last API event (an encoded frame) for `ttl`.
    async fn cache_put(
        &self,
        app_id: &str,
        channel: &ChannelName,
        frame: Bytes,
        ttl: Duration,
    ) -> Result<(), BusError>;

    /// A cache channel's last event and how long it still lives.
    async fn cache_get(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<Option<(Bytes, Duration)>, BusError>;

    /// Occupied channels of an app whose names start with `prefix`.
    async fn channels(&self, app_id: &str, prefix: &str) -> Result<Vec<ChannelStats>, BusError>;

    /// Counts a new connection against the app's cluster-wide limit (0 = none); `Ok(false)`
    /// when the app is at its limit (the connection is not counted).
    async fn connection_opened(&self, app_id: &str, limit: u64) -> Result<bool, BusError>;

    fn connection_closed(&self, app_id: &str);

    /// Whether the bus can serve (connected, subscriptions restored).
    fn is_ready(&self) -> bool;

    /// Leaves the cluster on a graceful exit: this node's state and lease are removed at once
    /// instead of lapsing.
    async fn shutdown(&self) {}
}

type Key = (Arc<str>, ChannelName);

#[derive(Debug, Default)]
struct PresenceChannel {
    /// user id → (member, sockets holding it)
    members: BTreeMap<String, (Member, Vec<SocketId>)>,
}

/// The in-process bus of a single node: no other nodes, state in memory.
#[derive(Default)]
pub struct LocalBus {
    interest: DashMap<Key, usize>,
    presence: DashMap<Key, PresenceChannel>,
    connections: DashMap<Arc<str>, AtomicU64>,
    cache: DashMap<Key, (Bytes, tokio::time::Instant)>,
    sink: std::sync::OnceLock<Arc<dyn BusSink>>,
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBus")
            .field("channels", &self.interest.len())
            .finish_non_exhaustive()
    }
}

impl LocalBus {
    pub fn new() -> Self {
        Self::default()
    }

    fn key(app_id: &str, channel: &ChannelName) -> Key {
        (Arc::from(app_id), channel.clone())
    }
}

#[async_trait]
impl Bus for LocalBus {
    fn attach(&self, sink: Arc<dyn BusSink>) {
        let _ = self.sink.set(sink);
    }

    async fn publish(&self, _msg: BusMessage) -> Result<(), BusError> {
        Ok(())
    }

    fn set_interest(&self, app_id: &str, channel: &ChannelName, local: usize) {
        let key = Self::key(app_id, channel);
        let had = if local == 0 {
            self.interest.remove(&key).is_some()
        } else {
            self.interest.insert(key, local).is_some()
        };
        if had != (local > 0) {
            if let Some(sink) = self.sink.get() {
                sink.channel_occupancy(app_id, channel, local > 0);
            }
        }
    }

    async fn await_interest(&self, _app_id: &str, _channel: &ChannelName) -> Result<(), BusError> {
        Ok(())
    }

    async fn presence_join(
        &self,
        app_id: &str,
        channel: &ChannelName,
        member: &Member,
        socket: SocketId,
        max_members: usize,
    ) -> Result<PresenceJoin, BusError> {
        let mut entry = self.presence.entry(Self::key(app_id, channel)).or_default();
        let ch = &mut *entry;
        let count = ch.members.len();
        let first = match ch.members.get_mut(&member.user_id) {
            Some((_, sockets)) => {
                if !sockets.contains(&socket) {
                    sockets.push(socket);
                }
                false
            }
            None if count >= max_members => return Ok(PresenceJoin::Full),
            None => {
                ch.members
                    .insert(member.user_id.clone(), (member.clone(), vec![socket]));
                true
            }
        };
        let members = ch.members.values().map(|(m, _)| m.clone()).collect();
        Ok(PresenceJoin::Joined { first, members })
    }

    async fn presence_leave(
        &self,
        app_id: &str,
        channel: &ChannelName,
        user_id: &str,
        socket: SocketId,
    ) -> Result<bool, BusError> {
        let key = Self::key(app_id, channel);
        let mut last = false;
        let mut empty = false;
        if let Some(mut ch) = self.presence.get_mut(&key) {
            if let Some((_, sockets)) = ch.members.get_mut(user_id) {
                sockets.retain(|s| *s != socket);
                if sockets.is_empty() {
                    ch.members.remove(user_id);
                    last = true;
                }
            }
            empty = ch.members.is_empty();
        }
        if empty {
            self.presence.remove_if(&key, |_, ch| ch.members.is_empty());
        }
        Ok(last)
    }

    async fn presence_members(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, BusError> {
        Ok(self
            .presence
            .get(&Self::key(app_id, channel))
            .map(|ch| ch.members.values().map(|(m, _)| m.clone()).collect())
            .unwrap_or_default())
    }

    async fn subscription_count(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<u64, BusError> {
        Ok(self
            .interest
            .get(&Self::key(app_id, channel))
            .map(|n| *n as u64)
            .unwrap_or(0))
    }

    async fn users_online(&self, app_id: &str, user_ids: &[String]) -> Result<Vec<bool>, BusError> {
        let mut out = Vec::with_capacity(user_ids.len());
        for id in user_ids {
            let online = match ChannelName::server_to_user(id) {
                Ok(ch) => self
                    .presence
                    .get(&Self::key(app_id, &ch))
                    .is_some_and(|c| !c.members.is_empty()),
                Err(_) => false,
            };
            out.push(online);
        }
        Ok(out)
    }

    async fn cache_put(
        &self,
        app_id: &str,
        channel: &ChannelName,
        frame: Bytes,
        ttl: Duration,
    ) -> Result<(), BusError> {
        // Drop expired entries now and then so the map stays bounded by live cache channels.
        if self.cache.len() > 1024 && self.cache.len().is_power_of_two() {
            let now = tokio::time::Instant::now();
            self.cache.retain(|_, (_, until)| *until > now);
        }
        self.cache.insert(
            Self::key(app_id, channel),
            (frame, tokio::time::Instant::now() + ttl),
        );
        Ok(())
    }

    async fn cache_get(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<Option<(Bytes, Duration)>, BusError> {
        let key = Self::key(app_id, channel);
        let now = tokio::time::Instant::now();
        let hit = self
            .cache
            .get(&key)
            .and_then(|e| (e.1 > now).then(|| (e.0.clone(), e.1 - now)));
        if hit.is_none() {
            self.cache.remove_if(&key, |_, (_, until)| *until <= now);
        }
        Ok(hit)
    }

    async fn channels(&self, app_id: &str, prefix: &str) -> Result<Vec<ChannelStats>, BusError> {
        let mut out: Vec<ChannelStats> = self
            .interest
            .iter()
            .filter(|e| &*e.key().0 == app_id && e.key().1.as_str().starts_with(prefix))
            .map(|e| ChannelStats {
                name: e.key().1.to_string(),
                subscription_count: *e.value() as u64,
                user_count: None,
            })
            .collect();
        for stats in &mut out {
            if stats.name.starts_with("presence-") {
                let key = (
                    Arc::from(app_id),
                    ChannelName::parse(&stats.name)
                        .map_err(|e| BusError::Backend(e.to_string()))?,
                );
                stats.user_count = Some(
                    self.presence
                        .get(&key)
                        .map(|c| c.members.len() as u64)
                        .unwrap_or(0),
                );
            }
        }
        Ok(out)
    }

    async fn connection_opened(&self, app_id: &str, limit: u64) -> Result<bool, BusError> {
        let entry = self.connections.entry(Arc::from(app_id)).or_default();
        let counter = entry.value();
        let mut current = counter.load(Ordering::Relaxed);
        loop {
            if limit > 0 && current >= limit {
                return Ok(false);
            }
            match counter.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(true),
                Err(now) => current = now,
            }
        }
    }

    fn connection_closed(&self, app_id: &str) {
        if let Some(counter) = self.connections.get(app_id) {
            let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    fn is_ready(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> Member {
        Member {
            user_id: id.into(),
            user_info: None,
        }
    }

    #[tokio::test]
    async fn presence_first_and_last_socket() {
        let bus = LocalBus::new();
        let ch = ChannelName::parse("presence-a").expect("ok");
        let (s1, s2) = (SocketId::from_parts(1, 1), SocketId::from_parts(1, 2));
        assert!(matches!(
            bus.presence_join("app", &ch, &member("u"), s1, 100).await,
            Ok(PresenceJoin::Joined { first: true, .. })
        ));
        assert!(matches!(
            bus.presence_join("app", &ch, &member("u"), s2, 100).await,
            Ok(PresenceJoin::Joined { first: false, .. })
        ));
        assert_eq!(bus.presence_members("app", &ch).await.expect("ok").len(), 1);
        assert_eq!(bus.presence_leave("app", &ch, "u", s1).await, Ok(false));
        assert_eq!(bus.presence_leave("app", &ch, "u", s2).await, Ok(true));
        assert!(bus
            .presence_members("app", &ch)
            .await
            .expect("ok")
            .is_empty());
    }

    #[tokio::test]
    async fn presence_cap_counts_distinct_users() {
        let bus = LocalBus::new();
        let ch = ChannelName::parse("presence-a").expect("ok");
        for i in 0..2 {
            bus.presence_join(
                "app",
                &ch,
                &member(&i.to_string()),
                SocketId::from_parts(1, i),
                2,
            )
            .await
            .expect("ok");
        }
        assert_eq!(
            bus.presence_join("app", &ch, &member("x"), SocketId::from_parts(2, 1), 2)
                .await,
            Ok(PresenceJoin::Full)
        );
        // An existing user may add sockets at the cap.
        assert!(matches!(
            bus.presence_join("app", &ch, &member("0"), SocketId::from_parts(2, 2), 2)
                .await,
            Ok(PresenceJoin::Joined { .. })
        ));
    }

    #[tokio::test]
    async fn connection_limit() {
        let bus = LocalBus::new();
        assert_eq!(bus.connection_opened("a", 2).await, Ok(true));
        assert_eq!(bus.connection_opened("a", 2).await, Ok(true));
        assert_eq!(bus.connection_opened("a", 2).await, Ok(false));
        bus.connection_closed("a");
        assert_eq!(bus.connection_opened("a", 2).await, Ok(true));
        assert_eq!(bus.connection_opened("b", 0).await, Ok(true));
    }
}
