//! One pod's worker: converges the runtime towards the pod spec (volumes,
//! sandbox, image pulls, init containers in order, then containers, with
//! restart policy and CrashLoopBackOff), runs its probes and hooks, posts
//! its status through `pods/status`, and on deletion stops everything
//! gracefully and deletes the pod object. Told *that* the pod changed,
//! never *what*: every sync starts from fresh runtime observations.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, LifecycleHandler, Pod, PodStatus, Probe, Secret, Service, ServiceAccount,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use skiff_runtime::{ContainerRuntime, cri_types as cri};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::backoff::BackoffSet;
use crate::cgroups;
use crate::config::NodeConfig;
use crate::env::{self, PodFacts, Sources};
use crate::events::{Recorder, Subject};
use crate::logs;
use crate::node::NodeIdentity;
use crate::probe::{self, ContainerProbes, ProbeKind};
use crate::resources;
use crate::spec::{self, ClusterDns, HostDns, ImageUser, VolumePath};
use crate::status::{self, ContainerObservation, ProbeView, RunState, StatusInput, Waiting};
use crate::volumes::{self, PodVolumes, VolumeManager};

/// What every pod worker shares.
pub struct Context {
    pub client: kube::Client,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub config: NodeConfig,
    pub node: NodeIdentity,
    pub recorder: Recorder,
    pub volumes: VolumeManager,
    /// The scheme of container IDs in statuses (the runtime's name).
    pub runtime_scheme: String,
}

impl Context {
    /// Where pods' log directories live.
    pub fn log_root(&self) -> PathBuf {
        self.config.data_dir.join("log").join("pods")
    }

    fn facts(&self, pod_ips: &[String]) -> PodFacts {
        let m = &self.node.machine;
        let r = &self.config.system_reserved;
        PodFacts {
            pod_ips: pod_ips.to_vec(),
            host_ips: self.node.host_ips(),
            allocatable_cpu_milli: (m.cpu_millis - r.cpu_millis).max(0),
            allocatable_memory: (m.memory_bytes - r.memory_bytes).max(0),
            allocatable_ephemeral_storage: (m.ephemeral_storage_bytes - r.ephemeral_storage_bytes)
                .max(0),
        }
    }
}

/// What the manager tells a worker.
#[derive(Debug, Clone)]
pub enum Input {
    /// The latest version of the pod.
    Pod(Arc<Pod>),
    /// The pod is gone from the API or from this node: kill and clean up.
    Vanished,
}

/// Converts a CRI container status to an observation.
pub fn observation(s: &cri::ContainerStatus, sandbox_id: &str) -> ContainerObservation {
    let state = match cri::ContainerState::try_from(s.state) {
        Ok(cri::ContainerState::ContainerCreated) => RunState::Created,
        Ok(cri::ContainerState::ContainerRunning) => RunState::Running,
        Ok(cri::ContainerState::ContainerExited) => RunState::Exited,
        _ => RunState::Unknown,
    };
    ContainerObservation {
        id: s.id.clone(),
        sandbox_id: sandbox_id.to_string(),
        name: s
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .or_else(|| s.labels.get(spec::LABEL_CONTAINER_NAME).cloned())
            .unwrap_or_default(),
        state,
        created_at: s.created_at,
        started_at: s.started_at,
        finished_at: s.finished_at,
        exit_code: s.exit_code,
        reason: s.reason.clone(),
        message: s.message.clone(),
        image: s
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default(),
        image_ref: s.image_ref.clone(),
        restart_count: s
            .annotations
            .get(spec::ANNOTATION_RESTART_COUNT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    }
}

#[derive(Debug, Clone)]
struct SandboxState {
    id: String,
    ips: Vec<String>,
    config: cri::PodSandboxConfig,
}

struct ProbeHandle {
    name: String,
    shared: Arc<Mutex<ContainerProbes>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ProbeHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What one sync found: the runtime's view, for the status.
#[derive(Debug, Default)]
struct Observed {
    containers: BTreeMap<String, Vec<ContainerObservation>>,
}

impl Observed {
    fn latest(&self, name: &str) -> Option<&ContainerObservation> {
        self.containers.get(name).and_then(|v| v.first())
    }

    fn latest_in(&self, name: &str, sandbox: &str) -> Option<&ContainerObservation> {
        self.containers
            .get(name)
            .and_then(|v| v.iter().find(|o| o.sandbox_id == sandbox))
    }

    fn all(&self) -> impl Iterator<Item = &ContainerObservation> {
        self.containers.values().flatten()
    }
}

/// The pod's termination grace period.
fn grace_period(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or(pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30)
        .max(0);
    Duration::from_secs(secs as u64)
}

/// The image pull policy, defaulted as the API does.
pub fn pull_policy(c: &Container) -> &str {
    if let Some(p) = c.image_pull_policy.as_deref() {
        return p;
    }
    let image = c.image.as_deref().unwrap_or_default();
    let last = image.rsplit('/').next().unwrap_or_default();
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn ns_to_instant(ns: i64) -> Instant {
    let now_ns = Timestamp::now().as_nanosecond() as i64;
    let age = Duration::from_nanos(now_ns.saturating_sub(ns).max(0) as u64);
    Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
}

/// Runs a lifecycle hook in a container.
async fn run_handler(
    h: &LifecycleHandler,
    target: &probe::Target,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(s) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
        return Ok(());
    }
    let p = Probe {
        exec: h.exec.clone(),
        http_get: h.http_get.clone(),
        tcp_socket: h.tcp_socket.clone(),
        ..Default::default()
    };
    match tokio::time::timeout(timeout, probe::probe_once(&p, target, timeout)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

/// One pod's worker.
pub struct Worker {
    ctx: Arc<Context>,
    uid: String,
    pod: Arc<Pod>,
    sandbox: Option<SandboxState>,
    waiting: BTreeMap<String, Waiting>,
    crash_backoff: BackoffSet<String>,
    pull_backoff: BackoffSet<String>,
    /// Exited container instances whose failure was already counted.
    counted_exits: HashSet<String>,
    /// Container instances a BackOff event was already sent for.
    backoff_events: HashSet<String>,
    probes: HashMap<String, ProbeHandle>,
    wake: Arc<Notify>,
    volume_state: PodVolumes,
    volume_paths: Option<BTreeMap<String, VolumePath>>,
    volumes_refreshed: Option<Instant>,
    last_mount_error: Option<(String, Instant)>,
    account_automount: Option<Option<bool>>,
    status_cache: HashMap<String, (i32, ContainerObservation, String)>,
    last_status: Option<PodStatus>,
    terminal_stopped: bool,
    warned: HashSet<String>,
}

impl Worker {
    pub fn new(ctx: Arc<Context>, pod: Arc<Pod>) -> Self {
        let timing = ctx.config.timing.clone();
        Worker {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            ctx,
            pod,
            sandbox: None,
            waiting: BTreeMap::new(),
            crash_backoff: BackoffSet::new(timing.crash_loop),
            pull_backoff: BackoffSet::new(timing.image_pull),
            counted_exits: HashSet::new(),
            backoff_events: HashSet::new(),
            probes: HashMap::new(),
            wake: Arc::new(Notify::new()),
            volume_state: PodVolumes::default(),
            volume_paths: None,
            volumes_refreshed: None,
            last_mount_error: None,
            account_automount: None,
            status_cache: HashMap::new(),
            last_status: None,
            terminal_stopped: false,
            warned: HashSet::new(),
        }
    }

    fn name(&self) -> String {
        format!(
            "{}/{}",
            self.pod.metadata.namespace.as_deref().unwrap_or_default(),
            self.pod.metadata.name.as_deref().unwrap_or_default()
        )
    }

    /// Runs until the pod is deleted (and its object removed) or vanished.
    pub async fn run(mut self, mut rx: watch::Receiver<Input>) {
        loop {
            let input = rx.borrow_and_update().clone();
            let next = match input {
                Input::Vanished => {
                    self.kill_pod(grace_period(&self.pod)).await;
                    self.cleanup().await;
                    tracing::info!(pod = %self.name(), "pod vanished; cleaned up");
                    return;
                }
                Input::Pod(pod) => {
                    self.pod = pod;
                    if self.pod.metadata.deletion_timestamp.is_some() {
                        if self.terminate().await {
                            return;
                        }
                        Duration::from_secs(1)
                    } else {
                        self.sync_and_report().await
                    }
                }
            };
            let wake = self.wake.clone();
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The manager is gone (shutdown): leave containers be.
                        return;
                    }
                }
                _ = tokio::time::sleep(next) => {}
                _ = wake.notified() => {}
            }
        }
    }

    async fn sync_and_report(&mut self) -> Duration {
        let pod = self.pod.clone();
        let wait = self.sync(&pod).await;
        let observed = self.observe().await;
        match observed {
            Ok(observed) => {
                let status = self.compute_status(&pod, &observed);
                let terminal = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
                self.post_status(status).await;
                if terminal && !self.terminal_stopped {
                    self.stop_terminal(&observed).await;
                }
            }
            Err(e) => tracing::warn!(pod = %self.name(), error = %e, "observing containers"),
        }
        wait.min(self.ctx.config.timing.relist)
    }

    fn is_terminal(&self) -> bool {
        self.terminal_stopped
            || matches!(
                self.pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
    }

    /// A terminal pod's remaining containers are stopped and its sandbox too.
    async fn stop_terminal(&mut self, observed: &Observed) {
        for o in observed.all().filter(|o| o.is_running()) {
            let o = o.clone();
            self.kill_container(&o, grace_period(&self.pod), None, true)
                .await;
        }
        if let Some(sb) = &self.sandbox
            && let Err(e) = self.ctx.runtime.stop_pod_sandbox(&sb.id).await
        {
            tracing::warn!(pod = %self.name(), error = %e, "stopping sandbox of a finished pod");
            return;
        }
        self.probes.clear();
        self.terminal_stopped = true;
    }

    /// The pod as the agent runs it: with the automatic service-account
    /// volume.
    async fn effective_pod(&mut self, pod: &Pod) -> Pod {
        if self.account_automount.is_none() {
            let sa = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_string());
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let api: Api<ServiceAccount> = Api::namespaced(self.ctx.client.clone(), &ns);
            match api.get_opt(&sa).await {
                Ok(account) => {
                    self.account_automount =
                        Some(account.and_then(|a| a.automount_service_account_token));
                }
                Err(e) => {
                    tracing::debug!(pod = %self.name(), error = %e, "reading service account");
                }
            }
        }
        volumes::with_service_account_volume(pod, self.account_automount.flatten())
    }

    /// One pass of convergence; returns when to look again at the latest.
    async fn sync(&mut self, api_pod: &Pod) -> Duration {
        let relist = self.ctx.config.timing.relist;
        if self.is_terminal() {
            return self.ctx.config.timing.pod_resync;
        }
        let pod = self.effective_pod(api_pod).await;
        let spec = pod.spec.clone().unwrap_or_default();

        // Volumes: set up once, refreshed every resync.
        let due = self
            .volumes_refreshed
            .is_none_or(|t| t.elapsed() >= self.ctx.config.timing.pod_resync);
        if due {
            let ips = self
                .sandbox
                .as_ref()
                .map(|s| s.ips.clone())
                .unwrap_or_default();
            let facts = self.ctx.facts(&ips);
            match self
                .ctx
                .volumes
                .setup(&pod, &mut self.volume_state, &facts)
                .await
            {
                Ok(paths) => {
                    self.volume_paths = Some(paths);
                    self.volumes_refreshed = Some(Instant::now());
                    self.last_mount_error = None;
                }
                Err(e) => {
                    let msg = e.to_string();
                    // Reported when it changes, else once a minute.
                    let repeat = self
                        .last_mount_error
                        .as_ref()
                        .is_some_and(|(m, at)| *m == msg && at.elapsed() < Duration::from_secs(60));
                    if !repeat {
                        tracing::warn!(pod = %self.name(), error = %msg, "mounting volumes");
                        self.ctx
                            .recorder
                            .warning(Subject::pod(&pod), "FailedMount", msg.clone());
                        self.last_mount_error = Some((msg, Instant::now()));
                    }
                    if self.volume_paths.is_none() {
                        return Duration::from_secs(5).max(relist);
                    }
                }
            }
        }
        let Some(volume_paths) = self.volume_paths.clone() else {
            return relist;
        };

        let sandbox = match self.ensure_sandbox(&pod).await {
            Ok(sb) => sb,
            Err(e) => {
                self.ctx.recorder.warning(
                    Subject::pod(&pod),
                    "FailedCreatePodSandBox",
                    format!("Failed to create pod sandbox: {e}"),
                );
                return Duration::from_secs(5).max(relist);
            }
        };
        let observed = match self.observe().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(pod = %self.name(), error = %e, "listing containers");
                return relist;
            }
        };
        self.reconcile_probes(&pod, &observed, &sandbox);

        // Init containers, in order; one at a time.
        for c in spec.init_containers.iter().flatten() {
            if c.restart_policy.as_deref() == Some("Always")
                && self.warned.insert(format!("sidecar/{}", c.name))
            {
                self.ctx.recorder.warning(
                    Subject::container(&pod, &c.name),
                    "Failed",
                    "restartable init containers (sidecars) are not supported by skiff-node; run as a regular init container",
                );
            }
            let current = observed.latest_in(&c.name, &sandbox.id).cloned();
            match current {
                Some(o) if o.succeeded() => continue,
                Some(o) if o.is_running() => return relist,
                Some(o) if o.state == RunState::Created => {
                    self.remove_container(&o).await;
                    return relist;
                }
                Some(o) if o.exited() => {
                    if !status::should_restart(&pod, o.exit_code) {
                        // The pod fails: the status says so.
                        return relist;
                    }
                    return self
                        .restart_after_backoff(&pod, c, &o, &sandbox, &volume_paths)
                        .await;
                }
                Some(o) => {
                    // Unknown: stop it; the next pass decides.
                    self.kill_container(&o, Duration::ZERO, None, false).await;
                    return relist;
                }
                None => {
                    let restart_count = observed
                        .latest(&c.name)
                        .map(|o| o.restart_count + 1)
                        .unwrap_or(0);
                    let _ = self
                        .start_container(&pod, c, &sandbox, &volume_paths, restart_count)
                        .await;
                    return relist;
                }
            }
        }

        let mut wait = self.ctx.config.timing.pod_resync;
        for c in &spec.containers {
            let current = observed.latest_in(&c.name, &sandbox.id).cloned();
            match current {
                None => {
                    let previous = observed.latest(&c.name).cloned();
                    match previous {
                        Some(p) if p.exited() && !status::should_restart(&pod, p.exit_code) => {}
                        Some(p) if p.exited() => {
                            let w = self
                                .restart_after_backoff(&pod, c, &p, &sandbox, &volume_paths)
                                .await;
                            wait = wait.min(w);
                        }
                        _ => {
                            let restart_count = previous.map(|p| p.restart_count + 1).unwrap_or(0);
                            let _ = self
                                .start_container(&pod, c, &sandbox, &volume_paths, restart_count)
                                .await;
                            wait = wait.min(relist);
                        }
                    }
                }
                Some(o) if o.is_running() => {
                    if self.must_restart(&pod, c, &o).await {
                        wait = wait.min(relist);
                    } else if o.started_at > 0
                        && ns_to_instant(o.started_at).elapsed()
                            >= self.ctx.config.timing.crash_loop.reset_after
                    {
                        self.crash_backoff.reset(&c.name);
                    }
                }
                Some(o) if o.state == RunState::Created => {
                    // Created but never started (a failed start): replace it.
                    self.remove_container(&o).await;
                    wait = wait.min(relist);
                }
                Some(o) if o.exited() => {
                    if status::should_restart(&pod, o.exit_code) {
                        let w = self
                            .restart_after_backoff(&pod, c, &o, &sandbox, &volume_paths)
                            .await;
                        wait = wait.min(w);
                    }
                }
                Some(o) => {
                    self.kill_container(&o, Duration::ZERO, None, false).await;
                    wait = wait.min(relist);
                }
            }
        }
        wait
    }

    /// Whether a running container must be killed (failed liveness or
    /// startup probe, changed image); kills it if so.
    async fn must_restart(&mut self, pod: &Pod, c: &Container, o: &ContainerObservation) -> bool {
        let probe_verdict = self
            .probes
            .get(&o.id)
            .and_then(|h| probe::lock(&h.shared).must_restart());
        let message = if let Some(kind) = probe_verdict {
            Some(format!(
                "Container {} failed {} probe, will be restarted",
                c.name,
                match kind {
                    ProbeKind::Startup => "startup",
                    _ => "liveness",
                }
            ))
        } else {
            let want = spec::container_hash(c);
            let have = self.status_cache.get(&o.id).map(|(_, _, h)| h.as_str());
            (have.is_some_and(|h| !h.is_empty() && h != want))
                .then(|| format!("Container {} definition changed, will be restarted", c.name))
        };
        let Some(message) = message else {
            return false;
        };
        self.kill_container(o, grace_period(pod), Some(message), true)
            .await;
        true
    }

    /// An exited container that should run again: wait out its back-off,
    /// then start the next instance.
    async fn restart_after_backoff(
        &mut self,
        pod: &Pod,
        c: &Container,
        o: &ContainerObservation,
        sandbox: &SandboxState,
        volume_paths: &BTreeMap<String, VolumePath>,
    ) -> Duration {
        let relist = self.ctx.config.timing.relist;
        if self.counted_exits.insert(o.id.clone()) {
            let finished = if o.finished_at > 0 {
                ns_to_instant(o.finished_at)
            } else {
                Instant::now()
            };
            let ran = Duration::from_nanos((o.finished_at - o.started_at).max(0) as u64);
            self.crash_backoff.record_failure(&c.name, finished, ran);
        }
        if let Some(left) = self.crash_backoff.remaining(&c.name, Instant::now()) {
            let delay = self
                .crash_backoff
                .current_delay(&c.name)
                .unwrap_or_default();
            let pod_id = format!(
                "{}_{}({})",
                pod.metadata.name.as_deref().unwrap_or_default(),
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                self.uid
            );
            self.waiting.insert(
                c.name.clone(),
                Waiting::new(
                    "CrashLoopBackOff",
                    format!(
                        "back-off {}s restarting failed container={} pod={pod_id}",
                        delay.as_secs(),
                        c.name
                    ),
                ),
            );
            if self.backoff_events.insert(o.id.clone()) {
                self.ctx.recorder.warning(
                    Subject::container(pod, &c.name),
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {} in pod {pod_id}",
                        c.name
                    ),
                );
            }
            return left;
        }
        // Keep only the latest dead instance (for lastState and --previous).
        let old: Vec<ContainerObservation> = self
            .observe()
            .await
            .map(|obs| {
                obs.containers
                    .get(&c.name)
                    .map(|v| v.iter().skip(1).filter(|x| x.exited()).cloned().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        for x in old {
            self.remove_container(&x).await;
        }
        let _ = self
            .start_container(pod, c, sandbox, volume_paths, o.restart_count + 1)
            .await;
        relist
    }

    /// Lists the pod's containers (all its sandboxes), newest first by name;
    /// asks for the status only of instances whose state changed.
    async fn observe(&mut self) -> Result<Observed, skiff_runtime::Error> {
        let filter = cri::ContainerFilter {
            label_selector: [(spec::LABEL_POD_UID.to_string(), self.uid.clone())].into(),
            ..Default::default()
        };
        let list = self.ctx.runtime.list_containers(Some(filter)).await?;
        let mut observed = Observed::default();
        let mut seen = HashSet::new();
        for c in list {
            seen.insert(c.id.clone());
            let cached = self
                .status_cache
                .get(&c.id)
                .filter(|(state, _, _)| *state == c.state)
                .map(|(_, o, _)| o.clone());
            let o = match cached {
                Some(o) if o.state != RunState::Running => o,
                _ => match self.ctx.runtime.container_status(&c.id).await {
                    Ok(s) => {
                        let mut o = observation(&s, &c.pod_sandbox_id);
                        if o.exited() && o.message.is_empty() {
                            o.message = self.termination_message(&o);
                        }
                        let hash = s
                            .annotations
                            .get(spec::ANNOTATION_HASH)
                            .cloned()
                            .unwrap_or_default();
                        self.status_cache
                            .insert(c.id.clone(), (c.state, o.clone(), hash));
                        o
                    }
                    Err(skiff_runtime::Error::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                },
            };
            observed
                .containers
                .entry(o.name.clone())
                .or_default()
                .push(o);
        }
        self.status_cache.retain(|id, _| seen.contains(id));
        for v in observed.containers.values_mut() {
            v.sort_by_key(|x| std::cmp::Reverse(x.created_at));
        }
        Ok(observed)
    }

    /// What a terminated container left in its termination-log file (at
    /// most 4 KiB), or with `FallbackToLogsOnError` and a failure, the tail
    /// of its log (80 lines, at most 2 KiB), as the kubelet reports them.
    fn termination_message(&self, o: &ContainerObservation) -> String {
        let file = self
            .ctx
            .volumes
            .pod_dir(&self.uid)
            .join("containers")
            .join(&o.name)
            .join(o.restart_count.to_string());
        let msg = std::fs::read(&file)
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned())
            .unwrap_or_default();
        let spec = self.pod.spec.clone().unwrap_or_default();
        let fallback = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == o.name)
            .and_then(|c| c.termination_message_policy.as_deref())
            == Some("FallbackToLogsOnError");
        if !msg.is_empty() || o.exit_code == 0 || !fallback {
            return msg;
        }
        let log = spec::log_directory(&self.ctx.log_root(), &self.pod)
            .join(spec::log_path(&o.name, o.restart_count));
        let Ok(content) = std::fs::read(&log) else {
            return msg;
        };
        let tail = logs::render(
            &content,
            &logs::LogOptions {
                tail_lines: Some(80),
                ..Default::default()
            },
        );
        let start = tail.len().saturating_sub(2048);
        String::from_utf8_lossy(&tail[start..]).into_owned()
    }

    /// The pod's sandbox: the current one if ready, an adopted ready one
    /// (after an agent restart), or a new one.
    async fn ensure_sandbox(&mut self, pod: &Pod) -> Result<SandboxState, String> {
        let rt = self.ctx.runtime.clone();
        if let Some(sb) = self.sandbox.clone() {
            match rt.pod_sandbox_status(&sb.id).await {
                Ok(s) if s.state == cri::PodSandboxState::SandboxReady as i32 => return Ok(sb),
                Ok(_) | Err(skiff_runtime::Error::NotFound(_)) => {
                    tracing::info!(pod = %self.name(), sandbox = %sb.id, "sandbox not ready; recreating");
                    self.ctx.recorder.normal(
                        Subject::pod(pod),
                        "SandboxChanged",
                        "Pod sandbox changed, it will be killed and re-created.",
                    );
                    self.sandbox = None;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        let filter = cri::PodSandboxFilter {
            label_selector: [(spec::LABEL_POD_UID.to_string(), self.uid.clone())].into(),
            ..Default::default()
        };
        let mut existing = rt
            .list_pod_sandbox(Some(filter))
            .await
            .map_err(|e| e.to_string())?;
        existing.sort_by_key(|x| std::cmp::Reverse(x.created_at));
        let attempt = existing
            .iter()
            .filter_map(|s| s.metadata.as_ref().map(|m| m.attempt + 1))
            .max()
            .unwrap_or(0);
        if let Some(ready) = existing
            .iter()
            .find(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
        {
            let status = rt
                .pod_sandbox_status(&ready.id)
                .await
                .map_err(|e| e.to_string())?;
            let attempt = ready.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
            let sb = SandboxState {
                id: ready.id.clone(),
                ips: sandbox_ips(&status),
                config: self.sandbox_config(pod, attempt),
            };
            tracing::info!(pod = %self.name(), sandbox = %sb.id, "adopted existing sandbox");
            self.sandbox = Some(sb.clone());
            return Ok(sb);
        }
        // Stop every container of old sandboxes, keep the newest old sandbox
        // (its containers carry restart counts and logs), remove the rest.
        for (i, old) in existing.iter().enumerate() {
            if let Err(e) = rt.stop_pod_sandbox(&old.id).await {
                tracing::warn!(pod = %self.name(), error = %e, "stopping old sandbox");
            }
            if i > 0
                && let Err(e) = rt.remove_pod_sandbox(&old.id).await
            {
                tracing::warn!(pod = %self.name(), error = %e, "removing old sandbox");
            }
        }
        let config = self.sandbox_config(pod, attempt);
        let log_dir = PathBuf::from(&config.log_directory);
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| format!("creating {}: {e}", log_dir.display()))?;
        let id = rt
            .run_pod_sandbox(config.clone())
            .await
            .map_err(|e| e.to_string())?;
        let status = rt
            .pod_sandbox_status(&id)
            .await
            .map_err(|e| e.to_string())?;
        let sb = SandboxState {
            id,
            ips: sandbox_ips(&status),
            config,
        };
        tracing::info!(pod = %self.name(), sandbox = %sb.id, ips = ?sb.ips, "sandbox running");
        let hosts = spec::etc_hosts(pod, &sb.ips, &self.ctx.config.cluster_domain);
        let hosts_path = self.ctx.volumes.pod_dir(&self.uid).join("etc-hosts");
        if let Err(e) = std::fs::write(&hosts_path, hosts) {
            tracing::warn!(path = %hosts_path.display(), error = %e, "writing /etc/hosts");
        }
        self.sandbox = Some(sb.clone());
        Ok(sb)
    }

    fn sandbox_config(&mut self, pod: &Pod, attempt: u32) -> cri::PodSandboxConfig {
        let cfg = &self.ctx.config;
        let host = HostDns::parse(&std::fs::read_to_string(&cfg.resolv_conf).unwrap_or_default());
        let dns = spec::dns_config(
            pod,
            &ClusterDns {
                servers: cfg.cluster_dns.iter().map(|ip| ip.to_string()).collect(),
                domain: cfg.cluster_domain.clone(),
            },
            &host,
        );
        if dns.missing_cluster_dns && self.warned.insert("dns".to_string()) {
            self.ctx.recorder.warning(
                Subject::pod(pod),
                "MissingClusterDNS",
                "pod: \"ClusterFirst\" DNS policy specified but no cluster DNS server is configured; falling back to \"Default\" policy",
            );
        }
        spec::sandbox_config(
            pod,
            &spec::SandboxParams {
                attempt,
                log_directory: spec::log_directory(&self.ctx.log_root(), pod),
                dns: dns.config,
                cgroup_root: cfg.cgroup_root.clone(),
            },
        )
    }

    /// Pulls the image as the policy says; returns its ref and user.
    async fn ensure_image(
        &mut self,
        pod: &Pod,
        c: &Container,
    ) -> Result<(String, ImageUser), Waiting> {
        let rt = self.ctx.runtime.clone();
        let rec = self.ctx.recorder.clone();
        let subject = Subject::container(pod, &c.name);
        let image = c.image.clone().unwrap_or_default();
        if image.is_empty() {
            return Err(Waiting::new("InvalidImageName", "no image given"));
        }
        if let Err(e) = skiff_runtime::Reference::parse(&image) {
            let msg = format!("Failed to apply default image tag {image:?}: {e}");
            rec.warning(subject, "InspectFailed", msg.clone());
            return Err(Waiting::new("InvalidImageName", msg));
        }
        let spec = cri::ImageSpec {
            image: image.clone(),
            user_specified_image: image.clone(),
            ..Default::default()
        };
        let present = rt.image_status(spec.clone()).await.ok().flatten();
        let user = |i: &cri::Image| ImageUser {
            uid: i.uid.as_ref().map(|u| u.value),
            username: i.username.clone(),
        };
        let policy = pull_policy(c);
        match (policy, &present) {
            ("Never", Some(i)) | ("IfNotPresent", Some(i)) => {
                rec.normal(
                    subject,
                    "Pulled",
                    format!("Container image {image:?} already present on machine"),
                );
                return Ok((i.id.clone(), user(i)));
            }
            ("Never", None) => {
                let msg =
                    format!("Container image {image:?} is not present with pull policy of Never");
                rec.warning(subject, "ErrImageNeverPull", msg.clone());
                return Err(Waiting::new("ErrImageNeverPull", msg));
            }
            _ => {}
        }
        if self
            .pull_backoff
            .remaining(&image, Instant::now())
            .is_some()
        {
            let msg = format!("Back-off pulling image {image:?}");
            let already =
                self.waiting.get(&c.name).map(|w| w.reason.as_str()) == Some("ImagePullBackOff");
            if !already {
                rec.normal(subject, "BackOff", msg.clone());
            }
            return Err(Waiting::new("ImagePullBackOff", msg));
        }
        rec.normal(
            subject.clone(),
            "Pulling",
            format!("Pulling image {image:?}"),
        );
        let started = Instant::now();
        // As the kubelet: each credential the pull secrets hold for this
        // image in turn (most specific first), anonymously when none.
        let credentials = self.pull_credentials(pod, &image, &subject).await;
        let mut pulled = rt
            .pull_image(spec.clone(), credentials.first().cloned())
            .await;
        for auth in credentials.iter().skip(1) {
            if pulled.is_ok() {
                break;
            }
            pulled = rt.pull_image(spec.clone(), Some(auth.clone())).await;
        }
        match pulled {
            Ok(image_ref) => {
                self.pull_backoff.reset(&image);
                rec.normal(
                    subject,
                    "Pulled",
                    format!(
                        "Successfully pulled image {image:?} in {:.3}s",
                        started.elapsed().as_secs_f64()
                    ),
                );
                let u = rt
                    .image_status(spec)
                    .await
                    .ok()
                    .flatten()
                    .map(|i| user(&i))
                    .unwrap_or_default();
                Ok((image_ref, u))
            }
            Err(e) => {
                let msg = format!("Failed to pull image {image:?}: {e}");
                rec.warning(subject.clone(), "Failed", msg.clone());
                rec.warning(subject, "Failed", "Error: ErrImagePull");
                self.pull_backoff
                    .record_failure(&image, Instant::now(), Duration::ZERO);
                Err(Waiting::new("ErrImagePull", msg))
            }
        }
    }

    /// The registry credentials the pod's `imagePullSecrets` hold for
    /// `image` (the kubelet's keyring: `kubernetes.io/dockerconfigjson` and
    /// `kubernetes.io/dockercfg` secrets, every matching entry, most
    /// specific first). Secrets that cannot be read are reported in an
    /// event and skipped, as the kubelet does: the pull may still succeed.
    async fn pull_credentials(
        &self,
        pod: &Pod,
        image: &str,
        subject: &Subject,
    ) -> Vec<cri::AuthConfig> {
        let names: Vec<String> = pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.as_ref())
            .into_iter()
            .flatten()
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return Vec::new();
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &ns);
        let mut keyring = skiff_runtime::Keyring::default();
        let mut unusable = Vec::new();
        for name in names {
            let secret = match api.get_opt(&name).await {
                Ok(Some(s)) => s,
                Ok(None) => {
                    unusable.push(name);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(secret = %name, namespace = %ns, error = %e, "reading image pull secret");
                    unusable.push(name);
                    continue;
                }
            };
            let data = |key: &str| {
                secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|b| b.0.as_slice())
                    .filter(|b| !b.is_empty())
            };
            let added = match (
                secret.type_.as_deref(),
                data(".dockerconfigjson"),
                data(".dockercfg"),
            ) {
                (Some("kubernetes.io/dockerconfigjson"), Some(json), _) => {
                    keyring.add_docker_config_json(json)
                }
                (Some("kubernetes.io/dockercfg"), _, Some(cfg)) => keyring.add_dockercfg(cfg),
                // Other secret types hold no registry credentials.
                _ => Ok(()),
            };
            if let Err(e) = added {
                tracing::warn!(secret = %name, namespace = %ns, error = %e, "image pull secret");
                unusable.push(name);
            }
        }
        if !unusable.is_empty() {
            self.ctx.recorder.warning(
                subject.clone(),
                "FailedToRetrieveImagePullSecret",
                format!(
                    "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                    unusable.join(", ")
                ),
            );
        }
        keyring.lookup(image)
    }

    async fn env_sources(&self, pod: &Pod, c: &Container) -> Result<Sources, String> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let (cms, secrets) = env::referenced(c);
        let mut sources = Sources::default();
        let cm_api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &ns);
        for name in cms {
            let v = cm_api.get_opt(&name).await.map_err(|e| e.to_string())?;
            sources.config_maps.insert(name, v);
        }
        let s_api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &ns);
        for name in secrets {
            let v = s_api.get_opt(&name).await.map_err(|e| e.to_string())?;
            sources.secrets.insert(name, v);
        }
        // Service links: the namespace's services (unless disabled), and
        // always the API server's `kubernetes` service.
        let links = pod
            .spec
            .as_ref()
            .and_then(|s| s.enable_service_links)
            .unwrap_or(true);
        let mut services = Vec::new();
        if links {
            let api: Api<Service> = Api::namespaced(self.ctx.client.clone(), &ns);
            services = api
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items;
        }
        if !links || ns != "default" {
            let api: Api<Service> = Api::namespaced(self.ctx.client.clone(), "default");
            if let Some(k) = api.get_opt("kubernetes").await.map_err(|e| e.to_string())? {
                services.push(k);
            }
        }
        services.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        sources.services = env::service_env(&services);
        Ok(sources)
    }

    /// Pull, create, start, postStart, probes. On failure the reason is
    /// recorded as the container's waiting reason.
    async fn start_container(
        &mut self,
        pod: &Pod,
        c: &Container,
        sandbox: &SandboxState,
        volume_paths: &BTreeMap<String, VolumePath>,
        restart_count: i32,
    ) -> Result<(), ()> {
        match self
            .try_start(pod, c, sandbox, volume_paths, restart_count)
            .await
        {
            Ok(()) => {
                self.waiting.remove(&c.name);
                Ok(())
            }
            Err(w) => {
                self.waiting.insert(c.name.clone(), w);
                Err(())
            }
        }
    }

    async fn try_start(
        &mut self,
        pod: &Pod,
        c: &Container,
        sandbox: &SandboxState,
        volume_paths: &BTreeMap<String, VolumePath>,
        restart_count: i32,
    ) -> Result<(), Waiting> {
        let rec = self.ctx.recorder.clone();
        let subject = Subject::container(pod, &c.name);
        let (image_ref, image_user) = self.ensure_image(pod, c).await?;
        let config_error = |msg: String| {
            rec.warning(subject.clone(), "Failed", format!("Error: {msg}"));
            Waiting::new("CreateContainerConfigError", msg)
        };
        let sources = self.env_sources(pod, c).await.map_err(config_error)?;
        let facts = self.ctx.facts(&sandbox.ips);
        let env = env::container_env(pod, c, &facts, &sources)
            .map_err(|e| config_error(e.to_string()))?;
        let mut extra = Vec::new();
        let spec = pod.spec.clone().unwrap_or_default();
        let pod_dir = self.ctx.volumes.pod_dir(&self.uid);
        let hosts = pod_dir.join("etc-hosts");
        if spec.host_network != Some(true) && hosts.exists() {
            extra.push(cri::Mount {
                container_path: "/etc/hosts".to_string(),
                host_path: hosts.display().to_string(),
                ..Default::default()
            });
        }
        let term_dir = pod_dir.join("containers").join(&c.name);
        let term_file = term_dir.join(restart_count.to_string());
        let term_ok = std::fs::create_dir_all(&term_dir)
            .and_then(|_| std::fs::write(&term_file, b""))
            .is_ok();
        let mounts_term_path = c
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| Some(&m.mount_path) == c.termination_message_path.as_ref());
        if term_ok && !mounts_term_path {
            extra.push(cri::Mount {
                container_path: c
                    .termination_message_path
                    .clone()
                    .unwrap_or_else(|| "/dev/termination-log".to_string()),
                host_path: term_file.display().to_string(),
                ..Default::default()
            });
        }
        // subPath directories must exist before the runtime binds them.
        if let Ok(mounts) = spec::mounts(c, volume_paths, &env) {
            for m in &mounts {
                let p = PathBuf::from(&m.host_path);
                if !p.exists() {
                    let _ = std::fs::create_dir_all(&p);
                }
            }
        }
        let config = spec::container_config(
            pod,
            c,
            &spec::ContainerParams {
                env,
                volumes: volume_paths,
                extra_mounts: extra,
                restart_count,
                image_ref,
                image_user,
                memory_capacity: self.ctx.node.machine.memory_bytes,
            },
        )
        .map_err(|e| config_error(e.to_string()))?;
        let rt = self.ctx.runtime.clone();
        let id = match rt
            .create_container(&sandbox.id, config, &sandbox.config)
            .await
        {
            Ok(id) => id,
            Err(e) => {
                rec.warning(subject, "Failed", format!("Error: {e}"));
                return Err(Waiting::new("CreateContainerError", e.to_string()));
            }
        };
        rec.normal(
            subject.clone(),
            "Created",
            format!("Created container: {}", c.name),
        );
        if let Err(e) = rt.start_container(&id).await {
            rec.warning(subject, "Failed", format!("Error: {e}"));
            self.crash_backoff
                .record_failure(&c.name, Instant::now(), Duration::ZERO);
            self.counted_exits.insert(id);
            return Err(Waiting::new("RunContainerError", e.to_string()));
        }
        rec.normal(
            subject.clone(),
            "Started",
            format!("Started container {}", c.name),
        );
        let target = probe::Target {
            runtime: rt.clone(),
            container_id: id.clone(),
            container: c.clone(),
            pod_ip: sandbox.ips.first().cloned(),
        };
        if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref())
            && let Err(e) = run_handler(h, &target, Duration::from_secs(120)).await
        {
            rec.warning(
                subject.clone(),
                "FailedPostStartHook",
                format!("PostStartHook failed: {e}"),
            );
            let o = ContainerObservation {
                id: id.clone(),
                sandbox_id: sandbox.id.clone(),
                name: c.name.clone(),
                state: RunState::Running,
                created_at: 0,
                started_at: 0,
                finished_at: 0,
                exit_code: 0,
                reason: String::new(),
                message: String::new(),
                image: String::new(),
                image_ref: String::new(),
                restart_count,
            };
            self.kill_container(
                &o,
                grace_period(pod),
                Some(format!("FailedPostStartHook: {e}")),
                false,
            )
            .await;
            return Err(Waiting::new("PostStartHookError", e));
        }
        self.spawn_probes(pod, c, &target);
        Ok(())
    }

    fn spawn_probes(&mut self, pod: &Pod, c: &Container, target: &probe::Target) {
        if self.probes.contains_key(&target.container_id) {
            return;
        }
        let shared = probe::Shared {
            results: Arc::new(Mutex::new(ContainerProbes::for_container(c))),
            wake: self.wake.clone(),
        };
        let mut tasks = Vec::new();
        for (kind, p) in [
            (ProbeKind::Startup, &c.startup_probe),
            (ProbeKind::Liveness, &c.liveness_probe),
            (ProbeKind::Readiness, &c.readiness_probe),
        ] {
            if let Some(p) = p {
                tasks.push(tokio::spawn(probe::probe_loop(
                    kind,
                    p.clone(),
                    target.clone(),
                    shared.clone(),
                    self.ctx.recorder.clone(),
                    Subject::container(pod, &c.name),
                )));
            }
        }
        self.probes.insert(
            target.container_id.clone(),
            ProbeHandle {
                name: c.name.clone(),
                shared: shared.results,
                tasks,
            },
        );
    }

    /// Probes run for exactly the running instances of the current sandbox
    /// (started again for running containers adopted after a restart).
    fn reconcile_probes(&mut self, pod: &Pod, observed: &Observed, sandbox: &SandboxState) {
        let running: HashMap<String, String> = observed
            .all()
            .filter(|o| o.is_running() && o.sandbox_id == sandbox.id)
            .map(|o| (o.id.clone(), o.name.clone()))
            .collect();
        self.probes.retain(|id, _| running.contains_key(id));
        let spec = pod.spec.clone().unwrap_or_default();
        for (id, name) in running {
            if self.probes.contains_key(&id) {
                continue;
            }
            if let Some(c) = spec.containers.iter().find(|c| c.name == name) {
                let target = probe::Target {
                    runtime: self.ctx.runtime.clone(),
                    container_id: id,
                    container: c.clone(),
                    pod_ip: sandbox.ips.first().cloned(),
                };
                self.spawn_probes(pod, c, &target);
            }
        }
    }

    async fn remove_container(&mut self, o: &ContainerObservation) {
        match self.ctx.runtime.remove_container(&o.id).await {
            Ok(()) => {
                // Its log and rotated logs go with it, as the kubelet's.
                let log = spec::log_directory(&self.ctx.log_root(), &self.pod)
                    .join(spec::log_path(&o.name, o.restart_count));
                if let Err(e) = crate::logrotate::clean(&log).await {
                    tracing::warn!(pod = %self.name(), container = %o.id, error = %e, "removing container logs");
                }
            }
            Err(e) => {
                tracing::warn!(pod = %self.name(), container = %o.id, error = %e, "removing container")
            }
        }
        self.status_cache.remove(&o.id);
        self.probes.remove(&o.id);
    }

    /// preStop (when asked and the container runs), then stop with what is
    /// left of `grace`.
    async fn kill_container(
        &mut self,
        o: &ContainerObservation,
        grace: Duration,
        message: Option<String>,
        pre_stop: bool,
    ) {
        self.probes.remove(&o.id);
        let pod = self.pod.clone();
        kill_one(&self.ctx, &pod, o, grace, message, pre_stop).await;
    }

    /// Kills every running container of the pod in parallel.
    async fn kill_pod(&mut self, grace: Duration) {
        self.probes.clear();
        let observed = match self.observe().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(pod = %self.name(), error = %e, "listing containers to kill");
                Observed::default()
            }
        };
        let pod = self.pod.clone();
        let ctx = self.ctx.clone();
        let kills = observed
            .all()
            .filter(|o| matches!(o.state, RunState::Running | RunState::Created))
            .map(|o| kill_one(&ctx, &pod, o, grace, None, o.is_running()));
        futures::future::join_all(kills).await;
    }

    /// Removes the pod's sandboxes and volumes.
    async fn cleanup(&mut self) {
        let rt = &self.ctx.runtime;
        let filter = cri::PodSandboxFilter {
            label_selector: [(spec::LABEL_POD_UID.to_string(), self.uid.clone())].into(),
            ..Default::default()
        };
        match rt.list_pod_sandbox(Some(filter)).await {
            Ok(list) => {
                for sb in list {
                    if let Err(e) = rt.stop_pod_sandbox(&sb.id).await {
                        tracing::warn!(pod = %self.name(), error = %e, "stopping sandbox");
                    }
                    if let Err(e) = rt.remove_pod_sandbox(&sb.id).await {
                        tracing::warn!(pod = %self.name(), error = %e, "removing sandbox");
                    }
                }
            }
            Err(e) => tracing::warn!(pod = %self.name(), error = %e, "listing sandboxes"),
        }
        self.sandbox = None;
        let parent = spec::cgroup_parent(
            &self.ctx.config.cgroup_root,
            resources::qos_class(&self.pod),
            &self.uid,
        );
        cgroups::remove_pod_cgroup(&parent);
        if let Err(e) = self.ctx.volumes.teardown(&self.uid) {
            tracing::warn!(pod = %self.name(), error = %e, "removing volumes");
        }
        let logs = spec::log_directory(&self.ctx.log_root(), &self.pod);
        let _ = std::fs::remove_dir_all(logs);
    }

    /// Graceful deletion; returns true once the pod object is gone.
    async fn terminate(&mut self) -> bool {
        let grace = grace_period(&self.pod);
        tracing::info!(pod = %self.name(), ?grace, "terminating pod");
        self.kill_pod(grace).await;
        // Final statuses (terminated containers) before the sandbox goes.
        if let Ok(observed) = self.observe().await {
            let pod = self.pod.clone();
            let status = self.compute_status(&pod, &observed);
            self.post_status(status).await;
        }
        self.cleanup().await;
        let ns = self.pod.metadata.namespace.clone().unwrap_or_default();
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {
                tracing::info!(pod = %self.name(), "pod deleted");
                true
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => true,
            Err(e) => {
                tracing::warn!(pod = %self.name(), error = %e, "deleting pod; retrying");
                false
            }
        }
    }

    fn compute_status(&self, pod: &Pod, observed: &Observed) -> PodStatus {
        let probes: BTreeMap<String, ProbeView> = self
            .probes
            .values()
            .map(|h| {
                let r = probe::lock(&h.shared);
                (
                    h.name.clone(),
                    ProbeView {
                        ready: r.ready(),
                        started: r.started(),
                    },
                )
            })
            .collect();
        let mut waiting = self.waiting.clone();
        // A waiting reason only applies while no instance runs.
        waiting.retain(|name, _| observed.latest(name).is_none_or(|o| !o.is_running()));
        let pod_ips = self
            .sandbox
            .as_ref()
            .map(|s| s.ips.clone())
            .unwrap_or_default();
        let mut status = status::pod_status(&StatusInput {
            pod,
            host_ips: &self.ctx.node.host_ips(),
            pod_ips: &pod_ips,
            sandbox_ready: self.sandbox.is_some() && !self.terminal_stopped,
            containers: &observed.containers,
            probes: &probes,
            waiting: &waiting,
            runtime_scheme: &self.ctx.runtime_scheme,
            // API times have second precision.
            now: Timestamp::from_second(Timestamp::now().as_second())
                .unwrap_or_else(|_| Timestamp::now()),
        });
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) && pod_ips.is_empty() {
            let host: Vec<k8s_openapi::api::core::v1::PodIP> = self
                .ctx
                .node
                .host_ips()
                .into_iter()
                .map(|ip| k8s_openapi::api::core::v1::PodIP { ip })
                .collect();
            status.pod_ip = host.first().map(|p| p.ip.clone());
            status.pod_ips = (!host.is_empty()).then_some(host);
        }
        status
    }

    async fn post_status(&mut self, status: PodStatus) {
        if self.last_status.as_ref() == Some(&status) || self.pod.status.as_ref() == Some(&status) {
            return;
        }
        let ns = self.pod.metadata.namespace.clone().unwrap_or_default();
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let patch = serde_json::json!({ "status": status });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.last_status = Some(status),
            Err(e) => tracing::warn!(pod = %self.name(), error = %e, "updating pod status"),
        }
    }
}

fn sandbox_ips(s: &cri::PodSandboxStatus) -> Vec<String> {
    let Some(n) = &s.network else {
        return Vec::new();
    };
    let mut ips: Vec<String> = Vec::new();
    if !n.ip.is_empty() {
        ips.push(n.ip.clone());
    }
    ips.extend(
        n.additional_ips
            .iter()
            .map(|p| p.ip.clone())
            .filter(|ip| !ip.is_empty()),
    );
    ips
}

/// Stops one container: preStop hook, then `stop_container` with what is
/// left of the grace period.
async fn kill_one(
    ctx: &Context,
    pod: &Pod,
    o: &ContainerObservation,
    grace: Duration,
    message: Option<String>,
    pre_stop: bool,
) {
    let started = Instant::now();
    let subject = Subject::container(pod, &o.name);
    ctx.recorder.normal(
        subject.clone(),
        "Killing",
        message.unwrap_or_else(|| format!("Stopping container {}", o.name)),
    );
    let spec_container = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == o.name))
        .cloned();
    if pre_stop
        && o.is_running()
        && let Some(c) = spec_container
        && let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())
    {
        let target = probe::Target {
            runtime: ctx.runtime.clone(),
            container_id: o.id.clone(),
            container: c.clone(),
            pod_ip: pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
        };
        if let Err(e) = run_handler(h, &target, grace).await {
            ctx.recorder.warning(
                subject,
                "FailedPreStopHook",
                format!("PreStopHook failed: {e}"),
            );
        }
    }
    let left = grace.saturating_sub(started.elapsed());
    if let Err(e) = ctx.runtime.stop_container(&o.id, left).await {
        tracing::warn!(container = %o.id, error = %e, "stopping container");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_pull_policy_defaults_like_the_api() {
        let c = |image: &str, policy: Option<&str>| Container {
            name: "c".into(),
            image: Some(image.into()),
            image_pull_policy: policy.map(str::to_string),
            ..Default::default()
        };
        let cases = [
            ("no tag", c("busybox", None), "Always"),
            ("latest", c("busybox:latest", None), "Always"),
            ("a tag", c("busybox:1.36", None), "IfNotPresent"),
            (
                "registry port, no tag",
                c("localhost:5000/busybox", None),
                "Always",
            ),
            (
                "registry port and tag",
                c("localhost:5000/busybox:1", None),
                "IfNotPresent",
            ),
            ("digest", c("busybox@sha256:abc", None), "IfNotPresent"),
            ("explicit", c("busybox", Some("Never")), "Never"),
        ];
        for (name, c, want) in cases {
            assert_eq!(pull_policy(&c), want, "{name}");
        }
    }
}
