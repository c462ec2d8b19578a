//! Test harness: a GitLab simulator with one project and one runner, a sample repository
//! pushed over real git smart HTTP, and helpers to run the real `gsr` binary against it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};

use gsr_sim::{AdminClient, JobSpecInput, JobView, SimConfig, SimHandle};
use gsr_store::{AccessLevel, GitlabIdentity, NewRunner, RunnerId, Store, UserId};
use secrecy::{ExposeSecret as _, SecretString};

/// A known runner-token-like secret we can search for in outputs.
pub struct Env {
    pub sim: SimHandle,
    pub admin: AdminClient,
    pub dir: tempfile::TempDir,
    pub project_id: u64,
    pub runner_token: String,
    /// Commits on `main`, oldest first.
    pub shas: Vec<String>,
}

pub fn gsr_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gsr")
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Env {
    /// A simulator, a project `group/demo` with 3 commits on `main`, and a runner.
    pub async fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = SimConfig {
            data_dir: dir.path().join("sim"),
            long_poll: Duration::from_secs(1),
            trace_update_interval: 1,
            ..SimConfig::default()
        };
        let sim = gsr_sim::spawn(cfg).await.expect("simulator starts");
        let admin = sim.admin();
        let project = admin.create_project("group/demo").await.expect("project");

        let repo = dir.path().join("src-repo");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        let mut shas = Vec::new();
        for i in 1..=3 {
            std::fs::write(repo.join("README.md"), format!("demo commit {i}\n")).unwrap();
            std::fs::write(repo.join(format!("file{i}.txt")), format!("{i}\n")).unwrap();
            git(&repo, &["add", "-A"]);
            git(&repo, &["commit", "-q", "-m", &format!("commit {i}")]);
            let head = Command::new("git")
                .args(["rev-parse", "HEAD"])
                .current_dir(&repo)
                .output()
                .expect("rev-parse");
            shas.push(String::from_utf8_lossy(&head.stdout).trim().to_string());
        }
        admin
            .push_repo(&project.path, &repo, "main")
            .await
            .expect("push");
        let (_, runner_token) = admin.create_runner(&[], true).await.expect("runner");
        Env {
            sim,
            admin,
            dir,
            project_id: project.id,
            runner_token,
            shas,
        }
    }

    pub fn job(&self, script: &[&str]) -> JobSpecInput {
        JobSpecInput::new(self.project_id, script.iter().copied())
    }

    pub async fn enqueue(&self, spec: JobSpecInput) -> u64 {
        self.admin.create_job(&spec).await.expect("job enqueued").0
    }

    pub fn builds_dir(&self) -> PathBuf {
        self.dir.path().join("builds")
    }

    /// `gsr run-single` with the runner token in the environment (as in a container).
    pub fn run_single_cmd(&self, max_builds: u32) -> Command {
        let mut c = Command::new(gsr_bin());
        c.arg("run-single")
            .arg("--url")
            .arg(&self.sim.url)
            .arg("--builds-dir")
            .arg(self.builds_dir())
            .arg("--max-builds")
            .arg(max_builds.to_string())
            .arg("--wait-timeout")
            .arg("20")
            .arg("--check-interval")
            .arg("0.2")
            .env("RUNNER_TOKEN", &self.runner_token)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        c
    }

    /// Run `gsr run-single` to completion in a blocking thread.
    pub async fn run_single(&self, max_builds: u32) -> Output {
        let mut cmd = self.run_single_cmd(max_builds);
        tokio::task::spawn_blocking(move || cmd.output().expect("gsr runs"))
            .await
            .expect("join")
    }

    pub async fn view(&self, id: u64) -> JobView {
        self.admin.job(id).await.expect("job view")
    }

    pub async fn trace(&self, id: u64) -> String {
        String::from_utf8_lossy(&self.admin.trace(id).await.expect("trace")).into_owned()
    }
}

/// Assert the job ended with `status`, printing the trace and runner log if not.
pub async fn expect_status(env: &Env, id: u64, status: &str, out: &Output) -> JobView {
    let view = env.view(id).await;
    if view.status.as_str() != status {
        panic!(
            "job {id}: expected {status}, got {:?} ({:?})\n--- trace ---\n{}\n--- gsr stderr ---\n{}",
            view.status,
            view.failure_reason,
            env.trace(id).await,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    view
}

/// Is a process alive?
pub fn alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie counts as gone.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    if stat.is_empty() {
        return false;
    }
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("");
    state != "Z" && state != "X"
}

/// Run a command to completion without blocking the test's runtime (the simulator runs
/// on it).
pub async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("command runs"))
        .await
        .expect("join")
}

/// `.output_async()` on a borrowed command builder.
pub trait OutputAsync {
    /// See [`output`].
    fn output_async(&mut self) -> impl std::future::Future<Output = Output>;
}

impl OutputAsync for Command {
    fn output_async(&mut self) -> impl std::future::Future<Output = Output> {
        let mut cmd = std::mem::replace(self, Command::new("true"));
        async move {
            tokio::task::spawn_blocking(move || cmd.output().expect("command runs"))
                .await
                .expect("join")
        }
    }
}

impl Env {
    /// Like [`Env::new`], but on a simulator whose configuration `change` adjusted (e.g. a
    /// small `max_artifact_size`). The project, its repository and the runner are set up
    /// again on the new simulator; the first one is shut down.
    pub async fn with_config(change: impl FnOnce(&mut SimConfig)) -> Env {
        let mut env = Env::new().await;
        let mut cfg = SimConfig {
            data_dir: env.dir.path().join("sim-configured"),
            long_poll: Duration::from_secs(1),
            trace_update_interval: 1,
            ..SimConfig::default()
        };
        change(&mut cfg);
        let sim = gsr_sim::spawn(cfg).await.expect("simulator starts");
        let admin = sim.admin();
        let project = admin.create_project("group/demo").await.expect("project");
        admin
            .push_repo(&project.path, &env.dir.path().join("src-repo"), "main")
            .await
            .expect("push");
        let (_, runner_token) = admin.create_runner(&[], true).await.expect("runner");
        let old = std::mem::replace(&mut env.sim, sim);
        old.shutdown().await;
        env.admin = admin;
        env.project_id = project.id;
        env.runner_token = runner_token;
        env
    }
}

/// How to start a `gsr serve` against `env`'s simulator: SQLite in
/// `env.dir/gsr-data` unless `GSR_DATA_DIR` or `DATABASE_URL` is set with [`Serve::env`].
pub struct Serve {
    cmd: tokio::process::Command,
    log: PathBuf,
    listen: String,
}

impl Serve {
    /// `gsr serve --listen 127.0.0.1:0` with the OAuth app `client_id`/`client_secret`.
    pub fn new(env: &Env, client_id: &str, client_secret: &str) -> Serve {
        let mut cmd = tokio::process::Command::new(gsr_bin());
        // Both through the environment, so that a test can override them with `.env()`.
        cmd.arg("serve")
            .env("RUNNER_BUILDS_DIR", env.builds_dir())
            .env("GSR_DATA_DIR", env.dir.path().join("gsr-data"))
            .env("GITLAB_URL", &env.sim.url)
            .env("GITLAB_CLIENT_ID", client_id)
            .env("GITLAB_CLIENT_SECRET", client_secret)
            .env("GSR_REPLICA", "it-replica")
            .env_remove("DATABASE_URL")
            .env_remove("GSR_SECRET_KEY")
            .env_remove("GSR_COOKIE_KEY")
            .env_remove("GSR_PUBLIC_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        Serve {
            cmd,
            log: env.dir.path().join("serve.log"),
            listen: "127.0.0.1:0".into(),
        }
    }

    /// Set an environment variable of the server.
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Serve {
        self.cmd.env(key, value);
        self
    }

    /// Add command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Serve
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// Listen on `addr` instead of a free port (e.g. one reserved for a known public URL).
    pub fn listen(mut self, addr: &str) -> Serve {
        self.listen = addr.into();
        self
    }

    /// Write stderr to `path` instead of `env.dir/serve.log`.
    pub fn log(mut self, path: PathBuf) -> Serve {
        self.log = path;
        self
    }

    /// Start it and wait (30 s at most) for the "listening" line on stdout.
    pub async fn start(mut self) -> Server {
        let file = std::fs::File::create(&self.log).expect("log file");
        let mut child = self
            .cmd
            .args(["--listen", &self.listen])
            .stderr(Stdio::from(file))
            .spawn()
            .expect("gsr starts");
        let log = self.log;
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("listening line in time")
            .expect("stdout readable")
            .unwrap_or_else(|| {
                panic!(
                    "gsr serve exited: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let base = line
            .strip_prefix("gsr serve listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Server { child, base, log }
    }
}

/// A running `gsr serve`, killed when dropped.
pub struct Server {
    pub child: tokio::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub log: PathBuf,
}

impl Server {
    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id().expect("pid")).expect("pid fits"))
    }

    /// Send `signal` to it.
    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal");
    }

    /// SIGTERM, then the exit status (within 30 s).
    pub async fn stop(mut self) -> std::process::ExitStatus {
        self.signal(Signal::SIGTERM);
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("gsr serve did not stop: {}", self.stderr()))
            .expect("wait")
    }

    /// SIGKILL (a crash), then wait for it to be gone.
    pub async fn kill9(mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait().await;
    }
}

/// A user and a runner put into the store before `gsr serve` starts.
pub struct Seeded {
    pub owner: UserId,
    pub runner: RunnerId,
    /// In clear: the test configures the simulator's hooks with it.
    pub webhook_secret: String,
}

/// Create a runner in the simulator, and a user owning it (with `concurrency`) in `store`.
pub async fn seed(store: &dyn Store, env: &Env, concurrency: u32) -> Seeded {
    let (gitlab_runner_id, token) = env
        .admin
        .create_runner(&[], true)
        .await
        .expect("sim runner");
    let user = store
        .upsert_user_from_gitlab(GitlabIdentity {
            gitlab_user_id: 1,
            username: "alice".into(),
            name: "Alice".into(),
        })
        .await
        .expect("user");
    let created = store
        .create_runner(
            user.id,
            NewRunner {
                gitlab_url: env.sim.url.clone(),
                gitlab_runner_id: i64::try_from(gitlab_runner_id).expect("runner id"),
                token: SecretString::from(token),
                description: "replicated".into(),
                tags: vec![],
                run_untagged: true,
                locked: false,
                access_level: AccessLevel::NotProtected,
                maximum_timeout: None,
                paused: false,
                backend: "local".into(),
                backend_settings: serde_json::json!({}),
                concurrency,
            },
            5,
        )
        .await
        .expect("runner");
    Seeded {
        owner: user.id,
        runner: created.runner.id,
        webhook_secret: created.webhook_secret.expose_secret().to_owned(),
    }
}
