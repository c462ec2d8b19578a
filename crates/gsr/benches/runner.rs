//! Runner benchmarks (DESIGN §7), run with `cargo bench -p gsr --bench runner`.
//!
//! 1. Runner overhead on a trivial job: claim (`jobs/request`) → final update accepted,
//!    minus the time the script step itself took, measured in-process against the
//!    simulator on loopback. With `GIT_STRATEGY=none` (pure runner work) and with a git
//!    fetch over smart HTTP (what a real job adds).
//! 2. Process start → first `jobs/request` on the wire: the real release binary against a
//!    bare TCP listener that notes when the request line arrives.
//! 3. Peak RSS of `gsr run-single` while a job prints 200 MB (read from `VmHWM`).
//!
//! Trace throughput has its own criterion bench: `cargo bench -p gsr-trace`.
//! Results are printed as a Markdown table for BENCHMARKS.md. Nothing here asserts a time.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gsr_exec::{
    CancellationToken, Capabilities, Executor, ExecutorError, LogSink, PrepareRequest, Session,
    StepOutcome, StepRequest,
};
use gsr_gitlab::{Coordinator, JobRequest};
use gsr_sim::{JobSpecInput, SimConfig, VariableInput};
use gsr_worker::{RunnerIdentity, UploadTiming, WorkerConfig};

const GSR: &str = env!("CARGO_BIN_EXE_gsr");

/// Wraps the shell executor and records how long each step ran.
struct Timed {
    inner: gsr_exec_process::ProcessExecutor,
    steps: Arc<Mutex<Duration>>,
}

struct TimedSession {
    inner: Box<dyn Session>,
    steps: Arc<Mutex<Duration>>,
}

#[async_trait::async_trait]
impl Executor for Timed {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn prepare(&self, req: &PrepareRequest) -> Result<Box<dyn Session>, ExecutorError> {
        Ok(Box::new(TimedSession {
            inner: self.inner.prepare(req).await?,
            steps: self.steps.clone(),
        }))
    }
}

#[async_trait::async_trait]
impl Session for TimedSession {
    async fn run_step(
        &mut self,
        step: &StepRequest,
        log: Arc<dyn LogSink>,
        cancel: CancellationToken,
    ) -> Result<StepOutcome, ExecutorError> {
        let t = Instant::now();
        let r = self.inner.run_step(step, log, cancel).await;
        *self.steps.lock().unwrap() += t.elapsed();
        r
    }
    async fn cleanup(&mut self) -> Result<(), ExecutorError> {
        self.inner.cleanup().await
    }
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(["-c", "user.name=b", "-c", "user.email=b@example.com"])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git")
        .success();
    assert!(ok, "git {args:?}");
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo bench` passes `--bench`; accept and ignore harness flags.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tmp = tempfile::tempdir().expect("tmp");
    let (no_git, with_git) = rt.block_on(overhead(tmp.path()));
    let start = startup_to_first_request(30);
    let rss = rt.block_on(peak_rss(tmp.path(), 200_000_000));

    println!("\n| measure | result | goal |\n|---|---|---|");
    println!(
        "| runner overhead, trivial job, `GIT_STRATEGY=none` ({} jobs) | median {}, p90 {} | ≤ 10 ms median |",
        no_git.len(),
        ms(pct(&no_git, 0.5)),
        ms(pct(&no_git, 0.9))
    );
    println!(
        "| runner overhead, trivial job, git fetch over HTTP ({} jobs) | median {}, p90 {} | (context) |",
        with_git.len(),
        ms(pct(&with_git, 0.5)),
        ms(pct(&with_git, 0.9))
    );
    let mut s = start;
    println!(
        "| process start → first `jobs/request` ({} runs) | median {}, max {} | ≤ 5 ms |",
        s.len(),
        ms(median(&mut s)),
        ms(*s.iter().max().unwrap())
    );
    println!(
        "| peak RSS of `gsr run-single`, job printing 200 MB | {:.1} MiB | ≤ 30 MB |",
        rss as f64 / 1024.0
    );
}

/// Overheads (claim → final accepted, minus step time) for trivial jobs.
async fn overhead(dir: &std::path::Path) -> (Vec<Duration>, Vec<Duration>) {
    let sim = gsr_sim::spawn(SimConfig {
        data_dir: dir.join("sim"),
        long_poll: Duration::from_millis(0),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let admin = sim.admin();
    let project = admin.create_project("bench/trivial").await.unwrap();
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "bench\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "bench"]);
    admin.push_repo(&project.path, &repo, "main").await.unwrap();
    let (_, token) = admin.create_runner(&[], true).await.unwrap();
    let token = gsr_job::SecretString::from(token);

    let steps = Arc::new(Mutex::new(Duration::ZERO));
    let executor: Arc<dyn Executor> = Arc::new(Timed {
        inner: gsr_exec_process::ProcessExecutor::new(),
        steps: steps.clone(),
    });
    let info = gsr_gitlab::RunnerInfo::new("shell", "bash", gsr_gitlab::Features::shell_runner());
    let coordinator = Coordinator::new(&sim.url, &info).unwrap();
    let cfg = WorkerConfig {
        builds_dir: dir.join("builds"),
        output_limit: 4 * 1024 * 1024,
        runner: RunnerIdentity {
            name: "bench".into(),
            short_token: "benchtoke".into(),
            system_id: "s_000000000000".into(),
            version: gsr_gitlab::VERSION.into(),
            revision: "bench".into(),
        },
        concurrent_id: 0,
        timing: UploadTiming::default(),
        two_phase: true,
    };

    let mut results = (Vec::new(), Vec::new());
    for (strategy, runs) in [("none", 60), ("fetch", 30)] {
        for i in 0..runs {
            let spec = JobSpecInput::new(project.id, ["true"])
                .with_variable(VariableInput::new("GIT_STRATEGY", strategy));
            admin.create_job(&spec).await.unwrap();
            *steps.lock().unwrap() = Duration::ZERO;
            let t0 = Instant::now();
            let claimed = match coordinator
                .request_job(&token, "s_000000000000", None, &info)
                .await
                .unwrap()
            {
                JobRequest::Job(j) => j,
                other => panic!("no job: {other:?}"),
            };
            let client = coordinator.job_client(claimed.spec.id, claimed.spec.token.clone());
            let report = gsr_worker::run_job(
                claimed.spec,
                client,
                executor.clone(),
                &cfg,
                CancellationToken::new(),
            )
            .await;
            let total = t0.elapsed();
            assert!(report.outcome.is_success(), "{report:?}");
            let step = *steps.lock().unwrap();
            // The first few jobs warm up connections and caches.
            if i >= 5 {
                let v = if strategy == "none" {
                    &mut results.0
                } else {
                    &mut results.1
                };
                v.push(total.saturating_sub(step));
            }
        }
    }
    sim.shutdown().await;
    results
}

/// Time from spawning `gsr run-single` to the first request line arriving.
fn startup_to_first_request(runs: usize) -> Vec<Duration> {
    let mut out = Vec::new();
    let builds = tempfile::tempdir().unwrap();
    for _ in 0..runs {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let t0 = Instant::now();
        let mut child = Command::new(GSR)
            .args(["run-single", "--url", &url, "--max-builds", "1"])
            .arg("--builds-dir")
            .arg(builds.path())
            .env("RUNNER_TOKEN", "glrt-benchmarktoken")
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gsr");
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        let elapsed = t0.elapsed();
        assert!(line.starts_with("POST /api/v4/jobs/request"), "{line}");
        out.push(elapsed);
        let _ = child.kill();
        let _ = child.wait();
    }
    out
}

/// Peak RSS (KiB) of `gsr run-single` running one job that prints `bytes` bytes.
async fn peak_rss(dir: &std::path::Path, bytes: u64) -> u64 {
    let sim = gsr_sim::spawn(SimConfig {
        data_dir: dir.join("sim-rss"),
        long_poll: Duration::from_millis(500),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let admin = sim.admin();
    let project = admin.create_project("bench/loud").await.unwrap();
    // The repository made by `overhead`.
    admin
        .push_repo(&project.path, &dir.join("repo"), "main")
        .await
        .unwrap();
    let (_, token) = admin.create_runner(&[], true).await.unwrap();
    let script = format!("yes 'a fairly ordinary log line with some words and numbers 0123456789' | head -c {bytes} || test $? -eq 141");
    let spec = JobSpecInput::new(project.id, [script])
        .with_variable(VariableInput::new("GIT_STRATEGY", "none"));
    let (id, _) = admin.create_job(&spec).await.unwrap();
    let mut child = Command::new(GSR)
        .args(["run-single", "--url", &sim.url, "--max-builds", "1"])
        .arg("--builds-dir")
        .arg(dir.join("builds-rss"))
        .env("RUNNER_TOKEN", &token)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn gsr");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_file) {
            if let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kb);
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let view = admin.job(id).await.unwrap();
    assert_eq!(view.status.as_str(), "success", "{view:?}");
    sim.shutdown().await;
    peak
}
