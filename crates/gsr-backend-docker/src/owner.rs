//! Who owns a job's containers, and whether that owner is still alive.
//!
//! # Why
//!
//! Every container, network and volume of a job carries the labels of the process that
//! created it. A claimer that dies without cleaning up (SIGKILL, OOM, power cut of the
//! claimer's container) leaves them running or parked; the next backend started on this
//! host removes them in [`reap`](crate::DockerBackend) before it takes jobs. It must not
//! touch the jobs of a claimer that is alive: two `gsr serve` replicas (or a `gsr
//! run-single` beside a `gsr serve`) may share one daemon.
//!
//! # How liveness is known
//!
//! The owner label holds `host`, kernel `boot` id, PID namespace, `pid` and the process's
//! start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot), as the shell
//! executor's step registry does. An owner is **dead** when it ran on this host and either
//! the boot id differs (rebooted) or, in the same PID namespace, no process has that PID
//! with that start time (a reused PID has another start time). An owner on **another
//! host**, or in **another PID namespace** on this boot (a claimer in another container
//! sharing the socket), cannot be judged from here and is left alone. Objects without a
//! readable owner label are left alone too: they were not made by this backend.
//!
//! Within one live process, the label also names the backend *instance*: a claimer that
//! restarts its backend in-process (or a test standing for a crash) drops an instance, and
//! an instance is alive while the backend or any of its [`Running`](gsr_backend::Running)
//! jobs still exists in this process ([`Instance`]). A job whose instance is gone can no
//! longer be waited for or cleaned up by anyone, so it is as orphaned as after a crash.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

static LIVE: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn live() -> std::sync::MutexGuard<'static, Option<HashSet<String>>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A live backend instance of this process; its id leaves the live set when the last
/// clone is dropped (the backend and each of its running jobs hold one).
#[derive(Debug)]
pub struct Instance {
    id: String,
}

impl Instance {
    /// A new live instance.
    pub fn new() -> Arc<Instance> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        live().get_or_insert_with(HashSet::new).insert(id.clone());
        Arc::new(Instance { id })
    }

    /// Its id (in the owner label).
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(set) = live().as_mut() {
            set.remove(&self.id);
        }
    }
}

fn instance_is_live(id: &str) -> bool {
    live().as_ref().is_some_and(|s| s.contains(id))
}

use std::fmt;

/// The identity written into the `gsr.owner` label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Host name.
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot: String,
    /// PID namespace (`readlink /proc/self/ns/pid`, e.g. `pid:[4026531836]`).
    pub pidns: String,
    /// Process id.
    pub pid: u32,
    /// Start time of that process (ticks since boot).
    pub start: u64,
    /// The backend instance within that process ([`Instance`]); empty: the whole process.
    pub instance: String,
}

/// What [`Owner::liveness`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Running: its objects are left alone.
    Alive,
    /// Gone: its objects may be removed.
    Dead,
    /// Cannot be judged from here (another host or PID namespace): left alone.
    Unknown,
}

impl Owner {
    /// This process.
    pub fn current() -> Owner {
        let pid = std::process::id();
        Owner {
            host: gsr_host(),
            boot: read_trim("/proc/sys/kernel/random/boot_id"),
            pidns: std::fs::read_link("/proc/self/ns/pid")
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            pid,
            start: start_time(pid).unwrap_or(0),
            instance: String::new(),
        }
    }

    /// This process, for the instance `instance`.
    pub fn current_instance(instance: &Instance) -> Owner {
        Owner {
            instance: instance.id().to_string(),
            ..Owner::current()
        }
    }

    /// Parse a label value written by [`Display`](fmt::Display).
    pub fn parse(s: &str) -> Option<Owner> {
        let mut host = None;
        let mut boot = None;
        let mut pidns = None;
        let mut pid = None;
        let mut start = None;
        let mut instance = String::new();
        for part in s.split(';') {
            let (k, v) = part.split_once('=')?;
            match k {
                "host" => host = Some(v.to_string()),
                "boot" => boot = Some(v.to_string()),
                "pidns" => pidns = Some(v.to_string()),
                "pid" => pid = v.parse().ok(),
                "start" => start = v.parse().ok(),
                "instance" => instance = v.to_string(),
                _ => {}
            }
        }
        Some(Owner {
            host: host?,
            boot: boot?,
            pidns: pidns?,
            pid: pid?,
            start: start?,
            instance,
        })
    }

    /// Whether `self` still runs, judged by `me` (this process, on this host).
    pub fn liveness(&self, me: &Owner) -> Liveness {
        if self.host != me.host {
            return Liveness::Unknown;
        }
        if self.boot != me.boot {
            return Liveness::Dead;
        }
        if self.pidns != me.pidns {
            return Liveness::Unknown;
        }
        if self.pid == me.pid && self.start == me.start {
            // This very process: alive unless it names an instance that is gone.
            return if self.instance.is_empty()
                || self.instance == me.instance
                || instance_is_live(&self.instance)
            {
                Liveness::Alive
            } else {
                Liveness::Dead
            };
        }
        match start_time(self.pid) {
            Some(t) if t == self.start => Liveness::Alive,
            _ => Liveness::Dead,
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host={};boot={};pidns={};pid={};start={};instance={}",
            self.host, self.boot, self.pidns, self.pid, self.start, self.instance
        )
    }
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn gsr_host() -> String {
    let h = read_trim("/proc/sys/kernel/hostname");
    if h.is_empty() {
        "unknown".into()
    } else {
        h
    }
}

/// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks since boot.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_round_trips_and_liveness_is_judged() {
        let me = Owner::current();
        assert!(me.start > 0, "start time of this process");
        let back = Owner::parse(&me.to_string()).expect("parses");
        assert_eq!(back, me);
        assert_eq!(me.liveness(&me), Liveness::Alive);

        let reused = Owner {
            start: me.start + 1,
            ..me.clone()
        };
        assert_eq!(reused.liveness(&me), Liveness::Dead);
        let rebooted = Owner {
            boot: "another-boot".into(),
            ..me.clone()
        };
        assert_eq!(rebooted.liveness(&me), Liveness::Dead);
        let elsewhere = Owner {
            host: "another-host".into(),
            ..me.clone()
        };
        assert_eq!(elsewhere.liveness(&me), Liveness::Unknown);
        let other_ns = Owner {
            pidns: "pid:[1]".into(),
            pid: 1,
            ..me.clone()
        };
        assert_eq!(other_ns.liveness(&me), Liveness::Unknown);
        // Instances of this process: alive while held.
        let inst = Instance::new();
        let owned = Owner::current_instance(&inst);
        assert_eq!(Owner::parse(&owned.to_string()), Some(owned.clone()));
        assert_eq!(owned.liveness(&me), Liveness::Alive);
        drop(inst);
        assert_eq!(owned.liveness(&me), Liveness::Dead);
        assert!(Owner::parse("garbage").is_none());
        assert!(Owner::parse("host=a;boot=b").is_none());
    }
}
