//! Developer commands, in Rust instead of shell scripts.
//!
//! `cargo xtask demo [JOB.json]`: the product end to end on one machine — the GitLab
//! simulator as GitLab, the real `gsr serve` on its embedded defaults, and a newcomer's path
//! through it over HTTP (sign in with GitLab, create a runner, set the project webhook, a CI
//! job claimed and run through the control plane, its trace and history). See `demo`.
//! `cargo xtask demo run-single [JOB.json]`: the same job run by `gsr run-single` alone.
//!
//! `cargo xtask bench-serve`: the control plane's benchmarks (idle cost of 1,000 runners,
//! API latency under load, webhook → claim), release builds, loopback only. See `bench`.
//!
//! `cargo xtask test [ARGS]`: the whole test suite (`cargo test --workspace --locked`), after
//! making sure the tools it drives are there: `cargo-lambda` (the Lambda Runtime API
//! emulator the Lambda tests start) is installed from PyPI into `target/tools/venv` when it
//! is not on `PATH`; a throw-away PostgreSQL is started for the store's tests
//! (`crates/gsr-store/scripts/with-postgres.sh`) unless `GSR_TEST_DATABASE_URL` is given,
//! and a Docker engine with the docker backend's offline test images is made sure of
//! (`crates/gsr-backend-docker/scripts/with-dockerd.sh`: an answering daemon is used,
//! otherwise a throw-away one is started) unless `GSR_TEST_SKIP_DOCKER=1`.
//!
//! `drive` holds what the demo and the benchmarks share: the simulator set up as GitLab,
//! `gsr serve` as a child process, and a browser-like client for serve.

mod bench;
mod demo;
mod drive;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};

fn main() -> anyhow::Result<ExitCode> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("demo") => demo::main(args.collect()),
        Some("bench-serve") => bench::main(args.collect()),
        Some("test") => test(args.collect()).map(|()| ExitCode::SUCCESS),
        _ => {
            eprintln!(
                "usage: cargo xtask demo [run-single] [JOB.json] | cargo xtask bench-serve [--runners N] | cargo xtask test [CARGO TEST ARGS]"
            );
            Ok(ExitCode::from(2))
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
    // Services some tests need, each started around the run by a wrapper script unless
    // one is given or skipped: a Docker engine with the docker backend's test images
    // (`with-dockerd.sh`; `GSR_TEST_SKIP_DOCKER=1` skips), and a throw-away PostgreSQL
    // for the store's suite (`with-postgres.sh`; `GSR_TEST_DATABASE_URL` or
    // `GSR_TEST_SKIP_POSTGRES=1`).
    let mut chain: Vec<PathBuf> = Vec::new();
    if std::env::var("GSR_TEST_SKIP_DOCKER").as_deref() != Ok("1") {
        chain.push(root.join("crates/gsr-backend-docker/scripts/with-dockerd.sh"));
    }
    if std::env::var_os("GSR_TEST_DATABASE_URL").is_none()
        && std::env::var("GSR_TEST_SKIP_POSTGRES").as_deref() != Ok("1")
    {
        chain.push(root.join("crates/gsr-store/scripts/with-postgres.sh"));
    }
    chain.push(PathBuf::from(env!("CARGO")));
    let mut cmd = Command::new(&chain[0]);
    cmd.args(&chain[1..]);
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

/// Builds `gsr` (debug, or release for benchmarks) and returns the binary's path; with
/// `GSR_BIN` set, that binary is used as it is.
fn build_gsr(root: &Path, release: bool) -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("GSR_BIN").filter(|b| !b.is_empty()) {
        eprintln!("==> using GSR_BIN={}", PathBuf::from(&bin).display());
        return Ok(PathBuf::from(bin));
    }
    eprintln!(
        "==> building gsr{}",
        if release { " (release)" } else { "" }
    );
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "gsr"])
        .current_dir(root);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    Ok(root
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("gsr"))
}
