//! Flooding and overload (issue #7, DESIGN.md failure matrix "malformed / oversized /
//! flooding input"): one connection floods a real node process with op batches and pings as
//! fast as its socket takes them, and the other players keep their input-to-echo latency; a
//! node whose runtime stalls turns new players away for a while instead of degrading.
#![cfg(feature = "server")]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use gamerelay::protocol::{decode_server, encode, ClientMsg, Doc, Join, Op, ServerMsg};
use support::cluster::Node;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(20);
const PLAYERS: usize = 4;
/// Each player sends at least this many inputs ...
const ROUNDS: u64 = 100;
/// ... and keeps sending for at least this long, so the flood lasts.
const MEASURE: Duration = Duration::from_secs(2);

async fn send(ws: &mut Ws, msg: &ClientMsg) {
    ws.send(Message::Binary(encode(msg))).await.expect("send");
}

/// The next server message (batches flattened by the caller's loop); `None` when closed.
async fn next(ws: &mut Ws) -> Option<ServerMsg> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Binary(b))) => return Some(decode_server(&b).expect("server frames decode")),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Connects, says hello, joins `room` (doc); returns the socket and the player id.
async fn join(url: &str, room: &str) -> (Ws, String) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    send(&mut ws, &ClientMsg::Hello { v: 1, client: Some("flood-test".into()) }).await;
    send(&mut ws, &ClientMsg::Join(Join { room: room.into(), room_type: "doc".into(), ..Join::default() }))
        .await;
    loop {
        match next(&mut ws).await.expect("joined") {
            ServerMsg::Joined { player, .. } => return (ws, player),
            ServerMsg::Error { code, message, .. } => panic!("join refused: {code}: {message}"),
            _ => {}
        }
    }
}

/// Whether `msg` (or a message in it, for a batch) is the echo of `cid` by `me`.
fn is_echo(msg: &ServerMsg, me: &str, cid: u64) -> bool {
    match msg {
        ServerMsg::Delta(d) => d.cid == Some(cid) && d.by.as_deref() == Some(me),
        ServerMsg::Ack { cid: c, .. } => *c == cid,
        ServerMsg::Batch { msgs } => msgs.iter().any(|m| is_echo(m, me, cid)),
        _ => false,
    }
}

/// One player: inputs in lockstep (at least ROUNDS, for at least MEASURE), each timed from
/// send to its own delta.
async fn player(url: String) -> Vec<Duration> {
    let (mut ws, me) = join(&url, "calm").await;
    let mut latencies = Vec::with_capacity(ROUNDS as usize);
    let began = Instant::now();
    for cid in 1.. {
        if cid > ROUNDS && began.elapsed() >= MEASURE {
            break;
        }
        let path = format!("players/{me}/n");
        let started = Instant::now();
        send(&mut ws, &ClientMsg::Ops { cid, ops: vec![Op::Set { path, value: Doc::Int(cid as i64) }] })
            .await;
        loop {
            let msg = next(&mut ws).await.expect("the calm player stays connected");
            if let ServerMsg::Reject { code, .. } = &msg {
                panic!("a calm player's input was refused: {code}");
            }
            if is_echo(&msg, &me, cid) {
                break;
            }
        }
        latencies.push(started.elapsed());
    }
    latencies
}

/// What the flooder saw.
#[derive(Default)]
struct FloodStats {
    frames_sent: AtomicU64,
    rate_limited: AtomicU64,
}

/// Floods until `stop`: 64-op batches and pings, never waiting for answers. A reader task
/// counts `rate_limited` answers and reports the first through `first_refusal`.
async fn flood(
    url: String,
    room: &'static str,
    stop: Arc<AtomicBool>,
    stats: Arc<FloodStats>,
    first_refusal: oneshot::Sender<()>,
) {
    let (ws, _) = join(&url, room).await;
    let (mut sink, mut stream) = ws.split();
    let reader = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut first = Some(first_refusal);
            while let Some(Ok(frame)) = stream.next().await {
                let Message::Binary(b) = frame else { continue };
                let limited = match decode_server(&b) {
                    Ok(ServerMsg::Reject { code, .. } | ServerMsg::Error { code, .. }) => {
                        code == "rate_limited"
                    }
                    _ => false,
                };
                if limited {
                    stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    if let Some(tx) = first.take() {
                        let _ = tx.send(());
                    }
                }
            }
        })
    };
    let batch = |cid: u64| {
        let ops =
            (0..64).map(|i| Op::Set { path: format!("spam/k{i}"), value: Doc::Int(cid as i64) }).collect();
        encode(&ClientMsg::Ops { cid, ops })
    };
    let mut cid = 0u64;
    while !stop.load(Ordering::Relaxed) {
        cid += 1;
        let frame = if cid % 2 == 0 { batch(cid) } else { encode(&ClientMsg::Ping { id: cid }) };
        if sink.send(Message::Binary(frame)).await.is_err() {
            break;
        }
        stats.frames_sent.fetch_add(1, Ordering::Relaxed);
    }
    let _ = sink.close().await;
    reader.abort();
}

/// Contract: a flood from one connection is held to its rate limits (refused with
/// `rate_limited`) and other players' input-to-echo latency stays bounded (p99 < 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn one_flooding_connection_does_not_starve_other_players() {
    flooded_node_keeps_latency("flood").await;
}

/// The same with the flooder in the players' own room: what it gets past the rate limit is
/// applied and fanned out to them, and their own inputs still come back in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_flooding_member_does_not_starve_the_rest_of_its_room() {
    flooded_node_keeps_latency("calm").await;
}

async fn flooded_node_keeps_latency(flood_room: &'static str) {
    // The flooder is never closed for abuse here, so it floods for the whole measurement.
    let node = Node::start_embedded(
        &format!("flooded-{flood_room}"),
        &["--rate-limit-strikes", "1000000000", "--worker-threads", "2"],
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(FloodStats::default());
    let (first_refusal, refused) = oneshot::channel();
    let flooder = tokio::spawn(flood(node.url(), flood_room, stop.clone(), stats.clone(), first_refusal));
    // Measure only once the flood is being refused, i.e. the node is under it.
    tokio::time::timeout(WAIT, refused).await.expect("the flood hits the rate limit").expect("flooder alive");
    let players: Vec<_> = (0..PLAYERS).map(|_| tokio::spawn(player(node.url()))).collect();
    let mut latencies = Vec::new();
    for p in players {
        latencies.extend(p.await.expect("player task"));
    }
    let sent_during = stats.frames_sent.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    flooder.await.expect("flooder task");
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    let max = latencies[latencies.len() - 1];
    let limited = stats.rate_limited.load(Ordering::Relaxed);
    println!(
        "flood into {flood_room}: {sent_during} frames sent, {limited} refused as rate_limited; {} echoes: p50 {p50:?}, p99 {p99:?}, max {max:?}",
        latencies.len()
    );
    assert!(latencies.len() >= PLAYERS * ROUNDS as usize);
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?} under the flood");
    assert!(limited > 10, "the flood was refused ({limited} rate_limited answers)");
    let hits = node.metric("gamerelay_limit_hits_total{limit=\"ops_rate\"}").await
        + node.metric("gamerelay_limit_hits_total{limit=\"bytes_rate\"}").await;
    assert!(hits >= limited as f64, "the node counted {hits} rate limit hits, the client saw {limited}");
}

/// One join attempt of a new player: `Ok(player)` or `Err(code)`.
async fn try_join(url: &str, room: &str) -> Result<String, (String, Option<u64>)> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    send(&mut ws, &ClientMsg::Hello { v: 1, client: Some("flood-test".into()) }).await;
    send(&mut ws, &ClientMsg::Join(Join { room: room.into(), room_type: "doc".into(), ..Join::default() }))
        .await;
    loop {
        match next(&mut ws).await.expect("an answer to join") {
            ServerMsg::Joined { player, .. } => return Ok(player),
            ServerMsg::Error { code, retry_ms, .. } => return Err((code, retry_ms)),
            _ => {}
        }
    }
}

/// Contract: with `--shed-lag-ms`, a node whose runtime was late past the threshold (here:
/// the process was paused for 600 ms) refuses new players with `overloaded` and a retry hint
/// for `--shed-lag-hold-ms`, then admits them again.
#[tokio::test]
async fn a_stalled_node_sheds_new_players_for_a_while() {
    let mut node =
        Node::start_embedded("stalled", &["--shed-lag-ms", "200", "--shed-lag-hold-ms", "1500"]).await;
    try_join(&node.url(), "lag").await.expect("a calm node admits players");
    node.sigstop();
    // The stall itself: the node cannot run while stopped.
    tokio::time::sleep(Duration::from_millis(600)).await;
    node.sigcont();
    let refused = try_join(&node.url(), "lag").await;
    match refused {
        Err((code, retry_ms)) => {
            assert_eq!(code, "overloaded");
            assert!(retry_ms.is_some_and(|ms| ms > 0));
        }
        Ok(_) => panic!("a join right after a 600 ms stall was admitted"),
    }
    // The hold ends: new players are admitted again.
    let deadline = Instant::now() + WAIT;
    loop {
        match try_join(&node.url(), "lag").await {
            Ok(_) => break,
            Err((code, _)) => assert_eq!(code, "overloaded"),
        }
        assert!(Instant::now() < deadline, "still shedding long after the hold");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(node.metric("gamerelay_limit_hits_total{limit=\"overload\"}").await >= 1.0);
}
