//! `gsr-sim` binary: serves the GitLab simulator until SIGINT or SIGTERM.
//!
//! Prints `gsr-sim listening on http://ADDR` on stdout once bound, so scripts can wait
//! for that line and read the URL from it. Logs go to stderr (`RUST_LOG` filters them).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use gsr_sim::SimConfig;

/// A strict GitLab simulator: runner API, job queue, artifacts, git smart HTTP, admin API.
#[derive(Debug, Parser)]
#[command(name = "gsr-sim", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "GSR_SIM_LISTEN", default_value = "127.0.0.1:8929")]
    listen: SocketAddr,
    /// Directory for bare repositories and artifact files.
    #[arg(long, env = "GSR_SIM_DATA_DIR")]
    data_dir: PathBuf,
    /// Token for the admin API (`PRIVATE-TOKEN`) and `root` git pushes.
    #[arg(long, env = "GSR_SIM_ADMIN_TOKEN", default_value = "sim-admin-token")]
    admin_token: String,
    /// Legacy runner registration token.
    #[arg(
        long,
        env = "GSR_SIM_REGISTRATION_TOKEN",
        default_value = "GR1348941sim-registration"
    )]
    registration_token: String,
    /// Maximum duration of a long-polled `jobs/request` (0 disables long polling).
    #[arg(long, env = "GSR_SIM_LONG_POLL_SECS", default_value_t = 50)]
    long_poll_secs: u64,
    /// `X-GitLab-Trace-Update-Interval` sent on trace patches.
    #[arg(long, env = "GSR_SIM_TRACE_UPDATE_INTERVAL", default_value_t = 3)]
    trace_update_interval: u32,
    /// Largest accepted artifact, in bytes.
    #[arg(long, env = "GSR_SIM_MAX_ARTIFACT_SIZE", default_value_t = 100 * 1024 * 1024)]
    max_artifact_size: u64,
    /// Time limit of one webhook delivery, in seconds.
    #[arg(long, env = "GSR_SIM_WEBHOOK_TIMEOUT_SECS", default_value_t = 10)]
    webhook_timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let cfg = SimConfig {
        listen: args.listen,
        data_dir: args.data_dir,
        admin_token: args.admin_token,
        registration_token: args.registration_token,
        long_poll: Duration::from_secs(args.long_poll_secs),
        trace_update_interval: args.trace_update_interval,
        max_artifact_size: args.max_artifact_size,
        webhook_timeout: Duration::from_secs(args.webhook_timeout_secs),
    };
    let sim = gsr_sim::spawn(cfg).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "gsr-sim listening on {}", sim.url)?;
        out.flush()?;
    }
    wait_for_signal().await?;
    tracing::info!("shutting down");
    sim.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
