//! GitLab's JSON, exactly as it travels. Nothing outside this crate sees these types.
//!
//! Decoding is lenient the way gitlab-runner's Go decoder is: unknown keys are ignored,
//! missing optional keys take their default, and `null` where a list or string is expected
//! counts as empty (GitLab sends `null` for empty lists in several places). Only what a
//! job cannot run without (`id`, `token`) is required; [`crate::convert`] checks it.

use serde::{Deserialize, Deserializer, Serialize};

/// Accept `null` (or absence, with `#[serde(default)]`) as `T::default()`.
pub(crate) fn nd<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Accept a number or a numeric string (GitLab is not consistent across versions).
pub(crate) fn num_or_str<'de, D>(d: D) -> Result<Option<u64>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        U(u64),
        F(f64),
        S(String),
    }
    Ok(match Option::<N>::deserialize(d)? {
        None => None,
        Some(N::U(u)) => Some(u),
        Some(N::F(f)) if f >= 0.0 => Some(f as u64),
        Some(N::F(_)) => None,
        Some(N::S(s)) => s.trim().parse().ok(),
    })
}

/// The 201 body of `POST /jobs/request`.
#[derive(Debug, Deserialize, Default)]
pub struct JobResponse {
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default, deserialize_with = "nd")]
    pub allow_git_fetch: bool,
    #[serde(default, deserialize_with = "nd")]
    pub job_info: JobInfo,
    #[serde(default, deserialize_with = "nd")]
    pub git_info: GitInfo,
    #[serde(default, deserialize_with = "nd")]
    pub runner_info: RunnerInfoWire,
    #[serde(default, deserialize_with = "nd")]
    pub variables: Vec<VariableWire>,
    #[serde(default, deserialize_with = "nd")]
    pub steps: Vec<StepWire>,
    #[serde(default, deserialize_with = "nd")]
    pub hooks: Vec<HookWire>,
    #[serde(default, deserialize_with = "nd")]
    pub image: Option<ImageWire>,
    #[serde(default, deserialize_with = "nd")]
    pub services: Vec<ImageWire>,
    #[serde(default, deserialize_with = "nd")]
    pub credentials: Vec<CredentialWire>,
    #[serde(default, deserialize_with = "nd")]
    pub artifacts: Vec<ArtifactWire>,
    #[serde(default, deserialize_with = "nd")]
    pub cache: Vec<CacheWire>,
    #[serde(default, deserialize_with = "nd")]
    pub dependencies: Vec<DependencyWire>,
    #[serde(default, deserialize_with = "nd")]
    pub features: JobFeatures,
    /// CI Steps (`run:` jobs); we do not run them, but must notice them.
    #[serde(default)]
    pub run: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, Default)]
pub struct JobInfo {
    #[serde(default, deserialize_with = "nd")]
    pub name: String,
    #[serde(default, deserialize_with = "nd")]
    pub stage: String,
    #[serde(default, deserialize_with = "num_or_str")]
    pub project_id: Option<u64>,
    #[serde(default, deserialize_with = "nd")]
    pub project_name: String,
    #[serde(default, deserialize_with = "nd")]
    pub project_full_path: String,
    #[serde(default, deserialize_with = "num_or_str")]
    pub pipeline_id: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
pub struct GitInfo {
    #[serde(default, deserialize_with = "nd")]
    pub repo_url: String,
    #[serde(default, deserialize_with = "nd")]
    pub repo_object_format: String,
    #[serde(default, rename = "ref", deserialize_with = "nd")]
    pub ref_name: String,
    #[serde(default, deserialize_with = "nd")]
    pub sha: String,
    #[serde(default, deserialize_with = "nd")]
    pub before_sha: String,
    #[serde(default, deserialize_with = "nd")]
    pub ref_type: String,
    #[serde(default, deserialize_with = "nd")]
    pub refspecs: Vec<String>,
    #[serde(default, deserialize_with = "num_or_str")]
    pub depth: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
pub struct RunnerInfoWire {
    #[serde(default, deserialize_with = "num_or_str")]
    pub timeout: Option<u64>,
}

#[derive(Debug, Deserialize, Serialize, Default, Clone)]
pub struct VariableWire {
    #[serde(default, deserialize_with = "nd")]
    pub key: String,
    #[serde(default, deserialize_with = "nd")]
    pub value: String,
    #[serde(default, deserialize_with = "nd")]
    pub public: bool,
    #[serde(default, deserialize_with = "nd")]
    pub masked: bool,
    #[serde(default, deserialize_with = "nd")]
    pub file: bool,
    #[serde(default, deserialize_with = "nd")]
    pub raw: bool,
}

#[derive(Debug, Deserialize, Default)]
pub struct StepWire {
    #[serde(default, deserialize_with = "nd")]
    pub name: String,
    #[serde(default, deserialize_with = "nd")]
    pub script: Vec<String>,
    #[serde(default, deserialize_with = "num_or_str")]
    pub timeout: Option<u64>,
    #[serde(default, deserialize_with = "nd")]
    pub when: String,
    #[serde(default, deserialize_with = "nd")]
    pub allow_failure: bool,
}

#[derive(Debug, Deserialize, Default)]
pub struct HookWire {
    #[serde(default, deserialize_with = "nd")]
    pub name: String,
    #[serde(default, deserialize_with = "nd")]
    pub script: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
pub struct ImageWire {
    #[serde(default, deserialize_with = "nd")]
    pub name: String,
    #[serde(default, deserialize_with = "nd")]
    pub entrypoint: Vec<String>,
    #[serde(default, deserialize_with = "nd")]
    pub command: Vec<String>,
    #[serde(default, deserialize_with = "nd")]
    pub alias: String,
    #[serde(default, deserialize_with = "nd")]
    pub pull_policy: Vec<String>,
    #[serde(default, deserialize_with = "nd")]
    pub variables: Vec<VariableWire>,
}

/// One entry of `credentials` (GitLab sends `type: registry` for image pulls).
#[derive(Deserialize, Default)]
pub struct CredentialWire {
    #[serde(default, rename = "type", deserialize_with = "nd")]
    pub kind: String,
    #[serde(default, deserialize_with = "nd")]
    pub url: String,
    #[serde(default, deserialize_with = "nd")]
    pub username: String,
    #[serde(default, deserialize_with = "nd")]
    pub password: String,
}

impl std::fmt::Debug for CredentialWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialWire")
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

#[derive(Debug, Deserialize, Default)]
pub struct ArtifactWire {
    #[serde(default, deserialize_with = "nd")]
    pub name: String,
    #[serde(default, deserialize_with = "nd")]
    pub untracked: bool,
    #[serde(default, deserialize_with = "nd")]
    pub paths: Vec<String>,
    #[serde(default, deserialize_with = "nd")]
    pub exclude: Vec<String>,
    #[serde(default, deserialize_with = "nd")]
    pub when: String,
    #[serde(default, deserialize_with = "nd")]
    pub expire_in: String,
    #[serde(default, deserialize_with = "nd")]
    pub artifact_type: String,
    #[serde(default, deserialize_with = "nd")]
    pub artifact_format: String,
}

#[derive(Debug, Deserialize, Default)]
pub struct CacheWire {
    #[serde(default, deserialize_with = "nd")]
    pub key: String,
    #[serde(default, deserialize_with = "nd")]
    pub untracked: bool,
    #[serde(default, deserialize_with = "nd")]
    pub paths: Vec<String>,
    #[serde(default, deserialize_with = "nd")]
    pub policy: String,
    #[serde(default, deserialize_with = "nd")]
    pub when: String,
    #[serde(default, deserialize_with = "nd")]
    pub fallback_keys: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
pub struct DependencyWire {
    #[serde(default, deserialize_with = "num_or_str")]
    pub id: Option<u64>,
    #[serde(default, deserialize_with = "nd")]
    pub name: String,
    #[serde(default, deserialize_with = "nd")]
    pub token: String,
    #[serde(default, deserialize_with = "nd")]
    pub artifacts_file: Option<ArtifactsFileWire>,
}

#[derive(Debug, Deserialize, Default)]
pub struct ArtifactsFileWire {
    #[serde(default, deserialize_with = "nd")]
    pub filename: String,
}

#[derive(Debug, Deserialize, Default)]
pub struct JobFeatures {
    #[serde(default, deserialize_with = "nd")]
    pub trace_sections: bool,
    #[serde(default, deserialize_with = "nd")]
    pub failure_reasons: Vec<String>,
    #[serde(default, deserialize_with = "nd")]
    pub token_mask_prefixes: Vec<String>,
}

/// `info` sent with every runner request.
#[derive(Debug, Serialize, Clone)]
pub struct InfoWire {
    pub name: String,
    pub version: String,
    pub revision: String,
    pub platform: String,
    pub architecture: String,
    pub executor: String,
    pub shell: String,
    pub features: crate::Features,
    pub config: InfoConfig,
}

#[derive(Debug, Serialize, Clone, Default)]
pub struct InfoConfig {
    pub gpus: String,
}

#[derive(Debug, Serialize)]
pub struct JobRequestBody<'a> {
    pub token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_update: Option<&'a str>,
    pub info: &'a InfoWire,
}

#[derive(Debug, Serialize)]
pub struct OutputWire {
    pub checksum: String,
    pub bytesize: u64,
}

#[derive(Debug, Serialize)]
pub struct UpdateJobBody<'a> {
    pub token: &'a str,
    pub state: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputWire>,
}

#[derive(Debug, Serialize)]
pub struct RegisterBody<'a> {
    pub token: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub description: &'a str,
    pub info: &'a InfoWire,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub tag_list: &'a str,
    pub run_untagged: bool,
    pub locked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_level: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum_timeout: Option<u64>,
    pub paused: bool,
}

#[derive(Debug, Serialize)]
pub struct VerifyBody<'a> {
    pub token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_id: Option<&'a str>,
    pub info: &'a InfoWire,
}

#[derive(Debug, Serialize)]
pub struct TokenBody<'a> {
    pub token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_id: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
pub struct RegisteredRunner {
    #[serde(default, deserialize_with = "num_or_str")]
    pub id: Option<u64>,
    pub token: String,
    #[serde(default)]
    pub token_expires_at: Option<String>,
}
