//! Runner management with a user token (PAT or OAuth): `POST /user/runners` and
//! `GET/PUT/DELETE /runners/:id`, `GET /runners` (`lib/api/user_runners.rb`,
//! `lib/api/ci/runners.rb`).
//!
//! These act on the same [`RunnerRec`]s the runner API serves: a runner created here can
//! claim jobs with its `glrt-` token, a tag change re-ticks its queue, and a deleted
//! runner's token gets 403 on `jobs/request`. Access follows GitLab: a user owns the
//! runners of the projects they are Maintainer (40) or Owner (50) of; other project
//! runners answer 403 "No access granted", unknown ids 404, instance runners are readable
//! by anyone but changed only by admins (none here, so 403).

use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::accounts::{authenticate, Caller};
use crate::http_util::{json_params, opt_bool, opt_i64, opt_string, parse_id, ApiError};
use crate::runner_api::{check_runner_settings, tag_list};
use crate::state::{Db, RunnerRec, SimState};
use crate::types::JobStatus;
use crate::util::{random_alnum, rfc3339};

const MAINTAINER: u8 = 40;
/// A runner contacted within this window is `online` (GitLab: 2 hours).
const ONLINE_WINDOW: Duration = Duration::from_secs(7200);

pub(crate) fn routes() -> Router<SimState> {
    Router::new()
        .route("/api/v4/user/runners", post(create))
        .route("/api/v4/runners", get(list))
        .route("/api/v4/runners/{id}", get(show).put(update).delete(remove))
}

fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

const READ_SCOPES: &[&str] = &["api", "read_api", "manage_runner"];
const WRITE_SCOPES: &[&str] = &["api", "manage_runner"];

fn runner_type(r: &RunnerRec) -> &'static str {
    if r.is_instance_runner() {
        "instance_type"
    } else {
        "project_type"
    }
}

/// Whether `user_id` owns (can manage) the runner: Maintainer+ of one of its projects.
fn owns(db: &Db, r: &RunnerRec, user_id: u64) -> bool {
    r.project_ids.as_ref().is_some_and(|ids| {
        ids.iter()
            .any(|p| db.accounts.access_level(*p, user_id) >= MAINTAINER)
    })
}

fn status_of(r: &RunnerRec) -> (&'static str, bool, Option<SystemTime>) {
    let contacted = r.managers.values().map(|m| m.contacted_at).max();
    match contacted {
        None => ("never_contacted", false, None),
        Some(t) => {
            let online = t.elapsed().map_or(true, |e| e < ONLINE_WINDOW);
            (if online { "online" } else { "offline" }, online, Some(t))
        }
    }
}

fn summary(r: &RunnerRec) -> Map<String, Value> {
    let (status, online, _) = status_of(r);
    let v = json!({
        "id": r.id,
        "description": r.description,
        "ip_address": null,
        "active": !r.paused,
        "paused": r.paused,
        "is_shared": r.is_instance_runner(),
        "runner_type": runner_type(r),
        "name": null,
        "online": online,
        "status": status,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn details(db: &Db, r: &RunnerRec) -> Value {
    let mut m = summary(r);
    let (_, _, contacted) = status_of(r);
    let info = r
        .managers
        .values()
        .max_by_key(|m| m.contacted_at)
        .and_then(|m| m.info.clone())
        .unwrap_or(Value::Null);
    let field = |k: &str| info.get(k).cloned().unwrap_or(Value::Null);
    let busy = db.jobs.values().any(|j| {
        j.runner_id == Some(r.id) && matches!(j.status, JobStatus::Running | JobStatus::Canceling)
    });
    let projects: Vec<Value> = r
        .project_ids
        .iter()
        .flatten()
        .filter_map(|id| db.projects.get(id))
        .map(|p| {
            json!({
                "id": p.id,
                "name": p.name,
                "name_with_namespace": format!("{} / {}", p.namespace, p.name),
                "path": p.name,
                "path_with_namespace": p.path,
            })
        })
        .collect();
    let extra = json!({
        "created_at": rfc3339(r.created_at),
        "created_by": r.creator.and_then(|u| db.accounts.users.get(&u)).map(|u| json!({
            "id": u.id, "username": u.username, "name": u.name,
        })),
        "tag_list": r.tags,
        "run_untagged": r.run_untagged,
        "locked": r.locked,
        "maximum_timeout": r.maximum_timeout,
        "access_level": r.access_level,
        "maintenance_note": r.maintenance_note,
        "contacted_at": contacted.map(rfc3339),
        "job_execution_status": if busy { "active" } else { "idle" },
        "version": field("version"),
        "revision": field("revision"),
        "platform": field("platform"),
        "architecture": field("architecture"),
        "projects": projects,
        "groups": [],
    });
    if let Value::Object(e) = extra {
        m.extend(e);
    }
    Value::Object(m)
}

/// Settings shared by create and update, read from the parameters.
#[derive(Default)]
struct Settings {
    description: Option<String>,
    maintenance_note: Option<String>,
    paused: Option<bool>,
    locked: Option<bool>,
    run_untagged: Option<bool>,
    tags: Option<Vec<String>>,
    access_level: Option<String>,
    maximum_timeout: Option<i64>,
}

impl Settings {
    fn read(p: &Map<String, Value>) -> Result<Self, ApiError> {
        let paused = opt_bool(p, "paused")?;
        let active = opt_bool(p, "active")?;
        if paused.is_some() && active.is_some() {
            return Err(ApiError::validation(
                "active, paused are mutually exclusive",
            ));
        }
        let access_level = opt_string(p, "access_level")?;
        if let Some(level) = &access_level {
            if !matches!(level.as_str(), "not_protected" | "ref_protected") {
                return Err(ApiError::validation(
                    "access_level does not have a valid value",
                ));
            }
        }
        Ok(Self {
            description: opt_string(p, "description")?,
            maintenance_note: opt_string(p, "maintenance_note")?
                .or(opt_string(p, "maintainer_note")?),
            paused: paused.or(active.map(|a| !a)),
            locked: opt_bool(p, "locked")?,
            run_untagged: opt_bool(p, "run_untagged")?,
            tags: if p.get("tag_list").is_some_and(|v| !v.is_null()) {
                Some(tag_list(p)?)
            } else {
                None
            },
            access_level,
            maximum_timeout: opt_i64(p, "maximum_timeout")?,
        })
    }

    fn is_empty(&self) -> bool {
        self.description.is_none()
            && self.maintenance_note.is_none()
            && self.paused.is_none()
            && self.locked.is_none()
            && self.run_untagged.is_none()
            && self.tags.is_none()
            && self.access_level.is_none()
            && self.maximum_timeout.is_none()
    }

    /// Applies to a copy of the runner's settings and validates the result first.
    fn apply(self, r: &mut RunnerRec) -> Result<(), ApiError> {
        let tags = self.tags.unwrap_or_else(|| r.tags.clone());
        let run_untagged = self.run_untagged.unwrap_or(r.run_untagged);
        let access_level = self.access_level.unwrap_or_else(|| r.access_level.clone());
        let maximum_timeout = match self.maximum_timeout {
            Some(t) => Some(t),
            None => r
                .maximum_timeout
                .map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
        };
        check_runner_settings(&tags, run_untagged, &access_level, maximum_timeout)?;
        r.tags = tags;
        r.run_untagged = run_untagged;
        r.access_level = access_level;
        r.maximum_timeout = maximum_timeout.map(i64::unsigned_abs);
        if let Some(d) = self.description {
            r.description = d;
        }
        if let Some(n) = self.maintenance_note {
            r.maintenance_note = n;
        }
        if let Some(p) = self.paused {
            r.paused = p;
        }
        if let Some(l) = self.locked {
            r.locked = l;
        }
        Ok(())
    }
}

fn params(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    json_params(headers, body)
}

/// `POST /api/v4/user/runners`.
async fn create(State(st): State<SimState>, headers: HeaderMap, body: Bytes) -> Response {
    respond((|| {
        let caller = authenticate(&st, &headers)?;
        caller.require_scope(&["api", "create_runner"])?;
        let p = params(&headers, &body)?;
        let kind = opt_string(&p, "runner_type")?
            .ok_or_else(|| ApiError::validation("runner_type is missing"))?;
        let settings = Settings::read(&p)?;
        let project_id = match kind.as_str() {
            "project_type" => opt_i64(&p, "project_id")?
                .ok_or_else(|| ApiError::validation("project_id is missing"))?,
            "group_type" => {
                opt_i64(&p, "group_id")?
                    .ok_or_else(|| ApiError::validation("group_id is missing"))?;
                return Err(ApiError::forbidden(""));
            }
            "instance_type" => return Err(ApiError::forbidden("")),
            _ => {
                return Err(ApiError::validation(
                    "runner_type does not have a valid value",
                ))
            }
        };
        let project_id =
            u64::try_from(project_id).map_err(|_| ApiError::validation("project_id is invalid"))?;
        let mut db = st.db();
        if !db.projects.contains_key(&project_id) {
            return Err(ApiError::forbidden(""));
        }
        if db.accounts.access_level(project_id, caller.user_id) < MAINTAINER {
            return Err(ApiError::forbidden(""));
        }
        let id = db.next_runner_id();
        let mut runner = RunnerRec::new(id, format!("glrt-{}", random_alnum(20)), "user_api");
        runner.project_ids = Some(vec![project_id]);
        runner.creator = Some(caller.user_id);
        settings.apply(&mut runner)?;
        let body = json!({ "id": id, "token": runner.token, "token_expires_at": null });
        db.runners.insert(id, runner);
        Ok((StatusCode::CREATED, Json(body)).into_response())
    })())
}

/// `GET /api/v4/runners`: the runners the user owns.
async fn list(State(st): State<SimState>, headers: HeaderMap) -> Response {
    respond((|| {
        let caller = authenticate(&st, &headers)?;
        caller.require_scope(READ_SCOPES)?;
        let db = st.db();
        let runners: Vec<Value> = db
            .runners
            .values()
            .filter(|r| owns(&db, r, caller.user_id))
            .map(|r| Value::Object(summary(r)))
            .collect();
        Ok(Json(runners).into_response())
    })())
}

/// Looks the runner up and applies GitLab's access rule (`write`: update/delete).
fn check_access(db: &Db, caller: &Caller, id: u64, write: bool) -> Result<(), ApiError> {
    let r = db
        .runners
        .get(&id)
        .ok_or_else(|| ApiError::not_found("Runner"))?;
    if owns(db, r, caller.user_id) || (!write && r.is_instance_runner()) {
        return Ok(());
    }
    Err(ApiError::forbidden("No access granted"))
}

async fn show(State(st): State<SimState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    respond((|| {
        let caller = authenticate(&st, &headers)?;
        caller.require_scope(READ_SCOPES)?;
        let id = parse_id(&id)?;
        let db = st.db();
        check_access(&db, &caller, id, false)?;
        let r = db
            .runners
            .get(&id)
            .ok_or_else(|| ApiError::not_found("Runner"))?;
        Ok(Json(details(&db, r)).into_response())
    })())
}

async fn update(
    State(st): State<SimState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    respond((|| {
        let caller = authenticate(&st, &headers)?;
        caller.require_scope(WRITE_SCOPES)?;
        let id = parse_id(&id)?;
        let p = params(&headers, &body)?;
        let settings = Settings::read(&p)?;
        let mut db = st.db();
        check_access(&db, &caller, id, true)?;
        if settings.is_empty() {
            return Err(ApiError::validation(
                "description, active, paused, tag_list, run_untagged, locked, access_level, \
                 maximum_timeout, maintenance_note, maintainer_note are missing, at least one \
                 parameter must be provided",
            ));
        }
        let r = db
            .runners
            .get_mut(&id)
            .ok_or_else(|| ApiError::not_found("Runner"))?;
        settings.apply(r)?;
        // Rails' update service ticks the queue so pollers re-evaluate.
        r.tick();
        let r = db
            .runners
            .get(&id)
            .ok_or_else(|| ApiError::not_found("Runner"))?;
        Ok(Json(details(&db, r)).into_response())
    })())
}

async fn remove(
    State(st): State<SimState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    respond((|| {
        let caller = authenticate(&st, &headers)?;
        caller.require_scope(WRITE_SCOPES)?;
        let id = parse_id(&id)?;
        let mut db = st.db();
        check_access(&db, &caller, id, true)?;
        if db
            .runners
            .get(&id)
            .and_then(|r| r.project_ids.as_ref())
            .is_some_and(|ids| ids.len() > 1)
        {
            return Err(ApiError::forbidden(
                "Runner associated with more than one project",
            ));
        }
        db.runners.remove(&id);
        Ok(StatusCode::NO_CONTENT.into_response())
    })())
}
