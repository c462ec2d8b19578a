//! The web app of `gsr serve`: "Login with GitLab", the runner pages and the same resources
//! as JSON under `/api/v1`.
//!
//! # Layout
//!
//! - [`app`] builds the whole [`axum::Router`] from a [`WebState`]; tests drive it with
//!   `tower::ServiceExt::oneshot`, the binary serves it.
//! - [`error`]: [`ApiError`], the one error type of the handlers, turned into a response at
//!   one boundary — an HTML page for pages, `{"error": …}` for `/api/v1` ([`JsonError`]).
//!   Internals (store and GitLab errors) are logged, never shown.
//! - `session`: sealed cookies (the login state + PKCE verifier, and the session with its
//!   CSRF token) and the [`Session`] extractor.
//! - `auth`: `GET /`, `GET /auth/login`, `GET /auth/callback`, `POST /auth/logout`.
//! - `service`: runner create (three modes) / update / delete — GitLab first, then the
//!   store — shared by the pages and the JSON API so both behave alike; the GitLab
//!   allow-list and the per-mode delete semantics are documented there.
//! - `pages`: the HTML runner pages — list (state and newest job per runner), new/create
//!   (the webhook URL and secret shown once, with the webhook setup steps), show (a state
//!   people understand: idle, running, paused, offline, not connected yet, setup failed;
//!   job history with queue/pickup/run times; a new webhook secret on request), edit/update,
//!   pause/resume, delete behind a confirmation page that says what happens in GitLab —
//!   with method override (`_method`) and CSRF tokens in every form.
//! - [`api`]: `/api/v1/...` with its own serde DTOs (a serialized type is a frozen boundary;
//!   store types are not exposed), `ApiJson` so malformed bodies get the API's error shape,
//!   and the OpenAPI document at `/api/v1/openapi.json`.
//! - `views`: `maud` templates (user input is HTML-escaped by default). No JavaScript (the
//!   CSP allows none); the new-runner form shows only the chosen mode's fields with CSS
//!   `:has()`, and still works where that is unsupported.
//! - Every response gets `X-Frame-Options: DENY`, `nosniff`, a strict CSP and
//!   `Referrer-Policy: same-origin`.
//!
//! Tests (`tests/it`) drive [`app`] with `oneshot` against a real `gsr-sim` (its OAuth
//! provider, user-token runner API and runner registration API), following the real login
//! redirects, and scan every body and log line the app produced for the token values. A
//! person's path through the real pages in headless Chromium is tested in
//! `crates/gsr/tests/browser` (with screenshots in `target/screenshots/`).
//!
//! # Why it is built this way
//!
//! - **Stateless apart from the store.** Sessions and the OAuth login state live in cookies
//!   sealed with XChaCha20-Poly1305 ([`gsr_store::SecretBox`], a key of the web app's own),
//!   so several replicas behind one load balancer need no shared session table, and a
//!   cookie can be neither read nor forged. A session carries the user id, an expiry and
//!   its CSRF token. (Logout clears the cookie; a copied cookie stays valid until it
//!   expires — sessions are short, 12 h.)
//! - **Ownership through the store.** Every runner read or write passes the session's user
//!   to the store, which filters on it, so another user's runner is a 404 exactly like a
//!   missing one. GitLab's 403/404 for a runner map to the same 404.
//! - **GitLab first, then the store.** A create GitLab accepted but the store refused
//!   (quota, enforced atomically by the store) is undone in GitLab, so parallel creates
//!   leave no orphan runners.
//! - **Three ways to create a runner**: the user's OAuth token (`POST /user/runners`), a
//!   legacy registration token (`POST /runners`), or an existing `glrt-` token
//!   (`POST /runners/verify`); delete follows the mode (details in `service`). Tokens the
//!   user types are secrets: never logged, never put back into a form.
//! - **GitLab allow-list.** Users log in with, and OAuth tokens only ever go to, the
//!   configured GitLab ([`WebConfig::gitlab_url`]). For token-created runners a user may
//!   pick another GitLab only from [`WebState::extra_gitlab_urls`]; a URL that is not on the
//!   list is a field error and is never fetched, so the server cannot be used as a proxy
//!   into private networks.
//! - **Secrets are shown once or never.** The `glrt-` runner token goes from GitLab's reply
//!   straight into the store (encrypted); OAuth tokens likewise (refreshed shortly before
//!   they expire; a token GitLab refuses ends the session). The webhook secret is
//!   rendered on the creation response only (`Cache-Control: no-store`).
//! - **CSRF**: every HTML form carries the session's token, checked on every POST; JSON
//!   calls that change something need it in `X-CSRF-Token` (`GET /api/v1/me` returns it).

pub mod api;
mod auth;
pub mod error;
mod pages;
mod service;
mod session;
mod views;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use gsr_store::{SecretBox, Store, StoreError, UserId};
use secrecy::SecretString;

pub use error::{ApiError, JsonError};
pub use session::Session;

/// Configuration of the web app.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// The GitLab instance users log in with and whose runners they manage
    /// (e.g. `https://gitlab.example.com`).
    pub gitlab_url: String,
    /// OAuth application id.
    pub oauth_client_id: String,
    /// OAuth application secret (`None` for a public application; PKCE is used either way).
    pub oauth_client_secret: Option<SecretString>,
    /// Where this app is reachable, without trailing slash (`https://gsr.example.com`); used
    /// for the OAuth redirect URI and webhook URLs, and `https` turns on `Secure` cookies.
    pub public_url: String,
    /// Runners per user (`MAX_REGISTABLE_RUNNER_COUNT`).
    pub max_runners: u32,
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct WebState {
    /// The control plane's store.
    pub store: Arc<dyn Store>,
    /// Configuration.
    pub config: Arc<WebConfig>,
    /// Seals the session and login cookies (not the store's key).
    pub cookie_key: SecretBox,
    /// HTTP client for GitLab.
    pub http: reqwest::Client,
    /// Other GitLab instances users may pick for runners created with a registration token
    /// or an existing runner token (the configured [`WebConfig::gitlab_url`] is always
    /// allowed). Without trailing slash. Default: none.
    pub extra_gitlab_urls: Arc<Vec<String>>,
    /// Backends ("runtimes") this server offers for runners. Default: `["local"]`.
    pub backends: Arc<Vec<String>>,
}

impl WebState {
    /// State with a fresh HTTP client.
    pub fn new(store: Arc<dyn Store>, config: WebConfig, cookie_key: SecretBox) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self {
            store,
            config: Arc::new(config),
            cookie_key,
            http,
            extra_gitlab_urls: Arc::default(),
            backends: Arc::new(vec!["local".to_string()]),
        }
    }

    /// Allow these GitLab instances too (see [`WebState::extra_gitlab_urls`]); entries are
    /// trimmed, and a trailing `/` is dropped.
    pub fn with_extra_gitlab_urls(mut self, urls: Vec<String>) -> Self {
        let urls = urls
            .iter()
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        self.extra_gitlab_urls = Arc::new(urls);
        self
    }

    /// Offer these backends (see [`WebState::backends`]); an empty list keeps the default.
    pub fn with_backends(mut self, backends: Vec<String>) -> Self {
        if !backends.is_empty() {
            self.backends = Arc::new(backends);
        }
        self
    }

    /// The configured GitLab, without trailing slash.
    pub(crate) fn gitlab_url(&self) -> &str {
        self.config.gitlab_url.trim_end_matches('/')
    }

    /// Every GitLab a user may pick: the configured one first, then the extra ones.
    pub(crate) fn gitlab_urls(&self) -> Vec<String> {
        let mut v = vec![self.gitlab_url().to_string()];
        for u in self.extra_gitlab_urls.iter() {
            if !v.contains(u) {
                v.push(u.clone());
            }
        }
        v
    }

    pub(crate) fn public_url(&self) -> &str {
        self.config.public_url.trim_end_matches('/')
    }

    pub(crate) fn secure_cookies(&self) -> bool {
        self.config.public_url.starts_with("https://")
    }
}

/// The whole HTTP surface of the web app.
pub fn app(state: WebState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(auth::routes())
        .merge(pages::routes())
        .nest("/api/v1", api::routes())
        .fallback(not_found)
        .layer(middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers every response gets: no framing (clickjacking), no MIME sniffing, and no
/// Referer to other sites (the callback URL carries the OAuth code).
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    resp
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the store answers (a lookup of a user that cannot exist).
async fn readyz(State(st): State<WebState>) -> impl IntoResponse {
    match st.store.get_user(UserId::new()).await {
        Ok(_) | Err(StoreError::NotFound) => (StatusCode::OK, "ready"),
        Err(e) => {
            tracing::warn!(error = %e, "readyz: store unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}
