//! Job specs: the admin API's input ([`JobSpecInput`]) and its validated form ([`JobDef`]).
//!
//! GitLab never hands a runner a job it would refuse to create: masked variables follow
//! the masking rules, artifact types and formats come in fixed pairs, timeouts are
//! positive. Validating here, at enqueue time, keeps the simulator from serving payloads
//! real GitLab cannot produce, and tells a test author at once what is wrong with a spec.
//! The same pass works out which runner features a job needs (protocol sheet §2.1).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// A job to enqueue (`POST /-/sim/jobs`). Everything but `project_id` and `script` is
/// optional; `None`/empty means GitLab's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobSpecInput {
    /// Project the job belongs to.
    pub project_id: u64,
    /// Job name (default `test`).
    pub name: Option<String>,
    /// Stage (default `test`).
    pub stage: Option<String>,
    /// Branch or tag (default `main`).
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// Commit; default: the ref resolved in the project's repository.
    pub sha: Option<String>,
    /// Job tags; the runner must have all of them.
    pub tags: Vec<String>,
    /// Job variables, sent after GitLab's predefined ones.
    pub variables: Vec<VariableInput>,
    /// `before_script`, merged in front of `script`.
    pub before_script: Vec<String>,
    /// `script` (required, non-empty).
    pub script: Vec<String>,
    /// `after_script`, sent as its own step with `when: always`.
    pub after_script: Vec<String>,
    /// Job timeout in seconds (default 3600).
    pub timeout: Option<u64>,
    /// Step timeout in seconds (default: the effective job timeout).
    pub step_timeout: Option<u64>,
    /// `allow_failure: true`.
    pub allow_failure: bool,
    /// `allow_failure: exit_codes` (needs the runner feature `return_exit_code`).
    pub allow_failure_exit_codes: Vec<i64>,
    /// `artifacts` entries (archive and reports).
    pub artifacts: Vec<ArtifactInput>,
    /// Ids of earlier jobs whose artifacts this job downloads.
    pub dependencies: Vec<u64>,
    /// `GIT_DEPTH` (default 20; 0 = full clone).
    pub git_depth: Option<u32>,
    /// Project default "git fetch" strategy (default true).
    pub allow_git_fetch: Option<bool>,
    /// `image`: a name or an object `{name, entrypoint, ports, pull_policy, executor_opts}`.
    pub image: Option<Value>,
    /// `services`: names or objects (`alias`, `command`, `variables`, …).
    pub services: Vec<Value>,
    /// `cache` entries `{key, paths, untracked, policy, when, fallback_keys}`.
    pub cache: Vec<Value>,
    /// Custom refspecs (needs the runner feature `refspecs`).
    pub refspecs: Option<Vec<String>>,
    /// `release: {tag_name, description, name?}` (needs `multi_build_steps`).
    pub release: Option<Value>,
    /// `hooks: pre_get_sources_script / post_get_sources_script`.
    pub hooks: Vec<HookInput>,
}

impl JobSpecInput {
    /// A spec with the given project and script, everything else default.
    pub fn new<S: Into<String>>(project_id: u64, script: impl IntoIterator<Item = S>) -> Self {
        Self {
            project_id,
            script: script.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Sets the job tags.
    pub fn with_tags<S: Into<String>>(mut self, tags: impl IntoIterator<Item = S>) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Appends a variable.
    pub fn with_variable(mut self, variable: VariableInput) -> Self {
        self.variables.push(variable);
        self
    }

    /// Appends an artifact entry.
    pub fn with_artifact(mut self, artifact: ArtifactInput) -> Self {
        self.artifacts.push(artifact);
        self
    }
}

/// A job variable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VariableInput {
    /// Name (`[A-Za-z0-9_]+`).
    pub key: String,
    /// Value.
    pub value: String,
    /// Masked in the trace; GitLab requires >= 8 characters from a restricted set.
    pub masked: bool,
    /// File variable.
    pub file: bool,
    /// Not expanded.
    pub raw: bool,
    /// `public` flag; default true (a `.gitlab-ci.yml` variable).
    pub public: Option<bool>,
}

impl VariableInput {
    /// A plain public variable.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            ..Self::default()
        }
    }

    /// A masked, non-public variable (a project CI/CD setting).
    pub fn masked(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            masked: true,
            public: Some(false),
            ..Self::new(key, value)
        }
    }
}

/// One `artifacts` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ArtifactInput {
    /// `artifacts:name` (null when absent, as GitLab sends it).
    pub name: Option<String>,
    /// `artifacts:paths`.
    pub paths: Vec<String>,
    /// `artifacts:exclude` (needs the runner feature `artifacts_exclude`).
    pub exclude: Vec<String>,
    /// `artifacts:untracked`.
    pub untracked: bool,
    /// `on_success` (default), `on_failure`, `always`.
    pub when: Option<String>,
    /// `artifacts:expire_in`.
    pub expire_in: Option<String>,
    /// `archive` (default) or a report type (`junit`, `dotenv`, …).
    pub artifact_type: Option<String>,
    /// Default: the format GitLab pairs with the type (`zip` for `archive`).
    pub artifact_format: Option<String>,
}

impl ArtifactInput {
    /// An archive of `paths`.
    pub fn archive<S: Into<String>>(paths: impl IntoIterator<Item = S>) -> Self {
        Self {
            paths: paths.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// A report of `artifact_type` (format from GitLab's type/format pairs).
    pub fn report<S: Into<String>>(
        artifact_type: &str,
        paths: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            artifact_type: Some(artifact_type.to_string()),
            when: Some("always".to_string()),
            ..Self::archive(paths)
        }
    }
}

/// A job hook (`hooks:pre_get_sources_script` …).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookInput {
    /// `pre_get_sources_script` or `post_get_sources_script`.
    pub name: String,
    /// Commands.
    pub script: Vec<String>,
}

/// Rails' `Ci::JobArtifact::TYPE_AND_FORMAT_PAIRS`: every artifact type and the only
/// format GitLab accepts for it.
pub(crate) const ARTIFACT_TYPES: &[(&str, &str)] = &[
    ("archive", "zip"),
    ("metadata", "gzip"),
    ("trace", "raw"),
    ("junit", "gzip"),
    ("metrics", "gzip"),
    ("metrics_referee", "gzip"),
    ("network_referee", "gzip"),
    ("dotenv", "gzip"),
    ("cobertura", "gzip"),
    ("cluster_applications", "gzip"),
    ("lsif", "zip"),
    ("cyclonedx", "gzip"),
    ("annotations", "gzip"),
    ("repository_xray", "gzip"),
    ("sast", "raw"),
    ("secret_detection", "raw"),
    ("dependency_scanning", "raw"),
    ("container_scanning", "raw"),
    ("cluster_image_scanning", "raw"),
    ("dast", "raw"),
    ("license_scanning", "raw"),
    ("accessibility", "raw"),
    ("codequality", "raw"),
    ("performance", "raw"),
    ("browser_performance", "raw"),
    ("load_performance", "raw"),
    ("terraform", "raw"),
    ("requirements", "raw"),
    ("requirements_v2", "raw"),
    ("coverage_fuzzing", "raw"),
    ("api_fuzzing", "raw"),
];

/// `Ci::JobArtifact.file_formats`.
pub(crate) const ARTIFACT_FORMATS: &[&str] = &["raw", "zip", "gzip"];

/// The format GitLab pairs with `artifact_type`, or `None` for an unknown type.
pub(crate) fn format_for_type(artifact_type: &str) -> Option<&'static str> {
    ARTIFACT_TYPES
        .iter()
        .find(|(t, _)| *t == artifact_type)
        .map(|(_, f)| *f)
}

/// Rails' failure-reason enum (`commit_status.rb`), sent as `features.failure_reasons`.
pub(crate) const FAILURE_REASONS: &[&str] = &[
    "unknown_failure",
    "script_failure",
    "api_failure",
    "stuck_or_timeout_failure",
    "runner_system_failure",
    "missing_dependency_failure",
    "runner_unsupported",
    "stale_schedule",
    "job_execution_timeout",
    "archived_failure",
    "unmet_prerequisites",
    "scheduler_failure",
    "data_integrity_failure",
    "forward_deployment_failure",
    "user_blocked",
    "project_deleted",
    "ci_quota_exceeded",
    "pipeline_loop_detected",
    "no_matching_runner",
    "trace_size_exceeded",
    "builds_disabled",
    "environment_creation_failure",
    "deployment_rejected",
    "failed_outdated_deployment_job",
    "job_execution_server_timeout",
    "stuck_pending_with_matching_runners",
    "stuck_pending_no_matching_runners",
    "no_updates_running",
    "no_updates_canceling",
    "server_timeout_running",
    "server_timeout_canceling",
    "runner_configuration_error",
    "runner_external_dependency_failure",
    "runner_interrupted",
    "protected_environment_failure",
    "insufficient_bridge_permissions",
    "downstream_bridge_project_not_found",
    "invalid_bridge_trigger",
    "upstream_bridge_project_not_found",
    "insufficient_upstream_permissions",
    "bridge_pipeline_is_child_pipeline",
    "downstream_pipeline_creation_failed",
    "secrets_provider_not_found",
    "reached_max_descendant_pipelines_depth",
    "ip_restriction_failure",
    "reached_max_pipeline_hierarchy_size",
    "reached_downstream_pipeline_trigger_rate_limit",
    "duo_workflow_not_allowed",
    "job_router_failure",
    "job_token_expired",
    "id_token_burned_project_path",
    "downstream_project_trigger_resolved_to_empty",
];

/// What the repository says about the job's ref, looked up before validation.
#[derive(Debug, Clone, Default)]
pub(crate) struct RepoFacts {
    /// `branch` or `tag`.
    pub ref_type: &'static str,
    /// Commit of the ref, when it exists.
    pub sha: Option<String>,
    /// The project's default branch (HEAD of the bare repo).
    pub default_branch: String,
    /// `git log -1` of the commit, when it exists.
    pub commit: Option<CommitInfo>,
}

/// Commit metadata for `CI_COMMIT_*`.
#[derive(Debug, Clone, Default)]
pub(crate) struct CommitInfo {
    pub message: String,
    pub author: String,
    pub timestamp: String,
}

/// A variable as it goes into the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct PayloadVariable {
    pub key: String,
    pub value: String,
    pub public: bool,
    pub masked: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub file: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub raw: bool,
}

impl PayloadVariable {
    pub fn public(key: &str, value: impl Into<String>) -> Self {
        Self {
            key: key.to_string(),
            value: value.into(),
            public: true,
            masked: false,
            file: false,
            raw: false,
        }
    }

    pub fn secret(key: &str, value: impl Into<String>, masked: bool) -> Self {
        Self {
            public: false,
            masked,
            ..Self::public(key, value)
        }
    }
}

/// A validated job, ready to be turned into a payload at pick time.
#[derive(Debug, Clone)]
pub(crate) struct JobDef {
    pub name: String,
    pub stage: String,
    pub git_ref: String,
    pub ref_type: &'static str,
    pub sha: String,
    pub protected: bool,
    pub default_branch: String,
    pub commit: Option<CommitInfo>,
    pub tags: Vec<String>,
    pub variables: Vec<PayloadVariable>,
    pub script: Vec<String>,
    pub after_script: Vec<String>,
    pub timeout: u64,
    pub step_timeout: Option<u64>,
    pub allow_failure: bool,
    pub allow_failure_exit_codes: Vec<i64>,
    pub artifacts: Vec<Value>,
    pub dependencies: Vec<u64>,
    pub git_depth: u32,
    pub allow_git_fetch: bool,
    pub image: Value,
    pub services: Vec<Value>,
    pub cache: Vec<Value>,
    pub refspecs: Vec<String>,
    pub release_script: Option<Vec<String>>,
    pub hooks: Vec<Value>,
    /// Runner features (`info.features` keys) the job cannot run without.
    pub required_features: Vec<&'static str>,
}

/// Validates `input` against GitLab's rules and fills in defaults.
pub(crate) fn validate(input: JobSpecInput, repo: RepoFacts) -> Result<JobDef, String> {
    let name = non_blank(input.name, "test", "name")?;
    let stage = non_blank(input.stage, "test", "stage")?;
    let git_ref = default_ref(input.git_ref.as_deref());
    if input.script.is_empty() || input.script.iter().all(|l| l.trim().is_empty()) {
        return Err("script can't be blank".into());
    }
    let sha = match input.sha {
        Some(sha) => {
            let ok = matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(format!("sha {sha:?} is not a full hexadecimal commit id"));
            }
            sha.to_ascii_lowercase()
        }
        None => repo.sha.clone().ok_or_else(|| {
            format!(
                "ref {git_ref:?} does not exist in the project repository; push it first or pass `sha`"
            )
        })?,
    };
    let timeout = positive(input.timeout, 3600, "timeout")?;
    if input.step_timeout == Some(0) {
        return Err("step_timeout must be positive".into());
    }
    let mut tags = Vec::new();
    for tag in input.tags {
        let tag = tag.trim().to_string();
        if tag.is_empty() {
            return Err("tags must not be blank".into());
        }
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    let variables = input
        .variables
        .into_iter()
        .map(validate_variable)
        .collect::<Result<Vec<_>, _>>()?;
    let artifacts = validate_artifacts(input.artifacts)?;
    let refspecs_custom = input.refspecs.is_some();
    let refspecs = match input.refspecs {
        Some(specs) => {
            if specs.is_empty() || specs.iter().any(|s| s.trim().is_empty()) {
                return Err("refspecs must be non-empty strings".into());
            }
            specs
        }
        None if repo.ref_type == "tag" => vec![format!("+refs/tags/{git_ref}:refs/tags/{git_ref}")],
        None => vec![format!(
            "+refs/heads/{git_ref}:refs/remotes/origin/{git_ref}"
        )],
    };
    let image = match input.image {
        None | Some(Value::Null) => Value::Null,
        Some(v) => normalize_image(v, false)?,
    };
    let services = input
        .services
        .into_iter()
        .map(|s| normalize_image(s, true))
        .collect::<Result<Vec<_>, _>>()?;
    let protected = repo.ref_type == "branch" && git_ref == repo.default_branch;
    let cache = input
        .cache
        .into_iter()
        .map(|c| normalize_cache(c, protected))
        .collect::<Result<Vec<_>, _>>()?;
    let release_script = input.release.map(release_script).transpose()?;
    let hooks = input
        .hooks
        .into_iter()
        .map(|h| {
            if !matches!(
                h.name.as_str(),
                "pre_get_sources_script" | "post_get_sources_script"
            ) {
                return Err(format!("unknown hook {:?}", h.name));
            }
            if h.script.is_empty() {
                return Err(format!("hook {} needs a script", h.name));
            }
            Ok(json!({ "name": h.name, "script": h.script }))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut script = input.before_script;
    script.extend(input.script);
    let mut def = JobDef {
        name,
        stage,
        git_ref,
        ref_type: repo.ref_type,
        sha,
        protected,
        default_branch: repo.default_branch,
        commit: repo.commit,
        tags,
        variables,
        script,
        after_script: input.after_script,
        timeout,
        step_timeout: input.step_timeout,
        allow_failure: input.allow_failure,
        allow_failure_exit_codes: input.allow_failure_exit_codes,
        artifacts,
        dependencies: input.dependencies,
        git_depth: input.git_depth.unwrap_or(20),
        allow_git_fetch: input.allow_git_fetch.unwrap_or(true),
        image,
        services,
        cache,
        refspecs,
        release_script,
        hooks,
        required_features: Vec::new(),
    };
    def.required_features = required_features(&def, refspecs_custom);
    Ok(def)
}

/// Rails' `Ci::Build::RUNNER_FEATURES` checks: the features a runner manager must declare
/// to be given this job.
fn required_features(def: &JobDef, custom_refspecs: bool) -> Vec<&'static str> {
    let non_empty = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    let checks = [
        (
            "artifacts_exclude",
            def.artifacts.iter().any(|a| non_empty(a, "exclude")),
        ),
        (
            "upload_multiple_artifacts",
            def.artifacts
                .iter()
                .any(|a| a.get("artifact_type").and_then(Value::as_str) != Some("archive")),
        ),
        (
            "refspecs",
            custom_refspecs || def.git_ref.starts_with("refs/merge-requests/"),
        ),
        ("return_exit_code", !def.allow_failure_exit_codes.is_empty()),
        ("multi_build_steps", def.release_script.is_some()),
        (
            "fallback_cache_keys",
            def.cache.iter().any(|c| non_empty(c, "fallback_keys")),
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, needed)| *needed)
        .map(|(feature, _)| feature)
        .collect()
}

/// The ref a spec names, `main` when it names none.
pub(crate) fn default_ref(git_ref: Option<&str>) -> String {
    match git_ref {
        Some(r) if !r.trim().is_empty() => r.trim().to_string(),
        _ => "main".to_string(),
    }
}

fn non_blank(value: Option<String>, default: &str, field: &str) -> Result<String, String> {
    match value {
        None => Ok(default.to_string()),
        Some(v) if v.trim().is_empty() => Err(format!("{field} can't be blank")),
        Some(v) if v.len() > 255 => Err(format!("{field} is too long (maximum is 255 characters)")),
        Some(v) => Ok(v),
    }
}

fn positive(value: Option<u64>, default: u64, field: &str) -> Result<u64, String> {
    match value {
        None => Ok(default),
        Some(0) => Err(format!("{field} must be positive")),
        Some(v) => Ok(v),
    }
}

/// GitLab's variable rules: key charset, and the masking rules of `Ci::Maskable`.
fn validate_variable(v: VariableInput) -> Result<PayloadVariable, String> {
    if v.key.is_empty()
        || v.key.len() > 255
        || !v
            .key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(format!(
            "variable key {:?} can contain only letters, digits and '_'",
            v.key
        ));
    }
    if v.masked {
        let ok = if v.raw {
            v.value.chars().count() >= 8 && !v.value.chars().any(char::is_whitespace)
        } else {
            v.value.len() >= 8
                && v.value.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(
                            b,
                            b'_' | b'+' | b'=' | b'/' | b'@' | b':' | b'.' | b'~' | b'-'
                        )
                })
        };
        if !ok {
            return Err(format!(
                "variable {} cannot be masked: the value must be a single line of at least 8 \
                 characters from [a-zA-Z0-9_+=/@:.~-] (any non-whitespace when raw)",
                v.key
            ));
        }
    }
    Ok(PayloadVariable {
        public: v.public.unwrap_or(true),
        key: v.key,
        value: v.value,
        masked: v.masked,
        file: v.file,
        raw: v.raw,
    })
}

fn validate_artifacts(items: Vec<ArtifactInput>) -> Result<Vec<Value>, String> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for a in items {
        let artifact_type = a.artifact_type.unwrap_or_else(|| "archive".to_string());
        let paired = format_for_type(&artifact_type)
            .ok_or_else(|| format!("unknown artifact_type {artifact_type:?}"))?;
        let artifact_format = a.artifact_format.unwrap_or_else(|| paired.to_string());
        if !ARTIFACT_FORMATS.contains(&artifact_format.as_str()) {
            return Err(format!("unknown artifact_format {artifact_format:?}"));
        }
        if artifact_format != paired {
            return Err(format!(
                "artifact_type {artifact_type} must use artifact_format {paired}, not {artifact_format}"
            ));
        }
        if matches!(artifact_type.as_str(), "metadata" | "trace") {
            return Err(format!(
                "artifact_type {artifact_type} is internal to GitLab"
            ));
        }
        if seen.contains(&artifact_type) {
            return Err(format!("artifact_type {artifact_type} listed twice"));
        }
        seen.push(artifact_type.clone());
        let is_archive = artifact_type == "archive";
        if a.paths.is_empty() && !(is_archive && a.untracked) {
            return Err(format!("artifacts of type {artifact_type} need paths"));
        }
        let when = a
            .when
            .unwrap_or_else(|| if is_archive { "on_success" } else { "always" }.to_string());
        if !matches!(when.as_str(), "on_success" | "on_failure" | "always") {
            return Err(format!(
                "artifacts when {when:?} is not on_success/on_failure/always"
            ));
        }
        let mut entry = Map::new();
        entry.insert("name".into(), a.name.map_or(Value::Null, Value::String));
        if is_archive {
            entry.insert("untracked".into(), Value::Bool(a.untracked));
        }
        entry.insert("paths".into(), json!(a.paths));
        if !a.exclude.is_empty() {
            entry.insert("exclude".into(), json!(a.exclude));
        }
        entry.insert("when".into(), Value::String(when));
        entry.insert(
            "expire_in".into(),
            a.expire_in.map_or(Value::Null, Value::String),
        );
        entry.insert("artifact_type".into(), Value::String(artifact_type));
        entry.insert("artifact_format".into(), Value::String(artifact_format));
        out.push(Value::Object(entry));
    }
    Ok(out)
}

/// `image` / `services[]`: a name, or an object with at least `name`.
fn normalize_image(v: Value, service: bool) -> Result<Value, String> {
    let mut obj = match v {
        Value::String(name) => {
            let mut m = Map::new();
            m.insert("name".into(), Value::String(name));
            m
        }
        Value::Object(m) => m,
        other => {
            return Err(format!(
                "image/service must be a string or an object, got {other}"
            ))
        }
    };
    match obj.get("name") {
        Some(Value::String(n)) if !n.trim().is_empty() => {}
        _ => return Err("image/service needs a non-empty `name`".into()),
    }
    obj.entry("entrypoint").or_insert(Value::Null);
    obj.entry("ports").or_insert_with(|| json!([]));
    obj.entry("executor_opts").or_insert_with(|| json!({}));
    obj.entry("pull_policy").or_insert(Value::Null);
    if service {
        obj.entry("alias").or_insert(Value::Null);
        obj.entry("command").or_insert(Value::Null);
        obj.entry("variables").or_insert_with(|| json!([]));
    }
    Ok(Value::Object(obj))
}

/// `cache[]`: GitLab suffixes keys with `-protected` / `-non_protected`.
fn normalize_cache(v: Value, protected: bool) -> Result<Value, String> {
    let Value::Object(obj) = v else {
        return Err("cache entries must be objects".into());
    };
    let suffix = if protected {
        "-protected"
    } else {
        "-non_protected"
    };
    let key = match obj.get("key") {
        None | Some(Value::Null) => "default".to_string(),
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        Some(_) => return Err("cache key must be a non-empty string".into()),
    };
    let strings = |field: &str| -> Result<Vec<String>, String> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|_| format!("cache {field} must be a list of strings")),
        }
    };
    let text = |field: &str, default: &str, allowed: &[&str]| -> Result<String, String> {
        let value = match obj.get(field) {
            None | Some(Value::Null) => default.to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(format!("cache {field} must be a string")),
        };
        if allowed.contains(&value.as_str()) {
            Ok(value)
        } else {
            Err(format!("cache {field} {value:?} is not one of {allowed:?}"))
        }
    };
    let fallback: Vec<String> = strings("fallback_keys")?
        .into_iter()
        .map(|k| format!("{k}{suffix}"))
        .collect();
    Ok(json!({
        "key": format!("{key}{suffix}"),
        "untracked": obj.get("untracked").and_then(Value::as_bool).unwrap_or(false),
        "paths": strings("paths")?,
        "policy": text("policy", "pull-push", &["pull", "push", "pull-push"])?,
        "when": text("when", "on_success", &["on_success", "on_failure", "always"])?,
        "fallback_keys": fallback,
    }))
}

/// The `release` step GitLab generates from `release:` (a `release-cli create` call).
fn release_script(v: Value) -> Result<Vec<String>, String> {
    let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let tag = field("tag_name").ok_or("release needs tag_name")?;
    let description = field("description").ok_or("release needs description")?;
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut cmd = String::from("release-cli create");
    if let Some(name) = field("name") {
        cmd.push_str(&format!(" --name {}", quote(&name)));
    }
    cmd.push_str(&format!(
        " --description {} --tag-name {}",
        quote(&description),
        quote(&tag)
    ));
    Ok(vec![cmd])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> RepoFacts {
        RepoFacts {
            ref_type: "branch",
            sha: Some("a".repeat(40)),
            default_branch: "main".into(),
            commit: None,
        }
    }

    #[test]
    fn defaults_follow_gitlab() {
        let def = validate(JobSpecInput::new(1, ["echo hi"]), facts()).expect("valid");
        assert_eq!(def.name, "test");
        assert_eq!(def.git_ref, "main");
        assert_eq!(def.timeout, 3600);
        assert_eq!(def.git_depth, 20);
        assert!(def.protected);
        assert_eq!(
            def.refspecs,
            vec!["+refs/heads/main:refs/remotes/origin/main"]
        );
        assert!(def.required_features.is_empty());
    }

    #[test]
    fn blank_script_and_unknown_ref_are_rejected() {
        assert!(validate(JobSpecInput::new(1, Vec::<String>::new()), facts()).is_err());
        let no_sha = RepoFacts {
            sha: None,
            ..facts()
        };
        let err = validate(JobSpecInput::new(1, ["x"]), no_sha).expect_err("no sha");
        assert!(err.contains("push it first"), "{err}");
    }

    #[test]
    fn masked_values_must_follow_masking_rules() {
        let short = JobSpecInput::new(1, ["x"]).with_variable(VariableInput::masked("S", "short"));
        assert!(validate(short, facts()).is_err());
        let space =
            JobSpecInput::new(1, ["x"]).with_variable(VariableInput::masked("S", "has space in"));
        assert!(validate(space, facts()).is_err());
        let ok = JobSpecInput::new(1, ["x"])
            .with_variable(VariableInput::masked("S", "s3cr3t-Value_123"));
        let def = validate(ok, facts()).expect("valid");
        assert!(def.variables[0].masked && !def.variables[0].public);
    }

    #[test]
    fn artifact_type_and_format_must_pair() {
        let bad = JobSpecInput::new(1, ["x"]).with_artifact(ArtifactInput {
            artifact_format: Some("zip".into()),
            ..ArtifactInput::report("junit", ["rspec.xml"])
        });
        assert!(validate(bad, facts()).is_err());
        let good = JobSpecInput::new(1, ["x"])
            .with_artifact(ArtifactInput::report("junit", ["rspec.xml"]));
        let def = validate(good, facts()).expect("valid");
        assert_eq!(def.artifacts[0]["artifact_format"], "gzip");
        assert_eq!(def.required_features, vec!["upload_multiple_artifacts"]);
    }

    #[test]
    fn features_are_derived_from_the_spec() {
        let spec = JobSpecInput {
            allow_failure_exit_codes: vec![3],
            refspecs: Some(vec!["+refs/heads/x:refs/remotes/origin/x".into()]),
            release: Some(json!({"tag_name": "v1", "description": "d"})),
            ..JobSpecInput::new(1, ["x"]).with_artifact(ArtifactInput {
                exclude: vec!["a/b".into()],
                ..ArtifactInput::archive(["a"])
            })
        };
        let def = validate(spec, facts()).expect("valid");
        assert_eq!(
            def.required_features,
            vec![
                "artifacts_exclude",
                "refspecs",
                "return_exit_code",
                "multi_build_steps"
            ]
        );
    }

    #[test]
    fn cache_keys_get_protection_suffix() {
        let spec = JobSpecInput {
            cache: vec![json!({"key": "gems", "paths": ["vendor"], "fallback_keys": ["base"]})],
            ..JobSpecInput::new(1, ["x"])
        };
        let def = validate(spec, facts()).expect("valid");
        assert_eq!(def.cache[0]["key"], "gems-protected");
        assert_eq!(def.cache[0]["fallback_keys"][0], "base-protected");
        assert_eq!(def.required_features, vec!["fallback_cache_keys"]);
    }
}
