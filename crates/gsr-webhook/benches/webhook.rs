//! Webhook latency benchmarks (DESIGN §7), run with `cargo bench -p gsr-webhook`.
//!
//! An idle receiver (reconcile loop stopped) gets a `pending` Job Hook over HTTP on
//! loopback; the GitLab simulator runs in-process behind a middleware that notes when
//! requests arrive. Measured from the moment the hook request reaches the receiver's
//! router:
//! 1. → the `jobs/request` (the claim) arrives at the simulator;
//! 2. → the first trace PATCH of that job has been stored by the simulator
//!    (`GIT_STRATEGY=none`, default trace timing: the first increment goes out at once).
//!
//! Results are printed as a Markdown table. Nothing here asserts a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use gsr_gitlab::{Coordinator, Features, RunnerInfo};
use gsr_job::SecretString;
use gsr_sim::{AdminClient, JobSpecInput, SimConfig, SimState, VariableInput};
use gsr_webhook::{Runner, Webhook, WebhookConfig};
use gsr_worker::{RunnerIdentity, UploadTiming, WorkerConfig};

const WARMUP: usize = 5;
const RUNS: usize = 50;

#[derive(Default)]
struct Stamps {
    hook: Option<Instant>,
    answered: Option<Instant>,
    claim: Option<Instant>,
    first_trace: HashMap<String, Instant>,
}

type Shared = Arc<Mutex<Stamps>>;

fn stamps(s: &Shared) -> std::sync::MutexGuard<'_, Stamps> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

async fn stamp_sim(stamps_: Shared, req: Request, next: Next) -> Response {
    let arrived = Instant::now();
    let path = req.uri().path().to_string();
    let is_claim = path == "/api/v4/jobs/request";
    let is_trace = req.method() == "PATCH" && path.ends_with("/trace");
    let resp = next.run(req).await;
    let mut s = stamps(&stamps_);
    if is_claim && s.claim.is_none() {
        s.claim = Some(arrived);
    }
    if is_trace && resp.status().as_u16() == 202 {
        // Stored: the simulator has answered 202 for the first bytes.
        let now = Instant::now();
        s.first_trace.entry(path).or_insert(now);
    }
    resp
}

async fn stamp_hook(stamps_: Shared, req: Request, next: Next) -> Response {
    let arrived = Instant::now();
    stamps(&stamps_).hook = Some(arrived);
    let resp = next.run(req).await;
    stamps(&stamps_).answered = Some(Instant::now());
    resp
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo bench` passes `--bench`; harness flags are ignored.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (claim, trace, answer) = rt.block_on(run());
    println!("\n| measure ({RUNS} runs after {WARMUP} warm-up, loopback, in-process simulator) | median | p90 | goal |\n|---|---|---|---|");
    println!(
        "| webhook received → `jobs/request` at the simulator | {} | {} | ≤ 5 ms median |",
        ms(pct(&claim, 0.5)),
        ms(pct(&claim, 0.9))
    );
    println!(
        "| webhook received → first trace byte stored at the simulator (`GIT_STRATEGY=none`) | {} | {} | ≤ 50 ms median |",
        ms(pct(&trace, 0.5)),
        ms(pct(&trace, 0.9))
    );
    println!(
        "| webhook received → `202` answered (context) | {} | {} | — |",
        ms(pct(&answer, 0.5)),
        ms(pct(&answer, 0.9))
    );
}

async fn run() -> (Vec<Duration>, Vec<Duration>, Vec<Duration>) {
    let tmp = tempfile::tempdir().expect("tmp");
    let shared: Shared = Arc::default();

    // The simulator, served with a timing middleware around its whole router.
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sim_url = format!("http://{}", sim_listener.local_addr().expect("addr"));
    let cfg = SimConfig {
        data_dir: tmp.path().join("sim"),
        long_poll: Duration::from_secs(1),
        ..SimConfig::default()
    };
    let admin_token = cfg.admin_token.clone();
    let state = SimState::new(cfg, sim_url.clone()).expect("sim state");
    let s = shared.clone();
    let sim_app = gsr_sim::app(state).layer(middleware::from_fn(move |req, next| {
        stamp_sim(s.clone(), req, next)
    }));
    tokio::spawn(async move { axum::serve(sim_listener, sim_app).await });
    let admin = AdminClient::new(sim_url.clone(), admin_token);
    let project = admin
        .create_project("bench/webhook")
        .await
        .expect("project");
    let (_, token) = admin.create_runner(&[], true).await.expect("runner");

    // The receiver, as `gsr webhook` builds it (shell executor, default trace timing).
    let info = RunnerInfo::new("shell", "bash", Features::shell_runner());
    let runner = Runner {
        coordinator: Coordinator::new(&sim_url, &info).expect("coordinator"),
        runner_token: SecretString::from(token),
        system_id: "s_0123456789ab".into(),
        info,
        placement: Runner::in_process(Arc::new(gsr_exec_process::ProcessExecutor::new())),
        worker: WorkerConfig {
            builds_dir: tmp.path().join("builds"),
            output_limit: 4 * 1024 * 1024,
            runner: RunnerIdentity {
                name: "bench".into(),
                short_token: "benchbenc".into(),
                system_id: "s_0123456789ab".into(),
                version: "0.0.0".into(),
                revision: "bench".into(),
            },
            concurrent_id: 0,
            timing: UploadTiming::default(),
            two_phase: true,
        },
    };
    let webhook = Webhook::new(
        WebhookConfig {
            // Stop at the first "no job": every run starts from an idle receiver.
            wait_timeout: Duration::ZERO,
            ..WebhookConfig::default()
        },
        runner,
    )
    .expect("webhook");
    let s = shared.clone();
    let hook_app = gsr_webhook::app(webhook.clone(), "/", 1024 * 1024).layer(middleware::from_fn(
        move |req, next| stamp_hook(s.clone(), req, next),
    ));
    let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook_url = format!("http://{}/", hook_listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(hook_listener, hook_app).await });

    let http = reqwest::Client::new();
    let (mut claim, mut trace, mut answer) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..WARMUP + RUNS {
        let mut spec = JobSpecInput::new(project.id, ["true"])
            .with_variable(VariableInput::new("GIT_STRATEGY", "none"));
        spec.sha = Some("b".repeat(40));
        let (id, _) = admin.create_job(&spec).await.expect("job");
        *stamps(&shared) = Stamps::default();
        let body = serde_json::json!({
            "object_kind": "build",
            "build_id": id,
            "build_status": "pending",
            "project_id": project.id,
        })
        .to_string();
        let resp = http
            .post(&hook_url)
            .header("X-Gitlab-Event", "Job Hook")
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .expect("hook sent");
        assert_eq!(resp.status().as_u16(), 202, "hook accepted");
        admin
            .wait_for_status(id, &["success"], Duration::from_secs(60))
            .await
            .expect("job succeeds");
        // Idle again before the next run.
        let deadline = Instant::now() + Duration::from_secs(30);
        while webhook.status().reconciling || webhook.status().jobs_running > 0 {
            assert!(Instant::now() < deadline, "receiver never went idle");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let s = stamps(&shared);
        let hook = s.hook.expect("hook stamped");
        let trace_path = format!("/api/v4/jobs/{id}/trace");
        if i >= WARMUP {
            claim.push(s.claim.expect("claim stamped") - hook);
            trace.push(s.first_trace[&trace_path] - hook);
            answer.push(s.answered.expect("answer stamped") - hook);
        }
    }
    (claim, trace, answer)
}
