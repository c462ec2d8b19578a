//! Browser tests: a person's path through the `gsr serve` web app in a real headless
//! Chromium, driven over WebDriver (`chromedriver` + `fantoccini`), against the GitLab
//! simulator and the real `gsr` binary.
//!
//! Why a real browser: the `oneshot` tests of `gsr-web` prove the HTTP contract, but not
//! that a person can use the pages — that the forms submit what the handlers expect
//! (method override, CSRF field, checkboxes), that redirects and cookies work across the
//! GitLab sign-in (`SameSite=Lax` on a cross-site redirect), that the strict CSP does not
//! break the pages, and that the webhook URL and secret can be copied off the page. The
//! screenshots (`target/screenshots/*.png`) are for people reviewing the pages.
//!
//! Needs `/usr/bin/chromedriver` and `/usr/bin/chromium` (Debian packages `chromium` and
//! `chromium-driver`; `CHROMEDRIVER` / `CHROMIUM` override the paths). Missing, the tests
//! fail with a message saying so: CI installs them, so a skip would hide a broken setup.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use gsr_sim::{AdminClient, JobSpecInput, RunnerInput, SimConfig, SimHandle};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Upper bound for anything we wait for (a hang guard, not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `target/` of this build (the binary under test lives in `target/<profile>/`).
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_gsr"));
    bin.parent()
        .and_then(Path::parent)
        .expect("binary inside target/<profile>")
        .to_path_buf()
}

fn screenshot_dir() -> PathBuf {
    let d = target_dir().join("screenshots");
    std::fs::create_dir_all(&d).expect("screenshot dir");
    d
}

/// A running `chromedriver`, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn program(var: &str, default: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        p.exists(),
        "{} not found: the browser tests need headless Chromium and its WebDriver. \
         Install the Debian packages `chromium` and `chromium-driver` \
         (apt-get install chromium chromium-driver), or set {var}.",
        p.display()
    );
    p
}

async fn start_driver() -> Driver {
    let chromedriver = program("CHROMEDRIVER", "/usr/bin/chromedriver");
    let port = free_port();
    let child = Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{} does not start: {e}", chromedriver.display()));
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ready = http
            .get(format!("{}/status", driver.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return driver;
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn browser(driver: &Driver) -> Client {
    let chromium = program("CHROMIUM", "/usr/bin/chromium");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,900"],
        }),
    );
    // chromedriver listens on loopback: plain HTTP.
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
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
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

/// The GitLab side: a simulator with `group/demo` (a pushed repository), user alice
/// (Maintainer of it) and an OAuth application for `public_url`.
struct World {
    dir: tempfile::TempDir,
    sim: SimHandle,
    admin: AdminClient,
    project_id: u64,
    client_id: String,
    client_secret: String,
    public_url: String,
    port: u16,
}

async fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = gsr_sim::spawn(SimConfig {
        data_dir: dir.path().join("sim"),
        long_poll: Duration::from_secs(1),
        trace_update_interval: 1,
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let admin = sim.admin();
    let project = admin.create_project("group/demo").await.expect("project");
    let repo = dir.path().join("repo");
    let r = repo.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&r).unwrap();
        git(&r, &["init", "-q", "-b", "main"]);
        std::fs::write(r.join("README.md"), "demo\n").unwrap();
        git(&r, &["add", "-A"]);
        git(&r, &["commit", "-q", "-m", "first"]);
    })
    .await
    .expect("git");
    admin
        .push_repo(&project.path, &repo, "main")
        .await
        .expect("push");
    let alice = admin
        .create_user("alice", Some("alice-pw"))
        .await
        .expect("user");
    admin
        .add_member(project.id, alice.id, 40)
        .await
        .expect("member");
    let port = free_port();
    let public_url = format!("http://127.0.0.1:{port}");
    let (client_id, client_secret) = admin
        .create_oauth_app(
            "gsr",
            &format!("{public_url}/auth/callback"),
            &["api", "read_user"],
            true,
        )
        .await
        .expect("oauth app");
    World {
        dir,
        sim,
        admin,
        project_id: project.id,
        client_id,
        client_secret,
        public_url,
        port,
    }
}

/// The real `gsr serve`, killed when dropped.
struct Serve {
    _child: tokio::process::Child,
    log: PathBuf,
}

impl Serve {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn serve(w: &World) -> Serve {
    let log = w.dir.path().join("serve.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gsr"))
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{}", w.port)])
        .args(["--public-url", &w.public_url])
        .arg("--builds-dir")
        .arg(w.dir.path().join("builds"))
        .env("GSR_DATA_DIR", w.dir.path().join("gsr-data"))
        .env("GITLAB_URL", &w.sim.url)
        .env("GITLAB_CLIENT_ID", &w.client_id)
        .env("GITLAB_CLIENT_SECRET", &w.client_secret)
        .env("GSR_REPLICA", "browser-test")
        .env_remove("DATABASE_URL")
        .env_remove("GSR_SECRET_KEY")
        .env_remove("GSR_COOKIE_KEY")
        .env_remove("GSR_PUBLIC_URL")
        .env_remove("GSR_CONFIG")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
        .kill_on_drop(true)
        .spawn()
        .expect("gsr serve starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("gsr serve announces itself in time")
        .expect("stdout");
    let Some(line) = first else {
        panic!(
            "gsr serve exited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    assert!(line.starts_with("gsr serve listening on "), "{line}");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Serve { _child: child, log }
}

/// A screenshot of the whole page (the window grows to the page's height for it).
async fn shot(c: &Client, name: &str) {
    let height = c
        .execute("return document.documentElement.scrollHeight", vec![])
        .await
        .ok()
        .and_then(|v| v.as_u64())
        .unwrap_or(900)
        .clamp(900, 4000);
    let _ = c
        .set_window_size(1280, u32::try_from(height).unwrap_or(900) + 120)
        .await;
    let png = c.screenshot().await.expect("screenshot");
    let _ = c.set_window_size(1280, 900).await;
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).expect("write png");
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .expect("text")
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Clicks something that loads a new page, and waits until the new page is there (a click
/// returns before the browser has navigated).
async fn click_to_page(c: &Client, css: &str) {
    let old = c.find(Locator::Css("html")).await.expect("a page");
    click(c, css).await;
    let deadline = Instant::now() + PATIENCE;
    // The old document's root goes stale once the new page replaced it.
    while old.tag_name().await.is_ok() {
        assert!(Instant::now() < deadline, "clicking {css} loaded no page");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        let state = c.execute("return document.readyState", vec![]).await;
        if state.is_ok_and(|v| v == "complete") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the page after {css} did not load"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn fill(c: &Client, css: &str, value: &str) {
    let e = c
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    e.clear().await.expect("clear");
    e.send_keys(value).await.expect("type");
}

async fn path(c: &Client) -> String {
    c.current_url().await.expect("url").path().to_string()
}

/// Opens `/`, clicks "Log in with GitLab" and signs in as alice on GitLab's page.
async fn log_in(c: &Client, w: &World) {
    c.goto(&format!("{}/", w.public_url)).await.expect("open /");
    shot(c, "01-login").await;
    click_to_page(c, "#login").await;
    // GitLab's sign-in page.
    c.wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css("#username"))
        .await
        .expect("GitLab's sign-in page");
    fill(c, "#username", "alice").await;
    fill(c, "#password", "alice-pw").await;
    click_to_page(c, "#sign-in-button").await;
    let deadline = Instant::now() + PATIENCE;
    while path(c).await != "/runners" {
        assert!(Instant::now() < deadline, "not back on the runner list");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A person's whole path: log in, create a runner, copy the webhook settings into GitLab,
/// edit the tags, run a job, see it in the history, delete the runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_creates_a_runner_runs_a_job_and_deletes_it() {
    let driver = start_driver().await;
    let w = world().await;
    let server = serve(&w).await;
    let c = browser(&driver).await;

    log_in(&c, &w).await;
    assert!(text(&c, "h1").await.contains("Your runners"));
    shot(&c, "02-list-empty").await;

    // New runner: the form with its defaults.
    click_to_page(&c, "#new-runner").await;
    assert_eq!(path(&c).await, "/runners/new");
    shot(&c, "03-new").await;
    // A mistake first: the error is shown next to the field, the input is kept.
    fill(&c, "#project_id", &w.project_id.to_string()).await;
    fill(&c, "#description", "browser runner").await;
    fill(&c, "#tags", "linux, fast").await;
    fill(&c, "#concurrency", "0").await;
    click_to_page(&c, "#save").await;
    let err = text(&c, "#error-concurrency").await;
    assert!(err.contains("between 1 and 100"), "{err}");
    assert_eq!(
        c.find(Locator::Css("#description"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("browser runner")
    );
    shot(&c, "04-new-with-error").await;
    fill(&c, "#concurrency", "2").await;
    click_to_page(&c, "#save").await;

    // Created: the webhook URL and secret, shown once; a person copies them into GitLab.
    let hook_url = text(&c, "#webhook-url").await;
    let hook_secret = text(&c, "#webhook-secret").await;
    shot(&c, "05-created").await;
    assert!(
        hook_url.starts_with(&format!("{}/hooks/", w.public_url)),
        "{hook_url}"
    );
    assert!(hook_secret.len() >= 20, "{hook_secret:?}");
    let gitlab_id: u64 = text(&c, "#gitlab-runner-id").await.parse().expect("id");
    let g = w.admin.runner(gitlab_id).await.expect("runner in GitLab");
    assert_eq!(g.description, "browser runner");
    assert_eq!(g.tags, vec!["linux", "fast"]);
    let hook_id = w
        .admin
        .add_hook(w.project_id, &hook_url, Some(&hook_secret))
        .await
        .expect("hook");

    // The list shows it.
    click_to_page(&c, "a[href='/runners']").await;
    let list = text(&c, "#runners").await;
    assert!(list.contains("browser runner"), "{list}");
    shot(&c, "06-list").await;
    click_to_page(&c, "#runners a").await;
    let runner_path = path(&c).await;
    // Reloading the runner page never shows the secret again.
    assert!(!c.source().await.unwrap().contains(&hook_secret));

    // Edit the tags; GitLab gets them.
    click_to_page(&c, "#edit").await;
    assert_eq!(path(&c).await, format!("{runner_path}/edit"));
    fill(&c, "#tags", "linux, docker").await;
    shot(&c, "07-edit").await;
    click_to_page(&c, "#save").await;
    assert_eq!(path(&c).await, runner_path);
    let tags = text(&c, "#tags").await;
    assert!(tags.contains("docker"), "{tags}");
    let g = w.admin.runner(gitlab_id).await.expect("runner in GitLab");
    assert_eq!(g.tags, vec!["linux", "docker"]);

    // A job for it: the Job Hook reaches gsr, the job runs; the page shows it succeeded.
    let (job_id, _) = w
        .admin
        .create_job(&JobSpecInput::new(
            w.project_id,
            ["echo hello from the browser test"],
        ))
        .await
        .expect("job");
    let deadline = Instant::now() + PATIENCE;
    loop {
        c.refresh().await.expect("reload");
        let statuses = match c.find(Locator::Css("#jobs")).await {
            Ok(t) => t.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if statuses.contains(&format!("#{job_id}")) && statuses.contains("success") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "job {job_id} not shown as success: {statuses:?}\n{:?}\n--- gsr serve ---\n{}",
            w.admin.job(job_id).await,
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        w.admin.job(job_id).await.expect("job").status.as_str(),
        "success"
    );
    let deliveries = w.admin.deliveries().await.expect("deliveries");
    assert!(
        deliveries
            .iter()
            .any(|d| d.hook_id == hook_id && d.succeeded()),
        "gsr accepted a Job Hook at the copied URL with the copied secret: {deliveries:?}"
    );
    shot(&c, "08-show-with-history").await;
    // The list shows the newest job too.
    click_to_page(&c, "a[href='/runners']").await;
    let list = text(&c, "#runners").await;
    assert!(
        list.contains(&format!("#{job_id}")) && list.contains("success"),
        "{list}"
    );
    shot(&c, "09-list-with-last-job").await;
    click_to_page(&c, "#runners a").await;

    // Delete it (after a confirmation saying what happens in GitLab): gone here and there.
    click_to_page(&c, "#delete").await;
    assert!(text(&c, "#delete-effect")
        .await
        .contains("deletes it in GitLab"));
    shot(&c, "10-delete-confirm").await;
    click_to_page(&c, "#confirm-delete").await;
    assert_eq!(path(&c).await, "/runners");
    assert!(!c.source().await.unwrap().contains("browser runner"));
    assert!(w.admin.runner(gitlab_id).await.is_err(), "still in GitLab");

    // Secrets never reached the log.
    let log = server.stderr();
    assert!(!log.contains(&hook_secret), "webhook secret in the log");
    c.close().await.expect("close");
}

/// A runner the person already created in GitLab, added with its `glrt-` token: a wrong
/// token is an error next to the field and is not echoed back; the right one adopts the
/// runner with GitLab's settings; deleting it leaves the runner in GitLab. Then a runner
/// registered with a legacy registration token, which delete unregisters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_adds_runners_with_tokens() {
    let driver = start_driver().await;
    let w = world().await;
    let server = serve(&w).await;
    let c = browser(&driver).await;
    let existing = w
        .admin
        .create_runner_with(&RunnerInput {
            description: "made in GitLab".into(),
            tags: vec!["gitlab-made".into()],
            project_ids: Some(vec![w.project_id]),
            ..RunnerInput::default()
        })
        .await
        .expect("runner");

    log_in(&c, &w).await;
    click_to_page(&c, "#new-runner").await;
    click(&c, "#mode-runner_token").await;
    // With `:has()` the other modes' fields are hidden.
    let project = c.find(Locator::Css("#project_id")).await.unwrap();
    assert!(!project.is_displayed().await.unwrap(), "project id hidden");
    let wrong = "glrt-not-a-real-token-1234";
    fill(&c, "#runner_token", wrong).await;
    click_to_page(&c, "#save").await;
    let err = text(&c, "#error-runner_token").await;
    assert!(err.contains("does not know this runner token"), "{err}");
    assert!(!c.source().await.unwrap().contains(wrong), "token echoed");
    let checked = c
        .find(Locator::Css("#mode-runner_token"))
        .await
        .unwrap()
        .prop("checked")
        .await
        .unwrap();
    assert_eq!(checked.as_deref(), Some("true"), "the chosen mode is kept");
    shot(&c, "11-new-token-error").await;

    fill(&c, "#runner_token", &existing.token).await;
    click_to_page(&c, "#save").await;
    let _ = text(&c, "#webhook-secret").await;
    assert!(!c.source().await.unwrap().contains(&existing.token));
    assert_eq!(text(&c, "#gitlab-runner-id").await, existing.id.to_string());
    assert_eq!(text(&c, "#description").await, "made in GitLab");
    shot(&c, "12-created-from-token").await;

    click_to_page(&c, "#delete").await;
    assert!(text(&c, "#delete-effect").await.contains("stays there"));
    click_to_page(&c, "#confirm-delete").await;
    assert_eq!(path(&c).await, "/runners");
    let g = w.admin.runner(existing.id).await.expect("still in GitLab");
    assert_eq!(g.description, "made in GitLab");
    assert!(
        !server.stderr().contains(&existing.token),
        "token in the log"
    );

    // The legacy way: a registration token.
    let registration = SimConfig::default().registration_token;
    click_to_page(&c, "#new-runner").await;
    click(&c, "#mode-registration_token").await;
    fill(&c, "#registration_token", &registration).await;
    fill(&c, "#description", "registered the old way").await;
    fill(&c, "#tags", "legacy").await;
    click_to_page(&c, "#save").await;
    let _ = text(&c, "#webhook-secret").await;
    assert!(!c.source().await.unwrap().contains(&registration));
    let gitlab_id: u64 = text(&c, "#gitlab-runner-id").await.parse().expect("id");
    let g = w
        .admin
        .runner(gitlab_id)
        .await
        .expect("registered in GitLab");
    assert_eq!(g.created_via, "registration_token");
    assert_eq!(g.tags, vec!["legacy"]);
    click_to_page(&c, "#delete").await;
    assert!(text(&c, "#delete-effect").await.contains("unregisters it"));
    click_to_page(&c, "#confirm-delete").await;
    assert!(w.admin.runner(gitlab_id).await.is_err(), "still in GitLab");
    assert!(!server.stderr().contains(&registration), "token in the log");
    c.close().await.expect("close");
}
