//! Runner lifecycle and job pickup: `POST/DELETE /runners`, `/runners/verify`,
//! `/runners/managers`, `/runners/reset_authentication_token` and `POST /jobs/request`.
//!
//! `jobs/request` is modelled in the two layers GitLab has. Workhorse first: when long
//! polling is on and the body carries `token` and `last_update`, it compares `last_update`
//! with the runner's queue value and, if equal, blocks until the value changes or the
//! poll duration ends, then answers 204 itself (only `Gitlab-Ci-Builds-Polling: yes`,
//! no `X-GitLab-Last-Update`) — even when the change was a new job, exactly like
//! Workhorse, so the runner must poll again at once. Otherwise the request reaches
//! "Rails": authenticate, record the manager, paused runners and unchanged queues get 204
//! with `X-GitLab-Last-Update`, and the scheduler runs.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::faults;
use crate::http_util::{json_params, opt_bool, opt_i64, opt_string, req_string, ApiError};
use crate::request_log::{redact, LoggedBody};
use crate::scheduler;
use crate::state::{RunnerRec, SimState};
use crate::types::FaultRoute;
use crate::util::{is_valid_system_id, random_alnum};

/// Workhorse's limit on a long-polled `jobs/request` body.
const MAX_REQUEST_BODY: usize = 32 * 1024;

/// `system_id` of requests that send none (Rails' `LEGACY_SYSTEM_XID`).
pub(crate) const LEGACY_SYSTEM_ID: &str = "<legacy>";

pub(crate) fn routes(state: &SimState) -> Router<SimState> {
    let jobs_request = post(request_job).route_layer(middleware::from_fn_with_state(
        (state.clone(), FaultRoute::JobsRequest),
        faults::guard,
    ));
    Router::new()
        .route("/api/v4/runners", post(register).delete(unregister))
        .route("/api/v4/runners/verify", post(verify))
        .route("/api/v4/runners/managers", delete(delete_manager))
        .route(
            "/api/v4/runners/reset_authentication_token",
            post(reset_token),
        )
        .route("/api/v4/jobs/request", jobs_request)
}

/// Attaches the redacted request body for the request log.
fn logged(mut resp: Response, params: Option<&Map<String, Value>>) -> Response {
    if let Some(params) = params {
        resp.extensions_mut()
            .insert(LoggedBody(redact(Value::Object(params.clone()))));
    }
    resp
}

fn finish(result: Result<Response, ApiError>, params: Option<&Map<String, Value>>) -> Response {
    logged(result.unwrap_or_else(IntoResponse::into_response), params)
}

fn system_id_param(params: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let system_id = opt_string(params, "system_id")?;
    if let Some(id) = &system_id {
        if !is_valid_system_id(id) {
            return Err(ApiError::validation(
                "system_id is invalid (expected s_ or r_ followed by 12 alphanumerics)",
            ));
        }
    }
    Ok(system_id)
}

fn info_param(params: &Map<String, Value>) -> Result<Option<Value>, ApiError> {
    match params.get("info") {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
        Some(_) => Err(ApiError::validation("info is invalid")),
    }
}

/// `tag_list`: a comma separated string or an array of strings.
pub(crate) fn tag_list(params: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let raw: Vec<String> = match params.get("tag_list") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.split(',').map(str::to_string).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::validation("tag_list is invalid"))?,
        Some(_) => return Err(ApiError::validation("tag_list is invalid")),
    };
    let mut tags: Vec<String> = Vec::new();
    for tag in raw.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        if !tags.iter().any(|t| t == tag) {
            tags.push(tag.to_string());
        }
    }
    Ok(tags)
}

/// Rails' runner validations shared by registration and the admin API.
pub(crate) fn check_runner_settings(
    tags: &[String],
    run_untagged: bool,
    access_level: &str,
    maximum_timeout: Option<i64>,
) -> Result<(), ApiError> {
    if !matches!(access_level, "not_protected" | "ref_protected") {
        return Err(ApiError::validation(
            "access_level does not have a valid value",
        ));
    }
    if tags.is_empty() && !run_untagged {
        return Err(ApiError::status(
            StatusCode::BAD_REQUEST,
            "tags_list can not be empty when runner is not allowed to pick untagged jobs",
        ));
    }
    if maximum_timeout.is_some_and(|t| t < 600) {
        return Err(ApiError::status(
            StatusCode::BAD_REQUEST,
            "maximum_timeout needs to be at least 10 minutes",
        ));
    }
    Ok(())
}

/// Parses the JSON parameters, runs `handler`, and logs the (redacted) parameters.
fn with_params(
    headers: &HeaderMap,
    body: &[u8],
    handler: impl FnOnce(&Map<String, Value>) -> Result<Response, ApiError>,
) -> Response {
    match json_params(headers, body) {
        Ok(params) => finish(handler(&params), Some(&params)),
        Err(e) => e.into_response(),
    }
}

async fn register(State(st): State<SimState>, headers: HeaderMap, body: Bytes) -> Response {
    with_params(&headers, &body, |p| register_runner(&st, p))
}

fn register_runner(st: &SimState, params: &Map<String, Value>) -> Result<Response, ApiError> {
    let token = req_string(params, "token")?;
    let description = opt_string(params, "description")?.unwrap_or_default();
    let tags = tag_list(params)?;
    let run_untagged = opt_bool(params, "run_untagged")?.unwrap_or(true);
    let paused = opt_bool(params, "paused")?;
    let active = opt_bool(params, "active")?;
    if paused.is_some() && active.is_some() {
        return Err(ApiError::validation(
            "active, paused are mutually exclusive",
        ));
    }
    opt_bool(params, "locked")?;
    info_param(params)?;
    let access_level =
        opt_string(params, "access_level")?.unwrap_or_else(|| "not_protected".into());
    let maximum_timeout = opt_i64(params, "maximum_timeout")?;
    if token != st.config().registration_token {
        return Err(ApiError::forbidden(""));
    }
    check_runner_settings(&tags, run_untagged, &access_level, maximum_timeout)?;
    let mut db = st.db();
    let id = db.next_runner_id();
    let mut runner = RunnerRec::new(
        id,
        format!("glrtr-{}", random_alnum(20)),
        "registration_token",
    );
    runner.description = description;
    runner.tags = tags;
    runner.run_untagged = run_untagged;
    runner.paused = paused.unwrap_or(false) || active == Some(false);
    runner.access_level = access_level;
    runner.maximum_timeout = maximum_timeout.map(|t| t.unsigned_abs());
    let body = json!({ "id": id, "token": runner.token, "token_expires_at": null });
    db.runners.insert(id, runner);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn verify(State(st): State<SimState>, headers: HeaderMap, body: Bytes) -> Response {
    with_params(&headers, &body, |p| verify_runner(&st, p))
}

fn verify_runner(st: &SimState, params: &Map<String, Value>) -> Result<Response, ApiError> {
    let token = req_string(params, "token")?;
    let system_id = system_id_param(params)?;
    let info = info_param(params)?;
    let mut db = st.db();
    let runner = db
        .runner_by_token_mut(&token)
        .ok_or_else(|| ApiError::forbidden(""))?;
    runner.touch_manager(
        system_id.as_deref().unwrap_or(LEGACY_SYSTEM_ID),
        info.as_ref(),
    );
    let body = json!({ "id": runner.id, "token": runner.token, "token_expires_at": null });
    Ok((StatusCode::OK, Json(body)).into_response())
}

async fn unregister(State(st): State<SimState>, headers: HeaderMap, body: Bytes) -> Response {
    with_params(&headers, &body, |params| {
        let token = req_string(params, "token")?;
        let mut db = st.db();
        let id = db
            .runner_by_token(&token)
            .map(|r| r.id)
            .ok_or_else(|| ApiError::forbidden(""))?;
        db.runners.remove(&id);
        Ok(StatusCode::NO_CONTENT.into_response())
    })
}

async fn delete_manager(State(st): State<SimState>, headers: HeaderMap, body: Bytes) -> Response {
    with_params(&headers, &body, |params| {
        let token = req_string(params, "token")?;
        let system_id = req_string(params, "system_id")?;
        let mut db = st.db();
        let runner = db
            .runner_by_token_mut(&token)
            .ok_or_else(|| ApiError::forbidden(""))?;
        runner
            .managers
            .remove(&system_id)
            .ok_or_else(|| ApiError::not_found("Runner manager"))?;
        Ok(StatusCode::NO_CONTENT.into_response())
    })
}

async fn reset_token(State(st): State<SimState>, headers: HeaderMap, body: Bytes) -> Response {
    with_params(&headers, &body, |params| {
        let token = req_string(params, "token")?;
        let mut db = st.db();
        let runner = db
            .runner_by_token_mut(&token)
            .ok_or_else(|| ApiError::forbidden(""))?;
        let prefix = if runner.token.starts_with("glrtr-") {
            "glrtr-"
        } else {
            "glrt-"
        };
        runner.token = format!("{prefix}{}", random_alnum(20));
        // `token_expires_at` is only exposed for expiring tokens; ours never expire.
        Ok((StatusCode::CREATED, Json(json!({ "token": runner.token }))).into_response())
    })
}

async fn request_job(State(st): State<SimState>, headers: HeaderMap, body: Bytes) -> Response {
    let polling = !st.config().long_poll.is_zero();
    let mut resp = request_job_inner(&st, &headers, &body, polling).await;
    if polling {
        // Workhorse marks every long-polled response.
        resp.headers_mut()
            .insert("gitlab-ci-builds-polling", HeaderValue::from_static("yes"));
    }
    resp
}

async fn request_job_inner(
    st: &SimState,
    headers: &HeaderMap,
    body: &[u8],
    polling: bool,
) -> Response {
    if polling && body.len() > MAX_REQUEST_BODY {
        return ApiError::status(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large")
            .into_response();
    }
    let params = match json_params(headers, body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let parsed = (|| {
        let token = req_string(&params, "token")?;
        let last_update = opt_string(&params, "last_update")?;
        let system_id = system_id_param(&params)?;
        let info = info_param(&params)?;
        Ok::<_, ApiError>((token, last_update, system_id, info))
    })();
    let (token, last_update, system_id, info) = match parsed {
        Ok(p) => p,
        Err(e) => return logged(e.into_response(), Some(&params)),
    };
    if polling {
        if let Some(last_update) = last_update.as_deref().filter(|l| !l.is_empty()) {
            if workhorse_wait(st, &token, last_update).await {
                return logged(StatusCode::NO_CONTENT.into_response(), Some(&params));
            }
        }
    }
    let result = rails_request_job(st, &token, system_id, last_update, info);
    finish(result, Some(&params))
}

/// Workhorse: blocks while the runner's queue value equals `last_update`. Returns true
/// when it waited (Workhorse then answers 204 itself), false when the value already
/// differed (or the token is unknown) and the request goes on to Rails.
async fn workhorse_wait(st: &SimState, token: &str, last_update: &str) -> bool {
    let rx = st.db().runner_by_token(token).map(|r| r.queue.subscribe());
    let Some(mut rx) = rx else {
        return false;
    };
    let unchanged = *rx.borrow_and_update() == last_update;
    if !unchanged {
        return false;
    }
    let duration: Duration = st.config().long_poll;
    tokio::select! {
        _ = tokio::time::timeout(duration, rx.changed()) => {}
        _ = st.shutdown_token().cancelled() => {}
    }
    true
}

fn rails_request_job(
    st: &SimState,
    token: &str,
    system_id: Option<String>,
    last_update: Option<String>,
    info: Option<Value>,
) -> Result<Response, ApiError> {
    let mut db = st.db();
    let runner = db
        .runner_by_token_mut(token)
        .ok_or_else(|| ApiError::forbidden(""))?;
    let system_id = system_id.unwrap_or_else(|| LEGACY_SYSTEM_ID.to_string());
    runner.touch_manager(&system_id, info.as_ref());
    let current = runner.queue_value();
    let no_content = |value: &str| {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        if let Ok(v) = HeaderValue::from_str(value) {
            resp.headers_mut().insert("x-gitlab-last-update", v);
        }
        resp
    };
    if runner.paused {
        return Ok(no_content(&current));
    }
    if last_update.as_deref() == Some(current.as_str()) {
        return Ok(no_content(&current));
    }
    let runner_id = runner.id;
    match scheduler::pick(st, &mut db, runner_id, &system_id) {
        Some(payload) => Ok((StatusCode::CREATED, Json(payload)).into_response()),
        None => Ok(no_content(&current)),
    }
}
