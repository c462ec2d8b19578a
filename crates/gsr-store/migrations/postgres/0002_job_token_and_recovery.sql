-- A claimed job keeps its job token, sealed by the store's SecretBox (associated data
-- `gsr/job-token/<job id>`), until the job reaches a final status; then it is set to NULL.
-- It lets recovery tell GitLab about a job whose replica died. `recovery` records what
-- recovery achieved for a job it marked lost (reported | already_over | unreachable |
-- no_token). Keep in step with migrations/sqlite/0002_job_token_and_recovery.sql.

ALTER TABLE jobs ADD COLUMN job_token_enc BYTEA;
ALTER TABLE jobs ADD COLUMN recovery TEXT;
