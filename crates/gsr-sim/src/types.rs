//! The admin API's JSON shapes, shared by the server ([`crate::admin`]) and the typed
//! client ([`crate::client`]).
//!
//! One definition per shape means a test that reads a [`JobView`] through
//! [`crate::AdminClient`] sees exactly what the server serialised; there is no second copy
//! to drift. None of these are GitLab wire types: GitLab's JSON is produced in
//! [`crate::payload`] and the runner API handlers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A job's status, spelled as GitLab spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for its dependencies to finish (a later stage).
    Created,
    /// Queued, or assigned and waiting for the runner's two-phase acknowledgement.
    Pending,
    /// Running on a runner.
    Running,
    /// Finished successfully.
    Success,
    /// Finished with a failure (see `failure_reason`).
    Failed,
    /// Cancel requested; the runner (declared `cancel_gracefully`) is finishing up.
    Canceling,
    /// Canceled.
    Canceled,
    /// Not run because a dependency did not succeed.
    Skipped,
}

impl JobStatus {
    /// GitLab's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Created => "created",
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Success => "success",
            JobStatus::Failed => "failed",
            JobStatus::Canceling => "canceling",
            JobStatus::Canceled => "canceled",
            JobStatus::Skipped => "skipped",
        }
    }

    /// Success, failed, canceled or skipped: nothing will change any more.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Success | JobStatus::Failed | JobStatus::Canceled | JobStatus::Skipped
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for JobStatus {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<&str> for JobStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for JobStatus {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

/// `GET /-/sim/jobs/:id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// Job id.
    pub id: u64,
    /// Job name.
    pub name: String,
    /// Project id.
    pub project_id: u64,
    /// Pipeline id.
    pub pipeline_id: u64,
    /// Current status.
    pub status: JobStatus,
    /// GitLab failure reason once failed (`runner_unsupported`, `script_failure`, …).
    pub failure_reason: Option<String>,
    /// Exit code reported by the final update.
    pub exit_code: Option<i64>,
    /// Runner that took the job.
    pub runner_id: Option<u64>,
    /// Runner manager (`system_id`, `<legacy>` when none was sent) that took the job.
    pub runner_system_id: Option<String>,
    /// Bytes of trace stored.
    pub trace_size: u64,
    /// `crc32:xxxxxxxx` of the stored trace, computed by the simulator.
    pub trace_checksum: String,
    /// Last `output.checksum` (or legacy `checksum`) the runner reported.
    pub reported_checksum: Option<String>,
    /// Last `output.bytesize` the runner reported.
    pub reported_bytesize: Option<u64>,
    /// Final `PUT` attempts (`success`/`failed`), including ones answered 202.
    pub final_update_attempts: u32,
    /// `PUT state=running` keep-alives while the job was running (the two-phase ack excluded).
    pub keepalive_count: u32,
    /// `PUT state=pending` keep-alives while waiting for the two-phase acknowledgement.
    pub pending_keepalive_count: u32,
    /// Whether the job was acknowledged through two-phase commit (`PUT state=running` while pending).
    pub acknowledged: bool,
    /// Whether a failure of this job is allowed (`allow_failure`, or an allowed exit code).
    pub allow_failure: bool,
    /// Uploaded artifacts.
    pub artifacts: Vec<ArtifactView>,
}

/// One stored artifact of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactView {
    /// `archive`, `junit`, …
    pub artifact_type: String,
    /// `zip`, `gzip`, `raw`.
    pub artifact_format: String,
    /// File name of the uploaded part.
    pub filename: String,
    /// Size in bytes.
    pub size: u64,
    /// `expire_in` as sent by the runner.
    pub expire_in: Option<String>,
}

/// A project as the admin API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// Project id.
    pub id: u64,
    /// Full path, e.g. `group/project`.
    pub path: String,
    /// Clone URL without credentials, e.g. `http://127.0.0.1:PORT/group/project.git`.
    pub http_url: String,
}

/// `POST /-/sim/runners` body. Everything is optional; `run_untagged` defaults to true.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunnerInput {
    /// Runner tags.
    pub tags: Vec<String>,
    /// Whether the runner picks jobs without tags.
    pub run_untagged: bool,
    /// A paused runner gets 204 from `jobs/request`.
    pub paused: bool,
    /// Description.
    pub description: String,
    /// `not_protected` (default) or `ref_protected` (only jobs on protected refs).
    pub access_level: String,
    /// Upper bound for job timeouts on this runner (seconds, >= 600).
    pub maximum_timeout: Option<u64>,
    /// Restrict to these projects (a project runner); `None` = instance runner.
    pub project_ids: Option<Vec<u64>>,
}

impl Default for RunnerInput {
    fn default() -> Self {
        Self {
            tags: Vec::new(),
            run_untagged: true,
            paused: false,
            description: String::new(),
            access_level: "not_protected".to_string(),
            maximum_timeout: None,
            project_ids: None,
        }
    }
}

/// `POST /-/sim/runners` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerCreated {
    /// Runner id.
    pub id: u64,
    /// `glrt-…` authentication token.
    pub token: String,
}

/// `GET /-/sim/runners/:id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerView {
    /// Runner id.
    pub id: u64,
    /// Description.
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Picks untagged jobs.
    pub run_untagged: bool,
    /// Paused.
    pub paused: bool,
    /// `not_protected` / `ref_protected`.
    pub access_level: String,
    /// Maximum job timeout in seconds.
    pub maximum_timeout: Option<u64>,
    /// Projects of a project runner; `None` for an instance runner.
    pub project_ids: Option<Vec<u64>>,
    /// `ui` (admin API) or `registration_token` (legacy `POST /runners`).
    pub created_via: String,
    /// Runner managers, one per `system_id`.
    pub managers: Vec<ManagerView>,
}

/// One runner manager (a `system_id` that authenticated with the runner's token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManagerView {
    /// `s_…`/`r_…`, or `<legacy>` for requests without `system_id`.
    pub system_id: String,
    /// The last `info` object the manager sent.
    pub info: Option<serde_json::Value>,
    /// The last `info.features` the manager sent (its runtime features).
    pub features: serde_json::Map<String, serde_json::Value>,
    /// Authenticated requests seen from this manager.
    pub requests: u64,
    /// Last contact, RFC 3339.
    pub contacted_at: String,
}

/// One logged request to a runner-facing endpoint (runner API or git).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestLogEntry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// HTTP method.
    pub method: String,
    /// Path only.
    pub path: String,
    /// Path plus `?query` when there is one.
    pub uri: String,
    /// Status answered; 0 when the connection was dropped by a fault.
    pub status: u16,
    /// True when a `drop` fault closed the connection instead of answering.
    pub dropped: bool,
    /// Fault applied to this request, e.g. `status 503` or `trace_416`.
    pub fault: Option<String>,
    /// `Content-Type` header.
    pub content_type: Option<String>,
    /// `Content-Range` header.
    pub content_range: Option<String>,
    /// `User-Agent` header.
    pub user_agent: Option<String>,
    /// `Accept` header.
    pub accept: Option<String>,
    /// `X-Request-Id` header.
    pub request_id: Option<String>,
    /// Whether a `JOB-TOKEN` header was sent.
    pub job_token_present: bool,
    /// User name of HTTP Basic credentials (git), when sent.
    pub basic_auth_user: Option<String>,
    /// JSON body of `jobs/request` (and runner lifecycle calls), with tokens redacted.
    pub body: Option<serde_json::Value>,
}

/// Which endpoint a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultRoute {
    /// `POST /api/v4/jobs/request`.
    JobsRequest,
    /// `PUT /api/v4/jobs/:id`.
    UpdateJob,
    /// `PATCH /api/v4/jobs/:id/trace`.
    PatchTrace,
    /// `POST /api/v4/jobs/:id/artifacts`.
    UploadArtifacts,
    /// `GET /api/v4/jobs/:id/artifacts`.
    DownloadArtifacts,
    /// Any git smart-HTTP request.
    Git,
    /// An outgoing Job Hook delivery (kinds `drop` and `duplicate` only).
    WebhookDelivery,
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer `status` (with `Retry-After` when given) without processing the request.
    Status,
    /// Sleep `delay_ms`, then process normally.
    Delay,
    /// Close the connection without any response. On `webhook_delivery`: the delivery
    /// is lost (not sent, logged with error `dropped by fault`).
    Drop,
    /// `patch_trace` only: answer 416 with the real `Range` although the offset matched.
    #[serde(rename = "trace_416")]
    Trace416,
    /// `update_job` only: answer 202 to a final update without finishing the job.
    #[serde(rename = "final_202")]
    Final202,
    /// `webhook_delivery` only: send the delivery twice (same `Idempotency-Key` and
    /// `X-Gitlab-Event-UUID`, new `X-Gitlab-Webhook-UUID`), as after a timeout.
    Duplicate,
}

/// `POST /-/sim/faults` body: a fault consumed by the next `times` matching requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Endpoint.
    pub route: FaultRoute,
    /// Behaviour.
    pub kind: FaultKind,
    /// Status for `kind: status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `Retry-After` seconds for `kind: status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u32>,
    /// Delay for `kind: delay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// How many matching requests consume it.
    #[serde(default = "one")]
    pub times: u32,
}

fn one() -> u32 {
    1
}

impl Fault {
    fn new(route: FaultRoute, kind: FaultKind, times: u32) -> Self {
        Self {
            route,
            kind,
            status: None,
            retry_after: None,
            delay_ms: None,
            times,
        }
    }

    /// Answer `status` to the next `times` requests of `route`.
    pub fn status(route: FaultRoute, status: u16, times: u32) -> Self {
        Self {
            status: Some(status),
            ..Self::new(route, FaultKind::Status, times)
        }
    }

    /// Delay the next `times` requests of `route` by `delay_ms`.
    pub fn delay(route: FaultRoute, delay_ms: u64, times: u32) -> Self {
        Self {
            delay_ms: Some(delay_ms),
            ..Self::new(route, FaultKind::Delay, times)
        }
    }

    /// Close the connection of the next `times` requests of `route` without answering.
    pub fn drop_connection(route: FaultRoute, times: u32) -> Self {
        Self::new(route, FaultKind::Drop, times)
    }

    /// Answer 416 to the next `times` trace patches.
    pub fn trace_416(times: u32) -> Self {
        Self::new(FaultRoute::PatchTrace, FaultKind::Trace416, times)
    }

    /// Answer 202 to the next `times` final job updates.
    pub fn final_202(times: u32) -> Self {
        Self::new(FaultRoute::UpdateJob, FaultKind::Final202, times)
    }

    /// Lose the next `times` webhook deliveries (not sent, logged as dropped).
    pub fn webhook_drop(times: u32) -> Self {
        Self::new(FaultRoute::WebhookDelivery, FaultKind::Drop, times)
    }

    /// Send each of the next `times` webhook deliveries twice.
    pub fn webhook_duplicate(times: u32) -> Self {
        Self::new(FaultRoute::WebhookDelivery, FaultKind::Duplicate, times)
    }

    /// Adds `Retry-After: secs` to a `status` fault.
    pub fn with_retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

/// `POST /-/sim/projects/:id/hooks` body: a project webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectHookInput {
    /// Where deliveries are POSTed (`http` or `https`).
    pub url: String,
    /// Secret sent as `X-Gitlab-Token`; no header when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Job events enabled (default true). A hook without them gets no deliveries.
    #[serde(default = "yes")]
    pub job_events: bool,
}

fn yes() -> bool {
    true
}

impl ProjectHookInput {
    /// A hook on `url` with job events, without a secret token.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: None,
            job_events: true,
        }
    }
}

/// A project webhook as `GET /-/sim/projects/:id/hooks` lists it. The secret token is
/// never shown (as in GitLab's API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookView {
    /// Hook id.
    pub id: u64,
    /// Project id.
    pub project_id: u64,
    /// Delivery URL.
    pub url: String,
    /// Whether job events are delivered.
    pub job_events: bool,
    /// Whether a secret token is configured.
    pub token_set: bool,
    /// Consecutive failed deliveries (reset by a success).
    pub recent_failures: u32,
    /// How often the hook was temporarily disabled in the current failure streak.
    pub backoff_count: u32,
    /// End of the current temporary disablement (RFC 3339), if any.
    pub disabled_until: Option<String>,
    /// GitLab's `alert_status`: `executable`, `temporarily_disabled` or `disabled`.
    pub alert_status: String,
}

/// One entry of the webhook delivery log (`GET /-/sim/hooks/deliveries`): one HTTP
/// request, or one delivery that was not sent (dropped by a fault, hook disabled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookDelivery {
    /// Position in the log, from 1; what `resend` takes.
    pub seq: u64,
    /// Hook id.
    pub hook_id: u64,
    /// Job the event is about.
    pub job_id: u64,
    /// `build_status` of the payload.
    pub build_status: JobStatus,
    /// `X-Gitlab-Event-UUID`: one per job status change (shared by all hooks).
    pub event_uuid: String,
    /// `X-Gitlab-Webhook-UUID`: one per HTTP request (also set when nothing was sent).
    pub webhook_uuid: String,
    /// `Idempotency-Key`: one per (hook, event), kept by duplicates and resends.
    pub idempotency_key: String,
    /// HTTP status answered; `None` when no answer arrived or nothing was sent.
    pub status: Option<u16>,
    /// Why the delivery failed or was not sent (`HTTP 500`, `timeout after …`,
    /// `dropped by fault`, `hook disabled`, a connection error); `None` on success.
    pub error: Option<String>,
    /// Time the request took.
    pub duration_ms: u64,
    /// `seq` of the delivery this one re-sends (admin "Resend request").
    pub resend_of: Option<u64>,
    /// Not sent because the hook was (temporarily or permanently) disabled.
    pub skipped_disabled: bool,
}

impl HookDelivery {
    /// Sent and answered with a 2xx.
    pub fn succeeded(&self) -> bool {
        self.error.is_none() && self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// `POST /-/sim/users`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserCreated {
    /// User id.
    pub id: u64,
    /// Username.
    pub username: String,
    /// A `glpat-` token with scope `api`.
    pub personal_access_token: String,
}
