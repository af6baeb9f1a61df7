//! The registry of live rooms on this node: a concurrent map from room id to the room
//! actor's mailbox. Lookups and creations of different rooms never contend on one lock;
//! each room's state is owned by its actor, not by the map.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use metrics::{counter, gauge};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::actor::{JoinFailure, JoinOk, JoinRequest, Room, RoomCmd, RoomDeps};
use super::txn::Refusal;
use super::types;
use crate::config::is_id_byte;
use crate::protocol::ErrorCode;
use crate::telemetry::names;

/// Longest room id, in bytes.
pub const MAX_ROOM_ID_BYTES: usize = 128;
/// Times a join looks a room up again when it raced with the room's disposal.
const JOIN_ATTEMPTS: usize = 4;

/// A live room as the registry knows it.
#[derive(Clone)]
pub struct RoomHandle {
    /// Distinguishes this room from an earlier room with the same id.
    generation: u64,
    pub room_type: &'static str,
    pub tx: mpsc::Sender<RoomCmd>,
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
}

/// A successful join: the room's mailbox and the player id.
pub struct Joined {
    pub room: RoomHandle,
    pub player: super::actor::PlayerId,
}

impl Registry {
    /// A registry whose rooms get their dependencies from `deps` and run on `tracker`.
    pub fn new(
        deps: impl Fn() -> RoomDeps + Send + Sync + 'static,
        tracker: TaskTracker,
        max_rooms: usize,
        mailbox: usize,
    ) -> Registry {
        Registry {
            inner: Arc::new(Inner {
                rooms: DashMap::new(),
                generations: AtomicU64::new(1),
                deps: Arc::new(deps),
                tracker,
                max_rooms,
                mailbox,
            }),
        }
    }

    /// Number of live rooms.
    pub fn len(&self) -> usize {
        self.inner.rooms.len()
    }

    /// Whether no room is live.
    pub fn is_empty(&self) -> bool {
        self.inner.rooms.is_empty()
    }

    /// Joins (creating if needed) or resumes in room `room_id` of type `room_type`.
    pub async fn join(
        &self,
        room_id: &str,
        room_type: &str,
        req: JoinRequest,
    ) -> Result<Joined, Refusal> {
        validate_room_id(room_id)?;
        let Some(room_type) = types::static_name(room_type) else {
            return Err(Refusal::new(
                ErrorCode::BadRoom,
                format!(
                    "unknown room type {room_type:?}; known: {}",
                    types::ROOM_TYPES.join(", ")
                ),
            ));
        };
        for _ in 0..JOIN_ATTEMPTS {
            let handle = match self.inner.rooms.get(room_id).map(|h| h.clone()) {
                Some(h) => h,
                None if req.session.is_some() => {
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
                    format!(
                        "room {room_id} has type {}, not {room_type}",
                        handle.room_type
                    ),
                ));
            }
            let (reply, answer) = oneshot::channel();
            if handle
                .tx
                .send(RoomCmd::Join {
                    req: req.clone(),
                    reply,
                })
                .await
                .is_err()
            {
                self.forget(room_id, handle.generation);
                continue;
            }
            match answer.await {
                Ok(Ok(JoinOk { player })) => {
                    return Ok(Joined {
                        room: handle,
                        player,
                    })
                }
                Ok(Err(JoinFailure::Refused(refusal))) => return Err(refusal),
                Ok(Err(JoinFailure::RoomClosed)) | Err(_) => {
                    self.forget(room_id, handle.generation)
                }
            }
        }
        Err(Refusal::new(
            ErrorCode::Unavailable,
            "the room kept closing while joining; retry",
        ))
    }

    /// Creates room `id` unless another join just did; returns its handle.
    fn create(&self, id: &str, room_type: &'static str) -> Result<RoomHandle, Refusal> {
        if self.inner.rooms.len() >= self.inner.max_rooms {
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
                let handle = RoomHandle {
                    generation,
                    room_type,
                    tx,
                };
                e.insert(handle.clone());
                self.spawn(id, room_type, generation, rx);
                Ok(handle)
            }
        }
    }

    fn spawn(
        &self,
        id: Arc<str>,
        room_type: &'static str,
        generation: u64,
        rx: mpsc::Receiver<RoomCmd>,
    ) {
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
            let claim = deps.backplane.claim(&id).await;
            let room = claim.map_err(|e| e.to_string()).and_then(|claim| {
                let logic = types::create(room_type, &id).ok_or_else(|| format!("unknown room type {room_type}"))?;
                Room::new(id.clone(), logic, claim.epoch, deps).map_err(|e| e.to_string())
            });
            match room {
                Ok(room) => {
                    tracing::debug!(room = %id, room_type, "room created");
                    room.run(rx, dispose).await;
                    tracing::debug!(room = %id, lived_ms = started.elapsed().as_millis() as u64, "room disposed");
                }
                Err(error) => {
                    tracing::error!(room = %id, %error, "could not start room");
                    dispose();
                    drop(rx);
                }
            }
        });
    }

    /// Removes `id` from the map if it is still the given generation.
    fn forget(&self, id: &str, generation: u64) {
        self.inner
            .rooms
            .remove_if(id, |_, h| h.generation == generation);
    }
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
