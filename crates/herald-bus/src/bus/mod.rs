//! [`RedisBus`]: the cluster bus on Redis, one file per concern.
//!
//! - [`state`]: what the parts share: clients, the node's own record of its cluster state,
//!   readiness and the publish gate.
//! - [`topics`]: interest routing (a topic subscribed while the node has local subscribers).
//! - [`publish`]: one script per publish, and what its answer means.
//! - [`counts`]: subscription and connection counts, batched.
//! - [`presence`]: members, joins, leaves, and re-writing uncertain channels.
//! - [`lease`]: leases, reaping dead nodes, noticing this node was taken for dead.
//! - [`recovery`]: pings, the recovery round after any trouble, the flush loop.
//! - [`topology`]: Redis Cluster slot moves.
//! - [`queries`]: channel lists and counts for the API, the cache channels.
//!
//! Every background loop runs on one task tracker and stops with one cancellation token.

mod apps;
mod console;
mod counts;
mod lease;
mod presence;
mod publish;
mod queries;
mod recovery;
mod state;
mod topics;
mod topology;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use herald_hub::{
    Broker, BusError, BusMessage, BusSink, CachePut, ChannelStats, ClusterState, History,
    HistoryRule, NodeReport, PresenceJoin, PublishError,
};
use herald_protocol::presence::Member;
use herald_protocol::server::Position;
use herald_protocol::{ChannelName, SocketId};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connect::{self, Topology};
use crate::keys::Keys;
use crate::{wire, RedisBusConfig};
use state::{now_us, Gate, Health, Local, Recover, Shared};

pub struct RedisBus {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("node", &self.shared.cfg.node_id)
            .finish_non_exhaustive()
    }
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

impl RedisBus {
    /// Connects to Redis, registers this node, and starts the bus's loops on `tasks` until
    /// `cancel` fires.
    pub async fn connect(
        cfg: RedisBusConfig,
        tasks: TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Self, BusError> {
        let (client, subscriber, topology) = connect_until(&cfg).await?;
        let shared = Arc::new(Shared {
            keys: Keys::new(&cfg.key_prefix),
            cfg,
            topology,
            client,
            subscriber,
            sink: OnceLock::new(),
            health: Health::new(),
            gate: Gate::new(),
            topics: topics::Topics::new(),
            local: Local::default(),
            recover: Recover::new(),
            early_departures: Mutex::new(Vec::new()),
            tasks,
            cancel,
        });
        lease::measure_clock(&shared)
            .await
            .map_err(state::unavailable)?;
        // A restarted node with the same id (a StatefulSet pod) waits for its previous life's
        // lease to lapse, clears what that life left behind, then registers.
        lease::wait_for_own_lease(&shared).await?;
        lease::reap(&shared, &shared.cfg.node_id).await;
        let _: Option<String> = shared
            .client
            .getdel(shared.keys.reaped(&shared.cfg.node_id))
            .await
            .map_err(state::unavailable)?;
        // Listening on its liveness topic before it registers: a registered node that
        // reaches no one there is taken for crashed.
        topics::subscribe_for_life(&shared, shared.keys.alive(&shared.cfg.node_id))
            .await
            .map_err(state::unavailable)?;
        topics::subscribe_for_life(&shared, shared.keys.console_topic())
            .await
            .map_err(state::unavailable)?;
        topics::subscribe_for_life(&shared, shared.keys.apps_topic())
            .await
            .map_err(state::unavailable)?;
        lease::renew(&shared).await.map_err(state::unavailable)?;
        *shared.gate.handled_owners.write() =
            topology::slot_owners(shared.client.cached_cluster_state());
        let t = &shared.tasks;
        t.spawn(receive_loop(shared.clone()));
        t.spawn(recovery::flush_loop(shared.clone()));
        t.spawn(lease::lease_loop(shared.clone()));
        t.spawn(lease::crash_loop(shared.clone()));
        t.spawn(recovery::recovery_loop(shared.clone()));
        t.spawn(recovery::ping_loop(shared.clone()));
        if shared.sharded() {
            t.spawn(topology::topology_loop(shared.clone()));
        }
        shared.update_ready();
        tracing::info!(node = %shared.cfg.node_id, topology = ?shared.topology, "cluster bus connected");
        Ok(RedisBus { shared })
    }

    /// This node's id in Redis.
    pub fn node_id(&self) -> &str {
        &self.shared.cfg.node_id
    }
}

/// Hands every bus message from other nodes to the hub.
async fn receive_loop(inner: Arc<Shared>) {
    let mut rx = inner.subscriber.message_rx();
    let alive = inner.keys.alive(&inner.cfg.node_id);
    let console_topic = inner.keys.console_topic();
    let apps_topic = inner.keys.apps_topic();
    loop {
        let received = tokio::select! {
            r = rx.recv() => r,
            _ = inner.cancel.cancelled() => return,
        };
        match received {
            Ok(message) => {
                if *message.channel == *alive {
                    continue; // another node's liveness probe
                }
                if *message.channel == *apps_topic {
                    if let (Some(sink), Some(bytes)) =
                        (inner.sink.get(), message.value.into_bytes())
                    {
                        apps::receive(sink.as_ref(), &bytes);
                    }
                    continue;
                }
                if *message.channel == *console_topic {
                    if let (Some(sink), Some(bytes)) =
                        (inner.sink.get(), message.value.into_bytes())
                    {
                        sink.console(bytes);
                    }
                    continue;
                }
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

#[async_trait]
impl Broker for RedisBus {
    fn attach(&self, sink: Arc<dyn BusSink>) {
        let _ = self.shared.sink.set(sink);
        let early: Vec<_> = std::mem::take(&mut *self.shared.early_departures.lock());
        for (app, channel, users) in early {
            self.shared.members_departed(&app, &channel, users);
        }
    }

    async fn publish(
        &self,
        msg: BusMessage,
        history: Option<&HistoryRule>,
    ) -> Result<Option<Position>, PublishError> {
        publish::publish(&self.shared, msg, history).await
    }

    fn set_interest(&self, app_id: &str, channel: &ChannelName, local: usize) {
        counts::set_interest(&self.shared, app_id, channel, local);
    }

    async fn await_interest(&self, app_id: &str, channel: &ChannelName) -> Result<(), BusError> {
        let wait = self.shared.cfg.command_timeout * 2;
        let started = Instant::now();
        let topic = self.shared.keys.topic(app_id, channel);
        if let Some(mut rx) = self.shared.topics.pending(&topic) {
            match tokio::time::timeout(wait, rx.wait_for(|ok| *ok)).await {
                Ok(Ok(_)) => {}
                _ => {
                    return Err(BusError::Unavailable(
                        "could not subscribe to the channel's topic".into(),
                    ))
                }
            }
        }
        let left = wait
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        counts::await_counted(&self.shared, app_id, channel, left).await
    }

    fn readiness(&self) -> Result<(), String> {
        if self.shared.is_ready() {
            Ok(())
        } else {
            self.shared
                .readiness()
                .and(Err("cluster bus not ready".into()))
        }
    }

    async fn console_publish(&self, records: Bytes) {
        console::publish(&self.shared, records).await;
    }

    async fn console_watch(&self, here: &[(String, bool)]) -> HashMap<String, bool> {
        console::watch(&self.shared, here).await
    }

    async fn apps_changed(&self, origin: &str, ids: &[String]) {
        apps::publish(&self.shared, origin, ids).await;
    }

    async fn nodes(&self) -> Vec<NodeReport> {
        console::nodes(&self.shared).await
    }

    async fn report(&self, report: &NodeReport) {
        console::report(&self.shared, report).await;
    }

    async fn shutdown(&self) {
        let shared = &self.shared;
        shared.health.resyncing.store(true, Ordering::Release);
        shared.update_ready();
        if let Err(e) = counts::flush(shared).await {
            tracing::warn!(error = %e, "final subscription count flush failed");
        }
        lease::reap(shared, &shared.cfg.node_id).await;
        let _: Result<i64, _> = shared
            .client
            .zrem(shared.keys.nodes(), shared.cfg.node_id.as_str())
            .await;
        tracing::info!(node = %shared.cfg.node_id, "left the cluster");
    }
}

#[async_trait]
impl ClusterState for RedisBus {
    async fn presence_join(
        &self,
        app_id: &str,
        channel: &ChannelName,
        member: &Member,
        socket: SocketId,
        max_members: usize,
    ) -> Result<PresenceJoin, BusError> {
        presence::join(&self.shared, app_id, channel, member, socket, max_members).await
    }

    async fn presence_leave(
        &self,
        app_id: &str,
        channel: &ChannelName,
        user_id: &str,
        socket: SocketId,
    ) -> Result<bool, BusError> {
        presence::leave(&self.shared, app_id, channel, user_id, socket).await
    }

    async fn presence_members(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, BusError> {
        presence::members(&self.shared, app_id, channel).await
    }

    async fn subscription_count(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<u64, BusError> {
        queries::subscription_count(&self.shared, app_id, channel).await
    }

    async fn users_online(&self, app_id: &str, user_ids: &[String]) -> Result<Vec<bool>, BusError> {
        presence::users_online(&self.shared, app_id, user_ids).await
    }

    async fn cache_put(
        &self,
        app_id: &str,
        channel: &ChannelName,
        frame: Bytes,
        ttl: Duration,
        max_bytes: u64,
    ) -> Result<CachePut, BusError> {
        queries::cache_put(&self.shared, app_id, channel, frame, ttl, max_bytes).await
    }

    async fn cache_get(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<Option<(Bytes, Duration)>, BusError> {
        queries::cache_get(&self.shared, app_id, channel).await
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
        queries::history(&self.shared, app_id, channel, rule, after, limit, create).await
    }

    async fn channels(&self, app_id: &str, prefix: &str) -> Result<Vec<ChannelStats>, BusError> {
        queries::channels(&self.shared, app_id, prefix).await
    }

    async fn connection_opened(&self, app_id: &str, limit: u64) -> Result<bool, BusError> {
        if limit > 0 && !self.shared.is_ready() {
            return Err(BusError::Unavailable(
                "Redis is not connected or the cluster state is being restored".into(),
            ));
        }
        counts::connection_opened(&self.shared, app_id, limit).await
    }

    fn connection_closed(&self, app_id: &str) {
        counts::connection_closed(&self.shared, app_id);
    }
}
