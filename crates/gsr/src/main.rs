//! `gsr`: the composition root. Parses the command line, sets up logging and signals, and
//! wires the GitLab client, the executor and the worker together. No job logic lives here.
//!
//! Layout:
//! - [`cli`]: flags and environment fallbacks (gitlab-runner's names).
//! - [`config`]: `gsr serve --config FILE`, TOML settings as the flags' defaults.
//! - [`run_single`]: the claim-and-run loop of `gsr run-single`.
//! - [`exec`]: `gsr exec`, one already-claimed job with the job token only.
//! - [`lifecycle`]: `register`, `verify`, `unregister`.
//! - [`webhook`]: `gsr webhook`, the Job Hook receiver (core in the `gsr-webhook` crate).
//! - [`lambda`]: `gsr lambda` / `bootstrap`, the AWS Lambda custom runtime (`gsr-lambda`).
//! - [`serve`]: `gsr serve`, the control plane (web app + dispatcher, `gsr-web`/`gsr-dispatch`).
//! - [`metrics`]: `GET /metrics` of `gsr serve` (Prometheus text).
//! - [`wiring`]: building executors, runner identity, logging, signals.

mod cli;
mod config;
mod exec;
mod lambda;
mod lifecycle;
mod metrics;
mod run_single;
mod serve;
mod webhook;
mod wiring;

fn main() -> std::process::ExitCode {
    // The runner token arrives in our environment (RUNNER_TOKEN), and /proc/<pid>/environ
    // is readable by every process of the same user, job scripts included. A non-dumpable
    // process's /proc files belong to root, so jobs running as our user cannot read it.
    // (A job running as root can read anything; run gsr as an unprivileged user.)
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("gsr: warning: cannot protect the process environment from jobs: {e}");
    }
    let (cli, warnings) = match config::parse(lambda::argv(std::env::args_os())) {
        Ok(p) => (p.cli, p.warnings),
        Err(e) => {
            eprintln!("gsr: error: {e:#}");
            return std::process::ExitCode::from(wiring::EXIT_USAGE);
        }
    };
    match cli.log_format {
        cli::LogFormat::Text => wiring::init_logging(cli.debug),
        cli::LogFormat::Json => init_json_logging(cli.debug),
    }
    for w in warnings {
        tracing::warn!("{w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gsr: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(70);
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            cli::Command::RunSingle(args) => run_single::run(args).await,
            cli::Command::Exec(args) => exec::run(args).await,
            cli::Command::Register(args) => lifecycle::register(args).await,
            cli::Command::Verify(args) => lifecycle::verify(args).await,
            cli::Command::Unregister(args) => lifecycle::unregister(args).await,
            cli::Command::Webhook(args) => webhook::run(args).await,
            cli::Command::Lambda(args) => lambda::run(args).await,
            cli::Command::Serve(args) => serve::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gsr: error: {e:#}");
            std::process::ExitCode::from(wiring::EXIT_USAGE)
        }
    }
}

/// Like `wiring::init_logging`, as one JSON object per line (for log collectors).
fn init_json_logging(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
