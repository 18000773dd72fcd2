//! Test harness: starts the real `herald` binary on free ports and talks to it with a Rust
//! WebSocket client (fastwebsockets) and a signed HTTP API client (hyper).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fastwebsockets::WebSocket;
use http_body_util::{BodyExt, Full};
use hyper::upgrade::Upgraded;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

pub mod admin;
pub mod client;
pub mod db;
pub mod faults;
pub mod hooks;
pub mod proxy;
pub mod raw;
pub mod redis;

pub const KEY: &str = "key1";
pub const SECRET: &str = "secret1";
pub const APP: &str = "app1";

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `herald` process, killed on drop.
pub struct Herald {
    pub child: Child,
    pub port: u16,
    pub admin_port: u16,
    pub dir: tempdir::Dir,
}

pub mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let p = std::env::temp_dir().join(format!(
                "herald-test-{}-{}",
                std::process::id(),
                rand_suffix()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed) * 1000
            + std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
                % 1000
    }
}

/// Runs `herald` on a config of its own `[server]` listeners and `node_id` plus `rest`, until it
/// exits: whether it succeeded, and what it printed on stderr.
pub async fn run_until_exit(node_id: &str, rest: &str) -> (bool, String) {
    let dir = tempdir::Dir::new();
    let cfg = dir.0.join("herald.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\nnode_id = \"{node_id}\"\n{rest}",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let out = herald_output(vec!["--config".into(), cfg.into_os_string()]).await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the `herald` binary with `args` until it exits (logging errors only).
pub async fn herald_output(args: Vec<std::ffi::OsString>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// The apps every test node has: app1 (client events on) and app2 (client events off,
/// at most 2 connections, an origin allowlist).
pub fn default_apps() -> String {
    r#"
[[apps]]
id = "app1"
key = "key1"
secret = "secret1"

[[apps]]
id = "app2"
key = "key2"
secret = "secret2"
client_events = false
max_connections = 2
allowed_origins = ["https://allowed.example"]

[[apps]]
id = "app3"
key = "key3"
secret = "secret3"
watchlist_events = true
subscription_count_events = true
cache_ttl = 2

[[apps]]
id = "app4"
key = "key4"
secret = "secret4"
authorized_connections_timeout = 1
"#
    .to_owned()
}

impl Herald {
    pub async fn start() -> Herald {
        Self::start_with("", &default_apps()).await
    }

    /// Starts a node; `server_extra` is added to `[server]`, `rest` after it.
    pub async fn start_with(server_extra: &str, rest: &str) -> Herald {
        Self::start_node("test-node", server_extra, rest).await
    }

    /// Starts a node with its own id (for cluster tests).
    pub async fn start_node(node_id: &str, server_extra: &str, rest: &str) -> Herald {
        Self::spawn("", node_id, server_extra, rest, false).await
    }

    /// Starts a node through `sh -c "{shell_prefix} exec herald …"` (e.g. `ulimit -n 200;`).
    pub async fn start_wrapped(shell_prefix: &str, server_extra: &str, rest: &str) -> Herald {
        Self::spawn(shell_prefix, "test-node", server_extra, rest, false).await
    }

    /// Starts a node whose standard output (info level) goes to a file, read by [`Herald::stdout`].
    pub async fn start_logged(server_extra: &str, rest: &str) -> Herald {
        Self::spawn("", "test-node", server_extra, rest, true).await
    }

    /// What a node started with [`Herald::start_logged`] printed so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("stdout.log")).unwrap_or_default()
    }

    async fn spawn(
        shell_prefix: &str,
        node_id: &str,
        server_extra: &str,
        rest: &str,
        logged: bool,
    ) -> Herald {
        let port = free_port();
        let admin_port = free_port();
        let dir = tempdir::Dir::new();
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\nnode_id = \"{node_id}\"\n{server_extra}\n{rest}"
        );
        let path = dir.0.join("herald.toml");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(config.as_bytes())
            .unwrap();
        let mut command = if shell_prefix.is_empty() {
            let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
            c.arg("--config").arg(&path);
            c
        } else {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("{shell_prefix} exec \"$0\" --config \"$1\"",));
            c.arg(env!("CARGO_BIN_EXE_herald")).arg(&path);
            c
        };
        let level = if logged {
            "info".to_owned()
        } else {
            std::env::var("HERALD_TEST_LOG").unwrap_or_else(|_| "warn".into())
        };
        let stdout = if logged {
            Stdio::from(std::fs::File::create(dir.0.join("stdout.log")).unwrap())
        } else if std::env::var_os("HERALD_TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let child = command
            .env("RUST_LOG", level)
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("herald starts");
        let h = Herald {
            child,
            port,
            admin_port,
            dir,
        };
        // Listening sockets are bound before the node connects its bus; it serves once
        // /healthz answers.
        for _ in 0..400 {
            if healthy(admin_port).await {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("herald did not start serving on {port}");
    }

    pub async fn ws(&self, key: &str) -> Client {
        Client::connect(
            self.port,
            &format!("/app/{key}?protocol=7&client=rust&version=1.0"),
            None,
        )
        .await
    }

    /// Connects and reads `pusher:connection_established`.
    pub async fn client(&self) -> Client {
        self.client_of(KEY).await
    }

    /// A connected client of the app with `key`.
    pub async fn client_of(&self, key: &str) -> Client {
        let mut c = self.ws(key).await;
        let hello = c.recv().await;
        assert_eq!(hello["event"], "pusher:connection_established", "{hello}");
        let data: Value = serde_json::from_str(hello["data"].as_str().unwrap()).unwrap();
        c.socket_id = data["socket_id"].as_str().unwrap().to_owned();
        c
    }

    pub fn api(&self) -> Api {
        Api {
            port: self.port,
            app: APP.into(),
            key: KEY.into(),
            secret: SECRET.into(),
        }
    }

    /// The API client of app3 (watchlist, subscription counts, 2 s cache TTL).
    pub fn api3(&self) -> Api {
        Api {
            port: self.port,
            app: "app3".into(),
            key: "key3".into(),
            secret: "secret3".into(),
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The value of a metric sample line starting with `prefix` (0 when absent).
    pub async fn metric(&self, prefix: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn sigterm(&self) {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http(self.admin_port, "GET", path, Bytes::new()).await
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use client::*;

/// A signed HTTP API client.
pub struct Api {
    pub port: u16,
    pub app: String,
    pub key: String,
    pub secret: String,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Api {
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        body: &str,
    ) -> (u16, Value) {
        self.call_at(method, path, params, body, now()).await
    }

    pub async fn call_at(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        body: &str,
        ts: u64,
    ) -> (u16, Value) {
        let full = format!("/apps/{}{path}", self.app);
        let q = herald_protocol::api_auth::signed_query(
            &self.key,
            &self.secret,
            method,
            &full,
            params,
            body.as_bytes(),
            ts,
        );
        let (status, text) = http(
            self.port,
            method,
            &format!("{full}?{q}"),
            Bytes::from(body.to_owned()),
        )
        .await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn trigger(
        &self,
        channels: &[&str],
        event: &str,
        data: &str,
        socket_id: Option<&str>,
    ) -> (u16, Value) {
        let mut body = serde_json::json!({"name": event, "channels": channels, "data": data});
        if let Some(s) = socket_id {
            body["socket_id"] = Value::String(s.to_owned());
        }
        self.call("POST", "/events", &[], &body.to_string()).await
    }
}

/// Whether the admin port answers `GET /healthz` with 200 (within 200 ms).
async fn healthy(admin_port: u16) -> bool {
    let probe = async {
        let stream = TcpStream::connect(("127.0.0.1", admin_port)).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = Request::builder()
            .uri("/healthz")
            .header("Host", "127.0.0.1")
            .body(Full::new(Bytes::new()))
            .ok()?;
        let res = sender.send_request(req).await.ok()?;
        Some(res.status().as_u16() == 200)
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(200), probe).await,
        Ok(Some(true))
    )
}

/// A plain HTTP/1.1 request to 127.0.0.1:port; returns status and body text.
pub async fn http(port: u16, method: &str, path_and_query: &str, body: Bytes) -> (u16, String) {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("Host", format!("127.0.0.1:{port}"))
        .header("Content-Type", "application/json")
        .body(Full::new(body))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

pub type RawWs = WebSocket<TokioIo<Upgraded>>;
