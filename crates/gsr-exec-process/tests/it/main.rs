//! The local executor against real processes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gsr_exec::{
    CancellationToken, Executor, ExecutorError, LogSink, MemorySink, PrepareRequest, Session,
    StepOutcome, StepRequest,
};
use gsr_exec_process::{ProcessExecutor, ProcessSession, ShellKind, READ_CHUNK};
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// A generous bound for "returns promptly" on a shared 2-core machine.
const PROMPT: Duration = Duration::from_secs(60);

struct Job {
    dir: tempfile::TempDir,
    session: ProcessSession,
}

impl Job {
    fn new(exec: &ProcessExecutor) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("project");
        std::fs::create_dir(&project).unwrap();
        let session = exec
            .prepare_session(&PrepareRequest {
                job_id: 42,
                builds_dir: dir.path().to_path_buf(),
                project_dir: project,
                image: None,
            })
            .unwrap();
        Self { dir, session }
    }

    fn project(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    fn step(&self, commands: &[&str]) -> StepRequest {
        StepRequest {
            stage: "step_script".into(),
            commands: commands.iter().map(|c| c.to_string()).collect(),
            env: Vec::new(),
            workdir: self.project(),
            timeout: Duration::from_secs(300),
            debug_trace: false,
        }
    }

    async fn run(&mut self, step: &StepRequest) -> (StepOutcome, String) {
        let sink = Arc::new(MemorySink::default());
        let outcome = self
            .session
            .run_step(step, sink.clone(), CancellationToken::new())
            .await
            .unwrap();
        (
            outcome,
            String::from_utf8_lossy(&sink.contents()).into_owned(),
        )
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.project().join(name))
            .unwrap_or_else(|e| panic!("reading {name}: {e}"))
    }

    fn pid(&self, name: &str) -> Pid {
        Pid::from_raw(self.read(name).trim().parse().unwrap())
    }
}

fn bash() -> ProcessExecutor {
    let exec = ProcessExecutor::new();
    assert_eq!(
        exec.shell().kind(),
        ShellKind::Bash,
        "these tests need bash on PATH"
    );
    exec
}

/// Alive = exists and is not a zombie (this machine's PID 1 does not reap orphans).
fn alive(pid: Pid) -> bool {
    if kill(pid, None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .next();
            !matches!(state, Some("Z" | "X"))
        }
        Err(_) => false,
    }
}

fn echo_line(cmd: &str) -> String {
    format!("\x1b[32;1m$ {cmd}\x1b[0;m\n")
}

/// A sink that fires `cancel` once `marker` has been seen in the output.
struct CancelOn {
    seen: Mutex<Vec<u8>>,
    marker: &'static str,
    cancel: CancellationToken,
}

impl LogSink for CancelOn {
    fn write(&self, bytes: &[u8]) {
        let mut seen = self.seen.lock().unwrap();
        seen.extend_from_slice(bytes);
        if String::from_utf8_lossy(&seen).contains(self.marker) {
            self.cancel.cancel();
        }
    }
}

#[tokio::test]
async fn executor_facts() {
    let exec = bash();
    assert_eq!(exec.name(), "shell");
    let caps = exec.capabilities();
    assert!(!caps.image && !caps.services && caps.hard_cancel && caps.shared_builds_dir);
}

#[tokio::test]
async fn success_echoes_each_command_then_its_output() {
    let mut job = Job::new(&bash());
    let (outcome, out) = job.run(&job.step(&["echo hello", "echo 'world'"])).await;
    assert_eq!(outcome, StepOutcome::Exited(0));
    let expected = format!(
        "{}hello\n{}world\n",
        echo_line("echo hello"),
        echo_line("echo 'world'")
    );
    assert_eq!(out, expected);
}

#[tokio::test]
async fn failure_reports_the_exit_code_and_stops_the_script() {
    let mut job = Job::new(&bash());
    let (outcome, _) = job.run(&job.step(&["exit 3"])).await;
    assert_eq!(outcome, StepOutcome::Exited(3));

    let (outcome, out) = job
        .run(&job.step(&["echo before", "(exit 7)", "echo after"]))
        .await;
    assert_eq!(outcome, StepOutcome::Exited(7));
    assert!(out.contains("before\n"), "{out}");
    assert!(!out.contains("after"), "{out}");

    // pipefail: the failing left side of a pipe fails the step under bash.
    let (outcome, out) = job.run(&job.step(&["false | true", "echo after"])).await;
    assert_eq!(outcome, StepOutcome::Exited(1));
    assert!(!out.contains("\nafter"), "{out}");

    // A shell killed by a signal reports 128 + signal.
    let (outcome, _) = job.run(&job.step(&["kill -TERM $$"])).await;
    assert_eq!(outcome, StepOutcome::Exited(128 + 15));
}

#[tokio::test]
async fn stderr_is_interleaved_in_order_in_the_same_sink() {
    let mut job = Job::new(&bash());
    let (outcome, out) = job
        .run(&job.step(&["echo out1; echo err1 >&2; echo out2; echo err2 >&2"]))
        .await;
    assert_eq!(outcome, StepOutcome::Exited(0));
    assert!(out.ends_with("out1\nerr1\nout2\nerr2\n"), "{out:?}");
}

#[tokio::test]
async fn debug_trace_shows_commands_as_bash_runs_them() {
    let mut job = Job::new(&bash());
    let mut step = job.step(&["echo traced"]);
    step.debug_trace = true;
    let (outcome, out) = job.run(&step).await;
    assert_eq!(outcome, StepOutcome::Exited(0));
    assert!(out.contains("+ echo traced\n"), "{out}");
}

#[tokio::test]
async fn stdin_is_empty_and_cwd_is_the_workdir() {
    let mut job = Job::new(&bash());
    let (outcome, out) = job.run(&job.step(&["cat", "pwd"])).await;
    assert_eq!(outcome, StepOutcome::Exited(0));
    let project = job.project().canonicalize().unwrap();
    assert!(out.ends_with(&format!("{}\n", project.display())), "{out}");
}

#[tokio::test]
async fn environment_is_exactly_the_step_env_plus_path_and_home() {
    // A secret in the runner's own environment, as the runner token would be.
    let secret_name = format!("GSR_TEST_RUNNER_SECRET_{}", std::process::id());
    let secret_value = format!("glrt-secret-{}-{:?}", std::process::id(), Instant::now());
    std::env::set_var(&secret_name, &secret_value);
    assert_eq!(std::env::var(&secret_name).unwrap(), secret_value);
    let exec = bash(); // built after the secret exists

    let mut job = Job::new(&exec);
    let mut step = job.step(&[
        "env -0 > env.bin",
        "cat /proc/$$/environ > shell-environ.bin",
    ]);
    step.env = vec![
        ("CI".into(), "true".into()),
        ("CI_JOB_ID".into(), "42".into()),
    ];
    let (outcome, out) = job.run(&step).await;
    assert_eq!(outcome, StepOutcome::Exited(0), "{out}");

    for file in ["env.bin", "shell-environ.bin"] {
        let raw = std::fs::read(job.project().join(file)).unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains(&secret_value), "{file}: secret leaked");
        assert!(!text.contains(&secret_name), "{file}: secret name leaked");
        let mut keys: Vec<&str> = text
            .split('\0')
            .filter(|e| !e.is_empty())
            .map(|e| e.split_once('=').unwrap().0)
            .collect();
        keys.sort();
        // bash itself exports PWD, SHLVL and `_` to its children; the shell's own
        // environment is exactly what we passed.
        let expected: Vec<&str> = if file == "env.bin" {
            vec!["CI", "CI_JOB_ID", "HOME", "PATH", "PWD", "SHLVL", "_"]
        } else {
            vec!["CI", "CI_JOB_ID", "HOME", "PATH"]
        };
        assert_eq!(keys, expected, "{file}");
        let path = format!("PATH={}", std::env::var("PATH").unwrap());
        assert!(text.split('\0').any(|e| e == path), "{file}: runner PATH");
    }

    // A step's own PATH and HOME win.
    let mut step = job.step(&["printf '%s|%s' \"$PATH\" \"$HOME\" > ph.txt"]);
    step.env = vec![
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("HOME".into(), "/nonexistent-home".into()),
    ];
    let (outcome, _) = job.run(&step).await;
    assert_eq!(outcome, StepOutcome::Exited(0));
    assert_eq!(job.read("ph.txt"), "/usr/bin:/bin|/nonexistent-home");
}

#[tokio::test]
async fn variable_values_arrive_byte_exact() {
    let mut job = Job::new(&bash());
    let tricky =
        "it's \"quoted\" $HOME ${X} `id` $(id) \\ back\\slash\nsecond line\n\ttab; rm -rf / #\n\n";
    let mut step = job.step(&["printf '%s' \"$V\" > v.txt", "printf '%s' \"$E\" > e.txt"]);
    step.env = vec![("V".into(), tricky.into()), ("E".into(), String::new())];
    let (outcome, out) = job.run(&step).await;
    assert_eq!(outcome, StepOutcome::Exited(0), "{out}");
    assert_eq!(job.read("v.txt"), tricky);
    assert_eq!(job.read("e.txt"), "");
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let mut job = Job::new(&bash());
    let mut step = job.step(&[
        "echo $$ > shell.pid",
        "sleep 1000 & echo $! > bg.pid",
        "echo started",
        "sleep 1000",
    ]);
    step.timeout = Duration::from_secs(5);
    let started = Instant::now();
    let (outcome, out) = job.run(&step).await;
    assert_eq!(outcome, StepOutcome::TimedOut);
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    assert!(
        out.contains("started\n"),
        "output before the timeout is kept: {out}"
    );
    let (shell, bg) = (job.pid("shell.pid"), job.pid("bg.pid"));
    assert!(!alive(shell), "shell {shell} survived");
    assert!(!alive(bg), "background sleep {bg} survived");
}

#[tokio::test]
async fn cancel_mid_step_kills_everything() {
    let mut job = Job::new(&bash());
    let step = job.step(&[
        "echo $$ > shell.pid",
        "sleep 1000 & echo $! > bg.pid",
        // Left the process group: found through /proc as a child of the shell.
        "setsid sleep 1000 & echo $! > setsid.pid",
        "echo READY_$((40 + 2))",
        "sleep 1000",
    ]);
    let cancel = CancellationToken::new();
    let sink = Arc::new(CancelOn {
        seen: Mutex::new(Vec::new()),
        marker: "READY_42",
        cancel: cancel.clone(),
    });
    let started = Instant::now();
    let outcome = job
        .session
        .run_step(&step, sink.clone(), cancel)
        .await
        .unwrap();
    assert_eq!(outcome, StepOutcome::Canceled);
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    for name in ["shell.pid", "bg.pid", "setsid.pid"] {
        let pid = job.pid(name);
        assert!(!alive(pid), "{name} {pid} survived");
    }
}

#[tokio::test]
async fn already_cancelled_token_starts_nothing() {
    let mut job = Job::new(&bash());
    let cancel = CancellationToken::new();
    cancel.cancel();
    let step = job.step(&["touch ran"]);
    let outcome = job
        .session
        .run_step(&step, Arc::new(MemorySink::default()), cancel)
        .await
        .unwrap();
    assert_eq!(outcome, StepOutcome::Canceled);
    assert!(!job.project().join("ran").exists());
}

#[tokio::test]
async fn background_processes_do_not_outlive_a_successful_step() {
    let mut job = Job::new(&bash());
    let step = job.step(&[
        // Holds the output pipe open: the step must still end.
        "sleep 1000 & echo $! > bg.pid",
        // Does not hold the pipe: end-of-file alone would not prove it dead.
        "sleep 1000 > /dev/null 2>&1 & echo $! > quiet.pid",
        "echo done",
    ]);
    let started = Instant::now();
    let (outcome, out) = job.run(&step).await;
    assert_eq!(outcome, StepOutcome::Exited(0));
    assert!(out.ends_with("done\n"), "{out}");
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    for name in ["bg.pid", "quiet.pid"] {
        let pid = job.pid(name);
        assert!(!alive(pid), "{name} {pid} survived");
    }
}

#[tokio::test]
async fn tracked_escapee_is_killed_after_a_successful_step() {
    let exec = bash().process_tracking(Some(Duration::from_millis(50)));
    let mut job = Job::new(&exec);
    let step = job.step(&[
        // Leaves the process group, and is orphaned when the shell exits: only the
        // sampling of the process tree can find it.
        "setsid sleep 1000 > /dev/null 2>&1 < /dev/null & echo $! > escaped.pid",
        "sleep 3",
    ]);
    let (outcome, _) = job.run(&step).await;
    assert_eq!(outcome, StepOutcome::Exited(0));
    let pid = job.pid("escaped.pid");
    let survived = alive(pid);
    if survived {
        let _ = kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    assert!(!survived, "escaped process {pid} survived");
}

#[tokio::test]
async fn an_untracked_escapee_holding_the_pipe_does_not_hang_the_step() {
    let exec = bash().process_tracking(None);
    let mut job = Job::new(&exec);
    // Double fork out of the group: out of reach by design (documented); the step must
    // still return.
    let step = job.step(&[
        "(setsid sleep 1000 & echo $! > escaped.pid) ; sleep 0.2",
        "echo done",
    ]);
    let started = Instant::now();
    let (outcome, out) = job.run(&step).await;
    let pid = job.pid("escaped.pid");
    let _ = kill(pid, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(outcome, StepOutcome::Exited(0));
    assert!(out.ends_with("done\n"), "{out}");
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
}

/// Counts bytes and remembers the largest chunk; keeps nothing.
#[derive(Default)]
struct CountingSink {
    bytes: AtomicU64,
    chunks: AtomicU64,
    largest: AtomicUsize,
}

impl LogSink for CountingSink {
    fn write(&self, bytes: &[u8]) {
        self.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.chunks.fetch_add(1, Ordering::Relaxed);
        self.largest.fetch_max(bytes.len(), Ordering::Relaxed);
    }
}

#[tokio::test]
async fn large_output_streams_through_in_chunks() {
    const SIZE: u64 = 50 * 1024 * 1024;
    let mut job = Job::new(&bash());
    let cmd = format!("head -c {SIZE} /dev/zero");
    let step = job.step(&[&cmd]);
    let sink = Arc::new(CountingSink::default());
    let outcome = job
        .session
        .run_step(&step, sink.clone(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome, StepOutcome::Exited(0));
    let total = sink.bytes.load(Ordering::Relaxed);
    assert_eq!(total, SIZE + echo_line(&cmd).len() as u64);
    assert!(sink.largest.load(Ordering::Relaxed) <= READ_CHUNK);
    assert!(sink.chunks.load(Ordering::Relaxed) >= SIZE / READ_CHUNK as u64);
}

#[tokio::test]
async fn output_streams_while_the_step_runs() {
    // The sink sees the marker and cancels while the shell is still sleeping: output
    // reached it before the step ended.
    let mut job = Job::new(&bash());
    let step = job.step(&["echo STREAMED_$((1 + 1))", "sleep 1000"]);
    let cancel = CancellationToken::new();
    let sink = Arc::new(CancelOn {
        seen: Mutex::new(Vec::new()),
        marker: "STREAMED_2",
        cancel: cancel.clone(),
    });
    let outcome = job.session.run_step(&step, sink, cancel).await.unwrap();
    assert_eq!(outcome, StepOutcome::Canceled);
}

#[tokio::test]
async fn sh_fallback_runs_a_simple_script() {
    assert!(ProcessExecutor::with_shell("sh")
        .shell()
        .path()
        .is_absolute());
    let exec = ProcessExecutor::with_shell("/bin/sh");
    assert_eq!(exec.shell().kind(), ShellKind::Sh);
    let mut job = Job::new(&exec);
    let mut step = job.step(&["echo hello from sh", "printf '%s' \"$V\" > v.txt"]);
    step.env = vec![("V".into(), "a'b\"c$d`e`\nf".into())];
    let (outcome, out) = job.run(&step).await;
    assert_eq!(outcome, StepOutcome::Exited(0));
    assert_eq!(
        out,
        format!(
            "{}hello from sh\n{}",
            echo_line("echo hello from sh"),
            echo_line("printf '%s' \"$V\" > v.txt")
        ),
        "no complaint about pipefail"
    );
    assert_eq!(job.read("v.txt"), "a'b\"c$d`e`\nf");

    let (outcome, out) = job
        .run(&job.step(&["echo one", "exit 4", "echo two"]))
        .await;
    assert_eq!(outcome, StepOutcome::Exited(4));
    assert!(!out.contains("two"), "{out}");
}

#[tokio::test]
async fn scripts_stay_out_of_the_project_dir_and_cleanup_is_idempotent() {
    let mut job = Job::new(&bash());
    let scripts = job.session.scripts_dir().to_path_buf();
    assert!(!scripts.starts_with(job.dir.path()));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&scripts).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o700);

    let (outcome, out) = job
        .run(&job.step(&["ls -A \"$(dirname \"$0\")\" > scripts.txt"]))
        .await;
    assert_eq!(outcome, StepOutcome::Exited(0), "{out}");
    // The running script was in the scripts dir, not in the project dir.
    assert!(job.read("scripts.txt").contains(".sh"));
    let project_files: Vec<_> = std::fs::read_dir(job.project())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(project_files, vec![std::ffi::OsString::from("scripts.txt")]);
    // Scripts are removed once their step is over.
    assert_eq!(std::fs::read_dir(&scripts).unwrap().count(), 0);

    job.session.cleanup().await.unwrap();
    assert!(!scripts.exists());
    job.session.cleanup().await.unwrap();

    // A cleaned-up session refuses to run.
    let step = job.step(&["true"]);
    let err = job
        .session
        .run_step(
            &step,
            Arc::new(MemorySink::default()),
            CancellationToken::new(),
        )
        .await;
    assert!(matches!(err, Err(ExecutorError::Io { .. })), "{err:?}");
}

#[tokio::test]
async fn spawn_failures_are_executor_errors() {
    let mut job = Job::new(&bash());
    let mut step = job.step(&["true"]);
    step.workdir = Path::new("/nonexistent/workdir").to_path_buf();
    let err = job
        .session
        .run_step(
            &step,
            Arc::new(MemorySink::default()),
            CancellationToken::new(),
        )
        .await;
    assert!(
        matches!(err, Err(ExecutorError::Spawn { ref stage, .. }) if stage == "step_script"),
        "{err:?}"
    );

    let mut job = Job::new(&ProcessExecutor::with_shell("/nonexistent/bash"));
    let step = job.step(&["true"]);
    let err = job
        .session
        .run_step(
            &step,
            Arc::new(MemorySink::default()),
            CancellationToken::new(),
        )
        .await;
    assert!(matches!(err, Err(ExecutorError::Spawn { .. })), "{err:?}");
}

#[tokio::test]
async fn prepare_through_the_trait() {
    let exec: Arc<dyn Executor> = Arc::new(bash());
    let dir = tempfile::tempdir().unwrap();
    let mut session = exec
        .prepare(&PrepareRequest {
            job_id: 7,
            builds_dir: dir.path().into(),
            project_dir: dir.path().into(),
            image: Some("alpine".into()),
        })
        .await
        .unwrap();
    let step = StepRequest {
        stage: "step_script".into(),
        commands: vec!["echo via trait".into()],
        env: vec![],
        workdir: dir.path().into(),
        timeout: Duration::from_secs(300),
        debug_trace: false,
    };
    let sink = Arc::new(MemorySink::default());
    let outcome = session
        .run_step(&step, sink.clone(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome, StepOutcome::Exited(0));
    assert!(String::from_utf8_lossy(&sink.contents()).ends_with("via trait\n"));
    session.cleanup().await.unwrap();
    session.cleanup().await.unwrap();
}
