//! [`Dispatcher`]: one receiver per active runner, webhook routing, the reconcile ticker,
//! restart recovery, and shutdown (drain for a grace period, then abort).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gsr_exec::{CancellationToken, Executor};
use gsr_gitlab::{CoordinatorPool, Features, RunnerInfo};
use gsr_job::ExposeSecret;
use gsr_store::{Job, Runner, RunnerId, Store, StoreError};
use gsr_webhook::{Delivery, HookResponse, Webhook, WebhookConfig};
use gsr_worker::WorkerConfig;
use tokio::task::JoinHandle;

use crate::metric;
use crate::recorder::Recorder;
use crate::recovery::Reporter;
use crate::runtime::{self, Runtimes};

/// The failure reason recorded for jobs found unfinished at start (see [`Dispatcher::recover`]).
pub const LOST_REASON: &str = "replica_restarted";

/// Why the dispatcher could not do something.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("runner {runner}: {message}")]
    Runner { runner: RunnerId, message: String },
}

/// Timing of the receivers; the defaults suit production.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// A receiver's reconcile loop never stops while its runner is active; this is the
    /// window after which it cuts a long poll GitLab has not answered and asks again
    /// (jittered: see `gsr_webhook::WebhookConfig::keep_polling`). Default 60 s: longer
    /// than GitLab's long poll (Workhorse holds a job request up to 50 s), so GitLab ends
    /// each long poll with a 204 and the loop asks again on the same connection at once;
    /// the window only cuts a request that hangs (and the first one, to spread runners
    /// started together). A cut is what it avoids: it costs a new connection, and an
    /// answer cut in flight may carry a job GitLab has just assigned.
    pub wait_timeout: Duration,
    /// Pause between job requests when GitLab does not long-poll.
    pub check_interval: Duration,
    /// How often the ticker re-reads the runners (new, changed, paused, deleted) and
    /// restarts reconcile loops that ended (GitLab refused the token; a loop never ends
    /// for lack of jobs).
    pub reconcile_interval: Duration,
    /// Retry policy for GitLab calls (`None`: the client's default).
    pub retry: Option<gsr_gitlab::RetryPolicy>,
    /// Shutdown: how long running jobs may go on after claiming stopped before they are
    /// aborted (default 30 s, gitlab-runner's default shutdown timeout).
    pub shutdown_grace: Duration,
    /// Shutdown: after aborting, how long to wait for the aborted jobs' final updates to
    /// reach GitLab (default 30 s).
    pub final_update_timeout: Duration,
    /// Recovery: how long telling GitLab about one lost job may take in all, retries
    /// included (default 2 min); then it is recorded as not reported.
    pub recovery_timeout: Duration,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            wait_timeout: Duration::from_secs(60),
            check_interval: Duration::from_secs(3),
            reconcile_interval: Duration::from_secs(30),
            retry: None,
            shutdown_grace: Duration::from_secs(30),
            final_update_timeout: Duration::from_secs(30),
            recovery_timeout: Duration::from_secs(120),
        }
    }
}

/// One runner's receiver, and what of the runner row it was built from.
struct Receiver {
    shape: Shape,
    webhook: Arc<Webhook>,
}

/// The fields of a runner its receiver depends on: a change of any rebuilds the receiver.
/// Others (description, tags, …) live in GitLab and do not concern claiming.
#[derive(Debug, Clone, PartialEq)]
struct Shape {
    gitlab_url: String,
    gitlab_runner_id: i64,
    concurrency: u32,
    backend: String,
    backend_settings: serde_json::Value,
}

impl Shape {
    fn of(r: &Runner) -> Shape {
        Shape {
            gitlab_url: r.gitlab_url.clone(),
            gitlab_runner_id: r.gitlab_runner_id,
            concurrency: r.concurrency,
            backend: r.backend.clone(),
            backend_settings: r.backend_settings.clone(),
        }
    }
}

/// Claims and runs the jobs of every active runner of the control plane.
pub struct Dispatcher {
    store: Arc<dyn Store>,
    /// Where runners' jobs run, by their `backend` field.
    runtimes: Runtimes,
    /// Runners whose runtime this replica does not offer, already logged.
    unoffered: Mutex<HashSet<RunnerId>>,
    worker: WorkerConfig,
    replica: String,
    settings: DispatchSettings,
    /// The runners' coordinators, sharing HTTP clients per GitLab.
    clients: CoordinatorPool,
    receivers: Mutex<HashMap<RunnerId, Receiver>>,
    /// Receivers replaced or removed, still draining their jobs.
    retired: tokio_util::task::TaskTracker,
    /// The same receivers, so that an abort reaches their jobs too (pruned when idle).
    retired_hooks: Mutex<Vec<Arc<Webhook>>>,
    /// Background work other than receivers (recovery started by [`Dispatcher::start`]).
    background: tokio_util::task::TaskTracker,
    stopping: CancellationToken,
    /// [`Dispatcher::abort_all`]: running jobs are aborted, nothing more is waited for.
    abort: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn reply(status: u16, message: impl Into<String>) -> HookResponse {
    HookResponse::new(status, message)
}

impl Dispatcher {
    /// A dispatcher for `replica` (a name unique among live replicas and stable across
    /// restarts of this one: recovery is by replica name). `worker` is the template of
    /// every job's worker settings; each runner gets its own builds dir below it.
    pub fn new(
        store: Arc<dyn Store>,
        executor: Arc<dyn Executor>,
        worker: WorkerConfig,
        replica: String,
    ) -> Arc<Dispatcher> {
        Self::with_settings(
            store,
            executor,
            worker,
            replica,
            DispatchSettings::default(),
        )
    }

    /// [`Dispatcher::new`] with explicit timing. The only runtime is `executor` in this
    /// process, as [`runtime::IN_PROCESS`] (`local`).
    pub fn with_settings(
        store: Arc<dyn Store>,
        executor: Arc<dyn Executor>,
        worker: WorkerConfig,
        replica: String,
        settings: DispatchSettings,
    ) -> Arc<Dispatcher> {
        let mut runtimes = Runtimes::new(gsr_worker::place::claimer_identity(&replica));
        runtimes.add(
            runtime::IN_PROCESS,
            gsr_worker::place::Target::InProcess(executor),
            None,
        );
        Self::with_runtimes(store, runtimes, worker, replica, settings)
    }

    /// A dispatcher whose runners' jobs run where their `backend` field says, among
    /// `runtimes` (see [`Runtimes`]; call [`Runtimes::prepare`] before). Runners naming a
    /// runtime not offered here are not claimed for (logged once per runner).
    pub fn with_runtimes(
        store: Arc<dyn Store>,
        runtimes: Runtimes,
        worker: WorkerConfig,
        replica: String,
        settings: DispatchSettings,
    ) -> Arc<Dispatcher> {
        let clients = CoordinatorPool::new(&shell_info());
        Arc::new(Dispatcher {
            clients,
            store,
            runtimes,
            unoffered: Mutex::new(HashSet::new()),
            worker,
            replica,
            settings,
            receivers: Mutex::new(HashMap::new()),
            retired: tokio_util::task::TaskTracker::new(),
            retired_hooks: Mutex::new(Vec::new()),
            background: tokio_util::task::TaskTracker::new(),
            stopping: CancellationToken::new(),
            abort: CancellationToken::new(),
        })
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The runners that have a receiver now.
    pub fn runners(&self) -> Vec<RunnerId> {
        lock(&self.receivers).keys().copied().collect()
    }

    /// HTTP clients the runners' coordinators share now (one per GitLab per 50 runners;
    /// see `gsr_gitlab::CoordinatorPool`), for tests and diagnostics.
    pub fn http_clients(&self) -> usize {
        self.clients.clients()
    }

    /// Jobs running on this replica, over all runners.
    pub fn jobs_running(&self) -> usize {
        lock(&self.receivers)
            .values()
            .map(|r| r.webhook.status().jobs_running)
            .sum()
    }

    /// Recover, load the runners, start their reconcile loops, and keep them going until
    /// `shutdown`; then run [`Dispatcher::shutdown`] (the returned task ends when it has).
    ///
    /// Recovery is split: this replica's unfinished jobs are read from the store here,
    /// before anything is claimed (so new claims are never mistaken for old ones), and
    /// telling GitLab about them runs in a background task — it may take up to
    /// `recovery_timeout` when GitLab is down, and claiming new jobs need not wait for it.
    /// Shutdown waits for it (an abort cuts it short).
    pub async fn start(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, DispatchError> {
        let stale = self.store.recover_jobs(&self.replica).await?;
        if !stale.is_empty() {
            let reporter = self.reporter();
            self.background.spawn(async move {
                if let Err(e) = reporter.run(stale).await {
                    tracing::error!(error = %e, "recovery did not complete");
                }
            });
        }
        self.refresh().await?;
        self.reconcile_all();
        let me = self.clone();
        Ok(tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.settings.reconcile_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = me.refresh().await {
                            tracing::warn!(error = %e, "could not refresh the runners");
                        }
                        me.reconcile_all();
                    }
                }
            }
            me.shutdown().await;
        }))
    }

    /// Stop claiming on every runner (after the job requests in flight are answered), let
    /// running jobs finish for up to `shutdown_grace`, then abort the rest — the worker
    /// reports each to GitLab as failed (`runner_interrupted`) and the store records it —
    /// and wait up to `final_update_timeout` for those reports. [`Dispatcher::abort_all`]
    /// ends the grace period at once.
    ///
    /// A job request still in flight when the grace ends is cut: GitLab may have assigned
    /// it a job that nobody runs (it times out there). That is the price of a bounded stop.
    pub async fn shutdown(&self) {
        self.stopping.cancel();
        let mut hooks: Vec<Arc<Webhook>> = lock(&self.receivers)
            .drain()
            .map(|(_, r)| r.webhook)
            .collect();
        metrics::gauge!(metric::RUNNERS_ACTIVE).set(0.0);
        tracing::info!(
            runners = hooks.len(),
            grace = ?self.settings.shutdown_grace,
            "dispatcher stopping; draining jobs"
        );
        for w in &hooks {
            // Gracefully: a request in flight may already carry an assigned job; it is
            // answered and its job runs (within the grace period).
            w.stop_claiming_gracefully();
        }
        hooks.extend(lock(&self.retired_hooks).drain(..));
        self.retired.close();
        self.background.close();
        let drained = async {
            for w in &hooks {
                w.drained().await;
            }
            self.retired.wait().await;
            self.background.wait().await;
        };
        tokio::select! {
            _ = drained => {
                tracing::info!("dispatcher stopped; every job ended");
                return;
            }
            _ = tokio::time::sleep(self.settings.shutdown_grace) => {
                let jobs = hooks.iter().map(|w| w.status().jobs_running).sum::<usize>();
                if jobs == 0 {
                    // Only long polls were still open (GitLab holds them up to ~50 s).
                    tracing::info!(
                        grace = ?self.settings.shutdown_grace,
                        "shutdown grace period over; no job running, cutting the job requests still open"
                    );
                } else {
                    tracing::warn!(
                        grace = ?self.settings.shutdown_grace,
                        jobs,
                        "shutdown grace period over; aborting the running jobs"
                    );
                }
            }
            _ = self.abort.cancelled() => {}
        }
        self.abort.cancel();
        for w in &hooks {
            w.abort_jobs();
        }
        let reported = async {
            for w in &hooks {
                w.drained().await;
            }
            self.retired.wait().await;
            self.background.wait().await;
        };
        if tokio::time::timeout(self.settings.final_update_timeout, reported)
            .await
            .is_err()
        {
            tracing::error!(
                timeout = ?self.settings.final_update_timeout,
                "aborted jobs did not finish reporting in time; GitLab will time them out"
            );
        } else {
            tracing::info!("dispatcher stopped; aborted jobs reported");
        }
    }

    /// Abort everything now (a second stop signal): no more claims, every running job is
    /// aborted (reported to GitLab as failed by its worker), a running recovery gives up,
    /// and a [`Dispatcher::shutdown`] in progress stops waiting for the grace period (it
    /// still waits up to `final_update_timeout` for the aborted jobs' final updates).
    pub fn abort_all(&self) {
        self.stopping.cancel();
        self.abort.cancel();
        let hooks: Vec<Arc<Webhook>> = lock(&self.receivers)
            .values()
            .map(|r| r.webhook.clone())
            .chain(lock(&self.retired_hooks).iter().cloned())
            .collect();
        tracing::warn!(runners = hooks.len(), "aborting every running job");
        for w in hooks {
            w.abort_jobs();
        }
    }

    /// Start the reconcile loop of every receiver whose loop is not running (a running
    /// loop is left alone). Loops run until shutdown, so this starts new receivers' loops
    /// and restarts those that ended on a refused token; an idle runner costs one long
    /// poll per `wait_timeout`.
    pub fn reconcile_all(&self) {
        for r in lock(&self.receivers).values() {
            if !r.webhook.status().reconciling {
                r.webhook.reconcile();
            }
        }
    }

    /// Report this replica's unfinished jobs to GitLab as failed and record them `lost`.
    ///
    /// Why not resume them: the job ran in this process (its executor and its trace
    /// buffer died with it), so nothing can pick it up again. But GitLab must not keep it
    /// "running" until its own timeout: with the job token the store kept (sealed) for
    /// each unfinished job, recovery acknowledges the job if needed, appends a trace line
    /// saying what happened, and sends the final state `failed` /
    /// `runner_system_failure`, with bounded retries (see the `recovery` module). Then
    /// each job is recorded `lost` with reason [`LOST_REASON`] and what GitLab was told
    /// ([`gsr_store::Recovery`]); its token is dropped. GitLab answering 403/404 (the job is
    /// already over) is recorded as such.
    ///
    /// Awaits all of it (each job at most `recovery_timeout`; jobs in parallel).
    /// [`Dispatcher::start`] does the same with the reporting in the background. Call
    /// before this replica claims anything.
    pub async fn recover(&self) -> Result<Vec<Job>, DispatchError> {
        let unfinished = self.store.recover_jobs(&self.replica).await?;
        if unfinished.is_empty() {
            return Ok(Vec::new());
        }
        self.reporter().run(unfinished).await
    }

    fn reporter(&self) -> Reporter {
        Reporter {
            store: self.store.clone(),
            replica: self.replica.clone(),
            info: self.runner_info(),
            retry: self.settings.retry,
            timeout: self.settings.recovery_timeout,
            abort: self.abort.clone(),
        }
    }

    /// The runtimes this replica offers.
    pub fn runtimes(&self) -> &Runtimes {
        &self.runtimes
    }

    /// What recovery declares (it only reports jobs with their job tokens).
    fn runner_info(&self) -> RunnerInfo {
        shell_info()
    }

    /// Whether this replica runs `runner`'s jobs; logs once per runner when it does not.
    fn offered(&self, runner: &Runner) -> bool {
        if self.runtimes.offers(&runner.backend) {
            lock(&self.unoffered).remove(&runner.id);
            return true;
        }
        if lock(&self.unoffered).insert(runner.id) {
            tracing::warn!(
                runner = %runner.id,
                runtime = %runner.backend,
                offered = ?self.runtimes.names(),
                "the runner's runtime is not enabled on this replica (gsr serve --backends): its jobs are not claimed here"
            );
        }
        false
    }

    /// Re-read the active runners: build receivers for new or changed ones, retire those
    /// that were paused or deleted (their running jobs finish). Returns how many runners
    /// have a receiver. A runner whose receiver cannot be built is logged and skipped.
    pub async fn refresh(&self) -> Result<usize, DispatchError> {
        if self.stopping.is_cancelled() {
            return Ok(0);
        }
        let active = self.store.active_runners().await?;
        let wanted: HashMap<RunnerId, Runner> = active.into_iter().map(|r| (r.id, r)).collect();
        let (gone, todo): (Vec<Receiver>, Vec<Runner>) = {
            let mut recv = lock(&self.receivers);
            let stale: Vec<RunnerId> = recv
                .iter()
                .filter(|(id, r)| wanted.get(id).map(Shape::of).as_ref() != Some(&r.shape))
                .map(|(id, _)| *id)
                .collect();
            let gone = stale.iter().filter_map(|id| recv.remove(id)).collect();
            let todo = wanted
                .values()
                .filter(|r| !recv.contains_key(&r.id) && self.offered(r))
                .cloned()
                .collect();
            (gone, todo)
        };
        for r in gone {
            self.retire(r);
        }
        for runner in todo {
            if let Err(e) = self.install(runner).await {
                tracing::error!(error = %e, "could not start a receiver for a runner");
            }
        }
        Ok(self.count_runners())
    }

    /// How many runners have a receiver; also the `gsr_runners_active` gauge.
    fn count_runners(&self) -> usize {
        let n = lock(&self.receivers).len();
        metrics::gauge!(metric::RUNNERS_ACTIVE).set(n as f64);
        n
    }

    fn retire(&self, r: Receiver) {
        tracing::info!("retiring a receiver (runner changed, paused or deleted); its jobs finish");
        // Gracefully: a long poll in flight may already carry a job GitLab assigned.
        r.webhook.stop_claiming_gracefully();
        if self.abort.is_cancelled() {
            r.webhook.abort_jobs();
        }
        let w = r.webhook;
        {
            let mut hooks = lock(&self.retired_hooks);
            hooks.retain(|h| {
                let s = h.status();
                s.jobs_running > 0 || s.reconciling
            });
            hooks.push(w.clone());
        }
        self.retired.spawn(async move { w.drained().await });
    }

    /// Build and register the receiver of `runner` (replacing any older one).
    async fn install(&self, runner: Runner) -> Result<Arc<Webhook>, DispatchError> {
        let webhook = self.build(&runner).await?;
        let old = {
            let mut recv = lock(&self.receivers);
            if let Some(r) = recv.get(&runner.id) {
                if r.shape == Shape::of(&runner) {
                    // Someone installed the same runner meanwhile (a delivery racing the
                    // ticker): keep theirs; ours has started nothing yet.
                    return Ok(r.webhook.clone());
                }
            }
            recv.insert(
                runner.id,
                Receiver {
                    shape: Shape::of(&runner),
                    webhook: webhook.clone(),
                },
            )
        };
        if let Some(old) = old {
            self.retire(old);
        }
        if self.stopping.is_cancelled() {
            webhook.stop_claiming();
        }
        self.count_runners();
        Ok(webhook)
    }

    async fn build(&self, runner: &Runner) -> Result<Arc<Webhook>, DispatchError> {
        let err = |message: String| DispatchError::Runner {
            runner: runner.id,
            message,
        };
        let placement = self
            .runtimes
            .placement(&runner.backend, &runner.gitlab_url)
            .ok_or_else(|| {
                err(format!(
                    "runtime {:?} is not enabled on this replica",
                    runner.backend
                ))
            })?;
        let info = runtime::placement_info(&placement);
        let token = self.store.runner_token(runner.id).await?;
        let mut coordinator = self
            .clients
            .coordinator(&runner.gitlab_url)
            .map_err(|e| err(e.to_string()))?;
        if let Some(retry) = self.settings.retry {
            coordinator = coordinator.with_retry(retry);
        }
        // One runner manager per (replica, runner), stable across restarts.
        let system_id = gsr_gitlab::system_id::from_machine_id(&format!(
            "gsr-serve:{}:{}",
            self.replica, runner.id
        ));
        let mut worker = self.worker.clone();
        // Per replica, then per runner: concurrency slots are numbered per replica, so
        // replicas sharing one builds dir (one host) must not share slot directories.
        worker.builds_dir = worker
            .builds_dir
            .join(path_safe(&self.replica))
            .join(runner.id.to_string());
        worker.runner.short_token = gsr_worker::short_token(token.expose_secret());
        worker.runner.system_id = system_id.clone();
        let cfg = WebhookConfig {
            // The per-runner secret is verified against the store in `handle_webhook`.
            secret: None,
            max_builds: usize::try_from(runner.concurrency.max(1)).unwrap_or(1),
            wait_timeout: self.settings.wait_timeout,
            check_interval: self.settings.check_interval,
            sync: false,
            // The loop is the backstop for lost hooks: always one job request open.
            keep_polling: true,
            ..WebhookConfig::default()
        };
        let recorder = Recorder::new(self.store.clone(), runner.id, self.replica.clone());
        let hook_runner = gsr_webhook::Runner {
            coordinator,
            runner_token: token,
            system_id,
            info,
            placement,
            worker,
        };
        Webhook::with_observer(cfg, hook_runner, Arc::new(recorder)).map_err(|e| err(e.to_string()))
    }

    /// The receiver for `runner`, built if it is missing or out of date.
    async fn receiver(&self, runner: Runner) -> Result<Arc<Webhook>, DispatchError> {
        {
            let recv = lock(&self.receivers);
            if let Some(r) = recv.get(&runner.id) {
                if r.shape == Shape::of(&runner) {
                    return Ok(r.webhook.clone());
                }
            }
        }
        self.install(runner).await
    }

    /// A delivery to the per-runner webhook endpoint of `runner_id`.
    ///
    /// Unknown runner → 404; wrong or missing `X-Gitlab-Token` (checked against the
    /// runner's stored secret hash) → 401; paused runner → 200 `ignored`; stopping → 503;
    /// otherwise the rules of `gsr webhook` ([`Webhook::handle`]): the pending job is
    /// claimed (and recorded) by the runner's receiver in the background.
    ///
    /// Every answer is counted in `gsr_webhook_deliveries_total{result}` (see
    /// [`HookResponse::result`] for the mapping).
    pub async fn handle_webhook(&self, runner_id: RunnerId, delivery: Delivery) -> HookResponse {
        let r = self.handle_webhook_inner(runner_id, delivery).await;
        metrics::counter!(metric::WEBHOOK_DELIVERIES, "result" => r.result()).increment(1);
        r
    }

    async fn handle_webhook_inner(&self, runner_id: RunnerId, delivery: Delivery) -> HookResponse {
        let runner = match self.store.runner_by_id(runner_id).await {
            Ok(r) => r,
            Err(StoreError::NotFound) => return reply(404, "not found"),
            Err(e) => {
                tracing::error!(error = %e, "webhook: could not read the runner");
                return reply(500, "internal error");
            }
        };
        let presented = delivery
            .token
            .as_deref()
            .and_then(|t| std::str::from_utf8(t).ok());
        let ok = match presented {
            None => false,
            Some(p) => match self.store.verify_webhook_secret(runner_id, p).await {
                Ok(ok) => ok,
                Err(e) => {
                    tracing::error!(error = %e, "webhook: could not verify the secret");
                    return reply(500, "internal error");
                }
            },
        };
        if !ok {
            tracing::warn!(runner = %runner_id, webhook_uuid = ?delivery.webhook_uuid,
                "refused a delivery: wrong or missing X-Gitlab-Token");
            return reply(401, "unauthorized");
        }
        if runner.paused {
            return reply(
                200,
                format!("{} the runner is paused", gsr_webhook::delivery::IGNORED),
            );
        }
        if self.stopping.is_cancelled() {
            return reply(503, "shutting down");
        }
        if !self.offered(&runner) {
            return reply(
                200,
                format!(
                    "{} the runner's runtime is not enabled on this replica",
                    gsr_webhook::delivery::IGNORED
                ),
            );
        }
        match self.receiver(runner).await {
            Ok(w) => w.handle(delivery),
            Err(e) => {
                tracing::error!(error = %e, "webhook: no receiver for the runner");
                reply(500, "internal error")
            }
        }
    }
}

/// The in-process shell's declaration: the pool's and recovery's (each receiver declares
/// its own runtime's, see [`runtime::placement_info`]).
fn shell_info() -> RunnerInfo {
    RunnerInfo::new("shell", "bash", Features::shell_runner())
}

/// `name` as one path component: characters other than ASCII letters, digits, `.`, `-`
/// and `_` become `_` (a replica name is operator-given), and `.`/`..`/empty are avoided.
fn path_safe(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        format!("_{s}")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::path_safe;

    #[test]
    fn replica_names_become_one_safe_path_component() {
        assert_eq!(path_safe("replica-a.example_1"), "replica-a.example_1");
        assert_eq!(path_safe("../etc/x y"), ".._etc_x_y");
        assert_eq!(path_safe(".."), "_..");
        assert_eq!(path_safe(""), "_");
        assert_eq!(path_safe("é"), "_");
    }
}
