//! The hub: every local connection's channel subscriptions, and fan-out.
//!
//! Maps are sharded (`DashMap`) per app; a publish takes a shard lock only long enough to clone
//! the channel's `Arc`, then a read lock on that one channel while it pushes the shared frame
//! into each subscriber's bounded queue. Nothing on the publish path waits on a slow client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use herald_protocol::{ChannelKind, ChannelName, SocketId};
use parking_lot::RwLock;

use crate::app::{App, Apps};
use crate::bus::{Bus, BusError, BusMessage, BusPayload, BusSink};
use crate::connection::Connection;
use crate::metrics;
use crate::outbox::Pushed;

/// Close code used when the app terminates a user's connections (see docs: 4200 makes
/// pusher-js reconnect at once, so the app decides by refusing to sign the user in again).
pub const TERMINATE_CODE: u16 = 4200;

#[derive(Debug, Default)]
struct LocalChannel {
    subscribers: RwLock<HashMap<SocketId, Arc<Connection>>>,
}

#[derive(Debug)]
struct AppState {
    channels: DashMap<ChannelName, Arc<LocalChannel>>,
}

/// Settings the hub needs from the node.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub node_id: String,
    /// Bound of each connection's outbound queue, in bytes.
    pub outbox_bytes: usize,
}

/// Channels whose subscription count changed, waiting to be announced.
#[derive(Debug, Default)]
struct CountNotices {
    /// channel → how many more rounds to check it (a cluster bus writes counts in batches, so
    /// a change is read once more after the first look).
    dirty: HashMap<(Arc<str>, ChannelName), u8>,
    /// channel → (last count announced, when).
    sent: HashMap<(Arc<str>, ChannelName), (u64, std::time::Instant)>,
}

/// Above this many subscribers, subscription counts go out at most every 5 seconds.
pub const COUNT_THROTTLE_ABOVE: u64 = 100;
const COUNT_THROTTLE: std::time::Duration = std::time::Duration::from_secs(5);
const COUNT_TICK: std::time::Duration = std::time::Duration::from_millis(100);

pub struct Hub {
    webhooks: std::sync::OnceLock<Arc<dyn crate::webhook::WebhookSink>>,
    counts: parking_lot::Mutex<CountNotices>,
    node_id: Arc<str>,
    /// This process's tag on bus messages: the node id plus a random suffix, so two processes
    /// that were (wrongly) given one node id still deliver each other's messages.
    origin: Arc<str>,
    apps: Apps,
    state: HashMap<String, AppState>,
    bus: Arc<dyn Bus>,
    connections: DashMap<SocketId, Arc<Connection>>,
    config: HubConfig,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// Unix time in microseconds.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Hub {
    /// Builds the hub and attaches it to the bus as the receiver of remote messages.
    pub fn new(config: HubConfig, apps: Apps, bus: Arc<dyn Bus>) -> Arc<Self> {
        let state = apps
            .iter()
            .map(|a| {
                (
                    a.id.clone(),
                    AppState {
                        channels: DashMap::new(),
                    },
                )
            })
            .collect();
        let hub = Arc::new(Hub {
            webhooks: std::sync::OnceLock::new(),
            counts: parking_lot::Mutex::new(CountNotices::default()),
            node_id: Arc::from(config.node_id.as_str()),
            origin: Arc::from(format!("{}#{:016x}", config.node_id, rand::random::<u64>())),
            apps,
            state,
            bus,
            connections: DashMap::new(),
            config,
        });
        hub.bus.attach(hub.clone());
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(count_notifier(Arc::downgrade(&hub)));
        }
        hub
    }

    /// Hands the hub the node's webhook sender. Called once, at start-up.
    pub fn set_webhooks(&self, sink: Arc<dyn crate::webhook::WebhookSink>) {
        let _ = self.webhooks.set(sink);
    }

    /// Emits a webhook event if the app has webhooks. Internal channels never produce any.
    pub(crate) fn webhook(&self, app_id: &str, event: crate::webhook::WebhookEvent) {
        if event.channel().starts_with('#') {
            return;
        }
        let Some(sink) = self.webhooks.get() else {
            return;
        };
        if self.apps.by_id(app_id).is_some_and(|a| a.webhooks) {
            sink.emit(app_id, event);
        }
    }

    /// Notes that a channel's subscription count changed (for `subscription_count` events).
    pub fn count_changed(&self, app_id: &str, channel: &ChannelName) {
        let wanted = self
            .apps
            .by_id(app_id)
            .is_some_and(|a| a.subscription_count_events);
        if !wanted
            || !matches!(
                channel.kind(),
                ChannelKind::Public | ChannelKind::Private | ChannelKind::Encrypted
            )
        {
            return;
        }
        self.counts
            .lock()
            .dirty
            .insert((Arc::from(app_id), channel.clone()), 2);
    }

    /// Announces changed counts cluster-wide; big channels at most every 5 s.
    async fn announce_counts(&self) {
        let due: Vec<(Arc<str>, ChannelName)> = {
            let mut c = self.counts.lock();
            let keys: Vec<_> = c.dirty.keys().cloned().collect();
            let mut due = Vec::new();
            for key in keys {
                let throttled = c.sent.get(&key).is_some_and(|(n, at)| {
                    *n > COUNT_THROTTLE_ABOVE && at.elapsed() < COUNT_THROTTLE
                });
                if throttled {
                    continue;
                }
                if let Some(rounds) = c.dirty.get_mut(&key) {
                    *rounds -= 1;
                    if *rounds == 0 {
                        c.dirty.remove(&key);
                    }
                }
                due.push(key);
            }
            due
        };
        for (app_id, channel) in due {
            let Ok(count) = self.bus.subscription_count(&app_id, &channel).await else {
                continue;
            };
            let key = (app_id.clone(), channel.clone());
            let unchanged = self
                .counts
                .lock()
                .sent
                .get(&key)
                .is_some_and(|(n, _)| *n == count);
            if unchanged {
                continue;
            }
            {
                let mut c = self.counts.lock();
                if count == 0 {
                    c.sent.remove(&key);
                } else {
                    c.sent.insert(key, (count, std::time::Instant::now()));
                }
            }
            if count > 0 {
                let frame = Bytes::from(herald_protocol::server::subscription_count(
                    channel.as_str(),
                    count,
                ));
                if let Err(e) = self.publish(&app_id, &channel, frame, None, now_us()).await {
                    tracing::debug!(error = %e, "subscription count not announced");
                }
            }
        }
    }

    pub fn apps(&self) -> &Apps {
        &self.apps
    }

    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Registers a new connection (after the node has admitted it).
    pub fn connect(&self, socket_id: SocketId, app: Arc<App>) -> Arc<Connection> {
        let conn = Arc::new(Connection::new(socket_id, app, self.config.outbox_bytes));
        self.connections.insert(socket_id, conn.clone());
        conn
    }

    pub(crate) fn forget(&self, socket_id: SocketId) {
        self.connections.remove(&socket_id);
    }

    /// Every local connection (for drain).
    pub fn connections(&self) -> Vec<Arc<Connection>> {
        self.connections.iter().map(|e| e.value().clone()).collect()
    }

    /// Adds a local subscriber; returns the channel's local subscriber count.
    pub(crate) fn add_subscriber(&self, conn: &Arc<Connection>, channel: &ChannelName) -> usize {
        let Some(state) = self.state.get(&conn.app.id) else {
            return 0;
        };
        let entry = state.channels.entry(channel.clone()).or_insert_with(|| {
            metrics::channels(1.0);
            Arc::default()
        });
        let mut subs = entry.subscribers.write();
        if subs.insert(conn.socket_id, conn.clone()).is_none() {
            metrics::subscriptions(1.0);
        }
        let n = subs.len();
        self.bus.set_interest(&conn.app.id, channel, n);
        n
    }

    /// Removes a local subscriber; returns the channel's remaining local count.
    pub(crate) fn remove_subscriber(&self, conn: &Connection, channel: &ChannelName) -> usize {
        let Some(state) = self.state.get(&conn.app.id) else {
            return 0;
        };
        let mut remaining = 0;
        let removed = state.channels.remove_if(channel, |_, ch| {
            let mut subs = ch.subscribers.write();
            if subs.remove(&conn.socket_id).is_some() {
                metrics::subscriptions(-1.0);
            }
            remaining = subs.len();
            self.bus.set_interest(&conn.app.id, channel, remaining);
            remaining == 0
        });
        if removed.is_some() {
            metrics::channels(-1.0);
        }
        remaining
    }

    /// Whether `conn` is a local subscriber of `channel`.
    pub fn is_subscribed(&self, conn: &Connection, channel: &ChannelName) -> bool {
        self.channel(&conn.app.id, channel)
            .is_some_and(|ch| ch.subscribers.read().contains_key(&conn.socket_id))
    }

    fn channel(&self, app_id: &str, channel: &ChannelName) -> Option<Arc<LocalChannel>> {
        self.state
            .get(app_id)?
            .channels
            .get(channel)
            .map(|c| c.value().clone())
    }

    /// Local subscribers of a channel.
    pub fn local_subscriber_count(&self, app_id: &str, channel: &ChannelName) -> usize {
        self.channel(app_id, channel)
            .map(|c| c.subscribers.read().len())
            .unwrap_or(0)
    }

    /// Pushes an encoded frame to every local subscriber but `exclude`; returns how many got it.
    pub fn deliver_local(
        &self,
        app_id: &str,
        channel: &ChannelName,
        frame: &Bytes,
        exclude: Option<SocketId>,
        published_at_us: u64,
    ) -> usize {
        let Some(ch) = self.channel(app_id, channel) else {
            return 0;
        };
        let subs = ch.subscribers.read();
        let mut delivered = 0;
        for (socket_id, conn) in subs.iter() {
            if Some(*socket_id) == exclude {
                continue;
            }
            if conn.send_timed(frame.clone(), published_at_us) == Pushed::Queued {
                delivered += 1;
            }
        }
        delivered
    }

    /// Publishes a frame to a channel cluster-wide: hands it to the bus for the other nodes, then
    /// delivers it to this node's subscribers. When the bus refuses, nothing is delivered.
    pub async fn publish(
        &self,
        app_id: &str,
        channel: &ChannelName,
        frame: Bytes,
        exclude: Option<SocketId>,
        published_at_us: u64,
    ) -> Result<usize, BusError> {
        self.bus
            .publish(BusMessage {
                origin: self.origin.clone(),
                app_id: Arc::from(app_id),
                channel: channel.clone(),
                exclude,
                published_at_us,
                payload: BusPayload::Frame(frame.clone()),
            })
            .await?;
        let n = self.deliver_local(app_id, channel, &frame, exclude, published_at_us);
        self.record_delivery(n);
        Ok(n)
    }

    fn record_delivery(&self, n: usize) {
        metrics::sent_events(n as u64);
    }

    /// Closes every local connection subscribed to `channel` with `code` (terminate).
    pub fn close_subscribers(
        &self,
        app_id: &str,
        channel: &ChannelName,
        code: u16,
        message: &str,
    ) -> usize {
        let Some(ch) = self.channel(app_id, channel) else {
            return 0;
        };
        let subs = ch.subscribers.read();
        for conn in subs.values() {
            conn.outbox.close(code, message);
        }
        subs.len()
    }

    /// Closes a user's connections on every node.
    pub async fn terminate_user(&self, app_id: &str, user_id: &str) -> Result<(), BusError> {
        let channel =
            ChannelName::server_to_user(user_id).map_err(|e| BusError::Backend(e.to_string()))?;
        self.bus
            .publish(BusMessage {
                origin: self.origin.clone(),
                app_id: Arc::from(app_id),
                channel: channel.clone(),
                exclude: None,
                published_at_us: now_us(),
                payload: BusPayload::TerminateUser,
            })
            .await?;
        self.close_subscribers(
            app_id,
            &channel,
            TERMINATE_CODE,
            "Connection terminated by the app",
        );
        Ok(())
    }
}

async fn count_notifier(hub: std::sync::Weak<Hub>) {
    let mut tick = tokio::time::interval(COUNT_TICK);
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        hub.announce_counts().await;
    }
}

impl BusSink for Hub {
    fn channel_occupancy(&self, app_id: &str, channel: &ChannelName, occupied: bool) {
        let channel = channel.to_string();
        let event = if occupied {
            crate::webhook::WebhookEvent::ChannelOccupied { channel }
        } else {
            crate::webhook::WebhookEvent::ChannelVacated { channel }
        };
        self.webhook(app_id, event);
    }

    fn member_removed(&self, app_id: &str, channel: &ChannelName, user_id: &str) {
        self.webhook(
            app_id,
            crate::webhook::WebhookEvent::MemberRemoved {
                channel: channel.to_string(),
                user_id: user_id.to_owned(),
            },
        );
    }

    fn deliver(&self, msg: BusMessage) {
        if msg.origin == self.origin {
            return; // delivered locally when it was published
        }
        match &msg.payload {
            BusPayload::Frame(frame) => {
                let n = self.deliver_local(
                    &msg.app_id,
                    &msg.channel,
                    frame,
                    msg.exclude,
                    msg.published_at_us,
                );
                self.record_delivery(n);
            }
            BusPayload::TerminateUser => {
                self.close_subscribers(
                    &msg.app_id,
                    &msg.channel,
                    TERMINATE_CODE,
                    "Connection terminated by the app",
                );
            }
        }
    }
}
