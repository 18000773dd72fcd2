//! Herald's local connection hub.
//!
//! The hub owns everything about the connections of one node that is not a socket: apps and
//! their limits ([`app`]), each connection's bounded outbound queue ([`outbox`]) and handle
//! ([`connection`]), channel subscriptions and fan-out ([`hub`]), each connection's protocol
//! state machine ([`session`]), and the operations the node performs for API callers
//! ([`operations`]). It is the only way into the cluster: publications and interest go through
//! a [`cluster::Broker`], cluster-wide questions through a [`cluster::ClusterState`]
//! ([`LocalBus`] is both for a single node; the Redis implementation lives in `herald-bus`).
//! Every failure is mapped to what clients are told in one place ([`errors`]).
//!
//! It knows no sockets, no HTTP and no Redis: the node feeds it decoded frames and drains the
//! outbound queues.

pub mod app;
pub mod clock;
pub mod cluster;
pub mod connection;
mod console;
mod counts;
pub mod errors;
mod history;
pub mod hub;
pub mod live;
pub mod local_bus;
pub mod metrics;
pub mod monitor;
pub mod operations;
pub mod outbox;
pub mod rate;
pub mod session;
mod sink;
pub mod webhook;

pub use app::{App, HistoryRule, PreviousSecret};
pub use cluster::{
    Broker, BusError, BusMessage, BusPayload, BusSink, CachePut, ChannelStats, Cluster,
    ClusterState, History, NodeReport, PresenceJoin, PublishError,
};
pub use connection::Connection;
pub use errors::{Refusal, SubscribeError, TriggerError, TriggerFailure};
pub use hub::{Hub, HubConfig};
pub use live::{Apps, AppsListener, LiveApp, Upserted};
pub use local_bus::LocalBus;
pub use monitor::{Activity, Monitor, Record};
pub use operations::ChannelInfo;
pub use outbox::{CloseReason, Outbox, Pushed};
pub use session::Session;
pub use webhook::{WebhookEvent, WebhookSink};
