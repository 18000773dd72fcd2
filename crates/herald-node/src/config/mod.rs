//! Configuration: one typed `Config`, read in one place.
//!
//! Layers, later ones winning: built-in defaults < Reverb's `.env` variables (for one app and the
//! listen address, so a Laravel app's settings work unchanged) < the TOML file (`--config` or
//! `HERALD_CONFIG`) < `HERALD_*` environment variables (`__` separates levels, e.g.
//! `HERALD_SERVER__LISTEN`). Unknown keys are errors that name the key.

use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

use herald_hub::App;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub bus: BusConfig,
    pub log: LogConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    pub admin: AdminConfig,
    pub apps: Vec<App>,
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
                ["server__", "bus__", "log__", "tls__", "admin__"]
                    .iter()
                    .any(|p| key.starts_with(p))
            })
            .split("__"),
    )
}

/// Loads and checks the configuration.
pub fn load(file: Option<&Path>) -> Result<Config, String> {
    let config: Config = figment(file)
        .extract()
        .map_err(|e| e.into_iter().map(describe).collect::<Vec<_>>().join("; "))?;
    config.validate()?;
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
        let mut ids = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            if app.id.is_empty() || app.key.is_empty() || app.secret.is_empty() {
                return Err(format!("apps[{i}]: id, key and secret must not be empty"));
            }
            check_id(&format!("apps[{i}].id"), &app.id)?;
            for (j, rule) in app.history.iter().enumerate() {
                rule.check()
                    .map_err(|e| format!("apps[{i}].history[{j}]: {e}"))?;
                if !rule.prefix.is_empty() && herald_protocol::channel::is_internal(&rule.prefix) {
                    return Err(format!(
                        "apps[{i}].history[{j}].prefix: {:?} names internal channels",
                        rule.prefix
                    ));
                }
            }
            if !ids.insert(&app.id) {
                return Err(format!("apps[{i}].id: {:?} is used by two apps", app.id));
            }
            if !keys.insert(&app.key) {
                return Err(format!("apps[{i}].key: {:?} is used by two apps", app.key));
            }
            if app.client_event_rate == 0 {
                return Err(format!("apps[{i}].client_event_rate must be at least 1"));
            }
            for (j, hook) in app.webhooks.iter().enumerate() {
                let uri: hyper::Uri = hook.url.parse().map_err(|e| {
                    format!(
                        "apps[{i}].webhooks[{j}].url: {:?} is not a URL ({e})",
                        hook.url
                    )
                })?;
                if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                    return Err(format!(
                        "apps[{i}].webhooks[{j}].url: {:?} must be an http:// or https:// URL",
                        hook.url
                    ));
                }
                for t in &hook.event_types {
                    if !herald_hub::webhook::EVENT_NAMES.contains(&t.as_str()) {
                        return Err(format!(
                            "apps[{i}].webhooks[{j}].event_types: {t:?} is not one of {}",
                            herald_hub::webhook::EVENT_NAMES.join(", ")
                        ));
                    }
                }
            }
        }
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
fn redact_url(url: &str) -> String {
    let url = match url.split_once('?') {
        Some((base, _)) => format!("{base}?<redacted>"),
        None => url.to_owned(),
    };
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://<redacted>@{}", &url[at + 1..]),
        _ => url,
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn file_then_env() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "h.toml",
                r#"
                [server]
                listen = "127.0.0.1:7000"
                [[apps]]
                id = "1"
                key = "k"
                secret = "s"
                "#,
            )?;
            jail.set_env("HERALD_SERVER__ADMIN_LISTEN", "127.0.0.1:7001");
            // Not configuration: Kubernetes service links and tool variables.
            jail.set_env("HERALD_PORT", "tcp://10.0.0.1:8080");
            jail.set_env("HERALD_SERVICE_HOST", "10.0.0.1");
            jail.set_env("HERALD_BIN", "/usr/bin/herald");
            let c = load(Some(Path::new("h.toml"))).expect("loads");
            assert_eq!(c.server.listen, "127.0.0.1:7000");
            assert_eq!(c.server.admin_listen, "127.0.0.1:7001");
            assert!(c.apps[0].client_events);
            jail.set_env("HERALD_SERVER__LISTEN", "127.0.0.1:7002");
            assert_eq!(
                load(Some(Path::new("h.toml")))
                    .expect("loads")
                    .server
                    .listen,
                "127.0.0.1:7002"
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_named() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "h.toml",
                "[server]\nlisten = \"127.0.0.1:7000\"\nlisten_port = 3\n",
            )?;
            let err = load(Some(Path::new("h.toml"))).expect_err("unknown key");
            assert!(
                err.starts_with("server.listen_port: unknown field"),
                "{err}"
            );
            assert!(!err.contains("default."), "{err}");
            jail.create_file(
                "a.toml",
                "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\nclient_event = true\n",
            )?;
            let err = load(Some(Path::new("a.toml"))).expect_err("unknown key");
            assert!(err.contains("apps.0.client_event: unknown field"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn reverb_variables_fill_in_and_herald_wins() {
        Jail::expect_with(|jail| {
            jail.set_env("REVERB_APP_ID", "rid");
            jail.set_env("REVERB_APP_KEY", "rkey");
            jail.set_env("REVERB_APP_SECRET", "rsecret");
            jail.set_env("REVERB_SERVER_HOST", "127.0.0.1");
            jail.set_env("REVERB_SERVER_PORT", "6001");
            let c = load(None).expect("loads");
            assert_eq!(c.apps.len(), 1);
            assert_eq!(c.apps[0].key, "rkey");
            assert_eq!(c.server.listen, "127.0.0.1:6001");
            jail.set_env("HERALD_SERVER__LISTEN", "127.0.0.1:6002");
            assert_eq!(load(None).expect("loads").server.listen, "127.0.0.1:6002");
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_named() {
        Jail::expect_with(|jail| {
            jail.create_file("h.toml", "[bus]\ndriver = \"kafka\"\n")?;
            assert!(load(Some(Path::new("h.toml")))
                .expect_err("bad")
                .contains("bus.driver"));
            jail.create_file("l.toml", "[server]\nlisten = \"nope\"\n")?;
            assert!(load(Some(Path::new("l.toml")))
                .expect_err("bad")
                .contains("server.listen"));
            Ok(())
        });
    }

    #[test]
    fn webhook_settings_are_checked() {
        Jail::expect_with(|jail| {
            let app = "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n";
            jail.create_file("ok.toml", &format!("{app}[[apps.webhooks]]\nurl = \"https://example.com/hooks?token=t\"\nevent_types = [\"member_added\"]\n"))?;
            let c = load(Some(Path::new("ok.toml"))).expect("valid");
            assert_eq!(c.apps[0].webhooks.len(), 1);
            assert!(c.apps[0].has_webhooks());
            assert!(!c.redacted().contains("token=t"));
            jail.create_file(
                "url.toml",
                &format!("{app}[[apps.webhooks]]\nurl = \"ftp://example.com\"\n"),
            )?;
            assert!(load(Some(Path::new("url.toml")))
                .expect_err("bad")
                .contains("apps[0].webhooks[0].url"));
            jail.create_file("ev.toml", &format!("{app}[[apps.webhooks]]\nurl = \"http://h\"\nevent_types = [\"member_joined\"]\n"))?;
            assert!(load(Some(Path::new("ev.toml")))
                .expect_err("bad")
                .contains("member_joined"));
            Ok(())
        });
    }

    #[test]
    fn ids_that_could_alias_are_refused() {
        Jail::expect_with(|jail| {
            for (file, body, key) in [
                ("n.toml", "[server]\nnode_id = \"n1|x\"\n", "server.node_id"),
                ("b.toml", "[server]\nnode_id = \"a{b}\"\n", "server.node_id"),
                (
                    "a.toml",
                    "[[apps]]\nid = \"a}b\"\nkey = \"k\"\nsecret = \"s\"\n",
                    "apps[0].id",
                ),
                ("p.toml", "[bus]\nkey_prefix = \"h{x\"\n", "bus.key_prefix"),
            ] {
                jail.create_file(file, body)?;
                let err = load(Some(Path::new(file))).expect_err(file);
                assert!(err.contains(key), "{file}: {err}");
            }
            jail.create_file("ok.toml", "[server]\nnode_id = \"herald-0.eu_1\"\n")?;
            assert!(load(Some(Path::new("ok.toml"))).is_ok());
            Ok(())
        });
    }

    #[test]
    fn redaction() {
        let mut c = Config::default();
        c.apps.push(App::new("1", "k", "topsecret"));
        c.bus.url = Some("redis://user:pw@host:6379".into());
        c.admin.token = Some("admin-token-never-logged".into());
        let r = c.redacted();
        assert!(!r.contains("topsecret") && !r.contains("pw@"), "{r}");
        assert!(!r.contains("admin-token-never-logged"), "{r}");
    }

    #[test]
    fn admin_token_from_the_config_or_a_file() {
        Jail::expect_with(|jail| {
            jail.create_file("token", "  file-token-0123456789\n")?;
            jail.create_file("f.toml", "[admin]\ntoken_file = \"token\"\n")?;
            let c = load(Some(Path::new("f.toml"))).expect("valid");
            assert_eq!(
                c.admin.token().expect("ok").as_deref(),
                Some("file-token-0123456789")
            );
            jail.create_file("short.toml", "[admin]\ntoken = \"short\"\n")?;
            assert!(load(Some(Path::new("short.toml")))
                .expect_err("too short")
                .contains("admin.token"));
            jail.create_file("missing.toml", "[admin]\ntoken_file = \"nope\"\n")?;
            assert!(load(Some(Path::new("missing.toml")))
                .expect_err("missing")
                .contains("admin.token_file"));
            assert_eq!(Config::default().admin.token(), Ok(None));
            Ok(())
        });
    }
}
