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
//!
//! On one Redis this is classic pub/sub (`PUBLISH`/`SUBSCRIBE` on a dedicated connection).
//! On a Redis Cluster it is sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7): a room's
//! channel carries the room's hash tag, so its frames reach only the shard that holds the
//! room, instead of every node of the cluster bus. The subscriber is a redis-rs cluster
//! connection speaking RESP3, whose pushes arrive on a channel: it routes each `SSUBSCRIBE`
//! to the master of the channel's slot, and after a disconnection or a failover it refreshes
//! the slot map and subscribes again by itself. Frames published meanwhile are lost, so on
//! any disconnection, and on any `sunsubscribe` Redis pushes when a slot moves, the node
//! closes the follows concerned with 4103: their clients resume, and the room's log closes
//! the gap (G3), exactly as after a lost pub/sub link on one Redis.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::conn::{Conn, Target};
use super::keys::Keys;
use super::redis::lease_holder;
use super::wire::{self, NodeMsg, RoomWire};
use crate::backplane::BackplaneError;
use crate::protocol::{CloseCode, ErrorCode};
use crate::room::actor::{ConnId, JoinFailure, JoinRequest, PlayerId, RoomCmd};
use crate::room::admin::{AdminCmd, AdminReply};
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
    target: Target,
    ca_file: Option<std::path::PathBuf>,
    timeout: Duration,
    conn: Conn,
    sink: tokio::sync::Mutex<Subscriber>,
    /// Our own unsubscriptions whose `sunsubscribe` push has not arrived yet, per channel
    /// (Redis Cluster), told apart from the ones Redis makes when a slot moves.
    unsubscribing: DashMap<String, u32>,
    follows: DashMap<String, Arc<Follow>>,
    registry: OnceLock<Registry>,
    lease_ttl: Duration,
    join_timeout: Duration,
    /// False once the pub/sub connection is lost: the node can no longer hear its inbox.
    alive: AtomicBool,
    /// Signalled when a (un)subscription did not answer within `timeout`: the reader
    /// treats the pub/sub link as broken and makes it anew.
    stuck: tokio::sync::Notify,
    /// The latest probe of our own inbox heard (see `probe_inbox`).
    probe_heard: std::sync::atomic::AtomicU64,
    /// Admin commands sent to other nodes, awaiting their `admin_reply`.
    admin_waiting: DashMap<u64, oneshot::Sender<Result<AdminReply, Refusal>>>,
    next_admin: std::sync::atomic::AtomicU64,
}

/// Why an admin command sent to another node got no reply.
#[derive(Debug)]
pub enum RemoteFailure {
    /// It was surely not carried out: not published, or the node does not own the room.
    NotOwner(Refusal),
    /// The owner refused it.
    Refused(Refusal),
    /// No answer in time: it may or may not have been carried out.
    NoAnswer(Refusal),
}

/// The refusal message of an owner that got an admin command for a room it does not own
/// (any more): the command was not carried out.
const NOT_OWNED_HERE: &str = "the room is not owned here (any more); retry";

/// Inbox probes (one per sixth of the lease TTL) that may go unheard in a row before the
/// pub/sub link is made anew: two lease TTLs, far above any scheduling delay of a loaded
/// node, so a busy node does not drop its followers for nothing.
const PROBE_MISSES: u64 = 12;

fn unavailable(message: impl Into<String>) -> Refusal {
    Refusal::new(ErrorCode::Unavailable, message)
}

impl Relay {
    /// Connects, subscribes to this node's inbox and starts the reader and the follower
    /// checks; both stop with `shutdown`.
    pub async fn start(
        target: &Target,
        ca_file: Option<&std::path::Path>,
        keys: Keys,
        incarnation: Arc<str>,
        lease_ttl: Duration,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<Relay, BackplaneError> {
        let err = |e: redis::RedisError| BackplaneError::Unavailable(e.to_string());
        let conn = target.connect(ca_file, timeout).await.map_err(err)?;
        let (sink, stream) =
            subscribe_inbox(target, ca_file, timeout, &keys, &incarnation).await.map_err(err)?;
        let relay = Relay {
            inner: Arc::new(Inner {
                target: target.clone(),
                ca_file: ca_file.map(ToOwned::to_owned),
                timeout,
                incarnation,
                keys,
                conn,
                sink: tokio::sync::Mutex::new(sink),
                unsubscribing: DashMap::new(),
                follows: DashMap::new(),
                registry: OnceLock::new(),
                lease_ttl,
                join_timeout: timeout * 5,
                alive: AtomicBool::new(true),
                stuck: tokio::sync::Notify::new(),
                probe_heard: std::sync::atomic::AtomicU64::new(0),
                admin_waiting: DashMap::new(),
                next_admin: std::sync::atomic::AtomicU64::new(1),
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

    /// Who holds the lease of `room` now. A read, so a failure is retried once: the first
    /// command on a connection that broke while idle fails while the connection manager
    /// reconnects behind it.
    pub async fn lease_holder(&self, room: &str) -> Result<Option<String>, Refusal> {
        let mut conn = self.inner.conn.clone();
        match lease_holder(&mut conn, &self.inner.keys, room).await {
            Ok(holder) => Ok(holder),
            Err(first) => {
                tracing::debug!(room, error = %first, "lease lookup failed; retrying once");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                lease_holder(&mut conn, &self.inner.keys, room)
                    .await
                    .map_err(|e| unavailable(format!("cannot reach Redis: {e}")))
            }
        }
    }

    /// Sends a command to another node's inbox.
    pub async fn send(&self, node: &str, msg: &NodeMsg) -> Result<(), Refusal> {
        let mut conn = self.inner.conn.clone();
        redis::cmd(self.publish_command())
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
        let command = self.publish_command();
        tokio::spawn(publish(self.inner.conn.clone(), command, self.inner.keys.channel(room), rx));
        RoomPublisher { tx }
    }

    /// `SPUBLISH` on a Redis Cluster (to the channel's shard only), `PUBLISH` on one Redis.
    fn publish_command(&self) -> &'static str {
        if self.inner.target.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
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
        tracing::trace!(room, owner, "following; forwarding the join");
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
            attempt: req.attempt,
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
                let _ = self.unsubscribe(&mut sink, room).await;
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
        self.bounded(sink.subscribe(self.inner.keys.channel(room)))
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
    async fn read(self, mut stream: Incoming, shutdown: CancellationToken) {
        let inbox = self.inner.keys.inbox(&self.inner.incarnation);
        loop {
            let event = tokio::select! {
                event = stream.next() => event,
                _ = self.inner.stuck.notified() => {
                    tracing::warn!("a Redis pub/sub command did not answer in time; reconnecting");
                    None
                }
                _ = shutdown.cancelled() => return,
            };
            let (channel, payload) = match event {
                Some(Event::Message { channel, payload }) => (channel, payload),
                Some(Event::Disconnected) => {
                    // A shard link broke (Redis Cluster): the client reconnects and subscribes
                    // again by itself, but frames may have been lost meanwhile.
                    tracing::warn!("a Redis Cluster pub/sub link broke; closing followed rooms' connections");
                    self.drop_follows(None).await;
                    continue;
                }
                Some(Event::Unsubscribed(channel)) => {
                    let ours = match self.inner.unsubscribing.get_mut(&channel) {
                        Some(mut n) if *n > 0 => {
                            *n -= 1;
                            true
                        }
                        _ => false,
                    };
                    self.inner.unsubscribing.remove_if(&channel, |_, n| *n == 0);
                    if ours {
                        continue;
                    }
                    if channel == inbox {
                        // Redis moved the inbox's slot: subscribe where it lives now.
                        tracing::warn!(channel, "inbox unsubscribed by Redis; subscribing again");
                        let relay = self.clone();
                        tokio::spawn(async move {
                            let mut sink = relay.inner.sink.lock().await;
                            if let Err(e) = relay.bounded(sink.subscribe(channel)).await {
                                tracing::error!(error = %e, "cannot subscribe the inbox again");
                                relay.inner.alive.store(false, Ordering::Relaxed);
                            }
                        });
                    } else if let Some(room) = self.inner.keys.room_of_channel(&channel) {
                        self.drop_follows(Some(room.to_owned())).await;
                    }
                    continue;
                }
                Some(Event::Ignored) => continue,
                None => {
                    self.lost(&mut stream, &shutdown).await;
                    if matches!(stream, Incoming::Closed) {
                        return;
                    }
                    continue;
                }
            };
            if channel == inbox {
                if let Some(m) = wire::decode::<NodeMsg>(&payload) {
                    self.inbox(m).await;
                }
            } else if let Some(room) = self.inner.keys.room_of_channel(&channel) {
                if let Some(w) = wire::decode::<RoomWire>(&payload) {
                    self.room_wire(room, w);
                }
            }
        }
    }

    /// A pub/sub command bounded by the Redis timeout. One that does not answer in time
    /// leaves the link in an unknown state (a cluster client can wait on a shard that is
    /// gone for good): the reader is told to make the link anew, and the sink's lock, held
    /// by the caller, is freed for it.
    async fn bounded(
        &self,
        command: impl std::future::Future<Output = redis::RedisResult<()>>,
    ) -> redis::RedisResult<()> {
        match tokio::time::timeout(self.inner.timeout, command).await {
            Ok(result) => result,
            Err(_) => {
                self.inner.stuck.notify_one();
                Err(redis::RedisError::from((redis::ErrorKind::Io, "pub/sub command timed out")))
            }
        }
    }

    /// Unsubscribes a room's channel (the caller holds the sink's lock).
    async fn unsubscribe(&self, sink: &mut Subscriber, room: &str) -> redis::RedisResult<()> {
        let channel = self.inner.keys.channel(room);
        let cluster = matches!(sink, Subscriber::Cluster(_));
        if cluster {
            *self.inner.unsubscribing.entry(channel.clone()).or_insert(0) += 1;
        }
        let result = self.bounded(sink.unsubscribe(channel.clone())).await;
        if result.is_err() && cluster {
            // No push will come for it (or it comes late and closes a follow: safe).
            self.inner.unsubscribing.remove_if_mut(&channel, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
        result
    }

    /// Closes the follows of `room` (all follows with `None`) whose frames may have been
    /// lost, and unsubscribes their channels (in the background: the link may be down).
    async fn drop_follows(&self, room: Option<String>) {
        let dropped: Vec<(String, Arc<Follow>)> = match &room {
            Some(room) => self.inner.follows.remove(room).into_iter().collect(),
            None => {
                let all: Vec<String> = self.inner.follows.iter().map(|e| e.key().clone()).collect();
                all.into_iter().filter_map(|r| self.inner.follows.remove(&r)).collect()
            }
        };
        if dropped.is_empty() {
            return;
        }
        for (_, follow) in &dropped {
            close_all(follow, CloseCode::RoomMoved, "lost the link to the room's owner");
        }
        let relay = self.clone();
        tokio::spawn(async move {
            let mut sink = relay.inner.sink.lock().await;
            for (room, _) in dropped {
                // A follow created meanwhile keeps its subscription.
                if !relay.inner.follows.contains_key(&room) {
                    let _ = relay.unsubscribe(&mut sink, &room).await;
                }
            }
        });
    }

    /// The single-Redis pub/sub connection ended: close every follow, connect anew.
    /// Leaves `stream` as [`Incoming::Closed`] on shutdown.
    async fn lost(&self, stream: &mut Incoming, shutdown: &CancellationToken) {
        tracing::error!("Redis pub/sub connection lost; closing followed rooms' connections");
        self.inner.alive.store(false, Ordering::Relaxed);
        let follows: Vec<Arc<Follow>> = self.inner.follows.iter().map(|e| e.value().clone()).collect();
        self.inner.follows.clear();
        for follow in follows {
            close_all(&follow, CloseCode::RoomMoved, "lost the link to the room's owner");
        }
        match self.reconnect(shutdown).await {
            Some(next) => {
                *stream = next;
                self.inner.alive.store(true, Ordering::Relaxed);
                tracing::info!("Redis pub/sub connection restored");
            }
            None => *stream = Incoming::Closed,
        }
    }

    /// Makes a new pub/sub connection (backing off while Redis is down) and subscribes the
    /// inbox again. `None` on shutdown.
    async fn reconnect(&self, shutdown: &CancellationToken) -> Option<Incoming> {
        let mut delay = Duration::from_millis(100);
        loop {
            let inner = &self.inner;
            let attempt = subscribe_inbox(
                &inner.target,
                inner.ca_file.as_deref(),
                inner.timeout,
                &inner.keys,
                &inner.incarnation,
            );
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
        if let NodeMsg::Probe { n } = msg {
            self.inner.probe_heard.fetch_max(n, Ordering::Relaxed);
            return;
        }
        let Some(registry) = self.inner.registry.get() else { return };
        match msg {
            NodeMsg::Join { room, room_type, from, conn, player, session, epoch, seq, attempt } => {
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
                        attempt,
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
            NodeMsg::Admin { id, from, room, cmd } => {
                // Like joins, admin commands wait for the room: off the reading task.
                let relay = self.clone();
                let handle = registry.local(&room);
                tokio::spawn(async move {
                    let not_owned = || unavailable(NOT_OWNED_HERE);
                    let outcome: Result<AdminReply, Refusal> = match handle {
                        None => Err(not_owned()),
                        Some(handle) => {
                            let (reply, answer) = oneshot::channel();
                            if handle.tx.send(RoomCmd::Admin { cmd, reply }).await.is_err() {
                                Err(not_owned())
                            } else {
                                match answer.await {
                                    Ok(Ok(reply)) => Ok(reply),
                                    Ok(Err(JoinFailure::Refused(refusal))) => Err(refusal),
                                    Ok(Err(JoinFailure::RoomClosed)) => Err(not_owned()),
                                    Err(_) => Err(unavailable(
                                        "the room stopped while carrying out the command: its outcome is unknown",
                                    )),
                                }
                            }
                        }
                    };
                    let msg = match outcome {
                        Ok(reply) => NodeMsg::AdminReply {
                            id,
                            reply: Some(reply),
                            code: String::new(),
                            message: String::new(),
                        },
                        Err(refusal) => NodeMsg::AdminReply {
                            id,
                            reply: None,
                            code: refusal.code.as_str().to_owned(),
                            message: refusal.message,
                        },
                    };
                    let _ = relay.send(&from, &msg).await;
                });
            }
            // Handled before the registry is needed.
            NodeMsg::Probe { .. } => {}
            NodeMsg::AdminReply { id, reply, code, message } => {
                if let Some((_, waiting)) = self.inner.admin_waiting.remove(&id) {
                    let outcome = reply.ok_or_else(|| {
                        Refusal::new(ErrorCode::parse(&code).unwrap_or(ErrorCode::Internal), message)
                    });
                    let _ = waiting.send(outcome);
                }
            }
        }
    }

    /// Sends a command of the game backend to `room`'s owner and waits for its answer, up
    /// to the join timeout.
    pub async fn admin_remote(
        &self,
        owner: &str,
        room: &str,
        cmd: AdminCmd,
    ) -> Result<AdminReply, RemoteFailure> {
        let id = self.inner.next_admin.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner.admin_waiting.insert(id, tx);
        let msg = NodeMsg::Admin { id, from: self.inner.incarnation.to_string(), room: room.to_owned(), cmd };
        let outcome = match self.send(owner, &msg).await {
            // Not published: the owner never saw it.
            Err(e) => Err(RemoteFailure::NotOwner(e)),
            Ok(()) => match tokio::time::timeout(self.inner.join_timeout, rx).await {
                Ok(Ok(Ok(reply))) => Ok(reply),
                Ok(Ok(Err(refusal))) if refusal.message == NOT_OWNED_HERE => {
                    Err(RemoteFailure::NotOwner(refusal))
                }
                Ok(Ok(Err(refusal))) => Err(RemoteFailure::Refused(refusal)),
                Ok(Err(_)) | Err(_) => Err(RemoteFailure::NoAnswer(unavailable(format!(
                    "the room's owner {owner} did not answer in time"
                )))),
            },
        };
        self.inner.admin_waiting.remove(&id);
        outcome
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

    /// Publishes a probe to this node's own inbox, and makes the pub/sub link anew when
    /// [`PROBE_MISSES`] probes in a row that Redis took were not heard: the inbox
    /// subscription is gone (a Redis Cluster client may not restore a sharded subscription
    /// after a failover), and with it every command other nodes forward here. `sent` counts
    /// the probes Redis took.
    async fn probe_inbox(&self, sent: &mut u64) {
        if !self.healthy() {
            return;
        }
        let n = *sent + 1;
        let me = self.inner.incarnation.to_string();
        if self.send(&me, &NodeMsg::Probe { n }).await.is_err() {
            return; // Redis is unreachable: not a question of the subscription.
        }
        *sent = n;
        let heard = self.inner.probe_heard.load(Ordering::Relaxed);
        if n >= heard + PROBE_MISSES {
            tracing::error!(
                sent = n,
                heard,
                "this node no longer hears its inbox; making the pub/sub link anew"
            );
            // Counted afresh from here: the new link gets as many probes to prove itself.
            self.inner.probe_heard.store(n, Ordering::Relaxed);
            self.inner.stuck.notify_one();
        }
    }

    /// Every sixth of the lease TTL: a probe of the inbox, keepalives to owners, and a check
    /// that each followed room's owner still holds the lease.
    async fn watch(self, shutdown: CancellationToken) {
        // Polled at a sixth of the lease: a dead owner's room is noticed at most ttl/6 after
        // its lease expired (keepalives ride along; the owner waits 3 x ttl before giving up).
        let period = self.inner.lease_ttl / 6;
        let mut failures: HashMap<String, u32> = HashMap::new();
        let mut probes_sent = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.cancelled() => return,
            }
            self.probe_inbox(&mut probes_sent).await;
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
                        let _ = self.unsubscribe(&mut sink, &room).await;
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

/// The subscribing half: a classic pub/sub connection (one Redis), or a RESP3 cluster
/// connection that subscribes to sharded channels on their shards (Redis Cluster).
enum Subscriber {
    Single(PubSubSink),
    Cluster(ClusterConnection),
}

impl Subscriber {
    async fn subscribe(&mut self, channel: String) -> redis::RedisResult<()> {
        match self {
            Subscriber::Single(sink) => sink.subscribe(channel).await,
            Subscriber::Cluster(conn) => conn.ssubscribe(channel).await,
        }
    }

    async fn unsubscribe(&mut self, channel: String) -> redis::RedisResult<()> {
        match self {
            Subscriber::Single(sink) => sink.unsubscribe(channel).await,
            Subscriber::Cluster(conn) => conn.sunsubscribe(channel).await,
        }
    }
}

/// The receiving half of a [`Subscriber`].
enum Incoming {
    Single(PubSubStream),
    Cluster(mpsc::UnboundedReceiver<PushInfo>),
    /// Shut down.
    Closed,
}

/// What the receiving half heard.
enum Event {
    Message {
        channel: String,
        payload: Vec<u8>,
    },
    /// A cluster shard link broke (the client reconnects and resubscribes by itself).
    Disconnected,
    /// Redis ended a subscription (a sharded channel whose slot moved, or our own unsubscribe).
    Unsubscribed(String),
    /// Subscription confirmations and other pushes.
    Ignored,
}

impl Incoming {
    /// The next event; `None` when a single-Redis connection (or the cluster client) ended.
    async fn next(&mut self) -> Option<Event> {
        match self {
            Incoming::Single(stream) => {
                let msg = stream.next().await?;
                Some(Event::Message {
                    channel: msg.get_channel_name().to_owned(),
                    payload: msg.get_payload_bytes().to_vec(),
                })
            }
            Incoming::Cluster(rx) => {
                let push = rx.recv().await?;
                Some(match push.kind {
                    PushKind::SMessage | PushKind::Message => match (push.data.first(), push.data.get(1)) {
                        (Some(channel), Some(Value::BulkString(payload))) => match bulk_text(channel) {
                            Some(channel) => Event::Message { channel, payload: payload.clone() },
                            None => Event::Ignored,
                        },
                        _ => Event::Ignored,
                    },
                    PushKind::Disconnection => Event::Disconnected,
                    PushKind::SUnsubscribe => {
                        push.data.first().and_then(bulk_text).map_or(Event::Ignored, Event::Unsubscribed)
                    }
                    _ => Event::Ignored,
                })
            }
            Incoming::Closed => std::future::pending().await,
        }
    }
}

fn bulk_text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// A subscriber subscribed to this node's inbox, and its receiving half.
async fn subscribe_inbox(
    target: &Target,
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
    keys: &Keys,
    incarnation: &str,
) -> redis::RedisResult<(Subscriber, Incoming)> {
    let (mut sink, incoming) = match target {
        Target::Single(url) => {
            let client = Target::single_client(url, ca_file)?;
            let (sink, stream) = client.get_async_pubsub().await?.split();
            (Subscriber::Single(sink), Incoming::Single(stream))
        }
        Target::Cluster(seeds) => {
            let (tx, rx) = mpsc::unbounded_channel();
            let client = Target::cluster_builder(seeds, ca_file, timeout)?
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx)
                .build()?;
            (Subscriber::Cluster(client.get_async_connection().await?), Incoming::Cluster(rx))
        }
    };
    sink.subscribe(keys.inbox(incarnation)).await?;
    Ok((sink, incoming))
}

async fn publish(mut conn: Conn, command: &'static str, channel: String, mut rx: mpsc::Receiver<RoomWire>) {
    while let Some(first) = rx.recv().await {
        let mut pipe = redis::pipe();
        pipe.cmd(command).arg(&channel).arg(wire::encode(&first)).ignore();
        let mut n = 1;
        while n < PUBLISH_BATCH {
            let Ok(next) = rx.try_recv() else { break };
            pipe.cmd(command).arg(&channel).arg(wire::encode(&next)).ignore();
            n += 1;
        }
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            // Followers notice the gap (clients see a seq jump and resume) or the lease
            // change; nothing acknowledged depends on this publish.
            tracing::warn!(channel, error = %e, "publish failed");
        }
    }
}
