//! The running node: its configuration, hub, admission state and shutdown signals.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use herald_hub::rate::TokenBucket;
use herald_hub::Hub;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics;

pub struct Node {
    pub config: Config,
    pub hub: Arc<Hub>,
    draining: AtomicBool,
    open: AtomicU64,
    handshakes: Mutex<TokenBucket>,
    /// Per-app HTTP API rate limits (apps with `api_requests_per_second`).
    api_limits: std::collections::HashMap<String, Mutex<TokenBucket>>,
    /// Cancelled when the node stops accepting connections.
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

/// Counts an open connection until dropped.
pub struct OpenGuard<'a> {
    node: &'a Node,
    app: String,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.node.open.fetch_sub(1, Ordering::AcqRel);
        metrics::connection_gauge(&self.app, -1.0);
    }
}

impl Node {
    pub fn new(config: Config, hub: Arc<Hub>) -> Arc<Self> {
        let rate = config.server.handshakes_per_second;
        let api_limits = config
            .apps
            .iter()
            .filter(|a| a.api_requests_per_second > 0)
            .map(|a| {
                (
                    a.id.clone(),
                    Mutex::new(TokenBucket::new(a.api_requests_per_second)),
                )
            })
            .collect();
        Arc::new(Node {
            config,
            hub,
            draining: AtomicBool::new(false),
            open: AtomicU64::new(0),
            handshakes: Mutex::new(TokenBucket::new(rate)),
            api_limits,
            shutdown: CancellationToken::new(),
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        metrics::draining(true);
    }

    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }

    /// Whether the app may make another API request now.
    pub fn take_api_token(&self, app_id: &str) -> bool {
        self.api_limits
            .get(app_id)
            .is_none_or(|b| b.lock().try_take())
    }

    pub fn take_handshake_token(&self) -> bool {
        self.handshakes.lock().try_take()
    }

    pub fn connection_opened(&self, app: &str) -> OpenGuard<'_> {
        self.open.fetch_add(1, Ordering::AcqRel);
        metrics::connection_gauge(app, 1.0);
        metrics::opened(app);
        OpenGuard {
            node: self,
            app: app.to_owned(),
        }
    }

    /// Ready to take traffic: not draining and the bus is serving.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining".into());
        }
        if !self.hub.bus().is_ready() {
            return Err("bus not ready: subscriptions not restored".into());
        }
        Ok(())
    }
}
