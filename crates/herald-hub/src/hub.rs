//! The hub: every local connection's channel subscriptions, and fan-out.
//!
//! Maps are sharded (`DashMap`) per app; a publish takes a shard lock only long enough to clone
//! the channel's `Arc`, then a read lock on that one channel while it pushes the shared frame
//! into each subscriber's bounded queue. Nothing on the publish path waits on a slow client.
//!
//! The hub is the only way into the cluster: sessions and the node call hub operations
//! ([`crate::operations`]), and the hub talks to the [`Broker`] and the [`ClusterState`].

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use dashmap::DashMap;
use herald_protocol::presence::Member;
use herald_protocol::server::Position;
use herald_protocol::{server, ChannelKind, ChannelName, ErrorCode, SocketId};
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{App, HistoryRule};
use crate::cluster::{Broker, BusMessage, BusPayload, Cluster, ClusterState, PublishError};
use crate::connection::{Connection, Framed};
use crate::counts::CountNotices;
use crate::history::{Admit, StreamState};
use crate::live::{Apps, AppsListener, AppsWriter, LiveApp};
use crate::metrics;
use crate::monitor::Monitor;
use crate::outbox::Pushed;
use crate::webhook::{WebhookEvent, WebhookSink};

/// Why connections of a terminated user are closed. They close with 4200
/// ([`ErrorCode::ReconnectImmediately`]): pusher-js reconnects at once, and the app decides by
/// refusing to sign the user in again (4009 would stop pusher-js for good).
pub const TERMINATED: &str = "Connection terminated by the app";

#[derive(Debug, Default)]
pub(crate) struct LocalChannel {
    pub(crate) subscribers: RwLock<HashMap<SocketId, Arc<Connection>>>,
    /// History channels only: what the node delivered last, and what it holds back (see
    /// `history.rs`). Locked before `subscribers` where both are taken.
    pub(crate) stream: parking_lot::Mutex<StreamState>,
}

impl LocalChannel {
    /// Subscribers and connections resuming: what the node counts for the channel. The stream
    /// is locked before the subscribers, as everywhere both are taken (the other order
    /// deadlocked two subscribes racing on a history channel).
    fn local_count(&self) -> usize {
        let stream = self.stream.lock();
        self.subscribers.read().len() + stream.resuming.len()
    }
}

/// Settings the hub needs from the node.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub node_id: String,
    /// Bound of each connection's outbound queue, in bytes.
    pub outbox_bytes: usize,
}

pub struct Hub {
    pub(crate) webhooks: OnceLock<Arc<dyn WebhookSink>>,
    pub(crate) counts: parking_lot::Mutex<CountNotices>,
    node_id: Arc<str>,
    /// This process's tag on bus messages: the node id plus a random suffix, so two processes
    /// that were (wrongly) given one node id still deliver each other's messages.
    pub(crate) origin: Arc<str>,
    /// The apps and their channels: swapped whole when apps change (see `live.rs`).
    pub(crate) apps: arc_swap::ArcSwap<Apps>,
    pub(crate) apps_writer: AppsWriter,
    pub(crate) apps_listener: OnceLock<Arc<dyn AppsListener>>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) cluster: Arc<dyn ClusterState>,
    connections: DashMap<SocketId, Arc<Connection>>,
    config: HubConfig,
    /// The hub's own background work (count announcements, departures the cluster reports).
    pub(crate) tasks: TaskTracker,
    pub(crate) cancel: CancellationToken,
    me: std::sync::Weak<Hub>,
    /// What the debug console shows.
    pub(crate) monitor: Arc<Monitor>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

pub use crate::clock::now_us;

impl Hub {
    /// Builds the hub, attaches it to the broker as the receiver of remote messages, and starts
    /// its background work on `tasks` until `cancel` fires.
    pub fn new(
        config: HubConfig,
        apps: Apps,
        cluster: Cluster,
        tasks: TaskTracker,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        crate::metrics::apps_loaded(apps.len());
        let hub = Arc::new_cyclic(|me| Hub {
            me: me.clone(),
            monitor: Monitor::new(&config.node_id),
            webhooks: OnceLock::new(),
            counts: parking_lot::Mutex::new(CountNotices::default()),
            node_id: Arc::from(config.node_id.as_str()),
            origin: Arc::from(format!("{}#{:016x}", config.node_id, rand::random::<u64>())),
            apps: arc_swap::ArcSwap::from_pointee(apps),
            apps_writer: AppsWriter::default(),
            apps_listener: OnceLock::new(),
            broker: cluster.broker,
            cluster: cluster.state,
            connections: DashMap::new(),
            config,
            tasks,
            cancel,
        });
        hub.broker.attach(hub.clone());
        if tokio::runtime::Handle::try_current().is_ok() {
            hub.tasks.spawn(crate::counts::count_notifier(
                Arc::downgrade(&hub),
                hub.cancel.clone(),
            ));
            hub.tasks.spawn(crate::console::console_loop(
                Arc::downgrade(&hub),
                hub.cancel.clone(),
            ));
        }
        hub
    }

    /// Hands the hub the node's webhook sender. Called once, at start-up.
    pub fn set_webhooks(&self, sink: Arc<dyn WebhookSink>) {
        let _ = self.webhooks.set(sink);
    }

    /// Emits a webhook event if the app has webhooks. Internal channels never produce any.
    pub(crate) fn webhook(&self, app_id: &str, event: WebhookEvent) {
        if herald_protocol::channel::is_internal(event.channel()) {
            return;
        }
        let Some(sink) = self.webhooks.get() else {
            return;
        };
        if self.app_by_id(app_id).is_some_and(|a| a.has_webhooks()) {
            sink.emit(app_id, event);
        }
    }

    /// Bound of each connection's outbound queue, in bytes.
    pub(crate) fn outbox_bytes(&self) -> usize {
        self.config.outbox_bytes
    }

    /// Every channel with local subscribers, of every app.
    pub(crate) fn local_channels(&self) -> Vec<(String, ChannelName, Arc<LocalChannel>)> {
        let mut out = Vec::new();
        for live in self.apps.load().live_apps() {
            for e in live.channels.iter() {
                out.push((live.id.clone(), e.key().clone(), e.value().clone()));
            }
        }
        out
    }

    /// What the debug console shows (the node records connections and webhooks into it).
    pub fn monitor(&self) -> &Arc<Monitor> {
        &self.monitor
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Registers a new connection (after the node has admitted it). An app removed or
    /// disabled since the admission closes it at once, as if it had been open then.
    pub fn connect(&self, socket_id: SocketId, app: Arc<App>) -> Arc<Connection> {
        let live = self
            .live_app(&app.id)
            .unwrap_or_else(|| LiveApp::detached((*app).clone()));
        let conn = Arc::new(Connection::new(socket_id, live, self.config.outbox_bytes));
        self.connections.insert(socket_id, conn.clone());
        match self.app_by_id(&app.id) {
            None => conn.outbox.close(
                ErrorCode::AppDoesNotExist.as_u16(),
                crate::errors::APP_DELETED,
            ),
            Some(now) if !now.enabled => conn
                .outbox
                .close(ErrorCode::AppDisabled.as_u16(), crate::errors::APP_DISABLED),
            Some(_) => {}
        }
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
        let entry = conn.app.channels.entry(channel.clone()).or_insert_with(|| {
            metrics::channels(1.0);
            Arc::default()
        });
        let stream = entry.stream.lock();
        let mut subs = entry.subscribers.write();
        if subs.insert(conn.socket_id, conn.clone()).is_none() {
            metrics::subscriptions(1.0);
        }
        let n = subs.len() + stream.resuming.len();
        drop((subs, stream));
        self.broker.set_interest(&conn.app.id, channel, n);
        n
    }

    /// The channel's local state, created if needed (a subscriber is about to arrive).
    pub(crate) fn local_channel(
        &self,
        conn: &Connection,
        channel: &ChannelName,
    ) -> Option<Arc<LocalChannel>> {
        Some(
            conn.app
                .channels
                .entry(channel.clone())
                .or_insert_with(|| {
                    metrics::channels(1.0);
                    Arc::default()
                })
                .clone(),
        )
    }

    /// Tells the broker how many local subscribers (resuming ones included) a channel has.
    pub(crate) fn recount(&self, app_id: &str, channel: &ChannelName, ch: &LocalChannel) {
        let n = ch.local_count();
        self.broker.set_interest(app_id, channel, n);
    }

    /// Removes a local subscriber; returns the channel's remaining local count.
    pub(crate) fn remove_subscriber(&self, conn: &Connection, channel: &ChannelName) -> usize {
        let mut remaining = 0;
        let removed = conn.app.channels.remove_if(channel, |_, ch| {
            let mut stream = ch.stream.lock();
            let was_resuming = stream.resuming.remove(&conn.socket_id).is_some();
            let mut subs = ch.subscribers.write();
            if subs.remove(&conn.socket_id).is_some() || was_resuming {
                metrics::subscriptions(-1.0);
            }
            remaining = subs.len() + stream.resuming.len();
            self.broker.set_interest(&conn.app.id, channel, remaining);
            remaining == 0
        });
        if removed.is_some() {
            metrics::channels(-1.0);
        }
        remaining
    }

    /// Whether `conn` is a local subscriber of `channel`.
    pub fn is_subscribed(&self, conn: &Connection, channel: &ChannelName) -> bool {
        conn.app
            .channels
            .get(channel)
            .is_some_and(|ch| ch.subscribers.read().contains_key(&conn.socket_id))
    }

    pub(crate) fn channel(&self, app_id: &str, channel: &ChannelName) -> Option<Arc<LocalChannel>> {
        self.apps
            .load()
            .live(app_id)?
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
    /// A history channel's event (`position` given, `frame` carrying it) goes through the
    /// channel's stream state first (see [`Hub::deliver_framed`]).
    pub fn deliver_local(
        &self,
        app_id: &str,
        channel: &ChannelName,
        frame: &Bytes,
        exclude: Option<SocketId>,
        published_at_us: u64,
        position: Option<&Position>,
    ) -> usize {
        let Some(position) = position else {
            let Some(ch) = self.channel(app_id, channel) else {
                return 0;
            };
            return push_to(&ch.subscribers.read(), frame, exclude, published_at_us);
        };
        let base = server::without_position(frame, &position.epoch, position.offset)
            .map_or_else(|| frame.clone(), Bytes::from);
        let event = Framed {
            base,
            positioned: frame.clone(),
        };
        self.deliver_framed(app_id, channel, event, position, exclude, published_at_us)
    }

    /// Delivers a history channel's event: held for connections that are resuming, held back
    /// while the node catches up a gap, dropped if already delivered; each client gets it with
    /// or without its position, as it asked.
    pub(crate) fn deliver_framed(
        &self,
        app_id: &str,
        channel: &ChannelName,
        event: Framed,
        position: &Position,
        exclude: Option<SocketId>,
        published_at_us: u64,
    ) -> usize {
        let Some(ch) = self.channel(app_id, channel) else {
            return 0;
        };
        let mut stream = ch.stream.lock();
        match stream.admit(position, &event, exclude, published_at_us) {
            Admit::Deliver => push_framed(&ch.subscribers.read(), &event, exclude, published_at_us),
            Admit::Held => 0,
            Admit::Gap(after) => {
                drop(stream);
                if let Some(hub) = self.me() {
                    let (app_id, channel) = (app_id.to_owned(), channel.clone());
                    hub.clone()
                        .spawn(async move { hub.catch_up(&app_id, &channel, after).await });
                }
                0
            }
        }
    }

    /// Publishes a frame to a channel cluster-wide: hands it to the broker for the other nodes,
    /// then delivers it to this node's subscribers. When the broker says nothing was published,
    /// nothing is delivered here either; when it may have reached other nodes, this node's
    /// subscribers get it too and the error is returned.
    pub async fn publish(
        &self,
        app_id: &str,
        channel: &ChannelName,
        frame: Bytes,
        exclude: Option<SocketId>,
        published_at_us: u64,
    ) -> Result<usize, PublishError> {
        self.publish_kept(app_id, channel, frame, exclude, published_at_us, None)
            .await
    }

    /// [`Hub::publish`], keeping the event in the channel's history when `history` is given:
    /// the broker gives it its position, which this node adds to its own copy.
    pub(crate) async fn publish_kept(
        &self,
        app_id: &str,
        channel: &ChannelName,
        frame: Bytes,
        exclude: Option<SocketId>,
        published_at_us: u64,
        history: Option<&HistoryRule>,
    ) -> Result<usize, PublishError> {
        let started = std::time::Instant::now();
        let sent = self
            .broker
            .publish(
                BusMessage {
                    origin: self.origin.clone(),
                    app_id: Arc::from(app_id),
                    channel: channel.clone(),
                    exclude,
                    published_at_us,
                    position: None,
                    payload: BusPayload::Frame(frame.clone()),
                },
                history,
            )
            .await;
        if history.is_some() {
            metrics::history_append(started.elapsed());
        }
        let position = match &sent {
            Ok(position) => position.clone(),
            Err(PublishError::Partial { position, .. }) => position.clone(),
            // Nothing published; or, for a history channel, not known whether it was kept: if
            // it was, the next event shows the gap and the node catches up from the stream.
            Err(e) if !e.may_have_been_delivered() || history.is_some() => return Err(e.clone()),
            Err(_) => None,
        };
        let n = match &position {
            Some(p) => {
                let event = Framed {
                    positioned: Bytes::from(server::with_position(&frame, &p.epoch, p.offset)),
                    base: frame,
                };
                self.deliver_framed(app_id, channel, event, p, exclude, published_at_us)
            }
            None => self.deliver_local(app_id, channel, &frame, exclude, published_at_us, None),
        };
        metrics::sent_events(n as u64);
        sent.map(|_| n)
    }

    /// Closes every local connection subscribed to `channel` with `code` (terminate).
    pub(crate) fn close_subscribers(
        &self,
        app_id: &str,
        channel: &ChannelName,
        code: ErrorCode,
        message: &str,
    ) -> usize {
        let Some(ch) = self.channel(app_id, channel) else {
            return 0;
        };
        let subs = ch.subscribers.read();
        for conn in subs.values() {
            conn.outbox.close(code.as_u16(), message);
        }
        subs.len()
    }

    /// Sends a terminate-user message to the other nodes.
    pub(crate) async fn publish_terminate(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<(), PublishError> {
        self.broker
            .publish(
                BusMessage {
                    origin: self.origin.clone(),
                    app_id: Arc::from(app_id),
                    channel: channel.clone(),
                    exclude: None,
                    published_at_us: now_us(),
                    position: None,
                    payload: BusPayload::TerminateUser,
                },
                None,
            )
            .await
            .map(|_| ())
    }

    /// Announces a member's departure on its channel, cluster-wide: `member_removed` to the
    /// channel's subscribers and the webhook; for a user channel (the user's last sign-in is
    /// gone), `offline` to the users watching it.
    pub(crate) async fn announce_departure(&self, app: &App, channel: &ChannelName, user_id: &str) {
        if channel.kind() == ChannelKind::ServerToUser {
            if app.watchlist_events {
                self.publish_online_state(&app.id, user_id, false).await;
            }
            return;
        }
        self.webhook(
            &app.id,
            WebhookEvent::MemberRemoved {
                channel: channel.to_string(),
                user_id: user_id.to_owned(),
            },
        );
        let frame = Bytes::from(server::member_removed(channel.as_str(), user_id));
        if let Err(e) = self.publish(&app.id, channel, frame, None, now_us()).await {
            tracing::warn!(app = %app.id, error = %e, "member_removed not published");
        }
    }

    /// Announces a member's arrival: `member_added` to the channel's subscribers but `exclude`
    /// and the webhook; for a user channel, `online` to the users watching it.
    pub(crate) async fn announce_arrival(
        &self,
        app: &App,
        channel: &ChannelName,
        member: &Member,
        exclude: Option<SocketId>,
    ) {
        if channel.kind() == ChannelKind::ServerToUser {
            if app.watchlist_events {
                self.publish_online_state(&app.id, &member.user_id, true)
                    .await;
            }
            return;
        }
        self.webhook(
            &app.id,
            WebhookEvent::MemberAdded {
                channel: channel.to_string(),
                user_id: member.user_id.clone(),
            },
        );
        let frame = Bytes::from(server::member_added(channel.as_str(), member));
        if let Err(e) = self
            .publish(&app.id, channel, frame, exclude, now_us())
            .await
        {
            tracing::warn!(app = %app.id, error = %e, "member_added not published");
        }
    }

    /// Publishes a user's online or offline change to the connections watching it.
    pub(crate) async fn publish_online_state(&self, app_id: &str, user_id: &str, online: bool) {
        let Ok(channel) = ChannelName::watchlist(user_id) else {
            return;
        };
        let ids = [user_id.to_owned()];
        let frame = if online {
            server::watchlist_events(&ids, &[])
        } else {
            server::watchlist_events(&[], &ids)
        };
        if let Err(e) = self
            .publish(app_id, &channel, Bytes::from(frame), None, now_us())
            .await
        {
            tracing::warn!(app = %app_id, error = %e, "watchlist change not published");
        }
    }

    /// Runs `work` on the hub's task tracker (announcements the cluster asks for from a
    /// callback that must not block).
    pub(crate) fn spawn<F>(self: &Arc<Self>, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.tasks.spawn(work);
        }
    }
}

impl Hub {
    /// The hub's own `Arc`, for callbacks that start work.
    pub(crate) fn me(&self) -> Option<Arc<Hub>> {
        self.me.upgrade()
    }
}

/// Pushes a frame to every subscriber but `exclude`; how many queued it.
pub(crate) fn push_to(
    subs: &HashMap<SocketId, Arc<Connection>>,
    frame: &Bytes,
    exclude: Option<SocketId>,
    published_at_us: u64,
) -> usize {
    let mut delivered = 0;
    for (socket_id, conn) in subs {
        if Some(*socket_id) == exclude {
            continue;
        }
        if conn.send_timed(frame.clone(), published_at_us) == Pushed::Queued {
            delivered += 1;
        }
    }
    delivered
}

/// Pushes a history channel's event to every subscriber but `exclude`, each in the form it
/// asked for; how many queued it.
pub(crate) fn push_framed(
    subs: &HashMap<SocketId, Arc<Connection>>,
    event: &Framed,
    exclude: Option<SocketId>,
    published_at_us: u64,
) -> usize {
    let mut delivered = 0;
    for (socket_id, conn) in subs {
        if Some(*socket_id) == exclude {
            continue;
        }
        if conn.send_timed(conn.pick(event).clone(), published_at_us) == Pushed::Queued {
            delivered += 1;
        }
    }
    delivered
}
