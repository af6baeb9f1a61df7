//! [`Player`]: a protocol-v1 test client driven frame by frame, for cluster tests that decide
//! *where* a player reconnects (another node, HAProxy) and check every step of it.
//!
//! It keeps a mirror (snapshot + deltas, G3), tracks every op batch by cid until it is acked
//! or rejected (G4), resumes with its session token and `(epoch, seq)` after a lost connection
//! (G5), re-sends unsettled batches with their original cids, and records what happened
//! (reconnects, snapshots, history breaks, the nodes it was served by) so that tests can
//! assert on it. Nothing runs in the background: the test drives a player with
//! [`step`](Player::step), [`stream`](Player::stream), [`settle`](Player::settle) or
//! [`wait_until`](Player::wait_until), all bounded by deadlines.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use gamerelay::protocol::{
    self, apply_resolved, ClientMsg, Delta, Doc, ErrorCode, Join, Op, ServerMsg, Snapshot,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long one connection attempt (TCP + upgrade) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a `hello` + `join` may take to be answered.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How many trace lines a player keeps for failure messages.
const TRACE_LINES: usize = 300;

/// One WebSocket connection speaking protocol frames.
pub struct Wire {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    buffered: VecDeque<ServerMsg>,
}

/// What [`Wire::recv`] got.
#[derive(Debug)]
pub enum Recv {
    Msg(ServerMsg),
    Closed { code: u16, reason: String },
    TimedOut,
}

impl Wire {
    pub async fn connect(url: &str) -> Result<Wire, String> {
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url)).await {
            Ok(Ok((ws, _))) => Ok(Wire { ws, buffered: VecDeque::new() }),
            Ok(Err(e)) => Err(format!("connect {url}: {e}")),
            Err(_) => Err(format!("connect {url}: no upgrade within {CONNECT_TIMEOUT:?}")),
        }
    }

    pub async fn send(&mut self, msg: &ClientMsg) -> Result<(), String> {
        self.ws.send(Message::Binary(protocol::encode(msg))).await.map_err(|e| e.to_string())
    }

    /// The next message (batches flattened), the close, or `TimedOut` at `deadline`.
    pub async fn recv(&mut self, deadline: Instant) -> Recv {
        if let Some(m) = self.buffered.pop_front() {
            return Recv::Msg(m);
        }
        loop {
            let next = tokio::time::timeout_at(deadline.into(), self.ws.next()).await;
            match next {
                Err(_) => return Recv::TimedOut,
                Ok(Some(Ok(Message::Binary(b)))) => match protocol::decode_server(&b) {
                    Ok(ServerMsg::Batch { msgs }) => {
                        self.buffered.extend(msgs);
                        if let Some(m) = self.buffered.pop_front() {
                            return Recv::Msg(m);
                        }
                    }
                    Ok(m) => return Recv::Msg(m),
                    Err(e) => panic!("the server sent a frame that does not decode: {e}"),
                },
                Ok(Some(Ok(Message::Close(frame)))) => {
                    let (code, reason) =
                        frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                    return Recv::Closed { code, reason };
                }
                Ok(Some(Ok(_))) => continue, // ping/pong/text: nothing for us
                Ok(Some(Err(e))) => return Recv::Closed { code: 1006, reason: e.to_string() },
                Ok(None) => return Recv::Closed { code: 1006, reason: "stream ended".into() },
            }
        }
    }

    /// Drops the TCP connection without a WebSocket close (as a lost network would).
    pub fn drop_abruptly(self) {
        drop(self.ws.into_inner());
    }
}

/// A client-side mirror of a room.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub epoch: u64,
    pub seq: u64,
    pub state: Doc,
}

impl Mirror {
    /// Installs a snapshot, checking its hash (§17).
    pub fn from_snapshot(s: &Snapshot) -> Mirror {
        assert_eq!(s.state.state_hash(), s.hash, "snapshot hash matches its state");
        Mirror { epoch: s.epoch, seq: s.seq, state: s.state.clone() }
    }

    pub fn hash(&self) -> String {
        self.state.state_hash()
    }

    /// The value at a `/`-separated path.
    pub fn get(&self, path: &str) -> Option<&Doc> {
        self.state.get(path.split('/'))
    }

    /// The integer at `path` (absent counts as 0).
    pub fn int(&self, path: &str) -> i64 {
        match self.get(path) {
            None => 0,
            Some(Doc::Int(n)) => *n,
            Some(other) => panic!("{path} is not an integer: {other:?}"),
        }
    }
}

/// What happened to a delta offered to the mirror.
enum Applied {
    Yes,
    Duplicate,
    /// Another epoch or a gap: the history must be healed by a resume.
    Break,
}

/// One `joined` this player got (first join or resume).
#[derive(Debug, Clone)]
pub struct JoinRecord {
    /// `welcome.node` of the connection.
    pub node: String,
    /// Whether it was a resume (`joined.resumed`).
    pub resumed: bool,
    /// The mirror's `(epoch, seq)` when the join was sent (what a resume claimed).
    pub from: (u64, u64),
    /// The snapshot's `(epoch, seq)` if the join came with one (`None`: served with deltas).
    pub snapshot: Option<(u64, u64)>,
    /// When it arrived.
    pub at: Instant,
}

/// How a joined connection of this player ended.
#[derive(Debug, Clone)]
pub struct Close {
    pub code: u16,
    pub reason: String,
    /// The node that served the connection.
    pub node: String,
    pub at: Instant,
}

struct Pending {
    ops: Vec<Op>,
    /// Re-send at this time (after a retryable reject).
    retry_at: Option<Instant>,
}

/// A scripted player. See the module documentation.
pub struct Player {
    /// Label for messages (`A`, `B`, ...).
    pub name: String,
    urls: Vec<String>,
    url_idx: usize,
    room: String,
    room_type: String,
    wire: Option<Wire>,
    /// This player's id (kept across resumes: checked).
    pub player_id: String,
    session: String,
    /// Resume attempts so far (`join.attempt` of the next one is one more).
    resume_attempts: u64,
    pub mirror: Mirror,
    next_cid: u64,
    pending: BTreeMap<u64, Pending>,
    /// Settled batches: cid -> seq of their delta (from the delta or an `ack`).
    pub acked: BTreeMap<u64, u64>,
    /// Refused batches that are not retried: cid -> code.
    pub rejected: BTreeMap<u64, String>,
    /// Connections lost and resumed.
    pub reconnects: u32,
    /// Deltas that did not continue the mirror (gap or epoch change), healed by resuming.
    pub history_breaks: u32,
    /// Snapshots installed (first join, resumes with a snapshot, resyncs).
    pub snapshots: u32,
    /// `joined.cid` of the last join or resume.
    pub last_joined_cid: u64,
    /// Whether the last join was served with deltas (`snapshot: nil`).
    pub last_resume_with_deltas: bool,
    /// `welcome.node` of every connection, in order.
    pub nodes_served_by: Vec<String>,
    /// Every `joined` (first join and resumes), in order.
    pub joins: Vec<JoinRecord>,
    /// Every close frame (or abrupt end: 1006) of a connection after its join.
    pub closes: Vec<Close>,
    /// Every delta applied to the mirror, by `(epoch, seq)` (checked against the durable log).
    pub deltas: BTreeMap<(u64, u64), Delta>,
    /// Every explicit `ack` frame received: `(cid, seq)`, in order.
    pub acks: Vec<(u64, u64)>,
    /// When each batch was settled (acked by delta or `ack`).
    pub acked_at: BTreeMap<u64, Instant>,
    /// Treat a connection on which nothing arrived for this long as dead (a `ping` goes out
    /// at half of it). Default 5 s.
    pub silence: Duration,
    /// How long a reconnect may try (over all URLs) before the test fails. Default 30 s.
    pub reconnect_timeout: Duration,
    /// On `session_expired` at a resume, join afresh as a new player instead of failing the
    /// test (for rooms that may legitimately have forgotten their players). Default false.
    pub rejoin_when_expired: bool,
    /// Sessions that expired and were replaced by a fresh join: (old player id, when).
    pub expired: Vec<(String, Instant)>,
    last_rx: Instant,
    ping_out: bool,
    ping_id: u64,
    progress: Arc<AtomicU64>,
    trace: VecDeque<String>,
    started: Instant,
}

impl Player {
    /// Connects to `urls[0]` and joins `room` as a new player (panics if refused).
    /// On a lost connection the player resumes at the same URL first, then the next ones.
    pub async fn join(name: &str, urls: &[String], room: &str, room_type: &str) -> Player {
        assert!(!urls.is_empty(), "a player needs at least one URL");
        let mut p = Player {
            name: name.to_owned(),
            urls: urls.to_vec(),
            url_idx: 0,
            room: room.to_owned(),
            room_type: room_type.to_owned(),
            wire: None,
            player_id: String::new(),
            session: String::new(),
            resume_attempts: 0,
            mirror: Mirror { epoch: 0, seq: 0, state: Doc::map() },
            next_cid: 1,
            pending: BTreeMap::new(),
            acked: BTreeMap::new(),
            rejected: BTreeMap::new(),
            reconnects: 0,
            history_breaks: 0,
            snapshots: 0,
            last_joined_cid: 0,
            last_resume_with_deltas: false,
            nodes_served_by: Vec::new(),
            joins: Vec::new(),
            closes: Vec::new(),
            deltas: BTreeMap::new(),
            acks: Vec::new(),
            acked_at: BTreeMap::new(),
            silence: Duration::from_secs(5),
            reconnect_timeout: Duration::from_secs(30),
            rejoin_when_expired: false,
            expired: Vec::new(),
            last_rx: Instant::now(),
            ping_out: false,
            ping_id: 0,
            progress: Arc::new(AtomicU64::new(0)),
            trace: VecDeque::new(),
            started: Instant::now(),
        };
        // A join may be refused with a retryable error (e.g. while the room changes owner).
        let deadline = Instant::now() + JOIN_TIMEOUT;
        let mut backoff = Duration::from_millis(50);
        while let Err(e) = p.try_join(0).await {
            p.note(format!("join at {} failed: {e}", urls[0]));
            if Instant::now() >= deadline {
                p.fail(&format!("join {room} at {} failed: {e}", urls[0]));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
        p
    }

    // --- facts ----------------------------------------------------------------------------

    pub fn is_connected(&self) -> bool {
        self.wire.is_some()
    }

    /// The URL of the current (or last) connection.
    pub fn url(&self) -> &str {
        &self.urls[self.url_idx]
    }

    /// Batches sent and not settled yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The number of acked batches, readable from another task while this player runs.
    pub fn progress(&self) -> Arc<AtomicU64> {
        self.progress.clone()
    }

    /// The node that serves the current connection.
    pub fn node(&self) -> &str {
        self.nodes_served_by.last().map_or("", String::as_str)
    }

    /// The session token (to resume this player from another connection).
    pub fn session(&self) -> &str {
        &self.session
    }

    /// One line about what happened to this player (for `--nocapture` runs).
    pub fn summary(&self) -> String {
        format!(
            "{} {}: at ({}, {}), acked {}, rejected {}, pending {}, reconnects {}, breaks {}, \
             snapshots {}, served by {:?}",
            self.name,
            self.player_id,
            self.mirror.epoch,
            self.mirror.seq,
            self.acked.len(),
            self.rejected.len(),
            self.pending.len(),
            self.reconnects,
            self.history_breaks,
            self.snapshots,
            self.nodes_served_by
        )
    }

    /// The recent events of this player, oldest first.
    pub fn trace(&self) -> Vec<String> {
        self.trace.iter().cloned().collect()
    }

    /// Panics with the player's recent history.
    pub fn fail(&self, msg: &str) -> ! {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        panic!(
            "player {} ({}): {msg}\n  mirror at ({}, {}), pending cids {:?}, acked {}, rejected {:?}, \
             reconnects {}, breaks {}, served by {:?}\n  recent events:\n    {}",
            self.name,
            self.player_id,
            self.mirror.epoch,
            self.mirror.seq,
            self.pending.keys().collect::<Vec<_>>(),
            self.acked.len(),
            self.rejected,
            self.reconnects,
            self.history_breaks,
            self.nodes_served_by,
            trace.join("\n    ")
        );
    }

    fn note(&mut self, what: String) {
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        let t = self.started.elapsed().as_millis();
        self.trace.push_back(format!("{t:>6} ms {what}"));
    }

    // --- connection -----------------------------------------------------------------------

    fn join_msg(&self, resume: bool) -> Join {
        Join {
            room: self.room.clone(),
            room_type: self.room_type.clone(),
            session: resume.then(|| self.session.clone()),
            epoch: resume.then_some(self.mirror.epoch),
            seq: resume.then_some(self.mirror.seq),
            attempt: resume.then_some(self.resume_attempts),
            ..Join::default()
        }
    }

    /// Connects to `urls[idx]`, joins (new player) or resumes (when a session exists), and
    /// re-sends every unsettled batch. `Err` for anything worth retrying elsewhere or later.
    async fn try_join(&mut self, idx: usize) -> Result<(), String> {
        let resume = !self.session.is_empty();
        if resume {
            self.resume_attempts += 1;
        }
        let url = format!("{}?room={}", self.urls[idx], self.room);
        let mut wire = Wire::connect(&url).await?;
        let hello = ClientMsg::Hello { v: 1, client: Some(format!("cluster-test/{}", self.name)) };
        wire.send(&hello).await?;
        wire.send(&ClientMsg::Join(self.join_msg(resume))).await?;
        let deadline = Instant::now() + JOIN_TIMEOUT;
        let mut node = String::new();
        loop {
            match wire.recv(deadline).await {
                Recv::TimedOut => return Err(format!("no joined within {JOIN_TIMEOUT:?}")),
                Recv::Closed { code, reason } => return Err(format!("closed {code} {reason}")),
                Recv::Msg(ServerMsg::Welcome { node: n, .. }) => node = n,
                Recv::Msg(ServerMsg::Error { code, message, .. }) => {
                    if code == ErrorCode::SessionExpired.as_str() {
                        if !self.rejoin_when_expired {
                            self.fail(&format!(
                                "resume refused with session_expired at {url} (G5): {message}"
                            ));
                        }
                        // The room forgot this player: join afresh as a new one (pending
                        // batches are re-sent under the new identity, with their cids).
                        self.note(format!("session expired at {url}: {message}; joining afresh"));
                        self.expired.push((self.player_id.clone(), Instant::now()));
                        self.session.clear();
                        return Err(format!("session expired: {message}"));
                    }
                    let retryable = ErrorCode::parse(&code).is_some_and(ErrorCode::is_retryable);
                    if retryable {
                        return Err(format!("join refused, retryable: {code} {message}"));
                    }
                    self.fail(&format!("join refused at {url}: {code} {message}"));
                }
                Recv::Msg(ServerMsg::Joined { player, session, resumed, cid, snapshot, .. }) => {
                    if resume {
                        if !resumed || player != self.player_id {
                            self.fail(&format!(
                                "resume at {url} gave resumed={resumed} player={player} (G5 wants the same player)"
                            ));
                        }
                    } else {
                        self.player_id = player;
                        self.session = session;
                        // (After a session expired, cids keep growing: markers stay unique.)
                        self.next_cid = self.next_cid.max(cid + 1);
                    }
                    self.last_joined_cid = cid;
                    self.last_resume_with_deltas = snapshot.is_none();
                    self.joins.push(JoinRecord {
                        node: node.clone(),
                        resumed,
                        from: (self.mirror.epoch, self.mirror.seq),
                        snapshot: snapshot.as_ref().map(|s| (s.epoch, s.seq)),
                        at: Instant::now(),
                    });
                    match &snapshot {
                        Some(s) => {
                            self.mirror = Mirror::from_snapshot(s);
                            self.snapshots += 1;
                        }
                        None if !resume => self.fail("a new player got no snapshot"),
                        None => {}
                    }
                    self.note(format!(
                        "{} at {url} (node {node}): cid {cid}, {}",
                        if resume { "resumed" } else { "joined" },
                        match &snapshot {
                            Some(s) => format!("snapshot ({}, {})", s.epoch, s.seq),
                            None => format!("deltas after ({}, {})", self.mirror.epoch, self.mirror.seq),
                        }
                    ));
                    break;
                }
                Recv::Msg(other) => self.note(format!("before joined: {other:?}")),
            }
        }
        self.url_idx = idx;
        self.nodes_served_by.push(node);
        self.wire = Some(wire);
        self.last_rx = Instant::now();
        self.ping_out = false;
        // Re-send every unsettled batch with its original cid, in cid order (§19).
        let resend: Vec<(u64, Vec<Op>)> = self.pending.iter().map(|(cid, p)| (*cid, p.ops.clone())).collect();
        for (cid, ops) in resend {
            if let Some(p) = self.pending.get_mut(&cid) {
                p.retry_at = None;
            }
            self.transmit(cid, ops).await;
        }
        Ok(())
    }

    /// Resumes after a lost connection: the current URL first, then the others in turn, with
    /// backoff, until [`reconnect_timeout`](Player::reconnect_timeout).
    async fn reconnect(&mut self) {
        let deadline = Instant::now() + self.reconnect_timeout;
        let mut backoff = Duration::from_millis(50);
        let mut idx = self.url_idx;
        loop {
            match self.try_join(idx).await {
                Ok(()) => {
                    self.reconnects += 1;
                    return;
                }
                Err(e) => {
                    self.note(format!("resume at {} failed: {e}", self.urls[idx]));
                    if Instant::now() >= deadline {
                        self.fail(&format!("could not resume within {:?}", self.reconnect_timeout));
                    }
                    idx = (idx + 1) % self.urls.len();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Drops the connection without a close (as a network loss would); the next step resumes.
    pub fn drop_connection(&mut self) {
        if let Some(w) = self.wire.take() {
            self.note("dropped the connection".into());
            w.drop_abruptly();
        }
    }

    /// Drops the connection and resumes at `url_index` (an index into the URLs given to
    /// [`join`](Player::join)); panics if that fails within the reconnect timeout.
    pub async fn resume_at(&mut self, url_index: usize) {
        self.drop_connection();
        let deadline = Instant::now() + self.reconnect_timeout;
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.try_join(url_index).await {
                Ok(()) => {
                    self.reconnects += 1;
                    return;
                }
                Err(e) => {
                    self.note(format!("resume at {} failed: {e}", self.urls[url_index]));
                    if Instant::now() >= deadline {
                        self.fail(&format!("could not resume at {}", self.urls[url_index]));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Sends an op batch with a cid of the test's choosing without tracking it (e.g. a retry
    /// of a batch that is already settled: its answer is checked against the first ack).
    pub async fn send_untracked(&mut self, cid: u64, ops: Vec<Op>) {
        self.note(format!("sending cid {cid} untracked"));
        self.transmit(cid, ops).await;
    }

    /// Handles what arrives (without reconnecting) until the server closes the connection;
    /// its `(code, reason)`. Fails the test if nothing closes it within `timeout`.
    pub async fn until_closed(&mut self, timeout: Duration) -> (u16, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(w) = self.wire.as_mut() else { self.fail("until_closed: not connected") };
            match w.recv(deadline).await {
                Recv::Msg(m) => {
                    self.last_rx = Instant::now();
                    self.handle(m).await;
                    if self.wire.is_none() {
                        self.fail("until_closed: the connection was dropped by the player itself");
                    }
                }
                Recv::Closed { code, reason } => {
                    self.note(format!("connection closed: {code} {reason}"));
                    let node = self.node().to_owned();
                    self.closes.push(Close { code, reason: reason.clone(), node, at: Instant::now() });
                    self.wire = None;
                    return (code, reason);
                }
                Recv::TimedOut => self.fail(&format!("the connection was not closed within {timeout:?}")),
            }
        }
    }

    /// Lets the session go: no leave, no resume (the server keeps it for its grace).
    pub fn abandon(mut self) {
        self.drop_connection();
    }

    /// Leaves the room for good and waits for the close.
    pub async fn leave(mut self) {
        if let Some(w) = self.wire.as_mut() {
            let _ = w.send(&ClientMsg::Leave).await;
            let deadline = Instant::now() + Duration::from_secs(5);
            // Skip what is still queued until the close (or the deadline).
            while let Recv::Msg(_) = w.recv(deadline).await {}
        }
    }

    // --- ops --------------------------------------------------------------------------------

    async fn transmit(&mut self, cid: u64, ops: Vec<Op>) {
        let Some(w) = self.wire.as_mut() else { return };
        if let Err(e) = w.send(&ClientMsg::Ops { cid, ops }).await {
            self.note(format!("send cid {cid} failed: {e}"));
            self.wire = None;
        }
    }

    /// Sends an op batch with the next cid; it stays pending until acked or rejected, and is
    /// re-sent with the same cid after a resume.
    pub async fn send(&mut self, ops: Vec<Op>) -> u64 {
        let cid = self.next_cid;
        self.next_cid += 1;
        self.pending.insert(cid, Pending { ops: ops.clone(), retry_at: None });
        self.transmit(cid, ops).await;
        cid
    }

    fn settle(&mut self, cid: u64, seq: u64, how: &str) {
        if self.pending.remove(&cid).is_some() {
            if let Some(old) = self.acked.insert(cid, seq) {
                self.fail(&format!("cid {cid} acked twice (seq {old} and {seq})"));
            }
            self.acked_at.insert(cid, Instant::now());
            self.progress.fetch_add(1, Ordering::SeqCst);
        } else if self.rejected.contains_key(&cid) {
            self.fail(&format!("cid {cid} was rejected, yet {how} says it was applied at seq {seq}"));
        } else if let Some(&first) = self.acked.get(&cid) {
            // A late duplicate (a retry's ack): it must name the same seq (G4).
            if first != seq {
                self.fail(&format!("cid {cid} {how} at seq {seq}, but it was applied at seq {first} (G4)"));
            }
        }
    }

    // --- receiving --------------------------------------------------------------------------

    fn offer(&mut self, d: &Delta) -> Applied {
        let m = &mut self.mirror;
        if d.epoch == m.epoch && d.seq <= m.seq {
            return Applied::Duplicate;
        }
        if d.epoch != m.epoch || d.seq != m.seq + 1 {
            return Applied::Break;
        }
        for op in &d.ops {
            if let Err(e) = apply_resolved(&mut m.state, op) {
                self.fail(&format!("delta ({}, {}) does not apply: {e}", d.epoch, d.seq));
            }
        }
        m.seq = d.seq;
        self.deltas.insert((d.epoch, d.seq), d.clone());
        Applied::Yes
    }

    async fn handle(&mut self, msg: ServerMsg) {
        match msg {
            ServerMsg::Delta(d) => {
                match self.offer(&d) {
                    Applied::Yes | Applied::Duplicate => {}
                    Applied::Break => {
                        self.history_breaks += 1;
                        self.note(format!(
                            "history break: delta ({}, {}) on mirror ({}, {}); resuming",
                            d.epoch, d.seq, self.mirror.epoch, self.mirror.seq
                        ));
                        self.drop_connection();
                    }
                }
                if d.by.as_deref() == Some(self.player_id.as_str()) {
                    if let Some(cid) = d.cid {
                        self.settle(cid, d.seq, "delta");
                    }
                }
            }
            ServerMsg::Ack { cid, seq } => {
                self.note(format!("ack cid {cid} seq {seq}"));
                self.acks.push((cid, seq));
                self.settle(cid, seq, "ack");
            }
            ServerMsg::Reject { cid, code, message } => {
                let retryable = ErrorCode::parse(&code).is_some_and(ErrorCode::is_retryable);
                self.note(format!("reject cid {cid}: {code} {message}"));
                if let Some(p) = self.pending.get_mut(&cid) {
                    if retryable {
                        p.retry_at = Some(Instant::now() + Duration::from_millis(200));
                    } else {
                        self.pending.remove(&cid);
                        self.rejected.insert(cid, code);
                    }
                }
            }
            ServerMsg::Resync { snapshot, cid, .. } => {
                self.note(format!("resync to ({}, {}), cid {cid}", snapshot.epoch, snapshot.seq));
                self.mirror = Mirror::from_snapshot(&snapshot);
                self.snapshots += 1;
                // Acks may have been dropped: ask again about every unsettled batch.
                let resend: Vec<(u64, Vec<Op>)> =
                    self.pending.iter().map(|(c, p)| (*c, p.ops.clone())).collect();
                for (c, ops) in resend {
                    self.transmit(c, ops).await;
                }
            }
            ServerMsg::Error { code, message, .. } => self.note(format!("error {code}: {message}")),
            ServerMsg::Presence { player, status, .. } => self.note(format!("presence {player} {status:?}")),
            ServerMsg::Pong { .. } => {}
            other => self.note(format!("unexpected {other:?}")),
        }
    }

    /// Handles what arrives until `until` (at most one message), resuming a lost connection
    /// and re-sending retryable rejects when due. Returns after one message or at `until`.
    pub async fn step(&mut self, until: Instant) {
        if self.wire.is_none() {
            self.reconnect().await;
        }
        let now = Instant::now();
        // Retries that are due.
        let due: Vec<(u64, Vec<Op>)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.retry_at.is_some_and(|t| t <= now))
            .map(|(c, p)| (*c, p.ops.clone()))
            .collect();
        for (cid, ops) in due {
            if let Some(p) = self.pending.get_mut(&cid) {
                p.retry_at = None;
            }
            self.note(format!("retrying cid {cid}"));
            self.transmit(cid, ops).await;
        }
        if self.wire.is_none() {
            return;
        }
        let next_retry = self.pending.values().filter_map(|p| p.retry_at).min();
        let probe_at = self.last_rx + self.silence / 2;
        let dead_at = self.last_rx + self.silence;
        let mut wake = until.min(dead_at);
        if !self.ping_out {
            wake = wake.min(probe_at);
        }
        if let Some(t) = next_retry {
            wake = wake.min(t);
        }
        let got = match self.wire.as_mut() {
            Some(w) => w.recv(wake.max(Instant::now())).await,
            None => return,
        };
        match got {
            Recv::Msg(m) => {
                self.last_rx = Instant::now();
                self.ping_out = false;
                self.handle(m).await;
            }
            Recv::Closed { code, reason } => {
                self.note(format!("connection closed: {code} {reason}"));
                let node = self.node().to_owned();
                self.closes.push(Close { code, reason: reason.clone(), node, at: Instant::now() });
                self.wire = None;
                if !protocol::should_reconnect(code) {
                    self.fail(&format!("closed with {code} {reason}, which means do not reconnect"));
                }
            }
            Recv::TimedOut => {
                let now = Instant::now();
                if now >= dead_at {
                    self.note(format!("nothing received for {:?}: connection lost", self.silence));
                    self.drop_connection();
                } else if now >= probe_at && !self.ping_out {
                    self.ping_id += 1;
                    self.ping_out = true;
                    let id = self.ping_id;
                    if let Some(w) = self.wire.as_mut() {
                        if w.send(&ClientMsg::Ping { id }).await.is_err() {
                            self.wire = None;
                        }
                    }
                }
            }
        }
    }

    /// Steps until `done(self)` holds; fails the test with `what` after `timeout`.
    pub async fn wait_until(&mut self, what: &str, timeout: Duration, done: impl Fn(&Player) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if Instant::now() >= deadline {
                self.fail(&format!("timed out after {timeout:?} waiting for {what}"));
            }
            self.step(deadline).await;
        }
    }

    /// Waits until every sent batch is acked or (not retryably) rejected.
    pub async fn settle_all(&mut self, timeout: Duration) {
        self.wait_until("every batch to be settled", timeout, |p| p.pending.is_empty()).await;
    }

    /// Sends `count` batches made by `make(i)` (i from 0), keeping at most `window` unsettled,
    /// then waits until all are settled. The whole stream must finish within `timeout`.
    pub async fn stream(
        &mut self,
        count: usize,
        window: usize,
        timeout: Duration,
        mut make: impl FnMut(usize) -> Vec<Op>,
    ) {
        let deadline = Instant::now() + timeout;
        let mut sent = 0;
        while sent < count || !self.pending.is_empty() {
            if Instant::now() >= deadline {
                self.fail(&format!("stream of {count} batches: {sent} sent after {timeout:?}"));
            }
            if sent < count && self.pending.len() < window && self.wire.is_some() {
                let ops = make(sent);
                self.send(ops).await;
                sent += 1;
                continue;
            }
            self.step(deadline).await;
        }
    }
}

impl Player {
    /// The cid the next [`send`](Player::send) will use.
    pub fn next_cid(&self) -> u64 {
        self.next_cid
    }

    /// Sends batches made by `make(cid)` (at most one per `pace`, at most `window`
    /// unsettled) until `stop` is set, then waits until every batch is settled. Returns how
    /// many were sent. Fails the test if the whole run exceeds `timeout`.
    pub async fn stream_until(
        &mut self,
        stop: &AtomicBool,
        window: usize,
        pace: Duration,
        timeout: Duration,
        mut make: impl FnMut(u64) -> Vec<Op>,
    ) -> usize {
        let deadline = Instant::now() + timeout;
        let mut sent = 0;
        let mut next_send = Instant::now();
        loop {
            let stopping = stop.load(Ordering::SeqCst);
            if stopping && self.pending.is_empty() {
                return sent;
            }
            let now = Instant::now();
            if now >= deadline {
                self.fail(&format!("stream_until: {sent} sent, not settled after {timeout:?}"));
            }
            if !stopping && now >= next_send && self.pending.len() < window && self.wire.is_some() {
                let ops = make(self.next_cid);
                self.send(ops).await;
                sent += 1;
                next_send = now + pace;
                continue;
            }
            let mut until = (now + Duration::from_millis(50)).min(deadline);
            if !stopping && self.pending.len() < window {
                until = until.min(next_send.max(now));
            }
            self.step(until).await;
        }
    }

    /// A second connection for this player's session: connects to `url` and resumes it
    /// (from this player's `(epoch, seq)`), as a client that moved to another device would.
    /// The new player starts with this one's identity, mirror and cids; this one is untouched.
    pub async fn resume_elsewhere(&self, name: &str, url: &str) -> Player {
        let mut p = Player {
            name: name.to_owned(),
            urls: vec![url.to_owned()],
            url_idx: 0,
            room: self.room.clone(),
            room_type: self.room_type.clone(),
            wire: None,
            player_id: self.player_id.clone(),
            session: self.session.clone(),
            resume_attempts: self.resume_attempts,
            mirror: self.mirror.clone(),
            next_cid: self.next_cid,
            pending: BTreeMap::new(),
            acked: self.acked.clone(),
            rejected: BTreeMap::new(),
            reconnects: 0,
            history_breaks: 0,
            snapshots: 0,
            last_joined_cid: 0,
            last_resume_with_deltas: false,
            nodes_served_by: Vec::new(),
            joins: Vec::new(),
            closes: Vec::new(),
            deltas: BTreeMap::new(),
            acks: Vec::new(),
            acked_at: BTreeMap::new(),
            silence: self.silence,
            reconnect_timeout: self.reconnect_timeout,
            rejoin_when_expired: false,
            expired: Vec::new(),
            last_rx: Instant::now(),
            ping_out: false,
            ping_id: 0,
            progress: Arc::new(AtomicU64::new(0)),
            trace: VecDeque::new(),
            started: Instant::now(),
        };
        let deadline = Instant::now() + JOIN_TIMEOUT;
        let mut backoff = Duration::from_millis(50);
        while let Err(e) = p.try_join(0).await {
            p.note(format!("resume at {url} failed: {e}"));
            if Instant::now() >= deadline {
                p.fail(&format!("resume of {}'s session at {url} failed: {e}", self.name));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
        p
    }
}

/// Steps every player until all are connected with nothing pending and their mirrors are at
/// the same `(epoch, seq)`, or fails after `timeout`. Returns that `(epoch, seq)`. Call it
/// when nothing changes the room any more.
pub async fn converge(players: &mut [&mut Player], timeout: Duration) -> (u64, u64) {
    let deadline = Instant::now() + timeout;
    loop {
        let first = (players[0].mirror.epoch, players[0].mirror.seq);
        let settled = players
            .iter()
            .all(|p| p.is_connected() && p.pending.is_empty() && (p.mirror.epoch, p.mirror.seq) == first);
        if settled {
            return first;
        }
        if Instant::now() >= deadline {
            let views: Vec<String> = players
                .iter()
                .map(|p| {
                    format!(
                        "{} at ({}, {}) pending {} connected {}",
                        p.name,
                        p.mirror.epoch,
                        p.mirror.seq,
                        p.pending.len(),
                        p.is_connected()
                    )
                })
                .collect();
            players[0].fail(&format!("no convergence within {timeout:?}: {}", views.join("; ")));
        }
        let slice = (Instant::now() + Duration::from_millis(20)).min(deadline);
        for p in players.iter_mut() {
            p.step(slice).await;
        }
    }
}

/// An `inc` op.
pub fn inc(path: &str, by: i64) -> Op {
    Op::Inc { path: path.into(), by: Doc::Int(by) }
}

/// A `set` op.
pub fn set(path: &str, value: impl Into<Doc>) -> Op {
    Op::Set { path: path.into(), value: value.into() }
}
