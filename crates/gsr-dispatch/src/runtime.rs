//! [`Runtimes`]: where the jobs of a runner run, by the runner's `backend` field.
//!
//! # Why
//!
//! A runner row says where its jobs run (its "runtime" in the web app, the `backend`
//! column in the store). The operator decides which runtimes a replica offers (`gsr serve
//! --backends`); each is built once at start-up (one Docker connection, one Kubernetes
//! client), prepared once ([`Runtimes::prepare`]: validate, then reap what dead claimers
//! left), and shared by every runner that names it. The per-runner part is only the
//! GitLab URL the job's `gsr exec` talks to ([`Runtimes::placement`]).
//!
//! # Names
//!
//! Runtime names are what users see and what the store keeps. `local` is the in-process
//! shell executor: it is what every runner created before runtimes existed says, so old
//! rows keep working unchanged (`shell` is accepted as its alias). Other names are the
//! operator's (the binary uses `process` for the child-process `local` backend,
//! `docker`, `kubernetes`).
//!
//! # A runtime this replica does not offer
//!
//! Its runners' jobs are not claimed here: a claimed job that cannot run would have to be
//! failed, while an unclaimed one waits in GitLab for a replica (or a runner) that can run
//! it. The dispatcher logs it once per runner ([`crate::Dispatcher`]).

use std::collections::BTreeMap;

use gsr_backend::BackendError;
use gsr_gitlab::{Features, RunnerInfo};
use gsr_worker::place::{Placement, Target};

/// The runtime name of the in-process shell executor (and of runners created before
/// runtimes existed).
pub const IN_PROCESS: &str = "local";

/// One runtime: its target and where jobs it cannot take (timeout above its limit) go.
#[derive(Debug, Clone)]
struct Runtime {
    primary: Target,
    fallback: Option<Target>,
}

/// The runtimes this replica offers, by name, in the operator's order.
#[derive(Debug, Clone)]
pub struct Runtimes {
    /// This replica's claimer identity (`gsr_worker::place::claimer_identity`): the
    /// `gsr.claimer` label of backend jobs, so a restarted replica reaps its
    /// predecessor's.
    claimer: String,
    order: Vec<String>,
    by_name: BTreeMap<String, Runtime>,
}

/// `shell` is an alias of [`IN_PROCESS`]; names are compared trimmed and lower-case.
pub fn canonical(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    if n == "shell" {
        IN_PROCESS.to_string()
    } else {
        n
    }
}

impl Runtimes {
    /// No runtime yet; `claimer` labels backend jobs.
    pub fn new(claimer: impl Into<String>) -> Runtimes {
        Runtimes {
            claimer: claimer.into(),
            order: Vec::new(),
            by_name: BTreeMap::new(),
        }
    }

    /// Offer `primary` as `name` (replacing an earlier one of that name), with jobs it
    /// cannot take going to `fallback`.
    pub fn add(&mut self, name: &str, primary: Target, fallback: Option<Target>) -> &mut Self {
        let name = canonical(name);
        if !self.by_name.contains_key(&name) {
            self.order.push(name.clone());
        }
        self.by_name.insert(name, Runtime { primary, fallback });
        self
    }

    /// The names offered, in the order they were added (the web form's default is the
    /// first).
    pub fn names(&self) -> Vec<String> {
        self.order.clone()
    }

    /// Whether `name` (a runner's `backend`) is offered here.
    pub fn offers(&self, name: &str) -> bool {
        self.by_name.contains_key(&canonical(name))
    }

    /// The placement of a runner with runtime `name` whose GitLab is `gitlab_url`;
    /// `None` when this replica does not offer it.
    pub fn placement(&self, name: &str, gitlab_url: &str) -> Option<Placement> {
        let rt = self.by_name.get(&canonical(name))?;
        Some(Placement {
            primary: rt.primary.clone(),
            fallback: rt.fallback.clone(),
            claimer: self.claimer.clone(),
            gitlab_url: gitlab_url.trim_end_matches('/').to_string(),
        })
    }

    /// Validate every backend and reap what dead claimers left (once, at start-up, before
    /// anything is claimed). A backend shared by several runtimes is prepared once per
    /// runtime, which is harmless (reaping is idempotent).
    pub async fn prepare(&self) -> Result<(), BackendError> {
        for name in &self.order {
            if let Some(p) = self.placement(name, "") {
                p.prepare().await?;
            }
        }
        Ok(())
    }

    /// What a runner with runtime `name` declares to GitLab: the target's name as its
    /// executor; the shell feature set for the in-process shell; `image`/`services` only
    /// when every target a job may be routed to honours them (declared features must be
    /// true for every job).
    pub fn runner_info(&self, name: &str) -> Option<RunnerInfo> {
        let p = self.placement(name, "")?;
        Some(placement_info(&p))
    }
}

/// See [`Runtimes::runner_info`].
pub fn placement_info(p: &Placement) -> RunnerInfo {
    match &p.primary {
        Target::InProcess(e) if p.fallback.is_none() => {
            RunnerInfo::new(e.name(), "bash", Features::shell_runner())
        }
        primary => {
            let all = |f: fn(&gsr_backend::Capabilities) -> bool| {
                p.targets().all(|t| f(&t.capabilities()))
            };
            let features = Features {
                image: all(|c| c.image),
                services: all(|c| c.services),
                ..Features::worker()
            };
            RunnerInfo::new(primary.name(), "bash", features)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn shell() -> Target {
        Target::InProcess(Arc::new(gsr_exec_process::ProcessExecutor::new()))
    }

    #[test]
    fn old_rows_and_aliases_name_the_in_process_shell() {
        let mut r = Runtimes::new("replica-1-1");
        r.add("shell", shell(), None);
        assert_eq!(r.names(), vec!["local".to_string()]);
        assert!(r.offers("local"));
        assert!(r.offers(" Shell "));
        assert!(!r.offers("docker"));
        assert!(r.placement("docker", "http://gitlab").is_none());
        let p = r.placement("local", "http://gitlab/").expect("offered");
        assert_eq!(p.gitlab_url, "http://gitlab");
        assert_eq!(p.claimer, "replica-1-1");
        assert!(matches!(p.primary, Target::InProcess(_)));
        let info = r.runner_info("local").expect("offered");
        assert_eq!(info.executor, "shell");
        assert!(!info.features.image);
    }

    #[test]
    fn names_keep_the_operators_order() {
        let mut r = Runtimes::new("c");
        r.add("process", shell(), None);
        r.add("local", shell(), None);
        r.add("process", shell(), None);
        assert_eq!(r.names(), vec!["process".to_string(), "local".to_string()]);
    }
}
