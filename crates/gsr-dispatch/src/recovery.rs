//! Restart recovery: tell GitLab about the jobs a previous incarnation of this replica
//! left unfinished, then record them as lost.
//!
//! A job cannot be resumed after its process died (its executor and trace buffer died
//! with it), but it must not stay "running" in GitLab until GitLab's own timeout (an hour
//! by default). The store kept each unfinished job's token, sealed, so recovery can do
//! what the dead worker would have done on a system failure, with that job's token only:
//!
//! 1. `PUT state=running`: the two-phase acknowledgement if the job was claimed but not
//!    yet acknowledged (GitLab refuses trace and a final state before it), a keep-alive
//!    otherwise. 403/404 (or `Job-Status: canceled/failed`) means the job is already over
//!    in GitLab: nothing more to say.
//! 2. One trace line saying why the job ended, appended at GitLab's current trace size
//!    (the first PATCH is sent at offset 0; GitLab answers 416 with `Range: 0-<size>` when
//!    the job already has output, and the line is re-sent at `<size>`). Best effort: a
//!    failure here does not stop the final state.
//! 3. `PUT state=failed, failure_reason=runner_system_failure` (what gitlab-runner reports
//!    for a system failure), repeated on 202 as GitLab asks. No `output` checksum is sent:
//!    this process never saw the whole trace, and GitLab does not require one.
//!
//! Each HTTP call is retried by the GitLab client (5xx, 429, transport errors); the whole
//! sequence is repeated with back-off up to [`ATTEMPTS`] times, and each job's recovery is
//! cut at `DispatchSettings::recovery_timeout`, so recovery always ends. Then the job is
//! recorded `lost` with what happened ([`Recovery`]), which also drops its token.
//! Telling GitLab comes *before* the store write on purpose: if this process dies again
//! meanwhile, the job is still unfinished with its token and the next start retries.

use std::sync::Arc;
use std::time::Duration;

use gsr_gitlab::{Coordinator, JobClient, JobSignal, JobUpdate, PatchResult, UpdateResult};
use gsr_job::SecretString;
use gsr_store::{Job, Recovery, Store, StoreError};
use tokio_util::sync::CancellationToken;

use crate::dispatcher::{DispatchError, LOST_REASON};

/// How often the whole report (ack, trace line, final state) is tried for one job.
pub const ATTEMPTS: u32 = 5;
/// How many jobs are reported to GitLab at once.
const PARALLEL: usize = 8;
/// How often a final state answered 202 ("not finished yet") is repeated in one attempt.
const NOT_FINISHED_REPEATS: u32 = 10;

/// What recovery needs besides the store.
#[derive(Clone)]
pub(crate) struct Reporter {
    pub store: Arc<dyn Store>,
    pub replica: String,
    pub info: gsr_gitlab::RunnerInfo,
    pub retry: Option<gsr_gitlab::RetryPolicy>,
    pub timeout: Duration,
    /// Cancelled by `Dispatcher::abort_all`: give up at once, leaving the jobs unfinished
    /// (with their tokens) for the next start.
    pub abort: CancellationToken,
}

impl Reporter {
    /// Report every job and record it lost; returns the jobs recorded lost. Jobs given up
    /// because of an abort are left as they are.
    pub async fn run(&self, jobs: Vec<Job>) -> Result<Vec<Job>, DispatchError> {
        let permits = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let mut set = tokio::task::JoinSet::new();
        for job in jobs {
            let me = self.clone();
            let permits = permits.clone();
            set.spawn(async move {
                let _permit = permits.acquire_owned().await;
                me.recover_one(job).await
            });
        }
        let mut lost = Vec::new();
        let mut first_error = None;
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(Some(job))) => lost.push(job),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "recovery could not record a lost job");
                    first_error.get_or_insert(e);
                }
                Err(e) => tracing::error!(error = %e, "a recovery task failed"),
            }
        }
        lost.sort_by_key(|j| (j.claimed_at, j.id));
        match first_error {
            Some(e) => Err(e),
            None => Ok(lost),
        }
    }

    async fn recover_one(&self, job: Job) -> Result<Option<Job>, DispatchError> {
        let token = self.store.job_token(job.id).await?;
        let outcome = match token {
            None => Recovery::NoToken,
            Some(token) => {
                let runner = self.store.runner_by_id(job.runner_id).await?;
                let report = self.report(&runner.gitlab_url, &job, token);
                tokio::select! {
                    r = tokio::time::timeout(self.timeout, report) => {
                        r.unwrap_or(Recovery::Unreachable)
                    }
                    _ = self.abort.cancelled() => {
                        tracing::warn!(gitlab_job_id = job.gitlab_job_id,
                            "recovery aborted; the job stays unfinished for the next start");
                        return Ok(None);
                    }
                }
            }
        };
        tracing::warn!(
            replica = %self.replica,
            runner = %job.runner_id,
            gitlab_job_id = job.gitlab_job_id,
            status = %job.status,
            recovery = %outcome,
            "job was unfinished when this replica stopped; recorded as lost"
        );
        match self.store.mark_lost(job.id, LOST_REASON, outcome).await {
            Ok(j) => {
                crate::metric::finished(gsr_store::JobStatus::Lost);
                Ok(Some(j))
            }
            // Finished meanwhile (should not happen: only this replica writes it).
            Err(StoreError::InvalidTransition { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Tell GitLab the job failed; retried with back-off up to [`ATTEMPTS`] times.
    async fn report(&self, gitlab_url: &str, job: &Job, token: SecretString) -> Recovery {
        let Ok(gitlab_job_id) = u64::try_from(job.gitlab_job_id) else {
            return Recovery::Unreachable;
        };
        let mut coordinator = match Coordinator::new(gitlab_url, &self.info) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "recovery: unusable GitLab URL");
                return Recovery::Unreachable;
            }
        };
        if let Some(retry) = self.retry {
            coordinator = coordinator.with_retry(retry);
        }
        let backoff = coordinator.retry_policy();
        let client = coordinator.job_client(gitlab_job_id, token);
        let line = lost_line(&self.replica);
        for attempt in 0..ATTEMPTS {
            match tell(&client, &line).await {
                Ok(r) => return r,
                Err(why) if attempt + 1 < ATTEMPTS => {
                    let wait = backoff.backoff(attempt);
                    tracing::warn!(gitlab_job_id, error = %why, ?wait,
                        "recovery: could not report the lost job to GitLab; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(why) => {
                    tracing::error!(gitlab_job_id, error = %why,
                        "recovery: giving up reporting the lost job; GitLab will time it out");
                }
            }
        }
        Recovery::Unreachable
    }
}

/// The trace line recovery appends.
pub(crate) fn lost_line(replica: &str) -> String {
    format!(
        "\r\n\x1b[31;1mERROR: gsr serve replica {replica:?} restarted while this job ran; \
         the job was aborted (runner_system_failure)\x1b[0;m\r\n"
    )
}

/// One report attempt. `Err` = worth another attempt.
async fn tell(client: &JobClient, line: &str) -> Result<Recovery, String> {
    let ack = client.update(&JobUpdate::running(None)).await;
    match ack.result {
        UpdateResult::Gone => return Ok(Recovery::AlreadyOver),
        _ if ack.signal == JobSignal::Abort => return Ok(Recovery::AlreadyOver),
        UpdateResult::Failed(e) => return Err(e),
        // Refused (e.g. 409): the final state below says what GitLab thinks.
        _ => {}
    }
    append(client, line.as_bytes()).await;
    let update = JobUpdate {
        state: "failed",
        failure_reason: Some("runner_system_failure".into()),
        exit_code: None,
        output: None,
    };
    for _ in 0..NOT_FINISHED_REPEATS {
        let reply = client.update(&update).await;
        match reply.result {
            UpdateResult::Accepted => return Ok(Recovery::Reported),
            UpdateResult::Gone => return Ok(Recovery::AlreadyOver),
            UpdateResult::NotFinished | UpdateResult::TraceInvalid => {
                let wait = reply
                    .interval
                    .unwrap_or(Duration::from_secs(1))
                    .min(Duration::from_secs(10));
                tokio::time::sleep(wait).await;
            }
            UpdateResult::Failed(e) | UpdateResult::Rejected(e) => return Err(e),
        }
    }
    Err("GitLab kept answering 202 to the final state".into())
}

/// Append `line` at the end of the job's trace in GitLab (best effort).
async fn append(client: &JobClient, line: &[u8]) {
    let mut offset = 0;
    // The first answer may be a 416 with the current size; a second 416 means the trace
    // grew meanwhile (it cannot: its writer is dead) — then give up.
    for _ in 0..3 {
        let reply = client.patch_trace(offset, line.to_vec(), false).await;
        match reply.result {
            PatchResult::Accepted { .. } => return,
            PatchResult::RangeMismatch { offset: o } => offset = o,
            other => {
                tracing::warn!(job = client.job_id(), result = ?other,
                    "recovery: could not append the trace line");
                return;
            }
        }
    }
}
