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
//!   [`Dispatcher::start`] (recover, load, start every reconcile loop, then a ticker that
//!   refreshes the runners and restarts loops that ended), [`Dispatcher::recover`], [`Dispatcher::shutdown`] (drain for
//!   `shutdown_grace`, then abort) and [`Dispatcher::abort_all`] (a second signal).
//! - [`DispatchSettings`]: long-poll idle timeout, check interval, ticker period, retry
//!   policy, shutdown grace, final-update timeout after an abort, recovery timeout.
//! - [`Recorder`] (`recorder.rs`): the `gsr_webhook::JobObserver` of each receiver:
//!   `record_claim_with_token` → `running` → final state, and [`Durations`] (queue,
//!   pickup, run).
//! - `recovery.rs`: reporting a dead incarnation's jobs to GitLab with their kept tokens.
//! - [`runtime`]: [`Runtimes`], where a runner's jobs run by its `backend` field (the
//!   in-process shell as `local`, and the backends the operator enabled), each built and
//!   prepared once per replica and shared by the runners naming it.
//! - [`metric`]: the metric names (`gsr_jobs_*`, `gsr_pickup_latency_seconds`,
//!   `gsr_webhook_deliveries_total`, `gsr_runners_active`, and the two the webhook core
//!   emits), through the `metrics` facade; the binary installs the recorder.
//!
//! # Why it is built this way
//!
//! - **Reuse the serverless core.** Delivery rules, dedup, capacity permits, the
//!   reconcile loop and job tasks are exactly `gsr webhook`'s; the dispatcher only adds
//!   what a multi-user, multi-replica service needs (per-runner secrets from the store,
//!   recording, recovery). What it needed in `gsr-webhook` is small and optional: a
//!   `JobObserver` awaited after GitLab assigned a job and before it runs (it may veto
//!   it) and after it ended, and `Webhook::stop_claiming_gracefully`.
//! - **Always one job request open per runner.** Each receiver's reconcile loop runs
//!   from start to shutdown (`WebhookConfig::keep_polling`): when GitLab ends a long poll
//!   (204 after up to 50 s) it asks again at once, on the same connection. Loops that
//!   stopped at a 30 s window and waited for the 30 s ticker (as they once did) left every
//!   runner without a request for up to a tick, all at the same time since all started
//!   together: the backstop for a lost hook was late by up to 30 s. The window
//!   (`wait_timeout`, 60 s) is longer than GitLab's long poll, so it cuts only a request
//!   that hangs, and the first request of each loop at a random 25–100 % of it, which
//!   spreads 1,000 runners started together over the cycle instead of re-asking in bursts.
//!   Steady state has no cuts: a cut costs a new connection, and an answer cut in flight
//!   may carry a job GitLab has just assigned.
//! - **Shared HTTP clients.** Receivers get their `Coordinator` from one
//!   `gsr_gitlab::CoordinatorPool`: runners of the same GitLab share an HTTP client (its
//!   TLS roots, pool, resolver), at most 50 per client so that HTTP/2's per-connection
//!   stream cap never queues a long poll (see the pool's docs). One client per runner was
//!   most of an idle runner's memory.
//! - **Record before run.** The observer calls `Store::record_claim` while the job's
//!   capacity permit is held and before the backend sees the job. `AlreadyClaimed` means
//!   another replica owns it: this one does not touch it. Any other store error fails
//!   the job in GitLab (`runner_system_failure`) rather than run a job nobody could
//!   recover or show. GitLab itself assigns a job to one request only, so the store's
//!   uniqueness is the second line of defence against double runs across replicas.
//! - **Lost, but GitLab is told.** On start, this replica's unfinished jobs (from a
//!   previous incarnation with the same replica name) cannot be resumed (their executor
//!   and trace died with the process). With the job token the store kept, sealed, for
//!   every unfinished job, recovery appends a trace line and reports each job `failed` /
//!   `runner_system_failure`, so GitLab does not wait for its own timeout; then the job
//!   is recorded `lost` with what GitLab was told (`gsr_store::Recovery`), which drops the
//!   token. Retries are bounded (`recovery_timeout` per job); `start` does the reporting
//!   in the background so a GitLab outage does not delay claiming. See
//!   [`Dispatcher::recover`].
//! - **Bounded shutdown.** Claiming stops first (gracefully: an answer in flight is
//!   taken; an idle runner's long poll may be held by GitLab until the grace is over, and
//!   is then cut), running jobs get `shutdown_grace` (gitlab-runner's 30 s default), then they
//!   are aborted — their workers report them `failed` (`runner_interrupted`) and the
//!   recorder finishes them in the store — and shutdown waits at most
//!   `final_update_timeout` for that. `abort_all` skips the grace (second signal).
//! - **Never drop an assigned job.** GitLab assigns a job inside the `jobs/request`
//!   answer; a request cut mid-flight leaves the job running in GitLab with nobody on it.
//!   So receivers are retired (runner edited, paused, deleted) and shut down with
//!   `Webhook::stop_claiming_gracefully`: no new requests, the one in flight is answered
//!   and its job runs. A receiver is rebuilt only when a field it depends on changes
//!   (GitLab URL and runner id, concurrency, backend), not on every edit.
//! - **Where jobs run is the runner's runtime.** Each receiver gets the
//!   `gsr_worker::place::Placement` of its runner's `backend` ([`Runtimes::placement`]):
//!   the in-process shell (`local`, what every runner created before runtimes existed
//!   says) or a backend (`gsr_worker::place::run_claimed`: start → wait → cleanup, the job's
//!   `gsr exec` talks to GitLab with its job token). A runner naming a runtime this replica
//!   does not offer gets no receiver and its deliveries are answered `ignored`: a job must
//!   not be claimed where it cannot run (it waits in GitLab for a replica that can), and
//!   the operator learns it from one log line per runner. Each receiver declares its
//!   runtime's features (`image`/`services` only on a runtime that honours them).
//! - **A crash and a backend job.** The store's record of a backend job stays unfinished
//!   like any other; on restart the backends' `reap` (run by the binary before the
//!   dispatcher starts) removes the places the dead incarnation left (its claimer
//!   identity — replica, PID, start time — is dead), then recovery reports the job failed
//!   with its kept token (or finds GitLab already has a final state from the job's own
//!   `gsr exec`, which the `local` backend's lifeline lets end by itself). Without a
//!   restart on the same host, a Docker job runs to its end and reports itself.
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
//!   `jobs/request` answer (the simulator sends it too); it is also the
//!   `gsr_pickup_latency_seconds` sample.
//!   Pickup (claim → `running`) and run (`running` → end) come from the store's
//!   timestamps ([`Durations::of`]).

mod dispatcher;
pub mod metric;
mod recorder;
mod recovery;
pub mod runtime;

pub use dispatcher::{DispatchError, DispatchSettings, Dispatcher, LOST_REASON};
pub use recorder::{Durations, Recorder};
pub use recovery::ATTEMPTS as RECOVERY_ATTEMPTS;
pub use runtime::Runtimes;

// Tests: `tests/dispatch.rs` (the dispatcher against gsr-sim + SQLite: webhook → history
// with durations, secrets/404/paused, two replicas × 20 jobs on one database file, the
// store's claim uniqueness, recovery (reported / already over / unreachable / in the
// background of start), the long poll without hooks and a draining shutdown, grace then
// abort, abort_all, a runner edited after start, every metric with a local recorder) and `tests/observer.rs` (the gsr-webhook
// extension points: veto skip/fail, graceful stop).
