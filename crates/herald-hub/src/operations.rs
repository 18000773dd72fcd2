//! What the node asks of the hub on behalf of HTTP API callers and new connections. Each rule
//! that spans the cluster lives here once ("keep the cache entry, then publish", admission,
//! channel queries), so the node only translates HTTP and WebSocket into these calls.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::api::{InfoAttrs, Publish};
use herald_protocol::presence::Member;
use herald_protocol::{channel, server, ChannelKind, ChannelName, ErrorCode};

use crate::app::App;
use crate::cluster::{BusError, CachePut, ChannelStats, History, PublishError};
use crate::errors::{Refusal, TriggerError, TriggerFailure};
use crate::hub::{Hub, TERMINATED};
use crate::monitor::Activity;

/// What the API tells about one channel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelInfo {
    pub occupied: bool,
    pub subscription_count: Option<u64>,
    pub user_count: Option<u64>,
    /// Asked for (`info=cache`): the cached event frame and its remaining time, if any.
    pub cache: Option<Option<(Bytes, Duration)>>,
}

impl Hub {
    /// `Ok` when the node can serve cluster-wide requests; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        self.broker.readiness()
    }

    /// Finds the app of a WebSocket handshake and checks what the app allows.
    pub fn admit(
        &self,
        app_key: &str,
        protocol: Option<&str>,
        origin: Option<&str>,
    ) -> Result<Arc<App>, Refusal> {
        let app = self
            .app_by_key(app_key)
            .ok_or_else(|| Refusal::UnknownApp(app_key.to_owned()))?;
        if !app.enabled {
            return Err(Refusal::AppDisabled);
        }
        if let Some(p) = protocol {
            match p.parse::<u32>() {
                // pusher-js sends 7; 4 to 6 differ only in details Herald does not use.
                Ok(v) if (4..=7).contains(&v) => {}
                Ok(v) => return Err(Refusal::UnsupportedProtocol(v)),
                Err(_) => return Err(Refusal::InvalidVersion(p.to_owned())),
            }
        }
        if !app.origin_allowed(origin) {
            return Err(Refusal::Origin);
        }
        Ok(app)
    }

    /// Counts a new connection against its app's cluster-wide limit.
    pub async fn open_connection(&self, app: &App) -> Result<(), Refusal> {
        match self
            .cluster
            .connection_opened(&app.id, app.max_connections)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Refusal::AppFull),
            Err(e) => {
                tracing::warn!(app = %app.id, error = %e, "connection refused: bus unavailable");
                Err(Refusal::Bus)
            }
        }
    }

    /// Publishes an API event to each of its channels in order: for a cache channel the event
    /// is kept first, so a subscriber who arrives just after the publish gets it. Stops at the
    /// first channel that fails and says which channels got the event.
    pub async fn trigger(
        &self,
        app: &App,
        publish: &Publish,
        arrived_us: u64,
    ) -> Result<(), TriggerError> {
        let fail = |i: usize, failure: TriggerFailure| TriggerError {
            published: publish.channels[..i].to_vec(),
            failed: publish.channels[i].clone(),
            failure,
            not_attempted: publish.channels[i + 1..].to_vec(),
        };
        if let Err(why) = self.readiness() {
            return Err(fail(0, PublishError::NotPublished(why).into()));
        }
        for (i, channel) in publish.channels.iter().enumerate() {
            let frame = Bytes::from(server::channel_event(
                &publish.name,
                channel.as_str(),
                &publish.data,
                None,
            ));
            if channel.is_cache() {
                match self
                    .cluster
                    .cache_put(
                        &app.id,
                        channel,
                        frame.clone(),
                        app.cache_ttl(),
                        app.max_cache_bytes,
                    )
                    .await
                {
                    Ok(CachePut::Stored) => {}
                    Ok(CachePut::Full { used, limit }) => {
                        crate::metrics::cache_refused(&app.id);
                        return Err(fail(i, TriggerFailure::CacheFull { used, limit }));
                    }
                    Err(e) => return Err(fail(i, TriggerFailure::Cache(e))),
                }
            }
            let sent = self
                .publish_kept(
                    &app.id,
                    channel,
                    frame,
                    publish.socket_id,
                    arrived_us,
                    app.history_for(channel),
                )
                .await;
            self.monitor.record(&app.id, |payloads| Activity::ApiEvent {
                channel: channel.to_string(),
                event: publish.name.clone(),
                size: publish.data.len(),
                sockets: *sent.as_ref().unwrap_or(&0),
                data: payloads.then(|| publish.data.clone()),
            });
            if let Err(e) = sent {
                return Err(fail(i, e.into()));
            }
        }
        Ok(())
    }

    /// One channel's attributes for the HTTP API.
    pub async fn channel_info(
        &self,
        app: &App,
        channel: &ChannelName,
        info: InfoAttrs,
    ) -> Result<ChannelInfo, BusError> {
        let count = self.cluster.subscription_count(&app.id, channel).await?;
        let mut out = ChannelInfo {
            occupied: count > 0,
            ..ChannelInfo::default()
        };
        if info.subscription_count {
            out.subscription_count = Some(count);
        }
        if info.user_count && channel.kind() == ChannelKind::Presence {
            out.user_count =
                Some(self.cluster.presence_members(&app.id, channel).await?.len() as u64);
        }
        if info.cache && channel.is_cache() {
            out.cache = Some(self.cluster.cache_get(&app.id, channel).await?);
        }
        Ok(out)
    }

    /// Occupied channels of an app whose names start with `prefix` (internal channels left
    /// out).
    pub async fn occupied_channels(
        &self,
        app: &App,
        prefix: &str,
    ) -> Result<Vec<ChannelStats>, BusError> {
        let mut channels = self.cluster.channels(&app.id, prefix).await?;
        channels.retain(|c| !channel::is_internal(&c.name) && c.subscription_count > 0);
        Ok(channels)
    }

    /// A history channel's stream after `after`, at most `limit` events (100 by default, at
    /// most the rule's size); `None` when no history rule matches the channel.
    pub async fn channel_history(
        &self,
        app: &App,
        channel: &ChannelName,
        after: u64,
        limit: Option<usize>,
    ) -> Result<Option<History>, BusError> {
        let Some(rule) = app.history_for(channel) else {
            return Ok(None);
        };
        let limit = limit.unwrap_or(100).min(rule.size);
        self.cluster
            .history(&app.id, channel, rule, after, limit, false)
            .await
            .map(Some)
    }

    /// A presence channel's members.
    pub async fn presence_users(
        &self,
        app: &App,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, BusError> {
        self.cluster.presence_members(&app.id, channel).await
    }

    /// Closes the connections signed in as the user of `user_channel` (its
    /// `#server-to-user-` channel) on every node, with 4200.
    pub async fn terminate_user(
        &self,
        app: &App,
        user_channel: &ChannelName,
    ) -> Result<(), PublishError> {
        let sent = self.publish_terminate(&app.id, user_channel).await;
        if sent.as_ref().is_ok() || sent.as_ref().is_err_and(|e| e.may_have_been_delivered()) {
            self.close_subscribers(
                &app.id,
                user_channel,
                ErrorCode::ReconnectImmediately,
                TERMINATED,
            );
        }
        sent
    }

    /// Leaves the cluster and stops the hub's background work.
    pub async fn shutdown(&self) {
        self.broker.shutdown().await;
        self.cancel.cancel();
    }
}
