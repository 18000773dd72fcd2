//! Herald's Redis-backed cluster bus: an implementation of the hub's [`herald_hub::Bus`] with
//! fred.
//!
//! - [`wire`]: the message envelope on a channel topic.
//! - [`keys`]: key and topic names (one hash tag per channel).
//! - [`scripts`]: Lua for everything that must be atomic: publishing with its receiver check,
//!   presence, counts, leases, reaping, connection limits and the cache.
//! - [`connect`]: fred clients for one Redis, Redis Cluster or Sentinel.
//! - [`bus`]: [`RedisBus`] itself, one file per concern (see its module docs).
//!
//! It knows nothing of sockets or HTTP; it receives plain settings from the node. ARCHITECTURE.md
//! describes the design.

pub mod bus;
pub mod connect;
pub mod keys;
pub mod scripts;
pub mod wire;

use std::time::Duration;

pub use bus::RedisBus;

/// The bus settings the node hands down.
#[derive(Debug, Clone)]
pub struct RedisBusConfig {
    /// One Redis (`redis://`, `rediss://`, credentials in the URL).
    pub url: Option<String>,
    /// Redis Cluster seeds; when set, sharded pub/sub is used.
    pub cluster_urls: Vec<String>,
    pub sentinel_urls: Vec<String>,
    pub sentinel_master: Option<String>,
    /// CA certificates (PEM) trusted for `rediss://`, besides the system's roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Prefix of every key and topic.
    pub key_prefix: String,
    /// This node's id (the pod name in a StatefulSet).
    pub node_id: String,
    /// How long a node's lease lives without renewal; a dead node's state is removed within
    /// about 1.34 times this (the lease, then at most a third of it until a survivor looks).
    pub lease: Duration,
    /// How long a topic with no local subscribers stays subscribed (absorbs churn).
    pub unsubscribe_delay: Duration,
    /// How often subscription counts are written to Redis (batched per channel).
    pub flush_interval: Duration,
    /// After a reconnect, how long to wait before publishing again, so every node has had time to
    /// re-subscribe (at least a few reconnect delays).
    pub settle: Duration,
    pub reconnect_delay: Duration,
    /// At start, how long to keep trying while Redis is not reachable yet (still starting, a
    /// cluster still forming); certificate, authentication and configuration errors end at once.
    pub startup_wait: Duration,
    /// Redis Cluster: how often the slot map is refreshed to notice failovers and resharding
    /// (Redis then drops sharded subscriptions without closing the connection).
    pub topology_check: Duration,
    pub command_timeout: Duration,
    /// How often both connections are pinged; a ping unanswered within `ping_timeout` makes the
    /// node not ready (a stalled Redis keeps its TCP connections up).
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// A connection with a command unanswered this long is closed and reconnected.
    pub unresponsive_after: Duration,
    /// A publish that Redis runs more than this long after the node sent it (a stall, a
    /// replay after a reconnect) is dropped by Redis itself instead of delivered late; it is
    /// well under `command_timeout`, so a publish the node gave up on never arrives later.
    pub publish_window: Duration,
}

impl RedisBusConfig {
    pub fn new(node_id: &str) -> Self {
        RedisBusConfig {
            url: None,
            cluster_urls: Vec::new(),
            sentinel_urls: Vec::new(),
            sentinel_master: None,
            tls_ca_file: None,
            key_prefix: "herald".into(),
            node_id: node_id.to_owned(),
            lease: Duration::from_secs(10),
            unsubscribe_delay: Duration::from_millis(1000),
            flush_interval: Duration::from_millis(50),
            settle: Duration::from_millis(1000),
            reconnect_delay: Duration::from_millis(200),
            startup_wait: Duration::from_secs(30),
            topology_check: Duration::from_millis(250),
            command_timeout: Duration::from_secs(2),
            ping_interval: Duration::from_millis(500),
            ping_timeout: Duration::from_millis(1000),
            unresponsive_after: Duration::from_secs(3),
            publish_window: Duration::from_millis(1000),
        }
    }
}
