//! The invocation deadline and the time budget derived from it.
//!
//! Lambda freezes the process once the invocation's response is sent and kills it at the
//! deadline, so a job must be claimed, run and reported inside one invocation:
//! - **Claim only with room to spare.** A webhook delivery claims a job only when at least
//!   [`Budget::claim_margin`] is left (default 60 s). Set it to the runner's maximum job
//!   timeout plus a little (and register the runner with `maximum_timeout` below the
//!   function's timeout): GitLab caps every job at the runner's maximum timeout, so a job
//!   claimed with that much time left always fits. With less time left the delivery is
//!   acknowledged but nothing is claimed, and the job stays pending for another runner or
//!   the next invocation.
//! - **Wrap up before the deadline.** A running job is stopped [`Budget::reserve`] (default
//!   15 s) before the deadline and reported as failed, so GitLab learns the state instead of
//!   waiting for its own stuck-job timeout. Direct invocations also get the job timeout
//!   capped at the time left minus twice the reserve, so `after_script`/artifacts still run
//!   under the job's own timeout handling.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Deadlines before this (2001-09-09, 10^12 ms after the epoch) cannot be wall-clock
/// deadlines. `cargo lambda watch` sends the invoke timeout itself (600000 ms) in
/// `Lambda-Runtime-Deadline-Ms`; such values are taken as a duration from now.
const EPOCH_MS_FLOOR: u64 = 1_000_000_000_000;

/// Time budget settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// A webhook delivery claims a job only when at least this much time is left.
    pub claim_margin: Duration,
    /// Time kept back at the end of the invocation to report the job and answer.
    pub reserve: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            claim_margin: Duration::from_secs(60),
            reserve: Duration::from_secs(15),
        }
    }
}

/// When the current invocation must have answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// From `Lambda-Runtime-Deadline-Ms` (milliseconds since the epoch), read at `now`.
    pub fn from_epoch_ms(deadline_ms: u64, now: SystemTime) -> Deadline {
        let start = Instant::now();
        let remaining = if deadline_ms < EPOCH_MS_FLOOR {
            Duration::from_millis(deadline_ms)
        } else {
            let now_ms = now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            Duration::from_millis(deadline_ms.saturating_sub(now_ms))
        };
        Deadline {
            at: start + remaining,
        }
    }

    /// A deadline `d` from now.
    pub fn after(d: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + d,
        }
    }

    /// The instant itself.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// Time left.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// The instant `d` before the deadline (now, if that has passed).
    pub fn minus(&self, d: Duration) -> Instant {
        let now = Instant::now();
        self.at.checked_sub(d).map_or(now, |t| t.max(now))
    }
}

impl Budget {
    /// May a job be claimed with this much time left?
    pub fn may_claim(&self, deadline: &Deadline) -> bool {
        deadline.remaining() >= self.claim_margin.max(self.reserve)
    }

    /// When a running job is stopped.
    pub fn stop_at(&self, deadline: &Deadline) -> Instant {
        deadline.minus(self.reserve)
    }

    /// The longest job timeout that still leaves the job's own timeout handling (after
    /// which `after_script` and the artifacts upload run) room before [`Budget::stop_at`].
    pub fn job_timeout_cap(&self, deadline: &Deadline) -> Duration {
        deadline.remaining().saturating_sub(self.reserve * 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn about(d: Duration, secs: u64) -> bool {
        let want = Duration::from_secs(secs);
        d <= want && want - d < Duration::from_secs(1)
    }

    #[test]
    fn epoch_deadline() {
        let now = SystemTime::now();
        let now_ms = now.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let d = Deadline::from_epoch_ms(now_ms + 300_000, now);
        assert!(about(d.remaining(), 300), "{:?}", d.remaining());
        // A deadline in the past leaves nothing.
        let d = Deadline::from_epoch_ms(now_ms - 1_000, now);
        assert_eq!(d.remaining(), Duration::ZERO);
    }

    #[test]
    fn emulator_relative_deadline() {
        // cargo lambda watch sends "600000".
        let d = Deadline::from_epoch_ms(600_000, SystemTime::now());
        assert!(about(d.remaining(), 600), "{:?}", d.remaining());
    }

    #[test]
    fn budget() {
        let b = Budget::default();
        assert!(b.may_claim(&Deadline::after(Duration::from_secs(600))));
        assert!(b.may_claim(&Deadline::after(Duration::from_secs(61))));
        assert!(!b.may_claim(&Deadline::after(Duration::from_secs(59))));
        let d = Deadline::after(Duration::from_secs(100));
        let stop_in = b.stop_at(&d).saturating_duration_since(Instant::now());
        assert!(about(stop_in, 85), "{stop_in:?}");
        assert!(about(b.job_timeout_cap(&d), 70));
        let short = Deadline::after(Duration::from_secs(5));
        assert!(b.stop_at(&short) <= Instant::now());
        assert_eq!(b.job_timeout_cap(&short), Duration::ZERO);
    }
}
