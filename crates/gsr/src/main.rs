//! `gsr`: the composition root. Parses the command line, sets up logging and signals, and
//! wires the GitLab client, the executor and the worker together. No job logic lives here.
//!
//! Layout:
//! - [`cli`]: flags and environment fallbacks (gitlab-runner's names).
//! - [`run_single`]: the claim-and-run loop of `gsr run-single`.
//! - [`exec`]: `gsr exec`, one already-claimed job with the job token only.
//! - [`lifecycle`]: `register`, `verify`, `unregister`.
//! - [`wiring`]: building executors, runner identity, logging, signals.

mod cli;
mod exec;
mod lifecycle;
mod run_single;
mod wiring;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    wiring::init_logging(cli.debug);
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
