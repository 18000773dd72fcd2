//! Herald's local connection hub.
//!
//! The hub owns everything about the connections of one node that is not a socket: apps and
//! their limits ([`app`]), each connection's bounded outbound queue ([`outbox`]) and handle
//! ([`connection`]), channel subscriptions and fan-out ([`hub`]), and each connection's protocol
//! state machine ([`session`]). Cluster-wide questions (presence members, counts, publishing to
//! other nodes) go through the [`bus::Bus`] trait; [`bus::LocalBus`] is the single-node one.
//!
//! It knows no sockets, no HTTP and no Redis: the node feeds it decoded frames and drains the
//! outbound queues; the Redis bus lives in `herald-bus`.

pub mod app;
pub mod bus;
pub mod connection;
pub mod hub;
pub mod metrics;
pub mod outbox;
pub mod rate;
pub mod session;
pub mod webhook;

pub use app::{App, Apps};
pub use bus::{
    Bus, BusError, BusMessage, BusPayload, BusSink, ChannelStats, LocalBus, PresenceJoin,
};
pub use connection::Connection;
pub use hub::{Hub, HubConfig};
pub use outbox::{CloseReason, Outbox, Pushed};
pub use session::Session;
pub use webhook::{WebhookEvent, WebhookSink};
