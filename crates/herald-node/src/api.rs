//! The Pusher HTTP API (<https://pusher.com/docs/channels/library_auth_reference/rest-api/>): signed requests under `/apps/{app_id}/`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use herald_hub::hub::now_us;
use herald_hub::{BusError, ChannelInfo, PublishError, TriggerError};
use herald_protocol::api::{parse_batch, parse_trigger, InfoAttrs};
use herald_protocol::api_auth::{verify, SignedRequest};
use herald_protocol::{ChannelKind, ChannelName, ProtocolError};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::apps_store::sync::By;
use crate::metrics;
use crate::node::Node;

pub type Body = Full<Bytes>;

/// An API failure: status and message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            message: message.into(),
        }
    }
}

impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> Self {
        ApiError::new(e.http_status(), e.to_string())
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        ApiError::new(
            e.http_status(),
            format!("Service unavailable: {e}; retry later"),
        )
    }
}

impl From<TriggerError> for ApiError {
    fn from(e: TriggerError) -> Self {
        let advice = match e.http_status() {
            503 => " Nothing was published; retry later.",
            504 => " Retrying may deliver the event twice.",
            _ => "",
        };
        ApiError::new(e.http_status(), format!("{e}.{advice}"))
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        ApiError::new(e.http_status(), e.to_string())
    }
}

pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    res
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.status, &json!({ "error": e.message }))
}

/// The API routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Events,
    BatchEvents,
    Channels,
    Channel,
    Users,
    History,
    Terminate,
}

impl Endpoint {
    fn label(self) -> &'static str {
        match self {
            Endpoint::Events => "events",
            Endpoint::BatchEvents => "batch_events",
            Endpoint::Channels => "channels",
            Endpoint::Channel => "channel",
            Endpoint::Users => "users",
            Endpoint::History => "history",
            Endpoint::Terminate => "terminate_connections",
        }
    }
}

struct Route<'a> {
    app_id: &'a str,
    endpoint: Endpoint,
    /// The channel name or user id in the path.
    name: Option<String>,
}

/// Which endpoint a method and path name, and the app id, channel or user in the path.
fn route<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, ApiError> {
    // pusher-http-python 3.x posts terminate_connections without the `/apps/{id}` prefix; the
    // app is then the one whose key signed the request.
    if let Some(user) = path
        .strip_prefix("/users/")
        .and_then(|r| r.strip_suffix("/terminate_connections"))
    {
        if *method != Method::POST {
            return Err(ApiError::new(
                405,
                format!("{path} takes POST, not {method}"),
            ));
        }
        return Ok(Route {
            app_id: "",
            endpoint: Endpoint::Terminate,
            name: Some(percent_decode(user)),
        });
    }
    let rest = path
        .strip_prefix("/apps/")
        .ok_or_else(|| ApiError::new(404, "Not found"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts[0].is_empty() {
        return Err(ApiError::new(404, format!("No app id in {path}")));
    }
    let decode = |s: &str| percent_decode(s);
    let (endpoint, name, want) = match parts.as_slice() {
        [_, "events"] => (Endpoint::Events, None, Method::POST),
        [_, "batch_events"] => (Endpoint::BatchEvents, None, Method::POST),
        [_, "channels"] => (Endpoint::Channels, None, Method::GET),
        [_, "channels", name] => (Endpoint::Channel, Some(decode(name)), Method::GET),
        [_, "channels", name, "users"] => (Endpoint::Users, Some(decode(name)), Method::GET),
        [_, "channels", name, "history"] => (Endpoint::History, Some(decode(name)), Method::GET),
        [_, "users", user, "terminate_connections"] => {
            (Endpoint::Terminate, Some(decode(user)), Method::POST)
        }
        _ => return Err(ApiError::new(404, format!("No API endpoint at {path}"))),
    };
    if *method != want {
        return Err(ApiError::new(
            405,
            format!("{path} takes {want}, not {method}"),
        ));
    }
    Ok(Route {
        app_id: parts[0],
        endpoint,
        name,
    })
}

/// [`route`] for the fuzz target: whether a method and path route somewhere.
pub fn route_for_fuzzing(method: &Method, path: &str) -> bool {
    route(method, path).is_ok()
}

pub(crate) fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded `key=value` pairs of a query string (`+` as space, `%XX` escapes).
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| {
            q.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (
                        percent_decode(&k.replace('+', " ")),
                        percent_decode(&v.replace('+', " ")),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Handles one API request; every outcome is counted and timed.
pub async fn handle(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let arrived_us = now_us();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let (endpoint, result) = match route(&method, &path) {
        Err(e) => (None, Err(e)),
        Ok(r) => {
            let endpoint = r.endpoint;
            (
                Some(endpoint),
                handle_route(&node, r, req, arrived_us).await,
            )
        }
    };
    let response = match result {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(e) => {
            if e.status == StatusCode::UNAUTHORIZED {
                tracing::info!(path = %path, reason = %e.message, "API request refused");
            }
            error_response(&e)
        }
    };
    metrics::api_request(
        endpoint.map(Endpoint::label).unwrap_or("unknown"),
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn handle_route(
    node: &Node,
    route: Route<'_>,
    req: Request<Incoming>,
    arrived_us: u64,
) -> Result<Value, ApiError> {
    let app = if route.app_id.is_empty() {
        let key = query_pairs(req.uri().query())
            .into_iter()
            .find(|(k, _)| k == "auth_key")
            .map(|(_, v)| v)
            .unwrap_or_default();
        find_app(node, By::Key, &key)
            .await?
            .ok_or_else(|| ApiError::new(401, "Unknown auth_key"))?
    } else {
        find_app(node, By::Id, route.app_id)
            .await?
            .ok_or_else(|| ApiError::from(ProtocolError::UnknownApp(route.app_id.to_owned())))?
    };
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = query_pairs(req.uri().query());
    let body = read_body(node, req.into_body()).await?;
    let now = herald_hub::clock::now_secs();
    let signed = SignedRequest {
        method: &method,
        path: &path,
        query: &query,
        body: &body,
    };
    // The current secret, or the previous one while its rotation grace lasts; the error is
    // the current secret's.
    let verified = verify(&signed, &app.key, &app.secret, now).or_else(|e| {
        app.secrets_at(now)
            .skip(1)
            .find_map(|old| verify(&signed, &app.key, old, now).ok())
            .ok_or(e)
    });
    if let Err(e) = verified {
        // Unauthenticated requests have a budget of their own: they never spend the app's
        // API rate limit, and beyond their budget they are refused without a log line each.
        if !node.take_auth_failure_token(&app.id) {
            return Err(ApiError::new(
                429,
                format!("Too many failed authentications for app {}", app.id),
            ));
        }
        return Err(e.into());
    }
    if !app.enabled {
        return Err(ProtocolError::AppDisabled(app.id.clone()).into());
    }
    if !node.take_api_token(&app) {
        return Err(ApiError::new(
            429,
            format!(
                "Too many requests: app {} is limited to {} API requests per second",
                app.id, app.api_requests_per_second
            ),
        ));
    }

    match route.endpoint {
        Endpoint::Events => {
            let publish = parse_trigger(&body, app.max_event_data_bytes)?;
            node.hub.trigger(&app, &publish, arrived_us).await?;
            if publish.info.any() {
                let mut channels = Map::new();
                for ch in &publish.channels {
                    let info = node.hub.channel_info(&app, ch, publish.info).await?;
                    channels.insert(ch.to_string(), Value::Object(attrs(&info)));
                }
                Ok(json!({ "channels": channels }))
            } else {
                Ok(json!({}))
            }
        }
        Endpoint::BatchEvents => {
            let batch = parse_batch(&body, app.max_event_data_bytes)?;
            for publish in &batch {
                node.hub.trigger(&app, publish, arrived_us).await?;
            }
            if batch.iter().any(|p| p.info.any()) {
                let mut out = Vec::new();
                for p in &batch {
                    let mut a = Map::new();
                    if let (true, Some(ch)) = (p.info.any(), p.channels.first()) {
                        a = attrs(&node.hub.channel_info(&app, ch, p.info).await?);
                    }
                    out.push(Value::Object(a));
                }
                Ok(json!({ "batch": out }))
            } else {
                Ok(json!({}))
            }
        }
        Endpoint::Channels => {
            let prefix = param(&query, "filter_by_prefix").unwrap_or("");
            let info = InfoAttrs::parse(param(&query, "info"))?;
            if info.cache {
                return Err(ApiError::new(
                    400,
                    "info=cache is only available on a single channel",
                ));
            }
            if info.user_count && !prefix.starts_with("presence-") {
                return Err(ApiError::new(
                    400,
                    "info=user_count requires filter_by_prefix=presence-",
                ));
            }
            let mut channels = Map::new();
            for stats in node.hub.occupied_channels(&app, prefix).await? {
                let mut a = Map::new();
                if info.user_count {
                    a.insert("user_count".into(), json!(stats.user_count.unwrap_or(0)));
                }
                if info.subscription_count {
                    a.insert("subscription_count".into(), json!(stats.subscription_count));
                }
                channels.insert(stats.name, Value::Object(a));
            }
            Ok(json!({ "channels": channels }))
        }
        Endpoint::Channel => {
            let channel = ChannelName::parse(route.name.as_deref().unwrap_or(""))?;
            let info = InfoAttrs::parse(param(&query, "info"))?;
            info.check_for(&channel)?;
            let found = node.hub.channel_info(&app, &channel, info).await?;
            let mut a = Map::new();
            a.insert("occupied".into(), json!(found.occupied));
            a.extend(attrs(&found));
            Ok(Value::Object(a))
        }
        Endpoint::Users => {
            let channel = ChannelName::parse(route.name.as_deref().unwrap_or(""))?;
            if channel.kind() != ChannelKind::Presence {
                return Err(ApiError::new(
                    400,
                    format!("Users are only available for presence channels, not {channel}"),
                ));
            }
            let members = node.hub.presence_users(&app, &channel).await?;
            let users: Vec<Value> = members.iter().map(|m| json!({ "id": m.user_id })).collect();
            Ok(json!({ "users": users }))
        }
        Endpoint::History => {
            let channel = ChannelName::parse(route.name.as_deref().unwrap_or(""))?;
            let number = |name: &str| -> Result<Option<u64>, ApiError> {
                param(&query, name)
                    .map(|v| {
                        v.parse::<u64>().map_err(|_| {
                            ApiError::new(400, format!("{name} must be a non-negative integer"))
                        })
                    })
                    .transpose()
            };
            let limit = number("limit")?.map(|l| l as usize);
            let after = number("after")?.unwrap_or(0);
            let Some(history) = node
                .hub
                .channel_history(&app, &channel, after, limit)
                .await?
            else {
                return Err(ApiError::new(
                    404,
                    format!(
                        "Channel {channel} keeps no history (no [[apps.history]] rule matches it)"
                    ),
                ));
            };
            let events: Vec<Value> = history
                .events
                .iter()
                .map(|(offset, frame)| {
                    let event: Value = serde_json::from_slice(frame).unwrap_or(Value::Null);
                    json!({ "offset": offset, "event": event["event"], "data": event["data"] })
                })
                .collect();
            let (epoch, offset) = history.top.map_or((Value::Null, json!(0)), |t| {
                (json!(t.epoch), json!(t.offset))
            });
            Ok(json!({ "epoch": epoch, "offset": offset, "events": events }))
        }
        Endpoint::Terminate => {
            let user_id = route.name.unwrap_or_default();
            if user_id.is_empty() {
                return Err(ApiError::new(400, "The user id is empty"));
            }
            let user_channel = ChannelName::server_to_user(&user_id)?;
            node.hub.terminate_user(&app, &user_channel).await?;
            Ok(json!({}))
        }
    }
}

/// The app named by a request, from memory or (a database store) looked up once.
async fn find_app(
    node: &Node,
    by: By,
    value: &str,
) -> Result<Option<Arc<herald_hub::App>>, ApiError> {
    let held = match by {
        By::Key => node.hub.app_by_key(value),
        By::Id => node.hub.app_by_id(value),
    };
    if held.is_some() {
        return Ok(held);
    }
    node.apps.lookup(by, value).await.map_err(|e| {
        ApiError::new(
            503,
            format!("The app is not known here and {e}; retry later"),
        )
    })
}

/// Reads a request body within `max_request_bytes` (413) and `body_timeout` (408).
async fn read_body(node: &Node, body: Incoming) -> Result<Bytes, ApiError> {
    let limit = node.config.server.max_request_bytes;
    let timeout = std::time::Duration::from_secs(node.config.server.body_timeout);
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::new(
                413,
                format!("Request body over the limit of {limit} bytes"),
            ))
        }
        Ok(Err(e)) => Err(ApiError::new(
            400,
            format!("Could not read the request body: {e}"),
        )),
        Err(_) => Err(ApiError::new(
            408,
            format!(
                "The request body did not arrive within {} s",
                timeout.as_secs()
            ),
        )),
    }
}

/// The `info` attributes of one channel, as the API shows them.
fn attrs(info: &ChannelInfo) -> Map<String, Value> {
    let mut a = Map::new();
    if let Some(n) = info.subscription_count {
        a.insert("subscription_count".into(), json!(n));
    }
    if let Some(n) = info.user_count {
        a.insert("user_count".into(), json!(n));
    }
    if let Some(cached) = &info.cache {
        let value = match cached {
            Some((frame, ttl)) => {
                let event: Value = serde_json::from_slice(frame).unwrap_or(Value::Null);
                json!({ "event": event["event"], "data": event["data"], "ttl": ttl.as_secs() })
            }
            None => Value::Null,
        };
        a.insert("cache".into(), value);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = route(&Method::POST, "/apps/1/events").expect("ok");
        assert_eq!((r.app_id, r.endpoint), ("1", Endpoint::Events));
        let r = route(&Method::GET, "/apps/1/channels/presence-a/users").expect("ok");
        assert_eq!(
            (r.endpoint, r.name.as_deref()),
            (Endpoint::Users, Some("presence-a"))
        );
        let r = route(&Method::GET, "/apps/1/channels/%23server-to-user-1").expect("ok");
        assert_eq!(r.name.as_deref(), Some("#server-to-user-1"));
        assert_eq!(
            route(&Method::GET, "/apps/1/events")
                .err()
                .map(|e| e.status.as_u16()),
            Some(405)
        );
        assert_eq!(
            route(&Method::GET, "/apps/1/nope")
                .err()
                .map(|e| e.status.as_u16()),
            Some(404)
        );
    }

    #[test]
    fn query_decoding() {
        let q = query_pairs(Some(
            "info=user_count%2Csubscription_count&filter_by_prefix=presence-&x",
        ));
        assert_eq!(param(&q, "info"), Some("user_count,subscription_count"));
        assert_eq!(param(&q, "filter_by_prefix"), Some("presence-"));
        assert_eq!(param(&q, "x"), Some(""));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%\u{e9}%41"), "%\u{e9}A");
    }
}
