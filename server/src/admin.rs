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
use tether_proto::{Address, KickReason};
use tokio::sync::oneshot;

use crate::auth::{new_ticket, ticket_hash};
use crate::hub::SessionInfo;
use crate::ids::now_ms;
use crate::pipeline::{Job, Origin};
use crate::session::MAX_ID_LEN;
use crate::store::NewMessage;
use crate::Ctx;

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
        .route_layer(axum::middleware::from_fn_with_state(ctx.clone(), require_admin));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .with_state(ctx)
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

async fn readyz(State(ctx): State<Arc<Ctx>>) -> Response {
    match ctx.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")).into_response(),
    }
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], ctx.metrics.render())
        .into_response()
}

/// Body of `POST /v1/messages`.
#[derive(Debug, Deserialize)]
pub struct PushRequest {
    /// Recipient user id.
    pub to: String,
    /// Sender shown to the recipient (default `"system"`).
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
    let client_msg_id =
        req.client_msg_id.unwrap_or_else(|| format!("admin-{}", hex::encode(rand::random::<[u8; 16]>())));
    check_len("client_msg_id", &client_msg_id)?;
    let ts = now_ms();
    let msg = NewMessage {
        msg_id: ctx.ids.next_at(ts),
        sender: from,
        sender_device: String::new(),
        client_msg_id,
        to: Address::user(req.to.clone()),
        ts,
        content_type: req.content_type.unwrap_or_else(|| "text/plain".into()),
        payload,
    };
    let (tx, rx) = oneshot::channel();
    let unavailable = |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m);
    ctx.pipeline.submit(Job::Send(msg, Origin::Admin(tx))).await.map_err(|e| unavailable(e.to_string()))?;
    let a = rx.await.map_err(|e| unavailable(e.to_string()))?.map_err(unavailable)?;
    let seq = a.recipients.iter().find(|(u, _)| *u == req.to).map(|(_, s)| *s);
    Ok(Json(PushResponse { msg_id: a.msg.msg_id, seq, ts: a.msg.ts, duplicate: a.duplicate }))
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
) -> Json<serde_json::Value> {
    let req = body.map(|b| b.0).unwrap_or_default();
    let n = ctx.hub.kick(&user, req.device_id.as_deref(), KickReason::Admin);
    Json(serde_json::json!({ "user": user, "kicked": n }))
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

async fn sessions(State(ctx): State<Arc<Ctx>>, Path(user): Path<String>) -> Json<SessionsResponse> {
    let sessions = ctx.hub.sessions(&user);
    Json(SessionsResponse { user, online: !sessions.is_empty(), sessions })
}
