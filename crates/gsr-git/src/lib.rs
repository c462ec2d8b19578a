//! Fetching job sources with the system git and the job token.
//!
//! Why: every job starts in a checkout of its commit, prepared the way `gitlab-runner` does
//! it (`RUNNER-PROTOCOL.md` §6.3), so traces, `GIT_STRATEGY`, `GIT_DEPTH`, `GIT_CLEAN_FLAGS`,
//! submodules and reused build directories behave as users expect. The system `git` does
//! the work (no libgit2): it is what users debug against, and it supports every transport,
//! shallow clones, sha256 repositories and submodules.
//!
//! The job token is the sensitive part. GitLab sends it inside the repository URL
//! (`https://gitlab-ci-token:<token>@host/path.git`). Here it is:
//! - stripped from the URL before git sees it, so it is never in `.git/config` nor in any
//!   process's argv (`/proc/<pid>/cmdline` is readable by every local user);
//! - handed to git only in the environment of its child processes, where a credential
//!   helper given on the command line (`-c credential.<scheme://host>.helper=…`) reads it,
//!   scoped to the GitLab host so other hosts (foreign submodules) never get it;
//! - redacted from everything git prints before it reaches the [`LogSink`] or a
//!   [`GitError`].
//!
//! Git runs in the runner's context, not in the job's sandbox, so its children get a
//! scrubbed environment (an allow-list: `PATH`, `HOME`, locale, proxies, CA bundles, git
//! config locations) and command-line settings that neutralise what a previous job could
//! have planted in a reused `.git` (hooks, fsmonitor, user credential helpers). On reuse the
//! repository's `config` and `hooks` are deleted before `git init` recreates them.
//!
//! Layout:
//! - this file: the public API ([`get_sources`], [`list_untracked`]) and the
//!   gitlab-runner sequence (strategies, init, fetch, checkout, clean, LFS, submodules).
//! - `remote`: splitting the URL into a credential-free URL and the credentials.
//! - `cmd`: running one git child (environment, credentials, output streaming and
//!   redaction, error messages).

#![warn(missing_docs)]

mod cmd;
mod remote;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use gsr_exec::LogSink;
use secrecy::{ExposeSecret, SecretString};

use crate::cmd::{shell_quote, Git, Redactor};
use crate::remote::Remote;

/// `GIT_STRATEGY`: how the project directory is prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitStrategy {
    /// Wipe the project directory, then fetch into a fresh repository.
    Clone,
    /// Reuse the repository left by a previous job and fetch incrementally.
    Fetch,
    /// No git at all; the project directory is only created.
    None,
    /// Wipe the project directory and leave it empty.
    Empty,
}

impl FromStr for GitStrategy {
    type Err = GitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "clone" => Ok(GitStrategy::Clone),
            "fetch" => Ok(GitStrategy::Fetch),
            "none" => Ok(GitStrategy::None),
            "empty" => Ok(GitStrategy::Empty),
            _ => Err(GitError::InvalidStrategy(s.to_owned())),
        }
    }
}

impl fmt::Display for GitStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GitStrategy::Clone => "clone",
            GitStrategy::Fetch => "fetch",
            GitStrategy::None => "none",
            GitStrategy::Empty => "empty",
        })
    }
}

/// `GIT_SUBMODULE_STRATEGY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubmoduleStrategy {
    /// Submodules are left alone (the default).
    #[default]
    None,
    /// Top-level submodules are initialised and updated.
    Normal,
    /// Submodules are initialised and updated recursively.
    Recursive,
}

impl FromStr for SubmoduleStrategy {
    type Err = GitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "" => Ok(SubmoduleStrategy::None),
            "normal" => Ok(SubmoduleStrategy::Normal),
            "recursive" => Ok(SubmoduleStrategy::Recursive),
            _ => Err(GitError::InvalidSubmoduleStrategy(s.to_owned())),
        }
    }
}

impl fmt::Display for SubmoduleStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SubmoduleStrategy::None => "none",
            SubmoduleStrategy::Normal => "normal",
            SubmoduleStrategy::Recursive => "recursive",
        })
    }
}

/// Everything [`get_sources`] needs, resolved from the job (`git_info`, variables).
#[derive(Debug, Clone)]
pub struct SourcesRequest {
    /// The checkout directory (`CI_PROJECT_DIR`).
    pub project_dir: PathBuf,
    /// `git_info.repo_url`, with the `gitlab-ci-token:<job token>@` userinfo GitLab puts in.
    pub repo_url: SecretString,
    /// The commit to check out (hex).
    pub sha: String,
    /// The branch or tag name, for the log only.
    pub ref_name: String,
    /// `git_info.refspecs`, e.g. `+refs/heads/main:refs/remotes/origin/main`.
    pub refspecs: Vec<String>,
    /// `git_info.depth`: 0 = full history.
    pub depth: u32,
    /// `GIT_STRATEGY`.
    pub strategy: GitStrategy,
    /// `GIT_CLEAN_FLAGS`: empty means the default `-ffdx`, `none` disables `git clean`.
    pub clean_flags: String,
    /// `GIT_FETCH_EXTRA_FLAGS`: `None` or empty means `--prune --quiet`, `none` means no
    /// extra flags.
    pub fetch_extra_flags: Option<String>,
    /// `GIT_CHECKOUT` (default true).
    pub checkout: bool,
    /// `GIT_SUBMODULE_STRATEGY`.
    pub submodules: SubmoduleStrategy,
    /// `GIT_SUBMODULE_DEPTH`; `None` or 0 = full.
    pub submodule_depth: Option<u32>,
    /// `GIT_SUBMODULE_UPDATE_FLAGS`, appended to `git submodule update`.
    pub submodule_update_flags: Option<String>,
    /// `git_info.repo_object_format`: `sha1` (or empty) or `sha256`.
    pub object_format: String,
}

/// Why sources could not be prepared. Messages never contain the job token.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// `GIT_STRATEGY` has an unknown value.
    #[error("invalid GIT_STRATEGY {0:?}: expected one of clone, fetch, none, empty")]
    InvalidStrategy(String),
    /// `GIT_SUBMODULE_STRATEGY` has an unknown value.
    #[error("invalid GIT_SUBMODULE_STRATEGY {0:?}: expected one of none, normal, recursive")]
    InvalidSubmoduleStrategy(String),
    /// The request itself is unusable (bad sha, object format, URL, refspec).
    #[error("invalid sources request: {0}")]
    InvalidRequest(String),
    /// `git` could not be started.
    #[error("could not run git (is it installed and on PATH?): {0}")]
    Spawn(#[source] io::Error),
    /// A file-system operation on the project directory failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A git command exited unsuccessfully.
    #[error("`{command}` failed ({status}){}", if detail.is_empty() { String::new() } else { format!(": {detail}") })]
    Command {
        /// The command, shortened and without credentials (e.g. `git fetch origin`).
        command: String,
        /// `exit code N` or `signal N`.
        status: String,
        /// The last lines git printed on stderr, redacted.
        detail: String,
    },
    /// The fetched refs do not contain the job's commit.
    #[error(
        "commit {sha} (ref {ref_name}) is not in the fetched history; it may have been \
         force-pushed away, or GIT_DEPTH is too small to reach it"
    )]
    CommitNotFound {
        /// The job's commit.
        sha: String,
        /// The job's ref.
        ref_name: String,
    },
}

/// Prepare `req.project_dir` as `req.strategy` says, writing gitlab-runner-style progress
/// lines and git's own output into `log`.
pub async fn get_sources(req: &SourcesRequest, log: &dyn LogSink) -> Result<(), GitError> {
    let dir = req.project_dir.as_path();
    match req.strategy {
        GitStrategy::None => {
            notice(log, "Skipping Git repository setup");
            return create_dir(dir);
        }
        GitStrategy::Empty => {
            notice(
                log,
                "Skipping Git repository setup and creating an empty build directory",
            );
            wipe_dir(dir)?;
            return create_dir(dir);
        }
        GitStrategy::Clone | GitStrategy::Fetch => {}
    }

    let sha256 = validate(req)?;
    let remote = Remote::parse(&req.repo_url)?;
    let redactor = Redactor::new(secrets_of(&req.repo_url));
    let git = Git {
        dir,
        creds: remote.creds.as_ref(),
        log: Some(log),
        redactor: redactor.clone(),
        rewrite_ssh: false,
    };

    if req.depth > 0 {
        notice(
            log,
            &format!("Fetching changes with git depth set to {}...", req.depth),
        );
    } else {
        notice(log, "Fetching changes...");
    }
    if req.strategy == GitStrategy::Clone {
        wipe_dir(dir)?;
    }
    prepare_existing(dir, sha256, log)?;
    let fresh = !dir.join(".git").exists();
    create_dir(dir)?;

    // init (re-init of a reused repository recreates its config), then the remote
    let mut init: Vec<&str> = vec!["init", "--template="];
    if sha256 {
        init.push("--object-format=sha256");
    }
    init.push(".");
    git.run("git init", &init).await?;
    let add = git
        .capture(&["remote", "add", "origin", &remote.url])
        .await?;
    if add.status.success() {
        // The remote is re-added on every reuse too (the config was deleted); only a new
        // repository is announced.
        if fresh {
            notice(log, "Created fresh repository.");
        }
    } else {
        git.run(
            "git remote set-url origin",
            &["remote", "set-url", "origin", &remote.url],
        )
        .await?;
    }

    // fetch
    let mut fetch: Vec<String> = vec![
        "fetch".into(),
        "origin".into(),
        "--no-recurse-submodules".into(),
    ];
    fetch.extend(req.refspecs.iter().cloned());
    if req.depth > 0 {
        fetch.push("--depth".into());
        fetch.push(req.depth.to_string());
    } else if dir.join(".git").join("shallow").exists() {
        fetch.push("--unshallow".into());
    }
    fetch.extend(fetch_flags(req.fetch_extra_flags.as_deref()));
    git.run("git fetch origin", &fetch).await?;

    if !req.checkout {
        notice(log, "Skipping Git checkout");
        notice(log, "Skipping Git submodules setup");
        return Ok(());
    }

    // checkout and clean
    let short = &req.sha[..req.sha.len().min(8)];
    notice(
        log,
        &format!(
            "Checking out {short} as detached HEAD (ref is {})...",
            req.ref_name
        ),
    );
    let commit = format!("{}^{{commit}}", req.sha);
    if !git
        .capture(&["cat-file", "-e", &commit])
        .await?
        .status
        .success()
    {
        return Err(GitError::CommitNotFound {
            sha: req.sha.clone(),
            ref_name: req.ref_name.clone(),
        });
    }
    git.run(
        &format!("git checkout {short}"),
        &[
            "-c",
            "submodule.recurse=false",
            "checkout",
            "-f",
            "-q",
            &req.sha,
        ],
    )
    .await?;
    let clean = clean_flags(&req.clean_flags);
    if !clean.is_empty() {
        let mut args = vec!["clean".to_owned()];
        args.extend(clean.iter().cloned());
        git.run("git clean", &args).await?;
    }
    lfs_pull(&git).await?;

    submodules(req, &git, &clean, redactor).await
}

/// `git ls-files -o -z` in `project_dir`: every file git does not track, ignored ones
/// included (what `artifacts:untracked` and `cache:untracked` want). Paths are relative to
/// `project_dir`; an untracked nested repository shows up as its directory. Fails when
/// `project_dir` is not a git work tree (e.g. after `GIT_STRATEGY=none`).
pub async fn list_untracked(project_dir: &Path) -> Result<Vec<PathBuf>, GitError> {
    use std::os::unix::ffi::OsStrExt;

    let git = Git {
        dir: project_dir,
        creds: None,
        log: None,
        redactor: Redactor::default(),
        rewrite_ssh: false,
    };
    let done = git.capture(&["ls-files", "-o", "-z"]).await?;
    let done = git.check("git ls-files -o", done)?;
    Ok(done
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let p = p.strip_suffix(b"/").unwrap_or(p);
            PathBuf::from(std::ffi::OsStr::from_bytes(p))
        })
        .collect())
}

async fn submodules(
    req: &SourcesRequest,
    git: &Git<'_>,
    clean: &[String],
    redactor: Redactor,
) -> Result<(), GitError> {
    let recursive = match req.submodules {
        SubmoduleStrategy::None => {
            notice(git.log.expect("log"), "Skipping Git submodules setup");
            return Ok(());
        }
        SubmoduleStrategy::Normal => false,
        SubmoduleStrategy::Recursive => true,
    };
    let log = git.log.expect("log");
    notice(
        log,
        if recursive {
            "Updating/initializing submodules recursively..."
        } else {
            "Updating/initializing submodules..."
        },
    );
    let git = Git {
        dir: git.dir,
        creds: git.creds,
        log: git.log,
        redactor,
        rewrite_ssh: true,
    };
    let rec: &[&str] = if recursive { &["--recursive"] } else { &[] };

    git.run("git submodule init", &["submodule", "init"])
        .await?;
    let mut sync = vec!["submodule", "sync"];
    sync.extend(rec);
    git.run("git submodule sync", &sync).await?;

    // A previous job may have left local changes that would make the update refuse to
    // check out the new commit.
    let mut reset = vec!["submodule", "foreach", "--quiet"];
    reset.extend(rec);
    reset.push("git reset --hard -q");
    git.run("git submodule foreach git reset --hard", &reset)
        .await?;

    let mut update: Vec<String> = vec!["submodule".into(), "update".into(), "--init".into()];
    if recursive {
        update.push("--recursive".into());
    }
    if let Some(depth) = req.submodule_depth.filter(|d| *d > 0) {
        update.push("--depth".into());
        update.push(depth.to_string());
    }
    if let Some(flags) = &req.submodule_update_flags {
        update.extend(flags.split_whitespace().map(str::to_owned));
    }
    git.run("git submodule update", &update).await?;

    if !clean.is_empty() {
        let quoted: Vec<String> = clean.iter().map(|f| shell_quote(f)).collect();
        let command = format!("git clean {}", quoted.join(" "));
        let mut args = vec!["submodule", "foreach", "--quiet"];
        args.extend(rec);
        args.push(&command);
        git.run("git submodule foreach git clean", &args).await?;
    }
    Ok(())
}

/// `git lfs pull` when git-lfs is installed (the fetch itself runs with smudging disabled).
async fn lfs_pull(git: &Git<'_>) -> Result<(), GitError> {
    let installed = git.capture(&["lfs", "version"]).await?.status.success();
    if installed {
        git.run("git lfs pull", &["lfs", "pull"]).await?;
    }
    Ok(())
}

/// Check the request before anything touches the disk. Returns whether the repository
/// uses sha256 object names.
fn validate(req: &SourcesRequest) -> Result<bool, GitError> {
    let sha256 = match req.object_format.trim() {
        "" | "sha1" => false,
        "sha256" => true,
        other => {
            return Err(GitError::InvalidRequest(format!(
                "unknown repository object format {other:?} (expected sha1 or sha256)"
            )))
        }
    };
    let hex = req.sha.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex || req.sha.len() < 4 || req.sha.len() > 64 {
        return Err(GitError::InvalidRequest(format!(
            "commit {:?} is not a hexadecimal object name",
            req.sha
        )));
    }
    if let Some(bad) = req.refspecs.iter().find(|r| r.starts_with('-')) {
        return Err(GitError::InvalidRequest(format!(
            "refspec {bad:?} must not start with '-'"
        )));
    }
    Ok(sha256)
}

/// Every form of the password found in the URL, for redaction.
fn secrets_of(url: &SecretString) -> Vec<SecretString> {
    let url = url.expose_secret();
    let Some(rest) = url.split_once("://").map(|(_, r)| r) else {
        return Vec::new();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return Vec::new();
    };
    let Some((_, pass)) = userinfo.split_once(':') else {
        return Vec::new();
    };
    let mut out = vec![SecretString::from(pass)];
    if let Ok(parsed) = Remote::parse(&SecretString::from(format!("https://{authority}/"))) {
        if let Some(creds) = parsed.creds {
            out.push(creds.password);
        }
    }
    out
}

/// `GIT_CLEAN_FLAGS` as arguments: empty means `-ffdx`, `none` means no clean.
fn clean_flags(flags: &str) -> Vec<String> {
    match flags.trim() {
        "" => vec!["-ffdx".to_owned()],
        "none" => Vec::new(),
        flags => flags.split_whitespace().map(str::to_owned).collect(),
    }
}

/// `GIT_FETCH_EXTRA_FLAGS` as arguments.
fn fetch_flags(flags: Option<&str>) -> Vec<String> {
    match flags.map(str::trim) {
        None | Some("") => vec!["--prune".to_owned(), "--quiet".to_owned()],
        Some("none") => Vec::new(),
        Some(flags) => flags.split_whitespace().map(str::to_owned).collect(),
    }
}

/// Make a reused `.git` safe and usable: drop lock files a killed job left behind, drop
/// hooks and config a previous job could have planted (init recreates the config), and
/// start over when the object format changed.
fn prepare_existing(dir: &Path, sha256: bool, log: &dyn LogSink) -> Result<(), GitError> {
    let git_dir = dir.join(".git");
    let Ok(meta) = std::fs::symlink_metadata(&git_dir) else {
        return Ok(());
    };
    if !meta.is_dir() {
        // Not a repository we made (a gitlink file or a symlink): start over.
        return wipe_dir(dir);
    }
    let config = git_dir.join("config");
    let existing_sha256 = std::fs::read_to_string(&config)
        .map(|c| config_value(&c, "extensions", "objectformat").as_deref() == Some("sha256"))
        .unwrap_or(false);
    if existing_sha256 != sha256 {
        warning(
            log,
            "The repository object format changed; removing the old checkout",
        );
        return wipe_dir(dir);
    }
    remove_locks(&git_dir)?;
    remove_path(&config)?;
    remove_path(&git_dir.join("hooks"))?;
    Ok(())
}

/// Remove `*.lock` files anywhere in a git dir (submodule git dirs included), skipping the
/// object stores.
fn remove_locks(dir: &Path) -> Result<(), GitError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("reading {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_err(format!("reading {}", dir.display()), e))?;
        let path = entry.path();
        let file_type = entry
            .file_type()
            .map_err(|e| io_err(format!("inspecting {}", path.display()), e))?;
        if file_type.is_dir() {
            if entry.file_name() != "objects" {
                remove_locks(&path)?;
            }
        } else if path.extension().is_some_and(|e| e == "lock") {
            remove_path(&path)?;
        }
    }
    Ok(())
}

/// The value of `key` in `[section]` of a git config file (a minimal reader: enough for
/// `extensions.objectformat`, without running git in a directory we do not trust yet).
fn config_value(config: &str, section: &str, key: &str) -> Option<String> {
    let mut in_section = false;
    let mut found = None;
    for line in config.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            let name = header.split([']', ' ', '"']).next().unwrap_or("");
            in_section = name.eq_ignore_ascii_case(section);
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim().eq_ignore_ascii_case(key) {
                found = Some(v.trim().trim_matches('"').to_ascii_lowercase());
            }
        }
    }
    found
}

fn create_dir(dir: &Path) -> Result<(), GitError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(format!("creating {}", dir.display()), e))
}

/// Remove a file, symlink or directory tree if it exists.
fn remove_path(path: &Path) -> Result<(), GitError> {
    let result = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    result.map_err(|e| io_err(format!("removing {}", path.display()), e))
}

/// Remove a directory tree, also when a job left read-only directories in it (Go's module
/// cache does that).
fn wipe_dir(dir: &Path) -> Result<(), GitError> {
    if remove_path(dir).is_ok() {
        return Ok(());
    }
    make_writable(dir);
    remove_path(dir)
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_writable(&entry.path());
        }
    }
}

fn io_err(context: String, source: io::Error) -> GitError {
    GitError::Io { context, source }
}

/// A gitlab-runner "notice" line: bold green.
fn notice(log: &dyn LogSink, msg: &str) {
    log.write(format!("\x1b[32;1m{msg}\x1b[0;m\n").as_bytes());
}

/// A gitlab-runner warning line: yellow with `WARNING: `.
fn warning(log: &dyn LogSink, msg: &str) {
    log.write(format!("\x1b[0;33mWARNING: {msg}\x1b[0;m\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_parse() {
        assert_eq!("clone".parse::<GitStrategy>().unwrap(), GitStrategy::Clone);
        assert_eq!(
            " Fetch ".parse::<GitStrategy>().unwrap(),
            GitStrategy::Fetch
        );
        assert_eq!("none".parse::<GitStrategy>().unwrap(), GitStrategy::None);
        assert_eq!("empty".parse::<GitStrategy>().unwrap(), GitStrategy::Empty);
        let err = "klone".parse::<GitStrategy>().unwrap_err().to_string();
        assert!(err.contains("\"klone\""), "{err}");
        assert!(err.contains("GIT_STRATEGY"), "{err}");
        assert_eq!(
            "recursive".parse::<SubmoduleStrategy>().unwrap(),
            SubmoduleStrategy::Recursive
        );
        let err = "deep".parse::<SubmoduleStrategy>().unwrap_err().to_string();
        assert!(err.contains("\"deep\""), "{err}");
        assert_eq!(GitStrategy::Fetch.to_string(), "fetch");
    }

    #[test]
    fn flags() {
        assert_eq!(clean_flags(""), ["-ffdx"]);
        assert!(clean_flags("none").is_empty());
        assert_eq!(clean_flags("-ffdx -e keep/"), ["-ffdx", "-e", "keep/"]);
        assert_eq!(fetch_flags(None), ["--prune", "--quiet"]);
        assert!(fetch_flags(Some("none")).is_empty());
        assert_eq!(fetch_flags(Some("--tags")), ["--tags"]);
    }

    #[test]
    fn reads_object_format() {
        let cfg = "[core]\n\trepositoryformatversion = 1\n[extensions]\n\tobjectFormat = sha256\n";
        assert_eq!(
            config_value(cfg, "extensions", "objectformat").as_deref(),
            Some("sha256")
        );
        assert_eq!(config_value("[core]\n", "extensions", "objectformat"), None);
    }

    #[test]
    fn secrets_cover_raw_and_decoded() {
        let s = secrets_of(&SecretString::from("https://u:a%2Fb@h/p.git"));
        let s: Vec<&str> = s.iter().map(|s| s.expose_secret()).collect();
        assert_eq!(s, ["a%2Fb", "a/b"]);
        assert!(secrets_of(&SecretString::from("https://h/p.git")).is_empty());
    }
}
