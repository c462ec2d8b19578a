//! `PUT /jobs/:id`: two-phase commit, keep-alives, final states, cancellation.

use gsr_sim::JobStatus;
use reqwest::StatusCode;
use serde_json::json;

use crate::common::{header, spec, Sim};

#[tokio::test]
async fn two_phase_commit_keeps_the_job_pending_until_acknowledged() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;
    let runner = sim.runner(&[], &["two_phase_job_commit"]).await;
    let (id, token) = sim.job(spec(project)).await;
    runner.pick().await;
    assert_eq!(
        sim.admin.job(id).await.expect("job").status,
        JobStatus::Pending
    );

    // No trace before the acknowledgement.
    let early = sim.patch_trace(id, &token, 0, b"too early\n").await;
    assert_eq!(early.status(), StatusCode::FORBIDDEN);
    assert_eq!(header(&early, "job-status"), "pending");

    // A final state is not a valid answer while waiting.
    let premature = sim.put_job(id, &token, json!({"state": "success"})).await;
    assert_eq!(premature.status(), StatusCode::BAD_REQUEST);

    let keepalive = sim.put_job(id, &token, json!({"state": "pending"})).await;
    assert_eq!(keepalive.status(), StatusCode::OK);
    assert_eq!(header(&keepalive, "job-status"), "pending");

    let ack = sim.put_job(id, &token, json!({"state": "running"})).await;
    assert_eq!(ack.status(), StatusCode::OK);
    assert_eq!(header(&ack, "job-status"), "running");
    assert_eq!(ack.text().await.expect("body"), "200");

    let job = sim.admin.job(id).await.expect("job");
    assert_eq!(job.status, JobStatus::Running);
    assert!(job.acknowledged);
    assert_eq!(job.pending_keepalive_count, 1);
    assert_eq!(job.runner_system_id.as_deref(), Some("s_0123456789ab"));

    let trace = sim.patch_trace(id, &token, 0, b"now\n").await;
    assert_eq!(trace.status(), StatusCode::ACCEPTED);

    // `pending` is not a keep-alive for a running job.
    let stale = sim.put_job(id, &token, json!({"state": "pending"})).await;
    assert_eq!(stale.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn without_two_phase_the_job_runs_on_pickup() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;
    let runner = sim.runner(&[], &[]).await;
    let (id, token) = sim.job(spec(project)).await;
    runner.pick().await;
    let job = sim.admin.job(id).await.expect("job");
    assert_eq!(job.status, JobStatus::Running);
    assert!(!job.acknowledged);
    assert_eq!(job.runner_id, Some(runner.id));
    assert_eq!(
        sim.patch_trace(id, &token, 0, b"x").await.status(),
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn job_updates_are_authenticated_and_validated() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;
    let runner = sim.runner(&[], &[]).await;
    let (id, token) = sim.job(spec(project)).await;
    runner.pick().await;
    let url = sim.api(&format!("jobs/{id}"));

    // Grape requires `token` in the body; the header alone is not enough.
    let header_only = sim
        .http
        .put(&url)
        .header("JOB-TOKEN", &token)
        .json(&json!({"state": "running"}))
        .send()
        .await
        .expect("send");
    assert_eq!(header_only.status(), StatusCode::BAD_REQUEST);

    let wrong = sim
        .put_job(id, "glcbt-wrongwrongwrongwron", json!({"state": "running"}))
        .await;
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    assert!(
        wrong.headers().get("job-status").is_none(),
        "no job details for a bad token"
    );

    let unknown = sim
        .put_job(id + 1000, &token, json!({"state": "running"}))
        .await;
    assert_eq!(unknown.status(), StatusCode::FORBIDDEN);

    let bogus_state = sim.put_job(id, &token, json!({"state": "done"})).await;
    assert_eq!(bogus_state.status(), StatusCode::BAD_REQUEST);
    assert_eq!(header(&bogus_state, "job-status"), "running");

    let bad_id = sim
        .http
        .put(sim.api("jobs/abc"))
        .json(&json!({"token": token, "state": "running"}))
        .send()
        .await
        .expect("send");
    assert_eq!(bad_id.status(), StatusCode::BAD_REQUEST);

    let touch = sim
        .put_job(
            id,
            &token,
            json!({"state": "running", "output": {"checksum": "crc32:00000000", "bytesize": 0}}),
        )
        .await;
    assert_eq!(touch.status(), StatusCode::OK);
    assert_eq!(header(&touch, "job-status"), "running");
    let job = sim.admin.job(id).await.expect("job");
    assert_eq!(job.keepalive_count, 1);
    assert_eq!(job.reported_checksum.as_deref(), Some("crc32:00000000"));
}

#[tokio::test]
async fn final_updates_record_outcome_and_end_the_token() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;
    let runner = sim.runner(&[], &[]).await;
    let (id, token) = sim.job(spec(project)).await;
    runner.pick().await;
    let trace = b"line one\nline two\n";
    assert_eq!(
        sim.patch_trace(id, &token, 0, trace).await.status(),
        StatusCode::ACCEPTED
    );
    let checksum = format!("crc32:{:08x}", crc32fast::hash(trace));

    let done = sim
        .put_job(
            id,
            &token,
            json!({
                "state": "failed",
                "failure_reason": "some_new_reason",
                "exit_code": 3,
                "checksum": checksum,
                "output": {"checksum": checksum, "bytesize": trace.len()},
            }),
        )
        .await;
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(header(&done, "job-status"), "failed");

    let job = sim.admin.job(id).await.expect("job");
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.failure_reason.as_deref(), Some("unknown_failure"));
    assert_eq!(job.exit_code, Some(3));
    assert_eq!(job.reported_checksum.as_deref(), Some(checksum.as_str()));
    assert_eq!(job.trace_checksum, checksum);
    assert_eq!(job.reported_bytesize, Some(trace.len() as u64));
    assert_eq!(job.final_update_attempts, 1);

    let again = sim.put_job(id, &token, json!({"state": "success"})).await;
    assert_eq!(again.status(), StatusCode::FORBIDDEN);
    assert_eq!(header(&again, "job-status"), "failed");
    let late_trace = sim.patch_trace(id, &token, trace.len(), b"more").await;
    assert_eq!(late_trace.status(), StatusCode::FORBIDDEN);
    assert_eq!(header(&late_trace, "job-status"), "failed");
}

#[tokio::test]
async fn allowed_exit_codes_mark_the_failure_allowed() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;
    let runner = sim.runner(&[], &["return_exit_code"]).await;
    let (id, token) = sim
        .job(gsr_sim::JobSpecInput {
            allow_failure_exit_codes: vec![42],
            ..spec(project)
        })
        .await;
    runner.pick().await;
    sim.put_job(
        id,
        &token,
        json!({"state": "failed", "failure_reason": "script_failure", "exit_code": 42}),
    )
    .await;
    let job = sim.admin.job(id).await.expect("job");
    assert_eq!(job.failure_reason.as_deref(), Some("script_failure"));
    assert!(job.allow_failure);
}

#[tokio::test]
async fn cancel_is_graceful_only_for_runners_that_declare_it() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;

    let graceful = sim.runner(&[], &["cancel_gracefully"]).await;
    let (id, token) = sim.job(spec(project)).await;
    graceful.pick().await;
    let view = sim.admin.cancel(id).await.expect("cancel");
    assert_eq!(view.status, JobStatus::Canceling);
    let patch = sim.patch_trace(id, &token, 0, b"cleaning up\n").await;
    assert_eq!(patch.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&patch, "job-status"), "canceling");
    let touch = sim.put_job(id, &token, json!({"state": "running"})).await;
    assert_eq!(header(&touch, "job-status"), "canceling");
    let fin = sim
        .put_job(
            id,
            &token,
            json!({"state": "failed", "failure_reason": "unknown_failure"}),
        )
        .await;
    assert_eq!(fin.status(), StatusCode::OK);
    assert_eq!(header(&fin, "job-status"), "canceled");
    assert_eq!(
        sim.admin.job(id).await.expect("job").status,
        JobStatus::Canceled
    );

    let hard = sim.runner(&[], &[]).await;
    let (id, token) = sim.job(spec(project)).await;
    hard.pick().await;
    assert_eq!(
        sim.admin.cancel(id).await.expect("cancel").status,
        JobStatus::Canceled
    );
    let put = sim.put_job(id, &token, json!({"state": "running"})).await;
    assert_eq!(put.status(), StatusCode::FORBIDDEN);
    assert_eq!(header(&put, "job-status"), "canceled");

    let (pending, _) = sim.job(spec(project)).await;
    assert_eq!(
        sim.admin.cancel(pending).await.expect("cancel").status,
        JobStatus::Canceled
    );
    assert!(
        sim.admin.cancel(pending).await.is_err(),
        "finished jobs are not cancelable"
    );

    let waited = sim
        .admin
        .wait_for_status(
            id,
            &[JobStatus::Canceled],
            std::time::Duration::from_secs(1),
        )
        .await
        .expect("wait");
    assert_eq!(waited.id, id);
    assert!(sim
        .admin
        .wait_for_status(id, &["success"], std::time::Duration::from_millis(200))
        .await
        .is_err());
}
