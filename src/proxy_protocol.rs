//! The PROXY protocol v2 (HAProxy `send-proxy-v2`): a binary header a proxy sends before the
//! HTTP request, naming the client's real address. Accepted only from `--trusted-proxy`
//! peers; from anyone else the bytes are left alone (they would make an invalid request).
//!
//! [`ProxyListener`] wraps the public TCP listener: a background task accepts connections,
//! reads the header of connections from trusted proxies in a task of their own (so a slow
//! proxy connection never holds up the accept loop), and hands each connection with its
//! client address to axum. A trusted proxy may also connect without a header (the peer is
//! then the address).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::limits::Cidr;

/// The 12 bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];
/// How long a trusted proxy may take to send its header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest header accepted (addresses plus TLVs).
const MAX_HEADER_BYTES: usize = 512;
/// Connections accepted but not yet taken by the HTTP server.
const BACKLOG: usize = 1024;

/// A TCP listener that yields connections with their client address.
pub struct ProxyListener {
    rx: mpsc::Receiver<(TcpStream, SocketAddr)>,
    local: SocketAddr,
}

impl ProxyListener {
    /// Starts accepting on `listener`; reads PROXY v2 headers from peers in `trusted`.
    pub fn new(listener: TcpListener, trusted: Vec<Cidr>) -> io::Result<ProxyListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(BACKLOG);
        tokio::spawn(accept_loop(listener, trusted, tx));
        Ok(ProxyListener { rx, local })
    }
}

async fn accept_loop(listener: TcpListener, trusted: Vec<Cidr>, tx: mpsc::Sender<(TcpStream, SocketAddr)>) {
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (mut stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !trusted.iter().any(|c| c.contains(peer.ip())) {
            if tx.send((stream, peer)).await.is_err() {
                return;
            }
            continue;
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HEADER_TIMEOUT, read_header(&mut stream, peer)).await {
                Ok(Ok(client)) => {
                    let _ = tx.send((stream, client)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "bad PROXY header; connection dropped"),
                Err(_) => tracing::debug!(%peer, "no PROXY header in time; connection dropped"),
            }
        });
    }
}

impl axum::serve::Listener for ProxyListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        match self.rx.recv().await {
            Some(pair) => pair,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Reads a v2 header if the connection starts with one; returns the client address (the
/// header's source for `PROXY` over TCP, otherwise `peer`).
pub async fn read_header(stream: &mut TcpStream, peer: SocketAddr) -> io::Result<SocketAddr> {
    let mut head = [0u8; 16];
    loop {
        let n = stream.peek(&mut head).await?;
        if n == 0 {
            return Err(invalid("closed before a request"));
        }
        let k = n.min(SIGNATURE.len());
        if head[..k] != SIGNATURE[..k] {
            return Ok(peer);
        }
        if n >= head.len() {
            break;
        }
        // A header split across segments: rare; wait a little for the rest.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stream.read_exact(&mut head).await?;
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > MAX_HEADER_BYTES {
        return Err(invalid("header too long"));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    parse(&head, &body, peer)
}

/// Interprets a header: `head` is its 16 fixed bytes, `body` the rest.
pub fn parse(head: &[u8; 16], body: &[u8], peer: SocketAddr) -> io::Result<SocketAddr> {
    if head[..12] != SIGNATURE {
        return Err(invalid("not a PROXY v2 header"));
    }
    if head[12] >> 4 != 2 {
        return Err(invalid("unsupported PROXY protocol version"));
    }
    match head[12] & 0x0f {
        // LOCAL: the proxy's own connection (health checks); the peer is the address.
        0 => return Ok(peer),
        1 => {}
        _ => return Err(invalid("unknown PROXY command")),
    }
    match head[13] {
        // TCP over IPv4: src addr, dst addr, src port, dst port.
        0x11 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([body[8], body[9]])))
        }
        0x21 if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), u16::from_be_bytes([body[32], body[33]])))
        }
        0x11 | 0x21 => Err(invalid("address block too short")),
        // UNSPEC or a non-TCP family: keep the peer.
        _ => Ok(peer),
    }
}

/// A v2 `PROXY` header for a TCP connection from `src` to `dst` (tests and tools).
pub fn header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(0x21);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(h: &[u8]) -> ([u8; 16], Vec<u8>) {
        let mut head = [0u8; 16];
        head.copy_from_slice(&h[..16]);
        (head, h[16..].to_vec())
    }

    #[test]
    fn headers_round_trip_and_local_or_unknown_keep_the_peer() {
        let peer: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.9:8080".parse().unwrap();
        for src in ["198.51.100.7:40000", "[2001:db8::1]:40001"] {
            let src: SocketAddr = src.parse().unwrap();
            let (head, body) = split(&header(src, dst));
            assert_eq!(parse(&head, &body, peer).unwrap(), src);
        }
        let (mut head, body) = split(&header("198.51.100.7:1".parse().unwrap(), dst));
        head[12] = 0x20; // LOCAL
        assert_eq!(parse(&head, &body, peer).unwrap(), peer);
        head[12] = 0x21;
        head[13] = 0x00; // UNSPEC
        assert_eq!(parse(&head, &body, peer).unwrap(), peer);
        head[13] = 0x11;
        assert!(parse(&head, &body[..4], peer).is_err());
        head[12] = 0x11; // version 1 in the binary format
        assert!(parse(&head, &body, peer).is_err());
        head[0] = b'G';
        assert!(parse(&head, &body, peer).is_err());
    }
}
