//! Sans-IO codec for Pusher Channels protocol 7 and the Pusher HTTP API.
//!
//! This crate owns the wire: what a client may send ([`client`]), what the server sends
//! ([`server`]), channel names and their kinds ([`channel`]), socket ids ([`socket_id`]), the
//! WebSocket-side signatures ([`signature`]), HTTP API request signing ([`api_auth`]) and the
//! HTTP API request bodies ([`api`]). Every failure is one [`ProtocolError`] that knows its
//! official Pusher error code or HTTP status.
//!
//! It knows no sockets, no clock, no tokio and no environment: callers pass bytes in, plus the
//! current time or a random number generator where one is needed, and get values back. That is
//! what keeps it deterministic to test and safe to fuzz.

pub mod api;
pub mod api_auth;
pub mod channel;
pub mod client;
pub mod error;
pub mod json;
pub mod presence;
pub mod server;
pub mod signature;
pub mod socket_id;

pub use channel::{ChannelKind, ChannelName};
pub use client::ClientMessage;
pub use error::{ErrorCode, ProtocolError};
pub use socket_id::SocketId;

/// Largest event name accepted (the official SDKs enforce the same).
pub const MAX_EVENT_NAME_LEN: usize = 200;
/// Largest event `data` accepted from the HTTP API or in a client event.
pub const MAX_EVENT_DATA_BYTES: usize = 10 * 1024;
