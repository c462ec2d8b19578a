//! `PATCH /jobs/:id/trace`: Content-Type, Content-Range, offsets, headers.

use reqwest::StatusCode;

use crate::common::{header, spec, Sim};

async fn running_job(sim: &Sim) -> (u64, String) {
    let project = sim.project("group/project").await;
    let runner = sim.runner(&[], &[]).await;
    let job = sim.job(spec(project)).await;
    runner.pick().await;
    job
}

#[tokio::test]
async fn trace_needs_text_plain_and_content_range() {
    let sim = Sim::start().await;
    let (id, token) = running_job(&sim).await;
    let url = sim.api(&format!("jobs/{id}/trace"));

    let no_content_type = sim
        .http
        .patch(&url)
        .header("JOB-TOKEN", &token)
        .header("Content-Range", "0-4")
        .body("hello")
        .send()
        .await
        .expect("send");
    assert_eq!(no_content_type.status(), StatusCode::BAD_REQUEST);

    let octets = sim
        .http
        .patch(&url)
        .header("JOB-TOKEN", &token)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", "0-4")
        .body("hello")
        .send()
        .await
        .expect("send");
    assert_eq!(octets.status(), StatusCode::BAD_REQUEST);

    let no_range = sim
        .http
        .patch(&url)
        .header("JOB-TOKEN", &token)
        .header("Content-Type", "text/plain")
        .body("hello")
        .send()
        .await
        .expect("send");
    assert_eq!(no_range.status(), StatusCode::BAD_REQUEST);

    let http_style = sim
        .http
        .patch(&url)
        .header("JOB-TOKEN", &token)
        .header("Content-Type", "text/plain")
        .header("Content-Range", "bytes 0-4/5")
        .body("hello")
        .send()
        .await
        .expect("send");
    assert_eq!(http_style.status(), StatusCode::BAD_REQUEST);

    let wrong_token = sim
        .http
        .patch(&url)
        .header("JOB-TOKEN", "glcbt-nopenopenopenopenope")
        .header("Content-Type", "text/plain")
        .header("Content-Range", "0-4")
        .body("hello")
        .send()
        .await
        .expect("send");
    assert_eq!(wrong_token.status(), StatusCode::FORBIDDEN);

    assert!(
        sim.admin.trace(id).await.expect("trace").is_empty(),
        "nothing stored"
    );
}

#[tokio::test]
async fn trace_appends_at_the_stored_size_and_reports_ranges() {
    let sim = Sim::start().await;
    let (id, token) = running_job(&sim).await;

    let first = sim.patch_trace(id, &token, 0, b"Running with gsr\n").await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&first, "range"), "0-17");
    assert_eq!(header(&first, "job-status"), "running");
    assert_eq!(header(&first, "x-gitlab-trace-update-interval"), "3");

    // A gap: GitLab stores nothing and says where it expects the next byte.
    let gap = sim.patch_trace(id, &token, 30, b"lost?\n").await;
    assert_eq!(gap.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&gap, "range"), "0-17");

    // An overlap (resending acknowledged bytes) is refused the same way.
    let overlap = sim.patch_trace(id, &token, 5, b"again\n").await;
    assert_eq!(overlap.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&overlap, "range"), "0-17");

    let second = sim.patch_trace(id, &token, 17, b"$ echo hi\nhi\n").await;
    assert_eq!(second.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&second, "range"), "0-30");

    // Bytes are stored exactly, including invalid UTF-8.
    let third = sim.patch_trace(id, &token, 30, &[0xff, 0xfe, b'\n']).await;
    assert_eq!(third.status(), StatusCode::ACCEPTED);
    let mut expected = b"Running with gsr\n$ echo hi\nhi\n".to_vec();
    expected.extend_from_slice(&[0xff, 0xfe, b'\n']);
    assert_eq!(sim.admin.trace(id).await.expect("trace"), expected);
    let view = sim.admin.job(id).await.expect("job");
    assert_eq!(view.trace_size, 33);
    assert_eq!(
        view.trace_checksum,
        format!("crc32:{:08x}", crc32fast::hash(&expected))
    );
}

#[tokio::test]
async fn trace_update_interval_follows_the_config() {
    let sim = Sim::start_with(|c| c.trace_update_interval = 7).await;
    let (id, token) = running_job(&sim).await;
    let resp = sim.patch_trace(id, &token, 0, b"x").await;
    assert_eq!(header(&resp, "x-gitlab-trace-update-interval"), "7");
}
