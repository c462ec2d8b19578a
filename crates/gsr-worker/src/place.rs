//! Placement: the one place that runs a claimed job, in this process or on a backend.
//!
//! # Why
//!
//! A claimer (`gsr run-single`, later the dispatcher of `gsr serve`) holds the runner token
//! and gets jobs; *where* a job runs is a setting. Two kinds of [`Target`]:
//!
//! - [`Target::InProcess`]: today's worker ([`run_job`]) with an [`Executor`] (the shell
//!   executor) in this process. The job shares the claimer's host and user, like
//!   gitlab-runner's `shell` executor.
//! - [`Target::Backend`]: a [`gsr_backend::Backend`] places the whole job (a local child
//!   process, a container, a Pod) and runs `gsr exec --job -` there with the claimed
//!   payload. The job then talks to GitLab itself with its job token; this module only
//!   watches how the place ended and, when `gsr exec` could not have told GitLab, fails
//!   the job itself with the job token it holds.
//!
//! # Routing ([`Placement::route`])
//!
//! - **Time limit**: a backend whose [`Capabilities::max_duration`] is below the job's
//!   timeout sends the job to the configured fallback target (the issue: "jobs whose
//!   timeout exceeds a backend's limit go to its configured fallback"). The limit is the
//!   backend's own (Lambda: 15 min) or an operator's, via [`LimitedBackend`] (`gsr
//!   run-single --executor-max-duration`: keep a small backend for short jobs). Without a fallback
//!   the job is failed at once (`runner_system_failure`) with a trace line naming both
//!   durations: starting it would only have it killed at the backend's limit.
//! - **`image:` / `services:` on a target that cannot honour them** (the in-process shell
//!   executor, the `local` backend): the job runs there anyway, as gitlab-runner's `shell`
//!   executor does (it ignores both without a word), and is *not* re-routed: an operator
//!   who chose a host-level runtime chose it for every job, and GitLab lets a project pin
//!   jobs to runners by tags. The runner declares the `image`/`services` features only
//!   when its primary target honours them (see `gsr`'s `wiring::runner_info`). The
//!   claimer cannot write a trace line about it: the trace belongs to `gsr exec` once it
//!   runs (a claimer's line at offset 0 would collide with its first increment), so the
//!   notice is a log line of the claimer here; `gsr exec` could print it in the trace
//!   itself (not done yet).
//!
//! # A job on a backend ([`run_claimed`])
//!
//! `Launch { payload, timeout, labels {gsr.claimer, gsr.job}, abort }` → `start` → `wait`
//! → `cleanup` (always, also after an abort or a failed wait). Then, by [`JobExit`]:
//!
//! - `Exec(0..=4)`: `gsr exec` ran and reported the job itself (4: it could not deliver
//!   the final state; nothing the claimer can add).
//! - `Exec(other)` (a crash of `gsr exec`), `Killed`, or a failed `wait`: GitLab may or
//!   may not have a final state. The claimer probes with a trace PATCH: 403 means the job
//!   is not running any more (final already: nothing to do); otherwise it appends
//!   "gsr: …" at GitLab's trace offset (taken from the 416 answer) and sends `failed` /
//!   `runner_system_failure`. A final state that `gsr exec` sent in the meantime makes
//!   GitLab answer 403, which is harmless.
//! - `NotRun`, or `start` failed: `gsr exec` never ran, GitLab has not heard of the job
//!   from it: failed like an unrunnable payload ([`fail_unrunnable`]) with
//!   `gsr: the <backend> backend could not start the job: <reason>`.
//!
//! On abort (the claimer's shutdown) the backend's [`Running::abort`] is called (its
//! `gsr exec` gets SIGTERM and reports `runner_interrupted`), then `wait` is bounded by
//! [`ABORT_WAIT`] before `cleanup`.
//!
//! # Claimer identity
//!
//! [`claimer_identity`]: replica or host name, PID and the process's start time (clock
//! ticks since boot, field 22 of `/proc/self/stat`), so a restarted process on the same
//! PID is a new claimer and backends' `reap` can tell its predecessor's jobs are orphans.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gsr_backend::{Backend, BackendError, Capabilities, JobExit, Launch, Running};
use gsr_exec::{CancellationToken, Executor};
use gsr_gitlab::{ClaimedJob, JobClient, JobUpdate, PatchResult, UpdateResult};
use gsr_job::{FailureKind, Outcome};
use secrecy::SecretSlice;

use crate::{fail_unrunnable, run_job, Delivery, JobReport, WorkerConfig};

/// After [`Running::abort`], how long `wait` may take before the claimer cleans up
/// anyway (backends' own grace is shorter; this is a hang guard).
pub const ABORT_WAIT: Duration = Duration::from_secs(120);

/// Where a job runs.
#[derive(Clone)]
pub enum Target {
    /// In this process: [`run_job`] with this executor.
    InProcess(Arc<dyn Executor>),
    /// On a backend: `gsr exec` in the place it creates.
    Backend(Arc<dyn Backend>),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Target {
    /// `shell` (in-process) or the backend's name.
    pub fn name(&self) -> &str {
        match self {
            Target::InProcess(e) => e.name(),
            Target::Backend(b) => b.name(),
        }
    }

    /// For logs: `shell (in-process)` or `docker (backend)`.
    pub fn describe(&self) -> String {
        match self {
            Target::InProcess(e) => format!("{} (in-process)", e.name()),
            Target::Backend(b) => format!("{} (backend)", b.name()),
        }
    }

    /// What the target honours. In-process: no image, no services, no time limit.
    pub fn capabilities(&self) -> Capabilities {
        match self {
            Target::InProcess(_) => Capabilities {
                hard_cancel: true,
                ..Capabilities::default()
            },
            Target::Backend(b) => b.capabilities(),
        }
    }
}

/// A backend with a lower time limit than its own: an operator's setting "jobs longer
/// than this go to the fallback" (e.g. keep a fast, small backend for short jobs).
pub struct LimitedBackend {
    inner: Arc<dyn Backend>,
    max: Duration,
}

impl LimitedBackend {
    /// `inner` with [`Capabilities::max_duration`] at most `max`.
    pub fn new(inner: Arc<dyn Backend>, max: Duration) -> Self {
        Self { inner, max }
    }
}

#[async_trait::async_trait]
impl Backend for LimitedBackend {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        let mut c = self.inner.capabilities();
        c.max_duration = Some(c.max_duration.map_or(self.max, |m| m.min(self.max)));
        c
    }
    async fn validate(&self) -> Result<(), BackendError> {
        self.inner.validate().await
    }
    async fn healthcheck(&self) -> Result<(), BackendError> {
        self.inner.healthcheck().await
    }
    async fn reap(&self) -> Result<gsr_backend::ReapReport, BackendError> {
        self.inner.reap().await
    }
    async fn start(&self, launch: Launch) -> Result<Box<dyn Running>, BackendError> {
        self.inner.start(launch).await
    }
}

/// The configured targets of a claimer and what it needs to launch jobs.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Where jobs run.
    pub primary: Target,
    /// Where jobs go that the primary cannot run (timeout above its `max_duration`).
    pub fallback: Option<Target>,
    /// This claimer's identity ([`claimer_identity`]), the `gsr.claimer` label.
    pub claimer: String,
    /// GitLab's URL, passed to `gsr exec --url`.
    pub gitlab_url: String,
}

/// Where [`Placement::route`] sent a job.
#[derive(Debug)]
pub enum Route<'a> {
    /// Run it here; `reason` says why it is not the primary (for logs), if it is not.
    Run {
        /// The target.
        target: &'a Target,
        /// Why the fallback was chosen; `None` on the primary.
        fallback_reason: Option<String>,
    },
    /// No target can run it; fail it with this message.
    Refuse(String),
}

impl Placement {
    /// Pick the target of a job with this timeout (see the module docs).
    pub fn route(&self, timeout: Duration) -> Route<'_> {
        let caps = self.primary.capabilities();
        match caps.max_duration {
            Some(max) if timeout > max => {
                let why = format!(
                    "the job's timeout ({}) exceeds the {} backend's limit ({})",
                    human(timeout),
                    self.primary.name(),
                    human(max)
                );
                match &self.fallback {
                    Some(f) => {
                        if f.capabilities().max_duration.is_some_and(|m| timeout > m) {
                            return Route::Refuse(format!(
                                "{why}, and the fallback {} has a limit too",
                                f.name()
                            ));
                        }
                        Route::Run {
                            target: f,
                            fallback_reason: Some(why),
                        }
                    }
                    None => Route::Refuse(format!("{why} and no fallback is configured")),
                }
            }
            _ => Route::Run {
                target: &self.primary,
                fallback_reason: None,
            },
        }
    }

    /// Every configured target, primary first.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        std::iter::once(&self.primary).chain(self.fallback.as_ref())
    }

    /// `validate()` then `reap()` of every backend target, once at start-up.
    pub async fn prepare(&self) -> Result<(), BackendError> {
        for t in self.targets() {
            if let Target::Backend(b) = t {
                b.validate().await?;
                let r = b.reap().await?;
                tracing::info!(
                    backend = b.name(),
                    jobs = r.jobs,
                    objects = r.objects,
                    left_alone = r.left_alone,
                    "backend ready; leftovers of dead claimers removed"
                );
            }
        }
        Ok(())
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(60) && s >= 60 {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

/// This process's claimer identity: `<name>-<pid>-<start ticks>` (see the module docs),
/// `name` reduced to `[A-Za-z0-9._-]` so the value is a valid label everywhere
/// (Kubernetes label values included, up to 63 characters).
pub fn claimer_identity(name: &str) -> String {
    let pid = std::process::id();
    let start = start_ticks(pid).unwrap_or(0);
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{name}-{pid}-{start}")
}

/// Whether the claimer with this [`claimer_identity`] value may be alive, judged from
/// this host where it can be: a claimer with our `name` (same host or replica name) is
/// dead when no process has its PID with its start time; any other claimer cannot be
/// judged from here and counts as alive (its jobs are left alone).
pub fn claimer_may_be_alive(name: &str, claimer: &str) -> bool {
    let mine = claimer_identity(name);
    let prefix = |c: &str| c.rsplitn(3, '-').nth(2).map(str::to_string);
    if prefix(claimer) != prefix(&mine) {
        return true;
    }
    let mut parts = claimer.rsplitn(3, '-');
    let start = parts.next().and_then(|s| s.parse::<u64>().ok());
    let pid = parts.next().and_then(|s| s.parse::<u32>().ok());
    match (pid, start) {
        (Some(pid), Some(start)) => start_ticks(pid) == Some(start),
        _ => true,
    }
}

/// Start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Run a claimed job on the target [`Placement::route`] picks and report like
/// [`run_job`]. `client` is bound to the job's token.
pub async fn run_claimed(
    job: ClaimedJob,
    client: JobClient,
    placement: &Placement,
    cfg: &WorkerConfig,
    abort: CancellationToken,
) -> JobReport {
    let ClaimedJob { spec, payload } = job;
    let job_id = spec.id;
    let target = match placement.route(spec.timeout) {
        Route::Run {
            target,
            fallback_reason,
        } => {
            if let Some(why) = fallback_reason {
                tracing::info!(job = job_id, target = %target.describe(), reason = %why, "job sent to the fallback");
            }
            target
        }
        Route::Refuse(why) => {
            let message = format!("gsr: cannot run the job: {why}");
            tracing::warn!(job = job_id, reason = %why, "job refused");
            return not_run(job_id, client, cfg, message).await;
        }
    };
    if spec.image.is_some() || !spec.services.is_empty() {
        let caps = target.capabilities();
        if !caps.image || (!spec.services.is_empty() && !caps.services) {
            tracing::info!(
                job = job_id,
                target = %target.describe(),
                "the job's image:/services: are ignored by this target (like gitlab-runner's shell executor)"
            );
        }
    }
    match target {
        Target::InProcess(executor) => run_job(spec, client, executor.clone(), cfg, abort).await,
        Target::Backend(backend) => {
            let launch = Launch {
                job_id,
                payload: SecretSlice::from(payload.to_vec()),
                gitlab_url: placement.gitlab_url.clone(),
                timeout: spec.timeout,
                labels: BTreeMap::from([
                    ("gsr.claimer".to_string(), placement.claimer.clone()),
                    ("gsr.job".to_string(), job_id.to_string()),
                ]),
                abort: abort.child_token(),
            };
            drop(spec);
            on_backend(backend.as_ref(), launch, client, cfg, abort).await
        }
    }
}

async fn on_backend(
    backend: &dyn Backend,
    launch: Launch,
    client: JobClient,
    cfg: &WorkerConfig,
    abort: CancellationToken,
) -> JobReport {
    let job_id = launch.job_id;
    let name = backend.name().to_string();
    let running = match backend.start(launch).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(job = job_id, backend = %name, error = %e, "the backend could not start the job");
            let message = format!(
                "gsr: the {name} backend could not start the job: {}",
                reason(&e)
            );
            return not_run(job_id, client, cfg, message).await;
        }
    };
    tracing::info!(job = job_id, backend = %name, "job started");
    let exit = wait(running.as_ref(), &abort).await;
    if let Err(e) = running.cleanup().await {
        tracing::warn!(job = job_id, backend = %name, error = %e, "cleaning up the job failed");
    }
    tracing::info!(job = job_id, backend = %name, ?exit, "job place ended");
    let ended = |outcome: Outcome, delivery: Delivery, canceled: bool| JobReport {
        job_id,
        outcome,
        delivery,
        canceled,
    };
    match exit {
        Ok(JobExit::Exec(0)) => ended(Outcome::Success, Delivery::Accepted, false),
        Ok(JobExit::Exec(1)) => ended(
            Outcome::failed(FailureKind::Script, None, "the job failed"),
            Delivery::Accepted,
            false,
        ),
        Ok(JobExit::Exec(2)) => ended(
            Outcome::failed(FailureKind::RunnerSystem, None, "gsr exec: bad payload"),
            Delivery::Accepted,
            false,
        ),
        Ok(JobExit::Exec(3)) => ended(
            Outcome::failed(FailureKind::Canceled, None, "canceled"),
            Delivery::Accepted,
            true,
        ),
        Ok(JobExit::Exec(4)) => ended(
            Outcome::failed(FailureKind::RunnerSystem, None, "final state undelivered"),
            Delivery::Failed("gsr exec could not deliver the final state".into()),
            false,
        ),
        Ok(JobExit::NotRun) => {
            let message = format!("gsr: the {name} backend could not start the job");
            not_run(job_id, client, cfg, message).await
        }
        Ok(JobExit::Exec(code)) => {
            let message = format!(
                "gsr: the job's runner process on the {name} backend exited with status {code}"
            );
            ensure_final(job_id, client, message).await
        }
        Ok(JobExit::Killed) => {
            let message = if abort.is_cancelled() {
                format!("gsr: the job on the {name} backend was stopped (runner shutting down)")
            } else {
                format!(
                    "gsr: the job on the {name} backend was killed (time limit or out of memory)"
                )
            };
            ensure_final(job_id, client, message).await
        }
        Err(e) => {
            let message = format!(
                "gsr: lost track of the job on the {name} backend: {}",
                reason(&e)
            );
            ensure_final(job_id, client, message).await
        }
    }
}

async fn wait(running: &dyn Running, abort: &CancellationToken) -> Result<JobExit, BackendError> {
    tokio::select! {
        r = running.wait() => return r,
        _ = abort.cancelled() => {}
    }
    running.abort();
    match tokio::time::timeout(ABORT_WAIT, running.wait()).await {
        Ok(r) => r,
        Err(_) => Ok(JobExit::Killed),
    }
}

/// The backend's own message, without the variant's prefix.
fn reason(e: &BackendError) -> String {
    match e {
        BackendError::Config { message, .. }
        | BackendError::Unavailable { message, .. }
        | BackendError::Start { message, .. }
        | BackendError::Other { message, .. } => message.clone(),
    }
}

async fn not_run(job_id: u64, client: JobClient, cfg: &WorkerConfig, message: String) -> JobReport {
    let delivery = fail_unrunnable(client, cfg, &message).await;
    JobReport {
        job_id,
        outcome: Outcome::failed(FailureKind::RunnerSystem, None, message),
        delivery,
        canceled: false,
    }
}

/// Make sure GitLab has a final state for a job whose `gsr exec` may have died before
/// sending one (see the module docs).
async fn ensure_final(job_id: u64, client: JobClient, message: String) -> JobReport {
    let outcome = Outcome::failed(FailureKind::RunnerSystem, None, message.clone());
    let report = |delivery| JobReport {
        job_id,
        outcome: outcome.clone(),
        delivery,
        canceled: false,
    };
    let line = format!("\n\x1b[31;1m{message}\x1b[0;m\n").into_bytes();
    // A PATCH at offset 0 learns GitLab's trace size (416) or that the job is final (403).
    let mut offset = 0u64;
    for _ in 0..3 {
        match client.patch_trace(offset, line.clone(), false).await.result {
            PatchResult::Accepted { .. } => break,
            PatchResult::RangeMismatch { offset: o } if o != offset => offset = o,
            PatchResult::Forbidden | PatchResult::NotFound => {
                tracing::info!(job = job_id, "GitLab already has the job's final state");
                return report(Delivery::Gone);
            }
            PatchResult::RangeMismatch { .. } | PatchResult::Failed(_) => break,
        }
    }
    let update = JobUpdate {
        state: "failed",
        failure_reason: Some(FailureKind::RunnerSystem.gitlab_reason().into()),
        exit_code: None,
        output: None,
    };
    let mut last = String::new();
    for attempt in 0..10u32 {
        let reply = client.update(&update).await;
        match reply.result {
            UpdateResult::Accepted => return report(Delivery::Accepted),
            UpdateResult::Gone => return report(Delivery::Gone),
            UpdateResult::Rejected(e) => return report(Delivery::Failed(e)),
            UpdateResult::NotFinished | UpdateResult::TraceInvalid => {
                last = "GitLab did not finish the job".into();
                let wait = reply.interval.unwrap_or(Duration::from_secs(1));
                tokio::time::sleep(wait.min(Duration::from_secs(10))).await;
            }
            UpdateResult::Failed(e) => {
                last = e;
                tokio::time::sleep(Duration::from_millis(500) * (attempt + 1)).await;
            }
        }
    }
    report(Delivery::Failed(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Limited(Option<Duration>);

    #[async_trait::async_trait]
    impl Backend for Limited {
        fn name(&self) -> &str {
            "limited"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                max_duration: self.0,
                ..Capabilities::default()
            }
        }
        async fn validate(&self) -> Result<(), BackendError> {
            Ok(())
        }
        async fn healthcheck(&self) -> Result<(), BackendError> {
            Ok(())
        }
        async fn reap(&self) -> Result<gsr_backend::ReapReport, BackendError> {
            Ok(Default::default())
        }
        async fn start(&self, _: Launch) -> Result<Box<dyn Running>, BackendError> {
            Err(BackendError::Start {
                backend: "limited".into(),
                job_id: 0,
                message: "test".into(),
            })
        }
    }

    fn spec(timeout: u64) -> Duration {
        Duration::from_secs(timeout)
    }

    fn placement(max: Option<u64>, fallback: Option<Option<u64>>) -> Placement {
        Placement {
            primary: Target::Backend(Arc::new(Limited(max.map(Duration::from_secs)))),
            fallback: fallback
                .map(|m| Target::Backend(Arc::new(Limited(m.map(Duration::from_secs)))) as Target),
            claimer: "t:1:1".into(),
            gitlab_url: "http://gitlab.invalid".into(),
        }
    }

    fn routed_to_fallback(r: Route<'_>) -> Option<bool> {
        match r {
            Route::Run {
                fallback_reason, ..
            } => Some(fallback_reason.is_some()),
            Route::Refuse(_) => None,
        }
    }

    #[test]
    fn routes_by_max_duration() {
        // No limit: always the primary.
        assert_eq!(
            routed_to_fallback(placement(None, Some(None)).route(spec(99_999))),
            Some(false)
        );
        // Within the limit (equal included).
        assert_eq!(
            routed_to_fallback(placement(Some(900), Some(None)).route(spec(900))),
            Some(false)
        );
        // Above it: the fallback.
        assert_eq!(
            routed_to_fallback(placement(Some(900), Some(None)).route(spec(901))),
            Some(true)
        );
        // Above it without a fallback, or with a fallback that is limited too: refused.
        assert_eq!(
            routed_to_fallback(placement(Some(900), None).route(spec(901))),
            None
        );
        assert_eq!(
            routed_to_fallback(placement(Some(900), Some(Some(600))).route(spec(901))),
            None
        );
        match placement(Some(900), None).route(spec(3600)) {
            Route::Refuse(m) => assert_eq!(
                m,
                "the job's timeout (60 min) exceeds the limited backend's limit (15 min) and no fallback is configured"
            ),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn claimer_identity_names_this_process() {
        let id = claimer_identity("host a/b");
        let parts: Vec<&str> = id.rsplitn(3, '-').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert_eq!(parts[2], "host_a_b");
        assert_eq!(parts[1], std::process::id().to_string());
        assert!(parts[0].parse::<u64>().is_ok_and(|t| t > 0), "{id}");
        assert!(claimer_may_be_alive("host a/b", &id));
        // Same name, a PID with another start time (or none): dead.
        let dead = format!("host_a_b-{}-1", std::process::id());
        assert!(!claimer_may_be_alive("host a/b", &dead));
        // Another host's claimer cannot be judged: alive.
        assert!(claimer_may_be_alive("host a/b", "other-host-1-1"));
    }
}
