//! The admin API under `/-/sim/` (not GitLab's): how tests set the world up and look at
//! what the runner did.
//!
//! It creates runners (as the UI would, with `glrt-` tokens), projects with bare
//! repositories, and jobs from a [`JobSpecInput`]; it shows job state, stored traces and
//! artifacts, runners with their managers and declared features, and the request log; it
//! cancels jobs and queues faults. It also manages project webhooks (job events) and
//! shows and resends their deliveries (see `crate::webhooks`). Everything needs `PRIVATE-TOKEN: <admin token>` (or
//! `Authorization: Bearer <admin token>`).

use std::collections::BTreeSet;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::artifacts::file_response;
use crate::faults;
use crate::http_util::{header_str, parse_id, ApiError};
use crate::repo;
use crate::runner_api::check_runner_settings;
use crate::spec::{self, JobSpecInput};
use crate::state::{JobRec, ProjectRec, RunnerRec, SimState};
use crate::types::{Fault, JobStatus, Project, ProjectHookInput, RunnerCreated, RunnerInput};
use crate::util::random_alnum;
use crate::webhooks;

pub(crate) fn routes(state: &SimState) -> Router<SimState> {
    Router::new()
        .route("/-/sim/runners", post(create_runner))
        .route("/-/sim/runners/{id}", get(get_runner))
        .route("/-/sim/projects", post(create_project).get(list_projects))
        .route("/-/sim/jobs", post(create_job).get(list_jobs))
        .route("/-/sim/jobs/{id}", get(get_job))
        .route("/-/sim/jobs/{id}/trace", get(get_trace))
        .route("/-/sim/jobs/{id}/payload", get(get_payload))
        .route(
            "/-/sim/jobs/{id}/artifacts/{artifact_type}",
            get(get_artifact),
        )
        .route("/-/sim/jobs/{id}/cancel", post(cancel_job))
        .route(
            "/-/sim/faults",
            post(add_fault).get(list_faults).delete(clear_faults),
        )
        .route("/-/sim/requests", get(list_requests).delete(clear_requests))
        .route("/-/sim/projects/{id}/hooks", post(add_hook).get(list_hooks))
        .route(
            "/-/sim/hooks/deliveries",
            get(list_deliveries).delete(clear_deliveries),
        )
        .route(
            "/-/sim/hooks/deliveries/{seq}/resend",
            post(resend_delivery),
        )
        .route("/-/sim/hooks/{id}", get(get_hook).delete(remove_hook))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin))
}

pub(crate) async fn require_admin(
    State(st): State<SimState>,
    req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    let bearer = header_str(headers, "authorization")
        .and_then(|v| v.strip_prefix("Bearer ").map(str::to_string));
    let token = header_str(headers, "private-token").or(bearer);
    if token.as_deref() != Some(st.config().admin_token.as_str()) {
        return ApiError::unauthorized().into_response();
    }
    next.run(req).await
}

type ApiResult = Result<Response, ApiError>;

fn respond(result: ApiResult) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Parses a JSON body; an empty body is `{}`.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
}

fn ok_json<T: serde::Serialize>(status: StatusCode, value: &T) -> ApiResult {
    Ok((status, Json(value)).into_response())
}

async fn create_runner(State(st): State<SimState>, body: Bytes) -> Response {
    respond((|| {
        let input: RunnerInput = parse(&body)?;
        let maximum_timeout = input
            .maximum_timeout
            .map(|t| i64::try_from(t).unwrap_or(i64::MAX));
        check_runner_settings(
            &input.tags,
            input.run_untagged,
            &input.access_level,
            maximum_timeout,
        )?;
        let mut db = st.db();
        if let Some(ids) = &input.project_ids {
            if let Some(missing) = ids.iter().find(|id| !db.projects.contains_key(id)) {
                return Err(ApiError::bad_request(format!(
                    "project {missing} does not exist"
                )));
            }
        }
        let id = db.next_runner_id();
        let mut runner = RunnerRec::new(id, format!("glrt-{}", random_alnum(20)), "ui");
        runner.description = input.description;
        runner.tags = input
            .tags
            .into_iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        runner.run_untagged = input.run_untagged;
        runner.paused = input.paused;
        runner.access_level = input.access_level;
        runner.maximum_timeout = input.maximum_timeout;
        runner.project_ids = input.project_ids;
        let created = RunnerCreated {
            id,
            token: runner.token.clone(),
        };
        db.runners.insert(id, runner);
        ok_json(StatusCode::CREATED, &created)
    })())
}

async fn get_runner(State(st): State<SimState>, Path(id): Path<String>) -> Response {
    respond((|| {
        let id = parse_id(&id)?;
        let db = st.db();
        let runner = db
            .runners
            .get(&id)
            .ok_or_else(|| ApiError::not_found("Runner"))?;
        ok_json(StatusCode::OK, &runner.view())
    })())
}

#[derive(Deserialize)]
struct ProjectInput {
    path: String,
}

fn project_view(st: &SimState, p: &ProjectRec) -> Project {
    Project {
        id: p.id,
        path: p.path.clone(),
        http_url: format!("{}/{}.git", st.url(), p.path),
    }
}

async fn create_project(State(st): State<SimState>, body: Bytes) -> Response {
    respond(create_project_inner(&st, &body).await)
}

async fn create_project_inner(st: &SimState, body: &[u8]) -> ApiResult {
    let input: ProjectInput = parse(body)?;
    let path = input.path.trim_matches('/').to_string();
    let (namespace, name) = repo::split_project_path(&path).map_err(ApiError::bad_request)?;
    let taken = |st: &SimState| st.db().projects.values().any(|p| p.path == path);
    if taken(st) {
        return Err(ApiError::bad_request(format!(
            "path {path} has already been taken"
        )));
    }
    repo::init_bare(&st.repo_dir(&path))
        .await
        .map_err(|e| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let mut db = st.db();
    if db.projects.values().any(|p| p.path == path) {
        return Err(ApiError::bad_request(format!(
            "path {path} has already been taken"
        )));
    }
    let id = db.next_project_id();
    let namespace_id = db.namespace_id(&namespace);
    let root = namespace.split('/').next().unwrap_or_default().to_string();
    let root_namespace_id = db.namespace_id(&root);
    let project = ProjectRec {
        id,
        path,
        namespace,
        name,
        namespace_id,
        root_namespace_id,
        pipelines: 0,
    };
    let view = project_view(st, &project);
    db.projects.insert(id, project);
    ok_json(StatusCode::CREATED, &view)
}

async fn list_projects(State(st): State<SimState>) -> Response {
    let db = st.db();
    let projects: Vec<Project> = db.projects.values().map(|p| project_view(&st, p)).collect();
    respond(ok_json(StatusCode::OK, &projects))
}

async fn create_job(State(st): State<SimState>, body: Bytes) -> Response {
    respond(create_job_inner(&st, &body).await)
}

async fn create_job_inner(st: &SimState, body: &[u8]) -> ApiResult {
    let input: JobSpecInput = parse(body)?;
    let project_id = input.project_id;
    // Project and dependencies; a job joins the pipeline of its dependencies.
    let (project_path, dep_pipeline) = {
        let db = st.db();
        let project = db
            .projects
            .get(&project_id)
            .ok_or_else(|| ApiError::not_found("Project"))?;
        let mut pipelines = BTreeSet::new();
        let mut dep_pipeline = None;
        for dep_id in &input.dependencies {
            let dep = db.jobs.get(dep_id).ok_or_else(|| {
                ApiError::bad_request(format!("dependency {dep_id} does not exist"))
            })?;
            if dep.project_id != project.id {
                return Err(ApiError::bad_request(format!(
                    "dependency {dep_id} belongs to another project"
                )));
            }
            pipelines.insert(dep.pipeline_id);
            dep_pipeline = Some((dep.pipeline_id, dep.pipeline_iid, dep.pipeline_ref_created));
        }
        if pipelines.len() > 1 {
            return Err(ApiError::bad_request(
                "dependencies belong to different pipelines",
            ));
        }
        (project.path.clone(), dep_pipeline)
    };
    let repo_dir = st.repo_dir(&project_path);
    let git_ref = spec::default_ref(input.git_ref.as_deref());
    let facts = repo::facts(&repo_dir, &git_ref, input.sha.as_deref()).await;
    let def = spec::validate(input, facts).map_err(ApiError::bad_request)?;

    let (pipeline_id, pipeline_iid, pipeline_ref_created) = match dep_pipeline {
        Some(existing) => existing,
        None => {
            let (pipeline_id, iid) = {
                let mut db = st.db();
                let pipeline_id = db.next_pipeline_id();
                let iid = db.projects.get_mut(&project_id).map_or(1, |p| {
                    p.pipelines += 1;
                    p.pipelines
                });
                (pipeline_id, iid)
            };
            let created = repo::create_pipeline_ref(&repo_dir, pipeline_id, &def.sha).await;
            (pipeline_id, iid, created)
        }
    };

    let mut db = st.db();
    let id = db.next_job_id();
    let token = db.new_job_token();
    let now = SystemTime::now();
    let waits = !def.dependencies.is_empty();
    db.jobs.insert(
        id,
        JobRec {
            id,
            token: token.clone(),
            project_id,
            pipeline_id,
            pipeline_iid,
            pipeline_ref_created,
            def,
            status: JobStatus::Created,
            failure_reason: None,
            exit_code: None,
            runner_id: None,
            manager: None,
            awaiting_ack: false,
            acknowledged: false,
            created_at: now,
            queued_at: now,
            enqueued_at: None,
            started_at: None,
            finished_at: None,
            trace: Vec::new(),
            reported_checksum: None,
            reported_bytesize: None,
            final_update_attempts: 0,
            keepalive_count: 0,
            pending_keepalive_count: 0,
            artifacts: Default::default(),
            payload: None,
        },
    );
    // Every build is created, then enqueued unless it waits for earlier jobs: two
    // events, as in Rails.
    db.job_event(id);
    if waits {
        db.settle_created_jobs();
    } else {
        db.enqueue_job(id);
        db.tick_runners_for(id);
    }
    ok_json(StatusCode::CREATED, &json!({ "id": id, "token": token }))
}

async fn list_jobs(State(st): State<SimState>) -> Response {
    let db = st.db();
    let jobs: Vec<_> = db.jobs.values().map(JobRec::view).collect();
    respond(ok_json(StatusCode::OK, &jobs))
}

async fn get_job(State(st): State<SimState>, Path(id): Path<String>) -> Response {
    respond((|| {
        let id = parse_id(&id)?;
        let db = st.db();
        let job = db.jobs.get(&id).ok_or_else(|| ApiError::not_found("Job"))?;
        ok_json(StatusCode::OK, &job.view())
    })())
}

async fn get_trace(State(st): State<SimState>, Path(id): Path<String>) -> Response {
    respond((|| {
        let id = parse_id(&id)?;
        let db = st.db();
        let job = db.jobs.get(&id).ok_or_else(|| ApiError::not_found("Job"))?;
        let mut resp = job.trace.clone().into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok(resp)
    })())
}

async fn get_payload(State(st): State<SimState>, Path(id): Path<String>) -> Response {
    respond((|| {
        let id = parse_id(&id)?;
        let db = st.db();
        let job = db.jobs.get(&id).ok_or_else(|| ApiError::not_found("Job"))?;
        let payload = job
            .payload
            .clone()
            .ok_or_else(|| ApiError::not_found("Payload (job not picked yet)"))?;
        ok_json(StatusCode::OK, &payload)
    })())
}

async fn get_artifact(
    State(st): State<SimState>,
    Path((id, artifact_type)): Path<(String, String)>,
) -> Response {
    let found = (|| {
        let id = parse_id(&id)?;
        let db = st.db();
        let job = db.jobs.get(&id).ok_or_else(|| ApiError::not_found("Job"))?;
        let artifact = job
            .artifacts
            .get(&artifact_type)
            .ok_or_else(|| ApiError::not_found("Artifact"))?;
        Ok::<_, ApiError>((
            artifact.path.clone(),
            artifact.size,
            artifact.filename.clone(),
        ))
    })();
    let result = match found {
        Ok((path, size, filename)) => file_response(&path, size, &filename).await,
        Err(e) => Err(e),
    };
    respond(result)
}

async fn cancel_job(State(st): State<SimState>, Path(id): Path<String>) -> Response {
    respond((|| {
        let id = parse_id(&id)?;
        let mut db = st.db();
        let job = db.jobs.get(&id).ok_or_else(|| ApiError::not_found("Job"))?;
        let status = job.status;
        let graceful = job
            .runner_id
            .zip(job.manager.as_deref())
            .and_then(|(runner, manager)| {
                db.runners
                    .get(&runner)
                    .map(|r| r.manager_has_feature(manager, "cancel_gracefully"))
            })
            .unwrap_or(false);
        match status {
            JobStatus::Running if graceful => {
                if let Some(job) = db.jobs.get_mut(&id) {
                    job.status = JobStatus::Canceling;
                }
                db.job_event(id);
            }
            JobStatus::Created | JobStatus::Pending | JobStatus::Running | JobStatus::Canceling => {
                db.finish_job(id, JobStatus::Canceled, None);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "job {id} is not cancelable (status {other})"
                )))
            }
        }
        let view = db.jobs.get(&id).map(JobRec::view);
        ok_json(StatusCode::OK, &view)
    })())
}

async fn add_fault(State(st): State<SimState>, body: Bytes) -> Response {
    respond((|| {
        let fault: Fault = parse(&body)?;
        faults::validate(&fault).map_err(ApiError::bad_request)?;
        let mut db = st.db();
        db.faults.push(fault);
        ok_json(StatusCode::CREATED, &db.faults.list())
    })())
}

async fn list_faults(State(st): State<SimState>) -> Response {
    let faults = st.db().faults.list();
    respond(ok_json(StatusCode::OK, &faults))
}

async fn clear_faults(State(st): State<SimState>) -> Response {
    st.db().faults.clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn list_requests(State(st): State<SimState>) -> Response {
    let entries = st.db().requests.all();
    respond(ok_json(StatusCode::OK, &entries))
}

async fn clear_requests(State(st): State<SimState>) -> Response {
    st.db().requests.clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn add_hook(State(st): State<SimState>, Path(id): Path<String>, body: Bytes) -> Response {
    respond((|| {
        let project_id = parse_id(&id)?;
        let input: ProjectHookInput = parse(&body)?;
        let url = reqwest::Url::parse(&input.url)
            .map_err(|e| ApiError::bad_request(format!("url is invalid: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ApiError::bad_request(
                "url is blocked: only http and https URLs are allowed",
            ));
        }
        if let Some(token) = &input.token {
            HeaderValue::from_str(token).map_err(|_| ApiError::bad_request("token is invalid"))?;
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let hook_id = {
            let mut db = st.db();
            if !db.projects.contains_key(&project_id) {
                return Err(ApiError::not_found("Project"));
            }
            db.webhooks.add(project_id, input, tx)
        };
        tokio::spawn(webhooks::run_worker(st.clone(), rx));
        ok_json(StatusCode::CREATED, &json!({ "id": hook_id }))
    })())
}

async fn list_hooks(State(st): State<SimState>, Path(id): Path<String>) -> Response {
    respond((|| {
        let project_id = parse_id(&id)?;
        let db = st.db();
        if !db.projects.contains_key(&project_id) {
            return Err(ApiError::not_found("Project"));
        }
        ok_json(StatusCode::OK, &db.webhooks.views_of_project(project_id))
    })())
}

async fn get_hook(State(st): State<SimState>, Path(id): Path<String>) -> Response {
    respond((|| {
        let id = parse_id(&id)?;
        let view = st
            .db()
            .webhooks
            .view(id)
            .ok_or_else(|| ApiError::not_found("Hook"))?;
        ok_json(StatusCode::OK, &view)
    })())
}

async fn remove_hook(State(st): State<SimState>, Path(id): Path<String>) -> Response {
    respond((|| {
        let id = parse_id(&id)?;
        if !st.db().webhooks.remove(id) {
            return Err(ApiError::not_found("Hook"));
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    })())
}

async fn list_deliveries(State(st): State<SimState>) -> Response {
    let deliveries = st.db().webhooks.deliveries();
    respond(ok_json(StatusCode::OK, &deliveries))
}

async fn clear_deliveries(State(st): State<SimState>) -> Response {
    st.db().webhooks.clear_deliveries();
    StatusCode::NO_CONTENT.into_response()
}

/// GitLab's "Resend request": sends now, answers with the new log entry.
async fn resend_delivery(State(st): State<SimState>, Path(seq): Path<String>) -> Response {
    let delivery = (|| {
        let seq = parse_id(&seq)?;
        st.db().webhooks.resend_of(seq).map_err(ApiError::not_found)
    })();
    let result = match delivery {
        Ok(delivery) => {
            let entries = webhooks::execute(&st, &webhooks::http_client(), &delivery).await;
            match entries.into_iter().next() {
                Some(entry) => ok_json(StatusCode::CREATED, &entry),
                None => Err(ApiError::not_found("Hook")),
            }
        }
        Err(e) => Err(e),
    };
    respond(result)
}
