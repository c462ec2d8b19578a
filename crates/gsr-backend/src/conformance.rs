//! The conformance suite every backend runs (cargo feature `testkit`).
//!
//! # How a backend uses it
//!
//! ```text
//! use gsr_backend::conformance::{Suite, SuiteOptions, Leftovers};
//! // In the backend's test target (it needs the real `gsr` binary):
//! let suite = Suite::start(
//!     Arc::new(move || Arc::new(MyBackend::new(/* gsr bin, settings */)) as Arc<dyn Backend>),
//!     Arc::new(MyLeftovers { /* what "nothing left" means for this backend */ }),
//!     SuiteOptions::default(),
//! ).await;
//! suite.success().await;       // one scenario per #[tokio::test], each with its own Suite
//! ```
//!
//! - **The factory** makes a new backend instance each time it is called (same settings).
//!   The suite calls it once per scenario, and twice in [`Suite::crash`] (the second
//!   instance stands for the claimer restarted after a crash). It captures the `gsr` binary
//!   path the backend runs (`env!("CARGO_BIN_EXE_gsr")` in a test of the `gsr` crate).
//! - **[`Leftovers`]** is the backend's own "nothing of this job is left" check:
//!   processes, dirs, containers, networks, volumes. The suite calls it after every
//!   scenario (after `cleanup`, and after `reap` in the crash scenario), and it must return
//!   an empty list. The suite also checks, for every backend, that no host process carries
//!   the job's marker variable any more (`GSR_CONFORMANCE_MARK`, set as a job variable).
//! - **The simulator** is started by [`Suite::start`] (one per suite, so scenarios run in
//!   parallel). [`SuiteOptions::listen`] and [`SuiteOptions::job_url`] let a container
//!   backend make it reachable from inside its containers.
//! - Jobs are claimed the way the dispatcher does it: `POST /jobs/request` with the runner
//!   token through [`gsr_gitlab::Coordinator::request_job`], and the raw payload is handed to
//!   [`Backend::start`]. Jobs use `GIT_STRATEGY: none`, so a backend's image needs no git.
//!   A backend with [`Capabilities::max_duration`](crate::Capabilities::max_duration) gets
//!   jobs whose timeout is at most that limit (the claimer routes longer ones elsewhere).
//!
//! # Scenarios
//!
//! | method | what it proves |
//! |---|---|
//! | [`Suite::success`] | output reaches the trace, GitLab says `success`, exit `Exec(0)` |
//! | [`Suite::failure`] | `exit 1` → `failed`/`script_failure`, exit `Exec(1)` |
//! | [`Suite::cancel`] | GitLab cancel reaches `gsr exec` → `canceled`, exit `Exec(3)` |
//! | [`Suite::timeout`] | a 3 s job timeout → `failed`/`job_execution_timeout` |
//! | [`Suite::abort`] | [`Running::abort`] → `wait` returns within the bound, GitLab gets `failed` |
//! | [`Suite::artifacts`] | an artifact archive reaches GitLab |
//! | [`Suite::crash`] | dropped without cleanup → a new instance's `reap` removes it, reports it, and leaves a live instance's job alone |
//! | [`Suite::secrets`] | the claimer's environment (a known `GSR_TEST_SECRET`) is in neither the job's `env` nor `/proc/<pid>/environ` of the job's processes and their ancestors |
//! | [`Suite::image_and_services`] | a job with `image:` and one `services:` entry succeeds (skipped when the backend has no such capability) |
//!
//! Every scenario ends with `cleanup` called twice (idempotency) and the leftovers checks.
//! Timeouts in here are hang guards only (generous: the machines are small and shared).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gsr_gitlab::{Coordinator, Features, JobRequest, RunnerInfo};
use gsr_sim::{AdminClient, ArtifactInput, JobSpecInput, SimConfig, SimHandle, VariableInput};
use secrecy::{SecretSlice, SecretString};

use crate::{Backend, CancellationToken, JobExit, Launch, Running};

/// Makes a fresh backend instance with the settings under test.
pub type Factory = Arc<dyn Fn() -> Arc<dyn Backend> + Send + Sync>;

/// The backend's own "nothing of the job is left" check.
#[async_trait::async_trait]
pub trait Leftovers: Send + Sync {
    /// What of job `job_id` still exists (one readable line each); empty when nothing.
    async fn of_job(&self, job_id: u64) -> Vec<String>;
}

/// The job variable every scenario's job carries, to find its processes on the host.
pub const MARK_VARIABLE: &str = "GSR_CONFORMANCE_MARK";

/// Where the suite's simulator listens and how jobs reach it.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// The simulator's listen address (default `127.0.0.1:0`).
    pub listen: SocketAddr,
    /// The GitLab URL handed to jobs (`Launch::gitlab_url`); `{port}` is replaced by the
    /// simulator's port. Default: the simulator's own URL.
    pub job_url: Option<String>,
    /// Whether the job's processes are visible in this host's `/proc` (true for local
    /// processes and containers of a local engine; the secrets scenario then reads their
    /// environment).
    pub host_processes: bool,
    /// How long [`Running::wait`] may take after [`Running::abort`] (the backend's grace
    /// plus slack).
    pub abort_bound: Duration,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            job_url: None,
            host_processes: true,
            abort_bound: Duration::from_secs(60),
        }
    }
}

/// A simulator, a project, a runner, and the backend under test.
pub struct Suite {
    /// The simulator (its admin client is [`Suite::admin`]).
    pub sim: SimHandle,
    /// Admin client of the simulator.
    pub admin: AdminClient,
    /// The project jobs belong to.
    pub project_id: u64,
    runner_token: SecretString,
    job_url: String,
    factory: Factory,
    leftovers: Arc<dyn Leftovers>,
    opts: SuiteOptions,
    data_dir: std::path::PathBuf,
}

impl Drop for Suite {
    fn drop(&mut self) {
        // The simulator's repositories and artifacts.
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A started job.
pub struct Started {
    /// GitLab's job id.
    pub id: u64,
    /// The marker value in the job's environment.
    pub mark: String,
    /// The backend's handle.
    pub running: Box<dyn Running>,
}

const HANG: Duration = Duration::from_secs(180);

impl Suite {
    /// Start a simulator with a project and a runner.
    pub async fn start(
        factory: Factory,
        leftovers: Arc<dyn Leftovers>,
        opts: SuiteOptions,
    ) -> Suite {
        let data = std::env::temp_dir().join(format!(
            "gsr-conformance-sim-{}-{:016x}",
            std::process::id(),
            rand_u64()
        ));
        let cfg = SimConfig {
            listen: opts.listen,
            data_dir: data.clone(),
            long_poll: Duration::from_secs(1),
            trace_update_interval: 1,
            ..SimConfig::default()
        };
        let sim = gsr_sim::spawn(cfg).await.expect("the simulator starts");
        let admin = sim.admin();
        let project = admin
            .create_project("group/conformance")
            .await
            .expect("project");
        let (_, token) = admin.create_runner(&[], true).await.expect("runner");
        let job_url = match &opts.job_url {
            Some(u) => u.replace("{port}", &sim.addr.port().to_string()),
            None => sim.url.clone(),
        };
        Suite {
            sim,
            admin,
            project_id: project.id,
            runner_token: SecretString::from(token),
            job_url,
            factory,
            leftovers,
            opts,
            data_dir: data,
        }
    }

    /// A new backend instance from the factory.
    pub fn backend(&self) -> Arc<dyn Backend> {
        (self.factory)()
    }

    /// A job spec with the suite's defaults (no git, a marker variable).
    pub fn job(&self, script: &[&str]) -> (JobSpecInput, String) {
        let mark = format!("m{:016x}", rand_u64());
        let mut spec = JobSpecInput::new(self.project_id, script.iter().copied())
            .with_variable(VariableInput::new("GIT_STRATEGY", "none"))
            .with_variable(VariableInput::new(MARK_VARIABLE, mark.clone()));
        // The project has no repository (jobs do not fetch sources): name a commit.
        spec.sha = Some("c0ffee".repeat(6) + "c0ff");
        (spec, mark)
    }

    /// Enqueue `spec`, claim it with the runner token, start it on `backend`.
    pub async fn launch(&self, backend: &dyn Backend, spec: JobSpecInput, mark: String) -> Started {
        let mut spec = spec;
        // A backend with a time limit (Lambda: 15 min) gets jobs that fit it, as the
        // claimer's routing would give it (GitLab's default timeout is 1 h).
        if let Some(max) = backend.capabilities().max_duration.map(|m| m.as_secs()) {
            if spec.timeout.is_none_or(|t| t > max) {
                spec.timeout = Some(max);
            }
        }
        let (id, _) = self.admin.create_job(&spec).await.expect("job enqueued");
        let info = RunnerInfo::new(backend.name(), "bash", Features::worker());
        let coordinator = Coordinator::new(&self.sim.url, &info).expect("coordinator");
        let deadline = tokio::time::Instant::now() + HANG;
        let claimed = loop {
            match coordinator
                .request_job(&self.runner_token, "s_conformance0", None, &info)
                .await
                .expect("jobs/request")
            {
                JobRequest::Job(job) => break job,
                JobRequest::Malformed(e) => panic!("job {id}: malformed payload: {e}"),
                JobRequest::NoJob { .. } => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "job {id} was never handed out"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert_eq!(
            claimed.spec.id, id,
            "claimed another job than the one enqueued"
        );
        let labels = BTreeMap::from([
            (
                "gsr.claimer".to_string(),
                format!("conformance-{}", std::process::id()),
            ),
            ("gsr.job".to_string(), id.to_string()),
        ]);
        let launch = Launch {
            job_id: id,
            payload: SecretSlice::from(claimed.payload.to_vec()),
            gitlab_url: self.job_url.clone(),
            timeout: claimed.spec.timeout,
            labels,
            abort: CancellationToken::new(),
        };
        let running = backend
            .start(launch)
            .await
            .expect("the backend starts the job");
        Started { id, mark, running }
    }

    /// The job's trace as text.
    pub async fn trace(&self, id: u64) -> String {
        String::from_utf8_lossy(&self.admin.trace(id).await.expect("trace")).into_owned()
    }

    /// Wait until the trace contains `needle`.
    pub async fn wait_trace(&self, id: u64, needle: &str) {
        let deadline = tokio::time::Instant::now() + HANG;
        loop {
            if self.trace(id).await.contains(needle) {
                return;
            }
            let job = self.admin.job(id).await.expect("job");
            assert!(
                !["success", "failed", "canceled"].contains(&job.status.as_str()),
                "job {id} ended ({}) before printing {needle:?}:\n{}",
                job.status.as_str(),
                self.trace(id).await
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} never printed {needle:?}:\n{}",
                self.trace(id).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `wait` (hang-guarded), then `cleanup` twice and the leftovers checks.
    pub async fn finish(&self, job: &Started) -> JobExit {
        let exit = tokio::time::timeout(HANG, job.running.wait())
            .await
            .unwrap_or_else(|_| panic!("job {}: wait did not return", job.id))
            .expect("wait");
        self.clean(job).await;
        exit
    }

    /// `cleanup` twice, then nothing of the job may be left.
    pub async fn clean(&self, job: &Started) {
        job.running.cleanup().await.expect("cleanup");
        job.running
            .cleanup()
            .await
            .expect("a second cleanup is fine too");
        self.assert_nothing_left(job.id, &job.mark).await;
    }

    /// No host process with the job's marker, and the backend's own check is empty.
    pub async fn assert_nothing_left(&self, id: u64, mark: &str) {
        let procs = processes_with_mark(mark);
        assert!(procs.is_empty(), "job {id}: processes left: {procs:?}");
        let left = self.leftovers.of_job(id).await;
        assert!(left.is_empty(), "job {id}: left behind: {left:#?}");
    }

    async fn status(&self, id: u64, statuses: &[&str]) -> gsr_sim::JobView {
        match self.admin.wait_for_status(id, statuses, HANG).await {
            Ok(v) => v,
            Err(e) => panic!("{e}\n--- trace ---\n{}", self.trace(id).await),
        }
    }

    /// See the module docs.
    pub async fn success(&self) {
        let backend = self.backend();
        let (spec, mark) = self.job(&["echo conformance-$((40 + 2))"]);
        let job = self.launch(backend.as_ref(), spec, mark).await;
        let exit = self.finish(&job).await;
        let view = self
            .status(job.id, &["success", "failed", "canceled"])
            .await;
        assert_eq!(
            view.status.as_str(),
            "success",
            "{}",
            self.trace(job.id).await
        );
        assert_eq!(exit, JobExit::Exec(0));
        let trace = self.trace(job.id).await;
        assert!(trace.contains("conformance-42"), "{trace}");
    }

    /// See the module docs.
    pub async fn failure(&self) {
        let backend = self.backend();
        let (spec, mark) = self.job(&["echo before-failure", "exit 1"]);
        let job = self.launch(backend.as_ref(), spec, mark).await;
        let exit = self.finish(&job).await;
        let view = self
            .status(job.id, &["success", "failed", "canceled"])
            .await;
        assert_eq!(view.status.as_str(), "failed");
        assert_eq!(view.failure_reason.as_deref(), Some("script_failure"));
        assert_eq!(exit, JobExit::Exec(1));
        assert!(self.trace(job.id).await.contains("before-failure"));
    }

    /// See the module docs.
    pub async fn cancel(&self) {
        let backend = self.backend();
        let (spec, mark) = self.job(&[
            "echo ready-to-cancel",
            // Output keeps trace PATCHes flowing; their replies carry the cancel.
            "while true; do echo tick; sleep 0.3; done",
        ]);
        let job = self.launch(backend.as_ref(), spec, mark).await;
        self.wait_trace(job.id, "ready-to-cancel").await;
        self.admin.cancel(job.id).await.expect("cancel");
        let exit = self.finish(&job).await;
        let view = self
            .status(job.id, &["success", "failed", "canceled"])
            .await;
        assert_eq!(view.status.as_str(), "canceled");
        assert_eq!(exit, JobExit::Exec(3));
    }

    /// See the module docs.
    pub async fn timeout(&self) {
        let backend = self.backend();
        let (mut spec, mark) = self.job(&["echo started", "sleep 120"]);
        spec.timeout = Some(3);
        let job = self.launch(backend.as_ref(), spec, mark).await;
        let exit = self.finish(&job).await;
        let view = self
            .status(job.id, &["success", "failed", "canceled"])
            .await;
        assert_eq!(view.status.as_str(), "failed");
        assert_eq!(
            view.failure_reason.as_deref(),
            Some("job_execution_timeout"),
            "{}",
            self.trace(job.id).await
        );
        assert_eq!(exit, JobExit::Exec(1));
    }

    /// See the module docs.
    pub async fn abort(&self) {
        let backend = self.backend();
        let (spec, mark) = self.job(&["echo ready-to-abort", "sleep 300"]);
        let job = self.launch(backend.as_ref(), spec, mark).await;
        self.wait_trace(job.id, "ready-to-abort").await;
        job.running.abort();
        let exit = tokio::time::timeout(self.opts.abort_bound, job.running.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "wait did not return within {:?} of abort",
                    self.opts.abort_bound
                )
            })
            .expect("wait");
        assert_ne!(exit, JobExit::NotRun);
        self.clean(&job).await;
        let view = self
            .status(job.id, &["success", "failed", "canceled"])
            .await;
        assert_eq!(
            view.status.as_str(),
            "failed",
            "{}",
            self.trace(job.id).await
        );
    }

    /// See the module docs.
    pub async fn artifacts(&self) {
        let backend = self.backend();
        let (spec, mark) = self.job(&["mkdir -p out", "echo artifact-body > out/a.txt"]);
        let spec = spec.with_artifact(ArtifactInput::archive(["out/"]));
        let job = self.launch(backend.as_ref(), spec, mark).await;
        let exit = self.finish(&job).await;
        let view = self
            .status(job.id, &["success", "failed", "canceled"])
            .await;
        assert_eq!(
            view.status.as_str(),
            "success",
            "{}",
            self.trace(job.id).await
        );
        assert_eq!(exit, JobExit::Exec(0));
        let zip = self
            .admin
            .artifact(job.id, "archive")
            .await
            .expect("artifact")
            .expect("an archive was uploaded");
        assert!(
            zip.windows(9).any(|w| w == b"out/a.txt"),
            "the archive lists out/a.txt"
        );
    }

    /// See the module docs.
    pub async fn crash(&self) {
        let first = self.backend();
        first.validate().await.expect("validate");
        let (spec, mark) = self.job(&["echo ready-for-crash", "sleep 300"]);
        let crashed = self.launch(first.as_ref(), spec, mark).await;
        self.wait_trace(crashed.id, "ready-for-crash").await;
        // The claimer "dies": nothing of it runs any more, nothing is cleaned up.
        let (crashed_id, crashed_mark) = (crashed.id, crashed.mark.clone());
        drop(crashed);
        drop(first);

        let second = self.backend();
        let (spec, mark) = self.job(&["echo live-job", "sleep 5", "echo live-job-done"]);
        let live = self.launch(second.as_ref(), spec, mark).await;
        self.wait_trace(live.id, "live-job").await;

        let third = self.backend();
        let report = third.reap().await.expect("reap");
        assert!(report.jobs >= 1, "the crashed job was reaped: {report:?}");
        assert!(report.objects >= 1, "something was removed: {report:?}");
        assert!(
            report.left_alone >= 1,
            "the live job was left alone: {report:?}"
        );
        // Processes may take a moment to be gone after SIGKILL.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !processes_with_mark(&crashed_mark).is_empty()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.assert_nothing_left(crashed_id, &crashed_mark).await;
        let again = third.reap().await.expect("a second reap");
        assert_eq!(again.jobs, 0, "reaping is idempotent: {again:?}");

        let exit = self.finish(&live).await;
        assert_eq!(exit, JobExit::Exec(0), "{}", self.trace(live.id).await);
        self.status(live.id, &["success"]).await;
    }

    /// See the module docs. The test process must have `name` set in its own environment
    /// (the claimer's), normally to `value`, before the suite starts. Several backend
    /// modules of one test binary may each set it to a value of their own: the check
    /// looks for the name, `value` and the value set now.
    pub async fn secrets(&self, name: &str, value: &str) {
        let current = std::env::var(name).unwrap_or_else(|_| {
            panic!("set {name} in the test process first: it stands for the claimer's secrets")
        });
        let needles = [name, value, current.as_str()];
        let backend = self.backend();
        let (spec, mark) = self.job(&[
            "echo env-start",
            "env | sort",
            "echo env-end",
            "sleep 300 &",
            "echo ready-secrets",
            "wait",
        ]);
        let job = self.launch(backend.as_ref(), spec, mark).await;
        self.wait_trace(job.id, "ready-secrets").await;
        if self.opts.host_processes {
            let procs = processes_with_mark(&job.mark);
            assert!(
                !procs.is_empty(),
                "the job's processes are visible in /proc"
            );
            let me = std::process::id() as i32;
            let mut checked = 0;
            for pid in procs {
                // The job process and its ancestors up to (not including) the claimer.
                let mut p = pid;
                while p > 1 && p != me {
                    let env = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
                    assert!(
                        !needles.iter().any(|n| contains(&env, n.as_bytes())),
                        "process {p} (an ancestor of job process {pid}) has the claimer's {name}"
                    );
                    checked += 1;
                    p = parent(p).unwrap_or(0);
                }
            }
            assert!(checked > 0);
        }
        self.admin.cancel(job.id).await.expect("cancel");
        let exit = self.finish(&job).await;
        assert_eq!(exit, JobExit::Exec(3));
        let trace = self.trace(job.id).await;
        assert!(
            trace.contains("env-end") && trace.contains(MARK_VARIABLE),
            "{trace}"
        );
        assert!(
            !needles.iter().any(|n| trace.contains(n)),
            "the job's env shows the claimer's {name}:\n{trace}"
        );
    }

    /// See the module docs. `image` and `service` are as in `.gitlab-ci.yml` (a name, or
    /// an object with `name`, `alias`, …); `script` proves the service is reachable.
    /// Returns without doing anything when the backend lacks the capabilities.
    pub async fn image_and_services(
        &self,
        image: serde_json::Value,
        service: serde_json::Value,
        script: &[&str],
    ) {
        let backend = self.backend();
        let caps = backend.capabilities();
        if !(caps.image && caps.services) {
            return;
        }
        let (mut spec, mark) = self.job(script);
        spec.image = Some(image);
        spec.services = vec![service];
        let job = self.launch(backend.as_ref(), spec, mark).await;
        let exit = self.finish(&job).await;
        let view = self
            .status(job.id, &["success", "failed", "canceled"])
            .await;
        assert_eq!(
            view.status.as_str(),
            "success",
            "{}",
            self.trace(job.id).await
        );
        assert_eq!(exit, JobExit::Exec(0));
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Running (not zombie) processes whose environment has `GSR_CONFORMANCE_MARK=<mark>`.
pub fn processes_with_mark(mark: &str) -> Vec<i32> {
    let needle = format!("{MARK_VARIABLE}={mark}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) && running(*pid)
        })
        .collect()
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn running(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z" && s != "X"))
}

fn parent(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}
