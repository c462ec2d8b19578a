//! The API flows: [`K8sBackend`] (validate, healthcheck, reap, start) and [`K8sRunning`]
//! (wait, abort, cleanup) over a `kube::Client`.
//!
//! Every request goes through the client handed in, so tests drive the flows with a
//! scripted `tower` service and assert each request (see `tests/flows.rs`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use gsr_backend::{
    Backend, BackendError, CancellationToken, Capabilities, JobExit, Launch, ReapReport, Running,
};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{
    Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use secrecy::ExposeSecret;
use tokio::time::Instant;

use crate::settings::K8sSettings;
use crate::spec::{self, JobInput, JobShape, CLAIMER, JOB, JOB_CONTAINER, MANAGED_BY};
use crate::status::{classify, PodState};
use crate::NAME;

/// Tells [`K8sBackend::reap`] whether the claimer that created a job's objects is still
/// alive (its jobs are then left alone).
///
/// A claimer's identity is the `gsr.claimer` value of [`Launch::labels`]: replica name +
/// process start, so a restarted process is a new claimer and its predecessor's jobs are
/// dead. Who knows which claimers live depends on the deployment:
/// - one control-plane replica: [`SoleClaimer`] (every other claimer is dead);
/// - several replicas sharing a database: the control plane's store knows its live
///   replicas; pass a closure `Fn(&str) -> bool` over that set.
///
/// Independently of reaping, a job Pod cannot outlive `activeDeadlineSeconds`, and with
/// [`K8sSettings::owner`] Kubernetes deletes job Pods (and, through the Pod, their
/// Secrets) when the control plane's object is deleted.
#[async_trait::async_trait]
pub trait ClaimerLiveness: Send + Sync {
    /// Whether the claimer with this `gsr.claimer` value is alive.
    async fn is_alive(&self, claimer: &str) -> Result<bool, BackendError>;
}

#[async_trait::async_trait]
impl<F> ClaimerLiveness for F
where
    F: Fn(&str) -> bool + Send + Sync,
{
    async fn is_alive(&self, claimer: &str) -> Result<bool, BackendError> {
        Ok(self(claimer))
    }
}

/// The only live claimer is this one: every object of another claimer is a leftover.
#[derive(Debug, Clone)]
pub struct SoleClaimer {
    me: String,
}

impl SoleClaimer {
    /// `me`: this process's `gsr.claimer` value.
    pub fn new(me: impl Into<String>) -> Self {
        Self { me: me.into() }
    }
}

#[async_trait::async_trait]
impl ClaimerLiveness for SoleClaimer {
    async fn is_alive(&self, claimer: &str) -> Result<bool, BackendError> {
        Ok(claimer == self.me || claimer == spec::sanitize_label_value(&self.me))
    }
}

/// The `kubernetes` backend: one Pod per job.
pub struct K8sBackend {
    client: kube::Client,
    settings: Arc<K8sSettings>,
    liveness: Arc<dyn ClaimerLiveness>,
}

impl std::fmt::Debug for K8sBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sBackend")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl K8sBackend {
    /// A backend over `client` (its default namespace is not used: objects go to
    /// `settings.namespace`). Fails on invalid settings.
    pub fn new(
        client: kube::Client,
        settings: K8sSettings,
        liveness: Arc<dyn ClaimerLiveness>,
    ) -> Result<Self, BackendError> {
        settings.validate()?;
        Ok(Self {
            client,
            settings: Arc::new(settings),
            liveness,
        })
    }

    /// A backend with the client from the environment: in-cluster service account, else
    /// `KUBECONFIG` / `~/.kube/config`.
    pub async fn from_env(
        settings: K8sSettings,
        liveness: Arc<dyn ClaimerLiveness>,
    ) -> Result<Self, BackendError> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| unavailable(format!("no Kubernetes client configuration: {e}")))?;
        Self::new(client, settings, liveness)
    }

    /// The settings in use.
    pub fn settings(&self) -> &K8sSettings {
        &self.settings
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    /// Label selector of everything this backend creates.
    fn selector() -> String {
        format!("{MANAGED_BY}=gsr,{CLAIMER}")
    }
}

#[async_trait::async_trait]
impl Backend for K8sBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            image: true,
            services: true,
            hard_cancel: true,
            max_duration: None,
            max_jobs: None,
        }
    }

    /// Settings, then a server-side dry run of a sample job's Secret and Pod (namespace
    /// exists, we may create both, admission — Pod Security, quotas, policies — accepts
    /// our Pod shape), then access reviews for the other verbs the flows use.
    async fn validate(&self) -> Result<(), BackendError> {
        self.settings.validate()?;
        let labels = [
            (CLAIMER.to_string(), "validate".to_string()),
            (JOB.to_string(), "0".to_string()),
        ]
        .into();
        let sample = spec::build(
            JobInput {
                job_id: 0,
                payload: b"{}",
                gitlab_url: "https://gitlab.invalid",
                timeout: Duration::from_secs(3600),
                labels: &labels,
            },
            JobShape::default(),
            &self.settings,
            "gsr-validate",
        );
        let dry = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        for s in &sample.secrets {
            self.secrets().create(&dry, s).await.map_err(|e| {
                unavailable(format!(
                    "cannot create Secrets in namespace {}: {}",
                    self.settings.namespace,
                    brief(&e)
                ))
            })?;
        }
        self.pods().create(&dry, &sample.pod).await.map_err(|e| {
            unavailable(format!(
                "cannot create Pods in namespace {}: {}",
                self.settings.namespace,
                brief(&e)
            ))
        })?;

        let mut needed: Vec<(&str, &str, Option<&str>)> = vec![
            ("get", "pods", None),
            ("watch", "pods", None),
            ("list", "pods", None),
            ("delete", "pods", None),
            ("patch", "secrets", None),
            ("list", "secrets", None),
            ("delete", "secrets", None),
        ];
        if self.settings.log_tail_lines > 0 {
            needed.push(("get", "pods", Some("log")));
        }
        let reviews: Api<SelfSubjectAccessReview> = Api::all(self.client.clone());
        let mut missing = Vec::new();
        for (verb, resource, sub) in needed {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        namespace: Some(self.settings.namespace.clone()),
                        verb: Some(verb.into()),
                        resource: Some(resource.into()),
                        subresource: sub.map(str::to_string),
                        ..ResourceAttributes::default()
                    }),
                    ..SelfSubjectAccessReviewSpec::default()
                },
                ..SelfSubjectAccessReview::default()
            };
            let answer = reviews
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| unavailable(format!("access review failed: {}", brief(&e))))?;
            if !answer.status.is_some_and(|s| s.allowed) {
                missing.push(match sub {
                    Some(sub) => format!("{verb} {resource}/{sub}"),
                    None => format!("{verb} {resource}"),
                });
            }
        }
        if !missing.is_empty() {
            return Err(unavailable(format!(
                "not allowed in namespace {}: {}",
                self.settings.namespace,
                missing.join(", ")
            )));
        }
        Ok(())
    }

    async fn healthcheck(&self) -> Result<(), BackendError> {
        self.pods()
            .list(&ListParams::default().labels(&Self::selector()).limit(1))
            .await
            .map(|_| ())
            .map_err(|e| unavailable(format!("API server: {}", brief(&e))))
    }

    async fn reap(&self) -> Result<ReapReport, BackendError> {
        let lp = ListParams::default().labels(&Self::selector());
        let mut report = ReapReport::default();
        let mut jobs = BTreeSet::new();

        let pods = self
            .pods()
            .list(&lp)
            .await
            .map_err(|e| other(format!("listing job Pods: {}", brief(&e))))?;
        for pod in pods.items {
            let (name, claimer, job) = identity(&pod.metadata);
            if self.liveness.is_alive(&claimer).await? {
                report.left_alone += 1;
                continue;
            }
            if delete(&self.pods(), &name, 0).await? {
                report.objects += 1;
                jobs.insert(job);
            }
        }
        let secrets = self
            .secrets()
            .list(&lp)
            .await
            .map_err(|e| other(format!("listing job Secrets: {}", brief(&e))))?;
        for secret in secrets.items {
            let (name, claimer, job) = identity(&secret.metadata);
            if self.liveness.is_alive(&claimer).await? {
                report.left_alone += 1;
                continue;
            }
            if delete(&self.secrets(), &name, 0).await? {
                report.objects += 1;
                jobs.insert(job);
            }
        }
        report.jobs = jobs.len();
        if report.objects > 0 {
            tracing::info!(?report, "removed the Pods and Secrets of dead claimers");
        }
        Ok(report)
    }

    async fn start(&self, launch: Launch) -> Result<Box<dyn Running>, BackendError> {
        let payload = launch.payload.expose_secret();
        // Only the image/services/credentials matter here; a payload `gsr exec` cannot
        // parse still runs (in the default image), so that `gsr exec` fails the job in
        // GitLab with a readable reason.
        let parsed = gsr_gitlab::parse_job(payload).ok();
        let shape = parsed.as_ref().map(JobShape::from).unwrap_or_default();
        let name = spec::object_name(launch.job_id);
        let objects = spec::build(
            JobInput {
                job_id: launch.job_id,
                payload,
                gitlab_url: &launch.gitlab_url,
                timeout: launch.timeout,
                labels: &launch.labels,
            },
            shape,
            &self.settings,
            &name,
        );
        let job_id = launch.job_id;
        let start_err = |what: &str, e: &kube::Error| BackendError::Start {
            backend: NAME.into(),
            job_id,
            message: format!("{what}: {}", brief(e)),
        };

        let secrets = self.secrets();
        let mut created: Vec<String> = Vec::new();
        for s in &objects.secrets {
            let secret_name = s.metadata.name.clone().unwrap_or_default();
            if let Err(e) = secrets.create(&PostParams::default(), s).await {
                let err = start_err(&format!("creating Secret {secret_name}"), &e);
                remove_all(&secrets, &created).await;
                return Err(err);
            }
            created.push(secret_name);
        }
        let pod = match self
            .pods()
            .create(&PostParams::default(), &objects.pod)
            .await
        {
            Ok(pod) => pod,
            Err(e) => {
                let err = start_err(&format!("creating Pod {name}"), &e);
                remove_all(&secrets, &created).await;
                return Err(err);
            }
        };
        // The Secrets belong to the Pod from now on: deleting the Pod (us, the deadline
        // clean-up, the owner's garbage collection) deletes them too.
        if let Some(uid) = pod.metadata.uid.clone() {
            let patch = serde_json::json!({"metadata": {"ownerReferences": [{
                "apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid,
            }]}});
            for s in &created {
                if let Err(e) = secrets
                    .patch(s, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(job = job_id, secret = %s, error = %brief(&e), "could not make the Pod own its Secret; clean-up deletes it");
                }
            }
        }
        tracing::info!(job = job_id, pod = %name, namespace = %self.settings.namespace, "job Pod created");
        Ok(Box::new(K8sRunning {
            pods: self.pods(),
            secrets,
            name,
            secret_names: created,
            job_id,
            settings: self.settings.clone(),
            created: Instant::now(),
            abort: launch.abort.child_token(),
            ended: tokio::sync::Mutex::new(None),
            detail: std::sync::Mutex::new(None),
        }))
    }
}

/// One job's Pod.
pub struct K8sRunning {
    pods: Api<Pod>,
    secrets: Api<Secret>,
    name: String,
    secret_names: Vec<String>,
    job_id: u64,
    settings: Arc<K8sSettings>,
    created: Instant,
    abort: CancellationToken,
    /// How the Pod ended, once known (`wait` may be called again).
    ended: tokio::sync::Mutex<Option<JobExit>>,
    /// Why it ended or what it waits for, for logs.
    detail: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for K8sRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sRunning")
            .field("job_id", &self.job_id)
            .field("pod", &self.name)
            .finish_non_exhaustive()
    }
}

/// Where `wait` is.
struct WaitState {
    started: bool,
    abort_sent: bool,
    hard_deadline: Option<Instant>,
    errors: u32,
}

type EventStream = std::pin::Pin<Box<dyn Stream<Item = kube::Result<WatchEvent<Pod>>> + Send>>;

impl K8sRunning {
    /// The Pod's name.
    pub fn pod_name(&self) -> &str {
        &self.name
    }

    /// Why the Pod ended (or what it was waiting for), once `wait` saw it.
    pub fn detail(&self) -> Option<String> {
        self.detail.lock().ok()?.clone()
    }

    fn set_detail(&self, d: Option<String>) {
        if let (Some(d), Ok(mut slot)) = (d, self.detail.lock()) {
            *slot = Some(d);
        }
    }

    /// Turn a Pod status into a verdict, remembering whether `gsr exec` started.
    fn observe(&self, pod: &Pod, st: &mut WaitState) -> Option<JobExit> {
        match classify(pod) {
            PodState::Waiting { detail } => {
                self.set_detail(detail);
                None
            }
            PodState::Running => {
                st.started = true;
                None
            }
            PodState::Ended { exit, detail } => {
                self.set_detail(Some(detail));
                Some(exit)
            }
        }
    }

    /// The Pod is gone without a final status we saw.
    fn gone(&self, st: &WaitState) -> JobExit {
        self.set_detail(Some("the Pod was deleted".into()));
        if st.started || st.abort_sent {
            JobExit::Killed
        } else {
            JobExit::NotRun
        }
    }

    /// One unit of work of `wait`: (re)read the Pod and open a watch, or take one event.
    async fn step(
        &self,
        stream: &mut Option<EventStream>,
        st: &mut WaitState,
    ) -> Result<Option<JobExit>, BackendError> {
        let Some(events) = stream.as_mut() else {
            let pod = match self.pods.get_opt(&self.name).await {
                Ok(Some(pod)) => pod,
                Ok(None) => return Ok(Some(self.gone(st))),
                Err(e) => return self.transient(st, "reading the Pod", &e).await,
            };
            st.errors = 0;
            if let Some(exit) = self.observe(&pod, st) {
                return Ok(Some(exit));
            }
            let rv = pod
                .metadata
                .resource_version
                .clone()
                .unwrap_or_else(|| "0".into());
            let wp = WatchParams::default()
                .fields(&format!("metadata.name={}", self.name))
                .timeout(290);
            match self.pods.watch(&wp, &rv).await {
                Ok(s) => *stream = Some(s.boxed()),
                Err(e) => return self.transient(st, "watching the Pod", &e).await,
            }
            return Ok(None);
        };
        match events.next().await {
            Some(Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod))) => {
                st.errors = 0;
                Ok(self.observe(&pod, st))
            }
            Some(Ok(WatchEvent::Deleted(pod))) => Ok(Some(
                self.observe(&pod, st).unwrap_or_else(|| self.gone(st)),
            )),
            Some(Ok(WatchEvent::Bookmark(_))) => Ok(None),
            Some(Ok(WatchEvent::Error(e))) => {
                // 410 Gone: our resourceVersion is too old; read the Pod again.
                tracing::debug!(
                    job = self.job_id,
                    code = e.code,
                    "watch error event; re-reading the Pod"
                );
                *stream = None;
                Ok(None)
            }
            Some(Err(e)) => {
                *stream = None;
                self.transient(st, "watching the Pod", &e).await
            }
            None => {
                // The server ends watches now and then (timeout); read and watch again.
                *stream = None;
                Ok(None)
            }
        }
    }

    /// An API error while waiting: retried with back-off, up to a point.
    async fn transient(
        &self,
        st: &mut WaitState,
        what: &str,
        e: &kube::Error,
    ) -> Result<Option<JobExit>, BackendError> {
        st.errors += 1;
        if st.errors > 6 {
            return Err(other(format!("job {}: {what}: {}", self.job_id, brief(e))));
        }
        tracing::warn!(job = self.job_id, error = %brief(e), "{what}; retrying");
        tokio::time::sleep(Duration::from_millis(250 << st.errors.min(6))).await;
        Ok(None)
    }

    async fn log_tail(&self) -> Option<String> {
        if self.settings.log_tail_lines == 0 {
            return None;
        }
        let lp = LogParams {
            container: Some(JOB_CONTAINER.into()),
            tail_lines: Some(i64::from(self.settings.log_tail_lines)),
            ..LogParams::default()
        };
        match self.pods.logs(&self.name, &lp).await {
            Ok(log) => Some(tail(&log, LOG_TAIL_BYTES).to_string()),
            Err(e) => {
                tracing::debug!(job = self.job_id, error = %brief(&e), "no job container log");
                None
            }
        }
    }

    async fn wait_inner(&self) -> Result<JobExit, BackendError> {
        let mut st = WaitState {
            started: false,
            abort_sent: false,
            hard_deadline: None,
            errors: 0,
        };
        let start_deadline = self.created + Duration::from_secs(self.settings.start_timeout_secs);
        let grace = Duration::from_secs(self.settings.abort_grace_secs);
        let mut stream: Option<EventStream> = None;
        loop {
            let timer = if st.abort_sent {
                st.hard_deadline
            } else if !st.started {
                Some(start_deadline)
            } else {
                None
            };
            tokio::select! {
                biased;
                _ = self.abort.cancelled(), if !st.abort_sent => {
                    st.abort_sent = true;
                    st.hard_deadline = Some(Instant::now() + grace + Duration::from_secs(30));
                    // SIGTERM to `gsr exec` now, SIGKILL after the grace period.
                    let secs = self.settings.abort_grace_secs;
                    if !delete(&self.pods, &self.name, secs).await? {
                        return Ok(self.gone(&st));
                    }
                }
                _ = tokio::time::sleep_until(timer.unwrap_or_else(Instant::now)), if timer.is_some() => {
                    if st.abort_sent {
                        tracing::warn!(job = self.job_id, pod = %self.name, "the aborted Pod outlived its grace period; deleting it at once");
                        delete(&self.pods, &self.name, 0).await?;
                        return Ok(JobExit::Killed);
                    }
                    let why = self.detail().unwrap_or_else(|| "no status".into());
                    self.set_detail(Some(format!("the job did not start within {} s: {why}", self.settings.start_timeout_secs)));
                    return Ok(JobExit::NotRun);
                }
                step = self.step(&mut stream, &mut st) => {
                    if let Some(exit) = step? {
                        return Ok(exit);
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Running for K8sRunning {
    async fn wait(&self) -> Result<JobExit, BackendError> {
        let mut ended = self.ended.lock().await;
        if let Some(exit) = *ended {
            return Ok(exit);
        }
        let exit = self.wait_inner().await?;
        *ended = Some(exit);
        drop(ended);
        let detail = self.detail().unwrap_or_default();
        if exit == JobExit::Exec(0) {
            tracing::info!(job = self.job_id, pod = %self.name, "job Pod ended: {detail}");
        } else {
            let log = match exit {
                JobExit::NotRun => None,
                _ => self.log_tail().await,
            };
            tracing::warn!(job = self.job_id, pod = %self.name, ?exit, log = log.as_deref().unwrap_or(""), "job Pod ended: {detail}");
        }
        Ok(exit)
    }

    fn abort(&self) {
        self.abort.cancel();
    }

    async fn cleanup(&self) -> Result<(), BackendError> {
        // Every call asks the server again (404 = already gone), so a clean-up after
        // `reap`, the owner's garbage collection or a previous clean-up is Ok.
        delete(&self.pods, &self.name, 0).await?;
        for s in &self.secret_names {
            delete(&self.secrets, s, 0).await?;
        }
        Ok(())
    }
}

/// At most this much of the job container's log goes to the claimer's log.
const LOG_TAIL_BYTES: usize = 4096;

/// The last `max` bytes of `s`, cut at a character boundary.
fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Delete an object; `Ok(false)` when it was already gone.
async fn delete<K>(api: &Api<K>, name: &str, grace_secs: u64) -> Result<bool, BackendError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let dp = DeleteParams {
        grace_period_seconds: Some(u32::try_from(grace_secs).unwrap_or(u32::MAX)),
        propagation_policy: Some(kube::api::PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(true),
        Err(e) if code(&e) == Some(404) => Ok(false),
        Err(e) => Err(other(format!("deleting {name}: {}", brief(&e)))),
    }
}

/// Best effort, for a `start` that failed half-way.
async fn remove_all(secrets: &Api<Secret>, names: &[String]) {
    for n in names {
        if let Err(e) = delete(secrets, n, 0).await {
            tracing::warn!(secret = %n, error = %e, "could not remove the Secret of a job that did not start; reap removes it");
        }
    }
}

/// Name, claimer (the annotation's exact value, else the label's) and job of an object.
fn identity(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> (String, String, String) {
    let get = |key: &str| {
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .or_else(|| meta.labels.as_ref().and_then(|l| l.get(key)))
            .cloned()
            .unwrap_or_default()
    };
    (
        meta.name.clone().unwrap_or_default(),
        get(CLAIMER),
        get(JOB),
    )
}

fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(r) => Some(r.code),
        _ => None,
    }
}

/// An API error in one line: code, reason and the server's message (never a body we sent).
fn brief(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(r) => format!("{} {}: {}", r.code, r.reason, r.message),
        other => other.to_string(),
    }
}

fn unavailable(message: String) -> BackendError {
    BackendError::Unavailable {
        backend: NAME.into(),
        message,
    }
}

fn other(message: String) -> BackendError {
    BackendError::Other {
        backend: NAME.into(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tails_are_cut_at_a_character() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aéb", 2), "b");
    }

    #[tokio::test]
    async fn the_sole_claimer_knows_itself_also_sanitized() {
        let me = SoleClaimer::new("serve-0/1");
        assert!(me.is_alive("serve-0/1").await.unwrap());
        assert!(me.is_alive("serve-0-1").await.unwrap());
        assert!(!me.is_alive("serve-0/0").await.unwrap());
        let set = |c: &str| c == "a" || c == "b";
        assert!(set.is_alive("b").await.unwrap());
        assert!(!set.is_alive("c").await.unwrap());
    }
}
