//! `PUT /api/v4/jobs/:id`: keep-alives, the two-phase acknowledgement and final states
//! (Rails' `Ci::UpdateBuildStateService`).
//!
//! Behaviour, following the protocol sheet §2.6 and §3.3:
//! - the body must carry `token` (Grape `requires :token`); a wrong token or an unknown
//!   job is a bare 403, a job that is not processing is 403 with `Job-Status`;
//! - while waiting for the two-phase acknowledgement: `pending` is a keep-alive (200),
//!   `running` starts the job (200), anything else is 400;
//! - while running or canceling: `running` touches the job (200), `success`/`failed` end
//!   it (200; a `canceling` job ends `canceled`; unknown failure reasons become
//!   `unknown_failure`), anything else is 400;
//! - every answer carries `Job-Status`, and the body is the status code as text.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::Router;
use serde_json::{Map, Value};
use std::time::SystemTime;

use crate::faults::{self, FaultNote};
use crate::http_util::{json_params, opt_i64, opt_string, parse_id, req_string, ApiError};
use crate::spec::FAILURE_REASONS;
use std::collections::BTreeMap;

use crate::state::{JobRec, SimState};
use crate::types::{FaultKind, FaultRoute, JobStatus};

pub(crate) fn routes(state: &SimState) -> Router<SimState> {
    Router::new().route(
        "/api/v4/jobs/{id}",
        put(update_job).route_layer(middleware::from_fn_with_state(
            (state.clone(), FaultRoute::UpdateJob),
            faults::guard,
        )),
    )
}

/// Rails' `authenticate_job!`: an unknown job or a token that is not the job's own is a
/// bare 403; a job that is not processing is 403 with `Job-Status`. Only `PUT /jobs/:id`
/// passes `allow_awaiting_ack`, admitting a job that waits for its two-phase
/// acknowledgement.
pub(crate) fn authenticate_job<'a>(
    jobs: &'a mut BTreeMap<u64, JobRec>,
    id: u64,
    token: Option<&str>,
    allow_awaiting_ack: bool,
) -> Result<&'a mut JobRec, ApiError> {
    let job = jobs.get_mut(&id).ok_or_else(|| ApiError::forbidden(""))?;
    if token != Some(job.token.as_str()) {
        return Err(ApiError::forbidden(""));
    }
    let processing = if allow_awaiting_ack {
        job.token_is_live()
    } else {
        job.is_processing()
    };
    if !processing {
        return Err(ApiError::job_forbidden(
            job.status,
            "Job is not processing on runner",
        ));
    }
    Ok(job)
}

/// The parsed update request.
struct Update {
    token: String,
    state: Option<String>,
    failure_reason: Option<String>,
    exit_code: Option<i64>,
    checksum: Option<String>,
    bytesize: Option<u64>,
}

fn parse_update(params: &Map<String, Value>) -> Result<Update, ApiError> {
    let token = req_string(params, "token")?;
    let state = opt_string(params, "state")?;
    let failure_reason = opt_string(params, "failure_reason")?;
    let exit_code = opt_i64(params, "exit_code")?;
    let legacy_checksum = opt_string(params, "checksum")?;
    let (output_checksum, bytesize) = match params.get("output") {
        None | Some(Value::Null) => (None, None),
        Some(Value::Object(output)) => {
            let bytesize = opt_i64(output, "bytesize")?;
            if bytesize.is_some_and(|b| b < 0) {
                return Err(ApiError::validation("output[bytesize] is invalid"));
            }
            (
                opt_string(output, "checksum")?,
                bytesize.map(i64::unsigned_abs),
            )
        }
        Some(_) => return Err(ApiError::validation("output is invalid")),
    };
    Ok(Update {
        token,
        state,
        failure_reason,
        exit_code,
        checksum: output_checksum.or(legacy_checksum),
        bytesize,
    })
}

async fn update_job(
    State(st): State<SimState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = (|| {
        let id = parse_id(&id)?;
        let params = json_params(&headers, &body)?;
        let update = parse_update(&params)?;
        apply(&st, id, update)
    })();
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Records `output.checksum`/`bytesize` when sent.
fn record_output(job: &mut JobRec, update: &Update) {
    if update.checksum.is_some() {
        job.reported_checksum.clone_from(&update.checksum);
    }
    if update.bytesize.is_some() {
        job.reported_bytesize = update.bytesize;
    }
}

fn apply(st: &SimState, id: u64, update: Update) -> Result<Response, ApiError> {
    let mut guard = st.db();
    let db = &mut *guard;
    let job = authenticate_job(&mut db.jobs, id, Some(&update.token), true)?;
    let state = update.state.as_deref().unwrap_or("");

    if job.awaiting_ack {
        return match state {
            "pending" => {
                job.pending_keepalive_count += 1;
                Ok(answer(StatusCode::OK, job.status, None))
            }
            "running" => {
                job.awaiting_ack = false;
                job.acknowledged = true;
                job.status = JobStatus::Running;
                job.started_at = Some(SystemTime::now());
                record_output(job, &update);
                let resp = answer(StatusCode::OK, job.status, None);
                db.job_event(id);
                Ok(resp)
            }
            _ => Ok(answer(StatusCode::BAD_REQUEST, job.status, None)),
        };
    }

    match state {
        "running" => {
            job.keepalive_count += 1;
            record_output(job, &update);
            Ok(answer(StatusCode::OK, job.status, None))
        }
        "success" | "failed" => {
            job.final_update_attempts += 1;
            record_output(job, &update);
            if state == "failed" {
                job.exit_code = update.exit_code;
            }
            let current = job.status;
            if db
                .faults
                .take(FaultRoute::UpdateJob, &[FaultKind::Final202])
                .is_some()
            {
                let mut resp = answer(StatusCode::ACCEPTED, current, Some(1));
                resp.extensions_mut().insert(FaultNote("final_202".into()));
                return Ok(resp);
            }
            let (status, reason) = match (current, state) {
                (JobStatus::Canceling, _) => (JobStatus::Canceled, None),
                (_, "success") => (JobStatus::Success, None),
                _ => (
                    JobStatus::Failed,
                    Some(failure_reason(update.failure_reason.as_deref())),
                ),
            };
            db.finish_job(id, status, reason);
            Ok(answer(StatusCode::OK, status, None))
        }
        _ => Ok(answer(StatusCode::BAD_REQUEST, job.status, None)),
    }
}

/// Rails' `BuildPendingState.failure_reasons.fetch(reason, 'unknown_failure')`.
fn failure_reason(reason: Option<&str>) -> String {
    match reason {
        Some(r) if FAILURE_REASONS.contains(&r) => r.to_string(),
        _ => "unknown_failure".to_string(),
    }
}

/// Status code as text, `Job-Status`, and the trace update interval on 202.
fn answer(code: StatusCode, status: JobStatus, interval: Option<u32>) -> Response {
    let mut resp = (code, code.as_u16().to_string()).into_response();
    let headers = resp.headers_mut();
    headers.insert("job-status", HeaderValue::from_static(status.as_str()));
    if let Some(interval) = interval {
        headers.insert(
            "x-gitlab-trace-update-interval",
            HeaderValue::from(interval),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_failure_reasons_are_stored_as_unknown_failure() {
        assert_eq!(failure_reason(Some("script_failure")), "script_failure");
        assert_eq!(failure_reason(Some("job_canceled")), "unknown_failure");
        assert_eq!(failure_reason(None), "unknown_failure");
    }
}
