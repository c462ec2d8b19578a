//! A strict GitLab simulator: runner API, job queue, artifacts, git smart HTTP, admin API, faults.
