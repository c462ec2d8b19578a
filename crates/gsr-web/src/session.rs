//! Sealed cookies: `gsr_session` (user, expiry, CSRF token) and `gsr_login` (OAuth `state`
//! and PKCE verifier between `/auth/login` and `/auth/callback`). Both are JSON sealed with
//! the web app's [`SecretBox`](gsr_store::SecretBox), bound to their purpose (AEAD associated
//! data), so one cannot be replayed as the other, and neither can be read or forged.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use gsr_store::UserId;
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, JsonError};
use crate::WebState;

pub(crate) const SESSION_COOKIE: &str = "gsr_session";
pub(crate) const LOGIN_COOKIE: &str = "gsr_login";
const SESSION_AAD: &[u8] = b"gsr-web/session/v1";
const LOGIN_AAD: &[u8] = b"gsr-web/login/v1";
/// Session lifetime.
pub(crate) const SESSION_SECS: i64 = 12 * 3600;
/// Time allowed between `/auth/login` and `/auth/callback`.
pub(crate) const LOGIN_SECS: i64 = 600;

/// A logged-in user, from the session cookie.
#[derive(Debug, Clone)]
pub struct Session {
    /// Our user id.
    pub user: UserId,
    /// The session's CSRF token.
    pub csrf: String,
    /// Expiry, Unix seconds.
    pub expires: i64,
}

/// [`Session`] as sealed in the cookie.
#[derive(Serialize, Deserialize)]
struct SessionWire {
    u: String,
    c: String,
    e: i64,
}

impl Session {
    pub(crate) fn new(user: UserId) -> Self {
        Self {
            user,
            csrf: random_token(32),
            expires: Utc::now().timestamp() + SESSION_SECS,
        }
    }

    /// The user id.
    pub fn user_id(&self) -> UserId {
        self.user
    }

    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_ok(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(self.csrf.as_bytes())))
    }

    /// [`ApiError::Csrf`] unless `presented` matches.
    pub fn check_csrf(&self, presented: Option<&str>) -> Result<(), ApiError> {
        if self.csrf_ok(presented) {
            Ok(())
        } else {
            Err(ApiError::Csrf)
        }
    }
}

/// What `/auth/login` remembers for `/auth/callback`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LoginState {
    #[serde(rename = "s")]
    pub state: String,
    #[serde(rename = "v")]
    pub verifier: String,
    #[serde(rename = "e")]
    pub expires: i64,
}

impl LoginState {
    pub(crate) fn new() -> Self {
        Self {
            state: random_token(32),
            verifier: random_token(64),
            expires: Utc::now().timestamp() + LOGIN_SECS,
        }
    }
}

/// `len` characters of `[A-Za-z0-9]` from the OS-seeded thread RNG (also a valid PKCE
/// verifier alphabet).
pub(crate) fn random_token(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn seal<T: Serialize>(st: &WebState, aad: &[u8], value: &T) -> String {
    let json = serde_json::to_vec(value).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(st.cookie_key.seal(aad, &json))
}

fn unseal<T: DeserializeOwned>(st: &WebState, aad: &[u8], text: &str) -> Option<T> {
    let sealed = URL_SAFE_NO_PAD.decode(text).ok()?;
    let json = st.cookie_key.open(aad, &sealed).ok()?;
    serde_json::from_slice(&json).ok()
}

/// The value of cookie `name` in the request.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(st: &WebState, name: &str, value: &str, path: &str, max_age: i64) -> HeaderValue {
    let secure = if st.secure_cookies() { "; Secure" } else { "" };
    let v =
        format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}");
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub(crate) fn session_cookie(st: &WebState, s: &Session) -> HeaderValue {
    let wire = SessionWire {
        u: s.user.to_string(),
        c: s.csrf.clone(),
        e: s.expires,
    };
    set_cookie(
        st,
        SESSION_COOKIE,
        &seal(st, SESSION_AAD, &wire),
        "/",
        SESSION_SECS,
    )
}

pub(crate) fn clear_session_cookie(st: &WebState) -> HeaderValue {
    set_cookie(st, SESSION_COOKIE, "", "/", 0)
}

pub(crate) fn login_cookie(st: &WebState, l: &LoginState) -> HeaderValue {
    set_cookie(
        st,
        LOGIN_COOKIE,
        &seal(st, LOGIN_AAD, l),
        "/auth",
        LOGIN_SECS,
    )
}

pub(crate) fn clear_login_cookie(st: &WebState) -> HeaderValue {
    set_cookie(st, LOGIN_COOKIE, "", "/auth", 0)
}

pub(crate) fn read_login(st: &WebState, headers: &HeaderMap) -> Option<LoginState> {
    let l: LoginState = unseal(st, LOGIN_AAD, cookie(headers, LOGIN_COOKIE)?)?;
    (l.expires > Utc::now().timestamp()).then_some(l)
}

/// The live session of the request, if any.
pub(crate) fn read_session(st: &WebState, headers: &HeaderMap) -> Option<Session> {
    let w: SessionWire = unseal(st, SESSION_AAD, cookie(headers, SESSION_COOKIE)?)?;
    (w.e > Utc::now().timestamp()).then_some(())?;
    Some(Session {
        user: w.u.parse().ok()?,
        csrf: w.c,
        expires: w.e,
    })
}

/// Pages: a missing session redirects to the login page.
impl FromRequestParts<WebState> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &WebState) -> Result<Self, ApiError> {
        read_session(st, &parts.headers).ok_or(ApiError::Unauthenticated)
    }
}

/// `/api/v1`: a missing session is a JSON 401.
#[derive(Debug, Clone)]
pub struct ApiSession(pub Session);

impl FromRequestParts<WebState> for ApiSession {
    type Rejection = JsonError;

    async fn from_request_parts(parts: &mut Parts, st: &WebState) -> Result<Self, JsonError> {
        read_session(st, &parts.headers)
            .map(ApiSession)
            .ok_or(JsonError(ApiError::Unauthenticated))
    }
}
