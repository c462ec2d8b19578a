//! The request log: every request a runner makes, readable through the admin API.
//!
//! Many runner bugs are about *how* it talks, not what it ends up doing: a trace patch
//! without `Content-Type`, a `jobs/request` that does not echo `last_update`, features it
//! forgot to declare, a clone without the job token. Tests assert on these entries. Bodies
//! are kept only where handlers attach them (the JSON of runner lifecycle calls and
//! `jobs/request`), always with tokens redacted.

use std::collections::VecDeque;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;

use crate::faults::{Dropped, FaultNote};
use crate::http_util::{basic_credentials, header_str};
use crate::state::SimState;
use crate::types::RequestLogEntry;

/// Oldest entries are forgotten beyond this many, so a long demo does not grow forever.
const CAPACITY: usize = 20_000;

/// Stored entries.
#[derive(Default)]
pub(crate) struct RequestLog {
    entries: VecDeque<RequestLogEntry>,
    next_seq: u64,
}

impl RequestLog {
    pub fn push(&mut self, mut entry: RequestLogEntry) {
        self.next_seq += 1;
        entry.seq = self.next_seq;
        if self.entries.len() == CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    pub fn all(&self) -> Vec<RequestLogEntry> {
        self.entries.iter().cloned().collect()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// Response extension: the (redacted) request body to log.
#[derive(Clone, Debug)]
pub(crate) struct LoggedBody(pub Value);

/// Replaces the value of every `token` key (at any depth) with `[REDACTED]`.
pub(crate) fn redact(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    if k == "token" || k == "authorization" {
                        *child = Value::String("[REDACTED]".into());
                    } else {
                        walk(child);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// Path and query with the value of any `token` query parameter redacted.
fn redact_uri(path: &str, query: Option<&str>) -> String {
    let Some(query) = query else {
        return path.to_string();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("token") => format!("{key}=[REDACTED]"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

/// Middleware recording one [`RequestLogEntry`] per request.
pub(crate) async fn record(State(state): State<SimState>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let path = req.uri().path().to_string();
    let mut entry = RequestLogEntry {
        seq: 0,
        method: req.method().to_string(),
        uri: redact_uri(&path, req.uri().query()),
        path,
        status: 0,
        dropped: false,
        fault: None,
        content_type: header_str(headers, "content-type"),
        content_range: header_str(headers, "content-range"),
        user_agent: header_str(headers, "user-agent"),
        accept: header_str(headers, "accept"),
        request_id: header_str(headers, "x-request-id"),
        job_token_present: headers.contains_key("job-token"),
        basic_auth_user: basic_credentials(headers).map(|(user, _)| user),
        body: None,
    };
    let resp = next.run(req).await;
    entry.dropped = resp.extensions().get::<Dropped>().is_some();
    entry.status = if entry.dropped {
        0
    } else {
        resp.status().as_u16()
    };
    entry.fault = resp.extensions().get::<FaultNote>().map(|n| n.0.clone());
    entry.body = resp.extensions().get::<LoggedBody>().map(|b| b.0.clone());
    tracing::debug!(method = %entry.method, uri = %entry.uri, status = entry.status, "request");
    state.db().requests.push(entry);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_are_redacted_at_any_depth() {
        let v = redact(
            json!({"token": "glrt-x", "info": {"features": {"a": true}}, "session": {"token": "t"}}),
        );
        assert_eq!(v["token"], "[REDACTED]");
        assert_eq!(v["session"]["token"], "[REDACTED]");
        assert_eq!(v["info"]["features"]["a"], true);
    }

    #[test]
    fn query_tokens_are_redacted() {
        assert_eq!(redact_uri("/a", None), "/a");
        assert_eq!(
            redact_uri("/a", Some("debug_trace=false&token=glcbt-x")),
            "/a?debug_trace=false&token=[REDACTED]"
        );
    }

    #[test]
    fn log_is_bounded() {
        let mut log = RequestLog::default();
        for _ in 0..CAPACITY + 5 {
            log.push(RequestLogEntry {
                seq: 0,
                method: "GET".into(),
                path: "/".into(),
                uri: "/".into(),
                status: 200,
                dropped: false,
                fault: None,
                content_type: None,
                content_range: None,
                user_agent: None,
                accept: None,
                request_id: None,
                job_token_present: false,
                basic_auth_user: None,
                body: None,
            });
        }
        let all = log.all();
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].seq, 6);
    }
}
