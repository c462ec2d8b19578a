//! Getting the trace and the final state to GitLab, and hearing GitLab's cancel signals.
//!
//! While the job runs, a pump task PATCHes whatever is new in the trace every update
//! interval (≤ 1 MiB per PATCH, from the last offset GitLab acknowledged), resyncs on 416,
//! and sends a keep-alive `PUT state=running` when nothing went out for a while so GitLab
//! does not fail the job as stuck. Every reply may carry `Job-Status`; the pump turns it
//! into the worker's cancel (`canceling`) or abort (`canceled`, 403) tokens.
//!
//! At the end, [`TraceUploader::finish`] sends the rest of the trace and the final state,
//! repeating on 202 ("accepted, not finished") and retrying outages with back-off, so the
//! final state is kept until GitLab has accepted it (or the retry budget is spent).

use std::sync::Arc;
use std::time::Duration;

use gsr_exec::CancellationToken;
use gsr_gitlab::{JobClient, JobSignal, JobUpdate, PatchResult, UpdateResult};
use gsr_trace::Trace;
use tokio::time::Instant;

/// gitlab-runner's `DefaultTracePatchLimit`.
pub const PATCH_LIMIT: usize = 1024 * 1024;

/// Consecutive 416 resyncs tolerated in one flush round.
const MAX_RESYNCS: u32 = 16;

/// What one PATCH achieved.
enum Sent {
    /// Bytes accepted (or nothing to send).
    Progress,
    /// 416: the offset moved to GitLab's.
    Resynced,
    /// GitLab no longer takes trace for this job.
    Closed,
    /// Outage or unexpected reply; try later.
    Failed,
}

/// Timing knobs (tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct UploadTiming {
    /// Default trace update interval (GitLab may change it).
    pub update_interval: Duration,
    /// Keep-alive when nothing was sent for this long.
    pub force_send_interval: Duration,
    /// How often the whole final-update cycle is retried after failures.
    pub final_update_attempts: u32,
    /// First back-off between final-update attempts (doubles, capped at 60 s).
    pub final_update_backoff: Duration,
}

impl UploadTiming {
    /// Back-off before retry `n` (1-based) of a state update: doubles, capped at 60 s.
    pub fn backoff(&self, n: u32) -> Duration {
        self.final_update_backoff
            .saturating_mul(2u32.saturating_pow(n.clamp(1, 16) - 1))
            .min(Duration::from_secs(60))
    }
}

impl Default for UploadTiming {
    fn default() -> Self {
        UploadTiming {
            update_interval: Duration::from_secs(3),
            force_send_interval: Duration::from_secs(30),
            final_update_attempts: 10,
            final_update_backoff: Duration::from_secs(1),
        }
    }
}

/// Signals from GitLab to the running job.
#[derive(Clone)]
pub struct JobSignals {
    /// `canceling`: stop the script, then run `after_script`.
    pub cancel: CancellationToken,
    /// `canceled`/403: stop everything now.
    pub abort: CancellationToken,
}

impl JobSignals {
    fn apply(&self, s: JobSignal) {
        match s {
            JobSignal::Continue => {}
            JobSignal::Cancel => {
                if !self.cancel.is_cancelled() {
                    tracing::info!("GitLab asked to cancel the job");
                }
                self.cancel.cancel();
            }
            JobSignal::Abort => {
                if !self.abort.is_cancelled() {
                    tracing::info!("GitLab says the job is gone; aborting");
                }
                self.abort.cancel();
            }
        }
    }
}

/// Sends one job's trace and state.
pub struct TraceUploader {
    client: JobClient,
    trace: Arc<Trace>,
    signals: JobSignals,
    timing: UploadTiming,
    debug_trace: bool,
    /// Next byte GitLab expects.
    offset: u64,
    interval: Duration,
    last_sent: Instant,
    /// GitLab no longer accepts trace for this job (404/403).
    trace_closed: bool,
}

/// How the final update went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// GitLab accepted the final state.
    Accepted,
    /// GitLab says the job is gone (canceled, erased, token revoked).
    Gone,
    /// Every attempt failed; the last reason.
    Failed(String),
}

impl TraceUploader {
    /// A new uploader for `trace`.
    pub fn new(
        client: JobClient,
        trace: Arc<Trace>,
        signals: JobSignals,
        timing: UploadTiming,
        debug_trace: bool,
    ) -> Self {
        TraceUploader {
            client,
            trace,
            signals,
            timing,
            debug_trace,
            offset: 0,
            interval: timing.update_interval,
            last_sent: Instant::now(),
            trace_closed: false,
        }
    }

    /// Bytes GitLab has acknowledged.
    pub fn acknowledged(&self) -> u64 {
        self.offset
    }

    /// Run the pump until `stop` fires; returns self for [`TraceUploader::finish`].
    ///
    /// The first increment goes out as soon as there is one (the job's header lines,
    /// written right after the pump starts), so GitLab shows the job alive within
    /// milliseconds of the claim instead of after a whole update interval; from then on,
    /// one PATCH per interval.
    pub async fn pump(mut self, stop: CancellationToken) -> Self {
        /// How often an empty trace is looked at again before the first increment.
        const FIRST_POLL: Duration = Duration::from_millis(5);
        let started = Instant::now();
        let mut first_tick = true;
        let mut before_first_send = true;
        loop {
            let wait = if first_tick {
                Duration::ZERO
            } else if before_first_send && started.elapsed() < self.interval {
                FIRST_POLL
            } else {
                self.interval
            };
            first_tick = false;
            tokio::select! {
                biased;
                _ = stop.cancelled() => return self,
                _ = tokio::time::sleep(wait) => {}
            }
            if before_first_send && !self.trace.is_empty() {
                before_first_send = false;
            }
            self.send_increment().await;
            if self.last_sent.elapsed() >= self.timing.force_send_interval {
                self.keep_alive().await;
            }
        }
    }

    /// Send one PATCH of what is new (at most [`PATCH_LIMIT`]).
    async fn send_increment(&mut self) -> Sent {
        if self.trace_closed {
            return Sent::Closed;
        }
        let len = self.trace.len();
        if self.offset >= len {
            return Sent::Progress;
        }
        let chunk = match self.trace.read_at(self.offset, PATCH_LIMIT) {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => return Sent::Progress,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the trace buffer");
                return Sent::Failed;
            }
        };
        let reply = self
            .client
            .patch_trace(self.offset, chunk, self.debug_trace)
            .await;
        self.signals.apply(reply.signal);
        if let Some(i) = reply.interval {
            self.interval = i;
        }
        match reply.result {
            PatchResult::Accepted { next_offset } => {
                self.offset = next_offset;
                self.last_sent = Instant::now();
                Sent::Progress
            }
            PatchResult::RangeMismatch { offset } => {
                tracing::warn!(
                    ours = self.offset,
                    gitlab = offset,
                    "trace range mismatch; resending from GitLab's offset"
                );
                self.offset = offset.min(len);
                Sent::Resynced
            }
            PatchResult::NotFound | PatchResult::Forbidden => {
                self.trace_closed = true;
                Sent::Closed
            }
            PatchResult::Failed(e) => {
                tracing::warn!(error = %e, "trace update failed; will retry");
                Sent::Failed
            }
        }
    }

    async fn keep_alive(&mut self) {
        let reply = self
            .client
            .update(&JobUpdate::running(Some((
                self.trace.checksum(),
                self.trace.len(),
            ))))
            .await;
        self.signals.apply(reply.signal);
        if reply.result == UpdateResult::Accepted {
            self.last_sent = Instant::now();
        }
    }

    /// Send all remaining trace, then `update`, until GitLab accepts it.
    pub async fn finish(mut self, mut update: JobUpdate) -> Delivery {
        self.trace.flush();
        self.interval = self.timing.update_interval;
        let mut failures = 0u32;
        loop {
            // 1. Everything not yet acknowledged, in ≤ 1 MiB patches. A 416 moves the
            // offset and loops again; a failure ends this round.
            let mut flushed = true;
            let mut resyncs = 0;
            while self.offset < self.trace.len() {
                match self.send_increment().await {
                    Sent::Progress => {}
                    // GitLab moved our offset: resend from there, but never ping-pong forever.
                    Sent::Resynced if resyncs < MAX_RESYNCS => resyncs += 1,
                    Sent::Closed => break,
                    Sent::Resynced | Sent::Failed => {
                        flushed = false;
                        break;
                    }
                }
            }
            let last_error = if flushed {
                // 2. The final state, with the identity of the whole trace.
                update.output = Some((self.trace.checksum(), self.trace.len()));
                let reply = self.client.update(&update).await;
                match reply.result {
                    UpdateResult::Accepted => return Delivery::Accepted,
                    UpdateResult::Gone => return Delivery::Gone,
                    UpdateResult::NotFinished => {
                        let wait = reply.interval.unwrap_or(self.interval);
                        tracing::info!(?wait, "final update accepted but not finished; repeating");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    UpdateResult::TraceInvalid => {
                        tracing::warn!(
                            "GitLab rejected the trace checksum; resending the whole trace"
                        );
                        self.offset = 0;
                        self.trace_closed = false;
                        continue;
                    }
                    UpdateResult::Rejected(e) => return Delivery::Failed(e),
                    UpdateResult::Failed(e) => e,
                }
            } else {
                "could not send the rest of the trace".to_string()
            };
            failures += 1;
            if failures >= self.timing.final_update_attempts {
                return Delivery::Failed(last_error);
            }
            let wait = self.timing.backoff(failures);
            tracing::warn!(error = %last_error, ?wait, attempt = failures, "final update failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }
}
