use axum::http::StatusCode;

use axum::http::Method;
use chrono::Utc;
use gsr_store::{OAuthTokens, UserId};
use secrecy::ExposeSecret;

use crate::harness::{world, Browser, World};

async fn user_id(b: &mut Browser) -> UserId {
    let me = b.get("/api/v1/me").await.json();
    me["id"].as_str().unwrap().parse().unwrap()
}

async fn oauth_access_token(w: &World, b: &mut Browser) -> String {
    let id = user_id(b).await;
    let t = w
        .store
        .oauth_tokens(id)
        .await
        .unwrap()
        .expect("tokens stored");
    t.access_token.expose_secret().to_string()
}

#[tokio::test]
async fn health_and_ready() {
    let w = world(3).await;
    let mut b = Browser::new(&w);
    assert_eq!(b.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(b.get("/readyz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn login_page_then_oauth_pkce_login_and_logout() {
    let w = world(3).await;
    let mut b = Browser::new(&w);
    let home = b.get("/").await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(home.body.contains("Log in with GitLab"));
    // Not logged in: pages redirect to the login page, the API answers 401.
    assert_eq!(b.get("/runners").await.location(), "/");
    assert_eq!(
        b.get("/api/v1/runners").await.status,
        StatusCode::UNAUTHORIZED
    );

    b.login(&w, "alice").await;
    let list = b.get("/runners").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.body.contains("Your runners"));
    // OAuth tokens are stored (encrypted) and never shown.
    let access = oauth_access_token(&w, &mut b).await;
    assert!(!access.is_empty());
    // Security headers on every page.
    let page = b.get("/runners").await;
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert!(page.headers.contains_key("content-security-policy"));

    // Logout needs the CSRF token.
    let bad = b.post_form("/auth/logout", &[("_csrf", "nope")]).await;
    assert_eq!(bad.status, StatusCode::FORBIDDEN);
    let csrf = b.csrf.clone();
    let out = b.post_form("/auth/logout", &[("_csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(b.get("/runners").await.location(), "/");

    for body in w.bodies.lock().unwrap().iter() {
        assert!(!body.contains(&access), "OAuth token leaked: {body}");
    }
}

#[tokio::test]
async fn callback_with_wrong_state_is_refused() {
    let w = world(3).await;
    let mut b = Browser::new(&w);
    b.get("/auth/login").await;
    let r = b.get("/auth/callback?code=abc&state=forged").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(!b.cookies.iter().any(|(k, _)| k == "gsr_session"));
    // No login cookie at all.
    let mut c = Browser::new(&w);
    assert_eq!(
        c.get("/auth/callback?code=abc&state=x").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn forged_session_cookie_is_ignored() {
    let w = world(3).await;
    let mut b = Browser::new(&w);
    b.cookies.push((
        "gsr_session".into(),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
    ));
    assert_eq!(b.get("/runners").await.location(), "/");
    // A (valid, sealed) login cookie is not a session: the seal is bound to its purpose.
    let mut c = Browser::new(&w);
    c.get("/auth/login").await;
    let login = c
        .cookies
        .iter()
        .find(|(k, _)| k == "gsr_login")
        .unwrap()
        .1
        .clone();
    c.cookies = vec![("gsr_session".into(), login)];
    assert_eq!(c.get("/runners").await.location(), "/");
}

#[tokio::test]
async fn expiring_token_is_refreshed_before_use() {
    let w = world(3).await;
    let mut b = Browser::new(&w);
    b.login(&w, "alice").await;
    let id = user_id(&mut b).await;
    let old = w.store.oauth_tokens(id).await.unwrap().unwrap();
    let expired = OAuthTokens {
        expires_at: Some(Utc::now() - chrono::Duration::seconds(5)),
        ..old.clone()
    };
    w.store.set_oauth_tokens(id, &expired).await.unwrap();
    let r = b
        .json(
            Method::POST,
            "/api/v1/runners",
            serde_json::json!({"project_id": w.alice_project, "description": "after refresh"}),
        )
        .await;
    assert_eq!(r.status, axum::http::StatusCode::CREATED, "{}", r.body);
    let new = w.store.oauth_tokens(id).await.unwrap().unwrap();
    assert_ne!(
        new.access_token.expose_secret(),
        old.access_token.expose_secret()
    );
    assert!(new.expires_at.unwrap() > Utc::now());
}

#[tokio::test]
async fn revoked_token_ends_the_session() {
    let w = world(3).await;
    let mut b = Browser::new(&w);
    b.login(&w, "alice").await;
    let id = user_id(&mut b).await;
    let revoked = OAuthTokens {
        access_token: "not-a-valid-token".to_string().into(),
        refresh_token: None,
        expires_at: None,
    };
    w.store.set_oauth_tokens(id, &revoked).await.unwrap();
    let csrf = b.csrf.clone();
    let project = w.alice_project.to_string();
    let r = b
        .post_form(
            "/runners",
            &[
                ("_csrf", csrf.as_str()),
                ("project_id", project.as_str()),
                ("run_untagged", "true"),
                ("access_level", "not_protected"),
                ("backend", "local"),
                ("concurrency", "1"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location(), "/");
    assert!(!b.cookies.iter().any(|(k, _)| k == "gsr_session"));
    assert!(b.get("/").await.body.contains("Log in with GitLab"));
}

#[tokio::test]
async fn cookies_are_secure_behind_https() {
    let w = world(3).await;
    let mut config = (*w.state.config).clone();
    config.public_url = "https://gsr.example.com".into();
    let state = gsr_web::WebState {
        config: std::sync::Arc::new(config),
        ..w.state.clone()
    };
    let resp = tower::ServiceExt::oneshot(
        gsr_web::app(state),
        axum::http::Request::get("/auth/login")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("; Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let loc = resp.headers()["location"].to_str().unwrap();
    assert!(
        loc.contains("redirect_uri=https%3A%2F%2Fgsr.example.com%2Fauth%2Fcallback"),
        "{loc}"
    );
}
