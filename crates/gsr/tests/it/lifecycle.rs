//! The runner process around jobs: signals, `--wait-timeout`/`--max-builds`, tags,
//! dropped connections, debug trace, `RUNNER_SCRIPT_TIMEOUT`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use gsr_sim::{Fault, FaultRoute, VariableInput};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::{alive, expect_status, gsr_bin, Env, OutputAsync};

/// `gsr run-single` with an explicit token and wait timeout (the harness's command fixes
/// both).
fn run_single_with(env: &Env, token: &str, max_builds: u32, wait_timeout: u64) -> Command {
    let mut c = Command::new(gsr_bin());
    c.arg("run-single")
        .arg("--url")
        .arg(&env.sim.url)
        .arg("--builds-dir")
        .arg(env.builds_dir())
        .arg("--max-builds")
        .arg(max_builds.to_string())
        .arg("--wait-timeout")
        .arg(wait_timeout.to_string())
        .arg("--check-interval")
        .arg("0.2")
        .env("RUNNER_TOKEN", token)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    c
}

/// A `gsr run-single` child process, killed if the test ends while it runs.
struct Runner {
    child: Child,
    log: PathBuf,
}

impl Runner {
    /// Start `cmd` in the background with its stderr in a file.
    fn spawn(mut cmd: Command, log: PathBuf) -> Runner {
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("gsr starts");
        Runner { child, log }
    }

    fn signal(&self, sig: Signal) {
        let pid = i32::try_from(self.child.id()).expect("pid fits");
        kill(Pid::from_raw(pid), sig).expect("signal sent");
    }

    /// Wait for the process to exit, at most `limit`; `None` when it is still running.
    async fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Poll until `cond` holds, failing with `what` after `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read_pid(dir: &Path, name: &str) -> i32 {
    std::fs::read_to_string(dir.join(name))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn sigterm_aborts_the_job_as_runner_interrupted_and_kills_the_script() {
    let env = Env::new().await;
    let marks = env.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let mut spec = env
        .job(&[
            "sleep 120 & echo $! > \"$MARKS/bg\"",
            "echo $$ > \"$MARKS/shell\"",
            "echo script-is-running",
            "sleep 120",
            "echo never-reached",
        ])
        .with_variable(VariableInput::new("MARKS", marks.to_string_lossy()));
    spec.after_script = vec!["echo after-script-ran".into()];
    let id = env.enqueue(spec).await;

    let mut runner = Runner::spawn(
        run_single_with(&env, &env.runner_token, 1, 20),
        env.dir.path().join("gsr-term.log"),
    );
    let (m, e) = (&marks, &env);
    wait_until(
        Duration::from_secs(60),
        "the script to run",
        move || async move {
            m.join("shell").exists() && e.trace(id).await.contains("script-is-running")
        },
    )
    .await;

    let sent = Instant::now();
    runner.signal(Signal::SIGTERM);
    let status = runner
        .wait(Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("gsr still runs 60 s after SIGTERM\n{}", runner.stderr()));
    assert!(
        status.code().is_some(),
        "gsr handled SIGTERM and exited instead of dying by it: {status:?}\n{}",
        runner.stderr()
    );
    assert!(sent.elapsed() < Duration::from_secs(60));

    let view = env.view(id).await;
    assert_eq!(
        view.status.as_str(),
        "failed",
        "{view:?}\n{}\n{}",
        env.trace(id).await,
        runner.stderr()
    );
    assert_eq!(
        view.failure_reason.as_deref(),
        Some("runner_interrupted"),
        "{view:?}"
    );
    assert_eq!(
        view.reported_checksum.as_deref(),
        Some(view.trace_checksum.as_str()),
        "the rest of the trace was sent before the final state"
    );
    let trace = env.trace(id).await;
    assert!(!trace.contains("never-reached\n"), "{trace}");
    assert!(!trace.contains("Job succeeded"), "{trace}");
    assert!(trace.contains("ERROR: Job failed"), "{trace}");
    for f in ["bg", "shell"] {
        let pid = read_pid(&marks, f);
        wait_until(
            Duration::from_secs(10),
            &format!("{f} process {pid} to die"),
            move || async move { !alive(pid) },
        )
        .await;
    }
}

#[tokio::test]
async fn sigquit_finishes_the_running_job_and_takes_no_more() {
    let env = Env::new().await;
    let marks = env.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let first = env
        .enqueue(
            env.job(&[
                "touch \"$MARKS/started\"",
                "sleep 4",
                "echo finished-after-quit",
            ])
            .with_variable(VariableInput::new("MARKS", marks.to_string_lossy())),
        )
        .await;
    let second = env.enqueue(env.job(&["echo second-job"])).await;

    let mut runner = Runner::spawn(
        run_single_with(&env, &env.runner_token, 2, 20),
        env.dir.path().join("gsr-quit.log"),
    );
    let m = &marks;
    wait_until(
        Duration::from_secs(60),
        "the first job to start",
        move || async move { m.join("started").exists() },
    )
    .await;
    runner.signal(Signal::SIGQUIT);
    let status = runner
        .wait(Duration::from_secs(90))
        .await
        .unwrap_or_else(|| panic!("gsr still runs 90 s after SIGQUIT\n{}", runner.stderr()));
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", runner.stderr());

    let view = env.view(first).await;
    assert_eq!(
        view.status.as_str(),
        "success",
        "{view:?}\n{}\n{}",
        env.trace(first).await,
        runner.stderr()
    );
    let trace = env.trace(first).await;
    assert!(trace.contains("finished-after-quit"), "{trace}");
    let view = env.view(second).await;
    assert_eq!(
        view.status.as_str(),
        "pending",
        "no job is taken after SIGQUIT: {view:?}"
    );
    assert!(view.runner_id.is_none(), "{view:?}");
}

#[tokio::test]
async fn wait_timeout_and_max_builds_end_run_single() {
    let env = Env::new().await;
    // Nothing queued: exits 0 once the wait timeout is over.
    let started = Instant::now();
    let out = run_single_with(&env, &env.runner_token, 1, 2)
        .output_async()
        .await;
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took >= Duration::from_millis(1500), "left early: {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    let log = env.admin.requests().await.unwrap();
    assert!(
        log.iter().any(|r| r.path == "/api/v4/jobs/request"),
        "it asked for jobs while waiting"
    );

    // Three queued, two allowed: exactly two run.
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(env.enqueue(env.job(&[&format!("echo job-{i}")])).await);
    }
    let out = env.run_single(2).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut statuses = Vec::new();
    for id in &ids {
        statuses.push(env.view(*id).await.status.as_str().to_string());
    }
    let done = statuses.iter().filter(|s| *s == "success").count();
    let pending = statuses.iter().filter(|s| *s == "pending").count();
    assert_eq!((done, pending), (2, 1), "{statuses:?}");
}

#[tokio::test]
async fn tagged_runner_takes_only_matching_jobs() {
    let env = Env::new().await;
    let (docker_runner, docker_token) = env.admin.create_runner(&["docker"], false).await.unwrap();
    let untagged = env.enqueue(env.job(&["echo untagged-job"])).await;
    let more_tags = env
        .enqueue(env.job(&["echo needs-gpu"]).with_tags(["docker", "gpu"]))
        .await;
    let tagged = env
        .enqueue(env.job(&["echo tagged-job"]).with_tags(["docker"]))
        .await;

    let out = run_single_with(&env, &docker_token, 2, 3)
        .output_async()
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view = expect_status(&env, tagged, "success", &out).await;
    assert_eq!(view.runner_id, Some(docker_runner));
    let view = env.view(untagged).await;
    assert_eq!(
        view.status.as_str(),
        "pending",
        "run_untagged=false must not take untagged jobs: {view:?}"
    );

    let view = env.view(more_tags).await;
    assert_eq!(
        view.status.as_str(),
        "pending",
        "a job needs all its tags on the runner: {view:?}"
    );

    // The untagged job was runnable all along: the untagged runner takes it.
    let out = env.run_single(1).await;
    let view = expect_status(&env, untagged, "success", &out).await;
    assert_ne!(view.runner_id, Some(docker_runner));
}

#[tokio::test]
async fn dropped_connections_lose_no_trace() {
    let env = Env::new().await;
    let id = env
        .enqueue(env.job(&["for i in $(seq 1 8); do echo tick-$i; sleep 0.5; done"]))
        .await;
    env.admin
        .fault(Fault::drop_connection(FaultRoute::PatchTrace, 2))
        .await
        .unwrap();
    env.admin
        .fault(Fault::drop_connection(FaultRoute::UpdateJob, 1))
        .await
        .unwrap();
    let out = env.run_single(1).await;
    let view = expect_status(&env, id, "success", &out).await;
    let trace = env.trace(id).await;
    for i in 1..=8 {
        assert_eq!(
            trace.matches(&format!("tick-{i}\n")).count(),
            1,
            "tick-{i} lost or repeated: {trace}"
        );
    }
    assert!(trace.contains("Job succeeded"), "{trace}");
    assert_eq!(
        view.reported_checksum.as_deref(),
        Some(view.trace_checksum.as_str())
    );
    assert_eq!(view.reported_bytesize, Some(view.trace_size));
    let log = env.admin.requests().await.unwrap();
    let dropped_patches = log
        .iter()
        .filter(|r| r.dropped && r.path.ends_with("/trace"))
        .count();
    let dropped_updates = log
        .iter()
        .filter(|r| r.dropped && r.method == "PUT")
        .count();
    assert_eq!(
        (dropped_patches, dropped_updates),
        (2, 1),
        "the faults were exercised"
    );
}

#[tokio::test]
async fn ci_debug_trace_sends_debug_trace_and_enables_xtrace() {
    let env = Env::new().await;
    let debug = env
        .enqueue(
            env.job(&["echo xtrace-probe"])
                .with_variable(VariableInput::new("CI_DEBUG_TRACE", "true")),
        )
        .await;
    let plain = env.enqueue(env.job(&["echo plain-probe"])).await;
    let out = env.run_single(2).await;
    expect_status(&env, debug, "success", &out).await;
    expect_status(&env, plain, "success", &out).await;

    let log = env.admin.requests().await.unwrap();
    let patches = |id: u64| {
        let path = format!("/api/v4/jobs/{id}/trace");
        log.iter()
            .filter(move |r| r.method == "PATCH" && r.path == path)
            .collect::<Vec<_>>()
    };
    let debug_patches = patches(debug);
    assert!(!debug_patches.is_empty());
    for p in &debug_patches {
        assert!(p.uri.contains("debug_trace=true"), "{:?}", p.uri);
    }
    let plain_patches = patches(plain);
    assert!(!plain_patches.is_empty());
    for p in &plain_patches {
        assert!(!p.uri.contains("debug_trace=true"), "{:?}", p.uri);
    }

    let trace = env.trace(debug).await;
    assert!(
        trace.lines().any(|l| l.starts_with("+ echo xtrace-probe")),
        "{trace}"
    );
    let trace = env.trace(plain).await;
    assert!(!trace.contains("+ echo plain-probe"), "{trace}");
}

#[tokio::test]
async fn runner_script_timeout_kills_the_script() {
    let env = Env::new().await;
    let mut spec = env
        .job(&["echo script-started", "sleep 60", "echo never-reached"])
        .with_variable(VariableInput::new("RUNNER_SCRIPT_TIMEOUT", "2s"));
    spec.timeout = Some(3600);
    spec.after_script = vec!["echo after-script-ran".into()];
    let id = env.enqueue(spec).await;
    let started = Instant::now();
    let out = env.run_single(1).await;
    let view = expect_status(&env, id, "failed", &out).await;
    assert_eq!(
        view.failure_reason.as_deref(),
        Some("job_execution_timeout")
    );
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "the sleep was not killed: {:?}",
        started.elapsed()
    );
    let trace = env.trace(id).await;
    assert!(trace.contains("script-started"), "{trace}");
    assert!(!trace.contains("never-reached\n"), "{trace}");
    assert!(trace.contains("after-script-ran"), "{trace}");
}

#[tokio::test]
async fn signals_while_waiting_for_a_job_exit_promptly() {
    let env = Env::new().await;
    for sig in [Signal::SIGQUIT, Signal::SIGTERM, Signal::SIGINT] {
        env.admin.clear_requests().await.unwrap();
        let mut runner = Runner::spawn(
            run_single_with(&env, &env.runner_token, 1, 120),
            env.dir.path().join(format!("gsr-idle-{sig}.log")),
        );
        let admin = &env.admin;
        wait_until(
            Duration::from_secs(30),
            "a job request",
            move || async move {
                admin
                    .requests()
                    .await
                    .unwrap()
                    .iter()
                    .any(|r| r.path == "/api/v4/jobs/request")
            },
        )
        .await;
        runner.signal(sig);
        // Well within the 120 s wait timeout.
        let status = runner
            .wait(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "gsr still waits for jobs 30 s after {sig}\n{}",
                    runner.stderr()
                )
            });
        assert_eq!(
            status.code(),
            Some(0),
            "{sig}: {status:?}\n{}",
            runner.stderr()
        );
    }
}

#[tokio::test]
async fn accepted_final_failed_state_is_not_reported_as_gone() {
    let env = Env::new().await;
    let id = env.enqueue(env.job(&["exit 1"])).await;
    let out = env.run_single(1).await;
    let view = expect_status(&env, id, "failed", &out).await;
    assert_eq!(view.final_update_attempts, 1, "GitLab accepted it at once");
    let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(
        !stderr.contains("GitLab no longer tracks it") && !stderr.contains("delivery=Gone"),
        "the accepted final state was logged as undeliverable/gone:\n{stderr}"
    );
    assert!(stderr.contains("delivery=Accepted"), "{stderr}");
}

/// The text of a colored log, without its SGR escape sequences.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
