//! The `lambda` backend against the real `cargo lambda watch` emulator, with the real `gsr`
//! binary as the function and the backend's own AWS SDK client (endpoint override, static
//! test credentials) invoking it through the Lambda Invoke API.
//!
//! Each test starts its own emulator (`--only-lambda-apis`: Runtime + Invoke APIs only, in
//! a stub package so `cargo metadata` does not touch the workspace) and its own function
//! process, started as AWS starts a custom runtime: with the Runtime API address and an
//! environment of its own (cleared: the claimer's secrets are not there, as on AWS).
//!
//! Scenarios that apply to Lambda: success, failure, cancel (GitLab's cancel reaches the
//! function through its trace updates), timeout, artifacts, secrets. Not applicable:
//! `abort` (Lambda cannot stop an invocation: `abort` abandons it, see the crate docs),
//! `crash` (nothing to reap), `image_and_services` (no such capabilities).
//!
//! "Nothing left" for `lambda`: the function process has no child processes any more
//! (the job's bash process groups ended with the job), and the suite's own check that no
//! process carries the job's marker.
//!
//! Needs `cargo-lambda` on PATH (`pip install cargo-lambda`, see ../shared/ENVIRONMENT.md §6).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Once};
use std::time::Duration;

use gsr_backend::conformance::{Leftovers, Suite, SuiteOptions};
use gsr_backend::{Backend, BackendError, JobExit};
use gsr_backend_lambda::{Credentials, LambdaBackend, LambdaSettings};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

const FUNCTION: &str = "gsr";
/// Stands for the claimer's secrets (runner token, control-plane keys).
const SECRET_NAME: &str = "GSR_TEST_SECRET";
const SECRET_VALUE: &str = "claimer-secret-lambda-7e21";

fn claimer_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var(SECRET_NAME, SECRET_VALUE);
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_test_writer()
            .try_init();
    });
}

fn cargo_lambda_on_path() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("cargo-lambda").is_file())
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The emulator and the function process; both process groups are killed on drop.
struct Emulator {
    port: u16,
    emulator: Child,
    function: Child,
    dir: tempfile::TempDir,
}

impl Emulator {
    async fn start() -> Emulator {
        assert!(
            cargo_lambda_on_path(),
            "`cargo lambda` is not installed, and the lambda backend tests need its emulator. \
             Install it with `pip install cargo-lambda` and put its bin dir on PATH \
             (see ../shared/ENVIRONMENT.md §6)."
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let stub = dir.path().join("stub");
        std::fs::create_dir_all(&stub).unwrap();
        std::fs::write(
            stub.join("Cargo.toml"),
            format!(
                "[package]\nname = \"gsr-lambda-emulator\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
                 [[bin]]\nname = \"{FUNCTION}\"\npath = \"main.rs\"\n[workspace]\n"
            ),
        )
        .unwrap();
        std::fs::write(stub.join("main.rs"), "fn main() {}\n").unwrap();
        let port = free_port();
        let mut emulator = Command::new("cargo")
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "--invoke-address",
                "127.0.0.1",
            ])
            .args(["--invoke-port", &port.to_string()])
            .current_dir(&stub)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("emulator.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("emulator.err")).unwrap())
            .process_group(0)
            .spawn()
            .expect("cargo lambda watch starts");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if matches!(emulator.try_wait(), Ok(Some(_))) || tokio::time::Instant::now() > deadline
            {
                kill_group(&mut emulator);
                panic!(
                    "cargo lambda watch is not listening on {port}:\n{}",
                    read_logs(dir.path())
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The function's environment is its own (as on AWS): cleared, then what the
        // Lambda service sets for a custom runtime.
        let home = dir.path().join("home");
        let builds = dir.path().join("builds");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&builds).unwrap();
        let mut function = Command::new(env!("CARGO_BIN_EXE_gsr"));
        function
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{port}/.rt/{FUNCTION}"),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", FUNCTION)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_REGION", "eu-west-1")
            .env("RUNNER_BUILDS_DIR", &builds)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("function.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("function.err")).unwrap())
            .process_group(0);
        let function = match function.spawn() {
            Ok(c) => c,
            Err(e) => {
                kill_group(&mut emulator);
                panic!("the function does not start: {e}");
            }
        };
        Emulator {
            port,
            emulator,
            function,
            dir,
        }
    }

    fn settings(&self, function: &str) -> LambdaSettings {
        LambdaSettings {
            function: function.into(),
            qualifier: None,
            region: Some("eu-west-1".into()),
            endpoint_url: Some(format!("http://127.0.0.1:{}", self.port)),
            credentials: Credentials::Static {
                access_key_id: "AKIDGSRTEST".into(),
                secret_access_key: "gsr-test-secret-key".to_string().into(),
            },
        }
    }

    fn logs(&self) -> String {
        read_logs(self.dir.path())
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        kill_group(&mut self.function);
        kill_group(&mut self.emulator);
    }
}

/// SIGTERM the child's process group, SIGKILL what is left after 2 s, reap the child.
fn kill_group(child: &mut Child) {
    let pgid = Pid::from_raw(child.id() as i32);
    let _ = killpg(pgid, Signal::SIGTERM);
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < until {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.wait();
}

fn read_logs(dir: &Path) -> String {
    let mut out = String::new();
    for name in [
        "emulator.log",
        "emulator.err",
        "function.log",
        "function.err",
    ] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        out.push_str(&format!("--- {name} ---\n"));
        for l in tail.into_iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Live (non-zombie) children of the function process.
struct FunctionChildren {
    pid: i32,
}

#[async_trait::async_trait]
impl Leftovers for FunctionChildren {
    async fn of_job(&self, _job_id: u64) -> Vec<String> {
        // The job's processes end with it; allow the function a moment to reap them.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = children_of(self.pid);
            if left.is_empty() || tokio::time::Instant::now() > deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn children_of(parent: i32) -> Vec<String> {
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let live = fields.first().is_some_and(|s| *s != "Z" && *s != "X");
        if live && fields.get(1) == Some(&parent.to_string().as_str()) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            left.push(format!(
                "process {pid}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    left
}

/// An emulator with the function, and a suite whose backends invoke it.
async fn suite() -> (Suite, Emulator) {
    claimer_env();
    let emu = Emulator::start().await;
    let settings = emu.settings(FUNCTION);
    let suite = Suite::start(
        Arc::new(move || Arc::new(LambdaBackend::new(settings.clone())) as Arc<dyn Backend>),
        Arc::new(FunctionChildren {
            pid: emu.function.id() as i32,
        }),
        SuiteOptions::default(),
    )
    .await;
    if let Err(e) = suite.backend().validate().await {
        panic!("validate: {e}\n{}", emu.logs());
    }
    (suite, emu)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success() {
    suite().await.0.success().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure() {
    suite().await.0.failure().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel() {
    suite().await.0.cancel().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout() {
    suite().await.0.timeout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts() {
    suite().await.0.artifacts().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets() {
    suite().await.0.secrets(SECRET_NAME, SECRET_VALUE).await;
}

/// What Lambda cannot do is declared, so the claimer routes such jobs elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_send_long_and_containerised_jobs_elsewhere() {
    let backend = LambdaBackend::new(LambdaSettings::new(FUNCTION));
    let caps = backend.capabilities();
    assert_eq!(caps.max_duration, Some(Duration::from_secs(900)));
    assert!(!caps.image && !caps.services && !caps.hard_cancel);
    assert_eq!(backend.name(), "lambda");
}

/// A function that does not exist: `validate` says so, and a job started on it anyway
/// ends as `NotRun` (the claimer fails it in GitLab itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_function_fails_validate_and_jobs_are_not_run() {
    let (suite, emu) = suite().await;
    let backend = LambdaBackend::new(emu.settings("no-such-function"));
    let err = backend.validate().await.unwrap_err();
    assert!(
        matches!(err, BackendError::Unavailable { .. }) && err.to_string().contains("not found"),
        "{err}"
    );
    let (spec, mark) = suite.job(&["echo never"]);
    let job = suite.launch(&backend, spec, mark).await;
    let exit = suite.finish(&job).await;
    assert_eq!(exit, JobExit::NotRun, "{}", emu.logs());
    assert!(!suite.trace(job.id).await.contains("never"));
}

/// `abort` cannot stop an invocation; it abandons it at once (`Killed`), and the job,
/// still running in the function, ends when GitLab ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_abandons_the_invocation_and_gitlab_still_ends_the_job() {
    let (suite, emu) = suite().await;
    let backend = suite.backend();
    let (spec, mark) = suite.job(&[
        "echo ready-to-abandon",
        "while true; do echo tick; sleep 0.3; done",
    ]);
    let job = suite.launch(backend.as_ref(), spec, mark).await;
    suite.wait_trace(job.id, "ready-to-abandon").await;
    job.running.abort();
    let exit = tokio::time::timeout(Duration::from_secs(60), job.running.wait())
        .await
        .expect("wait returns after abort")
        .expect("wait");
    assert_eq!(exit, JobExit::Killed);
    // What a claimer does next (here through the admin API): GitLab ends the job, and
    // the function's `gsr` stops it at its next trace update.
    suite.admin.cancel(job.id).await.expect("cancel");
    suite
        .admin
        .wait_for_status(job.id, &["canceled"], Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", emu.logs()));
    suite.clean(&job).await;
}
