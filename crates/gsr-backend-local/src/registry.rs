//! The job registry: one small record per running job, and a lock file per claimer, so a
//! new backend instance can tell leftovers of a dead claimer from jobs of a live one.
//!
//! # Layout (under the backend root)
//!
//! ```text
//! registry/claimer-<pid>-<nonce>.lock   held (flock, exclusive) by a live backend instance
//! registry/<job>-<nonce>.job            one record per job, from start to cleanup
//! jobs/<job>-<nonce>/                   the job's dir: builds/, tmp/, home/
//! ```
//!
//! # Why a lock file and not a PID
//!
//! A claimer is alive exactly as long as it holds its lock: the kernel drops an `flock`
//! when the last descriptor of the open file goes, whether the process exited, was
//! SIGKILLed or OOM-killed, or the backend instance was dropped (which also makes the
//! "claimer crash" testable inside one test process). The descriptor is close-on-exec, so
//! no job inherits it. A PID would need its start time to survive reuse and could not tell
//! two backend instances of one process apart.
//!
//! # Record
//!
//! ```text
//! gsr-local-job 1
//! host <hostname>
//! boot <kernel boot id>
//! claimer <lock file name>
//! exec <pid> <start time>        the process the backend started (gsr exec, or bwrap); its own group
//! label <key>=<value>            the Launch labels (gsr.claimer, gsr.job, …)
//! dir <job dir>                  last: the rest of the line is the path
//! ```
//!
//! # Reaping
//!
//! [`reap`] looks at every record: another host's (a shared root) is left alone; one of
//! this host before a reboot has no processes left, so its dir and record go; one whose
//! claimer lock can be taken belongs to a dead claimer: its process group is killed if it
//! is still the recorded one (PID and start time), the steps `gsr exec` recorded in the
//! job's builds dir are killed (`gsr_exec_process` step registry: those run in process
//! groups of their own), then the dir and the record are removed. A record whose claimer
//! holds its lock is left alone. Unreadable records older than a minute are removed.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;

use crate::procs;

const MAGIC: &str = "gsr-local-job 1";
const GARBAGE_GRACE: Duration = Duration::from_secs(60);

/// Where a claimer's lock and the records live.
pub(crate) const REGISTRY_DIR: &str = "registry";
/// Where the job dirs live.
pub(crate) const JOBS_DIR: &str = "jobs";

/// A held claimer lock: this backend instance is alive while it exists.
#[derive(Debug)]
pub(crate) struct ClaimerLock {
    pub(crate) name: String,
    _lock: Flock<File>,
}

impl ClaimerLock {
    pub(crate) fn acquire(registry: &Path) -> std::io::Result<Self> {
        let name = format!(
            "claimer-{}-{:016x}.lock",
            std::process::id(),
            rand::random::<u64>()
        );
        let file = File::create(registry.join(&name))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| std::io::Error::from(e))?;
        Ok(Self { name, _lock: lock })
    }
}

/// Where the processes of a record ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Machine {
    pub(crate) host: String,
    pub(crate) boot: String,
}

impl Machine {
    pub(crate) fn current() -> Self {
        Self {
            host: procs::read_word(Path::new("/proc/sys/kernel/hostname")),
            boot: procs::read_word(Path::new("/proc/sys/kernel/random/boot_id")),
        }
    }
}

/// One job's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) machine: Machine,
    pub(crate) claimer: String,
    pub(crate) exec: Option<(i32, u64)>,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) dir: PathBuf,
}

/// Labels are plain text; whitespace and `=` in them would break the line format.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_whitespace() || c == '=' {
                '_'
            } else {
                c
            }
        })
        .collect()
}

impl Record {
    pub(crate) fn render(&self) -> String {
        let mut s = format!(
            "{MAGIC}\nhost {}\nboot {}\nclaimer {}\n",
            self.machine.host, self.machine.boot, self.claimer
        );
        if let Some((pid, start)) = self.exec {
            s.push_str(&format!("exec {pid} {start}\n"));
        }
        for (k, v) in &self.labels {
            s.push_str(&format!("label {}={}\n", clean(k), clean(v)));
        }
        s.push_str(&format!("dir {}\n", self.dir.display()));
        s
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let (mut host, mut boot, mut claimer, mut exec, mut dir) = (None, None, None, None, None);
        let mut labels = Vec::new();
        for line in lines {
            let (key, value) = line.split_once(' ')?;
            match key {
                "host" => host = Some(value.to_string()),
                "boot" => boot = Some(value.to_string()),
                "claimer" => claimer = Some(value.to_string()),
                "exec" => {
                    let (pid, start) = value.split_once(' ')?;
                    exec = Some((pid.parse().ok()?, start.parse().ok()?));
                }
                "label" => {
                    let (k, v) = value.split_once('=')?;
                    labels.push((k.to_string(), v.to_string()));
                }
                "dir" => dir = Some(PathBuf::from(value)),
                _ => {}
            }
        }
        Some(Self {
            machine: Machine {
                host: host?,
                boot: boot?,
            },
            claimer: claimer?,
            exec,
            labels,
            dir: dir?,
        })
    }

    /// Write (or rewrite) the record; `tmp` then rename, so a reader never sees half.
    pub(crate) fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(self.render().as_bytes())?;
        drop(f);
        std::fs::rename(&tmp, path)
    }
}

/// What one reaping pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Reaped {
    pub(crate) jobs: usize,
    pub(crate) objects: usize,
    pub(crate) left_alone: usize,
}

/// Whether the claimer behind `lock_name` is alive (holds its lock). A missing lock file
/// means dead.
fn claimer_alive(registry: &Path, lock_name: &str) -> bool {
    if lock_name.contains('/') {
        return false;
    }
    let Ok(file) = File::open(registry.join(lock_name)) else {
        return false;
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_unlocked_on_drop) => false,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => true,
        // Cannot tell: do not touch it.
        Err(_) => true,
    }
}

/// Kill what a job started: its process group if it is still the recorded one (waiting up
/// to `wait` for it to go), then the steps `gsr exec` recorded under the job's builds dir.
/// Returns the number of processes killed.
pub(crate) async fn kill_job_processes(exec: Option<(i32, u64)>, dir: &Path) -> usize {
    let mut killed = 0;
    if let Some((pid, start)) = exec {
        if procs::same_process_running(pid, start) || !procs::group_members(pid).is_empty() {
            killed += procs::group_members(pid).len();
            procs::signal_group(pid, Signal::SIGKILL);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !procs::group_members(pid).is_empty() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let steps = dir.join("builds").join(gsr_exec_process::STEP_REGISTRY_DIR);
    if steps.is_dir() {
        let report = gsr_exec_process::ProcessExecutor::new()
            .with_step_registry(steps)
            .reap_stale()
            .await;
        killed += report.processes;
    }
    killed
}

/// Remove a job dir, also when the job made parts of it read-only.
pub(crate) fn remove_dir(dir: &Path) -> std::io::Result<bool> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(_) => {
            make_writable(dir);
            match std::fs::remove_dir_all(dir) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            make_writable(&e.path());
        }
    }
}

/// Remove a file; gone already is fine.
pub(crate) fn remove_file(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// See the module docs.
pub(crate) async fn reap(root: &Path, own_lock: &str) -> std::io::Result<Reaped> {
    let registry = root.join(REGISTRY_DIR);
    let here = Machine::current();
    let mut out = Reaped::default();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&registry)?
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    entries.sort();
    for path in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "job"))
    {
        let Some(record) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| Record::parse(&t))
        else {
            let old = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age > GARBAGE_GRACE);
            if old {
                remove_file(path)?;
                out.objects += 1;
            } else {
                out.left_alone += 1;
            }
            continue;
        };
        if record.machine.host != here.host {
            out.left_alone += 1;
            continue;
        }
        let rebooted = record.machine.boot != here.boot;
        if !rebooted && (record.claimer == own_lock || claimer_alive(&registry, &record.claimer)) {
            out.left_alone += 1;
            continue;
        }
        if !rebooted {
            out.objects += kill_job_processes(record.exec, &record.dir).await;
        }
        // Only dirs under our jobs dir are ever removed, whatever a record says.
        if record.dir.starts_with(root.join(JOBS_DIR)) && remove_dir(&record.dir)? {
            out.objects += 1;
        }
        remove_file(path)?;
        out.jobs += 1;
        tracing::info!(
            record = %path.display(),
            labels = ?record.labels,
            "removed the leftovers of a job whose claimer is gone"
        );
    }
    // Lock files of dead claimers that no record names any more.
    for path in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "lock"))
    {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name != own_lock && !claimer_alive(&registry, name) {
            remove_file(path)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            machine: Machine::current(),
            claimer: "claimer-1-00ff.lock".into(),
            exec: Some((4242, 99)),
            labels: vec![
                ("gsr.claimer".into(), "replica a".into()),
                ("gsr.job".into(), "7".into()),
            ],
            dir: PathBuf::from("/srv/gsr/jobs/7-ab cd"),
        }
    }

    #[test]
    fn record_round_trip() {
        let r = record();
        let text = r.render();
        assert!(text.contains("label gsr.claimer=replica_a\n"), "{text}");
        let back = Record::parse(&text).expect("parses");
        assert_eq!(back.dir, r.dir);
        assert_eq!(back.exec, r.exec);
        assert_eq!(back.claimer, r.claimer);
        assert_eq!(Record::parse("something else"), None);
    }

    #[test]
    fn a_lock_is_held_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let lock = ClaimerLock::acquire(dir.path()).unwrap();
        assert!(claimer_alive(dir.path(), &lock.name));
        let name = lock.name.clone();
        drop(lock);
        assert!(!claimer_alive(dir.path(), &name));
        assert!(!claimer_alive(dir.path(), "claimer-none.lock"));
    }

    /// A dead claimer's process group is killed, its dir and record removed; a live
    /// claimer's job is left alone.
    #[tokio::test]
    async fn reap_kills_only_dead_claimers_jobs() {
        use std::os::unix::process::CommandExt;
        let root = tempfile::tempdir().unwrap();
        let registry = root.path().join(REGISTRY_DIR);
        std::fs::create_dir_all(&registry).unwrap();
        let live = ClaimerLock::acquire(&registry).unwrap();
        let dead = ClaimerLock::acquire(&registry).unwrap();
        let dead_name = dead.name.clone();
        drop(dead);

        let mut jobs = Vec::new();
        for (n, claimer) in [(1, dead_name.as_str()), (2, live.name.as_str())] {
            let dir = root.path().join(JOBS_DIR).join(format!("{n}-x"));
            std::fs::create_dir_all(&dir).unwrap();
            let child = std::process::Command::new("sleep")
                .arg("1000")
                .process_group(0)
                .spawn()
                .unwrap();
            let pid = child.id() as i32;
            let start = procs::stat(pid).unwrap().start_time;
            Record {
                machine: Machine::current(),
                claimer: claimer.to_string(),
                exec: Some((pid, start)),
                labels: vec![],
                dir: dir.clone(),
            }
            .write(&registry.join(format!("{n}-x.job")))
            .unwrap();
            jobs.push((child, dir));
        }
        let other = ClaimerLock::acquire(&registry).unwrap();
        let reaped = reap(root.path(), &other.name).await.unwrap();
        assert_eq!(reaped.jobs, 1, "{reaped:?}");
        assert_eq!(reaped.left_alone, 1, "{reaped:?}");
        assert!(reaped.objects >= 2, "a process and a dir: {reaped:?}");

        let (mut dead_child, dead_dir) = jobs.remove(0);
        let status = dead_child.wait().unwrap();
        assert!(!status.success(), "killed");
        assert!(!dead_dir.exists());
        assert!(!registry.join("1-x.job").exists());
        assert!(
            !registry.join(&dead_name).exists(),
            "the dead claimer's lock is gone"
        );

        let (mut live_child, live_dir) = jobs.remove(0);
        assert!(live_dir.exists());
        assert!(registry.join("2-x.job").exists());
        assert!(live_child.try_wait().unwrap().is_none(), "still running");
        let _ = live_child.kill();
        let _ = live_child.wait();

        // A second pass finds nothing more.
        let again = reap(root.path(), &other.name).await.unwrap();
        assert_eq!(again.jobs, 0);
    }
}
