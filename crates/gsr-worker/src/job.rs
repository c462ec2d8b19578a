//! The stage sequence of one job, as gitlab-runner runs it (RUNNER-PROTOCOL §6.1).
//!
//! Each stage returns normally with what happened; only [`run_job`] decides the final
//! state. Three things can interrupt a job, and they differ:
//! - GitLab's `canceling` (graceful): the script step is killed, `after_script` still runs
//!   (with `CI_JOB_STATUS=canceled`), artifacts for failure are uploaded, the final state
//!   is sent; GitLab records the job as canceled.
//! - GitLab's `canceled`/403 or a runner shutdown (abort): everything stops at once; the
//!   final update is still attempted.
//! - The job timeout: the running step is killed, `after_script` runs, and the job fails
//!   with `job_execution_timeout`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gsr_exec::{CancellationToken, Executor, PrepareRequest, Session, StepOutcome, StepRequest};
use gsr_gitlab::{JobClient, JobUpdate, UpdateResult};
use gsr_job::{
    map_failure_reason, ExposeSecret, FailureKind, JobSpec, Outcome, StepName, Variables,
};
use gsr_trace::{Trace, TraceConfig};
use tokio::time::Instant;

use crate::env::{self, JobDirs};
use crate::log::JobLog;
use crate::uploader::{Delivery, JobSignals, TraceUploader};
use crate::WorkerConfig;

/// gitlab-runner's default `after_script` timeout.
const AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// How a job ended, for the caller's exit status and logs.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// Job id.
    pub job_id: u64,
    /// What the job did.
    pub outcome: Outcome,
    /// Whether GitLab got the final state.
    pub delivery: Delivery,
    /// GitLab cancelled the job (gracefully or not).
    pub canceled: bool,
}

struct Ctx<'a> {
    spec: &'a JobSpec,
    cfg: &'a WorkerConfig,
    log: JobLog,
    client: JobClient,
    executor: Arc<dyn Executor>,
    signals: JobSignals,
    deadline: Instant,
    dirs: JobDirs,
    vars: Variables,
    debug_trace: bool,
}

/// Why a runner-side stage stopped early.
enum Interrupt {
    TimedOut,
    Canceled,
}

/// Run one job to its end and report it to GitLab. Never panics on bad input; every
/// failure ends as a failed job with a readable last trace line.
pub async fn run_job(
    spec: JobSpec,
    client: JobClient,
    executor: Arc<dyn Executor>,
    cfg: &WorkerConfig,
    shutdown: CancellationToken,
) -> JobReport {
    let mut masked = spec.variables.masked_values();
    let token = spec.token.expose_secret().to_string();
    if !masked.contains(&token) {
        masked.push(token);
    }
    let trace_cfg = TraceConfig {
        masked_values: masked,
        token_prefixes: spec.token_mask_prefixes.clone(),
        output_limit: cfg.output_limit,
    };
    let trace = match Trace::new(trace_cfg) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            tracing::error!(job = spec.id, error = %e, "cannot create the trace buffer");
            let reply = client
                .update(&JobUpdate {
                    state: "failed",
                    failure_reason: Some("runner_system_failure".into()),
                    exit_code: None,
                    output: None,
                })
                .await;
            return JobReport {
                job_id: spec.id,
                outcome: Outcome::failed(FailureKind::RunnerSystem, None, e.to_string()),
                delivery: match reply.result {
                    UpdateResult::Accepted => Delivery::Accepted,
                    UpdateResult::Gone => Delivery::Gone,
                    other => Delivery::Failed(format!("{other:?}")),
                },
                canceled: false,
            };
        }
    };

    let abort = shutdown.child_token();
    let signals = JobSignals {
        cancel: abort.child_token(),
        abort: abort.clone(),
    };

    // Two-phase commit: the job stays pending in GitLab until we say we run it. Until
    // that is acknowledged GitLab refuses trace and final states, so retry it; if it never
    // goes through, do not run the job at all (GitLab will hand it out again).
    if cfg.two_phase {
        let mut failures = 0;
        loop {
            let reply = client.update(&JobUpdate::running(None)).await;
            if reply.signal == gsr_gitlab::JobSignal::Cancel {
                signals.cancel.cancel();
            }
            let dropped = reply.signal == gsr_gitlab::JobSignal::Abort;
            let error = match reply.result {
                UpdateResult::Accepted | UpdateResult::NotFinished | UpdateResult::TraceInvalid
                    if !dropped =>
                {
                    break
                }
                UpdateResult::Gone
                | UpdateResult::Accepted
                | UpdateResult::NotFinished
                | UpdateResult::TraceInvalid => {
                    tracing::warn!(job = spec.id, "GitLab dropped the job before it started");
                    return JobReport {
                        job_id: spec.id,
                        outcome: Outcome::failed(FailureKind::Canceled, None, "dropped by GitLab"),
                        delivery: Delivery::Gone,
                        canceled: true,
                    };
                }
                UpdateResult::Rejected(e) | UpdateResult::Failed(e) => e,
            };
            failures += 1;
            if failures >= cfg.timing.final_update_attempts {
                tracing::error!(job = spec.id, error = %error, "could not acknowledge the job; not running it");
                return JobReport {
                    job_id: spec.id,
                    outcome: Outcome::failed(
                        FailureKind::RunnerSystem,
                        None,
                        format!("could not acknowledge the job: {error}"),
                    ),
                    delivery: Delivery::Failed(error),
                    canceled: false,
                };
            }
            let wait = cfg.timing.backoff(failures);
            tracing::warn!(job = spec.id, error = %error, ?wait, "acknowledging the job failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    let debug_trace = spec.variables.is_true("CI_DEBUG_TRACE");
    let uploader = TraceUploader::new(
        client.clone(),
        trace.clone(),
        signals.clone(),
        cfg.timing,
        debug_trace,
    );
    let stop_pump = CancellationToken::new();
    let pump = tokio::spawn(uploader.pump(stop_pump.clone()));

    let log = JobLog::new(trace.clone(), spec.trace_sections);
    let strategy = git_strategy(&spec.variables, spec.allow_git_fetch);
    let dirs = JobDirs::new(
        &cfg.builds_dir,
        &spec,
        &cfg.runner,
        executor.capabilities().shared_builds_dir,
        cfg.concurrent_id,
        matches!(strategy, Ok(gsr_git::GitStrategy::Empty)),
    );
    let vars = env::job_variables(
        &spec,
        &dirs,
        &cfg.runner,
        cfg.concurrent_id,
        executor.capabilities().shared_builds_dir,
    );
    let ctx = Ctx {
        spec: &spec,
        cfg,
        log: log.clone(),
        client: client.clone(),
        executor,
        signals: signals.clone(),
        deadline: Instant::now() + spec.timeout,
        dirs,
        vars,
        debug_trace,
    };

    let outcome = ctx.run().await;
    let canceled = signals.cancel.is_cancelled() || signals.abort.is_cancelled();
    let outcome = if shutdown.is_cancelled() && !outcome.is_success() {
        Outcome::failed(
            FailureKind::RunnerInterrupted,
            None,
            "the runner is shutting down",
        )
    } else {
        outcome
    };

    match &outcome {
        Outcome::Success => log.info("Job succeeded"),
        Outcome::Failed {
            kind: FailureKind::RunnerSystem,
            message,
            ..
        } => log.error(&format!("Job failed (system failure): {message}")),
        Outcome::Failed { message, .. } => log.error(&format!("Job failed: {message}")),
    }

    stop_pump.cancel();
    let uploader = match pump.await {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(job = spec.id, error = %e, "trace pump failed; resending the trace");
            TraceUploader::new(client, trace, signals, cfg.timing, debug_trace)
        }
    };
    let update = match &outcome {
        Outcome::Success => JobUpdate {
            state: "success",
            failure_reason: None,
            exit_code: None,
            output: None,
        },
        Outcome::Failed {
            kind, exit_code, ..
        } => JobUpdate {
            state: "failed",
            failure_reason: Some(
                map_failure_reason(kind.gitlab_reason(), &spec.known_failure_reasons).into(),
            ),
            exit_code: *exit_code,
            output: None,
        },
    };
    let delivery = uploader.finish(update).await;
    match &delivery {
        Delivery::Accepted => tracing::info!(job = spec.id, ?outcome, "job finished"),
        Delivery::Gone => tracing::info!(job = spec.id, "job finished; GitLab no longer tracks it"),
        Delivery::Failed(e) => {
            tracing::error!(job = spec.id, error = %e, "could not deliver the final job state")
        }
    }
    JobReport {
        job_id: spec.id,
        outcome,
        delivery,
        canceled,
    }
}

/// Fail a job whose payload cannot be run, with a readable reason in its trace.
pub async fn fail_unrunnable(client: JobClient, cfg: &WorkerConfig, reason: &str) -> Delivery {
    let trace = match Trace::new(TraceConfig::new(Vec::new())) {
        Ok(t) => Arc::new(t),
        Err(e) => return Delivery::Failed(e.to_string()),
    };
    if cfg.two_phase {
        let _ = client.update(&JobUpdate::running(None)).await;
    }
    let log = JobLog::new(trace.clone(), false);
    header(&log, cfg);
    log.error(&format!("Job failed (system failure): {reason}"));
    let signals = JobSignals {
        cancel: CancellationToken::new(),
        abort: CancellationToken::new(),
    };
    TraceUploader::new(client, trace, signals, cfg.timing, false)
        .finish(JobUpdate {
            state: "failed",
            failure_reason: Some("runner_system_failure".into()),
            exit_code: None,
            output: None,
        })
        .await
}

fn header(log: &JobLog, cfg: &WorkerConfig) {
    let r = &cfg.runner;
    log.line(&format!("Running with gsr {} ({})", r.version, r.revision));
    log.line(&format!(
        "  on {} {}, system ID: {}",
        r.name, r.short_token, r.system_id
    ));
}

fn git_strategy(vars: &Variables, allow_git_fetch: bool) -> Result<gsr_git::GitStrategy, String> {
    match vars
        .get("GIT_STRATEGY")
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(s) => s.parse::<gsr_git::GitStrategy>().map_err(|e| e.to_string()),
        None if allow_git_fetch => Ok(gsr_git::GitStrategy::Fetch),
        None => Ok(gsr_git::GitStrategy::Clone),
    }
}

fn attempts(vars: &Variables, key: &str) -> u32 {
    vars.get(key)
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(1)
        .clamp(1, 10)
}

impl Ctx<'_> {
    async fn run(&self) -> Outcome {
        header(&self.log, self.cfg);

        // prepare_executor
        let exec_name = self.executor.name();
        self.log.section_start(
            "prepare_executor",
            &format!("Preparing the \"{exec_name}\" executor"),
        );
        if exec_name == "shell" {
            self.log.line("Using Shell (bash) executor...");
        }
        let prepared = self.prepare().await;
        self.log.section_end("prepare_executor");
        let mut session = match prepared {
            Ok(s) => s,
            Err(o) => return o,
        };

        let outcome = self.run_in_session(session.as_mut()).await;

        // cleanup_file_variables
        self.log.section_start(
            "cleanup_file_variables",
            "Cleaning up project directory and file based variables",
        );
        if let Err(e) = session.cleanup().await {
            tracing::warn!(job = self.spec.id, error = %e, "executor cleanup failed");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dirs.tmp_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(job = self.spec.id, error = %e, "removing the job temp dir failed");
            }
        }
        self.log.section_end("cleanup_file_variables");
        outcome
    }

    async fn prepare(&self) -> Result<Box<dyn Session>, Outcome> {
        let sys = |what: &str, e: &dyn std::fmt::Display| {
            Outcome::failed(FailureKind::RunnerSystem, None, format!("{what}: {e}"))
        };
        if let Some(parent) = self.dirs.project_dir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| sys("creating the builds dir", &e))?;
        }
        std::fs::create_dir_all(&self.dirs.tmp_dir)
            .map_err(|e| sys("creating the job temp dir", &e))?;
        std::fs::write(self.dirs.gitlab_env(), b"")
            .map_err(|e| sys("creating the GITLAB_ENV file", &e))?;
        let req = PrepareRequest {
            job_id: self.spec.id,
            builds_dir: self.dirs.builds_dir.clone(),
            project_dir: self.dirs.project_dir.clone(),
            image: self.spec.image.as_ref().map(|i| i.name.clone()),
        };
        self.executor
            .prepare(&req)
            .await
            .map_err(|e| sys("preparing the executor", &e))
    }

    async fn run_in_session(&self, session: &mut dyn Session) -> Outcome {
        // prepare_script
        self.log
            .section_start("prepare_script", "Preparing environment");
        self.log.line(&format!(
            "Running on {}...",
            crate::hostname().unwrap_or_else(|| "localhost".into())
        ));
        let env = env::process_env(&self.vars, &self.dirs.tmp_dir);
        self.log.section_end("prepare_script");
        let env = match env {
            Ok(e) => e,
            Err(e) => {
                return Outcome::failed(
                    FailureKind::RunnerSystem,
                    None,
                    format!("writing file variables: {e}"),
                )
            }
        };

        // get_sources
        self.log
            .section_start("get_sources", "Getting source from Git repository");
        let sources = self.get_sources(session, &env).await;
        self.log.section_end("get_sources");
        if let Err(o) = sources {
            return o;
        }

        // download_artifacts
        if self
            .spec
            .dependencies
            .iter()
            .any(|d| d.artifacts_file.is_some())
        {
            self.log
                .section_start("download_artifacts", "Downloading artifacts");
            let r = self.download_artifacts().await;
            self.log.section_end("download_artifacts");
            if let Err(o) = r {
                return o;
            }
        }

        // Steps, in GitLab's order; the first failure ends them.
        let mut outcome = Outcome::Success;
        let mut steps_started = false;
        for step in &self.spec.steps {
            if step.name == StepName::AfterScript || !step.when.applies(outcome.is_success()) {
                continue;
            }
            steps_started = true;
            let stage = format!("step_{}", step.name.as_str());
            self.log.section_start(
                &stage,
                &format!("Executing \"{stage}\" stage of the job script"),
            );
            let timeout = env::duration_var(&self.vars, "RUNNER_SCRIPT_TIMEOUT")
                .into_iter()
                .chain(step.timeout)
                .min();
            let r = self
                .run_step(
                    session,
                    &stage,
                    &step.script,
                    &env,
                    "running",
                    timeout,
                    &self.signals.cancel,
                )
                .await;
            self.log.section_end(&stage);
            if let Err(o) = r {
                outcome = o;
                break;
            }
        }

        // after_script: always once the script started, unless the job was aborted.
        if let Some(after) = self
            .spec
            .steps
            .iter()
            .find(|s| s.name == StepName::AfterScript)
        {
            if steps_started && !self.signals.abort.is_cancelled() && !after.script.is_empty() {
                self.log
                    .section_start("after_script", "Running after_script");
                self.log.info("Running after script...");
                let timeout = env::duration_var(&self.vars, "RUNNER_AFTER_SCRIPT_TIMEOUT")
                    .unwrap_or(AFTER_SCRIPT_TIMEOUT);
                // Its own clock: it runs even after the job timeout or a graceful cancel.
                let token = self.signals.abort.child_token();
                let status = outcome.ci_job_status();
                let r = self
                    .run_step_with(
                        session,
                        "after_script",
                        &after.script,
                        &env,
                        status,
                        timeout,
                        &token,
                    )
                    .await;
                if let Err(Outcome::Failed { message, .. }) = r {
                    self.log.warn(&format!(
                        "after_script failed, but job will continue unaffected: {message}"
                    ));
                }
                self.log.section_end("after_script");
            }
        }

        // Artifacts, for success or failure as each rule says.
        if !self.signals.abort.is_cancelled() && !self.spec.artifacts.is_empty() {
            if let Err(o) = self.upload_artifacts(outcome.is_success()).await {
                if outcome.is_success() {
                    outcome = o;
                }
            }
        }
        outcome
    }

    /// A script step under the job deadline.
    #[allow(clippy::too_many_arguments)]
    async fn run_step(
        &self,
        session: &mut dyn Session,
        stage: &str,
        commands: &[String],
        env: &[(String, String)],
        job_status: &str,
        step_timeout: Option<Duration>,
        cancel: &CancellationToken,
    ) -> Result<(), Outcome> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let timeout = step_timeout.map_or(remaining, |t| t.min(remaining));
        if timeout.is_zero() {
            return Err(self.timeout_outcome());
        }
        let r = self
            .run_step_with(session, stage, commands, env, job_status, timeout, cancel)
            .await;
        match r {
            Err(Outcome::Failed {
                kind: FailureKind::JobExecutionTimeout,
                ..
            }) if Instant::now() >= self.deadline => Err(self.timeout_outcome()),
            other => other,
        }
    }

    fn timeout_outcome(&self) -> Outcome {
        Outcome::failed(
            FailureKind::JobExecutionTimeout,
            None,
            format!("execution took longer than {}", humanize(self.spec.timeout)),
        )
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_step_with(
        &self,
        session: &mut dyn Session,
        stage: &str,
        commands: &[String],
        env: &[(String, String)],
        job_status: &str,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), Outcome> {
        let mut env = env.to_vec();
        env::set_env(&mut env, "CI_JOB_STATUS", job_status);
        let req = StepRequest {
            stage: stage.to_string(),
            commands: commands.to_vec(),
            env,
            workdir: self.dirs.project_dir.clone(),
            timeout,
            debug_trace: self.debug_trace,
        };
        let sink: Arc<dyn gsr_exec::LogSink> = self.log.trace().clone();
        let r = session.run_step(&req, sink, cancel.clone()).await;
        self.log.trace().flush();
        match r {
            Ok(StepOutcome::Exited(0)) => Ok(()),
            Ok(StepOutcome::Exited(code)) => Err(Outcome::failed(
                FailureKind::Script,
                Some(code),
                format!("exit code {code}"),
            )),
            Ok(StepOutcome::TimedOut) => Err(Outcome::failed(
                FailureKind::JobExecutionTimeout,
                None,
                format!("{stage} timed out after {}", humanize(timeout)),
            )),
            Ok(StepOutcome::Canceled) => {
                Err(Outcome::failed(FailureKind::Canceled, None, "canceled"))
            }
            Err(e) => Err(Outcome::failed(
                FailureKind::RunnerSystem,
                None,
                e.to_string(),
            )),
        }
    }

    /// Run a runner-side future under the job deadline and the cancel/abort tokens.
    async fn guarded<F: std::future::Future>(&self, fut: F) -> Result<F::Output, Interrupt> {
        tokio::select! {
            r = fut => Ok(r),
            _ = tokio::time::sleep_until(self.deadline) => Err(Interrupt::TimedOut),
            _ = self.signals.cancel.cancelled() => Err(Interrupt::Canceled),
        }
    }

    fn interrupted(&self, i: Interrupt) -> Outcome {
        match i {
            Interrupt::TimedOut => self.timeout_outcome(),
            Interrupt::Canceled => Outcome::failed(FailureKind::Canceled, None, "canceled"),
        }
    }

    /// Run a `hooks:` script by name, if the job has one, as its own shell invocation.
    async fn run_hook(
        &self,
        session: &mut dyn Session,
        env: &[(String, String)],
        name: &str,
    ) -> Result<(), Outcome> {
        let Some(hook) = self.spec.hooks.iter().find(|h| h.name == name) else {
            return Ok(());
        };
        self.log.info(&format!("Running {name}..."));
        let workdir_ready = self.dirs.project_dir.is_dir();
        if !workdir_ready {
            std::fs::create_dir_all(&self.dirs.project_dir).map_err(|e| {
                Outcome::failed(
                    FailureKind::RunnerSystem,
                    None,
                    format!("creating the project dir: {e}"),
                )
            })?;
        }
        self.run_step(
            session,
            name,
            &hook.script,
            env,
            "running",
            None,
            &self.signals.cancel,
        )
        .await
    }

    async fn get_sources(
        &self,
        session: &mut dyn Session,
        env: &[(String, String)],
    ) -> Result<(), Outcome> {
        let strategy = git_strategy(&self.vars, self.spec.allow_git_fetch).map_err(|e| {
            Outcome::failed(
                FailureKind::Script,
                None,
                format!("invalid GIT_STRATEGY: {e}"),
            )
        })?;
        let submodules = match self
            .vars
            .get("GIT_SUBMODULE_STRATEGY")
            .map(str::trim)
            .unwrap_or("")
        {
            "" | "none" => gsr_git::SubmoduleStrategy::None,
            "normal" => gsr_git::SubmoduleStrategy::Normal,
            "recursive" => gsr_git::SubmoduleStrategy::Recursive,
            other => {
                return Err(Outcome::failed(
                    FailureKind::Script,
                    None,
                    format!("invalid GIT_SUBMODULE_STRATEGY {other:?}"),
                ))
            }
        };
        let opt = |k: &str| {
            self.vars
                .get(k)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let req = gsr_git::SourcesRequest {
            project_dir: self.dirs.project_dir.clone(),
            repo_url: self.spec.git.repo_url.clone(),
            sha: self.spec.git.sha.clone(),
            ref_name: self.spec.git.ref_name.clone(),
            refspecs: self.spec.git.refspecs.clone(),
            depth: self.spec.git.depth,
            strategy,
            clean_flags: opt("GIT_CLEAN_FLAGS").unwrap_or_else(|| "-ffdx".into()),
            fetch_extra_flags: opt("GIT_FETCH_EXTRA_FLAGS"),
            checkout: !matches!(opt("GIT_CHECKOUT").as_deref(), Some("false" | "0")),
            submodules,
            submodule_depth: opt("GIT_SUBMODULE_DEPTH").and_then(|s| s.parse().ok()),
            submodule_update_flags: opt("GIT_SUBMODULE_UPDATE_FLAGS"),
            object_format: self.spec.git.object_format.clone(),
        };
        // gitlab-runner skips the hooks when there is no git work to do.
        let hooks = !matches!(
            strategy,
            gsr_git::GitStrategy::None | gsr_git::GitStrategy::Empty
        );
        if hooks {
            self.run_hook(session, env, "pre_get_sources_script")
                .await?;
        }
        let tries = attempts(&self.vars, "GET_SOURCES_ATTEMPTS");
        let mut last = String::new();
        for attempt in 1..=tries {
            if attempt > 1 {
                self.log.warn(&format!(
                    "Retrying to get sources (attempt {attempt} of {tries})"
                ));
            }
            let sink = self.log.trace().clone();
            match self
                .guarded(gsr_git::get_sources(&req, sink.as_ref()))
                .await
            {
                Ok(Ok(())) => {
                    if hooks {
                        self.run_hook(session, env, "post_get_sources_script")
                            .await?;
                    }
                    return Ok(());
                }
                Ok(Err(e)) => {
                    last = e.to_string();
                    self.log.error(&format!("getting sources failed: {last}"));
                }
                Err(i) => return Err(self.interrupted(i)),
            }
        }
        Err(Outcome::failed(
            FailureKind::Script,
            None,
            format!("getting sources failed: {last}"),
        ))
    }

    async fn download_artifacts(&self) -> Result<(), Outcome> {
        let tries = attempts(&self.vars, "ARTIFACT_DOWNLOAD_ATTEMPTS");
        for dep in &self.spec.dependencies {
            if dep.artifacts_file.is_none() {
                continue;
            }
            self.log.line(&format!(
                "Downloading artifacts for {} ({})...",
                dep.name, dep.id
            ));
            let archive = self.dirs.tmp_dir.join(format!("dependency-{}.zip", dep.id));
            let mut result = Err(String::new());
            for attempt in 1..=tries {
                let r = self
                    .guarded(self.client.download_artifacts(dep.id, &dep.token, &archive))
                    .await
                    .map_err(|i| self.interrupted(i))?;
                match r {
                    Ok(_) => {
                        result = Ok(());
                        break;
                    }
                    Err(
                        e @ (gsr_gitlab::GitlabError::NotFound { .. }
                        | gsr_gitlab::GitlabError::Forbidden { .. }),
                    ) => {
                        let _ = std::fs::remove_file(&archive);
                        return Err(Outcome::failed(
                            FailureKind::MissingDependency,
                            None,
                            format!(
                                "artifacts of {} ({}) are not available: {e}",
                                dep.name, dep.id
                            ),
                        ));
                    }
                    Err(e) => {
                        result = Err(e.to_string());
                        if attempt < tries {
                            self.log.warn(&format!("{e}; retrying"));
                        }
                    }
                }
            }
            if let Err(e) = result {
                let _ = std::fs::remove_file(&archive);
                return Err(Outcome::failed(
                    FailureKind::RunnerSystem,
                    None,
                    format!("downloading artifacts of {} ({}): {e}", dep.name, dep.id),
                ));
            }
            let dest = self.dirs.project_dir.clone();
            let src = archive.clone();
            let extracted =
                tokio::task::spawn_blocking(move || gsr_artifacts::extract_zip(&src, &dest)).await;
            let _ = std::fs::remove_file(&archive);
            match extracted {
                Ok(Ok(n)) => self.log.line(&format!(
                    "Downloading artifacts from coordinator... ok        id={} entries={n}",
                    dep.id
                )),
                Ok(Err(e)) => {
                    return Err(Outcome::failed(
                        FailureKind::RunnerSystem,
                        None,
                        format!("extracting artifacts of {} ({}): {e}", dep.name, dep.id),
                    ))
                }
                Err(e) => {
                    return Err(Outcome::failed(
                        FailureKind::RunnerSystem,
                        None,
                        format!("extracting artifacts: {e}"),
                    ))
                }
            }
        }
        Ok(())
    }

    async fn upload_artifacts(&self, succeeded: bool) -> Result<(), Outcome> {
        let rules: Vec<_> = self
            .spec
            .artifacts
            .iter()
            .filter(|a| a.when.applies(succeeded))
            .collect();
        if rules.is_empty() {
            return Ok(());
        }
        let (section, header) = if succeeded {
            (
                "upload_artifacts_on_success",
                "Uploading artifacts for successful job",
            )
        } else {
            (
                "upload_artifacts_on_failure",
                "Uploading artifacts for failed job",
            )
        };
        self.log.section_start(section, header);
        let mut result = Ok(());
        for (i, rule) in rules.into_iter().enumerate() {
            if let Err(o) = self.upload_one(i, rule).await {
                if result.is_ok() {
                    result = Err(o);
                }
            }
        }
        self.log.section_end(section);
        result
    }

    async fn upload_one(&self, index: usize, rule: &gsr_job::ArtifactRule) -> Result<(), Outcome> {
        use gsr_job::ArtifactFormat;
        let fail = |kind, msg: String| {
            self.log.error(&msg);
            Outcome::failed(kind, None, msg)
        };
        self.log.line(&format!(
            "Uploading artifacts as \"{}\"...",
            rule.artifact_type
        ));
        let untracked = if rule.untracked {
            match gsr_git::list_untracked(&self.dirs.project_dir).await {
                Ok(u) => u,
                Err(e) => {
                    self.log.warn(&format!("cannot list untracked files: {e}"));
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let project = self.dirs.project_dir.clone();
        let paths = rule.paths.clone();
        let exclude = rule.exclude.clone();
        let format = rule.format;
        let ext = match format {
            ArtifactFormat::Zip => ".zip",
            ArtifactFormat::Gzip => ".gz",
            ArtifactFormat::Raw => "",
        };
        let base = if rule.name.is_empty() {
            "default"
        } else {
            &rule.name
        };
        let filename = if base.ends_with(ext) {
            base.to_string()
        } else {
            format!("{base}{ext}")
        };
        let out_path: PathBuf = self.dirs.tmp_dir.join(format!("artifact-{index}{ext}"));
        let out = out_path.clone();
        let built = tokio::task::spawn_blocking(move || -> Result<Built, String> {
            let sel = gsr_artifacts::select(&project, &paths, &exclude, &untracked)
                .map_err(|e| e.to_string())?;
            if sel.files.is_empty() {
                return Ok(Built::Nothing(sel.warnings));
            }
            let mut f = std::fs::File::create(&out).map_err(|e| e.to_string())?;
            let size = match format {
                ArtifactFormat::Zip => gsr_artifacts::write_zip(&project, &sel.files, &mut f),
                ArtifactFormat::Gzip => gsr_artifacts::write_gzip(&project, &sel.files, &mut f),
                ArtifactFormat::Raw => gsr_artifacts::write_raw(&project, &sel.files, &mut f),
            }
            .map_err(|e| e.to_string())?;
            Ok(Built::Archive(size, sel.warnings))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let size = match built {
            Ok(Built::Nothing(warnings)) => {
                for w in &warnings {
                    self.log.warn(w);
                }
                self.log.warn("No files to upload");
                return Ok(());
            }
            Ok(Built::Archive(size, warnings)) => {
                for w in &warnings {
                    self.log.warn(w);
                }
                size
            }
            Err(e) => {
                let _ = std::fs::remove_file(&out_path);
                return Err(fail(
                    FailureKind::RunnerSystem,
                    format!("creating the artifact archive: {e}"),
                ));
            }
        };
        let r = self
            .client
            .upload_artifact(
                &out_path,
                &filename,
                &rule.artifact_type,
                format.as_str(),
                rule.expire_in.as_deref(),
            )
            .await;
        let _ = std::fs::remove_file(&out_path);
        match r {
            Ok(()) => {
                self.log.line(&format!(
                    "Uploading artifacts as \"{}\" to coordinator... 201 Created  id={} size={size}",
                    rule.artifact_type, self.spec.id
                ));
                Ok(())
            }
            Err(e @ gsr_gitlab::GitlabError::TooLarge { .. }) => Err(fail(
                FailureKind::Script,
                format!("uploading artifacts as \"{}\": {e}", rule.artifact_type),
            )),
            Err(e) => Err(fail(
                FailureKind::RunnerSystem,
                format!("uploading artifacts as \"{}\": {e}", rule.artifact_type),
            )),
        }
    }
}

/// What collecting one artifact produced.
enum Built {
    /// No file matched; the warnings say why.
    Nothing(Vec<String>),
    /// An archive of this size was written.
    Archive(u64, Vec<String>),
}

/// A duration as Go prints it (`1h0m0s`, `5m0s`, `3s`), as gitlab-runner's messages do.
fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{sec}s")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}
