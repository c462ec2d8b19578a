//! The docker backend against a real daemon, with a stand-in for `gsr` (a shell script
//! mounted where the binary goes) so that every scenario is exact and fast: image, stdin
//! payload, scrubbed environment, services by alias, failure, abort, timeout, pull
//! policies, clean-up and the reaping of a dead claimer's jobs. The real `gsr exec` in a
//! container is tested end to end in `crates/gsr/tests/docker`.
//!
//! Needs a daemon (`.ci/run` starts one) and the images of `scripts/test-images.sh`; the
//! tests fail with a clear message without them, unless `GSR_TEST_SKIP_DOCKER=1`.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bollard::query_parameters::{ListContainersOptions, ListNetworksOptions, ListVolumesOptions};
use gsr_backend::{Backend, BackendError, CancellationToken, JobExit, Launch};
use gsr_backend_docker::{DockerBackend, DockerSettings, Owner};
use secrecy::SecretSlice;

const IMAGE: &str = "gsr-test/debian:bookworm";
const TOKEN: &str = "glcbt-64_DOCKERtestJOBtokenZZZZZZ";

/// The stand-in for `gsr exec`: reads the payload from stdin and acts on a marker in it.
const FAKE_GSR: &str = r#"#!/bin/sh
payload=$(cat)
case "$payload" in *END-OF-PAYLOAD*) ;; *) echo "incomplete payload" >&2; exit 20;; esac
# The payload (and so the job token) is in no argument and no environment variable.
case "$*" in *glcbt-*) exit 21;; esac
if env | grep -q glcbt-; then exit 22; fi
if env | grep -q CLAIMER_SECRET; then exit 23; fi
case "$payload" in
  *MODE-OSRELEASE*) grep -q 'VERSION_CODENAME=bookworm' /etc/os-release || exit 24
                    [ -d /builds ] && [ -w /builds ] || exit 25
                    [ "$2" = "--job" ] && [ "$3" = "-" ] || exit 26
                    exit 0;;
  *MODE-FAIL*) exit 1;;
  *MODE-SERVICE*)
    i=0
    while [ $i -lt 100 ]; do
      python3 -c 'import socket,sys; c=socket.create_connection(("web",8000),2); c.sendall(b"GET / HTTP/1.0\r\n\r\n"); sys.exit(0 if b"svc-ok" in c.recv(4096) else 1)' 2>/dev/null && exit 0
      i=$((i + 1)); sleep 0.2
    done
    exit 30;;
  *MODE-SLEEP*) trap 'exit 3' TERM; sleep 600 & wait; exit 31;;
  *MODE-STUBBORN*) trap '' TERM; sleep 600 & wait; exit 32;;
esac
exit 40
"#;

/// A minimal HTTP server answering `svc-ok` on port 8000 (the test image has
/// python3-minimal: `socket`, no `http.server`).
const HTTP_SERVICE: &str = "import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 8000))
s.listen(16)
while True:
    c, _ = s.accept()
    c.recv(65536)
    c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: 7\\r\\n\\r\\nsvc-ok\\n')
    c.close()
";

struct Fixture {
    backend: DockerBackend,
    _dir: tempfile::TempDir,
}

fn skip() -> bool {
    std::env::var("GSR_TEST_SKIP_DOCKER").as_deref() == Ok("1")
}

/// A backend on the local daemon with the stand-in `gsr`, or `None` when skipped.
async fn fixture_with(change: impl FnOnce(&mut DockerSettings)) -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("gsr");
    std::fs::write(&fake, FAKE_GSR).expect("write fake gsr");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut settings = DockerSettings {
        gsr_binary: Some(fake),
        default_image: IMAGE.into(),
        pull_policy: gsr_backend_docker::PullPolicy::Never,
        stop_grace_secs: 2,
        ..DockerSettings::default()
    };
    change(&mut settings);
    let backend = match DockerBackend::connect(settings).await {
        Ok(b) => b,
        Err(e) if skip() => {
            eprintln!("GSR_TEST_SKIP_DOCKER=1: skipping ({e})");
            return None;
        }
        Err(e) => panic!(
            "these tests need a Docker daemon on /var/run/docker.sock (.ci/run starts one; \
             set GSR_TEST_SKIP_DOCKER=1 to skip): {e}"
        ),
    };
    backend.validate().await.expect("validate");
    if backend.client().inspect_image(IMAGE).await.is_err() {
        panic!("image {IMAGE} is missing: run crates/gsr-backend-docker/scripts/test-images.sh");
    }
    Some(Fixture { backend, _dir: dir })
}

async fn fixture() -> Option<Fixture> {
    fixture_with(|_| {}).await
}

/// A job id no other test (or earlier run) uses.
fn job_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    let base = u64::from(std::process::id()) * 1000 + 9_000_000_000;
    base + N.fetch_add(1, Ordering::SeqCst)
}

fn payload(job_id: u64, mode: &str, extra: serde_json::Value) -> Vec<u8> {
    let mut v = serde_json::json!({
        "id": job_id,
        "token": TOKEN,
        "image": {"name": IMAGE, "pull_policy": ["never"]},
        "steps": [{"name": "script", "script": ["true"], "when": "on_success"}],
        "marker": format!("MODE-{mode}"),
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in e {
            o.insert(k.clone(), val.clone());
        }
    }
    // Last key: the stand-in checks it read the whole payload.
    v.as_object_mut()
        .expect("object")
        .insert("zz".into(), "END-OF-PAYLOAD".into());
    serde_json::to_vec(&v).expect("json")
}

fn launch(job_id: u64, payload: Vec<u8>, timeout: Duration) -> Launch {
    Launch {
        job_id,
        payload: SecretSlice::from(payload),
        gitlab_url: "http://gitlab.invalid".into(),
        timeout,
        labels: BTreeMap::from([(
            "gsr.claimer".to_string(),
            format!("backend-test@{}", std::process::id()),
        )]),
        abort: CancellationToken::new(),
    }
}

/// Containers, networks and volumes labelled with this job.
/// Wait (hang guard 60 s) until the job container of `job_id` runs its `sleep`.
async fn sleeping(backend: &DockerBackend, job_id: u64) {
    let filter = HashMap::from([(
        "label".to_string(),
        vec![format!("gsr.job={job_id}"), "gsr.role=job".to_string()],
    )]);
    let d = backend.client();
    for _ in 0..600 {
        let containers = d
            .list_containers(Some(ListContainersOptions {
                filters: Some(filter.clone()),
                ..Default::default()
            }))
            .await
            .expect("list containers");
        for c in containers {
            let Some(id) = c.id else { continue };
            if let Ok(top) = d
                .top_processes(&id, None::<bollard::query_parameters::TopOptions>)
                .await
            {
                let sleeping = top
                    .processes
                    .unwrap_or_default()
                    .iter()
                    .any(|p| p.iter().any(|f| f.contains("sleep 600")));
                if sleeping {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {job_id} never reached its sleep");
}

async fn leftovers(backend: &DockerBackend, job_id: u64) -> Vec<String> {
    let filter = HashMap::from([("label".to_string(), vec![format!("gsr.job={job_id}")])]);
    let d = backend.client();
    let mut out = Vec::new();
    for c in d
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filter.clone()),
            ..Default::default()
        }))
        .await
        .expect("list containers")
    {
        out.push(format!("container {:?}", c.names));
    }
    for n in d
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filter.clone()),
        }))
        .await
        .expect("list networks")
    {
        out.push(format!("network {:?}", n.name));
    }
    for v in d
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(filter),
        }))
        .await
        .expect("list volumes")
        .volumes
        .unwrap_or_default()
    {
        out.push(format!("volume {}", v.name));
    }
    out
}

/// Hang guard only: generous, never a performance assertion.
async fn guarded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(180), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result after 180 s"))
}

async fn run_to_end(fx: &Fixture, job: u64, mode: &str, extra: serde_json::Value) -> JobExit {
    let running = guarded(
        "start",
        fx.backend.start(launch(
            job,
            payload(job, mode, extra),
            Duration::from_secs(600),
        )),
    )
    .await
    .expect("start");
    assert!(
        !leftovers(&fx.backend, job).await.is_empty(),
        "the job's objects exist while it runs"
    );
    let exit = guarded("wait", running.wait()).await.expect("wait");
    running.cleanup().await.expect("cleanup");
    running.cleanup().await.expect("cleanup is idempotent");
    assert_eq!(leftovers(&fx.backend, job).await, Vec::<String>::new());
    exit
}

#[tokio::test]
async fn job_runs_in_its_image_with_the_payload_on_stdin_only() {
    let Some(fx) = fixture().await else { return };
    let job = job_id();
    let exit = run_to_end(&fx, job, "OSRELEASE", serde_json::json!({})).await;
    assert_eq!(exit, JobExit::Exec(0), "see the exit codes of FAKE_GSR");
}

#[tokio::test]
async fn a_failing_job_reports_its_status() {
    let Some(fx) = fixture().await else { return };
    let job = job_id();
    let exit = run_to_end(&fx, job, "FAIL", serde_json::json!({})).await;
    assert_eq!(exit, JobExit::Exec(1));
}

#[tokio::test]
async fn a_service_is_reached_by_its_alias() {
    let Some(fx) = fixture().await else { return };
    let job = job_id();
    let services = serde_json::json!({"services": [{
        "name": IMAGE,
        "alias": "web",
        "pull_policy": ["never"],
        "entrypoint": ["python3", "-c"],
        "command": [HTTP_SERVICE],
    }]});
    let exit = run_to_end(&fx, job, "SERVICE", services).await;
    assert_eq!(exit, JobExit::Exec(0), "30 = the service was never reached");
}

#[tokio::test]
async fn abort_sends_sigterm_first_then_kills() {
    let Some(fx) = fixture().await else { return };
    // SIGTERM is handled: `gsr exec` ends the job itself (canceled = 3).
    let job = job_id();
    let running = fx
        .backend
        .start(launch(
            job,
            payload(job, "SLEEP", serde_json::json!({})),
            Duration::from_secs(600),
        ))
        .await
        .expect("start");
    // Abort only once the stand-in has its TERM handler: a signal that arrives while it is
    // still reading the payload races the script's own start-up, not the backend.
    sleeping(&fx.backend, job).await;
    running.abort();
    assert_eq!(
        guarded("wait", running.wait()).await.expect("wait"),
        JobExit::Exec(3)
    );
    running.cleanup().await.expect("cleanup");
    assert_eq!(leftovers(&fx.backend, job).await, Vec::<String>::new());

    // SIGTERM ignored: killed after the grace.
    let job = job_id();
    let l = launch(
        job,
        payload(job, "STUBBORN", serde_json::json!({})),
        Duration::from_secs(600),
    );
    let abort = l.abort.clone();
    let running = fx.backend.start(l).await.expect("start");
    abort.cancel(); // the launch's token works like Running::abort
    assert_eq!(
        guarded("wait", running.wait()).await.expect("wait"),
        JobExit::Killed
    );
    running.cleanup().await.expect("cleanup");
    assert_eq!(leftovers(&fx.backend, job).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_job_past_its_timeout_is_stopped() {
    let Some(fx) = fixture_with(|s| s.timeout_margin_secs = 0).await else {
        return;
    };
    let job = job_id();
    let running = fx
        .backend
        .start(launch(
            job,
            payload(job, "SLEEP", serde_json::json!({})),
            Duration::from_secs(1),
        ))
        .await
        .expect("start");
    assert_eq!(
        guarded("wait", running.wait()).await.expect("wait"),
        JobExit::Exec(3)
    );
    running.cleanup().await.expect("cleanup");
    assert_eq!(leftovers(&fx.backend, job).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_missing_image_is_a_start_error_and_leaves_nothing() {
    let Some(fx) = fixture().await else { return };
    // `never` and the image is not there.
    let job = job_id();
    let p = payload(
        job,
        "OSRELEASE",
        serde_json::json!({"image": {"name": "gsr-test/absent:1", "pull_policy": ["never"]}}),
    );
    let err = match fx
        .backend
        .start(launch(job, p, Duration::from_secs(60)))
        .await
    {
        Err(e) => e,
        Ok(_) => panic!("started without its image"),
    };
    assert!(
        matches!(err, BackendError::Start { job_id, .. } if job_id == job),
        "{err}"
    );
    assert!(err.to_string().contains("gsr-test/absent:1"), "{err}");
    assert_eq!(leftovers(&fx.backend, job).await, Vec::<String>::new());

    // `if-not-present` and the pull fails (a registry that refuses connections, on
    // loopback): the same, for a service image.
    let job = job_id();
    let p = payload(
        job,
        "OSRELEASE",
        serde_json::json!({"services": [{"name": "localhost:1/absent/svc:1",
                                          "pull_policy": ["if-not-present"]}]}),
    );
    let err = match fx
        .backend
        .start(launch(job, p, Duration::from_secs(60)))
        .await
    {
        Err(e) => e,
        Ok(_) => panic!("started without its service image"),
    };
    assert!(matches!(err, BackendError::Start { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("pulling image localhost:1/absent/svc:1"),
        "{err}"
    );
    assert!(!err.to_string().contains(TOKEN));
    assert_eq!(leftovers(&fx.backend, job).await, Vec::<String>::new());
}

#[tokio::test]
async fn reap_removes_the_jobs_of_a_dead_claimer_only() {
    let Some(live) = fixture().await else { return };
    // A claimer that has died: a process that ran and exited (its PID with another start
    // time, or no process at all, is what a crash leaves).
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let dead_pid = child.id();
    child.wait().expect("wait true");
    let dead = Owner {
        pid: dead_pid,
        start: 1,
        ..Owner::current()
    };
    let crashed = fixture()
        .await
        .expect("second backend")
        .backend
        .with_owner(dead);

    let orphan_job = job_id();
    let orphan = crashed
        .start(launch(
            orphan_job,
            payload(orphan_job, "SLEEP", serde_json::json!({})),
            Duration::from_secs(600),
        ))
        .await
        .expect("start orphan");
    drop(orphan); // the claimer "crashed": no wait, no cleanup

    let live_job = job_id();
    let running = live
        .backend
        .start(launch(
            live_job,
            payload(live_job, "SLEEP", serde_json::json!({})),
            Duration::from_secs(600),
        ))
        .await
        .expect("start live");

    assert!(!leftovers(&live.backend, orphan_job).await.is_empty());
    let report = guarded("reap", live.backend.reap()).await.expect("reap");
    assert!(report.jobs >= 1, "{report:?}");
    assert!(
        report.objects >= 3,
        "container, network, volume: {report:?}"
    );
    assert!(report.left_alone >= 3, "the live job's objects: {report:?}");
    assert_eq!(
        leftovers(&live.backend, orphan_job).await,
        Vec::<String>::new()
    );
    assert_eq!(
        leftovers(&live.backend, live_job).await.len(),
        3,
        "the live claimer's job is untouched"
    );
    // Reaping again finds nothing more of that claimer.
    let again = live.backend.reap().await.expect("reap again");
    assert!(
        leftovers(&live.backend, orphan_job).await.is_empty(),
        "{again:?}"
    );

    running.abort();
    assert_eq!(
        guarded("wait", running.wait()).await.expect("wait"),
        JobExit::Exec(3)
    );
    running.cleanup().await.expect("cleanup");
    assert_eq!(
        leftovers(&live.backend, live_job).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn settings_and_daemon_problems_are_clear_errors() {
    if skip() {
        return;
    }
    let err = match DockerBackend::connect(DockerSettings {
        socket: Some("unix:///nonexistent/docker.sock".into()),
        ..DockerSettings::default()
    })
    .await
    {
        Err(e) => e,
        Ok(_) => panic!("connected to nothing"),
    };
    assert!(matches!(err, BackendError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("docker daemon"), "{err}");

    let err = match DockerBackend::connect(DockerSettings {
        cpus: Some(-1.0),
        ..DockerSettings::default()
    })
    .await
    {
        Err(e) => e,
        Ok(_) => panic!("accepted cpus = -1"),
    };
    assert!(matches!(err, BackendError::Config { .. }), "{err}");

    let backend = DockerBackend::connect(DockerSettings {
        gsr_binary: Some("/nonexistent/gsr".into()),
        ..DockerSettings::default()
    })
    .await
    .expect("the daemon answers (see the other tests)");
    let err = backend.validate().await.expect_err("no gsr binary");
    assert!(matches!(err, BackendError::Config { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/gsr"), "{err}");
    backend.healthcheck().await.expect("healthcheck");
}

/// The job container's HostConfig as the daemon has it.
async fn job_host_config(backend: &DockerBackend, job_id: u64) -> bollard::models::HostConfig {
    let filter = HashMap::from([(
        "label".to_string(),
        vec![format!("gsr.job={job_id}"), "gsr.role=job".to_string()],
    )]);
    let found = backend
        .client()
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filter),
            ..Default::default()
        }))
        .await
        .expect("list");
    let id = found
        .first()
        .and_then(|c| c.id.clone())
        .expect("the job container");
    backend
        .client()
        .inspect_container(&id, None)
        .await
        .expect("inspect")
        .host_config
        .expect("host config")
}

#[tokio::test]
async fn limits_apply_and_privileged_is_opt_in() {
    let Some(fx) = fixture_with(|s| {
        s.memory_bytes = Some(64 << 20);
        s.cpus = Some(0.5);
        s.pids_limit = Some(256);
    })
    .await
    else {
        return;
    };
    let job = job_id();
    let running = fx
        .backend
        .start(launch(
            job,
            payload(job, "SLEEP", serde_json::json!({})),
            Duration::from_secs(600),
        ))
        .await
        .expect("start");
    let hc = job_host_config(&fx.backend, job).await;
    assert_eq!(hc.memory, Some(64 << 20));
    assert_eq!(hc.nano_cpus, Some(500_000_000));
    assert_eq!(hc.pids_limit, Some(256));
    assert_eq!(hc.privileged, Some(false));
    running.abort();
    guarded("wait", running.wait()).await.expect("wait");
    running.cleanup().await.expect("cleanup");
    assert_eq!(leftovers(&fx.backend, job).await, Vec::<String>::new());

    let Some(fx) = fixture_with(|s| s.privileged = true).await else {
        return;
    };
    let job = job_id();
    let started = fx
        .backend
        .start(launch(
            job,
            payload(job, "SLEEP", serde_json::json!({})),
            Duration::from_secs(600),
        ))
        .await;
    match started {
        Ok(running) => {
            assert_eq!(
                job_host_config(&fx.backend, job).await.privileged,
                Some(true)
            );
            running.abort();
            guarded("wait", running.wait()).await.expect("wait");
            running.cleanup().await.expect("cleanup");
        }
        // Our test machines cannot run privileged containers at all (root there lacks
        // CAP_SYS_RESOURCE, so runc cannot grant every capability): then the start fails
        // cleanly, which is also what must happen.
        Err(BackendError::Start { message, .. }) if message.contains("apply caps") => {}
        Err(e) => panic!("privileged start: {e}"),
    }
    assert_eq!(leftovers(&fx.backend, job).await, Vec::<String>::new());
}
