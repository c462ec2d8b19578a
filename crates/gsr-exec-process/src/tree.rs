//! Finding and killing every process of a step.
//!
//! The step's shell leads its own process group, and `killpg` reaches every process that
//! stayed in it. Processes can leave the group (`setsid`, or `set -m` job control), so on
//! Linux this module also walks `/proc`: a process belongs to the step if it is in the
//! group, or was seen as a descendant of the step earlier ([`Tracker`]), or is a descendant
//! of one of those. A process that left the group *and* lost its parent before anyone
//! looked (a double-forking daemon) cannot be told apart from any other process and is out
//! of reach; containing those needs a cgroup or a PID namespace.
//!
//! Killing is done in two phases so that a step cannot outrun it by forking: first every
//! process found is stopped (`SIGSTOP`, which cannot be caught) and the tree re-read until
//! no new process shows up, then everything is killed (`SIGKILL`) and the tree is re-read
//! until nothing of the step is left alive.
//!
//! Without a readable `/proc` (not Linux), only the process group is killed, and `run_step`
//! cannot wait for its members to be gone; the pipe's end-of-file is then the only sign.
//!
//! Zombies count as dead: they hold no resources and no pipe ends, and some machines run
//! a PID 1 that never reaps orphans.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gsr_exec::CancellationToken;
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// A process identity that survives PID reuse: the PID plus its start time (in clock ticks
/// since boot, field 22 of `/proc/<pid>/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ProcId {
    pub(crate) pid: i32,
    pub(crate) start: u64,
}

/// The parts of `/proc/<pid>/stat` we need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcInfo {
    pub(crate) id: ProcId,
    pub(crate) ppid: i32,
    pub(crate) pgrp: i32,
    /// The session id (field 6).
    pub(crate) session: i32,
    /// Zombie (`Z`) or dead (`X`): exited, waiting to be reaped.
    pub(crate) exited: bool,
}

/// Parse one `/proc/<pid>/stat` line. The command name is in parentheses and may itself
/// contain spaces and parentheses, so fields are counted from the *last* `)`.
pub(crate) fn parse_stat(line: &str) -> Option<ProcInfo> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let pid = line[..open].trim().parse().ok()?;
    let rest: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let state = rest.first()?;
    Some(ProcInfo {
        id: ProcId {
            pid,
            start: rest.get(19)?.parse().ok()?,
        },
        ppid: rest.get(1)?.parse().ok()?,
        pgrp: rest.get(2)?.parse().ok()?,
        session: rest.get(3)?.parse().ok()?,
        exited: matches!(*state, "Z" | "X" | "x"),
    })
}

/// Every process visible in `/proc`. Processes that exit while we read are skipped.
pub(crate) fn snapshot() -> std::io::Result<Vec<ProcInfo>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) {
            if let Some(info) = parse_stat(&stat) {
                out.push(info);
            }
        }
    }
    Ok(out)
}

/// The live processes of a step: members of group `pgid`, the still-running `known`
/// processes, and all their descendants. Never includes PID 1 or the runner itself.
pub(crate) fn step_processes(
    procs: &[ProcInfo],
    pgid: i32,
    known: &HashSet<ProcId>,
) -> Vec<ProcInfo> {
    let me = i32::try_from(std::process::id()).unwrap_or(-1);
    let eligible = |p: &ProcInfo| !p.exited && p.id.pid != 1 && p.id.pid != me;
    let mut children: HashMap<i32, Vec<&ProcInfo>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut found: Vec<ProcInfo> = procs
        .iter()
        .filter(|p| eligible(p) && (p.pgrp == pgid || known.contains(&p.id)))
        .copied()
        .collect();
    let mut seen: HashSet<i32> = found.iter().map(|p| p.id.pid).collect();
    let mut i = 0;
    while i < found.len() {
        let pid = found[i].id.pid;
        for child in children.get(&pid).into_iter().flatten() {
            if eligible(child) && seen.insert(child.id.pid) {
                found.push(**child);
            }
        }
        i += 1;
    }
    found
}

async fn snapshot_async() -> Option<Vec<ProcInfo>> {
    match tokio::task::spawn_blocking(snapshot).await {
        Ok(Ok(procs)) => Some(procs),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot read /proc; relying on the process group only");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "/proc scan task failed");
            None
        }
    }
}

fn signal_all(pgid: i32, procs: &[ProcInfo], sig: Signal) {
    // ESRCH (nobody left in the group) is the normal case once the step is over.
    match killpg(Pid::from_raw(pgid), sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, signal = ?sig, error = %e, "killpg failed"),
    }
    for p in procs {
        let _ = kill(Pid::from_raw(p.id.pid), sig);
    }
}

/// How long [`kill_step`] keeps re-killing before it gives up on a process (one stuck in
/// uninterruptible sleep, typically on a dead network filesystem).
const KILL_PATIENCE: Duration = Duration::from_secs(10);
/// At most this many stop-and-rescan rounds before killing.
const FREEZE_ROUNDS: usize = 10;

/// Stop, then kill, every process of the step whose shell led group `pgid`, plus the
/// `known` escapees. Returns once none is left alive (`true`), or after [`KILL_PATIENCE`]
/// (`false`; the survivors are logged).
pub(crate) async fn kill_step(pgid: i32, mut known: HashSet<ProcId>) -> bool {
    // Phase 1: freeze. A stopped process cannot fork, so re-reading the tree after each
    // round finds every child created while we were signalling.
    let mut victims = Vec::new();
    for round in 0..FREEZE_ROUNDS {
        let Some(procs) = snapshot_async().await else {
            // No /proc: the process group is all we can reach.
            signal_all(pgid, &[], Signal::SIGKILL);
            return true;
        };
        victims = step_processes(&procs, pgid, &known);
        if victims.is_empty() {
            // Nothing of the step is alive, so nothing can fork either.
            return true;
        }
        let before = known.len();
        known.extend(victims.iter().map(|p| p.id));
        signal_all(pgid, &victims, Signal::SIGSTOP);
        if round > 0 && known.len() == before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // Phase 2: kill, until nothing of the step is alive.
    let deadline = tokio::time::Instant::now() + KILL_PATIENCE;
    loop {
        signal_all(pgid, &victims, Signal::SIGKILL);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let Some(procs) = snapshot_async().await else {
            return true;
        };
        victims = step_processes(&procs, pgid, &known);
        if victims.is_empty() {
            return true;
        }
        known.extend(victims.iter().map(|p| p.id));
        if tokio::time::Instant::now() >= deadline {
            let pids: Vec<i32> = victims.iter().map(|p| p.id.pid).collect();
            tracing::warn!(
                pgid,
                ?pids,
                "step processes survive SIGKILL; giving up on them"
            );
            return false;
        }
    }
}

/// Remembers, while a step runs, the processes that belong to it, so that one which left
/// the process group can still be killed after its parent (possibly the shell) has exited.
pub(crate) struct Tracker {
    found: Arc<Mutex<HashSet<ProcId>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Tracker {
    /// Start sampling the step whose shell leads group `pgid` every `interval`.
    pub(crate) fn start(pgid: i32, interval: Duration) -> Self {
        let found = Arc::new(Mutex::new(HashSet::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let found = Arc::clone(&found);
            let stop = stop.clone();
            async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let Some(procs) = snapshot_async().await else {
                        return;
                    };
                    let mut found = found.lock().expect("tracker lock");
                    // Replacing (not extending) the set drops processes that have exited,
                    // so it stays as small as the step's live process tree.
                    *found = step_processes(&procs, pgid, &found)
                        .into_iter()
                        .map(|p| p.id)
                        .collect();
                }
            }
        });
        Self { found, stop, task }
    }

    /// Stop sampling; the processes seen in the last sample.
    pub(crate) async fn stop(mut self) -> HashSet<ProcId> {
        self.stop.cancel();
        let _ = (&mut self.task).await;
        std::mem::take(&mut *self.found.lock().expect("tracker lock"))
    }
}

impl Drop for Tracker {
    /// Dropping a `JoinHandle` does not stop its task: without this, a `run_step` left
    /// early would leave the sampler scanning `/proc` forever.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32, pgrp: i32, exited: bool) -> ProcInfo {
        ProcInfo {
            id: ProcId {
                pid,
                start: pid as u64 * 10,
            },
            ppid,
            pgrp,
            session: 1,
            exited,
        }
    }

    #[test]
    fn parse_stat_handles_odd_command_names() {
        let line = "4242 (we ird) (x)) S 4000 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 100 18446744073709551615\n";
        let info = parse_stat(line).unwrap();
        assert_eq!(
            info.id,
            ProcId {
                pid: 4242,
                start: 987654
            }
        );
        assert_eq!(info.ppid, 4000);
        assert_eq!(info.pgrp, 4242);
        assert_eq!(info.session, 4242);
        assert!(!info.exited);
        let zombie = line.replace(")) S ", ")) Z ");
        assert!(parse_stat(&zombie).unwrap().exited);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn parse_stat_reads_our_own_process() {
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        let info = parse_stat(&own).unwrap();
        assert_eq!(info.id.pid as u32, std::process::id());
    }

    #[test]
    fn step_processes_follows_groups_known_escapees_and_children() {
        let procs = [
            p(1, 0, 1, false),
            p(100, 1, 100, false),   // the shell, group leader
            p(101, 100, 100, false), // a command
            p(102, 100, 102, false), // setsid child of the shell
            p(103, 102, 102, false), // its child
            p(104, 100, 100, true),  // zombie: already dead
            p(200, 1, 200, false),   // escapee seen earlier, parent gone
            p(201, 200, 200, false), // its child
            p(300, 1, 300, false),   // unrelated
            p(301, 300, 100, false), // joined our group: in
        ];
        let known = HashSet::from([ProcId {
            pid: 200,
            start: 2000,
        }]);
        let mut pids: Vec<i32> = step_processes(&procs, 100, &known)
            .iter()
            .map(|p| p.id.pid)
            .collect();
        pids.sort();
        assert_eq!(pids, vec![100, 101, 102, 103, 200, 201, 301]);

        // A reused PID (other start time) is not the process we knew.
        let reused = HashSet::from([ProcId { pid: 200, start: 1 }]);
        let pids: Vec<i32> = step_processes(&procs, 999, &reused)
            .iter()
            .map(|p| p.id.pid)
            .collect();
        assert!(pids.is_empty(), "{pids:?}");
    }
}
