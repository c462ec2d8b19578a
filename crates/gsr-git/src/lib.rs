//! Fetching job sources with the system git and the job token.
