//! Building the parts from flags: logging, executors and backends (where a job runs:
//! [`build_placement`]), the runner identity, signals ([`signals`] for the job-running
//! commands, [`serve_signals`] for `gsr serve`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use gsr_exec::{CancellationToken, Executor};
use gsr_gitlab::{Features, RunnerInfo};
use gsr_worker::{RunnerIdentity, UploadTiming, WorkerConfig};

use gsr_worker::place::{Placement, Target};

use crate::cli::{BackendArgs, ExecutorArgs};

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
        "docker" | "kubernetes" => {
            bail!(
                "executor {:?} is a backend: only `gsr run-single` places jobs on it",
                args.executor
            )
        }
        other => bail!("unknown executor {other:?}; supported: shell"),
    }
}

/// Executors `gsr run-single --executor` takes: in-process `shell`, and the backends.
pub const RUN_SINGLE_EXECUTORS: &[&str] = &["shell", "local", "docker", "kubernetes"];

/// Where `gsr run-single` runs jobs: `--executor` and `--fallback-executor` built into
/// targets. `shell` runs in this process ([`build_executor`]); `local`, `docker` and
/// `kubernetes` are backends. Backends are not validated here: call
/// [`Placement::prepare`] (validate + reap) before the first job.
pub async fn build_placement(
    args: &ExecutorArgs,
    backend: &BackendArgs,
    gitlab_url: &str,
) -> anyhow::Result<Placement> {
    let name = args.name.clone().unwrap_or_else(hostname);
    let claimer = gsr_worker::place::claimer_identity(&name);
    let local_used =
        args.executor == "local" || backend.fallback_executor.as_deref() == Some("local");
    if !matches!(backend.sandbox.trim(), "" | "none") && !local_used {
        bail!("--sandbox applies to the local executor only (--executor local)");
    }
    let mut primary = build_target(&args.executor, args, backend, &name).await?;
    if let Some(secs) = backend.executor_max_duration {
        primary = match primary {
            Target::Backend(b) => Target::Backend(Arc::new(
                gsr_worker::place::LimitedBackend::new(b, std::time::Duration::from_secs(secs)),
            )),
            Target::InProcess(_) => {
                bail!("--executor-max-duration applies to backends (local, docker, kubernetes)")
            }
        };
    }
    let fallback = match backend.fallback_executor.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(f) if f == args.executor => {
            bail!("--fallback-executor {f:?} is the executor itself")
        }
        Some(f) => Some(build_target(f, args, backend, &name).await?),
    };
    Ok(Placement {
        primary,
        fallback,
        claimer,
        gitlab_url: gitlab_url.trim_end_matches('/').to_string(),
    })
}

/// One target by executor name (`shell`, `local`, `docker`, `kubernetes`); `name` is the
/// claimer's name (`gsr serve`: the replica), used to judge which claimers are alive.
pub(crate) async fn build_target(
    kind: &str,
    args: &ExecutorArgs,
    b: &BackendArgs,
    name: &str,
) -> anyhow::Result<Target> {
    let sandbox = match b.sandbox.trim() {
        "" | "none" => None,
        "bwrap" => Some(gsr_backend_local::Sandbox::Bwrap(Default::default())),
        other => bail!("unknown --sandbox {other:?}; supported: none, bwrap"),
    };
    Ok(match kind {
        "shell" => {
            let mut a = args.clone();
            a.executor = "shell".into();
            Target::InProcess(build_executor(&a).await?)
        }
        "local" => {
            let gsr = std::env::current_exe().context("locating the gsr binary")?;
            let root = builds_dir(&args.builds_dir)?.join(".gsr-local");
            let mut cfg = gsr_backend_local::LocalConfig::new(gsr, root);
            if let Some(s) = sandbox {
                cfg.sandbox = s;
            }
            Target::Backend(Arc::new(gsr_backend_local::LocalBackend::new(cfg)?))
        }
        "docker" => docker_target(b).await?,
        "kubernetes" => kubernetes_target(b, name).await?,
        other => bail!(
            "unknown executor {other:?}; supported: {}",
            RUN_SINGLE_EXECUTORS.join(", ")
        ),
    })
}

/// The docker backend (cargo feature `docker`, on by default).
#[cfg(feature = "docker")]
async fn docker_target(b: &BackendArgs) -> anyhow::Result<Target> {
    let mut s = gsr_backend_docker::DockerSettings {
        socket: b.docker_host.clone(),
        gsr_binary: b.docker_gsr_binary.clone(),
        privileged: b.docker_privileged,
        cpus: b.docker_cpus,
        ..Default::default()
    };
    if let Some(i) = b.docker_image.as_deref().filter(|i| !i.trim().is_empty()) {
        s.default_image = i.trim().to_string();
    }
    if let Some(p) = &b.docker_pull_policy {
        s.pull_policy = gsr_backend_docker::PullPolicy::parse(p).with_context(|| {
            format!("--docker-pull-policy {p:?}: always, if-not-present or never")
        })?;
    }
    if let Some(m) = &b.docker_memory {
        s.memory_bytes =
            Some(parse_bytes(m).with_context(|| {
                format!("--docker-memory {m:?}: a size like 512m, 2g or bytes")
            })?);
    }
    Ok(Target::Backend(Arc::new(
        gsr_backend_docker::DockerBackend::connect(s).await?,
    )))
}

#[cfg(not(feature = "docker"))]
async fn docker_target(_: &BackendArgs) -> anyhow::Result<Target> {
    bail!("this gsr was built without the docker backend (cargo feature `docker`)")
}

/// The kubernetes backend (cargo feature `kubernetes`, on by default); `name` is the
/// claimer's name, used to judge which claimers are alive.
#[cfg(feature = "kubernetes")]
async fn kubernetes_target(b: &BackendArgs, name: &str) -> anyhow::Result<Target> {
    let settings = gsr_backend_k8s::K8sSettings {
        namespace: b.kubernetes_namespace.clone(),
        gsr_image: b.kubernetes_gsr_image.clone().unwrap_or_default(),
        default_image: b.kubernetes_image.clone(),
        service_account: b.kubernetes_service_account.clone(),
        ..Default::default()
    };
    let me = name.to_string();
    let liveness =
        Arc::new(move |claimer: &str| gsr_worker::place::claimer_may_be_alive(&me, claimer));
    Ok(Target::Backend(Arc::new(
        gsr_backend_k8s::K8sBackend::from_env(settings, liveness).await?,
    )))
}

#[cfg(not(feature = "kubernetes"))]
async fn kubernetes_target(_: &BackendArgs, _: &str) -> anyhow::Result<Target> {
    bail!("this gsr was built without the kubernetes backend (cargo feature `kubernetes`)")
}

/// `512m`, `2g`, `1024k`, `1048576` (binary units, like docker's `--memory`).
#[cfg_attr(not(feature = "docker"), allow(dead_code))]
fn parse_bytes(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1i64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<i64>().ok()?.checked_mul(mult)
}

/// What `gsr run-single` declares to GitLab for its placement: the primary target's name
/// as the executor; the shell feature set (shared builds dir) only for in-process
/// `shell`; `image`/`services` only when every target a job may be routed to honours
/// them (declared features must be true for every job).
pub fn placement_runner_info(p: &Placement) -> RunnerInfo {
    match &p.primary {
        Target::InProcess(e) if p.fallback.is_none() => runner_info(e.as_ref()),
        primary => {
            let all = |f: fn(&gsr_backend::Capabilities) -> bool| {
                p.targets().all(|t| f(&t.capabilities()))
            };
            let features = Features {
                image: all(|c| c.image),
                services: all(|c| c.services),
                ..Features::worker()
            };
            RunnerInfo::new(primary.name(), "bash", features)
        }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gsr_backend::{Backend, BackendError, Capabilities, Launch, ReapReport, Running};

    use super::*;

    struct Fake(&'static str, Capabilities);

    #[async_trait::async_trait]
    impl Backend for Fake {
        fn name(&self) -> &str {
            self.0
        }
        fn capabilities(&self) -> Capabilities {
            self.1
        }
        async fn validate(&self) -> Result<(), BackendError> {
            Ok(())
        }
        async fn healthcheck(&self) -> Result<(), BackendError> {
            Ok(())
        }
        async fn reap(&self) -> Result<ReapReport, BackendError> {
            Ok(ReapReport::default())
        }
        async fn start(&self, _: Launch) -> Result<Box<dyn Running>, BackendError> {
            unreachable!("not started in these tests")
        }
    }

    fn placement(primary: Target, fallback: Option<Target>) -> Placement {
        Placement {
            primary,
            fallback,
            claimer: "t-1-1".into(),
            gitlab_url: "http://gitlab.invalid".into(),
        }
    }

    fn docker() -> Target {
        Target::Backend(Arc::new(Fake(
            "docker",
            Capabilities {
                image: true,
                services: true,
                hard_cancel: true,
                ..Capabilities::default()
            },
        )))
    }

    fn lambda() -> Target {
        Target::Backend(Arc::new(Fake(
            "lambda",
            Capabilities {
                max_duration: Some(Duration::from_secs(900)),
                ..Capabilities::default()
            },
        )))
    }

    #[test]
    fn declared_executor_and_features_follow_the_targets() {
        let info = placement_runner_info(&placement(docker(), None));
        assert_eq!(info.executor, "docker");
        assert!(info.features.image && info.features.services);
        assert!(!info.features.shared);

        // A job may land on the fallback, which has no image support: not declared.
        let info = placement_runner_info(&placement(docker(), Some(lambda())));
        assert_eq!(info.executor, "docker");
        assert!(!info.features.image && !info.features.services);

        let shell = Target::InProcess(Arc::new(gsr_exec_process::ProcessExecutor::new()));
        let info = placement_runner_info(&placement(shell, None));
        assert_eq!(info.executor, "shell");
        assert!(info.features.shared && !info.features.image);
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_bytes("512m"), Some(512 << 20));
        assert_eq!(parse_bytes("2G"), Some(2 << 30));
        assert_eq!(parse_bytes("64kb"), Some(64 << 10));
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes(""), None);
    }
}
