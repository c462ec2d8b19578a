//! End-to-end tests: the real `gsr` binary against the GitLab simulator, with real git
//! repositories served over smart HTTP and real bash processes.

mod artifacts;
mod harness;
mod jobs;
mod lambda;
mod lifecycle;
mod placement;
mod protocol;
mod replicas;
mod restart;
mod serve;
mod sources;
mod webhook;
