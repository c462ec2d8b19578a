//! Pure reading of a Pod's status: has the job's `gsr exec` not started yet, is it
//! running, or has the place ended (and how, as a [`JobExit`])?
//!
//! The job container's own termination decides, not the Pod phase: with sidecar services
//! the Pod phase lags behind, and a Pod deleted under us still reports how `job` ended.

use gsr_backend::JobExit;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::spec::{INIT_CONTAINER, JOB_CONTAINER};

/// What a Pod's status says about its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    /// `gsr exec` has not started.
    Waiting {
        /// What the Pod waits for, if known (`Unschedulable: 0/3 nodes are available…`,
        /// `container job: ErrImagePull`).
        detail: Option<String>,
    },
    /// `gsr exec` is running (or has run and the status is not final yet).
    Running,
    /// The place has ended.
    Ended {
        /// How, in the contract's terms.
        exit: JobExit,
        /// Why, for the claimer's log.
        detail: String,
    },
}

/// Waiting reasons that will not resolve by themselves: the job never runs.
const FATAL_WAITING: &[&str] = &[
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Read the Pod.
pub fn classify(pod: &Pod) -> PodState {
    let Some(status) = pod.status.as_ref() else {
        return PodState::Waiting { detail: None };
    };
    let job = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == JOB_CONTAINER);

    if let Some(t) = job.and_then(|c| c.state.as_ref()?.terminated.as_ref()) {
        let reason = t.reason.clone().unwrap_or_default();
        let exit = if matches!(reason.as_str(), "StartError" | "ContainerCannotRun") {
            // The runtime could not exec `gsr` in the image (wrong architecture or libc,
            // no such file): nothing of the job ran.
            JobExit::NotRun
        } else if reason == "OOMKilled" || !(0..128).contains(&t.exit_code) {
            JobExit::Killed
        } else {
            JobExit::Exec(t.exit_code)
        };
        let detail = match &t.message {
            Some(m) if !m.is_empty() => {
                format!("job container: {reason} (exit {}): {m}", t.exit_code)
            }
            _ => format!("job container: {reason} (exit {})", t.exit_code),
        };
        return PodState::Ended { exit, detail };
    }
    let job_started = job.is_some_and(|c| {
        c.state.as_ref().is_some_and(|s| s.running.is_some()) || c.started == Some(true)
    });

    let phase = status.phase.as_deref().unwrap_or("Pending");
    if matches!(phase, "Failed" | "Succeeded") {
        let reason = status.reason.clone().unwrap_or_else(|| phase.to_string());
        let message = status.message.clone().unwrap_or_default();
        return PodState::Ended {
            exit: if job_started {
                JobExit::Killed
            } else {
                JobExit::NotRun
            },
            detail: format!("pod {phase}: {reason} {message}")
                .trim_end()
                .to_string(),
        };
    }
    if job_started {
        return PodState::Running;
    }

    // Not started: is it stuck for good?
    let all = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for c in all {
        if let Some(detail) = fatal(c) {
            return PodState::Ended {
                exit: JobExit::NotRun,
                detail,
            };
        }
    }
    PodState::Waiting {
        detail: waiting_detail(pod),
    }
}

/// A container state that means the job will never start.
fn fatal(c: &ContainerStatus) -> Option<String> {
    let state = c.state.as_ref()?;
    if let Some(w) = &state.waiting {
        let reason = w.reason.as_deref().unwrap_or_default();
        if FATAL_WAITING.contains(&reason) {
            let msg = w.message.as_deref().unwrap_or_default();
            return Some(
                format!("container {}: {reason}: {msg}", c.name)
                    .trim_end_matches([' ', ':'])
                    .to_string(),
            );
        }
    }
    if c.name == INIT_CONTAINER {
        if let Some(t) = &state.terminated {
            if t.exit_code != 0 {
                return Some(format!(
                    "container {}: copying gsr failed (exit {})",
                    c.name, t.exit_code
                ));
            }
        }
    }
    None
}

/// Why a Pod has not started its job yet, for the message when we give up waiting.
fn waiting_detail(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    {
        return Some(format!(
            "{}: {}",
            c.reason.as_deref().unwrap_or("not scheduled"),
            c.message.as_deref().unwrap_or_default()
        ));
    }
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            Some(format!(
                "container {}: {}",
                c.name,
                w.reason.as_deref().unwrap_or("waiting")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    fn job_terminated(code: i32, reason: &str) -> serde_json::Value {
        json!({"phase": "Running", "containerStatuses": [
            {"name": "job", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": code, "reason": reason}}}
        ]})
    }

    #[test]
    fn the_job_containers_exit_decides() {
        for (code, reason, exit) in [
            (0, "Completed", JobExit::Exec(0)),
            (1, "Error", JobExit::Exec(1)),
            (3, "Error", JobExit::Exec(3)),
            (137, "Error", JobExit::Killed),
            (137, "OOMKilled", JobExit::Killed),
            (128, "StartError", JobExit::NotRun),
        ] {
            match classify(&pod(job_terminated(code, reason))) {
                PodState::Ended { exit: got, .. } => assert_eq!(got, exit, "{code} {reason}"),
                other => panic!("{code} {reason}: {other:?}"),
            }
        }
    }

    #[test]
    fn deadline_exceeded_is_killed_once_started_else_not_run() {
        let running = json!({"phase": "Failed", "reason": "DeadlineExceeded", "containerStatuses": [
            {"name": "job", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "started": true,
             "state": {"running": {}}}]});
        assert!(matches!(
            classify(&pod(running)),
            PodState::Ended {
                exit: JobExit::Killed,
                ..
            }
        ));
        let pending = json!({"phase": "Failed", "reason": "DeadlineExceeded"});
        assert!(matches!(
            classify(&pod(pending)),
            PodState::Ended {
                exit: JobExit::NotRun,
                ..
            }
        ));
    }

    #[test]
    fn image_pull_backoff_is_not_run_but_a_first_pull_error_waits() {
        let st = |reason: &str| {
            json!({"phase": "Pending", "initContainerStatuses": [
            {"name": "svc-0", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": reason, "message": "pull access denied"}}}]})
        };
        match classify(&pod(st("ImagePullBackOff"))) {
            PodState::Ended {
                exit: JobExit::NotRun,
                detail,
            } => {
                assert_eq!(
                    detail,
                    "container svc-0: ImagePullBackOff: pull access denied"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            classify(&pod(st("ErrImagePull"))),
            PodState::Waiting {
                detail: Some("container svc-0: ErrImagePull".into())
            }
        );
    }

    #[test]
    fn unschedulable_waits_with_the_reason() {
        let st = json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes are available"}]});
        assert_eq!(
            classify(&pod(st)),
            PodState::Waiting {
                detail: Some("Unschedulable: 0/3 nodes are available".into())
            }
        );
        assert_eq!(
            classify(&pod(json!(null))),
            PodState::Waiting { detail: None }
        );
    }

    #[test]
    fn a_failed_copy_is_not_run() {
        let st = json!({"phase": "Pending", "initContainerStatuses": [
            {"name": "gsr-init", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 1}}}]});
        assert!(matches!(
            classify(&pod(st)),
            PodState::Ended {
                exit: JobExit::NotRun,
                ..
            }
        ));
    }
}
