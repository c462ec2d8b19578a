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
use crate::service::{self, FieldErrors, RawInput, RawMode};
use crate::session::ApiSession;
use crate::WebState;

pub(crate) fn routes() -> Router<WebState> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/me", get(me))
        .route("/runners", get(list).post(create))
        .route("/runners/{id}", get(show).put(update).delete(remove))
        .route("/runners/{id}/jobs", get(jobs))
        .route(
            "/runners/{id}/webhook-secret",
            axum::routing::post(new_webhook_secret),
        )
        .fallback(|| async { JsonError(ApiError::NotFound) })
}

/// `axum::Json` whose rejections (bad JSON, wrong content type, unknown fields) answer in the
/// API's own error shape.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(JsonError))]
struct ApiJson<T>(T);

/// `GET /api/v1/openapi.json`: the API described as OpenAPI 3.1.
async fn openapi(State(st): State<WebState>) -> Json<serde_json::Value> {
    Json(openapi_document(&st.backends))
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
    /// GitLab instances allowed for `registration_token` / `runner_token` runners (the
    /// configured one first).
    pub gitlab_urls: Vec<String>,
    /// Backends this server offers.
    pub backends: Vec<String>,
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
    /// How it was created: `user_token`, `registration_token` or `runner_token` (decides
    /// what delete does in GitLab).
    pub registration: String,
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
fn default_concurrency() -> i64 {
    1
}

/// `POST /api/v1/runners` body.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRunnerRequest {
    /// How to get the runner: `user_token` (default: `POST /user/runners` for `project_id`
    /// with the caller's GitLab account), `registration_token` (legacy registration with
    /// `registration_token`) or `runner_token` (an existing `glrt-` token in `runner_token`).
    #[serde(default)]
    pub mode: String,
    /// GitLab project the runner is for (caller must be Maintainer+); `user_token` only.
    #[serde(default)]
    pub project_id: Option<i64>,
    /// For the token modes: one of the GitLab instances this server allows; default: the
    /// configured one.
    #[serde(default)]
    pub gitlab_url: String,
    /// For `registration_token`. A secret: used once, not stored, never returned.
    #[serde(default)]
    pub registration_token: String,
    /// For `runner_token`. A secret: stored encrypted, never returned.
    #[serde(default)]
    pub runner_token: String,
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
    /// Default: the first backend the server offers (`local`).
    #[serde(default)]
    pub backend: String,
    /// Default 1.
    #[serde(default = "default_concurrency")]
    pub concurrency: i64,
}

impl std::fmt::Debug for CreateRunnerRequest {
    /// Tokens redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |t: &str| if t.is_empty() { "" } else { "[redacted]" };
        f.debug_struct("CreateRunnerRequest")
            .field("mode", &self.mode)
            .field("project_id", &self.project_id)
            .field("gitlab_url", &self.gitlab_url)
            .field("registration_token", &redact(&self.registration_token))
            .field("runner_token", &redact(&self.runner_token))
            .field("description", &self.description)
            .field("tags", &self.tags)
            .field("backend", &self.backend)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
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
        registration: service::registration_of(&r).to_string(),
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
        gitlab_urls: st.gitlab_urls(),
        backends: st.backends.as_ref().clone(),
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
    let mode = RawMode {
        mode: req.mode,
        project_id: req.project_id,
        gitlab_url: req.gitlab_url,
        registration_token: req.registration_token,
        runner_token: req.runner_token,
    }
    .validate(&st, &mut errors);
    let input = RawInput {
        description: req.description.trim().to_string(),
        tags: req.tags,
        run_untagged: req.run_untagged,
        locked: req.locked,
        access_level: req.access_level,
        maximum_timeout: req.maximum_timeout,
        paused: req.paused,
        backend: if req.backend.is_empty() {
            st.backends.first().cloned().unwrap_or_default()
        } else {
            req.backend
        },
        concurrency: req.concurrency,
    }
    .validate(&st.backends, &mut errors);
    let (Some(mode), Some(input), true) = (mode, input, errors.is_empty()) else {
        return Err(invalid(errors));
    };
    let created = service::create(&st, s.0.user_id(), mode, input).await?;
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
    .validate(&st.backends, &mut errors)
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

/// `POST /api/v1/runners/:id/webhook-secret` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct WebhookSecretDto {
    /// The new secret (shown once); the old one no longer works.
    pub webhook_secret: String,
}

async fn new_webhook_secret(
    State(st): State<WebState>,
    s: ApiSession,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<WebhookSecretDto>, JsonError> {
    csrf(&s, &headers)?;
    let secret = st
        .store
        .rotate_webhook_secret(s.0.user_id(), parse_id(&id)?)
        .await?;
    Ok(Json(WebhookSecretDto {
        webhook_secret: secret.expose_secret().to_string(),
    }))
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

/// The OpenAPI document for a server offering `backends` (kept next to the handlers and
/// DTOs it describes; a test checks every path in it answers).
pub fn openapi_document(backends: &[String]) -> serde_json::Value {
    use serde_json::json;
    let err = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}]);
    let csrf = json!({"name": "X-CSRF-Token", "in": "header", "required": true, "schema": {"type": "string"}, "description": "`csrf_token` from GET /me"});
    let runner_ref = json!({"$ref": "#/components/schemas/Runner"});
    let modes = json!([
        service::MODE_USER,
        service::MODE_REGISTRATION,
        service::MODE_RUNNER
    ]);
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
                "post": {"summary": "Create a runner: in GitLab with your account (POST /user/runners), with a registration token (POST /runners), or from an existing runner token (POST /runners/verify)",
                    "description": "`mode` picks the way. Tokens sent here are never returned nor logged. Deleting the runner later: `user_token` runners are deleted in GitLab with your account, `registration_token` runners are unregistered with their token (DELETE /runners), `runner_token` runners keep existing in GitLab (only gsr's runner manager is removed, like `gitlab-runner unregister`).",
                    "parameters": [csrf],
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
                "delete": {"summary": "Delete here, and in GitLab as `registration` says (see POST /runners)", "parameters": [csrf], "responses": {"204": {"description": "deleted"}, "403": err, "404": err}}},
            "/runners/{id}/webhook-secret": {"parameters": id, "post": {"summary": "Replace the webhook secret (the old one stops working); the new one is returned this once",
                "parameters": [csrf], "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object", "properties": {"webhook_secret": {"type": "string"}}}}}}, "403": err, "404": err}}},
            "/runners/{id}/jobs": {"parameters": id, "get": {"summary": "Newest jobs of the runner", "responses": {
                "200": {"description": "ok", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}}}}}, "404": err}}}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}, "fields": {"type": "object", "additionalProperties": {"type": "string"}}}},
            "Me": {"type": "object", "properties": {"id": {"type": "string"}, "username": {"type": "string"}, "name": {"type": "string"}, "csrf_token": {"type": "string"}, "max_runners": {"type": "integer"},
                "gitlab_urls": {"type": "array", "items": {"type": "string"}, "description": "GitLab instances allowed for token-created runners, the configured one first"},
                "backends": {"type": "array", "items": {"type": "string"}}}},
            "Runner": {"type": "object", "properties": {
                "id": {"type": "string"}, "gitlab_runner_id": {"type": "integer"}, "gitlab_url": {"type": "string"},
                "registration": {"enum": modes},
                "description": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
                "run_untagged": {"type": "boolean"}, "locked": {"type": "boolean"},
                "access_level": {"enum": ["not_protected", "ref_protected"]}, "maximum_timeout": {"type": ["integer", "null"]},
                "paused": {"type": "boolean"}, "backend": {"type": "string"}, "concurrency": {"type": "integer"},
                "webhook_url": {"type": "string"}, "created_at": {"type": "string"}, "updated_at": {"type": "string"}}},
            "CreatedRunner": {"type": "object", "properties": {"runner": runner_ref, "webhook_secret": {"type": "string"}}},
            "CreateRunner": {"type": "object", "additionalProperties": false, "properties": {
                "mode": {"enum": modes, "default": "user_token"},
                "project_id": {"type": "integer", "description": "required for `user_token`"},
                "gitlab_url": {"type": "string", "description": "`registration_token`/`runner_token`: one of `gitlab_urls` from GET /me; default the configured GitLab"},
                "registration_token": {"type": "string", "writeOnly": true, "description": "required for `registration_token`"},
                "runner_token": {"type": "string", "writeOnly": true, "description": "required for `runner_token` (glrt-…)"},
                "description": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
                "run_untagged": {"type": "boolean", "default": true}, "locked": {"type": "boolean", "default": false},
                "access_level": {"enum": ["not_protected", "ref_protected"], "default": "not_protected"},
                "maximum_timeout": {"type": "integer", "minimum": 600}, "paused": {"type": "boolean", "default": false},
                "backend": {"enum": backends, "default": backends.first()}, "concurrency": {"type": "integer", "minimum": 1, "maximum": 100, "default": 1}}},
            "UpdateRunner": {"type": "object", "additionalProperties": false, "properties": {
                "description": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
                "run_untagged": {"type": "boolean"}, "locked": {"type": "boolean"},
                "access_level": {"enum": ["not_protected", "ref_protected"]}, "maximum_timeout": {"type": "integer", "minimum": 600},
                "paused": {"type": "boolean"}, "backend": {"enum": backends}, "concurrency": {"type": "integer", "minimum": 1, "maximum": 100}}},
            "Job": {"type": "object", "properties": {
                "id": {"type": "string"}, "gitlab_job_id": {"type": "integer"},
                "status": {"enum": ["claimed", "running", "success", "failed", "canceled", "lost"]},
                "claimed_at": {"type": "string"}, "started_at": {"type": ["string", "null"]}, "finished_at": {"type": ["string", "null"]},
                "queued_seconds": {"type": ["number", "null"]}, "pickup_seconds": {"type": ["number", "null"]},
                "run_seconds": {"type": ["number", "null"]}, "failure_reason": {"type": ["string", "null"]}}}
        }}
    })
}
