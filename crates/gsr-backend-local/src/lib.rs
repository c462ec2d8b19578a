//! The `local` backend: each claimed job runs as `gsr exec --job -` in a child process on
//! this host, in a fresh directory, with a scrubbed environment, optionally inside a
//! bubblewrap sandbox.
//!
//! It is the embedded default of `gsr serve` and `gsr run-single`: no daemon, no image, so
//! it honours neither `image:` nor `services:` ([`Capabilities`] says so, and the claimer
//! routes such jobs elsewhere).
//!
//! # What a job gets
//!
//! - **Its own dir** `<root>/jobs/<job id>-<nonce>/` with `builds/` (`--builds-dir`),
//!   `tmp/` (`TMPDIR`) and `home/` (`HOME`), mode 0700, removed by
//!   [`Running::cleanup`]. Nothing is shared with another job.
//! - **A scrubbed environment**: `env_clear()`, then only `PATH`, `HOME`, `TMPDIR`, `LANG`,
//!   `RUST_LOG`. The claimer's environment (runner token, `GSR_SECRET_KEY`, database URLs)
//!   never reaches the job; the payload (which holds the job token) goes in by stdin.
//! - **Its own process group**, so the backend can signal everything `gsr exec` started
//!   in it; the steps `gsr exec` runs have groups of their own and are found through the
//!   step registry `gsr exec` keeps in the job's builds dir (see `gsr-exec-process`).
//! - **A lifeline**: the read end of a pipe whose only writer is this backend, passed as
//!   `gsr exec --lifeline-fd N`. End of file on it aborts the job like SIGTERM (final
//!   state `runner_interrupted`). It fires when the claimer dies in any way, SIGKILL
//!   included, and is also how [`Running::abort`] asks for a graceful stop (the same in
//!   and out of the sandbox). `PR_SET_PDEATHSIG` was not used for this: it fires when the
//!   spawning *thread* ends, and tokio's threads come and go. The inheritable copy of
//!   the read end exists only while this backend spawns (one spawn at a time), so other
//!   jobs of this backend never inherit it; a process the claimer spawns elsewhere in that
//!   instant may, which is harmless: only a *write* end keeps the lifeline open, and the
//!   write end is close-on-exec.
//! - Optionally **a sandbox** ([`Sandbox::Bwrap`], see [`sandbox`]): own PID, mount, IPC
//!   and UTS namespaces, read-only system, writable job dir only, own `/tmp`.
//!
//! # Ending a job
//!
//! [`Running::abort`] closes the lifeline (and sends SIGTERM to `gsr exec` when it is not
//! sandboxed); after [`LocalConfig::grace`] the whole group gets SIGKILL. The job's own
//! timeout is enforced by `gsr exec`; the backend kills the place after that timeout plus
//! [`LocalConfig::margin`] as a backstop. When `gsr exec` is gone, whatever is left in its
//! group and in its steps' groups is killed before [`Running::wait`] returns. A sandbox
//! that could not be set up (bwrap reports `bwrap: …` and fails) is
//! [`JobExit::NotRun`]: `gsr exec` never ran, so the claimer fails the job itself.
//!
//! # Crash clean-up
//!
//! Every job has a record in `<root>/registry/` naming its claimer's lock file (see
//! `registry` module docs for why a lock and not a PID); [`Backend::reap`] kills
//! and removes what jobs of dead claimers left. With the lifeline such jobs normally abort
//! on their own; reap covers the rest (a `gsr exec` stuck in a read, the dirs).
//!
//! # Not done here
//!
//! - **cgroup limits**: not implemented. They need a writable cgroup v2 hierarchy
//!   delegated to the claimer (systemd `Delegate=yes`, or a container with its own
//!   cgroup namespace); the machines this was built on expose cgroup v1 controllers
//!   read-only, so the code could not be tested. The docker and kubernetes backends set
//!   CPU and memory limits.
//! - **Running as another user**: jobs run as the claimer's user. Without the sandbox a
//!   job can read what that user can (including `/proc/<claimer>/environ`); use
//!   `--sandbox bwrap` (own PID namespace, hidden paths) or a container backend for
//!   untrusted jobs.
//!
//! # Layout
//!
//! - `lib.rs`: [`LocalConfig`], [`LocalBackend`], the per-job supervisor.
//! - [`sandbox`]: the `bwrap` command line (pure, tested) and its start-up probe.
//! - `registry`: job records, claimer locks, [`Backend::reap`].
//! - `procs`: `/proc` helpers (PID + start time, process-group members).

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gsr_backend::{
    Backend, BackendError, CancellationToken, Capabilities, JobExit, Launch, ReapReport, Running,
};
use nix::sys::signal::Signal;
use secrecy::ExposeSecret;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::DropGuard;

mod procs;
mod registry;
pub mod sandbox;

pub use sandbox::{BwrapOptions, Sandbox};

use registry::{ClaimerLock, Machine, Record, JOBS_DIR, REGISTRY_DIR};

const NAME: &str = "local";
/// The `PATH` a job starts with (its variables may change it for its steps).
pub const JOB_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Settings of the `local` backend.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The `gsr` binary that runs `gsr exec` (normally the claimer's own executable).
    pub gsr_bin: PathBuf,
    /// The backend's own directory: job dirs and the registry live here. Give every host
    /// (or container) its own; a shared network dir is left alone by other hosts' reap.
    pub root: PathBuf,
    /// Isolation of the job process.
    pub sandbox: Sandbox,
    /// Between the graceful stop (lifeline closed, SIGTERM) and SIGKILL.
    pub grace: Duration,
    /// Added to the job's timeout before the backend kills the place itself (`gsr exec`
    /// enforces the timeout; this covers start-up and the final update).
    pub margin: Duration,
    /// Paths the sandbox hides behind an empty tmpfs (the control plane's data dir and
    /// config file). Ignored without a sandbox.
    pub hide: Vec<PathBuf>,
    /// `RUST_LOG` of `gsr exec` (its log lines are forwarded to this process's log).
    pub exec_log: String,
}

impl LocalConfig {
    /// Defaults: no sandbox, 10 s grace, 2 min margin.
    pub fn new(gsr_bin: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        Self {
            gsr_bin: gsr_bin.into(),
            root: root.into(),
            sandbox: Sandbox::None,
            grace: Duration::from_secs(10),
            margin: Duration::from_secs(120),
            hide: Vec::new(),
            exec_log: "info".into(),
        }
    }
}

/// The `local` backend. Create one per process with [`LocalBackend::new`]; it holds the
/// claimer lock that tells [`Backend::reap`] of other instances that its jobs are alive.
#[derive(Debug)]
pub struct LocalBackend {
    cfg: LocalConfig,
    lock: ClaimerLock,
    /// The resolved `bwrap` (set by `validate`, else resolved at the first start).
    bwrap: Mutex<Option<PathBuf>>,
    /// Serializes spawns: the inheritable lifeline fd of one job exists only while its
    /// own child is being spawned, so another job's child never inherits it.
    spawn_lock: tokio::sync::Mutex<()>,
}

fn other(message: impl Into<String>) -> BackendError {
    BackendError::Other {
        backend: NAME.into(),
        message: message.into(),
    }
}

fn config(message: impl Into<String>) -> BackendError {
    BackendError::Config {
        backend: NAME.into(),
        message: message.into(),
    }
}

fn mkdir_private(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

impl LocalBackend {
    /// Create the root's dirs and take this instance's claimer lock.
    pub fn new(cfg: LocalConfig) -> Result<Self, BackendError> {
        if !cfg.root.is_absolute() {
            return Err(config(format!(
                "the root {} must be an absolute path",
                cfg.root.display()
            )));
        }
        let registry = cfg.root.join(REGISTRY_DIR);
        for dir in [&registry, &cfg.root.join(JOBS_DIR)] {
            mkdir_private(dir).map_err(|e| config(format!("creating {}: {e}", dir.display())))?;
        }
        let lock = ClaimerLock::acquire(&registry)
            .map_err(|e| config(format!("creating a lock in {}: {e}", registry.display())))?;
        Ok(Self {
            cfg,
            lock,
            bwrap: Mutex::new(None),
            spawn_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The settings.
    pub fn config(&self) -> &LocalConfig {
        &self.cfg
    }

    async fn bwrap_program(&self, opts: &BwrapOptions) -> Result<PathBuf, BackendError> {
        if let Some(p) = self.bwrap.lock().expect("bwrap lock").clone() {
            return Ok(p);
        }
        let p = sandbox::probe(opts).await?;
        *self.bwrap.lock().expect("bwrap lock") = Some(p.clone());
        Ok(p)
    }
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            image: false,
            services: false,
            hard_cancel: true,
            max_duration: None,
            max_jobs: None,
        }
    }

    async fn validate(&self) -> Result<(), BackendError> {
        let bin = &self.cfg.gsr_bin;
        let meta = std::fs::metadata(bin)
            .map_err(|e| config(format!("the gsr binary {}: {e}", bin.display())))?;
        {
            use std::os::unix::fs::PermissionsExt;
            if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                return Err(config(format!(
                    "the gsr binary {} is not an executable file",
                    bin.display()
                )));
            }
        }
        if let Sandbox::Bwrap(opts) = &self.cfg.sandbox {
            self.bwrap.lock().expect("bwrap lock").take();
            self.bwrap_program(opts).await?;
        }
        self.healthcheck().await
    }

    async fn healthcheck(&self) -> Result<(), BackendError> {
        let jobs = self.cfg.root.join(JOBS_DIR);
        if !jobs.is_dir() {
            return Err(BackendError::Unavailable {
                backend: NAME.into(),
                message: format!("the job dir {} is gone", jobs.display()),
            });
        }
        Ok(())
    }

    async fn reap(&self) -> Result<ReapReport, BackendError> {
        let r = registry::reap(&self.cfg.root, &self.lock.name)
            .await
            .map_err(|e| other(format!("reaping {}: {e}", self.cfg.root.display())))?;
        Ok(ReapReport {
            jobs: r.jobs,
            objects: r.objects,
            left_alone: r.left_alone,
        })
    }

    async fn start(&self, launch: Launch) -> Result<Box<dyn Running>, BackendError> {
        let job_id = launch.job_id;
        let start_err = |message: String| BackendError::Start {
            backend: NAME.into(),
            job_id,
            message,
        };
        let bwrap = match &self.cfg.sandbox {
            Sandbox::None => None,
            Sandbox::Bwrap(opts) => Some((self.bwrap_program(opts).await?, opts.clone())),
        };
        let key = format!("{job_id}-{:08x}", rand::random::<u32>());
        let dir = self.cfg.root.join(JOBS_DIR).join(&key);
        let record_path = self.cfg.root.join(REGISTRY_DIR).join(format!("{key}.job"));
        let mut record = Record {
            machine: Machine::current(),
            claimer: self.lock.name.clone(),
            exec: None,
            labels: launch.labels.clone().into_iter().collect(),
            dir: dir.clone(),
        };
        let job = Arc::new(JobPlace {
            job_id,
            dir: dir.clone(),
            record: record_path.clone(),
            pgid: Mutex::new(None),
        });
        // Record first, so a crash from here on leaves nothing reap cannot find.
        let prepared = (|| {
            record.write(&record_path)?;
            for sub in ["builds", "tmp", "home"] {
                mkdir_private(&dir.join(sub))?;
            }
            Ok::<_, std::io::Error>(())
        })();
        if let Err(e) = prepared {
            let _ = job.remove_files();
            return Err(start_err(format!("creating {}: {e}", dir.display())));
        }

        let (lifeline_r, lifeline_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| start_err(format!("creating the lifeline pipe: {e}")))?;
        let spawned = {
            let _one_at_a_time = self.spawn_lock.lock().await;
            self.spawn(&launch, &dir, bwrap.as_ref(), &lifeline_r)
        };
        drop(lifeline_r);
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = job.remove_files();
                return Err(start_err(e));
            }
        };
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        *job.pgid.lock().expect("pgid lock") = Some(pid);
        if let Some(stat) = procs::stat(pid) {
            record.exec = Some((pid, stat.start_time));
            if let Err(e) = record.write(&record_path) {
                tracing::warn!(job = job_id, error = %e, "could not update the job record");
            }
        }
        tracing::info!(job = job_id, pid, dir = %dir.display(), sandbox = bwrap.is_some(), "started gsr exec");

        // The payload, then end of file: `gsr exec` reads stdin to the end.
        if let Some(mut stdin) = child.stdin.take() {
            if let Err(e) = stdin.write_all(launch.payload.expose_secret()).await {
                tracing::warn!(job = job_id, error = %e, "could not hand the payload to gsr exec");
            }
        }
        let mut log_task = None;
        if let Some(stderr) = child.stderr.take() {
            log_task = Some(tokio::spawn(forward_log(job_id, stderr)));
        }

        let (tx, rx) = watch::channel(None);
        let abort = launch.abort.child_token();
        let detached = CancellationToken::new();
        let supervisor = Supervisor {
            job: job.clone(),
            child,
            lifeline: Some(lifeline_w),
            abort: abort.clone(),
            detached: detached.clone(),
            deadline: tokio::time::Instant::now() + launch.timeout + self.cfg.margin,
            grace: self.cfg.grace,
            signal_leader: bwrap.is_none(),
            log_task,
        };
        tokio::spawn(supervisor.run(tx));
        Ok(Box::new(LocalRunning {
            job,
            exit: rx,
            abort,
            _detach_on_drop: detached.drop_guard(),
        }))
    }
}

impl LocalBackend {
    /// Spawn `gsr exec` (in bwrap when sandboxed) with the lifeline's read end inherited.
    fn spawn(
        &self,
        launch: &Launch,
        dir: &Path,
        bwrap: Option<&(PathBuf, BwrapOptions)>,
        lifeline_r: &OwnedFd,
    ) -> Result<tokio::process::Child, String> {
        // An inheritable copy of the read end (dup clears close-on-exec), closed again
        // right after the spawn.
        let fd = nix::unistd::dup(lifeline_r.as_raw_fd())
            .map_err(|e| format!("duplicating the lifeline fd: {e}"))?;
        let builds = dir.join("builds");
        let exec_args: Vec<OsString> = vec![
            "exec".into(),
            "--job".into(),
            "-".into(),
            "--url".into(),
            launch.gitlab_url.clone().into(),
            "--builds-dir".into(),
            builds.into_os_string(),
            "--lifeline-fd".into(),
            fd.to_string().into(),
        ];
        let mut cmd = match bwrap {
            None => {
                let mut c = tokio::process::Command::new(&self.cfg.gsr_bin);
                c.args(&exec_args);
                c
            }
            Some((program, opts)) => {
                let mut hide = vec![self.cfg.root.clone()];
                hide.extend(self.cfg.hide.iter().cloned());
                let mut c = tokio::process::Command::new(program);
                c.args(sandbox::bwrap_args(opts, dir, &self.cfg.gsr_bin, &hide))
                    .arg("--")
                    .arg(&self.cfg.gsr_bin)
                    .args(&exec_args);
                c
            }
        };
        cmd.env_clear()
            .env("PATH", JOB_PATH)
            .env("HOME", dir.join("home"))
            .env("TMPDIR", dir.join("tmp"))
            .env("LANG", "C.UTF-8")
            .env("RUST_LOG", &self.cfg.exec_log)
            .current_dir(dir)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        let spawned = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.cfg.gsr_bin.display()));
        let _ = nix::unistd::close(fd);
        spawned
    }
}

/// `gsr exec`'s log lines into ours (it never logs secrets; its job output goes to GitLab).
/// Returns whether bubblewrap reported a failure of its own (`bwrap: …`: the sandbox
/// could not be set up, so `gsr exec` never ran).
async fn forward_log(job_id: u64, stderr: tokio::process::ChildStderr) -> bool {
    let mut sandbox_failed = false;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        sandbox_failed |= line.starts_with("bwrap: ");
        tracing::info!(job = job_id, "gsr exec: {line}");
    }
    sandbox_failed
}

/// What exists of one job on disk and in the process table.
#[derive(Debug)]
struct JobPlace {
    job_id: u64,
    dir: PathBuf,
    record: PathBuf,
    pgid: Mutex<Option<i32>>,
}

impl JobPlace {
    /// Kill whatever of the job still runs (its group, its steps' groups).
    async fn kill_rest(&self) {
        let pgid = *self.pgid.lock().expect("pgid lock");
        if let Some(pgid) = pgid {
            // The leader was our child and is reaped by now; what is left of its group
            // (if anything) is the job's.
            procs::signal_group(pgid, Signal::SIGKILL);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !procs::group_members(pgid).is_empty() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        registry::kill_job_processes(None, &self.dir).await;
    }

    fn remove_files(&self) -> std::io::Result<()> {
        registry::remove_dir(&self.dir)?;
        registry::remove_file(&self.record)?;
        Ok(())
    }
}

struct Supervisor {
    job: Arc<JobPlace>,
    child: tokio::process::Child,
    lifeline: Option<OwnedFd>,
    abort: CancellationToken,
    detached: CancellationToken,
    deadline: tokio::time::Instant,
    grace: Duration,
    signal_leader: bool,
    log_task: Option<tokio::task::JoinHandle<bool>>,
}

fn exit_of(status: std::io::Result<std::process::ExitStatus>) -> JobExit {
    match status.ok().and_then(|s| s.code()) {
        Some(code) => JobExit::Exec(code),
        None => JobExit::Killed,
    }
}

impl Supervisor {
    async fn run(mut self, tx: watch::Sender<Option<JobExit>>) {
        let job_id = self.job.job_id;
        let ended = tokio::select! {
            s = self.child.wait() => Some(exit_of(s)),
            _ = self.abort.cancelled() => None,
            _ = tokio::time::sleep_until(self.deadline) => {
                tracing::warn!(job = job_id, "the job outlived its timeout and margin; stopping it");
                None
            }
            // Dropped without cleanup (the claimer "crashed"): leave everything as it is;
            // dropping the lifeline lets `gsr exec` abort itself.
            _ = self.detached.cancelled() => return,
        };
        let exit = match ended {
            Some(exit) => exit,
            None => {
                self.lifeline.take();
                let pid = self.child.id().map(|p| p as i32);
                if let (true, Some(pid)) = (self.signal_leader, pid) {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
                }
                tokio::select! {
                    s = self.child.wait() => exit_of(s),
                    _ = tokio::time::sleep(self.grace) => {
                        tracing::warn!(job = job_id, "gsr exec did not stop within the grace; killing it");
                        if let Some(pid) = pid {
                            procs::signal_group(pid, Signal::SIGKILL);
                        }
                        let _ = self.child.wait().await;
                        JobExit::Killed
                    }
                    _ = self.detached.cancelled() => return,
                }
            }
        };
        self.lifeline.take();
        self.job.kill_rest().await;
        // A sandbox that failed to start is "never ran", so the claimer fails the job.
        let mut exit = exit;
        if let (false, Some(task), JobExit::Exec(code)) =
            (self.signal_leader, self.log_task.take(), exit)
        {
            let failed = tokio::time::timeout(Duration::from_secs(5), task).await;
            if code != 0 && matches!(failed, Ok(Ok(true))) {
                exit = JobExit::NotRun;
            }
        }
        tracing::info!(job = job_id, ?exit, "the job's place ended");
        let _ = tx.send(Some(exit));
    }
}

/// A job started by [`LocalBackend`].
struct LocalRunning {
    job: Arc<JobPlace>,
    exit: watch::Receiver<Option<JobExit>>,
    abort: CancellationToken,
    _detach_on_drop: DropGuard,
}

#[async_trait::async_trait]
impl Running for LocalRunning {
    async fn wait(&self) -> Result<JobExit, BackendError> {
        let mut rx = self.exit.clone();
        let seen = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| other(format!("job {}: its supervisor is gone", self.job.job_id)))?;
        Ok(seen.expect("checked by wait_for"))
    }

    fn abort(&self) {
        self.abort.cancel();
    }

    async fn cleanup(&self) -> Result<(), BackendError> {
        // Called while the job still runs: stop it first (bounded by the grace).
        if self.exit.borrow().is_none() {
            self.abort.cancel();
            let _ = self.wait().await;
        }
        self.job.kill_rest().await;
        self.job.remove_files().map_err(|e| {
            other(format!(
                "job {}: removing {}: {e}",
                self.job.job_id,
                self.job.dir.display()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A stand-in for `gsr exec` that ignores SIGTERM and its lifeline and starts a
    /// grandchild in its group: only SIGKILL of the group ends it.
    fn stubborn_exec(dir: &Path) -> PathBuf {
        let bin = dir.join("stubborn-gsr");
        std::fs::write(
            &bin,
            "#!/bin/sh\ntrap '' TERM\ncat > \"$HOME/payload\"\nsleep 300 &\necho $! > \"$HOME/grandchild\"\nwhile true; do sleep 1; done\n",
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    fn launch(timeout: Duration) -> Launch {
        Launch {
            job_id: 77,
            payload: secrecy::SecretSlice::from(b"{\"token\":\"job-token-123\"}".to_vec()),
            gitlab_url: "http://127.0.0.1:9".into(),
            timeout,
            labels: BTreeMap::from([("gsr.job".to_string(), "77".to_string())]),
            abort: CancellationToken::new(),
        }
    }

    async fn grandchild(job_dir_root: &Path) -> i32 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let found = std::fs::read_dir(job_dir_root.join(JOBS_DIR))
                .unwrap()
                .flatten()
                .find_map(|e| std::fs::read_to_string(e.path().join("home/grandchild")).ok())
                .and_then(|s| s.trim().parse().ok());
            if let Some(pid) = found {
                return pid;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stub never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn abort_kills_a_stubborn_job_after_the_grace_and_cleanup_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let mut cfg = LocalConfig::new(stubborn_exec(tmp.path()), &root);
        cfg.grace = Duration::from_millis(500);
        let backend = LocalBackend::new(cfg).unwrap();
        backend.validate().await.unwrap();
        let running = backend
            .start(launch(Duration::from_secs(3600)))
            .await
            .unwrap();
        let pid = grandchild(&root).await;
        let payload = std::fs::read_dir(root.join(JOBS_DIR))
            .unwrap()
            .flatten()
            .find_map(|e| std::fs::read(e.path().join("home/payload")).ok())
            .unwrap();
        assert_eq!(
            payload, b"{\"token\":\"job-token-123\"}",
            "the payload came by stdin"
        );

        running.abort();
        let exit = tokio::time::timeout(Duration::from_secs(60), running.wait())
            .await
            .expect("wait returns after the grace")
            .unwrap();
        assert_eq!(exit, JobExit::Killed);
        assert!(
            !procs::stat(pid).is_some_and(|s| s.is_running()),
            "the grandchild died with the group"
        );
        running.cleanup().await.unwrap();
        running.cleanup().await.unwrap();
        assert_eq!(std::fs::read_dir(root.join(JOBS_DIR)).unwrap().count(), 0);
        let records = std::fs::read_dir(root.join(REGISTRY_DIR))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "job"))
            .count();
        assert_eq!(records, 0);
    }

    #[tokio::test]
    async fn the_backend_kills_a_job_past_its_timeout_and_margin() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let mut cfg = LocalConfig::new(stubborn_exec(tmp.path()), &root);
        cfg.grace = Duration::from_millis(200);
        cfg.margin = Duration::from_millis(500);
        let backend = LocalBackend::new(cfg).unwrap();
        let running = backend.start(launch(Duration::from_secs(1))).await.unwrap();
        let pid = grandchild(&root).await;
        let exit = tokio::time::timeout(Duration::from_secs(60), running.wait())
            .await
            .expect("the backstop fires")
            .unwrap();
        assert_eq!(exit, JobExit::Killed);
        assert!(!procs::stat(pid).is_some_and(|s| s.is_running()));
        running.cleanup().await.unwrap();
    }

    #[tokio::test]
    async fn a_relative_root_or_a_missing_binary_is_a_config_error() {
        assert!(matches!(
            LocalBackend::new(LocalConfig::new("/bin/true", "relative/root")),
            Err(BackendError::Config { .. })
        ));
        let tmp = tempfile::tempdir().unwrap();
        let backend =
            LocalBackend::new(LocalConfig::new(tmp.path().join("no-gsr"), tmp.path())).unwrap();
        let err = backend.validate().await.unwrap_err().to_string();
        assert!(err.contains("no-gsr"), "{err}");
    }
}
