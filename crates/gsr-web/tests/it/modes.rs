//! The three ways to create a runner (user token, registration token, existing runner
//! token), the GitLab allow-list and the configured backends.

use std::net::TcpListener;

use axum::http::{Method, StatusCode};
use gsr_sim::{RunnerInput, SimConfig};
use secrecy::ExposeSecret;

use crate::harness::{world, Browser, World};

/// The simulator's legacy registration token.
fn registration_token() -> String {
    SimConfig::default().registration_token
}

fn assert_not_in_bodies(w: &World, secret: &str) {
    assert!(!secret.is_empty());
    for body in w.bodies.lock().unwrap().iter() {
        assert!(!body.contains(secret), "secret in a body: {body}");
    }
}

async fn runner_token_of(w: &World, id: &str) -> String {
    w.store
        .runner_token(id.parse().unwrap())
        .await
        .unwrap()
        .expose_secret()
        .to_string()
}

#[tokio::test]
async fn registration_token_mode_registers_then_unregisters_with_the_runner_token() {
    let w = world(3).await;
    let mut b = Browser::new(&w);
    b.login(&w, "alice").await;
    let csrf = b.csrf.clone();
    let reg = registration_token();
    let r = b
        .post_form(
            "/runners",
            &[
                ("_csrf", &csrf),
                ("mode", "registration_token"),
                ("gitlab_url", &format!("{}/", w.sim.url)),
                ("registration_token", &reg),
                ("description", "legacy one"),
                ("tags", "a, b"),
                ("run_untagged", "true"),
                ("access_level", "not_protected"),
                ("maximum_timeout", "1800"),
                ("backend", "local"),
                ("concurrency", "1"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(r.body.contains("id=\"webhook-secret\""));
    assert!(r.body.contains("registered with a registration token"));

    let list = b
        .json(Method::GET, "/api/v1/runners", serde_json::Value::Null)
        .await
        .json();
    let dto = &list[0];
    assert_eq!(dto["registration"], "registration_token");
    assert_eq!(dto["gitlab_url"], w.sim.url.as_str());
    let id = dto["id"].as_str().unwrap().to_string();
    let gid = dto["gitlab_runner_id"].as_u64().unwrap();
    // GitLab registered it with the form's settings, and told its id.
    let g = w.admin.runner(gid).await.unwrap();
    assert_eq!(g.created_via, "registration_token");
    assert_eq!(g.description, "legacy one");
    assert_eq!(g.tags, vec!["a", "b"]);
    assert_eq!(g.maximum_timeout, Some(1800));
    let token = runner_token_of(&w, &id).await;

    // Changing only gsr-side fields does not need GitLab's permission.
    let r = b
        .json(
            Method::PUT,
            &format!("/api/v1/runners/{id}"),
            serde_json::json!({"concurrency": 4}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["concurrency"], 4);
    // The sim's registration token makes instance runners, which only an administrator
    // may change in GitLab: a clear field error, not a 404.
    let r = b
        .json(
            Method::PUT,
            &format!("/api/v1/runners/{id}"),
            serde_json::json!({"tags": ["c"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(
        r.json()["fields"]["runner"]
            .as_str()
            .unwrap()
            .contains("does not let your account"),
        "{}",
        r.body
    );

    // Delete: the confirmation says what happens; GitLab's legacy unregister with the
    // runner token removes it there.
    let confirm = b.get(&format!("/runners/{id}/delete")).await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(
        confirm.body.contains("unregisters it in GitLab"),
        "{}",
        confirm.body
    );
    w.admin.clear_requests().await.unwrap();
    let r = b
        .json(
            Method::DELETE,
            &format!("/api/v1/runners/{id}"),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(w.admin.runner(gid).await.is_err(), "still in GitLab");
    let requests = w.admin.requests().await.unwrap();
    assert!(
        requests
            .iter()
            .any(|q| q.method == "DELETE" && q.path == "/api/v4/runners"),
        "{requests:?}"
    );

    assert_not_in_bodies(&w, &reg);
    assert_not_in_bodies(&w, &token);
}

#[tokio::test]
async fn a_wrong_token_is_a_field_error_and_is_not_echoed() {
    let w = world(3).await;
    let mut b = Browser::new(&w);
    b.login(&w, "alice").await;
    let csrf = b.csrf.clone();
    let wrong = "GR1348941this-is-not-it";
    let r = b
        .post_form(
            "/runners",
            &[
                ("_csrf", &csrf),
                ("mode", "registration_token"),
                ("registration_token", wrong),
                ("description", "kept"),
                ("run_untagged", "true"),
                ("access_level", "not_protected"),
                ("backend", "local"),
                ("concurrency", "1"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(
        r.body.contains("id=\"error-registration_token\""),
        "{}",
        r.body
    );
    assert!(r.body.contains("did not accept this registration token"));
    assert!(!r.body.contains(wrong), "token echoed: {}", r.body);
    assert!(r.body.contains("value=\"kept\""), "other input kept");
    assert_eq!(r.headers["cache-control"], "no-store");

    // A runner token pasted as a registration token (and the other way round) gets a hint
    // without asking GitLab.
    let glrt = "glrt-abcdefghijklmnop";
    let r = b
        .post_form(
            "/runners",
            &[
                ("_csrf", &csrf),
                ("mode", "registration_token"),
                ("registration_token", glrt),
                ("run_untagged", "true"),
                ("access_level", "not_protected"),
                ("backend", "local"),
                ("concurrency", "1"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("this is a runner authentication token"));
    assert!(!r.body.contains(glrt));

    // The JSON API: an unknown runner token.
    let r = b
        .json(
            Method::POST,
            "/api/v1/runners",
            serde_json::json!({"mode": "runner_token", "runner_token": "glrt-unknown-token-xyz"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.json()["fields"]["runner_token"].is_string(), "{}", r.body);
    assert!(!r.body.contains("glrt-unknown-token-xyz"));
    // A missing token, an unknown mode.
    let r = b
        .json(
            Method::POST,
            "/api/v1/runners",
            serde_json::json!({"mode": "runner_token"}),
        )
        .await;
    assert_eq!(r.json()["fields"]["runner_token"], "required", "{}", r.body);
    let r = b
        .json(
            Method::POST,
            "/api/v1/runners",
            serde_json::json!({"mode": "magic"}),
        )
        .await;
    assert!(r.json()["fields"]["mode"].is_string(), "{}", r.body);
    let list = b
        .json(Method::GET, "/api/v1/runners", serde_json::Value::Null)
        .await
        .json();
    assert_eq!(list, serde_json::json!([]));
}

#[tokio::test]
async fn runner_token_mode_adopts_the_gitlab_runner_and_delete_leaves_it_in_gitlab() {
    let w = world(3).await;
    let mut b = Browser::new(&w);
    b.login(&w, "alice").await;
    let existing = w
        .admin
        .create_runner_with(&RunnerInput {
            description: "made in GitLab".into(),
            tags: vec!["gpu".into()],
            run_untagged: false,
            maximum_timeout: Some(3600),
            project_ids: Some(vec![w.alice_project]),
            ..RunnerInput::default()
        })
        .await
        .unwrap();
    let r = b
        .json(
            Method::POST,
            "/api/v1/runners",
            serde_json::json!({
                "mode": "runner_token",
                "runner_token": existing.token,
                "description": "ignored: GitLab's settings win",
                "backend": "local",
                "concurrency": 2,
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let created = r.json();
    let dto = &created["runner"];
    assert_eq!(dto["gitlab_runner_id"].as_u64(), Some(existing.id));
    assert_eq!(dto["registration"], "runner_token");
    assert_eq!(dto["description"], "made in GitLab");
    assert_eq!(dto["tags"], serde_json::json!(["gpu"]));
    assert_eq!(dto["run_untagged"], false);
    assert_eq!(dto["maximum_timeout"], 3600);
    assert_eq!(dto["concurrency"], 2);
    assert!(created["webhook_secret"].as_str().unwrap().len() >= 20);
    let id = dto["id"].as_str().unwrap().to_string();
    // Verifying announced one runner manager.
    assert_eq!(w.admin.runner(existing.id).await.unwrap().managers.len(), 1);
    // The same token twice is refused (GitLab runner already here).
    let again = b
        .json(
            Method::POST,
            "/api/v1/runners",
            serde_json::json!({"mode": "runner_token", "runner_token": existing.token}),
        )
        .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST, "{}", again.body);
    assert!(
        again.body.contains("already registered here"),
        "{}",
        again.body
    );
    assert_eq!(w.admin.runner(existing.id).await.unwrap().managers.len(), 1);

    // alice maintains the project: edits reach GitLab with her OAuth token.
    let r = b
        .json(
            Method::PUT,
            &format!("/api/v1/runners/{id}"),
            serde_json::json!({"tags": ["gpu", "big"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        w.admin.runner(existing.id).await.unwrap().tags,
        vec!["gpu", "big"]
    );
    let page = b.get(&format!("/runners/{id}")).await;
    assert!(page.body.contains("added with an existing runner token"));

    // Delete: like `gitlab-runner unregister` for a glrt- token, only gsr's manager goes.
    let confirm = b.get(&format!("/runners/{id}/delete")).await;
    assert!(
        confirm.body.contains("so it stays there"),
        "{}",
        confirm.body
    );
    let mut bob = Browser::new(&w);
    bob.login(&w, "bob").await;
    assert_eq!(
        bob.get(&format!("/runners/{id}/delete")).await.status,
        StatusCode::NOT_FOUND
    );
    let r = b
        .json(
            Method::DELETE,
            &format!("/api/v1/runners/{id}"),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let g = w.admin.runner(existing.id).await.expect("still in GitLab");
    assert!(g.managers.is_empty(), "{:?}", g.managers);
    assert_eq!(
        b.get(&format!("/runners/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_not_in_bodies(&w, &existing.token);
}

#[tokio::test]
async fn a_gitlab_url_off_the_allow_list_is_refused_without_contacting_it() {
    let w = world(3).await;
    let mut b = Browser::new(&w);
    b.login(&w, "alice").await;
    // Something listening where the user points: it must never see a connection.
    let trap = TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_url = format!("http://{}", trap.local_addr().unwrap());
    for (mode, field) in [
        ("registration_token", "registration_token"),
        ("runner_token", "runner_token"),
    ] {
        let r = b
            .json(
                Method::POST,
                "/api/v1/runners",
                serde_json::json!({"mode": mode, "gitlab_url": trap_url, field: "some-token-value"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
        assert!(r.json()["fields"]["gitlab_url"].is_string(), "{}", r.body);
    }
    // The form says the same next to the field.
    let csrf = b.csrf.clone();
    let r = b
        .post_form(
            "/runners",
            &[
                ("_csrf", csrf.as_str()),
                ("mode", "runner_token"),
                ("gitlab_url", trap_url.as_str()),
                ("runner_token", "glrt-whatever-value"),
                ("run_untagged", "true"),
                ("access_level", "not_protected"),
                ("backend", "local"),
                ("concurrency", "1"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("id=\"error-gitlab_url\""), "{}", r.body);
    // Every request has been answered: a connection would be queued by now.
    match trap.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the server contacted a URL off the allow-list: {other:?}"),
    }
}

#[tokio::test]
async fn an_extra_gitlab_is_allowed_and_never_gets_the_oauth_token() {
    let w = world(3).await;
    let other = gsr_sim::spawn(SimConfig::default()).await.unwrap();
    let state = w
        .state
        .clone()
        .with_extra_gitlab_urls(vec![format!("{}/", other.url)]);
    let mut b = Browser::with_state(&w, state);
    b.login(&w, "alice").await;
    let me = b.get("/api/v1/me").await.json();
    assert_eq!(me["gitlab_urls"], serde_json::json!([w.sim.url, other.url]));
    let form = b.get("/runners/new").await;
    assert!(form
        .body
        .contains(&format!("<option value=\"{}\"", other.url)));

    let r = b
        .json(
            Method::POST,
            "/api/v1/runners",
            serde_json::json!({
                "mode": "registration_token",
                "gitlab_url": other.url,
                "registration_token": registration_token(),
                "tags": ["elsewhere"],
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let dto = r.json()["runner"].clone();
    assert_eq!(dto["gitlab_url"], other.url.as_str());
    let id = dto["id"].as_str().unwrap().to_string();
    let gid = dto["gitlab_runner_id"].as_u64().unwrap();
    other.admin().runner(gid).await.expect("registered there");

    // The page renders without asking that GitLab with the user's token.
    let page = b.get(&format!("/runners/{id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    let r = b
        .json(
            Method::PUT,
            &format!("/api/v1/runners/{id}"),
            serde_json::json!({"tags": ["moved"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("another GitLab"), "{}", r.body);
    let r = b
        .json(
            Method::DELETE,
            &format!("/api/v1/runners/{id}"),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(
        other.admin().runner(gid).await.is_err(),
        "unregistered there"
    );

    // That GitLab only ever saw runner-token calls: no user API, no OAuth.
    for q in other.admin().requests().await.unwrap() {
        assert!(
            q.path == "/api/v4/runners" || q.path.starts_with("/-/sim/"),
            "unexpected request to the extra GitLab: {} {}",
            q.method,
            q.path
        );
    }
}

#[tokio::test]
async fn backends_come_from_the_configuration() {
    let w = world(3).await;
    let state = w
        .state
        .clone()
        .with_backends(vec!["local".into(), "lambda".into()]);
    let mut b = Browser::with_state(&w, state);
    b.login(&w, "alice").await;
    let form = b.get("/runners/new").await;
    assert!(
        form.body.contains("<option value=\"lambda\""),
        "{}",
        form.body
    );
    let r = b
        .json(
            Method::POST,
            "/api/v1/runners",
            serde_json::json!({"project_id": w.alice_project, "backend": "nope"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json()["fields"]["backend"],
        "unknown backend (available: local, lambda)"
    );
    let doc = b.get("/api/v1/openapi.json").await.json();
    assert_eq!(
        doc["components"]["schemas"]["CreateRunner"]["properties"]["backend"]["enum"],
        serde_json::json!(["local", "lambda"])
    );
    let r = b
        .json(
            Method::POST,
            "/api/v1/runners",
            serde_json::json!({"project_id": w.alice_project, "backend": "lambda"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.json()["runner"]["backend"], "lambda");
}
