//! Git smart HTTP: `/<namespace>/<project>.git/{info/refs,git-upload-pack,git-receive-pack}`
//! served by `git http-backend` as a CGI, behind GitLab's authentication.
//!
//! Runners clone with `gitlab-ci-token:<job token>` as HTTP Basic credentials; GitLab
//! accepts such a token only while its job is assigned (two-phase pending), running or
//! canceling, only for the job's own project, and only for reading. Pushes (used by tests
//! to seed repositories) need `root` and the admin token. Missing or wrong credentials get
//! 401 with `WWW-Authenticate: Basic realm="GitLab"` — also for projects that do not
//! exist, so an anonymous client learns nothing; authenticated clients get 404 for
//! projects they cannot see.
//!
//! The CGI bridge follows ENVIRONMENT.md §7: the usual CGI variables, `REMOTE_USER`
//! (http-backend refuses pushes without it), `HTTP_GIT_PROTOCOL` for protocol v2 and
//! `HTTP_CONTENT_ENCODING` for gzipped requests. Request bodies arrive de-chunked from
//! hyper and are streamed into the CGI's stdin; without a `Content-Length`,
//! `CONTENT_LENGTH` is left unset so http-backend reads to EOF (chunked pushes > 1 MiB).
//! The CGI's `Status:` header becomes the response status; stdout is streamed back.

use std::process::Stdio;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio_util::io::ReaderStream;

use crate::faults::{self, Verdict};
use crate::http_util::{basic_credentials, header_str, ApiError};
use crate::repo::split_project_path;
use crate::state::SimState;
use crate::types::FaultRoute;

/// The three smart-HTTP endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    InfoRefs,
    UploadPack,
    ReceivePack,
}

impl Endpoint {
    fn suffix(self) -> &'static str {
        match self {
            Endpoint::InfoRefs => "/info/refs",
            Endpoint::UploadPack => "/git-upload-pack",
            Endpoint::ReceivePack => "/git-receive-pack",
        }
    }
}

/// Splits `/group/sub/project.git/info/refs` into (`group/sub/project`, endpoint).
fn parse_path(path: &str) -> Option<(String, Endpoint)> {
    for endpoint in [
        Endpoint::InfoRefs,
        Endpoint::UploadPack,
        Endpoint::ReceivePack,
    ] {
        if let Some(prefix) = path.strip_suffix(endpoint.suffix()) {
            let project = prefix.strip_prefix('/')?.strip_suffix(".git")?;
            split_project_path(project).ok()?;
            return Some((project.to_string(), endpoint));
        }
    }
    None
}

/// Router fallback: git requests, or GitLab's 404 for anything else.
pub(crate) async fn fallback(State(st): State<SimState>, req: Request) -> Response {
    let Some((project, endpoint)) = parse_path(req.uri().path()) else {
        return ApiError::not_found("").into_response();
    };
    let note = match faults::check(&st, FaultRoute::Git, faults::conn_of(&req)).await {
        Verdict::Answer(resp) => return resp,
        Verdict::Proceed(note) => note,
    };
    let mut resp = handle(&st, &project, endpoint, req)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    if let Some(note) = note {
        resp.extensions_mut().insert(note);
    }
    resp
}

/// Why a git request is refused.
enum Denied {
    /// No or wrong credentials.
    Unauthorized,
    /// Project unknown, or not visible to these credentials.
    ProjectNotFound,
    /// Not a route GitLab serves.
    NoRoute,
    /// Authenticated but not allowed.
    Forbidden(&'static str),
    /// The CGI failed.
    Internal(String),
}

const PROJECT_NOT_FOUND: &str =
    "The project you were looking for could not be found or you don't have permission to view it.";

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Unauthorized => unauthorized(),
            Denied::ProjectNotFound => plain(StatusCode::NOT_FOUND, PROJECT_NOT_FOUND),
            Denied::NoRoute => ApiError::not_found("").into_response(),
            Denied::Forbidden(msg) => plain(StatusCode::FORBIDDEN, msg),
            Denied::Internal(msg) => plain(StatusCode::INTERNAL_SERVER_ERROR, &msg),
        }
    }
}

fn unauthorized() -> Response {
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        "HTTP Basic: Access denied. If a password was provided for Git authentication, \
         the password was incorrect or you're required to use a token instead of a password.\n",
    )
        .into_response();
    resp.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static("Basic realm=\"GitLab\""),
    );
    resp
}

fn plain(status: StatusCode, msg: &str) -> Response {
    (status, format!("{msg}\n")).into_response()
}

/// Authenticates and authorizes; returns the CGI `REMOTE_USER`.
fn authorize(st: &SimState, req: &Request, project: &str, write: bool) -> Result<String, Denied> {
    let Some((user, password)) = basic_credentials(req.headers()) else {
        return Err(Denied::Unauthorized);
    };
    let db = st.db();
    let project_id = db
        .projects
        .values()
        .find(|p| p.path == project)
        .map(|p| p.id);
    match user.as_str() {
        "gitlab-ci-token" => {
            let job = db
                .job_by_token(&password)
                .filter(|j| j.token_is_live())
                .ok_or(Denied::Unauthorized)?;
            if project_id != Some(job.project_id) {
                return Err(Denied::ProjectNotFound);
            }
            if write {
                return Err(Denied::Forbidden(
                    "You are not allowed to push code to this project.",
                ));
            }
            Ok(user)
        }
        "root" if password == st.config().admin_token => {
            if project_id.is_none() {
                return Err(Denied::ProjectNotFound);
            }
            Ok(user)
        }
        _ => Err(Denied::Unauthorized),
    }
}

async fn handle(
    st: &SimState,
    project: &str,
    endpoint: Endpoint,
    req: Request,
) -> Result<Response, Denied> {
    let query = req.uri().query().unwrap_or("").to_string();
    let service = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("service="))
        .unwrap_or("")
        .to_string();
    let expected_method = match endpoint {
        Endpoint::InfoRefs => Method::GET,
        Endpoint::UploadPack | Endpoint::ReceivePack => Method::POST,
    };
    if req.method() != expected_method {
        return Err(Denied::NoRoute);
    }
    let write = match endpoint {
        Endpoint::InfoRefs => match service.as_str() {
            "git-upload-pack" => false,
            "git-receive-pack" => true,
            _ => {
                return Err(Denied::Forbidden(
                    "Only the smart HTTP protocol is supported (info/refs needs ?service=).",
                ))
            }
        },
        Endpoint::UploadPack => false,
        Endpoint::ReceivePack => true,
    };
    let user = authorize(st, &req, project, write)?;
    run_backend(st, project, endpoint, &query, &user, req)
        .await
        .map_err(Denied::Internal)
}

async fn run_backend(
    st: &SimState,
    project: &str,
    endpoint: Endpoint,
    query: &str,
    user: &str,
    req: Request,
) -> Result<Response, String> {
    let (parts, body) = req.into_parts();
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env("GIT_PROJECT_ROOT", st.repos_dir())
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", format!("/{project}.git{}", endpoint.suffix()))
        .env("QUERY_STRING", query)
        .env(
            "CONTENT_TYPE",
            header_str(&parts.headers, "content-type").unwrap_or_default(),
        )
        .env("REMOTE_USER", user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env_remove("CONTENT_LENGTH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(len) = header_str(&parts.headers, "content-length") {
        cmd.env("CONTENT_LENGTH", len);
    }
    if let Some(proto) = header_str(&parts.headers, "git-protocol") {
        cmd.env("HTTP_GIT_PROTOCOL", proto);
    }
    if let Some(enc) = header_str(&parts.headers, "content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", enc);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start git http-backend: {e}"))?;
    let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("git http-backend pipes missing".into());
    };

    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            if stdin.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = stdin.shutdown().await;
    });
    tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        if !text.trim().is_empty() {
            tracing::debug!(stderr = %text.trim(), "git http-backend");
        }
    });

    let mut reader = BufReader::new(stdout);
    let mut status = StatusCode::OK;
    let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| format!("reading CGI headers: {e}"))?;
        if n == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("500");
            status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.push((n, v));
        }
    }
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    let mut resp = Body::from_stream(ReaderStream::new(reader)).into_response();
    *resp.status_mut() = status;
    for (name, value) in headers {
        resp.headers_mut().append(name, value);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_paths() {
        assert_eq!(
            parse_path("/group/project.git/info/refs"),
            Some(("group/project".to_string(), Endpoint::InfoRefs))
        );
        assert_eq!(
            parse_path("/group/sub/project.git/git-upload-pack"),
            Some(("group/sub/project".to_string(), Endpoint::UploadPack))
        );
        assert_eq!(
            parse_path("/g/p.git/git-receive-pack"),
            Some(("g/p".to_string(), Endpoint::ReceivePack))
        );
        assert_eq!(parse_path("/g/p/info/refs"), None);
        assert_eq!(parse_path("/p.git/info/refs"), None);
        assert_eq!(parse_path("/api/v4/jobs/1"), None);
    }
}
