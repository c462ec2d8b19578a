//! The `gsr-webhook` extension points the dispatcher relies on, against the simulator:
//! a `JobObserver` veto (skip / fail) and the graceful stop that never drops a job
//! request in flight.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gsr_gitlab::{Coordinator, Features, RetryPolicy, RunnerInfo};
use gsr_job::SecretString;
use gsr_sim::{JobSpecInput, SimConfig, SimHandle, VariableInput};
use gsr_webhook::{
    ClaimDecision, ClaimInfo, JobObserver, JobSummary, ObserverFuture, Runner, Webhook,
    WebhookConfig,
};
use gsr_worker::{RunnerIdentity, UploadTiming, WorkerConfig};

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
            long_poll: Duration::from_secs(2),
            trace_update_interval: 1,
            ..SimConfig::default()
        })
        .await
        .expect("sim");
        let admin = sim.admin();
        let project = admin.create_project("group/obs").await.expect("project");
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

    fn runner(&self) -> Runner {
        let info = RunnerInfo::new("shell", "bash", Features::shell_runner());
        Runner {
            coordinator: Coordinator::new(&self.sim.url, &info)
                .expect("url")
                .with_retry(RetryPolicy::fast()),
            runner_token: SecretString::from(self.token.clone()),
            system_id: "s_0123456789ab".into(),
            info,
            placement: Runner::in_process(Arc::new(gsr_exec_process::ProcessExecutor::new())),
            worker: WorkerConfig {
                builds_dir: self.dir.path().join("builds"),
                output_limit: 1024 * 1024,
                runner: RunnerIdentity {
                    name: "obs".into(),
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

    async fn wait_status(&self, id: u64, want: &str) -> gsr_sim::JobView {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.sim.admin().job(id).await.expect("view");
            if v.status == want {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "job {id}: {v:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn config() -> WebhookConfig {
    WebhookConfig {
        wait_timeout: Duration::from_secs(5),
        check_interval: Duration::from_millis(100),
        ..WebhookConfig::default()
    }
}

/// Answers `decision` and remembers what it saw.
struct Fixed {
    decision: ClaimDecision,
    claimed: Mutex<Vec<u64>>,
    ended: Mutex<Vec<JobSummary>>,
}

impl Fixed {
    fn new(decision: ClaimDecision) -> Arc<Fixed> {
        Arc::new(Fixed {
            decision,
            claimed: Mutex::new(Vec::new()),
            ended: Mutex::new(Vec::new()),
        })
    }
}

impl JobObserver for Fixed {
    fn claimed<'a>(&'a self, job: &'a ClaimInfo) -> ObserverFuture<'a, ClaimDecision> {
        self.claimed.lock().unwrap().push(job.job_id);
        Box::pin(async move { self.decision.clone() })
    }

    fn ended<'a>(&'a self, _job: &'a ClaimInfo, summary: &'a JobSummary) -> ObserverFuture<'a, ()> {
        self.ended.lock().unwrap().push(summary.clone());
        Box::pin(async {})
    }
}

#[tokio::test]
async fn a_fail_veto_reports_the_job_failed_without_running_it() {
    let sim = Sim::new().await;
    let id = sim.enqueue(&["echo must-not-run"]).await;
    let obs = Fixed::new(ClaimDecision::Fail("store down".into()));
    let w = Webhook::with_observer(config(), sim.runner(), obs.clone()).expect("webhook");
    w.reconcile();
    let view = sim.wait_status(id, "failed").await;
    assert_eq!(
        view.failure_reason.as_deref(),
        Some("runner_system_failure")
    );
    let trace = String::from_utf8_lossy(&sim.sim.admin().trace(id).await.unwrap()).into_owned();
    assert!(!trace.contains("must-not-run\n"), "{trace}");
    w.stop_claiming();
    w.drained().await;
    assert_eq!(*obs.claimed.lock().unwrap(), vec![id]);
    let ended = obs.ended.lock().unwrap().clone();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].status, "failed");
}

#[tokio::test]
async fn a_skip_veto_leaves_the_job_alone_and_run_runs_it() {
    let sim = Sim::new().await;
    let id = sim.enqueue(&["echo skipped"]).await;
    let obs = Fixed::new(ClaimDecision::Skip);
    let w = Webhook::with_observer(config(), sim.runner(), obs.clone()).expect("webhook");
    w.reconcile();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while obs.claimed.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.stop_claiming();
    w.drained().await;
    assert!(
        obs.ended.lock().unwrap().is_empty(),
        "skipped jobs do not end here"
    );
    let view = sim.sim.admin().job(id).await.expect("view");
    // GitLab assigned it (the simulator keeps it pending until the runner reports);
    // nobody ran or finished it here.
    assert_ne!(view.status, "success", "{view:?}");
    assert_ne!(view.status, "failed", "{view:?}");

    let id2 = sim.enqueue(&["echo ran"]).await;
    let obs = Fixed::new(ClaimDecision::Run);
    let w = Webhook::with_observer(config(), sim.runner(), obs.clone()).expect("webhook");
    w.reconcile();
    sim.wait_status(id2, "success").await;
    w.stop_claiming();
    w.drained().await;
    assert_eq!(obs.ended.lock().unwrap()[0].status, "success");
}

#[tokio::test]
async fn a_graceful_stop_answers_the_request_in_flight_and_runs_its_job() {
    let sim = Sim::new().await;
    let obs = Fixed::new(ClaimDecision::Run);
    let w = Webhook::with_observer(config(), sim.runner(), obs.clone()).expect("webhook");
    w.reconcile();
    // Let the loop reach its long poll (the simulator holds it for 2 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.stop_claiming_gracefully();
    assert!(w.status().stopping);
    let id = sim.enqueue(&["echo late"]).await;
    tokio::time::timeout(Duration::from_secs(60), w.drained())
        .await
        .expect("drains");
    let view = sim.sim.admin().job(id).await.expect("view");
    // Either the request in flight was answered with the job and it ran, or (Workhorse
    // answers a held long poll with a bare 204 when the queue changes) no request took
    // it and it is still unassigned. Never assigned to us and then dropped.
    if view.status == "success" {
        assert_eq!(*obs.claimed.lock().unwrap(), vec![id]);
    } else {
        assert_eq!(view.status, "pending", "{view:?}");
        assert_eq!(view.runner_id, None, "assigned but never run: {view:?}");
        assert!(obs.claimed.lock().unwrap().is_empty());
    }
    assert!(!w.status().reconciling);
}
