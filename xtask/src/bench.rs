//! `cargo xtask bench-serve`: what the control plane costs and how fast it answers, with
//! the GitLab simulator on loopback. Three measurements, each bounded in count and time:
//!
//! 1. **Idle cost of many runners.** N (default 1,000) active runners, each with its own
//!    simulator runner and `glrt-` token (so each long-polls on its own, as in
//!    production), are written straight into the store before serve starts (same data dir
//!    and key). Once every runner has reached the simulator, serve's `VmRSS` is sampled
//!    every second and its `utime+stime` taken over the window (default 60 s); the
//!    simulator's CPU (this process) is reported separately.
//! 2. **API latency under load.** One logged-in session (signed in through GitLab's form,
//!    like a browser) and a few clients sending `GET /api/v1/runners` at a fixed total
//!    rate (default 500/s for 20 s). Latency is taken from the moment each request was
//!    *due*, so a slow answer that delays the next request is counted, not hidden.
//! 3. **Webhook → claim.** Per sample a new runner in the store (tag of its own), a job
//!    for it enqueued in the simulator, and the Job Hook POSTed to `/hooks/{id}`; timed
//!    until the simulator shows the job running (serve claimed it, recorded the claim and
//!    acknowledged it: two-phase commit). The runner has no receiver yet, so this is the
//!    hook path alone (receiver built from the store, first `jobs/request`). Then the same
//!    with one runner whose reconcile loop is already long-polling (the job wakes that long
//!    poll; the hook only nudges).
//!
//! The benchmark runs in a release build of xtask as well (it re-runs itself), because the
//! simulator and the load clients live in this process and would otherwise be the
//! bottleneck. Only 127.0.0.1 is used. Results go to stdout as Markdown rows for
//! `BENCHMARKS.md`; nothing is asserted. `GSR_BIN=path` benchmarks that `gsr` binary instead
//! of building one; serve's log is kept in `target/tmp/bench-serve.log`.
//!
//! The simulator's defaults suit 1,000 runners: its long poll (50 s, like Workhorse's) is
//! shorter than serve's reconcile window (60 s), so each runner holds one request open,
//! the simulator ends it with a 204 after 50 s and the runner asks again at once on the
//! same connection (each runner's *first* long poll is cut at a random 15–60 s to spread
//! the runners, hence the default 60 s settle before sampling: the steady state is
//! measured); per-runner `watch` channels mean an enqueued job wakes only the runners that can
//! take it. No `SimConfig` change was needed.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use gsr_sim::{JobSpecInput, RunnerInput, VariableInput};
use gsr_store::{
    AccessLevel, GitlabIdentity, NewRunner, RunnerId, SecretBox, SqliteStore, Store, UserId,
};
use secrecy::{ExposeSecret, SecretString};

use crate::drive::{pick_listen, Browser, Gitlab, Serve, ServeConfig};
use crate::{run, workspace_root};

const PASSWORD: &str = "bench-password";

/// Knobs, with the defaults the results in `BENCHMARKS.md` use.
#[derive(Debug, Clone)]
struct Opts {
    runners: usize,
    per_user: usize,
    settle: Duration,
    idle: Duration,
    rate: u32,
    load: Duration,
    clients: usize,
    hooks: usize,
    /// `--only idle|api|hooks`: run that measurement alone (the idle one always runs
    /// first, as the others run while the runners idle; `api`/`hooks` skip its sampling).
    only: Option<Part>,
}

/// One of the three measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Idle,
    Api,
    Hooks,
}

impl Opts {
    fn runs(&self, part: Part) -> bool {
        self.only.is_none_or(|p| p == part)
    }
}

impl Opts {
    fn parse(args: &[String]) -> anyhow::Result<Opts> {
        let mut o = Opts {
            runners: 1000,
            per_user: 10,
            settle: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            rate: 500,
            load: Duration::from_secs(20),
            clients: 4,
            hooks: 50,
            only: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            if flag == "--only" {
                o.only = Some(match value.as_str() {
                    "idle" => Part::Idle,
                    "api" => Part::Api,
                    "hooks" => Part::Hooks,
                    _ => bail!("--only {value}: expected idle, api or hooks"),
                });
                continue;
            }
            let n: u64 = value
                .parse()
                .with_context(|| format!("{flag} {value}: not a number"))?;
            match flag.as_str() {
                "--runners" => o.runners = usize::try_from(n)?.min(5000),
                "--per-user" => o.per_user = usize::try_from(n)?.clamp(1, 1000),
                "--settle-secs" => o.settle = Duration::from_secs(n.min(600)),
                "--idle-secs" => o.idle = Duration::from_secs(n.clamp(1, 600)),
                "--rate" => o.rate = u32::try_from(n)?.clamp(1, 5000),
                "--load-secs" => o.load = Duration::from_secs(n.clamp(1, 300)),
                "--clients" => o.clients = usize::try_from(n)?.clamp(1, 64),
                "--hooks" => o.hooks = usize::try_from(n)?.clamp(1, 500),
                _ => bail!("unknown flag {flag}; see xtask/src/bench.rs"),
            }
        }
        Ok(o)
    }
}

/// `cargo xtask bench-serve [--runners N] [--idle-secs S] [--rate R] [--load-secs S]
/// [--clients C] [--hooks H] [--per-user K] [--settle-secs S] [--only idle|api|hooks]`
/// (`--runners 0` measures serve without runners: the fixed part of the idle cost).
pub fn main(args: Vec<String>) -> anyhow::Result<ExitCode> {
    let opts = Opts::parse(&args)?;
    let root = workspace_root();
    if cfg!(debug_assertions) {
        // Re-run as a release build: the simulator and the load clients are this process.
        let prebuilt = std::env::var_os("GSR_BIN").is_some_and(|b| !b.is_empty());
        eprintln!(
            "==> building {}xtask (release)",
            if prebuilt { "" } else { "gsr and " }
        );
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "--release", "-p", "xtask"])
            .current_dir(&root);
        if !prebuilt {
            build.args(["-p", "gsr"]);
        }
        run(&mut build)?;
        let status = Command::new(root.join("target/release/xtask"))
            .arg("bench-serve")
            .args(&args)
            .status()
            .context("running the release xtask")?;
        return Ok(ExitCode::from(
            u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
        ));
    }
    let gsr = std::env::var_os("GSR_BIN")
        .filter(|b| !b.is_empty())
        .map_or_else(|| root.join("target/release/gsr"), PathBuf::from);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(bench(&root, &gsr, &opts))?;
    Ok(ExitCode::SUCCESS)
}

async fn bench(root: &Path, gsr: &Path, o: &Opts) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("gsr-bench-").tempdir()?;
    let gitlab = Gitlab::start(tmp.path().join("sim"), |_| {}).await?;
    let project = gitlab
        .project_with_repo(
            "bench/hello",
            &root.join("examples/hello/repo"),
            &tmp.path().join("repo"),
        )
        .await?;
    let listen = pick_listen(0)?;
    let (client_id, client_secret) = gitlab
        .oauth_app("gsr bench", &format!("http://{listen}"))
        .await?;
    let data_dir = tmp.path().join("gsr-data");

    // ---- the runners, straight into the store ------------------------------------------
    let setup = Instant::now();
    let store = open_store(&data_dir).await?;
    let users = o.runners.div_ceil(o.per_user).max(1);
    let mut owners = Vec::with_capacity(users);
    for u in 0..users {
        let name = format!("bench-{u:03}");
        let sim_user = gitlab.user(&name, PASSWORD, None).await?;
        let user = store
            .upsert_user_from_gitlab(GitlabIdentity {
                gitlab_user_id: i64::try_from(sim_user.id)?,
                username: name.clone(),
                name,
            })
            .await?;
        owners.push(user.id);
    }
    let store_ref = &store;
    let gitlab_ref = &gitlab;
    let owners_ref = &owners;
    let sim_ids: Vec<u64> = futures::stream::iter(0..o.runners)
        .map(|i| async move {
            add_runner(
                gitlab_ref,
                store_ref,
                owners_ref[i / o.per_user],
                "bench-idle",
                &format!("bench runner {i}"),
            )
            .await
        })
        .buffer_unordered(8)
        .map_ok(|(sim_id, _, _)| sim_id)
        .try_collect()
        .await?;
    store.pool().close().await;
    eprintln!(
        "==> {} runners of {users} users in the simulator and the store ({:.1} s)",
        o.runners,
        setup.elapsed().as_secs_f64()
    );

    let log = tmp.path().join("serve.log");
    let started = Instant::now();
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
    let result = measure(&gitlab, &serve, &sim_ids, started, &data_dir, project.id, o).await;
    if result.is_err() {
        eprintln!("--- gsr serve log (tail) ---\n{}", serve.log_tail(30));
    }
    let stopping = Instant::now();
    serve.terminate()?;
    gitlab.sim.shutdown().await;
    let status = serve.wait().await?;
    let kept = root.join("target/tmp/bench-serve.log");
    if std::fs::create_dir_all(root.join("target/tmp")).is_ok() {
        let _ = std::fs::copy(&log, &kept);
    }
    eprintln!(
        "==> gsr serve stopped: {status} after {:.2} s (its log: {})",
        stopping.elapsed().as_secs_f64(),
        kept.display()
    );
    let rows = result?;
    println!("\n| measure | result | bound by |\n|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

async fn open_store(data_dir: &Path) -> anyhow::Result<SqliteStore> {
    // Serve runs with GSR_SECRET_KEY unset, so its key is the data dir's key file.
    let key = SecretBox::load_or_create_key_file(data_dir)?;
    Ok(SqliteStore::open(data_dir, key).await?)
}

/// A simulator runner and its store row (tags `[tag]`, untagged jobs not taken); returns
/// the simulator's id, the store id and the webhook secret.
async fn add_runner(
    gitlab: &Gitlab,
    store: &SqliteStore,
    owner: UserId,
    tag: &str,
    description: &str,
) -> anyhow::Result<(u64, RunnerId, SecretString)> {
    let created = gitlab
        .admin
        .create_runner_with(&RunnerInput {
            tags: vec![tag.to_string()],
            run_untagged: false,
            description: description.to_string(),
            ..RunnerInput::default()
        })
        .await?;
    let sim_id = created.id;
    let r = store
        .create_runner(
            owner,
            NewRunner {
                gitlab_url: gitlab.url().to_string(),
                gitlab_runner_id: i64::try_from(sim_id)?,
                token: SecretString::from(created.token),
                description: description.to_string(),
                tags: vec![tag.to_string()],
                run_untagged: false,
                locked: false,
                access_level: AccessLevel::NotProtected,
                maximum_timeout: None,
                paused: false,
                backend: "local".into(),
                backend_settings: serde_json::json!({}),
                concurrency: 1,
            },
            u32::MAX,
        )
        .await?;
    Ok((sim_id, r.runner.id, r.webhook_secret))
}

async fn measure(
    gitlab: &Gitlab,
    serve: &Serve,
    sim_ids: &[u64],
    started: Instant,
    data_dir: &Path,
    project_id: u64,
    o: &Opts,
) -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    let tck = clock_ticks();

    // ---- 1. idle ------------------------------------------------------------------------
    let pid = serve.pid();
    wait_all_polling(gitlab, sim_ids, Duration::from_secs(300)).await?;
    let to_polling = started.elapsed();
    eprintln!(
        "==> all {} runners long-polling {:.1} s after serve started; settling {} s",
        o.runners,
        to_polling.as_secs_f64(),
        o.settle.as_secs()
    );
    tokio::time::sleep(o.settle).await;
    if o.runs(Part::Idle) {
        rows.extend(idle(sim_ids.len(), pid, tck, o).await?);
    }
    rows.push(format!(
        "| serve start → all {n} runners long-polling | {s:.1} s | decrypting {n} tokens and one `jobs/request` each, started together |",
        n = o.runners,
        s = to_polling.as_secs_f64()
    ));
    if o.runs(Part::Api) {
        rows.push(api(serve, pid, tck, o).await?);
    }
    if o.runs(Part::Hooks) {
        rows.extend(hooks(gitlab, serve, data_dir, project_id, o).await?);
    }
    Ok(rows)
}

/// Measurement 1: serve's memory, open fds and CPU while every runner idles.
async fn idle(runners: usize, pid: u32, tck: u64, o: &Opts) -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    let (serve0, sim0) = (cpu_ticks(pid)?, cpu_ticks_self()?);
    let t0 = Instant::now();
    let (mut rss, mut fds) = (Vec::new(), Vec::new());
    eprintln!("==> sampling serve for {} s", o.idle.as_secs());
    while t0.elapsed() < o.idle {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss.push(status_kib(pid, "VmRSS")?);
        fds.push(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count());
    }
    let window = t0.elapsed().as_secs_f64();
    let (serve1, sim1) = (cpu_ticks(pid)?, cpu_ticks_self()?);
    let hwm = status_kib(pid, "VmHWM")?;
    let anon = status_kib(pid, "RssAnon")?;
    let file = status_kib(pid, "RssFile")?;
    let threads = status_kib(pid, "Threads")?;
    rss.sort_unstable();
    fds.sort_unstable();
    let serve_cpu = pct(serve1 - serve0, tck, window);
    let sim_cpu = pct(sim1 - sim0, tck, window);
    rows.push(format!(
        "| `gsr serve` idle with {n} active runners (each its own token, long-polling): RSS over {w:.0} s | **median {med:.1} MiB**, max {max:.1} MiB (VmHWM {hwm:.1} MiB; at the end RssAnon {anon:.1} MiB, RssFile {file:.1} MiB), {threads} threads, {fd_min}–{fd_max} open fds (sampled each second) | per runner: a receiver (its coordinator on an HTTP client shared by up to 50 runners) and one open long poll (an HTTP/1.1 connection on loopback, hyper's read and write buffers); SQLite pool; tokio |",
        n = runners,
        w = window,
        med = mib(rss[rss.len() / 2]),
        max = mib(*rss.last().unwrap_or(&0)),
        hwm = mib(hwm),
        anon = mib(anon),
        file = mib(file),
        fd_min = fds.first().copied().unwrap_or(0),
        fd_max = fds.last().copied().unwrap_or(0),
    ));
    rows.push(format!(
        "| `gsr serve` CPU over the same window | **{serve_cpu:.2} %** of one core | the simulator ends each long poll with a 204 after 50 s and the runner asks again on the same connection: ~{rps:.0} requests/s |",
        rps = runners as f64 / 50.0,
    ));
    rows.push(format!(
        "| simulator CPU (the bench process, in-process `gsr-sim`) | {sim_cpu:.2} % of one core | holding {runners} long polls and answering the re-asks |",
    ));
    Ok(rows)
}

/// Measurement 2: `GET /api/v1/runners` at a fixed rate from one session.
async fn api(serve: &Serve, pid: u32, tck: u64, o: &Opts) -> anyhow::Result<String> {
    let mut browser = Browser::new(&serve.url)?;
    let me = browser.login("bench-000", PASSWORD).await?;
    let listed: Vec<serde_json::Value> = browser.get("/api/v1/runners").await?;
    eprintln!(
        "==> signed in as {} ({} runners); GET /api/v1/runners at {}/s for {} s with {} clients",
        me.username,
        listed.len(),
        o.rate,
        o.load.as_secs(),
        o.clients
    );
    let cookie = browser.cookie_header();
    let serve_before = cpu_ticks(pid)?;
    let load_started = Instant::now();
    let (mut lat, errors) = load(&serve.url, &cookie, o).await?;
    let load_window = load_started.elapsed().as_secs_f64();
    let serve_load_cpu = pct(cpu_ticks(pid)? - serve_before, tck, load_window);
    lat.sort_unstable();
    let n = lat.len();
    Ok(format!(
        "| `GET /api/v1/runners` (session cookie, {per} runners listed) at {rate}/s for {secs} s, {c} keep-alive clients, while the {runners} runners idle | **p50 {p50:.2} ms**, p90 {p90:.2} ms, p99 {p99:.2} ms, max {max:.2} ms; {n} requests ({ach:.0}/s), {errors} errors; serve CPU {cpu:.0} % | unsealing the cookie (XChaCha20-Poly1305), one indexed SQLite query, JSON; the load clients share the 2 cores |",
        per = listed.len(),
        rate = o.rate,
        secs = o.load.as_secs(),
        c = o.clients,
        runners = o.runners,
        p50 = ms(quantile(&lat, 0.50)),
        p90 = ms(quantile(&lat, 0.90)),
        p99 = ms(quantile(&lat, 0.99)),
        max = ms(lat.last().copied().unwrap_or_default()),
        ach = n as f64 / o.load.as_secs_f64(),
        cpu = serve_load_cpu,
    ))
}

/// Measurement 3: Job Hook → claim, for runners without and with a receiver.
async fn hooks(
    gitlab: &Gitlab,
    serve: &Serve,
    data_dir: &Path,
    project_id: u64,
    o: &Opts,
) -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    let store = open_store(data_dir).await?;
    let owner = store
        .upsert_user_from_gitlab(GitlabIdentity {
            gitlab_user_id: 9_000_000,
            username: "bench-hooks".into(),
            name: "bench-hooks".into(),
        })
        .await?
        .id;
    let http = reqwest::Client::new();
    let mut cold = Vec::with_capacity(o.hooks);
    eprintln!("==> {} Job Hooks to runners without a receiver", o.hooks);
    for i in 0..o.hooks {
        let tag = format!("hook-cold-{i}");
        let (_, rid, secret) = add_runner(gitlab, &store, owner, &tag, &tag).await?;
        let job = enqueue(gitlab, project_id, &tag).await?;
        let t = Instant::now();
        post_hook(&http, &serve.url, rid, &secret, job, project_id).await?;
        wait_taken(gitlab, job).await?;
        cold.push(t.elapsed());
        wait_done(gitlab, job).await?;
        // Let serve record the end and free the runner's slot before the next sample.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, rid, secret) = add_runner(gitlab, &store, owner, "hook-warm", "hook-warm").await?;
    store.pool().close().await;
    // Prime: the first hook builds the receiver and starts its reconcile loop.
    let job = enqueue(gitlab, project_id, "hook-warm").await?;
    post_hook(&http, &serve.url, rid, &secret, job, project_id).await?;
    wait_done(gitlab, job).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    eprintln!("==> {} jobs for a runner that is long-polling", o.hooks);
    let mut warm = Vec::with_capacity(o.hooks);
    for _ in 0..o.hooks {
        // From the simulator's answer to the enqueue (its job creation runs `git` to
        // resolve the ref, which is not ours to time); the long poll may win the race
        // against that answer, so this reads ~0 then.
        let job = enqueue(gitlab, project_id, "hook-warm").await?;
        let t = Instant::now();
        post_hook(&http, &serve.url, rid, &secret, job, project_id).await?;
        wait_taken(gitlab, job).await?;
        warm.push(t.elapsed());
        wait_done(gitlab, job).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cold.sort_unstable();
    warm.sort_unstable();
    rows.push(format!(
        "| Job Hook POSTed to `/hooks/{{id}}` → job running in the simulator, runner without a receiver yet ({h} samples, {runners} other runners idle) | **median {p50:.2} ms**, p90 {p90:.2} ms, max {max:.2} ms | store read + secret hash check, receiver built (token decrypted, HTTP client), `jobs/request`, the claim recorded in SQLite, then the two-phase ack (`PUT state=running`) that makes GitLab show it running; polled at ~1 ms |",
        h = o.hooks,
        runners = o.runners,
        p50 = ms(quantile(&cold, 0.5)),
        p90 = ms(quantile(&cold, 0.9)),
        max = ms(cold.last().copied().unwrap_or_default()),
    ));
    rows.push(format!(
        "| job enqueued → running, runner already long-polling ({h} samples; its Job Hook POSTed too) | **median {p50:.2} ms**, p90 {p90:.2} ms, max {max:.2} ms | the enqueue ends the long poll (204, as Workhorse does), the loop asks again at once, records the claim and acks; the hook only nudges; polled at ~1 ms after the hook's answer |",
        h = o.hooks,
        p50 = ms(quantile(&warm, 0.5)),
        p90 = ms(quantile(&warm, 0.9)),
        max = ms(warm.last().copied().unwrap_or_default()),
    ));
    Ok(rows)
}

/// Waits until every one of these simulator runners has sent a `jobs/request`.
async fn wait_all_polling(gitlab: &Gitlab, ids: &[u64], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mut waiting: Vec<u64> = ids.to_vec();
    loop {
        let seen: Vec<Option<u64>> = futures::stream::iter(waiting.iter().copied())
            .map(|id| async move {
                let view = gitlab.admin.runner(id).await?;
                let polled = view.managers.iter().any(|m| m.requests > 0);
                Ok::<_, anyhow::Error>((!polled).then_some(id))
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        waiting = seen.into_iter().flatten().collect();
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} of {} runners had not reached the simulator after {limit:?}",
                waiting.len(),
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn enqueue(gitlab: &Gitlab, project_id: u64, tag: &str) -> anyhow::Result<u64> {
    let spec = JobSpecInput::new(project_id, ["true"])
        .with_tags([tag])
        .with_variable(VariableInput::new("GIT_STRATEGY", "none"));
    Ok(gitlab.admin.create_job(&spec).await?.0)
}

/// A Job Hook as GitLab sends it for a pending job (the fields a receiver reads).
async fn post_hook(
    http: &reqwest::Client,
    base: &str,
    runner: RunnerId,
    secret: &SecretString,
    job: u64,
    project_id: u64,
) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "object_kind": "build",
        "build_id": job,
        "build_name": "bench",
        "build_status": "pending",
        "project_id": project_id,
        "ref": "main",
    });
    let resp = http
        .post(format!("{base}/hooks/{runner}"))
        .header("X-Gitlab-Event", "Job Hook")
        .header("X-Gitlab-Token", secret.expose_secret())
        .header("X-Gitlab-Event-UUID", format!("bench-{job}"))
        .json(&body)
        .send()
        .await?;
    if resp.status() != reqwest::StatusCode::ACCEPTED {
        let status = resp.status();
        bail!("hook for job {job}: {status}: {}", resp.text().await?);
    }
    Ok(())
}

/// Polls (about every millisecond) until the simulator no longer has the job pending
/// (with two-phase commit it stays pending until serve acknowledges it).
async fn wait_taken(gitlab: &Gitlab, job: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = gitlab.admin.job(job).await?.status;
        if !matches!(status.as_str(), "pending" | "created") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("job {job} still {} after 60 s", status.as_str());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn wait_done(gitlab: &Gitlab, job: u64) -> anyhow::Result<()> {
    let view = gitlab
        .admin
        .wait_for_status(
            job,
            &["success", "failed", "canceled"],
            Duration::from_secs(60),
        )
        .await?;
    if view.status.as_str() != "success" {
        bail!("bench job {job} ended {}", view.status.as_str());
    }
    Ok(())
}

/// `o.clients` clients sending `GET /api/v1/runners` at `o.rate`/s in total for `o.load`;
/// returns the latencies (from when each request was due) and the error count.
async fn load(base: &str, cookie: &str, o: &Opts) -> anyhow::Result<(Vec<Duration>, usize)> {
    let period = Duration::from_secs_f64(o.clients as f64 / f64::from(o.rate));
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let end = start + o.load;
    let url = Arc::new(format!("{base}/api/v1/runners"));
    let mut tasks = Vec::new();
    for c in 0..o.clients {
        let url = url.clone();
        let cookie = cookie.to_string();
        let first = start + period.mul_f64(c as f64 / o.clients as f64);
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?;
            let mut tick = tokio::time::interval_at(first, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut lat = Vec::new();
            let mut errors = 0usize;
            loop {
                let due = tick.tick().await;
                if due >= end {
                    break;
                }
                let ok = match http
                    .get(url.as_str())
                    .header(reqwest::header::COOKIE, &cookie)
                    .send()
                    .await
                {
                    Ok(r) => {
                        r.status().is_success()
                            && r.bytes().await.is_ok_and(|b| b.first() == Some(&b'['))
                    }
                    Err(_) => false,
                };
                if ok {
                    lat.push(due.elapsed());
                } else {
                    errors += 1;
                }
            }
            Ok::<_, anyhow::Error>((lat, errors))
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await??;
        all.extend(lat);
        errors += e;
    }
    Ok((all, errors))
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn pct(ticks: u64, tck: u64, secs: f64) -> f64 {
    ticks as f64 / tck as f64 / secs * 100.0
}

/// `Name:` of `/proc/PID/status` (kB for memory lines).
fn status_kib(pid: u32, name: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {name} in /proc/{pid}/status"))
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)
}

fn cpu_ticks_self() -> anyhow::Result<u64> {
    stat_ticks(&std::fs::read_to_string("/proc/self/stat")?)
}

fn stat_ticks(stat: &str) -> anyhow::Result<u64> {
    // Fields after the `(comm)`, which may contain spaces: state is field 3, utime 14,
    // stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).context("no utime")?.parse()?;
    let stime: u64 = f.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// `CLK_TCK` (100 on Linux unless configured otherwise).
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_comm_with_spaces() {
        let stat = "1234 (gsr serve) S 1 2 3 4 5 6 7 8 9 10 42 8 0 0 20 0 1";
        assert_eq!(stat_ticks(stat).unwrap(), 50);
    }

    #[test]
    fn quantiles_of_sorted_samples() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Duration::from_millis(51));
        assert_eq!(quantile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
