//! The admin API: JSON over HTTP for the game's own backend (`docs/ADMIN.md`, OpenAPI in
//! `docs/admin-openapi.json`, also served at `GET /admin/v1/openapi.json`).
//!
//! Owns the HTTP side only: bearer credentials (`--admin-token`), request validation, the
//! mapping of outcomes to status codes and JSON errors. What a command does to a room is the
//! room actor's business ([`crate::room::admin`]); any node answers for any room, because
//! the registry forwards commands to the room's owner. Also serves the public room listing,
//! `GET /rooms?type=T`, which needs no credentials.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics::counter;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::lobby::{new_room_id, Listing, LobbyError, RoomSettings, MAX_METADATA_BYTES};
use crate::protocol::{Doc, ErrorCode, Op};
use crate::room::admin::{AdminCmd, AdminError, AdminReply, RoomView};
use crate::room::{types, Refusal};
use crate::server::Node;
use crate::telemetry::names;

/// The OpenAPI description of the admin API.
pub const OPENAPI: &str = include_str!("../docs/admin-openapi.json");

/// `/admin/v1/...`, behind the bearer check.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/admin/v1/rooms", get(list_all).post(create))
        .route("/admin/v1/rooms/{room}", get(inspect).delete(close))
        .route("/admin/v1/rooms/{room}/ops", post(write))
        .route("/admin/v1/rooms/{room}/kick", post(kick))
        .route("/admin/v1/rooms/{room}/messages", post(message))
        .route("/admin/v1/openapi.json", get(openapi))
        .route_layer(middleware::from_fn_with_state(node.clone(), bearer))
        .with_state(node)
}

/// `GET /rooms?type=T`: the public listing (the HTTP twin of `list_rooms`).
pub fn public_router(node: Arc<Node>) -> Router {
    Router::new().route("/rooms", get(list_public)).with_state(node)
}

/// An error answer: `{"error": {"code", "message"}}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    fn not_live(room: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "room_not_found",
            format!("no node owns room {room} now (never created, closed, disposed, or between owners)"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        let status = match r.code {
            ErrorCode::Unavailable | ErrorCode::Overloaded | ErrorCode::Internal => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::UnknownPlayer => StatusCode::NOT_FOUND,
            ErrorCode::TooManyRooms => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError { status, code: r.code.as_str(), message: r.message }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> ApiError {
        match e {
            AdminError::NotLive => {
                ApiError::new(StatusCode::NOT_FOUND, "room_not_found", "no node owns this room now")
            }
            AdminError::Refused(r) => r.into(),
        }
    }
}

impl From<LobbyError> for ApiError {
    fn from(e: LobbyError) -> ApiError {
        match e {
            LobbyError::Exists(room) => {
                ApiError::new(StatusCode::CONFLICT, "room_exists", format!("room {room} exists"))
            }
            LobbyError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Checks `Authorization: Bearer <token>` against `--admin-token`, in constant time.
async fn bearer(State(node): State<Arc<Node>>, headers: HeaderMap, request: Request, next: Next) -> Response {
    let tokens = &node.config.admin_tokens;
    if tokens.is_empty() {
        counter!(names::ADMIN_REQUESTS, "outcome" => "disabled").increment(1);
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin API is off: start the node with --admin-token",
        )
        .into_response();
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Every configured token is compared, so the time taken does not tell which matched.
    let matched =
        tokens.iter().fold(false, |any, t| any | constant_time_eq(t.as_bytes(), presented.as_bytes()));
    if !matched {
        counter!(names::ADMIN_REQUESTS, "outcome" => "unauthorized").increment(1);
        let mut response =
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token")
                .into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return response;
    }
    let response = next.run(request).await;
    let outcome = if response.status().is_success() { "ok" } else { "error" };
    counter!(names::ADMIN_REQUESTS, "outcome" => outcome).increment(1);
    response
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A room as the admin API shows it: the owner's view, and the lobby's entry if registered.
#[derive(Debug, Serialize)]
struct RoomAnswer {
    #[serde(flatten)]
    view: RoomView,
    /// Seats and settings when the room is listed or private (registered), else null.
    listing: Option<Listing>,
}

async fn answer(node: &Node, view: RoomView) -> ApiResult<RoomAnswer> {
    let listing = node.lobby.get(&view.room_type, &view.room).await?;
    Ok(RoomAnswer { view, listing })
}

/// Sends a command to `room` wherever it is owned; a room no node owns is a 404 naming it.
async fn command(node: &Node, room: &str, cmd: AdminCmd) -> ApiResult<AdminReply> {
    match node.registry.admin(room, cmd).await {
        Err(AdminError::NotLive) => Err(ApiError::not_live(room)),
        other => Ok(other?),
    }
}

/// A room answered with another kind of reply than its command asks for (a bug).
fn unexpected(reply: AdminReply) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected answer {reply:?}"))
}

fn expect_room(reply: AdminReply) -> ApiResult<RoomView> {
    match reply {
        AdminReply::Room(view) => Ok(view),
        other => Err(unexpected(other)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    #[serde(rename = "type")]
    room_type: String,
    /// Generated (`<type>-<12 hex>`) when absent.
    room: Option<String>,
    max_players: Option<u32>,
    #[serde(default)]
    private: bool,
    metadata: Option<Doc>,
}

/// `POST /admin/v1/rooms`: registers the room in the lobby and starts it on this node.
async fn create(
    State(node): State<Arc<Node>>,
    body: Result<Json<CreateRoom>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body?;
    if types::static_name(&req.room_type).is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_room",
            format!("unknown room type {:?}; known: {}", req.room_type, types::ROOM_TYPES.join(", ")),
        ));
    }
    let limit = node.config.max_players_per_room as u32;
    let max_players = req.max_players.unwrap_or(limit);
    if max_players == 0 || max_players > limit {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_value",
            format!("max_players must be 1 to {limit} (--max-players-per-room)"),
        ));
    }
    let metadata = req.metadata.unwrap_or_else(Doc::map);
    if metadata.as_map().is_none() || metadata.encoded_len() > MAX_METADATA_BYTES {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_value",
            format!("metadata must be a JSON object of at most {MAX_METADATA_BYTES} bytes (MessagePack)"),
        ));
    }
    let room = req.room.unwrap_or_else(|| new_room_id(&req.room_type));
    crate::room::registry::validate_room_id(&room)?;
    match node.registry.admin(&room, AdminCmd::Inspect { state: false }).await {
        Ok(_) => {
            return Err(ApiError::new(StatusCode::CONFLICT, "room_exists", format!("room {room} exists")))
        }
        Err(AdminError::NotLive) => {}
        Err(AdminError::Refused(r)) => return Err(r.into()),
    }
    let settings =
        RoomSettings { max_players, private: req.private, metadata, created: crate::session::unix_ms() };
    node.lobby.register(&req.room_type, &room, &settings).await?;
    let view = match node.registry.open(&room, &req.room_type).await {
        Ok(reply) => expect_room(reply)?,
        Err(e) => {
            let _ = node.lobby.remove(&req.room_type, &room).await;
            return Err(e.into());
        }
    };
    Ok((StatusCode::CREATED, Json(answer(&node, view).await?)).into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(rename = "type")]
    room_type: String,
    #[serde(default)]
    private: bool,
}

/// `GET /admin/v1/rooms?type=T[&private=true]`: registered rooms, private ones on request.
async fn list_all(
    State(node): State<Arc<Node>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    known_type(&q.room_type)?;
    let rooms = node.lobby.list(&q.room_type, q.private, node.config.list_rooms_limit).await?;
    Ok(Json(json!({ "type": q.room_type, "rooms": rooms })).into_response())
}

#[derive(Debug, Deserialize)]
struct PublicListQuery {
    #[serde(rename = "type")]
    room_type: String,
}

/// `GET /rooms?type=T`: listed rooms (never private ones), as `list_rooms` answers. Browser
/// pages of other origins may read it (CORS): any origin, or those of --allowed-origin.
async fn list_public(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    query: Result<Query<PublicListQuery>, QueryRejection>,
) -> Response {
    let cors = cors_origin(&node.config.allowed_origins, &headers);
    let mut answer = match query {
        Err(e) => ApiError::from(e).into_response(),
        Ok(Query(q)) => match crate::session::list_rooms(&node, &q.room_type).await {
            Ok(rooms) => Json(json!({ "type": q.room_type, "rooms": rooms })).into_response(),
            Err(refusal) => ApiError::from(refusal).into_response(),
        },
    };
    if let Some(origin) = cors {
        answer.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        answer.headers_mut().insert(header::VARY, header::HeaderValue::from_static("Origin"));
    }
    answer
}

/// The `Access-Control-Allow-Origin` of a public listing: `*` without an allow-list, else
/// the request's `Origin` when it is on the list (none otherwise).
fn cors_origin(allowed: &[String], headers: &HeaderMap) -> Option<header::HeaderValue> {
    if allowed.is_empty() {
        return Some(header::HeaderValue::from_static("*"));
    }
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    allowed.iter().any(|a| a.eq_ignore_ascii_case(text)).then(|| origin.clone())
}

fn known_type(room_type: &str) -> ApiResult<()> {
    match types::static_name(room_type) {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_room",
            format!("unknown room type {room_type:?}"),
        )),
    }
}

#[derive(Debug, Deserialize)]
struct InspectQuery {
    #[serde(default)]
    state: bool,
}

/// `GET /admin/v1/rooms/{room}[?state=true]`.
async fn inspect(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
    query: Result<Query<InspectQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let view = expect_room(command(&node, &room, AdminCmd::Inspect { state: q.state }).await?)?;
    Ok(Json(answer(&node, view).await?).into_response())
}

#[derive(Debug, Deserialize)]
struct CloseQuery {
    reason: Option<String>,
}

/// `DELETE /admin/v1/rooms/{room}[?reason=...]`: members are closed with 4006.
async fn close(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
    query: Result<Query<CloseQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let reason = checked_reason(q.reason)?;
    command(&node, &room, AdminCmd::Close { reason }).await?;
    Ok(Json(json!({ "room": room, "closed": true })).into_response())
}

/// Longest close or kick reason, in bytes (a WebSocket close reason is at most 123 bytes,
/// and the code's name comes first).
pub const MAX_REASON_BYTES: usize = 100;

fn checked_reason(reason: Option<String>) -> ApiResult<String> {
    let reason = reason.unwrap_or_default();
    if reason.len() > MAX_REASON_BYTES {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_value",
            format!("reason is longer than {MAX_REASON_BYTES} bytes"),
        ));
    }
    Ok(reason)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteOps {
    ops: Vec<Op>,
}

/// `POST /admin/v1/rooms/{room}/ops`: `{"ops": [...]}` applied by the owner as one delta.
async fn write(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
    body: Result<Json<WriteOps>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body?;
    match command(&node, &room, AdminCmd::Write { ops: req.ops }).await? {
        AdminReply::Written { epoch, seq } => {
            Ok(Json(json!({ "room": room, "epoch": epoch, "seq": seq })).into_response())
        }
        other => Err(unexpected(other)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KickPlayer {
    player: String,
    reason: Option<String>,
}

/// `POST /admin/v1/rooms/{room}/kick`: `{"player", "reason"?}`; closed with 4004.
async fn kick(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
    body: Result<Json<KickPlayer>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body?;
    let reason = checked_reason(req.reason)?;
    let player = req.player;
    command(&node, &room, AdminCmd::Kick { player: player.clone(), reason }).await?;
    Ok(Json(json!({ "room": room, "player": player, "kicked": true })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendMessage {
    to: Option<String>,
    data: Doc,
}

/// `POST /admin/v1/rooms/{room}/messages`: `{"to"?, "data"}`, a `msg` with `from: nil`.
async fn message(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
    body: Result<Json<SendMessage>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body?;
    if req.data.encoded_len() > node.config.max_frame_bytes {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_value",
            format!("data is larger than --max-frame-bytes ({})", node.config.max_frame_bytes),
        ));
    }
    match command(&node, &room, AdminCmd::Message { to: req.to, data: req.data }).await? {
        AdminReply::Sent { delivered } => {
            Ok(Json(json!({ "room": room, "delivered": delivered })).into_response())
        }
        other => Err(unexpected(other)),
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route [`router`] and [`public_router`] serve, as OpenAPI writes them.
    const ROUTES: [&str; 7] = [
        "/admin/v1/rooms",
        "/admin/v1/rooms/{room}",
        "/admin/v1/rooms/{room}/ops",
        "/admin/v1/rooms/{room}/kick",
        "/admin/v1/rooms/{room}/messages",
        "/admin/v1/openapi.json",
        "/rooms",
    ];

    #[test]
    fn the_openapi_document_and_admin_md_describe_every_route() {
        let spec: serde_json::Value = serde_json::from_str(OPENAPI).expect("docs/admin-openapi.json is JSON");
        let mut paths: Vec<&str> =
            spec["paths"].as_object().expect("paths").keys().map(String::as_str).collect();
        paths.sort_unstable();
        let mut routes = ROUTES.to_vec();
        routes.sort_unstable();
        assert_eq!(paths, routes);
        let prose = include_str!("../docs/ADMIN.md");
        for route in ROUTES {
            assert!(prose.contains(route), "docs/ADMIN.md does not mention {route}");
        }
    }

    #[test]
    fn the_public_listing_is_readable_cross_origin_within_the_allow_list() {
        let mut headers = HeaderMap::new();
        assert_eq!(cors_origin(&[], &headers).as_ref().map(|v| v.as_bytes()), Some(&b"*"[..]));
        let allowed = vec!["https://game.example".to_owned()];
        assert_eq!(cors_origin(&allowed, &headers), None, "no Origin: not a cross-origin read");
        headers.insert(header::ORIGIN, header::HeaderValue::from_static("https://evil.example"));
        assert_eq!(cors_origin(&allowed, &headers), None);
        headers.insert(header::ORIGIN, header::HeaderValue::from_static("https://game.example"));
        assert_eq!(
            cors_origin(&allowed, &headers).as_ref().map(|v| v.as_bytes()),
            Some(&b"https://game.example"[..])
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokeN"));
        assert!(!constant_time_eq(b"secret-token", b"secret-token-longer"));
        assert!(!constant_time_eq(b"secret-token", b""));
    }
}
