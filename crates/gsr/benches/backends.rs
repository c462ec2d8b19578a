//! Backend benchmarks, run with `cargo bench -p gsr --bench backends` (release `gsr`).
//!
//! 1. Start overhead per backend: the job claimed (`jobs/request` sent) → its script running
//!    (the script's first command prints `date +%s%N`; same host, same clock), for `local`
//!    and `local` + bubblewrap. This is what a backend adds before user code runs: the job
//!    dir, spawning `gsr exec` (and bwrap's namespaces), the payload, the two-phase ack,
//!    `GIT_STRATEGY=none` sources, the step script.
//! 2. Throughput: 50 trivial jobs (`true`) claimed one after the other and run at once;
//!    wall time from the first claim to the last `wait()`.
//!
//! The simulator runs in this process (`gsr_backend::conformance::Suite`). Results are
//! printed as Markdown rows for BENCHMARKS.md; nothing here asserts a time. bwrap rows
//! are skipped when bubblewrap is not installed.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gsr_backend::conformance::{Leftovers, Suite, SuiteOptions};
use gsr_backend::Backend;
use gsr_backend_local::{BwrapOptions, LocalBackend, LocalConfig, Sandbox};

const GSR: &str = env!("CARGO_BIN_EXE_gsr");
const RUNS: usize = 30;
const WARMUP: usize = 3;
const CONCURRENT: usize = 50;

struct NoCheck;

#[async_trait::async_trait]
impl Leftovers for NoCheck {
    async fn of_job(&self, _job_id: u64) -> Vec<String> {
        Vec::new()
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn suite(sandbox: Sandbox, root: &std::path::Path) -> Suite {
    let mut cfg = LocalConfig::new(GSR, root);
    cfg.sandbox = sandbox;
    cfg.exec_log = "warn".into();
    Suite::start(
        Arc::new(move || {
            Arc::new(LocalBackend::new(cfg.clone()).expect("backend")) as Arc<dyn Backend>
        }),
        Arc::new(NoCheck),
        SuiteOptions::default(),
    )
    .await
}

/// Claim → script running, in ms, per run.
async fn start_overhead(suite: &Suite) -> Vec<f64> {
    let backend = suite.backend();
    let mut out = Vec::new();
    for i in 0..RUNS + WARMUP {
        // Quotes split the marker so the echoed command line does not match.
        let (spec, mark) = suite.job(&["echo \"T\"\"=$(date +%s%N)\""]);
        let t0 = now_ns();
        let job = suite.launch(backend.as_ref(), spec, mark).await;
        job.running.wait().await.expect("wait");
        job.running.cleanup().await.expect("cleanup");
        let trace = suite.trace(job.id).await;
        let started: u128 = trace
            .split("\nT=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no timestamp in the trace:\n{trace}"));
        if i >= WARMUP {
            out.push(started.saturating_sub(t0) as f64 / 1e6);
        }
    }
    out.sort_by(|a, b| a.partial_cmp(b).expect("numbers"));
    out
}

/// Wall time of `CONCURRENT` trivial jobs run at once.
async fn throughput(suite: &Suite) -> Duration {
    let backend = suite.backend();
    let started = Instant::now();
    let mut jobs = Vec::new();
    for _ in 0..CONCURRENT {
        let (spec, mark) = suite.job(&["true"]);
        jobs.push(suite.launch(backend.as_ref(), spec, mark).await);
    }
    for job in &jobs {
        job.running.wait().await.expect("wait");
    }
    let took = started.elapsed();
    for job in &jobs {
        job.running.cleanup().await.expect("cleanup");
    }
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut variants = vec![("local", Sandbox::None)];
    if gsr_backend_local::sandbox::find_program(std::path::Path::new("bwrap")).is_some() {
        variants.push(("local + bwrap", Sandbox::Bwrap(BwrapOptions::default())));
    } else {
        eprintln!("bwrap not installed: skipping the sandboxed rows");
    }
    println!("| backend | claim → script running (ms, {RUNS} runs) | {CONCURRENT} concurrent `true` jobs |");
    println!("|---|---|---|");
    for (name, sandbox) in variants {
        let root = tempfile::tempdir().expect("tempdir");
        let suite = suite(sandbox, root.path()).await;
        let o = start_overhead(&suite).await;
        let t = throughput(&suite).await;
        println!(
            "| {name} | median {:.1}, p90 {:.1}, max {:.1} | {:.2} s, {:.1} jobs/s |",
            pct(&o, 0.5),
            pct(&o, 0.9),
            pct(&o, 1.0),
            t.as_secs_f64(),
            CONCURRENT as f64 / t.as_secs_f64()
        );
    }
}
