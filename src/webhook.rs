//! Webhooks: tells the game's own backend when rooms start and end and players come and go
//! (`--webhook-url`, `docs/WEBHOOKS.md`).
//!
//! Owns the node's bounded event queue, the one delivery task that drains it, the signing of
//! each request, retries, and the `gamerelay_webhook_*` metrics. Rooms only call
//! [`Webhooks::emit`], which never blocks and never awaits: a full queue drops the event (and
//! counts it), so a slow or dead receiver delays webhooks, never rooms. It touches no room
//! state and knows nothing of sessions.
//!
//! Order: one task delivers the events of a node one at a time, in the order they were
//! emitted; a failing event is retried (exponential backoff) before any later one is sent, so
//! a receiver sees each room's events in order. Delivery is at least once: a receiver that
//! answered too late gets the event again (same `id`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use metrics::{counter, gauge, histogram, Counter, Gauge};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::telemetry::names;

/// How long the queue may drain once the node shuts down; what is left then is dropped.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);
/// First pause before retrying a failed delivery; it doubles per attempt up to
/// `--webhook-max-backoff-ms`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// At most one "queue full" warning per this interval (the counter has every drop).
const DROP_WARN_EVERY: Duration = Duration::from_secs(10);

/// Why a player left a room for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The player sent `leave` (`player.left`, reason `left`).
    Left,
    /// The player's reconnect grace ran out (`player.timed_out`).
    TimedOut,
    /// An operator removed the player (`player.left`, reason `kicked`).
    Kicked,
}

impl LeaveReason {
    /// The `reason` field of the event.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::TimedOut => "timed_out",
            LeaveReason::Kicked => "kicked",
        }
    }
}

/// Something the game's backend hears about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    /// A room started anew on this node (not a failover restoring a room with members).
    RoomCreated { room: Arc<str>, room_type: &'static str },
    /// A room ended for good (idle past its TTL), not a handoff or a node shutdown.
    RoomDisposed { room: Arc<str>, room_type: &'static str },
    /// A new player joined (not a resume).
    PlayerJoined { room: Arc<str>, room_type: &'static str, player: Arc<str> },
    /// A player is gone for good: `player.left` (left, kicked) or `player.timed_out`.
    PlayerGone { room: Arc<str>, room_type: &'static str, player: Arc<str>, reason: LeaveReason },
}

impl WebhookEvent {
    /// The event's `type`, also its `x-gamerelay-event` header.
    pub fn kind(&self) -> &'static str {
        match self {
            WebhookEvent::RoomCreated { .. } => "room.created",
            WebhookEvent::RoomDisposed { .. } => "room.disposed",
            WebhookEvent::PlayerJoined { .. } => "player.joined",
            WebhookEvent::PlayerGone { reason: LeaveReason::TimedOut, .. } => "player.timed_out",
            WebhookEvent::PlayerGone { .. } => "player.left",
        }
    }

    /// Every `type` there is.
    pub const KINDS: [&'static str; 5] =
        ["room.created", "room.disposed", "player.joined", "player.left", "player.timed_out"];

    fn room(&self) -> (&str, &'static str) {
        match self {
            WebhookEvent::RoomCreated { room, room_type }
            | WebhookEvent::RoomDisposed { room, room_type }
            | WebhookEvent::PlayerJoined { room, room_type, .. }
            | WebhookEvent::PlayerGone { room, room_type, .. } => (room, room_type),
        }
    }

    fn player(&self) -> Option<&str> {
        match self {
            WebhookEvent::PlayerJoined { player, .. } | WebhookEvent::PlayerGone { player, .. } => {
                Some(player)
            }
            _ => None,
        }
    }

    /// `reason` is sent with `player.left` only (`left`, `kicked`): `player.timed_out` says it.
    fn reason(&self) -> Option<&'static str> {
        match self {
            WebhookEvent::PlayerGone { reason, .. } if *reason != LeaveReason::TimedOut => {
                Some(reason.as_str())
            }
            _ => None,
        }
    }
}

/// The JSON body of one event.
#[derive(Serialize)]
struct Body<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    /// When the event happened, ms since the Unix epoch.
    time: u64,
    node: &'a str,
    room: &'a str,
    room_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    player: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

/// An event as queued: its id and time are fixed when it is emitted, its body once.
struct Queued {
    id: String,
    kind: &'static str,
    body: Vec<u8>,
}

/// Where and how events are delivered (from `--webhook-*`). No `Debug`: it holds the secret.
#[derive(Clone)]
pub struct WebhookSettings {
    pub url: String,
    pub secret: String,
    pub queue: usize,
    pub timeout: Duration,
    pub max_backoff: Duration,
    pub max_attempts: u32,
}

impl WebhookSettings {
    /// The settings of `config`, or `None` without `--webhook-url`.
    pub fn from_config(config: &Config) -> Option<WebhookSettings> {
        let url = config.webhook_url.clone()?;
        Some(WebhookSettings {
            url,
            secret: config.webhook_secret.clone().unwrap_or_default(),
            queue: config.webhook_queue,
            timeout: Duration::from_millis(config.webhook_timeout_ms),
            max_backoff: Duration::from_millis(config.webhook_max_backoff_ms),
            max_attempts: config.webhook_max_attempts,
        })
    }
}

/// The HTTP client could not be built (TLS set-up).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the webhook client: {0}")]
pub struct WebhookError(String);

/// The node's webhook sender; cheap to clone. Without `--webhook-url` it does nothing.
#[derive(Clone, Default)]
pub struct Webhooks {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tx: mpsc::Sender<Queued>,
    node: Arc<str>,
    /// Node id plus a random suffix per process: with `seq`, makes event ids unique across
    /// restarts of a node with the same id.
    incarnation: String,
    seq: AtomicU64,
    dropped: Counter,
    depth: Gauge,
    /// Events this sender dropped, the count at the last warning, and when that was (ms
    /// since the Unix epoch).
    drops: AtomicU64,
    drops_warned: AtomicU64,
    last_drop_warn_ms: AtomicU64,
}

impl Webhooks {
    /// A sender that does nothing (no `--webhook-url`).
    pub fn disabled() -> Webhooks {
        Webhooks { inner: None }
    }

    /// Starts the delivery task on `tracker` (so the node's drain waits for it); it stops
    /// when `shutdown` is cancelled, after draining the queue for up to [`SHUTDOWN_DRAIN`].
    pub fn start(
        settings: WebhookSettings,
        node: &str,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Webhooks, WebhookError> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // A redirect is not a delivery: it fails and is retried. No proxy from the
            // HTTP(S)_PROXY variables: config.rs is the only reader of the environment.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("gamerelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookError(e.to_string()))?;
        let (tx, rx) = mpsc::channel(settings.queue);
        let incarnation = {
            use rand::Rng;
            format!("{node}.{:08x}", rand::rng().random::<u32>())
        };
        let inner = Arc::new(Inner {
            tx,
            node: Arc::from(node),
            incarnation,
            seq: AtomicU64::new(0),
            dropped: counter!(names::WEBHOOK_DROPPED),
            depth: gauge!(names::WEBHOOK_QUEUE_DEPTH),
            drops: AtomicU64::new(0),
            drops_warned: AtomicU64::new(0),
            last_drop_warn_ms: AtomicU64::new(0),
        });
        let delivery = Delivery {
            client,
            settings,
            rx,
            depth: inner.depth.clone(),
            delivered: counter!(names::WEBHOOK_DELIVERIES, "outcome" => "delivered"),
            retried: counter!(names::WEBHOOK_DELIVERIES, "outcome" => "retried"),
            failed: counter!(names::WEBHOOK_DELIVERIES, "outcome" => "failed"),
            dropped: inner.dropped.clone(),
            closing_at: None,
        };
        tracker.spawn(delivery.run(shutdown));
        Ok(Webhooks { inner: Some(inner) })
    }

    /// Whether events go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues `event` for delivery without waiting. When the queue is full (or the node is
    /// shutting down) the event is dropped and counted in `gamerelay_webhook_events_dropped_total`.
    pub fn emit(&self, event: WebhookEvent) {
        let Some(inner) = &self.inner else { return };
        let n = inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("{}-{n}", inner.incarnation);
        let (room, room_type) = event.room();
        let body = Body {
            id: &id,
            kind: event.kind(),
            time: unix_ms(),
            node: &inner.node,
            room,
            room_type,
            player: event.player(),
            reason: event.reason(),
        };
        let body = match serde_json::to_vec(&body) {
            Ok(body) => body,
            Err(e) => {
                // Unreachable in practice (strings and numbers only); never a panic in a room.
                tracing::error!(error = %e, "cannot encode a webhook event");
                return;
            }
        };
        // Counted before it is queued, so the delivery task never takes the gauge below 0.
        inner.depth.increment(1.0);
        if inner.tx.try_send(Queued { id, kind: event.kind(), body }).is_err() {
            inner.depth.decrement(1.0);
            inner.note_drop();
        }
    }
}

impl Inner {
    /// Counts a dropped event; warns at most every [`DROP_WARN_EVERY`].
    fn note_drop(&self) {
        self.dropped.increment(1);
        let drops = self.drops.fetch_add(1, Ordering::Relaxed) + 1;
        let now = unix_ms();
        let last = self.last_drop_warn_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= DROP_WARN_EVERY.as_millis() as u64
            && self
                .last_drop_warn_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let since = drops - self.drops_warned.swap(drops, Ordering::Relaxed).min(drops);
            tracing::warn!(
                dropped = since,
                total = drops,
                "webhook queue full or closed (the receiver is slow or down, or the node is stopping): events dropped"
            );
        }
    }
}

/// The delivery task's state.
struct Delivery {
    client: reqwest::Client,
    settings: WebhookSettings,
    rx: mpsc::Receiver<Queued>,
    depth: Gauge,
    delivered: Counter,
    retried: Counter,
    failed: Counter,
    dropped: Counter,
    /// Set once the node shuts down: the drain ends then.
    closing_at: Option<Instant>,
}

impl Delivery {
    /// Delivers queued events one at a time, in order, until shutdown (plus the drain).
    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let next = if self.closing_at.is_some() {
                self.rx.recv().await
            } else {
                tokio::select! {
                    biased;
                    next = self.rx.recv() => next,
                    _ = shutdown.cancelled() => {
                        self.begin_drain();
                        continue;
                    }
                }
            };
            let Some(event) = next else { break };
            self.depth.decrement(1.0);
            if self.closing_at.is_some_and(|at| Instant::now() >= at) {
                self.dropped.increment(1);
                continue;
            }
            self.deliver(event, &shutdown).await;
        }
    }

    /// No new events from now on; what is queued gets [`SHUTDOWN_DRAIN`].
    fn begin_drain(&mut self) {
        if self.closing_at.is_none() {
            self.closing_at = Some(Instant::now() + SHUTDOWN_DRAIN);
            self.rx.close();
        }
    }

    /// Delivers one event, retrying with backoff up to `--webhook-max-attempts`.
    async fn deliver(&mut self, event: Queued, shutdown: &CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=self.settings.max_attempts {
            let problem = match self.attempt(&event).await {
                Ok(()) => {
                    self.delivered.increment(1);
                    return;
                }
                Err(problem) => problem,
            };
            if attempt == self.settings.max_attempts {
                self.failed.increment(1);
                tracing::warn!(id = %event.id, event = event.kind, attempts = attempt, %problem, "webhook not delivered; dropped");
                return;
            }
            self.retried.increment(1);
            tracing::debug!(id = %event.id, event = event.kind, attempt, %problem, "webhook delivery failed; retrying");
            let mut wake = Instant::now() + backoff;
            if self.closing_at.is_none() {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake.into()) => {}
                    _ = shutdown.cancelled() => self.begin_drain(),
                }
            }
            if let Some(at) = self.closing_at {
                wake = wake.min(at);
                tokio::time::sleep_until(wake.into()).await;
                if Instant::now() >= at {
                    self.failed.increment(1);
                    tracing::warn!(id = %event.id, event = event.kind, "node shutting down: webhook dropped");
                    return;
                }
            }
            backoff = (backoff * 2).min(self.settings.max_backoff);
        }
    }

    /// One signed POST; `Err` says why it did not count as delivered.
    async fn attempt(&self, event: &Queued) -> Result<(), String> {
        let timestamp = unix_ms() / 1000;
        let signature = sign(&self.settings.secret, timestamp, &event.body);
        let mut timeout = self.settings.timeout;
        if let Some(at) = self.closing_at {
            timeout = timeout.min(at.saturating_duration_since(Instant::now()));
        }
        let started = Instant::now();
        let response = self
            .client
            .post(&self.settings.url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("x-gamerelay-event", event.kind)
            .header("x-gamerelay-id", &event.id)
            .header("x-gamerelay-timestamp", timestamp.to_string())
            .header("x-gamerelay-signature", signature)
            .body(event.body.clone())
            .send()
            .await;
        histogram!(names::WEBHOOK_SECONDS).record(started.elapsed().as_secs_f64());
        match response {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => Err(format!("no answer within {} ms", timeout.as_millis())),
            Err(e) => Err(error_chain(&e)),
        }
    }
}

/// `v1=` + lowercase hex HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`.
pub fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// An error and its sources on one line (reqwest's own message says little: "error sending
/// request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body_in_lowercase_hex() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let sig = sign("Jefe", 0, b"what do ya want for nothing?");
        let expected = {
            let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").expect("key");
            mac.update(b"0.what do ya want for nothing?");
            hex::encode(mac.finalize().into_bytes())
        };
        assert_eq!(sig, format!("v1={expected}"));
        let rfc = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").expect("key");
        mac.update(b"what do ya want for nothing?");
        assert_eq!(hex::encode(mac.finalize().into_bytes()), rfc);
    }

    #[test]
    fn events_carry_their_type_and_only_the_fields_that_apply() {
        let room: Arc<str> = Arc::from("r1");
        let player: Arc<str> = Arc::from("p1");
        let gone = |reason| WebhookEvent::PlayerGone {
            room: room.clone(),
            room_type: "doc",
            player: player.clone(),
            reason,
        };
        assert_eq!(gone(LeaveReason::Left).kind(), "player.left");
        assert_eq!(gone(LeaveReason::Kicked).kind(), "player.left");
        assert_eq!(gone(LeaveReason::Kicked).reason(), Some("kicked"));
        assert_eq!(gone(LeaveReason::TimedOut).kind(), "player.timed_out");
        assert_eq!(gone(LeaveReason::TimedOut).reason(), None);
        let created = WebhookEvent::RoomCreated { room: room.clone(), room_type: "doc" };
        assert_eq!(created.player(), None);
        for kind in WebhookEvent::KINDS {
            assert!(kind.starts_with("room.") || kind.starts_with("player."));
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let settings = WebhookSettings {
            // Nothing listens on port 9 of loopback: every attempt fails fast.
            url: "http://127.0.0.1:9/hook".into(),
            secret: "s".into(),
            queue: 2,
            timeout: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_attempts: 8,
        };
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let hooks = Webhooks::start(settings, "n1", shutdown.clone(), &tracker).expect("client");
        let inner = hooks.inner.clone().expect("enabled");
        let started = Instant::now();
        for _ in 0..100 {
            hooks.emit(WebhookEvent::RoomCreated { room: Arc::from("r"), room_type: "doc" });
        }
        assert!(started.elapsed() < Duration::from_millis(100), "emit never waits");
        // At most the queue (2) and the event in flight were kept.
        assert!(inner.drops.load(Ordering::Relaxed) >= 97, "dropped {}", inner.drops.load(Ordering::Relaxed));
        shutdown.cancel();
        tracker.close();
        tokio::time::timeout(SHUTDOWN_DRAIN + Duration::from_secs(2), tracker.wait())
            .await
            .expect("the delivery task stops within the drain");
    }
}
