//! A connection's subscriptions: a vector searched in order.
//!
//! Most connections hold one to three channels for hours, and every connection holds this set,
//! so it is as small as a vector (one entry: one 32-byte allocation; a hash map's smallest
//! table is several times that). A connection's channels are bounded by the app's
//! `max_channels_per_connection`, which keeps the linear search short.

use herald_protocol::ChannelName;

use super::Subscription;

#[derive(Default)]
pub(super) struct Subscriptions(Vec<(ChannelName, Subscription)>);

impl Subscriptions {
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn contains_key(&self, channel: &ChannelName) -> bool {
        self.get(channel).is_some()
    }

    pub(super) fn get(&self, channel: &ChannelName) -> Option<&Subscription> {
        self.0.iter().find(|(c, _)| c == channel).map(|(_, s)| s)
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &ChannelName> {
        self.0.iter().map(|(c, _)| c)
    }

    /// Adds or replaces `channel`'s subscription.
    pub(super) fn insert(&mut self, channel: ChannelName, sub: Subscription) {
        if let Some(entry) = self.0.iter_mut().find(|(c, _)| *c == channel) {
            entry.1 = sub;
            return;
        }
        if self.0.capacity() == 0 {
            self.0.reserve_exact(1);
        }
        self.0.push((channel, sub));
    }

    pub(super) fn remove(&mut self, channel: &ChannelName) -> Option<Subscription> {
        let i = self.0.iter().position(|(c, _)| c == channel)?;
        let (_, sub) = self.0.swap_remove(i);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(sub)
    }

    pub(super) fn take_all(&mut self) -> Vec<(ChannelName, Subscription)> {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(user: Option<&str>) -> Subscription {
        Subscription {
            presence_user: user.map(str::to_owned),
        }
    }

    #[test]
    fn behaves_as_a_map() {
        let name = |s: &str| ChannelName::parse(s).expect("valid");
        let mut set = Subscriptions::default();
        assert_eq!(set.len(), 0);
        set.insert(name("a"), sub(None));
        set.insert(name("presence-b"), sub(Some("u1")));
        set.insert(name("c"), sub(None));
        assert_eq!(set.len(), 3);
        // Insert replaces.
        set.insert(name("presence-b"), sub(Some("u2")));
        assert_eq!(set.len(), 3);
        assert_eq!(
            set.get(&name("presence-b"))
                .and_then(|s| s.presence_user.as_deref()),
            Some("u2")
        );
        assert!(set.contains_key(&name("a")));
        assert!(!set.contains_key(&name("d")));
        assert!(set.remove(&name("a")).is_some());
        assert!(set.remove(&name("a")).is_none());
        let mut keys: Vec<_> = set.keys().map(|c| c.as_str().to_owned()).collect();
        keys.sort();
        assert_eq!(keys, ["c", "presence-b"]);
        assert_eq!(set.take_all().len(), 2);
        assert_eq!(set.len(), 0);
    }
}
