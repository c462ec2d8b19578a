//! The executor contract: how the worker asks a backend to run the steps of one job.
//!
//! Why: the worker (sources, artifacts, trace, GitLab updates) is the same whatever runs the
//! user's script; what differs is *where* the script runs (a local process, a container, a
//! Pod, a Lambda). Executors know nothing of GitLab or of the control plane: they get a
//! [`StepRequest`] (commands, environment, working directory, deadline), a [`LogSink`] for
//! output, and a cancellation token.
//!
//! Layout:
//! - [`Executor`] / [`Session`]: the lifecycle (prepare → run steps → cleanup).
//! - [`script`]: the one place that turns a step's commands into a bash script, shared by
//!   every backend that runs bash.
//!
//! Rules every implementation follows (the conformance tests check them):
//! 1. `run_step` never returns before every process it started for the step has exited or
//!    been killed: a cancelled or timed-out step leaves nothing behind.
//! 2. The step's environment is exactly [`StepRequest::env`] plus what the backend needs to
//!    find a shell (`PATH`, `HOME`); nothing of the runner's own environment leaks in, so the
//!    runner token can never reach a job process.
//! 3. `cleanup` is idempotent and is always called, whatever happened before.
//! 4. A step that fails to start is an [`ExecutorError`] (runner system failure); a step
//!    that ran and exited non-zero is `Ok(StepOutcome::Exited(code))` (script failure).

pub mod script;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use tokio_util::sync::CancellationToken;

/// Where a step's output goes. Implemented by the trace pipeline (masking, limits, upload).
///
/// `write` is called from the executor's output reader; it must not block for long.
pub trait LogSink: Send + Sync {
    /// Append raw output bytes (stdout and stderr interleaved).
    fn write(&self, bytes: &[u8]);
}

/// A sink that keeps everything in memory; for tests and small tools.
#[derive(Default)]
pub struct MemorySink(std::sync::Mutex<Vec<u8>>);

impl MemorySink {
    /// Everything written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().expect("sink lock").clone()
    }
}

impl LogSink for MemorySink {
    fn write(&self, bytes: &[u8]) {
        self.0.lock().expect("sink lock").extend_from_slice(bytes);
    }
}

/// What a backend can do, so the worker can refuse jobs it cannot honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Honours the job's `image:`.
    pub image: bool,
    /// Honours `services:`.
    pub services: bool,
    /// A running step can be stopped at once.
    pub hard_cancel: bool,
    /// The builds dir may be shared between jobs (gitlab-runner's `shared` feature).
    pub shared_builds_dir: bool,
}

/// One step to run: the commands of `script`, `after_script`, … as one shell invocation.
#[derive(Clone)]
pub struct StepRequest {
    /// The trace stage name (`step_script`, `after_script`, …), for logs and errors.
    pub stage: String,
    /// The user's commands, in order.
    pub commands: Vec<String>,
    /// The complete environment of the step's processes, already expanded.
    pub env: Vec<(String, String)>,
    /// Working directory (the project dir).
    pub workdir: PathBuf,
    /// How long the step may run before it is killed and reported as [`StepOutcome::TimedOut`].
    pub timeout: Duration,
    /// Print each command as bash runs it (`CI_DEBUG_TRACE`).
    pub debug_trace: bool,
}

impl std::fmt::Debug for StepRequest {
    // The environment holds secrets: never print values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepRequest")
            .field("stage", &self.stage)
            .field("commands", &self.commands.len())
            .field(
                "env_keys",
                &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("workdir", &self.workdir)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// The shell exited with this code (0 = success).
    Exited(i32),
    /// The step's deadline passed; its processes were killed.
    TimedOut,
    /// The cancellation token fired; its processes were killed.
    Canceled,
}

/// A backend failed (not the user's script).
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The step could not be started.
    #[error("could not start {stage}: {source}")]
    Spawn {
        /// Stage name.
        stage: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Other I/O while running or cleaning up.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The job asks for something this backend cannot do.
    #[error("unsupported by this executor: {0}")]
    Unsupported(String),
}

/// Per-job facts a backend needs to set up its environment.
#[derive(Debug, Clone)]
pub struct PrepareRequest {
    /// GitLab job id.
    pub job_id: u64,
    /// Root builds dir.
    pub builds_dir: PathBuf,
    /// The job's project dir (already created by the worker).
    pub project_dir: PathBuf,
    /// Image asked for by the job, if any.
    pub image: Option<String>,
}

/// A backend: long-lived, shared between jobs.
#[async_trait::async_trait]
pub trait Executor: Send + Sync {
    /// The name GitLab sees in `info.executor` (`shell`, `docker`, …).
    fn name(&self) -> &'static str;
    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;
    /// Set up the environment of one job.
    async fn prepare(&self, req: &PrepareRequest) -> Result<Box<dyn Session>, ExecutorError>;
}

/// One job's environment on a backend.
#[async_trait::async_trait]
pub trait Session: Send {
    /// Run one step to completion, timeout or cancellation. Output goes to `log`.
    async fn run_step(
        &mut self,
        step: &StepRequest,
        log: Arc<dyn LogSink>,
        cancel: CancellationToken,
    ) -> Result<StepOutcome, ExecutorError>;
    /// Release everything the session holds. Idempotent.
    async fn cleanup(&mut self) -> Result<(), ExecutorError>;
}
