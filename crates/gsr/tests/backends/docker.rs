//! The `docker` backend under the conformance suite, with the real `gsr` binary mounted
//! into containers of the offline test image (`crates/gsr-backend-docker/scripts/
//! test-images.sh`), plus a job that clones its sources, runs in its `image:` and reaches
//! its `services:` entry by alias.
//!
//! Networking (see `gsr-backend-docker`'s docs): our daemons run `--bridge=none
//! --iptables=false`, so a container reaches only the host's own addresses. Each test
//! creates a bridge network of its own, and the simulator listens on that network's
//! gateway address; the jobs, on their own per-job networks, reach it through their
//! default route. No other address is used.
//!
//! "Nothing left" for `docker`: no container, network or volume labelled with the job
//! (`gsr.job=<id>`), asserted through the Engine API.
//!
//! Needs a daemon (`.ci/run` starts one) and the test image; fails with a clear message
//! without them, unless `GSR_TEST_SKIP_DOCKER=1`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Once};

use gsr_backend::conformance::{Leftovers, Suite, SuiteOptions};
use gsr_backend::{Backend, JobExit};
use gsr_backend_docker::bollard::models::NetworkCreateRequest;
use gsr_backend_docker::bollard::query_parameters::{
    ListContainersOptions, ListNetworksOptions, ListVolumesOptions,
};
use gsr_backend_docker::bollard::Docker;
use gsr_backend_docker::{DockerBackend, DockerSettings, PullPolicy};

const IMAGE: &str = "gsr-test/debian:bookworm";
/// Stands for the claimer's secrets (runner token, control-plane keys).
const SECRET_NAME: &str = "GSR_TEST_SECRET";
const SECRET_VALUE: &str = "claimer-secret-docker-7d2e";
/// Label of the networks these tests make for the simulator.
const TEST_NET_LABEL: &str = "gsr.test-gitlab-net";
/// Label naming the suite (the `labels` setting).
const SUITE_LABEL: &str = "test.suite";

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

/// The job's side: fetch `http://web:8000/` (retrying while the service starts).
const REACH_SERVICE: &str = "for i in $(seq 100); do python3 -c 'import socket,sys; c=socket.create_connection((\"web\",8000),2); c.sendall(b\"GET / HTTP/1.0\\r\\n\\r\\n\"); d=c.recv(4096); print(d.decode().splitlines()[-1]); sys.exit(0 if b\"svc-ok\" in d else 1)' 2>/dev/null && break; sleep 0.2; done";

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

/// Settings of one suite: `suite` labels its objects, because every suite's simulator
/// numbers its jobs from the same id.
fn settings(suite: &str) -> DockerSettings {
    DockerSettings {
        labels: [(SUITE_LABEL.to_string(), suite.to_string())].into(),
        gsr_binary: Some(env!("CARGO_BIN_EXE_gsr").into()),
        default_image: IMAGE.into(),
        pull_policy: PullPolicy::Never,
        stop_grace_secs: 5,
        ..DockerSettings::default()
    }
}

struct DockerLeftovers {
    docker: Docker,
    suite: String,
}

#[async_trait::async_trait]
impl Leftovers for DockerLeftovers {
    async fn of_job(&self, job_id: u64) -> Vec<String> {
        let filter = HashMap::from([(
            "label".to_string(),
            vec![
                format!("gsr.job={job_id}"),
                format!("{SUITE_LABEL}={}", self.suite),
            ],
        )]);
        let mut left = Vec::new();
        for c in self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filter.clone()),
                ..Default::default()
            }))
            .await
            .expect("list containers")
        {
            left.push(format!("container {:?} ({:?})", c.names, c.state));
        }
        for n in self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filter.clone()),
            }))
            .await
            .expect("list networks")
        {
            left.push(format!("network {:?}", n.name));
        }
        for v in self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filter),
            }))
            .await
            .expect("list volumes")
            .volumes
            .unwrap_or_default()
        {
            left.push(format!("volume {}", v.name));
        }
        left
    }
}

/// A bridge network of the test's own, whose gateway address the simulator listens on.
/// Removed by [`TestNet::remove`]; networks of earlier runs that died are removed first.
struct TestNet {
    docker: Docker,
    name: String,
    gateway: IpAddr,
}

impl TestNet {
    async fn create(docker: &Docker) -> TestNet {
        // Earlier runs' networks whose test process is gone.
        let stale = docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![TEST_NET_LABEL.to_string()],
                )])),
            }))
            .await
            .expect("list networks");
        for n in stale {
            let pid = n
                .labels
                .as_ref()
                .and_then(|l| l.get(TEST_NET_LABEL))
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
                if let Some(id) = n.id {
                    let _ = docker.remove_network(&id).await;
                }
            }
        }
        let name = format!(
            "gsr-test-gitlab-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                labels: Some(HashMap::from([(
                    TEST_NET_LABEL.to_string(),
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
async fn daemon() -> Option<DockerBackend> {
    match DockerBackend::connect(settings("probe")).await {
        Ok(b) => {
            if b.client().inspect_image(IMAGE).await.is_err() {
                panic!("image {IMAGE} is missing: run crates/gsr-backend-docker/scripts/test-images.sh");
            }
            Some(b)
        }
        Err(e) if std::env::var("GSR_TEST_SKIP_DOCKER").as_deref() == Ok("1") => {
            eprintln!("GSR_TEST_SKIP_DOCKER=1: skipping ({e})");
            None
        }
        Err(e) => panic!(
            "these tests need a Docker daemon on /var/run/docker.sock (.ci/run starts one; \
             set GSR_TEST_SKIP_DOCKER=1 to skip): {e}"
        ),
    }
}

async fn suite() -> Option<(Suite, TestNet)> {
    claimer_env();
    let probe = daemon().await?;
    let net = TestNet::create(probe.client()).await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let factory_id = id.clone();
    let suite = Suite::start(
        Arc::new(move || {
            Arc::new(DockerBackend::new(settings(&factory_id)).expect("backend"))
                as Arc<dyn Backend>
        }),
        Arc::new(DockerLeftovers {
            docker: probe.client().clone(),
            suite: id,
        }),
        SuiteOptions {
            listen: SocketAddr::new(net.gateway, 0),
            ..SuiteOptions::default()
        },
    )
    .await;
    suite.backend().validate().await.expect("validate");
    Some((suite, net))
}

macro_rules! scenario {
    ($name:ident, |$s:ident| $body:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(($s, net)) = suite().await else {
                return;
            };
            $body.await;
            drop($s);
            net.remove().await;
        }
    };
}

scenario!(success, |s| s.success());
scenario!(failure, |s| s.failure());
scenario!(cancel, |s| s.cancel());
scenario!(timeout, |s| s.timeout());
scenario!(abort, |s| s.abort());
scenario!(artifacts, |s| s.artifacts());
scenario!(crash, |s| s.crash());
scenario!(secrets, |s| s.secrets(SECRET_NAME, SECRET_VALUE));
scenario!(image_and_services, |s| s.image_and_services(
    serde_json::json!({"name": IMAGE, "pull_policy": ["never"]}),
    serde_json::json!({"name": IMAGE, "alias": "web", "pull_policy": ["never"],
                       "entrypoint": ["python3", "-c"], "command": [HTTP_SERVICE]}),
    &[
        "grep VERSION_CODENAME=bookworm /etc/os-release",
        REACH_SERVICE,
        "python3 -c 'import socket; socket.create_connection((\"web\",8000),2)'",
    ],
));

/// A whole job the way users write it: sources cloned over git, `image:`, a service by
/// alias, the claimer's secrets out of sight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_with_sources_image_and_service() {
    let Some((suite, net)) = suite().await else {
        return;
    };
    let repo = tempfile::tempdir().expect("tempdir");
    let git = |args: &[&str]| {
        let mut c = tokio::process::Command::new("git");
        c.args(args)
            .current_dir(repo.path())
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@gsr.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@gsr.invalid");
        c
    };
    std::fs::write(repo.path().join("README.md"), "from-the-repository\n").unwrap();
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "-A"],
        &["commit", "-q", "-m", "one"],
    ] {
        assert!(
            git(args).status().await.expect("git").success(),
            "git {args:?}"
        );
    }
    let sha = git(&["rev-parse", "HEAD"])
        .output()
        .await
        .expect("rev-parse");
    let sha = String::from_utf8_lossy(&sha.stdout).trim().to_string();
    suite
        .admin
        .push_repo("group/conformance", repo.path(), "main")
        .await
        .expect("push");

    let backend = suite.backend();
    let (mut spec, mark) = suite.job(&[
        "cat README.md",
        "grep PRETTY_NAME /etc/os-release",
        REACH_SERVICE,
        "if env | grep -q GSR_TEST_SECRET; then echo claimer-secret-vis''ible; fi",
    ]);
    spec.variables.retain(|v| v.key != "GIT_STRATEGY");
    spec.sha = Some(sha);
    spec.image = Some(serde_json::json!({"name": IMAGE, "pull_policy": ["never"]}));
    spec.services = vec![serde_json::json!({"name": IMAGE, "alias": "web",
        "entrypoint": ["python3", "-c"], "command": [HTTP_SERVICE]})];
    let job = suite.launch(backend.as_ref(), spec, mark).await;
    let exit = suite.finish(&job).await;
    let trace = suite.trace(job.id).await;
    assert_eq!(exit, JobExit::Exec(0), "{trace}");
    assert!(trace.contains("from-the-repository"), "{trace}");
    assert!(trace.contains("Debian GNU/Linux 12 (bookworm)"), "{trace}");
    assert!(trace.contains("svc-ok"), "{trace}");
    assert!(!trace.contains("claimer-secret-visible"), "{trace}");
    assert!(!trace.contains(SECRET_VALUE), "{trace}");
    let view = suite.admin.job(job.id).await.expect("job");
    assert_eq!(view.status.as_str(), "success", "{trace}");
    drop(suite);
    net.remove().await;
}
