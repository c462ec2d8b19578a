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
        ..DispatchSettings::default()
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
        job_token: None,
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
            // Claimed without a job token: GitLab could not be told.
            assert_eq!(j.recovery, Some(gsr_store::Recovery::NoToken));
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

/// Every active runner keeps a job request open for good: long after the reconcile
/// window (1 s here), with a ticker that will not come (an hour), a job whose hook was lost
/// is still taken. Loops that stopped at their window and waited for the ticker left every
/// runner without a request until the next tick.
#[tokio::test]
async fn reconcile_loops_keep_polling_between_ticks() {
    let env = Env::new(1).await;
    let d = Dispatcher::with_settings(
        env.store.clone(),
        Arc::new(gsr_exec_process::ProcessExecutor::new()),
        worker(&env.dir.path().join("builds")),
        "r1".into(),
        DispatchSettings {
            reconcile_interval: Duration::from_secs(3600),
            ..settings()
        },
    );
    let shutdown = gsr_exec::CancellationToken::new();
    let task = d.start(shutdown.clone()).await.expect("start");
    // Several windows (and simulator long polls of 0.5 s) go by without a job.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let id = env.enqueue(&["echo still-polling"]).await;
    let jobs = env.wait_finished(1).await;
    assert_eq!(jobs[0].gitlab_job_id, i64::try_from(id).unwrap());
    assert_eq!(jobs[0].status, JobStatus::Success, "{:?}", jobs[0]);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("drains")
        .expect("task");
}

/// Runners of one GitLab share one HTTP client (up to 50 per client).
#[tokio::test]
async fn runners_of_one_gitlab_share_an_http_client() {
    let env = Env::new(1).await;
    let admin = env.sim.admin();
    for i in 0..3 {
        let (gitlab_runner_id, token) = admin.create_runner(&[], true).await.expect("runner");
        env.store
            .create_runner(
                env.user.id,
                NewRunner {
                    gitlab_url: format!("{}/", env.sim.url),
                    gitlab_runner_id: i64::try_from(gitlab_runner_id).expect("id"),
                    token: SecretString::from(token),
                    description: format!("runner {i}"),
                    tags: vec![],
                    run_untagged: true,
                    locked: false,
                    access_level: AccessLevel::NotProtected,
                    maximum_timeout: None,
                    paused: false,
                    backend: "local".into(),
                    backend_settings: serde_json::json!({}),
                    concurrency: 1,
                },
                10,
            )
            .await
            .expect("runner created");
    }
    let d = env.dispatcher(env.store.clone(), "r1");
    assert_eq!(d.refresh().await.expect("refresh"), 4);
    assert_eq!(d.http_clients(), 1);
    // And each still claims with its own token: a job through the first runner's hook.
    let id = env.enqueue(&["echo shared-client"]).await;
    let r = d
        .handle_webhook(env.runner, env.delivery(id, Some(&env.secret)))
        .await;
    assert_eq!(r.status, 202, "{}", r.message);
    env.wait_finished(1).await;
    d.shutdown().await;
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

// ---- recovery tells GitLab ----------------------------------------------------------------

/// What a replica that died did before dying: claim a job in GitLab with the runner token,
/// optionally acknowledge it and send some trace; returns the job id and its token.
async fn claim_in_gitlab(env: &Env, ack: bool, output: Option<&str>) -> (u64, SecretString) {
    use gsr_gitlab::{Coordinator, Features, JobRequest, JobUpdate, RunnerInfo};
    let token = env.store.runner_token(env.runner).await.expect("token");
    let info = RunnerInfo::new("shell", "bash", Features::shell_runner());
    let c = Coordinator::new(&env.sim.url, &info)
        .expect("coordinator")
        .with_retry(gsr_gitlab::RetryPolicy::fast());
    let system_id = gsr_gitlab::system_id::random();
    let job = match c
        .request_job(&token, &system_id, None, &info)
        .await
        .expect("request")
    {
        JobRequest::Job(j) => j,
        other => panic!("expected a job, got {other:?}"),
    };
    let client = c.job_client(job.spec.id, job.spec.token.clone());
    if ack {
        let r = client.update(&JobUpdate::running(None)).await;
        assert_eq!(r.result, gsr_gitlab::UpdateResult::Accepted);
    }
    if let Some(out) = output {
        let r = client.patch_trace(0, out.as_bytes().to_vec(), false).await;
        assert!(
            matches!(r.result, gsr_gitlab::PatchResult::Accepted { .. }),
            "{r:?}"
        );
    }
    (job.spec.id, job.spec.token)
}

/// Record the claim the way the dead replica's recorder did.
async fn record_dead_claim(env: &Env, id: u64, token: SecretString, running: bool) -> Job {
    let job = env
        .store
        .record_claim_with_token(
            NewClaim {
                runner_id: env.runner,
                gitlab_job_id: i64::try_from(id).unwrap(),
                replica: "r1".into(),
                queued_duration: None,
            },
            Some(token),
        )
        .await
        .expect("claim");
    if running {
        env.store
            .update_job_status(job.id, JobStatus::Running, None)
            .await
            .expect("running");
    }
    job
}

#[tokio::test]
async fn recovery_reports_the_dead_replicas_jobs_to_gitlab_as_failed() {
    let env = Env::new(3).await;
    // A: acknowledged, with some output; B: claimed, never acknowledged; C: already
    // finished in GitLab (the dead replica got the final state out, not the store write).
    let ids: Vec<u64> = futures_ids(&env, 3).await;
    let (a, a_token) = claim_in_gitlab(&env, true, Some("partial output\n")).await;
    let (b, b_token) = claim_in_gitlab(&env, false, None).await;
    let (c, c_token) = claim_in_gitlab(&env, true, None).await;
    let mut claimed = vec![a, b, c];
    claimed.sort_unstable();
    assert_eq!(claimed, ids);
    {
        use gsr_gitlab::{Coordinator, Features, JobUpdate, RunnerInfo};
        let info = RunnerInfo::new("shell", "bash", Features::shell_runner());
        let client = Coordinator::new(&env.sim.url, &info)
            .unwrap()
            .job_client(c, c_token.clone());
        let r = client
            .update(&JobUpdate {
                state: "success",
                failure_reason: None,
                exit_code: None,
                output: None,
            })
            .await;
        assert_eq!(r.result, gsr_gitlab::UpdateResult::Accepted);
    }
    let ja = record_dead_claim(&env, a, a_token, true).await;
    let jb = record_dead_claim(&env, b, b_token, false).await;
    let jc = record_dead_claim(&env, c, c_token, true).await;
    // GitLab asks once to repeat a final state (202): recovery repeats it.
    env.sim
        .admin()
        .fault(gsr_sim::Fault::final_202(1))
        .await
        .expect("fault");

    let d = env.dispatcher(env.store.clone(), "r1");
    let lost = tokio::time::timeout(Duration::from_secs(120), d.recover())
        .await
        .expect("recovery ends")
        .expect("recover");
    assert_eq!(lost.len(), 3, "{lost:#?}");

    for (id, job, want) in [
        (a, &ja, gsr_store::Recovery::Reported),
        (b, &jb, gsr_store::Recovery::Reported),
        (c, &jc, gsr_store::Recovery::AlreadyOver),
    ] {
        let view = env.sim.admin().job(id).await.expect("view");
        let recorded = lost.iter().find(|j| j.id == job.id).expect("recorded");
        assert_eq!(recorded.status, JobStatus::Lost);
        assert_eq!(recorded.failure_reason.as_deref(), Some(LOST_REASON));
        assert_eq!(recorded.recovery, Some(want), "job {id}");
        assert!(env.store.job_token(job.id).await.unwrap().is_none());
        assert_eq!(
            env.store.raw_job_token_column(job.id).await.unwrap(),
            None,
            "token column cleared"
        );
        if want == gsr_store::Recovery::Reported {
            assert_eq!(view.status, "failed", "job {id}");
            assert_eq!(
                view.failure_reason.as_deref(),
                Some("runner_system_failure")
            );
        } else {
            assert_eq!(view.status, "success", "left alone");
        }
    }
    // The line is appended after what the dead worker had sent (the 416 resync).
    let trace = String::from_utf8_lossy(&env.sim.admin().trace(a).await.unwrap()).into_owned();
    assert!(trace.starts_with("partial output\n"), "{trace:?}");
    assert!(
        trace.contains("gsr serve replica \"r1\" restarted while this job ran"),
        "{trace:?}"
    );
    let trace = String::from_utf8_lossy(&env.sim.admin().trace(b).await.unwrap()).into_owned();
    assert!(trace.contains("restarted while this job ran"), "{trace:?}");
    // Nothing left to recover.
    assert!(d.recover().await.unwrap().is_empty());
}

/// The ids of the next `n` jobs, enqueued now.
async fn futures_ids(env: &Env, n: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(env.enqueue(&[&format!("echo {i}")]).await);
    }
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn recovery_gives_up_on_an_unreachable_gitlab_and_still_records_the_job() {
    let env = Env::new(1).await;
    env.enqueue(&["echo x"]).await;
    let (id, token) = claim_in_gitlab(&env, true, None).await;
    let job = record_dead_claim(&env, id, token, true).await;
    // Every job update fails for longer than the retries last.
    env.sim
        .admin()
        .fault(gsr_sim::Fault::status(
            gsr_sim::FaultRoute::UpdateJob,
            503,
            1000,
        ))
        .await
        .expect("fault");
    let d = env.dispatcher(env.store.clone(), "r1");
    let lost = tokio::time::timeout(Duration::from_secs(120), d.recover())
        .await
        .expect("recovery ends")
        .expect("recover");
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].id, job.id);
    assert_eq!(lost[0].recovery, Some(gsr_store::Recovery::Unreachable));
    assert_eq!(env.store.raw_job_token_column(job.id).await.unwrap(), None);
    env.sim.admin().clear_faults().await.unwrap();
    assert_eq!(env.sim.admin().job(id).await.unwrap().status, "running");
}

#[tokio::test]
async fn start_recovers_in_the_background_and_claims_meanwhile() {
    let env = Env::new(2).await;
    env.enqueue(&["echo old"]).await;
    let (old, token) = claim_in_gitlab(&env, true, None).await;
    let dead = record_dead_claim(&env, old, token, true).await;
    let d = env.dispatcher(env.store.clone(), "r1");
    let shutdown = gsr_exec::CancellationToken::new();
    let task = d.start(shutdown.clone()).await.expect("start");
    let fresh = env.enqueue(&["echo new"]).await;
    let jobs = env.wait_finished(2).await;
    let old_job = jobs.iter().find(|j| j.id == dead.id).expect("old");
    assert_eq!(old_job.status, JobStatus::Lost);
    assert_eq!(old_job.recovery, Some(gsr_store::Recovery::Reported));
    let new_job = jobs
        .iter()
        .find(|j| j.gitlab_job_id == i64::try_from(fresh).unwrap())
        .expect("new job recorded");
    assert_eq!(new_job.status, JobStatus::Success, "{new_job:?}");
    assert_eq!(env.sim.admin().job(old).await.unwrap().status, "failed");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("stops")
        .expect("task");
}

// ---- shutdown: grace, then abort ------------------------------------------------------

/// Start a dispatcher with `grace`, run `sleep 30` and wait until it runs.
async fn long_job(
    env: &Env,
    grace: Duration,
) -> (
    Arc<Dispatcher>,
    gsr_exec::CancellationToken,
    tokio::task::JoinHandle<()>,
    u64,
) {
    let d = Dispatcher::with_settings(
        env.store.clone(),
        Arc::new(gsr_exec_process::ProcessExecutor::new()),
        worker(&env.dir.path().join("builds-long")),
        "r1".into(),
        DispatchSettings {
            shutdown_grace: grace,
            final_update_timeout: Duration::from_secs(60),
            ..settings()
        },
    );
    let shutdown = gsr_exec::CancellationToken::new();
    let task = d.start(shutdown.clone()).await.expect("start");
    let id = env.enqueue(&["echo started", "sleep 30"]).await;
    let r = d
        .handle_webhook(env.runner, env.delivery(id, Some(&env.secret)))
        .await;
    assert_eq!(r.status, 202, "{}", r.message);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let trace = env.sim.admin().trace(id).await.unwrap_or_default();
        if String::from_utf8_lossy(&trace).contains("started") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "job never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(d.jobs_running(), 1);
    (d, shutdown, task, id)
}

async fn assert_aborted(env: &Env, id: u64) {
    let view = env.sim.admin().job(id).await.expect("view");
    assert_eq!(
        view.status, "failed",
        "GitLab sees the job failed: {view:?}"
    );
    let jobs = env.history().await;
    let job = jobs
        .iter()
        .find(|j| j.gitlab_job_id == i64::try_from(id).unwrap())
        .expect("recorded");
    assert_eq!(job.status, JobStatus::Failed, "{job:?}");
    assert_eq!(job.failure_reason.as_deref(), Some("runner_interrupted"));
    assert_eq!(env.store.raw_job_token_column(job.id).await.unwrap(), None);
    assert_eq!(
        env.store.count_unfinished_jobs(env.runner).await.unwrap(),
        0
    );
}

#[tokio::test]
async fn shutdown_aborts_jobs_still_running_after_the_grace_period() {
    let env = Env::new(1).await;
    let (d, shutdown, task, id) = long_job(&env, Duration::from_secs(1)).await;
    shutdown.cancel();
    // Hang guard only: the job would sleep 30 s, the grace is 1 s.
    tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .expect("shutdown ends")
        .expect("task");
    assert_eq!(d.jobs_running(), 0);
    assert_aborted(&env, id).await;
}

#[tokio::test]
async fn abort_all_ends_the_grace_period_at_once() {
    let env = Env::new(1).await;
    // A grace far longer than the job: only abort_all can end the shutdown early.
    let (_d, shutdown, task, id) = long_job(&env, Duration::from_secs(3600)).await;
    shutdown.cancel();
    let d2 = _d.clone();
    let abort = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        d2.abort_all();
    });
    tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .expect("shutdown ends after abort_all")
        .expect("task");
    abort.await.unwrap();
    assert_aborted(&env, id).await;
}

#[tokio::test]
async fn abort_all_without_shutdown_aborts_and_refuses_new_work() {
    let env = Env::new(1).await;
    let (d, shutdown, task, id) = long_job(&env, Duration::from_secs(3600)).await;
    d.abort_all();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while env.store.count_unfinished_jobs(env.runner).await.unwrap() > 0 {
        assert!(std::time::Instant::now() < deadline, "job not aborted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_aborted(&env, id).await;
    let r = d
        .handle_webhook(env.runner, env.delivery(id, Some(&env.secret)))
        .await;
    assert_eq!(r.status, 503);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("stops")
        .expect("task");
}

// ---- metrics ---------------------------------------------------------------------------

/// A minimal `metrics` recorder for tests: every series by `name{label=value,…}`.
mod test_recorder {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};

    #[derive(Default)]
    pub struct Series {
        counter: AtomicU64,
        gauge: Mutex<f64>,
        samples: Mutex<Vec<f64>>,
    }

    impl metrics::CounterFn for Series {
        fn increment(&self, value: u64) {
            self.counter.fetch_add(value, Ordering::SeqCst);
        }
        fn absolute(&self, value: u64) {
            self.counter.store(value, Ordering::SeqCst);
        }
    }

    impl metrics::GaugeFn for Series {
        fn increment(&self, value: f64) {
            *self.gauge.lock().unwrap() += value;
        }
        fn decrement(&self, value: f64) {
            *self.gauge.lock().unwrap() -= value;
        }
        fn set(&self, value: f64) {
            *self.gauge.lock().unwrap() = value;
        }
    }

    impl metrics::HistogramFn for Series {
        fn record(&self, value: f64) {
            self.samples.lock().unwrap().push(value);
        }
    }

    #[derive(Default)]
    pub struct TestRecorder {
        series: Mutex<BTreeMap<String, Arc<Series>>>,
    }

    impl TestRecorder {
        fn get(&self, key: &Key) -> Arc<Series> {
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let name = if labels.is_empty() {
                key.name().to_string()
            } else {
                format!("{}{{{}}}", key.name(), labels.join(","))
            };
            self.series.lock().unwrap().entry(name).or_default().clone()
        }

        fn find(&self, name: &str) -> Option<Arc<Series>> {
            self.series.lock().unwrap().get(name).cloned()
        }

        pub fn counter(&self, name: &str) -> u64 {
            self.find(name)
                .map_or(0, |s| s.counter.load(Ordering::SeqCst))
        }

        pub fn gauge(&self, name: &str) -> Option<f64> {
            self.find(name).map(|s| *s.gauge.lock().unwrap())
        }

        pub fn samples(&self, name: &str) -> Vec<f64> {
            self.find(name)
                .map(|s| s.samples.lock().unwrap().clone())
                .unwrap_or_default()
        }

        pub fn names(&self) -> Vec<String> {
            self.series.lock().unwrap().keys().cloned().collect()
        }
    }

    impl metrics::Recorder for TestRecorder {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(self.get(key))
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(self.get(key))
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(self.get(key))
        }
    }
}

// A current-thread runtime: every task (the sim's too) runs on this thread, so the
// thread-local recorder sees exactly this test's metrics.
#[tokio::test(flavor = "current_thread")]
async fn metrics_are_emitted_with_fixed_names_and_labels() {
    use gsr_dispatch::metric;
    let rec = test_recorder::TestRecorder::default();
    let _guard = metrics::set_default_local_recorder(&rec);

    let env = Env::new(1).await;
    let d = env.dispatcher(env.store.clone(), "r1");
    assert_eq!(d.refresh().await.expect("refresh"), 1);
    assert_eq!(rec.gauge(metric::RUNNERS_ACTIVE), Some(1.0));

    // Deliveries of every kind.
    let id = env.enqueue(&["echo metrics"]).await;
    let results = [
        d.handle_webhook(env.runner, env.delivery(id, Some("wrong")))
            .await,
        d.handle_webhook(RunnerId::new(), env.delivery(id, Some(&env.secret)))
            .await,
        d.handle_webhook(
            env.runner,
            Delivery {
                event: Some("Push Hook".into()),
                ..env.delivery(id, Some(&env.secret))
            },
        )
        .await,
        d.handle_webhook(
            env.runner,
            Delivery {
                body: "not json".into(),
                ..env.delivery(id, Some(&env.secret))
            },
        )
        .await,
        d.handle_webhook(env.runner, env.delivery(id, Some(&env.secret)))
            .await,
        d.handle_webhook(env.runner, env.delivery(id, Some(&env.secret)))
            .await,
    ];
    let statuses: Vec<u16> = results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [401, 404, 200, 400, 202, 200]);
    let deliveries = |result: &str| {
        rec.counter(&format!(
            "{}{{result={result}}}",
            metric::WEBHOOK_DELIVERIES
        ))
    };
    for result in [
        "unauthorized",
        "not_found",
        "ignored",
        "rejected",
        "accepted",
        "duplicate",
    ] {
        assert_eq!(deliveries(result), 1, "{result}: {:?}", rec.names());
    }

    env.wait_finished(1).await;
    assert_eq!(rec.counter(metric::JOBS_CLAIMED), 1);
    assert_eq!(
        rec.counter(&format!("{}{{status=success}}", metric::JOBS_FINISHED)),
        1
    );
    assert_eq!(rec.gauge(metric::JOBS_RUNNING), Some(0.0));
    let claim = rec.samples(metric::CLAIM_LATENCY);
    assert_eq!(claim.len(), 1, "{claim:?}");
    assert!(claim[0] >= 0.0);
    assert_eq!(rec.counter(metric::BACKEND_ERRORS), 0);
    // The simulator, like GitLab, says how long the job was queued.
    assert_eq!(rec.samples(metric::PICKUP_LATENCY).len(), 1);

    // Pickup latency, where GitLab said how long the job was queued.
    let recorder = Recorder::new(env.store.clone(), env.runner, "r1".into());
    let info = ClaimInfo {
        job_id: 777_001,
        project: None,
        queued_duration: Some(Duration::from_millis(2500)),
        job_token: Some(SecretString::from("glcbt-metrics-secret".to_owned())),
    };
    assert_eq!(recorder.on_claim(&info).await, ClaimDecision::Run);
    assert_eq!(rec.samples(metric::PICKUP_LATENCY).last(), Some(&2.5));
    assert_eq!(rec.gauge(metric::JOBS_RUNNING), Some(1.0));
    let summary = gsr_webhook::JobSummary {
        job_id: 777_001,
        status: "failed".into(),
        failure_reason: Some("script_failure".into()),
        exit_code: Some(1),
        delivery: Some("accepted".into()),
        duration_ms: Some(5),
    };
    recorder.on_end(&info, &summary).await;
    assert_eq!(rec.gauge(metric::JOBS_RUNNING), Some(0.0));
    assert_eq!(
        rec.counter(&format!("{}{{status=failed}}", metric::JOBS_FINISHED)),
        1
    );

    // The first dispatcher stops (its reconcile loop would take the next job).
    d.shutdown().await;
    assert_eq!(rec.gauge(metric::RUNNERS_ACTIVE), Some(0.0));

    // A backend failure: the builds dir cannot be created (its parent is a file).
    let blocker = env.dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let broken = Dispatcher::with_settings(
        env.store.clone(),
        Arc::new(gsr_exec_process::ProcessExecutor::new()),
        worker(&blocker.join("builds")),
        "r2".into(),
        settings(),
    );
    let id2 = env.enqueue(&["echo never"]).await;
    let r = broken
        .handle_webhook(env.runner, env.delivery(id2, Some(&env.secret)))
        .await;
    assert_eq!(r.status, 202, "{}", r.message);
    let jobs = env.wait_finished(3).await;
    let failed = jobs
        .iter()
        .find(|j| j.gitlab_job_id == i64::try_from(id2).unwrap())
        .expect("recorded");
    assert_eq!(
        failed.failure_reason.as_deref(),
        Some("runner_system_failure"),
        "{failed:?}"
    );
    assert_eq!(rec.counter(metric::BACKEND_ERRORS), 1);
    assert_eq!(rec.gauge(metric::RUNNERS_ACTIVE), Some(1.0));
    broken.shutdown().await;

    // A lost job (recovery after a restart).
    let stale = env
        .store
        .record_claim(NewClaim {
            runner_id: env.runner,
            gitlab_job_id: 777_002,
            replica: "r3".into(),
            queued_duration: None,
        })
        .await
        .unwrap();
    let r3 = env.dispatcher(env.store.clone(), "r3");
    assert_eq!(r3.recover().await.unwrap()[0].id, stale.id);
    assert_eq!(
        rec.counter(&format!("{}{{status=lost}}", metric::JOBS_FINISHED)),
        1
    );

    assert_eq!(rec.gauge(metric::RUNNERS_ACTIVE), Some(0.0));
    assert_eq!(rec.counter(metric::JOBS_CLAIMED), 3);

    // Only the documented names, and labels only from fixed vocabularies: never a token,
    // a secret, a runner or a user.
    let allowed_labels = [
        "status=success",
        "status=failed",
        "status=canceled",
        "status=lost",
        "result=accepted",
        "result=duplicate",
        "result=ignored",
        "result=unauthorized",
        "result=not_found",
        "result=rejected",
        "result=unavailable",
    ];
    let names = [
        metric::JOBS_CLAIMED,
        metric::JOBS_FINISHED,
        metric::JOBS_RUNNING,
        metric::CLAIM_LATENCY,
        metric::PICKUP_LATENCY,
        metric::WEBHOOK_DELIVERIES,
        metric::BACKEND_ERRORS,
        metric::RUNNERS_ACTIVE,
    ];
    for series in rec.names() {
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, Some(l.trim_end_matches('}'))),
            None => (series.as_str(), None),
        };
        assert!(names.contains(&name), "undocumented metric {series}");
        if let Some(l) = labels {
            assert!(allowed_labels.contains(&l), "unexpected label {series}");
        }
        assert!(!series.contains("glcbt") && !series.contains(&env.secret));
    }
}
