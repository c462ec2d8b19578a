//! The docker backend's settings: a closed set of keys (unknown keys are an error), each
//! with a default that works on one machine with a local daemon.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// When to pull an image (GitLab's `pull_policy:` spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Pull every time; a failed pull fails the start.
    Always,
    /// Use the local image when there is one, pull otherwise (the default).
    IfNotPresent,
    /// Never pull: the image must be there.
    Never,
}

impl PullPolicy {
    /// GitLab's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "always",
            PullPolicy::IfNotPresent => "if-not-present",
            PullPolicy::Never => "never",
        }
    }

    /// Parse GitLab's spelling.
    pub fn parse(s: &str) -> Option<PullPolicy> {
        match s.trim().to_ascii_lowercase().as_str() {
            "always" => Some(PullPolicy::Always),
            "if-not-present" => Some(PullPolicy::IfNotPresent),
            "never" => Some(PullPolicy::Never),
            _ => None,
        }
    }
}

/// Settings of the docker backend (`[backend.docker]`-style tables; keys in snake case).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerSettings {
    /// Docker socket (`unix:///var/run/docker.sock` when unset; `DOCKER_HOST` is not read,
    /// so that the claimer's environment does not choose the daemon silently).
    pub socket: Option<String>,
    /// The `gsr` binary on the daemon's host, bind-mounted read-only into every job
    /// container at [`GSR_IN_CONTAINER`](crate::GSR_IN_CONTAINER). Unset: this process's
    /// own executable. It must run in the job's image (a glibc build needs a glibc image;
    /// a static musl build runs anywhere).
    pub gsr_binary: Option<PathBuf>,
    /// Image for jobs without `image:`.
    pub default_image: String,
    /// Pull policy when the job names none.
    pub pull_policy: PullPolicy,
    /// Pull policies a job may ask for; a job asking for another one is not run.
    pub allowed_pull_policies: Vec<PullPolicy>,
    /// Memory limit of each container (job and services), in bytes.
    pub memory_bytes: Option<i64>,
    /// CPU limit of each container, in CPUs (`1.5`).
    pub cpus: Option<f64>,
    /// Process limit of each container.
    pub pids_limit: Option<i64>,
    /// Run the job container (not the services) privileged. Opt-in: a privileged container
    /// is root on the daemon's host.
    pub privileged: bool,
    /// Extra `/etc/hosts` entries of the job container (`name:ip`).
    pub extra_hosts: Vec<String>,
    /// Extra arguments for `gsr exec` in the container (e.g. `--output-limit 8192`).
    pub exec_args: Vec<String>,
    /// Builds dir inside the job container (a per-job volume).
    pub builds_dir: String,
    /// Seconds between SIGTERM and SIGKILL on abort and timeout.
    pub stop_grace_secs: u64,
    /// Seconds added to the job's timeout before the container is stopped (the job's own
    /// timeout runs inside `gsr exec`; this is the backstop).
    pub timeout_margin_secs: u64,
    /// Seconds to wait for a pull.
    pub pull_timeout_secs: u64,
    /// Jobs at once at most (reported as `Capabilities::max_jobs`). Every job takes one
    /// network, and so one of the daemon's address pools: Docker's defaults give about 30
    /// (172.17–31.0.0/16 and 192.168.0.0/16 in /20s); start dockerd with e.g.
    /// `--default-address-pool base=10.128.0.0/16,size=24` for 256.
    pub max_jobs: Option<usize>,
    /// Extra labels on every container, network and volume (plain text, never secrets;
    /// the backend's own `gsr.*` labels win over these).
    pub labels: BTreeMap<String, String>,
}

impl Default for DockerSettings {
    fn default() -> Self {
        Self {
            socket: None,
            gsr_binary: None,
            default_image: "debian:bookworm-slim".to_string(),
            pull_policy: PullPolicy::IfNotPresent,
            allowed_pull_policies: vec![
                PullPolicy::Always,
                PullPolicy::IfNotPresent,
                PullPolicy::Never,
            ],
            memory_bytes: None,
            cpus: None,
            pids_limit: None,
            privileged: false,
            extra_hosts: Vec::new(),
            exec_args: Vec::new(),
            builds_dir: "/builds".to_string(),
            stop_grace_secs: 10,
            timeout_margin_secs: 60,
            pull_timeout_secs: 600,
            labels: BTreeMap::new(),
            max_jobs: None,
        }
    }
}

impl DockerSettings {
    /// Grace between SIGTERM and SIGKILL.
    pub fn stop_grace(&self) -> Duration {
        Duration::from_secs(self.stop_grace_secs)
    }

    /// Check values that do not need the daemon; the message names the key.
    pub fn check(&self) -> Result<(), String> {
        if self.default_image.trim().is_empty() {
            return Err("default_image: must not be empty".into());
        }
        if let Some(c) = self.cpus {
            if !(c.is_finite() && c > 0.0) {
                return Err(format!("cpus: must be a positive number, got {c}"));
            }
        }
        if let Some(m) = self.memory_bytes {
            // Docker's own minimum is 6 MiB.
            if m < 6 * 1024 * 1024 {
                return Err(format!("memory_bytes: at least 6 MiB, got {m}"));
            }
        }
        if let Some(p) = self.pids_limit {
            if p <= 0 {
                return Err(format!("pids_limit: must be positive, got {p}"));
            }
        }
        if !self.builds_dir.starts_with('/') {
            return Err(format!(
                "builds_dir: must be an absolute path, got {:?}",
                self.builds_dir
            ));
        }
        if self.max_jobs == Some(0) {
            return Err("max_jobs: must be at least 1".into());
        }
        if self.allowed_pull_policies.is_empty() {
            return Err("allowed_pull_policies: must not be empty".into());
        }
        if !self.allowed_pull_policies.contains(&self.pull_policy) {
            return Err(format!(
                "pull_policy: {} is not in allowed_pull_policies",
                self.pull_policy.as_str()
            ));
        }
        for h in &self.extra_hosts {
            if !h.contains(':') {
                return Err(format!("extra_hosts: {h:?} is not name:ip"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_and_defaults_check() {
        let s: DockerSettings = serde_json::from_str("{}").expect("defaults");
        assert!(s.check().is_ok());
        assert_eq!(s.pull_policy, PullPolicy::IfNotPresent);
        let e = serde_json::from_str::<DockerSettings>(r#"{"memroy_bytes": 5}"#)
            .expect_err("unknown key");
        assert!(e.to_string().contains("memroy_bytes"), "{e}");
        let s: DockerSettings =
            serde_json::from_str(r#"{"pull_policy": "never", "cpus": 0.5}"#).expect("parses");
        assert_eq!(s.pull_policy, PullPolicy::Never);
        let bad = DockerSettings {
            cpus: Some(0.0),
            ..DockerSettings::default()
        };
        assert!(bad.check().expect_err("bad cpus").starts_with("cpus:"));
        let bad = DockerSettings {
            allowed_pull_policies: vec![PullPolicy::Never],
            ..DockerSettings::default()
        };
        assert!(bad.check().expect_err("policy").starts_with("pull_policy:"));
    }
}
