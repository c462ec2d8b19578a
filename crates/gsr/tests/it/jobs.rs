//! Job semantics: success, failure, masking, after_script, timeout, cancel, variables,
//! artifacts, output limit.

use std::time::Duration;

use gsr_sim::{ArtifactInput, VariableInput};

use crate::harness::{alive, expect_status, Env};

#[tokio::test]
async fn success_runs_script_and_reports_checksum() {
    let env = Env::new().await;
    let id = env
        .enqueue(env.job(&["echo hello from $CI_JOB_NAME", "cat README.md"]))
        .await;
    let out = env.run_single(1).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view = expect_status(&env, id, "success", &out).await;
    let trace = env.trace(id).await;
    assert!(trace.contains("Running with gsr"), "{trace}");
    assert!(
        trace.contains("\x1b[32;1m$ echo hello from $CI_JOB_NAME"),
        "{trace}"
    );
    assert!(trace.contains("hello from test\n"), "{trace}");
    assert!(trace.contains("demo commit 3"), "{trace}");
    assert!(
        trace.contains("section_start:"),
        "sections requested: {trace}"
    );
    assert!(trace.contains("Job succeeded"), "{trace}");
    // The final update carried the identity of exactly what GitLab stored.
    assert_eq!(
        view.reported_checksum.as_deref(),
        Some(view.trace_checksum.as_str())
    );
    assert_eq!(view.reported_bytesize, Some(view.trace_size));
    assert!(
        view.acknowledged,
        "two-phase commit: PUT state=running first"
    );
}

#[tokio::test]
async fn failure_reports_exit_code_and_stops_the_script() {
    let env = Env::new().await;
    let id = env
        .enqueue(env.job(&["echo before", "exit 3", "echo never-printed"]))
        .await;
    let out = env.run_single(1).await;
    let view = expect_status(&env, id, "failed", &out).await;
    assert_eq!(view.failure_reason.as_deref(), Some("script_failure"));
    assert_eq!(view.exit_code, Some(3));
    let trace = env.trace(id).await;
    assert!(trace.contains("before"), "{trace}");
    assert!(!trace.contains("never-printed\n"), "{trace}");
    assert!(trace.contains("ERROR: Job failed: exit code 3"), "{trace}");
}

#[tokio::test]
async fn pipefail_and_errexit_semantics() {
    let env = Env::new().await;
    let id = env
        .enqueue(env.job(&["false | true", "echo unreachable-line"]))
        .await;
    let out = env.run_single(1).await;
    let view = expect_status(&env, id, "failed", &out).await;
    assert_eq!(view.exit_code, Some(1));
    assert!(!env.trace(id).await.contains("unreachable-line\n"));
}

#[tokio::test]
async fn masked_values_and_tokens_never_reach_the_trace() {
    let env = Env::new().await;
    let secret = "Sup3rSecretValue_42";
    let mut spec = env.job(&[
        // The secret is written in two pieces with a pause, so it arrives split over reads.
        "printf 'start %s' \"${MY_SECRET:0:9}\"; sleep 0.5; printf '%s end\\n' \"${MY_SECRET:9}\"",
        "echo \"whole: $MY_SECRET\"",
        "echo \"job token: $CI_JOB_TOKEN\"",
        "echo 'pat: glpat-abcdefghij0123456789 done'",
    ]);
    spec = spec.with_variable(VariableInput::masked("MY_SECRET", secret));
    let (id, job_token) = env.admin.create_job(&spec).await.expect("job");
    let out = env.run_single(1).await;
    expect_status(&env, id, "success", &out).await;
    let trace = env.trace(id).await;
    assert!(!trace.contains(secret), "{trace}");
    assert!(
        !trace.contains("Sup3rSecr"),
        "split secret leaked its head: {trace}"
    );
    assert!(!trace.contains(&job_token), "{trace}");
    assert!(trace.contains("start [MASKED] end"), "{trace}");
    assert!(trace.contains("whole: [MASKED]"), "{trace}");
    assert!(trace.contains("pat: glpat-[MASKED] done"), "{trace}");
    // Nothing secret in the runner's own log either.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(secret) && !stderr.contains(&job_token));
    assert!(!stderr.contains(&env.runner_token), "{stderr}");
}

#[tokio::test]
async fn after_script_runs_after_failure_with_job_status() {
    let env = Env::new().await;
    let mut spec = env.job(&["exit 7"]);
    spec.after_script = vec!["echo \"after: $CI_JOB_STATUS\"".into(), "exit 1".into()];
    let id = env.enqueue(spec).await;
    let out = env.run_single(1).await;
    let view = expect_status(&env, id, "failed", &out).await;
    assert_eq!(
        view.exit_code,
        Some(7),
        "after_script must not change the result"
    );
    let trace = env.trace(id).await;
    assert!(trace.contains("Running after script..."), "{trace}");
    assert!(trace.contains("after: failed"), "{trace}");
}

#[tokio::test]
async fn job_timeout_kills_the_script_and_runs_after_script() {
    let env = Env::new().await;
    let mut spec = env.job(&["echo started", "sleep 60"]);
    spec.timeout = Some(3);
    spec.after_script = vec!["echo \"after: $CI_JOB_STATUS\"".into()];
    let id = env.enqueue(spec).await;
    let started = std::time::Instant::now();
    let out = env.run_single(1).await;
    let view = expect_status(&env, id, "failed", &out).await;
    assert_eq!(
        view.failure_reason.as_deref(),
        Some("job_execution_timeout")
    );
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "the sleep was not killed"
    );
    let trace = env.trace(id).await;
    assert!(trace.contains("after: timedout"), "{trace}");
    assert!(trace.contains("execution took longer than"), "{trace}");
}

#[tokio::test]
async fn cancel_kills_the_process_tree_and_runs_after_script() {
    let env = Env::new().await;
    let pids = env.dir.path().join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let mut spec = env.job(&[
        "sleep 1000 & echo $! > \"$PID_DIR/bg\"",
        "echo $$ > \"$PID_DIR/shell\"",
        "echo ready-to-cancel",
        // Output keeps trace PATCHes flowing; their replies carry the cancel signal.
        "while true; do echo tick; sleep 0.3; done",
    ]);
    spec = spec.with_variable(VariableInput::new("PID_DIR", pids.to_string_lossy()));
    spec.after_script = vec!["echo \"after: $CI_JOB_STATUS\"".into()];
    let id = env.enqueue(spec).await;
    let mut cmd = env.run_single_cmd(1);
    let child = tokio::task::spawn_blocking(move || cmd.output().expect("gsr runs"));
    // Wait until the script is in its long sleep, then cancel in GitLab.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(pids.join("shell").exists() && env.trace(id).await.contains("ready-to-cancel")) {
        assert!(std::time::Instant::now() < deadline, "job never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.admin.cancel(id).await.expect("cancel");
    let out = child.await.unwrap();
    let view = expect_status(&env, id, "canceled", &out).await;
    assert_ne!(view.failure_reason.as_deref(), Some("script_failure"));
    let trace = env.trace(id).await;
    assert!(trace.contains("after: canceled"), "{trace}");
    for f in ["bg", "shell"] {
        let pid: i32 = std::fs::read_to_string(pids.join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!alive(pid), "{f} process {pid} survived the cancel");
    }
}

#[tokio::test]
async fn variables_arrive_intact_and_file_variables_are_files() {
    let env = Env::new().await;
    // Not raw: `$(…)` and backticks are not expansions; `$$` is a literal `$`.
    let weird = "it's \"quoted\" `id` $(whoami) $$HOME \\ back\nsecond line";
    let weird_expanded = weird.replace("$$", "$");
    let out_dir = env.dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut spec = env.job(&[
        "printf '%s' \"$WEIRD\" > \"$OUT/weird.txt\"",
        "cp \"$CONFIG_FILE\" \"$OUT/file.txt\"",
        "printf '%s' \"$CONFIG_FILE\" > \"$OUT/file-path.txt\"",
        "printf '%s|%s' \"$RAW_VAR\" \"$EXPANDED\" > \"$OUT/expansion.txt\"",
        "env > \"$OUT/env.txt\"",
    ]);
    spec = spec
        .with_variable(VariableInput::new("WEIRD", weird))
        .with_variable(VariableInput::new("OUT", out_dir.to_string_lossy()))
        .with_variable(VariableInput {
            file: true,
            ..VariableInput::new("CONFIG_FILE", "key: value\n$NOT_EXPANDED\n")
        })
        .with_variable(VariableInput {
            raw: true,
            ..VariableInput::new("RAW_VAR", "$CI_JOB_ID")
        })
        .with_variable(VariableInput::new("EXPANDED", "id-$CI_JOB_ID"));
    let id = env.enqueue(spec).await;
    let out = env.run_single(1).await;
    expect_status(&env, id, "success", &out).await;
    assert_eq!(
        std::fs::read_to_string(out_dir.join("weird.txt")).unwrap(),
        weird_expanded
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("file.txt")).unwrap(),
        "key: value\n$NOT_EXPANDED\n"
    );
    let path = std::fs::read_to_string(out_dir.join("file-path.txt")).unwrap();
    assert!(
        !std::path::Path::new(&path).exists(),
        "file variables are cleaned up: {path}"
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("expansion.txt")).unwrap(),
        format!("$CI_JOB_ID|id-{id}")
    );
    let job_env = std::fs::read_to_string(out_dir.join("env.txt")).unwrap();
    assert!(
        !job_env.contains(&env.runner_token),
        "runner token reached the job"
    );
    assert!(!job_env.contains("RUNNER_TOKEN="), "{job_env}");
    for needed in [
        "CI_PROJECT_DIR=",
        "CI_BUILDS_DIR=",
        "CI_SERVER=yes",
        "GITLAB_CI=true",
        "CI_JOB_STATUS=running",
        "CI_RUNNER_SHORT_TOKEN=",
        "CI_JOB_TOKEN=",
    ] {
        assert!(job_env.contains(needed), "missing {needed} in {job_env}");
    }
}

#[tokio::test]
async fn artifacts_round_trip_between_jobs() {
    let env = Env::new().await;
    let mut build = env.job(&[
        "mkdir -p out/nested",
        "echo built-artifact > out/nested/a.txt",
        "echo skip > out/skip.log",
    ]);
    build.name = Some("build".into());
    let mut rule = ArtifactInput::archive(["out/"]);
    rule.exclude = vec!["out/*.log".into()];
    build = build.with_artifact(rule);
    let a = env.enqueue(build).await;

    let mut test = env.job(&["cat out/nested/a.txt", "test ! -e out/skip.log"]);
    test.dependencies = vec![a];
    let b = env.enqueue(test).await;

    let out = env.run_single(2).await;
    expect_status(&env, a, "success", &out).await;
    expect_status(&env, b, "success", &out).await;
    let view = env.view(a).await;
    assert_eq!(view.artifacts.len(), 1, "{view:?}");
    assert_eq!(view.artifacts[0].artifact_type, "archive");
    let trace_b = env.trace(b).await;
    assert!(trace_b.contains("built-artifact"), "{trace_b}");
}

#[tokio::test]
async fn missing_dependency_fails_the_job() {
    let env = Env::new().await;
    let a = env
        .enqueue(
            env.job(&["echo x > a.txt"])
                .with_artifact(ArtifactInput::archive(["a.txt"])),
        )
        .await;
    let out = env.run_single(1).await;
    expect_status(&env, a, "success", &out).await;
    // The archive exists in GitLab's view, but downloading it fails (expired/erased).
    let mut spec = env.job(&["echo should-not-run"]);
    spec.dependencies = vec![a];
    let b = env.enqueue(spec).await;
    env.admin
        .fault(gsr_sim::Fault {
            route: gsr_sim::FaultRoute::DownloadArtifacts,
            kind: gsr_sim::FaultKind::Status,
            status: Some(404),
            retry_after: None,
            delay_ms: None,
            times: 10,
        })
        .await
        .unwrap();
    let out = env.run_single(1).await;
    let view = expect_status(&env, b, "failed", &out).await;
    assert_eq!(
        view.failure_reason.as_deref(),
        Some("missing_dependency_failure")
    );
    let trace = env.trace(b).await;
    assert!(!trace.contains("should-not-run\n"), "{trace}");
}

#[tokio::test]
async fn output_over_the_limit_is_truncated_with_a_matching_checksum() {
    let env = Env::new().await;
    let id = env
        .enqueue(env.job(&[
            "head -c 6000000 /dev/zero | tr '\\0' 'a'",
            "echo after-the-flood",
        ]))
        .await;
    let out = env.run_single(1).await;
    let view = expect_status(&env, id, "success", &out).await;
    let trace = env.trace(id).await;
    assert!(
        trace.contains("Job's log exceeded limit of 4194304 bytes."),
        "notice missing"
    );
    assert!(!trace.contains("after-the-flood"));
    assert!(
        view.trace_size <= 4 * 1024 * 1024 + 300,
        "{}",
        view.trace_size
    );
    assert!(view.trace_size >= 4 * 1024 * 1024, "{}", view.trace_size);
    assert_eq!(
        view.reported_checksum.as_deref(),
        Some(view.trace_checksum.as_str())
    );
    assert_eq!(view.reported_bytesize, Some(view.trace_size));
}

#[tokio::test]
async fn force_cancel_aborts_at_once_without_after_script() {
    let env = Env::new().await;
    let pids = env.dir.path().join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let mut spec = env.job(&[
        "sleep 1000 & echo $! > \"$PID_DIR/bg\"",
        "echo ready-to-cancel",
        // Output keeps trace PATCHes flowing; their replies carry the cancel signal.
        "while true; do echo tick; sleep 0.3; done",
    ]);
    spec = spec.with_variable(VariableInput::new("PID_DIR", pids.to_string_lossy()));
    spec.after_script = vec!["echo after-script-ran".into()];
    let id = env.enqueue(spec).await;
    let mut cmd = env.run_single_cmd(1);
    let child = tokio::task::spawn_blocking(move || cmd.output().expect("gsr runs"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !env.trace(id).await.contains("ready-to-cancel") {
        assert!(std::time::Instant::now() < deadline, "job never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Cancel, then cancel again while it is canceling: GitLab's force cancel.
    env.admin.cancel(id).await.expect("cancel");
    env.admin.cancel(id).await.expect("force cancel");
    let out = child.await.unwrap();
    expect_status(&env, id, "canceled", &out).await;
    let trace = env.trace(id).await;
    assert!(
        !trace.contains("after-script-ran"),
        "aborted jobs skip after_script: {trace}"
    );
    let pid: i32 = std::fs::read_to_string(pids.join("bg"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!alive(pid), "background process {pid} survived the abort");
}

#[tokio::test]
async fn get_sources_hooks_run_around_the_checkout() {
    let env = Env::new().await;
    let mut spec = env.job(&["echo script-ran"]);
    spec.hooks = vec![
        gsr_sim::HookInput {
            name: "pre_get_sources_script".into(),
            script: vec!["echo \"pre-hook: $(ls -A | wc -l) files\"".into()],
        },
        gsr_sim::HookInput {
            name: "post_get_sources_script".into(),
            script: vec!["test -e README.md && echo post-hook-sees-checkout".into()],
        },
    ];
    let id = env.enqueue(spec).await;
    let failing = env.job(&["echo never"]);
    let mut failing = failing;
    failing.hooks = vec![gsr_sim::HookInput {
        name: "pre_get_sources_script".into(),
        script: vec!["exit 5".into()],
    }];
    let bad = env.enqueue(failing).await;
    let out = env.run_single(2).await;
    expect_status(&env, id, "success", &out).await;
    let trace = env.trace(id).await;
    let pre = trace
        .find("pre-hook: 0 files")
        .expect("pre hook ran on an empty dir");
    let post = trace
        .find("post-hook-sees-checkout")
        .expect("post hook ran");
    let script = trace.find("script-ran\n").expect("script ran");
    assert!(pre < post && post < script, "{trace}");
    let view = expect_status(&env, bad, "failed", &out).await;
    assert_eq!(view.exit_code, Some(5));
}

#[tokio::test]
async fn gitlab_env_passes_variables_to_later_steps() {
    let env = Env::new().await;
    let mut spec = env.job(&[
        "echo \"FROM_SCRIPT=value with spaces\" >> \"$GITLAB_ENV\"",
        "echo 'NOT_CODE=$(touch pwned) `touch pwned2`' >> \"$GITLAB_ENV\"",
        "echo 'bad line without equals' >> \"$GITLAB_ENV\"",
        "echo \"in script: $FROM_SCRIPT\"",
    ]);
    spec.after_script = vec![
        "echo \"in after_script: $FROM_SCRIPT\"".into(),
        "echo \"literal: $NOT_CODE\"".into(),
        "test ! -e pwned && test ! -e pwned2 && echo no-code-ran".into(),
    ];
    let id = env.enqueue(spec).await;
    let out = env.run_single(1).await;
    expect_status(&env, id, "success", &out).await;
    let trace = env.trace(id).await;
    // Sourced at the start of each step, not in the middle of the one that wrote it.
    assert!(trace.contains("in script: \n"), "{trace}");
    assert!(
        trace.contains("in after_script: value with spaces"),
        "{trace}"
    );
}
