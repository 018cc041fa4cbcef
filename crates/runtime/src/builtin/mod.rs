//! The built-in runtime: images from [`ImageStore`], sandboxes as bind-mounted
//! namespaces, containers run by youki's `libcontainer` on an overlayfs of
//! the image's layers.
//!
//! Layout under the runtime's root:
//! - `images/`: the [`ImageStore`];
//! - `sandboxes/<id>/`: `sandbox.json`, `ns/{net,ipc,uts}`, `shm/`,
//!   `hostname`, `hosts`, `resolv.conf`;
//! - `containers/<id>/`: `container.json`, `exit.json`, `monitor.log`,
//!   `attach.sock` (the monitor's, for attaches and log reopens, see
//!   `attach.rs`),
//!   `bundle/{config.json,rootfs}`, `upper/`, `work/`, and while a
//!   terminal is handed over `console.sock` (a TTY container's) or
//!   `exec-<token>.{sock,json}` (a TTY exec's console socket and process);
//! - `youki/<id>/`: `libcontainer`'s own state.
//!
//! Interactive streams: an exec runs on pipes, or with a TTY on a terminal
//! allocated inside the container whose master comes back to the agent
//! (`console.rs`); an attach talks to the container's monitor, which owns
//! the container's stdio (`attach.rs`).
//!
//! Invariant: `libcontainer` is only ever called in a forked
//! single-threaded process (see `monitor.rs`), except for `delete`, which
//! forks nothing.

mod attach;
mod console;
mod logs;
mod monitor;
mod namespaces;
pub mod spec;
mod state;
mod zygote;

pub use logs::{LineSplitter, Stream, format_record, format_timestamp};
pub use zygote::Zygote;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::api::{
    AttachRequest, AttachSession, Error, ExecRequest, ExecSession, ImageService, Result,
    RuntimeService,
};
use crate::cri_types as cri;
use crate::images::pull::PullConfig;
use crate::images::{ImageRecord, ImageStore};
use crate::network::SandboxNetwork;
use crate::reference::Reference;
use monitor::{ExitInfo, now_nanos};
use spec::{SandboxFiles, SpecInput};
use state::{ContainerPhase, ContainerRecord, SandboxRecord, SandboxState};

/// Settings of the built-in runtime.
#[derive(Debug, Clone)]
pub struct BuiltinConfig {
    /// Where images, sandboxes and containers live (e.g. `<data-dir>/agent/runtime`).
    pub root: PathBuf,
    /// Registry access for pulls.
    pub pull: PullConfig,
    /// Parent cgroup of containers whose sandbox names none.
    pub cgroup_root: String,
    /// Forks the container monitors, if the process started one (see
    /// [`Zygote`]); without it the runtime forks them from its own process.
    pub zygote: Option<Arc<Zygote>>,
}

impl BuiltinConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        BuiltinConfig {
            root: root.into(),
            pull: PullConfig::default(),
            cgroup_root: "/skiff".into(),
            zygote: None,
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct BuiltinRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    config: BuiltinConfig,
    images: Arc<ImageStore>,
    network: Arc<dyn SandboxNetwork>,
    sandboxes: Mutex<HashMap<String, SandboxRecord>>,
    containers: Mutex<HashMap<String, ContainerRecord>>,
    /// Our own oom_score_adj: containers may not go below it.
    min_oom_score_adj: i64,
}

impl std::fmt::Debug for BuiltinRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinRuntime")
            .field("root", &self.inner.config.root)
            .finish()
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

fn new_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Runtime(format!("blocking task failed: {e}")))?
}

fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn parse_signal(name: &str) -> Signal {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    if let Ok(s) = full.parse::<Signal>() {
        return s;
    }
    name.trim()
        .parse::<i32>()
        .ok()
        .and_then(|n| Signal::try_from(n).ok())
        .unwrap_or(Signal::SIGTERM)
}

impl BuiltinRuntime {
    /// Opens the runtime at `config.root`, reloading the sandboxes and
    /// containers a previous agent left there.
    pub fn new(config: BuiltinConfig, network: Arc<dyn SandboxNetwork>) -> Result<Self> {
        for dir in ["sandboxes", "containers", "youki"] {
            let p = config.root.join(dir);
            std::fs::create_dir_all(&p).map_err(io_err(format!("creating {}", p.display())))?;
        }
        let images = Arc::new(ImageStore::open(config.root.join("images"))?);
        let sandboxes: HashMap<String, SandboxRecord> =
            state::load_all::<SandboxRecord>(&config.root.join("sandboxes"), "sandbox.json")
                .into_iter()
                .map(|s| (s.id.clone(), s))
                .collect();
        let containers: HashMap<String, ContainerRecord> =
            state::load_all::<ContainerRecord>(&config.root.join("containers"), "container.json")
                .into_iter()
                .map(|c| (c.id.clone(), c))
                .collect();
        tracing::info!(root = %config.root.display(), sandboxes = sandboxes.len(), containers = containers.len(), "built-in runtime opened");
        let min_oom_score_adj = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Ok(BuiltinRuntime {
            inner: Arc::new(Inner {
                config,
                images,
                network,
                sandboxes: Mutex::new(sandboxes),
                containers: Mutex::new(containers),
                min_oom_score_adj,
            }),
        })
    }

    /// The image store (for `skiff images import` and tests).
    pub fn images(&self) -> &Arc<ImageStore> {
        &self.inner.images
    }

    /// Imports an image archive (OCI layout or docker-archive tarball).
    pub async fn import_image_archive(&self, path: &Path) -> Result<Vec<ImageRecord>> {
        let images = self.inner.images.clone();
        let path = path.to_path_buf();
        blocking(move || images.import_archive(&path)).await
    }

    /// Imports every `*.tar` of a directory (the agent's
    /// `<data-dir>/agent/images/`); failures are logged, not fatal.
    pub async fn import_image_dir(&self, dir: &Path) -> Result<Vec<ImageRecord>> {
        let mut entries = match std::fs::read_dir(dir) {
            Ok(e) => e.flatten().map(|e| e.path()).collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
        };
        entries.sort();
        let mut out = Vec::new();
        for path in entries
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        {
            match self.import_image_archive(&path).await {
                Ok(mut r) => out.append(&mut r),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "image import failed"),
            }
        }
        Ok(out)
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.inner.config.root.join("sandboxes").join(id)
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.inner.config.root.join("containers").join(id)
    }

    fn youki_root(&self) -> PathBuf {
        self.inner.config.root.join("youki")
    }

    fn save_sandbox(&self, rec: &SandboxRecord) -> Result<()> {
        state::save(&self.sandbox_dir(&rec.id).join("sandbox.json"), rec)?;
        self.inner
            .sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rec.id.clone(), rec.clone());
        Ok(())
    }

    fn save_container(&self, rec: &ContainerRecord) -> Result<()> {
        state::save(&self.container_dir(&rec.id).join("container.json"), rec)?;
        self.inner
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rec.id.clone(), rec.clone());
        Ok(())
    }

    /// Finds a sandbox by id or unique id prefix.
    fn sandbox(&self, id: &str) -> Result<SandboxRecord> {
        let map = self
            .inner
            .sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(id) {
            return Ok(s.clone());
        }
        let found: Vec<_> = map
            .values()
            .filter(|s| !id.is_empty() && s.id.starts_with(id))
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(Error::NotFound(format!("pod sandbox {id}"))),
        }
    }

    /// Finds a container by id or unique id prefix, with its exit folded in.
    fn container(&self, id: &str) -> Result<ContainerRecord> {
        let rec = {
            let map = self
                .inner
                .containers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match map.get(id) {
                Some(c) => c.clone(),
                None => {
                    let found: Vec<_> = map
                        .values()
                        .filter(|c| !id.is_empty() && c.id.starts_with(id))
                        .collect();
                    match found.as_slice() {
                        [one] => (*one).clone(),
                        _ => return Err(Error::NotFound(format!("container {id}"))),
                    }
                }
            }
        };
        self.refresh(rec)
    }

    /// Folds a running container's `exit.json` into its record.
    fn refresh(&self, mut rec: ContainerRecord) -> Result<ContainerRecord> {
        if rec.phase != ContainerPhase::Running {
            return Ok(rec);
        }
        let dir = self.container_dir(&rec.id);
        let info = match monitor::read_exit_info(&dir) {
            Some(info) => info,
            None => {
                let alive = rec
                    .pid
                    .is_some_and(|p| kill(Pid::from_raw(p), None).is_ok());
                if alive {
                    return Ok(rec);
                }
                // Reaped but no exit.json yet: the monitor writes it right
                // after draining the logs, unless it died too (reboot).
                let deadline = Instant::now() + Duration::from_secs(3);
                loop {
                    if let Some(info) = monitor::read_exit_info(&dir) {
                        break info;
                    }
                    if Instant::now() > deadline {
                        break ExitInfo {
                            exit_code: 255,
                            signal: None,
                            oom_killed: false,
                            finished_at: now_nanos(),
                            error: Some("the container's monitor is gone".into()),
                        };
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        rec.phase = ContainerPhase::Exited;
        rec.exit_code = info.exit_code;
        rec.finished_at = info.finished_at;
        rec.reason = if info.oom_killed {
            "OOMKilled".into()
        } else if info.error.is_some() {
            "Unknown".into()
        } else if info.exit_code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        };
        rec.message = info.error.unwrap_or_default();
        self.save_container(&rec)?;
        Ok(rec)
    }

    /// The containers `wanted` selects, refreshed. The records are chosen
    /// before they are cloned and refreshed (a file lookup each): every pod
    /// worker lists its own containers on each sync, so listing all of them
    /// each time made a node's work grow with the square of its pods.
    fn containers_where(
        &self,
        wanted: impl Fn(&ContainerRecord) -> bool,
    ) -> Result<Vec<ContainerRecord>> {
        let recs: Vec<ContainerRecord> = self
            .inner
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|r| wanted(r))
            .cloned()
            .collect();
        recs.into_iter().map(|r| self.refresh(r)).collect()
    }

    fn sandbox_containers(&self, sandbox_id: &str) -> Result<Vec<ContainerRecord>> {
        self.containers_where(|c| c.sandbox_id == sandbox_id)
    }

    fn sandbox_status(&self, s: &SandboxRecord) -> cri::PodSandboxStatus {
        let mode = |host: bool| {
            if host {
                cri::NamespaceMode::Node as i32
            } else {
                cri::NamespaceMode::Pod as i32
            }
        };
        cri::PodSandboxStatus {
            id: s.id.clone(),
            metadata: s.config.metadata.clone(),
            state: match s.state {
                SandboxState::Ready => cri::PodSandboxState::SandboxReady as i32,
                SandboxState::NotReady => cri::PodSandboxState::SandboxNotready as i32,
            },
            created_at: s.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: s.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                additional_ips: Vec::new(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(cri::NamespaceOption {
                        network: mode(s.host_network),
                        pid: cri::NamespaceMode::Container as i32,
                        ipc: mode(s.host_ipc),
                        target_id: String::new(),
                        userns_options: None,
                    }),
                }),
            }),
            labels: s.config.labels.clone(),
            annotations: s.config.annotations.clone(),
            runtime_handler: String::new(),
        }
    }

    fn cri_state(c: &ContainerRecord) -> i32 {
        match c.phase {
            ContainerPhase::Created => cri::ContainerState::ContainerCreated as i32,
            ContainerPhase::Running => cri::ContainerState::ContainerRunning as i32,
            ContainerPhase::Exited => cri::ContainerState::ContainerExited as i32,
        }
    }

    async fn create_sandbox(
        &self,
        id: &str,
        config: &cri::PodSandboxConfig,
    ) -> Result<SandboxRecord> {
        let dir = self.sandbox_dir(id);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let ns_opts = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref());
        let host_network = ns_opts.is_some_and(|n| n.network == cri::NamespaceMode::Node as i32);
        let host_ipc = ns_opts.is_some_and(|n| n.ipc == cri::NamespaceMode::Node as i32);
        if ns_opts.is_some_and(|n| n.pid == cri::NamespaceMode::Pod as i32) {
            return Err(Error::Unsupported(
                "a PID namespace shared by the pod's containers",
            ));
        }
        let request = namespaces::NamespaceRequest {
            net: !host_network,
            ipc: !host_ipc,
            uts: !host_network,
        };
        let hostname =
            (!host_network && !config.hostname.is_empty()).then(|| config.hostname.clone());
        let ns_dir = dir.join("ns");
        let shm_dir = dir.join("shm");
        let ns = blocking({
            let ns_dir = ns_dir.clone();
            let shm_dir = shm_dir.clone();
            move || {
                let ns = namespaces::create(&ns_dir, request, hostname.as_deref())?;
                if !host_ipc && let Err(e) = namespaces::mount_shm(&shm_dir) {
                    let _ = namespaces::release(&ns_dir);
                    return Err(e);
                }
                Ok(ns)
            }
        })
        .await?;
        let mut rec = SandboxRecord {
            id: id.to_string(),
            config: config.clone(),
            created_at: now_nanos(),
            state: SandboxState::Ready,
            ip: None,
            host_network,
            host_ipc,
            netns: ns.net.clone(),
            ipcns: ns.ipc.clone(),
            utsns: ns.uts.clone(),
            network_ready: false,
        };
        // Save first so a failure below is still cleaned up by remove.
        self.save_sandbox(&rec)?;
        if let Some(netns) = &rec.netns {
            rec.network_ready = true;
            self.save_sandbox(&rec)?;
            rec.ip = self.inner.network.setup(id, netns).await?;
        }
        write_sandbox_files(&dir, config, rec.ip, host_network)?;
        self.save_sandbox(&rec)?;
        Ok(rec)
    }

    /// Stops the sandbox's containers, tears down its network and releases
    /// its namespaces.
    async fn stop_sandbox_inner(&self, mut rec: SandboxRecord) -> Result<()> {
        let ids: Vec<String> = self
            .sandbox_containers(&rec.id)?
            .into_iter()
            .map(|c| c.id)
            .collect();
        for id in ids {
            self.stop_container(&id, Duration::ZERO).await?;
        }
        if rec.network_ready
            && let Some(netns) = &rec.netns
        {
            self.inner.network.teardown(&rec.id, netns).await?;
            rec.network_ready = false;
        }
        let ns_dir = self.sandbox_dir(&rec.id).join("ns");
        blocking(move || namespaces::release(&ns_dir)).await?;
        rec.state = SandboxState::NotReady;
        rec.ip = None;
        self.save_sandbox(&rec)
    }

    fn container_record_to_cri(c: &ContainerRecord) -> cri::Container {
        cri::Container {
            id: c.id.clone(),
            pod_sandbox_id: c.sandbox_id.clone(),
            metadata: c.config.metadata.clone(),
            image: Some(cri::ImageSpec {
                image: c.image.clone(),
                ..Default::default()
            }),
            image_ref: c.image_ref.clone(),
            state: Self::cri_state(c),
            created_at: c.created_at,
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            image_id: c.image_ref.clone(),
        }
    }

    fn image_to_cri(&self, r: &ImageRecord) -> cri::Image {
        let user = self
            .inner
            .images
            .manifest_and_config(r)
            .ok()
            .and_then(|(_, c)| c.config.and_then(|c| c.user))
            .unwrap_or_default();
        let user_part = user.split(':').next().unwrap_or("").to_string();
        let (uid, username) = match user_part.parse::<i64>() {
            Ok(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
            Err(_) => (None, user_part),
        };
        cri::Image {
            id: r.id.clone(),
            repo_tags: r.repo_tags.clone(),
            repo_digests: r.repo_digests.clone(),
            size: r.size,
            uid,
            username,
            spec: Some(cri::ImageSpec {
                image: r.id.clone(),
                ..Default::default()
            }),
            pinned: false,
        }
    }

    fn exec_spec(&self, c: &ContainerRecord, cmd: Vec<String>) -> Result<monitor::ExecSpec> {
        if c.phase != ContainerPhase::Running {
            return Err(Error::InvalidArgument(format!(
                "container {} is not running",
                c.id
            )));
        }
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("exec: empty command".into()));
        }
        Ok(monitor::ExecSpec {
            container_id: c.id.clone(),
            youki_root: self.youki_root(),
            args: cmd,
            uid: c.uid,
            gid: c.gid,
            additional_gids: c.additional_gids.clone(),
            cwd: Some(PathBuf::from(&c.cwd)),
            bundle: self.container_dir(&c.id).join("bundle"),
            state_dir: self.container_dir(&c.id),
        })
    }

    /// Prepares rootfs and bundle; returns the record (not yet saved).
    fn prepare_container(
        &self,
        id: &str,
        sandbox: &SandboxRecord,
        config: &cri::ContainerConfig,
        image: &ImageRecord,
        image_name: &str,
    ) -> Result<ContainerRecord> {
        let dir = self.container_dir(id);
        let bundle = dir.join("bundle");
        let rootfs = bundle.join("rootfs");
        let upper = dir.join("upper");
        let work = dir.join("work");
        for d in [&rootfs, &upper, &work] {
            std::fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        let (_, image_config) = self.inner.images.manifest_and_config(image)?;
        let defaults = image_config.config.unwrap_or_default();
        let mut lower = self.inner.images.layer_dirs(image)?;
        lower.reverse(); // overlayfs wants the top layer first
        mount_overlay(&rootfs, &lower, &upper, &work)?;
        let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap_or_default();
        let sc = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref());
        if let Some(profile) = sc.and_then(|s| s.seccomp.as_ref())
            && profile.profile_type != cri::security_profile::ProfileType::Unconfined as i32
        {
            // libcontainer is built without libseccomp.
            tracing::warn!(
                container = id,
                "seccomp profiles are not enforced by the built-in runtime; running unconfined"
            );
        }
        let user = spec::resolve_user(
            sc,
            defaults.user.as_deref(),
            &read("etc/passwd"),
            &read("etc/group"),
        )?;
        let sandbox_dir = self.sandbox_dir(&sandbox.id);
        let file = |name: &str| Some(sandbox_dir.join(name)).filter(|p| p.exists());
        let cgroups_path = match sandbox
            .config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.as_str())
        {
            Some(parent) if !parent.is_empty() => format!("{}/{id}", parent.trim_end_matches('/')),
            _ => format!(
                "{}/{id}",
                self.inner.config.cgroup_root.trim_end_matches('/')
            ),
        };
        let input = SpecInput {
            config,
            sandbox: &sandbox.config,
            image: &defaults,
            rootfs: rootfs.clone(),
            namespaces: sandbox.namespaces(),
            files: SandboxFiles {
                hosts: file("hosts"),
                resolv_conf: file("resolv.conf"),
                hostname: file("hostname"),
                shm: if sandbox.host_ipc {
                    Some(PathBuf::from("/dev/shm"))
                } else {
                    file("shm")
                },
            },
            user: user.clone(),
            cgroups_path: cgroups_path.clone(),
            min_oom_score_adj: self.inner.min_oom_score_adj,
        };
        let oci = spec::build_spec(&input)?;
        let cwd = oci
            .process()
            .as_ref()
            .map(|p| p.cwd().display().to_string())
            .unwrap_or_else(|| "/".into());
        oci.save(bundle.join("config.json")).map_err(|e| {
            Error::Runtime(format!(
                "writing {}: {e}",
                bundle.join("config.json").display()
            ))
        })?;
        let log_path = match (
            sandbox.config.log_directory.as_str(),
            config.log_path.as_str(),
        ) {
            (_, "") => dir.join("output.log"),
            ("", p) => PathBuf::from(p),
            (d, p) => Path::new(d).join(p),
        };
        let now = now_nanos();
        Ok(ContainerRecord {
            id: id.to_string(),
            sandbox_id: sandbox.id.clone(),
            config: config.clone(),
            image: image_name.to_string(),
            image_ref: image.id.clone(),
            created_at: now,
            started_at: 0,
            finished_at: 0,
            phase: ContainerPhase::Created,
            pid: None,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path,
            stop_signal: defaults.stop_signal.clone(),
            cgroups_path,
            uid: user.0,
            gid: user.1,
            additional_gids: user.2,
            cwd,
        })
    }

    /// Deletes libcontainer's state, the rootfs mount and the container's dir.
    fn destroy_container_files(&self, id: &str) -> Result<()> {
        let youki_dir = self.youki_root().join(id);
        if youki_dir.exists() {
            match libcontainer::container::Container::load(youki_dir.clone()) {
                Ok(mut c) => {
                    if let Err(e) = c.delete(true) {
                        tracing::warn!(container = id, error = %e, "libcontainer delete failed; removing its state");
                    }
                }
                Err(e) => tracing::warn!(container = id, error = %e, "loading libcontainer state"),
            }
            if youki_dir.exists() {
                std::fs::remove_dir_all(&youki_dir)
                    .map_err(io_err(format!("removing {}", youki_dir.display())))?;
            }
        }
        let dir = self.container_dir(id);
        namespaces::unmount(&dir.join("bundle/rootfs"))?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("removing {}", dir.display()))(e)),
        }
    }
}

/// Bytes (allocated blocks) and inodes under `root`, as `du` counts them:
/// symbolic links not followed, other file systems not entered, hard links
/// counted once; entries that vanish while walking (an image being removed)
/// are skipped.
fn disk_usage(root: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let top = std::fs::symlink_metadata(root)?;
    let dev = top.dev();
    let (mut bytes, mut inodes) = (top.blocks() * 512, 1u64);
    let mut linked = std::collections::HashSet::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.dev() != dev || (meta.nlink() > 1 && !linked.insert(meta.ino())) {
                continue;
            }
            bytes += meta.blocks() * 512;
            inodes += 1;
            if meta.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    Ok((bytes, inodes))
}

fn mount_overlay(target: &Path, lower: &[PathBuf], upper: &Path, work: &Path) -> Result<()> {
    use nix::mount::{MsFlags, mount};
    if lower.is_empty() {
        return Err(Error::InvalidArgument("image has no layers".into()));
    }
    let lowers: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    if data.len() >= 4096 {
        return Err(Error::Unsupported(
            "images with so many layers that the overlay options exceed a page",
        ));
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| Error::Io {
        context: format!("mounting overlay on {}", target.display()),
        source: e.into(),
    })
}

/// `hostname`, `hosts` and `resolv.conf` of a sandbox (containerd's rules:
/// DNS config when given, else the host's resolv.conf; host-network pods
/// see the host's hosts file).
fn write_sandbox_files(
    dir: &Path,
    config: &cri::PodSandboxConfig,
    ip: Option<IpAddr>,
    host_network: bool,
) -> Result<()> {
    let write =
        |name: &str, data: &str| crate::images::write_atomic(&dir.join(name), data.as_bytes());
    let hostname = if host_network {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default()
    } else {
        config.hostname.clone()
    };
    if !hostname.is_empty() {
        write("hostname", &format!("{hostname}\n"))?;
    }
    if host_network {
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        write("hosts", &hosts)?;
    } else {
        let mut hosts = String::from(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
        );
        if !hostname.is_empty() {
            hosts.push_str(&format!(
                "{}\t{hostname}\n",
                ip.map(|i| i.to_string())
                    .unwrap_or_else(|| "127.0.1.1".into())
            ));
        }
        write("hosts", &hosts)?;
    }
    let resolv = match &config.dns_config {
        Some(d) if !d.servers.is_empty() || !d.searches.is_empty() || !d.options.is_empty() => {
            let mut s = String::new();
            for server in &d.servers {
                s.push_str(&format!("nameserver {server}\n"));
            }
            if !d.searches.is_empty() {
                s.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            if !d.options.is_empty() {
                s.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            s
        }
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    write("resolv.conf", &resolv)
}

type Reader = std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>;
type Writer = std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;
type ExecStreams = (
    Option<Writer>,
    Reader,
    Option<Reader>,
    Option<tokio::sync::mpsc::Sender<(u16, u16)>>,
);

/// The async ends of a started exec's stdio: its pipes, or its terminal's
/// master (output, input if asked for, and window sizes).
fn exec_streams(child: &mut monitor::ExecChild, with_stdin: bool) -> Result<ExecStreams> {
    if let Some(master) = child.console.take() {
        let control = master
            .try_clone()
            .map_err(io_err("duplicating the exec's terminal"))?;
        let pty = console::AsyncPty::new(master).map_err(io_err("wrapping the exec's terminal"))?;
        let (output, input) = tokio::io::split(pty);
        let (resize_tx, mut resize_rx) = tokio::sync::mpsc::channel::<(u16, u16)>(4);
        tokio::spawn(async move {
            while let Some((cols, rows)) = resize_rx.recv().await {
                if let Err(e) =
                    console::set_window_size(std::os::fd::AsRawFd::as_raw_fd(&control), cols, rows)
                {
                    tracing::debug!(error = %e, "resizing an exec's terminal");
                }
            }
        });
        let stdin = with_stdin.then(|| Box::pin(input) as Writer);
        return Ok((stdin, Box::pin(output), None, Some(resize_tx)));
    }
    let receiver = |fd: std::os::fd::OwnedFd| {
        tokio::net::unix::pipe::Receiver::from_file(std::fs::File::from(fd))
            .map_err(io_err("wrapping an exec pipe"))
    };
    let stdin = match child.stdin.take() {
        Some(fd) => Some(Box::pin(
            tokio::net::unix::pipe::Sender::from_file(std::fs::File::from(fd))
                .map_err(io_err("wrapping exec stdin"))?,
        ) as Writer),
        None => None,
    };
    let pipes = child.stdout.take().zip(child.stderr.take());
    let (stdout, stderr) =
        pipes.ok_or_else(|| Error::Runtime("exec: output pipes missing".into()))?;
    let stdout = receiver(stdout)?;
    let stderr = receiver(stderr)?;
    Ok((stdin, Box::pin(stdout), Some(Box::pin(stderr)), None))
}

#[async_trait]
impl RuntimeService for BuiltinRuntime {
    async fn version(&self) -> Result<cri::VersionResponse> {
        Ok(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "skiff".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        })
    }

    async fn run_pod_sandbox(&self, config: cri::PodSandboxConfig) -> Result<String> {
        let id = new_id();
        tracing::info!(sandbox = %id, pod = ?config.metadata.as_ref().map(|m| &m.name), "running pod sandbox");
        match self.create_sandbox(&id, &config).await {
            Ok(_) => Ok(id),
            Err(e) => {
                if let Err(cleanup) = self.remove_pod_sandbox(&id).await {
                    tracing::warn!(sandbox = %id, error = %cleanup, "cleaning up a failed sandbox");
                }
                Err(e)
            }
        }
    }

    async fn stop_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<()> {
        let rec = match self.sandbox(pod_sandbox_id) {
            Ok(r) => r,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_sandbox_inner(rec).await
    }

    async fn remove_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<()> {
        let rec = match self.sandbox(pod_sandbox_id) {
            Ok(r) => r,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_sandbox_inner(rec.clone()).await?;
        let ids: Vec<String> = self
            .sandbox_containers(&rec.id)?
            .into_iter()
            .map(|c| c.id)
            .collect();
        for id in ids {
            self.remove_container(&id).await?;
        }
        let dir = self.sandbox_dir(&rec.id);
        blocking(move || {
            namespaces::release(&dir.join("ns"))?;
            namespaces::unmount(&dir.join("shm"))?;
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err(format!("removing {}", dir.display()))(e)),
            }
        })
        .await?;
        self.inner
            .sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&rec.id);
        tracing::info!(sandbox = %rec.id, "pod sandbox removed");
        Ok(())
    }

    async fn pod_sandbox_status(&self, pod_sandbox_id: &str) -> Result<cri::PodSandboxStatus> {
        let rec = self.sandbox(pod_sandbox_id)?;
        Ok(self.sandbox_status(&rec))
    }

    async fn list_pod_sandbox(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>> {
        let all: Vec<SandboxRecord> = self
            .inner
            .sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out: Vec<cri::PodSandbox> = all
            .iter()
            .map(|s| {
                let st = self.sandbox_status(s);
                cri::PodSandbox {
                    id: st.id,
                    metadata: st.metadata,
                    state: st.state,
                    created_at: st.created_at,
                    labels: st.labels,
                    annotations: st.annotations,
                    runtime_handler: st.runtime_handler,
                }
            })
            .filter(|s| match &filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || s.id.starts_with(&f.id))
                        && f.state.as_ref().is_none_or(|v| v.state == s.state)
                        && labels_match(&s.labels, &f.label_selector)
                }
            })
            .collect();
        out.sort_by_key(|s| s.created_at);
        Ok(out)
    }

    async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: cri::ContainerConfig,
        _sandbox_config: &cri::PodSandboxConfig,
    ) -> Result<String> {
        let sandbox = self.sandbox(pod_sandbox_id)?;
        if sandbox.state != SandboxState::Ready {
            return Err(Error::InvalidArgument(format!(
                "pod sandbox {} is not ready",
                sandbox.id
            )));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image_name.is_empty() {
            return Err(Error::InvalidArgument(
                "container config has no image".into(),
            ));
        }
        let images = self.inner.images.clone();
        let lookup = image_name.clone();
        let image = blocking(move || images.resolve(&lookup))
            .await?
            .ok_or_else(|| Error::NotFound(format!("image {image_name}")))?;
        let id = new_id();
        let this = self.clone();
        let id2 = id.clone();
        let rec = blocking(move || {
            let prepared = this.prepare_container(&id2, &sandbox, &config, &image, &image_name);
            match prepared {
                Ok(rec) => {
                    this.save_container(&rec)?;
                    Ok(rec)
                }
                Err(e) => {
                    if let Err(cleanup) = this.destroy_container_files(&id2) {
                        tracing::warn!(container = %id2, error = %cleanup, "cleaning up a failed create");
                    }
                    Err(e)
                }
            }
        })
        .await?;
        tracing::info!(container = %rec.id, sandbox = %rec.sandbox_id, image = %rec.image, "container created");
        Ok(id)
    }

    async fn start_container(&self, container_id: &str) -> Result<()> {
        let mut rec = self.container(container_id)?;
        if rec.phase != ContainerPhase::Created {
            return Err(Error::InvalidArgument(format!(
                "container {} is not in the created state",
                rec.id
            )));
        }
        let req = monitor::StartRequest {
            id: rec.id.clone(),
            youki_root: self.youki_root(),
            bundle: self.container_dir(&rec.id).join("bundle"),
            log_path: rec.log_path.clone(),
            state_dir: self.container_dir(&rec.id),
            cgroups_path: rec.cgroups_path.clone(),
            stdin: rec.config.stdin,
            stdin_once: rec.config.stdin_once,
            tty: rec.config.tty,
        };
        // Taken before the start: a container that exits at once must not
        // show a finish before its start.
        let starting_at = now_nanos();
        let zygote = self.inner.config.zygote.clone();
        match blocking(move || monitor::start_container(&req, zygote.as_deref())).await {
            Ok(pid) => {
                rec.phase = ContainerPhase::Running;
                rec.pid = Some(pid);
                rec.started_at = starting_at;
                self.save_container(&rec)?;
                tracing::info!(container = %rec.id, pid, "container started");
                Ok(())
            }
            Err(e) => {
                rec.phase = ContainerPhase::Exited;
                rec.exit_code = 128;
                rec.finished_at = now_nanos();
                rec.reason = "StartError".into();
                rec.message = e.to_string();
                self.save_container(&rec)?;
                Err(e)
            }
        }
    }

    async fn stop_container(&self, container_id: &str, timeout: Duration) -> Result<()> {
        let rec = self.container(container_id)?;
        if rec.phase != ContainerPhase::Running {
            if rec.phase == ContainerPhase::Created {
                let mut rec = rec;
                rec.phase = ContainerPhase::Exited;
                rec.finished_at = now_nanos();
                rec.reason = "Stopped".into();
                self.save_container(&rec)?;
            }
            return Ok(());
        }
        let Some(pid) = rec.pid.map(Pid::from_raw) else {
            return Err(Error::Runtime(format!(
                "container {} is running without a pid",
                rec.id
            )));
        };
        let dir = self.container_dir(&rec.id);
        let signal = rec
            .stop_signal
            .as_deref()
            .map(parse_signal)
            .unwrap_or(Signal::SIGTERM);
        let this = self.clone();
        let id = rec.id.clone();
        blocking(move || {
            let exited = |limit: Duration| {
                let deadline = Instant::now() + limit;
                loop {
                    if monitor::read_exit_info(&dir).is_some() {
                        return true;
                    }
                    if Instant::now() >= deadline {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            };
            if !timeout.is_zero() {
                tracing::debug!(container = %id, ?signal, "stopping container");
                let _ = kill(pid, signal);
                if exited(timeout) {
                    return Ok(());
                }
            }
            if monitor::read_exit_info(&dir).is_none() {
                tracing::debug!(container = %id, "killing container");
                let _ = kill(pid, Signal::SIGKILL);
            }
            if exited(Duration::from_secs(10)) {
                Ok(())
            } else {
                Err(Error::Runtime(format!(
                    "container {id} did not exit after SIGKILL"
                )))
            }
        })
        .await?;
        this.container(container_id).map(|_| ())
    }

    async fn remove_container(&self, container_id: &str) -> Result<()> {
        let rec = match self.container(container_id) {
            Ok(r) => r,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if rec.phase == ContainerPhase::Running {
            self.stop_container(&rec.id, Duration::ZERO).await?;
        }
        let this = self.clone();
        let id = rec.id.clone();
        blocking(move || this.destroy_container_files(&id)).await?;
        self.inner
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&rec.id);
        tracing::info!(container = %rec.id, "container removed");
        Ok(())
    }

    async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>> {
        let this = self.clone();
        let state = filter
            .as_ref()
            .and_then(|f| f.state.as_ref())
            .map(|v| v.state);
        // Everything but the state is known without a refresh.
        let selected = blocking(move || {
            this.containers_where(|c| match &filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || c.id.starts_with(&f.id))
                        && (f.pod_sandbox_id.is_empty()
                            || c.sandbox_id.starts_with(&f.pod_sandbox_id))
                        && labels_match(&c.config.labels, &f.label_selector)
                }
            })
        })
        .await?;
        let mut out: Vec<cri::Container> = selected
            .iter()
            .map(Self::container_record_to_cri)
            .filter(|c| state.is_none_or(|s| s == c.state))
            .collect();
        out.sort_by_key(|c| c.created_at);
        Ok(out)
    }

    async fn container_status(&self, container_id: &str) -> Result<cri::ContainerStatus> {
        let this = self.clone();
        let id = container_id.to_string();
        let c = blocking(move || this.container(&id)).await?;
        Ok(cri::ContainerStatus {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            state: Self::cri_state(&c),
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            exit_code: c.exit_code,
            image: Some(cri::ImageSpec {
                image: c.image.clone(),
                ..Default::default()
            }),
            image_ref: c.image_ref.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            mounts: c.config.mounts.clone(),
            log_path: c.log_path.display().to_string(),
            resources: c
                .config
                .linux
                .as_ref()
                .and_then(|l| l.resources.clone())
                .map(|r| cri::ContainerResources {
                    linux: Some(r),
                    ..Default::default()
                }),
            image_id: c.image_ref.clone(),
            user: None,
        })
    }

    async fn exec_sync(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<cri::ExecSyncResponse> {
        let c = self.container(container_id)?;
        let spec = self.exec_spec(&c, cmd)?;
        let zygote = self.inner.config.zygote.clone();
        blocking(move || {
            let mut child = monitor::spawn_exec(
                &spec,
                monitor::ExecIo::Pipes { stdin: false },
                zygote.as_deref(),
            )?;
            let pipes = child.stdout.take().zip(child.stderr.take());
            let (out, err) =
                pipes.ok_or_else(|| Error::Runtime("exec: output pipes missing".into()))?;
            let (out, err) = (std::fs::File::from(out), std::fs::File::from(err));
            let read_all = |mut f: std::fs::File| {
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let _ = std::io::Read::read_to_end(&mut f, &mut buf);
                    buf
                })
            };
            let (out_t, err_t) = (read_all(out), read_all(err));
            let mut timed_out = false;
            if !timeout.is_zero() && !monitor::wait_readable(child.report_fd(), timeout) {
                timed_out = true;
                let _ = kill(Pid::from_raw(child.pid), Signal::SIGKILL);
            }
            let exec_pid = child.pid;
            let exit_code = child.wait()?;
            let stdout = out_t.join().unwrap_or_default();
            let stderr = err_t.join().unwrap_or_default();
            if timed_out {
                return Err(Error::Runtime(format!(
                    "exec (pid {exec_pid}) timed out after {timeout:?}"
                )));
            }
            Ok(cri::ExecSyncResponse {
                stdout,
                stderr,
                exit_code,
            })
        })
        .await
    }

    async fn exec(&self, request: ExecRequest) -> Result<ExecSession> {
        let c = self.container(&request.container_id)?;
        let spec = self.exec_spec(&c, request.cmd.clone())?;
        let io = if request.tty {
            monitor::ExecIo::Tty
        } else {
            monitor::ExecIo::Pipes {
                stdin: request.stdin,
            }
        };
        let zygote = self.inner.config.zygote.clone();
        let mut child = blocking(move || monitor::spawn_exec(&spec, io, zygote.as_deref())).await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let session = exec_streams(&mut child, request.stdin);
        tokio::task::spawn_blocking(move || {
            let code = child.wait().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "exec ended without an exit code");
                -1
            });
            let _ = tx.send(code);
        });
        let (stdin, stdout, stderr, resize) = session?;
        Ok(ExecSession {
            stdin,
            stdout,
            stderr,
            resize,
            exit_code: rx,
        })
    }

    async fn attach(&self, request: AttachRequest) -> Result<AttachSession> {
        let c = self.container(&request.container_id)?;
        if c.phase != ContainerPhase::Running {
            return Err(Error::InvalidArgument(format!(
                "container {} is not running",
                c.id
            )));
        }
        attach::attach(&self.container_dir(&c.id), &request).await
    }

    async fn reopen_container_log(&self, container_id: &str) -> Result<()> {
        let c = self.container(container_id)?;
        if c.phase != ContainerPhase::Running {
            return Err(Error::InvalidArgument(format!(
                "container {} is not running",
                c.id
            )));
        }
        attach::reopen_log(&self.container_dir(&c.id), &c.id).await?;
        tracing::debug!(container = %c.id, log = %c.log_path.display(), "container log reopened");
        Ok(())
    }

    async fn port_forward(&self, pod_sandbox_id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let sandbox = self.sandbox(pod_sandbox_id)?;
        if sandbox.state != SandboxState::Ready {
            return Err(Error::InvalidArgument(format!(
                "pod sandbox {} is not ready",
                sandbox.id
            )));
        }
        // A host-network sandbox has no namespace of its own: the node's.
        crate::portforward::connect(sandbox.netns.as_deref(), port).await
    }

    async fn update_runtime_config(&self, pod_cidr: &str) -> Result<()> {
        self.inner.network.update_pod_cidr(pod_cidr).await
    }

    async fn network_ready(&self) -> std::result::Result<(), String> {
        self.inner.network.ready().await
    }
}

#[async_trait]
impl ImageService for BuiltinRuntime {
    async fn pull_image(
        &self,
        image: cri::ImageSpec,
        auth: Option<cri::AuthConfig>,
    ) -> Result<String> {
        let reference = Reference::parse(&image.image)?;
        // A digest names content that cannot change: present means done. A
        // tag may have moved, so it is always asked of the registry (the
        // agent decides, by imagePullPolicy, whether to pull at all).
        if reference.digest.is_some() {
            let images = self.inner.images.clone();
            let name = image.image.clone();
            if let Some(found) = blocking(move || images.resolve(&name)).await? {
                return Ok(found.id);
            }
        }
        let record = crate::images::pull::pull(
            self.inner.images.clone(),
            &reference,
            auth.as_ref(),
            &self.inner.config.pull,
        )
        .await?;
        Ok(record.id)
    }

    async fn image_status(&self, image: cri::ImageSpec) -> Result<Option<cri::Image>> {
        let images = self.inner.images.clone();
        let found = blocking(move || images.resolve(&image.image)).await?;
        Ok(found.map(|r| self.image_to_cri(&r)))
    }

    async fn list_images(&self, filter: Option<cri::ImageFilter>) -> Result<Vec<cri::Image>> {
        let images = self.inner.images.clone();
        let wanted = filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .filter(|i| !i.is_empty());
        let records = blocking(move || match wanted {
            Some(name) => Ok(images.resolve(&name)?.into_iter().collect()),
            None => images.list(),
        })
        .await?;
        Ok(records.iter().map(|r| self.image_to_cri(r)).collect())
    }

    async fn image_fs_info(&self) -> Result<cri::ImageFsInfoResponse> {
        let root = self.inner.images.root().to_path_buf();
        let (bytes, inodes) = blocking(move || {
            disk_usage(&root).map_err(io_err(format!("measuring {}", root.display())))
        })
        .await?;
        Ok(cri::ImageFsInfoResponse {
            image_filesystems: vec![cri::FilesystemUsage {
                timestamp: now_nanos(),
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: self.inner.images.root().display().to_string(),
                }),
                used_bytes: Some(cri::UInt64Value { value: bytes }),
                inodes_used: Some(cri::UInt64Value { value: inodes }),
            }],
            container_filesystems: Vec::new(),
        })
    }

    async fn remove_image(&self, image: cri::ImageSpec) -> Result<()> {
        let images = self.inner.images.clone();
        let name = image.image.clone();
        let Some(record) = blocking(move || images.resolve(&name)).await? else {
            return Ok(());
        };
        let users: Vec<String> = self
            .inner
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|c| c.image_ref == record.id)
            .map(|c| c.id.clone())
            .collect();
        if !users.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "image {} is used by containers {users:?}",
                record.id
            )));
        }
        let images = self.inner.images.clone();
        blocking(move || images.remove(&record.id).map(|_| ())).await
    }
}
