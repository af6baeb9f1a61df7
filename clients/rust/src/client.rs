//! [`Client`]: the handle an application holds.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gamerelay::protocol::{Doc, MemberInfo, Op};
use tokio::sync::{mpsc, oneshot};

use crate::config::ClientConfig;
use crate::connection::{self, AckResult, Command, Shared};
use crate::error::ClientError;
use crate::event::{Event, EventStream};

/// Where the client's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Joined and live.
    Connected,
    /// The connection was lost; reconnect attempt `attempt` is waiting or running.
    Reconnecting { attempt: u32 },
    /// Closed for good (left, closed, refused, or gave up).
    Closed,
}

/// A connected player in one room: the mirror of the room's state, op batches, messages and
/// events. See the [crate documentation](crate) for the architecture.
///
/// All methods take `&self`; share a client between tasks with an `Arc`. Dropping the client
/// closes the connection without leaving the room (the server keeps the player for its
/// reconnect grace, then removes it); call [`leave`](Client::leave) to leave at once.
pub struct Client {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    events: tokio::sync::Mutex<EventStream>,
    events_dropped: Arc<AtomicU64>,
    player: String,
    room: String,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("room", &self.room)
            .field("player", &self.player)
            .field("state", &self.connection_state())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects, sends `hello` and `join` back to back, waits for `joined`, and returns once
    /// the mirror holds the room's snapshot. A background task then owns the connection.
    ///
    /// This first connection is not retried: a failure is returned as is (connect failed,
    /// handshake timeout, join refused). Reconnecting applies to connections lost later.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let started = connection::connect(config).await?;
        let events_dropped = started.events.dropped_counter();
        Ok(Client {
            shared: started.shared,
            commands: started.commands,
            events: tokio::sync::Mutex::new(started.events),
            events_dropped,
            player: started.player,
            room: started.room,
        })
    }

    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| self.shared.terminal_error())?;
        rx.await.map_err(|_| self.shared.terminal_error())
    }

    async fn submit(
        &self,
        ops: Vec<Op>,
        waiter: Option<oneshot::Sender<AckResult>>,
    ) -> Result<u64, ClientError> {
        let permit =
            self.shared.op_slots.clone().acquire_owned().await.map_err(|_| self.shared.terminal_error())?;
        self.request(|reply| Command::SendOps { ops, permit, waiter, reply }).await?
    }

    /// Sends an op batch (applied atomically by the room) and returns its cid. Cids start
    /// after the highest cid the server applied for this player and only grow.
    ///
    /// Waits while [`ClientConfig::max_pending_ops`] batches are outstanding. The batch is
    /// kept until it is acknowledged or rejected and re-sent with the same cid after a
    /// reconnect, so it is applied at most once. Await the outcome with
    /// [`wait_ack`](Client::wait_ack), or use [`send_ops_tracked`](Client::send_ops_tracked).
    pub async fn send_ops(&self, ops: Vec<Op>) -> Result<u64, ClientError> {
        self.submit(ops, None).await
    }

    /// Like [`send_ops`](Client::send_ops), returning a ticket to await the outcome with.
    pub async fn send_ops_tracked(&self, ops: Vec<Op>) -> Result<OpTicket, ClientError> {
        let (tx, rx) = oneshot::channel();
        let cid = self.submit(ops, Some(tx)).await?;
        Ok(OpTicket { cid, rx, shared: self.shared.clone() })
    }

    /// Waits until the op batch `cid` is acknowledged and returns the seq of its delta (the
    /// mirror then includes it), or the rejection as [`ClientError::Rejected`].
    ///
    /// Outcomes are remembered for the latest 1024 batches; an older or unknown cid gives
    /// [`ClientError::UnknownCid`].
    pub async fn wait_ack(&self, cid: u64) -> Result<u64, ClientError> {
        self.request(|reply| Command::WaitAck { cid, reply }).await?
    }

    /// Sends an ephemeral message to the room (`to: None`) or to one player. Nothing is
    /// stored; fails with [`ClientError::NotConnected`] while reconnecting.
    pub async fn send_msg(&self, to: Option<String>, data: Doc) -> Result<(), ClientError> {
        self.request(|reply| Command::Msg { to, data, reply }).await?
    }

    /// Measures the round trip of a `ping` to the server. Fails with
    /// [`ClientError::NotConnected`] if the connection is (or gets) lost meanwhile.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        self.request(|reply| Command::Ping { reply }).await?
    }

    /// Leaves the room for good and closes the client. Returns once the server closed the
    /// connection (or after [`ClientConfig::leave_timeout`]). Outstanding op batches fail.
    /// While reconnecting, the client just stops; the server removes the player when its
    /// reconnect grace ends.
    pub async fn leave(&self) -> Result<(), ClientError> {
        match self.request(|reply| Command::Leave { reply }).await {
            Ok(result) => result,
            Err(_) => Ok(()), // already closed
        }
    }

    /// Closes the connection without leaving the room and stops the client.
    pub async fn close(&self) {
        let _ = self.request(|reply| Command::Close { reply }).await;
    }

    /// A copy of the mirrored state.
    pub fn state(&self) -> Doc {
        self.shared.mirror().state().clone()
    }

    /// Runs `f` on the mirrored state without copying it. Keep `f` short: the connection
    /// task waits for it before applying the next change. Do not call other methods of this
    /// client inside `f` (the mirror's lock is held).
    pub fn with_state<R>(&self, f: impl FnOnce(&Doc) -> R) -> R {
        f(self.shared.mirror().state())
    }

    /// A copy of the value at a `/`-separated path of the mirrored state, if any.
    pub fn get(&self, path: &str) -> Option<Doc> {
        self.with_state(|state| state.get(path.split('/')).cloned())
    }

    /// The seq of the last change the mirror applied.
    pub fn seq(&self) -> u64 {
        self.shared.mirror().seq()
    }

    /// The epoch of the room history the mirror follows.
    pub fn epoch(&self) -> u64 {
        self.shared.mirror().epoch()
    }

    /// The state hash of the mirror (lowercase hex SHA-256 of the canonical encoding);
    /// equal to the room's hash at the same seq.
    pub fn state_hash(&self) -> String {
        self.shared.mirror().state().state_hash()
    }

    /// The room's members that have not left, this player included.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.shared.mirror().members()
    }

    /// This client's player id.
    pub fn player_id(&self) -> &str {
        &self.player
    }

    /// The room id.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// Where the connection stands.
    pub fn connection_state(&self) -> ConnectionState {
        self.shared.connection_state()
    }

    /// Why the client closed, once it has.
    pub fn close_reason(&self) -> Option<ClientError> {
        (self.connection_state() == ConnectionState::Closed).then(|| self.shared.terminal_error())
    }

    /// The next event of the client's own event stream (shared by all callers of this
    /// method); `None` once the client is closed and every event was read.
    pub async fn next_event(&self) -> Option<Event> {
        self.events.lock().await.next().await
    }

    /// How many events [`next_event`](Client::next_event) skipped because they were not read
    /// in time (see [`event`](crate::event) for the policy).
    pub fn dropped_events(&self) -> u64 {
        self.events_dropped.load(Ordering::Relaxed)
    }

    /// A new, independent event stream, receiving the events from now on.
    pub fn subscribe(&self) -> EventStream {
        match self.shared.events.upgrade() {
            Some(sender) => EventStream::new(sender.subscribe()),
            None => EventStream::closed(),
        }
    }
}

/// The outcome of an op batch sent with [`Client::send_ops_tracked`], to await.
pub struct OpTicket {
    cid: u64,
    rx: oneshot::Receiver<AckResult>,
    shared: Arc<Shared>,
}

impl fmt::Debug for OpTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpTicket").field("cid", &self.cid).finish_non_exhaustive()
    }
}

impl OpTicket {
    /// The cid of the batch.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// Waits for the acknowledgement and returns the seq of the batch's delta (the mirror
    /// then includes it), or the rejection as [`ClientError::Rejected`].
    pub async fn acked(self) -> Result<u64, ClientError> {
        match self.rx.await {
            Ok(result) => result,
            Err(_) => Err(self.shared.terminal_error()),
        }
    }
}
