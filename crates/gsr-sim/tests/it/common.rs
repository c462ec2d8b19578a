//! Shared test fixtures: a running simulator, a hand-driven "runner" speaking the wire
//! protocol with reqwest, and local git repositories.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gsr_sim::{AdminClient, JobSpecInput, SimConfig, SimHandle};
use reqwest::{Response, StatusCode};
use serde_json::{json, Map, Value};
use tempfile::TempDir;

/// Every key gitlab-runner puts in `info.features`.
pub const ALL_FEATURES: &[&str] = &[
    "variables",
    "image",
    "services",
    "artifacts",
    "cache",
    "fallback_cache_keys",
    "shared",
    "upload_multiple_artifacts",
    "upload_raw_artifacts",
    "session",
    "terminal",
    "refspecs",
    "masking",
    "proxy",
    "raw_variables",
    "artifacts_exclude",
    "multi_build_steps",
    "trace_reset",
    "trace_checksum",
    "trace_size",
    "vault_secrets",
    "cancelable",
    "return_exit_code",
    "service_variables",
    "service_multiple_aliases",
    "image_executor_opts",
    "service_executor_opts",
    "cancel_gracefully",
    "native_steps_integration",
    "two_phase_job_commit",
    "job_inputs",
];

/// A running simulator plus what tests need around it.
pub struct Sim {
    pub handle: SimHandle,
    pub admin: AdminClient,
    pub http: reqwest::Client,
    pub url: String,
    _dir: TempDir,
}

impl Sim {
    pub async fn start() -> Sim {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut SimConfig)) -> Sim {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = SimConfig {
            data_dir: dir.path().join("data"),
            long_poll: Duration::from_millis(1500),
            ..SimConfig::default()
        };
        tweak(&mut cfg);
        let handle = gsr_sim::spawn(cfg).await.expect("spawn sim");
        let admin = handle.admin();
        let url = handle.url.clone();
        Sim {
            handle,
            admin,
            http: reqwest::Client::new(),
            url,
            _dir: dir,
        }
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v4/{path}", self.url)
    }

    /// A UI-created runner with the given tags and declared features.
    pub async fn runner(&self, tags: &[&str], features: &[&'static str]) -> TestRunner {
        let (id, token) = self.admin.create_runner(tags, true).await.expect("runner");
        TestRunner {
            id,
            token,
            system_id: "s_0123456789ab".to_string(),
            features: features.to_vec(),
            http: self.http.clone(),
            url: self.url.clone(),
        }
    }

    /// Creates a project (empty repository); returns its id.
    pub async fn project(&self, path: &str) -> u64 {
        self.admin.create_project(path).await.expect("project").id
    }

    /// Enqueues `spec`; returns (id, token).
    pub async fn job(&self, spec: JobSpecInput) -> (u64, String) {
        self.admin.create_job(&spec).await.expect("create job")
    }

    /// `PUT /jobs/:id` with `body` (token added).
    pub async fn put_job(&self, id: u64, token: &str, mut body: Value) -> Response {
        body["token"] = json!(token);
        self.http
            .put(self.api(&format!("jobs/{id}")))
            .header("JOB-TOKEN", token)
            .json(&body)
            .send()
            .await
            .expect("put job")
    }

    /// `PATCH /jobs/:id/trace` as gitlab-runner sends it.
    pub async fn patch_trace(&self, id: u64, token: &str, offset: usize, data: &[u8]) -> Response {
        let end = (offset + data.len()).saturating_sub(1);
        self.http
            .patch(self.api(&format!("jobs/{id}/trace")))
            .header("JOB-TOKEN", token)
            .header("Content-Type", "text/plain")
            .header("Content-Range", format!("{offset}-{end}"))
            .body(data.to_vec())
            .send()
            .await
            .expect("patch trace")
    }
}

/// A spec for `project_id` at a commit that need not exist (no repository needed).
pub fn spec(project_id: u64) -> JobSpecInput {
    JobSpecInput {
        sha: Some("2293ada6b400935a1378653304eaf6221e0fdb8f".to_string()),
        ..JobSpecInput::new(project_id, ["echo hello"])
    }
}

/// `info` with exactly `enabled` features true.
pub fn info(enabled: &[&str]) -> Value {
    let features: Map<String, Value> = ALL_FEATURES
        .iter()
        .map(|f| (f.to_string(), Value::Bool(enabled.contains(f))))
        .collect();
    json!({
        "name": "gitlab-runner",
        "version": "19.4.0",
        "revision": "d79f3e7b",
        "platform": "linux",
        "architecture": "amd64",
        "executor": "shell",
        "shell": "bash",
        "features": features,
        "config": { "gpus": "" },
    })
}

/// A runner driven by hand.
pub struct TestRunner {
    pub id: u64,
    pub token: String,
    pub system_id: String,
    pub features: Vec<&'static str>,
    http: reqwest::Client,
    url: String,
}

impl TestRunner {
    pub fn request_body(&self, last_update: Option<&str>) -> Value {
        let mut body = json!({
            "token": self.token,
            "system_id": self.system_id,
            "info": info(&self.features),
        });
        if let Some(l) = last_update {
            body["last_update"] = json!(l);
        }
        body
    }

    /// `POST /jobs/request`.
    pub async fn poll(&self, last_update: Option<&str>) -> Response {
        self.http
            .post(format!("{}/api/v4/jobs/request", self.url))
            .header(
                "User-Agent",
                "gitlab-runner 19.4.0 (main; go1.24; linux/amd64)",
            )
            .json(&self.request_body(last_update))
            .send()
            .await
            .expect("jobs/request")
    }

    /// Polls once and expects a job.
    pub async fn pick(&self) -> Value {
        let resp = self.poll(None).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "expected a job");
        resp.json().await.expect("payload json")
    }
}

/// Header value as a string ("" when absent).
pub fn header(resp: &Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Runs git in `dir`, panicking with its stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A local repository on `branch` with one commit containing `files`.
pub fn local_repo(root: &Path, branch: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let dir = root.join("work");
    std::fs::create_dir_all(&dir).expect("mkdir");
    git(&dir, &["init", "--quiet", "--initial-branch", branch]);
    git(&dir, &["config", "user.name", "Test User"]);
    git(&dir, &["config", "user.email", "test@example.com"]);
    git(&dir, &["config", "commit.gpgsign", "false"]);
    for (name, content) in files {
        std::fs::write(dir.join(name), content).expect("write file");
    }
    git(&dir, &["add", "."]);
    git(
        &dir,
        &["commit", "--quiet", "-m", "Initial commit\n\nBody line."],
    );
    dir
}
