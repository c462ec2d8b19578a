//! [`StoreError`]: the one error type of this crate, with constraint violations already mapped
//! to domain meanings.

use crate::model::JobStatus;

/// Everything a [`Store`](crate::Store) call or [`SecretBox`](crate::SecretBox) can fail with.
///
/// Callers match on the domain variants (`NotFound`, `QuotaExceeded`, `AlreadyClaimed`,
/// `Conflict`, `InvalidTransition`); the rest are operational and map to a 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist *or belongs to another user* — the two are indistinguishable on
    /// purpose so that existence never leaks across users.
    #[error("not found")]
    NotFound,
    /// The owner already has `max` runners.
    #[error("runner quota exceeded: at most {max} runners per user")]
    QuotaExceeded { max: u32 },
    /// Another replica (or another runner on the same GitLab) already recorded this job.
    #[error("job already claimed by replica {replica:?}")]
    AlreadyClaimed { replica: String },
    /// A unique constraint other than the job claim was violated (e.g. the GitLab runner is
    /// already registered here).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The job is already in a state that cannot move to the requested one.
    #[error("job cannot go from {from} to {to}")]
    InvalidTransition { from: JobStatus, to: JobStatus },
    /// Input rejected before or by the database (check constraints, bad values).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The secret key does not match the one this database was created with.
    #[error(
        "the secret key does not match this database (GSR_SECRET_KEY or the key file in the \
         data dir was changed or replaced); restore the original key — secrets encrypted with \
         it cannot be read with another one"
    )]
    WrongKey,
    /// One stored secret failed authentication (wrong key or tampered/corrupted value).
    #[error("a stored secret could not be decrypted (wrong key or corrupted value)")]
    Decrypt,
    /// Key material is malformed, or the key file is unreadable or too permissive.
    #[error("secret key: {0}")]
    Key(String),
    /// A stored value could not be turned back into a domain type.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: {0}")]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(db.constraint().unwrap_or("unique").to_owned())
            }
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_check_violation() => {
                StoreError::Invalid(db.constraint().unwrap_or("check").to_owned())
            }
            _ => StoreError::Database(e),
        }
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
