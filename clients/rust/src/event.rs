//! [`Event`]s the client reports, and [`EventStream`], a bounded receiver of them.
//!
//! # When the application does not keep up
//!
//! Events go through a bounded broadcast channel ([`ClientConfig::event_buffer`] slots).
//! The connection task never waits for readers: when a reader is a full buffer behind, the
//! *oldest* events are overwritten for it, and its next read skips them and adds their number
//! to [`EventStream::dropped`]. The mirror does not depend on events, so [`Client::state`]
//! stays correct whatever is dropped; a reader that lost events and needs an exact view should
//! re-read the state (compare [`Client::seq`]).
//!
//! [`ClientConfig::event_buffer`]: crate::ClientConfig::event_buffer
//! [`Client::state`]: crate::Client::state
//! [`Client::seq`]: crate::Client::seq

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gamerelay::protocol::{Delta, Doc, ErrorCode, PresenceStatus};
use tokio::sync::broadcast;

/// Something that happened to the room or to the connection, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A delta was applied to the mirror (the mirror already includes it). Own deltas too.
    Delta(Delta),
    /// The mirror was replaced by a snapshot because this client fell behind the room.
    Resync,
    /// A member's presence changed.
    Presence { player: String, status: PresenceStatus },
    /// An ephemeral message. `from` is `None` for messages from the server; `to` is `None`
    /// for messages to the whole room.
    Msg { from: Option<String>, to: Option<String>, data: Doc },
    /// An op batch of this client was refused; none of its ops were applied.
    Rejected { cid: u64, code: ErrorCode, message: String },
    /// An op batch of this client was applied as delta `seq`.
    Acked { cid: u64, seq: u64 },
    /// The server reported an error about a request that is not an op batch (e.g. a `msg`
    /// to an unknown player).
    ServerError { code: ErrorCode, message: String },
    /// The connection was lost; the client is about to reconnect. `code` is the close code
    /// the server sent, `None` if the connection ended without one (socket error, idle
    /// timeout, or a broken delta history detected by the client).
    Disconnected { code: Option<u16>, reason: String },
    /// Reconnect attempt `attempt` (1-based) starts after `delay`.
    Reconnecting { attempt: u32, delay: Duration },
    /// The session was resumed. `with_snapshot`: the mirror was replaced by a snapshot
    /// (otherwise the missed deltas follow as [`Event::Delta`]s).
    Resumed { with_snapshot: bool },
    /// The client is closed for good; this is the last event. `code` as in `Disconnected`
    /// (`None` also when the client itself gave up, e.g. on `session_expired`).
    Closed { code: Option<u16>, reason: String },
}

/// A receiver of [`Event`]s. Bounded: see the [module documentation](self) for what
/// happens when it is not read.
#[derive(Debug)]
pub struct EventStream {
    rx: broadcast::Receiver<Event>,
    dropped: Arc<AtomicU64>,
}

impl EventStream {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        EventStream { rx, dropped: Arc::new(AtomicU64::new(0)) }
    }

    /// A stream that is already finished (the client is closed).
    pub(crate) fn closed() -> Self {
        let (_, rx) = broadcast::channel(1);
        EventStream::new(rx)
    }

    /// The next event; `None` once the client is closed and every event was read.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            match self.rx.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(n)) => self.count_dropped(n),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is ready, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        loop {
            match self.rx.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.count_dropped(n),
                Err(_) => return None,
            }
        }
    }

    /// How many events this stream skipped because it fell a full buffer behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn dropped_counter(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }

    fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        tracing::warn!(dropped = n, "event reader fell behind; oldest events dropped");
    }
}
