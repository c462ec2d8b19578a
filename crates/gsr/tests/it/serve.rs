//! `gsr serve` end to end: the real binary (SQLite in a temp dir) with the simulator as
//! GitLab.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::harness::{gsr_bin, Env};

/// A running `gsr serve`, killed when dropped.
struct Server {
    child: tokio::process::Child,
    /// `http://127.0.0.1:PORT`.
    base: String,
    log: PathBuf,
}

impl Server {
    /// Start `gsr serve` on a free port against the simulator; waits for the "listening"
    /// line on stdout.
    async fn start(env: &Env, client_id: &str, client_secret: &str) -> Server {
        let log = env.dir.path().join("serve.log");
        let file = std::fs::File::create(&log).expect("log file");
        let mut child = tokio::process::Command::new(gsr_bin())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(env.dir.path().join("gsr-data"))
            .arg("--builds-dir")
            .arg(env.builds_dir())
            .env("GITLAB_URL", &env.sim.url)
            .env("GITLAB_CLIENT_ID", client_id)
            .env("GITLAB_CLIENT_SECRET", client_secret)
            .env("GSR_REPLICA", "it-replica")
            .env_remove("DATABASE_URL")
            .env_remove("GSR_SECRET_KEY")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("gsr starts");
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

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (within 30 s).
    async fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("pid");
        kill(
            Pid::from_raw(i32::try_from(pid).expect("pid fits")),
            Signal::SIGTERM,
        )
        .expect("signal");
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("gsr serve did not stop: {}", self.stderr()))
            .expect("wait")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_health_unknown_hook_and_graceful_stop() {
    let env = Env::new().await;
    let server = Server::start(&env, "client-id", "client-secret").await;
    let http = reqwest::Client::new();

    let r = http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200, "{}", server.stderr());
    assert_eq!(r.text().await.unwrap(), "ok");

    let r = http
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 200, "{}", server.stderr());

    // An unknown runner, and an id that is not one at all.
    for id in [gsr_store::RunnerId::new().to_string(), "nope".to_string()] {
        let r = http
            .post(format!("{}/hooks/{id}", server.base))
            .header("X-Gitlab-Event", "Job Hook")
            .header("X-Gitlab-Token", "whatever")
            .body("{}")
            .send()
            .await
            .expect("hook");
        assert_eq!(r.status(), 404, "{id}: {}", server.stderr());
    }

    // GET on a hook path is not routed as a hook.
    let r = http
        .get(format!(
            "{}/hooks/{}",
            server.base,
            gsr_store::RunnerId::new()
        ))
        .send()
        .await
        .expect("get hook");
    assert_eq!(r.status(), 405);

    // The key files were created in the data dir, private.
    let data = env.dir.path().join("gsr-data");
    assert!(data.join("gsr.db").exists());
    assert!(data.join("secret.key").exists());
    assert!(data.join("cookie").join("secret.key").exists());

    let log = server.log.clone();
    let status = server.stop().await;
    assert!(
        status.success(),
        "{status:?}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}
