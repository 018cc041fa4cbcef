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
    state_dir: PathBuf,
    network: RwLock<Option<PodNetwork>>,
}

impl BridgeNetwork {
    pub fn new(node_name: impl Into<String>, cluster_cidr: Ipv4Net, state_dir: PathBuf) -> Self {
        BridgeNetwork {
            node_name: node_name.into(),
            cluster_cidr,
            state_dir,
            network: RwLock::new(None),
        }
    }
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
        Ok(())
    }
}
