//! `gsr webhook`: the serverless entry point. Listens for GitLab Job Hooks, claims the
//! pending job with the runner token and runs it with the worker, like `run-single` does
//! (same executor, identity and worker settings from [`wiring`]); the rules live in the
//! `gsr-webhook` crate so other front ends (AWS Lambda) can reuse them.
//!
//! Signals, as in `run-single`: SIGINT/SIGTERM stop accepting and abort running jobs
//! (reported as `runner_interrupted`); SIGQUIT stops accepting and claiming and lets the
//! running jobs finish; any signal after that aborts them. Scale-to-zero is the
//! platform's job: the server keeps listening after the reconcile loop went idle.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use gsr_gitlab::Coordinator;
use gsr_job::{ExposeSecret, SecretString};
use gsr_webhook::{Runner, Webhook, WebhookConfig};

use crate::cli::WebhookArgs;
use crate::wiring;

/// Run the receiver until a signal stops it.
pub async fn run(args: WebhookArgs) -> anyhow::Result<ExitCode> {
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("CI_SERVER_TOKEN").ok())
        .filter(|t| !t.trim().is_empty())
        .context("a runner token is required: --token, RUNNER_TOKEN or CI_SERVER_TOKEN")?;
    let token = SecretString::from(token.trim().to_string());
    let secret = args
        .secret
        .clone()
        .filter(|s| !s.is_empty())
        .map(SecretString::from);
    let executor = wiring::build_executor(&args.executor).await?;
    let info = wiring::runner_info(executor.as_ref());
    let coordinator = Coordinator::new(&args.url, &info)?;
    let builds_dir = wiring::builds_dir(&args.executor.builds_dir)?;
    let system_id =
        gsr_gitlab::system_id::for_this_machine(Some(&builds_dir.join(".runner_system_id")));
    let worker = wiring::worker_config(&args.executor, token.expose_secret(), &system_id)?;
    let signals = wiring::signals()?;

    let cfg = WebhookConfig {
        secret,
        max_builds: usize::try_from(args.max_builds).unwrap_or(1),
        wait_timeout: Duration::from_secs(args.wait_timeout),
        sync: args.sync,
        check_interval: Duration::from_secs_f64(args.check_interval.max(0.0)),
        ..WebhookConfig::default()
    };
    let has_secret = cfg.secret.is_some();
    let webhook = Webhook::new(
        cfg,
        Runner {
            coordinator: coordinator.clone(),
            runner_token: token,
            system_id: system_id.clone(),
            info,
            placement: Runner::in_process(executor.clone()),
            worker,
        },
    )?;

    let listener = tokio::net::TcpListener::bind((args.listen.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.listen, args.port))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    {
        // Tests and wrappers read the port from here (`--port 0`).
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "gsr webhook listening on http://{addr}");
        let _ = out.flush();
    }
    tracing::info!(
        %addr,
        path = %args.path,
        url = %coordinator.api_url(),
        executor = executor.name(),
        %system_id,
        max_builds = args.max_builds,
        wait_timeout = args.wait_timeout,
        sync = args.sync,
        secret = has_secret,
        "gsr webhook listening"
    );
    if !has_secret {
        tracing::warn!("no GITLAB_SECRET: every delivery to this endpoint is accepted");
    }

    // SIGINT/SIGTERM abort at once; after a SIGQUIT, any further signal aborts.
    {
        let webhook = webhook.clone();
        let abort = signals.abort.clone();
        let stop = signals.stop_requesting.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = abort.cancelled() => {}
                _ = async {
                    stop.cancelled().await;
                    second_signal().await;
                } => tracing::warn!("second signal: aborting the running jobs"),
            }
            webhook.abort_jobs();
        });
    }

    let app = gsr_webhook::app(webhook.clone(), &args.path, args.body_limit);
    let stop = signals.stop_requesting.clone();
    gsr_webhook::serve(
        listener,
        webhook,
        app,
        async move { stop.cancelled().await },
    )
    .await
    .context("serving webhooks")?;
    tracing::info!("gsr webhook stopped");
    Ok(ExitCode::from(wiring::EXIT_OK))
}

/// The next SIGINT, SIGTERM or SIGQUIT (listeners made now see only later signals).
async fn second_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut quit)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::quit()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        _ = quit.recv() => {}
    }
}
