//! Building blocks of the per-connection and per-address limits: a token bucket, CIDR
//! matching for trusted proxies, and the counter of connections per client address.
//!
//! No I/O. Where each limit is enforced: the gateway (connections per node and per address,
//! `Origin`), the session (rates, handshake, bad frames, overload shedding), the room (players,
//! ops per batch, paths, state size). Every hit counts in
//! [`crate::telemetry::names::LIMIT_HITS`] with a label from [`LIMITS`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use metrics::counter;

use crate::telemetry::names;

/// The `limit` label values of [`names::LIMIT_HITS`], one per limit (docs/SECURITY.md).
pub const LIMITS: &[&str] = &[
    "frame_size",
    "ops_per_batch",
    "path",
    "state_size",
    "players_per_room",
    "rooms",
    "connections",
    "connections_per_ip",
    "handshake_timeout",
    "bad_frames",
    "ops_rate",
    "bytes_rate",
    "rate_abuse",
    "overload",
    "origin",
];

/// Counts one hit of `limit` (one of [`LIMITS`]).
pub fn hit(limit: &'static str) {
    debug_assert!(LIMITS.contains(&limit), "unknown limit label {limit}");
    counter!(names::LIMIT_HITS, "limit" => limit).increment(1);
}

/// A token bucket: `rate` tokens per second, holding at most `burst`. A rate of 0 disables it.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u64, burst: u64, now: Instant) -> TokenBucket {
        TokenBucket { rate: rate as f64, burst: burst as f64, tokens: burst as f64, last: now }
    }

    /// Takes `n` tokens if there are that many; otherwise takes none and returns false.
    pub fn take(&mut self, n: u64, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Milliseconds until `n` tokens are available (at least 1).
    pub fn wait_ms(&self, n: u64) -> u64 {
        if self.rate == 0.0 {
            return 0;
        }
        let missing = (n as f64 - self.tokens).max(0.0);
        ((missing / self.rate) * 1000.0).ceil().max(1.0) as u64
    }
}

/// An IP network, `addr/prefix` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `ip` with IPv4-mapped IPv6 addresses turned into IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client address of a connection: the peer, or, when the peer is a trusted proxy, the
/// last address of its `X-Forwarded-For` header (the one that proxy appended).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    forwarded_for
        .and_then(|h| h.rsplit(',').next())
        .and_then(|last| last.trim().parse::<IpAddr>().ok())
        .map_or(peer, canonical)
}

/// Open connections per client address, with a limit (0 = none).
#[derive(Clone)]
pub struct PerIp {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Held while a connection counts against its address.
pub struct IpSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl PerIp {
    pub fn new(max: usize) -> PerIp {
        PerIp { max, open: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// A slot for one more connection from `ip`, or `None` at the limit.
    pub fn acquire(&self, ip: IpAddr) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if self.max > 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot { ip, open: self.open.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_limit_label_is_documented_in_security_md_and_metrics_md() {
        let security = include_str!("../docs/SECURITY.md");
        let metrics = include_str!("../docs/METRICS.md");
        for label in LIMITS {
            assert!(security.contains(&format!("(`{label}`)")), "{label} is missing from docs/SECURITY.md");
            assert!(metrics.contains(&format!("`{label}`")), "{label} is missing from docs/METRICS.md");
        }
        for reason in crate::auth::AuthError::LABELS {
            assert!(security.contains(&format!("`{reason}`")), "{reason} is missing from docs/SECURITY.md");
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 20, t0);
        assert!(b.take(20, t0));
        assert!(!b.take(1, t0));
        assert!(b.wait_ms(1) >= 100);
        assert!(b.take(5, t0 + Duration::from_millis(500)));
        assert!(!b.take(1, t0 + Duration::from_millis(500)));
        // Never more than the burst, however long it was idle.
        assert!(!b.take(21, t0 + Duration::from_secs(100)));
        assert!(b.take(20, t0 + Duration::from_secs(100)));
        let mut off = TokenBucket::new(0, 0, t0);
        assert!(off.take(1_000_000, t0));
    }

    #[test]
    fn cidrs_match_their_networks_only() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("127.0.0.1".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let xff = Some("1.2.3.4, 198.51.100.7");
        assert_eq!(client_ip(proxy, xff, &trusted), "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(stranger, xff, &trusted), stranger);
        assert_eq!(client_ip(proxy, Some("garbage"), &trusted), proxy);
        assert_eq!(client_ip(proxy, None, &trusted), proxy);
    }

    #[test]
    fn per_ip_slots_are_counted_and_released() {
        let per = PerIp::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = per.acquire(ip).unwrap();
        let _b = per.acquire(ip).unwrap();
        assert!(per.acquire(ip).is_none());
        assert!(per.acquire("192.0.2.2".parse().unwrap()).is_some());
        drop(a);
        assert!(per.acquire(ip).is_some());
        assert!(PerIp::new(0).acquire(ip).is_some());
    }
}
