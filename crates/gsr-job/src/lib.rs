//! The job model: what one claimed GitLab job asks a runner to do, and how it ended.
//!
//! Why a crate of its own: every other part of `gsr` (worker, executors, control plane)
//! talks about jobs, but only `gsr-gitlab` knows GitLab's JSON. Keeping the model free of
//! serde and I/O means a change in GitLab's wire format is absorbed in one place
//! (`gsr-gitlab`'s conversion) and never leaks into executors.
//!
//! Layout:
//! - [`JobSpec`] and its parts: the job as the worker sees it.
//! - [`variables`]: job variables, masking metadata and `$VAR` expansion.
//! - [`Outcome`] / [`FailureKind`]: how a job ended, independent of GitLab's spelling.
//!
//! Secrets (the job token, the repository URL that embeds it) are [`secrecy::SecretString`]
//! so that `Debug` output and logs never show them.

pub mod variables;

use std::time::Duration;

pub use secrecy::{ExposeSecret, SecretString};
pub use variables::{Variable, Variables};

/// One job claimed from GitLab, as the worker needs it.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// GitLab's job id.
    pub id: u64,
    /// The job token (`glcbt-…`): the only credential a worker holds.
    pub token: SecretString,
    /// Job name as written in `.gitlab-ci.yml`.
    pub name: String,
    /// Stage name.
    pub stage: String,
    /// Project id.
    pub project_id: u64,
    /// Project name (last path component).
    pub project_name: String,
    /// `namespace/project` path, used for `CI_PROJECT_DIR`.
    pub project_full_path: String,
    /// Pipeline id.
    pub pipeline_id: u64,
    /// Project default "git strategy = fetch".
    pub allow_git_fetch: bool,
    /// Where the sources come from.
    pub git: GitSource,
    /// Job timeout (`runner_info.timeout`), already capped by GitLab.
    pub timeout: Duration,
    /// All variables GitLab sent, in order.
    pub variables: Variables,
    /// Steps in order: `script` (before_script + script), `release`, `after_script`.
    pub steps: Vec<Step>,
    /// `hooks:` scripts, e.g. `pre_get_sources_script` / `post_get_sources_script`.
    pub hooks: Vec<Hook>,
    /// Artifact rules, one per archive or report.
    pub artifacts: Vec<ArtifactRule>,
    /// Jobs whose artifacts this job downloads first.
    pub dependencies: Vec<Dependency>,
    /// Cache rules (honoured by later issues; kept so nothing is lost).
    pub cache: Vec<CacheRule>,
    /// Container image, for backends that honour it.
    pub image: Option<Image>,
    /// Service containers, for backends that honour them.
    pub services: Vec<Image>,
    /// Registry credentials for pulling `image`/`services` (backends that pull images).
    pub registry_credentials: Vec<RegistryCredential>,
    /// Extra token prefixes GitLab asks the runner to mask.
    pub token_mask_prefixes: Vec<String>,
    /// Failure reasons the GitLab instance knows (empty = unknown, send the core set only).
    pub known_failure_reasons: Vec<String>,
    /// Whether GitLab wants section markers in the trace.
    pub trace_sections: bool,
}

/// Git source description.
#[derive(Debug, Clone)]
pub struct GitSource {
    /// Clone URL with `gitlab-ci-token:<job token>@` credentials.
    pub repo_url: SecretString,
    /// Commit to check out.
    pub sha: String,
    /// Previous commit of the pipeline (may be all zeros).
    pub before_sha: String,
    /// Branch or tag name.
    pub ref_name: String,
    /// `branch` or `tag`.
    pub ref_type: String,
    /// Refspecs to fetch (GitLab always sends them for modern jobs).
    pub refspecs: Vec<String>,
    /// Clone depth; 0 = full history.
    pub depth: u32,
    /// `sha1` or `sha256`.
    pub object_format: String,
}

/// Which part of the job a step is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepName {
    /// `before_script` + `script`.
    Script,
    /// `after_script`: runs always, with its own timeout.
    AfterScript,
    /// `release:` step.
    Release,
    /// Any other name GitLab may add.
    Other(String),
}

impl StepName {
    /// The name as GitLab spells it.
    pub fn as_str(&self) -> &str {
        match self {
            StepName::Script => "script",
            StepName::AfterScript => "after_script",
            StepName::Release => "release",
            StepName::Other(s) => s,
        }
    }

    /// Parse GitLab's spelling.
    pub fn parse(s: &str) -> Self {
        match s {
            "script" => StepName::Script,
            "after_script" => StepName::AfterScript,
            "release" => StepName::Release,
            other => StepName::Other(other.to_string()),
        }
    }
}

/// When a step, artifact or cache rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Only when everything before succeeded.
    OnSuccess,
    /// Only when something before failed.
    OnFailure,
    /// Regardless.
    Always,
}

impl When {
    /// Parse GitLab's spelling; unknown or empty means `on_success`, as gitlab-runner does.
    pub fn parse(s: &str) -> Self {
        match s {
            "on_failure" => When::OnFailure,
            "always" => When::Always,
            _ => When::OnSuccess,
        }
    }

    /// Does this rule apply given whether the job has succeeded so far?
    pub fn applies(self, succeeded: bool) -> bool {
        match self {
            When::OnSuccess => succeeded,
            When::OnFailure => !succeeded,
            When::Always => true,
        }
    }
}

/// One step of the job script.
#[derive(Debug, Clone)]
pub struct Step {
    /// Which step.
    pub name: StepName,
    /// Commands, one per script line.
    pub script: Vec<String>,
    /// Step timeout, if GitLab set one.
    pub timeout: Option<Duration>,
    /// When the step runs.
    pub when: When,
    /// Whether failure of this step fails the job.
    pub allow_failure: bool,
}

/// A `hooks:` script that runs around a runner stage.
#[derive(Debug, Clone)]
pub struct Hook {
    /// `pre_get_sources_script` or `post_get_sources_script` (others are ignored).
    pub name: String,
    /// Commands.
    pub script: Vec<String>,
}

/// Archive format of an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactFormat {
    /// Zip archive of the matched files (`archive` artifacts).
    Zip,
    /// Gzip of the concatenated matched files (reports).
    Gzip,
    /// The single matched file as is.
    Raw,
}

impl ArtifactFormat {
    /// Parse GitLab's spelling; empty means zip.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "zip" => Some(ArtifactFormat::Zip),
            "gzip" => Some(ArtifactFormat::Gzip),
            "raw" => Some(ArtifactFormat::Raw),
            _ => None,
        }
    }

    /// GitLab's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactFormat::Zip => "zip",
            ArtifactFormat::Gzip => "gzip",
            ArtifactFormat::Raw => "raw",
        }
    }
}

/// One artifact to collect and upload.
#[derive(Debug, Clone)]
pub struct ArtifactRule {
    /// Archive name without extension (`default` when empty).
    pub name: String,
    /// Also collect untracked files.
    pub untracked: bool,
    /// Paths and globs (`**` allowed), relative to the project dir.
    pub paths: Vec<String>,
    /// Globs to leave out.
    pub exclude: Vec<String>,
    /// When to upload.
    pub when: When,
    /// `expire_in` as GitLab spells it (`7 days`, `never`), passed through.
    pub expire_in: Option<String>,
    /// `archive`, `junit`, …
    pub artifact_type: String,
    /// Archive format.
    pub format: ArtifactFormat,
}

/// A job whose artifacts must be downloaded before the script runs.
#[derive(Debug, Clone)]
pub struct Dependency {
    /// The dependency's job id.
    pub id: u64,
    /// The dependency's job name.
    pub name: String,
    /// Token to download with (newer GitLab: the running job's own token).
    pub token: SecretString,
    /// Artifact archive file name, when there is one to download.
    pub artifacts_file: Option<String>,
}

/// A cache rule (kept for the cache issue).
#[derive(Debug, Clone)]
pub struct CacheRule {
    /// Cache key.
    pub key: String,
    /// Paths to cache.
    pub paths: Vec<String>,
    /// Also cache untracked files.
    pub untracked: bool,
    /// `pull`, `push` or `pull-push`.
    pub policy: String,
    /// When to save.
    pub when: When,
    /// Keys tried on restore miss.
    pub fallback_keys: Vec<String>,
}

/// A container image or service.
#[derive(Clone, Default)]
pub struct Image {
    /// Image reference.
    pub name: String,
    /// Entrypoint override.
    pub entrypoint: Vec<String>,
    /// Command override (services).
    pub command: Vec<String>,
    /// Aliases (services).
    pub aliases: Vec<String>,
    /// `pull_policy:` as GitLab sent it, lower case, in order (`always`, `if-not-present`,
    /// `never`); empty = the backend's default.
    pub pull_policy: Vec<String>,
    /// The service's own `variables:` (services only), in order. Their values are not
    /// shown by `Debug`.
    pub variables: Vec<(String, String)>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.variables.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Image")
            .field("name", &self.name)
            .field("entrypoint", &self.entrypoint)
            .field("command", &self.command)
            .field("aliases", &self.aliases)
            .field("pull_policy", &self.pull_policy)
            .field("variables", &keys)
            .finish()
    }
}

/// Credentials GitLab sends for pulling images (`credentials:` of type `registry`), e.g.
/// the job token for the project's own container registry.
#[derive(Debug, Clone)]
pub struct RegistryCredential {
    /// Registry host (and port), e.g. `registry.gitlab.example.com`.
    pub registry: String,
    /// User name (`gitlab-ci-token` for the job token).
    pub username: String,
    /// Password or token.
    pub password: SecretString,
}

/// Why a job failed, in the runner's terms. [`FailureKind::gitlab_reason`] gives GitLab's spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The user's script exited non-zero.
    Script,
    /// The runner or its environment failed (git, I/O, executor).
    RunnerSystem,
    /// The job timeout elapsed.
    JobExecutionTimeout,
    /// A dependency's artifacts could not be downloaded.
    MissingDependency,
    /// The job was cancelled (reported as `job_canceled`, mapped by GitLab's list).
    Canceled,
    /// The runner is shutting down.
    RunnerInterrupted,
}

impl FailureKind {
    /// The `failure_reason` value before mapping against the server's known list.
    pub fn gitlab_reason(self) -> &'static str {
        match self {
            FailureKind::Script => "script_failure",
            FailureKind::RunnerSystem => "runner_system_failure",
            FailureKind::JobExecutionTimeout => "job_execution_timeout",
            FailureKind::MissingDependency => "missing_dependency_failure",
            FailureKind::Canceled => "job_canceled",
            FailureKind::RunnerInterrupted => "runner_interrupted",
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every step that had to succeed did.
    Success,
    /// The job failed.
    Failed {
        /// Why.
        kind: FailureKind,
        /// Script exit code, when a script failed.
        exit_code: Option<i32>,
        /// A human-readable reason, printed in the trace's last line.
        message: String,
    },
}

impl Outcome {
    /// A failed outcome.
    pub fn failed(kind: FailureKind, exit_code: Option<i32>, message: impl Into<String>) -> Self {
        Outcome::Failed {
            kind,
            exit_code,
            message: message.into(),
        }
    }

    /// True for [`Outcome::Success`].
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// The value of `CI_JOB_STATUS` that `after_script` sees for this outcome.
    pub fn ci_job_status(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed {
                kind: FailureKind::JobExecutionTimeout,
                ..
            } => "timedout",
            Outcome::Failed {
                kind: FailureKind::Canceled,
                ..
            } => "canceled",
            Outcome::Failed { .. } => "failed",
        }
    }
}

/// Map a runner failure reason to one the GitLab instance understands, as gitlab-runner does.
///
/// `known` is `features.failure_reasons` from the job payload.
pub fn map_failure_reason(reason: &str, known: &[String]) -> &'static str {
    const ALWAYS: [&str; 3] = [
        "script_failure",
        "runner_system_failure",
        "job_execution_timeout",
    ];
    if let Some(r) = ALWAYS.iter().find(|r| **r == reason) {
        return r;
    }
    if known.iter().any(|k| k == reason) {
        // Static spelling for the reasons we ever produce.
        for r in [
            "missing_dependency_failure",
            "job_canceled",
            "runner_interrupted",
            "image_pull_failure",
            "runner_configuration_error",
            "runner_external_dependency_failure",
        ] {
            if r == reason {
                return r;
            }
        }
    }
    match reason {
        "image_pull_failure" | "runner_external_dependency_failure" => "runner_system_failure",
        "runner_configuration_error" => "script_failure",
        _ => "unknown_failure",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reason_mapping_follows_server_list() {
        let none: Vec<String> = vec![];
        assert_eq!(
            map_failure_reason("script_failure", &none),
            "script_failure"
        );
        assert_eq!(map_failure_reason("job_canceled", &none), "unknown_failure");
        assert_eq!(
            map_failure_reason("missing_dependency_failure", &none),
            "unknown_failure"
        );
        let known = vec!["missing_dependency_failure".to_string()];
        assert_eq!(
            map_failure_reason("missing_dependency_failure", &known),
            "missing_dependency_failure"
        );
        assert_eq!(
            map_failure_reason("image_pull_failure", &none),
            "runner_system_failure"
        );
    }

    #[test]
    fn when_applies() {
        assert!(When::OnSuccess.applies(true));
        assert!(!When::OnSuccess.applies(false));
        assert!(When::OnFailure.applies(false));
        assert!(When::Always.applies(false));
        assert_eq!(When::parse(""), When::OnSuccess);
    }

    #[test]
    fn job_status_for_after_script() {
        assert_eq!(Outcome::Success.ci_job_status(), "success");
        assert_eq!(
            Outcome::failed(FailureKind::JobExecutionTimeout, None, "t").ci_job_status(),
            "timedout"
        );
        assert_eq!(
            Outcome::failed(FailureKind::Canceled, None, "c").ci_job_status(),
            "canceled"
        );
        assert_eq!(
            Outcome::failed(FailureKind::Script, Some(3), "x").ci_job_status(),
            "failed"
        );
    }
}
