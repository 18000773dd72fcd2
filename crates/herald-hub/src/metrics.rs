//! Metric names the hub records (Prometheus names; see docs/operations.md). Labels are the app id
//! and small fixed enums only, never channel names or socket ids.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram, Counter};

pub const SUBSCRIPTIONS: &str = "herald_subscriptions";
pub const CHANNELS: &str = "herald_channels";
pub const PRESENCE_MEMBERS: &str = "herald_presence_members";
pub const MESSAGES_SENT: &str = "herald_messages_sent_total";
pub const CLIENT_MESSAGES: &str = "herald_client_messages_received_total";
pub const SLOW_CLIENTS: &str = "herald_slow_client_disconnects_total";
pub const RATE_LIMITED: &str = "herald_client_events_rate_limited_total";
pub const PUBLISH_DELIVERY: &str = "herald_publish_delivery_seconds";

pub fn cache_bytes(app: &str, bytes: u64) {
    gauge!("herald_cache_bytes", "app" => app.to_owned()).set(bytes as f64);
}

pub fn cache_refused(app: &str) {
    counter!("herald_cache_refused_total", "app" => app.to_owned()).increment(1);
}

pub fn slow_client(app: &str) {
    counter!(SLOW_CLIENTS, "app" => app.to_owned()).increment(1);
}

pub fn rate_limited(app: &str) {
    counter!(RATE_LIMITED, "app" => app.to_owned()).increment(1);
}

/// Channel messages queued to local clients.
pub fn sent_events(n: u64) {
    static SENT: OnceLock<Counter> = OnceLock::new();
    if n > 0 {
        SENT.get_or_init(|| counter!(MESSAGES_SENT, "kind" => "event"))
            .increment(n);
    }
}

/// A frame from a client, by kind; the handles are kept so the per-frame cost is one atomic add.
pub fn received(kind: &'static str) {
    const KINDS: [&str; 7] = [
        "subscribe",
        "unsubscribe",
        "ping",
        "pong",
        "signin",
        "client_event",
        "invalid",
    ];
    static CELLS: [OnceLock<Counter>; 7] = [const { OnceLock::new() }; 7];
    let i = KINDS
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(KINDS.len() - 1);
    CELLS[i]
        .get_or_init(|| counter!(CLIENT_MESSAGES, "kind" => KINDS[i]))
        .increment(1);
}

pub fn subscriptions(delta: f64) {
    gauge!(SUBSCRIPTIONS).increment(delta);
}

pub fn channels(delta: f64) {
    gauge!(CHANNELS).increment(delta);
}

pub fn presence_members(delta: f64) {
    gauge!(PRESENCE_MEMBERS).increment(delta);
}

/// Records publish→socket-write latency, sampled to at most one sample a millisecond so that
/// the histogram costs nothing noticeable at hundreds of thousands of deliveries a second.
pub fn delivery_latency_sampled(now_us: u64, published_at_us: u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let last = LAST.load(Ordering::Relaxed);
    if now_us.saturating_sub(last) < 1000
        || LAST
            .compare_exchange(last, now_us, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    histogram!(PUBLISH_DELIVERY).record(now_us.saturating_sub(published_at_us) as f64 / 1e6);
}

/// A resume on subscribe: `recovered`, or the reason it was not.
pub fn recovery(outcome: &'static str) {
    counter!("herald_recoveries_total", "outcome" => outcome).increment(1);
}

/// Events sent to resuming clients.
pub fn replayed(n: usize) {
    counter!("herald_recovery_replayed_events_total").increment(n as u64);
}

/// Events a node read from a stream to fill a gap in what it received.
pub fn caught_up(n: usize) {
    counter!("herald_history_caught_up_events_total").increment(n as u64);
}

/// How long a history channel's publish took (append and publish).
pub fn history_append(took: std::time::Duration) {
    histogram!("herald_history_append_seconds").record(took.as_secs_f64());
}

/// Apps the node holds in memory (enabled or not).
pub fn apps_loaded(n: usize) {
    gauge!("herald_apps").set(n as f64);
}
