//! Channel names, their kinds (by prefix, most specific first: `private-encrypted-` before
//! `private-`) and validation.

use std::fmt;
use std::sync::Arc;

use crate::ProtocolError;

/// Longest channel name accepted (what the official server SDKs enforce).
pub const MAX_CHANNEL_NAME_LEN: usize = 200;
/// The reserved prefix of per-user channels.
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";
/// The prefix of the internal channels that carry a user's online state to its watchers.
pub const WATCHLIST_PREFIX: &str = "#watchlist-";

/// Whether a channel name is one of Herald's internal channels (`#server-to-user-…`,
/// `#watchlist-…`): never listed by the API, never the subject of a webhook.
pub fn is_internal(name: &str) -> bool {
    name.starts_with('#')
}

/// What a channel's prefix makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    Public,
    Private,
    /// `private-encrypted-`: authorised like private; data is end-to-end encrypted.
    Encrypted,
    Presence,
    /// `#server-to-user-{id}`: reserved for the connection signed in as `{id}`.
    ServerToUser,
    /// `#watchlist-{id}`: internal, never named by clients or the API; carries the online and
    /// offline changes of user `{id}` to the connections watching it.
    Watchlist,
}

impl ChannelKind {
    /// Whether the channel's subscriber count is announced to its subscribers
    /// (`pusher_internal:subscription_count`); presence channels count members instead.
    pub fn has_subscription_counts(self) -> bool {
        matches!(
            self,
            ChannelKind::Public | ChannelKind::Private | ChannelKind::Encrypted
        )
    }

    /// Whether subscribing needs a signature.
    pub fn needs_auth(self) -> bool {
        matches!(
            self,
            ChannelKind::Private | ChannelKind::Encrypted | ChannelKind::Presence
        )
    }
}

/// A validated channel name. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates `name`: length 1–200, characters `A-Z a-z 0-9 _ - = @ , . ;`, and a leading `#`
    /// only for `#server-to-user-{id}`.
    pub fn parse(name: &str) -> Result<Self, ProtocolError> {
        let invalid = |why: &str| {
            let shown: String = name.chars().take(MAX_CHANNEL_NAME_LEN).collect();
            ProtocolError::InvalidChannelName(format!("{shown:?} {why}"))
        };
        if name.is_empty() {
            return Err(invalid("is empty"));
        }
        if name.len() > MAX_CHANNEL_NAME_LEN {
            return Err(invalid(&format!(
                "is {} characters long, over the limit of {MAX_CHANNEL_NAME_LEN}",
                name.len()
            )));
        }
        let rest = match name.strip_prefix(SERVER_TO_USER_PREFIX) {
            Some(user) if !user.is_empty() => user,
            Some(_) => return Err(invalid("names no user")),
            None if name.starts_with('#') => {
                return Err(invalid(
                    "starts with '#', which is reserved for #server-to-user- channels",
                ))
            }
            None => name,
        };
        if !rest.bytes().all(is_channel_byte) {
            return Err(invalid("has characters outside A-Z a-z 0-9 _ - = @ , . ;"));
        }
        Ok(ChannelName(Arc::from(name)))
    }

    /// The per-user channel of `user_id`.
    pub fn server_to_user(user_id: &str) -> Result<Self, ProtocolError> {
        Self::parse(&format!("{SERVER_TO_USER_PREFIX}{user_id}"))
    }

    /// The internal channel on which `user_id`'s online state changes travel. Not accepted by
    /// [`ChannelName::parse`], so neither clients nor the API can name it.
    pub fn watchlist(user_id: &str) -> Result<Self, ProtocolError> {
        let user_channel = Self::server_to_user(user_id)?;
        let id = user_channel.server_to_user_id().unwrap_or_default();
        Ok(ChannelName(Arc::from(format!("{WATCHLIST_PREFIX}{id}"))))
    }

    /// Rebuilds a name this crate produced (from a bus message or a Redis index), accepting the
    /// internal `#watchlist-` channels as well as everything [`ChannelName::parse`] accepts.
    pub fn parse_internal(name: &str) -> Result<Self, ProtocolError> {
        match name.strip_prefix(WATCHLIST_PREFIX) {
            Some(user) => Self::watchlist(user),
            None => Self::parse(name),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn kind(&self) -> ChannelKind {
        let n = &*self.0;
        if n.starts_with("private-encrypted-") {
            ChannelKind::Encrypted
        } else if n.starts_with("private-") {
            ChannelKind::Private
        } else if n.starts_with("presence-") {
            ChannelKind::Presence
        } else if n.starts_with(SERVER_TO_USER_PREFIX) {
            ChannelKind::ServerToUser
        } else if n.starts_with(WATCHLIST_PREFIX) {
            ChannelKind::Watchlist
        } else {
            ChannelKind::Public
        }
    }

    /// Cache channels keep their last API event: `cache-`, `private-cache-`,
    /// `private-encrypted-cache-`, `presence-cache-`.
    pub fn is_cache(&self) -> bool {
        let n = &*self.0;
        n.starts_with("cache-")
            || n.starts_with("private-cache-")
            || n.starts_with("private-encrypted-cache-")
            || n.starts_with("presence-cache-")
    }

    /// The user a `#server-to-user-` channel belongs to.
    pub fn server_to_user_id(&self) -> Option<&str> {
        self.0.strip_prefix(SERVER_TO_USER_PREFIX)
    }
}

fn is_channel_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'=' | b'@' | b',' | b'.' | b';')
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_prefix_order() {
        let cases = [
            ("private-encrypted-cache-a", ChannelKind::Encrypted, true),
            ("private-encrypted-a", ChannelKind::Encrypted, false),
            ("private-cache-a", ChannelKind::Private, true),
            ("private-a", ChannelKind::Private, false),
            ("presence-cache-a", ChannelKind::Presence, true),
            ("presence-a", ChannelKind::Presence, false),
            ("cache-a", ChannelKind::Public, true),
            ("#server-to-user-42", ChannelKind::ServerToUser, false),
            ("my-channel", ChannelKind::Public, false),
            ("privatex", ChannelKind::Public, false),
            ("cachex", ChannelKind::Public, false),
        ];
        for (name, kind, cache) in cases {
            let c = ChannelName::parse(name).expect(name);
            assert_eq!(c.kind(), kind, "{name}");
            assert_eq!(c.is_cache(), cache, "{name}");
        }
    }

    #[test]
    fn validates_charset_and_length() {
        assert!(ChannelName::parse("a-Z_0=@,.;").is_ok());
        assert!(ChannelName::parse(&"a".repeat(200)).is_ok());
        for bad in [
            "",
            "a b",
            "a/b",
            "é",
            "#other",
            "#server-to-user-",
            "a\"b",
            "a\0",
        ] {
            assert!(ChannelName::parse(bad).is_err(), "{bad:?}");
        }
        let long = ChannelName::parse(&"a".repeat(201)).unwrap_err();
        assert!(long.to_string().contains("over the limit of 200"), "{long}");
    }

    #[test]
    fn watchlist_channels_are_internal() {
        let w = ChannelName::watchlist("42").expect("valid");
        assert_eq!(
            (w.as_str(), w.kind()),
            ("#watchlist-42", ChannelKind::Watchlist)
        );
        assert!(ChannelName::parse("#watchlist-42").is_err());
        assert_eq!(ChannelName::parse_internal("#watchlist-42").expect("ok"), w);
        assert!(ChannelName::watchlist("a b").is_err());
    }

    #[test]
    fn server_to_user_names_the_user() {
        let c = ChannelName::server_to_user("42").expect("valid");
        assert_eq!(c.as_str(), "#server-to-user-42");
        assert_eq!(c.server_to_user_id(), Some("42"));
        assert_eq!(
            ChannelName::parse("x").expect("valid").server_to_user_id(),
            None
        );
    }
}
