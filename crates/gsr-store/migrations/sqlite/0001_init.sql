-- gsr-store schema, SQLite dialect. Keep in step with migrations/postgres/0001_init.sql:
-- same tables, columns and constraints; only the column types differ.
-- Timestamps are Unix milliseconds (INTEGER) in both dialects.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);

CREATE TABLE users (
    id                     BLOB PRIMARY KEY NOT NULL,
    gitlab_user_id         INTEGER NOT NULL UNIQUE,
    username               TEXT NOT NULL,
    name                   TEXT NOT NULL,
    created_at             INTEGER NOT NULL,
    updated_at             INTEGER NOT NULL,
    -- bumped inside the runner-creation transaction: the row lock that serialises quota checks
    quota_lock             INTEGER NOT NULL DEFAULT 0,
    oauth_access_token_enc BLOB,
    oauth_refresh_token_enc BLOB,
    oauth_expires_at       INTEGER
);

CREATE TABLE runners (
    id                  BLOB PRIMARY KEY NOT NULL,
    owner_id            BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    gitlab_url          TEXT NOT NULL,
    gitlab_runner_id    INTEGER NOT NULL,
    description         TEXT NOT NULL,
    tags                TEXT NOT NULL,
    run_untagged        BOOLEAN NOT NULL,
    locked              BOOLEAN NOT NULL,
    access_level        TEXT NOT NULL,
    maximum_timeout     INTEGER,
    paused              BOOLEAN NOT NULL,
    backend             TEXT NOT NULL,
    backend_settings    TEXT NOT NULL,
    concurrency         INTEGER NOT NULL CHECK (concurrency >= 1),
    token_enc           BLOB NOT NULL,
    webhook_secret_hash BLOB NOT NULL,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    UNIQUE (gitlab_url, gitlab_runner_id)
);
CREATE INDEX runners_owner ON runners (owner_id);

CREATE TABLE jobs (
    id               BLOB PRIMARY KEY NOT NULL,
    runner_id        BLOB NOT NULL REFERENCES runners(id) ON DELETE CASCADE,
    gitlab_url       TEXT NOT NULL,
    gitlab_job_id    INTEGER NOT NULL,
    status           TEXT NOT NULL,
    replica          TEXT NOT NULL,
    claimed_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    queued_duration_ms INTEGER,
    failure_reason   TEXT,
    UNIQUE (gitlab_url, gitlab_job_id)
);
CREATE INDEX jobs_runner ON jobs (runner_id, claimed_at);
CREATE INDEX jobs_replica_status ON jobs (replica, status);
