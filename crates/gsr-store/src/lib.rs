//! Persistence for the `gsr serve` control plane: users, their runners, the jobs the
//! dispatcher claimed, and the secrets that go with them.
//!
//! # Layout
//!
//! - [`Store`] — the narrow repository trait the web app and dispatcher use
//!   (`Arc<dyn Store>`). It speaks domain types ([`model`]), never SQL.
//! - [`SqliteStore`] (embedded default; a file in the data dir, WAL) and [`PgStore`]
//!   (`DATABASE_URL`; what several replicas share). Both are generated from one body of SQL in
//!   `sql.rs`; the statements use `$N` placeholders and types both drivers accept, so the two
//!   backends cannot drift apart. Schemas live in `migrations/sqlite/` and
//!   `migrations/postgres/` (`sqlx::migrate!`, embedded in the binary, run on open).
//! - [`SecretBox`] — XChaCha20-Poly1305 for secrets at rest; key from `GSR_SECRET_KEY` or a
//!   generated 0600 key file. A key check value in the `meta` table makes a wrong key fail at
//!   open with [`StoreError::WrongKey`] instead of at the first token read.
//! - [`StoreError`] — constraint violations mapped to domain errors.
//! - `testsuite` (feature `testkit`) — the one conformance suite both backends run
//!   (`tests/store.rs`: SQLite always; PostgreSQL from `GSR_TEST_DATABASE_URL`, and a test
//!   *failure* when it is unset unless `GSR_TEST_SKIP_POSTGRES=1`).
//!   `scripts/with-postgres.sh CMD` runs `CMD` against a throw-away local server.
//!
//! # Why it is built this way
//!
//! - **Runtime-checked queries** (`sqlx::query` + binds): compile-time checking would need a
//!   live database of each dialect at build time; the shared test suite covers both instead.
//!   No SQL is ever built from input.
//! - **Ownership in every query.** Runner reads and writes take the owner and filter on it, so
//!   another user's runner is [`StoreError::NotFound`], indistinguishable from a missing one.
//! - **Atomic quota.** [`Store::create_runner`] bumps the owner's row first (a row lock in
//!   PostgreSQL, the write lock in SQLite), then counts and inserts in the same transaction:
//!   parallel creates serialise per user and can never exceed the limit.
//! - **One claim per GitLab job.** `jobs` is unique on `(gitlab_url, gitlab_job_id)` and
//!   [`Store::record_claim`] is an `INSERT … ON CONFLICT DO NOTHING`, so of two replicas that
//!   both got the same job exactly one records it; the other gets
//!   [`StoreError::AlreadyClaimed`]. Repeating one's own claim is idempotent.
//! - **Secrets are not fields.** [`Runner`] has no token; it is decrypted only by
//!   [`Store::runner_token`]. Likewise a claimed job's token (kept only while the job is
//!   unfinished, so that restart recovery can report the job to GitLab) is read only by
//!   [`Store::job_token`], and cleared in the same statement that records a final status. Webhook secrets are stored as SHA-256 (shown once, only
//!   compared, in constant time). Each ciphertext is bound to its row and purpose (AEAD
//!   associated data), so copying it elsewhere makes it undecryptable.
//! - **Timestamps** are Unix milliseconds in both dialects (one row mapping, no time-zone
//!   surprises), exposed as `chrono::DateTime<Utc>`.

pub mod error;
pub mod model;
pub mod secret;
mod sql;
#[cfg(feature = "testkit")]
pub mod testsuite;

use async_trait::async_trait;
use secrecy::SecretString;

pub use error::{Result, StoreError};
pub use model::*;
pub use secret::SecretBox;
pub use sql::{PgStore, SqliteStore};

/// The control plane's repository. Implementations are cheap to share (`Arc<dyn Store>`), and
/// every method is safe to call concurrently from many tasks and many replicas.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // ---- users -------------------------------------------------------------------------

    /// Create the user on first login, or refresh username/name on later ones (keyed by the
    /// GitLab user id).
    async fn upsert_user_from_gitlab(&self, identity: GitlabIdentity) -> Result<User>;

    async fn get_user(&self, id: UserId) -> Result<User>;

    /// Replace the user's OAuth tokens (stored encrypted).
    async fn set_oauth_tokens(&self, user: UserId, tokens: &OAuthTokens) -> Result<()>;

    /// The user's OAuth tokens, decrypted; `None` if never stored.
    async fn oauth_tokens(&self, user: UserId) -> Result<Option<OAuthTokens>>;

    // ---- runners -----------------------------------------------------------------------

    /// Register a runner for `owner`, atomically refusing with
    /// [`StoreError::QuotaExceeded`] when the owner already has `max_runners`. Generates the
    /// webhook secret and returns it in clear this once. A GitLab runner already registered
    /// here gives [`StoreError::Conflict`].
    async fn create_runner(
        &self,
        owner: UserId,
        new: NewRunner,
        max_runners: u32,
    ) -> Result<CreatedRunner>;

    /// The owner's runners, oldest first.
    async fn list_runners(&self, owner: UserId) -> Result<Vec<Runner>>;

    /// One of the owner's runners; anyone else's is [`StoreError::NotFound`].
    async fn get_runner(&self, owner: UserId, id: RunnerId) -> Result<Runner>;

    /// Apply `patch` to one of the owner's runners and return the new state (last writer
    /// wins for concurrent edits of the same runner).
    async fn update_runner(
        &self,
        owner: UserId,
        id: RunnerId,
        patch: RunnerPatch,
    ) -> Result<Runner>;

    /// Delete one of the owner's runners together with its job history.
    async fn delete_runner(&self, owner: UserId, id: RunnerId) -> Result<()>;

    async fn set_paused(&self, owner: UserId, id: RunnerId, paused: bool) -> Result<Runner>;

    /// Any user's runner by id — for the dispatcher and the per-runner webhook endpoint,
    /// which authenticate by other means. Never use it to serve a user's request.
    async fn runner_by_id(&self, id: RunnerId) -> Result<Runner>;

    /// All runners that are not paused, of every user (for the dispatcher).
    async fn active_runners(&self) -> Result<Vec<Runner>>;

    /// The runner's GitLab token, decrypted. For the dispatcher and GitLab API calls only;
    /// never render it.
    async fn runner_token(&self, runner: RunnerId) -> Result<SecretString>;

    /// Whether `presented` is the runner's webhook secret (constant-time). A missing runner is
    /// `Ok(false)`, so the webhook endpoint cannot probe for runner ids.
    async fn verify_webhook_secret(&self, runner: RunnerId, presented: &str) -> Result<bool>;

    /// Replace the webhook secret of one of the owner's runners; the new one is returned once.
    async fn rotate_webhook_secret(&self, owner: UserId, id: RunnerId) -> Result<SecretString>;

    // ---- jobs --------------------------------------------------------------------------

    /// Record that `claim.replica` claimed GitLab job `claim.gitlab_job_id` for a runner —
    /// *before* handing it to a backend. Unique per (GitLab URL, job id): if another
    /// replica or runner recorded it, [`StoreError::AlreadyClaimed`]; if the same replica
    /// repeats the same claim, the existing record is returned.
    ///
    /// Keeps no job token; the dispatcher uses [`Store::record_claim_with_token`].
    async fn record_claim(&self, claim: NewClaim) -> Result<Job> {
        self.record_claim_with_token(claim, None).await
    }

    /// [`Store::record_claim`], also keeping the job's token, encrypted, until the job is
    /// finished (so that recovery can tell GitLab about a job whose replica died). Read it
    /// only with [`Store::job_token`]. A repeated claim keeps the first record's token.
    async fn record_claim_with_token(
        &self,
        claim: NewClaim,
        job_token: Option<SecretString>,
    ) -> Result<Job>;

    /// The job token kept with an unfinished job, decrypted; `None` once the job is
    /// finished (the column is cleared with the final status) or if none was kept. For
    /// telling GitLab about the job only; never render or log it.
    async fn job_token(&self, job: JobId) -> Result<Option<SecretString>>;

    /// Move an unfinished job to `status` (sets `started_at` on `Running`, `finished_at` on
    /// finished states, and drops the kept job token on finished states). Finished jobs
    /// never change: [`StoreError::InvalidTransition`].
    async fn update_job_status(
        &self,
        job: JobId,
        status: JobStatus,
        failure_reason: Option<String>,
    ) -> Result<Job>;

    /// Recovery's final word on an unfinished job of a dead replica: status
    /// [`JobStatus::Lost`] with `reason`, and what GitLab was told (`recovery`); the kept
    /// job token is dropped. A finished job is [`StoreError::InvalidTransition`] (unless
    /// it is already lost: then it is returned unchanged).
    async fn mark_lost(&self, job: JobId, reason: &str, recovery: Recovery) -> Result<Job>;

    /// Newest first, at most `limit`, for one of the owner's runners.
    async fn jobs_for_runner(
        &self,
        owner: UserId,
        runner: RunnerId,
        limit: u32,
    ) -> Result<Vec<Job>>;

    /// How many of the runner's jobs are unfinished (`claimed`/`running`) across all
    /// replicas — the dispatcher claims only while this is below the runner's concurrency.
    async fn count_unfinished_jobs(&self, runner: RunnerId) -> Result<u32>;

    /// This replica's unfinished (`claimed`/`running`) jobs, oldest first (claim times have
    /// millisecond resolution; ties are in id order) — what it must
    /// resume or mark lost after a restart.
    async fn recover_jobs(&self, replica: &str) -> Result<Vec<Job>>;

    /// Test hook: the raw stored bytes of a runner's secret columns (token ciphertext and
    /// webhook secret hash), for encryption-at-rest checks.
    #[cfg(feature = "testkit")]
    async fn raw_runner_secret_columns(&self, runner: RunnerId) -> Result<Vec<Vec<u8>>>;

    /// Test hook: the raw stored job token column of a job (`None` when NULL).
    #[cfg(feature = "testkit")]
    async fn raw_job_token_column(&self, job: JobId) -> Result<Option<Vec<u8>>>;

    /// Test hook: the raw stored OAuth token columns of a user.
    #[cfg(feature = "testkit")]
    async fn raw_oauth_columns(&self, user: UserId) -> Result<Vec<Vec<u8>>>;
}
