//! `cargo xtask demo`: the product as a newcomer meets it.
//!
//! The GitLab simulator plays GitLab (a project `demo/hello` holding `examples/hello/repo`,
//! a user `demo` who maintains it, an OAuth application for serve), and the real
//! `gsr serve` runs on its embedded defaults (SQLite and key files in a temp dir, the local
//! shell backend) on `127.0.0.1:8080` (or a free port). Then, over HTTP exactly as a
//! browser and a GitLab user would: sign in with GitLab, create a runner for the project
//! (`POST /api/v1/runners`), put its webhook URL and secret into the project's webhook
//! settings, enqueue the example job, wait for it, and print its trace as GitLab stored it
//! and the job's row in serve's history. In a terminal (and without `CI`) everything keeps
//! running for the newcomer to look around in the browser until Ctrl-C.
//!
//! `cargo xtask demo run-single [JOB.json]` is the earlier demo: the same job claimed and run
//! by `gsr run-single`, no control plane.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::drive::{pick_listen, Browser, Gitlab, JobRow, Serve, ServeConfig};
use crate::{build_gsr, workspace_root};

/// The demo user's GitLab password (shown on screen: it only opens the local simulator).
const DEMO_USER: &str = "demo";
const DEMO_PASSWORD: &str = "demo-password";

/// `cargo xtask demo [run-single] [JOB.json]`.
pub fn main(args: Vec<String>) -> anyhow::Result<ExitCode> {
    let mut args = args.into_iter().peekable();
    let single = args.peek().is_some_and(|a| a == "run-single");
    if single {
        args.next();
    }
    let root = workspace_root();
    let job_file = args
        .next()
        .map_or_else(|| root.join("examples/hello/job.json"), PathBuf::from);
    let job: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&job_file).with_context(|| format!("reading {}", job_file.display()))?,
    )
    .with_context(|| format!("parsing {}", job_file.display()))?;
    let gsr = build_gsr(&root, false)?;
    let rt = tokio::runtime::Runtime::new()?;
    if single {
        rt.block_on(run_single(&root, &gsr, job))?;
        return Ok(ExitCode::SUCCESS);
    }
    rt.block_on(serve_demo(&root, &gsr, job))
}

async fn serve_demo(root: &Path, gsr: &Path, job: serde_json::Value) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::Builder::new().prefix("gsr-demo-").tempdir()?;
    let gitlab = Gitlab::start(tmp.path().join("sim"), |_| {}).await?;
    let project = gitlab
        .project_with_repo(
            "demo/hello",
            &root.join("examples/hello/repo"),
            &tmp.path().join("repo"),
        )
        .await?;
    gitlab
        .user(DEMO_USER, DEMO_PASSWORD, Some(project.id))
        .await?;
    let listen = pick_listen(8080)?;
    let public_url = format!("http://{listen}");
    let (client_id, client_secret) = gitlab.oauth_app("gsr demo", &public_url).await?;
    eprintln!(
        "==> GitLab (simulator) on {}: project {}, user {DEMO_USER} (Maintainer), OAuth app for {public_url}",
        gitlab.url(),
        project.path
    );

    let data_dir = tmp.path().join("gsr-data");
    let log = tmp.path().join("serve.log");
    let serve = Serve::start(&ServeConfig {
        gsr,
        gitlab_url: gitlab.url(),
        client_id: &client_id,
        client_secret: &client_secret,
        data_dir: &data_dir,
        builds_dir: &tmp.path().join("builds"),
        listen,
        log: &log,
    })
    .await?;
    eprintln!(
        "==> gsr serve on {} (SQLite + keys in {}, log {})",
        serve.url,
        data_dir.display(),
        log.display()
    );

    let outcome = walk(&gitlab, &serve, project.id, job).await;
    if outcome.is_err() {
        eprintln!("--- gsr serve log (tail) ---\n{}", serve.log_tail(30));
    }
    let succeeded = matches!(outcome, Ok(true));
    if succeeded && std::io::stdin().is_terminal() && std::env::var_os("CI").is_none() {
        println!(
            "\nOpen {} and sign in as {DEMO_USER} / {DEMO_PASSWORD}; Ctrl-C stops",
            serve.url
        );
        stop_requested().await?;
        eprintln!();
    }
    // Serve lets each runner's job request in flight be answered before it exits (a job
    // GitLab hands out is never dropped); stopping GitLab next answers those long polls now
    // instead of at their idle deadline.
    serve.terminate()?;
    gitlab.sim.shutdown().await;
    let status = serve.wait().await?;
    eprintln!("==> gsr serve stopped ({status})");
    if !outcome? {
        bail!("the demo job did not succeed");
    }
    if !status.success() {
        bail!("gsr serve exited with {status}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C (SIGINT), SIGTERM, or the terminal going away (SIGHUP).
async fn stop_requested() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
    Ok(())
}

/// The newcomer's path; `Ok(true)` when the job succeeded.
async fn walk(
    gitlab: &Gitlab,
    serve: &Serve,
    project_id: u64,
    job: serde_json::Value,
) -> anyhow::Result<bool> {
    let mut browser = Browser::new(&serve.url)?;
    let me = browser.login(DEMO_USER, DEMO_PASSWORD).await?;
    eprintln!(
        "==> signed in with GitLab as {} (OAuth 2 + PKCE)",
        me.username
    );

    let created = browser.create_runner(project_id, "demo runner").await?;
    let runner = created.runner;
    // What the user does next in GitLab: Settings > Webhooks, "Job events", the URL and
    // the secret token serve showed once.
    gitlab
        .admin
        .add_hook(
            project_id,
            &runner.webhook_url,
            Some(&created.webhook_secret),
        )
        .await?;
    eprintln!(
        "==> runner {} (GitLab runner #{}) created; project webhook -> {}",
        runner.id, runner.gitlab_runner_id, runner.webhook_url
    );

    let mut spec: gsr_sim::JobSpecInput = serde_json::from_value(job)?;
    spec.project_id = project_id;
    let (job_id, _) = gitlab.admin.create_job(&spec).await?;
    eprintln!(
        "==> enqueued job {job_id}; GitLab sends its Job Hook to serve, which claims and runs it"
    );
    let view = gitlab
        .admin
        .wait_for_status(
            job_id,
            &["success", "failed", "canceled"],
            Duration::from_secs(180),
        )
        .await?;
    let trace = gitlab.admin.trace(job_id).await?;
    println!("==> trace of job {job_id} as GitLab stored it:\n");
    println!("{}", String::from_utf8_lossy(&trace));

    let row = history_row(&mut browser, &runner.id, job_id).await?;
    println!(
        "==> job {job_id}: {} in GitLab ({} artifact(s)); in gsr serve's history: {}, queued {}, pickup {}, run {}{}",
        view.status.as_str(),
        view.artifacts.len(),
        row.status,
        secs(row.queued_seconds),
        secs(row.pickup_seconds),
        secs(row.run_seconds),
        row.failure_reason
            .as_deref()
            .map(|r| format!(", failure reason {r}"))
            .unwrap_or_default(),
    );
    Ok(view.status.as_str() == "success" && row.status == "success")
}

/// The job's row in `GET /api/v1/runners/:id/jobs` once serve recorded its end.
async fn history_row(
    browser: &mut Browser,
    runner_id: &str,
    job_id: u64,
) -> anyhow::Result<JobRow> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = browser.jobs(runner_id).await?;
        let row = jobs
            .into_iter()
            .find(|j| u64::try_from(j.gitlab_job_id).ok() == Some(job_id));
        match row {
            Some(r) if r.is_finished() => return Ok(r),
            other if Instant::now() >= deadline => {
                bail!("job {job_id} in serve's history after 30 s: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn secs(s: Option<f64>) -> String {
    s.map_or_else(|| "-".into(), |s| format!("{s:.3} s"))
}

/// The earlier demo: `gsr run-single` against the simulator, no control plane.
async fn run_single(root: &Path, gsr: &Path, job: serde_json::Value) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let gitlab = Gitlab::start(tmp.path().join("sim"), |c| {
        c.long_poll = Duration::from_secs(2);
    })
    .await?;
    eprintln!("==> GitLab simulator on {}", gitlab.url());
    let project = gitlab
        .project_with_repo(
            "demo/hello",
            &root.join("examples/hello/repo"),
            &tmp.path().join("repo"),
        )
        .await?;
    let (_, runner_token) = gitlab.admin.create_runner(&[], true).await?;
    let mut spec: gsr_sim::JobSpecInput = serde_json::from_value(job)?;
    spec.project_id = project.id;
    let (job_id, _) = gitlab.admin.create_job(&spec).await?;
    eprintln!(
        "==> enqueued job {job_id} in {}; running gsr run-single",
        project.path
    );

    let status = tokio::task::spawn_blocking({
        let gsr = gsr.to_path_buf();
        let url = gitlab.url().to_string();
        let builds = tmp.path().join("builds");
        move || {
            Command::new(gsr)
                .args([
                    "run-single",
                    "--url",
                    &url,
                    "--max-builds",
                    "1",
                    "--wait-timeout",
                    "30",
                ])
                .arg("--builds-dir")
                .arg(builds)
                .env("RUNNER_TOKEN", runner_token)
                .stdin(Stdio::null())
                .status()
        }
    })
    .await??;
    if !status.success() {
        bail!("gsr run-single exited with {status}");
    }
    let view = gitlab.admin.job(job_id).await?;
    let trace = gitlab.admin.trace(job_id).await?;
    println!("==> trace of job {job_id} as GitLab stored it:\n");
    println!("{}", String::from_utf8_lossy(&trace));
    println!(
        "==> job {job_id}: {} (failure reason: {}), {} artifact(s), trace {} bytes, checksum reported {}",
        view.status.as_str(),
        view.failure_reason.as_deref().unwrap_or("none"),
        view.artifacts.len(),
        view.trace_size,
        view.reported_checksum.as_deref().unwrap_or("none"),
    );
    gitlab.sim.shutdown().await;
    if view.status.as_str() != "success" {
        bail!("the demo job did not succeed");
    }
    Ok(())
}
