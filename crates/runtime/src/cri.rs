//! [`ContainerRuntime`](crate::ContainerRuntime) over a CRI gRPC endpoint
//! (containerd, CRI-O): every verb is the CRI call of the same name.
//!
//! Interactive `exec` is not available through this client: the CRI answers
//! `Exec` with a streaming URL whose protocol (SPDY/WebSocket) is not
//! implemented here, so it returns [`Error::Unsupported`]. Port forwarding
//! does not use the CRI's `PortForward` (a streaming URL too): it connects
//! to the sandbox's pod IP from the node, so unlike with the built-in
//! runtime a listener bound only to the pod's loopback is not reachable.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::api::{Error, ExecRequest, ExecSession, ImageService, Result, RuntimeService};
use crate::cri_types as cri;
use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;

/// A CRI runtime reached over gRPC.
#[derive(Debug, Clone)]
pub struct CriClient {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    endpoint: String,
}

fn status_err<'a>(
    call: &'static str,
    endpoint: &'a str,
) -> impl FnOnce(tonic::Status) -> Error + 'a {
    move |s| {
        let message = format!("{call} on {endpoint}: {}", s.message());
        match s.code() {
            tonic::Code::NotFound => Error::NotFound(message),
            tonic::Code::InvalidArgument => Error::InvalidArgument(message),
            _ => Error::Runtime(format!("{message} ({:?})", s.code())),
        }
    }
}

fn secs(d: Duration) -> i64 {
    // The CRI counts whole seconds; round up so a short timeout is not zero
    // (which means "no timeout" for exec and "kill now" for stop).
    (d.as_millis().div_ceil(1000)) as i64
}

impl CriClient {
    /// Connects to `unix:///run/containerd/containerd.sock` (or a bare
    /// socket path, or an `http://` address).
    pub async fn connect(endpoint: &str) -> Result<Self> {
        let channel = if let Some(path) = endpoint
            .strip_prefix("unix://")
            .or_else(|| endpoint.starts_with('/').then_some(endpoint))
        {
            let path = PathBuf::from(path);
            Endpoint::try_from("http://[::1]:0")
                .map_err(|e| Error::InvalidArgument(format!("CRI endpoint {endpoint}: {e}")))?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
        } else {
            Endpoint::try_from(endpoint.to_string())
                .map_err(|e| Error::InvalidArgument(format!("CRI endpoint {endpoint}: {e}")))?
                .connect()
                .await
        }
        .map_err(|e| Error::Runtime(format!("connecting to CRI endpoint {endpoint}: {e}")))?;
        Ok(CriClient {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            endpoint: endpoint.to_string(),
        })
    }
}

#[async_trait]
impl RuntimeService for CriClient {
    async fn version(&self) -> Result<cri::VersionResponse> {
        let r = self
            .runtime
            .clone()
            .version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await;
        Ok(r.map_err(status_err("Version", &self.endpoint))?
            .into_inner())
    }

    async fn run_pod_sandbox(&self, config: cri::PodSandboxConfig) -> Result<String> {
        let r = self
            .runtime
            .clone()
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await;
        Ok(r.map_err(status_err("RunPodSandbox", &self.endpoint))?
            .into_inner()
            .pod_sandbox_id)
    }

    async fn stop_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<()> {
        let r = self
            .runtime
            .clone()
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod_sandbox_id.into(),
            })
            .await;
        r.map_err(status_err("StopPodSandbox", &self.endpoint))
            .map(|_| ())
    }

    async fn remove_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<()> {
        let r = self
            .runtime
            .clone()
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod_sandbox_id.into(),
            })
            .await;
        r.map_err(status_err("RemovePodSandbox", &self.endpoint))
            .map(|_| ())
    }

    async fn pod_sandbox_status(&self, pod_sandbox_id: &str) -> Result<cri::PodSandboxStatus> {
        let r = self
            .runtime
            .clone()
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod_sandbox_id.into(),
                verbose: false,
            })
            .await;
        r.map_err(status_err("PodSandboxStatus", &self.endpoint))?
            .into_inner()
            .status
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {pod_sandbox_id}")))
    }

    async fn list_pod_sandbox(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>> {
        let r = self
            .runtime
            .clone()
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter })
            .await;
        Ok(r.map_err(status_err("ListPodSandbox", &self.endpoint))?
            .into_inner()
            .items)
    }

    async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: &cri::PodSandboxConfig,
    ) -> Result<String> {
        let r = self
            .runtime
            .clone()
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_sandbox_id.into(),
                config: Some(config),
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await;
        Ok(r.map_err(status_err("CreateContainer", &self.endpoint))?
            .into_inner()
            .container_id)
    }

    async fn start_container(&self, container_id: &str) -> Result<()> {
        let r = self
            .runtime
            .clone()
            .start_container(cri::StartContainerRequest {
                container_id: container_id.into(),
            })
            .await;
        r.map_err(status_err("StartContainer", &self.endpoint))
            .map(|_| ())
    }

    async fn stop_container(&self, container_id: &str, timeout: Duration) -> Result<()> {
        let r = self
            .runtime
            .clone()
            .stop_container(cri::StopContainerRequest {
                container_id: container_id.into(),
                timeout: secs(timeout),
            })
            .await;
        r.map_err(status_err("StopContainer", &self.endpoint))
            .map(|_| ())
    }

    async fn remove_container(&self, container_id: &str) -> Result<()> {
        let r = self
            .runtime
            .clone()
            .remove_container(cri::RemoveContainerRequest {
                container_id: container_id.into(),
            })
            .await;
        r.map_err(status_err("RemoveContainer", &self.endpoint))
            .map(|_| ())
    }

    async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>> {
        let r = self
            .runtime
            .clone()
            .list_containers(cri::ListContainersRequest { filter })
            .await;
        Ok(r.map_err(status_err("ListContainers", &self.endpoint))?
            .into_inner()
            .containers)
    }

    async fn container_status(&self, container_id: &str) -> Result<cri::ContainerStatus> {
        let r = self
            .runtime
            .clone()
            .container_status(cri::ContainerStatusRequest {
                container_id: container_id.into(),
                verbose: false,
            })
            .await;
        r.map_err(status_err("ContainerStatus", &self.endpoint))?
            .into_inner()
            .status
            .ok_or_else(|| Error::NotFound(format!("container {container_id}")))
    }

    async fn exec_sync(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<cri::ExecSyncResponse> {
        let r = self
            .runtime
            .clone()
            .exec_sync(cri::ExecSyncRequest {
                container_id: container_id.into(),
                cmd,
                timeout: secs(timeout),
            })
            .await;
        Ok(r.map_err(status_err("ExecSync", &self.endpoint))?
            .into_inner())
    }

    async fn exec(&self, _request: ExecRequest) -> Result<ExecSession> {
        Err(Error::Unsupported(
            "interactive exec through a CRI endpoint (streaming server protocol)",
        ))
    }

    async fn port_forward(&self, pod_sandbox_id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let status = self.pod_sandbox_status(pod_sandbox_id).await?;
        if status.state != cri::PodSandboxState::SandboxReady as i32 {
            return Err(Error::InvalidArgument(format!(
                "pod sandbox {pod_sandbox_id} is not ready"
            )));
        }
        let ip = status
            .network
            .as_ref()
            .map(|n| n.ip.as_str())
            .filter(|ip| !ip.is_empty());
        // A host-network sandbox reports no address: it is the node's.
        let ip: std::net::IpAddr = match ip {
            Some(ip) => ip.parse().map_err(|e| {
                Error::Runtime(format!("pod sandbox {pod_sandbox_id} has IP {ip:?}: {e}"))
            })?,
            None => std::net::Ipv4Addr::LOCALHOST.into(),
        };
        let addr = std::net::SocketAddr::new(ip, port);
        let stream =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| Error::Io {
                    context: format!("connecting to {addr} of pod sandbox {pod_sandbox_id}"),
                    source: std::io::ErrorKind::TimedOut.into(),
                })?
                .map_err(|source| Error::Io {
                    context: format!("connecting to {addr} of pod sandbox {pod_sandbox_id}"),
                    source,
                })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn reopen_container_log(&self, container_id: &str) -> Result<()> {
        let r = self
            .runtime
            .clone()
            .reopen_container_log(cri::ReopenContainerLogRequest {
                container_id: container_id.into(),
            })
            .await;
        r.map_err(status_err("ReopenContainerLog", &self.endpoint))
            .map(|_| ())
    }

    async fn update_runtime_config(&self, pod_cidr: &str) -> Result<()> {
        let r = self
            .runtime
            .clone()
            .update_runtime_config(cri::UpdateRuntimeConfigRequest {
                runtime_config: Some(cri::RuntimeConfig {
                    network_config: Some(cri::NetworkConfig {
                        pod_cidr: pod_cidr.into(),
                    }),
                }),
            })
            .await;
        r.map_err(status_err("UpdateRuntimeConfig", &self.endpoint))
            .map(|_| ())
    }

    async fn network_ready(&self) -> std::result::Result<(), String> {
        let r = self
            .runtime
            .clone()
            .status(cri::StatusRequest { verbose: false })
            .await;
        match r {
            Ok(r) => network_condition(r.into_inner().status.as_ref()),
            Err(e) => Err(format!("the runtime's status is unknown: {}", e.message())),
        }
    }
}

/// The kubelet's reading of the CRI `Status`: the network is ready only
/// when the runtime reports a `NetworkReady` condition that is true (a
/// missing condition counts as not ready). `Err` holds the runtime's
/// message (its reason when it gave none).
fn network_condition(status: Option<&cri::RuntimeStatus>) -> std::result::Result<(), String> {
    let condition = status
        .into_iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.r#type == "NetworkReady");
    match condition {
        Some(c) if c.status => Ok(()),
        Some(c) if !c.message.is_empty() => Err(c.message.clone()),
        Some(c) => Err(c.reason.clone()),
        None => Err("the runtime reports no NetworkReady condition".into()),
    }
}

#[async_trait]
impl ImageService for CriClient {
    async fn pull_image(
        &self,
        image: cri::ImageSpec,
        auth: Option<cri::AuthConfig>,
    ) -> Result<String> {
        let r = self
            .images
            .clone()
            .pull_image(cri::PullImageRequest {
                image: Some(image),
                auth,
                sandbox_config: None,
            })
            .await;
        Ok(r.map_err(status_err("PullImage", &self.endpoint))?
            .into_inner()
            .image_ref)
    }

    async fn image_status(&self, image: cri::ImageSpec) -> Result<Option<cri::Image>> {
        let r = self
            .images
            .clone()
            .image_status(cri::ImageStatusRequest {
                image: Some(image),
                verbose: false,
            })
            .await;
        Ok(r.map_err(status_err("ImageStatus", &self.endpoint))?
            .into_inner()
            .image)
    }

    async fn list_images(&self, filter: Option<cri::ImageFilter>) -> Result<Vec<cri::Image>> {
        let r = self
            .images
            .clone()
            .list_images(cri::ListImagesRequest { filter })
            .await;
        Ok(r.map_err(status_err("ListImages", &self.endpoint))?
            .into_inner()
            .images)
    }

    async fn remove_image(&self, image: cri::ImageSpec) -> Result<()> {
        let r = self
            .images
            .clone()
            .remove_image(cri::RemoveImageRequest { image: Some(image) })
            .await;
        r.map_err(status_err("RemoveImage", &self.endpoint))
            .map(|_| ())
    }

    async fn image_fs_info(&self) -> Result<cri::ImageFsInfoResponse> {
        let r = self
            .images
            .clone()
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await;
        Ok(r.map_err(status_err("ImageFsInfo", &self.endpoint))?
            .into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_is_ready_only_when_the_runtime_says_so() {
        let condition =
            |type_: &str, status: bool, reason: &str, message: &str| cri::RuntimeCondition {
                r#type: type_.into(),
                status,
                reason: reason.into(),
                message: message.into(),
            };
        let with = |conditions| cri::RuntimeStatus { conditions };
        let runtime_only = with(vec![condition("RuntimeReady", true, "", "")]);
        let ready = with(vec![
            condition("RuntimeReady", true, "", ""),
            condition("NetworkReady", true, "", ""),
        ]);
        let not_ready = with(vec![condition(
            "NetworkReady",
            false,
            "NetworkPluginNotReady",
            "cni plugin not initialized",
        )]);
        let bare = with(vec![condition("NetworkReady", false, "NoCNI", "")]);
        assert_eq!(network_condition(Some(&ready)), Ok(()));
        assert_eq!(
            network_condition(Some(&not_ready)),
            Err("cni plugin not initialized".into())
        );
        assert_eq!(network_condition(Some(&bare)), Err("NoCNI".into()));
        assert!(network_condition(Some(&runtime_only)).is_err());
        assert!(network_condition(None).is_err());
    }

    #[test]
    fn timeouts_round_up_to_whole_seconds() {
        assert_eq!(secs(Duration::ZERO), 0);
        assert_eq!(secs(Duration::from_millis(1)), 1);
        assert_eq!(secs(Duration::from_secs(30)), 30);
        assert_eq!(secs(Duration::from_millis(30_001)), 31);
    }
}
