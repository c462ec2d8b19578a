//! Developer commands, in Rust instead of shell scripts.
//!
//! `cargo xtask test [ARGS]`: the whole test suite (`cargo test --workspace --locked`), after
//! making sure the tools it drives are there: `cargo-lambda` (the Lambda Runtime API
//! emulator the Lambda tests start) is installed from PyPI into `target/tools/venv` when it
//! is not on `PATH`; a throw-away PostgreSQL is started for the store's tests
//! (`crates/gsr-store/scripts/with-postgres.sh`) unless `GSR_TEST_DATABASE_URL` is given.
//!
//! `cargo xtask demo [JOB.json]`: start the GitLab simulator, push `examples/hello/repo`
//! as a project, enqueue a job (default `examples/hello/job.json`), run the real
//! `gsr run-single` against it, and print the job's trace as GitLab stores it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("demo") => demo(args.next().map(PathBuf::from)),
        Some("test") => test(args.collect()),
        _ => {
            eprintln!("usage: cargo xtask demo [JOB.json] | cargo xtask test [CARGO TEST ARGS]");
            std::process::exit(2);
        }
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// `cargo-lambda` on PATH, or installed into `target/tools/venv` (seconds, from its wheel;
/// never `cargo install`, which compiles for a quarter of an hour).
fn ensure_cargo_lambda(root: &Path) -> anyhow::Result<Option<PathBuf>> {
    if on_path("cargo-lambda") {
        return Ok(None);
    }
    let venv = root.join("target/tools/venv");
    let bin = venv.join("bin");
    if !bin.join("cargo-lambda").is_file() {
        eprintln!("==> installing cargo-lambda into {}", venv.display());
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .context("creating a Python venv (Debian: apt-get install python3-venv)")?;
        run(Command::new(bin.join("pip")).args(["install", "--quiet", "cargo-lambda"]))?;
    }
    Ok(Some(bin))
}

fn test(args: Vec<String>) -> anyhow::Result<()> {
    let root = workspace_root();
    let extra_path = ensure_cargo_lambda(&root)?;
    // The store's shared test suite also runs against a real PostgreSQL: unless one is
    // given (GSR_TEST_DATABASE_URL) or explicitly skipped, start a throw-away server around
    // the test run.
    let with_pg = std::env::var_os("GSR_TEST_DATABASE_URL").is_none()
        && std::env::var("GSR_TEST_SKIP_POSTGRES").as_deref() != Ok("1");
    let mut cmd = if with_pg {
        let mut c = Command::new(root.join("crates/gsr-store/scripts/with-postgres.sh"));
        c.arg(env!("CARGO"));
        c
    } else {
        Command::new(env!("CARGO"))
    };
    cmd.args(["test", "--workspace", "--locked"])
        .args(&args)
        .current_dir(&root);
    if let Some(bin) = extra_path {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![bin];
        dirs.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(dirs)?);
    }
    run(&mut cmd)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn demo(job_file: Option<PathBuf>) -> anyhow::Result<()> {
    let root = workspace_root();
    eprintln!("==> building gsr");
    run(Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "gsr"])
        .current_dir(&root))?;
    let gsr = root.join("target/debug/gsr");
    let job_file = job_file.unwrap_or_else(|| root.join("examples/hello/job.json"));
    let job: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&job_file).with_context(|| format!("reading {}", job_file.display()))?,
    )
    .with_context(|| format!("parsing {}", job_file.display()))?;

    let tmp = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let sim = gsr_sim::spawn(gsr_sim::SimConfig {
            data_dir: tmp.path().join("sim"),
            long_poll: Duration::from_secs(2),
            ..gsr_sim::SimConfig::default()
        })
        .await?;
        eprintln!("==> GitLab simulator on {}", sim.url);
        let admin = sim.admin();
        let project = admin.create_project("demo/hello").await?;

        // A git repository from the example files, pushed over smart HTTP.
        let repo = tmp.path().join("repo");
        copy_dir(&root.join("examples/hello/repo"), &repo)?;
        for args in [
            &["init", "-q", "-b", "main"][..],
            &["add", "-A"],
            &["-c", "user.name=demo", "-c", "user.email=demo@example.com", "commit", "-q", "-m", "hello"],
        ] {
            run(Command::new("git").args(args).current_dir(&repo))?;
        }
        admin.push_repo(&project.path, &repo, "main").await?;
        let (_, runner_token) = admin.create_runner(&[], true).await?;

        let mut spec: gsr_sim::JobSpecInput = serde_json::from_value(job)?;
        spec.project_id = project.id;
        let (job_id, _) = admin.create_job(&spec).await?;
        eprintln!("==> enqueued job {job_id} in {}; running gsr run-single", project.path);

        let status = tokio::task::spawn_blocking({
            let gsr = gsr.clone();
            let url = sim.url.clone();
            let builds = tmp.path().join("builds");
            move || {
                Command::new(gsr)
                    .args(["run-single", "--url", &url, "--max-builds", "1", "--wait-timeout", "30"])
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
        let view = admin.job(job_id).await?;
        let trace = admin.trace(job_id).await?;
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
        sim.shutdown().await;
        if view.status.as_str() != "success" {
            bail!("the demo job did not succeed");
        }
        Ok(())
    })
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}
