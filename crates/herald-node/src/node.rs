//! The running node: its configuration, hub, admission state and shutdown signals.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use herald_hub::rate::TokenBucket;
use herald_hub::{App, Hub};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::apps_store::sync::AppsSync;
use crate::config::Config;
use crate::metrics;

/// Failed API authentications answered 401 per app and second; beyond, 429 (see
/// [`Node::take_auth_failure_token`]).
pub const AUTH_FAILURES_PER_SECOND: u32 = 50;

pub struct Node {
    pub config: Config,
    pub hub: Arc<Hub>,
    /// Keeps the hub's apps in step with the apps store; the admin API writes through it.
    pub apps: Arc<AppsSync>,
    draining: AtomicBool,
    open: AtomicU64,
    handshakes: Mutex<TokenBucket>,
    /// Per-app HTTP API rate limits (apps with `api_requests_per_second`), taken only by
    /// authenticated requests; a changed limit applies from the next request.
    api_limits: Mutex<HashMap<String, TokenBucket>>,
    /// Per-app budget of failed authentications, separate from `api_limits` so that unsigned
    /// requests can never use up an app's API rate limit.
    auth_failures: Mutex<HashMap<String, TokenBucket>>,
    /// Open TCP connections per client IP (only with `max_connections_per_ip`).
    per_ip: Mutex<HashMap<IpAddr, u64>>,
    /// Connections accepted that are not WebSockets (handshakes, API keep-alive).
    http_connections: AtomicU64,
    /// Cancelled when the node stops accepting connections.
    pub shutdown: CancellationToken,
    /// Opens the debug console; `None`: the console is off.
    admin_token: Option<String>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

/// Holds one of the node's `max_connections` slots until dropped; counts the connection in
/// its app's gauge once admitted.
pub struct OpenGuard {
    node: Arc<Node>,
    app: Option<Arc<herald_hub::LiveApp>>,
}

impl OpenGuard {
    /// The connection passed every check: count it for its app.
    pub fn admitted(&mut self, app: &Arc<herald_hub::LiveApp>) {
        metrics::connection_gauge(&app.id, 1.0);
        metrics::opened(&app.id);
        self.app = Some(app.clone());
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.node.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(app) = &self.app {
            metrics::connection_gauge(&app.id, -1.0);
        }
    }
}

/// Counts an accepted connection against `max_http_connections` until it becomes a
/// WebSocket or ends (held by the HTTP task).
pub struct HttpSlot {
    node: Arc<Node>,
}

impl Drop for HttpSlot {
    fn drop(&mut self) {
        self.node.http_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a connection against `max_connections_per_ip` for as long as it lives, through the
/// HTTP phase and the WebSocket after it (shared by both tasks).
pub struct IpSlot {
    node: Arc<Node>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut per_ip = self.node.per_ip.lock();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Why an accepted TCP connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpRefusal {
    PerIp,
    HttpConnections,
}

impl Node {
    pub fn new(
        config: Config,
        hub: Arc<Hub>,
        apps: Arc<AppsSync>,
        admin_token: Option<String>,
    ) -> Arc<Self> {
        let rate = config.server.handshakes_per_second;
        Arc::new(Node {
            config,
            hub,
            apps,
            draining: AtomicBool::new(false),
            open: AtomicU64::new(0),
            handshakes: Mutex::new(TokenBucket::new(rate)),
            api_limits: Mutex::new(HashMap::new()),
            auth_failures: Mutex::new(HashMap::new()),
            per_ip: Mutex::new(HashMap::new()),
            http_connections: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
            admin_token,
        })
    }

    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        metrics::draining(true);
    }

    /// Whether the app may make another API request now (authenticated requests only).
    pub fn take_api_token(&self, app: &App) -> bool {
        let rate = app.api_requests_per_second;
        let mut limits = self.api_limits.lock();
        if rate == 0 {
            limits.remove(&app.id);
            return true;
        }
        let bucket = limits
            .entry(app.id.clone())
            .or_insert_with(|| TokenBucket::new(rate));
        bucket.set_rate(rate);
        bucket.try_take()
    }

    /// Whether another failed authentication for the app is answered (401) rather than
    /// refused outright (429). Bounds the work and logs unsigned requests can cause.
    pub fn take_auth_failure_token(&self, app_id: &str) -> bool {
        let mut buckets = self.auth_failures.lock();
        if let Some(bucket) = buckets.get_mut(app_id) {
            return bucket.try_take();
        }
        // Only known apps get here (the store was asked first), so this map has at most one
        // entry per app.
        let mut bucket = TokenBucket::new(AUTH_FAILURES_PER_SECOND);
        let taken = bucket.try_take();
        buckets.insert(app_id.to_owned(), bucket);
        taken
    }

    /// Counts a newly accepted TCP connection, or says why it must be closed at once.
    pub fn accept_tcp(
        self: &Arc<Self>,
        ip: IpAddr,
    ) -> Result<(HttpSlot, Option<Arc<IpSlot>>), TcpRefusal> {
        let per_ip = self.config.server.max_connections_per_ip;
        let ip_slot = if per_ip > 0 {
            let mut map = self.per_ip.lock();
            let n = map.entry(ip).or_insert(0);
            if *n >= per_ip {
                return Err(TcpRefusal::PerIp);
            }
            *n += 1;
            Some(Arc::new(IpSlot {
                node: self.clone(),
                ip,
            }))
        } else {
            None
        };
        let limit = self.config.server.max_http_connections;
        self.http_connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .map_err(|_| TcpRefusal::HttpConnections)?;
        Ok((HttpSlot { node: self.clone() }, ip_slot))
    }

    pub fn http_connections(&self) -> u64 {
        self.http_connections.load(Ordering::Acquire)
    }

    pub fn take_handshake_token(&self) -> bool {
        self.handshakes.lock().try_take()
    }

    /// Takes one of the node's `max_connections` slots, atomically with the check, so that
    /// handshakes waiting on the cluster bus cannot overshoot the limit together.
    pub fn reserve_connection(self: &Arc<Self>) -> Option<OpenGuard> {
        let max = self.config.server.max_connections;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| OpenGuard {
                node: self.clone(),
                app: None,
            })
    }

    /// Ready to take traffic: not draining and the bus is serving.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining".into());
        }
        self.hub
            .readiness()
            .map_err(|why| format!("cluster bus not ready: {why}"))
    }
}
