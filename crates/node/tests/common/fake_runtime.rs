//! An in-memory [`ContainerRuntime`]: sandboxes and containers as a state
//! machine, no processes. Containers behave by their command:
//!
//! - `["fail", CODE]` / `["exit", CODE]`: exits with CODE shortly after start;
//! - anything else runs until stopped.
//!
//! On start each container writes one CRI log line (`started <name>
//! attempt <n>`) to its log file. Exec probes and `exec_sync` answer with
//! the exit code set per container name by [`FakeRuntime::set_exec_exit`]
//! (default 0) and are recorded. Interactive exec supports `echo …`,
//! `cat` (stdin to stdout) and `sh -c "exit N"`. An attach to a running
//! container prints `attached` and echoes its input, and ends (as the
//! container would with `stdinOnce`) when the input ends.
//! `reopen_container_log` creates the log file again if it was renamed away
//! (and is counted); images have sizes ([`FakeRuntime::add_image`]) and live
//! on a pretend file system whose mountpoint `image_fs_info` names.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::jiff::Timestamp;
use skiff_runtime::cri_types as cri;
use skiff_runtime::{
    AttachRequest, AttachSession, Error, ExecRequest, ExecSession, ImageService, Result,
    RuntimeService,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

fn now_ns() -> i64 {
    Timestamp::now().as_nanosecond() as i64
}

#[derive(Debug, Clone)]
struct Sandbox {
    id: String,
    config: cri::PodSandboxConfig,
    ready: bool,
    created_at: i64,
}

#[derive(Debug, Clone)]
struct Ctr {
    id: String,
    sandbox: String,
    config: cri::ContainerConfig,
    state: cri::ContainerState,
    created_at: i64,
    started_at: i64,
    finished_at: i64,
    exit_code: i32,
    log_path: PathBuf,
}

#[derive(Default)]
struct State {
    next: u64,
    sandboxes: BTreeMap<String, Sandbox>,
    containers: BTreeMap<String, Ctr>,
    /// Image name → size.
    images: BTreeMap<String, u64>,
    reopens: Vec<String>,
    reopen_fails: bool,
    exec_exit: HashMap<String, i32>,
    execs: Vec<(String, Vec<String>)>,
    stops: Vec<(String, Duration)>,
}

/// The fake runtime; clone it to keep a handle for assertions.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    state: Arc<Mutex<State>>,
}

fn labels_match(have: &HashMap<String, String>, want: &HashMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Exec probes and `exec_sync` in containers named `name` exit with
    /// `code` from now on.
    pub fn set_exec_exit(&self, name: &str, code: i32) {
        self.lock().exec_exit.insert(name.to_string(), code);
    }

    /// The commands `exec_sync` ran, with the container's name.
    pub fn execs(&self) -> Vec<(String, Vec<String>)> {
        self.lock().execs.clone()
    }

    /// `stop_container` calls: (container name, timeout).
    pub fn stops(&self) -> Vec<(String, Duration)> {
        self.lock().stops.clone()
    }

    /// Adds an image of `size` bytes, as if pulled earlier.
    pub fn add_image(&self, name: &str, size: u64) {
        self.lock().images.insert(name.to_string(), size);
    }

    /// Names of the images present.
    pub fn image_names(&self) -> Vec<String> {
        self.lock().images.keys().cloned().collect()
    }

    /// The sizes of the images present, added up.
    pub fn image_bytes(&self) -> u64 {
        self.lock().images.values().sum()
    }

    /// Container ids whose log was reopened, in order.
    pub fn reopens(&self) -> Vec<String> {
        self.lock().reopens.clone()
    }

    /// Makes `reopen_container_log` fail from now on (or not).
    pub fn set_reopen_fails(&self, fails: bool) {
        self.lock().reopen_fails = fails;
    }

    pub fn sandbox_count(&self) -> usize {
        self.lock().sandboxes.len()
    }

    /// Containers named `name` by state (`running`, `exited`, `created`).
    pub fn containers_named(&self, name: &str) -> Vec<String> {
        self.lock()
            .containers
            .values()
            .filter(|c| c.config.metadata.as_ref().is_some_and(|m| m.name == name))
            .map(|c| format!("{:?}", c.state))
            .collect()
    }

    /// Adds a sandbox as if left over from an earlier agent run.
    pub fn add_orphan_sandbox(&self, uid: &str) -> String {
        let mut s = self.lock();
        s.next += 1;
        let id = format!("sb-orphan-{}", s.next);
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "ghost".into(),
                uid: uid.into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            labels: [("io.kubernetes.pod.uid".to_string(), uid.to_string())].into(),
            ..Default::default()
        };
        s.sandboxes.insert(
            id.clone(),
            Sandbox {
                id: id.clone(),
                config,
                ready: true,
                created_at: now_ns(),
            },
        );
        id
    }

    fn name_of(c: &Ctr) -> String {
        c.config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default()
    }

    fn exit(&self, id: &str, code: i32) {
        let mut s = self.lock();
        if let Some(c) = s.containers.get_mut(id)
            && c.state == cri::ContainerState::ContainerRunning
        {
            c.state = cri::ContainerState::ContainerExited;
            c.exit_code = code;
            c.finished_at = now_ns();
        }
    }
}

#[async_trait]
impl RuntimeService for FakeRuntime {
    async fn version(&self) -> Result<cri::VersionResponse> {
        Ok(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "fake".into(),
            runtime_version: "0.1".into(),
            runtime_api_version: "v1".into(),
        })
    }

    async fn run_pod_sandbox(&self, config: cri::PodSandboxConfig) -> Result<String> {
        let mut s = self.lock();
        s.next += 1;
        let id = format!("sb-{}", s.next);
        s.sandboxes.insert(
            id.clone(),
            Sandbox {
                id: id.clone(),
                config,
                ready: true,
                created_at: now_ns(),
            },
        );
        Ok(id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut s = self.lock();
        let now = now_ns();
        for c in s.containers.values_mut().filter(|c| c.sandbox == id) {
            if c.state == cri::ContainerState::ContainerRunning {
                c.state = cri::ContainerState::ContainerExited;
                c.exit_code = 137;
                c.finished_at = now;
            }
        }
        if let Some(sb) = s.sandboxes.get_mut(id) {
            sb.ready = false;
        }
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut s = self.lock();
        s.containers.retain(|_, c| c.sandbox != id);
        s.sandboxes.remove(id);
        Ok(())
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus> {
        let s = self.lock();
        let sb = s
            .sandboxes
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("sandbox {id}")))?;
        Ok(cri::PodSandboxStatus {
            id: sb.id.clone(),
            metadata: sb.config.metadata.clone(),
            state: if sb.ready {
                cri::PodSandboxState::SandboxReady as i32
            } else {
                cri::PodSandboxState::SandboxNotready as i32
            },
            created_at: sb.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: "127.0.0.1".into(),
                additional_ips: vec![],
            }),
            labels: sb.config.labels.clone(),
            annotations: sb.config.annotations.clone(),
            ..Default::default()
        })
    }

    async fn list_pod_sandbox(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>> {
        let s = self.lock();
        let f = filter.unwrap_or_default();
        Ok(s.sandboxes
            .values()
            .filter(|sb| f.id.is_empty() || sb.id == f.id)
            .filter(|sb| labels_match(&sb.config.labels, &f.label_selector))
            .map(|sb| cri::PodSandbox {
                id: sb.id.clone(),
                metadata: sb.config.metadata.clone(),
                state: if sb.ready {
                    cri::PodSandboxState::SandboxReady as i32
                } else {
                    cri::PodSandboxState::SandboxNotready as i32
                },
                created_at: sb.created_at,
                labels: sb.config.labels.clone(),
                annotations: sb.config.annotations.clone(),
                runtime_handler: String::new(),
            })
            .collect())
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: &cri::PodSandboxConfig,
    ) -> Result<String> {
        let mut s = self.lock();
        if !s.sandboxes.contains_key(sandbox_id) {
            return Err(Error::NotFound(format!("sandbox {sandbox_id}")));
        }
        s.next += 1;
        let id = format!("c-{}", s.next);
        let log_path = PathBuf::from(&sandbox_config.log_directory).join(&config.log_path);
        s.containers.insert(
            id.clone(),
            Ctr {
                id: id.clone(),
                sandbox: sandbox_id.to_string(),
                config,
                state: cri::ContainerState::ContainerCreated,
                created_at: now_ns(),
                started_at: 0,
                finished_at: 0,
                exit_code: 0,
                log_path,
            },
        );
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let (log_path, name, attempt, exit_after) = {
            let mut s = self.lock();
            let c = s
                .containers
                .get(id)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("container {id}")))?;
            let ready = s.sandboxes.get(&c.sandbox).is_some_and(|sb| sb.ready);
            if !ready {
                return Err(Error::Runtime("sandbox is not ready".into()));
            }
            let cmd: Vec<String> = c
                .config
                .command
                .iter()
                .chain(&c.config.args)
                .cloned()
                .collect();
            let exit_after = match cmd.first().map(String::as_str) {
                Some("fail") | Some("exit") => {
                    Some(cmd.get(1).and_then(|c| c.parse().ok()).unwrap_or(1))
                }
                _ => None,
            };
            if let Some(c) = s.containers.get_mut(id) {
                c.state = cri::ContainerState::ContainerRunning;
                c.started_at = now_ns();
            }
            let attempt = c.config.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
            (c.log_path.clone(), Self::name_of(&c), attempt, exit_after)
        };
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                context: format!("creating {}", dir.display()),
                source,
            })?;
        }
        let line = skiff_node::logs::format_line(
            Timestamp::now(),
            "stdout",
            &format!("started {name} attempt {attempt}"),
        );
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| Error::Io {
                context: format!("opening {}", log_path.display()),
                source,
            })?;
        std::io::Write::write_all(&mut f, line.as_bytes()).map_err(|source| Error::Io {
            context: "writing log".into(),
            source,
        })?;
        if let Some(code) = exit_after {
            let me = self.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                me.exit(&id, code);
            });
        }
        Ok(())
    }

    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<()> {
        let mut s = self.lock();
        let name = s.containers.get(id).map(Self::name_of).unwrap_or_default();
        s.stops.push((name, timeout));
        if let Some(c) = s.containers.get_mut(id)
            && c.state == cri::ContainerState::ContainerRunning
        {
            c.state = cri::ContainerState::ContainerExited;
            c.exit_code = if timeout.is_zero() { 137 } else { 143 };
            c.finished_at = now_ns();
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        self.lock().containers.remove(id);
        Ok(())
    }

    async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>> {
        let s = self.lock();
        let f = filter.unwrap_or_default();
        Ok(s.containers
            .values()
            .filter(|c| f.id.is_empty() || c.id == f.id)
            .filter(|c| f.pod_sandbox_id.is_empty() || c.sandbox == f.pod_sandbox_id)
            .filter(|c| f.state.is_none_or(|st| st.state == c.state as i32))
            .filter(|c| labels_match(&c.config.labels, &f.label_selector))
            .map(|c| cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.sandbox.clone(),
                metadata: c.config.metadata.clone(),
                image: c.config.image.clone(),
                image_ref: c
                    .config
                    .image
                    .as_ref()
                    .map(|i| i.image.clone())
                    .unwrap_or_default(),
                state: c.state as i32,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                image_id: c
                    .config
                    .image
                    .as_ref()
                    .map(|i| image_ref(&i.image))
                    .unwrap_or_default(),
            })
            .collect())
    }

    async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus> {
        let s = self.lock();
        let c = s
            .containers
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("container {id}")))?;
        Ok(cri::ContainerStatus {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            state: c.state as i32,
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            exit_code: c.exit_code,
            image: c.config.image.clone(),
            image_ref: c
                .config
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            log_path: c.log_path.display().to_string(),
            ..Default::default()
        })
    }

    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        _timeout: Duration,
    ) -> Result<cri::ExecSyncResponse> {
        let mut s = self.lock();
        let c = s
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id}")))?;
        if c.state != cri::ContainerState::ContainerRunning {
            return Err(Error::Runtime("container is not running".into()));
        }
        let name = Self::name_of(&c);
        s.execs.push((name.clone(), cmd));
        let code = s.exec_exit.get(&name).copied().unwrap_or(0);
        Ok(cri::ExecSyncResponse {
            stdout: Vec::new(),
            stderr: if code == 0 {
                Vec::new()
            } else {
                b"not ready".to_vec()
            },
            exit_code: code,
        })
    }

    async fn exec(&self, request: ExecRequest) -> Result<ExecSession> {
        {
            let s = self.lock();
            let running = s
                .containers
                .get(&request.container_id)
                .is_some_and(|c| c.state == cri::ContainerState::ContainerRunning);
            if !running {
                return Err(Error::NotFound(format!(
                    "container {}",
                    request.container_id
                )));
            }
        }
        let (stdout_w, stdout_r) = tokio::io::duplex(64 * 1024);
        let (stderr_w, stderr_r) = tokio::io::duplex(64 * 1024);
        let (stdin_w, mut stdin_r) = tokio::io::duplex(64 * 1024);
        let (exit_tx, exit_rx) = oneshot::channel();
        let (resize_tx, _resize_rx) = mpsc::channel(4);
        let cmd = request.cmd.clone();
        tokio::spawn(async move {
            let mut out = stdout_w;
            let mut err = stderr_w;
            let code = match cmd.first().map(String::as_str) {
                Some("echo") => {
                    let _ = out
                        .write_all(format!("{}\n", cmd[1..].join(" ")).as_bytes())
                        .await;
                    0
                }
                Some("cat") => {
                    let mut buf = Vec::new();
                    let _ = stdin_r.read_to_end(&mut buf).await;
                    let _ = out.write_all(&buf).await;
                    0
                }
                Some("sh") => {
                    let script = cmd.get(2).cloned().unwrap_or_default();
                    let code = script
                        .strip_prefix("exit ")
                        .and_then(|c| c.trim().parse().ok())
                        .unwrap_or(0);
                    let _ = err.write_all(b"bye\n").await;
                    code
                }
                _ => 127,
            };
            drop(out);
            drop(err);
            let _ = exit_tx.send(code);
        });
        Ok(ExecSession {
            stdin: request
                .stdin
                .then(|| Box::pin(stdin_w) as std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>),
            stdout: Box::pin(stdout_r),
            stderr: (!request.tty)
                .then(|| Box::pin(stderr_r) as std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>),
            resize: request.tty.then_some(resize_tx),
            exit_code: exit_rx,
        })
    }

    async fn reopen_container_log(&self, id: &str) -> Result<()> {
        let log_path = {
            let mut s = self.lock();
            let c = s
                .containers
                .get(id)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("container {id}")))?;
            if c.state != cri::ContainerState::ContainerRunning {
                return Err(Error::InvalidArgument(format!(
                    "container {id} is not running"
                )));
            }
            if s.reopen_fails {
                return Err(Error::Runtime(format!(
                    "reopening the log of {id}: refused"
                )));
            }
            s.reopens.push(id.to_string());
            c.log_path
        };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map(|_| ())
            .map_err(|source| Error::Io {
                context: format!("opening {}", log_path.display()),
                source,
            })
    }

    async fn attach(&self, request: AttachRequest) -> Result<AttachSession> {
        let running = self
            .lock()
            .containers
            .get(&request.container_id)
            .is_some_and(|c| c.state == cri::ContainerState::ContainerRunning);
        if !running {
            return Err(Error::InvalidArgument(format!(
                "container {} is not running",
                request.container_id
            )));
        }
        let (mut stdout_w, stdout_r) = tokio::io::duplex(64 * 1024);
        let (stderr_w, stderr_r) = tokio::io::duplex(64 * 1024);
        let (stdin_w, mut stdin_r) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let _ = stdout_w.write_all(b"attached\n").await;
            let mut buf = [0u8; 1024];
            loop {
                match stdin_r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stdout_w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            drop(stderr_w);
        });
        Ok(AttachSession {
            stdin: request
                .stdin
                .then(|| Box::pin(stdin_w) as std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>),
            stdout: Box::pin(stdout_r),
            stderr: Some(Box::pin(stderr_r)),
            resize: None,
        })
    }
}

#[async_trait]
impl ImageService for FakeRuntime {
    async fn pull_image(
        &self,
        image: cri::ImageSpec,
        _auth: Option<cri::AuthConfig>,
    ) -> Result<String> {
        if image.image.contains("notfound") {
            return Err(Error::Image {
                image: image.image.clone(),
                message: "manifest unknown".into(),
            });
        }
        self.lock().images.entry(image.image.clone()).or_insert(0);
        Ok(image_ref(&image.image))
    }

    async fn image_status(&self, image: cri::ImageSpec) -> Result<Option<cri::Image>> {
        let s = self.lock();
        Ok(s.images
            .get_key_value(&image.image)
            .map(|(name, size)| fake_image(name, *size)))
    }

    async fn list_images(&self, _filter: Option<cri::ImageFilter>) -> Result<Vec<cri::Image>> {
        let s = self.lock();
        Ok(s.images
            .iter()
            .map(|(name, size)| fake_image(name, *size))
            .collect())
    }

    /// By name or by id.
    async fn remove_image(&self, image: cri::ImageSpec) -> Result<()> {
        self.lock()
            .images
            .retain(|name, _| *name != image.image && image_ref(name) != image.image);
        Ok(())
    }

    async fn image_fs_info(&self) -> Result<cri::ImageFsInfoResponse> {
        Ok(cri::ImageFsInfoResponse {
            image_filesystems: vec![cri::FilesystemUsage {
                timestamp: now_ns(),
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: IMAGE_FS.into(),
                }),
                used_bytes: Some(cri::UInt64Value {
                    value: self.image_bytes(),
                }),
                inodes_used: None,
            }],
            container_filesystems: Vec::new(),
        })
    }
}

/// The mountpoint the fake runtime's `image_fs_info` reports.
pub const IMAGE_FS: &str = "/fake/images";

fn fake_image(name: &str, size: u64) -> cri::Image {
    cri::Image {
        id: image_ref(name),
        repo_tags: vec![name.to_string()],
        size,
        ..Default::default()
    }
}

/// A stable fake digest of an image name.
pub fn image_ref(image: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in image.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("sha256:{h:016x}{h:016x}{h:016x}{h:016x}")
}
