//! The simulator's memory: runners, projects, jobs, faults and the request log.
//!
//! Everything sits in one [`Db`] behind a `std::sync::Mutex`. Handlers lock it for short,
//! synchronous sections and never across an `.await`; the only waiting anybody does
//! (Workhorse long polling) goes through a per-runner `tokio::sync::watch` channel that
//! carries the runner's queue value, so a tick wakes exactly the pollers it concerns.
//!
//! The job state machine (finishing a job, releasing later-stage jobs whose dependencies
//! are done, waking runners that can take a newly pending job) lives here too, because the
//! runner API, the scheduler and the admin API all drive it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::accounts::Accounts;
use crate::config::SimConfig;
use crate::faults::FaultQueue;
use crate::request_log::RequestLog;
use crate::spec::JobDef;
use crate::types::{ArtifactView, JobStatus, JobView, ManagerView, RunnerView};
use crate::util::{random_alnum, random_hex, rfc3339};
use crate::webhooks::{self, Webhooks};

/// Shared handle on one simulator instance (cheap to clone). Build one with
/// [`SimState::new`] and hand it to [`crate::app`].
#[derive(Clone)]
pub struct SimState {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: SimConfig,
    url: String,
    instance_uuid: String,
    db: Mutex<Db>,
    shutdown: CancellationToken,
}

impl SimState {
    /// Creates the state and the data directories. `url` is the external base URL
    /// (`http://host:port`, no trailing slash) used in payloads and clone URLs.
    pub fn new(cfg: SimConfig, url: impl Into<String>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(cfg.data_dir.join("repos"))?;
        std::fs::create_dir_all(cfg.data_dir.join("artifacts"))?;
        let url = url.into().trim_end_matches('/').to_string();
        let mut db = Db::default();
        db.webhooks.base_url.clone_from(&url);
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                url,
                instance_uuid: uuid::Uuid::new_v4().to_string(),
                db: Mutex::new(db),
                shutdown: CancellationToken::new(),
            }),
        })
    }

    /// External base URL.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The configuration this instance runs with.
    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    pub(crate) fn instance_uuid(&self) -> &str {
        &self.inner.instance_uuid
    }

    /// Cancelled when the server shuts down; long polls return early on it.
    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Locks the database. A poisoned lock is taken over: the data stays usable for tests.
    pub(crate) fn db(&self) -> MutexGuard<'_, Db> {
        self.inner.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn repos_dir(&self) -> PathBuf {
        self.inner.cfg.data_dir.join("repos")
    }

    pub(crate) fn artifacts_dir(&self) -> PathBuf {
        self.inner.cfg.data_dir.join("artifacts")
    }

    /// Bare repository of a project path (`group/project` -> `repos/group/project.git`).
    pub(crate) fn repo_dir(&self, project_path: &str) -> PathBuf {
        self.repos_dir().join(format!("{project_path}.git"))
    }
}

/// A runner (one authentication token, any number of managers).
pub(crate) struct RunnerRec {
    pub id: u64,
    pub token: String,
    pub description: String,
    pub tags: Vec<String>,
    pub run_untagged: bool,
    pub paused: bool,
    pub access_level: String,
    pub maximum_timeout: Option<u64>,
    pub project_ids: Option<Vec<u64>>,
    pub created_via: &'static str,
    /// `locked` (project runners only; stored and shown, no scheduling effect here).
    pub locked: bool,
    pub maintenance_note: String,
    /// The user who created it through `POST /user/runners`.
    pub creator: Option<u64>,
    pub created_at: SystemTime,
    pub managers: BTreeMap<String, ManagerRec>,
    /// The Workhorse/Redis "queue value"; a new random value is a tick.
    pub queue: watch::Sender<String>,
}

/// One runner manager, keyed by `system_id`.
pub(crate) struct ManagerRec {
    pub info: Option<Value>,
    pub features: Map<String, Value>,
    pub requests: u64,
    pub contacted_at: SystemTime,
}

impl RunnerRec {
    pub fn new(id: u64, token: String, created_via: &'static str) -> Self {
        Self {
            id,
            token,
            description: String::new(),
            tags: Vec::new(),
            run_untagged: true,
            paused: false,
            access_level: "not_protected".into(),
            maximum_timeout: None,
            project_ids: None,
            created_via,
            locked: false,
            maintenance_note: String::new(),
            creator: None,
            created_at: SystemTime::now(),
            managers: BTreeMap::new(),
            queue: watch::Sender::new(random_hex(16)),
        }
    }

    /// Rails' `tick_runner_queue`.
    pub fn tick(&self) {
        self.queue.send_replace(random_hex(16));
    }

    pub fn queue_value(&self) -> String {
        self.queue.borrow().clone()
    }

    pub fn is_instance_runner(&self) -> bool {
        self.project_ids.is_none()
    }

    /// Whether GitLab's queue would offer `job` to this runner at all.
    pub fn can_take(&self, job: &JobRec) -> bool {
        let tags_ok = if job.def.tags.is_empty() {
            self.run_untagged
        } else {
            job.def.tags.iter().all(|t| self.tags.contains(t))
        };
        let project_ok = self
            .project_ids
            .as_ref()
            .is_none_or(|ids| ids.contains(&job.project_id));
        let protection_ok = self.access_level != "ref_protected" || job.def.protected;
        tags_ok && project_ok && protection_ok
    }

    /// Records an authenticated contact of `system_id` (Rails' `ensure_manager` +
    /// `heartbeat`). Features are replaced only when the request carried `info.features`.
    pub fn touch_manager(&mut self, system_id: &str, info: Option<&Value>) {
        let manager = self
            .managers
            .entry(system_id.to_string())
            .or_insert_with(|| ManagerRec {
                info: None,
                features: Map::new(),
                requests: 0,
                contacted_at: SystemTime::now(),
            });
        manager.requests += 1;
        manager.contacted_at = SystemTime::now();
        if let Some(info) = info {
            manager.info = Some(info.clone());
            if let Some(features) = info.get("features").and_then(Value::as_object) {
                manager.features = features.clone();
            }
        }
    }

    pub fn manager_has_feature(&self, system_id: &str, feature: &str) -> bool {
        self.managers
            .get(system_id)
            .and_then(|m| m.features.get(feature))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    pub fn view(&self) -> RunnerView {
        RunnerView {
            id: self.id,
            description: self.description.clone(),
            tags: self.tags.clone(),
            run_untagged: self.run_untagged,
            paused: self.paused,
            access_level: self.access_level.clone(),
            maximum_timeout: self.maximum_timeout,
            project_ids: self.project_ids.clone(),
            created_via: self.created_via.to_string(),
            managers: self
                .managers
                .iter()
                .map(|(system_id, m)| ManagerView {
                    system_id: system_id.clone(),
                    info: m.info.clone(),
                    features: m.features.clone(),
                    requests: m.requests,
                    contacted_at: rfc3339(m.contacted_at),
                })
                .collect(),
        }
    }
}

/// A project and its bare repository.
pub(crate) struct ProjectRec {
    pub id: u64,
    pub path: String,
    pub namespace: String,
    pub name: String,
    pub namespace_id: u64,
    pub root_namespace_id: u64,
    pub pipelines: u64,
}

/// A stored artifact file.
pub(crate) struct ArtifactRec {
    pub artifact_format: String,
    pub filename: String,
    pub size: u64,
    pub expire_in: Option<String>,
    pub sha256: Vec<u8>,
    pub path: PathBuf,
}

/// A job and everything the runner told us about it.
pub(crate) struct JobRec {
    pub id: u64,
    pub token: String,
    pub project_id: u64,
    pub pipeline_id: u64,
    pub pipeline_iid: u64,
    pub pipeline_ref_created: bool,
    pub def: JobDef,
    pub status: JobStatus,
    pub failure_reason: Option<String>,
    pub exit_code: Option<i64>,
    pub runner_id: Option<u64>,
    pub manager: Option<String>,
    /// Two-phase commit: assigned, still `pending`, waiting for `PUT state=running`.
    pub awaiting_ack: bool,
    pub acknowledged: bool,
    pub created_at: SystemTime,
    pub queued_at: SystemTime,
    /// When the job last became `pending` (Rails' `queued_at`); `None` while never queued.
    pub enqueued_at: Option<SystemTime>,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub trace: Vec<u8>,
    pub reported_checksum: Option<String>,
    pub reported_bytesize: Option<u64>,
    pub final_update_attempts: u32,
    pub keepalive_count: u32,
    pub pending_keepalive_count: u32,
    pub artifacts: BTreeMap<String, ArtifactRec>,
    pub payload: Option<Value>,
}

impl JobRec {
    /// Whether the job token currently authenticates (assigned and not finished).
    pub fn token_is_live(&self) -> bool {
        self.awaiting_ack || matches!(self.status, JobStatus::Running | JobStatus::Canceling)
    }

    /// Running or canceling on its runner (trace and artifacts are accepted).
    pub fn is_processing(&self) -> bool {
        !self.awaiting_ack && matches!(self.status, JobStatus::Running | JobStatus::Canceling)
    }

    /// Waiting in the queue for a runner.
    pub fn is_queued(&self) -> bool {
        self.status == JobStatus::Pending && self.runner_id.is_none()
    }

    /// `allow_failure`, or a failure with one of `allow_failure:exit_codes`.
    pub fn failure_allowed(&self) -> bool {
        self.def.allow_failure
            || self
                .exit_code
                .is_some_and(|c| self.def.allow_failure_exit_codes.contains(&c))
    }

    pub fn trace_checksum(&self) -> String {
        format!("crc32:{:08x}", crc32fast::hash(&self.trace))
    }

    pub fn view(&self) -> JobView {
        JobView {
            id: self.id,
            name: self.def.name.clone(),
            project_id: self.project_id,
            pipeline_id: self.pipeline_id,
            status: self.status,
            failure_reason: self.failure_reason.clone(),
            exit_code: self.exit_code,
            runner_id: self.runner_id,
            runner_system_id: self.manager.clone(),
            trace_size: self.trace.len() as u64,
            trace_checksum: self.trace_checksum(),
            reported_checksum: self.reported_checksum.clone(),
            reported_bytesize: self.reported_bytesize,
            final_update_attempts: self.final_update_attempts,
            keepalive_count: self.keepalive_count,
            pending_keepalive_count: self.pending_keepalive_count,
            acknowledged: self.acknowledged,
            allow_failure: self.failure_allowed(),
            artifacts: self
                .artifacts
                .iter()
                .map(|(t, a)| ArtifactView {
                    artifact_type: t.clone(),
                    artifact_format: a.artifact_format.clone(),
                    filename: a.filename.clone(),
                    size: a.size,
                    expire_in: a.expire_in.clone(),
                })
                .collect(),
        }
    }
}

/// All mutable simulator data.
pub(crate) struct Db {
    next_runner: u64,
    next_project: u64,
    next_namespace: u64,
    next_pipeline: u64,
    next_job: u64,
    pub runners: BTreeMap<u64, RunnerRec>,
    pub projects: BTreeMap<u64, ProjectRec>,
    pub namespaces: BTreeMap<String, u64>,
    pub jobs: BTreeMap<u64, JobRec>,
    pub faults: FaultQueue,
    pub requests: RequestLog,
    pub webhooks: Webhooks,
    pub accounts: Accounts,
}

impl Default for Db {
    /// Id sequences start far apart, so a client that sends a pipeline id where a job
    /// id belongs (or similar) fails loudly instead of hitting a lookalike.
    fn default() -> Self {
        Self {
            next_runner: 40,
            next_project: 300,
            next_namespace: 20,
            next_pipeline: 2000,
            next_job: 8000,
            runners: BTreeMap::new(),
            projects: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            jobs: BTreeMap::new(),
            faults: FaultQueue::default(),
            requests: RequestLog::default(),
            webhooks: Webhooks::default(),
            accounts: Accounts::default(),
        }
    }
}

impl Db {
    pub fn next_runner_id(&mut self) -> u64 {
        self.next_runner += 1;
        self.next_runner
    }

    pub fn next_project_id(&mut self) -> u64 {
        self.next_project += 1;
        self.next_project
    }

    /// Id of the namespace `path`, creating it on first use.
    pub fn namespace_id(&mut self, path: &str) -> u64 {
        if let Some(id) = self.namespaces.get(path) {
            return *id;
        }
        self.next_namespace += 1;
        let id = self.next_namespace;
        self.namespaces.insert(path.to_string(), id);
        id
    }

    pub fn next_pipeline_id(&mut self) -> u64 {
        self.next_pipeline += 1;
        self.next_pipeline
    }

    pub fn next_job_id(&mut self) -> u64 {
        self.next_job += 1;
        self.next_job
    }

    /// A fresh job token: `glcbt-` and 20 alphanumerics.
    pub fn new_job_token(&self) -> String {
        format!("glcbt-{}", random_alnum(20))
    }

    pub fn runner_by_token(&self, token: &str) -> Option<&RunnerRec> {
        self.runners.values().find(|r| r.token == token)
    }

    pub fn runner_by_token_mut(&mut self, token: &str) -> Option<&mut RunnerRec> {
        self.runners.values_mut().find(|r| r.token == token)
    }

    pub fn job_by_token(&self, token: &str) -> Option<&JobRec> {
        self.jobs.values().find(|j| j.token == token)
    }

    /// Wakes every runner whose queue would offer `job_id` (a job became pending).
    pub fn tick_runners_for(&self, job_id: u64) {
        if let Some(job) = self.jobs.get(&job_id) {
            for runner in self.runners.values().filter(|r| r.can_take(job)) {
                runner.tick();
            }
        }
    }

    /// A job's status changed (the change already applied): queues its Job Hook
    /// deliveries. Every status change must end here, once.
    pub fn job_event(&self, job_id: u64) {
        webhooks::job_changed(self, job_id);
    }

    /// Moves a `created` job to `pending` (Rails' `enqueue`), emitting the event; the
    /// caller wakes runners.
    pub fn enqueue_job(&mut self, id: u64) {
        if let Some(job) = self.jobs.get_mut(&id) {
            let now = SystemTime::now();
            job.status = JobStatus::Pending;
            job.queued_at = now;
            job.enqueued_at = Some(now);
        }
        self.job_event(id);
    }

    /// Moves a job to a final status and releases later-stage jobs that waited for it.
    pub fn finish_job(&mut self, id: u64, status: JobStatus, failure_reason: Option<String>) {
        if let Some(job) = self.jobs.get_mut(&id) {
            job.status = status;
            job.failure_reason = failure_reason;
            job.awaiting_ack = false;
            job.finished_at = Some(SystemTime::now());
        }
        self.job_event(id);
        self.settle_created_jobs();
    }

    /// `created` jobs whose dependencies all finished become `pending` (all succeeded, or
    /// failed with failure allowed) or `skipped` (anything else). Dependencies always have
    /// lower ids, so one pass in id order also settles chains.
    pub fn settle_created_jobs(&mut self) {
        let created: Vec<u64> = self
            .jobs
            .values()
            .filter(|j| j.status == JobStatus::Created)
            .map(|j| j.id)
            .collect();
        for id in created {
            let Some(deps) = self.jobs.get(&id).map(|j| j.def.dependencies.clone()) else {
                continue;
            };
            let mut all_finished = true;
            let mut all_ok = true;
            for dep in deps.iter().filter_map(|d| self.jobs.get(d)) {
                all_finished &= dep.status.is_finished();
                all_ok &= dep.status == JobStatus::Success
                    || (dep.status == JobStatus::Failed && dep.failure_allowed());
            }
            if !all_finished {
                continue;
            }
            if all_ok {
                self.enqueue_job(id);
                self.tick_runners_for(id);
            } else {
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.status = JobStatus::Skipped;
                }
                self.job_event(id);
            }
        }
    }
}
