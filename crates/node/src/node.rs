//! The Node object: registration (create, or adopt an existing Node and
//! merge our labels), the Lease in `kube-node-lease` renewed every 10 s,
//! and the node status (capacity, allocatable, addresses, nodeInfo,
//! daemon endpoint, Ready and pressure conditions) posted through
//! `nodes/status` on change and at least every minute.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use skiff_runtime::ContainerRuntime;

use crate::config::NodeConfig;
use crate::machine::{self, MachineInfo};

/// The version this agent reports as `kubeletVersion`: the API server's
/// (`discovery::KUBERNETES_MINOR`), since a kubelet is never newer than its
/// API server (the version skew policy).
pub const KUBELET_VERSION: &str = "v1.32.0-skiff";

const LEASE_NAMESPACE: &str = "kube-node-lease";

/// What the agent knows about its node.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub name: String,
    pub machine: MachineInfo,
    pub internal_ip: Option<String>,
    /// The agent server's port (0 when it serves nothing).
    pub port: u16,
}

impl NodeIdentity {
    /// The node's IPs (`hostIP`/`hostIPs` of its pods).
    pub fn host_ips(&self) -> Vec<String> {
        self.internal_ip.iter().cloned().collect()
    }
}

fn cpu_quantity(millis: i64) -> Quantity {
    if millis % 1000 == 0 {
        Quantity((millis / 1000).to_string())
    } else {
        Quantity(format!("{millis}m"))
    }
}

fn bytes_quantity(bytes: i64) -> Quantity {
    if bytes % 1024 == 0 {
        Quantity(format!("{}Ki", bytes / 1024))
    } else {
        Quantity(bytes.to_string())
    }
}

/// Capacity and allocatable (capacity minus `system_reserved`).
pub fn resources(
    m: &MachineInfo,
    config: &NodeConfig,
) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
    let r = &config.system_reserved;
    let capacity = BTreeMap::from([
        ("cpu".to_string(), cpu_quantity(m.cpu_millis)),
        ("memory".to_string(), bytes_quantity(m.memory_bytes)),
        (
            "ephemeral-storage".to_string(),
            bytes_quantity(m.ephemeral_storage_bytes),
        ),
        ("pods".to_string(), Quantity(config.max_pods.to_string())),
    ]);
    let allocatable = BTreeMap::from([
        (
            "cpu".to_string(),
            cpu_quantity((m.cpu_millis - r.cpu_millis).max(0)),
        ),
        (
            "memory".to_string(),
            bytes_quantity((m.memory_bytes - r.memory_bytes).max(0)),
        ),
        (
            "ephemeral-storage".to_string(),
            bytes_quantity((m.ephemeral_storage_bytes - r.ephemeral_storage_bytes).max(0)),
        ),
        ("pods".to_string(), Quantity(config.max_pods.to_string())),
    ]);
    (capacity, allocatable)
}

/// The labels the node carries: the well-known ones plus the configured.
pub fn labels(id: &NodeIdentity, config: &NodeConfig) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), id.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        (
            "kubernetes.io/arch".to_string(),
            id.machine.architecture.clone(),
        ),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        (
            "beta.kubernetes.io/arch".to_string(),
            id.machine.architecture.clone(),
        ),
    ]);
    l.extend(config.labels.clone());
    l
}

/// The node's health as conditions are built from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `Err(message)` when the runtime does not answer.
    pub runtime: Result<(), String>,
    /// `Err(message)` while the runtime has no pod network to give
    /// sandboxes (the CRI's `NetworkReady=false`).
    pub network: Result<(), String>,
    pub memory_pressure: bool,
    pub disk_pressure: bool,
    pub pid_pressure: bool,
}

/// The four conditions, with transition times kept from `old` when the
/// status did not change.
pub fn conditions(health: &Health, old: &[NodeCondition], now: Timestamp) -> Vec<NodeCondition> {
    let make = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" };
        let last_transition_time = old
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .or(Some(Time(now)));
        NodeCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time,
        }
    };
    let pressure = |type_: &str, on: bool, yes: (&str, &str), no: (&str, &str)| {
        let (reason, message) = if on { yes } else { no };
        make(type_, on, reason, message.to_string())
    };
    vec![
        pressure(
            "MemoryPressure",
            health.memory_pressure,
            (
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            ),
            (
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
        ),
        pressure(
            "DiskPressure",
            health.disk_pressure,
            ("KubeletHasDiskPressure", "kubelet has disk pressure"),
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ),
        pressure(
            "PIDPressure",
            health.pid_pressure,
            (
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            ),
            (
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
        ),
        match (&health.runtime, &health.network) {
            (Ok(()), Ok(())) => make(
                "Ready",
                true,
                "KubeletReady",
                "kubelet is posting ready status".to_string(),
            ),
            (Err(e), _) => make(
                "Ready",
                false,
                "KubeletNotReady",
                format!("container runtime is down: {e}"),
            ),
            // The kubelet's wording for the CRI's NetworkReady=false.
            (Ok(()), Err(e)) => make(
                "Ready",
                false,
                "KubeletNotReady",
                format!(
                    "container runtime network not ready: NetworkReady=false \
                     reason:NetworkPluginNotReady message:{e}"
                ),
            ),
        },
    ]
}

/// The node status apart from conditions.
pub fn status_base(id: &NodeIdentity, config: &NodeConfig, runtime_version: &str) -> NodeStatus {
    let (capacity, allocatable) = resources(&id.machine, config);
    let mut addresses = Vec::new();
    if let Some(ip) = &id.internal_ip {
        addresses.push(NodeAddress {
            type_: "InternalIP".to_string(),
            address: ip.clone(),
        });
    }
    addresses.push(NodeAddress {
        type_: "Hostname".to_string(),
        address: id.machine.hostname.clone(),
    });
    NodeStatus {
        capacity: Some(capacity),
        allocatable: Some(allocatable),
        addresses: Some(addresses),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(id.port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: id.machine.architecture.clone(),
            boot_id: id.machine.boot_id.clone(),
            container_runtime_version: runtime_version.to_string(),
            kernel_version: id.machine.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.to_string(),
            machine_id: id.machine.machine_id.clone(),
            operating_system: "linux".to_string(),
            os_image: id.machine.os_image.clone(),
            system_uuid: id.machine.machine_id.clone(),
            swap: None,
        }),
        ..Default::default()
    }
}

/// `<runtime_name>://<runtime_version>`, as the kubelet reports it.
pub async fn runtime_version(runtime: &dyn ContainerRuntime) -> Result<(String, String), String> {
    let v = runtime.version().await.map_err(|e| e.to_string())?;
    Ok((
        v.runtime_name.clone(),
        format!("{}://{}", v.runtime_name, v.runtime_version),
    ))
}

/// Creates the Node, or merges our labels into an existing one. Retries
/// until the API answers.
pub async fn register(client: &kube::Client, id: &NodeIdentity, config: &NodeConfig) {
    let api: Api<Node> = Api::all(client.clone());
    let mut delay = Duration::from_millis(200);
    loop {
        let node = Node {
            metadata: ObjectMeta {
                name: Some(id.name.clone()),
                labels: Some(labels(id, config)),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: (!config.taints.is_empty()).then(|| config.taints.clone()),
                ..Default::default()
            }),
            status: None,
        };
        let result = match api.create(&PostParams::default(), &node).await {
            Ok(_) => {
                tracing::info!(node = %id.name, "registered node");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let patch = serde_json::json!({ "metadata": { "labels": labels(id, config) } });
                api.patch(&id.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| tracing::info!(node = %id.name, "node already registered; labels merged"))
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(node = %id.name, error = %e, "registering node; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(7));
            }
        }
    }
}

/// Renews the node's Lease forever.
pub async fn lease_loop(client: kube::Client, id: NodeIdentity, config: NodeConfig) {
    let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let nodes: Api<Node> = Api::all(client);
    let mut owner: Option<OwnerReference> = None;
    loop {
        if owner.is_none() {
            owner = nodes.get_opt(&id.name).await.ok().flatten().and_then(|n| {
                Some(OwnerReference {
                    api_version: "v1".to_string(),
                    kind: "Node".to_string(),
                    name: id.name.clone(),
                    uid: n.metadata.uid?,
                    ..Default::default()
                })
            });
        }
        let wait = match renew(&api, &id.name, &config, owner.clone()).await {
            Ok(()) => config.timing.lease_renew,
            Err(e) => {
                tracing::warn!(node = %id.name, error = %e, "renewing node lease");
                Duration::from_secs(1).min(config.timing.lease_renew)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn renew(
    api: &Api<Lease>,
    name: &str,
    config: &NodeConfig,
    owner: Option<OwnerReference>,
) -> Result<(), kube::Error> {
    let now = MicroTime(Timestamp::now());
    let spec = LeaseSpec {
        holder_identity: Some(name.to_string()),
        lease_duration_seconds: Some(config.timing.lease_duration.as_secs() as i32),
        renew_time: Some(now),
        ..Default::default()
    };
    match api.get_opt(name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(LEASE_NAMESPACE.to_string()),
                    owner_references: owner.map(|o| vec![o]),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &lease).await?;
        }
        Some(mut lease) => {
            let mut s = lease.spec.take().unwrap_or_default();
            s.holder_identity = spec.holder_identity;
            s.lease_duration_seconds = spec.lease_duration_seconds;
            s.renew_time = spec.renew_time;
            lease.spec = Some(s);
            if lease.metadata.owner_references.is_none() {
                lease.metadata.owner_references = owner.map(|o| vec![o]);
            }
            // Conditional on the resourceVersion we read.
            api.replace(name, &PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}

/// Posts the node status on change and at least every
/// `timing.status_report`; checks health every few seconds.
pub async fn status_loop(
    client: kube::Client,
    id: NodeIdentity,
    config: NodeConfig,
    runtime: Arc<dyn ContainerRuntime>,
) {
    let api: Api<Node> = Api::all(client);
    let mut last: Option<(Health, Instant)> = None;
    let check = config.timing.status_report.min(Duration::from_secs(5));
    loop {
        let rv = runtime_version(runtime.as_ref()).await;
        let avail = machine::availability(&config.data_dir);
        let (memory_pressure, disk_pressure, pid_pressure) = machine::pressure(&avail);
        let network = match &rv {
            Ok(_) => runtime.network_ready().await,
            Err(_) => Ok(()),
        };
        let health = Health {
            runtime: rv.as_ref().map(|_| ()).map_err(Clone::clone),
            network,
            memory_pressure,
            disk_pressure,
            pid_pressure,
        };
        let due = match &last {
            None => true,
            Some((h, at)) => *h != health || at.elapsed() >= config.timing.status_report,
        };
        if due {
            let version = rv.map(|(_, v)| v).unwrap_or_default();
            match post_status(&api, &id, &config, &health, &version).await {
                Ok(()) => last = Some((health, Instant::now())),
                Err(e) => tracing::warn!(node = %id.name, error = %e, "posting node status"),
            }
        }
        // Until the first post, and while the pod network is not ready
        // (it becomes ready once the pod CIDR arrives), look every second,
        // so the node turns Ready soon after.
        let wait = match &last {
            Some((h, _)) if h.network.is_ok() => check,
            _ => Duration::from_secs(1),
        };
        tokio::time::sleep(wait).await;
    }
}

/// Hands the node's pod CIDR (`spec.podCIDR`, set by the controller
/// manager's node IPAM) to the runtime (CRI `UpdateRuntimeConfig`), which
/// gives it to its pod network: at once when it appears, again if it changes.
pub async fn pod_cidr_loop(
    client: kube::Client,
    id: NodeIdentity,
    runtime: Arc<dyn ContainerRuntime>,
) {
    let api: Api<Node> = Api::all(client);
    let mut applied: Option<String> = None;
    loop {
        let cidr = match api.get_opt(&id.name).await {
            Ok(node) => node.and_then(|n| n.spec).and_then(|s| s.pod_cidr),
            Err(e) => {
                tracing::debug!(node = %id.name, error = %e, "reading the node's pod CIDR");
                None
            }
        };
        if let Some(cidr) = cidr.filter(|c| applied.as_ref() != Some(c)) {
            match runtime.update_runtime_config(&cidr).await {
                Ok(()) => {
                    tracing::info!(node = %id.name, pod_cidr = %cidr, "pod network configured");
                    applied = Some(cidr);
                }
                Err(e) => {
                    tracing::warn!(node = %id.name, pod_cidr = %cidr, error = %e, "configuring the pod network")
                }
            }
        }
        let wait = if applied.is_some() { 30 } else { 2 };
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

async fn post_status(
    api: &Api<Node>,
    id: &NodeIdentity,
    config: &NodeConfig,
    health: &Health,
    runtime_version: &str,
) -> Result<(), kube::Error> {
    let current = api.get_status(&id.name).await?;
    let old = current
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default();
    let mut status = status_base(id, config, runtime_version);
    status.conditions = Some(conditions(health, &old, Timestamp::now()));
    let patch = serde_json::json!({ "status": status });
    api.patch_status(&id.name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Reserved;

    fn machine() -> MachineInfo {
        MachineInfo {
            hostname: "box".into(),
            cpu_millis: 2000,
            memory_bytes: 4 << 30,
            ephemeral_storage_bytes: 100 << 30,
            architecture: "amd64".into(),
            ..Default::default()
        }
    }

    #[test]
    fn allocatable_is_capacity_minus_system_reserved() {
        let config = NodeConfig {
            system_reserved: Reserved {
                cpu_millis: 500,
                memory_bytes: 1 << 30,
                ephemeral_storage_bytes: 0,
            },
            ..Default::default()
        };
        let (cap, alloc) = resources(&machine(), &config);
        let q = |m: &BTreeMap<String, Quantity>, k: &str| m.get(k).map(|q| q.0.clone());
        assert_eq!(q(&cap, "cpu").as_deref(), Some("2"));
        assert_eq!(q(&alloc, "cpu").as_deref(), Some("1500m"));
        assert_eq!(q(&cap, "memory").as_deref(), Some("4194304Ki"));
        assert_eq!(q(&alloc, "memory").as_deref(), Some("3145728Ki"));
        assert_eq!(q(&cap, "pods").as_deref(), Some("110"));
        assert_eq!(q(&alloc, "ephemeral-storage"), q(&cap, "ephemeral-storage"));
    }

    #[test]
    fn node_conditions_report_health_and_keep_transition_times() {
        let t0 = Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let t1 = Timestamp::from_second(2_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let healthy = Health {
            runtime: Ok(()),
            network: Ok(()),
            memory_pressure: false,
            disk_pressure: false,
            pid_pressure: false,
        };
        let first = conditions(&healthy, &[], t0);
        let by = |cs: &[NodeCondition], t: &str| {
            cs.iter().find(|c| c.type_ == t).map(|c| {
                (
                    c.status.clone(),
                    c.last_transition_time.clone().map(|t| t.0),
                )
            })
        };
        assert_eq!(by(&first, "Ready"), Some(("True".into(), Some(t0))));
        assert_eq!(
            by(&first, "MemoryPressure"),
            Some(("False".into(), Some(t0)))
        );
        let broken = Health {
            runtime: Err("connection refused".into()),
            disk_pressure: true,
            ..healthy.clone()
        };
        let second = conditions(&broken, &first, t1);
        assert_eq!(by(&second, "Ready"), Some(("False".into(), Some(t1))));
        assert_eq!(by(&second, "DiskPressure"), Some(("True".into(), Some(t1))));
        assert_eq!(by(&second, "PIDPressure"), Some(("False".into(), Some(t0))));
        let ready = second.iter().find(|c| c.type_ == "Ready");
        assert_eq!(
            ready.and_then(|c| c.message.clone()).as_deref(),
            Some("container runtime is down: connection refused")
        );
        // A runtime without a pod network yet: not Ready, in the kubelet's
        // words, with the pressure conditions unaffected.
        let no_network = Health {
            network: Err("the node has no pod CIDR yet".into()),
            ..healthy.clone()
        };
        let third = conditions(&no_network, &first, t1);
        let ready = third.iter().find(|c| c.type_ == "Ready");
        assert_eq!(
            ready.map(|c| (c.status.as_str(), c.message.as_deref())),
            Some((
                "False",
                Some(
                    "container runtime network not ready: NetworkReady=false \
                     reason:NetworkPluginNotReady message:the node has no pod CIDR yet"
                )
            ))
        );
        assert_eq!(by(&third, "DiskPressure"), Some(("False".into(), Some(t0))));
    }
}
