//! The public listener (WebSocket at `/app/{key}` and the HTTP API on one port) and the admin
//! listener (`/metrics`, `/healthz`, `/readyz`).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::api::{self, json_response, Body};
use crate::node::Node;
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

async fn route(
    node: Arc<Node>,
    tracker: TaskTracker,
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
        tracker.spawn(async move {
            match upgrade.await {
                Ok(ws) => ws::serve(node, ws, hs).await,
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

/// Serves HTTP/1.1 (with upgrades) on one accepted connection until it ends or the node shuts
/// down, then closes idle keep-alive connections gracefully.
async fn serve_http<I>(node: Arc<Node>, tracker: TaskTracker, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let shutdown = node.shutdown.clone();
    let service = service_fn(move |req| route(node.clone(), tracker.clone(), req));
    let conn = http1::Builder::new()
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

/// Accepts connections until the node's shutdown token is cancelled.
pub async fn serve_public(
    node: Arc<Node>,
    listener: TcpListener,
    tracker: TaskTracker,
    tls: Option<TlsAcceptor>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = node.shutdown.cancelled() => break,
        };
        let (stream, _peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let t = tracker.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            match tls {
                None => serve_http(node, t, TokioIo::new(stream)).await,
                Some(acceptor) => {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => serve_http(node, t, TokioIo::new(s)).await,
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
) -> Result<Response<Body>, Infallible> {
    Ok(match req.uri().path() {
        "/metrics" => {
            crate::metrics::runtime(&tokio::runtime::Handle::current());
            crate::metrics::ready(node.readiness().is_ok());
            let mut res = Response::new(Full::new(Bytes::from(prometheus.render())));
            res.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            res
        }
        "/healthz" => json_response(StatusCode::OK, &json!({ "status": "ok" })),
        "/readyz" => match node.readiness() {
            Ok(()) => json_response(StatusCode::OK, &json!({ "ready": true })),
            Err(why) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "ready": false, "reason": why }),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "Not found\n"),
    })
}

/// Serves the admin endpoints until the process exits.
pub async fn serve_admin(node: Arc<Node>, listener: TcpListener, prometheus: PrometheusHandle) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let node = node.clone();
        let prometheus = prometheus.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| admin_route(node.clone(), prometheus.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
