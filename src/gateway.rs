//! HTTP routes of a node: `GET /ws` (the WebSocket upgrade), `GET /healthz` (the process
//! is alive), `GET /readyz` (it accepts new players: 503 while draining), `GET /metrics`
//! (Prometheus text), `GET /demo` (the browser arena demo, static files embedded in the
//! binary). Owns the limits checked before the upgrade: connections per node and per client
//! address, and the `Origin` allow-list. Everything after the upgrade belongs to
//! [`crate::session`].
//!
//! With `--ops-listen`, [`ops_router`] serves `/metrics`, `/healthz`, `/readyz` and the admin
//! API on the operator address and the public router no longer serves them. `GET /rooms`
//! (the public room listing) and the admin API live in [`crate::admin`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics::{counter, gauge};

use crate::limits;
use crate::server::Node;
use crate::session;
use crate::telemetry::{self, names};

/// Read buffer of each WebSocket connection: one `read` takes at most this much. It is
/// allocated per connection for its whole life, so it is small: game input frames are
/// tens to hundreds of bytes, and a larger frame is still read, in several reads.
const READ_BUFFER_BYTES: usize = 1024;
/// Frames queued by the writer are written to the socket once this much is buffered (and
/// at every flush). tungstenite keeps its write buffer's capacity at its high-water mark, so
/// this also bounds what a burst (a join's snapshot and presence) leaves allocated.
const WRITE_BUFFER_BYTES: usize = 1024;

/// The node's router.
pub fn router(node: Arc<Node>) -> Router {
    let router = Router::new()
        .route("/ws", get(upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/demo", get(demo_index))
        .route("/demo/", get(demo_index))
        .route("/demo/{file}", get(demo_file));
    let operator_here = node.config.ops_listen.is_none();
    let router = if operator_here { router.route("/metrics", get(metrics_text)) } else { router };
    let router = router.with_state(node.clone()).merge(crate::admin::public_router(node.clone()));
    if operator_here {
        router.merge(crate::admin::router(node))
    } else {
        router
    }
}

/// The operator listener's router (`--ops-listen`).
pub fn ops_router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(node.clone())
        .merge(crate::admin::router(node))
}

async fn upgrade(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if node.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "node is draining; connect to another node")
            .into_response();
    }
    if !origin_allowed(&node.config.allowed_origins, &headers) {
        limits::hit("origin");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let client_ip = limits::client_ip(peer.ip(), forwarded, &node.trusted_proxies);
    let Some(ip_slot) = node.per_ip.acquire(client_ip) else {
        limits::hit("connections_per_ip");
        return (StatusCode::TOO_MANY_REQUESTS, "too many connections from this address").into_response();
    };
    let Some(slot) = node.connection_slot() else {
        counter!(names::CONNECTIONS_REFUSED).increment(1);
        limits::hit("connections");
        return (StatusCode::SERVICE_UNAVAILABLE, "node is at its connection limit").into_response();
    };
    let max = node.config.max_frame_bytes;
    // Small buffers: the defaults (128 KiB each; the read buffer zeroed before reads)
    // dominated memory per connection and CPU (BENCHMARKS.md, sittings A and G).
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            let tracker = node.tracker.clone();
            tracker.track_future(async move {
                counter!(names::CONNECTIONS_OPENED).increment(1);
                gauge!(names::CONNECTIONS).increment(1.0);
                session::run(socket, node, peer).await;
                gauge!(names::CONNECTIONS).decrement(1.0);
                drop(slot);
                drop(ip_slot);
            })
        })
}

/// Whether the request's `Origin` (if any) is allowed: no list allows every origin; a
/// request without `Origin` is not from a browser page and is allowed.
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) => origin.to_str().is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o))),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if !node.backplane.healthy() || node.relay.as_ref().is_some_and(|r| !r.healthy()) {
        (StatusCode::SERVICE_UNAVAILABLE, format!("backplane={} unreachable\n", node.backplane.kind()))
            .into_response()
    } else {
        format!("ready: backplane={}\n", node.backplane.kind()).into_response()
    }
}

async fn metrics_text() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], telemetry::render()).into_response()
}

/// The files of `clients/web-demo`, compiled into the binary so `/demo` works from the
/// binary alone: (name, content type, bytes). The page refers to them as `/demo/<name>`.
const DEMO_FILES: [(&str, &str, &[u8]); 4] = [
    ("index.html", "text/html; charset=utf-8", include_bytes!("../clients/web-demo/index.html")),
    ("demo.js", "text/javascript; charset=utf-8", include_bytes!("../clients/web-demo/demo.js")),
    ("style.css", "text/css; charset=utf-8", include_bytes!("../clients/web-demo/style.css")),
    (
        "gamerelay-client.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../clients/web-demo/gamerelay-client.js"),
    ),
];

fn demo_response(name: &str) -> Response {
    match DEMO_FILES.iter().find(|(file, _, _)| *file == name) {
        Some((_, content_type, bytes)) => {
            ([(header::CONTENT_TYPE, *content_type), (header::CACHE_CONTROL, "no-cache")], *bytes)
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such demo file\n").into_response(),
    }
}

async fn demo_index() -> Response {
    demo_response("index.html")
}

async fn demo_file(Path(file): Path<String>) -> Response {
    demo_response(&file)
}
