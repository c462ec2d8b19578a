//! The backend contract: *where* one claimed job runs.
//!
//! Two layers run a job, and this crate is the outer one:
//!
//! - A **backend** ([`Backend`]) places a whole claimed job somewhere and starts
//!   `gsr exec` there with the job's payload: a child process on this host (`local`), a
//!   container from the job's `image:` with its `services:` beside it (`docker`), a Pod
//!   (`kubernetes`), or a Lambda invocation (`lambda`). `gsr exec` then does everything a
//!   worker does (sources, steps, artifacts, trace, final state) with the job token only.
//! - An **executor** (`gsr-exec`) is how `gsr exec` runs the steps inside that place (bash
//!   process groups today).
//!
//! Why a job-level contract: isolation and clean-up are properties of the place, not of a
//! step. A job's container, network, Pod or sandbox must exist exactly as long as the job,
//! whatever happens to the process that claimed it; the claiming process (the dispatcher
//! of `gsr serve`, or `gsr run-single`) holds the runner token and must never share a
//! process, environment or filesystem with the job.
//!
//! # Call order
//!
//! 1. [`Backend::validate`] once at start-up: settings are coherent and what the backend
//!    needs exists (a daemon answers, a binary is there); a clear error otherwise. Then
//!    [`Backend::reap`] once, before the first job: remove what jobs of a *dead* claimer
//!    left (containers, networks, Pods, processes, temp dirs), found by the labels this
//!    backend put on them ([`Launch::labels`]); a live claimer's jobs are never touched.
//! 2. Per job: [`Backend::start`] → [`Running`] (the job is running when it returns Ok);
//!    then [`Running::wait`] until the job ends; [`Running::abort`] at any time from
//!    another task (shutdown); [`Running::cleanup`] always, last, whatever happened —
//!    also after `start` failed half-way (then on the partial state `start` cleaned up
//!    itself before returning the error).
//! 3. [`Backend::healthcheck`] may be called at any time (readiness).
//!
//! # Rules every backend keeps (the conformance suite checks them)
//!
//! - **One job, one place.** Nothing of a job (files, processes, containers, network
//!   names) is shared with another job or with the claimer, except the `gsr` binary
//!   itself, read-only.
//! - **Only the job's secrets go in.** The payload carries the job token; the runner
//!   token, control-plane keys, database URLs and the claimer's environment never reach the
//!   job. A backend that starts processes clears their environment.
//! - **The payload is a secret.** It travels by stdin, a mounted secret or the invocation
//!   body, never argv or an environment variable visible to other users, and never a log line.
//! - **Exit semantics are `gsr exec`'s**: [`JobExit`] maps its exit statuses. The job's
//!   result reaches GitLab through `gsr exec` itself, not through the backend; the backend
//!   only reports how the place ended, so the claimer can fail a job whose `gsr exec`
//!   never ran (`JobExit::NotRun`) with the job token it holds.
//! - **Abort is bounded.** After [`Running::abort`], `wait` returns within the backend's
//!   grace (its `gsr exec` gets SIGTERM first, so it can send the final state as
//!   `runner_interrupted`; then the place is killed).
//! - **`cleanup` is idempotent** and safe to call concurrently with nothing else running;
//!   calling it twice, or after `reap` already removed the job, is Ok.
//! - **Concurrency:** `start` may be called concurrently for different jobs; a backend
//!   that has a limit of its own says so in [`Capabilities::max_jobs`].
//!
//! # Conformance suite
//!
//! With the cargo feature `testkit`, `conformance` holds the scenarios every backend's
//! tests run against a real `gsr` binary and an in-process `gsr-sim` (success, failure,
//! cancel, timeout, abort, artifacts, crash + reap, secrets, image + services): a backend
//! supplies a factory of instances and a `Leftovers` check; see that module's docs.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretSlice;

pub use tokio_util::sync::CancellationToken;

#[cfg(feature = "testkit")]
pub mod conformance;

/// What a backend can honour, so the claimer routes jobs it cannot run elsewhere (or
/// refuses them) instead of running them wrongly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Runs the job in its `image:`.
    pub image: bool,
    /// Starts its `services:` where the job reaches them by alias.
    pub services: bool,
    /// [`Running::abort`] stops the job within seconds, whatever it does.
    pub hard_cancel: bool,
    /// Longest job this backend can run (Lambda: 15 minutes); `None`: no limit of its own.
    pub max_duration: Option<Duration>,
    /// Jobs this backend runs at once at most; `None`: the claimer's limit only.
    pub max_jobs: Option<usize>,
}

/// One claimed job to place.
pub struct Launch {
    /// GitLab's job id (names, labels, logs).
    pub job_id: u64,
    /// The claimed job's payload exactly as GitLab sent it: what `gsr exec --job -` reads.
    /// Holds the job token.
    pub payload: SecretSlice<u8>,
    /// GitLab's URL for `gsr exec --url`.
    pub gitlab_url: String,
    /// The job's timeout (already capped by GitLab); the backend adds its own margin for
    /// start-up and the final update, and kills the place after it.
    pub timeout: Duration,
    /// Labels to put on everything created for this job, so [`Backend::reap`] finds it:
    /// at least `gsr.claimer` (the claiming process's identity: replica name + process
    /// start) and `gsr.job` (the job id). Values are plain text, never secrets.
    pub labels: BTreeMap<String, String>,
    /// Ends the job from outside (same as [`Running::abort`]); backends may ignore it if
    /// the claimer calls `abort` instead.
    pub abort: CancellationToken,
}

impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("job_id", &self.job_id)
            .field("payload", &"[redacted]")
            .field("gitlab_url", &self.gitlab_url)
            .field("timeout", &self.timeout)
            .field("labels", &self.labels)
            .finish()
    }
}

/// How the place of a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobExit {
    /// `gsr exec` ran and exited with this status (`0` succeeded, `1` failed, `2` bad
    /// payload — already failed in GitLab, `3` canceled, `4` final state not delivered).
    Exec(i32),
    /// `gsr exec` was killed (abort after the grace, timeout, out of memory).
    Killed,
    /// `gsr exec` never started (image pull failed, the Pod was never scheduled, the
    /// invocation was refused): GitLab has not heard of the job from it; the claimer
    /// fails the job itself.
    NotRun,
}

/// Why a backend could not do something.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend's settings are wrong (unknown key, bad value).
    #[error("backend {backend}: invalid settings: {message}")]
    Config { backend: String, message: String },
    /// Something the backend needs is missing or down (daemon, API server, binary).
    #[error("backend {backend}: unavailable: {message}")]
    Unavailable { backend: String, message: String },
    /// The job's place could not be created (image pull, quota, …); the job did not run.
    #[error("backend {backend}: could not start job {job_id}: {message}")]
    Start {
        backend: String,
        job_id: u64,
        message: String,
    },
    /// Anything else while running, waiting or cleaning up.
    #[error("backend {backend}: {message}")]
    Other { backend: String, message: String },
}

/// What [`Backend::reap`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Jobs of dead claimers whose leftovers were removed.
    pub jobs: usize,
    /// Objects removed (processes, containers, networks, volumes, Pods, dirs).
    pub objects: usize,
    /// Objects of live claimers, left alone.
    pub left_alone: usize,
}

/// Where jobs run. See the crate docs for the call order and the rules.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// The backend's name as in settings and the UI (`local`, `docker`, …).
    fn name(&self) -> &str;
    /// What it can honour.
    fn capabilities(&self) -> Capabilities;
    /// Check settings and dependencies once at start-up.
    async fn validate(&self) -> Result<(), BackendError>;
    /// Whether it can start a job now (readiness).
    async fn healthcheck(&self) -> Result<(), BackendError>;
    /// Remove what jobs of dead claimers left behind.
    async fn reap(&self) -> Result<ReapReport, BackendError>;
    /// Place the job and start `gsr exec` there.
    async fn start(&self, launch: Launch) -> Result<Box<dyn Running>, BackendError>;
}

/// A job placed by a backend.
#[async_trait::async_trait]
pub trait Running: Send + Sync {
    /// Until the job's place has ended.
    async fn wait(&self) -> Result<JobExit, BackendError>;
    /// End the job: SIGTERM (or equivalent) to `gsr exec`, then kill after the backend's
    /// grace. Returns at once; `wait` observes the end.
    fn abort(&self);
    /// Remove everything of the job. Idempotent.
    async fn cleanup(&self) -> Result<(), BackendError>;
}
