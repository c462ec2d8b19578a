//! `register`, `verify`, `unregister`: the runner token's lifecycle, as gitlab-runner does it.
//!
//! A `glrt-` token was created in GitLab already: "registering" it only verifies it and
//! records this machine as a runner manager. A legacy registration token creates a runner
//! with `POST /runners`. The resulting token is written to an env file with mode 0600 and
//! never printed.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;

use anyhow::Context;
use gsr_gitlab::{Coordinator, GitlabError, RegisterOptions};
use gsr_job::{ExposeSecret, SecretString};

use crate::cli::{RegisterArgs, TokenArgs, UnregisterArgs};
use crate::wiring;

fn is_authentication_token(t: &str) -> bool {
    t.starts_with("glrt-")
}

fn coordinator(url: &str, executor: &str) -> anyhow::Result<(Coordinator, gsr_gitlab::RunnerInfo)> {
    let features = gsr_gitlab::Features::shell_runner();
    let info = gsr_gitlab::RunnerInfo::new(executor, "bash", features);
    Ok((Coordinator::new(url, &info)?, info))
}

/// `gsr register`.
pub async fn register(args: RegisterArgs) -> anyhow::Result<ExitCode> {
    let given = args
        .registration_token
        .clone()
        .or(args.token.clone())
        .filter(|t| !t.trim().is_empty())
        .context("a token is required: --registration-token (legacy) or --token (glrt-)")?;
    let given = SecretString::from(given.trim().to_string());
    let (coord, info) = coordinator(&args.url, &args.executor)?;
    let system_id = gsr_gitlab::system_id::for_this_machine(None);
    let registered = if is_authentication_token(given.expose_secret()) {
        coord.verify(&given, &system_id, &info).await
    } else {
        let opts = RegisterOptions {
            description: args.description.clone(),
            tag_list: args.tag_list.clone(),
            run_untagged: args.run_untagged,
            locked: args.locked,
            access_level: args.access_level.clone(),
            maximum_timeout: args.maximum_timeout,
            paused: args.paused,
        };
        coord.register(&given, &opts, &info).await
    };
    let r = match registered {
        Ok(r) => r,
        Err(GitlabError::Forbidden { .. }) => {
            eprintln!(
                "gsr: GitLab refused the token (403): check the registration or runner token"
            );
            return Ok(ExitCode::from(wiring::EXIT_JOB_FAILED));
        }
        Err(e) => return Err(e.into()),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&args.config)
        .with_context(|| format!("writing {}", args.config.display()))?;
    writeln!(f, "CI_SERVER_URL={}", args.url)?;
    writeln!(f, "RUNNER_TOKEN={}", r.token.expose_secret())?;
    if let Some(id) = r.id {
        writeln!(f, "RUNNER_ID={id}")?;
    }
    if let Some(exp) = &r.token_expires_at {
        writeln!(f, "RUNNER_TOKEN_EXPIRES_AT={exp}")?;
    }
    println!(
        "Runner registered successfully (id {}, system ID {system_id}). Its token is in {} (mode 0600).",
        r.id.map_or_else(|| "unknown".to_string(), |i| i.to_string()),
        args.config.display()
    );
    Ok(ExitCode::from(wiring::EXIT_OK))
}

/// `gsr verify`.
pub async fn verify(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let (coord, info) = coordinator(&args.url, "shell")?;
    let system_id = gsr_gitlab::system_id::for_this_machine(None);
    let token = SecretString::from(args.token.trim().to_string());
    match coord.verify(&token, &system_id, &info).await {
        Ok(r) => {
            println!(
                "Verifying runner... is valid (id {})",
                r.id.map_or_else(|| "unknown".to_string(), |i| i.to_string())
            );
            Ok(ExitCode::from(wiring::EXIT_OK))
        }
        Err(GitlabError::Forbidden { .. }) => {
            println!("Verifying runner... is removed or invalid");
            Ok(ExitCode::from(wiring::EXIT_JOB_FAILED))
        }
        Err(e) => Err(e.into()),
    }
}

/// `gsr unregister`.
pub async fn unregister(args: UnregisterArgs) -> anyhow::Result<ExitCode> {
    let (coord, _) = coordinator(&args.target.url, "shell")?;
    let token = SecretString::from(args.target.token.trim().to_string());
    let system_id = gsr_gitlab::system_id::for_this_machine(None);
    let manager_only = is_authentication_token(token.expose_secret()) && !args.all_managers;
    match coord
        .unregister(&token, manager_only.then_some(system_id.as_str()))
        .await
    {
        Ok(()) => {
            println!(
                "Unregistered {}",
                if manager_only {
                    "this runner manager"
                } else {
                    "the runner"
                }
            );
            Ok(ExitCode::from(wiring::EXIT_OK))
        }
        Err(e @ (GitlabError::Forbidden { .. } | GitlabError::NotFound { .. })) => {
            eprintln!("gsr: {e}");
            Ok(ExitCode::from(wiring::EXIT_JOB_FAILED))
        }
        Err(e) => Err(e.into()),
    }
}
