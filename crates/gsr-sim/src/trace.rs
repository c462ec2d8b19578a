//! `PATCH /api/v4/jobs/:id/trace`: incremental job logs (Rails' `AppendBuildTraceService`).
//!
//! Strictness that catches real runner bugs:
//! - the body must be sent as `text/plain`: GitLab treats a missing Content-Type as JSON
//!   and rejects the raw log bytes (400);
//! - `Content-Range: <start>-<end>` is required; Rails appends at `start` only when
//!   `start` equals the stored size, otherwise answers 416 with `Range: 0-<size>` (the
//!   next offset it expects) and stores nothing. The end is ignored, as in Rails;
//! - only a running or canceling job takes trace; before the two-phase acknowledgement
//!   and after the end the answer is 403 with `Job-Status`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::patch;
use axum::Router;

use crate::faults::{self, FaultNote};
use crate::http_util::{header_str, media_type, parse_id, ApiError};
use crate::jobs::authenticate_job;
use crate::state::SimState;
use crate::types::{FaultKind, FaultRoute, JobStatus};

/// GitLab's default plan limit `ci_jobs_trace_size_limit` (100 MB).
const TRACE_SIZE_LIMIT: usize = 100 * 1024 * 1024;

pub(crate) fn routes(state: &SimState) -> Router<SimState> {
    Router::new().route(
        "/api/v4/jobs/{id}/trace",
        patch(patch_trace)
            .route_layer(middleware::from_fn_with_state(
                (state.clone(), FaultRoute::PatchTrace),
                faults::guard,
            ))
            .layer(DefaultBodyLimit::max(16 * 1024 * 1024)),
    )
}

/// `start` of a `start-end` Content-Range.
fn range_start(raw: &str) -> Option<usize> {
    let (start, end) = raw.trim().split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(start) || !digits(end) {
        return None;
    }
    start.parse().ok()
}

async fn patch_trace(
    State(st): State<SimState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = header_str(&headers, "job-token").or_else(|| query.get("token").cloned());
    append(&st, &id, token, &headers, &body).unwrap_or_else(IntoResponse::into_response)
}

fn append(
    st: &SimState,
    id: &str,
    token: Option<String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let id = parse_id(id)?;
    match media_type(headers).as_deref() {
        Some("text/plain") => {}
        None | Some("") => {
            return Err(ApiError::validation(
                "missing Content-Type: GitLab parses the body as JSON and rejects raw trace bytes; send text/plain",
            ))
        }
        Some(other) => {
            return Err(ApiError::validation(format!(
                "Content-Type {other} is not accepted for trace; send text/plain"
            )))
        }
    }
    let mut guard = st.db();
    let db = &mut *guard;
    let job = authenticate_job(&mut db.jobs, id, token.as_deref(), false)?;
    let raw_range = header_str(headers, "content-range").ok_or_else(|| {
        ApiError::status(StatusCode::BAD_REQUEST, "400 Missing header Content-Range")
    })?;
    let start = range_start(&raw_range).ok_or_else(|| {
        ApiError::status(
            StatusCode::BAD_REQUEST,
            format!("400 Content-Range {raw_range:?} is not <start>-<end>"),
        )
    })?;
    let size = job.trace.len();
    if db
        .faults
        .take(FaultRoute::PatchTrace, &[FaultKind::Trace416])
        .is_some()
    {
        let mut resp = range_not_satisfiable(size);
        resp.extensions_mut().insert(FaultNote("trace_416".into()));
        return Ok(resp);
    }
    if start != size {
        return Ok(range_not_satisfiable(size));
    }
    if size + body.len() > TRACE_SIZE_LIMIT {
        db.finish_job(id, JobStatus::Failed, Some("trace_size_exceeded".into()));
        return Err(ApiError::forbidden("Exceeded log size limit"));
    }
    let Some(job) = db.jobs.get_mut(&id) else {
        return Err(ApiError::forbidden(""));
    };
    job.trace.extend_from_slice(body);
    let mut resp = StatusCode::ACCEPTED.into_response();
    let h = resp.headers_mut();
    h.insert("job-status", HeaderValue::from_static(job.status.as_str()));
    if let Ok(v) = HeaderValue::from_str(&format!("0-{}", job.trace.len())) {
        h.insert("range", v);
    }
    h.insert(
        "x-gitlab-trace-update-interval",
        HeaderValue::from(st.config().trace_update_interval),
    );
    Ok(resp)
}

fn range_not_satisfiable(size: usize) -> Response {
    ApiError::status(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "416 Range Not Satisfiable",
    )
    .with_header("range", format!("0-{size}"))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_must_be_start_dash_end() {
        assert_eq!(range_start("0-9"), Some(0));
        assert_eq!(range_start("10-19"), Some(10));
        assert_eq!(range_start("bytes 0-9/10"), None);
        assert_eq!(range_start("5"), None);
        assert_eq!(range_start("-5"), None);
        assert_eq!(range_start("a-b"), None);
    }
}
