//! `[apps_store]`: where the node's apps come from. `file` (the default) is the `[[apps]]`
//! tables of the configuration file, read again on SIGHUP; `postgres` and `mysql` are a table
//! of a database shared by every node, changed through the admin API (see
//! docs/operations.md, "Apps as data").

use serde::{Deserialize, Serialize};

/// The drivers, as written in the configuration.
pub const DRIVERS: [&str; 3] = ["file", "postgres", "mysql"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppsStoreConfig {
    /// `file`, `postgres` or `mysql`.
    pub driver: String,
    /// The database URL (`postgres://user:pass@host:5432/db`, `mysql://user:pass@host:3306/db`;
    /// `?sslmode=require` / `?ssl-mode=REQUIRED` for TLS). A secret: redacted in logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The table holding the apps (created by `herald migrate`).
    pub table: String,
    /// Seconds the secret an app had before a rotation still verifies signatures, so app
    /// servers can switch over without refused requests.
    pub secret_grace_seconds: u64,
}

impl Default for AppsStoreConfig {
    fn default() -> Self {
        AppsStoreConfig {
            driver: "file".into(),
            url: None,
            table: "herald_apps".into(),
            secret_grace_seconds: 60,
        }
    }
}

impl AppsStoreConfig {
    /// Whether apps live in a database (else in the configuration file).
    pub fn is_database(&self) -> bool {
        self.driver != "file"
    }

    /// Checks what serde cannot: the driver, a URL of that driver, a table name that is safe
    /// to put in SQL (it cannot be a bind parameter).
    pub fn validate(&self) -> Result<(), String> {
        if !DRIVERS.contains(&self.driver.as_str()) {
            return Err(format!(
                "apps_store.driver: {:?} is not one of \"file\", \"postgres\", \"mysql\"",
                self.driver
            ));
        }
        let schemes: &[&str] = match self.driver.as_str() {
            "postgres" => &["postgres://", "postgresql://"],
            "mysql" => &["mysql://", "mariadb://"],
            _ => {
                if self.url.is_some() {
                    return Err(
                        "apps_store.url: only for the postgres and mysql drivers (the file \
                         driver reads [[apps]] from this file)"
                            .into(),
                    );
                }
                return Ok(());
            }
        };
        match &self.url {
            None => {
                return Err(format!(
                    "apps_store.url: the {} driver needs a URL ({}user:password@host/database)",
                    self.driver, schemes[0]
                ))
            }
            Some(url) if !schemes.iter().any(|s| url.starts_with(s)) => {
                return Err(format!(
                    "apps_store.url: must start with {} for the {} driver",
                    schemes.join(" or "),
                    self.driver
                ))
            }
            Some(_) => {}
        }
        check_table(&self.table)
    }
}

/// Longest table name (both databases allow at least 63 bytes).
const MAX_TABLE_LEN: usize = 63;

/// A table name, optionally schema-qualified: letters, digits and `_`, not starting with a
/// digit. It is written into SQL as is, so nothing else is accepted.
fn check_table(table: &str) -> Result<(), String> {
    let parts: Vec<&str> = table.split('.').collect();
    let ok = parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= MAX_TABLE_LEN
                && !p.starts_with(|c: char| c.is_ascii_digit())
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "apps_store.table: {table:?} must be letters, digits and '_' (optionally \
             schema.table), not starting with a digit, at most {MAX_TABLE_LEN} characters"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(driver: &str, url: Option<&str>, table: &str) -> AppsStoreConfig {
        AppsStoreConfig {
            driver: driver.into(),
            url: url.map(Into::into),
            table: table.into(),
            ..AppsStoreConfig::default()
        }
    }

    #[test]
    fn drivers_urls_and_tables() {
        assert!(AppsStoreConfig::default().validate().is_ok());
        assert!(
            store("postgres", Some("postgres://u:p@h/db"), "herald_apps")
                .validate()
                .is_ok()
        );
        assert!(store("mysql", Some("mysql://u:p@h/db"), "app.herald_apps")
            .validate()
            .is_ok());
        for (s, field) in [
            (store("sqlite", None, "t"), "apps_store.driver"),
            (store("postgres", None, "t"), "apps_store.url"),
            (
                store("postgres", Some("mysql://h/db"), "t"),
                "apps_store.url",
            ),
            (
                store("file", Some("postgres://h/db"), "t"),
                "apps_store.url",
            ),
            (
                store("mysql", Some("mysql://h/db"), "t; DROP TABLE x"),
                "apps_store.table",
            ),
            (
                store("mysql", Some("mysql://h/db"), "1t"),
                "apps_store.table",
            ),
            (
                store("mysql", Some("mysql://h/db"), "a.b.c"),
                "apps_store.table",
            ),
        ] {
            let err = s.validate().expect_err(field);
            assert!(err.starts_with(field), "{err}");
        }
    }
}
