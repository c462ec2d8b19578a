//! Building the parts from flags: logging, executors, the runner identity, signals
//! ([`signals`] for the job-running commands, [`serve_signals`] for `gsr serve`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use gsr_exec::{CancellationToken, Executor};
use gsr_gitlab::{Features, RunnerInfo};
use gsr_worker::{RunnerIdentity, UploadTiming, WorkerConfig};

use crate::cli::ExecutorArgs;

/// Exit status: the job (or every job) succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit status: a job failed (its state was reported to GitLab).
pub const EXIT_JOB_FAILED: u8 = 1;
/// Exit status: the job was canceled by GitLab.
pub const EXIT_CANCELED: u8 = 3;
/// Exit status: the final job state could not be delivered to GitLab.
pub const EXIT_UNDELIVERED: u8 = 4;
/// Exit status: bad usage, bad configuration or an unusable payload.
pub const EXIT_USAGE: u8 = 2;

/// Logs go to stderr; `RUST_LOG` wins over `--debug`. Job output never goes here.
/// Colours only on a terminal: a log file or collector gets plain `key=value` text.
pub fn init_logging(debug: bool) {
    use std::io::IsTerminal;
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// The executor named by `--executor`, ready to take jobs.
///
/// The shell executor records each job's running step under
/// `<builds dir>/`[`gsr_exec_process::STEP_REGISTRY_DIR`], and before anything else kills
/// what runners that died on this host without cleaning up (SIGKILL, OOM) left running
/// there, and removes their step script dirs; see the `gsr-exec-process` crate docs.
pub async fn build_executor(args: &ExecutorArgs) -> anyhow::Result<Arc<dyn Executor>> {
    match args.executor.as_str() {
        "shell" | "local" => {
            let registry = builds_dir(&args.builds_dir)?.join(gsr_exec_process::STEP_REGISTRY_DIR);
            let executor = gsr_exec_process::ProcessExecutor::new().with_step_registry(registry);
            executor.reap_stale().await;
            Ok(Arc::new(executor))
        }
        other => bail!("unknown executor {other:?}; supported: shell"),
    }
}

/// What the runner declares to GitLab for this executor.
pub fn runner_info(executor: &dyn Executor) -> RunnerInfo {
    let features = if executor.capabilities().shared_builds_dir {
        Features::shell_runner()
    } else {
        Features::worker()
    };
    RunnerInfo::new(executor.name(), "bash", features)
}

/// Absolute builds dir (CI_BUILDS_DIR must be absolute).
pub fn builds_dir(p: &Path) -> anyhow::Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .context("reading the current directory")?
            .join(p)
    };
    std::fs::create_dir_all(&abs)
        .with_context(|| format!("creating the builds dir {}", abs.display()))?;
    Ok(abs)
}

/// Worker settings from flags.
pub fn worker_config(
    args: &ExecutorArgs,
    runner_token_or_job: &str,
    system_id: &str,
) -> anyhow::Result<WorkerConfig> {
    let name = args.name.clone().unwrap_or_else(hostname);
    Ok(WorkerConfig {
        builds_dir: builds_dir(&args.builds_dir)?,
        output_limit: args.output_limit.saturating_mul(1024),
        runner: RunnerIdentity {
            name,
            short_token: gsr_worker::short_token(runner_token_or_job),
            system_id: system_id.to_string(),
            version: gsr_gitlab::VERSION.to_string(),
            revision: option_env!("GSR_REVISION").unwrap_or("unknown").to_string(),
        },
        concurrent_id: 0,
        timing: UploadTiming::default(),
        two_phase: true,
    })
}

/// The host name.
pub fn hostname() -> String {
    gsr_worker::hostname().unwrap_or_else(|| "gsr".into())
}

/// Signals: SIGINT/SIGTERM abort running jobs (like gitlab-runner's forceful shutdown);
/// SIGQUIT stops taking new jobs and lets the running one finish.
pub struct Signals {
    /// Fired on SIGINT/SIGTERM.
    pub abort: CancellationToken,
    /// Fired on any of the three.
    pub stop_requesting: CancellationToken,
}

/// Install the signal handlers.
pub fn signals() -> anyhow::Result<Signals> {
    use tokio::signal::unix::{signal, SignalKind};
    let abort = CancellationToken::new();
    let stop = CancellationToken::new();
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut quit = signal(SignalKind::quit()).context("installing SIGQUIT handler")?;
    let (a, s) = (abort.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => { tracing::warn!("SIGINT: aborting"); s.cancel(); a.cancel(); }
                _ = term.recv() => { tracing::warn!("SIGTERM: aborting"); s.cancel(); a.cancel(); }
                _ = quit.recv() => { tracing::warn!("SIGQUIT: finishing the running job, then exiting"); s.cancel(); }
            }
        }
    });
    Ok(Signals {
        abort,
        stop_requesting: stop,
    })
}

/// Signals of `gsr serve`: the first SIGINT/SIGTERM/SIGQUIT drains, the second forces.
///
/// Unlike `run-single`, where SIGTERM aborts the one job at once (as gitlab-runner does),
/// a control plane runs many users' jobs and is stopped by orchestrators on every deploy:
/// a stop request must let short jobs finish (for `--shutdown-timeout`), and only an
/// operator who insists (a second signal) gets the jobs aborted right away.
pub struct ServeSignals {
    /// Fired on the first signal: stop accepting and claiming, drain.
    pub drain: CancellationToken,
    /// Fired on the second signal: abort the running jobs now.
    pub force: CancellationToken,
}

/// Install the handlers of `gsr serve`.
pub fn serve_signals() -> anyhow::Result<ServeSignals> {
    use tokio::signal::unix::{signal, SignalKind};
    let drain = CancellationToken::new();
    let force = CancellationToken::new();
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut quit = signal(SignalKind::quit()).context("installing SIGQUIT handler")?;
    let (d, f) = (drain.clone(), force.clone());
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
                _ = quit.recv() => "SIGQUIT",
            };
            if !d.is_cancelled() {
                tracing::warn!(
                    signal = name,
                    "stopping: no new jobs; running jobs may finish (a second signal aborts them)"
                );
                d.cancel();
            } else if !f.is_cancelled() {
                tracing::warn!(signal = name, "second signal: aborting the running jobs");
                f.cancel();
            }
        }
    });
    Ok(ServeSignals { drain, force })
}

/// Exit status for one finished job.
pub fn exit_code(report: &gsr_worker::JobReport) -> u8 {
    use gsr_worker::Delivery;
    match (
        &report.delivery,
        report.canceled,
        report.outcome.is_success(),
    ) {
        (Delivery::Failed(_), _, _) => EXIT_UNDELIVERED,
        (_, true, _) => EXIT_CANCELED,
        (_, false, true) => EXIT_OK,
        (_, false, false) => EXIT_JOB_FAILED,
    }
}
