//! Git sources over smart HTTP with the job token: each GIT_STRATEGY, depth, clean.

use gsr_sim::VariableInput;

use crate::harness::{expect_status, Env};

#[tokio::test]
async fn clone_then_fetch_reuses_and_cleans_the_checkout() {
    let env = Env::new().await;
    let mut first = env.job(&["test -d .git", "echo leftover > untracked.txt"]);
    first.allow_git_fetch = Some(false);
    let a = env.enqueue(first).await;
    let mut second = env.job(&[
        "test ! -e untracked.txt",
        "test -d .git",
        "git log --oneline | wc -l",
    ]);
    second.allow_git_fetch = Some(true);
    let b = env.enqueue(second).await;
    let out = env.run_single(2).await;
    expect_status(&env, a, "success", &out).await;
    expect_status(&env, b, "success", &out).await;
    let trace_a = env.trace(a).await;
    assert!(trace_a.contains("Created fresh repository."), "{trace_a}");
    let trace_b = env.trace(b).await;
    assert!(trace_b.contains("Fetching changes"), "{trace_b}");
    assert!(
        !trace_b.contains("Created fresh repository."),
        "fetch reused the checkout: {trace_b}"
    );
    // Credentials never show in traces.
    assert!(!trace_a.contains("gitlab-ci-token:"), "{trace_a}");
}

#[tokio::test]
async fn depth_controls_history() {
    let env = Env::new().await;
    let mut shallow = env.job(&[
        "test \"$(git rev-parse --is-shallow-repository)\" = true",
        "test \"$(git rev-list --count HEAD)\" = 1",
    ]);
    shallow.git_depth = Some(1);
    let a = env.enqueue(shallow).await;
    let mut full = env.job(&[
        "test \"$(git rev-parse --is-shallow-repository)\" = false",
        "test \"$(git rev-list --count HEAD)\" = 3",
    ]);
    full.git_depth = Some(0);
    let b = env.enqueue(full).await;
    let out = env.run_single(2).await;
    expect_status(&env, a, "success", &out).await;
    expect_status(&env, b, "success", &out).await;
}

#[tokio::test]
async fn strategy_none_and_empty() {
    let env = Env::new().await;
    let none = env
        .job(&["test ! -e .git", "test ! -e README.md", "pwd"])
        .with_variable(VariableInput::new("GIT_STRATEGY", "none"));
    let a = env.enqueue(none).await;
    let empty = env
        .job(&[
            "test -z \"$(ls -A)\"",
            "case \"$CI_PROJECT_DIR\" in *-empty) ;; *) exit 9;; esac",
        ])
        .with_variable(VariableInput::new("GIT_STRATEGY", "empty"));
    let b = env.enqueue(empty).await;
    let bad = env
        .job(&["echo never"])
        .with_variable(VariableInput::new("GIT_STRATEGY", "klone"));
    let c = env.enqueue(bad).await;
    let out = env.run_single(3).await;
    expect_status(&env, a, "success", &out).await;
    expect_status(&env, b, "success", &out).await;
    expect_status(&env, c, "failed", &out).await;
    let trace = env.trace(c).await;
    assert!(trace.contains("GIT_STRATEGY"), "{trace}");
}

#[tokio::test]
async fn checkout_of_an_older_sha() {
    let env = Env::new().await;
    // A job for the first commit while `main` is at the third: the job's sha wins.
    let mut old = env.job(&[
        "cat README.md",
        "test \"$(git rev-parse HEAD)\" = \"$CI_COMMIT_SHA\"",
    ]);
    old.sha = Some(env.shas[0].clone());
    let id = env.enqueue(old).await;
    let out = env.run_single(1).await;
    expect_status(&env, id, "success", &out).await;
    let trace = env.trace(id).await;
    assert!(trace.contains("demo commit 1"), "{trace}");
    assert!(
        trace.contains(&format!("Checking out {}", &env.shas[0][..8])),
        "{trace}"
    );
}
