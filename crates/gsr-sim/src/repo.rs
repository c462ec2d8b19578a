//! Bare repository chores done with the `git` CLI: creating a project's repository,
//! resolving the ref a job names, reading commit metadata, writing pipeline refs.
//!
//! GitLab knows all of this from Gitaly; the simulator asks `git` directly, at the moment
//! a project or job is created, so a job's `sha`, `ref_type`, `CI_COMMIT_*` and the
//! `refs/pipelines/<id>` ref the runner fetches are as real as GitLab's.

use std::path::Path;

use tokio::process::Command;

use crate::spec::{CommitInfo, RepoFacts};

/// Runs `git` with `args` in `dir`; stdout on success, stderr text on failure.
async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .output()
        .await
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Checks a project path the way GitLab does for namespaces and project slugs, and
/// splits it into (namespace, name).
pub(crate) fn split_project_path(path: &str) -> Result<(String, String), String> {
    let segments: Vec<&str> = path.split('/').collect();
    if segments.len() < 2 {
        return Err(format!(
            "path {path:?} needs a namespace: use group/project"
        ));
    }
    for seg in &segments {
        let ok_chars = !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        let ok_ends = !seg.starts_with(['.', '-'])
            && !seg.ends_with('.')
            && !seg.ends_with(".git")
            && !seg.ends_with(".atom");
        if !ok_chars || !ok_ends {
            return Err(format!(
                "path segment {seg:?} is invalid: use letters, digits, '_', '-', '.', \
                 not starting with '.' or '-', not ending with '.', '.git' or '.atom'"
            ));
        }
    }
    let name = segments[segments.len() - 1].to_string();
    let namespace = segments[..segments.len() - 1].join("/");
    Ok((namespace, name))
}

/// `git init --bare` with `main` as initial branch and pushes over HTTP enabled.
pub(crate) async fn init_bare(dir: &Path) -> Result<(), String> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    git(dir, &["init", "--bare", "--quiet", "--initial-branch=main"]).await?;
    git(dir, &["config", "http.receivepack", "true"]).await?;
    Ok(())
}

/// The default branch (HEAD). When HEAD names a branch that does not exist but others
/// do (the first push was not `main`), HEAD moves to the first of them, as GitLab makes
/// the first pushed branch the default.
async fn default_branch(dir: &Path) -> String {
    let head = git(dir, &["symbolic-ref", "--short", "HEAD"])
        .await
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "main".to_string());
    if git(dir, &["rev-parse", "--verify", "--quiet", "HEAD^{commit}"])
        .await
        .is_ok()
    {
        return head;
    }
    let branches = git(
        dir,
        &["for-each-ref", "--format=%(refname:short)", "refs/heads/"],
    )
    .await
    .unwrap_or_default();
    let mut names: Vec<&str> = branches.lines().filter(|l| !l.is_empty()).collect();
    names.sort_by_key(|n| !matches!(*n, "main" | "master"));
    match names.first() {
        Some(first) => {
            let target = format!("refs/heads/{first}");
            let _ = git(dir, &["symbolic-ref", "HEAD", &target]).await;
            (*first).to_string()
        }
        None => head,
    }
}

async fn rev_parse(dir: &Path, rev: &str) -> Option<String> {
    let spec = format!("{rev}^{{commit}}");
    git(dir, &["rev-parse", "--verify", "--quiet", &spec])
        .await
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Resolves what a job on `git_ref` needs from the repository. A `sha` given in the spec
/// is used for the commit metadata instead of the ref's tip.
pub(crate) async fn facts(dir: &Path, git_ref: &str, sha: Option<&str>) -> RepoFacts {
    let default_branch = default_branch(dir).await;
    let branch = rev_parse(dir, &format!("refs/heads/{git_ref}")).await;
    let tag = if branch.is_none() {
        rev_parse(dir, &format!("refs/tags/{git_ref}")).await
    } else {
        None
    };
    let ref_type = if branch.is_none() && tag.is_some() {
        "tag"
    } else {
        "branch"
    };
    let resolved = branch.or(tag);
    let commit_sha = sha.map(str::to_string).or_else(|| resolved.clone());
    let commit = match &commit_sha {
        Some(sha) => commit_info(dir, sha).await,
        None => None,
    };
    RepoFacts {
        ref_type,
        sha: resolved,
        default_branch,
        commit,
    }
}

async fn commit_info(dir: &Path, sha: &str) -> Option<CommitInfo> {
    let out = git(
        dir,
        &["log", "-1", "--format=%an <%ae>%x00%aI%x00%B", sha, "--"],
    )
    .await
    .ok()?;
    let mut parts = out.splitn(3, '\0');
    let author = parts.next()?.to_string();
    let timestamp = parts.next()?.to_string();
    let message = parts.next()?.trim_end_matches('\n').to_string() + "\n";
    Some(CommitInfo {
        message,
        author,
        timestamp,
    })
}

/// Writes `refs/pipelines/<id>` at `sha`; false when the commit is not in the repository.
pub(crate) async fn create_pipeline_ref(dir: &Path, pipeline_id: u64, sha: &str) -> bool {
    let name = format!("refs/pipelines/{pipeline_id}");
    git(dir, &["update-ref", &name, sha]).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_paths() {
        assert_eq!(
            split_project_path("group/project"),
            Ok(("group".to_string(), "project".to_string()))
        );
        assert_eq!(
            split_project_path("group/sub/project"),
            Ok(("group/sub".to_string(), "project".to_string()))
        );
        assert!(split_project_path("project").is_err());
        assert!(split_project_path("group/../x").is_err());
        assert!(split_project_path("group/p.git").is_err());
        assert!(split_project_path("group//p").is_err());
        assert!(split_project_path("group/-p").is_err());
    }
}
