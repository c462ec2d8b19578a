//! `get_sources` and `list_untracked` against `file://` remotes.

use std::path::Path;

use gsr_exec::MemorySink;
use gsr_git::{get_sources, list_untracked, GitError, GitStrategy, SubmoduleStrategy};
use tempfile::TempDir;

use crate::fixtures::{assert_no_token, file_url, git, request, setup, Upstream, TOKEN};

fn text(sink: &MemorySink) -> String {
    String::from_utf8(sink.contents()).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test]
async fn clone_checks_out_the_commit_without_storing_the_token() {
    let up = Upstream::new();
    let sha = up.commit(&[("a.txt", "one")], "c1");
    let builds = TempDir::new().unwrap();
    let project = builds.path().join("group/proj");
    let mut req = request(&project, &up.url(), &sha);
    req.strategy = GitStrategy::Clone;

    let sink = MemorySink::default();
    get_sources(&req, &sink).await.unwrap();

    assert_eq!(git(&project, &["rev-parse", "HEAD"]), sha);
    assert_eq!(read(&project.join("a.txt")), "one");
    let log = text(&sink);
    for line in [
        "Fetching changes...",
        "Initialized empty Git repository in ",
        "Created fresh repository.",
        &format!(
            "Checking out {} as detached HEAD (ref is main)...",
            &sha[..8]
        ),
        "Skipping Git submodules setup",
    ] {
        assert!(log.contains(line), "missing {line:?} in:\n{log}");
    }
    assert_eq!(
        git(&project, &["config", "remote.origin.url"]),
        file_url(&up.bare)
    );
    // An empty template: no sample hooks were copied.
    assert!(!project.join(".git/hooks/pre-commit.sample").exists());
    assert_no_token(&project, &sink.contents(), None);
}

#[tokio::test]
async fn fetch_reuses_the_checkout_and_cleans_it() {
    let up = Upstream::new();
    let c1 = up.commit(&[("a.txt", "one")], "c1");
    let builds = TempDir::new().unwrap();
    let project = builds.path().join("proj");
    let req = request(&project, &up.url(), &c1);
    get_sources(&req, &MemorySink::default()).await.unwrap();

    // What the previous job left behind.
    std::fs::write(project.join("left-behind.txt"), "x").unwrap();
    std::fs::write(project.join("a.txt"), "modified").unwrap();
    std::fs::write(project.join(".git/gsr-marker"), "").unwrap();
    std::fs::write(project.join(".git/index.lock"), "").unwrap();
    std::fs::create_dir_all(project.join(".git/refs/remotes/origin")).unwrap();
    std::fs::write(project.join(".git/refs/remotes/origin/main.lock"), "").unwrap();
    let hook = project.join(".git/hooks/post-checkout");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::write(
        &hook,
        format!("#!/bin/sh\ntouch {}/hook-ran\n", builds.path().display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    git(
        &project,
        &["config", "core.fsmonitor", "touch ../fsmonitor-ran; false"],
    );

    let c2 = up.commit(&[("a.txt", "two"), ("b.txt", "bee")], "c2");
    let sink = MemorySink::default();
    get_sources(&request(&project, &up.url(), &c2), &sink)
        .await
        .unwrap();

    assert_eq!(git(&project, &["rev-parse", "HEAD"]), c2);
    assert_eq!(read(&project.join("a.txt")), "two");
    assert_eq!(read(&project.join("b.txt")), "bee");
    assert!(
        !project.join("left-behind.txt").exists(),
        "clean removed it"
    );
    // Reused, not recreated: the marker survived and git reinitialised.
    assert!(project.join(".git/gsr-marker").exists());
    let log = text(&sink);
    assert!(
        log.contains("Reinitialized existing Git repository"),
        "{log}"
    );
    assert!(!log.contains("Created fresh repository."), "{log}");
    assert!(log.contains("Removing left-behind.txt"), "{log}");
    // Planted programs did not run.
    assert!(!builds.path().join("hook-ran").exists());
    assert!(!builds.path().join("fsmonitor-ran").exists());
    assert_no_token(&project, &sink.contents(), None);
}

#[tokio::test]
async fn clone_strategy_starts_from_scratch() {
    let up = Upstream::new();
    let sha = up.commit(&[("a.txt", "one")], "c1");
    let builds = TempDir::new().unwrap();
    let project = builds.path().join("proj");
    get_sources(&request(&project, &up.url(), &sha), &MemorySink::default())
        .await
        .unwrap();
    std::fs::write(project.join(".git/gsr-marker"), "").unwrap();

    let mut req = request(&project, &up.url(), &sha);
    req.strategy = GitStrategy::Clone;
    let sink = MemorySink::default();
    get_sources(&req, &sink).await.unwrap();
    assert!(!project.join(".git/gsr-marker").exists());
    assert!(text(&sink).contains("Initialized empty Git repository"));
    assert_eq!(read(&project.join("a.txt")), "one");
}

#[tokio::test]
async fn depth_one_is_shallow_and_depth_zero_unshallows() {
    let up = Upstream::new();
    up.commit(&[("a.txt", "one")], "c1");
    up.commit(&[("a.txt", "two")], "c2");
    let c3 = up.commit(&[("a.txt", "three")], "c3");
    let builds = TempDir::new().unwrap();
    let project = builds.path().join("proj");

    let mut req = request(&project, &up.url(), &c3);
    req.depth = 1;
    let sink = MemorySink::default();
    get_sources(&req, &sink).await.unwrap();
    assert!(text(&sink).contains("Fetching changes with git depth set to 1..."));
    assert_eq!(
        git(&project, &["rev-parse", "--is-shallow-repository"]),
        "true"
    );
    assert_eq!(git(&project, &["rev-list", "--count", "HEAD"]), "1");

    req.depth = 0;
    get_sources(&req, &MemorySink::default()).await.unwrap();
    assert_eq!(
        git(&project, &["rev-parse", "--is-shallow-repository"]),
        "false"
    );
    assert_eq!(git(&project, &["rev-list", "--count", "HEAD"]), "3");
}

#[tokio::test]
async fn checks_out_an_older_commit() {
    let up = Upstream::new();
    let c1 = up.commit(&[("a.txt", "one")], "c1");
    up.commit(&[("a.txt", "two")], "c2");
    let builds = TempDir::new().unwrap();
    let project = builds.path().join("proj");
    get_sources(&request(&project, &up.url(), &c1), &MemorySink::default())
        .await
        .unwrap();
    assert_eq!(git(&project, &["rev-parse", "HEAD"]), c1);
    assert_eq!(read(&project.join("a.txt")), "one");
}

#[tokio::test]
async fn strategy_none_creates_the_dir_only() {
    setup();
    let builds = TempDir::new().unwrap();
    let project = builds.path().join("a/b");
    let mut req = request(&project, "file:///nonexistent", "0000");
    req.strategy = GitStrategy::None;
    let sink = MemorySink::default();
    get_sources(&req, &sink).await.unwrap();
    assert!(project.is_dir());
    assert!(!project.join(".git").exists());
    assert!(text(&sink).contains("Skipping Git repository setup"));
}

#[tokio::test]
async fn strategy_empty_wipes_the_dir() {
    setup();
    let builds = TempDir::new().unwrap();
    let project = builds.path().join("proj");
    std::fs::create_dir_all(project.join(".git/sub")).unwrap();
    std::fs::write(project.join("file"), "x").unwrap();
    // A read-only directory does not stop the wipe.
    let ro = project.join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("f"), "x").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();

    let mut req = request(&project, "file:///nonexistent", "0000");
    req.strategy = GitStrategy::Empty;
    get_sources(&req, &MemorySink::default()).await.unwrap();
    assert!(project.is_dir());
    assert_eq!(std::fs::read_dir(&project).unwrap().count(), 0);
}

#[tokio::test]
async fn clean_flags_none_keeps_untracked_files() {
    let up = Upstream::new();
    let sha = up.commit(&[("a.txt", "one")], "c1");
    let builds = TempDir::new().unwrap();
    let project = builds.path().join("proj");
    get_sources(&request(&project, &up.url(), &sha), &MemorySink::default())
        .await
        .unwrap();
    std::fs::write(project.join("keep.me"), "x").unwrap();

    let mut req = request(&project, &up.url(), &sha);
    req.clean_flags = "none".into();
    get_sources(&req, &MemorySink::default()).await.unwrap();
    assert!(project.join("keep.me").exists());
}

#[tokio::test]
async fn checkout_false_only_fetches() {
    let up = Upstream::new();
    let sha = up.commit(&[("a.txt", "one")], "c1");
    let builds = TempDir::new().unwrap();
    let project = builds.path().join("proj");
    let mut req = request(&project, &up.url(), &sha);
    req.checkout = false;
    let sink = MemorySink::default();
    get_sources(&req, &sink).await.unwrap();
    assert!(!project.join("a.txt").exists());
    assert!(text(&sink).contains("Skipping Git checkout"));
    assert_eq!(git(&project, &["rev-parse", "origin/main"]), sha);
}

#[tokio::test]
async fn submodules_normal_and_recursive() {
    let sub = Upstream::new();
    sub.commit(&[("inner.txt", "inner")], "sub c1");
    let up = Upstream::new();
    up.commit(&[("a.txt", "one")], "c1");
    git(
        &up.work,
        &["submodule", "add", "-q", &file_url(&sub.bare), "libs/sub"],
    );
    let sha = up.commit(&[], "add submodule");

    let builds = TempDir::new().unwrap();
    let project = builds.path().join("proj");
    let mut req = request(&project, &up.url(), &sha);
    req.submodules = SubmoduleStrategy::Normal;
    req.submodule_depth = Some(1);
    let sink = MemorySink::default();
    get_sources(&req, &sink).await.unwrap();
    assert_eq!(read(&project.join("libs/sub/inner.txt")), "inner");
    assert!(text(&sink).contains("Updating/initializing submodules..."));

    // The next job: leftovers inside the submodule are cleaned, changes reset.
    std::fs::write(project.join("libs/sub/junk"), "x").unwrap();
    std::fs::write(project.join("libs/sub/inner.txt"), "changed").unwrap();
    req.submodules = SubmoduleStrategy::Recursive;
    let sink = MemorySink::default();
    get_sources(&req, &sink).await.unwrap();
    assert!(text(&sink).contains("Updating/initializing submodules recursively..."));
    assert!(!project.join("libs/sub/junk").exists());
    assert_eq!(read(&project.join("libs/sub/inner.txt")), "inner");
    assert_no_token(&project, &sink.contents(), None);
}

#[tokio::test]
async fn unknown_commit_is_a_clear_error() {
    let up = Upstream::new();
    up.commit(&[("a.txt", "one")], "c1");
    let builds = TempDir::new().unwrap();
    let project = builds.path().join("proj");
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let sink = MemorySink::default();
    let err = get_sources(&request(&project, &up.url(), missing), &sink)
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::CommitNotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(missing) && msg.contains("ref main"), "{msg}");

    let err = get_sources(&request(&project, &up.url(), "not-a-sha"), &sink)
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::InvalidRequest(_)), "{err:?}");
    assert!(err.to_string().contains("not-a-sha"));
}

#[tokio::test]
async fn failing_fetch_never_shows_the_token() {
    setup();
    let builds = TempDir::new().unwrap();
    let project = builds.path().join("proj");
    let url = format!(
        "file://gitlab-ci-token:{TOKEN}@{}/does/not/exist.git",
        builds.path().display()
    );
    let sink = MemorySink::default();
    let err = get_sources(&request(&project, &url, "abcdef12"), &sink)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("`git fetch origin` failed (exit code 128)"),
        "{msg}"
    );
    assert!(msg.contains("does/not/exist.git"), "{msg}");
    assert_no_token(&project, &sink.contents(), Some(&msg));
    assert!(!format!("{err:?}").contains(TOKEN));
}

#[tokio::test]
async fn sha256_repositories() {
    let up = Upstream::with_format("sha256");
    let sha = up.commit(&[("a.txt", "one")], "c1");
    assert_eq!(sha.len(), 64);
    let builds = TempDir::new().unwrap();
    let project = builds.path().join("proj");
    let mut req = request(&project, &up.url(), &sha);
    req.object_format = "sha256".into();
    get_sources(&req, &MemorySink::default()).await.unwrap();
    // Reuse: the deleted config is recreated with the right format.
    let sha2 = up.commit(&[("a.txt", "two")], "c2");
    req.sha = sha2.clone();
    get_sources(&req, &MemorySink::default()).await.unwrap();
    assert_eq!(git(&project, &["rev-parse", "HEAD"]), sha2);
    assert_eq!(
        git(&project, &["rev-parse", "--show-object-format"]),
        "sha256"
    );
    // A sha1 job in the same dir starts over instead of failing.
    let up1 = Upstream::new();
    let sha1 = up1.commit(&[("b.txt", "bee")], "c1");
    get_sources(
        &request(&project, &up1.url(), &sha1),
        &MemorySink::default(),
    )
    .await
    .unwrap();
    assert_eq!(git(&project, &["rev-parse", "HEAD"]), sha1);
}

#[tokio::test]
async fn lists_untracked_and_ignored_files() {
    let up = Upstream::new();
    let sha = up.commit(&[("a.txt", "one"), (".gitignore", "*.log\n")], "c1");
    let builds = TempDir::new().unwrap();
    let project = builds.path().join("proj");
    get_sources(&request(&project, &up.url(), &sha), &MemorySink::default())
        .await
        .unwrap();
    std::fs::write(project.join("u.txt"), "").unwrap();
    std::fs::write(project.join("x.log"), "").unwrap();
    std::fs::create_dir_all(project.join("d/e")).unwrap();
    std::fs::write(project.join("d/e/f g.txt"), "").unwrap();

    let mut files = list_untracked(&project).await.unwrap();
    files.sort();
    let files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(files, ["d/e/f g.txt", "u.txt", "x.log"]);

    let err = list_untracked(builds.path()).await.unwrap_err();
    assert!(err.to_string().contains("git ls-files"), "{err}");
}
