//! Project webhooks with job events: GitLab's Job Hook, delivered like GitLab.com does.
//!
//! `gsr webhook` reacts to Job Hooks instead of polling, so the simulator sends them the
//! way GitLab does (protocol sheet §7) and misbehaves the way GitLab's delivery does:
//!
//! - **Events.** Every job status change (`created`, `pending`, `running`, `success`,
//!   `failed`, `canceling`, `canceled`, `skipped`) is one event: [`job_changed`] builds
//!   the payload (`fixtures/job_hook.json`'s shape) under the state lock at the moment of
//!   the change and queues one delivery per hook of the job's project with job events.
//!   A new job emits `created` and, when it has nothing to wait for, `pending` at once (as
//!   Rails does: every build is created, then enqueued). A two-phase pickup emits nothing
//!   (the job stays `pending`); `running` comes with the acknowledgement.
//! - **Asynchronous, ordered.** Each hook has one worker task fed by an unbounded channel,
//!   so a handler only does a non-blocking `send` under the lock and a hook sees events in
//!   the order they happened; one slow receiver delays only its own hook.
//! - **Headers.** `Content-Type`, `X-Gitlab-Event: Job Hook`, `X-Gitlab-Token` (only when
//!   configured), `X-Gitlab-Webhook-UUID` (per HTTP request), `X-Gitlab-Event-UUID` (per
//!   status change, shared by all hooks), `Idempotency-Key` (per hook and event, kept by
//!   duplicates and resends), `X-Gitlab-Instance`, `User-Agent: GitLab/18.6.0`.
//! - **Failures.** Non-2xx (redirects are not followed), timeout
//!   ([`crate::SimConfig::webhook_timeout`]) and connection errors fail a delivery; there
//!   is no automatic retry. Auto-disabling follows `WebHooks::AutoDisabling`: the 4th
//!   consecutive failure disables the hook for 1 min, each further failure doubles the
//!   back-off up to 24 h, more than 39 consecutive failures disable it for good; a success
//!   resets everything. A disabled hook's deliveries are logged as skipped, not sent.
//! - **Resend** (GitLab's "Resend request" on a hook log): the same body and
//!   `Idempotency-Key`, a new `X-Gitlab-Webhook-UUID` and, as the resend is a new request
//!   to GitLab, a new `X-Gitlab-Event-UUID`. It runs synchronously, like
//!   `WebHooks::Events::ResendService`, and is refused (logged as skipped) while the hook
//!   is disabled.
//! - **Faults** on route `webhook_delivery`: `drop` loses a delivery (logged with error
//!   `dropped by fault`, no effect on the failure count), `duplicate` sends it twice.
//!
//! Every delivery, sent or not, ends up in the delivery log (`GET /-/sim/hooks/deliveries`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::payload::SERVER_VERSION;
use crate::state::{Db, JobRec, ProjectRec, RunnerRec, SimState};
use crate::types::{FaultKind, FaultRoute, HookDelivery, HookView, JobStatus, ProjectHookInput};
use crate::util::rfc3339;

/// `WebHooks::AutoDisabling::FAILURE_THRESHOLD`: the failure after this many consecutive
/// ones disables the hook temporarily.
const FAILURE_THRESHOLD: u32 = 3;
/// More consecutive failures than this disable the hook permanently.
const PERMANENTLY_DISABLED_FAILURE_THRESHOLD: u32 = 39;
/// `recent_failures` stops counting here.
const MAX_FAILURES: u32 = 100;
const INITIAL_BACKOFF: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

/// `User-Agent` of every delivery.
pub(crate) fn user_agent() -> String {
    let (major, minor, patch) = SERVER_VERSION;
    format!("GitLab/{major}.{minor}.{patch}")
}

/// A project hook and its auto-disabling state.
pub(crate) struct HookRec {
    pub id: u64,
    pub project_id: u64,
    pub url: String,
    pub token: Option<String>,
    pub job_events: bool,
    pub recent_failures: u32,
    pub backoff_count: u32,
    pub disabled_until: Option<SystemTime>,
    queue: mpsc::UnboundedSender<Delivery>,
}

impl HookRec {
    fn permanently_disabled(&self) -> bool {
        self.recent_failures > PERMANENTLY_DISABLED_FAILURE_THRESHOLD
    }

    fn temporarily_disabled(&self, now: SystemTime) -> bool {
        !self.permanently_disabled() && self.disabled_until.is_some_and(|until| until > now)
    }

    /// Rails' `executable?`.
    fn executable(&self, now: SystemTime) -> bool {
        !self.permanently_disabled() && !self.temporarily_disabled(now)
    }

    /// `enable!` after a successful delivery.
    fn record_success(&mut self) {
        self.recent_failures = 0;
        self.backoff_count = 0;
        self.disabled_until = None;
    }

    /// `backoff!` after a failed delivery.
    fn record_failure(&mut self, now: SystemTime) {
        if self.permanently_disabled() {
            return;
        }
        if self.recent_failures >= FAILURE_THRESHOLD {
            self.disabled_until = Some(now + next_backoff(self.backoff_count));
            self.backoff_count += 1;
        }
        self.recent_failures = (self.recent_failures + 1).min(MAX_FAILURES);
    }

    fn alert_status(&self, now: SystemTime) -> &'static str {
        if self.permanently_disabled() {
            "disabled"
        } else if self.temporarily_disabled(now) {
            "temporarily_disabled"
        } else {
            "executable"
        }
    }

    fn view(&self, now: SystemTime) -> HookView {
        HookView {
            id: self.id,
            project_id: self.project_id,
            url: self.url.clone(),
            job_events: self.job_events,
            token_set: self.token.is_some(),
            recent_failures: self.recent_failures,
            backoff_count: self.backoff_count,
            disabled_until: self
                .disabled_until
                .filter(|_| !self.permanently_disabled())
                .map(rfc3339),
            alert_status: self.alert_status(now).to_string(),
        }
    }
}

/// 1 min, doubling with every back-off, at most 24 h.
fn next_backoff(backoff_count: u32) -> Duration {
    2u32.checked_pow(backoff_count)
        .and_then(|factor| INITIAL_BACKOFF.checked_mul(factor))
        .map_or(MAX_BACKOFF, |d| d.min(MAX_BACKOFF))
}

/// One delivery waiting to be sent (or re-sent).
#[derive(Clone)]
pub(crate) struct Delivery {
    hook_id: u64,
    job_id: u64,
    build_status: JobStatus,
    event_uuid: String,
    idempotency_key: String,
    body: Bytes,
    resend_of: Option<u64>,
}

/// A log entry plus the body, kept for resends.
struct LogRec {
    entry: HookDelivery,
    body: Bytes,
}

/// Hooks and the delivery log (part of [`Db`]).
pub(crate) struct Webhooks {
    /// The simulator's external URL (`X-Gitlab-Instance`, payload URLs).
    pub base_url: String,
    next_hook: u64,
    next_seq: u64,
    hooks: BTreeMap<u64, HookRec>,
    log: Vec<LogRec>,
}

impl Default for Webhooks {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            next_hook: 600,
            next_seq: 0,
            hooks: BTreeMap::new(),
            log: Vec::new(),
        }
    }
}

impl Webhooks {
    /// Registers a hook; its deliveries go to `queue` (the hook's worker).
    pub fn add(
        &mut self,
        project_id: u64,
        input: ProjectHookInput,
        queue: mpsc::UnboundedSender<Delivery>,
    ) -> u64 {
        self.next_hook += 1;
        let id = self.next_hook;
        self.hooks.insert(
            id,
            HookRec {
                id,
                project_id,
                url: input.url,
                token: input.token.filter(|t| !t.is_empty()),
                job_events: input.job_events,
                recent_failures: 0,
                backoff_count: 0,
                disabled_until: None,
                queue,
            },
        );
        id
    }

    /// Removes a hook; its worker ends once its queue is empty. The log stays.
    pub fn remove(&mut self, id: u64) -> bool {
        self.hooks.remove(&id).is_some()
    }

    pub fn view(&self, id: u64) -> Option<HookView> {
        self.hooks.get(&id).map(|h| h.view(SystemTime::now()))
    }

    pub fn views_of_project(&self, project_id: u64) -> Vec<HookView> {
        let now = SystemTime::now();
        self.hooks
            .values()
            .filter(|h| h.project_id == project_id)
            .map(|h| h.view(now))
            .collect()
    }

    pub fn deliveries(&self) -> Vec<HookDelivery> {
        self.log.iter().map(|r| r.entry.clone()).collect()
    }

    pub fn clear_deliveries(&mut self) {
        self.log.clear();
    }

    /// What resending log entry `seq` sends, `Err` naming what is missing.
    pub fn resend_of(&self, seq: u64) -> Result<Delivery, &'static str> {
        let rec = self
            .log
            .iter()
            .find(|r| r.entry.seq == seq)
            .ok_or("Delivery")?;
        if !self.hooks.contains_key(&rec.entry.hook_id) {
            return Err("Hook");
        }
        Ok(Delivery {
            hook_id: rec.entry.hook_id,
            job_id: rec.entry.job_id,
            build_status: rec.entry.build_status,
            event_uuid: new_uuid(),
            idempotency_key: rec.entry.idempotency_key.clone(),
            body: rec.body.clone(),
            resend_of: Some(seq),
        })
    }

    fn record(&mut self, d: &Delivery, outcome: Outcome) -> HookDelivery {
        self.next_seq += 1;
        let entry = HookDelivery {
            seq: self.next_seq,
            hook_id: d.hook_id,
            job_id: d.job_id,
            build_status: d.build_status,
            event_uuid: d.event_uuid.clone(),
            webhook_uuid: outcome.webhook_uuid,
            idempotency_key: d.idempotency_key.clone(),
            status: outcome.status,
            error: outcome.error,
            duration_ms: outcome.duration_ms,
            resend_of: d.resend_of,
            skipped_disabled: outcome.skipped_disabled,
        };
        self.log.push(LogRec {
            entry: entry.clone(),
            body: d.body.clone(),
        });
        entry
    }
}

/// How one delivery went.
struct Outcome {
    webhook_uuid: String,
    status: Option<u16>,
    error: Option<String>,
    duration_ms: u64,
    skipped_disabled: bool,
}

impl Outcome {
    fn not_sent(error: &str, skipped_disabled: bool) -> Self {
        Self {
            webhook_uuid: new_uuid(),
            status: None,
            error: Some(error.to_string()),
            duration_ms: 0,
            skipped_disabled,
        }
    }
}

fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Queues the Job Hook event of job `job_id`'s current state to every hook of its project
/// with job events. Call after each status change, with the change already applied.
/// Never blocks: only unbounded channel sends happen here.
pub(crate) fn job_changed(db: &Db, job_id: u64) {
    let Some(job) = db.jobs.get(&job_id) else {
        return;
    };
    let targets: Vec<&HookRec> = db
        .webhooks
        .hooks
        .values()
        .filter(|h| h.project_id == job.project_id && h.job_events)
        .collect();
    if targets.is_empty() {
        return;
    }
    let Some(project) = db.projects.get(&job.project_id) else {
        return;
    };
    let pipeline: Vec<&JobRec> = db
        .jobs
        .values()
        .filter(|j| j.pipeline_id == job.pipeline_id)
        .collect();
    let payload = job_hook_payload(&PayloadInput {
        base_url: &db.webhooks.base_url,
        job,
        project,
        runner: job.runner_id.and_then(|id| db.runners.get(&id)),
        pipeline: &pipeline,
        now: SystemTime::now(),
    });
    let body = Bytes::from(serde_json::to_vec(&payload).unwrap_or_default());
    let event_uuid = new_uuid();
    for hook in targets {
        let delivery = Delivery {
            hook_id: hook.id,
            job_id,
            build_status: job.status,
            event_uuid: event_uuid.clone(),
            idempotency_key: new_uuid(),
            body: body.clone(),
            resend_of: None,
        };
        if hook.queue.send(delivery).is_err() {
            tracing::warn!(hook_id = hook.id, "webhook worker is gone; event lost");
        }
    }
}

/// The HTTP client for deliveries: no redirects (GitLab does not follow them for
/// webhooks), no proxy from the environment.
pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap_or_default()
}

/// The worker of one hook: sends its deliveries one after the other until the hook is
/// removed (its queue closes) or the simulator shuts down.
pub(crate) async fn run_worker(st: SimState, mut queue: mpsc::UnboundedReceiver<Delivery>) {
    let client = http_client();
    let shutdown = st.shutdown_token().clone();
    loop {
        let delivery = tokio::select! {
            () = shutdown.cancelled() => return,
            next = queue.recv() => match next {
                Some(d) => d,
                None => return,
            },
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = execute(&st, &client, &delivery) => {}
        }
    }
}

/// Sends one delivery (twice under a `duplicate` fault), updates the hook's failure state
/// and logs every attempt. Returns the log entries made; none when the hook is gone.
pub(crate) async fn execute(
    st: &SimState,
    client: &reqwest::Client,
    d: &Delivery,
) -> Vec<HookDelivery> {
    let (url, token, copies) = {
        let mut db = st.db();
        let Some(hook) = db.webhooks.hooks.get(&d.hook_id) else {
            return Vec::new();
        };
        if !hook.executable(SystemTime::now()) {
            let entry = db
                .webhooks
                .record(d, Outcome::not_sent("hook disabled", true));
            return vec![entry];
        }
        let (url, token) = (hook.url.clone(), hook.token.clone());
        let fault = db.faults.take(
            FaultRoute::WebhookDelivery,
            &[FaultKind::Drop, FaultKind::Duplicate],
        );
        match fault.map(|f| f.kind) {
            Some(FaultKind::Drop) => {
                let entry = db
                    .webhooks
                    .record(d, Outcome::not_sent("dropped by fault", false));
                return vec![entry];
            }
            Some(FaultKind::Duplicate) => (url, token, 2),
            _ => (url, token, 1),
        }
    };
    let timeout = st.config().webhook_timeout;
    let instance = st.url().to_string();
    let mut entries = Vec::with_capacity(copies);
    for _ in 0..copies {
        let webhook_uuid = new_uuid();
        let started = Instant::now();
        let (status, error) = send(
            client,
            &Request {
                url: &url,
                token: token.as_deref(),
                instance: &instance,
                timeout,
                webhook_uuid: &webhook_uuid,
            },
            d,
        )
        .await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Some(error) = &error {
            tracing::info!(hook_id = d.hook_id, job_id = d.job_id, %error, "webhook delivery failed");
        }
        let mut db = st.db();
        if let Some(hook) = db.webhooks.hooks.get_mut(&d.hook_id) {
            if error.is_none() {
                hook.record_success();
            } else {
                hook.record_failure(SystemTime::now());
            }
        }
        entries.push(db.webhooks.record(
            d,
            Outcome {
                webhook_uuid,
                status,
                error,
                duration_ms,
                skipped_disabled: false,
            },
        ));
    }
    entries
}

/// Per-request parts of a delivery.
struct Request<'a> {
    url: &'a str,
    token: Option<&'a str>,
    instance: &'a str,
    timeout: Duration,
    webhook_uuid: &'a str,
}

/// One HTTP attempt: (status, error). Success is a 2xx with the body read in time.
async fn send(
    client: &reqwest::Client,
    r: &Request<'_>,
    d: &Delivery,
) -> (Option<u16>, Option<String>) {
    let mut req = client
        .post(r.url)
        .timeout(r.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::USER_AGENT, user_agent())
        .header("X-Gitlab-Event", "Job Hook")
        .header("X-Gitlab-Webhook-UUID", r.webhook_uuid)
        .header("X-Gitlab-Event-UUID", &d.event_uuid)
        .header("Idempotency-Key", &d.idempotency_key)
        .header("X-Gitlab-Instance", r.instance)
        .body(d.body.clone());
    if let Some(token) = r.token {
        req = req.header("X-Gitlab-Token", token);
    }
    let timeout_error = || format!("timeout after {} ms", r.timeout.as_millis());
    match req.send().await {
        Ok(resp) => {
            let code = resp.status();
            // GitLab reads (and logs) the answer; a body that never ends is a timeout.
            if let Err(e) = resp.bytes().await {
                let error = if e.is_timeout() {
                    timeout_error()
                } else {
                    error_chain(&e)
                };
                return (Some(code.as_u16()), Some(error));
            }
            let error = (!code.is_success()).then(|| format!("HTTP {}", code.as_u16()));
            (Some(code.as_u16()), error)
        }
        Err(e) if e.is_timeout() => (None, Some(timeout_error())),
        Err(e) => (None, Some(error_chain(&e))),
    }
}

/// An error and its sources, `: `-separated (reqwest's own text hides the cause).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Everything [`job_hook_payload`] reads.
pub(crate) struct PayloadInput<'a> {
    pub base_url: &'a str,
    pub job: &'a JobRec,
    pub project: &'a ProjectRec,
    pub runner: Option<&'a RunnerRec>,
    /// All jobs of the job's pipeline (the job included).
    pub pipeline: &'a [&'a JobRec],
    pub now: SystemTime,
}

/// The Job Hook body (Rails' `Gitlab::DataBuilder::Build`), shaped like
/// `fixtures/job_hook.json`. `source_pipeline` is left out: it only exists for
/// downstream pipelines, which the simulator does not have.
pub(crate) fn job_hook_payload(p: &PayloadInput<'_>) -> Value {
    let job = p.job;
    let def = &job.def;
    let project = p.project;
    let base = p.base_url.trim_end_matches('/');
    let web_url = format!("{base}/{}", project.path);
    let http_url = format!("{web_url}.git");
    let host = base
        .parse::<axum::http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string))
        .unwrap_or_else(|| "localhost".to_string());
    let ssh_url = format!("git@{host}:{}.git", project.path);
    // `Namespace#name` is its last segment; `Project#full_name` joins the human names.
    let namespace_name = project
        .namespace
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let full_name = project
        .namespace
        .split('/')
        .chain(std::iter::once(project.name.as_str()))
        .collect::<Vec<_>>()
        .join(" / ");

    let end = job.finished_at.unwrap_or(p.now);
    let duration = job.started_at.map(|s| secs_between(s, end));
    let queued_duration = job
        .enqueued_at
        .map(|q| secs_between(q, job.started_at.unwrap_or(p.now)));

    let runner = p.runner.map(|r| {
        json!({
            "id": r.id,
            "description": r.description,
            "runner_type": if r.is_instance_runner() { "instance_type" } else { "project_type" },
            "active": !r.paused,
            "is_shared": r.is_instance_runner(),
            "tags": r.tags,
        })
    });

    let (author_name, author_email) = match &def.commit {
        Some(c) => {
            let (name, email) = split_author(&c.author);
            (Some(name), Some(email))
        }
        None => (None, None),
    };
    let pipeline_status = pipeline_status(p.pipeline);
    let pipeline_started = p.pipeline.iter().filter_map(|j| j.started_at).min();
    let pipeline_finished = if matches!(
        pipeline_status,
        "success" | "failed" | "canceled" | "skipped"
    ) {
        p.pipeline.iter().filter_map(|j| j.finished_at).max()
    } else {
        None
    };
    let pipeline_duration = pipeline_started
        .zip(pipeline_finished)
        .map(|(s, f)| f.duration_since(s).unwrap_or_default().as_secs());

    const ADMIN_EMAIL: &str = "admin@example.com";
    let avatar = format!(
        "https://www.gravatar.com/avatar/{}?s=80&d=identicon",
        hex(&Sha256::digest(ADMIN_EMAIL.as_bytes()))
    );

    json!({
        "object_kind": "build",
        "ref": def.git_ref,
        "tag": def.ref_type == "tag",
        "before_sha": "0".repeat(40),
        "sha": def.sha,
        "retries_count": 0,
        "build_id": job.id,
        "build_name": def.name,
        "build_stage": def.stage,
        "build_status": job.status.as_str(),
        "build_created_at": iso_millis(job.created_at),
        "build_started_at": job.started_at.map(iso_millis),
        "build_finished_at": job.finished_at.map(iso_millis),
        "build_created_at_iso": rfc3339(job.created_at),
        "build_started_at_iso": job.started_at.map(rfc3339),
        "build_finished_at_iso": job.finished_at.map(rfc3339),
        "build_duration": duration,
        "build_queued_duration": queued_duration,
        "build_allow_failure": job.failure_allowed(),
        "build_failure_reason": job.failure_reason.as_deref().unwrap_or("unknown_failure"),
        "pipeline_id": job.pipeline_id,
        "runner": runner,
        "project_id": project.id,
        "project_name": full_name,
        "user": {
            "id": 1,
            "name": "Administrator",
            "username": "root",
            "avatar_url": avatar,
            "email": ADMIN_EMAIL,
        },
        "commit": {
            "id": job.pipeline_id,
            "name": null,
            "sha": def.sha,
            "message": def.commit.as_ref().map(|c| &c.message),
            "author_name": author_name,
            "author_email": author_email,
            "author_url": author_email.map(|e| format!("mailto:{e}")),
            "status": pipeline_status,
            "duration": pipeline_duration,
            "started_at": pipeline_started.map(iso_millis),
            "finished_at": pipeline_finished.map(iso_millis),
            "started_at_iso": pipeline_started.map(rfc3339),
            "finished_at_iso": pipeline_finished.map(rfc3339),
        },
        "repository": {
            "name": project.name,
            "url": ssh_url,
            "description": "",
            "homepage": web_url,
            "git_ssh_url": ssh_url,
            "git_http_url": http_url,
            "visibility_level": 0,
        },
        "project": {
            "id": project.id,
            "name": project.name,
            "description": "",
            "web_url": web_url,
            "avatar_url": null,
            "git_ssh_url": ssh_url,
            "git_http_url": http_url,
            "namespace": namespace_name,
            "visibility_level": 0,
            "path_with_namespace": project.path,
            "default_branch": def.default_branch,
            "ci_config_path": null,
        },
        "environment": null,
    })
}

/// `Name <email>` (git's `%an <%ae>`) split in two.
fn split_author(author: &str) -> (String, String) {
    match author.rsplit_once(" <") {
        Some((name, rest)) => (name.to_string(), rest.trim_end_matches('>').to_string()),
        None => (author.to_string(), String::new()),
    }
}

/// Rails' `Gitlab::Ci::Status::Composite` over the pipeline's jobs (failures allowed to
/// fail count as `success_with_warnings`).
fn pipeline_status(jobs: &[&JobRec]) -> &'static str {
    let statuses: Vec<&str> = jobs
        .iter()
        .map(|j| {
            if j.status == JobStatus::Failed && j.failure_allowed() {
                "success_with_warnings"
            } else {
                j.status.as_str()
            }
        })
        .collect();
    let only = |set: &[&str]| statuses.iter().all(|s| set.contains(s));
    let any = |s: &str| statuses.contains(&s);
    if statuses.is_empty() {
        "created"
    } else if only(&["skipped"]) {
        "skipped"
    } else if only(&["success", "skipped", "success_with_warnings"]) {
        "success"
    } else if only(&["created", "success_with_warnings"]) {
        "created"
    } else if only(&["canceled", "success", "skipped", "success_with_warnings"]) {
        "canceled"
    } else if only(&["pending", "created", "skipped", "success_with_warnings"]) {
        "pending"
    } else if any("running") || any("pending") || any("created") {
        "running"
    } else if any("canceling") {
        "canceling"
    } else {
        "failed"
    }
}

/// Seconds from `from` to `to` (0 when `to` is earlier), to the microsecond.
fn secs_between(from: SystemTime, to: SystemTime) -> f64 {
    let d = to.duration_since(from).unwrap_or_default();
    (d.as_secs_f64() * 1e6).round() / 1e6
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, as Rails serialises times in JSON.
fn iso_millis(t: SystemTime) -> String {
    let seconds = rfc3339(t);
    let millis = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_millis())
        .unwrap_or(0);
    format!("{}.{millis:03}Z", seconds.trim_end_matches('Z'))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook() -> HookRec {
        let (tx, _rx) = mpsc::unbounded_channel();
        HookRec {
            id: 1,
            project_id: 1,
            url: "http://127.0.0.1:1/".into(),
            token: None,
            job_events: true,
            recent_failures: 0,
            backoff_count: 0,
            disabled_until: None,
            queue: tx,
        }
    }

    #[test]
    fn fourth_failure_disables_temporarily_with_doubling_backoff() {
        let mut h = hook();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        for _ in 0..3 {
            h.record_failure(t0);
            assert!(h.executable(t0));
        }
        h.record_failure(t0);
        assert_eq!(h.recent_failures, 4);
        assert!(!h.executable(t0));
        assert_eq!(h.alert_status(t0), "temporarily_disabled");
        assert_eq!(h.disabled_until, Some(t0 + Duration::from_secs(60)));
        // After the back-off the hook is tried again; the next failure doubles it.
        let t1 = t0 + Duration::from_secs(61);
        assert!(h.executable(t1));
        h.record_failure(t1);
        assert_eq!(h.disabled_until, Some(t1 + Duration::from_secs(120)));
        // A success resets everything.
        h.record_success();
        assert_eq!((h.recent_failures, h.backoff_count), (0, 0));
        assert!(h.executable(t1));
        assert_eq!(h.alert_status(t1), "executable");
    }

    #[test]
    fn forty_failures_disable_permanently() {
        let mut h = hook();
        let mut t = UNIX_EPOCH + Duration::from_secs(1_000_000);
        for _ in 0..39 {
            h.record_failure(t);
            t += Duration::from_secs(25 * 3600);
        }
        assert!(h.executable(t), "39 failures: only temporary back-offs");
        h.record_failure(t);
        assert_eq!(h.alert_status(t), "disabled");
        assert!(!h.executable(t + Duration::from_secs(365 * 24 * 3600)));
        assert_eq!(h.view(t).disabled_until, None);
    }

    #[test]
    fn backoff_doubles_up_to_a_day() {
        assert_eq!(next_backoff(0), Duration::from_secs(60));
        assert_eq!(next_backoff(1), Duration::from_secs(120));
        assert_eq!(next_backoff(5), Duration::from_secs(60 * 32));
        assert_eq!(next_backoff(11), MAX_BACKOFF);
        assert_eq!(next_backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn times_and_authors() {
        let t = UNIX_EPOCH + Duration::from_millis(1_768_046_403_007);
        assert_eq!(iso_millis(t), "2026-01-10T12:00:03.007Z");
        assert_eq!(
            split_author("Test User <test@example.com>"),
            ("Test User".to_string(), "test@example.com".to_string())
        );
        assert_eq!(secs_between(t, t - Duration::from_secs(1)), 0.0);
    }
}
