//! `gsr` as an AWS Lambda custom runtime (DESIGN §2, §5 `lambda`).
//!
//! The `gsr` binary becomes a Lambda function when started as `bootstrap`, as `gsr lambda`,
//! or with `AWS_LAMBDA_RUNTIME_API` set and no command. It then polls the Lambda Runtime
//! API (through `lambda_runtime`) and handles two kinds of invocation, told apart by shape
//! ([`event::Invocation::parse`]):
//!
//! 1. **Webhook deliveries** as Function URL / API Gateway HTTP events (payload 2.0, and
//!    1.0). The event's headers and body (base64 too) become a `gsr-webhook`
//!    [`Delivery`](gsr_webhook::Delivery); the core applies the same rules as
//!    `gsr webhook` (secret, event, duplicates, claim with the runner token, run); its
//!    answer becomes the HTTP response event. Because Lambda freezes the process after the
//!    response, the invocation stays open until the job it caused has ended and the
//!    receiver is idle ([`http`]), within the invocation's deadline ([`deadline`]).
//! 2. **Direct invocations** `{"job": <jobs/request 201 body>, "gitlab_url": "…"}`: run
//!    exactly that already-claimed job with its job token only, like `gsr exec`, and answer
//!    `{"job_id", "outcome", "delivered", …}` ([`direct`]). This is what the control
//!    plane's Lambda backend sends; such a function needs no runner token.
//!
//! Anything else is answered with a function error (`errorType`
//! `gsr::UnrecognisedInvocation`).
//!
//! Limits worth knowing: Lambda stops an invocation after at most 15 minutes; GitLab
//! waits about 10 s for a webhook answer, so with a Function URL a delivery whose job runs
//! longer is recorded as failed by GitLab (the job still runs and reports normally). Put an
//! asynchronous invocation in between (API Gateway REST with `X-Amz-Invocation-Type:
//! Event`, or EventBridge) when hooks must be answered at once.

pub mod deadline;
pub mod direct;
pub mod event;
pub mod http;

use std::sync::Arc;
use std::time::SystemTime;

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::Value;

pub use deadline::{Budget, Deadline};
pub use direct::{DirectInvocation, DirectRunner, DirectSummary};
pub use event::{EventError, HttpRequest, HttpResponse, Invocation};
pub use http::{HttpFront, WebhookFactory};

/// Environment variables the Lambda service sets for a custom runtime, all needed by the
/// runtime client.
pub const REQUIRED_ENV: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

/// The required variables that are missing (empty when running inside Lambda).
pub fn missing_env() -> Vec<&'static str> {
    REQUIRED_ENV
        .iter()
        .copied()
        .filter(|v| std::env::var_os(v).is_none_or(|s| s.is_empty()))
        .collect()
}

/// Why an invocation failed as a whole (reported as a Lambda function error).
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The payload is neither an HTTP event nor a direct invocation.
    #[error(transparent)]
    Event(#[from] EventError),
    /// A direct invocation that cannot be run.
    #[error(transparent)]
    Direct(#[from] direct::DirectError),
}

impl From<InvokeError> for Diagnostic {
    fn from(e: InvokeError) -> Diagnostic {
        let error_type = match &e {
            InvokeError::Event(EventError::Unrecognised) => "gsr::UnrecognisedInvocation",
            InvokeError::Event(_) => "gsr::InvalidEvent",
            InvokeError::Direct(_) => "gsr::InvalidJob",
        };
        Diagnostic {
            error_type: error_type.into(),
            error_message: e.to_string(),
        }
    }
}

/// Everything one function instance needs to answer invocations.
pub struct Handler {
    /// Webhook deliveries.
    pub http: HttpFront,
    /// Direct invocations.
    pub direct: DirectRunner,
}

impl Handler {
    /// Answer one invocation.
    pub async fn invoke(&self, payload: Value, deadline: Deadline) -> Result<Value, InvokeError> {
        let started = tokio::time::Instant::now();
        match Invocation::parse(payload)? {
            Invocation::Http(req) => {
                let (method, path) = (req.method.clone(), req.path.clone());
                let resp = self.http.handle(req, deadline).await;
                tracing::info!(
                    %method,
                    %path,
                    status = resp.status_code,
                    took_ms = started.elapsed().as_millis() as u64,
                    "HTTP event answered"
                );
                Ok(serde_json::to_value(resp).unwrap_or_default())
            }
            Invocation::Direct(inv) => {
                let summary = self.direct.run(&inv, deadline).await?;
                Ok(serde_json::to_value(summary).unwrap_or_default())
            }
        }
    }
}

/// Serve invocations until the runtime API goes away. Needs the [`REQUIRED_ENV`]
/// variables (the runtime client panics without them: check [`missing_env`] first).
pub async fn run(handler: Arc<Handler>) -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let handler = handler.clone();
        async move {
            let deadline = Deadline::from_epoch_ms(event.context.deadline, SystemTime::now());
            tracing::debug!(
                request_id = %event.context.request_id,
                left_ms = deadline.remaining().as_millis() as u64,
                "invocation"
            );
            handler.invoke(event.payload, deadline).await
        }
    }))
    .await
}
