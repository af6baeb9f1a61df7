//! The cluster lobby: registered rooms and seats in Redis, changed only by Lua scripts, so
//! every choice of a seat is atomic across nodes.
//!
//! Every key of one room type's lobby carries the hash tag `{lobby:<type>}` (one Redis
//! Cluster slot per type; the scripts touch keys derived from `KEYS[1]` in that slot):
//!
//! | name (`B` = `<p>:{lobby:<type>}`) | type | what |
//! | --- | --- | --- |
//! | `B:all` | zset room -> created ms | every registered room |
//! | `B:listed` | zset room -> created ms | listed (not private) rooms |
//! | `B:avail` | zset room -> created ms | listed rooms believed to have a free seat |
//! | `B:info:<room>` | hash `max`, `private`, `created`, `meta` | settings (`meta`: MessagePack) |
//! | `B:seats:<room>` | zset player -> 0 (joined) or reservation deadline ms | seat holders |
//! | `B:pending` | zset `<room> <player>` -> deadline ms | reservations not yet joined |
//!
//! Expired reservations are dropped (and their rooms reopened) at the start of every script.
//! The lobby's keys do not expire: a room's entry goes when its owner disposes of it.

use async_trait::async_trait;
use metrics::{counter, histogram};
use redis::Script;

use super::{Listing, Lobby, LobbyError, RoomSettings, Seat, RESERVATION};
use crate::cluster::conn::Conn;
use crate::protocol::Doc;
use crate::telemetry::names;

/// Shared by every script: drop expired reservations, reopen rooms with a free seat.
const PRELUDE: &str = r#"
local b = string.sub(KEYS[1], 1, -5)
local function reopen(room)
  local info = redis.call('HMGET', b .. ':info:' .. room, 'max', 'private', 'created')
  if info[1] and info[2] == '0'
     and redis.call('ZCARD', b .. ':seats:' .. room) < tonumber(info[1]) then
    redis.call('ZADD', b .. ':avail', info[3], room)
  end
end
local function expire(now)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', b .. ':pending', '-inf', now)) do
    local sp = string.find(m, ' ', 1, true)
    local room, player = string.sub(m, 1, sp - 1), string.sub(m, sp + 1)
    local score = redis.call('ZSCORE', b .. ':seats:' .. room, player)
    if score and tonumber(score) > 0 then
      redis.call('ZREM', b .. ':seats:' .. room, player)
      reopen(room)
    end
    redis.call('ZREM', b .. ':pending', m)
  end
end
local function listing(room)
  local info = redis.call('HMGET', b .. ':info:' .. room, 'max', 'private', 'created', 'meta')
  if not info[1] then return nil end
  return {room, info[1], info[2], info[3], info[4] or '', redis.call('ZCARD', b .. ':seats:' .. room)}
end
"#;

/// ARGV: player, new room, max players, now ms, reservation deadline ms, metadata.
const RESERVE: &str = r#"
expire(ARGV[4])
for _, room in ipairs(redis.call('ZRANGE', b .. ':avail', 0, -1)) do
  local info = redis.call('HMGET', b .. ':info:' .. room, 'max', 'private')
  local seats = b .. ':seats:' .. room
  if info[1] and info[2] == '0' then
    if redis.call('ZSCORE', seats, ARGV[1]) then return room end
    local n = redis.call('ZCARD', seats)
    if n < tonumber(info[1]) then
      redis.call('ZADD', seats, ARGV[5], ARGV[1])
      redis.call('ZADD', b .. ':pending', ARGV[5], room .. ' ' .. ARGV[1])
      if n + 1 >= tonumber(info[1]) then redis.call('ZREM', b .. ':avail', room) end
      return room
    end
  end
  redis.call('ZREM', b .. ':avail', room)
end
local room = ARGV[2]
redis.call('HSET', b .. ':info:' .. room, 'max', ARGV[3], 'private', '0', 'created', ARGV[4], 'meta', ARGV[6])
redis.call('ZADD', b .. ':all', ARGV[4], room)
redis.call('ZADD', b .. ':listed', ARGV[4], room)
redis.call('ZADD', b .. ':seats:' .. room, ARGV[5], ARGV[1])
redis.call('ZADD', b .. ':pending', ARGV[5], room .. ' ' .. ARGV[1])
if tonumber(ARGV[3]) > 1 then redis.call('ZADD', b .. ':avail', ARGV[4], room) end
return room
"#;

/// ARGV: room, player, now ms. 1 taken, 0 full, -1 unregistered.
const TAKE: &str = r#"
expire(ARGV[3])
local max = redis.call('HGET', b .. ':info:' .. ARGV[1], 'max')
if not max then return -1 end
local seats = b .. ':seats:' .. ARGV[1]
local s = redis.call('ZSCORE', seats, ARGV[2])
if s then
  if tonumber(s) ~= 0 then
    redis.call('ZADD', seats, 0, ARGV[2])
    redis.call('ZREM', b .. ':pending', ARGV[1] .. ' ' .. ARGV[2])
  end
  return 1
end
local n = redis.call('ZCARD', seats)
if n >= tonumber(max) then return 0 end
redis.call('ZADD', seats, 0, ARGV[2])
if n + 1 >= tonumber(max) then redis.call('ZREM', b .. ':avail', ARGV[1]) end
return 1
"#;

/// ARGV: room, player.
const FREE: &str = r#"
redis.call('ZREM', b .. ':seats:' .. ARGV[1], ARGV[2])
redis.call('ZREM', b .. ':pending', ARGV[1] .. ' ' .. ARGV[2])
reopen(ARGV[1])
return 1
"#;

/// ARGV: room.
const REMOVE: &str = r#"
redis.call('DEL', b .. ':info:' .. ARGV[1], b .. ':seats:' .. ARGV[1])
redis.call('ZREM', b .. ':all', ARGV[1])
redis.call('ZREM', b .. ':listed', ARGV[1])
redis.call('ZREM', b .. ':avail', ARGV[1])
return 1
"#;

/// ARGV: room, max players, private (0/1), created ms, metadata. 1 registered, 0 exists.
const REGISTER: &str = r#"
if redis.call('EXISTS', b .. ':info:' .. ARGV[1]) == 1 then return 0 end
redis.call('HSET', b .. ':info:' .. ARGV[1], 'max', ARGV[2], 'private', ARGV[3], 'created', ARGV[4], 'meta', ARGV[5])
redis.call('ZADD', b .. ':all', ARGV[4], ARGV[1])
if ARGV[3] == '0' then
  redis.call('ZADD', b .. ':listed', ARGV[4], ARGV[1])
  if tonumber(ARGV[2]) > 0 then redis.call('ZADD', b .. ':avail', ARGV[4], ARGV[1]) end
end
return 1
"#;

/// ARGV: `all` or `listed`, limit, now ms. Flat: room, max, private, created, meta, seats.
const LIST: &str = r#"
expire(ARGV[3])
local out = {}
for _, room in ipairs(redis.call('ZRANGE', b .. ':' .. ARGV[1], 0, tonumber(ARGV[2]) - 1)) do
  local l = listing(room)
  if l then for _, v in ipairs(l) do table.insert(out, v) end end
end
return out
"#;

/// ARGV: room, now ms. Flat as LIST, or empty.
const GET: &str = r#"
expire(ARGV[2])
return listing(ARGV[1]) or {}
"#;

/// One row of LIST/GET.
type Row = (String, u32, String, u64, Vec<u8>, u32);

/// [`Lobby`] on Redis (one Redis or a Redis Cluster). See the module docs.
pub struct RedisLobby {
    conn: Conn,
    prefix: String,
    reserve: Script,
    take: Script,
    free: Script,
    remove: Script,
    register: Script,
    list: Script,
    get: Script,
}

impl RedisLobby {
    pub fn new(conn: Conn, prefix: &str) -> RedisLobby {
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        RedisLobby {
            conn,
            prefix: prefix.to_owned(),
            reserve: script(RESERVE),
            take: script(TAKE),
            free: script(FREE),
            remove: script(REMOVE),
            register: script(REGISTER),
            list: script(LIST),
            get: script(GET),
        }
    }

    /// `KEYS[1]` of every script: routes it to the type's slot; the scripts derive the rest.
    fn key(&self, room_type: &str) -> String {
        format!("{}:{{lobby:{room_type}}}:all", self.prefix)
    }

    /// Runs a script, retrying once after a failure (every lobby script is idempotent for
    /// the same arguments, but `register`, whose retry may find its own first write).
    async fn run<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        script: &Script,
        room_type: &str,
        args: &[Vec<u8>],
        retry: bool,
    ) -> Result<T, LobbyError> {
        let mut invocation = script.prepare_invoke();
        invocation.key(self.key(room_type));
        for a in args {
            invocation.arg(a.as_slice());
        }
        let mut conn = self.conn.clone();
        let started = std::time::Instant::now();
        let mut result = invocation.invoke_async::<T>(&mut conn).await;
        if retry && result.is_err() {
            counter!(names::REDIS_ERRORS, "op" => op).increment(1);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            result = invocation.invoke_async::<T>(&mut conn).await;
        }
        histogram!(names::REDIS_SECONDS, "op" => op).record(started.elapsed().as_secs_f64());
        result.map_err(|e| {
            counter!(names::REDIS_ERRORS, "op" => op).increment(1);
            LobbyError::Unavailable(e.to_string())
        })
    }
}

fn arg(s: impl ToString) -> Vec<u8> {
    s.to_string().into_bytes()
}

fn encode_meta(meta: &Doc) -> Vec<u8> {
    rmp_serde::to_vec(meta).unwrap_or_default()
}

fn listing(room_type: &str, row: Row) -> Listing {
    let (room, max_players, private, created, meta, members) = row;
    let metadata =
        if meta.is_empty() { Doc::map() } else { rmp_serde::from_slice(&meta).unwrap_or_default() };
    Listing {
        room,
        room_type: room_type.to_owned(),
        members,
        max_players,
        private: private == "1",
        metadata,
        created,
    }
}

#[async_trait]
impl Lobby for RedisLobby {
    async fn register(&self, room_type: &str, room: &str, settings: &RoomSettings) -> Result<(), LobbyError> {
        let args = [
            arg(room),
            arg(settings.max_players),
            arg(u8::from(settings.private)),
            arg(settings.created),
            encode_meta(&settings.metadata),
        ];
        match self.run::<i64>("lobby_register", &self.register, room_type, &args, false).await? {
            1 => Ok(()),
            _ => Err(LobbyError::Exists(room.to_owned())),
        }
    }

    async fn reserve(
        &self,
        room_type: &str,
        player: &str,
        new_room: &str,
        max_players: u32,
    ) -> Result<String, LobbyError> {
        let now = crate::session::unix_ms();
        let deadline = now + RESERVATION.as_millis() as u64;
        let args =
            [arg(player), arg(new_room), arg(max_players), arg(now), arg(deadline), encode_meta(&Doc::map())];
        self.run("lobby_reserve", &self.reserve, room_type, &args, true).await
    }

    async fn take_seat(&self, room_type: &str, room: &str, player: &str) -> Result<Seat, LobbyError> {
        let args = [arg(room), arg(player), arg(crate::session::unix_ms())];
        Ok(match self.run::<i64>("lobby_take", &self.take, room_type, &args, true).await? {
            1 => Seat::Taken,
            0 => Seat::Full,
            _ => Seat::Unregistered,
        })
    }

    async fn free_seat(&self, room_type: &str, room: &str, player: &str) -> Result<(), LobbyError> {
        self.run::<i64>("lobby_free", &self.free, room_type, &[arg(room), arg(player)], true)
            .await
            .map(|_| ())
    }

    async fn remove(&self, room_type: &str, room: &str) -> Result<(), LobbyError> {
        self.run::<i64>("lobby_remove", &self.remove, room_type, &[arg(room)], true).await.map(|_| ())
    }

    async fn get(&self, room_type: &str, room: &str) -> Result<Option<Listing>, LobbyError> {
        let args = [arg(room), arg(crate::session::unix_ms())];
        let rows: Vec<Row> = self.run("lobby_get", &self.get, room_type, &args, true).await.map(flat_rows)?;
        Ok(rows.into_iter().next().map(|row| listing(room_type, row)))
    }

    async fn list(
        &self,
        room_type: &str,
        include_private: bool,
        limit: usize,
    ) -> Result<Vec<Listing>, LobbyError> {
        let which = if include_private { "all" } else { "listed" };
        let args = [arg(which), arg(limit.max(1)), arg(crate::session::unix_ms())];
        let rows: Vec<Row> =
            self.run("lobby_list", &self.list, room_type, &args, true).await.map(flat_rows)?;
        Ok(rows.into_iter().map(|row| listing(room_type, row)).collect())
    }
}

/// Groups a flat script answer into rows of six.
fn flat_rows(values: Vec<redis::Value>) -> Vec<Row> {
    values
        .chunks_exact(6)
        .filter_map(|c| {
            let text = |v: &redis::Value| redis::from_redis_value::<String>(v.clone()).ok();
            let bytes = |v: &redis::Value| redis::from_redis_value::<Vec<u8>>(v.clone()).ok();
            Some((
                text(&c[0])?,
                text(&c[1])?.parse().ok()?,
                text(&c[2])?,
                text(&c[3])?.parse().ok()?,
                bytes(&c[4])?,
                redis::from_redis_value::<u32>(c[5].clone()).ok()?,
            ))
        })
        .collect()
}
