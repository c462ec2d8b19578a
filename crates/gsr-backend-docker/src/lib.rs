//! The `docker` backend: one claimed job in a container from its `image:`, its `services:`
//! as sidecar containers beside it, nothing left behind.
//!
//! # Why
//!
//! Users write `image:` and `services:` in `.gitlab-ci.yml` and expect them honoured, and
//! the top complaint about container runners is what they leave running. So a job here is
//! a *placement*: a user-defined bridge network, a builds volume, one container per
//! service and the job container, all labelled with the job and the process that created
//! them, all removed by [`Running::cleanup`] — or, if that process died first, by the
//! [`Backend::reap`] of the next one ([`owner`] explains how a dead creator is told from a
//! live one).
//!
//! # How a job runs
//!
//! 1. The payload is parsed for `image:`, `services:`, `pull_policy:` and registry
//!    `credentials:` (nothing else; `gsr exec` in the container parses it again).
//! 2. Images are made present by their pull policy ([`spec::pull_policy`]): `never` needs
//!    the image locally, `if-not-present` (default) pulls when missing, `always` pulls. A
//!    failed pull is [`BackendError::Start`]: the job did not run.
//! 3. Network `gsr-job-<id>-<nonce>-net` (driver `bridge`) and volume `…-builds`.
//! 4. Each service is created and started on the network with its aliases (its own
//!    `alias:` list, then the names GitLab derives from the image name).
//! 5. The job container: the job's image (its ENTRYPOINT kept unless the job overrides
//!    it), the `gsr` binary bind-mounted read-only at [`GSR_IN_CONTAINER`], the command
//!    `/gsr/gsr exec --job - --url <gitlab> --builds-dir /builds`, an empty environment of
//!    our own (only the image's `ENV`), Docker's init as PID 1 (forwards SIGTERM, reaps),
//!    CPU/memory/pids limits, privileged only with the `privileged` opt-in. The payload
//!    goes in through the container's **stdin** (attach before start, then close): never
//!    argv, environment, a file or a label.
//! 6. A watchdog stops the job container (SIGTERM, then SIGKILL after `stop_grace_secs`)
//!    on abort or when the job's timeout plus `timeout_margin_secs` has passed.
//!
//! [`Running::wait`] maps the container's exit status: `0..=4` are `gsr exec`'s own;
//! 125–127 (the runtime could not start the command) are [`JobExit::NotRun`]; a signal
//! death (> 128) or an OOM kill is [`JobExit::Killed`].
//!
//! # Networking
//!
//! The job must reach GitLab and its services. Services are reached by alias through the
//! per-job network's embedded DNS. GitLab is reached through the network's default route:
//! with a normally configured daemon that is NAT to the world. On our test machines the
//! daemon runs `--bridge=none --iptables=false --ip-forward=false`: there is no NAT, so a
//! container reaches only the host's own addresses; the tests put the GitLab simulator on
//! the gateway address of a bridge network the tests create themselves (never another
//! private or public address) and the job reaches it over its own network's gateway.
//!
//! Every job takes one network, and so one of the daemon's address pools. Docker's default
//! pools give about 30 networks (172.17–31.0.0/16, 192.168.0.0/16 in /20s); more jobs at
//! once fail to start with a hint. Give dockerd more (`--default-address-pool
//! base=10.213.0.0/16,size=24`: 256) or cap the backend with the `max_jobs` setting.
//!
//! # Layout
//!
//! - [`settings`]: the closed set of settings and their checks.
//! - [`spec`]: pure builders of names, labels and API bodies (unit-tested field by field).
//! - [`owner`]: the creator's identity label and its liveness.
//! - this file: the [`Backend`]/[`Running`] implementation over bollard.
//!
//! # Not covered
//!
//! - Service health: services are started, not waited for (GitLab's runner probes their
//!   exposed ports); a job that needs one ready should retry.
//! - Registry pulls could not be tried on our machines (no registry is reachable): the
//!   pull path is exercised only by its failure, credentials only by their selection.
//! - Privileged containers cannot run on our machines (root there lacks
//!   `CAP_SYS_RESOURCE`); the opt-in is checked in the container spec, and a privileged
//!   start that the runtime refuses is a clean [`BackendError::Start`].

pub mod owner;
pub mod settings;
pub mod spec;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions, ListContainersOptions,
    ListNetworksOptions, ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions,
    StopContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use gsr_backend::{
    Backend, BackendError, CancellationToken, Capabilities, JobExit, Launch, ReapReport, Running,
};
use gsr_job::{ExposeSecret, Image, RegistryCredential};
use tokio::io::AsyncWriteExt;

pub use bollard;
pub use owner::Owner;
pub use settings::{DockerSettings, PullPolicy};
pub use spec::GSR_IN_CONTAINER;

const NAME: &str = "docker";
/// Oldest Engine API this backend uses (Docker 20.10).
pub const MIN_API_VERSION: &str = "1.41";

fn other(message: impl Into<String>) -> BackendError {
    BackendError::Other {
        backend: NAME.into(),
        message: message.into(),
    }
}

fn unavailable(message: impl Into<String>) -> BackendError {
    BackendError::Unavailable {
        backend: NAME.into(),
        message: message.into(),
    }
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The docker backend. Cheap to share (`Arc` it); jobs may start concurrently.
pub struct DockerBackend {
    docker: Docker,
    settings: DockerSettings,
    owner: Owner,
    instance: Arc<owner::Instance>,
    gsr_path: String,
}

impl DockerBackend {
    /// Connect to the daemon and negotiate the API version. Settings that are wrong
    /// without asking the daemon are [`BackendError::Config`].
    pub async fn connect(settings: DockerSettings) -> Result<DockerBackend, BackendError> {
        let mut b = DockerBackend::build(settings, bollard::API_DEFAULT_VERSION)?;
        b.docker = b.docker.negotiate_version().await.map_err(|e| {
            unavailable(format!(
                "the docker daemon does not answer (is dockerd running?): {e}"
            ))
        })?;
        Ok(b)
    }

    /// Like [`connect`](Self::connect) without talking to the daemon (for synchronous
    /// factories): the client speaks API [`MIN_API_VERSION`], which every supported daemon
    /// serves; [`Backend::validate`] then checks that the daemon answers.
    pub fn new(settings: DockerSettings) -> Result<DockerBackend, BackendError> {
        DockerBackend::build(
            settings,
            &bollard::ClientVersion {
                major_version: 1,
                minor_version: 41,
            },
        )
    }

    fn build(
        settings: DockerSettings,
        version: &bollard::ClientVersion,
    ) -> Result<DockerBackend, BackendError> {
        settings.check().map_err(|message| BackendError::Config {
            backend: NAME.into(),
            message,
        })?;
        let gsr = match &settings.gsr_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| unavailable(format!("cannot locate the gsr binary: {e}")))?,
        };
        let gsr_path = gsr
            .to_str()
            .filter(|s| !s.contains(':') && !s.contains(','))
            .ok_or_else(|| BackendError::Config {
                backend: NAME.into(),
                message: format!("gsr_binary: {} cannot be bind-mounted", gsr.display()),
            })?
            .to_string();
        let path = settings
            .socket
            .as_deref()
            .map(|s| s.strip_prefix("unix://").unwrap_or(s))
            .unwrap_or("/var/run/docker.sock");
        let docker = Docker::connect_with_socket(path, 120, version).map_err(|e| {
            unavailable(format!(
                "cannot connect to the docker daemon (is dockerd running?): {e}"
            ))
        })?;
        let instance = owner::Instance::new();
        Ok(DockerBackend {
            docker,
            settings,
            owner: Owner::current_instance(&instance),
            instance,
            gsr_path,
        })
    }

    /// Label what this instance creates as owned by `owner` instead of this process.
    /// For tests that simulate a crashed claimer; a real claimer keeps [`Owner::current`].
    pub fn with_owner(mut self, owner: Owner) -> DockerBackend {
        self.owner = owner;
        self
    }

    /// The bollard client (tests inspect the daemon with it).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// The settings.
    pub fn settings(&self) -> &DockerSettings {
        &self.settings
    }

    async fn image_present(&self, name: &str) -> Result<bool, String> {
        match self.docker.inspect_image(name).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(format!("inspecting image {name}: {e}")),
        }
    }

    async fn pull(&self, name: &str, creds: &[RegistryCredential]) -> Result<(), String> {
        let credentials = spec::credentials_for(name, creds).map(|c| DockerCredentials {
            username: Some(c.username.clone()),
            password: Some(c.password.expose_secret().to_string()),
            serveraddress: Some(c.registry.clone()),
            ..Default::default()
        });
        let (from_image, tag) = spec::pull_ref(name);
        let options = CreateImageOptions {
            from_image: Some(from_image),
            tag: (!tag.is_empty()).then_some(tag),
            ..Default::default()
        };
        let pull = async {
            let mut stream = self.docker.create_image(Some(options), None, credentials);
            while let Some(item) = stream.next().await {
                if let Err(e) = item {
                    return Err(format!("pulling image {name}: {e}"));
                }
            }
            Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(self.settings.pull_timeout_secs), pull).await
        {
            Ok(r) => r,
            Err(_) => Err(format!(
                "pulling image {name}: no result after {} s",
                self.settings.pull_timeout_secs
            )),
        }
    }

    async fn ensure_image(
        &self,
        image: &Image,
        creds: &[RegistryCredential],
    ) -> Result<(), String> {
        let policy = spec::pull_policy(&self.settings, image)?;
        match policy {
            PullPolicy::Never => {
                if self.image_present(&image.name).await? {
                    Ok(())
                } else {
                    Err(format!(
                        "image {} is not present and its pull policy is never",
                        image.name
                    ))
                }
            }
            PullPolicy::IfNotPresent => {
                if self.image_present(&image.name).await? {
                    Ok(())
                } else {
                    self.pull(&image.name, creds).await
                }
            }
            PullPolicy::Always => self.pull(&image.name, creds).await,
        }
    }

    /// Everything of `start` after the names are chosen; on error the caller removes
    /// what was made.
    async fn place(&self, launch: &Launch, placement: &Placement) -> Result<(), String> {
        let parsed = gsr_gitlab::parse_job(launch.payload.expose_secret());
        // A payload that cannot be parsed still runs: `gsr exec` fails it in GitLab with a
        // readable reason (exit 2). It gets the default image and no services.
        let (image, services, creds) = match parsed {
            Ok(spec) => (spec.image, spec.services, spec.registry_credentials),
            Err(_) => (None, Vec::new(), Vec::new()),
        };
        let image = image.unwrap_or_else(|| Image {
            name: self.settings.default_image.clone(),
            ..Default::default()
        });
        for i in std::iter::once(&image).chain(services.iter()) {
            if i.name.trim().is_empty() {
                return Err("a service has no image name".into());
            }
            self.ensure_image(i, &creds).await?;
        }
        let names = &placement.names;
        let owner = self.owner.to_string();
        let mut claimer = self.settings.labels.clone();
        claimer.extend(launch.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        let labels = |role: &str| spec::labels(&claimer, &owner, launch.job_id, names, role);

        self.docker
            .create_network(spec::network(names, labels("network")))
            .await
            .map_err(|e| {
                let hint = if e.to_string().contains("address pool") {
                    " (every job takes one network: give dockerd more with \
                     --default-address-pool, or lower max_jobs)"
                } else {
                    ""
                };
                format!("creating network {}: {e}{hint}", names.network())
            })?;
        self.docker
            .create_volume(spec::volume(names, labels("volume")))
            .await
            .map_err(|e| format!("creating volume {}: {e}", names.volume()))?;

        for (i, svc) in services.iter().enumerate() {
            let name = names.service(i);
            let body = spec::service_container(&self.settings, svc, names, labels("service"));
            self.docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: Some(name.clone()),
                        ..Default::default()
                    }),
                    body,
                )
                .await
                .map_err(|e| format!("creating service {}: {e}", svc.name))?;
            self.docker
                .start_container(&name, None)
                .await
                .map_err(|e| format!("starting service {}: {e}", svc.name))?;
        }

        let job = names.job();
        let body = spec::job_container(
            &self.settings,
            &image.name,
            &image.entrypoint,
            &self.gsr_path,
            &launch.gitlab_url,
            names,
            labels("job"),
        );
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(job.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| format!("creating the job container ({}): {e}", image.name))?;
        // Attach to stdin before the start, so that `gsr exec` reads the whole payload and
        // then end-of-file (StdinOnce closes its stdin when this stream ends).
        let mut attached = self
            .docker
            .attach_container(
                &job,
                Some(AttachContainerOptions {
                    stream: true,
                    stdin: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| format!("attaching to the job container: {e}"))?;
        self.docker
            .start_container(&job, None)
            .await
            .map_err(|e| format!("starting the job container ({}): {e}", image.name))?;
        attached
            .input
            .write_all(launch.payload.expose_secret())
            .await
            .map_err(|e| format!("sending the payload to the job container: {e}"))?;
        attached
            .input
            .shutdown()
            .await
            .map_err(|e| format!("closing the job container's stdin: {e}"))?;
        // Nothing comes back on this stream (stdout/stderr are not attached); keep it open
        // until it ends so the daemon reads all of stdin, then let it go.
        let mut output = attached.output;
        tokio::spawn(async move { while output.next().await.is_some() {} });
        Ok(())
    }

    async fn remove_placement(&self, placement: &Placement) -> Result<(), BackendError> {
        remove_placement(&self.docker, &placement.names.placement).await
    }
}

/// Remove every container, then the volumes and networks, labelled with this placement.
async fn remove_placement(docker: &Docker, placement: &str) -> Result<(), BackendError> {
    let filter = HashMap::from([(
        "label".to_string(),
        vec![format!("{}={placement}", spec::LABEL_PLACEMENT)],
    )]);
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filter.clone()),
            ..Default::default()
        }))
        .await
        .map_err(|e| other(format!("listing containers of {placement}: {e}")))?;
    for c in containers {
        if let Some(id) = c.id {
            remove_container(docker, &id).await?;
        }
    }
    let volumes = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(filter.clone()),
        }))
        .await
        .map_err(|e| other(format!("listing volumes of {placement}: {e}")))?;
    for v in volumes.volumes.unwrap_or_default() {
        remove_volume(docker, &v.name).await?;
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filter),
        }))
        .await
        .map_err(|e| other(format!("listing networks of {placement}: {e}")))?;
    for n in networks {
        if let Some(id) = n.id {
            remove_network(docker, &id).await?;
        }
    }
    Ok(())
}

async fn remove_container(docker: &Docker, id: &str) -> Result<(), BackendError> {
    let opts = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(opts)).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        // 409: removal already in progress (a concurrent cleanup or reap).
        Err(DockerError::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(e) => Err(other(format!("removing container {id}: {e}"))),
    }
}

async fn remove_volume(docker: &Docker, name: &str) -> Result<(), BackendError> {
    // A volume whose container is still being removed is "in use" for a moment.
    for attempt in 0..20 {
        match docker
            .remove_volume(name, Some(RemoveVolumeOptions { force: true }))
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) if attempt < 19 => tokio::time::sleep(Duration::from_millis(250)).await,
            Err(e) => return Err(other(format!("removing volume {name}: {e}"))),
        }
    }
    Ok(())
}

async fn remove_network(docker: &Docker, id: &str) -> Result<(), BackendError> {
    for attempt in 0..20 {
        match docker.remove_network(id).await {
            Ok(()) => return Ok(()),
            Err(e) if is_not_found(&e) => return Ok(()),
            // Endpoints of containers being removed are still attached for a moment.
            Err(DockerError::DockerResponseServerError {
                status_code: 403 | 409 | 500,
                ..
            }) if attempt < 19 => tokio::time::sleep(Duration::from_millis(250)).await,
            Err(e) => return Err(other(format!("removing network {id}: {e}"))),
        }
    }
    Ok(())
}

struct Placement {
    names: spec::Names,
}

#[async_trait::async_trait]
impl Backend for DockerBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            image: true,
            services: true,
            hard_cancel: true,
            max_duration: None,
            max_jobs: self.settings.max_jobs,
        }
    }

    async fn validate(&self) -> Result<(), BackendError> {
        let v = self
            .docker
            .version()
            .await
            .map_err(|e| unavailable(format!("the docker daemon does not answer: {e}")))?;
        let api = v.api_version.unwrap_or_default();
        if version_lt(&api, MIN_API_VERSION) {
            return Err(unavailable(format!(
                "the docker daemon speaks API {api}; at least {MIN_API_VERSION} is needed"
            )));
        }
        let meta = std::fs::metadata(&self.gsr_path).map_err(|e| BackendError::Config {
            backend: NAME.into(),
            message: format!("gsr_binary: {}: {e}", self.gsr_path),
        })?;
        if !meta.is_file() {
            return Err(BackendError::Config {
                backend: NAME.into(),
                message: format!("gsr_binary: {} is not a file", self.gsr_path),
            });
        }
        Ok(())
    }

    async fn healthcheck(&self) -> Result<(), BackendError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| unavailable(format!("the docker daemon does not answer: {e}")))
    }

    async fn reap(&self) -> Result<ReapReport, BackendError> {
        let mine = HashMap::from([(
            "label".to_string(),
            vec![format!("{}=docker", spec::LABEL_BACKEND)],
        )]);
        let mut report = ReapReport::default();
        let mut dead_jobs = BTreeSet::new();
        let judge = |labels: Option<&HashMap<String, String>>| -> Option<String> {
            let labels = labels?;
            let owner = Owner::parse(labels.get(spec::LABEL_OWNER)?)?;
            (owner.liveness(&self.owner) == owner::Liveness::Dead).then(|| {
                labels
                    .get(spec::LABEL_PLACEMENT)
                    .cloned()
                    .unwrap_or_default()
            })
        };
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(mine.clone()),
                ..Default::default()
            }))
            .await
            .map_err(|e| other(format!("listing containers: {e}")))?;
        for c in containers {
            match (judge(c.labels.as_ref()), c.id) {
                (Some(placement), Some(id)) => {
                    remove_container(&self.docker, &id).await?;
                    dead_jobs.insert(placement);
                    report.objects += 1;
                }
                _ => report.left_alone += 1,
            }
        }
        let volumes = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(mine.clone()),
            }))
            .await
            .map_err(|e| other(format!("listing volumes: {e}")))?;
        for v in volumes.volumes.unwrap_or_default() {
            match judge(Some(&v.labels)) {
                Some(placement) => {
                    remove_volume(&self.docker, &v.name).await?;
                    dead_jobs.insert(placement);
                    report.objects += 1;
                }
                None => report.left_alone += 1,
            }
        }
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(mine),
            }))
            .await
            .map_err(|e| other(format!("listing networks: {e}")))?;
        for n in networks {
            match (judge(n.labels.as_ref()), n.id) {
                (Some(placement), Some(id)) => {
                    remove_network(&self.docker, &id).await?;
                    dead_jobs.insert(placement);
                    report.objects += 1;
                }
                _ => report.left_alone += 1,
            }
        }
        report.jobs = dead_jobs.len();
        if report.objects > 0 {
            tracing::info!(
                jobs = report.jobs,
                objects = report.objects,
                "docker: removed what jobs of dead claimers left"
            );
        }
        Ok(report)
    }

    async fn start(&self, launch: Launch) -> Result<Box<dyn Running>, BackendError> {
        let nonce = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let placement = Placement {
            names: spec::Names::new(launch.job_id, &nonce),
        };
        if let Err(message) = self.place(&launch, &placement).await {
            // Remove the partial placement; its own failure is only logged, the start
            // error is what the claimer needs.
            if let Err(e) = self.remove_placement(&placement).await {
                tracing::warn!(job = launch.job_id, error = %e, "docker: partial clean-up failed");
            }
            return Err(BackendError::Start {
                backend: NAME.into(),
                job_id: launch.job_id,
                message,
            });
        }
        let abort = launch.abort.child_token();
        let done = CancellationToken::new();
        let stopped = Arc::new(AtomicBool::new(false));
        let deadline = launch.timeout + Duration::from_secs(self.settings.timeout_margin_secs);
        tokio::spawn(watchdog(
            self.docker.clone(),
            placement.names.job(),
            abort.clone(),
            done.clone(),
            stopped.clone(),
            deadline,
            self.settings.stop_grace_secs,
        ));
        tracing::info!(job = launch.job_id, placement = %placement.names.placement, "docker: job started");
        Ok(Box::new(DockerRunning {
            _instance: self.instance.clone(),
            docker: self.docker.clone(),
            placement: placement.names,
            abort,
            done,
            stopped,
            exit: Mutex::new(None),
        }))
    }
}

/// Stops the job container on abort or after the deadline; ends when the job does.
async fn watchdog(
    docker: Docker,
    container: String,
    abort: CancellationToken,
    done: CancellationToken,
    stopped: Arc<AtomicBool>,
    deadline: Duration,
    grace: u64,
) {
    tokio::select! {
        _ = done.cancelled() => return,
        _ = abort.cancelled() => {}
        _ = tokio::time::sleep(deadline) => {
            tracing::warn!(container = %container, "docker: job passed its timeout; stopping it");
        }
    }
    stopped.store(true, Ordering::SeqCst);
    let opts = StopContainerOptions {
        t: Some(grace.min(i32::MAX as u64) as i32),
        ..Default::default()
    };
    tokio::select! {
        _ = done.cancelled() => {}
        r = docker.stop_container(&container, Some(opts)) => {
            if let Err(e) = r {
                if !is_not_found(&e) {
                    tracing::warn!(container = %container, error = %e, "docker: stopping the job container failed");
                }
            }
        }
    }
}

struct DockerRunning {
    /// Keeps this backend instance alive (for reapers in this process) while the job is.
    _instance: Arc<owner::Instance>,
    docker: Docker,
    placement: spec::Names,
    abort: CancellationToken,
    done: CancellationToken,
    stopped: Arc<AtomicBool>,
    exit: Mutex<Option<JobExit>>,
}

/// A container exit status as a [`JobExit`].
pub fn job_exit(code: i64, oom_killed: bool) -> JobExit {
    match code {
        _ if oom_killed => JobExit::Killed,
        0..=4 => JobExit::Exec(code as i32),
        // The runtime could not run the command (not found, not executable).
        125..=127 => JobExit::NotRun,
        c if c > 128 => JobExit::Killed,
        c => JobExit::Exec(c as i32),
    }
}

#[async_trait::async_trait]
impl Running for DockerRunning {
    async fn wait(&self) -> Result<JobExit, BackendError> {
        if let Some(e) = *self.exit.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(e);
        }
        let job = self.placement.job();
        let mut stream = self.docker.wait_container(
            &job,
            Some(WaitContainerOptions {
                condition: "not-running".into(),
            }),
        );
        let code = match stream.next().await {
            Some(Ok(r)) => r.status_code,
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) if is_not_found(&e) => {
                return Err(other(format!("job container {job} is gone")))
            }
            Some(Err(e)) => return Err(other(format!("waiting for {job}: {e}"))),
            None => return Err(other(format!("waiting for {job}: no answer"))),
        };
        let oom = match self.docker.inspect_container(&job, None).await {
            Ok(i) => i.state.and_then(|s| s.oom_killed).unwrap_or(false),
            Err(_) => false,
        };
        let mut exit = job_exit(code, oom);
        if self.stopped.load(Ordering::SeqCst) && code == 137 {
            exit = JobExit::Killed;
        }
        self.done.cancel();
        *self.exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(exit);
        Ok(exit)
    }

    fn abort(&self) {
        self.abort.cancel();
    }

    async fn cleanup(&self) -> Result<(), BackendError> {
        self.done.cancel();
        remove_placement(&self.docker, &self.placement.placement).await
    }
}

/// `a < b` for dotted API versions (`1.41` < `1.43`).
fn version_lt(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> Vec<u64> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(a) < parse(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_map_to_job_exits() {
        assert_eq!(job_exit(0, false), JobExit::Exec(0));
        assert_eq!(job_exit(3, false), JobExit::Exec(3));
        assert_eq!(job_exit(127, false), JobExit::NotRun);
        assert_eq!(job_exit(137, false), JobExit::Killed);
        assert_eq!(job_exit(0, true), JobExit::Killed);
        assert_eq!(job_exit(42, false), JobExit::Exec(42));
        assert!(version_lt("1.40", "1.41"));
        assert!(!version_lt("1.41", "1.41"));
        assert!(!version_lt("1.43", "1.41"));
    }
}
