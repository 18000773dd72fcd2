//! Every way a request can fail, mapped once to what the client is told: the `pusher:error`
//! code and message, the channel-scoped `pusher:subscription_error` type and status, or the
//! HTTP status of an API answer. Codes are the official Pusher ones
//! (<https://pusher.com/docs/channels/library_auth_reference/pusher-websockets-protocol/#error-codes>).

use herald_protocol::{ChannelName, ErrorCode, ProtocolError};
use thiserror::Error;

use crate::cluster::{BusError, PublishError};

impl BusError {
    /// The cluster could not answer: 503, try again.
    pub fn http_status(&self) -> u16 {
        503
    }
}

impl PublishError {
    /// 503 when nothing was published (safe to retry), 504 when it may have been delivered.
    pub fn http_status(&self) -> u16 {
        match self {
            PublishError::NotPublished(_) => 503,
            PublishError::Unconfirmed(_) | PublishError::Partial { .. } => 504,
        }
    }
}

/// Why the open connections of a disabled app are closed (with 4003,
/// [`ErrorCode::AppDisabled`]); also what a new connection to it is told.
pub const APP_DISABLED: &str = "App disabled";
/// Why the open connections of a deleted app are closed (with 4001,
/// [`ErrorCode::AppDoesNotExist`]).
pub const APP_DELETED: &str = "App does not exist";

/// Why a WebSocket connection is refused at the handshake: closed with the official code
/// after a `pusher:error` with the same code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("App key {0} not in this cluster. Did you forget to specify the cluster?")]
    UnknownApp(String),
    #[error("{APP_DISABLED}")]
    AppDisabled,
    /// The key is not in memory and the apps store cannot be asked now.
    #[error("App store unavailable; retry shortly")]
    AppsStore,
    #[error("Unsupported protocol version {0}")]
    UnsupportedProtocol(u32),
    #[error("Invalid version string format {0:?}")]
    InvalidVersion(String),
    #[error("Origin not allowed")]
    Origin,
    #[error("Server is shutting down; reconnect to another node")]
    Draining,
    #[error("Server is over its connection capacity")]
    NodeFull,
    #[error("Too many new connections; retry shortly")]
    HandshakeRate,
    #[error("Application is over connection quota")]
    AppFull,
    #[error("Server cannot reach its cluster bus; retry shortly")]
    Bus,
}

impl Refusal {
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::UnknownApp(_) => ErrorCode::AppDoesNotExist,
            Refusal::AppDisabled => ErrorCode::AppDisabled,
            Refusal::UnsupportedProtocol(_) => ErrorCode::UnsupportedProtocol,
            Refusal::InvalidVersion(_) => ErrorCode::InvalidVersion,
            Refusal::Origin => ErrorCode::Unauthorized,
            Refusal::AppFull => ErrorCode::OverConnectionQuota,
            Refusal::Draining
            | Refusal::NodeFull
            | Refusal::HandshakeRate
            | Refusal::Bus
            | Refusal::AppsStore => ErrorCode::OverCapacity,
        }
    }

    /// The `reason` label of `herald_connections_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::UnknownApp(_) => "unknown_app",
            Refusal::AppDisabled => "app_disabled",
            Refusal::AppsStore => "apps_store",
            Refusal::UnsupportedProtocol(_) | Refusal::InvalidVersion(_) => "protocol",
            Refusal::Origin => "origin",
            Refusal::Draining => "draining",
            Refusal::NodeFull => "node_limit",
            Refusal::HandshakeRate => "handshake_rate",
            Refusal::AppFull => "app_limit",
            Refusal::Bus => "bus",
        }
    }
}

/// Why a subscription (or a sign-in) was refused.
#[derive(Debug, Clone, Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Bus(#[from] BusError),
}

impl SubscribeError {
    /// The `type` and `status` of the `pusher:subscription_error`, or `None` when the existing
    /// subscription keeps working and only a `pusher:error` is due.
    pub fn subscription_error(&self) -> Option<(&'static str, u16)> {
        Some(match self {
            SubscribeError::Protocol(
                ProtocolError::InvalidSignature { .. } | ProtocolError::AuthRequired(_),
            ) => ("AuthError", 401),
            SubscribeError::Protocol(ProtocolError::AlreadySubscribed(_)) => return None,
            SubscribeError::Protocol(
                ProtocolError::PresenceFull(..) | ProtocolError::UserInfoTooLarge(..),
            ) => ("LimitReached", 4100),
            SubscribeError::Protocol(_) => ("ValidationError", 400),
            SubscribeError::Forbidden(_) => ("AuthError", 403),
            SubscribeError::Bus(_) => ("ServerError", 503),
        })
    }

    /// The code of the `pusher:error` (`None`: the connection stays open).
    pub fn ws_code(&self) -> Option<u16> {
        match self {
            SubscribeError::Protocol(p) => p.ws_code().map(ErrorCode::as_u16),
            _ => None,
        }
    }
}

/// Why a channel of a trigger was not (or not surely) published.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TriggerFailure {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(
        "the app's cache channels hold {used} bytes and this event would take them over the \
         limit of {limit} (max_cache_bytes)"
    )]
    CacheFull { used: u64, limit: u64 },
    #[error("keeping the cache channel's event failed: {0}")]
    Cache(BusError),
}

/// A trigger that did not publish to all of its channels: which ones got the event, where it
/// stopped and why, and which were not tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerError {
    pub published: Vec<ChannelName>,
    pub failed: ChannelName,
    pub failure: TriggerFailure,
    pub not_attempted: Vec<ChannelName>,
}

impl TriggerError {
    /// 507 for a full cache, 503 when nothing was published anywhere (safe to retry), else
    /// 504: some subscribers may have the event, and retrying may deliver it twice.
    pub fn http_status(&self) -> u16 {
        let nothing_published = self.published.is_empty()
            && matches!(
                self.failure,
                TriggerFailure::Publish(PublishError::NotPublished(_))
                    | TriggerFailure::CacheFull { .. }
                    | TriggerFailure::Cache(_)
            );
        match &self.failure {
            TriggerFailure::CacheFull { .. } if self.published.is_empty() => 507,
            _ if nothing_published => 503,
            _ => 504,
        }
    }
}

impl std::fmt::Display for TriggerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |list: &[ChannelName]| {
            list.iter()
                .map(ChannelName::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.published.is_empty() {
            write!(f, "Not published to {}: {}", self.failed, self.failure)?;
        } else {
            write!(
                f,
                "Published to {}; not to {}: {}",
                names(&self.published),
                self.failed,
                self.failure
            )?;
        }
        if !self.not_attempted.is_empty() {
            write!(f, "; not attempted: {}", names(&self.not_attempted))?;
        }
        Ok(())
    }
}

impl std::error::Error for TriggerError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(n: &str) -> ChannelName {
        ChannelName::parse(n).expect("valid")
    }

    #[test]
    fn trigger_errors_say_what_happened() {
        let e = TriggerError {
            published: vec![ch("a"), ch("b")],
            failed: ch("c"),
            failure: PublishError::NotPublished("Redis is down".into()).into(),
            not_attempted: vec![ch("d")],
        };
        assert_eq!(
            e.to_string(),
            "Published to a, b; not to c: nothing was published: Redis is down; not attempted: d"
        );
        assert_eq!(e.http_status(), 504);
        let first = TriggerError {
            published: vec![],
            ..e.clone()
        };
        assert_eq!(first.http_status(), 503);
        let full = TriggerError {
            published: vec![],
            failure: TriggerFailure::CacheFull {
                used: 10,
                limit: 10,
            },
            ..e.clone()
        };
        assert_eq!(full.http_status(), 507);
        let partial = TriggerError {
            published: vec![],
            failure: PublishError::Partial {
                reached: 1,
                expected: 2,
                position: None,
            }
            .into(),
            ..e
        };
        assert_eq!(partial.http_status(), 504);
    }
}
