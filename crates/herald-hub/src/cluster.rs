//! The cluster seam, split by role (as centrifuge splits its broker from its presence
//! manager): a [`Broker`] carries publications between nodes and routes them by interest, with a
//! [`BusSink`] going the other way; a [`ClusterState`] answers what only the whole cluster knows
//! (presence, counts, occupied channels, cache, connection limits). The hub holds both; nothing
//! else in the process talks to them. [`crate::LocalBus`] implements both for one node; the
//! Redis implementation lives in `herald-bus`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald_protocol::presence::Member;
use herald_protocol::server::Position;
use herald_protocol::{ChannelName, SocketId};

use crate::app::HistoryRule;
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
    /// Process that published it; that process has already delivered it locally.
    pub origin: Arc<str>,
    pub app_id: Arc<str>,
    pub channel: ChannelName,
    /// A connection not to deliver to (the publisher's own socket).
    pub exclude: Option<SocketId>,
    /// When the publish arrived at its first node, Unix microseconds (for latency metrics).
    pub published_at_us: u64,
    /// A history channel's event: its position in the channel's stream (the frame carries it
    /// too). `None` for everything else.
    pub position: Option<Position>,
    pub payload: BusPayload,
}

/// A cluster question or update that could not be answered.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BusError {
    #[error("the cluster bus is unavailable: {0}")]
    Unavailable(String),
    #[error("the cluster bus answered with an error: {0}")]
    Backend(String),
}

/// Why a publish did not get a clean confirmation. The HTTP API answers the first with 503
/// (safe to retry) and the other two with 504 (retrying may deliver twice).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PublishError {
    /// Nothing was published anywhere: the bus refused before handing it to Redis, or Redis
    /// ran it too late and it refused itself.
    #[error("nothing was published: {0}")]
    NotPublished(String),
    /// Handed to the cluster without a confirmation: it may have reached some or all
    /// subscribers (never later than about a second after it was sent).
    #[error("the publish was not confirmed and may have been delivered: {0}")]
    Unconfirmed(String),
    /// Confirmed by fewer nodes than hold subscribers of the channel: delivered to some.
    /// A history channel's event has its position all the same.
    #[error("delivered to {reached} of the {expected} nodes with subscribers of the channel")]
    Partial {
        reached: u64,
        expected: u64,
        position: Option<Position>,
    },
}

impl PublishError {
    /// Whether the message may have reached anyone (then the publisher's node delivers it to
    /// its own subscribers too).
    pub fn may_have_been_delivered(&self) -> bool {
        !matches!(self, PublishError::NotPublished(_))
    }
}

impl From<BusError> for PublishError {
    fn from(e: BusError) -> Self {
        PublishError::NotPublished(e.to_string())
    }
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

/// Outcome of keeping a cache channel's last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePut {
    Stored,
    /// The app's cache holds `used` bytes and the event would take it over `limit`.
    Full {
        used: u64,
        limit: u64,
    },
}

/// What a history channel's stream holds after a given offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// The stream's epoch and its last offset; `None` when the channel has no stream (never
    /// published to, expired, or Redis lost it).
    pub top: Option<Position>,
    /// Events after the offset asked for, oldest first, at most the limit asked for; events
    /// older than the rule's ttl are left out. Each frame carries its position.
    pub events: Vec<(u64, Bytes)>,
}

/// What a node says of itself, for the console's list of nodes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeReport {
    pub id: String,
    pub ready: bool,
    pub connections: u64,
    /// Connections per app.
    pub apps: HashMap<String, u64>,
}

/// Counts for one occupied channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStats {
    pub name: String,
    pub subscription_count: u64,
    pub user_count: Option<u64>,
}

/// Receives what the cluster tells this node. Implemented by the hub; calls must not block.
pub trait BusSink: Send + Sync {
    /// A message published on another node.
    fn deliver(&self, msg: BusMessage);

    /// A channel got its first subscriber cluster-wide (`true`) or lost its last (`false`).
    /// Called on exactly one node per change.
    fn channel_occupancy(&self, _app_id: &str, _channel: &ChannelName, _occupied: bool) {}

    /// Members whose last socket went without its own node announcing it: the members of a
    /// dead node (called on the node that cleaned up after it), or of a leave that reached
    /// Redis late. Called once per departure, cluster-wide.
    fn members_departed(&self, _app_id: &str, _channel: &ChannelName, _user_ids: Vec<String>) {}

    /// This node's members that the cluster was told had left (the node was taken for dead
    /// while it lived) and that are back.
    fn members_returned(&self, _app_id: &str, _channel: &ChannelName, _members: Vec<Member>) {}

    /// The node's subscriptions were restored after an interruption (a reconnect, a slot
    /// move): messages published meanwhile may not have reached it, so history channels catch
    /// up from their streams.
    fn subscriptions_restored(&self) {}

    /// Console records from another node (JSON lines of [`crate::monitor::Record`]).
    fn console(&self, _records: Bytes) {}

    /// The process `origin` changed these apps in the store (every node, the writer's too,
    /// may receive it; the hub skips its own).
    fn apps_changed(&self, _origin: &str, _ids: Vec<String>) {}
}

/// Publication and interest routing between nodes.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Hands the broker the receiver of what other nodes publish. Called once, before use.
    fn attach(&self, sink: Arc<dyn BusSink>);

    /// Publishes to the channel's topic for every other node with subscribers of it. With
    /// `history`, the event is appended to the channel's stream in the same step, which gives it
    /// its position: the frame of `msg` gets `position` added (for every node) and the position
    /// is returned, for the publishing node to add to its own copy.
    async fn publish(
        &self,
        msg: BusMessage,
        history: Option<&HistoryRule>,
    ) -> Result<Option<Position>, PublishError>;

    /// This node now has `local` subscribers on the channel. Must not block; a cluster broker
    /// batches these into topic (un)subscriptions and count updates.
    fn set_interest(&self, app_id: &str, channel: &ChannelName, local: usize);

    /// Waits until this node receives the channel's topic and the cluster counts it as a
    /// subscriber (after the node's first local subscriber arrived), so a client told
    /// "subscribed" misses nothing published afterwards and every node's API sees it.
    async fn await_interest(&self, app_id: &str, channel: &ChannelName) -> Result<(), BusError>;

    /// `Ok` when the broker can serve; otherwise why not.
    fn readiness(&self) -> Result<(), String>;

    /// Console records of this node for the consoles of the others (JSON lines).
    async fn console_publish(&self, _records: Bytes) {}

    /// Tells the cluster which apps this node's consoles watch (and whether with payloads);
    /// answers which apps the consoles of other nodes watch.
    async fn console_watch(&self, _here: &[(String, bool)]) -> HashMap<String, bool> {
        HashMap::new()
    }

    /// Tells every other node that these apps changed in the store, so each reads them again
    /// (best effort: a notice lost while the bus is down is made up by the nodes' reloads).
    /// Nothing to tell on a single node.
    async fn apps_changed(&self, _origin: &str, _ids: &[String]) {}

    /// What every node reported of itself lately (one entry, this node's, on a single node).
    async fn nodes(&self) -> Vec<NodeReport> {
        Vec::new()
    }

    /// This node's own report, for the others (every couple of seconds).
    async fn report(&self, _report: &NodeReport) {}

    /// Leaves the cluster on a graceful exit: this node's state and lease go at once instead
    /// of lapsing.
    async fn shutdown(&self) {}
}

/// What only the whole cluster knows.
#[async_trait]
pub trait ClusterState: Send + Sync + 'static {
    async fn presence_join(
        &self,
        app_id: &str,
        channel: &ChannelName,
        member: &Member,
        socket: SocketId,
        max_members: usize,
    ) -> Result<PresenceJoin, BusError>;

    /// Removes a socket's membership; `Ok(true)` when it was the user's last socket there.
    /// When the cluster cannot be told now, the departure is announced later through
    /// [`BusSink::members_departed`] and this answers the error.
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

    /// Keeps a cache channel's last API event (an encoded frame) for `ttl`, within the app's
    /// `max_bytes` of cached frames.
    async fn cache_put(
        &self,
        app_id: &str,
        channel: &ChannelName,
        frame: Bytes,
        ttl: Duration,
        max_bytes: u64,
    ) -> Result<CachePut, BusError>;

    /// A history channel's stream after `after` (0: from the start), at most `limit` events.
    /// With `create`, a channel without a stream gets one (a new epoch at offset 0, kept for
    /// the rule's ttl unless events follow), so a subscriber always learns a position to
    /// resume from.
    async fn history(
        &self,
        app_id: &str,
        channel: &ChannelName,
        rule: &HistoryRule,
        after: u64,
        limit: usize,
        create: bool,
    ) -> Result<History, BusError>;

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
}

/// The two halves of one cluster implementation, as the hub holds them.
#[derive(Clone)]
pub struct Cluster {
    pub broker: Arc<dyn Broker>,
    pub state: Arc<dyn ClusterState>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish_non_exhaustive()
    }
}

impl Cluster {
    /// Both roles from one implementation.
    pub fn of<T: Broker + ClusterState>(bus: Arc<T>) -> Self {
        Cluster {
            broker: bus.clone(),
            state: bus,
        }
    }

    /// The in-process bus of a single node.
    pub fn local() -> Self {
        Self::of(Arc::new(crate::local_bus::LocalBus::new()))
    }
}
