//! The admin REST API under `/api`, behind `Authorization: Bearer
//! <WSTRACE_ADMIN_TOKEN>`.
//!
//! Each request is its own trace (the HTTP middleware gives it a server
//! span). A session an admin request touches logs a line in its own trace
//! with a span link back to the request, so the two stories join up.

use axum::extract::{Path, Query, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use super::trace::RequestTrace;
use crate::auth::secret_matches;
use crate::cluster::forward::{forward_debug, kick};
use crate::error::{HttpError, close_code};
use crate::events::{AdminCleanup, AdminClosedSession, AdminTokenRefused, InternalEvent};
use crate::limits::{MAX_DEBUG_MINUTES, MAX_REQUESTED_BY_CHARS};
use crate::protocol;
use crate::routing::{Audience, Delivery, Routed, Sender, SessionView};
use crate::sampling::DebugChange;
use crate::state::ServerState;

pub fn router(state: Arc<ServerState>) -> Router<Arc<ServerState>> {
    Router::new()
        .route("/sessions", get(list_sessions))
        .route("/sessions/{id}", get(get_session).delete(close_session))
        .route(
            "/sessions/{id}/debug",
            post(debug_session).delete(end_debug_session),
        )
        .route("/stats", get(stats))
        .route("/channels", get(channels))
        .route("/send", post(send))
        .route("/broadcast", post(broadcast))
        .route("/cleanup", post(cleanup))
        .route("/logs", get(super::explorer::logs))
        .layer(middleware::from_fn_with_state(state, require_admin_token))
}

async fn require_admin_token(
    State(state): State<Arc<ServerState>>,
    request: Request,
    next: Next,
) -> Result<Response, HttpError> {
    state.metrics.admin_requests.fetch_add(1, Relaxed);
    let Some(expected) = &state.config.admin_token else {
        return Err(HttpError::AdminDisabled);
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !secret_matches(presented, expected) {
        AdminTokenRefused.emit();
        return Err(HttpError::AdminUnauthorized);
    }
    Ok(next.run(request).await)
}

/// The sessions of this instance, or of the whole cluster: every instance's
/// registry entries, with this instance's own sessions live.
async fn list_sessions(State(state): State<Arc<ServerState>>) -> Json<Value> {
    let local: Vec<SessionView> = state
        .hub()
        .sessions()
        .iter()
        .map(|s| state.router.view(&**s))
        .collect();
    let Some(cluster) = state.cluster() else {
        return Json(json!({ "scope": "instance", "count": local.len(), "sessions": local }));
    };
    match cluster.all_sessions().await {
        Ok(registered) => {
            let mut all: BTreeMap<String, SessionView> = registered
                .into_iter()
                .map(|view| (view.session_id.clone(), view))
                .collect();
            all.extend(
                local
                    .into_iter()
                    .map(|view| (view.session_id.clone(), view)),
            );
            let sessions: Vec<_> = all.into_values().collect();
            Json(json!({ "scope": "cluster", "count": sessions.len(), "sessions": sessions }))
        }
        Err(error) => Json(json!({
            "scope": "instance",
            "cluster_error": error.to_string(),
            "count": local.len(),
            "sessions": local,
        })),
    }
}

fn parse_id(id: &str) -> Result<Uuid, HttpError> {
    Uuid::parse_str(id).map_err(|_| HttpError::NotFound("no such session".into()))
}

async fn get_session(
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, HttpError> {
    let session_id = parse_id(&id)?;
    if let Some(session) = state.hub().get(session_id) {
        return Ok(Json(state.router.view(&*session)));
    }
    match state.cluster() {
        Some(cluster) => cluster
            .lookup(session_id)
            .await?
            .map(Json)
            .ok_or_else(|| HttpError::NotFound("no such session".into())),
        None => Err(HttpError::NotFound("no such session".into())),
    }
}

#[derive(Debug, Deserialize)]
struct CloseParams {
    code: Option<u16>,
    reason: Option<String>,
}

async fn close_session(
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
    Query(params): Query<CloseParams>,
) -> Result<Json<Value>, HttpError> {
    let session_id = parse_id(&id)?;
    let code = params.code.unwrap_or(close_code::KICKED);
    if !close_code::operator_may_use(code) {
        return Err(HttpError::BadRequest(
            "code must be 1000, 1001, 1008 or 4000-4999".into(),
        ));
    }
    let reason = params.reason.unwrap_or_else(|| "closed by admin".into());
    if reason.len() > close_code::MAX_REASON_BYTES {
        return Err(HttpError::BadRequest("reason is at most 123 bytes".into()));
    }
    let Some(session) = state.hub().get(session_id) else {
        return close_elsewhere(&state, session_id, code, &reason).await;
    };
    session.admin_touched("close", &current_span_context());
    let decided = session.close_by_admin(code, reason.clone());
    AdminClosedSession {
        session_id,
        code,
        forwarded_to: None,
        from_elsewhere: false,
    }
    .emit();
    Ok(Json(json!({
        "session_id": session_id.to_string(),
        "instance_id": state.instance_id(),
        "code": code,
        "reason": reason,
        "already_closing": !decided,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DebugRequest {
    /// How long every message of the session is traced; then it stops.
    minutes: u32,
    /// Who asks, for the session's log (default: the admin client's
    /// address).
    requested_by: Option<String>,
}

fn requested_by(given: Option<String>, client: &RequestTrace) -> String {
    match given.filter(|s| !s.trim().is_empty()) {
        Some(name) => name.chars().take(MAX_REQUESTED_BY_CHARS).collect(),
        None => format!("admin at {}", client.client.ip),
    }
}

/// `POST /api/sessions/{id}/debug {"minutes": 10}`: trace every message of
/// a live session for a while, on this instance or (cluster mode) the one
/// that holds it.
async fn debug_session(
    State(state): State<Arc<ServerState>>,
    Extension(trace): Extension<RequestTrace>,
    Path(id): Path<String>,
    request: Result<Json<DebugRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, HttpError> {
    let session_id = parse_id(&id)?;
    let Json(request) = request.map_err(|rejection| {
        HttpError::BadRequest(format!(
            "expected {{\"minutes\": 1-{MAX_DEBUG_MINUTES}, \"requested_by\": \"…\"}}: {}",
            rejection.body_text()
        ))
    })?;
    if !(1..=MAX_DEBUG_MINUTES).contains(&request.minutes) {
        return Err(HttpError::BadRequest(format!(
            "minutes must be 1-{MAX_DEBUG_MINUTES}"
        )));
    }
    let by = requested_by(request.requested_by, &trace);
    let change = DebugChange::On {
        minutes: request.minutes,
    };
    switch_debug(&state, session_id, change, &by).await
}

/// `DELETE /api/sessions/{id}/debug`: back to ordinary sampling.
async fn end_debug_session(
    State(state): State<Arc<ServerState>>,
    Extension(trace): Extension<RequestTrace>,
    Path(id): Path<String>,
) -> Result<Json<Value>, HttpError> {
    let session_id = parse_id(&id)?;
    let by = requested_by(None, &trace);
    switch_debug(&state, session_id, DebugChange::Off, &by).await
}

async fn switch_debug(
    state: &ServerState,
    session_id: Uuid,
    change: DebugChange,
    requested_by: &str,
) -> Result<Json<Value>, HttpError> {
    let origin = current_span_context();
    let Some(session) = state.hub().get(session_id) else {
        let not_found = || HttpError::NotFound("no such session".into());
        let cluster = state.cluster().ok_or_else(not_found)?;
        let instance = forward_debug(cluster, session_id, &change, requested_by, &origin)
            .await?
            .ok_or_else(not_found)?;
        return Ok(Json(json!({
            "session_id": session_id.to_string(),
            "instance_id": instance,
            "debug": matches!(change, DebugChange::On { .. }),
            "forwarded": true,
        })));
    };
    let status = session
        .set_debug(change, requested_by, &origin, &state.debug_slots)
        .inspect_err(|_| {
            state.metrics.debug_refused.fetch_add(1, Relaxed);
        })?;
    Ok(Json(json!({
        "session_id": session_id.to_string(),
        "instance_id": state.instance_id(),
        "debug": status.on,
        "debug_reason": status.reason.map(|r| r.as_str()),
        "debug_until_ms": status.until.map(protocol::unix_ms),
        "requested_by": requested_by,
    })))
}

/// A close for a session on another instance, handed over through Redis.
async fn close_elsewhere(
    state: &ServerState,
    session_id: Uuid,
    code: u16,
    reason: &str,
) -> Result<Json<Value>, HttpError> {
    let not_found = || HttpError::NotFound("no such session".into());
    let cluster = state.cluster().ok_or_else(not_found)?;
    let origin = current_span_context();
    let instance = kick(cluster, session_id, code, reason, &origin)
        .await?
        .ok_or_else(not_found)?;
    AdminClosedSession {
        session_id,
        code,
        forwarded_to: Some(&instance),
        from_elsewhere: false,
    }
    .emit();
    Ok(Json(json!({
        "session_id": session_id.to_string(),
        "instance_id": instance,
        "code": code,
        "reason": reason,
        "forwarded": true,
    })))
}

/// This instance's numbers; in cluster mode also every instance's, as each
/// last wrote them to Redis.
async fn stats(State(state): State<Arc<ServerState>>) -> Json<Value> {
    let mut stats = state.instance_stats();
    if let Some(cluster) = state.cluster() {
        let view = match cluster.instance_stats().await {
            Ok(mut instances) => {
                // This instance's own entry, fresh rather than as last written.
                let fresh = crate::cluster::registry::stamped(stats.clone());
                for entry in &mut instances {
                    if entry["instance_id"] == fresh["instance_id"] {
                        *entry = fresh.clone();
                        entry["age_ms"] = 0.into();
                    }
                }
                let sessions: u64 = instances
                    .iter()
                    .filter_map(|i| i["sessions_active"].as_u64())
                    .sum();
                json!({
                    "redis_up": cluster.is_up(),
                    "instances": instances.len(),
                    "sessions_active": sessions,
                    "per_instance": instances,
                })
            }
            Err(error) => json!({ "redis_up": cluster.is_up(), "error": error.to_string() }),
        };
        stats["cluster"] = view;
    }
    Json(stats)
}

async fn channels(State(state): State<Arc<ServerState>>) -> Json<Value> {
    let channels: Vec<_> = state
        .hub()
        .channel_list()
        .into_iter()
        .map(|(channel, subscribers)| json!({ "channel": channel, "subscribers": subscribers }))
        .collect();
    Json(json!({ "count": channels.len(), "channels": channels }))
}

#[derive(Debug, Deserialize)]
struct SendRequest {
    session_id: Option<String>,
    user: Option<String>,
    content: String,
}

async fn send(
    State(state): State<Arc<ServerState>>,
    Json(body): Json<SendRequest>,
) -> Result<Json<Value>, HttpError> {
    let audience = match (&body.session_id, &body.user) {
        (Some(id), _) => Audience::Session(parse_id(id)?),
        (None, Some(user)) => Audience::User(user),
        (None, None) => {
            return Err(HttpError::BadRequest(
                "give \"session_id\" or \"user\"".into(),
            ));
        }
    };
    check_content_size(&state, &body.content)?;
    let delivery = Delivery::new(
        Sender::Admin,
        None,
        body.content,
        current_span_context(),
        true,
    );
    let routed = deliver(&state, audience, &delivery, "send").await;
    if routed.reached_nobody() {
        return Err(match routed.cluster_error {
            Some(error) => error.into(),
            None => HttpError::NotFound("no such session, or no session of that user".into()),
        });
    }
    Ok(report(&delivery, routed))
}

#[derive(Debug, Deserialize)]
struct BroadcastRequest {
    channel: Option<String>,
    content: String,
}

async fn broadcast(
    State(state): State<Arc<ServerState>>,
    Json(body): Json<BroadcastRequest>,
) -> Result<Json<Value>, HttpError> {
    if let Some(channel) = &body.channel
        && !protocol::valid_channel(channel)
    {
        return Err(HttpError::BadRequest("invalid channel name".into()));
    }
    check_content_size(&state, &body.content)?;
    let delivery = Delivery::new(
        Sender::Admin,
        body.channel.clone(),
        body.content,
        current_span_context(),
        true,
    );
    let audience = match &body.channel {
        Some(channel) => Audience::Channel(channel),
        None => Audience::All,
    };
    let routed = deliver(&state, audience, &delivery, "broadcast").await;
    Ok(report(&delivery, routed))
}

/// Admin content obeys the limit a client's message does: a session (here
/// or on another instance) is never sent a frame larger than a client could
/// have caused.
fn check_content_size(state: &ServerState, content: &str) -> Result<(), HttpError> {
    let limit = state.config.limits.max_message_bytes;
    if content.len() > limit {
        return Err(HttpError::ContentTooLarge {
            size: content.len(),
            limit,
        });
    }
    Ok(())
}

#[derive(Debug, Deserialize, Default)]
struct CleanupRequest {
    /// Close sessions silent for at least this long (default 300).
    idle_seconds: Option<u64>,
}

async fn cleanup(
    State(state): State<Arc<ServerState>>,
    body: Option<Json<CleanupRequest>>,
) -> Json<Value> {
    let idle = Duration::from_secs(body.unwrap_or_default().idle_seconds.unwrap_or(300));
    let origin = current_span_context();
    let mut closed = Vec::new();
    for session in state.hub().sessions() {
        if session.idle_for() >= idle {
            session.admin_touched("cleanup", &origin);
            if session.close_by_admin(close_code::CLEANED_UP, "idle session cleaned up".into()) {
                closed.push(session.id().to_string());
            }
        }
    }
    AdminCleanup {
        closed: closed.len(),
        idle_s: idle.as_secs(),
    }
    .emit();
    Json(json!({ "closed": closed.len(), "session_ids": closed }))
}

fn current_span_context() -> SpanContext {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .clone()
}

/// Hands an admin message to its receivers on every instance; each local
/// one records the admin request in its own trace first.
async fn deliver(
    state: &ServerState,
    audience: Audience<'_>,
    delivery: &Arc<Delivery>,
    action: &'static str,
) -> Routed {
    let record =
        |receiver: &dyn crate::routing::Recipient| receiver.admin_touched(action, &delivery.origin);
    let requester = crate::routing::Requester::Admin;
    state
        .router
        .route(audience, delivery, record, requester)
        .await
}

/// What happened: delivered here, and in cluster mode handed to how many
/// other instances and what those that answered in time delivered
/// (`unconfirmed_instances` did not say); `cluster_error` when other
/// instances were not reached.
fn report(delivery: &Delivery, routed: Routed) -> Json<Value> {
    let mut body = json!({
        "message_id": delivery.message_id,
        "delivered": routed.local.delivered + routed.elsewhere.delivered,
        "dropped": routed.local.dropped + routed.elsewhere.dropped,
        "here": { "delivered": routed.local.delivered, "dropped": routed.local.dropped },
        "remote_sessions": routed.remote_sessions,
        "forwarded_to_instances": routed.instances,
        "elsewhere": {
            "delivered": routed.elsewhere.delivered,
            "dropped": routed.elsewhere.dropped,
            "unconfirmed_instances": routed.unconfirmed,
        },
    });
    if let Some(error) = routed.cluster_error {
        body["cluster_error"] = error.to_string().into();
    }
    Json(body)
}
