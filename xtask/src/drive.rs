//! Driving `gsr serve` the way a person does: the one place `cargo xtask demo` and
//! `cargo xtask bench-serve` share.
//!
//! - [`Gitlab`]: the simulator standing in for GitLab, with what a GitLab admin and a
//!   project maintainer would have set up: a project with a pushed repository, a user who
//!   maintains it, an OAuth application whose redirect is serve's `/auth/callback`.
//! - [`Serve`]: the real `gsr` binary as a child process on its embedded defaults (SQLite
//!   and key files in `--data-dir`, the local shell backend), stopped with SIGTERM. It
//!   stays in our process group, so a terminal's Ctrl-C or hang-up stops it even when
//!   xtask itself dies first: no orphan keeps the port.
//! - [`Browser`]: an HTTP client that behaves like a browser on serve: it follows the
//!   login redirects through GitLab's sign-in form by hand, keeps serve's cookies, and
//!   sends the CSRF token from `GET /api/v1/me` on every change.
//!
//! Why over HTTP and never through the store: the demo shows what a newcomer does, and the
//! latency benchmark measures what a user gets; a shortcut would skip the login, the
//! cookie sealing and the CSRF check they are meant to exercise. (The idle benchmark does
//! write its 1,000 runners straight into the store: GitLab's quota and 1,000 logins are
//! not what it measures.)

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use gsr_sim::{AdminClient, Project, SimConfig, SimHandle, UserCreated};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Scopes serve asks GitLab for (`api` for runner management, `read_user` for login).
const OAUTH_SCOPES: &[&str] = &["api", "read_user"];

/// The simulator as GitLab.
pub struct Gitlab {
    /// The running simulator (in this process).
    pub sim: SimHandle,
    /// Its admin API.
    pub admin: AdminClient,
}

impl Gitlab {
    /// Starts a simulator keeping its repositories under `data_dir`.
    pub async fn start(
        data_dir: PathBuf,
        tune: impl FnOnce(&mut SimConfig),
    ) -> anyhow::Result<Self> {
        let mut cfg = SimConfig {
            data_dir,
            ..SimConfig::default()
        };
        tune(&mut cfg);
        let sim = gsr_sim::spawn(cfg).await?;
        let admin = sim.admin();
        Ok(Gitlab { sim, admin })
    }

    /// The simulator's base URL (what serve gets as `GITLAB_URL`).
    pub fn url(&self) -> &str {
        &self.sim.url
    }

    /// Creates project `path` and `git push`es the files of `files` to its `main` branch
    /// (one commit, made in `work`).
    pub async fn project_with_repo(
        &self,
        path: &str,
        files: &Path,
        work: &Path,
    ) -> anyhow::Result<Project> {
        let project = self.admin.create_project(path).await?;
        copy_dir(files, work)?;
        for args in [
            &["init", "-q", "-b", "main"][..],
            &["add", "-A"],
            &[
                "-c",
                "user.name=demo",
                "-c",
                "user.email=demo@example.com",
                "commit",
                "-q",
                "-m",
                "hello",
            ],
        ] {
            let status = tokio::process::Command::new("git")
                .args(args)
                .current_dir(work)
                .stdin(Stdio::null())
                .status()
                .await
                .context("running git (is it installed?)")?;
            if !status.success() {
                bail!("git {args:?} failed: {status}");
            }
        }
        self.admin.push_repo(&project.path, work, "main").await?;
        Ok(project)
    }

    /// A GitLab user with this password; `maintains` makes them Maintainer of a project.
    pub async fn user(
        &self,
        username: &str,
        password: &str,
        maintains: Option<u64>,
    ) -> anyhow::Result<UserCreated> {
        let user = self.admin.create_user(username, Some(password)).await?;
        if let Some(project_id) = maintains {
            self.admin.add_member(project_id, user.id, 40).await?;
        }
        Ok(user)
    }

    /// An OAuth application for serve at `public_url`: `(client_id, client_secret)`.
    pub async fn oauth_app(
        &self,
        name: &str,
        public_url: &str,
    ) -> anyhow::Result<(String, String)> {
        self.admin
            .create_oauth_app(
                name,
                &format!("{public_url}/auth/callback"),
                OAUTH_SCOPES,
                true,
            )
            .await
    }
}

/// `127.0.0.1:preferred` when nothing listens there, else a free port. (The OAuth
/// application needs the redirect URI, hence the port, before serve starts.)
pub fn pick_listen(preferred: u16) -> anyhow::Result<SocketAddr> {
    let want = SocketAddr::from(([127, 0, 0, 1], preferred));
    if preferred != 0 && TcpListener::bind(want).is_ok() {
        return Ok(want);
    }
    let l = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    Ok(l.local_addr()?)
}

/// How to start `gsr serve`.
pub struct ServeConfig<'a> {
    /// The `gsr` binary.
    pub gsr: &'a Path,
    /// `GITLAB_URL`.
    pub gitlab_url: &'a str,
    /// `GITLAB_CLIENT_ID`.
    pub client_id: &'a str,
    /// `GITLAB_CLIENT_SECRET`.
    pub client_secret: &'a str,
    /// `--data-dir`: SQLite database and key files.
    pub data_dir: &'a Path,
    /// `--builds-dir`.
    pub builds_dir: &'a Path,
    /// `--listen`; `--public-url` is `http://` this.
    pub listen: SocketAddr,
    /// Where serve's log (stderr) goes.
    pub log: &'a Path,
}

/// A running `gsr serve`.
pub struct Serve {
    child: tokio::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Serve's log file.
    pub log: PathBuf,
}

impl Serve {
    /// Starts serve and waits for its "listening" line (at most a minute).
    pub async fn start(cfg: &ServeConfig<'_>) -> anyhow::Result<Serve> {
        let log = std::fs::File::create(cfg.log)
            .with_context(|| format!("creating {}", cfg.log.display()))?;
        let url = format!("http://{}", cfg.listen);
        let mut child = tokio::process::Command::new(cfg.gsr)
            .arg("serve")
            .arg("--listen")
            .arg(cfg.listen.to_string())
            .arg("--public-url")
            .arg(&url)
            .arg("--data-dir")
            .arg(cfg.data_dir)
            .arg("--builds-dir")
            .arg(cfg.builds_dir)
            .env("GITLAB_URL", cfg.gitlab_url)
            .env("GITLAB_CLIENT_ID", cfg.client_id)
            .env("GITLAB_CLIENT_SECRET", cfg.client_secret)
            .env("GSR_REPLICA", "xtask")
            // The embedded defaults, whatever the caller's shell has set.
            .env_remove("DATABASE_URL")
            .env_remove("GSR_SECRET_KEY")
            .env_remove("GSR_COOKIE_KEY")
            .env_remove("GSR_LISTEN")
            .env_remove("GSR_PUBLIC_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            // Same process group as us on purpose: a Ctrl-C or a closed terminal reaches
            // serve too even if we are gone (serve stops cleanly on SIGINT/SIGTERM).
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", cfg.gsr.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let listening = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if line.starts_with("gsr serve listening on ") {
                    return Ok::<bool, std::io::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        let serve = Serve {
            child,
            url,
            log: cfg.log.to_path_buf(),
        };
        match listening {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) | Ok(Err(_)) => {
                bail!("gsr serve exited before listening:\n{}", serve.log_tail(20))
            }
            Err(_) => bail!(
                "gsr serve did not listen within 60 s:\n{}",
                serve.log_tail(20)
            ),
        }
        // Keep draining stdout so serve never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(serve)
    }

    /// Serve's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The last `n` lines of serve's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Sends SIGTERM (serve stops accepting, stops claiming, lets running jobs end).
    pub fn terminate(&self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        }
        Ok(())
    }

    /// Waits for serve to exit after [`Serve::terminate`] (SIGKILL after 60 s).
    pub async fn wait(mut self) -> anyhow::Result<ExitStatus> {
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                bail!("gsr serve did not stop within 60 s of SIGTERM; killed")
            }
        }
    }
}

/// `GET /api/v1/me`, the fields used here.
#[derive(Debug, Deserialize)]
pub struct Me {
    /// GitLab username.
    pub username: String,
    /// Sent back as `X-CSRF-Token`.
    pub csrf_token: String,
}

/// `POST /api/v1/runners` reply, the fields used here.
#[derive(Debug, Deserialize)]
pub struct CreatedRunner {
    /// The runner.
    pub runner: RunnerRow,
    /// For GitLab's webhook settings; shown once. Never printed by xtask.
    pub webhook_secret: String,
}

/// A runner from `/api/v1`, the fields used here.
#[derive(Debug, Deserialize)]
pub struct RunnerRow {
    /// Our id.
    pub id: String,
    /// GitLab's id.
    pub gitlab_runner_id: i64,
    /// Where GitLab's Job Hook goes.
    pub webhook_url: String,
}

/// A job from `/api/v1/runners/:id/jobs`.
#[derive(Debug, Deserialize)]
pub struct JobRow {
    /// GitLab's job id.
    pub gitlab_job_id: i64,
    /// `claimed`, `running`, `success`, `failed`, `canceled`, `lost`.
    pub status: String,
    /// Seconds in GitLab's queue (GitLab's `time_in_queue_seconds`; the simulator sends
    /// none).
    pub queued_seconds: Option<f64>,
    /// Claim → running.
    pub pickup_seconds: Option<f64>,
    /// Running → end.
    pub run_seconds: Option<f64>,
    /// Why it failed.
    pub failure_reason: Option<String>,
}

impl JobRow {
    /// Whether the job has ended.
    pub fn is_finished(&self) -> bool {
        !matches!(self.status.as_str(), "claimed" | "running")
    }
}

/// A browser on serve: manual redirects, serve's cookies, the CSRF token.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: Vec<(String, String)>,
    csrf: Option<String>,
}

impl Browser {
    /// A browser with no cookies for serve at `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str) -> anyhow::Result<Browser> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Browser {
            http,
            base: base.trim_end_matches('/').to_string(),
            cookies: Vec::new(),
            csrf: None,
        })
    }

    /// `Cookie:` header value for serve (the session once logged in).
    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Sends a request; cookies go only to serve, and serve's `Set-Cookie`s are kept.
    async fn send(&mut self, url: &str, req: RequestBuilder) -> anyhow::Result<Response> {
        let ours = url.starts_with(&self.base);
        let req = if ours && !self.cookies.is_empty() {
            req.header(COOKIE, self.cookie_header())
        } else {
            req
        };
        let resp = req
            .send()
            .await
            .with_context(|| format!("requesting {url}"))?;
        if ours {
            for sc in resp.headers().get_all(SET_COOKIE) {
                let sc = sc.to_str().unwrap_or_default();
                let (pair, attrs) = sc.split_once(';').unwrap_or((sc, ""));
                let Some((name, value)) = pair.trim().split_once('=') else {
                    continue;
                };
                self.cookies.retain(|(n, _)| n != name);
                let expired = attrs.to_ascii_lowercase().contains("max-age=0");
                if !value.is_empty() && !expired {
                    self.cookies.push((name.to_string(), value.to_string()));
                }
            }
        }
        Ok(resp)
    }

    async fn get_raw(&mut self, url: &str) -> anyhow::Result<Response> {
        let req = self.http.get(url);
        self.send(url, req).await
    }

    /// Signs in with GitLab as a person does: `/auth/login` → GitLab's sign-in page →
    /// submit its form with `username`/`password` → back to serve's callback (which sets
    /// the session cookie) → `GET /api/v1/me` for the CSRF token.
    pub async fn login(&mut self, username: &str, password: &str) -> anyhow::Result<Me> {
        let start = self.get_raw(&format!("{}/auth/login", self.base)).await?;
        let authorize = location(&start, "GET /auth/login")?;
        let authorize = url::Url::parse(&authorize).context("authorize URL")?;
        let page = self.get_raw(authorize.as_str()).await?;
        if !page.status().is_success() {
            let status = page.status();
            bail!("GitLab's sign-in page: {status}: {}", page.text().await?);
        }
        let html = page.text().await?;
        let (action, mut fields) = sign_in_form(&html)?;
        fields.push(("username".into(), username.into()));
        fields.push(("password".into(), password.into()));
        let action = authorize.join(&action)?;
        let req = self.http.post(action.as_str()).form(&fields);
        let back = self.send(action.as_str(), req).await?;
        if !back.status().is_redirection() {
            let status = back.status();
            bail!(
                "GitLab refused the sign-in: {status}: {}",
                back.text().await?
            );
        }
        let callback = location(&back, "GitLab's sign-in")?;
        if !callback.starts_with(&format!("{}/auth/callback", self.base)) {
            bail!("GitLab redirected to {callback}, not to serve's callback");
        }
        let done = self.get_raw(&callback).await?;
        if done.status() != StatusCode::SEE_OTHER {
            let status = done.status();
            bail!("serve's login callback: {status}: {}", done.text().await?);
        }
        let me: Me = self.get("/api/v1/me").await?;
        self.csrf = Some(me.csrf_token.clone());
        Ok(me)
    }

    /// `GET {base}{path}` as JSON.
    pub async fn get<T: DeserializeOwned>(&mut self, path: &str) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let resp = self.get_raw(&url).await?;
        json_or_error(resp, &format!("GET {path}")).await
    }

    /// `POST {base}{path}` with a JSON body and the CSRF token.
    pub async fn post<T: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let csrf = self
            .csrf
            .clone()
            .ok_or_else(|| anyhow!("not logged in (no CSRF token)"))?;
        let req = self.http.post(&url).header("X-CSRF-Token", csrf).json(body);
        let resp = self.send(&url, req).await?;
        json_or_error(resp, &format!("POST {path}")).await
    }

    /// Creates a runner for a project through `POST /api/v1/runners` (the minimal request).
    pub async fn create_runner(
        &mut self,
        project_id: u64,
        description: &str,
    ) -> anyhow::Result<CreatedRunner> {
        self.post(
            "/api/v1/runners",
            &serde_json::json!({ "project_id": project_id, "description": description }),
        )
        .await
    }

    /// The runner's job history, newest first.
    pub async fn jobs(&mut self, runner_id: &str) -> anyhow::Result<Vec<JobRow>> {
        self.get(&format!("/api/v1/runners/{runner_id}/jobs")).await
    }
}

async fn json_or_error<T: DeserializeOwned>(resp: Response, what: &str) -> anyhow::Result<T> {
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        bail!("{what}: {status}: {}", String::from_utf8_lossy(&body));
    }
    serde_json::from_slice(&body).with_context(|| format!("{what}: unexpected body"))
}

fn location(resp: &Response, what: &str) -> anyhow::Result<String> {
    if !resp.status().is_redirection() {
        bail!("{what}: expected a redirect, got {}", resp.status());
    }
    resp.headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{what}: redirect without Location"))
}

/// The sign-in form of GitLab's authorize page (`<form id="sign-in" action=…>`): its
/// action and hidden fields, as a browser would submit them.
fn sign_in_form(html: &str) -> anyhow::Result<(String, Vec<(String, String)>)> {
    let start = html
        .find("id=\"sign-in\"")
        .and_then(|i| html[..i].rfind("<form"))
        .ok_or_else(|| anyhow!("no sign-in form on GitLab's authorize page"))?;
    let end = html[start..]
        .find("</form>")
        .map_or(html.len(), |i| start + i);
    let form = &html[start..end];
    let action = attr(&form[..form.find('>').unwrap_or(form.len())], "action")
        .unwrap_or_else(|| "/oauth/authorize".into());
    let mut fields = Vec::new();
    let mut rest = form;
    while let Some(i) = rest.find("<input") {
        let tag_end = rest[i..].find('>').map_or(rest.len(), |j| i + j);
        let tag = &rest[i..tag_end];
        if attr(tag, "type").as_deref() == Some("hidden") {
            if let Some(name) = attr(tag, "name") {
                fields.push((name, attr(tag, "value").unwrap_or_default()));
            }
        }
        rest = &rest[tag_end..];
    }
    Ok((action, fields))
}

/// The value of `name="…"` in one HTML tag, unescaped.
fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let i = tag.find(&key)? + key.len();
    let j = tag[i..].find('"')? + i;
    Some(
        tag[i..j]
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sign_in_form_like_a_browser() {
        let html = "<h1>x</h1><form method=\"post\" action=\"/oauth/authorize\" id=\"sign-in\">\
            <input type=\"hidden\" name=\"state\" value=\"a&amp;b&quot;c\">\
            <input type=\"hidden\" name=\"client_id\" value=\"cid\">\
            <label>Username <input name=\"username\" id=\"username\"></label></form>\
            <form method=\"post\" action=\"/other\"><input type=\"hidden\" name=\"login_as\" value=\"x\"></form>";
        let (action, fields) = sign_in_form(html).unwrap();
        assert_eq!(action, "/oauth/authorize");
        assert_eq!(
            fields,
            vec![
                ("state".to_string(), "a&b\"c".to_string()),
                ("client_id".to_string(), "cid".to_string()),
            ]
        );
    }

    #[test]
    fn no_form_is_an_error() {
        assert!(sign_in_form("<html></html>").is_err());
    }
}
