//! `gsr webhook`: a GitLab Job Hook receiver that claims the pending job and runs it
//! (DESIGN §2–3), for a serverless container that wakes on a webhook and goes idle after.
//!
//! Why it looks like this:
//! - **A hook is a nudge, not a job.** A Job Hook carries no job token and not even the
//!   job's tags, so the receiver never runs "the job in the hook": it claims with
//!   `jobs/request` and the runner token, and runs exactly what GitLab assigned. The runner
//!   token stays in this process; the job runs through `gsr-worker` with its job token.
//! - **Answer at once.** GitLab gives a hook 10 s and disables hooks that fail or time out
//!   four times in a row, so a pending event is answered `202` before the claim, and the
//!   claim and the job go on in the background. `sync` mode keeps the request open until
//!   the job it caused has ended, for platforms that only give CPU to an open request.
//! - **Duplicates start nothing.** GitLab re-sends (same `Idempotency-Key`), several hooks
//!   may fire for one event (same `X-Gitlab-Event-UUID`), and a job has one `pending`
//!   event: all three are remembered (bounded) and a repeat is answered `200 duplicate`.
//! - **Lost hooks are caught.** After a delivery one reconcile loop keeps claiming (long
//!   polling with `last_update`, like `run-single`) while jobs come and capacity allows,
//!   and stops after `wait_timeout` without a job. A job whose hook never arrived is taken
//!   while it runs. Deliveries while it runs only nudge it; there is never a second loop.
//!   A long-lived service sets [`WebhookConfig::keep_polling`]: the loop then never stops
//!   for lack of jobs (jittered windows, so many receivers do not re-ask in lockstep).
//! - **Capacity first.** A claim needs a permit (`max_builds` in flight); the permit is
//!   held by the job's task, so a job is claimed only when it can start at once.
//! - **Where a job runs is the caller's.** [`Runner::placement`] is a
//!   `gsr_worker::place::Placement`: `gsr webhook` and `gsr lambda` run jobs in process
//!   ([`Runner::in_process`], the shell executor), `gsr serve` on the runner's runtime (a
//!   backend). The job task calls `gsr_worker::place::run_claimed` either way, so the
//!   observer sees claim → outcome the same for both.
//! - **HTTP-agnostic core.** [`Webhook::handle`] takes a [`Delivery`] (headers and body
//!   already read) and returns a [`HookResponse`]; [`http`] is the axum adapter. A Lambda
//!   adapter maps its event to a `Delivery` and reuses everything else.
//!
//! Layout:
//! - [`delivery`]: [`Delivery`], [`HookResponse`], [`JobSummary`]: the core's input and output.
//! - [`seen`]: the bounded memory of idempotency keys, event UUIDs and build ids.
//! - [`service`]: [`Webhook`]: the delivery rules, the reconcile loop, job tasks, shutdown.
//! - [`observer`]: [`JobObserver`], an optional hook to record, veto and follow claimed
//!   jobs (used by the `gsr serve` dispatcher; `gsr webhook` installs none).
//! - [`http`]: [`app`] (axum `Router`: the hook path, `/healthz`, 404/405/413) and [`serve`].
//! - [`metric`]: the metric names emitted here (claim latency, backend errors) through the
//!   `metrics` facade; the embedding binary decides whether a recorder collects them.
//!
//! Logs never contain the runner token, job tokens or the hook secret: tokens are
//! `SecretString`s, and [`Delivery`]'s `Debug` leaves the `X-Gitlab-Token` out.

pub mod delivery;
pub mod http;
pub mod metric;
pub mod observer;
pub mod seen;
pub mod service;

pub use delivery::{Delivery, HookResponse, JobSummary};
pub use http::{app, serve};
pub use observer::{ClaimDecision, ClaimInfo, JobObserver, ObserverFuture};
pub use service::{Runner, Status, Webhook, WebhookConfig, WebhookError};
