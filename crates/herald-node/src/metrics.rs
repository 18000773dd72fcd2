//! The node's metrics: names, descriptions and the Prometheus recorder. The full list with
//! meanings is in docs/operations.md. Labels are app ids and small enums only.

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the global recorder and describes every metric, once per process (nodes run in
/// one process share it).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let latency_buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency_buckets)?
        .install_recorder()?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    describe_gauge!(
        "herald_connections",
        "Open WebSocket connections on this node, by app"
    );
    describe_gauge!(
        "herald_connections_limit",
        "Most connections this node accepts (server.max_connections)"
    );
    describe_counter!(
        "herald_connections_opened_total",
        "WebSocket connections admitted, by app"
    );
    describe_counter!(
        "herald_connections_closed_total",
        "WebSocket connections closed, by app and close code class"
    );
    describe_counter!(
        "herald_connections_refused_total",
        "WebSocket connections refused at admission, by reason"
    );
    describe_gauge!(
        "herald_http_connections",
        "Accepted connections that are not WebSockets: handshakes in progress and HTTP API connections"
    );
    describe_gauge!(
        "herald_subscriptions",
        "Channel subscriptions held by local connections"
    );
    describe_gauge!(
        "herald_channels",
        "Channels with at least one local subscriber"
    );
    describe_gauge!(
        "herald_presence_members",
        "Presence memberships held by local connections"
    );
    describe_counter!(
        "herald_client_messages_received_total",
        "Frames received from clients, by kind"
    );
    describe_counter!(
        "herald_messages_sent_total",
        "Channel messages queued to clients, by kind"
    );
    describe_counter!(
        "herald_bytes_received_total",
        Unit::Bytes,
        "WebSocket payload bytes received"
    );
    describe_counter!(
        "herald_bytes_sent_total",
        Unit::Bytes,
        "WebSocket bytes written"
    );
    describe_counter!(
        "herald_api_requests_total",
        "HTTP API requests, by endpoint and status"
    );
    describe_histogram!(
        "herald_api_request_duration_seconds",
        Unit::Seconds,
        "HTTP API request duration, by endpoint"
    );
    describe_histogram!(
        "herald_publish_delivery_seconds",
        Unit::Seconds,
        "From a publication's arrival at its first node to the socket write that carried it, on each node (sampled)"
    );
    describe_counter!(
        "herald_bus_messages_published_total",
        "Messages this node handed to the bus"
    );
    describe_counter!(
        "herald_bus_messages_received_total",
        "Messages this node received from the bus"
    );
    describe_gauge!("herald_bus_topics", "Channel topics this node listens to");
    describe_counter!(
        "herald_bus_reconnects_total",
        "Reconnections of the bus to Redis"
    );
    describe_counter!(
        "herald_bus_topology_changes_total",
        "Redis Cluster slot moves (failover, resharding) after which every topic was subscribed again"
    );
    describe_counter!(
        "herald_recoveries_total",
        "Resumes on subscribe, by outcome (recovered, or the reason not)"
    );
    describe_counter!(
        "herald_recovery_replayed_events_total",
        "Missed events sent to resuming clients"
    );
    describe_counter!(
        "herald_history_caught_up_events_total",
        "Events read from a stream to fill a gap in what this node received"
    );
    describe_histogram!(
        "herald_history_append_seconds",
        Unit::Seconds,
        "Publish-to-answer time of history channels' publishes"
    );
    describe_counter!(
        "herald_bus_stalls_total",
        "Times a ping of a Redis connection went unanswered (Redis stalled or the link frozen)"
    );
    describe_counter!(
        "herald_bus_publishes_partial_total",
        "Publishes answered 504: fewer nodes received them than hold subscribers of the channel"
    );
    describe_gauge!(
        "herald_cache_bytes",
        Unit::Bytes,
        "Bytes of cached events an app's cache channels hold, by app"
    );
    describe_counter!(
        "herald_cache_refused_total",
        "Triggers refused with 507: the app's cache would exceed max_cache_bytes, by app"
    );
    describe_gauge!(
        "herald_bus_connected",
        "1 when the bus is connected and its subscriptions restored"
    );
    describe_histogram!(
        "herald_bus_lag_seconds",
        Unit::Seconds,
        "Publish-to-receive delay of bus messages"
    );
    describe_counter!(
        "herald_slow_client_disconnects_total",
        "Connections closed (4100) for not reading fast enough"
    );
    describe_counter!(
        "herald_client_events_rate_limited_total",
        "Client events refused with 4301"
    );
    describe_gauge!("herald_ready", "1 when the node is ready for traffic");
    describe_counter!(
        "herald_webhooks_sent_total",
        "Webhook batches by outcome: delivered, retried, gave_up"
    );
    describe_counter!(
        "herald_webhooks_dropped_total",
        "Webhook events dropped because a bounded queue was full"
    );
    describe_gauge!("herald_draining", "1 while the node drains");
    describe_gauge!(
        "herald_console_feeds",
        "Debug consoles reading this node's feed"
    );
    describe_gauge!(
        "herald_apps",
        "Apps this node holds in memory (enabled or not)"
    );
    describe_gauge!(
        "herald_apps_store_up",
        "1 while the apps store answers (always 1 for the file store); 0: the node serves the apps it has"
    );
    describe_counter!(
        "herald_apps_store_reloads_total",
        "Full reloads of the apps store (start, SIGHUP, bus or database back, every 60 s), by outcome: ok, error"
    );
    describe_counter!(
        "herald_apps_store_lookups_total",
        "Keys and ids not in memory, by outcome: found, absent (asked the database), cached_absent, limited (over the lookup budget), unavailable, error"
    );
    describe_gauge!("herald_runtime_workers", "Tokio worker threads");
    describe_gauge!("herald_runtime_alive_tasks", "Tokio tasks alive");
    describe_gauge!(
        "herald_runtime_global_queue_depth",
        "Tasks waiting in Tokio's global queue"
    );
}

/// Registers every metric with a zero value so dashboards and alerts see them from the start.
pub fn register_zeroes(apps: &[String], max_connections: u64, in_process_bus: bool) {
    gauge!("herald_connections_limit").set(max_connections as f64);
    for app in apps {
        gauge!("herald_connections", "app" => app.clone()).set(0.0);
        counter!("herald_connections_opened_total", "app" => app.clone()).absolute(0);
        counter!("herald_slow_client_disconnects_total", "app" => app.clone()).absolute(0);
        counter!("herald_client_events_rate_limited_total", "app" => app.clone()).absolute(0);
        counter!("herald_cache_refused_total", "app" => app.clone()).absolute(0);
        gauge!("herald_cache_bytes", "app" => app.clone()).set(0.0);
    }
    counter!("herald_connections_refused_total", "reason" => "node_limit").absolute(0);
    gauge!("herald_subscriptions").set(0.0);
    gauge!("herald_channels").set(0.0);
    gauge!("herald_presence_members").set(0.0);
    counter!("herald_bytes_received_total").absolute(0);
    counter!("herald_bytes_sent_total").absolute(0);
    counter!("herald_messages_sent_total", "kind" => "event").absolute(0);
    counter!("herald_client_messages_received_total", "kind" => "subscribe").absolute(0);
    counter!("herald_api_requests_total", "endpoint" => "events", "status" => "200").absolute(0);
    counter!("herald_bus_messages_published_total").absolute(0);
    counter!("herald_bus_messages_received_total").absolute(0);
    counter!("herald_bus_reconnects_total").absolute(0);
    counter!("herald_bus_topology_changes_total").absolute(0);
    counter!("herald_bus_stalls_total").absolute(0);
    counter!("herald_recoveries_total", "outcome" => "recovered").absolute(0);
    counter!("herald_recovery_replayed_events_total").absolute(0);
    counter!("herald_history_caught_up_events_total").absolute(0);
    counter!("herald_bus_publishes_partial_total").absolute(0);
    gauge!("herald_http_connections").set(0.0);
    gauge!("herald_bus_topics").set(0.0);
    gauge!("herald_draining").set(0.0);
    gauge!("herald_console_feeds").set(0.0);
    counter!("herald_webhooks_sent_total", "outcome" => "delivered").absolute(0);
    counter!("herald_webhooks_dropped_total").absolute(0);
    counter!("herald_apps_store_reloads_total", "outcome" => "ok").absolute(0);
    counter!("herald_apps_store_lookups_total", "outcome" => "absent").absolute(0);
    // Histograms appear with their first sample (the first API request, the first delivery).
    // The in-process bus hands messages over in memory: its lag is zero, and says so.
    if in_process_bus {
        histogram!("herald_bus_lag_seconds").record(0.0);
    }
}

pub fn connection_gauge(app: &str, delta: f64) {
    gauge!("herald_connections", "app" => app.to_owned()).increment(delta);
}

pub fn opened(app: &str) {
    counter!("herald_connections_opened_total", "app" => app.to_owned()).increment(1);
}

/// Close code classes: `normal` (1000–1001), `protocol` (other 1xxx), `refused` (4000–4099),
/// `backoff` (4100–4199), `reconnect` (4200–4299), `other`, `transport` (no close frame).
pub fn closed(app: &str, code: Option<u16>) {
    let class = match code {
        None => "transport",
        Some(1000..=1001) => "normal",
        Some(1002..=3999) => "protocol",
        Some(4000..=4099) => "refused",
        Some(4100..=4199) => "backoff",
        Some(4200..=4299) => "reconnect",
        Some(_) => "other",
    };
    counter!("herald_connections_closed_total", "app" => app.to_owned(), "code_class" => class)
        .increment(1);
}

pub fn refused(reason: &'static str) {
    counter!("herald_connections_refused_total", "reason" => reason).increment(1);
}

// Per-frame and per-write counters keep their handles, so the hot path skips the registry.
static BYTES_IN: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
static BYTES_OUT: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();

pub fn bytes_in(n: usize) {
    BYTES_IN
        .get_or_init(|| counter!("herald_bytes_received_total"))
        .increment(n as u64);
}

pub fn bytes_out(n: usize) {
    BYTES_OUT
        .get_or_init(|| counter!("herald_bytes_sent_total"))
        .increment(n as u64);
}

pub fn api_request(endpoint: &'static str, status: u16, seconds: f64) {
    counter!("herald_api_requests_total", "endpoint" => endpoint, "status" => status.to_string())
        .increment(1);
    histogram!("herald_api_request_duration_seconds", "endpoint" => endpoint).record(seconds);
}

pub fn http_connections(n: u64) {
    gauge!("herald_http_connections").set(n as f64);
}

pub fn ready(ready: bool) {
    gauge!("herald_ready").set(if ready { 1.0 } else { 0.0 });
}

pub fn draining(on: bool) {
    gauge!("herald_draining").set(if on { 1.0 } else { 0.0 });
}

pub fn bus_connected(on: bool) {
    gauge!("herald_bus_connected").set(if on { 1.0 } else { 0.0 });
}

/// Samples the Tokio runtime.
pub fn runtime(handle: &tokio::runtime::Handle) {
    let m = handle.metrics();
    gauge!("herald_runtime_workers").set(m.num_workers() as f64);
    gauge!("herald_runtime_alive_tasks").set(m.num_alive_tasks() as f64);
    gauge!("herald_runtime_global_queue_depth").set(m.global_queue_depth() as f64);
}

pub fn apps_store_up(up: bool) {
    gauge!("herald_apps_store_up").set(if up { 1.0 } else { 0.0 });
}

pub fn apps_store_reload(ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    counter!("herald_apps_store_reloads_total", "outcome" => outcome).increment(1);
}

pub fn apps_store_lookup(outcome: &'static str) {
    counter!("herald_apps_store_lookups_total", "outcome" => outcome).increment(1);
}
