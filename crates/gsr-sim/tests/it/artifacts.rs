//! Artifact upload (Workhorse + Rails rules) and dependency download.

use gsr_sim::{JobSpecInput, JobStatus};
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::json;

use crate::common::{header, spec, Sim, ALL_FEATURES};

fn file_part(name: &str, bytes: &[u8]) -> Part {
    Part::bytes(bytes.to_vec()).file_name(name.to_string())
}

async fn upload(sim: &Sim, id: u64, token: &str, query: &str, form: Form) -> reqwest::Response {
    sim.http
        .post(sim.api(&format!("jobs/{id}/artifacts{query}")))
        .header("JOB-TOKEN", token)
        .multipart(form)
        .send()
        .await
        .expect("upload")
}

const ARCHIVE_QUERY: &str = "?artifact_format=zip&artifact_type=archive&expire_in=7+days";

#[tokio::test]
async fn upload_allows_exactly_one_file_named_file() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;
    let runner = sim.runner(&[], ALL_FEATURES).await;
    let (id, token) = sim.job(spec(project)).await;
    runner.pick().await;
    // Acknowledge (the runner declared two-phase commit).
    sim.put_job(id, &token, json!({"state": "running"})).await;

    let two = Form::new()
        .part("file", file_part("artifacts.zip", b"PK one"))
        .part("file", file_part("second.zip", b"PK two"));
    assert_eq!(
        upload(&sim, id, &token, ARCHIVE_QUERY, two).await.status(),
        StatusCode::BAD_REQUEST
    );

    let other_field = Form::new().part("archive", file_part("artifacts.zip", b"PK"));
    assert_eq!(
        upload(&sim, id, &token, ARCHIVE_QUERY, other_field)
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );

    let no_file = Form::new().text("artifact_type", "archive");
    assert_eq!(
        upload(&sim, id, &token, ARCHIVE_QUERY, no_file)
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );

    let wrong_format = Form::new().part("file", file_part("junit.xml.gz", b"gz"));
    let resp = upload(
        &sim,
        id,
        &token,
        "?artifact_format=zip&artifact_type=junit",
        wrong_format,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let unknown_type = Form::new().part("file", file_part("x", b"x"));
    let resp = upload(
        &sim,
        id,
        &token,
        "?artifact_format=raw&artifact_type=nonsense",
        unknown_type,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let bad_token = Form::new().part("file", file_part("artifacts.zip", b"PK"));
    assert_eq!(
        upload(
            &sim,
            id,
            "glcbt-wrongwrongwrongwron",
            ARCHIVE_QUERY,
            bad_token
        )
        .await
        .status(),
        StatusCode::FORBIDDEN
    );

    assert!(sim.admin.job(id).await.expect("job").artifacts.is_empty());

    let junit = Form::new().part("file", file_part("junit.xml.gz", b"\x1f\x8b junit"));
    let resp = upload(
        &sim,
        id,
        &token,
        "?artifact_format=gzip&artifact_type=junit&expire_in=never",
        junit,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.text().await.expect("body"), "201");
    let view = sim.admin.job(id).await.expect("job");
    assert_eq!(view.artifacts.len(), 1);
    assert_eq!(view.artifacts[0].artifact_type, "junit");
    assert_eq!(view.artifacts[0].artifact_format, "gzip");
    assert_eq!(view.artifacts[0].expire_in.as_deref(), Some("never"));
}

#[tokio::test]
async fn oversized_uploads_get_413() {
    let sim = Sim::start_with(|c| c.max_artifact_size = 64 * 1024).await;
    let project = sim.project("group/project").await;
    let runner = sim.runner(&[], &[]).await;
    let (id, token) = sim.job(spec(project)).await;
    runner.pick().await;

    let big = vec![7u8; 200 * 1024];
    let form = Form::new().part("file", file_part("artifacts.zip", &big));
    let resp = upload(&sim, id, &token, ARCHIVE_QUERY, form).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(sim
        .admin
        .artifact(id, "archive")
        .await
        .expect("artifact")
        .is_none());

    let exact = vec![7u8; 64 * 1024];
    let form = Form::new().part("file", file_part("artifacts.zip", &exact));
    assert_eq!(
        upload(&sim, id, &token, ARCHIVE_QUERY, form).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn archive_round_trip_through_a_dependent_job() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;
    let runner = sim.runner(&[], &[]).await;
    let (build, build_token) = sim.job(spec(project)).await;
    runner.pick().await;

    let archive: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let form = Form::new().part("file", file_part("artifacts.zip", &archive));
    assert_eq!(
        upload(&sim, build, &build_token, ARCHIVE_QUERY, form)
            .await
            .status(),
        StatusCode::CREATED
    );

    // A retried identical upload is fine; different content of the same type is not.
    let again = Form::new().part("file", file_part("artifacts.zip", &archive));
    assert_eq!(
        upload(&sim, build, &build_token, ARCHIVE_QUERY, again)
            .await
            .status(),
        StatusCode::CREATED
    );
    let other = Form::new().part("file", file_part("artifacts.zip", b"different"));
    assert_eq!(
        upload(&sim, build, &build_token, ARCHIVE_QUERY, other)
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );

    assert_eq!(
        sim.admin.artifact(build, "archive").await.expect("stored"),
        Some(archive.clone())
    );
    sim.put_job(build, &build_token, json!({"state": "success"}))
        .await;

    let (test, test_token) = sim
        .job(JobSpecInput {
            dependencies: vec![build],
            ..spec(project)
        })
        .await;
    let payload = runner.pick().await;
    assert_eq!(payload["id"], json!(test));
    assert_eq!(
        payload["dependencies"][0]["artifacts_file"],
        json!({"filename": "artifacts.zip", "size": archive.len()})
    );
    let dep_token = payload["dependencies"][0]["token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(dep_token, test_token);

    let url = sim.api(&format!("jobs/{build}/artifacts"));
    let resp = sim
        .http
        .get(&url)
        .header("JOB-TOKEN", &dep_token)
        .send()
        .await
        .expect("download");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-type"), "application/octet-stream");
    assert_eq!(resp.bytes().await.expect("bytes").to_vec(), archive);

    let anonymous = sim.http.get(&url).send().await.expect("download");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // The token of a job in another project may not read it.
    let other_project = sim.project("other/project").await;
    let (_, foreign_token) = sim.job(spec(other_project)).await;
    runner.pick().await;
    let foreign = sim
        .http
        .get(&url)
        .header("JOB-TOKEN", &foreign_token)
        .send()
        .await
        .expect("send");
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);

    // A job without an archive: 404.
    let none = sim
        .http
        .get(sim.api(&format!("jobs/{test}/artifacts")))
        .header("JOB-TOKEN", &dep_token)
        .send()
        .await
        .expect("send");
    assert_eq!(none.status(), StatusCode::NOT_FOUND);

    // Once the consuming job finished, its token no longer works.
    sim.put_job(test, &test_token, json!({"state": "success"}))
        .await;
    assert_eq!(
        sim.admin.job(test).await.expect("job").status,
        JobStatus::Success
    );
    let late = sim
        .http
        .get(&url)
        .header("JOB-TOKEN", &dep_token)
        .send()
        .await
        .expect("send");
    assert_eq!(late.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn uploads_need_a_running_job() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;
    let (id, token) = sim.job(spec(project)).await;
    let form = Form::new().part("file", file_part("artifacts.zip", b"PK"));
    let resp = upload(&sim, id, &token, ARCHIVE_QUERY, form).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(header(&resp, "job-status"), "pending");
}
