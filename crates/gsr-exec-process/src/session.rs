//! One job on the local machine: running its steps.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gsr_exec::{CancellationToken, ExecutorError, LogSink, Session, StepOutcome, StepRequest};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::env::{step_env, BaseEnv};
use crate::registry::Record;
use crate::shell::Shell;
use crate::tree;

/// Output is read and handed to the [`LogSink`] in chunks of at most this many bytes.
pub const READ_CHUNK: usize = 64 * 1024;

/// After the step's processes are dead, how long we keep reading the output pipe. The pipe
/// reaches end-of-file as soon as the last process holding it is gone; only a process that
/// escaped the step (see the crate docs) can hold it longer, and we do not wait for it.
const DRAIN_GRACE: Duration = Duration::from_secs(3);

/// One job's environment on the local machine: its project dir and a private directory
/// for the step scripts. Made by [`ProcessExecutor::prepare_session`].
///
/// [`ProcessExecutor::prepare_session`]: crate::ProcessExecutor::prepare_session
#[derive(Debug)]
pub struct ProcessSession {
    pub(crate) shell: Shell,
    pub(crate) base_env: BaseEnv,
    pub(crate) tracking: Option<Duration>,
    pub(crate) project_dir: PathBuf,
    /// `None` once cleaned up.
    pub(crate) scripts: Option<tempfile::TempDir>,
    pub(crate) scripts_path: PathBuf,
    pub(crate) next_script: u64,
    /// This job's entry in the step registry, if the executor has one; deleted when
    /// dropped.
    pub(crate) record: Option<Record>,
}

impl ProcessSession {
    /// The job's project dir, as given to `prepare`.
    pub fn project_dir(&self) -> &Path {
        &self.project_dir
    }

    /// The private (mode 0700) directory step scripts are written to; removed by
    /// `cleanup`.
    pub fn scripts_dir(&self) -> &Path {
        &self.scripts_path
    }

    /// The shell that runs the steps.
    pub fn shell(&self) -> &Shell {
        &self.shell
    }

    async fn write_script(&mut self, step: &StepRequest) -> Result<PathBuf, ExecutorError> {
        use tokio::io::AsyncWriteExt;

        let dir = self.scripts.as_ref().ok_or_else(|| ExecutorError::Io {
            context: format!("running {}", step.stage),
            source: std::io::Error::other("the session was already cleaned up"),
        })?;
        self.next_script += 1;
        let stage: String = step
            .stage
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        let path = dir.path().join(format!("{}-{stage}.sh", self.next_script));
        let text = self.shell.script(&step.commands, step.debug_trace);
        let io = |source| ExecutorError::Io {
            context: format!("writing the script of {}", step.stage),
            source,
        };
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&path)
            .await
            .map_err(io)?;
        file.write_all(text.as_bytes()).await.map_err(io)?;
        // tokio writes in the background: make sure the bytes are in the file before the
        // shell opens it.
        file.flush().await.map_err(io)?;
        Ok(path)
    }

    async fn run_script(
        &self,
        script: &Path,
        step: &StepRequest,
        log: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, ExecutorError> {
        let io = |context: &str| {
            let context = format!("{context} for {}", step.stage);
            move |source| ExecutorError::Io { context, source }
        };

        // One pipe for stdout and stderr: the kernel keeps the order in which the step's
        // processes wrote, which two pipes read in turn could not.
        let (reader, writer) = std::io::pipe().map_err(io("creating the output pipe"))?;
        let writer2 = writer.try_clone().map_err(io("creating the output pipe"))?;
        let mut output = pipe::Receiver::from_owned_fd(OwnedFd::from(reader))
            .map_err(io("registering the output pipe"))?;

        let mut cmd = tokio::process::Command::new(self.shell.path());
        cmd.args(self.shell.args(script))
            .current_dir(&step.workdir)
            .env_clear()
            .envs(step_env(&step.env, &self.base_env))
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer2)
            // The shell leads a new process group: one `killpg` reaches everything it
            // starts, and the runner's own group is never hit.
            .process_group(0)
            .kill_on_drop(true);
        let spawned = cmd.spawn();
        // `cmd` still owns our copies of the pipe's write end. Close them now: end-of-file
        // must mean "no step process holds the pipe any more".
        drop(cmd);
        let mut child = spawned.map_err(|source| ExecutorError::Spawn {
            stage: step.stage.clone(),
            source,
        })?;
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .expect("a child that was never waited for has a pid");
        let mut guard = GroupGuard(Some(pgid));
        tracing::debug!(stage = %step.stage, pgid, "step started");
        if let Some(record) = &self.record {
            // Before anything else can go wrong: a runner that dies from here on leaves a
            // note for the next one to kill this group.
            record.step_started(pgid).await;
        }

        let tracker = self.tracking.map(|every| tree::Tracker::start(pgid, every));

        enum End {
            Exited(ExitStatus),
            WaitFailed(std::io::Error),
            TimedOut,
            Canceled,
        }
        let mut buf = vec![0u8; READ_CHUNK];
        let mut open = true;
        let deadline = tokio::time::sleep(step.timeout);
        tokio::pin!(deadline);
        let end = loop {
            tokio::select! {
                // Stopping conditions first: a step flooding its output must not delay them.
                biased;
                () = cancel.cancelled() => break End::Canceled,
                () = &mut deadline => break End::TimedOut,
                status = child.wait() => match status {
                    Ok(status) => break End::Exited(status),
                    Err(e) => break End::WaitFailed(e),
                },
                read = output.read(&mut buf), if open => match read {
                    Ok(0) => open = false,
                    Ok(n) => log.write(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!(stage = %step.stage, error = %e, "reading step output failed");
                        open = false;
                    }
                },
            }
        };

        // Whatever ended the step, nothing of it may outlive it (contract rule 1): on
        // timeout and cancel that is the whole step, after a normal exit it is whatever
        // the script left in the background (which would also hold the pipe open).
        let tracked = match tracker {
            Some(tracker) => tracker.stop().await,
            None => HashSet::new(),
        };
        let all_dead = tree::kill_step(pgid, tracked).await;
        if let (Some(record), true) = (&self.record, all_dead) {
            record.step_ended().await;
        }
        let outcome = match end {
            End::Exited(status) => Ok(StepOutcome::Exited(exit_code(status))),
            End::WaitFailed(e) => Err(io("waiting for the shell")(e)),
            End::TimedOut | End::Canceled => {
                // The shell was killed above; reap it.
                if let Err(e) = child.wait().await {
                    tracing::warn!(stage = %step.stage, error = %e, "reaping the killed shell failed");
                }
                Ok(if matches!(end, End::TimedOut) {
                    StepOutcome::TimedOut
                } else {
                    StepOutcome::Canceled
                })
            }
        };
        guard.0 = None;

        if open {
            drain(&mut output, &mut buf, log, &step.stage).await;
        }
        tracing::debug!(stage = %step.stage, ?outcome, "step finished");
        outcome
    }
}

/// Read what is left in the pipe, until end-of-file or [`DRAIN_GRACE`].
async fn drain(output: &mut pipe::Receiver, buf: &mut [u8], log: &dyn LogSink, stage: &str) {
    let until = tokio::time::Instant::now() + DRAIN_GRACE;
    loop {
        match tokio::time::timeout_at(until, output.read(buf)).await {
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => log.write(&buf[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => {
                tracing::warn!(stage, error = %e, "reading step output failed");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    stage,
                    "the output pipe is still held open by a process that escaped the step; \
                     no longer reading it"
                );
                return;
            }
        }
    }
}

/// The shell's exit code; a death by signal is reported as 128 + signal, as bash does.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|sig| 128 + sig))
        .unwrap_or(1)
}

/// Kills the step's process group if `run_step` is left early (its future dropped, or a
/// panic in the log sink), so that even then nothing of the step keeps running.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

#[async_trait::async_trait]
impl Session for ProcessSession {
    async fn run_step(
        &mut self,
        step: &StepRequest,
        log: Arc<dyn LogSink>,
        cancel: CancellationToken,
    ) -> Result<StepOutcome, ExecutorError> {
        if cancel.is_cancelled() {
            return Ok(StepOutcome::Canceled);
        }
        let script = self.write_script(step).await?;
        let result = self.run_script(&script, step, &*log, &cancel).await;
        // The shell reads its script as it goes, so it can only go once the shell is dead,
        // which `run_script` guarantees.
        if let Err(e) = tokio::fs::remove_file(&script).await {
            tracing::debug!(error = %e, "removing a step script failed");
        }
        result
    }

    async fn cleanup(&mut self) -> Result<(), ExecutorError> {
        // The record goes once the script dir is gone (or could not be removed: this
        // process lives on, nothing else would remove it later either).
        let _record = self.record.take();
        let Some(dir) = self.scripts.take() else {
            return Ok(());
        };
        let path = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || dir.close())
            .await
            .map_err(|e| ExecutorError::Io {
                context: format!("removing {}", path.display()),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| ExecutorError::Io {
                context: format!("removing {}", path.display()),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_bash() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
    }
}
