//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "herald-loadtest",
    version,
    about = "Persistent-connection load generator for Pusher protocol 7 servers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Ramp N subscribed connections, hold them, report ramp rate and server memory per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        channels: usize,
        /// Seconds to hold the connections before measuring memory.
        #[arg(long, default_value_t = 5)]
        hold: u64,
    },
    /// N subscribers, M messages at a fixed rate; publish→delivery latency, loss, order.
    Fanout(DeliverArgs),
    /// Like fanout but as fast as possible (default rate 0), optionally with batch_events.
    Burst(DeliverArgs),
    /// Subscribers spread over every --url (round robin), publishing through the first.
    Cluster(DeliverArgs),
    /// Presence join/leave churn: C channels × M stable members plus one churner per channel.
    Presence {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        channels: usize,
        /// Stable members per channel (servers usually cap a presence channel at 100).
        #[arg(long, default_value_t = 50)]
        members: usize,
        /// Joins per second over all channels.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Drop N subscribed connections at once and reconnect them all; time until all are back.
    Storm {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        channels: usize,
        /// Reconnects in flight at once; 0 = all of them.
        #[arg(long, default_value_t = 0)]
        reconnect_concurrency: usize,
        /// Give up on a connection that is not back after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Merge JSON results (one per server) into side-by-side markdown tables.
    /// Herald only: clients of history channels drop at once, miss events, and all resume.
    Recovery {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        channels: usize,
        /// Events published to each channel while its clients are away.
        #[arg(long, default_value_t = 20)]
        missed: u64,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    Report {
        files: Vec<PathBuf>,
        /// Also write an SVG latency plot of the given series (first match per file).
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Latency series to plot, e.g. "publish→deliver" or "cross-node".
        #[arg(long, default_value = "publish→deliver")]
        series: String,
    },
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// WebSocket base URL of a node (ws://host:port); repeat for a cluster.
    #[arg(long = "url", default_value = "ws://127.0.0.1:6001")]
    pub urls: Vec<String>,
    /// HTTP API base URL for publishing (default: the first --url as http).
    #[arg(long)]
    pub api_url: Option<String>,
    #[arg(long, default_value = "app-id")]
    pub app_id: String,
    #[arg(long, default_value = "app-key")]
    pub key: String,
    #[arg(long, default_value = "app-secret")]
    pub secret: String,
    /// Server process to measure (CPU, RSS) from /proc; repeatable.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Name of the server in reports.
    #[arg(long, default_value = "server")]
    pub label: String,
    /// Print the JSON report on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write an SVG latency-by-percentile plot.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Handshakes (connect + subscribe) in flight at once while ramping.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Loopback source addresses to spread connections over (127.0.0.1..); 0 = one per 25k.
    #[arg(long, default_value_t = 0)]
    pub source_ips: usize,
    /// Give up ramping after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub ramp_timeout: u64,
    /// Hard limit on the whole run; the process exits with status 3 when it is reached.
    #[arg(long, default_value_t = 900)]
    pub max_seconds: u64,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Args, Debug, Clone)]
pub struct DeliverArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Channels; subscriber i joins channel i % channels, message s goes to channel s % channels.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,
    /// Messages per second over all publishers; 0 = as fast as possible.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Concurrent HTTP publisher connections.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// With --rate: start publisher w a w/publishers share of the interval late, so events
    /// arrive evenly instead of one from each publisher at once.
    #[arg(long)]
    pub spread: bool,
    /// Events per request; more than 1 uses /batch_events (servers cap it at 10).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Size of each event's data string.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Seconds to wait for outstanding deliveries after the last publish.
    #[arg(long, default_value_t = 10)]
    pub drain_timeout: u64,
    /// Stop publishing after this many seconds even if messages remain.
    #[arg(long, default_value_t = 120)]
    pub max_publish: u64,
}
