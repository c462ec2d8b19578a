use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gsr_artifacts::{extract_zip, select, write_gzip, write_raw, write_zip, ArtifactsError};
use tempfile::TempDir;
use zip::write::SimpleFileOptions;

use crate::touch;

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn paths(v: &[&str]) -> Vec<PathBuf> {
    v.iter().map(PathBuf::from).collect()
}

#[test]
fn zip_round_trip_keeps_content_modes_and_links() {
    let src = TempDir::new().unwrap();
    touch(
        src.path(),
        &["bin/run.sh", "docs/readme.md", "data/big.bin"],
    );
    // Bigger than any buffer, and incompressible enough to exercise streaming.
    let mut big = File::create(src.path().join("data/big.bin")).unwrap();
    let mut x: u32 = 1;
    for _ in 0..(300 * 1024) {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        big.write_all(&x.to_le_bytes()).unwrap();
    }
    drop(big);
    std::fs::set_permissions(
        src.path().join("bin/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::create_dir_all(src.path().join("empty")).unwrap();
    std::os::unix::fs::symlink("../docs/readme.md", src.path().join("bin/readme")).unwrap();

    let sel = select(
        src.path(),
        &["bin".into(), "docs/".into(), "data".into(), "empty".into()],
        &[],
        &[],
    )
    .unwrap();
    let out_dir = TempDir::new().unwrap();
    let archive = out_dir.path().join("artifacts.zip");
    let mut out = File::create(&archive).unwrap();
    let size = write_zip(src.path(), &sel.files, &mut out).unwrap();
    drop(out);
    assert_eq!(size, std::fs::metadata(&archive).unwrap().len());

    let dest = out_dir.path().join("dest");
    let count = extract_zip(&archive, &dest).unwrap();
    assert_eq!(count, 5);
    for f in ["bin/run.sh", "docs/readme.md", "data/big.bin"] {
        assert_eq!(
            std::fs::read(dest.join(f)).unwrap(),
            std::fs::read(src.path().join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(mode(&dest.join("bin/run.sh")), 0o755);
    assert_eq!(
        mode(&dest.join("docs/readme.md")),
        mode(&src.path().join("docs/readme.md"))
    );
    assert!(dest.join("empty").is_dir());
    let link = dest.join("bin/readme");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("../docs/readme.md")
    );
    // Modification times survive (DOS time: 2 s resolution).
    let t = |p: &Path| {
        std::fs::metadata(p)
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let diff = t(&dest.join("bin/run.sh")).abs_diff(t(&src.path().join("bin/run.sh")));
    assert!(diff <= 2, "mtime off by {diff}s");

    // Extracting again over the same tree replaces files.
    assert_eq!(extract_zip(&archive, &dest).unwrap(), 5);
}

#[test]
fn zip_of_a_directory_path_includes_the_subtree() {
    let src = TempDir::new().unwrap();
    touch(src.path(), &["dir/a", "dir/sub/b"]);
    let out_dir = TempDir::new().unwrap();
    let archive = out_dir.path().join("a.zip");
    write_zip(
        src.path(),
        &paths(&["dir"]),
        &mut File::create(&archive).unwrap(),
    )
    .unwrap();
    let mut zip = zip::ZipArchive::new(File::open(&archive).unwrap()).unwrap();
    let mut names: Vec<String> = zip.file_names().map(str::to_owned).collect();
    names.sort();
    assert_eq!(names, ["dir/", "dir/a", "dir/sub/", "dir/sub/b"]);
    let mut s = String::new();
    zip.by_name("dir/sub/b")
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "content of dir/sub/b\n");
}

#[test]
fn writers_refuse_paths_outside_the_project() {
    let outer = TempDir::new().unwrap();
    touch(outer.path(), &["secret", "proj/a"]);
    let project = outer.path().join("proj");
    std::os::unix::fs::symlink(outer.path(), project.join("up")).unwrap();
    let out = outer.path().join("out");
    for bad in ["../secret", "/etc/passwd", "up/secret"] {
        let err =
            write_zip(&project, &paths(&[bad]), &mut File::create(&out).unwrap()).unwrap_err();
        assert!(
            matches!(err, ArtifactsError::InvalidPath { .. }),
            "{bad}: {err}"
        );
        let err =
            write_raw(&project, &paths(&[bad]), &mut File::create(&out).unwrap()).unwrap_err();
        assert!(
            matches!(err, ArtifactsError::InvalidPath { .. }),
            "{bad}: {err}"
        );
    }
    // A symlink to a file outside is not followed by the report writers.
    std::os::unix::fs::symlink(outer.path().join("secret"), project.join("link")).unwrap();
    let err = write_raw(
        &project,
        &paths(&["link"]),
        &mut File::create(&out).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(err, ArtifactsError::NotAFile { .. }), "{err}");
}

/// An entry name, and the symlink target when it is a link.
type Entry<'a> = (&'a str, Option<&'a str>);

fn hostile_zip(dir: &Path, entries: &[Entry]) -> PathBuf {
    let path = dir.join("evil.zip");
    let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
    for (name, link) in entries {
        match link {
            Some(target) => zip
                .add_symlink(*name, *target, SimpleFileOptions::default())
                .unwrap(),
            None => {
                zip.start_file(*name, SimpleFileOptions::default()).unwrap();
                zip.write_all(b"pwned").unwrap();
            }
        }
    }
    zip.finish().unwrap();
    path
}

#[test]
fn malicious_zips_are_refused_and_write_nothing_outside() {
    let cases: &[(&[Entry], &str)] = &[
        (&[("ok.txt", None), ("../evil", None)], "'..'"),
        (&[("ok.txt", None), ("sub/../../evil", None)], "'..'"),
        (&[("/tmp/gsr-artifacts-abs-evil", None)], "absolute"),
        (&[("link", Some("/tmp")), ("link/evil", None)], "absolute"),
        (&[("link", Some("..")), ("link/evil", None)], "outside"),
        (&[("a/link", Some("../../x"))], "outside"),
    ];
    for (entries, reason) in cases {
        let tmp = TempDir::new().unwrap();
        let archive = hostile_zip(tmp.path(), entries);
        let dest = tmp.path().join("dest");
        let err = extract_zip(&archive, &dest).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ArtifactsError::UnsafeEntry { .. }) && msg.contains(reason),
            "{entries:?}: {msg}"
        );
        assert!(msg.starts_with("refusing to extract"), "{msg}");
        assert!(!tmp.path().join("evil").exists(), "{entries:?}");
        assert!(!Path::new("/tmp/gsr-artifacts-abs-evil").exists());
        assert!(!Path::new("/tmp/evil").exists());
        // Names are checked before anything is written.
        if reason == &"'..'" {
            assert!(!dest.join("ok.txt").exists());
        }
    }
}

#[test]
fn extraction_does_not_write_through_existing_symlinks() {
    let tmp = TempDir::new().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), "original").unwrap();
    let dest = tmp.path().join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    // Planted by an earlier job: a file link and a directory link pointing outside.
    std::os::unix::fs::symlink(outside.join("victim"), dest.join("file")).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("dir")).unwrap();

    let archive = hostile_zip(tmp.path(), &[("file", None)]);
    extract_zip(&archive, &dest).unwrap();
    assert_eq!(
        std::fs::read_to_string(outside.join("victim")).unwrap(),
        "original"
    );
    assert_eq!(std::fs::read_to_string(dest.join("file")).unwrap(), "pwned");

    let archive = hostile_zip(tmp.path(), &[("dir/victim", None)]);
    let err = extract_zip(&archive, &dest).unwrap_err();
    assert!(err.to_string().contains("outside the destination"), "{err}");
    assert_eq!(
        std::fs::read_to_string(outside.join("victim")).unwrap(),
        "original"
    );
}

#[test]
fn setuid_bits_are_not_restored() {
    let tmp = TempDir::new().unwrap();
    let archive = tmp.path().join("a.zip");
    let mut zip = zip::ZipWriter::new(File::create(&archive).unwrap());
    zip.start_file("x", SimpleFileOptions::default().unix_permissions(0o755))
        .unwrap();
    zip.write_all(b"x").unwrap();
    zip.finish().unwrap();
    // unix_permissions() already masks to 0o777; write the setuid bit into the central
    // directory's external attributes by hand.
    let mut bytes = std::fs::read(&archive).unwrap();
    let cd = bytes
        .windows(4)
        .position(|w| w == [0x50, 0x4b, 0x01, 0x02])
        .unwrap();
    let attrs = cd + 38;
    let setuid = 0o104_755u32 << 16;
    bytes[attrs..attrs + 4].copy_from_slice(&setuid.to_le_bytes());
    std::fs::write(&archive, bytes).unwrap();
    let mut check = zip::ZipArchive::new(File::open(&archive).unwrap()).unwrap();
    assert_eq!(check.by_index(0).unwrap().unix_mode(), Some(0o104_755));

    let dest = tmp.path().join("dest");
    extract_zip(&archive, &dest).unwrap();
    assert_eq!(mode(&dest.join("x")), 0o755);
}

#[test]
fn gzip_report_is_the_files_concatenated() {
    let src = TempDir::new().unwrap();
    touch(src.path(), &["reports/a.xml", "reports/b.xml"]);
    let out_dir = TempDir::new().unwrap();
    let path = out_dir.path().join("junit.gz");
    let mut out = File::create(&path).unwrap();
    let size = write_gzip(
        src.path(),
        &paths(&["reports/b.xml", "reports/a.xml"]),
        &mut out,
    )
    .unwrap();
    drop(out);
    assert_eq!(size, std::fs::metadata(&path).unwrap().len());
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(File::open(&path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "content of reports/b.xml\ncontent of reports/a.xml\n");
    // Each file is its own gzip member, named after the file.
    let first = flate2::read::GzDecoder::new(File::open(&path).unwrap());
    assert_eq!(
        first.header().unwrap().filename(),
        Some(&b"reports/b.xml"[..])
    );

    let err = write_gzip(src.path(), &[], &mut File::create(&path).unwrap()).unwrap_err();
    assert!(matches!(err, ArtifactsError::NoFiles));
}

#[test]
fn raw_needs_exactly_one_file() {
    let src = TempDir::new().unwrap();
    touch(src.path(), &["one", "two"]);
    let out_dir = TempDir::new().unwrap();
    let path = out_dir.path().join("raw");
    let err = write_raw(
        src.path(),
        &paths(&["one", "two"]),
        &mut File::create(&path).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(err, ArtifactsError::RawFileCount(2)), "{err}");
    assert_eq!(
        err.to_string(),
        "a raw artifact needs exactly one file, got 2"
    );

    let n = write_raw(
        src.path(),
        &paths(&["one"]),
        &mut File::create(&path).unwrap(),
    )
    .unwrap();
    assert_eq!(n, "content of one\n".len() as u64);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "content of one\n");

    std::fs::create_dir(src.path().join("d")).unwrap();
    let err = write_raw(
        src.path(),
        &paths(&["d"]),
        &mut File::create(&path).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(err, ArtifactsError::NotAFile { .. }), "{err}");
}
