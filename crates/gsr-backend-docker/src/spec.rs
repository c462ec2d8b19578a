//! Pure builders: names, labels and the Docker API bodies of one job, from the job's
//! `image:`/`services:` and the settings. No I/O here, so every field the daemon gets is
//! checked by the unit tests below.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
    VolumeCreateRequest,
};
use gsr_job::{Image, RegistryCredential};

use crate::settings::{DockerSettings, PullPolicy};

/// Label naming the backend on everything it creates.
pub const LABEL_BACKEND: &str = "gsr.backend";
/// Label with the creating process's identity ([`crate::owner::Owner`]).
pub const LABEL_OWNER: &str = "gsr.owner";
/// Label with the claimer's identity (from [`gsr_backend::Launch::labels`]).
pub const LABEL_CLAIMER: &str = "gsr.claimer";
/// Label with GitLab's job id.
pub const LABEL_JOB: &str = "gsr.job";
/// Label with the per-job object prefix (one job may be claimed twice over its life,
/// e.g. retried, so the prefix, not the job id, identifies one placement).
pub const LABEL_PLACEMENT: &str = "gsr.placement";
/// Label with the role: `job`, `service`, `network`, `volume`.
pub const LABEL_ROLE: &str = "gsr.role";

/// Where the `gsr` binary appears inside the job container.
pub const GSR_IN_CONTAINER: &str = "/gsr/gsr";

/// Everything named for one placement of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `gsr-job-<id>-<random>`: prefix of every object.
    pub placement: String,
}

impl Names {
    /// Names for job `job_id` with a random suffix `nonce` (lower-case hex).
    pub fn new(job_id: u64, nonce: &str) -> Names {
        Names {
            placement: format!("gsr-job-{job_id}-{nonce}"),
        }
    }
    /// The job container.
    pub fn job(&self) -> String {
        format!("{}-build", self.placement)
    }
    /// The network.
    pub fn network(&self) -> String {
        format!("{}-net", self.placement)
    }
    /// The builds volume.
    pub fn volume(&self) -> String {
        format!("{}-builds", self.placement)
    }
    /// Service container number `i`.
    pub fn service(&self, i: usize) -> String {
        format!("{}-svc-{i}", self.placement)
    }
}

/// The labels of one object: the claimer's ([`gsr_backend::Launch::labels`]) plus ours.
pub fn labels(
    claimer: &BTreeMap<String, String>,
    owner: &str,
    job_id: u64,
    names: &Names,
    role: &str,
) -> HashMap<String, String> {
    let mut l: HashMap<String, String> = claimer
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    l.insert(LABEL_BACKEND.into(), "docker".into());
    l.insert(LABEL_OWNER.into(), owner.to_string());
    l.insert(LABEL_JOB.into(), job_id.to_string());
    l.insert(LABEL_PLACEMENT.into(), names.placement.clone());
    l.insert(LABEL_ROLE.into(), role.into());
    l
}

/// The per-job network: a user-defined bridge, so that services resolve by alias through
/// Docker's embedded DNS and no two jobs share a segment.
pub fn network(names: &Names, labels: HashMap<String, String>) -> NetworkCreateRequest {
    NetworkCreateRequest {
        name: names.network(),
        driver: Some("bridge".into()),
        labels: Some(labels),
        ..Default::default()
    }
}

/// The builds volume.
pub fn volume(names: &Names, labels: HashMap<String, String>) -> VolumeCreateRequest {
    VolumeCreateRequest {
        name: Some(names.volume()),
        driver: Some("local".into()),
        labels: Some(labels),
        ..Default::default()
    }
}

fn limits(s: &DockerSettings) -> HostConfig {
    HostConfig {
        memory: s.memory_bytes,
        // No swap beyond the memory limit: the limit means what it says.
        memory_swap: s.memory_bytes,
        nano_cpus: s.cpus.map(|c| (c * 1e9).round() as i64),
        pids_limit: s.pids_limit,
        ..Default::default()
    }
}

/// The job container: the job's image, `gsr exec --job -` reading the payload from stdin,
/// the `gsr` binary mounted read-only, the builds volume, on the job's network. Its
/// environment is the image's only: nothing of the claimer's goes in.
pub fn job_container(
    s: &DockerSettings,
    image: &str,
    entrypoint: &[String],
    gsr_host_path: &str,
    gitlab_url: &str,
    names: &Names,
    labels: HashMap<String, String>,
) -> ContainerCreateBody {
    let mut cmd = vec![
        GSR_IN_CONTAINER.to_string(),
        "exec".into(),
        "--job".into(),
        "-".into(),
        "--url".into(),
        gitlab_url.to_string(),
        "--builds-dir".into(),
        s.builds_dir.clone(),
    ];
    cmd.extend(s.exec_args.iter().cloned());
    let host_config = HostConfig {
        binds: Some(vec![
            format!("{gsr_host_path}:{GSR_IN_CONTAINER}:ro"),
            format!("{}:{}", names.volume(), s.builds_dir),
        ]),
        network_mode: Some(names.network()),
        privileged: Some(s.privileged),
        extra_hosts: (!s.extra_hosts.is_empty()).then(|| s.extra_hosts.clone()),
        // A tiny init as PID 1 forwards SIGTERM to `gsr exec` and reaps zombies of the job.
        init: Some(true),
        ..limits(s)
    };
    ContainerCreateBody {
        image: Some(image.to_string()),
        // Unset: the image's ENTRYPOINT wraps the command (GitLab's behaviour);
        // `entrypoint: [""]` clears it; anything else replaces it.
        entrypoint: (!entrypoint.is_empty()).then(|| entrypoint.to_vec()),
        cmd: Some(cmd),
        env: Some(Vec::new()),
        labels: Some(labels),
        attach_stdin: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(true),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        tty: Some(false),
        stop_signal: Some("SIGTERM".into()),
        stop_timeout: Some(s.stop_grace_secs as i64),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                names.network(),
                EndpointSettings::default(),
            )])),
        }),
        ..Default::default()
    }
}

/// A service container on the job's network, reachable by its aliases.
pub fn service_container(
    s: &DockerSettings,
    svc: &Image,
    names: &Names,
    labels: HashMap<String, String>,
) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(svc.name.clone()),
        entrypoint: (!svc.entrypoint.is_empty()).then(|| svc.entrypoint.clone()),
        cmd: (!svc.command.is_empty()).then(|| svc.command.clone()),
        env: Some(
            svc.variables
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some(names.network()),
            ..limits(s)
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                names.network(),
                EndpointSettings {
                    aliases: Some(service_aliases(svc)),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    }
}

/// A service's aliases: its `alias:` entries, then the names GitLab derives from the image
/// (`registry/group/pg:16` → `registry-group-pg` and `registry__group__pg`).
pub fn service_aliases(svc: &Image) -> Vec<String> {
    let mut out: Vec<String> = svc.aliases.clone();
    let bare = image_without_tag(&svc.name);
    for a in [bare.replace('/', "-"), bare.replace('/', "__")] {
        if !a.is_empty() && !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// `host:5000/a/b:tag@sha256:…` → `host:5000/a/b`.
pub fn image_without_tag(name: &str) -> &str {
    let name = name.split('@').next().unwrap_or(name);
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    }
}

/// The registry an image is pulled from (`docker.io` for short names).
pub fn registry_of(name: &str) -> &str {
    match name.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// The job's registry credentials for pulling `image` (matched by registry host).
pub fn credentials_for<'a>(
    image: &str,
    creds: &'a [RegistryCredential],
) -> Option<&'a RegistryCredential> {
    let registry = registry_of(image);
    creds
        .iter()
        .find(|c| c.registry.eq_ignore_ascii_case(registry))
}

/// The image reference split for `POST /images/create` (`fromImage`, `tag`).
pub fn pull_ref(name: &str) -> (String, String) {
    if name.contains('@') {
        return (name.to_string(), String::new());
    }
    let bare = image_without_tag(name);
    let tag = if bare.len() < name.len() {
        &name[bare.len() + 1..]
    } else {
        "latest"
    };
    (bare.to_string(), tag.to_string())
}

/// The pull policy for one image: the job's first policy (GitLab sends them in order of
/// preference), else the settings' default; a policy the settings do not allow, or an
/// unknown one, is refused with a message for the job's trace.
pub fn pull_policy(s: &DockerSettings, image: &Image) -> Result<PullPolicy, String> {
    let Some(first) = image.pull_policy.first() else {
        return Ok(s.pull_policy);
    };
    let p = PullPolicy::parse(first)
        .ok_or_else(|| format!("image {}: unknown pull_policy {first:?}", image.name))?;
    if !s.allowed_pull_policies.contains(&p) {
        return Err(format!(
            "image {}: pull_policy {} is not allowed by this runner",
            image.name,
            p.as_str()
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(name: &str) -> Image {
        Image {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn image_names_split_like_docker() {
        assert_eq!(image_without_tag("postgres:16"), "postgres");
        assert_eq!(image_without_tag("host:5000/a/b:1"), "host:5000/a/b");
        assert_eq!(image_without_tag("host:5000/a/b"), "host:5000/a/b");
        assert_eq!(image_without_tag("a/b@sha256:00"), "a/b");
        assert_eq!(registry_of("postgres:16"), "docker.io");
        assert_eq!(registry_of("group/img"), "docker.io");
        assert_eq!(
            registry_of("registry.gitlab.example.com/g/p:1"),
            "registry.gitlab.example.com"
        );
        assert_eq!(registry_of("localhost/x"), "localhost");
        assert_eq!(pull_ref("pg:16"), ("pg".into(), "16".into()));
        assert_eq!(pull_ref("h:1/pg"), ("h:1/pg".into(), "latest".into()));
        assert_eq!(
            pull_ref("pg@sha256:ab"),
            ("pg@sha256:ab".into(), String::new())
        );
    }

    #[test]
    fn registry_credentials_match_the_image_s_registry() {
        let creds = vec![RegistryCredential {
            registry: "registry.gitlab.example.com".into(),
            username: "gitlab-ci-token".into(),
            password: "glcbt-x".to_string().into(),
        }];
        let c = credentials_for("registry.gitlab.example.com/g/p/img:1", &creds);
        assert_eq!(c.map(|c| c.username.as_str()), Some("gitlab-ci-token"));
        assert!(credentials_for("postgres:16", &creds).is_none());
        assert!(credentials_for("other.example.com/img", &creds).is_none());
    }

    #[test]
    fn service_aliases_are_the_job_s_then_derived() {
        let mut svc = img("registry.example.com/tools/pg:16");
        svc.aliases = vec!["db".into()];
        assert_eq!(
            service_aliases(&svc),
            [
                "db",
                "registry.example.com-tools-pg",
                "registry.example.com__tools__pg"
            ]
        );
        assert_eq!(service_aliases(&img("redis")), ["redis"]);
    }

    #[test]
    fn pull_policy_is_the_job_s_first_or_the_default() {
        let s = DockerSettings::default();
        assert_eq!(pull_policy(&s, &img("a")), Ok(PullPolicy::IfNotPresent));
        let mut i = img("a");
        i.pull_policy = vec!["never".into(), "always".into()];
        assert_eq!(pull_policy(&s, &i), Ok(PullPolicy::Never));
        i.pull_policy = vec!["sometimes".into()];
        assert!(pull_policy(&s, &i)
            .expect_err("unknown")
            .contains("sometimes"));
        let strict = DockerSettings {
            allowed_pull_policies: vec![PullPolicy::IfNotPresent],
            ..DockerSettings::default()
        };
        i.pull_policy = vec!["always".into()];
        assert!(pull_policy(&strict, &i)
            .expect_err("not allowed")
            .contains("not allowed"));
    }

    #[test]
    fn job_container_spec() {
        let s = DockerSettings {
            memory_bytes: Some(256 << 20),
            cpus: Some(1.5),
            exec_args: vec!["--output-limit".into(), "8".into()],
            ..DockerSettings::default()
        };
        let names = Names::new(42, "abc");
        let claimer = BTreeMap::from([("gsr.claimer".to_string(), "r1@7".to_string())]);
        let l = labels(
            &claimer,
            "host=h;boot=b;pidns=p;pid=1;start=2",
            42,
            &names,
            "job",
        );
        let c = job_container(
            &s,
            "debian:12",
            &[],
            "/usr/bin/gsr",
            "http://gitlab.example",
            &names,
            l,
        );
        let v = serde_json::to_value(&c).expect("serializes");
        let expected = serde_json::json!({
            "AttachStderr": false,
            "AttachStdin": true,
            "AttachStdout": false,
            "Cmd": ["/gsr/gsr", "exec", "--job", "-", "--url", "http://gitlab.example",
                    "--builds-dir", "/builds", "--output-limit", "8"],
            "Env": [],
            "HostConfig": {
                "Binds": ["/usr/bin/gsr:/gsr/gsr:ro", "gsr-job-42-abc-builds:/builds"],
                "Init": true,
                "Memory": 268435456,
                "MemorySwap": 268435456,
                "NanoCpus": 1500000000,
                "NetworkMode": "gsr-job-42-abc-net",
                "Privileged": false
            },
            "Image": "debian:12",
            "Labels": {
                "gsr.backend": "docker",
                "gsr.claimer": "r1@7",
                "gsr.job": "42",
                "gsr.owner": "host=h;boot=b;pidns=p;pid=1;start=2",
                "gsr.placement": "gsr-job-42-abc",
                "gsr.role": "job"
            },
            "NetworkingConfig": {"EndpointsConfig": {"gsr-job-42-abc-net": {}}},
            "OpenStdin": true,
            "StdinOnce": true,
            "StopSignal": "SIGTERM",
            "StopTimeout": 10,
            "Tty": false
        });
        assert_eq!(v, expected, "{}", serde_json::to_string_pretty(&v).unwrap());
        // The payload never travels in the spec.
        assert!(!v.to_string().contains("glcbt-"));

        let priv_s = DockerSettings {
            privileged: true,
            ..DockerSettings::default()
        };
        let c = job_container(
            &priv_s,
            "i",
            &["".to_string()],
            "/g",
            "u",
            &names,
            HashMap::new(),
        );
        assert_eq!(c.entrypoint, Some(vec![String::new()]));
        assert_eq!(c.host_config.and_then(|h| h.privileged), Some(true));
    }

    #[test]
    fn service_container_spec() {
        let names = Names::new(7, "n");
        let svc = Image {
            name: "postgres:16".into(),
            command: vec!["postgres".into(), "-c".into(), "fsync=off".into()],
            aliases: vec!["db".into()],
            variables: vec![("POSTGRES_PASSWORD".into(), "pw".into())],
            ..Default::default()
        };
        let c = service_container(&DockerSettings::default(), &svc, &names, HashMap::new());
        let v = serde_json::to_value(&c).expect("serializes");
        let expected = serde_json::json!({
            "Cmd": ["postgres", "-c", "fsync=off"],
            "Env": ["POSTGRES_PASSWORD=pw"],
            "HostConfig": {"NetworkMode": "gsr-job-7-n-net"},
            "Image": "postgres:16",
            "Labels": {},
            "NetworkingConfig": {"EndpointsConfig": {"gsr-job-7-n-net": {
                "Aliases": ["db", "postgres"]}}}
        });
        assert_eq!(v, expected, "{}", serde_json::to_string_pretty(&v).unwrap());
    }
}
