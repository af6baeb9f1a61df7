//! Connection setup shared by every scenario: target URLs, source addresses, the WebSocket
//! handshake, and the protocol's `hello` + `join`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use futures_util::{SinkExt, StreamExt};
use gamerelay::protocol::{
    decode_server, encode, ClientMsg, Doc, Join, MemberInfo, ServerMsg, Snapshot, PROTOCOL_VERSION,
};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A client connection.
pub type Ws = WebSocketStream<TcpStream>;

/// A server endpoint, resolved once before the run.
#[derive(Debug, Clone)]
pub struct Target {
    /// The `ws://host:port/path` URL as given.
    pub url: String,
    pub addr: SocketAddr,
}

/// Why a connection could not be set up.
#[derive(Debug)]
pub enum ConnError {
    Io(std::io::Error),
    WebSocket(tokio_tungstenite::tungstenite::Error),
    /// The server answered the join (or hello) with `error{code}`.
    Refused {
        code: String,
        message: String,
    },
    /// The connection closed before `joined`.
    Closed,
    /// No `joined` within the connect timeout.
    Timeout,
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "tcp: {e}"),
            ConnError::WebSocket(e) => write!(f, "websocket: {e}"),
            ConnError::Refused { code, message } => write!(f, "server error {code}: {message}"),
            ConnError::Closed => write!(f, "closed before joined"),
            ConnError::Timeout => write!(f, "timed out before joined"),
        }
    }
}

impl From<std::io::Error> for ConnError {
    fn from(e: std::io::Error) -> Self {
        ConnError::Io(e)
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for ConnError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        ConnError::WebSocket(e)
    }
}

/// Parses and resolves `ws://` URLs (TLS is not supported: benchmark the node, not TLS).
pub async fn resolve_targets(urls: &[String]) -> Result<Vec<Target>, String> {
    let mut out = Vec::with_capacity(urls.len());
    for url in urls {
        let rest =
            url.strip_prefix("ws://").ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if authority.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let host_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(host_port.as_str())
            .await
            .map_err(|e| format!("{url}: cannot resolve {host_port}: {e}"))?
            .collect();
        // Prefer IPv4: the source-address spreading below is for 127.0.0.0/8.
        addrs.sort_by_key(|a| !a.is_ipv4());
        let addr = *addrs.first().ok_or_else(|| format!("{url}: {host_port} resolves to nothing"))?;
        out.push(Target { url: url.clone(), addr });
    }
    Ok(out)
}

/// Connections one source address can open to one destination: the Linux ephemeral port
/// range is 32768-60999 by default, so stay well below its 28k ports.
pub const CONNECTIONS_PER_SOURCE: usize = 20_000;

/// Local addresses to bind client sockets to, so that more than ~28k connections to one
/// server address are possible (each source IP has its own ephemeral ports).
#[derive(Debug, Clone, Default)]
pub struct SourceAddrs(Vec<IpAddr>);

impl SourceAddrs {
    /// `requested` = 0 picks automatically: one loopback source per
    /// [`CONNECTIONS_PER_SOURCE`] connections to the busiest target when every target is on
    /// 127.0.0.0/8 and one is not enough, else none (the kernel chooses). `requested` = n > 0
    /// uses 127.0.0.1..=127.0.0.n (loopback targets only).
    pub fn plan(requested: usize, targets: &[Target], max_conns_per_target: usize) -> Result<Self, String> {
        let loopback = targets.iter().all(|t| matches!(t.addr.ip(), IpAddr::V4(ip) if ip.is_loopback()));
        let n = match requested {
            0 if loopback => max_conns_per_target.div_ceil(CONNECTIONS_PER_SOURCE),
            0 => 0,
            n if loopback => n,
            _ => return Err("--source-addrs needs 127.0.0.0/8 targets".to_string()),
        };
        if n <= 1 {
            return Ok(SourceAddrs::default());
        }
        if n > 254 {
            return Err(format!("{n} source addresses needed; at most 254"));
        }
        Ok(SourceAddrs((1..=n as u8).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))).collect()))
    }

    /// Source address of connection number `i` (`None`: let the kernel choose).
    pub fn for_connection(&self, i: usize) -> Option<IpAddr> {
        (!self.0.is_empty()).then(|| self.0[i % self.0.len()])
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// WebSocket settings for a load generator: small read buffers (thousands of connections,
/// each receiving frames of ~100 bytes) and no write buffering (every input goes out at once).
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0)
}

/// Opens a WebSocket to `target`, with `?room=<room>` for load balancers that route by room.
pub async fn open(target: &Target, room: &str, source: Option<IpAddr>) -> Result<Ws, ConnError> {
    let socket = if target.addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let tcp = socket.connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    // `?room=` lets a load balancer route a room's players together; a `join_or_create`
    // (no room yet) goes anywhere.
    let url = if room.is_empty() {
        target.url.clone()
    } else {
        let sep = if target.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}room={room}", target.url)
    };
    let (ws, _response) = tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config())).await?;
    Ok(ws)
}

/// What `joined` told us.
#[derive(Debug)]
pub struct Joined {
    pub player: String,
    /// The room state of the snapshot (nil if there was none).
    pub state: Doc,
}

/// Everything a `joined` carries (for scenarios that resume or mirror the room).
#[derive(Debug)]
pub struct JoinedFull {
    /// The room joined (the server's choice with `join_or_create`).
    pub room: String,
    pub player: String,
    /// The session token, to resume with.
    pub session: String,
    pub resumed: bool,
    /// The highest cid of this player applied so far.
    pub cid: u64,
    pub members: Vec<MemberInfo>,
    /// Nil on a resume served with the missed deltas, which follow in order.
    pub snapshot: Option<Snapshot>,
}

/// Sends `hello` and `join` (pipelined, as the protocol allows) and waits for `joined`.
/// Frames before it (`welcome`, `presence`, deltas of other joiners) are skipped.
pub async fn hello_join(ws: &mut Ws, room: &str, room_type: &str) -> Result<Joined, ConnError> {
    let join = Join { room: room.to_string(), room_type: room_type.to_string(), ..Join::default() };
    let j = hello_join_with(ws, join).await?;
    Ok(Joined { player: j.player, state: j.snapshot.map(|s| s.state).unwrap_or_default() })
}

/// [`hello_join`] with any `join` (e.g. a resume: `session`, `epoch`, `seq`), returning the
/// whole `joined`. Nothing after `joined` is read: a resume's missed deltas stay queued.
pub async fn hello_join_with(ws: &mut Ws, join: Join) -> Result<JoinedFull, ConnError> {
    let hello = ClientMsg::Hello {
        v: PROTOCOL_VERSION,
        client: Some(concat!("gamerelay-loadtest/", env!("CARGO_PKG_VERSION")).to_string()),
    };
    ws.feed(Message::Binary(encode(&hello))).await?;
    ws.send(Message::Binary(encode(&ClientMsg::Join(join)))).await?;
    while let Some(msg) = ws.next().await {
        let Message::Binary(frame) = msg? else {
            continue;
        };
        match decode_server(&frame) {
            Ok(ServerMsg::Joined { room, player, session, resumed, cid, members, snapshot, .. }) => {
                return Ok(JoinedFull { room, player, session, resumed, cid, members, snapshot })
            }
            Ok(ServerMsg::Error { code, message, .. }) => return Err(ConnError::Refused { code, message }),
            // Anything else before `joined` is not ours to handle; a frame we cannot decode
            // here is skipped too (the run itself counts bad frames).
            Ok(_) | Err(_) => {}
        }
    }
    Err(ConnError::Closed)
}

/// Drops a connection without a WebSocket close frame, as a crashed client or a lost network
/// would: the socket is closed with a FIN, or with a RST when `reset` (`SO_LINGER` 0).
pub fn drop_abruptly(ws: Ws, reset: bool) {
    if reset {
        // Best effort: if it cannot be set, the close is a FIN, still without a close frame.
        let _ = ws.get_ref().set_zero_linger();
    }
    drop(ws);
}

/// Sends `leave` and closes, bounded in time (the server then forgets the player at once
/// instead of keeping it through the reconnect grace).
pub async fn leave(ws: &mut Ws) {
    let leave = encode(&ClientMsg::Leave);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let _ = ws.send(Message::Binary(leave)).await;
        let _ = ws.close(None).await;
    })
    .await;
}

/// The number at `path` (`/`-separated map keys) in `doc`.
pub fn number_at(doc: &Doc, path: &str) -> Option<f64> {
    path.split('/').try_fold(doc, |d, key| d.as_map()?.get(key))?.as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gamerelay::protocol::DocMap;

    fn target(ip: [u8; 4]) -> Target {
        Target { url: "ws://x/ws".into(), addr: SocketAddr::from((ip, 8080)) }
    }

    #[test]
    fn source_addresses_are_spread_only_when_needed() {
        let lo = [target([127, 0, 0, 1])];
        let plan = |req, n| SourceAddrs::plan(req, &lo, n).map(|s| s.len());
        assert_eq!(plan(0, 20_000), Ok(0));
        assert_eq!(plan(0, 20_001), Ok(2));
        assert_eq!(plan(0, 70_000), Ok(4));
        assert_eq!(plan(3, 10), Ok(3));
        let s = SourceAddrs::plan(2, &lo, 10).unwrap_or_default();
        assert_eq!(s.for_connection(3), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
        let remote = [target([10, 0, 0, 1])];
        assert_eq!(SourceAddrs::plan(0, &remote, 50_000).map(|s| s.len()), Ok(0));
        assert!(SourceAddrs::plan(2, &remote, 10).is_err());
    }

    #[tokio::test]
    async fn urls_are_parsed_and_resolved() {
        let t = resolve_targets(&["ws://127.0.0.1:9/ws?x=1".to_string()]).await;
        assert_eq!(t.map(|t| t[0].addr), Ok(SocketAddr::from(([127, 0, 0, 1], 9))));
        assert!(resolve_targets(&["wss://127.0.0.1/ws".to_string()]).await.is_err());
        let t = resolve_targets(&["ws://127.0.0.1/".to_string()]).await;
        assert_eq!(t.map(|t| t[0].addr.port()), Ok(80));
    }

    #[test]
    fn positions_are_read_from_the_snapshot() {
        let mut me = DocMap::new();
        me.insert("x".into(), Doc::Float(12.5));
        me.insert("y".into(), Doc::Int(7));
        let mut players = DocMap::new();
        players.insert("p-1".into(), Doc::Map(me));
        let mut root = DocMap::new();
        root.insert("players".into(), Doc::Map(players));
        let doc = Doc::Map(root);
        assert_eq!(number_at(&doc, "players/p-1/x"), Some(12.5));
        assert_eq!(number_at(&doc, "players/p-1/y"), Some(7.0));
        assert_eq!(number_at(&doc, "players/p-2/y"), None);
    }
}
