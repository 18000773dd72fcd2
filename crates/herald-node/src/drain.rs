//! Graceful shutdown: on SIGTERM or SIGINT the node turns not-ready, refuses new connections,
//! closes the open ones with 4200 spread evenly (with jitter) over the drain window so clients
//! reconnect elsewhere without a stampede, and exits before the hard deadline.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use herald_protocol::ErrorCode;

use crate::node::Node;

pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Drains the node's connections; returns the drain deadline, by which everything after it
/// (webhooks, leaving the cluster) must also be done.
pub async fn drain(node: &Node, tracker: &TaskTracker) -> Instant {
    let started = Instant::now();
    let window = Duration::from_secs(node.config.server.drain_window);
    let deadline = started
        + Duration::from_secs(
            node.config
                .server
                .drain_deadline
                .max(node.config.server.drain_window),
        );
    node.start_draining();
    let mut conns = node.hub.connections();
    tracing::info!(
        connections = conns.len(),
        window_secs = window.as_secs(),
        "draining"
    );
    // Random order, even spacing, jitter within each slot.
    let n = conns.len().max(1) as u32;
    let slot = window / n;
    {
        let mut rng = rand::rng();
        for i in (1..conns.len()).rev() {
            conns.swap(i, rng.random_range(0..=i));
        }
    }
    for (i, conn) in conns.iter().enumerate() {
        let jitter = if slot.is_zero() {
            Duration::ZERO
        } else {
            rand::rng().random_range(Duration::ZERO..slot)
        };
        tokio::time::sleep_until(started + slot * i as u32 + jitter).await;
        conn.outbox
            // 4200: pusher-js reconnects at once (to another node behind the balancer).
            .close(
                ErrorCode::ReconnectImmediately.as_u16(),
                "Server is shutting down; reconnect",
            );
    }
    node.shutdown.cancel();
    tracker.close();
    if tokio::time::timeout_at(deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline reached with connections still open");
    }
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "drained");
    deadline
}
