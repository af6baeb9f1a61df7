//! Webhooks (docs/WEBHOOKS.md) with real processes: a `gamerelay` node (the binary cargo
//! built for the tests) POSTs to a receiver in this test process (axum on a free loopback
//! port) that checks every signature with the shared secret and records what arrived.
//!
//! What the tests hold the node to: a receiver hears each room's life (created, joined, left,
//! timed out, disposed) once per event and in order; an event the receiver refused is retried
//! before any later one; and a receiver that never answers delays webhooks only: players join
//! and their ops are acknowledged as fast as ever, and the failures show on `/metrics`.
#![cfg(feature = "server")]

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use support::cluster::{free_port, http_request, tools_available, wait_for, Node, Redis, Tool};
use support::player::{inc, Player};
use tokio::task::JoinHandle;

/// The shared signing secret (`--webhook-secret`).
const SECRET: &str = "webhook-test-secret-0123456789";
/// Longest wait for any one expected event.
const WAIT: Duration = Duration::from_secs(15);

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    /// The `x-gamerelay-id` header (checked to equal the body's `id`).
    id: String,
    body: Value,
    /// What the receiver answered.
    status: u16,
}

impl Hit {
    fn kind(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }
    fn field(&self, name: &str) -> Option<&str> {
        self.body[name].as_str()
    }
}

struct Shared {
    /// Answer 500 to this many requests first, then 200.
    fail_first: usize,
    /// How long each answer takes.
    delay: Duration,
    hits: Mutex<Vec<Hit>>,
    /// Anything wrong with a request (signature, headers, body).
    problems: Mutex<Vec<String>>,
}

/// A webhook receiver on a free loopback port.
struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        Receiver::start_with(fail_first, Duration::ZERO).await
    }

    async fn start_with(fail_first: usize, delay: Duration) -> Receiver {
        let (hits, problems) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
        let shared = Arc::new(Shared { fail_first, delay, hits, problems });
        let app = axum::Router::new().route("/hook", post(receive)).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, shared, task }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The events accepted (answered 200) for `room`, in arrival order.
    fn accepted(&self, room: &str) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.status == 200 && h.field("room") == Some(room)).collect()
    }

    fn assert_no_problems(&self) {
        let problems = self.shared.problems.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert!(problems.is_empty(), "bad webhook requests: {problems:#?}");
    }

    /// Waits until an accepted event of `kind` for `room` arrived.
    async fn wait_event(&self, room: &str, kind: &str) {
        let what = format!("{kind} for {room}");
        wait_for(&what, WAIT, || async {
            self.accepted(room).iter().any(|h| h.kind() == kind).then_some(())
        })
        .await;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let mut problems = Vec::new();
    let (timestamp, signature, id, event) = (
        header("x-gamerelay-timestamp"),
        header("x-gamerelay-signature"),
        header("x-gamerelay-id"),
        header("x-gamerelay-event"),
    );
    let expected = {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(&body);
        format!("v1={}", hex::encode(mac.finalize().into_bytes()))
    };
    if signature != expected {
        problems.push(format!("signature {signature:?}, expected {expected:?}"));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match timestamp.parse::<u64>() {
        Ok(ts) if ts.abs_diff(now) <= 300 => {}
        _ => problems.push(format!("timestamp {timestamp:?} is not within 5 minutes of {now}")),
    }
    if header("content-type") != "application/json" {
        problems.push(format!("content-type {:?}", header("content-type")));
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        problems.push(format!("body is not JSON: {e}"));
        Value::Null
    });
    if body["id"].as_str() != Some(id.as_str()) || id.is_empty() {
        problems.push(format!("x-gamerelay-id {id:?} differs from the body's {:?}", body["id"]));
    }
    if body["type"].as_str() != Some(event.as_str()) {
        problems.push(format!("x-gamerelay-event {event:?} differs from the body's {:?}", body["type"]));
    }
    let time_ms = body["time"].as_u64().unwrap_or(0);
    if time_ms / 1000 > now + 1 || time_ms / 1000 + 300 < now {
        problems.push(format!("time {time_ms} is not a recent time in ms"));
    }
    tokio::time::sleep(shared.delay).await;
    let mut hits = shared.hits.lock().unwrap_or_else(|e| e.into_inner());
    let status = if hits.len() < shared.fail_first { 500 } else { 200 };
    hits.push(Hit { id, body, status });
    drop(hits);
    if !problems.is_empty() {
        shared.problems.lock().unwrap_or_else(|e| e.into_inner()).extend(problems);
    }
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A node posting webhooks to `url`, with short reconnect grace and idle TTL so rooms end
/// quickly, plus `extra` flags.
async fn node_with_webhooks(id: &str, url: &str, extra: &[&str]) -> Node {
    let mut args = vec![
        "--webhook-url",
        url,
        "--webhook-secret",
        SECRET,
        "--reconnect-grace-ms",
        "300",
        "--room-idle-ttl-ms",
        "300",
    ];
    args.extend_from_slice(extra);
    Node::start_embedded(id, &args).await
}

/// Plays a room's whole life: A and B join, A leaves, B drops and its grace expires, the room
/// is disposed. Returns (A's id, B's id).
async fn play_a_room_life(node: &Node, room: &str, receiver: &Receiver) -> (String, String) {
    let urls = [node.url()];
    let mut a = Player::join("A", &urls, room, "doc").await;
    let mut b = Player::join("B", &urls, room, "doc").await;
    let (a_id, b_id) = (a.player_id.clone(), b.player_id.clone());
    // Both see the room work before anyone goes.
    a.send(vec![inc("shared/count", 1)]).await;
    b.send(vec![inc("shared/count", 1)]).await;
    a.settle_all(WAIT).await;
    b.settle_all(WAIT).await;
    a.leave().await;
    receiver.wait_event(room, "player.left").await;
    b.abandon();
    receiver.wait_event(room, "room.disposed").await;
    (a_id, b_id)
}

/// The events of `hits` as (type, player, reason), for comparisons.
fn story(hits: &[Hit]) -> Vec<(String, Option<String>, Option<String>)> {
    hits.iter()
        .map(|h| {
            (h.kind().to_owned(), h.field("player").map(str::to_owned), h.field("reason").map(str::to_owned))
        })
        .collect()
}

fn expected_story(a: &str, b: &str) -> Vec<(String, Option<String>, Option<String>)> {
    let e = |kind: &str, player: Option<&str>, reason: Option<&str>| {
        (kind.to_owned(), player.map(str::to_owned), reason.map(str::to_owned))
    };
    vec![
        e("room.created", None, None),
        e("player.joined", Some(a), None),
        e("player.joined", Some(b), None),
        e("player.left", Some(a), Some("left")),
        e("player.timed_out", Some(b), None),
        e("room.disposed", None, None),
    ]
}

fn assert_unique_ids(hits: &[Hit]) {
    let mut seen = HashSet::new();
    for h in hits {
        assert!(seen.insert(h.id.clone()), "event id {} delivered twice: {hits:#?}", h.id);
    }
}

/// Starts a receiver that answers 500 to its first `refuse` requests and a node posting to
/// it, plays a room's life, and checks that the receiver accepted all of it once per event and
/// in order. Returns the receiver, the node, and the room's accepted events.
async fn room_life_told(node_id: &str, refuse: usize) -> (Receiver, Node, Vec<Hit>) {
    let receiver = Receiver::start(refuse).await;
    let node = node_with_webhooks(node_id, &receiver.url(), &[]).await;
    let room = format!("{node_id}-room");
    let (a, b) = play_a_room_life(&node, &room, &receiver).await;
    let hits = receiver.accepted(&room);
    assert_eq!(story(&hits), expected_story(&a, &b), "events: {hits:#?}");
    assert_unique_ids(&hits);
    (receiver, node, hits)
}

#[tokio::test]
async fn webhooks_tell_a_rooms_life_once_each_in_order_and_signed() {
    let (receiver, node, hits) = room_life_told("wh-life", 0).await;
    for h in &hits {
        assert_eq!(h.field("node"), Some("wh-life"));
        assert_eq!(h.field("room_type"), Some("doc"));
    }
    let times: Vec<u64> = hits.iter().map(|h| h.body["time"].as_u64().unwrap_or(0)).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "event times go forward: {times:?}");
    // Nothing was refused, so nothing was sent twice.
    assert_eq!(receiver.hits().len(), hits.len());
    assert!(node.metric("gamerelay_webhook_deliveries_total{outcome=\"delivered\"}").await >= 6.0);
    assert_eq!(node.metric("gamerelay_webhook_deliveries_total{outcome=\"failed\"}").await, 0.0);
    receiver.assert_no_problems();
}

#[tokio::test]
async fn a_refused_webhook_is_retried_before_any_later_event() {
    // The first three requests are answered 500: the room's first event is retried three
    // times while the others wait behind it.
    let (receiver, node, accepted) = room_life_told("wh-retry", 3).await;
    let all = receiver.hits();
    assert_eq!(all.len(), accepted.len() + 3, "three refusals, then each event once: {all:#?}");
    for refused in &all[..3] {
        assert_eq!(refused.status, 500);
        assert_eq!(refused.id, accepted[0].id, "the head event is retried before later ones");
    }
    assert_eq!(node.metric("gamerelay_webhook_deliveries_total{outcome=\"retried\"}").await, 3.0);
    receiver.assert_no_problems();
}

#[tokio::test]
async fn a_dead_webhook_receiver_never_slows_rooms() {
    // A receiver that accepts connections and never answers: every POST times out.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_url = format!("http://{}/hook", listener.local_addr().expect("address"));
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    // A small queue fills at once; two attempts per event, so failures come quickly.
    let extra = ["--webhook-timeout-ms", "300", "--webhook-max-attempts", "2", "--webhook-queue", "4"];
    let node = node_with_webhooks("wh-dead", &silent_url, &extra).await;
    let urls = [node.url()];
    let mut players = Vec::new();
    for room in 0..6 {
        for name in ["A", "B"] {
            let started = Instant::now();
            let p = Player::join(name, &urls, &format!("wh-dead-{room}"), "doc").await;
            assert!(started.elapsed() < Duration::from_secs(5), "a join took {:?}", started.elapsed());
            players.push(p);
        }
    }
    // Every op batch is acknowledged promptly while the webhooks time out.
    for round in 0..10 {
        for p in players.iter_mut() {
            let started = Instant::now();
            p.send(vec![inc("shared/count", 1)]).await;
            p.settle_all(Duration::from_secs(5)).await;
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "round {round}: an ack took {:?}",
                started.elapsed()
            );
        }
    }
    for p in players.iter_mut() {
        p.wait_until("every round counted", WAIT, |p| p.mirror.int("shared/count") == 20).await;
    }
    // A port where nothing listens at all fails fast instead of hanging: also no harm.
    let refused =
        node_with_webhooks("wh-refused", &format!("http://127.0.0.1:{}/hook", free_port()), &extra).await;
    let mut p = Player::join("C", &[refused.url()], "wh-refused-room", "doc").await;
    p.send(vec![inc("shared/count", 1)]).await;
    p.settle_all(Duration::from_secs(5)).await;
    for n in [&node, &refused] {
        wait_for("webhook failures on /metrics", WAIT, || async {
            let retried = n.metric("gamerelay_webhook_deliveries_total{outcome=\"retried\"}").await;
            let failed = n.metric("gamerelay_webhook_deliveries_total{outcome=\"failed\"}").await;
            (retried > 0.0 && failed > 0.0).then_some(())
        })
        .await;
        assert_eq!(n.metric("gamerelay_webhook_deliveries_total{outcome=\"delivered\"}").await, 0.0);
    }
    // 6 rooms created and 12 players joined is far more than a queue of 4.
    assert!(node.metric("gamerelay_webhook_events_dropped_total").await > 0.0);
    silent.abort();
}

/// On SIGTERM the queue gets a short drain: what the rooms emitted before is delivered, even
/// to a receiver that takes 200 ms per answer, and the node still exits cleanly.
#[tokio::test]
async fn a_node_shutting_down_delivers_what_it_had_queued() {
    let receiver = Receiver::start_with(0, Duration::from_millis(200)).await;
    let mut node = node_with_webhooks("wh-drain", &receiver.url(), &[]).await;
    let room = "wh-drain-room";
    let a = Player::join("A", &[node.url()], room, "doc").await;
    let b = Player::join("B", &[node.url()], room, "doc").await;
    node.sigterm();
    let status = node.wait(WAIT).await.expect("the node exits after its drain");
    assert!(status.success(), "{status:?}");
    let hits = receiver.accepted(room);
    let (a_id, b_id) = (Some(a.player_id.clone()), Some(b.player_id.clone()));
    assert_eq!(
        story(&hits),
        vec![
            ("room.created".to_owned(), None, None),
            ("player.joined".to_owned(), a_id, None),
            ("player.joined".to_owned(), b_id, None),
        ],
        "a shutdown hands the room off: no room.disposed, no player.left; events: {hits:#?}"
    );
    receiver.assert_no_problems();
}

/// Cluster mode: a failover continues a room (its new owner sends no `room.created`, and
/// reports the member that did not come back as timed out); a room disposed and created again
/// from its stored keys is a new room (`room.created` again). Needs `redis-server`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_continues_a_room_and_a_room_created_again_is_new() {
    if !tools_available(&[Tool::RedisServer]) {
        return;
    }
    let redis = Redis::start().await;
    let receiver = Receiver::start(0).await;
    let url = receiver.url();
    let flags = [
        "--webhook-url",
        url.as_str(),
        "--webhook-secret",
        SECRET,
        "--lease-ttl-ms",
        "1000",
        "--reconnect-grace-ms",
        "2000",
        "--room-idle-ttl-ms",
        "300",
    ];
    let mut n1 = Node::start(&redis.url(), "wh-n1", &flags).await;
    let n2 = Node::start(&redis.url(), "wh-n2", &flags).await;
    let room = "wh-failover-room";
    // A joins first, on n1, which therefore owns the room; A resumes on n2 when n1 is gone.
    let mut a = Player::join("A", &[n1.url(), n2.url()], room, "doc").await;
    let mut b = Player::join("B", &[n1.url()], room, "doc").await;
    let (a_id, b_id) = (a.player_id.clone(), b.player_id.clone());
    a.send(vec![inc("shared/count", 1)]).await;
    b.send(vec![inc("shared/count", 1)]).await;
    a.settle_all(WAIT).await;
    b.settle_all(WAIT).await;
    wait_for("n1's three events delivered", WAIT, || async {
        (receiver.accepted(room).len() >= 3).then_some(())
    })
    .await;

    n1.kill9();
    b.abandon();
    a.send(vec![inc("shared/count", 1)]).await;
    a.settle_all(Duration::from_secs(30)).await;
    assert_eq!(a.node(), "wh-n2", "A resumed on the new owner");
    receiver.wait_event(room, "player.timed_out").await;
    a.leave().await;
    receiver.wait_event(room, "room.disposed").await;
    let c = Player::join("C", &[n2.url()], room, "doc").await;
    wait_for("the room created again", WAIT, || async {
        (receiver.accepted(room).iter().filter(|h| h.kind() == "room.created").count() == 2).then_some(())
    })
    .await;
    wait_for("C's join reported", WAIT, || async {
        receiver.accepted(room).iter().any(|h| h.field("player") == Some(c.player_id.as_str())).then_some(())
    })
    .await;

    let hits = receiver.accepted(room);
    let told: Vec<(&str, &str, Option<&str>)> =
        hits.iter().map(|h| (h.field("node").unwrap_or_default(), h.kind(), h.field("player"))).collect();
    let (a_id, b_id, c_id) = (a_id.as_str(), b_id.as_str(), c.player_id.as_str());
    assert_eq!(
        told,
        vec![
            ("wh-n1", "room.created", None),
            ("wh-n1", "player.joined", Some(a_id)),
            ("wh-n1", "player.joined", Some(b_id)),
            ("wh-n2", "player.timed_out", Some(b_id)),
            ("wh-n2", "player.left", Some(a_id)),
            ("wh-n2", "room.disposed", None),
            ("wh-n2", "room.created", None),
            ("wh-n2", "player.joined", Some(c_id)),
        ],
        "events: {hits:#?}"
    );
    assert_unique_ids(&hits);
    receiver.assert_no_problems();
}

/// The admin API's kick is a `player.left` with reason `kicked`; its close ends the room
/// (`room.disposed`).
#[tokio::test]
async fn a_kick_is_reported_as_left_kicked_and_a_close_as_disposed() {
    const TOKEN: &str = "admin-token-for-the-webhook-tests-0123456789";
    let receiver = Receiver::start(0).await;
    let node = node_with_webhooks("wh-admin", &receiver.url(), &["--admin-token", TOKEN]).await;
    let room = "wh-admin-room";
    let urls = [node.url()];
    let a = Player::join("A", &urls, room, "doc").await;
    let b = Player::join("B", &urls, room, "doc").await;
    let admin = |method: &'static str, path: String, body: Option<String>| {
        let port = node.port();
        async move {
            let auth = format!("Bearer {TOKEN}");
            http_request(port, method, &path, &[("Authorization", &auth)], body.as_deref()).await
        }
    };
    let kick = format!(r#"{{"player": "{}", "reason": "cheating"}}"#, b.player_id);
    let kicked = admin("POST", format!("/admin/v1/rooms/{room}/kick"), Some(kick)).await;
    assert_eq!(kicked.as_ref().map(|(code, _)| *code), Some(200), "{kicked:?}");
    receiver.wait_event(room, "player.left").await;
    let closed = admin("DELETE", format!("/admin/v1/rooms/{room}"), None).await;
    assert_eq!(closed.as_ref().map(|(code, _)| *code), Some(200), "{closed:?}");
    receiver.wait_event(room, "room.disposed").await;
    let hits = receiver.accepted(room);
    let (a_id, b_id) = (a.player_id.as_str(), b.player_id.as_str());
    assert_eq!(
        story(&hits),
        vec![
            ("room.created".to_owned(), None, None),
            ("player.joined".to_owned(), Some(a_id.to_owned()), None),
            ("player.joined".to_owned(), Some(b_id.to_owned()), None),
            ("player.left".to_owned(), Some(b_id.to_owned()), Some("kicked".to_owned())),
            ("room.disposed".to_owned(), None, None),
        ],
        "events: {hits:#?}"
    );
    receiver.assert_no_problems();
}

#[test]
fn a_webhook_url_that_is_not_http_or_lacks_a_secret_is_a_config_error() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gamerelay"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("run the node binary")
    };
    let bad_scheme = run(&["--webhook-url", "ftp://game.example.com/hook", "--webhook-secret", SECRET]);
    assert_eq!(bad_scheme.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad_scheme.stderr).contains("--webhook-url"));
    let no_secret = run(&["--webhook-url", "https://game.example.com/hook"]);
    assert_eq!(no_secret.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&no_secret.stderr).contains("--webhook-secret"));
}
