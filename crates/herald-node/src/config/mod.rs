//! Configuration: one typed `Config`, read in one place.
//!
//! Layers, later ones winning: built-in defaults < Reverb's `.env` variables (for one app and the
//! listen address, so a Laravel app's settings work unchanged) < the TOML file (`--config` or
//! `HERALD_CONFIG`) < `HERALD_*` environment variables (`__` separates levels, e.g.
//! `HERALD_SERVER__LISTEN`). Unknown keys are errors that name the key.

mod apps;
mod apps_store;
#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

use herald_hub::App;
use serde::{Deserialize, Serialize};

pub use apps::{app_from_json, check_app, check_apps, MAX_CREDENTIAL_LEN};
pub use apps_store::AppsStoreConfig;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub bus: BusConfig,
    pub log: LogConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    pub admin: AdminConfig,
    pub apps_store: AppsStoreConfig,
    pub apps: Vec<App>,
    /// The file the configuration was read from (the file store reads its apps again from it
    /// on SIGHUP). Not a setting.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// The admin token that opens the debug console (and the admin API) on the admin port. Off
/// when neither is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A file holding the token (a Kubernetes secret mounted as a file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

impl AdminConfig {
    /// The token: `token`, or the trimmed contents of `token_file`; `None` when the console is
    /// off.
    pub fn token(&self) -> Result<Option<String>, String> {
        let token = match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => {
                return Err("admin: set token or token_file, not both".into());
            }
            (Some(t), None) => t.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("admin.token_file: cannot read {path}: {e}"))?
                .trim()
                .to_owned(),
            (None, None) => return Ok(None),
        };
        if token.len() < MIN_ADMIN_TOKEN_LEN {
            return Err(format!(
                "admin.token: at least {MIN_ADMIN_TOKEN_LEN} characters"
            ));
        }
        Ok(Some(token))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// WebSocket and HTTP API address.
    pub listen: String,
    /// Metrics, health and readiness address.
    pub admin_listen: String,
    /// This node's id in the cluster (default: the host name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Seconds of silence after which a client should ping (sent in the handshake).
    pub activity_timeout: u64,
    /// Seconds to wait for any frame after the server pings an idle client.
    pub pong_timeout: u64,
    /// Most open connections on this node (4100 beyond).
    pub max_connections: u64,
    /// WebSocket handshakes accepted per second on this node (4100 beyond).
    pub handshakes_per_second: u32,
    /// Bound of each connection's outbound queue in bytes (4100 for a client over it).
    pub outbound_queue_bytes: usize,
    /// Largest WebSocket message accepted from a client, in bytes (close 1009 beyond).
    pub max_message_bytes: usize,
    /// Largest HTTP API request body, in bytes (413 beyond).
    pub max_request_bytes: usize,
    /// Pending-connection queue of the public listener (capped by `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Seconds a client has to send a complete request head (the WebSocket upgrade or an API
    /// request); also how long an idle keep-alive HTTP connection is kept.
    pub header_timeout: u64,
    /// Seconds an API request body has to arrive in full (408 beyond).
    pub body_timeout: u64,
    /// Most connections that are not (yet) WebSockets: handshakes in progress and HTTP API
    /// connections. Beyond it new connections are closed at once.
    pub max_http_connections: u64,
    /// Most connections from one IP address (WebSocket and HTTP); 0 = no limit. Behind a proxy
    /// or load balancer every client has the proxy's address: leave it off there.
    pub max_connections_per_ip: u64,
    /// Seconds over which connections are closed (4200) on SIGTERM.
    pub drain_window: u64,
    /// Seconds after SIGTERM at which the process exits regardless.
    pub drain_deadline: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9601".into(),
            node_id: None,
            activity_timeout: 120,
            pong_timeout: 30,
            max_connections: 100_000,
            handshakes_per_second: 2_000,
            outbound_queue_bytes: 1 << 20,
            max_message_bytes: 32 * 1024,
            max_request_bytes: 256 * 1024,
            listen_backlog: 4096,
            header_timeout: 10,
            body_timeout: 10,
            max_http_connections: 10_000,
            max_connections_per_ip: 0,
            drain_window: 20,
            drain_deadline: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// `memory` (single node) or `redis`.
    pub driver: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Redis Cluster seed URLs.
    pub cluster_urls: Vec<String>,
    /// Redis Sentinel URLs (with `sentinel_master`).
    pub sentinel_urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_master: Option<String>,
    /// CA certificates (PEM) trusted for `rediss://` besides the system's (a private CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<String>,
    /// Prefix of every Redis key and topic, so several Herald clusters can share one Redis.
    pub key_prefix: String,
    /// Seconds a node's lease lives without renewal.
    pub lease_seconds: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        // The bus's own defaults, so they are written once.
        let bus = herald_bus::RedisBusConfig::new("");
        BusConfig {
            driver: "memory".into(),
            url: None,
            cluster_urls: Vec::new(),
            sentinel_urls: Vec::new(),
            sentinel_master: None,
            tls_ca_file: None,
            key_prefix: bus.key_prefix,
            lease_seconds: bus.lease.as_secs(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `auto` (text on a terminal, JSON otherwise), `text` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `herald_node=debug` (`RUST_LOG` wins).
    pub level: String,
    /// An app id whose connections log every frame's metadata (kind, channel, size; never
    /// payloads). Off when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_app: Option<String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "auto".into(),
            level: "info".into(),
            debug_app: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: String,
    pub key: String,
}

/// The layers other than defaults and the file: Reverb's variables.
#[derive(Serialize)]
struct ReverbLayer {
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<ReverbServer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    apps: Option<Vec<App>>,
}

#[derive(Serialize)]
struct ReverbServer {
    listen: String,
}

fn reverb_layer(env: &dyn Fn(&str) -> Option<String>) -> ReverbLayer {
    let server = match (env("REVERB_SERVER_HOST"), env("REVERB_SERVER_PORT")) {
        (None, None) => None,
        (host, port) => Some(ReverbServer {
            listen: format!(
                "{}:{}",
                host.unwrap_or_else(|| "0.0.0.0".into()),
                port.unwrap_or_else(|| "8080".into())
            ),
        }),
    };
    let apps = match (
        env("REVERB_APP_ID"),
        env("REVERB_APP_KEY"),
        env("REVERB_APP_SECRET"),
    ) {
        (Some(id), Some(key), Some(secret)) => Some(vec![App::new(id, key, secret)]),
        _ => None,
    };
    ReverbLayer { server, apps }
}

/// Builds the figment from the layers; `file` is the TOML file, if any.
pub fn figment(file: Option<&Path>) -> Figment {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut fig = Figment::from(Serialized::defaults(Config::default()))
        .merge(Serialized::defaults(reverb_layer(&env)));
    if let Some(path) = file {
        fig = fig.merge(Toml::file_exact(path));
    }
    // Only HERALD_{SECTION}__{KEY} variables are configuration: Kubernetes also injects service
    // links such as HERALD_PORT or HERALD_SERVICE_HOST, and tools set HERALD_BIN and the like.
    fig.merge(
        Env::prefixed("HERALD_")
            .filter(|key| {
                let key = key.as_str().to_ascii_lowercase();
                [
                    "server__",
                    "bus__",
                    "log__",
                    "tls__",
                    "admin__",
                    "apps_store__",
                ]
                .iter()
                .any(|p| key.starts_with(p))
            })
            .split("__"),
    )
}

/// Loads and checks the configuration.
pub fn load(file: Option<&Path>) -> Result<Config, String> {
    let mut config: Config = figment(file)
        .extract()
        .map_err(|e| e.into_iter().map(describe).collect::<Vec<_>>().join("; "))?;
    config.validate()?;
    config.source = file.map(Path::to_path_buf);
    Ok(config)
}

/// One configuration error for people: the key as written in the file (`server.listen`, not
/// figment's `default.server.listen`), what is wrong, and where the value came from.
fn describe(err: figment::Error) -> String {
    let key = err.path.join(".");
    let source = err
        .metadata
        .as_ref()
        .and_then(|m| m.source.as_ref())
        .map(|s| format!(" (in {s})"))
        .unwrap_or_default();
    if key.is_empty() {
        format!("{}{source}", err.kind)
    } else {
        format!("{key}: {}{source}", err.kind)
    }
}

impl Config {
    /// Checks values serde cannot: addresses, drivers, duplicate apps.
    pub fn validate(&self) -> Result<(), String> {
        self.server.listen.parse::<SocketAddr>().map_err(|e| {
            format!(
                "server.listen: {:?} is not HOST:PORT ({e})",
                self.server.listen
            )
        })?;
        self.server
            .admin_listen
            .parse::<SocketAddr>()
            .map_err(|e| {
                format!(
                    "server.admin_listen: {:?} is not HOST:PORT ({e})",
                    self.server.admin_listen
                )
            })?;
        if self.server.activity_timeout == 0 {
            return Err("server.activity_timeout must be at least 1 (pusher-js refuses 0)".into());
        }
        if self.server.header_timeout == 0 || self.server.body_timeout == 0 {
            return Err(
                "server.header_timeout and server.body_timeout must be at least 1 second".into(),
            );
        }
        self.admin.token()?;
        if let Some(id) = &self.server.node_id {
            check_id("server.node_id", id)?;
        }
        check_key_prefix(&self.bus.key_prefix)?;
        if self.server.outbound_queue_bytes < 16 * 1024 {
            return Err("server.outbound_queue_bytes must be at least 16384".into());
        }
        match self.bus.driver.as_str() {
            "memory" => {}
            "redis" => {
                if self.bus.url.is_none()
                    && self.bus.cluster_urls.is_empty()
                    && self.bus.sentinel_urls.is_empty()
                {
                    return Err("bus.url: the redis driver needs bus.url, bus.cluster_urls or bus.sentinel_urls".into());
                }
                if !self.bus.sentinel_urls.is_empty() && self.bus.sentinel_master.is_none() {
                    return Err("bus.sentinel_master: required with bus.sentinel_urls".into());
                }
            }
            other => {
                return Err(format!(
                    "bus.driver: {other:?} is not one of \"memory\", \"redis\""
                ))
            }
        }
        match self.log.format.as_str() {
            "auto" | "text" | "json" => {}
            other => {
                return Err(format!(
                    "log.format: {other:?} is not one of \"auto\", \"text\", \"json\""
                ))
            }
        }
        self.apps_store.validate()?;
        check_apps(&self.apps)?;
        Ok(())
    }

    /// The node id: configured, else the host name.
    pub fn node_id(&self) -> String {
        self.server.node_id.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .or_else(|| {
                    std::fs::read_to_string("/etc/hostname")
                        .ok()
                        .map(|h| h.trim().to_owned())
                })
                .filter(|h| check_id("host name", h).is_ok())
                .unwrap_or_else(|| "herald".into())
        })
    }

    /// The configuration as TOML with secrets replaced, for the start-up log.
    pub fn redacted(&self) -> String {
        let mut copy = self.clone();
        for app in &mut copy.apps {
            app.secret = "<redacted>".into();
            for hook in &mut app.webhooks {
                hook.url = redact_url(&hook.url);
            }
        }
        if copy.admin.token.is_some() {
            copy.admin.token = Some("<redacted>".into());
        }
        if let Some(url) = &mut copy.bus.url {
            *url = redact_url(url);
        }
        if let Some(url) = &mut copy.apps_store.url {
            *url = redact_url(url);
        }
        for u in copy
            .bus
            .cluster_urls
            .iter_mut()
            .chain(copy.bus.sentinel_urls.iter_mut())
        {
            *u = redact_url(u);
        }
        serde_json::to_string(&copy).unwrap_or_default()
    }
}

/// Longest node id or app id.
pub const MAX_ID_LEN: usize = 64;

/// Node ids and app ids become parts of Redis keys, hash tags and presence socket fields
/// (`node|socket`): only letters, digits, `.`, `_` and `-`, so that no id can alias another
/// (`n1` and `n1|x`) or end a hash tag early (`}`).
pub fn check_id(key: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!(
            "{key}: {id:?} must be 1 to {MAX_ID_LEN} characters"
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "{key}: {id:?} may contain only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

fn check_key_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.contains(['{', '}']) || prefix.chars().any(char::is_whitespace) {
        return Err(format!(
            "bus.key_prefix: {prefix:?} must be non-empty, without braces or spaces"
        ));
    }
    Ok(())
}

/// A URL without its credentials and query (which may hold tokens).
pub fn redact_url(url: &str) -> String {
    let url = match url.split_once('?') {
        Some((base, _)) => format!("{base}?<redacted>"),
        None => url.to_owned(),
    };
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://<redacted>@{}", &url[at + 1..]),
        _ => url,
    }
}
