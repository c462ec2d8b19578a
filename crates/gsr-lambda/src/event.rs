//! Lambda invocation payloads: telling the kinds apart, reading HTTP events, writing HTTP
//! responses.
//!
//! One function receives three kinds of payload:
//! - **HTTP events** from a Function URL or an API Gateway HTTP API (payload format 2.0),
//!   and, leniently, API Gateway REST (payload format 1.0). Both carry `headers`, `body` and
//!   `isBase64Encoded`; the method and path are in `requestContext.http` (2.0) or
//!   `httpMethod`/`path` (1.0). Header names are matched case-insensitively (API Gateway
//!   1.0 keeps the sender's spelling; 2.0 and Function URLs lower-case them).
//! - **Direct invocations** `{"job": {…}, "gitlab_url": "…"}` (see [`crate::direct`]).
//! - Anything else is refused with a function error naming what was expected.
//!
//! The types here are our own and small on purpose: `aws_lambda_events`' request types
//! require fields (`requestContext.timeEpoch`, `isBase64Encoded`) that hand-written events
//! and other proxies omit, cover one payload version each, and pull in extra crates, while a
//! runner needs five fields.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::direct::DirectInvocation;

/// What one invocation asks for.
#[derive(Debug)]
pub enum Invocation {
    /// An HTTP request forwarded by a Function URL or API Gateway.
    Http(HttpRequest),
    /// A claimed job to run (`{"job": …}`).
    Direct(Box<DirectInvocation>),
}

/// Why a payload could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    /// Neither an HTTP event nor a direct invocation.
    #[error(
        "unrecognised invocation payload: expected a Function URL / API Gateway HTTP event \
         (with `requestContext`, `headers`, `body`) or a direct invocation `{{\"job\": {{…}}, \
         \"gitlab_url\": \"…\"}}`"
    )]
    Unrecognised,
    /// It looked like an HTTP event but its fields have the wrong types.
    #[error("invalid HTTP event: {0}")]
    InvalidHttp(String),
    /// `isBase64Encoded` was true but the body is not base64.
    #[error("invalid HTTP event: the body is marked base64 but does not decode: {0}")]
    Base64(String),
    /// It looked like a direct invocation but its fields have the wrong types.
    #[error("invalid direct invocation: {0}")]
    InvalidDirect(String),
}

impl Invocation {
    /// Classify and read a payload.
    pub fn parse(payload: Value) -> Result<Invocation, EventError> {
        let Value::Object(map) = &payload else {
            return Err(EventError::Unrecognised);
        };
        if map.contains_key("job") {
            let direct: DirectInvocation = serde_json::from_value(payload)
                .map_err(|e| EventError::InvalidDirect(e.to_string()))?;
            return Ok(Invocation::Direct(Box::new(direct)));
        }
        let http_like = map.contains_key("requestContext")
            || map.contains_key("rawPath")
            || map.contains_key("httpMethod")
            || (map.contains_key("headers") && map.contains_key("body"));
        if http_like {
            return HttpRequest::from_event(payload).map(Invocation::Http);
        }
        Err(EventError::Unrecognised)
    }
}

/// An HTTP request as the webhook needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// Upper-case method; `POST` when the event does not say.
    pub method: String,
    /// Path without the query string; `/` when the event does not say.
    pub path: String,
    /// Header names lower-cased. Repeated headers are joined with `,` as API Gateway does.
    pub headers: BTreeMap<String, String>,
    /// The decoded body.
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// A header by name, any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// Read a Function URL / API Gateway event.
    pub fn from_event(payload: Value) -> Result<HttpRequest, EventError> {
        let raw: RawHttpEvent =
            serde_json::from_value(payload).map_err(|e| EventError::InvalidHttp(e.to_string()))?;
        let ctx = raw.request_context.unwrap_or_default();
        let ctx_http = ctx.http.unwrap_or_default();
        let method = ctx_http
            .method
            .or(raw.http_method)
            .or(ctx.http_method)
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "POST".into())
            .to_ascii_uppercase();
        let path = raw
            .raw_path
            .or(ctx_http.path)
            .or(raw.path)
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        let path = match path.split_once('?') {
            Some((p, _)) => p.to_string(),
            None => path,
        };

        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        // 1.0 events may carry both maps; the multi-value one is complete, so it wins.
        for (name, values) in raw.multi_value_headers.unwrap_or_default() {
            let values: Vec<String> = values.unwrap_or_default().into_iter().flatten().collect();
            if !values.is_empty() {
                headers.insert(name.to_ascii_lowercase(), values.join(","));
            }
        }
        for (name, value) in raw.headers.unwrap_or_default() {
            let Some(value) = value else { continue };
            headers.entry(name.to_ascii_lowercase()).or_insert(value);
        }

        let body = match raw.body {
            None => Vec::new(),
            Some(b) if raw.is_base64_encoded.unwrap_or(false) => {
                // API Gateway and Function URLs use the standard alphabet with padding;
                // tolerate whitespace and missing padding from hand-made events.
                let cleaned: String = b.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                base64::engine::general_purpose::STANDARD
                    .decode(cleaned.as_bytes())
                    .or_else(|_| {
                        base64::engine::general_purpose::STANDARD_NO_PAD
                            .decode(cleaned.trim_end_matches('=').as_bytes())
                    })
                    .map_err(|e| EventError::Base64(e.to_string()))?
            }
            Some(b) => b.into_bytes(),
        };
        Ok(HttpRequest {
            method,
            path,
            headers,
            body,
        })
    }
}

/// The fields of a 1.0/2.0 HTTP event we read. Everything is optional and `null` is
/// accepted wherever AWS may send it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHttpEvent {
    #[serde(default)]
    raw_path: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    http_method: Option<String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    multi_value_headers: Option<BTreeMap<String, Option<Vec<Option<String>>>>>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    is_base64_encoded: Option<bool>,
    #[serde(default)]
    request_context: Option<RawRequestContext>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRequestContext {
    #[serde(default)]
    http: Option<RawContextHttp>,
    #[serde(default)]
    http_method: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawContextHttp {
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

/// The response to an HTTP event. The same shape serves Function URLs, API Gateway HTTP
/// APIs (2.0) and REST APIs (1.0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpResponse {
    /// HTTP status.
    pub status_code: u16,
    /// Response headers.
    pub headers: BTreeMap<String, String>,
    /// The body, as text.
    pub body: String,
    /// Always false: bodies are JSON text.
    pub is_base64_encoded: bool,
}

impl HttpResponse {
    /// A JSON response.
    pub fn json(status: u16, body: &Value) -> HttpResponse {
        let mut headers = BTreeMap::new();
        headers.insert("content-type".into(), "application/json".into());
        HttpResponse {
            status_code: status,
            headers,
            body: body.to_string(),
            is_base64_encoded: false,
        }
    }

    /// A plain-text response (the axum adapter answers the core's messages as text).
    pub fn text(status: u16, message: &str) -> HttpResponse {
        let mut headers = BTreeMap::new();
        headers.insert("content-type".into(), "text/plain; charset=utf-8".into());
        HttpResponse {
            status_code: status,
            headers,
            body: message.to_string(),
            is_base64_encoded: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn url_event(headers: Value, body: &str, b64: bool) -> Value {
        json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": "/hook",
            "rawQueryString": "a=b",
            "headers": headers,
            "requestContext": {
                "accountId": "anonymous",
                "apiId": "abc",
                "domainName": "abc.lambda-url.eu-west-1.on.aws",
                "http": {"method": "POST", "path": "/hook", "protocol": "HTTP/1.1",
                         "sourceIp": "1.2.3.4", "userAgent": "GitLab/17.5.0"},
                "requestId": "r1",
                "timeEpoch": 1_700_000_000_000u64
            },
            "body": body,
            "isBase64Encoded": b64
        })
    }

    fn http(v: Value) -> HttpRequest {
        match Invocation::parse(v).expect("parses") {
            Invocation::Http(r) => r,
            other => panic!("expected an HTTP event, got {other:?}"),
        }
    }

    #[test]
    fn function_url_event_plain_body() {
        let r = http(url_event(
            json!({"x-gitlab-event": "Job Hook", "content-type": "application/json"}),
            r#"{"object_kind":"build"}"#,
            false,
        ));
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hook");
        assert_eq!(r.header("X-Gitlab-Event"), Some("Job Hook"));
        assert_eq!(r.body, br#"{"object_kind":"build"}"#);
    }

    #[test]
    fn base64_body_is_decoded() {
        let body = r#"{"object_kind":"build","build_id":7}"#;
        let enc = base64::engine::general_purpose::STANDARD.encode(body);
        let r = http(url_event(json!({}), &enc, true));
        assert_eq!(r.body, body.as_bytes());
        // Missing padding and line breaks from hand-made events are tolerated.
        let sloppy = format!("{}\n{}", &enc[..10], enc[10..].trim_end_matches('='));
        let r = http(url_event(json!({}), &sloppy, true));
        assert_eq!(r.body, body.as_bytes());
    }

    #[test]
    fn bad_base64_is_an_error() {
        let err = Invocation::parse(url_event(json!({}), "%%%not base64", true)).unwrap_err();
        assert!(matches!(err, EventError::Base64(_)), "{err:?}");
    }

    #[test]
    fn header_names_any_case() {
        // API Gateway 1.0 keeps the sender's spelling.
        let r = http(json!({
            "resource": "/", "path": "/", "httpMethod": "post",
            "headers": {"X-Gitlab-Event": "Job Hook", "X-GITLAB-TOKEN": "s3cret",
                        "Idempotency-Key": "k1"},
            "multiValueHeaders": {"X-Gitlab-Event": ["Job Hook"], "X-Gitlab-Token": ["s3cret"],
                                  "Idempotency-Key": ["k1"]},
            "requestContext": {"httpMethod": "POST"},
            "body": "{}", "isBase64Encoded": false
        }));
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("x-gitlab-event"), Some("Job Hook"));
        assert_eq!(r.header("X-Gitlab-Token"), Some("s3cret"));
        assert_eq!(r.header("idempotency-key"), Some("k1"));
        assert_eq!(r.headers.len(), 3);
    }

    #[test]
    fn multi_value_headers_are_joined() {
        let r = http(json!({
            "httpMethod": "POST", "path": "/",
            "multiValueHeaders": {"Accept": ["a", "b"]},
            "headers": {"Accept": "b"},
            "body": null
        }));
        assert_eq!(r.header("accept"), Some("a,b"));
        assert!(r.body.is_empty());
    }

    #[test]
    fn missing_headers_body_and_context() {
        // headers null, no body, no requestContext: still an HTTP event, with defaults.
        let r = http(json!({"rawPath": "/", "headers": null}));
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/");
        assert!(r.headers.is_empty());
        assert!(r.body.is_empty());
        assert_eq!(r.header("x-gitlab-token"), None);

        let r = http(
            json!({"requestContext": {"http": {"method": "GET", "path": "/healthz"}},
                            "headers": {"x-gitlab-event": null}}),
        );
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/healthz"));
        assert!(r.headers.is_empty());
    }

    #[test]
    fn query_string_is_not_part_of_the_path() {
        let r = http(json!({"path": "/hook?x=1", "httpMethod": "POST", "body": ""}));
        assert_eq!(r.path, "/hook");
    }

    #[test]
    fn unrecognised_payloads() {
        assert_eq!(
            Invocation::parse(json!({"hello": 1})).unwrap_err(),
            EventError::Unrecognised
        );
        assert_eq!(
            Invocation::parse(json!([1, 2])).unwrap_err(),
            EventError::Unrecognised
        );
        assert!(matches!(
            Invocation::parse(json!({"rawPath": 5})).unwrap_err(),
            EventError::InvalidHttp(_)
        ));
        assert!(matches!(
            Invocation::parse(json!({"job": {"id": 1}, "gitlab_url": 5})).unwrap_err(),
            EventError::InvalidDirect(_)
        ));
    }

    #[test]
    fn direct_invocation_is_recognised() {
        let v = json!({"job": {"id": 5, "token": "glcbt-x"}, "gitlab_url": "https://gitlab.example.com"});
        match Invocation::parse(v).unwrap() {
            Invocation::Direct(d) => {
                assert_eq!(d.gitlab_url.as_deref(), Some("https://gitlab.example.com"));
                assert_eq!(d.job["id"], 5);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn response_shape() {
        let v = serde_json::to_value(HttpResponse::text(401, "unauthorized")).unwrap();
        assert_eq!(
            v,
            json!({"statusCode": 401, "isBase64Encoded": false, "body": "unauthorized",
                   "headers": {"content-type": "text/plain; charset=utf-8"}})
        );
        let v = serde_json::to_value(HttpResponse::json(200, &json!({"job_id": 1}))).unwrap();
        assert_eq!(v["headers"]["content-type"], "application/json");
        assert_eq!(v["body"], r#"{"job_id":1}"#);
    }
}
