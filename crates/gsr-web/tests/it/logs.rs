//! No secret in any log line of the web app or the GitLab client, across the whole
//! lifecycle including its failure paths.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::http::{Method, StatusCode};
use gsr_store::{OAuthTokens, UserId};
use secrecy::ExposeSecret;
use tracing_subscriber::fmt::MakeWriter;

use crate::harness::{world, Browser};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("gsr_web=trace,gsr_gitlab=trace")
        .with_writer(capture.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let w = world(1).await;
    let mut b = Browser::new(&w);
    b.login(&w, "alice").await;
    let me = b.get("/api/v1/me").await.json();
    let uid: UserId = me["id"].as_str().unwrap().parse().unwrap();
    let r = b
        .json(
            Method::POST,
            "/api/v1/runners",
            serde_json::json!({"project_id": w.alice_project}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let v = r.json();
    let id = v["runner"]["id"].as_str().unwrap().to_string();
    let webhook_secret = v["webhook_secret"].as_str().unwrap().to_string();
    let rid: gsr_store::RunnerId = id.parse().unwrap();
    let mut secrets = vec![
        w.store
            .runner_token(rid)
            .await
            .unwrap()
            .expose_secret()
            .to_string(),
        webhook_secret,
    ];
    let tokens = w.store.oauth_tokens(uid).await.unwrap().unwrap();
    secrets.push(tokens.access_token.expose_secret().to_string());
    secrets.push(
        tokens
            .refresh_token
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_string(),
    );

    // Quota refusal, an update, then a refused refresh (logged) ending the session.
    let r = b
        .json(
            Method::POST,
            "/api/v1/runners",
            serde_json::json!({"project_id": w.alice_project}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = b
        .json(
            Method::PUT,
            &format!("/api/v1/runners/{id}"),
            serde_json::json!({"tags": ["t"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let bad = OAuthTokens {
        access_token: "expired-access-token-value".to_string().into(),
        refresh_token: Some("bogus-refresh-token-value".to_string().into()),
        expires_at: Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
    };
    secrets.push("expired-access-token-value".into());
    secrets.push("bogus-refresh-token-value".into());
    w.store.set_oauth_tokens(uid, &bad).await.unwrap();
    let r = b
        .json(
            Method::DELETE,
            &format!("/api/v1/runners/{id}"),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("OAuth refresh refused"), "{logs}");
    for s in &secrets {
        assert!(!logs.contains(s.as_str()), "secret in the logs: {logs}");
    }
    // Bodies: everything but the webhook secret (shown once, in the create reply).
    for body in w.bodies.lock().unwrap().iter() {
        for (i, s) in secrets.iter().enumerate() {
            assert!(
                i == 1 || !body.contains(s.as_str()),
                "secret in a body: {body}"
            );
        }
    }
}
