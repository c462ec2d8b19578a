//! The local (shell) executor: each step is one shell process, and everything it starts,
//! on the runner's own machine — gitlab-runner's `shell` executor.
//!
//! # Why it works this way
//!
//! - **One process group per step.** The shell is started as the leader of a new process
//!   group, so one `killpg(SIGKILL)` reaches every process of the step at once — including
//!   background jobs (`sleep 1000 &`) — while the runner, in its own group, is never hit.
//!   The group is killed on timeout and on cancel, *and* after the shell exits normally:
//!   whatever the script left running would otherwise outlive the job and keep its output
//!   pipe open. `run_step` returns only once nothing of the step is left alive (contract
//!   rule 1).
//! - **Escapes.** A process can leave the group (`setsid`, or job control with `set -m`).
//!   On Linux we also walk `/proc`: while the step runs its process tree is sampled (every
//!   second by default, see [`ProcessExecutor::process_tracking`]), and at the end every
//!   process that is in the group, was sampled, or descends from either is stopped, then
//!   killed. What is still out of reach is a process that left the group *and* lost its
//!   parent between two samples — typically a double-forking daemon. Containing those needs
//!   a cgroup or a PID namespace (the optional sandbox planned for this executor).
//! - **Environment scrub.** The shell starts from an empty environment and gets exactly
//!   the step's variables plus `PATH` and `HOME` when the step has none (contract rule 2).
//!   The runner's token and anything else in the runner's environment never reach a job.
//!   Variables travel only through the environment, never through the script text, so any
//!   value (quotes, `$`, backticks, newlines) arrives byte for byte.
//! - **One pipe for stdout and stderr.** Both are the same pipe, so the trace shows output
//!   in the order it was written. It is read asynchronously in chunks of at most
//!   [`READ_CHUNK`] bytes, each handed to the [`LogSink`](gsr_exec::LogSink) at once:
//!   output streams, it is never accumulated here.
//! - **The script.** It comes from [`gsr_exec::script::bash_script`] (the same for every
//!   bash backend) and is written to a private 0700 temp dir, never into the project dir,
//!   then run as `bash --noprofile --norc <script>` with stdin from `/dev/null` and the
//!   project dir as working directory. Without bash, `sh <script>` runs a variant in which
//!   pipefail is enabled only if the shell supports it ([`sh_script`]).
//!
//! Zombies: processes orphaned by a killed step are reparented to PID 1 (or the nearest
//! subreaper) and must be reaped there. Run the runner under a real init (`tini`, systemd,
//! `docker run --init`) when it is itself PID 1 of a container.
//!
//! # Layout
//!
//! - `lib.rs`: [`ProcessExecutor`] — shell detection, capabilities, `prepare`.
//! - `session.rs`: [`ProcessSession`] — writing the script, spawning the shell, streaming
//!   output, the timeout/cancel race, `cleanup`.
//! - `tree.rs`: finding a step's processes in `/proc`, and stopping then killing them.
//! - `env.rs`: the step's environment ([`DEFAULT_PATH`] when the runner has no `PATH`).
//! - `shell.rs`: [`Shell`] — which shell, its arguments, its script dialect.
#![warn(missing_docs)]

mod env;
mod session;
mod shell;
mod tree;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use gsr_exec::{Capabilities, Executor, ExecutorError, PrepareRequest, Session};

pub use env::DEFAULT_PATH;
pub use session::{ProcessSession, READ_CHUNK};
pub use shell::{find_in_path, sh_script, Shell, ShellKind, SH_PIPEFAIL};

/// How often a running step's process tree is sampled by default.
pub const DEFAULT_TRACKING_INTERVAL: Duration = Duration::from_secs(1);

/// The `shell` executor: runs each step as a local shell process group.
#[derive(Debug, Clone)]
pub struct ProcessExecutor {
    shell: Shell,
    base_env: env::BaseEnv,
    tracking: Option<Duration>,
}

impl ProcessExecutor {
    /// Detect the shell once: `bash` from the runner's `PATH`, else `sh`.
    pub fn new() -> Self {
        let base_env = env::BaseEnv::from_runner();
        Self::from_shell(Shell::detect(Some(&base_env.path)))
    }

    /// Use the shell at `path`; a file name starting with `bash` is run as bash, anything
    /// else as POSIX `sh`. A bare name (`"sh"`) is looked up in the runner's `PATH` now,
    /// so that a step's own `PATH` can never change which shell runs it.
    pub fn with_shell(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let bare = path.components().count() == 1 && !path.has_root();
        let path = match path.to_str() {
            Some(name) if bare => {
                find_in_path(name, Some(&env::BaseEnv::from_runner().path)).unwrap_or(path)
            }
            _ => path,
        };
        Self::from_shell(Shell::new(path))
    }

    /// Use `shell`.
    pub fn from_shell(shell: Shell) -> Self {
        Self {
            shell,
            base_env: env::BaseEnv::from_runner(),
            tracking: Some(DEFAULT_TRACKING_INTERVAL),
        }
    }

    /// Sample each running step's process tree every `interval` (`None`: never), so that
    /// processes that left the step's process group can still be killed when it ends.
    /// Without sampling, those are found only if their parent is still alive at the end.
    pub fn process_tracking(mut self, interval: Option<Duration>) -> Self {
        self.tracking = interval.filter(|d| !d.is_zero());
        self
    }

    /// The shell that runs steps.
    pub fn shell(&self) -> &Shell {
        &self.shell
    }

    /// [`Executor::prepare`], with the concrete session type.
    ///
    /// Cheap: the project dir is the worker's; the only thing made here is a private temp
    /// dir for step scripts.
    pub fn prepare_session(&self, req: &PrepareRequest) -> Result<ProcessSession, ExecutorError> {
        if let Some(image) = &req.image {
            // Like gitlab-runner's shell executor; the worker decides from `capabilities`
            // whether that is acceptable.
            tracing::debug!(job = req.job_id, %image, "the shell executor ignores `image:`");
        }
        let scripts = tempfile::Builder::new()
            .prefix(&format!("gsr-job-{}-", req.job_id))
            // Only the runner's user may read the scripts (they contain the job's commands).
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|source| ExecutorError::Io {
                context: "creating the step scripts dir".into(),
                source,
            })?;
        Ok(ProcessSession {
            shell: self.shell.clone(),
            base_env: self.base_env.clone(),
            tracking: self.tracking,
            project_dir: req.project_dir.clone(),
            scripts_path: scripts.path().to_path_buf(),
            scripts: Some(scripts),
            next_script: 0,
        })
    }
}

impl Default for ProcessExecutor {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl Executor for ProcessExecutor {
    fn name(&self) -> &'static str {
        "shell"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            image: false,
            services: false,
            hard_cancel: true,
            shared_builds_dir: true,
        }
    }

    async fn prepare(&self, req: &PrepareRequest) -> Result<Box<dyn Session>, ExecutorError> {
        Ok(Box::new(self.prepare_session(req)?))
    }
}
