//! `herald`: a Pusher-protocol real-time server.
//!
//! The node reads the configuration ([`config`]), builds the hub on the in-process or Redis bus,
//! serves WebSockets and the HTTP API on one port ([`server`], [`ws`], [`api`]) and metrics and
//! health on another, and drains connections gracefully on SIGTERM ([`drain`]). It is the only
//! crate that reads the environment, handles signals, or knows hyper and fastwebsockets.

mod api;
mod config;
mod drain;
mod frames;
mod metrics;
mod node;
mod server;
mod tls;
mod webhooks;
mod ws;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald_hub::{Apps, Cluster, Hub, HubConfig};
use rand::distr::{Alphanumeric, SampleString};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AppConfig, Config};
use crate::node::Node;

#[derive(Parser, Debug)]
#[command(name = "herald", version, about = "A Pusher-protocol real-time server")]
struct Cli {
    /// TOML configuration file (also HERALD_CONFIG).
    #[arg(long, global = true, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a configuration file and exit (non-zero with the bad key named).
    CheckConfig {
        /// The file to check (default: --config).
        file: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::CheckConfig { file }) = &cli.command {
        let path = file.clone().or(cli.config.clone());
        return match config::load(path.as_deref()) {
            Ok(c) => {
                println!(
                    "configuration OK: {} app(s), listen {}, bus {}",
                    c.apps.len(),
                    c.server.listen,
                    c.bus.driver
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("configuration error: {e}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let config = match config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "herald stopped");
            eprintln!("herald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let json = match config.log.format.as_str() {
        "json" => true,
        "text" => false,
        _ => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn run(mut config: Config) -> anyhow::Result<()> {
    let demo = config.apps.is_empty();
    if demo {
        config.apps.push(AppConfig {
            id: "demo".into(),
            key: "demo-key".into(),
            secret: Alphanumeric.sample_string(&mut rand::rng(), 24),
            ..toml_app_defaults()
        });
    }
    raise_fd_limit();
    let prometheus = metrics::install().context("installing the metrics recorder")?;
    metrics::register_zeroes(
        &config.apps.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
        config.server.max_connections,
        config.bus.driver != "redis",
    );
    tracing::info!(config = %config.redacted(), "starting");

    let node_id = config.node_id();
    // Background work of the hub and the bus: stopped by `cancel`, awaited through `tasks`.
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    let cluster = match config.bus.driver.as_str() {
        "redis" => {
            let cfg = redis_bus_config(&config, &node_id);
            Cluster::of(Arc::new(
                herald_bus::RedisBus::connect(cfg, tasks.clone(), cancel.clone())
                    .await
                    .context("connecting the Redis bus")?,
            ))
        }
        _ => Cluster::local(),
    };
    metrics::bus_connected(cluster.broker.readiness().is_ok());
    let debug_app = config.log.debug_app.clone();
    let apps = Apps::new(config.apps.iter().map(|a| {
        let mut app = a.to_app();
        app.debug_frames = debug_app.as_deref() == Some(a.id.as_str());
        app
    }));
    let hub = Hub::new(
        HubConfig {
            node_id: node_id.clone(),
            outbox_bytes: config.server.outbound_queue_bytes,
        },
        apps,
        cluster,
        tasks.clone(),
        cancel.clone(),
    );

    if let Some(sender) = webhooks::start(&config.apps) {
        hub.set_webhooks(sender);
    }
    let public = listen(&config.server.listen, config.server.listen_backlog)
        .with_context(|| format!("binding server.listen {}", config.server.listen))?;
    let admin = listen(&config.server.admin_listen, 128)
        .with_context(|| format!("binding server.admin_listen {}", config.server.admin_listen))?;
    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let node = Node::new(config, hub);
    metrics::ready(node.readiness().is_ok());

    let tls = node.config.tls.as_ref().map(tls::acceptor).transpose()?;
    let tracker = TaskTracker::new();
    let accept = tokio::spawn(server::serve_public(
        node.clone(),
        public,
        tracker.clone(),
        tls,
    ));
    tokio::spawn(server::serve_admin(node.clone(), admin, prometheus));
    tracing::info!(listen = %public_addr, admin = %admin_addr, node_id = %node_id, "herald is listening");
    if demo {
        print_demo(&node.config.apps[0], public_addr, admin_addr);
    }

    drain::wait_for_signal().await;
    drain::drain(&node, &tracker).await;
    node.hub.shutdown().await;
    accept.abort();
    cancel.cancel();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
    Ok(())
}

/// A listener with a deep accept queue: a reconnect storm arrives faster than any accept loop,
/// and the default queue of 128 drops the excess (the kernel caps it at `net.core.somaxconn`).
fn listen(addr: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Every connection is a file descriptor: take the hard limit, not the usual soft 1024.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(nofile = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
}

fn redis_bus_config(config: &Config, node_id: &str) -> herald_bus::RedisBusConfig {
    let mut cfg = herald_bus::RedisBusConfig::new(node_id);
    cfg.url = config.bus.url.clone();
    cfg.cluster_urls = config.bus.cluster_urls.clone();
    cfg.sentinel_urls = config.bus.sentinel_urls.clone();
    cfg.sentinel_master = config.bus.sentinel_master.clone();
    cfg.tls_ca_file = config.bus.tls_ca_file.as_ref().map(Into::into);
    cfg.key_prefix = config.bus.key_prefix.clone();
    cfg.lease = Duration::from_millis((config.bus.lease_seconds * 1000).max(1000));
    cfg
}

fn toml_app_defaults() -> AppConfig {
    // The defaults a `[[apps]]` table gets for the keys it leaves out.
    use figment::providers::Format;
    let defaults = figment::Figment::from(figment::providers::Toml::string(
        "id = \"\"\nkey = \"\"\nsecret = \"\"",
    ));
    #[allow(clippy::expect_used)]
    defaults.extract().expect("built-in app defaults parse")
}

fn print_demo(app: &AppConfig, public: std::net::SocketAddr, admin: std::net::SocketAddr) {
    let host = public.ip();
    let port = public.port();
    println!(
        r#"
Herald is running with a demo app (no apps configured).

  WebSocket + HTTP API   http://{public}
  metrics / health       http://{admin}/metrics  /healthz  /readyz
  app id                 {id}
  app key                {key}
  app secret             {secret}

Connect from a browser with pusher-js:

  const pusher = new Pusher('{key}', {{
    wsHost: '{host}', wsPort: {port}, forceTLS: false,
    enabledTransports: ['ws', 'wss'], cluster: 'herald',
  }});
  pusher.subscribe('my-channel').bind('my-event', (data) => console.log(data));

Publish with any Pusher server SDK (host {host}, port {port}, appId '{id}', key, secret), e.g.
  new Pusher({{ appId: '{id}', key: '{key}', secret: '{secret}', host: '{host}', port: {port}, useTLS: false }})
    .trigger('my-channel', 'my-event', {{ hello: 'world' }});
"#,
        id = app.id,
        key = app.key,
        secret = app.secret,
    );
}
