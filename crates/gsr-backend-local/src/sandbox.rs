//! The optional bubblewrap sandbox: the `bwrap` argument list (a pure function, tested
//! below) and the start-up probe.
//!
//! What the sandbox gives a job, and why each part:
//!
//! - **own PID namespace** (`--unshare-pid`): the job sees only its own processes (not the
//!   claimer's, whose `/proc/<pid>/environ` would hold the runner token), and when its
//!   `gsr exec` ends or the sandbox is killed, every process inside dies with it
//!   (`--die-with-parent`: bwrap's init is killed with bwrap, and the kernel then kills the
//!   whole namespace) — no orphan survives, whatever the job started with `setsid`.
//!   (Measured: without `--die-with-parent`, killing bwrap leaves its init and the job's
//!   processes running.) Caveat: `--die-with-parent` ties bwrap to the *thread* that
//!   spawned it, so [`Backend::start`](gsr_backend::Backend::start) must run on a
//!   long-lived thread (a tokio worker or a `block_on` thread), not in `spawn_blocking`,
//!   whose threads exit when idle.
//! - **own mount namespace**: the system is bound read-only (`--ro-bind / /`), `/tmp` and the
//!   backend's root (where other jobs' dirs and the registry live) are empty tmpfs, the
//!   paths in [`LocalConfig::hide`](crate::LocalConfig::hide) (the control plane's data dir,
//!   its config file) are hidden the same way, and only the job's own dir is writable.
//! - **own IPC and UTS namespaces**, a new session (`--new-session`: no way to push input
//!   into a terminal the claimer may have).
//! - **network: shared by default.** `gsr exec` inside the sandbox is the one that talks to
//!   GitLab (trace, artifacts, final state, git), so it needs the network; an empty network
//!   namespace (`unshare_net`) leaves only a private loopback, so it only suits a GitLab
//!   reachable through a path bound into the sandbox, which nothing here sets up. The
//!   option exists for operators who provide that; it is off by default.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gsr_backend::BackendError;

/// How jobs are isolated on this host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Sandbox {
    /// A plain child process (scrubbed environment, own dir, own process group): no
    /// filesystem or PID isolation from other processes of the same user.
    #[default]
    None,
    /// bubblewrap (`bwrap`), see the module docs.
    Bwrap(BwrapOptions),
}

/// bubblewrap settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BwrapOptions {
    /// The `bwrap` binary; a bare name is looked up in `PATH`.
    pub program: PathBuf,
    /// Also give the job an empty network namespace (see the module docs: off by default
    /// because `gsr exec` must reach GitLab).
    pub unshare_net: bool,
}

impl Default for BwrapOptions {
    fn default() -> Self {
        Self {
            program: PathBuf::from("bwrap"),
            unshare_net: false,
        }
    }
}

/// The `bwrap` arguments that run `command` for the job dir `job_dir`. `hide` are paths
/// covered by an empty tmpfs (the backend root first, then the operator's list); the job
/// dir and the `gsr` binary are bound again after them so they stay reachable.
pub fn bwrap_args(
    opts: &BwrapOptions,
    job_dir: &Path,
    gsr_bin: &Path,
    hide: &[PathBuf],
) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |parts: &[&std::ffi::OsStr]| a.extend(parts.iter().map(|p| p.to_os_string()));
    push(&[
        "--die-with-parent".as_ref(),
        "--new-session".as_ref(),
        "--unshare-pid".as_ref(),
        "--unshare-ipc".as_ref(),
        "--unshare-uts".as_ref(),
    ]);
    if opts.unshare_net {
        push(&["--unshare-net".as_ref()]);
    }
    push(&["--ro-bind".as_ref(), "/".as_ref(), "/".as_ref()]);
    push(&["--dev".as_ref(), "/dev".as_ref()]);
    push(&["--proc".as_ref(), "/proc".as_ref()]);
    push(&["--tmpfs".as_ref(), "/tmp".as_ref()]);
    for h in hide {
        push(&["--tmpfs".as_ref(), h.as_os_str()]);
    }
    push(&[
        "--ro-bind".as_ref(),
        gsr_bin.as_os_str(),
        gsr_bin.as_os_str(),
    ]);
    push(&["--bind".as_ref(), job_dir.as_os_str(), job_dir.as_os_str()]);
    push(&["--chdir".as_ref(), job_dir.as_os_str()]);
    a
}

/// The `bwrap` binary to run: `program` itself when it has a slash, else the first match
/// in `PATH`.
pub fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Check that bubblewrap is installed and can create its namespaces here (it cannot in
/// many containers without user namespaces); the error says what to do.
pub async fn probe(opts: &BwrapOptions) -> Result<PathBuf, BackendError> {
    let unavailable = |message: String| BackendError::Unavailable {
        backend: "local".into(),
        message,
    };
    let program = find_program(&opts.program).ok_or_else(|| {
        unavailable(format!(
            "the bubblewrap sandbox was requested but `{}` is not installed (install the \
             `bubblewrap` package, or run jobs without --sandbox bwrap)",
            opts.program.display()
        ))
    })?;
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(bwrap_args(
        opts,
        Path::new("/"),
        Path::new("/bin/true"),
        &[],
    ))
    .arg("--")
    .arg("true")
    .env_clear()
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .map_err(|_| unavailable(format!("{} did not answer within 20 s", program.display())))?
        .map_err(|e| unavailable(format!("cannot run {}: {e}", program.display())))?;
    if !out.status.success() {
        return Err(unavailable(format!(
            "{} cannot create its namespaces here ({}); user namespaces may be disabled \
             (kernel.unprivileged_userns_clone, or a container without them)",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: Vec<OsString>) -> String {
        a.iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn default_sandbox_shares_the_network_and_hides_the_root() {
        let args = bwrap_args(
            &BwrapOptions::default(),
            Path::new("/srv/gsr/jobs/7-ab"),
            Path::new("/usr/bin/gsr"),
            &[PathBuf::from("/srv/gsr"), PathBuf::from("/etc/gsr")],
        );
        assert_eq!(
            strings(args),
            "--die-with-parent --new-session --unshare-pid --unshare-ipc --unshare-uts \
             --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp --tmpfs /srv/gsr --tmpfs /etc/gsr \
             --ro-bind /usr/bin/gsr /usr/bin/gsr --bind /srv/gsr/jobs/7-ab /srv/gsr/jobs/7-ab \
             --chdir /srv/gsr/jobs/7-ab"
        );
    }

    #[test]
    fn unshare_net_is_an_option() {
        let opts = BwrapOptions {
            unshare_net: true,
            ..BwrapOptions::default()
        };
        let args = strings(bwrap_args(&opts, Path::new("/j"), Path::new("/g"), &[]));
        assert!(
            args.contains("--unshare-uts --unshare-net --ro-bind / /"),
            "{args}"
        );
    }

    #[tokio::test]
    async fn a_missing_bwrap_is_a_clear_error() {
        let opts = BwrapOptions {
            program: PathBuf::from("/nonexistent/bwrap"),
            unshare_net: false,
        };
        let err = probe(&opts).await.unwrap_err().to_string();
        assert!(err.contains("not installed"), "{err}");
        assert!(err.contains("bubblewrap"), "{err}");
    }
}
