//! The dispatcher against the GitLab simulator and an SQLite store: webhook → claim →
//! recorded history, secrets, two replicas on one database, the store's claim uniqueness,
//! and restart recovery.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gsr_dispatch::{DispatchSettings, Dispatcher, Durations, Recorder, LOST_REASON};
use gsr_job::SecretString;
use gsr_sim::{JobSpecInput, SimConfig, SimHandle, VariableInput};
use gsr_store::{
    AccessLevel, GitlabIdentity, Job, JobStatus, NewClaim, NewRunner, RunnerId, SecretBox,
    SqliteStore, Store, StoreError, User,
};
use gsr_webhook::{ClaimDecision, ClaimInfo, Delivery};
use gsr_worker::{RunnerIdentity, UploadTiming, WorkerConfig};

const FIXTURE: &str = include_str!("../../gsr-gitlab/tests/fixtures/job_hook.json");
const KEY: [u8; 32] = [7; 32];

fn worker(builds: &Path) -> WorkerConfig {
    WorkerConfig {
        builds_dir: builds.to_path_buf(),
        output_limit: 4 * 1024 * 1024,
        runner: RunnerIdentity {
            name: "dispatch-test".into(),
            short_token: String::new(),
            system_id: String::new(),
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
    }
}

fn settings() -> DispatchSettings {
    DispatchSettings {
        wait_timeout: Duration::from_secs(1),
        check_interval: Duration::from_millis(100),
        reconcile_interval: Duration::from_millis(500),
        retry: Some(gsr_gitlab::RetryPolicy::fast()),
    }
}

struct Env {
    sim: SimHandle,
    project_id: u64,
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    user: User,
    runner: RunnerId,
    secret: String,
}

impl Env {
    async fn new(concurrency: u32) -> Env {
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
        let project = admin
            .create_project("group/dispatch")
            .await
            .expect("project");
        let (gitlab_runner_id, token) = admin.create_runner(&[], true).await.expect("runner");
        let store = open_store(dir.path()).await;
        let user = store
            .upsert_user_from_gitlab(GitlabIdentity {
                gitlab_user_id: 1,
                username: "alice".into(),
                name: "Alice".into(),
            })
            .await
            .expect("user");
        let created = store
            .create_runner(
                user.id,
                NewRunner {
                    gitlab_url: sim.url.clone(),
                    gitlab_runner_id: i64::try_from(gitlab_runner_id).expect("id"),
                    token: SecretString::from(token),
                    description: "runner A".into(),
                    tags: vec![],
                    run_untagged: true,
                    locked: false,
                    access_level: AccessLevel::NotProtected,
                    maximum_timeout: None,
                    paused: false,
                    backend: "local".into(),
                    backend_settings: serde_json::json!({}),
                    concurrency,
                },
                10,
            )
            .await
            .expect("runner created");
        use gsr_job::ExposeSecret;
        Env {
            sim,
            project_id: project.id,
            dir,
            store,
            user,
            runner: created.runner.id,
            secret: created.webhook_secret.expose_secret().to_owned(),
        }
    }

    fn dispatcher(&self, store: Arc<dyn Store>, replica: &str) -> Arc<Dispatcher> {
        Dispatcher::with_settings(
            store,
            Arc::new(gsr_exec_process::ProcessExecutor::new()),
            worker(&self.dir.path().join(format!("builds-{replica}"))),
            replica.into(),
            settings(),
        )
    }

    async fn enqueue(&self, script: &[&str]) -> u64 {
        let mut spec = JobSpecInput::new(self.project_id, script.iter().copied())
            .with_variable(VariableInput::new("GIT_STRATEGY", "none"));
        spec.sha = Some("a".repeat(40));
        self.sim.admin().create_job(&spec).await.expect("job").0
    }

    fn delivery(&self, build_id: u64, secret: Option<&str>) -> Delivery {
        let mut v: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture");
        v["build_id"] = build_id.into();
        v["build_status"] = "pending".into();
        Delivery {
            event: Some("Job Hook".into()),
            token: secret.map(|s| s.as_bytes().to_vec()),
            body: v.to_string().into(),
            ..Delivery::default()
        }
    }

    async fn history(&self) -> Vec<Job> {
        self.store
            .jobs_for_runner(self.user.id, self.runner, 1000)
            .await
            .expect("history")
    }

    /// Wait until the store has `n` finished jobs of the runner.
    async fn wait_finished(&self, n: usize) -> Vec<Job> {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let jobs = self.history().await;
            if jobs.iter().filter(|j| j.status.is_finished()).count() >= n {
                return jobs;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "jobs did not finish: {jobs:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn open_store(dir: &Path) -> Arc<dyn Store> {
    Arc::new(
        SqliteStore::open(&dir.join("store"), SecretBox::from_key(KEY))
            .await
            .expect("store"),
    )
}

#[tokio::test]
async fn a_webhook_runs_the_job_and_the_store_keeps_its_history() {
    let env = Env::new(2).await;
    let id = env
        .enqueue(&["echo hello-from-dispatch", "sleep 0.2"])
        .await;
    let d = env.dispatcher(env.store.clone(), "r1");
    d.refresh().await.expect("refresh");
    assert_eq!(d.runners(), vec![env.runner]);

    let r = d
        .handle_webhook(env.runner, env.delivery(id, Some(&env.secret)))
        .await;
    assert_eq!(r.status, 202, "{}", r.message);

    let jobs = env.wait_finished(1).await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.gitlab_job_id, i64::try_from(id).unwrap());
    assert_eq!(job.status, JobStatus::Success, "{job:?}");
    assert_eq!(job.replica, "r1");
    assert_eq!(job.failure_reason, None);
    let dur = Durations::of(job);
    assert!(dur.pickup.is_some(), "{dur:?}");
    let run = dur.run.expect("run duration");
    assert!(run >= Duration::from_millis(200), "{dur:?}");
    let view = env.sim.admin().job(id).await.expect("view");
    assert_eq!(view.status, "success");

    // A failing job is recorded with GitLab's failure reason.
    let id2 = env.enqueue(&["exit 3"]).await;
    let r = d
        .handle_webhook(env.runner, env.delivery(id2, Some(&env.secret)))
        .await;
    assert_eq!(r.status, 202, "{}", r.message);
    let jobs = env.wait_finished(2).await;
    let failed = jobs
        .iter()
        .find(|j| j.gitlab_job_id == i64::try_from(id2).unwrap())
        .expect("recorded");
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.failure_reason.as_deref(), Some("script_failure"));
    d.shutdown().await;
}

#[tokio::test]
async fn secrets_unknown_and_paused_runners() {
    let env = Env::new(1).await;
    let d = env.dispatcher(env.store.clone(), "r1");
    for token in [Some("wrong"), None, Some("")] {
        let r = d.handle_webhook(env.runner, env.delivery(1, token)).await;
        assert_eq!((r.status, r.message.as_str()), (401, "unauthorized"));
    }
    let r = d
        .handle_webhook(RunnerId::new(), env.delivery(1, Some(&env.secret)))
        .await;
    assert_eq!(r.status, 404);
    assert!(d.runners().is_empty(), "nothing started");

    env.store
        .set_paused(env.user.id, env.runner, true)
        .await
        .expect("pause");
    let r = d
        .handle_webhook(env.runner, env.delivery(1, Some(&env.secret)))
        .await;
    assert_eq!(r.status, 200);
    assert!(r.message.starts_with("ignored"), "{}", r.message);
    assert_eq!(d.refresh().await.expect("refresh"), 0);

    // Resumed: picked up by refresh; deleted: dropped.
    env.store
        .set_paused(env.user.id, env.runner, false)
        .await
        .expect("resume");
    assert_eq!(d.refresh().await.expect("refresh"), 1);
    env.store
        .delete_runner(env.user.id, env.runner)
        .await
        .expect("delete");
    assert_eq!(d.refresh().await.expect("refresh"), 0);
    d.shutdown().await;
}

#[tokio::test]
async fn two_replicas_on_one_database_run_every_job_once() {
    let env = Env::new(3).await;
    // Each replica opens the database file on its own, as two processes would.
    let a = env.dispatcher(open_store(env.dir.path()).await, "replica-a");
    let b = env.dispatcher(open_store(env.dir.path()).await, "replica-b");
    let shutdown = gsr_exec::CancellationToken::new();
    let ta = a.start(shutdown.clone()).await.expect("start a");
    let tb = b.start(shutdown.clone()).await.expect("start b");

    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(env.enqueue(&[&format!("echo job-{i}")]).await);
    }
    for (i, id) in ids.iter().enumerate() {
        // Deliver every job to both replicas, in alternating order.
        let order = if i % 2 == 0 { [&a, &b] } else { [&b, &a] };
        for d in order {
            let r = d
                .handle_webhook(env.runner, env.delivery(*id, Some(&env.secret)))
                .await;
            assert!(r.status == 202 || r.status == 200, "{}", r.message);
        }
    }
    let jobs = env.wait_finished(20).await;
    assert_eq!(jobs.len(), 20, "{jobs:#?}");
    let mut recorded: Vec<i64> = jobs.iter().map(|j| j.gitlab_job_id).collect();
    recorded.sort_unstable();
    let mut want: Vec<i64> = ids.iter().map(|i| i64::try_from(*i).unwrap()).collect();
    want.sort_unstable();
    assert_eq!(recorded, want, "each job recorded exactly once");
    assert!(
        jobs.iter().all(|j| j.status == JobStatus::Success),
        "{jobs:#?}"
    );
    for id in &ids {
        let view = env.sim.admin().job(*id).await.expect("view");
        assert_eq!(view.status, "success", "job {id}");
        let trace =
            String::from_utf8_lossy(&env.sim.admin().trace(*id).await.unwrap()).into_owned();
        assert_eq!(trace.matches("Job succeeded").count(), 1, "{trace}");
    }
    shutdown.cancel();
    ta.await.expect("a drained");
    tb.await.expect("b drained");
}

#[tokio::test]
async fn a_second_claim_of_the_same_job_is_refused_and_not_run() {
    let env = Env::new(1).await;
    let claim = |replica: &str| NewClaim {
        runner_id: env.runner,
        gitlab_job_id: 4242,
        replica: replica.into(),
        queued_duration: None,
    };
    env.store
        .record_claim(claim("a"))
        .await
        .expect("first claim");
    // Idempotent for the same replica, refused for another.
    env.store.record_claim(claim("a")).await.expect("repeat");
    match env.store.record_claim(claim("b")).await {
        Err(StoreError::AlreadyClaimed { replica }) => assert_eq!(replica, "a"),
        other => panic!("expected AlreadyClaimed, got {other:?}"),
    }
    // Through the dispatcher's recorder: replica b must not run it.
    let info = ClaimInfo {
        job_id: 4242,
        project: None,
        queued_duration: None,
    };
    let b = Recorder::new(env.store.clone(), env.runner, "b".into());
    assert_eq!(b.on_claim(&info).await, ClaimDecision::Skip);
    let a = Recorder::new(env.store.clone(), env.runner, "a".into());
    assert_eq!(a.on_claim(&info).await, ClaimDecision::Run);
    let jobs = env.history().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].status, JobStatus::Running);
    assert_eq!(jobs[0].replica, "a");
}

#[tokio::test]
async fn recovery_marks_the_replicas_unfinished_jobs_lost() {
    let env = Env::new(1).await;
    let claim = |id: i64, replica: &str| NewClaim {
        runner_id: env.runner,
        gitlab_job_id: id,
        replica: replica.into(),
        queued_duration: Some(Duration::from_secs(2)),
    };
    let claimed = env.store.record_claim(claim(1, "r1")).await.unwrap();
    let running = env.store.record_claim(claim(2, "r1")).await.unwrap();
    env.store
        .update_job_status(running.id, JobStatus::Running, None)
        .await
        .unwrap();
    let done = env.store.record_claim(claim(3, "r1")).await.unwrap();
    env.store
        .update_job_status(done.id, JobStatus::Success, None)
        .await
        .unwrap();
    let other = env.store.record_claim(claim(4, "r2")).await.unwrap();

    let d = env.dispatcher(env.store.clone(), "r1");
    let lost = d.recover().await.expect("recover");
    let mut lost_ids: Vec<_> = lost.iter().map(|j| j.id).collect();
    lost_ids.sort();
    let mut want = vec![claimed.id, running.id];
    want.sort();
    assert_eq!(lost_ids, want);
    for j in env.history().await {
        let expect = if j.id == claimed.id || j.id == running.id {
            JobStatus::Lost
        } else if j.id == done.id {
            JobStatus::Success
        } else {
            assert_eq!(j.id, other.id);
            JobStatus::Claimed
        };
        assert_eq!(j.status, expect, "{j:?}");
        if expect == JobStatus::Lost {
            assert_eq!(j.failure_reason.as_deref(), Some(LOST_REASON));
        }
    }
    // Nothing left to recover; start() recovers too and is a no-op now.
    assert!(d.recover().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_reconciling_long_poll_claims_jobs_without_a_webhook_and_shutdown_drains() {
    let env = Env::new(2).await;
    let d = env.dispatcher(env.store.clone(), "r1");
    let shutdown = gsr_exec::CancellationToken::new();
    let task = d.start(shutdown.clone()).await.expect("start");
    // No delivery at all: the hook was lost.
    let id = env.enqueue(&["echo no-hook", "sleep 1"]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while env.history().await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Shutdown while the job runs: the task ends only once the job ended and was recorded.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("drains")
        .expect("task");
    let jobs = env.history().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].gitlab_job_id, i64::try_from(id).unwrap());
    assert_eq!(jobs[0].status, JobStatus::Success, "{:?}", jobs[0]);
    // After shutdown deliveries are refused.
    let r = d
        .handle_webhook(env.runner, env.delivery(id, Some(&env.secret)))
        .await;
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn a_runner_edited_after_start_gets_a_new_receiver() {
    let env = Env::new(1).await;
    let d = env.dispatcher(env.store.clone(), "r1");
    // No refresh: the first delivery builds the receiver.
    let id = env.enqueue(&["echo first"]).await;
    let r = d
        .handle_webhook(env.runner, env.delivery(id, Some(&env.secret)))
        .await;
    assert_eq!(r.status, 202, "{}", r.message);
    env.wait_finished(1).await;
    env.store
        .update_runner(
            env.user.id,
            env.runner,
            gsr_store::RunnerPatch {
                concurrency: Some(3),
                ..Default::default()
            },
        )
        .await
        .expect("edit");
    let id2 = env.enqueue(&["echo second"]).await;
    let r = d
        .handle_webhook(env.runner, env.delivery(id2, Some(&env.secret)))
        .await;
    assert_eq!(r.status, 202, "{}", r.message);
    let jobs = env.wait_finished(2).await;
    assert!(
        jobs.iter().all(|j| j.status == JobStatus::Success),
        "{jobs:#?}"
    );
    assert_eq!(d.runners(), vec![env.runner]);
    d.shutdown().await;
}
