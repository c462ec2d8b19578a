//! The backend's settings: what an operator chooses per runner (namespace, identity,
//! scheduling, resources) and the few timings the backend needs.
//!
//! Settings are data (serde, unknown keys rejected, every key optional except `gsr_image`)
//! so the control plane can store them per runner and show them in its UI;
//! [`K8sSettings::validate`] is pure and names the key that is wrong.

use std::collections::BTreeMap;
use std::time::Duration;

use gsr_backend::BackendError;
use serde::{Deserialize, Serialize};

/// Settings of the `kubernetes` backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct K8sSettings {
    /// Namespace the job Pods and Secrets are created in.
    pub namespace: String,
    /// Service account of the job Pods (`None`: the namespace's `default`).
    pub service_account: Option<String>,
    /// Mount the service account's API token into job Pods. Off by default: a job has no
    /// business talking to the cluster with the backend's identity.
    pub automount_service_account_token: bool,
    /// Image that holds the `gsr` binary; the init container copies it from there. Its
    /// binary must run in the job images (a statically linked build runs everywhere).
    pub gsr_image: String,
    /// Path of `gsr` inside `gsr_image`.
    pub gsr_binary_path: String,
    /// Image of jobs without `image:` (`None`: `gsr_image`, which has bash and git).
    pub default_image: Option<String>,
    /// `imagePullPolicy` of every container (`Always`, `IfNotPresent`, `Never`; `None`:
    /// Kubernetes' default).
    pub image_pull_policy: Option<String>,
    /// Names of existing `kubernetes.io/dockerconfigjson` Secrets in the namespace, for
    /// every Pod (the job's own registry credentials are added per job).
    pub image_pull_secrets: Vec<String>,
    /// Requests and limits of the job container.
    pub resources: Resources,
    /// Requests and limits of each service container.
    pub service_resources: Resources,
    /// Requests and limits of the init container that copies `gsr`.
    pub helper_resources: Resources,
    /// `nodeSelector` of job Pods.
    pub node_selector: BTreeMap<String, String>,
    /// `tolerations` of job Pods.
    pub tolerations: Vec<Toleration>,
    /// Extra labels on every object of a job (plain text; never secrets).
    pub labels: BTreeMap<String, String>,
    /// The control plane's own object (its Deployment, ReplicaSet or Pod), made owner of
    /// every job Pod so Kubernetes' garbage collector removes job Pods when the control
    /// plane is deleted. Must live in `namespace` (owners cannot be in another namespace).
    pub owner: Option<OwnerRef>,
    /// Seconds added to the job timeout for `activeDeadlineSeconds`: scheduling, image
    /// pulls, `gsr` start-up and the final update.
    pub deadline_margin_secs: u64,
    /// Seconds a Pod may stay before its job container starts (unschedulable, slow
    /// pulls) before the job is given up as not run.
    pub start_timeout_secs: u64,
    /// Grace period in seconds of an aborted Pod: `gsr exec` gets SIGTERM, then SIGKILL
    /// after this.
    pub abort_grace_secs: u64,
    /// Extra arguments for `gsr exec` after the ones the backend sets (e.g. `--no-ack`
    /// when the claimer already acknowledged the job). Plain text: never secrets.
    pub exec_args: Vec<String>,
    /// Lines of the job container's log fetched when a job ends badly, for the claimer's
    /// log (0: none).
    pub log_tail_lines: u32,
}

impl Default for K8sSettings {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            service_account: None,
            automount_service_account_token: false,
            gsr_image: String::new(),
            gsr_binary_path: "/usr/local/bin/gsr".into(),
            default_image: None,
            image_pull_policy: None,
            image_pull_secrets: Vec::new(),
            resources: Resources::default(),
            service_resources: Resources::default(),
            helper_resources: Resources::default(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            labels: BTreeMap::new(),
            owner: None,
            deadline_margin_secs: 300,
            start_timeout_secs: 600,
            abort_grace_secs: 30,
            exec_args: Vec::new(),
            log_tail_lines: 50,
        }
    }
}

/// Requests and limits as Kubernetes quantities (`cpu = "500m"`, `memory = "1Gi"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    /// `resources.requests`.
    pub requests: BTreeMap<String, String>,
    /// `resources.limits`.
    pub limits: BTreeMap<String, String>,
}

/// One `toleration` of job Pods.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Toleration {
    /// Taint key (`None` with `Exists`: every taint).
    pub key: Option<String>,
    /// `Equal` (default) or `Exists`.
    pub operator: Option<String>,
    /// Taint value for `Equal`.
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute` (`None`: all).
    pub effect: Option<String>,
    /// For `NoExecute`: seconds the Pod stays after the taint appears.
    pub toleration_seconds: Option<i64>,
}

/// An owner reference to the control plane's own object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OwnerRef {
    /// `apps/v1` for a Deployment or ReplicaSet, `v1` for a Pod.
    pub api_version: String,
    /// `Deployment`, `ReplicaSet`, `Pod`.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// The object's uid (the downward API gives a Pod its own: `metadata.uid`).
    pub uid: String,
}

impl K8sSettings {
    /// The job Pod's deadline for a job of this timeout.
    pub fn active_deadline(&self, job_timeout: Duration) -> i64 {
        let secs = job_timeout
            .as_secs()
            .saturating_add(self.deadline_margin_secs);
        i64::try_from(secs).unwrap_or(i64::MAX).max(1)
    }

    /// Check the settings without touching the cluster.
    pub fn validate(&self) -> Result<(), BackendError> {
        let bad = |key: &str, why: &str| -> Result<(), BackendError> {
            Err(BackendError::Config {
                backend: crate::NAME.into(),
                message: format!("{key}: {why}"),
            })
        };
        if !is_dns_label(&self.namespace) {
            return bad(
                "namespace",
                "must be a DNS label (lowercase letters, digits, '-')",
            );
        }
        if let Some(sa) = &self.service_account {
            if !is_dns_subdomain(sa) {
                return bad("service_account", "must be a DNS subdomain name");
            }
        }
        if self.gsr_image.trim().is_empty() {
            return bad(
                "gsr_image",
                "required: the image to copy the gsr binary from",
            );
        }
        if !self.gsr_binary_path.starts_with('/') {
            return bad("gsr_binary_path", "must be an absolute path");
        }
        if let Some(p) = &self.image_pull_policy {
            if !["Always", "IfNotPresent", "Never"].contains(&p.as_str()) {
                return bad("image_pull_policy", "one of Always, IfNotPresent, Never");
            }
        }
        for s in &self.image_pull_secrets {
            if !is_dns_subdomain(s) {
                return bad("image_pull_secrets", "each must be a Secret name");
            }
        }
        for (key, r) in [
            ("resources", &self.resources),
            ("service_resources", &self.service_resources),
            ("helper_resources", &self.helper_resources),
        ] {
            for (name, q) in r.requests.iter().chain(&r.limits) {
                if name.is_empty() || q.trim().is_empty() {
                    return bad(key, "resource names and quantities must not be empty");
                }
            }
        }
        for t in &self.tolerations {
            match t.operator.as_deref() {
                None | Some("Equal") | Some("Exists") => {}
                Some(_) => return bad("tolerations", "operator is Equal or Exists"),
            }
            match t.effect.as_deref() {
                None | Some("NoSchedule") | Some("PreferNoSchedule") | Some("NoExecute") => {}
                Some(_) => {
                    return bad(
                        "tolerations",
                        "effect is NoSchedule, PreferNoSchedule or NoExecute",
                    )
                }
            }
        }
        for (k, v) in &self.labels {
            if k.starts_with("gsr.") || crate::spec::sanitize_label_value(v) != *v {
                return bad(
                    "labels",
                    "keys must not start with `gsr.`; values must be label values",
                );
            }
        }
        if let Some(o) = &self.owner {
            if o.api_version.is_empty()
                || o.kind.is_empty()
                || o.name.is_empty()
                || o.uid.is_empty()
            {
                return bad("owner", "api_version, kind, name and uid are all required");
            }
        }
        if self.start_timeout_secs == 0 {
            return bad("start_timeout_secs", "must be at least 1");
        }
        Ok(())
    }
}

/// RFC 1123 label: what namespaces and container names are.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: what most object names and host aliases are.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> K8sSettings {
        K8sSettings {
            gsr_image: "registry.example.com/gsr:1".into(),
            ..K8sSettings::default()
        }
    }

    #[test]
    fn defaults_need_only_the_gsr_image() {
        assert!(K8sSettings::default().validate().is_err());
        ok().validate().unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let cases: Vec<(&str, K8sSettings)> = vec![
            (
                "namespace",
                K8sSettings {
                    namespace: "Bad_NS".into(),
                    ..ok()
                },
            ),
            (
                "image_pull_policy",
                K8sSettings {
                    image_pull_policy: Some("Sometimes".into()),
                    ..ok()
                },
            ),
            (
                "gsr_binary_path",
                K8sSettings {
                    gsr_binary_path: "gsr".into(),
                    ..ok()
                },
            ),
            (
                "tolerations",
                K8sSettings {
                    tolerations: vec![Toleration {
                        operator: Some("Maybe".into()),
                        ..Default::default()
                    }],
                    ..ok()
                },
            ),
            (
                "labels",
                K8sSettings {
                    labels: [("gsr.job".to_string(), "1".to_string())].into(),
                    ..ok()
                },
            ),
            (
                "owner",
                K8sSettings {
                    owner: Some(OwnerRef {
                        kind: "Pod".into(),
                        ..Default::default()
                    }),
                    ..ok()
                },
            ),
        ];
        for (key, s) in cases {
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_json::from_str::<K8sSettings>(r#"{"gsr_image":"x","namepsace":"a"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("namepsace"), "{err}");
        let s: K8sSettings =
            serde_json::from_str(r#"{"gsr_image":"x","resources":{"limits":{"cpu":"1"}}}"#)
                .unwrap();
        assert_eq!(s.resources.limits["cpu"], "1");
        assert_eq!(s.namespace, "default");
    }

    #[test]
    fn deadline_adds_the_margin() {
        assert_eq!(ok().active_deadline(Duration::from_secs(3600)), 3900);
    }
}
