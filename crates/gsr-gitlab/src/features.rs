//! `info.features`: what this runner tells GitLab it can do.
//!
//! GitLab *drops* a job (`runner_unsupported`) when it needs a feature the runner did not
//! declare, and it trusts what is declared. So every flag here is true only when the code
//! really implements it; [`Features::shell_runner`] is the one place that decides.

use serde::Serialize;

/// All 31 keys gitlab-runner serializes; every key is always present.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Features {
    pub variables: bool,
    pub image: bool,
    pub services: bool,
    pub artifacts: bool,
    pub cache: bool,
    pub fallback_cache_keys: bool,
    pub shared: bool,
    pub upload_multiple_artifacts: bool,
    pub upload_raw_artifacts: bool,
    pub session: bool,
    pub terminal: bool,
    pub refspecs: bool,
    pub masking: bool,
    pub proxy: bool,
    pub raw_variables: bool,
    pub artifacts_exclude: bool,
    pub multi_build_steps: bool,
    pub trace_reset: bool,
    pub trace_checksum: bool,
    pub trace_size: bool,
    pub vault_secrets: bool,
    pub cancelable: bool,
    pub return_exit_code: bool,
    pub service_variables: bool,
    pub service_multiple_aliases: bool,
    pub image_executor_opts: bool,
    pub service_executor_opts: bool,
    pub cancel_gracefully: bool,
    pub native_steps_integration: bool,
    pub two_phase_job_commit: bool,
    pub job_inputs: bool,
}

impl Features {
    /// What the worker implements, whatever the executor: variables (incl. raw and file),
    /// artifacts (zip/gzip/raw, exclude, several per job), refspecs, masking, every step
    /// GitLab sends in order (`multi_build_steps`), trace checksum/size/reset, exit codes,
    /// graceful and hard cancellation, and two-phase commit.
    pub fn worker() -> Self {
        Features {
            variables: true,
            artifacts: true,
            upload_multiple_artifacts: true,
            upload_raw_artifacts: true,
            refspecs: true,
            masking: true,
            raw_variables: true,
            artifacts_exclude: true,
            multi_build_steps: true,
            trace_reset: true,
            trace_checksum: true,
            trace_size: true,
            cancelable: true,
            return_exit_code: true,
            cancel_gracefully: true,
            two_phase_job_commit: true,
            ..Features::default()
        }
    }

    /// The worker plus what the local shell executor adds (a shared builds dir).
    pub fn shell_runner() -> Self {
        Features {
            shared: true,
            ..Features::worker()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_keys_are_serialized() {
        let v = serde_json::to_value(Features::shell_runner()).expect("json");
        let o = v.as_object().expect("object");
        assert_eq!(o.len(), 31);
        assert_eq!(o["two_phase_job_commit"], true);
        // Not implemented yet, so not declared.
        assert_eq!(o["cache"], false);
        assert_eq!(o["image"], false);
        assert_eq!(o["vault_secrets"], false);
    }
}
