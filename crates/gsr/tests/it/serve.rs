//! `gsr serve` end to end: the real binary (SQLite in a temp dir) with the simulator as
//! GitLab: health, the config file and its precedence, the shutdown sequence (drain,
//! `--shutdown-timeout`, a second signal), and a person's whole path over HTTP (GitLab
//! login, runner creation, Job Hook, job history, metrics) with a scan for secrets, and
//! runtimes (`--backends`): a runtime not offered is not claimed for, a `process` runner
//! runs on the local backend, a `docker` runner in its job's image.
//!
//! Runners for the shutdown tests are created in serve's store before it starts (with a
//! known `GSR_SECRET_KEY`), so they need no login; the dispatcher's reconcile loop claims
//! their jobs.

use std::time::Duration;

use base64::Engine as _;
use gsr_store::{RunnerId, SecretBox, SqliteStore, Store, UserId};
use nix::sys::signal::Signal;
use secrecy::ExposeSecret as _;

use crate::harness::{output, seed, Env, Serve, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_health_unknown_hook_and_graceful_stop() {
    let env = Env::new().await;
    let server = Serve::new(&env, "client-id", "client-secret").start().await;
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

// ---- helpers ---------------------------------------------------------------------------

/// The key the tests seal runner tokens with, passed to serve as `GSR_SECRET_KEY`.
const KEY: [u8; 32] = [0x42; 32];

fn key_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode(KEY)
}

/// A runner created in serve's SQLite store before serve starts (no web login needed);
/// returns its id and webhook secret.
async fn runner_in_store(env: &Env) -> (RunnerId, String) {
    let data = env.dir.path().join("gsr-data");
    std::fs::create_dir_all(&data).unwrap();
    let store = SqliteStore::open(&data, SecretBox::from_key(KEY))
        .await
        .expect("store opens");
    let seeded = seed(&store, env, 2).await;
    (seeded.runner, seeded.webhook_secret)
}

/// `gsr serve` on `env` with the tests' secret key.
fn serve(env: &Env) -> Serve {
    Serve::new(env, "client-id", "client-secret").env("GSR_SECRET_KEY", key_b64())
}

/// Wait until the job is one of `statuses` in the simulator (hang guard only).
async fn wait(env: &Env, server: &Server, id: u64, statuses: &[&str]) -> gsr_sim::JobView {
    match env
        .admin
        .wait_for_status(id, statuses, Duration::from_secs(90))
        .await
    {
        Ok(v) => v,
        Err(e) => panic!(
            "{e}\n--- trace ---\n{}\n--- serve ---\n{}",
            env.trace(id).await,
            server.stderr()
        ),
    }
}

/// Wait for the process to exit (hang guard only).
async fn exit_of(server: &mut Server) -> std::process::ExitStatus {
    match tokio::time::timeout(Duration::from_secs(60), server.child.wait()).await {
        Ok(s) => s.expect("wait"),
        Err(_) => panic!("gsr serve did not exit: {}", server.stderr()),
    }
}

/// A free local port (bound and released; good enough for one test's server).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---- config file -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_config_file_precedence_and_errors() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new().await;
    let file = env.dir.path().join("gsr.toml");
    std::fs::write(
        &file,
        "public-url = \"http://from-file.example\"\n\
         shutdown_timeout = 5\n\
         replica = \"file-replica\"\n\
         max_runners = 9\n\
         gitlab_client_secret = \"file-secret\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The harness sets GSR_REPLICA in the environment; the flag beats it, the environment
    // beats the file (GSR_SHUTDOWN_TIMEOUT), the file beats the default (public URL).
    let server = serve(&env)
        .env("GSR_CONFIG", &file)
        .env("GSR_SHUTDOWN_TIMEOUT", "11")
        .args(["--replica", "flag-replica"])
        .start()
        .await;
    let log = server.stderr();
    let listening = log
        .lines()
        .find(|l| l.contains("gsr serve listening"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        listening.contains("public_url=http://from-file.example"),
        "{listening}"
    );
    assert!(listening.contains("shutdown_timeout_s=11"), "{listening}");
    assert!(listening.contains("replica=flag-replica"), "{listening}");
    // The file holds the client secret and is world-readable: warned, without the value.
    assert!(log.contains("readable by group or others"), "{log}");
    assert!(!log.contains("file-secret"), "{log}");
    // The public URL came from the file: no warning about a missing one.
    assert!(
        !log.contains("--public-url (GSR_PUBLIC_URL) is not set"),
        "{log}"
    );
    assert!(server.stop().await.success());

    // An unknown key: exit 2 with the file and the key named.
    std::fs::write(&file, "max_runner = 3\n").unwrap();
    let mut cmd = std::process::Command::new(crate::harness::gsr_bin());
    cmd.args(["serve", "--gitlab-client-id", "x", "--config"])
        .arg(&file)
        .env_remove("GSR_CONFIG");
    let out = output(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&file.display().to_string()) && stderr.contains("`max_runner`"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_without_public_url_warns() {
    let env = Env::new().await;
    let server = serve(&env).start().await;
    let log = server.stderr();
    assert!(
        log.contains("--public-url (GSR_PUBLIC_URL) is not set"),
        "{log}"
    );
    assert!(server.stop().await.success());
}

// ---- shutdown --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_drain_lets_a_short_job_finish() {
    let env = Env::new().await;
    let (_runner, _secret) = runner_in_store(&env).await;
    let mut server = serve(&env)
        .args(["--shutdown-timeout", "120"])
        .start()
        .await;
    let id = env.enqueue(env.job(&["sleep 8", "echo drained-ok"])).await;
    wait(&env, &server, id, &["running"]).await;
    server.signal(Signal::SIGTERM);
    // Draining: once the job request in flight (the simulator holds one for 1 s) is
    // answered, nothing claims; a job queued now stays pending.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !server.stderr().contains("draining jobs") {
        assert!(std::time::Instant::now() < deadline, "{}", server.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = env.enqueue(env.job(&["true"])).await;
    let status = exit_of(&mut server).await;
    assert!(status.success(), "{status:?}: {}", server.stderr());
    let view = wait(&env, &server, id, &["success", "failed", "canceled"]).await;
    assert_eq!(view.status, "success", "{}", server.stderr());
    assert!(env.trace(id).await.contains("drained-ok"));
    assert_eq!(
        env.view(later).await.status,
        "pending",
        "{}",
        server.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_shutdown_timeout_aborts_a_long_job() {
    let env = Env::new().await;
    let (_runner, _secret) = runner_in_store(&env).await;
    let mut server = serve(&env).args(["--shutdown-timeout", "1"]).start().await;
    let id = env.enqueue(env.job(&["sleep 60"])).await;
    wait(&env, &server, id, &["running"]).await;
    server.signal(Signal::SIGTERM);
    let status = exit_of(&mut server).await;
    assert!(status.success(), "{status:?}: {}", server.stderr());
    let view = wait(&env, &server, id, &["success", "failed", "canceled"]).await;
    assert_eq!(view.status, "failed", "{}", server.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_second_signal_aborts_at_once() {
    let env = Env::new().await;
    let (_runner, _secret) = runner_in_store(&env).await;
    let mut server = serve(&env)
        .args(["--shutdown-timeout", "600"])
        .start()
        .await;
    let id = env.enqueue(env.job(&["sleep 120"])).await;
    wait(&env, &server, id, &["running"]).await;
    server.signal(Signal::SIGTERM);
    // The first signal drains: the job keeps running.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.view(id).await.status, "running", "{}", server.stderr());
    server.signal(Signal::SIGINT);
    let status = exit_of(&mut server).await;
    assert!(status.success(), "{status:?}: {}", server.stderr());
    let view = wait(&env, &server, id, &["success", "failed", "canceled"]).await;
    assert_eq!(view.status, "failed", "{}", server.stderr());
    assert!(
        server.stderr().contains("second signal"),
        "{}",
        server.stderr()
    );
}

// ---- a person's path over HTTP ---------------------------------------------------------

/// A browser over real HTTP: a cookie jar, no redirect following, and every body kept for
/// the secret scan.
struct Browser {
    base: String,
    http: reqwest::Client,
    cookies: Vec<(String, String)>,
    csrf: String,
    bodies: Vec<String>,
}

struct Resp {
    status: u16,
    location: String,
    body: String,
}

impl Resp {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

impl Browser {
    fn new(base: &str) -> Browser {
        Browser {
            base: base.to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: Vec::new(),
            csrf: String::new(),
            bodies: Vec::new(),
        }
    }

    async fn send(
        &mut self,
        method: reqwest::Method,
        path_or_url: &str,
        json: Option<serde_json::Value>,
    ) -> Resp {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        let mut req = self.http.request(method, url);
        if !self.cookies.is_empty() {
            let c: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req = req.header("cookie", c.join("; "));
        }
        if let Some(body) = json {
            req = req.header("x-csrf-token", &self.csrf).json(&body);
        }
        let resp = req.send().await.expect("request");
        for sc in resp.headers().get_all("set-cookie") {
            let sc = sc.to_str().unwrap();
            let (kv, _) = sc.split_once(';').unwrap_or((sc, ""));
            let (k, v) = kv.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != k);
            if !v.is_empty() && !sc.contains("Max-Age=0") {
                self.cookies.push((k.to_string(), v.to_string()));
            }
        }
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.text().await.unwrap_or_default();
        self.bodies.push(body.clone());
        Resp {
            status,
            location,
            body,
        }
    }

    async fn get(&mut self, path_or_url: &str) -> Resp {
        self.send(reqwest::Method::GET, path_or_url, None).await
    }

    async fn post_json(&mut self, path: &str, body: serde_json::Value) -> Resp {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_a_persons_path_login_create_runner_run_a_job() {
    let env = Env::new().await;
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let carol = env
        .admin
        .create_user("carol", Some("carol-pw"))
        .await
        .unwrap();
    env.admin
        .add_member(env.project_id, carol.id, 40)
        .await
        .unwrap();
    let (client_id, client_secret) = env
        .admin
        .create_oauth_app(
            "gsr",
            &format!("{public}/auth/callback"),
            &["api", "read_user"],
            true,
        )
        .await
        .unwrap();
    let server = Serve::new(&env, &client_id, &client_secret)
        .env("GSR_SECRET_KEY", key_b64())
        .listen(&format!("127.0.0.1:{port}"))
        .args(["--public-url", &public])
        .start()
        .await;
    assert_eq!(server.base, public);
    let mut b = Browser::new(&public);

    // Login: app → GitLab's authorize page → sign-in form → app callback.
    let start = b.get("/auth/login").await;
    assert_eq!(start.status, 303, "{}", start.body);
    let authorize = reqwest::Url::parse(&start.location).unwrap();
    assert!(
        start
            .location
            .starts_with(&format!("{}/oauth/authorize?", env.sim.url)),
        "{}",
        start.location
    );
    let query: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
    let sim = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = sim.get(authorize.clone()).send().await.unwrap();
    assert!(page.status().is_success());
    let mut form = query.clone();
    form.push(("username".into(), "carol".into()));
    form.push(("password".into(), "carol-pw".into()));
    let back = sim
        .post(format!("{}/oauth/authorize", env.sim.url))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(back.status().is_redirection(), "{}", back.status());
    let callback = back.headers()["location"].to_str().unwrap().to_string();
    assert!(
        callback.starts_with(&format!("{public}/auth/callback?")),
        "{callback}"
    );
    let done = b.get(&callback).await;
    assert_eq!(
        (done.status, done.location.as_str()),
        (303, "/runners"),
        "{}",
        server.stderr()
    );
    let me = b.get("/api/v1/me").await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["username"], "carol");
    b.csrf = me.json()["csrf_token"].as_str().unwrap().to_string();
    let user_id: UserId = me.json()["id"].as_str().unwrap().parse().unwrap();

    // A runner for the project; its webhook URL is under the public URL.
    let created = b
        .post_json(
            "/api/v1/runners",
            serde_json::json!({ "project_id": env.project_id, "description": "e2e" }),
        )
        .await;
    assert_eq!(created.status, 201, "{}\n{}", created.body, server.stderr());
    let created = created.json();
    let runner_id = created["runner"]["id"].as_str().unwrap().to_string();
    let hook_url = created["runner"]["webhook_url"]
        .as_str()
        .unwrap()
        .to_string();
    let hook_secret = created["webhook_secret"].as_str().unwrap().to_string();
    assert_eq!(hook_url, format!("{public}/hooks/{runner_id}"));
    assert!(hook_secret.len() >= 16, "{hook_secret}");
    let creation_body_index = b.bodies.len() - 1;

    // GitLab's Job Hook → the runner claims and runs the job.
    env.admin
        .add_hook(env.project_id, &hook_url, Some(&hook_secret))
        .await
        .unwrap();
    let id = env.enqueue(env.job(&["echo hello-from-serve"])).await;
    let view = match env
        .admin
        .wait_for_status(
            id,
            &["success", "failed", "canceled"],
            Duration::from_secs(90),
        )
        .await
    {
        Ok(v) => v,
        Err(e) => panic!("{e}\n{}", server.stderr()),
    };
    assert_eq!(
        view.status,
        "success",
        "{}\n{}",
        env.trace(id).await,
        server.stderr()
    );
    let deliveries = env.admin.deliveries().await.unwrap();
    assert!(
        deliveries
            .iter()
            .any(|d| d.job_id == id && d.status == Some(202)),
        "{deliveries:#?}"
    );

    // The job history shows it with its durations (recorded when the job ended).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let job = loop {
        let jobs = b.get(&format!("/api/v1/runners/{runner_id}/jobs")).await;
        assert_eq!(jobs.status, 200, "{}", jobs.body);
        let found = jobs
            .json()
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["gitlab_job_id"] == id)
            .cloned();
        if let Some(j) = found.filter(|j| j["status"] == "success") {
            break j;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}\n{}",
            jobs.body,
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(job["pickup_seconds"].as_f64().is_some(), "{job}");
    assert!(job["run_seconds"].as_f64().is_some(), "{job}");
    assert!(job["finished_at"].as_str().is_some(), "{job}");

    // The pages and the API show the runner without secrets.
    assert_eq!(b.get("/runners").await.status, 200);
    assert_eq!(b.get(&format!("/runners/{runner_id}")).await.status, 200);
    assert_eq!(
        b.get(&format!("/api/v1/runners/{runner_id}")).await.status,
        200
    );
    assert_eq!(b.get("/api/v1/runners").await.status, 200);

    // Metrics: the finished job and the accepted delivery.
    let metrics = b.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = &metrics.body;
    assert!(
        text.contains("gsr_jobs_finished_total{status=\"success\"} 1"),
        "{text}"
    );
    assert!(text.contains("gsr_jobs_claimed_total 1"), "{text}");
    assert!(
        text.contains("gsr_webhook_deliveries_total{result=\"accepted\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE gsr_claim_latency_seconds histogram"),
        "{text}"
    );
    assert!(text.contains("gsr_build_info{version="), "{text}");

    let log = server.log.clone();
    assert!(server.stop().await.success());

    // Secrets: the runner token GitLab issued, the OAuth tokens and the webhook secret
    // appear in no body (the secret in its creation response only) and not in the log.
    let store = SqliteStore::open(&env.dir.path().join("gsr-data"), SecretBox::from_key(KEY))
        .await
        .unwrap();
    let runner_token = store
        .runner_token(runner_id.parse::<RunnerId>().unwrap())
        .await
        .unwrap()
        .expose_secret()
        .to_string();
    assert!(runner_token.starts_with("glrt-"));
    let oauth = store
        .oauth_tokens(user_id)
        .await
        .unwrap()
        .expect("oauth tokens stored");
    let mut secrets = vec![
        ("runner token", runner_token),
        (
            "OAuth access token",
            oauth.access_token.expose_secret().to_string(),
        ),
        ("OAuth client secret", client_secret.clone()),
    ];
    if let Some(r) = &oauth.refresh_token {
        secrets.push(("OAuth refresh token", r.expose_secret().to_string()));
    }
    let log = std::fs::read_to_string(log).unwrap();
    for (i, body) in b.bodies.iter().enumerate() {
        for (what, value) in &secrets {
            assert!(
                !body.contains(value.as_str()),
                "{what} in response {i}: {body}"
            );
        }
        if i != creation_body_index {
            assert!(
                !body.contains(&hook_secret),
                "webhook secret in response {i}: {body}"
            );
        }
    }
    for (what, value) in secrets
        .iter()
        .chain([&("webhook secret", hook_secret.clone())])
    {
        assert!(
            !log.contains(value.as_str()),
            "{what} in serve's log:\n{log}"
        );
    }
}

// ---- runtimes (--backends) ---------------------------------------------------------------

/// A runner created in the store with runtime `backend` (see [`runner_in_store`]).
async fn runner_with_runtime(env: &Env, backend: &str) -> RunnerId {
    let data = env.dir.path().join("gsr-data");
    std::fs::create_dir_all(&data).unwrap();
    let store = SqliteStore::open(&data, SecretBox::from_key(KEY))
        .await
        .expect("store opens");
    let seeded = seed(&store, env, 2).await;
    let patch = gsr_store::RunnerPatch {
        backend: Some(backend.into()),
        ..Default::default()
    };
    let r = store
        .update_runner(seeded.owner, seeded.runner, patch)
        .await
        .expect("runtime set");
    assert_eq!(r.backend, backend);
    seeded.runner
}

/// Wait (hang guard only) until serve's log contains `needle`.
async fn wait_for_log(server: &Server, needle: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !server.stderr().contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "{needle:?} not logged: {}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A runner whose runtime this replica does not offer: its jobs are not claimed (they
/// wait in GitLab for a replica that can run them), said once in the log; unknown
/// `--backends` values are refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_does_not_claim_for_a_runtime_it_does_not_offer() {
    let env = Env::new().await;
    let runner = runner_with_runtime(&env, "docker").await;
    let server = serve(&env).start().await;
    wait_for_log(&server, "not enabled on this replica").await;
    let id = env.enqueue(env.job(&["echo must-not-run"])).await;
    // The reconcile ticker and a long poll would have taken it by now if anything asked.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.view(id).await.status, "pending", "{}", server.stderr());
    let log = server.log.clone();
    assert!(server.stop().await.success());
    let log = std::fs::read_to_string(log).unwrap();
    assert_eq!(
        log.matches("not enabled on this replica").count(),
        1,
        "logged once per runner: {log}"
    );
    assert!(log.contains(&format!("runner={runner}")), "{log}");

    let out = output({
        let mut c = std::process::Command::new(crate::harness::gsr_bin());
        c.args([
            "serve",
            "--backends",
            "shell,lambda-x",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("GITLAB_CLIENT_ID", "x")
        .env("GSR_DATA_DIR", env.dir.path().join("other-data"))
        .env("RUNNER_BUILDS_DIR", env.builds_dir());
        c
    })
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown backend \"lambda-x\""), "{err}");
}

/// `--backends shell,local`: the web app offers the runtimes `local` (in-process shell)
/// and `process` (the local backend); a runner with `process` runs its job as a child
/// `gsr exec` whose environment holds none of serve's secrets, and the store records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_runs_a_process_runtime_job_on_the_local_backend() {
    let env = Env::new().await;
    let runner = runner_with_runtime(&env, "process").await;
    let server = serve(&env)
        .args(["--backends", "shell,local"])
        .start()
        .await;
    let doc: serde_json::Value = reqwest::get(format!("{}/api/v1/openapi.json", server.base))
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    let text = doc.to_string();
    assert!(
        text.contains(r#""enum":["local","process"]"#),
        "offered runtimes: {text}"
    );

    let id = env
        .enqueue(env.job(&[
            "echo secret-key=${GSR_SECRET_KEY:-unset}",
            "echo runner-token=${RUNNER_TOKEN:-unset}",
            "echo job-pid=$$",
        ]))
        .await;
    let view = wait(&env, &server, id, &["success", "failed", "canceled"]).await;
    let trace = env.trace(id).await;
    assert_eq!(view.status, "success", "{trace}\n{}", server.stderr());
    assert!(trace.contains("secret-key=unset"), "{trace}");
    assert!(trace.contains("runner-token=unset"), "{trace}");
    let log = server.log.clone();
    assert!(server.stop().await.success());
    let log = std::fs::read_to_string(log).unwrap();
    // Placed on the backend (not run in serve's process), and nothing of it is left:
    // no job dir under the backend's root, no process of the job.
    assert!(log.contains("backend=local"), "{log}");
    assert!(log.contains("job place ended"), "{log}");
    let jobs_dir = env.builds_dir().join(".gsr-local").join("jobs");
    let left: Vec<_> = std::fs::read_dir(&jobs_dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "job dirs left: {left:?}");
    let pid: i32 = trace
        .lines()
        .find_map(|l| l.trim().strip_prefix("job-pid=")?.parse().ok())
        .unwrap_or_else(|| panic!("no job-pid in {trace}"));
    assert!(!crate::harness::alive(pid), "job process {pid} still alive");

    let store = SqliteStore::open(&env.dir.path().join("gsr-data"), SecretBox::from_key(KEY))
        .await
        .expect("store opens");
    let owner = store.runner_by_id(runner).await.expect("runner").owner;
    let jobs = store
        .jobs_for_runner(owner, runner, 10)
        .await
        .expect("history");
    let rec = jobs
        .iter()
        .find(|j| j.gitlab_job_id == i64::try_from(id).unwrap())
        .unwrap_or_else(|| panic!("job {id} not recorded: {jobs:?}"));
    assert_eq!(rec.status, gsr_store::JobStatus::Success, "{rec:?}");
}

mod docker_runtime {
    //! A runner with the `docker` runtime in `gsr serve --backends shell,docker`: the job
    //! runs in its `image:` and the store records it; nothing of the job is left. Needs a
    //! daemon and the offline test image (run under
    //! `crates/gsr-backend-docker/scripts/with-dockerd.sh`); fails clearly without one
    //! unless `GSR_TEST_SKIP_DOCKER=1`. The simulator listens on the gateway of a bridge
    //! network of the test's own, so the job container reaches it (as `placement.rs`).

    use std::collections::HashMap;
    use std::net::{IpAddr, SocketAddr};

    use gsr_backend_docker::bollard::models::NetworkCreateRequest;
    use gsr_backend_docker::bollard::query_parameters::{
        ListContainersOptions, ListNetworksOptions, ListVolumesOptions,
    };
    use gsr_backend_docker::bollard::Docker;
    use gsr_store::{JobStatus, SecretBox, SqliteStore, Store};

    use super::{runner_with_runtime, serve, wait, KEY};
    use crate::harness::Env;

    const IMAGE: &str = "gsr-test/debian:bookworm";

    async fn daemon() -> Option<Docker> {
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
                "this test needs a Docker daemon on /var/run/docker.sock (run it under \
                 crates/gsr-backend-docker/scripts/with-dockerd.sh; set GSR_TEST_SKIP_DOCKER=1 \
                 to skip): {e}"
            ),
        }
    }

    /// A bridge network of the test's own and its gateway address.
    async fn network(docker: &Docker) -> (String, IpAddr) {
        let name = format!("gsr-test-serve-{}", uuid::Uuid::new_v4().simple());
        docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                labels: Some(HashMap::from([(
                    "gsr.test-gitlab-net".to_string(),
                    std::process::id().to_string(),
                )])),
                ..Default::default()
            })
            .await
            .expect("create the simulator's network");
        let gateway = docker
            .inspect_network(&name, None)
            .await
            .expect("inspect network")
            .ipam
            .and_then(|i| i.config)
            .and_then(|c| c.into_iter().find_map(|c| c.gateway))
            .expect("the network has a gateway")
            .parse()
            .expect("gateway address");
        (name, gateway)
    }

    /// Containers, networks and volumes of `job` (label `gsr.job`) claimed by the test
    /// replica (`gsr.claimer` = `it-replica-…`).
    async fn leftovers(docker: &Docker, job: u64) -> Vec<String> {
        let filters = Some(HashMap::from([(
            "label".to_string(),
            vec![format!("gsr.job={job}")],
        )]));
        let ours = |labels: Option<&HashMap<String, String>>| {
            labels
                .and_then(|l| l.get("gsr.claimer"))
                .is_some_and(|c| c.starts_with("it-replica-"))
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn serve_runs_a_docker_runtime_job_in_its_image() {
        let Some(docker) = daemon().await else {
            return;
        };
        let (net, gateway) = network(&docker).await;
        let env = Env::with_config(move |c| c.listen = SocketAddr::new(gateway, 0)).await;
        let runner = runner_with_runtime(&env, "docker").await;
        let server = serve(&env)
            .args([
                "--backends",
                "shell,docker",
                "--docker-image",
                IMAGE,
                "--docker-pull-policy",
                "never",
            ])
            .start()
            .await;

        let mut job = env.job(&[
            "grep PRETTY_NAME /etc/os-release",
            // The host may run bookworm (in a container) too: the job's container has
            // a host name of its own.
            "echo job-host=$(cat /etc/hostname)",
            "if [ -n \"${RUNNER_TOKEN:-}\" ]; then echo runner-token-vis''ible; fi",
        ]);
        job.image = Some(serde_json::json!({"name": IMAGE, "pull_policy": ["never"]}));
        let id = env.enqueue(job).await;
        let view = wait(&env, &server, id, &["success", "failed", "canceled"]).await;
        let trace = env.trace(id).await;
        assert_eq!(view.status, "success", "{trace}\n{}", server.stderr());
        assert!(trace.contains("Debian GNU/Linux 12 (bookworm)"), "{trace}");
        let here = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        assert!(trace.contains("job-host="), "{trace}");
        assert!(
            !trace.contains(&format!("job-host={}", here.trim())),
            "the job ran on this host, not in a container: {trace}"
        );
        assert!(!trace.contains("runner-token-visible"), "{trace}");

        let log = server.log.clone();
        assert!(server.stop().await.success());
        let log = std::fs::read_to_string(log).unwrap();
        assert!(log.contains("backend=docker"), "{log}");
        let left = leftovers(&docker, id).await;
        assert!(left.is_empty(), "job {id} left {left:?}");

        // The store recorded the claim and its outcome.
        let store = SqliteStore::open(&env.dir.path().join("gsr-data"), SecretBox::from_key(KEY))
            .await
            .expect("store opens");
        let owner = store.runner_by_id(runner).await.expect("runner").owner;
        let jobs = store
            .jobs_for_runner(owner, runner, 10)
            .await
            .expect("history");
        let rec = jobs
            .iter()
            .find(|j| j.gitlab_job_id == i64::try_from(id).unwrap())
            .unwrap_or_else(|| panic!("job {id} not recorded: {jobs:?}"));
        assert_eq!(rec.status, JobStatus::Success, "{rec:?}");
        drop(env);
        docker.remove_network(&net).await.expect("remove network");
    }
}
