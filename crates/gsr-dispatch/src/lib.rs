//! The `gsr serve` dispatcher (issue 4, item 7): for every active runner of the control
//! plane, claim jobs on a webhook and by a reconciling long-poll, record each claim in
//! the store before the job runs, and keep the job history.
//!
//! # Layout
//!
//! - [`Dispatcher`] (`dispatcher.rs`): one `gsr_webhook::Webhook` per active runner (its
//!   decrypted token, its concurrency as `MAX_BUILDS`, its own builds dir and runner
//!   manager id), [`Dispatcher::handle_webhook`] for the per-runner endpoint,
//!   [`Dispatcher::refresh`] for created/changed/paused/deleted runners,
//!   [`Dispatcher::start`] (recover, load, then a ticker that refreshes and restarts idle
//!   reconcile loops), [`Dispatcher::recover`] and a draining [`Dispatcher::shutdown`].
//! - [`DispatchSettings`]: long-poll idle timeout, check interval, ticker period.
//! - [`Recorder`] (`recorder.rs`): the `gsr_webhook::JobObserver` of each receiver:
//!   `record_claim` → `running` → final state, and [`Durations`] (queue, pickup, run).
//!
//! # Why it is built this way
//!
//! - **Reuse the serverless core.** Delivery rules, dedup, capacity permits, the
//!   reconcile loop and job tasks are exactly `gsr webhook`'s; the dispatcher only adds
//!   what a multi-user, multi-replica service needs (per-runner secrets from the store,
//!   recording, recovery). What it needed in `gsr-webhook` is small and optional: a
//!   `JobObserver` awaited after GitLab assigned a job and before it runs (it may veto
//!   it) and after it ended, and `Webhook::stop_claiming_gracefully`.
//! - **Record before run.** The observer calls `Store::record_claim` while the job's
//!   capacity permit is held and before the backend sees the job. `AlreadyClaimed` means
//!   another replica owns it: this one does not touch it. Any other store error fails
//!   the job in GitLab (`runner_system_failure`) rather than run a job nobody could
//!   recover or show. GitLab itself assigns a job to one request only, so the store's
//!   uniqueness is the second line of defence against double runs across replicas.
//! - **Lost, not forgotten.** On start, this replica's unfinished jobs (from a previous
//!   incarnation with the same replica name) are recorded as `lost` with a log line: a
//!   job cannot be resumed after its process died (job token and trace are not stored),
//!   and GitLab times it out. See [`Dispatcher::recover`].
//! - **Never drop an assigned job.** GitLab assigns a job inside the `jobs/request`
//!   answer; a request cut mid-flight leaves the job running in GitLab with nobody on it.
//!   So receivers are retired (runner edited, paused, deleted) and shut down with
//!   `Webhook::stop_claiming_gracefully`: no new requests, the one in flight is answered
//!   and its job runs. A receiver is rebuilt only when a field it depends on changes
//!   (GitLab URL and runner id, concurrency, backend), not on every edit.
//! - **Secrets.** The runner token is decrypted only to build the receiver and lives in
//!   it as a `SecretString`; webhook secrets are only verified (hash, constant time).
//!   An unknown runner is 404 before any secret check, a wrong secret 401 without
//!   details.
//! - **Limits.** The concurrency cap is per replica (each receiver has `concurrency`
//!   permits); a cap across replicas would need a check before `jobs/request`, which the
//!   webhook core does not offer yet (a count before the request would be soft anyway:
//!   the long poll between check and claim is long). A receiver retired after an edit
//!   finishes its jobs outside the new receiver's permits.
//! - **Queue duration** comes from GitLab's `job_info.time_in_queue_seconds` in the
//!   `jobs/request` answer; the simulator does not send it, so it is `None` there.
//!   Pickup (claim → `running`) and run (`running` → end) come from the store's
//!   timestamps ([`Durations::of`]).

mod dispatcher;
mod recorder;

pub use dispatcher::{DispatchError, DispatchSettings, Dispatcher, LOST_REASON};
pub use recorder::{Durations, Recorder};

// Tests: `tests/dispatch.rs` (the dispatcher against gsr-sim + SQLite: webhook → history
// with durations, secrets/404/paused, two replicas × 20 jobs on one database file, the
// store's claim uniqueness, recovery, the long poll without hooks and a draining
// shutdown, a runner edited after start) and `tests/observer.rs` (the gsr-webhook
// extension points: veto skip/fail, graceful stop).
