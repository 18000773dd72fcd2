//! The file store: the `[[apps]]` tables of the configuration file (and Reverb's variables),
//! read again on SIGHUP with the same checks as at start. A file that does not check is
//! refused whole and the node keeps the apps it has. Read-only: the admin API answers 405.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use herald_hub::App;

use super::{AppsStore, Loaded, Put, StoreError};

pub struct FileStore {
    /// The configuration file; `None` when the node runs on defaults and variables only.
    path: Option<PathBuf>,
    demo: Option<App>,
}

impl FileStore {
    pub fn new(path: Option<PathBuf>, demo: Option<App>) -> Self {
        FileStore { path, demo }
    }
}

#[async_trait]
impl AppsStore for FileStore {
    fn driver(&self) -> &'static str {
        "file"
    }

    fn is_database(&self) -> bool {
        false
    }

    async fn load_all(&self) -> Result<Loaded, StoreError> {
        let path = self.path.clone();
        let config = tokio::task::spawn_blocking(move || crate::config::load(path.as_deref()))
            .await
            .map_err(|e| StoreError::Invalid(e.to_string()))?
            .map_err(StoreError::Invalid)?;
        if !config.apps_store.is_database() && config.apps.is_empty() {
            if let Some(demo) = &self.demo {
                return Ok(Loaded {
                    apps: vec![demo.clone()],
                    invalid: Vec::new(),
                });
            }
        }
        Ok(Loaded {
            apps: config.apps,
            invalid: Vec::new(),
        })
    }

    async fn get_by_id(&self, _id: &str) -> Result<Option<App>, StoreError> {
        Ok(None)
    }

    async fn get_by_key(&self, _key: &str) -> Result<Option<App>, StoreError> {
        Ok(None)
    }

    async fn put(&self, _app: App, _grace: Duration) -> Result<Put, StoreError> {
        Err(StoreError::ReadOnly)
    }

    async fn delete(&self, _id: &str) -> Result<bool, StoreError> {
        Err(StoreError::ReadOnly)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
