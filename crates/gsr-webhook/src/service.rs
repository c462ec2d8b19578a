//! [`Webhook`]: the delivery rules, the reconcile loop, the job tasks and shutdown.
//!
//! Tasks: at most one reconcile loop (claims jobs) and one task per claimed job (holds a
//! capacity permit and a `CI_CONCURRENT_ID` slot until the job has ended). All are owned
//! by one `TaskTracker`, so shutdown can wait for exactly them. No lock is held across an
//! `.await`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gsr_exec::{CancellationToken, Executor};
use gsr_gitlab::webhook::{token_matches, JobHook};
use gsr_gitlab::{ClaimedJob, Coordinator, GitlabError, JobRequest, PayloadError, RunnerInfo};
use gsr_job::{ExposeSecret, SecretString};
use gsr_worker::place::{Placement, Target};
use gsr_worker::WorkerConfig;
use rand::Rng;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::delivery::{delivery_name, Delivery, HookResponse, JobSummary, DUPLICATE, IGNORED};
use crate::observer::{ClaimDecision, ClaimInfo, JobObserver};
use crate::seen::{Key, Seen};

/// A `jobs/request` answered faster than this was not held by GitLab (no long poll).
const QUICK_ANSWER: Duration = Duration::from_millis(100);

/// The `X-Gitlab-Event` value of job events.
pub const JOB_HOOK: &str = "Job Hook";

/// Why a [`Webhook`] cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// `max_builds` must allow at least one job.
    #[error("max_builds must be at least 1")]
    NoCapacity,
}

/// Settings of the receiver (the `gsr webhook` flags).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `GITLAB_SECRET`: the hook's secret token; `None` accepts every delivery.
    pub secret: Option<SecretString>,
    /// `MAX_BUILDS`: jobs in flight at most (claims wait for a free slot).
    pub max_builds: usize,
    /// `WAIT_TIMEOUT`: the reconcile loop stops after this long without a job. Zero: it
    /// stops at the first "no job" answer (and does not long-poll). With `keep_polling`,
    /// the window after which a long poll GitLab still holds is cut and sent again.
    pub wait_timeout: Duration,
    /// Wait for the job a delivery caused before answering (see [`HookResponse::done`]).
    pub sync: bool,
    /// Pause between job requests when GitLab does not long-poll.
    pub check_interval: Duration,
    /// How many idempotency keys, event UUIDs and build ids to remember.
    pub remember: usize,
    /// Once started, the reconcile loop never stops for lack of jobs (only on shutdown,
    /// or when GitLab refuses the token): when GitLab ends a long poll it asks again at
    /// once, a request GitLab holds longer than `wait_timeout` is cut and sent again, and
    /// without long polling it asks every `check_interval`. For a long-lived service
    /// (`gsr serve`), where the loop is the backstop for lost hooks and must not leave
    /// gaps. The window is jittered (the first long poll is cut at a random 25–100 % of
    /// `wait_timeout`, later ones at 90–100 %) so that many receivers started together do
    /// not re-ask in lockstep. Sync waiters (`sync`) for a job this receiver does not claim
    /// are answered only on shutdown, so the two do not go together.
    pub keep_polling: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            secret: None,
            max_builds: 1,
            wait_timeout: Duration::from_secs(10),
            sync: false,
            check_interval: Duration::from_secs(3),
            remember: 10_000,
            keep_polling: false,
        }
    }
}

/// What claiming and running a job needs: the same building blocks `gsr run-single` uses.
pub struct Runner {
    /// Client for the GitLab instance.
    pub coordinator: Coordinator,
    /// The runner authentication token (used for `jobs/request` only).
    pub runner_token: SecretString,
    /// This machine's runner manager id.
    pub system_id: String,
    /// What the runner declares (`info`, features).
    pub info: RunnerInfo,
    /// Where claimed jobs run: in this process with an executor ([`Runner::in_process`],
    /// what `gsr webhook` and `gsr lambda` use) or on a backend (`gsr serve`'s runtimes).
    pub placement: Placement,
    /// Worker settings; `concurrent_id` is set per job from a free slot.
    pub worker: WorkerConfig,
}

impl Runner {
    /// The placement of jobs run in this process by `executor` (no backend, no fallback).
    pub fn in_process(executor: Arc<dyn Executor>) -> Placement {
        Placement {
            primary: Target::InProcess(executor),
            fallback: None,
            // Used for backends' labels and `gsr exec --url` only.
            claimer: String::new(),
            gitlab_url: String::new(),
        }
    }
}

/// A snapshot of what the receiver is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Jobs claimed and not yet ended.
    pub jobs_running: usize,
    /// The reconcile loop is running.
    pub reconciling: bool,
    /// Shutdown began: no new claims.
    pub stopping: bool,
}

#[derive(Default)]
struct LoopState {
    running: bool,
    /// Bumped by every delivery that asks for a claim; the loop compares it before it
    /// stops so a delivery racing with the stop is never lost.
    nudges: u64,
}

/// The receiver. Build one per process with [`Webhook::new`], hand deliveries to
/// [`Webhook::handle`].
pub struct Webhook {
    cfg: WebhookConfig,
    runner: Runner,
    permits: Arc<Semaphore>,
    slots: Mutex<Vec<bool>>,
    tracker: TaskTracker,
    seen: Mutex<Seen>,
    loop_state: Mutex<LoopState>,
    nudge: Notify,
    /// Shutdown: no new claims, the reconcile loop ends.
    stop: CancellationToken,
    /// Abort running jobs (reported as `runner_interrupted`).
    abort: CancellationToken,
    /// Sync mode: deliveries waiting for the end of a job.
    waiters: Mutex<HashMap<u64, Vec<oneshot::Sender<JobSummary>>>>,
    /// When the pending hook of a job arrived (for the received → claimed timing).
    received: Mutex<HashMap<u64, Instant>>,
    /// Jobs claimed and not yet ended.
    running: Mutex<HashSet<u64>>,
    /// The last `X-GitLab-Last-Update`, echoed so GitLab can long-poll.
    last_update: Mutex<Option<String>>,
    /// Optional hooks around each claimed job (see [`JobObserver`]).
    observer: Option<Arc<dyn JobObserver>>,
    /// Graceful stop: no new requests, but the one in flight is answered (see
    /// [`Webhook::stop_claiming_gracefully`]).
    retiring: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent; a panic elsewhere must not stop
    // the receiver.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Webhook {
    /// A receiver with `cfg` that claims and runs jobs with `runner`.
    pub fn new(cfg: WebhookConfig, runner: Runner) -> Result<Arc<Webhook>, WebhookError> {
        Self::build(cfg, runner, None)
    }

    /// [`Webhook::new`] with a [`JobObserver`] awaited after each claim (before the job
    /// runs; it may veto it) and after each job ended.
    pub fn with_observer(
        cfg: WebhookConfig,
        runner: Runner,
        observer: Arc<dyn JobObserver>,
    ) -> Result<Arc<Webhook>, WebhookError> {
        Self::build(cfg, runner, Some(observer))
    }

    fn build(
        cfg: WebhookConfig,
        runner: Runner,
        observer: Option<Arc<dyn JobObserver>>,
    ) -> Result<Arc<Webhook>, WebhookError> {
        if cfg.max_builds == 0 {
            return Err(WebhookError::NoCapacity);
        }
        Ok(Arc::new(Webhook {
            permits: Arc::new(Semaphore::new(cfg.max_builds)),
            slots: Mutex::new(vec![false; cfg.max_builds]),
            seen: Mutex::new(Seen::new(cfg.remember)),
            tracker: TaskTracker::new(),
            loop_state: Mutex::new(LoopState::default()),
            nudge: Notify::new(),
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            waiters: Mutex::new(HashMap::new()),
            received: Mutex::new(HashMap::new()),
            running: Mutex::new(HashSet::new()),
            last_update: Mutex::new(None),
            observer,
            retiring: AtomicBool::new(false),
            cfg,
            runner,
        }))
    }

    /// The settings in force.
    pub fn config(&self) -> &WebhookConfig {
        &self.cfg
    }

    /// What the receiver is doing now.
    pub fn status(&self) -> Status {
        Status {
            jobs_running: lock(&self.running).len(),
            reconciling: lock(&self.loop_state).running,
            stopping: self.stopping(),
        }
    }

    /// Act on one delivery. Returns at once; claiming and running happen in background
    /// tasks (so this must be called inside a tokio runtime).
    ///
    /// Rules, in order: wrong or missing secret → 401 (no details); no `X-Gitlab-Event` →
    /// 400; another event → 200 `ignored`; a body that is not a Job Hook → 400 with the
    /// reason; a status other than `pending` → 200 `ignored`; shutting down → 503; a
    /// duplicate → 200 `duplicate`; otherwise the reconcile loop is started (or nudged)
    /// and the answer is 202 — or, in sync mode, 200 once the job has ended.
    pub fn handle(self: &Arc<Self>, delivery: Delivery) -> HookResponse {
        let received = Instant::now();
        let secret = self.cfg.secret.as_ref().map(|s| s.expose_secret());
        if !token_matches(secret, delivery.token.as_deref()) {
            tracing::warn!(
                webhook_uuid = ?delivery.webhook_uuid,
                "refused a delivery: wrong or missing X-Gitlab-Token"
            );
            return HookResponse::new(401, "unauthorized");
        }
        let Some(event) = delivery.event.as_deref() else {
            return HookResponse::new(400, "missing X-Gitlab-Event header");
        };
        if event != JOB_HOOK {
            tracing::debug!(event, "ignored a delivery that is not a Job Hook");
            return HookResponse::new(200, format!("{IGNORED} {event:?} is not a Job Hook"));
        }
        let hook = match JobHook::parse(&delivery.body) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(webhook_uuid = ?delivery.webhook_uuid, error = %e, "refused a Job Hook body");
                return HookResponse::new(400, e.to_string());
            }
        };
        let Some(build_id) = hook.build_id else {
            return HookResponse::new(400, "invalid Job Hook payload: missing build_id");
        };
        if !hook.is_pending() {
            tracing::debug!(build_id, status = %hook.build_status, "ignored a Job Hook that is not pending");
            return HookResponse::new(
                200,
                format!("{IGNORED} job {build_id} is {:?}", hook.build_status),
            );
        }
        if self.stopping() {
            return HookResponse::new(503, "shutting down");
        }
        let mut keys = vec![Key::Build(build_id)];
        keys.extend(delivery.idempotency_key.clone().map(Key::Idempotency));
        keys.extend(delivery.event_uuid.clone().map(Key::Event));
        if !lock(&self.seen).insert_all(&keys) {
            tracing::info!(
                build_id,
                event_uuid = ?delivery.event_uuid,
                idempotency_key = ?delivery.idempotency_key,
                "duplicate delivery; nothing started"
            );
            return HookResponse::new(200, format!("{DUPLICATE} job {build_id}"));
        }
        {
            let mut r = lock(&self.received);
            // Diagnostics only: never let it grow without bound.
            if r.len() >= self.cfg.remember.max(1) {
                r.clear();
            }
            r.insert(build_id, received);
        }
        tracing::info!(
            build_id,
            project_id = ?hook.project_id,
            pipeline_id = ?hook.pipeline_id,
            job_name = %hook.build_name,
            event_uuid = ?delivery.event_uuid,
            webhook_uuid = ?delivery.webhook_uuid,
            "pending job announced"
        );
        let (waiter, done) = if self.cfg.sync {
            let (tx, rx) = oneshot::channel();
            (Some((build_id, tx)), Some(rx))
        } else {
            (None, None)
        };
        self.nudge_loop(waiter);
        match done {
            Some(rx) => HookResponse {
                status: 200,
                message: format!("job {build_id} ended"),
                done: Some(rx),
            },
            None => HookResponse::new(202, format!("accepted: claiming job {build_id}")),
        }
    }

    /// Start the reconcile loop, or nudge the running one (its idle timer restarts and a
    /// pause between requests ends at once). Never runs two loops.
    pub fn reconcile(self: &Arc<Self>) {
        self.nudge_loop(None);
    }

    /// [`Webhook::reconcile`], registering a sync waiter in the same critical section as
    /// the nudge: the loop either sees the nudge and goes on, or has already finished
    /// (and released its waiters) so that this starts a new loop. When stopping, the
    /// waiter is dropped, which answers its delivery with 503.
    fn nudge_loop(self: &Arc<Self>, waiter: Option<(u64, oneshot::Sender<JobSummary>)>) {
        let seen = {
            let mut st = lock(&self.loop_state);
            if self.stopping() {
                return;
            }
            if let Some((id, tx)) = waiter {
                lock(&self.waiters).entry(id).or_default().push(tx);
            }
            st.nudges += 1;
            if st.running {
                drop(st);
                self.nudge.notify_one();
                return;
            }
            st.running = true;
            st.nudges
        };
        let me = self.clone();
        self.tracker
            .spawn(async move { me.reconcile_loop(seen).await });
    }

    /// Stop claiming: the reconcile loop ends, new deliveries get 503. Running jobs go on.
    pub fn stop_claiming(&self) {
        if !self.stop.is_cancelled() {
            tracing::info!("stopping: no new jobs will be claimed");
        }
        self.stop.cancel();
        self.nudge.notify_one();
    }

    /// Stop claiming without cutting a job request in flight: GitLab may already have
    /// assigned a job to it, and a dropped answer leaves that job stuck until it times
    /// out. The request is answered, a job it brings runs, then the reconcile loop ends;
    /// new deliveries get 503. Running jobs go on. (A long poll in flight may take up to
    /// the idle deadline.)
    pub fn stop_claiming_gracefully(&self) {
        if !self.retiring.swap(true, Ordering::SeqCst) {
            tracing::info!("stopping after the job request in flight: no new jobs will be claimed");
        }
        // Wakes a pause between requests (not the request itself).
        self.nudge.notify_one();
    }

    /// Shutdown began, hard or graceful.
    fn stopping(&self) -> bool {
        self.stop.is_cancelled() || self.retiring.load(Ordering::SeqCst)
    }

    /// Abort running jobs: they stop at once and are reported as `runner_interrupted`.
    /// Implies [`Webhook::stop_claiming`].
    pub fn abort_jobs(&self) {
        self.stop_claiming();
        if !self.abort.is_cancelled() {
            tracing::warn!(
                jobs = lock(&self.running).len(),
                "aborting the running jobs"
            );
        }
        self.abort.cancel();
    }

    /// Wait until the reconcile loop and every job task have ended. Call after
    /// [`Webhook::stop_claiming`] or [`Webhook::stop_claiming_gracefully`] (otherwise a new delivery may start new tasks).
    pub async fn drained(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    fn nudges(&self) -> u64 {
        lock(&self.loop_state).nudges
    }

    /// True (and the loop marked stopped) when no delivery came since `seen`; otherwise
    /// `seen` is brought up to date and the loop must go on.
    fn try_finish(&self, seen: &mut u64) -> bool {
        let mut st = lock(&self.loop_state);
        if st.nudges != *seen && !self.stopping() {
            *seen = st.nudges;
            return false;
        }
        self.finish_locked(&mut st);
        true
    }

    /// Mark the loop stopped, whatever came in since it last looked.
    fn finish(&self) {
        let mut st = lock(&self.loop_state);
        self.finish_locked(&mut st);
    }

    /// With the loop state locked: the loop is stopped, and sync waiters for jobs this
    /// process is not running get `not_claimed` (nothing here will run them). Done under
    /// the same lock as [`Webhook::nudge_loop`] registers waiters, so a waiter is never
    /// released by a loop that ends just after its delivery started a new one.
    fn finish_locked(&self, st: &mut LoopState) {
        st.running = false;
        let running = lock(&self.running).clone();
        let mut waiters = lock(&self.waiters);
        let idle: Vec<u64> = waiters
            .keys()
            .copied()
            .filter(|id| !running.contains(id))
            .collect();
        for id in idle {
            for tx in waiters.remove(&id).unwrap_or_default() {
                let _ = tx.send(JobSummary::not_claimed(id));
            }
        }
    }

    fn window(&self, first: bool) -> Duration {
        window(&self.cfg, first)
    }

    async fn reconcile_loop(self: Arc<Self>, mut seen: u64) {
        let wait = self.cfg.wait_timeout;
        let long_poll = !wait.is_zero();
        let keep = self.cfg.keep_polling;
        let mut first = true;
        let mut deadline = Instant::now() + wait;
        let mut failures = 0u32;
        let mut quick_polls = 0u32;
        let mut claimed = 0u64;
        tracing::debug!("reconcile loop started");
        loop {
            if self.stopping() {
                self.finish();
                break;
            }
            if long_poll && Instant::now() >= deadline {
                if !keep && self.try_finish(&mut seen) {
                    break;
                }
                deadline = Instant::now() + wait;
            }

            // 1. Capacity: a claim only when the job can start at once.
            let permit = match self.permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    tracing::debug!("all job slots busy; waiting for one");
                    let p = tokio::select! {
                        p = self.permits.clone().acquire_owned() => p,
                        _ = self.stop.cancelled() => continue,
                    };
                    let Ok(p) = p else {
                        // The semaphore is never closed; if it were, nothing could run.
                        self.finish();
                        break;
                    };
                    // Waiting for capacity is not idle time.
                    deadline = Instant::now() + wait;
                    p
                }
            };

            if self.stopping() {
                drop(permit);
                self.finish();
                break;
            }

            // 2. Claim. A long poll is cut at the idle deadline; a delivery moves it.
            let last_update = if long_poll {
                lock(&self.last_update).clone()
            } else {
                None
            };
            if keep {
                // Polling for good: the window bounds this one request (see `window`).
                deadline = Instant::now() + self.window(first);
            }
            let started = Instant::now();
            let request = self.runner.coordinator.request_job(
                &self.runner.runner_token,
                &self.runner.system_id,
                last_update.as_deref(),
                &self.runner.info,
            );
            tokio::pin!(request);
            let outcome = loop {
                tokio::select! {
                    r = &mut request => break Some(r),
                    _ = tokio::time::sleep_until(deadline), if long_poll => break None,
                    _ = self.nudge.notified() => {
                        seen = self.nudges();
                        deadline = Instant::now() + wait;
                    }
                    _ = self.stop.cancelled() => break None,
                }
            };
            if started.elapsed() >= QUICK_ANSWER {
                // The first request that was held (or cut) has spread this loop's phase.
                first = false;
            }
            let Some(outcome) = outcome else {
                continue; // deadline or stop: checked at the top
            };
            match outcome {
                Ok(JobRequest::Job(job)) => {
                    failures = 0;
                    claimed += 1;
                    self.start_job(*job, permit, started);
                    deadline = Instant::now() + wait;
                    continue; // more may be waiting: ask again at once
                }
                Ok(JobRequest::Malformed(e)) => {
                    failures = 0;
                    claimed += 1;
                    self.fail_malformed(e, permit);
                    deadline = Instant::now() + wait;
                    continue;
                }
                Ok(JobRequest::NoJob {
                    last_update: lu,
                    long_polling,
                }) => {
                    drop(permit);
                    failures = 0;
                    if !long_poll {
                        if !keep {
                            if self.try_finish(&mut seen) {
                                break;
                            }
                            continue;
                        }
                        let next = started + self.cfg.check_interval;
                        self.pause_until(next, &mut seen, &mut deadline).await;
                        continue;
                    }
                    let have_last_update = {
                        let mut l = lock(&self.last_update);
                        if lu.is_some() {
                            *l = lu;
                        }
                        l.is_some()
                    };
                    // As in run-single: Workhorse holds the next request until the queue
                    // changes, so ask again at once; fall back to the check interval
                    // when answers keep coming back at once.
                    let quick = started.elapsed() < QUICK_ANSWER;
                    quick_polls = if quick { quick_polls + 1 } else { 0 };
                    if long_polling && have_last_update && quick_polls < 3 {
                        continue;
                    }
                    let next = (started + self.cfg.check_interval).min(deadline);
                    self.pause_until(next, &mut seen, &mut deadline).await;
                }
                Err(GitlabError::Forbidden { .. }) => {
                    drop(permit);
                    tracing::error!(
                        "GitLab refused the runner token (403): it is invalid, or the runner was deleted; not claiming"
                    );
                    // A later delivery starts a new loop (and will hit the same error
                    // unless the token was fixed); never spin here.
                    self.finish();
                    break;
                }
                Err(e) => {
                    drop(permit);
                    failures += 1;
                    let backoff = self
                        .runner
                        .coordinator
                        .retry_policy()
                        .backoff(failures.min(10));
                    tracing::warn!(error = %e, wait = ?backoff, "requesting a job failed; will retry");
                    if !long_poll && !keep && failures >= 3 && self.try_finish(&mut seen) {
                        break;
                    }
                    let mut next = Instant::now() + backoff;
                    if long_poll {
                        next = next.min(deadline);
                    }
                    self.pause_until(next, &mut seen, &mut deadline).await;
                }
            }
        }
        tracing::debug!(claimed, "reconcile loop stopped");
    }

    /// Sleep until `until`, cut short by a delivery (which also restarts the idle timer)
    /// or by shutdown.
    async fn pause_until(&self, until: Instant, seen: &mut u64, deadline: &mut Instant) {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = self.nudge.notified() => {
                *seen = self.nudges();
                *deadline = Instant::now() + self.cfg.wait_timeout;
            }
            _ = self.stop.cancelled() => {}
        }
    }

    fn resolve(&self, id: u64, summary: &JobSummary) {
        let txs = lock(&self.waiters).remove(&id).unwrap_or_default();
        for tx in txs {
            let _ = tx.send(summary.clone());
        }
    }

    fn take_slot(&self) -> usize {
        let mut slots = lock(&self.slots);
        match slots.iter().position(|used| !used) {
            Some(i) => {
                slots[i] = true;
                i
            }
            // Cannot happen (a permit is held per slot); a fresh number keeps dirs apart.
            None => {
                slots.push(true);
                slots.len() - 1
            }
        }
    }

    fn job_started(self: &Arc<Self>, id: u64, permit: OwnedSemaphorePermit) -> JobGuard {
        lock(&self.running).insert(id);
        JobGuard {
            webhook: self.clone(),
            id,
            slot: self.take_slot(),
            _permit: permit,
        }
    }

    fn start_job(self: &Arc<Self>, job: ClaimedJob, permit: OwnedSemaphorePermit, sent: Instant) {
        let claimed_at = Instant::now();
        let ClaimedJob { spec, payload } = job;
        let id = spec.id;
        let received = lock(&self.received).remove(&id);
        let guard = self.job_started(id, permit);
        tracing::info!(
            job = id,
            build_id = id,
            project = %spec.project_full_path,
            slot = guard.slot,
            request_ms = millis(claimed_at - sent),
            received_to_claimed_ms = received.map(|r| millis(claimed_at - r)),
            via = if received.is_some() { "webhook" } else { "reconcile" },
            "job claimed"
        );
        // From the delivery's arrival, or else from the start of the request that got it.
        let waited = claimed_at - received.unwrap_or(sent);
        metrics::histogram!(crate::metric::CLAIM_LATENCY).record(waited.as_secs_f64());
        let info = ClaimInfo {
            job_id: id,
            project: Some(spec.project_full_path.clone()),
            queued_duration: queued_duration(&payload),
            job_token: Some(spec.token.clone()),
        };
        let me = self.clone();
        self.tracker.spawn(async move {
            if let Some(obs) = me.observer.clone() {
                match obs.claimed(&info).await {
                    ClaimDecision::Run => {}
                    ClaimDecision::Skip => {
                        tracing::warn!(
                            job = id,
                            build_id = id,
                            "claimed job vetoed: not running it"
                        );
                        me.resolve(id, &JobSummary::not_claimed(id));
                        drop(guard);
                        return;
                    }
                    ClaimDecision::Fail(reason) => {
                        let client = me.runner.coordinator.job_client(id, spec.token.clone());
                        me.fail_vetoed(client, &info, &reason, claimed_at, Some(&obs))
                            .await;
                        drop(guard);
                        return;
                    }
                }
            }
            let mut cfg = me.runner.worker.clone();
            cfg.concurrent_id = guard.slot;
            let client = me.runner.coordinator.job_client(id, spec.token.clone());
            let job = ClaimedJob { spec, payload };
            let report = gsr_worker::place::run_claimed(
                job,
                client,
                &me.runner.placement,
                &cfg,
                me.abort.clone(),
            )
            .await;
            let took = claimed_at.elapsed();
            if crate::metric::is_backend_error(&report) {
                metrics::counter!(crate::metric::BACKEND_ERRORS).increment(1);
            }
            let summary = JobSummary::from_report(&report, millis(took));
            tracing::info!(
                job = id,
                build_id = id,
                status = %summary.status,
                failure_reason = ?summary.failure_reason,
                delivery = delivery_name(&report.delivery),
                claimed_to_finished_ms = millis(took),
                received_to_finished_ms = received.map(|r| millis(r.elapsed())),
                "job ended"
            );
            if let Some(obs) = &me.observer {
                obs.ended(&info, &summary).await;
            }
            // Waiters first: while the job counts as running, a loop that ends now
            // cannot answer them `not_claimed`.
            me.resolve(id, &summary);
            drop(guard);
        });
    }

    /// Report a job that will not run as failed and tell waiters and the observer.
    async fn fail_vetoed(
        &self,
        client: gsr_gitlab::JobClient,
        info: &ClaimInfo,
        reason: &str,
        claimed_at: Instant,
        observer: Option<&Arc<dyn JobObserver>>,
    ) {
        let id = info.job_id;
        let delivery = gsr_worker::fail_unrunnable(client, &self.runner.worker, reason).await;
        tracing::info!(
            job = id,
            build_id = id,
            delivery = delivery_name(&delivery),
            "reported the unrunnable job as failed"
        );
        let summary = JobSummary {
            job_id: id,
            status: "failed".into(),
            failure_reason: Some("runner_system_failure".into()),
            exit_code: None,
            delivery: Some(delivery_name(&delivery).into()),
            duration_ms: Some(millis(claimed_at.elapsed())),
        };
        if let Some(obs) = observer {
            obs.ended(info, &summary).await;
        }
        self.resolve(id, &summary);
    }

    fn fail_malformed(self: &Arc<Self>, e: PayloadError, permit: OwnedSemaphorePermit) {
        tracing::error!(job = ?e.job_id, error = %e, "GitLab assigned a job that cannot be run");
        let (Some(id), Some(job_token)) = (e.job_id, e.job_token.clone()) else {
            return;
        };
        lock(&self.received).remove(&id);
        let guard = self.job_started(id, permit);
        let me = self.clone();
        self.tracker.spawn(async move {
            let claimed_at = Instant::now();
            let info = ClaimInfo {
                job_id: id,
                project: None,
                queued_duration: None,
                job_token: Some(job_token.clone()),
            };
            let observer = me.observer.clone();
            if let Some(obs) = &observer {
                // Recorded like any claim; a veto only means someone else reports it.
                if obs.claimed(&info).await == ClaimDecision::Skip {
                    me.resolve(id, &JobSummary::not_claimed(id));
                    drop(guard);
                    return;
                }
            }
            let client = me.runner.coordinator.job_client(id, job_token);
            me.fail_vetoed(client, &info, &e.to_string(), claimed_at, observer.as_ref())
                .await;
            drop(guard);
        });
    }
}

/// The long-poll window: `wait_timeout`, or with `keep_polling` a random share of it (see
/// [`WebhookConfig::keep_polling`]): loops started together drift apart with their first
/// long poll (the first request GitLab holds) and stay apart (later windows vary a little).
fn window(cfg: &WebhookConfig, first: bool) -> Duration {
    let wait = cfg.wait_timeout;
    if !cfg.keep_polling {
        return wait;
    }
    let low = if first { 0.25 } else { 0.9 };
    wait.mul_f64(rand::thread_rng().gen_range(low..=1.0))
}

/// `job_info.time_in_queue_seconds` of a `jobs/request` payload, when GitLab sent it.
fn queued_duration(payload: &[u8]) -> Option<Duration> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let secs = v.get("job_info")?.get("time_in_queue_seconds")?.as_f64()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// Held by a job task: its capacity permit, its `CI_CONCURRENT_ID` slot and its entry in
/// the running set, all released when the task ends (even by a panic).
struct JobGuard {
    webhook: Arc<Webhook>,
    id: u64,
    slot: usize,
    _permit: OwnedSemaphorePermit,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        if let Some(s) = lock(&self.webhook.slots).get_mut(self.slot) {
            *s = false;
        }
        lock(&self.webhook.running).remove(&self.id);
        if std::thread::panicking() {
            // Dropping the senders tells sync waiters that the job did not end normally.
            lock(&self.webhook.waiters).remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_jittered_only_when_polling_for_good() {
        let mut cfg = WebhookConfig {
            wait_timeout: Duration::from_secs(30),
            ..WebhookConfig::default()
        };
        assert_eq!(window(&cfg, true), Duration::from_secs(30));
        assert_eq!(window(&cfg, false), Duration::from_secs(30));
        cfg.keep_polling = true;
        let first: Vec<Duration> = (0..200).map(|_| window(&cfg, true)).collect();
        let later: Vec<Duration> = (0..200).map(|_| window(&cfg, false)).collect();
        assert!(first
            .iter()
            .all(|w| (Duration::from_millis(7500)..=Duration::from_secs(30)).contains(w)));
        assert!(later
            .iter()
            .all(|w| (Duration::from_secs(27)..=Duration::from_secs(30)).contains(w)));
        // 200 draws from a continuous range: not all alike (lockstep is what this avoids).
        assert!(first.iter().any(|w| *w != first[0]));
        assert!(later.iter().any(|w| *w != later[0]));
        cfg.wait_timeout = Duration::ZERO;
        assert_eq!(window(&cfg, true), Duration::ZERO);
    }
}
