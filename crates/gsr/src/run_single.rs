//! `gsr run-single`: claim jobs with the runner token and run them one at a time.
//!
//! The loop mirrors gitlab-runner's: request with `last_update` (so GitLab/Workhorse can
//! long-poll), run what was assigned, stop after `--max-builds` jobs or after
//! `--wait-timeout` seconds without one. An assigned job whose payload cannot be run is
//! failed in GitLab with the reason in its trace; the loop goes on.
//!
//! Where a job runs is `--executor` ([`wiring::build_placement`]): `shell` in this process
//! (the default, as before), or a backend (`local`, `docker`, `kubernetes`) through
//! `gsr_worker::place`, which also routes jobs a backend cannot run to
//! `--fallback-executor`. Backends are validated and reaped once before the first request.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use gsr_exec::CancellationToken;
use gsr_gitlab::{Coordinator, GitlabError, JobRequest};
use gsr_job::SecretString;
use tokio::time::Instant;

use crate::cli::RunSingleArgs;
use crate::wiring;

/// Run the loop.
pub async fn run(args: RunSingleArgs) -> anyhow::Result<ExitCode> {
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("CI_SERVER_TOKEN").ok())
        .filter(|t| !t.trim().is_empty())
        .context("a runner token is required: --token, RUNNER_TOKEN or CI_SERVER_TOKEN")?;
    let token = SecretString::from(token.trim().to_string());
    let placement = wiring::build_placement(&args.executor, &args.backend, &args.url).await?;
    placement
        .prepare()
        .await
        .context("the executor's backend is not usable")?;
    let info = wiring::placement_runner_info(&placement);
    let coordinator = Coordinator::new(&args.url, &info)?;
    let builds_dir = wiring::builds_dir(&args.executor.builds_dir)?;
    let system_id =
        gsr_gitlab::system_id::for_this_machine(Some(&builds_dir.join(".runner_system_id")));
    let cfg = wiring::worker_config(
        &args.executor,
        gsr_job::ExposeSecret::expose_secret(&token),
        &system_id,
    )?;
    let signals = wiring::signals()?;
    let check_interval = Duration::from_secs_f64(args.check_interval.max(0.0));
    let wait_timeout = (args.wait_timeout > 0).then(|| Duration::from_secs(args.wait_timeout));

    tracing::info!(
        url = %coordinator.api_url(),
        executor = %placement.primary.describe(),
        fallback = ?placement.fallback.as_ref().map(|f| f.describe()),
        %system_id,
        max_builds = args.max_builds,
        wait_timeout = args.wait_timeout,
        "gsr run-single starting"
    );

    let mut last_update: Option<String> = None;
    let mut builds = 0u64;
    let mut idle_since = Instant::now();
    let mut failures = 0u32;
    let mut quick_polls = 0u32;
    loop {
        if signals.stop_requesting.is_cancelled() {
            break;
        }
        if args.max_builds > 0 && builds >= args.max_builds {
            tracing::info!(builds, "reached --max-builds; exiting");
            break;
        }
        let idle_deadline = wait_timeout.map(|w| idle_since + w);
        if idle_deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::info!("no job within --wait-timeout; exiting");
            break;
        }
        let started = Instant::now();
        let request = coordinator.request_job(&token, &system_id, last_update.as_deref(), &info);
        let outcome = tokio::select! {
            r = request => Some(r),
            _ = sleep_until_opt(idle_deadline) => None,
            _ = signals.stop_requesting.cancelled() => None,
        };
        let Some(outcome) = outcome else { continue };
        match outcome {
            Ok(JobRequest::Job(claimed)) => {
                failures = 0;
                let spec = &claimed.spec;
                tracing::info!(job = spec.id, project = %spec.project_full_path, "job received");
                let client = coordinator.job_client(spec.id, spec.token.clone());
                let report = gsr_worker::place::run_claimed(
                    *claimed,
                    client,
                    &placement,
                    &cfg,
                    signals.abort.clone(),
                )
                .await;
                builds += 1;
                tracing::info!(job = report.job_id, outcome = ?report.outcome, delivery = ?report.delivery, "job done");
                idle_since = Instant::now();
                // Ask again at once: more jobs may be waiting.
                continue;
            }
            Ok(JobRequest::Malformed(e)) => {
                failures = 0;
                builds += 1;
                idle_since = Instant::now();
                tracing::error!(job = ?e.job_id, error = %e, "GitLab assigned a job that cannot be run");
                if let (Some(id), Some(job_token)) = (e.job_id, e.job_token.clone()) {
                    let client = coordinator.job_client(id, job_token);
                    let delivery = gsr_worker::fail_unrunnable(client, &cfg, &e.to_string()).await;
                    tracing::info!(job = id, ?delivery, "reported the unrunnable job as failed");
                }
                continue;
            }
            Ok(JobRequest::NoJob {
                last_update: lu,
                long_polling,
            }) => {
                failures = 0;
                if lu.is_some() {
                    last_update = lu;
                }
                // Workhorse holds the next request until the queue changes: no need to
                // wait here, and waiting would delay a job that just arrived. Only when
                // answers keep coming back at once do we fall back to --check-interval.
                let quick = started.elapsed() < Duration::from_millis(100);
                quick_polls = if quick { quick_polls + 1 } else { 0 };
                if long_polling && last_update.is_some() && quick_polls < 3 {
                    continue;
                }
            }
            Err(GitlabError::Forbidden { .. }) => {
                bail!("GitLab refused the runner token (403): it is invalid, or the runner was deleted")
            }
            Err(GitlabError::BadUrl { .. }) => unreachable!("URL validated at start"),
            Err(e) => {
                failures += 1;
                let wait = coordinator.retry_policy().backoff(failures.min(10));
                tracing::warn!(error = %e, ?wait, "requesting a job failed; will retry");
                sleep_or_stop(wait, &signals.stop_requesting).await;
                continue;
            }
        }
        // Keep requests at least --check-interval apart (long polls already waited).
        let next = started + check_interval;
        let next = idle_deadline.map_or(next, |d| next.min(d));
        sleep_or_stop(
            next.saturating_duration_since(Instant::now()),
            &signals.stop_requesting,
        )
        .await;
    }
    // Like gitlab-runner run-single: job results are GitLab's business, not the exit code.
    Ok(ExitCode::from(wiring::EXIT_OK))
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn sleep_or_stop(d: Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.cancelled() => {}
    }
}
