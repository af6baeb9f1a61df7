//! The single-node lobby: registered rooms and their seats in this process's memory, under
//! one mutex (every call is a few map operations; none awaits while holding it).

use std::collections::HashMap;
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
    fn prune(&mut self, now: Instant) {
        self.seats.retain(|_, deadline| deadline.is_none_or(|d| d > now));
    }

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
}

/// In-process [`Lobby`]. Room ids are unique across types, as in the registry.
#[derive(Debug, Default)]
pub struct MemoryLobby {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    rooms: HashMap<String, Entry>,
    next_order: u64,
}

impl MemoryLobby {
    pub fn new() -> MemoryLobby {
        MemoryLobby::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn insert(&mut self, room_type: &str, room: &str, settings: RoomSettings) -> &mut Entry {
        self.next_order += 1;
        let entry = Entry {
            room_type: room_type.to_owned(),
            settings,
            order: self.next_order,
            seats: HashMap::new(),
        };
        self.rooms.entry(room.to_owned()).insert_entry(entry).into_mut()
    }

    /// Entries of `room_type`, oldest first.
    fn of_type(&mut self, room_type: &str) -> Vec<(&String, &mut Entry)> {
        let mut entries: Vec<(&String, &mut Entry)> =
            self.rooms.iter_mut().filter(|(_, e)| e.room_type == room_type).collect();
        entries.sort_by_key(|(_, e)| e.order);
        entries
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
        let deadline = Some(now + RESERVATION);
        let mut state = self.state();
        for (room, entry) in state.of_type(room_type) {
            if entry.settings.private {
                continue;
            }
            entry.prune(now);
            if entry.seats.contains_key(player) {
                return Ok(room.clone());
            }
            if (entry.seats.len() as u32) < entry.settings.max_players {
                entry.seats.insert(player.to_owned(), deadline);
                return Ok(room.clone());
            }
        }
        let settings = RoomSettings {
            max_players,
            private: false,
            metadata: Doc::map(),
            created: crate::session::unix_ms(),
        };
        state.insert(room_type, new_room, settings).seats.insert(player.to_owned(), deadline);
        Ok(new_room.to_owned())
    }

    async fn take_seat(&self, _room_type: &str, room: &str, player: &str) -> Result<Seat, LobbyError> {
        let mut state = self.state();
        let Some(entry) = state.rooms.get_mut(room) else { return Ok(Seat::Unregistered) };
        entry.prune(Instant::now());
        if let Some(seat) = entry.seats.get_mut(player) {
            *seat = None;
            return Ok(Seat::Taken);
        }
        if entry.seats.len() as u32 >= entry.settings.max_players {
            return Ok(Seat::Full);
        }
        entry.seats.insert(player.to_owned(), None);
        Ok(Seat::Taken)
    }

    async fn free_seat(&self, _room_type: &str, room: &str, player: &str) -> Result<(), LobbyError> {
        if let Some(entry) = self.state().rooms.get_mut(room) {
            entry.seats.remove(player);
        }
        Ok(())
    }

    async fn remove(&self, _room_type: &str, room: &str) -> Result<(), LobbyError> {
        self.state().rooms.remove(room);
        Ok(())
    }

    async fn get(&self, _room_type: &str, room: &str) -> Result<Option<Listing>, LobbyError> {
        let mut state = self.state();
        Ok(state.rooms.get_mut(room).map(|e| {
            e.prune(Instant::now());
            e.listing(room)
        }))
    }

    async fn list(
        &self,
        room_type: &str,
        include_private: bool,
        limit: usize,
    ) -> Result<Vec<Listing>, LobbyError> {
        let now = Instant::now();
        let mut state = self.state();
        Ok(state
            .of_type(room_type)
            .into_iter()
            .filter(|(_, e)| include_private || !e.settings.private)
            .take(limit)
            .map(|(room, e)| {
                e.prune(now);
                e.listing(room)
            })
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
}
