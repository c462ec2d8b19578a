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

#[tokio::test]
async fn tokens_typed_by_the_user_never_reach_the_logs() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("gsr_web=trace,gsr_gitlab=trace")
        .with_writer(capture.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let w = world(3).await;
    // An allowed GitLab that is down: the transport error path is logged too.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_url = format!("http://{}", down.local_addr().unwrap());
    drop(down);
    let state = w
        .state
        .clone()
        .with_extra_gitlab_urls(vec![down_url.clone()]);
    let mut b = Browser::with_state(&w, state);
    b.login(&w, "alice").await;
    let registration = gsr_sim::SimConfig::default().registration_token;
    let existing = w
        .admin
        .create_runner_with(&gsr_sim::RunnerInput {
            project_ids: Some(vec![w.alice_project]),
            ..gsr_sim::RunnerInput::default()
        })
        .await
        .unwrap();
    let mut secrets = vec![
        registration.clone(),
        existing.token.clone(),
        "GR1348941wrong-registration".to_string(),
        "glrt-wrong-runner-token".to_string(),
    ];
    for (body, want) in [
        (
            serde_json::json!({"mode": "registration_token", "registration_token": "GR1348941wrong-registration"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            serde_json::json!({"mode": "runner_token", "runner_token": "glrt-wrong-runner-token"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            serde_json::json!({"mode": "runner_token", "gitlab_url": down_url, "runner_token": existing.token}),
            StatusCode::BAD_REQUEST,
        ),
        (
            serde_json::json!({"mode": "registration_token", "registration_token": registration}),
            StatusCode::CREATED,
        ),
        (
            serde_json::json!({"mode": "runner_token", "runner_token": existing.token}),
            StatusCode::CREATED,
        ),
    ] {
        let r = b.json(Method::POST, "/api/v1/runners", body).await;
        assert_eq!(r.status, want, "{}", r.body);
    }
    let list = b
        .json(Method::GET, "/api/v1/runners", serde_json::Value::Null)
        .await
        .json();
    for r in list.as_array().unwrap() {
        let id = r["id"].as_str().unwrap();
        let rid: gsr_store::RunnerId = id.parse().unwrap();
        secrets.push(
            w.store
                .runner_token(rid)
                .await
                .unwrap()
                .expose_secret()
                .to_string(),
        );
        let r = b
            .json(
                Method::DELETE,
                &format!("/api/v1/runners/{id}"),
                serde_json::Value::Null,
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    }

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("GitLab unreachable"), "{logs}");
    for s in &secrets {
        assert!(
            !logs.contains(s.as_str()),
            "secret {s:?} in the logs: {logs}"
        );
    }
    for body in w.bodies.lock().unwrap().iter() {
        for s in &secrets {
            assert!(!body.contains(s.as_str()), "secret in a body: {body}");
        }
    }
}
