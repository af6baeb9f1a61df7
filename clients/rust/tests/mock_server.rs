//! The client's connection task against a scripted in-process WebSocket server: handshake,
//! acks, rejects, batches, reconnect + resume + re-send, gaps, idle detection, close codes.
//! Each test plays the server's side of protocol v1 by hand, so it checks exactly what the
//! client sends and when.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gamerelay_client::protocol::{
    batch_frame, decode_client, encode, ClientMsg, Delta, Doc, ErrorCode, Join, MemberInfo, Op,
    PresenceStatus, ServerMsg, Snapshot,
};
use gamerelay_client::{
    Client, ClientConfig, ClientError, ConnectionState, Event, EventStream, ReconnectPolicy,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const PLAYER: &str = "p-000000000001";
const SESSION: &str = "sess-1";
const STEP: Duration = Duration::from_secs(5);

struct Mock {
    listener: TcpListener,
    url: String,
}

impl Mock {
    async fn start() -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        Mock { listener, url }
    }

    fn config(&self) -> ClientConfig {
        ClientConfig::new(self.url.clone(), "room-1", "doc").with_reconnect(ReconnectPolicy {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            max_attempts: Some(20),
            jitter: 0.5,
        })
    }

    async fn accept(&self) -> Conn {
        let (tcp, _) =
            tokio::time::timeout(STEP, self.listener.accept()).await.expect("no connection in time").unwrap();
        Conn { ws: tokio_tungstenite::accept_async(tcp).await.unwrap() }
    }

    /// Accepts and completes a fresh join: state `{n: 0}` at epoch 1, seq 5.
    async fn accept_joined(&self) -> Conn {
        let mut conn = self.accept().await;
        let join = conn.expect_hello_join().await;
        assert_eq!(join.session, None);
        assert_eq!((join.room.as_str(), join.room_type.as_str()), ("room-1", "doc"));
        conn.send(&welcome()).await;
        conn.send(&joined(false, 0, Some(snapshot(1, 5, &[("n", Doc::Int(0))])))).await;
        conn
    }

    async fn expect_no_connection(&self, within: Duration) {
        let r = tokio::time::timeout(within, self.listener.accept()).await;
        assert!(r.is_err(), "the client reconnected but should not have");
    }
}

struct Conn {
    ws: WebSocketStream<TcpStream>,
}

impl Conn {
    async fn recv(&mut self) -> ClientMsg {
        loop {
            let frame = tokio::time::timeout(STEP, self.ws.next())
                .await
                .expect("no frame from the client in time")
                .expect("connection ended")
                .unwrap();
            match frame {
                Message::Binary(b) => return decode_client(&b).unwrap(),
                Message::Close(f) => panic!("client closed: {f:?}"),
                _ => {}
            }
        }
    }

    async fn send(&mut self, msg: &ServerMsg) {
        self.ws.send(Message::Binary(encode(msg))).await.unwrap();
    }

    async fn expect_hello_join(&mut self) -> Join {
        match self.recv().await {
            ClientMsg::Hello { v: 1, .. } => {}
            other => panic!("expected hello, got {other:?}"),
        }
        match self.recv().await {
            ClientMsg::Join(join) => join,
            other => panic!("expected join, got {other:?}"),
        }
    }

    async fn expect_ops(&mut self) -> (u64, Vec<Op>) {
        match self.recv().await {
            ClientMsg::Ops { cid, ops } => (cid, ops),
            other => panic!("expected ops, got {other:?}"),
        }
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
        self.ws.close(Some(frame)).await.unwrap();
    }

    /// Reads until the client's close frame or the end of the connection.
    async fn drain_until_closed(&mut self) {
        while let Ok(Some(Ok(frame))) = tokio::time::timeout(STEP, self.ws.next()).await {
            if frame.is_close() {
                break;
            }
        }
    }
}

fn welcome() -> ServerMsg {
    ServerMsg::Welcome { v: 1, node: "mock".into(), time: 0, max_frame: 65536, max_ops: 64 }
}

fn snapshot(epoch: u64, seq: u64, entries: &[(&str, Doc)]) -> Snapshot {
    let state = Doc::Map(entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect());
    Snapshot { epoch, seq, hash: state.state_hash(), state }
}

fn joined(resumed: bool, cid: u64, snapshot: Option<Snapshot>) -> ServerMsg {
    ServerMsg::Joined {
        room: "room-1".into(),
        room_type: "doc".into(),
        player: PLAYER.into(),
        session: SESSION.into(),
        resumed,
        cid,
        members: vec![MemberInfo { player: PLAYER.into(), status: PresenceStatus::Joined }],
        snapshot,
    }
}

fn delta(seq: u64, by: Option<&str>, cid: Option<u64>, n: i64) -> ServerMsg {
    ServerMsg::Delta(Delta {
        room: "room-1".into(),
        epoch: 1,
        seq,
        cid,
        by: by.map(str::to_owned),
        ops: vec![Op::Set { path: "n".into(), value: Doc::Int(n) }],
    })
}

fn inc() -> Vec<Op> {
    vec![Op::Inc { path: "n".into(), by: Doc::Int(1) }]
}

/// Reads events until one matches, returning it (and failing after a while).
async fn wait_for(events: &mut EventStream, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let found = tokio::time::timeout(STEP, async {
        while let Some(e) = events.next().await {
            if pred(&e) {
                return Some(e);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(e)) => e,
        Ok(None) => panic!("event stream ended before {what}"),
        Err(_) => panic!("no {what} in time"),
    }
}

#[tokio::test]
async fn joins_and_acks_an_op_batch_by_its_own_delta() {
    let mock = Mock::start().await;
    let config = mock.config();
    let server = tokio::spawn(async move {
        let mut conn = mock.accept_joined().await;
        let (cid, ops) = conn.expect_ops().await;
        assert_eq!((cid, ops), (1, inc()));
        conn.send(&delta(6, Some(PLAYER), Some(1), 1)).await;
        conn.drain_until_closed().await;
    });
    let client = Client::connect(config).await.unwrap();
    assert_eq!(client.player_id(), PLAYER);
    assert_eq!(client.room(), "room-1");
    assert_eq!((client.epoch(), client.seq()), (1, 5));
    assert_eq!(client.get("n"), Some(Doc::Int(0)));
    assert_eq!(client.members().len(), 1);
    let mut events = client.subscribe();

    let ticket = client.send_ops_tracked(inc()).await.unwrap();
    assert_eq!(ticket.cid(), 1);
    assert_eq!(ticket.acked().await.unwrap(), 6);
    assert_eq!(client.get("n"), Some(Doc::Int(1)), "acked means mirrored");
    assert_eq!(client.wait_ack(1).await.unwrap(), 6, "outcomes are remembered");
    assert!(matches!(client.wait_ack(99).await, Err(ClientError::UnknownCid(99))));
    assert!(matches!(events.next().await, Some(Event::Delta(d)) if d.seq == 6));
    assert_eq!(events.next().await, Some(Event::Acked { cid: 1, seq: 6 }));
    assert_eq!(client.state_hash(), client.state().state_hash());

    client.close().await;
    assert_eq!(client.connection_state(), ConnectionState::Closed);
    assert!(matches!(client.send_ops(inc()).await, Err(ClientError::Closed { .. })));
    assert!(matches!(
        wait_for(&mut events, "closed", |e| matches!(e, Event::Closed { .. })).await,
        Event::Closed { code: None, .. }
    ));
    assert_eq!(events.next().await, None, "Closed is the last event");
    server.await.unwrap();
}

#[tokio::test]
async fn cids_start_after_the_joined_cid_and_local_limits_apply() {
    let mock = Mock::start().await;
    let config = mock.config();
    let server = tokio::spawn(async move {
        let mut conn = mock.accept().await;
        conn.expect_hello_join().await;
        conn.send(&welcome()).await;
        conn.send(&joined(false, 41, Some(snapshot(1, 5, &[])))).await;
        assert_eq!(conn.expect_ops().await.0, 42);
        conn.drain_until_closed().await;
    });
    let client = Client::connect(config).await.unwrap();
    assert!(matches!(client.send_ops(vec![]).await, Err(ClientError::InvalidRequest(_))));
    let too_many = (0..65).flat_map(|_| inc()).collect();
    assert!(matches!(client.send_ops(too_many).await, Err(ClientError::InvalidRequest(_))));
    assert_eq!(client.send_ops(inc()).await.unwrap(), 42, "refused batches use no cid");
    client.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn a_reject_fails_the_batch_and_is_reported() {
    let mock = Mock::start().await;
    let config = mock.config();
    let server = tokio::spawn(async move {
        let mut conn = mock.accept_joined().await;
        let (cid, _) = conn.expect_ops().await;
        conn.send(&ServerMsg::Reject { cid, code: "forbidden".into(), message: "not yours".into() }).await;
        conn.drain_until_closed().await;
    });
    let client = Client::connect(config).await.unwrap();
    let mut events = client.subscribe();
    let cid = client.send_ops(inc()).await.unwrap();
    match client.wait_ack(cid).await {
        Err(e @ ClientError::Rejected { .. }) => assert_eq!(e.code(), Some(ErrorCode::Forbidden)),
        other => panic!("expected a rejection, got {other:?}"),
    }
    let ev = wait_for(&mut events, "rejected", |e| matches!(e, Event::Rejected { .. })).await;
    assert_eq!(ev, Event::Rejected { cid, code: ErrorCode::Forbidden, message: "not yours".into() });
    client.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn batches_presence_msgs_and_pings_are_handled_in_order() {
    let mock = Mock::start().await;
    let config = mock.config();
    let server = tokio::spawn(async move {
        let mut conn = mock.accept_joined().await;
        let parts = [
            encode(&delta(6, None, None, 10)),
            encode(&ServerMsg::Presence {
                room: "room-1".into(),
                player: "p-b".into(),
                status: PresenceStatus::Joined,
            }),
            encode(&ServerMsg::Msg {
                room: "room-1".into(),
                from: Some("p-b".into()),
                to: None,
                data: Doc::str("hi"),
            }),
            encode(&delta(7, None, None, 11)),
        ];
        conn.ws.send(Message::Binary(batch_frame(parts.iter()))).await.unwrap();
        match conn.recv().await {
            ClientMsg::Ping { id } => conn.send(&ServerMsg::Pong { id, time: 0 }).await,
            other => panic!("expected ping, got {other:?}"),
        }
        match conn.recv().await {
            ClientMsg::Msg { to, data } => {
                assert_eq!((to.as_deref(), data), (Some("p-b"), Doc::Int(7)))
            }
            other => panic!("expected msg, got {other:?}"),
        }
        conn.drain_until_closed().await;
    });
    let client = Client::connect(config).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        seen.push(client.next_event().await.unwrap());
    }
    assert!(matches!(&seen[0], Event::Delta(d) if d.seq == 6));
    assert_eq!(seen[1], Event::Presence { player: "p-b".into(), status: PresenceStatus::Joined });
    assert_eq!(seen[2], Event::Msg { from: Some("p-b".into()), to: None, data: Doc::str("hi") });
    assert!(matches!(&seen[3], Event::Delta(d) if d.seq == 7));
    assert_eq!((client.seq(), client.get("n")), (7, Some(Doc::Int(11))));
    assert_eq!(client.members().len(), 2);
    assert!(client.ping().await.unwrap() < STEP);
    client.send_msg(Some("p-b".into()), Doc::Int(7)).await.unwrap();
    client.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn a_dropped_connection_resumes_and_resends_unacked_batches_once_in_order() {
    let mock = Mock::start().await;
    let config = mock.config();
    let server = tokio::spawn(async move {
        let mut conn = mock.accept_joined().await;
        // Two batches arrive; the first is applied (its delta is lost with the connection),
        // the second never reaches the room.
        assert_eq!(conn.expect_ops().await.0, 1);
        assert_eq!(conn.expect_ops().await.0, 2);
        drop(conn);

        let mut conn = mock.accept().await;
        let join = conn.expect_hello_join().await;
        assert_eq!(join.session.as_deref(), Some(SESSION));
        assert_eq!((join.epoch, join.seq), (Some(1), Some(5)));
        conn.send(&welcome()).await;
        conn.send(&joined(true, 1, None)).await;
        // Missed deltas follow the resume; seq 6 is the client's own cid 1.
        conn.send(&delta(6, Some(PLAYER), Some(1), 1)).await;
        // Both outstanding batches come again, in order, with their original cids...
        let (cid_a, ops_a) = conn.expect_ops().await;
        let (cid_b, ops_b) = conn.expect_ops().await;
        assert_eq!((cid_a, cid_b), (1, 2));
        assert_eq!((ops_a, ops_b), (inc(), inc()));
        // ...the server acks the applied one again and applies the other.
        conn.send(&ServerMsg::Ack { cid: 1, seq: 6 }).await;
        conn.send(&delta(7, Some(PLAYER), Some(2), 2)).await;
        // Exactly once: the next frame is the ping, not another copy of a batch.
        match conn.recv().await {
            ClientMsg::Ping { id } => conn.send(&ServerMsg::Pong { id, time: 0 }).await,
            other => panic!("expected ping, got {other:?}"),
        }
        conn.drain_until_closed().await;
    });
    let client = Client::connect(config).await.unwrap();
    let mut events = client.subscribe();
    let a = client.send_ops_tracked(inc()).await.unwrap();
    let b = client.send_ops_tracked(inc()).await.unwrap();

    let ev = wait_for(&mut events, "disconnected", |e| matches!(e, Event::Disconnected { .. })).await;
    assert!(matches!(ev, Event::Disconnected { code: None, .. }));
    wait_for(&mut events, "reconnecting", |e| matches!(e, Event::Reconnecting { attempt: 1, .. })).await;
    let ev = wait_for(&mut events, "resumed", |e| matches!(e, Event::Resumed { .. })).await;
    assert_eq!(ev, Event::Resumed { with_snapshot: false });
    assert_eq!(a.acked().await.unwrap(), 6);
    assert_eq!(b.acked().await.unwrap(), 7);
    assert_eq!((client.seq(), client.get("n")), (7, Some(Doc::Int(2))));
    client.ping().await.unwrap();
    assert_eq!(client.send_ops(inc()).await.unwrap(), 3);
    client.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn ops_sent_while_disconnected_go_out_after_the_resume() {
    let mock = Mock::start().await;
    let config = mock.config().with_reconnect(ReconnectPolicy {
        initial_backoff: Duration::from_millis(300),
        max_backoff: Duration::from_millis(300),
        max_attempts: Some(3),
        jitter: 0.0,
    });
    let server = tokio::spawn(async move {
        let conn = mock.accept_joined().await;
        drop(conn);
        let mut conn = mock.accept().await;
        conn.expect_hello_join().await;
        conn.send(&welcome()).await;
        conn.send(&joined(true, 0, Some(snapshot(1, 9, &[("n", Doc::Int(5))])))).await;
        let (cid, _) = conn.expect_ops().await;
        assert_eq!(cid, 1);
        conn.send(&delta(10, Some(PLAYER), Some(1), 6)).await;
        conn.drain_until_closed().await;
    });
    let client = Client::connect(config).await.unwrap();
    let mut events = client.subscribe();
    wait_for(&mut events, "reconnecting", |e| matches!(e, Event::Reconnecting { .. })).await;
    assert!(matches!(client.connection_state(), ConnectionState::Reconnecting { attempt: 1 }));
    assert!(matches!(client.ping().await, Err(ClientError::NotConnected)));
    assert!(matches!(client.send_msg(None, Doc::Nil).await, Err(ClientError::NotConnected)));
    let ticket = client.send_ops_tracked(inc()).await.unwrap();
    assert_eq!(ticket.acked().await.unwrap(), 10);
    assert_eq!(client.get("n"), Some(Doc::Int(6)));
    client.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn session_expired_closes_the_client_instead_of_joining_afresh() {
    let mock = Mock::start().await;
    let config = mock.config();
    let server = tokio::spawn(async move {
        let mut conn = mock.accept_joined().await;
        conn.close(4101, "idle_timeout").await;
        let mut conn = mock.accept().await;
        conn.expect_hello_join().await;
        conn.send(&welcome()).await;
        conn.send(&ServerMsg::Error {
            code: "session_expired".into(),
            message: "grace over".into(),
            retry_ms: None,
        })
        .await;
        mock.expect_no_connection(Duration::from_millis(300)).await;
    });
    let client = Client::connect(config).await.unwrap();
    let mut events = client.subscribe();
    let cid = client.send_ops(inc()).await.unwrap();
    let ev = wait_for(&mut events, "disconnected", |e| matches!(e, Event::Disconnected { .. })).await;
    assert_eq!(ev, Event::Disconnected { code: Some(4101), reason: "idle_timeout".into() });
    let ev = wait_for(&mut events, "closed", |e| matches!(e, Event::Closed { .. })).await;
    assert!(
        matches!(ev, Event::Closed { code: None, ref reason } if reason.contains("session expired")),
        "{ev:?}"
    );
    assert!(matches!(client.wait_ack(cid).await, Err(ClientError::SessionExpired { .. })));
    assert!(matches!(client.close_reason(), Some(ClientError::SessionExpired { .. })));
    server.await.unwrap();
}

#[tokio::test]
async fn a_replaced_close_stops_without_reconnecting() {
    let mock = Mock::start().await;
    let config = mock.config();
    let server = tokio::spawn(async move {
        let mut conn = mock.accept_joined().await;
        conn.close(4000, "replaced").await;
        mock.expect_no_connection(Duration::from_millis(300)).await;
    });
    let client = Client::connect(config).await.unwrap();
    let mut events = client.subscribe();
    let ev = wait_for(&mut events, "closed", |e| matches!(e, Event::Closed { .. })).await;
    assert_eq!(ev, Event::Closed { code: Some(4000), reason: "replaced".into() });
    assert!(matches!(client.ping().await, Err(ClientError::Closed { code: Some(4000), .. })));
    server.await.unwrap();
}

#[tokio::test]
async fn a_gap_reconnects_at_once_and_asks_for_a_snapshot() {
    let mock = Mock::start().await;
    let config = mock.config();
    let server = tokio::spawn(async move {
        let mut conn = mock.accept_joined().await;
        conn.send(&delta(6, None, None, 1)).await;
        conn.send(&delta(8, None, None, 3)).await; // seq 7 is missing
        conn.drain_until_closed().await;
        let mut conn = mock.accept().await;
        let join = conn.expect_hello_join().await;
        assert_eq!(join.session.as_deref(), Some(SESSION));
        assert_eq!((join.epoch, join.seq), (None, None), "a stale mirror asks for a snapshot");
        conn.send(&welcome()).await;
        conn.send(&joined(true, 0, Some(snapshot(1, 8, &[("n", Doc::Int(3))])))).await;
        conn.send(&delta(9, None, None, 4)).await;
        conn.drain_until_closed().await;
    });
    let client = Client::connect(config).await.unwrap();
    let mut events = client.subscribe();
    let ev = wait_for(&mut events, "disconnected", |e| matches!(e, Event::Disconnected { .. })).await;
    assert!(
        matches!(ev, Event::Disconnected { code: None, ref reason } if reason.contains("broken history")),
        "{ev:?}"
    );
    let ev = wait_for(&mut events, "reconnecting", |e| matches!(e, Event::Reconnecting { .. })).await;
    assert_eq!(ev, Event::Reconnecting { attempt: 1, delay: Duration::ZERO });
    let ev = wait_for(&mut events, "resumed", |e| matches!(e, Event::Resumed { .. })).await;
    assert_eq!(ev, Event::Resumed { with_snapshot: true });
    wait_for(&mut events, "delta 9", |e| matches!(e, Event::Delta(d) if d.seq == 9)).await;
    assert_eq!(client.get("n"), Some(Doc::Int(4)));
    client.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn a_silent_server_is_probed_then_replaced() {
    let mock = Mock::start().await;
    let config = mock.config().with_idle_timeout(Duration::from_millis(400));
    let server = tokio::spawn(async move {
        let mut conn = mock.accept_joined().await;
        // The probe comes after half the idle timeout; it is never answered.
        assert!(matches!(conn.recv().await, ClientMsg::Ping { .. }));
        let _silent = conn;
        let mut conn = mock.accept().await;
        let join = conn.expect_hello_join().await;
        assert_eq!((join.epoch, join.seq), (Some(1), Some(5)));
        conn.send(&welcome()).await;
        conn.send(&joined(true, 0, None)).await;
        // An answered probe keeps the connection.
        for _ in 0..2 {
            match conn.recv().await {
                ClientMsg::Ping { id } => conn.send(&ServerMsg::Pong { id, time: 0 }).await,
                other => panic!("expected ping, got {other:?}"),
            }
        }
        conn.drain_until_closed().await;
    });
    let client = Client::connect(config).await.unwrap();
    let mut events = client.subscribe();
    let ev = wait_for(&mut events, "disconnected", |e| matches!(e, Event::Disconnected { .. })).await;
    assert!(
        matches!(ev, Event::Disconnected { code: None, ref reason } if reason.contains("nothing received")),
        "{ev:?}"
    );
    wait_for(&mut events, "resumed", |e| matches!(e, Event::Resumed { with_snapshot: false })).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(client.connection_state(), ConnectionState::Connected);
    client.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn a_service_restart_honours_the_retry_hint() {
    let mock = Mock::start().await;
    let config = mock.config();
    let server = tokio::spawn(async move {
        let mut conn = mock.accept_joined().await;
        conn.close(1012, "service_restart: retry_ms=250").await;
        let started = tokio::time::Instant::now();
        let mut conn = mock.accept().await;
        assert!(started.elapsed() >= Duration::from_millis(200));
        conn.expect_hello_join().await;
        conn.send(&welcome()).await;
        conn.send(&joined(true, 0, None)).await;
        conn.drain_until_closed().await;
    });
    let client = Client::connect(config).await.unwrap();
    let mut events = client.subscribe();
    let ev = wait_for(&mut events, "reconnecting", |e| matches!(e, Event::Reconnecting { .. })).await;
    assert_eq!(ev, Event::Reconnecting { attempt: 1, delay: Duration::from_millis(250) });
    wait_for(&mut events, "resumed", |e| matches!(e, Event::Resumed { .. })).await;
    client.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn a_resync_replaces_the_mirror_and_resends_outstanding_batches() {
    let mock = Mock::start().await;
    let config = mock.config();
    let server = tokio::spawn(async move {
        let mut conn = mock.accept_joined().await;
        assert_eq!(conn.expect_ops().await.0, 1);
        // The client lagged: its delta for cid 1 (seq 19) was dropped; a resync follows.
        conn.send(&ServerMsg::Resync {
            room: "room-1".into(),
            snapshot: snapshot(1, 20, &[("n", Doc::Int(20))]),
            cid: 1,
            members: vec![
                MemberInfo { player: PLAYER.into(), status: PresenceStatus::Joined },
                MemberInfo { player: "p-b".into(), status: PresenceStatus::Disconnected },
            ],
        })
        .await;
        assert_eq!(conn.expect_ops().await.0, 1, "outstanding batch re-sent with its cid");
        conn.send(&ServerMsg::Ack { cid: 1, seq: 19 }).await;
        conn.drain_until_closed().await;
    });
    let client = Client::connect(config).await.unwrap();
    let mut events = client.subscribe();
    let ticket = client.send_ops_tracked(inc()).await.unwrap();
    wait_for(&mut events, "resync", |e| matches!(e, Event::Resync)).await;
    assert_eq!(ticket.acked().await.unwrap(), 19);
    assert_eq!((client.seq(), client.get("n")), (20, Some(Doc::Int(20))));
    assert_eq!(client.members().len(), 2, "members come with the resync");
    client.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn leave_waits_for_the_servers_close() {
    let mock = Mock::start().await;
    let config = mock.config();
    let server = tokio::spawn(async move {
        let mut conn = mock.accept_joined().await;
        assert_eq!(conn.recv().await, ClientMsg::Leave);
        conn.close(1000, "left").await;
        mock.expect_no_connection(Duration::from_millis(300)).await;
    });
    let client = Client::connect(config).await.unwrap();
    let mut events = client.subscribe();
    client.leave().await.unwrap();
    assert_eq!(client.connection_state(), ConnectionState::Closed);
    let ev = wait_for(&mut events, "closed", |e| matches!(e, Event::Closed { .. })).await;
    assert_eq!(ev, Event::Closed { code: Some(1000), reason: "left".into() });
    server.await.unwrap();
}

#[tokio::test]
async fn an_unread_event_stream_drops_the_oldest_events_and_the_mirror_stays_right() {
    let mock = Mock::start().await;
    let config = mock.config().with_event_buffer(4);
    let server = tokio::spawn(async move {
        let mut conn = mock.accept_joined().await;
        for i in 0..50 {
            conn.send(&delta(6 + i, None, None, i as i64)).await;
        }
        match conn.recv().await {
            ClientMsg::Ping { id } => conn.send(&ServerMsg::Pong { id, time: 0 }).await,
            other => panic!("expected ping, got {other:?}"),
        }
        conn.drain_until_closed().await;
    });
    let client = Client::connect(config).await.unwrap();
    // The pong comes after all 50 deltas, so they have been applied once ping returns.
    client.ping().await.unwrap();
    assert_eq!((client.seq(), client.get("n")), (55, Some(Doc::Int(49))));
    let mut seqs = Vec::new();
    while seqs.len() < 4 {
        match client.next_event().await {
            Some(Event::Delta(d)) => seqs.push(d.seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seqs, [52, 53, 54, 55], "the newest events are kept");
    assert_eq!(client.dropped_events(), 46);
    client.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn a_refused_join_is_returned_by_connect() {
    let mock = Mock::start().await;
    let config = mock.config();
    let server = tokio::spawn(async move {
        let mut conn = mock.accept().await;
        conn.expect_hello_join().await;
        conn.send(&welcome()).await;
        conn.send(&ServerMsg::Error {
            code: "room_full".into(),
            message: "64 players".into(),
            retry_ms: None,
        })
        .await;
    });
    match Client::connect(config).await {
        Err(ClientError::JoinRefused { code, .. }) => assert_eq!(code, ErrorCode::RoomFull),
        other => panic!("expected a refusal, got {other:?}"),
    }
    server.await.unwrap();
}

#[tokio::test]
async fn connect_fails_fast_without_a_server_and_times_out_on_a_mute_one() {
    let mock = Mock::start().await;
    let url = mock.url.clone();
    drop(mock);
    let config = ClientConfig::new(url, "r", "doc");
    assert!(matches!(Client::connect(config).await, Err(ClientError::Connect(_))));

    let mock = Mock::start().await;
    let config = mock.config().with_handshake_timeout(Duration::from_millis(300));
    let server = tokio::spawn(async move {
        let mut conn = mock.accept().await;
        conn.expect_hello_join().await;
        tokio::time::sleep(Duration::from_millis(600)).await;
    });
    assert!(matches!(Client::connect(config).await, Err(ClientError::HandshakeTimeout(_))));
    server.await.unwrap();
}
