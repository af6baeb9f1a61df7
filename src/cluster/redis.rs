//! `RedisBackplane`: room ownership and durability in Redis.
//!
//! - **Claim** (one script): take the lease if it is free or already ours, and move the epoch
//!   to `max(epoch + 1, now in ms)`, so it never goes backwards, even if Redis lost the key.
//!   Then restore: the snapshot, plus the log after it, replayed (state, seq, and every
//!   player's applied cids, which exactly-once needs).
//! - **Commit** (one script per flush): refuse unless the lease is ours, the epoch is ours and
//!   the head is the seq we build on; then `XADD` each delta with its seq as the entry id and
//!   move the head. The room fans a batch out only after this returns OK (G2).
//! - **Snapshot** (one script): fenced the same way; store it if newer, trim the log below
//!   it (keeping `--delta-ring` entries for resumes).
//! - **Leases** are renewed every third of the TTL on their own connection by compare-and-set
//!   (lease and epoch must still be ours). A room whose lease could not be renewed for two
//!   thirds of the TTL is fenced locally (its room stops) before the lease can expire in
//!   Redis, so two nodes never act as owner at once (G1).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use metrics::{counter, histogram};
use redis::aio::ConnectionLike;
use redis::Script;
use tokio_util::sync::CancellationToken;

use super::conn::{Conn, Target};
use super::keys::Keys;
use super::unix_ms;
use crate::backplane::{
    Backplane, BackplaneError, Claim, CommitBatch, LogEntry, PlayerRecord, RoomSnapshot, SNAPSHOT_FORMAT,
};
use crate::protocol::{apply_resolved, decode_server, ServerMsg};
use crate::telemetry::names;

const CLAIM: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return {0, cur} end
local e = tonumber(redis.call('GET', KEYS[2]) or '0')
local n = math.max(e + 1, tonumber(ARGV[3]))
local s = string.format('%d', n)
redis.call('SET', KEYS[2], s)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, s}
"#;

const RENEW: &str = r#"
local lease = redis.call('GET', KEYS[1])
if lease == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if not lease and redis.call('EXISTS', KEYS[2]) == 0 then return 2 end
return 0
"#;

const RESEED: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return {0, cur} end
local e = tonumber(redis.call('GET', KEYS[2]) or '0')
local n = math.max(e + 1, tonumber(ARGV[3]))
local s = string.format('%d', n)
redis.call('SET', KEYS[2], s)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[4])
redis.call('SET', KEYS[4], ARGV[5])
redis.call('SET', KEYS[5], ARGV[4])
return {1, s}
"#;

const COMMIT: &str = r#"
local lease = redis.call('GET', KEYS[1])
if not lease and redis.call('EXISTS', KEYS[2]) == 0 then return redis.error_reply('LOST') end
if lease ~= ARGV[1] then return redis.error_reply('FENCED lease') end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return redis.error_reply('FENCED epoch') end
local head = redis.call('GET', KEYS[3]) or '0'
if head ~= ARGV[3] then return redis.error_reply('FENCED head ' .. head) end
for i = 5, #ARGV, 3 do
  redis.call('XADD', KEYS[4], ARGV[i], ARGV[i + 1], ARGV[i + 2])
end
redis.call('SET', KEYS[3], ARGV[4])
return ARGV[4]
"#;

const SNAPSHOT: &str = r#"
local lease = redis.call('GET', KEYS[1])
if not lease and redis.call('EXISTS', KEYS[2]) == 0 then return redis.error_reply('LOST') end
if lease ~= ARGV[1] then return redis.error_reply('FENCED lease') end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return redis.error_reply('FENCED epoch') end
local cur = tonumber(redis.call('GET', KEYS[4]) or '-1')
if tonumber(ARGV[3]) > cur then
  redis.call('SET', KEYS[3], ARGV[4])
  redis.call('SET', KEYS[4], ARGV[3])
  redis.call('XTRIM', KEYS[5], 'MINID', ARGV[5] .. '-0')
  -- The snapshot may cover volatile deltas the log never saw: the head moves up to it.
  if tonumber(ARGV[3]) > tonumber(redis.call('GET', KEYS[6]) or '0') then
    redis.call('SET', KEYS[6], ARGV[3])
  end
end
return 1
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '0' then
  for i = 2, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
end
return 1
"#;

/// Pause before the one retry of a command whose outcome is unknown.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Settings the backplane takes from the node's configuration.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// One Redis or a Redis Cluster (`--redis`).
    pub target: Target,
    /// CA to trust for `rediss://` (else the system's trust store).
    pub ca_file: Option<std::path::PathBuf>,
    pub prefix: String,
    pub lease_ttl: Duration,
    pub timeout: Duration,
    pub room_key_ttl: Duration,
    /// Log entries kept below a snapshot, for resumes.
    pub keep_below_snapshot: u64,
    /// Deliberately broken restores (`--unsafe-restore-without-log`, `fault-injection`
    /// builds only): the log after the snapshot is discarded. Always false otherwise.
    pub unsafe_restore_without_log: bool,
    /// Replicas that must acknowledge a commit before it counts as durable (`WAIT`,
    /// `--redis-wait-replicas`); 0 acknowledges on the master's write alone.
    pub wait_replicas: u32,
    /// How long a commit waits for those replicas before its outcome counts as unknown.
    pub wait_timeout: Duration,
}

/// A room this node owns.
struct Owned {
    epoch: u64,
    fenced: CancellationToken,
    lost: CancellationToken,
    /// Last successful claim or renewal (local clock, taken before the command was sent).
    renewed_at: Instant,
}

/// The durable, fenced backplane. See the module docs.
pub struct RedisBackplane {
    keys: Keys,
    incarnation: Arc<str>,
    settings: RedisSettings,
    conn: Conn,
    lease_conn: Conn,
    owned: DashMap<String, Owned>,
    /// Unix ms of the last successful Redis round trip of the renewer.
    last_ok_ms: AtomicU64,
    scripts: Scripts,
    /// Which Redis process this node talks to, to notice a restart.
    redis_run: std::sync::Mutex<RedisRun>,
}

/// The Redis process (its `run_id`) and when this node saw it change.
#[derive(Default)]
struct RedisRun {
    id: Option<String>,
    restarted_at: Option<Instant>,
}

struct Scripts {
    claim: Script,
    renew: Script,
    commit: Script,
    snapshot: Script,
    release: Script,
    reseed: Script,
}

fn unavailable(e: redis::RedisError) -> BackplaneError {
    BackplaneError::Unavailable(e.to_string())
}

/// Classifies a script error: our own fencing refusals vs. trouble reaching Redis.
fn script_error(e: redis::RedisError) -> BackplaneError {
    let text = e.to_string();
    if text.contains("LOST") {
        BackplaneError::Lost
    } else if text.contains("FENCED") {
        BackplaneError::Fenced(text)
    } else {
        BackplaneError::Unavailable(text)
    }
}

impl RedisBackplane {
    /// Connects (two connections: one for rooms, one for lease renewals) and starts the
    /// renewer, which stops with `shutdown`.
    pub async fn connect(
        settings: RedisSettings,
        incarnation: Arc<str>,
        shutdown: CancellationToken,
    ) -> Result<Arc<RedisBackplane>, BackplaneError> {
        let ca_file = settings.ca_file.as_deref();
        let conn = settings.target.connect(ca_file, settings.timeout).await.map_err(unavailable)?;
        let lease_conn = settings.target.connect(ca_file, settings.timeout).await.map_err(unavailable)?;
        let backplane = Arc::new(RedisBackplane {
            keys: Keys::new(&settings.prefix),
            incarnation,
            settings,
            conn,
            lease_conn,
            owned: DashMap::new(),
            last_ok_ms: AtomicU64::new(unix_ms()),
            redis_run: std::sync::Mutex::new(RedisRun::default()),
            scripts: Scripts {
                claim: Script::new(CLAIM),
                renew: Script::new(RENEW),
                commit: Script::new(COMMIT),
                snapshot: Script::new(SNAPSHOT),
                release: Script::new(RELEASE),
                reseed: Script::new(RESEED),
            },
        });
        tokio::spawn(renewer(Arc::downgrade(&backplane), shutdown));
        Ok(backplane)
    }

    /// Fences `room` locally: its room stops acting as owner. `op` is the label of
    /// `names::FENCING_REJECTIONS`.
    fn fence(&self, room: &str, op: &'static str, why: &str) {
        if let Some((_, owned)) = self.owned.remove(room) {
            counter!(names::FENCING_REJECTIONS, "op" => op).increment(1);
            tracing::warn!(room, op, why, "fenced: this node stops owning the room");
            owned.fenced.cancel();
        }
    }

    /// Renews every owned lease once; fences rooms that lost theirs or could not be renewed
    /// in time.
    async fn renew_all(&self) {
        let ttl = self.settings.lease_ttl;
        let rooms: Vec<(String, u64)> =
            self.owned.iter().map(|e| (e.key().clone(), e.value().epoch)).collect();
        let started = Instant::now();
        let renewals = rooms.iter().map(|(room, epoch)| {
            let mut conn = self.lease_conn.clone();
            let (lease, epoch_key) = (self.keys.lease(room), self.keys.epoch(room));
            let script = &self.scripts.renew;
            async move {
                let sent = Instant::now();
                let r: redis::RedisResult<i64> = script
                    .key(lease)
                    .key(epoch_key)
                    .arg(&*self.incarnation)
                    .arg(epoch.to_string())
                    .arg(ttl.as_millis() as u64)
                    .invoke_async(&mut conn)
                    .await;
                histogram!(names::REDIS_SECONDS, "op" => "renew").record(sent.elapsed().as_secs_f64());
                r
            }
        });
        let results = futures_util::future::join_all(renewals).await;
        let mut any_ok = rooms.is_empty();
        for ((room, _), result) in rooms.iter().zip(results) {
            match result {
                Ok(1) => {
                    any_ok = true;
                    if let Some(mut owned) = self.owned.get_mut(room) {
                        owned.renewed_at = started;
                    }
                }
                Ok(2) => {
                    // Redis lost the room (restarted empty): the owner writes it back.
                    any_ok = true;
                    if let Some((_, owned)) = self.owned.remove(room) {
                        tracing::warn!(room, "Redis lost the room's keys; re-seeding from memory");
                        owned.lost.cancel();
                    }
                }
                Ok(_) => self.fence(room, "renew", "lease or epoch taken by another node"),
                Err(e) => {
                    counter!(names::REDIS_ERRORS, "op" => "renew").increment(1);
                    tracing::debug!(room, error = %e, "lease renewal failed")
                }
            }
        }
        if rooms.is_empty() {
            let mut conn = self.lease_conn.clone();
            let sent = Instant::now();
            any_ok = redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok();
            histogram!(names::REDIS_SECONDS, "op" => "ping").record(sent.elapsed().as_secs_f64());
            if !any_ok {
                counter!(names::REDIS_ERRORS, "op" => "ping").increment(1);
            }
        }
        if any_ok {
            self.last_ok_ms.store(unix_ms(), Ordering::Relaxed);
        }
        // Stop acting as owner before the lease can have expired in Redis.
        let deadline = ttl * 2 / 3;
        let stale: Vec<String> = self
            .owned
            .iter()
            .filter(|e| e.renewed_at.elapsed() > deadline)
            .map(|e| e.key().clone())
            .collect();
        for room in stale {
            self.fence(&room, "renew_timeout", "lease not renewed in time");
        }
    }

    /// Records a won claim (`won == 1`, `value` = the new epoch) as owned, with fresh
    /// tokens; a lost one (`value` = the holder) is `OwnedElsewhere`.
    /// How long claims of rooms Redis has no keys for are held back after a Redis restart:
    /// long enough for every owner to notice (it renews every third of the lease) and write
    /// its room back from memory, so no other node starts such a room empty meanwhile.
    fn reseed_window(&self) -> Duration {
        self.settings.lease_ttl * 2
    }

    /// Reads Redis's `run_id`; a change from the one seen before means Redis restarted (and,
    /// without persistence, lost every key). Returns how much of the reseed window is left.
    async fn reseed_hold(&self) -> Result<Option<Duration>, BackplaneError> {
        // On a Redis Cluster `INFO` answers from whichever node the client picks, so run_ids
        // differ from call to call; a master restarted empty there is its replica's job (a
        // promotion keeps the data). Only a single Redis is watched.
        if matches!(self.conn, Conn::Cluster(_)) {
            return Ok(None);
        }
        let mut conn = self.conn.clone();
        let info: String =
            redis::cmd("INFO").arg("server").query_async(&mut conn).await.map_err(unavailable)?;
        let run_id = info.lines().find_map(|l| l.strip_prefix("run_id:")).map(|s| s.trim().to_owned());
        let mut run = self.redis_run.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(id) = run_id {
            if run.id.as_ref().is_some_and(|known| *known != id) {
                tracing::warn!(
                    window_ms = self.reseed_window().as_millis() as u64,
                    "Redis restarted (its run_id changed): rooms it has no keys for are not \
                     claimed until their owners had time to write them back"
                );
                run.restarted_at = Some(Instant::now());
            }
            run.id = Some(id);
        }
        Ok(run.restarted_at.and_then(|at| self.reseed_window().checked_sub(at.elapsed())))
    }

    /// One claim: the lease (and a new epoch) if it is free or already ours, then the
    /// room's state from Redis.
    async fn claim_once(&self, room: &str) -> Result<Claim, BackplaneError> {
        let started = Instant::now();
        let mut conn = self.conn.clone();
        if let Some(left) = self.reseed_hold().await? {
            let known: bool = redis::cmd("EXISTS")
                .arg(self.keys.epoch(room))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if !known {
                return Err(BackplaneError::Unavailable(format!(
                    "Redis restarted; waiting {} ms for the room's owner to write it back",
                    left.as_millis()
                )));
            }
        }
        let claimed: redis::RedisResult<(i64, String)> = self
            .scripts
            .claim
            .key(self.keys.lease(room))
            .key(self.keys.epoch(room))
            .arg(&*self.incarnation)
            .arg(self.settings.lease_ttl.as_millis() as u64)
            .arg(unix_ms())
            .invoke_async(&mut conn)
            .await;
        histogram!(names::REDIS_SECONDS, "op" => "claim").record(started.elapsed().as_secs_f64());
        let (won, value) = claimed
            .inspect_err(|_| counter!(names::REDIS_ERRORS, "op" => "claim").increment(1))
            .map_err(unavailable)?;
        let claim = self.take_ownership(room, won, &value, started)?;
        let epoch = claim.epoch;
        match self.restore(room).await {
            Ok(restored) => {
                tracing::info!(room, epoch, restored_seq = restored.as_ref().map(|s| s.seq), "room claimed");
                Ok(Claim { restored, ..claim })
            }
            Err(e) => {
                let _ = self.release(room, epoch, false).await;
                Err(e)
            }
        }
    }

    fn take_ownership(
        &self,
        room: &str,
        won: i64,
        value: &str,
        started: Instant,
    ) -> Result<Claim, BackplaneError> {
        if won != 1 {
            return Err(BackplaneError::OwnedElsewhere(value.to_owned()));
        }
        let epoch: u64 =
            value.parse().map_err(|_| BackplaneError::Corrupt(format!("epoch {value:?} of {room}")))?;
        let (fenced, lost) = (CancellationToken::new(), CancellationToken::new());
        let owned = Owned { epoch, fenced: fenced.clone(), lost: lost.clone(), renewed_at: started };
        self.owned.insert(room.to_owned(), owned);
        Ok(Claim { epoch, restored: None, fenced, lost })
    }

    /// Reads the snapshot and replays the log after it.
    async fn restore(&self, room: &str) -> Result<Option<RoomSnapshot>, BackplaneError> {
        let mut conn = self.conn.clone();
        let (snap, head): (Option<Vec<u8>>, Option<u64>) = redis::pipe()
            .get(self.keys.snap(room))
            .get(self.keys.head(room))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let Some(snap) = snap else {
            if head.unwrap_or(0) > 0 {
                // A log without a snapshot (keys expired unevenly): nothing to restore from.
                tracing::warn!(room, "log without a snapshot; starting the room afresh");
                let _: () = redis::pipe()
                    .del(self.keys.log(room))
                    .del(self.keys.head(room))
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
            }
            return Ok(None);
        };
        let mut snapshot: RoomSnapshot = rmp_serde::from_slice(&snap)
            .map_err(|e| BackplaneError::Corrupt(format!("snapshot of {room}: {e}")))?;
        if snapshot.v != SNAPSHOT_FORMAT {
            return Err(BackplaneError::Corrupt(format!("snapshot format {} of {room}", snapshot.v)));
        }
        if self.settings.unsafe_restore_without_log {
            // The deliberate bug: trust the snapshot, drop the tail of the log (acknowledged
            // changes), and let the head fall back so this owner's commits go through.
            tracing::error!(room, seq = snapshot.seq, "UNSAFE: restoring without the log");
            let _: () = redis::pipe()
                .del(self.keys.log(room))
                .set(self.keys.head(room), snapshot.seq)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            return Ok(Some(snapshot));
        }
        let head = head.unwrap_or(snapshot.seq);
        // Everything after the snapshot's own delta: later deltas (`<seq>-0`) and membership
        // changes (`<seq>-1..`), in order.
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.log(room))
            .arg(format!("{}-1", snapshot.seq))
            .arg("+")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let corrupt = |what: String| BackplaneError::Corrupt(format!("log of {room}: {what}"));
        for entry in entries.ids {
            let (seq, n) = entry.id.split_once('-').unwrap_or((&entry.id, "0"));
            let (seq, n): (u64, u64) = (seq.parse().unwrap_or(0), n.parse().unwrap_or(0));
            if n != 0 {
                if let Some(player) = entry.get::<String>("m") {
                    if !snapshot.players.iter().any(|p| p.player == player) {
                        snapshot.players.push(PlayerRecord { player, last_cid: 0, applied: Vec::new() });
                    }
                } else if let Some(player) = entry.get::<String>("l") {
                    snapshot.players.retain(|p| p.player != player);
                }
                continue;
            }
            // Volatile deltas are not logged, so seqs may skip; they never go back.
            if seq <= snapshot.seq {
                return Err(corrupt(format!("goes back from {} to {seq}", snapshot.seq)));
            }
            let bytes: Vec<u8> =
                entry.get("d").ok_or_else(|| corrupt(format!("entry {seq} has no delta")))?;
            let Ok(ServerMsg::Delta(delta)) = decode_server(&bytes) else {
                return Err(corrupt(format!("entry {seq} is not a delta")));
            };
            for op in &delta.ops {
                apply_resolved(&mut snapshot.state, op).map_err(|e| corrupt(format!("entry {seq}: {e}")))?;
            }
            if let (Some(player), Some(cid)) = (delta.by, delta.cid) {
                record_applied(&mut snapshot.players, &player, cid, seq);
            }
            snapshot.seq = seq;
        }
        if snapshot.seq < head {
            return Err(corrupt(format!("ends at {}, head is {head}", snapshot.seq)));
        }
        Ok(Some(snapshot))
    }

    /// After a commit: waits until `--redis-wait-replicas` replicas of the room's master
    /// hold it (`WAIT`). Fewer in time is `Unavailable`: the batch may be on the master only,
    /// so it is not acknowledged (the room hands off; a retry is deduplicated by its cid).
    async fn wait_replicas(&self, room: &str, conn: &mut Conn) -> Result<String, BackplaneError> {
        let (wanted, timeout) = (self.settings.wait_replicas, self.settings.wait_timeout);
        let sent = Instant::now();
        let acked = conn.wait_replicas(&self.keys.head(room), wanted, timeout).await;
        histogram!(names::REDIS_SECONDS, "op" => "wait").record(sent.elapsed().as_secs_f64());
        match acked {
            Ok(n) if n >= u64::from(wanted) => Ok(String::new()),
            Ok(n) => {
                counter!(names::REDIS_ERRORS, "op" => "wait").increment(1);
                Err(BackplaneError::Unavailable(format!(
                    "commit reached {n} of {wanted} replicas in {} ms",
                    timeout.as_millis()
                )))
            }
            Err(e) => {
                counter!(names::REDIS_ERRORS, "op" => "wait").increment(1);
                Err(unavailable(e))
            }
        }
    }

    fn key_list(&self, room: &str) -> [String; 4] {
        [self.keys.lease(room), self.keys.epoch(room), self.keys.head(room), self.keys.log(room)]
    }
}

/// The head a `FENCED head <n>` refusal reports.
fn fenced_head(why: &str) -> Option<u64> {
    let rest = &why[why.find("FENCED head ")? + "FENCED head ".len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Adds (cid, seq) to `player`'s record.
fn record_applied(players: &mut Vec<PlayerRecord>, player: &str, cid: u64, seq: u64) {
    match players.iter_mut().find(|p| p.player == player) {
        Some(p) => {
            p.last_cid = p.last_cid.max(cid);
            p.applied.push((cid, seq));
        }
        None => {
            players.push(PlayerRecord { player: player.to_owned(), last_cid: cid, applied: vec![(cid, seq)] })
        }
    }
}

async fn renewer(backplane: std::sync::Weak<RedisBackplane>, shutdown: CancellationToken) {
    loop {
        let Some(b) = backplane.upgrade() else { return };
        let period = b.settings.lease_ttl / 3;
        // Keeps the Redis run_id current, so that a restart is noticed even by a node that
        // claims nothing until after it.
        if let Err(e) = b.reseed_hold().await {
            tracing::debug!(error = %e, "INFO server failed");
        }
        b.renew_all().await;
        drop(b);
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn healthy(&self) -> bool {
        unix_ms().saturating_sub(self.last_ok_ms.load(Ordering::Relaxed))
            < self.settings.lease_ttl.as_millis() as u64
    }

    fn wants_snapshots(&self) -> bool {
        true
    }

    async fn claim(&self, room: &str, _room_type: &str) -> Result<Claim, BackplaneError> {
        match self.claim_once(room).await {
            // The first command on a connection that broke while idle fails (the connection
            // manager reconnects behind it): try once more, as commits do. A claim is safe to
            // repeat: the script accepts a lease this node already holds.
            Err(BackplaneError::Unavailable(first)) => {
                tracing::debug!(room, error = %first, "claim failed; retrying once");
                tokio::time::sleep(RETRY_PAUSE).await;
                self.claim_once(room).await
            }
            other => other,
        }
    }

    async fn commit(&self, room: &str, epoch: u64, batch: CommitBatch<'_>) -> Result<(), BackplaneError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.commit.prepare_invoke();
        for key in self.key_list(room) {
            invocation.key(key);
        }
        let head = batch
            .entries
            .iter()
            .filter_map(|e| match e {
                LogEntry::Delta { seq, .. } => Some(*seq),
                _ => None,
            })
            .max()
            .unwrap_or(batch.prev_seq);
        invocation
            .arg(&*self.incarnation)
            .arg(epoch.to_string())
            .arg(batch.prev_seq.to_string())
            .arg(head.to_string());
        for entry in batch.entries {
            // Deltas are `<seq>-0`; membership changes after delta `s` are `<s>-*` (Redis
            // numbers them 1, 2, ... until the next delta).
            match entry {
                LogEntry::Delta { seq, bytes } => {
                    invocation.arg(format!("{seq}-0")).arg("d").arg(bytes.as_ref())
                }
                LogEntry::Joined { after, player } => {
                    invocation.arg(format!("{after}-*")).arg("m").arg(player)
                }
                LogEntry::Left { after, player } => invocation.arg(format!("{after}-*")).arg("l").arg(player),
            };
        }
        let sent = Instant::now();
        let mut result = invocation.invoke_async::<String>(&mut conn).await.map_err(script_error);
        if let Err(BackplaneError::Unavailable(first)) = &result {
            counter!(names::REDIS_ERRORS, "op" => "commit").increment(1);
            // The outcome is unknown (a timeout, or the first command on a connection that
            // broke while idle). Try once more: the script is fenced on the head, so a batch
            // that did land is refused with `FENCED head <our head>`, which means it is in.
            tracing::debug!(room, error = %first, "commit outcome unknown; retrying once");
            tokio::time::sleep(RETRY_PAUSE).await;
            result = match invocation.invoke_async::<String>(&mut conn).await.map_err(script_error) {
                Err(BackplaneError::Fenced(why)) if fenced_head(&why) == Some(head) => Ok(String::new()),
                other => other,
            };
            if matches!(result, Err(BackplaneError::Unavailable(_))) {
                counter!(names::REDIS_ERRORS, "op" => "commit").increment(1);
            }
        }
        if result.is_ok() && self.settings.wait_replicas > 0 {
            result = self.wait_replicas(room, &mut conn).await;
        }
        histogram!(names::REDIS_SECONDS, "op" => "commit").record(sent.elapsed().as_secs_f64());
        match result {
            Ok(_) => Ok(()),
            Err(BackplaneError::Fenced(why)) => {
                self.fence(room, "commit", &why);
                Err(BackplaneError::Fenced(why))
            }
            Err(e) => Err(e),
        }
    }

    async fn snapshot(&self, room: &str, snapshot: &RoomSnapshot) -> Result<(), BackplaneError> {
        let blob = rmp_serde::to_vec_named(snapshot).map_err(|e| BackplaneError::Corrupt(e.to_string()))?;
        histogram!(names::SNAPSHOT_BYTES).record(blob.len() as f64);
        let trim_below = snapshot.seq.saturating_sub(self.settings.keep_below_snapshot).max(1);
        let mut conn = self.conn.clone();
        let sent = Instant::now();
        let result: redis::RedisResult<i64> = self
            .scripts
            .snapshot
            .key(self.keys.lease(room))
            .key(self.keys.epoch(room))
            .key(self.keys.snap(room))
            .key(self.keys.snapseq(room))
            .key(self.keys.log(room))
            .key(self.keys.head(room))
            .arg(&*self.incarnation)
            .arg(snapshot.epoch.to_string())
            .arg(snapshot.seq.to_string())
            .arg(blob)
            .arg(trim_below.to_string())
            .invoke_async(&mut conn)
            .await;
        histogram!(names::REDIS_SECONDS, "op" => "snapshot").record(sent.elapsed().as_secs_f64());
        match result.map_err(script_error) {
            Ok(_) => Ok(()),
            Err(BackplaneError::Fenced(why)) => {
                self.fence(room, "snapshot", &why);
                Err(BackplaneError::Fenced(why))
            }
            Err(e @ BackplaneError::Unavailable(_)) => {
                counter!(names::REDIS_ERRORS, "op" => "snapshot").increment(1);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn reseed(&self, room: &str, snapshot: &RoomSnapshot) -> Result<Claim, BackplaneError> {
        let started = Instant::now();
        let blob = rmp_serde::to_vec_named(snapshot).map_err(|e| BackplaneError::Corrupt(e.to_string()))?;
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.reseed.prepare_invoke();
        for key in [
            self.keys.lease(room),
            self.keys.epoch(room),
            self.keys.head(room),
            self.keys.snap(room),
            self.keys.snapseq(room),
        ] {
            invocation.key(key);
        }
        invocation
            .arg(&*self.incarnation)
            .arg(self.settings.lease_ttl.as_millis() as u64)
            .arg(unix_ms())
            .arg(snapshot.seq.to_string())
            .arg(blob);
        // Re-seeding follows a Redis restart: the first command on an idle connection may
        // meet the broken socket. The script only takes a free or own lease: safe to retry.
        let sent = Instant::now();
        let mut outcome = invocation.invoke_async::<(i64, String)>(&mut conn).await;
        for _ in 0..3 {
            if outcome.is_ok() {
                break;
            }
            counter!(names::REDIS_ERRORS, "op" => "reseed").increment(1);
            tokio::time::sleep(RETRY_PAUSE).await;
            outcome = invocation.invoke_async::<(i64, String)>(&mut conn).await;
        }
        histogram!(names::REDIS_SECONDS, "op" => "reseed").record(sent.elapsed().as_secs_f64());
        let (won, value) = outcome
            .inspect_err(|_| counter!(names::REDIS_ERRORS, "op" => "reseed").increment(1))
            .map_err(unavailable)?;
        let claim = self.take_ownership(room, won, &value, started)?;
        tracing::info!(room, epoch = claim.epoch, seq = snapshot.seq, "room re-seeded");
        Ok(claim)
    }

    async fn release(&self, room: &str, _epoch: u64, dispose: bool) -> Result<(), BackplaneError> {
        self.owned.remove(room);
        let mut conn = self.conn.clone();
        let sent = Instant::now();
        let released: redis::RedisResult<i64> = self
            .scripts
            .release
            .key(self.keys.lease(room))
            .key(self.keys.epoch(room))
            .key(self.keys.head(room))
            .key(self.keys.log(room))
            .key(self.keys.snap(room))
            .key(self.keys.snapseq(room))
            .arg(&*self.incarnation)
            .arg(if dispose { self.settings.room_key_ttl.as_millis() as u64 } else { 0 })
            .invoke_async(&mut conn)
            .await;
        histogram!(names::REDIS_SECONDS, "op" => "release").record(sent.elapsed().as_secs_f64());
        released
            .inspect_err(|_| counter!(names::REDIS_ERRORS, "op" => "release").increment(1))
            .map_err(unavailable)?;
        Ok(())
    }
}

/// Reads a room's current lease holder (`None` if free).
pub async fn lease_holder(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    room: &str,
) -> redis::RedisResult<Option<String>> {
    redis::cmd("GET").arg(keys.lease(room)).query_async(conn).await
}
