//! [`AdminClient`]: a typed async client for the admin API, for tests in any crate.
//!
//! Tests should read like scenarios ("create a runner, push a repo, enqueue a job, wait
//! until it succeeded") rather than like HTTP plumbing, and should fail with the
//! simulator's own error message when a spec is invalid. Every method returns
//! `anyhow::Result` carrying the status and body of a failed call.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::spec::JobSpecInput;
use crate::types::{
    Fault, HookDelivery, HookView, JobView, Project, ProjectHookInput, RequestLogEntry,
    RunnerCreated, RunnerInput, RunnerView,
};
use crate::util::percent_encode;

/// Client for `/-/sim/` of one simulator.
#[derive(Clone, Debug)]
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client for the simulator at `base_url` (no trailing slash needed).
    pub fn new(base_url: impl Into<String>, admin_token: impl Into<String>) -> Self {
        Self {
            base: base_url.into().trim_end_matches('/').to_string(),
            token: admin_token.into(),
            http: reqwest::Client::new(),
        }
    }

    /// The simulator's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}/-/sim/{path}", self.base))
            .header("PRIVATE-TOKEN", &self.token)
    }

    async fn send(&self, req: RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.context("admin API request failed")?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let url = resp.url().clone();
        let body = resp.text().await.unwrap_or_default();
        bail!("{url}: {status}: {body}")
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> anyhow::Result<T> {
        Ok(self.send(req).await?.json().await?)
    }

    async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.json(self.request(Method::POST, path).json(body)).await
    }

    /// Creates a UI-style runner (`glrt-` token) with these tags; returns (id, token).
    pub async fn create_runner(
        &self,
        tags: &[&str],
        run_untagged: bool,
    ) -> anyhow::Result<(u64, String)> {
        let created = self
            .create_runner_with(&RunnerInput {
                tags: tags.iter().map(|t| t.to_string()).collect(),
                run_untagged,
                ..RunnerInput::default()
            })
            .await?;
        Ok((created.id, created.token))
    }

    /// Creates a runner with every setting available.
    pub async fn create_runner_with(&self, input: &RunnerInput) -> anyhow::Result<RunnerCreated> {
        self.post_json("runners", input).await
    }

    /// A runner with its managers and their declared features.
    pub async fn runner(&self, id: u64) -> anyhow::Result<RunnerView> {
        self.json(self.request(Method::GET, &format!("runners/{id}")))
            .await
    }

    /// Creates a project (and its bare repository) at `path` (`group/project`).
    pub async fn create_project(&self, path: &str) -> anyhow::Result<Project> {
        self.post_json("projects", &serde_json::json!({ "path": path }))
            .await
    }

    /// `git push`es `branch` of the local repository at `local_repo_dir` to the project,
    /// as `root` with the admin token.
    pub async fn push_repo(
        &self,
        project_path: &str,
        local_repo_dir: &Path,
        branch: &str,
    ) -> anyhow::Result<()> {
        let (scheme, rest) = self
            .base
            .split_once("://")
            .ok_or_else(|| anyhow!("base URL {} has no scheme", self.base))?;
        let url = format!(
            "{scheme}://root:{}@{rest}/{project_path}.git",
            percent_encode(&self.token)
        );
        let out = tokio::process::Command::new("git")
            .arg("-C")
            .arg(local_repo_dir)
            .args(["-c", "credential.helper=", "push", "--quiet", &url])
            .arg(format!("refs/heads/{branch}:refs/heads/{branch}"))
            .env("GIT_TERMINAL_PROMPT", "0")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .output()
            .await
            .context("cannot run git push")?;
        if !out.status.success() {
            bail!(
                "git push of {branch} to {project_path} failed: {}",
                String::from_utf8_lossy(&out.stderr).replace(&self.token, "[MASKED]")
            );
        }
        Ok(())
    }

    /// Enqueues a job; returns (id, job token).
    pub async fn create_job(&self, spec: &JobSpecInput) -> anyhow::Result<(u64, String)> {
        let v: Value = self.post_json("jobs", spec).await?;
        let id = v["id"].as_u64().ok_or_else(|| anyhow!("no id in {v}"))?;
        let token = v["token"]
            .as_str()
            .ok_or_else(|| anyhow!("no token in {v}"))?
            .to_string();
        Ok((id, token))
    }

    /// The job as the simulator sees it.
    pub async fn job(&self, id: u64) -> anyhow::Result<JobView> {
        self.json(self.request(Method::GET, &format!("jobs/{id}")))
            .await
    }

    /// All jobs.
    pub async fn jobs(&self) -> anyhow::Result<Vec<JobView>> {
        self.json(self.request(Method::GET, "jobs")).await
    }

    /// The payload served to the runner when the job was picked.
    pub async fn payload(&self, id: u64) -> anyhow::Result<Value> {
        self.json(self.request(Method::GET, &format!("jobs/{id}/payload")))
            .await
    }

    /// The stored trace bytes.
    pub async fn trace(&self, id: u64) -> anyhow::Result<Vec<u8>> {
        let resp = self
            .send(self.request(Method::GET, &format!("jobs/{id}/trace")))
            .await?;
        Ok(resp.bytes().await?.to_vec())
    }

    /// The stored artifact file of `artifact_type`, `None` when there is none.
    pub async fn artifact(&self, id: u64, artifact_type: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let resp = self
            .request(Method::GET, &format!("jobs/{id}/artifacts/{artifact_type}"))
            .send()
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            bail!("artifact {artifact_type} of job {id}: {}", resp.status());
        }
        Ok(Some(resp.bytes().await?.to_vec()))
    }

    /// Cancels a job (GitLab's "Cancel" button); returns the job afterwards.
    pub async fn cancel(&self, id: u64) -> anyhow::Result<JobView> {
        self.json(self.request(Method::POST, &format!("jobs/{id}/cancel")))
            .await
    }

    /// Queues a fault.
    pub async fn fault(&self, fault: Fault) -> anyhow::Result<()> {
        let _: Value = self.post_json("faults", &fault).await?;
        Ok(())
    }

    /// Removes all queued faults.
    pub async fn clear_faults(&self) -> anyhow::Result<()> {
        self.send(self.request(Method::DELETE, "faults")).await?;
        Ok(())
    }

    /// The request log, oldest first.
    pub async fn requests(&self) -> anyhow::Result<Vec<RequestLogEntry>> {
        self.json(self.request(Method::GET, "requests")).await
    }

    /// Empties the request log.
    pub async fn clear_requests(&self) -> anyhow::Result<()> {
        self.send(self.request(Method::DELETE, "requests")).await?;
        Ok(())
    }

    /// Adds a project webhook with job events on `url` (`X-Gitlab-Token: token` when
    /// given); returns its id. Deliveries start with the next job status change.
    pub async fn add_hook(
        &self,
        project_id: u64,
        url: &str,
        token: Option<&str>,
    ) -> anyhow::Result<u64> {
        self.add_hook_with(
            project_id,
            &ProjectHookInput {
                token: token.map(str::to_string),
                ..ProjectHookInput::new(url)
            },
        )
        .await
    }

    /// Adds a project webhook with every setting available; returns its id.
    pub async fn add_hook_with(
        &self,
        project_id: u64,
        input: &ProjectHookInput,
    ) -> anyhow::Result<u64> {
        let v: Value = self
            .post_json(&format!("projects/{project_id}/hooks"), input)
            .await?;
        v["id"].as_u64().ok_or_else(|| anyhow!("no id in {v}"))
    }

    /// The hooks of a project, with their auto-disabling state.
    pub async fn hooks(&self, project_id: u64) -> anyhow::Result<Vec<HookView>> {
        self.json(self.request(Method::GET, &format!("projects/{project_id}/hooks")))
            .await
    }

    /// One hook.
    pub async fn hook(&self, id: u64) -> anyhow::Result<HookView> {
        self.json(self.request(Method::GET, &format!("hooks/{id}")))
            .await
    }

    /// Deletes a hook; deliveries still queued for it are not sent.
    pub async fn remove_hook(&self, id: u64) -> anyhow::Result<()> {
        self.send(self.request(Method::DELETE, &format!("hooks/{id}")))
            .await?;
        Ok(())
    }

    /// The webhook delivery log, oldest first (also deliveries not sent: dropped by a
    /// fault, or skipped because the hook was disabled).
    pub async fn deliveries(&self) -> anyhow::Result<Vec<HookDelivery>> {
        self.json(self.request(Method::GET, "hooks/deliveries"))
            .await
    }

    /// Empties the delivery log (`seq` keeps counting).
    pub async fn clear_deliveries(&self) -> anyhow::Result<()> {
        self.send(self.request(Method::DELETE, "hooks/deliveries"))
            .await?;
        Ok(())
    }

    /// Polls the delivery log until it has at least `n` entries; returns them all.
    /// Errors after `timeout` with what was logged so far.
    pub async fn wait_for_deliveries(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<HookDelivery>> {
        let deadline = Instant::now() + timeout;
        loop {
            let deliveries = self.deliveries().await?;
            if deliveries.len() >= n {
                return Ok(deliveries);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} webhook deliveries after {timeout:?}, wanted {n}: {deliveries:#?}",
                    deliveries.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GitLab's "Resend request" for delivery `seq`: the same body and `Idempotency-Key`,
    /// a new `X-Gitlab-Webhook-UUID`. Sends at once and returns the new log entry (a
    /// skipped one when the hook is disabled).
    pub async fn resend(&self, seq: u64) -> anyhow::Result<HookDelivery> {
        self.json(self.request(Method::POST, &format!("hooks/deliveries/{seq}/resend")))
            .await
    }

    /// Polls the job until its status is one of `statuses` (e.g. `&[JobStatus::Success]`
    /// or `&["success", "failed"]`); errors after `timeout` with the last status seen.
    pub async fn wait_for_status<S: AsRef<str>>(
        &self,
        id: u64,
        statuses: &[S],
        timeout: Duration,
    ) -> anyhow::Result<JobView> {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.job(id).await?;
            if statuses.iter().any(|s| job.status == s.as_ref()) {
                return Ok(job);
            }
            if Instant::now() >= deadline {
                let wanted: Vec<&str> = statuses.iter().map(AsRef::as_ref).collect();
                bail!(
                    "job {id} is {} after {timeout:?}, wanted one of {wanted:?}",
                    job.status
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates a GitLab user; returns `{id, username, personal_access_token}` (a
    /// `glpat-` token with scope `api`).
    pub async fn create_user(
        &self,
        username: &str,
        password: Option<&str>,
    ) -> anyhow::Result<crate::types::UserCreated> {
        self.post_json(
            "users",
            &serde_json::json!({
                "username": username,
                "name": username,
                "email": format!("{username}@example.com"),
                "password": password,
            }),
        )
        .await
    }

    /// A new personal access token of `user_id` with these scopes.
    pub async fn create_pat(&self, user_id: u64, scopes: &[&str]) -> anyhow::Result<String> {
        let v: Value = self
            .post_json(
                &format!("users/{user_id}/personal_access_tokens"),
                &serde_json::json!({ "scopes": scopes }),
            )
            .await?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no token in {v}"))
    }

    /// Makes `user_id` a member of the project (10 guest, 20 reporter, 30 developer,
    /// 40 maintainer, 50 owner).
    pub async fn add_member(
        &self,
        project_id: u64,
        user_id: u64,
        access_level: u8,
    ) -> anyhow::Result<()> {
        let _: Value = self
            .post_json(
                &format!("projects/{project_id}/members"),
                &serde_json::json!({ "user_id": user_id, "access_level": access_level }),
            )
            .await?;
        Ok(())
    }

    /// Registers an OAuth application; returns `(client_id, client_secret)`.
    pub async fn create_oauth_app(
        &self,
        name: &str,
        redirect_uri: &str,
        scopes: &[&str],
        confidential: bool,
    ) -> anyhow::Result<(String, String)> {
        let v: Value = self
            .post_json(
                "oauth/applications",
                &serde_json::json!({
                    "name": name,
                    "redirect_uri": redirect_uri,
                    "scopes": scopes.join(" "),
                    "confidential": confidential,
                }),
            )
            .await?;
        match (v["client_id"].as_str(), v["client_secret"].as_str()) {
            (Some(id), Some(secret)) => Ok((id.to_string(), secret.to_string())),
            _ => bail!("unexpected application answer {v}"),
        }
    }

    /// Test shortcut for "user signs in and authorizes": an authorization code.
    pub async fn oauth_grant(
        &self,
        client_id: &str,
        user_id: u64,
        redirect_uri: &str,
        code_challenge: Option<&str>,
        scopes: Option<&[&str]>,
    ) -> anyhow::Result<String> {
        let v: Value = self
            .post_json(
                "oauth/grant",
                &serde_json::json!({
                    "client_id": client_id,
                    "user_id": user_id,
                    "redirect_uri": redirect_uri,
                    "code_challenge": code_challenge,
                    "scopes": scopes,
                }),
            )
            .await?;
        v["code"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no code in {v}"))
    }
}
