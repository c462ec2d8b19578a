//! The metric names of the control plane, emitted through the `metrics` facade. This crate
//! installs no recorder: `gsr serve` installs its Prometheus exporter, and without a
//! recorder every macro is a no-op. No label carries a token, a secret or user data (the
//! only labels are the fixed words below).
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | [`JOBS_CLAIMED`] | counter | a job claimed from GitLab and recorded in the store by this replica |
//! | [`JOBS_FINISHED`] | counter, `status` = `success`/`failed`/`canceled`/`lost` | a recorded job reached its final status (`lost`: recovery after a restart) |
//! | [`JOBS_RUNNING`] | gauge | recorded jobs running on this replica now |
//! | [`PICKUP_LATENCY`] | histogram, seconds | the job's time in GitLab's queue before we claimed it (`job_info.time_in_queue_seconds`), when GitLab says |
//! | [`WEBHOOK_DELIVERIES`] | counter, `result` = see [`gsr_webhook::HookResponse::result`] | deliveries to the per-runner endpoint |
//! | [`RUNNERS_ACTIVE`] | gauge | runners with a receiver on this replica |
//!
//! `gsr_claim_latency_seconds` and `gsr_backend_errors_total` are emitted by the webhook
//! core, which alone knows when a delivery arrived and how the worker failed
//! ([`gsr_webhook::metric`]).

/// `gsr_jobs_claimed_total`.
pub const JOBS_CLAIMED: &str = "gsr_jobs_claimed_total";
/// `gsr_jobs_finished_total{status}`.
pub const JOBS_FINISHED: &str = "gsr_jobs_finished_total";
/// `gsr_jobs_running`.
pub const JOBS_RUNNING: &str = "gsr_jobs_running";
/// `gsr_pickup_latency_seconds`.
pub const PICKUP_LATENCY: &str = "gsr_pickup_latency_seconds";
/// `gsr_webhook_deliveries_total{result}`.
pub const WEBHOOK_DELIVERIES: &str = "gsr_webhook_deliveries_total";
/// `gsr_runners_active`.
pub const RUNNERS_ACTIVE: &str = "gsr_runners_active";
pub use gsr_webhook::metric::{BACKEND_ERRORS, CLAIM_LATENCY};

/// Count a recorded job's final status.
pub(crate) fn finished(status: gsr_store::JobStatus) {
    metrics::counter!(JOBS_FINISHED, "status" => status.as_str()).increment(1);
}
