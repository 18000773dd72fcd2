//! The apps table: one column per `[[apps]]` setting (the nested ones as JSON), in one list
//! that the table definition, the queries and the conversions all read, so a setting cannot
//! be left out of one of them. A NULL setting means Herald's default (`herald_hub::App`),
//! so rows written by hand need only `id`, `app_key` and `secret`.

use herald_hub::{App, PreviousSecret};
use serde_json::{Map, Value};

use crate::config::app_from_json;

/// Which SQL the database speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
}

/// How a column is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Bool,
    Int,
    Json,
}

/// One column: its name, the `[[apps]]` field it holds (`None`: not a setting), its kind.
#[derive(Debug)]
pub struct Column {
    pub name: &'static str,
    pub field: Option<&'static str>,
    pub kind: Kind,
}

const fn setting(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        field: Some(name),
        kind,
    }
}

/// Every column, in the order queries select and bind them. `key` is `app_key` in the table
/// (`KEY` is a reserved word in MySQL).
pub const COLUMNS: &[Column] = &[
    setting("id", Kind::Text),
    Column {
        name: "app_key",
        field: Some("key"),
        kind: Kind::Text,
    },
    setting("secret", Kind::Text),
    setting("enabled", Kind::Bool),
    setting("client_events", Kind::Bool),
    setting("max_connections", Kind::Int),
    setting("allowed_origins", Kind::Json),
    setting("max_presence_members", Kind::Int),
    setting("max_user_info_bytes", Kind::Int),
    setting("client_event_rate", Kind::Int),
    setting("max_event_data_bytes", Kind::Int),
    setting("max_channels_per_connection", Kind::Int),
    setting("authorized_connections_timeout", Kind::Int),
    setting("watchlist_events", Kind::Bool),
    setting("subscription_count_events", Kind::Bool),
    setting("cache_ttl", Kind::Int),
    setting("max_cache_bytes", Kind::Int),
    setting("api_requests_per_second", Kind::Int),
    setting("webhooks", Kind::Json),
    setting("history", Kind::Json),
    // The secret before the last rotation and the Unix time (s) until which it still
    // verifies signatures.
    Column {
        name: "previous_secret",
        field: None,
        kind: Kind::Text,
    },
    Column {
        name: "previous_secret_expires_at",
        field: None,
        kind: Kind::Int,
    },
    // When Herald last wrote the row (Unix s), for people reading the table.
    Column {
        name: "updated_at",
        field: None,
        kind: Kind::Int,
    },
];

/// A column's value, as bound to or read from SQL.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Text(Option<String>),
    Bool(Option<bool>),
    Int(Option<i64>),
}

fn sql_type(dialect: Dialect, column: &Column) -> &'static str {
    match (column.name, column.kind, dialect) {
        ("id", _, _) => "VARCHAR(64) NOT NULL PRIMARY KEY",
        ("app_key", _, _) => "VARCHAR(255) NOT NULL UNIQUE",
        ("secret", _, _) => "VARCHAR(255) NOT NULL",
        (_, Kind::Text, _) => "VARCHAR(255) NULL",
        (_, Kind::Bool, _) => "BOOLEAN NULL",
        (_, Kind::Int, _) => "BIGINT NULL",
        (_, Kind::Json, Dialect::Postgres) => "JSONB NULL",
        (_, Kind::Json, Dialect::MySql) => "JSON NULL",
    }
}

/// The table's definition (`herald migrate`; idempotent). MySQL compares keys byte for byte
/// (`utf8mb4_bin`): Pusher keys are case-sensitive.
pub fn create_table(dialect: Dialect, table: &str) -> String {
    let columns: Vec<String> = COLUMNS
        .iter()
        .map(|c| format!("    {} {}", c.name, sql_type(dialect, c)))
        .collect();
    let options = match dialect {
        Dialect::Postgres => "",
        Dialect::MySql => " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n{}\n){options}",
        columns.join(",\n")
    )
}

/// The `n`th (1-based) bind parameter for `column`.
fn param(dialect: Dialect, n: usize, column: &Column) -> String {
    match (dialect, column.kind) {
        (Dialect::Postgres, Kind::Json) => format!("${n}::jsonb"),
        (Dialect::Postgres, _) => format!("${n}"),
        (Dialect::MySql, _) => "?".to_owned(),
    }
}

/// A text or JSON column as selected: as text. (MySQL reports a `utf8mb4_bin` column as
/// binary, which the driver will not read as a string: the cast gives it the connection's
/// character set; comparisons in `WHERE` still use the column's, byte for byte.)
fn text(dialect: Dialect, column: &str, json: bool) -> String {
    match (dialect, json) {
        (Dialect::Postgres, true) => format!("{column}::text AS {column}"),
        (Dialect::Postgres, false) => column.to_owned(),
        (Dialect::MySql, _) => format!("CAST({column} AS CHAR) AS {column}"),
    }
}

/// The select list.
fn select_list(dialect: Dialect) -> String {
    COLUMNS
        .iter()
        .map(|c| match c.kind {
            Kind::Json => text(dialect, c.name, true),
            Kind::Text => text(dialect, c.name, false),
            Kind::Bool | Kind::Int => c.name.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The statements a store runs, built once for its dialect and table.
#[derive(Debug, Clone)]
pub struct Statements {
    pub select_all: String,
    pub select_by_id: String,
    pub select_by_key: String,
    /// The id of another app that uses a key (`key`, `id` bound).
    pub key_owner: String,
    /// The secret columns of an app, locked for the write that follows.
    pub lock_secret: String,
    pub insert: String,
    /// Every column but `id` set, `id` bound last.
    pub update: String,
    pub delete: String,
    pub ping: String,
}

impl Statements {
    pub fn new(dialect: Dialect, table: &str) -> Self {
        let p = |n: usize| param(dialect, n, &COLUMNS[0]);
        let select = format!("SELECT {} FROM {table}", select_list(dialect));
        let names: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
        let values: Vec<String> = COLUMNS
            .iter()
            .enumerate()
            .map(|(i, c)| param(dialect, i + 1, c))
            .collect();
        let sets: Vec<String> = COLUMNS
            .iter()
            .skip(1)
            .enumerate()
            .map(|(i, c)| format!("{} = {}", c.name, param(dialect, i + 1, c)))
            .collect();
        Statements {
            select_all: format!("{select} ORDER BY id"),
            select_by_id: format!("{select} WHERE id = {}", p(1)),
            select_by_key: format!("{select} WHERE app_key = {}", p(1)),
            key_owner: format!(
                "SELECT {} FROM {table} WHERE app_key = {} AND id <> {}",
                text(dialect, "id", false),
                p(1),
                p(2)
            ),
            lock_secret: format!(
                "SELECT {}, {}, previous_secret_expires_at FROM {table} WHERE id = {} FOR UPDATE",
                text(dialect, "secret", false),
                text(dialect, "previous_secret", false),
                p(1)
            ),
            insert: format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                names.join(", "),
                values.join(", ")
            ),
            update: format!(
                "UPDATE {table} SET {} WHERE id = {}",
                sets.join(", "),
                p(COLUMNS.len())
            ),
            delete: format!("DELETE FROM {table} WHERE id = {}", p(1)),
            ping: "SELECT 1".to_owned(),
        }
    }
}

/// An app from a row (values in [`COLUMNS`] order), with the checks of an `[[apps]]` table.
/// Errors name the row's id when it has one.
pub fn app_from_row(row: &[Val]) -> Result<App, (Option<String>, String)> {
    let id = match row.first() {
        Some(Val::Text(Some(id))) => Some(id.clone()),
        _ => None,
    };
    let fail = |e: String| (id.clone(), e);
    let mut fields = Map::new();
    let mut previous = None;
    let mut until = None;
    for (column, value) in COLUMNS.iter().zip(row) {
        let json = match (column.kind, value) {
            (_, Val::Text(None) | Val::Bool(None) | Val::Int(None)) => continue,
            (Kind::Json, Val::Text(Some(text))) => serde_json::from_str(text)
                .map_err(|e| fail(format!("{}: not JSON ({e})", column.name)))?,
            (_, Val::Text(Some(s))) => Value::String(s.clone()),
            (_, Val::Bool(Some(b))) => Value::Bool(*b),
            (_, Val::Int(Some(n))) => Value::from(*n),
        };
        match column.field {
            Some(field) => {
                fields.insert(field.to_owned(), json);
            }
            None if column.name == "previous_secret" => previous = json.as_str().map(String::from),
            None if column.name == "previous_secret_expires_at" => until = json.as_u64(),
            None => {}
        }
    }
    let mut app = app_from_json(Value::Object(fields)).map_err(fail)?;
    if let (Some(secret), Some(until_secs)) = (previous, until) {
        app.previous_secret = Some(PreviousSecret { secret, until_secs });
    }
    Ok(app)
}

/// A row for an app (values in [`COLUMNS`] order), written at `now_secs`. Fails for numbers
/// the database cannot hold.
pub fn row_from_app(app: &App, now_secs: u64) -> Result<Vec<Val>, String> {
    let Value::Object(fields) = serde_json::to_value(app).map_err(|e| e.to_string())? else {
        return Err("an app serialises to an object".into());
    };
    let int = |field: &str, n: Option<u64>| -> Result<Option<i64>, String> {
        n.map(|n| i64::try_from(n).map_err(|_| format!("{field}: {n} is too large to store")))
            .transpose()
    };
    let previous = app.previous_secret.as_ref();
    COLUMNS
        .iter()
        .map(|column| {
            let Some(field) = column.field else {
                return Ok(match column.name {
                    "previous_secret" => Val::Text(previous.map(|p| p.secret.clone())),
                    "previous_secret_expires_at" => {
                        Val::Int(int(column.name, previous.map(|p| p.until_secs))?)
                    }
                    _ => Val::Int(int(column.name, Some(now_secs))?),
                });
            };
            let value = fields.get(field);
            Ok(match column.kind {
                Kind::Text => Val::Text(value.and_then(Value::as_str).map(String::from)),
                Kind::Bool => Val::Bool(value.and_then(Value::as_bool)),
                Kind::Int => Val::Int(int(field, value.and_then(Value::as_u64))?),
                Kind::Json => Val::Text(value.map(Value::to_string)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An app with every optional setting set, so each one serialises.
    fn full_app() -> App {
        let mut app = App::new("a", "k", "s");
        app.authorized_connections_timeout = Some(5);
        app.webhooks = vec![herald_hub::app::Webhook {
            url: "https://example.com/h".into(),
            event_types: vec!["member_added".into()],
        }];
        app.history = vec![herald_hub::HistoryRule {
            prefix: "orders.".into(),
            size: 10,
            ttl: 60,
        }];
        app.allowed_origins = vec!["https://example.com".into()];
        app.enabled = false;
        app
    }

    #[test]
    fn every_setting_has_a_column() {
        let Value::Object(fields) = serde_json::to_value(full_app()).expect("json") else {
            panic!("an object")
        };
        for field in fields.keys() {
            assert!(
                COLUMNS.iter().any(|c| c.field == Some(field.as_str())),
                "[[apps]] setting {field} has no column"
            );
        }
        assert_eq!(
            COLUMNS.iter().filter(|c| c.field.is_some()).count(),
            fields.len()
        );
    }

    #[test]
    fn rows_round_trip() {
        let mut app = full_app();
        app.previous_secret = Some(PreviousSecret {
            secret: "old".into(),
            until_secs: 1_700_000_060,
        });
        let row = row_from_app(&app, 1_700_000_000).expect("row");
        assert_eq!(row.len(), COLUMNS.len());
        assert_eq!(row.last(), Some(&Val::Int(Some(1_700_000_000))));
        assert_eq!(app_from_row(&row).expect("app"), app);
    }

    #[test]
    fn null_settings_are_defaults_and_bad_rows_name_the_field() {
        let mut row: Vec<Val> = COLUMNS
            .iter()
            .map(|c| match c.kind {
                Kind::Bool => Val::Bool(None),
                Kind::Int => Val::Int(None),
                _ => Val::Text(None),
            })
            .collect();
        row[0] = Val::Text(Some("a".into()));
        row[1] = Val::Text(Some("k".into()));
        row[2] = Val::Text(Some("s".into()));
        assert_eq!(
            app_from_row(&row).expect("defaults"),
            App::new("a", "k", "s")
        );
        row[5] = Val::Int(Some(-1));
        let (id, err) = app_from_row(&row).expect_err("negative");
        assert_eq!(id.as_deref(), Some("a"));
        assert!(err.starts_with("max_connections"), "{err}");
        row[5] = Val::Int(None);
        row[18] = Val::Text(Some("{not json".into()));
        let (_, err) = app_from_row(&row).expect_err("bad json");
        assert!(err.starts_with("webhooks"), "{err}");
    }

    #[test]
    fn statements_bind_in_column_order() {
        let s = Statements::new(Dialect::Postgres, "herald_apps");
        assert!(s.insert.contains(&format!("${}", COLUMNS.len())));
        assert!(s
            .update
            .ends_with(&format!("WHERE id = ${}", COLUMNS.len())));
        assert!(s.select_all.contains("webhooks::text AS webhooks"));
        let m = Statements::new(Dialect::MySql, "herald_apps");
        assert_eq!(m.insert.matches('?').count(), COLUMNS.len());
        assert!(create_table(Dialect::MySql, "t").contains("utf8mb4_bin"));
    }
}
