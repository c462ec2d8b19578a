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
    if let Some(fd) = args.lifeline_fd {
        watch_lifeline(fd, signals.abort.clone());
    }
    let client = coordinator.job_client(spec.id, spec.token.clone());
    let report = gsr_worker::run_job(spec, client, executor, &cfg, signals.abort.clone()).await;
    Ok(ExitCode::from(wiring::exit_code(&report)))
}

/// Abort the job once the claimer's end of the lifeline pipe `fd` is closed.
///
/// Why a pipe and not `PR_SET_PDEATHSIG`: the parent-death signal fires when the spawning
/// *thread* exits (tokio's blocking threads come and go), and is lost when the parent died
/// before it was set. End of file on a pipe whose only writer is the claimer happens
/// exactly when the claimer is gone (any death, SIGKILL included) or closes it on purpose.
/// The fd is made close-on-exec first so the job's own processes do not inherit it.
fn watch_lifeline(fd: i32, abort: gsr_exec::CancellationToken) {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    if let Err(e) = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)) {
        tracing::warn!(fd, error = %e, "the lifeline fd is not usable; aborting the job");
        abort.cancel();
        return;
    }
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        loop {
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => break,
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        tracing::warn!("the claimer is gone (lifeline closed): aborting the job");
        abort.cancel();
    });
}
