//! The admin API itself, the in-process `app()`, and the `gsr-sim` binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::body::Body;
use gsr_sim::{SimConfig, SimState};
use http::{Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::common::Sim;

#[tokio::test]
async fn admin_api_needs_the_admin_token() {
    let sim = Sim::start().await;
    let url = format!("{}/-/sim/runners", sim.url);
    let none = sim
        .http
        .post(&url)
        .json(&json!({}))
        .send()
        .await
        .expect("send");
    assert_eq!(none.status(), reqwest::StatusCode::UNAUTHORIZED);
    let wrong = sim
        .http
        .post(&url)
        .header("PRIVATE-TOKEN", "nope")
        .json(&json!({}))
        .send()
        .await
        .expect("send");
    assert_eq!(wrong.status(), reqwest::StatusCode::UNAUTHORIZED);
    let bearer = sim
        .http
        .post(&url)
        .bearer_auth("sim-admin-token")
        .json(&json!({"tags": ["a"]}))
        .send()
        .await
        .expect("send");
    assert_eq!(bearer.status(), reqwest::StatusCode::CREATED);
    let body: Value = bearer.json().await.expect("json");
    assert!(body["token"]
        .as_str()
        .is_some_and(|t| t.starts_with("glrt-")));
}

#[tokio::test]
async fn projects_need_a_namespace_and_a_unique_path() {
    let sim = Sim::start().await;
    assert!(sim.admin.create_project("lonely").await.is_err());
    assert!(sim.admin.create_project("group/.hidden").await.is_err());
    sim.admin
        .create_project("group/project")
        .await
        .expect("first");
    assert!(sim.admin.create_project("group/project").await.is_err());
}

#[tokio::test]
async fn app_serves_oneshot_requests() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = SimConfig {
        data_dir: dir.path().to_path_buf(),
        ..SimConfig::default()
    };
    let state = SimState::new(cfg, "http://gitlab.test").expect("state");
    let app = gsr_sim::app(state);

    let create = Request::post("/-/sim/runners")
        .header("PRIVATE-TOKEN", "sim-admin-token")
        .header("Content-Type", "application/json")
        .body(Body::from(r#"{"tags":["x"]}"#))
        .expect("request");
    let resp = app.clone().oneshot(create).await.expect("oneshot");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let created: Value = serde_json::from_slice(&bytes).expect("json");

    let poll = Request::post("/api/v4/jobs/request")
        .header("Content-Type", "application/json")
        .body(Body::from(json!({"token": created["token"]}).to_string()))
        .expect("request");
    let resp = app.clone().oneshot(poll).await.expect("oneshot");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    let unknown = Request::get("/api/v4/nothing/here")
        .body(Body::empty())
        .expect("request");
    let resp = app.oneshot(unknown).await.expect("oneshot");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn binary_prints_its_url_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gsr-sim"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--long-poll-secs", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gsr-sim");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("join")
    .expect("read line");
    let url = line
        .trim()
        .strip_prefix("gsr-sim listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"));

    let resp = reqwest::Client::new()
        .post(format!("{url}/-/sim/projects"))
        .header("PRIVATE-TOKEN", "sim-admin-token")
        .json(&json!({"path": "demo/project"}))
        .send()
        .await
        .expect("admin call");
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    assert!(dir.path().join("repos/demo/project.git/HEAD").exists());

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .expect("join");
    assert!(
        status.is_some_and(|s| s.success()),
        "gsr-sim did not exit cleanly: {status:?}"
    );
}

#[tokio::test]
async fn shutdown_ends_long_polls_promptly() {
    let sim = Sim::start_with(|c| c.long_poll = Duration::from_secs(30)).await;
    let runner = sim.runner(&[], &[]).await;
    let value = crate::common::header(&runner.poll(None).await, "x-gitlab-last-update");
    let poll = tokio::spawn(async move { runner.poll(Some(&value)).await.status() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let Sim { handle, .. } = sim;
    handle.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert_eq!(poll.await.expect("join"), reqwest::StatusCode::NO_CONTENT);
}
