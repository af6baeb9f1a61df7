//! The room actor: one task per room that owns its state, its members and its sequence.
//!
//! Sessions send it [`RoomCmd`]s over a bounded mailbox. The actor validates and applies op
//! batches through the room type, assigns each accepted batch the next `seq`, stages the
//! delta, commits the staged deltas through the [`Backplane`] (one call per mailbox drain),
//! and only then fans them out: each delta is encoded once and the same bytes are queued to
//! every member. It never awaits a member: a full outbound queue marks the member lagging,
//! and it later gets one `resync` snapshot instead of the backlog (or is closed with 4102).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::{counter, gauge, histogram, Histogram};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant as TokioInstant};
use tokio_util::sync::CancellationToken;

use super::admin::{AdminCmd, AdminReply, RoomView};
use super::txn::{ParsedOp, PathLimits, Refusal, Txn};
use super::types::RoomType;
use crate::backplane::{
    Backplane, BackplaneError, Claim, CommitBatch, LogEntry, PlayerRecord, RoomSnapshot, SNAPSHOT_FORMAT,
};
use crate::cluster::relay::{Relay, RoomPublisher};
use crate::cluster::wire::RoomWire;
use crate::config::Config;
use crate::lobby::{Lobby, Seat};
use crate::protocol::{
    batch_frame, encode, CloseCode, Delta, Doc, ErrorCode, MemberInfo, Op, PresenceStatus, ServerMsg,
    Snapshot,
};
use crate::session::control::ConnControl;
use crate::session::token::SessionKeys;
use crate::telemetry::{names, HotMetrics};
use crate::webhook::{LeaveReason, WebhookEvent, Webhooks};

/// A player id, shared cheaply.
pub type PlayerId = Arc<str>;

/// A WebSocket connection on this node.
#[derive(Clone)]
pub struct LocalConn {
    /// Node-unique connection id; commands from a replaced connection are ignored by it.
    pub id: u64,
    /// The connection's bounded outbound queue of encoded frames.
    pub outbox: mpsc::Sender<Bytes>,
    /// Lets the room close the connection (replaced, slow consumer, left).
    pub control: Arc<ConnControl>,
}

/// The connection a member is attached to: here, or on another node of the cluster (whose
/// relay forwards the room's frames to it).
#[derive(Clone)]
pub enum MemberConn {
    Local(LocalConn),
    Remote { node: Arc<str>, id: u64 },
}

/// Identifies a connection cluster-wide: `node` is `None` for connections on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnId {
    pub node: Option<Arc<str>>,
    pub id: u64,
}

impl ConnId {
    pub fn local(id: u64) -> ConnId {
        ConnId { node: None, id }
    }
    pub fn remote(node: &str, id: u64) -> ConnId {
        ConnId { node: Some(Arc::from(node)), id }
    }
}

impl MemberConn {
    pub fn conn_id(&self) -> ConnId {
        match self {
            MemberConn::Local(c) => ConnId::local(c.id),
            MemberConn::Remote { node, id } => ConnId { node: Some(node.clone()), id: *id },
        }
    }

    /// The local connection, if it is one.
    pub fn local(&self) -> Option<&LocalConn> {
        match self {
            MemberConn::Local(c) => Some(c),
            MemberConn::Remote { .. } => None,
        }
    }
}

/// A join or resume, as the session hands it to the room.
#[derive(Clone)]
pub struct JoinRequest {
    pub conn: MemberConn,
    /// The player id proven by a join token (nodes with `--auth-key`); `None` in insecure
    /// development mode, where the room makes up an id for a new player.
    pub player: Option<PlayerId>,
    pub session: Option<String>,
    pub epoch: Option<u64>,
    pub seq: Option<u64>,
    /// Resume only: the attempt number (`join.attempt`).
    pub attempt: Option<u64>,
}

/// A successful join: the session now speaks for `player`.
#[derive(Debug, Clone)]
pub struct JoinOk {
    pub player: PlayerId,
}

/// Why a join (or an admin command) did not happen.
#[derive(Debug, Clone)]
pub enum JoinFailure {
    /// The room refused it (full, session expired, ...).
    Refused(Refusal),
    /// The room was closing; look it up again (it may be created anew).
    RoomClosed,
}

/// Commands to a room actor.
pub enum RoomCmd {
    Join {
        req: JoinRequest,
        reply: oneshot::Sender<Result<JoinOk, JoinFailure>>,
    },
    Ops {
        player: PlayerId,
        conn: ConnId,
        cid: u64,
        ops: Vec<Op>,
        received: Instant,
    },
    Msg {
        player: PlayerId,
        conn: ConnId,
        to: Option<String>,
        data: Doc,
    },
    Leave {
        player: PlayerId,
        conn: ConnId,
    },
    /// The connection closed without `leave`: start the reconnect grace.
    Detach {
        player: PlayerId,
        conn: ConnId,
    },
    /// A node relaying remote members of this room is still alive.
    Keepalive {
        node: Arc<str>,
    },
    /// A command of the game backend (admin API).
    Admin {
        cmd: AdminCmd,
        reply: oneshot::Sender<Result<AdminReply, JoinFailure>>,
    },
}

impl RoomCmd {
    /// Answers a command that waits for an answer (a join, an admin command) with
    /// `failure`, without carrying it out; the others need none.
    pub fn refuse(self, failure: JoinFailure) {
        match self {
            RoomCmd::Join { reply, .. } => {
                let _ = reply.send(Err(failure));
            }
            RoomCmd::Admin { reply, .. } => {
                let _ = reply.send(Err(failure));
            }
            RoomCmd::Ops { .. }
            | RoomCmd::Msg { .. }
            | RoomCmd::Leave { .. }
            | RoomCmd::Detach { .. }
            | RoomCmd::Keepalive { .. } => {}
        }
    }
}

/// One player of the room.
struct Member {
    player: PlayerId,
    /// `None` while disconnected (within the grace).
    conn: Option<MemberConn>,
    disconnected_at: Option<Instant>,
    /// Highest applied cid.
    last_cid: u64,
    /// Recently applied (cid, seq), oldest first; cids ascend.
    applied: VecDeque<(u64, u64)>,
    /// Set while the member's queue overflowed and it awaits a resync.
    lagging_since: Option<Instant>,
    /// The highest resume attempt number seen for this member's session (0: none).
    resume_attempt: u64,
}

/// A delta sequenced but not yet committed.
struct Staged {
    seq: u64,
    bytes: Bytes,
    received: Option<Instant>,
}

/// Everything the actor needs from the node.
pub struct RoomDeps {
    pub config: Arc<Config>,
    pub backplane: Arc<dyn Backplane>,
    pub metrics: HotMetrics,
    pub shutdown: CancellationToken,
    pub tokens: SessionKeys,
    /// Cluster mode: publishes frames for members on other nodes.
    pub relay: Option<Relay>,
    /// Tells the game's backend about rooms and players (`--webhook-url`); never waits.
    pub webhooks: Webhooks,
    /// Seats of registered (listed or private) rooms.
    pub lobby: Arc<dyn Lobby>,
    /// This node's id (admin API answers name the owner).
    pub node_id: Arc<str>,
}

/// Most commands handled before staged deltas are committed and fanned out.
const DRAIN_BATCH: usize = 256;
/// How often lagging members are checked for recovery.
const LAG_CHECK: Duration = Duration::from_millis(50);

/// The state of one room, owned by its actor task.
pub struct Room {
    id: Arc<str>,
    logic: Box<dyn RoomType>,
    epoch: u64,
    seq: u64,
    doc: Doc,
    size: usize,
    members: HashMap<PlayerId, Member>,
    /// Recent committed deltas (seq, encoded `delta` message) for resumes.
    ring: VecDeque<(u64, Bytes)>,
    staged: Vec<Staged>,
    /// What the next commit makes durable (deltas and membership changes, in order);
    /// only kept when the backplane is durable.
    staged_log: Vec<LogEntry>,
    /// Whether the backplane keeps a durable log (cluster mode).
    durable: bool,
    /// seq of the last delta in the durable log (volatile deltas after it are not logged).
    durable_head: u64,
    /// Broadcasts awaiting the next flush (only with a flush interval).
    pending: Vec<Bytes>,
    empty_since: Option<Instant>,
    /// Set when a commit failed: the room stops.
    failed: bool,
    deps: RoomDeps,
    limits: PathLimits,
    /// `gamerelay_delta_size_bytes{type}`, registered once per room.
    delta_bytes: Histogram,
    /// `gamerelay_state_size_bytes{type}`, registered once per room.
    state_bytes: Histogram,
    /// Cancelled by the backplane when this node must stop owning the room.
    fenced: CancellationToken,
    /// Cancelled by the backplane when the store lost the room: write it back.
    lost: CancellationToken,
    /// Set when `fenced`/`lost` were replaced (re-seed): the run loop watches the new ones.
    tokens_changed: bool,
    /// Cluster mode: the ordered queue of frames for members on other nodes.
    publisher: Option<RoomPublisher>,
    /// Last time each node relaying remote members was heard from.
    remote_seen: HashMap<Arc<str>, Instant>,
    /// The housekeeping deadline when nothing is due (an hour ahead, refreshed when it fires).
    idle_wake: Instant,
    /// seq and time of the last durable snapshot (`None`: none written yet).
    snapshot_seq: Option<u64>,
    snapshot_at: Instant,
    /// Whether the room starts anew (`room.created`): no stored data, or stored data without
    /// members (a room disposed earlier and created again while its keys live on). A
    /// failover that restores members continues the room instead.
    fresh: bool,
    /// Whether the lobby knows the room (`None` until a join asked).
    registered: Option<bool>,
    /// Set when the game backend closed the room: it is disposed of.
    closed: bool,
}

impl Room {
    /// A room owned under `claim`: restored from its durable state when there is one,
    /// else new with the type's initial state (seq 0).
    pub fn new(
        id: Arc<str>,
        mut logic: Box<dyn RoomType>,
        claim: Claim,
        deps: RoomDeps,
    ) -> Result<Room, Refusal> {
        let logic_name = logic.name();
        let now = Instant::now();
        let limits =
            PathLimits { max_depth: deps.config.max_path_depth, max_key_bytes: deps.config.max_key_bytes };
        let publisher = deps.relay.as_ref().map(|r| r.publisher(&id));
        let mut members = HashMap::new();
        let fresh = claim.restored.as_ref().is_none_or(|r| r.players.is_empty());
        let (doc, seq, snapshot_seq) = match claim.restored {
            Some(restored) => {
                if restored.room_type != logic_name {
                    return Err(Refusal::new(
                        ErrorCode::BadRoom,
                        format!("room {id} has type {}, not {logic_name}", restored.room_type),
                    ));
                }
                // Everyone the durable state knows of is back as disconnected: they resume
                // within the grace or leave (and the room type cleans up after them).
                let mut known: HashMap<PlayerId, PlayerRecord> =
                    restored.players.into_iter().map(|p| (Arc::from(p.player.as_str()), p)).collect();
                if let Some(players) = restored.state.get(["players"]).and_then(Doc::as_map) {
                    for player in players.keys() {
                        known.entry(Arc::from(player.as_str())).or_insert_with(|| PlayerRecord {
                            player: player.clone(),
                            last_cid: 0,
                            applied: Vec::new(),
                        });
                    }
                }
                for (player, record) in known {
                    let skip = record.applied.len().saturating_sub(deps.config.applied_cids);
                    members.insert(
                        player.clone(),
                        Member {
                            player,
                            conn: None,
                            disconnected_at: Some(now),
                            last_cid: record.last_cid,
                            applied: record.applied.into_iter().skip(skip).collect(),
                            lagging_since: None,
                            resume_attempt: 0,
                        },
                    );
                }
                gauge!(names::PLAYERS).increment(members.len() as f64);
                (restored.state, restored.seq, restored.seq)
            }
            None => {
                let mut doc = Doc::map();
                let mut size = doc.encoded_len();
                let mut txn = Txn::new(&mut doc, &mut size, deps.config.max_state_bytes);
                logic.init(&mut txn)?;
                txn.commit();
                (doc, 0, 0)
            }
        };
        let size = doc.encoded_len();
        Ok(Room {
            id,
            logic,
            epoch: claim.epoch,
            seq,
            doc,
            size,
            empty_since: members.is_empty().then_some(now),
            members,
            ring: VecDeque::new(),
            staged: Vec::new(),
            staged_log: Vec::new(),
            durable: deps.backplane.wants_snapshots(),
            durable_head: seq,
            pending: Vec::new(),
            failed: false,
            fenced: claim.fenced,
            lost: claim.lost,
            tokens_changed: false,
            publisher,
            remote_seen: HashMap::new(),
            // A new room's first snapshot is written before it serves anyone.
            snapshot_seq: (seq > 0).then_some(snapshot_seq),
            snapshot_at: now,
            idle_wake: now + Duration::from_secs(3600),
            registered: None,
            closed: false,
            delta_bytes: histogram!(names::DELTA_BYTES, "type" => logic_name),
            state_bytes: histogram!(names::STATE_BYTES, "type" => logic_name),
            deps,
            limits,
            fresh,
        })
    }

    /// Runs the room until it is idle past its TTL, fails, or the node shuts down.
    /// `on_dispose` unregisters the room; afterwards remaining commands are refused as
    /// `RoomClosed` so senders look the room up again.
    pub async fn run(mut self, mut rx: mpsc::Receiver<RoomCmd>, on_dispose: impl FnOnce()) {
        let flush_every = self.deps.config.flush_interval();
        let mut flush = tokio::time::interval(flush_every.unwrap_or(Duration::from_secs(3600)));
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.deps.shutdown.clone();
        // Cancellation futures are made once (each registers a waiter when first polled),
        // and anew only when the backplane hands out new tokens (re-seed).
        let shutting_down = shutdown.clone().cancelled_owned();
        tokio::pin!(shutting_down);
        let mut fenced = Box::pin(self.fenced.clone().cancelled_owned());
        let mut lost = Box::pin(self.lost.clone().cancelled_owned());
        if self.deps.backplane.wants_snapshots() && self.snapshot_seq.is_none() {
            self.write_snapshot().await;
        }
        if self.fresh && !self.failed {
            let (room, room_type) = (self.id.clone(), self.logic.name());
            self.deps.webhooks.emit(WebhookEvent::RoomCreated { room, room_type });
        }
        // One housekeeping timer, moved only when the next deadline changes.
        let mut wake = self.next_deadline();
        let timer = sleep_until(TokioInstant::from_std(wake));
        tokio::pin!(timer);
        loop {
            let next = self.next_deadline();
            if next != wake {
                wake = next;
                timer.as_mut().reset(TokioInstant::from_std(wake));
            }
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.handle(cmd).await;
                    let mut handled = 1;
                    while handled < DRAIN_BATCH {
                        let Ok(cmd) = rx.try_recv() else { break };
                        self.handle(cmd).await;
                        handled += 1;
                    }
                    self.commit().await;
                    self.maybe_snapshot().await;
                    if self.failed || self.closed {
                        break;
                    }
                }
                // Ticks only while something waits to be flushed: idle rooms do not wake.
                _ = flush.tick(), if flush_every.is_some() && !self.pending.is_empty() => self.flush(),
                _ = &mut timer => {
                    self.idle_wake = Instant::now() + Duration::from_secs(3600);
                    wake = self.idle_wake;
                    timer.as_mut().reset(TokioInstant::from_std(wake));
                    if self.housekeep(Instant::now()).await {
                        break;
                    }
                }
                _ = &mut shutting_down => break,
                _ = &mut fenced => {
                    self.failed = true;
                    break;
                }
                _ = &mut lost => self.reseed().await,
            }
            if std::mem::take(&mut self.tokens_changed) {
                fenced = Box::pin(self.fenced.clone().cancelled_owned());
                lost = Box::pin(self.lost.clone().cancelled_owned());
            }
            if self.failed {
                break;
            }
        }
        on_dispose();
        rx.close();
        while let Some(cmd) = rx.recv().await {
            cmd.refuse(JoinFailure::RoomClosed);
        }
        self.flush();
        let players = self.members.len();
        gauge!(names::PLAYERS).decrement(players as f64);
        if self.failed || shutdown.is_cancelled() {
            // Handing off: everyone reconnects and resumes on the room's next owner. On a
            // node shutdown, local sessions close their clients themselves (1012 with a
            // retry hint); members on other nodes are told here.
            if self.failed {
                counter!(names::HANDOFFS).increment(1);
                self.close_everyone(CloseCode::RoomMoved, "the room moved; reconnect");
            } else if let Some(p) = &self.publisher {
                p.send(RoomWire::Moved);
            }
            if !self.fenced.is_cancelled() {
                let _ = self.deps.backplane.release(&self.id, self.epoch, false).await;
            }
        } else {
            let (room, room_type) = (self.id.clone(), self.logic.name());
            self.deps.webhooks.emit(WebhookEvent::RoomDisposed { room, room_type });
            let _ = self.deps.backplane.release(&self.id, self.epoch, true).await;
            if self.registered != Some(false) {
                if let Err(e) = self.deps.lobby.remove(self.logic.name(), &self.id).await {
                    tracing::warn!(room = %self.id, error = %e, "could not remove the room from the lobby");
                }
            }
        }
    }

    /// Closes every member's connection (here and on other nodes).
    fn close_everyone(&mut self, code: CloseCode, detail: &str) {
        let conns: Vec<MemberConn> = self.members.values().filter_map(|m| m.conn.clone()).collect();
        for conn in &conns {
            self.close_conn(conn, code, detail);
        }
        if let Some(p) = &self.publisher {
            p.send(RoomWire::Moved);
        }
    }

    /// Closes one member connection with `code`.
    fn close_conn(&self, conn: &MemberConn, code: CloseCode, detail: &str) {
        match conn {
            MemberConn::Local(c) => c.control.close(code, detail),
            MemberConn::Remote { node, id } => {
                if let Some(p) = &self.publisher {
                    let reason = if detail.is_empty() {
                        code.reason().to_owned()
                    } else {
                        format!("{}: {detail}", code.reason())
                    };
                    p.send(RoomWire::Close { node: node.to_string(), conn: *id, code: code.code(), reason });
                }
            }
        }
    }

    async fn handle(&mut self, cmd: RoomCmd) {
        match cmd {
            RoomCmd::Join { req, reply } => {
                // A joiner's snapshot must not include uncommitted changes.
                self.commit().await;
                self.flush();
                let known = req.player.clone().filter(|p| self.members.contains_key(p));
                let result = match (req.session.clone(), known) {
                    (Some(session), _) => self.resume(session, req),
                    // An authenticated player who is still a member (another device, or a
                    // lost session token) takes its place back, as a resume would.
                    (None, Some(player)) => {
                        let session = self.deps.tokens.issue(&self.id, &player);
                        self.reattach(player, session, req)
                    }
                    (None, None) => {
                        let mut req = req;
                        let player = req.player.get_or_insert_with(new_player_id).clone();
                        match self.take_seat(&player).await {
                            Ok(()) => match self.admit(req) {
                                Ok((player, conn)) => {
                                    // The joiner's snapshot includes its own arrival: commit first.
                                    self.commit().await;
                                    self.attach_new(player, conn)
                                }
                                Err(refusal) => {
                                    self.free_seat(&player);
                                    Err(refusal)
                                }
                            },
                            Err(refusal) => Err(refusal),
                        }
                    }
                };
                let _ = reply.send(result.map_err(JoinFailure::Refused));
            }
            RoomCmd::Ops { player, conn, cid, ops, received } => self.ops(&player, conn, cid, ops, received),
            RoomCmd::Msg { player, conn, to, data } => self.msg(&player, conn, to, data),
            RoomCmd::Leave { player, conn } => {
                if self.is_current(&player, &conn) {
                    if let Some(c) = self.members.get(&player).and_then(|m| m.conn.clone()) {
                        self.close_conn(&c, CloseCode::Normal, "");
                    }
                    self.remove_member(&player, LeaveReason::Left);
                }
            }
            RoomCmd::Detach { player, conn } => {
                if self.is_current(&player, &conn) {
                    self.detach(&player, Instant::now());
                }
            }
            RoomCmd::Keepalive { node } => {
                self.remote_seen.insert(node, Instant::now());
            }
            RoomCmd::Admin { cmd, reply } => {
                let result = self.admin(cmd).await;
                let _ = reply.send(result.map_err(JoinFailure::Refused));
            }
        }
    }

    /// Carries out a command of the game backend.
    async fn admin(&mut self, cmd: AdminCmd) -> Result<AdminReply, Refusal> {
        match cmd {
            AdminCmd::Inspect { state } => {
                // What is shown is what members were shown: committed changes only.
                self.commit().await;
                self.flush();
                Ok(AdminReply::Room(RoomView {
                    room: self.id.to_string(),
                    room_type: self.logic.name().to_owned(),
                    owner: self.deps.node_id.to_string(),
                    epoch: self.epoch,
                    seq: self.seq,
                    members: self.member_list(),
                    hash: self.doc.state_hash(),
                    state: state.then(|| self.doc.clone()),
                }))
            }
            AdminCmd::Write { ops } => self.server_write(ops).await,
            AdminCmd::Close { reason } => {
                let conns: Vec<MemberConn> = self.members.values().filter_map(|m| m.conn.clone()).collect();
                for conn in &conns {
                    self.close_conn(conn, CloseCode::RoomClosed, &reason);
                }
                self.closed = true;
                Ok(AdminReply::Closed)
            }
            AdminCmd::Kick { player, reason } => {
                let Some(member) = self.members.get(player.as_str()) else {
                    return Err(Refusal::new(
                        ErrorCode::UnknownPlayer,
                        format!("{player} is not in this room"),
                    ));
                };
                let (player, conn) = (member.player.clone(), member.conn.clone());
                if let Some(conn) = conn {
                    self.close_conn(&conn, CloseCode::Kicked, &reason);
                }
                self.remove_member(&player, LeaveReason::Kicked);
                Ok(AdminReply::Kicked)
            }
            AdminCmd::Message { to, data } => {
                let frame =
                    encode(&ServerMsg::Msg { room: self.id.to_string(), from: None, to: to.clone(), data });
                match to {
                    None => {
                        let delivered = self.members.values().filter(|m| m.conn.is_some()).count() as u32;
                        self.broadcast(frame);
                        Ok(AdminReply::Sent { delivered })
                    }
                    Some(to) => {
                        let target = self
                            .members
                            .get(to.as_str())
                            .filter(|m| m.conn.is_some())
                            .map(|m| m.player.clone());
                        let Some(target) = target else {
                            return Err(Refusal::new(
                                ErrorCode::UnknownPlayer,
                                format!("{to} is not connected to this room"),
                            ));
                        };
                        self.send_to(&target, frame);
                        Ok(AdminReply::Sent { delivered: 1 })
                    }
                }
            }
        }
    }

    /// Checks a batch's size and parses its ops against the path limits.
    fn parse_batch(&self, ops: Vec<Op>) -> Result<Vec<ParsedOp>, Refusal> {
        let max_ops = self.deps.config.max_ops_per_batch;
        if ops.is_empty() || ops.len() > max_ops {
            return Err(Refusal::new(
                ErrorCode::TooManyOps,
                format!("a batch holds 1 to {max_ops} ops, this one has {}", ops.len()),
            ));
        }
        let limits = self.limits;
        ops.into_iter().map(|op| ParsedOp::parse(op, limits)).collect()
    }

    /// Applies ops of the server: any path (server-owned state under `server/` included),
    /// the same limits as players' ops, no room type rules. Answered once durable.
    async fn server_write(&mut self, ops: Vec<Op>) -> Result<AdminReply, Refusal> {
        let parsed = self.parse_batch(ops)?;
        let mut txn = Txn::new(&mut self.doc, &mut self.size, self.deps.config.max_state_bytes);
        for op in parsed {
            txn.apply(op)?;
        }
        txn.check_size()?;
        let resolved = txn.commit();
        if !resolved.is_empty() {
            self.stage(None, None, resolved, None);
        }
        self.commit().await;
        if self.failed {
            return Err(Refusal::new(
                ErrorCode::Unavailable,
                "the room moved while the write was being made durable; read the room to see whether it applied",
            ));
        }
        Ok(AdminReply::Written { epoch: self.epoch, seq: self.seq })
    }

    /// Whether `conn` is the connection `player` is attached to now. Notes remote nodes
    /// as alive when they speak for a member.
    fn is_current(&mut self, player: &PlayerId, conn: &ConnId) -> bool {
        let current =
            self.members.get(player).and_then(|m| m.conn.as_ref()).is_some_and(|c| c.conn_id() == *conn);
        if let (true, Some(node)) = (current, &conn.node) {
            self.remote_seen.insert(node.clone(), Instant::now());
        }
        current
    }

    fn snapshot(&self) -> Snapshot {
        self.state_bytes.record(self.size as f64);
        Snapshot { epoch: self.epoch, seq: self.seq, state: self.doc.clone(), hash: self.doc.state_hash() }
    }

    fn member_list(&self) -> Vec<MemberInfo> {
        let mut list: Vec<MemberInfo> = self
            .members
            .values()
            .map(|m| MemberInfo {
                player: m.player.to_string(),
                status: if m.conn.is_some() { PresenceStatus::Joined } else { PresenceStatus::Disconnected },
            })
            .collect();
        list.sort_by(|a, b| a.player.cmp(&b.player));
        list
    }

    /// Takes a new player's seat if the room is registered in the lobby (listed or private
    /// rooms have `max_players` seats; see [`crate::lobby`]). An unregistered room is known
    /// to stay so (rooms are registered before they start), so it asks only once.
    async fn take_seat(&mut self, player: &str) -> Result<(), Refusal> {
        if self.registered == Some(false) {
            return Ok(());
        }
        match self.deps.lobby.take_seat(self.logic.name(), &self.id, player).await {
            Ok(Seat::Taken) => {
                self.registered = Some(true);
                Ok(())
            }
            Ok(Seat::Unregistered) => {
                self.registered = Some(false);
                Ok(())
            }
            Ok(Seat::Full) => {
                self.registered = Some(true);
                counter!(names::JOINS, "outcome" => "refused").increment(1);
                crate::limits::hit("players_per_room");
                Err(Refusal::new(ErrorCode::RoomFull, format!("every seat of room {} is taken", self.id)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Frees a player's seat in the lobby, in the background (the room does not wait).
    fn free_seat(&self, player: &str) {
        if self.registered == Some(false) {
            return;
        }
        crate::lobby::free_seat_later(&self.deps.lobby, self.logic.name(), &self.id, player);
    }

    /// Admits a new player: presence to the others, the room type's arrival change staged.
    /// The player is attached (and told `joined`) by [`Room::attach_new`] after the commit.
    fn admit(&mut self, req: JoinRequest) -> Result<(PlayerId, MemberConn), Refusal> {
        if self.members.len() >= self.deps.config.max_players_per_room {
            counter!(names::JOINS, "outcome" => "refused").increment(1);
            crate::limits::hit("players_per_room");
            return Err(Refusal::new(
                ErrorCode::RoomFull,
                format!("room {} has {} players, the most it may hold", self.id, self.members.len()),
            ));
        }
        let player: PlayerId = req.player.clone().unwrap_or_else(new_player_id);
        let mut txn = Txn::new(&mut self.doc, &mut self.size, self.deps.config.max_state_bytes);
        self.logic.on_join(&player, &mut txn, Instant::now())?;
        let ops = txn.commit();
        self.broadcast(encode(&ServerMsg::Presence {
            room: self.id.to_string(),
            player: player.to_string(),
            status: PresenceStatus::Joined,
        }));
        if !ops.is_empty() {
            self.stage(None, None, ops, None);
        }
        if self.durable {
            self.staged_log.push(LogEntry::Joined { after: self.seq, player: player.to_string() });
        }
        self.members.insert(
            player.clone(),
            Member {
                player: player.clone(),
                conn: None,
                disconnected_at: None,
                last_cid: 0,
                applied: VecDeque::new(),
                lagging_since: None,
                resume_attempt: 0,
            },
        );
        self.empty_since = None;
        gauge!(names::PLAYERS).increment(1.0);
        Ok((player, req.conn))
    }

    fn attach_new(&mut self, player: PlayerId, conn: MemberConn) -> Result<JoinOk, Refusal> {
        if self.failed {
            return Err(Refusal::new(ErrorCode::Unavailable, "the room failed; try again"));
        }
        let Some(member) = self.members.get_mut(&player) else {
            return Err(Refusal::new(ErrorCode::Internal, "player vanished while joining"));
        };
        if let MemberConn::Remote { node, .. } = &conn {
            self.remote_seen.insert(node.clone(), Instant::now());
        }
        member.conn = Some(conn);
        let session = self.deps.tokens.issue(&self.id, &player);
        counter!(names::JOINS, "outcome" => "new").increment(1);
        let joined = ServerMsg::Joined {
            room: self.id.to_string(),
            room_type: self.logic.name().to_owned(),
            player: player.to_string(),
            session,
            resumed: false,
            cid: 0,
            members: self.member_list(),
            snapshot: Some(self.snapshot()),
        };
        self.send_joined(&player, encode(&joined));
        let (room, room_type) = (self.id.clone(), self.logic.name());
        self.deps.webhooks.emit(WebhookEvent::PlayerJoined { room, room_type, player: player.clone() });
        Ok(JoinOk { player })
    }

    fn resume(&mut self, session: String, req: JoinRequest) -> Result<JoinOk, Refusal> {
        let expired = || {
            counter!(names::JOINS, "outcome" => "refused").increment(1);
            Refusal::new(
                ErrorCode::SessionExpired,
                "unknown session or its reconnect grace is over; join afresh",
            )
        };
        let player: PlayerId = match self.deps.tokens.verify(&self.id, &session) {
            Some(p) => Arc::from(p),
            None => return Err(expired()),
        };
        if req.player.as_ref().is_some_and(|p| *p != player) {
            counter!(names::JOINS, "outcome" => "refused").increment(1);
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "the session belongs to another player than the join token",
            ));
        }
        let Some(member) = self.members.get_mut(&player) else {
            return Err(expired());
        };
        if let Some(attempt) = req.attempt {
            // The same attempt on the same connection is a join forwarded again (its first
            // answer was lost), not a stale one.
            let again = member.conn.as_ref().is_some_and(|c| c.conn_id() == req.conn.conn_id());
            if attempt < member.resume_attempt || (attempt == member.resume_attempt && !again) {
                counter!(names::JOINS, "outcome" => "refused").increment(1);
                return Err(Refusal::new(
                    ErrorCode::StaleResume,
                    format!(
                        "resume attempt {attempt} of this session is not above attempt {} that came first",
                        member.resume_attempt
                    ),
                ));
            }
            member.resume_attempt = attempt;
        }
        self.reattach(player, session, req)
    }

    /// Attaches `req`'s connection to the existing member `player` (a resume): the old
    /// connection, if any, is closed as replaced; the client gets the deltas it missed or a
    /// snapshot.
    fn reattach(&mut self, player: PlayerId, session: String, req: JoinRequest) -> Result<JoinOk, Refusal> {
        let Some(member) = self.members.get_mut(&player) else {
            return Err(Refusal::new(ErrorCode::Internal, "player vanished while resuming"));
        };
        let was_disconnected = member.conn.is_none();
        let old = member.conn.take();
        if let MemberConn::Remote { node, .. } = &req.conn {
            self.remote_seen.insert(node.clone(), Instant::now());
        }
        member.conn = Some(req.conn);
        member.disconnected_at = None;
        member.lagging_since = None;
        let last_cid = member.last_cid;
        // The same connection again (its node forwarded the join once more after losing the
        // first answer) is not replaced by itself.
        let new_conn = member.conn.as_ref().map(MemberConn::conn_id);
        if let Some(old) = old.filter(|o| Some(o.conn_id()) != new_conn) {
            self.close_conn(&old, CloseCode::Replaced, "a newer connection resumed this session");
            counter!(names::SESSIONS_REPLACED).increment(1);
        }
        if was_disconnected {
            self.broadcast(encode(&ServerMsg::Presence {
                room: self.id.to_string(),
                player: player.to_string(),
                status: PresenceStatus::Returned,
            }));
        }
        // Exactly the missed deltas when the client's history is ours and still in the ring.
        let missed = match (req.epoch, req.seq) {
            (Some(epoch), Some(seq)) if epoch == self.epoch && seq <= self.seq => {
                let oldest = self.ring.front().map_or(self.seq + 1, |(s, _)| *s);
                (seq + 1 >= oldest).then(|| {
                    self.ring.iter().filter(|(s, _)| *s > seq).map(|(_, b)| b.clone()).collect::<Vec<_>>()
                })
            }
            _ => None,
        };
        let outcome = if missed.is_some() { "resumed_deltas" } else { "resumed_snapshot" };
        counter!(names::JOINS, "outcome" => outcome).increment(1);
        let joined = ServerMsg::Joined {
            room: self.id.to_string(),
            room_type: self.logic.name().to_owned(),
            player: player.to_string(),
            session,
            resumed: true,
            cid: last_cid,
            members: self.member_list(),
            snapshot: if missed.is_some() { None } else { Some(self.snapshot()) },
        };
        self.send_joined(&player, encode(&joined));
        match missed {
            Some(missed) if missed.len() == 1 => self.send_to(&player, missed[0].clone()),
            Some(missed) if !missed.is_empty() => self.send_to(&player, batch_frame(missed.iter())),
            _ => {}
        }
        Ok(JoinOk { player })
    }

    fn ops(&mut self, player: &PlayerId, conn: ConnId, cid: u64, ops: Vec<Op>, received: Instant) {
        if !self.is_current(player, &conn) {
            return;
        }
        match self.apply_ops(player, cid, ops) {
            Ok(Some(resolved)) => {
                self.deps.metrics.ops_accepted.increment(1);
                self.stage(Some(cid), Some(player.clone()), resolved, Some(received));
            }
            Ok(None) => {}
            Err(refusal) => {
                counter!(names::OPS_REJECTED, "code" => refusal.code.as_str()).increment(1);
                match refusal.code {
                    ErrorCode::TooManyOps => crate::limits::hit("ops_per_batch"),
                    ErrorCode::StateTooLarge => crate::limits::hit("state_size"),
                    _ => {}
                }
                let reject = ServerMsg::Reject {
                    cid,
                    code: refusal.code.as_str().to_owned(),
                    message: refusal.message,
                };
                self.send_to(player, encode(&reject));
            }
        }
    }

    /// Applies one op batch. `Ok(None)`: a retried cid, answered with its original ack.
    fn apply_ops(&mut self, player: &PlayerId, cid: u64, ops: Vec<Op>) -> Result<Option<Vec<Op>>, Refusal> {
        let Some(member) = self.members.get(player) else {
            return Ok(None);
        };
        if cid == 0 {
            return Err(Refusal::new(ErrorCode::StaleCid, "cid must be at least 1"));
        }
        if cid <= member.last_cid {
            let found =
                member.applied.binary_search_by_key(&cid, |(c, _)| *c).ok().map(|i| member.applied[i].1);
            return match found {
                Some(seq) => {
                    counter!(names::OPS_DUPLICATE).increment(1);
                    self.send_to(player, encode(&ServerMsg::Ack { cid, seq }));
                    Ok(None)
                }
                None => Err(Refusal::new(
                    ErrorCode::StaleCid,
                    format!(
                        "cid {cid} is not above your last applied cid {} and is not a known retry",
                        member.last_cid
                    ),
                )),
            };
        }
        let parsed = self.parse_batch(ops)?;
        let mut txn = Txn::new(&mut self.doc, &mut self.size, self.deps.config.max_state_bytes);
        self.logic.apply(player, parsed, &mut txn, Instant::now())?;
        txn.check_size()?;
        let resolved = txn.commit();
        let applied_cids = self.deps.config.applied_cids;
        if let Some(member) = self.members.get_mut(player) {
            member.last_cid = cid;
            member.applied.push_back((cid, self.seq + 1));
            while member.applied.len() > applied_cids {
                member.applied.pop_front();
            }
        }
        Ok(Some(resolved))
    }

    fn msg(&mut self, player: &PlayerId, conn: ConnId, to: Option<String>, data: Doc) {
        if !self.is_current(player, &conn) {
            return;
        }
        let frame = encode(&ServerMsg::Msg {
            room: self.id.to_string(),
            from: Some(player.to_string()),
            to: to.clone(),
            data,
        });
        match to {
            None => self.broadcast(frame),
            Some(to) => {
                let target =
                    self.members.get(to.as_str()).filter(|m| m.conn.is_some()).map(|m| m.player.clone());
                match target {
                    Some(target) => self.send_to(&target, frame),
                    None => {
                        let error = ServerMsg::Error {
                            code: ErrorCode::UnknownPlayer.as_str().to_owned(),
                            message: format!("{to} is not connected to this room"),
                            retry_ms: None,
                        };
                        self.send_to(player, encode(&error));
                    }
                }
            }
        }
    }

    fn detach(&mut self, player: &PlayerId, now: Instant) {
        let Some(member) = self.members.get_mut(player) else {
            return;
        };
        member.conn = None;
        member.disconnected_at = Some(now);
        member.lagging_since = None;
        self.broadcast(encode(&ServerMsg::Presence {
            room: self.id.to_string(),
            player: player.to_string(),
            status: PresenceStatus::Disconnected,
        }));
    }

    /// Removes a player for good (left, timed out, kicked): the others see it leave and the
    /// game's backend hears why.
    fn remove_member(&mut self, player: &PlayerId, reason: LeaveReason) {
        let Some(member) = self.members.remove(player) else {
            return;
        };
        drop(member);
        self.free_seat(player);
        let (room, room_type) = (self.id.clone(), self.logic.name());
        self.deps.webhooks.emit(WebhookEvent::PlayerGone { room, room_type, player: player.clone(), reason });
        if self.durable {
            self.staged_log.push(LogEntry::Left { after: self.seq, player: player.to_string() });
        }
        gauge!(names::PLAYERS).decrement(1.0);
        self.broadcast(encode(&ServerMsg::Presence {
            room: self.id.to_string(),
            player: player.to_string(),
            status: PresenceStatus::Left,
        }));
        let mut txn = Txn::new(&mut self.doc, &mut self.size, usize::MAX);
        match self.logic.on_leave(player, &mut txn) {
            Ok(()) => {
                let ops = txn.commit();
                if !ops.is_empty() {
                    self.stage(None, None, ops, None);
                }
            }
            Err(e) => {
                tracing::warn!(room = %self.id, %player, error = %e, "room type refused a leave")
            }
        }
        if self.members.is_empty() {
            self.empty_since = Some(Instant::now());
        }
    }

    /// Sequences a delta and stages it for the next commit.
    fn stage(&mut self, cid: Option<u64>, by: Option<PlayerId>, ops: Vec<Op>, received: Option<Instant>) {
        self.seq += 1;
        let delta = ServerMsg::Delta(Delta {
            room: self.id.to_string(),
            epoch: self.epoch,
            seq: self.seq,
            cid,
            by: by.map(|p| p.to_string()),
            ops,
        });
        // Volatile: only paths the room type declares volatile (e.g. arena positions). Such
        // a delta is sequenced and fanned out like any other, but not written to the log:
        // it survives a failover only as of the last snapshot (the new owner's epoch tells
        // clients their history diverged).
        let volatile = match &delta {
            ServerMsg::Delta(d) => {
                !d.ops.is_empty() && d.ops.iter().all(|op| self.logic.is_volatile(op.path()))
            }
            _ => false,
        };
        let bytes = encode(&delta);
        self.delta_bytes.record(bytes.len() as f64);
        if self.durable && !volatile {
            self.staged_log.push(LogEntry::Delta { seq: self.seq, bytes: bytes.clone() });
        }
        self.deps.metrics.deltas.increment(1);
        self.staged.push(Staged { seq: self.seq, bytes, received });
    }

    /// Commits staged deltas through the backplane, then fans them out. On failure (the
    /// outcome is unknown) the room is marked failed and stops.
    async fn commit(&mut self) {
        if (self.staged.is_empty() && self.staged_log.is_empty()) || self.failed {
            return;
        }
        let staged = std::mem::take(&mut self.staged);
        let entries = std::mem::take(&mut self.staged_log);
        if entries.is_empty() {
            // Volatile deltas only (or the embedded store): nothing to make durable.
            self.publish(staged);
            return;
        }
        let batch = CommitBatch { prev_seq: self.durable_head, entries: &entries };
        let next_head = entries
            .iter()
            .filter_map(|e| match e {
                LogEntry::Delta { seq, .. } => Some(*seq),
                _ => None,
            })
            .max()
            .unwrap_or(self.durable_head);
        match self.deps.backplane.commit(&self.id, self.epoch, batch).await {
            Ok(()) => {
                self.durable_head = next_head;
                self.publish(staged);
            }
            Err(BackplaneError::Lost) => {
                // Redis lost the room: write it back from memory (which includes this
                // batch), then show the batch; members also get a resync into the new epoch.
                self.reseed().await;
                if !self.failed {
                    self.publish(staged);
                }
            }
            Err(e) => {
                // Fenced, or the outcome is unknown: nothing of the batch was shown to anyone.
                // The room stops; whoever owns it next restores the durable truth from the
                // backplane, and the members reconnect (4103) and resume there.
                tracing::warn!(room = %self.id, error = %e, "commit failed; handing the room off");
                self.failed = true;
            }
        }
    }

    /// Puts committed deltas in the ring and fans them out.
    fn publish(&mut self, staged: Vec<Staged>) {
        let ring_len = self.deps.config.delta_ring;
        for s in staged {
            self.ring.push_back((s.seq, s.bytes.clone()));
            if self.ring.len() > ring_len {
                self.ring.pop_front();
            }
            self.broadcast(s.bytes);
            if let Some(received) = s.received {
                self.deps.metrics.fanout_seconds.record(received.elapsed().as_secs_f64());
            }
        }
    }

    /// Sends to every connected member: now, or at the next flush when coalescing.
    fn broadcast(&mut self, frame: Bytes) {
        if self.deps.config.flush_interval().is_some() {
            self.pending.push(frame);
            return;
        }
        self.deliver_all(frame);
    }

    /// Queues `frame` for every local member, and once for all remote ones.
    fn deliver_all(&mut self, frame: Bytes) {
        let now = Instant::now();
        let mut remote = false;
        for m in self.members.values_mut() {
            remote |= matches!(m.conn, Some(MemberConn::Remote { .. }));
            deliver(m, &frame, now, &self.deps.metrics);
        }
        if remote {
            self.publish_wire(RoomWire::Broadcast { frame });
        }
    }

    /// Queues a frame for members on other nodes. A full queue means Redis cannot keep up
    /// with this room: it stops, and everyone resumes on its next owner.
    fn publish_wire(&mut self, wire: RoomWire) {
        if let Some(p) = &self.publisher {
            if !p.send(wire) {
                tracing::error!(room = %self.id, "publish queue full; handing the room off");
                self.failed = true;
            }
        }
    }

    /// Sends pending broadcasts as one frame per member.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let frame =
            if self.pending.len() == 1 { self.pending[0].clone() } else { batch_frame(self.pending.iter()) };
        self.pending.clear();
        self.deliver_all(frame);
    }

    /// Sends a message to one member at once (private messages are never coalesced).
    fn send_to(&mut self, player: &PlayerId, frame: Bytes) {
        let now = Instant::now();
        let Some(m) = self.members.get_mut(player) else { return };
        match &m.conn {
            Some(MemberConn::Remote { node, id }) => {
                let wire = RoomWire::To { node: node.to_string(), conn: *id, frame };
                self.publish_wire(wire);
            }
            _ => deliver(m, &frame, now, &self.deps.metrics),
        }
    }

    /// Sends `joined`: for a remote member, also the signal that its join succeeded.
    fn send_joined(&mut self, player: &PlayerId, frame: Bytes) {
        let remote = self.members.get(player).and_then(|m| match &m.conn {
            Some(MemberConn::Remote { node, id }) => Some((node.to_string(), *id)),
            _ => None,
        });
        match remote {
            Some((node, conn)) => {
                self.publish_wire(RoomWire::Joined { node, conn, player: player.to_string(), frame })
            }
            None => self.send_to(player, frame),
        }
    }

    /// Writes a durable snapshot when enough deltas or time have passed since the last.
    async fn maybe_snapshot(&mut self) {
        if !self.deps.backplane.wants_snapshots() || self.failed {
            return;
        }
        let due = match self.snapshot_seq {
            None => true,
            Some(at) => {
                self.seq >= at + self.deps.config.snapshot_every
                    || (self.seq > at && self.snapshot_at.elapsed() >= self.deps.config.snapshot_interval())
            }
        };
        if due {
            self.write_snapshot().await;
        }
    }

    /// Writes the room back after the store lost it (Redis restarted empty), under a new
    /// epoch; every member jumps to it with a `resync`.
    async fn reseed(&mut self) {
        let snapshot = self.durable_snapshot();
        match self.deps.backplane.reseed(&self.id, &snapshot).await {
            Ok(claim) => {
                self.epoch = claim.epoch;
                self.fenced = claim.fenced;
                self.lost = claim.lost;
                self.tokens_changed = true;
                self.snapshot_seq = Some(self.seq);
                self.snapshot_at = Instant::now();
                self.durable_head = self.seq;
                // Deltas of the old epoch cannot serve resumes in the new one.
                self.ring.clear();
                let players: Vec<(PlayerId, u64)> = self
                    .members
                    .values()
                    .filter(|m| m.conn.is_some())
                    .map(|m| (m.player.clone(), m.last_cid))
                    .collect();
                for (player, cid) in players {
                    let resync = ServerMsg::Resync {
                        room: self.id.to_string(),
                        snapshot: self.snapshot(),
                        cid,
                        members: self.member_list(),
                    };
                    counter!(names::RESYNCS).increment(1);
                    self.send_to(&player, encode(&resync));
                }
            }
            Err(e) => {
                tracing::warn!(room = %self.id, error = %e, "re-seed failed; handing the room off");
                self.failed = true;
            }
        }
    }

    /// The room as the backplane stores it.
    fn durable_snapshot(&self) -> RoomSnapshot {
        RoomSnapshot {
            v: SNAPSHOT_FORMAT,
            room_type: self.logic.name().to_owned(),
            epoch: self.epoch,
            seq: self.seq,
            state: self.doc.clone(),
            players: self
                .members
                .values()
                .map(|m| PlayerRecord {
                    player: m.player.to_string(),
                    last_cid: m.last_cid,
                    applied: m.applied.iter().copied().collect(),
                })
                .collect(),
        }
    }

    async fn write_snapshot(&mut self) {
        let snapshot = self.durable_snapshot();
        let started = Instant::now();
        match self.deps.backplane.snapshot(&self.id, &snapshot).await {
            Ok(()) => {
                histogram!(names::SNAPSHOT_SECONDS).record(started.elapsed().as_secs_f64());
                self.snapshot_seq = Some(self.seq);
                self.snapshot_at = Instant::now();
                // The snapshot covers volatile deltas too: the log's head moved up to it.
                self.durable_head = self.durable_head.max(self.seq);
            }
            Err(BackplaneError::Lost) => self.reseed().await,
            Err(BackplaneError::Unavailable(e)) if self.snapshot_seq.is_some() => {
                // Retried at the next opportunity; the log still holds everything.
                tracing::warn!(room = %self.id, error = %e, "snapshot failed");
                self.snapshot_at = Instant::now();
            }
            Err(e) => {
                tracing::warn!(room = %self.id, error = %e, "snapshot refused; handing the room off");
                self.failed = true;
            }
        }
    }

    /// The next instant housekeeping has work: a grace expiring, a lagging member to check,
    /// the idle TTL of an empty room.
    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        // Far enough to mean "nothing to do", and stable between calls so the timer is not
        // moved on every command.
        let mut next = self.idle_wake;
        let grace = self.deps.config.reconnect_grace();
        for m in self.members.values() {
            if let Some(at) = m.disconnected_at {
                next = next.min(at + grace);
            }
            if m.lagging_since.is_some() {
                next = next.min(now + LAG_CHECK);
            }
        }
        if let Some(since) = self.empty_since {
            next = next.min(since + self.deps.config.room_idle_ttl());
        }
        if self.members.values().any(|m| matches!(m.conn, Some(MemberConn::Remote { .. }))) {
            next = next.min(now + self.deps.config.lease_ttl());
        }
        if self.deps.backplane.wants_snapshots() && self.snapshot_seq.is_some_and(|at| self.seq > at) {
            next = next.min(self.snapshot_at + self.deps.config.snapshot_interval());
        }
        next
    }

    /// Expires sessions, recovers or drops lagging members. Returns true to dispose the room.
    async fn housekeep(&mut self, now: Instant) -> bool {
        let grace = self.deps.config.reconnect_grace();
        let expired: Vec<PlayerId> = self
            .members
            .values()
            .filter(|m| m.disconnected_at.is_some_and(|at| now >= at + grace))
            .map(|m| m.player.clone())
            .collect();
        for player in expired {
            counter!(names::SESSIONS_EXPIRED).increment(1);
            self.remove_member(&player, LeaveReason::TimedOut);
        }
        let lagging: Vec<PlayerId> =
            self.members.values().filter(|m| m.lagging_since.is_some()).map(|m| m.player.clone()).collect();
        for player in lagging {
            self.check_lagging(&player, now);
        }
        // Members relayed by a node that went silent (crashed) start their grace.
        let silent_after = self.deps.config.lease_ttl() * 3;
        let silent: Vec<PlayerId> = self
            .members
            .values()
            .filter(|m| match &m.conn {
                Some(MemberConn::Remote { node, .. }) => self
                    .remote_seen
                    .get(node)
                    .is_none_or(|seen| now.saturating_duration_since(*seen) > silent_after),
                _ => false,
            })
            .map(|m| m.player.clone())
            .collect();
        for player in silent {
            self.detach(&player, now);
        }
        self.commit().await;
        self.maybe_snapshot().await;
        self.failed || self.empty_since.is_some_and(|since| now >= since + self.deps.config.room_idle_ttl())
    }

    /// A lagging member gets a resync once its queue has room again, or is closed after
    /// the slow-consumer timeout.
    fn check_lagging(&mut self, player: &PlayerId, now: Instant) {
        let timeout = self.deps.config.slow_consumer_timeout();
        let half = self.deps.config.outbox_frames / 2;
        let Some(m) = self.members.get(player) else {
            return;
        };
        let (Some(since), Some(MemberConn::Local(conn))) = (m.lagging_since, m.conn.clone()) else {
            return;
        };
        if now >= since + timeout {
            counter!(names::SLOW_CONSUMERS).increment(1);
            conn.control.close(CloseCode::SlowConsumer, "could not keep up with the room");
            self.detach(player, now);
            return;
        }
        if conn.outbox.capacity() >= half {
            let resync = ServerMsg::Resync {
                room: self.id.to_string(),
                snapshot: self.snapshot(),
                cid: m.last_cid,
                members: self.member_list(),
            };
            if let Some(m) = self.members.get_mut(player) {
                m.lagging_since = None;
            }
            counter!(names::RESYNCS).increment(1);
            self.send_to(player, encode(&resync));
        }
    }
}

/// Queues `frame` for one local member without waiting. A full queue marks it lagging.
/// (Remote members get frames through the room's publisher.)
fn deliver(m: &mut Member, frame: &Bytes, now: Instant, metrics: &HotMetrics) {
    let Some(MemberConn::Local(conn)) = &m.conn else { return };
    if m.lagging_since.is_some() {
        counter!(names::OUTBOX_DROPPED).increment(1);
        return;
    }
    match conn.outbox.try_send(frame.clone()) {
        Ok(()) => metrics.deliveries.increment(1),
        Err(mpsc::error::TrySendError::Full(_)) => {
            m.lagging_since = Some(now);
            counter!(names::OUTBOX_DROPPED).increment(1);
        }
        // The connection is going away; its Detach follows.
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

/// `bytes` random bytes as lowercase hex, from the OS-seeded thread RNG.
/// A player id for a player without a join token (insecure development mode).
pub fn new_player_id() -> PlayerId {
    Arc::from(format!("p-{}", random_hex(6)))
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}
