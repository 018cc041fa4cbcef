//! The runtime interface: the CRI's verbs as an async trait.
//!
//! Shapes follow `k8s.io/cri-api/pkg/apis/runtime/v1/api.proto`; where the CRI
//! hands back a streaming URL (`Exec`, `Attach`, `PortForward`) the trait
//! returns the streams themselves ([`ExecSession`], [`AttachSession`], a
//! connected socket), because the node agent serves them to the API server
//! directly.
//! Container logs are not a verb: as with the CRI, the runtime writes each
//! container's output to `ContainerConfig.log_path` under the sandbox's
//! `log_directory` in the CRI log format, and the agent reads the file. The
//! agent also rotates it: it renames the file and calls
//! [`RuntimeService::reopen_container_log`] (the CRI's `ReopenContainerLog`).

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use crate::cri_types as cri;

/// Errors of any runtime, classified the way the agent needs to react.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sandbox, container or image does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request cannot be satisfied as asked (bad config, bad reference).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The image could not be pulled or imported.
    #[error("image {image}: {message}")]
    Image { image: String, message: String },
    /// The runtime does not implement this verb.
    #[error("unsupported by this runtime: {0}")]
    Unsupported(&'static str),
    /// A file-system or kernel operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Anything else the runtime reports (a CRI status, a libcontainer error).
    #[error("{0}")]
    Runtime(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `RuntimeService` of the CRI: sandboxes and containers.
#[async_trait]
pub trait RuntimeService: Send + Sync {
    async fn version(&self) -> Result<cri::VersionResponse>;

    /// Creates and starts a pod sandbox (its network, IPC and UTS
    /// namespaces); returns the sandbox id.
    async fn run_pod_sandbox(&self, config: cri::PodSandboxConfig) -> Result<String>;
    /// Stops every container of the sandbox and releases its namespaces'
    /// processes. Idempotent.
    async fn stop_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<()>;
    /// Removes a stopped sandbox and its containers. Idempotent.
    async fn remove_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<()>;
    async fn pod_sandbox_status(&self, pod_sandbox_id: &str) -> Result<cri::PodSandboxStatus>;
    async fn list_pod_sandbox(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>>;

    /// Creates a container in a sandbox; returns the container id.
    async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: &cri::PodSandboxConfig,
    ) -> Result<String>;
    async fn start_container(&self, container_id: &str) -> Result<()>;
    /// SIGTERM (or the image's stop signal), then SIGKILL after `timeout`.
    async fn stop_container(&self, container_id: &str, timeout: Duration) -> Result<()>;
    async fn remove_container(&self, container_id: &str) -> Result<()>;
    async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>>;
    async fn container_status(&self, container_id: &str) -> Result<cri::ContainerStatus>;

    /// Runs a command in a running container and collects its output
    /// (exec probes, hooks).
    async fn exec_sync(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<cri::ExecSyncResponse>;
    /// Starts an interactive command in a running container (`kubectl exec`).
    async fn exec(&self, request: ExecRequest) -> Result<ExecSession>;
    /// Attaches to the streams of a running container's main process
    /// (`kubectl attach`): its output from now on, and its stdin when the
    /// container was created with `stdin`.
    async fn attach(&self, _request: AttachRequest) -> Result<AttachSession> {
        Err(Error::Unsupported("attach"))
    }

    /// Makes the runtime open the container's log path again and write the
    /// container's further output there (the CRI's `ReopenContainerLog`):
    /// log rotation renames the file first. Fails unless the container runs;
    /// no output is lost, whatever was written before the call is in the
    /// renamed file.
    async fn reopen_container_log(&self, _container_id: &str) -> Result<()> {
        Err(Error::Unsupported("reopen_container_log"))
    }

    /// Opens a TCP connection to `port` of the sandbox, as `kubectl
    /// port-forward` reaches it (the CRI's `PortForward`, which answers
    /// with a streaming URL instead): on the loopback of the sandbox's
    /// network namespace, so a listener bound to 127.0.0.1 inside the pod
    /// is reachable too.
    async fn port_forward(
        &self,
        _pod_sandbox_id: &str,
        _port: u16,
    ) -> Result<tokio::net::TcpStream> {
        Err(Error::Unsupported("port_forward"))
    }

    /// The node's pod CIDR is known or changed (CRI `UpdateRuntimeConfig`).
    async fn update_runtime_config(&self, _pod_cidr: &str) -> Result<()> {
        Err(Error::Unsupported("update_runtime_config"))
    }

    /// The `NetworkReady` condition of the CRI's `Status`: `Err(message)`
    /// while the runtime cannot give sandboxes a pod network yet (the node
    /// agent then reports the node not Ready, as the kubelet does).
    async fn network_ready(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// `ImageService` of the CRI.
#[async_trait]
pub trait ImageService: Send + Sync {
    /// Pulls (or finds already present) an image; returns its image ref
    /// (the config digest, `sha256:…`).
    async fn pull_image(
        &self,
        image: cri::ImageSpec,
        auth: Option<cri::AuthConfig>,
    ) -> Result<String>;
    /// `Ok(None)` when the image is not present.
    async fn image_status(&self, image: cri::ImageSpec) -> Result<Option<cri::Image>>;
    async fn list_images(&self, filter: Option<cri::ImageFilter>) -> Result<Vec<cri::Image>>;
    async fn remove_image(&self, image: cri::ImageSpec) -> Result<()>;
    /// The file systems holding images and what images use on them (the
    /// CRI's `ImageFsInfo`): `fs_id.mountpoint` is a directory on that file
    /// system (the image store's root), whose capacity the agent reads
    /// itself, as the kubelet does.
    async fn image_fs_info(&self) -> Result<cri::ImageFsInfoResponse> {
        Err(Error::Unsupported("image_fs_info"))
    }
}

/// What the node agent holds: both services of one runtime.
pub trait ContainerRuntime: RuntimeService + ImageService {}
impl<T: RuntimeService + ImageService> ContainerRuntime for T {}

/// An interactive exec, as `kubectl exec` asks for it.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
}

/// The live streams of an exec started by [`RuntimeService::exec`].
pub struct ExecSession {
    /// Present when `ExecRequest.stdin` was set; dropping it closes stdin.
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    /// stdout (with a TTY: the terminal's combined output).
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    /// stderr; `None` with a TTY.
    pub stderr: Option<Pin<Box<dyn AsyncRead + Send>>>,
    /// Terminal size changes (columns, rows); `None` without a TTY.
    pub resize: Option<mpsc::Sender<(u16, u16)>>,
    /// The command's exit code once it ends.
    pub exit_code: oneshot::Receiver<i32>,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession")
            .field("stdin", &self.stdin.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("tty", &self.resize.is_some())
            .finish()
    }
}

/// An attach to a running container, as `kubectl attach` asks for it.
#[derive(Debug, Clone)]
pub struct AttachRequest {
    pub container_id: String,
    /// Write to the container's stdin (only if it was created with `stdin`).
    pub stdin: bool,
    /// Receive its stdout (with a TTY: the terminal's output).
    pub stdout: bool,
    /// Receive its stderr (never with a TTY).
    pub stderr: bool,
}

/// The live streams of an attach started by [`RuntimeService::attach`].
///
/// The output streams end when the container exits (or the runtime drops
/// the attach); dropping the session detaches. Unlike an exec there is no
/// exit code: the container's own status reports how it ended.
pub struct AttachSession {
    /// Present when the request asked for stdin and the container keeps one
    /// open; shutting it down ends this attach's input (and closes the
    /// container's stdin when it was created with `stdin_once`).
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    /// stdout (with a TTY: the terminal's output); empty unless asked for.
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    /// stderr; `None` with a TTY, empty unless asked for.
    pub stderr: Option<Pin<Box<dyn AsyncRead + Send>>>,
    /// Terminal size changes (columns, rows); `None` without a TTY.
    pub resize: Option<mpsc::Sender<(u16, u16)>>,
}

impl std::fmt::Debug for AttachSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachSession")
            .field("stdin", &self.stdin.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("tty", &self.resize.is_some())
            .finish()
    }
}
