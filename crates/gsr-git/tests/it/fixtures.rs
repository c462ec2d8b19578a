//! Fixture repositories and helpers shared by the tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use gsr_git::{GitStrategy, SourcesRequest, SubmoduleStrategy};
use secrecy::SecretString;
use tempfile::TempDir;

/// The fake job token every test puts into its repository URLs.
pub const TOKEN: &str = "glcbt-64_TestJobTokenDoNotLeak123";

/// Point every git (ours and the crate's) at a test-only global config: a fixed identity and
/// branch name, and `file://` allowed for submodules (git refuses it by default). Called by
/// every test first; the config dir lives as long as the test binary.
pub fn setup() {
    static CONFIG: OnceLock<PathBuf> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let dir = TempDir::new().unwrap().keep();
        let path = dir.join("gitconfig");
        std::fs::write(
            &path,
            "[user]\n\tname = Test\n\temail = test@example.com\n\
             [init]\n\tdefaultBranch = main\n\
             [protocol \"file\"]\n\tallow = always\n\
             [advice]\n\tdetachedHead = false\n",
        )
        .unwrap();
        std::env::set_var("GIT_CONFIG_GLOBAL", &path);
        std::env::set_var("GIT_CONFIG_NOSYSTEM", "1");
        path
    });
}

/// Run git in `dir`, panic on failure, return trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A bare "GitLab" repository fed from a work tree.
pub struct Upstream {
    pub tmp: TempDir,
    pub work: PathBuf,
    pub bare: PathBuf,
}

impl Upstream {
    pub fn new() -> Upstream {
        Self::with_format("sha1")
    }

    pub fn with_format(format: &str) -> Upstream {
        setup();
        let tmp = TempDir::new().unwrap();
        let work = tmp.path().join("work");
        let bare = tmp.path().join("group").join("proj.git");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&bare).unwrap();
        let fmt = format!("--object-format={format}");
        git(&bare, &["init", "-q", "--bare", &fmt]);
        git(&work, &["init", "-q", &fmt]);
        git(&work, &["remote", "add", "origin", &file_url(&bare)]);
        Upstream { tmp, work, bare }
    }

    /// Write files, commit, push `main`; returns the new commit id.
    pub fn commit(&self, files: &[(&str, &str)], msg: &str) -> String {
        for (name, content) in files {
            let path = self.work.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", msg]);
        git(
            &self.work,
            &["push", "-q", "origin", "HEAD:refs/heads/main"],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// The URL as GitLab would send it, with the job token as userinfo.
    pub fn url(&self) -> String {
        format!("file://gitlab-ci-token:{TOKEN}@{}", self.bare.display())
    }
}

pub fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// A request with gitlab-runner's defaults.
pub fn request(project_dir: &Path, url: &str, sha: &str) -> SourcesRequest {
    SourcesRequest {
        project_dir: project_dir.to_owned(),
        repo_url: SecretString::from(url),
        sha: sha.to_owned(),
        ref_name: "main".into(),
        refspecs: vec!["+refs/heads/main:refs/remotes/origin/main".into()],
        depth: 0,
        strategy: GitStrategy::Fetch,
        clean_flags: "-ffdx".into(),
        fetch_extra_flags: None,
        checkout: true,
        submodules: SubmoduleStrategy::None,
        submodule_depth: None,
        submodule_update_flags: None,
        object_format: "sha1".into(),
    }
}

/// The token appears nowhere: not in the log, not in the error, not in any file under the
/// project's `.git` (config, FETCH_HEAD, logs, submodule git dirs, ...).
pub fn assert_no_token(project_dir: &Path, log: &[u8], error: Option<&str>) {
    let log = String::from_utf8_lossy(log);
    assert!(!log.contains(TOKEN), "token in log:\n{log}");
    if let Some(error) = error {
        assert!(!error.contains(TOKEN), "token in error: {error}");
    }
    let git_dir = project_dir.join(".git");
    if git_dir.exists() {
        scan(&git_dir);
    }
}

fn scan(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            scan(&entry.path());
        } else if ft.is_file() {
            let bytes = std::fs::read(entry.path()).unwrap();
            assert!(
                !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
                "token in {}",
                entry.path().display()
            );
        }
    }
}
