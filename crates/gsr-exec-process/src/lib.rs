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
//! - **A runner that dies.** All of the above is done by a *running* runner. One killed
//!   without a chance to clean up (SIGKILL, the OOM killer) leaves its steps running,
//!   reparented to init: nothing ties their life to the runner's (`PR_SET_PDEATHSIG` would
//!   reach only the shell, not its children, and fires when the spawning *thread* exits;
//!   bash defers traps while a foreground command runs). The command running at the crash
//!   would go on unseen while GitLab already shows the job failed, possibly in a builds dir
//!   a new job is given. So, like containers labelled with the runner that owns them, each
//!   job is written down in a step registry ([`ProcessExecutor::with_step_registry`]):
//!   its script dir, its running step's process group (leader PID *and* start time), and
//!   the owning runner (PID and start time). At start-up
//!   [`ProcessExecutor::reap_stale`] kills the recorded groups of runners that are gone
//!   (and what descends from them), removes their script dirs and deletes their records;
//!   records of live runners sharing the dir are left alone.
//!   Not covered: a host or container that is gone took its processes with it (only its
//!   files can be cleaned up; those of a container restarted in a new PID namespace are
//!   left); processes that left the group (`setsid`, double-fork) are found only as
//!   `/proc` descendants of the group while their parent lives; a crash in the
//!   microseconds between spawning a shell and recording it. Details in `registry.rs`.
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
//! - `registry.rs`: the step registry — recording running steps on disk, and reaping
//!   those of runners that died ([`ReapReport`]).
//! - `env.rs`: the step's environment ([`DEFAULT_PATH`] when the runner has no `PATH`).
//! - `shell.rs`: [`Shell`] — which shell, its arguments, its script dialect.
#![warn(missing_docs)]

mod env;
mod registry;
mod session;
mod shell;
mod tree;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gsr_exec::{Capabilities, Executor, ExecutorError, PrepareRequest, Session};

pub use env::DEFAULT_PATH;
pub use registry::{ReapReport, GARBAGE_GRACE, STEP_REGISTRY_DIR};
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
    registry: Option<Arc<registry::Registry>>,
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
            registry: None,
        }
    }

    /// Record every job's running step and script dir in `dir` (made on first use, mode
    /// 0700), so that [`reap_stale`](Self::reap_stale) in a later runner can kill what this
    /// one leaves running if it dies without cleaning up. The `gsr` binary uses
    /// `<builds dir>/`[`STEP_REGISTRY_DIR`]. Runners sharing the dir on one host judge
    /// only the records of owners that are gone. See the `registry` section of the crate
    /// docs.
    pub fn with_step_registry(mut self, dir: impl Into<PathBuf>) -> Self {
        self.registry = Some(Arc::new(registry::Registry::new(dir.into())));
        self
    }

    /// The step registry dir, if any.
    pub fn step_registry(&self) -> Option<&Path> {
        self.registry.as_deref().map(registry::Registry::dir)
    }

    /// Kill the steps of runners that died without cleaning up, and remove their script
    /// dirs: for every record in the step registry whose owner process is gone (its PID
    /// missing or held by a process with another start time), the recorded process group,
    /// if it is still the one started, is killed with everything descending from it, then
    /// the script dir and the record are removed. Records of live owners (this process,
    /// another runner sharing the dir) and of other hosts or PID namespaces are left
    /// alone; unreadable files are removed once older than [`GARBAGE_GRACE`].
    ///
    /// Call it once at start-up, before taking jobs. Idempotent; never fails (problems
    /// are logged). Without a registry it does nothing.
    pub async fn reap_stale(&self) -> ReapReport {
        match &self.registry {
            Some(registry) => registry.reap().await,
            None => ReapReport::default(),
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
        let record = self
            .registry
            .as_ref()
            .and_then(|registry| registry.register(scripts.path()));
        Ok(ProcessSession {
            record,
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
