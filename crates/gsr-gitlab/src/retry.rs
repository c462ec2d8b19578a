//! Which failures are worth another try, and how long to wait before it.
//!
//! gitlab-runner's policy, which GitLab's rate limits and maintenance windows are tuned
//! for: retry 408, 429, 500, 502, 503, 504 and anything ≥ 512; wait what the server asks
//! (`RateLimit-ResetTime` as an HTTP date, or `Retry-After` in seconds), else back off
//! exponentially with jitter. Transport errors (connection refused, reset, timeout) are
//! retried the same way: an unreachable GitLab is an outage, not a verdict.

use std::time::{Duration, SystemTime};

use rand::Rng;
use reqwest::header::HeaderMap;

/// Retry settings.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included.
    pub max_attempts: u32,
    /// First back-off.
    pub min_backoff: Duration,
    /// Largest back-off (also caps server-requested waits).
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// A policy for tests: same attempts, tiny waits.
    pub fn fast() -> Self {
        RetryPolicy {
            max_attempts: 5,
            min_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
        }
    }

    /// Exponential back-off for attempt `n` (0-based), factor 2, ±25 % jitter.
    pub fn backoff(&self, n: u32) -> Duration {
        let base = self
            .min_backoff
            .saturating_mul(2u32.saturating_pow(n.min(20)))
            .min(self.max_backoff);
        let jitter = rand::thread_rng().gen_range(0.75..1.25);
        base.mul_f64(jitter).min(self.max_backoff)
    }

    /// How long to wait after a retryable response: the server's word, else back-off.
    pub fn wait_after(&self, headers: &HeaderMap, n: u32) -> Duration {
        server_wait(headers)
            .map(|d| d.min(self.max_backoff))
            .unwrap_or_else(|| self.backoff(n))
    }
}

/// Is this status worth another try?
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504) || status >= 512
}

/// What the server asked us to wait, if anything.
pub fn server_wait(headers: &HeaderMap) -> Option<Duration> {
    if let Some(reset) = headers
        .get("RateLimit-ResetTime")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| httpdate::parse_http_date(s).ok())
    {
        return Some(
            reset
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        );
    }
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        for s in [408, 429, 500, 502, 503, 504, 512, 599] {
            assert!(retryable_status(s), "{s}");
        }
        for s in [200, 201, 204, 400, 401, 403, 404, 409, 413, 416, 501, 505] {
            assert!(!retryable_status(s), "{s}");
        }
    }

    #[test]
    fn server_wait_prefers_reset_time_then_retry_after() {
        let mut h = HeaderMap::new();
        h.insert("Retry-After", "7".parse().unwrap());
        assert_eq!(server_wait(&h), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(30);
        h.insert(
            "RateLimit-ResetTime",
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let w = server_wait(&h).unwrap();
        assert!(
            w > Duration::from_secs(25) && w <= Duration::from_secs(30),
            "{w:?}"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        assert!(p.backoff(0) <= Duration::from_millis(125));
        assert!(p.backoff(3) >= Duration::from_millis(600));
        assert!(p.backoff(30) <= Duration::from_secs(60));
        let mut h = HeaderMap::new();
        h.insert("Retry-After", "3600".parse().unwrap());
        assert_eq!(p.wait_after(&h, 0), Duration::from_secs(60));
    }
}
