//! The `local` backend, plain and inside bubblewrap (`bwrap` must be installed for the
//! `bwrap` module: the apt package `bubblewrap`).
//!
//! "Nothing left" for `local`: no job dir, no registry record, and no process whose
//! command line names the job's dir (`gsr exec --builds-dir …`, `bwrap --bind …`); the
//! suite itself also checks that no process carries the job's marker variable.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use gsr_backend::conformance::{Leftovers, Suite, SuiteOptions};
use gsr_backend::Backend;
use gsr_backend_local::{BwrapOptions, LocalBackend, LocalConfig, Sandbox};

/// Stands for the claimer's secrets (runner token, control-plane keys).
const SECRET_NAME: &str = "GSR_TEST_SECRET";
const SECRET_VALUE: &str = "claimer-secret-5f0c1d9e";

fn claimer_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var(SECRET_NAME, SECRET_VALUE);
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_test_writer()
            .try_init();
    });
}

struct LocalLeftovers {
    root: PathBuf,
}

fn entries_of_job(dir: &Path, job_id: u64) -> Vec<String> {
    let prefix = format!("{job_id}-");
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl Leftovers for LocalLeftovers {
    async fn of_job(&self, job_id: u64) -> Vec<String> {
        let mut left = entries_of_job(&self.root.join("jobs"), job_id);
        left.extend(entries_of_job(&self.root.join("registry"), job_id));
        let job_dir = format!("{}/jobs/{job_id}-", self.root.display());
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next())
                .is_some_and(|s| s == "Z" || s == "X");
            if cmdline.contains(&job_dir) && !zombie {
                left.push(format!("process {pid}: {cmdline}"));
            }
        }
        left
    }
}

/// A suite over `local` backends sharing one root (as a restarted claimer would).
async fn suite(sandbox: Sandbox) -> (Suite, tempfile::TempDir) {
    claimer_env();
    let root = tempfile::tempdir().expect("tempdir");
    let mut cfg = LocalConfig::new(env!("CARGO_BIN_EXE_gsr"), root.path());
    cfg.sandbox = sandbox;
    cfg.grace = Duration::from_secs(5);
    let factory_cfg = cfg.clone();
    let suite = Suite::start(
        Arc::new(move || {
            Arc::new(LocalBackend::new(factory_cfg.clone()).expect("backend")) as Arc<dyn Backend>
        }),
        Arc::new(LocalLeftovers {
            root: root.path().to_path_buf(),
        }),
        SuiteOptions::default(),
    )
    .await;
    suite.backend().validate().await.expect("validate");
    (suite, root)
}

macro_rules! conformance {
    ($variant:ident, $sandbox:expr) => {
        mod $variant {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn success() {
                suite($sandbox).await.0.success().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn failure() {
                suite($sandbox).await.0.failure().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cancel() {
                suite($sandbox).await.0.cancel().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn timeout() {
                suite($sandbox).await.0.timeout().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn abort() {
                suite($sandbox).await.0.abort().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn artifacts() {
                suite($sandbox).await.0.artifacts().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn crash() {
                suite($sandbox).await.0.crash().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn secrets() {
                suite($sandbox)
                    .await
                    .0
                    .secrets(SECRET_NAME, SECRET_VALUE)
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn image_and_services_are_not_claimed() {
                let (suite, _root) = suite($sandbox).await;
                let caps = suite.backend().capabilities();
                assert!(!caps.image && !caps.services && caps.hard_cancel);
            }
        }
    };
}

conformance!(plain, Sandbox::None);
conformance!(bwrap, Sandbox::Bwrap(BwrapOptions::default()));

/// Asking for a sandbox that is not installed fails at `validate` with a clear message.
#[tokio::test]
async fn a_missing_bwrap_fails_validate() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut cfg = LocalConfig::new(env!("CARGO_BIN_EXE_gsr"), root.path());
    cfg.sandbox = Sandbox::Bwrap(BwrapOptions {
        program: PathBuf::from("no-such-bwrap-here"),
        unshare_net: false,
    });
    let backend = LocalBackend::new(cfg).expect("backend");
    let err = backend.validate().await.unwrap_err().to_string();
    assert!(
        err.contains("not installed") && err.contains("bubblewrap"),
        "{err}"
    );
}

/// Inside the sandbox the job sees its own PID namespace, a read-only system and a
/// private /tmp, and can write its workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwrap_isolates_the_job() {
    let (suite, root) = suite(Sandbox::Bwrap(BwrapOptions::default())).await;
    let marker = root.path().join("outside-marker");
    std::fs::write(&marker, "x").unwrap();
    let host_tmp = tempfile::NamedTempFile::new_in("/tmp").unwrap();
    let host_tmp = host_tmp.path();
    let backend = suite.backend();
    let (spec, mark) = suite.job(&[
        // Quotes split the expected words, so the echoed command lines cannot match.
        "echo pid''s=$(ls /proc | grep -c '^[0-9]')",
        "if touch /usr/gsr-probe 2>/dev/null; then echo system-writ''able; else echo system-read''-only; fi",
        &format!("if [ -e {} ]; then echo root-vis''ible; else echo root-hid''den; fi", marker.display()),
        &format!("if [ -e {} ]; then echo tmp-sha''red; else echo tmp-priv''ate; fi", host_tmp.display()),
        "echo da''ta-in-workspace > workspace-file && cat workspace-file",
    ]);
    let job = suite.launch(backend.as_ref(), spec, mark).await;
    let exit = suite.finish(&job).await;
    let trace = suite.trace(job.id).await;
    assert_eq!(exit, gsr_backend::JobExit::Exec(0), "{trace}");
    assert!(trace.contains("system-read-only"), "{trace}");
    assert!(trace.contains("root-hidden"), "{trace}");
    assert!(trace.contains("tmp-private"), "{trace}");
    assert!(trace.contains("data-in-workspace"), "{trace}");
    let pids: u32 = trace
        .rsplit("pids=")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(u32::MAX);
    assert!(
        pids < 20,
        "only the sandbox's processes are visible: {pids}"
    );
}

/// The lifeline: when the claimer is gone (here: its backend and job handle dropped
/// without cleanup, which closes the pipe as a crash would), `gsr exec` aborts the job on
/// its own, kills its steps and tells GitLab, before any reap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_claimer_ends_its_jobs_through_the_lifeline() {
    for sandbox in [Sandbox::None, Sandbox::Bwrap(BwrapOptions::default())] {
        let (suite, _root) = suite(sandbox).await;
        let backend = suite.backend();
        let (spec, mark) = suite.job(&["echo ready-for-lifeline", "sleep 300"]);
        let job = suite.launch(backend.as_ref(), spec, mark).await;
        suite.wait_trace(job.id, "ready-for-lifeline").await;
        let (id, mark) = (job.id, job.mark.clone());
        drop(job);
        drop(backend);
        let view = suite
            .admin
            .wait_for_status(id, &["failed"], Duration::from_secs(120))
            .await
            .expect("gsr exec reports the job failed by itself");
        assert_eq!(view.failure_reason.as_deref(), Some("runner_interrupted"));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !gsr_backend::conformance::processes_with_mark(&mark).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the job's processes outlived the claimer"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let trace = suite.trace(id).await;
        assert!(!trace.contains("Job succeeded"), "{trace}");
        // Only files remain; a new instance's reap removes them.
        let report = suite.backend().reap().await.expect("reap");
        assert_eq!(report.jobs, 1, "{report:?}");
    }
}

/// A sandbox that cannot be set up (here: a path to hide that cannot be created under the
/// read-only system) means `gsr exec` never ran: `JobExit::NotRun`, so the claimer fails
/// the job with the token it holds; the job's dir and record are still cleaned up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_that_cannot_start_is_not_run() {
    claimer_env();
    let root = tempfile::tempdir().expect("tempdir");
    let mut cfg = LocalConfig::new(env!("CARGO_BIN_EXE_gsr"), root.path());
    cfg.sandbox = Sandbox::Bwrap(BwrapOptions::default());
    cfg.hide = vec![PathBuf::from("/nonexistent-gsr-test-dir/hidden")];
    let factory_cfg = cfg.clone();
    let suite = Suite::start(
        Arc::new(move || {
            Arc::new(LocalBackend::new(factory_cfg.clone()).expect("backend")) as Arc<dyn Backend>
        }),
        Arc::new(LocalLeftovers {
            root: root.path().to_path_buf(),
        }),
        SuiteOptions::default(),
    )
    .await;
    let backend = suite.backend();
    let (spec, mark) = suite.job(&["echo never"]);
    let job = suite.launch(backend.as_ref(), spec, mark).await;
    let exit = suite.finish(&job).await;
    assert_eq!(exit, gsr_backend::JobExit::NotRun);
    let view = suite.admin.job(job.id).await.expect("job");
    // Claimed but never acknowledged (no two-phase `PUT state=running`).
    assert_eq!(
        view.status.as_str(),
        "pending",
        "GitLab never heard from gsr exec"
    );
}
