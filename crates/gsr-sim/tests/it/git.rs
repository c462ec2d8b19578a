//! Git smart HTTP with real `git`: push as root, clone and fetch with a job token.

use std::path::Path;
use std::process::{Command, Output};

use gsr_sim::JobSpecInput;
use rand::RngCore;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{git, header, local_repo, Sim, ALL_FEATURES};

/// Runs git without panicking (for expected failures); never prompts.
fn try_git(dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "credential.helper="])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "")
        .output()
        .expect("run git")
}

fn authed(url: &str, user: &str, password: &str) -> String {
    url.replacen("http://", &format!("http://{user}:{password}@"), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_clone_with_the_job_token() {
    let sim = Sim::start().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let project = sim
        .admin
        .create_project("group/sub/project")
        .await
        .expect("project");
    assert_eq!(
        project.http_url,
        format!("{}/group/sub/project.git", sim.url)
    );
    let work = local_repo(
        tmp.path(),
        "main",
        &[("README.md", b"hello from the sim\n")],
    );
    sim.admin
        .push_repo(&project.path, &work, "main")
        .await
        .expect("push");
    let head = git(&work, &["rev-parse", "HEAD"]).trim().to_string();

    let runner = sim.runner(&[], ALL_FEATURES).await;
    let (id, token) = sim
        .job(JobSpecInput::new(project.id, ["cat README.md"]))
        .await;
    let payload: Value = runner.pick().await;
    assert_eq!(
        payload["git_info"]["sha"],
        json!(head),
        "sha resolved from the pushed ref"
    );
    let vars = payload["variables"].as_array().expect("vars");
    let commit_title = vars
        .iter()
        .find(|v| v["key"] == "CI_COMMIT_TITLE")
        .expect("title");
    assert_eq!(commit_title["value"], json!("Initial commit"));

    // Clone exactly as the payload says (token in the URL).
    let repo_url = payload["git_info"]["repo_url"].as_str().expect("url");
    let clone_dir = tmp.path().join("clone");
    let out = try_git(
        tmp.path(),
        &[
            "clone",
            "--quiet",
            repo_url,
            clone_dir.to_str().expect("utf8"),
        ],
    );
    assert!(
        out.status.success(),
        "clone failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(clone_dir.join("README.md")).expect("readme"),
        "hello from the sim\n"
    );

    // The runner's fetch: init + fetch the payload's refspecs, including the pipeline ref.
    let fetch_dir = tmp.path().join("fetch");
    std::fs::create_dir_all(&fetch_dir).expect("mkdir");
    git(&fetch_dir, &["init", "--quiet"]);
    let refspecs: Vec<&str> = payload["git_info"]["refspecs"]
        .as_array()
        .expect("refspecs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let pipeline_ref = format!(
        "+refs/pipelines/{0}:refs/pipelines/{0}",
        payload["job_info"]["pipeline_id"]
    );
    assert!(refspecs.contains(&pipeline_ref.as_str()), "{refspecs:?}");
    let mut args = vec![
        "-c",
        "protocol.version=2",
        "fetch",
        "--quiet",
        "--depth",
        "20",
        repo_url,
    ];
    args.extend(refspecs.iter().copied());
    let out = try_git(&fetch_dir, &args);
    assert!(
        out.status.success(),
        "fetch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        git(&fetch_dir, &["rev-parse", "refs/remotes/origin/main"]).trim(),
        head
    );

    // A job token cannot push.
    let push_url = authed(&project.http_url, "gitlab-ci-token", &token);
    let out = try_git(
        &work,
        &["push", "--quiet", &push_url, "main:refs/heads/other"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));

    // The request log shows git used the job token's user.
    let log = sim.admin.requests().await.expect("log");
    assert!(log.iter().any(|e| e.path.ends_with("/git-upload-pack")
        && e.basic_auth_user.as_deref() == Some("gitlab-ci-token")
        && e.status == 200));

    // After the job ends (acknowledged, then finished) the token stops working.
    let ack = sim.put_job(id, &token, json!({"state": "running"})).await;
    assert_eq!(ack.status(), StatusCode::OK);
    let done = sim.put_job(id, &token, json!({"state": "success"})).await;
    assert_eq!(done.status(), StatusCode::OK);
    let out = try_git(tmp.path(), &["ls-remote", repo_url]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Authentication failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_missing_credentials_fail_authentication() {
    let sim = Sim::start().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let project = sim
        .admin
        .create_project("group/project")
        .await
        .expect("project");
    let work = local_repo(tmp.path(), "main", &[("a.txt", b"a")]);
    sim.admin
        .push_repo(&project.path, &work, "main")
        .await
        .expect("push");

    let wrong = authed(
        &project.http_url,
        "gitlab-ci-token",
        "glcbt-notarealtokenatall",
    );
    let out = try_git(tmp.path(), &["ls-remote", &wrong]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Authentication failed"));

    let out = try_git(tmp.path(), &["ls-remote", &project.http_url]);
    assert!(!out.status.success(), "anonymous access must fail");

    let resp = sim
        .http
        .get(format!(
            "{}/info/refs?service=git-upload-pack",
            project.http_url
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&resp, "www-authenticate"), "Basic realm=\"GitLab\"");

    // Unknown project: 401 when anonymous, 404 for an authenticated admin.
    let missing = format!(
        "{}/group/missing.git/info/refs?service=git-upload-pack",
        sim.url
    );
    assert_eq!(
        sim.http.get(&missing).send().await.expect("send").status(),
        StatusCode::UNAUTHORIZED
    );
    let as_root = sim
        .http
        .get(&missing)
        .basic_auth("root", Some("sim-admin-token"))
        .send()
        .await
        .expect("send");
    assert_eq!(as_root.status(), StatusCode::NOT_FOUND);

    // A live job token of another project does not see this one.
    let other = sim.project("other/project").await;
    let runner = sim.runner(&[], &[]).await;
    let (_, other_token) = sim.job(crate::common::spec(other)).await;
    runner.pick().await;
    let foreign = sim
        .http
        .get(format!(
            "{}/info/refs?service=git-upload-pack",
            project.http_url
        ))
        .basic_auth("gitlab-ci-token", Some(&other_token))
        .send()
        .await
        .expect("send");
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);

    // Smart protocol only.
    let dumb = sim
        .http
        .get(format!("{}/info/refs", project.http_url))
        .basic_auth("root", Some("sim-admin-token"))
        .send()
        .await
        .expect("send");
    assert_eq!(dumb.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pushes_arrive_chunked_and_intact() {
    let sim = Sim::start().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let project = sim
        .admin
        .create_project("group/big")
        .await
        .expect("project");
    let mut blob = vec![0u8; 3 * 1024 * 1024];
    rand::thread_rng().fill_bytes(&mut blob);
    let work = local_repo(tmp.path(), "trunk", &[("blob.bin", &blob)]);
    sim.admin
        .push_repo(&project.path, &work, "trunk")
        .await
        .expect("push 3 MB");

    let runner = sim.runner(&[], &[]).await;
    let (_, token) = sim
        .job(JobSpecInput {
            git_ref: Some("trunk".into()),
            ..JobSpecInput::new(project.id, ["true"])
        })
        .await;
    let payload = runner.pick().await;
    assert_eq!(payload["git_info"]["ref"], json!("trunk"));
    let url = authed(&project.http_url, "gitlab-ci-token", &token);
    let clone_dir = tmp.path().join("clone");
    let out = try_git(
        tmp.path(),
        &["clone", "--quiet", &url, clone_dir.to_str().expect("utf8")],
    );
    assert!(
        out.status.success(),
        "clone failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(clone_dir.join("blob.bin")).expect("blob"),
        blob
    );
}
