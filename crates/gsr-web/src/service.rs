//! Runner operations shared by the pages and the JSON API: validate, call GitLab, then the
//! store. GitLab goes first so the store never holds a runner GitLab does not know; a create
//! the store refuses (quota, duplicate) is undone in GitLab.
//!
//! # Three ways to create a runner ([`CreateMode`])
//!
//! - **User token** (`user_token`): `POST /user/runners` with the user's OAuth token for a
//!   project they maintain. GitLab creates the runner and its `glrt-` token.
//! - **Registration token** (`registration_token`, GitLab's legacy flow): `POST /runners`
//!   with a project/group/instance registration token ([`Coordinator::register`]).
//! - **Runner token** (`runner_token`): a runner the user already created in GitLab; its
//!   authentication token is checked with `POST /runners/verify` ([`Coordinator::verify`]),
//!   which also tells its GitLab id. Its settings are read from GitLab when the user's
//!   OAuth token may read the runner; otherwise the form's values are kept.
//!
//! For the last two the user picks the GitLab from an allow-list (the configured GitLab plus
//! [`WebState::extra_gitlab_urls`]); nothing else is ever contacted, so the server cannot be
//! turned into a proxy into private networks. The user's OAuth token is only ever sent to the
//! configured GitLab: runners on another GitLab keep their GitLab-side settings as they are
//! (changing them is a field error) and their status is not shown.
//!
//! # Delete semantics, by how the runner was created
//!
//! - `user_token`: `DELETE /runners/:id` with the user's OAuth token (the runner is gone in
//!   GitLab).
//! - `registration_token`: `DELETE /runners` with the runner token — GitLab's legacy
//!   unregister; the runner is gone in GitLab. A token GitLab no longer knows (403) means
//!   the runner is already gone there.
//! - `runner_token`: like `gitlab-runner unregister` for a `glrt-` token: only the runner
//!   manager gsr announced while verifying is removed (`DELETE /runners/managers`); the
//!   runner itself belongs to whoever created it in GitLab and stays there. Managers of the
//!   dispatcher's replicas are left to GitLab's clean-up of stale managers.
//!
//! How a runner was created is kept under the reserved key `gsr_registration` of its
//! `backend_settings` (the store has no column for it yet); rows without it are
//! `user_token` runners.
//!
//! [`Coordinator::register`]: gsr_gitlab::Coordinator::register
//! [`Coordinator::verify`]: gsr_gitlab::Coordinator::verify
//! [`WebState::extra_gitlab_urls`]: crate::WebState::extra_gitlab_urls

use chrono::Utc;
use gsr_gitlab::user_api::{self, RunnerSettings};
use gsr_gitlab::{Coordinator, Features, GitlabError, RegisterOptions, RetryPolicy, RunnerInfo};
use gsr_store::{
    AccessLevel, CreatedRunner, NewRunner, OAuthTokens, Runner, RunnerId, RunnerPatch, UserId,
};
use secrecy::SecretString;

use crate::error::ApiError;
use crate::WebState;

/// Upper bound of a runner's concurrency.
pub(crate) const MAX_CONCURRENCY: u32 = 100;

/// Validated runner settings (create and update).
#[derive(Debug, Clone)]
pub(crate) struct RunnerInput {
    pub description: String,
    pub tags: Vec<String>,
    pub run_untagged: bool,
    pub locked: bool,
    pub access_level: AccessLevel,
    pub maximum_timeout: Option<i64>,
    pub paused: bool,
    pub backend: String,
    pub concurrency: u32,
}

/// Raw settings as entered (form or JSON), validated by [`RawInput::validate`].
#[derive(Debug, Clone, Default)]
pub(crate) struct RawInput {
    pub description: String,
    pub tags: Vec<String>,
    pub run_untagged: bool,
    pub locked: bool,
    pub access_level: String,
    pub maximum_timeout: Option<i64>,
    pub paused: bool,
    pub backend: String,
    pub concurrency: i64,
}

pub(crate) type FieldErrors = Vec<(String, String)>;

fn err(errors: &mut FieldErrors, field: &str, msg: &str) {
    errors.push((field.to_string(), msg.to_string()));
}

/// Splits `a, b c` into tags.
pub(crate) fn parse_tags(s: &str) -> Vec<String> {
    s.split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

impl RawInput {
    /// Checks every field; `backends` are the backends this server offers.
    pub(crate) fn validate(
        self,
        backends: &[String],
        errors: &mut FieldErrors,
    ) -> Option<RunnerInput> {
        let before = errors.len();
        if self.description.chars().count() > 1024 {
            err(errors, "description", "at most 1024 characters");
        }
        if self.tags.len() > 50 || self.tags.iter().any(|t| t.chars().count() > 255) {
            err(errors, "tags", "at most 50 tags of at most 255 characters");
        }
        if self.tags.is_empty() && !self.run_untagged {
            err(
                errors,
                "tags",
                "a runner without tags must run untagged jobs",
            );
        }
        let access_level = AccessLevel::parse(&self.access_level);
        if access_level.is_none() {
            err(
                errors,
                "access_level",
                "must be not_protected or ref_protected",
            );
        }
        if let Some(t) = self.maximum_timeout {
            if t < 600 {
                err(
                    errors,
                    "maximum_timeout",
                    "at least 600 seconds (GitLab's minimum)",
                );
            }
        }
        if !backends.contains(&self.backend) {
            let msg = format!("unknown backend (available: {})", backends.join(", "));
            err(errors, "backend", &msg);
        }
        if self.concurrency < 1 || self.concurrency > i64::from(MAX_CONCURRENCY) {
            err(errors, "concurrency", "between 1 and 100");
        }
        if errors.len() > before {
            return None;
        }
        Some(RunnerInput {
            description: self.description,
            tags: self.tags,
            run_untagged: self.run_untagged,
            locked: self.locked,
            access_level: access_level?,
            maximum_timeout: self.maximum_timeout,
            paused: self.paused,
            backend: self.backend,
            concurrency: u32::try_from(self.concurrency).ok()?,
        })
    }
}

impl RunnerInput {
    fn gitlab_settings(&self) -> RunnerSettings {
        RunnerSettings {
            description: Some(self.description.clone()),
            tag_list: Some(self.tags.clone()),
            run_untagged: Some(self.run_untagged),
            locked: Some(self.locked),
            access_level: Some(self.access_level.as_str().to_string()),
            maximum_timeout: self.maximum_timeout,
            paused: Some(self.paused),
        }
    }

    /// Whether applying `self` to `r` changes anything GitLab keeps.
    fn changes_gitlab_side(&self, r: &Runner) -> bool {
        self.description != r.description
            || self.tags != r.tags
            || self.run_untagged != r.run_untagged
            || self.locked != r.locked
            || self.access_level != r.access_level
            || self.maximum_timeout != r.maximum_timeout
            || self.paused != r.paused
    }
}

/// How a runner comes to exist (see the module docs).
#[derive(Debug)]
pub(crate) enum CreateMode {
    /// `POST /user/runners` for this project, with the user's OAuth token.
    ForProject {
        /// GitLab project id.
        project_id: i64,
    },
    /// Legacy `POST /runners` with a registration token.
    Register {
        /// One of the allowed GitLab URLs.
        gitlab_url: String,
        /// The registration token (a secret: never echoed, never logged).
        token: SecretString,
    },
    /// An existing runner authentication token, checked with `POST /runners/verify`.
    Verify {
        /// One of the allowed GitLab URLs.
        gitlab_url: String,
        /// The `glrt-` token.
        token: SecretString,
    },
}

/// The three modes' names, as in forms, the API and `backend_settings`.
pub(crate) const MODE_USER: &str = "user_token";
pub(crate) const MODE_REGISTRATION: &str = "registration_token";
pub(crate) const MODE_RUNNER: &str = "runner_token";
/// Reserved `backend_settings` keys.
const REGISTRATION_KEY: &str = "gsr_registration";
const SYSTEM_ID_KEY: &str = "gsr_system_id";

/// Raw create-mode input as entered; [`RawMode::validate`] checks it.
#[derive(Debug, Default)]
pub(crate) struct RawMode {
    /// `user_token` (default), `registration_token` or `runner_token`.
    pub mode: String,
    /// For `user_token`.
    pub project_id: Option<i64>,
    /// For the token modes; empty means the configured GitLab.
    pub gitlab_url: String,
    /// For `registration_token`.
    pub registration_token: String,
    /// For `runner_token`.
    pub runner_token: String,
}

/// A pasted token: non-empty, one line of printable ASCII, not absurdly long.
fn token_shape(t: &str) -> Result<(), &'static str> {
    if t.is_empty() {
        return Err("required");
    }
    if t.len() > 255 || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("not a GitLab token (one word, no spaces)");
    }
    Ok(())
}

impl RawMode {
    pub(crate) fn validate(self, st: &WebState, errors: &mut FieldErrors) -> Option<CreateMode> {
        match self.mode.as_str() {
            "" | MODE_USER => match self.project_id.filter(|p| *p > 0) {
                Some(project_id) => Some(CreateMode::ForProject { project_id }),
                None => {
                    err(errors, "project_id", "a GitLab project id (a number)");
                    None
                }
            },
            MODE_REGISTRATION | MODE_RUNNER => {
                let gitlab = allowed_gitlab_url(st, &self.gitlab_url);
                if gitlab.is_none() {
                    err(
                        errors,
                        "gitlab_url",
                        "not one of the GitLab instances offered here",
                    );
                }
                let registration = self.mode == MODE_REGISTRATION;
                let (field, t) = if registration {
                    ("registration_token", self.registration_token.trim())
                } else {
                    ("runner_token", self.runner_token.trim())
                };
                let shape = token_shape(t).and_then(|()| {
                    if registration && t.starts_with("glrt-") {
                        Err("this is a runner authentication token: choose \"Use a runner you already created in GitLab\"")
                    } else if !registration && t.starts_with("GR1348941") {
                        Err("this is a registration token: choose \"Register with a registration token\"")
                    } else {
                        Ok(())
                    }
                });
                if let Err(m) = shape {
                    err(errors, field, m);
                }
                let (gitlab_url, token) = (gitlab?, SecretString::from(t.to_string()));
                shape.ok()?;
                Some(if registration {
                    CreateMode::Register { gitlab_url, token }
                } else {
                    CreateMode::Verify { gitlab_url, token }
                })
            }
            _ => {
                err(
                    errors,
                    "mode",
                    "one of user_token, registration_token, runner_token",
                );
                None
            }
        }
    }
}

/// `url` (normalised: no trailing `/`) when it is the configured GitLab or one of the
/// extra allowed ones; empty means the configured one. Compared as strings after
/// normalisation, never fetched before it passed.
pub(crate) fn allowed_gitlab_url(st: &WebState, url: &str) -> Option<String> {
    let url = url.trim().trim_end_matches('/');
    if url.is_empty() {
        return Some(st.gitlab_url().to_string());
    }
    st.gitlab_urls()
        .into_iter()
        .find(|u| u.eq_ignore_ascii_case(url))
}

/// How `r` was created (`user_token` for rows from before the modes existed).
pub(crate) fn registration_of(r: &Runner) -> &str {
    r.backend_settings
        .get(REGISTRATION_KEY)
        .and_then(|v| v.as_str())
        .unwrap_or(MODE_USER)
}

/// Whether the user's OAuth token may be sent to `r`'s GitLab: only the configured one.
fn oauth_gitlab(st: &WebState, r: &Runner) -> bool {
    r.gitlab_url.trim_end_matches('/') == st.gitlab_url()
}

/// Refresh an access token this close to its expiry.
const REFRESH_MARGIN_SECS: i64 = 60;

/// The user's OAuth access token, refreshed (and stored) when it is about to expire. No
/// token, or a refresh GitLab refuses, means "log in again".
pub(crate) async fn access_token(st: &WebState, user: UserId) -> Result<SecretString, ApiError> {
    let tokens = st
        .store
        .oauth_tokens(user)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let expiring = tokens
        .expires_at
        .is_some_and(|t| t <= Utc::now() + chrono::Duration::seconds(REFRESH_MARGIN_SECS));
    let (true, Some(refresh)) = (expiring, tokens.refresh_token.as_ref()) else {
        return Ok(tokens.access_token);
    };
    let grant = user_api::refresh_token(
        &st.http,
        &st.config.gitlab_url,
        &st.config.oauth_client_id,
        st.config.oauth_client_secret.as_ref(),
        refresh,
        &crate::auth::redirect_uri(st),
    )
    .await
    .map_err(|e| {
        tracing::info!(error = %e, "OAuth refresh refused; the user must log in again");
        ApiError::Unauthenticated
    })?;
    let fresh = OAuthTokens {
        access_token: grant.access_token,
        refresh_token: grant.refresh_token,
        expires_at: grant
            .expires_in
            .map(|s| Utc::now() + chrono::Duration::seconds(s)),
    };
    st.store.set_oauth_tokens(user, &fresh).await?;
    Ok(fresh.access_token)
}

/// A runner-token client for `url` (one of the allowed GitLabs), with a short retry policy:
/// a person is waiting for the page.
fn coordinator(url: &str) -> Result<Coordinator, ApiError> {
    let info = RunnerInfo::new("shell", "bash", Features::shell_runner());
    let c =
        Coordinator::new(url, &info).map_err(|e| ApiError::field("gitlab_url", &e.to_string()))?;
    Ok(c.with_retry(RetryPolicy {
        max_attempts: 3,
        min_backoff: std::time::Duration::from_millis(200),
        max_backoff: std::time::Duration::from_secs(2),
    }))
}

fn info() -> RunnerInfo {
    RunnerInfo::new("shell", "bash", Features::shell_runner())
}

/// A GitLab error of a runner-token call, as a field error the user can act on.
fn token_error(e: GitlabError, field: &str, refused: &str) -> ApiError {
    match e {
        GitlabError::Forbidden { .. } | GitlabError::NotFound { .. } => {
            ApiError::field(field, refused)
        }
        GitlabError::Transport { .. } | GitlabError::BadUrl { .. } => {
            tracing::warn!(error = %e, "GitLab unreachable while creating a runner");
            ApiError::field("gitlab_url", "GitLab is unreachable; try again")
        }
        GitlabError::Status { status, body, .. } if (400..500).contains(&status) => {
            ApiError::field(field, &format!("GitLab refused it ({status}): {body}"))
        }
        other => other.into(),
    }
}

/// What GitLab gave for a new runner, whatever the mode.
struct FromGitlab {
    gitlab_url: String,
    id: i64,
    token: SecretString,
    settings: serde_json::Value,
    /// How to undo it if the store refuses.
    undo: Undo,
}

enum Undo {
    UserApi(SecretString),
    Unregister,
    Manager(String),
}

/// Creates the runner in GitLab (per `mode`), then in the store (quota-checked).
pub(crate) async fn create(
    st: &WebState,
    user: UserId,
    mode: CreateMode,
    mut input: RunnerInput,
) -> Result<CreatedRunner, ApiError> {
    // Fail fast before touching GitLab; the store enforces the limit atomically anyway.
    let max = st.config.max_runners;
    if st.store.list_runners(user).await?.len() >= max as usize {
        return Err(ApiError::Quota);
    }
    let g = match mode {
        CreateMode::ForProject { project_id } => {
            let token = access_token(st, user).await?;
            let gitlab = st.gitlab_url().to_string();
            let created = user_api::create_user_runner(
                &st.http,
                &gitlab,
                &token,
                project_id,
                &input.gitlab_settings(),
            )
            .await
            .map_err(|e| match ApiError::from(e) {
                ApiError::NotFound => ApiError::field(
                    "project_id",
                    "no such project, or you are not a Maintainer or Owner of it",
                ),
                ApiError::Gitlab(m) => ApiError::field("runner", &m),
                other => other,
            })?;
            FromGitlab {
                gitlab_url: gitlab,
                id: created.id,
                token: created.token,
                settings: serde_json::json!({}),
                undo: Undo::UserApi(token),
            }
        }
        CreateMode::Register { gitlab_url, token } => {
            let c = coordinator(&gitlab_url)?;
            let opts = RegisterOptions {
                description: input.description.clone(),
                tag_list: input.tags.join(","),
                run_untagged: input.run_untagged,
                locked: input.locked,
                access_level: Some(input.access_level.as_str().to_string()),
                maximum_timeout: input.maximum_timeout.and_then(|t| u64::try_from(t).ok()),
                paused: input.paused,
            };
            let reg = c.register(&token, &opts, &info()).await.map_err(|e| {
                token_error(
                    e,
                    "registration_token",
                    "GitLab did not accept this registration token",
                )
            })?;
            let Some(id) = reg.id.and_then(|i| i64::try_from(i).ok()) else {
                // Without its id the runner could never be shown or edited; take it back.
                let _ = c.unregister(&reg.token, None).await;
                return Err(ApiError::field(
                    "registration_token",
                    "GitLab did not say the new runner's id; this GitLab is too old",
                ));
            };
            FromGitlab {
                gitlab_url,
                id,
                token: reg.token,
                settings: serde_json::json!({ REGISTRATION_KEY: MODE_REGISTRATION }),
                undo: Undo::Unregister,
            }
        }
        CreateMode::Verify { gitlab_url, token } => {
            let c = coordinator(&gitlab_url)?;
            let system_id = gsr_gitlab::system_id::random();
            let v = c.verify(&token, &system_id, &info()).await.map_err(|e| {
                token_error(
                    e,
                    "runner_token",
                    "GitLab does not know this runner token (mistyped, expired, or the runner was deleted)",
                )
            })?;
            let Some(id) = v.id.and_then(|i| i64::try_from(i).ok()) else {
                let _ = c.unregister(&token, Some(&system_id)).await;
                return Err(ApiError::field(
                    "runner_token",
                    "GitLab did not say the runner's id; this GitLab is too old",
                ));
            };
            if gitlab_url == st.gitlab_url() {
                // Take GitLab's settings when the user may read the runner, so the record
                // starts out true to GitLab.
                if let Ok(token) = access_token(st, user).await {
                    if let Ok(d) = user_api::get_runner(&st.http, &gitlab_url, &token, id).await {
                        adopt(&mut input, &d);
                    }
                }
            }
            FromGitlab {
                gitlab_url,
                id,
                token: v.token,
                settings: serde_json::json!({
                    REGISTRATION_KEY: MODE_RUNNER,
                    SYSTEM_ID_KEY: system_id.clone(),
                }),
                undo: Undo::Manager(system_id),
            }
        }
    };
    let new = NewRunner {
        gitlab_url: g.gitlab_url.clone(),
        gitlab_runner_id: g.id,
        token: g.token.clone(),
        description: input.description,
        tags: input.tags,
        run_untagged: input.run_untagged,
        locked: input.locked,
        access_level: input.access_level,
        maximum_timeout: input.maximum_timeout,
        paused: input.paused,
        backend: input.backend,
        backend_settings: g.settings,
        concurrency: input.concurrency,
    };
    match st.store.create_runner(user, new, max).await {
        Ok(c) => Ok(c),
        Err(e) => {
            // Do not leave an orphan runner (or manager) in GitLab.
            let undone = match &g.undo {
                Undo::UserApi(oauth) => {
                    user_api::delete_runner(&st.http, &g.gitlab_url, oauth, g.id).await
                }
                Undo::Unregister => match coordinator(&g.gitlab_url) {
                    Ok(c) => c.unregister(&g.token, None).await,
                    Err(_) => Ok(()),
                },
                Undo::Manager(system_id) => match coordinator(&g.gitlab_url) {
                    Ok(c) => c.unregister(&g.token, Some(system_id)).await,
                    Err(_) => Ok(()),
                },
            };
            if let Err(del) = undone {
                tracing::warn!(error = %del, gitlab_runner_id = g.id,
                    "could not undo the GitLab side of a failed create");
            }
            Err(e.into())
        }
    }
}

/// Copies GitLab's settings of an existing runner into `input`.
fn adopt(input: &mut RunnerInput, d: &user_api::RunnerDetails) {
    if let Some(v) = &d.description {
        input.description = v.clone();
    }
    input.tags = d.tag_list.clone();
    input.run_untagged = d.run_untagged;
    input.locked = d.locked;
    if let Some(v) = d.access_level.as_deref().and_then(AccessLevel::parse) {
        input.access_level = v;
    }
    input.maximum_timeout = d.maximum_timeout;
    input.paused = d.paused;
}

/// Updates the runner in GitLab (only when a GitLab-side field changes), then in the store.
pub(crate) async fn update(
    st: &WebState,
    user: UserId,
    id: RunnerId,
    input: RunnerInput,
) -> Result<Runner, ApiError> {
    let runner = st.store.get_runner(user, id).await?;
    if input.maximum_timeout.is_none() && runner.maximum_timeout.is_some() {
        // GitLab's API cannot remove a runner's limit once set (null is "unchanged", and
        // anything below 600 is invalid); say so instead of silently diverging from GitLab.
        return Err(ApiError::field(
            "maximum_timeout",
            "GitLab cannot remove a maximum timeout once set; enter at least 600 seconds",
        ));
    }
    if input.changes_gitlab_side(&runner) {
        push_settings(st, user, &runner, &input.gitlab_settings()).await?;
    }
    let patch = RunnerPatch {
        description: Some(input.description),
        tags: Some(input.tags),
        run_untagged: Some(input.run_untagged),
        locked: Some(input.locked),
        access_level: Some(input.access_level),
        maximum_timeout: Some(input.maximum_timeout),
        paused: Some(input.paused),
        backend: Some(input.backend),
        backend_settings: None,
        concurrency: Some(input.concurrency),
    };
    Ok(st.store.update_runner(user, id, patch).await?)
}

/// `PUT /runners/:id` with the user's OAuth token, for a runner of the configured GitLab.
async fn push_settings(
    st: &WebState,
    user: UserId,
    runner: &Runner,
    settings: &RunnerSettings,
) -> Result<(), ApiError> {
    if !oauth_gitlab(st, runner) {
        return Err(ApiError::field(
            "runner",
            "this runner lives on another GitLab; change its GitLab settings there",
        ));
    }
    let token = access_token(st, user).await?;
    let res = user_api::update_runner(
        &st.http,
        &runner.gitlab_url,
        &token,
        runner.gitlab_runner_id,
        settings,
    )
    .await;
    match res {
        Ok(_) => Ok(()),
        // A runner the user registered with a token may still be out of their reach in
        // GitLab (an instance runner needs an administrator): say so instead of a 404.
        Err(GitlabError::Forbidden { .. } | GitlabError::NotFound { .. })
            if registration_of(runner) != MODE_USER =>
        {
            Err(ApiError::field(
                "runner",
                "GitLab does not let your account change this runner's settings \
                 (instance and group runners need an administrator or group owner); \
                 change them in GitLab",
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// Pauses or resumes the runner in GitLab, then in the store.
pub(crate) async fn set_paused(
    st: &WebState,
    user: UserId,
    id: RunnerId,
    paused: bool,
) -> Result<Runner, ApiError> {
    let runner = st.store.get_runner(user, id).await?;
    let settings = RunnerSettings {
        paused: Some(paused),
        ..RunnerSettings::default()
    };
    push_settings(st, user, &runner, &settings).await?;
    Ok(st.store.set_paused(user, id, paused).await?)
}

/// GitLab's view of the runner's state (`online`, `offline`, `never_contacted`, …), or
/// `None` when GitLab cannot be asked right now (the page still renders) or the runner
/// lives on another GitLab (the OAuth token is not sent there).
pub(crate) async fn gitlab_status(st: &WebState, user: UserId, r: &Runner) -> Option<String> {
    if !oauth_gitlab(st, r) {
        return None;
    }
    let token = access_token(st, user).await.ok()?;
    match user_api::get_runner(&st.http, &r.gitlab_url, &token, r.gitlab_runner_id).await {
        Ok(d) => d.status,
        Err(GitlabError::NotFound { .. }) => Some("missing in GitLab".into()),
        Err(GitlabError::Forbidden { .. }) if registration_of(r) == MODE_USER => {
            Some("missing in GitLab".into())
        }
        Err(e) => {
            tracing::debug!(error = %e, "could not read the runner's status from GitLab");
            None
        }
    }
}

/// Deletes the runner in GitLab as its creation mode says (module docs; already gone
/// there is fine), then in the store.
pub(crate) async fn delete(st: &WebState, user: UserId, id: RunnerId) -> Result<(), ApiError> {
    let runner = st.store.get_runner(user, id).await?;
    match registration_of(&runner) {
        MODE_REGISTRATION => {
            let token = st.store.runner_token(runner.id).await?;
            match coordinator(&runner.gitlab_url)?
                .unregister(&token, None)
                .await
            {
                // 403: GitLab no longer knows the token: the runner is gone there already.
                Ok(()) | Err(GitlabError::Forbidden { .. } | GitlabError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        MODE_RUNNER => {
            let token = st.store.runner_token(runner.id).await?;
            let system_id = runner
                .backend_settings
                .get(SYSTEM_ID_KEY)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string();
            if !system_id.is_empty() {
                let c = coordinator(&runner.gitlab_url)?;
                match c.unregister(&token, Some(&system_id)).await {
                    Ok(()) | Err(GitlabError::Forbidden { .. } | GitlabError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        _ => {
            let token = access_token(st, user).await?;
            // 403: GitLab says it is not this user's (any more); do not delete our record then.
            user_api::delete_runner(
                &st.http,
                &runner.gitlab_url,
                &token,
                runner.gitlab_runner_id,
            )
            .await?;
        }
    }
    st.store.delete_runner(user, id).await?;
    Ok(())
}

/// `<public url>/hooks/<runner id>`.
pub(crate) fn webhook_url(st: &WebState, id: RunnerId) -> String {
    format!("{}/hooks/{id}", st.public_url())
}
