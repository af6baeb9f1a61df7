//! The registry of live rooms on this node: a concurrent map from room id to the room
//! actor's mailbox. Lookups and creations of different rooms never contend on one lock;
//! each room's state is owned by its actor, not by the map.
//!
//! In cluster mode the registry also decides *where* a join goes: to the local actor if this
//! node owns the room, to the lease holder's node through the relay if another node owns it,
//! or to a new local actor that claims the room if nobody does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use metrics::{counter, gauge};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::actor::{JoinFailure, JoinOk, JoinRequest, PlayerId, Room, RoomCmd, RoomDeps};
use super::admin::{AdminCmd, AdminError, AdminReply};
use super::txn::Refusal;
use super::types;
use crate::backplane::BackplaneError;
use crate::cluster::relay::{Relay, RemoteFailure};
use crate::config::is_id_byte;
use crate::protocol::ErrorCode;
use crate::telemetry::names;

/// Longest room id, in bytes.
pub const MAX_ROOM_ID_BYTES: usize = 128;
/// Times a join looks a room up again when it raced with the room's disposal or a change
/// of owner.
const JOIN_ATTEMPTS: usize = 4;

/// A live room as the registry knows it.
#[derive(Clone)]
pub struct RoomHandle {
    /// Distinguishes this room from an earlier room with the same id.
    generation: u64,
    pub room_type: &'static str,
    pub tx: mpsc::Sender<RoomCmd>,
}

/// Where a joined connection sends its commands.
#[derive(Clone)]
pub enum RoomLink {
    /// The room is owned by this node.
    Local(RoomHandle),
    /// The room is owned by another node (cluster mode): commands go to its inbox.
    Remote { room: String, owner: Arc<str>, relay: Relay },
}

/// A successful join: where the room is and the player id.
pub struct Joined {
    pub room: RoomLink,
    pub player: PlayerId,
}

/// Shared map of live rooms; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    rooms: DashMap<Arc<str>, RoomHandle>,
    generations: AtomicU64,
    deps: Arc<dyn Fn() -> RoomDeps + Send + Sync>,
    tracker: TaskTracker,
    max_rooms: usize,
    mailbox: usize,
    /// Cluster mode: who owns rooms not owned here, and the way to join them there.
    relay: Option<Relay>,
}

impl Registry {
    /// A registry whose rooms get their dependencies from `deps` and run on `tracker`.
    pub fn new(
        deps: impl Fn() -> RoomDeps + Send + Sync + 'static,
        tracker: TaskTracker,
        max_rooms: usize,
        mailbox: usize,
        relay: Option<Relay>,
    ) -> Registry {
        Registry {
            inner: Arc::new(Inner {
                rooms: DashMap::new(),
                generations: AtomicU64::new(1),
                deps: Arc::new(deps),
                tracker,
                max_rooms,
                mailbox,
                relay,
            }),
        }
    }

    /// The mailbox of `room` if this node owns it.
    pub fn local(&self, room: &str) -> Option<RoomHandle> {
        self.inner.rooms.get(room).map(|h| h.clone())
    }

    /// Joins (creating if needed) or resumes in room `room_id` of type `room_type`, on this
    /// node or, in cluster mode, on the node that owns the room.
    pub async fn join(&self, room_id: &str, room_type: &str, req: JoinRequest) -> Result<Joined, Refusal> {
        validate_room_id(room_id)?;
        let Some(relay) = self.inner.relay.clone() else {
            return self.join_here(room_id, room_type, req).await;
        };
        for _ in 0..JOIN_ATTEMPTS {
            if self.local(room_id).is_some() {
                // An actor that is still claiming may lose the race to another node: then
                // the room is found elsewhere on the next look.
                match self.join_here(room_id, room_type, req.clone()).await {
                    Err(refusal) if refusal.code == ErrorCode::Unavailable => continue,
                    other => return other,
                }
            }
            let holder = relay.lease_holder(room_id).await?;
            tracing::trace!(room = room_id, ?holder, "join: lease holder");
            match holder {
                Some(owner) if owner != **relay.incarnation() => {
                    match relay.join_remote(room_id, room_type, &owner, &req).await {
                        Ok(player) => {
                            let owner = Arc::from(owner.as_str());
                            let link = RoomLink::Remote { room: room_id.to_owned(), owner, relay };
                            return Ok(Joined { room: link, player });
                        }
                        // The owner changed while we asked: look again.
                        Err(refusal) if refusal.code == ErrorCode::Unavailable => continue,
                        Err(refusal) => return Err(refusal),
                    }
                }
                // Free (or a lease of ours whose room is gone): own it here.
                _ => match self.join_here(room_id, room_type, req.clone()).await {
                    Err(refusal) if refusal.code == ErrorCode::Unavailable => continue,
                    other => return other,
                },
            }
        }
        Err(Refusal::new(ErrorCode::Unavailable, "the room's owner kept changing while joining; retry"))
    }

    /// Sends a command of the game backend to `room_id` wherever it is owned: to its actor
    /// here, or to its owner's inbox in cluster mode. `NotLive` when no node owns it.
    pub async fn admin(&self, room_id: &str, cmd: AdminCmd) -> Result<AdminReply, AdminError> {
        validate_room_id(room_id).map_err(AdminError::Refused)?;
        let mut last = Refusal::new(ErrorCode::Unavailable, "the room's owner kept changing; retry");
        // A command is sent again only when it surely was not carried out (the room had
        // closed, or its owner said it does not own it), or when it only reads: a write whose
        // answer was lost must not be applied twice.
        for _ in 0..JOIN_ATTEMPTS {
            if let Some(handle) = self.local(room_id) {
                let (reply, answer) = oneshot::channel();
                if handle.tx.send(RoomCmd::Admin { cmd: cmd.clone(), reply }).await.is_err() {
                    self.forget(room_id, handle.generation);
                    continue;
                }
                match answer.await {
                    Ok(Ok(reply)) => return Ok(reply),
                    Ok(Err(JoinFailure::Refused(refusal))) => return Err(AdminError::Refused(refusal)),
                    // Closing: the command was not handled; the room may live elsewhere now.
                    Ok(Err(JoinFailure::RoomClosed)) => {
                        self.forget(room_id, handle.generation);
                        continue;
                    }
                    Err(_) if cmd.is_read_only() => {
                        self.forget(room_id, handle.generation);
                        continue;
                    }
                    Err(_) => return Err(AdminError::Refused(outcome_unknown())),
                }
            }
            let Some(relay) = &self.inner.relay else { return Err(AdminError::NotLive) };
            match relay.lease_holder(room_id).await.map_err(AdminError::Refused)? {
                Some(owner) if owner != **relay.incarnation() => {
                    match relay.admin_remote(&owner, room_id, cmd.clone()).await {
                        Ok(reply) => return Ok(reply),
                        Err(RemoteFailure::NotOwner(refusal)) => last = refusal,
                        Err(RemoteFailure::NoAnswer(refusal)) if cmd.is_read_only() => last = refusal,
                        Err(RemoteFailure::NoAnswer(_)) => {
                            return Err(AdminError::Refused(outcome_unknown()))
                        }
                        Err(RemoteFailure::Refused(refusal)) => return Err(AdminError::Refused(refusal)),
                    }
                }
                _ => return Err(AdminError::NotLive),
            }
        }
        Err(AdminError::Refused(last))
    }

    /// Starts room `room_id` of `room_type` on this node with nobody in it (admin API), and
    /// describes it. The caller checked that no node owns it.
    pub async fn open(&self, room_id: &str, room_type: &str) -> Result<AdminReply, AdminError> {
        validate_room_id(room_id).map_err(AdminError::Refused)?;
        let Some(room_type) = types::static_name(room_type) else {
            return Err(AdminError::Refused(Refusal::new(
                ErrorCode::BadRoom,
                format!("unknown room type {room_type:?}; known: {}", types::ROOM_TYPES.join(", ")),
            )));
        };
        let handle = self.create(room_id, room_type).map_err(AdminError::Refused)?;
        if handle.room_type != room_type {
            return Err(AdminError::Refused(Refusal::new(
                ErrorCode::BadRoom,
                format!("room {room_id} has type {}, not {room_type}", handle.room_type),
            )));
        }
        let (reply, answer) = oneshot::channel();
        let cmd = AdminCmd::Inspect { state: false };
        let closed = || Refusal::new(ErrorCode::Unavailable, "the room closed while starting; retry");
        if handle.tx.send(RoomCmd::Admin { cmd, reply }).await.is_err() {
            return Err(AdminError::Refused(closed()));
        }
        match answer.await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(JoinFailure::Refused(refusal))) => Err(AdminError::Refused(refusal)),
            Ok(Err(JoinFailure::RoomClosed)) | Err(_) => Err(AdminError::Refused(closed())),
        }
    }

    /// Joins room `room_id` owned, or to be claimed, by this node.
    pub async fn join_here(
        &self,
        room_id: &str,
        room_type: &str,
        req: JoinRequest,
    ) -> Result<Joined, Refusal> {
        validate_room_id(room_id)?;
        let Some(room_type) = types::static_name(room_type) else {
            return Err(Refusal::new(
                ErrorCode::BadRoom,
                format!("unknown room type {room_type:?}; known: {}", types::ROOM_TYPES.join(", ")),
            ));
        };
        let cluster = self.inner.relay.is_some();
        let mut last = Refusal::new(ErrorCode::Unavailable, "the room kept closing while joining; retry");
        for _ in 0..JOIN_ATTEMPTS {
            let handle = match self.local(room_id) {
                Some(h) => h,
                // Single node: a room that is gone took its sessions along. A cluster
                // restores the room from Redis, where the session may still be known.
                None if req.session.is_some() && !cluster => {
                    return Err(Refusal::new(
                        ErrorCode::SessionExpired,
                        "the room no longer exists; join afresh",
                    ))
                }
                None => self.create(room_id, room_type)?,
            };
            if handle.room_type != room_type {
                return Err(Refusal::new(
                    ErrorCode::BadRoom,
                    format!("room {room_id} has type {}, not {room_type}", handle.room_type),
                ));
            }
            let (reply, answer) = oneshot::channel();
            if handle.tx.send(RoomCmd::Join { req: req.clone(), reply }).await.is_err() {
                self.forget(room_id, handle.generation);
                continue;
            }
            match answer.await {
                Ok(Ok(JoinOk { player })) => return Ok(Joined { room: RoomLink::Local(handle), player }),
                // A room that could not start here (owned elsewhere, Redis down) is
                // retried by the caller, which looks for the owner again.
                Ok(Err(JoinFailure::Refused(refusal))) => return Err(refusal),
                Ok(Err(JoinFailure::RoomClosed)) | Err(_) => {
                    self.forget(room_id, handle.generation);
                    last = Refusal::new(ErrorCode::Unavailable, "the room closed while joining; retry");
                }
            }
        }
        Err(last)
    }

    /// Creates room `id` unless another join just did; returns its handle.
    fn create(&self, id: &str, room_type: &'static str) -> Result<RoomHandle, Refusal> {
        if self.inner.rooms.len() >= self.inner.max_rooms {
            crate::limits::hit("rooms");
            return Err(Refusal::new(
                ErrorCode::TooManyRooms,
                format!("this node holds {} rooms, its limit", self.inner.max_rooms),
            ));
        }
        let id: Arc<str> = Arc::from(id);
        match self.inner.rooms.entry(id.clone()) {
            Entry::Occupied(e) => Ok(e.get().clone()),
            Entry::Vacant(e) => {
                let (tx, rx) = mpsc::channel(self.inner.mailbox);
                let generation = self.inner.generations.fetch_add(1, Ordering::Relaxed);
                let handle = RoomHandle { generation, room_type, tx };
                e.insert(handle.clone());
                self.spawn(id, room_type, generation, rx);
                Ok(handle)
            }
        }
    }

    /// Starts a room's actor: claim (and restore) through the backplane, then run.
    fn spawn(&self, id: Arc<str>, room_type: &'static str, generation: u64, mut rx: mpsc::Receiver<RoomCmd>) {
        let registry = self.clone();
        let deps = (self.inner.deps)();
        self.inner.tracker.spawn(async move {
            let started = Instant::now();
            let dispose = {
                let registry = registry.clone();
                let id = id.clone();
                move || {
                    registry.forget(&id, generation);
                    gauge!(names::ROOMS).decrement(1.0);
                    counter!(names::ROOMS_DISPOSED, "type" => room_type).increment(1);
                }
            };
            gauge!(names::ROOMS).increment(1.0);
            counter!(names::ROOMS_CREATED, "type" => room_type).increment(1);
            let backplane = deps.backplane.clone();
            let room = match backplane.claim(&id, room_type).await {
                Ok(claim) => {
                    let epoch = claim.epoch;
                    let outcome = if claim.restored.is_some() { "restored" } else { "new" };
                    counter!(names::CLAIMS, "outcome" => outcome).increment(1);
                    let room = types::create(room_type, &id)
                        .ok_or_else(|| Refusal::new(ErrorCode::BadRoom, "unknown room type"))
                        .and_then(|logic| Room::new(id.clone(), logic, claim, deps));
                    if room.is_err() {
                        let _ = backplane.release(&id, epoch, false).await;
                    }
                    room
                }
                Err(BackplaneError::OwnedElsewhere(owner)) => {
                    Err(Refusal::new(ErrorCode::Unavailable, format!("room is owned by {owner}")))
                }
                Err(e) => Err(Refusal::new(ErrorCode::Unavailable, e.to_string())),
            };
            match room {
                Ok(room) => {
                    tracing::debug!(room = %id, room_type, "room started");
                    room.run(rx, dispose).await;
                    tracing::debug!(room = %id, lived_ms = started.elapsed().as_millis() as u64, "room stopped");
                }
                Err(refusal) => {
                    tracing::info!(room = %id, error = %refusal, "room not started here");
                    dispose();
                    // Joins already queued learn why (a wrong type, owned elsewhere, ...).
                    rx.close();
                    while let Some(cmd) = rx.recv().await {
                        cmd.refuse(JoinFailure::Refused(refusal.clone()));
                    }
                }
            }
        });
    }

    /// Removes `id` from the map if it is still the given generation.
    fn forget(&self, id: &str, generation: u64) {
        self.inner.rooms.remove_if(id, |_, h| h.generation == generation);
    }
}

/// The refusal of a command whose answer was lost: it may or may not have been carried out.
fn outcome_unknown() -> Refusal {
    Refusal::new(
        ErrorCode::Unavailable,
        "the room's owner did not answer in time: the command may or may not have been carried out; read the room",
    )
}

/// Checks a room id: 1-128 bytes of `[A-Za-z0-9_.:-]`.
pub fn validate_room_id(id: &str) -> Result<(), Refusal> {
    if id.is_empty() || id.len() > MAX_ROOM_ID_BYTES || !id.bytes().all(is_id_byte) {
        return Err(Refusal::new(
            ErrorCode::BadRoom,
            format!("room id must be 1-{MAX_ROOM_ID_BYTES} bytes of [A-Za-z0-9_.:-]"),
        ));
    }
    Ok(())
}
