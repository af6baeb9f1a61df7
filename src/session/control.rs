//! `ConnControl`: how anyone (the room, the node's shutdown, the session itself) asks one
//! connection to close with a given code. The first reason wins.

use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use crate::protocol::CloseCode;

/// Close request shared by a connection's reader, writer and its room.
#[derive(Debug, Default)]
pub struct ConnControl {
    token: CancellationToken,
    reason: Mutex<Option<CloseReason>>,
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
    pub fn new() -> ConnControl {
        ConnControl::default()
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
            *slot = Some(reason);
        }
        drop(slot);
        self.token.cancel();
    }

    /// Completes once a close was requested.
    pub async fn closed(&self) {
        self.token.cancelled().await
    }

    /// Whether a close was requested.
    pub fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The reason, once a close was requested.
    pub fn reason(&self) -> Option<CloseReason> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
