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

use super::txn::{ParsedOp, PathLimits, Refusal, Txn};
use super::types::RoomType;
use crate::backplane::{Backplane, CommitBatch};
use crate::config::Config;
use crate::protocol::{
    batch_frame, encode, CloseCode, Delta, Doc, ErrorCode, MemberInfo, Op, PresenceStatus,
    ServerMsg, Snapshot,
};
use crate::session::control::ConnControl;
use crate::telemetry::{names, HotMetrics};

/// A player id, shared cheaply.
pub type PlayerId = Arc<str>;

/// The connection a member is attached to.
#[derive(Clone)]
pub struct MemberConn {
    /// Node-unique connection id; commands from a replaced connection are ignored by it.
    pub id: u64,
    /// The connection's bounded outbound queue of encoded frames.
    pub outbox: mpsc::Sender<Bytes>,
    /// Lets the room close the connection (replaced, slow consumer, left).
    pub control: Arc<ConnControl>,
}

/// A join or resume, as the session hands it to the room.
#[derive(Clone)]
pub struct JoinRequest {
    pub conn: MemberConn,
    pub session: Option<String>,
    pub epoch: Option<u64>,
    pub seq: Option<u64>,
}

/// A successful join: the session now speaks for `player`.
#[derive(Debug, Clone)]
pub struct JoinOk {
    pub player: PlayerId,
}

/// Why a join did not happen.
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
        conn: u64,
        cid: u64,
        ops: Vec<Op>,
        received: Instant,
    },
    Msg {
        player: PlayerId,
        conn: u64,
        to: Option<String>,
        data: Doc,
    },
    Leave {
        player: PlayerId,
        conn: u64,
    },
    /// The connection closed without `leave`: start the reconnect grace.
    Detach {
        player: PlayerId,
        conn: u64,
    },
}

/// One player of the room.
struct Member {
    player: PlayerId,
    session: String,
    /// `None` while disconnected (within the grace).
    conn: Option<MemberConn>,
    disconnected_at: Option<Instant>,
    /// Highest applied cid.
    last_cid: u64,
    /// Recently applied (cid, seq), oldest first; cids ascend.
    applied: VecDeque<(u64, u64)>,
    /// Set while the member's queue overflowed and it awaits a resync.
    lagging_since: Option<Instant>,
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
    sessions: HashMap<String, PlayerId>,
    /// Recent committed deltas (seq, encoded `delta` message) for resumes.
    ring: VecDeque<(u64, Bytes)>,
    staged: Vec<Staged>,
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
}

impl Room {
    /// A new room at `epoch`, with the type's initial state (seq 0).
    pub fn new(
        id: Arc<str>,
        mut logic: Box<dyn RoomType>,
        epoch: u64,
        deps: RoomDeps,
    ) -> Result<Room, Refusal> {
        let logic_name = logic.name();
        let mut doc = Doc::map();
        let mut size = doc.encoded_len();
        let mut txn = Txn::new(&mut doc, &mut size, deps.config.max_state_bytes);
        logic.init(&mut txn)?;
        txn.commit();
        let limits = PathLimits {
            max_depth: deps.config.max_path_depth,
            max_key_bytes: deps.config.max_key_bytes,
        };
        Ok(Room {
            id,
            logic,
            epoch,
            seq: 0,
            doc,
            size,
            members: HashMap::new(),
            sessions: HashMap::new(),
            ring: VecDeque::new(),
            staged: Vec::new(),
            pending: Vec::new(),
            empty_since: Some(Instant::now()),
            failed: false,
            delta_bytes: histogram!(names::DELTA_BYTES, "type" => logic_name),
            state_bytes: histogram!(names::STATE_BYTES, "type" => logic_name),
            deps,
            limits,
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
                    if self.failed {
                        break;
                    }
                }
                // Ticks only while something waits to be flushed: idle rooms do not wake.
                _ = flush.tick(), if flush_every.is_some() && !self.pending.is_empty() => self.flush(),
                _ = &mut timer => {
                    wake = Instant::now() + Duration::from_secs(3600);
                    timer.as_mut().reset(TokioInstant::from_std(wake));
                    if self.housekeep(Instant::now()).await {
                        break;
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
        on_dispose();
        rx.close();
        while let Some(cmd) = rx.recv().await {
            if let RoomCmd::Join { reply, .. } = cmd {
                let _ = reply.send(Err(JoinFailure::RoomClosed));
            }
        }
        self.flush();
        let players = self.members.len();
        gauge!(names::PLAYERS).decrement(players as f64);
        let _ = self.deps.backplane.release(&self.id, self.epoch).await;
    }

    async fn handle(&mut self, cmd: RoomCmd) {
        match cmd {
            RoomCmd::Join { req, reply } => {
                // A joiner's snapshot must not include uncommitted changes.
                self.commit().await;
                self.flush();
                let result = match req.session.clone() {
                    Some(session) => self.resume(session, req),
                    None => match self.admit(req) {
                        Ok((player, conn)) => {
                            // The joiner's snapshot includes its own arrival: commit first.
                            self.commit().await;
                            self.attach_new(player, conn)
                        }
                        Err(refusal) => Err(refusal),
                    },
                };
                let _ = reply.send(result.map_err(JoinFailure::Refused));
            }
            RoomCmd::Ops {
                player,
                conn,
                cid,
                ops,
                received,
            } => self.ops(&player, conn, cid, ops, received),
            RoomCmd::Msg {
                player,
                conn,
                to,
                data,
            } => self.msg(&player, conn, to, data),
            RoomCmd::Leave { player, conn } => {
                if self.is_current(&player, conn) {
                    if let Some(c) = self.members.get(&player).and_then(|m| m.conn.clone()) {
                        c.control.close(CloseCode::Normal, "");
                    }
                    self.remove_member(&player);
                }
            }
            RoomCmd::Detach { player, conn } => {
                if self.is_current(&player, conn) {
                    self.detach(&player, Instant::now());
                }
            }
        }
    }

    fn is_current(&self, player: &PlayerId, conn: u64) -> bool {
        self.members
            .get(player)
            .and_then(|m| m.conn.as_ref())
            .is_some_and(|c| c.id == conn)
    }

    fn snapshot(&self) -> Snapshot {
        self.state_bytes.record(self.size as f64);
        Snapshot {
            epoch: self.epoch,
            seq: self.seq,
            state: self.doc.clone(),
            hash: self.doc.state_hash(),
        }
    }

    fn member_list(&self) -> Vec<MemberInfo> {
        let mut list: Vec<MemberInfo> = self
            .members
            .values()
            .map(|m| MemberInfo {
                player: m.player.to_string(),
                status: if m.conn.is_some() {
                    PresenceStatus::Joined
                } else {
                    PresenceStatus::Disconnected
                },
            })
            .collect();
        list.sort_by(|a, b| a.player.cmp(&b.player));
        list
    }

    /// Admits a new player: presence to the others, the room type's arrival change staged.
    /// The player is attached (and told `joined`) by [`Room::attach_new`] after the commit.
    fn admit(&mut self, req: JoinRequest) -> Result<(PlayerId, MemberConn), Refusal> {
        if self.members.len() >= self.deps.config.max_players_per_room {
            counter!(names::JOINS, "outcome" => "refused").increment(1);
            return Err(Refusal::new(
                ErrorCode::RoomFull,
                format!(
                    "room {} has {} players, the most it may hold",
                    self.id,
                    self.members.len()
                ),
            ));
        }
        let player: PlayerId = Arc::from(format!("p-{}", random_hex(6)));
        let mut txn = Txn::new(
            &mut self.doc,
            &mut self.size,
            self.deps.config.max_state_bytes,
        );
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
        let session = random_hex(16);
        self.sessions.insert(session.clone(), player.clone());
        self.members.insert(
            player.clone(),
            Member {
                player: player.clone(),
                session,
                conn: None,
                disconnected_at: None,
                last_cid: 0,
                applied: VecDeque::new(),
                lagging_since: None,
            },
        );
        self.empty_since = None;
        gauge!(names::PLAYERS).increment(1.0);
        Ok((player, req.conn))
    }

    fn attach_new(&mut self, player: PlayerId, conn: MemberConn) -> Result<JoinOk, Refusal> {
        if self.failed {
            return Err(Refusal::new(
                ErrorCode::Unavailable,
                "the room failed; try again",
            ));
        }
        let Some(member) = self.members.get_mut(&player) else {
            return Err(Refusal::new(
                ErrorCode::Internal,
                "player vanished while joining",
            ));
        };
        member.conn = Some(conn);
        let session = member.session.clone();
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
        self.send_to(&player, encode(&joined));
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
        let player = self.sessions.get(&session).cloned().ok_or_else(expired)?;
        let member = self.members.get_mut(&player).ok_or_else(expired)?;
        let was_disconnected = member.conn.is_none();
        if let Some(old) = member.conn.take() {
            old.control.close(
                CloseCode::Replaced,
                "a newer connection resumed this session",
            );
            counter!(names::SESSIONS_REPLACED).increment(1);
        }
        member.conn = Some(req.conn);
        member.disconnected_at = None;
        member.lagging_since = None;
        let last_cid = member.last_cid;
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
                    self.ring
                        .iter()
                        .filter(|(s, _)| *s > seq)
                        .map(|(_, b)| b.clone())
                        .collect::<Vec<_>>()
                })
            }
            _ => None,
        };
        let outcome = if missed.is_some() {
            "resumed_deltas"
        } else {
            "resumed_snapshot"
        };
        counter!(names::JOINS, "outcome" => outcome).increment(1);
        let joined = ServerMsg::Joined {
            room: self.id.to_string(),
            room_type: self.logic.name().to_owned(),
            player: player.to_string(),
            session,
            resumed: true,
            cid: last_cid,
            members: self.member_list(),
            snapshot: if missed.is_some() {
                None
            } else {
                Some(self.snapshot())
            },
        };
        self.send_to(&player, encode(&joined));
        match missed {
            Some(missed) if missed.len() == 1 => self.send_to(&player, missed[0].clone()),
            Some(missed) if !missed.is_empty() => self.send_to(&player, batch_frame(missed.iter())),
            _ => {}
        }
        Ok(JoinOk { player })
    }

    fn ops(&mut self, player: &PlayerId, conn: u64, cid: u64, ops: Vec<Op>, received: Instant) {
        if !self.is_current(player, conn) {
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
    fn apply_ops(
        &mut self,
        player: &PlayerId,
        cid: u64,
        ops: Vec<Op>,
    ) -> Result<Option<Vec<Op>>, Refusal> {
        let max_ops = self.deps.config.max_ops_per_batch;
        let Some(member) = self.members.get(player) else {
            return Ok(None);
        };
        if cid == 0 {
            return Err(Refusal::new(ErrorCode::StaleCid, "cid must be at least 1"));
        }
        if cid <= member.last_cid {
            let found = member
                .applied
                .binary_search_by_key(&cid, |(c, _)| *c)
                .ok()
                .map(|i| member.applied[i].1);
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
        if ops.is_empty() || ops.len() > max_ops {
            return Err(Refusal::new(
                ErrorCode::TooManyOps,
                format!(
                    "a batch holds 1 to {max_ops} ops, this one has {}",
                    ops.len()
                ),
            ));
        }
        let limits = self.limits;
        let parsed = ops
            .into_iter()
            .map(|op| ParsedOp::parse(op, limits))
            .collect::<Result<Vec<_>, _>>()?;
        let mut txn = Txn::new(
            &mut self.doc,
            &mut self.size,
            self.deps.config.max_state_bytes,
        );
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

    fn msg(&mut self, player: &PlayerId, conn: u64, to: Option<String>, data: Doc) {
        if !self.is_current(player, conn) {
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
                let target = self
                    .members
                    .get(to.as_str())
                    .filter(|m| m.conn.is_some())
                    .map(|m| m.player.clone());
                match target {
                    Some(target) => self.send_to(&target, frame),
                    None => {
                        let error = ServerMsg::Error {
                            code: ErrorCode::UnknownPlayer.as_str().to_owned(),
                            message: format!("{to} is not connected to this room"),
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

    fn remove_member(&mut self, player: &PlayerId) {
        let Some(member) = self.members.remove(player) else {
            return;
        };
        self.sessions.remove(&member.session);
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
    fn stage(
        &mut self,
        cid: Option<u64>,
        by: Option<PlayerId>,
        ops: Vec<Op>,
        received: Option<Instant>,
    ) {
        self.seq += 1;
        let delta = ServerMsg::Delta(Delta {
            room: self.id.to_string(),
            epoch: self.epoch,
            seq: self.seq,
            cid,
            by: by.map(|p| p.to_string()),
            ops,
        });
        let bytes = encode(&delta);
        self.delta_bytes.record(bytes.len() as f64);
        self.deps.metrics.deltas.increment(1);
        self.staged.push(Staged {
            seq: self.seq,
            bytes,
            received,
        });
    }

    /// Commits staged deltas through the backplane, then fans them out. On failure (the
    /// outcome is unknown) the room is marked failed and stops.
    async fn commit(&mut self) {
        if self.staged.is_empty() || self.failed {
            return;
        }
        let staged = std::mem::take(&mut self.staged);
        let deltas: Vec<(u64, Bytes)> = staged.iter().map(|s| (s.seq, s.bytes.clone())).collect();
        let batch = CommitBatch {
            prev_seq: staged[0].seq - 1,
            deltas: &deltas,
        };
        match self
            .deps
            .backplane
            .commit(&self.id, self.epoch, batch)
            .await
        {
            Ok(()) => self.publish(staged),
            Err(e) => {
                // The single-node backplane never fails. Until a backplane can resolve an
                // unknown outcome, the safe move is to stop the room: nothing unacknowledged
                // is shown, and clients reconnect (1011) and get a fresh snapshot.
                tracing::error!(room = %self.id, error = %e, "commit failed; closing the room");
                for m in self.members.values() {
                    if let Some(c) = &m.conn {
                        c.control.close(CloseCode::InternalError, "room failed");
                    }
                }
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
                self.deps
                    .metrics
                    .fanout_seconds
                    .record(received.elapsed().as_secs_f64());
            }
        }
    }

    /// Sends to every connected member: now, or at the next flush when coalescing.
    fn broadcast(&mut self, frame: Bytes) {
        if self.deps.config.flush_interval().is_some() {
            self.pending.push(frame);
            return;
        }
        let now = Instant::now();
        for m in self.members.values_mut() {
            deliver(m, &frame, now, &self.deps.metrics);
        }
    }

    /// Sends pending broadcasts as one frame per member.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let frame = if self.pending.len() == 1 {
            self.pending[0].clone()
        } else {
            batch_frame(self.pending.iter())
        };
        self.pending.clear();
        let now = Instant::now();
        for m in self.members.values_mut() {
            deliver(m, &frame, now, &self.deps.metrics);
        }
    }

    /// Sends a message to one member at once (private messages are never coalesced).
    fn send_to(&mut self, player: &PlayerId, frame: Bytes) {
        let now = Instant::now();
        if let Some(m) = self.members.get_mut(player) {
            deliver(m, &frame, now, &self.deps.metrics);
        }
    }

    /// The next instant housekeeping has work: a grace expiring, a lagging member to check,
    /// the idle TTL of an empty room.
    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let mut next = now + Duration::from_secs(3600);
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
            self.remove_member(&player);
        }
        let lagging: Vec<PlayerId> = self
            .members
            .values()
            .filter(|m| m.lagging_since.is_some())
            .map(|m| m.player.clone())
            .collect();
        for player in lagging {
            self.check_lagging(&player, now);
        }
        self.commit().await;
        self.failed
            || self
                .empty_since
                .is_some_and(|since| now >= since + self.deps.config.room_idle_ttl())
    }

    /// A lagging member gets a resync once its queue has room again, or is closed after
    /// the slow-consumer timeout.
    fn check_lagging(&mut self, player: &PlayerId, now: Instant) {
        let timeout = self.deps.config.slow_consumer_timeout();
        let half = self.deps.config.outbox_frames / 2;
        let Some(m) = self.members.get(player) else {
            return;
        };
        let (Some(since), Some(conn)) = (m.lagging_since, m.conn.clone()) else {
            return;
        };
        if now >= since + timeout {
            counter!(names::SLOW_CONSUMERS).increment(1);
            conn.control
                .close(CloseCode::SlowConsumer, "could not keep up with the room");
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

/// Queues `frame` for one member without waiting. A full queue marks it lagging.
fn deliver(m: &mut Member, frame: &Bytes, now: Instant, metrics: &HotMetrics) {
    let Some(conn) = &m.conn else { return };
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
fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}
