//! Domain types of the control plane. These are the store's own structs — not HTTP DTOs and
//! not GitLab wire types; the web app maps them to its views.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random id.
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(
    /// Our id of a user (not GitLab's).
    UserId
);
id_type!(
    /// Our id of a runner (random, so URLs do not enumerate runners).
    RunnerId
);
id_type!(
    /// Our id of a recorded job.
    JobId
);

/// A person who logged in with GitLab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub gitlab_user_id: i64,
    pub username: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// What GitLab's `/api/v4/user` told us at login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitlabIdentity {
    pub gitlab_user_id: i64,
    pub username: String,
    pub name: String,
}

/// A user's OAuth tokens. `Debug` is redacted (via `SecretString`).
#[derive(Debug, Clone)]
pub struct OAuthTokens {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// GitLab's runner access level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLevel {
    NotProtected,
    RefProtected,
}

impl AccessLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLevel::NotProtected => "not_protected",
            AccessLevel::RefProtected => "ref_protected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "not_protected" => Some(AccessLevel::NotProtected),
            "ref_protected" => Some(AccessLevel::RefProtected),
            _ => None,
        }
    }
}

/// A runner registered through the control plane. Its token and webhook secret are *not*
/// fields: the token is read with [`Store::runner_token`](crate::Store::runner_token) and the
/// webhook secret is only ever verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Runner {
    pub id: RunnerId,
    pub owner: UserId,
    pub gitlab_url: String,
    pub gitlab_runner_id: i64,
    pub description: String,
    pub tags: Vec<String>,
    pub run_untagged: bool,
    pub locked: bool,
    pub access_level: AccessLevel,
    /// Seconds; `None` = no runner-side limit.
    pub maximum_timeout: Option<i64>,
    pub paused: bool,
    /// Backend ("runtime") name, e.g. `local`.
    pub backend: String,
    pub backend_settings: serde_json::Value,
    /// Jobs this runner may run at once (≥ 1).
    pub concurrency: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Input of [`Store::create_runner`](crate::Store::create_runner).
#[derive(Debug, Clone)]
pub struct NewRunner {
    pub gitlab_url: String,
    pub gitlab_runner_id: i64,
    /// The `glrt-…` token; encrypted before it reaches the database.
    pub token: SecretString,
    pub description: String,
    pub tags: Vec<String>,
    pub run_untagged: bool,
    pub locked: bool,
    pub access_level: AccessLevel,
    pub maximum_timeout: Option<i64>,
    pub paused: bool,
    pub backend: String,
    pub backend_settings: serde_json::Value,
    pub concurrency: u32,
}

/// What [`Store::create_runner`](crate::Store::create_runner) returns: the runner and its
/// webhook secret, which exists in clear only here (show it once).
#[derive(Debug, Clone)]
pub struct CreatedRunner {
    pub runner: Runner,
    pub webhook_secret: SecretString,
}

/// Editable runner fields; `None` leaves a field unchanged.
#[derive(Debug, Clone, Default)]
pub struct RunnerPatch {
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    pub run_untagged: Option<bool>,
    pub locked: Option<bool>,
    pub access_level: Option<AccessLevel>,
    /// `Some(None)` clears the limit.
    pub maximum_timeout: Option<Option<i64>>,
    pub paused: Option<bool>,
    pub backend: Option<String>,
    pub backend_settings: Option<serde_json::Value>,
    pub concurrency: Option<u32>,
}

/// Lifecycle of a recorded job. `Claimed` and `Running` are *unfinished*.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Recorded right after GitLab handed it to us, before the backend started it.
    Claimed,
    Running,
    Success,
    Failed,
    Canceled,
    /// We lost track of it (e.g. the replica died and recovery could not resume it).
    Lost,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Claimed => "claimed",
            JobStatus::Running => "running",
            JobStatus::Success => "success",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
            JobStatus::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "claimed" => JobStatus::Claimed,
            "running" => JobStatus::Running,
            "success" => JobStatus::Success,
            "failed" => JobStatus::Failed,
            "canceled" => JobStatus::Canceled,
            "lost" => JobStatus::Lost,
            _ => return None,
        })
    }

    /// `Success`, `Failed`, `Canceled` and `Lost` never change again.
    pub fn is_finished(self) -> bool {
        !matches!(self, JobStatus::Claimed | JobStatus::Running)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job this control plane claimed from GitLab.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub runner_id: RunnerId,
    pub gitlab_job_id: i64,
    pub status: JobStatus,
    /// The `gsr serve` replica that claimed (and runs) it.
    pub replica: String,
    pub claimed_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// How long the job waited in GitLab's queue (GitLab's `queued_duration`).
    pub queued_duration: Option<Duration>,
    pub failure_reason: Option<String>,
    /// For a job recovery marked [`JobStatus::Lost`]: what GitLab was told.
    pub recovery: Option<Recovery>,
}

/// What restart recovery achieved in GitLab for a job it marked [`JobStatus::Lost`]
/// (see [`Store::mark_lost`](crate::Store::mark_lost)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Recovery {
    /// GitLab accepted the job's final `failed` state.
    Reported,
    /// GitLab no longer accepted the job token (403/404): the job was already over there.
    AlreadyOver,
    /// GitLab could not be reached (or kept refusing) within the retry budget; it times
    /// the job out itself.
    Unreachable,
    /// No job token was stored (a claim from before the token was kept), so GitLab
    /// could not be told.
    NoToken,
}

impl Recovery {
    pub fn as_str(self) -> &'static str {
        match self {
            Recovery::Reported => "reported",
            Recovery::AlreadyOver => "already_over",
            Recovery::Unreachable => "unreachable",
            Recovery::NoToken => "no_token",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "reported" => Recovery::Reported,
            "already_over" => Recovery::AlreadyOver,
            "unreachable" => Recovery::Unreachable,
            "no_token" => Recovery::NoToken,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Input of [`Store::record_claim`](crate::Store::record_claim).
#[derive(Debug, Clone)]
pub struct NewClaim {
    pub runner_id: RunnerId,
    pub gitlab_job_id: i64,
    pub replica: String,
    pub queued_duration: Option<Duration>,
}
