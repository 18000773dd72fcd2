//! Subscription counts: `pusher_internal:subscription_count` events and `subscription_count`
//! webhooks for apps with `subscription_count_events`, from cluster-wide counts, at most every
//! 5 s for channels above 100 subscribers.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_protocol::{server, ChannelName};
use tokio_util::sync::CancellationToken;

use crate::hub::{now_us, Hub};
use crate::webhook::WebhookEvent;

/// Above this many subscribers, subscription counts go out at most every [`COUNT_THROTTLE`].
pub const COUNT_THROTTLE_ABOVE: u64 = 100;
const COUNT_THROTTLE: Duration = Duration::from_secs(5);
const COUNT_TICK: Duration = Duration::from_millis(100);

type Key = (Arc<str>, ChannelName);

/// Channels whose subscription count changed, waiting to be announced.
#[derive(Debug, Default)]
pub(crate) struct CountNotices {
    /// channel → how many more rounds to check it (a cluster broker writes counts in batches,
    /// so a change is read once more after the first look).
    dirty: HashMap<Key, u8>,
    /// channel → (last count announced, when).
    sent: HashMap<Key, (u64, Instant)>,
}

impl CountNotices {
    /// Channels to look at now, throttled ones left for later.
    fn due(&mut self) -> Vec<Key> {
        let keys: Vec<Key> = self.dirty.keys().cloned().collect();
        let mut due = Vec::new();
        for key in keys {
            let throttled = self
                .sent
                .get(&key)
                .is_some_and(|(n, at)| *n > COUNT_THROTTLE_ABOVE && at.elapsed() < COUNT_THROTTLE);
            if throttled {
                continue;
            }
            if let Some(rounds) = self.dirty.get_mut(&key) {
                *rounds -= 1;
                if *rounds == 0 {
                    self.dirty.remove(&key);
                }
            }
            due.push(key);
        }
        due
    }

    /// Records `count` as announced; `false` when it is the count announced last.
    fn record(&mut self, key: Key, count: u64) -> bool {
        if self.sent.get(&key).is_some_and(|(n, _)| *n == count) {
            return false;
        }
        if count == 0 {
            self.sent.remove(&key);
        } else {
            self.sent.insert(key, (count, Instant::now()));
        }
        true
    }
}

impl Hub {
    /// Notes that a channel's subscription count changed (for `subscription_count` events).
    pub(crate) fn count_changed(&self, app_id: &str, channel: &ChannelName) {
        let wanted = self
            .app_by_id(app_id)
            .is_some_and(|a| a.subscription_count_events);
        if !wanted || !channel.kind().has_subscription_counts() {
            return;
        }
        self.counts
            .lock()
            .dirty
            .insert((Arc::from(app_id), channel.clone()), 2);
    }

    /// Announces changed counts cluster-wide; big channels at most every 5 s.
    async fn announce_counts(&self) {
        let due = self.counts.lock().due();
        for (app_id, channel) in due {
            let Ok(count) = self.cluster.subscription_count(&app_id, &channel).await else {
                continue;
            };
            if !self
                .counts
                .lock()
                .record((app_id.clone(), channel.clone()), count)
            {
                continue;
            }
            self.webhook(
                &app_id,
                WebhookEvent::SubscriptionCount {
                    channel: channel.to_string(),
                    subscription_count: count,
                },
            );
            if count > 0 {
                let frame = Bytes::from(server::subscription_count(channel.as_str(), count));
                if let Err(e) = self.publish(&app_id, &channel, frame, None, now_us()).await {
                    tracing::debug!(error = %e, "subscription count not announced");
                }
            }
        }
    }
}

pub(crate) async fn count_notifier(hub: Weak<Hub>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(COUNT_TICK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let Some(hub) = hub.upgrade() else { return };
        hub.announce_counts().await;
    }
}
