//! AWS Lambda mode for real: the `gsr` binary as a custom runtime behind the
//! `cargo lambda watch` Runtime API emulator, invoked through the Lambda Invoke API path
//! (`POST /2015-03-31/functions/gsr/invocations`), against the simulator.
//!
//! The emulator runs with `--only-lambda-apis`: it serves the Runtime and Invoke APIs and
//! builds nothing, and the test starts the already-built `gsr` binary against it (as AWS
//! starts `bootstrap`), so no second build of the workspace happens. `cargo lambda watch`
//! still runs `cargo metadata` at start, so it runs in a stub package in a temp dir rather
//! than in the workspace (which other work may be editing).
//!
//! Needs `cargo-lambda` on PATH (`pip install cargo-lambda`); without it these tests fail
//! and say so.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::harness::{gsr_bin, Env};

const SECRET: &str = "lambda-hook-s3cret";
const FUNCTION: &str = "gsr";

/// Settings that would otherwise leak in from the environment running the tests.
const SCRUB: &[&str] = &[
    "RUNNER_TOKEN",
    "CI_SERVER_TOKEN",
    "CI_SERVER_URL",
    "GITLAB_SECRET",
    "WEBHOOK_PATH",
    "WAIT_TIMEOUT",
    "MAX_BUILDS",
    "RUNNER_BUILDS_DIR",
    "LAMBDA_CLAIM_MARGIN",
    "LAMBDA_RESERVE",
    "AWS_LAMBDA_RUNTIME_API",
];

fn cargo_lambda_on_path() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join("cargo-lambda");
            p.is_file()
                && std::fs::metadata(&p)
                    .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
                    .unwrap_or(false)
        })
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// How the function process is started.
enum Start {
    /// As AWS does: an executable named `bootstrap`, no arguments.
    Bootstrap,
    /// `gsr` with no command: `AWS_LAMBDA_RUNTIME_API` selects Lambda mode.
    Detected,
}

/// The emulator and the function process; both process groups are killed on drop.
struct Lambda {
    port: u16,
    emulator: Child,
    function: Child,
    logs: PathBuf,
    http: reqwest::Client,
}

impl Lambda {
    async fn start(env: &Env, start: Start, vars: &[(&str, &str)]) -> Lambda {
        assert!(
            cargo_lambda_on_path(),
            "`cargo lambda` is not installed, and the AWS Lambda tests need its Runtime API \
             emulator. Install it with `pip install cargo-lambda` (a prebuilt wheel, ~7 s; \
             never `cargo install cargo-lambda`, which takes 15 min) and put its bin dir on \
             PATH. See ../shared/ENVIRONMENT.md §6."
        );
        let base = env.dir.path().join(format!("lambda-{}", free_port()));
        let stub = base.join("stub");
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
        let logs = base.clone();

        let port = free_port();
        let mut emu = Command::new("cargo");
        emu.args([
            "lambda",
            "watch",
            "--only-lambda-apis",
            "--invoke-address",
            "127.0.0.1",
        ])
        .args(["--invoke-port", &port.to_string()])
        .current_dir(&stub)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(base.join("emulator.log")).unwrap())
        .stderr(std::fs::File::create(base.join("emulator.err")).unwrap())
        .process_group(0);
        let mut emulator = emu.spawn().expect("cargo lambda watch starts");

        // Wait until the emulator listens.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            if let Ok(Some(status)) = emulator.try_wait() {
                panic!(
                    "cargo lambda watch exited ({status}) before listening:\n{}",
                    read_logs(&logs)
                );
            }
            if std::time::Instant::now() > deadline {
                kill_group(&mut emulator);
                panic!(
                    "cargo lambda watch not listening on 127.0.0.1:{port} after 60 s:\n{}",
                    read_logs(&logs)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let program = match start {
            Start::Bootstrap => {
                let link = base.join("bootstrap");
                std::os::unix::fs::symlink(gsr_bin(), &link).expect("bootstrap link");
                link
            }
            Start::Detected => PathBuf::from(gsr_bin()),
        };
        let mut f = Command::new(&program);
        for v in SCRUB {
            f.env_remove(v);
        }
        // What the Lambda service (here: the emulator) sets for a custom runtime.
        f.env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://127.0.0.1:{port}/.rt/{FUNCTION}"),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", FUNCTION)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_REGION", "eu-west-1")
        .env("CI_SERVER_URL", &env.sim.url)
        .env("RUNNER_BUILDS_DIR", env.builds_dir())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
        for (k, v) in vars {
            f.env(k, v);
        }
        f.stdin(Stdio::null())
            .stdout(std::fs::File::create(base.join("function.log")).unwrap())
            .stderr(std::fs::File::create(base.join("function.err")).unwrap())
            .process_group(0);
        let function = match f.spawn() {
            Ok(c) => c,
            Err(e) => {
                kill_group(&mut emulator);
                panic!("{} does not start: {e}", program.display());
            }
        };
        Lambda {
            port,
            emulator,
            function,
            logs,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(180))
                .build()
                .unwrap(),
        }
    }

    /// `POST /2015-03-31/functions/gsr/invocations`: the HTTP status and the function's
    /// result (or error document).
    async fn invoke(&self, payload: &Value) -> (u16, Value) {
        let url = format!(
            "http://127.0.0.1:{}/2015-03-31/functions/{FUNCTION}/invocations",
            self.port
        );
        let resp = match self.http.post(&url).json(payload).send().await {
            Ok(r) => r,
            Err(e) => panic!("invoke failed: {e}\n{}", self.logs()),
        };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or_else(|_| {
            panic!(
                "invoke answered non-JSON ({status}): {text:?}\n{}",
                self.logs()
            )
        });
        (status, v)
    }

    fn logs(&self) -> String {
        read_logs(&self.logs)
    }
}

impl Drop for Lambda {
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
    // Children of the leader (cargo-lambda under cargo) may outlive it: always sweep.
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
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        out.push_str(&format!("--- {name} ---\n"));
        for l in tail.into_iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// A Function URL event (payload format 2.0) carrying a Job Hook, body base64-encoded as
/// Lambda does for bodies it does not treat as text.
fn function_url_event(hook: &Value, token: &str, key: &str) -> Value {
    let body = base64::engine::general_purpose::STANDARD.encode(hook.to_string());
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "user-agent": "GitLab/17.5.0",
            "x-gitlab-event": "Job Hook",
            "x-gitlab-token": token,
            "x-gitlab-event-uuid": format!("event-{key}"),
            "x-gitlab-webhook-uuid": format!("webhook-{key}"),
            "idempotency-key": key,
            "host": "abcdefg.lambda-url.eu-west-1.on.aws"
        },
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "abcdefg",
            "domainName": "abcdefg.lambda-url.eu-west-1.on.aws",
            "domainPrefix": "abcdefg",
            "http": {"method": "POST", "path": "/", "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": "GitLab/17.5.0"},
            "requestId": format!("req-{key}"),
            "routeKey": "$default",
            "stage": "$default",
            "time": "25/Nov/2026:12:00:00 +0000",
            "timeEpoch": 1_795_608_000_000u64
        },
        "body": body,
        "isBase64Encoded": true
    })
}

fn pending_hook(env: &Env, id: u64) -> Value {
    json!({
        "object_kind": "build",
        "ref": "main",
        "tag": false,
        "sha": env.shas.last().unwrap(),
        "build_id": id,
        "build_name": "lambda",
        "build_stage": "test",
        "build_status": "pending",
        "build_allow_failure": false,
        "build_failure_reason": "unknown_failure",
        "pipeline_id": 1,
        "project_id": env.project_id,
        "project_name": "group / demo",
        "runner": null
    })
}

/// The HTTP response event's body, parsed as JSON when it is JSON.
fn response_body(resp: &Value) -> Value {
    let body = resp["body"].as_str().unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()))
}

async fn expect_job(env: &Env, lambda: &Lambda, id: u64, status: &str) {
    let view = env.view(id).await;
    if view.status.as_str() != status {
        panic!(
            "job {id}: expected {status}, got {:?} ({:?})\n--- trace ---\n{}\n{}",
            view.status,
            view.failure_reason,
            env.trace(id).await,
            lambda.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_function_url_event_runs_the_pending_job() {
    let env = Env::new().await;
    let lambda = Lambda::start(
        &env,
        Start::Bootstrap,
        &[
            ("RUNNER_TOKEN", env.runner_token.as_str()),
            ("GITLAB_SECRET", SECRET),
            ("WAIT_TIMEOUT", "1"),
        ],
    )
    .await;
    let id = env.enqueue(env.job(&["echo hello from lambda"])).await;

    // Wrong secret: 401 in the HTTP response, nothing claimed.
    let (status, resp) = lambda
        .invoke(&function_url_event(&pending_hook(&env, id), "wrong", "k0"))
        .await;
    assert_eq!(status, 200, "{resp}\n{}", lambda.logs());
    assert_eq!(resp["statusCode"], 401, "{resp}");
    expect_job(&env, &lambda, id, "pending").await;

    // The right secret: the invocation stays open until the job has ended.
    let (status, resp) = lambda
        .invoke(&function_url_event(&pending_hook(&env, id), SECRET, "k1"))
        .await;
    assert_eq!(status, 200, "{resp}\n{}", lambda.logs());
    assert_eq!(resp["statusCode"], 200, "{resp}\n{}", lambda.logs());
    let summary = response_body(&resp);
    assert_eq!(summary["job_id"], id, "{summary}");
    assert_eq!(summary["status"], "success", "{summary}\n{}", lambda.logs());
    assert_eq!(summary["delivery"], "accepted", "{summary}");
    expect_job(&env, &lambda, id, "success").await;
    assert!(env.trace(id).await.contains("hello from lambda"));

    // The same delivery again (GitLab's "Resend request"): nothing new starts.
    let (_, resp) = lambda
        .invoke(&function_url_event(&pending_hook(&env, id), SECRET, "k1"))
        .await;
    assert_eq!(resp["statusCode"], 200, "{resp}");
    assert!(
        response_body(&resp)
            .as_str()
            .unwrap_or_default()
            .starts_with("duplicate"),
        "{resp}"
    );

    // The health check through the same function.
    let (_, resp) = lambda
        .invoke(&json!({"rawPath": "/healthz", "requestContext": {"http": {"method": "GET"}}}))
        .await;
    assert_eq!(
        (resp["statusCode"].as_u64(), resp["body"].as_str()),
        (Some(200), Some("ok"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_direct_invocation_runs_a_claimed_job() {
    let env = Env::new().await;
    // No RUNNER_TOKEN: a direct invocation needs only the job's own token.
    let lambda = Lambda::start(&env, Start::Detected, &[]).await;
    let id = env.enqueue(env.job(&["echo direct from lambda"])).await;
    let job = claim(&env).await;
    assert_eq!(job["id"], id);

    let (status, result) = lambda
        .invoke(&json!({"job": job, "gitlab_url": env.sim.url}))
        .await;
    assert_eq!(status, 200, "{result}\n{}", lambda.logs());
    assert_eq!(result["job_id"], id, "{result}");
    assert_eq!(result["outcome"], "success", "{result}\n{}", lambda.logs());
    assert_eq!(result["delivered"], true, "{result}");
    expect_job(&env, &lambda, id, "success").await;
    assert!(env.trace(id).await.contains("direct from lambda"));

    // A payload that is not a job: a function error that says what was expected.
    let (status, err) = lambda.invoke(&json!({"hello": "world"})).await;
    assert_eq!(status, 500, "{err}");
    assert_eq!(err["errorType"], "gsr::UnrecognisedInvocation", "{err}");

    // Without a runner token, hook deliveries are refused.
    let (_, resp) = lambda
        .invoke(&function_url_event(&pending_hook(&env, id), SECRET, "k2"))
        .await;
    assert_eq!(resp["statusCode"], 503, "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_function_url_receives_the_simulators_own_hooks() {
    // The whole path without hand-made events: the simulator delivers its Job Hooks to
    // the emulator's Function URL endpoint (`/lambda-url/<function>/`), which turns them
    // into Function URL events for the function.
    let env = Env::new().await;
    let lambda = Lambda::start(
        &env,
        Start::Bootstrap,
        &[
            ("RUNNER_TOKEN", env.runner_token.as_str()),
            ("GITLAB_SECRET", SECRET),
            ("WAIT_TIMEOUT", "1"),
        ],
    )
    .await;
    let url = format!("http://127.0.0.1:{}/lambda-url/{FUNCTION}/", lambda.port);
    env.admin
        .add_hook(env.project_id, &url, Some(SECRET))
        .await
        .expect("hook added");
    let id = env
        .enqueue(env.job(&["echo hook from the simulator"]))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let view = env.view(id).await;
        if view.status.as_str() == "success" {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let deliveries = env.admin.deliveries().await.unwrap_or_default();
            panic!(
                "job {id} is {:?} after 90 s\n--- deliveries ---\n{deliveries:#?}\n{}",
                view.status,
                lambda.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(env.trace(id).await.contains("hook from the simulator"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_stops_a_job_before_the_invocation_deadline() {
    // The emulator gives every invocation 600 s; keeping 594 s in reserve leaves ~6 s,
    // so a 60 s job must be stopped, reported to GitLab, and the invocation answered.
    let env = Env::new().await;
    let lambda = Lambda::start(
        &env,
        Start::Bootstrap,
        &[
            ("RUNNER_TOKEN", env.runner_token.as_str()),
            ("WAIT_TIMEOUT", "1"),
            ("LAMBDA_CLAIM_MARGIN", "0"),
            ("LAMBDA_RESERVE", "594"),
        ],
    )
    .await;
    let id = env.enqueue(env.job(&["sleep 60"])).await;
    let started = std::time::Instant::now();
    let (_, resp) = lambda
        .invoke(&function_url_event(
            &pending_hook(&env, id),
            "",
            "k-deadline",
        ))
        .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(40),
        "took {took:?}\n{}",
        lambda.logs()
    );
    assert_eq!(resp["statusCode"], 200, "{resp}\n{}", lambda.logs());
    let summary = response_body(&resp);
    assert_eq!(summary["job_id"], id, "{summary}");
    assert_ne!(summary["status"], "success", "{summary}");
    expect_job(&env, &lambda, id, "failed").await;

    // The receiver was stopped for that; the next invocation gets a fresh one.
    let id2 = env.enqueue(env.job(&["true"])).await;
    let (_, resp) = lambda
        .invoke(&function_url_event(&pending_hook(&env, id2), "", "k-next"))
        .await;
    assert_eq!(
        response_body(&resp)["status"],
        "success",
        "{resp}\n{}",
        lambda.logs()
    );
}

/// Claim the next job by hand with the runner token, as a control plane does.
async fn claim(env: &Env) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v4/jobs/request", env.sim.url))
        .json(&json!({
            "token": env.runner_token,
            "system_id": "s_000000000000",
            "info": {"features": {"refspecs": true, "upload_multiple_artifacts": true,
                     "artifacts_exclude": true, "return_exit_code": true,
                     "multi_build_steps": true, "two_phase_job_commit": true,
                     "cancel_gracefully": true}}
        }))
        .send()
        .await
        .expect("jobs/request");
    assert_eq!(resp.status(), 201);
    resp.json().await.expect("job payload")
}
