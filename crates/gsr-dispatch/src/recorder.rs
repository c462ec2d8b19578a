//! [`Recorder`]: the [`JobObserver`] of one runner's receiver. It writes every claim to
//! the store before the job runs (with the job token, sealed, for restart recovery), and
//! every state change after; and it keeps the job counters and gauges (`crate::metric`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use gsr_store::{Job, JobId, JobStatus, NewClaim, RunnerId, Store, StoreError};
use gsr_webhook::{ClaimDecision, ClaimInfo, JobObserver, JobSummary, ObserverFuture};

use crate::metric;

/// Records one runner's claimed jobs in the store.
pub struct Recorder {
    store: Arc<dyn Store>,
    runner: RunnerId,
    replica: String,
    /// GitLab job id → our job id, for the jobs this recorder let run.
    jobs: Mutex<HashMap<u64, JobId>>,
}

impl Recorder {
    /// A recorder for `runner` on `replica`.
    pub fn new(store: Arc<dyn Store>, runner: RunnerId, replica: String) -> Recorder {
        Recorder {
            store,
            runner,
            replica,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<u64, JobId>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record the claim and mark the job running; decide whether it may run.
    pub async fn on_claim(&self, job: &ClaimInfo) -> ClaimDecision {
        let Ok(gitlab_job_id) = i64::try_from(job.job_id) else {
            return ClaimDecision::Fail(format!("job id {} is out of range", job.job_id));
        };
        let claim = NewClaim {
            runner_id: self.runner,
            gitlab_job_id,
            replica: self.replica.clone(),
            queued_duration: job.queued_duration,
        };
        let recorded = match self
            .store
            .record_claim_with_token(claim, job.job_token.clone())
            .await
        {
            Ok(j) => j,
            Err(StoreError::AlreadyClaimed { replica }) => {
                tracing::warn!(
                    job = job.job_id,
                    runner = %self.runner,
                    other_replica = %replica,
                    "job already claimed by another replica; not running it here"
                );
                return ClaimDecision::Skip;
            }
            Err(e) => {
                // Never run a job the store does not know about: it could not be
                // recovered or shown. Fail it in GitLab instead of leaving it hanging.
                tracing::error!(job = job.job_id, runner = %self.runner, error = %e,
                    "could not record the claim; failing the job");
                return ClaimDecision::Fail(
                    "the runner could not record the job (control plane store error)".into(),
                );
            }
        };
        if recorded.status.is_finished() {
            // Our own earlier claim of the same job, already over: GitLab re-sent it.
            tracing::warn!(job = job.job_id, status = %recorded.status,
                "job was already recorded as finished; not running it again");
            return ClaimDecision::Skip;
        }
        if let Err(e) = self
            .store
            .update_job_status(recorded.id, JobStatus::Running, None)
            .await
        {
            tracing::warn!(job = job.job_id, error = %e, "could not mark the job running");
        }
        if self.jobs().insert(job.job_id, recorded.id).is_none() {
            metrics::counter!(metric::JOBS_CLAIMED).increment(1);
            metrics::gauge!(metric::JOBS_RUNNING).increment(1.0);
            if let Some(queued) = job.queued_duration {
                metrics::histogram!(metric::PICKUP_LATENCY).record(queued.as_secs_f64());
            }
        }
        ClaimDecision::Run
    }

    /// Record how the job ended.
    pub async fn on_end(&self, job: &ClaimInfo, summary: &JobSummary) {
        let Some(id) = self.jobs().remove(&job.job_id) else {
            // Failed before a claim was recorded (the store refused it): nothing to update.
            return;
        };
        metrics::gauge!(metric::JOBS_RUNNING).decrement(1.0);
        let status = match summary.status.as_str() {
            "success" => JobStatus::Success,
            "canceled" => JobStatus::Canceled,
            _ => JobStatus::Failed,
        };
        let reason = match status {
            JobStatus::Failed => Some(
                summary
                    .failure_reason
                    .clone()
                    .unwrap_or_else(|| "unknown_failure".into()),
            ),
            _ => None,
        };
        match self.store.update_job_status(id, status, reason).await {
            Ok(_) => metric::finished(status),
            Err(e) => {
                tracing::error!(job = job.job_id, error = %e, "could not record the end of the job")
            }
        }
    }
}

impl JobObserver for Recorder {
    fn claimed<'a>(&'a self, job: &'a ClaimInfo) -> ObserverFuture<'a, ClaimDecision> {
        Box::pin(self.on_claim(job))
    }

    fn ended<'a>(&'a self, job: &'a ClaimInfo, summary: &'a JobSummary) -> ObserverFuture<'a, ()> {
        Box::pin(self.on_end(job, summary))
    }
}

/// The three durations the job history shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Durations {
    /// Waiting in GitLab's queue before we claimed it (when GitLab said).
    pub queue: Option<Duration>,
    /// From our claim to the backend starting it.
    pub pickup: Option<Duration>,
    /// From start to end.
    pub run: Option<Duration>,
}

impl Durations {
    /// The durations of a recorded job (absent where a timestamp is missing).
    pub fn of(job: &Job) -> Durations {
        let between =
            |a: DateTime<Utc>, b: Option<DateTime<Utc>>| b.and_then(|b| (b - a).to_std().ok());
        Durations {
            queue: job.queued_duration,
            pickup: between(job.claimed_at, job.started_at),
            run: job.started_at.and_then(|s| between(s, job.finished_at)),
        }
    }
}
