//! Where apps come from: the `[[apps]]` tables of the configuration file ([`file`]), or a
//! table of a Postgres or MySQL/MariaDB database shared by every node ([`sql`], its columns in
//! [`schema`]). The node never serves from the store directly: [`sync::AppsSync`] keeps the
//! hub's in-memory apps in step with it (reloads, notices from other nodes, lookups of unknown
//! keys with negative caching) and the admin API ([`crate::admin`]) writes through it.

pub mod file;
pub mod schema;
pub mod sql;
pub mod sync;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_hub::App;
use thiserror::Error;

use crate::config::Config;

/// Why the store could not do what was asked.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum StoreError {
    /// The database cannot be reached or did not answer in time: try again later.
    #[error("the apps store is unavailable: {0}")]
    Unavailable(String),
    /// The file store is read-only: apps change by editing the file and sending SIGHUP.
    #[error(
        "apps come from the configuration file (apps_store.driver = \"file\"): edit its \
         [[apps]] tables and send SIGHUP, or use a database store to change apps here"
    )]
    ReadOnly,
    /// What was stored cannot be used (a bad row, a file that does not check).
    #[error("{0}")]
    Invalid(String),
    /// A write that conflicts with another app (a key it already uses).
    #[error("{0}")]
    Conflict(String),
}

/// What a full load found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub apps: Vec<App>,
    /// Rows that failed the checks: their id (when readable) and why. The node keeps what it
    /// had for those ids rather than dropping live apps over a bad edit.
    pub invalid: Vec<(Option<String>, String)>,
}

/// What a write did.
#[derive(Debug, Clone)]
pub struct Put {
    /// The app as stored (with the secret it had before, when this write rotated it).
    pub app: App,
    pub created: bool,
}

/// A store of apps. The database stores are shared by every node; the file store is this
/// node's configuration file.
#[async_trait]
pub trait AppsStore: Send + Sync {
    /// `file`, `postgres` or `mysql`.
    fn driver(&self) -> &'static str;

    /// Whether apps can be written (and looked up one by one) here.
    fn is_database(&self) -> bool;

    /// Every app.
    async fn load_all(&self) -> Result<Loaded, StoreError>;

    async fn get_by_id(&self, id: &str) -> Result<Option<App>, StoreError>;

    async fn get_by_key(&self, key: &str) -> Result<Option<App>, StoreError>;

    /// Creates or replaces an app. A changed secret keeps the previous one for `grace`.
    async fn put(&self, app: App, grace: Duration) -> Result<Put, StoreError>;

    /// Deletes an app; whether it was there.
    async fn delete(&self, id: &str) -> Result<bool, StoreError>;

    /// A cheap round trip, to notice the database going away between reloads.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The store the configuration names. A database store connects lazily: a database that is
/// down at start does not stop the node. `demo` is the app a node without any apps runs with
/// (file store only), kept across reloads of a file that still has none.
pub fn open(config: &Config, demo: Option<App>) -> anyhow::Result<Arc<dyn AppsStore>> {
    let cfg = &config.apps_store;
    Ok(match cfg.driver.as_str() {
        "postgres" | "mysql" => Arc::new(sql::SqlStore::open(cfg)?),
        _ => Arc::new(file::FileStore::new(config.source.clone(), demo)),
    })
}

/// `herald migrate`: creates the apps table of a database store if it is not there, and
/// imports the configuration's `[[apps]]` whose ids the table does not have yet. Safe to run
/// again (on every deploy); never changes an app that is there.
pub async fn migrate(config: &Config) -> Result<String, String> {
    let cfg = &config.apps_store;
    if !cfg.is_database() {
        return Err(
            "apps_store.driver is \"file\": nothing to migrate (set [apps_store] driver = \
             \"postgres\" or \"mysql\" and url)"
                .into(),
        );
    }
    let store = sql::SqlStore::open(cfg).map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    let mut imported = Vec::new();
    for app in &config.apps {
        let there = store
            .get_by_id(&app.id)
            .await
            .map_err(|e| format!("app {:?}: {e}", app.id))?;
        if there.is_none() {
            store
                .put(app.clone(), Duration::ZERO)
                .await
                .map_err(|e| format!("importing app {:?}: {e}", app.id))?;
            imported.push(app.id.clone());
        }
    }
    Ok(format!(
        "apps table {} ready on {}; {} app(s) imported from the configuration{}",
        cfg.table,
        cfg.driver,
        imported.len(),
        if imported.is_empty() {
            String::new()
        } else {
            format!(" ({})", imported.join(", "))
        }
    ))
}

/// A secret as responses show it: its first four characters when it is long enough that they
/// give little away, never the whole.
pub fn mask_secret(secret: &str) -> String {
    if secret.chars().count() >= 12 {
        format!("{}…", secret.chars().take(4).collect::<String>())
    } else {
        "…".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        assert_eq!(mask_secret("0123456789abcdef"), "0123…");
        assert_eq!(mask_secret("short-secret"), "shor…");
        assert_eq!(mask_secret("short"), "…");
        assert_eq!(mask_secret(""), "…");
    }
}
