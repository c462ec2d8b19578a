//! `gsr serve`: the control plane. One HTTP server with the web app (`gsr-web`: GitLab
//! login, runner management, `/api/v1`), the per-runner webhook endpoints
//! `POST /hooks/{runner_id}` and the dispatcher (`gsr-dispatch`) that claims and runs the
//! jobs of every active runner.
//!
//! The store is PostgreSQL with `DATABASE_URL`, otherwise SQLite in the data dir; secrets
//! at rest are sealed with `GSR_SECRET_KEY` or `DATA_DIR/secret.key`. Session cookies are
//! sealed with a separate key: `GSR_COOKIE_KEY` or `DATA_DIR/cookie/secret.key` (replicas
//! behind one load balancer must share it).
//!
//! Runtimes (`--backends`, [`build_runtimes`]): where each runner's jobs run, by its
//! `backend` field. Each enabled backend is built once with `gsr run-single`'s builders
//! (`wiring::build_target`, the same `--docker-*`, `--kubernetes-*`, `--sandbox` flags) and
//! prepared (validated, leftovers of dead claimers reaped) before anything is claimed; the
//! web form offers exactly the enabled ones, in flag order (the first is the default).
//!
//! `GET /metrics` serves Prometheus text ([`crate::metrics`]). Settings may come from a
//! TOML file (`--config`, [`crate::config`]).
//!
//! Signals ([`wiring::serve_signals`]): the first SIGINT/SIGTERM/SIGQUIT stops accepting
//! connections (open requests finish) and claiming; running jobs get
//! `--shutdown-timeout` seconds, then are aborted and reported failed to GitLab; exit 0.
//! A second signal aborts the running jobs at once and exits when their final updates
//! are sent (at most [`FORCED_EXIT_BOUND`]; exit 4 if they could not all be sent).
//! Why drain by default: orchestrators send SIGTERM on every deploy, and a user's job
//! should not fail because the control plane was upgraded.

use std::future::IntoFuture;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use gsr_dispatch::{DispatchSettings, Dispatcher, Runtimes};
use gsr_exec::CancellationToken;
use gsr_store::{PgStore, RunnerId, SecretBox, SqliteStore, Store};
use gsr_web::{WebConfig, WebState};
use gsr_worker::place::{LimitedBackend, Target};
use secrecy::SecretString;

use crate::cli::ServeArgs;
use crate::wiring;

/// Environment variable with the base64 32-byte key sealing the session cookies.
const COOKIE_KEY_ENV: &str = "GSR_COOKIE_KEY";

/// After a second signal, how long the aborted jobs get to send their final updates.
const FORCED_EXIT_BOUND: Duration = Duration::from_secs(15);
/// After the jobs ended, how long open HTTP requests get before the process exits anyway.
const HTTP_DRAIN_BOUND: Duration = Duration::from_secs(10);

/// Run the control plane until a signal stops it.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let signals = wiring::serve_signals()?;
    let metrics = crate::metrics::install()?;
    let data_dir = args.data_dir.as_path();
    let store = open_store(data_dir, args.database_url.as_deref()).await?;
    let cookie_key = cookie_key(data_dir)?;

    let builds_dir = wiring::builds_dir(&args.executor.builds_dir)?;
    let system_id =
        gsr_gitlab::system_id::for_this_machine(Some(&builds_dir.join(".runner_system_id")));
    // Each runner's receiver fills in its own identity; this is the template.
    let worker = wiring::worker_config(&args.executor, "", &system_id)?;
    let replica = args
        .replica
        .clone()
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(wiring::hostname);
    let runtimes = build_runtimes(&args, &replica).await?;
    runtimes
        .prepare()
        .await
        .context("preparing the runtimes (--backends)")?;
    let grace = Duration::from_secs(args.shutdown_timeout);
    let settings = DispatchSettings {
        shutdown_grace: grace,
        ..DispatchSettings::default()
    };
    let dispatcher = Dispatcher::with_runtimes(
        store.clone(),
        runtimes.clone(),
        worker,
        replica.clone(),
        settings,
    );

    let listener = tokio::net::TcpListener::bind(args.listen.as_str())
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let public_url = match args.public_url.as_deref().map(str::trim) {
        Some(u) if !u.is_empty() => u.trim_end_matches('/').to_string(),
        _ => {
            let bound = format!("http://{addr}");
            tracing::warn!(
                public_url = %bound,
                "--public-url (GSR_PUBLIC_URL) is not set: OAuth redirects and runner webhook \
                 URLs use the bound address, which GitLab and browsers can reach only if it is \
                 the public one; set it to the URL users and GitLab see"
            );
            bound
        }
    };
    let config = WebConfig {
        gitlab_url: args.gitlab_url.trim_end_matches('/').to_string(),
        oauth_client_id: args.gitlab_client_id.clone(),
        oauth_client_secret: args
            .gitlab_client_secret
            .clone()
            .filter(|s| !s.is_empty())
            .map(SecretString::from),
        public_url: public_url.clone(),
        max_runners: args.max_runners,
    };
    let web = gsr_web::app(
        WebState::new(store, config, cookie_key)
            .with_extra_gitlab_urls(args.extra_gitlab_urls.clone())
            .with_backends(runtimes.names()),
    );
    let app = hooks(dispatcher.clone(), args.body_limit)
        .merge(crate::metrics::routes(metrics))
        .merge(web);

    let shutdown = CancellationToken::new();
    let mut dispatching = dispatcher
        .start(shutdown.clone())
        .await
        .context("starting the dispatcher")?;
    tracing::info!(
        %addr,
        %public_url,
        gitlab = %args.gitlab_url,
        %replica,
        runtimes = ?runtimes.names(),
        store = if args.database_url.is_some() { "postgres" } else { "sqlite" },
        shutdown_timeout_s = args.shutdown_timeout,
        "gsr serve listening"
    );
    {
        // Tests and wrappers read the port from here (`--listen 127.0.0.1:0`); after the
        // log line, so whoever saw this line finds the settings in the log.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "gsr serve listening on http://{addr}");
        let _ = out.flush();
    }

    // The first signal stops accepting connections (open requests finish) and claiming
    // at the same time; the dispatcher gives running jobs `grace`, then aborts them and
    // reports them failed.
    let drain = signals.drain.clone();
    let mut served = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { drain.cancelled().await })
            .into_future(),
    );
    // The server task also ends on the drain signal (graceful shutdown), so which of the
    // two is seen first says nothing; only an end *without* the signal is a failure.
    let mut served_early = None;
    tokio::select! {
        biased;
        _ = signals.drain.cancelled() => {}
        r = &mut served => served_early = Some(r),
    }
    if served_early.is_some() && !signals.drain.is_cancelled() {
        // An accept error ended the server: stop everything.
        shutdown.cancel();
        dispatcher.abort_all();
        let _ = tokio::time::timeout(FORCED_EXIT_BOUND, dispatching).await;
        if let Some(r) = served_early {
            r.context("the HTTP server task")?.context("serving")?;
        }
        anyhow::bail!("the HTTP server stopped unexpectedly");
    }
    crate::metrics::shutting_down();
    shutdown.cancel();
    let running = dispatcher.jobs_running();
    if running > 0 {
        tracing::info!(
            jobs = running,
            grace_s = grace.as_secs(),
            "waiting for the running jobs to end"
        );
    }
    // A second signal aborts the jobs now; their final updates get a short, fixed time.
    let mut code = wiring::EXIT_OK;
    tokio::select! {
        _ = &mut dispatching => {}
        _ = signals.force.cancelled() => {
            dispatcher.abort_all();
            if tokio::time::timeout(FORCED_EXIT_BOUND, &mut dispatching).await.is_err() {
                tracing::error!(
                    jobs = dispatcher.jobs_running(),
                    "final updates of aborted jobs not sent in time; exiting anyway"
                );
                code = wiring::EXIT_UNDELIVERED;
            }
        }
    }
    // Open requests may finish (bounded; a second signal stops waiting).
    let served = match served_early {
        Some(r) => Some(r),
        None => tokio::select! {
            biased;
            r = tokio::time::timeout(HTTP_DRAIN_BOUND, &mut served) => r.ok(),
            _ = signals.force.cancelled() => None,
        },
    };
    match served {
        Some(r) => r.context("the HTTP server task")?.context("serving")?,
        None => tracing::warn!("open HTTP requests did not end in time; closing them"),
    }
    tracing::info!("gsr serve stopped");
    Ok(ExitCode::from(code))
}

/// The runtime name users see for a `--backends` value (see [`build_runtimes`]).
fn runtime_name(kind: &str) -> Option<(&'static str, &'static str)> {
    // (executor kind, runtime name)
    match kind {
        "shell" | "local-shell" => Some(("shell", gsr_dispatch::runtime::IN_PROCESS)),
        "local" | "process" => Some(("local", "process")),
        "docker" => Some(("docker", "docker")),
        "kubernetes" => Some(("kubernetes", "kubernetes")),
        _ => None,
    }
}

/// The runtimes of `--backends`, each built once with the run-single builders.
///
/// Names: `--backends` takes `gsr run-single`'s executor names; users (web form, API,
/// store) see runtime names. They differ in one place, for compatibility: the in-process
/// shell is the runtime `local`, because every runner created before runtimes existed
/// says `local` and means it; the child-process backend (`--executor local`) is therefore
/// the runtime `process`. `--fallback-executor` names one of the enabled backends: every
/// other backend sends jobs above its limit there (`--executor-max-duration` sets that
/// limit on every backend but the fallback).
async fn build_runtimes(args: &ServeArgs, replica: &str) -> anyhow::Result<Runtimes> {
    let mut kinds: Vec<&'static str> = Vec::new();
    let mut names: Vec<&'static str> = Vec::new();
    for raw in &args.backends {
        let v = raw.trim().to_ascii_lowercase();
        if v.is_empty() {
            continue;
        }
        let Some((kind, name)) = runtime_name(&v) else {
            anyhow::bail!(
                "unknown backend {v:?} in --backends; supported: shell, local, docker, kubernetes"
            );
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
            names.push(name);
        }
    }
    if kinds.is_empty() {
        anyhow::bail!("--backends is empty: enable at least one (e.g. shell)");
    }
    if !matches!(args.executor.executor.trim(), "shell" | "local" | "") {
        anyhow::bail!(
            "gsr serve runs jobs where each runner's runtime says: use --backends {}, not --executor",
            args.executor.executor.trim()
        );
    }
    let b = &args.backend;
    if !matches!(b.sandbox.trim(), "" | "none") && !kinds.contains(&"local") {
        anyhow::bail!("--sandbox applies to the local backend only (--backends …,local)");
    }
    let fallback_kind = match b.fallback_executor.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(f) => match runtime_name(&f.to_ascii_lowercase()) {
            Some((kind, _)) if kinds.contains(&kind) => Some(kind),
            _ => anyhow::bail!("--fallback-executor {f:?} must be one of --backends"),
        },
    };
    let mut targets = Vec::new();
    for kind in &kinds {
        let t = wiring::build_target(kind, &args.executor, b, replica)
            .await
            .with_context(|| format!("building the {kind} backend"))?;
        targets.push(t);
    }
    let fallback = fallback_kind
        .and_then(|f| kinds.iter().position(|k| *k == f))
        .map(|i| targets[i].clone());
    let mut runtimes = Runtimes::new(gsr_worker::place::claimer_identity(replica));
    for ((kind, name), target) in kinds.iter().zip(&names).zip(targets) {
        let is_fallback = Some(*kind) == fallback_kind;
        let target = match (target, b.executor_max_duration) {
            (Target::Backend(be), Some(secs)) if !is_fallback => {
                Target::Backend(Arc::new(LimitedBackend::new(be, Duration::from_secs(secs))))
            }
            (t, _) => t,
        };
        let fb = if is_fallback || matches!(target, Target::InProcess(_)) {
            None
        } else {
            fallback.clone()
        };
        runtimes.add(name, target, fb);
    }
    Ok(runtimes)
}

/// PostgreSQL at `database_url`, else SQLite in `data_dir`; secrets sealed with the key
/// from `GSR_SECRET_KEY` or the data dir's key file.
async fn open_store(data_dir: &Path, database_url: Option<&str>) -> anyhow::Result<Arc<dyn Store>> {
    let key = SecretBox::from_env_or_data_dir(data_dir).context("loading the secret key")?;
    match database_url.filter(|u| !u.trim().is_empty()) {
        Some(url) => Ok(Arc::new(
            PgStore::connect(url, key)
                .await
                .context("connecting to DATABASE_URL")?,
        )),
        None => Ok(Arc::new(
            SqliteStore::open(data_dir, key)
                .await
                .with_context(|| format!("opening the store in {}", data_dir.display()))?,
        )),
    }
}

/// The cookie key: `GSR_COOKIE_KEY`, else `data_dir/cookie/secret.key` (created once).
fn cookie_key(data_dir: &Path) -> anyhow::Result<SecretBox> {
    match std::env::var(COOKIE_KEY_ENV) {
        Ok(text) if !text.trim().is_empty() => {
            SecretBox::from_base64(&text).with_context(|| format!("reading {COOKIE_KEY_ENV}"))
        }
        _ => SecretBox::load_or_create_key_file(&data_dir.join("cookie"))
            .context("loading the cookie key"),
    }
}

/// `POST /hooks/{runner_id}`: a Job Hook for one runner of the control plane.
fn hooks(dispatcher: Arc<Dispatcher>, body_limit: usize) -> Router {
    Router::new()
        .route("/hooks/{runner_id}", post(hook))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(dispatcher)
}

async fn hook(
    State(dispatcher): State<Arc<Dispatcher>>,
    UrlPath(runner_id): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A malformed id names no runner: the same 404 as an unknown one.
    let Ok(runner_id) = runner_id.parse::<RunnerId>() else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let answer = dispatcher
        .handle_webhook(runner_id, gsr_webhook::http::delivery(&headers, body))
        .await;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, answer.message).into_response()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use crate::cli::Cli;

    #[test]
    fn help_groups_the_options_and_names_their_environment_variables() {
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("serve")
            .expect("serve")
            .render_help()
            .to_string();
        let mut at = 0;
        for heading in ["Server:", "GitLab login:", "Storage:", "Jobs:"] {
            let i = help[at..]
                .find(heading)
                .unwrap_or_else(|| panic!("{heading} missing or out of order:\n{help}"));
            at += i;
        }
        for env in [
            "GSR_CONFIG",
            "GSR_LISTEN",
            "GSR_PUBLIC_URL",
            "GSR_SHUTDOWN_TIMEOUT",
            "GITLAB_CLIENT_SECRET",
            "DATABASE_URL",
            "GSR_EXTRA_GITLAB_URLS",
        ] {
            assert!(help.contains(&format!("[env: {env}")), "{env}:\n{help}");
        }
        // One line per option in the short help.
        let listen = help.lines().find(|l| l.contains("--listen")).unwrap();
        assert!(listen.contains("[default: 127.0.0.1:8080]"), "{listen}");
    }
}
