//! The single-node lobby: registered rooms and their seats in this process's memory, under
//! one mutex. It mirrors the Redis lobby's structure, so every call is a few map operations
//! (logarithmic in the number of rooms): per room type, the rooms in registration order and
//! the listed ones believed to have a free seat; reservations in deadline order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;

use super::{Listing, Lobby, LobbyError, RoomSettings, Seat, RESERVATION};
use crate::protocol::Doc;

/// A registered room.
#[derive(Debug)]
struct Entry {
    room_type: String,
    settings: RoomSettings,
    /// Registration order: `joinOrCreate` fills the oldest open room first.
    order: u64,
    /// Seat holders: `None` once joined, else the reservation's deadline.
    seats: HashMap<String, Option<Instant>>,
}

impl Entry {
    fn listing(&self, room: &str) -> Listing {
        Listing {
            room: room.to_owned(),
            room_type: self.room_type.clone(),
            members: self.seats.len() as u32,
            max_players: self.settings.max_players,
            private: self.settings.private,
            metadata: self.settings.metadata.clone(),
            created: self.settings.created,
        }
    }

    fn has_free_seat(&self) -> bool {
        (self.seats.len() as u32) < self.settings.max_players
    }
}

/// The rooms of one type, by registration order.
#[derive(Debug, Default)]
struct TypeIndex {
    all: BTreeMap<u64, String>,
    /// Listed rooms believed to have a free seat (as the Redis lobby's `avail`).
    open: BTreeSet<u64>,
}

/// In-process [`Lobby`]. Room ids are unique across types, as in the registry.
#[derive(Debug, Default)]
pub struct MemoryLobby {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    rooms: HashMap<String, Entry>,
    types: HashMap<String, TypeIndex>,
    /// Reservations not yet joined: (deadline, room, player).
    pending: BTreeSet<(Instant, String, String)>,
    next_order: u64,
}

impl MemoryLobby {
    pub fn new() -> MemoryLobby {
        MemoryLobby::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        state.expire(Instant::now());
        state
    }
}

impl State {
    fn insert(&mut self, room_type: &str, room: &str, settings: RoomSettings) -> &mut Entry {
        self.next_order += 1;
        let order = self.next_order;
        let index = self.types.entry(room_type.to_owned()).or_default();
        index.all.insert(order, room.to_owned());
        if !settings.private && settings.max_players > 0 {
            index.open.insert(order);
        }
        let entry = Entry { room_type: room_type.to_owned(), settings, order, seats: HashMap::new() };
        self.rooms.entry(room.to_owned()).insert_entry(entry).into_mut()
    }

    /// Drops reservations past their deadline and reopens their rooms.
    fn expire(&mut self, now: Instant) {
        while let Some(first) = self.pending.first() {
            if first.0 > now {
                break;
            }
            let Some((deadline, room, player)) = self.pending.pop_first() else { break };
            if let Some(entry) = self.rooms.get_mut(&room) {
                if entry.seats.get(&player) == Some(&Some(deadline)) {
                    entry.seats.remove(&player);
                    self.reopen(&room);
                }
            }
        }
    }

    /// Marks a listed room with a free seat as open again.
    fn reopen(&mut self, room: &str) {
        let Some(entry) = self.rooms.get(room) else { return };
        if !entry.settings.private && entry.has_free_seat() {
            if let Some(index) = self.types.get_mut(&entry.room_type) {
                index.open.insert(entry.order);
            }
        }
    }

    fn close_if_full(&mut self, room: &str) {
        let Some(entry) = self.rooms.get(room) else { return };
        if !entry.has_free_seat() {
            if let Some(index) = self.types.get_mut(&entry.room_type) {
                index.open.remove(&entry.order);
            }
        }
    }

    fn reserve_in(&mut self, room: &str, player: &str, now: Instant) {
        let deadline = now + RESERVATION;
        if let Some(entry) = self.rooms.get_mut(room) {
            entry.seats.insert(player.to_owned(), Some(deadline));
            self.pending.insert((deadline, room.to_owned(), player.to_owned()));
        }
        self.close_if_full(room);
    }
}

#[async_trait]
impl Lobby for MemoryLobby {
    async fn register(&self, room_type: &str, room: &str, settings: &RoomSettings) -> Result<(), LobbyError> {
        let mut state = self.state();
        if state.rooms.contains_key(room) {
            return Err(LobbyError::Exists(room.to_owned()));
        }
        state.insert(room_type, room, settings.clone());
        Ok(())
    }

    async fn reserve(
        &self,
        room_type: &str,
        player: &str,
        new_room: &str,
        max_players: u32,
    ) -> Result<String, LobbyError> {
        let now = Instant::now();
        let mut state = self.state();
        // The oldest open room first; rooms found full leave the open set on the way.
        loop {
            let oldest = state.types.get(room_type).and_then(|index| {
                let order = *index.open.first()?;
                Some((order, index.all.get(&order).cloned()))
            });
            let Some((order, room)) = oldest else { break };
            match room.as_ref().and_then(|r| state.rooms.get(r)) {
                Some(entry) if entry.seats.contains_key(player) || entry.has_free_seat() => {
                    let room = room.unwrap_or_default();
                    if !entry.seats.contains_key(player) {
                        state.reserve_in(&room, player, now);
                    }
                    return Ok(room);
                }
                _ => {
                    if let Some(index) = state.types.get_mut(room_type) {
                        index.open.remove(&order);
                    }
                }
            }
        }
        let settings = RoomSettings {
            max_players,
            private: false,
            metadata: Doc::map(),
            created: crate::session::unix_ms(),
        };
        state.insert(room_type, new_room, settings);
        state.reserve_in(new_room, player, now);
        Ok(new_room.to_owned())
    }

    async fn take_seat(&self, _room_type: &str, room: &str, player: &str) -> Result<Seat, LobbyError> {
        let mut state = self.state();
        let Some(entry) = state.rooms.get_mut(room) else { return Ok(Seat::Unregistered) };
        if let Some(seat) = entry.seats.get_mut(player) {
            if let Some(deadline) = seat.take() {
                state.pending.remove(&(deadline, room.to_owned(), player.to_owned()));
            }
            return Ok(Seat::Taken);
        }
        if !entry.has_free_seat() {
            return Ok(Seat::Full);
        }
        entry.seats.insert(player.to_owned(), None);
        state.close_if_full(room);
        Ok(Seat::Taken)
    }

    async fn free_seat(&self, _room_type: &str, room: &str, player: &str) -> Result<(), LobbyError> {
        let mut state = self.state();
        let Some(entry) = state.rooms.get_mut(room) else { return Ok(()) };
        if let Some(Some(deadline)) = entry.seats.remove(player) {
            state.pending.remove(&(deadline, room.to_owned(), player.to_owned()));
        }
        state.reopen(room);
        Ok(())
    }

    async fn remove(&self, _room_type: &str, room: &str) -> Result<(), LobbyError> {
        let mut state = self.state();
        if let Some(entry) = state.rooms.remove(room) {
            if let Some(index) = state.types.get_mut(&entry.room_type) {
                index.all.remove(&entry.order);
                index.open.remove(&entry.order);
            }
            // Its reservations expire harmlessly: their room is gone.
        }
        Ok(())
    }

    async fn get(&self, _room_type: &str, room: &str) -> Result<Option<Listing>, LobbyError> {
        Ok(self.state().rooms.get(room).map(|e| e.listing(room)))
    }

    async fn list(
        &self,
        room_type: &str,
        include_private: bool,
        limit: usize,
    ) -> Result<Vec<Listing>, LobbyError> {
        let state = self.state();
        let Some(index) = state.types.get(room_type) else { return Ok(Vec::new()) };
        Ok(index
            .all
            .values()
            .filter_map(|room| state.rooms.get(room).map(|e| (room, e)))
            .filter(|(_, e)| include_private || !e.settings.private)
            .take(limit)
            .map(|(room, e)| e.listing(room))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_or_create_fills_the_oldest_open_room_before_creating_one() {
        let lobby = MemoryLobby::new();
        let mut rooms = Vec::new();
        for i in 0..5 {
            rooms.push(lobby.reserve("arena", &format!("p{i}"), &format!("new-{i}"), 2).await.unwrap());
        }
        assert_eq!(rooms, ["new-0", "new-0", "new-2", "new-2", "new-4"]);
        // A retried reservation keeps its seat instead of taking a second one.
        assert_eq!(lobby.reserve("arena", "p4", "new-9", 2).await.unwrap(), "new-4");
        let listed = lobby.list("arena", false, 10).await.unwrap();
        assert_eq!(listed.iter().map(|l| l.members).collect::<Vec<_>>(), [2, 2, 1]);
        // A seat freed in the oldest room is the next one given.
        lobby.free_seat("arena", "new-0", "p1").await.unwrap();
        assert_eq!(lobby.reserve("arena", "p5", "new-10", 2).await.unwrap(), "new-0");
    }

    #[tokio::test]
    async fn seats_by_id_respect_max_players_and_private_rooms_are_never_chosen() {
        let lobby = MemoryLobby::new();
        let settings = RoomSettings { max_players: 1, private: true, metadata: Doc::map(), created: 1 };
        lobby.register("arena", "vip", &settings).await.unwrap();
        assert!(matches!(lobby.register("arena", "vip", &settings).await, Err(LobbyError::Exists(_))));
        assert_eq!(lobby.take_seat("arena", "vip", "a").await.unwrap(), Seat::Taken);
        assert_eq!(lobby.take_seat("arena", "vip", "a").await.unwrap(), Seat::Taken);
        assert_eq!(lobby.take_seat("arena", "vip", "b").await.unwrap(), Seat::Full);
        assert_eq!(lobby.take_seat("arena", "elsewhere", "b").await.unwrap(), Seat::Unregistered);
        assert_eq!(lobby.reserve("arena", "c", "fresh", 4).await.unwrap(), "fresh");
        assert!(lobby.list("arena", false, 10).await.unwrap().iter().all(|l| !l.private));
        assert_eq!(lobby.list("arena", true, 10).await.unwrap().len(), 2);
        lobby.remove("arena", "vip").await.unwrap();
        assert_eq!(lobby.get("arena", "vip").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_joined_seat_stays_and_a_full_room_reopens_when_a_seat_frees() {
        let lobby = MemoryLobby::new();
        assert_eq!(lobby.reserve("doc", "a", "r1", 2).await.unwrap(), "r1");
        assert_eq!(
            lobby.take_seat("doc", "r1", "a").await.unwrap(),
            Seat::Taken,
            "the reservation is confirmed"
        );
        assert_eq!(lobby.take_seat("doc", "r1", "b").await.unwrap(), Seat::Taken);
        // Full: the next player gets a new room.
        assert_eq!(lobby.reserve("doc", "c", "r2", 2).await.unwrap(), "r2");
        lobby.free_seat("doc", "r1", "b").await.unwrap();
        assert_eq!(
            lobby.reserve("doc", "d", "r3", 2).await.unwrap(),
            "r1",
            "r1 reopened and is older than r2"
        );
        assert_eq!(lobby.get("doc", "r1").await.unwrap().map(|l| l.members), Some(2));
    }
}
