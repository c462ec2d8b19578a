//! Login with GitLab: OAuth 2 authorization code + PKCE (S256).
//!
//! `/auth/login` puts a fresh `state` and PKCE verifier into the sealed, 10-minute
//! `gsr_login` cookie and redirects to GitLab; `/auth/callback` checks `state`, exchanges the
//! code (with the verifier), asks GitLab who the user is, stores the user and their tokens
//! (encrypted) and starts a session.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use gsr_gitlab::user_api;
use gsr_store::{GitlabIdentity, OAuthTokens};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::session::{self, LoginState};
use crate::{views, WebState};

/// Scopes asked for: the user (`read_user`) and runner management (`api` covers
/// `POST /user/runners` and `PUT/DELETE /runners/:id`).
const SCOPES: &str = "api read_user";

pub(crate) fn routes() -> Router<WebState> {
    Router::new()
        .route("/", get(index))
        .route("/auth/login", get(login))
        .route("/auth/callback", get(callback))
        .route("/auth/logout", post(logout))
}

async fn index(State(st): State<WebState>, headers: HeaderMap) -> Response {
    if session::read_session(&st, &headers).is_some() {
        return Redirect::to("/runners").into_response();
    }
    views::login_page().into_response()
}

pub(crate) fn redirect_uri(st: &WebState) -> String {
    format!("{}/auth/callback", st.public_url())
}

async fn login(State(st): State<WebState>) -> Response {
    let login = LoginState::new();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(login.verifier.as_bytes()));
    let mut u = match url::Url::parse(st.config.gitlab_url.trim_end_matches('/')) {
        Ok(u) => u,
        Err(e) => return ApiError::Internal(format!("GitLab URL: {e}")).into_response(),
    };
    let path = format!("{}/oauth/authorize", u.path().trim_end_matches('/'));
    u.set_path(&path);
    u.query_pairs_mut()
        .append_pair("client_id", &st.config.oauth_client_id)
        .append_pair("redirect_uri", &redirect_uri(&st))
        .append_pair("response_type", "code")
        .append_pair("state", &login.state)
        .append_pair("scope", SCOPES)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let mut resp = Redirect::to(u.as_str()).into_response();
    resp.headers_mut()
        .append(header::SET_COOKIE, session::login_cookie(&st, &login));
    resp
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

async fn callback(
    State(st): State<WebState>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    let login = session::read_login(&st, &headers)
        .ok_or_else(|| ApiError::Login("the login expired; please sign in again".into()))?;
    if let Some(e) = q.error {
        return Err(ApiError::Login(format!("GitLab refused the login ({e})")));
    }
    let state_ok = q
        .state
        .as_deref()
        .is_some_and(|s| bool::from(s.as_bytes().ct_eq(login.state.as_bytes())));
    if !state_ok {
        return Err(ApiError::Login(
            "the login state does not match; please sign in again".into(),
        ));
    }
    let code = q
        .code
        .ok_or_else(|| ApiError::Login("GitLab sent no authorization code".into()))?;
    let grant = user_api::exchange_code(
        &st.http,
        &st.config.gitlab_url,
        &st.config.oauth_client_id,
        st.config.oauth_client_secret.as_ref(),
        &code,
        &redirect_uri(&st),
        &login.verifier,
    )
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "OAuth code exchange failed");
        ApiError::Login("GitLab did not accept the login; please sign in again".into())
    })?;
    let me = user_api::current_user(&st.http, &st.config.gitlab_url, &grant.access_token).await?;
    let user = st
        .store
        .upsert_user_from_gitlab(GitlabIdentity {
            gitlab_user_id: me.id,
            username: me.username,
            name: me.name,
        })
        .await?;
    let tokens = OAuthTokens {
        access_token: grant.access_token,
        refresh_token: grant.refresh_token,
        expires_at: grant
            .expires_in
            .map(|s| Utc::now() + chrono::Duration::seconds(s)),
    };
    st.store.set_oauth_tokens(user.id, &tokens).await?;
    let sess = session::Session::new(user.id);
    let mut resp = Redirect::to("/runners").into_response();
    let h = resp.headers_mut();
    h.append(header::SET_COOKIE, session::session_cookie(&st, &sess));
    h.append(header::SET_COOKIE, session::clear_login_cookie(&st));
    Ok(resp)
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(rename = "_csrf")]
    csrf: Option<String>,
}

async fn logout(
    State(st): State<WebState>,
    sess: session::Session,
    Form(f): Form<CsrfForm>,
) -> Result<Response, ApiError> {
    sess.check_csrf(f.csrf.as_deref())?;
    let mut resp = Redirect::to("/").into_response();
    resp.headers_mut()
        .append(header::SET_COOKIE, session::clear_session_cookie(&st));
    Ok(resp)
}
