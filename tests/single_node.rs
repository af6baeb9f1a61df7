//! The single-node contract, tested with real WebSocket clients against a real node on a
//! free port. Test names cite the guarantee of DESIGN.md they check (G3-G6).
#![cfg(feature = "server")]

mod common;

use common::{inc, new_join, set, Mirror, Raw, TestServer};
use gamerelay::protocol::{ClientMsg, Doc, ErrorCode, Join, Op, PresenceStatus, ServerMsg};

fn delta(m: &ServerMsg) -> Option<gamerelay::protocol::Delta> {
    match m {
        ServerMsg::Delta(d) => Some(d.clone()),
        _ => None,
    }
}

fn reject_code(m: &ServerMsg) -> Option<(u64, String)> {
    match m {
        ServerMsg::Reject { cid, code, .. } => Some((*cid, code.clone())),
        _ => None,
    }
}

#[tokio::test]
async fn join_returns_a_snapshot_with_a_valid_hash() {
    let server = TestServer::start(&[]).await;
    let (_a, info) = Raw::joined(&server, "arena-1", "arena").await;
    let snap = info.snapshot.expect("a new player gets a snapshot");
    assert!(!info.resumed);
    assert_eq!(info.cid, 0);
    assert_eq!(snap.state.state_hash(), snap.hash);
    // The arena placed the new player in its snapshot.
    let me = snap.state.get(["players", info.player.as_str()]).expect("own player state");
    assert_eq!(me.get(["score"]), Some(&Doc::Int(0)));
    assert!(info.session.len() >= 32, "session tokens are long random strings");
    server.stop().await;
}

#[tokio::test]
async fn g3_deltas_reach_every_member_in_seq_order_and_mirrors_converge() {
    let server = TestServer::start(&[]).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (raw, info) = Raw::joined(&server, "fanout", "doc").await;
        clients.push((raw, info));
    }
    // Each client sends 20 batches to its own subtree and the shared counter.
    for round in 1..=20u64 {
        for (raw, info) in clients.iter_mut() {
            let own = format!("players/{}/n", info.player);
            raw.ops(round, vec![set(&own, round as i32), inc("shared/count", 1)]).await;
        }
    }
    let total = 60;
    let mut final_hashes = Vec::new();
    for (raw, info) in clients.iter_mut() {
        let mut mirror = Mirror::from_snapshot(info.snapshot.as_ref().expect("snapshot"));
        let mut own_acks = 0;
        while own_acks < 20 || mirror.seq < info.snapshot.as_ref().map_or(0, |s| s.seq) + total {
            let d = raw.until(delta).await;
            if d.seq <= mirror.seq {
                continue; // presence-era deltas already in the snapshot
            }
            mirror.apply(&d);
            if d.by.as_deref() == Some(info.player.as_str()) {
                own_acks += 1;
                assert_eq!(d.cid, Some(own_acks), "own deltas ack cids in order");
            }
        }
        assert_eq!(mirror.state.get(["shared", "count"]), Some(&Doc::Int(60)));
        final_hashes.push(mirror.state.state_hash());
    }
    assert!(final_hashes.windows(2).all(|w| w[0] == w[1]), "every mirror ends with one state");
    // A newcomer's snapshot is the server's state: same hash.
    let (_late, late) = Raw::joined(&server, "fanout", "doc").await;
    assert_eq!(late.snapshot.expect("snapshot").hash, final_hashes[0]);
    server.stop().await;
}

#[tokio::test]
async fn g3_with_a_flush_interval_deltas_arrive_coalesced_in_batches_and_in_order() {
    let server = TestServer::start(&["--flush-interval-ms", "20"]).await;
    let (mut a, a_info) = Raw::joined(&server, "coalesced", "doc").await;
    let (mut b, b_info) = Raw::joined(&server, "coalesced", "doc").await;
    for cid in 1..=30 {
        a.ops(cid, vec![inc("n", 1)]).await;
    }
    let mut mirrors = [
        Mirror::from_snapshot(a_info.snapshot.as_ref().expect("snapshot")),
        Mirror::from_snapshot(b_info.snapshot.as_ref().expect("snapshot")),
    ];
    for (raw, mirror) in [&mut a, &mut b].into_iter().zip(mirrors.iter_mut()) {
        while mirror.state.get(["n"]) != Some(&Doc::Int(30)) {
            let d = raw.until(delta).await;
            if d.seq > mirror.seq {
                mirror.apply(&d);
            }
        }
        assert!(raw.batch_frames > 0, "30 back-to-back ops within 20 ms windows share frames");
    }
    server.stop().await;
}

#[tokio::test]
async fn ownership_and_validation_violations_are_rejected_with_their_codes() {
    let server = TestServer::start(&["--max-ops-per-batch", "4"]).await;
    let (mut a, info) = Raw::joined(&server, "rules", "doc").await;
    let (_b, other) = Raw::joined(&server, "rules", "doc").await;
    let cases: Vec<(Vec<Op>, ErrorCode)> = vec![
        (vec![set(&format!("players/{}/x", other.player), 1)], ErrorCode::Forbidden),
        (vec![set("players", 1)], ErrorCode::Forbidden),
        (vec![set("a//b", 1)], ErrorCode::BadPath),
        (vec![set("k/".repeat(20).trim_end_matches('/'), 1)], ErrorCode::BadPath),
        (vec![set("x", 1); 5], ErrorCode::TooManyOps),
        (vec![], ErrorCode::TooManyOps),
        (vec![set("s", "text"), inc("s", 1)], ErrorCode::BadValue),
        (vec![Op::Merge { path: "m".into(), value: Doc::Int(1) }], ErrorCode::BadValue),
    ];
    for (i, (ops, code)) in cases.into_iter().enumerate() {
        let cid = i as u64 + 1;
        a.ops(cid, ops).await;
        let (got_cid, got) = a.until(reject_code).await;
        assert_eq!((got_cid, got.as_str()), (cid, code.as_str()), "case {i}");
    }
    // Nothing of the refused batches was applied: the shared "s" of the atomic batch is absent.
    let (_c, fresh) = Raw::joined(&server, "rules", "doc").await;
    assert_eq!(fresh.snapshot.expect("snapshot").state.get(["s"]), None, "refused batches are atomic");
    // Arena: the score is server-owned.
    let (mut p, me) = Raw::joined(&server, "arena-rules", "arena").await;
    p.ops(1, vec![set(&format!("players/{}/score", me.player), 100)]).await;
    assert_eq!(p.until(reject_code).await, (1, "forbidden".to_string()));
    drop(info);
    server.stop().await;
}

#[tokio::test]
async fn g4_a_retried_cid_gets_its_original_ack_and_is_not_applied_twice() {
    let server = TestServer::start(&[]).await;
    let (mut a, _) = Raw::joined(&server, "exactly-once", "doc").await;
    a.ops(1, vec![inc("count", 1)]).await;
    let first = a.until(delta).await;
    a.ops(2, vec![inc("count", 1)]).await;
    a.until(delta).await;
    // Retry cid 1: the original seq comes back as an ack, no new delta.
    a.ops(1, vec![inc("count", 1)]).await;
    let ack = a.until(|m| match m {
        ServerMsg::Ack { cid, seq } => Some((*cid, *seq)),
        ServerMsg::Delta(d) => panic!("a retried cid must not produce a delta: {d:?}"),
        _ => None,
    });
    assert_eq!(ack.await, (1, first.seq));
    // A refused cid is not consumed; once a higher cid is applied, it is stale.
    a.ops(3, vec![set("players/someone-else/x", 1)]).await;
    assert_eq!(a.until(reject_code).await, (3, "forbidden".to_string()));
    a.ops(4, vec![set("x", 1)]).await;
    a.until(delta).await;
    a.ops(3, vec![set("x", 2)]).await;
    assert_eq!(a.until(reject_code).await, (3, "stale_cid".to_string()));
    let (_b, fresh) = Raw::joined(&server, "exactly-once", "doc").await;
    assert_eq!(fresh.snapshot.expect("snapshot").state.get(["count"]), Some(&Doc::Int(2)));
    server.stop().await;
}

#[tokio::test]
async fn g5_resume_after_a_dropped_connection_delivers_exactly_the_missed_deltas() {
    let server = TestServer::start(&[]).await;
    let (mut a, _) = Raw::joined(&server, "resume", "doc").await;
    let (mut b, b_info) = Raw::joined(&server, "resume", "doc").await;
    let mut b_mirror = Mirror::from_snapshot(b_info.snapshot.as_ref().expect("snapshot"));
    a.ops(1, vec![set("before", 1)]).await;
    b_mirror.apply(&b.until(delta).await);
    b.drop_abruptly().await;
    a.until(|m| matches!(m, ServerMsg::Presence { status: PresenceStatus::Disconnected, .. }).then_some(()))
        .await;
    for cid in 2..=6 {
        a.ops(cid, vec![inc("missed", 1)]).await;
    }
    let mut head = 0;
    for _ in 2..=6 {
        head = a.until(delta).await.seq;
    }
    // B comes back with its token and last seen (epoch, seq).
    let mut b = Raw::connect(&server).await;
    b.hello().await;
    let resumed = b
        .join(Join {
            session: Some(b_info.session.clone()),
            epoch: Some(b_mirror.epoch),
            seq: Some(b_mirror.seq),
            ..new_join("resume", "doc")
        })
        .await;
    assert!(resumed.resumed);
    assert_eq!(resumed.player, b_info.player, "same player identity");
    assert!(resumed.snapshot.is_none(), "missed deltas, not a snapshot, when they are in the ring");
    let mut got = Vec::new();
    while b_mirror.seq < head {
        let d = b.until(delta).await;
        got.push(d.seq);
        b_mirror.apply(&d);
    }
    assert_eq!(got, ((head - 4)..=head).collect::<Vec<_>>(), "exactly the missed deltas");
    assert_eq!(b_mirror.state.get(["missed"]), Some(&Doc::Int(5)));
    a.until(|m| matches!(m, ServerMsg::Presence { status: PresenceStatus::Returned, .. }).then_some(()))
        .await;
    server.stop().await;
}

#[tokio::test]
async fn g5_resume_too_far_behind_gets_a_snapshot() {
    let server = TestServer::start(&["--delta-ring", "4"]).await;
    let (mut a, _) = Raw::joined(&server, "far", "doc").await;
    let (b, b_info) = Raw::joined(&server, "far", "doc").await;
    let seen = b_info.snapshot.as_ref().expect("snapshot").clone();
    b.drop_abruptly().await;
    for cid in 1..=10 {
        a.ops(cid, vec![inc("n", 1)]).await;
    }
    for _ in 1..=10 {
        a.until(delta).await;
    }
    let mut b = Raw::connect(&server).await;
    b.hello().await;
    let resumed = b
        .join(Join {
            session: Some(b_info.session),
            epoch: Some(seen.epoch),
            seq: Some(seen.seq),
            ..new_join("far", "doc")
        })
        .await;
    let snap = resumed.snapshot.expect("a snapshot when the missed deltas left the ring");
    assert_eq!(snap.state.get(["n"]), Some(&Doc::Int(10)));
    server.stop().await;
}

#[tokio::test]
async fn a_session_taken_over_by_a_new_connection_closes_the_old_one_as_replaced() {
    let server = TestServer::start(&[]).await;
    let (mut old, info) = Raw::joined(&server, "takeover", "doc").await;
    let mut new = Raw::connect(&server).await;
    new.hello().await;
    let resumed = new.join(Join { session: Some(info.session.clone()), ..new_join("takeover", "doc") }).await;
    assert_eq!(resumed.player, info.player);
    assert!(resumed.snapshot.is_some(), "no (epoch, seq) given: snapshot");
    let (code, reason) = old.closed().await;
    assert_eq!(code, 4000);
    assert!(reason.starts_with("replaced"), "{reason}");
    // The new connection is fully live.
    new.ops(1, vec![set("x", 1)]).await;
    assert_eq!(new.until(delta).await.cid, Some(1));
    server.stop().await;
}

/// A resume attempt the client gave up on (it hung, the client tried again elsewhere) must
/// not replace the newer connection when it completes late: attempts only go forward.
#[tokio::test]
async fn a_late_resume_attempt_never_replaces_a_newer_one() {
    let server = TestServer::start(&[]).await;
    let (_first, info) = Raw::joined(&server, "attempts", "doc").await;
    let resume = |attempt| Join {
        session: Some(info.session.clone()),
        attempt: Some(attempt),
        ..new_join("attempts", "doc")
    };
    let mut newer = Raw::connect(&server).await;
    newer.hello().await;
    assert_eq!(newer.join(resume(2)).await.player, info.player);
    let mut late = Raw::connect(&server).await;
    late.hello().await;
    let answer = late.join_msg(resume(1)).await;
    assert!(matches!(answer, ServerMsg::Error { ref code, .. } if code == "stale_resume"), "{answer:?}");
    // The newer connection is still the session's: its ops are applied.
    newer.ops(1, vec![set("x", 1)]).await;
    assert_eq!(newer.until(delta).await.cid, Some(1));
    // A later attempt still takes over, as any resume does.
    let mut latest = Raw::connect(&server).await;
    latest.hello().await;
    assert_eq!(latest.join(resume(3)).await.player, info.player);
    assert_eq!(newer.closed().await.0, 4000);
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_session_is_refused_as_expired() {
    let server = TestServer::start(&[]).await;
    let (_a, _) = Raw::joined(&server, "expiry", "doc").await;
    let mut b = Raw::connect(&server).await;
    b.hello().await;
    let answer = b.join_msg(Join { session: Some("f".repeat(32)), ..new_join("expiry", "doc") }).await;
    assert!(matches!(answer, ServerMsg::Error { ref code, .. } if code == "session_expired"), "{answer:?}");
    server.stop().await;
}

#[tokio::test]
async fn sessions_expire_after_the_reconnect_grace_and_the_player_leaves() {
    let server = TestServer::start(&["--reconnect-grace-ms", "300"]).await;
    let (mut a, _) = Raw::joined(&server, "grace", "arena").await;
    let (b, b_info) = Raw::joined(&server, "grace", "arena").await;
    b.drop_abruptly().await;
    let left = a
        .until(|m| match m {
            ServerMsg::Presence { player, status: PresenceStatus::Left, .. } => Some(player.clone()),
            _ => None,
        })
        .await;
    assert_eq!(left, b_info.player);
    // The arena removed the player's state with a server delta.
    let removal = a.until(delta).await;
    assert_eq!(removal.by, None);
    assert_eq!(removal.ops, vec![Op::Del { path: format!("players/{}", b_info.player) }]);
    let mut again = Raw::connect(&server).await;
    again.hello().await;
    let answer = again.join_msg(Join { session: Some(b_info.session), ..new_join("grace", "arena") }).await;
    assert!(matches!(answer, ServerMsg::Error { ref code, .. } if code == "session_expired"));
    server.stop().await;
}

#[tokio::test]
async fn ephemeral_messages_reach_the_room_or_one_player_and_touch_no_state() {
    let server = TestServer::start(&[]).await;
    let (mut a, a_info) = Raw::joined(&server, "chat", "doc").await;
    let (mut b, b_info) = Raw::joined(&server, "chat", "doc").await;
    a.send(&ClientMsg::Msg { to: None, data: Doc::str("hello room") }).await;
    let got = b.until(|m| match m {
        ServerMsg::Msg { from, data, to: None, .. } => Some((from.clone(), data.clone())),
        _ => None,
    });
    assert_eq!(got.await, (Some(a_info.player.clone()), Doc::str("hello room")));
    b.send(&ClientMsg::Msg { to: Some(a_info.player.clone()), data: Doc::Int(7) }).await;
    let got = a.until(|m| match m {
        ServerMsg::Msg { from, to: Some(_), data, .. } => Some((from.clone(), data.clone())),
        _ => None,
    });
    assert_eq!(got.await, (Some(b_info.player.clone()), Doc::Int(7)));
    a.send(&ClientMsg::Msg { to: Some("p-nobody".into()), data: Doc::Nil }).await;
    let code = a.until(|m| match m {
        ServerMsg::Error { code, .. } => Some(code.clone()),
        _ => None,
    });
    assert_eq!(code.await, "unknown_player");
    let (_c, fresh) = Raw::joined(&server, "chat", "doc").await;
    assert_eq!(fresh.snapshot.expect("snapshot").seq, 0, "messages are not state changes");
    server.stop().await;
}

#[tokio::test]
async fn malformed_and_truncated_frames_get_error_frames_and_the_node_serves_everyone_else() {
    let server = TestServer::start(&["--max-bad-frames", "3"]).await;
    let (mut good, _) = Raw::joined(&server, "hostile", "doc").await;
    let (mut bad, _) = Raw::joined(&server, "hostile", "doc").await;
    let frames: Vec<Vec<u8>> = vec![
        vec![0xc1],                                                            // never-used MessagePack byte
        gamerelay::protocol::encode(&ClientMsg::Ping { id: 1 })[..3].to_vec(), // truncated
        vec![0x81, 0xa1, b't', 0xa4, b'n', b'o', b'p', b'e'],                  // unknown message type
    ];
    for f in frames {
        bad.send_bytes(f).await;
        let code = bad.until(|m| match m {
            ServerMsg::Error { code, .. } => Some(code.clone()),
            _ => None,
        });
        assert_eq!(code.await, "bad_frame");
    }
    // A NaN inside an op makes the whole frame invalid: nothing is applied.
    let mut nan = Vec::new();
    nan.extend_from_slice(&[0x83, 0xa1, b't', 0xa3, b'o', b'p', b's', 0xa3, b'c', b'i', b'd', 0x01]);
    nan.extend_from_slice(&[0xa3, b'o', b'p', b's', 0x91, 0x83]);
    nan.extend_from_slice(&[
        0xa2, b'o', b'p', 0xa3, b's', b'e', b't', 0xa4, b'p', b'a', b't', b'h', 0xa1, b'x',
    ]);
    nan.extend_from_slice(&[0xa5, b'v', b'a', b'l', b'u', b'e', 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 1]);
    bad.send_bytes(nan).await;
    // That was the 4th malformed frame, over the limit of 3: closed as a protocol error.
    assert_eq!(bad.closed().await.0, 4001);
    // Everyone else is unaffected.
    good.ops(1, vec![set("still", "fine")]).await;
    assert_eq!(good.until(delta).await.cid, Some(1));
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009_and_others_carry_on() {
    let server = TestServer::start(&["--max-frame-bytes", "2048"]).await;
    let (mut good, _) = Raw::joined(&server, "big", "doc").await;
    let (mut bad, _) = Raw::joined(&server, "big", "doc").await;
    bad.ops(1, vec![set("blob", "x".repeat(4096))]).await;
    let (code, _) = bad.closed().await;
    assert_eq!(code, 1009);
    good.ops(1, vec![set("ok", 1)]).await;
    assert_eq!(good.until(delta).await.cid, Some(1));
    server.stop().await;
}

#[tokio::test]
async fn text_frames_are_refused_as_bad_frames() {
    let server = TestServer::start(&[]).await;
    let (mut a, _) = Raw::joined(&server, "text", "doc").await;
    a.send_text("{\"t\":\"ping\"}").await;
    let code = a.until(|m| match m {
        ServerMsg::Error { code, .. } => Some(code.clone()),
        _ => None,
    });
    assert_eq!(code.await, "bad_frame");
    server.stop().await;
}

#[tokio::test]
async fn the_handshake_is_enforced() {
    let server = TestServer::start(&["--handshake-timeout-ms", "300"]).await;
    // First frame must be hello.
    let mut a = Raw::connect(&server).await;
    a.send(&ClientMsg::Ping { id: 1 }).await;
    assert_eq!(a.closed().await.0, 4001);
    // Unknown protocol version.
    let mut b = Raw::connect(&server).await;
    b.send(&ClientMsg::Hello { v: 2, client: None }).await;
    let code = b.until(|m| match m {
        ServerMsg::Error { code, .. } => Some(code.clone()),
        _ => None,
    });
    assert_eq!(code.await, "unsupported_version");
    assert_eq!(b.closed().await.0, 4002);
    // Silence past the handshake timeout.
    let mut c = Raw::connect(&server).await;
    c.hello().await;
    assert_eq!(c.closed().await.0, 4100);
    server.stop().await;
}

#[tokio::test]
async fn a_bad_room_or_type_is_refused_and_the_connection_may_join_again() {
    let server = TestServer::start(&[]).await;
    let (_a, _) = Raw::joined(&server, "typed", "doc").await;
    let mut b = Raw::connect(&server).await;
    b.hello().await;
    for join in [new_join("typed", "arena"), new_join("bad room!", "doc"), new_join("x", "chess")] {
        let answer = b.join_msg(join).await;
        assert!(matches!(answer, ServerMsg::Error { ref code, .. } if code == "bad_room"), "{answer:?}");
    }
    b.join(new_join("typed", "doc")).await;
    let answer = b.join_msg(new_join("typed", "doc")).await;
    assert!(matches!(answer, ServerMsg::Error { ref code, .. } if code == "already_joined"));
    server.stop().await;
}

#[tokio::test]
async fn rooms_hold_at_most_max_players() {
    let server = TestServer::start(&["--max-players-per-room", "2"]).await;
    let (_a, _) = Raw::joined(&server, "small", "doc").await;
    let (_b, _) = Raw::joined(&server, "small", "doc").await;
    let mut c = Raw::connect(&server).await;
    c.hello().await;
    let answer = c.join_msg(new_join("small", "doc")).await;
    assert!(matches!(answer, ServerMsg::Error { ref code, .. } if code == "room_full"), "{answer:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_recreated_room_gets_a_higher_epoch() {
    let server = TestServer::start(&["--room-idle-ttl-ms", "50", "--reconnect-grace-ms", "50"]).await;
    let (mut a, first) = Raw::joined(&server, "reborn", "doc").await;
    a.send(&ClientMsg::Leave).await;
    assert_eq!(a.closed().await.0, 1000);
    // Wait until the room is disposed: a join then creates it anew at epoch + 1.
    let first_epoch = first.snapshot.expect("snapshot").epoch;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let (_b, info) = Raw::joined(&server, "reborn", "doc").await;
        let epoch = info.snapshot.expect("snapshot").epoch;
        if epoch > first_epoch {
            break;
        }
        drop(_b);
        assert!(tokio::time::Instant::now() < deadline, "room was never disposed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_clients_with_1012_and_a_retry_hint() {
    let server = TestServer::start(&["--reconnect-hint-ms", "500"]).await;
    let (mut a, _) = Raw::joined(&server, "bye", "doc").await;
    let stopping = tokio::spawn(server.stop());
    let (code, reason) = a.closed().await;
    assert_eq!(code, 1012);
    let hint: u64 = reason
        .split("retry_ms=")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("retry hint in {reason:?}"));
    assert!(hint <= 500);
    stopping.await.expect("server stops");
}

#[tokio::test]
async fn http_endpoints_report_health_readiness_and_metrics() {
    let server = TestServer::start(&[]).await;
    let (mut a, _) = Raw::joined(&server, "metrics", "doc").await;
    a.ops(1, vec![set("x", 1)]).await;
    a.until(delta).await;
    let get = |path: &'static str| server.http_get(path);
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    let ready = get("/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200") && ready.contains("backplane=embedded"), "{ready}");
    let metrics = get("/metrics").await;
    for name in ["gamerelay_deltas_total", "gamerelay_connections", "gamerelay_op_batches_accepted_total"] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    drop(a);
    server.stop().await;
}

#[tokio::test]
async fn the_browser_demo_is_served_from_the_binary() {
    let server = TestServer::start(&[]).await;
    let get = |path: &'static str| server.http_get(path);
    let page = get("/demo").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.to_ascii_lowercase().contains("content-type: text/html"), "{page}");
    assert!(page.contains(r#"src="/demo/demo.js""#), "{page}");
    for (path, kind, needle) in [
        ("/demo/demo.js", "text/javascript", "./gamerelay-client.js"),
        ("/demo/gamerelay-client.js", "text/javascript", "export {"),
        ("/demo/style.css", "text/css", "canvas"),
    ] {
        let file = get(path).await;
        assert!(file.starts_with("HTTP/1.1 200"), "{path}: {}", &file[..file.len().min(200)]);
        assert!(file.to_ascii_lowercase().contains(&format!("content-type: {kind}")), "{path}");
        assert!(file.contains(needle), "{path} lacks {needle}");
    }
    assert!(get("/demo/nope.js").await.starts_with("HTTP/1.1 404"));
    assert!(get("/demo/../Cargo.toml").await.starts_with("HTTP/1.1 404"));
    server.stop().await;
}
