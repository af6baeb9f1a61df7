//! The node's pub/sub side of cluster mode.
//!
//! - **Inbox** (`<p>:node:<incarnation>`): commands forwarded by other nodes for rooms this
//!   node owns ([`NodeMsg`]), dispatched to the local room actors in arrival order; and, for
//!   rooms this node follows, join refusals and close requests for its connections.
//! - **Follows**: for every room owned elsewhere that has players connected here, the node
//!   subscribes to the room's channel *before* forwarding the first join, and relays the
//!   owner's frames ([`RoomWire`]) to its local connections in the order they were published.
//!   It checks every sixth of the lease TTL that the owner still holds the lease; when the
//!   owner changed or vanished, or the subscription broke, it closes those connections with
//!   4103 `room_moved`: clients reconnect, resume, and land on the new owner (they get a
//!   snapshot: the epoch changed). A follower keeps no room state.
//! - **Publishers**: each room owned here publishes its frames for remote members through
//!   one ordered queue, so followers see them in room order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::keys::Keys;
use super::redis::lease_holder;
use super::wire::{self, NodeMsg, RoomWire};
use crate::backplane::BackplaneError;
use crate::protocol::{CloseCode, ErrorCode};
use crate::room::actor::{ConnId, JoinRequest, PlayerId, RoomCmd};
use crate::room::{Refusal, Registry};
use crate::session::control::ConnControl;

/// Frames queued per owned room for publishing before the room counts as overloaded.
const PUBLISH_QUEUE: usize = 8192;
/// Most frames published in one pipeline.
const PUBLISH_BATCH: usize = 128;

/// A local connection that is a remote member of a room owned elsewhere.
struct FollowConn {
    outbox: mpsc::Sender<Bytes>,
    control: Arc<ConnControl>,
    /// Set once the owner's `joined` for it arrived; broadcasts go only to joined ones.
    joined: bool,
    /// The session waiting for the outcome of its join.
    waiting: Option<oneshot::Sender<Result<PlayerId, Refusal>>>,
}

/// A room owned by another node, followed for local connections.
struct Follow {
    owner: Arc<str>,
    conns: Mutex<HashMap<u64, FollowConn>>,
}

/// The pub/sub side of a node in cluster mode. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    incarnation: Arc<str>,
    keys: Keys,
    client: redis::Client,
    conn: ConnectionManager,
    sink: tokio::sync::Mutex<PubSubSink>,
    follows: DashMap<String, Arc<Follow>>,
    registry: OnceLock<Registry>,
    lease_ttl: Duration,
    join_timeout: Duration,
    /// False once the pub/sub connection is lost: the node can no longer hear its inbox.
    alive: AtomicBool,
}

fn unavailable(message: impl Into<String>) -> Refusal {
    Refusal::new(ErrorCode::Unavailable, message)
}

impl Relay {
    /// Connects, subscribes to this node's inbox and starts the reader and the follower
    /// checks; both stop with `shutdown`.
    pub async fn start(
        url: &str,
        ca_file: Option<&std::path::Path>,
        keys: Keys,
        incarnation: Arc<str>,
        lease_ttl: Duration,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<Relay, BackplaneError> {
        let err = |e: redis::RedisError| BackplaneError::Unavailable(e.to_string());
        let client = super::client(url, ca_file).map_err(err)?;
        let conn = super::connection(&client, timeout).await.map_err(err)?;
        let (sink, stream) = subscribe_inbox(&client, &keys, &incarnation).await.map_err(err)?;
        let relay = Relay {
            inner: Arc::new(Inner {
                client,
                incarnation,
                keys,
                conn,
                sink: tokio::sync::Mutex::new(sink),
                follows: DashMap::new(),
                registry: OnceLock::new(),
                lease_ttl,
                join_timeout: timeout * 5,
                alive: AtomicBool::new(true),
            }),
        };
        tokio::spawn(relay.clone().read(stream, shutdown.clone()));
        tokio::spawn(relay.clone().watch(shutdown));
        Ok(relay)
    }

    /// Connects the relay to the rooms it dispatches inbox commands to.
    pub fn set_registry(&self, registry: Registry) {
        let _ = self.inner.registry.set(registry);
    }

    /// Whether the pub/sub link works (`/readyz`).
    pub fn healthy(&self) -> bool {
        self.inner.alive.load(Ordering::Relaxed)
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> &Arc<str> {
        &self.inner.incarnation
    }

    /// Who holds the lease of `room` now.
    pub async fn lease_holder(&self, room: &str) -> Result<Option<String>, Refusal> {
        let mut conn = self.inner.conn.clone();
        lease_holder(&mut conn, &self.inner.keys, room)
            .await
            .map_err(|e| unavailable(format!("cannot reach Redis: {e}")))
    }

    /// Sends a command to another node's inbox.
    pub async fn send(&self, node: &str, msg: &NodeMsg) -> Result<(), Refusal> {
        let mut conn = self.inner.conn.clone();
        redis::cmd("PUBLISH")
            .arg(self.inner.keys.inbox(node))
            .arg(wire::encode(msg))
            .query_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| unavailable(format!("cannot reach Redis: {e}")))
    }

    /// A publisher for a room owned here: frames are published in the order queued.
    pub fn publisher(&self, room: &str) -> RoomPublisher {
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(publish(self.inner.conn.clone(), self.inner.keys.channel(room), rx));
        RoomPublisher { tx }
    }

    /// Joins `room`, owned by `owner`, for a local connection: follow the room (subscribed
    /// before the join is forwarded), forward the join, wait for the owner's answer.
    pub async fn join_remote(
        &self,
        room: &str,
        room_type: &str,
        owner: &str,
        req: &JoinRequest,
    ) -> Result<PlayerId, Refusal> {
        let Some(local) = req.conn.local() else {
            return Err(Refusal::new(ErrorCode::Internal, "only local connections join remotely"));
        };
        let follow = self.follow(room, owner).await?;
        let (tx, rx) = oneshot::channel();
        {
            let mut conns = follow.conns.lock().unwrap_or_else(|p| p.into_inner());
            conns.insert(
                local.id,
                FollowConn {
                    outbox: local.outbox.clone(),
                    control: local.control.clone(),
                    joined: false,
                    waiting: Some(tx),
                },
            );
        }
        let msg = NodeMsg::Join {
            room: room.to_owned(),
            room_type: room_type.to_owned(),
            from: self.inner.incarnation.to_string(),
            conn: local.id,
            player: req.player.as_deref().map(str::to_owned),
            session: req.session.clone(),
            epoch: req.epoch,
            seq: req.seq,
        };
        let outcome = match self.send(owner, &msg).await {
            Ok(()) => match tokio::time::timeout(self.inner.join_timeout, rx).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Err(unavailable("the room moved while joining; retry")),
                Err(_) => Err(unavailable(format!("the room's owner {owner} did not answer; retry"))),
            },
            Err(e) => Err(e),
        };
        if outcome.is_err() {
            self.unfollow_conn(room, local.id).await;
        }
        outcome
    }

    /// Forgets a local connection of a followed room (it left or closed).
    pub async fn unfollow_conn(&self, room: &str, conn: u64) {
        let empty = match self.inner.follows.get(room) {
            Some(follow) => {
                let mut conns = follow.conns.lock().unwrap_or_else(|p| p.into_inner());
                conns.remove(&conn);
                conns.is_empty()
            }
            None => false,
        };
        if empty {
            // Removal and unsubscription under the sink's lock, like subscription in
            // `follow`, so a follow created meanwhile is never left unsubscribed.
            let mut sink = self.inner.sink.lock().await;
            let removed =
                self.inner.follows.remove_if(room, |_, f| f.conns.lock().map_or(true, |c| c.is_empty()));
            if removed.is_some() {
                let _ = sink.unsubscribe(self.inner.keys.channel(room)).await;
            }
        }
    }

    /// The follow of `room`, subscribing first if it is new.
    async fn follow(&self, room: &str, owner: &str) -> Result<Arc<Follow>, Refusal> {
        // Under the sink's lock: a follow is in the map only once its subscription is
        // confirmed, so a second join never forwards before frames can arrive.
        let mut sink = self.inner.sink.lock().await;
        if let Some(f) = self.inner.follows.get(room) {
            if &*f.owner == owner {
                return Ok(f.clone());
            }
        }
        sink.subscribe(self.inner.keys.channel(room))
            .await
            .map_err(|e| unavailable(format!("cannot subscribe: {e}")))?;
        let follow = Arc::new(Follow { owner: Arc::from(owner), conns: Mutex::new(HashMap::new()) });
        if let Some(old) = self.inner.follows.insert(room.to_owned(), follow.clone()) {
            close_all(&old, CloseCode::RoomMoved, "the room moved to another node");
        }
        Ok(follow)
    }

    /// Reads the pub/sub stream until shutdown. When the connection breaks, every follow is
    /// closed (its players resume and follow again) and the connection is made anew.
    async fn read(self, mut stream: PubSubStream, shutdown: CancellationToken) {
        let inbox = self.inner.keys.inbox(&self.inner.incarnation);
        loop {
            let msg = tokio::select! {
                msg = stream.next() => msg,
                _ = shutdown.cancelled() => return,
            };
            let Some(msg) = msg else {
                tracing::error!("Redis pub/sub connection lost; closing followed rooms' connections");
                self.inner.alive.store(false, Ordering::Relaxed);
                let follows: Vec<Arc<Follow>> =
                    self.inner.follows.iter().map(|e| e.value().clone()).collect();
                self.inner.follows.clear();
                for follow in follows {
                    close_all(&follow, CloseCode::RoomMoved, "lost the link to the room's owner");
                }
                match self.reconnect(&shutdown).await {
                    Some(next) => {
                        stream = next;
                        self.inner.alive.store(true, Ordering::Relaxed);
                        tracing::info!("Redis pub/sub connection restored");
                        continue;
                    }
                    None => return,
                }
            };
            let channel = msg.get_channel_name();
            let payload: &[u8] = msg.get_payload_bytes();
            if channel == inbox {
                if let Some(m) = wire::decode::<NodeMsg>(payload) {
                    self.inbox(m).await;
                }
            } else if let Some(room) = self.inner.keys.room_of_channel(channel) {
                if let Some(w) = wire::decode::<RoomWire>(payload) {
                    self.room_wire(room, w);
                }
            }
        }
    }

    /// Makes a new pub/sub connection (backing off while Redis is down) and subscribes the
    /// inbox again. `None` on shutdown.
    async fn reconnect(&self, shutdown: &CancellationToken) -> Option<PubSubStream> {
        let mut delay = Duration::from_millis(100);
        loop {
            let attempt = subscribe_inbox(&self.inner.client, &self.inner.keys, &self.inner.incarnation);
            match tokio::time::timeout(Duration::from_secs(2), attempt).await.unwrap_or_else(|_| {
                Err(redis::RedisError::from((redis::ErrorKind::Io, "pub/sub connect timed out")))
            }) {
                Ok((sink, stream)) => {
                    *self.inner.sink.lock().await = sink;
                    return Some(stream);
                }
                Err(e) => tracing::debug!(error = %e, "pub/sub reconnect failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return None,
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// A frame of a followed room.
    fn room_wire(&self, room: &str, w: RoomWire) {
        let Some(follow) = self.inner.follows.get(room).map(|f| f.clone()) else { return };
        let me = &*self.inner.incarnation;
        let mut conns = follow.conns.lock().unwrap_or_else(|p| p.into_inner());
        match w {
            RoomWire::Broadcast { frame } => {
                conns.retain(|_, c| !c.joined || deliver(c, &frame));
            }
            RoomWire::To { node, conn, frame } if node == me => {
                if let Some(c) = conns.get(&conn) {
                    if !deliver(c, &frame) {
                        conns.remove(&conn);
                    }
                }
            }
            RoomWire::Joined { node, conn, player, frame } if node == me => {
                if let Some(c) = conns.get_mut(&conn) {
                    c.joined = true;
                    let ok = deliver(c, &frame);
                    if let Some(waiting) = c.waiting.take() {
                        let _ = waiting.send(Ok(Arc::from(player.as_str())));
                    }
                    if !ok {
                        conns.remove(&conn);
                    }
                }
            }
            RoomWire::Close { node, conn, code, reason } if node == me => {
                if let Some(c) = conns.remove(&conn) {
                    close(&c, code, &reason);
                }
            }
            RoomWire::Moved => {
                for (_, c) in conns.drain() {
                    close(&c, CloseCode::RoomMoved.code(), "the room's owner stopped owning it");
                }
            }
            _ => {}
        }
    }

    /// A command from another node.
    async fn inbox(&self, msg: NodeMsg) {
        let Some(registry) = self.inner.registry.get() else { return };
        match msg {
            NodeMsg::Join { room, room_type, from, conn, player, session, epoch, seq } => {
                // Joins wait for the room; other commands must not wait behind them.
                let relay = self.clone();
                let registry = registry.clone();
                tokio::spawn(async move {
                    let req = JoinRequest {
                        conn: crate::room::MemberConn::Remote { node: Arc::from(from.as_str()), id: conn },
                        player: player.map(|p| Arc::from(p.as_str())),
                        session,
                        epoch,
                        seq,
                    };
                    if let Err(refusal) = registry.join_here(&room, &room_type, req).await {
                        let msg = NodeMsg::JoinRefused {
                            conn,
                            code: refusal.code.as_str().into(),
                            message: refusal.message,
                        };
                        let _ = relay.send(&from, &msg).await;
                    }
                });
            }
            NodeMsg::Ops { room, from, conn, player, cid, ops } => {
                let cmd = RoomCmd::Ops {
                    player: Arc::from(player.as_str()),
                    conn: ConnId::remote(&from, conn),
                    cid,
                    ops,
                    received: Instant::now(),
                };
                self.to_room(registry, &room, &from, conn, cmd).await;
            }
            NodeMsg::Msg { room, from, conn, player, to, data } => {
                let cmd = RoomCmd::Msg {
                    player: Arc::from(player.as_str()),
                    conn: ConnId::remote(&from, conn),
                    to,
                    data,
                };
                self.to_room(registry, &room, &from, conn, cmd).await;
            }
            NodeMsg::Leave { room, from, conn, player } => {
                let cmd =
                    RoomCmd::Leave { player: Arc::from(player.as_str()), conn: ConnId::remote(&from, conn) };
                self.to_room(registry, &room, &from, conn, cmd).await;
            }
            NodeMsg::Detach { room, from, conn, player } => {
                let cmd =
                    RoomCmd::Detach { player: Arc::from(player.as_str()), conn: ConnId::remote(&from, conn) };
                if let Some(handle) = registry.local(&room) {
                    let _ = handle.tx.send(cmd).await;
                }
            }
            NodeMsg::Keepalive { room, from } => {
                if let Some(handle) = registry.local(&room) {
                    let _ = handle.tx.send(RoomCmd::Keepalive { node: Arc::from(from.as_str()) }).await;
                }
            }
            NodeMsg::JoinRefused { conn, code, message } => {
                let code = ErrorCode::parse(&code).unwrap_or(ErrorCode::Internal);
                for entry in self.inner.follows.iter() {
                    let mut conns = entry.conns.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(waiting) = conns.get_mut(&conn).and_then(|c| c.waiting.take()) {
                        let _ = waiting.send(Err(Refusal::new(code, message.clone())));
                    }
                }
            }
            NodeMsg::Close { conn, code, reason } => {
                for entry in self.inner.follows.iter() {
                    let mut conns = entry.conns.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(c) = conns.remove(&conn) {
                        close(&c, code, &reason);
                    }
                }
            }
        }
    }

    /// Hands a forwarded command to a local room, or tells the sender's node to move the
    /// connection on when the room is not (or no longer) owned here.
    async fn to_room(&self, registry: &Registry, room: &str, from: &str, conn: u64, cmd: RoomCmd) {
        let delivered = match registry.local(room) {
            Some(handle) => handle.tx.send(cmd).await.is_ok(),
            None => false,
        };
        if !delivered {
            let code = CloseCode::RoomMoved;
            let msg = NodeMsg::Close {
                conn,
                code: code.code(),
                reason: format!("{}: not owned here", code.reason()),
            };
            let _ = self.send(from, &msg).await;
        }
    }

    /// Every sixth of the lease TTL: keepalives to owners, and a check that each followed
    /// room's owner still holds the lease.
    async fn watch(self, shutdown: CancellationToken) {
        // Polled at a sixth of the lease: a dead owner's room is noticed at most ttl/6 after
        // its lease expired (keepalives ride along; the owner waits 3 x ttl before giving up).
        let period = self.inner.lease_ttl / 6;
        let mut failures: HashMap<String, u32> = HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.cancelled() => return,
            }
            let follows: Vec<(String, Arc<Follow>)> =
                self.inner.follows.iter().map(|e| (e.key().clone(), e.value().clone())).collect();
            for (room, follow) in follows {
                let moved = match self.lease_holder(&room).await {
                    Ok(holder) => {
                        failures.remove(&room);
                        holder.as_deref() != Some(&*follow.owner)
                    }
                    // Cut off from Redis for a whole lease: the owner may have changed.
                    Err(_) => {
                        let n = failures.entry(room.clone()).or_insert(0);
                        *n += 1;
                        *n >= 6
                    }
                };
                if moved {
                    failures.remove(&room);
                    let mut sink = self.inner.sink.lock().await;
                    let removed = self.inner.follows.remove_if(&room, |_, f| Arc::ptr_eq(f, &follow));
                    if removed.is_some() {
                        close_all(&follow, CloseCode::RoomMoved, "the room's owner changed");
                        let _ = sink.unsubscribe(self.inner.keys.channel(&room)).await;
                    }
                    continue;
                }
                let keepalive =
                    NodeMsg::Keepalive { room: room.clone(), from: self.inner.incarnation.to_string() };
                let _ = self.send(&follow.owner, &keepalive).await;
            }
        }
    }
}

/// Queues a frame for a follower connection; false (and the connection closed) when its
/// queue is full: a follower cannot resync, so the client reconnects and resumes.
fn deliver(c: &FollowConn, frame: &Bytes) -> bool {
    match c.outbox.try_send(frame.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            c.control.close(CloseCode::SlowConsumer, "could not keep up with the room");
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

fn close(c: &FollowConn, code: u16, reason: &str) {
    let code = CloseCode::from_code(code).unwrap_or(CloseCode::RoomMoved);
    let detail = reason.split_once(": ").map_or("", |(_, d)| d);
    c.control.close(code, detail);
}

/// Closes every member connection of a follow. Connections still joining are not closed:
/// their join fails as `unavailable`, and the registry looks for the room's owner again.
fn close_all(follow: &Follow, code: CloseCode, detail: &str) {
    let mut conns = follow.conns.lock().unwrap_or_else(|p| p.into_inner());
    for (_, c) in conns.drain() {
        match c.waiting {
            Some(waiting) => {
                let _ = waiting.send(Err(unavailable(detail.to_owned())));
            }
            None => c.control.close(code, detail),
        }
    }
}

/// The ordered publishing queue of one owned room.
#[derive(Clone)]
pub struct RoomPublisher {
    tx: mpsc::Sender<RoomWire>,
}

impl RoomPublisher {
    /// Queues a frame; false when the queue is full (the room is overloaded).
    pub fn send(&self, w: RoomWire) -> bool {
        self.tx.try_send(w).is_ok()
    }
}

/// A pub/sub connection subscribed to this node's inbox.
async fn subscribe_inbox(
    client: &redis::Client,
    keys: &Keys,
    incarnation: &str,
) -> redis::RedisResult<(PubSubSink, PubSubStream)> {
    let (mut sink, stream) = client.get_async_pubsub().await?.split();
    sink.subscribe(keys.inbox(incarnation)).await?;
    Ok((sink, stream))
}

async fn publish(mut conn: ConnectionManager, channel: String, mut rx: mpsc::Receiver<RoomWire>) {
    while let Some(first) = rx.recv().await {
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH").arg(&channel).arg(wire::encode(&first)).ignore();
        let mut n = 1;
        while n < PUBLISH_BATCH {
            let Ok(next) = rx.try_recv() else { break };
            pipe.cmd("PUBLISH").arg(&channel).arg(wire::encode(&next)).ignore();
            n += 1;
        }
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            // Followers notice the gap (clients see a seq jump and resume) or the lease
            // change; nothing acknowledged depends on this publish.
            tracing::warn!(channel, error = %e, "publish failed");
        }
    }
}
