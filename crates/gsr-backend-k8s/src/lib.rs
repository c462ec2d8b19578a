//! The `kubernetes` backend: one Pod per claimed job.
//!
//! This is the backend for users who outgrow one machine: the claimer (`gsr serve`'s
//! dispatcher or `gsr run-single`) keeps the runner token and places each job as a Pod,
//! where `gsr exec` runs it with the job token only (see [`gsr_backend`] for the contract).
//!
//! # Design
//!
//! - **What a job becomes** ([`spec`], pure, snapshot-tested): a Secret with the payload,
//!   a second Secret with the job's registry credentials when it has any, and a Pod: an
//!   init container copies `gsr` from [`K8sSettings::gsr_image`] into an `emptyDir`; the
//!   job's `services:` run as native sidecars (init containers with `restartPolicy:
//!   Always`, Kubernetes ≥ 1.29), reachable by alias through `hostAliases` → 127.0.0.1
//!   since a Pod shares one network namespace; the job container runs the job's `image:`
//!   with `/gsr-bin/gsr exec --job /gsr-job/payload.json`. Nothing secret is in argv,
//!   environment variables, labels or annotations.
//! - **Nothing outlives its job**: `restartPolicy: Never`; `activeDeadlineSeconds` = job
//!   timeout + [`K8sSettings::deadline_margin_secs`] (the kubelet kills the Pod after it
//!   even if every `gsr` process died); the Secrets are owned by the Pod (an owner
//!   reference set right after the Pod is created), so deleting the Pod deletes them; the
//!   Pod is owned by the control plane's object when [`K8sSettings::owner`] is set;
//!   [`Running::cleanup`](gsr_backend::Running::cleanup) deletes Pod and Secrets (404 =
//!   done); [`Backend::reap`](gsr_backend::Backend::reap) deletes the objects of dead
//!   claimers.
//! - **Claimer liveness** ([`ClaimerLiveness`]): objects carry `gsr.claimer` (label,
//!   sanitized, for selection; annotation, exact, for comparison). A claimer id is replica
//!   name + process start, so a restarted claimer is a new one. With one replica,
//!   [`SoleClaimer`] treats every other id as dead; with several, the control plane passes
//!   a predicate over the replicas its store knows to be alive. (A Kubernetes `Lease` per
//!   claimer would also work; not built, the store already knows its replicas.)
//! - **How a job ended** ([`status`], pure): the job container's termination decides
//!   (exit 0–127 → `Exec(code)`, OOM or signal → `Killed`, runtime could not start `gsr` →
//!   `NotRun`); a Pod that failed (deadline, eviction) is `Killed` if `gsr exec` had
//!   started, else `NotRun`; image pull back-off, invalid image names and container
//!   config errors are `NotRun` at once (a first `ErrImagePull` is retried by the kubelet,
//!   so we wait); a Pod that has not started its job within
//!   [`K8sSettings::start_timeout_secs`] (unschedulable, slow pulls) is `NotRun`.
//! - **Waiting** reads the Pod, then watches it by name from its `resourceVersion`;
//!   watches that end (server timeout, 410 Gone, errors) are re-opened after a fresh read,
//!   API errors are retried with back-off six times before `wait` gives up. Abort deletes
//!   the Pod with [`K8sSettings::abort_grace_secs`] (SIGTERM to `gsr exec`, SIGKILL after
//!   the grace), and deletes it at once if it is still there 30 s after that; it takes
//!   effect through `wait`, which the claimer always runs (and `cleanup` deletes anyway).
//! - **Validate** does a server-side dry-run create of a sample Secret and Pod (so a
//!   missing namespace, missing permissions, Pod Security admission or a quota that
//!   rejects our Pod shape fail at start-up, not on the first job), then
//!   `SelfSubjectAccessReview`s for the other verbs: get/watch/list/delete pods,
//!   patch/list/delete secrets, get pods/log when log tails are on.
//!
//! RBAC the backend's service account needs in [`K8sSettings::namespace`]: `pods`:
//! create, get, watch, list, delete; `pods/log`: get; `secrets`: create, patch, list,
//! delete. `SelfSubjectAccessReview` is allowed to every authenticated user.
//!
//! # Settings
//!
//! [`K8sSettings`]: namespace, service account (token not mounted unless asked), the gsr
//! image and the path of `gsr` in it (its binary must run in the job images: a static
//! build runs everywhere, the glibc build of our Dockerfile needs glibc images), the
//! default job image, pull policy and pull secrets, resources of the job, service and
//! helper containers, node selector, tolerations, extra labels, owner reference, extra
//! `gsr exec` arguments (`exec_args`, e.g. `--no-ack`), and the
//! timings above. Unknown keys are rejected; errors name the key.
//!
//! # Not tested live
//!
//! No Kubernetes API server or kubelet can run on our machines. Tested: the objects we
//! build (snapshots under `tests/snapshots/`), the status reading (unit tests), and every
//! API flow against scripted HTTP exchanges (`tests/flows.rs`: the exact method, path,
//! query and body fields of each request; API errors 403/404/409; watch events; the Pod
//! failing, image pull back-off, deletion). **Not** tested against a real cluster:
//! whether a real API server accepts the Pod (validation, admission), native-sidecar
//! behaviour, `hostAliases` resolution, the kubelet's signals and grace period, the
//! garbage collection through owner references, the cp of `gsr` into the `emptyDir` and
//! running it in foreign images, watch behaviour over long jobs, and the authentication
//! through `from_env` (kubeconfig or in-cluster).
//!
//! # Layout
//!
//! - [`settings`]: [`K8sSettings`] and its validation.
//! - [`spec`]: the pure Pod/Secret builders.
//! - [`status`]: the pure Pod status → verdict reading.
//! - `backend`: [`K8sBackend`] and [`K8sRunning`], the API flows.

#![warn(missing_docs)]

mod backend;
pub mod settings;
pub mod spec;
pub mod status;

pub use backend::{ClaimerLiveness, K8sBackend, K8sRunning, SoleClaimer};
pub use settings::K8sSettings;

/// The backend's name in settings and the UI.
pub const NAME: &str = "kubernetes";
