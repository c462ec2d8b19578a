//! The two SQL implementations of [`Store`]. One macro body holds every statement; it is
//! expanded once for SQLite and once for PostgreSQL. Statements use `$N` placeholders (which
//! SQLite accepts too) and only column types both drivers map the same way (UUID/BLOB,
//! BIGINT/INTEGER, BOOLEAN, TEXT, BYTEA/BLOB).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::Connection as _;
use sqlx::Row as _;

use crate::error::{Result, StoreError};
use crate::model::*;
use crate::secret::{self, SecretBox};
use crate::Store;

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");
static PG_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

const USER_COLS: &str = "id, gitlab_user_id, username, name, created_at";
const RUNNER_COLS: &str = "id, owner_id, gitlab_url, gitlab_runner_id, description, tags, \
     run_untagged, locked, access_level, maximum_timeout, paused, backend, backend_settings, \
     concurrency, created_at, updated_at";
const JOB_COLS: &str = "j.id, j.runner_id, j.gitlab_job_id, j.status, j.replica, j.claimed_at, \
     j.started_at, j.finished_at, j.queued_duration_ms, j.failure_reason, j.recovery";

const KEY_CHECK_NAME: &str = "key_check";
const KEY_CHECK_AAD: &[u8] = b"gsr/key-check";
const KEY_CHECK_VALUE: &[u8] = b"gsr-store key check v1";

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn ms_to_dt(ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms} out of range")))
}

fn opt_ms_to_dt(ms: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    ms.map(ms_to_dt).transpose()
}

fn runner_token_aad(id: RunnerId) -> Vec<u8> {
    format!("gsr/runner-token/{id}").into_bytes()
}

fn job_token_aad(id: JobId) -> Vec<u8> {
    format!("gsr/job-token/{id}").into_bytes()
}

fn oauth_access_aad(id: UserId) -> Vec<u8> {
    format!("gsr/oauth-access/{id}").into_bytes()
}

fn oauth_refresh_aad(id: UserId) -> Vec<u8> {
    format!("gsr/oauth-refresh/{id}").into_bytes()
}

fn tags_to_json(tags: &[String]) -> String {
    serde_json::to_string(tags).expect("a list of strings always serialises")
}

fn validate_runner_fields(
    gitlab_url: &str,
    concurrency: u32,
    maximum_timeout: Option<i64>,
) -> Result<()> {
    if gitlab_url.trim().is_empty() {
        return Err(StoreError::Invalid("gitlab_url must not be empty".into()));
    }
    if concurrency == 0 {
        return Err(StoreError::Invalid("concurrency must be at least 1".into()));
    }
    if maximum_timeout.is_some_and(|t| t <= 0) {
        return Err(StoreError::Invalid(
            "maximum_timeout must be positive".into(),
        ));
    }
    Ok(())
}

macro_rules! impl_store {
    ($store:ident, $row:ty) => {
        impl $store {
            fn user_from_row(row: &$row) -> Result<User> {
                Ok(User {
                    id: UserId(row.try_get("id")?),
                    gitlab_user_id: row.try_get("gitlab_user_id")?,
                    username: row.try_get("username")?,
                    name: row.try_get("name")?,
                    created_at: ms_to_dt(row.try_get("created_at")?)?,
                })
            }

            fn runner_from_row(row: &$row) -> Result<Runner> {
                let tags: String = row.try_get("tags")?;
                let settings: String = row.try_get("backend_settings")?;
                let access: String = row.try_get("access_level")?;
                let concurrency: i64 = row.try_get("concurrency")?;
                Ok(Runner {
                    id: RunnerId(row.try_get("id")?),
                    owner: UserId(row.try_get("owner_id")?),
                    gitlab_url: row.try_get("gitlab_url")?,
                    gitlab_runner_id: row.try_get("gitlab_runner_id")?,
                    description: row.try_get("description")?,
                    tags: serde_json::from_str(&tags)
                        .map_err(|e| StoreError::Corrupt(format!("runner tags: {e}")))?,
                    run_untagged: row.try_get("run_untagged")?,
                    locked: row.try_get("locked")?,
                    access_level: AccessLevel::parse(&access).ok_or_else(|| {
                        StoreError::Corrupt(format!("access level {access:?}"))
                    })?,
                    maximum_timeout: row.try_get("maximum_timeout")?,
                    paused: row.try_get("paused")?,
                    backend: row.try_get("backend")?,
                    backend_settings: serde_json::from_str(&settings)
                        .map_err(|e| StoreError::Corrupt(format!("backend settings: {e}")))?,
                    concurrency: u32::try_from(concurrency)
                        .map_err(|_| StoreError::Corrupt(format!("concurrency {concurrency}")))?,
                    created_at: ms_to_dt(row.try_get("created_at")?)?,
                    updated_at: ms_to_dt(row.try_get("updated_at")?)?,
                })
            }

            fn job_from_row(row: &$row) -> Result<Job> {
                let status: String = row.try_get("status")?;
                let queued: Option<i64> = row.try_get("queued_duration_ms")?;
                let recovery: Option<String> = row.try_get("recovery")?;
                Ok(Job {
                    id: JobId(row.try_get("id")?),
                    runner_id: RunnerId(row.try_get("runner_id")?),
                    gitlab_job_id: row.try_get("gitlab_job_id")?,
                    status: JobStatus::parse(&status)
                        .ok_or_else(|| StoreError::Corrupt(format!("job status {status:?}")))?,
                    replica: row.try_get("replica")?,
                    claimed_at: ms_to_dt(row.try_get("claimed_at")?)?,
                    started_at: opt_ms_to_dt(row.try_get("started_at")?)?,
                    finished_at: opt_ms_to_dt(row.try_get("finished_at")?)?,
                    queued_duration: queued
                        .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
                    failure_reason: row.try_get("failure_reason")?,
                    recovery: recovery
                        .map(|r| {
                            Recovery::parse(&r)
                                .ok_or_else(|| StoreError::Corrupt(format!("job recovery {r:?}")))
                        })
                        .transpose()?,
                })
            }

            /// The database's connection pool, for health checks.
            pub fn pool(&self) -> &sqlx::Pool<<$row as sqlx::Row>::Database> {
                &self.pool
            }

            /// Stores a key check value on first open; on later opens proves the key is the
            /// same one, so a wrong key fails here with [`StoreError::WrongKey`].
            async fn check_key(&self) -> Result<()> {
                let sql = "SELECT value FROM meta WHERE key = $1";
                let mut stored: Option<Vec<u8>> = sqlx::query_scalar(sql)
                    .bind(KEY_CHECK_NAME)
                    .fetch_optional(&self.pool)
                    .await?;
                if stored.is_none() {
                    sqlx::query(
                        "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                    )
                    .bind(KEY_CHECK_NAME)
                    .bind(self.secrets.seal(KEY_CHECK_AAD, KEY_CHECK_VALUE))
                    .execute(&self.pool)
                    .await?;
                    stored = sqlx::query_scalar(sql)
                        .bind(KEY_CHECK_NAME)
                        .fetch_optional(&self.pool)
                        .await?;
                }
                let stored = stored.ok_or_else(|| StoreError::Corrupt("key check missing".into()))?;
                match self.secrets.open(KEY_CHECK_AAD, &stored) {
                    Ok(v) if v == KEY_CHECK_VALUE => Ok(()),
                    _ => Err(StoreError::WrongKey),
                }
            }

            async fn get_job(&self, id: JobId) -> Result<Job> {
                let row = sqlx::query(&format!("SELECT {JOB_COLS} FROM jobs j WHERE j.id = $1"))
                    .bind(id.0)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or(StoreError::NotFound)?;
                Self::job_from_row(&row)
            }
        }

        #[async_trait]
        impl Store for $store {
            async fn upsert_user_from_gitlab(&self, identity: GitlabIdentity) -> Result<User> {
                let now = now_ms();
                let row = sqlx::query(&format!(
                    "INSERT INTO users (id, gitlab_user_id, username, name, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (gitlab_user_id) DO UPDATE SET username = excluded.username, \
                     name = excluded.name, updated_at = excluded.updated_at \
                     RETURNING {USER_COLS}"
                ))
                .bind(UserId::new().0)
                .bind(identity.gitlab_user_id)
                .bind(&identity.username)
                .bind(&identity.name)
                .bind(now)
                .bind(now)
                .fetch_one(&self.pool)
                .await?;
                Self::user_from_row(&row)
            }

            async fn get_user(&self, id: UserId) -> Result<User> {
                let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE id = $1"))
                    .bind(id.0)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or(StoreError::NotFound)?;
                Self::user_from_row(&row)
            }

            async fn set_oauth_tokens(&self, user: UserId, tokens: &OAuthTokens) -> Result<()> {
                let access = self
                    .secrets
                    .seal(&oauth_access_aad(user), tokens.access_token.expose_secret().as_bytes());
                let refresh = tokens.refresh_token.as_ref().map(|t| {
                    self.secrets
                        .seal(&oauth_refresh_aad(user), t.expose_secret().as_bytes())
                });
                let done = sqlx::query(
                    "UPDATE users SET oauth_access_token_enc = $1, oauth_refresh_token_enc = $2, \
                     oauth_expires_at = $3, updated_at = $4 WHERE id = $5",
                )
                .bind(access)
                .bind(refresh)
                .bind(tokens.expires_at.map(|t| t.timestamp_millis()))
                .bind(now_ms())
                .bind(user.0)
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            }

            async fn oauth_tokens(&self, user: UserId) -> Result<Option<OAuthTokens>> {
                let row = sqlx::query(
                    "SELECT oauth_access_token_enc, oauth_refresh_token_enc, oauth_expires_at \
                     FROM users WHERE id = $1",
                )
                .bind(user.0)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound)?;
                let access: Option<Vec<u8>> = row.try_get("oauth_access_token_enc")?;
                let Some(access) = access else {
                    return Ok(None);
                };
                let refresh: Option<Vec<u8>> = row.try_get("oauth_refresh_token_enc")?;
                Ok(Some(OAuthTokens {
                    access_token: self.secrets.open_string(&oauth_access_aad(user), &access)?,
                    refresh_token: refresh
                        .map(|r| self.secrets.open_string(&oauth_refresh_aad(user), &r))
                        .transpose()?,
                    expires_at: opt_ms_to_dt(row.try_get("oauth_expires_at")?)?,
                }))
            }

            async fn create_runner(
                &self,
                owner: UserId,
                new: NewRunner,
                max_runners: u32,
            ) -> Result<CreatedRunner> {
                validate_runner_fields(&new.gitlab_url, new.concurrency, new.maximum_timeout)?;
                let id = RunnerId::new();
                let token_enc = self
                    .secrets
                    .seal(&runner_token_aad(id), new.token.expose_secret().as_bytes());
                let webhook_secret = secret::generate_webhook_secret();
                let webhook_hash = secret::hash_webhook_secret(webhook_secret.expose_secret());
                let now = now_ms();

                let mut tx = self.pool.begin().await?;
                // Write to the owner's row first: in PostgreSQL this takes the row lock, in
                // SQLite the database write lock, so the count below cannot go stale before
                // our insert commits. Parallel creates for one user queue up here.
                let locked = sqlx::query("UPDATE users SET quota_lock = quota_lock + 1 WHERE id = $1")
                    .bind(owner.0)
                    .execute(&mut *tx)
                    .await?;
                if locked.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runners WHERE owner_id = $1")
                    .bind(owner.0)
                    .fetch_one(&mut *tx)
                    .await?;
                if count >= i64::from(max_runners) {
                    return Err(StoreError::QuotaExceeded { max: max_runners });
                }
                sqlx::query(
                    "INSERT INTO runners (id, owner_id, gitlab_url, gitlab_runner_id, description, \
                     tags, run_untagged, locked, access_level, maximum_timeout, paused, backend, \
                     backend_settings, concurrency, token_enc, webhook_secret_hash, created_at, \
                     updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                     $14, $15, $16, $17, $18)",
                )
                .bind(id.0)
                .bind(owner.0)
                .bind(&new.gitlab_url)
                .bind(new.gitlab_runner_id)
                .bind(&new.description)
                .bind(tags_to_json(&new.tags))
                .bind(new.run_untagged)
                .bind(new.locked)
                .bind(new.access_level.as_str())
                .bind(new.maximum_timeout)
                .bind(new.paused)
                .bind(&new.backend)
                .bind(new.backend_settings.to_string())
                .bind(i64::from(new.concurrency))
                .bind(token_enc)
                .bind(webhook_hash)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| match StoreError::from(e) {
                    StoreError::Conflict(_) => StoreError::Conflict(
                        "this GitLab runner is already registered".into(),
                    ),
                    other => other,
                })?;
                tx.commit().await?;
                let created = ms_to_dt(now)?;
                Ok(CreatedRunner {
                    runner: Runner {
                        id,
                        owner,
                        gitlab_url: new.gitlab_url,
                        gitlab_runner_id: new.gitlab_runner_id,
                        description: new.description,
                        tags: new.tags,
                        run_untagged: new.run_untagged,
                        locked: new.locked,
                        access_level: new.access_level,
                        maximum_timeout: new.maximum_timeout,
                        paused: new.paused,
                        backend: new.backend,
                        backend_settings: new.backend_settings,
                        concurrency: new.concurrency,
                        created_at: created,
                        updated_at: created,
                    },
                    webhook_secret,
                })
            }

            async fn list_runners(&self, owner: UserId) -> Result<Vec<Runner>> {
                let rows = sqlx::query(&format!(
                    "SELECT {RUNNER_COLS} FROM runners WHERE owner_id = $1 ORDER BY created_at, id"
                ))
                .bind(owner.0)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::runner_from_row).collect()
            }

            async fn get_runner(&self, owner: UserId, id: RunnerId) -> Result<Runner> {
                let row = sqlx::query(&format!(
                    "SELECT {RUNNER_COLS} FROM runners WHERE id = $1 AND owner_id = $2"
                ))
                .bind(id.0)
                .bind(owner.0)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound)?;
                Self::runner_from_row(&row)
            }

            async fn update_runner(
                &self,
                owner: UserId,
                id: RunnerId,
                patch: RunnerPatch,
            ) -> Result<Runner> {
                let mut r = self.get_runner(owner, id).await?;
                let RunnerPatch {
                    description,
                    tags,
                    run_untagged,
                    locked,
                    access_level,
                    maximum_timeout,
                    paused,
                    backend,
                    backend_settings,
                    concurrency,
                } = patch;
                if let Some(v) = description { r.description = v; }
                if let Some(v) = tags { r.tags = v; }
                if let Some(v) = run_untagged { r.run_untagged = v; }
                if let Some(v) = locked { r.locked = v; }
                if let Some(v) = access_level { r.access_level = v; }
                if let Some(v) = maximum_timeout { r.maximum_timeout = v; }
                if let Some(v) = paused { r.paused = v; }
                if let Some(v) = backend { r.backend = v; }
                if let Some(v) = backend_settings { r.backend_settings = v; }
                if let Some(v) = concurrency { r.concurrency = v; }
                validate_runner_fields(&r.gitlab_url, r.concurrency, r.maximum_timeout)?;
                let now = now_ms();
                let done = sqlx::query(
                    "UPDATE runners SET description = $1, tags = $2, run_untagged = $3, \
                     locked = $4, access_level = $5, maximum_timeout = $6, paused = $7, \
                     backend = $8, backend_settings = $9, concurrency = $10, updated_at = $11 \
                     WHERE id = $12 AND owner_id = $13",
                )
                .bind(&r.description)
                .bind(tags_to_json(&r.tags))
                .bind(r.run_untagged)
                .bind(r.locked)
                .bind(r.access_level.as_str())
                .bind(r.maximum_timeout)
                .bind(r.paused)
                .bind(&r.backend)
                .bind(r.backend_settings.to_string())
                .bind(i64::from(r.concurrency))
                .bind(now)
                .bind(id.0)
                .bind(owner.0)
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                r.updated_at = ms_to_dt(now)?;
                Ok(r)
            }

            async fn delete_runner(&self, owner: UserId, id: RunnerId) -> Result<()> {
                let done = sqlx::query("DELETE FROM runners WHERE id = $1 AND owner_id = $2")
                    .bind(id.0)
                    .bind(owner.0)
                    .execute(&self.pool)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            }

            async fn set_paused(&self, owner: UserId, id: RunnerId, paused: bool) -> Result<Runner> {
                let done = sqlx::query(
                    "UPDATE runners SET paused = $1, updated_at = $2 WHERE id = $3 AND owner_id = $4",
                )
                .bind(paused)
                .bind(now_ms())
                .bind(id.0)
                .bind(owner.0)
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                self.get_runner(owner, id).await
            }

            async fn runner_by_id(&self, id: RunnerId) -> Result<Runner> {
                let row = sqlx::query(&format!("SELECT {RUNNER_COLS} FROM runners WHERE id = $1"))
                    .bind(id.0)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or(StoreError::NotFound)?;
                Self::runner_from_row(&row)
            }

            async fn active_runners(&self) -> Result<Vec<Runner>> {
                let rows = sqlx::query(&format!(
                    "SELECT {RUNNER_COLS} FROM runners WHERE paused = $1 ORDER BY created_at, id"
                ))
                .bind(false)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::runner_from_row).collect()
            }

            async fn runner_token(&self, runner: RunnerId) -> Result<SecretString> {
                let enc: Vec<u8> = sqlx::query_scalar("SELECT token_enc FROM runners WHERE id = $1")
                    .bind(runner.0)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or(StoreError::NotFound)?;
                self.secrets.open_string(&runner_token_aad(runner), &enc)
            }

            async fn verify_webhook_secret(&self, runner: RunnerId, presented: &str) -> Result<bool> {
                let hash: Option<Vec<u8>> =
                    sqlx::query_scalar("SELECT webhook_secret_hash FROM runners WHERE id = $1")
                        .bind(runner.0)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(hash.is_some_and(|h| secret::verify_webhook_secret(&h, presented)))
            }

            async fn rotate_webhook_secret(&self, owner: UserId, id: RunnerId) -> Result<SecretString> {
                let fresh = secret::generate_webhook_secret();
                let done = sqlx::query(
                    "UPDATE runners SET webhook_secret_hash = $1, updated_at = $2 \
                     WHERE id = $3 AND owner_id = $4",
                )
                .bind(secret::hash_webhook_secret(fresh.expose_secret()))
                .bind(now_ms())
                .bind(id.0)
                .bind(owner.0)
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(fresh)
            }

            async fn record_claim_with_token(
                &self,
                claim: NewClaim,
                job_token: Option<SecretString>,
            ) -> Result<Job> {
                let id = JobId::new();
                let now = now_ms();
                let queued_ms = claim
                    .queued_duration
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                // Bound to this row's id: if the insert loses to an existing record, the
                // sealed value is simply not stored.
                let token_enc = job_token
                    .as_ref()
                    .map(|t| self.secrets.seal(&job_token_aad(id), t.expose_secret().as_bytes()));
                // The WHERE clause is required by SQLite to parse INSERT … SELECT … ON CONFLICT.
                let done = sqlx::query(
                    "INSERT INTO jobs (id, runner_id, gitlab_url, gitlab_job_id, status, replica, \
                     claimed_at, queued_duration_ms, job_token_enc) \
                     SELECT $1, r.id, r.gitlab_url, $2, $3, $4, $5, $6, $7 FROM runners r \
                     WHERE r.id = $8 \
                     ON CONFLICT (gitlab_url, gitlab_job_id) DO NOTHING",
                )
                .bind(id.0)
                .bind(claim.gitlab_job_id)
                .bind(JobStatus::Claimed.as_str())
                .bind(&claim.replica)
                .bind(now)
                .bind(queued_ms)
                .bind(token_enc)
                .bind(claim.runner_id.0)
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 1 {
                    return Ok(Job {
                        id,
                        runner_id: claim.runner_id,
                        gitlab_job_id: claim.gitlab_job_id,
                        status: JobStatus::Claimed,
                        replica: claim.replica,
                        claimed_at: ms_to_dt(now)?,
                        started_at: None,
                        finished_at: None,
                        queued_duration: queued_ms
                            .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
                        failure_reason: None,
                        recovery: None,
                    });
                }
                let row = sqlx::query(&format!(
                    "SELECT {JOB_COLS} FROM jobs j JOIN runners r ON r.gitlab_url = j.gitlab_url \
                     WHERE r.id = $1 AND j.gitlab_job_id = $2"
                ))
                .bind(claim.runner_id.0)
                .bind(claim.gitlab_job_id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound)?;
                let existing = Self::job_from_row(&row)?;
                if existing.runner_id == claim.runner_id && existing.replica == claim.replica {
                    Ok(existing)
                } else {
                    Err(StoreError::AlreadyClaimed {
                        replica: existing.replica,
                    })
                }
            }

            async fn update_job_status(
                &self,
                job: JobId,
                status: JobStatus,
                failure_reason: Option<String>,
            ) -> Result<Job> {
                let current = self.get_job(job).await?;
                if current.status.is_finished() {
                    if current.status == status {
                        return Ok(current);
                    }
                    return Err(StoreError::InvalidTransition { from: current.status, to: status });
                }
                let done = match status {
                    JobStatus::Claimed if current.status == JobStatus::Claimed => return Ok(current),
                    JobStatus::Claimed => {
                        return Err(StoreError::InvalidTransition { from: current.status, to: status })
                    }
                    JobStatus::Running => {
                        sqlx::query(
                            "UPDATE jobs SET status = $1, started_at = COALESCE(started_at, $2) \
                             WHERE id = $3 AND status IN ('claimed', 'running')",
                        )
                        .bind(status.as_str())
                        .bind(now_ms())
                        .bind(job.0)
                        .execute(&self.pool)
                        .await?
                    }
                    _ => {
                        sqlx::query(
                            "UPDATE jobs SET status = $1, finished_at = $2, failure_reason = $3, \
                             job_token_enc = NULL \
                             WHERE id = $4 AND status IN ('claimed', 'running')",
                        )
                        .bind(status.as_str())
                        .bind(now_ms())
                        .bind(failure_reason)
                        .bind(job.0)
                        .execute(&self.pool)
                        .await?
                    }
                };
                let after = self.get_job(job).await?;
                if done.rows_affected() == 0 && after.status != status {
                    return Err(StoreError::InvalidTransition { from: after.status, to: status });
                }
                Ok(after)
            }

            async fn job_token(&self, job: JobId) -> Result<Option<SecretString>> {
                let row = sqlx::query("SELECT job_token_enc FROM jobs WHERE id = $1")
                    .bind(job.0)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or(StoreError::NotFound)?;
                let enc: Option<Vec<u8>> = row.try_get("job_token_enc")?;
                enc.map(|enc| self.secrets.open_string(&job_token_aad(job), &enc))
                    .transpose()
            }

            async fn mark_lost(&self, job: JobId, reason: &str, recovery: Recovery) -> Result<Job> {
                let done = sqlx::query(
                    "UPDATE jobs SET status = $1, finished_at = $2, failure_reason = $3, \
                     recovery = $4, job_token_enc = NULL \
                     WHERE id = $5 AND status IN ('claimed', 'running')",
                )
                .bind(JobStatus::Lost.as_str())
                .bind(now_ms())
                .bind(reason)
                .bind(recovery.as_str())
                .bind(job.0)
                .execute(&self.pool)
                .await?;
                let after = self.get_job(job).await?;
                if done.rows_affected() == 0 && after.status != JobStatus::Lost {
                    return Err(StoreError::InvalidTransition {
                        from: after.status,
                        to: JobStatus::Lost,
                    });
                }
                Ok(after)
            }

            async fn jobs_for_runner(
                &self,
                owner: UserId,
                runner: RunnerId,
                limit: u32,
            ) -> Result<Vec<Job>> {
                // Ownership first, so a foreign runner is NotFound rather than an empty list.
                self.get_runner(owner, runner).await?;
                let rows = sqlx::query(&format!(
                    "SELECT {JOB_COLS} FROM jobs j JOIN runners r ON r.id = j.runner_id \
                     WHERE r.id = $1 AND r.owner_id = $2 \
                     ORDER BY j.claimed_at DESC, j.id DESC LIMIT $3"
                ))
                .bind(runner.0)
                .bind(owner.0)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::job_from_row).collect()
            }

            async fn count_unfinished_jobs(&self, runner: RunnerId) -> Result<u32> {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM jobs WHERE runner_id = $1 \
                     AND status IN ('claimed', 'running')",
                )
                .bind(runner.0)
                .fetch_one(&self.pool)
                .await?;
                Ok(u32::try_from(n).unwrap_or(u32::MAX))
            }

            async fn recover_jobs(&self, replica: &str) -> Result<Vec<Job>> {
                let rows = sqlx::query(&format!(
                    "SELECT {JOB_COLS} FROM jobs j WHERE j.replica = $1 \
                     AND j.status IN ('claimed', 'running') ORDER BY j.claimed_at, j.id"
                ))
                .bind(replica)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::job_from_row).collect()
            }

            #[cfg(feature = "testkit")]
            async fn raw_runner_secret_columns(&self, runner: RunnerId) -> Result<Vec<Vec<u8>>> {
                let row = sqlx::query(
                    "SELECT token_enc, webhook_secret_hash FROM runners WHERE id = $1",
                )
                .bind(runner.0)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound)?;
                Ok(vec![row.try_get("token_enc")?, row.try_get("webhook_secret_hash")?])
            }

            #[cfg(feature = "testkit")]
            async fn raw_job_token_column(&self, job: JobId) -> Result<Option<Vec<u8>>> {
                let row = sqlx::query("SELECT job_token_enc FROM jobs WHERE id = $1")
                    .bind(job.0)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or(StoreError::NotFound)?;
                Ok(row.try_get("job_token_enc")?)
            }

            #[cfg(feature = "testkit")]
            async fn raw_oauth_columns(&self, user: UserId) -> Result<Vec<Vec<u8>>> {
                let row = sqlx::query(
                    "SELECT oauth_access_token_enc, oauth_refresh_token_enc FROM users WHERE id = $1",
                )
                .bind(user.0)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound)?;
                let a: Option<Vec<u8>> = row.try_get("oauth_access_token_enc")?;
                let r: Option<Vec<u8>> = row.try_get("oauth_refresh_token_enc")?;
                Ok(a.into_iter().chain(r).collect())
            }
        }
    };
}

/// The embedded default: one SQLite file (`gsr.db`) in the data dir, WAL mode.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    secrets: SecretBox,
}

impl SqliteStore {
    /// Open (creating if needed) `data_dir/gsr.db` and run migrations.
    pub async fn open(data_dir: &Path, secrets: SecretBox) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let opts = SqliteConnectOptions::new().filename(data_dir.join("gsr.db"));
        Self::with_options(opts, 8, secrets).await
    }

    /// Open a `sqlite://…` URL (add `?mode=rwc` to create the file).
    pub async fn connect(url: &str, secrets: SecretBox) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)?;
        Self::with_options(opts, 8, secrets).await
    }

    /// A private in-memory database (one connection, lives as long as the store). For tests.
    pub async fn in_memory(secrets: SecretBox) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")?;
        Self::with_options(opts, 1, secrets).await
    }

    async fn with_options(
        opts: SqliteConnectOptions,
        max_connections: u32,
        secrets: SecretBox,
    ) -> Result<Self> {
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        if max_connections > 1 {
            // Switch the file to WAL and migrate it through one connection before a pool
            // opens several: turning a fresh file to WAL needs it to itself, and SQLite
            // answers a second connection doing the same at that moment with "database is
            // locked" without waiting for the busy timeout (seen as a flaky first open).
            // WAL is then a property of the file, and the pool's connections find it set.
            let mut first = SqliteConnection::connect_with(&opts).await?;
            SQLITE_MIGRATOR.run_direct(&mut first).await?;
            first.close().await?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .min_connections(1)
            // An in-memory database dies with its last connection: never recycle it.
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await?;
        SQLITE_MIGRATOR.run(&pool).await?;
        let store = Self { pool, secrets };
        store.check_key().await?;
        Ok(store)
    }
}

/// PostgreSQL (`DATABASE_URL`): what several `gsr serve` replicas share.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    secrets: SecretBox,
}

impl PgStore {
    /// Connect to a `postgres://…` URL and run migrations.
    pub async fn connect(url: &str, secrets: SecretBox) -> Result<Self> {
        Self::connect_with(PgConnectOptions::from_str(url)?, secrets).await
    }

    /// Connect with prepared options (e.g. another database name) and run migrations.
    pub async fn connect_with(opts: PgConnectOptions, secrets: SecretBox) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect_with(opts)
            .await?;
        PG_MIGRATOR.run(&pool).await?;
        let store = Self { pool, secrets };
        store.check_key().await?;
        Ok(store)
    }
}

impl_store!(SqliteStore, SqliteRow);
impl_store!(PgStore, PgRow);
