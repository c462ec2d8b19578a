//! Direct invocations: run one already-claimed job, like `gsr exec`.
//!
//! Payload (the Lambda `Invoke` request body, what the control plane's Lambda backend sends):
//!
//! ```json
//! {
//!   "job": { "id": 42, "token": "glcbt-…", "job_info": {…}, … },
//!   "gitlab_url": "https://gitlab.example.com",
//!   "no_ack": false
//! }
//! ```
//!
//! - `job` (required): the `201` body of `POST /api/v4/jobs/request`, as an object or as
//!   the same JSON in a string (to hand over the bytes GitLab sent untouched).
//! - `gitlab_url` (optional): where the job token is used. Default: `CI_SERVER_URL` of the
//!   function, then the job's own `CI_SERVER_URL` variable.
//! - `no_ack` (optional, default false): skip `PUT state=running` (two-phase commit) when
//!   the claimer already sent it.
//!
//! The job runs with its job token only; the function needs no runner token for this.
//!
//! Result (the invocation's response):
//!
//! ```json
//! { "job_id": 42, "outcome": "success", "failure_reason": null, "delivered": true,
//!   "delivery": "accepted", "message": null }
//! ```
//!
//! - `outcome`: `success`, `failed` or `canceled` (by GitLab; a job this runner had to
//!   stop at the invocation deadline is `failed` with `runner_interrupted`).
//! - `failure_reason`: GitLab's `failure_reason` spelling when the job failed.
//! - `delivered`: GitLab has the final state (`delivery` is `accepted`, or `gone` when
//!   GitLab had already ended the job); false means the final update could not be sent
//!   (`delivery: "failed"`, with the reason in `message`).
//!
//! A payload whose `job` cannot be run but whose id and token can be read is failed in
//! GitLab with the reason in its trace (`outcome: failed`, `failure_reason:
//! runner_system_failure`). A payload without a readable id and token is a function
//! error: nothing can be reported for it.

use std::sync::Arc;

use gsr_exec::{CancellationToken, Executor};
use gsr_gitlab::{Coordinator, RunnerInfo};
use gsr_job::{ExposeSecret, FailureKind, Outcome};
use gsr_worker::{Delivery, JobReport, WorkerConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::deadline::{Budget, Deadline};

/// A direct invocation payload. `Debug` never shows the job (it holds the job token).
#[derive(Deserialize)]
pub struct DirectInvocation {
    /// The `jobs/request` 201 body, as an object or a JSON string.
    pub job: Value,
    /// GitLab URL for the job token's calls.
    #[serde(default)]
    pub gitlab_url: Option<String>,
    /// Skip `PUT state=running`.
    #[serde(default)]
    pub no_ack: bool,
}

impl std::fmt::Debug for DirectInvocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectInvocation")
            .field("job_id", &self.job_id())
            .field("gitlab_url", &self.gitlab_url)
            .field("no_ack", &self.no_ack)
            .finish_non_exhaustive()
    }
}

impl DirectInvocation {
    /// The payload bytes as GitLab sent them (or as close as the object allows).
    pub fn job_bytes(&self) -> Vec<u8> {
        match &self.job {
            Value::String(s) => s.clone().into_bytes(),
            other => serde_json::to_vec(other).unwrap_or_default(),
        }
    }

    /// The job id, if readable (for logs).
    pub fn job_id(&self) -> Option<u64> {
        match &self.job {
            Value::String(s) => serde_json::from_str::<Value>(s)
                .ok()
                .and_then(|v| v.get("id").and_then(Value::as_u64)),
            v => v.get("id").and_then(Value::as_u64),
        }
    }
}

/// What a direct invocation answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectSummary {
    /// The job.
    pub job_id: u64,
    /// `success`, `failed` or `canceled`.
    pub outcome: String,
    /// GitLab's failure reason when failed.
    pub failure_reason: Option<String>,
    /// GitLab has the final state.
    pub delivered: bool,
    /// `accepted`, `gone` or `failed`.
    pub delivery: String,
    /// A human-readable note (why it failed, why the update was not delivered).
    pub message: Option<String>,
}

impl DirectSummary {
    /// Summarise a worker report.
    pub fn from_report(report: &JobReport) -> DirectSummary {
        let (outcome, failure_reason, mut message) =
            outcome_fields(&report.outcome, report.canceled);
        let (delivered, delivery) = match &report.delivery {
            Delivery::Accepted => (true, "accepted"),
            Delivery::Gone => (true, "gone"),
            Delivery::Failed(why) => {
                message = Some(match message {
                    Some(m) => format!("{m}; final update not delivered: {why}"),
                    None => format!("final update not delivered: {why}"),
                });
                (false, "failed")
            }
        };
        DirectSummary {
            job_id: report.job_id,
            outcome: outcome.into(),
            failure_reason,
            delivered,
            delivery: delivery.into(),
            message,
        }
    }
}

/// `(outcome, failure_reason, message)` for an outcome.
pub fn outcome_fields(
    outcome: &Outcome,
    canceled: bool,
) -> (&'static str, Option<String>, Option<String>) {
    match outcome {
        Outcome::Success => ("success", None, None),
        Outcome::Failed { kind, message, .. } => {
            // An abort by this runner (shutdown, invocation deadline) is a failure
            // (`runner_interrupted`), not a cancellation by GitLab.
            let name = match kind {
                FailureKind::Canceled => "canceled",
                FailureKind::RunnerInterrupted => "failed",
                _ if canceled => "canceled",
                _ => "failed",
            };
            (
                name,
                Some(kind.gitlab_reason().to_string()),
                Some(message.clone()),
            )
        }
    }
}

/// Why a direct invocation could not start.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// No id/token could be read from `job`: nothing can be reported to GitLab.
    #[error("the job payload cannot be run and has no readable id and token: {0}")]
    Unusable(String),
    /// No GitLab URL anywhere.
    #[error("no GitLab URL: set `gitlab_url` in the payload or CI_SERVER_URL on the function")]
    NoUrl,
    /// The GitLab URL is not usable.
    #[error("{0}")]
    BadUrl(String),
}

/// What a direct invocation runs with.
#[derive(Clone)]
pub struct DirectRunner {
    /// The executor.
    pub executor: Arc<dyn Executor>,
    /// What the runner declares (user agent, features).
    pub info: RunnerInfo,
    /// The function's `CI_SERVER_URL`, if set.
    pub default_url: Option<String>,
    /// Worker settings; the short token is replaced by the job token's.
    pub worker: WorkerConfig,
    /// Fired when the runtime shuts down.
    pub shutdown: CancellationToken,
    /// Time budget.
    pub budget: Budget,
}

impl DirectRunner {
    /// Run the job to its end (or to the invocation's wrap-up time).
    pub async fn run(
        &self,
        inv: &DirectInvocation,
        deadline: Deadline,
    ) -> Result<DirectSummary, DirectError> {
        let bytes = inv.job_bytes();
        let parsed = gsr_gitlab::parse_job(&bytes);
        let url = inv
            .gitlab_url
            .clone()
            .filter(|u| !u.trim().is_empty())
            .or_else(|| self.default_url.clone())
            .or_else(|| {
                parsed
                    .as_ref()
                    .ok()
                    .and_then(|j| j.variables.get("CI_SERVER_URL").map(str::to_string))
            });
        let url = match (url, &parsed) {
            (Some(u), _) => u,
            (None, Err(e)) if e.job_id.is_none() || e.job_token.is_none() => {
                return Err(DirectError::Unusable(e.to_string()))
            }
            (None, _) => return Err(DirectError::NoUrl),
        };
        let coordinator =
            Coordinator::new(&url, &self.info).map_err(|e| DirectError::BadUrl(e.to_string()))?;
        let mut cfg = self.worker.clone();
        cfg.two_phase = !inv.no_ack;

        let mut spec = match parsed {
            Ok(spec) => spec,
            Err(e) => {
                let (Some(id), Some(token)) = (e.job_id, e.job_token.clone()) else {
                    return Err(DirectError::Unusable(e.to_string()));
                };
                tracing::error!(job = id, error = %e, "the job payload cannot be run");
                cfg.runner.short_token = gsr_worker::short_token(token.expose_secret());
                let client = coordinator.job_client(id, token);
                let delivery = gsr_worker::fail_unrunnable(client, &cfg, &e.to_string()).await;
                let report = JobReport {
                    job_id: id,
                    outcome: Outcome::failed(FailureKind::RunnerSystem, None, e.to_string()),
                    delivery,
                    canceled: false,
                };
                return Ok(DirectSummary::from_report(&report));
            }
        };
        cfg.runner.short_token = gsr_worker::short_token(spec.token.expose_secret());

        let cap = self.budget.job_timeout_cap(&deadline);
        if spec.timeout > cap {
            tracing::warn!(
                job = spec.id,
                job_timeout = ?spec.timeout,
                left = ?deadline.remaining(),
                "the job timeout does not fit the time left in this invocation; capping it"
            );
            spec.timeout = cap;
        }
        let abort = self.shutdown.child_token();
        let stop_at = self.budget.stop_at(&deadline);
        let timer = {
            let abort = abort.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(stop_at).await;
                tracing::warn!("the invocation deadline is near: stopping the job");
                abort.cancel();
            })
        };
        tracing::info!(job = spec.id, project = %spec.project_full_path, "direct invocation: running the job");
        let client = coordinator.job_client(spec.id, spec.token.clone());
        let report = gsr_worker::run_job(spec, client, self.executor.clone(), &cfg, abort).await;
        timer.abort();
        tracing::info!(job = report.job_id, outcome = ?report.outcome, delivery = ?report.delivery, "job done");
        Ok(DirectSummary::from_report(&report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn debug_hides_the_job() {
        let inv: DirectInvocation = serde_json::from_value(json!({
            "job": {"id": 9, "token": "glcbt-secret-token"},
            "gitlab_url": "https://g"
        }))
        .unwrap();
        let dbg = format!("{inv:?}");
        assert!(dbg.contains("job_id: Some(9)"), "{dbg}");
        assert!(!dbg.contains("glcbt"), "{dbg}");
        assert!(!inv.no_ack);
    }

    #[test]
    fn job_as_string_keeps_bytes() {
        let raw = r#"{"id": 9,  "token":"t"}"#;
        let inv: DirectInvocation = serde_json::from_value(json!({ "job": raw })).unwrap();
        assert_eq!(inv.job_bytes(), raw.as_bytes());
        assert_eq!(inv.job_id(), Some(9));
        assert_eq!(inv.gitlab_url, None);
    }

    #[test]
    fn summary_fields() {
        let r = JobReport {
            job_id: 3,
            outcome: Outcome::Success,
            delivery: Delivery::Accepted,
            canceled: false,
        };
        let v = serde_json::to_value(DirectSummary::from_report(&r)).unwrap();
        assert_eq!(
            v,
            json!({"job_id": 3, "outcome": "success", "failure_reason": null,
                   "delivered": true, "delivery": "accepted", "message": null})
        );
        let r = JobReport {
            job_id: 4,
            outcome: Outcome::failed(FailureKind::Script, Some(1), "exit 1"),
            delivery: Delivery::Failed("503".into()),
            canceled: false,
        };
        let s = DirectSummary::from_report(&r);
        assert_eq!(s.outcome, "failed");
        assert_eq!(s.failure_reason.as_deref(), Some("script_failure"));
        assert!(!s.delivered);
        assert_eq!(
            s.message.as_deref(),
            Some("exit 1; final update not delivered: 503")
        );
    }

    #[test]
    fn aborts_are_failures_gitlab_cancels_are_cancellations() {
        let interrupted = Outcome::failed(FailureKind::RunnerInterrupted, None, "deadline");
        assert_eq!(outcome_fields(&interrupted, true).0, "failed");
        assert_eq!(
            outcome_fields(&interrupted, true).1.as_deref(),
            Some("runner_interrupted")
        );
        let canceled = Outcome::failed(FailureKind::Script, None, "killed");
        assert_eq!(outcome_fields(&canceled, true).0, "canceled");
        assert_eq!(outcome_fields(&canceled, false).0, "failed");
    }
}
