//! Which shell runs a step, and the script it is given.
//!
//! The script itself comes from [`gsr_exec::script::bash_script`], the one builder every
//! bash backend shares. When no bash is installed we fall back to POSIX `sh`, which may not
//! know `set -o pipefail` (dash before 0.5.12 rejects it and, as a special-builtin error,
//! would abort the script). [`sh_script`] adapts the bash script for that case instead of
//! writing a second builder.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The dialect of the shell that runs steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShellKind {
    /// GNU bash: run as `bash --noprofile --norc <script>`, with pipefail.
    Bash,
    /// A POSIX `sh`: run as `sh <script>`; pipefail only if the shell knows it.
    Sh,
}

/// A shell binary and its dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shell {
    path: PathBuf,
    kind: ShellKind,
}

impl Shell {
    /// A shell at `path`; its dialect is guessed from the file name (`bash*` is bash,
    /// anything else is treated as POSIX `sh`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let is_bash = path
            .file_name()
            .and_then(OsStr::to_str)
            .is_some_and(|name| name.starts_with("bash"));
        let kind = if is_bash {
            ShellKind::Bash
        } else {
            ShellKind::Sh
        };
        Self { path, kind }
    }

    /// A shell with an explicit dialect.
    pub fn with_kind(path: impl Into<PathBuf>, kind: ShellKind) -> Self {
        Self {
            path: path.into(),
            kind,
        }
    }

    /// `bash` if one is on `path_var` (a `PATH`-style list), else `sh` from it, else
    /// `/bin/sh`. The lookup is done here rather than through `/usr/bin/env` so that the
    /// shell is chosen once, by the runner, from the runner's `PATH`.
    pub fn detect(path_var: Option<&OsStr>) -> Self {
        if let Some(bash) = find_in_path("bash", path_var) {
            return Self::with_kind(bash, ShellKind::Bash);
        }
        let sh = find_in_path("sh", path_var).unwrap_or_else(|| PathBuf::from("/bin/sh"));
        Self::with_kind(sh, ShellKind::Sh)
    }

    /// The shell binary.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The shell's dialect.
    pub fn kind(&self) -> ShellKind {
        self.kind
    }

    /// The script for one step, in this shell's dialect.
    pub fn script(&self, commands: &[String], debug_trace: bool) -> String {
        match self.kind {
            ShellKind::Bash => gsr_exec::script::bash_script(commands, debug_trace),
            ShellKind::Sh => sh_script(commands, debug_trace),
        }
    }

    /// The arguments that make the shell run `script` without reading any startup file.
    pub fn args(&self, script: &Path) -> Vec<OsString> {
        let mut args = Vec::with_capacity(3);
        if self.kind == ShellKind::Bash {
            args.push("--noprofile".into());
            args.push("--norc".into());
        }
        args.push(script.into());
        args
    }
}

/// The first executable regular file called `name` in a `PATH`-style list.
pub fn find_in_path(name: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path_var?)
        // An empty entry means the current directory; a runner must not pick its shell
        // from wherever it happens to run.
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The line `sh` gets instead of `set -o pipefail`: turn it on only if the shell knows it.
/// The probe runs in a subshell, so an "illegal option" error cannot end the script.
pub const SH_PIPEFAIL: &str = "if (set -o pipefail) 2>/dev/null; then set -o pipefail; fi";

/// [`gsr_exec::script::bash_script`] adapted for a POSIX `sh`.
///
/// Only the script's preamble (the leading `set …` lines, before the first command's echo
/// line) is touched: a `set -o pipefail` there becomes [`SH_PIPEFAIL`]. The user's commands
/// are left exactly as written.
pub fn sh_script(commands: &[String], debug_trace: bool) -> String {
    let bash = gsr_exec::script::bash_script(commands, debug_trace);
    let mut out = String::with_capacity(bash.len() + SH_PIPEFAIL.len());
    let mut in_preamble = true;
    for line in bash.split_inclusive('\n') {
        if in_preamble && !line.starts_with("set ") {
            in_preamble = false;
        }
        if in_preamble && line.trim_end() == "set -o pipefail" {
            out.push_str(SH_PIPEFAIL);
            out.push('\n');
        } else {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_script_only_rewrites_the_preamble() {
        let cmds = vec!["echo a".to_string(), "set -o pipefail\necho b".to_string()];
        let s = sh_script(&cmds, true);
        assert!(s.starts_with(SH_PIPEFAIL), "{s}");
        assert_eq!(s.matches(SH_PIPEFAIL).count(), 1);
        // The user's own `set -o pipefail` is theirs to keep.
        assert!(s.contains("\nset -o pipefail\necho b\n"), "{s}");
        assert!(s.contains("set -o errexit\n"));
        assert!(s.contains("set -o xtrace\n"));
        assert_eq!(
            s.replace(SH_PIPEFAIL, "set -o pipefail"),
            gsr_exec::script::bash_script(&cmds, true)
        );
    }

    #[test]
    fn kind_is_guessed_from_the_file_name() {
        assert_eq!(Shell::new("/usr/bin/bash").kind(), ShellKind::Bash);
        assert_eq!(Shell::new("/opt/bash5").kind(), ShellKind::Bash);
        assert_eq!(Shell::new("/bin/sh").kind(), ShellKind::Sh);
        assert_eq!(Shell::new("/bin/dash").kind(), ShellKind::Sh);
    }

    #[test]
    fn args_skip_startup_files_for_bash() {
        let script = Path::new("/tmp/x.sh");
        assert_eq!(
            Shell::new("/bin/bash").args(script),
            vec![
                OsString::from("--noprofile"),
                "--norc".into(),
                "/tmp/x.sh".into()
            ]
        );
        assert_eq!(
            Shell::new("/bin/sh").args(script),
            vec![OsString::from("/tmp/x.sh")]
        );
    }

    #[test]
    fn detect_searches_only_the_given_path() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("bash");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        // Not executable: skipped.
        let path_var = OsString::from(dir.path());
        assert_eq!(find_in_path("bash", Some(&path_var)), None);
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let shell = Shell::detect(Some(&path_var));
        assert_eq!(shell, Shell::with_kind(&fake, ShellKind::Bash));
        // Relative entries are ignored.
        assert_eq!(find_in_path("bash", Some(OsStr::new("."))), None);
        // Nothing found: /bin/sh.
        let empty = tempfile::tempdir().unwrap();
        let shell = Shell::detect(Some(empty.path().as_os_str()));
        assert_eq!(shell.path(), Path::new("/bin/sh"));
        assert_eq!(shell.kind(), ShellKind::Sh);
    }
}
