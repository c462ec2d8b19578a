//! `gsr webhook` end to end: the real binary listening for Job Hooks, the simulator as
//! GitLab (hand-made deliveries, and the simulator's own webhook deliveries).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use gsr_sim::{Fault, RequestLogEntry, VariableInput};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::harness::{gsr_bin, Env};

const FIXTURE: &str = include_str!("../../../gsr-gitlab/tests/fixtures/job_hook.json");
const SECRET: &str = "whsec-Hook-Secret-0123";

/// A running `gsr webhook`, killed when dropped.
struct Receiver {
    child: tokio::process::Child,
    /// `http://127.0.0.1:PORT`.
    base: String,
    log: PathBuf,
}

impl Receiver {
    /// Start `gsr webhook` against the simulator, `extra` flags appended; waits for the
    /// "listening" line on stdout.
    async fn start(env: &Env, name: &str, extra: &[&str]) -> Receiver {
        let log = env.dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut child = tokio::process::Command::new(gsr_bin())
            .arg("webhook")
            .args([
                "--url",
                &env.sim.url,
                "--listen",
                "127.0.0.1",
                "--port",
                "0",
            ])
            .arg("--builds-dir")
            .arg(env.builds_dir())
            .args(["--check-interval", "0.2"])
            .args(extra)
            // A short idle time, through the environment so a flag in `extra` overrides it.
            .env("WAIT_TIMEOUT", "5")
            .env("RUNNER_TOKEN", &env.runner_token)
            .env("GITLAB_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("gsr starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("listening line in time")
            .expect("stdout readable")
            .unwrap_or_else(|| {
                panic!(
                    "gsr webhook exited: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let base = line
            .strip_prefix("gsr webhook listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Receiver { child, base, log }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: Signal) {
        let pid = self.child.id().expect("running");
        kill(Pid::from_raw(i32::try_from(pid).expect("pid")), sig).expect("signal sent");
    }

    async fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .map(|r| r.expect("wait"))
    }
}

/// The reference Job Hook with this job's id and project, `build_status: pending`.
fn pending_hook(env: &Env, build_id: u64) -> String {
    let mut v: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture");
    v["build_id"] = build_id.into();
    v["build_status"] = "pending".into();
    v["project_id"] = env.project_id.into();
    v["runner"] = serde_json::Value::Null;
    v.to_string()
}

/// POST a delivery; returns (status, body).
async fn deliver(
    http: &reqwest::Client,
    url: &str,
    body: String,
    idempotency_key: Option<String>,
    event_uuid: Option<String>,
) -> (u16, String) {
    let mut req = http
        .post(url)
        .header("Content-Type", "application/json")
        .header("X-Gitlab-Event", "Job Hook")
        .header("X-Gitlab-Token", SECRET)
        .body(body);
    if let Some(k) = idempotency_key {
        req = req.header("Idempotency-Key", k);
    }
    if let Some(e) = event_uuid {
        req = req.header("X-Gitlab-Event-UUID", e);
    }
    let resp = req.send().await.expect("delivery sent");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

fn no_git(spec: gsr_sim::JobSpecInput) -> gsr_sim::JobSpecInput {
    spec.with_variable(VariableInput::new("GIT_STRATEGY", "none"))
}

async fn expect_success(env: &Env, rx: &Receiver, id: u64) {
    if let Err(e) = env
        .admin
        .wait_for_status(
            id,
            &["success", "failed", "canceled"],
            Duration::from_secs(90),
        )
        .await
    {
        panic!("{e}\n--- gsr stderr ---\n{}", rx.stderr());
    }
    let view = env.view(id).await;
    assert_eq!(
        view.status,
        "success",
        "job {id}: {:?}\n--- trace ---\n{}\n--- gsr stderr ---\n{}",
        view.failure_reason,
        env.trace(id).await,
        rx.stderr()
    );
}

/// The most jobs in flight at once, from the simulator's request log: a claim is a 201
/// from `jobs/request`, a job ends with its last `PUT /jobs/:id` (the final update). A
/// job's permit is released only after its final update was answered, and a claim is
/// sent only with a permit, so this count is exact, whatever the timing.
fn max_in_flight(log: &[RequestLogEntry]) -> usize {
    let mut last_put: HashMap<&str, u64> = HashMap::new();
    for e in log {
        if e.method == "PUT" && e.path.starts_with("/api/v4/jobs/") {
            last_put.insert(e.path.as_str(), e.seq);
        }
    }
    let ends: std::collections::HashSet<u64> = last_put.values().copied().collect();
    let (mut now, mut max) = (0i64, 0i64);
    for e in log {
        if e.path == "/api/v4/jobs/request" && e.status == 201 {
            now += 1;
            max = max.max(now);
        } else if ends.contains(&e.seq) {
            now -= 1;
        }
    }
    usize::try_from(max).unwrap_or(0)
}

fn claims(log: &[RequestLogEntry]) -> usize {
    log.iter()
        .filter(|e| e.path == "/api/v4/jobs/request" && e.status == 201)
        .count()
}

#[tokio::test]
async fn a_pending_hook_gets_its_job_claimed_and_run() {
    let env = Env::new().await;
    let id = env
        .enqueue(env.job(&["echo hello from the webhook", "cat README.md"]))
        .await;
    let rx = Receiver::start(&env, "basic", &["--log-format", "json"]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/", rx.base);

    let (status, body) = deliver(&http, &url, pending_hook(&env, id), None, None).await;
    assert_eq!(status, 202, "{body}");
    expect_success(&env, &rx, id).await;
    let trace = env.trace(id).await;
    assert!(trace.contains("hello from the webhook"), "{trace}");
    assert!(trace.contains("demo commit 3"), "sources fetched: {trace}");
    assert!(env.view(id).await.acknowledged, "two-phase commit");

    // A re-send starts nothing.
    let (status, body) = deliver(&http, &url, pending_hook(&env, id), None, None).await;
    assert_eq!(
        (status, body.starts_with("duplicate")),
        (200, true),
        "{body}"
    );
    let health = http
        .get(format!("{}/healthz", rx.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);

    // Structured logs with the job id and timings, and no secrets.
    let log = rx.stderr();
    let claimed = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "job claimed")
        .unwrap_or_else(|| panic!("no JSON 'job claimed' line in:\n{log}"));
    assert_eq!(claimed["fields"]["build_id"], id);
    assert!(
        claimed["fields"]["received_to_claimed_ms"].is_u64(),
        "{claimed}"
    );
    assert!(log.contains("claimed_to_finished_ms"), "{log}");
    assert!(
        !log.contains(&env.runner_token),
        "runner token leaked:\n{log}"
    );
    assert!(!log.contains(SECRET), "hook secret leaked:\n{log}");
    assert!(
        !trace.contains(&env.runner_token),
        "runner token in the job trace"
    );
}

#[tokio::test]
async fn a_job_whose_hook_was_lost_is_taken_by_the_reconcile_loop() {
    let env = Env::new().await;
    let first = env.enqueue(no_git(env.job(&["echo first"]))).await;
    let second = env.enqueue(no_git(env.job(&["echo second"]))).await;
    let rx = Receiver::start(&env, "lost", &[]).await;
    let http = reqwest::Client::new();
    // Only the first job's hook arrives.
    let (status, _) = deliver(
        &http,
        &format!("{}/", rx.base),
        pending_hook(&env, first),
        None,
        None,
    )
    .await;
    assert_eq!(status, 202);
    expect_success(&env, &rx, first).await;
    expect_success(&env, &rx, second).await;
}

#[tokio::test]
async fn a_storm_of_duplicate_deliveries_runs_each_job_exactly_once() {
    let env = Env::new().await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(
            env.enqueue(no_git(env.job(&["echo storm-job-$CI_JOB_ID"])))
                .await,
        );
    }
    let rx = Receiver::start(&env, "storm", &["--max-builds", "4"]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/", rx.base);
    // 10 deliveries per job: re-sends (same Idempotency-Key), several hooks for one event
    // (same event UUID), and plain repeats; all at once, interleaved across jobs.
    let mut tasks = Vec::new();
    for round in 0..10 {
        for &id in &ids {
            let (http, url, body) = (http.clone(), url.clone(), pending_hook(&env, id));
            let idem = (round % 2 == 0).then(|| format!("idem-{id}-{}", round % 4));
            let event = (round % 3 == 0).then(|| format!("event-{id}-{}", round % 2));
            tasks.push(tokio::spawn(async move {
                deliver(&http, &url, body, idem, event).await
            }));
        }
    }
    let mut accepted = 0;
    let mut duplicates = 0;
    for t in tasks {
        let (status, body) = t.await.expect("delivery task");
        match status {
            202 => accepted += 1,
            200 if body.starts_with("duplicate") => duplicates += 1,
            other => panic!("unexpected answer {other}: {body}"),
        }
    }
    assert_eq!((accepted, duplicates), (20, 180));
    for &id in &ids {
        expect_success(&env, &rx, id).await;
        let trace = env.trace(id).await;
        assert_eq!(
            trace.matches("Job succeeded").count(),
            1,
            "job {id} ran once: {trace}"
        );
        assert!(trace.contains(&format!("storm-job-{id}")), "{trace}");
    }
    let log = env.admin.requests().await.expect("request log");
    assert_eq!(claims(&log), 20, "one claim per job");
    assert!(max_in_flight(&log) <= 4);
}

#[tokio::test]
async fn sync_mode_answers_when_the_job_has_ended() {
    let env = Env::new().await;
    let id = env
        .enqueue(no_git(env.job(&["echo sync-job", "sleep 1", "exit 7"])))
        .await;
    let rx = Receiver::start(&env, "sync", &["--sync"]).await;
    let http = reqwest::Client::new();
    let (status, body) = deliver(
        &http,
        &format!("{}/", rx.base),
        pending_hook(&env, id),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}\n{}", rx.stderr());
    let summary: serde_json::Value = serde_json::from_str(&body).expect("JSON summary");
    assert_eq!(summary["job_id"], id);
    assert_eq!(summary["status"], "failed", "{summary}");
    assert_eq!(summary["failure_reason"], "script_failure");
    assert_eq!(summary["exit_code"], 7);
    assert_eq!(summary["delivery"], "accepted");
    // The answer came after GitLab had the final state.
    let view = env.view(id).await;
    assert_eq!(view.status, "failed");
    assert_eq!(view.exit_code, Some(7));
}

#[tokio::test]
async fn max_builds_bounds_the_jobs_in_flight() {
    let env = Env::new().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            env.enqueue(no_git(env.job(&["echo slot=$CI_CONCURRENT_ID", "sleep 1"])))
                .await,
        );
    }
    let rx = Receiver::start(&env, "max2", &["--max-builds", "2"]).await;
    let http = reqwest::Client::new();
    for &id in &ids {
        let (status, _) = deliver(
            &http,
            &format!("{}/", rx.base),
            pending_hook(&env, id),
            None,
            None,
        )
        .await;
        assert_eq!(status, 202);
    }
    for &id in &ids {
        expect_success(&env, &rx, id).await;
    }
    let log = env.admin.requests().await.expect("request log");
    assert_eq!(claims(&log), 5);
    let max = max_in_flight(&log);
    assert!(max <= 2, "at most 2 jobs at once, saw {max}");
    assert_eq!(max, 2, "five one-second jobs for two slots overlap");
    // Jobs running side by side get their own CI_CONCURRENT_ID (0 or 1).
    let mut slots = std::collections::BTreeSet::new();
    for &id in &ids {
        let trace = env.trace(id).await;
        let slot = ["slot=0\n", "slot=1\n"]
            .into_iter()
            .find(|s| trace.contains(s))
            .unwrap_or_else(|| panic!("no slot 0/1 in {trace}"));
        slots.insert(slot);
    }
    assert_eq!(slots.len(), 2, "both slots used: {slots:?}");
}

#[tokio::test]
async fn sigterm_aborts_running_jobs_and_exits() {
    let env = Env::new().await;
    let id = env
        .enqueue(no_git(env.job(&["echo running", "sleep 120"])))
        .await;
    let mut rx = Receiver::start(&env, "term", &[]).await;
    let http = reqwest::Client::new();
    let (status, _) = deliver(
        &http,
        &format!("{}/", rx.base),
        pending_hook(&env, id),
        None,
        None,
    )
    .await;
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env.trace(id).await.contains("running") {
        assert!(
            Instant::now() < deadline,
            "job never started: {}",
            rx.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rx.signal(Signal::SIGTERM);
    let status = rx.wait(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        rx.stderr()
    );
    let view = env.view(id).await;
    assert_eq!(view.status, "failed");
    assert_eq!(view.failure_reason.as_deref(), Some("runner_interrupted"));
}

#[tokio::test]
async fn sigquit_lets_the_running_job_finish() {
    let env = Env::new().await;
    let id = env
        .enqueue(no_git(env.job(&["echo running", "sleep 2", "echo done"])))
        .await;
    let mut rx = Receiver::start(&env, "quit", &[]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/", rx.base);
    let (status, _) = deliver(&http, &url, pending_hook(&env, id), None, None).await;
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env.trace(id).await.contains("running") {
        assert!(
            Instant::now() < deadline,
            "job never started: {}",
            rx.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rx.signal(Signal::SIGQUIT);
    let status = rx.wait(Duration::from_secs(60)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        rx.stderr()
    );
    let view = env.view(id).await;
    assert_eq!(view.status, "success", "{}", rx.stderr());
}

#[tokio::test]
async fn the_simulators_own_hooks_drive_the_runner() {
    let env = Env::new().await;
    let rx = Receiver::start(&env, "simhooks", &["--path", "/hooks/gitlab"]).await;
    env.admin
        .add_hook(
            env.project_id,
            &format!("{}/hooks/gitlab", rx.base),
            Some(SECRET),
        )
        .await
        .expect("hook added");
    let id = env.enqueue(env.job(&["echo driven-by-a-hook"])).await;
    expect_success(&env, &rx, id).await;
    assert!(env.trace(id).await.contains("driven-by-a-hook"));
    // GitLab saw its deliveries succeed: `pending` accepted (202), the rest ignored (200).
    let deliveries = env
        .admin
        .wait_for_deliveries(4, Duration::from_secs(30))
        .await
        .expect("deliveries");
    let pending: Vec<_> = deliveries
        .iter()
        .filter(|d| d.job_id == id && d.build_status == "pending")
        .collect();
    assert_eq!(pending.len(), 1, "{deliveries:#?}");
    assert_eq!(pending[0].status, Some(202));
    assert!(deliveries.iter().all(|d| d.succeeded()), "{deliveries:#?}");
}

#[tokio::test]
async fn a_dropped_delivery_is_reconciled() {
    let env = Env::new().await;
    let rx = Receiver::start(&env, "dropped", &["--wait-timeout", "30"]).await;
    env.admin
        .add_hook(env.project_id, &format!("{}/", rx.base), Some(SECRET))
        .await
        .expect("hook added");
    // A first job wakes the receiver through its hook; the reconcile loop then runs.
    let first = env.enqueue(no_git(env.job(&["echo first"]))).await;
    expect_success(&env, &rx, first).await;
    // All four events of the first job (created, pending, running, success) went out
    // before the fault is armed, so it hits the second job's.
    env.admin
        .wait_for_deliveries(4, Duration::from_secs(30))
        .await
        .expect("first job's deliveries");
    // Every delivery of the second job is lost (`created` and `pending`).
    env.admin
        .fault(Fault::webhook_drop(2))
        .await
        .expect("fault");
    let second = env.enqueue(no_git(env.job(&["echo second"]))).await;
    expect_success(&env, &rx, second).await;
    let deliveries = env.admin.deliveries().await.expect("deliveries");
    let lost = deliveries
        .iter()
        .find(|d| d.job_id == second && d.build_status == "pending")
        .expect("pending delivery logged");
    assert_eq!(
        lost.error.as_deref(),
        Some("dropped by fault"),
        "{deliveries:#?}"
    );
}

#[tokio::test]
async fn duplicated_sim_deliveries_start_nothing_extra() {
    let env = Env::new().await;
    let rx = Receiver::start(&env, "dup", &[]).await;
    env.admin
        .add_hook(env.project_id, &format!("{}/", rx.base), Some(SECRET))
        .await
        .expect("hook added");
    env.admin
        .fault(Fault::webhook_duplicate(10))
        .await
        .expect("fault");
    let id = env.enqueue(no_git(env.job(&["echo once"]))).await;
    expect_success(&env, &rx, id).await;
    let deliveries = env
        .admin
        .wait_for_deliveries(4, Duration::from_secs(30))
        .await
        .expect("deliveries");
    let pending: Vec<_> = deliveries
        .iter()
        .filter(|d| d.job_id == id && d.build_status == "pending")
        .collect();
    assert_eq!(pending.len(), 2, "{deliveries:#?}");
    let mut statuses: Vec<_> = pending.iter().map(|d| d.status).collect();
    statuses.sort();
    assert_eq!(statuses, vec![Some(200), Some(202)], "{deliveries:#?}");
    let log = env.admin.requests().await.expect("request log");
    assert_eq!(claims(&log), 1);
}
