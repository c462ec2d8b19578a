//! `gsr serve --config FILE` (or `GSR_CONFIG`): settings from a TOML file whose keys are
//! the long flag names, `snake_case` or `kebab-case` (`gitlab_url = "…"`,
//! `max-runners = 10`); a list flag takes an array
//! (`extra_gitlab_urls = ["https://gitlab.example.com"]`). The global `debug` and
//! `log_format` may be set too.
//!
//! Precedence: command-line flag > environment variable > file > built-in default.
//!
//! Why it is built this way:
//!
//! - **The file's values become the flags' defaults.** clap already resolves a flag from
//!   the command line, then its environment variable, then its default; putting the file
//!   value in the default slot (`Arg::default_value` on a copy of the command) gives exactly
//!   the precedence above, with no second source of truth for names, types or ranges, and
//!   without touching the process environment. A flag added to `ServeArgs` is a valid key
//!   at once.
//! - **Two passes.** The file's path itself is a flag (`--config`, `GSR_CONFIG`), and a
//!   setting required on the command line may live in the file, so a first tolerant pass
//!   (`ignore_errors`) only finds the path; the second pass is the real one.
//! - **Strict file.** An unknown key, a value of the wrong TOML type (`max_runners = "10"`
//!   is a string, not a number) or a value the flag refuses is an error naming the file and
//!   the key (exit 2): a typo must not silently leave a default in place.
//! - **Secrets in the file** (`gitlab_client_secret`, a `database_url` with a password)
//!   are allowed — a 0600 file is a normal way to pass them — but a file readable by group
//!   or others gets a warning (not a failure: the operator may have reasons, e.g. a
//!   group-shared secret mount).

use std::any::TypeId;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::{ArgAction, Command, CommandFactory, FromArgMatches};

use crate::cli::Cli;

/// The subcommand whose flags the file may set.
const SUBCOMMAND: &str = "serve";
/// The id of the `--config` flag (not settable from the file).
const CONFIG_ARG: &str = "config";

/// The parsed command line, and warnings to log once logging is set up.
pub struct Parsed {
    pub cli: Cli,
    pub warnings: Vec<String>,
}

/// Parse `argv` (clap prints help/version/usage errors and exits as usual); for
/// `gsr serve` with a config file, the file's settings fill what flags and environment
/// leave unset. A bad file is an error naming it and the key.
pub fn parse(argv: Vec<OsString>) -> anyhow::Result<Parsed> {
    let mut warnings = Vec::new();
    let mut cmd = Cli::command();
    if let Some(path) = config_path(&cmd, &argv) {
        let file = read(&path)?;
        cmd = apply(cmd, &path, &file)?;
        if let Some(w) = secrets_warning(&path, &file) {
            warnings.push(w);
        }
    }
    let matches = cmd.try_get_matches_from(argv).unwrap_or_else(|e| e.exit());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    Ok(Parsed { cli, warnings })
}

/// The `--config` / `GSR_CONFIG` of `gsr serve`, from a tolerant first pass.
fn config_path(cmd: &Command, argv: &[OsString]) -> Option<PathBuf> {
    let m = cmd
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(argv)
        .ok()?;
    let (name, sub) = m.subcommand()?;
    if name != SUBCOMMAND {
        return None;
    }
    sub.try_get_one::<PathBuf>(CONFIG_ARG)
        .ok()
        .flatten()
        .filter(|p| !p.as_os_str().is_empty())
        .cloned()
}

fn read(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    text.parse::<toml::Table>().map_err(|e| {
        anyhow!(
            "config file {}: {}",
            path.display(),
            e.to_string().trim_end()
        )
    })
}

/// `cmd` with the file's values as defaults of the flags they name.
fn apply(mut cmd: Command, path: &Path, file: &toml::Table) -> anyhow::Result<Command> {
    let file_err =
        |key: &str, msg: String| anyhow!("config file {}: key `{key}`: {msg}", path.display());
    let sub = cmd
        .find_subcommand(SUBCOMMAND)
        .expect("the serve subcommand exists")
        .clone();
    let mut seen = std::collections::HashMap::new();
    for (key, value) in file {
        let long = key.replace('_', "-");
        if let Some(first) = seen.insert(long.clone(), key.clone()) {
            return Err(file_err(key, format!("set twice (also as `{first}`)")));
        }
        if long == CONFIG_ARG {
            return Err(file_err(
                key,
                "a config file cannot name another config file".into(),
            ));
        }
        let Some((arg, global)) = find_setting(&cmd, &sub, &long) else {
            return Err(file_err(key, UNKNOWN.into()));
        };
        // A list flag (`--extra-gitlab-urls`) takes a TOML array; others one value.
        let values = match (value, arg.get_action()) {
            (toml::Value::Array(items), ArgAction::Append) => items.iter().collect(),
            (v, _) => vec![v],
        };
        let mut texts: Vec<&'static str> = Vec::with_capacity(values.len());
        for v in values {
            let text = as_flag_value(&arg, v).map_err(|m| file_err(key, m))?;
            check_value(&arg, &text).map_err(|m| file_err(key, m))?;
            // clap keeps default values as `&'static str` unless its `string` feature is
            // on; a handful of settings leaked once per process is the simpler price.
            texts.push(Box::leak(text.into_boxed_str()));
        }
        let id = arg.get_id().clone();
        // `--help` shows defaults: never a secret's (the flags whose env values are hidden).
        let secret = arg.is_hide_env_values_set();
        let set = move |a: clap::Arg| {
            a.default_values(texts)
                .required(false)
                .hide_default_value(secret)
        };
        if global {
            cmd = cmd.mut_arg(id, set);
        } else {
            cmd = cmd.mut_subcommand(SUBCOMMAND, |s| s.mut_arg(id, set));
        }
    }
    Ok(cmd)
}

const UNKNOWN: &str =
    "unknown setting (keys are the long flag names of `gsr serve`, see `gsr serve --help`)";

/// The flag of `serve` (or global flag) with this long name, and whether it is global;
/// `--help` and `--version` are not settings.
fn find_setting(root: &Command, serve: &Command, long: &str) -> Option<(clap::Arg, bool)> {
    let named = |a: &&clap::Arg| {
        a.get_long() == Some(long)
            && !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    };
    if let Some(a) = serve.get_arguments().find(named) {
        return Some((a.clone(), false));
    }
    root.get_arguments()
        .filter(|a| a.is_global_set())
        .find(named)
        .map(|a| (a.clone(), true))
}

/// The TOML value as the flag's text, refusing values of the wrong type.
fn as_flag_value(arg: &clap::Arg, value: &toml::Value) -> Result<String, String> {
    let ty = arg.get_value_parser().type_id();
    if matches!(value, toml::Value::Array(_)) && matches!(arg.get_action(), ArgAction::Append) {
        return Err("expected an array of single values, found a nested array".into());
    }
    let is = |t: TypeId| ty == t;
    let integer = [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
    ]
    .into_iter()
    .any(is);
    let float = is(TypeId::of::<f64>()) || is(TypeId::of::<f32>());
    let boolean = is(TypeId::of::<bool>());
    let found = value.type_str();
    match value {
        toml::Value::Integer(i) if integer || float => Ok(i.to_string()),
        toml::Value::Float(f) if float => Ok(f.to_string()),
        toml::Value::Boolean(b) if boolean => Ok(b.to_string()),
        toml::Value::String(s) if !(integer || float || boolean) => Ok(s.clone()),
        _ => {
            let expected = if integer {
                "an integer"
            } else if float {
                "a number"
            } else if boolean {
                "true or false"
            } else {
                "a string"
            };
            Err(format!("expected {expected}, found {found}"))
        }
    }
}

/// Run the flag's own parser on `text` (ranges, enums, …) so a bad value names the file.
fn check_value(arg: &clap::Arg, text: &str) -> Result<(), String> {
    let long = arg.get_long().unwrap_or_default().to_string();
    let mut probe = arg.clone().required(false);
    let argv: Vec<String> = match arg.get_action() {
        // Flags without a value (e.g. `--debug`): only true/false, checked by type above.
        ArgAction::SetTrue | ArgAction::SetFalse => return Ok(()),
        _ => vec![format!("--{long}={text}")],
    };
    probe = probe.global(false);
    Command::new("config")
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(probe)
        .try_get_matches_from(argv)
        .map(|_| ())
        .map_err(|e| {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or_default();
            first.trim_start_matches("error: ").to_string()
        })
}

/// A warning when the file holds a secret and group or others may read it.
fn secrets_warning(path: &Path, file: &toml::Table) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let secrets = secret_keys(file);
    if secrets.is_empty() {
        return None;
    }
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    if mode & 0o044 == 0 {
        return None;
    }
    Some(format!(
        "config file {} holds secrets ({}) and is readable by group or others (mode {:o}); \
         make it private: chmod 600 {}",
        path.display(),
        secrets.join(", "),
        mode & 0o777,
        path.display()
    ))
}

/// The keys of `file` that hold secrets.
fn secret_keys(file: &toml::Table) -> Vec<String> {
    let mut found = Vec::new();
    for (key, value) in file {
        let Some(text) = value.as_str() else { continue };
        if text.trim().is_empty() {
            continue;
        }
        match key.replace('-', "_").as_str() {
            "gitlab_client_secret" => found.push(key.clone()),
            "database_url" if url_has_password(text) => found.push(key.clone()),
            _ => {}
        }
    }
    found
}

/// `postgres://user:password@host/db`, or a `password=` parameter.
fn url_has_password(url: &str) -> bool {
    if url.to_ascii_lowercase().contains("password=") {
        return true;
    }
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => userinfo.contains(':'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::cli::{Command as Sub, LogFormat, ServeArgs};

    /// A file with `text`, mode 0600.
    fn file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("gsr.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// Parse with the file applied, without reading the process environment for the file
    /// path (the tests give `--config`). Settings named here have no environment variable
    /// set in the test process (the test runner does not set GSR_* or GITLAB_*).
    fn serve(path: &Path, extra: &[&str]) -> anyhow::Result<(ServeArgs, Cli)> {
        let mut args = vec!["gsr", "serve", "--config", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        let argv = argv(&args);
        let cmd = Cli::command();
        let found = config_path(&cmd, &argv).expect("config path found");
        assert_eq!(found, path);
        let table = read(path)?;
        let m = apply(cmd, path, &table)?.try_get_matches_from(argv)?;
        let cli = Cli::from_arg_matches(&m)?;
        let Sub::Serve(a) = Cli::from_arg_matches(&m)?.command else {
            panic!("serve")
        };
        Ok((a, cli))
    }

    #[test]
    fn file_fills_defaults_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            r#"
                listen = "0.0.0.0:9000"
                gitlab-url = "https://gitlab.example.com"
                gitlab_client_id = "from-file"
                extra_gitlab_urls = ["https://a.example", "https://b.example"]
                max_runners = 10
                shutdown_timeout = 7
                builds_dir = "/srv/builds"
                debug = true
                log-format = "json"
            "#,
        );
        // The file alone (it also supplies the required client id).
        let (a, cli) = serve(&path, &[]).unwrap();
        assert_eq!(a.listen, "0.0.0.0:9000");
        assert_eq!(a.gitlab_url, "https://gitlab.example.com");
        assert_eq!(a.gitlab_client_id, "from-file");
        assert_eq!(a.max_runners, 10);
        assert_eq!(a.shutdown_timeout, 7);
        assert_eq!(a.executor.builds_dir, PathBuf::from("/srv/builds"));
        assert_eq!(
            a.extra_gitlab_urls,
            ["https://a.example", "https://b.example"]
        );
        assert!(cli.debug);
        assert_eq!(cli.log_format, LogFormat::Json);
        // Built-in defaults stay for what the file does not set.
        assert_eq!(a.data_dir, PathBuf::from("gsr-data"));
        assert_eq!(a.body_limit, 1024 * 1024);
        assert_eq!(a.public_url, None);

        // A flag beats the file.
        let (a, _) = serve(&path, &["--max-runners", "3", "--listen", "127.0.0.1:1"]).unwrap();
        assert_eq!((a.max_runners, a.listen.as_str()), (3, "127.0.0.1:1"));
        assert_eq!(a.gitlab_url, "https://gitlab.example.com");
    }

    #[test]
    fn unknown_keys_wrong_types_and_bad_values_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("max_runnerz = 3", "key `max_runnerz`: unknown setting"),
            (
                "max_runners = \"10\"",
                "key `max_runners`: expected an integer, found string",
            ),
            (
                "listen = 8080",
                "key `listen`: expected a string, found integer",
            ),
            (
                "debug = \"yes\"",
                "key `debug`: expected true or false, found string",
            ),
            ("max_runners = -1", "key `max_runners`: invalid value '-1'"),
            (
                "log_format = \"xml\"",
                "key `log_format`: invalid value 'xml'",
            ),
            (
                "public_url = [\"a\"]",
                "key `public_url`: expected a string, found array",
            ),
            (
                "config = \"other.toml\"",
                "key `config`: a config file cannot name another",
            ),
            ("listen = ", "config file"),
            ("max_runners = 1\nmax-runners = 2", "set twice"),
            ("help = true", "key `help`: unknown setting"),
            (
                "extra_gitlab_urls = [1]",
                "key `extra_gitlab_urls`: expected a string, found integer",
            ),
        ];
        for (text, want) in cases {
            let path = file(&dir, &format!("gitlab_client_id = \"x\"\n{text}\n"));
            let err = format!(
                "{:#}",
                serve(&path, &[])
                    .err()
                    .unwrap_or_else(|| panic!("{text}: accepted"))
            );
            assert!(err.contains(want), "{text}: {err}");
            assert!(err.contains(&path.display().to_string()), "{text}: {err}");
        }
        // Through `parse`, a missing file is an error naming it.
        let missing = dir.path().join("nope.toml");
        let err = parse(argv(&[
            "gsr",
            "serve",
            "--config",
            missing.to_str().unwrap(),
        ]))
        .err()
        .expect("missing file");
        assert!(format!("{err:#}").contains("nope.toml"), "{err:#}");
    }

    #[test]
    fn help_never_shows_a_secret_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            "gitlab_client_secret = \"s3cret\"\ndatabase_url = \"postgres://u:pw@db/x\"\nlisten = \"0.0.0.0:1\"\n",
        );
        let mut cmd = apply(Cli::command(), &path, &read(&path).unwrap()).unwrap();
        let help = cmd
            .find_subcommand_mut(SUBCOMMAND)
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("0.0.0.0:1"), "{help}");
        assert!(
            !help.contains("s3cret") && !help.contains("pw@db"),
            "{help}"
        );
    }

    #[test]
    fn other_commands_ignore_the_file_flag() {
        // `--config` exists only on serve; run-single's parse is unaffected.
        let cmd = Cli::command();
        let a = argv(&["gsr", "run-single", "-u", "https://g", "-t", "glrt-x"]);
        assert_eq!(config_path(&cmd, &a), None);
    }

    #[test]
    fn secrets_in_a_readable_file_warn() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            "gitlab_client_secret = \"s3cret\"\ndatabase-url = \"postgres://u:pw@db/gsr\"\n",
        );
        assert_eq!(
            secrets_warning(&path, &read(&path).unwrap()),
            None,
            "0600 is fine"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = secrets_warning(&path, &read(&path).unwrap()).expect("warned");
        assert!(
            w.contains("gitlab_client_secret") && w.contains("database-url"),
            "{w}"
        );
        assert!(
            w.contains("644") && !w.contains("s3cret") && !w.contains("pw@"),
            "{w}"
        );

        // No secret, no warning, whatever the mode.
        let plain = file(
            &dir,
            "database_url = \"postgres://u@db/gsr\"\nlisten = \"x\"\n",
        );
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(secrets_warning(&plain, &read(&plain).unwrap()), None);
    }

    #[test]
    fn passwords_in_database_urls() {
        assert!(url_has_password("postgres://u:pw@db:5432/gsr"));
        assert!(url_has_password("postgres://db/gsr?user=u&password=pw"));
        assert!(url_has_password("host=db user=u password=pw"));
        assert!(!url_has_password("postgres://u@db/gsr"));
        assert!(!url_has_password("postgres://db:5432/gsr"));
        assert!(!url_has_password("postgres://db/gsr?x=a@b:c"));
    }
}
