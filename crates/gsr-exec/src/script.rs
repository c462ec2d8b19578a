//! Turning a step's commands into a bash script, the way gitlab-runner's bash shell does.
//!
//! Why here: every backend that runs bash (local process, Docker, Kubernetes) must produce
//! the same trace (`$ command` echo lines) and the same failure semantics (errexit +
//! pipefail: the first failing command ends the step with its exit code).
//!
//! Safety: variables are *not* written into the script. They reach the process through its
//! environment, so a value with quotes, `$`, backticks or newlines can never become shell
//! code. The only user text in the script is the commands themselves (which the user wants
//! run) and their echo lines, which are single-quoted and passed to `printf` as data.

/// Quote `s` for bash as one single-quoted word; safe for any byte sequence.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The text echoed before a command: its first line, with a marker when it has more.
pub fn echo_text(command: &str) -> String {
    let trimmed = command.trim_end_matches(['\n', '\r']);
    match trimmed.split_once('\n') {
        Some((first, _)) => format!("{first} # collapsed multi-line command"),
        None => trimmed.to_string(),
    }
}

/// Loads the `$GITLAB_ENV` dotenv file (`KEY=value` lines) that earlier steps wrote, when
/// the runner provided one. Read line by line and exported as data, never sourced: a value
/// with spaces or `$(…)` is a value, not code. Lines that are empty, comments or not
/// `NAME=…` with a valid name are skipped. POSIX sh compatible.
pub const GITLAB_ENV_SOURCE: &str = r#"if [ -n "${GITLAB_ENV:-}" ] && [ -f "$GITLAB_ENV" ]; then
  while IFS= read -r __gsr_line || [ -n "$__gsr_line" ]; do
    case "$__gsr_line" in *=*) ;; *) continue ;; esac
    case "${__gsr_line%%=*}" in ''|[0-9]*|*[!A-Za-z0-9_]*) continue ;; esac
    export "${__gsr_line%%=*}=${__gsr_line#*=}"
  done < "$GITLAB_ENV"
  unset __gsr_line
fi
"#;

/// Build the bash script for one step.
///
/// The script enables errexit and pipefail, reads no stdin, echoes each command in bold
/// green as `$ command` and then runs it. With `debug_trace`, bash's xtrace is on.
pub fn bash_script(commands: &[String], debug_trace: bool) -> String {
    let mut s = String::new();
    s.push_str("set -o pipefail\nset -o errexit\nset +o noclobber\n");
    // Variables earlier stages wrote to the `$GITLAB_ENV` dotenv file (gitlab-runner 16.4+).
    s.push_str(GITLAB_ENV_SOURCE);
    if debug_trace {
        s.push_str("set -o xtrace\n");
    }
    for cmd in commands {
        s.push_str("printf '\\033[32;1m$ %s\\033[0;m\\n' ");
        s.push_str(&quote(&echo_text(cmd)));
        s.push('\n');
        s.push_str(cmd);
        if !cmd.ends_with('\n') {
            s.push('\n');
        }
    }
    s.push_str("exit 0\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_single_quotes() {
        assert_eq!(quote("a'b"), "'a'\\''b'");
        assert_eq!(quote("$(x) `y` \"z\""), "'$(x) `y` \"z\"'");
    }

    #[test]
    fn echo_text_collapses_multi_line() {
        assert_eq!(
            echo_text("echo a\necho b\n"),
            "echo a # collapsed multi-line command"
        );
        assert_eq!(echo_text("echo a\n"), "echo a");
    }

    #[test]
    fn script_has_errexit_and_echo_before_each_command() {
        let s = bash_script(&["echo 'hi'".into(), "false".into()], false);
        assert!(s.starts_with("set -o pipefail\nset -o errexit\n"));
        let echo = s.find("'echo '\\''hi'\\'''").expect("echo line");
        let cmd = s.find("\necho 'hi'\n").expect("command line");
        assert!(echo < cmd);
        assert!(s.ends_with("false\nexit 0\n"));
        assert!(s.find(GITLAB_ENV_SOURCE).expect("sources GITLAB_ENV") < echo);
        assert!(!s.contains("xtrace"));
        assert!(bash_script(&[], true).contains("set -o xtrace"));
    }
}
