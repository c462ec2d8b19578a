//! The metrics this crate emits, through the `metrics` facade: no recorder is installed
//! here (the embedding binary installs one, e.g. a Prometheus exporter; without one the
//! macros do nothing). Labels never carry tokens, secrets or user data.
//!
//! - [`CLAIM_LATENCY`] (histogram, seconds): from the arrival of the pending hook of a job
//!   — or, when no hook for it arrived, from the start of the `jobs/request` that got it —
//!   to GitLab assigning the job to us.
//! - [`BACKEND_ERRORS`] (counter): jobs that failed through the system's fault rather than
//!   the user's: the worker's outcome was `runner_system_failure` (the executor could not
//!   prepare or start, sources or I/O failed on our side) and the job was not cancelled.
//!
//! The `gsr serve` dispatcher emits the rest (`gsr_jobs_*`, `gsr_pickup_latency_seconds`,
//! `gsr_webhook_deliveries_total`, `gsr_runners_active`); see its crate docs.

use gsr_job::{FailureKind, Outcome};

/// `gsr_claim_latency_seconds` (histogram).
pub const CLAIM_LATENCY: &str = "gsr_claim_latency_seconds";
/// `gsr_backend_errors_total` (counter).
pub const BACKEND_ERRORS: &str = "gsr_backend_errors_total";

/// Whether a job's report counts as a backend error (see the module docs).
pub(crate) fn is_backend_error(report: &gsr_worker::JobReport) -> bool {
    !report.canceled
        && matches!(
            report.outcome,
            Outcome::Failed {
                kind: FailureKind::RunnerSystem,
                ..
            }
        )
}
