//! Apps: credentials, per-app feature flags and limits. Plain data handed down by the node.

use std::time::Duration;

use herald_protocol::ProtocolError;

use serde::{Deserialize, Serialize};

/// Default of [`App::max_cache_bytes`]: 8 MiB.
pub const DEFAULT_MAX_CACHE_BYTES: u64 = 8 << 20;

/// One app's settings: what an `[[apps]]` table of the configuration holds (the same names),
/// with the official defaults for everything left out. The one place those defaults live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct App {
    pub id: String,
    pub key: String,
    pub secret: String,
    /// A disabled app refuses new connections (4003) and API calls (403), and its open
    /// connections are closed (4003); its settings stay, so it can be enabled again.
    pub enabled: bool,
    /// Whether clients may send `client-` events on private and presence channels.
    pub client_events: bool,
    /// Most open connections for this app across the cluster; 0 = no limit.
    pub max_connections: u64,
    /// Origins allowed to open WebSockets (`Origin` header); empty = any.
    pub allowed_origins: Vec<String>,
    /// Most distinct users on one presence channel.
    pub max_presence_members: usize,
    /// Largest presence `user_info` / sign-in `user_info`, in bytes of JSON.
    pub max_user_info_bytes: usize,
    /// Client events one connection may send per second.
    pub client_event_rate: u32,
    /// Largest event `data`, from the API or a client.
    pub max_event_data_bytes: usize,
    /// Most channels one connection may be subscribed to (watched users included).
    pub max_channels_per_connection: usize,
    /// Seconds a connection may stay neither signed in nor on a private or presence channel
    /// before it is closed with 4009; unset = no such rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorized_connections_timeout: Option<u64>,
    pub watchlist_events: bool,
    pub subscription_count_events: bool,
    /// Seconds a cache channel keeps its last event.
    pub cache_ttl: u64,
    /// Most bytes of cached events the app's cache channels hold together, cluster-wide.
    pub max_cache_bytes: u64,
    /// HTTP API requests accepted per second (429 beyond); 0 = no limit.
    pub api_requests_per_second: u32,
    /// Where this app's webhooks go.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
    /// Channels that keep their recent events, so a returning client can resume
    /// (`[[apps.history]]`); the first rule whose prefix matches a channel applies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryRule>,
    /// Log the metadata (never the payload) of every frame of this app's connections (set
    /// from `[log] debug_app`).
    #[serde(skip)]
    pub debug_frames: bool,
    /// The secret this app had before its last rotation, still accepted for signatures until
    /// its deadline so that app servers can switch over (set by the node, never a setting).
    #[serde(skip)]
    pub previous_secret: Option<PreviousSecret>,
}

/// A rotated-out secret and the Unix time (seconds) until which it still verifies signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    pub secret: String,
    pub until_secs: u64,
}

/// Never shows the secret (apps are logged with `{:?}` in places).
impl std::fmt::Debug for PreviousSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreviousSecret")
            .field("until_secs", &self.until_secs)
            .finish_non_exhaustive()
    }
}

/// One webhook target of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://` or `https://` URL that receives POSTed webhook batches.
    pub url: String,
    /// Event names to send (`channel_occupied`, `channel_vacated`, `member_added`,
    /// `member_removed`, `client_event`, `cache_miss`, `subscription_count`); empty = all.
    #[serde(default)]
    pub event_types: Vec<String>,
}

/// Which channels keep history, and how much (`[[apps.history]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    /// Channels whose name starts with this (`private-`/`presence-` included as written); ""
    /// for every channel.
    pub prefix: String,
    /// Events kept per channel.
    pub size: usize,
    /// Seconds an event is kept.
    pub ttl: u64,
}

/// Most events a history rule may keep per channel.
pub const MAX_HISTORY_SIZE: usize = 10_000;
/// Longest time a history rule may keep an event (a day).
pub const MAX_HISTORY_TTL: u64 = 86_400;

impl HistoryRule {
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl)
    }

    /// Why the rule cannot be used, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.size == 0 || self.size > MAX_HISTORY_SIZE {
            return Err(format!("size must be 1 to {MAX_HISTORY_SIZE}"));
        }
        if self.ttl == 0 || self.ttl > MAX_HISTORY_TTL {
            return Err(format!("ttl must be 1 to {MAX_HISTORY_TTL} seconds"));
        }
        Ok(())
    }
}

impl Default for App {
    fn default() -> Self {
        App {
            id: String::new(),
            key: String::new(),
            secret: String::new(),
            enabled: true,
            client_events: true,
            max_connections: 0,
            allowed_origins: Vec::new(),
            max_presence_members: 100,
            max_user_info_bytes: 1024,
            client_event_rate: 10,
            max_event_data_bytes: herald_protocol::MAX_EVENT_DATA_BYTES,
            max_channels_per_connection: 1000,
            authorized_connections_timeout: None,
            watchlist_events: false,
            subscription_count_events: false,
            cache_ttl: 30 * 60,
            max_cache_bytes: DEFAULT_MAX_CACHE_BYTES,
            api_requests_per_second: 0,
            webhooks: Vec::new(),
            history: Vec::new(),
            debug_frames: false,
            previous_secret: None,
        }
    }
}

impl App {
    /// An app with the official defaults for everything but its credentials.
    pub fn new(id: impl Into<String>, key: impl Into<String>, secret: impl Into<String>) -> Self {
        App {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            ..App::default()
        }
    }

    /// How long a cache channel keeps its last event.
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs(self.cache_ttl)
    }

    /// The "authorized connections" deadline, if the app has the rule.
    pub fn authorized_connections(&self) -> Option<Duration> {
        self.authorized_connections_timeout.map(Duration::from_secs)
    }

    /// The history rule of a channel, if it keeps history (internal channels never do).
    pub fn history_for(&self, channel: &herald_protocol::ChannelName) -> Option<&HistoryRule> {
        if self.history.is_empty() || herald_protocol::channel::is_internal(channel.as_str()) {
            return None;
        }
        self.history
            .iter()
            .find(|r| channel.as_str().starts_with(&r.prefix))
    }

    /// The secrets that verify signatures at `now_secs`: the current one, then the previous
    /// one while its grace lasts.
    pub fn secrets_at(&self, now_secs: u64) -> impl Iterator<Item = &str> {
        let previous = self
            .previous_secret
            .as_ref()
            .filter(|p| now_secs <= p.until_secs)
            .map(|p| p.secret.as_str());
        std::iter::once(self.secret.as_str()).chain(previous)
    }

    /// Verifies a channel or user `auth` field against `input` with the current secret, or
    /// the previous one during its grace. The error is the current secret's.
    pub fn verify_auth(&self, input: &str, auth: &str) -> Result<(), ProtocolError> {
        let verify =
            |secret: &str| herald_protocol::signature::verify_auth(&self.key, secret, input, auth);
        let current = verify(&self.secret);
        if current.is_err()
            && self
                .secrets_at(crate::clock::now_secs())
                .skip(1)
                .any(|s| verify(s).is_ok())
        {
            return Ok(());
        }
        current
    }

    pub fn has_webhooks(&self) -> bool {
        !self.webhooks.is_empty()
    }

    /// Whether `origin` may connect. Entries may be `*`, an exact origin, or `*.example.com`.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        if self.allowed_origins.is_empty() || self.allowed_origins.iter().any(|o| o == "*") {
            return true;
        }
        let Some(origin) = origin else { return false };
        let host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
        self.allowed_origins.iter().any(|allowed| {
            if let Some(suffix) = allowed.strip_prefix("*.") {
                host.ends_with(&format!(".{suffix}")) || host == suffix
            } else {
                allowed == origin || allowed == host
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let mut app = App::new("1", "k", "s");
        assert!(app.origin_allowed(None));
        app.allowed_origins = vec!["https://example.com".into(), "*.example.org".into()];
        assert!(app.origin_allowed(Some("https://example.com")));
        assert!(app.origin_allowed(Some("https://a.example.org")));
        assert!(!app.origin_allowed(Some("https://evil.com")));
        assert!(!app.origin_allowed(Some("https://example.com.evil.com")));
        assert!(!app.origin_allowed(None));
    }

    #[test]
    fn previous_secret_verifies_during_its_grace_only() {
        let mut app = App::new("1", "k", "new");
        assert_eq!(app.secrets_at(100).collect::<Vec<_>>(), ["new"]);
        app.previous_secret = Some(PreviousSecret {
            secret: "old".into(),
            until_secs: 100,
        });
        assert_eq!(app.secrets_at(100).collect::<Vec<_>>(), ["new", "old"]);
        assert_eq!(app.secrets_at(101).collect::<Vec<_>>(), ["new"]);
        assert!(!format!("{app:?}").contains("\"old\""));
        let input = "1.1:private-a";
        let signed = |secret: &str| {
            format!(
                "k:{}",
                herald_protocol::signature::sign(secret, input.as_bytes())
            )
        };
        assert!(app.verify_auth(input, &signed("new")).is_ok());
        app.previous_secret = Some(PreviousSecret {
            secret: "old".into(),
            until_secs: crate::clock::now_secs() + 60,
        });
        assert!(app.verify_auth(input, &signed("old")).is_ok());
        assert!(app.verify_auth(input, &signed("other")).is_err());
        app.previous_secret = Some(PreviousSecret {
            secret: "old".into(),
            until_secs: crate::clock::now_secs() - 1,
        });
        assert!(app.verify_auth(input, &signed("old")).is_err());
    }
}
