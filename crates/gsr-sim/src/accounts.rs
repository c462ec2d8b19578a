//! Users, personal access tokens, project membership and GitLab's OAuth 2 provider
//! (Doorkeeper): `/oauth/authorize` (with a minimal sign-in page), `/oauth/token`
//! (authorization code with PKCE, refresh token rotation) and `GET /api/v4/user`.
//!
//! The admin side (`/-/sim/users`, `/-/sim/projects/:id/members`,
//! `/-/sim/oauth/applications`, `/-/sim/oauth/grant`) sets the world up. Tokens (PATs and
//! OAuth access tokens) authenticate `/api/v4/...` through [`authenticate`], which the
//! user-token runner API (`crate::user_api`) shares.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::admin::require_admin;
use crate::http_util::{basic_credentials, header_str, parse_id, ApiError};
use crate::state::SimState;
use crate::util::{percent_encode, random_alnum, random_hex};

/// Lifetime of an authorization code (Doorkeeper's default, 10 minutes).
const CODE_TTL: Duration = Duration::from_secs(600);
/// Lifetime of an OAuth access token (GitLab: 2 hours).
const TOKEN_TTL: Duration = Duration::from_secs(7200);

/// Scopes GitLab knows for tokens and applications.
pub(crate) const KNOWN_SCOPES: &[&str] = &[
    "api",
    "read_api",
    "read_user",
    "create_runner",
    "manage_runner",
    "read_repository",
    "write_repository",
    "openid",
    "profile",
    "email",
    "sudo",
    "admin_mode",
];

/// A GitLab user.
pub(crate) struct UserRec {
    pub id: u64,
    pub username: String,
    pub name: String,
    pub email: String,
    pub password: String,
}

struct AppRec {
    name: String,
    secret: String,
    redirect_uri: String,
    scopes: Vec<String>,
    confidential: bool,
}

struct CodeRec {
    client_id: String,
    user_id: u64,
    redirect_uri: String,
    challenge: Option<String>,
    scopes: Vec<String>,
    expires: Instant,
}

struct OauthToken {
    client_id: String,
    user_id: u64,
    scopes: Vec<String>,
    expires: Instant,
}

/// Accounts and every credential a user can hold.
#[derive(Default)]
pub(crate) struct Accounts {
    next_user: u64,
    pub users: BTreeMap<u64, UserRec>,
    /// PAT -> (user, scopes).
    pats: HashMap<String, (u64, Vec<String>)>,
    /// (project, user) -> access level.
    members: BTreeMap<(u64, u64), u8>,
    apps: BTreeMap<String, AppRec>,
    codes: HashMap<String, CodeRec>,
    tokens: HashMap<String, OauthToken>,
    /// refresh token -> access token.
    refresh: HashMap<String, String>,
}

/// Who is calling `/api/v4/...` and with which scopes.
pub(crate) struct Caller {
    pub user_id: u64,
    pub scopes: Vec<String>,
}

impl Caller {
    /// GitLab's `insufficient_scope` 403 unless one of `any` is granted.
    pub fn require_scope(&self, any: &[&str]) -> Result<(), ApiError> {
        if self.scopes.iter().any(|s| any.contains(&s.as_str())) {
            return Ok(());
        }
        Err(ApiError::insufficient_scope(&any.join(" ")))
    }
}

impl Accounts {
    fn next_user_id(&mut self) -> u64 {
        if self.next_user == 0 {
            self.next_user = 60;
        }
        self.next_user += 1;
        self.next_user
    }

    fn new_pat(&mut self, user_id: u64, scopes: Vec<String>) -> String {
        let token = format!("glpat-{}", random_alnum(20));
        self.pats.insert(token.clone(), (user_id, scopes));
        token
    }

    /// Access level of `user_id` in `project_id` (0 when not a member).
    pub fn access_level(&self, project_id: u64, user_id: u64) -> u8 {
        self.members
            .get(&(project_id, user_id))
            .copied()
            .unwrap_or(0)
    }

    /// The user and scopes a PAT or live OAuth access token stands for.
    fn resolve(&self, token: &str) -> Option<Caller> {
        if let Some((user_id, scopes)) = self.pats.get(token) {
            return Some(Caller {
                user_id: *user_id,
                scopes: scopes.clone(),
            });
        }
        let t = self.tokens.get(token)?;
        (t.expires > Instant::now()).then(|| Caller {
            user_id: t.user_id,
            scopes: t.scopes.clone(),
        })
    }

    fn issue_token(&mut self, client_id: &str, user_id: u64, scopes: Vec<String>) -> Value {
        let access = random_hex(32);
        let refresh = random_hex(32);
        let scope = scopes.join(" ");
        self.tokens.insert(
            access.clone(),
            OauthToken {
                client_id: client_id.to_string(),
                user_id,
                scopes,
                expires: Instant::now() + TOKEN_TTL,
            },
        );
        self.refresh.insert(refresh.clone(), access.clone());
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": TOKEN_TTL.as_secs(),
            "refresh_token": refresh,
            "scope": scope,
            "created_at": created_at,
        })
    }

    fn new_code(
        &mut self,
        client_id: &str,
        user_id: u64,
        redirect_uri: &str,
        challenge: Option<String>,
        scopes: Vec<String>,
    ) -> String {
        let code = random_hex(32);
        self.codes.insert(
            code.clone(),
            CodeRec {
                client_id: client_id.to_string(),
                user_id,
                redirect_uri: redirect_uri.to_string(),
                challenge,
                scopes,
                expires: Instant::now() + CODE_TTL,
            },
        );
        code
    }
}

/// Authenticates a user token: `PRIVATE-TOKEN`, or `Authorization: Bearer`. 401 otherwise.
pub(crate) fn authenticate(st: &SimState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let bearer = header_str(headers, "authorization").and_then(|v| {
        let (scheme, rest) = v.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_string())
    });
    let token = header_str(headers, "private-token")
        .or(bearer)
        .ok_or_else(ApiError::unauthorized)?;
    st.db()
        .accounts
        .resolve(&token)
        .ok_or_else(ApiError::unauthorized)
}

pub(crate) fn routes(state: &SimState) -> Router<SimState> {
    let admin = Router::new()
        .route("/-/sim/users", post(create_user))
        .route("/-/sim/users/{id}/personal_access_tokens", post(create_pat))
        .route("/-/sim/projects/{id}/members", post(add_member))
        .route("/-/sim/oauth/applications", post(create_app))
        .route("/-/sim/oauth/grant", post(admin_grant))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .merge(admin)
        .route(
            "/oauth/authorize",
            get(authorize_page).post(authorize_submit),
        )
        .route("/oauth/token", post(token))
        .route("/api/v4/user", get(current_user))
}

fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
}

/// Scopes as a space separated string or an array.
#[derive(Deserialize)]
#[serde(untagged)]
enum ScopesIn {
    Text(String),
    List(Vec<String>),
}

impl ScopesIn {
    fn into_vec(self) -> Vec<String> {
        match self {
            ScopesIn::Text(s) => split_scopes(&s),
            ScopesIn::List(v) => v,
        }
    }
}

fn split_scopes(s: &str) -> Vec<String> {
    s.split([' ', '+', ','])
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn check_scopes(scopes: &[String]) -> Result<(), ApiError> {
    if scopes.is_empty() {
        return Err(ApiError::validation("scopes is empty"));
    }
    match scopes.iter().find(|s| !KNOWN_SCOPES.contains(&s.as_str())) {
        Some(bad) => Err(ApiError::validation(format!(
            "scopes does not have a valid value ({bad})"
        ))),
        None => Ok(()),
    }
}

#[derive(Deserialize)]
struct UserInput {
    username: String,
    name: Option<String>,
    email: Option<String>,
    password: Option<String>,
    scopes: Option<ScopesIn>,
}

async fn create_user(State(st): State<SimState>, body: Bytes) -> Response {
    respond((|| {
        let input: UserInput = parse(&body)?;
        let username = input.username.trim().to_string();
        if username.is_empty()
            || !username
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(ApiError::bad_request("username is invalid"));
        }
        let scopes = input
            .scopes
            .map_or_else(|| vec!["api".to_string()], ScopesIn::into_vec);
        check_scopes(&scopes)?;
        let mut db = st.db();
        let acc = &mut db.accounts;
        if acc.users.values().any(|u| u.username == username) {
            return Err(ApiError::bad_request("Username has already been taken"));
        }
        let id = acc.next_user_id();
        let email = input
            .email
            .unwrap_or_else(|| format!("{username}@example.com"));
        let user = UserRec {
            id,
            name: input.name.unwrap_or_else(|| username.clone()),
            username: username.clone(),
            email,
            password: input.password.unwrap_or_else(|| random_alnum(16)),
        };
        acc.users.insert(id, user);
        let pat = acc.new_pat(id, scopes);
        Ok((
            StatusCode::CREATED,
            Json(json!({ "id": id, "username": username, "personal_access_token": pat })),
        )
            .into_response())
    })())
}

#[derive(Deserialize)]
struct PatInput {
    scopes: ScopesIn,
}

async fn create_pat(State(st): State<SimState>, Path(id): Path<String>, body: Bytes) -> Response {
    respond((|| {
        let id = parse_id(&id)?;
        let input: PatInput = parse(&body)?;
        let scopes = input.scopes.into_vec();
        check_scopes(&scopes)?;
        let mut db = st.db();
        if !db.accounts.users.contains_key(&id) {
            return Err(ApiError::not_found("User"));
        }
        let token = db.accounts.new_pat(id, scopes.clone());
        Ok((
            StatusCode::CREATED,
            Json(json!({ "token": token, "scopes": scopes, "user_id": id })),
        )
            .into_response())
    })())
}

#[derive(Deserialize)]
struct MemberInput {
    user_id: u64,
    access_level: u8,
}

async fn add_member(State(st): State<SimState>, Path(id): Path<String>, body: Bytes) -> Response {
    respond((|| {
        let project_id = parse_id(&id)?;
        let input: MemberInput = parse(&body)?;
        if ![5, 10, 15, 20, 30, 40, 50].contains(&input.access_level) {
            return Err(ApiError::validation(
                "access_level does not have a valid value",
            ));
        }
        let mut db = st.db();
        if !db.projects.contains_key(&project_id) {
            return Err(ApiError::not_found("Project"));
        }
        if !db.accounts.users.contains_key(&input.user_id) {
            return Err(ApiError::not_found("User"));
        }
        db.accounts
            .members
            .insert((project_id, input.user_id), input.access_level);
        Ok((
            StatusCode::CREATED,
            Json(json!({
                "project_id": project_id,
                "user_id": input.user_id,
                "access_level": input.access_level,
            })),
        )
            .into_response())
    })())
}

#[derive(Deserialize)]
struct AppInput {
    name: String,
    redirect_uri: String,
    scopes: ScopesIn,
    #[serde(default = "yes")]
    confidential: bool,
}

fn yes() -> bool {
    true
}

async fn create_app(State(st): State<SimState>, body: Bytes) -> Response {
    respond((|| {
        let input: AppInput = parse(&body)?;
        let scopes = input.scopes.into_vec();
        check_scopes(&scopes)?;
        if !(input.redirect_uri.starts_with("http://")
            || input.redirect_uri.starts_with("https://"))
            || input.redirect_uri.contains('#')
        {
            return Err(ApiError::bad_request("redirect_uri is invalid"));
        }
        let client_id = random_hex(32);
        let secret = format!("gloas-{}", random_hex(32));
        st.db().accounts.apps.insert(
            client_id.clone(),
            AppRec {
                name: input.name.clone(),
                secret: secret.clone(),
                redirect_uri: input.redirect_uri.clone(),
                scopes: scopes.clone(),
                confidential: input.confidential,
            },
        );
        Ok((
            StatusCode::CREATED,
            Json(json!({
                "client_id": client_id,
                "client_secret": secret,
                "application_id": client_id,
                "secret": secret,
                "name": input.name,
                "redirect_uri": input.redirect_uri,
                "scopes": scopes,
                "confidential": input.confidential,
            })),
        )
            .into_response())
    })())
}

#[derive(Deserialize)]
struct GrantInput {
    client_id: String,
    user_id: u64,
    redirect_uri: String,
    code_challenge: Option<String>,
    scopes: Option<ScopesIn>,
}

/// Test shortcut: the code `/oauth/authorize` would have produced after sign-in.
async fn admin_grant(State(st): State<SimState>, body: Bytes) -> Response {
    respond((|| {
        let input: GrantInput = parse(&body)?;
        let mut db = st.db();
        let acc = &mut db.accounts;
        let app = acc
            .apps
            .get(&input.client_id)
            .ok_or_else(|| ApiError::not_found("Application"))?;
        if app.redirect_uri != input.redirect_uri {
            return Err(ApiError::bad_request("redirect_uri does not match"));
        }
        let scopes = input
            .scopes
            .map_or_else(|| app.scopes.clone(), ScopesIn::into_vec);
        if scopes.iter().any(|s| !app.scopes.contains(s)) {
            return Err(ApiError::bad_request("invalid_scope"));
        }
        if !acc.users.contains_key(&input.user_id) {
            return Err(ApiError::not_found("User"));
        }
        let code = acc.new_code(
            &input.client_id,
            input.user_id,
            &input.redirect_uri,
            input.code_challenge,
            scopes,
        );
        Ok((StatusCode::CREATED, Json(json!({ "code": code }))).into_response())
    })())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn error_page(status: StatusCode, error: &str, description: &str) -> Response {
    let body = format!(
        "<!DOCTYPE html><html><head><title>An error has occurred</title></head><body>\
         <h1>An error has occurred</h1><p id=\"error\">{}</p><p>{}</p></body></html>",
        html_escape(error),
        html_escape(description)
    );
    (status, Html(body)).into_response()
}

fn redirect(to: &str) -> Response {
    let mut resp = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = uri.to_string();
    let mut sep = if uri.contains('?') { '&' } else { '?' };
    for (k, v) in pairs {
        out.push(sep);
        out.push_str(k);
        out.push('=');
        out.push_str(&percent_encode(v));
        sep = '&';
    }
    out
}

/// What `/oauth/authorize` was asked for, once validated.
struct AuthRequest {
    client_id: String,
    redirect_uri: String,
    state: Option<String>,
    scopes: Vec<String>,
    challenge: Option<String>,
}

/// Doorkeeper's pre-authorization checks. `Err` is the finished response: an error page
/// when the client or redirect URI cannot be trusted, else a redirect with `error=`.
fn pre_authorize(st: &SimState, q: &HashMap<String, String>) -> Result<AuthRequest, Box<Response>> {
    pre_authorize_inner(st, q).map_err(Box::new)
}

// The error is a finished response, built once per failed request.
#[allow(clippy::result_large_err)]
fn pre_authorize_inner(
    st: &SimState,
    q: &HashMap<String, String>,
) -> Result<AuthRequest, Response> {
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let client_id = get("client_id").ok_or_else(|| {
        error_page(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request is missing a required parameter: client_id.",
        )
    })?;
    let db = st.db();
    let app = db.accounts.apps.get(client_id).ok_or_else(|| {
        error_page(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed due to unknown client, no client authentication \
             included, or unsupported authentication method.",
        )
    })?;
    let redirect_uri = get("redirect_uri").unwrap_or_default();
    if redirect_uri != app.redirect_uri {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            "The redirect URI included is not valid.",
        ));
    }
    let state = get("state").map(str::to_string);
    let fail = |error: &str, description: &str| {
        let mut pairs = vec![("error", error), ("error_description", description)];
        if let Some(s) = state.as_deref() {
            pairs.push(("state", s));
        }
        redirect(&with_query(redirect_uri, &pairs))
    };
    if get("response_type") != Some("code") {
        return Err(fail(
            "unsupported_response_type",
            "The authorization server does not support this response type.",
        ));
    }
    let scopes = get("scope").map_or_else(|| app.scopes.clone(), split_scopes);
    if scopes.is_empty() || scopes.iter().any(|s| !app.scopes.contains(s)) {
        return Err(fail(
            "invalid_scope",
            "The requested scope is invalid, unknown, or malformed.",
        ));
    }
    let challenge = get("code_challenge").map(str::to_string);
    if challenge.is_some() && get("code_challenge_method").unwrap_or("plain") != "S256" {
        return Err(fail(
            "invalid_request",
            "The code challenge method must be S256.",
        ));
    }
    if !app.confidential && challenge.is_none() {
        return Err(fail(
            "invalid_request",
            "The request is missing a required parameter: code_challenge.",
        ));
    }
    Ok(AuthRequest {
        client_id: client_id.to_string(),
        redirect_uri: redirect_uri.to_string(),
        state,
        scopes,
        challenge,
    })
}

const CARRIED: &[&str] = &[
    "client_id",
    "redirect_uri",
    "response_type",
    "state",
    "scope",
    "code_challenge",
    "code_challenge_method",
];

/// The sign-in page: username/password, plus one "Sign in as" button per user.
async fn authorize_page(
    State(st): State<SimState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(resp) = pre_authorize(&st, &q) {
        return *resp;
    }
    let hidden: String = CARRIED
        .iter()
        .filter_map(|k| q.get(*k).map(|v| (k, v)))
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                html_escape(v)
            )
        })
        .collect();
    let (app_name, users) = {
        let db = st.db();
        let app_name = q
            .get("client_id")
            .and_then(|c| db.accounts.apps.get(c))
            .map(|a| a.name.clone())
            .unwrap_or_default();
        let users: Vec<String> = db
            .accounts
            .users
            .values()
            .map(|u| u.username.clone())
            .collect();
        (app_name, users)
    };
    let buttons: String = users
        .iter()
        .map(|u| {
            let u = html_escape(u);
            format!(
                "<li><form method=\"post\" action=\"/oauth/authorize\">{hidden}\
                 <input type=\"hidden\" name=\"login_as\" value=\"{u}\">\
                 <button type=\"submit\" id=\"login-as-{u}\">Sign in as {u}</button></form></li>"
            )
        })
        .collect();
    let body = format!(
        "<!DOCTYPE html><html><head><title>Sign in · GitLab (gsr-sim)</title></head><body>\
         <h1>Sign in to authorize {app}</h1>\
         <form method=\"post\" action=\"/oauth/authorize\" id=\"sign-in\">{hidden}\
         <label>Username <input name=\"username\" id=\"username\"></label>\
         <label>Password <input type=\"password\" name=\"password\" id=\"password\"></label>\
         <button type=\"submit\" id=\"sign-in-button\">Sign in and authorize</button></form>\
         <h2>Sign in as</h2><ul>{buttons}</ul></body></html>",
        app = html_escape(&app_name)
    );
    Html(body).into_response()
}

/// Sign-in + consent in one step: redirects to `redirect_uri?code=…&state=…`.
async fn authorize_submit(
    State(st): State<SimState>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let req = match pre_authorize(&st, &f) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let mut db = st.db();
    let acc = &mut db.accounts;
    let user_id = if let Some(login_as) = f.get("login_as") {
        acc.users.values().find(|u| &u.username == login_as)
    } else {
        let username = f.get("username").map(String::as_str).unwrap_or_default();
        let password = f.get("password").map(String::as_str).unwrap_or_default();
        acc.users
            .values()
            .find(|u| u.username == username && u.password == password)
    }
    .map(|u| u.id);
    let Some(user_id) = user_id else {
        return error_page(
            StatusCode::UNAUTHORIZED,
            "invalid_login",
            "Invalid login or password.",
        );
    };
    let code = acc.new_code(
        &req.client_id,
        user_id,
        &req.redirect_uri,
        req.challenge,
        req.scopes,
    );
    let mut pairs = vec![("code", code.as_str())];
    if let Some(s) = req.state.as_deref() {
        pairs.push(("state", s));
    }
    redirect(&with_query(&req.redirect_uri, &pairs))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut resp = (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn invalid_grant() -> Response {
    oauth_error(
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "The provided authorization grant is invalid, expired, revoked, does not match the \
         redirection URI used in the authorization request, or was issued to another client.",
    )
}

fn invalid_client() -> Response {
    oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "Client authentication failed due to unknown client, no client authentication \
         included, or unsupported authentication method.",
    )
}

/// PKCE S256: base64url-no-pad(SHA-256(verifier)).
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

async fn token(
    State(st): State<SimState>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| f.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let (client_id, secret) = match basic_credentials(&headers) {
        Some((id, secret)) => (Some(id), Some(secret)),
        None => (
            get("client_id").map(str::to_string),
            get("client_secret").map(str::to_string),
        ),
    };
    let Some(client_id) = client_id else {
        return invalid_client();
    };
    let mut db = st.db();
    let acc = &mut db.accounts;
    let Some(app) = acc.apps.get(&client_id) else {
        return invalid_client();
    };
    if (app.confidential || secret.is_some()) && secret.as_deref() != Some(app.secret.as_str()) {
        return invalid_client();
    }
    match get("grant_type") {
        Some("authorization_code") => {
            let Some(code) = get("code") else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Missing required parameter: code.",
                );
            };
            let Some(rec) = acc.codes.get(code) else {
                return invalid_grant();
            };
            if rec.expires <= Instant::now()
                || rec.client_id != client_id
                || get("redirect_uri") != Some(rec.redirect_uri.as_str())
            {
                return invalid_grant();
            }
            if let Some(challenge) = &rec.challenge {
                let ok = get("code_verifier").is_some_and(|v| {
                    (43..=128).contains(&v.len())
                        && v.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
                        && &pkce_challenge(v) == challenge
                });
                if !ok {
                    return invalid_grant();
                }
            }
            let Some(rec) = acc.codes.remove(code) else {
                return invalid_grant();
            };
            let body = acc.issue_token(&client_id, rec.user_id, rec.scopes);
            token_response(body)
        }
        Some("refresh_token") => {
            let Some(refresh) = get("refresh_token") else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Missing required parameter: refresh_token.",
                );
            };
            let Some(access) = acc.refresh.get(refresh).cloned() else {
                return invalid_grant();
            };
            let Some(old) = acc.tokens.get(&access) else {
                return invalid_grant();
            };
            if old.client_id != client_id {
                return invalid_grant();
            }
            let (user_id, scopes) = (old.user_id, old.scopes.clone());
            acc.refresh.remove(refresh);
            acc.tokens.remove(&access);
            let body = acc.issue_token(&client_id, user_id, scopes);
            token_response(body)
        }
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "The authorization grant type is not supported by the authorization server.",
        ),
    }
}

fn token_response(body: Value) -> Response {
    let mut resp = (StatusCode::OK, Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /api/v4/user`.
async fn current_user(State(st): State<SimState>, headers: HeaderMap) -> Response {
    respond((|| {
        let caller = authenticate(&st, &headers)?;
        caller.require_scope(&["api", "read_api", "read_user"])?;
        let db = st.db();
        let u = db
            .accounts
            .users
            .get(&caller.user_id)
            .ok_or_else(ApiError::unauthorized)?;
        Ok(Json(json!({
            "id": u.id,
            "username": u.username,
            "name": u.name,
            "state": "active",
            "locked": false,
            "avatar_url": format!("{}/uploads/-/system/user/avatar/{}/avatar.png", st.url(), u.id),
            "web_url": format!("{}/{}", st.url(), u.username),
            "email": u.email,
            "public_email": null,
            "bot": false,
        }))
        .into_response())
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_base64url_sha256() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWXnDMkk"),
            "oLESx2dWSK6brQzVKwEu-_V7SN-3WJMVbpDsjgLcnaE"
        );
    }

    #[test]
    fn query_building_appends() {
        assert_eq!(
            with_query("http://a/cb", &[("code", "x y")]),
            "http://a/cb?code=x%20y"
        );
        assert_eq!(
            with_query("http://a/cb?k=1", &[("s", "z")]),
            "http://a/cb?k=1&s=z"
        );
    }
}
