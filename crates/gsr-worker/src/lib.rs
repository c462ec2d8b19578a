//! Runs one claimed job end to end: the part of `gsr` that `run-single`, `exec`, `webhook`
//! and every backend share (DESIGN §4).
//!
//! job payload → two-phase ack → prepare (dirs, executor) → sources (git, job token) →
//! dependency artifacts → steps (`script`, `release`, …) → `after_script` (always, own
//! timeout) → artifacts upload → final update. Throughout, a pump sends the trace and
//! listens for GitLab's cancel signals ([`uploader`]).
//!
//! The worker holds only the job token (a [`gsr_gitlab::JobClient`]); the runner token
//! never reaches it. Failures of the runner's own machinery become a failed job with a
//! readable trace line, never a crash: every stage returns an [`Outcome`](gsr_job::Outcome).
//!
//! Layout:
//! - [`env`]: directories and the job's environment.
//! - [`log`]: the runner's own trace lines and sections.
//! - [`uploader`]: trace pump, keep-alive, cancel signals, final update.
//! - [`job`]: the stage sequence.
//! - [`place`]: where a claimed job runs (in this process or on a backend) and routing.

pub mod env;
pub mod job;
pub mod log;
pub mod place;
pub mod uploader;

use std::path::PathBuf;

pub use job::{fail_unrunnable, run_job, JobReport};
pub use uploader::{Delivery, UploadTiming};

/// Who the runner is, for the trace header and `CI_RUNNER_*` variables.
#[derive(Debug, Clone)]
pub struct RunnerIdentity {
    /// Runner name (`--name`, default the host name).
    pub name: String,
    /// First 9 characters of the de-prefixed runner token (never the token itself).
    pub short_token: String,
    /// Runner manager id.
    pub system_id: String,
    /// `gsr` version.
    pub version: String,
    /// Source revision.
    pub revision: String,
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Root builds dir.
    pub builds_dir: PathBuf,
    /// Trace output limit in bytes.
    pub output_limit: u64,
    /// Runner identity.
    pub runner: RunnerIdentity,
    /// Slot number of this job among concurrent jobs (`CI_CONCURRENT_ID`).
    pub concurrent_id: usize,
    /// Trace/update timing.
    pub timing: UploadTiming,
    /// Send `PUT state=running` before anything else (two-phase commit).
    pub two_phase: bool,
}

/// This machine's host name, if the kernel reports one.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// gitlab-runner's short token: strip `glrt-`/`glrtr-`/`glcbt-`, a `t1_`-style partition
/// marker, or a `GR1348941`-style registration prefix, then take 9 characters.
pub fn short_token(token: &str) -> String {
    let mut t = token;
    for p in ["glrtr-", "glrt-", "glcbt-"] {
        if let Some(rest) = t.strip_prefix(p) {
            t = rest;
            break;
        }
    }
    let b = t.as_bytes();
    if b.len() > 3 && b[0] == b't' && b[1].is_ascii_digit() && b[2] == b'_' {
        t = &t[3..];
    }
    if b.len() > 9
        && t.starts_with("GR")
        && t.as_bytes()[2..9].iter().all(|c| c.is_ascii_hexdigit())
    {
        t = &t[9..];
    }
    t.chars().take(9).collect()
}

#[cfg(test)]
mod tests {
    use super::short_token;

    #[test]
    fn short_tokens() {
        assert_eq!(short_token("glrt-t1_abcdefghijklmn"), "abcdefghi");
        assert_eq!(short_token("glrt-abcdefghijklmn"), "abcdefghi");
        assert_eq!(short_token("glrtr-xyz"), "xyz");
        assert_eq!(short_token("GR1348941abcdefghijk"), "abcdefghi");
        assert_eq!(short_token("plainoldtoken1234"), "plainoldt");
    }
}
