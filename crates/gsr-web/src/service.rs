//! Runner operations shared by the pages and the JSON API: validate, call GitLab with the
//! user's OAuth token, then the store. GitLab goes first so the store never holds a runner
//! GitLab does not know; a create the store refuses (quota) is undone in GitLab.

use chrono::Utc;
use gsr_gitlab::user_api::{self, RunnerSettings};
use gsr_store::{
    AccessLevel, CreatedRunner, NewRunner, OAuthTokens, Runner, RunnerId, RunnerPatch, UserId,
};
use secrecy::SecretString;

use crate::error::ApiError;
use crate::WebState;

/// Backends ("runtimes") a runner can use today.
pub(crate) const BACKENDS: &[&str] = &["local"];
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
    pub(crate) fn validate(self, errors: &mut FieldErrors) -> Option<RunnerInput> {
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
        if !BACKENDS.contains(&self.backend.as_str()) {
            err(errors, "backend", "unknown backend (available: local)");
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

/// Creates the runner in GitLab for `project_id`, then in the store (quota-checked).
pub(crate) async fn create(
    st: &WebState,
    user: UserId,
    project_id: i64,
    input: RunnerInput,
) -> Result<CreatedRunner, ApiError> {
    // Fail fast before touching GitLab; the store enforces the limit atomically anyway.
    let max = st.config.max_runners;
    if st.store.list_runners(user).await?.len() >= max as usize {
        return Err(ApiError::Quota);
    }
    let token = access_token(st, user).await?;
    let gitlab = &st.config.gitlab_url;
    let created = user_api::create_user_runner(
        &st.http,
        gitlab,
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
    let new = NewRunner {
        gitlab_url: gitlab.clone(),
        gitlab_runner_id: created.id,
        token: created.token,
        description: input.description,
        tags: input.tags,
        run_untagged: input.run_untagged,
        locked: input.locked,
        access_level: input.access_level,
        maximum_timeout: input.maximum_timeout,
        paused: input.paused,
        backend: input.backend,
        backend_settings: serde_json::json!({}),
        concurrency: input.concurrency,
    };
    match st.store.create_runner(user, new, max).await {
        Ok(c) => Ok(c),
        Err(e) => {
            // Do not leave an orphan runner in GitLab.
            if let Err(del) = user_api::delete_runner(&st.http, gitlab, &token, created.id).await {
                tracing::warn!(error = %del, gitlab_runner_id = created.id,
                    "could not remove the GitLab runner after a failed create");
            }
            Err(e.into())
        }
    }
}

/// Updates the runner in GitLab, then in the store.
pub(crate) async fn update(
    st: &WebState,
    user: UserId,
    id: RunnerId,
    input: RunnerInput,
) -> Result<Runner, ApiError> {
    let runner = st.store.get_runner(user, id).await?;
    let token = access_token(st, user).await?;
    if input.maximum_timeout.is_none() && runner.maximum_timeout.is_some() {
        // GitLab's API cannot remove a runner's limit once set (null is "unchanged", and
        // anything below 600 is invalid); say so instead of silently diverging from GitLab.
        return Err(ApiError::field(
            "maximum_timeout",
            "GitLab cannot remove a maximum timeout once set; enter at least 600 seconds",
        ));
    }
    let settings = input.gitlab_settings();
    user_api::update_runner(
        &st.http,
        &runner.gitlab_url,
        &token,
        runner.gitlab_runner_id,
        &settings,
    )
    .await?;
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

/// Pauses or resumes the runner in GitLab, then in the store.
pub(crate) async fn set_paused(
    st: &WebState,
    user: UserId,
    id: RunnerId,
    paused: bool,
) -> Result<Runner, ApiError> {
    let runner = st.store.get_runner(user, id).await?;
    let token = access_token(st, user).await?;
    let settings = RunnerSettings {
        paused: Some(paused),
        ..RunnerSettings::default()
    };
    user_api::update_runner(
        &st.http,
        &runner.gitlab_url,
        &token,
        runner.gitlab_runner_id,
        &settings,
    )
    .await?;
    Ok(st.store.set_paused(user, id, paused).await?)
}

/// GitLab's view of the runner's state (`online`, `offline`, `never_contacted`, …), or
/// `None` when GitLab cannot be asked right now (the page still renders).
pub(crate) async fn gitlab_status(st: &WebState, user: UserId, r: &Runner) -> Option<String> {
    let token = access_token(st, user).await.ok()?;
    match user_api::get_runner(&st.http, &r.gitlab_url, &token, r.gitlab_runner_id).await {
        Ok(d) => d.status,
        Err(
            gsr_gitlab::GitlabError::NotFound { .. } | gsr_gitlab::GitlabError::Forbidden { .. },
        ) => Some("missing in GitLab".into()),
        Err(e) => {
            tracing::warn!(error = %e, "could not read the runner's status from GitLab");
            None
        }
    }
}

/// Deletes the runner in GitLab (already gone there is fine), then in the store.
pub(crate) async fn delete(st: &WebState, user: UserId, id: RunnerId) -> Result<(), ApiError> {
    let runner = st.store.get_runner(user, id).await?;
    let token = access_token(st, user).await?;
    match user_api::delete_runner(
        &st.http,
        &runner.gitlab_url,
        &token,
        runner.gitlab_runner_id,
    )
    .await
    {
        // 403: GitLab says it is not this user's (any more); do not delete our record then.
        Ok(()) => {}
        Err(e) => return Err(e.into()),
    }
    st.store.delete_runner(user, id).await?;
    Ok(())
}

/// `<public url>/hooks/<runner id>`.
pub(crate) fn webhook_url(st: &WebState, id: RunnerId) -> String {
    format!("{}/hooks/{id}", st.public_url())
}
