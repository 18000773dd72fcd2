//! What the bus's parts share: the clients, the node's own record of its cluster state (the
//! truth that is written to Redis again after any trouble), readiness, and the publish gate.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::Server;
use herald_hub::BusSink;
use herald_protocol::presence::Member;
use herald_protocol::{ChannelName, SocketId};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::topics::Topics;
use crate::connect::Topology;
use crate::keys::Keys;
use crate::RedisBusConfig;

pub(crate) type ChannelKey = (Arc<str>, ChannelName);

/// A Redis Cluster slot map: (first slot, last slot, master).
pub(crate) type SlotOwners = Vec<(u16, u16, Server)>;

pub(crate) use herald_hub::clock::{now_ms, now_us};

pub(crate) fn unavailable(e: impl std::fmt::Display) -> herald_hub::BusError {
    herald_hub::BusError::Unavailable(e.to_string())
}

/// Everything the bus's parts share. One per node.
pub(crate) struct Shared {
    pub cfg: RedisBusConfig,
    pub keys: Keys,
    pub topology: Topology,
    pub client: Client,
    pub subscriber: SubscriberClient,
    pub sink: OnceLock<Arc<dyn BusSink>>,
    pub health: Health,
    pub gate: Gate,
    pub topics: Topics,
    pub local: Local,
    /// Recovery rounds asked for by the lease and topology watchers.
    pub recover: Recover,
    /// Announcements found before the hub was attached (a previous life's members).
    pub early_departures: Mutex<Vec<(String, ChannelName, Vec<String>)>>,
    pub tasks: TaskTracker,
    pub cancel: CancellationToken,
}

impl Shared {
    pub fn sharded(&self) -> bool {
        self.topology == Topology::Cluster
    }

    /// `node|socket`: which node holds a presence membership.
    pub fn socket_field(&self, socket: SocketId) -> String {
        format!("{}|{}", self.cfg.node_id, socket)
    }

    pub fn sink(&self) -> Option<&Arc<dyn BusSink>> {
        self.sink.get()
    }

    /// Announces departures to the hub, or keeps them until it is attached.
    pub fn members_departed(&self, app: &str, channel: &ChannelName, users: Vec<String>) {
        if users.is_empty() {
            return;
        }
        match self.sink() {
            Some(sink) => sink.members_departed(app, channel, users),
            None => self
                .early_departures
                .lock()
                .push((app.to_owned(), channel.clone(), users)),
        }
    }

    /// Whether the bus can serve, and why not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.client.is_connected() || !self.subscriber.is_connected() {
            return Err("Redis is not connected".into());
        }
        self.health.problem().map_or(Ok(()), Err)
    }

    /// Recomputes readiness and reports changes.
    pub fn update_ready(&self) {
        let ready = self.readiness();
        let was = self.health.ready.swap(ready.is_ok(), Ordering::AcqRel);
        if was != ready.is_ok() {
            metrics::gauge!("herald_bus_connected").set(if ready.is_ok() { 1.0 } else { 0.0 });
            match ready {
                Ok(()) => tracing::info!("cluster bus ready"),
                Err(why) => tracing::warn!(reason = %why, "cluster bus not ready"),
            }
        }
    }

    pub fn is_ready(&self) -> bool {
        self.health.ready.load(Ordering::Acquire)
    }

    /// Redis time now, estimated from the local clock and the last measured offset.
    pub fn redis_now_ms(&self) -> u64 {
        let offset = self.health.clock_offset_ms.load(Ordering::Acquire);
        (now_ms() as i64).saturating_add(offset).max(0) as u64
    }
}

/// Why the node is not ready, besides a dropped connection.
pub(crate) struct Health {
    pub ready: AtomicBool,
    /// Subscriptions and state are being written again after trouble.
    pub resyncing: AtomicBool,
    /// The last ping of either connection went unanswered: Redis is stalled or cut off.
    pub ping_failed: AtomicBool,
    /// The lease was not renewed for longer than it lives: other nodes may have removed this
    /// node's state.
    pub lease_lapsed: AtomicBool,
    /// Redis's clock minus this node's, in ms (measured at each lease renewal).
    pub clock_offset_ms: AtomicI64,
    /// When the lease was last renewed.
    pub renewed_at: Mutex<Instant>,
}

impl Health {
    pub fn new() -> Self {
        Health {
            ready: AtomicBool::new(false),
            resyncing: AtomicBool::new(false),
            ping_failed: AtomicBool::new(false),
            lease_lapsed: AtomicBool::new(false),
            clock_offset_ms: AtomicI64::new(0),
            renewed_at: Mutex::new(Instant::now()),
        }
    }

    fn problem(&self) -> Option<String> {
        if self.ping_failed.load(Ordering::Acquire) {
            return Some("Redis does not answer pings".into());
        }
        if self.lease_lapsed.load(Ordering::Acquire) {
            return Some("this node's lease lapsed; rejoining the cluster".into());
        }
        if self.resyncing.load(Ordering::Acquire) {
            return Some("subscriptions and cluster state are being restored".into());
        }
        None
    }
}

/// What a publish checks before and after it goes to Redis.
pub(crate) struct Gate {
    /// When Redis last failed or a connection came back (Unix ms): publishes wait a settle
    /// period after it, so every node's subscriptions are back before a 200.
    pub last_trouble_ms: AtomicU64,
    /// Rounds of recovery begun (reconnects, slot moves, rejoins); a publish that straddles one
    /// is not confirmed.
    pub recoveries: AtomicU64,
    /// The command client's slot map as the topology watcher last handled it: a publish whose
    /// slot is now served by another master went where subscriptions may not be back yet.
    pub handled_owners: RwLock<SlotOwners>,
}

impl Gate {
    pub fn new() -> Self {
        Gate {
            last_trouble_ms: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            handled_owners: RwLock::new(Vec::new()),
        }
    }

    pub fn trouble(&self) {
        self.last_trouble_ms.store(now_ms(), Ordering::Release);
    }

    /// Trouble first, then the counter: a publish that sees the new count sees the trouble.
    pub fn begin_recovery(&self) {
        self.trouble();
        self.recoveries.fetch_add(1, Ordering::AcqRel);
    }
}

/// What woke the recovery loop, besides a reconnect.
pub(crate) struct Recover {
    pub notify: Notify,
    pub slots_moved: AtomicBool,
    pub lease_lapsed: AtomicBool,
}

impl Recover {
    pub fn new() -> Self {
        Recover {
            notify: Notify::new(),
            slots_moved: AtomicBool::new(false),
            lease_lapsed: AtomicBool::new(false),
        }
    }
}

/// The node's own record of what it holds in the cluster. Redis may lose it (a restart, a
/// failover, another node taking this one for dead); it is written back from here.
#[derive(Default)]
pub(crate) struct Local {
    /// Local subscribers per channel.
    pub counts: DashMap<ChannelKey, usize>,
    /// Channels whose count Redis has not seen yet.
    pub dirty_counts: Mutex<HashSet<ChannelKey>>,
    /// Channels that just got their first local subscriber, resolved when Redis counts it.
    pub first_waiters: Mutex<HashMap<ChannelKey, watch::Sender<bool>>>,
    /// Presence memberships held by local sockets.
    pub members: DashMap<(ChannelKey, SocketId), Member>,
    /// How many of `members` each channel has (so flushes need not scan them).
    pub member_counts: DashMap<ChannelKey, usize>,
    /// Channels whose memberships in Redis may differ from `members` (a join or leave that
    /// failed or timed out).
    pub dirty_presence: Mutex<HashSet<ChannelKey>>,
    /// Connections per app counted in Redis (apps with a limit).
    pub connections: DashMap<Arc<str>, u64>,
    /// Apps whose connection count Redis has not seen yet.
    pub dirty_connections: Mutex<HashSet<Arc<str>>>,
    /// Held shared by an admission from its script until `connections` counts it, and
    /// exclusively by a flush while it reads a count and writes it: a flush never writes a
    /// count that lacks a connection Redis already counted (which would let the app exceed its
    /// limit until the next flush).
    pub connections_gate: tokio::sync::RwLock<()>,
    /// Wakes the flush loop early (a first subscriber waits for its count).
    pub flush_now: Notify,
}

impl Local {
    /// The local memberships of a channel, as `(socket, member)`.
    pub fn channel_members(&self, key: &ChannelKey) -> Vec<(SocketId, Member)> {
        if !self.member_counts.contains_key(key) {
            return Vec::new();
        }
        self.members
            .iter()
            .filter(|e| &e.key().0 == key)
            .map(|e| (e.key().1, e.value().clone()))
            .collect()
    }
}
