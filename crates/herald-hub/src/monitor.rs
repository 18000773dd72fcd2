//! What the debug console shows: a record of each connection opened or closed, subscription,
//! refusal, API and client event and webhook, for the apps someone is watching.
//!
//! Nothing is recorded for an app nobody watches (one atomic load on the hot path). Records
//! of watched apps go, within a rate limit (beyond it they are counted and reported as
//! `dropped`), into a bounded broadcast that every open console on this node reads, and, in a
//! cluster, in batches to the consoles of the other nodes. A console that falls behind the
//! broadcast is dropped, never waited for. Payloads are recorded only while a console of that
//! app asked for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::clock::now_ms;
use crate::rate::TokenBucket;

/// Records kept for the node's consoles to read; one that falls further behind is dropped.
pub const CONSOLE_BUFFER: usize = 4096;
/// Most records a node makes per second for its consoles (beyond: counted as dropped).
pub const CONSOLE_RATE: u32 = 2000;

/// One thing that happened, as a console shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Activity {
    ConnectionOpened {
        socket_id: String,
        origin: Option<String>,
    },
    ConnectionClosed {
        socket_id: String,
        code: Option<u16>,
        reason: String,
    },
    Subscribed {
        socket_id: String,
        channel: String,
    },
    Unsubscribed {
        socket_id: String,
        channel: String,
    },
    SubscriptionRefused {
        socket_id: String,
        channel: String,
        reason: String,
        status: u16,
    },
    ApiEvent {
        channel: String,
        event: String,
        size: usize,
        sockets: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<String>,
    },
    ClientEvent {
        channel: String,
        event: String,
        size: usize,
        socket_id: String,
        sockets: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<String>,
    },
    Webhook {
        event: String,
        channel: String,
        outcome: String,
        status: Option<u16>,
    },
    Dropped {
        count: u64,
    },
}

/// A record: what happened, when (Unix ms), on which node, for which app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub time: u64,
    pub node: String,
    pub app: String,
    #[serde(flatten)]
    pub activity: Activity,
}

impl Record {
    /// The record as a console with `payloads` off sees it.
    pub fn without_payload(&self) -> Record {
        let mut r = self.clone();
        match &mut r.activity {
            Activity::ApiEvent { data, .. } | Activity::ClientEvent { data, .. } => *data = None,
            _ => {}
        }
        r
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Watch {
    consoles: usize,
    payloads: usize,
}

/// The node's side of the console.
pub struct Monitor {
    node: String,
    /// Whether any app is watched here or anywhere in the cluster (the hot path reads only this).
    any: AtomicBool,
    local: Mutex<HashMap<String, Watch>>,
    /// Apps watched on other nodes, and whether with payloads (from the cluster).
    remote: Mutex<HashMap<String, bool>>,
    tx: broadcast::Sender<Arc<Record>>,
    rate: Mutex<TokenBucket>,
    dropped: AtomicU64,
    /// Records for the consoles of other nodes, taken in batches by the hub.
    outgoing: Mutex<Vec<Record>>,
    /// A console here started watching an app (or asked for its payloads): the other nodes
    /// are told at once rather than at their next refresh.
    pub(crate) announce: tokio::sync::Notify,
    /// Another node announced a change: read the watch list now.
    pub(crate) reread: tokio::sync::Notify,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").field("node", &self.node).finish()
    }
}

/// Holds an app watched by one console; unwatches it when dropped.
pub struct Watching {
    monitor: Arc<Monitor>,
    app: String,
    payloads: bool,
    pub records: broadcast::Receiver<Arc<Record>>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut local = self.monitor.local.lock();
        if let Some(w) = local.get_mut(&self.app) {
            w.consoles -= 1;
            w.payloads -= usize::from(self.payloads);
            if w.consoles == 0 {
                local.remove(&self.app);
            }
        }
        drop(local);
        self.monitor.refresh_any();
    }
}

impl Monitor {
    pub fn new(node: &str) -> Arc<Self> {
        Arc::new(Monitor {
            node: node.to_owned(),
            any: AtomicBool::new(false),
            local: Mutex::new(HashMap::new()),
            remote: Mutex::new(HashMap::new()),
            tx: broadcast::channel(CONSOLE_BUFFER).0,
            rate: Mutex::new(TokenBucket::new(CONSOLE_RATE)),
            dropped: AtomicU64::new(0),
            outgoing: Mutex::new(Vec::new()),
            announce: tokio::sync::Notify::new(),
            reread: tokio::sync::Notify::new(),
        })
    }

    fn refresh_any(&self) {
        let any = !self.local.lock().is_empty() || !self.remote.lock().is_empty();
        self.any.store(any, Ordering::Release);
    }

    /// A console on this node starts watching `app`.
    pub fn watch(self: &Arc<Self>, app: &str, payloads: bool) -> Watching {
        let records = self.tx.subscribe();
        let news = {
            let mut local = self.local.lock();
            let w = local.entry(app.to_owned()).or_default();
            let news = w.consoles == 0 || (payloads && w.payloads == 0);
            w.consoles += 1;
            w.payloads += usize::from(payloads);
            news
        };
        self.any.store(true, Ordering::Release);
        if news {
            self.announce.notify_one();
        }
        Watching {
            monitor: self.clone(),
            app: app.to_owned(),
            payloads,
            records,
        }
    }

    /// Apps watched by consoles on this node, and whether any of them wants payloads.
    pub fn watched_here(&self) -> Vec<(String, bool)> {
        self.local
            .lock()
            .iter()
            .map(|(app, w)| (app.clone(), w.payloads > 0))
            .collect()
    }

    /// The apps watched on other nodes (refreshed from the cluster).
    pub fn set_watched_elsewhere(&self, apps: HashMap<String, bool>) {
        *self.remote.lock() = apps;
        self.refresh_any();
    }

    /// Whether anyone watches `app` (cheap when nobody watches anything), and whether a
    /// console wants its payloads.
    pub fn watching(&self, app: &str) -> Option<bool> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let local = self.local.lock().get(app).map(|w| w.payloads > 0);
        let remote = self.remote.lock().get(app).copied();
        match (local, remote) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(false) || b.unwrap_or(false)),
        }
    }

    /// Records what happened for `app`, if anyone watches it. `make` builds the activity,
    /// given whether payloads are wanted; it is called only when the record is kept.
    pub fn record(&self, app: &str, make: impl FnOnce(bool) -> Activity) {
        let Some(payloads) = self.watching(app) else {
            return;
        };
        if !self.rate.lock().try_take() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let record = Record {
            time: now_ms(),
            node: self.node.clone(),
            app: app.to_owned(),
            activity: make(payloads),
        };
        if self.remote.lock().contains_key(app) {
            let mut out = self.outgoing.lock();
            if out.len() < CONSOLE_BUFFER {
                out.push(record.clone());
            }
        }
        let _ = self.tx.send(Arc::new(record));
    }

    /// Records from other nodes, for the consoles here (this node's own, which come back on
    /// the same topic, were shown when they were made).
    pub fn inject(&self, records: Vec<Record>) {
        let local = self.local.lock();
        for r in records {
            if r.node == self.node {
                continue;
            }
            if local.contains_key(&r.app) || matches!(r.activity, Activity::Dropped { .. }) {
                let _ = self.tx.send(Arc::new(r));
            }
        }
    }

    /// Takes the records waiting for other nodes' consoles, and reports what the rate limit
    /// dropped since the last call.
    pub fn take_outgoing(&self) -> Vec<Record> {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let record = Record {
                time: now_ms(),
                node: self.node.clone(),
                app: String::new(),
                activity: Activity::Dropped { count: dropped },
            };
            let _ = self.tx.send(Arc::new(record.clone()));
            if !self.remote.lock().is_empty() {
                self.outgoing.lock().push(record);
            }
        }
        std::mem::take(&mut *self.outgoing.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(n: u32) -> Activity {
        Activity::ConnectionOpened {
            socket_id: format!("1.{n}"),
            origin: None,
        }
    }

    #[tokio::test]
    async fn records_only_watched_apps_and_unwatches_on_drop() {
        let m = Monitor::new("n1");
        m.record("a", |_| opened(0));
        let mut w = m.watch("a", false);
        m.record("b", |_| opened(1));
        m.record("a", |_| opened(2));
        let r = w.records.recv().await.expect("a record");
        assert_eq!((r.app.as_str(), &r.activity), ("a", &opened(2)));
        assert!(w.records.try_recv().is_err(), "nothing for app b");
        drop(w);
        assert_eq!(m.watching("a"), None);
    }

    #[test]
    fn payloads_only_while_asked_for() {
        let m = Monitor::new("n1");
        let _plain = m.watch("a", false);
        assert_eq!(m.watching("a"), Some(false));
        let with = m.watch("a", true);
        assert_eq!(m.watching("a"), Some(true));
        drop(with);
        assert_eq!(m.watching("a"), Some(false));
    }

    #[test]
    fn records_serialise_as_the_console_reads_them() {
        let r = Record {
            time: 1,
            node: "n1".into(),
            app: "a".into(),
            activity: Activity::ApiEvent {
                channel: "c".into(),
                event: "e".into(),
                size: 2,
                sockets: 3,
                data: Some("{}".into()),
            },
        };
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"time":1,"node":"n1","app":"a","type":"api_event","channel":"c","event":"e","size":2,"sockets":3,"data":"{}"})
        );
        assert!(serde_json::to_value(r.without_payload()).expect("json")["data"].is_null());
    }

    // The clock stands still (the bucket reads tokio's): no refill between records.
    #[tokio::test(start_paused = true)]
    async fn over_the_rate_records_are_counted_not_kept() {
        let m = Monitor::new("n1");
        let mut w = m.watch("a", false);
        for i in 0..(CONSOLE_RATE + 50) {
            m.record("a", |_| opened(i));
        }
        m.take_outgoing();
        let mut kept = 0;
        let mut dropped = 0;
        while let Ok(r) = w.records.try_recv() {
            match r.activity {
                Activity::Dropped { count } => dropped += count,
                _ => kept += 1,
            }
        }
        assert_eq!(kept, CONSOLE_RATE as u64);
        assert_eq!(dropped, 50);
    }

    #[tokio::test]
    async fn records_of_this_node_coming_back_are_not_shown_twice() {
        let m = Monitor::new("n1");
        let mut w = m.watch("a", false);
        let record = |node: &str| Record {
            time: 1,
            node: node.into(),
            app: "a".into(),
            activity: opened(1),
        };
        m.inject(vec![record("n1"), record("n2")]);
        assert_eq!(w.records.try_recv().expect("n2's record").node, "n2");
        assert!(
            w.records.try_recv().is_err(),
            "n1's own record came back and was shown"
        );
    }

    #[tokio::test]
    async fn a_new_watch_is_announced_once() {
        let m = Monitor::new("n1");
        let _a = m.watch("a", false);
        m.announce.notified().await;
        let _b = m.watch("a", false);
        let again =
            tokio::time::timeout(std::time::Duration::from_millis(50), m.announce.notified());
        assert!(
            again.await.is_err(),
            "a second console of a watched app is no news"
        );
        let _c = m.watch("a", true);
        m.announce.notified().await;
    }
}
