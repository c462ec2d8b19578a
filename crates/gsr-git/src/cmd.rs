//! Running one `git` child process: a scrubbed environment, credentials through the
//! environment only, output streamed line by line into the job log with secrets redacted,
//! and failures turned into readable [`GitError`]s.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use gsr_exec::LogSink;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::remote::Credentials;
use crate::GitError;

/// Environment variables of the runner process that git children may see. Everything else
/// is dropped: the runner's own secrets must not reach git (or anything git runs, such as
/// a `--upload-pack` given in `GIT_FETCH_EXTRA_FLAGS`), and variables like `GIT_DIR`,
/// `GIT_CURL_VERBOSE` (prints `Authorization` headers) or `GIT_TRACE*` would change what
/// git does or prints.
pub(crate) const PASSED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "TMPDIR",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
    "GIT_CONFIG_GLOBAL",
    "GIT_CONFIG_SYSTEM",
    "GIT_CONFIG_NOSYSTEM",
];

/// Name of the variable that carries the job token to the credential helper.
const TOKEN_ENV: &str = "GSR_GIT_JOB_TOKEN";
/// Name of the variable that carries the user name to the credential helper.
const USER_ENV: &str = "GSR_GIT_USERNAME";

/// The credential helper: a shell function run by git with `get`/`store`/`erase`. It answers
/// `get` from the environment of the git process; `printf` is a shell builtin, so the token
/// never shows up in any process's argv.
const HELPER: &str = "!f() { test \"$1\" = get || return 0; \
printf 'username=%s\\npassword=%s\\n' \"${GSR_GIT_USERNAME}\" \"${GSR_GIT_JOB_TOKEN}\"; }; f";

/// How many lines of git's stderr an error message quotes.
const ERROR_LINES: usize = 6;
/// A partial line longer than this is written to the log without waiting for its end.
const MAX_PENDING: usize = 64 * 1024;

/// Replaces secrets in git's output before it reaches the log or an error message.
#[derive(Clone, Default)]
pub(crate) struct Redactor {
    needles: Vec<SecretString>,
}

impl Redactor {
    /// Secrets shorter than 4 bytes are not redacted (they would mangle the log and are
    /// not real tokens).
    pub(crate) fn new(secrets: impl IntoIterator<Item = SecretString>) -> Redactor {
        let needles = secrets
            .into_iter()
            .filter(|s| s.expose_secret().len() >= 4)
            .collect();
        Redactor { needles }
    }

    fn longest(&self) -> usize {
        self.needles
            .iter()
            .map(|n| n.expose_secret().len())
            .max()
            .unwrap_or(0)
    }

    pub(crate) fn redact(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        for needle in &self.needles {
            let needle = needle.expose_secret().as_bytes();
            if out.len() < needle.len() {
                continue;
            }
            let mut result = Vec::with_capacity(out.len());
            let mut i = 0;
            while i < out.len() {
                if out[i..].starts_with(needle) {
                    result.extend_from_slice(b"[MASKED]");
                    i += needle.len();
                } else {
                    result.push(out[i]);
                    i += 1;
                }
            }
            out = result;
        }
        out
    }

    pub(crate) fn redact_str(&self, s: &str) -> String {
        String::from_utf8_lossy(&self.redact(s.as_bytes())).into_owned()
    }
}

/// What a finished git process left behind.
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    /// Complete stdout when captured, else empty.
    pub(crate) stdout: Vec<u8>,
    /// The last lines of stderr, redacted.
    pub(crate) stderr_tail: Vec<String>,
}

/// A way to run git in one directory, with or without credentials and a log.
pub(crate) struct Git<'a> {
    pub(crate) dir: &'a Path,
    pub(crate) creds: Option<&'a Credentials>,
    pub(crate) log: Option<&'a dyn LogSink>,
    pub(crate) redactor: Redactor,
    /// Rewrite `git@<host>:` and `ssh://git@<host>/` URLs to the HTTPS remote (same-host
    /// submodules), so they get the job token instead of asking for an SSH key.
    pub(crate) rewrite_ssh: bool,
}

impl Git<'_> {
    fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new("git");
        cmd.current_dir(self.dir)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for key in PASSED_ENV {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        cmd.env("GIT_TERMINAL_PROMPT", "0")
            .env("GCM_INTERACTIVE", "Never")
            .env("GIT_LFS_SKIP_SMUDGE", "1");
        // Command-line configuration wins over anything a previous job may have written
        // into the repository's config: no user credential helper (it could store the token
        // on disk), no fsmonitor or hook program runs in the runner's context.
        cmd.args([
            "-c",
            "credential.helper=",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "core.hooksPath=/dev/null",
            // No "initial branch name" hint block in the trace (the checkout is detached anyway).
            "-c",
            "init.defaultBranch=main",
        ]);
        if let Some(creds) = self.creds {
            cmd.arg("-c")
                .arg(format!("credential.{}.helper={HELPER}", creds.scope))
                .env(USER_ENV, &creds.username)
                .env(TOKEN_ENV, creds.password.expose_secret());
            if self.rewrite_ssh {
                for from in [
                    format!("git@{}:", creds.host),
                    format!("ssh://git@{}/", creds.host),
                ] {
                    cmd.arg("-c")
                        .arg(format!("url.{}.insteadOf={from}", creds.base));
                }
            }
        }
        cmd.args(args);
        cmd
    }

    /// Run git, streaming stdout and stderr into the log; a non-zero exit is an error.
    pub(crate) async fn run<S: AsRef<OsStr>>(
        &self,
        what: &str,
        args: &[S],
    ) -> Result<Finished, GitError> {
        let done = self.spawn(args, false).await?;
        self.check(what, done)
    }

    /// Run git without logging anything; stdout is captured. The exit status is returned
    /// as is.
    pub(crate) async fn capture<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Finished, GitError> {
        self.spawn(args, true).await
    }

    /// Turn a non-zero exit into [`GitError::Command`].
    pub(crate) fn check(&self, what: &str, done: Finished) -> Result<Finished, GitError> {
        if done.status.success() {
            return Ok(done);
        }
        Err(GitError::Command {
            command: self.redactor.redact_str(what),
            status: describe(done.status),
            detail: done.stderr_tail.join("; "),
        })
    }

    async fn spawn<S: AsRef<OsStr>>(
        &self,
        args: &[S],
        capture: bool,
    ) -> Result<Finished, GitError> {
        let mut child = self.command(args).spawn().map_err(GitError::Spawn)?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = if capture { None } else { self.log };
        let mut captured = Vec::new();
        let mut out_tail = Tail::default();
        let mut err_tail = Tail::default();
        let (out, err, status) = tokio::join!(
            pump(
                stdout,
                log,
                &self.redactor,
                &mut out_tail,
                capture.then_some(&mut captured)
            ),
            pump(stderr, log, &self.redactor, &mut err_tail, None),
            child.wait(),
        );
        let io = |source| GitError::Io {
            context: "reading git output".into(),
            source,
        };
        out.map_err(io)?;
        err.map_err(io)?;
        let status = status.map_err(|source| GitError::Io {
            context: "waiting for git".into(),
            source,
        })?;
        let mut stderr_tail = err_tail.lines();
        if stderr_tail.is_empty() && !capture {
            stderr_tail = out_tail.lines();
        }
        Ok(Finished {
            status,
            stdout: captured,
            stderr_tail,
        })
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}

/// The last few non-empty lines of a stream.
#[derive(Default)]
struct Tail(VecDeque<String>);

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        for line in chunk.split(|b| *b == b'\n' || *b == b'\r') {
            let line = String::from_utf8_lossy(line);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if self.0.len() == ERROR_LINES {
                self.0.pop_front();
            }
            self.0.push_back(line.to_owned());
        }
    }

    fn lines(self) -> Vec<String> {
        self.0.into()
    }
}

/// Copy one output stream to the log, whole lines at a time so a secret is never split
/// between two writes (which would defeat the redaction).
async fn pump(
    mut reader: impl AsyncRead + Unpin,
    log: Option<&dyn LogSink>,
    redactor: &Redactor,
    tail: &mut Tail,
    mut capture: Option<&mut Vec<u8>>,
) -> std::io::Result<()> {
    let keep = redactor.longest().saturating_sub(1);
    let mut buf = vec![0u8; 8192];
    let mut pending: Vec<u8> = Vec::new();
    let emit = |bytes: &[u8], tail: &mut Tail| {
        if bytes.is_empty() {
            return;
        }
        tail.push(bytes);
        if let Some(log) = log {
            log.write(bytes);
        }
    };
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if let Some(capture) = capture.as_deref_mut() {
            capture.extend_from_slice(&buf[..n]);
        }
        pending.extend_from_slice(&buf[..n]);
        let redacted = redactor.redact(&pending);
        let cut = match redacted.iter().rposition(|b| *b == b'\n' || *b == b'\r') {
            Some(pos) => pos + 1,
            None if redacted.len() > MAX_PENDING => redacted.len() - keep,
            None => 0,
        };
        emit(&redacted[..cut], tail);
        pending = redacted[cut..].to_vec();
    }
    let rest = redactor.redact(&pending);
    emit(&rest, tail);
    Ok(())
}

/// Quote `s` for `sh` (used for `git submodule foreach` commands, which git runs through
/// the shell).
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_occurrence() {
        let r = Redactor::new([SecretString::from("s3cr3t-token")]);
        assert_eq!(
            r.redact_str("a s3cr3t-token b s3cr3t-tokens3cr3t-token"),
            "a [MASKED] b [MASKED][MASKED]"
        );
        let short = Redactor::new([SecretString::from("ab")]);
        assert_eq!(short.redact_str("abc"), "abc");
    }

    #[tokio::test]
    async fn pump_never_splits_a_secret() {
        let sink = gsr_exec::MemorySink::default();
        let r = Redactor::new([SecretString::from("TOPSECRETVALUE")]);
        // A long partial line forces a flush before its end.
        let mut input = vec![b'x'; MAX_PENDING + 5];
        input.extend_from_slice(b"TOPSECRETVALUE and more\nnext TOPSECRET");
        input.extend_from_slice(b"VALUE\r");
        let mut tail = Tail::default();
        pump(&input[..], Some(&sink), &r, &mut tail, None)
            .await
            .unwrap();
        let out = String::from_utf8(sink.contents()).unwrap();
        assert!(!out.contains("TOPSECRETVALUE"));
        assert!(out.ends_with("[MASKED] and more\nnext [MASKED]\r"));
        assert_eq!(tail.lines().last().unwrap(), "next [MASKED]");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("-ffdx"), "'-ffdx'");
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }
}
