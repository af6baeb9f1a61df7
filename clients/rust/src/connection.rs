//! The connection task: the one tokio task per client that owns the WebSocket.
//!
//! It reads frames and writes frames in one `select!` loop, applies room messages to the
//! mirror, tracks op batches until they are acknowledged, reports events, detects dead
//! connections, and reconnects and resumes. The [`Client`](crate::Client) handle talks to
//! it through a bounded command channel; answers come back on oneshot channels.
//!
//! Writes never block reads: frames to send wait in an [`Outbox`] that the loop drains
//! whenever the socket accepts more, while it keeps reading. When the outbox is long the loop
//! stops taking commands, which pushes back on the handle.

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, StreamExt};
use gamerelay::protocol::{
    decode_server, encode, should_reconnect, ClientMsg, Doc, Join, MemberInfo, Op, RoomListing, ServerMsg,
    Snapshot, PROTOCOL_VERSION,
};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

use crate::config::{retry_hint, ClientConfig, CLIENT_NAME};
use crate::error::{parse_code, ClientError};
use crate::event::{Event, EventStream};
use crate::mirror::{Effect, Mirror};
use crate::ConnectionState;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The outcome of an op batch: the seq of its delta, or why it failed.
pub(crate) type AckResult = Result<u64, ClientError>;

/// Capacity of the command channel from the handle to the task.
pub(crate) const COMMAND_BUFFER: usize = 64;
/// The task stops taking commands while this many frames wait to be written.
const OUTBOX_HIGH_WATER: usize = 256;
/// How many op batch outcomes are remembered for a late `wait_ack`.
const OUTCOME_MEMORY: usize = 1024;
/// How long a closing handshake may take before the socket is simply dropped.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

/// State shared by the handle and the task. Locks are never held across an await.
pub(crate) struct Shared {
    mirror: RwLock<Mirror>,
    conn: Mutex<ConnectionState>,
    terminal: Mutex<Option<ClientError>>,
    /// One permit per op batch that may be outstanding (sent and not yet acked or rejected).
    pub(crate) op_slots: Arc<Semaphore>,
    /// To open new event streams while the task lives, without keeping the channel open.
    pub(crate) events: broadcast::WeakSender<Event>,
}

impl Shared {
    pub(crate) fn mirror(&self) -> RwLockReadGuard<'_, Mirror> {
        self.mirror.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn mirror_mut(&self) -> RwLockWriteGuard<'_, Mirror> {
        self.mirror.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn connection_state(&self) -> ConnectionState {
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_connection_state(&self, state: ConnectionState) {
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }

    /// The error every request gets once the task has ended.
    pub(crate) fn terminal_error(&self) -> ClientError {
        self.terminal.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_else(|| {
            ClientError::Closed { code: None, reason: "the connection task ended".to_owned() }
        })
    }
}

/// A request from the handle to the task.
pub(crate) enum Command {
    SendOps {
        ops: Vec<Op>,
        permit: OwnedSemaphorePermit,
        waiter: Option<oneshot::Sender<AckResult>>,
        reply: oneshot::Sender<Result<u64, ClientError>>,
    },
    WaitAck {
        cid: u64,
        reply: oneshot::Sender<AckResult>,
    },
    Msg {
        to: Option<String>,
        data: Doc,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Ping {
        reply: oneshot::Sender<Result<Duration, ClientError>>,
    },
    Leave {
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Close {
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
}

/// The server's limits from `welcome`.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_ops: u64,
    max_frame: u64,
}

impl Default for Limits {
    /// Until a `welcome` says otherwise, nothing is refused locally.
    fn default() -> Self {
        Limits { max_ops: u64::MAX, max_frame: u64::MAX }
    }
}

/// The fields of a `joined`.
struct Joined {
    room: String,
    player: String,
    session: String,
    resumed: bool,
    cid: u64,
    members: Vec<MemberInfo>,
    snapshot: Option<Snapshot>,
}

/// A completed handshake: the socket, positioned right after `joined`.
struct Handshake {
    ws: Ws,
    limits: Limits,
    joined: Joined,
}

fn hello_frame(cfg: &ClientConfig) -> Bytes {
    encode(&ClientMsg::Hello { v: PROTOCOL_VERSION, client: Some(cfg.client_name.clone()) })
}

/// Opens the socket, sends `hello` and `join` back to back, and reads until `joined`.
async fn handshake(
    url: String,
    hello: Bytes,
    join: Bytes,
    timeout: Duration,
) -> Result<Handshake, ClientError> {
    match tokio::time::timeout(timeout, handshake_inner(url, hello, join)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::HandshakeTimeout(timeout)),
    }
}

/// An error of the socket while opening or during a short exchange.
fn transport(e: tungstenite::Error) -> ClientError {
    ClientError::Connect(Arc::new(e))
}

/// Opens `url` and sends `hello` and a request after it, pipelined.
async fn open_with(url: &str, hello: Bytes, request: Bytes) -> Result<Ws, ClientError> {
    let (mut ws, _response) = connect_async(url).await.map_err(transport)?;
    ws.feed(Message::Binary(hello)).await.map_err(transport)?;
    ws.feed(Message::Binary(request)).await.map_err(transport)?;
    ws.flush().await.map_err(transport)?;
    Ok(ws)
}

/// The next binary frame of a short exchange; a close is an error, and so is the end of the
/// connection (`Closed` with no code and the reason `ended`).
async fn next_binary(ws: &mut Ws, ended: &str) -> Result<Bytes, ClientError> {
    loop {
        match ws.next().await {
            None => return Err(ClientError::Closed { code: None, reason: ended.to_owned() }),
            Some(Err(e)) => return Err(transport(e)),
            Some(Ok(Message::Binary(bytes))) => return Ok(bytes),
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = close_parts(frame);
                return Err(ClientError::Closed { code, reason });
            }
            Some(Ok(_)) => {}
        }
    }
}

async fn handshake_inner(url: String, hello: Bytes, join: Bytes) -> Result<Handshake, ClientError> {
    let mut ws = open_with(&url, hello, join).await?;
    let mut limits = Limits::default();
    loop {
        let bytes = next_binary(&mut ws, "connection ended during the handshake").await?;
        match decode_server(&bytes) {
            Ok(ServerMsg::Welcome { v, max_ops, max_frame, .. }) => {
                if v != PROTOCOL_VERSION {
                    return Err(ClientError::Protocol(format!(
                        "server speaks protocol v{v}, this client v{PROTOCOL_VERSION}"
                    )));
                }
                limits = Limits { max_ops, max_frame };
            }
            Ok(ServerMsg::Joined { room, player, session, resumed, cid, members, snapshot, .. }) => {
                let joined = Joined { room, player, session, resumed, cid, members, snapshot };
                return Ok(Handshake { ws, limits, joined });
            }
            Ok(ServerMsg::Error { code, message, .. }) => {
                let (code, message) = parse_code(&code, message);
                return Err(match code {
                    gamerelay::protocol::ErrorCode::SessionExpired => ClientError::SessionExpired { message },
                    code => ClientError::JoinRefused { code, message },
                });
            }
            Ok(other) => tracing::debug!(?other, "ignoring a message before `joined`"),
            Err(e) => tracing::warn!(error = %e, "ignoring an undecodable frame before `joined`"),
        }
    }
}

/// Lists the listed rooms of `room_type` (`list_rooms`) on a connection of its own:
/// `hello`, `list_rooms`, the `rooms` answer, close. Bounded by `timeout`.
pub async fn list_rooms(
    url: &str,
    room_type: &str,
    timeout: Duration,
) -> Result<Vec<RoomListing>, ClientError> {
    match tokio::time::timeout(timeout, list_rooms_inner(url, room_type)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::HandshakeTimeout(timeout)),
    }
}

async fn list_rooms_inner(url: &str, room_type: &str) -> Result<Vec<RoomListing>, ClientError> {
    const ID: u64 = 1;
    let hello = encode(&ClientMsg::Hello { v: PROTOCOL_VERSION, client: Some(CLIENT_NAME.to_owned()) });
    let list = encode(&ClientMsg::ListRooms { id: ID, room_type: room_type.to_owned() });
    let mut ws = open_with(url, hello, list).await?;
    loop {
        let bytes = next_binary(&mut ws, "connection ended before `rooms`").await?;
        match decode_server(&bytes) {
            Ok(ServerMsg::Rooms { id: ID, rooms, .. }) => {
                let _ = ws.close(None).await;
                return Ok(rooms);
            }
            Ok(ServerMsg::Error { code, message, .. }) => {
                let (code, message) = parse_code(&code, message);
                let _ = ws.close(None).await;
                return Err(ClientError::JoinRefused { code, message });
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring an undecodable frame before `rooms`"),
        }
    }
}

fn close_parts(frame: Option<CloseFrame>) -> (Option<u16>, String) {
    match frame {
        Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
        None => (None, String::new()),
    }
}

/// What [`connect`] hands to the [`Client`](crate::Client).
pub(crate) struct Started {
    pub(crate) shared: Arc<Shared>,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) events: EventStream,
    pub(crate) player: String,
    pub(crate) room: String,
}

/// Joins afresh, initialises the mirror, and spawns the connection task.
pub(crate) async fn connect(mut cfg: ClientConfig) -> Result<Started, ClientError> {
    cfg.validate()?;
    let url = cfg.connect_url();
    let join = encode(&ClientMsg::Join(Join {
        room: cfg.room.clone(),
        room_type: cfg.room_type.clone(),
        token: cfg.token.clone(),
        session: None,
        epoch: None,
        seq: None,
        attempt: None,
        join_or_create: cfg.join_or_create,
    }));
    let hs = handshake(url.clone(), hello_frame(&cfg), join, cfg.handshake_timeout).await?;
    let j = hs.joined;
    // From now on the session lives in the room joined (the server's choice with
    // join_or_create): reconnects resume there.
    cfg.room = j.room.clone();
    cfg.join_or_create = false;
    let Some(snapshot) = j.snapshot else {
        return Err(ClientError::Protocol("`joined` of a new session carries no snapshot".to_owned()));
    };
    let (mirror, mismatch) = Mirror::new(j.room.clone(), j.player.clone(), snapshot, &j.members);
    if let Some(mismatch) = mismatch {
        warn_effect(&mismatch);
    }
    tracing::info!(room = %j.room, player = %j.player, seq = mirror.seq(), "joined");

    let (events_tx, events_rx) = broadcast::channel(cfg.event_buffer);
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_BUFFER);
    let shared = Arc::new(Shared {
        mirror: RwLock::new(mirror),
        conn: Mutex::new(ConnectionState::Connected),
        terminal: Mutex::new(None),
        op_slots: Arc::new(Semaphore::new(cfg.max_pending_ops)),
        events: events_tx.downgrade(),
    });
    let task = Task {
        url,
        shared: shared.clone(),
        commands: commands_rx,
        events: events_tx,
        player: j.player.clone(),
        session: j.session,
        resume_attempts: 0,
        next_cid: j.cid.saturating_add(1),
        limits: hs.limits,
        pending: VecDeque::new(),
        outcomes: VecDeque::new(),
        pings: HashMap::new(),
        next_ping_id: 1,
        closers: Vec::new(),
        cfg,
    };
    tokio::spawn(task.run(hs.ws));
    Ok(Started {
        shared,
        commands: commands_tx,
        events: EventStream::new(events_rx),
        player: j.player,
        room: j.room,
    })
}

fn warn_effect(effect: &Effect) {
    if let Effect::HashMismatch { seq, expected, actual } = effect {
        tracing::warn!(seq, %expected, %actual, "snapshot hash does not match its state");
    }
}

/// An op batch sent (or to be sent) and not yet acknowledged or rejected.
struct PendingOps {
    cid: u64,
    /// The encoded `ops` frame, re-sent as is (same cid) after a reconnect or resync.
    frame: Bytes,
    waiters: Vec<oneshot::Sender<AckResult>>,
    _permit: OwnedSemaphorePermit,
}

struct PingWait {
    sent: Instant,
    /// `None` for the keepalive probes the task sends itself.
    reply: Option<oneshot::Sender<Result<Duration, ClientError>>>,
}

/// Why a connection ended.
enum End {
    /// Reconnect and resume; wait `delay` (instead of the backoff) before the first attempt.
    Reconnect { code: Option<u16>, reason: String, delay: Option<Duration> },
    /// Stop for good.
    Stop(ClientError),
}

/// How to take leave of a socket whose connection ended.
enum Farewell {
    /// Send a close frame with this reason (code 1000), then flush.
    Close(&'static str),
    /// The server closed: just flush the close reply.
    Flush,
    /// The socket is broken: drop it.
    Abort,
}

/// What woke the connection loop.
enum Wake {
    Frame(Option<Result<Message, tungstenite::Error>>),
    Written(Result<(), tungstenite::Error>),
    Command(Option<Command>),
    Timer,
}

/// What a command asks of the loop beyond what `on_command` did.
enum CmdFlow {
    Continue,
    Leave(oneshot::Sender<Result<(), ClientError>>),
    Close(oneshot::Sender<Result<(), ClientError>>),
}

/// Frames waiting to be written, drained without ever blocking the reads.
#[derive(Default)]
struct Outbox {
    queue: VecDeque<Message>,
    unflushed: bool,
}

impl Outbox {
    fn push(&mut self, frame: Bytes) {
        self.queue.push_back(Message::Binary(frame));
    }

    fn len(&self) -> usize {
        self.queue.len()
    }

    fn wants_write(&self) -> bool {
        !self.queue.is_empty() || self.unflushed
    }

    /// Moves queued frames into the sink and flushes it. Cancel-safe: a frame leaves the
    /// queue only when the sink has taken it.
    fn poll_write<S>(&mut self, sink: &mut S, cx: &mut Context<'_>) -> Poll<Result<(), tungstenite::Error>>
    where
        S: Sink<Message, Error = tungstenite::Error> + Unpin,
    {
        while !self.queue.is_empty() {
            ready!(sink.poll_ready_unpin(cx))?;
            if let Some(frame) = self.queue.pop_front() {
                sink.start_send_unpin(frame)?;
                self.unflushed = true;
            }
        }
        if self.unflushed {
            ready!(sink.poll_flush_unpin(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

struct Task {
    cfg: ClientConfig,
    url: String,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<Event>,
    player: String,
    session: String,
    /// Resume attempts of this session so far (`join.attempt` of the next is one more):
    /// the room refuses an attempt that is not its newest, so a late one never replaces
    /// the connection that came after it.
    resume_attempts: u64,
    /// The cid of the next op batch: starts after `joined.cid`, only grows.
    next_cid: u64,
    limits: Limits,
    /// Outstanding op batches, in cid order.
    pending: VecDeque<PendingOps>,
    /// The latest outcomes, for `wait_ack` calls that come after the fact.
    outcomes: VecDeque<(u64, AckResult)>,
    pings: HashMap<u64, PingWait>,
    next_ping_id: u64,
    /// `leave`/`close` callers, answered once the client is closed.
    closers: Vec<oneshot::Sender<Result<(), ClientError>>>,
}

impl Task {
    async fn run(mut self, ws: Ws) {
        let mut ws = ws;
        loop {
            self.shared.set_connection_state(ConnectionState::Connected);
            let (code, reason, delay) = match self.connected(ws).await {
                End::Reconnect { code, reason, delay } => (code, reason, delay),
                End::Stop(err) => return self.terminate(err),
            };
            tracing::info!(?code, %reason, "connection lost; reconnecting");
            self.fail_pings(&ClientError::NotConnected);
            self.emit(Event::Disconnected { code, reason: reason.clone() });
            match self.reconnect(delay, reason).await {
                Ok(next) => ws = next,
                Err(err) => return self.terminate(err),
            }
        }
    }

    fn emit(&self, event: Event) {
        // Fails only when no stream is open, which is fine: nobody is listening.
        let _ = self.events.send(event);
    }

    /// Runs one live connection until it ends.
    async fn connected(&mut self, ws: Ws) -> End {
        let (mut sink, mut stream) = ws.split();
        let mut out = Outbox::default();
        // Everything not yet acknowledged goes again, in cid order, with its original cid:
        // the server applies each cid at most once and acks the ones it already applied.
        for p in &self.pending {
            out.push(p.frame.clone());
        }
        let idle = self.cfg.idle_timeout;
        let mut last_rx = Instant::now();
        let mut probing = false;
        let mut leave_deadline: Option<Instant> = None;
        let timer = tokio::time::sleep_until(last_rx + idle / 2);
        tokio::pin!(timer);

        let (end, farewell) = loop {
            let wake = tokio::select! {
                frame = stream.next() => Wake::Frame(frame),
                res = poll_fn(|cx| out.poll_write(&mut sink, cx)), if out.wants_write() => Wake::Written(res),
                cmd = self.commands.recv(), if leave_deadline.is_none() && out.len() < OUTBOX_HIGH_WATER => Wake::Command(cmd),
                () = &mut timer => Wake::Timer,
            };
            match wake {
                Wake::Frame(Some(Ok(frame))) => {
                    last_rx = Instant::now();
                    probing = false;
                    match frame {
                        Message::Binary(bytes) => {
                            if let Some(end) = self.on_frame(&bytes, &mut out) {
                                break (end, Farewell::Close("resync"));
                            }
                        }
                        Message::Close(frame) => {
                            let (code, reason) = close_parts(frame);
                            let end = if leave_deadline.is_some() {
                                End::Stop(ClientError::Closed { code, reason })
                            } else {
                                classify_close(code, reason)
                            };
                            break (end, Farewell::Flush);
                        }
                        Message::Text(_) => tracing::warn!("ignoring a text frame"),
                        // Pings are answered by tungstenite on the next read or flush.
                        _ => {}
                    }
                }
                Wake::Frame(Some(Err(e))) | Wake::Written(Err(e)) => {
                    let reason = format!("socket error: {e}");
                    break (self.lost(leave_deadline, reason), Farewell::Abort);
                }
                Wake::Frame(None) => {
                    let reason = "connection ended without a close frame".to_owned();
                    break (self.lost(leave_deadline, reason), Farewell::Abort);
                }
                Wake::Written(Ok(())) => {}
                Wake::Command(None) => {
                    let end = End::Stop(ClientError::Closed {
                        code: None,
                        reason: "the client was dropped".to_owned(),
                    });
                    break (end, Farewell::Close("client dropped"));
                }
                Wake::Command(Some(cmd)) => match self.on_command(cmd, Some(&mut out)) {
                    CmdFlow::Continue => {}
                    CmdFlow::Leave(reply) => {
                        self.closers.push(reply);
                        let deadline = Instant::now() + self.cfg.leave_timeout;
                        leave_deadline = Some(deadline);
                        if deadline < timer.deadline() {
                            timer.as_mut().reset(deadline);
                        }
                    }
                    CmdFlow::Close(reply) => {
                        self.closers.push(reply);
                        break (End::Stop(closed_by_client()), Farewell::Close("client closed"));
                    }
                },
                Wake::Timer => {
                    let now = Instant::now();
                    if leave_deadline.is_some_and(|d| now >= d) {
                        let end = End::Stop(ClientError::Closed {
                            code: None,
                            reason: "left (the server did not close the connection in time)".to_owned(),
                        });
                        break (end, Farewell::Close("left"));
                    }
                    let (probe_at, dead_at) = (last_rx + idle / 2, last_rx + idle);
                    if now >= dead_at {
                        let end = End::Reconnect {
                            code: None,
                            reason: format!("nothing received for {idle:?}"),
                            delay: None,
                        };
                        break (end, Farewell::Close("idle timeout"));
                    }
                    if now >= probe_at && !probing {
                        probing = true;
                        self.queue_ping(None, &mut out);
                    }
                    let mut next = if probing { dead_at } else { probe_at };
                    if let Some(d) = leave_deadline {
                        next = next.min(d);
                    }
                    timer.as_mut().reset(next);
                }
            }
        };

        let goodbye = async {
            match farewell {
                Farewell::Abort => {}
                Farewell::Flush => {
                    let _ = sink.close().await;
                }
                Farewell::Close(why) => {
                    let _ = poll_fn(|cx| out.poll_write(&mut sink, cx)).await;
                    let frame = CloseFrame { code: WsCloseCode::Normal, reason: why.into() };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    let _ = sink.close().await;
                }
            }
        };
        let _ = tokio::time::timeout(FAREWELL_TIMEOUT, goodbye).await;
        end
    }

    /// The connection broke: reconnect, unless the client was leaving anyway.
    fn lost(&self, leave_deadline: Option<Instant>, reason: String) -> End {
        if leave_deadline.is_some() {
            End::Stop(ClientError::Closed { code: None, reason })
        } else {
            End::Reconnect { code: None, reason, delay: None }
        }
    }

    /// Handles one binary frame. Returns how the connection ends, if it must.
    fn on_frame(&mut self, bytes: &[u8], out: &mut Outbox) -> Option<End> {
        let msg = match decode_server(bytes) {
            Ok(msg) => msg,
            Err(e) => {
                // If it was a delta, the next one reveals the gap and repairs it.
                tracing::warn!(error = %e, "ignoring an undecodable frame");
                return None;
            }
        };
        let mut effects = Vec::new();
        let result = self.shared.mirror_mut().handle(msg, &mut effects);
        for effect in effects {
            self.on_effect(effect, out);
        }
        let err = result.err()?;
        if !self.shared.mirror().is_stale() {
            // A resync later in the same batch already repaired the history.
            tracing::warn!(error = %err, "history broke and was repaired by a resync");
            return None;
        }
        tracing::warn!(error = %err, "mirror out of step; reconnecting for a snapshot");
        Some(End::Reconnect { code: None, reason: err.to_string(), delay: Some(Duration::ZERO) })
    }

    fn on_effect(&mut self, effect: Effect, out: &mut Outbox) {
        match effect {
            Effect::Delta(delta) => {
                let own = match (delta.by.as_deref(), delta.cid) {
                    (Some(by), Some(cid)) if by == self.player => Some((cid, delta.seq)),
                    _ => None,
                };
                self.emit(Event::Delta(delta));
                // For the sender, its own delta is the ack.
                if let Some((cid, seq)) = own {
                    if self.resolve(cid, Ok(seq)) {
                        self.emit(Event::Acked { cid, seq });
                    }
                }
            }
            Effect::Resync { cid } => {
                tracing::info!(applied_cid = cid, pending = self.pending.len(), "resync");
                self.emit(Event::Resync);
                // Acks and rejects may have been dropped while this client lagged. Re-sending
                // the outstanding batches with their cids gets an answer for each: `ack` with
                // the original seq for applied ones, a fresh evaluation for the others.
                for p in &self.pending {
                    out.push(p.frame.clone());
                }
            }
            Effect::HashMismatch { .. } => warn_effect(&effect),
            Effect::Presence { player, status } => self.emit(Event::Presence { player, status }),
            Effect::Other(msg) => self.on_message(msg),
        }
    }

    fn on_message(&mut self, msg: ServerMsg) {
        match msg {
            ServerMsg::Ack { cid, seq } => {
                if self.resolve(cid, Ok(seq)) {
                    self.emit(Event::Acked { cid, seq });
                }
            }
            ServerMsg::Reject { cid, code, message } => {
                let (code, message) = parse_code(&code, message);
                let err = ClientError::Rejected { cid, code, message: message.clone() };
                if self.resolve(cid, Err(err)) {
                    self.emit(Event::Rejected { cid, code, message });
                } else {
                    tracing::debug!(cid, %code, "reject for a batch no longer outstanding");
                }
            }
            ServerMsg::Msg { from, to, data, .. } => self.emit(Event::Msg { from, to, data }),
            ServerMsg::Pong { id, .. } => {
                if let Some(wait) = self.pings.remove(&id) {
                    if let Some(reply) = wait.reply {
                        let _ = reply.send(Ok(wait.sent.elapsed()));
                    }
                }
            }
            ServerMsg::Error { code, message, .. } => {
                let (code, message) = parse_code(&code, message);
                tracing::warn!(%code, %message, "server error");
                self.emit(Event::ServerError { code, message });
            }
            other => tracing::warn!(?other, "ignoring an unexpected message"),
        }
    }

    /// Settles an outstanding op batch. Returns false if `cid` was not outstanding.
    fn resolve(&mut self, cid: u64, result: AckResult) -> bool {
        let Some(at) = self.pending.iter().position(|p| p.cid == cid) else {
            return false;
        };
        let Some(done) = self.pending.remove(at) else {
            return false;
        };
        for waiter in done.waiters {
            let _ = waiter.send(result.clone());
        }
        if self.outcomes.len() == OUTCOME_MEMORY {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back((cid, result));
        true // the batch's permit is released here
    }

    /// Handles a command. `out` is `None` while disconnected.
    fn on_command(&mut self, cmd: Command, out: Option<&mut Outbox>) -> CmdFlow {
        match cmd {
            Command::SendOps { ops, permit, waiter, reply } => {
                match self.ops_frame(ops) {
                    Ok((cid, frame)) => {
                        if let Some(out) = out {
                            out.push(frame.clone());
                        } // else: sent after the resume, with everything outstanding
                        self.pending.push_back(PendingOps {
                            cid,
                            frame,
                            waiters: waiter.into_iter().collect(),
                            _permit: permit,
                        });
                        let _ = reply.send(Ok(cid));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
                CmdFlow::Continue
            }
            Command::WaitAck { cid, reply } => {
                if let Some(p) = self.pending.iter_mut().find(|p| p.cid == cid) {
                    p.waiters.push(reply);
                } else if let Some((_, result)) = self.outcomes.iter().rev().find(|(c, _)| *c == cid) {
                    let _ = reply.send(result.clone());
                } else {
                    let _ = reply.send(Err(ClientError::UnknownCid(cid)));
                }
                CmdFlow::Continue
            }
            Command::Msg { to, data, reply } => {
                let result = match out {
                    None => Err(ClientError::NotConnected),
                    Some(out) => {
                        let frame = encode(&ClientMsg::Msg { to, data });
                        self.check_size(&frame).map(|()| out.push(frame))
                    }
                };
                let _ = reply.send(result);
                CmdFlow::Continue
            }
            Command::Ping { reply } => {
                match out {
                    None => {
                        let _ = reply.send(Err(ClientError::NotConnected));
                    }
                    Some(out) => self.queue_ping(Some(reply), out),
                }
                CmdFlow::Continue
            }
            Command::Leave { reply } => {
                if let Some(out) = out {
                    out.push(encode(&ClientMsg::Leave));
                }
                CmdFlow::Leave(reply)
            }
            Command::Close { reply } => CmdFlow::Close(reply),
        }
    }

    fn queue_ping(
        &mut self,
        reply: Option<oneshot::Sender<Result<Duration, ClientError>>>,
        out: &mut Outbox,
    ) {
        let id = self.next_ping_id;
        self.next_ping_id += 1;
        self.pings.insert(id, PingWait { sent: Instant::now(), reply });
        out.push(encode(&ClientMsg::Ping { id }));
    }

    /// Validates an op batch against the server's limits and assigns it the next cid.
    fn ops_frame(&mut self, ops: Vec<Op>) -> Result<(u64, Bytes), ClientError> {
        if ops.is_empty() {
            return Err(ClientError::InvalidRequest("an op batch needs at least one op".to_owned()));
        }
        if ops.len() as u64 > self.limits.max_ops {
            return Err(ClientError::InvalidRequest(format!(
                "{} ops in one batch; the server accepts at most {}",
                ops.len(),
                self.limits.max_ops
            )));
        }
        let cid = self.next_cid;
        let frame = encode(&ClientMsg::Ops { cid, ops });
        self.check_size(&frame)?;
        self.next_cid += 1;
        Ok((cid, frame))
    }

    fn check_size(&self, frame: &Bytes) -> Result<(), ClientError> {
        if frame.len() as u64 > self.limits.max_frame {
            return Err(ClientError::InvalidRequest(format!(
                "frame of {} bytes; the server accepts at most {}",
                frame.len(),
                self.limits.max_frame
            )));
        }
        Ok(())
    }

    fn fail_pings(&mut self, err: &ClientError) {
        for (_, wait) in self.pings.drain() {
            if let Some(reply) = wait.reply {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }

    /// Reconnects with backoff until a resume succeeds, the policy gives up, or the client
    /// is closed.
    async fn reconnect(
        &mut self,
        first_delay: Option<Duration>,
        mut last_error: String,
    ) -> Result<Ws, ClientError> {
        let policy = self.cfg.reconnect.clone();
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            if let Some(max) = policy.max_attempts {
                if attempt > max {
                    return Err(ClientError::ReconnectFailed { attempts: max, last_error });
                }
            }
            let delay = match first_delay {
                Some(d) if attempt == 1 => d,
                _ => policy.backoff(attempt),
            };
            self.shared.set_connection_state(ConnectionState::Reconnecting { attempt });
            self.emit(Event::Reconnecting { attempt, delay });
            self.serve_offline(tokio::time::sleep(delay)).await?;

            self.resume_attempts += 1;
            let join = self.resume_join();
            let attempt_result = self
                .serve_offline(handshake(
                    self.url.clone(),
                    hello_frame(&self.cfg),
                    join,
                    self.cfg.handshake_timeout,
                ))
                .await?;
            match attempt_result {
                Ok(hs) => return self.accept_resume(hs),
                Err(e) if e.retry_reconnect() => {
                    tracing::info!(attempt, error = %e, "reconnect attempt failed");
                    last_error = e.to_string();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A `join` that resumes this session, from the mirror's position (or asking for a
    /// snapshot when the mirror is stale).
    fn resume_join(&self) -> Bytes {
        let point = self.shared.mirror().resume_point();
        encode(&ClientMsg::Join(Join {
            room: self.cfg.room.clone(),
            room_type: self.cfg.room_type.clone(),
            token: self.cfg.token.clone(),
            session: Some(self.session.clone()),
            epoch: point.map(|(epoch, _)| epoch),
            seq: point.map(|(_, seq)| seq),
            attempt: Some(self.resume_attempts),
            join_or_create: false,
        }))
    }

    fn accept_resume(&mut self, hs: Handshake) -> Result<Ws, ClientError> {
        let j = hs.joined;
        if !j.resumed || j.player != self.player {
            return Err(ClientError::SessionExpired {
                message: format!(
                    "the server answered the resume of {} with a new session as {}",
                    self.player, j.player
                ),
            });
        }
        self.session = j.session;
        self.limits = hs.limits;
        self.next_cid = self.next_cid.max(j.cid.saturating_add(1));
        let with_snapshot = j.snapshot.is_some();
        {
            let mut mirror = self.shared.mirror_mut();
            mirror.set_members(&j.members);
            match j.snapshot {
                Some(snapshot) => {
                    if let Some(mismatch) = mirror.reset(snapshot) {
                        warn_effect(&mismatch);
                    }
                }
                None if mirror.is_stale() => {
                    return Err(ClientError::Protocol(
                        "resume answered without a snapshot although the client asked for one".to_owned(),
                    ));
                }
                None => {}
            }
        }
        tracing::info!(with_snapshot, applied_cid = j.cid, pending = self.pending.len(), "resumed");
        self.emit(Event::Resumed { with_snapshot });
        Ok(hs.ws)
    }

    /// Awaits `fut` while serving commands as a disconnected client would. Returns the
    /// client's terminal error if it is closed meanwhile.
    async fn serve_offline<F: Future>(&mut self, fut: F) -> Result<F::Output, ClientError> {
        tokio::pin!(fut);
        loop {
            let cmd = tokio::select! {
                output = &mut fut => return Ok(output),
                cmd = self.commands.recv() => cmd,
            };
            let Some(cmd) = cmd else {
                return Err(ClientError::Closed { code: None, reason: "the client was dropped".to_owned() });
            };
            match self.on_command(cmd, None) {
                CmdFlow::Continue => {}
                CmdFlow::Leave(reply) => {
                    self.closers.push(reply);
                    return Err(ClientError::Closed {
                        code: None,
                        reason: "left while disconnected (the server removes the player when \
                                 its reconnect grace ends)"
                            .to_owned(),
                    });
                }
                CmdFlow::Close(reply) => {
                    self.closers.push(reply);
                    return Err(closed_by_client());
                }
            }
        }
    }

    /// Closes the client for good: every waiter gets `err`, the last event is `Closed`.
    fn terminate(mut self, err: ClientError) {
        *self.shared.terminal.lock().unwrap_or_else(PoisonError::into_inner) = Some(err.clone());
        self.shared.set_connection_state(ConnectionState::Closed);
        self.shared.op_slots.close();
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::SendOps { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Command::WaitAck { cid, reply } => {
                    let known = self.outcomes.iter().rev().find(|(c, _)| *c == cid);
                    let _ = reply.send(known.map_or_else(|| Err(err.clone()), |(_, r)| r.clone()));
                }
                Command::Msg { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Command::Ping { reply } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Command::Leave { reply } | Command::Close { reply } => self.closers.push(reply),
            }
        }
        for p in self.pending.drain(..) {
            for waiter in p.waiters {
                let _ = waiter.send(Err(err.clone()));
            }
        }
        self.fail_pings(&err);
        for closer in self.closers.drain(..) {
            let _ = closer.send(Ok(()));
        }
        let (code, reason) = err.close_info();
        tracing::info!(?code, %reason, "client closed");
        self.emit(Event::Closed { code, reason });
    }
}

fn closed_by_client() -> ClientError {
    ClientError::Closed { code: None, reason: "closed by the client".to_owned() }
}

/// What a close frame from the server means: reconnect (1001, 1006, 1011, 1012, 1013,
/// 4100-4199) or stop.
fn classify_close(code: Option<u16>, reason: String) -> End {
    match code {
        Some(c) if should_reconnect(c) => {
            let delay = if c == 1012 { retry_hint(&reason) } else { None };
            End::Reconnect { code, reason, delay }
        }
        _ => End::Stop(ClientError::Closed { code, reason }),
    }
}
