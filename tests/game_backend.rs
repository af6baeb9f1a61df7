//! Game backends (issue #9), with real processes: the admin API over HTTP, server-owned
//! state, kicks, closes and server messages seen by real WebSocket clients, private and
//! listed rooms, and `join_or_create` racing across the nodes of a real cluster (Redis).
#![cfg(feature = "server")]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use gamerelay::protocol::{Doc, ErrorCode, Op, PresenceStatus};
use gamerelay_client::{Client, ClientConfig, ClientError, Event, ReconnectPolicy};
use serde_json::{json, Value};
use support::cluster::{http_request, tools_available, wait_for, Node, Redis, Tool};

const TOKEN: &str = "admin-token-for-the-tests-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(20);

/// An admin API call: status and JSON body (`Value::Null` for an empty or non-JSON body).
async fn api(node: &Node, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    api_as(node, TOKEN, method, path, body).await
}

async fn api_as(node: &Node, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let body = body.map(|b| b.to_string());
    let (code, text) = http_request(node.port(), method, path, &[("Authorization", &auth)], body.as_deref())
        .await
        .unwrap_or_else(|| panic!("{method} {path}: no HTTP answer"));
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn no_reconnect(cfg: ClientConfig) -> ClientConfig {
    cfg.with_reconnect(ReconnectPolicy::disabled())
}

async fn join(node: &Node, room: &str, room_type: &str) -> Client {
    Client::connect(no_reconnect(ClientConfig::new(node.url(), room, room_type)))
        .await
        .unwrap_or_else(|e| panic!("join {room} on {}: {e}", node.id()))
}

/// Waits for the client's final event and returns its close code.
async fn closed_code(client: &Client) -> Option<u16> {
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match client.next_event().await {
                Some(Event::Closed { code, .. }) => return code,
                Some(_) => {}
                None => {
                    return client.close_reason().and_then(|e| match e {
                        ClientError::Closed { code, .. } => code,
                        _ => None,
                    })
                }
            }
        }
    });
    closed.await.expect("the connection closed in time")
}

fn set(path: &str, value: impl Into<Doc>) -> Op {
    Op::Set { path: path.into(), value: value.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_owned_state_is_refused_from_players_and_written_by_the_admin_api() {
    let node = Node::start_embedded("node-1", &["--admin-token", TOKEN]).await;
    let a = join(&node, "match-1", "doc").await;
    let me = a.player_id().to_owned();

    let refused = a.send_ops(vec![set("server/round", 1)]).await.expect("sent");
    match a.wait_ack(refused).await {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::Forbidden),
        other => panic!("a player's write under server/ must be refused, got {other:?}"),
    }

    let ops = json!({"ops": [
        {"op": "set", "path": "server/round", "value": 3},
        {"op": "set", "path": format!("players/{me}/coins"), "value": 10},
    ]});
    let (code, written) = api(&node, "POST", "/admin/v1/rooms/match-1/ops", Some(ops)).await;
    assert_eq!(code, 200, "{written}");
    let seq = written["seq"].as_u64().expect("the write is acked with its seq");

    // The player sees the server's write as a delta from nobody, at that seq.
    let delta = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Event::Delta(d)) = a.next_event().await {
                if d.seq == seq {
                    return d;
                }
            }
        }
    })
    .await
    .expect("the server's delta reached the player");
    assert_eq!((delta.by, delta.cid), (None, None), "server writes carry no player and no cid");
    assert_eq!(a.get("server/round"), Some(Doc::Int(3)));
    assert_eq!(a.get(&format!("players/{me}/coins")), Some(Doc::Int(10)));

    let (code, room) = api(&node, "GET", "/admin/v1/rooms/match-1?state=true", None).await;
    assert_eq!(code, 200, "{room}");
    assert_eq!(room["seq"].as_u64(), Some(seq));
    assert_eq!(room["state"]["server"]["round"], json!(3));
    assert_eq!(room["hash"].as_str(), Some(a.state_hash().as_str()), "the owner's hash equals the mirror's");
    assert_eq!(room["members"][0]["player"].as_str(), Some(me.as_str()));
    assert_eq!(room["owner"].as_str(), Some("node-1"));

    // Bad writes are refused with the room's error codes, and change nothing.
    let (code, err) = api(
        &node,
        "POST",
        "/admin/v1/rooms/match-1/ops",
        Some(json!({"ops": [{"op": "inc", "path": "server/round", "by": "x"}]})),
    )
    .await;
    assert_eq!((code, err["error"]["code"].as_str()), (422, Some("bad_value")), "{err}");
    let (code, _) =
        api(&node, "POST", "/admin/v1/rooms/nowhere/ops", Some(json!({"ops": [set("a", 1)]}))).await;
    assert_eq!(code, 404, "a room no node owns");

    // Credentials: none, or a wrong one, are refused.
    let (code, _) = api_as(&node, "", "GET", "/admin/v1/rooms/match-1", None).await;
    assert_eq!(code, 401);
    let (code, _) =
        api_as(&node, "wrong-token-wrong-token-wrong-token-0000", "GET", "/admin/v1/rooms/match-1", None)
            .await;
    assert_eq!(code, 401);
    assert!(node.metric("gamerelay_admin_requests_total{outcome=\"unauthorized\"}").await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_rooms_kicks_messages_and_closes_reach_members_with_their_codes() {
    let node = Node::start_embedded("node-1", &["--admin-token", TOKEN]).await;
    let create = json!({"type": "doc", "room": "hall", "max_players": 2, "private": true, "metadata": {"mode": "duel"}});
    let (code, room) = api(&node, "POST", "/admin/v1/rooms", Some(create.clone())).await;
    assert_eq!(code, 201, "{room}");
    assert_eq!(room["listing"]["private"], json!(true));
    assert_eq!(room["listing"]["metadata"]["mode"], json!("duel"));
    let (code, _) = api(&node, "POST", "/admin/v1/rooms", Some(create)).await;
    assert_eq!(code, 409, "the id is taken");

    // Private: not listed to players, but joinable by id, up to its seats.
    let listed = gamerelay_client::list_rooms(&node.url(), "doc", WAIT).await.expect("list_rooms");
    assert!(listed.iter().all(|r| r.room != "hall"), "a private room is never listed: {listed:?}");
    let a = join(&node, "hall", "doc").await;
    let b = join(&node, "hall", "doc").await;
    let full = Client::connect(no_reconnect(ClientConfig::new(node.url(), "hall", "doc"))).await;
    assert_eq!(full.err().and_then(|e| e.code()), Some(ErrorCode::RoomFull), "2 seats, 2 players");

    // Server messages: to one player, then to everyone; `from` is nil.
    let to_b = json!({"to": b.player_id(), "data": {"hint": "left"}});
    let (code, sent) = api(&node, "POST", "/admin/v1/rooms/hall/messages", Some(to_b)).await;
    assert_eq!((code, sent["delivered"].as_u64()), (200, Some(1)), "{sent}");
    let (code, sent) =
        api(&node, "POST", "/admin/v1/rooms/hall/messages", Some(json!({"data": "round 2"}))).await;
    assert_eq!((code, sent["delivered"].as_u64()), (200, Some(2)), "{sent}");
    let mut b_saw = Vec::new();
    while b_saw.len() < 2 {
        match tokio::time::timeout(WAIT, b.next_event()).await.expect("B's messages") {
            Some(Event::Msg { from, to, data }) => b_saw.push((from, to, data)),
            Some(_) => {}
            None => panic!("B closed"),
        }
    }
    assert_eq!(b_saw[0].0, None, "from the server");
    assert_eq!(b_saw[0].1.as_deref(), Some(b.player_id()));
    assert_eq!(b_saw[1], (None, None, Doc::str("round 2")));

    // Kick: B is closed with 4004, A sees B leave, and B's seat is free again.
    let kick = json!({"player": b.player_id(), "reason": "cheating"});
    let (code, kicked) = api(&node, "POST", "/admin/v1/rooms/hall/kick", Some(kick)).await;
    assert_eq!(code, 200, "{kicked}");
    assert_eq!(closed_code(&b).await, Some(4004));
    let b_id = b.player_id().to_owned();
    wait_for("A to see B leave", WAIT, || {
        let gone = !a.members().iter().any(|m| m.player == b_id);
        async move { gone.then_some(()) }
    })
    .await;
    assert!(a.members().iter().all(|m| m.status != PresenceStatus::Left));
    let (code, _) = api(&node, "POST", "/admin/v1/rooms/hall/kick", Some(json!({"player": b_id}))).await;
    assert_eq!(code, 404, "a player no longer in the room");
    let c = wait_for("the freed seat to take a new player", WAIT, || {
        let url = node.url();
        async move { Client::connect(no_reconnect(ClientConfig::new(url, "hall", "doc"))).await.ok() }
    })
    .await;

    // Close: everyone gets 4006 and the room is gone.
    let (code, _) = api(&node, "DELETE", "/admin/v1/rooms/hall?reason=round%20over", None).await;
    assert_eq!(code, 200);
    assert_eq!(closed_code(&a).await, Some(4006));
    assert_eq!(closed_code(&c).await, Some(4006));
    let (code, _) = api(&node, "GET", "/admin/v1/rooms/hall", None).await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_off_without_a_token() {
    let node = Node::start_embedded("node-1", &[]).await;
    let (code, body) = api(&node, "GET", "/admin/v1/rooms?type=doc", None).await;
    assert_eq!((code, body["error"]["code"].as_str()), (403, Some("admin_disabled")), "{body}");
}

/// Race-free `join_or_create` (G: no overfull room, no second half-empty room): 30 players
/// join at once through 3 nodes sharing one Redis, 4 seats a room. Exactly 8 rooms come out
/// (7 full, one with 2), each player in one; listings and the owners agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_join_or_create_across_nodes_fills_rooms_without_overfull_or_extra_rooms() {
    if !tools_available(&[Tool::RedisServer]) {
        return;
    }
    const PLAYERS: usize = 30;
    const SEATS: usize = 4;
    let redis = Redis::start().await;
    let seats = SEATS.to_string();
    let args = ["--admin-token", TOKEN, "--join-or-create-max-players", &seats];
    let nodes = [
        Node::start(&redis.url(), "node-1", &args).await,
        Node::start(&redis.url(), "node-2", &args).await,
        Node::start(&redis.url(), "node-3", &args).await,
    ];
    for n in &nodes {
        n.wait_readyz(200, WAIT).await;
    }
    let mut joins = tokio::task::JoinSet::new();
    for i in 0..PLAYERS {
        let url = nodes[i % nodes.len()].url();
        joins.spawn(async move {
            Client::connect(no_reconnect(ClientConfig::join_or_create(url, "arena"))).await
        });
    }
    let mut clients = Vec::new();
    while let Some(joined) = joins.join_next().await {
        clients.push(joined.expect("join task").expect("join_or_create"));
    }
    let mut rooms: HashMap<String, Vec<String>> = HashMap::new();
    for c in &clients {
        rooms.entry(c.room().to_owned()).or_default().push(c.player_id().to_owned());
    }
    let mut sizes: Vec<usize> = rooms.values().map(Vec::len).collect();
    sizes.sort_unstable();
    assert!(sizes.iter().all(|&n| n <= SEATS), "no room is overfull: {sizes:?}");
    assert_eq!(rooms.len(), PLAYERS.div_ceil(SEATS), "no extra half-empty room: {sizes:?}");
    assert!(rooms.keys().all(|r| r.starts_with("arena-")), "generated ids: {:?}", rooms.keys());

    // Each room's owner has exactly the players the clients say, and the listing agrees.
    for (room, players) in &rooms {
        let (code, view) = api(&nodes[0], "GET", &format!("/admin/v1/rooms/{room}"), None).await;
        assert_eq!(code, 200, "{view}");
        let mut members: Vec<String> = view["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(|m| m["player"].as_str().map(str::to_owned))
            .collect();
        members.sort();
        let mut expected = players.clone();
        expected.sort();
        assert_eq!(members, expected, "room {room}");
        assert_eq!(view["listing"]["members"].as_u64(), Some(players.len() as u64));
    }
    let listed = gamerelay_client::list_rooms(&nodes[1].url(), "arena", WAIT).await.expect("list_rooms");
    assert_eq!(listed.len(), rooms.len());
    for l in &listed {
        assert_eq!(Some(l.members as usize), rooms.get(&l.room).map(Vec::len), "{l:?}");
        assert_eq!(l.max_players as usize, SEATS);
    }
    // The half-empty room is the one the next player gets, from any node.
    let next = Client::connect(no_reconnect(ClientConfig::join_or_create(nodes[2].url(), "arena")))
        .await
        .expect("one more join_or_create");
    assert_eq!(rooms.get(next.room()).map(Vec::len), Some(PLAYERS % SEATS), "the open room is filled first");
}

/// Any node answers for any room: commands sent to a node that does not own the room are
/// forwarded to its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_sent_to_any_node_reach_the_rooms_owner() {
    if !tools_available(&[Tool::RedisServer]) {
        return;
    }
    let redis = Redis::start().await;
    let n1 = Node::start(&redis.url(), "node-1", &["--admin-token", TOKEN]).await;
    let n2 = Node::start(&redis.url(), "node-2", &["--admin-token", TOKEN]).await;
    n1.wait_readyz(200, WAIT).await;
    n2.wait_readyz(200, WAIT).await;
    let a = join(&n1, "owned-by-1", "doc").await;
    let ops = json!({"ops": [{"op": "set", "path": "server/timer", "value": 90}]});
    let (code, written) = api(&n2, "POST", "/admin/v1/rooms/owned-by-1/ops", Some(ops)).await;
    assert_eq!(code, 200, "{written}");
    wait_for("the write to reach the player", WAIT, || {
        let v = a.get("server/timer");
        async move { (v == Some(Doc::Int(90))).then_some(()) }
    })
    .await;
    let (code, view) = api(&n2, "GET", "/admin/v1/rooms/owned-by-1?state=true", None).await;
    assert_eq!(code, 200, "{view}");
    assert_eq!(view["owner"].as_str(), Some("node-1"));
    assert_eq!(view["state"]["server"]["timer"], json!(90));
    // A room created through node 2 lives on node 2 and is listed for everyone.
    let (code, created) = api(
        &n2,
        "POST",
        "/admin/v1/rooms",
        Some(json!({"type": "doc", "room": "made-on-2", "max_players": 3})),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["owner"].as_str(), Some("node-2"));
    let listed = gamerelay_client::list_rooms(&n1.url(), "doc", WAIT).await.expect("list_rooms");
    assert!(listed.iter().any(|r| r.room == "made-on-2" && r.max_players == 3), "{listed:?}");
    let (code, kicked) =
        api(&n2, "POST", "/admin/v1/rooms/owned-by-1/kick", Some(json!({"player": a.player_id()}))).await;
    assert_eq!(code, 200, "{kicked}");
    assert_eq!(closed_code(&a).await, Some(4004));
}
