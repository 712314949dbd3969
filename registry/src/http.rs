//! The HTTP layer: Eureka's REST routes under both `/eureka/` and `/eureka/v2/`, plus `/health`.
//!
//! | route | answer |
//! |---|---|
//! | `POST apps/{app}` (body: instance, XML or JSON) | 204; 400 + reason |
//! | `PUT apps/{app}/{id}?status=&lastDirtyTimestamp=` | 200; 404 = register again |
//! | `DELETE apps/{app}/{id}` | 200; 404 |
//! | `PUT apps/{app}/{id}/status?value=OUT_OF_SERVICE` | 200; 404; 400 bad value |
//! | `DELETE apps/{app}/{id}/status[?value=UP]` | 200; 404 |
//! | `PUT apps/{app}/{id}/metadata?k=v` | 200; 404; 400 bad key |
//! | `GET apps`, `GET apps/delta` | 200 listing |
//! | `GET apps/{app}`, `GET apps/{app}/{id}`, `GET instances/{id}` | 200; 404 |
//! | `GET vips/{vip}`, `GET svips/{svip}` | 200 listing (possibly empty) |
//!
//! Answers are XML unless `Accept` mentions `json` (Eureka's rule; clients such as
//! py-eureka-client send no JSON Accept and parse XML). Errors are plain text.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;

use crate::codec::{self, Format};
use crate::core::{RegistryError, RenewRequest, Renewed};
use crate::model::InstanceStatus;
use crate::replication::{Task, REPLICATION_HEADER};
use crate::service::{now_ms, RegistryState};

/// The routes of `state`: `/eureka/...`, `/eureka/v2/...` and `/health`.
pub fn router(state: RegistryState) -> Router {
    let eureka = || {
        Router::new()
            .route("/apps", get(list_apps))
            .route("/apps/", get(list_apps))
            .route("/apps/delta", get(delta))
            .route("/apps/{app}", post(register).get(get_app))
            .route("/apps/{app}/{id}", get(get_instance).put(renew).delete(cancel))
            .route("/apps/{app}/{id}/status", put(set_status).delete(delete_status))
            .route("/apps/{app}/{id}/metadata", put(update_metadata))
            .route("/instances/{id}", get(instance_by_id))
            .route("/vips/{vip}", get(by_vip))
            .route("/svips/{svip}", get(by_svip))
    };
    let max_body = state.inner.max_body_bytes;
    Router::new()
        .nest("/eureka", eureka())
        .nest("/eureka/v2", eureka())
        .route("/health", get(health))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

fn is_replication(headers: &HeaderMap) -> bool {
    headers.get(REPLICATION_HEADER).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn response_format(headers: &HeaderMap) -> Format {
    Format::from_accept(headers.get(ACCEPT).and_then(|v| v.to_str().ok()))
}

fn body(format: Format, text: String) -> Response {
    ([(CONTENT_TYPE, HeaderValue::from_static(format.content_type()))], text).into_response()
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, [(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))], msg.into()).into_response()
}

fn error(e: &RegistryError) -> Response {
    match e {
        RegistryError::NotFound { .. } | RegistryError::ReRegister { .. } => text(StatusCode::NOT_FOUND, e.to_string()),
        RegistryError::Invalid(v) => text(StatusCode::BAD_REQUEST, v.to_string()),
    }
}

/// `lastDirtyTimestamp` from the query; `Err` is the 400 reason.
fn parse_dirty(q: &HashMap<String, String>) -> Result<Option<u64>, String> {
    match q.get("lastDirtyTimestamp").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| format!("Invalid lastDirtyTimestamp {s:?}")),
    }
}

/// A status query value; `Err` is the 400 reason.
fn parse_status(value: Option<&String>) -> Result<Option<InstanceStatus>, String> {
    match value.map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|e: crate::model::UnknownStatus| e.to_string()),
    }
}

async fn register(State(s): State<RegistryState>, Path(app): Path<String>, headers: HeaderMap, raw: Bytes) -> Response {
    let replicated = is_replication(&headers);
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let Some(format) = Format::of_body(content_type, &raw) else {
        return text(StatusCode::BAD_REQUEST, codec::DecodeError::UnknownFormat.to_string());
    };
    let info = match codec::decode_instance(&raw, format) {
        Ok(i) => i,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("Malformed instance: {e}")),
    };
    if let Err(e) = info.validate_registration(&app) {
        return text(StatusCode::BAD_REQUEST, e.to_string());
    }
    match s.with_registry(|r| r.register(info, replicated, now_ms())) {
        Ok(stored) => {
            tracing::info!(app = %stored.app, id = %stored.instance_id, status = %stored.status, replicated, "registered");
            if !replicated {
                s.replicate(Task::Register(Box::new(stored)));
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => error(&e),
    }
}

async fn renew(
    State(s): State<RegistryState>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let replicated = is_replication(&headers);
    let last_dirty = match parse_dirty(&q) {
        Ok(d) => d,
        Err(reason) => return text(StatusCode::BAD_REQUEST, reason),
    };
    let overridden = q.get("overriddenstatus").map(|v| InstanceStatus::from_lenient(v));
    let req =
        RenewRequest { last_dirty_timestamp: last_dirty, overridden_status: overridden, is_replication: replicated };
    let result = s.with_registry(|r| {
        let res = r.renew(&app, &id, req, now_ms());
        (res, r.instance(&app, &id))
    });
    match result {
        (Ok(outcome), current) => {
            tracing::debug!(%app, %id, replicated, "renewed");
            if let (false, Some(c)) = (replicated, current) {
                s.replicate(Task::Heartbeat {
                    app: c.app,
                    id: c.instance_id,
                    status: c.status,
                    overridden: c.overridden_status,
                    last_dirty: c.last_dirty_timestamp,
                });
            }
            match outcome {
                Renewed::Renewed => StatusCode::OK.into_response(),
                Renewed::OurCopyNewer(info) => {
                    body(response_format(&headers), codec::encode_instance(&info, response_format(&headers)))
                }
            }
        }
        (Err(e), _) => {
            tracing::info!(%app, %id, replicated, reason = %e, "renewal refused");
            error(&e)
        }
    }
}

async fn cancel(
    State(s): State<RegistryState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let replicated = is_replication(&headers);
    match s.with_registry(|r| r.cancel(&app, &id, now_ms())) {
        Ok(gone) => {
            tracing::info!(app = %gone.app, %id, replicated, "cancelled");
            if !replicated {
                s.replicate(Task::Cancel { app: gone.app, id });
            }
            StatusCode::OK.into_response()
        }
        Err(e) => error(&e),
    }
}

async fn set_status(
    State(s): State<RegistryState>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let replicated = is_replication(&headers);
    let status = match parse_status(q.get("value")) {
        Ok(Some(st)) => st,
        Ok(None) => return text(StatusCode::BAD_REQUEST, "Missing value (the new status)"),
        Err(reason) => return text(StatusCode::BAD_REQUEST, reason),
    };
    let last_dirty = match parse_dirty(&q) {
        Ok(d) => d,
        Err(reason) => return text(StatusCode::BAD_REQUEST, reason),
    };
    match s.with_registry(|r| r.set_status_override(&app, &id, status, last_dirty, now_ms())) {
        Ok(info) => {
            tracing::info!(app = %info.app, %id, %status, replicated, "status override set");
            if !replicated {
                s.replicate(Task::StatusUpdate { app: info.app, id, status, last_dirty: info.last_dirty_timestamp });
            }
            StatusCode::OK.into_response()
        }
        Err(e) => error(&e),
    }
}

async fn delete_status(
    State(s): State<RegistryState>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let replicated = is_replication(&headers);
    let value = match parse_status(q.get("value")) {
        Ok(v) => v,
        Err(reason) => return text(StatusCode::BAD_REQUEST, reason),
    };
    let last_dirty = match parse_dirty(&q) {
        Ok(d) => d,
        Err(reason) => return text(StatusCode::BAD_REQUEST, reason),
    };
    match s.with_registry(|r| r.delete_status_override(&app, &id, value, last_dirty, now_ms())) {
        Ok(info) => {
            tracing::info!(app = %info.app, %id, status = %info.status, replicated, "status override removed");
            if !replicated {
                s.replicate(Task::DeleteStatusOverride {
                    app: info.app,
                    id,
                    value,
                    last_dirty: info.last_dirty_timestamp,
                });
            }
            StatusCode::OK.into_response()
        }
        Err(e) => error(&e),
    }
}

async fn update_metadata(
    State(s): State<RegistryState>,
    Path((app, id)): Path<(String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let replicated = is_replication(&headers);
    // A repeated key keeps its first value, as Eureka's `getFirst`.
    let mut seen = std::collections::HashSet::new();
    let entries: Vec<(String, String)> = pairs.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect();
    match s.with_registry(|r| r.update_metadata(&app, &id, entries, now_ms())) {
        Ok(info) => {
            tracing::info!(app = %info.app, %id, replicated, "metadata updated");
            if !replicated {
                // Eureka replicates a metadata change as a registration of the whole instance.
                s.replicate(Task::Register(Box::new(info)));
            }
            StatusCode::OK.into_response()
        }
        Err(e) => error(&e),
    }
}

async fn list_apps(State(s): State<RegistryState>, headers: HeaderMap) -> Response {
    let f = response_format(&headers);
    body(f, codec::encode_applications(&s.with_registry(|r| r.applications()), f))
}

async fn delta(State(s): State<RegistryState>, headers: HeaderMap) -> Response {
    let f = response_format(&headers);
    body(f, codec::encode_applications(&s.with_registry(|r| r.delta(now_ms())), f))
}

async fn get_app(State(s): State<RegistryState>, Path(app): Path<String>, headers: HeaderMap) -> Response {
    let f = response_format(&headers);
    match s.with_registry(|r| r.application(&app)) {
        Some(a) => body(f, codec::encode_application(&a, f)),
        None => text(StatusCode::NOT_FOUND, format!("application {} is not registered", app.to_uppercase())),
    }
}

async fn get_instance(
    State(s): State<RegistryState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let f = response_format(&headers);
    match s.with_registry(|r| r.instance(&app, &id)) {
        Some(i) => body(f, codec::encode_instance(&i, f)),
        None => text(StatusCode::NOT_FOUND, format!("instance {}/{id} is not registered", app.to_uppercase())),
    }
}

async fn instance_by_id(State(s): State<RegistryState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let f = response_format(&headers);
    match s.with_registry(|r| r.instance_by_id(&id)) {
        Some(i) => body(f, codec::encode_instance(&i, f)),
        None => text(StatusCode::NOT_FOUND, format!("instance {id} is not registered")),
    }
}

async fn by_vip(State(s): State<RegistryState>, Path(vip): Path<String>, headers: HeaderMap) -> Response {
    let f = response_format(&headers);
    body(f, codec::encode_applications(&s.with_registry(|r| r.by_vip(&vip)), f))
}

async fn by_svip(State(s): State<RegistryState>, Path(svip): Path<String>, headers: HeaderMap) -> Response {
    let f = response_format(&headers);
    body(f, codec::encode_applications(&s.with_registry(|r| r.by_svip(&svip)), f))
}

async fn health(State(s): State<RegistryState>) -> Response {
    let (apps, instances) = s.with_registry(|r| (r.applications().applications.len(), r.len()));
    let v = serde_json::json!({ "status": "UP", "apps": apps, "instances": instances, "peers": s.peers() });
    body(Format::Json, v.to_string())
}
