//! Webhook deliveries through a Function URL / API Gateway: [`HttpRequest`] →
//! [`Delivery`] → the `gsr-webhook` core → [`HttpResponse`].
//!
//! Routing and status codes are the axum adapter's (`gsr webhook`): `POST <path>` is the
//! hook, `GET /healthz` answers `ok`, other paths 404, other methods 405, bodies over the
//! limit 413, and the core's rules for everything else (401 wrong secret, 400 bad body,
//! 200 ignored/duplicate). The path is the event's `rawPath` (2.0) or `path` (1.0): behind
//! an API Gateway HTTP API with a named stage it includes the stage (`/prod/hook`), so
//! set `WEBHOOK_PATH` accordingly; a Function URL passes the path as GitLab sent it.
//!
//! Lambda freezes the process as soon as the invocation has answered, so the core runs in
//! sync mode and an invocation returns only when the receiver is **idle**: the job the
//! delivery caused has ended (answer `200` with its [`JobSummary`]), and the reconcile loop
//! (which catches jobs whose hook was lost, for `WAIT_TIMEOUT`) has stopped, including any
//! job it claimed. Nothing is ever left claimed in a frozen process. Time limits (see
//! [`crate::deadline`]):
//! - fewer than `claim_margin` left when the delivery arrives: nothing is claimed, `503`;
//! - `claim_margin` before the deadline the reconcile loop is stopped;
//! - `reserve` before the deadline running jobs are aborted (reported to GitLab as
//!   `runner_interrupted`) and the invocation answers.
//!
//! Stopping or aborting is final for a `Webhook`, so one that had to be stopped is
//! replaced by a fresh one for the next invocation (its memory of recent deliveries goes
//! with it; a repeated delivery then only causes a `jobs/request` that finds nothing).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gsr_gitlab::webhook::token_matches;
use gsr_job::{ExposeSecret, SecretString};
use gsr_webhook::{Delivery, HookResponse, Webhook};
use tokio::time::Instant;

use crate::deadline::{Budget, Deadline};
use crate::event::{HttpRequest, HttpResponse};

/// The health check path (as `gsr webhook`).
pub const HEALTHZ: &str = "/healthz";

/// How often the receiver's status is checked while waiting for it to become idle.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// Builds a receiver: at start and whenever the previous one had to be stopped.
pub type WebhookFactory = Box<dyn Fn() -> Result<Arc<Webhook>, String> + Send + Sync>;

/// The webhook side of the function.
pub struct HttpFront {
    path: String,
    body_limit: usize,
    budget: Budget,
    receiver: Option<Receiver>,
}

struct Receiver {
    factory: WebhookFactory,
    /// Compared before claiming is refused for lack of time (the core does it otherwise).
    secret: Option<SecretString>,
    current: Mutex<Option<Arc<Webhook>>>,
}

impl HttpFront {
    /// `path`: the hook path (`WEBHOOK_PATH`); `receiver`: `None` when no runner token is
    /// configured (the function then only takes direct invocations and answers hook
    /// deliveries `503`).
    pub fn new(
        path: &str,
        body_limit: usize,
        budget: Budget,
        receiver: Option<(WebhookFactory, Option<SecretString>)>,
    ) -> HttpFront {
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        HttpFront {
            path,
            body_limit,
            budget,
            receiver: receiver.map(|(factory, secret)| Receiver {
                factory,
                secret,
                current: Mutex::new(None),
            }),
        }
    }

    /// Abort the jobs the current receiver runs (the runtime is being shut down).
    pub fn abort_jobs(&self) {
        if let Some(r) = &self.receiver {
            let cur = r.current.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(w) = cur {
                w.abort_jobs();
            }
        }
    }

    /// Answer one HTTP event.
    pub async fn handle(&self, req: HttpRequest, deadline: Deadline) -> HttpResponse {
        let is_hook = req.path == self.path;
        let is_health = req.path == HEALTHZ;
        match req.method.as_str() {
            "POST" if is_hook => self.receive(req, deadline).await,
            "GET" | "HEAD" if is_health => HttpResponse::text(200, "ok"),
            _ if is_hook || is_health => {
                let allow = match (is_hook, is_health) {
                    (true, true) => "POST, GET, HEAD",
                    (true, false) => "POST",
                    _ => "GET, HEAD",
                };
                let mut r = HttpResponse::text(405, "method not allowed");
                r.headers.insert("allow".into(), allow.into());
                r
            }
            _ => HttpResponse::text(404, "not found"),
        }
    }

    async fn receive(&self, req: HttpRequest, deadline: Deadline) -> HttpResponse {
        if req.body.len() > self.body_limit {
            return HttpResponse::text(413, "payload too large");
        }
        let Some(receiver) = &self.receiver else {
            return HttpResponse::text(
                503,
                "this function takes no webhooks: RUNNER_TOKEN is not set",
            );
        };
        let delivery = to_delivery(req);
        if !self.budget.may_claim(&deadline) {
            // Same answer as the core for a wrong secret, so the secret check cannot be
            // skipped by timing a request near the deadline.
            let secret = receiver.secret.as_ref().map(|s| s.expose_secret());
            if !token_matches(secret, delivery.token.as_deref()) {
                return HttpResponse::text(401, "unauthorized");
            }
            let left = deadline.remaining().as_secs();
            tracing::error!(
                left_s = left,
                claim_margin_s = self.budget.claim_margin.as_secs(),
                "not claiming: too little time left in this invocation (raise the function timeout or lower LAMBDA_CLAIM_MARGIN)"
            );
            return HttpResponse::text(
                503,
                &format!("not claiming: only {left} s left in this invocation"),
            );
        }
        let webhook = match receiver.get() {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook receiver");
                return HttpResponse::text(500, "the webhook receiver cannot start");
            }
        };
        let answer = webhook.handle(delivery);
        let response = self.answer(&webhook, answer, &deadline).await;
        let spent = self.settle(&webhook, &deadline).await;
        if spent {
            receiver.retire(&webhook);
        }
        response
    }

    /// Turn the core's answer into the HTTP response, waiting for the job in sync mode.
    async fn answer(
        &self,
        webhook: &Arc<Webhook>,
        answer: HookResponse,
        deadline: &Deadline,
    ) -> HttpResponse {
        let Some(mut done) = answer.done else {
            return HttpResponse::text(answer.status, &answer.message);
        };
        let stop_at = self.budget.stop_at(deadline);
        let result = tokio::select! {
            r = &mut done => Some(r),
            _ = tokio::time::sleep_until(stop_at) => None,
        };
        let result = match result {
            Some(r) => r,
            None => {
                tracing::warn!("the invocation deadline is near: aborting the running job");
                webhook.abort_jobs();
                // An aborted job reports `runner_interrupted` to GitLab; give it what is
                // left of the invocation (less a moment to answer).
                let last = deadline.minus(Duration::from_millis(500));
                match tokio::time::timeout_at(last, done).await {
                    Ok(r) => r,
                    Err(_) => {
                        return HttpResponse::text(
                            504,
                            "the job was still running at the invocation deadline",
                        )
                    }
                }
            }
        };
        match result {
            Ok(summary) => HttpResponse::json(
                answer.status,
                &serde_json::to_value(&summary).unwrap_or_default(),
            ),
            Err(_) => HttpResponse::text(503, "the job did not end normally (shutting down?)"),
        }
    }

    /// Wait until the receiver is idle (no reconcile loop, no job), stopping claims and
    /// aborting jobs as the deadline approaches. Returns true when the receiver had to be
    /// stopped (it cannot claim again).
    async fn settle(&self, webhook: &Arc<Webhook>, deadline: &Deadline) -> bool {
        let claim_cutoff = deadline.minus(self.budget.claim_margin);
        let stop_at = self.budget.stop_at(deadline);
        let give_up = deadline.minus(Duration::from_millis(500));
        loop {
            let st = webhook.status();
            if !st.reconciling && st.jobs_running == 0 {
                return st.stopping;
            }
            let now = Instant::now();
            if now >= give_up {
                tracing::error!(
                    jobs = st.jobs_running,
                    "answering with work still running: the invocation deadline is here"
                );
                return true;
            }
            if st.reconciling && !st.stopping && now >= claim_cutoff {
                tracing::info!("too little time left for another job: stopping the reconcile loop");
                webhook.stop_claiming();
            }
            if st.jobs_running > 0 && now >= stop_at {
                tracing::warn!("the invocation deadline is near: aborting the running jobs");
                webhook.abort_jobs();
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }
}

impl Receiver {
    fn get(&self) -> Result<Arc<Webhook>, String> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = cur.as_ref() {
            return Ok(w.clone());
        }
        let w = (self.factory)()?;
        *cur = Some(w.clone());
        Ok(w)
    }

    fn retire(&self, webhook: &Arc<Webhook>) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, webhook)) {
            *cur = None;
        }
    }
}

/// The core's input from an HTTP event (the same headers the axum adapter reads).
pub fn to_delivery(req: HttpRequest) -> Delivery {
    let text = |name: &str| {
        req.header(name)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    Delivery {
        event: text("x-gitlab-event"),
        token: req.header("x-gitlab-token").map(|v| v.as_bytes().to_vec()),
        event_uuid: text("x-gitlab-event-uuid"),
        webhook_uuid: text("x-gitlab-webhook-uuid"),
        idempotency_key: text("idempotency-key"),
        body: req.body.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn req(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> HttpRequest {
        HttpRequest {
            method: method.into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn delivery_from_headers() {
        let d = to_delivery(req(
            "POST",
            "/",
            &[
                ("X-Gitlab-Event", "Job Hook"),
                ("X-Gitlab-Token", "s3cret"),
                ("X-Gitlab-Event-UUID", "e1"),
                ("X-Gitlab-Webhook-UUID", " w1 "),
                ("Idempotency-Key", "k1"),
            ],
            "{}",
        ));
        assert_eq!(d.event.as_deref(), Some("Job Hook"));
        assert_eq!(d.token.as_deref(), Some(&b"s3cret"[..]));
        assert_eq!(d.event_uuid.as_deref(), Some("e1"));
        assert_eq!(d.webhook_uuid.as_deref(), Some("w1"));
        assert_eq!(d.idempotency_key.as_deref(), Some("k1"));
        assert_eq!(&d.body[..], b"{}");
    }

    #[test]
    fn missing_and_empty_headers_are_none() {
        let d = to_delivery(req("POST", "/", &[("x-gitlab-event", "  ")], ""));
        assert_eq!(d.event, None);
        assert_eq!(d.token, None);
        assert_eq!(d.event_uuid, None);
        assert_eq!(d.idempotency_key, None);
        assert!(d.body.is_empty());
    }

    fn front(receiver: bool) -> HttpFront {
        let r: Option<(WebhookFactory, Option<SecretString>)> = receiver.then(|| {
            let f: WebhookFactory = Box::new(|| Err("no receiver in this test".into()));
            (f, Some(SecretString::from("s3cret".to_string())))
        });
        HttpFront::new("hook", 10, Budget::default(), r)
    }

    #[tokio::test]
    async fn routing() {
        let f = front(false);
        let d = Deadline::after(Duration::from_secs(600));
        assert_eq!(
            f.handle(req("GET", "/healthz", &[], ""), d)
                .await
                .status_code,
            200
        );
        assert_eq!(
            f.handle(req("GET", "/nope", &[], ""), d).await.status_code,
            404
        );
        let r = f.handle(req("GET", "/hook", &[], ""), d).await;
        assert_eq!((r.status_code, r.headers["allow"].as_str()), (405, "POST"));
        let r = f.handle(req("POST", "/healthz", &[], ""), d).await;
        assert_eq!(
            (r.status_code, r.headers["allow"].as_str()),
            (405, "GET, HEAD")
        );
        assert_eq!(
            f.handle(req("POST", "/hook", &[], "01234567890"), d)
                .await
                .status_code,
            413
        );
        // No runner token: no webhooks.
        assert_eq!(
            f.handle(req("POST", "/hook", &[], "{}"), d)
                .await
                .status_code,
            503
        );
    }

    #[tokio::test]
    async fn no_claim_without_time() {
        let f = front(true);
        let short = Deadline::after(Duration::from_secs(5));
        let wrong = f
            .handle(
                req("POST", "/hook", &[("x-gitlab-token", "nope")], "{}"),
                short,
            )
            .await;
        assert_eq!(wrong.status_code, 401);
        let right = f
            .handle(
                req("POST", "/hook", &[("x-gitlab-token", "s3cret")], "{}"),
                short,
            )
            .await;
        assert_eq!(right.status_code, 503);
        assert!(right.body.contains("not claiming"), "{}", right.body);
        // With time, the (failing) factory is asked for a receiver.
        let long = Deadline::after(Duration::from_secs(600));
        let r = f
            .handle(
                req("POST", "/hook", &[("x-gitlab-token", "s3cret")], "{}"),
                long,
            )
            .await;
        assert_eq!(r.status_code, 500);
    }
}
