//! The agent's configuration: one struct, grouped by concern, every field
//! with a default that matches the kubelet's where the kubelet has one.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Taint;

pub use crate::imagegc::ImageGcPolicy;
pub use crate::logrotate::LogRotationPolicy;

/// Everything the node agent needs to know besides the API client and the
/// runtime.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The Node's name; `None` uses the machine's hostname (lowercased).
    pub node_name: Option<String>,
    /// Where pods' volumes (`pods/<uid>/volumes`), logs
    /// (`log/pods/<ns>_<name>_<uid>`) and local storage (`storage/<pv>`)
    /// live; also the file system whose free space is ephemeral-storage.
    pub data_dir: PathBuf,
    /// The node's `InternalIP` address (also the pods' `hostIP`).
    pub internal_ip: Option<IpAddr>,
    /// Labels added to the well-known `kubernetes.io/{hostname,os,arch}`.
    pub labels: BTreeMap<String, String>,
    /// Taints the node registers with (only when it creates the Node, as the
    /// kubelet's `--register-with-taints`).
    pub taints: Vec<Taint>,
    /// Resources kept back for the system: allocatable = capacity − this.
    pub system_reserved: Reserved,
    /// Capacity in pods.
    pub max_pods: u32,
    /// Cluster DNS servers for `dnsPolicy: ClusterFirst` pods; empty falls
    /// back to the host's resolv.conf (with a `MissingClusterDNS` event).
    pub cluster_dns: Vec<IpAddr>,
    pub cluster_domain: String,
    /// The host's resolver configuration (for `dnsPolicy: Default`).
    pub resolv_conf: PathBuf,
    /// Parent of every pod's cgroup (cgroupfs layout: `<root>/<qos>/pod<uid>`).
    pub cgroup_root: String,
    /// The agent's HTTPS server (logs, exec, healthz); `None` serves nothing.
    pub server: Option<ServerConfig>,
    /// Rotation of containers' log files (`--container-log-max-size`,
    /// `--container-log-max-files`).
    pub container_logs: LogRotationPolicy,
    /// Garbage collection of unused images (`--image-gc-high-threshold`,
    /// `--image-gc-low-threshold`).
    pub image_gc: ImageGcPolicy,
    pub timing: Timing,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_name: None,
            data_dir: PathBuf::from("/var/lib/skiff/agent"),
            internal_ip: None,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            system_reserved: Reserved::default(),
            max_pods: 110,
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".to_string(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            cgroup_root: "/kubepods".to_string(),
            server: None,
            container_logs: LogRotationPolicy::default(),
            image_gc: ImageGcPolicy::default(),
            timing: Timing::default(),
        }
    }
}

/// Resources reserved for the system (`--system-reserved`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserved {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub ephemeral_storage_bytes: i64,
}

/// The agent's HTTPS server, the kubelet's port 10250.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Port 0 picks a free one; the bound port is what the Node advertises
    /// in `status.daemonEndpoints.kubeletEndpoint.port`.
    pub listen: SocketAddr,
    /// PEM serving certificate chain and key.
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    /// Callers presenting a client certificate signed by this CA (PEM) are
    /// authenticated.
    pub client_ca_pem: Option<PathBuf>,
    /// Callers presenting `Authorization: Bearer <token>` are authenticated.
    pub token: Option<String>,
}

/// Intervals and back-off schedules.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How often the node Lease is renewed.
    pub lease_renew: Duration,
    /// The Lease's `leaseDurationSeconds`.
    pub lease_duration: Duration,
    /// Node status is posted on change, and at least this often.
    pub status_report: Duration,
    /// How often a pod worker asks the runtime what its containers are
    /// doing (the kubelet's PLEG relist period).
    pub relist: Duration,
    /// How often a pod's configMap, secret, downward API and projected
    /// volumes are refreshed (and service-account tokens checked).
    pub pod_resync: Duration,
    /// Restarting crashed containers (CrashLoopBackOff).
    pub crash_loop: Backoff,
    /// Retrying failed image pulls (ImagePullBackOff).
    pub image_pull: Backoff,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_renew: Duration::from_secs(10),
            lease_duration: Duration::from_secs(40),
            status_report: Duration::from_secs(60),
            relist: Duration::from_secs(1),
            pod_resync: Duration::from_secs(10),
            crash_loop: Backoff::default(),
            image_pull: Backoff::default(),
        }
    }
}

/// An exponential back-off: `initial`, doubling up to `max`; a container
/// that ran at least `reset_after` starts again from `initial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}
