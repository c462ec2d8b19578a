//! `gsr lambda`: the same binary as an AWS Lambda custom runtime (front end in the
//! `gsr-lambda` crate, webhook rules in `gsr-webhook`, jobs in `gsr-worker`).
//!
//! Started by the Lambda service as `bootstrap` (a custom runtime's entry point; a copy of
//! or link to `gsr`), or explicitly as `gsr lambda`; with `AWS_LAMBDA_RUNTIME_API` set and
//! no command, `gsr` also starts in this mode ([`argv`]).
//!
//! Configuration is `gsr webhook`'s environment (`RUNNER_TOKEN` — needed only for
//! webhook events —, `CI_SERVER_URL`, `WEBHOOK_PATH`, `GITLAB_SECRET`, `WAIT_TIMEOUT`,
//! `MAX_BUILDS`, executor settings) plus the time budget `LAMBDA_CLAIM_MARGIN` and
//! `LAMBDA_RESERVE` (see `gsr_lambda::deadline`). Builds go under `/tmp` (the only
//! writable place in Lambda). The runner manager's `system_id` is derived from the
//! function's region and name, so all instances of one function show as one manager in
//! GitLab instead of one per cold start.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::CommandFactory;
use gsr_gitlab::Coordinator;
use gsr_job::{ExposeSecret, SecretString};
use gsr_lambda::{Budget, DirectRunner, Handler, HttpFront, WebhookFactory};
use gsr_webhook::{Runner, Webhook, WebhookConfig};

use crate::cli::{Cli, LambdaArgs};
use crate::wiring;

/// The command line to parse: `lambda` is inserted after the program name when `gsr` is
/// started as `bootstrap` or under the Lambda runtime API, and no command was given.
pub fn argv(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let runtime_api = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some_and(|v| !v.is_empty());
    if wants_lambda(&args, runtime_api) {
        args.insert(1.min(args.len()), OsString::from("lambda"));
    }
    args
}

fn wants_lambda(args: &[OsString], runtime_api: bool) -> bool {
    let as_bootstrap = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n.to_string_lossy().ends_with("bootstrap"));
    if !(as_bootstrap || runtime_api) {
        return false;
    }
    let cmd = Cli::command();
    let commands: Vec<&str> = cmd
        .get_subcommands()
        .map(|c| c.get_name())
        .chain(["help"])
        .collect();
    let explicit = args.iter().skip(1).any(|a| {
        let a = a.to_string_lossy();
        commands.contains(&a.as_ref()) || ["-h", "--help", "-V", "--version"].contains(&a.as_ref())
    });
    !explicit
}

/// A relative builds dir is taken under `/tmp`.
fn lambda_builds_dir(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        Path::new("/tmp").join(p)
    }
}

/// One runner manager per function (not per instance): `s_…` from region and name.
fn function_system_id() -> String {
    let region = std::env::var("AWS_REGION").unwrap_or_default();
    let name = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default();
    gsr_gitlab::system_id::from_machine_id(&format!("aws-lambda:{region}:{name}"))
}

/// Serve Lambda invocations until the runtime API goes away or a signal arrives.
pub async fn run(args: LambdaArgs) -> anyhow::Result<ExitCode> {
    let missing = gsr_lambda::missing_env();
    if !missing.is_empty() {
        anyhow::bail!(
            "gsr lambda must be started by AWS Lambda (or an emulator such as `cargo lambda \
             watch`): {} not set",
            missing.join(", ")
        );
    }
    let mut executor_args = args.executor.clone();
    executor_args.builds_dir = lambda_builds_dir(&executor_args.builds_dir);
    let executor = wiring::build_executor(&executor_args).await?;
    let info = wiring::runner_info(executor.as_ref());
    let system_id = function_system_id();
    let signals = wiring::signals()?;
    let budget = Budget {
        claim_margin: Duration::from_secs(args.claim_margin),
        reserve: Duration::from_secs(args.reserve),
    };
    let url = args.url.clone().filter(|u| !u.trim().is_empty());

    // Direct invocations: the short token in traces comes from each job's token.
    let direct = DirectRunner {
        executor: executor.clone(),
        info: info.clone(),
        default_url: url.clone(),
        worker: wiring::worker_config(&executor_args, "", &system_id)?,
        shutdown: signals.abort.clone(),
        budget,
    };

    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("CI_SERVER_TOKEN").ok())
        .filter(|t| !t.trim().is_empty())
        .map(|t| SecretString::from(t.trim().to_string()));
    let secret = args
        .secret
        .clone()
        .filter(|s| !s.is_empty())
        .map(SecretString::from);
    let receiver = match token {
        None => {
            tracing::info!("no RUNNER_TOKEN: webhook events are refused, direct invocations only");
            None
        }
        Some(token) => {
            let url = url.clone().unwrap_or_else(|| "https://gitlab.com".into());
            let coordinator = Coordinator::new(&url, &info)?;
            let worker = wiring::worker_config(&executor_args, token.expose_secret(), &system_id)?;
            let cfg = WebhookConfig {
                secret: secret.clone(),
                max_builds: usize::try_from(args.max_builds).unwrap_or(1),
                wait_timeout: Duration::from_secs(args.wait_timeout),
                // Lambda freezes the process after the answer: always wait for the job.
                sync: true,
                check_interval: Duration::from_secs_f64(args.check_interval.max(0.0)),
                ..WebhookConfig::default()
            };
            if secret.is_none() {
                tracing::warn!("no GITLAB_SECRET: every delivery to this function is accepted");
            }
            let (info, executor, system_id) = (info.clone(), executor.clone(), system_id.clone());
            let factory: WebhookFactory = Box::new(move || {
                Webhook::new(
                    cfg.clone(),
                    Runner {
                        coordinator: coordinator.clone(),
                        runner_token: token.clone(),
                        system_id: system_id.clone(),
                        info: info.clone(),
                        placement: Runner::in_process(executor.clone()),
                        worker: worker.clone(),
                    },
                )
                .map_err(|e| e.to_string())
            });
            // Fail at start, not at the first delivery, when the settings are wrong.
            factory().map_err(|e| anyhow::anyhow!("building the webhook receiver: {e}"))?;
            Some((factory, secret))
        }
    };
    let http = HttpFront::new(&args.path, args.body_limit, budget, receiver);
    let handler = Arc::new(Handler { http, direct });

    tracing::info!(
        function = %std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default(),
        executor = executor.name(),
        builds_dir = %executor_args.builds_dir.display(),
        %system_id,
        path = %args.path,
        claim_margin_s = args.claim_margin,
        reserve_s = args.reserve,
        "gsr lambda runtime starting"
    );
    let abort = signals.abort.clone();
    let h = handler.clone();
    tokio::select! {
        r = gsr_lambda::run(handler) => {
            r.map_err(|e| anyhow::anyhow!("Lambda runtime: {e}"))?;
        }
        _ = abort.cancelled() => {
            // Lambda sends SIGTERM only when it is about to stop the instance.
            h.http.abort_jobs();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(ExitCode::from(wiring::EXIT_OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn bootstrap_name_selects_lambda() {
        assert!(wants_lambda(&os(&["/var/task/bootstrap"]), false));
        assert!(wants_lambda(&os(&["bootstrap", "--debug"]), false));
        assert!(!wants_lambda(
            &os(&["bootstrap", "exec", "--job", "-"]),
            false
        ));
        assert!(!wants_lambda(&os(&["bootstrap", "--help"]), false));
        assert!(!wants_lambda(&os(&["gsr"]), false));
    }

    #[test]
    fn runtime_api_without_command_selects_lambda() {
        assert!(wants_lambda(&os(&["gsr"]), true));
        assert!(wants_lambda(&os(&["gsr", "--log-format", "json"]), true));
        assert!(!wants_lambda(&os(&["gsr", "run-single", "-u", "x"]), true));
        assert!(!wants_lambda(&os(&["gsr", "lambda"]), true));
        // An entrypoint that passes a handler name still gets Lambda mode.
        assert!(wants_lambda(
            &os(&["/var/runtime/bootstrap", "handler.name"]),
            false
        ));
    }

    #[test]
    fn inserted_command_parses() {
        use clap::Parser;
        let mut args = os(&["bootstrap", "--log-format", "json"]);
        args.insert(1, OsString::from("lambda"));
        let cli = Cli::try_parse_from(args).expect("parses");
        let crate::cli::Command::Lambda(a) = cli.command else {
            panic!("lambda")
        };
        assert_eq!(a.path, "/");
        assert_eq!((a.wait_timeout, a.max_builds), (10, 1));
        assert_eq!(
            lambda_builds_dir(&a.executor.builds_dir),
            PathBuf::from("/tmp/builds")
        );
        assert_eq!(lambda_builds_dir(Path::new("/x")), PathBuf::from("/x"));
        let cli = Cli::try_parse_from(["bootstrap", "lambda", "handler.name"]).expect("parses");
        assert!(matches!(cli.command, crate::cli::Command::Lambda(_)));
    }

    #[test]
    fn system_id_is_well_formed() {
        assert!(gsr_gitlab::system_id::is_valid(&function_system_id()));
    }
}
