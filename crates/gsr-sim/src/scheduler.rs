//! Picking a job for a runner (Rails' `Ci::RegisterJobService`).
//!
//! The queue is walked oldest first. A job is offered when its tags are a subset of the
//! runner's (untagged jobs only to `run_untagged` runners), the runner may serve the
//! project, and a `ref_protected` runner only gets jobs on protected refs. Before
//! assignment GitLab runs its pre-assign checks: a job that needs a runner feature this
//! manager did not declare is **dropped** (`failed`, `runner_unsupported`) and the walk
//! continues with the next job, as `process_queue` does.
//!
//! Assignment honours two-phase commit: a manager declaring `two_phase_job_commit` gets
//! the job while it stays `pending` until it acknowledges with `PUT state=running`.

use std::time::SystemTime;

use serde_json::{json, Value};

use crate::payload::{self, PayloadInput};
use crate::state::{Db, SimState};
use crate::types::JobStatus;

/// Picks, assigns and returns the payload of the next job for `runner_id`, if any.
pub(crate) fn pick(
    state: &SimState,
    db: &mut Db,
    runner_id: u64,
    system_id: &str,
) -> Option<Value> {
    let candidates: Vec<u64> = {
        let runner = db.runners.get(&runner_id)?;
        db.jobs
            .values()
            .filter(|j| j.is_queued() && runner.can_take(j))
            .map(|j| j.id)
            .collect()
    };
    let queue_size = candidates.len();
    for (depth, job_id) in candidates.into_iter().enumerate() {
        let missing: Vec<&'static str> = {
            let (Some(runner), Some(job)) = (db.runners.get(&runner_id), db.jobs.get(&job_id))
            else {
                continue;
            };
            job.def
                .required_features
                .iter()
                .copied()
                .filter(|f| !runner.manager_has_feature(system_id, f))
                .collect()
        };
        if let Some(job) = db.jobs.get_mut(&job_id) {
            job.runner_id = Some(runner_id);
            job.manager = Some(system_id.to_string());
        }
        if !missing.is_empty() {
            tracing::info!(
                job_id,
                ?missing,
                "dropping job: runner lacks required features"
            );
            db.finish_job(job_id, JobStatus::Failed, Some("runner_unsupported".into()));
            continue;
        }
        return Some(assign(
            state, db, runner_id, system_id, job_id, queue_size, depth,
        ));
    }
    None
}

fn assign(
    state: &SimState,
    db: &mut Db,
    runner_id: u64,
    system_id: &str,
    job_id: u64,
    queue_size: usize,
    depth: usize,
) -> Value {
    let now = SystemTime::now();
    let two_phase = db
        .runners
        .get(&runner_id)
        .is_some_and(|r| r.manager_has_feature(system_id, "two_phase_job_commit"));
    if let Some(job) = db.jobs.get_mut(&job_id) {
        if two_phase {
            job.awaiting_ack = true;
        } else {
            job.status = JobStatus::Running;
            job.started_at = Some(now);
        }
    }
    let payload = {
        let (Some(job), Some(runner)) = (db.jobs.get(&job_id), db.runners.get(&runner_id)) else {
            return Value::Null;
        };
        let Some(project) = db.projects.get(&job.project_id) else {
            return Value::Null;
        };
        let dependencies = job
            .def
            .dependencies
            .iter()
            .filter_map(|id| db.jobs.get(id))
            .map(|dep| {
                let mut entry = json!({ "id": dep.id, "name": dep.def.name, "token": job.token });
                if let Some(archive) = dep.artifacts.get("archive") {
                    entry["artifacts_file"] =
                        json!({ "filename": archive.filename, "size": archive.size });
                }
                entry
            })
            .collect();
        let running_on_instance_runners = db
            .jobs
            .values()
            .filter(|j| j.project_id == job.project_id && j.status == JobStatus::Running)
            .filter(|j| {
                j.runner_id
                    .and_then(|r| db.runners.get(&r))
                    .is_some_and(|r| r.is_instance_runner())
            })
            .count();
        payload::build(&PayloadInput {
            base_url: state.url(),
            instance_uuid: state.instance_uuid(),
            job,
            project,
            runner,
            dependencies,
            queue_size,
            queue_depth: depth,
            running_on_instance_runners,
            now,
        })
    };
    if let Some(job) = db.jobs.get_mut(&job_id) {
        job.payload = Some(payload.clone());
    }
    if !two_phase {
        db.job_event(job_id);
    }
    payload
}
