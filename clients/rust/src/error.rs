//! [`ClientError`]: everything that can go wrong, from dialling to a rejected op batch.

use std::sync::Arc;
use std::time::Duration;

use gamerelay::protocol::{should_reconnect, ErrorCode};
use tokio_tungstenite::tungstenite;

/// An error of the client. Cheap to clone (the terminal error of a client is handed to every
/// caller that comes after it).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The configuration is unusable.
    #[error("invalid client configuration: {0}")]
    InvalidConfig(String),
    /// The WebSocket could not be opened, or failed during the handshake.
    #[error("could not connect: {0}")]
    Connect(#[source] Arc<tungstenite::Error>),
    /// `joined` did not arrive within the handshake timeout.
    #[error("no `joined` within the handshake timeout of {0:?}")]
    HandshakeTimeout(Duration),
    /// The server refused `hello` or `join`.
    #[error("join refused: {code}: {message}")]
    JoinRefused { code: ErrorCode, message: String },
    /// A resume was refused because the session is unknown or its grace expired. The client
    /// does not silently join as a new player: create a new client to join afresh.
    #[error("session expired: {message}")]
    SessionExpired { message: String },
    /// The connection is closed for good. `code` is the WebSocket close code the server sent,
    /// `None` when the connection ended without one (or the client closed it).
    #[error("connection closed (code {}): {reason}", code.map_or_else(|| "none".to_owned(), |c| c.to_string()))]
    Closed { code: Option<u16>, reason: String },
    /// The reconnect policy's attempts ran out.
    #[error("gave up after {attempts} reconnect attempts; last error: {last_error}")]
    ReconnectFailed { attempts: u32, last_error: String },
    /// The request needs a live connection and the client is reconnecting.
    #[error("not connected (reconnecting)")]
    NotConnected,
    /// The server broke the protocol in a way the client cannot recover from.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server refused an op batch; none of its ops were applied.
    #[error("op batch {cid} rejected: {code}: {message}")]
    Rejected { cid: u64, code: ErrorCode, message: String },
    /// The request was refused locally, before sending: an empty op batch, more ops than
    /// the server accepts in one batch, or a frame larger than the server's maximum.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// `wait_ack` for a cid never sent, or whose outcome is too old to be remembered.
    #[error("unknown cid {0}: never sent, or its outcome is no longer remembered")]
    UnknownCid(u64),
}

impl ClientError {
    /// The error code of a join refusal or op rejection.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::JoinRefused { code, .. } | ClientError::Rejected { code, .. } => Some(*code),
            ClientError::SessionExpired { .. } => Some(ErrorCode::SessionExpired),
            _ => None,
        }
    }

    /// Whether a reconnect attempt that failed with this error should be tried again.
    pub(crate) fn retry_reconnect(&self) -> bool {
        match self {
            ClientError::Connect(_) | ClientError::HandshakeTimeout(_) => true,
            ClientError::Closed { code, .. } => code.is_none_or(should_reconnect),
            ClientError::JoinRefused { code, .. } => code.is_retryable() || *code == ErrorCode::TooManyRooms,
            _ => false,
        }
    }

    /// The `(code, reason)` reported in [`Event::Closed`](crate::Event::Closed).
    pub(crate) fn close_info(&self) -> (Option<u16>, String) {
        match self {
            ClientError::Closed { code, reason } => (*code, reason.clone()),
            other => (None, other.to_string()),
        }
    }
}

/// Parses an error code string; a code this build does not know becomes
/// [`ErrorCode::Internal`] and the raw code is kept at the front of the message.
pub(crate) fn parse_code(code: &str, message: String) -> (ErrorCode, String) {
    match ErrorCode::parse(code) {
        Some(c) => (c, message),
        None => (ErrorCode::Internal, format!("[unknown code {code:?}] {message}")),
    }
}
