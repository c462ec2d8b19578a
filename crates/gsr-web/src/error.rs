//! [`ApiError`]: what a handler can fail with, and its one conversion into a response.
//! Internal causes are logged here with a short id and never sent to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use gsr_gitlab::GitlabError;
use gsr_store::StoreError;

use crate::views;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Not logged in (pages redirect to the login page; the API answers 401).
    #[error("not logged in")]
    Unauthenticated,
    /// Missing or wrong CSRF token.
    #[error("invalid or missing CSRF token")]
    Csrf,
    /// The resource does not exist or is not the caller's.
    #[error("not found")]
    NotFound,
    /// Input rejected; `(field, message)` pairs.
    #[error("invalid input")]
    Invalid(Vec<(String, String)>),
    /// The per-user runner limit.
    #[error("runner limit reached")]
    Quota,
    /// GitLab refused or failed; the message is safe to show.
    #[error("GitLab: {0}")]
    Gitlab(String),
    /// The login with GitLab failed (bad state, denied, …).
    #[error("login failed: {0}")]
    Login(String),
    /// Something broke inside; details only in the log.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// One field's validation error.
    pub fn field(field: &str, message: &str) -> Self {
        ApiError::Invalid(vec![(field.to_string(), message.to_string())])
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::Csrf => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Invalid(_) | ApiError::Login(_) => StatusCode::BAD_REQUEST,
            ApiError::Quota => StatusCode::CONFLICT,
            ApiError::Gitlab(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message shown to the user (never internals).
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Invalid(errs) => errs
                .iter()
                .map(|(f, m)| format!("{f}: {m}"))
                .collect::<Vec<_>>()
                .join("; "),
            ApiError::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        }
    }

    fn log(&self) {
        if let ApiError::Internal(detail) = self {
            tracing::error!(error = %detail, "request failed");
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound,
            StoreError::QuotaExceeded { .. } => ApiError::Quota,
            StoreError::Invalid(m) => ApiError::Invalid(vec![("runner".into(), m)]),
            StoreError::Conflict(_) => {
                ApiError::field("runner", "this GitLab runner is already registered here")
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<GitlabError> for ApiError {
    fn from(e: GitlabError) -> Self {
        match e {
            GitlabError::NotFound { .. } | GitlabError::Forbidden { .. } => ApiError::NotFound,
            GitlabError::Status { status: 401, .. } => ApiError::Unauthenticated,
            GitlabError::Status {
                status: 400, body, ..
            } => ApiError::Gitlab(gitlab_message(&body)),
            GitlabError::Transport { context, .. } => {
                tracing::warn!(error = %e, "GitLab unreachable");
                ApiError::Gitlab(format!("{context}: GitLab is unreachable, try again"))
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// GitLab's `{"message": …}` (or `{"error": …}`) of a 400, flattened.
fn gitlab_message(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let m = v.get("message").or_else(|| v.get("error"));
    match m {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "GitLab rejected the request".to_string(),
    }
}

/// HTML for pages.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        if matches!(self, ApiError::Unauthenticated) {
            // No session, or GitLab no longer accepts the user's token: drop the session
            // (so `/` shows the login page instead of bouncing back) and go to the login page.
            let mut resp = Redirect::to("/").into_response();
            resp.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_static("gsr_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"),
            );
            return resp;
        }
        let status = self.status();
        let mut resp = (status, views::error_page(status, &self.public_message())).into_response();
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

/// The same errors as JSON, for `/api/v1`: `{"error": "...", "fields": {...}}`.
#[derive(Debug)]
pub struct JsonError(pub ApiError);

impl From<ApiError> for JsonError {
    fn from(e: ApiError) -> Self {
        JsonError(e)
    }
}

impl From<StoreError> for JsonError {
    fn from(e: StoreError) -> Self {
        JsonError(e.into())
    }
}

impl From<GitlabError> for JsonError {
    fn from(e: GitlabError) -> Self {
        JsonError(e.into())
    }
}

impl From<axum::extract::rejection::JsonRejection> for JsonError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        JsonError(ApiError::field("body", &e.body_text()))
    }
}

impl IntoResponse for JsonError {
    fn into_response(self) -> Response {
        let e = self.0;
        e.log();
        let mut body = serde_json::json!({ "error": e.public_message() });
        if let ApiError::Invalid(fields) = &e {
            body["fields"] = fields
                .iter()
                .map(|(f, m)| (f.clone(), serde_json::Value::String(m.clone())))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        (e.status(), Json(body)).into_response()
    }
}
