//! The simulated Node objects: names, labels, status (Ready, the pressure
//! conditions, capacity, nodeInfo, addresses), pod ranges, and their
//! registration.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};

use crate::{SIMULATED_LABEL, SimConfig, Stats, ZONE_LABEL};

/// What the kubelet of a simulated node reports as its version.
pub const KUBELET_VERSION: &str = "v1.32.0-skiff-sim";

/// A simulated node's capacity (also its allocatable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            cpu: "32".to_string(),
            memory: "256Gi".to_string(),
            pods: 110,
        }
    }
}

/// One simulated node's fixed facts and its pod IP counter.
#[derive(Debug)]
pub(crate) struct SimNode {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The /24 used when the Node has no `spec.podCIDR`.
    pub derived_cidr: (Ipv4Addr, u8),
    /// The Node's uid once registered (the Lease's owner).
    pub uid: OnceLock<String>,
    /// A Lease renewal is in flight.
    pub renewing: AtomicBool,
    next_pod_ip: AtomicU32,
}

impl SimNode {
    pub fn new(config: &SimConfig, i: usize) -> SimNode {
        SimNode {
            name: node_name(&config.name_prefix, i),
            ip: Ipv4Addr::from(u32::from(config.node_ip_base).wrapping_add(i as u32)),
            derived_cidr: (derived_pod_cidr(config.pod_cidr_base, i), 24),
            uid: OnceLock::new(),
            renewing: AtomicBool::new(false),
            next_pod_ip: AtomicU32::new(0),
        }
    }

    /// The next pod IP from `cidr` (`a.b.c.d/p`, the Node's `spec.podCIDR`)
    /// or, when that is absent or not IPv4, from the derived range.
    pub fn next_pod_ip(&self, cidr: Option<&str>) -> Ipv4Addr {
        let n = self.next_pod_ip.fetch_add(1, Ordering::Relaxed);
        let (base, prefix) = cidr.and_then(parse_cidr).unwrap_or(self.derived_cidr);
        nth_host(base, prefix, n)
    }
}

/// `<prefix><i>`.
pub fn node_name(prefix: &str, i: usize) -> String {
    format!("{prefix}{i}")
}

/// The index of `name` if it is one of the `count` nodes named `<prefix><i>`.
pub fn index_of(name: &str, prefix: &str, count: usize) -> Option<usize> {
    let digits = name.strip_prefix(prefix)?;
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    digits.parse().ok().filter(|&i| i < count)
}

/// Node `i`'s own /24 above `base`.
pub fn derived_pod_cidr(base: Ipv4Addr, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add((i as u32) << 8))
}

/// Parses an IPv4 `a.b.c.d/p` (the network address is masked).
pub fn parse_cidr(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, prefix) = cidr.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    if prefix > 30 {
        return None;
    }
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    Some((Ipv4Addr::from(u32::from(ip) & mask), prefix))
}

/// The `n`-th pod address of a range, cycling over its usable hosts and
/// skipping the network address and `.1` (the node's own bridge, by
/// convention) and the broadcast address.
pub fn nth_host(base: Ipv4Addr, prefix: u8, n: u32) -> Ipv4Addr {
    let size = 1u64 << (32 - u32::from(prefix));
    let usable = (size.saturating_sub(3)).max(1);
    let offset = 2 + u64::from(n) % usable;
    Ipv4Addr::from(u32::from(base).wrapping_add(offset as u32))
}

/// The zone of node `i` (round-robin), if zones are simulated.
pub fn zone(i: usize, zones: usize) -> Option<String> {
    (zones > 0).then(|| format!("zone-{}", i % zones))
}

/// The labels of node `i`.
pub fn labels(config: &SimConfig, i: usize) -> BTreeMap<String, String> {
    let name = node_name(&config.name_prefix, i);
    let mut l = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), "amd64".to_string()),
        (SIMULATED_LABEL.to_string(), "true".to_string()),
    ]);
    if let Some(z) = zone(i, config.zones) {
        l.insert(ZONE_LABEL.to_string(), z);
    }
    l.extend(config.labels.clone());
    l
}

/// Ready, and no pressure of any kind.
pub fn conditions(now: Timestamp) -> Vec<NodeCondition> {
    let make = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    };
    vec![
        make(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        make(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        make(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        make(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status (simulated)",
        ),
    ]
}

/// The status of node `i`.
pub fn status(config: &SimConfig, i: usize, now: Timestamp) -> NodeStatus {
    let name = node_name(&config.name_prefix, i);
    let ip = Ipv4Addr::from(u32::from(config.node_ip_base).wrapping_add(i as u32));
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(config.capacity.cpu.clone())),
        (
            "memory".to_string(),
            Quantity(config.capacity.memory.clone()),
        ),
        (
            "pods".to_string(),
            Quantity(config.capacity.pods.to_string()),
        ),
        (
            "ephemeral-storage".to_string(),
            Quantity("100Gi".to_string()),
        ),
    ]);
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(conditions(now)),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".to_string(),
                address: ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".to_string(),
                address: name.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: 10250 }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".to_string(),
            boot_id: format!("sim-boot-{i}"),
            container_runtime_version: "sim://0.1.0".to_string(),
            kernel_version: "0.0.0-simulated".to_string(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.to_string(),
            machine_id: format!("sim-machine-{i:08}"),
            operating_system: "linux".to_string(),
            os_image: "skiff simulated node".to_string(),
            system_uuid: format!("sim-{name}"),
            swap: None,
        }),
        ..Default::default()
    }
}

/// The whole Node object of node `i`, status included (Kubernetes keeps a
/// Node's status on create).
pub fn node(config: &SimConfig, i: usize, now: Timestamp) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(node_name(&config.name_prefix, i)),
            labels: Some(labels(config, i)),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: (!config.taints.is_empty()).then(|| config.taints.clone()),
            ..Default::default()
        }),
        status: Some(status(config, i, now)),
    }
}

/// Creates node `i`, or (when it exists) merges its labels and posts its
/// status. Retries until the API answers; returns the Node's uid.
pub(crate) async fn register(shared: &crate::Shared, i: usize) -> Option<String> {
    let config = &shared.config;
    let api: Api<Node> = Api::all(shared.client.clone());
    let name = node_name(&config.name_prefix, i);
    let mut delay = Duration::from_millis(200);
    loop {
        let result = {
            let _permit = shared.calls.acquire().await.ok()?;
            let now = Timestamp::now();
            match api
                .create(&PostParams::default(), &node(config, i, now))
                .await
            {
                Ok(n) => Ok(n),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    let patch = serde_json::json!({"metadata": {"labels": labels(config, i)}});
                    match api
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => {
                            let status = serde_json::json!({"status": status(config, i, now)});
                            api.patch_status(
                                &name,
                                &PatchParams::default(),
                                &Patch::Strategic(&status),
                            )
                            .await
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(n) => {
                Stats::add(&shared.stats.nodes_registered);
                return n.metadata.uid;
            }
            Err(e) => {
                Stats::add(&shared.stats.api_errors);
                tracing::warn!(node = %name, error = %e, "registering simulated node; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(7));
            }
        }
    }
}

/// Registers every node, `max_in_flight` at a time.
pub(crate) async fn register_all(shared: &Arc<crate::Shared>) {
    futures::stream::iter(0..shared.config.count)
        .for_each_concurrent(shared.config.max_in_flight, |i| async move {
            if let Some(uid) = register(shared, i).await {
                let _ = shared.nodes[i].uid.set(uid);
            }
        })
        .await;
}

/// Keeps [`crate::Shared::watched`] filled with the simulated Nodes.
pub(crate) async fn watch_nodes(
    shared: Arc<crate::Shared>,
    writer: reflector::store::Writer<Node>,
) {
    let api: Api<Node> = Api::all(shared.client.clone());
    let config = watcher::Config::default().labels(&format!("{SIMULATED_LABEL}=true"));
    let mut events = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        if let Err(e) = event {
            tracing::warn!(error = %e, "watching simulated nodes");
        }
    }
}

/// The `spec.podCIDR` the controller manager gave node `name`, if any.
pub(crate) fn watched_pod_cidr(shared: &crate::Shared, name: &str) -> Option<String> {
    shared
        .watched
        .get(&ObjectRef::new(name))
        .and_then(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_map_back_to_their_index() {
        let cases = [
            ("first node", "sim-node-0", Some(0)),
            ("last node", "sim-node-9", Some(9)),
            ("beyond the count", "sim-node-10", None),
            ("another prefix", "node-1", None),
            ("leading zero", "sim-node-01", None),
            ("no digits", "sim-node-", None),
            ("not a number", "sim-node-x", None),
        ];
        for (case, name, want) in cases {
            assert_eq!(index_of(name, "sim-node-", 10), want, "{case}");
        }
    }

    #[test]
    fn pod_ips_come_from_the_assigned_range_else_the_derived_one() {
        let config = SimConfig::default();
        let n = SimNode::new(&config, 3);
        assert_eq!(n.derived_cidr, (Ipv4Addr::new(10, 128, 3, 0), 24));
        let cases = [
            ("assigned /24", Some("10.42.7.0/24"), "10.42.7.2"),
            ("assigned, second pod", Some("10.42.7.0/24"), "10.42.7.3"),
            ("no podCIDR", None, "10.128.3.4"),
            ("IPv6 podCIDR", Some("fd00::/64"), "10.128.3.5"),
        ];
        for (case, cidr, want) in cases {
            assert_eq!(n.next_pod_ip(cidr).to_string(), want, "{case}");
        }
    }

    #[test]
    fn pod_ips_cycle_within_the_usable_hosts() {
        let base = Ipv4Addr::new(10, 0, 0, 0);
        let cases = [
            ("first", 0, "10.0.0.2"),
            ("last usable", 252, "10.0.0.254"),
            ("wraps", 253, "10.0.0.2"),
        ];
        for (case, n, want) in cases {
            assert_eq!(nth_host(base, 24, n).to_string(), want, "{case}");
        }
    }

    #[test]
    fn nodes_spread_over_zones_round_robin() {
        let config = SimConfig {
            zones: 3,
            ..Default::default()
        };
        let zones: Vec<_> = (0..4)
            .map(|i| labels(&config, i).get(ZONE_LABEL).cloned())
            .collect();
        assert_eq!(
            zones,
            [
                Some("zone-0".to_string()),
                Some("zone-1".to_string()),
                Some("zone-2".to_string()),
                Some("zone-0".to_string())
            ]
        );
        let none = SimConfig {
            zones: 0,
            ..Default::default()
        };
        assert!(!labels(&none, 0).contains_key(ZONE_LABEL));
    }

    #[test]
    fn a_registered_node_is_ready_with_capacity_and_node_info() {
        let config = SimConfig::default();
        let n = node(&config, 5, Timestamp::now());
        let status = n.status.unwrap_or_default();
        let ready = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status);
        assert_eq!(ready.as_deref(), Some("True"));
        let allocatable = status.allocatable.unwrap_or_default();
        assert_eq!(allocatable.get("pods").map(|q| q.0.as_str()), Some("110"));
        assert_eq!(allocatable.get("cpu").map(|q| q.0.as_str()), Some("32"));
        assert_eq!(
            status.node_info.map(|i| i.kubelet_version).as_deref(),
            Some(KUBELET_VERSION)
        );
        let ip = status
            .addresses
            .unwrap_or_default()
            .into_iter()
            .find(|a| a.type_ == "InternalIP")
            .map(|a| a.address);
        assert_eq!(ip.as_deref(), Some("172.16.0.6"));
    }
}
