//! Runner lifecycle: legacy registration, verify, managers, token reset, unregister.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{info, Sim};

#[tokio::test]
async fn legacy_registration_checks_the_registration_token() {
    let sim = Sim::start().await;
    let url = sim.api("runners");

    let missing = sim
        .http
        .post(&url)
        .json(&json!({}))
        .send()
        .await
        .expect("send");
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);

    let wrong = sim
        .http
        .post(&url)
        .json(&json!({"token": "GR1348941wrong"}))
        .send()
        .await
        .expect("send");
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);

    let untagged_only = sim
        .http
        .post(&url)
        .json(&json!({"token": "GR1348941sim-registration", "run_untagged": false}))
        .send()
        .await
        .expect("send");
    assert_eq!(untagged_only.status(), StatusCode::BAD_REQUEST);

    let ok = sim
        .http
        .post(&url)
        .json(&json!({
            "token": "GR1348941sim-registration",
            "description": "legacy",
            "tag_list": "docker, linux",
            "run_untagged": false,
            "info": {"name": "gitlab-runner"},
        }))
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), StatusCode::CREATED);
    let body: Value = ok.json().await.expect("json");
    assert!(body["token"]
        .as_str()
        .is_some_and(|t| t.starts_with("glrtr-")));
    assert!(body["token_expires_at"].is_null());
    assert!(body
        .as_object()
        .is_some_and(|o| o.contains_key("token_expires_at")));

    let id = body["id"].as_u64().expect("id");
    let view = sim.admin.runner(id).await.expect("runner view");
    assert_eq!(view.tags, vec!["docker", "linux"]);
    assert!(!view.run_untagged);
    assert_eq!(view.created_via, "registration_token");
}

#[tokio::test]
async fn verify_records_managers_and_validates_system_id() {
    let sim = Sim::start().await;
    let (id, token) = sim.admin.create_runner(&[], true).await.expect("runner");
    let url = sim.api("runners/verify");

    let bad_sid = sim
        .http
        .post(&url)
        .json(&json!({"token": token, "system_id": "s_short"}))
        .send()
        .await
        .expect("send");
    assert_eq!(bad_sid.status(), StatusCode::BAD_REQUEST);

    let unknown = sim
        .http
        .post(&url)
        .json(&json!({"token": "glrt-unknown", "system_id": "s_0123456789ab"}))
        .send()
        .await
        .expect("send");
    assert_eq!(unknown.status(), StatusCode::FORBIDDEN);

    let ok = sim
        .http
        .post(&url)
        .json(&json!({
            "token": token,
            "system_id": "s_0123456789ab",
            "info": info(&["cancel_gracefully", "two_phase_job_commit"]),
        }))
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), StatusCode::OK);
    let body: Value = ok.json().await.expect("json");
    assert_eq!(body["id"], json!(id));
    assert_eq!(body["token"], json!(token));

    let view = sim.admin.runner(id).await.expect("view");
    assert_eq!(view.managers.len(), 1);
    let manager = &view.managers[0];
    assert_eq!(manager.system_id, "s_0123456789ab");
    assert_eq!(manager.features["cancel_gracefully"], json!(true));
    assert_eq!(manager.features["refspecs"], json!(false));

    // A second machine with the same token is a second manager; no system_id is <legacy>.
    for body in [
        json!({"token": token, "system_id": "r_ABCDEFabcdef"}),
        json!({"token": token}),
    ] {
        let resp = sim.http.post(&url).json(&body).send().await.expect("send");
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let view = sim.admin.runner(id).await.expect("view");
    let ids: Vec<&str> = view.managers.iter().map(|m| m.system_id.as_str()).collect();
    assert_eq!(ids, vec!["<legacy>", "r_ABCDEFabcdef", "s_0123456789ab"]);
}

#[tokio::test]
async fn managers_can_be_removed_one_by_one_and_runners_deleted() {
    let sim = Sim::start().await;
    let (id, token) = sim.admin.create_runner(&[], true).await.expect("runner");
    let verify = sim
        .http
        .post(sim.api("runners/verify"))
        .json(&json!({"token": token, "system_id": "s_0123456789ab"}))
        .send()
        .await
        .expect("verify");
    assert_eq!(verify.status(), StatusCode::OK);

    let managers = sim.api("runners/managers");
    let no_sid = sim
        .http
        .delete(&managers)
        .json(&json!({"token": token}))
        .send()
        .await
        .expect("send");
    assert_eq!(no_sid.status(), StatusCode::BAD_REQUEST);
    let del = |sid: &'static str| {
        sim.http
            .delete(&managers)
            .json(&json!({"token": token, "system_id": sid}))
            .send()
    };
    assert_eq!(
        del("s_0123456789ab").await.expect("send").status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        del("s_0123456789ab").await.expect("send").status(),
        StatusCode::NOT_FOUND
    );
    assert!(sim
        .admin
        .runner(id)
        .await
        .expect("view")
        .managers
        .is_empty());

    let runners = sim.api("runners");
    let bad = sim
        .http
        .delete(&runners)
        .json(&json!({"token": "glrt-nope"}))
        .send()
        .await
        .expect("send");
    assert_eq!(bad.status(), StatusCode::FORBIDDEN);
    let gone = sim
        .http
        .delete(&runners)
        .json(&json!({"token": token}))
        .send()
        .await
        .expect("send");
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    assert!(sim.admin.runner(id).await.is_err());
}

#[tokio::test]
async fn reset_authentication_token_rotates_the_token() {
    let sim = Sim::start().await;
    let (_, token) = sim.admin.create_runner(&[], true).await.expect("runner");
    let resp = sim
        .http
        .post(sim.api("runners/reset_authentication_token"))
        .json(&json!({"token": token}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.expect("json");
    let new_token = body["token"].as_str().expect("token").to_string();
    assert!(new_token.starts_with("glrt-"));
    assert_ne!(new_token, token);

    for (t, expected) in [(token, StatusCode::FORBIDDEN), (new_token, StatusCode::OK)] {
        let resp = sim
            .http
            .post(sim.api("runners/verify"))
            .json(&json!({"token": t}))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), expected);
    }
}
