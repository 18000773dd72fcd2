//! What the hub does with what the bus brings: remote deliveries, occupancy changes, members
//! a dead node held or got back, console records of other nodes, and restored subscriptions.

use bytes::Bytes;
use herald_protocol::presence::Member;
use herald_protocol::{ChannelName, ErrorCode};

use crate::cluster::{BusMessage, BusPayload, BusSink};
use crate::hub::{Hub, TERMINATED};
use crate::metrics;
use crate::monitor::Activity;
use crate::webhook::WebhookEvent;

impl BusSink for Hub {
    fn deliver(&self, msg: BusMessage) {
        if msg.origin == self.origin {
            return; // delivered locally when it was published
        }
        match &msg.payload {
            BusPayload::Frame(frame) => {
                let n = self.deliver_local(
                    &msg.app_id,
                    &msg.channel,
                    frame,
                    msg.exclude,
                    msg.published_at_us,
                    msg.position.as_ref(),
                );
                metrics::sent_events(n as u64);
                // Herald's own notices (member_added, counts) are not shown as events.
                if !frame.starts_with(br#"{"event":"pusher"#) {
                    self.monitor.record(&msg.app_id, |payloads| {
                        delivered(&msg.channel, frame, n, payloads)
                    });
                }
            }
            BusPayload::TerminateUser => {
                self.close_subscribers(
                    &msg.app_id,
                    &msg.channel,
                    ErrorCode::ReconnectImmediately,
                    TERMINATED,
                );
            }
        }
    }

    fn channel_occupancy(&self, app_id: &str, channel: &ChannelName, occupied: bool) {
        let channel = channel.to_string();
        let event = if occupied {
            WebhookEvent::ChannelOccupied { channel }
        } else {
            WebhookEvent::ChannelVacated { channel }
        };
        self.webhook(app_id, event);
    }

    fn members_departed(&self, app_id: &str, channel: &ChannelName, user_ids: Vec<String>) {
        let Some(hub) = self.me() else { return };
        let Some(app) = self.app_by_id(app_id) else {
            return;
        };
        let channel = channel.clone();
        hub.clone().spawn(async move {
            for user_id in user_ids {
                hub.announce_departure(&app, &channel, &user_id).await;
            }
        });
    }

    fn members_returned(&self, app_id: &str, channel: &ChannelName, members: Vec<Member>) {
        let Some(hub) = self.me() else { return };
        let Some(app) = self.app_by_id(app_id) else {
            return;
        };
        let channel = channel.clone();
        hub.clone().spawn(async move {
            for member in members {
                hub.announce_arrival(&app, &channel, &member, None).await;
            }
        });
    }

    fn console(&self, records: Bytes) {
        crate::console::receive(&self.monitor, &records);
    }

    fn subscriptions_restored(&self) {
        if let Some(hub) = self.me() {
            hub.clone().spawn(async move { hub.catch_up_all().await });
        }
        // App notices sent while the bus was down are lost: the node reads its apps again.
        if let Some(listener) = self.apps_listener() {
            listener.resync();
        }
    }

    fn apps_changed(&self, origin: &str, ids: Vec<String>) {
        if origin == &*self.origin {
            return; // applied here when it was written
        }
        if let Some(listener) = self.apps_listener() {
            listener.apps_changed(ids);
        }
    }
}

/// A console record of an event another node published, as delivered here: an API event, or a
/// client event (named `client-…`).
fn delivered(channel: &ChannelName, frame: &Bytes, sockets: usize, payloads: bool) -> Activity {
    #[derive(serde::Deserialize)]
    struct Event {
        event: String,
        #[serde(default)]
        data: String,
    }
    let e = serde_json::from_slice::<Event>(frame).unwrap_or(Event {
        event: String::new(),
        data: String::new(),
    });
    let data = payloads.then(|| e.data.clone());
    if e.event.starts_with("client-") {
        Activity::ClientEvent {
            channel: channel.to_string(),
            event: e.event,
            size: e.data.len(),
            socket_id: String::new(),
            sockets,
            data,
        }
    } else {
        Activity::ApiEvent {
            channel: channel.to_string(),
            event: e.event,
            size: e.data.len(),
            sockets,
            data,
        }
    }
}
