use std::path::PathBuf;

use gsr_artifacts::select;
use tempfile::TempDir;

use crate::touch;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn names(files: &[PathBuf]) -> Vec<String> {
    files.iter().map(|p| p.display().to_string()).collect()
}

fn tree() -> TempDir {
    let dir = TempDir::new().unwrap();
    touch(
        dir.path(),
        &[
            "a.txt",
            "b.log",
            "docs/x.txt",
            "docs/deep/y.txt",
            "docs/deep/z.md",
            "build/out.bin",
            "build/obj/one.o",
            "build/obj/two.o",
            "build/tmp/cache",
        ],
    );
    std::fs::create_dir_all(dir.path().join("build/empty")).unwrap();
    dir
}

#[test]
fn doublestar_matches_nested_files() {
    let dir = tree();
    let sel = select(dir.path(), &s(&["**/*.txt"]), &[], &[]).unwrap();
    assert_eq!(
        names(&sel.files),
        ["a.txt", "docs/deep/y.txt", "docs/x.txt"]
    );
    assert!(sel.warnings.is_empty(), "{:?}", sel.warnings);

    // A single star stays within one directory level.
    let sel = select(dir.path(), &s(&["docs/*.txt"]), &[], &[]).unwrap();
    assert_eq!(names(&sel.files), ["docs/x.txt"]);
}

#[test]
fn a_directory_brings_its_subtree() {
    let dir = tree();
    let sel = select(dir.path(), &s(&["build/", "./docs/deep"]), &[], &[]).unwrap();
    assert_eq!(
        names(&sel.files),
        [
            "build/empty",
            "build/obj/one.o",
            "build/obj/two.o",
            "build/out.bin",
            "build/tmp/cache",
            "docs/deep/y.txt",
            "docs/deep/z.md",
        ]
    );
    // A glob matching a directory brings it whole too.
    let sel = select(dir.path(), &s(&["bui*"]), &[], &[]).unwrap();
    assert_eq!(sel.files.len(), 5);
}

#[test]
fn exclude_removes_matches() {
    let dir = tree();
    let sel = select(
        dir.path(),
        &s(&["build", "**/*.txt"]),
        &s(&["build/**/*.o", "build/tmp", "docs/deep/**"]),
        &[],
    )
    .unwrap();
    assert_eq!(
        names(&sel.files),
        ["a.txt", "build/empty", "build/out.bin", "docs/x.txt"]
    );
}

#[test]
fn untracked_is_merged_and_deduplicated() {
    let dir = tree();
    let untracked = vec![
        PathBuf::from("b.log"),
        PathBuf::from("a.txt"),
        PathBuf::from("docs/deep"),
        PathBuf::from("gone.txt"),
        PathBuf::from("../outside"),
    ];
    let sel = select(dir.path(), &s(&["a.txt"]), &s(&["**/*.md"]), &untracked).unwrap();
    assert_eq!(names(&sel.files), ["a.txt", "b.log", "docs/deep/y.txt"]);
    assert_eq!(sel.warnings.len(), 1, "{:?}", sel.warnings);
    assert!(sel.warnings[0].contains("../outside"));
}

#[test]
fn a_pattern_matching_nothing_warns() {
    let dir = tree();
    let sel = select(
        dir.path(),
        &s(&["foo/*.log", "missing.txt", "a.txt"]),
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(names(&sel.files), ["a.txt"]);
    assert_eq!(
        sel.warnings,
        [
            "foo/*.log: no matching files",
            "missing.txt: no matching files"
        ]
    );
}

#[test]
fn patterns_escaping_the_project_are_refused() {
    let outer = TempDir::new().unwrap();
    touch(outer.path(), &["secret.txt", "proj/a.txt"]);
    let project = outer.path().join("proj");
    std::os::unix::fs::symlink(outer.path(), project.join("up")).unwrap();
    let abs_inside = format!("{}/a.txt", project.display());
    let abs_outside = format!("{}/secret.txt", outer.path().display());
    let sel = select(
        &project,
        &s(&[
            "../secret.txt",
            "a/../../secret.txt",
            "../*",
            &abs_outside,
            &abs_inside,
            "up/secret.txt",
            "up/*.txt",
        ]),
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(names(&sel.files), ["a.txt"]);
    assert_eq!(sel.warnings.len(), 6, "{:#?}", sel.warnings);
    for w in &sel.warnings[..4] {
        assert!(w.contains("outside the project directory"), "{w}");
    }
    for w in &sel.warnings[4..] {
        assert!(w.contains("symlink that leads outside"), "{w}");
    }
    // The symlink itself can be archived (as a link): it is inside the project.
    let sel = select(&project, &s(&["up"]), &[], &[]).unwrap();
    assert_eq!(names(&sel.files), ["up"]);
}

#[test]
fn missing_project_dir_is_an_error() {
    let dir = TempDir::new().unwrap();
    let err = select(&dir.path().join("nope"), &s(&["x"]), &[], &[]).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}
