//! The invocation's body and how its answer maps to [`JobExit`]: pure functions, so every
//! case is unit-tested without AWS.
//!
//! The function answers a direct invocation with `gsr-lambda`'s summary
//! (`{"job_id", "outcome", "failure_reason", "delivered", "delivery", "message"}`), or
//! with a *function error*: `{"errorType", "errorMessage"}`, flagged by the
//! `X-Amz-Function-Error` header on AWS (HTTP 200) and by an HTTP 500 on the
//! `cargo lambda watch` emulator. Error types `gsr::…` are gsr refusing the payload before
//! the job ran (nothing reached GitLab); any other error type (`Runtime.ExitError`,
//! `Sandbox.Timedout`, …) is the function dying under the job.

use gsr_backend::JobExit;
use serde::{Deserialize, Serialize};

/// The direct-invocation body (`gsr-lambda`'s `direct` module documents it). `job` is the
/// claimed payload as a JSON *string*, so the function reads the bytes GitLab sent.
#[derive(Serialize)]
pub(crate) struct Body<'a> {
    pub job: &'a str,
    pub gitlab_url: &'a str,
    pub no_ack: bool,
}

/// Build the body. `Err` when the payload is not UTF-8 (GitLab sends JSON, so never in
/// practice). The message never quotes the payload.
pub(crate) fn body(payload: &[u8], gitlab_url: &str) -> Result<Vec<u8>, String> {
    let job =
        std::str::from_utf8(payload).map_err(|_| "the job payload is not UTF-8".to_string())?;
    serde_json::to_vec(&Body {
        job,
        gitlab_url,
        no_ack: false,
    })
    .map_err(|e| format!("cannot encode the invocation body: {e}"))
}

/// The fields of the function's summary this backend reads.
#[derive(Deserialize)]
struct Summary {
    outcome: String,
    delivered: bool,
}

/// A function error document.
#[derive(Deserialize)]
pub(crate) struct FunctionError {
    #[serde(rename = "errorType", default)]
    pub error_type: String,
}

/// How the place ended, from a successful (2xx) invoke: `function_error` is the
/// `X-Amz-Function-Error` header, `payload` the function's answer.
pub(crate) fn exit_of(function_error: Option<&str>, payload: &[u8]) -> Result<JobExit, String> {
    if let Some(kind) = function_error {
        let error_type = serde_json::from_slice::<FunctionError>(payload)
            .map(|e| e.error_type)
            .unwrap_or_default();
        return Ok(exit_of_error(if error_type.is_empty() {
            kind
        } else {
            &error_type
        }));
    }
    let summary: Summary = serde_json::from_slice(payload)
        .map_err(|e| format!("the function's answer is not a job summary: {e}"))?;
    Ok(if !summary.delivered {
        JobExit::Exec(4)
    } else {
        match summary.outcome.as_str() {
            "success" => JobExit::Exec(0),
            "canceled" => JobExit::Exec(3),
            _ => JobExit::Exec(1),
        }
    })
}

/// A function error of this type: gsr's own refusals mean the job never ran.
pub(crate) fn exit_of_error(error_type: &str) -> JobExit {
    if error_type.starts_with("gsr::") {
        JobExit::NotRun
    } else {
        JobExit::Killed
    }
}

/// An error *response* (non-2xx) whose body is a function error document: the emulator's
/// way of reporting function errors (HTTP 500). `None` for Lambda service errors.
pub(crate) fn function_error_in(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<FunctionError>(body)
        .ok()
        .map(|e| e.error_type)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn body_carries_the_payload_bytes_as_a_string() {
        let payload = br#"{"id": 7,  "token":"glcbt-known-token"}"#;
        let b = body(payload, "http://gitlab.example").unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v,
            json!({"job": r#"{"id": 7,  "token":"glcbt-known-token"}"#,
                   "gitlab_url": "http://gitlab.example", "no_ack": false})
        );
        // Exactly the bytes GitLab sent, spacing included.
        assert_eq!(v["job"].as_str().unwrap().as_bytes(), payload);
    }

    #[test]
    fn body_refuses_non_utf8_without_quoting_it() {
        let err = body(b"\xff glcbt-known-token", "http://g").unwrap_err();
        assert!(!err.contains("glcbt"), "{err}");
    }

    #[test]
    fn summaries_map_to_exec_statuses() {
        let s = |outcome: &str, delivered: bool| {
            serde_json::to_vec(
                &json!({"job_id": 1, "outcome": outcome, "failure_reason": null,
                "delivered": delivered, "delivery": "accepted", "message": null}),
            )
            .unwrap()
        };
        assert_eq!(exit_of(None, &s("success", true)), Ok(JobExit::Exec(0)));
        assert_eq!(exit_of(None, &s("failed", true)), Ok(JobExit::Exec(1)));
        assert_eq!(exit_of(None, &s("canceled", true)), Ok(JobExit::Exec(3)));
        assert_eq!(exit_of(None, &s("success", false)), Ok(JobExit::Exec(4)));
        assert!(exit_of(None, b"null").is_err());
    }

    #[test]
    fn function_errors() {
        let refused = br#"{"errorType":"gsr::InvalidJob","errorMessage":"no id"}"#;
        assert_eq!(exit_of(Some("Unhandled"), refused), Ok(JobExit::NotRun));
        let died = br#"{"errorType":"Runtime.ExitError","errorMessage":"signal: killed"}"#;
        assert_eq!(exit_of(Some("Unhandled"), died), Ok(JobExit::Killed));
        assert_eq!(exit_of(Some("Unhandled"), b""), Ok(JobExit::Killed));
        assert_eq!(
            function_error_in(refused).as_deref(),
            Some("gsr::InvalidJob")
        );
        assert_eq!(function_error_in(br#"{"Message":"throttled"}"#), None);
        assert_eq!(function_error_in(b"<html>"), None);
    }
}
