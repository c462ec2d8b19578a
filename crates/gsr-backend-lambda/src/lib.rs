//! The `lambda` backend: each claimed job is one invocation of the `gsr` AWS Lambda
//! function (the `gsr` binary as a custom runtime, `gsr lambda`), which runs it like
//! `gsr exec` and answers with the job's outcome.
//!
//! # Synchronous invocations, on purpose
//!
//! Lambda offers two ways to run the job:
//!
//! - `Event` (asynchronous): `202` at once, Lambda runs the job later. The backend then
//!   cannot see the end: the contract's [`Running::wait`] has no GitLab access to poll the
//!   job's state, Lambda *retries* failed asynchronous invocations (twice by default, so a
//!   job could run up to three times unless the function's retry setting is changed), and
//!   its queue may delay the start by minutes under load. Also the `cargo lambda watch`
//!   emulator ignores `InvocationType` altogether (every invocation is synchronous there;
//!   checked with `X-Amz-Invocation-Type: Event` and `DryRun`), so an `Event` design could
//!   not be tested for real here.
//! - `RequestResponse` (synchronous), **what this backend does**: [`Backend::start`] sends
//!   the invocation from a task of the claimer and returns; [`Running::wait`] returns when
//!   the function answers, with the exact [`JobExit`] from its summary. The cost is one
//!   open HTTPS connection per running job in the claimer, for at most 15 minutes (the
//!   Lambda limit): cheap next to what the job itself costs, and it is what gives the
//!   claimer a real end of job, like every other backend.
//!
//! The invocation is never retried by the SDK (a retried invocation could run the job
//! twice); only throttling (`TooManyRequestsException`, the job did not start) is retried
//! here with back-off, and a request Lambda refused is [`JobExit::NotRun`].
//!
//! # What Lambda cannot do (see [`Capabilities`])
//!
//! - **Jobs longer than 15 minutes**: `max_duration` is 900 s; the claimer routes longer
//!   jobs to its fallback backend, and `start` refuses them as a safety net.
//! - **`image:` and `services:`**: the function's image is fixed at deployment.
//! - **Hard cancel**: Lambda cannot stop a running invocation. [`Running::abort`] stops
//!   *waiting* (the connection is dropped and `wait` returns [`JobExit::Killed`] at once)
//!   but the job goes on in Lambda until it ends or hits its deadline. It still ends early
//!   when GitLab ends it: `gsr` in the function sees a GitLab cancel on its next trace
//!   update, and a job the claimer fails in GitLab with its job token (what a claimer does
//!   after `Killed`/`NotRun`) gets `403` and aborts itself. The function's own deadline
//!   (its configured timeout, at most 15 minutes) is the hard bound; `gsr lambda` stops the
//!   job shortly before it and reports `runner_interrupted`.
//! - **Reaping**: there is nothing to reap. An invocation holds no resources once it
//!   ends, and none outlives its timeout; a claimer that crashes leaves at most running
//!   invocations, which end by themselves (as above). [`Backend::reap`] reports nothing.
//!
//! # Secrets
//!
//! The payload (it holds the job token) travels only in the invocation body over HTTPS
//! (SigV4-signed); it is never logged, and `Debug` of the settings redacts the secret
//! key. The function needs no runner token for direct invocations. The function's answer
//! and errors are logged by type only.
//!
//! # Settings
//!
//! [`LambdaSettings`]: function name or ARN, qualifier (alias or version), region,
//! credentials (the standard AWS chain: environment, profile, web identity, ECS/IMDS;
//! or static keys), and an endpoint override (the emulator, a VPC endpoint).
//!
//! # Tested how
//!
//! - Unit tests for the body and the answer mapping.
//! - `tests/scripted.rs`: this SDK client against scripted answers in AWS's form (what the
//!   emulator does not produce): the signed request (path, qualifier, invocation type,
//!   SigV4 `Authorization`, body), function errors as `200` + `X-Amz-Function-Error`,
//!   throttling retried, a missing function and service errors never re-sent, `DryRun`'s
//!   `204`, access denied.
//! - `crates/gsr/tests/backends/lambda.rs`: the conformance suite (success, failure,
//!   cancel, timeout, artifacts, secrets) against the real `cargo lambda watch` emulator
//!   with the real `gsr` binary as the function, through this SDK client (endpoint
//!   override, static test credentials); a missing function; abandoning on `abort`.
//!
//! Not tested live: real AWS (the service's SigV4 check, IAM, real throttling, cold
//! starts, idle connections held for up to 15 minutes through NAT gateways or proxies,
//! which may drop them: `wait` then returns an error while the job may still run).

mod answer;

use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_lambda::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{InvocationType, LogType};
use aws_sdk_lambda::Client;
use gsr_backend::{
    Backend, BackendError, CancellationToken, Capabilities, JobExit, Launch, ReapReport, Running,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{watch, OnceCell};

/// The backend's name in settings and the UI.
pub const NAME: &str = "lambda";

/// Lambda's longest invocation.
pub const MAX_DURATION: Duration = Duration::from_secs(900);

/// Lambda's limit on a synchronous invocation's request body.
const MAX_BODY: usize = 6 * 1024 * 1024;

/// Beyond the function's deadline, how long `wait` keeps waiting for the answer before it
/// gives up (a hang guard only: Lambda ends every invocation by its timeout).
const ANSWER_SLACK: Duration = Duration::from_secs(120);

/// Throttled invocations (nothing ran) are tried this many times in all.
const THROTTLE_ATTEMPTS: u32 = 6;

/// Where credentials come from.
#[derive(Debug, Clone, Default)]
pub enum Credentials {
    /// The standard AWS chain (environment, shared profile, web identity, ECS, IMDS).
    #[default]
    Default,
    /// Fixed keys (tests against the emulator; static IAM users).
    Static {
        /// `AWS_ACCESS_KEY_ID`.
        access_key_id: String,
        /// `AWS_SECRET_ACCESS_KEY` (redacted in `Debug`).
        secret_access_key: SecretString,
    },
}

/// The `lambda` backend's settings.
#[derive(Debug, Clone)]
pub struct LambdaSettings {
    /// Function name, partial or full ARN.
    pub function: String,
    /// Alias or version to invoke (`None`: `$LATEST`).
    pub qualifier: Option<String>,
    /// AWS region (`None`: from the environment / profile; required then).
    pub region: Option<String>,
    /// Endpoint override (`cargo lambda watch`, a VPC endpoint); `None`: AWS's.
    pub endpoint_url: Option<String>,
    /// Credentials.
    pub credentials: Credentials,
}

impl LambdaSettings {
    /// Settings for `function` with everything else from the environment.
    pub fn new(function: impl Into<String>) -> Self {
        Self {
            function: function.into(),
            qualifier: None,
            region: None,
            endpoint_url: None,
            credentials: Credentials::Default,
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.function.trim().is_empty() {
            return Err("`function` (name or ARN of the gsr function) is required".into());
        }
        if let Some(q) = &self.qualifier {
            if q.is_empty()
                || !q
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "$-_".contains(c))
            {
                return Err(format!("`qualifier` {q:?} is not an alias or version"));
            }
        }
        if let Some(u) = &self.endpoint_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!("`endpoint_url` {u:?} is not an http(s) URL"));
            }
        }
        Ok(())
    }
}

/// Jobs as invocations of the `gsr` Lambda function. See the crate docs.
pub struct LambdaBackend {
    settings: LambdaSettings,
    client: OnceCell<Client>,
}

impl LambdaBackend {
    /// A backend with these settings (the AWS client is made on first use).
    pub fn new(settings: LambdaSettings) -> Self {
        Self {
            settings,
            client: OnceCell::new(),
        }
    }

    fn config_error(&self, message: impl Into<String>) -> BackendError {
        BackendError::Config {
            backend: NAME.into(),
            message: message.into(),
        }
    }

    async fn client(&self) -> Result<Client, BackendError> {
        self.settings.check().map_err(|m| self.config_error(m))?;
        let client = self
            .client
            .get_or_init(|| async {
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https();
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .http_client(http)
                    // Never re-send an invocation: it could run the job twice.
                    .retry_config(aws_config::retry::RetryConfig::disabled());
                if let Some(region) = &self.settings.region {
                    loader = loader.region(aws_config::Region::new(region.clone()));
                }
                if let Some(url) = &self.settings.endpoint_url {
                    loader = loader.endpoint_url(url.clone());
                }
                if let Credentials::Static {
                    access_key_id,
                    secret_access_key,
                } = &self.settings.credentials
                {
                    loader = loader.credentials_provider(aws_sdk_lambda::config::Credentials::new(
                        access_key_id.clone(),
                        secret_access_key.expose_secret().to_string(),
                        None,
                        None,
                        "gsr-settings",
                    ));
                }
                Client::new(&loader.load().await)
            })
            .await;
        if client.config().region().is_none() {
            return Err(self
                .config_error("no AWS region: set `region` or AWS_REGION / the profile's region"));
        }
        Ok(client.clone())
    }
}

#[async_trait::async_trait]
impl Backend for LambdaBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            image: false,
            services: false,
            hard_cancel: false,
            max_duration: Some(MAX_DURATION),
            max_jobs: None,
        }
    }

    /// A `DryRun` invocation: on AWS it checks that the function exists and that these
    /// credentials may invoke it, without running it. (The emulator runs the function
    /// instead; `gsr` refuses the empty payload with `gsr::UnrecognisedInvocation`, which
    /// proves a `gsr` function answers.)
    async fn validate(&self) -> Result<(), BackendError> {
        let client = self.client().await?;
        let unavailable = |message: String| BackendError::Unavailable {
            backend: NAME.into(),
            message,
        };
        let what = format!("function {:?}", self.settings.function);
        match client
            .invoke()
            .function_name(&self.settings.function)
            .set_qualifier(self.settings.qualifier.clone())
            .invocation_type(InvocationType::DryRun)
            .payload(Blob::new(b"{}".to_vec()))
            .send()
            .await
        {
            Ok(out) if out.function_error().is_none() => Ok(()),
            Ok(out) => {
                let payload = out.payload().map(Blob::as_ref).unwrap_or_default();
                match answer::function_error_in(payload) {
                    Some(t) if t == "gsr::UnrecognisedInvocation" => Ok(()),
                    t => Err(unavailable(format!(
                        "{what} does not answer like gsr (function error {t:?})"
                    ))),
                }
            }
            Err(SdkError::ServiceError(e)) => {
                let body = e.raw().body().bytes().unwrap_or_default();
                if answer::function_error_in(body).as_deref() == Some("gsr::UnrecognisedInvocation")
                {
                    return Ok(());
                }
                let status = e.raw().status().as_u16();
                let code = e.err().code().unwrap_or("no error code");
                let message = e.err().message().unwrap_or_default();
                Err(unavailable(match status {
                    404 => format!("{what} not found ({code}) {message}"),
                    401 | 403 => format!(
                        "not allowed to invoke {what} ({code}): the credentials need \
                         lambda:InvokeFunction on it. {message}"
                    ),
                    _ => format!("invoking {what} failed: HTTP {status} {code} {message}"),
                }))
            }
            Err(e) => Err(unavailable(format!(
                "cannot reach the Lambda API for {what}: {}",
                aws_sdk_lambda::error::DisplayErrorContext(&e)
            ))),
        }
    }

    /// Cheap: the client can be made (region, settings). No call to AWS: readiness is
    /// polled often, and a `DryRun` costs an API call each time.
    async fn healthcheck(&self) -> Result<(), BackendError> {
        self.client().await.map(drop)
    }

    /// Nothing to reap: see the crate docs.
    async fn reap(&self) -> Result<ReapReport, BackendError> {
        Ok(ReapReport::default())
    }

    async fn start(&self, launch: Launch) -> Result<Box<dyn Running>, BackendError> {
        let job_id = launch.job_id;
        let refuse = |message: String| BackendError::Start {
            backend: NAME.into(),
            job_id,
            message,
        };
        if launch.timeout > MAX_DURATION {
            return Err(refuse(format!(
                "the job's timeout ({} s) exceeds Lambda's {} s: it belongs on the fallback backend",
                launch.timeout.as_secs(),
                MAX_DURATION.as_secs()
            )));
        }
        let body =
            answer::body(launch.payload.expose_secret(), &launch.gitlab_url).map_err(refuse)?;
        if body.len() > MAX_BODY {
            return Err(refuse(format!(
                "the job payload ({} bytes) exceeds Lambda's {MAX_BODY}-byte request limit",
                body.len()
            )));
        }
        let client = self.client().await?;
        let (tx, rx) = watch::channel(None);
        let stop = launch.abort.child_token();
        let invoke = Invoke {
            client,
            function: self.settings.function.clone(),
            qualifier: self.settings.qualifier.clone(),
            job_id,
        };
        let guard = MAX_DURATION.min(launch.timeout + Duration::from_secs(60)) + ANSWER_SLACK;
        tracing::info!(job = job_id, function = %self.settings.function, "invoking the Lambda function");
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let result = tokio::select! {
                    r = invoke.run(body) => r,
                    _ = stop.cancelled() => {
                        tracing::warn!(job = job_id, "abandoning the invocation: Lambda cannot stop it; \
                            the job ends when GitLab ends it or at the function's deadline");
                        Ok(JobExit::Killed)
                    }
                    _ = tokio::time::sleep(guard) => Err(format!(
                        "no answer from the function {} s after the invocation started",
                        guard.as_secs()
                    )),
                };
                let _ = tx.send(Some(result));
            })
        };
        Ok(Box::new(LambdaJob {
            result: rx,
            stop,
            task: Mutex::new(Some(task)),
        }))
    }
}

/// One invocation's parameters.
struct Invoke {
    client: Client,
    function: String,
    qualifier: Option<String>,
    job_id: u64,
}

impl Invoke {
    async fn run(self, body: Vec<u8>) -> Result<JobExit, String> {
        let job = self.job_id;
        let mut delay = Duration::from_secs(1);
        let mut attempt = 1;
        loop {
            let sent = self
                .client
                .invoke()
                .function_name(&self.function)
                .set_qualifier(self.qualifier.clone())
                .invocation_type(InvocationType::RequestResponse)
                .log_type(LogType::None)
                .payload(Blob::new(body.clone()))
                .send()
                .await;
            match sent {
                Ok(out) => {
                    let payload = out.payload().map(Blob::as_ref).unwrap_or_default();
                    if let Some(kind) = out.function_error() {
                        let t = answer::function_error_in(payload).unwrap_or_default();
                        tracing::warn!(job, kind, error_type = %t, "the function answered with an error");
                    }
                    let exit = answer::exit_of(out.function_error(), payload);
                    tracing::info!(job, exit = ?exit, "the invocation ended");
                    return exit;
                }
                Err(SdkError::ServiceError(e)) => {
                    let raw_body = e.raw().body().bytes().unwrap_or_default();
                    if let Some(t) = answer::function_error_in(raw_body) {
                        // The emulator's form of a function error (HTTP 500).
                        tracing::warn!(job, error_type = %t, "the function answered with an error");
                        return Ok(answer::exit_of_error(&t));
                    }
                    let code = e.err().code().unwrap_or_default().to_string();
                    let throttled =
                        code == "TooManyRequestsException" || e.raw().status().as_u16() == 429;
                    if throttled && attempt < THROTTLE_ATTEMPTS {
                        tracing::info!(job, attempt, "throttled by Lambda; trying again");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                        attempt += 1;
                        continue;
                    }
                    // Lambda refused the request: the function did not run the job.
                    tracing::error!(job, status = e.raw().status().as_u16(), code = %code,
                        message = e.err().message().unwrap_or_default(),
                        "Lambda refused the invocation");
                    return Ok(JobExit::NotRun);
                }
                Err(e @ SdkError::ConstructionFailure(_)) => {
                    tracing::error!(job, error = %aws_sdk_lambda::error::DisplayErrorContext(&e),
                        "the invocation could not be built");
                    return Ok(JobExit::NotRun);
                }
                Err(e) => {
                    // The connection failed or timed out: the job may or may not be running
                    // in Lambda; GitLab has whatever state it reported.
                    return Err(format!(
                        "the invocation's connection failed (the job may still run in Lambda): {}",
                        aws_sdk_lambda::error::DisplayErrorContext(&e)
                    ));
                }
            }
        }
    }
}

/// A job's invocation.
struct LambdaJob {
    result: watch::Receiver<Option<Result<JobExit, String>>>,
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[async_trait::async_trait]
impl Running for LambdaJob {
    async fn wait(&self) -> Result<JobExit, BackendError> {
        let mut rx = self.result.clone();
        let r = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| BackendError::Other {
                backend: NAME.into(),
                message: "the invocation task ended without an answer".into(),
            })?
            .clone();
        r.expect("checked by wait_for")
            .map_err(|message| BackendError::Other {
                backend: NAME.into(),
                message,
            })
    }

    fn abort(&self) {
        self.stop.cancel();
    }

    /// Nothing exists outside the claimer; an invocation still being waited for is
    /// abandoned (the connection is dropped). Idempotent.
    async fn cleanup(&self) -> Result<(), BackendError> {
        self.stop.cancel();
        let task = self.task.lock().map(|mut t| t.take()).unwrap_or_default();
        if let Some(task) = task {
            let _ = task.await;
        }
        Ok(())
    }
}

impl Drop for LambdaJob {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretSlice;
    use std::collections::BTreeMap;

    fn launch(timeout: Duration) -> Launch {
        Launch {
            job_id: 5,
            payload: SecretSlice::from(br#"{"id":5,"token":"glcbt-known"}"#.to_vec()),
            gitlab_url: "http://127.0.0.1:1".into(),
            timeout,
            labels: BTreeMap::new(),
            abort: CancellationToken::new(),
        }
    }

    fn settings() -> LambdaSettings {
        LambdaSettings {
            function: "gsr".into(),
            qualifier: None,
            region: Some("eu-west-1".into()),
            // Nothing listens on port 1.
            endpoint_url: Some("http://127.0.0.1:1".into()),
            credentials: Credentials::Static {
                access_key_id: "AKIDTEST".into(),
                secret_access_key: SecretString::from("known-secret-key"),
            },
        }
    }

    #[test]
    fn capabilities_route_long_jobs_elsewhere() {
        let caps = LambdaBackend::new(settings()).capabilities();
        assert_eq!(caps.max_duration, Some(Duration::from_secs(900)));
        assert!(!caps.image && !caps.services && !caps.hard_cancel);
    }

    #[test]
    fn debug_redacts_the_secret_key() {
        let dbg = format!("{:?}", settings());
        assert!(!dbg.contains("known-secret-key"), "{dbg}");
    }

    #[tokio::test]
    async fn start_refuses_jobs_longer_than_lambda_allows() {
        let backend = LambdaBackend::new(settings());
        let err = backend
            .start(launch(Duration::from_secs(901)))
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(err, BackendError::Start { job_id: 5, .. }),
            "{err}"
        );
        assert!(!err.to_string().contains("glcbt"), "{err}");
    }

    #[tokio::test]
    async fn bad_settings_are_config_errors() {
        let mut s = settings();
        s.function = " ".into();
        let err = LambdaBackend::new(s).validate().await.unwrap_err();
        assert!(matches!(err, BackendError::Config { .. }), "{err}");
        let mut s = settings();
        s.qualifier = Some("a/b".into());
        let err = LambdaBackend::new(s).validate().await.unwrap_err();
        assert!(err.to_string().contains("qualifier"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_api_is_unavailable_and_a_started_job_can_be_abandoned() {
        let backend = LambdaBackend::new(settings());
        let err = backend.validate().await.unwrap_err();
        assert!(matches!(err, BackendError::Unavailable { .. }), "{err}");
        assert!(!err.to_string().contains("known-secret-key"), "{err}");
        assert_eq!(backend.reap().await.unwrap(), ReapReport::default());
        // Nothing answers: wait ends with an error (the connection failed), never hangs;
        // cleanup is idempotent.
        let job = backend
            .start(launch(Duration::from_secs(60)))
            .await
            .unwrap();
        let r = job.wait().await;
        assert!(r.is_err(), "{r:?}");
        job.cleanup().await.unwrap();
        job.cleanup().await.unwrap();
    }
}
