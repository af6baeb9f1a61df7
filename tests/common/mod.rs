//! Test harness: a real node on a free loopback port and a raw WebSocket client that speaks
//! protocol v1 frame by frame (so tests can also send what no good client would).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use gamerelay::config::Config;
use gamerelay::protocol::{self, ClientMsg, Doc, Join, Op, ServerMsg, Snapshot};
use gamerelay::server::Server;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A node running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The operator listener (`--ops-listen`), if started with one.
    pub ops_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a node with default settings plus `args` (flags as on the command line).
    pub async fn start(args: &[&str]) -> TestServer {
        let mut all = vec!["gamerelay", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        if let Ok(filter) = std::env::var("GAMERELAY_TEST_LOG") {
            all.extend_from_slice(&["--log", Box::leak(filter.into_boxed_str())]);
        }
        let config = Config::parse_from(all);
        gamerelay::telemetry::init_tracing(&config);
        let server = Server::bind(config).await.expect("bind test server");
        let addr = server.local_addr();
        let ops_addr = server.ops_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("server run");
        });
        TestServer { addr, ops_addr, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `GET path` over a fresh connection: the whole HTTP answer (status line, headers, body).
    pub async fn http_get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(self.addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.expect("read");
        answer
    }

    /// Triggers shutdown and waits for the node to stop.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("server stops in time")
                .expect("server task");
        }
    }
}

/// What a raw client can receive.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Msg(ServerMsg),
    Closed { code: u16, reason: String },
}

/// A WebSocket client that sends and receives protocol frames one by one.
pub struct Raw {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Messages of a received `batch` not yet handed out.
    buffered: VecDeque<ServerMsg>,
    /// `batch` frames received so far.
    pub batch_frames: usize,
}

/// What `joined` told a client.
#[derive(Debug, Clone)]
pub struct JoinedInfo {
    pub player: String,
    pub session: String,
    pub resumed: bool,
    pub cid: u64,
    pub snapshot: Option<Snapshot>,
}

impl Raw {
    pub async fn connect(server: &TestServer) -> Raw {
        let (ws, _) = tokio_tungstenite::connect_async(server.url()).await.expect("connect");
        Raw { ws, buffered: VecDeque::new(), batch_frames: 0 }
    }

    /// Connects with extra request headers; `Err(status)` when the upgrade is refused.
    pub async fn connect_with(server: &TestServer, headers: &[(&'static str, &str)]) -> Result<Raw, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = server.url().into_client_request().expect("request");
        for (name, value) in headers {
            request.headers_mut().insert(*name, value.parse().expect("header value"));
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(Raw { ws, buffered: VecDeque::new(), batch_frames: 0 }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
            Err(e) => panic!("connect: {e}"),
        }
    }

    pub async fn send(&mut self, msg: &ClientMsg) {
        self.send_bytes(protocol::encode(msg)).await;
    }

    pub async fn send_bytes(&mut self, bytes: impl Into<Bytes>) {
        self.ws.send(Message::Binary(bytes.into())).await.expect("send frame");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.expect("send text");
    }

    /// The next message (batches are flattened) or the close, failing the test after [`WAIT`].
    pub async fn recv(&mut self) -> Incoming {
        if let Some(msg) = self.buffered.pop_front() {
            return Incoming::Msg(msg);
        }
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next()).await.expect("a frame within the wait");
            match next {
                Some(Ok(Message::Binary(b))) => {
                    match protocol::decode_server(&b).expect("server frames decode") {
                        ServerMsg::Batch { msgs } => {
                            self.batch_frames += 1;
                            self.buffered.extend(msgs);
                            if let Some(msg) = self.buffered.pop_front() {
                                return Incoming::Msg(msg);
                            }
                        }
                        msg => return Incoming::Msg(msg),
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) =
                        frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                    return Incoming::Closed { code, reason };
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Incoming::Closed { code: 1006, reason: e.to_string() },
                None => return Incoming::Closed { code: 1006, reason: "stream ended".into() },
            }
        }
    }

    /// The next message, which must not be a close.
    pub async fn msg(&mut self) -> ServerMsg {
        match self.recv().await {
            Incoming::Msg(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Skips messages until `pick` returns `Some`.
    pub async fn until<T>(&mut self, mut pick: impl FnMut(&ServerMsg) -> Option<T>) -> T {
        loop {
            let m = self.msg().await;
            if let Some(t) = pick(&m) {
                return t;
            }
        }
    }

    /// Waits for the close frame, skipping messages.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            if let Incoming::Closed { code, reason } = self.recv().await {
                return (code, reason);
            }
        }
    }

    pub async fn hello(&mut self) {
        self.send(&ClientMsg::Hello { v: 1, client: Some("tests".into()) }).await;
        match self.msg().await {
            ServerMsg::Welcome { v: 1, .. } => {}
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    pub async fn join_msg(&mut self, join: Join) -> ServerMsg {
        self.send(&ClientMsg::Join(join)).await;
        self.until(|m| match m {
            ServerMsg::Joined { .. } | ServerMsg::Error { .. } => Some(m.clone()),
            _ => None,
        })
        .await
    }

    /// hello + join; panics unless joined.
    pub async fn join(&mut self, join: Join) -> JoinedInfo {
        match self.join_msg(join).await {
            ServerMsg::Joined { player, session, resumed, cid, snapshot, .. } => {
                JoinedInfo { player, session, resumed, cid, snapshot }
            }
            other => panic!("expected joined, got {other:?}"),
        }
    }

    /// Connects, says hello and joins `room` of `room_type` as a new player.
    pub async fn joined(server: &TestServer, room: &str, room_type: &str) -> (Raw, JoinedInfo) {
        let mut raw = Raw::connect(server).await;
        raw.hello().await;
        let info = raw.join(new_join(room, room_type)).await;
        (raw, info)
    }

    pub async fn ops(&mut self, cid: u64, ops: Vec<Op>) {
        self.send(&ClientMsg::Ops { cid, ops }).await;
    }

    /// Round trip through the node: every frame the node queued for us before the pong
    /// arrives before it.
    pub async fn ping(&mut self, id: u64) {
        self.send(&ClientMsg::Ping { id }).await;
        self.until(|m| matches!(m, ServerMsg::Pong { id: got, .. } if *got == id).then_some(())).await;
    }

    /// Drops the TCP connection without a WebSocket close handshake.
    pub async fn drop_abruptly(self) {
        drop(self.ws.into_inner());
    }
}

pub fn new_join(room: &str, room_type: &str) -> Join {
    Join { room: room.into(), room_type: room_type.into(), ..Join::default() }
}

pub fn set(path: &str, value: impl Into<Doc>) -> Op {
    Op::Set { path: path.into(), value: value.into() }
}

pub fn inc(path: &str, by: i32) -> Op {
    Op::Inc { path: path.into(), by: Doc::from(by) }
}

/// A client-side mirror: snapshot + deltas applied in seq order, as a real client does.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub epoch: u64,
    pub seq: u64,
    pub state: Doc,
}

impl Mirror {
    pub fn from_snapshot(s: &Snapshot) -> Mirror {
        assert_eq!(s.state.state_hash(), s.hash, "snapshot hash matches its state");
        Mirror { epoch: s.epoch, seq: s.seq, state: s.state.clone() }
    }

    /// Applies a delta, asserting G3: same epoch, exactly the next seq.
    pub fn apply(&mut self, d: &protocol::Delta) {
        assert_eq!(d.epoch, self.epoch, "delta from another epoch");
        assert_eq!(d.seq, self.seq + 1, "gap or reorder in the delta sequence");
        for op in &d.ops {
            protocol::apply_resolved(&mut self.state, op).expect("resolved ops apply");
        }
        self.seq = d.seq;
    }
}
