//! The admin API on the admin port, behind the admin token like the console
//! (`Authorization: Bearer TOKEN`; 404 when no token is set, 401 without it):
//!
//! - `GET /admin/apps`, `GET /admin/apps/{id}`: apps as the store has them;
//! - `PUT /admin/apps/{id}`: creates or replaces an app (a JSON object with the `[[apps]]`
//!   fields; left-out fields take their defaults);
//! - `DELETE /admin/apps/{id}`.
//!
//! Writes need a database store (405 with the file store). Secrets are never shown in full
//! (their first four characters at most) and never logged; webhook URLs lose their
//! credentials and query, as in the logs.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::apps_store::{mask_secret, StoreError};
use crate::console::{self, AdminBody};
use crate::node::Node;

/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest time for the body to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `path` is the admin API's.
pub fn handles(path: &str) -> bool {
    path == "/admin/apps" || path.starts_with("/admin/apps/")
}

fn reply(status: StatusCode, body: &Value) -> Response<AdminBody> {
    console::json_reply(status, body)
}

fn error(status: StatusCode, message: &str) -> Response<AdminBody> {
    reply(status, &json!({ "error": message }))
}

/// An app as the admin API shows it.
fn shown(app: &herald_hub::App) -> Value {
    let mut v = serde_json::to_value(app).unwrap_or_default();
    v["secret"] = json!(mask_secret(&app.secret));
    if let Some(hooks) = v.get_mut("webhooks").and_then(Value::as_array_mut) {
        for hook in hooks {
            if let Some(url) = hook["url"].as_str() {
                hook["url"] = json!(crate::config::redact_url(url));
            }
        }
    }
    let now = herald_hub::clock::now_secs();
    if let Some(p) = app.previous_secret.as_ref().filter(|p| p.until_secs >= now) {
        v["previous_secret_until"] = json!(p.until_secs);
    }
    v
}

/// Answers a request under `/admin/apps`.
pub async fn route(node: &Node, req: Request<Incoming>) -> Response<AdminBody> {
    if node.admin_token().is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "The admin API is off: set [admin] token or token_file",
        );
    }
    if !console::authorized(node, &req) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Missing or wrong admin token (Authorization: Bearer TOKEN)",
        );
    }
    let path = req.uri().path().to_owned();
    let id = path
        .strip_prefix("/admin/apps/")
        .map(|id| crate::api::percent_decode(id.trim_end_matches('/')));
    match (req.method().clone(), id) {
        (Method::GET, None) => list(node).await,
        (Method::GET, Some(id)) => get(node, &id).await,
        (Method::PUT, Some(id)) => put(node, &id, req).await,
        (Method::DELETE, Some(id)) => delete(node, &id).await,
        (method, None) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("/admin/apps takes GET, not {method}"),
        ),
        (method, Some(_)) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("/admin/apps/{{id}} takes GET, PUT and DELETE, not {method}"),
        ),
    }
}

/// The answer to a store failure.
fn store_error(e: &StoreError) -> Response<AdminBody> {
    let status = match e {
        StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        StoreError::ReadOnly => StatusCode::METHOD_NOT_ALLOWED,
        StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
        StoreError::Conflict(_) => StatusCode::CONFLICT,
    };
    let mut res = error(status, &e.to_string());
    if status == StatusCode::METHOD_NOT_ALLOWED {
        res.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET"),
        );
    }
    res
}

async fn list(node: &Node) -> Response<AdminBody> {
    match node.apps.list().await {
        Ok(loaded) => {
            // Rows the nodes refuse (a bad value written by hand), and why.
            let invalid: Vec<Value> = loaded
                .invalid
                .iter()
                .map(|(id, error)| json!({ "id": id, "error": error }))
                .collect();
            reply(
                StatusCode::OK,
                &json!({
                    "driver": node.apps.driver(),
                    "apps": loaded.apps.iter().map(shown).collect::<Vec<_>>(),
                    "invalid": invalid,
                }),
            )
        }
        Err(e) => store_error(&e),
    }
}

async fn get(node: &Node, id: &str) -> Response<AdminBody> {
    match node.apps.get(id).await {
        Ok(Some(app)) => reply(StatusCode::OK, &json!({ "app": shown(&app) })),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("No app with id {id:?}")),
        Err(e) => store_error(&e),
    }
}

/// Reads the request body within [`MAX_BODY`] and [`BODY_TIMEOUT`].
async fn body(req: Request<Incoming>) -> Result<Bytes, Response<AdminBody>> {
    match tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body over 64 KiB",
            ))
        }
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("Could not read the request body: {e}"),
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "The request body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        )),
    }
}

async fn put(node: &Node, id: &str, req: Request<Incoming>) -> Response<AdminBody> {
    if !node.apps.is_database() {
        return store_error(&StoreError::ReadOnly);
    }
    if let Err(e) = crate::config::check_id("id", id) {
        return error(StatusCode::BAD_REQUEST, &e);
    }
    let bytes = match body(req).await {
        Ok(b) => b,
        Err(res) => return res,
    };
    let parsed = herald_protocol::json::check_depth(&bytes, herald_protocol::json::MAX_DEPTH)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            serde_json::from_slice::<Value>(&bytes).map_err(|e| format!("Invalid JSON: {e}"))
        });
    let mut value = match parsed {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return error(StatusCode::BAD_REQUEST, "The body must be a JSON object"),
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    match value.get("id") {
        None => value["id"] = json!(id),
        Some(Value::String(given)) if given == id => {}
        Some(given) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("id: the body says {given} but the path says {id:?}"),
            )
        }
    }
    let app = match crate::config::app_from_json(value) {
        Ok(app) => app,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    match node.apps.put(app).await {
        Ok(put) => {
            let what = if put.created { "created" } else { "replaced" };
            tracing::info!(app = %id, enabled = put.app.enabled, "app {what} through the admin API");
            let status = if put.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            reply(
                status,
                &json!({ "app": shown(&put.app), "created": put.created }),
            )
        }
        Err(e) => store_error(&e),
    }
}

async fn delete(node: &Node, id: &str) -> Response<AdminBody> {
    if !node.apps.is_database() {
        return store_error(&StoreError::ReadOnly);
    }
    match node.apps.delete(id).await {
        Ok(true) => {
            tracing::info!(app = %id, "app deleted through the admin API");
            reply(StatusCode::OK, &json!({ "deleted": id }))
        }
        Ok(false) => error(StatusCode::NOT_FOUND, &format!("No app with id {id:?}")),
        Err(e) => store_error(&e),
    }
}
