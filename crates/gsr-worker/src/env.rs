//! The job's environment: GitLab's variables plus what the runner adds, as gitlab-runner
//! builds it (RUNNER-PROTOCOL §2.5), and where the job's directories are.
//!
//! Order matters because later entries win: runner base variables, then the job's own,
//! then the runner's version and environment markers; then the whole list is expanded once.
//! `file` variables become paths to files in the job's temp dir. Values travel to the
//! job process through its environment only (see `gsr_exec::script`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use gsr_job::{JobSpec, Variable, Variables};

use crate::RunnerIdentity;

/// The directories of one job.
#[derive(Debug, Clone)]
pub struct JobDirs {
    /// Root builds dir (`CI_BUILDS_DIR`).
    pub builds_dir: PathBuf,
    /// Checkout dir (`CI_PROJECT_DIR`).
    pub project_dir: PathBuf,
    /// `<project dir>.tmp`: file variables, downloaded archives (`RUNNER_TEMP_PROJECT_DIR`).
    pub tmp_dir: PathBuf,
}

impl JobDirs {
    /// The dotenv file steps append to (`$GITLAB_ENV`); sourced at the start of each step.
    pub fn gitlab_env(&self) -> PathBuf {
        self.tmp_dir.join("gitlab_runner_env")
    }

    /// gitlab-runner's layout. Shared builds dirs (shell) add `<short token>/<concurrent id>`
    /// so two runners or two concurrent jobs never share a checkout; `GIT_STRATEGY=empty`
    /// gets an `-empty` suffix so it never wipes a reusable checkout.
    pub fn new(
        builds_dir: &Path,
        job: &JobSpec,
        runner: &RunnerIdentity,
        shared: bool,
        concurrent_id: usize,
        empty_strategy: bool,
    ) -> Self {
        let mut project_dir = builds_dir.to_path_buf();
        if shared {
            project_dir.push(sanitize(&runner.short_token));
            project_dir.push(concurrent_id.to_string());
        }
        for part in job.project_full_path.split('/') {
            let p = sanitize(part);
            if !p.is_empty() {
                project_dir.push(p);
            }
        }
        if empty_strategy {
            let name = format!(
                "{}-empty",
                project_dir
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            );
            project_dir.set_file_name(name);
        }
        let mut tmp = project_dir.clone().into_os_string();
        tmp.push(".tmp");
        JobDirs {
            builds_dir: builds_dir.to_path_buf(),
            project_dir,
            tmp_dir: PathBuf::from(tmp),
        }
    }
}

/// Keep path components harmless: no separators, no `..`.
fn sanitize(part: &str) -> String {
    let s: String = part
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s == "." || s == ".." {
        "_".into()
    } else {
        s
    }
}

/// Build the full, expanded variable list for the job's processes.
pub fn job_variables(
    job: &JobSpec,
    dirs: &JobDirs,
    runner: &RunnerIdentity,
    concurrent_id: usize,
    shared: bool,
) -> Variables {
    let mut v = Variables::default();
    let path = |p: &Path| p.to_string_lossy().into_owned();
    // Runner base variables.
    v.push(Variable::raw("CI_BUILDS_DIR", path(&dirs.builds_dir)));
    v.push(Variable::raw("CI_PROJECT_DIR", path(&dirs.project_dir)));
    v.push(Variable::raw("CI_CONCURRENT_ID", concurrent_id.to_string()));
    v.push(Variable::raw(
        "CI_CONCURRENT_PROJECT_ID",
        concurrent_id.to_string(),
    ));
    v.push(Variable::raw("CI_SERVER", "yes"));
    v.push(Variable::raw(
        "CI_JOB_TIMEOUT",
        job.timeout.as_secs().to_string(),
    ));
    if let Some(image) = &job.image {
        v.push(Variable::raw("CI_JOB_IMAGE", image.name.clone()));
    }
    // The job's own variables (GitLab-sent): later duplicates win.
    for var in &job.variables.0 {
        v.push(var.clone());
    }
    // Runner markers that GitLab's values must not override.
    if shared {
        v.push(Variable::raw("CI_SHARED_ENVIRONMENT", "true"));
    } else {
        v.push(Variable::raw("CI_DISPOSABLE_ENVIRONMENT", "true"));
    }
    v.push(Variable::raw(
        "CI_RUNNER_SHORT_TOKEN",
        runner.short_token.clone(),
    ));
    v.push(Variable::raw("CI_RUNNER_VERSION", runner.version.clone()));
    v.push(Variable::raw("CI_RUNNER_REVISION", runner.revision.clone()));
    v.push(Variable::raw(
        "CI_RUNNER_EXECUTABLE_ARCH",
        format!("{}/{}", std::env::consts::OS, gsr_gitlab::go_arch()),
    ));
    v.push(Variable::raw(
        "RUNNER_TEMP_PROJECT_DIR",
        path(&dirs.tmp_dir),
    ));
    v.push(Variable::raw("GITLAB_ENV", path(&dirs.gitlab_env())));
    v.expanded()
}

/// Write `file` variables to `tmp_dir/<KEY>` (mode 0600) and return the process
/// environment with their paths in place of their values.
pub fn process_env(vars: &Variables, tmp_dir: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut env = Vec::new();
    for var in vars.effective() {
        if !valid_env_name(&var.key) {
            continue;
        }
        if var.file {
            std::fs::create_dir_all(tmp_dir)?;
            let file = tmp_dir.join(&var.key);
            write_private(&file, var.value.as_bytes())?;
            env.push((var.key.clone(), file.to_string_lossy().into_owned()));
        } else {
            env.push((var.key.clone(), var.value.clone()));
        }
    }
    Ok(env)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// Names a shell can export; others (GitLab allows few) are skipped rather than breaking
/// the step.
fn valid_env_name(k: &str) -> bool {
    !k.is_empty()
        && !k.as_bytes()[0].is_ascii_digit()
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Set or replace `key` in a process environment.
pub fn set_env(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    if let Some(slot) = env.iter_mut().find(|(k, _)| k == key) {
        slot.1 = value.to_string();
    } else {
        env.push((key.to_string(), value.to_string()));
    }
}

/// A duration from a variable like `RUNNER_AFTER_SCRIPT_TIMEOUT` (`300`, `5m`, `1h30m`, `90s`).
pub fn duration_var(vars: &Variables, key: &str) -> Option<Duration> {
    parse_duration(vars.get(key)?)
}

/// Parse Go-style durations (`1h2m3s`, `90s`, `5m`) or plain seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let n: f64 = num.parse().ok()?;
        num.clear();
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            0.001
        } else {
            match c {
                'h' => 3600.0,
                'm' => 60.0,
                's' => 1.0,
                _ => return None,
            }
        };
        total += n * unit;
    }
    if !num.is_empty() {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("abc"), None);
        assert_eq!(parse_duration("5x"), None);
    }

    #[test]
    fn path_components_are_sanitized() {
        assert_eq!(sanitize(".."), "_");
        assert_eq!(sanitize("a/b"), "a_b");
        assert_eq!(sanitize("my-proj.v2"), "my-proj.v2");
    }

    #[test]
    fn env_names() {
        assert!(valid_env_name("CI_JOB_ID"));
        assert!(!valid_env_name("1X"));
        assert!(!valid_env_name("A-B"));
    }
}
