//! The `POST /jobs/request` 201 body: one job, shaped like `fixtures/job_response.json`.
//!
//! Built at pick time, because several parts only exist then: the runner (`CI_RUNNER_*`,
//! its `maximum_timeout` capping `runner_info.timeout`), the start time, the queue figures,
//! and the dependency entries whose `token` is the picked job's own token. Optional parts
//! are `null` or empty exactly where GitLab leaves them so, so a runner that trips over
//! `image: null` trips here too.

use std::time::SystemTime;

use serde_json::{json, Value};

use crate::spec::{PayloadVariable, FAILURE_REASONS};
use crate::state::{JobRec, ProjectRec, RunnerRec};
use crate::util::{rfc3339, ruby_array, slugify};

/// The server's own version, as `CI_SERVER_VERSION`.
pub(crate) const SERVER_VERSION: (u32, u32, u32) = (18, 6, 0);

/// Everything [`build`] reads.
pub(crate) struct PayloadInput<'a> {
    pub base_url: &'a str,
    pub instance_uuid: &'a str,
    pub job: &'a JobRec,
    pub project: &'a ProjectRec,
    pub runner: &'a RunnerRec,
    /// `dependencies[]` entries, already built.
    pub dependencies: Vec<Value>,
    pub queue_size: usize,
    pub queue_depth: usize,
    /// Jobs of this project running on instance runners (for instance runners only).
    pub running_on_instance_runners: usize,
    pub now: SystemTime,
}

/// Scheme, host and port of the external URL.
struct ServerUrl {
    scheme: String,
    host: String,
    port: u16,
    authority: String,
}

fn server_url(base: &str) -> ServerUrl {
    let uri: axum::http::Uri = base.parse().unwrap_or_default();
    let scheme = uri.scheme_str().unwrap_or("http").to_string();
    let host = uri.host().unwrap_or("localhost").to_string();
    let default_port = if scheme == "https" { 443 } else { 80 };
    let port = uri.port_u16().unwrap_or(default_port);
    let authority = uri
        .authority()
        .map_or_else(|| host.clone(), |a| a.as_str().to_string());
    ServerUrl {
        scheme,
        host,
        port,
        authority,
    }
}

/// The job's effective timeout: its own, capped by the runner's `maximum_timeout`.
pub(crate) fn effective_timeout(job: &JobRec, runner: &RunnerRec) -> u64 {
    runner
        .maximum_timeout
        .map_or(job.def.timeout, |max| job.def.timeout.min(max))
}

/// Builds the payload.
pub(crate) fn build(p: &PayloadInput<'_>) -> Value {
    let job = p.job;
    let def = &job.def;
    let server = server_url(p.base_url);
    let base = p.base_url;
    let project_url = format!("{base}/{}", p.project.path);
    let repo_url = format!(
        "{}://gitlab-ci-token:{}@{}/{}.git",
        server.scheme, job.token, server.authority, p.project.path
    );
    let timeout = effective_timeout(job, p.runner);
    let step_timeout = def.step_timeout.unwrap_or(timeout);

    let mut refspecs = Vec::new();
    if job.pipeline_ref_created {
        refspecs.push(format!(
            "+refs/pipelines/{0}:refs/pipelines/{0}",
            job.pipeline_id
        ));
    }
    refspecs.extend(def.refspecs.iter().cloned());

    let mut steps = vec![json!({
        "name": "script",
        "script": def.script,
        "timeout": step_timeout,
        "when": "on_success",
        "allow_failure": def.allow_failure,
    })];
    if let Some(release) = &def.release_script {
        steps.push(json!({
            "name": "release",
            "script": release,
            "timeout": step_timeout,
            "when": "on_success",
            "allow_failure": false,
        }));
    }
    if !def.after_script.is_empty() {
        steps.push(json!({
            "name": "after_script",
            "script": def.after_script,
            "timeout": step_timeout,
            "when": "always",
            "allow_failure": true,
        }));
    }

    let running_count = if p.runner.is_instance_runner() {
        p.running_on_instance_runners.to_string()
    } else {
        "+Inf".to_string()
    };
    let queued_for = p
        .now
        .duration_since(job.queued_at)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);

    json!({
        "id": job.id,
        "token": job.token,
        "allow_git_fetch": def.allow_git_fetch,
        "job_info": {
            "id": job.id,
            "name": def.name,
            "stage": def.stage,
            "pipeline_id": job.pipeline_id,
            "project_id": p.project.id,
            "project_name": p.project.name,
            "project_full_path": p.project.path,
            "namespace_id": p.project.namespace_id,
            "root_namespace_id": p.project.root_namespace_id,
            "organization_id": 1,
            "instance_id": p.instance_uuid,
            "instance_uuid": p.instance_uuid,
            "user_id": 1,
            "time_in_queue_seconds": (queued_for * 1000.0).round() / 1000.0,
            "project_jobs_running_on_instance_runners_count": running_count,
            "queue_size": p.queue_size,
            "queue_depth": p.queue_depth,
        },
        "git_info": {
            "repo_url": repo_url,
            "repo_object_format": "sha1",
            "ref": def.git_ref,
            "sha": def.sha,
            "before_sha": "0".repeat(40),
            "ref_type": def.ref_type,
            "refspecs": refspecs,
            "depth": def.git_depth,
            "protected": def.protected,
        },
        "runner_info": {
            "uuid": null,
            "timeout": timeout,
            "runner_session_url": null,
        },
        "variables": variables(p, &server, &project_url, &repo_url),
        "steps": steps,
        "hooks": def.hooks,
        "image": def.image,
        "services": def.services,
        "artifacts": def.artifacts,
        "cache": def.cache,
        "credentials": [],
        "dependencies": p.dependencies,
        "features": {
            "trace_sections": true,
            "failure_reasons": FAILURE_REASONS,
        },
    })
}

fn variables(
    p: &PayloadInput<'_>,
    server: &ServerUrl,
    project_url: &str,
    repo_url: &str,
) -> Vec<PayloadVariable> {
    use PayloadVariable as V;
    let job = p.job;
    let def = &job.def;
    let base = p.base_url;
    let (major, minor, patch) = SERVER_VERSION;
    let fqdn = if matches!(server.port, 80 | 443) {
        server.host.clone()
    } else {
        format!("{}:{}", server.host, server.port)
    };
    let mut vars = vec![
        V::public("CI_PIPELINE_ID", job.pipeline_id.to_string()),
        V::public(
            "CI_PIPELINE_URL",
            format!("{project_url}/-/pipelines/{}", job.pipeline_id),
        ),
        V::public("CI_JOB_ID", job.id.to_string()),
        V::public("CI_JOB_URL", format!("{project_url}/-/jobs/{}", job.id)),
        V::secret("CI_JOB_TOKEN", &job.token, true),
        V::public("CI_JOB_STARTED_AT", rfc3339(p.now)),
        V::public("CI_REGISTRY_USER", "gitlab-ci-token"),
        V::secret("CI_REGISTRY_PASSWORD", &job.token, true),
        V::secret("CI_REPOSITORY_URL", repo_url, false),
        V::public("CI_DEPENDENCY_PROXY_USER", "gitlab-ci-token"),
        V::secret("CI_DEPENDENCY_PROXY_PASSWORD", &job.token, true),
        V::public("CI_JOB_NAME", &def.name),
        V::public("CI_JOB_NAME_SLUG", slugify(&def.name)),
        V::public("CI_JOB_STAGE", &def.stage),
        V::public("CI_NODE_TOTAL", "1"),
        V::public("CI", "true"),
        V::public("GITLAB_CI", "true"),
        V::public("CI_SERVER_URL", base),
        V::public("CI_SERVER_HOST", &server.host),
        V::public("CI_SERVER_PORT", server.port.to_string()),
        V::public("CI_SERVER_PROTOCOL", &server.scheme),
        V::public("CI_SERVER_FQDN", fqdn),
        V::public("CI_SERVER_NAME", "GitLab"),
        V::public("CI_SERVER_VERSION", format!("{major}.{minor}.{patch}")),
        V::public("CI_SERVER_VERSION_MAJOR", major.to_string()),
        V::public("CI_SERVER_VERSION_MINOR", minor.to_string()),
        V::public("CI_SERVER_VERSION_PATCH", patch.to_string()),
        V::public("CI_SERVER_REVISION", "gsrsim0"),
        V::public("CI_API_V4_URL", format!("{base}/api/v4")),
        V::public("CI_API_GRAPHQL_URL", format!("{base}/api/graphql")),
        V::public("CI_PROJECT_ID", p.project.id.to_string()),
        V::public("CI_PROJECT_NAME", &p.project.name),
        V::public("CI_PROJECT_TITLE", &p.project.name),
        V::public("CI_PROJECT_PATH", &p.project.path),
        V::public("CI_PROJECT_PATH_SLUG", slugify(&p.project.path)),
        V::public("CI_PROJECT_NAMESPACE", &p.project.namespace),
        V::public(
            "CI_PROJECT_NAMESPACE_ID",
            p.project.namespace_id.to_string(),
        ),
        V::public(
            "CI_PROJECT_ROOT_NAMESPACE",
            p.project.namespace.split('/').next().unwrap_or_default(),
        ),
        V::public("CI_PROJECT_URL", project_url),
        V::public("CI_PROJECT_VISIBILITY", "private"),
        V::public("CI_DEFAULT_BRANCH", &def.default_branch),
        V::public("CI_CONFIG_PATH", ".gitlab-ci.yml"),
        V::public("CI_PIPELINE_IID", job.pipeline_iid.to_string()),
        V::public("CI_PIPELINE_SOURCE", "push"),
        V::public("CI_PIPELINE_CREATED_AT", rfc3339(job.created_at)),
        V::public("CI_COMMIT_SHA", &def.sha),
        V::public(
            "CI_COMMIT_SHORT_SHA",
            def.sha.chars().take(8).collect::<String>(),
        ),
        V::public("CI_COMMIT_BEFORE_SHA", "0".repeat(40)),
        V::public("CI_COMMIT_REF_NAME", &def.git_ref),
        V::public("CI_COMMIT_REF_SLUG", slugify(&def.git_ref)),
    ];
    if def.ref_type == "tag" {
        vars.push(V::public("CI_COMMIT_TAG", &def.git_ref));
    } else {
        vars.push(V::public("CI_COMMIT_BRANCH", &def.git_ref));
    }
    vars.push(V::public(
        "CI_COMMIT_REF_PROTECTED",
        def.protected.to_string(),
    ));
    if let Some(commit) = &def.commit {
        let title = commit
            .message
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        let description = commit
            .message
            .split_once('\n')
            .map(|(_, rest)| rest.trim_start_matches('\n').to_string())
            .unwrap_or_default();
        vars.push(V::public("CI_COMMIT_MESSAGE", &commit.message));
        vars.push(V::public("CI_COMMIT_TITLE", title));
        vars.push(V::public("CI_COMMIT_DESCRIPTION", description));
        vars.push(V::public("CI_COMMIT_AUTHOR", &commit.author));
        vars.push(V::public("CI_COMMIT_TIMESTAMP", &commit.timestamp));
    }
    vars.extend([
        V::public("CI_RUNNER_ID", p.runner.id.to_string()),
        V::public("CI_RUNNER_DESCRIPTION", &p.runner.description),
        V::public("CI_RUNNER_TAGS", ruby_array(&p.runner.tags)),
        V::public("GITLAB_USER_ID", "1"),
        V::public("GITLAB_USER_LOGIN", "root"),
        V::public("GITLAB_USER_NAME", "Administrator"),
        V::public("GITLAB_USER_EMAIL", "admin@example.com"),
    ]);
    if def.git_depth > 0 {
        vars.push(V::public("GIT_DEPTH", def.git_depth.to_string()));
    }
    vars.extend(def.variables.iter().cloned());
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_url_parts() {
        let s = server_url("http://127.0.0.1:8929");
        assert_eq!(
            (s.scheme.as_str(), s.host.as_str(), s.port),
            ("http", "127.0.0.1", 8929)
        );
        assert_eq!(s.authority, "127.0.0.1:8929");
        let s = server_url("https://gitlab.example.com");
        assert_eq!(s.port, 443);
    }
}
