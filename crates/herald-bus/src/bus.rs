//! [`RedisBus`]: the cluster bus.
//!
//! Interest routing: a node subscribes to a channel's topic while it has local subscribers
//! (the first local subscriber waits for the SUBSCRIBE; the last one leaving starts a delay
//! after which the topic is unsubscribed, so churn costs nothing). Subscription counts are
//! written per node, batched per channel. Presence, counts and connection limits live in
//! Redis, per node; each node holds a lease, and when a lease expires one surviving node
//! (whoever takes the reap lock) removes the dead node's state and announces its members'
//! departure.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::Server;
use fred::types::{Expiration, SetOptions};
use herald_hub::{Bus, BusError, BusMessage, BusPayload, BusSink, ChannelStats, PresenceJoin};
use herald_protocol::presence::Member;
use herald_protocol::{server, ChannelName, SocketId};
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::connect::{self, Topology};
use crate::keys::{index_channel, index_connections, Keys};
use crate::scripts;
use crate::{wire, RedisBusConfig};

type ChannelKey = (Arc<str>, ChannelName);

/// A Redis Cluster slot map: (first slot, last slot, master).
type SlotOwners = Vec<(u16, u16, Server)>;

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

pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RedisBusConfig,
    keys: Keys,
    topology: Topology,
    client: Client,
    subscriber: SubscriberClient,
    sink: OnceLock<Arc<dyn BusSink>>,
    topics: Mutex<HashMap<String, Topic>>,
    dirty: Mutex<HashSet<ChannelKey>>,
    local_counts: DashMap<ChannelKey, usize>,
    /// This node's presence memberships, to write again after Redis lost them.
    local_members: DashMap<(ChannelKey, SocketId), Member>,
    /// How many of `local_members` each channel has (so flushes need not scan them).
    member_counts: DashMap<ChannelKey, usize>,
    /// Connections per app counted in Redis (apps with a limit).
    local_connections: DashMap<Arc<str>, u64>,
    ready: AtomicBool,
    resyncing: AtomicBool,
    flush_now: Notify,
    /// Redis Cluster slots changed hands: subscribe every topic again (see `topology_loop`).
    topology_changed: Notify,
    /// Set with `topology_changed`, cleared when a round of re-subscription starts.
    topology_dirty: AtomicBool,
    /// The command client's slot map as `topology_loop` last handled it: a publish that finds
    /// its slot served by another master went where subscriptions may not be back yet.
    handled_owners: parking_lot::RwLock<SlotOwners>,
    /// Serialises topic SUBSCRIBE/UNSUBSCRIBE commands (see `drop_idle_topics`).
    topic_ops: tokio::sync::Mutex<()>,
    /// When Redis last failed a publish or a connection came back (Unix ms): publishes wait a
    /// settle period after it, so every node's subscriptions are back before a 200.
    last_trouble_ms: std::sync::atomic::AtomicU64,
    /// Rounds of recovery begun (reconnects, Redis Cluster slot moves); a publish that straddles
    /// one answers 503 rather than risk a 200 for a message some node missed.
    recoveries: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("node", &self.inner.cfg.node_id)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

/// Builds and connects the two clients, with fresh clients for each attempt, trying again for
/// `startup_wait` while the failure may pass (Redis starting, a cluster forming); errors that
/// will not pass (certificate, authentication, configuration) end it at once.
async fn connect_until(
    cfg: &RedisBusConfig,
) -> Result<(Client, SubscriberClient, Topology), BusError> {
    let deadline = Instant::now() + cfg.startup_wait;
    loop {
        let (client, subscriber, topology) =
            connect::build(cfg).map_err(|e| BusError::Backend(e.to_string()))?;
        let attempt = async {
            client.init().await?;
            subscriber.init().await?;
            Ok::<(), Error>(())
        };
        let e = match attempt.await {
            Ok(()) => return Ok((client, subscriber, topology)),
            Err(e) => e,
        };
        let lasting = matches!(
            e.kind(),
            ErrorKind::Auth | ErrorKind::Config | ErrorKind::Url | ErrorKind::Tls
        ) || untrusted_certificate(&e);
        if lasting || Instant::now() + cfg.reconnect_delay >= deadline {
            return Err(connect_error(e));
        }
        tracing::warn!(error = %e, "Redis is not reachable yet; retrying");
        drop((client, subscriber));
        tokio::time::sleep(cfg.reconnect_delay).await;
    }
}

/// rustls refused the server's certificate (fred reports it as an IO error).
fn untrusted_certificate(e: &Error) -> bool {
    e.to_string().contains("InvalidCertificate")
}

/// A failed first connection, with a hint when the cause is an untrusted TLS certificate.
fn connect_error(e: Error) -> BusError {
    if untrusted_certificate(&e) {
        BusError::Unavailable(format!(
            "{e}: the Redis server's TLS certificate is not trusted; \
             set bus.tls_ca_file to the CA that signed it"
        ))
    } else {
        BusError::Unavailable(e.to_string())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl RedisBus {
    /// Connects to Redis and starts the bus's background tasks.
    pub async fn connect(cfg: RedisBusConfig) -> Result<Self, BusError> {
        let (client, subscriber, topology) = connect_until(&cfg).await?;
        let inner = Arc::new(Inner {
            keys: Keys::new(&cfg.key_prefix),
            cfg,
            topology,
            client,
            subscriber,
            sink: OnceLock::new(),
            topics: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
            local_counts: DashMap::new(),
            local_members: DashMap::new(),
            member_counts: DashMap::new(),
            local_connections: DashMap::new(),
            ready: AtomicBool::new(false),
            resyncing: AtomicBool::new(false),
            flush_now: Notify::new(),
            topology_changed: Notify::new(),
            topology_dirty: AtomicBool::new(false),
            handled_owners: parking_lot::RwLock::new(Vec::new()),
            topic_ops: tokio::sync::Mutex::new(()),
            last_trouble_ms: std::sync::atomic::AtomicU64::new(0),
            recoveries: std::sync::atomic::AtomicU64::new(0),
        });
        // A restarted node with the same id (a StatefulSet pod) waits for its previous life's
        // lease to lapse, clears what that life left behind, then registers.
        inner.wait_for_own_lease().await?;
        inner.reap(&inner.cfg.node_id).await;
        inner.renew_lease().await.map_err(unavailable)?;
        *inner.handled_owners.write() = slot_owners(inner.client.cached_cluster_state());
        tokio::spawn(receive_loop(inner.clone()));
        tokio::spawn(flush_loop(inner.clone()));
        tokio::spawn(lease_loop(inner.clone()));
        tokio::spawn(reconnect_loop(inner.clone()));
        if inner.sharded() {
            tokio::spawn(topology_loop(inner.clone()));
        }
        inner.ready.store(true, Ordering::Release);
        metrics::gauge!("herald_bus_connected").set(1.0);
        tracing::info!(node = %inner.cfg.node_id, topology = ?inner.topology, "cluster bus connected");
        Ok(RedisBus { inner })
    }

    /// This node's id in Redis.
    pub fn node_id(&self) -> &str {
        &self.inner.cfg.node_id
    }
}

impl Inner {
    /// How long publishes wait after trouble.
    fn settle(&self) -> Duration {
        self.cfg.settle
    }

    fn sharded(&self) -> bool {
        self.topology == Topology::Cluster
    }

    fn socket_field(&self, socket: SocketId) -> String {
        format!("{}|{}", self.cfg.node_id, socket)
    }

    /// Publishes on a topic; the receiver count is of the Redis node that took it.
    async fn publish_raw(&self, topic: String, payload: Bytes) -> Result<i64, Error> {
        if self.sharded() {
            self.client.spublish(topic, payload).await
        } else {
            self.client.publish(topic, payload).await
        }
    }

    /// The master serving `slot` in the command client's slot map.
    fn client_owner(&self, slot: u16) -> Option<Server> {
        self.client
            .cached_cluster_state()
            .and_then(|r| r.get_server(slot).cloned())
    }

    async fn subscribe_topics(&self, topics: Vec<String>) -> Result<(), Error> {
        if topics.is_empty() {
            return Ok(());
        }
        if self.sharded() {
            for t in topics {
                self.subscriber.ssubscribe(t).await?;
            }
            Ok(())
        } else {
            self.subscriber.subscribe(topics).await
        }
    }

    /// Subscribes every topic of the topics map again (after a reconnect; subscribing twice is a
    /// no-op in Redis). The map is the source of truth, not fred's tracked sets: fred's own
    /// `resubscribe_all` sends `SUBSCRIBE`/`PSUBSCRIBE` with no arguments when a set is empty,
    /// and in a cluster that error reply is taken as the answer to the next command on the
    /// connection, which shifts every later reply by one.
    async fn resubscribe_all(&self) -> Result<(), Error> {
        let _ops = self.topic_ops.lock().await;
        let topics: Vec<String> = self.topics.lock().keys().cloned().collect();
        for chunk in topics.chunks(RESUBSCRIBE_BATCH) {
            self.subscribe_topics(chunk.to_vec()).await?;
        }
        Ok(())
    }

    /// Redis Cluster, after a publish that no one received: a Redis 7.0 replica accepts SPUBLISH
    /// and answers 0, so after a failover a publish sent along a stale slot map reaches no one. A
    /// keyed read on the channel's slot answers MOVED there, which fred follows, updating its
    /// map: a changed owner means the publish went nowhere.
    async fn check_stale_slot(
        &self,
        msg: &BusMessage,
        slot: u16,
        receivers: i64,
    ) -> Result<(), BusError> {
        if receivers != 0 {
            return Ok(());
        }
        let before = self.client_owner(slot);
        let probe: Result<i64, Error> = self
            .client
            .exists(self.keys.subs(&msg.app_id, msg.channel.as_str()))
            .await;
        if let Err(e) = probe {
            self.last_trouble_ms.store(now_ms(), Ordering::Release);
            return Err(unavailable(e));
        }
        if self.client_owner(slot) != before {
            return Err(BusError::Unavailable(
                "Redis Cluster moved the channel's slot; the publish reached no one; retry".into(),
            ));
        }
        Ok(())
    }

    /// Whether the master now serving `slot` (in the command client's map, updated on `MOVED`)
    /// is the one `topology_loop` last handled, i.e. every node has subscribed there.
    fn slot_owner_handled(&self, slot: u16) -> bool {
        let Some(routing) = self.client.cached_cluster_state() else {
            return false;
        };
        let handled = self.handled_owners.read();
        routing.get_server(slot) == owner_of(&handled, slot)
    }

    async fn unsubscribe_topics(&self, topics: Vec<String>) -> Result<(), Error> {
        if topics.is_empty() {
            return Ok(());
        }
        if self.sharded() {
            for t in topics {
                self.subscriber.sunsubscribe(t).await?;
            }
            Ok(())
        } else {
            self.subscriber.unsubscribe(topics).await
        }
    }

    /// Waits while a lease for this node id is live. A previous life's lease lapses within one
    /// lease; one that keeps being renewed belongs to another live node with the same id.
    async fn wait_for_own_lease(&self) -> Result<(), BusError> {
        let started = Instant::now();
        let mut warned = false;
        loop {
            let score: Option<f64> = self
                .client
                .zscore(self.keys.nodes(), self.cfg.node_id.as_str())
                .await
                .map_err(unavailable)?;
            match score {
                Some(expiry) if expiry > now_ms() as f64 => {
                    if started.elapsed() > self.cfg.lease * 2 {
                        return Err(BusError::Backend(format!(
                            "node id {:?} is in use by another live node (its lease keeps being renewed); give every node its own server.node_id",
                            self.cfg.node_id
                        )));
                    }
                    if !warned {
                        tracing::warn!(node = %self.cfg.node_id, "a lease for this node id is live; waiting for it to lapse");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                _ => return Ok(()),
            }
        }
    }

    async fn renew_lease(&self) -> Result<(), Error> {
        let expiry = now_ms() + self.cfg.lease.as_millis() as u64;
        let _: i64 = self
            .client
            .zadd(
                self.keys.nodes(),
                None,
                None,
                false,
                false,
                (expiry as f64, self.cfg.node_id.as_str()),
            )
            .await?;
        Ok(())
    }

    /// Writes the dirty subscription counts: one HSET/HDEL per changed channel, however many
    /// clients came and went.
    async fn flush_counts(&self) -> Result<(), Error> {
        let dirty: Vec<ChannelKey> = self.dirty.lock().drain().collect();
        if dirty.is_empty() {
            return Ok(());
        }
        let node = self.cfg.node_id.clone();
        let index = self.keys.node_index(&node);
        // One script per changed channel, all in flight at once on the multiplexed connection.
        let mut tasks = tokio::task::JoinSet::new();
        for (app, channel) in dirty.iter().cloned() {
            let count = self
                .local_counts
                .get(&(app.clone(), channel.clone()))
                .map(|c| *c)
                .unwrap_or(0);
            let holds_members = self
                .member_counts
                .contains_key(&(app.clone(), channel.clone()));
            let client = self.client.clone();
            let (subs, app_channels, index, node) = (
                self.keys.subs(&app, channel.as_str()),
                self.keys.app_channels(&app),
                index.clone(),
                node.clone(),
            );
            tasks.spawn(async move {
                let totals: (i64, i64) = client
                    .eval(scripts::SUBS_SET, vec![subs], vec![node, count.to_string()])
                    .await?;
                let entry = index_channel(&app, channel.as_str());
                if count > 0 {
                    let _: i64 = client.sadd(app_channels, channel.as_str()).await?;
                    let _: i64 = client.sadd(index, entry).await?;
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
                    let Some(sink) = self.sink.get() else {
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
            // Try again on the next flush (the script is idempotent).
            self.dirty.lock().extend(dirty);
            return Err(e);
        }
        Ok(())
    }

    /// Unsubscribes topics idle for longer than the delay.
    async fn drop_idle_topics(&self) {
        let delay = self.cfg.unsubscribe_delay;
        // Held until the UNSUBSCRIBE is sent, so a SUBSCRIBE for a topic dropped here (a new
        // subscriber arriving meanwhile) reaches Redis after it, never before.
        let _ops = self.topic_ops.lock().await;
        let idle: Vec<String> = {
            let mut topics = self.topics.lock();
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
        if let Err(e) = self.unsubscribe_topics(idle).await {
            tracing::warn!(error = %e, "unsubscribing idle topics failed");
        }
    }

    /// Removes a node's state: presence sockets (announcing members whose last socket it held),
    /// subscription counts and connection counts. Safe to run twice.
    async fn reap(&self, node: &str) {
        let index = self.keys.node_index(node);
        let entries: Vec<String> = match self.client.smembers(&index).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(node, error = %e, "reading a node's index failed");
                return;
            }
        };
        let mut removed_members = 0usize;
        for entry in &entries {
            if let Some(app) = entry.strip_prefix("\tconnections\t") {
                let _: Result<i64, _> =
                    self.client.hdel(self.keys.app_connections(app), node).await;
                continue;
            }
            let Some((app, channel)) = entry.split_once('\t') else {
                continue;
            };
            let Ok(channel) = ChannelName::parse_internal(channel) else {
                continue;
            };
            let mut removed: Vec<String> = match self
                .client
                .eval(
                    scripts::REAP_CHANNEL,
                    self.keys.channel_keys(app, channel.as_str()),
                    vec![node],
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(node, error = %e, "reaping a channel failed");
                    return; // keep the index; the next reaper tries again
                }
            };
            let vacated = !removed.is_empty() && removed.remove(0) == "1";
            removed_members += removed.len();
            if let Some(sink) = self.sink.get() {
                if vacated {
                    sink.channel_occupancy(app, &channel, false);
                }
                for user_id in &removed {
                    sink.member_removed(app, &channel, user_id);
                }
            }
            for user_id in removed {
                // A user's last sign-in went with the node: tell its watchers it is offline.
                // Any other channel: its member left.
                let (target, frame) = match channel.server_to_user_id() {
                    Some(id) => match ChannelName::watchlist(id) {
                        Ok(w) => (w, server::watchlist_events(&[], &[id.to_owned()])),
                        Err(_) => continue,
                    },
                    None => (
                        channel.clone(),
                        server::member_removed(channel.as_str(), &user_id),
                    ),
                };
                let msg = BusMessage {
                    origin: Arc::from(format!("reaper:{node}")),
                    app_id: Arc::from(app),
                    channel: target.clone(),
                    exclude: None,
                    published_at_us: now_us(),
                    payload: BusPayload::Frame(Bytes::from(frame)),
                };
                if let Err(e) = self
                    .publish_raw(self.keys.topic(app, &target), wire::encode(&msg))
                    .await
                {
                    tracing::warn!(node, error = %e, "announcing a reaped member failed");
                }
            }
        }
        let _: Result<i64, _> = self.client.del(&index).await;
        if node != self.cfg.node_id {
            let _: Result<i64, _> = self.client.zrem(self.keys.nodes(), node).await;
            tracing::info!(
                node,
                entries = entries.len(),
                removed_members,
                "removed the state of a dead node"
            );
        }
    }

    /// Finds nodes whose lease expired and reaps each one that this node wins the lock for.
    async fn reap_expired(&self) {
        let expired: Vec<String> = match self
            .client
            .zrangebyscore(self.keys.nodes(), "-inf", now_ms() as f64, false, None)
            .await
        {
            Ok(n) => n,
            Err(_) => return,
        };
        for node in expired {
            if node == self.cfg.node_id {
                continue;
            }
            let lock: Result<Option<String>, _> = self
                .client
                .set(
                    self.keys.reap_lock(&node),
                    self.cfg.node_id.as_str(),
                    Some(Expiration::PX(self.cfg.lease.as_millis() as i64 * 3)),
                    Some(SetOptions::NX),
                    false,
                )
                .await;
            if matches!(lock, Ok(Some(_))) {
                self.reap(&node).await;
            }
        }
    }

    /// Writes this node's state again (after Redis restarted empty, or a failover).
    async fn resync(&self) -> Result<(), Error> {
        self.renew_lease().await?;
        let keys: Vec<ChannelKey> = self.local_counts.iter().map(|e| e.key().clone()).collect();
        self.dirty.lock().extend(keys);
        self.flush_counts().await?;
        let index = self.keys.node_index(&self.cfg.node_id);
        let members: Vec<((ChannelKey, SocketId), Member)> = self
            .local_members
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        for (((app, channel), socket), member) in members {
            let _: i64 = self
                .client
                .sadd(&index, index_channel(&app, channel.as_str()))
                .await?;
            let args = vec![
                member.user_id.clone(),
                member.user_info.clone().unwrap_or_default(),
                self.socket_field(socket),
                i64::MAX.to_string(),
            ];
            let _: Value = self
                .client
                .eval(
                    scripts::PRESENCE_JOIN,
                    self.keys.channel_keys(&app, channel.as_str())[..3].to_vec(),
                    args,
                )
                .await?;
        }
        let conns: Vec<(Arc<str>, u64)> = self
            .local_connections
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        for (app, n) in conns {
            let _: i64 = self.client.sadd(&index, index_connections(&app)).await?;
            let _: () = self
                .client
                .hset(
                    self.keys.app_connections(&app),
                    (self.cfg.node_id.as_str(), n as i64),
                )
                .await?;
        }
        Ok(())
    }

    fn update_ready(&self) {
        let ready = self.client.is_connected()
            && self.subscriber.is_connected()
            && !self.resyncing.load(Ordering::Acquire);
        let was = self.ready.swap(ready, Ordering::AcqRel);
        if was != ready {
            metrics::gauge!("herald_bus_connected").set(if ready { 1.0 } else { 0.0 });
            if ready {
                tracing::info!("cluster bus ready");
            } else {
                tracing::warn!("cluster bus not ready");
            }
        }
    }
}

async fn receive_loop(inner: Arc<Inner>) {
    let mut rx = inner.subscriber.message_rx();
    loop {
        match rx.recv().await {
            Ok(message) => {
                let Some(bytes) = message.value.into_bytes() else {
                    continue;
                };
                let Some(msg) = wire::decode(bytes) else {
                    tracing::warn!("dropped a malformed bus message");
                    continue;
                };
                metrics::counter!("herald_bus_messages_received_total").increment(1);
                metrics::histogram!("herald_bus_lag_seconds")
                    .record(now_us().saturating_sub(msg.published_at_us) as f64 / 1e6);
                if let Some(sink) = inner.sink.get() {
                    sink.deliver(msg);
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::error!(lost = n, "bus receiver fell behind; messages were lost");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn flush_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.cfg.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.flush_now.notified() => {}
        }
        if inner.client.is_connected() {
            if let Err(e) = inner.flush_counts().await {
                tracing::debug!(error = %e, "flushing subscription counts failed; retrying");
            }
            inner.drop_idle_topics().await;
        }
    }
}

async fn lease_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.cfg.lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        inner.update_ready();
        if !inner.client.is_connected() {
            continue;
        }
        if let Err(e) = inner.renew_lease().await {
            tracing::warn!(error = %e, "renewing the node lease failed");
        }
        inner.reap_expired().await;
    }
}

/// After any reconnect: not ready, re-subscribe every topic, write this node's state again,
/// wait for the other nodes to do the same, then ready again. Notices are drained before the
/// work, so a connection that comes back while the work runs gets its own round.
async fn reconnect_loop(inner: Arc<Inner>) {
    let mut sub_rx = inner.subscriber.reconnect_rx();
    let mut cmd_rx = inner.client.reconnect_rx();
    let mut check = tokio::time::interval(Duration::from_millis(100));
    loop {
        use tokio::sync::broadcast::error::RecvError;
        let notice = tokio::select! {
            r = sub_rx.recv() => Some(r.map(|_| Notice::Reconnect)),
            r = cmd_rx.recv() => Some(r.map(|_| Notice::Reconnect)),
            _ = inner.topology_changed.notified() => {
                inner.topology_dirty.load(Ordering::Acquire).then_some(Ok(Notice::SlotsMoved))
            }
            _ = check.tick() => { inner.update_ready(); None }
        };
        match notice {
            None => continue,
            // The clients are gone: the bus is shutting down.
            Some(Err(RecvError::Closed)) => return,
            Some(Ok(Notice::Reconnect)) => {
                metrics::counter!("herald_bus_reconnects_total").increment(1)
            }
            Some(_) => {}
        }
        inner.resyncing.store(true, Ordering::Release);
        inner.update_ready();
        loop {
            let drained = drain(&mut sub_rx) + drain(&mut cmd_rx);
            metrics::counter!("herald_bus_reconnects_total").increment(drained);
            inner.topology_dirty.store(false, Ordering::Release);
            inner.last_trouble_ms.store(now_ms(), Ordering::Release);
            inner.recoveries.fetch_add(1, Ordering::AcqRel);
            let resynced = match inner.resubscribe_all().await {
                Ok(()) => inner.resync().await,
                Err(e) => Err(e),
            };
            if let Err(e) = resynced {
                tracing::warn!(error = %e, "restoring bus state after a reconnect failed; retrying");
                tokio::time::sleep(inner.cfg.reconnect_delay).await;
                continue;
            }
            tokio::time::sleep(inner.settle()).await;
            if sub_rx.is_empty()
                && cmd_rx.is_empty()
                && !inner.topology_dirty.load(Ordering::Acquire)
            {
                break;
            }
        }
        inner.resyncing.store(false, Ordering::Release);
        inner.update_ready();
    }
}

/// Redis Cluster: who serves which slots.
fn slot_owners(routing: Option<fred::types::cluster::ClusterRouting>) -> SlotOwners {
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
fn owner_of(owners: &SlotOwners, slot: u16) -> Option<&Server> {
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
async fn topology_loop(inner: Arc<Inner>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut sub_changes = inner.subscriber.cluster_change_rx();
    let mut cmd_changes = inner.client.cluster_change_rx();
    let mut tick = tokio::time::interval(inner.cfg.topology_check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The subscriber's map as last handled; the command client's is `handled_owners`.
    let mut known = slot_owners(inner.subscriber.cached_cluster_state());
    *inner.handled_owners.write() = slot_owners(inner.client.cached_cluster_state());
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
        }
        let (sub_now, cmd_now) = (
            slot_owners(inner.subscriber.cached_cluster_state()),
            slot_owners(inner.client.cached_cluster_state()),
        );
        // An empty map is a client between connections; the reconnect handles that.
        if sub_now.is_empty()
            || cmd_now.is_empty()
            || (sub_now == known && cmd_now == *inner.handled_owners.read())
        {
            continue;
        }
        tracing::info!("Redis Cluster slots changed hands; subscribing every topic again");
        metrics::counter!("herald_bus_topology_changes_total").increment(1);
        // Trouble first, then the counter: a publish that sees the new count sees the trouble.
        inner.last_trouble_ms.store(now_ms(), Ordering::Release);
        inner.recoveries.fetch_add(1, Ordering::AcqRel);
        *inner.handled_owners.write() = cmd_now;
        known = sub_now;
        inner.topology_dirty.store(true, Ordering::Release);
        inner.topology_changed.notify_one();
    }
}

/// Discards pending reconnect notices; how many there were (lagged ones included).
fn drain<T: Clone>(rx: &mut tokio::sync::broadcast::Receiver<T>) -> u64 {
    use tokio::sync::broadcast::error::TryRecvError;
    let mut n = 0;
    loop {
        match rx.try_recv() {
            Ok(_) => n += 1,
            Err(TryRecvError::Lagged(lost)) => n += lost,
            Err(TryRecvError::Empty | TryRecvError::Closed) => return n,
        }
    }
}

/// What woke the reconnect loop.
enum Notice {
    Reconnect,
    SlotsMoved,
}

/// Fails fast when the bus cannot serve, rather than queueing behind a dead connection.
fn check_ready(inner: &Inner) -> Result<(), BusError> {
    if inner.ready.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(BusError::Unavailable(
            "Redis is not connected or subscriptions are being restored".into(),
        ))
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn attach(&self, sink: Arc<dyn BusSink>) {
        let _ = self.inner.sink.set(sink);
    }

    async fn publish(&self, msg: BusMessage) -> Result<(), BusError> {
        let inner = &self.inner;
        check_ready(inner)?;
        // The counter before the trouble time (they are written in the other order).
        let recoveries = inner.recoveries.load(Ordering::Acquire);
        let settle = inner.settle().as_millis() as u64;
        if now_ms().saturating_sub(inner.last_trouble_ms.load(Ordering::Acquire)) < settle {
            return Err(BusError::Unavailable(
                "Redis is recovering; subscriptions are being restored".into(),
            ));
        }
        let topic = inner.keys.topic(&msg.app_id, &msg.channel);
        let slot = inner
            .sharded()
            .then(|| fred::util::redis_keyslot(topic.as_bytes()));
        let receivers = match inner.publish_raw(topic, wire::encode(&msg)).await {
            Ok(n) => n,
            Err(e) => {
                inner.last_trouble_ms.store(now_ms(), Ordering::Release);
                return Err(unavailable(e));
            }
        };
        if let Some(slot) = slot {
            inner.check_stale_slot(&msg, slot, receivers).await?;
        }
        // Give a reconnect notice that raced this command the chance to be seen.
        tokio::task::yield_now().await;
        if inner.recoveries.load(Ordering::Acquire) != recoveries {
            return Err(BusError::Unavailable(
                "Redis reconnected during the publish; retry".into(),
            ));
        }
        if slot.is_some_and(|slot| !inner.slot_owner_handled(slot)) {
            return Err(BusError::Unavailable(
                "Redis Cluster moved the channel's slot during the publish; retry".into(),
            ));
        }
        metrics::counter!("herald_bus_messages_published_total").increment(1);
        Ok(())
    }

    fn set_interest(&self, app_id: &str, channel: &ChannelName, local: usize) {
        let inner = &self.inner;
        let key: ChannelKey = (Arc::from(app_id), channel.clone());
        if local == 0 {
            inner.local_counts.remove(&key);
        } else {
            inner.local_counts.insert(key.clone(), local);
        }
        inner.dirty.lock().insert(key);
        let topic = inner.keys.topic(app_id, channel);
        let mut topics = inner.topics.lock();
        match topics.get_mut(&topic) {
            Some(t) => {
                t.idle_since = if local == 0 {
                    Some(Instant::now())
                } else {
                    None
                }
            }
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
                let inner = inner.clone();
                tokio::spawn(async move {
                    let ops = inner.topic_ops.lock().await;
                    let subscribed = inner.subscribe_topics(vec![topic.clone()]).await;
                    drop(ops);
                    match subscribed {
                        Ok(()) => {
                            if let Some(t) = inner.topics.lock().get_mut(&topic) {
                                t.state = TopicState::Subscribed;
                            }
                            let _ = tx.send(true);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "subscribing a topic failed");
                            inner.topics.lock().remove(&topic);
                            // Dropping tx tells the waiters it failed.
                        }
                    }
                });
            }
            None => {}
        }
    }

    async fn await_interest(&self, app_id: &str, channel: &ChannelName) -> Result<(), BusError> {
        let topic = self.inner.keys.topic(app_id, channel);
        let rx = match self.inner.topics.lock().get(&topic) {
            Some(Topic {
                state: TopicState::Subscribing(rx),
                ..
            }) => rx.clone(),
            _ => return Ok(()),
        };
        let mut rx = rx;
        let wait =
            tokio::time::timeout(self.inner.cfg.command_timeout * 2, rx.wait_for(|ok| *ok)).await;
        match wait {
            Ok(Ok(_)) => Ok(()),
            _ => Err(BusError::Unavailable(
                "could not subscribe to the channel's topic".into(),
            )),
        }
    }

    async fn presence_join(
        &self,
        app_id: &str,
        channel: &ChannelName,
        member: &Member,
        socket: SocketId,
        max_members: usize,
    ) -> Result<PresenceJoin, BusError> {
        let inner = &self.inner;
        check_ready(inner)?;
        let _: i64 = inner
            .client
            .sadd(
                inner.keys.node_index(&inner.cfg.node_id),
                index_channel(app_id, channel.as_str()),
            )
            .await
            .map_err(unavailable)?;
        let args = vec![
            member.user_id.clone(),
            member.user_info.clone().unwrap_or_default(),
            inner.socket_field(socket),
            max_members.to_string(),
        ];
        let keys = inner.keys.channel_keys(app_id, channel.as_str())[..3].to_vec();
        let (first, flat): (i64, Vec<String>) = inner
            .client
            .eval(scripts::PRESENCE_JOIN, keys, args)
            .await
            .map_err(unavailable)?;
        if first < 0 {
            return Ok(PresenceJoin::Full);
        }
        let key: ChannelKey = (Arc::from(app_id), channel.clone());
        if inner
            .local_members
            .insert((key.clone(), socket), member.clone())
            .is_none()
        {
            *inner.member_counts.entry(key).or_insert(0) += 1;
        }
        let members = flat
            .chunks(2)
            .filter_map(|kv| match kv {
                [id, info] => Some(Member {
                    user_id: id.clone(),
                    user_info: (!info.is_empty()).then(|| info.clone()),
                }),
                _ => None,
            })
            .collect();
        Ok(PresenceJoin::Joined {
            first: first == 1,
            members,
        })
    }

    async fn presence_leave(
        &self,
        app_id: &str,
        channel: &ChannelName,
        user_id: &str,
        socket: SocketId,
    ) -> Result<bool, BusError> {
        let inner = &self.inner;
        let key: ChannelKey = (Arc::from(app_id), channel.clone());
        if inner.local_members.remove(&(key.clone(), socket)).is_some() {
            inner.member_counts.remove_if_mut(&key, |_, n| {
                *n -= 1;
                *n == 0
            });
        }
        let keys = inner.keys.channel_keys(app_id, channel.as_str())[..3].to_vec();
        let last: i64 = inner
            .client
            .eval(
                scripts::PRESENCE_LEAVE,
                keys,
                vec![user_id.to_owned(), inner.socket_field(socket)],
            )
            .await
            .map_err(unavailable)?;
        Ok(last == 1)
    }

    async fn presence_members(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, BusError> {
        let map: HashMap<String, String> = self
            .inner
            .client
            .hgetall(self.inner.keys.members(app_id, channel.as_str()))
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

    async fn subscription_count(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<u64, BusError> {
        let counts: Vec<i64> = self
            .inner
            .client
            .hvals(self.inner.keys.subs(app_id, channel.as_str()))
            .await
            .map_err(unavailable)?;
        Ok(counts.into_iter().filter(|c| *c > 0).sum::<i64>() as u64)
    }

    async fn users_online(&self, app_id: &str, user_ids: &[String]) -> Result<Vec<bool>, BusError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let pipeline = inner.client.pipeline();
        for id in user_ids {
            let channel = format!("{}{id}", herald_protocol::channel::SERVER_TO_USER_PREFIX);
            let _: () = pipeline
                .hlen(inner.keys.members(app_id, &channel))
                .await
                .map_err(unavailable)?;
        }
        let counts: Vec<i64> = pipeline.all().await.map_err(unavailable)?;
        Ok(counts.into_iter().map(|n| n > 0).collect())
    }

    async fn cache_put(
        &self,
        app_id: &str,
        channel: &ChannelName,
        frame: Bytes,
        ttl: Duration,
    ) -> Result<(), BusError> {
        let key = self.inner.keys.cache(app_id, channel.as_str());
        let _: () = self
            .inner
            .client
            .set(
                key,
                frame,
                Some(Expiration::PX(ttl.as_millis().max(1) as i64)),
                None,
                false,
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn cache_get(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<Option<(Bytes, Duration)>, BusError> {
        let key = self.inner.keys.cache(app_id, channel.as_str());
        let pipeline = self.inner.client.pipeline();
        let _: () = pipeline.get(&key).await.map_err(unavailable)?;
        let _: () = pipeline.pttl(&key).await.map_err(unavailable)?;
        let (frame, ttl): (Option<Bytes>, i64) = pipeline.all().await.map_err(unavailable)?;
        Ok(match frame {
            Some(f) if ttl > 0 => Some((f, Duration::from_millis(ttl as u64))),
            _ => None,
        })
    }

    async fn channels(&self, app_id: &str, prefix: &str) -> Result<Vec<ChannelStats>, BusError> {
        let inner = &self.inner;
        let names: Vec<String> = inner
            .client
            .smembers(inner.keys.app_channels(app_id))
            .await
            .map_err(unavailable)?;
        let names: Vec<String> = names
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect();
        let mut out = Vec::new();
        let mut vacated = Vec::new();
        for name in names {
            let Ok(channel) = ChannelName::parse(&name) else {
                continue;
            };
            let count = self.subscription_count(app_id, &channel).await?;
            if count == 0 {
                vacated.push(name);
                continue;
            }
            let user_count = if name.starts_with("presence-") {
                let n: i64 = inner
                    .client
                    .hlen(inner.keys.members(app_id, &name))
                    .await
                    .map_err(unavailable)?;
                Some(n as u64)
            } else {
                None
            };
            out.push(ChannelStats {
                name,
                subscription_count: count,
                user_count,
            });
        }
        if !vacated.is_empty() {
            let _: Result<i64, _> = inner
                .client
                .srem(inner.keys.app_channels(app_id), vacated)
                .await;
        }
        Ok(out)
    }

    async fn connection_opened(&self, app_id: &str, limit: u64) -> Result<bool, BusError> {
        if limit == 0 {
            return Ok(true);
        }
        let inner = &self.inner;
        check_ready(inner)?;
        let counted: i64 = inner
            .client
            .eval(
                scripts::CONNECTION_OPEN,
                vec![inner.keys.app_connections(app_id)],
                vec![inner.cfg.node_id.clone(), limit.to_string()],
            )
            .await
            .map_err(unavailable)?;
        if counted == 1 {
            let mut n = inner
                .local_connections
                .entry(Arc::from(app_id))
                .or_insert(0);
            *n += 1;
            if *n == 1 {
                drop(n);
                let _: Result<i64, _> = inner
                    .client
                    .sadd(
                        inner.keys.node_index(&inner.cfg.node_id),
                        index_connections(app_id),
                    )
                    .await;
            }
        }
        Ok(counted == 1)
    }

    fn connection_closed(&self, app_id: &str) {
        let counted = match self.inner.local_connections.get_mut(app_id) {
            Some(mut n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        };
        if counted {
            let inner = self.inner.clone();
            let key = inner.keys.app_connections(app_id);
            tokio::spawn(async move {
                let _: Result<i64, _> = inner
                    .client
                    .hincrby(key, inner.cfg.node_id.as_str(), -1)
                    .await;
            });
        }
    }

    fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    async fn shutdown(&self) {
        let inner = &self.inner;
        inner.ready.store(false, Ordering::Release);
        if let Err(e) = inner.flush_counts().await {
            tracing::warn!(error = %e, "final subscription count flush failed");
        }
        inner.reap(&inner.cfg.node_id).await;
        let _: Result<i64, _> = inner
            .client
            .zrem(inner.keys.nodes(), inner.cfg.node_id.as_str())
            .await;
        tracing::info!(node = %inner.cfg.node_id, "left the cluster");
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
