//! The scheduler: tag matching, feature requirements, stages, and the payload shape.

use gsr_sim::{ArtifactInput, JobSpecInput, JobStatus, RunnerInput, VariableInput};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{spec, Sim, ALL_FEATURES};

#[tokio::test]
async fn jobs_go_only_to_runners_with_all_their_tags() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;
    let (tagged, _) = sim.job(spec(project).with_tags(["docker", "linux"])).await;

    let untagged_runner = sim.runner(&[], &[]).await;
    assert_eq!(
        untagged_runner.poll(None).await.status(),
        StatusCode::NO_CONTENT
    );
    let partial = sim.runner(&["docker"], &[]).await;
    assert_eq!(partial.poll(None).await.status(), StatusCode::NO_CONTENT);
    let full = sim.runner(&["linux", "docker", "gpu"], &[]).await;
    let payload = full.pick().await;
    assert_eq!(payload["id"], json!(tagged));
    let runner_tags = payload["variables"]
        .as_array()
        .and_then(|vars| vars.iter().find(|v| v["key"] == "CI_RUNNER_TAGS"))
        .map(|v| v["value"].clone());
    assert_eq!(runner_tags, Some(json!(r#"["docker", "gpu", "linux"]"#)));
}

#[tokio::test]
async fn untagged_jobs_need_run_untagged() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;
    let (job, _) = sim.job(spec(project)).await;
    let (_, strict_token) = sim
        .admin
        .create_runner(&["docker"], false)
        .await
        .expect("runner");
    let resp = sim
        .http
        .post(sim.api("jobs/request"))
        .json(&json!({"token": strict_token}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let open = sim.runner(&["docker"], &[]).await;
    assert_eq!(open.pick().await["id"], json!(job));
}

#[tokio::test]
async fn project_runners_only_serve_their_projects() {
    let sim = Sim::start().await;
    let a = sim.project("group/a").await;
    let b = sim.project("group/b").await;
    let (job_b, _) = sim.job(spec(b)).await;
    let created = sim
        .admin
        .create_runner_with(&RunnerInput {
            project_ids: Some(vec![a]),
            ..Default::default()
        })
        .await
        .expect("runner");
    let resp = sim
        .http
        .post(sim.api("jobs/request"))
        .json(&json!({"token": created.token}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        sim.admin.job(job_b).await.expect("job").status,
        JobStatus::Pending
    );
}

#[tokio::test]
async fn jobs_needing_undeclared_features_are_dropped_as_runner_unsupported() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;
    let report = spec(project).with_artifact(ArtifactInput::report("junit", ["rspec.xml"]));
    let (dropped, _) = sim.job(report).await;

    let runner = sim.runner(&[], &["artifacts"]).await;
    assert_eq!(runner.poll(None).await.status(), StatusCode::NO_CONTENT);
    let job = sim.admin.job(dropped).await.expect("job");
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.failure_reason.as_deref(), Some("runner_unsupported"));

    // Like Rails' queue walk, a drop does not end the request: the next job is offered.
    let exit_codes = JobSpecInput {
        allow_failure_exit_codes: vec![42],
        ..spec(project)
    };
    let (unsupported, _) = sim.job(exit_codes).await;
    let (plain, _) = sim.job(spec(project)).await;
    let payload = runner.pick().await;
    assert_eq!(payload["id"], json!(plain));
    let job = sim.admin.job(unsupported).await.expect("job");
    assert_eq!(job.failure_reason.as_deref(), Some("runner_unsupported"));

    // A runner that declares everything gets such jobs.
    let capable = sim.runner(&[], ALL_FEATURES).await;
    let exclude = spec(project).with_artifact(ArtifactInput {
        exclude: vec!["secret.log".into()],
        ..ArtifactInput::archive(["log/"])
    });
    let (with_exclude, _) = sim.job(exclude).await;
    assert_eq!(capable.pick().await["id"], json!(with_exclude));
}

#[tokio::test]
async fn later_stages_wait_for_their_dependencies() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;
    let runner = sim.runner(&[], &[]).await;
    let (build, build_token) = sim.job(spec(project)).await;
    let (test, _) = sim
        .job(JobSpecInput {
            name: Some("rspec".into()),
            dependencies: vec![build],
            ..spec(project)
        })
        .await;
    assert_eq!(
        sim.admin.job(test).await.expect("job").status,
        JobStatus::Created
    );
    assert_eq!(runner.pick().await["id"], json!(build));
    assert_eq!(runner.poll(None).await.status(), StatusCode::NO_CONTENT);

    let done = sim
        .put_job(build, &build_token, json!({"state": "success"}))
        .await;
    assert_eq!(done.status(), StatusCode::OK);
    let test_view = sim.admin.job(test).await.expect("job");
    assert_eq!(test_view.status, JobStatus::Pending);
    assert_eq!(
        test_view.pipeline_id,
        sim.admin.job(build).await.expect("job").pipeline_id
    );
    let payload = runner.pick().await;
    assert_eq!(payload["id"], json!(test));
    let deps = payload["dependencies"].as_array().expect("deps");
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0]["id"], json!(build));
    assert_eq!(
        deps[0]["token"], payload["token"],
        "dependency token is the running job's"
    );
    assert!(
        deps[0].get("artifacts_file").is_none(),
        "no archive, no artifacts_file"
    );

    // A failed dependency skips the dependent job.
    let (failing, failing_token) = sim.job(spec(project)).await;
    let (skipped, _) = sim
        .job(JobSpecInput {
            dependencies: vec![failing],
            ..spec(project)
        })
        .await;
    assert_eq!(runner.pick().await["id"], json!(failing));
    sim.put_job(
        failing,
        &failing_token,
        json!({"state": "failed", "failure_reason": "script_failure", "exit_code": 1}),
    )
    .await;
    assert_eq!(
        sim.admin.job(skipped).await.expect("job").status,
        JobStatus::Skipped
    );
}

#[tokio::test]
async fn invalid_specs_are_refused_with_a_reason() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;
    let cases = [
        JobSpecInput::new(project, Vec::<String>::new()),
        JobSpecInput::new(project, ["echo"]), // no sha and the repository is empty
        spec(project).with_variable(VariableInput::masked("SHORT", "abc")),
        spec(project).with_variable(VariableInput::new("BAD-KEY", "x")),
        spec(project).with_artifact(ArtifactInput {
            artifact_format: Some("zip".into()),
            ..ArtifactInput::report("junit", ["a.xml"])
        }),
        JobSpecInput {
            dependencies: vec![999_999],
            ..spec(project)
        },
        JobSpecInput {
            project_id: 424_242,
            ..spec(project)
        },
    ];
    for case in cases {
        let err = sim
            .admin
            .create_job(&case)
            .await
            .expect_err("must be refused");
        let msg = err.to_string();
        assert!(msg.contains("400") || msg.contains("404"), "{msg}");
    }
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

fn var<'a>(payload: &'a Value, key: &str) -> &'a Value {
    payload["variables"]
        .as_array()
        .and_then(|vars| vars.iter().find(|v| v["key"] == key))
        .unwrap_or_else(|| panic!("variable {key} missing"))
}

#[tokio::test]
async fn payload_has_gitlabs_shape() {
    let sim = Sim::start().await;
    let project = sim.project("group/sub/project").await;
    let runner = sim.runner(&[], ALL_FEATURES).await;
    let job_spec = JobSpecInput {
        name: Some("rspec".into()),
        before_script: vec!["bundle install".into()],
        after_script: vec!["echo done".into()],
        timeout: Some(7200),
        variables: vec![
            VariableInput::new("DB_NAME", "postgres"),
            VariableInput::masked("DEPLOY_SECRET", "s3cr3t-Value_123"),
            VariableInput {
                file: true,
                ..VariableInput::new("KUBECONFIG_FILE", "apiVersion: v1\n")
            },
        ],
        image: Some(json!("ruby:3.3")),
        ..spec(project).with_artifact(ArtifactInput::archive(["coverage/"]))
    };
    let (id, token) = sim.job(job_spec).await;
    let p = runner.pick().await;

    assert_eq!(
        keys(&p),
        vec![
            "allow_git_fetch",
            "artifacts",
            "cache",
            "credentials",
            "dependencies",
            "features",
            "git_info",
            "hooks",
            "id",
            "image",
            "job_info",
            "runner_info",
            "services",
            "steps",
            "token",
            "variables"
        ]
    );
    assert_eq!(p["id"], json!(id));
    assert_eq!(p["token"], json!(token));
    assert!(token.starts_with("glcbt-") && token.len() == 26);
    assert_eq!(
        keys(&p["job_info"]),
        vec![
            "id",
            "instance_id",
            "instance_uuid",
            "name",
            "namespace_id",
            "organization_id",
            "pipeline_id",
            "project_full_path",
            "project_id",
            "project_jobs_running_on_instance_runners_count",
            "project_name",
            "queue_depth",
            "queue_size",
            "root_namespace_id",
            "stage",
            "time_in_queue_seconds",
            "user_id"
        ]
    );
    assert_eq!(
        p["job_info"]["project_full_path"],
        json!("group/sub/project")
    );
    assert_eq!(p["job_info"]["project_name"], json!("project"));
    assert!(p["job_info"]["time_in_queue_seconds"].is_f64());
    assert!(p["job_info"]["project_jobs_running_on_instance_runners_count"].is_string());

    let git = &p["git_info"];
    let host = sim.url.trim_start_matches("http://");
    assert_eq!(
        git["repo_url"],
        json!(format!(
            "http://gitlab-ci-token:{token}@{host}/group/sub/project.git"
        ))
    );
    assert_eq!(git["ref"], json!("main"));
    assert_eq!(git["ref_type"], json!("branch"));
    assert_eq!(git["depth"], json!(20));
    assert_eq!(git["before_sha"], json!("0".repeat(40)));
    assert!(git["refspecs"]
        .as_array()
        .is_some_and(|r| r.contains(&json!("+refs/heads/main:refs/remotes/origin/main"))));

    assert_eq!(p["runner_info"]["timeout"], json!(7200));
    assert!(p["image"]["entrypoint"].is_null());
    assert_eq!(p["image"]["name"], json!("ruby:3.3"));
    assert_eq!(p["services"], json!([]));
    assert_eq!(p["features"]["trace_sections"], json!(true));
    let reasons = p["features"]["failure_reasons"]
        .as_array()
        .expect("reasons");
    assert!(reasons.contains(&json!("runner_unsupported")) && reasons.len() > 40);

    let steps = p["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0]["name"], json!("script"));
    assert_eq!(steps[0]["script"], json!(["bundle install", "echo hello"]));
    assert_eq!(steps[0]["when"], json!("on_success"));
    assert_eq!(steps[0]["timeout"], json!(7200));
    assert_eq!(steps[1]["name"], json!("after_script"));
    assert_eq!(steps[1]["when"], json!("always"));

    let artifact = &p["artifacts"][0];
    assert_eq!(artifact["artifact_type"], json!("archive"));
    assert_eq!(artifact["artifact_format"], json!("zip"));
    assert!(artifact["name"].is_null());

    let job_token = var(&p, "CI_JOB_TOKEN");
    assert_eq!(job_token["value"], json!(token));
    assert_eq!(job_token["masked"], json!(true));
    assert_eq!(job_token["public"], json!(false));
    assert_eq!(var(&p, "CI_SERVER_URL")["value"], json!(sim.url));
    assert_eq!(
        var(&p, "CI_API_V4_URL")["value"],
        json!(format!("{}/api/v4", sim.url))
    );
    assert_eq!(var(&p, "CI_PROJECT_NAMESPACE")["value"], json!("group/sub"));
    assert_eq!(
        var(&p, "CI_PROJECT_PATH_SLUG")["value"],
        json!("group-sub-project")
    );
    assert_eq!(var(&p, "CI_JOB_ID")["value"], json!(id.to_string()));
    assert_eq!(var(&p, "CI_COMMIT_BRANCH")["value"], json!("main"));
    assert_eq!(var(&p, "CI")["value"], json!("true"));
    assert_eq!(var(&p, "CI_REGISTRY_PASSWORD")["masked"], json!(true));
    let secret = var(&p, "DEPLOY_SECRET");
    assert_eq!(
        (secret["masked"].clone(), secret["public"].clone()),
        (json!(true), json!(false))
    );
    assert!(
        secret.get("file").is_none(),
        "file/raw only appear when true"
    );
    assert_eq!(var(&p, "KUBECONFIG_FILE")["file"], json!(true));
    let last = p["variables"]
        .as_array()
        .and_then(|v| v.last())
        .expect("vars");
    assert_eq!(
        last["key"],
        json!("KUBECONFIG_FILE"),
        "spec variables come last"
    );

    // The admin API keeps the served payload.
    assert_eq!(sim.admin.payload(id).await.expect("payload"), p);
}

#[tokio::test]
async fn runner_maximum_timeout_caps_the_job_timeout() {
    let sim = Sim::start().await;
    let project = sim.project("group/project").await;
    let created = sim
        .admin
        .create_runner_with(&RunnerInput {
            maximum_timeout: Some(900),
            ..Default::default()
        })
        .await
        .expect("runner");
    sim.job(spec(project)).await;
    let resp = sim
        .http
        .post(sim.api("jobs/request"))
        .json(&json!({"token": created.token}))
        .send()
        .await
        .expect("send");
    let p: Value = resp.json().await.expect("json");
    assert_eq!(p["runner_info"]["timeout"], json!(900));
    assert_eq!(p["steps"][0]["timeout"], json!(900));
}
