//! The node's pod network as the built-in runtime's [`SandboxNetwork`]: a
//! bridge with an address from the node's pod CIDR, a veth and an address
//! per sandbox, masquerade for traffic leaving the cluster
//! (`skiff-network`). The pod CIDR arrives after registration (the
//! controller manager's node IPAM assigns it), through the runtime's
//! `update_runtime_config`; sandboxes asked for before that fail and are
//! retried by the pod worker.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use ipnet::Ipv4Net;
use skiff_network::{PodNetwork, PodNetworkConfig};
use skiff_runtime::{Error, Result, SandboxNetwork};
use tokio::sync::RwLock;

/// See the module docs.
pub struct BridgeNetwork {
    node_name: String,
    cluster_cidr: Ipv4Net,
    service_cidr: Option<Ipv4Net>,
    state_dir: PathBuf,
    network: RwLock<Option<PodNetwork>>,
}

impl BridgeNetwork {
    pub fn new(node_name: impl Into<String>, cluster_cidr: Ipv4Net, state_dir: PathBuf) -> Self {
        BridgeNetwork {
            node_name: node_name.into(),
            cluster_cidr,
            service_cidr: None,
            state_dir,
            network: RwLock::new(None),
        }
    }
}

impl BridgeNetwork {
    /// Also prepares the node for the service proxy once the bridge exists:
    /// a route for the service range through the bridge (so the node itself
    /// can open connections to ClusterIPs, which the proxy then DNATs) and
    /// bridge netfilter (so replies between pods on the same bridge go
    /// back through the proxy's connection tracking).
    pub fn with_service_cidr(mut self, service_cidr: Ipv4Net) -> Self {
        self.service_cidr = Some(service_cidr);
        self
    }
}

/// `ip route replace <cidr> dev skiff0` and `bridge-nf-call-iptables=1`.
/// The one-off route goes through `ip`; the network crate owns the rest.
async fn prepare_for_services(service_cidr: Ipv4Net, bridge: &str) -> Result<()> {
    let out = tokio::process::Command::new("ip")
        .args(["route", "replace", &service_cidr.to_string(), "dev", bridge])
        .output()
        .await
        .map_err(|e| runtime_error("running ip route", e))?;
    if !out.status.success() {
        return Err(Error::Runtime(format!(
            "routing the service range {service_cidr} to {bridge}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let sysctl = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if let Err(e) = std::fs::write(sysctl, "1") {
        tracing::warn!(error = %e, "enabling bridge netfilter: pods may not reach services whose endpoints share their node");
    }
    Ok(())
}

fn runtime_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Runtime(format!("{context}: {e}"))
}

#[async_trait]
impl SandboxNetwork for BridgeNetwork {
    async fn setup(&self, sandbox_id: &str, netns_path: &Path) -> Result<Option<IpAddr>> {
        let guard = self.network.read().await;
        let network = guard.as_ref().ok_or_else(|| {
            Error::Runtime("the node has no pod CIDR yet; the pod network is not ready".into())
        })?;
        let address = network
            .setup(sandbox_id, netns_path)
            .await
            .map_err(|e| runtime_error("setting up the pod network", e))?;
        Ok(Some(IpAddr::V4(address.address.addr())))
    }

    async fn teardown(&self, sandbox_id: &str, netns_path: &Path) -> Result<()> {
        match self.network.read().await.as_ref() {
            Some(network) => network
                .teardown(sandbox_id, netns_path)
                .await
                .map_err(|e| runtime_error("tearing down the pod network", e)),
            None => Ok(()),
        }
    }

    async fn ready(&self) -> std::result::Result<(), String> {
        match self.network.read().await.as_ref() {
            Some(_) => Ok(()),
            None => Err("the node has no pod CIDR yet".into()),
        }
    }

    async fn update_pod_cidr(&self, pod_cidr: &str) -> Result<()> {
        let cidr: Ipv4Net = pod_cidr
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("pod CIDR {pod_cidr:?}: {e}")))?;
        let mut config =
            PodNetworkConfig::new(self.node_name.clone(), cidr, self.state_dir.clone());
        config.cluster_cidr = self.cluster_cidr;
        let network =
            PodNetwork::new(config).map_err(|e| runtime_error("configuring the pod network", e))?;
        network
            .ensure_node()
            .await
            .map_err(|e| runtime_error("creating the node's pod bridge", e))?;
        *self.network.write().await = Some(network);
        if let Some(service_cidr) = self.service_cidr {
            prepare_for_services(service_cidr, "skiff0").await?;
        }
        Ok(())
    }
}
