//! Job Hook webhooks: events per status change, GitLab's headers and payload shape,
//! faults, resend, auto-disabling and timeouts. A small axum receiver on 127.0.0.1 records
//! what the simulator sends.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use gsr_sim::{Fault, FaultRoute, HookDelivery, JobSpecInput, ProjectHookInput};
use serde_json::{json, Value};

use crate::common::{spec, Sim};

const WAIT: Duration = Duration::from_secs(10);
const FIXTURE: &str = include_str!("../fixtures/job_hook.json");

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Value,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn status(&self) -> &str {
        self.body["build_status"].as_str().unwrap_or("")
    }
}

#[derive(Default)]
struct Recorder {
    requests: Mutex<Vec<Received>>,
    /// Status to answer (0 = 200).
    answer: AtomicU16,
    /// Delay before answering.
    delay_ms: AtomicU64,
}

/// A webhook receiver on 127.0.0.1.
struct Receiver {
    url: String,
    rec: Arc<Recorder>,
}

async fn record(State(rec): State<Arc<Recorder>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    rec.requests
        .lock()
        .unwrap()
        .push(Received { headers, body });
    let delay = rec.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    match rec.answer.load(Ordering::SeqCst) {
        0 => StatusCode::OK,
        code => StatusCode::from_u16(code).unwrap(),
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let rec = Arc::new(Recorder::default());
        let app = Router::new()
            .route("/hook", post(record))
            .with_state(rec.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            rec,
        }
    }

    fn answer(&self, status: u16) {
        self.rec.answer.store(status, Ordering::SeqCst);
    }

    fn all(&self) -> Vec<Received> {
        self.rec.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived; returns all of them.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + WAIT;
        loop {
            let all = self.all();
            if all.len() >= n {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "receiver got {} requests, wanted {n}: {:?}",
                all.len(),
                all.iter().map(Received::status).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn statuses(got: &[Received]) -> Vec<&str> {
    got.iter().map(Received::status).collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Same keys as the fixture, recursively, and the same JSON types where neither side is
/// null. `source_pipeline` exists only for downstream pipelines.
fn assert_fixture_shape(path: &str, fixture: &Value, got: &Value) {
    match (fixture, got) {
        (Value::Object(f), Value::Object(g)) => {
            for (k, fv) in f {
                if path.is_empty() && k == "source_pipeline" {
                    continue;
                }
                let gv = g
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} missing in {got:#}"));
                assert_fixture_shape(&format!("{path}.{k}"), fv, gv);
            }
            for k in g.keys() {
                assert!(f.contains_key(k), "{path}.{k} is not in the fixture");
            }
        }
        (Value::Null, _) | (_, Value::Null) => {}
        (Value::Array(f), Value::Array(g)) => {
            if let (Some(f0), Some(g0)) = (f.first(), g.first()) {
                assert_fixture_shape(&format!("{path}[0]"), f0, g0);
            }
        }
        (f, g) => assert_eq!(kind(f), kind(g), "{path}: {g} vs fixture {f}"),
    }
}

fn is_uuid(s: Option<&str>) -> bool {
    s.is_some_and(|s| uuid::Uuid::parse_str(s).is_ok())
}

#[tokio::test]
async fn job_lifecycle_delivers_one_event_per_status_with_gitlab_headers() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let fixture: Value = serde_json::from_str(FIXTURE).expect("fixture");
    let project = sim.project("group/project").await;
    let hook = sim
        .admin
        .add_hook(project, &rx.url, Some("s3cret"))
        .await
        .expect("hook");
    let runner = sim.runner(&["linux"], &[]).await;
    let (id, token) = sim.job(spec(project)).await;

    let got = rx.wait_for(2).await;
    assert_eq!(statuses(&got), ["created", "pending"]);
    let pending = &got[1];
    assert_eq!(pending.header("content-type"), Some("application/json"));
    assert_eq!(pending.header("x-gitlab-event"), Some("Job Hook"));
    assert_eq!(pending.header("x-gitlab-token"), Some("s3cret"));
    assert_eq!(pending.header("user-agent"), Some("GitLab/18.6.0"));
    assert_eq!(pending.header("x-gitlab-instance"), Some(sim.url.as_str()));
    assert!(is_uuid(pending.header("x-gitlab-webhook-uuid")));
    assert!(is_uuid(pending.header("x-gitlab-event-uuid")));
    assert!(is_uuid(pending.header("idempotency-key")));

    let body = &pending.body;
    assert_fixture_shape("", &fixture, body);
    assert_eq!(body["object_kind"], "build");
    assert_eq!(body["build_id"], json!(id));
    assert_eq!(body["build_name"], "test");
    assert_eq!(body["build_stage"], "test");
    assert_eq!(body["ref"], "main");
    assert_eq!(body["tag"], false);
    assert_eq!(body["sha"], "2293ada6b400935a1378653304eaf6221e0fdb8f");
    assert_eq!(body["build_failure_reason"], "unknown_failure");
    assert_eq!(body["runner"], Value::Null, "no runner before pickup");
    assert_eq!(body["build_started_at"], Value::Null);
    assert!(body["build_queued_duration"].is_number());
    assert_eq!(body["project_id"], json!(project));
    assert_eq!(body["project_name"], "group / project");
    assert_eq!(
        body["commit"]["id"], body["pipeline_id"],
        "commit.id is the pipeline id"
    );
    assert_eq!(body["commit"]["status"], "pending");
    assert_eq!(body["project"]["path_with_namespace"], "group/project");
    assert_eq!(
        body["repository"]["git_http_url"],
        format!("{}/group/project.git", sim.url)
    );
    assert_eq!(body["environment"], Value::Null);
    assert!(body.get("source_pipeline").is_none());
    let created_at = body["build_created_at"].as_str().expect("created_at");
    assert!(
        created_at.ends_with('Z') && created_at.contains('.'),
        "{created_at}"
    );

    // A runner without two-phase commit starts the job at pickup.
    runner.pick().await;
    let got = rx.wait_for(3).await;
    let running = &got[2].body;
    assert_eq!(running["build_status"], "running");
    assert_fixture_shape("", &fixture, running);
    assert_eq!(running["runner"]["id"], json!(runner.id));
    assert_eq!(running["runner"]["tags"], json!(["linux"]));
    assert_eq!(running["runner"]["runner_type"], "instance_type");
    assert_eq!(running["runner"]["is_shared"], true);
    assert_eq!(running["runner"]["active"], true);
    assert!(running["build_started_at"].is_string());
    assert_eq!(running["commit"]["status"], "running");

    let resp = sim.put_job(id, &token, json!({"state": "success"})).await;
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let got = rx.wait_for(4).await;
    assert_eq!(statuses(&got), ["created", "pending", "running", "success"]);
    let success = &got[3].body;
    assert_fixture_shape("", &fixture, success);
    assert!(success["build_finished_at"].is_string());
    assert!(success["build_finished_at_iso"].is_string());
    assert!(success["build_duration"].is_number());
    assert_eq!(success["build_failure_reason"], "unknown_failure");
    assert_eq!(success["commit"]["status"], "success");
    assert!(success["commit"]["finished_at"].is_string());

    // One event UUID per change, one webhook UUID per request, one key per delivery.
    for name in [
        "x-gitlab-event-uuid",
        "x-gitlab-webhook-uuid",
        "idempotency-key",
    ] {
        let mut values: Vec<_> = got.iter().map(|r| r.header(name).unwrap()).collect();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values.len(), 4, "{name} must differ per event");
    }

    let log = sim.admin.wait_for_deliveries(4, WAIT).await.expect("log");
    assert_eq!(log.len(), 4);
    for (entry, req) in log.iter().zip(&got) {
        assert!(entry.succeeded(), "{entry:?}");
        assert_eq!(entry.status, Some(200));
        assert_eq!(entry.hook_id, hook);
        assert_eq!(entry.job_id, id);
        assert_eq!(entry.build_status, req.status());
        assert_eq!(
            Some(entry.event_uuid.as_str()),
            req.header("x-gitlab-event-uuid")
        );
        assert_eq!(
            Some(entry.webhook_uuid.as_str()),
            req.header("x-gitlab-webhook-uuid")
        );
        assert_eq!(
            Some(entry.idempotency_key.as_str()),
            req.header("idempotency-key")
        );
        assert_eq!(entry.resend_of, None);
        assert!(!entry.skipped_disabled);
    }
}

#[tokio::test]
async fn failure_and_skipped_dependents_without_token_header() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let project = sim.project("group/project").await;
    sim.admin
        .add_hook(project, &rx.url, None)
        .await
        .expect("hook");
    let runner = sim.runner(&[], &[]).await;
    let (a, token) = sim.job(spec(project)).await;
    let (b, _) = sim
        .job(JobSpecInput {
            name: Some("deploy".into()),
            stage: Some("deploy".into()),
            dependencies: vec![a],
            ..spec(project)
        })
        .await;
    rx.wait_for(3).await;
    runner.pick().await;
    let resp = sim
        .put_job(
            a,
            &token,
            json!({"state": "failed", "failure_reason": "script_failure", "exit_code": 1}),
        )
        .await;
    assert_eq!(resp.status(), reqwest::StatusCode::OK);

    let got = rx.wait_for(6).await;
    let events: Vec<(u64, &str)> = got
        .iter()
        .map(|r| (r.body["build_id"].as_u64().unwrap(), r.status()))
        .collect();
    assert_eq!(
        events,
        [
            (a, "created"),
            (a, "pending"),
            (b, "created"),
            (a, "running"),
            (a, "failed"),
            (b, "skipped"),
        ]
    );
    assert!(got.iter().all(|r| r.header("x-gitlab-token").is_none()));
    assert_eq!(got[4].body["build_failure_reason"], "script_failure");
    // The pipeline status is the one at each change: still running while B waits.
    assert_eq!(got[4].body["commit"]["status"], "running");
    assert_eq!(got[5].body["commit"]["status"], "failed");
    assert_eq!(got[5].body["build_failure_reason"], "unknown_failure");
    assert_eq!(got[5].body["runner"], Value::Null);
    assert_eq!(got[5].body["build_stage"], "deploy");
    assert_eq!(
        got[2].body["build_queued_duration"],
        Value::Null,
        "never queued"
    );
    assert_eq!(got[2].body["pipeline_id"], got[0].body["pipeline_id"]);
}

#[tokio::test]
async fn two_phase_pickup_waits_for_the_ack_and_graceful_cancel_is_reported() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let project = sim.project("group/project").await;
    sim.admin
        .add_hook(project, &rx.url, None)
        .await
        .expect("hook");
    let runner = sim
        .runner(&[], &["two_phase_job_commit", "cancel_gracefully"])
        .await;
    let (id, token) = sim.job(spec(project)).await;
    rx.wait_for(2).await;
    runner.pick().await;
    // Still pending until the acknowledgement: no event; the next one is `running`.
    let ack = sim.put_job(id, &token, json!({"state": "running"})).await;
    assert_eq!(ack.status(), reqwest::StatusCode::OK);
    let got = rx.wait_for(3).await;
    assert_eq!(statuses(&got), ["created", "pending", "running"]);
    assert_eq!(got[2].body["runner"]["id"], json!(runner.id));

    sim.admin.cancel(id).await.expect("cancel");
    rx.wait_for(4).await;
    let resp = sim.put_job(id, &token, json!({"state": "failed"})).await;
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let got = rx.wait_for(5).await;
    assert_eq!(
        statuses(&got),
        ["created", "pending", "running", "canceling", "canceled"]
    );
}

#[tokio::test]
async fn drop_fault_loses_the_delivery_but_logs_it() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let project = sim.project("group/project").await;
    sim.admin
        .add_hook(project, &rx.url, None)
        .await
        .expect("hook");
    sim.admin
        .fault(Fault::webhook_drop(1))
        .await
        .expect("fault");
    sim.job(spec(project)).await;

    let log = sim.admin.wait_for_deliveries(2, WAIT).await.expect("log");
    assert_eq!(log[0].build_status, "created");
    assert_eq!(log[0].error.as_deref(), Some("dropped by fault"));
    assert_eq!(log[0].status, None);
    assert!(!log[0].skipped_disabled);
    assert!(log[1].succeeded());
    // Logged after the attempt, so the receiver has everything it will get.
    assert_eq!(statuses(&rx.all()), ["pending"]);
    let hook = &sim.admin.hooks(project).await.expect("hooks")[0];
    assert_eq!(hook.recent_failures, 0, "a lost delivery is no failure");
}

#[tokio::test]
async fn duplicate_fault_sends_the_same_delivery_twice() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let project = sim.project("group/project").await;
    sim.admin
        .add_hook(project, &rx.url, None)
        .await
        .expect("hook");
    sim.admin
        .fault(Fault::webhook_duplicate(1))
        .await
        .expect("fault");
    sim.job(spec(project)).await;

    let got = rx.wait_for(3).await;
    assert_eq!(statuses(&got), ["created", "created", "pending"]);
    let (first, second) = (&got[0], &got[1]);
    assert_eq!(
        first.header("idempotency-key"),
        second.header("idempotency-key")
    );
    assert_eq!(
        first.header("x-gitlab-event-uuid"),
        second.header("x-gitlab-event-uuid")
    );
    assert_ne!(
        first.header("x-gitlab-webhook-uuid"),
        second.header("x-gitlab-webhook-uuid")
    );
    assert_eq!(first.body, second.body);
    assert_ne!(
        first.header("idempotency-key"),
        got[2].header("idempotency-key")
    );
    let log = sim.admin.wait_for_deliveries(3, WAIT).await.expect("log");
    assert!(log.iter().all(HookDelivery::succeeded));
    assert_eq!(log[0].idempotency_key, log[1].idempotency_key);
}

#[tokio::test]
async fn resend_keeps_the_idempotency_key() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let project = sim.project("group/project").await;
    sim.admin
        .add_hook(project, &rx.url, Some("s3cret"))
        .await
        .expect("hook");
    sim.job(spec(project)).await;
    let log = sim.admin.wait_for_deliveries(2, WAIT).await.expect("log");
    let original = &log[1];

    let resent = sim.admin.resend(original.seq).await.expect("resend");
    assert_eq!(resent.resend_of, Some(original.seq));
    assert_eq!(resent.idempotency_key, original.idempotency_key);
    assert_ne!(resent.webhook_uuid, original.webhook_uuid);
    assert_eq!(resent.build_status, "pending");
    assert!(resent.succeeded(), "{resent:?}");

    let got = rx.wait_for(3).await;
    assert_eq!(
        got[2].header("idempotency-key"),
        Some(original.idempotency_key.as_str())
    );
    assert_ne!(
        got[2].header("x-gitlab-webhook-uuid"),
        got[1].header("x-gitlab-webhook-uuid")
    );
    assert_eq!(got[2].header("x-gitlab-token"), Some("s3cret"));
    assert_eq!(got[2].body, got[1].body, "the same payload");

    let err = sim.admin.resend(9999).await.expect_err("unknown delivery");
    assert!(err.to_string().contains("404"), "{err}");
}

#[tokio::test]
async fn four_consecutive_failures_disable_the_hook() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let project = sim.project("group/project").await;
    let hook = sim
        .admin
        .add_hook(project, &rx.url, None)
        .await
        .expect("hook");

    // Two failures, then a success resets the count.
    rx.answer(500);
    sim.job(spec(project)).await;
    sim.admin.wait_for_deliveries(2, WAIT).await.expect("log");
    assert_eq!(sim.admin.hook(hook).await.expect("hook").recent_failures, 2);
    rx.answer(200);
    sim.job(spec(project)).await;
    sim.admin.wait_for_deliveries(4, WAIT).await.expect("log");
    assert_eq!(sim.admin.hook(hook).await.expect("hook").recent_failures, 0);

    // Four failures in a row disable it.
    rx.answer(500);
    sim.job(spec(project)).await;
    sim.job(spec(project)).await;
    let log = sim.admin.wait_for_deliveries(8, WAIT).await.expect("log");
    for entry in &log[4..8] {
        assert_eq!(entry.status, Some(500));
        assert_eq!(entry.error.as_deref(), Some("HTTP 500"));
        assert!(!entry.succeeded());
    }
    let view = sim.admin.hook(hook).await.expect("hook");
    assert_eq!(view.recent_failures, 4);
    assert_eq!(view.alert_status, "temporarily_disabled");
    assert!(view.disabled_until.is_some());
    assert_eq!(rx.all().len(), 8);

    // The next events are skipped, not sent; a resend is refused as well.
    sim.job(spec(project)).await;
    let log = sim.admin.wait_for_deliveries(10, WAIT).await.expect("log");
    for entry in &log[8..10] {
        assert!(entry.skipped_disabled, "{entry:?}");
        assert_eq!(entry.status, None);
    }
    let resent = sim.admin.resend(log[7].seq).await.expect("resend");
    assert!(resent.skipped_disabled);
    assert_eq!(rx.all().len(), 8, "nothing sent while disabled");
}

#[tokio::test]
async fn slow_receiver_is_a_timeout_failure() {
    let sim = Sim::start_with(|cfg| cfg.webhook_timeout = Duration::from_millis(300)).await;
    let rx = Receiver::start().await;
    rx.rec.delay_ms.store(3000, Ordering::SeqCst);
    let project = sim.project("group/project").await;
    let hook = sim
        .admin
        .add_hook(project, &rx.url, None)
        .await
        .expect("hook");
    sim.job(spec(project)).await;
    let log = sim.admin.wait_for_deliveries(1, WAIT).await.expect("log");
    let first = &log[0];
    assert_eq!(first.status, None);
    let error = first.error.as_deref().unwrap_or("");
    assert!(error.contains("timeout"), "{error}");
    assert!(!first.succeeded());
    assert!(sim.admin.hook(hook).await.expect("hook").recent_failures >= 1);
}

#[tokio::test]
async fn hooks_admin_api() {
    let sim = Sim::start().await;
    let rx = Receiver::start().await;
    let other = Receiver::start().await;
    let project = sim.project("group/project").await;

    let err = sim
        .admin
        .add_hook(4242, &rx.url, None)
        .await
        .expect_err("no such project");
    assert!(err.to_string().contains("404"), "{err}");
    for bad in ["not a url", "ftp://127.0.0.1/x"] {
        let err = sim
            .admin
            .add_hook(project, bad, None)
            .await
            .expect_err("bad url");
        assert!(err.to_string().contains("400"), "{bad}: {err}");
    }
    let err = sim
        .admin
        .fault(Fault::status(FaultRoute::WebhookDelivery, 500, 1))
        .await
        .expect_err("status faults do not apply to deliveries");
    assert!(err.to_string().contains("400"), "{err}");

    let a = sim
        .admin
        .add_hook(project, &rx.url, Some("s3cret"))
        .await
        .expect("hook a");
    let b = sim
        .admin
        .add_hook(project, &other.url, None)
        .await
        .expect("hook b");
    let quiet = sim
        .admin
        .add_hook_with(
            project,
            &ProjectHookInput {
                job_events: false,
                ..ProjectHookInput::new(other.url.clone())
            },
        )
        .await
        .expect("hook without job events");
    let hooks = sim.admin.hooks(project).await.expect("hooks");
    assert_eq!(
        hooks.iter().map(|h| h.id).collect::<Vec<_>>(),
        [a, b, quiet]
    );
    assert!(hooks[0].token_set && !hooks[1].token_set);
    assert_eq!(hooks[0].alert_status, "executable");
    assert!(!hooks[2].job_events);

    // Both hooks see the same event (same Event-UUID) as separate deliveries.
    sim.job(spec(project)).await;
    let (ga, gb) = (rx.wait_for(2).await, other.wait_for(2).await);
    assert_eq!(
        ga[0].header("x-gitlab-event-uuid"),
        gb[0].header("x-gitlab-event-uuid")
    );
    assert_ne!(
        ga[0].header("idempotency-key"),
        gb[0].header("idempotency-key")
    );
    let log = sim.admin.wait_for_deliveries(4, WAIT).await.expect("log");
    assert!(log.iter().all(|d| d.hook_id != quiet));

    // A removed hook gets nothing more.
    sim.admin.remove_hook(a).await.expect("remove");
    assert!(sim.admin.hook(a).await.is_err());
    assert!(sim.admin.remove_hook(a).await.is_err());
    sim.job(spec(project)).await;
    other.wait_for(4).await;
    let log = sim.admin.wait_for_deliveries(6, WAIT).await.expect("log");
    assert_eq!(log.iter().filter(|d| d.hook_id == a).count(), 2);
    assert_eq!(rx.all().len(), 2);

    sim.admin.clear_deliveries().await.expect("clear");
    assert!(sim.admin.deliveries().await.expect("log").is_empty());
}
