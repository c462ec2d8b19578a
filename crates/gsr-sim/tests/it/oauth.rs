//! Users, GitLab's OAuth provider (authorization code + PKCE) and the user-token runner
//! management API.

use reqwest::{redirect, StatusCode};
use serde_json::{json, Value};

use crate::common::{spec, Sim};

const REDIRECT: &str = "http://127.0.0.1:9/auth/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWXnDMkk-extra-chars";

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .expect("client")
}

fn query_param(location: &str, key: &str) -> Option<String> {
    let query = location.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

async fn token_request(sim: &Sim, form: &[(&str, &str)]) -> reqwest::Response {
    sim.http
        .post(format!("{}/oauth/token", sim.url))
        .form(form)
        .send()
        .await
        .expect("token request")
}

async fn exchange(sim: &Sim, client_id: &str, code: &str, verifier: &str) -> reqwest::Response {
    token_request(
        sim,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", client_id),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ],
    )
    .await
}

fn authorize_url(sim: &Sim, client_id: &str, redirect_uri: &str, scope: &str) -> String {
    let challenge = gsr_sim::pkce_challenge(VERIFIER);
    format!(
        "{}/oauth/authorize?client_id={client_id}&redirect_uri={redirect_uri}\
         &response_type=code&state=xyz&scope={scope}&code_challenge={challenge}\
         &code_challenge_method=S256",
        sim.url
    )
}

#[tokio::test]
async fn pkce_flow_through_the_sign_in_form() {
    let sim = Sim::start().await;
    let user = sim
        .admin
        .create_user("alice", Some("s3cret-pass"))
        .await
        .expect("user");
    let (client_id, _) = sim
        .admin
        .create_oauth_app("gsr", REDIRECT, &["api", "read_user"], false)
        .await
        .expect("app");
    let http = no_redirects();
    let url = authorize_url(&sim, &client_id, REDIRECT, "api");
    let page = http.get(&url).send().await.expect("authorize page");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    assert!(html.contains("name=\"password\""), "{html}");
    assert!(html.contains("Sign in as alice"), "{html}");

    let mut form: Vec<(String, String)> = url
        .split_once('?')
        .expect("query")
        .1
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    form.push(("username".into(), "alice".into()));
    form.push(("password".into(), "wrong".into()));
    let bad = http
        .post(format!("{}/oauth/authorize", sim.url))
        .form(&form)
        .send()
        .await
        .expect("post");
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    form.pop();
    form.push(("password".into(), "s3cret-pass".into()));
    let resp = http
        .post(format!("{}/oauth/authorize", sim.url))
        .form(&form)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::FOUND);
    let location = crate::common::header(&resp, "location");
    assert!(location.starts_with(REDIRECT), "{location}");
    assert_eq!(query_param(&location, "state").as_deref(), Some("xyz"));
    let code = query_param(&location, "code").expect("code");

    let wrong = exchange(&sim, &client_id, &code, &"x".repeat(43)).await;
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    let body: Value = wrong.json().await.expect("json");
    assert_eq!(body["error"], "invalid_grant");

    let ok = exchange(&sim, &client_id, &code, VERIFIER).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let tokens: Value = ok.json().await.expect("json");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 7200);
    assert_eq!(tokens["scope"], "api");
    let access = tokens["access_token"].as_str().expect("access").to_string();
    let refresh = tokens["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();

    let again = exchange(&sim, &client_id, &code, VERIFIER).await;
    assert_eq!(
        again.status(),
        StatusCode::BAD_REQUEST,
        "code is single-use"
    );

    let me: Value = sim
        .http
        .get(sim.api("user"))
        .bearer_auth(&access)
        .send()
        .await
        .expect("user")
        .json()
        .await
        .expect("json");
    assert_eq!(me["id"], user.id);
    assert_eq!(me["username"], "alice");
    assert_eq!(me["state"], "active");
    let anon = sim.http.get(sim.api("user")).send().await.expect("user");
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    let pat = sim
        .http
        .get(sim.api("user"))
        .header("PRIVATE-TOKEN", &user.personal_access_token)
        .send()
        .await
        .expect("user");
    assert_eq!(pat.status(), StatusCode::OK);

    // Refresh rotates: the old access and refresh tokens stop working.
    let refreshed = token_request(
        &sim,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &client_id),
            ("refresh_token", &refresh),
            ("redirect_uri", REDIRECT),
        ],
    )
    .await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    let new: Value = refreshed.json().await.expect("json");
    assert_ne!(new["access_token"], tokens["access_token"]);
    let old = sim
        .http
        .get(sim.api("user"))
        .bearer_auth(&access)
        .send()
        .await
        .expect("user");
    assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
    let new_access = new["access_token"].as_str().expect("access");
    let fresh = sim
        .http
        .get(sim.api("user"))
        .bearer_auth(new_access)
        .send()
        .await
        .expect("user");
    assert_eq!(fresh.status(), StatusCode::OK);
    let reuse = token_request(
        &sim,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &client_id),
            ("refresh_token", &refresh),
        ],
    )
    .await;
    assert_eq!(reuse.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn authorize_is_strict() {
    let sim = Sim::start().await;
    let (client_id, secret) = sim
        .admin
        .create_oauth_app("gsr", REDIRECT, &["api"], true)
        .await
        .expect("app");
    let http = no_redirects();
    let mismatch = http
        .get(authorize_url(
            &sim,
            &client_id,
            "http://127.0.0.1:9/other",
            "api",
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(mismatch.status(), StatusCode::BAD_REQUEST);
    assert!(mismatch.headers().get("location").is_none());
    let unknown = http
        .get(authorize_url(&sim, "nope", REDIRECT, "api"))
        .send()
        .await
        .expect("get");
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    let scope = http
        .get(authorize_url(&sim, &client_id, REDIRECT, "sudo"))
        .send()
        .await
        .expect("get");
    assert_eq!(scope.status(), StatusCode::FOUND);
    let location = crate::common::header(&scope, "location");
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("invalid_scope")
    );

    // Confidential app: the secret is required; the admin shortcut issues a code.
    let user = sim.admin.create_user("bob", None).await.expect("user");
    let challenge = gsr_sim::pkce_challenge(VERIFIER);
    let code = sim
        .admin
        .oauth_grant(&client_id, user.id, REDIRECT, Some(&challenge), None)
        .await
        .expect("grant");
    let no_secret = exchange(&sim, &client_id, &code, VERIFIER).await;
    assert_eq!(no_secret.status(), StatusCode::UNAUTHORIZED);
    let body: Value = no_secret.json().await.expect("json");
    assert_eq!(body["error"], "invalid_client");
    let ok = token_request(
        &sim,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", &client_id),
            ("client_secret", &secret),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(ok.status(), StatusCode::OK);
}

struct World {
    sim: Sim,
    project: u64,
    maintainer: String,
    developer: String,
    other: String,
}

async fn world() -> World {
    let sim = Sim::start().await;
    let project = sim.project("group/app").await;
    let other_project = sim.project("group/other").await;
    let m = sim.admin.create_user("maint", None).await.expect("user");
    let d = sim.admin.create_user("dev", None).await.expect("user");
    let o = sim.admin.create_user("other", None).await.expect("user");
    sim.admin.add_member(project, m.id, 40).await.expect("m");
    sim.admin.add_member(project, d.id, 30).await.expect("d");
    sim.admin
        .add_member(other_project, o.id, 50)
        .await
        .expect("o");
    World {
        sim,
        project,
        maintainer: m.personal_access_token,
        developer: d.personal_access_token,
        other: o.personal_access_token,
    }
}

async fn create_runner(w: &World, token: &str, body: Value) -> reqwest::Response {
    w.sim
        .http
        .post(w.sim.api("user/runners"))
        .header("PRIVATE-TOKEN", token)
        .json(&body)
        .send()
        .await
        .expect("create runner")
}

async fn jobs_request(sim: &Sim, token: &str) -> reqwest::Response {
    sim.http
        .post(sim.api("jobs/request"))
        .json(&json!({ "token": token, "system_id": "s_0123456789ab", "info": {"features": {}} }))
        .send()
        .await
        .expect("jobs/request")
}

#[tokio::test]
async fn user_runners_create_update_delete() {
    let w = world().await;
    let body = json!({
        "runner_type": "project_type",
        "project_id": w.project,
        "description": "mine",
        "tag_list": "linux",
        "run_untagged": false,
    });
    let dev = create_runner(&w, &w.developer, body.clone()).await;
    assert_eq!(dev.status(), StatusCode::FORBIDDEN);
    let missing = create_runner(&w, &w.maintainer, json!({ "project_id": w.project })).await;
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    let created = create_runner(&w, &w.maintainer, body).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.expect("json");
    let id = created["id"].as_u64().expect("id");
    let token = created["token"].as_str().expect("token").to_string();
    assert!(token.starts_with("glrt-"));
    assert_eq!(created["token_expires_at"], Value::Null);

    let url = w.sim.api(&format!("runners/{id}"));
    let shown: Value = w
        .sim
        .http
        .get(&url)
        .bearer_auth(&w.maintainer)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(shown["tag_list"], json!(["linux"]));
    assert_eq!(shown["description"], "mine");
    assert_eq!(shown["runner_type"], "project_type");
    assert_eq!(shown["projects"][0]["id"], w.project);

    let listed: Value = w
        .sim
        .http
        .get(w.sim.api("runners"))
        .header("PRIVATE-TOKEN", &w.maintainer)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let others: Value = w
        .sim
        .http
        .get(w.sim.api("runners"))
        .header("PRIVATE-TOKEN", &w.other)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(others, json!([]));
    // Another user's runner: GitLab answers 403 "No access granted"; unknown ids 404.
    let foreign = w
        .sim
        .http
        .get(&url)
        .header("PRIVATE-TOKEN", &w.other)
        .send()
        .await
        .expect("get");
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    let unknown = w
        .sim
        .http
        .get(w.sim.api("runners/999999"))
        .header("PRIVATE-TOKEN", &w.other)
        .send()
        .await
        .expect("get");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    // A job tagged `gpu` is not for it until PUT changes the tags.
    let (job_id, _) = w
        .sim
        .job(gsr_sim::JobSpecInput {
            tags: vec!["gpu".into()],
            ..spec(w.project)
        })
        .await;
    assert_eq!(
        jobs_request(&w.sim, &token).await.status(),
        StatusCode::NO_CONTENT
    );
    let empty = w
        .sim
        .http
        .put(&url)
        .header("PRIVATE-TOKEN", &w.maintainer)
        .json(&json!({}))
        .send()
        .await
        .expect("put");
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);
    let updated = w
        .sim
        .http
        .put(&url)
        .header("PRIVATE-TOKEN", &w.maintainer)
        .json(&json!({ "tag_list": ["linux", "gpu"], "description": "gpu box" }))
        .send()
        .await
        .expect("put");
    assert_eq!(updated.status(), StatusCode::OK);
    let updated: Value = updated.json().await.expect("json");
    assert_eq!(updated["tag_list"], json!(["linux", "gpu"]));
    let picked = jobs_request(&w.sim, &token).await;
    assert_eq!(picked.status(), StatusCode::CREATED);
    let payload: Value = picked.json().await.expect("payload");
    assert_eq!(payload["id"], job_id);

    let foreign_delete = w
        .sim
        .http
        .delete(&url)
        .header("PRIVATE-TOKEN", &w.other)
        .send()
        .await
        .expect("delete");
    assert_eq!(foreign_delete.status(), StatusCode::FORBIDDEN);
    let deleted = w
        .sim
        .http
        .delete(&url)
        .header("PRIVATE-TOKEN", &w.maintainer)
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        jobs_request(&w.sim, &token).await.status(),
        StatusCode::FORBIDDEN
    );
    let gone = w
        .sim
        .http
        .get(&url)
        .header("PRIVATE-TOKEN", &w.maintainer)
        .send()
        .await
        .expect("get");
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn scopes_are_checked() {
    let w = world().await;
    let me: Value = w
        .sim
        .http
        .get(w.sim.api("user"))
        .header("PRIVATE-TOKEN", &w.maintainer)
        .send()
        .await
        .expect("user")
        .json()
        .await
        .expect("json");
    let uid = me["id"].as_u64().expect("id");
    let read_only = w
        .sim
        .admin
        .create_pat(uid, &["read_user"])
        .await
        .expect("pat");
    let body = json!({ "runner_type": "project_type", "project_id": w.project });
    let denied = create_runner(&w, &read_only, body.clone()).await;
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let denied: Value = denied.json().await.expect("json");
    assert_eq!(denied["error"], "insufficient_scope");
    let creator = w
        .sim
        .admin
        .create_pat(uid, &["create_runner"])
        .await
        .expect("pat");
    let created = create_runner(&w, &creator, body).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = created.json::<Value>().await.expect("json")["id"].clone();
    let manage = w
        .sim
        .admin
        .create_pat(uid, &["manage_runner"])
        .await
        .expect("pat");
    let paused = w
        .sim
        .http
        .put(w.sim.api(&format!("runners/{id}")))
        .header("PRIVATE-TOKEN", &manage)
        .json(&json!({ "paused": true }))
        .send()
        .await
        .expect("put");
    assert_eq!(paused.status(), StatusCode::OK);
    assert_eq!(paused.json::<Value>().await.expect("json")["paused"], true);
}
