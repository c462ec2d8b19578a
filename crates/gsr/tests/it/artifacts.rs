//! Artifacts end to end: report formats, archive contents (globs, exclude, untracked,
//! names), `when`, size limits, empty selections, and dependency extraction.

use std::collections::BTreeMap;
use std::io::Read;

use gsr_sim::{ArtifactInput, Fault, FaultRoute, RequestLogEntry, VariableInput};

use crate::harness::{expect_status, Env};

/// One file entry of a zip archive: its bytes and unix permission bits.
#[derive(Debug, PartialEq, Eq)]
struct ZipFileEntry {
    data: Vec<u8>,
    mode: Option<u32>,
}

/// The file entries (directories left out) of a zip archive, by name.
fn zip_files(bytes: &[u8]) -> BTreeMap<String, ZipFileEntry> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a valid zip archive");
    let mut out = BTreeMap::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).expect("zip entry");
        if f.is_dir() {
            continue;
        }
        let mut data = Vec::new();
        f.read_to_end(&mut data).expect("zip entry content");
        out.insert(
            f.name().to_string(),
            ZipFileEntry {
                data,
                mode: f.unix_mode().map(|m| m & 0o7777),
            },
        );
    }
    out
}

fn artifact_uploads(log: &[RequestLogEntry], id: u64) -> Vec<&RequestLogEntry> {
    let path = format!("/api/v4/jobs/{id}/artifacts");
    log.iter()
        .filter(|r| r.method == "POST" && r.path == path)
        .collect()
}

async fn artifact_types(env: &Env, id: u64) -> Vec<String> {
    let mut types: Vec<String> = env
        .view(id)
        .await
        .artifacts
        .into_iter()
        .map(|a| a.artifact_type)
        .collect();
    types.sort();
    types
}

#[tokio::test]
async fn junit_report_is_uploaded_as_gzip_with_the_file_content() {
    let env = Env::new().await;
    let report = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
        <testsuites>\n  <testsuite name=\"rspec\" tests=\"2\" failures=\"0\">\n    \
        <testcase classname=\"a\" name=\"works\" time=\"0.01\"/>\n    \
        <testcase classname=\"b\" name=\"also works\" time=\"0.02\"/>\n  \
        </testsuite>\n</testsuites>\n";
    let spec = env
        .job(&[
            "printf '%s' \"$REPORT\" > rspec.xml",
            "mkdir -p cov && echo '<b/>' > cov/b.xml && echo '<a/>' > cov/a.xml",
        ])
        .with_variable(VariableInput::new("REPORT", report))
        .with_artifact(ArtifactInput::report("junit", ["rspec.xml"]))
        .with_artifact(ArtifactInput::report("cobertura", ["cov/*.xml"]));
    let id = env.enqueue(spec).await;
    let out = env.run_single(1).await;
    let view = expect_status(&env, id, "success", &out).await;

    assert_eq!(view.artifacts.len(), 2, "{view:?}");
    let a = view
        .artifacts
        .iter()
        .find(|a| a.artifact_type == "junit")
        .expect("junit artifact");
    assert_eq!(a.artifact_format, "gzip");
    assert!(a.filename.ends_with(".gz"), "{a:?}");

    let stored = env
        .admin
        .artifact(id, "junit")
        .await
        .unwrap()
        .expect("junit artifact stored");
    assert_eq!(stored.len() as u64, a.size);
    assert_eq!(&stored[..2], &[0x1f, 0x8b], "gzip magic");
    let mut unzipped = String::new();
    flate2::read::MultiGzDecoder::new(&stored[..])
        .read_to_string(&mut unzipped)
        .expect("valid gzip");
    assert_eq!(unzipped, report);

    // Several files: one gzip member per file, in name order.
    let stored = env
        .admin
        .artifact(id, "cobertura")
        .await
        .unwrap()
        .expect("cobertura artifact stored");
    let mut unzipped = String::new();
    flate2::read::MultiGzDecoder::new(&stored[..])
        .read_to_string(&mut unzipped)
        .expect("valid gzip");
    assert_eq!(unzipped, "<a/>\n<b/>\n");
    assert!(
        env.admin.artifact(id, "archive").await.unwrap().is_none(),
        "no archive was asked for"
    );
    let trace = env.trace(id).await;
    assert!(
        trace.contains("Uploading artifacts as \"junit\""),
        "{trace}"
    );
}

#[tokio::test]
async fn archive_contains_exactly_the_selected_files() {
    let env = Env::new().await;
    // Job 1: `**` and `*` globs, a directory, exclude, a name.
    let mut globs = env.job(&[
        "mkdir -p build/a/b docs/sub bin",
        "echo top > build/top.txt",
        "echo x > build/a/x.txt",
        "echo y > build/a/b/y.txt",
        "echo z > build/a/b/z.log",
        "echo a > docs/a.md",
        "echo b > docs/sub/b.md",
        "printf '#!/bin/sh\\necho run\\n' > bin/run.sh && chmod 755 bin/run.sh",
        "echo debug > bin/debug.log",
        "echo stray > stray.txt",
    ]);
    globs.name = Some("globs".into());
    globs = globs.with_artifact(ArtifactInput {
        name: Some("my-stuff".into()),
        expire_in: Some("1 week".into()),
        exclude: vec!["build/a/b/**".into(), "bin/*.log".into()],
        ..ArtifactInput::archive(["build/**/*.txt", "docs/*.md", "bin/"])
    });
    let a = env.enqueue(globs).await;

    // Job 2: untracked files join the paths; exclude applies to them too; tracked files
    // (even modified ones) are not untracked.
    let mut untracked = env.job(&[
        "mkdir -p dist",
        "echo bin > dist/out.bin",
        "echo new > new-file.txt",
        "echo tmp > scratch.tmp",
        // Ignored files are untracked too (gitlab-runner lists them with `git ls-files -o`).
        "printf 'ignored.log\\n' > .gitignore",
        "echo ignored > ignored.log",
        "echo changed >> README.md",
    ]);
    untracked.name = Some("untracked".into());
    untracked = untracked.with_artifact(ArtifactInput {
        untracked: true,
        exclude: vec!["*.tmp".into()],
        ..ArtifactInput::archive(["dist/"])
    });
    let b = env.enqueue(untracked).await;

    let out = env.run_single(2).await;
    let view_a = expect_status(&env, a, "success", &out).await;
    let view_b = expect_status(&env, b, "success", &out).await;

    assert_eq!(view_a.artifacts.len(), 1, "{view_a:?}");
    assert_eq!(view_a.artifacts[0].artifact_type, "archive");
    assert_eq!(view_a.artifacts[0].artifact_format, "zip");
    assert_eq!(view_a.artifacts[0].filename, "my-stuff.zip");
    assert_eq!(view_a.artifacts[0].expire_in.as_deref(), Some("1 week"));
    let zip_a = env
        .admin
        .artifact(a, "archive")
        .await
        .unwrap()
        .expect("archive stored");
    let files_a = zip_files(&zip_a);
    let names: Vec<&str> = files_a.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["bin/run.sh", "build/a/x.txt", "build/top.txt", "docs/a.md"],
        "trace:\n{}",
        env.trace(a).await
    );
    assert_eq!(files_a["build/a/x.txt"].data, b"x\n");
    assert_eq!(files_a["bin/run.sh"].data, b"#!/bin/sh\necho run\n");
    assert_eq!(files_a["bin/run.sh"].mode, Some(0o755), "mode kept");

    assert_eq!(view_b.artifacts.len(), 1, "{view_b:?}");
    assert_eq!(view_b.artifacts[0].filename, "default.zip");
    let zip_b = env
        .admin
        .artifact(b, "archive")
        .await
        .unwrap()
        .expect("archive stored");
    let files_b = zip_files(&zip_b);
    let names: Vec<&str> = files_b.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [".gitignore", "dist/out.bin", "ignored.log", "new-file.txt"],
        "trace:\n{}",
        env.trace(b).await
    );
    assert_eq!(files_b["new-file.txt"].data, b"new\n");
}

#[tokio::test]
async fn artifacts_when_follows_the_job_result() {
    let env = Env::new().await;
    let rules = |spec: gsr_sim::JobSpecInput| {
        spec.with_artifact(ArtifactInput {
            when: Some("on_failure".into()),
            ..ArtifactInput::archive(["arch.txt"])
        })
        .with_artifact(ArtifactInput {
            when: Some("on_success".into()),
            ..ArtifactInput::report("junit", ["junit.xml"])
        })
        .with_artifact(ArtifactInput {
            when: Some("always".into()),
            ..ArtifactInput::report("cobertura", ["cov.xml"])
        })
    };
    let make = "echo a > arch.txt; echo j > junit.xml; echo c > cov.xml";
    let failing = env.enqueue(rules(env.job(&[make, "exit 1"]))).await;
    let passing = env.enqueue(rules(env.job(&[make]))).await;
    let out = env.run_single(2).await;
    expect_status(&env, failing, "failed", &out).await;
    expect_status(&env, passing, "success", &out).await;

    assert_eq!(
        artifact_types(&env, failing).await,
        ["archive", "cobertura"],
        "failed job: on_failure and always\n{}",
        env.trace(failing).await
    );
    assert_eq!(
        artifact_types(&env, passing).await,
        ["cobertura", "junit"],
        "successful job: on_success and always\n{}",
        env.trace(passing).await
    );
    let trace = env.trace(failing).await;
    assert!(
        trace.contains("Uploading artifacts for failed job"),
        "{trace}"
    );
    let view = env.view(failing).await;
    assert_eq!(
        view.failure_reason.as_deref(),
        Some("script_failure"),
        "artifact uploads do not change the failure"
    );
    let trace = env.trace(passing).await;
    assert!(
        trace.contains("Uploading artifacts for successful job"),
        "{trace}"
    );
}

#[tokio::test]
async fn too_large_artifact_fails_the_job_with_a_clear_message() {
    let env = Env::with_config(|cfg| cfg.max_artifact_size = 4096).await;
    let spec = env
        .job(&["head -c 200000 /dev/urandom > big.bin", "echo script-done"])
        .with_artifact(ArtifactInput::archive(["big.bin"]));
    let id = env.enqueue(spec).await;
    let out = env.run_single(1).await;
    let view = expect_status(&env, id, "failed", &out).await;
    assert!(view.failure_reason.is_some(), "{view:?}");
    assert!(view.artifacts.is_empty(), "{view:?}");
    let trace = env.trace(id).await;
    assert!(trace.contains("script-done"), "{trace}");
    let line = trace
        .lines()
        .find(|l| l.contains("ERROR:") && (l.contains("413") || l.contains("too large")))
        .unwrap_or_else(|| panic!("no clear error line about the size: {trace}"));
    assert!(line.contains("archive"), "{line}");
    assert!(!trace.contains("Job succeeded"), "{trace}");
    assert_eq!(
        view.reported_checksum.as_deref(),
        Some(view.trace_checksum.as_str()),
        "the failure was reported with the full trace"
    );
    // 413 is final: gitlab-runner does not retry it.
    let log = env.admin.requests().await.unwrap();
    let uploads = artifact_uploads(&log, id);
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(uploads[0].status, 413);
}

#[tokio::test]
async fn paths_matching_nothing_warn_and_upload_nothing() {
    let env = Env::new().await;
    let spec = env
        .job(&["echo nothing-to-keep"])
        .with_artifact(ArtifactInput::archive(["no-such-dir/", "out/**/*.bin"]));
    let id = env.enqueue(spec).await;
    let out = env.run_single(1).await;
    let view = expect_status(&env, id, "success", &out).await;
    assert!(view.artifacts.is_empty(), "{view:?}");
    assert!(env.admin.artifact(id, "archive").await.unwrap().is_none());
    let trace = env.trace(id).await;
    assert!(
        trace
            .lines()
            .any(|l| l.contains("WARNING:") && l.contains("no-such-dir/")),
        "{trace}"
    );
    assert!(trace.contains("Job succeeded"), "{trace}");
    let log = env.admin.requests().await.unwrap();
    assert!(
        artifact_uploads(&log, id).is_empty(),
        "an empty archive was uploaded"
    );
}

#[tokio::test]
async fn dependency_artifacts_keep_content_and_executable_bit() {
    let env = Env::new().await;
    let out_dir = env.dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out_var = VariableInput::new("OUT", out_dir.to_string_lossy());

    let mut build = env
        .job(&[
            "printf '#!/usr/bin/env bash\\necho \"tool says: $1\"\\n' > tool.sh",
            "chmod 755 tool.sh",
            "mkdir -p data",
            "head -c 5000 /dev/urandom > data/blob.bin",
            "chmod 640 data/blob.bin",
            "cp tool.sh \"$OUT/a-tool.sh\"",
            "cp data/blob.bin \"$OUT/a-blob.bin\"",
        ])
        .with_variable(out_var.clone())
        .with_artifact(ArtifactInput::archive(["tool.sh", "data/"]));
    build.name = Some("build".into());
    let a = env.enqueue(build).await;

    let mut use_it = env
        .job(&[
            "test -x tool.sh",
            "./tool.sh from-job-b",
            "cp tool.sh \"$OUT/b-tool.sh\"",
            "cp data/blob.bin \"$OUT/b-blob.bin\"",
            "stat -c '%a' tool.sh data/blob.bin > \"$OUT/b-modes.txt\"",
        ])
        .with_variable(out_var);
    // A fresh clone: whatever job A left in the checkout is gone; only the artifacts bring
    // the files back.
    use_it.allow_git_fetch = Some(false);
    use_it.dependencies = vec![a];
    let b = env.enqueue(use_it).await;

    let out = env.run_single(2).await;
    expect_status(&env, a, "success", &out).await;
    expect_status(&env, b, "success", &out).await;
    let trace_b = env.trace(b).await;
    assert!(trace_b.contains("Created fresh repository."), "{trace_b}");
    assert!(trace_b.contains("tool says: from-job-b"), "{trace_b}");

    let read = |name: &str| std::fs::read(out_dir.join(name)).unwrap();
    assert_eq!(read("a-tool.sh"), read("b-tool.sh"));
    assert_eq!(read("a-blob.bin"), read("b-blob.bin"));
    assert_eq!(read("a-blob.bin").len(), 5000);
    assert_eq!(
        String::from_utf8(read("b-modes.txt")).unwrap(),
        "755\n640\n"
    );
}

#[tokio::test]
async fn artifact_transfers_survive_dropped_connections_and_503() {
    let env = Env::new().await;
    let mut build = env
        .job(&["mkdir -p out", "seq 1 20000 > out/numbers.txt"])
        .with_artifact(ArtifactInput::archive(["out/"]));
    build.name = Some("build".into());
    let a = env.enqueue(build).await;
    let mut use_it = env.job(&["test \"$(tail -n 1 out/numbers.txt)\" = 20000"]);
    use_it.allow_git_fetch = Some(false);
    use_it.dependencies = vec![a];
    let b = env.enqueue(use_it).await;
    for fault in [
        Fault::drop_connection(FaultRoute::UploadArtifacts, 1),
        Fault::status(FaultRoute::UploadArtifacts, 503, 1),
        Fault::drop_connection(FaultRoute::DownloadArtifacts, 1),
    ] {
        env.admin.fault(fault).await.unwrap();
    }
    let out = env.run_single(2).await;
    expect_status(&env, a, "success", &out).await;
    expect_status(&env, b, "success", &out).await;
    let zip = env
        .admin
        .artifact(a, "archive")
        .await
        .unwrap()
        .expect("archive stored");
    let files = zip_files(&zip);
    let expected: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert_eq!(files["out/numbers.txt"].data, expected.as_bytes());
    let log = env.admin.requests().await.unwrap();
    let uploads = artifact_uploads(&log, a);
    assert_eq!(uploads.len(), 3, "drop, 503, then stored: {uploads:?}");
    assert_eq!(uploads.last().unwrap().status, 201);
    let downloads = log
        .iter()
        .filter(|r| r.method == "GET" && r.path == format!("/api/v4/jobs/{a}/artifacts"))
        .count();
    assert_eq!(downloads, 2, "one dropped, one served");
}
