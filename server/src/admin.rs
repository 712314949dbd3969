//! Admin HTTP API (see docs/operations.md and docs/admin-api.yaml).
//!
//! `/healthz`, `/readyz` and `/metrics` are open (bind the admin address to a private
//! interface); everything under `/v1` needs `Authorization: Bearer <admin token>`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::{Deserialize, Serialize};
use tether_proto::{Address, AddressKind, KickReason};
use tokio::sync::oneshot;

use crate::auth::{new_ticket, ticket_hash};
use crate::hub::SessionInfo;
use crate::ids::now_ms;
use crate::pipeline::{Job, Origin};
use crate::rooms::RoomError;
use crate::session::MAX_ID_LEN;
use crate::store::faults::FaultStep;
use crate::store::NewMessage;
use crate::Ctx;
use tether_proto::RoomEventKind;

/// An API error: status and a JSON body `{"error": code, "message": ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.code, "message": self.message }))).into_response()
    }
}

/// Builds the admin router.
pub fn router(ctx: Arc<Ctx>) -> Router {
    let v1 = Router::new()
        .route("/v1/messages", post(push))
        .route("/v1/tickets", post(ticket))
        .route("/v1/users/{user}/kick", post(kick))
        .route("/v1/users/{user}/sessions", get(sessions))
        .route("/v1/rooms", post(create_room))
        .route("/v1/rooms/{room}", axum::routing::delete(delete_room))
        .route("/v1/rooms/{room}/members", post(add_member).get(list_members))
        .route("/v1/rooms/{room}/members/{user}", axum::routing::delete(remove_member))
        .route("/v1/rooms/{room}/messages", post(push_room).get(room_history))
        .route("/v1/presence", post(presence))
        .route("/v1/drain", post(drain));
    let v1 = if ctx.cfg.fault_injection { v1.route("/v1/faults", post(inject_fault).delete(clear_faults)) } else { v1 };
    let v1 = v1.route_layer(axum::middleware::from_fn_with_state(ctx.clone(), require_admin));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(axum::middleware::map_response(json_errors))
        .with_state(ctx)
}

/// The `error` code of a status that the framework, not a handler, answered with.
fn status_code_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "invalid_body",
        503 => "unavailable",
        _ => "error",
    }
}

/// Every error leaves the admin API in one shape: a status and `{"error", "message"}`.
/// Handlers build [`ApiError`]s; this turns the framework's own rejections (a body that is not
/// JSON or does not fit, a wrong content type, a query that does not parse, an unknown method)
/// into the same shape.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text };
    let mut out = ApiError::new(status, status_code_name(status), message).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

async fn require_admin(State(ctx): State<Arc<Ctx>>, req: Request, next: Next) -> Result<Response, ApiError> {
    let presented =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if constant_time_eq(t.as_bytes(), ctx.admin_token.as_bytes()) => Ok(next.run(req).await),
        _ => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong admin bearer token")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Longest a readiness check waits for the store (a writer stuck in I/O is not ready).
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

async fn readyz(State(ctx): State<Arc<Ctx>>) -> Response {
    if ctx.draining.load(std::sync::atomic::Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    match tokio::time::timeout(READY_TIMEOUT, ctx.store.ready()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready").into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store: no answer within 2 s").into_response(),
    }
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], ctx.metrics.render())
        .into_response()
}

/// Body of `POST /v1/messages`: a [`PushBody`] and its recipient.
#[derive(Debug, Deserialize)]
pub struct PushRequest {
    /// Recipient user id.
    pub to: String,
    /// The message.
    #[serde(flatten)]
    pub body: PushBody,
}

/// A message pushed by the app's backend (to a user or, `POST /v1/rooms/{room}/messages`, a room).
#[derive(Debug, Deserialize)]
pub struct PushBody {
    /// Sender shown to the recipients (default `"system"`).
    #[serde(default)]
    pub from: Option<String>,
    /// Payload type (default `text/plain`).
    #[serde(default)]
    pub content_type: Option<String>,
    /// UTF-8 payload.
    #[serde(default)]
    pub text: Option<String>,
    /// Binary payload, base64 (standard alphabet).
    #[serde(default)]
    pub payload_base64: Option<String>,
    /// Idempotency key: a retried push with the same `from` and key is stored once.
    #[serde(default)]
    pub client_msg_id: Option<String>,
}

/// Answer of `POST /v1/messages`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PushResponse {
    /// Server-wide message id.
    pub msg_id: u64,
    /// Seq in the recipient's inbox (absent for a duplicate).
    pub seq: Option<u64>,
    /// Server timestamp, ms.
    pub ts: u64,
    /// True when the idempotency key was seen before.
    pub duplicate: bool,
}

fn check_len(what: &str, v: &str) -> Result<(), ApiError> {
    if v.is_empty() || v.len() > MAX_ID_LEN {
        Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", format!("{what} must be 1..={MAX_ID_LEN} bytes")))
    } else {
        Ok(())
    }
}

async fn push(State(ctx): State<Arc<Ctx>>, Json(req): Json<PushRequest>) -> Result<Json<PushResponse>, ApiError> {
    check_len("to", &req.to)?;
    let a = store_message(&ctx, Address::user(req.to), req.body).await?;
    Ok(Json(a))
}

async fn push_room(
    State(ctx): State<Arc<Ctx>>,
    Path(room): Path<String>,
    Json(body): Json<PushBody>,
) -> Result<Json<PushResponse>, ApiError> {
    check_len("room", &room)?;
    Ok(Json(store_message(&ctx, Address::room(room), body).await?))
}

/// Stores and delivers a message pushed by the app's backend.
async fn store_message(ctx: &Ctx, to: Address, req: PushBody) -> Result<PushResponse, ApiError> {
    let from = req.from.unwrap_or_else(|| "system".into());
    check_len("from", &from)?;
    let payload = match (req.text, req.payload_base64) {
        (Some(t), None) => t.into_bytes(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", format!("payload_base64: {e}")))?,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "give exactly one of text, payload_base64",
            ))
        }
    };
    if payload.len() > ctx.cfg.max_frame as usize {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "payload exceeds the max frame size",
        ));
    }
    let content_type = req.content_type.unwrap_or_else(|| "text/plain".into());
    if content_type.len() > MAX_ID_LEN {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            format!("content_type longer than {MAX_ID_LEN} bytes"),
        ));
    }
    let client_msg_id =
        req.client_msg_id.unwrap_or_else(|| format!("admin-{}", hex::encode(rand::random::<[u8; 16]>())));
    check_len("client_msg_id", &client_msg_id)?;
    let ts = now_ms();
    let recipient = to.id.clone();
    let msg = NewMessage {
        msg_id: ctx.ids.next_at(ts),
        sender: from,
        sender_device: String::new(),
        client_msg_id,
        to,
        ts,
        content_type,
        payload,
    };
    let (tx, rx) = oneshot::channel();
    let unavailable = |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m);
    // A room message carries the room's membership to the fan-out.
    let members = match msg.to.kind {
        AddressKind::Room => ctx.rooms.members(&msg.to.id).await.map_err(|e| unavailable(e.to_string()))?,
        _ => None,
    };
    ctx.pipeline.submit(Job::Send(msg, Origin::Admin(tx), members)).await.map_err(|e| unavailable(e.to_string()))?;
    let a = rx.await.map_err(|e| unavailable(e.to_string()))?.map_err(unavailable)?;
    let a = a.map_err(|r| ApiError::new(StatusCode::NOT_FOUND, "no_such_room", r.message))?;
    let seq = if a.msg.to.kind == tether_proto::AddressKind::Room {
        (!a.duplicate).then_some(a.sender_seq)
    } else {
        a.recipients.iter().find(|(u, _)| *u == recipient).map(|(_, s)| *s)
    };
    Ok(PushResponse { msg_id: a.msg.msg_id, seq, ts: a.msg.ts, duplicate: a.duplicate })
}

/// Body of `POST /v1/rooms`.
#[derive(Debug, Deserialize)]
pub struct CreateRoomRequest {
    /// Room id.
    pub room: String,
}

async fn create_room(
    State(ctx): State<Arc<Ctx>>,
    Json(req): Json<CreateRoomRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_len("room", &req.room)?;
    let created = ctx.rooms.create(&req.room, now_ms()).await.map_err(store_err)?;
    Ok(Json(serde_json::json!({ "room": req.room, "created": created })))
}

fn store_err(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string())
}

fn room_err(e: RoomError) -> ApiError {
    match e {
        RoomError::NoSuchRoom(r) => ApiError::new(StatusCode::NOT_FOUND, "no_such_room", format!("no room `{r}`")),
        RoomError::NotAMember(r) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_a_member", format!("not a member of `{r}`"))
        }
        RoomError::Store(e) => store_err(e),
    }
}

async fn delete_room(
    State(ctx): State<Arc<Ctx>>,
    Path(room): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_len("room", &room)?;
    let Some(members) = ctx.rooms.delete(&room).await.map_err(store_err)? else {
        return Err(room_err(RoomError::NoSuchRoom(room)));
    };
    // Tell each former member that they are not one any more.
    for user in &members {
        let event = tether_proto::Frame::RoomEvent(tether_proto::RoomEvent {
            room: room.clone(),
            kind: RoomEventKind::Quit,
            user: user.clone(),
            members: 0,
            online: 0,
        });
        ctx.hub.membership_changed(&room, user, false).await;
        ctx.hub.send_to_users(std::slice::from_ref(user), event).await;
        ctx.webhooks.emit("room.quit", serde_json::json!({ "room": room, "user": user }));
    }
    Ok(Json(serde_json::json!({ "room": room, "deleted": true, "members": members.len() })))
}

/// Body of `POST /v1/rooms/{room}/members`.
#[derive(Debug, Deserialize)]
pub struct AddMemberRequest {
    /// User id.
    pub user: String,
}

async fn add_member(
    State(ctx): State<Arc<Ctx>>,
    Path(room): Path<String>,
    Json(req): Json<AddMemberRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_len("room", &room)?;
    check_len("user", &req.user)?;
    if ctx.rooms.members(&room).await.map_err(store_err)?.is_none() {
        return Err(room_err(RoomError::NoSuchRoom(room)));
    }
    let (added, _) = ctx.rooms.join(&room, &req.user, now_ms()).await.map_err(room_err)?;
    if added {
        ctx.hub.membership_changed(&room, &req.user, true).await;
        ctx.hub.room_event(&room, RoomEventKind::Enter, &req.user, None).await;
        ctx.webhooks.emit("room.entered", serde_json::json!({ "room": room, "user": req.user }));
    }
    Ok(Json(serde_json::json!({ "room": room, "user": req.user, "added": added })))
}

async fn remove_member(
    State(ctx): State<Arc<Ctx>>,
    Path((room, user)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_len("room", &room)?;
    check_len("user", &user)?;
    let removed = ctx.rooms.leave(&room, &user).await.map_err(room_err)?;
    if removed {
        ctx.hub.membership_changed(&room, &user, false).await;
        ctx.hub.room_event(&room, RoomEventKind::Quit, &user, Some(&user)).await;
        ctx.webhooks.emit("room.quit", serde_json::json!({ "room": room, "user": user }));
    }
    Ok(Json(serde_json::json!({ "room": room, "user": user, "removed": removed })))
}

async fn list_members(
    State(ctx): State<Arc<Ctx>>,
    Path(room): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_len("room", &room)?;
    let Some(members) = ctx.rooms.members(&room).await.map_err(store_err)? else {
        return Err(room_err(RoomError::NoSuchRoom(room)));
    };
    let online = ctx.hub.online_among(&members).await;
    let mut list: Vec<serde_json::Value> =
        members.iter().map(|u| serde_json::json!({ "user": u, "online": online.contains(u) })).collect();
    list.sort_by(|a, b| a["user"].as_str().cmp(&b["user"].as_str()));
    let (count, online) = (members.len(), online.len());
    Ok(Json(serde_json::json!({ "room": room, "members": list, "count": count, "online": online })))
}

/// Query of `GET /v1/rooms/{room}/messages`.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    /// Messages with a seq greater than this (default 0).
    #[serde(default)]
    pub after: u64,
    /// At most this many (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

async fn room_history(
    State(ctx): State<Arc<Ctx>>,
    Path(room): Path<String>,
    axum::extract::Query(q): axum::extract::Query<HistoryQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_len("room", &room)?;
    if ctx.rooms.members(&room).await.map_err(store_err)?.is_none() {
        return Err(room_err(RoomError::NoSuchRoom(room)));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", "limit must be 1..=1000"));
    }
    let (entries, first_seq) = ctx.store.fetch_room(&room, q.after, None, limit).await.map_err(store_err)?;
    let next_after = entries.last().map(|e| e.seq);
    let messages: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            let m = &e.msg;
            let mut v = serde_json::json!({
                "seq": e.seq, "msg_id": m.msg_id, "from": m.sender, "from_device": m.sender_device,
                "client_msg_id": m.client_msg_id, "ts": m.ts, "content_type": m.content_type,
            });
            match std::str::from_utf8(&m.payload) {
                Ok(t) if m.content_type.starts_with("text/") => v["text"] = t.into(),
                _ => v["payload_base64"] = base64::engine::general_purpose::STANDARD.encode(&m.payload).into(),
            }
            v
        })
        .collect();
    Ok(Json(serde_json::json!({
        "room": room,
        "messages": messages,
        "first_seq": first_seq,
        "truncated": q.after.saturating_add(1) < first_seq,
        "next_after": next_after,
    })))
}

/// Body of `POST /v1/faults` (nodes started with `--fault-injection` only).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    /// The store step to fail.
    #[serde(default)]
    pub step: Option<FaultStep>,
    /// How many times (default 1).
    #[serde(default)]
    pub times: Option<u32>,
    /// Limit the database to this many pages (a real "database or disk is full"); 0 lifts it.
    #[serde(default)]
    pub max_pages: Option<u64>,
}

async fn inject_fault(
    State(ctx): State<Arc<Ctx>>,
    Json(req): Json<FaultRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if req.step.is_none() && req.max_pages.is_none() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", "give step or max_pages"));
    }
    if let Some(step) = req.step {
        ctx.faults.fail(step, req.times.unwrap_or(1));
    }
    if let Some(pages) = req.max_pages {
        ctx.faults.set_max_pages(pages);
    }
    tracing::warn!(?req, "store fault injected");
    let pending: serde_json::Map<String, serde_json::Value> =
        FaultStep::ALL.iter().map(|s| (s.name().to_owned(), ctx.faults.pending(*s).into())).collect();
    Ok(Json(serde_json::json!({ "pending": pending, "max_pages": ctx.faults.max_pages() })))
}

async fn clear_faults(State(ctx): State<Arc<Ctx>>) -> Json<serde_json::Value> {
    ctx.faults.clear();
    Json(serde_json::json!({ "cleared": true }))
}

/// Body of `POST /v1/presence`.
#[derive(Debug, Deserialize)]
pub struct PresenceRequest {
    /// Users to report (at most 1000).
    pub users: Vec<String>,
}

async fn presence(
    State(ctx): State<Arc<Ctx>>,
    Json(req): Json<PresenceRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if req.users.len() > 1000 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", "at most 1000 users per request"));
    }
    for u in &req.users {
        check_len("users[]", u)?;
    }
    let list: Vec<tether_proto::Presence> = ctx.hub.presence(&req.users).await;
    Ok(Json(serde_json::json!({ "presence": list })))
}

/// Body of `POST /v1/tickets`.
#[derive(Debug, Deserialize)]
pub struct TicketRequest {
    /// The user the ticket logs in.
    pub user: String,
    /// Lifetime in seconds (default: the node's `--ticket-ttl`).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// Longest ticket lifetime the API grants, in seconds (a year).
pub const MAX_TICKET_TTL_SECS: u64 = 365 * 24 * 3600;

/// Answer of `POST /v1/tickets`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TicketResponse {
    /// The one-time ticket.
    pub ticket: String,
    /// Expiry, ms since the Unix epoch.
    pub expires_ms: u64,
}

async fn ticket(State(ctx): State<Arc<Ctx>>, Json(req): Json<TicketRequest>) -> Result<Json<TicketResponse>, ApiError> {
    check_len("user", &req.user)?;
    if req.ttl_secs.is_some_and(|t| t > MAX_TICKET_TTL_SECS) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            format!("ttl_secs must be at most {MAX_TICKET_TTL_SECS} (a year)"),
        ));
    }
    let ttl_ms = req.ttl_secs.map(|s| s.saturating_mul(1000)).unwrap_or(ctx.cfg.ticket_ttl.as_millis() as u64);
    let ticket = new_ticket();
    let expires_ms = now_ms().saturating_add(ttl_ms);
    let started = Instant::now();
    ctx.store
        .create_ticket(&ticket_hash(&ticket), &req.user, expires_ms)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()))?;
    ctx.metrics.store_op("create_ticket", started.elapsed().as_secs_f64());
    Ok(Json(TicketResponse { ticket, expires_ms }))
}

/// `POST /v1/drain`: the node stops taking connections, goes OUT_OF_SERVICE in the registry
/// and tells every session to move to another node (`go_away`).
async fn drain(State(ctx): State<Arc<Ctx>>) -> Json<serde_json::Value> {
    match crate::registration::drain(&ctx).await {
        Some(n) => Json(serde_json::json!({ "draining": true, "sessions_told": n, "already": false })),
        None => Json(serde_json::json!({ "draining": true, "sessions_told": 0, "already": true })),
    }
}

/// Body of `POST /v1/users/{user}/kick`.
#[derive(Debug, Default, Deserialize)]
pub struct KickRequest {
    /// Only this device (default: every session of the user).
    #[serde(default)]
    pub device_id: Option<String>,
}

async fn kick(
    State(ctx): State<Arc<Ctx>>,
    Path(user): Path<String>,
    body: Option<Json<KickRequest>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_len("user", &user)?;
    let req = body.map(|b| b.0).unwrap_or_default();
    if let Some(d) = &req.device_id {
        check_len("device_id", d)?;
    }
    let n = ctx.hub.kick(&user, req.device_id.as_deref(), KickReason::Admin).await;
    Ok(Json(serde_json::json!({ "user": user, "kicked": n })))
}

/// Answer of `GET /v1/users/{user}/sessions`.
#[derive(Debug, Serialize)]
pub struct SessionsResponse {
    /// The user.
    pub user: String,
    /// True when at least one session is live.
    pub online: bool,
    /// Live sessions on this node.
    pub sessions: Vec<SessionInfo>,
}

async fn sessions(State(ctx): State<Arc<Ctx>>, Path(user): Path<String>) -> Result<Json<SessionsResponse>, ApiError> {
    check_len("user", &user)?;
    let sessions = ctx.hub.sessions(&user).await;
    Ok(Json(SessionsResponse { user, online: !sessions.is_empty(), sessions }))
}
