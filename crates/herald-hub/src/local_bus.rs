//! The in-process bus of a single node: no other nodes, cluster state in memory.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use herald_protocol::presence::Member;
use herald_protocol::{ChannelKind, ChannelName, SocketId};
use tokio::time::Instant;

use herald_protocol::server::{self, Position};
use rand::distr::{Alphanumeric, SampleString};

use crate::app::HistoryRule;
use crate::cluster::{
    Broker, BusError, BusMessage, BusPayload, BusSink, CachePut, ChannelStats, ClusterState,
    History, PresenceJoin, PublishError,
};

/// How long a quiet channel's stream position (epoch and last offset) is kept after its
/// events expired, so its clients can still resume: a day.
pub const HISTORY_META_TTL: Duration = Duration::from_secs(24 * 3600);

/// A new stream's epoch: 16 letters and digits.
pub fn new_epoch() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 16)
}

type Key = (Arc<str>, ChannelName);

#[derive(Debug, Default)]
struct PresenceChannel {
    /// user id → (member, sockets holding it)
    members: BTreeMap<String, (Member, Vec<SocketId>)>,
}

/// One app's cache channels: last frames with their expiry, and their total size.
#[derive(Debug, Default)]
struct AppCache {
    entries: HashMap<ChannelName, (Bytes, Instant)>,
    bytes: u64,
}

impl AppCache {
    fn prune(&mut self, now: Instant) {
        let before = self.entries.len();
        let mut freed = 0;
        self.entries.retain(|_, (frame, until)| {
            let keep = *until > now;
            if !keep {
                freed += frame.len() as u64;
            }
            keep
        });
        if self.entries.len() != before {
            self.bytes -= freed;
        }
    }
}

/// One history channel's stream on a single node: a bounded ring of events.
#[derive(Debug)]
struct Stream {
    epoch: String,
    offset: u64,
    /// (offset, kept until, frame with its position)
    events: VecDeque<(u64, Instant, Bytes)>,
    last_publish: Instant,
}

/// The in-process bus of a single node: no other nodes, state in memory.
#[derive(Default)]
pub struct LocalBus {
    streams: DashMap<Key, Stream>,
    interest: DashMap<Key, usize>,
    presence: DashMap<Key, PresenceChannel>,
    connections: DashMap<Arc<str>, AtomicU64>,
    cache: DashMap<Arc<str>, AppCache>,
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
impl Broker for LocalBus {
    fn attach(&self, sink: Arc<dyn BusSink>) {
        let _ = self.sink.set(sink);
    }

    async fn publish(
        &self,
        msg: BusMessage,
        history: Option<&HistoryRule>,
    ) -> Result<Option<Position>, PublishError> {
        let (Some(rule), BusPayload::Frame(frame)) = (history, &msg.payload) else {
            return Ok(None);
        };
        let now = Instant::now();
        // Streams quiet for longer than their position is kept go, now and then.
        if self.streams.len() > 1024 && self.streams.len().is_power_of_two() {
            self.streams
                .retain(|_, s| now.duration_since(s.last_publish) < HISTORY_META_TTL);
        }
        let mut stream = self
            .streams
            .entry(Self::key(&msg.app_id, &msg.channel))
            .or_insert_with(|| Stream {
                epoch: new_epoch(),
                offset: 0,
                events: VecDeque::new(),
                last_publish: now,
            });
        stream.offset += 1;
        stream.last_publish = now;
        let offset = stream.offset;
        let framed = Bytes::from(server::with_position(frame, &stream.epoch, offset));
        stream.events.push_back((offset, now + rule.ttl(), framed));
        while stream.events.len() > rule.size
            || stream
                .events
                .front()
                .is_some_and(|(_, until, _)| *until <= now)
        {
            stream.events.pop_front();
        }
        Ok(Some(Position {
            epoch: stream.epoch.clone(),
            offset,
        }))
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

    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }
}

#[async_trait]
impl ClusterState for LocalBus {
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
        max_bytes: u64,
    ) -> Result<CachePut, BusError> {
        let now = Instant::now();
        let mut cache = self.cache.entry(Arc::from(app_id)).or_default();
        cache.prune(now);
        let old = cache
            .entries
            .get(channel)
            .map_or(0, |(f, _)| f.len() as u64);
        let total = cache.bytes - old + frame.len() as u64;
        if total > max_bytes {
            return Ok(CachePut::Full {
                used: cache.bytes,
                limit: max_bytes,
            });
        }
        cache.bytes = total;
        cache.entries.insert(channel.clone(), (frame, now + ttl));
        crate::metrics::cache_bytes(app_id, total);
        Ok(CachePut::Stored)
    }

    async fn history(
        &self,
        app_id: &str,
        channel: &ChannelName,
        rule: &HistoryRule,
        after: u64,
        limit: usize,
        create: bool,
    ) -> Result<History, BusError> {
        let now = Instant::now();
        let key = Self::key(app_id, channel);
        // A stream without events lives for the rule's ttl; one with events a day after its
        // last publish.
        let expired = |s: &Stream| {
            let keep = if s.offset == 0 {
                rule.ttl()
            } else {
                HISTORY_META_TTL
            };
            now.duration_since(s.last_publish) >= keep
        };
        if self.streams.get(&key).is_some_and(|s| expired(&s)) {
            self.streams.remove(&key);
        }
        if create {
            self.streams.entry(key.clone()).or_insert_with(|| Stream {
                epoch: new_epoch(),
                offset: 0,
                events: VecDeque::new(),
                last_publish: now,
            });
        }
        let Some(stream) = self.streams.get(&key) else {
            return Ok(History::default());
        };
        Ok(History {
            top: Some(Position {
                epoch: stream.epoch.clone(),
                offset: stream.offset,
            }),
            events: stream
                .events
                .iter()
                .filter(|(offset, until, _)| *offset > after && *until > now)
                .take(limit)
                .map(|(offset, _, frame)| (*offset, frame.clone()))
                .collect(),
        })
    }

    async fn cache_get(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<Option<(Bytes, Duration)>, BusError> {
        let now = Instant::now();
        Ok(self.cache.get(app_id).and_then(|c| {
            c.entries
                .get(channel)
                .and_then(|(frame, until)| (*until > now).then(|| (frame.clone(), *until - now)))
        }))
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
            let Ok(channel) = ChannelName::parse(&stats.name) else {
                continue;
            };
            if channel.kind() == ChannelKind::Presence {
                stats.user_count = Some(
                    self.presence
                        .get(&Self::key(app_id, &channel))
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

    #[tokio::test(start_paused = true)]
    async fn cache_is_bounded_in_bytes_per_app() {
        let bus = LocalBus::new();
        let ttl = Duration::from_secs(10);
        let frame = |n: usize| Bytes::from(vec![b'x'; n]);
        let ch = |i: u32| ChannelName::parse(&format!("cache-{i}")).expect("ok");
        for i in 0..10 {
            assert_eq!(
                bus.cache_put("a", &ch(i), frame(100), ttl, 1000).await,
                Ok(CachePut::Stored)
            );
        }
        assert_eq!(
            bus.cache_put("a", &ch(10), frame(100), ttl, 1000).await,
            Ok(CachePut::Full {
                used: 1000,
                limit: 1000
            })
        );
        // Replacing an entry counts only the difference; other apps have their own bound.
        assert_eq!(
            bus.cache_put("a", &ch(3), frame(100), ttl, 1000).await,
            Ok(CachePut::Stored)
        );
        assert_eq!(
            bus.cache_put("b", &ch(10), frame(100), ttl, 1000).await,
            Ok(CachePut::Stored)
        );
        // Expired entries free their bytes.
        tokio::time::advance(ttl + Duration::from_millis(1)).await;
        assert_eq!(bus.cache_get("a", &ch(0)).await, Ok(None));
        assert_eq!(
            bus.cache_put("a", &ch(10), frame(1000), ttl, 1000).await,
            Ok(CachePut::Stored)
        );
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
