//! One WebSocket connection: the handshake, join or resume, reading the client's frames,
//! and writing the room's frames from a bounded queue.
//!
//! Each connection runs as a reader (this module's [`run`], the connection's task) and a
//! writer task that owns the socket's sending half. They share a [`ConnControl`]: whoever
//! decides the connection must end (the reader on a protocol error or timeout, the room on
//! "replaced" or "slow consumer", the node on shutdown) records a close code there, and the
//! writer sends what is still queued, then the close frame.
//!
//! The outbound queue is bounded (`--outbox-frames`). Rooms never wait on it: when it is
//! full the room marks the member lagging and later sends one `resync` instead of the
//! backlog. The reader does wait on it for its own replies (pong, errors), which pushes back
//! on a client that sends faster than it reads.

pub mod control;
pub mod token;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures_util::StreamExt;
use metrics::counter;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant as TokioInstant};
use tracing::Instrument;

use crate::cluster::wire::NodeMsg;
use crate::limits::{self, TokenBucket};
use crate::lobby;
use crate::protocol::{
    decode_client, encode, ClientMsg, CloseCode, ErrorCode, Join, RoomListing, ServerMsg, PROTOCOL_VERSION,
};
use crate::room::{ConnId, JoinRequest, LocalConn, MemberConn, PlayerId, Refusal, RoomCmd, RoomLink};
use crate::server::Node;
use crate::telemetry::names;
pub use control::{CloseReason, ConnControl};

/// Serves one upgraded WebSocket until it closes.
pub async fn run(socket: WebSocket, node: Arc<Node>, peer: SocketAddr) {
    let id = node.next_conn_id();
    let span = tracing::debug_span!("conn", id, %peer);
    async move {
        let (sink, stream) = socket.split();
        let (outbox, queue) = mpsc::channel(node.config.outbox_frames);
        let control = Arc::new(ConnControl::new(&node.shutdown, node.reconnect_hint_ms()));
        let writer = tokio::spawn(
            writer::run(sink, queue, control.clone(), node.config.ping_interval(), node.metrics.clone())
                .in_current_span(),
        );
        let mut session = Session {
            conn: LocalConn { id, outbox, control: control.clone() },
            node: node.clone(),
            hello: false,
            joined: None,
            left: false,
            bad_frames: 0,
            last_rx: Instant::now(),
            ops_bucket: TokenBucket::new(
                node.config.rate_ops_per_sec,
                node.config.rate_ops_burst,
                Instant::now(),
            ),
            bytes_bucket: TokenBucket::new(
                node.config.rate_bytes_per_sec,
                node.config.rate_bytes_burst,
                Instant::now(),
            ),
            strikes: 0,
            strikes_since: Instant::now(),
        };
        session.read(stream).await;
        if session.joined.is_some() {
            let command = if session.left { Command::Forget } else { Command::Detach };
            session.command(command).await;
        }
        drop(session);
        let _ = writer.await;
        let reason = control.reason().map_or("unknown", |r| r.label());
        counter!(names::CONNECTIONS_CLOSED, "reason" => reason).increment(1);
        tracing::debug!(reason, "connection closed");
    }
    .instrument(span)
    .await
}

/// What the reader knows about its connection.
struct Session {
    conn: LocalConn,
    node: Arc<Node>,
    /// `hello` was received and accepted.
    hello: bool,
    /// The room joined and the player this connection speaks for.
    joined: Option<(RoomLink, PlayerId)>,
    /// The player left the room (no Detach needed).
    left: bool,
    /// Malformed frames so far.
    bad_frames: u32,
    /// When the last frame of any kind arrived.
    last_rx: Instant,
    /// `--rate-ops-per-sec`: every frame costs 1, an `ops` batch its op count.
    ops_bucket: TokenBucket,
    /// `--rate-bytes-per-sec`: binary and text frame payloads.
    bytes_bucket: TokenBucket,
    /// Frames refused for rate since `strikes_since` (a window of [`STRIKE_WINDOW`]).
    strikes: u32,
    strikes_since: Instant,
}

/// The window in which `--rate-limit-strikes` refused frames close a connection.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(10);

/// Whether to keep reading.
enum Flow {
    Continue,
    Stop,
}

/// What a joined session asks of its room.
enum Command {
    Ops {
        cid: u64,
        ops: Vec<crate::protocol::Op>,
    },
    Msg {
        to: Option<String>,
        data: crate::protocol::Doc,
    },
    Leave,
    /// The connection closed without leaving: the grace starts.
    Detach,
    /// The connection closed after leaving: only local bookkeeping.
    Forget,
}

impl Session {
    fn control(&self) -> &ConnControl {
        &self.conn.control
    }

    /// Reads frames until the connection must end; the close reason is in the control.
    async fn read(&mut self, mut stream: futures_util::stream::SplitStream<WebSocket>) {
        let config = self.node.config.clone();
        let handshake_deadline = Instant::now() + config.handshake_timeout();
        let control = self.conn.control.clone();
        // One timer, re-armed only when it fires, rather than one per frame.
        let timer =
            sleep_until(TokioInstant::from_std(handshake_deadline.min(self.last_rx + config.idle_timeout())));
        tokio::pin!(timer);
        // Created once: a cancellation future registers a waiter (a lock) when first polled.
        // The control's token also fires on node shutdown (its reason then reads as 1012).
        let closed = control.closed();
        tokio::pin!(closed);
        loop {
            tokio::select! {
                _ = &mut closed => return,
                _ = &mut timer => {
                    let now = Instant::now();
                    if self.joined.is_none() && now >= handshake_deadline {
                        limits::hit("handshake_timeout");
                        control.close(CloseCode::HandshakeTimeout, "no hello and join in time");
                        return;
                    }
                    let idle_at = self.last_rx + config.idle_timeout();
                    if now >= idle_at {
                        control.close(CloseCode::IdleTimeout, "nothing received in time");
                        return;
                    }
                    let next = if self.joined.is_none() { idle_at.min(handshake_deadline) } else { idle_at };
                    timer.as_mut().reset(TokioInstant::from_std(next));
                }
                frame = stream.next() => {
                    self.last_rx = Instant::now();
                    let flow = match frame {
                        None => { control.gone("client_gone"); Flow::Stop }
                        Some(Err(e)) => { self.read_error(e); Flow::Stop }
                        Some(Ok(Message::Binary(bytes))) => {
                            self.node.metrics.bytes_in.increment(bytes.len() as u64);
                            self.frame(&bytes).await
                        }
                        Some(Ok(Message::Text(text))) => {
                            match self.over_rate(text.len() as u64, 1, None).await {
                                Some(flow) => flow,
                                None => self.bad_frame(ErrorCode::BadFrame, "text frames are not part of the protocol; send binary MessagePack".into()).await,
                            }
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Flow::Continue,
                        Some(Ok(Message::Close(_))) => { control.gone("client_closed"); Flow::Stop }
                    };
                    if let Flow::Stop = flow {
                        return;
                    }
                }
            }
        }
    }

    fn read_error(&self, e: axum::Error) {
        let too_large = e
            .into_inner()
            .downcast_ref::<tungstenite::Error>()
            .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)));
        if too_large {
            counter!(names::BAD_FRAMES, "code" => "frame_too_large").increment(1);
            limits::hit("frame_size");
            let max = self.node.config.max_frame_bytes;
            self.control().close(CloseCode::FrameTooLarge, format!("max {max} bytes"));
        } else {
            self.control().gone("socket_error");
        }
    }

    /// Queues a reply for this client, waiting for room in the queue. (If the client stops
    /// reading for good, the room closes the connection as a slow consumer; the writer then
    /// drops the queue and this wait ends.)
    async fn send(&self, msg: &ServerMsg) {
        let _ = self.conn.outbox.send(encode(msg)).await;
    }

    async fn error(&self, code: ErrorCode, message: String) {
        self.send(&ServerMsg::Error { code: code.as_str().to_owned(), message, retry_ms: None }).await;
    }

    async fn bad_frame(&mut self, code: ErrorCode, message: String) -> Flow {
        counter!(names::BAD_FRAMES, "code" => code.as_str()).increment(1);
        counter!(names::FRAMES_IN, "kind" => "invalid").increment(1);
        self.bad_frames += 1;
        self.error(code, message).await;
        if self.bad_frames > self.node.config.max_bad_frames {
            limits::hit("bad_frames");
            self.control().close(CloseCode::ProtocolError, "too many malformed frames");
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// Charges a frame of `bytes` bytes costing `ops` ops (`cid` for an op batch) to the
    /// rate buckets. `Some(flow)` when it is over the budget and was refused: then the client
    /// got `reject`/`error` `rate_limited`, or the connection closes with 4005 after
    /// `--rate-limit-strikes` refusals within [`STRIKE_WINDOW`].
    async fn over_rate(&mut self, bytes: u64, ops: u64, cid: Option<u64>) -> Option<Flow> {
        let now = Instant::now();
        let (limit, wait_ms) = if bytes > 0 && !self.bytes_bucket.take(bytes, now) {
            ("bytes_rate", self.bytes_bucket.wait_ms(bytes))
        } else if ops > 0 && !self.ops_bucket.take(ops, now) {
            ("ops_rate", self.ops_bucket.wait_ms(ops))
        } else {
            return None;
        };
        limits::hit(limit);
        if now.duration_since(self.strikes_since) > STRIKE_WINDOW {
            self.strikes = 0;
            self.strikes_since = now;
        }
        self.strikes += 1;
        if self.strikes > self.node.config.rate_limit_strikes {
            limits::hit("rate_abuse");
            self.control().close(CloseCode::RateLimited, format!("{limit} exceeded repeatedly"));
            return Some(Flow::Stop);
        }
        let message = format!("{limit} limit exceeded; retry in {wait_ms} ms");
        let code = ErrorCode::RateLimited.as_str().to_owned();
        let reply = match cid {
            Some(cid) => ServerMsg::Reject { cid, code, message },
            None => ServerMsg::Error { code, message, retry_ms: Some(wait_ms) },
        };
        self.send(&reply).await;
        Some(Flow::Continue)
    }

    async fn frame(&mut self, bytes: &Bytes) -> Flow {
        // Decoding comes first so that a refused op batch is answered with its cid; its cost
        // is bounded by --max-frame-bytes, and a frame that fails to decode is charged too.
        let msg = match decode_client(bytes) {
            Ok(msg) => msg,
            Err(e) => {
                if let Some(flow) = self.over_rate(bytes.len() as u64, 1, None).await {
                    return flow;
                }
                return self.bad_frame(ErrorCode::BadFrame, e.to_string()).await;
            }
        };
        let (cost, cid) = match &msg {
            ClientMsg::Ops { cid, ops } => (ops.len().max(1) as u64, Some(*cid)),
            // A listing reads the lobby (a Redis script in cluster mode): it costs more.
            ClientMsg::ListRooms { .. } => (LIST_ROOMS_COST, None),
            _ => (1, None),
        };
        if let Some(flow) = self.over_rate(bytes.len() as u64, cost, cid).await {
            return flow;
        }
        match &msg {
            ClientMsg::Ops { .. } => self.node.metrics.frames_in_ops.increment(1),
            ClientMsg::Ping { .. } => self.node.metrics.frames_in_ping.increment(1),
            other => counter!(names::FRAMES_IN, "kind" => kind(other)).increment(1),
        }
        if !self.hello {
            return self.hello(msg).await;
        }
        match msg {
            ClientMsg::Hello { .. } => {
                self.error(ErrorCode::HandshakeRequired, "hello was already received".into()).await;
                Flow::Continue
            }
            ClientMsg::Join(join) => self.join(join).await,
            ClientMsg::ListRooms { id, room_type } => {
                let reply = match list_rooms(&self.node, &room_type).await {
                    Ok(rooms) => ServerMsg::Rooms { id, room_type, rooms },
                    Err(refusal) => ServerMsg::Error {
                        code: refusal.code.as_str().to_owned(),
                        message: refusal.message,
                        retry_ms: None,
                    },
                };
                self.send(&reply).await;
                Flow::Continue
            }
            ClientMsg::Ping { id } => {
                self.send(&ServerMsg::Pong { id, time: unix_ms() }).await;
                Flow::Continue
            }
            ClientMsg::Ops { cid, ops } => {
                if self.joined.is_none() {
                    let message = "join a room before sending ops".to_owned();
                    let reject =
                        ServerMsg::Reject { cid, code: ErrorCode::NotJoined.as_str().into(), message };
                    self.send(&reject).await;
                    return Flow::Continue;
                }
                self.command(Command::Ops { cid, ops }).await
            }
            ClientMsg::Msg { to, data } => {
                if self.joined.is_none() {
                    self.error(ErrorCode::NotJoined, "join a room before sending messages".into()).await;
                    return Flow::Continue;
                }
                self.command(Command::Msg { to, data }).await
            }
            ClientMsg::Leave => {
                if self.joined.is_none() {
                    self.control().close(CloseCode::Normal, "");
                    return Flow::Stop;
                }
                self.left = true;
                // The room closes the connection (1000) once the player is removed.
                self.command(Command::Leave).await
            }
        }
    }

    async fn hello(&mut self, msg: ClientMsg) -> Flow {
        match msg {
            ClientMsg::Hello { v, client } if v == PROTOCOL_VERSION => {
                self.hello = true;
                tracing::debug!(client = client.as_deref().unwrap_or("-"), "hello");
                let config = &self.node.config;
                self.send(&ServerMsg::Welcome {
                    v: PROTOCOL_VERSION,
                    node: self.node.node_id.clone(),
                    time: unix_ms(),
                    max_frame: config.max_frame_bytes as u64,
                    max_ops: config.max_ops_per_batch as u64,
                })
                .await;
                Flow::Continue
            }
            ClientMsg::Hello { v, .. } => {
                let message = format!("this node speaks protocol version {PROTOCOL_VERSION}, not {v}");
                self.error(ErrorCode::UnsupportedVersion, message).await;
                self.control().close(CloseCode::UnsupportedVersion, format!("v{PROTOCOL_VERSION} only"));
                Flow::Stop
            }
            _ => {
                self.error(ErrorCode::HandshakeRequired, "the first frame must be hello".into()).await;
                self.control().close(CloseCode::ProtocolError, "no hello");
                Flow::Stop
            }
        }
    }

    async fn join(&mut self, mut join: Join) -> Flow {
        if self.joined.is_some() {
            self.error(ErrorCode::AlreadyJoined, "this connection already joined a room".into()).await;
            return Flow::Continue;
        }
        // `join_or_create` chooses the room, unless this is a resume (which names it).
        let choosing = join.join_or_create && join.session.is_none();
        if choosing && !join.room.is_empty() {
            let message = "join_or_create chooses the room: leave `room` empty".to_owned();
            self.error(ErrorCode::BadRoom, message).await;
            return Flow::Continue;
        }
        // The token of a `join_or_create` must allow the rooms it creates (`<type>-*`).
        let auth_room = if choosing { format!("{}-", join.room_type) } else { join.room.clone() };
        let claims = match &self.node.auth {
            None => None,
            // A resume may rest on its session token alone: it is signed and bound to the
            // player and room. A token sent along must still be valid and name that player.
            Some(_) if join.session.is_some() && join.token.is_none() => None,
            Some(auth) => match auth.verify(join.token.as_deref(), &auth_room) {
                Ok(claims) => Some(claims),
                Err(e) => {
                    counter!(names::AUTH_FAILURES, "reason" => e.label()).increment(1);
                    tracing::debug!(room = %auth_room, error = %e, "join refused");
                    self.error(e.code(), e.to_string()).await;
                    self.control().close(CloseCode::Unauthorized, e.label());
                    return Flow::Stop;
                }
            },
        };
        let mut player = claims.as_ref().map(|c| Arc::<str>::from(c.sub.as_str()));
        if join.session.is_none() && self.node.overloaded() {
            limits::hit("overload");
            let retry_ms = self.node.shed_hint_ms();
            let message =
                format!("this node is past its load limit; retry in {retry_ms} ms, preferably elsewhere");
            let code = ErrorCode::Overloaded.as_str().to_owned();
            self.send(&ServerMsg::Error { code, message, retry_ms: Some(retry_ms) }).await;
            return Flow::Continue;
        }
        if choosing {
            // The seat is reserved for a player id, so it is decided here.
            let id = player.get_or_insert_with(crate::room::new_player_id).clone();
            match self.choose_room(&join.room_type, &id).await {
                Ok(room) => join.room = room,
                Err(refusal) => {
                    self.error(refusal.code, refusal.message).await;
                    return Flow::Continue;
                }
            }
            if claims.as_ref().is_some_and(|c| !c.allows(&join.room)) {
                // Give back the seat reserved for a join that does not happen.
                lobby::free_seat_later(&self.node.lobby, &join.room_type, &join.room, &id);
                let message = format!("the join token does not allow room {}", join.room);
                self.error(ErrorCode::Forbidden, message).await;
                return Flow::Continue;
            }
        }
        let req = JoinRequest {
            conn: MemberConn::Local(self.conn.clone()),
            player: player.clone(),
            session: join.session,
            epoch: join.epoch,
            seq: join.seq,
            attempt: join.attempt,
        };
        match self.node.registry.join(&join.room, &join.room_type, req).await {
            Ok(joined) => {
                tracing::debug!(room = %join.room, player = %joined.player, "joined");
                self.joined = Some((joined.room, joined.player));
            }
            Err(refusal) => {
                if let (true, Some(id)) = (choosing, &player) {
                    lobby::free_seat_later(&self.node.lobby, &join.room_type, &join.room, id);
                }
                self.error(refusal.code, refusal.message).await
            }
        }
        Flow::Continue
    }

    /// `join_or_create`: a seat for `player` in an open listed room of `room_type`, or in a
    /// new one (see [`crate::lobby`]).
    async fn choose_room(&self, room_type: &str, player: &str) -> Result<String, Refusal> {
        if crate::room::types::static_name(room_type).is_none() {
            return Err(Refusal::new(ErrorCode::BadRoom, format!("unknown room type {room_type:?}")));
        }
        let new_room = lobby::new_room_id(room_type);
        let max_players = self.node.config.join_or_create_seats();
        let room = self.node.lobby.reserve(room_type, player, &new_room, max_players).await?;
        let outcome = if room == new_room { "created" } else { "existing" };
        counter!(names::JOIN_OR_CREATE, "outcome" => outcome).increment(1);
        Ok(room)
    }

    /// Hands a command to the room: into its mailbox when it is owned here (waiting if the
    /// mailbox is full: backpressure), or to its owner's inbox in cluster mode.
    async fn command(&self, command: Command) -> Flow {
        let Some((link, player)) = &self.joined else { return Flow::Continue };
        let sent = match link {
            RoomLink::Local(room) => {
                let conn = ConnId::local(self.conn.id);
                let player = player.clone();
                let cmd = match command {
                    Command::Ops { cid, ops } => {
                        RoomCmd::Ops { player, conn, cid, ops, received: Instant::now() }
                    }
                    Command::Msg { to, data } => RoomCmd::Msg { player, conn, to, data },
                    Command::Leave => RoomCmd::Leave { player, conn },
                    Command::Detach => RoomCmd::Detach { player, conn },
                    Command::Forget => return Flow::Stop,
                };
                // Waits only while the room's mailbox is full (backpressure); a room drains
                // its mailbox or stops, which ends the wait either way.
                room.tx.send(cmd).await.is_ok()
            }
            RoomLink::Remote { room, owner, relay } => {
                let (from, conn, player) =
                    (relay.incarnation().to_string(), self.conn.id, player.to_string());
                let room_id = room.clone();
                let msg = match command {
                    Command::Ops { cid, ops } => NodeMsg::Ops { room: room_id, from, conn, player, cid, ops },
                    Command::Msg { to, data } => NodeMsg::Msg { room: room_id, from, conn, player, to, data },
                    Command::Leave => NodeMsg::Leave { room: room_id, from, conn, player },
                    Command::Detach => {
                        relay.unfollow_conn(room, conn).await;
                        NodeMsg::Detach { room: room_id, from, conn, player }
                    }
                    Command::Forget => {
                        relay.unfollow_conn(room, conn).await;
                        return Flow::Stop;
                    }
                };
                relay.send(owner, &msg).await.is_ok()
            }
        };
        if !sent {
            // The room stopped or its owner is unreachable: the client reconnects and
            // resumes wherever the room lives now.
            self.control().close(CloseCode::RoomMoved, "the room is not reachable here");
            return Flow::Stop;
        }
        Flow::Continue
    }
}

/// The metric label of a client message.
fn kind(msg: &ClientMsg) -> &'static str {
    match msg {
        ClientMsg::Hello { .. } => "hello",
        ClientMsg::Join(_) => "join",
        ClientMsg::Ops { .. } => "ops",
        ClientMsg::Msg { .. } => "msg",
        ClientMsg::Ping { .. } => "ping",
        ClientMsg::Leave => "leave",
        ClientMsg::ListRooms { .. } => "list_rooms",
    }
}

/// What a `list_rooms` costs against the ops rate limit (a frame of anything else costs 1,
/// an `ops` batch one per op).
pub const LIST_ROOMS_COST: u64 = 50;

/// The listed rooms of `room_type`, for `list_rooms` and `GET /rooms`.
pub async fn list_rooms(node: &Node, room_type: &str) -> Result<Vec<RoomListing>, Refusal> {
    if crate::room::types::static_name(room_type).is_none() {
        return Err(Refusal::new(ErrorCode::BadRoom, format!("unknown room type {room_type:?}")));
    }
    let listed = node.lobby.list(room_type, false, node.config.list_rooms_limit).await?;
    Ok(listed.into_iter().map(RoomListing::from).collect())
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Upper bound on how long a closing connection may spend flushing its queue.
pub const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
