//! The debug console on the admin port: the page (`/console`, embedded in the binary) and its
//! API (`/console/api/…`), behind the admin token (`Authorization: Bearer TOKEN`).
//!
//! The feed is server-sent events: what the hub's monitor records for one app, on this node
//! and (through the bus) on the others. A console that does not keep up is dropped, never
//! waited for; payloads are sent only to a console that asked for them.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::node::Node;

pub type AdminBody = BoxBody<Bytes, Infallible>;

/// The page: one self-contained file, no assets from the internet.
const PAGE: &str = include_str!("console/index.html");
/// Frames waiting for a console's connection; a console further behind is dropped.
const CONSOLE_QUEUE: usize = 256;
const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<AdminBody> {
    let mut res = Response::new(Full::new(body.into()).boxed());
    *res.status_mut() = status;
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    res
}

pub(crate) fn json_reply(status: StatusCode, body: &Value) -> Response<AdminBody> {
    full(status, "application/json", body.to_string())
}

fn error(status: StatusCode, message: &str) -> Response<AdminBody> {
    json_reply(status, &json!({ "error": message }))
}

/// Compares tokens in constant time (HMACs of both, so not even the length shows).
fn same_token(given: &str, expected: &str) -> bool {
    let a = herald_protocol::signature::sign("herald-admin", given.as_bytes());
    let b = herald_protocol::signature::sign("herald-admin", expected.as_bytes());
    a.bytes()
        .zip(b.bytes())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Whether the request carries the admin token.
pub fn authorized(node: &Node, req: &Request<Incoming>) -> bool {
    let Some(expected) = node.admin_token() else {
        return false;
    };
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same_token(given.trim(), expected))
}

fn param(req: &Request<Incoming>, name: &str) -> Option<String> {
    crate::api::query_pairs(req.uri().query())
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Whether `path` is the console's (`/console`, `/console/…`).
pub fn handles(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// Answers a request for the console's page or API.
pub async fn route(node: &Arc<Node>, req: Request<Incoming>) -> Response<AdminBody> {
    let path = req.uri().path().to_owned();
    if node.admin_token().is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "The console is off: set [admin] token or token_file",
        );
    }
    if path == "/console" || path == "/console/" {
        return full(StatusCode::OK, "text/html; charset=utf-8", PAGE);
    }
    if !authorized(node, &req) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Missing or wrong admin token (Authorization: Bearer TOKEN)",
        );
    }
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/console/api/apps") => apps(node),
        (Method::GET, "/console/api/feed") => feed(node, &req),
        (Method::GET, "/console/api/stats") => stats(node, &req).await,
        (Method::GET, "/console/api/members") => members(node, &req).await,
        (Method::POST, "/console/api/publish") => publish(node, req).await,
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("No console endpoint at {path}"),
        ),
    }
}

/// The app named by `?app=`, or the 404 to answer.
fn app_of(node: &Node, req: &Request<Incoming>) -> Result<Arc<herald_hub::App>, String> {
    let id = param(req, "app").unwrap_or_default();
    node.hub
        .app_by_id(&id)
        .ok_or_else(|| format!("Unknown app id {id:?}"))
}

fn apps(node: &Node) -> Response<AdminBody> {
    let mut apps: Vec<Value> = node
        .hub
        .apps()
        .iter()
        .map(|a| json!({ "id": a.id, "key": a.key }))
        .collect();
    apps.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    json_reply(
        StatusCode::OK,
        &json!({ "node": node.hub.node_id(), "apps": apps }),
    )
}

async fn stats(node: &Node, req: &Request<Incoming>) -> Response<AdminBody> {
    let app = match app_of(node, req) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::NOT_FOUND, &e),
    };
    let reports = node.hub.node_reports().await;
    let connections: u64 = reports
        .iter()
        .map(|r| r.apps.get(&app.id).copied().unwrap_or(0))
        .sum();
    let channels = match node.hub.occupied_channels(&app, "").await {
        Ok(c) => c,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let channels: Vec<Value> = channels
        .into_iter()
        .map(|c| {
            let mut v = json!({ "name": c.name, "subscription_count": c.subscription_count });
            if let Some(u) = c.user_count {
                v["user_count"] = u.into();
            }
            v
        })
        .collect();
    let nodes: Vec<Value> = reports
        .iter()
        .map(|r| json!({ "id": r.id, "ready": r.ready, "connections": r.connections }))
        .collect();
    json_reply(
        StatusCode::OK,
        &json!({ "connections": connections, "channels": channels, "nodes": nodes }),
    )
}

async fn members(node: &Node, req: &Request<Incoming>) -> Response<AdminBody> {
    let app = match app_of(node, req) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::NOT_FOUND, &e),
    };
    let name = param(req, "channel").unwrap_or_default();
    let channel = match herald_protocol::ChannelName::parse(&name) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    match node.hub.presence_users(&app, &channel).await {
        Ok(members) => {
            let members: Vec<Value> = members
                .iter()
                .map(|m| {
                    let info = m
                        .user_info
                        .as_deref()
                        .and_then(|i| serde_json::from_str::<Value>(i).ok())
                        .unwrap_or(Value::Null);
                    json!({ "id": m.user_id, "info": info })
                })
                .collect();
            json_reply(StatusCode::OK, &json!({ "members": members }))
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// Publishes a test event through the HTTP API's path once a request is authenticated (the
/// app's API rate limit, the trigger's validation and limits, cache, history, webhooks); the
/// admin token stands in for the app's signature.
async fn publish(node: &Node, req: Request<Incoming>) -> Response<AdminBody> {
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "Request body over 64 KiB"),
    };
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Body must be JSON");
    };
    let Some(app) = node.hub.app_by_id(v["app"].as_str().unwrap_or_default()) else {
        return error(StatusCode::NOT_FOUND, "Unknown app id");
    };
    // A disabled app publishes nothing, as through the API.
    if !app.enabled {
        return error(
            StatusCode::FORBIDDEN,
            &herald_protocol::ProtocolError::AppDisabled(app.id.clone()).to_string(),
        );
    }
    // The app's API rate limit applies as to any other publisher.
    if !node.take_api_token(&app) {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "Too many requests: app {} is limited to {} API requests per second",
                app.id, app.api_requests_per_second
            ),
        );
    }
    let trigger = json!({ "name": v["event"], "channel": v["channel"], "data": v["data"] });
    let publish = match herald_protocol::api::parse_trigger(
        trigger.to_string().as_bytes(),
        app.max_event_data_bytes,
    ) {
        Ok(p) => p,
        Err(e) => {
            let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            return error(status, &e.to_string());
        }
    };
    match node
        .hub
        .trigger(&app, &publish, herald_hub::clock::now_us())
        .await
    {
        Ok(()) => json_reply(StatusCode::OK, &json!({})),
        Err(e) => error(
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            &e.to_string(),
        ),
    }
}

/// A response body fed from a bounded queue.
struct Stream(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Stream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn feed(node: &Arc<Node>, req: &Request<Incoming>) -> Response<AdminBody> {
    let app = match app_of(node, req) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::NOT_FOUND, &e),
    };
    let payloads = param(req, "payloads").as_deref() == Some("1");
    let (tx, rx) = mpsc::channel::<Bytes>(CONSOLE_QUEUE);
    let mut watching = node.hub.monitor().watch(&app.id, payloads);
    let shutdown = node.shutdown.clone();
    metrics::gauge!("herald_console_feeds").increment(1.0);
    tokio::spawn(async move {
        let _ = tx.try_send(Bytes::from_static(b": connected\n\n"));
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
        keep_alive.tick().await;
        loop {
            let frame = tokio::select! {
                r = watching.records.recv() => match r {
                    Ok(record) => {
                        if record.app != app.id && !record.app.is_empty() {
                            continue;
                        }
                        let shown = if payloads { (*record).clone() } else { record.without_payload() };
                        let Ok(json) = serde_json::to_string(&shown) else { continue };
                        Bytes::from(format!("data: {json}\n\n"))
                    }
                    // Fell behind the node's records: dropped, never waited for.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
                _ = shutdown.cancelled() => break,
            };
            // A console whose connection does not take its frames is dropped.
            if tx.try_send(frame).is_err() {
                break;
            }
        }
        metrics::gauge!("herald_console_feeds").decrement(1.0);
    });
    let mut res = Response::new(Stream(rx).boxed());
    let headers = res.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    res
}
