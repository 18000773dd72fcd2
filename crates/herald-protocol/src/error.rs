//! One error type for everything that can be wrong with input, mapped to the official codes.

use thiserror::Error;

/// Pusher WebSocket error codes (<https://pusher.com/docs/channels/library_auth_reference/pusher-websockets-protocol/#error-codes>). `None` on a `pusher:error` means a non-fatal,
/// per-request error: the connection stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    AppDoesNotExist = 4001,
    AppDisabled = 4003,
    OverConnectionQuota = 4004,
    PathNotFound = 4005,
    InvalidVersion = 4006,
    UnsupportedProtocol = 4007,
    Unauthorized = 4009,
    OverCapacity = 4100,
    ReconnectImmediately = 4200,
    PongNotReceived = 4201,
    ClientEventRateLimit = 4301,
    WatchlistLimit = 4302,
}

impl ErrorCode {
    pub fn as_u16(self) -> u16 {
        self as u16
    }
}

/// Everything a client or an API caller can get wrong.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("Invalid JSON: {0}")]
    InvalidJson(String),
    #[error("Invalid message format: {0}")]
    InvalidMessage(String),
    #[error("Unsupported event: {0}")]
    UnknownEvent(String),
    #[error("Invalid channel name: {0}")]
    InvalidChannelName(String),
    #[error("Invalid event name: {0}")]
    InvalidEventName(String),
    #[error("Invalid socket id: {0}")]
    InvalidSocketId(String),
    #[error("Auth info required to subscribe to {0}")]
    AuthRequired(String),
    #[error(
        "Invalid signature: Expected HMAC SHA256 hex digest of {expected_input}, but got {got}"
    )]
    InvalidSignature { expected_input: String, got: String },
    #[error("Invalid channel_data: {0}")]
    InvalidChannelData(String),
    #[error("Invalid user_data: {0}")]
    InvalidUserData(String),
    #[error("Existing subscription to channel {0}")]
    AlreadySubscribed(String),
    #[error("Client event rejected - {0}")]
    ClientEventRejected(String),
    #[error("Client event rate limit exceeded: at most {0} client events per second")]
    ClientEventRateLimited(u32),
    #[error("Presence channel {0} is full: at most {1} members")]
    PresenceFull(String, usize),
    #[error("Presence user_info is {0} bytes, over the limit of {1}")]
    UserInfoTooLarge(usize, usize),

    // HTTP API
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("Timestamp expired: Given timestamp ({given}) not within 600s of server time ({now})")]
    TimestampExpired { given: u64, now: u64 },
    #[error("Event data is {0} bytes, over the limit of {1} bytes")]
    PayloadTooLarge(usize, usize),
    #[error("Unknown app id {0}")]
    UnknownApp(String),
    #[error("App {0} is disabled")]
    AppDisabled(String),
}

impl ProtocolError {
    /// The code to put in a `pusher:error`, or `None` for a non-fatal per-request error.
    pub fn ws_code(&self) -> Option<ErrorCode> {
        match self {
            ProtocolError::ClientEventRateLimited(_) => Some(ErrorCode::ClientEventRateLimit),
            ProtocolError::InvalidSignature { .. } | ProtocolError::AuthRequired(_) => None,
            _ => None,
        }
    }

    /// The HTTP status for an API error (<https://pusher.com/docs/channels/library_auth_reference/rest-api/>).
    pub fn http_status(&self) -> u16 {
        match self {
            ProtocolError::Unauthenticated(_)
            | ProtocolError::TimestampExpired { .. }
            | ProtocolError::InvalidSignature { .. } => 401,
            ProtocolError::PayloadTooLarge(..) => 413,
            ProtocolError::UnknownApp(_) => 404,
            ProtocolError::AppDisabled(_) => 403,
            _ => 400,
        }
    }
}
