//! The public listener (WebSocket at `/app/{key}` and the HTTP API on one port) and the admin
//! listener (`/metrics`, `/healthz`, `/readyz`, the debug console, the admin API).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::api::{self, json_response, Body};
use crate::console::{self, AdminBody};
use crate::node::{IpSlot, Node, TcpRefusal};
use crate::ws::{self, Handshake};

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// Whether `key` is a `Sec-WebSocket-Key`: the base64 form of 16 bytes (RFC 6455 §4.1).
fn valid_websocket_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/'))
}

/// Why an upgrade request is not a valid RFC 6455 opening handshake, if it is not.
fn handshake_error(req: &Request<Incoming>) -> Option<&'static str> {
    if req.method() != hyper::Method::GET {
        return Some("a WebSocket handshake is a GET request");
    }
    if req.version() != hyper::Version::HTTP_11 {
        return Some("a WebSocket handshake needs HTTP/1.1");
    }
    let key = req.headers().get("Sec-WebSocket-Key")?;
    if !valid_websocket_key(key.as_bytes()) {
        return Some("Sec-WebSocket-Key must be 16 bytes in base64");
    }
    None
}

async fn route(
    node: Arc<Node>,
    tracker: TaskTracker,
    ip_slot: Option<Arc<IpSlot>>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    if let Some(key) = path.strip_prefix("/app/") {
        if !fastwebsockets::upgrade::is_upgrade_request(&req) {
            return Ok(text(
                StatusCode::UPGRADE_REQUIRED,
                "This endpoint takes WebSocket connections\n",
            ));
        }
        if let Some(why) = handshake_error(&req) {
            tracing::debug!(why, "bad WebSocket upgrade");
            return Ok(text(StatusCode::BAD_REQUEST, why));
        }
        let hs = Handshake {
            app_key: key.trim_end_matches('/').to_owned(),
            protocol: query_param(&req, "protocol"),
            origin: req
                .headers()
                .get(hyper::header::ORIGIN)
                .and_then(|o| o.to_str().ok())
                .map(str::to_owned),
        };
        let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "bad WebSocket upgrade");
                return Ok(text(
                    StatusCode::BAD_REQUEST,
                    "Invalid WebSocket upgrade request\n",
                ));
            }
        };
        let connections = tracker.clone();
        tracker.spawn(async move {
            match upgrade.await {
                Ok(ws) => ws::serve(node, connections, ip_slot, ws, hs).await,
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
            }
        });
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, Full::new(Bytes::new())));
    }
    if path.starts_with("/apps/") || path.starts_with("/users/") {
        return Ok(api::handle(node, req).await);
    }
    Ok(match path {
        "/" | "/up" => text(StatusCode::OK, "OK\n"),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("No route for {path}") }),
        ),
    })
}

/// An HTTP/1.1 server for one connection: request heads must arrive within `header_timeout`
/// (which also ends idle keep-alive connections).
fn http1_builder(header_timeout: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
}

/// Serves HTTP/1.1 (with upgrades) on one accepted connection until it ends or the node shuts
/// down, then closes idle keep-alive connections gracefully.
async fn serve_http<I>(node: Arc<Node>, tracker: TaskTracker, ip_slot: Option<Arc<IpSlot>>, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let shutdown = node.shutdown.clone();
    let header_timeout = Duration::from_secs(node.config.server.header_timeout);
    let service = service_fn(move |req| route(node.clone(), tracker.clone(), ip_slot.clone(), req));
    let conn = http1_builder(header_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            // Finish the request in flight, then close idle keep-alive connections.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection error");
    }
}

/// A warning logged at most once per interval, with how many were suppressed in between.
struct RateLimitedLog {
    every: Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn new(every: Duration) -> Self {
        RateLimitedLog {
            every,
            last: None,
            suppressed: 0,
        }
    }

    fn warn(&mut self, what: &str, error: &dyn std::fmt::Display) {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(error = %error, suppressed = self.suppressed, "{what}");
        self.last = Some(std::time::Instant::now());
        self.suppressed = 0;
    }
}

/// One file descriptor held back for when the process runs out: closing it lets the accept
/// loop take the waiting connection and close it, instead of spinning on `EMFILE` while the
/// kernel queue fills.
struct FdReserve(Option<std::fs::File>);

impl FdReserve {
    fn new() -> Self {
        FdReserve(std::fs::File::open("/dev/null").ok())
    }

    async fn shed_one(&mut self, listener: &TcpListener) {
        self.0 = None;
        if let Ok(Ok((stream, _))) =
            tokio::time::timeout(Duration::from_millis(10), listener.accept()).await
        {
            drop(stream);
            crate::metrics::refused("fd_limit");
        }
        self.0 = std::fs::File::open("/dev/null").ok();
    }
}

fn out_of_fds(e: &std::io::Error) -> bool {
    // EMFILE (process limit) and ENFILE (system limit).
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// Accepts connections until the node's shutdown token is cancelled.
pub async fn serve_public(
    node: Arc<Node>,
    listener: TcpListener,
    tracker: TaskTracker,
    tls: Option<TlsAcceptor>,
) {
    let mut reserve = FdReserve::new();
    let mut accept_log = RateLimitedLog::new(Duration::from_secs(10));
    let mut refuse_log = RateLimitedLog::new(Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = node.shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                accept_log.warn("accept failed", &e);
                if out_of_fds(&e) {
                    reserve.shed_one(&listener).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                continue;
            }
        };
        let (http_slot, ip_slot) = match node.accept_tcp(peer.ip()) {
            Ok(slots) => slots,
            Err(refusal) => {
                let reason = match refusal {
                    TcpRefusal::PerIp => "per_ip_limit",
                    TcpRefusal::HttpConnections => "http_limit",
                };
                crate::metrics::refused(reason);
                refuse_log.warn("connection closed at once", &reason);
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let t = tracker.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            let _http_slot = http_slot;
            match tls {
                None => serve_http(node, t, ip_slot, TokioIo::new(stream)).await,
                Some(acceptor) => {
                    let handshake = Duration::from_secs(node.config.server.header_timeout);
                    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_http(node, t, ip_slot, TokioIo::new(s)).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn admin_route(
    node: Arc<Node>,
    prometheus: PrometheusHandle,
    req: Request<Incoming>,
) -> Result<Response<AdminBody>, Infallible> {
    if console::handles(req.uri().path()) {
        return Ok(console::route(&node, req).await);
    }
    if crate::admin::handles(req.uri().path()) {
        return Ok(crate::admin::route(&node, req).await);
    }
    let res = match req.uri().path() {
        "/metrics" => {
            crate::metrics::runtime(&tokio::runtime::Handle::current());
            crate::metrics::http_connections(node.http_connections());
            crate::metrics::ready(node.readiness().is_ok());
            let mut res = Response::new(Full::new(Bytes::from(prometheus.render())));
            res.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            res
        }
        "/healthz" => json_response(StatusCode::OK, &json!({ "status": "ok" })),
        // The apps store's state is shown but never makes the node unready: the node serves
        // the apps it has while a database is away.
        "/readyz" => match node.readiness() {
            Ok(()) => json_response(
                StatusCode::OK,
                &json!({ "ready": true, "apps_store": node.apps.status() }),
            ),
            Err(why) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "ready": false, "reason": why, "apps_store": node.apps.status() }),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "Not found\n"),
    };
    Ok(res.map(BodyExt::boxed))
}

/// Serves the admin endpoints until `cancel` fires.
pub async fn serve_admin(
    node: Arc<Node>,
    listener: TcpListener,
    prometheus: PrometheusHandle,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = cancel.cancelled() => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let node = node.clone();
        let prometheus = prometheus.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| admin_route(node.clone(), prometheus.clone(), req));
            let conn = http1_builder(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}
