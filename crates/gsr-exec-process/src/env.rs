//! The environment of a step's processes.
//!
//! Rule 2 of the executor contract: a step sees exactly [`StepRequest::env`] plus what is
//! needed to find programs (`PATH`) and a home (`HOME`). The shell is started with an
//! emptied environment, so nothing of the runner's own (its token, cloud credentials, …)
//! is inherited.
//!
//! [`StepRequest::env`]: gsr_exec::StepRequest::env

use std::ffi::OsString;

/// `PATH` for steps when neither the step nor the runner has one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The two values taken from the runner, captured once when the executor is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaseEnv {
    pub(crate) path: OsString,
    pub(crate) home: Option<OsString>,
}

impl BaseEnv {
    /// The runner's `PATH` (or [`DEFAULT_PATH`]) and `HOME` (or the home directory of the
    /// runner's user in the password database).
    pub(crate) fn from_runner() -> Self {
        let path = std::env::var_os("PATH")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| DEFAULT_PATH.into());
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .or_else(|| {
                nix::unistd::User::from_uid(nix::unistd::getuid())
                    .ok()
                    .flatten()
                    .map(|user| user.dir.into_os_string())
            });
        Self { path, home }
    }
}

/// The complete environment of a step: `vars` in order (a repeated key keeps its last
/// value), then `PATH` and `HOME` from `base` if `vars` lacks them.
///
/// A key that cannot be an environment variable name (empty, or containing `=` or NUL) is
/// dropped with a warning; GitLab never sends one.
pub(crate) fn step_env(vars: &[(String, String)], base: &BaseEnv) -> Vec<(OsString, OsString)> {
    let mut out: Vec<(OsString, OsString)> = Vec::with_capacity(vars.len() + 2);
    let mut has_path = false;
    let mut has_home = false;
    for (key, value) in vars {
        if key.is_empty() || key.contains(['=', '\0']) {
            tracing::warn!(key = %key.escape_debug(), "dropping a variable with an invalid name");
            continue;
        }
        has_path |= key == "PATH";
        has_home |= key == "HOME";
        if let Some(slot) = out.iter_mut().find(|(k, _)| k == key.as_str()) {
            slot.1 = value.into();
        } else {
            out.push((key.into(), value.into()));
        }
    }
    if !has_path {
        out.push(("PATH".into(), base.path.clone()));
    }
    if let (false, Some(home)) = (has_home, &base.home) {
        out.push(("HOME".into(), home.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BaseEnv {
        BaseEnv {
            path: "/runner/bin".into(),
            home: Some("/home/runner".into()),
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn adds_path_and_home_only_when_missing() {
        let env = step_env(&vars(&[("A", "1")]), &base());
        assert_eq!(
            env,
            vec![
                ("A".into(), "1".into()),
                ("PATH".into(), "/runner/bin".into()),
                ("HOME".into(), "/home/runner".into()),
            ]
        );
        let env = step_env(&vars(&[("HOME", "/h"), ("PATH", "/p")]), &base());
        assert_eq!(
            env,
            vec![("HOME".into(), "/h".into()), ("PATH".into(), "/p".into())]
        );
        let no_home = BaseEnv {
            home: None,
            ..base()
        };
        assert_eq!(
            step_env(&[], &no_home),
            vec![("PATH".into(), "/runner/bin".into())]
        );
    }

    #[test]
    fn last_value_wins_and_bad_names_are_dropped() {
        let env = step_env(
            &vars(&[("A", "1"), ("", "x"), ("B=C", "x"), ("A", "2")]),
            &base(),
        );
        assert_eq!(env[0], ("A".into(), "2".into()));
        assert_eq!(env.len(), 3);
    }

    #[test]
    fn runner_base_is_never_empty() {
        assert!(!BaseEnv::from_runner().path.is_empty());
    }
}
