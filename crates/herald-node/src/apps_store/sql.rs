//! The database stores: Postgres and MySQL/MariaDB through sqlx, the same statements in each
//! dialect ([`super::schema`]). A small pool that connects lazily (a database down at start
//! does not stop the node); every call is bounded in time, so a database that hangs answers
//! "unavailable" instead of holding anyone.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use herald_hub::{App, PreviousSecret};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Row;

use super::schema::{self, app_from_row, row_from_app, Dialect, Kind, Statements, Val, COLUMNS};
use super::{AppsStore, Loaded, Put, StoreError};
use crate::config::AppsStoreConfig;

/// Connections each node keeps to the database at most (reads are rare: reloads, notices,
/// lookups of unknown keys).
const POOL_SIZE: u32 = 4;
/// Longest wait for a connection from the pool (a database that is down fails this fast).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest any one call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

enum Pool {
    Pg(PgPool),
    My(MySqlPool),
}

/// Runs the same code on either pool (sqlx's types differ per database, the calls do not).
macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            Pool::Pg($p) => $body,
            Pool::My($p) => $body,
        }
    };
}

/// Reads a row's columns in [`COLUMNS`] order.
macro_rules! read_row {
    ($row:expr) => {{
        let row = $row;
        let mut values = Vec::with_capacity(COLUMNS.len());
        for (i, column) in COLUMNS.iter().enumerate() {
            values.push(match column.kind {
                Kind::Text | Kind::Json => Val::Text(row.try_get::<Option<String>, _>(i)?),
                Kind::Bool => Val::Bool(row.try_get::<Option<bool>, _>(i)?),
                Kind::Int => Val::Int(row.try_get::<Option<i64>, _>(i)?),
            });
        }
        values
    }};
}

/// Binds values in order.
macro_rules! bind_all {
    ($query:expr, $values:expr) => {{
        let mut q = $query;
        for value in $values {
            q = match value {
                Val::Text(v) => q.bind(v.clone()),
                Val::Bool(v) => q.bind(*v),
                Val::Int(v) => q.bind(*v),
            };
        }
        q
    }};
}

pub struct SqlStore {
    driver: &'static str,
    dialect: Dialect,
    table: String,
    pool: Pool,
    sql: Statements,
}

impl SqlStore {
    /// A store on the configured database; nothing is connected until the first call.
    pub fn open(cfg: &AppsStoreConfig) -> anyhow::Result<Self> {
        let url = cfg.url.as_deref().unwrap_or_default();
        // The URL holds a password: errors about it never quote it.
        let bad_url =
            |e: sqlx::Error| anyhow::anyhow!("apps_store.url: not a valid {} URL: {e}", cfg.driver);
        let (driver, dialect, pool) = if cfg.driver == "postgres" {
            let options = PgConnectOptions::from_str(url)
                .map_err(bad_url)?
                .application_name("herald");
            let pool = PgPoolOptions::new()
                .max_connections(POOL_SIZE)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .idle_timeout(Duration::from_secs(60))
                .connect_lazy_with(options);
            ("postgres", Dialect::Postgres, Pool::Pg(pool))
        } else {
            let url = url.replacen("mariadb://", "mysql://", 1);
            let options = MySqlConnectOptions::from_str(&url).map_err(bad_url)?;
            let pool = MySqlPoolOptions::new()
                .max_connections(POOL_SIZE)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .idle_timeout(Duration::from_secs(60))
                .connect_lazy_with(options);
            ("mysql", Dialect::MySql, Pool::My(pool))
        };
        Ok(SqlStore {
            driver,
            dialect,
            table: cfg.table.clone(),
            pool,
            sql: Statements::new(dialect, &cfg.table),
        })
    }

    /// Creates the table if it is not there (`herald migrate`).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let ddl = schema::create_table(self.dialect, &self.table);
        bounded(async {
            on_pool!(&self.pool, |p| sqlx::query(&ddl)
                .execute(p)
                .await
                .map(|_| ()))
        })
        .await
    }

    async fn select_one(&self, sql: &str, arg: &str) -> Result<Option<App>, StoreError> {
        let row = bounded(async {
            on_pool!(&self.pool, |p| {
                match sqlx::query(sql).bind(arg).fetch_optional(p).await? {
                    Some(row) => Ok(Some(read_row!(&row))),
                    None => Ok(None),
                }
            })
        })
        .await?;
        row.map(|r| {
            app_from_row(&r).map_err(|(_, e)| StoreError::Invalid(format!("app {arg:?}: {e}")))
        })
        .transpose()
    }
}

/// Why a write was refused before anything was written.
enum Refused {
    KeyUsedBy(String),
    Unstorable(String),
}

/// Runs a database call within [`CALL_TIMEOUT`], mapping its errors.
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => r.map_err(store_error),
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer within {} s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

fn store_error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            StoreError::Conflict(format!("another app already uses this id or key ({d})"))
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::ColumnNotFound(_) => StoreError::Invalid(
            format!("the apps table does not have the expected columns (run herald migrate): {e}"),
        ),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// The previous secret a write keeps: the one it replaces when the secret changes, else the
/// one already there while it lasts.
fn rotated(
    stored: Option<(String, Option<String>, Option<i64>)>,
    new_secret: &str,
    now: u64,
    grace: Duration,
) -> Option<PreviousSecret> {
    let (secret, previous, until) = stored?;
    if secret != new_secret {
        return Some(PreviousSecret {
            secret,
            until_secs: now + grace.as_secs(),
        });
    }
    let until_secs = u64::try_from(until?).ok()?;
    (until_secs >= now).then(|| PreviousSecret {
        secret: previous.unwrap_or_default(),
        until_secs,
    })
}

#[async_trait]
impl AppsStore for SqlStore {
    fn driver(&self) -> &'static str {
        self.driver
    }

    fn is_database(&self) -> bool {
        true
    }

    async fn load_all(&self) -> Result<Loaded, StoreError> {
        let rows = bounded(async {
            on_pool!(&self.pool, |p| {
                let rows = sqlx::query(&self.sql.select_all).fetch_all(p).await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    out.push(read_row!(row));
                }
                Ok(out)
            })
        })
        .await?;
        let mut loaded = Loaded::default();
        for row in rows {
            match app_from_row(&row) {
                Ok(app) => loaded.apps.push(app),
                Err(bad) => loaded.invalid.push(bad),
            }
        }
        Ok(loaded)
    }

    async fn get_by_id(&self, id: &str) -> Result<Option<App>, StoreError> {
        self.select_one(&self.sql.select_by_id, id).await
    }

    async fn get_by_key(&self, key: &str) -> Result<Option<App>, StoreError> {
        self.select_one(&self.sql.select_by_key, key).await
    }

    async fn put(&self, mut app: App, grace: Duration) -> Result<Put, StoreError> {
        let now = herald_hub::clock::now_secs();
        let sql = &self.sql;
        let outcome = bounded(async {
            on_pool!(&self.pool, |p| {
                let mut tx = p.begin().await?;
                let owner: Option<String> = sqlx::query(&sql.key_owner)
                    .bind(&app.key)
                    .bind(&app.id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?;
                if let Some(owner) = owner {
                    return Ok(Err(Refused::KeyUsedBy(owner)));
                }
                let stored = sqlx::query(&sql.lock_secret)
                    .bind(&app.id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| -> Result<_, sqlx::Error> {
                        Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
                    })
                    .transpose()?;
                let created = stored.is_none();
                app.previous_secret = rotated(stored, &app.secret, now, grace);
                let row = match row_from_app(&app, now) {
                    Ok(row) => row,
                    Err(e) => return Ok(Err(Refused::Unstorable(e))),
                };
                if created {
                    bind_all!(sqlx::query(&sql.insert), &row)
                        .execute(&mut *tx)
                        .await?;
                } else {
                    bind_all!(sqlx::query(&sql.update), row[1..].iter().chain(&row[..1]))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(Ok(created))
            })
        })
        .await?;
        match outcome {
            Ok(created) => Ok(Put { app, created }),
            Err(Refused::Unstorable(e)) => Err(StoreError::Invalid(e)),
            Err(Refused::KeyUsedBy(owner)) => Err(StoreError::Conflict(format!(
                "key: {:?} is already used by app {owner:?}",
                app.key
            ))),
        }
    }

    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        bounded(async {
            on_pool!(&self.pool, |p| sqlx::query(&self.sql.delete)
                .bind(id)
                .execute(p)
                .await
                .map(|r| r.rows_affected() > 0))
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        bounded(async {
            on_pool!(&self.pool, |p| sqlx::query(&self.sql.ping)
                .execute(p)
                .await
                .map(|_| ()))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_replaced_secret_for_the_grace() {
        let grace = Duration::from_secs(60);
        assert_eq!(rotated(None, "new", 100, grace), None);
        let p = rotated(Some(("old".into(), None, None)), "new", 100, grace).expect("rotated");
        assert_eq!((p.secret.as_str(), p.until_secs), ("old", 160));
        // Written again with the same secret: the earlier rotation's grace goes on, then ends.
        let again = Some(("new".into(), Some("old".into()), Some(160)));
        assert_eq!(rotated(again.clone(), "new", 150, grace), Some(p));
        assert_eq!(rotated(again, "new", 161, grace), None);
    }
}
