//! End to end: the client against a real gamerelay node running in this process.
//!
//! Connections can go through [`Proxy`], a TCP forwarder that can swallow one direction and
//! cut every connection it carries, to lose a connection at a chosen moment.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use gamerelay::config::Config;
use gamerelay::server::Server;
use gamerelay_client::protocol::{Doc, ErrorCode, Op};
use gamerelay_client::{Client, ClientConfig, ConnectionState, Event, EventStream, ReconnectPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

const WAIT: Duration = Duration::from_secs(10);

struct Node {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn start(extra: &[&str]) -> Node {
        let mut args = vec!["gamerelay", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let server = Server::bind(Config::parse_from(args)).await.expect("bind");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            server.run(shutdown).await.expect("server run");
        });
        Node { addr, stop: Some(stop), task }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }
}

fn config(url: String, room: &str) -> ClientConfig {
    ClientConfig::new(url, room, "doc").with_reconnect(ReconnectPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_attempts: Some(50),
        jitter: 0.5,
    })
}

fn inc(path: &str) -> Vec<Op> {
    vec![Op::Inc { path: path.into(), by: Doc::Int(1) }]
}

/// Polls `cond` until it holds (or fails the test after [`WAIT`]).
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_for(events: &mut EventStream, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let found = tokio::time::timeout(WAIT, async {
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

async fn fan_out_converges(node_args: &[&str]) {
    let node = Node::start(node_args).await;
    let a = Client::connect(config(node.url(), "fan-out")).await.unwrap();
    let b = Client::connect(config(node.url(), "fan-out")).await.unwrap();
    assert_ne!(a.player_id(), b.player_id());
    eventually("a sees b", || a.members().len() == 2).await;

    let mut tickets = Vec::new();
    for i in 0..20 {
        tickets.push(a.send_ops_tracked(inc("shared/n")).await.unwrap());
        let own = vec![Op::Set { path: format!("players/{}/x", b.player_id()), value: Doc::Int(i) }];
        tickets.push(b.send_ops_tracked(own).await.unwrap());
    }
    let mut last = 0;
    for t in tickets {
        last = last.max(t.acked().await.unwrap());
    }
    eventually("both mirrors at the last seq", || a.seq() == last && b.seq() == last).await;
    assert_eq!(a.state_hash(), b.state_hash());
    assert_eq!(a.get("shared/n"), Some(Doc::Int(20)));
    assert_eq!(b.get("shared/n"), Some(Doc::Int(20)));
    assert_eq!(a.get(&format!("players/{}/x", b.player_id())), Some(Doc::Int(19)));

    // Ephemeral messages fan out too.
    let mut b_events = b.subscribe();
    a.send_msg(None, Doc::str("hello")).await.unwrap();
    let ev = wait_for(&mut b_events, "msg", |e| matches!(e, Event::Msg { .. })).await;
    assert_eq!(ev, Event::Msg { from: Some(a.player_id().to_owned()), to: None, data: Doc::str("hello") });

    // Leaving: the other member sees it go.
    a.leave().await.unwrap();
    assert_eq!(a.connection_state(), ConnectionState::Closed);
    eventually("b sees a leave", || b.members().len() == 1).await;
    b.close().await;
    node.stop().await;
}

#[tokio::test]
async fn ops_fan_out_and_mirrors_converge() {
    fan_out_converges(&[]).await;
}

#[tokio::test]
async fn ops_fan_out_and_mirrors_converge_with_batched_flushes() {
    fan_out_converges(&["--flush-interval-ms", "5"]).await;
}

#[tokio::test]
async fn a_batch_lost_on_the_way_up_is_resent_and_applied_once() {
    let node = Node::start(&[]).await;
    let proxy = Proxy::start(node.addr).await;
    let observer = Client::connect(config(node.url(), "lost-up")).await.unwrap();
    let a = Client::connect(config(proxy.url(), "lost-up")).await.unwrap();
    let mut events = a.subscribe();

    // The batch never reaches the server...
    proxy.swallow(Direction::Up);
    let ticket = a.send_ops_tracked(inc("n")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(observer.get("n"), None, "the batch must not have arrived");
    // ...then the connection dies.
    proxy.cut();

    wait_for(&mut events, "disconnected", |e| matches!(e, Event::Disconnected { .. })).await;
    let ev = wait_for(&mut events, "resumed", |e| matches!(e, Event::Resumed { .. })).await;
    assert_eq!(ev, Event::Resumed { with_snapshot: false });
    let seq = ticket.acked().await.unwrap();
    eventually("observer at the batch's seq", || observer.seq() >= seq).await;
    assert_eq!(a.get("n"), Some(Doc::Int(1)));
    assert_eq!(observer.get("n"), Some(Doc::Int(1)), "applied exactly once");

    // The next batch continues the cid sequence.
    let next = a.send_ops_tracked(inc("n")).await.unwrap();
    assert_eq!(next.cid(), 2);
    let seq = next.acked().await.unwrap();
    eventually("observer caught up", || observer.seq() == seq).await;
    assert_eq!(observer.get("n"), Some(Doc::Int(2)));
    assert_eq!(a.state_hash(), observer.state_hash());
    a.close().await;
    observer.close().await;
    node.stop().await;
}

#[tokio::test]
async fn a_batch_whose_ack_is_lost_is_resent_and_not_applied_twice() {
    let node = Node::start(&[]).await;
    let proxy = Proxy::start(node.addr).await;
    let observer = Client::connect(config(node.url(), "lost-down")).await.unwrap();
    let a = Client::connect(config(proxy.url(), "lost-down")).await.unwrap();
    let mut events = a.subscribe();

    // The batch is applied, but its delta (the ack) never reaches the client...
    proxy.swallow(Direction::Down);
    let ticket = a.send_ops_tracked(inc("n")).await.unwrap();
    eventually("observer sees the batch", || observer.get("n") == Some(Doc::Int(1))).await;
    let applied_at = observer.seq();
    assert_eq!(a.get("n"), None);
    // ...then the connection dies; the resume re-sends cid 1, which must not apply again.
    proxy.cut();

    wait_for(&mut events, "resumed", |e| matches!(e, Event::Resumed { .. })).await;
    assert_eq!(ticket.acked().await.unwrap(), applied_at, "acked with the original seq");
    // Whatever the server does with the re-sent cid happens before the pong.
    a.ping().await.unwrap();
    observer.ping().await.unwrap();
    assert_eq!(observer.seq(), applied_at, "nothing applied after the batch");
    assert_eq!(a.get("n"), Some(Doc::Int(1)));
    assert_eq!(observer.get("n"), Some(Doc::Int(1)), "applied exactly once");
    assert_eq!(a.state_hash(), observer.state_hash());
    a.close().await;
    observer.close().await;
    node.stop().await;
}

#[tokio::test]
async fn a_resume_after_the_grace_reports_session_expired() {
    let node = Node::start(&["--reconnect-grace-ms", "200"]).await;
    let proxy = Proxy::start(node.addr).await;
    let mut cfg = config(proxy.url(), "grace");
    cfg.reconnect = ReconnectPolicy {
        initial_backoff: Duration::from_millis(600),
        max_backoff: Duration::from_millis(600),
        max_attempts: Some(3),
        jitter: 0.0,
    };
    let a = Client::connect(cfg).await.unwrap();
    let mut events = a.subscribe();
    proxy.cut();
    let ev = wait_for(&mut events, "closed", |e| matches!(e, Event::Closed { .. })).await;
    assert!(
        matches!(ev, Event::Closed { code: None, ref reason } if reason.contains("session expired")),
        "{ev:?}"
    );
    assert!(matches!(a.close_reason(), Some(gamerelay_client::ClientError::SessionExpired { .. })));
    node.stop().await;
}

/// Against a node with join keys: without a token the join is refused (and not retried);
/// with one the client is the token's player, and it resumes as that player after a drop
/// (sending its token along with the session).
#[tokio::test]
async fn the_join_token_names_the_player_and_survives_a_resume() {
    const KEY: &str = "k1:0123456789abcdef0123456789abcdef";
    let node = Node::start(&["--auth-key", KEY]).await;
    let refused = Client::connect(config(node.url(), "secure")).await;
    assert!(
        matches!(
            refused,
            Err(gamerelay_client::ClientError::JoinRefused { code: ErrorCode::Unauthorized, .. })
        ),
        "{:?}",
        refused.err()
    );
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 300;
    let claims = gamerelay::auth::JoinClaims { sub: "hero-1".into(), rooms: vec!["secure".into()], exp };
    let token = gamerelay::auth::sign(KEY, &claims).unwrap();
    let proxy = Proxy::start(node.addr).await;
    let a = Client::connect(config(proxy.url(), "secure").with_token(token)).await.unwrap();
    assert_eq!(a.player_id(), "hero-1");
    let mut events = a.subscribe();
    proxy.cut();
    wait_for(&mut events, "resumed", |e| matches!(e, Event::Resumed { .. })).await;
    a.send_ops(inc("players/hero-1/n")).await.unwrap();
    eventually("the op to apply", || a.get("players/hero-1/n") == Some(Doc::Int(1))).await;
    a.close().await;
    node.stop().await;
}

/// Which way bytes flow through the proxy.
#[derive(Debug, Clone, Copy)]
enum Direction {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// The switches of one proxied connection.
#[derive(Default)]
struct Link {
    swallow_up: AtomicBool,
    swallow_down: AtomicBool,
}

/// A TCP forwarder to the node. New connections pass everything; `swallow` and `cut` act on
/// the connections open at the time.
struct Proxy {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<Arc<Link>>>>,
    cut: watch::Sender<u64>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links: Arc<Mutex<Vec<Arc<Link>>>> = Arc::default();
        let (cut, cut_rx) = watch::channel(0u64);
        let registry = links.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let link = Arc::new(Link::default());
                registry.lock().unwrap().push(link.clone());
                let mut cut_rx = cut_rx.clone();
                cut_rx.mark_unchanged();
                tokio::spawn(async move {
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pump(cr, sw, link.clone(), Direction::Up) => {}
                        _ = pump(sr, cw, link.clone(), Direction::Down) => {}
                        _ = cut_rx.changed() => {}
                    }
                    // Dropping both halves of both sockets closes them.
                });
            }
        });
        Proxy { addr, links, cut }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Discards the bytes flowing `dir` on the connections open now.
    fn swallow(&self, dir: Direction) {
        for link in self.links.lock().unwrap().iter() {
            match dir {
                Direction::Up => link.swallow_up.store(true, Ordering::SeqCst),
                Direction::Down => link.swallow_down.store(true, Ordering::SeqCst),
            }
        }
    }

    /// Closes every connection open now.
    fn cut(&self) {
        self.links.lock().unwrap().clear();
        self.cut.send_modify(|n| *n += 1);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Arc<Link>,
    dir: Direction,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let swallow = match dir {
            Direction::Up => link.swallow_up.load(Ordering::SeqCst),
            Direction::Down => link.swallow_down.load(Ordering::SeqCst),
        };
        if !swallow && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
