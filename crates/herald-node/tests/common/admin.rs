//! The admin API and apps-store set-ups for the tests: bearer-token requests to a node's admin
//! port, node configurations on a database store, connection attempts that report how they
//! ended.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use super::db::Db;
use super::{Api, Client, Event, Herald};

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123";

/// A request to an admin port, with `token` as a bearer token when given.
pub async fn admin(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("Host", "127.0.0.1")
        .header("Content-Type", "application/json");
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let res = sender
        .send_request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `PUT /admin/apps/{id}` with the admin token.
pub async fn put_app(node: &Herald, id: &str, body: Value) -> (u16, Value) {
    admin(
        node.admin_port,
        "PUT",
        &format!("/admin/apps/{id}"),
        Some(ADMIN_TOKEN),
        &body.to_string(),
    )
    .await
}

/// `DELETE /admin/apps/{id}` with the admin token.
pub async fn delete_app(node: &Herald, id: &str) -> (u16, Value) {
    admin(
        node.admin_port,
        "DELETE",
        &format!("/admin/apps/{id}"),
        Some(ADMIN_TOKEN),
        "",
    )
    .await
}

/// The configuration after `[server]` of a node on a database store reached at `url`, on the
/// Redis at `redis_url`, with the admin token and a rotation grace of `grace` seconds.
pub fn store_config(db: &Db, url: &str, redis_url: &str, grace: u64) -> String {
    format!(
        "[bus]\ndriver = \"redis\"\nurl = \"{redis_url}\"\n\n[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\n\
         [apps_store]\ndriver = \"{}\"\nurl = \"{url}\"\nsecret_grace_seconds = {grace}\n",
        db.driver.name()
    )
}

/// The signed API client of an app on `node`.
pub fn api_of(node: &Herald, app: &str, key: &str, secret: &str) -> Api {
    Api {
        port: node.port,
        app: app.into(),
        key: key.into(),
        secret: secret.into(),
    }
}

/// How a connection attempt ended.
pub enum Attempt {
    Connected(Client),
    Closed(u16, String),
}

/// Connects with `key`: the client once `pusher:connection_established` arrives, else the
/// close code and the `pusher:error` message before it.
pub async fn attempt(node: &Herald, key: &str) -> Attempt {
    let mut c = node.ws(key).await;
    let mut message = String::new();
    loop {
        match c.next().await {
            Event::Text(v) if v["event"] == "pusher:connection_established" => {
                let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
                c.socket_id = data["socket_id"].as_str().unwrap().to_owned();
                return Attempt::Connected(c);
            }
            Event::Text(v) if v["event"] == "pusher:error" => {
                message = v["data"]["message"].as_str().unwrap_or_default().to_owned();
            }
            Event::Text(_) => {}
            Event::Close(code, _) => return Attempt::Closed(code, message),
            Event::Timeout => panic!("no answer to a connection with key {key}"),
        }
    }
}

/// Connects with `key` until it works, within `wait`; the client and how long it took.
pub async fn connect_within(node: &Herald, key: &str, wait: Duration) -> (Client, Duration) {
    let started = Instant::now();
    loop {
        match attempt(node, key).await {
            Attempt::Connected(c) => return (c, started.elapsed()),
            Attempt::Closed(code, why) => assert!(
                started.elapsed() < wait,
                "key {key} still refused after {wait:?}: {code} {why}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The close code of a connection with `key` (panics if it is accepted).
pub async fn refused(node: &Herald, key: &str) -> (u16, String) {
    match attempt(node, key).await {
        Attempt::Connected(_) => panic!("key {key} was accepted"),
        Attempt::Closed(code, why) => (code, why),
    }
}

/// Polls `check` every 20 ms until it holds, within `wait`; how long it took.
pub async fn within<F, Fut>(wait: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < wait, "{what}: not within {wait:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Reads until the connection is closed; its code (panics after 5 s).
pub async fn closed_with(c: &mut Client) -> u16 {
    c.expect_close().await.0
}

/// A `key:signature` channel auth with an app's `key` and `secret`.
pub fn auth_with(key: &str, secret: &str, socket_id: &str, channel: &str) -> String {
    format!(
        "{key}:{}",
        herald_protocol::signature::sign(secret, format!("{socket_id}:{channel}").as_bytes())
    )
}

/// Runs `herald migrate --config FILE` on a configuration of `rest`: whether it succeeded,
/// its standard output and error.
pub async fn migrate(rest: &str) -> (bool, String, String) {
    let dir = super::tempdir::Dir::new();
    let cfg = dir.0.join("herald.toml");
    std::fs::write(&cfg, rest).unwrap();
    let out = super::herald_output(vec![
        "migrate".into(),
        "--config".into(),
        cfg.into_os_string(),
    ])
    .await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `/readyz`: its status and body.
pub async fn readyz(node: &Herald) -> (u16, Value) {
    admin(node.admin_port, "GET", "/readyz", None, "").await
}
