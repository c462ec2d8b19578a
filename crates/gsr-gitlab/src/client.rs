//! HTTP calls to GitLab's runner API.
//!
//! Two clients, split by credential so the type system keeps the runner token where it
//! belongs (DESIGN §3): [`Coordinator`] holds no token and is given the runner token per
//! call (claiming jobs, registration); [`JobClient`] is bound to one job and only ever holds
//! that job's token (trace, state, artifacts). A worker (`gsr exec`) gets a `JobClient`
//! and nothing else.
//!
//! Every call goes through `Coordinator::send`, which applies the retry policy
//! ([`crate::retry`]). Replies are classified here into what they mean for the runner
//! (e.g. [`PatchReply`], [`UpdateReply`]); callers never look at raw status codes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use gsr_job::{ExposeSecret, JobSpec, SecretString};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_RANGE, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use tokio::io::AsyncWriteExt;

use crate::convert::{parse_job, PayloadError};
use crate::retry::{retryable_status, RetryPolicy};
use crate::wire::{self, InfoWire};
use crate::RunnerInfo;

/// Errors talking to GitLab. Messages never contain tokens.
#[derive(Debug, thiserror::Error)]
pub enum GitlabError {
    /// The URL given for GitLab is not usable.
    #[error("invalid GitLab URL {url:?}: {reason}")]
    BadUrl {
        /// What was given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// Network-level failure after all retries.
    #[error("{context}: cannot reach GitLab: {source}")]
    Transport {
        /// What was being done.
        context: &'static str,
        /// Cause.
        source: reqwest::Error,
    },
    /// GitLab refused the token (403).
    #[error("{context}: forbidden (403): the token is invalid, expired or the runner was removed")]
    Forbidden {
        /// What was being done.
        context: &'static str,
    },
    /// GitLab answered 404.
    #[error("{context}: not found (404)")]
    NotFound {
        /// What was being done.
        context: &'static str,
    },
    /// The artifact is larger than GitLab accepts (413).
    #[error("{context}: too large for GitLab (413): {body}")]
    TooLarge {
        /// What was being done.
        context: &'static str,
        /// GitLab's explanation.
        body: String,
    },
    /// Any other unexpected status.
    #[error("{context}: unexpected status {status}: {body}")]
    Status {
        /// What was being done.
        context: &'static str,
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// A reply body that is not what the protocol says.
    #[error("{context}: invalid reply: {reason}")]
    BadReply {
        /// What was being done.
        context: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Local file I/O (artifact streaming).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// Cause.
        source: std::io::Error,
    },
}

/// What `POST /jobs/request` gave.
#[derive(Debug)]
pub enum JobRequest {
    /// A job was assigned.
    Job(Box<ClaimedJob>),
    /// A job was assigned but its payload cannot be run; it must be failed.
    Malformed(PayloadError),
    /// No job now; send `last_update` with the next request.
    NoJob {
        /// `X-GitLab-Last-Update`, if GitLab sent one.
        last_update: Option<String>,
        /// Workhorse long-polled this request (`Gitlab-Ci-Builds-Polling: yes`): an early
        /// answer means the queue changed, so ask again at once.
        long_polling: bool,
    },
}

/// A job as assigned, with its raw payload (what `gsr exec` is given).
#[derive(Debug)]
pub struct ClaimedJob {
    /// The parsed job.
    pub spec: JobSpec,
    /// The 201 body exactly as GitLab sent it.
    pub payload: bytes::Bytes,
}

/// The job-level signal GitLab attaches to trace and update replies (`Job-Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobSignal {
    /// Keep going.
    Continue,
    /// `canceling`: stop the script, run `after_script`, report.
    Cancel,
    /// `canceled`/`failed`, 403 or 404: the job is gone; stop everything at once.
    Abort,
}

fn signal_from(status: StatusCode, headers: &HeaderMap) -> JobSignal {
    let job_status = headers
        .get("Job-Status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if status == StatusCode::FORBIDDEN
        || status == StatusCode::NOT_FOUND
        || job_status == "canceled"
        || job_status == "failed"
    {
        JobSignal::Abort
    } else if job_status == "canceling" {
        JobSignal::Cancel
    } else {
        JobSignal::Continue
    }
}

fn interval_from(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("X-GitLab-Trace-Update-Interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s.min(15 * 60)))
}

/// What a trace PATCH achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchResult {
    /// Stored; the next offset GitLab expects.
    Accepted {
        /// Next offset.
        next_offset: u64,
    },
    /// GitLab has a different size (416); resend from `offset`.
    RangeMismatch {
        /// Where GitLab wants us to continue.
        offset: u64,
    },
    /// The job's trace is gone (404): stop sending.
    NotFound,
    /// Refused (403): the job is not running any more.
    Forbidden,
    /// Anything else (outage, 5xx after retries): try again later.
    Failed(String),
}

/// A trace PATCH reply.
#[derive(Debug, Clone)]
pub struct PatchReply {
    /// What happened to the bytes.
    pub result: PatchResult,
    /// What GitLab wants done with the job.
    pub signal: JobSignal,
    /// New trace update interval, if GitLab sent one.
    pub interval: Option<Duration>,
}

/// What a `PUT /jobs/:id` achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateResult {
    /// 200.
    Accepted,
    /// 202: accepted but not finished; send the rest of the trace and repeat after `interval`.
    NotFinished,
    /// 412: GitLab's trace does not validate; resend the whole trace, then repeat.
    TraceInvalid,
    /// 403/404: the job is gone (canceled, erased, token revoked).
    Gone,
    /// An outage or server error: the update cycle should be retried.
    Failed(String),
    /// GitLab refused the update itself (400, 409, 422, …): repeating it cannot help.
    Rejected(String),
}

/// A `PUT /jobs/:id` reply.
#[derive(Debug, Clone)]
pub struct UpdateReply {
    /// Result.
    pub result: UpdateResult,
    /// Job signal.
    pub signal: JobSignal,
    /// `X-GitLab-Trace-Update-Interval` (the back-off on 202).
    pub interval: Option<Duration>,
}

/// The job state sent with `PUT /jobs/:id`.
#[derive(Debug, Clone)]
pub struct JobUpdate {
    /// `pending`, `running`, `success` or `failed`.
    pub state: &'static str,
    /// With `failed`.
    pub failure_reason: Option<String>,
    /// Script exit code (omitted when 0 / unknown).
    pub exit_code: Option<i32>,
    /// `crc32:…` of the whole trace, and its size.
    pub output: Option<(String, u64)>,
}

impl JobUpdate {
    /// `state=running`: the two-phase acknowledgement, or a keep-alive with the trace so far.
    pub fn running(output: Option<(String, u64)>) -> Self {
        JobUpdate {
            state: "running",
            failure_reason: None,
            exit_code: None,
            output,
        }
    }
}

/// Result of registration or verification.
#[derive(Debug)]
pub struct Registered {
    /// Runner id, when GitLab sent it.
    pub id: Option<u64>,
    /// The runner authentication token.
    pub token: SecretString,
    /// Expiry, if any.
    pub token_expires_at: Option<String>,
}

/// Registration settings (legacy `POST /runners`).
#[derive(Debug, Clone, Default)]
pub struct RegisterOptions {
    /// Description shown in GitLab.
    pub description: String,
    /// Comma-separated tags.
    pub tag_list: String,
    /// Pick untagged jobs.
    pub run_untagged: bool,
    /// Lock to the project.
    pub locked: bool,
    /// `not_protected` or `ref_protected`.
    pub access_level: Option<String>,
    /// Maximum job timeout in seconds.
    pub maximum_timeout: Option<u64>,
    /// Register paused.
    pub paused: bool,
}

/// Client for one GitLab instance, without credentials of its own.
///
/// Clones are cheap and share the HTTP client (its connection pool, TLS roots and
/// settings); [`CoordinatorPool`] hands out such clones to many runners.
#[derive(Clone, Debug)]
pub struct Coordinator {
    http: reqwest::Client,
    api: url::Url,
    retry: RetryPolicy,
    /// Set when this came from a [`CoordinatorPool`]: every clone alive counts as one
    /// user of that shared HTTP client.
    _share: Option<Arc<()>>,
}

/// Normalise a GitLab URL the way gitlab-runner does: strip a trailing `/` and an old `/ci`.
pub fn api_base(url: &str) -> Result<url::Url, GitlabError> {
    let bad = |reason: &str| GitlabError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let mut u = url::Url::parse(url.trim()).map_err(|e| bad(&e.to_string()))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(bad("scheme must be http or https"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad(
            "credentials in the URL are not allowed; use the token option",
        ));
    }
    let mut path = u.path().trim_end_matches('/').to_string();
    if let Some(p) = path.strip_suffix("/ci") {
        path = p.to_string();
    }
    u.set_path(&format!("{path}/api/v4/"));
    u.set_query(None);
    u.set_fragment(None);
    Ok(u)
}

/// The HTTP client every [`Coordinator`] uses; `max_idle` bounds the idle connections
/// it keeps (per host).
fn http_client(info: &RunnerInfo, max_idle: usize) -> Result<reqwest::Client, GitlabError> {
    reqwest::Client::builder()
        .user_agent(info.user_agent())
        .pool_max_idle_per_host(max_idle)
        .connect_timeout(Duration::from_secs(10))
        // gitlab-runner waits up to 10 min for response headers (long polling, big uploads).
        .read_timeout(Duration::from_secs(600))
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(|e| GitlabError::Transport {
            context: "building the HTTP client",
            source: e,
        })
}

/// [`Coordinator`]s for many runners (the `gsr serve` dispatcher), sharing HTTP clients.
///
/// Why: a `reqwest::Client` is not small (its TLS configuration with the root
/// certificates, its pool, its resolver): one per runner was most of what an idle runner
/// cost in `gsr serve`. Runners of the same GitLab share one instead, and so share its idle
/// connections.
///
/// Why not *one* client per GitLab: over HTTPS a client speaks HTTP/2 when GitLab offers
/// it, and then every request of that client is a stream on one connection. A job
/// request is a long poll (held up to ~50 s), and the server caps the streams open on one
/// connection (`SETTINGS_MAX_CONCURRENT_STREAMS`: 100–128 is common, RFC 9113 suggests no
/// less than 100); the client (hyper) does not open a second connection when the cap is
/// reached, it queues the request. A thousand runners on one connection would have most
/// long polls, and the job calls (trace, updates) that share the client, waiting behind
/// others. So a client serves at most [`CoordinatorPool::RUNNERS_PER_CLIENT`] users (a
/// runner's receiver, and each of its running jobs, count one each while they hold their
/// clone); the next user gets a new client. Over HTTP/1.1 it changes nothing: each
/// request in flight has its own connection from the pool anyway.
///
/// Clients nobody holds any more are dropped (with their idle connections) on the next
/// call.
#[derive(Debug)]
pub struct CoordinatorPool {
    info: RunnerInfo,
    per_client: usize,
    /// Per normalised API URL, the shared clients.
    shards: Mutex<HashMap<String, Vec<Shard>>>,
}

#[derive(Debug)]
struct Shard {
    http: reqwest::Client,
    api: url::Url,
    /// One strong reference per [`Coordinator`] (or clone) handed out, plus this one.
    users: Arc<()>,
}

impl Shard {
    fn users(&self) -> usize {
        Arc::strong_count(&self.users) - 1
    }
}

impl CoordinatorPool {
    /// Users of one shared HTTP client at most: half the smallest stream cap HTTP/2 servers
    /// commonly set, so that job calls still find streams free beside the long polls.
    pub const RUNNERS_PER_CLIENT: usize = 50;

    /// Idle connections a shared client keeps at most. Each HTTP/1.1 request in flight
    /// has a connection of its own (~27 KiB of buffers and channel in hyper, measured with
    /// heaptrack), and a request sent the moment the previous answer arrived often opens a
    /// new one before the old one is back in the pool; unbounded, those spares stayed
    /// around (~700 for 1,000 runners started together, ~18 MiB). Over HTTP/2 a client
    /// has one connection anyway.
    pub const MAX_IDLE_PER_CLIENT: usize = 4;

    /// A pool whose clients identify as `info` (User-Agent).
    pub fn new(info: &RunnerInfo) -> Self {
        Self::with_per_client(info, Self::RUNNERS_PER_CLIENT)
    }

    /// [`CoordinatorPool::new`] with at most `per_client` users per client (at least 1).
    pub fn with_per_client(info: &RunnerInfo, per_client: usize) -> Self {
        CoordinatorPool {
            info: info.clone(),
            per_client: per_client.max(1),
            shards: Mutex::new(HashMap::new()),
        }
    }

    /// A coordinator for the GitLab at `url`, on a client shared with others of the same
    /// GitLab (URLs are compared after [`api_base`] normalisation).
    pub fn coordinator(&self, url: &str) -> Result<Coordinator, GitlabError> {
        let api = api_base(url)?;
        let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        shards.retain(|_, list| {
            list.retain(|s| s.users() > 0);
            !list.is_empty()
        });
        let list = shards.entry(api.to_string()).or_default();
        let shard = match list.iter().position(|s| s.users() < self.per_client) {
            Some(i) => &list[i],
            None => {
                list.push(Shard {
                    http: http_client(&self.info, Self::MAX_IDLE_PER_CLIENT)?,
                    api,
                    users: Arc::new(()),
                });
                &list[list.len() - 1]
            }
        };
        Ok(Coordinator {
            http: shard.http.clone(),
            api: shard.api.clone(),
            retry: RetryPolicy::default(),
            _share: Some(shard.users.clone()),
        })
    }

    /// HTTP clients held now (over all GitLab URLs), counting those whose users are gone
    /// until the next [`CoordinatorPool::coordinator`] call drops them.
    pub fn clients(&self) -> usize {
        let shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        shards.values().map(Vec::len).sum()
    }
}

impl Coordinator {
    /// A client for the GitLab at `url` (e.g. `https://gitlab.com`).
    pub fn new(url: &str, info: &RunnerInfo) -> Result<Self, GitlabError> {
        Ok(Coordinator {
            http: http_client(info, usize::MAX)?,
            api: api_base(url)?,
            retry: RetryPolicy::default(),
            _share: None,
        })
    }

    /// Replace the retry policy (tests use [`RetryPolicy::fast`]).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The retry policy in force.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// `<base>/api/v4/`.
    pub fn api_url(&self) -> &url::Url {
        &self.api
    }

    fn url(&self, path: &str) -> url::Url {
        self.api.join(path).expect("static API paths join")
    }

    /// Send with retries. `build` makes a fresh request per attempt (bodies are consumed).
    /// Returns the last response, retryable or not; errors only when every attempt failed
    /// at the transport level.
    async fn send(
        &self,
        context: &'static str,
        build: impl Fn() -> Result<RequestBuilder, GitlabError>,
    ) -> Result<Response, GitlabError> {
        let mut attempt = 0;
        loop {
            let req = build()?.header("X-Request-Id", uuid::Uuid::new_v4().simple().to_string());
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if retryable_status(status) && attempt + 1 < self.retry.max_attempts {
                        let wait = self.retry.wait_after(resp.headers(), attempt);
                        tracing::warn!(
                            context,
                            status,
                            ?wait,
                            "GitLab answered {status}; retrying"
                        );
                        drop(resp);
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                        continue;
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    if attempt + 1 < self.retry.max_attempts {
                        let wait = self.retry.backoff(attempt);
                        tracing::warn!(context, error = %e, ?wait, "request failed; retrying");
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(GitlabError::Transport { context, source: e });
                }
            }
        }
    }

    fn json_request(
        &self,
        method: Method,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<RequestBuilder, GitlabError> {
        let bytes = serde_json::to_vec(body).map_err(|e| GitlabError::BadReply {
            context: "encoding a request",
            reason: e.to_string(),
        })?;
        Ok(self
            .http
            .request(method, self.url(path))
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(bytes))
    }

    /// `POST /jobs/request`: claim one job with the runner token.
    pub async fn request_job(
        &self,
        runner_token: &SecretString,
        system_id: &str,
        last_update: Option<&str>,
        info: &RunnerInfo,
    ) -> Result<JobRequest, GitlabError> {
        const CTX: &str = "requesting a job";
        let info = info.wire();
        let token = runner_token.expose_secret();
        let body = wire::JobRequestBody {
            token,
            system_id: Some(system_id),
            last_update,
            info: &info,
        };
        let resp = self
            .send(CTX, || {
                Ok(self
                    .json_request(Method::POST, "jobs/request", &body)?
                    .header("RUNNER-TOKEN", runner_header(token)))
            })
            .await?;
        match resp.status().as_u16() {
            201 => {
                let payload = resp.bytes().await.map_err(|e| GitlabError::Transport {
                    context: CTX,
                    source: e,
                })?;
                Ok(match parse_job(&payload) {
                    Ok(spec) => JobRequest::Job(Box::new(ClaimedJob { spec, payload })),
                    Err(e) => JobRequest::Malformed(e),
                })
            }
            204 | 409 => Ok(JobRequest::NoJob {
                long_polling: resp
                    .headers()
                    .get("Gitlab-Ci-Builds-Polling")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"yes")),
                last_update: resp
                    .headers()
                    .get("X-GitLab-Last-Update")
                    .and_then(|v| v.to_str().ok())
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            }),
            403 => Err(GitlabError::Forbidden { context: CTX }),
            _ => Err(status_error(CTX, resp).await),
        }
    }

    /// Legacy registration: `POST /runners` with a registration token.
    pub async fn register(
        &self,
        registration_token: &SecretString,
        opts: &RegisterOptions,
        info: &RunnerInfo,
    ) -> Result<Registered, GitlabError> {
        const CTX: &str = "registering the runner";
        let info = info.wire();
        let body = wire::RegisterBody {
            token: registration_token.expose_secret(),
            description: &opts.description,
            info: &info,
            tag_list: &opts.tag_list,
            run_untagged: opts.run_untagged,
            locked: opts.locked,
            access_level: opts.access_level.as_deref(),
            maximum_timeout: opts.maximum_timeout,
            paused: opts.paused,
        };
        let resp = self
            .send(CTX, || self.json_request(Method::POST, "runners", &body))
            .await?;
        match resp.status().as_u16() {
            201 => registered(CTX, resp).await,
            403 => Err(GitlabError::Forbidden { context: CTX }),
            410 => Err(GitlabError::Status {
                context: CTX,
                status: 410,
                body: "registration with a registration token is disabled on this GitLab; \
                       create the runner in GitLab and use its glrt- token"
                    .into(),
            }),
            _ => Err(status_error(CTX, resp).await),
        }
    }

    /// `POST /runners/verify` (also how a `glrt-` token is "registered").
    pub async fn verify(
        &self,
        runner_token: &SecretString,
        system_id: &str,
        info: &RunnerInfo,
    ) -> Result<Registered, GitlabError> {
        const CTX: &str = "verifying the runner";
        let info = info.wire();
        let body = wire::VerifyBody {
            token: runner_token.expose_secret(),
            system_id: Some(system_id),
            info: &info,
        };
        let resp = self
            .send(CTX, || {
                self.json_request(Method::POST, "runners/verify", &body)
            })
            .await?;
        match resp.status().as_u16() {
            200 | 201 => {
                let bytes = resp.bytes().await.map_err(|e| GitlabError::Transport {
                    context: CTX,
                    source: e,
                })?;
                // Older GitLab answered a bare `200` text body.
                match serde_json::from_slice::<wire::RegisteredRunner>(&bytes) {
                    Ok(r) => Ok(Registered {
                        id: r.id,
                        token: SecretString::from(r.token),
                        token_expires_at: r.token_expires_at,
                    }),
                    Err(_) => Ok(Registered {
                        id: None,
                        token: runner_token.clone(),
                        token_expires_at: None,
                    }),
                }
            }
            403 | 422 => Err(GitlabError::Forbidden { context: CTX }),
            _ => Err(status_error(CTX, resp).await),
        }
    }

    /// Remove the runner (`DELETE /runners`) or only this machine's manager
    /// (`DELETE /runners/managers`, used for `glrt-` tokens), like `gitlab-runner unregister`.
    pub async fn unregister(
        &self,
        runner_token: &SecretString,
        system_id: Option<&str>,
    ) -> Result<(), GitlabError> {
        const CTX: &str = "unregistering the runner";
        let body = wire::TokenBody {
            token: runner_token.expose_secret(),
            system_id,
        };
        let path = if system_id.is_some() {
            "runners/managers"
        } else {
            "runners"
        };
        let resp = self
            .send(CTX, || self.json_request(Method::DELETE, path, &body))
            .await?;
        match resp.status().as_u16() {
            200 | 204 => Ok(()),
            403 => Err(GitlabError::Forbidden { context: CTX }),
            404 => Err(GitlabError::NotFound { context: CTX }),
            _ => Err(status_error(CTX, resp).await),
        }
    }

    /// A client bound to one job and its token.
    pub fn job_client(&self, job_id: u64, job_token: SecretString) -> JobClient {
        JobClient {
            coordinator: self.clone(),
            job_id,
            token: job_token,
        }
    }
}

fn runner_header(token: &str) -> HeaderValue {
    let mut v = HeaderValue::from_str(token).unwrap_or_else(|_| HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

async fn registered(ctx: &'static str, resp: Response) -> Result<Registered, GitlabError> {
    let r: wire::RegisteredRunner = resp.json().await.map_err(|e| GitlabError::BadReply {
        context: ctx,
        reason: e.to_string(),
    })?;
    Ok(Registered {
        id: r.id,
        token: SecretString::from(r.token),
        token_expires_at: r.token_expires_at,
    })
}

async fn status_error(context: &'static str, resp: Response) -> GitlabError {
    let status = resp.status().as_u16();
    let mut body = resp.text().await.unwrap_or_default();
    if body.len() > 300 {
        let mut cut = 300;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
        body.push('…');
    }
    if status == 413 {
        return GitlabError::TooLarge { context, body };
    }
    GitlabError::Status {
        context,
        status,
        body,
    }
}

/// Client for one job, holding only that job's token.
#[derive(Clone, Debug)]
pub struct JobClient {
    coordinator: Coordinator,
    job_id: u64,
    token: SecretString,
}

impl JobClient {
    /// The job id.
    pub fn job_id(&self) -> u64 {
        self.job_id
    }

    fn token_header(&self) -> HeaderValue {
        runner_header(self.token.expose_secret())
    }

    /// `PUT /jobs/:id`.
    pub async fn update(&self, update: &JobUpdate) -> UpdateReply {
        const CTX: &str = "updating the job";
        let token = self.token.expose_secret();
        let checksum = update.output.as_ref().map(|(c, _)| c.as_str());
        let body = wire::UpdateJobBody {
            token,
            state: update.state,
            failure_reason: update.failure_reason.as_deref(),
            exit_code: update.exit_code.filter(|c| *c != 0),
            checksum,
            output: update.output.as_ref().map(|(c, n)| wire::OutputWire {
                checksum: c.clone(),
                bytesize: *n,
            }),
        };
        let path = format!("jobs/{}", self.job_id);
        let resp = self
            .coordinator
            .send(CTX, || {
                Ok(self
                    .coordinator
                    .json_request(Method::PUT, &path, &body)?
                    .header("JOB-TOKEN", self.token_header()))
            })
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                return UpdateReply {
                    result: UpdateResult::Failed(e.to_string()),
                    signal: JobSignal::Continue,
                    interval: None,
                }
            }
        };
        let status = resp.status();
        let signal = signal_from(status, resp.headers());
        let interval = interval_from(resp.headers());
        // The status code says what happened to this update; `Job-Status` (in `signal`)
        // says what GitLab wants done with the job. An accepted final `failed` comes back
        // as 200 + `Job-Status: failed`: accepted, not gone.
        let result = match status.as_u16() {
            403 | 404 => UpdateResult::Gone,
            200 => UpdateResult::Accepted,
            202 => UpdateResult::NotFinished,
            412 => UpdateResult::TraceInvalid,
            s @ (400..=499) if !retryable_status(s) => {
                UpdateResult::Rejected(format!("GitLab refused the update with status {s}"))
            }
            s => UpdateResult::Failed(format!("status {s}")),
        };
        UpdateReply {
            result,
            signal,
            interval,
        }
    }

    /// `PATCH /jobs/:id/trace` with `bytes` starting at `offset`.
    pub async fn patch_trace(&self, offset: u64, bytes: Vec<u8>, debug_trace: bool) -> PatchReply {
        const CTX: &str = "sending the trace";
        let end = offset + bytes.len() as u64 - 1;
        let mut url = self.coordinator.url(&format!("jobs/{}/trace", self.job_id));
        if debug_trace {
            url.set_query(Some("debug_trace=true"));
        }
        let body = bytes::Bytes::from(bytes);
        let resp = self
            .coordinator
            .send(CTX, || {
                Ok(self
                    .coordinator
                    .http
                    .patch(url.clone())
                    .header("JOB-TOKEN", self.token_header())
                    .header(CONTENT_TYPE, "text/plain")
                    .header(CONTENT_RANGE, format!("{offset}-{end}"))
                    .body(body.clone()))
            })
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                return PatchReply {
                    result: PatchResult::Failed(e.to_string()),
                    signal: JobSignal::Continue,
                    interval: None,
                }
            }
        };
        let status = resp.status();
        let headers = resp.headers();
        let signal = signal_from(status, headers);
        let interval = interval_from(headers);
        let range_end = headers
            .get("Range")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.rsplit('-').next())
            .and_then(|s| s.trim().parse::<u64>().ok());
        let result = match status.as_u16() {
            202 => PatchResult::Accepted {
                next_offset: end + 1,
            },
            416 => match range_end {
                Some(o) => PatchResult::RangeMismatch { offset: o },
                None => PatchResult::Failed("416 without a Range header".into()),
            },
            404 => PatchResult::NotFound,
            403 => PatchResult::Forbidden,
            s => PatchResult::Failed(format!("status {s}")),
        };
        PatchReply {
            result,
            signal,
            interval,
        }
    }

    /// `POST /jobs/:id/artifacts`: stream `file` as the single multipart part `file`.
    pub async fn upload_artifact(
        &self,
        file: &Path,
        filename: &str,
        artifact_type: &str,
        artifact_format: &str,
        expire_in: Option<&str>,
    ) -> Result<(), GitlabError> {
        const CTX: &str = "uploading artifacts";
        let len = tokio::fs::metadata(file)
            .await
            .map_err(|source| GitlabError::Io {
                context: CTX,
                source,
            })?
            .len();
        let mut url = self
            .coordinator
            .url(&format!("jobs/{}/artifacts", self.job_id));
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("artifact_format", artifact_format);
            q.append_pair("artifact_type", artifact_type);
            if let Some(e) = expire_in {
                q.append_pair("expire_in", e);
            }
        }
        // Each attempt reopens the file so a retry streams it again from the start.
        let mut attempt = 0;
        loop {
            let f = tokio::fs::File::open(file)
                .await
                .map_err(|source| GitlabError::Io {
                    context: CTX,
                    source,
                })?;
            let stream = tokio_util::io::ReaderStream::new(f);
            let part = reqwest::multipart::Part::stream_with_length(
                reqwest::Body::wrap_stream(stream),
                len,
            )
            .file_name(filename.to_string())
            .mime_str("application/octet-stream")
            .expect("static mime");
            let form = reqwest::multipart::Form::new().part("file", part);
            let res = self
                .coordinator
                .http
                .post(url.clone())
                .header("JOB-TOKEN", self.token_header())
                .header("X-Request-Id", uuid::Uuid::new_v4().simple().to_string())
                .multipart(form)
                .send()
                .await;
            let policy = self.coordinator.retry;
            match res {
                Ok(resp) => match resp.status().as_u16() {
                    200 | 201 => return Ok(()),
                    403 => return Err(GitlabError::Forbidden { context: CTX }),
                    s if retryable_status(s) && attempt + 1 < policy.max_attempts => {
                        let wait = policy.wait_after(resp.headers(), attempt);
                        tokio::time::sleep(wait).await;
                    }
                    _ => return Err(status_error(CTX, resp).await),
                },
                Err(e) if attempt + 1 < policy.max_attempts => {
                    tracing::warn!(error = %e, "artifact upload failed; retrying");
                    tokio::time::sleep(policy.backoff(attempt)).await;
                }
                Err(e) => {
                    return Err(GitlabError::Transport {
                        context: CTX,
                        source: e,
                    })
                }
            }
            attempt += 1;
        }
    }

    /// `GET /jobs/:dep/artifacts` with `token`, streamed into `dest`.
    pub async fn download_artifacts(
        &self,
        dependency_id: u64,
        token: &SecretString,
        dest: &Path,
    ) -> Result<u64, GitlabError> {
        const CTX: &str = "downloading artifacts";
        let url = self
            .coordinator
            .url(&format!("jobs/{dependency_id}/artifacts"));
        let resp = self
            .coordinator
            .send(CTX, || {
                Ok(self
                    .coordinator
                    .http
                    .get(url.clone())
                    .header("JOB-TOKEN", runner_header(token.expose_secret())))
            })
            .await?;
        match resp.status().as_u16() {
            200 => {}
            401 | 403 => return Err(GitlabError::Forbidden { context: CTX }),
            404 => return Err(GitlabError::NotFound { context: CTX }),
            _ => return Err(status_error(CTX, resp).await),
        }
        let mut out = tokio::fs::File::create(dest)
            .await
            .map_err(|source| GitlabError::Io {
                context: CTX,
                source,
            })?;
        let mut stream = resp.bytes_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| GitlabError::Transport {
                context: CTX,
                source: e,
            })?;
            total += chunk.len() as u64;
            out.write_all(&chunk)
                .await
                .map_err(|source| GitlabError::Io {
                    context: CTX,
                    source,
                })?;
        }
        out.flush().await.map_err(|source| GitlabError::Io {
            context: CTX,
            source,
        })?;
        Ok(total)
    }
}

impl RunnerInfo {
    pub(crate) fn wire(&self) -> InfoWire {
        InfoWire {
            name: self.name.clone(),
            version: self.version.clone(),
            revision: self.revision.clone(),
            platform: self.platform.clone(),
            architecture: self.architecture.clone(),
            executor: self.executor.clone(),
            shell: self.shell.clone(),
            features: self.features,
            config: wire::InfoConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_base_normalises() {
        assert_eq!(
            api_base("https://gitlab.com").unwrap().as_str(),
            "https://gitlab.com/api/v4/"
        );
        assert_eq!(
            api_base("https://example.com/gitlab/ci/").unwrap().as_str(),
            "https://example.com/gitlab/api/v4/"
        );
        assert!(api_base("ftp://x").is_err());
        assert!(api_base("not a url").is_err());
        let e = api_base("https://u:secret@gitlab.com")
            .unwrap_err()
            .to_string();
        assert!(e.contains("credentials"));
    }

    #[test]
    fn pool_shares_a_client_per_gitlab_up_to_its_limit() {
        let info = RunnerInfo::new("shell", "bash", crate::Features::shell_runner());
        let pool = CoordinatorPool::with_per_client(&info, 2);
        let a = pool.coordinator("https://gitlab.example.com").unwrap();
        // The same GitLab spelled differently: same client.
        let b = pool.coordinator("https://gitlab.example.com/").unwrap();
        assert_eq!(pool.clients(), 1);
        assert_eq!(a.api_url(), b.api_url());
        // A third user of the same GitLab: a second client.
        let c = pool.coordinator("https://gitlab.example.com").unwrap();
        assert_eq!(pool.clients(), 2);
        // Another GitLab never shares.
        let d = pool.coordinator("https://other.example.com").unwrap();
        assert_eq!(pool.clients(), 3);
        assert_eq!(d.api_url().as_str(), "https://other.example.com/api/v4/");
        // A clone (a job's client) counts as a user while it lives.
        let job = a.job_client(1, SecretString::from("t".to_string()));
        drop(a);
        let e = pool.coordinator("https://gitlab.example.com").unwrap();
        assert_eq!(
            pool.clients(),
            3,
            "a freed place in the second client is reused"
        );
        // Clients nobody holds are dropped on the next call.
        drop((b, c, d, e, job));
        let f = pool.coordinator("https://gitlab.example.com").unwrap();
        assert_eq!(pool.clients(), 1);
        assert!(pool.coordinator("ftp://x").is_err());
        drop(f);
    }

    #[test]
    fn job_signal_classification() {
        let mut h = HeaderMap::new();
        assert_eq!(signal_from(StatusCode::ACCEPTED, &h), JobSignal::Continue);
        h.insert("Job-Status", "canceling".parse().unwrap());
        assert_eq!(signal_from(StatusCode::ACCEPTED, &h), JobSignal::Cancel);
        h.insert("Job-Status", "canceled".parse().unwrap());
        assert_eq!(signal_from(StatusCode::OK, &h), JobSignal::Abort);
        assert_eq!(
            signal_from(StatusCode::FORBIDDEN, &HeaderMap::new()),
            JobSignal::Abort
        );
    }
}
