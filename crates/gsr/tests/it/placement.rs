//! `gsr run-single --executor local|docker` (the real binary against the simulator): jobs
//! placed on a backend through `gsr_worker::place`, routing to `--fallback-executor`, and
//! a backend that cannot start a job failing it in GitLab itself.
//!
//! "Nothing left": for `local`, no job dir under the backend's root and no job process
//! (each job prints its shell's PID); for `docker`, no container, network or volume
//! labelled with the job and this run's claimer.
//!
//! The docker tests need a daemon and the offline test image (run them under
//! `crates/gsr-backend-docker/scripts/with-dockerd.sh`); they fail with a clear message
//! without one, unless `GSR_TEST_SKIP_DOCKER=1`. Networking as in
//! `tests/backends/docker.rs`: the simulator listens on the gateway of a bridge network the
//! test creates, the only host address a job container reaches on our daemons.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Output;

use gsr_backend_docker::bollard::models::NetworkCreateRequest;
use gsr_backend_docker::bollard::query_parameters::{
    ListContainersOptions, ListNetworksOptions, ListVolumesOptions,
};
use gsr_backend_docker::bollard::Docker;

use crate::harness::{alive, expect_status, output, Env};

const IMAGE: &str = "gsr-test/debian:bookworm";

/// Job dirs the local backend left under its root.
fn local_job_dirs(env: &Env) -> Vec<String> {
    let jobs = env.builds_dir().join(".gsr-local").join("jobs");
    std::fs::read_dir(&jobs)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// PIDs a job printed as `JOBPID=<pid>`.
fn printed_pids(trace: &str) -> Vec<i32> {
    trace
        .lines()
        .filter_map(|l| l.trim().strip_prefix("JOBPID="))
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_backend_runs_jobs_and_leaves_nothing() {
    let env = Env::new().await;
    let ok = env
        .enqueue(env.job(&[
            "echo JOBPID=$$",
            "echo \"WHERE=$PWD\"",
            "cat README.md",
            "if [ -n \"${RUNNER_TOKEN:-}${CI_SERVER_TOKEN:-}\" ]; then echo runner-token-vis''ible; fi",
            "(sleep 2917 &) ; echo started-a-straggler",
        ]))
        .await;
    let bad = env
        .enqueue(env.job(&["echo JOBPID=$$", "echo about-to-fail", "exit 3"]))
        .await;
    let mut cmd = env.run_single_cmd(2);
    cmd.args(["--executor", "local"]);
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", stderr(&out));

    expect_status(&env, ok, "success", &out).await;
    let trace = env.trace(ok).await;
    assert!(trace.contains("demo commit 3"), "{trace}");
    assert!(
        trace.contains("/.gsr-local/jobs/"),
        "not on the local backend: {trace}"
    );
    assert!(!trace.contains("runner-token-visible"), "{trace}");
    assert!(!trace.contains(&env.runner_token), "{trace}");

    let view = expect_status(&env, bad, "failed", &out).await;
    assert_eq!(view.failure_reason.as_deref(), Some("script_failure"));
    let bad_trace = env.trace(bad).await;
    assert!(bad_trace.contains("about-to-fail"), "{bad_trace}");

    let pids: Vec<i32> = printed_pids(&trace)
        .into_iter()
        .chain(printed_pids(&bad_trace))
        .collect();
    assert_eq!(pids.len(), 2, "{trace}\n{bad_trace}");
    for pid in pids {
        assert!(!alive(pid), "job process {pid} is still running");
    }
    // The straggler `sleep 2917` of the first job: no process of ours runs it any more.
    let left: Vec<String> = procs_with_arg("2917")
        .into_iter()
        .filter(|cmdline| cmdline.starts_with("sleep"))
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
    assert_eq!(local_job_dirs(&env), Vec::<String>::new());
    let log = stderr(&out);
    assert!(!log.contains(&env.runner_token), "{log}");
}

/// Command lines (NUL → space) of this user's processes that have `arg` as an argument.
fn procs_with_arg(arg: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let parts: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        if parts.iter().skip(1).any(|p| p == arg) && alive(pid) {
            found.push(parts.join(" "));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_jobs_go_to_the_fallback_executor() {
    let env = Env::new().await;
    let mut short = env.job(&["echo \"WHERE=$PWD\""]);
    short.timeout = Some(60);
    let short = env.enqueue(short).await;
    let mut long = env.job(&["echo \"WHERE=$PWD\""]);
    long.timeout = Some(3600);
    let long = env.enqueue(long).await;
    let mut cmd = env.run_single_cmd(2);
    cmd.args([
        "--executor",
        "local",
        "--executor-max-duration",
        "600",
        "--fallback-executor",
        "shell",
    ]);
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", stderr(&out));
    expect_status(&env, short, "success", &out).await;
    expect_status(&env, long, "success", &out).await;
    let short_trace = env.trace(short).await;
    let long_trace = env.trace(long).await;
    // The local backend runs a job in its own dir under `.gsr-local/jobs/`; the in-process
    // shell executor in the builds dir itself.
    assert!(short_trace.contains("/.gsr-local/jobs/"), "{short_trace}");
    assert!(!long_trace.contains("/.gsr-local/"), "{long_trace}");
    assert!(
        long_trace.contains(&format!("WHERE={}", env.builds_dir().display())),
        "{long_trace}"
    );
    let log = stderr(&out);
    assert!(log.contains("job sent to the fallback"), "{log}");
    assert!(
        log.contains("exceeds the local backend's limit (10 min)"),
        "{log}"
    );
    assert_eq!(local_job_dirs(&env), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_jobs_without_a_fallback_are_failed_with_a_reason() {
    let env = Env::new().await;
    let mut long = env.job(&["echo should-not-run"]);
    long.timeout = Some(3600);
    let long = env.enqueue(long).await;
    let mut cmd = env.run_single_cmd(1);
    cmd.args(["--executor", "local", "--executor-max-duration", "600"]);
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let view = expect_status(&env, long, "failed", &out).await;
    assert_eq!(
        view.failure_reason.as_deref(),
        Some("runner_system_failure")
    );
    let trace = env.trace(long).await;
    assert!(
        trace.contains("gsr: cannot run the job: the job's timeout (60 min) exceeds the local backend's limit (10 min) and no fallback is configured"),
        "{trace}"
    );
    assert!(!trace.contains("should-not-run"), "{trace}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_executor_settings_are_refused_at_start() {
    let env = Env::new().await;
    for (args, expected) in [
        (&["--executor", "podman"][..], "unknown executor \"podman\""),
        (
            &["--executor", "shell", "--sandbox", "bwrap"][..],
            "--sandbox applies to the local executor only",
        ),
        (
            &["--executor", "local", "--sandbox", "firejail"][..],
            "unknown --sandbox \"firejail\"",
        ),
        (
            &["--executor", "shell", "--executor-max-duration", "60"][..],
            "--executor-max-duration applies to backends",
        ),
        // No cluster configuration here: a clear error, no job taken.
        (
            &[
                "--executor",
                "kubernetes",
                "--kubernetes-gsr-image",
                "gsr:test",
            ][..],
            "Kubernetes",
        ),
    ] {
        let mut cmd = env.run_single_cmd(1);
        cmd.args(args)
            .env_remove("KUBECONFIG")
            .env("HOME", env.dir.path());
        let out = output(cmd).await;
        assert!(!out.status.success(), "{args:?} was accepted");
        let log = stderr(&out);
        assert!(log.contains(expected), "{args:?}: {log}");
    }
}

// ---- docker ----------------------------------------------------------------------------

/// A bridge network of the test's own, whose gateway the simulator listens on.
struct TestNet {
    docker: Docker,
    name: String,
    gateway: IpAddr,
}

impl TestNet {
    async fn create(docker: &Docker) -> TestNet {
        let name = format!("gsr-test-placement-{}", uuid::Uuid::new_v4().simple());
        docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                // The label tests/backends/docker.rs uses to remove networks of dead runs.
                labels: Some(HashMap::from([(
                    "gsr.test-gitlab-net".to_string(),
                    std::process::id().to_string(),
                )])),
                ..Default::default()
            })
            .await
            .expect("create the simulator's network");
        let net = docker
            .inspect_network(&name, None)
            .await
            .expect("inspect network");
        let gateway = net
            .ipam
            .and_then(|i| i.config)
            .and_then(|c| c.into_iter().find_map(|c| c.gateway))
            .expect("the network has a gateway")
            .parse()
            .expect("gateway address");
        TestNet {
            docker: docker.clone(),
            name,
            gateway,
        }
    }

    async fn remove(self) {
        self.docker
            .remove_network(&self.name)
            .await
            .expect("remove the simulator's network");
    }
}

/// The daemon, or `None` when skipped; a clear failure otherwise.
async fn docker() -> Option<Docker> {
    let skip = std::env::var("GSR_TEST_SKIP_DOCKER").as_deref() == Ok("1");
    let answer = match Docker::connect_with_socket_defaults() {
        Ok(d) => d.ping().await.map(|_| d),
        Err(e) => Err(e),
    };
    match answer {
        Ok(d) => {
            if d.inspect_image(IMAGE).await.is_err() {
                panic!("image {IMAGE} is missing: run crates/gsr-backend-docker/scripts/test-images.sh");
            }
            Some(d)
        }
        Err(e) if skip => {
            eprintln!("GSR_TEST_SKIP_DOCKER=1: skipping ({e})");
            None
        }
        Err(e) => panic!(
            "these tests need a Docker daemon on /var/run/docker.sock (run them under \
             crates/gsr-backend-docker/scripts/with-dockerd.sh; set GSR_TEST_SKIP_DOCKER=1 \
             to skip): {e}"
        ),
    }
}

/// Containers, networks and volumes labelled with `job` whose claimer is this run's.
async fn docker_leftovers(docker: &Docker, job: u64, runner_name: &str) -> Vec<String> {
    let filters = Some(HashMap::from([(
        "label".to_string(),
        vec![format!("gsr.job={job}")],
    )]));
    let ours = |labels: Option<&HashMap<String, String>>| {
        labels
            .and_then(|l| l.get("gsr.claimer"))
            .is_some_and(|c| c.starts_with(&format!("{runner_name}-")))
    };
    let mut left = Vec::new();
    for c in docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: filters.clone(),
            ..Default::default()
        }))
        .await
        .expect("list containers")
    {
        if ours(c.labels.as_ref()) {
            left.push(format!("container {:?}", c.names));
        }
    }
    for n in docker
        .list_networks(Some(ListNetworksOptions {
            filters: filters.clone(),
        }))
        .await
        .expect("list networks")
    {
        if ours(n.labels.as_ref()) {
            left.push(format!("network {:?}", n.name));
        }
    }
    for v in docker
        .list_volumes(Some(ListVolumesOptions { filters }))
        .await
        .expect("list volumes")
        .volumes
        .unwrap_or_default()
    {
        if ours(Some(&v.labels)) {
            left.push(format!("volume {}", v.name));
        }
    }
    left
}

/// A minimal HTTP server answering `svc-ok` on port 8000 (the test image has
/// python3-minimal only).
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

const REACH_SERVICE: &str = "for i in $(seq 100); do python3 -c 'import socket,sys; c=socket.create_connection((\"web\",8000),2); c.sendall(b\"GET / HTTP/1.0\\r\\n\\r\\n\"); d=c.recv(4096); print(d.decode().splitlines()[-1]); sys.exit(0 if b\"svc-ok\" in d else 1)' 2>/dev/null && break; sleep 0.2; done";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_backend_runs_image_and_services_and_fails_unstartable_jobs() {
    let Some(docker) = docker().await else {
        return;
    };
    let net = TestNet::create(&docker).await;
    let gateway = net.gateway;
    let env = Env::with_config(move |c| c.listen = SocketAddr::new(gateway, 0)).await;
    let runner_name = format!("placement-{}", uuid::Uuid::new_v4().simple());

    let mut good = env.job(&[
        "cat README.md",
        "grep PRETTY_NAME /etc/os-release",
        REACH_SERVICE,
        "if [ -n \"${RUNNER_TOKEN:-}\" ]; then echo runner-token-vis''ible; fi",
    ]);
    good.image = Some(serde_json::json!({"name": IMAGE, "pull_policy": ["never"]}));
    good.services = vec![serde_json::json!({"name": IMAGE, "alias": "web",
        "pull_policy": ["never"], "entrypoint": ["python3", "-c"], "command": [HTTP_SERVICE]})];
    let good = env.enqueue(good).await;
    let mut missing = env.job(&["echo should-not-run"]);
    missing.image =
        Some(serde_json::json!({"name": "gsr-test/does-not-exist:1", "pull_policy": ["never"]}));
    let missing = env.enqueue(missing).await;

    let mut cmd = env.run_single_cmd(2);
    cmd.args([
        "--executor",
        "docker",
        "--docker-image",
        IMAGE,
        "--docker-pull-policy",
        "never",
        "--name",
        &runner_name,
    ]);
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", stderr(&out));

    expect_status(&env, good, "success", &out).await;
    let trace = env.trace(good).await;
    assert!(trace.contains("demo commit 3"), "{trace}");
    assert!(trace.contains("Debian GNU/Linux 12 (bookworm)"), "{trace}");
    assert!(trace.contains("svc-ok"), "{trace}");
    assert!(!trace.contains("runner-token-visible"), "{trace}");

    let view = expect_status(&env, missing, "failed", &out).await;
    assert_eq!(
        view.failure_reason.as_deref(),
        Some("runner_system_failure")
    );
    let trace = env.trace(missing).await;
    assert!(
        trace.contains("gsr: the docker backend could not start the job:"),
        "{trace}"
    );
    assert!(trace.contains("gsr-test/does-not-exist:1"), "{trace}");
    assert!(!trace.contains("should-not-run"), "{trace}");

    for job in [good, missing] {
        let left = docker_leftovers(&docker, job, &runner_name).await;
        assert!(left.is_empty(), "job {job} left {left:?}");
    }
    let log = stderr(&out);
    assert!(!log.contains(&env.runner_token), "{log}");
    drop(env);
    net.remove().await;
}

/// A job on the local backend, seen from outside while it runs: its process's environment
/// (`/proc/<pid>/environ`) holds no runner token; SIGTERM to `gsr run-single` aborts it
/// through the backend, GitLab gets a final state, and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_backend_job_environment_and_abort() {
    let env = Env::new().await;
    let id = env
        .enqueue(env.job(&["echo JOBPID=$$", "sleep 2918", "echo not-reached"]))
        .await;
    let mut cmd = env.run_single_cmd(1);
    cmd.args(["--executor", "local"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .expect("gsr runs");

    // Wait (hang guard only) for the job to print its PID.
    let mut pid = None;
    for _ in 0..600 {
        if let Some(p) = printed_pids(&env.trace(id).await).first() {
            pid = Some(*p);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let pid = pid.expect("the job printed its PID");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
    let environ = String::from_utf8_lossy(&environ);
    let keys: Vec<&str> = environ
        .split('\0')
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
        .collect();
    assert!(
        !environ.contains(&env.runner_token),
        "runner token in the job's environment"
    );
    for k in ["RUNNER_TOKEN", "CI_SERVER_TOKEN", "RUST_LOG_STYLE", "CARGO"] {
        assert!(!keys.contains(&k), "{k} reached the job: {keys:?}");
    }
    assert!(keys.contains(&"CI_JOB_ID"), "{keys:?}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().expect("pid") as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let out = child.wait_with_output().await.expect("gsr ends");
    let view = expect_status(&env, id, "failed", &out).await;
    let trace = env.trace(id).await;
    assert!(!trace.contains("not-reached"), "{trace}");
    assert!(
        matches!(
            view.failure_reason.as_deref(),
            Some("runner_system_failure" | "runner_interrupted")
        ),
        "{:?}\n{trace}",
        view.failure_reason
    );
    assert!(!alive(pid), "job process {pid} is still running");
    assert!(
        procs_with_arg("2918").is_empty(),
        "{:?}",
        procs_with_arg("2918")
    );
    assert_eq!(local_job_dirs(&env), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_backend_with_bwrap_runs_a_job() {
    let env = Env::new().await;
    let id = env
        .enqueue(env.job(&[
            "echo JOBPID=$$",
            "cat README.md",
            "ls /proc | grep -c '^[0-9]'",
        ]))
        .await;
    let mut cmd = env.run_single_cmd(1);
    cmd.args(["--executor", "local", "--sandbox", "bwrap"]);
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", stderr(&out));
    expect_status(&env, id, "success", &out).await;
    let trace = env.trace(id).await;
    assert!(trace.contains("demo commit 3"), "{trace}");
    // Own PID namespace: the job's shell is not a PID of ours.
    let pids = printed_pids(&trace);
    assert_eq!(pids.len(), 1, "{trace}");
    assert!(pids[0] < 100, "not in its own PID namespace: {trace}");
    assert_eq!(local_job_dirs(&env), Vec::<String>::new());
}

/// The parent PID of `pid`.
fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `gsr exec` dies without a word (SIGKILL): the claimer sees the place killed and gives
/// GitLab the final state itself, with a line at the end of the job's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_backend_killed_exec_is_failed_by_the_claimer() {
    let env = Env::new().await;
    let id = env
        .enqueue(env.job(&["echo JOBPID=$$", "sleep 2919", "echo not-reached"]))
        .await;
    let mut cmd = env.run_single_cmd(1);
    cmd.args(["--executor", "local"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .expect("gsr runs");
    let mut pid = None;
    for _ in 0..600 {
        if let Some(p) = printed_pids(&env.trace(id).await).first() {
            pid = Some(*p);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let pid = pid.expect("the job printed its PID");
    // Up from the job's shell to its `gsr exec`.
    let mut exec = pid;
    loop {
        let cmdline = std::fs::read(format!("/proc/{exec}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.iter().any(|a| *a == b"exec") && args.iter().any(|a| *a == b"--job") {
            break;
        }
        exec = ppid(exec)
            .filter(|p| *p > 1)
            .expect("gsr exec is an ancestor of the job");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(exec),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL");
    let out = child.wait_with_output().await.expect("gsr ends");
    assert!(out.status.success(), "{}", stderr(&out));
    let view = expect_status(&env, id, "failed", &out).await;
    assert_eq!(
        view.failure_reason.as_deref(),
        Some("runner_system_failure")
    );
    let trace = env.trace(id).await;
    assert!(
        trace.contains("JOBPID="),
        "the job's own trace was kept: {trace}"
    );
    assert!(
        trace.contains("gsr: the job on the local backend was killed"),
        "{trace}"
    );
    assert!(!trace.contains("not-reached"), "{trace}");
    assert!(!alive(pid), "job process {pid} is still running");
    assert!(
        procs_with_arg("2919").is_empty(),
        "{:?}",
        procs_with_arg("2919")
    );
    assert_eq!(local_job_dirs(&env), Vec::<String>::new());
}
