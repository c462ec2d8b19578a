//! Command-line interface. Flag and environment names follow `gitlab-runner` so that
//! `gsr run-single` is a drop-in: the same container env or systemd unit works for both.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// GitLab Serverless Runner.
#[derive(Debug, Parser)]
#[command(name = "gsr", version, about = "GitLab Serverless Runner", long_about = None)]
pub struct Cli {
    /// Verbose logs (same as RUST_LOG=debug).
    #[arg(long, global = true, env = "GSR_DEBUG", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    pub debug: bool,
    /// Log format on stderr: `text` for people, `json` (one object per line) for log
    /// collectors.
    #[arg(
        long,
        global = true,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Claim and run jobs with a runner token (like `gitlab-runner run-single`).
    RunSingle(RunSingleArgs),
    /// Run one already-claimed job payload with its job token only.
    Exec(ExecArgs),
    /// Register a runner: a legacy registration token or a `glrt-` authentication token.
    Register(RegisterArgs),
    /// Check that a runner token is valid.
    Verify(TokenArgs),
    /// Remove this runner manager (`glrt-` tokens) or the whole runner (legacy tokens).
    Unregister(UnregisterArgs),
    /// Receive GitLab Job Hook webhooks and run the pending jobs (serverless entry point).
    Webhook(WebhookArgs),
    /// Run as an AWS Lambda custom runtime: webhook events and direct job invocations
    /// (also chosen when started as `bootstrap`, or with AWS_LAMBDA_RUNTIME_API set and no
    /// command).
    Lambda(LambdaArgs),
    /// Run the control plane: the web app (GitLab login, runner management), the
    /// per-runner webhook endpoints and the dispatcher that runs their jobs.
    Serve(ServeArgs),
}

/// `gsr serve`. Every flag can also come from its environment variable or, under its
/// long name, from the `--config` TOML file (flag > environment > file > default).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file of settings, keyed by long flag name (e.g. `max_runners = 10`).
    #[arg(long, env = "GSR_CONFIG", value_name = "FILE", help_heading = "Server")]
    pub config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free one).
    #[arg(
        long,
        env = "GSR_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR",
        help_heading = "Server"
    )]
    pub listen: String,
    /// Public base URL for OAuth redirects and webhook URLs (unset: http://LISTEN, warned).
    #[arg(
        long,
        env = "GSR_PUBLIC_URL",
        value_name = "URL",
        help_heading = "Server"
    )]
    pub public_url: Option<String>,
    /// Largest accepted webhook body, in bytes.
    #[arg(long, env = "WEBHOOK_BODY_LIMIT", default_value_t = 1024 * 1024, value_name = "BYTES", help_heading = "Server")]
    pub body_limit: usize,
    /// Seconds running jobs get to finish after a stop signal before they are aborted.
    #[arg(
        long,
        env = "GSR_SHUTDOWN_TIMEOUT",
        default_value_t = 30,
        value_name = "SECONDS",
        help_heading = "Server"
    )]
    pub shutdown_timeout: u64,
    /// This replica's name: unique among replicas, stable across restarts (default: host name).
    #[arg(
        long,
        env = "GSR_REPLICA",
        value_name = "NAME",
        help_heading = "Server"
    )]
    pub replica: Option<String>,

    /// The GitLab instance users log in with.
    #[arg(
        long,
        env = "GITLAB_URL",
        default_value = "https://gitlab.com",
        value_name = "URL",
        help_heading = "GitLab login"
    )]
    pub gitlab_url: String,
    /// OAuth application id (redirect URI: PUBLIC_URL/auth/callback).
    #[arg(
        long,
        env = "GITLAB_CLIENT_ID",
        hide_env_values = true,
        value_name = "ID",
        help_heading = "GitLab login"
    )]
    pub gitlab_client_id: String,
    /// OAuth application secret (omit for a public application).
    #[arg(
        long,
        env = "GITLAB_CLIENT_SECRET",
        hide_env_values = true,
        value_name = "SECRET",
        help_heading = "GitLab login"
    )]
    pub gitlab_client_secret: Option<String>,
    /// More GitLab instances allowed for runners created from a registration or runner
    /// token (comma-separated; logins always use --gitlab-url).
    #[arg(
        long,
        env = "GSR_EXTRA_GITLAB_URLS",
        value_delimiter = ',',
        value_name = "URL,...",
        help_heading = "GitLab login"
    )]
    pub extra_gitlab_urls: Vec<String>,
    /// Runners each user may register.
    #[arg(
        long,
        env = "MAX_REGISTABLE_RUNNER_COUNT",
        default_value_t = 5,
        value_name = "N",
        help_heading = "GitLab login"
    )]
    pub max_runners: u32,

    /// SQLite database (without DATABASE_URL) and key files.
    #[arg(
        long,
        env = "GSR_DATA_DIR",
        default_value = "gsr-data",
        value_name = "DIR",
        help_heading = "Storage"
    )]
    pub data_dir: PathBuf,
    /// PostgreSQL URL; without it the store is SQLite in the data dir.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        value_name = "URL",
        help_heading = "Storage"
    )]
    pub database_url: Option<String>,

    #[command(flatten, next_help_heading = "Jobs")]
    pub executor: ExecutorArgs,
    /// Runtimes runners may choose (comma-separated, first = default of new runners):
    /// `shell` (in this process, shown as `local`; what older runners use), `local`
    /// (a child `gsr exec` per job, shown as `process`), `docker`, `kubernetes`.
    #[arg(
        long,
        env = "GSR_BACKENDS",
        value_delimiter = ',',
        default_value = "shell",
        value_name = "NAME,...",
        help_heading = "Jobs"
    )]
    pub backends: Vec<String>,
    /// Boxed: the settings of every backend would make this variant much larger than
    /// the others.
    #[command(flatten, next_help_heading = "Runtimes")]
    pub backend: Box<BackendArgs>,
}

/// `gsr lambda`: the `gsr webhook` settings that apply inside AWS Lambda, plus its time
/// budget.
#[derive(Debug, Args)]
pub struct LambdaArgs {
    /// GitLab URL (webhooks: default https://gitlab.com; direct invocations: the payload's
    /// `gitlab_url` wins, then this, then the job's `CI_SERVER_URL`).
    #[arg(long, short = 'u', env = "CI_SERVER_URL")]
    pub url: Option<String>,
    /// Runner authentication token; only webhook events need it (without it the function
    /// takes direct invocations only).
    #[arg(long, short = 't', env = "RUNNER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Path GitLab posts the hook to (the Function URL's path).
    #[arg(long, env = "WEBHOOK_PATH", default_value = "/")]
    pub path: String,
    /// The hook's secret token (`X-Gitlab-Token`); without it every delivery is accepted.
    #[arg(long, env = "GITLAB_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Seconds the reconcile loop keeps claiming without getting a job (billed time: the
    /// invocation lasts until it stops).
    #[arg(long, env = "WAIT_TIMEOUT", default_value_t = 10)]
    pub wait_timeout: u64,
    /// Jobs in flight at most.
    #[arg(long, env = "MAX_BUILDS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_builds: u32,
    /// Largest accepted hook body in bytes.
    #[arg(long, env = "WEBHOOK_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,
    /// Seconds between job requests when GitLab does not long-poll.
    #[arg(long, env = "CHECK_INTERVAL", default_value_t = 3.0)]
    pub check_interval: f64,
    /// Claim a job only with at least this many seconds left in the invocation; set it to
    /// the runner's maximum job timeout plus a little.
    #[arg(long, env = "LAMBDA_CLAIM_MARGIN", default_value_t = 60)]
    pub claim_margin: u64,
    /// Seconds before the invocation deadline at which a running job is stopped and
    /// reported as failed.
    #[arg(long, env = "LAMBDA_RESERVE", default_value_t = 15)]
    pub reserve: u64,
    /// Executor settings; a relative --builds-dir is taken under /tmp (the only writable
    /// place in Lambda), so the default is /tmp/builds.
    #[command(flatten)]
    pub executor: ExecutorArgs,
    /// A handler name some Lambda entrypoint scripts pass to `bootstrap`; ignored.
    #[arg(hide = true)]
    pub handler: Option<String>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `gsr webhook`: env names as a serverless container sets them.
#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// GitLab URL.
    #[arg(
        long,
        short = 'u',
        env = "CI_SERVER_URL",
        default_value = "https://gitlab.com"
    )]
    pub url: String,
    /// Runner authentication token (stays in this process; jobs get their job token only).
    #[arg(long, short = 't', env = "RUNNER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "WEBHOOK_LISTEN", default_value = "0.0.0.0")]
    pub listen: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Path GitLab posts the hook to.
    #[arg(long, env = "WEBHOOK_PATH", default_value = "/")]
    pub path: String,
    /// The hook's secret token (`X-Gitlab-Token`); without it every delivery is accepted.
    #[arg(long, env = "GITLAB_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Seconds the reconcile loop keeps claiming without getting a job.
    #[arg(long, env = "WAIT_TIMEOUT", default_value_t = 10)]
    pub wait_timeout: u64,
    /// Jobs in flight at most.
    #[arg(long, env = "MAX_BUILDS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_builds: u32,
    /// Answer a pending hook only when the job it caused has ended (200 + JSON summary).
    #[arg(long, env = "WEBHOOK_SYNC", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    pub sync: bool,
    /// Largest accepted hook body in bytes.
    #[arg(long, env = "WEBHOOK_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,
    /// Seconds between job requests when GitLab does not long-poll.
    #[arg(long, env = "CHECK_INTERVAL", default_value_t = 3.0)]
    pub check_interval: f64,
    #[command(flatten)]
    pub executor: ExecutorArgs,
}

/// Settings every job-running command shares.
#[derive(Debug, Args, Clone)]
pub struct ExecutorArgs {
    /// Executor: `shell` (bash processes of this process, the default). `gsr run-single`
    /// also takes the backends `local` (a child `gsr exec` per job in a fresh dir, scrubbed
    /// environment, optional `--sandbox bwrap`), `docker` (the job's `image:` and
    /// `services:`) and `kubernetes` (one Pod per job).
    #[arg(long, env = "RUNNER_EXECUTOR", default_value = "shell")]
    pub executor: String,
    /// Where jobs are checked out.
    #[arg(long, env = "RUNNER_BUILDS_DIR", default_value = "builds")]
    pub builds_dir: PathBuf,
    /// Where caches are kept (reserved for the cache support).
    #[arg(long, env = "RUNNER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Trace output limit in kilobytes.
    #[arg(long, env = "RUNNER_OUTPUT_LIMIT", default_value_t = 4096)]
    pub output_limit: u64,
    /// Runner name shown in job traces (default: the host name).
    #[arg(long, short = 'n', env = "RUNNER_NAME")]
    pub name: Option<String>,
}

/// `gsr run-single`.
#[derive(Debug, Args)]
pub struct RunSingleArgs {
    /// GitLab URL, e.g. https://gitlab.com.
    #[arg(long, short = 'u', env = "CI_SERVER_URL")]
    pub url: String,
    /// Runner authentication token.
    #[arg(long, short = 't', env = "RUNNER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub executor: ExecutorArgs,
    /// Stop after this many jobs (0 = unlimited).
    #[arg(long, env = "MAX_BUILDS", default_value_t = 0)]
    pub max_builds: u64,
    /// Stop after this many seconds without a job (0 = never).
    #[arg(long, env = "WAIT_TIMEOUT", default_value_t = 0)]
    pub wait_timeout: u64,
    /// Seconds between job requests when GitLab does not long-poll.
    #[arg(long, env = "CHECK_INTERVAL", default_value_t = 3.0)]
    pub check_interval: f64,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Settings of the backends `gsr run-single --executor local|docker|kubernetes` places
/// jobs on (names and environment variables like gitlab-runner's where it has them).
#[derive(Debug, Args, Clone, Default)]
pub struct BackendArgs {
    /// Where jobs go that the executor cannot run (a timeout above its limit): `shell`,
    /// `local`, `docker` or `kubernetes`.
    #[arg(long, env = "RUNNER_FALLBACK_EXECUTOR")]
    pub fallback_executor: Option<String>,
    /// Longest job timeout (seconds) the executor's backend takes; jobs with a longer
    /// timeout go to `--fallback-executor` (or are failed without one). Backends only.
    #[arg(long, env = "RUNNER_EXECUTOR_MAX_DURATION")]
    pub executor_max_duration: Option<u64>,
    /// `local` backend: `none` or `bwrap` (bubblewrap: own mount, PID, IPC and UTS
    /// namespaces, read-only system, writable job dir).
    #[arg(long, env = "RUNNER_SANDBOX", default_value = "none")]
    pub sandbox: String,
    /// `docker`: the daemon's socket (`unix:///var/run/docker.sock` when unset; the
    /// DOCKER_HOST variable is not read, so the environment does not pick a daemon).
    #[arg(long)]
    pub docker_host: Option<String>,
    /// `docker`: image of jobs without `image:`.
    #[arg(long, env = "DOCKER_IMAGE")]
    pub docker_image: Option<String>,
    /// `docker`: pull policy of jobs that name none (`always`, `if-not-present`, `never`).
    #[arg(long, env = "DOCKER_PULL_POLICY")]
    pub docker_pull_policy: Option<String>,
    /// `docker`: run job containers privileged (root on the daemon's host; opt-in).
    #[arg(long, env = "DOCKER_PRIVILEGED", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    pub docker_privileged: bool,
    /// `docker`: memory limit of each container (`512m`, `2g`, bytes).
    #[arg(long, env = "DOCKER_MEMORY")]
    pub docker_memory: Option<String>,
    /// `docker`: CPU limit of each container (`1.5`).
    #[arg(long, env = "DOCKER_CPUS")]
    pub docker_cpus: Option<f64>,
    /// `docker`: the `gsr` binary bind-mounted into job containers (default: this one).
    #[arg(long, env = "DOCKER_GSR_BINARY")]
    pub docker_gsr_binary: Option<PathBuf>,
    /// `kubernetes`: namespace of the job Pods.
    #[arg(long, env = "KUBERNETES_NAMESPACE", default_value = "default")]
    pub kubernetes_namespace: String,
    /// `kubernetes`: image of jobs without `image:`.
    #[arg(long, env = "KUBERNETES_IMAGE")]
    pub kubernetes_image: Option<String>,
    /// `kubernetes`: image holding the `gsr` binary the init container copies (required).
    #[arg(long, env = "KUBERNETES_GSR_IMAGE")]
    pub kubernetes_gsr_image: Option<String>,
    /// `kubernetes`: service account of the job Pods.
    #[arg(long, env = "KUBERNETES_SERVICE_ACCOUNT")]
    pub kubernetes_service_account: Option<String>,
}

/// `gsr exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The job payload (the 201 body of `jobs/request`); `-` reads standard input.
    #[arg(long)]
    pub job: String,
    /// GitLab URL (default: the payload's `CI_SERVER_URL` variable).
    #[arg(long, short = 'u', env = "CI_SERVER_URL")]
    pub url: Option<String>,
    #[command(flatten)]
    pub executor: ExecutorArgs,
    /// Do not send `PUT state=running` first (the claimer already did).
    #[arg(long)]
    pub no_ack: bool,
    /// The read end of a pipe whose write end the claimer holds: end of file on it (the
    /// claimer died or aborted the job) aborts the job like SIGTERM. Set by the `local`
    /// backend (`gsr-backend-local`), not meant for people.
    #[arg(long, hide = true, value_name = "FD")]
    pub lifeline_fd: Option<i32>,
}

/// `gsr register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// GitLab URL.
    #[arg(long, short = 'u', env = "CI_SERVER_URL")]
    pub url: String,
    /// Legacy registration token, or a `glrt-` runner authentication token.
    #[arg(long, short = 'r', env = "REGISTRATION_TOKEN", hide_env_values = true)]
    pub registration_token: Option<String>,
    /// Same as --registration-token (gitlab-runner accepts a `glrt-` token as --token).
    #[arg(long, short = 't', env = "RUNNER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Runner description.
    #[arg(long, env = "RUNNER_NAME", default_value = "")]
    pub description: String,
    /// Comma-separated tags (legacy registration only).
    #[arg(long, env = "RUNNER_TAG_LIST", default_value = "")]
    pub tag_list: String,
    /// Run untagged jobs (legacy registration only).
    #[arg(long, env = "REGISTER_RUN_UNTAGGED", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    pub run_untagged: bool,
    /// Lock to the project (legacy registration only).
    #[arg(long, env = "REGISTER_LOCKED", value_parser = clap::builder::BoolishValueParser::new(), default_value = "true")]
    pub locked: bool,
    /// `not_protected` or `ref_protected`.
    #[arg(long, env = "REGISTER_ACCESS_LEVEL")]
    pub access_level: Option<String>,
    /// Maximum job timeout in seconds.
    #[arg(long, env = "REGISTER_MAXIMUM_TIMEOUT")]
    pub maximum_timeout: Option<u64>,
    /// Register paused.
    #[arg(long, env = "REGISTER_PAUSED", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    pub paused: bool,
    /// Where to write the runner's settings (an env file, mode 0600).
    #[arg(long, default_value = "gsr-runner.env")]
    pub config: PathBuf,
    #[arg(long, env = "RUNNER_EXECUTOR", default_value = "shell")]
    /// Executor to declare to GitLab.
    pub executor: String,
}

/// A GitLab URL and a runner token.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// GitLab URL.
    #[arg(long, short = 'u', env = "CI_SERVER_URL")]
    pub url: String,
    /// Runner authentication token.
    #[arg(long, short = 't', env = "RUNNER_TOKEN", hide_env_values = true)]
    pub token: String,
}

/// `gsr unregister`.
#[derive(Debug, Args)]
pub struct UnregisterArgs {
    #[command(flatten)]
    pub target: TokenArgs,
    /// For `glrt-` tokens: remove the whole runner, not only this machine's manager.
    #[arg(long)]
    pub all_managers: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_single_flags_like_gitlab_runner() {
        let cli = Cli::try_parse_from([
            "gsr",
            "run-single",
            "-u",
            "https://gitlab.example.com",
            "-t",
            "glrt-x",
            "--executor",
            "shell",
            "--builds-dir",
            "/b",
            "--max-builds",
            "2",
            "--wait-timeout",
            "0",
            "--name",
            "n",
            "--output-limit",
            "100",
        ])
        .expect("parses");
        let Command::RunSingle(a) = cli.command else {
            panic!("run-single")
        };
        assert_eq!(a.url, "https://gitlab.example.com");
        assert_eq!(a.token.as_deref(), Some("glrt-x"));
        assert_eq!(a.max_builds, 2);
        assert_eq!(a.executor.output_limit, 100);
        assert_eq!(a.executor.builds_dir, PathBuf::from("/b"));
    }

    #[test]
    fn webhook_defaults_and_flags() {
        let cli = Cli::try_parse_from(["gsr", "webhook", "-t", "glrt-x"]).expect("parses");
        let Command::Webhook(a) = cli.command else {
            panic!("webhook")
        };
        assert_eq!(a.url, "https://gitlab.com");
        assert_eq!(
            (a.port, a.path.as_str(), a.listen.as_str()),
            (8080, "/", "0.0.0.0")
        );
        assert_eq!((a.wait_timeout, a.max_builds, a.sync), (10, 1, false));
        assert_eq!(a.body_limit, 1024 * 1024);
        assert_eq!(cli.log_format, LogFormat::Text);

        let cli = Cli::try_parse_from([
            "gsr",
            "--log-format",
            "json",
            "webhook",
            "--sync",
            "--max-builds",
            "3",
            "--port",
            "0",
            "--listen",
            "127.0.0.1",
            "--path",
            "/hook",
        ])
        .expect("parses");
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Webhook(a) = cli.command else {
            panic!("webhook")
        };
        assert!(a.sync);
        assert_eq!((a.max_builds, a.port), (3, 0));
        assert!(Cli::try_parse_from(["gsr", "webhook", "--max-builds", "0"]).is_err());
    }
}
