//! [`JobObserver`]: an optional extension point for embedders (the `gsr serve`
//! dispatcher) that must record every claimed job before it runs, may veto it, and want
//! to know how it ended. `gsr webhook` itself installs none.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use gsr_job::SecretString;

use crate::delivery::JobSummary;

/// A boxed future borrowed from the observer (no `async-trait` needed).
pub type ObserverFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What is known about a job GitLab just assigned to this runner.
#[derive(Debug, Clone)]
pub struct ClaimInfo {
    /// The GitLab job id.
    pub job_id: u64,
    /// The project path, when the payload could be read.
    pub project: Option<String>,
    /// How long the job waited in GitLab's queue (`job_info.time_in_queue_seconds`),
    /// when GitLab said.
    pub queued_duration: Option<Duration>,
    /// The job's token (redacted in `Debug`), so that an embedder can keep it, sealed, to
    /// report the job to GitLab should this process die while the job runs. `None` when
    /// the payload gave none.
    pub job_token: Option<SecretString>,
}

/// What to do with a claimed job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimDecision {
    /// Run it.
    Run,
    /// Do not touch it: someone else owns it (e.g. another replica recorded it).
    Skip,
    /// Do not run it; report it to GitLab as failed (`runner_system_failure`) with this
    /// reason, e.g. because the claim could not be recorded.
    Fail(String),
}

/// Hooks awaited by the job task: [`JobObserver::claimed`] after GitLab assigned the job
/// and before anything runs (the job's capacity permit is already held), and
/// [`JobObserver::ended`] once the job ended (not called for skipped jobs).
pub trait JobObserver: Send + Sync + 'static {
    /// Decide whether the claimed job runs.
    fn claimed<'a>(&'a self, job: &'a ClaimInfo) -> ObserverFuture<'a, ClaimDecision>;
    /// The job ended (or was failed without running) with `summary`.
    fn ended<'a>(&'a self, job: &'a ClaimInfo, summary: &'a JobSummary) -> ObserverFuture<'a, ()>;
}
