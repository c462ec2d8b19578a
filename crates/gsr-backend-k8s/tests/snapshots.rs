//! Snapshot tests of the objects a job becomes: what we send to the API server is pinned in
//! `tests/snapshots/*.json`, reviewed by a person when it changes.
//!
//! `UPDATE_SNAPSHOTS=1 cargo test -p gsr-backend-k8s --test snapshots` rewrites them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use gsr_backend_k8s::settings::{OwnerRef, Resources, Toleration};
use gsr_backend_k8s::spec::{build, JobInput, JobShape};
use gsr_backend_k8s::K8sSettings;

const PAYLOAD: &[u8] = include_bytes!("fixtures/job.json");
const JOB_TOKEN: &str = "glcbt-64_K8sTESTjobTOKENbbbbbbbbbbbb";

fn check(name: &str, value: &impl serde::Serialize) {
    let actual = serde_json::to_string_pretty(value).unwrap() + "\n";
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/snapshots/{name}.json"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_SNAPSHOTS=1 to create it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{name} differs from {} (UPDATE_SNAPSHOTS=1 rewrites it after review):\n{actual}",
        path.display()
    );
}

fn labels() -> BTreeMap<String, String> {
    [
        (
            "gsr.claimer".to_string(),
            "serve-0/2026-11-25T15:00:00Z".to_string(),
        ),
        ("gsr.job".to_string(), "8712".to_string()),
    ]
    .into()
}

fn full_settings() -> K8sSettings {
    K8sSettings {
        namespace: "ci-jobs".into(),
        service_account: Some("gsr-job".into()),
        gsr_image: "registry.example.com/gsr:1.0".into(),
        default_image: Some("debian:bookworm".into()),
        image_pull_policy: Some("IfNotPresent".into()),
        image_pull_secrets: vec!["corp-registry".into()],
        resources: Resources {
            requests: [
                ("cpu".into(), "500m".into()),
                ("memory".into(), "1Gi".into()),
            ]
            .into(),
            limits: [("memory".into(), "2Gi".into())].into(),
        },
        service_resources: Resources {
            requests: [("cpu".into(), "100m".into())].into(),
            limits: BTreeMap::new(),
        },
        node_selector: [("kubernetes.io/arch".into(), "amd64".into())].into(),
        tolerations: vec![Toleration {
            key: Some("ci".into()),
            operator: Some("Equal".into()),
            value: Some("true".into()),
            effect: Some("NoSchedule".into()),
            toleration_seconds: None,
        }],
        labels: [("team".into(), "platform".into())].into(),
        exec_args: vec!["--no-ack".into()],
        owner: Some(OwnerRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "gsr".into(),
            uid: "0b9a7c1e-3f52-4d8e-9a41-2c7d5e6f8a90".into(),
        }),
        ..K8sSettings::default()
    }
}

#[test]
fn a_job_with_image_services_and_credentials() {
    let job = gsr_gitlab::parse_job(PAYLOAD).unwrap();
    let labels = labels();
    let objects = build(
        JobInput {
            job_id: 8712,
            payload: PAYLOAD,
            gitlab_url: "https://gitlab.example.com",
            timeout: Duration::from_secs(3600),
            labels: &labels,
        },
        JobShape::from(&job),
        &full_settings(),
        "gsr-job-8712-0a1b2c3d",
    );
    check("full_pod", &objects.pod);
    check("full_secrets", &objects.secrets);

    // The payload is the Secret's, byte for byte; the credentials Secret has the job's
    // registry login.
    let data = objects.secrets[0].data.as_ref().unwrap();
    assert_eq!(data["payload.json"].0, PAYLOAD);
    let config: serde_json::Value =
        serde_json::from_slice(&objects.secrets[1].data.as_ref().unwrap()[".dockerconfigjson"].0)
            .unwrap();
    assert_eq!(
        config["auths"]["registry.gitlab.example.com"]["password"],
        JOB_TOKEN
    );

    // No secret anywhere in the Pod: not in argv, env, labels or annotations.
    let pod = serde_json::to_string(&objects.pod).unwrap();
    assert!(!pod.contains(JOB_TOKEN), "{pod}");
    assert!(!pod.contains("glcbt-"), "{pod}");
    for s in &objects.secrets {
        let meta = serde_json::to_string(&s.metadata).unwrap();
        assert!(!meta.contains("glcbt-"), "{meta}");
    }
}

#[test]
fn a_job_without_image_on_defaults() {
    let settings = K8sSettings {
        gsr_image: "registry.example.com/gsr:1.0".into(),
        ..K8sSettings::default()
    };
    let labels = labels();
    let objects = build(
        JobInput {
            job_id: 7,
            payload: b"{\"id\":7}",
            gitlab_url: "https://gitlab.example.com",
            timeout: Duration::from_secs(600),
            labels: &labels,
        },
        JobShape::default(),
        &settings,
        "gsr-job-7-00000000",
    );
    check("minimal_pod", &objects.pod);
    assert_eq!(objects.secrets.len(), 1, "no credentials, no pull Secret");
}
