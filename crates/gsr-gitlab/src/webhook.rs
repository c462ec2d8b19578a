//! GitLab's Job Hook webhook (RUNNER-PROTOCOL §7): the payload fields a runner acts on and
//! the secret-token check.
//!
//! A Job Hook only says "a job changed state". It carries no job token and not even the
//! job's tags (only the tags of the runner that took it, once one did), so a receiver can
//! use it as a *nudge* to claim with `jobs/request`, never as the job itself.

use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::wire::{nd, num_or_str};

/// The parts of a Job Hook payload a runner uses. Unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct JobHook {
    /// Always `build` for job events.
    #[serde(default, deserialize_with = "nd")]
    pub object_kind: String,
    /// The job id.
    #[serde(default, deserialize_with = "num_or_str")]
    pub build_id: Option<u64>,
    /// Job name.
    #[serde(default, deserialize_with = "nd")]
    pub build_name: String,
    /// `created`, `pending`, `running`, `success`, `failed`, `canceled`, …
    #[serde(default, deserialize_with = "nd")]
    pub build_status: String,
    /// Project id.
    #[serde(default, deserialize_with = "num_or_str")]
    pub project_id: Option<u64>,
    /// Pipeline id.
    #[serde(default, deserialize_with = "num_or_str")]
    pub pipeline_id: Option<u64>,
    /// Branch or tag.
    #[serde(default, rename = "ref", deserialize_with = "nd")]
    pub git_ref: String,
}

/// Why a webhook body was refused.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// Not JSON, or not an object of the expected shape.
    #[error("invalid Job Hook payload: {0}")]
    Invalid(String),
    /// Valid JSON, but not a job event.
    #[error("not a job event (object_kind {0:?})")]
    NotAJobEvent(String),
}

impl JobHook {
    /// Parse a Job Hook body.
    pub fn parse(body: &[u8]) -> Result<JobHook, HookError> {
        let hook: JobHook =
            serde_json::from_slice(body).map_err(|e| HookError::Invalid(e.to_string()))?;
        if hook.object_kind != "build" {
            return Err(HookError::NotAJobEvent(hook.object_kind));
        }
        if hook.build_id.is_none() {
            return Err(HookError::Invalid("missing build_id".into()));
        }
        Ok(hook)
    }

    /// Does this event mean a job is waiting for a runner?
    pub fn is_pending(&self) -> bool {
        self.build_status == "pending"
    }
}

/// Compare the `X-Gitlab-Token` header with the configured secret in constant time.
/// With no secret configured every delivery is accepted.
pub fn token_matches(expected: Option<&str>, got: Option<&[u8]>) -> bool {
    match expected {
        None => true,
        Some(secret) => {
            let got = got.unwrap_or(b"");
            // Length is not secret-dependent information worth hiding here, but the
            // comparison of equal-length values must not leak where they differ.
            got.len() == secret.len() && bool::from(got.ct_eq(secret.as_bytes()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/job_hook.json");

    #[test]
    fn parses_the_reference_hook() {
        let h = JobHook::parse(FIXTURE.as_bytes()).expect("fixture parses");
        assert_eq!(h.build_id, Some(1977));
        assert_eq!(h.build_status, "created");
        assert!(!h.is_pending());
        assert_eq!(h.project_id, Some(380));
    }

    #[test]
    fn rejects_garbage_and_other_events() {
        assert!(matches!(JobHook::parse(b"{"), Err(HookError::Invalid(_))));
        assert!(matches!(
            JobHook::parse(br#"{"object_kind":"push"}"#),
            Err(HookError::NotAJobEvent(k)) if k == "push"
        ));
        assert!(matches!(
            JobHook::parse(br#"{"object_kind":"build"}"#),
            Err(HookError::Invalid(_))
        ));
        let h = JobHook::parse(
            br#"{"object_kind":"build","build_id":"7","build_status":"pending","runner":null}"#,
        )
        .expect("string id and null runner are tolerated");
        assert!(h.is_pending());
    }

    #[test]
    fn token_check() {
        assert!(token_matches(None, None));
        assert!(token_matches(Some("s3cret"), Some(b"s3cret")));
        assert!(!token_matches(Some("s3cret"), Some(b"s3cres")));
        assert!(!token_matches(Some("s3cret"), Some(b"s3cret-longer")));
        assert!(!token_matches(Some("s3cret"), None));
    }
}
