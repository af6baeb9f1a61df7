//! Hardening (issue #7, docs/SECURITY.md): authenticated joins with key rotation, the insecure
//! development mode's startup rules, rate limits and abuse closes, connection limits per
//! address (with trusted proxies), the `Origin` allow-list, the operator listener, and
//! overload shedding. Each test runs a real node and real WebSocket clients.
#![cfg(feature = "server")]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{new_join, set, Raw, TestServer};
use gamerelay::auth::JoinClaims;
use gamerelay::protocol::{ClientMsg, Join, ServerMsg};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OLD_KEY: &str = "old:0123456789abcdef0123456789abcdef";
const NEW_KEY: &str = "new:fedcba9876543210fedcba9876543210";

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A join token signed with `spec`'s secret (`KID:SECRET`), with its kid in the header when
/// `with_kid`.
fn token(spec: &str, with_kid: bool, player: &str, rooms: &[&str], exp: u64) -> String {
    let (kid, secret) = spec.split_once(':').expect("KID:SECRET");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = with_kid.then(|| kid.to_owned());
    let claims = JoinClaims { sub: player.into(), rooms: rooms.iter().map(|r| r.to_string()).collect(), exp };
    encode(&header, &claims, &EncodingKey::from_secret(secret.as_bytes())).expect("sign")
}

fn join_with(room: &str, room_type: &str, token: Option<String>) -> Join {
    Join { token, ..new_join(room, room_type) }
}

async fn auth_server() -> TestServer {
    TestServer::start(&["--auth-key", OLD_KEY, "--auth-key", NEW_KEY]).await
}

/// Expects `error{code}` and then the close 4003 with `unauthorized: <reason>`.
async fn refused(server: &TestServer, join: Join, code: &str, reason: &str) {
    let mut raw = Raw::connect(server).await;
    raw.hello().await;
    match raw.join_msg(join).await {
        ServerMsg::Error { code: got, .. } => assert_eq!(got, code),
        other => panic!("expected error {code}, got {other:?}"),
    }
    assert_eq!(raw.closed().await, (4003, format!("unauthorized: {reason}")));
}

/// Contract: a join needs a valid token of a configured key that allows the room; the
/// player is the token's `sub`. Both keys of a rotation are accepted.
#[tokio::test]
async fn joins_need_a_valid_unexpired_token_that_allows_the_room() {
    let server = auth_server().await;
    let exp = now_secs() + 300;
    refused(&server, join_with("r1", "doc", None), "unauthorized", "missing").await;
    let forged = token("old:0123456789abcdef0123456789abcdeF", false, "mallory", &["*"], exp);
    refused(&server, join_with("r1", "doc", Some(forged)), "unauthorized", "invalid").await;
    refused(&server, join_with("r1", "doc", Some("garbage".into())), "unauthorized", "invalid").await;
    let expired = token(NEW_KEY, true, "alice", &["r1"], now_secs() - 600);
    refused(&server, join_with("r1", "doc", Some(expired)), "token_expired", "expired").await;
    let other_room = token(NEW_KEY, true, "alice", &["r2", "arena:*"], exp);
    refused(&server, join_with("r1", "doc", Some(other_room.clone())), "forbidden", "room_not_allowed").await;
    // A token whose sub could not be a path segment is refused.
    let bad_sub = token(NEW_KEY, true, "a/b", &["*"], exp);
    refused(&server, join_with("r1", "doc", Some(bad_sub)), "unauthorized", "invalid").await;

    // Valid tokens of the old key (no kid: every key is tried) and the new key (kid) pass.
    let mut alice = Raw::connect(&server).await;
    alice.hello().await;
    let a = alice.join(join_with("arena:eu-1", "arena", Some(other_room))).await;
    assert_eq!(a.player, "alice");
    let mut bob = Raw::connect(&server).await;
    bob.hello().await;
    let b = bob
        .join(join_with("arena:eu-1", "arena", Some(token(OLD_KEY, false, "bob", &["arena:eu-1"], exp))))
        .await;
    assert_eq!(b.player, "bob");
    // Nobody writes another player's state: alice cannot move bob.
    alice.ops(1, vec![set("players/bob/x", 5)]).await;
    let code = alice
        .until(|m| match m {
            ServerMsg::Reject { cid: 1, code, .. } => Some(code.clone()),
            _ => None,
        })
        .await;
    assert_eq!(code, "forbidden");

    let metrics = scrape(server.addr).await;
    for reason in ["missing", "invalid", "expired", "room_not_allowed"] {
        assert!(
            metric(&metrics, &format!("gamerelay_auth_failures_total{{reason=\"{reason}\"}}")) >= 1.0,
            "{reason}"
        );
    }
    server.stop().await;
}

/// Contract: session tokens are bound to player and room; a resume needs no join token, but
/// a join token sent with it must name the same player. Joining again as a player who is
/// still a member takes its place (the old connection is closed as replaced).
#[tokio::test]
async fn session_tokens_are_bound_to_player_and_room_and_a_player_has_one_connection() {
    let server = auth_server().await;
    let exp = now_secs() + 300;
    let mut a1 = Raw::connect(&server).await;
    a1.hello().await;
    let first =
        a1.join(join_with("room-a", "doc", Some(token(NEW_KEY, true, "ann", &["room-*"], exp)))).await;

    // Resume with the session token only.
    let mut a2 = Raw::connect(&server).await;
    a2.hello().await;
    let resumed = a2.join(Join { session: Some(first.session.clone()), ..new_join("room-a", "doc") }).await;
    assert!(resumed.resumed);
    assert_eq!(resumed.player, "ann");
    assert_eq!(a1.closed().await.0, 4000);

    // The session token is useless in another room, and with another player's join token.
    let mut x = Raw::connect(&server).await;
    x.hello().await;
    let wrong_room = Join { session: Some(first.session.clone()), ..new_join("room-b", "doc") };
    assert!(
        matches!(x.join_msg(wrong_room).await, ServerMsg::Error { code, .. } if code == "session_expired")
    );
    let wrong_player = Join {
        session: Some(first.session.clone()),
        token: Some(token(NEW_KEY, true, "eve", &["room-*"], exp)),
        ..new_join("room-a", "doc")
    };
    assert!(matches!(x.join_msg(wrong_player).await, ServerMsg::Error { code, .. } if code == "forbidden"));
    // A tampered session token (another player's name) is refused.
    let forged = first.session.replacen("ann", "bob", 1);
    let mut y = Raw::connect(&server).await;
    y.hello().await;
    let forged = Join { session: Some(forged), ..new_join("room-a", "doc") };
    assert!(matches!(y.join_msg(forged).await, ServerMsg::Error { code, .. } if code == "session_expired"));

    // A fresh join as ann (e.g. a second device) replaces ann's connection.
    let mut a3 = Raw::connect(&server).await;
    a3.hello().await;
    let again =
        a3.join(join_with("room-a", "doc", Some(token(NEW_KEY, true, "ann", &["room-a"], exp)))).await;
    assert_eq!(again.player, "ann");
    assert!(again.resumed);
    assert_eq!(a2.closed().await.0, 4000);
    server.stop().await;
}

/// Contract: without a key a node listens on loopback only; any other address needs
/// `--insecure-dev`, else the node exits with 64 and says why.
#[tokio::test]
async fn without_a_key_a_public_address_needs_insecure_dev_or_the_node_exits_with_64() {
    let bin = env!("CARGO_BIN_EXE_gamerelay");
    let out = tokio::process::Command::new(bin)
        .args(["--listen", "0.0.0.0:0"])
        .env_remove("GAMERELAY_AUTH_KEYS")
        .env_remove("GAMERELAY_INSECURE_DEV")
        .output()
        .await
        .expect("run gamerelay");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--auth-key") && stderr.contains("--insecure-dev"), "{stderr}");
    let out = tokio::process::Command::new(bin)
        .args(["--auth-key", "k:short"])
        .output()
        .await
        .expect("run gamerelay");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32"));
}

/// Contract: frames past the ops budget are refused with `rate_limited` (ops batches with
/// `reject`, other messages with `error` and a `retry_ms` hint); repeated refusals close the
/// connection with 4005, and other connections are unaffected.
#[tokio::test]
async fn a_client_over_its_rate_is_refused_then_closed_with_4005() {
    let server = TestServer::start(&[
        "--rate-ops-per-sec",
        "5",
        "--rate-ops-burst",
        "20",
        "--max-ops-per-batch",
        "8",
        "--rate-limit-strikes",
        "10",
    ])
    .await;
    let (mut flooder, _) = Raw::joined(&server, "rates", "doc").await;
    // hello + join cost 2 of the 20; 18 pings fit, then the refusals start.
    for id in 1..=40u64 {
        flooder.send(&ClientMsg::Ping { id }).await;
    }
    flooder.ops(1, vec![set("x", 1)]).await;
    let mut pongs = 0;
    let mut limited = 0;
    let (code, reason) = loop {
        match flooder.recv().await {
            common::Incoming::Msg(ServerMsg::Pong { .. }) => pongs += 1,
            common::Incoming::Msg(ServerMsg::Error { code, retry_ms, .. }) => {
                assert_eq!(code, "rate_limited");
                assert!(retry_ms.is_some_and(|ms| ms > 0));
                limited += 1;
            }
            common::Incoming::Msg(_) => {}
            common::Incoming::Closed { code, reason } => break (code, reason),
        }
    };
    assert_eq!(code, 4005, "{reason}");
    assert!(reason.starts_with("rate_limited"), "{reason}");
    assert!((18..=20).contains(&pongs), "{pongs} pongs");
    assert_eq!(limited, 10, "refusals before the close");
    // Another client of the same node is served as usual, and an op batch over the budget
    // is rejected with its cid.
    let (mut calm, _) = Raw::joined(&server, "rates", "doc").await;
    calm.ping(1).await;
    for cid in 1..=3u64 {
        calm.ops(cid, (0..8).map(|i| set(&format!("k{i}"), cid as i32)).collect()).await;
    }
    let code = calm
        .until(|m| match m {
            ServerMsg::Reject { cid: 3, code, .. } => Some(code.clone()),
            _ => None,
        })
        .await;
    assert_eq!(code, "rate_limited");
    let metrics = scrape(server.addr).await;
    assert!(metric(&metrics, "gamerelay_limit_hits_total{limit=\"ops_rate\"}") >= 11.0);
    assert!(metric(&metrics, "gamerelay_limit_hits_total{limit=\"rate_abuse\"}") >= 1.0);
    server.stop().await;
}

/// Contract: the bytes budget refuses frames too.
#[tokio::test]
async fn a_client_over_its_byte_rate_is_refused() {
    let server = TestServer::start(&[
        "--rate-bytes-per-sec",
        "1024",
        "--rate-bytes-burst",
        "4096",
        "--max-frame-bytes",
        "4096",
    ])
    .await;
    let (mut c, _) = Raw::joined(&server, "bytes", "doc").await;
    // 4096 bytes of burst: the first 1.5 kB batch passes, the fourth cannot.
    for cid in 1..=4u64 {
        c.ops(cid, vec![set("blob", format!("{cid}{}", "x".repeat(1500)))]).await;
    }
    let mut applied = Vec::new();
    let mut limited = Vec::new();
    while applied.len() + limited.len() < 4 {
        match c.msg().await {
            ServerMsg::Delta(d) => applied.extend(d.cid),
            ServerMsg::Ack { cid, .. } => applied.push(cid),
            ServerMsg::Reject { cid, code, .. } => {
                assert_eq!(code, "rate_limited");
                limited.push(cid);
            }
            _ => {}
        }
    }
    assert_eq!(applied.first(), Some(&1), "{applied:?}");
    assert!(limited.contains(&4), "{limited:?}");
    let metrics = scrape(server.addr).await;
    assert!(metric(&metrics, "gamerelay_limit_hits_total{limit=\"bytes_rate\"}") >= 1.0);
    server.stop().await;
}

/// Contract: at most `--max-connections-per-ip` connections per client address (429); behind
/// a trusted proxy the client address is the last `X-Forwarded-For` entry, from anyone else
/// the header is ignored.
#[tokio::test]
async fn connections_per_client_address_are_limited_and_trusted_proxies_forward_the_address() {
    let server = TestServer::start(&["--max-connections-per-ip", "2"]).await;
    let _a = Raw::connect_with(&server, &[]).await.expect("first");
    let _b = Raw::connect_with(&server, &[]).await.expect("second");
    // An untrusted peer cannot escape the limit with a made-up header.
    let third = Raw::connect_with(&server, &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_eq!(third.err(), Some(429));
    drop(_a);
    // The slot is released when the connection ends (the node notices the close).
    let mut again = None;
    for _ in 0..100 {
        if let Ok(raw) = Raw::connect_with(&server, &[]).await {
            again = Some(raw);
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a slot is free again after a close");
    server.stop().await;

    let server =
        TestServer::start(&["--max-connections-per-ip", "1", "--trusted-proxy", "127.0.0.0/8"]).await;
    let _x =
        Raw::connect_with(&server, &[("x-forwarded-for", "203.0.113.5, 198.51.100.1")]).await.expect("x");
    let _y = Raw::connect_with(&server, &[("x-forwarded-for", "198.51.100.2")]).await.expect("y");
    let dup = Raw::connect_with(&server, &[("x-forwarded-for", "10.9.9.9, 198.51.100.2")]).await;
    assert_eq!(dup.err(), Some(429));
    let metrics = scrape(server.addr).await;
    assert!(metric(&metrics, "gamerelay_limit_hits_total{limit=\"connections_per_ip\"}") >= 1.0);
    server.stop().await;
}

/// Opens a WebSocket over a TCP connection that starts with a PROXY v2 header naming `src`;
/// `Err(status)` when the upgrade is refused.
async fn connect_via_proxy(server: &TestServer, src: &str) -> Result<(), u16> {
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let header = gamerelay::proxy_protocol::header(src.parse().unwrap(), server.addr);
    tcp.write_all(&header).await.expect("write header");
    match tokio_tungstenite::client_async(server.url(), tcp).await {
        Ok((mut ws, _)) => {
            use futures_util::SinkExt;
            let _ = ws
                .send(tokio_tungstenite::tungstenite::Message::Binary(gamerelay::protocol::encode(
                    &ClientMsg::Hello { v: 1, client: None },
                )))
                .await;
            // Keep the connection open for the rest of the test.
            tokio::spawn(async move {
                use futures_util::StreamExt;
                while ws.next().await.is_some() {}
            });
            Ok(())
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("handshake: {e}"),
    }
}

/// Contract: a trusted proxy names the client with a PROXY v2 header; the per-address limit
/// counts that address. From an untrusted peer the header is not honoured.
#[tokio::test]
async fn proxy_protocol_v2_from_a_trusted_proxy_names_the_client() {
    let server = TestServer::start(&["--max-connections-per-ip", "1", "--trusted-proxy", "127.0.0.1"]).await;
    connect_via_proxy(&server, "198.51.100.7:40000").await.expect("first client");
    connect_via_proxy(&server, "198.51.100.8:40000").await.expect("another client");
    assert_eq!(connect_via_proxy(&server, "198.51.100.7:40001").await, Err(429), "same client again");
    // A trusted proxy may also connect without a header (health checks): it is the client.
    let mut plain = Raw::connect_with(&server, &[]).await.expect("no header");
    plain.hello().await;
    server.stop().await;

    let untrusted = TestServer::start(&["--max-connections-per-ip", "1"]).await;
    let mut tcp = tokio::net::TcpStream::connect(untrusted.addr).await.expect("connect");
    let header = gamerelay::proxy_protocol::header("198.51.100.7:1".parse().unwrap(), untrusted.addr);
    tcp.write_all(&header).await.expect("write header");
    assert!(tokio_tungstenite::client_async(untrusted.url(), tcp).await.is_err(), "header not honoured");
    untrusted.stop().await;
}

/// Contract: with an `Origin` allow-list, browsers from other origins get 403; clients that
/// send no `Origin` are not affected.
#[tokio::test]
async fn browsers_from_origins_not_allowed_are_refused() {
    let server = TestServer::start(&["--allowed-origin", "https://game.example.com"]).await;
    assert_eq!(Raw::connect_with(&server, &[("origin", "https://evil.example")]).await.err(), Some(403));
    let mut ok =
        Raw::connect_with(&server, &[("origin", "https://game.example.com")]).await.expect("allowed");
    ok.hello().await;
    let mut native = Raw::connect_with(&server, &[]).await.expect("no origin");
    native.hello().await;
    server.stop().await;
}

/// Contract: with `--ops-listen`, /metrics is served on the operator address only.
#[tokio::test]
async fn the_operator_listener_serves_metrics_and_the_public_one_does_not() {
    let server = TestServer::start(&["--ops-listen", "127.0.0.1:0"]).await;
    let ops = server.ops_addr.expect("ops listener");
    let (status, body) = http_get(ops, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("gamerelay_limit_hits_total{limit=\"overload\"}"), "limits registered at 0");
    assert_eq!(http_get(ops, "/readyz").await.0, 200);
    assert_eq!(http_get(server.addr, "/metrics").await.0, 404);
    assert_eq!(http_get(server.addr, "/healthz").await.0, 200);
    server.stop().await;
}

/// Contract: past the configured load, joins of new players are refused with `overloaded`
/// and a retry hint; resumes still pass.
#[tokio::test]
async fn an_overloaded_node_sheds_new_players_with_a_retry_hint_but_lets_sessions_resume() {
    let server = TestServer::start(&[
        "--max-connections",
        "10",
        "--shed-connections-percent",
        "30",
        "--shed-retry-ms",
        "4000",
    ])
    .await;
    let (_a, _) = Raw::joined(&server, "busy", "doc").await;
    let (b, b_info) = Raw::joined(&server, "busy", "doc").await;
    let (_c, _) = Raw::joined(&server, "busy", "doc").await;
    let mut d = Raw::connect(&server).await;
    d.hello().await;
    match d.join_msg(new_join("busy", "doc")).await {
        ServerMsg::Error { code, retry_ms, .. } => {
            assert_eq!(code, "overloaded");
            assert!(retry_ms.is_some_and(|ms| (2000..=4000).contains(&ms)), "{retry_ms:?}");
        }
        other => panic!("expected overloaded, got {other:?}"),
    }
    // The connection stays open; a resume is not shed.
    b.drop_abruptly().await;
    let resumed = d.join(Join { session: Some(b_info.session), ..new_join("busy", "doc") }).await;
    assert!(resumed.resumed);
    let metrics = scrape(server.addr).await;
    assert!(metric(&metrics, "gamerelay_limit_hits_total{limit=\"overload\"}") >= 1.0);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes()).await.expect("write");
    let mut out = String::new();
    tokio::time::timeout(common::WAIT, tcp.read_to_string(&mut out)).await.expect("answer").expect("read");
    let status = out.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, out)
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    body
}

/// The value of the series `series` (name with labels, exactly as exported).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{series} not exported"))
}
