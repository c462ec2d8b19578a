//! `gsr-sim`: a GitLab simulator that stands in for GitLab in every `gsr` test and in the
//! local demo.
//!
//! GitLab cannot run on our machines, and a fake that accepts what GitLab would reject
//! hides bugs. So this simulator is as strict as GitLab where a runner can get it wrong —
//! status codes, headers and quirks as `shared/protocol/RUNNER-PROTOCOL.md` describes
//! them — and adds what tests need on top: an admin API to set up runners, projects and
//! jobs and to inspect what the runner did, a request log, and injectable faults.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use gsr_sim::{spawn, JobSpecInput, SimConfig};
//! let sim = spawn(SimConfig::default()).await?;
//! let admin = sim.admin();
//! let (_runner_id, runner_token) = admin.create_runner(&["linux"], true).await?;
//! let project = admin.create_project("group/project").await?;
//! // push a repository, then enqueue a job; a runner polls `{sim.url}/api/v4/jobs/request`.
//! # let _ = (runner_token, project);
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `config`: [`SimConfig`].
//! - `state`: the in-memory database ([`SimState`]) and the job state machine.
//! - `runner_api`: runner registration/verify/unregister/token reset and
//!   `POST /jobs/request` with Workhorse long polling; `scheduler` picks jobs and drops
//!   the ones needing undeclared features; `payload` builds the job JSON.
//! - `jobs`: `PUT /jobs/:id` (keep-alive, two-phase acknowledgement, final state).
//! - `trace`: `PATCH /jobs/:id/trace`.
//! - `artifacts`: artifact upload and dependency download.
//! - `git_http`: git smart HTTP through `git http-backend`; `repo` does the other git
//!   chores (bare repositories, ref resolution, pipeline refs).
//! - `admin`: the `/-/sim/` admin API; `types`: its JSON shapes; `spec`: job specs and
//!   their validation; `client`: [`AdminClient`], the typed client for tests.
//! - `webhooks`: project hooks and Job Hook deliveries (one worker task per hook, GitLab's
//!   headers, auto-disabling, resend, the delivery log).
//! - `accounts`: users, PATs, project membership, the OAuth 2 provider (`/oauth/authorize`
//!   with a minimal sign-in page, `/oauth/token` with PKCE and refresh rotation) and
//!   `GET /api/v4/user`; `user_api`: runner management with user tokens
//!   (`POST /user/runners`, `GET/PUT/DELETE /runners/:id`, `GET /runners`) on the same
//!   runner records the runner API serves.
//! - `faults`: injected failures; `server`: the listener that can drop connections;
//!   `request_log`: the log of runner requests; `http_util`, `util`: helpers.
//!
//! # Invariants
//!
//! - The state mutex is never held across an `.await`; long polls wait on per-runner
//!   `watch` channels; webhook deliveries are queued (never sent) under it.
//! - Every job status change emits exactly one Job Hook event (`Db::job_event`).
//! - Bad input is a 4xx with a message, never a panic.
//! - Job and runner tokens are secrets: the request log redacts `token` fields and
//!   `token=` query parameters; the admin API returns a job token only when creating the
//!   job and inside the stored payload (`/-/sim/jobs/:id/payload`), never in listings.

mod accounts;
mod admin;
mod artifacts;
mod client;
mod config;
mod faults;
mod git_http;
mod http_util;
mod jobs;
mod payload;
mod repo;
mod request_log;
mod runner_api;
mod scheduler;
mod server;
mod spec;
mod state;
mod trace;
mod types;
mod user_api;
mod util;
mod webhooks;

use std::time::Duration;

use anyhow::Context;
use axum::middleware;
use axum::Router;
use tokio::task::JoinHandle;

pub use accounts::pkce_challenge;
pub use client::AdminClient;
pub use config::SimConfig;
pub use spec::{ArtifactInput, HookInput, JobSpecInput, VariableInput};
pub use state::SimState;
pub use types::{
    ArtifactView, Fault, FaultKind, FaultRoute, HookDelivery, HookView, JobStatus, JobView,
    ManagerView, Project, ProjectHookInput, RequestLogEntry, RunnerCreated, RunnerInput,
    RunnerView, UserCreated,
};

/// The whole HTTP surface: runner API and git (logged), admin API (not logged).
pub fn app(state: SimState) -> Router {
    let runner_facing = Router::new()
        .merge(runner_api::routes(&state))
        .merge(jobs::routes(&state))
        .merge(trace::routes(&state))
        .merge(artifacts::routes(&state))
        .fallback(git_http::fallback)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_log::record,
        ));
    Router::new()
        .merge(admin::routes(&state))
        .merge(accounts::routes(&state))
        .merge(user_api::routes())
        .merge(runner_facing)
        .with_state(state)
}

/// A running simulator.
pub struct SimHandle {
    /// Base URL, `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    /// The listening address.
    pub addr: std::net::SocketAddr,
    state: SimState,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// A typed admin client for this simulator.
    pub fn admin(&self) -> AdminClient {
        AdminClient::new(self.url.clone(), self.state.config().admin_token.clone())
    }

    /// The simulator's state (for in-process inspection).
    pub fn state(&self) -> &SimState {
        &self.state
    }

    /// Stops accepting requests, ends long polls and waits (up to 10 s) for the server.
    pub async fn shutdown(mut self) {
        self.state.shutdown_token().cancel();
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                tracing::warn!("gsr-sim did not stop within 10 s");
            }
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.state.shutdown_token().cancel();
    }
}

/// Binds `cfg.listen` and serves the simulator in a background task.
pub async fn spawn(cfg: SimConfig) -> anyhow::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot bind {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let host = if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let url = format!("http://{host}");
    let state = SimState::new(cfg, url.clone())?;
    let router = app(state.clone());
    let shutdown = state.shutdown_token().clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(
            server::SimListener::new(listener),
            router.into_make_service_with_connect_info::<server::ConnHandle>(),
        )
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "gsr-sim server failed");
        }
    });
    Ok(SimHandle {
        url,
        addr,
        state,
        task: Some(task),
    })
}
