//! Job artifacts: `POST /api/v4/jobs/:id/artifacts` (upload, as Workhorse + Rails see it)
//! and `GET /api/v4/jobs/:id/artifacts` (dependency download).
//!
//! Upload rules, in the order GitLab applies them:
//! 1. Workhorse asks Rails to authorize first: the `JOB-TOKEN` must belong to this job and
//!    the job must be running (403, with `Job-Status` when the job is not processing);
//! 2. Workhorse streams the multipart body to disk: exactly one file part, named `file`
//!    (another file field or a second file: 400), no larger than the maximum (413);
//! 3. Rails validates `artifact_type`/`artifact_format` (known values, and the format
//!    paired with the type: 400) and refuses a second artifact of the same type unless it
//!    is byte-identical (a retried upload: 201 again).
//!
//! Files are streamed to `data_dir/artifacts/<job>/` and never held in memory whole.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};

use axum::body::Body;
use axum::extract::multipart::Field;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use crate::faults;
use crate::http_util::{header_str, parse_id, ApiError};
use crate::jobs::authenticate_job;
use crate::spec::{format_for_type, ARTIFACT_FORMATS};
use crate::state::{ArtifactRec, SimState};
use crate::types::FaultRoute;

/// Limit on a non-file form field.
const MAX_FORM_FIELD: usize = 64 * 1024;

pub(crate) fn routes(state: &SimState) -> Router<SimState> {
    let upload_route = post(upload)
        .route_layer(middleware::from_fn_with_state(
            (state.clone(), FaultRoute::UploadArtifacts),
            faults::guard,
        ))
        .layer(DefaultBodyLimit::disable());
    let download_route = axum::routing::get(download).route_layer(middleware::from_fn_with_state(
        (state.clone(), FaultRoute::DownloadArtifacts),
        faults::guard,
    ));
    Router::new().route(
        "/api/v4/jobs/{id}/artifacts",
        upload_route.merge(download_route),
    )
}

fn job_token(headers: &HeaderMap, query: &HashMap<String, String>) -> Option<String> {
    header_str(headers, "job-token").or_else(|| query.get("token").cloned())
}

/// Workhorse's authorize call: the token must be this job's and the job must be running.
fn authorize(st: &SimState, id: u64, token: Option<&str>) -> Result<(), ApiError> {
    authenticate_job(&mut st.db().jobs, id, token, false).map(|_| ())
}

async fn upload(
    State(st): State<SimState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    upload_inner(&st, &id, query, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// A file part stored in a temporary file.
struct Received {
    temp: PathBuf,
    filename: String,
    size: u64,
    sha256: Vec<u8>,
}

async fn upload_inner(
    st: &SimState,
    id: &str,
    query: HashMap<String, String>,
    req: Request,
) -> Result<Response, ApiError> {
    let id = parse_id(id)?;
    let token = job_token(req.headers(), &query);
    authorize(st, id, token.as_deref())?;

    let job_dir = st.artifacts_dir().join(id.to_string());
    tokio::fs::create_dir_all(&job_dir)
        .await
        .map_err(|e| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut multipart = Multipart::from_request(req, st)
        .await
        .map_err(|e| ApiError::bad_request(e.body_text()))?;

    let max = st.config().max_artifact_size;
    let mut form: HashMap<String, String> = HashMap::new();
    let mut file: Option<Received> = None;
    let mut failure: Option<ApiError> = None;
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => {
                failure.get_or_insert(ApiError::bad_request(format!(
                    "malformed multipart body: {e}"
                )));
                break;
            }
        };
        if failure.is_some() {
            // Keep reading so the client gets our answer instead of a broken pipe.
            drain(&mut field).await;
            continue;
        }
        let name = field.name().unwrap_or_default().to_string();
        match field.file_name().map(str::to_string) {
            Some(_) if name != "file" => {
                failure = Some(ApiError::bad_request(format!(
                    "file field {name:?} is not allowed; only `file` may carry a file"
                )));
                drain(&mut field).await;
            }
            Some(_) if file.is_some() => {
                failure = Some(ApiError::bad_request("only one file may be uploaded"));
                drain(&mut field).await;
            }
            Some(filename) => match receive(&mut field, &job_dir, filename, max).await {
                Ok(Some(received)) => file = Some(received),
                Ok(None) => {
                    failure = Some(ApiError::status(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("413 Request Entity Too Large - artifact larger than {max} bytes"),
                    ))
                }
                Err(e) => failure = Some(e),
            },
            None if name == "file" => {
                failure = Some(ApiError::validation(
                    "file is invalid: it must be a file part",
                ));
                drain(&mut field).await;
            }
            None => match read_text(&mut field).await {
                Ok(text) => {
                    form.insert(name, text);
                }
                Err(e) => failure = Some(e),
            },
        }
    }
    if let Some(failure) = failure {
        if let Some(f) = file {
            let _ = tokio::fs::remove_file(&f.temp).await;
        }
        return Err(failure);
    }
    let file = file.ok_or_else(|| ApiError::validation("file is missing"))?;
    let result = store(
        st,
        id,
        token.as_deref().unwrap_or_default(),
        &job_dir,
        &file,
        &form,
        &query,
    );
    // On success the temporary file was renamed; on failure it goes away here.
    let _ = tokio::fs::remove_file(&file.temp).await;
    result
}

async fn drain(field: &mut Field<'_>) {
    while let Ok(Some(_)) = field.chunk().await {}
}

async fn read_text(field: &mut Field<'_>) -> Result<String, ApiError> {
    let mut buf = Vec::new();
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                buf.extend_from_slice(&chunk);
                if buf.len() > MAX_FORM_FIELD {
                    return Err(ApiError::bad_request("form field too large"));
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "malformed multipart body: {e}"
                )))
            }
        }
    }
    String::from_utf8(buf).map_err(|_| ApiError::bad_request("form field is not UTF-8"))
}

/// Streams a file part to a temporary file. `Ok(None)`: larger than `max` (the part is
/// drained and the temporary file removed).
async fn receive(
    field: &mut Field<'_>,
    dir: &FsPath,
    filename: String,
    max: u64,
) -> Result<Option<Received>, ApiError> {
    let io_err =
        |e: std::io::Error| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let temp = dir.join(format!(".upload-{}", uuid::Uuid::new_v4()));
    let mut out = tokio::fs::File::create(&temp).await.map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let outcome = loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                size += chunk.len() as u64;
                if size > max {
                    drain(field).await;
                    break Ok(None);
                }
                hasher.update(&chunk);
                if let Err(e) = out.write_all(&chunk).await {
                    break Err(io_err(e));
                }
            }
            Ok(None) => break Ok(Some(())),
            Err(e) => {
                break Err(ApiError::bad_request(format!(
                    "malformed multipart body: {e}"
                )))
            }
        }
    };
    let flushed = out.flush().await;
    drop(out);
    match (outcome, flushed) {
        (Ok(Some(())), Ok(())) => Ok(Some(Received {
            temp,
            filename,
            size,
            sha256: hasher.finalize().to_vec(),
        })),
        (Ok(Some(())), Err(e)) => {
            let _ = tokio::fs::remove_file(&temp).await;
            Err(io_err(e))
        }
        (other, _) => {
            let _ = tokio::fs::remove_file(&temp).await;
            other.map(|_| None)
        }
    }
}

/// Rails' part: parameter validation, duplicate check, persisting.
fn store(
    st: &SimState,
    id: u64,
    token: &str,
    job_dir: &FsPath,
    file: &Received,
    form: &HashMap<String, String>,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    // Grape merges query and body parameters; body values win.
    let param = |k: &str| form.get(k).or_else(|| query.get(k)).cloned();
    let artifact_type = param("artifact_type").unwrap_or_else(|| "archive".into());
    let artifact_format = param("artifact_format").unwrap_or_else(|| "zip".into());
    let expire_in = param("expire_in");
    let paired = format_for_type(&artifact_type)
        .ok_or_else(|| ApiError::validation("artifact_type does not have a valid value"))?;
    if !ARTIFACT_FORMATS.contains(&artifact_format.as_str()) {
        return Err(ApiError::validation(
            "artifact_format does not have a valid value",
        ));
    }
    if paired != artifact_format {
        return Err(ApiError::bad_request(format!(
            "Invalid file format with specified file type ({artifact_type} needs {paired})"
        )));
    }
    let created = || (StatusCode::CREATED, "201").into_response();
    let mut db = st.db();
    // The job may have ended while the file streamed in.
    let job = authenticate_job(&mut db.jobs, id, Some(token), false)?;
    if let Some(existing) = job.artifacts.get(&artifact_type) {
        return if existing.sha256 == file.sha256 {
            Ok(created())
        } else {
            Err(ApiError::bad_request(
                "another artifact of the same type already exists",
            ))
        };
    }
    let path = job_dir.join(&artifact_type);
    std::fs::rename(&file.temp, &path)
        .map_err(|e| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    job.artifacts.insert(
        artifact_type,
        ArtifactRec {
            artifact_format,
            filename: file.filename.clone(),
            size: file.size,
            expire_in,
            sha256: file.sha256.clone(),
            path,
        },
    );
    Ok(created())
}

async fn download(
    State(st): State<SimState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    download_inner(&st, &id, job_token(&headers, &query))
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Which archive a download may read: its own job's token, or the token of a live job
/// of the same project (the dependent job downloading a dependency).
fn resolve_download(
    st: &SimState,
    id: u64,
    token: Option<&str>,
) -> Result<(PathBuf, String, u64), ApiError> {
    let token = token.ok_or_else(ApiError::unauthorized)?;
    let db = st.db();
    let job = db.jobs.get(&id).ok_or_else(|| ApiError::forbidden(""))?;
    let consumer = db.job_by_token(token).ok_or_else(ApiError::unauthorized)?;
    if consumer.id != job.id {
        if !consumer.token_is_live() {
            return Err(ApiError::unauthorized());
        }
        if consumer.project_id != job.project_id {
            return Err(ApiError::forbidden("job token cannot read this project"));
        }
    }
    let archive = job
        .artifacts
        .get("archive")
        .ok_or_else(|| ApiError::not_found("Artifact"))?;
    Ok((archive.path.clone(), archive.filename.clone(), archive.size))
}

async fn download_inner(
    st: &SimState,
    id: &str,
    token: Option<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(id)?;
    let (path, filename, size) = resolve_download(st, id, token.as_deref())?;
    file_response(&path, size, &filename).await
}

/// Streams a stored artifact file as an `application/octet-stream` attachment.
pub(crate) async fn file_response(
    path: &FsPath,
    size: u64,
    filename: &str,
) -> Result<Response, ApiError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|_| ApiError::not_found("Artifact file"))?;
    let mut resp = Body::from_stream(ReaderStream::new(file)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    let disposition = format!(
        "attachment; filename=\"{}\"",
        filename.replace(['"', '\\', '\r', '\n'], "_")
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
