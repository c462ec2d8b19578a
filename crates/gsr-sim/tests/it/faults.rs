//! Injected faults: status, delay, drop, trace_416, final_202.

use std::time::{Duration, Instant};

use gsr_sim::{Fault, FaultRoute, JobStatus};
use reqwest::StatusCode;
use serde_json::json;

use crate::common::{header, spec, Sim};

#[tokio::test]
async fn status_faults_answer_without_processing() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;
    let runner = sim.runner(&[], &[]).await;
    let (id, token) = sim.job(spec(project)).await;
    sim.admin
        .fault(Fault::status(FaultRoute::JobsRequest, 429, 2).with_retry_after(60))
        .await
        .expect("fault");

    for _ in 0..2 {
        let resp = runner.poll(None).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&resp, "retry-after"), "60");
    }
    assert_eq!(
        sim.admin.job(id).await.expect("job").status,
        JobStatus::Pending
    );
    assert_eq!(runner.pick().await["id"], json!(id), "fault used up");

    let log = sim.admin.requests().await.expect("log");
    let faulted: Vec<_> = log
        .iter()
        .filter(|e| e.fault.as_deref() == Some("status 429"))
        .collect();
    assert_eq!(faulted.len(), 2);

    // Queued faults can be cleared.
    sim.admin
        .fault(Fault::status(FaultRoute::UpdateJob, 503, 5))
        .await
        .expect("fault");
    sim.admin.clear_faults().await.expect("clear");
    let touch = sim.put_job(id, &token, json!({"state": "running"})).await;
    assert_eq!(touch.status(), StatusCode::OK);
}

#[tokio::test]
async fn trace_416_fault_reports_the_real_range() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;
    let runner = sim.runner(&[], &[]).await;
    let (id, token) = sim.job(spec(project)).await;
    runner.pick().await;
    assert_eq!(
        sim.patch_trace(id, &token, 0, b"0123456789").await.status(),
        StatusCode::ACCEPTED
    );

    sim.admin.fault(Fault::trace_416(1)).await.expect("fault");
    let refused = sim.patch_trace(id, &token, 10, b"abc").await;
    assert_eq!(refused.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&refused, "range"), "0-10");
    assert_eq!(sim.admin.trace(id).await.expect("trace"), b"0123456789");

    let resent = sim.patch_trace(id, &token, 10, b"abc").await;
    assert_eq!(resent.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&resent, "range"), "0-13");
}

#[tokio::test]
async fn final_202_fault_delays_the_final_update() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;
    let runner = sim.runner(&[], &[]).await;
    let (id, token) = sim.job(spec(project)).await;
    runner.pick().await;
    sim.admin.fault(Fault::final_202(1)).await.expect("fault");

    // Keep-alives do not consume it.
    let touch = sim.put_job(id, &token, json!({"state": "running"})).await;
    assert_eq!(touch.status(), StatusCode::OK);

    let first = sim.put_job(id, &token, json!({"state": "success"})).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&first, "x-gitlab-trace-update-interval"), "1");
    assert_eq!(header(&first, "job-status"), "running");
    assert_eq!(
        sim.admin.job(id).await.expect("job").status,
        JobStatus::Running
    );

    let second = sim.put_job(id, &token, json!({"state": "success"})).await;
    assert_eq!(second.status(), StatusCode::OK);
    let job = sim.admin.job(id).await.expect("job");
    assert_eq!(job.status, JobStatus::Success);
    assert_eq!(job.final_update_attempts, 2);
}

#[tokio::test]
async fn drop_fault_closes_the_connection_without_a_response() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;
    let runner = sim.runner(&[], &[]).await;
    let (id, token) = sim.job(spec(project)).await;
    runner.pick().await;
    sim.admin
        .fault(Fault::drop_connection(FaultRoute::PatchTrace, 1))
        .await
        .expect("fault");

    let err = sim
        .http
        .patch(sim.api(&format!("jobs/{id}/trace")))
        .header("JOB-TOKEN", &token)
        .header("Content-Type", "text/plain")
        .header("Content-Range", "0-4")
        .body("hello")
        .send()
        .await
        .expect_err("the connection must be dropped");
    assert!(!err.is_status(), "no HTTP status may arrive: {err:?}");
    assert!(
        sim.admin.trace(id).await.expect("trace").is_empty(),
        "nothing processed"
    );

    // The next request works again.
    assert_eq!(
        sim.patch_trace(id, &token, 0, b"hello").await.status(),
        StatusCode::ACCEPTED
    );
    let log = sim.admin.requests().await.expect("log");
    let dropped: Vec<_> = log.iter().filter(|e| e.dropped).collect();
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].status, 0);
    assert!(dropped[0].path.ends_with("/trace"));
}

#[tokio::test]
async fn delay_fault_slows_one_request_down() {
    let sim = Sim::start().await;
    let runner = sim.runner(&[], &[]).await;
    sim.admin
        .fault(Fault::delay(FaultRoute::JobsRequest, 400, 1))
        .await
        .expect("fault");
    let started = Instant::now();
    assert_eq!(runner.poll(None).await.status(), StatusCode::NO_CONTENT);
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn git_faults_apply_to_clones() {
    let sim = Sim::start().await;
    sim.admin
        .fault(Fault::status(FaultRoute::Git, 503, 1))
        .await
        .expect("fault");
    let resp = sim
        .http
        .get(format!(
            "{}/group/project.git/info/refs?service=git-upload-pack",
            sim.url
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn invalid_faults_are_refused() {
    let sim = Sim::start().await;
    let mut misplaced = Fault::final_202(1);
    misplaced.route = FaultRoute::PatchTrace;
    assert!(sim.admin.fault(misplaced).await.is_err());
    assert!(sim
        .admin
        .fault(Fault::status(FaultRoute::Git, 42, 1))
        .await
        .is_err());
}
