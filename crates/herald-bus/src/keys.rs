//! Redis key and topic names. Everything about one channel shares the hash tag
//! `{prefix:app:channel}`, so in Redis Cluster a channel's keys and its sharded topic live on one
//! shard and its Lua scripts run there.

use herald_protocol::ChannelName;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    fn tag(&self, app: &str, channel: &str) -> String {
        format!("{{{}:{}:{}}}", self.prefix, app, channel)
    }

    /// The channel's pub/sub topic.
    pub fn topic(&self, app: &str, channel: &ChannelName) -> String {
        format!("{}:msg", self.tag(app, channel.as_str()))
    }

    /// Hash node → this node's subscription count on the channel.
    pub fn subs(&self, app: &str, channel: &str) -> String {
        format!("{}:subs", self.tag(app, channel))
    }

    /// Hash user id → user_info JSON ("" for none).
    pub fn members(&self, app: &str, channel: &str) -> String {
        format!("{}:members", self.tag(app, channel))
    }

    /// Hash `node|socket` → user id: which socket holds which member, by node.
    pub fn sockets(&self, app: &str, channel: &str) -> String {
        format!("{}:sockets", self.tag(app, channel))
    }

    /// Hash user id → number of sockets holding the member.
    pub fn user_sockets(&self, app: &str, channel: &str) -> String {
        format!("{}:usersockets", self.tag(app, channel))
    }

    /// A history channel's stream (entries `offset-0` holding the publish time `t` and the
    /// frame `f`) and its meta (hash: `epoch`, `offset`), which outlives the entries.
    pub fn history(&self, app: &str, channel: &str) -> [String; 2] {
        let tag = self.tag(app, channel);
        [format!("{tag}:history"), format!("{tag}:history:meta")]
    }

    /// The four keys of a channel, in the order the scripts take them.
    pub fn channel_keys(&self, app: &str, channel: &str) -> Vec<String> {
        vec![
            self.members(app, channel),
            self.sockets(app, channel),
            self.user_sockets(app, channel),
            self.subs(app, channel),
        ]
    }

    /// Set of an app's channels that some node holds subscribers of.
    pub fn app_channels(&self, app: &str) -> String {
        format!("{{{}:{}}}:channels", self.prefix, app)
    }

    /// Hash node → open connections of an app on that node.
    pub fn app_connections(&self, app: &str) -> String {
        format!("{{{}:{}}}:connections", self.prefix, app)
    }

    /// Sorted set node → lease expiry (Unix ms).
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Set of `app\tchannel` (and `\tconnections\tapp`) where a node holds state.
    pub fn node_index(&self, node: &str) -> String {
        format!("{}:node:{}:index", self.prefix, node)
    }

    /// An app's cache channels (all under the app's hash tag, so one script bounds their
    /// total size): hash channel → last event frame, sorted set channel → expiry (Redis ms),
    /// and the total size in bytes.
    pub fn app_cache(&self, app: &str) -> [String; 3] {
        let tag = format!("{{{}:{}}}", self.prefix, app);
        [
            format!("{tag}:cache"),
            format!("{tag}:cache:expiry"),
            format!("{tag}:cache:bytes"),
        ]
    }

    /// Set when a node's state was removed as dead: if the node was alive after all, it finds
    /// this when it rejoins and announces its members again.
    pub fn reaped(&self, node: &str) -> String {
        format!("{}:reaped:{}", self.prefix, node)
    }

    /// The topic a node's subscriber connection listens to for as long as it lives: a publish
    /// to it reaching no one means the node's subscriber connection is gone (a hash tag of its
    /// own, so it is sharded on Redis Cluster).
    pub fn alive(&self, node: &str) -> String {
        format!("{{{}:alive:{}}}", self.prefix, node)
    }

    /// The topic console records travel on (one hash tag, so sharded on Redis Cluster).
    pub fn console_topic(&self) -> String {
        format!("{{{}:console}}", self.prefix)
    }

    /// The topic app-change notices travel on (JSON `{"origin", "ids"}`; one hash tag, so
    /// sharded on Redis Cluster). Every node listens to it for life.
    pub fn apps_topic(&self) -> String {
        format!("{{{}:apps}}", self.prefix)
    }

    /// Hash `app|node` → `expiry ms:1|0` (with payloads or not): which apps consoles watch.
    pub fn console_watched(&self) -> String {
        format!("{}:console:watched", self.prefix)
    }

    /// Hash node → its latest report (JSON, with the time it was made).
    pub fn node_reports(&self) -> String {
        format!("{}:node-reports", self.prefix)
    }

    /// Held by the node that probes the others' liveness topics.
    pub fn prober(&self) -> String {
        format!("{}:prober", self.prefix)
    }

    /// Lock taken by the node that cleans up after a dead one.
    pub fn reap_lock(&self, node: &str) -> String {
        format!("{}:reap:{}", self.prefix, node)
    }
}

/// A `node_index` entry for a channel.
pub fn index_channel(app: &str, channel: &str) -> String {
    format!("{app}\t{channel}")
}

/// A `node_index` entry for an app's connection count.
pub fn index_connections(app: &str) -> String {
    format!("\tconnections\t{app}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_keys_share_one_hash_tag() {
        let k = Keys::new("herald");
        let ch = ChannelName::parse("presence-a").expect("ok");
        let tag = "{herald:app:presence-a}";
        assert!(k.topic("app", &ch).starts_with(tag));
        for key in k.channel_keys("app", "presence-a") {
            assert!(key.starts_with(tag), "{key}");
        }
    }
}
