//! [`SimConfig`]: everything a simulator instance needs to start.
//!
//! Kept in one plain struct with a [`Default`] so that tests write
//! `SimConfig { long_poll: Duration::from_secs(1), ..Default::default() }` and the binary
//! maps its flags onto the same fields.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Configuration of one simulator instance.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to bind; `127.0.0.1:0` picks a free port (tests).
    pub listen: SocketAddr,
    /// Bare repositories (`repos/`) and artifact files (`artifacts/`) live here.
    pub data_dir: PathBuf,
    /// Token for the admin API (`PRIVATE-TOKEN`) and for `root` git pushes.
    pub admin_token: String,
    /// Legacy registration token accepted by `POST /api/v4/runners`.
    pub registration_token: String,
    /// How long `POST /jobs/request` may block (Workhorse long polling); zero disables it.
    pub long_poll: Duration,
    /// Seconds sent as `X-GitLab-Trace-Update-Interval` on trace patches.
    pub trace_update_interval: u32,
    /// Largest accepted artifact file in bytes; larger uploads get 413.
    pub max_artifact_size: u64,
    /// Time limit of one webhook delivery (GitLab.com: 10 s); slower is a failure.
    pub webhook_timeout: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: std::env::temp_dir().join(format!("gsr-sim-{}", uuid::Uuid::new_v4())),
            admin_token: "sim-admin-token".to_string(),
            registration_token: "GR1348941sim-registration".to_string(),
            long_poll: Duration::from_secs(50),
            trace_update_interval: 3,
            max_artifact_size: 100 * 1024 * 1024,
            webhook_timeout: Duration::from_secs(10),
        }
    }
}
