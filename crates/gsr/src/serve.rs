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
//! Signals: SIGINT/SIGTERM/SIGQUIT stop accepting connections, let open requests finish,
//! stop claiming and wait for the running jobs, then exit 0.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use gsr_dispatch::Dispatcher;
use gsr_exec::CancellationToken;
use gsr_store::{PgStore, RunnerId, SecretBox, SqliteStore, Store};
use gsr_web::{WebConfig, WebState};
use secrecy::SecretString;

use crate::cli::ServeArgs;
use crate::wiring;

/// Environment variable with the base64 32-byte key sealing the session cookies.
const COOKIE_KEY_ENV: &str = "GSR_COOKIE_KEY";

/// Run the control plane until a signal stops it.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let signals = wiring::signals()?;
    let data_dir = args.data_dir.as_path();
    let store = open_store(data_dir, args.database_url.as_deref()).await?;
    let cookie_key = cookie_key(data_dir)?;

    let executor = wiring::build_executor(&args.executor)?;
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
    let dispatcher = Dispatcher::new(store.clone(), executor.clone(), worker, replica.clone());

    let listener = tokio::net::TcpListener::bind(args.listen.as_str())
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let public_url = args
        .public_url
        .clone()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| format!("http://{addr}"))
        .trim_end_matches('/')
        .to_string();
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
    let web = gsr_web::app(WebState::new(store, config, cookie_key));
    let app = hooks(dispatcher.clone(), args.body_limit).merge(web);

    let shutdown = CancellationToken::new();
    let dispatching = dispatcher
        .start(shutdown.clone())
        .await
        .context("starting the dispatcher")?;
    {
        // Tests and wrappers read the port from here (`--listen 127.0.0.1:0`).
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "gsr serve listening on http://{addr}");
        let _ = out.flush();
    }
    tracing::info!(
        %addr,
        %public_url,
        gitlab = %args.gitlab_url,
        %replica,
        executor = executor.name(),
        store = if args.database_url.is_some() { "postgres" } else { "sqlite" },
        "gsr serve listening"
    );

    let stop = signals.stop_requesting.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    shutdown.cancel();
    if dispatcher.jobs_running() > 0 {
        tracing::info!(
            jobs = dispatcher.jobs_running(),
            "waiting for the running jobs to end"
        );
    }
    let _ = dispatching.await;
    served.context("serving")?;
    tracing::info!("gsr serve stopped");
    Ok(ExitCode::from(wiring::EXIT_OK))
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
