//! User-token GitLab API for the control plane: `GET /user`, `POST /user/runners`,
//! `GET/PUT/DELETE /runners/:id` with `Authorization: Bearer <OAuth access token>`, and the
//! OAuth 2 authorization-code token exchange (`POST /oauth/token`, with PKCE).
//!
//! Every call takes the `reqwest::Client` of the caller (the web app shares one) and GitLab's
//! base URL (`https://gitlab.example.com`, no `/api/v4`). Tokens are `SecretString`s and are
//! never part of an error message. A 403 is [`GitlabError::Forbidden`], a 404
//! [`GitlabError::NotFound`], and a 401 (token expired or revoked) stays
//! [`GitlabError::Status`] with `status: 401` so callers can tell "log in again" from "not
//! yours".

use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::client::{api_base, GitlabError};

/// What `GET /api/v4/user` says about the token's owner.
#[derive(Debug, Clone, Deserialize)]
pub struct CurrentUser {
    /// GitLab user id.
    pub id: i64,
    /// Login name.
    pub username: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
}

/// `POST /oauth/token` reply.
#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
}

/// OAuth tokens as GitLab issued them. `Debug` is redacted.
#[derive(Debug, Clone)]
pub struct OAuthGrant {
    /// Bearer token for `/api/v4`.
    pub access_token: SecretString,
    /// For `grant_type=refresh_token`.
    pub refresh_token: Option<SecretString>,
    /// Seconds until `access_token` expires.
    pub expires_in: Option<i64>,
}

/// Settings of a runner for create and update; `None` fields are not sent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunnerSettings {
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag_list: Option<Vec<String>>,
    /// Pick untagged jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_untagged: Option<bool>,
    /// Locked to its projects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked: Option<bool>,
    /// `not_protected` or `ref_protected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_level: Option<String>,
    /// Seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum_timeout: Option<i64>,
    /// Paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// `POST /user/runners` reply: the runner id and its `glrt-` token (store it encrypted, never
/// show it).
#[derive(Debug, Clone)]
pub struct CreatedUserRunner {
    /// GitLab runner id.
    pub id: i64,
    /// Authentication token.
    pub token: SecretString,
}

#[derive(Deserialize)]
struct CreatedReply {
    id: i64,
    token: String,
}

/// What `GET /runners/:id` says (the fields the control plane uses).
#[derive(Debug, Clone, Deserialize)]
pub struct RunnerDetails {
    /// GitLab runner id.
    pub id: i64,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Paused.
    #[serde(default)]
    pub paused: bool,
    /// Tags.
    #[serde(default)]
    pub tag_list: Vec<String>,
    /// Pick untagged jobs.
    #[serde(default)]
    pub run_untagged: bool,
    /// Locked.
    #[serde(default)]
    pub locked: bool,
    /// Access level.
    #[serde(default)]
    pub access_level: Option<String>,
    /// Seconds.
    #[serde(default)]
    pub maximum_timeout: Option<i64>,
    /// `online`, `offline`, `never_contacted`, `stale`.
    #[serde(default)]
    pub status: Option<String>,
}

fn url(base: &str, path: &str) -> Result<url::Url, GitlabError> {
    api_base(base)?.join(path).map_err(|e| GitlabError::BadUrl {
        url: base.to_string(),
        reason: e.to_string(),
    })
}

fn bearer(
    http: &reqwest::Client,
    method: Method,
    u: url::Url,
    token: &SecretString,
) -> RequestBuilder {
    http.request(method, u)
        .bearer_auth(token.expose_secret())
        .header("Accept", "application/json")
}

async fn send(
    context: &'static str,
    req: RequestBuilder,
) -> Result<reqwest::Response, GitlabError> {
    let resp = req
        .send()
        .await
        .map_err(|source| GitlabError::Transport { context, source })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    Err(match status {
        StatusCode::FORBIDDEN => GitlabError::Forbidden { context },
        StatusCode::NOT_FOUND => GitlabError::NotFound { context },
        _ => {
            let mut body = resp.text().await.unwrap_or_default();
            body.truncate(500);
            GitlabError::Status {
                context,
                status: status.as_u16(),
                body,
            }
        }
    })
}

async fn json<T: for<'de> Deserialize<'de>>(
    context: &'static str,
    resp: reqwest::Response,
) -> Result<T, GitlabError> {
    resp.json().await.map_err(|e| GitlabError::BadReply {
        context,
        reason: e.to_string(),
    })
}

/// Exchanges an authorization code (with its PKCE verifier) for tokens at `POST /oauth/token`.
pub async fn exchange_code(
    http: &reqwest::Client,
    base: &str,
    client_id: &str,
    client_secret: Option<&SecretString>,
    code: &str,
    redirect_uri: &str,
    code_verifier: &str,
) -> Result<OAuthGrant, GitlabError> {
    const CTX: &str = "exchanging the OAuth code";
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("client_id", client_id),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", code_verifier),
    ];
    if let Some(s) = client_secret {
        form.push(("client_secret", s.expose_secret()));
    }
    token_request(CTX, http, base, &form).await
}

/// Trades a refresh token for a new token pair (`grant_type=refresh_token`); GitLab
/// invalidates the old pair.
pub async fn refresh_token(
    http: &reqwest::Client,
    base: &str,
    client_id: &str,
    client_secret: Option<&SecretString>,
    refresh_token: &SecretString,
    redirect_uri: &str,
) -> Result<OAuthGrant, GitlabError> {
    const CTX: &str = "refreshing the OAuth token";
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("client_id", client_id),
        ("refresh_token", refresh_token.expose_secret()),
        ("redirect_uri", redirect_uri),
    ];
    if let Some(s) = client_secret {
        form.push(("client_secret", s.expose_secret()));
    }
    token_request(CTX, http, base, &form).await
}

async fn token_request(
    context: &'static str,
    http: &reqwest::Client,
    base: &str,
    form: &[(&str, &str)],
) -> Result<OAuthGrant, GitlabError> {
    let api = api_base(base)?;
    let prefix = api.path().strip_suffix("/api/v4/").unwrap_or("");
    let mut u = api.clone();
    u.set_path(&format!("{prefix}/oauth/token"));
    let resp = send(context, http.post(u).form(form)).await?;
    let t: TokenReply = json(context, resp).await?;
    Ok(OAuthGrant {
        access_token: t.access_token.into(),
        refresh_token: t.refresh_token.map(Into::into),
        expires_in: t.expires_in,
    })
}

/// `GET /api/v4/user`.
pub async fn current_user(
    http: &reqwest::Client,
    base: &str,
    token: &SecretString,
) -> Result<CurrentUser, GitlabError> {
    const CTX: &str = "reading the current user";
    let resp = send(CTX, bearer(http, Method::GET, url(base, "user")?, token)).await?;
    json(CTX, resp).await
}

/// `POST /api/v4/user/runners` for a project runner.
pub async fn create_user_runner(
    http: &reqwest::Client,
    base: &str,
    token: &SecretString,
    project_id: i64,
    settings: &RunnerSettings,
) -> Result<CreatedUserRunner, GitlabError> {
    const CTX: &str = "creating the runner";
    let mut body = serde_json::to_value(settings).unwrap_or_default();
    if let Some(m) = body.as_object_mut() {
        m.insert("runner_type".into(), "project_type".into());
        m.insert("project_id".into(), project_id.into());
    }
    let req = bearer(http, Method::POST, url(base, "user/runners")?, token).json(&body);
    let c: CreatedReply = json(CTX, send(CTX, req).await?).await?;
    Ok(CreatedUserRunner {
        id: c.id,
        token: c.token.into(),
    })
}

/// `GET /api/v4/runners/:id`.
pub async fn get_runner(
    http: &reqwest::Client,
    base: &str,
    token: &SecretString,
    id: i64,
) -> Result<RunnerDetails, GitlabError> {
    const CTX: &str = "reading the runner";
    let u = url(base, &format!("runners/{id}"))?;
    json(CTX, send(CTX, bearer(http, Method::GET, u, token)).await?).await
}

/// `PUT /api/v4/runners/:id`.
pub async fn update_runner(
    http: &reqwest::Client,
    base: &str,
    token: &SecretString,
    id: i64,
    settings: &RunnerSettings,
) -> Result<RunnerDetails, GitlabError> {
    const CTX: &str = "updating the runner";
    let u = url(base, &format!("runners/{id}"))?;
    let req = bearer(http, Method::PUT, u, token).json(settings);
    json(CTX, send(CTX, req).await?).await
}

/// `DELETE /api/v4/runners/:id`. An already deleted runner (404) counts as deleted.
pub async fn delete_runner(
    http: &reqwest::Client,
    base: &str,
    token: &SecretString,
    id: i64,
) -> Result<(), GitlabError> {
    const CTX: &str = "deleting the runner";
    let u = url(base, &format!("runners/{id}"))?;
    match send(CTX, bearer(http, Method::DELETE, u, token)).await {
        Ok(_) | Err(GitlabError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
