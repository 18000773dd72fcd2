//! Webhook events (<https://pusher.com/docs/channels/server_api/webhooks/>). The hub decides *that* an event happened, on exactly one
//! node per event; delivering it over HTTP is the node's business ([`WebhookSink`]).

use serde_json::{json, Value};

/// One webhook event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    ChannelOccupied {
        channel: String,
    },
    ChannelVacated {
        channel: String,
    },
    MemberAdded {
        channel: String,
        user_id: String,
    },
    MemberRemoved {
        channel: String,
        user_id: String,
    },
    ClientEvent {
        channel: String,
        event: String,
        data: String,
        socket_id: String,
        user_id: Option<String>,
    },
    CacheMiss {
        channel: String,
    },
    SubscriptionCount {
        channel: String,
        subscription_count: u64,
    },
}

/// Every event name, for configuration checks.
pub const EVENT_NAMES: [&str; 7] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
];

impl WebhookEvent {
    pub fn name(&self) -> &'static str {
        match self {
            WebhookEvent::ChannelOccupied { .. } => "channel_occupied",
            WebhookEvent::ChannelVacated { .. } => "channel_vacated",
            WebhookEvent::MemberAdded { .. } => "member_added",
            WebhookEvent::MemberRemoved { .. } => "member_removed",
            WebhookEvent::ClientEvent { .. } => "client_event",
            WebhookEvent::CacheMiss { .. } => "cache_miss",
            WebhookEvent::SubscriptionCount { .. } => "subscription_count",
        }
    }

    pub fn channel(&self) -> &str {
        match self {
            WebhookEvent::ChannelOccupied { channel }
            | WebhookEvent::ChannelVacated { channel }
            | WebhookEvent::MemberAdded { channel, .. }
            | WebhookEvent::MemberRemoved { channel, .. }
            | WebhookEvent::ClientEvent { channel, .. }
            | WebhookEvent::CacheMiss { channel }
            | WebhookEvent::SubscriptionCount { channel, .. } => channel,
        }
    }

    /// The event object in a webhook body.
    pub fn to_json(&self) -> Value {
        let name = self.name();
        match self {
            WebhookEvent::ChannelOccupied { channel }
            | WebhookEvent::ChannelVacated { channel }
            | WebhookEvent::CacheMiss { channel } => json!({ "name": name, "channel": channel }),
            WebhookEvent::MemberAdded { channel, user_id }
            | WebhookEvent::MemberRemoved { channel, user_id } => {
                json!({ "name": name, "channel": channel, "user_id": user_id })
            }
            WebhookEvent::ClientEvent {
                channel,
                event,
                data,
                socket_id,
                user_id,
            } => {
                let mut v = json!({ "name": name, "channel": channel, "event": event, "data": data, "socket_id": socket_id });
                if let Some(u) = user_id {
                    v["user_id"] = json!(u);
                }
                v
            }
            WebhookEvent::SubscriptionCount {
                channel,
                subscription_count,
            } => {
                json!({ "name": name, "channel": channel, "subscription_count": subscription_count })
            }
        }
    }
}

/// Where the hub hands webhook events. Must not block.
pub trait WebhookSink: Send + Sync {
    fn emit(&self, app_id: &str, event: WebhookEvent);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let e = WebhookEvent::ClientEvent {
            channel: "presence-a".into(),
            event: "client-x".into(),
            data: "{}".into(),
            socket_id: "1.2".into(),
            user_id: Some("7".into()),
        };
        assert_eq!(
            e.to_json(),
            json!({"name":"client_event","channel":"presence-a","event":"client-x","data":"{}","socket_id":"1.2","user_id":"7"})
        );
        assert_eq!(
            WebhookEvent::SubscriptionCount {
                channel: "c".into(),
                subscription_count: 3
            }
            .to_json(),
            json!({"name":"subscription_count","channel":"c","subscription_count":3})
        );
        assert!(EVENT_NAMES.contains(
            &WebhookEvent::CacheMiss {
                channel: "c".into()
            }
            .name()
        ));
    }
}
