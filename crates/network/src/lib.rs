//! skiff-network: the node's pod network.
//!
//! What it is for:
//! - [`PodNetwork`]: the node's bridge (`skiff0`, carrying the gateway, the
//!   first host of the node's pod CIDR), IPv4 forwarding, and the
//!   nftables table `inet skiff-net` (masquerade for pod traffic leaving
//!   the cluster CIDR, forward accepts for the cluster CIDR); per pod
//!   sandbox, an address from a host-local IPAM store and a veth pair with
//!   `eth0` in the sandbox's network namespace. The runtime calls
//!   [`PodNetwork::setup`] / [`PodNetwork::teardown`] with the sandbox's
//!   namespace path.
//! - [`Routes`]: reaching other nodes' pods, either by plain routes via each
//!   node's IP (`host-gw`) or over a VXLAN device with static FDB,
//!   neighbour and onlink route entries (`vxlan`, as flannel does). Fed with
//!   plain data; a node watcher elsewhere turns Node objects into it.
//!
//! Kernel state goes through netlink (`rtnetlink`); nftables through one
//! atomic `nft -f -` transaction per change. Every operation is idempotent,
//! so the agent can run it again at every start.
//!
//! What it must not do:
//! - talk to the Kubernetes API (no `kube`, no Node or Pod objects): its
//!   inputs are plain data;
//! - touch namespaces other than the ones it is given: the host side is the
//!   caller's network namespace, or the one named in the config
//!   (`host_netns`), which is how tests run a whole "node" inside a network
//!   namespace they created. Its tests never use the machine's root
//!   namespace and send no packet off the machine.

pub mod addr;
pub mod ipam;
mod link;
pub mod netns;
pub mod nft;
mod pod;
mod routes;

use std::io;
use std::path::PathBuf;

pub use ipam::{Ipam, IpamError};
pub use ipnet::Ipv4Net;
pub use pod::{POD_IFNAME, PodAddress, PodNetwork, PodNetworkConfig};
pub use routes::{Backend, RemoteNode, Routes, RoutesConfig, VxlanConfig};

/// Errors of the pod network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid network config: {0}")]
    Config(String),
    #[error("netlink {op} ({target})")]
    Netlink {
        op: &'static str,
        target: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("network namespace {netns}")]
    Netns {
        netns: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("inside network namespace {netns}")]
    InNetns {
        netns: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("setting sysctl {key}")]
    Sysctl {
        key: String,
        #[source]
        source: Box<Error>,
    },
    #[error("running nft (Debian package nftables)")]
    NftSpawn {
        #[source]
        source: io::Error,
    },
    #[error("nft -f rejected the ruleset ({status}): {stderr}")]
    Nft { status: String, stderr: String },
    #[error("ipam")]
    Ipam(#[from] IpamError),
    #[error("ipam task did not finish: {0}")]
    Task(String),
    #[error("bridge {bridge} does not exist: ensure_node has not run")]
    BridgeMissing { bridge: String },
    #[error("device {device} exists but is not a {want}")]
    WrongKind { device: String, want: &'static str },
    #[error("device {device} disappeared while being configured")]
    Vanished { device: String },
    #[error("node {node} ({ip}): {reason}")]
    Node {
        node: String,
        ip: std::net::Ipv4Addr,
        reason: String,
    },
    #[error("{error}; undoing it also failed: {cleanup}")]
    WithCleanup {
        #[source]
        error: Box<Error>,
        cleanup: Box<Error>,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
