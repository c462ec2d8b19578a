//! GitLab coordinator client: wire types, job request/long-poll, updates, trace, artifacts.
