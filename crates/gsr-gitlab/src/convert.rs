//! Wire → job model. The only place that knows how GitLab's JSON maps onto [`gsr_job`].
//!
//! A payload we cannot run still usually tells us who the job is (`id`, `token`): the
//! caller then fails *that job* with a readable reason instead of dropping it silently or
//! crashing. [`PayloadError`] keeps what could be salvaged for that purpose.

use std::time::Duration;

use gsr_job::{
    ArtifactFormat, ArtifactRule, CacheRule, Dependency, GitSource, Hook, Image, JobSpec,
    RegistryCredential, SecretString, Step, StepName, Variable, Variables, When,
};

use crate::wire::{self, JobResponse};

/// GitLab's default job timeout when `runner_info.timeout` is missing or 0.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(7200);

/// A job payload that cannot be run.
#[derive(Debug, thiserror::Error)]
#[error("invalid job payload: {message}")]
pub struct PayloadError {
    /// Job id, when it could be read.
    pub job_id: Option<u64>,
    /// Job token, when it could be read (to report the failure to GitLab).
    pub job_token: Option<SecretString>,
    /// What is wrong, for the trace and logs.
    pub message: String,
}

/// Parse a `POST /jobs/request` 201 body (also what `gsr exec --job` reads).
pub fn parse_job(body: &[u8]) -> Result<JobSpec, PayloadError> {
    let wire: JobResponse = match serde_json::from_slice(body) {
        Ok(w) => w,
        Err(e) => {
            // Salvage id and token from whatever JSON there is.
            let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
            let job_id = v
                .as_ref()
                .and_then(|v| v.get("id"))
                .and_then(|v| v.as_u64());
            let job_token = v
                .as_ref()
                .and_then(|v| v.get("token"))
                .and_then(|v| v.as_str())
                .map(|s| SecretString::from(s.to_string()));
            return Err(PayloadError {
                job_id,
                job_token,
                message: format!("not a valid job object: {e}"),
            });
        }
    };
    to_spec(wire)
}

fn to_spec(w: JobResponse) -> Result<JobSpec, PayloadError> {
    let job_id = w.id;
    let job_token = w.token.clone().map(SecretString::from);
    let fail = |message: String| PayloadError {
        job_id,
        job_token: job_token.clone(),
        message,
    };
    let id = job_id.ok_or_else(|| fail("missing job id".into()))?;
    let token = match w.token.as_deref() {
        Some(t) if !t.is_empty() => SecretString::from(t.to_string()),
        _ => return Err(fail("missing job token".into())),
    };
    if w.run.as_ref().is_some_and(|r| !r.is_null()) && w.steps.is_empty() {
        return Err(fail(
            "the job uses CI Steps (`run:`), which this runner does not support".into(),
        ));
    }
    if w.steps.is_empty() {
        return Err(fail("the job has no steps".into()));
    }

    let mut artifacts = Vec::with_capacity(w.artifacts.len());
    for a in w.artifacts {
        let format = ArtifactFormat::parse(&a.artifact_format).ok_or_else(|| {
            fail(format!(
                "unsupported artifact format {:?} for artifact {:?}",
                a.artifact_format, a.name
            ))
        })?;
        artifacts.push(ArtifactRule {
            name: a.name,
            untracked: a.untracked,
            paths: a.paths,
            exclude: a.exclude,
            when: When::parse(&a.when),
            expire_in: Some(a.expire_in).filter(|s| !s.is_empty()),
            artifact_type: if a.artifact_type.is_empty() {
                "archive".into()
            } else {
                a.artifact_type
            },
            format,
        });
    }

    let mut dependencies = Vec::with_capacity(w.dependencies.len());
    for d in w.dependencies {
        let dep_id =
            d.id.ok_or_else(|| fail(format!("dependency {:?} has no id", d.name)))?;
        dependencies.push(Dependency {
            id: dep_id,
            name: d.name,
            token: if d.token.is_empty() {
                token.clone()
            } else {
                SecretString::from(d.token)
            },
            artifacts_file: d
                .artifacts_file
                .map(|f| f.filename)
                .filter(|f| !f.is_empty()),
        });
    }

    let timeout = match w.runner_info.timeout {
        Some(t) if t > 0 => Duration::from_secs(t),
        _ => DEFAULT_JOB_TIMEOUT,
    };

    let project_full_path = if w.job_info.project_full_path.is_empty() {
        format!("project-{}", w.job_info.project_id.unwrap_or(0))
    } else {
        w.job_info.project_full_path
    };

    Ok(JobSpec {
        id,
        token,
        name: w.job_info.name,
        stage: w.job_info.stage,
        project_id: w.job_info.project_id.unwrap_or(0),
        project_name: w.job_info.project_name,
        project_full_path,
        pipeline_id: w.job_info.pipeline_id.unwrap_or(0),
        allow_git_fetch: w.allow_git_fetch,
        git: GitSource {
            repo_url: SecretString::from(w.git_info.repo_url),
            sha: w.git_info.sha,
            before_sha: w.git_info.before_sha,
            ref_name: w.git_info.ref_name,
            ref_type: w.git_info.ref_type,
            refspecs: w.git_info.refspecs,
            depth: w.git_info.depth.unwrap_or(0).min(u32::MAX as u64) as u32,
            object_format: if w.git_info.repo_object_format.is_empty() {
                "sha1".into()
            } else {
                w.git_info.repo_object_format
            },
        },
        timeout,
        variables: Variables(
            w.variables
                .into_iter()
                .filter(|v| !v.key.is_empty())
                .map(|v| Variable {
                    key: v.key,
                    value: v.value,
                    public: v.public,
                    masked: v.masked,
                    file: v.file,
                    raw: v.raw,
                })
                .collect(),
        ),
        steps: w
            .steps
            .into_iter()
            .map(|s| Step {
                name: StepName::parse(&s.name),
                script: s.script,
                timeout: s.timeout.filter(|t| *t > 0).map(Duration::from_secs),
                when: When::parse(&s.when),
                allow_failure: s.allow_failure,
            })
            .collect(),
        hooks: w
            .hooks
            .into_iter()
            .filter(|h| !h.script.is_empty())
            .map(|h| Hook {
                name: h.name,
                script: h.script,
            })
            .collect(),
        artifacts,
        dependencies,
        cache: w
            .cache
            .into_iter()
            .map(|c| CacheRule {
                key: c.key,
                paths: c.paths,
                untracked: c.untracked,
                policy: c.policy,
                when: When::parse(&c.when),
                fallback_keys: c.fallback_keys,
            })
            .collect(),
        image: w.image.filter(|i| !i.name.is_empty()).map(image),
        services: w.services.into_iter().map(image).collect(),
        registry_credentials: w
            .credentials
            .into_iter()
            .filter(|c| c.kind.eq_ignore_ascii_case("registry") && !c.url.is_empty())
            .map(|c| RegistryCredential {
                registry: c.url,
                username: c.username,
                password: SecretString::from(c.password),
            })
            .collect(),
        token_mask_prefixes: w.features.token_mask_prefixes,
        known_failure_reasons: w.features.failure_reasons,
        trace_sections: w.features.trace_sections,
    })
}

fn image(i: wire::ImageWire) -> Image {
    Image {
        name: i.name,
        entrypoint: i.entrypoint,
        command: i.command,
        aliases: i
            .alias
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        pull_policy: i
            .pull_policy
            .iter()
            .map(|p| p.trim().to_ascii_lowercase())
            .filter(|p| !p.is_empty())
            .collect(),
        variables: i.variables.into_iter().map(|v| (v.key, v.value)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gsr_job::ExposeSecret;

    const FIXTURE: &str = include_str!("../tests/fixtures/job_response.json");

    #[test]
    fn parses_the_reference_payload() {
        let j = parse_job(FIXTURE.as_bytes()).expect("fixture parses");
        assert_eq!(j.id, 8712);
        assert_eq!(
            j.token.expose_secret(),
            "glcbt-64_FAKEjobTOKENaaaaaaaaaaaaa"
        );
        assert_eq!(j.project_full_path, "gitlab-org/gitlab-test");
        assert_eq!(j.git.depth, 20);
        assert_eq!(j.git.refspecs.len(), 2);
        assert_eq!(j.timeout, Duration::from_secs(3600));
        assert_eq!(j.steps.len(), 2);
        assert_eq!(j.steps[1].name, StepName::AfterScript);
        assert_eq!(j.steps[1].when, When::Always);
        assert_eq!(j.artifacts[1].format, ArtifactFormat::Gzip);
        assert_eq!(j.artifacts[1].artifact_type, "junit");
        assert_eq!(j.artifacts[0].exclude, vec!["log/secret.log".to_string()]);
        assert_eq!(j.dependencies.len(), 2);
        assert_eq!(
            j.dependencies[0].artifacts_file.as_deref(),
            Some("artifacts.zip")
        );
        assert!(j.dependencies[1].artifacts_file.is_none());
        let file = j.variables.get_var("KUBECONFIG_FILE").expect("file var");
        assert!(file.file);
        assert!(j.variables.get_var("TEMPLATE_STR").expect("raw").raw);
        assert!(j
            .variables
            .masked_values()
            .contains(&"s3cr3t-Value_123".to_string()));
        assert!(j.known_failure_reasons.len() > 30);
        assert_eq!(j.services[0].aliases, vec!["db".to_string()]);
        assert_eq!(
            j.image.as_ref().expect("image").pull_policy,
            ["if-not-present"]
        );
        assert_eq!(
            j.services[0].variables,
            [("POSTGRES_PASSWORD".to_string(), "postgres".to_string())]
        );
        let shown = format!("{:?}", j.services[0]);
        assert!(shown.contains("POSTGRES_PASSWORD") && !shown.contains("\"postgres\""));
        assert_eq!(j.registry_credentials.len(), 1);
        assert_eq!(
            j.registry_credentials[0].registry,
            "registry.gitlab.example.com"
        );
        assert_eq!(j.registry_credentials[0].username, "gitlab-ci-token");
        assert_eq!(j.hooks.len(), 1);
        assert_eq!(j.hooks[0].name, "pre_get_sources_script");
        // Debug output never shows the token.
        assert!(!format!("{j:?}").contains("FAKEjobTOKEN"));
    }

    #[test]
    fn tolerates_nulls_missing_and_unknown_fields() {
        let body = r#"{"id": 5, "token": "glcbt-x", "unknown_thing": {"a": 1},
            "job_info": null, "git_info": {"refspecs": null, "depth": "3"},
            "runner_info": {"timeout": 0}, "variables": null, "artifacts": null,
            "dependencies": null, "image": null, "services": null, "features": null,
            "steps": [{"name": "script", "script": ["true"], "timeout": null, "when": null}]}"#;
        let j = parse_job(body.as_bytes()).expect("lenient parse");
        assert_eq!(j.id, 5);
        assert_eq!(j.git.depth, 3);
        assert_eq!(j.timeout, DEFAULT_JOB_TIMEOUT);
        assert!(j.variables.0.is_empty());
        assert_eq!(j.steps[0].when, When::OnSuccess);
    }

    #[test]
    fn malformed_payload_keeps_id_and_token_for_reporting() {
        let body = br#"{"id": 9, "token": "glcbt-t", "steps": "not-a-list"}"#;
        let e = parse_job(body).expect_err("must fail");
        assert_eq!(e.job_id, Some(9));
        assert_eq!(e.job_token.expect("token").expose_secret(), "glcbt-t");
        assert!(
            e.message.contains("not a valid job object"),
            "{}",
            e.message
        );

        let e = parse_job(b"{\"id\": 9}").expect_err("no token");
        assert_eq!(e.message, "missing job token");
        let e = parse_job(b"garbage").expect_err("not json");
        assert_eq!(e.job_id, None);
    }

    #[test]
    fn unknown_artifact_format_is_a_clear_error() {
        let body = br#"{"id": 1, "token": "t", "steps": [{"name":"script","script":["true"]}],
            "artifacts": [{"name": "x", "artifact_format": "zipzstd"}]}"#;
        let e = parse_job(body).expect_err("zipzstd unsupported");
        assert!(e.message.contains("zipzstd"), "{}", e.message);
    }
}
