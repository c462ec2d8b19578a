//! `/proc` helpers: a process named by PID *and* start time, process-group members.
//!
//! A PID alone can be reused; a PID plus its start time (field 22 of `/proc/<pid>/stat`,
//! clock ticks since boot) names one process for the whole uptime, so a record written
//! by a claimer that died long ago never makes us kill a stranger.

use std::path::Path;

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub(crate) state: char,
    pub(crate) pgrp: i32,
    pub(crate) start_time: u64,
}

impl Stat {
    /// A zombie has exited: it only waits to be reaped.
    pub(crate) fn is_running(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }
}

/// Parse the text of `/proc/<pid>/stat`; the command name may hold spaces and `)`.
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) pgrp(5) … starttime(22).
    Some(Stat {
        state: f.first()?.chars().next()?,
        pgrp: f.get(2)?.parse().ok()?,
        start_time: f.get(19)?.parse().ok()?,
    })
}

/// The stat of a live (or zombie) process.
pub(crate) fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether `pid` is still the process that started at `start_time` and has not exited.
pub(crate) fn same_process_running(pid: i32, start_time: u64) -> bool {
    stat(pid).is_some_and(|s| s.start_time == start_time && s.is_running())
}

/// PIDs of the running members of process group `pgid`.
pub(crate) fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|s| s.pgrp == pgid && s.is_running()))
        .collect()
}

/// Send `signal` to the whole group; a group that is gone is fine.
pub(crate) fn signal_group(pgid: i32, signal: nix::sys::signal::Signal) {
    if pgid > 1 {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal);
    }
}

/// One word of a small system file (`/proc/sys/kernel/…`).
pub(crate) fn read_word(path: &Path) -> String {
    let w = std::fs::read_to_string(path).unwrap_or_default();
    let w = w.trim();
    if w.is_empty() || w.contains(char::is_whitespace) {
        "-".to_string()
    } else {
        w.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_names() {
        let line =
            "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 2 3";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                pgrp: 4242,
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_running() {
        let me = std::process::id() as i32;
        let s = stat(me).expect("own stat");
        assert!(same_process_running(me, s.start_time));
        assert!(!same_process_running(me, s.start_time + 1));
    }
}
