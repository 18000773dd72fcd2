//! The checks every app passes, wherever it comes from: an `[[apps]]` table, a database row,
//! an admin API request. Serde checks names and types (and fills in defaults, in
//! `herald_hub::App`); these check values. Errors name the field as the source writes it.

use herald_hub::App;

use super::check_id;

/// Longest key and secret (the database columns hold 255).
pub const MAX_CREDENTIAL_LEN: usize = 255;

/// Why `app` cannot be used, naming the field under `prefix` (`apps[0]` in a file, nothing
/// in an admin request or a database row).
pub fn check_app(prefix: &str, app: &App) -> Result<(), String> {
    let at = |field: &str| {
        if prefix.is_empty() {
            field.to_owned()
        } else {
            format!("{prefix}.{field}")
        }
    };
    check_id(&at("id"), &app.id)?;
    for (field, value) in [("key", &app.key), ("secret", &app.secret)] {
        if value.is_empty() || value.len() > MAX_CREDENTIAL_LEN {
            return Err(format!(
                "{}: must be 1 to {MAX_CREDENTIAL_LEN} characters",
                at(field)
            ));
        }
    }
    if app.key.contains(['/', '?', '#']) || app.key.chars().any(char::is_whitespace) {
        return Err(format!(
            "{}: {:?} cannot appear in a connection URL (no '/', '?', '#' or spaces)",
            at("key"),
            app.key
        ));
    }
    if app.client_event_rate == 0 {
        return Err(format!("{} must be at least 1", at("client_event_rate")));
    }
    for (j, rule) in app.history.iter().enumerate() {
        rule.check()
            .map_err(|e| format!("{}: {e}", at(&format!("history[{j}]"))))?;
        if !rule.prefix.is_empty() && herald_protocol::channel::is_internal(&rule.prefix) {
            return Err(format!(
                "{}: {:?} names internal channels",
                at(&format!("history[{j}].prefix")),
                rule.prefix
            ));
        }
    }
    for (j, hook) in app.webhooks.iter().enumerate() {
        let field = at(&format!("webhooks[{j}].url"));
        let uri: hyper::Uri = hook
            .url
            .parse()
            .map_err(|e| format!("{field}: {:?} is not a URL ({e})", hook.url))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(format!(
                "{field}: {:?} must be an http:// or https:// URL",
                hook.url
            ));
        }
        for t in &hook.event_types {
            if !herald_hub::webhook::EVENT_NAMES.contains(&t.as_str()) {
                return Err(format!(
                    "{}: {t:?} is not one of {}",
                    at(&format!("webhooks[{j}].event_types")),
                    herald_hub::webhook::EVENT_NAMES.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// Checks each app, and that no two share an id or a key.
pub fn check_apps(apps: &[App]) -> Result<(), String> {
    let mut ids = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for (i, app) in apps.iter().enumerate() {
        check_app(&format!("apps[{i}]"), app)?;
        if !ids.insert(&app.id) {
            return Err(format!("apps[{i}].id: {:?} is used by two apps", app.id));
        }
        if !keys.insert(&app.key) {
            return Err(format!("apps[{i}].key: {:?} is used by two apps", app.key));
        }
    }
    Ok(())
}

/// Reads one app from JSON (an admin request, a database row) with the checks of an
/// `[[apps]]` table: unknown fields and wrong types are refused naming the field.
pub fn app_from_json(value: serde_json::Value) -> Result<App, String> {
    let serde_json::Value::Object(fields) = value else {
        return Err("the app must be a JSON object".into());
    };
    let app: App = match serde_json::from_value(serde_json::Value::Object(fields.clone())) {
        Ok(app) => app,
        Err(e) => {
            // serde_json names the field of an unknown-field error but not of a type error:
            // find the field that fails alone.
            let culprit = fields.iter().find(|(name, v)| {
                let one = serde_json::json!({ (*name).clone(): (*v).clone() });
                serde_json::from_value::<App>(one).is_err()
            });
            return Err(match culprit {
                Some((name, _)) if !e.to_string().starts_with("unknown field") => {
                    format!("{name}: {e}")
                }
                _ => e.to_string(),
            });
        }
    };
    check_app("", &app)?;
    Ok(app)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_errors_name_the_field() {
        let ok = app_from_json(json!({"id": "a", "key": "k", "secret": "s", "enabled": false}))
            .expect("valid");
        assert!(!ok.enabled && ok.client_events, "defaults filled in");
        for (body, field) in [
            (
                json!({"id": "a", "key": "k", "secret": "s", "max_connections": "x"}),
                "max_connections",
            ),
            (
                json!({"id": "a", "key": "k", "secret": "s", "max_connections": -1}),
                "max_connections",
            ),
            (
                json!({"id": "a", "key": "k", "secret": "s", "client_event": true}),
                "client_event",
            ),
            (json!({"id": "a b", "key": "k", "secret": "s"}), "id"),
            (json!({"id": "a", "key": "k/x", "secret": "s"}), "key"),
            (json!({"id": "a", "key": "k", "secret": ""}), "secret"),
            (
                json!({"id": "a", "key": "k", "secret": "s", "client_event_rate": 0}),
                "client_event_rate",
            ),
            (
                json!({"id": "a", "key": "k", "secret": "s", "webhooks": [{"url": "ftp://x"}]}),
                "webhooks[0].url",
            ),
            (
                json!({"id": "a", "key": "k", "secret": "s", "history": [{"prefix": "", "size": 0, "ttl": 1}]}),
                "history[0]",
            ),
        ] {
            let err = app_from_json(body.clone()).expect_err(&body.to_string());
            assert!(err.contains(field), "{body}: {err}");
        }
        assert!(app_from_json(json!([1])).is_err());
    }
}
