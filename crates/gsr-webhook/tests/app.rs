//! The receiver's rules through its HTTP surface (`app().oneshot(...)`), and the core
//! against the GitLab simulator (claims, sync summaries, duplicates).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use gsr_gitlab::{Coordinator, Features, RetryPolicy, RunnerInfo};
use gsr_job::SecretString;
use gsr_sim::{JobSpecInput, SimConfig, SimHandle, VariableInput};
use gsr_webhook::{app, Delivery, Runner, Webhook, WebhookConfig};
use gsr_worker::{RunnerIdentity, UploadTiming, WorkerConfig};
use http_body_util::BodyExt;
use tower::ServiceExt;

const FIXTURE: &str = include_str!("../../gsr-gitlab/tests/fixtures/job_hook.json");
const SECRET: &str = "hook-s3cret";

fn runner(url: &str, token: &str, builds: &Path) -> Runner {
    let info = RunnerInfo::new("shell", "bash", Features::shell_runner());
    Runner {
        coordinator: Coordinator::new(url, &info)
            .expect("valid URL")
            .with_retry(RetryPolicy::fast()),
        runner_token: SecretString::from(token.to_string()),
        system_id: "s_0123456789ab".into(),
        info,
        placement: Runner::in_process(Arc::new(gsr_exec_process::ProcessExecutor::new())),
        worker: WorkerConfig {
            builds_dir: builds.to_path_buf(),
            output_limit: 4 * 1024 * 1024,
            runner: RunnerIdentity {
                name: "webhook-test".into(),
                short_token: "abcdefghi".into(),
                system_id: "s_0123456789ab".into(),
                version: "0.0.0".into(),
                revision: "test".into(),
            },
            concurrent_id: 0,
            timing: UploadTiming {
                update_interval: Duration::from_millis(200),
                final_update_backoff: Duration::from_millis(50),
                ..UploadTiming::default()
            },
            two_phase: true,
        },
    }
}

fn config(sync: bool) -> WebhookConfig {
    WebhookConfig {
        secret: Some(SecretString::from(SECRET.to_string())),
        wait_timeout: Duration::from_secs(1),
        check_interval: Duration::from_millis(100),
        sync,
        ..WebhookConfig::default()
    }
}

/// A receiver whose GitLab is unreachable: for the rules that never claim.
fn offline() -> (Arc<Webhook>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = Webhook::new(
        config(false),
        runner("http://127.0.0.1:9", "glrt-offline", dir.path()),
    )
    .expect("webhook");
    (w, dir)
}

fn hook_body(build_id: u64, status: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture");
    v["build_id"] = build_id.into();
    v["build_status"] = status.into();
    v.to_string()
}

fn post(path: &str, event: &str, token: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut b = Request::post(path)
        .header("content-type", "application/json")
        .header("x-gitlab-event", event);
    if let Some(t) = token {
        b = b.header("x-gitlab-token", t);
    }
    b.body(body.into()).expect("request")
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, String) {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn wrong_or_missing_secret_is_401_without_details() {
    let (w, _d) = offline();
    let app = app(w.clone(), "/", 1024 * 1024);
    for token in [Some("wrong"), None, Some("hook-s3cret-and-more")] {
        let (status, body) =
            call(&app, post("/", "Job Hook", token, hook_body(1, "pending"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(body, "unauthorized");
    }
    assert!(!w.status().reconciling, "nothing started");
}

#[tokio::test]
async fn other_events_are_ignored_with_200() {
    let (w, _d) = offline();
    let app = app(w.clone(), "/", 1024 * 1024);
    let (status, body) = call(&app, post("/", "Push Hook", Some(SECRET), "{}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("ignored"), "{body}");
    assert!(!w.status().reconciling);
}

#[tokio::test]
async fn invalid_payloads_are_400_with_the_reason() {
    let (w, _d) = offline();
    let app = app(w.clone(), "/", 1024 * 1024);
    let (status, body) = call(&app, post("/", "Job Hook", Some(SECRET), "{not json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("invalid Job Hook payload"), "{body}");

    let (status, body) = call(
        &app,
        post("/", "Job Hook", Some(SECRET), r#"{"object_kind":"push"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("not a job event"), "{body}");

    let (status, body) = call(
        &app,
        post("/", "Job Hook", Some(SECRET), r#"{"object_kind":"build"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("build_id"), "{body}");

    let req = Request::post("/")
        .header("x-gitlab-token", SECRET)
        .body(Body::from(hook_body(1, "pending")))
        .expect("request");
    let (status, body) = call(&app, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("X-Gitlab-Event"), "{body}");
    assert!(!w.status().reconciling);
}

#[tokio::test]
async fn non_pending_job_events_are_ignored() {
    let (w, _d) = offline();
    let app = app(w.clone(), "/", 1024 * 1024);
    // The reference fixture is a `created` event.
    let (status, body) = call(&app, post("/", "Job Hook", Some(SECRET), FIXTURE)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("ignored"), "{body}");
    for s in ["running", "success", "failed", "canceled"] {
        let (status, _) = call(&app, post("/", "Job Hook", Some(SECRET), hook_body(5, s))).await;
        assert_eq!(status, StatusCode::OK, "{s}");
    }
    assert!(!w.status().reconciling);
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let (w, _d) = offline();
    let app = app(w.clone(), "/hook", 1000);
    let big = format!(
        r#"{{"object_kind":"build","build_id":1,"build_status":"pending","pad":"{}"}}"#,
        "x".repeat(2000)
    );
    // Announced by Content-Length: refused before reading.
    let mut req = post("/hook", "Job Hook", Some(SECRET), big.clone());
    req.headers_mut()
        .insert("content-length", big.len().to_string().parse().unwrap());
    let (status, _) = call(&app, req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Streamed without a length: refused while reading.
    let stream = chunked(big.into_bytes());
    let (status, _) = call(
        &app,
        post("/hook", "Job Hook", Some(SECRET), Body::from_stream(stream)),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!w.status().reconciling);
}

/// A body stream in 100-byte chunks (no size hint, no Content-Length).
fn chunked(
    bytes: Vec<u8>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(100).map(|c| Ok(c.to_vec())).collect();
    futures::stream::iter(chunks)
}

#[tokio::test]
async fn unknown_paths_404_wrong_methods_405_and_healthz() {
    let (w, _d) = offline();
    let app = app(w.clone(), "hook", 1024);
    let (status, _) = call(&app, post("/", "Job Hook", Some(SECRET), "{}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&app, post("/hook/", "Job Hook", Some(SECRET), "{}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let resp = app
        .clone()
        .oneshot(Request::get("/hook").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "POST");
    let (status, body) = call(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let (status, _) = call(&app, post("/healthz", "Job Hook", Some(SECRET), "{}")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

/// A simulator with one runner; jobs need no repository (`GIT_STRATEGY=none`, fixed sha).
struct Sim {
    sim: SimHandle,
    token: String,
    project_id: u64,
    dir: tempfile::TempDir,
}

impl Sim {
    async fn new() -> Sim {
        let dir = tempfile::tempdir().expect("tempdir");
        let sim = gsr_sim::spawn(SimConfig {
            data_dir: dir.path().join("sim"),
            long_poll: Duration::from_millis(500),
            trace_update_interval: 1,
            ..SimConfig::default()
        })
        .await
        .expect("sim");
        let admin = sim.admin();
        let project = admin.create_project("group/hooks").await.expect("project");
        let (_, token) = admin.create_runner(&[], true).await.expect("runner");
        Sim {
            sim,
            token,
            project_id: project.id,
            dir,
        }
    }

    async fn enqueue(&self, script: &[&str]) -> u64 {
        let mut spec = JobSpecInput::new(self.project_id, script.iter().copied())
            .with_variable(VariableInput::new("GIT_STRATEGY", "none"));
        spec.sha = Some("a".repeat(40));
        self.sim.admin().create_job(&spec).await.expect("job").0
    }

    fn webhook(&self, cfg: WebhookConfig) -> Arc<Webhook> {
        Webhook::new(
            cfg,
            runner(&self.sim.url, &self.token, &self.dir.path().join("builds")),
        )
        .expect("webhook")
    }
}

fn delivery(build_id: u64, idem: Option<&str>, event: Option<&str>) -> Delivery {
    Delivery {
        event: Some("Job Hook".into()),
        token: Some(SECRET.as_bytes().to_vec()),
        event_uuid: event.map(String::from),
        webhook_uuid: None,
        idempotency_key: idem.map(String::from),
        body: hook_body(build_id, "pending").into(),
    }
}

#[tokio::test]
async fn duplicates_start_nothing() {
    let sim = Sim::new().await;
    let w = sim.webhook(config(false));
    let r = w.handle(delivery(100, Some("k1"), Some("e1")));
    assert_eq!(
        (r.status, r.message.as_str()),
        (202, "accepted: claiming job 100")
    );
    for d in [
        delivery(100, None, None),             // same job
        delivery(101, Some("k1"), None),       // re-sent delivery
        delivery(102, None, Some("e1")),       // same event, another hook
        delivery(100, Some("k9"), Some("e9")), // same job, new keys
    ] {
        let r = w.handle(d);
        assert_eq!(r.status, 200, "{}", r.message);
        assert!(r.message.starts_with("duplicate"), "{}", r.message);
    }
    let r = w.handle(delivery(103, None, None));
    assert_eq!(r.status, 202);
    // The same through HTTP.
    let app = app(w.clone(), "/", 1024 * 1024);
    let mut req = post("/", "Job Hook", Some(SECRET), hook_body(104, "pending"));
    req.headers_mut()
        .insert("idempotency-key", "k1".parse().unwrap());
    let (status, body) = call(&app, req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("duplicate"), "{body}");

    // Without jobs the reconcile loop stops after the wait timeout.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while w.status().reconciling {
        assert!(std::time::Instant::now() < deadline, "loop never stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.stop_claiming();
    w.drained().await;
    let r = w.handle(delivery(200, None, None));
    assert_eq!(r.status, 503, "no claims once stopping");
}

#[tokio::test]
async fn claims_and_runs_the_job_and_sync_waits_for_its_end() {
    let sim = Sim::new().await;
    let admin = sim.sim.admin();
    let id = sim.enqueue(&["echo hello-from-webhook", "sleep 0.3"]).await;
    let w = sim.webhook(config(true));
    let r = w.handle(delivery(id, None, None));
    assert_eq!(r.status, 200);
    let summary = tokio::time::timeout(Duration::from_secs(60), r.done.expect("sync"))
        .await
        .expect("job ends")
        .expect("summary");
    assert_eq!(summary.job_id, id);
    assert_eq!(summary.status, "success", "{summary:?}");
    assert_eq!(summary.delivery.as_deref(), Some("accepted"));
    // When the answer comes, GitLab already has the final state.
    let view = admin.job(id).await.expect("view");
    assert_eq!(view.status, "success");
    let trace = String::from_utf8_lossy(&admin.trace(id).await.unwrap()).into_owned();
    assert!(trace.contains("hello-from-webhook"), "{trace}");

    // A job that is not (or no longer) ours: answered once the loop gave up.
    let r = w.handle(delivery(999_999, None, None));
    let summary = tokio::time::timeout(Duration::from_secs(60), r.done.expect("sync"))
        .await
        .expect("loop ends")
        .expect("summary");
    assert_eq!(summary.status, "not_claimed");
    w.stop_claiming();
    w.drained().await;
}

#[tokio::test]
async fn shutdown_with_abort_interrupts_the_running_job() {
    let sim = Sim::new().await;
    let admin = sim.sim.admin();
    let id = sim.enqueue(&["echo started", "sleep 60"]).await;
    let w = sim.webhook(config(true));
    let r = w.handle(delivery(id, None, None));
    admin
        .wait_for_status(id, &["running"], Duration::from_secs(30))
        .await
        .expect("running");
    w.abort_jobs();
    let summary = tokio::time::timeout(Duration::from_secs(30), r.done.expect("sync"))
        .await
        .expect("job ends")
        .expect("summary");
    assert_eq!(summary.status, "failed");
    assert_eq!(
        summary.failure_reason.as_deref(),
        Some("runner_interrupted")
    );
    tokio::time::timeout(Duration::from_secs(30), w.drained())
        .await
        .expect("drained");
    let view = admin.job(id).await.unwrap();
    assert_eq!(view.status, "failed");
    assert_eq!(view.failure_reason.as_deref(), Some("runner_interrupted"));
}
