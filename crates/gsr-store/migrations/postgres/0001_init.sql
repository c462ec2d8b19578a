-- gsr-store schema, PostgreSQL dialect. Keep in step with migrations/sqlite/0001_init.sql:
-- same tables, columns and constraints; only the column types differ.
-- Timestamps are Unix milliseconds (BIGINT) in both dialects.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value BYTEA NOT NULL
);

CREATE TABLE users (
    id                     UUID PRIMARY KEY NOT NULL,
    gitlab_user_id        BIGINT NOT NULL UNIQUE,
    username               TEXT NOT NULL,
    name                   TEXT NOT NULL,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL,
    -- bumped inside the runner-creation transaction: the row lock that serialises quota checks
    quota_lock            BIGINT NOT NULL DEFAULT 0,
    oauth_access_token_enc BYTEA,
    oauth_refresh_token_enc BYTEA,
    oauth_expires_at      BIGINT
);

CREATE TABLE runners (
    id                  UUID PRIMARY KEY NOT NULL,
    owner_id            UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    gitlab_url          TEXT NOT NULL,
    gitlab_runner_id   BIGINT NOT NULL,
    description         TEXT NOT NULL,
    tags                TEXT NOT NULL,
    run_untagged        BOOLEAN NOT NULL,
    locked              BOOLEAN NOT NULL,
    access_level        TEXT NOT NULL,
    maximum_timeout    BIGINT,
    paused              BOOLEAN NOT NULL,
    backend             TEXT NOT NULL,
    backend_settings    TEXT NOT NULL,
    concurrency        BIGINT NOT NULL CHECK (concurrency >= 1),
    token_enc           BYTEA NOT NULL,
    webhook_secret_hash BYTEA NOT NULL,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    UNIQUE (gitlab_url, gitlab_runner_id)
);
CREATE INDEX runners_owner ON runners (owner_id);

CREATE TABLE jobs (
    id               UUID PRIMARY KEY NOT NULL,
    runner_id        UUID NOT NULL REFERENCES runners(id) ON DELETE CASCADE,
    gitlab_url       TEXT NOT NULL,
    gitlab_job_id   BIGINT NOT NULL,
    status           TEXT NOT NULL,
    replica          TEXT NOT NULL,
    claimed_at      BIGINT NOT NULL,
    started_at      BIGINT,
    finished_at     BIGINT,
    queued_duration_ms BIGINT,
    failure_reason   TEXT,
    UNIQUE (gitlab_url, gitlab_job_id)
);
CREATE INDEX jobs_runner ON jobs (runner_id, claimed_at);
CREATE INDEX jobs_replica_status ON jobs (replica, status);
