//! Herald's Redis-backed cluster bus: an implementation of the hub's [`herald_hub::Bus`] with
//! fred.
//!
//! - [`wire`]: the message envelope on a channel topic.
//! - [`keys`]: key and topic names (one hash tag per channel).
//! - [`scripts`]: Lua for the atomic presence, reaping and connection-limit updates.
//! - [`connect`]: fred clients for one Redis, Redis Cluster or Sentinel.
//! - [`bus`]: [`RedisBus`] itself: interest routing, cluster state, leases and recovery.
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
    /// about twice this.
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
        }
    }
}
