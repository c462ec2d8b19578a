//! HTTP plumbing shared by the handlers: GitLab-shaped errors and Grape-like parameter
//! parsing.
//!
//! Rails answers bad input with a small JSON body (`{"error": "token is missing"}` for
//! parameter validation, `{"message": "403 Forbidden"}` otherwise) and parses bodies as
//! JSON only when the `Content-Type` says JSON or is absent. Doing this in one place keeps
//! every endpoint equally strict, and makes "bad input" a clear 4xx, never a panic.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::types::JobStatus;

/// An error answer in GitLab's shape.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: Value,
    headers: Vec<(HeaderName, String)>,
}

impl ApiError {
    fn new(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body,
            headers: Vec::new(),
        }
    }

    /// Grape parameter validation: `400 {"error": "..."}`.
    pub fn validation(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, json!({ "error": msg.into() }))
    }

    /// `bad_request!`: `400 {"message": "400 Bad request - ..."}`.
    pub fn bad_request(msg: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            json!({ "message": format!("400 Bad request - {msg}") }),
        )
    }

    /// `unauthorized!`.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            json!({ "message": "401 Unauthorized" }),
        )
    }

    /// `forbidden!`: no hint about the job.
    pub fn forbidden(reason: &str) -> Self {
        let message = if reason.is_empty() {
            "403 Forbidden".to_string()
        } else {
            format!("403 Forbidden - {reason}")
        };
        Self::new(StatusCode::FORBIDDEN, json!({ "message": message }))
    }

    /// A token without the scope the route needs (403 `insufficient_scope`).
    pub fn insufficient_scope(scopes: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            json!({
                "error": "insufficient_scope",
                "error_description": "The request requires higher privileges than provided by the access token.",
                "scope": scopes,
            }),
        )
    }

    /// `job_forbidden!`: 403 plus the job's status in `Job-Status`.
    pub fn job_forbidden(status: JobStatus, reason: &str) -> Self {
        Self::forbidden(reason).with_header("job-status", status.as_str())
    }

    /// `not_found!`.
    pub fn not_found(what: &str) -> Self {
        let message = if what.is_empty() {
            "404 Not Found".to_string()
        } else {
            format!("404 {what} Not Found")
        };
        Self::new(StatusCode::NOT_FOUND, json!({ "message": message }))
    }

    /// Any other status with a message.
    pub fn status(status: StatusCode, msg: impl Into<String>) -> Self {
        Self::new(status, json!({ "message": msg.into() }))
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers
            .push((HeaderName::from_static(name), value.into()));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body)).into_response();
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, value);
            }
        }
        resp
    }
}

/// A header as a string, when present and valid.
pub(crate) fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The media type of `Content-Type`, lowercased, without parameters.
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get("content-type")?.to_str().ok()?;
    let media = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    Some(media)
}

/// HTTP Basic credentials (`user`, `password`).
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let raw = headers.get("authorization")?.to_str().ok()?;
    let (scheme, rest) = raw.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Parses a request body the way Grape does for these endpoints: JSON when the
/// `Content-Type` is JSON or missing, otherwise no parameters at all.
pub(crate) fn json_params(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Map<String, Value>, ApiError> {
    match media_type(headers).as_deref() {
        None | Some("") | Some("application/json") => {}
        Some(other) => {
            return Err(ApiError::validation(format!(
                "Content-Type {other} is not JSON, so no parameters were read (token is missing)"
            )))
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("invalid JSON body: {e}"))),
    }
}

/// A required string parameter (Grape `requires :key, type: String`).
pub(crate) fn req_string(params: &Map<String, Value>, key: &str) -> Result<String, ApiError> {
    opt_string(params, key)?.ok_or_else(|| ApiError::validation(format!("{key} is missing")))
}

/// An optional string parameter; a non-string value is invalid.
pub(crate) fn opt_string(
    params: &Map<String, Value>,
    key: &str,
) -> Result<Option<String>, ApiError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::validation(format!("{key} is invalid"))),
    }
}

/// An optional boolean parameter.
pub(crate) fn opt_bool(params: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(Some(s == "true")),
        Some(_) => Err(ApiError::validation(format!("{key} is invalid"))),
    }
}

/// An optional integer parameter (Grape coerces numeric strings).
pub(crate) fn opt_i64(params: &Map<String, Value>, key: &str) -> Result<Option<i64>, ApiError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| ApiError::validation(format!("{key} is invalid"))),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| ApiError::validation(format!("{key} is invalid"))),
        Some(_) => Err(ApiError::validation(format!("{key} is invalid"))),
    }
}

/// A numeric path id (`requires :id, type: Integer`).
pub(crate) fn parse_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::validation("id is invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ct: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert("content-type", HeaderValue::from_str(ct).expect("header"));
        }
        h
    }

    #[test]
    fn json_params_accept_json_or_missing_content_type() {
        let body = br#"{"token":"t"}"#;
        assert!(json_params(&headers(None), body).is_ok());
        assert!(json_params(&headers(Some("application/json; charset=utf-8")), body).is_ok());
        assert!(json_params(&headers(Some("text/plain")), body).is_err());
        assert!(json_params(&headers(None), b"not json").is_err());
        assert!(json_params(&headers(None), b"[1]").is_err());
        assert!(json_params(&headers(None), b"").is_ok_and(|m| m.is_empty()));
    }

    #[test]
    fn typed_params() {
        let m = json_params(&headers(None), br#"{"a":"x","b":3,"c":"4","d":true}"#).expect("json");
        assert_eq!(req_string(&m, "a").expect("a"), "x");
        assert!(req_string(&m, "zz").is_err());
        assert!(req_string(&m, "b").is_err());
        assert_eq!(opt_i64(&m, "b").expect("b"), Some(3));
        assert_eq!(opt_i64(&m, "c").expect("c"), Some(4));
        assert_eq!(opt_bool(&m, "d").expect("d"), Some(true));
    }

    #[test]
    fn basic_auth_is_decoded() {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode("gitlab-ci-token:glcbt-x:y");
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Basic {v}")).expect("h"),
        );
        assert_eq!(
            basic_credentials(&h),
            Some(("gitlab-ci-token".to_string(), "glcbt-x:y".to_string()))
        );
    }
}
