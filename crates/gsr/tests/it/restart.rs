//! A `gsr serve` killed mid-job and started again must not silently lose the job it had
//! claimed, nor run it a second time.
//!
//! The job is claimed, recorded in the store and running (its first line printed, its
//! `sleep` going) when the server gets SIGKILL — a crash, with no chance to clean up. The
//! same replica (same data dir, same `GSR_REPLICA`) is started again: recovery must find
//! the unfinished claim and record it as `lost` with [`gsr_dispatch::LOST_REASON`] before
//! it claims anything; GitLab must learn that the job failed (`runner_system_failure`)
//! instead of waiting for its timeout; the old job never runs again; a new job runs as
//! usual.
//!
//! The step's processes: the shell executor runs each step as its own process group and
//! kills that group when the step ends, is cancelled or times out — all things a *running*
//! runner does. A SIGKILLed runner does none of them, and nothing ties the step's
//! processes to the runner's life, so they survive the crash, reparented to init (the test
//! checks that they do: otherwise it would prove nothing). What the crashed runner left is
//! written down in the step registry under the builds dir, and the restarted server kills
//! it at start-up, before it takes any job: the test asserts that the old step's shell and
//! its `sleep` are gone and its script dir removed once the new server listens.

use std::path::Path;
use std::time::{Duration, Instant};

use gsr_sim::VariableInput;
use gsr_store::{JobStatus, Recovery, SecretBox, SqliteStore, Store};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use secrecy::ExposeSecret as _;

use crate::harness::{seed, Env, Serve, Server};

/// Poll `check` every 100 ms until it returns `Some`; panic with `what` and the server's
/// log after `limit` (a hang guard, not a timing assertion).
async fn wait_for<T, F, Fut>(what: &str, server: &Server, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}\n--- gsr serve ---\n{}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Live (not zombie) processes in process group `pgid`, with their command lines.
fn group_members(pgid: i32) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command name in parentheses: state, ppid, pgrp, …
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        if fields.len() < 3 || fields[0] == "Z" || fields[0] == "X" {
            continue;
        }
        if fields[2].parse::<i32>().ok() != Some(pgid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .split('\0')
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        found.push((pid, cmdline));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_killed_mid_job_recovers_the_claim_as_lost_and_runs_new_jobs() {
    let env = Env::new().await;
    // The server's default store: SQLite and the key file in its data dir.
    let data_dir = env.dir.path().join("gsr-data");
    let key = SecretBox::load_or_create_key_file(&data_dir).expect("key file");
    let store = SqliteStore::open(&data_dir, key).await.expect("store");
    let seeded = seed(&store, &env, 1).await;
    let hook_url = |server: &Server| format!("{}/hooks/{}", server.base, seeded.runner);

    // The servers' temp dir (where the shell executor writes step scripts) inside the
    // test's dir: what a crash leaves there goes away with the test.
    let tmp = env.dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp dir");

    let first = Serve::new(&env, "client-id", "client-secret")
        .env("TMPDIR", &tmp)
        .log(env.dir.path().join("serve-1.log"))
        .start()
        .await;
    let hook = env
        .admin
        .add_hook(
            env.project_id,
            &hook_url(&first),
            Some(&seeded.webhook_secret),
        )
        .await
        .expect("hook");

    // The step's shell writes its pid (= its process group) and then sleeps.
    let pid_file = env.dir.path().join("step.pid");
    let (old, job_token) = env
        .admin
        .create_job(
            &env.job(&[
                "echo restart-test-step-started",
                "echo $$ >> \"$PID_FILE\"",
                "sleep 60",
                "echo restart-test-step-ended",
            ])
            .with_variable(VariableInput::new(
                "PID_FILE",
                pid_file.to_string_lossy().into_owned(),
            )),
        )
        .await
        .expect("job");

    let pgid: i32 = wait_for(
        "the step to start",
        &first,
        Duration::from_secs(120),
        || {
            let text = std::fs::read_to_string(&pid_file).unwrap_or_default();
            async move { text.trim().parse().ok() }
        },
    )
    .await;
    wait_for(
        "GitLab (status and first line) and the store to show the job running",
        &first,
        Duration::from_secs(60),
        || async {
            let sim = env.view(old).await;
            let trace = env.trace(old).await;
            let rows = store
                .jobs_for_runner(seeded.owner, seeded.runner, 10)
                .await
                .expect("history");
            (sim.status.as_str() == "running"
                && trace.matches("restart-test-step-started").count() == 2
                && rows.len() == 1
                && rows[0].gitlab_job_id == i64::try_from(old).unwrap()
                && rows[0].status == JobStatus::Running)
                .then_some(())
        },
    )
    .await;
    let claimed_by = env.view(old).await.runner_system_id;
    // The store keeps the running job's token (sealed) for recovery.
    let row = store
        .jobs_for_runner(seeded.owner, seeded.runner, 10)
        .await
        .expect("history")[0]
        .id;
    let kept = store.job_token(row).await.expect("job token");
    assert_eq!(
        kept.as_ref().map(|t| t.expose_secret()),
        Some(job_token.as_str())
    );

    first.kill9().await;
    // Should an assertion fail before the restarted server reaps the step, the test must
    // still not leave a `sleep 60` behind.
    let _cleanup = KillGroupOnPanic(pgid);
    let after_crash = group_members(pgid);
    let commands: Vec<&str> = after_crash.iter().map(|(_, c)| c.as_str()).collect();
    assert!(
        commands
            .iter()
            .any(|c| c.contains("bash --noprofile --norc ") && c.contains("step_script"))
            && commands.contains(&"sleep 60"),
        "the step's shell and its sleep outlive the SIGKILLed server: {after_crash:?}"
    );
    let old_scripts = job_dirs(&tmp, old);
    assert_eq!(
        old_scripts.len(),
        1,
        "the old step's script dir: {old_scripts:?}"
    );

    // The same replica again, on the same data dir.
    let second = Serve::new(&env, "client-id", "client-secret")
        .env("TMPDIR", &tmp)
        .log(env.dir.path().join("serve-2.log"))
        .start()
        .await;
    // It reaped the old step before it started listening.
    assert_eq!(
        group_members(pgid),
        Vec::new(),
        "the old step's processes survive the restart (right after the crash: \
         {after_crash:?})\n--- gsr serve ---\n{}",
        second.stderr()
    );
    assert_eq!(
        job_dirs(&tmp, old),
        Vec::<String>::new(),
        "the old step's script dir is removed\n--- gsr serve ---\n{}",
        second.stderr()
    );
    assert!(
        second
            .stderr()
            .contains("killed the step of a runner that is gone"),
        "the reaping is logged: {}",
        second.stderr()
    );
    // Recovery reports to GitLab in the background, then records the job lost.
    let lost = wait_for(
        "recovery to record the job lost",
        &second,
        Duration::from_secs(120),
        || async {
            let rows = store
                .jobs_for_runner(seeded.owner, seeded.runner, 10)
                .await
                .expect("history");
            assert_eq!(rows.len(), 1, "{rows:#?}");
            rows[0].status.is_finished().then(|| rows[0].clone())
        },
    )
    .await;
    assert_eq!(lost.gitlab_job_id, i64::try_from(old).unwrap());
    assert_eq!(
        lost.status,
        JobStatus::Lost,
        "{lost:#?}\n{}",
        second.stderr()
    );
    assert_eq!(
        lost.failure_reason.as_deref(),
        Some(gsr_dispatch::LOST_REASON)
    );
    assert_eq!(lost.recovery, Some(Recovery::Reported), "{lost:#?}");
    assert!(
        store.job_token(lost.id).await.expect("job token").is_none(),
        "the token is dropped with the final status"
    );
    assert!(
        second.stderr().contains("lost"),
        "recovery is logged: {}",
        second.stderr()
    );

    // GitLab is told: the job fails as a runner system failure instead of running on
    // until its timeout.
    let failed = env
        .admin
        .wait_for_status(
            old,
            &["failed", "success", "canceled"],
            Duration::from_secs(120),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- gsr serve ---\n{}", second.stderr()));
    assert_eq!(failed.status.as_str(), "failed");
    assert_eq!(
        failed.failure_reason.as_deref(),
        Some("runner_system_failure")
    );

    // A new job runs normally on the restarted server.
    env.admin.remove_hook(hook).await.expect("remove hook");
    env.admin
        .add_hook(
            env.project_id,
            &hook_url(&second),
            Some(&seeded.webhook_secret),
        )
        .await
        .expect("hook");
    let new = env.enqueue(env.job(&["echo restart-test-new-job"])).await;
    let done = env
        .admin
        .wait_for_status(
            new,
            &["success", "failed", "canceled"],
            Duration::from_secs(120),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- gsr serve ---\n{}", second.stderr()));
    assert_eq!(
        done.status.as_str(),
        "success",
        "{}\n--- gsr serve ---\n{}",
        env.trace(new).await,
        second.stderr()
    );
    assert!(env.trace(new).await.contains("restart-test-new-job"));

    // The old job was never run again: its step started once, GitLab still has the one
    // runner manager on it, and the store still has one row for it.
    let rows = store
        .jobs_for_runner(seeded.owner, seeded.runner, 10)
        .await
        .expect("history");
    let old_rows: Vec<_> = rows
        .iter()
        .filter(|j| j.gitlab_job_id == i64::try_from(old).unwrap())
        .collect();
    assert_eq!(old_rows.len(), 1, "{rows:#?}");
    assert_eq!(old_rows[0].status, JobStatus::Lost);
    let new_row = rows
        .iter()
        .find(|j| j.gitlab_job_id == i64::try_from(new).unwrap())
        .expect("the new job is recorded");
    assert_eq!(new_row.status, JobStatus::Success);
    let starts = std::fs::read_to_string(&pid_file).expect("pid file");
    assert_eq!(
        starts.lines().count(),
        1,
        "the old step started again: {starts:?}"
    );
    let trace = env.trace(old).await;
    assert_eq!(
        trace.matches("restart-test-step-started").count(),
        // The echoed command line and its output.
        2,
        "{trace}"
    );
    assert!(!trace.contains("restart-test-step-ended"), "{trace}");
    assert_eq!(env.view(old).await.runner_system_id, claimed_by);

    for log in [env.dir.path().join("serve-1.log"), second.log.clone()] {
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(!text.contains(&job_token), "job token in {}", log.display());
    }
    let status = second.stop().await;
    assert!(status.success(), "{status:?}");
}

/// The step script dirs of job `job` in `tmp`.
fn job_dirs(tmp: &Path, job: u64) -> Vec<String> {
    let prefix = format!("gsr-job-{job}-");
    std::fs::read_dir(tmp)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Kills process group `.0` if the test panics while it holds this.
struct KillGroupOnPanic(i32);

impl Drop for KillGroupOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = killpg(Pid::from_raw(self.0), Signal::SIGKILL);
        }
    }
}
