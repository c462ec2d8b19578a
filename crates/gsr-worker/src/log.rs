//! The runner's own lines in the job trace, shaped like gitlab-runner's so GitLab's log
//! viewer renders them the same way (colours, collapsible sections).
//!
//! Everything written here goes through the same [`gsr_trace::Trace`] as the job's output,
//! so it is masked and counted against the output limit too.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use gsr_trace::Trace;

const RESET: &str = "\x1b[0;m";
const BOLD_GREEN: &str = "\x1b[32;1m";
const BOLD_RED: &str = "\x1b[31;1m";
const BOLD_CYAN: &str = "\x1b[36;1m";
const YELLOW: &str = "\x1b[0;33m";
const CLEAR: &str = "\x1b[0K";

/// Writes runner lines into the job trace.
#[derive(Clone)]
pub struct JobLog {
    trace: Arc<Trace>,
    sections: bool,
}

impl JobLog {
    /// `sections`: whether GitLab asked for section markers (`features.trace_sections`).
    pub fn new(trace: Arc<Trace>, sections: bool) -> Self {
        JobLog { trace, sections }
    }

    /// The underlying trace.
    pub fn trace(&self) -> &Arc<Trace> {
        &self.trace
    }

    /// A plain line.
    pub fn line(&self, msg: &str) {
        self.trace
            .write(format!("{CLEAR}{msg}{RESET}\n").as_bytes());
    }

    /// A bold green line.
    pub fn info(&self, msg: &str) {
        self.trace
            .write(format!("{BOLD_GREEN}{msg}{RESET}\n").as_bytes());
    }

    /// A yellow `WARNING:` line.
    pub fn warn(&self, msg: &str) {
        self.trace
            .write(format!("{YELLOW}WARNING: {msg}{RESET}\n").as_bytes());
    }

    /// A bold red `ERROR:` line.
    pub fn error(&self, msg: &str) {
        self.trace
            .write(format!("{BOLD_RED}ERROR: {msg}{RESET}\n").as_bytes());
    }

    /// Open a section with a bold cyan header line.
    pub fn section_start(&self, name: &str, header: &str) {
        let header = format!("{BOLD_CYAN}{header}{RESET}");
        if self.sections {
            self.trace
                .write(format!("section_start:{}:{name}\r{CLEAR}{header}\n", now()).as_bytes());
        } else {
            self.trace.write(format!("{header}\n").as_bytes());
        }
    }

    /// Close a section.
    pub fn section_end(&self, name: &str) {
        if self.sections {
            self.trace
                .write(format!("section_end:{}:{name}\r{CLEAR}", now()).as_bytes());
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
