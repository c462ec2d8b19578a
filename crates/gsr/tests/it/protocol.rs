//! Wire behaviour: retries, resync, 202s, long polling, features, bad payloads, outages,
//! token lifecycle, `gsr exec`.

use std::process::{Command, Stdio};

use gsr_sim::{Fault, FaultKind, FaultRoute};

use crate::harness::{expect_status, gsr_bin, output, Env, OutputAsync};

fn fault(route: FaultRoute, kind: FaultKind, status: Option<u16>, times: u32) -> Fault {
    Fault {
        route,
        kind,
        status,
        retry_after: None,
        delay_ms: None,
        times,
    }
}

#[tokio::test]
async fn trace_resyncs_after_an_injected_416() {
    let env = Env::new().await;
    let id = env
        .enqueue(env.job(&[
            "for i in $(seq 1 50); do echo line-$i; done",
            "sleep 2",
            "echo tail-line",
        ]))
        .await;
    env.admin
        .fault(fault(FaultRoute::PatchTrace, FaultKind::Trace416, None, 2))
        .await
        .unwrap();
    let out = env.run_single(1).await;
    let view = expect_status(&env, id, "success", &out).await;
    let trace = env.trace(id).await;
    for i in 1..=50 {
        assert!(
            trace.contains(&format!("line-{i}\n")),
            "line-{i} lost: {trace}"
        );
    }
    assert_eq!(trace.matches("line-17\n").count(), 1, "no duplicated bytes");
    assert!(trace.contains("tail-line"));
    assert_eq!(
        view.reported_checksum.as_deref(),
        Some(view.trace_checksum.as_str())
    );
    let log = env.admin.requests().await.unwrap();
    assert!(
        log.iter()
            .any(|r| r.path.contains("/trace") && r.status == 416),
        "the fault was exercised"
    );
}

#[tokio::test]
async fn final_update_survives_202s_and_server_errors() {
    let env = Env::new().await;
    let id = env.enqueue(env.job(&["echo done"])).await;
    env.admin
        .fault(fault(FaultRoute::UpdateJob, FaultKind::Final202, None, 2))
        .await
        .unwrap();
    let out = env.run_single(1).await;
    let view = expect_status(&env, id, "success", &out).await;
    assert!(view.final_update_attempts >= 3, "{view:?}");

    // 5xx on every update for a while: retried with back-off, state kept until accepted.
    let id = env.enqueue(env.job(&["echo second"])).await;
    env.admin
        .fault(fault(
            FaultRoute::UpdateJob,
            FaultKind::Status,
            Some(502),
            7,
        ))
        .await
        .unwrap();
    let out = env.run_single(1).await;
    expect_status(&env, id, "success", &out).await;
    assert!(env.trace(id).await.contains("second"));
}

#[tokio::test]
async fn job_request_retries_on_unavailable_and_rate_limit() {
    let env = Env::new().await;
    let id = env.enqueue(env.job(&["echo ok"])).await;
    env.admin
        .fault(Fault {
            retry_after: Some(1),
            ..fault(FaultRoute::JobsRequest, FaultKind::Status, Some(429), 1)
        })
        .await
        .unwrap();
    env.admin
        .fault(fault(
            FaultRoute::JobsRequest,
            FaultKind::Status,
            Some(503),
            2,
        ))
        .await
        .unwrap();
    env.admin
        .fault(fault(
            FaultRoute::PatchTrace,
            FaultKind::Status,
            Some(500),
            3,
        ))
        .await
        .unwrap();
    let out = env.run_single(1).await;
    expect_status(&env, id, "success", &out).await;
    assert!(env.trace(id).await.contains("Job succeeded"));
}

#[tokio::test]
async fn declares_truthful_features_and_echoes_last_update() {
    let env = Env::new().await;
    // No job at first: the runner long-polls with last_update, then takes the job.
    let mut cmd = env.run_single_cmd(1);
    let child = tokio::task::spawn_blocking(move || cmd.output().expect("gsr runs"));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let id = env.enqueue(env.job(&["echo late job"])).await;
    let out = child.await.unwrap();
    expect_status(&env, id, "success", &out).await;

    let log = env.admin.requests().await.unwrap();
    let polls: Vec<_> = log
        .iter()
        .filter(|r| r.path.ends_with("/jobs/request"))
        .collect();
    assert!(polls.len() >= 2, "{polls:?}");
    let first = polls[0].body.as_ref().expect("request body logged");
    assert!(
        first.get("last_update").is_none(),
        "first poll has no last_update"
    );
    assert!(
        polls[1..]
            .iter()
            .any(|p| p.body.as_ref().and_then(|b| b.get("last_update")).is_some()),
        "later polls echo X-GitLab-Last-Update"
    );
    let info = &first["info"];
    let sid = first["system_id"].as_str().unwrap();
    assert!(sid.starts_with("s_") || sid.starts_with("r_"), "{sid}");
    assert_eq!(info["executor"], "shell");
    let f = &info["features"];
    for on in [
        "variables",
        "artifacts",
        "refspecs",
        "masking",
        "raw_variables",
        "two_phase_job_commit",
        "cancel_gracefully",
        "trace_checksum",
        "trace_size",
        "return_exit_code",
        "upload_multiple_artifacts",
        "artifacts_exclude",
    ] {
        assert_eq!(f[on], true, "{on}");
    }
    for off in [
        "image",
        "services",
        "cache",
        "vault_secrets",
        "session",
        "terminal",
        "native_steps_integration",
    ] {
        assert_eq!(
            f[off], false,
            "{off} is not implemented and must not be declared"
        );
    }
    let ua = log
        .iter()
        .filter(|r| r.path.starts_with("/api/v4/"))
        .find_map(|r| r.user_agent.clone())
        .unwrap_or_default();
    assert!(ua.starts_with("gsr "), "{ua}");
    // Trace patches carry the right headers (the simulator rejects anything else).
    assert!(log
        .iter()
        .any(|r| r.path.ends_with("/trace") && r.status == 202));
}

#[tokio::test]
async fn unreachable_gitlab_is_retried_then_gives_up_cleanly() {
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(gsr_bin())
        .args([
            "run-single",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--wait-timeout",
            "2",
        ])
        .arg("--builds-dir")
        .arg(dir.path())
        .env("RUNNER_TOKEN", "glrt-unreachable-test-token")
        .stdin(Stdio::null())
        .output_async()
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "wait timeout ends run-single with 0: {stderr}"
    );
    assert!(
        stderr.contains("cannot reach GitLab") || stderr.contains("retrying"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !stderr.contains("unreachable-test-token"),
        "token leaked: {stderr}"
    );
}

#[tokio::test]
async fn invalid_runner_token_is_a_clear_error() {
    let env = Env::new().await;
    let out = Command::new(gsr_bin())
        .args(["run-single", "--url", &env.sim.url, "--max-builds", "1"])
        .arg("--builds-dir")
        .arg(env.builds_dir())
        .env("RUNNER_TOKEN", "glrt-not-a-real-token")
        .stdin(Stdio::null())
        .output_async()
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("403"), "{stderr}");
    assert!(!stderr.contains("glrt-not-a-real-token"), "{stderr}");
}

/// Claim a job by hand (as a control plane would) and return its raw payload.
async fn claim(env: &Env) -> serde_json::Value {
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/api/v4/jobs/request", env.sim.url))
        .json(&serde_json::json!({
            "token": env.runner_token,
            "system_id": "s_000000000000",
            "info": {"features": {"refspecs": true, "upload_multiple_artifacts": true,
                     "artifacts_exclude": true, "return_exit_code": true,
                     "multi_build_steps": true, "two_phase_job_commit": true,
                     "cancel_gracefully": true}}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    resp.json().await.unwrap()
}

async fn exec(env: &Env, payload: &[u8], url: Option<&str>) -> std::process::Output {
    let file = env
        .dir
        .path()
        .join(format!("payload-{}.json", rand_suffix()));
    std::fs::write(&file, payload).unwrap();
    let mut c = Command::new(gsr_bin());
    c.arg("exec")
        .arg("--job")
        .arg(&file)
        .arg("--builds-dir")
        .arg(env.builds_dir());
    if let Some(u) = url {
        c.args(["--url", u]);
    }
    c.env_remove("RUNNER_TOKEN").stdin(Stdio::null());
    output(c).await
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test]
async fn exec_runs_a_claimed_payload_with_the_job_token_only() {
    let env = Env::new().await;
    let ok = env.enqueue(env.job(&["echo from-exec"])).await;
    let payload = claim(&env).await;
    assert_eq!(payload["id"], ok);
    let out = exec(
        &env,
        &serde_json::to_vec(&payload).unwrap(),
        Some(&env.sim.url),
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    expect_status(&env, ok, "success", &out).await;
    assert!(env.trace(ok).await.contains("from-exec"));

    let bad = env.enqueue(env.job(&["exit 4"])).await;
    let payload = claim(&env).await;
    assert_eq!(payload["id"], bad);
    // No --url: it comes from the payload's CI_SERVER_URL.
    let out = exec(&env, &serde_json::to_vec(&payload).unwrap(), None).await;
    assert_eq!(out.status.code(), Some(1), "job failure exit status");
    let view = expect_status(&env, bad, "failed", &out).await;
    assert_eq!(view.exit_code, Some(4));
}

#[tokio::test]
async fn malformed_payload_fails_that_job_with_a_reason() {
    let env = Env::new().await;
    let id = env.enqueue(env.job(&["echo never"])).await;
    let mut payload = claim(&env).await;
    payload["steps"] = serde_json::json!("not-a-list");
    let out = exec(
        &env,
        &serde_json::to_vec(&payload).unwrap(),
        Some(&env.sim.url),
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view = expect_status(&env, id, "failed", &out).await;
    assert_eq!(
        view.failure_reason.as_deref(),
        Some("runner_system_failure")
    );
    let trace = env.trace(id).await;
    assert!(trace.contains("invalid job payload"), "{trace}");

    // Not even JSON: nothing to report to, but a clear message and no panic.
    let out = exec(&env, b"{{{ not json", Some(&env.sim.url)).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid job payload"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn register_verify_unregister() {
    let env = Env::new().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("runner.env");
    let out = Command::new(gsr_bin())
        .args([
            "register",
            "--url",
            &env.sim.url,
            "--registration-token",
            "GR1348941sim-registration",
            "--description",
            "t",
            "--tag-list",
            "a,b",
        ])
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .output_async()
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = std::fs::read_to_string(&cfg).unwrap();
    let token = saved
        .lines()
        .find_map(|l| l.strip_prefix("RUNNER_TOKEN="))
        .expect("token saved")
        .to_string();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&token),
        "token printed"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let verify = |t: &str| {
        let mut c = Command::new(gsr_bin());
        c.args(["verify", "--url", &env.sim.url, "--token", t])
            .stdin(Stdio::null());
        output(c)
    };
    assert!(verify(&token).await.status.success());
    assert!(!verify("glrt-bogus").await.status.success());

    // A glrt- token from the UI: "register" verifies it.
    let out = Command::new(gsr_bin())
        .args([
            "register",
            "--url",
            &env.sim.url,
            "--token",
            &env.runner_token,
        ])
        .arg("--config")
        .arg(dir.path().join("ui.env"))
        .stdin(Stdio::null())
        .output_async()
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(gsr_bin())
        .args(["unregister", "--url", &env.sim.url, "--token", &token])
        .stdin(Stdio::null())
        .output_async()
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !verify(&token).await.status.success(),
        "removed runner no longer verifies"
    );
    let bad = Command::new(gsr_bin())
        .args([
            "register",
            "--url",
            &env.sim.url,
            "--registration-token",
            "wrong",
        ])
        .arg("--config")
        .arg(dir.path().join("x.env"))
        .stdin(Stdio::null())
        .output_async()
        .await;
    assert!(!bad.status.success());
}
