//! Pure builders: a claimed job + settings → the Secret(s) and the Pod that run it.
//!
//! Nothing here talks to the cluster, so the whole shape of what we create is pinned by
//! snapshot tests (`tests/snapshots/`). The Pod:
//!
//! - `gsr-init` (init container, `gsr_image`): copies `gsr` into the `gsr-bin` `emptyDir`,
//!   so any job image can run it without having it installed.
//! - `svc-N` (init containers with `restartPolicy: Always`, i.e. native sidecars,
//!   Kubernetes ≥ 1.29): the job's `services:`. They start before the job container and are
//!   stopped by the kubelet when it ends, so a job with services still reaches a final
//!   phase. All containers of a Pod share one network namespace: a service listens on
//!   `localhost`, and its aliases resolve to `127.0.0.1` through `hostAliases` (Pod-level
//!   `/etc/hosts` entries), which is how the job reaches `postgres:5432` by name.
//! - `job` (the job's `image:`, else `default_image`, else `gsr_image`): runs
//!   `/gsr-bin/gsr exec --job /gsr-job/payload.json`. A job `entrypoint:` becomes the
//!   container's `command` with the gsr command line as its arguments (Docker's
//!   ENTRYPOINT + CMD); without one, the image's entrypoint is not used.
//! - The payload (it holds the job token) is the per-job Secret's `payload.json`, mounted
//!   read-only at `/gsr-job`; never argv, never an environment variable. The job's
//!   registry credentials, if any, are a second per-job Secret of type
//!   `kubernetes.io/dockerconfigjson` listed in `imagePullSecrets`.
//! - `restartPolicy: Never`, `activeDeadlineSeconds` = job timeout + margin, no
//!   environment variables, no service links, no service-account token unless the
//!   settings ask for it, the control plane's object as owner when configured.
//! - Labels: `gsr.claimer`, `gsr.job` (from [`gsr_backend::Launch::labels`], sanitized to
//!   label syntax) and `app.kubernetes.io/managed-by: gsr`; the unsanitized values are
//!   kept as annotations of the same keys, which the reaper
//!   ([`Backend::reap`](gsr_backend::Backend::reap)) reads.

use std::collections::BTreeMap;

use gsr_job::{ExposeSecret, Image, JobSpec, RegistryCredential};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, HostAlias, LocalObjectReference, Pod, PodSpec,
    ResourceRequirements, Secret, SecretVolumeSource, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;

use crate::settings::{is_dns_subdomain, K8sSettings, Resources};

/// Label every object of a job carries, with the value `gsr`.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The claimer label (and annotation) key.
pub const CLAIMER: &str = "gsr.claimer";
/// The job id label (and annotation) key.
pub const JOB: &str = "gsr.job";
/// Name of the job container (the one whose exit status is the job's).
pub const JOB_CONTAINER: &str = "job";
/// Name of the init container that copies `gsr`.
pub const INIT_CONTAINER: &str = "gsr-init";
/// Where `gsr` is in every container that mounts it.
pub const GSR_BIN: &str = "/gsr-bin/gsr";
/// Where the payload is mounted.
pub const PAYLOAD_PATH: &str = "/gsr-job/payload.json";
/// The job's checkout directory (an `emptyDir`).
pub const BUILDS_DIR: &str = "/builds";

/// What one job needs from the claimer, without the `Launch`'s cancellation token.
#[derive(Clone, Copy)]
pub struct JobInput<'a> {
    /// GitLab's job id.
    pub job_id: u64,
    /// The claimed payload (a secret: it goes into the Secret only).
    pub payload: &'a [u8],
    /// GitLab URL for `gsr exec --url`.
    pub gitlab_url: &'a str,
    /// The job's timeout.
    pub timeout: std::time::Duration,
    /// `Launch::labels`.
    pub labels: &'a BTreeMap<String, String>,
}

/// What of the parsed job shapes its Pod: `image:`, `services:` and the registry
/// credentials to pull them. The default (no image, no services) is what a payload that
/// cannot be parsed gets: `gsr exec` then fails the job in GitLab with the reason.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobShape<'a> {
    /// The job's `image:`.
    pub image: Option<&'a Image>,
    /// The job's `services:`.
    pub services: &'a [Image],
    /// Credentials for pulling them.
    pub registry_credentials: &'a [RegistryCredential],
}

impl<'a> From<&'a JobSpec> for JobShape<'a> {
    fn from(job: &'a JobSpec) -> Self {
        Self {
            image: job.image.as_ref(),
            services: &job.services,
            registry_credentials: &job.registry_credentials,
        }
    }
}

/// The objects of one job, in creation order: the Secrets, then the Pod.
#[derive(Debug, Clone, PartialEq)]
pub struct JobObjects {
    /// The payload Secret (named like the Pod), then the registry-credentials Secret if
    /// the job has credentials.
    pub secrets: Vec<Secret>,
    /// The Pod.
    pub pod: Pod,
}

/// A fresh object name for a job: `gsr-job-<id>-<8 hex>` (the suffix keeps a second
/// attempt, or another claimer's leftover, from colliding).
pub fn object_name(job_id: u64) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("gsr-job-{job_id}-{}", &suffix[..8])
}

/// Build the Secrets and the Pod of a job named `name` (see [`object_name`]).
pub fn build(
    input: JobInput<'_>,
    job: JobShape<'_>,
    settings: &K8sSettings,
    name: &str,
) -> JobObjects {
    let labels = labels(input.labels, &settings.labels);
    let annotations: BTreeMap<String, String> = input
        .labels
        .iter()
        .filter(|(k, _)| k.starts_with("gsr."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let meta = |name: String| ObjectMeta {
        name: Some(name),
        namespace: Some(settings.namespace.clone()),
        labels: Some(labels.clone()),
        annotations: (!annotations.is_empty()).then(|| annotations.clone()),
        ..ObjectMeta::default()
    };

    let payload_secret = Secret {
        metadata: meta(name.to_string()),
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            "payload.json".to_string(),
            ByteString(input.payload.to_vec()),
        )])),
        ..Secret::default()
    };
    let mut secrets = vec![payload_secret];
    let mut pull_secrets: Vec<LocalObjectReference> = settings
        .image_pull_secrets
        .iter()
        .map(|n| LocalObjectReference { name: n.clone() })
        .collect();
    if let Some(config) = docker_config(job.registry_credentials) {
        let pull_name = format!("{name}-pull");
        secrets.push(Secret {
            metadata: meta(pull_name.clone()),
            type_: Some("kubernetes.io/dockerconfigjson".into()),
            immutable: Some(true),
            data: Some(BTreeMap::from([(
                ".dockerconfigjson".to_string(),
                ByteString(config),
            )])),
            ..Secret::default()
        });
        pull_secrets.push(LocalObjectReference { name: pull_name });
    }

    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    };

    let init = Container {
        name: INIT_CONTAINER.into(),
        image: Some(settings.gsr_image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        command: Some(vec![
            "cp".into(),
            settings.gsr_binary_path.clone(),
            GSR_BIN.into(),
        ]),
        volume_mounts: Some(vec![mount("gsr-bin", "/gsr-bin", false)]),
        resources: resources(&settings.helper_resources),
        ..Container::default()
    };
    let mut init_containers = vec![init];
    let mut aliases: Vec<String> = Vec::new();
    for (i, service) in job.services.iter().enumerate() {
        init_containers.push(Container {
            name: format!("svc-{i}"),
            image: Some(service.name.clone()),
            image_pull_policy: pull_policy(service, settings),
            // The service's own `variables:` as written in the CI file (GitLab does not
            // expand them and neither do we); never the job's variables.
            env: (!service.variables.is_empty()).then(|| {
                service
                    .variables
                    .iter()
                    .map(|(k, v)| EnvVar {
                        name: k.clone(),
                        value: Some(v.clone()),
                        ..EnvVar::default()
                    })
                    .collect()
            }),
            command: entrypoint(service),
            args: (!service.command.is_empty()).then(|| service.command.clone()),
            restart_policy: Some("Always".into()),
            resources: resources(&settings.service_resources),
            ..Container::default()
        });
        for alias in service_aliases(service) {
            if !aliases.contains(&alias) {
                aliases.push(alias);
            }
        }
    }

    let image = job
        .image
        .map(|i| i.name.clone())
        .filter(|n| !n.is_empty())
        .or_else(|| settings.default_image.clone())
        .unwrap_or_else(|| settings.gsr_image.clone());
    let gsr_args: Vec<String> = [
        GSR_BIN,
        "exec",
        "--job",
        PAYLOAD_PATH,
        "--url",
        input.gitlab_url,
        "--builds-dir",
        BUILDS_DIR,
    ]
    .map(String::from)
    .into_iter()
    .chain(settings.exec_args.iter().cloned())
    .collect();
    let (command, args) = match job.image.and_then(entrypoint) {
        Some(ep) => (Some(ep), Some(gsr_args)),
        None => (Some(gsr_args), None),
    };
    let job_container = Container {
        name: JOB_CONTAINER.into(),
        image: Some(image),
        image_pull_policy: job
            .image
            .and_then(|i| pull_policy(i, settings))
            .or_else(|| settings.image_pull_policy.clone()),
        command,
        args,
        working_dir: Some(BUILDS_DIR.into()),
        volume_mounts: Some(vec![
            mount("gsr-bin", "/gsr-bin", true),
            mount("gsr-job", "/gsr-job", true),
            mount("builds", BUILDS_DIR, false),
        ]),
        resources: resources(&settings.resources),
        ..Container::default()
    };

    let empty_dir = |name: &str| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    };
    let volumes = vec![
        empty_dir("gsr-bin"),
        Volume {
            name: "gsr-job".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(name.to_string()),
                // Readable by whatever user the job image runs as; only this Pod mounts it.
                default_mode: Some(0o444),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        empty_dir("builds"),
    ];

    let mut pod_meta = meta(name.to_string());
    pod_meta.owner_references = settings.owner.as_ref().map(|o| {
        vec![OwnerReference {
            api_version: o.api_version.clone(),
            kind: o.kind.clone(),
            name: o.name.clone(),
            uid: o.uid.clone(),
            ..OwnerReference::default()
        }]
    });
    let pod = Pod {
        metadata: pod_meta,
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(settings.active_deadline(input.timeout)),
            termination_grace_period_seconds: Some(
                i64::try_from(settings.abort_grace_secs).unwrap_or(i64::MAX),
            ),
            service_account_name: settings.service_account.clone(),
            automount_service_account_token: Some(settings.automount_service_account_token),
            enable_service_links: Some(false),
            node_selector: (!settings.node_selector.is_empty())
                .then(|| settings.node_selector.clone()),
            tolerations: (!settings.tolerations.is_empty()).then(|| {
                settings
                    .tolerations
                    .iter()
                    .map(|t| Toleration {
                        key: t.key.clone(),
                        operator: t.operator.clone(),
                        value: t.value.clone(),
                        effect: t.effect.clone(),
                        toleration_seconds: t.toleration_seconds,
                    })
                    .collect()
            }),
            image_pull_secrets: (!pull_secrets.is_empty()).then_some(pull_secrets),
            host_aliases: (!aliases.is_empty()).then(|| {
                vec![HostAlias {
                    ip: "127.0.0.1".into(),
                    hostnames: Some(aliases),
                }]
            }),
            init_containers: Some(init_containers),
            containers: vec![job_container],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
        status: None,
    };
    JobObjects { secrets, pod }
}

/// The Pod and Secret labels: the claimer's (sanitized), the operator's, `managed-by`.
fn labels(
    launch: &BTreeMap<String, String>,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = extra.clone();
    for (k, v) in launch {
        let key = sanitize_label_value(k);
        if !key.is_empty() {
            out.insert(key, sanitize_label_value(v));
        }
    }
    out.insert(MANAGED_BY.into(), "gsr".into());
    out
}

/// Turn any text into a valid label value: at most 63 characters of `[A-Za-z0-9._-]`,
/// starting and ending with a letter or digit (other characters become `-`).
pub fn sanitize_label_value(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The image's `pull_policy:` (GitLab lists accepted policies; Kubernetes takes one: the
/// first), else the settings'.
fn pull_policy(image: &Image, settings: &K8sSettings) -> Option<String> {
    let first = image.pull_policy.first().and_then(|p| match p.as_str() {
        "always" => Some("Always"),
        "if-not-present" => Some("IfNotPresent"),
        "never" => Some("Never"),
        _ => None,
    });
    first
        .map(str::to_string)
        .or_else(|| settings.image_pull_policy.clone())
}

/// A job/service `entrypoint:` as a container `command` (GitLab's `[""]` = none).
fn entrypoint(image: &Image) -> Option<Vec<String>> {
    let ep: Vec<String> = image
        .entrypoint
        .iter()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect();
    (!ep.is_empty()).then_some(ep)
}

/// The host names a service answers to: its `alias:` list and the name GitLab derives
/// from the image (`registry.example.com/group/postgres:15` → `registry.example.com-group-postgres`,
/// `postgres:15` → `postgres`). Names that are not valid host names are dropped
/// (Kubernetes rejects them in `hostAliases`); GitLab's `__` spelling is one of them.
fn service_aliases(service: &Image) -> Vec<String> {
    let mut name = service.name.as_str();
    if let Some(at) = name.find('@') {
        name = &name[..at];
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    if let Some(colon) = name[last_slash..].rfind(':') {
        name = &name[..last_slash + colon];
    }
    let derived = name.replace('/', "-").to_ascii_lowercase();
    service
        .aliases
        .iter()
        .map(|a| a.to_ascii_lowercase())
        .chain(std::iter::once(derived))
        .filter(|a| is_dns_subdomain(a))
        .collect()
}

/// `{"auths": {host: {username, password, auth}}}` from the job's registry credentials.
fn docker_config(credentials: &[RegistryCredential]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    if credentials.is_empty() {
        return None;
    }
    let mut auths = serde_json::Map::new();
    for c in credentials {
        let password = c.password.expose_secret();
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", c.username, password));
        auths.insert(
            c.registry.clone(),
            serde_json::json!({"username": c.username, "password": password, "auth": auth}),
        );
    }
    serde_json::to_vec(&serde_json::json!({ "auths": auths })).ok()
}

fn resources(r: &Resources) -> Option<ResourceRequirements> {
    if r.requests.is_empty() && r.limits.is_empty() {
        return None;
    }
    let q = |m: &BTreeMap<String, String>| {
        (!m.is_empty()).then(|| {
            m.iter()
                .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                .collect()
        })
    };
    Some(ResourceRequirements {
        requests: q(&r.requests),
        limits: q(&r.limits),
        ..ResourceRequirements::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_sanitized() {
        assert_eq!(
            sanitize_label_value("replica-0/1732540000"),
            "replica-0-1732540000"
        );
        assert_eq!(sanitize_label_value("--a b--"), "a-b");
        assert_eq!(sanitize_label_value(&"x".repeat(80)).len(), 63);
        assert_eq!(sanitize_label_value("ü"), "");
    }

    #[test]
    fn service_aliases_follow_gitlab() {
        let svc = |name: &str, aliases: &[&str]| Image {
            name: name.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            ..Image::default()
        };
        assert_eq!(service_aliases(&svc("postgres:15", &[])), ["postgres"]);
        assert_eq!(
            service_aliases(&svc(
                "registry.example.com/group/redis:7@sha256:ab",
                &["Cache"]
            )),
            ["cache", "registry.example.com-group-redis"]
        );
        // A registry port makes the derived name no host name; invalid aliases are dropped.
        assert_eq!(
            service_aliases(&svc(
                "registry.example.com:5000/redis",
                &["bad_alias", "db"]
            )),
            ["db"]
        );
    }
}
