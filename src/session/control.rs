//! `ConnControl`: how anyone (the room, the node's shutdown, the session itself) asks one
//! connection to close with a given code. The first reason wins.
//!
//! Its token is a child of the node's shutdown token, so a connection's tasks watch one
//! token for both; a close caused by the shutdown reads as 1012 with the connection's
//! jittered `retry_ms` hint.

use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use crate::protocol::CloseCode;

/// Close request shared by a connection's reader, writer and its room.
#[derive(Debug, Default)]
pub struct ConnControl {
    token: CancellationToken,
    reason: Mutex<Option<CloseReason>>,
    /// The reconnect delay hinted to this client if the node shuts down.
    retry_hint_ms: u64,
}

/// Why a connection is being closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Close the WebSocket with this code and `reason[: detail]`.
    Code(CloseCode, String),
    /// The client closed, or the socket broke: nothing to send.
    Gone(&'static str),
}

impl CloseReason {
    /// Label for the `connections_closed` metric.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::Code(code, _) => code.reason(),
            CloseReason::Gone(why) => why,
        }
    }
}

impl ConnControl {
    /// A control closed by `shutdown` too (see the module docs).
    pub fn new(shutdown: &CancellationToken, retry_hint_ms: u64) -> ConnControl {
        ConnControl { token: shutdown.child_token(), reason: Mutex::new(None), retry_hint_ms }
    }

    /// Asks the connection to close with `code`; `detail` is appended to the reason text.
    /// Later requests are ignored.
    pub fn close(&self, code: CloseCode, detail: impl Into<String>) {
        let detail = detail.into();
        let text =
            if detail.is_empty() { code.reason().to_owned() } else { format!("{}: {detail}", code.reason()) };
        self.set(CloseReason::Code(code, text));
    }

    /// Records that the peer is gone (no close frame to send).
    pub fn gone(&self, why: &'static str) {
        self.set(CloseReason::Gone(why));
    }

    fn set(&self, reason: CloseReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            // A shutdown (the parent token) came first: it is the reason, whatever follows.
            *slot = Some(if self.token.is_cancelled() { self.shutdown_reason() } else { reason });
        }
        drop(slot);
        self.token.cancel();
    }

    fn shutdown_reason(&self) -> CloseReason {
        let code = CloseCode::ServiceRestart;
        CloseReason::Code(code, format!("{}: retry_ms={}", code.reason(), self.retry_hint_ms))
    }

    /// Completes once a close was requested.
    pub async fn closed(&self) {
        self.token.cancelled().await
    }

    /// The reason, once a close was requested (or the node is shutting down).
    pub fn reason(&self) -> Option<CloseReason> {
        let reason = self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone();
        reason.or_else(|| self.token.is_cancelled().then(|| self.shutdown_reason()))
    }
}
