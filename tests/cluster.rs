//! Cluster mode with real processes: a private redis-server, several `gamerelay` nodes (the
//! binary cargo built for the tests), HAProxy where routing matters, and players connected
//! to chosen nodes. Each test starts its own processes on free loopback ports and never uses
//! a Redis that happens to run on the machine. Test names say the guarantee of DESIGN.md they
//! check (G1-G6) or the failure-matrix row they play.
//!
//! Needs `redis-server` (and `haproxy` + `openssl` for the HAProxy tests) on PATH; without them
//! a test prints SKIPPED and passes, unless GAMERELAY_REQUIRE_CLUSTER_TOOLS=1 (scripts/test).
//! Support code: tests/support/cluster.rs (processes), tests/support/player.rs (client).
#![cfg(feature = "server")]

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gamerelay_client::protocol::{Doc, Op};
use gamerelay_client::{Client, ClientConfig};
use support::cluster::{http_status, tools_available, wait_for, Cluster, Haproxy, Redis, TcpProxy, Tool};
use support::player::{converge, inc, set, Player};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Longest wait for any one expected event.
const WAIT: Duration = Duration::from_secs(15);
/// The shared counter every test increments.
const COUNT: &str = "shared/count";

fn have_redis() -> bool {
    tools_available(&[Tool::RedisServer])
}

fn urls(cluster: &Cluster) -> Vec<String> {
    cluster.nodes.iter().map(|n| n.url()).collect()
}

/// Awaits a task that owns a player, re-raising its panic (with the player's trace) here.
async fn join_task<T>(task: JoinHandle<T>) -> T {
    match task.await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task failed: {e}"),
    }
}

fn inc_op(path: &str) -> Op {
    Op::Inc { path: path.into(), by: Doc::Int(1) }
}

// ---------------------------------------------------------------------------------------------
// the contract across nodes

/// G3 + G6 across nodes: one room, one player per node, each player's ops forwarded to the
/// owner; everyone sees one delta sequence and ends with the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_on_different_nodes_see_one_delta_sequence() {
    if !have_redis() {
        return;
    }
    let cluster = Cluster::start(3, &[]).await;
    let mut clients = Vec::new();
    for node in &cluster.nodes {
        let client = Client::connect(ClientConfig::new(node.url(), "r1", "doc"))
            .await
            .unwrap_or_else(|e| panic!("join r1 on {}: {e}", node.id()));
        clients.push(Arc::new(client));
    }

    let mut senders = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let client = client.clone();
        senders.push(tokio::spawn(async move {
            for n in 1..=20 {
                let ticket = client
                    .send_ops_tracked(vec![inc_op(COUNT)])
                    .await
                    .unwrap_or_else(|e| panic!("client {i}: send {n}: {e}"));
                tokio::time::timeout(WAIT, ticket.acked())
                    .await
                    .unwrap_or_else(|_| panic!("client {i}: no ack for batch {n} within {WAIT:?}"))
                    .unwrap_or_else(|e| panic!("client {i}: batch {n} failed: {e}"));
            }
        }));
    }
    for s in senders {
        join_task(s).await;
    }

    let all = &clients;
    wait_for("every mirror at count 60 and one seq", WAIT, || async move {
        let seq = all[0].seq();
        all.iter().all(|c| c.get(COUNT) == Some(Doc::Int(60)) && c.seq() == seq).then_some(())
    })
    .await;
    let first = &clients[0];
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(c.epoch(), first.epoch(), "client {i} epoch");
        assert_eq!(c.seq(), first.seq(), "client {i} seq");
        assert_eq!(c.state_hash(), first.state_hash(), "client {i} state hash");
    }

    // A player joining now, on another node than the first, gets that same state.
    let fresh =
        Client::connect(ClientConfig::new(cluster.nodes[1].url(), "r1", "doc")).await.expect("a fresh join");
    assert_eq!(fresh.get(COUNT), Some(Doc::Int(60)));
    assert_eq!(fresh.state_hash(), first.state_hash(), "fresh joiner's snapshot");
    for c in &clients {
        c.close().await;
    }
    fresh.close().await;
}

/// Failure matrix "node kill -9" with G2 + G4: the owner dies mid-stream; its player resumes
/// on another node and re-sends what was not acked; in the end the counter equals exactly the
/// number of acked increments (none lost, none applied twice) and every mirror equals a fresh
/// joiner's snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_kill9_loses_no_acked_op_and_applies_none_twice() {
    if !have_redis() {
        return;
    }
    const PER_PLAYER: usize = 300;
    let mut cluster = Cluster::start(3, &["--lease-ttl-ms", "1000"]).await;
    let urls = urls(&cluster);

    // A joins first, on node-1, which therefore owns the room. On losing node-1, A resumes at
    // the next URL of its list (node-2, then node-3).
    let a = Player::join("A", &urls, "r-kill", "doc").await;
    assert_eq!(a.node(), "node-1");
    let b = Player::join("B", &urls[1..], "r-kill", "doc").await;
    assert_eq!(b.node(), "node-2");
    let epoch_before = a.mirror.epoch;

    let a_acked = a.progress();
    let stream = |mut p: Player| {
        tokio::spawn(async move {
            p.stream(PER_PLAYER, 4, Duration::from_secs(120), |_| vec![inc(COUNT, 1)]).await;
            p
        })
    };
    let a_task = stream(a);
    let b_task = stream(b);

    // Kill the owner once A is well into its stream.
    let progress = &a_acked;
    wait_for("A to have 40 acked batches", WAIT, || async move {
        (progress.load(Ordering::SeqCst) >= 40).then_some(())
    })
    .await;
    cluster.nodes[0].kill9();

    let mut a = join_task(a_task).await;
    let mut b = join_task(b_task).await;
    assert!(a.reconnects >= 1, "A lost node-1 mid-stream and resumed");
    assert_ne!(a.node(), "node-1");

    let mut c = Player::join("C", &urls[2..], "r-kill", "doc").await;
    let (epoch, _seq) = converge(&mut [&mut a, &mut b, &mut c], WAIT).await;
    for p in [&a, &b, &c] {
        eprintln!("{}", p.summary());
    }

    assert!(a.rejected.is_empty(), "A's batches refused for good: {:?}", a.rejected);
    assert!(b.rejected.is_empty(), "B's batches refused for good: {:?}", b.rejected);
    let acked = a.acked.len() + b.acked.len();
    assert_eq!(acked, 2 * PER_PLAYER, "every batch was acked in the end");
    assert_eq!(
        c.mirror.int(COUNT),
        acked as i64,
        "the counter equals the acked increments: none lost (G2), none applied twice (G4)"
    );
    assert!(
        epoch > epoch_before,
        "the new owner took the room with a higher epoch ({epoch_before} -> {epoch}) (G1)"
    );
    assert_eq!(a.mirror.hash(), c.mirror.hash(), "A converged (G6)");
    assert_eq!(b.mirror.hash(), c.mirror.hash(), "B converged (G6)");
}

/// Failure-matrix row "client drops and returns within grace", across nodes (G5): A drops,
/// B keeps changing the room, A resumes on another node with its session and (epoch, seq):
/// same player, exactly the missed deltas (or a snapshot), and it converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_a_different_node_after_a_drop() {
    if !have_redis() {
        return;
    }
    let cluster = Cluster::start(3, &[]).await;
    let urls = urls(&cluster);
    let mut a = Player::join("A", &urls, "r-resume", "doc").await;
    let mut b = Player::join("B", &urls[2..], "r-resume", "doc").await;
    assert_eq!((a.node(), b.node()), ("node-1", "node-3"));

    let name = format!("players/{}/name", a.player_id);
    a.send(vec![set(&name, "ann"), inc(COUNT, 1)]).await;
    a.send(vec![inc(COUNT, 1)]).await;
    a.settle_all(WAIT).await;
    converge(&mut [&mut a, &mut b], WAIT).await;
    let player = a.player_id.clone();

    a.drop_connection();
    b.stream(10, 2, WAIT, |i| vec![inc(COUNT, 1), set("shared/last", i as i32)]).await;

    a.resume_at(1).await;
    assert_eq!(a.node(), "node-2");
    assert_eq!(a.player_id, player, "same player after the resume");
    assert_eq!(a.last_joined_cid, 2, "joined.cid is A's highest applied cid");
    let (_epoch, seq) = converge(&mut [&mut a, &mut b], WAIT).await;
    assert_eq!(
        a.history_breaks, 0,
        "the resume gave exactly the missed deltas or a snapshot, never a gap (G5)"
    );
    assert_eq!(a.mirror.int(COUNT), 12);
    assert_eq!(a.mirror.get("shared/last"), Some(&Doc::Int(9)));
    assert_eq!(a.mirror.hash(), b.mirror.hash());
    assert!(seq >= 12);

    // Still the same player: it writes its own subtree from node-2, and B sees it.
    a.send(vec![set(&name, "ann-2")]).await;
    a.settle_all(WAIT).await;
    let mut c = Player::join("C", &urls[..1], "r-resume", "doc").await;
    converge(&mut [&mut a, &mut b, &mut c], WAIT).await;
    assert_eq!(b.mirror.get(&name), Some(&Doc::from("ann-2")));
    assert_eq!(a.mirror.hash(), c.mirror.hash(), "fresh joiner's snapshot");
    assert_eq!(b.mirror.hash(), c.mirror.hash(), "fresh joiner's snapshot");
}

/// G5 after a failover, for a player that never changed anything: its session must survive
/// the owner's death as well as that of a player with applied ops does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn player_without_ops_resumes_after_owner_kill9() {
    if !have_redis() {
        return;
    }
    let mut cluster = Cluster::start(2, &["--lease-ttl-ms", "1000"]).await;
    let urls = urls(&cluster);
    let mut quiet = Player::join("quiet", &urls, "r-quiet", "doc").await;
    let mut busy = Player::join("busy", &urls, "r-quiet", "doc").await;
    assert_eq!((quiet.node(), busy.node()), ("node-1", "node-1"));
    busy.send(vec![inc(COUNT, 1)]).await;
    busy.settle_all(WAIT).await;
    converge(&mut [&mut quiet, &mut busy], WAIT).await;

    cluster.nodes[0].kill9();
    // Both lose node-1 and resume at node-2 (the next URL), which takes the room over.
    busy.send(vec![inc(COUNT, 1)]).await;
    busy.settle_all(Duration::from_secs(30)).await;
    converge(&mut [&mut quiet, &mut busy], Duration::from_secs(30)).await;
    assert_eq!((quiet.node(), busy.node()), ("node-2", "node-2"));
    assert_eq!(quiet.mirror.int(COUNT), 2);
    assert_eq!(quiet.mirror.hash(), busy.mirror.hash());
}

// ---------------------------------------------------------------------------------------------
// HAProxy in front

/// The public frontend routes by the `room` parameter (consistent hashing), answers its own
/// /healthz, refuses operator paths, and routes around a dead node; the operator frontend
/// serves HAProxy's metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_routes_rooms_consistently_and_hides_operator_endpoints() {
    if !have_redis() || !Haproxy::available() {
        return;
    }
    let mut cluster = Cluster::start(3, &[]).await;
    let nodes: Vec<&_> = cluster.nodes.iter().collect();
    let hap = Haproxy::start(&nodes).await;
    let public = hap.ws_port();

    assert_eq!(http_status(public, "/healthz").await, Some(200));
    for path in ["/metrics", "/readyz", "/admin", "/stats"] {
        assert_eq!(http_status(public, path).await, Some(403), "public {path}");
    }
    assert_eq!(http_status(public, "/anything").await, Some(404));
    // The public room listing goes through (to any node).
    let listing = support::cluster::http_get(public, "/rooms?type=doc").await;
    assert!(
        listing.as_ref().is_some_and(|(code, body)| *code == 200 && body.contains("\"rooms\"")),
        "{listing:?}"
    );
    assert_eq!(http_status(hap.ops_port(), "/metrics").await, Some(200));

    // Players of one room land on one node.
    let via_haproxy = vec![hap.ws_url()];
    let mut a = Player::join("A", &via_haproxy, "r-route", "doc").await;
    let mut b = Player::join("B", &via_haproxy, "r-route", "doc").await;
    let home = a.node().to_owned();
    assert_eq!(b.node(), home, "one room, one node");
    a.send(vec![inc(COUNT, 1)]).await;
    a.settle_all(WAIT).await;
    converge(&mut [&mut a, &mut b], WAIT).await;

    // Its node dies: HAProxy notices, and both resume through it elsewhere.
    let idx = cluster.nodes.iter().position(|n| n.id() == home).expect("home node");
    cluster.nodes[idx].kill9();
    hap.wait_server(&home, "DOWN", WAIT).await;
    b.send(vec![inc(COUNT, 1)]).await;
    b.settle_all(Duration::from_secs(30)).await;
    converge(&mut [&mut a, &mut b], Duration::from_secs(30)).await;
    assert_ne!(a.node(), home);
    assert_eq!(a.node(), b.node(), "still one room, one node");
    assert_eq!(a.mirror.int(COUNT), 2);
}

// ---------------------------------------------------------------------------------------------
// the harness itself (runs without the cluster code: only redis-server is needed)

/// One raw RESP connection through the proxy.
async fn resp_ping(conn: &mut TcpStream, within: Duration) -> Result<String, String> {
    conn.write_all(b"PING\r\n").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, conn.read(&mut buf)).await {
        Err(_) => Err("no answer".into()),
        Ok(Ok(0)) => Err("closed".into()),
        Ok(Ok(n)) => Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_tcp_proxy_passes_stalls_resets_and_refuses() {
    if !have_redis() {
        return;
    }
    let mut redis = Redis::start().await;
    assert!(redis.ping());
    let proxy = TcpProxy::start(redis.addr()).await;
    let mut conn = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(resp_ping(&mut conn, WAIT).await.as_deref(), Ok("+PONG"));

    // Blackhole: nothing goes through, and the connection stays open ...
    proxy.blackhole();
    assert_eq!(resp_ping(&mut conn, Duration::from_millis(300)).await, Err("no answer".into()));
    // ... until the link heals: the held PING is delivered and answered.
    proxy.pass();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, conn.read(&mut buf))
        .await
        .expect("the held PING is answered")
        .expect("read");
    assert_eq!(&buf[..n], b"+PONG\r\n");

    // reset_all closes open connections.
    proxy.reset_all();
    let mut closed = false;
    for _ in 0..3 {
        if resp_ping(&mut conn, WAIT).await.is_err() {
            closed = true;
            break;
        }
    }
    assert!(closed, "reset_all closes the connection");

    // refuse: new connections are reset at once (on loopback the reset may even beat the
    // end of connect()).
    proxy.refuse();
    if let Ok(mut conn) = TcpStream::connect(proxy.addr()).await {
        assert!(resp_ping(&mut conn, WAIT).await.is_err(), "a refused connection gets no answer");
    }
    proxy.pass();
    let mut conn = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(resp_ping(&mut conn, WAIT).await.as_deref(), Ok("+PONG"));

    // Redis restarts on the same port (empty, no persistence).
    redis.cmd(&["SET", "k", "v"]);
    redis.kill();
    assert!(!redis.ping());
    redis.restart().await;
    assert_eq!(redis.cmd(&["DBSIZE"]), support::cluster::Resp::Int(0));
    let mut conn = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(resp_ping(&mut conn, WAIT).await.as_deref(), Ok("+PONG"));
}

/// Volatile paths (the arena's positions): moves are sequenced and fanned out across nodes
/// like any change, but never written to the durable log; durable changes (a player's
/// arrival) are. After the owner is killed, the room comes back from Redis with every
/// durable change, its seq line never goes back, and everyone converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_moves_skip_the_log_and_the_room_survives_its_owner() {
    if !have_redis() {
        return;
    }
    let mut cluster = Cluster::start(2, &["--lease-ttl-ms", "1000"]).await;
    let urls = urls(&cluster);
    let room = "r-arena";
    let mut a = Player::join("A", &urls[..1], room, "arena").await;
    let mut b = Player::join("B", &urls[1..], room, "arena").await;
    assert_eq!(a.node(), "node-1", "A's node owns the room");
    let log = format!("gr:{{{room}}}:log");
    let logged_before = cluster.redis.cmd(&["XLEN", &log]);

    // B (on the other node) moves in small steps: each move is a volatile delta.
    let me = b.player_id.clone();
    let mut step = 0.0f64;
    b.stream(40, 4, WAIT, |_| {
        step += 1.0;
        vec![set(&format!("players/{me}/x"), Doc::Float(100.5 + step))]
    })
    .await;
    assert_eq!(b.acked.len(), 40, "every move was acknowledged");
    converge(&mut [&mut a, &mut b], WAIT).await;
    assert_eq!(
        cluster.redis.cmd(&["XLEN", &log]),
        logged_before,
        "volatile moves are not written to the log"
    );
    let seq_before = a.mirror.seq;

    // The owner dies: the room comes back on node-2 from the durable state.
    a.abandon();
    cluster.nodes[0].kill9();
    let mut c = Player::join("C", &urls[1..], room, "arena").await;
    assert!(c.mirror.seq >= cluster_head(&cluster, room), "the seq line continues from the durable head");
    assert!(c.mirror.get(&format!("players/{me}")).is_some(), "B's arrival (durable) survived");
    let (_, seq) = converge(&mut [&mut b, &mut c], WAIT).await;
    assert!(
        seq >= seq_before.min(cluster_head(&cluster, room)),
        "the seq line never goes back below the durable head"
    );
    assert_eq!(b.mirror.hash(), c.mirror.hash());
}

/// The durable head of a room as Redis has it.
fn cluster_head(cluster: &Cluster, room: &str) -> u64 {
    cluster
        .redis
        .cmd(&["GET", &format!("gr:{{{room}}}:head")])
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Redis over TLS (`rediss://`) with a password: a node trusts the CA given with
/// `--redis-ca-file`, authenticates, and serves a room whose changes land in that Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_uses_redis_over_tls_with_a_password() {
    if !tools_available(&[Tool::RedisServer, Tool::Openssl]) {
        return;
    }
    // A test CA and a server certificate for 127.0.0.1 signed by it.
    let dir = support::redis_cluster::test_certificates();
    let port = support::cluster::free_port();
    let mut redis = std::process::Command::new("redis-server")
        .args(["--port", "0", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no", "--requirepass", "s3cret-pw"])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.pem",
        ])
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start redis-server with TLS");
    struct KillOnDrop<'a>(&'a mut std::process::Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _redis = KillOnDrop(&mut redis);
    wait_for("the TLS port to listen", WAIT, || async move {
        TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
    })
    .await;

    let url = format!("rediss://:s3cret-pw@127.0.0.1:{port}");
    let ca = dir.join("ca.pem");
    let node = support::cluster::Node::start(
        &url,
        "node-tls",
        &["--redis-ca-file", ca.to_str().expect("utf-8 path")],
    )
    .await;
    let mut p = Player::join("P", &[node.url()], "r-tls", "doc").await;
    p.stream(5, 1, WAIT, |_| vec![inc(COUNT, 1)]).await;
    assert_eq!(p.acked.len(), 5, "changes acknowledged through a TLS Redis");
    assert_eq!(p.mirror.int(COUNT), 5);

    // Without the CA the node refuses to start: the server's certificate is not trusted.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_gamerelay"))
        .args(["--listen", "127.0.0.1:0", "--redis", &url, "--cluster-secret", "0123456789abcdef0123"])
        .output()
        .expect("run gamerelay");
    assert!(!refused.status.success(), "a node must not trust an unknown CA");
}
