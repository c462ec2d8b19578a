//! What the core is given (one webhook delivery) and what it answers.
//!
//! These types carry no HTTP library types so that any front end (axum here, an AWS
//! Lambda event later) can build a [`Delivery`] and turn a [`HookResponse`] into its own
//! reply.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// One webhook delivery: the headers GitLab sends (RUNNER-PROTOCOL §7) and the body.
#[derive(Clone, Default)]
pub struct Delivery {
    /// `X-Gitlab-Event`, e.g. `Job Hook`.
    pub event: Option<String>,
    /// `X-Gitlab-Token`: the hook's secret token, as raw bytes. Never logged.
    pub token: Option<Vec<u8>>,
    /// `X-Gitlab-Event-UUID`: one per originating event (shared by every hook it fires).
    pub event_uuid: Option<String>,
    /// `X-Gitlab-Webhook-UUID`: one per delivery (for logs only).
    pub webhook_uuid: Option<String>,
    /// `Idempotency-Key`: stable across re-sends of the same delivery (GitLab 17.4+).
    pub idempotency_key: Option<String>,
    /// The JSON body.
    pub body: Bytes,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("event", &self.event)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("event_uuid", &self.event_uuid)
            .field("webhook_uuid", &self.webhook_uuid)
            .field("idempotency_key", &self.idempotency_key)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// The answer to a delivery.
///
/// When `done` is set (sync mode, a delivery that started work), the front end should
/// wait for it and answer `200` with the [`JobSummary`] as JSON; if the sender is dropped
/// (shutdown, or a job task that died) it should answer `503`.
#[derive(Debug)]
pub struct HookResponse {
    /// HTTP status to answer (or to answer once `done` resolved).
    pub status: u16,
    /// A short plain-text explanation (`ignored`, `duplicate`, the parse error, …).
    pub message: String,
    /// Sync mode: resolves when the job this delivery caused has ended.
    pub done: Option<oneshot::Receiver<JobSummary>>,
}

impl HookResponse {
    /// A response without a sync waiter (for front ends and embedders that answer a
    /// delivery themselves, e.g. 404 for an unknown runner).
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        HookResponse {
            status,
            message: message.into(),
            done: None,
        }
    }

    /// What became of the delivery, as one word for a metric label
    /// (`gsr_webhook_deliveries_total{result}`):
    ///
    /// | response | result |
    /// |---|---|
    /// | 202, or 200 carrying a sync waiter (work started) | `accepted` |
    /// | 200 `duplicate: …` (a re-send or a second hook for the same event or job) | `duplicate` |
    /// | 200 `ignored: …` (another event, a job that is not pending, a paused runner) | `ignored` |
    /// | 401 (wrong or missing secret) | `unauthorized` |
    /// | 404 (no such runner) | `not_found` |
    /// | other 4xx (400 bad body or headers, 413 too large) | `rejected` |
    /// | 5xx (503 shutting down, 500 store trouble) | `unavailable` |
    ///
    /// Any other 2xx counts as `accepted`. The messages it reads are this crate's own.
    pub fn result(&self) -> &'static str {
        match self.status {
            200 if self.done.is_none() && self.message.starts_with(DUPLICATE) => "duplicate",
            200 if self.done.is_none() && self.message.starts_with(IGNORED) => "ignored",
            401 => "unauthorized",
            404 => "not_found",
            400..=499 => "rejected",
            500..=599 => "unavailable",
            _ => "accepted",
        }
    }
}

/// Prefix of the message of a duplicate delivery.
pub(crate) const DUPLICATE: &str = "duplicate:";
/// Prefix of the message of an ignored delivery (also used by embedders' own answers).
pub const IGNORED: &str = "ignored:";

/// How the job a delivery was about ended, as far as this process knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    /// The job (`build_id` of the hook).
    pub job_id: u64,
    /// `success`, `failed`, `canceled`, or `not_claimed` when the reconcile loop ended
    /// without GitLab assigning this job to us (another runner took it, it was canceled,
    /// or GitLab refused the runner token).
    pub status: String,
    /// GitLab's `failure_reason` for `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// The script's exit code, when a script failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// What happened to the final state: `accepted`, `gone` (GitLab no longer tracks the
    /// job) or `failed` (could not be delivered); absent for `not_claimed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    /// Milliseconds from the claim to the end of the job; absent for `not_claimed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl JobSummary {
    pub(crate) fn not_claimed(job_id: u64) -> Self {
        JobSummary {
            job_id,
            status: "not_claimed".into(),
            failure_reason: None,
            exit_code: None,
            delivery: None,
            duration_ms: None,
        }
    }

    pub(crate) fn from_report(report: &gsr_worker::JobReport, duration_ms: u64) -> Self {
        use gsr_job::{FailureKind, Outcome};
        let (status, failure_reason, exit_code) = match &report.outcome {
            Outcome::Success => ("success", None, None),
            // A runner shutdown also fires the job's abort token: it is an interruption
            // reported as a failure, not a cancel by GitLab.
            Outcome::Failed {
                kind: FailureKind::RunnerInterrupted,
                ..
            } => ("failed", Some("runner_interrupted".to_string()), None),
            _ if report.canceled => ("canceled", None, None),
            Outcome::Failed {
                kind, exit_code, ..
            } => ("failed", Some(kind.gitlab_reason().to_string()), *exit_code),
        };
        JobSummary {
            job_id: report.job_id,
            status: status.into(),
            failure_reason,
            exit_code,
            delivery: Some(delivery_name(&report.delivery).into()),
            duration_ms: Some(duration_ms),
        }
    }
}

pub(crate) fn delivery_name(d: &gsr_worker::Delivery) -> &'static str {
    match d {
        gsr_worker::Delivery::Accepted => "accepted",
        gsr_worker::Delivery::Gone => "gone",
        gsr_worker::Delivery::Failed(_) => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let d = Delivery {
            token: Some(b"hook-s3cret".to_vec()),
            event: Some("Job Hook".into()),
            ..Delivery::default()
        };
        let s = format!("{d:?}");
        assert!(!s.contains("hook-s3cret"), "{s}");
        assert!(s.contains("[REDACTED]"), "{s}");
    }

    #[test]
    fn results_for_the_metric_label() {
        let r = |status: u16, message: &str| HookResponse::new(status, message).result();
        assert_eq!(r(202, "accepted: claiming job 1"), "accepted");
        assert_eq!(r(200, "duplicate: job 1"), "duplicate");
        assert_eq!(r(200, "ignored: job 1 is \"success\""), "ignored");
        assert_eq!(r(401, "unauthorized"), "unauthorized");
        assert_eq!(r(404, "not found"), "not_found");
        assert_eq!(r(400, "missing X-Gitlab-Event header"), "rejected");
        assert_eq!(r(413, "too large"), "rejected");
        assert_eq!(r(503, "shutting down"), "unavailable");
        assert_eq!(r(500, "internal error"), "unavailable");
        let (_tx, rx) = oneshot::channel();
        let sync = HookResponse {
            status: 200,
            message: "job 1 ended".into(),
            done: Some(rx),
        };
        assert_eq!(sync.result(), "accepted");
    }

    #[test]
    fn summary_json_omits_what_does_not_apply() {
        let s = serde_json::to_value(JobSummary::not_claimed(7)).expect("serializes");
        assert_eq!(s, serde_json::json!({"job_id": 7, "status": "not_claimed"}));
    }
}
