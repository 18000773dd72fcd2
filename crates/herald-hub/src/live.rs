//! Apps that change while the node runs: the set is swapped whole (copy on write) and each app
//! is a cell its connections share, so a changed setting applies to the next operation of every
//! open connection with one atomic load, and nothing on the hot path takes a lock for it.
//!
//! The hub gets plain [`App`] values ([`Hub::upsert_app`], [`Hub::remove_app`],
//! [`Hub::replace_apps`]); where they come from (the configuration file, a database) is the
//! node's business. What the hub tells the node back goes through an [`AppsListener`].

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use herald_protocol::{ChannelName, ErrorCode};

use crate::app::App;
use crate::errors::{APP_DELETED, APP_DISABLED};
use crate::hub::{Hub, LocalChannel};

/// One app as the node holds it: its current settings and its channels with local
/// subscribers. Connections keep the cell, not a copy of the settings.
pub struct LiveApp {
    /// The app id (never changes: a new id is a new app).
    pub id: String,
    current: ArcSwap<App>,
    pub(crate) channels: DashMap<ChannelName, Arc<LocalChannel>>,
}

impl std::fmt::Debug for LiveApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveApp")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl LiveApp {
    fn new(app: App) -> Arc<Self> {
        Arc::new(LiveApp {
            id: app.id.clone(),
            current: ArcSwap::from_pointee(app),
            channels: DashMap::new(),
        })
    }

    /// A cell for an app the hub no longer holds (a connection admitted just before the app
    /// was removed; it is closed at once).
    pub(crate) fn detached(app: App) -> Arc<Self> {
        Self::new(app)
    }

    /// The app's settings now.
    pub fn get(&self) -> Arc<App> {
        self.current.load_full()
    }
}

/// The apps of a node, looked up by id (HTTP API) or key (WebSocket). A snapshot: the hub
/// swaps in a new set when apps change.
#[derive(Debug, Default, Clone)]
pub struct Apps {
    by_id: HashMap<String, Arc<LiveApp>>,
    by_key: HashMap<String, Arc<LiveApp>>,
}

impl Apps {
    pub fn new(apps: impl IntoIterator<Item = App>) -> Self {
        let mut this = Apps::default();
        for app in apps {
            this.insert(LiveApp::new(app));
        }
        this
    }

    fn insert(&mut self, live: Arc<LiveApp>) {
        let key = live.current.load().key.clone();
        self.by_key.insert(key, live.clone());
        self.by_id.insert(live.id.clone(), live);
    }

    /// Removes an app and its key entry (only if the key still names this app: a stale entry
    /// of another app with the same key is not touched).
    fn remove(&mut self, id: &str) -> Option<Arc<LiveApp>> {
        let live = self.by_id.remove(id)?;
        self.by_key.retain(|_, l| !Arc::ptr_eq(l, &live));
        Some(live)
    }

    pub fn by_id(&self, id: &str) -> Option<Arc<App>> {
        self.by_id.get(id).map(|l| l.get())
    }

    pub fn by_key(&self, key: &str) -> Option<Arc<App>> {
        self.by_key.get(key).map(|l| l.get())
    }

    pub(crate) fn live(&self, id: &str) -> Option<&Arc<LiveApp>> {
        self.by_id.get(id)
    }

    /// Every app's settings now.
    pub fn iter(&self) -> impl Iterator<Item = Arc<App>> + '_ {
        self.by_id.values().map(|l| l.get())
    }

    pub(crate) fn live_apps(&self) -> impl Iterator<Item = &Arc<LiveApp>> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Receives what the cluster says about apps (implemented by the node, which knows where apps
/// are stored). Calls must not block.
pub trait AppsListener: Send + Sync {
    /// Another node changed these apps (created, replaced, disabled or deleted them).
    fn apps_changed(&self, ids: Vec<String>);

    /// The bus was interrupted and is back: notices may have been missed.
    fn resync(&self);
}

/// What [`Hub::upsert_app`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    Created,
    Changed,
    Unchanged,
}

/// What the hub keeps to change its apps: writers take the lock, readers never do.
#[derive(Default)]
pub(crate) struct AppsWriter {
    lock: parking_lot::Mutex<()>,
    /// Apps removed while connections still held them: an app created again with the same id
    /// gets the same cell, so the old connections' departures and the new ones' arrivals count
    /// on one set of channels.
    retired: parking_lot::Mutex<HashMap<String, Weak<LiveApp>>>,
}

impl Hub {
    /// The apps now (a snapshot).
    pub fn apps(&self) -> Arc<Apps> {
        self.apps.load_full()
    }

    /// One app's settings now, by id.
    pub fn app_by_id(&self, id: &str) -> Option<Arc<App>> {
        self.apps.load().by_id(id)
    }

    /// One app's settings now, by key.
    pub fn app_by_key(&self, key: &str) -> Option<Arc<App>> {
        self.apps.load().by_key(key)
    }

    /// The cell of a live app (connections hold it).
    pub(crate) fn live_app(&self, id: &str) -> Option<Arc<LiveApp>> {
        self.apps.load().live(id).cloned()
    }

    /// Hands the hub the node's receiver of app notices. Called once, at start-up.
    pub fn set_apps_listener(&self, listener: Arc<dyn AppsListener>) {
        let _ = self.apps_listener.set(listener);
    }

    pub(crate) fn apps_listener(&self) -> Option<&Arc<dyn AppsListener>> {
        self.apps_listener.get()
    }

    /// Tells the other nodes that these apps changed (they read them again from the store).
    pub async fn announce_apps_changed(&self, ids: &[String]) {
        self.broker.apps_changed(&self.origin, ids).await;
    }

    /// Creates or replaces an app. Open connections see the new settings at their next
    /// operation; when the app is now disabled they are closed with 4003.
    pub fn upsert_app(&self, app: App) -> Upserted {
        let _w = self.apps_writer.lock.lock();
        let current = self.apps.load_full();
        let outcome = match current.live(&app.id) {
            Some(live) => {
                let before = live.get();
                if *before == app {
                    return Upserted::Unchanged;
                }
                let disabled = before.enabled && !app.enabled;
                let key_changed = before.key != app.key;
                live.current.store(Arc::new(app));
                if key_changed {
                    let mut next = (*current).clone();
                    next.by_key.retain(|_, l| !Arc::ptr_eq(l, live));
                    next.insert(live.clone());
                    self.apps.store(Arc::new(next));
                }
                if disabled {
                    self.close_app_connections(&live.id, ErrorCode::AppDisabled, APP_DISABLED);
                }
                Upserted::Changed
            }
            None => {
                let disabled = !app.enabled;
                let id = app.id.clone();
                let live = match self.reuse_retired(&id) {
                    Some(live) => {
                        live.current.store(Arc::new(app));
                        live
                    }
                    None => LiveApp::new(app),
                };
                let mut next = (*current).clone();
                next.insert(live);
                self.apps.store(Arc::new(next));
                if disabled {
                    self.close_app_connections(&id, ErrorCode::AppDisabled, APP_DISABLED);
                }
                Upserted::Created
            }
        };
        crate::metrics::apps_loaded(self.apps.load().len());
        outcome
    }

    /// Removes an app: new connections and API calls are refused as for an unknown app, and
    /// open connections are closed with 4001. Returns whether the app was there.
    pub fn remove_app(&self, id: &str) -> bool {
        let _w = self.apps_writer.lock.lock();
        let mut next = (*self.apps.load_full()).clone();
        let Some(live) = next.remove(id) else {
            return false;
        };
        self.apps.store(Arc::new(next));
        self.retire(&live);
        self.close_app_connections(id, ErrorCode::AppDoesNotExist, APP_DELETED);
        crate::metrics::apps_loaded(self.apps.load().len());
        true
    }

    /// Replaces the whole set (a full reload): apps not in `apps` are removed, the others
    /// created or replaced as by [`Hub::upsert_app`]. Built once, so a reload of many apps
    /// costs one copy of the set.
    pub fn replace_apps(&self, apps: Vec<App>) {
        let _w = self.apps_writer.lock.lock();
        let current = self.apps.load_full();
        let mut next = Apps::default();
        let mut close = Vec::new();
        for app in apps {
            let live = match current.live(&app.id) {
                Some(live) => {
                    let before = live.get();
                    if before.enabled && !app.enabled {
                        close.push((app.id.clone(), ErrorCode::AppDisabled, APP_DISABLED));
                    }
                    if *before != app {
                        live.current.store(Arc::new(app));
                    }
                    live.clone()
                }
                None => {
                    if !app.enabled {
                        close.push((app.id.clone(), ErrorCode::AppDisabled, APP_DISABLED));
                    }
                    match self.reuse_retired(&app.id) {
                        Some(live) => {
                            live.current.store(Arc::new(app));
                            live
                        }
                        None => LiveApp::new(app),
                    }
                }
            };
            next.insert(live);
        }
        for (id, live) in &current.by_id {
            if !next.by_id.contains_key(id) {
                self.retire(live);
                close.push((id.clone(), ErrorCode::AppDoesNotExist, APP_DELETED));
            }
        }
        let count = next.len();
        self.apps.store(Arc::new(next));
        for (id, code, message) in close {
            self.close_app_connections(&id, code, message);
        }
        crate::metrics::apps_loaded(count);
    }

    fn retire(&self, live: &Arc<LiveApp>) {
        let mut retired = self.apps_writer.retired.lock();
        retired.retain(|_, w| w.strong_count() > 0);
        retired.insert(live.id.clone(), Arc::downgrade(live));
    }

    fn reuse_retired(&self, id: &str) -> Option<Arc<LiveApp>> {
        self.apps_writer.retired.lock().remove(id)?.upgrade()
    }

    /// Closes every local connection of an app with `code`.
    fn close_app_connections(&self, app_id: &str, code: ErrorCode, message: &str) -> usize {
        let mut n = 0;
        for conn in self.connections() {
            if conn.app.id == app_id {
                conn.outbox.close(code.as_u16(), message);
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(app = %app_id, connections = n, code = code.as_u16(), reason = message, "closing the app's connections");
        }
        n
    }
}
