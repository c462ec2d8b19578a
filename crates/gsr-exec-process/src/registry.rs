//! The step registry: a note on disk of every job's running step, so that a runner started
//! after a crash can kill what the crashed runner left running.
//!
//! # Why
//!
//! A step's processes are killed by the runner that started them: when the step ends, is
//! cancelled or times out. A runner that dies without cleaning up (SIGKILL, OOM kill, a
//! panic with `panic = "abort"`) does none of that, and nothing ties the step's life to the
//! runner's: the shell leads its own process group (so that *we* can kill it, and so that
//! a terminal's Ctrl-C does not), so it is reparented to init and goes on. The command
//! running at the crash then works on unseen while GitLab already shows the job failed
//! (the control plane's recovery reports it), and a new job can be given the same builds
//! dir while the orphan still writes there. `PR_SET_PDEATHSIG` is no answer: it reaches only
//! the shell, not its children, fires when the spawning *thread* exits, and bash defers
//! signal handling while a foreground child runs.
//!
//! # What
//!
//! Like containers labelled with the runner that owns them, each job of a
//! [`ProcessExecutor`](crate::ProcessExecutor) given a registry dir
//! ([`with_step_registry`](crate::ProcessExecutor::with_step_registry)) has one small
//! record file there, `<script dir name>.step`, from `prepare` to `cleanup`:
//!
//! ```text
//! gsr-step-record 1
//! host <hostname>
//! boot <kernel boot id>
//! pidns <PID namespace of the owner>
//! owner <pid> <start time>
//! scripts <the job's step script dir>
//! group <pgid> <leader start time> <session id>   (only while a step runs)
//! ```
//!
//! Start times are field 22 of `/proc/<pid>/stat` (clock ticks since boot): a PID plus its
//! start time names one process for the whole uptime, so a reused PID is never mistaken
//! for the one recorded. The file is rewritten in place when a step starts and ends; a
//! runner killed by a signal loses nothing the kernel already has, so no `fsync` (a power
//! loss takes the processes with it).
//!
//! [`ProcessExecutor::reap_stale`](crate::ProcessExecutor::reap_stale), called once at
//! start-up, looks at every record:
//!
//! - **another host** (hostname differs; the builds dir is shared over the network): left
//!   alone, it is not ours to judge;
//! - **this host before a reboot** (boot id differs): its processes died with the boot;
//!   the script dir is removed and the record deleted;
//! - **another PID namespace** on this boot (another container): left alone — its
//!   processes are invisible from here, and its owner may be alive;
//! - **a live owner** (the PID exists with the recorded start time: another runner sharing
//!   this builds dir, or this very process): left alone;
//! - **a dead owner**: if the recorded group is still the one that was started (its leader
//!   has the recorded start time; or, with the leader gone, every member is in the
//!   recorded session and started no earlier than it), the group and everything that
//!   descends from it are stopped, then killed (as at the end of a step, see `tree.rs`);
//!   then the script dir is removed and the record deleted.
//!
//! Files that cannot be read as a record are removed once they are older than
//! [`GARBAGE_GRACE`] (a younger one may be a record being written). Reaping is
//! idempotent: a second pass finds nothing of a dead owner.
//!
//! # What it does not cover
//!
//! - A host or container that is gone took its processes with it; only its files remain
//!   (removed here after a reboot of the same host; a container restarted in a new PID
//!   namespace leaves its records and script dirs behind).
//! - The window between spawning a step's shell and writing its group to the record
//!   (microseconds): a crash there leaves that step unrecorded.
//! - Processes that left the group (`setsid`, double-fork) are found only as `/proc`
//!   descendants of the group while their parent lives; the escapees a running step's
//!   tracker had seen are not written down.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::tree::{self, ProcId, ProcInfo};

/// The registry's directory name under a builds dir, by convention of the `gsr` binary.
pub const STEP_REGISTRY_DIR: &str = ".gsr-steps";

/// A file in the registry that is not a readable record is removed once it is this old.
pub const GARBAGE_GRACE: Duration = Duration::from_secs(60);

const MAGIC: &str = "gsr-step-record 1";
const EXT: &str = "step";
/// Records are a few hundred bytes; anything much larger is not one.
const MAX_RECORD: u64 = 16 * 1024;
/// Only script dirs made by `prepare_session` are ever removed.
const SCRIPTS_PREFIX: &str = "gsr-job-";

/// What [`ProcessExecutor::reap_stale`](crate::ProcessExecutor::reap_stale) found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Records of owners that are gone, handled and deleted.
    pub stale: usize,
    /// The process groups killed (their former pgids).
    pub groups: Vec<i32>,
    /// Processes killed: group members and their descendants.
    pub processes: usize,
    /// Script dirs removed.
    pub dirs_removed: usize,
    /// Unreadable files removed.
    pub garbage_removed: usize,
    /// Records left alone: a live owner, another host or PID namespace, or a young
    /// unreadable file.
    pub left_alone: usize,
}

/// Where processes live: records from elsewhere cannot be judged by their PIDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Machine {
    pub(crate) host: String,
    pub(crate) boot: String,
    pub(crate) pidns: String,
}

impl Machine {
    pub(crate) fn current() -> Self {
        let read = |path: &str| word(&std::fs::read_to_string(path).unwrap_or_default());
        Self {
            host: read("/proc/sys/kernel/hostname"),
            boot: read("/proc/sys/kernel/random/boot_id"),
            pidns: word(
                &std::fs::read_link("/proc/self/ns/pid")
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
        }
    }
}

/// `s` as one non-empty word (records are whitespace-separated).
fn word(s: &str) -> String {
    let w: String = s
        .trim()
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    if w.is_empty() {
        "-".into()
    } else {
        w
    }
}

/// A step's process group as started: the shell (its leader) and its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Group {
    pub(crate) leader: ProcId,
    pub(crate) session: i32,
}

/// The contents of one record file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordData {
    pub(crate) machine: Machine,
    pub(crate) owner: ProcId,
    pub(crate) scripts: PathBuf,
    pub(crate) group: Option<Group>,
}

impl RecordData {
    pub(crate) fn render(&self) -> Vec<u8> {
        let m = &self.machine;
        let mut out = format!(
            "{MAGIC}\nhost {}\nboot {}\npidns {}\nowner {} {}\n",
            m.host, m.boot, m.pidns, self.owner.pid, self.owner.start
        )
        .into_bytes();
        out.extend_from_slice(b"scripts ");
        out.extend_from_slice(self.scripts.as_os_str().as_bytes());
        out.push(b'\n');
        if let Some(g) = self.group {
            out.extend_from_slice(
                format!("group {} {} {}\n", g.leader.pid, g.leader.start, g.session).as_bytes(),
            );
        }
        out
    }

    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        let mut lines = bytes.split(|&b| b == b'\n');
        if lines.next()? != MAGIC.as_bytes() {
            return None;
        }
        let (mut host, mut boot, mut pidns, mut owner, mut scripts, mut group) =
            (None, None, None, None, None, None);
        for line in lines.filter(|l| !l.is_empty()) {
            let split = line.iter().position(|&b| b == b' ')?;
            let (key, value) = (&line[..split], &line[split + 1..]);
            if key == b"scripts" {
                scripts = Some(PathBuf::from(OsStr::from_bytes(value)));
                continue;
            }
            let value = std::str::from_utf8(value).ok()?;
            let nums =
                || -> Option<Vec<i64>> { value.split(' ').map(|n| n.parse().ok()).collect() };
            match key {
                b"host" => host = Some(value.to_string()),
                b"boot" => boot = Some(value.to_string()),
                b"pidns" => pidns = Some(value.to_string()),
                b"owner" => match nums()?[..] {
                    [pid, start] => owner = Some(proc_id(pid, start)?),
                    _ => return None,
                },
                b"group" => match nums()?[..] {
                    [pid, start, session] => {
                        group = Some(Group {
                            leader: proc_id(pid, start)?,
                            session: i32::try_from(session).ok()?,
                        })
                    }
                    _ => return None,
                },
                _ => return None,
            }
        }
        let scripts = scripts?;
        Some(Self {
            machine: Machine {
                host: host?,
                boot: boot?,
                pidns: pidns?,
            },
            owner: owner?,
            scripts,
            group,
        })
    }
}

fn proc_id(pid: i64, start: i64) -> Option<ProcId> {
    let pid = i32::try_from(pid).ok().filter(|&p| p > 1)?;
    Some(ProcId {
        pid,
        start: u64::try_from(start).ok()?,
    })
}

/// This process as it appears in `/proc`, if it can be read.
fn own_identity() -> Option<ProcInfo> {
    tree::parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// The registry of one executor: where records go, and who we are.
#[derive(Debug)]
pub(crate) struct Registry {
    dir: PathBuf,
    machine: Machine,
    /// `None` without a readable `/proc`: nothing is recorded, nothing reaped.
    owner: Option<ProcId>,
}

impl Registry {
    pub(crate) fn new(dir: PathBuf) -> Self {
        let owner = own_identity().map(|p| p.id);
        if owner.is_none() {
            tracing::debug!("no readable /proc: the step registry is off");
        }
        Self {
            dir,
            machine: Machine::current(),
            owner,
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Record a new job whose step scripts go to `scripts`. A failure is logged and the
    /// job runs unrecorded: the registry is a safety net, not a reason to fail a job.
    pub(crate) fn register(&self, scripts: &Path) -> Option<Record> {
        let owner = self.owner?;
        let name = scripts.file_name()?;
        if name.as_bytes().contains(&b'\n') || scripts.as_os_str().as_bytes().contains(&b'\n') {
            tracing::warn!("the step script dir's path contains a newline; not recorded");
            return None;
        }
        let mut file_name = name.to_os_string();
        file_name.push(format!(".{EXT}"));
        let record = Record {
            path: self.dir.join(file_name),
            data: RecordData {
                machine: self.machine.clone(),
                owner,
                scripts: scripts.to_path_buf(),
                group: None,
            },
        };
        let written = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .and_then(|()| {
                use std::io::Write;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&record.path)?
                    .write_all(&record.data.render())
            });
        match written {
            Ok(()) => Some(record),
            Err(e) => {
                tracing::warn!(
                    path = %record.path.display(),
                    error = %e,
                    "cannot write the step record; a crash would leave this job's processes running"
                );
                None
            }
        }
    }

    /// See [`ProcessExecutor::reap_stale`](crate::ProcessExecutor::reap_stale).
    pub(crate) async fn reap(&self) -> ReapReport {
        let mut report = ReapReport::default();
        if self.owner.is_none() {
            return report;
        }
        let mut entries = match tokio::fs::read_dir(&self.dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return report,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the step registry");
                return report;
            }
        };
        let Ok(Ok(mut procs)) = tokio::task::spawn_blocking(tree::snapshot).await else {
            tracing::warn!("cannot read /proc; not reaping the step registry");
            return report;
        };
        loop {
            let entry = match entries.next_entry().await {
                Ok(Some(entry)) => entry,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "reading the step registry failed");
                    break;
                }
            };
            self.reap_one(&entry.path(), &mut procs, &mut report).await;
        }
        if report.stale + report.garbage_removed > 0 {
            tracing::info!(
                records = report.stale,
                groups = ?report.groups,
                processes = report.processes,
                dirs = report.dirs_removed,
                garbage = report.garbage_removed,
                left_alone = report.left_alone,
                "reaped the steps of runners that are gone"
            );
        } else {
            tracing::debug!(left_alone = report.left_alone, "no stale steps to reap");
        }
        report
    }

    async fn reap_one(&self, path: &Path, procs: &mut Vec<ProcInfo>, report: &mut ReapReport) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(record) = read_record(path).await else {
            garbage(path, &name, report).await;
            return;
        };
        let m = &record.machine;
        if m.host != self.machine.host {
            tracing::debug!(record = %name, "step record of another host; left alone");
            report.left_alone += 1;
            return;
        }
        if m.boot == self.machine.boot {
            if m.pidns != self.machine.pidns {
                tracing::debug!(record = %name, "step record of another PID namespace; left alone");
                report.left_alone += 1;
                return;
            }
            if is_alive(procs, record.owner) {
                report.left_alone += 1;
                return;
            }
            if let Some(group) = record.group {
                if group_is_ours(procs, group) {
                    let pgid = group.leader.pid;
                    let victims = tree::step_processes(procs, pgid, &HashSet::new()).len();
                    let all_dead = tree::kill_step(pgid, HashSet::new()).await;
                    if victims > 0 {
                        report.groups.push(pgid);
                        report.processes += victims;
                    }
                    tracing::info!(
                        record = %name,
                        pgid,
                        processes = victims,
                        owner = record.owner.pid,
                        all_dead,
                        "killed the step of a runner that is gone"
                    );
                    if let Ok(Ok(fresh)) = tokio::task::spawn_blocking(tree::snapshot).await {
                        *procs = fresh;
                    }
                } else {
                    tracing::debug!(
                        record = %name,
                        pgid = group.leader.pid,
                        "the recorded step group is gone (its id may be reused); nothing to kill"
                    );
                }
            }
        } else {
            tracing::info!(record = %name, "step record from before a reboot; its processes are gone");
        }
        let scripts = record.scripts.clone();
        match tokio::task::spawn_blocking(move || remove_scripts_dir(&scripts)).await {
            Ok(Ok(true)) => report.dirs_removed += 1,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(
                record = %name,
                dir = %record.scripts.display(),
                error = %e,
                "cannot remove the step script dir of a runner that is gone"
            ),
            Err(e) => tracing::warn!(error = %e, "script dir removal task failed"),
        }
        remove(path, &name).await;
        report.stale += 1;
    }
}

async fn read_record(path: &Path) -> Option<RecordData> {
    let meta = tokio::fs::symlink_metadata(path).await.ok()?;
    if !meta.is_file() || meta.len() > MAX_RECORD {
        return None;
    }
    if path.extension() != Some(OsStr::new(EXT)) {
        return None;
    }
    RecordData::parse(&tokio::fs::read(path).await.ok()?)
}

/// An unreadable entry: removed once old enough (a young one may be a record being
/// written), a directory only logged.
async fn garbage(path: &Path, name: &str, report: &mut ReapReport) {
    let Ok(meta) = tokio::fs::symlink_metadata(path).await else {
        return; // already gone
    };
    if meta.is_dir() {
        tracing::warn!(entry = %name, "unexpected directory in the step registry; left alone");
        report.left_alone += 1;
        return;
    }
    let age = meta
        .modified()
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    if age < GARBAGE_GRACE {
        report.left_alone += 1;
        return;
    }
    tracing::warn!(entry = %name, "removing an unreadable file from the step registry");
    remove(path, name).await;
    report.garbage_removed += 1;
}

async fn remove(path: &Path, name: &str) {
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(entry = %name, error = %e, "cannot remove a step record"),
    }
}

/// The process `id` is running (a zombie is an owner that is gone).
fn is_alive(procs: &[ProcInfo], id: ProcId) -> bool {
    procs.iter().any(|p| p.id == id && !p.exited)
}

/// Whether process group `group.leader.pid` is still the one that was recorded.
///
/// A PID is not handed out while a process group of that id has members, so: a leader
/// with the recorded start time (even a zombie) means the group is ours; a leader with
/// another start time means our group emptied before the PID was reused. With the leader
/// gone (a shell killed by SIGPIPE while its `sleep` goes on), the members are ours if each
/// is in the recorded session and started no earlier than the leader — a group made after
/// a reuse would have a leader younger than ours, but could only be told apart by its
/// session if it moved; we accept that rest of a risk for members of the same user.
fn group_is_ours(procs: &[ProcInfo], group: Group) -> bool {
    let pgid = group.leader.pid;
    if let Some(leader) = procs.iter().find(|p| p.id.pid == pgid) {
        return leader.id.start == group.leader.start;
    }
    procs
        .iter()
        .filter(|p| p.pgrp == pgid && !p.exited)
        .all(|p| p.session == group.session && p.id.start >= group.leader.start)
}

/// Remove a dead runner's step script dir, if it is one: an absolute path to a real
/// directory (not a symlink) named like the ones `prepare_session` makes and owned by us.
/// `Ok(false)`: nothing removed.
fn remove_scripts_dir(path: &Path) -> std::io::Result<bool> {
    let named_like_ours = path
        .file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|n| n.starts_with(SCRIPTS_PREFIX));
    if !path.is_absolute() || !named_like_ours {
        tracing::warn!(dir = %path.display(), "not a step script dir; not removed");
        return Ok(false);
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        tracing::warn!(dir = %path.display(), "not our step script dir; not removed");
        return Ok(false);
    }
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(true),
        // Another runner starting at the same time got there first.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// One job's record, deleted when dropped (the session is cleaned up or dropped).
#[derive(Debug)]
pub(crate) struct Record {
    path: PathBuf,
    data: RecordData,
}

impl Record {
    /// The shell of a step was spawned as leader of group `pgid`.
    pub(crate) async fn step_started(&self, pgid: i32) {
        let stat = tokio::fs::read_to_string(format!("/proc/{pgid}/stat")).await;
        let Some(leader) = stat.ok().and_then(|s| tree::parse_stat(&s)) else {
            tracing::warn!(
                pgid,
                "cannot read the step shell's /proc entry; step not recorded"
            );
            return;
        };
        self.write(Some(Group {
            leader: leader.id,
            session: leader.session,
        }))
        .await;
    }

    /// The step's processes are all gone.
    pub(crate) async fn step_ended(&self) {
        self.write(None).await;
    }

    async fn write(&self, group: Option<Group>) {
        use tokio::io::AsyncWriteExt;
        let data = RecordData {
            group,
            ..self.data.clone()
        };
        let result = async {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&self.path)
                .await?;
            file.write_all(&data.render()).await?;
            file.flush().await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot update the step record");
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the step record");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use gsr_exec::{
        CancellationToken, MemorySink, PrepareRequest, Session, StepOutcome, StepRequest,
    };
    use tokio::process::{Child, Command};

    use super::*;

    /// A hang guard, not a timing assertion.
    const PATIENCE: Duration = Duration::from_secs(60);

    fn stat(pid: i32) -> Option<ProcInfo> {
        tree::parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    fn running(pid: i32) -> bool {
        stat(pid).is_some_and(|p| !p.exited)
    }

    /// A process that existed and is gone: a child, looked at before it is reaped.
    async fn dead_owner() -> ProcId {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id().unwrap()).unwrap();
        let id = stat(pid).unwrap().id;
        child.wait().await.unwrap();
        id
    }

    fn me() -> ProcId {
        own_identity().unwrap().id
    }

    /// `sh` leading its own group, with a `sleep` child in the group and one that left it
    /// with `setsid` (its pid written to `escapee`).
    fn step_group(escapee: &Path) -> (Child, Group) {
        let child = Command::new("sh")
            .arg("-c")
            .arg("setsid sleep 60 & echo $! > \"$1\"; sleep 60 & wait")
            .arg("sh")
            .arg(escapee)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let leader = stat(i32::try_from(child.id().unwrap()).unwrap()).unwrap();
        let group = Group {
            leader: leader.id,
            session: leader.session,
        };
        (child, group)
    }

    /// Kill what [`step_group`] started.
    async fn end(shell: &mut Child, group: Group, escapee: i32) {
        use nix::sys::signal::{kill, killpg, Signal};
        use nix::unistd::Pid;
        let _ = killpg(Pid::from_raw(group.leader.pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(escapee), Signal::SIGKILL);
        let _ = shell.wait().await;
    }

    async fn pid_in(file: &Path) -> i32 {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let text = std::fs::read_to_string(file).unwrap_or_default();
                if let Ok(pid) = text.trim().parse::<i32>() {
                    // Wait until it has left the group.
                    if stat(pid).is_some_and(|p| p.session == pid) {
                        return pid;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the escapee starts")
    }

    /// A scripts dir named like `prepare_session`'s, with a script in it.
    fn scripts_dir(parent: &Path, name: &str) -> PathBuf {
        let dir = parent.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("1-step_script.sh"), "sleep 60\n").unwrap();
        dir
    }

    fn write_record(registry: &Registry, name: &str, data: &RecordData) -> PathBuf {
        std::fs::create_dir_all(registry.dir()).unwrap();
        let path = registry.dir().join(name);
        std::fs::write(&path, data.render()).unwrap();
        path
    }

    fn record(owner: ProcId, scripts: PathBuf, group: Option<Group>) -> RecordData {
        RecordData {
            machine: Machine::current(),
            owner,
            scripts,
            group,
        }
    }

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let data = RecordData {
            machine: Machine {
                host: "h".into(),
                boot: "b".into(),
                pidns: "pid:[4026531836]".into(),
            },
            owner: ProcId { pid: 10, start: 20 },
            scripts: PathBuf::from("/tmp/a dir/gsr-job-1-x"),
            group: Some(Group {
                leader: ProcId { pid: 30, start: 40 },
                session: 5,
            }),
        };
        let text = data.render();
        assert_eq!(
            String::from_utf8_lossy(&text),
            "gsr-step-record 1\nhost h\nboot b\npidns pid:[4026531836]\nowner 10 20\n\
             scripts /tmp/a dir/gsr-job-1-x\ngroup 30 40 5\n"
        );
        assert_eq!(RecordData::parse(&text), Some(data.clone()));
        let no_group = RecordData {
            group: None,
            ..data.clone()
        };
        assert_eq!(RecordData::parse(&no_group.render()), Some(no_group));

        assert_eq!(RecordData::parse(b""), None);
        assert_eq!(RecordData::parse(b"\x00\xff garbage"), None);
        // Cut short (a write interrupted by a crash) or tampered with.
        for cut in [20, 40, 60] {
            assert_eq!(RecordData::parse(&text[..cut]), None, "{cut}");
        }
        let text = String::from_utf8(text).unwrap();
        for bad in [
            text.replace("owner 10 20", "owner 10"),
            text.replace("owner 10 20", "owner 1 20"),
            text.replace("owner 10 20", "owner -3 20"),
            text.replace("group 30 40 5", "group 30 x 5"),
            text.replace("host h", "hostname h"),
            text.replace("gsr-step-record 1", "gsr-step-record 2"),
        ] {
            assert_eq!(RecordData::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_dead_owners_group_and_its_descendants_are_killed_and_its_dir_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let registry = Registry::new(tmp.path().join("reg"));
        let escapee_file = tmp.path().join("escapee");
        let (mut shell, group) = step_group(&escapee_file);
        let escapee = pid_in(&escapee_file).await;
        let scripts = scripts_dir(tmp.path(), "gsr-job-7-abcdef");
        let path = write_record(
            &registry,
            "gsr-job-7-abcdef.step",
            &record(dead_owner().await, scripts.clone(), Some(group)),
        );

        let report = registry.reap().await;

        let status = tokio::time::timeout(PATIENCE, shell.wait())
            .await
            .expect("the group is killed")
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status:?}");
        assert!(!running(escapee), "the setsid child is killed too");
        assert_eq!(report.stale, 1, "{report:?}");
        assert_eq!(report.groups, vec![group.leader.pid]);
        // The shell, its sleep, the escapee.
        assert!(report.processes >= 3, "{report:?}");
        assert_eq!(report.dirs_removed, 1);
        assert!(!scripts.exists());
        assert!(!path.exists());

        // Idempotent.
        assert_eq!(registry.reap().await, ReapReport::default());
    }

    #[tokio::test]
    async fn a_live_owners_record_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let registry = Registry::new(tmp.path().join("reg"));
        let escapee_file = tmp.path().join("escapee");
        let (mut shell, group) = step_group(&escapee_file);
        let escapee = pid_in(&escapee_file).await;
        let scripts = scripts_dir(tmp.path(), "gsr-job-8-abcdef");
        let path = write_record(
            &registry,
            "gsr-job-8-abcdef.step",
            &record(me(), scripts.clone(), Some(group)),
        );

        let report = registry.reap().await;

        assert_eq!(
            report,
            ReapReport {
                left_alone: 1,
                ..ReapReport::default()
            }
        );
        assert!(running(group.leader.pid));
        assert!(running(escapee));
        assert!(scripts.exists());
        assert!(path.exists());
        end(&mut shell, group, escapee).await;
    }

    #[tokio::test]
    async fn reused_pids_are_not_the_recorded_processes() {
        let tmp = tempfile::tempdir().unwrap();
        let registry = Registry::new(tmp.path().join("reg"));
        let escapee_file = tmp.path().join("escapee");
        let (mut shell, group) = step_group(&escapee_file);
        let escapee = pid_in(&escapee_file).await;
        // The owner's PID is ours, but with another start time: the owner is gone and
        // its PID was reused (by us). The group's leader PID likewise belongs to a younger
        // process than the one recorded: not the recorded group.
        let mut owner = me();
        owner.start += 1;
        let mut reused = group;
        reused.leader.start = reused.leader.start.saturating_sub(1);
        let scripts = scripts_dir(tmp.path(), "gsr-job-9-abcdef");
        let path = write_record(
            &registry,
            "gsr-job-9-abcdef.step",
            &record(owner, scripts.clone(), Some(reused)),
        );

        let report = registry.reap().await;

        assert_eq!(report.stale, 1, "{report:?}");
        assert!(report.groups.is_empty(), "{report:?}");
        assert_eq!(report.processes, 0);
        assert!(running(group.leader.pid), "a reused pgid is never killed");
        assert!(running(escapee));
        assert!(!scripts.exists());
        assert!(!path.exists());
        end(&mut shell, group, escapee).await;
    }

    #[tokio::test]
    async fn a_group_whose_leader_died_is_killed_if_its_members_are_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let registry = Registry::new(tmp.path().join("reg"));
        // The leader exits at once, leaving its `sleep` in the group (as a shell killed
        // by SIGPIPE leaves its foreground command).
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg("sleep 60 & echo $! > \"$1\"")
            .arg("sh")
            .arg(tmp.path().join("member"))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let leader = stat(i32::try_from(shell.id().unwrap()).unwrap()).unwrap();
        let group = Group {
            leader: leader.id,
            session: leader.session,
        };
        let member = tokio::time::timeout(PATIENCE, async {
            loop {
                let text = std::fs::read_to_string(tmp.path().join("member")).unwrap_or_default();
                if let Ok(pid) = text.trim().parse::<i32>() {
                    return pid;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        shell.wait().await.unwrap();
        assert!(running(member));
        assert!(stat(leader.id.pid).is_none_or(|p| p.id != leader.id));

        // Recorded in another session: the members are not taken for ours.
        let other = Group {
            session: group.session + 1,
            ..group
        };
        let path = write_record(
            &registry,
            "gsr-job-10-a.step",
            &record(
                dead_owner().await,
                tmp.path().join("gsr-job-10-a"),
                Some(other),
            ),
        );
        let report = registry.reap().await;
        assert!(report.groups.is_empty(), "{report:?}");
        assert!(running(member));
        assert!(!path.exists());

        let path = write_record(
            &registry,
            "gsr-job-10-b.step",
            &record(
                dead_owner().await,
                tmp.path().join("gsr-job-10-b"),
                Some(group),
            ),
        );
        let report = registry.reap().await;
        assert_eq!(report.groups, vec![group.leader.pid], "{report:?}");
        assert_eq!(report.processes, 1);
        assert!(!running(member));
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn garbage_and_foreign_records_are_handled() {
        let tmp = tempfile::tempdir().unwrap();
        let registry = Registry::new(tmp.path().join("reg"));
        let dir = registry.dir().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let old = SystemTime::now() - 2 * GARBAGE_GRACE;
        let aged = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(old)
                .unwrap();
            path
        };
        let old_garbage = aged("gsr-job-1-x.step", b"\xff\x00 not a record");
        let old_empty = aged("gsr-job-2-x.step", b"");
        let stray = aged("notes.txt", b"hello");
        let young = dir.join("gsr-job-3-x.step");
        std::fs::write(&young, b"gsr-step-record 1\nhost").unwrap();
        std::fs::create_dir(dir.join("subdir")).unwrap();

        // Another host's record: left alone, whoever owns it.
        let mut elsewhere = record(
            dead_owner().await,
            scripts_dir(tmp.path(), "gsr-job-4-x"),
            None,
        );
        elsewhere.machine.host = format!("{}-other", elsewhere.machine.host);
        let elsewhere = write_record(&registry, "gsr-job-4-x.step", &elsewhere);
        // Another PID namespace on this boot: left alone.
        let mut container = record(
            dead_owner().await,
            scripts_dir(tmp.path(), "gsr-job-5-x"),
            None,
        );
        container.machine.pidns = "pid:[1]".into();
        let container = write_record(&registry, "gsr-job-5-x.step", &container);
        // This host before a reboot: nothing to kill, the files go. The recorded group
        // is a live process of ours and must not be touched.
        let (mut shell, group) = step_group(&tmp.path().join("escapee"));
        let escapee = pid_in(&tmp.path().join("escapee")).await;
        let rebooted_dir = scripts_dir(tmp.path(), "gsr-job-6-x");
        let mut rebooted = record(me(), rebooted_dir.clone(), Some(group));
        rebooted.machine.boot = format!("{}-before", rebooted.machine.boot);
        let rebooted = write_record(&registry, "gsr-job-6-x.step", &rebooted);
        // A dead owner whose recorded dir is not a step script dir: not removed.
        let precious = tmp.path().join("precious");
        std::fs::create_dir(&precious).unwrap();
        let forged = write_record(
            &registry,
            "gsr-job-7-x.step",
            &record(dead_owner().await, precious.clone(), None),
        );

        let report = registry.reap().await;

        assert_eq!(report.garbage_removed, 3, "{report:?}");
        assert!(!old_garbage.exists() && !old_empty.exists() && !stray.exists());
        assert!(young.exists(), "a young file may be a record being written");
        assert!(dir.join("subdir").is_dir());
        assert!(elsewhere.exists() && container.exists());
        assert!(tmp.path().join("gsr-job-4-x").exists());
        assert!(tmp.path().join("gsr-job-5-x").exists());
        assert!(!rebooted.exists() && !rebooted_dir.exists());
        assert!(running(group.leader.pid) && running(escapee));
        assert!(!forged.exists() && precious.is_dir());
        assert_eq!(report.stale, 2, "{report:?}");
        assert_eq!(report.dirs_removed, 1, "{report:?}");
        assert!(report.groups.is_empty());
        // young, subdir, elsewhere, container.
        assert_eq!(report.left_alone, 4, "{report:?}");

        // Again: the same verdicts on what is left.
        let again = registry.reap().await;
        assert_eq!(
            again,
            ReapReport {
                left_alone: 4,
                ..ReapReport::default()
            }
        );
        end(&mut shell, group, escapee).await;
    }

    #[tokio::test]
    async fn a_running_step_is_recorded_and_reaped_once_its_owner_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let reg_dir = tmp.path().join("reg");
        let exec = crate::ProcessExecutor::new().with_step_registry(&reg_dir);
        assert_eq!(exec.step_registry(), Some(reg_dir.as_path()));
        let project = tmp.path().join("project");
        std::fs::create_dir(&project).unwrap();
        let mut session = exec
            .prepare_session(&PrepareRequest {
                job_id: 11,
                builds_dir: tmp.path().to_path_buf(),
                project_dir: project.clone(),
                image: None,
            })
            .unwrap();
        let scripts = session.scripts_dir().to_path_buf();
        let mut name = scripts.file_name().unwrap().to_os_string();
        name.push(".step");
        let own = reg_dir.join(&name);
        let data = RecordData::parse(&std::fs::read(&own).unwrap()).unwrap();
        assert_eq!(data.owner, me());
        assert_eq!(data.scripts, scripts);
        assert_eq!(data.group, None);

        let step = StepRequest {
            stage: "step_script".into(),
            commands: vec!["sleep 60 & sleep 60".into()],
            env: Vec::new(),
            workdir: project,
            timeout: Duration::from_secs(300),
            debug_trace: false,
        };
        let running_step = tokio::spawn(async move {
            let outcome = session
                .run_step(
                    &step,
                    Arc::new(MemorySink::default()),
                    CancellationToken::new(),
                )
                .await;
            (session, outcome)
        });
        let group = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(group) = std::fs::read(&own)
                    .ok()
                    .and_then(|b| RecordData::parse(&b))
                    .and_then(|d| d.group)
                {
                    return group;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the step's group is recorded");
        assert!(running(group.leader.pid));

        // Our own record is left alone...
        assert_eq!(exec.reap_stale().await.groups, Vec::<i32>::new());
        assert!(running(group.leader.pid));
        // ...but the same step recorded by a runner that is gone is killed.
        let stale = RecordData {
            owner: dead_owner().await,
            scripts: tmp.path().join("gsr-job-11-gone"),
            group: Some(group),
            ..data
        };
        std::fs::write(reg_dir.join("gsr-job-11-gone.step"), stale.render()).unwrap();
        let report = exec.reap_stale().await;
        assert_eq!(report.groups, vec![group.leader.pid], "{report:?}");
        assert_eq!(report.stale, 1);

        let (mut session, outcome) = tokio::time::timeout(PATIENCE, running_step)
            .await
            .expect("the step ends")
            .unwrap();
        assert_eq!(outcome.unwrap(), StepOutcome::Exited(137));
        let data = RecordData::parse(&std::fs::read(&own).unwrap()).unwrap();
        assert_eq!(data.group, None, "the step's end is recorded");
        session.cleanup().await.unwrap();
        assert!(!own.exists(), "cleanup removes the record");
        assert!(!scripts.exists());
    }
}
