//! `gsr exec`: run exactly one already-claimed job, holding only its job token.
//!
//! This is what every backend starts (DESIGN §3): the control plane claims the job with the
//! runner token and hands over the payload; the worker reports trace, artifacts and state
//! with the job token. A payload that cannot be run is failed in GitLab when its id and
//! token can be read, and the exit status says what happened (see `wiring::EXIT_*`).

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use gsr_gitlab::Coordinator;
use gsr_job::ExposeSecret;

use crate::cli::ExecArgs;
use crate::wiring;

/// Run the job.
pub async fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let payload = if args.job == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the job payload from standard input")?;
        buf
    } else {
        std::fs::read(&args.job).with_context(|| format!("reading the job payload {}", args.job))?
    };
    let executor = wiring::build_executor(&args.executor).await?;
    let info = wiring::runner_info(executor.as_ref());

    let parsed = gsr_gitlab::parse_job(&payload);
    let server_url = args.url.clone().or_else(|| {
        parsed
            .as_ref()
            .ok()
            .and_then(|j| j.variables.get("CI_SERVER_URL").map(str::to_string))
    });
    let Some(server_url) = server_url else {
        anyhow::bail!("no GitLab URL: pass --url or CI_SERVER_URL");
    };
    let coordinator = Coordinator::new(&server_url, &info)?;
    let system_id = gsr_gitlab::system_id::for_this_machine(None);

    let spec = match parsed {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("gsr: {e}");
            if let (Some(id), Some(token)) = (e.job_id, e.job_token.clone()) {
                let mut cfg =
                    wiring::worker_config(&args.executor, token.expose_secret(), &system_id)?;
                cfg.two_phase = !args.no_ack;
                let client = coordinator.job_client(id, token);
                let delivery = gsr_worker::fail_unrunnable(client, &cfg, &e.to_string()).await;
                tracing::info!(job = id, ?delivery, "reported the unrunnable job as failed");
            }
            return Ok(ExitCode::from(wiring::EXIT_USAGE));
        }
    };
    // The short token shown in the trace comes from the job token here: a worker never
    // sees the runner token.
    let mut cfg = wiring::worker_config(&args.executor, spec.token.expose_secret(), &system_id)?;
    cfg.two_phase = !args.no_ack;
    let signals = wiring::signals()?;
    let client = coordinator.job_client(spec.id, spec.token.clone());
    let report = gsr_worker::run_job(spec, client, executor, &cfg, signals.abort.clone()).await;
    Ok(ExitCode::from(wiring::exit_code(&report)))
}
