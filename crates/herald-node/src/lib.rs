//! `herald`: a Pusher-protocol real-time server, as a library the binary and the tests run.
//!
//! A tour, in the order a request meets the code:
//!
//! - [`config`]: one typed configuration, read in one place (figment: defaults < Reverb's
//!   variables < the TOML file < `HERALD_*` variables).
//! - [`server`]: the listeners: WebSockets and the HTTP API on the public port (with header,
//!   body and connection bounds), `/metrics`, `/healthz`, `/readyz` on the admin port.
//! - [`ws`]: one WebSocket connection: admission, then one task that reads client frames
//!   ([`frames`]) into the hub's session and writes the connection's outbound queue.
//! - [`api`]: the Pusher HTTP API: signature check, then hub operations.
//! - [`apps_store`]: where apps come from (the file, or a database shared by the nodes) and
//!   how the hub's apps follow it; [`admin`]: the admin API that changes them.
//! - [`webhooks`]: webhook delivery; [`metrics`]; [`tls`]; [`node`] (admission state).
//! - [`drain`]: the one shutdown path: not ready, connections closed over the drain window,
//!   webhooks flushed, the cluster left, every task finished.
//!
//! This crate alone reads the environment, handles signals (in the binary) and knows hyper and
//! fastwebsockets; the hub ([`herald_hub`]) and the bus ([`herald_bus`]) get plain settings.

pub mod admin;
pub mod api;
pub mod apps_store;
pub mod config;
pub mod console;
pub mod drain;
pub mod frames;
pub mod fuzzing;
pub mod metrics;
pub mod node;
pub mod server;
pub mod tls;
pub mod webhooks;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use herald_hub::{App, Apps, Cluster, Hub, HubConfig};
use rand::distr::{Alphanumeric, SampleString};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::apps_store::sync::AppsSync;
use crate::config::Config;
use crate::node::Node;

/// The node's two listening sockets, bound before it runs (port 0 picks free ports).
#[derive(Debug)]
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub fn bind(config: &Config) -> anyhow::Result<Self> {
        let public = listen(&config.server.listen, config.server.listen_backlog)
            .with_context(|| format!("binding server.listen {}", config.server.listen))?;
        let admin = listen(&config.server.admin_listen, 128).with_context(|| {
            format!("binding server.admin_listen {}", config.server.admin_listen)
        })?;
        Ok(Listeners { public, admin })
    }

    pub fn public_addr(&self) -> std::io::Result<SocketAddr> {
        self.public.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }
}

/// Runs a node on `listeners` until `shutdown` is cancelled, then drains it: not ready, new
/// connections refused, open ones closed with 4200 over `drain_window`, the webhooks those
/// closes caused sent, the cluster left, and every task finished (within `drain_deadline`).
pub async fn run(
    mut config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let database = config.apps_store.is_database();
    // Without apps (and without a database to hold them) the node runs a demo app.
    let demo = (!database && config.apps.is_empty()).then(|| {
        App::new(
            "demo",
            "demo-key",
            Alphanumeric.sample_string(&mut rand::rng(), 24),
        )
    });
    if let Some(app) = &demo {
        config.apps.push(app.clone());
    }
    let file_apps = if database {
        Vec::new()
    } else {
        config.apps.clone()
    };
    let prometheus = metrics::install().context("installing the metrics recorder")?;
    metrics::register_zeroes(
        &file_apps.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
        config.server.max_connections,
        config.bus.driver != "redis",
    );
    tracing::info!(config = %config.redacted(), "starting");
    if database && !config.apps.is_empty() {
        tracing::warn!(
            apps = config.apps.len(),
            "[[apps]] of the configuration are not used with a database apps store; `herald migrate` imports them into it"
        );
    }

    let node_id = config.node_id();
    // Background work of the hub, the bus, webhooks and the admin port: stopped by `cancel`,
    // awaited through `tasks`.
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
    let apps = Apps::new(file_apps.iter().map(|a| {
        let mut app = a.clone();
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
    let apps_of = Arc::downgrade(&hub);
    let webhooks = webhooks::start(
        Arc::new(move |id: &str| apps_of.upgrade()?.app_by_id(id)),
        &tasks,
        hub.monitor().clone(),
    );
    hub.set_webhooks(webhooks.sink());
    let store = apps_store::open(&config, demo.clone())?;
    let apps = AppsSync::start(
        store,
        hub.clone(),
        debug_app,
        Duration::from_secs(config.apps_store.secret_grace_seconds),
        tasks.clone(),
        cancel.clone(),
    )
    .await;
    let public_addr = listeners.public_addr()?;
    let admin_addr = listeners.admin_addr()?;
    let mut admin_token = config.admin.token().map_err(anyhow::Error::msg)?;
    if demo.is_some() && admin_token.is_none() {
        // The demo opens its console with a fresh token (the admin port is local by default).
        admin_token = Some(Alphanumeric.sample_string(&mut rand::rng(), 32));
    }
    if admin_token.is_none() {
        tracing::info!(
            "debug console and admin API off (set [admin] token or token_file to open them)"
        );
        if database {
            tracing::warn!("apps are in a database but the admin API is off: changes made in the database reach the nodes at their next reload (every 60 s)");
        }
    }
    let node = Node::new(config, hub, apps, admin_token);
    metrics::ready(node.readiness().is_ok());

    let tls = node.config.tls.as_ref().map(tls::acceptor).transpose()?;
    // Connections (HTTP and WebSocket), separate so the drain can wait for them alone.
    let connections = TaskTracker::new();
    connections.spawn(server::serve_public(
        node.clone(),
        listeners.public,
        connections.clone(),
        tls,
    ));
    tasks.spawn(server::serve_admin(
        node.clone(),
        listeners.admin,
        prometheus,
        cancel.clone(),
    ));
    tracing::info!(listen = %public_addr, admin = %admin_addr, node_id = %node_id, "herald is listening");
    if let Some(app) = &demo {
        print_demo(
            app,
            public_addr,
            admin_addr,
            node.admin_token().unwrap_or_default(),
        );
    }

    shutdown.cancelled().await;
    let deadline = drain::drain(&node, &connections).await;
    webhooks.finish(deadline).await;
    node.hub.shutdown().await;
    cancel.cancel();
    tasks.close();
    if tokio::time::timeout_at(
        deadline.max(tokio::time::Instant::now() + Duration::from_secs(1)),
        tasks.wait(),
    )
    .await
    .is_err()
    {
        tracing::warn!("background tasks still running at the drain deadline");
    }
    tracing::info!("stopped");
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

fn print_demo(app: &App, public: std::net::SocketAddr, admin: std::net::SocketAddr, token: &str) {
    let host = public.ip();
    let port = public.port();
    println!(
        r#"
Herald is running with a demo app (no apps configured).

  WebSocket + HTTP API   http://{public}
  metrics / health       http://{admin}/metrics  /healthz  /readyz
  debug console          http://{admin}/console#token={token}
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
