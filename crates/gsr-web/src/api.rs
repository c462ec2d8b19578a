//! `/api/v1`: the runner resources as JSON, with their own DTOs, behind the same session
//! cookie as the pages. Calls that change something need the session's CSRF token in
//! `X-CSRF-Token` (from `GET /api/v1/me`).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gsr_store::Runner;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, JsonError};
use crate::pages::parse_id;
use crate::service::{self, FieldErrors, RawInput};
use crate::session::ApiSession;
use crate::WebState;

pub(crate) fn routes() -> Router<WebState> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/me", get(me))
        .route("/runners", get(list).post(create))
        .route("/runners/{id}", get(show).put(update).delete(remove))
        .route("/runners/{id}/jobs", get(jobs))
        .fallback(|| async { JsonError(ApiError::NotFound) })
}

/// `axum::Json` whose rejections (bad JSON, wrong content type, unknown fields) answer in the
/// API's own error shape.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(JsonError))]
struct ApiJson<T>(T);

/// `GET /api/v1/openapi.json`: the API described as OpenAPI 3.1.
async fn openapi() -> Json<serde_json::Value> {
    Json(openapi_document())
}

/// `GET /api/v1/me`.
#[derive(Debug, Serialize, Deserialize)]
pub struct MeDto {
    /// Our user id.
    pub id: String,
    /// GitLab username.
    pub username: String,
    /// GitLab display name.
    pub name: String,
    /// Send as `X-CSRF-Token` on POST/PUT/DELETE.
    pub csrf_token: String,
    /// Runners allowed per user.
    pub max_runners: u32,
}

/// A runner as the API shows it (no token, no webhook secret).
#[derive(Debug, Serialize, Deserialize)]
pub struct RunnerDto {
    /// Our runner id.
    pub id: String,
    /// GitLab's runner id.
    pub gitlab_runner_id: i64,
    /// The GitLab instance.
    pub gitlab_url: String,
    /// Description.
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Runs untagged jobs.
    pub run_untagged: bool,
    /// Locked to its project.
    pub locked: bool,
    /// `not_protected` or `ref_protected`.
    pub access_level: String,
    /// Seconds.
    pub maximum_timeout: Option<i64>,
    /// Paused.
    pub paused: bool,
    /// Backend name.
    pub backend: String,
    /// Concurrent jobs.
    pub concurrency: u32,
    /// Where GitLab's Job Hook goes.
    pub webhook_url: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// `POST /api/v1/runners` reply: the webhook secret is in this one response only.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreatedRunnerDto {
    /// The runner.
    pub runner: RunnerDto,
    /// The webhook's secret token (shown once).
    pub webhook_secret: String,
}

/// A job the control plane claimed for a runner.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobDto {
    /// Our job id.
    pub id: String,
    /// GitLab's job id.
    pub gitlab_job_id: i64,
    /// `claimed`, `running`, `success`, `failed`, `canceled`, `lost`.
    pub status: String,
    /// RFC 3339.
    pub claimed_at: String,
    /// RFC 3339.
    pub started_at: Option<String>,
    /// RFC 3339.
    pub finished_at: Option<String>,
    /// Seconds the job waited in GitLab's queue.
    pub queued_seconds: Option<f64>,
    /// Seconds from claim to start.
    pub pickup_seconds: Option<f64>,
    /// Seconds from start to finish.
    pub run_seconds: Option<f64>,
    /// GitLab failure reason, if failed.
    pub failure_reason: Option<String>,
}

fn default_true() -> bool {
    true
}
fn default_access() -> String {
    "not_protected".into()
}
fn default_backend() -> String {
    "local".into()
}
fn default_concurrency() -> i64 {
    1
}

/// `POST /api/v1/runners` body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRunnerRequest {
    /// GitLab project the runner is for (caller must be Maintainer+).
    pub project_id: i64,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Default true.
    #[serde(default = "default_true")]
    pub run_untagged: bool,
    /// Default false.
    #[serde(default)]
    pub locked: bool,
    /// Default `not_protected`.
    #[serde(default = "default_access")]
    pub access_level: String,
    /// Seconds, at least 600.
    #[serde(default)]
    pub maximum_timeout: Option<i64>,
    /// Default false.
    #[serde(default)]
    pub paused: bool,
    /// Default `local`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Default 1.
    #[serde(default = "default_concurrency")]
    pub concurrency: i64,
}

/// `PUT /api/v1/runners/:id` body; absent fields keep their value.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRunnerRequest {
    /// Description.
    pub description: Option<String>,
    /// Tags.
    pub tags: Option<Vec<String>>,
    /// Runs untagged jobs.
    pub run_untagged: Option<bool>,
    /// Locked.
    pub locked: Option<bool>,
    /// Access level.
    pub access_level: Option<String>,
    /// Seconds; `null` or absent keeps it.
    pub maximum_timeout: Option<i64>,
    /// Paused.
    pub paused: Option<bool>,
    /// Backend.
    pub backend: Option<String>,
    /// Concurrency.
    pub concurrency: Option<i64>,
}

fn dto(st: &WebState, r: Runner) -> RunnerDto {
    RunnerDto {
        id: r.id.to_string(),
        webhook_url: service::webhook_url(st, r.id),
        gitlab_runner_id: r.gitlab_runner_id,
        gitlab_url: r.gitlab_url,
        description: r.description,
        tags: r.tags,
        run_untagged: r.run_untagged,
        locked: r.locked,
        access_level: r.access_level.as_str().into(),
        maximum_timeout: r.maximum_timeout,
        paused: r.paused,
        backend: r.backend,
        concurrency: r.concurrency,
        created_at: r.created_at.to_rfc3339(),
        updated_at: r.updated_at.to_rfc3339(),
    }
}

fn csrf(s: &ApiSession, headers: &HeaderMap) -> Result<(), ApiError> {
    s.0.check_csrf(headers.get("x-csrf-token").and_then(|v| v.to_str().ok()))
}

async fn me(State(st): State<WebState>, s: ApiSession) -> Result<Json<MeDto>, JsonError> {
    let u = st.store.get_user(s.0.user_id()).await?;
    Ok(Json(MeDto {
        id: u.id.to_string(),
        username: u.username,
        name: u.name,
        csrf_token: s.0.csrf.clone(),
        max_runners: st.config.max_runners,
    }))
}

async fn list(
    State(st): State<WebState>,
    s: ApiSession,
) -> Result<Json<Vec<RunnerDto>>, JsonError> {
    let runners = st.store.list_runners(s.0.user_id()).await?;
    Ok(Json(runners.into_iter().map(|r| dto(&st, r)).collect()))
}

async fn show(
    State(st): State<WebState>,
    s: ApiSession,
    Path(id): Path<String>,
) -> Result<Json<RunnerDto>, JsonError> {
    let r = st.store.get_runner(s.0.user_id(), parse_id(&id)?).await?;
    Ok(Json(dto(&st, r)))
}

fn invalid(errors: FieldErrors) -> JsonError {
    JsonError(ApiError::Invalid(errors))
}

async fn create(
    State(st): State<WebState>,
    s: ApiSession,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateRunnerRequest>,
) -> Result<Response, JsonError> {
    csrf(&s, &headers)?;
    let mut errors = FieldErrors::new();
    if req.project_id <= 0 {
        errors.push(("project_id".into(), "a GitLab project id".into()));
    }
    let input = RawInput {
        description: req.description.trim().to_string(),
        tags: req.tags,
        run_untagged: req.run_untagged,
        locked: req.locked,
        access_level: req.access_level,
        maximum_timeout: req.maximum_timeout,
        paused: req.paused,
        backend: req.backend,
        concurrency: req.concurrency,
    }
    .validate(&mut errors);
    let Some(input) = input.filter(|_| errors.is_empty()) else {
        return Err(invalid(errors));
    };
    let created = service::create(&st, s.0.user_id(), req.project_id, input).await?;
    let body = CreatedRunnerDto {
        webhook_secret: created.webhook_secret.expose_secret().to_string(),
        runner: dto(&st, created.runner),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn update(
    State(st): State<WebState>,
    s: ApiSession,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateRunnerRequest>,
) -> Result<Json<RunnerDto>, JsonError> {
    csrf(&s, &headers)?;
    let id = parse_id(&id)?;
    let cur = st.store.get_runner(s.0.user_id(), id).await?;
    let mut errors = FieldErrors::new();
    let input = RawInput {
        description: req.description.unwrap_or(cur.description),
        tags: req.tags.unwrap_or(cur.tags),
        run_untagged: req.run_untagged.unwrap_or(cur.run_untagged),
        locked: req.locked.unwrap_or(cur.locked),
        access_level: req
            .access_level
            .unwrap_or_else(|| cur.access_level.as_str().into()),
        maximum_timeout: req.maximum_timeout.or(cur.maximum_timeout),
        paused: req.paused.unwrap_or(cur.paused),
        backend: req.backend.unwrap_or(cur.backend),
        concurrency: req.concurrency.unwrap_or(i64::from(cur.concurrency)),
    }
    .validate(&mut errors)
    .ok_or_else(|| invalid(errors))?;
    let r = service::update(&st, s.0.user_id(), id, input).await?;
    Ok(Json(dto(&st, r)))
}

async fn remove(
    State(st): State<WebState>,
    s: ApiSession,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, JsonError> {
    csrf(&s, &headers)?;
    service::delete(&st, s.0.user_id(), parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn seconds(d: chrono::TimeDelta) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// `GET /api/v1/runners/:id/jobs`: the newest 100.
async fn jobs(
    State(st): State<WebState>,
    s: ApiSession,
    Path(id): Path<String>,
) -> Result<Json<Vec<JobDto>>, JsonError> {
    let jobs = st
        .store
        .jobs_for_runner(s.0.user_id(), parse_id(&id)?, 100)
        .await?;
    Ok(Json(
        jobs.into_iter()
            .map(|j| JobDto {
                id: j.id.to_string(),
                gitlab_job_id: j.gitlab_job_id,
                status: j.status.as_str().into(),
                claimed_at: j.claimed_at.to_rfc3339(),
                started_at: j.started_at.map(|t| t.to_rfc3339()),
                finished_at: j.finished_at.map(|t| t.to_rfc3339()),
                queued_seconds: j.queued_duration.map(|d| d.as_secs_f64()),
                pickup_seconds: j.started_at.map(|t| seconds(t - j.claimed_at)),
                run_seconds: j.started_at.zip(j.finished_at).map(|(a, b)| seconds(b - a)),
                failure_reason: j.failure_reason,
            })
            .collect(),
    ))
}

/// The OpenAPI document (kept next to the handlers and DTOs it describes; a test checks every
/// path in it answers).
pub fn openapi_document() -> serde_json::Value {
    use serde_json::json;
    let err = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}]);
    let csrf = json!({"name": "X-CSRF-Token", "in": "header", "required": true, "schema": {"type": "string"}, "description": "`csrf_token` from GET /me"});
    let runner_ref = json!({"$ref": "#/components/schemas/Runner"});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "gsr control plane", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Runners of the logged-in user. Authentication: the session cookie set by Login with GitLab (`/auth/login`)."},
        "servers": [{"url": "/api/v1"}],
        "paths": {
            "/me": {"get": {"summary": "Current user and CSRF token", "responses": {
                "200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Me"}}}}, "401": err}}},
            "/runners": {
                "get": {"summary": "List your runners", "responses": {
                    "200": {"description": "ok", "content": {"application/json": {"schema": {"type": "array", "items": runner_ref}}}}, "401": err}},
                "post": {"summary": "Create a runner in GitLab (POST /user/runners) and here", "parameters": [csrf],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateRunner"}}}},
                    "responses": {"201": {"description": "created; `webhook_secret` is returned this once",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreatedRunner"}}}},
                        "400": err, "401": err, "403": err, "409": err, "502": err}}},
            "/runners/{id}": {
                "parameters": id,
                "get": {"summary": "One of your runners", "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": runner_ref}}}, "404": err}},
                "put": {"summary": "Update (synced to GitLab PUT /runners/:id)", "parameters": [csrf],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/UpdateRunner"}}}},
                    "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": runner_ref}}}, "400": err, "403": err, "404": err}},
                "delete": {"summary": "Delete here and in GitLab", "parameters": [csrf], "responses": {"204": {"description": "deleted"}, "403": err, "404": err}}},
            "/runners/{id}/jobs": {"parameters": id, "get": {"summary": "Newest jobs of the runner", "responses": {
                "200": {"description": "ok", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}}}}}, "404": err}}}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}, "fields": {"type": "object", "additionalProperties": {"type": "string"}}}},
            "Me": {"type": "object", "properties": {"id": {"type": "string"}, "username": {"type": "string"}, "name": {"type": "string"}, "csrf_token": {"type": "string"}, "max_runners": {"type": "integer"}}},
            "Runner": {"type": "object", "properties": {
                "id": {"type": "string"}, "gitlab_runner_id": {"type": "integer"}, "gitlab_url": {"type": "string"},
                "description": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
                "run_untagged": {"type": "boolean"}, "locked": {"type": "boolean"},
                "access_level": {"enum": ["not_protected", "ref_protected"]}, "maximum_timeout": {"type": ["integer", "null"]},
                "paused": {"type": "boolean"}, "backend": {"type": "string"}, "concurrency": {"type": "integer"},
                "webhook_url": {"type": "string"}, "created_at": {"type": "string"}, "updated_at": {"type": "string"}}},
            "CreatedRunner": {"type": "object", "properties": {"runner": runner_ref, "webhook_secret": {"type": "string"}}},
            "CreateRunner": {"type": "object", "required": ["project_id"], "additionalProperties": false, "properties": {
                "project_id": {"type": "integer"}, "description": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
                "run_untagged": {"type": "boolean", "default": true}, "locked": {"type": "boolean", "default": false},
                "access_level": {"enum": ["not_protected", "ref_protected"], "default": "not_protected"},
                "maximum_timeout": {"type": "integer", "minimum": 600}, "paused": {"type": "boolean", "default": false},
                "backend": {"enum": ["local"], "default": "local"}, "concurrency": {"type": "integer", "minimum": 1, "maximum": 100, "default": 1}}},
            "UpdateRunner": {"type": "object", "additionalProperties": false, "properties": {
                "description": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
                "run_untagged": {"type": "boolean"}, "locked": {"type": "boolean"},
                "access_level": {"enum": ["not_protected", "ref_protected"]}, "maximum_timeout": {"type": "integer", "minimum": 600},
                "paused": {"type": "boolean"}, "backend": {"enum": ["local"]}, "concurrency": {"type": "integer", "minimum": 1, "maximum": 100}}},
            "Job": {"type": "object", "properties": {
                "id": {"type": "string"}, "gitlab_job_id": {"type": "integer"},
                "status": {"enum": ["claimed", "running", "success", "failed", "canceled", "lost"]},
                "claimed_at": {"type": "string"}, "started_at": {"type": ["string", "null"]}, "finished_at": {"type": ["string", "null"]},
                "queued_seconds": {"type": ["number", "null"]}, "pickup_seconds": {"type": ["number", "null"]},
                "run_seconds": {"type": ["number", "null"]}, "failure_reason": {"type": ["string", "null"]}}}
        }}
    })
}
