//! Keeps the hub's in-memory apps in step with the store. Connections and API calls read the
//! hub alone; this is the only part that waits for the database, and never on their path
//! except for a key or id the node does not know, which is looked up once (one query per key
//! however many ask at the same time), remembered as absent for [`ABSENT_FOR`], and within a
//! node-wide budget of [`LOOKUPS_PER_SECOND`]: unknown keys cannot flood the database.
//!
//! Changes reach the node three ways: a write through this node's admin API (applied at once
//! and announced on the cluster bus), a notice from another node's write (the changed apps are
//! read again), and a full reload — when the bus comes back from an interruption (notices may
//! have been missed), when the database comes back, and every [`RELOAD_EVERY`] as a safety
//! net. The file store reloads on SIGHUP.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_hub::rate::TokenBucket;
use herald_hub::{App, AppsListener, Hub, PreviousSecret};
use parking_lot::Mutex;
use tokio::sync::{mpsc, OnceCell};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{AppsStore, Loaded, Put, StoreError};
use crate::metrics;

/// Period of the safety-net full reload (notices lost while the bus was down, rows changed
/// by hand in the database).
pub const RELOAD_EVERY: Duration = Duration::from_secs(60);
/// Period of the database ping between reloads (so `/readyz` and `herald_apps_store_up`
/// notice a database that went away).
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Period of the reload attempts while the database is unavailable.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How long a key or id the store does not have is answered "unknown" without asking again.
pub const ABSENT_FOR: Duration = Duration::from_secs(30);
/// Most keys and ids remembered as absent.
pub const MAX_ABSENT: usize = 10_000;
/// Lookups of unknown keys and ids a node sends to the database per second, at most (in
/// bursts of as many); beyond, connections are refused as for an unknown key.
pub const LOOKUPS_PER_SECOND: u32 = 20;
/// Notices waiting for the worker; more are folded into one full reload.
const NOTICE_QUEUE: usize = 1024;

/// What a lookup is by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Key,
    Id,
}

impl By {
    fn tag(self, value: &str) -> String {
        match self {
            By::Key => format!("k:{value}"),
            By::Id => format!("i:{value}"),
        }
    }
}

enum Notice {
    Changed(Vec<String>),
    Resync,
}

/// The hub's listener: hands notices to the worker, never blocks.
struct Notices {
    tx: mpsc::Sender<Notice>,
    /// A notice did not fit in the queue: the worker reloads everything.
    overflowed: Arc<AtomicBool>,
}

impl AppsListener for Notices {
    fn apps_changed(&self, ids: Vec<String>) {
        if self.tx.try_send(Notice::Changed(ids)).is_err() {
            self.overflowed.store(true, Ordering::Release);
        }
    }

    fn resync(&self) {
        if self.tx.try_send(Notice::Resync).is_err() {
            self.overflowed.store(true, Ordering::Release);
        }
    }
}

type Found = Result<Option<Arc<App>>, StoreError>;

pub struct AppsSync {
    store: Arc<dyn AppsStore>,
    hub: Arc<Hub>,
    /// `[log] debug_app`: the app whose frames are logged.
    debug_app: Option<String>,
    grace: Duration,
    up: AtomicBool,
    /// Keys and ids (tagged by [`By`]) the store did not have, and when it said so.
    absent: Mutex<HashMap<String, Instant>>,
    budget: Mutex<TokenBucket>,
    /// Lookups in flight: later askers of the same key wait for the first one's answer.
    inflight: Mutex<HashMap<String, Arc<OnceCell<Found>>>>,
    overflowed: Arc<AtomicBool>,
    tasks: TaskTracker,
}

impl std::fmt::Debug for AppsSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppsSync")
            .field("driver", &self.store.driver())
            .finish_non_exhaustive()
    }
}

impl AppsSync {
    /// Attaches to the hub, loads the apps of a database store (a database that does not
    /// answer leaves the node with none, and it keeps trying in the background), and starts
    /// the background work on `tasks` until `cancel` fires.
    pub async fn start(
        store: Arc<dyn AppsStore>,
        hub: Arc<Hub>,
        debug_app: Option<String>,
        grace: Duration,
        tasks: TaskTracker,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(NOTICE_QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        hub.set_apps_listener(Arc::new(Notices {
            tx,
            overflowed: overflowed.clone(),
        }));
        let sync = Arc::new(AppsSync {
            store,
            hub,
            debug_app,
            grace,
            up: AtomicBool::new(true),
            absent: Mutex::new(HashMap::new()),
            budget: Mutex::new(TokenBucket::new(LOOKUPS_PER_SECOND)),
            inflight: Mutex::new(HashMap::new()),
            overflowed,
            tasks: tasks.clone(),
        });
        metrics::apps_store_up(true);
        if sync.store.is_database() {
            if let Err(e) = sync.reload().await {
                tracing::error!(driver = sync.store.driver(), error = %e, "apps not loaded at start; serving none until the database answers (retrying every second)");
            }
            tasks.spawn(sync.clone().worker(rx, cancel.clone()));
        } else {
            drop(rx);
        }
        hangup_reloads(&sync, &tasks, cancel);
        sync
    }

    /// Whether apps are stored in a database (writable through the admin API).
    pub fn is_database(&self) -> bool {
        self.store.is_database()
    }

    pub fn driver(&self) -> &'static str {
        self.store.driver()
    }

    /// `ok`, or `unavailable` while the database does not answer (the node goes on with the
    /// apps it has).
    pub fn status(&self) -> &'static str {
        if self.up.load(Ordering::Acquire) {
            "ok"
        } else {
            "unavailable"
        }
    }

    fn set_up(&self, up: bool, why: Option<&StoreError>) {
        let was = self.up.swap(up, Ordering::AcqRel);
        metrics::apps_store_up(up);
        match (was, up) {
            (true, false) => {
                tracing::warn!(driver = self.store.driver(), error = %why.map(ToString::to_string).unwrap_or_default(), "apps store unavailable; serving the apps in memory")
            }
            (false, true) => {
                tracing::info!(driver = self.store.driver(), "apps store available again")
            }
            _ => {}
        }
    }

    /// Notes a failed call: an unavailable database turns the store's status down.
    fn failed(&self, e: &StoreError) {
        if matches!(e, StoreError::Unavailable(_)) {
            self.set_up(false, Some(e));
        }
    }

    /// The app as the hub should hold it: frames logged for `[log] debug_app`; a secret that
    /// changed without the store keeping the old one (an edited file, a row changed by hand)
    /// keeps the old one for the grace period, as a write through the admin API does.
    fn prepare(&self, mut app: App) -> App {
        app.debug_frames = self.debug_app.as_deref() == Some(app.id.as_str());
        let Some(old) = self.hub.app_by_id(&app.id) else {
            return app;
        };
        let now = herald_hub::clock::now_secs();
        if old.secret != app.secret {
            if app.previous_secret.is_none() {
                app.previous_secret = Some(PreviousSecret {
                    secret: old.secret.clone(),
                    until_secs: now + self.grace.as_secs(),
                });
            }
        } else if app.previous_secret.is_none() {
            app.previous_secret = old.previous_secret.clone().filter(|p| p.until_secs >= now);
        }
        app
    }

    /// Puts an app from the store into the hub; its key and id are no longer absent.
    fn apply(&self, app: App) -> Option<Arc<App>> {
        let app = self.prepare(app);
        {
            let mut absent = self.absent.lock();
            absent.remove(&By::Key.tag(&app.key));
            absent.remove(&By::Id.tag(&app.id));
        }
        let id = app.id.clone();
        self.hub.upsert_app(app);
        self.hub.app_by_id(&id)
    }

    /// Reads every app from the store into the hub. Apps whose rows fail the checks keep what
    /// the node had; a store that fails leaves everything as it was.
    pub async fn reload(&self) -> Result<usize, StoreError> {
        let loaded = match self.store.load_all().await {
            Ok(l) => l,
            Err(e) => {
                metrics::apps_store_reload(false);
                self.failed(&e);
                return Err(e);
            }
        };
        let mut apps: Vec<App> = loaded.apps.into_iter().map(|a| self.prepare(a)).collect();
        for (id, why) in &loaded.invalid {
            tracing::error!(app = ?id, error = %why, "app in the store refused; the node keeps what it had for it");
            if let Some(old) = id.as_deref().and_then(|id| self.hub.app_by_id(id)) {
                if !apps.iter().any(|a| a.id == old.id) {
                    apps.push((*old).clone());
                }
            }
        }
        let n = apps.len();
        // Whatever was absent may have been created meanwhile.
        self.absent.lock().clear();
        self.hub.replace_apps(apps);
        metrics::apps_store_reload(true);
        self.set_up(true, None);
        tracing::debug!(apps = n, "apps reloaded");
        Ok(n)
    }

    /// Reads the named apps again (another node changed them).
    async fn refresh(&self, ids: Vec<String>) {
        for id in ids {
            match self.store.get_by_id(&id).await {
                Ok(Some(app)) => {
                    self.apply(app);
                }
                Ok(None) => {
                    self.hub.remove_app(&id);
                }
                Err(StoreError::Invalid(why)) => {
                    tracing::error!(app = %id, error = %why, "changed app refused; the node keeps what it had for it");
                }
                Err(e) => {
                    // Read again in full once the database answers.
                    self.failed(&e);
                    return;
                }
            }
        }
    }

    /// Notices, the database ping, the safety-net reload, retries while the database is down.
    async fn worker(self: Arc<Self>, mut rx: mpsc::Receiver<Notice>, cancel: CancellationToken) {
        let mut last_reload = Instant::now();
        loop {
            let up = self.up.load(Ordering::Acquire);
            let wait = if up { PROBE_EVERY } else { RETRY_EVERY };
            let notice = tokio::select! {
                _ = cancel.cancelled() => return,
                n = rx.recv() => match n {
                    Some(n) => Some(n),
                    None => return,
                },
                _ = tokio::time::sleep(wait) => None,
            };
            let full = self.overflowed.swap(false, Ordering::AcqRel)
                || !up
                || last_reload.elapsed() >= RELOAD_EVERY
                || matches!(notice, Some(Notice::Resync));
            if full {
                if self.reload().await.is_ok() {
                    last_reload = Instant::now();
                }
                continue;
            }
            match notice {
                Some(Notice::Changed(ids)) => self.refresh(ids).await,
                Some(Notice::Resync) => {}
                None => {
                    if let Err(e) = self.store.ping().await {
                        self.failed(&e);
                    }
                }
            }
        }
    }

    fn is_absent(&self, tag: &str) -> bool {
        let mut absent = self.absent.lock();
        match absent.get(tag) {
            Some(at) if at.elapsed() < ABSENT_FOR => true,
            Some(_) => {
                absent.remove(tag);
                false
            }
            None => false,
        }
    }

    fn remember_absent(&self, tag: String) {
        let mut absent = self.absent.lock();
        if absent.len() >= MAX_ABSENT {
            absent.retain(|_, at| at.elapsed() < ABSENT_FOR);
        }
        if absent.len() >= MAX_ABSENT {
            // Full of fresh entries (a flood of distinct keys): the lookup budget bounds the
            // queries anyway; make room for this one.
            if let Some(any) = absent.keys().next().cloned() {
                absent.remove(&any);
            }
        }
        absent.insert(tag, Instant::now());
    }

    /// An app the hub does not hold, from the database: `Ok(None)` when the store does not
    /// have it (or the node is over its lookup budget), an error when the database cannot be
    /// asked. The file store never has more than the hub.
    pub async fn lookup(&self, by: By, value: &str) -> Found {
        if !self.store.is_database() {
            return Ok(None);
        }
        let tag = by.tag(value);
        if self.is_absent(&tag) {
            metrics::apps_store_lookup("cached_absent");
            return Ok(None);
        }
        if !self.up.load(Ordering::Acquire) {
            metrics::apps_store_lookup("unavailable");
            return Err(StoreError::Unavailable(
                "the database is not answering".into(),
            ));
        }
        let cell = self
            .inflight
            .lock()
            .entry(tag.clone())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let found = cell
            .get_or_init(|| self.query(by, value, tag.clone()))
            .await
            .clone();
        let mut inflight = self.inflight.lock();
        if inflight.get(&tag).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&tag);
        }
        found
    }

    async fn query(&self, by: By, value: &str, tag: String) -> Found {
        // Put there meanwhile (a lookup that just finished, a notice).
        let held = match by {
            By::Key => self.hub.app_by_key(value),
            By::Id => self.hub.app_by_id(value),
        };
        if held.is_some() {
            return Ok(held);
        }
        if !self.budget.lock().try_take() {
            metrics::apps_store_lookup("limited");
            return Ok(None);
        }
        let got = match by {
            By::Key => self.store.get_by_key(value).await,
            By::Id => self.store.get_by_id(value).await,
        };
        match got {
            Ok(Some(app)) => {
                metrics::apps_store_lookup("found");
                Ok(self.apply(app))
            }
            Ok(None) => {
                metrics::apps_store_lookup("absent");
                self.remember_absent(tag);
                Ok(None)
            }
            // A row the checks refuse serves nothing until it is fixed: as absent.
            Err(StoreError::Invalid(why)) => {
                metrics::apps_store_lookup("error");
                tracing::error!(error = %why, "app in the store refused");
                self.remember_absent(tag);
                Ok(None)
            }
            Err(e) => {
                metrics::apps_store_lookup("error");
                self.failed(&e);
                Err(e)
            }
        }
    }

    /// Creates or replaces an app in the store, applies it here and tells the other nodes.
    pub async fn put(&self, app: App) -> Result<Put, StoreError> {
        let put = self
            .store
            .put(app, self.grace)
            .await
            .inspect_err(|e| self.failed(e))?;
        self.apply(put.app.clone());
        self.announce(put.app.id.clone());
        Ok(put)
    }

    /// Deletes an app from the store and here, and tells the other nodes; whether the store
    /// had it.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let deleted = self
            .store
            .delete(id)
            .await
            .inspect_err(|e| self.failed(e))?;
        self.hub.remove_app(id);
        self.announce(id.to_owned());
        Ok(deleted)
    }

    /// Tells the other nodes, without holding up the answer (Redis may be slow or down: they
    /// catch up at their next reload).
    fn announce(&self, id: String) {
        let hub = self.hub.clone();
        self.tasks
            .spawn(async move { hub.announce_apps_changed(&[id]).await });
    }

    /// Every app as the store has it (the database's rows, and those that fail the checks;
    /// the hub's apps for the file store).
    pub async fn list(&self) -> Result<Loaded, StoreError> {
        if !self.store.is_database() {
            return Ok(Loaded {
                apps: self.hub.apps().iter().map(|a| (*a).clone()).collect(),
                invalid: Vec::new(),
            });
        }
        self.store.load_all().await.inspect_err(|e| self.failed(e))
    }

    /// One app as the store has it.
    pub async fn get(&self, id: &str) -> Result<Option<App>, StoreError> {
        if !self.store.is_database() {
            return Ok(self.hub.app_by_id(id).map(|a| (*a).clone()));
        }
        self.store
            .get_by_id(id)
            .await
            .inspect_err(|e| self.failed(e))
    }
}

/// SIGHUP reads every app again: the configuration file's (a file that does not check is
/// refused with the reason logged, and the apps stay as they were), or the database's at once
/// instead of at the next periodic reload.
fn hangup_reloads(sync: &Arc<AppsSync>, tasks: &TaskTracker, cancel: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: apps are not reloaded");
                return;
            }
        };
        let sync = sync.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    got = hangups.recv() => if got.is_none() { return },
                }
                let driver = sync.store.driver();
                match (sync.reload().await, sync.store.is_database()) {
                    (Ok(n), _) => tracing::info!(apps = n, driver, "SIGHUP: apps reloaded"),
                    (Err(e), false) => tracing::error!(error = %e, "SIGHUP: configuration file refused; the apps stay as they were"),
                    (Err(e), true) => tracing::error!(error = %e, driver, "SIGHUP: apps not reloaded; the apps stay as they were"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = (sync, tasks, cancel);
    }
}
