//! One connection's protocol state: what it is subscribed to, who it signed in as, its
//! client-event budget. The node feeds it decoded frames; it answers through the connection's
//! outbound queue and changes hub and bus state.

use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::client::Resume;
use herald_protocol::presence::{parse_channel_data, parse_user_data, Member, UserData};
use herald_protocol::signature::{channel_auth_input, user_auth_input};
use herald_protocol::{server, ChannelKind, ChannelName, ClientMessage, ErrorCode, ProtocolError};

use crate::cluster::PresenceJoin;
use crate::connection::Connection;
use crate::errors::SubscribeError;
use crate::hub::{now_us, Hub};
use crate::metrics;
use crate::monitor::Activity;
use crate::rate::TokenBucket;
use crate::webhook::WebhookEvent;

#[derive(Debug)]
struct Subscription {
    /// The presence member this socket holds on the channel.
    presence_user: Option<String>,
}

mod subscriptions;
mod watchlist;

use subscriptions::Subscriptions;

/// Most users one sign-in may watch (more: the first 100 and a 4302 error).
pub const MAX_WATCHLIST: usize = 100;

/// Per-connection protocol state. Owned by the connection's reader task.
pub struct Session {
    hub: Arc<Hub>,
    conn: Arc<Connection>,
    subscriptions: Subscriptions,
    /// Boxed: most connections never sign in, and every connection holds a session.
    user: Option<Box<UserData>>,
    client_events: TokenBucket,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("socket_id", &self.conn.socket_id)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Starts a session and sends `pusher:connection_established`.
    pub fn start(hub: Arc<Hub>, conn: Arc<Connection>, activity_timeout_secs: u64) -> Self {
        conn.send(server::connection_established(
            conn.socket_id,
            activity_timeout_secs,
        ));
        let rate = conn.app.get().client_event_rate;
        Session {
            hub,
            conn,
            subscriptions: Subscriptions::default(),
            user: None,
            client_events: TokenBucket::new(rate),
        }
    }

    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }

    /// Whether the connection is signed in or holds a private or presence subscription
    /// (the "authorized connections" rule).
    pub fn is_authorized(&self) -> bool {
        self.user.is_some() || self.subscriptions.keys().any(|c| c.kind().needs_auth())
    }

    /// Handles one text frame. Errors are answered on the connection; nothing here closes it.
    pub async fn on_text(&mut self, frame: &mut [u8]) {
        match ClientMessage::decode(frame) {
            Ok(msg) => self.on_message(msg).await,
            Err(e) => {
                metrics::received("invalid");
                self.conn
                    .send_error(e.ws_code().map(ErrorCode::as_u16), &e.to_string());
            }
        }
    }

    async fn on_message(&mut self, msg: ClientMessage) {
        if self.conn.app.get().debug_frames {
            let (kind, channel) = match &msg {
                ClientMessage::Ping => ("pusher:ping", None),
                ClientMessage::Pong => ("pusher:pong", None),
                ClientMessage::Subscribe { channel, .. } => ("pusher:subscribe", Some(channel)),
                ClientMessage::Unsubscribe { channel } => ("pusher:unsubscribe", Some(channel)),
                ClientMessage::Signin { .. } => ("pusher:signin", None),
                ClientMessage::ClientEvent { channel, .. } => ("client event", Some(channel)),
                ClientMessage::WantsPositions => ("herald:positions", None),
            };
            let channel = channel.map_or("", |c| c.as_str());
            tracing::info!(app = %&self.conn.app.id, socket_id = %self.conn.socket_id, kind = %kind, channel = %channel, "frame received");
        }
        match msg {
            ClientMessage::Ping => {
                metrics::received("ping");
                self.conn.send(server::pong());
            }
            ClientMessage::Pong => metrics::received("pong"),
            ClientMessage::WantsPositions => {
                metrics::received("positions");
                self.conn.set_wants_positions();
            }
            ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
                position,
            } => {
                metrics::received("subscribe");
                if let Err(e) = self
                    .subscribe(
                        &channel,
                        auth.as_deref(),
                        channel_data.as_deref(),
                        position.as_ref(),
                    )
                    .await
                {
                    self.subscription_failed(&channel, &e);
                }
            }
            ClientMessage::Unsubscribe { channel } => {
                metrics::received("unsubscribe");
                self.unsubscribe(&channel).await;
            }
            ClientMessage::Signin { auth, user_data } => {
                metrics::received("signin");
                if let Err(e) = self.signin(&auth, &user_data).await {
                    let message = match &e {
                        SubscribeError::Bus(b) => format!("Sign-in failed: {b}"),
                        other => other.to_string(),
                    };
                    self.conn.send_error(e.ws_code(), &message);
                }
            }
            ClientMessage::ClientEvent {
                event,
                channel,
                data,
            } => {
                metrics::received("client_event");
                if let Err(e) = self.client_event(&event, &channel, &data).await {
                    self.conn
                        .send_error(e.ws_code().map(ErrorCode::as_u16), &e.to_string());
                }
            }
        }
    }

    fn subscription_failed(&self, channel: &ChannelName, e: &SubscribeError) {
        if let SubscribeError::Protocol(ProtocolError::InvalidSignature { .. }) = e {
            tracing::info!(app = %&self.conn.app.id, socket_id = %self.conn.socket_id, "subscription refused: invalid signature");
        }
        let message = e.to_string();
        self.hub
            .monitor
            .record(&self.conn.app.id, |_| Activity::SubscriptionRefused {
                socket_id: self.conn.socket_id.to_string(),
                channel: channel.to_string(),
                reason: message.clone(),
                status: e.subscription_error().map_or(400, |(_, status)| status),
            });
        self.conn.send_error(e.ws_code(), &message);
        if let Some((kind, status)) = e.subscription_error() {
            self.conn.send(server::subscription_error(
                channel.as_str(),
                kind,
                &message,
                status,
            ));
        }
    }

    async fn subscribe(
        &mut self,
        channel: &ChannelName,
        auth: Option<&str>,
        channel_data: Option<&str>,
        resume: Option<&Resume>,
    ) -> Result<(), SubscribeError> {
        let app = self.conn.app.get();
        if self.subscriptions.contains_key(channel) {
            if channel.kind() == ChannelKind::ServerToUser && self.is_own_user_channel(channel) {
                // Joined implicitly at sign-in; pusher-js subscribes explicitly afterwards.
                self.conn
                    .send(server::subscription_succeeded(channel.as_str()));
                return Ok(());
            }
            return Err(ProtocolError::AlreadySubscribed(channel.to_string()).into());
        }
        if self.subscriptions.len() >= app.max_channels_per_connection {
            return Err(SubscribeError::Forbidden(format!(
                "Too many subscriptions: at most {} channels per connection",
                app.max_channels_per_connection
            )));
        }
        let socket_id = self.conn.socket_id;
        let mut presence_member = None;
        match channel.kind() {
            ChannelKind::Public => {}
            ChannelKind::Watchlist => {
                return Err(SubscribeError::Forbidden(format!("{channel} is internal")));
            }
            ChannelKind::ServerToUser => {
                return Err(SubscribeError::Forbidden(format!(
                    "Cannot subscribe to {channel}: the connection is not signed in as that user"
                )));
            }
            ChannelKind::Private | ChannelKind::Encrypted => {
                let auth = auth.ok_or_else(|| ProtocolError::AuthRequired(channel.to_string()))?;
                app.verify_auth(&channel_auth_input(socket_id, channel.as_str(), None), auth)?;
            }
            ChannelKind::Presence => {
                let auth = auth.ok_or_else(|| ProtocolError::AuthRequired(channel.to_string()))?;
                app.verify_auth(
                    &channel_auth_input(socket_id, channel.as_str(), channel_data),
                    auth,
                )?;
                presence_member = Some(match (channel_data, &self.user) {
                    (Some(data), _) => parse_channel_data(data, app.max_user_info_bytes)?,
                    (None, Some(user)) => Member { user_id: user.id.clone(), user_info: user.user_info.clone() },
                    (None, None) => {
                        return Err(ProtocolError::InvalidChannelData(
                            "presence subscriptions need channel_data unless the connection is signed in".into(),
                        )
                        .into())
                    }
                });
            }
        }

        let joined = match presence_member {
            None => None,
            Some(member) => {
                let join = self
                    .hub
                    .cluster
                    .presence_join(
                        &app.id,
                        channel,
                        &member,
                        socket_id,
                        app.max_presence_members,
                    )
                    .await
                    .map_err(SubscribeError::Bus)?;
                match join {
                    PresenceJoin::Full => {
                        return Err(ProtocolError::PresenceFull(
                            channel.to_string(),
                            app.max_presence_members,
                        )
                        .into())
                    }
                    PresenceJoin::Joined { first, members } => Some((member, first, members)),
                }
            }
        };
        // A history channel's subscriber is held aside until its position (and any replay)
        // has been sent; client events and internal channels never keep history.
        let history = app.history_for(channel).cloned();
        match &history {
            Some(_) => self.hub.begin_resume(&self.conn, channel),
            None => {
                self.hub.add_subscriber(&self.conn, channel);
            }
        }
        self.subscriptions.insert(
            channel.clone(),
            Subscription {
                presence_user: joined.as_ref().map(|(m, ..)| m.user_id.clone()),
            },
        );
        if joined.is_some() {
            metrics::presence_members(1.0);
        }
        if channel.kind().needs_auth() {
            self.conn.set_authorized();
        }
        // The first local subscriber waits until this node receives the channel's topic and
        // the cluster counts it.
        if let Err(e) = self.hub.broker.await_interest(&app.id, channel).await {
            if let Some(sub) = self.subscriptions.remove(channel) {
                // Nobody was told this member arrived: it leaves without an announcement.
                self.leave_quietly(channel, sub).await;
            }
            return Err(SubscribeError::Bus(e));
        }
        let succeeded = match &joined {
            None => server::subscription_succeeded(channel.as_str()),
            Some((_, _, members)) => {
                server::presence_subscription_succeeded(channel.as_str(), members)
            }
        };
        match &history {
            None => {
                self.conn.send(succeeded);
            }
            Some(rule) => {
                let resumed = match self.hub.resume_read(&app, channel, rule, resume).await {
                    Ok(r) => r,
                    Err(e) => {
                        if let Some(sub) = self.subscriptions.remove(channel) {
                            self.leave_quietly(channel, sub).await;
                        }
                        return Err(SubscribeError::Bus(e));
                    }
                };
                let have = resumed.top.clone();
                let wants = self.conn.wants_positions();
                self.conn.send(match &resumed.top {
                    Some(top) if wants => server::with_position(&succeeded, &top.epoch, top.offset),
                    _ => succeeded,
                });
                if let Some((recovered, reason)) = resumed.verdict {
                    self.conn.send(server::recovery(
                        channel.as_str(),
                        recovered,
                        resumed.replay.len(),
                        reason,
                    ));
                }
                for event in &resumed.replay {
                    self.conn.send(self.conn.pick(event).clone());
                }
                self.hub.finish_resume(&self.conn, channel, have.as_ref());
            }
        };
        if channel.is_cache() {
            self.send_cached(channel).await;
        }
        if let Some((member, true, _)) = &joined {
            self.hub
                .announce_arrival(&app, channel, member, Some(socket_id))
                .await;
        }
        self.hub.count_changed(&app.id, channel);
        self.hub.monitor.record(&app.id, |_| Activity::Subscribed {
            socket_id: socket_id.to_string(),
            channel: channel.to_string(),
        });
        Ok(())
    }

    /// A cache channel's last event for a new subscriber, or `pusher:cache_miss`.
    async fn send_cached(&self, channel: &ChannelName) {
        match self.hub.cluster.cache_get(&self.conn.app.id, channel).await {
            Ok(Some((frame, _))) => self.conn.send(frame),
            Ok(None) => {
                self.hub.webhook(
                    &self.conn.app.id,
                    WebhookEvent::CacheMiss {
                        channel: channel.to_string(),
                    },
                );
                self.conn.send(server::cache_miss(channel.as_str()))
            }
            Err(e) => {
                tracing::warn!(app = %&self.conn.app.id, error = %e, "cache read failed");
                self.conn.send(server::cache_miss(channel.as_str()))
            }
        };
    }

    fn is_own_user_channel(&self, channel: &ChannelName) -> bool {
        matches!((&self.user, channel.server_to_user_id()), (Some(u), Some(id)) if u.id == id)
    }

    async fn unsubscribe(&mut self, channel: &ChannelName) {
        if self.is_own_user_channel(channel) {
            return; // the user channel lasts as long as the sign-in
        }
        if let Some(sub) = self.subscriptions.remove(channel) {
            self.leave(channel, sub).await;
            self.hub
                .monitor
                .record(&self.conn.app.id, |_| Activity::Unsubscribed {
                    socket_id: self.conn.socket_id.to_string(),
                    channel: channel.to_string(),
                });
        }
    }

    async fn leave(&self, channel: &ChannelName, sub: Subscription) {
        if let Some(user_id) = self.remove_membership(channel, sub).await {
            self.hub
                .announce_departure(&self.conn.app.get(), channel, &user_id)
                .await;
        }
    }

    /// Leaves without announcing a departure: for a member whose arrival was never announced.
    async fn leave_quietly(&self, channel: &ChannelName, sub: Subscription) {
        self.remove_membership(channel, sub).await;
    }

    /// Drops the local subscription and the presence membership; returns the user whose last
    /// socket on the channel this was. A leave the cluster cannot record now is announced by
    /// the cluster later (see `ClusterState::presence_leave`).
    async fn remove_membership(&self, channel: &ChannelName, sub: Subscription) -> Option<String> {
        let app = self.conn.app.get();
        self.hub.remove_subscriber(&self.conn, channel);
        self.hub.count_changed(&app.id, channel);
        let user_id = sub.presence_user?;
        if channel.kind() != ChannelKind::ServerToUser {
            metrics::presence_members(-1.0);
        }
        match self
            .hub
            .cluster
            .presence_leave(&app.id, channel, &user_id, self.conn.socket_id)
            .await
        {
            Ok(true) => Some(user_id),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(app = %app.id, error = %e, "presence leave deferred until the cluster bus is back");
                None
            }
        }
    }

    async fn signin(&mut self, auth: &str, user_data: &str) -> Result<(), SubscribeError> {
        let app = self.conn.app.get();
        app.verify_auth(&user_auth_input(self.conn.socket_id, user_data), auth)?;
        let mut user = parse_user_data(user_data, app.max_user_info_bytes)?;
        if let Some(current) = &self.user {
            if current.id != user.id {
                return Err(ProtocolError::InvalidUserData(format!(
                    "this connection is already signed in as another user ({})",
                    current.id
                ))
                .into());
            }
            // Signing in again as the same user: nothing changes.
            self.conn.send(server::signin_success(user_data));
            return Ok(());
        }
        let watchlist_too_long = user.watchlist.len() > MAX_WATCHLIST;
        user.watchlist.truncate(MAX_WATCHLIST);

        // The user channel doubles as the user's cluster-wide sign-in record: its presence
        // membership says the user is online.
        let channel = ChannelName::server_to_user(&user.id)?;
        let member = Member {
            user_id: user.id.clone(),
            user_info: None,
        };
        let first = match self
            .hub
            .cluster
            .presence_join(&app.id, &channel, &member, self.conn.socket_id, usize::MAX)
            .await
        {
            Ok(PresenceJoin::Joined { first, .. }) => first,
            Ok(PresenceJoin::Full) => false,
            Err(e) => return Err(SubscribeError::Bus(e)),
        };
        self.conn.set_user_id(Arc::from(user.id.as_str()));
        self.conn.set_authorized();
        self.hub.add_subscriber(&self.conn, &channel);
        self.subscriptions.insert(
            channel,
            Subscription {
                presence_user: Some(user.id.clone()),
            },
        );
        self.conn.send(server::signin_success(user_data));

        if app.watchlist_events {
            if first {
                self.hub.publish_online_state(&app.id, &user.id, true).await;
            }
            if watchlist_too_long {
                self.conn.send_error(
                    Some(ErrorCode::WatchlistLimit.as_u16()),
                    &format!("Watchlist limit exceeded: only the first {MAX_WATCHLIST} user ids are watched"),
                );
            }
            self.watch(&user.watchlist).await;
        }
        self.user = Some(Box::new(user));
        Ok(())
    }

    async fn client_event(
        &mut self,
        event: &str,
        channel: &ChannelName,
        data: &str,
    ) -> Result<(), ProtocolError> {
        let app = self.conn.app.get();
        let reject = |why: String| Err(ProtocolError::ClientEventRejected(why));
        match channel.kind() {
            ChannelKind::Private | ChannelKind::Presence => {}
            ChannelKind::Encrypted => {
                return reject("client events are not supported on encrypted channels".into())
            }
            _ => return reject("only supported on private and presence channels".into()),
        }
        if !app.client_events {
            return reject("client events are not enabled for this app".into());
        }
        let Some(sub) = self.subscriptions.get(channel) else {
            return reject(format!("not subscribed to channel {channel}"));
        };
        if data.len() > app.max_event_data_bytes {
            return reject(format!(
                "data is {} bytes, over the limit of {}",
                data.len(),
                app.max_event_data_bytes
            ));
        }
        // A changed client_event_rate applies from the next event on.
        self.client_events.set_rate(app.client_event_rate);
        if !self.client_events.try_take() {
            metrics::rate_limited(&app.id);
            return Err(ProtocolError::ClientEventRateLimited(app.client_event_rate));
        }
        let frame = Bytes::from(server::channel_event(
            event,
            channel.as_str(),
            data,
            sub.presence_user.as_deref(),
        ));
        self.hub.webhook(
            &app.id,
            WebhookEvent::ClientEvent {
                channel: channel.to_string(),
                event: event.to_owned(),
                data: data.to_owned(),
                socket_id: self.conn.socket_id.to_string(),
                user_id: sub.presence_user.clone(),
            },
        );
        let sockets = match self
            .hub
            .publish(&app.id, channel, frame, Some(self.conn.socket_id), now_us())
            .await
        {
            Ok(n) => n,
            Err(e) => return reject(format!("the cluster bus is unavailable ({e})")),
        };
        self.hub
            .monitor
            .record(&app.id, |payloads| Activity::ClientEvent {
                channel: channel.to_string(),
                event: event.to_owned(),
                size: data.len(),
                socket_id: self.conn.socket_id.to_string(),
                sockets,
                data: payloads.then(|| data.to_owned()),
            });
        Ok(())
    }

    /// Leaves every channel and releases the connection. Call once, when the socket is gone.
    pub async fn close(mut self) {
        let subs = self.subscriptions.take_all();
        for (channel, sub) in subs {
            self.leave(&channel, sub).await;
        }
        self.hub.forget(self.conn.socket_id);
        self.hub.cluster.connection_closed(&self.conn.app.id);
    }
}
