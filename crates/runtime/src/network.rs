//! The hook through which pod networking plugs into sandboxes.
//!
//! The runtime creates each sandbox's network namespace; what goes into it
//! beyond `lo` (a veth to a bridge, an address, routes) is the job of a
//! [`SandboxNetwork`] given to the runtime at construction. This crate ships
//! only [`NoNetwork`], which leaves the namespace with loopback only.

use std::net::IpAddr;
use std::path::Path;

use async_trait::async_trait;

use crate::api::Result;

/// Pod networking for sandboxes with their own network namespace (never
/// called for host-network sandboxes).
#[async_trait]
pub trait SandboxNetwork: Send + Sync {
    /// Wires the sandbox's network namespace (bind-mounted at `netns_path`)
    /// into the pod network; returns the pod IP, if it has one.
    async fn setup(&self, sandbox_id: &str, netns_path: &Path) -> Result<Option<IpAddr>>;
    /// Undoes [`Self::setup`]. Idempotent; called before the namespace is
    /// released, also for sandboxes whose setup failed halfway.
    async fn teardown(&self, sandbox_id: &str, netns_path: &Path) -> Result<()>;
    /// The node's pod CIDR changed (CRI `UpdateRuntimeConfig`).
    async fn update_pod_cidr(&self, _pod_cidr: &str) -> Result<()> {
        Ok(())
    }
    /// `Err(message)` while [`Self::setup`] cannot succeed yet (say, before
    /// the node has a pod CIDR).
    async fn ready(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// No pod network: sandboxes get loopback only and no IP.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoNetwork;

#[async_trait]
impl SandboxNetwork for NoNetwork {
    async fn setup(&self, _sandbox_id: &str, _netns_path: &Path) -> Result<Option<IpAddr>> {
        Ok(None)
    }
    async fn teardown(&self, _sandbox_id: &str, _netns_path: &Path) -> Result<()> {
        Ok(())
    }
}
