//! `POST /jobs/request`: validation, Workhorse long polling, `X-GitLab-Last-Update`.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{header, spec, Sim};

#[tokio::test]
async fn request_validation_matches_gitlab() {
    let sim = Sim::start().await;
    let runner = sim.runner(&[], &[]).await;
    let url = sim.api("jobs/request");

    let no_token = sim
        .http
        .post(&url)
        .json(&json!({"info": {}}))
        .send()
        .await
        .expect("send");
    assert_eq!(no_token.status(), StatusCode::BAD_REQUEST);

    // An unknown token is refused at once, even with a last_update (no long poll).
    let started = Instant::now();
    let unknown = sim
        .http
        .post(&url)
        .json(&json!({"token": "glrt-unknown", "last_update": "abc"}))
        .send()
        .await
        .expect("send");
    assert_eq!(unknown.status(), StatusCode::FORBIDDEN);
    assert!(started.elapsed() < Duration::from_millis(1000));

    let mut body = runner.request_body(None);
    body["system_id"] = json!("x_0123456789ab");
    let bad_sid = sim.http.post(&url).json(&body).send().await.expect("send");
    assert_eq!(bad_sid.status(), StatusCode::BAD_REQUEST);

    // A non-JSON Content-Type means Grape reads no parameters at all.
    let text = sim
        .http
        .post(&url)
        .header("Content-Type", "text/plain")
        .body(runner.request_body(None).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(text.status(), StatusCode::BAD_REQUEST);

    // Workhorse limits long-polled bodies to 32 KiB.
    let mut big = runner.request_body(None);
    big["info"]["labels"] = json!({ "padding": "x".repeat(40 * 1024) });
    let too_big = sim.http.post(&url).json(&big).send().await.expect("send");
    assert_eq!(too_big.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Without Content-Type the body is still read as JSON.
    let no_ct = sim
        .http
        .post(&url)
        .body(runner.request_body(None).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(no_ct.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn long_poll_blocks_then_answers_like_workhorse() {
    let sim = Sim::start().await; // long_poll = 1.5 s
    let runner = sim.runner(&[], &[]).await;

    let first = runner.poll(None).await;
    assert_eq!(first.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&first, "gitlab-ci-builds-polling"), "yes");
    let value = header(&first, "x-gitlab-last-update");
    assert!(!value.is_empty(), "Rails 204 carries X-GitLab-Last-Update");

    let started = Instant::now();
    let second = runner.poll(Some(&value)).await;
    let waited = started.elapsed();
    assert_eq!(second.status(), StatusCode::NO_CONTENT);
    assert!(
        waited >= Duration::from_millis(1200),
        "returned after {waited:?}, before 80% of the long poll"
    );
    assert_eq!(header(&second, "gitlab-ci-builds-polling"), "yes");
    assert!(
        second.headers().get("x-gitlab-last-update").is_none(),
        "a Workhorse 204 has no X-GitLab-Last-Update"
    );
}

#[tokio::test]
async fn a_new_job_wakes_the_long_poll_and_the_next_request_gets_it() {
    let sim = Sim::start_with(|c| c.long_poll = Duration::from_secs(10)).await;
    let runner = sim.runner(&[], &[]).await;
    let project = sim.project("group/project").await;
    let value = header(&runner.poll(None).await, "x-gitlab-last-update");

    let poll = {
        let value = value.clone();
        let runner_body = runner.request_body(Some(&value));
        let http = sim.http.clone();
        let url = sim.api("jobs/request");
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = http
                .post(url)
                .json(&runner_body)
                .send()
                .await
                .expect("send");
            (
                resp.status(),
                resp.headers().contains_key("x-gitlab-last-update"),
                started.elapsed(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (job_id, _) = sim.job(spec(project)).await;
    let (status, has_last_update, waited) = poll.await.expect("join");
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "Workhorse answers 204 on a seen change"
    );
    assert!(!has_last_update);
    assert!(waited < Duration::from_secs(5), "woke after {waited:?}");

    // The queue value moved, so the same last_update now reaches the scheduler.
    let picked = runner.poll(Some(&value)).await;
    assert_eq!(picked.status(), StatusCode::CREATED);
    assert!(picked.headers().get("x-gitlab-last-update").is_none());
    assert_eq!(header(&picked, "content-type"), "application/json");
    let payload: serde_json::Value = picked.json().await.expect("json");
    assert_eq!(payload["id"], json!(job_id));
}

#[tokio::test]
async fn without_long_polling_rails_echoes_an_unchanged_last_update() {
    let sim = Sim::start_with(|c| c.long_poll = Duration::ZERO).await;
    let runner = sim.runner(&[], &[]).await;
    let first = runner.poll(None).await;
    assert!(first.headers().get("gitlab-ci-builds-polling").is_none());
    let value = header(&first, "x-gitlab-last-update");
    let started = Instant::now();
    let second = runner.poll(Some(&value)).await;
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert_eq!(second.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&second, "x-gitlab-last-update"), value);
}

#[tokio::test]
async fn paused_runners_get_no_jobs() {
    let sim = Sim::start().await;
    let created = sim
        .admin
        .create_runner_with(&gsr_sim::RunnerInput {
            paused: true,
            ..Default::default()
        })
        .await
        .expect("runner");
    let project = sim.project("group/project").await;
    sim.job(spec(project)).await;
    let resp = sim
        .http
        .post(sim.api("jobs/request"))
        .json(&json!({"token": created.token}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.headers().contains_key("x-gitlab-last-update"));
}

#[tokio::test]
async fn requests_and_declared_features_are_recorded() {
    let sim = Sim::start().await;
    let runner = sim.runner(&[], &["two_phase_job_commit", "refspecs"]).await;
    runner.poll(None).await;

    let log = sim.admin.requests().await.expect("requests");
    let entry = log
        .iter()
        .find(|e| e.path == "/api/v4/jobs/request")
        .expect("logged");
    assert_eq!(entry.method, "POST");
    assert_eq!(entry.status, 204);
    assert_eq!(entry.content_type.as_deref(), Some("application/json"));
    assert!(entry
        .user_agent
        .as_deref()
        .is_some_and(|u| u.starts_with("gitlab-runner ")));
    let body = entry.body.as_ref().expect("body logged");
    assert_eq!(
        body["token"],
        json!("[REDACTED]"),
        "token must not be logged"
    );
    assert_eq!(
        body["info"]["features"]["two_phase_job_commit"],
        json!(true)
    );
    assert_eq!(body["info"]["executor"], json!("shell"));
    assert!(!serde_json::to_string(&log)
        .expect("ser")
        .contains(&runner.token));

    let view = sim.admin.runner(runner.id).await.expect("view");
    assert_eq!(view.managers[0].features["refspecs"], json!(true));
    assert_eq!(view.managers[0].features["cancel_gracefully"], json!(false));
}
