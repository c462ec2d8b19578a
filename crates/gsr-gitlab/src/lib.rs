//! GitLab coordinator client: everything `gsr` says to GitLab and understands of its replies.
//!
//! Why one crate: GitLab's runner protocol has many sharp edges (two-phase commit, 416
//! resync, 202 on final updates, `Job-Status` cancel signals, lenient JSON). Keeping every
//! one of them here means the worker and the control plane deal in meanings
//! ([`JobSignal`], [`PatchResult`], [`UpdateResult`]) and in the job model ([`gsr_job`]),
//! never in status codes or JSON. This is the only crate that knows GitLab's JSON.
//!
//! Layout:
//! - [`wire`]: serde types exactly as on the wire (private to the crate's users in spirit).
//! - [`convert`]: wire → [`gsr_job::JobSpec`], with salvage of id/token from bad payloads.
//! - [`client`]: [`Coordinator`] (runner-token calls), [`JobClient`] (job-token calls) and
//!   [`CoordinatorPool`] (many runners sharing HTTP clients, for `gsr serve`).
//! - [`retry`]: which failures are retried and how long to wait.
//! - [`features`]: the `info.features` this runner truthfully declares.
//! - [`system_id`]: the per-machine runner manager id.
//! - [`webhook`]: Job Hook payloads and the secret-token check.

pub mod client;
pub mod convert;
pub mod features;
pub mod retry;
pub mod system_id;
pub mod user_api;
pub mod webhook;
pub mod wire;

pub use client::{
    api_base, ClaimedJob, Coordinator, CoordinatorPool, GitlabError, JobClient, JobRequest,
    JobSignal, JobUpdate, PatchReply, PatchResult, RegisterOptions, Registered, UpdateReply,
    UpdateResult,
};
pub use convert::{parse_job, PayloadError};
pub use features::Features;
pub use retry::RetryPolicy;

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the runner says about itself in `info` and the User-Agent.
#[derive(Debug, Clone)]
pub struct RunnerInfo {
    /// `gsr`.
    pub name: String,
    /// Version.
    pub version: String,
    /// Source revision.
    pub revision: String,
    /// `linux`, …
    pub platform: String,
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// Executor name (`shell`, `docker`, …).
    pub executor: String,
    /// Shell (`bash`).
    pub shell: String,
    /// Declared features.
    pub features: Features,
}

impl RunnerInfo {
    /// Info for this build with the given executor and features.
    pub fn new(executor: &str, shell: &str, features: Features) -> Self {
        RunnerInfo {
            name: "gsr".into(),
            version: VERSION.into(),
            revision: option_env!("GSR_REVISION").unwrap_or("unknown").into(),
            platform: std::env::consts::OS.into(),
            architecture: go_arch().into(),
            executor: executor.into(),
            shell: shell.into(),
            features,
        }
    }

    /// `gsr <version> (<revision>; rust; <os>/<arch>)`, shaped like gitlab-runner's.
    pub fn user_agent(&self) -> String {
        format!(
            "gsr {} ({}; rust; {}/{})",
            self.version, self.revision, self.platform, self.architecture
        )
    }
}

/// The architecture name as Go (and so GitLab) spells it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        other => other,
    }
}
