//! Integration tests of the GitLab simulator, driven over real HTTP with reqwest and a
//! real `git`. Only 127.0.0.1 is used.

mod admin;
mod artifacts;
mod common;
mod faults;
mod git;
mod jobs_request;
mod oauth;
mod registration;
mod scheduling;
mod trace;
mod updates;
mod webhooks;
