//! Client settings: where to connect, which room, and how to behave when the connection drops.

use std::time::Duration;

use rand::Rng;

use crate::error::ClientError;

/// Everything [`Client::connect`](crate::Client::connect) needs.
///
/// Build one with [`ClientConfig::new`] and adjust with the `with_*` methods or the public
/// fields:
///
/// ```
/// use std::time::Duration;
/// use gamerelay_client::{ClientConfig, ReconnectPolicy};
///
/// let config = ClientConfig::new("ws://127.0.0.1:8080/ws", "lobby-1", "doc")
///     .with_client_name("my-game/1.2")
///     .with_reconnect(ReconnectPolicy {
///         max_attempts: Some(10),
///         ..ReconnectPolicy::default()
///     })
///     .with_handshake_timeout(Duration::from_secs(5));
/// assert_eq!(config.room, "lobby-1");
/// ```
/// The default `hello.client`: this crate and its version.
pub(crate) const CLIENT_NAME: &str = concat!("gamerelay-client-rust/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// WebSocket URL of the server's `/ws` endpoint, e.g. `ws://127.0.0.1:8080/ws`.
    pub url: String,
    /// Room id: 1-128 bytes of `[A-Za-z0-9_.:-]`. Empty with [`join_or_create`](Self::join_or_create):
    /// the server chooses, and [`Client::room`](crate::Client::room) names its choice.
    pub room: String,
    /// Let the server choose the room: a seat in the oldest listed room of `room_type` with
    /// one free, or a new listed room (`join_or_create` in docs/PROTOCOL.md). Reconnects
    /// resume in the room chosen.
    pub join_or_create: bool,
    /// Room type, e.g. `doc` or `arena`.
    pub room_type: String,
    /// Join token sent in `join`: a JWT from the game backend naming the player and its rooms.
    /// Required by nodes with `--auth-key` (the player id is then the token's `sub`); ignored
    /// by nodes in insecure development mode. See docs/SECURITY.md.
    pub token: Option<String>,
    /// Client name and version sent in `hello`, for the server's logs.
    pub client_name: String,
    /// Append `?room=<room>` to the URL (unless it already has a `room=` parameter) so that a
    /// load balancer can route all players of a room to the same node. Default: true.
    pub room_query: bool,
    /// What to do when the connection drops.
    pub reconnect: ReconnectPolicy,
    /// Longest time from opening the socket to receiving `joined` (each attempt). Default 10 s.
    pub handshake_timeout: Duration,
    /// A connection that receives nothing (not even a WebSocket ping) for this long is
    /// considered dead and replaced. After half of it the client sends a `ping` probe, so a
    /// healthy but quiet server answers in time. Default 30 s (the server pings every 15 s).
    pub idle_timeout: Duration,
    /// Most op batches sent but not yet acknowledged or rejected. `send_ops` waits while this
    /// many are outstanding (they are kept to be re-sent after a reconnect). Default 256.
    pub max_pending_ops: usize,
    /// Capacity of the event channel. When a reader falls this far behind, the oldest events
    /// are dropped for it (and counted); the connection never waits for readers. Default 1024.
    pub event_buffer: usize,
    /// How long `leave` waits for the server to close the connection. Default 5 s.
    pub leave_timeout: Duration,
}

impl ClientConfig {
    /// Settings with defaults for everything but the URL, room id and room type.
    pub fn new(url: impl Into<String>, room: impl Into<String>, room_type: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            room: room.into(),
            room_type: room_type.into(),
            join_or_create: false,
            token: None,
            client_name: CLIENT_NAME.to_owned(),
            room_query: true,
            reconnect: ReconnectPolicy::default(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_pending_ops: 256,
            event_buffer: 1024,
            leave_timeout: Duration::from_secs(5),
        }
    }

    /// Settings for a `join_or_create` in a room of `room_type` that the server chooses.
    pub fn join_or_create(url: impl Into<String>, room_type: impl Into<String>) -> Self {
        ClientConfig { join_or_create: true, ..ClientConfig::new(url, "", room_type) }
    }

    /// Sets the authentication token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the client name sent in `hello`.
    pub fn with_client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// Sets the reconnect policy.
    pub fn with_reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// Sets the handshake timeout.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the idle timeout.
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets the bound on unacknowledged op batches.
    pub fn with_max_pending_ops(mut self, n: usize) -> Self {
        self.max_pending_ops = n;
        self
    }

    /// Sets the event channel capacity.
    pub fn with_event_buffer(mut self, n: usize) -> Self {
        self.event_buffer = n;
        self
    }

    /// Checks the settings that would otherwise fail later in confusing ways.
    pub fn validate(&self) -> Result<(), ClientError> {
        let bad = |msg: &str| Err(ClientError::InvalidConfig(msg.to_owned()));
        if self.room.is_empty() && !self.join_or_create {
            return bad("room must not be empty (or use join_or_create)");
        }
        if !self.room.is_empty() && self.join_or_create {
            return bad("join_or_create chooses the room: leave room empty");
        }
        if self.room_type.is_empty() {
            return bad("room_type must not be empty");
        }
        if self.max_pending_ops == 0 {
            return bad("max_pending_ops must be at least 1");
        }
        if self.max_pending_ops > tokio::sync::Semaphore::MAX_PERMITS {
            return bad("max_pending_ops is too large");
        }
        if self.event_buffer == 0 {
            return bad("event_buffer must be at least 1");
        }
        if self.handshake_timeout.is_zero() || self.idle_timeout.is_zero() {
            return bad("timeouts must be positive");
        }
        let r = &self.reconnect;
        if !(0.0..=1.0).contains(&r.jitter) {
            return bad("reconnect.jitter must be within 0.0..=1.0");
        }
        if r.initial_backoff > r.max_backoff {
            return bad("reconnect.initial_backoff must not exceed reconnect.max_backoff");
        }
        Ok(())
    }

    /// The URL actually dialled: [`url`](Self::url) plus `room=<room>` when
    /// [`room_query`](Self::room_query) asks for it.
    pub fn connect_url(&self) -> String {
        let room_ok = self.room.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        if !self.room_query || self.room.is_empty() || !room_ok || self.url.contains("room=") {
            return self.url.clone();
        }
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}room={}", self.url, self.room)
    }
}

/// When and how often to reconnect after the connection drops.
///
/// Attempt `n` (1-based) waits `min(max_backoff, initial_backoff * 2^(n-1))`, shortened by a
/// random fraction of up to `jitter` (so `jitter = 0.5` waits between 50 % and 100 % of it).
/// A `1012 service_restart: retry_ms=<n>` close replaces the first wait with the server's hint.
/// A broken history (a gap in the deltas) reconnects at once. The attempt count starts again
/// after each successful resume.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    /// Wait before the first attempt. Default 200 ms.
    pub initial_backoff: Duration,
    /// Longest wait between attempts. Default 10 s.
    pub max_backoff: Duration,
    /// Give up after this many failed attempts in a row (`Some(0)`: never reconnect);
    /// `None`: keep trying until the server answers `session_expired` or the client is closed.
    /// Default `None`.
    pub max_attempts: Option<u32>,
    /// Fraction of each wait that is randomised, within `0.0..=1.0`. Default 0.5.
    pub jitter: f64,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_attempts: None,
            jitter: 0.5,
        }
    }
}

impl ReconnectPolicy {
    /// A policy that never reconnects: the first lost connection closes the client.
    pub fn disabled() -> Self {
        ReconnectPolicy { max_attempts: Some(0), ..ReconnectPolicy::default() }
    }

    /// The wait before attempt `attempt` (1-based), jitter included.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        let base = self.initial_backoff.saturating_mul(1u32 << exp).min(self.max_backoff);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 || base.is_zero() {
            return base;
        }
        base.mul_f64(rand::rng().random_range((1.0 - jitter)..=1.0))
    }
}

/// Longest `retry_ms` hint honoured, so a bogus reason cannot park the client for days.
const MAX_RETRY_HINT: Duration = Duration::from_secs(600);

/// Parses the `retry_ms=<n>` hint of a close reason such as `service_restart: retry_ms=1500`.
pub(crate) fn retry_hint(reason: &str) -> Option<Duration> {
    let at = reason.find("retry_ms=")? + "retry_ms=".len();
    let digits: String = reason[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
    let ms: u64 = digits.parse().ok()?;
    Some(Duration::from_millis(ms).min(MAX_RETRY_HINT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let p = ReconnectPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_attempts: None,
            jitter: 0.0,
        };
        let waits: Vec<u128> = (1..=6).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_shortens_within_its_fraction() {
        let p = ReconnectPolicy {
            initial_backoff: Duration::from_millis(1000),
            max_backoff: Duration::from_secs(10),
            max_attempts: None,
            jitter: 0.5,
        };
        for _ in 0..200 {
            let d = p.backoff(1);
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000), "{d:?}");
        }
    }

    #[test]
    fn retry_hint_is_parsed_from_the_close_reason() {
        assert_eq!(retry_hint("service_restart: retry_ms=1500"), Some(Duration::from_millis(1500)));
        assert_eq!(retry_hint("service_restart"), None);
        assert_eq!(retry_hint("retry_ms=x"), None);
        assert_eq!(retry_hint("retry_ms=99999999999"), Some(MAX_RETRY_HINT));
    }

    #[test]
    fn connect_url_adds_the_room_for_routing() {
        let c = ClientConfig::new("ws://h/ws", "lobby:1", "doc");
        assert_eq!(c.connect_url(), "ws://h/ws?room=lobby:1");
        let c = ClientConfig::new("ws://h/ws?x=1", "r", "doc");
        assert_eq!(c.connect_url(), "ws://h/ws?x=1&room=r");
        let c = ClientConfig::new("ws://h/ws?room=other", "r", "doc");
        assert_eq!(c.connect_url(), "ws://h/ws?room=other");
        let mut c = ClientConfig::new("ws://h/ws", "r", "doc");
        c.room_query = false;
        assert_eq!(c.connect_url(), "ws://h/ws");
        let c = ClientConfig::new("ws://h/ws", "bad room", "doc");
        assert_eq!(c.connect_url(), "ws://h/ws");
    }

    #[test]
    fn validate_refuses_nonsense() {
        assert!(ClientConfig::new("ws://h/ws", "r", "doc").validate().is_ok());
        assert!(ClientConfig::new("ws://h/ws", "", "doc").validate().is_err());
        assert!(ClientConfig::new("ws://h/ws", "r", "doc").with_max_pending_ops(0).validate().is_err());
        let mut c = ClientConfig::new("ws://h/ws", "r", "doc");
        c.reconnect.jitter = 1.5;
        assert!(c.validate().is_err());
    }
}
