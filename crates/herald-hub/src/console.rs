//! The hub's side of the debug console in a cluster: the records of apps watched on other
//! nodes go out in batches every 200 ms; every 2 s (and at once when a console here starts
//! watching an app, with a notice that makes the others read too) the node says which apps its
//! consoles watch and learns which the others watch, and reports itself for the list of nodes.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::cluster::NodeReport;
use crate::hub::Hub;
use crate::monitor::Record;

const BATCH_EVERY: Duration = Duration::from_millis(200);
const WATCH_EVERY: Duration = Duration::from_secs(2);

pub(crate) async fn console_loop(hub: Weak<Hub>, cancel: CancellationToken) {
    let Some(monitor) = hub.upgrade().map(|h| h.monitor.clone()) else {
        return;
    };
    let mut batch = tokio::time::interval(BATCH_EVERY);
    let mut watch = tokio::time::interval(WATCH_EVERY);
    loop {
        let (refresh, announce) = tokio::select! {
            _ = batch.tick() => (false, false),
            _ = watch.tick() => (true, false),
            _ = monitor.announce.notified() => (true, true),
            _ = monitor.reread.notified() => (true, false),
            _ = cancel.cancelled() => return,
        };
        let Some(hub) = hub.upgrade() else { return };
        let records = hub.monitor.take_outgoing();
        if !records.is_empty() {
            hub.broker.console_publish(encode(&records)).await;
        }
        if refresh {
            let elsewhere = hub.broker.console_watch(&hub.monitor.watched_here()).await;
            hub.monitor.set_watched_elsewhere(elsewhere);
            if announce {
                hub.broker
                    .console_publish(Bytes::from_static(WATCH_NOTICE))
                    .await;
            }
            hub.broker.report(&hub.node_report()).await;
        }
    }
}

/// Sent alone on the console topic when a node's consoles start watching something: the other
/// nodes read the watch list at once.
pub(crate) const WATCH_NOTICE: &[u8] = b"{\"watch\":\"changed\"}\n";

/// What arrived on the console topic: a watch notice, or records.
pub(crate) fn receive(monitor: &crate::monitor::Monitor, message: &[u8]) {
    if message == WATCH_NOTICE {
        monitor.reread.notify_one();
    } else {
        monitor.inject(decode(message));
    }
}

/// Records as JSON lines.
pub(crate) fn encode(records: &[Record]) -> Bytes {
    let mut out = Vec::new();
    for r in records {
        if serde_json::to_writer(&mut out, r).is_ok() {
            out.push(b'\n');
        }
    }
    Bytes::from(out)
}

/// JSON lines of records; lines that do not parse are skipped.
pub(crate) fn decode(lines: &[u8]) -> Vec<Record> {
    lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

impl Hub {
    /// What this node says of itself: readiness and connections, in all and per app.
    pub fn node_report(&self) -> NodeReport {
        let mut apps: HashMap<String, u64> = HashMap::new();
        for conn in self.connections() {
            *apps.entry(conn.app.id.clone()).or_insert(0) += 1;
        }
        NodeReport {
            id: self.node_id().to_owned(),
            ready: self.readiness().is_ok(),
            connections: apps.values().sum(),
            apps,
        }
    }

    /// Every node's report (this node's as it is now, the others' as they last reported).
    pub async fn node_reports(&self) -> Vec<NodeReport> {
        let mut nodes = self.broker.nodes().await;
        let me = self.node_report();
        nodes.retain(|n| n.id != me.id);
        nodes.push(me);
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::Activity;

    #[test]
    fn records_travel_as_json_lines() {
        let r = Record {
            time: 5,
            node: "n2".into(),
            app: "a".into(),
            activity: Activity::Subscribed {
                socket_id: "1.2".into(),
                channel: "c".into(),
            },
        };
        let bytes = encode(&[r.clone(), r.clone()]);
        assert_eq!(decode(&bytes), vec![r.clone(), r]);
        assert!(decode(b"not json\n{}\n").is_empty());
    }
}
