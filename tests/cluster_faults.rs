//! Failure-matrix rows of DESIGN.md played with real processes: a node paused past its lease
//! (SIGSTOP / SIGCONT), a node cut off from Redis, a rolling restart under traffic, Redis
//! killed and restarted empty, a retried cid after a failover, and a session taken over from
//! another node. Each test starts its own redis-server and nodes on free loopback ports
//! (tests/support/cluster.rs) and drives frame-level players (tests/support/player.rs).
//!
//! Every wait is bounded; the only sleeps let real time pass (a lease expiring, an outage
//! lasting), and say so. Lease TTLs are 1 s to keep the tests short.
#![cfg(feature = "server")]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use gamerelay::protocol::{decode_server, encode, ClientMsg, Delta, Doc, Join, ServerMsg};
use support::cluster::{tools_available, wait_for, Cluster, Node, Redis, Resp, TcpProxy, Tool};
use support::player::{converge, inc, set, Player};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Longest wait for any one expected event.
const WAIT: Duration = Duration::from_secs(15);
/// The shared counter every test increments.
const COUNT: &str = "shared/count";
/// Lease TTL of every node in these tests (ms).
const LEASE_MS: u64 = 1000;
const LEASE: Duration = Duration::from_millis(LEASE_MS);

fn have_redis() -> bool {
    tools_available(&[Tool::RedisServer])
}

fn urls(cluster: &Cluster) -> Vec<String> {
    cluster.nodes.iter().map(|n| n.url()).collect()
}

/// Node URLs starting at `first`, then the others in order (where a player tries to resume).
fn urls_from(cluster: &Cluster, first: usize) -> Vec<String> {
    let all = urls(cluster);
    (0..all.len()).map(|i| all[(first + i) % all.len()].clone()).collect()
}

/// Awaits a task that owns a player, re-raising its panic (with the player's trace) here.
async fn join_task<T>(task: JoinHandle<T>) -> T {
    match task.await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task failed: {e}"),
    }
}

/// Streams `inc(COUNT)` batches (one per `pace`, window 4) until `stop`, then settles; the
/// player is handed back.
fn stream_incs(mut p: Player, stop: &Arc<AtomicBool>, pace: Duration) -> JoinHandle<Player> {
    let stop = stop.clone();
    tokio::spawn(async move {
        p.stream_until(&stop, 4, pace, Duration::from_secs(90), |_| vec![inc(COUNT, 1)]).await;
        p
    })
}

/// Waits until `counter` (a player's acked batches) reaches `n`.
async fn wait_progress(what: &str, counter: &Arc<std::sync::atomic::AtomicU64>, n: u64, timeout: Duration) {
    wait_for(what, timeout, || async move { (counter.load(Ordering::SeqCst) >= n).then_some(()) }).await;
}

fn lease_key(room: &str) -> String {
    format!("gr:{{{room}}}:lease")
}

fn epoch_key(room: &str) -> String {
    format!("gr:{{{room}}}:epoch")
}

/// `GET key` as text (`None`: no such key).
fn redis_get(redis: &Redis, key: &str) -> Option<String> {
    redis.cmd(&["GET", key]).as_str()
}

/// The durable deltas of `room` (the stream `gr:{room}:log`, entries `<seq>-0`), by seq.
fn durable_log(redis: &Redis, room: &str) -> BTreeMap<u64, Delta> {
    let key = format!("gr:{{{room}}}:log");
    let Resp::Array(Some(entries)) = redis.cmd(&["XRANGE", &key, "-", "+"]) else {
        return BTreeMap::new();
    };
    let mut log = BTreeMap::new();
    for entry in entries {
        let Resp::Array(Some(parts)) = entry else { panic!("XRANGE entry {entry:?}") };
        let id = parts[0].as_str().expect("entry id");
        let (seq, n) = id.split_once('-').expect("entry id <ms>-<n>");
        if n != "0" {
            continue; // a join or leave
        }
        let Resp::Array(Some(fields)) = &parts[1] else { panic!("XRANGE fields {parts:?}") };
        let mut fields = fields.chunks(2);
        let bytes = fields
            .find(|f| f[0].as_str().as_deref() == Some("d"))
            .and_then(|f| match &f[1] {
                Resp::Bulk(Some(b)) => Some(b.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("log entry {id} of {room} has no delta"));
        let Ok(ServerMsg::Delta(d)) = decode_server(&bytes) else {
            panic!("log entry {id} of {room} is not a delta")
        };
        log.insert(seq.parse().expect("seq"), d);
    }
    log
}

/// G1 + G2 seen from the clients: every delta any player applied is exactly the durable one
/// at its seq (same epoch, cid, author, ops), so no owner fanned out anything it had not
/// committed, and no two deltas ever shared a seq. Also: epochs in the log never go down.
/// Only deltas of `min_epoch` and later are compared (the log holds nothing older when Redis
/// lost it). Returns how many deltas were compared.
fn check_deltas_against_log(redis: &Redis, room: &str, players: &[&Player], min_epoch: u64) -> usize {
    let log = durable_log(redis, room);
    assert!(!log.is_empty(), "the log of {room} is empty");
    let first = *log.keys().next().expect("non-empty");
    let mut compared = 0;
    for p in players {
        for ((epoch, seq), d) in p.deltas.range((min_epoch, 0)..) {
            if *seq < first {
                continue; // trimmed below a snapshot
            }
            match log.get(seq) {
                Some(durable) => assert_eq!(
                    d, durable,
                    "player {} applied ({epoch}, {seq}) but the durable delta at seq {seq} differs (G1/G2)",
                    p.name
                ),
                None => panic!(
                    "player {} applied delta ({epoch}, {seq}) {d:?}, which is not in the durable log \
                     (log seqs {first}..={}) (G2: a delta shown before it was durable, or by a fenced owner)",
                    p.name,
                    log.keys().last().unwrap_or(&0)
                ),
            }
            compared += 1;
        }
    }
    // Players agree with each other wherever their histories overlap (same seq, same content).
    let mut by_seq: BTreeMap<u64, (&str, &Delta)> = BTreeMap::new();
    for p in players {
        for ((_, seq), d) in p.deltas.range((min_epoch, 0)..) {
            if let Some((other, seen)) = by_seq.get(seq) {
                assert_eq!(
                    (&seen.cid, &seen.by, &seen.ops, seen.epoch),
                    (&d.cid, &d.by, &d.ops, d.epoch),
                    "players {other} and {} applied different deltas at seq {seq}",
                    p.name
                );
            } else {
                by_seq.insert(*seq, (p.name.as_str(), d));
            }
        }
    }
    let mut last_epoch = 0;
    for (seq, d) in &log {
        assert!(d.epoch >= last_epoch, "the log's epoch goes down at seq {seq}: {last_epoch} -> {}", d.epoch);
        assert_eq!(d.seq, *seq, "log entry id and delta seq");
        last_epoch = d.epoch;
    }
    compared
}

/// Everything a converged room must show: every batch settled and acked, the counter equal
/// to the acked increments (none lost: G2; none applied twice: G4), every mirror equal to
/// the fresh joiner's snapshot (G6). `incs` = increments per acked batch.
fn check_final(players: &[&Player], fresh: &Player) {
    let mut acked = 0;
    for p in players {
        assert!(p.rejected.is_empty(), "{}'s batches refused for good: {:?}", p.name, p.rejected);
        assert_eq!(p.pending(), 0, "{} has unsettled batches", p.name);
        acked += p.acked.len();
    }
    assert_eq!(
        fresh.mirror.int(COUNT),
        acked as i64,
        "the counter equals the acked increments: none lost (G2), none applied twice (G4)"
    );
    for p in players {
        assert_eq!(
            p.mirror.hash(),
            fresh.mirror.hash(),
            "{}'s mirror equals a fresh joiner's snapshot (G6)",
            p.name
        );
        assert_eq!(p.mirror.int(COUNT), acked as i64, "{}'s counter", p.name);
    }
}

// ---------------------------------------------------------------------------------------------
// node paused past its lease

/// Failure matrix "node paused (SIGSTOP) past its lease, then resumed" (G1): the owner freezes
/// with its clients' sockets open. Its lease expires, the follower node closes its player
/// (4103), which resumes there and the room is claimed again with a higher epoch; changes go
/// on. When the old owner wakes up, its writes are refused (fenced) and it drops the room:
/// its client is closed with 4103 and resumes on the new owner. Nothing acked is lost,
/// nothing is applied twice, every delta any client applied is the durable one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_owner_is_fenced_and_its_clients_move_on() {
    if !have_redis() {
        return;
    }
    const ROOM: &str = "r-pause";
    let mut cluster = Cluster::start(2, &["--lease-ttl-ms", "1000"]).await;
    let urls = urls(&cluster);
    let mut a = Player::join("A", &urls, ROOM, "doc").await;
    assert_eq!(a.node(), "node-1", "A's join made node-1 the owner");
    // A must not give up on the frozen node by itself: its move has to come from the owner
    // fencing itself once it runs again (4103).
    a.silence = Duration::from_secs(30);
    let b = Player::join("B", &urls[1..], ROOM, "doc").await;
    assert_eq!(b.node(), "node-2");
    let epoch_before = a.mirror.epoch;
    let owner_before = redis_get(&cluster.redis, &lease_key(ROOM)).expect("a lease");
    assert!(owner_before.starts_with("node-1."), "lease held by {owner_before}");

    let stop = Arc::new(AtomicBool::new(false));
    let pace = Duration::from_millis(15);
    let (a_acked, b_acked) = (a.progress(), b.progress());
    let a_task = stream_incs(a, &stop, pace);
    let b_task = stream_incs(b, &stop, pace);
    wait_progress("A to have 10 acked batches", &a_acked, 10, WAIT).await;
    wait_progress("B to have 10 acked batches", &b_acked, 10, WAIT).await;

    // (A failover the contract allows, e.g. renewals missed on an overloaded machine, would
    // make this test about something else: check that node-1 still owns the room.)
    let owner_now = redis_get(&cluster.redis, &lease_key(ROOM));
    assert_eq!(owner_now.as_ref(), Some(&owner_before), "precondition: node-1 still owns the room");
    cluster.nodes[0].sigstop();
    let paused_at = Instant::now();
    let (a_at_pause, b_at_pause) = (a_acked.load(Ordering::SeqCst), b_acked.load(Ordering::SeqCst));

    // B's node notices the expired lease, closes B (4103); B resumes on node-2, which claims
    // the room. Only then can B's batches be acked again.
    wait_progress("B's batches to be acked again after the pause", &b_acked, b_at_pause + 20, WAIT).await;
    let takeover = paused_at.elapsed();
    let owner_after = redis_get(&cluster.redis, &lease_key(ROOM)).unwrap_or_default();
    assert!(owner_after.starts_with("node-2."), "the room is owned by a live node, not {owner_after:?}");
    let epoch_after: u64 =
        redis_get(&cluster.redis, &epoch_key(ROOM)).and_then(|e| e.parse().ok()).expect("an epoch");
    assert!(epoch_after > epoch_before, "the new owner's epoch grew ({epoch_before} -> {epoch_after}) (G1)");
    assert!(
        takeover >= LEASE / 2,
        "B's changes were acked again {takeover:?} after the owner froze: before its lease could expire (G1)"
    );
    let a_during = a_acked.load(Ordering::SeqCst);
    assert!(
        a_during - a_at_pause <= 4,
        "A (on the frozen node) got {} acks while it was frozen (at most its window may have been \
         in flight)",
        a_during - a_at_pause
    );

    // The frozen node has been paused for longer than its lease (takeover >= lease/2 was
    // checked above; the new owner exists). Wake it up: it must fence itself and move A on.
    cluster.nodes[0].sigcont();
    let woke_at = Instant::now();
    wait_progress("A's batches to be acked again after the old owner woke", &a_acked, a_during + 20, WAIT)
        .await;
    let a_moved_after = woke_at.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut a = join_task(a_task).await;
    let mut b = join_task(b_task).await;

    // A was closed with 4103 by the fenced old owner (its own silence timeout is 30 s).
    assert!(
        a.closes.iter().any(|c| c.code == 4103 && c.node == "node-1"),
        "A was moved on with 4103 by the old owner once it woke (closes: {:?}, after {a_moved_after:?})",
        a.closes
    );
    assert!(
        b.closes.iter().any(|c| c.code == 4103 && c.node == "node-2"),
        "B was closed with 4103 by its node once the lease expired (closes: {:?})",
        b.closes
    );
    for p in [&a, &b] {
        let last = p.joins.last().expect("joins");
        assert!(last.resumed, "{} resumed", p.name);
        let (epoch, _) = last.snapshot.expect("a resume into a new epoch comes with a snapshot");
        assert!(epoch > epoch_before, "{} resumed into a newer epoch ({epoch_before} -> {epoch})", p.name);
    }

    // The old owner is alive and a follower now: a fresh player joins through it.
    cluster.nodes[0].wait_readyz(200, WAIT).await;
    let mut fresh = Player::join("fresh", &urls[..1], ROOM, "doc").await;
    converge(&mut [&mut a, &mut b, &mut fresh], WAIT).await;
    for p in [&a, &b, &fresh] {
        eprintln!("{}", p.summary());
    }
    eprintln!("new owner acking {takeover:?} after the pause; A acked again {a_moved_after:?} after SIGCONT");
    check_final(&[&a, &b], &fresh);
    let compared = check_deltas_against_log(&cluster.redis, ROOM, &[&a, &b, &fresh], 0);
    assert!(compared > 40, "compared {compared} deltas with the log");
    let log1 = cluster.nodes[0].log();
    assert!(log1.contains("fenced"), "node-1 reports that it was fenced; its log:\n{log1}");
}

// ---------------------------------------------------------------------------------------------
// node cut off from Redis

/// Failure matrix "node cut off from Redis, players still connected": node-1 (the owner)
/// reaches Redis through a proxy that the test blackholes. node-1 turns unready within about
/// a lease, stops owning the room before its lease can expire, and its player moves to
/// node-2, which takes the room over; no acked change is lost. After the link heals, node-1
/// is ready again, its held writes are refused (fenced), and nothing diverges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_cut_off_from_redis_moves_its_players_and_loses_nothing() {
    if !have_redis() {
        return;
    }
    const ROOM: &str = "r-cut";
    let args = ["--lease-ttl-ms", "1000"];
    let redis = Redis::start().await;
    let proxy = TcpProxy::start(redis.addr()).await;
    let node1 = Node::start(&proxy.redis_url(), "node-1", &args).await;
    let node2 = Node::start(&redis.url(), "node-2", &args).await;
    let cluster = Cluster { nodes: vec![node1, node2], redis };
    let urls = urls(&cluster);

    // A on node-1 (the owner); on losing it, A resumes on node-2.
    let a = Player::join("A", &urls, ROOM, "doc").await;
    assert_eq!(a.node(), "node-1");
    let b = Player::join("B", &urls[1..], ROOM, "doc").await;
    assert_eq!(b.node(), "node-2");
    let epoch_before = a.mirror.epoch;

    let stop = Arc::new(AtomicBool::new(false));
    let pace = Duration::from_millis(15);
    let (a_acked, b_acked) = (a.progress(), b.progress());
    let a_task = stream_incs(a, &stop, pace);
    let b_task = stream_incs(b, &stop, pace);
    wait_progress("A to have 10 acked batches", &a_acked, 10, WAIT).await;
    wait_progress("B to have 10 acked batches", &b_acked, 10, WAIT).await;

    proxy.blackhole();
    let cut_at = Instant::now();
    // node-1 cannot renew: it reports itself unready within about a lease.
    cluster.nodes[0].wait_readyz(503, LEASE * 2 + Duration::from_millis(500)).await;
    let unready_after = cut_at.elapsed();
    assert_eq!(cluster.nodes[0].healthz().await, Some(200), "node-1 stays up");
    assert_eq!(cluster.nodes[1].readyz().await, Some(200), "node-2 is unaffected");

    // Both players end up served by node-2, which owns the room now, and changes go on.
    let (a_cut, b_cut) = (a_acked.load(Ordering::SeqCst), b_acked.load(Ordering::SeqCst));
    wait_progress("A's batches to be acked again (on node-2)", &a_acked, a_cut + 20, WAIT).await;
    wait_progress("B's batches to be acked again (on node-2)", &b_acked, b_cut + 20, WAIT).await;
    let owner = redis_get(&cluster.redis, &lease_key(ROOM)).unwrap_or_default();
    assert!(owner.starts_with("node-2."), "node-2 took the room over, lease: {owner:?}");

    // Heal: node-1's held commands reach Redis now; its writes must be refused.
    proxy.pass();
    cluster.nodes[0].wait_readyz(200, WAIT).await;
    // Let the streams run on a little across the heal, then stop.
    wait_progress("A to go on after the heal", &a_acked, a_acked.load(Ordering::SeqCst) + 10, WAIT).await;
    stop.store(true, Ordering::SeqCst);
    let mut a = join_task(a_task).await;
    let mut b = join_task(b_task).await;
    assert_eq!(a.node(), "node-2", "A resumed on node-2");
    assert!(
        a.closes.iter().any(|c| c.code == 4103 && c.node == "node-1"),
        "node-1 moved A on with 4103 (closes: {:?})",
        a.closes
    );
    let last = a.joins.last().expect("joins");
    let (epoch, _) = last.snapshot.expect("a resume into a new epoch comes with a snapshot");
    assert!(epoch > epoch_before, "node-2 owns the room with a newer epoch ({epoch_before} -> {epoch})");

    // A fresh player through the healed node-1 sees the same state.
    let mut fresh = Player::join("fresh", &urls[..1], ROOM, "doc").await;
    converge(&mut [&mut a, &mut b, &mut fresh], WAIT).await;
    for p in [&a, &b, &fresh] {
        eprintln!("{}", p.summary());
    }
    eprintln!("node-1 unready {unready_after:?} after the cut");
    check_final(&[&a, &b], &fresh);
    check_deltas_against_log(&cluster.redis, ROOM, &[&a, &b, &fresh], 0);
    drop(proxy);
}

// ---------------------------------------------------------------------------------------------
// rolling restart

/// A WebSocket client that joins `room` on the node at `port` (a tiny receive buffer), reads
/// until its `joined`, and then never reads again: once its socket buffers are full the node's
/// writer for it is stuck, as with a client on a dead mobile link.
async fn stalled_client(port: u16, room: &str) -> WebSocketStream<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(([127, 0, 0, 1], port).into()).await.expect("connect");
    let url = format!("ws://127.0.0.1:{port}/ws?room={room}");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.expect("upgrade");
    let hello = ClientMsg::Hello { v: 1, client: Some("cluster-test/stalled".into()) };
    let join = ClientMsg::Join(Join { room: room.into(), room_type: "doc".into(), ..Join::default() });
    for msg in [hello, join] {
        ws.send(Message::Binary(encode(&msg))).await.expect("send");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => {
                if let Ok(ServerMsg::Joined { .. }) = decode_server(&b) {
                    return ws;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("stalled client: no joined in {room}: {other:?}"),
        }
    }
}

/// Failure matrix "rolling restart of every node": three nodes, two rooms, six players
/// streaming changes; every node in turn gets SIGTERM (it turns unready at once, closes its
/// clients with 1012 and a `retry_ms` hint, hands its rooms off, exits within the drain
/// timeout), is started again on the same port, and serves again before the next one goes.
/// No player sees a close it cannot resume from; no acked change is lost or applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_traffic_loses_no_acked_op() {
    if !have_redis() {
        return;
    }
    const DRAIN_MS: u64 = 3000;
    const HINT_MS: u64 = 500;
    let (drain, hint) = (DRAIN_MS.to_string(), HINT_MS.to_string());
    let args = [
        "--lease-ttl-ms",
        "1000",
        "--drain-timeout-ms",
        drain.as_str(),
        "--reconnect-hint-ms",
        hint.as_str(),
    ];
    let mut cluster = Cluster::start(3, &args).await;
    let started = Instant::now();
    let rooms = ["r-roll-1", "r-roll-2"];

    // Room i is owned by node i (its first player joins there); every room has a player on
    // every node. Each player resumes at the next nodes in turn.
    let mut players = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        for k in 0..3 {
            let node = (r + k) % 3;
            let p = Player::join(&format!("{room}/p{node}"), &urls_from(&cluster, node), room, "doc").await;
            assert_eq!(p.node(), cluster.nodes[node].id());
            players.push(p);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let progress: Vec<_> = players.iter().map(Player::progress).collect();
    let tasks: Vec<_> =
        players.into_iter().map(|p| stream_incs(p, &stop, Duration::from_millis(30))).collect();
    for (i, p) in progress.iter().enumerate() {
        wait_progress(&format!("player {i} to have 5 acked batches"), p, 5, WAIT).await;
    }

    // Deviations that do not stop the scenario; reported (and failed on) at the end.
    let mut problems: Vec<String> = Vec::new();
    for i in 0..3 {
        let before: Vec<u64> = progress.iter().map(|p| p.load(Ordering::SeqCst)).collect();
        // node-1 drains with nothing holding it up (a fast drain); node-2 and node-3 with a
        // client that stopped reading and has megabytes queued: the drain must not wait for
        // it past --drain-timeout-ms (and lasts long enough to watch /readyz).
        let stall = if i == 0 {
            None
        } else {
            let stall_room = format!("r-stall-{i}");
            let stalled = stalled_client(cluster.nodes[i].port(), &stall_room).await;
            let mut writer = Player::join("W", &urls_from(&cluster, i), &stall_room, "doc").await;
            // More than the kernel buffers of the connection hold (net.ipv4.tcp_wmem max: 4 MB).
            let blob = "x".repeat(60_000);
            writer.stream(100, 4, WAIT, |_| vec![set("shared/blob", blob.as_str())]).await;
            Some((stalled, writer))
        };
        // The rooms this node owns: they must be handed off (lease released), not left to
        // expire.
        let prefix = format!("{}.", cluster.nodes[i].id());
        let owned: Vec<String> = ["r-roll-1", "r-roll-2", &format!("r-stall-{i}")]
            .into_iter()
            .filter(|room| {
                redis_get(&cluster.redis, &lease_key(room)).is_some_and(|l| l.starts_with(&prefix))
            })
            .map(str::to_owned)
            .collect();
        let node = &mut cluster.nodes[i];
        node.sigterm();
        let term_at = Instant::now();
        eprintln!("{}: SIGTERM at {:?}", node.id(), term_at.duration_since(started));
        // /readyz turns 503 at once (HAProxy stops sending players here) and keeps answering
        // 503 while the node drains: a refused probe while the process still runs means the
        // node stopped serving /readyz instead of reporting 503 (ARCHITECTURE.md, Shutdown).
        // Probed for 300 ms (or until the process is gone): 200 until the signal is handled,
        // then 503 only.
        let mut seen = Vec::new();
        let mut unready = None;
        loop {
            let code = node.readyz().await;
            let at = term_at.elapsed();
            seen.push((at.as_millis(), code));
            match code {
                Some(503) => {
                    unready.get_or_insert(at);
                }
                Some(200) if unready.is_none() => {
                    assert!(at < Duration::from_secs(1), "{}: /readyz still 200 1 s after SIGTERM", node.id())
                }
                Some(_) => {
                    problems.push(format!("{}: /readyz answered {code:?} after 503: {seen:?}", node.id()));
                    break;
                }
                None => {
                    // Refused. Fine once the process is gone (or going: closing its files
                    // and exiting take microseconds), not while it still drains.
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    if node.is_running() {
                        problems.push(format!(
                            "{}: after SIGTERM, while the node still ran (drained), /readyz refused the \
                             connection instead of answering 503; probes (ms after SIGTERM, status; \
                             None = refused): {seen:?}",
                            node.id()
                        ));
                    }
                    break;
                }
            }
            if unready.is_some() && at > Duration::from_millis(300) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Handed off: a lease renewed at most a third of the TTL before SIGTERM would expire
        // only 2/3 TTL after it; released leases are gone (or taken by another node) sooner.
        for room in &owned {
            let released = loop {
                let holder = redis_get(&cluster.redis, &lease_key(room));
                if !holder.as_deref().is_some_and(|l| l.starts_with(&prefix)) {
                    break true;
                }
                if term_at.elapsed() > LEASE / 2 {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            if !released {
                problems
                    .push(format!("{prefix}: {room} was not handed off within {:?} of SIGTERM", LEASE / 2));
            }
        }
        let node = &mut cluster.nodes[i];
        let status = node.wait(Duration::from_millis(DRAIN_MS) + Duration::from_millis(1500)).await;
        let exited = term_at.elapsed();
        let status = status.unwrap_or_else(|| {
            panic!("{} still runs {exited:?} after SIGTERM (--drain-timeout-ms {DRAIN_MS})", node.id())
        });
        assert!(status.success(), "{} exited with {status:?} after SIGTERM", node.id());
        eprintln!("{}: readyz 503 after {unready:?} (None: not seen), exited after {exited:?}", node.id());
        if let Some((stalled, writer)) = stall {
            drop(stalled);
            writer.abandon();
        }
        node.restart().await;
        node.wait_readyz(200, WAIT).await;
        // Every player is served again (wherever) and its changes go on, before the next node.
        for (k, p) in progress.iter().enumerate() {
            wait_progress(&format!("player {k} to go on after the restart"), p, before[k] + 5, WAIT).await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut players = Vec::new();
    for t in tasks {
        players.push(join_task(t).await);
    }

    for p in &players {
        eprintln!("{}", p.summary());
        assert!(p.reconnects >= 1, "{} was moved at least once", p.name);
        for c in &p.closes {
            match c.code {
                1012 => {
                    let hint: Option<u64> =
                        c.reason.split("retry_ms=").nth(1).and_then(|n| n.trim().parse().ok());
                    match hint {
                        Some(ms) if ms <= HINT_MS => {}
                        _ => problems.push(format!(
                            "{}: 1012 from {} without a retry_ms hint in 0..={HINT_MS}: {:?}",
                            p.name, c.node, c.reason
                        )),
                    }
                }
                4103 => {}
                // Resumable, but not a graceful drain: the client got no close frame (and no
                // retry hint).
                _ => problems.push(format!(
                    "{}: connection to {} ended with {} {:?} {:?} after the test started, not with \
                     1012 (drain) or 4103 (room handed off)",
                    p.name,
                    c.node,
                    c.code,
                    c.reason,
                    c.at.duration_since(started)
                )),
            }
        }
    }
    assert!(
        players.iter().flat_map(|p| &p.closes).any(|c| c.code == 1012),
        "some players were closed with 1012 by a draining node"
    );
    for (r, room) in rooms.iter().enumerate() {
        let mut fresh = Player::join(&format!("{room}/fresh"), &urls(&cluster), room, "doc").await;
        let mut group: Vec<&mut Player> = players[r * 3..r * 3 + 3].iter_mut().collect();
        group.push(&mut fresh);
        converge(&mut group, WAIT).await;
        let group: Vec<&Player> = players[r * 3..r * 3 + 3].iter().collect();
        check_final(&group, &fresh);
        let mut all = group.clone();
        all.push(&fresh);
        check_deltas_against_log(&cluster.redis, room, &all, 0);
    }
    assert!(problems.is_empty(), "rolling restart:\n  {}", problems.join("\n  "));
}

// ---------------------------------------------------------------------------------------------
// Redis unreachable, then back empty

/// Failure matrix "Redis unreachable for seconds" and "Redis comes back empty" (the test
/// Redis has no persistence): Redis is killed for about 2 s. Nodes stay up (healthz 200),
/// turn unready, and ack nothing meanwhile (an ack then could not be durable). Redis comes
/// back empty on the same port: the nodes recover by themselves (ready again), players resume
/// into a newer epoch with a snapshot (never a reused seq as a delta), and changes are acked
/// again, each of them durable (in the final state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_then_back_refuses_changes_and_recovers() {
    if !have_redis() {
        return;
    }
    const ROOM: &str = "r-redis";
    let mut cluster = Cluster::start(2, &["--lease-ttl-ms", "1000"]).await;
    let urls = urls(&cluster);
    let mut a = Player::join("A", &urls, ROOM, "doc").await;
    let mut b = Player::join("B", &urls_from(&cluster, 1), ROOM, "doc").await;
    assert_eq!((a.node(), b.node()), ("node-1", "node-2"));
    for p in [&mut a, &mut b] {
        p.reconnect_timeout = Duration::from_secs(20);
        // Redis comes back empty and the room is stopped meanwhile (the outage is longer than
        // 2/3 of the lease): the room restarts from nothing and may have forgotten its
        // players (ARCHITECTURE.md, Known limits). They then join afresh.
        p.rejoin_when_expired = true;
    }
    let epoch_before = a.mirror.epoch;

    // Every batch increments the counter and sets a marker of its own (player name + cid).
    let marked = |name: &str| {
        let name = name.to_owned();
        move |cid: u64| vec![inc(COUNT, 1), set(&format!("shared/marks/{name}-{cid}"), 1)]
    };
    let stop = Arc::new(AtomicBool::new(false));
    let pace = Duration::from_millis(20);
    let (a_acked, b_acked) = (a.progress(), b.progress());
    let spawn = |mut p: Player, stop: Arc<AtomicBool>| {
        let make = marked(&p.name);
        tokio::spawn(async move {
            p.stream_until(&stop, 4, pace, Duration::from_secs(90), make).await;
            p
        })
    };
    let a_task = spawn(a, stop.clone());
    let b_task = spawn(b, stop.clone());
    wait_progress("A to have 10 acked batches", &a_acked, 10, WAIT).await;
    wait_progress("B to have 10 acked batches", &b_acked, 10, WAIT).await;

    cluster.redis.kill();
    let killed_at = Instant::now();
    for node in &cluster.nodes {
        node.wait_readyz(503, LEASE * 3).await;
    }
    // The outage lasts about 2 s of real time (this sleep is the outage, not a wait for an
    // event); meanwhile the nodes must stay alive.
    while killed_at.elapsed() < Duration::from_secs(2) {
        for node in &cluster.nodes {
            assert_eq!(node.healthz().await, Some(200), "{} stays up while Redis is down", node.id());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.redis.restart().await;
    let back_at = Instant::now();

    // The nodes recover by themselves.
    for node in &cluster.nodes {
        node.wait_readyz(200, WAIT).await;
    }
    let recovered_after = back_at.elapsed();
    // Changes are acked again.
    let (a_back, b_back) = (a_acked.load(Ordering::SeqCst), b_acked.load(Ordering::SeqCst));
    wait_progress("A's batches to be acked again", &a_acked, a_back + 10, WAIT).await;
    wait_progress("B's batches to be acked again", &b_acked, b_back + 10, WAIT).await;
    stop.store(true, Ordering::SeqCst);
    let mut a = join_task(a_task).await;
    let mut b = join_task(b_task).await;
    let mut fresh = Player::join("fresh", &urls, ROOM, "doc").await;
    converge(&mut [&mut a, &mut b, &mut fresh], WAIT).await;
    for p in [&a, &b, &fresh] {
        eprintln!("{}", p.summary());
    }
    eprintln!("nodes ready again {recovered_after:?} after Redis came back");
    for p in [&a, &b] {
        let lost =
            p.acked.keys().filter(|c| fresh.mirror.get(&format!("shared/marks/{}-{c}", p.name)).is_none());
        eprintln!(
            "{}: sessions expired by the reset: {:?}; acked batches lost with Redis's data \
             (documented for Redis without persistence): {}",
            p.name,
            p.expired.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            lost.count()
        );
    }

    // Nothing was acked while Redis was down (an ack in flight at the kill may arrive just
    // after it: 100 ms of slack).
    let outage = (killed_at + Duration::from_millis(100), back_at);
    for p in [&a, &b] {
        let during: Vec<u64> =
            p.acked_at.iter().filter(|(_, t)| **t > outage.0 && **t < outage.1).map(|(c, _)| *c).collect();
        assert!(during.is_empty(), "{}: cids {during:?} were acked while Redis was down (G2)", p.name);
    }
    // Acked after Redis came back means durable: each such batch's marker is in the state.
    for p in [&a, &b] {
        assert!(p.rejected.is_empty(), "{}'s batches refused for good: {:?}", p.name, p.rejected);
        for (cid, at) in &p.acked_at {
            if *at > back_at {
                let mark = format!("shared/marks/{}-{cid}", p.name);
                assert_eq!(
                    fresh.mirror.get(&mark),
                    Some(&Doc::Int(1)),
                    "{}: cid {cid}, acked after Redis came back, is not in the state (G2)",
                    p.name
                );
            }
        }
    }
    // Resumes across the reset came with snapshots of a newer epoch; epochs never went back.
    for p in [&a, &b] {
        let after: Vec<_> = p.joins.iter().filter(|j| j.at > killed_at).collect();
        assert!(!after.is_empty(), "{} resumed after the outage", p.name);
        for j in after {
            let (epoch, _) = j.snapshot.unwrap_or_else(|| {
                panic!("{}: resume on {} from {:?} served with deltas", p.name, j.node, j.from)
            });
            assert!(epoch > epoch_before, "{}: epoch went from {epoch_before} to {epoch}", p.name);
        }
        let epochs: Vec<u64> = p.joins.iter().filter_map(|j| j.snapshot.map(|s| s.0)).collect();
        assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "{}: epochs went backwards: {epochs:?}", p.name);
    }
    assert_eq!(a.mirror.hash(), fresh.mirror.hash());
    assert_eq!(b.mirror.hash(), fresh.mirror.hash());
    // What clients applied in the epochs after the reset is exactly what Redis holds.
    let reset_epoch = [&a, &b]
        .iter()
        .flat_map(|p| &p.joins)
        .filter(|j| j.at > back_at)
        .filter_map(|j| j.snapshot.map(|s| s.0))
        .min()
        .expect("joins after Redis came back");
    check_deltas_against_log(&cluster.redis, ROOM, &[&a, &b, &fresh], reset_epoch);
}

// ---------------------------------------------------------------------------------------------
// exactly once across a failover

/// G4 across a failover: A's batches are acked by node-1; node-1 is killed (-9); A resumes on
/// node-2, which restores the room, and retries cids it already had acked (the latest and an
/// older one): each gets `ack` with its original seq, and nothing is applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_cid_after_failover_gets_its_original_ack() {
    if !have_redis() {
        return;
    }
    const ROOM: &str = "r-retry";
    let mut cluster = Cluster::start(2, &["--lease-ttl-ms", "1000"]).await;
    let urls = urls(&cluster);
    let mut a = Player::join("A", &urls, ROOM, "doc").await;
    let mut b = Player::join("B", &urls[1..], ROOM, "doc").await;
    assert_eq!((a.node(), b.node()), ("node-1", "node-2"));
    let mut cids = Vec::new();
    for _ in 0..5 {
        cids.push(a.send(vec![inc(COUNT, 1)]).await);
    }
    a.settle_all(WAIT).await;
    converge(&mut [&mut a, &mut b], WAIT).await;
    assert_eq!(a.mirror.int(COUNT), 5);
    let (old_cid, last_cid) = (cids[1], cids[4]);
    let (old_seq, last_seq) = (a.acked[&old_cid], a.acked[&last_cid]);
    let epoch_before = a.mirror.epoch;

    cluster.nodes[0].kill9();
    // A notices, resumes at node-2 (its next URL), which claims the room once the lease expires.
    a.wait_until("A to resume on node-2", WAIT * 2, |p| p.is_connected() && p.node() == "node-2").await;
    assert!(a.mirror.epoch > epoch_before, "A resumed into the new owner's epoch");

    a.send_untracked(last_cid, vec![inc(COUNT, 1)]).await;
    a.send_untracked(old_cid, vec![inc(COUNT, 1)]).await;
    a.wait_until("acks for both retried cids", WAIT, |p| {
        [last_cid, old_cid].iter().all(|c| p.acks.iter().any(|(cid, _)| cid == c))
    })
    .await;
    let ack_of = |cid: u64| a.acks.iter().find(|(c, _)| *c == cid).map(|(_, s)| *s);
    assert_eq!(ack_of(last_cid), Some(last_seq), "retry of cid {last_cid}: its original seq (G4)");
    assert_eq!(ack_of(old_cid), Some(old_seq), "retry of cid {old_cid}: its original seq (G4)");

    // One more new batch, so the retries would have had their chance to show up as deltas.
    a.send(vec![inc(COUNT, 1)]).await;
    a.settle_all(WAIT).await;
    let mut fresh = Player::join("fresh", &urls[1..], ROOM, "doc").await;
    converge(&mut [&mut a, &mut b, &mut fresh], Duration::from_secs(30)).await;
    for p in [&a, &b, &fresh] {
        eprintln!("{}", p.summary());
    }
    assert_eq!(fresh.mirror.int(COUNT), 6, "the retries applied nothing (G4)");
    let reapplied: Vec<_> = [&a, &b, &fresh]
        .iter()
        .flat_map(|p| p.deltas.values())
        .filter(|d| d.epoch > epoch_before && d.by.as_deref() == Some(&a.player_id))
        .filter(|d| d.cid == Some(old_cid) || d.cid == Some(last_cid))
        .map(|d| (d.epoch, d.seq, d.cid))
        .collect();
    assert!(reapplied.is_empty(), "retried cids were applied again: {reapplied:?}");
    assert_eq!(a.mirror.hash(), fresh.mirror.hash());
    assert_eq!(b.mirror.hash(), fresh.mirror.hash());
    check_deltas_against_log(&cluster.redis, ROOM, &[&a, &b, &fresh], 0);
}

// ---------------------------------------------------------------------------------------------
// a session taken over from another node

/// Failure matrix "a session taken over by a new connection", across nodes: a player's
/// session is resumed by a second connection on another node while the first is still open;
/// the first is closed with 4000 `replaced`, and the second speaks for the player. Played for
/// the three places the two connections can be relative to the room's owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_taken_over_on_another_node_closes_the_first_with_replaced() {
    if !have_redis() {
        return;
    }
    let cluster = Cluster::start(3, &["--lease-ttl-ms", "1000"]).await;
    let urls = urls(&cluster);
    // (room, owner node, first connection's node, second connection's node)
    let cases = [
        ("r-replace-owner-first", 0, 0, 1), // first local at the owner, second remote
        ("r-replace-owner-second", 1, 0, 1), // first remote, second local at the owner
        ("r-replace-neither", 2, 0, 1),     // both remote
    ];
    for (room, owner, first, second) in cases {
        let mut o = Player::join("O", &urls[owner..=owner], room, "doc").await;
        assert_eq!(o.node(), cluster.nodes[owner].id(), "{room}: O's join made the owner");
        let mut a = Player::join("A", &urls[first..=first], room, "doc").await;
        assert_eq!(a.node(), cluster.nodes[first].id());
        a.send(vec![inc(COUNT, 1)]).await;
        a.settle_all(WAIT).await;
        converge(&mut [&mut o, &mut a], WAIT).await;

        let mut a2 = a.resume_elsewhere("A2", &urls[second]).await;
        assert_eq!(a2.node(), cluster.nodes[second].id());
        assert_eq!(a2.player_id, a.player_id, "{room}: same player");
        let (code, reason) = a.until_closed(WAIT).await;
        assert_eq!(code, 4000, "{room}: the first connection is closed as replaced ({reason:?})");
        assert!(reason.starts_with("replaced"), "{room}: close reason {reason:?}");

        // The new connection speaks for the player; the room goes on.
        let own = format!("players/{}/device", a2.player_id);
        a2.send(vec![inc(COUNT, 1), set(&own, "second")]).await;
        a2.settle_all(WAIT).await;
        let mut fresh = Player::join("fresh", &urls[second..=second], room, "doc").await;
        converge(&mut [&mut o, &mut a2, &mut fresh], WAIT).await;
        assert_eq!(fresh.mirror.int(COUNT), 2, "{room}");
        assert_eq!(o.mirror.get(&own), Some(&Doc::from("second")), "{room}");
        assert_eq!(o.mirror.hash(), fresh.mirror.hash(), "{room}");
        assert_eq!(a2.mirror.hash(), fresh.mirror.hash(), "{room}");
        assert!(o.closes.is_empty(), "{room}: O was not disturbed: {:?}", o.closes);
    }
}

/// Failure matrix "Redis comes back empty", the case the owner can repair (ARCHITECTURE.md,
/// Known limits: `reseed`): Redis restarts empty while the room is quiet. The owner notices at
/// its next renewal (its lease and epoch are gone), writes the room back under a newer epoch,
/// and moves every member to it (a `resync`, or 4103 + a resume with a snapshot). No player
/// loses its session, no acked change is lost, epochs move forward, and changes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_is_reseeded_by_its_owner() {
    if !have_redis() {
        return;
    }
    const ROOM: &str = "r-reseed";
    let mut cluster = Cluster::start(2, &["--lease-ttl-ms", "1000"]).await;
    let urls = urls(&cluster);
    let mut a = Player::join("A", &urls, ROOM, "doc").await;
    let mut b = Player::join("B", &urls_from(&cluster, 1), ROOM, "doc").await;
    assert_eq!((a.node(), b.node()), ("node-1", "node-2"));
    for _ in 0..10 {
        a.send(vec![inc(COUNT, 1)]).await;
        b.send(vec![inc(COUNT, 1)]).await;
    }
    a.settle_all(WAIT).await;
    b.settle_all(WAIT).await;
    let (epoch_before, _) = converge(&mut [&mut a, &mut b], WAIT).await;
    assert_eq!(a.mirror.int(COUNT), 20);

    // Redis restarts empty (no persistence); the outage lasts as long as it takes to start.
    cluster.redis.restart().await;
    let back_at = Instant::now();
    // Both players end up in a newer epoch, as the same players, with the state they had.
    for p in [&mut a, &mut b] {
        p.wait_until("a newer epoch after Redis restarted empty", WAIT, |p| {
            p.is_connected() && p.mirror.epoch > epoch_before
        })
        .await;
    }
    let moved_after = back_at.elapsed();
    let owner = redis_get(&cluster.redis, &lease_key(ROOM)).unwrap_or_default();
    assert!(owner.starts_with("node-1."), "the owner re-seeded its room (lease {owner:?})");
    for p in [&a, &b] {
        assert_eq!(p.mirror.int(COUNT), 20, "{}: the acked changes survived the reset (re-seeded)", p.name);
    }
    for _ in 0..5 {
        a.send(vec![inc(COUNT, 1)]).await;
        b.send(vec![inc(COUNT, 1)]).await;
    }
    a.settle_all(WAIT).await;
    b.settle_all(WAIT).await;
    let mut fresh = Player::join("fresh", &urls_from(&cluster, 1), ROOM, "doc").await;
    converge(&mut [&mut a, &mut b, &mut fresh], WAIT).await;
    for p in [&a, &b, &fresh] {
        eprintln!("{}", p.summary());
    }
    eprintln!("players in the new epoch {moved_after:?} after Redis came back");
    check_final(&[&a, &b], &fresh);
    assert!(fresh.mirror.epoch > epoch_before);
    check_deltas_against_log(&cluster.redis, ROOM, &[&a, &b, &fresh], 0);
}
