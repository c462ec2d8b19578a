use axum::http::{Method, StatusCode};
use secrecy::ExposeSecret;

use crate::harness::{world, Browser, World};

fn new_runner_form<'a>(
    csrf: &'a str,
    project: &'a str,
    description: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("_csrf", csrf),
        ("project_id", project),
        ("description", description),
        ("tags", "linux, fast"),
        ("run_untagged", "true"),
        ("access_level", "not_protected"),
        ("maximum_timeout", "3600"),
        ("backend", "local"),
        ("concurrency", "2"),
    ]
}

/// Creates a runner through the form; returns (our id, GitLab id, webhook secret).
async fn create(b: &mut Browser, w: &World, description: &str) -> (String, i64, String) {
    let csrf = b.csrf.clone();
    let project = w.alice_project.to_string();
    let r = b
        .post_form("/runners", &new_runner_form(&csrf, &project, description))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.headers["cache-control"], "no-store");
    let list = b
        .json(Method::GET, "/api/v1/runners", serde_json::Value::Null)
        .await
        .json();
    let last = list.as_array().unwrap().last().unwrap().clone();
    let id = last["id"].as_str().unwrap().to_string();
    let secret = between(&r.body, "id=\"webhook-secret\">", "<");
    assert!(r.body.contains(&format!("http://gsr.test/hooks/{id}")));
    (id, last["gitlab_runner_id"].as_i64().unwrap(), secret)
}

fn between(s: &str, a: &str, b: &str) -> String {
    let start = s.find(a).unwrap_or_else(|| panic!("{a} not in {s}")) + a.len();
    let end = s[start..].find(b).unwrap() + start;
    s[start..end].to_string()
}

async fn secrets(w: &World, id: &str) -> Vec<String> {
    let rid: gsr_store::RunnerId = id.parse().unwrap();
    let token = w
        .store
        .runner_token(rid)
        .await
        .unwrap()
        .expose_secret()
        .to_string();
    assert!(token.starts_with("glrt-"));
    let owner = w.store.runner_by_id(rid).await.unwrap().owner;
    let oauth = w.store.oauth_tokens(owner).await.unwrap().unwrap();
    let mut v = vec![token, oauth.access_token.expose_secret().to_string()];
    if let Some(r) = oauth.refresh_token {
        v.push(r.expose_secret().to_string());
    }
    v
}

fn assert_no_secret(w: &World, secrets: &[String]) {
    for body in w.bodies.lock().unwrap().iter() {
        for s in secrets {
            assert!(
                !body.contains(s.as_str()),
                "secret leaked in a body: {body}"
            );
        }
    }
}

#[tokio::test]
async fn create_edit_delete_synced_with_gitlab() {
    let w = world(3).await;
    let mut b = Browser::new(&w);
    b.login(&w, "alice").await;
    let (id, gid, webhook_secret) = create(&mut b, &w, "my runner").await;

    // It exists in GitLab with the form's settings.
    let g = w.admin.runner(gid as u64).await.unwrap();
    assert_eq!(g.description, "my runner");
    assert_eq!(g.tags, vec!["linux", "fast"]);
    assert_eq!(g.project_ids, Some(vec![w.alice_project]));
    assert_eq!(g.maximum_timeout, Some(3600));

    // The list and the page show it; the webhook secret is not shown again.
    let list = b.get("/runners").await;
    assert!(list.body.contains("my runner"));
    let page = b.get(&format!("/runners/{id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains(&webhook_secret));
    assert!(w
        .store
        .verify_webhook_secret(id.parse().unwrap(), &webhook_secret)
        .await
        .unwrap());

    // Edit tags through the form (POST + _method=PUT).
    let edit = b.get(&format!("/runners/{id}/edit")).await;
    assert!(edit.body.contains("linux, fast"));
    let csrf = b.csrf.clone();
    let r = b
        .post_form(
            &format!("/runners/{id}"),
            &[
                ("_csrf", &csrf),
                ("_method", "PUT"),
                ("description", "renamed"),
                ("tags", "arm64"),
                ("access_level", "ref_protected"),
                ("maximum_timeout", "7200"),
                ("backend", "local"),
                ("concurrency", "3"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let g = w.admin.runner(gid as u64).await.unwrap();
    assert_eq!(g.tags, vec!["arm64"]);
    assert_eq!(g.description, "renamed");
    assert!(!g.run_untagged);
    assert_eq!(g.access_level, "ref_protected");
    assert_eq!(g.maximum_timeout, Some(7200));
    let page = b.get(&format!("/runners/{id}")).await;
    assert!(page.body.contains("arm64") && page.body.contains("renamed"));

    // The same through the JSON API.
    let r = b
        .json(
            Method::PUT,
            &format!("/api/v1/runners/{id}"),
            serde_json::json!({"tags": ["a", "b"], "paused": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["tags"], serde_json::json!(["a", "b"]));
    let g = w.admin.runner(gid as u64).await.unwrap();
    assert_eq!(g.tags, vec!["a", "b"]);
    assert!(g.paused);

    let all_secrets = secrets(&w, &id).await;

    // Delete (POST + _method=DELETE): gone here and in GitLab.
    let r = b
        .post_form(
            &format!("/runners/{id}"),
            &[("_csrf", &csrf), ("_method", "DELETE")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(
        b.get(&format!("/runners/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert!(w.admin.runner(gid as u64).await.is_err(), "still in GitLab");

    assert_no_secret(&w, &all_secrets);
}

#[tokio::test]
async fn json_api_create_and_delete() {
    let w = world(3).await;
    let mut b = Browser::new(&w);
    b.login(&w, "alice").await;
    let r = b
        .json(
            Method::POST,
            "/api/v1/runners",
            serde_json::json!({"project_id": w.alice_project, "description": "api", "tags": ["x"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let v = r.json();
    let id = v["runner"]["id"].as_str().unwrap().to_string();
    assert!(!v["webhook_secret"].as_str().unwrap().is_empty());
    let gid = v["runner"]["gitlab_runner_id"].as_u64().unwrap();
    assert_eq!(w.admin.runner(gid).await.unwrap().description, "api");
    let got = b
        .json(
            Method::GET,
            &format!("/api/v1/runners/{id}"),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.json().get("webhook_secret").is_none());
    let secrets = secrets(&w, &id).await;

    // Without the CSRF header: refused.
    let csrf = std::mem::take(&mut b.csrf);
    let r = b
        .json(
            Method::DELETE,
            &format!("/api/v1/runners/{id}"),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    b.csrf = csrf;
    let r = b
        .json(
            Method::DELETE,
            &format!("/api/v1/runners/{id}"),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(w.admin.runner(gid).await.is_err());
    assert_no_secret(&w, &secrets);
}

#[tokio::test]
async fn other_users_runner_is_404() {
    let w = world(3).await;
    let mut alice = Browser::new(&w);
    alice.login(&w, "alice").await;
    let (id, gid, _) = create(&mut alice, &w, "alice's").await;
    let mut bob = Browser::new(&w);
    bob.login(&w, "bob").await;
    assert_eq!(
        bob.get(&format!("/runners/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        bob.get(&format!("/runners/{id}/edit")).await.status,
        StatusCode::NOT_FOUND
    );
    let csrf = bob.csrf.clone();
    let r = bob
        .post_form(
            &format!("/runners/{id}"),
            &[("_csrf", &csrf), ("_method", "DELETE")],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = bob
        .json(
            Method::GET,
            &format!("/api/v1/runners/{id}"),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = bob
        .json(
            Method::PUT,
            &format!("/api/v1/runners/{id}"),
            serde_json::json!({"tags": ["x"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(!bob.get("/runners").await.body.contains("alice&#39;s"));
    // Still there, unchanged.
    assert_eq!(
        w.admin.runner(gid as u64).await.unwrap().tags,
        vec!["linux", "fast"]
    );
    // Bob cannot create a runner for alice's project (GitLab's 403 → field error).
    let project = w.alice_project.to_string();
    let r = bob
        .post_form("/runners", &new_runner_form(&csrf, &project, "sneaky"))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("not a Maintainer"), "{}", r.body);
    // Bob's own runner is his alone.
    let project = w.bob_project.to_string();
    let r = bob
        .post_form("/runners", &new_runner_form(&csrf, &project, "bob's"))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(!alice.get("/runners").await.body.contains("bob&#39;s"));
    assert_eq!(
        alice
            .json(Method::GET, "/api/v1/runners", serde_json::Value::Null)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn csrf_mismatch_is_403_and_changes_nothing() {
    let w = world(3).await;
    let mut b = Browser::new(&w);
    b.login(&w, "alice").await;
    let project = w.alice_project.to_string();
    let r = b
        .post_form("/runners", &new_runner_form("wrong", &project, "x"))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = b
        .post_form("/runners", &new_runner_form("", &project, "x")[1..])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let (id, gid, _) = create(&mut b, &w, "keep").await;
    let r = b
        .post_form(
            &format!("/runners/{id}"),
            &[("_csrf", "wrong"), ("_method", "DELETE")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = b
        .post_form(
            &format!("/runners/{id}"),
            &[
                ("_method", "PUT"),
                ("tags", "evil"),
                ("access_level", "not_protected"),
                ("backend", "local"),
                ("concurrency", "1"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        w.admin.runner(gid as u64).await.unwrap().tags,
        vec!["linux", "fast"]
    );
    assert_eq!(
        b.get(&format!("/runners/{id}")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn user_input_is_html_escaped() {
    let w = world(3).await;
    let mut b = Browser::new(&w);
    b.login(&w, "alice").await;
    let (id, _, _) = create(&mut b, &w, "<script>alert(1)</script>").await;
    for page in [
        b.get("/runners").await,
        b.get(&format!("/runners/{id}")).await,
        b.get(&format!("/runners/{id}/edit")).await,
    ] {
        assert!(!page.body.contains("<script>alert(1)"), "{}", page.body);
        assert!(
            page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{}",
            page.body
        );
    }
    // Also in a re-rendered form with errors.
    let csrf = b.csrf.clone();
    let r = b
        .post_form(
            "/runners",
            &[
                ("_csrf", &csrf),
                ("project_id", "\"><script>x</script>"),
                ("backend", "local"),
                ("access_level", "not_protected"),
                ("concurrency", "1"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!r.body.contains("<script>x"));
}

#[tokio::test]
async fn quota_is_a_form_error() {
    let w = world(1).await;
    let mut b = Browser::new(&w);
    b.login(&w, "alice").await;
    create(&mut b, &w, "first").await;
    let csrf = b.csrf.clone();
    let project = w.alice_project.to_string();
    let r = b
        .post_form("/runners", &new_runner_form(&csrf, &project, "second"))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("runner limit reached"));
    let list = b
        .json(Method::GET, "/api/v1/runners", serde_json::Value::Null)
        .await
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let r = b
        .json(
            Method::POST,
            "/api/v1/runners",
            serde_json::json!({"project_id": w.alice_project}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn parallel_creates_respect_the_quota_and_leave_no_orphans_in_gitlab() {
    let w = world(2).await;
    let mut b = Browser::new(&w);
    b.login(&w, "alice").await;
    let cookie: Vec<String> = b.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let cookie = cookie.join("; ");
    let mut set = tokio::task::JoinSet::new();
    for i in 0..6 {
        let router = b.router.clone();
        let cookie = cookie.clone();
        let csrf = b.csrf.clone();
        let body =
            serde_json::json!({"project_id": w.alice_project, "description": format!("p{i}")});
        set.spawn(async move {
            use tower::ServiceExt;
            let req = axum::http::Request::post("/api/v1/runners")
                .header("cookie", cookie)
                .header("content-type", "application/json")
                .header("x-csrf-token", csrf)
                .body(axum::body::Body::from(body.to_string()))
                .unwrap();
            router.oneshot(req).await.unwrap().status()
        });
    }
    let mut created = 0;
    while let Some(status) = set.join_next().await {
        match status.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 2);
    let ours = b
        .json(Method::GET, "/api/v1/runners", serde_json::Value::Null)
        .await
        .json();
    assert_eq!(ours.as_array().unwrap().len(), 2);
    // GitLab holds exactly the runners we recorded (refused creates were undone there).
    let pat = w
        .admin
        .create_pat(w.admin_user_id("alice").await, &["api"])
        .await
        .unwrap();
    let gitlab: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/v4/runners", w.sim.url))
        .bearer_auth(pat)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(gitlab.as_array().unwrap().len(), 2, "{gitlab}");
}

#[tokio::test]
async fn gitlab_403_on_a_runner_is_a_404() {
    let w = world(3).await;
    let mut b = Browser::new(&w);
    b.login(&w, "alice").await;
    let (id, gid, _) = create(&mut b, &w, "mine").await;
    // Alice is demoted to Developer: GitLab now answers 403 for her runner.
    let alice = w.admin_user_id("alice").await;
    w.admin
        .add_member(w.alice_project, alice, 30)
        .await
        .unwrap();
    let r = b
        .json(
            Method::PUT,
            &format!("/api/v1/runners/{id}"),
            serde_json::json!({"tags": ["x"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert_eq!(
        w.admin.runner(gid as u64).await.unwrap().tags,
        vec!["linux", "fast"]
    );
}

#[tokio::test]
async fn pause_resume_synced_and_job_history_shown() {
    let w = world(3).await;
    let mut b = Browser::new(&w);
    b.login(&w, "alice").await;
    let (id, gid, _) = create(&mut b, &w, "pausable").await;
    let page = b.get(&format!("/runners/{id}")).await;
    assert!(page.body.contains("never contacted"), "{}", page.body);
    let csrf = b.csrf.clone();
    let r = b
        .post_form(
            &format!("/runners/{id}/pause"),
            &[("_csrf", &csrf), ("paused", "true")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert!(w.admin.runner(gid as u64).await.unwrap().paused);
    assert!(b
        .get(&format!("/runners/{id}"))
        .await
        .body
        .contains("id=\"resume\""));
    let r = b
        .post_form(
            &format!("/runners/{id}/pause"),
            &[("_csrf", "bad"), ("paused", "false")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    b.post_form(
        &format!("/runners/{id}/pause"),
        &[("_csrf", &csrf), ("paused", "false")],
    )
    .await;
    assert!(!w.admin.runner(gid as u64).await.unwrap().paused);

    // A job the dispatcher recorded shows up in the history.
    let rid: gsr_store::RunnerId = id.parse().unwrap();
    let job = w
        .store
        .record_claim(gsr_store::NewClaim {
            runner_id: rid,
            gitlab_job_id: 4242,
            replica: "r1".into(),
            queued_duration: Some(std::time::Duration::from_millis(1500)),
        })
        .await
        .unwrap();
    w.store
        .update_job_status(job.id, gsr_store::JobStatus::Running, None)
        .await
        .unwrap();
    w.store
        .update_job_status(
            job.id,
            gsr_store::JobStatus::Failed,
            Some("script_failure".into()),
        )
        .await
        .unwrap();
    let page = b.get(&format!("/runners/{id}")).await;
    assert!(page.body.contains("4242") && page.body.contains("failed"));
    assert!(page.body.contains("1.5 s") && page.body.contains("script_failure"));
    let api = b
        .json(
            Method::GET,
            &format!("/api/v1/runners/{id}/jobs"),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(api.status, StatusCode::OK);
    let v = api.json();
    assert_eq!(v[0]["gitlab_job_id"], 4242);
    assert_eq!(v[0]["status"], "failed");
    assert_eq!(v[0]["queued_seconds"], 1.5);
    // Not bob's to see.
    let mut bob = Browser::new(&w);
    bob.login(&w, "bob").await;
    let r = bob
        .json(
            Method::GET,
            &format!("/api/v1/runners/{id}/jobs"),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn api_errors_are_json_and_openapi_paths_exist() {
    let w = world(3).await;
    let mut b = Browser::new(&w);
    b.login(&w, "alice").await;
    let r = b
        .send(
            Method::POST,
            "/api/v1/runners",
            Some("application/json"),
            "{not json".into(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error"].is_string());
    let r = b
        .json(
            Method::POST,
            "/api/v1/runners",
            serde_json::json!({"project_id": 1, "bogus": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = b
        .json(
            Method::POST,
            "/api/v1/runners",
            serde_json::json!({"project_id": w.alice_project, "concurrency": 0}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["fields"]["concurrency"].is_string(), "{}", r.body);
    let r = b.get("/api/v1/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["error"].is_string());

    let (id, _, _) = create(&mut b, &w, "doc").await;
    let doc = b.get("/api/v1/openapi.json").await.json();
    assert_eq!(doc, gsr_web::api::openapi_document(&["local".to_string()]));
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let uri = format!("/api/v1{}", path.replace("{id}", &id));
        for op in ["get", "post", "put", "delete"] {
            if ops.get(op).is_none() {
                continue;
            }
            // Every documented operation is routed (a missing route would be a 404/405).
            let method = Method::from_bytes(op.to_uppercase().as_bytes()).unwrap();
            let r = match op {
                "get" => b.get(&uri).await,
                // Without a body / CSRF header: routed, then refused by validation or CSRF.
                _ => b.send(method, &uri, None, String::new()).await,
            };
            assert!(
                r.status != StatusCode::NOT_FOUND && r.status != StatusCode::METHOD_NOT_ALLOWED,
                "{op} {uri}: {} {}",
                r.status,
                r.body
            );
            if op == "get" {
                assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
            }
        }
    }
}

#[tokio::test]
async fn a_lost_webhook_secret_can_be_replaced() {
    let w = world(3).await;
    let mut b = Browser::new(&w);
    b.login(&w, "alice").await;
    let (id, _, first) = create(&mut b, &w, "rotating").await;
    let rid: gsr_store::RunnerId = id.parse().unwrap();
    let page = b.get(&format!("/runners/{id}")).await;
    assert!(page.body.contains("id=\"new-webhook-secret\""));

    // Without the CSRF token nothing changes.
    let r = b
        .post_form(
            &format!("/runners/{id}/webhook-secret"),
            &[("_csrf", "nope")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(w.store.verify_webhook_secret(rid, &first).await.unwrap());

    let csrf = b.csrf.clone();
    let r = b
        .post_form(
            &format!("/runners/{id}/webhook-secret"),
            &[("_csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers["cache-control"], "no-store");
    assert!(r.body.contains("The old secret token no longer works"));
    let second = between(&r.body, "id=\"webhook-secret\">", "<");
    assert_ne!(second, first);
    assert!(!w.store.verify_webhook_secret(rid, &first).await.unwrap());
    assert!(w.store.verify_webhook_secret(rid, &second).await.unwrap());
    // Shown once: the page does not repeat it.
    assert!(!b
        .get(&format!("/runners/{id}"))
        .await
        .body
        .contains(&second));

    // The API does the same; another user gets a 404.
    let r = b
        .json(
            Method::POST,
            &format!("/api/v1/runners/{id}/webhook-secret"),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let third = r.json()["webhook_secret"].as_str().unwrap().to_string();
    assert!(w.store.verify_webhook_secret(rid, &third).await.unwrap());
    let mut bob = Browser::new(&w);
    bob.login(&w, "bob").await;
    let csrf = bob.csrf.clone();
    let r = bob
        .post_form(
            &format!("/runners/{id}/webhook-secret"),
            &[("_csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(w.store.verify_webhook_secret(rid, &third).await.unwrap());
}
