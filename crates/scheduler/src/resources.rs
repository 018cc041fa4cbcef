//! Resource arithmetic: what a pod requests (counting init containers and
//! overhead as Kubernetes does), what a node has, and host ports.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

use crate::quantity;

/// Requests assumed for scoring when a container asks for no cpu.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Requests assumed for scoring when a container asks for no memory.
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// An amount of each resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resource {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// Pods a node admits (`pods` in allocatable); unused for pods.
    pub allowed_pod_number: i64,
    /// Extended resources, hugepages and anything else, in whole units.
    pub scalar: BTreeMap<String, i64>,
}

impl Resource {
    pub fn from_list(list: &BTreeMap<String, K8sQuantity>) -> Resource {
        let mut r = Resource::default();
        for (name, q) in list {
            r.set(name, q);
        }
        r
    }

    fn set(&mut self, name: &str, q: &K8sQuantity) {
        match name {
            "cpu" => self.milli_cpu = quantity::milli_value(q),
            "memory" => self.memory = quantity::value(q),
            "ephemeral-storage" => self.ephemeral_storage = quantity::value(q),
            "pods" => self.allowed_pod_number = quantity::value(q),
            other => {
                self.scalar.insert(other.to_string(), quantity::value(q));
            }
        }
    }

    pub fn add(&mut self, o: &Resource) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.allowed_pod_number += o.allowed_pod_number;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, o: &Resource) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.allowed_pod_number -= o.allowed_pod_number;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Per-resource maximum.
    fn max_with(&mut self, o: &Resource) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.values().all(|v| *v == 0)
    }
}

/// A container's requests; a resource with a limit but no request requests
/// its limit (the API server's defaulting, applied here too so a server that
/// skips it is judged the same).
fn container_requests(c: &Container, non_zero: bool) -> Resource {
    let mut r = Resource::default();
    let res = c.resources.as_ref();
    if let Some(limits) = res.and_then(|r| r.limits.as_ref()) {
        for (name, q) in limits {
            r.set(name, q);
        }
    }
    if let Some(requests) = res.and_then(|r| r.requests.as_ref()) {
        for (name, q) in requests {
            r.set(name, q);
        }
    }
    if non_zero {
        let has = |name: &str| {
            res.and_then(|r| r.requests.as_ref())
                .is_some_and(|m| m.contains_key(name))
                || res
                    .and_then(|r| r.limits.as_ref())
                    .is_some_and(|m| m.contains_key(name))
        };
        if !has("cpu") {
            r.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
        }
        if !has("memory") {
            r.memory = DEFAULT_MEMORY_REQUEST;
        }
    }
    r
}

fn aggregate(pod: &Pod, non_zero: bool) -> Resource {
    let Some(spec) = pod.spec.as_ref() else {
        return Resource::default();
    };
    let mut reqs = Resource::default();
    for c in &spec.containers {
        reqs.add(&container_requests(c, non_zero));
    }
    // Sidecars (restartable init containers) run alongside everything after
    // them; a regular init container runs alone with the sidecars started
    // before it.
    let mut sidecars = Resource::default();
    let mut init_max = Resource::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c, non_zero);
        if c.restart_policy.as_deref() == Some("Always") {
            reqs.add(&r);
            sidecars.add(&r);
            init_max.max_with(&sidecars);
        } else {
            let mut tmp = r;
            tmp.add(&sidecars);
            init_max.max_with(&tmp);
        }
    }
    reqs.max_with(&init_max);
    if let Some(overhead) = &spec.overhead {
        reqs.add(&Resource::from_list(overhead));
    }
    reqs
}

/// A pod's effective requests: `max(sum(containers), max(init))` (with
/// sidecars counted as upstream does) plus `spec.overhead`.
pub fn pod_requests(pod: &Pod) -> Resource {
    aggregate(pod, false)
}

/// The same with 100m cpu and 200Mi memory for containers that ask for none.
pub fn non_zero_requests(pod: &Pod) -> Resource {
    aggregate(pod, true)
}

/// One host port a pod binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

impl HostPort {
    /// Two host ports conflict when protocol and port match and either IP
    /// is the wildcard or both are equal.
    pub fn conflicts(&self, o: &HostPort) -> bool {
        self.port == o.port
            && self.protocol == o.protocol
            && (self.ip == "0.0.0.0" || o.ip == "0.0.0.0" || self.ip == o.ip)
    }
}

/// The host ports of the pod's containers (and sidecars).
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.unwrap_or(0);
            (port > 0).then(|| HostPort {
                ip: match p.host_ip.as_deref() {
                    None | Some("") => "0.0.0.0".to_string(),
                    Some(ip) => ip.to_string(),
                },
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    fn c(requests: serde_json::Value) -> serde_json::Value {
        json!({"name": "c", "image": "i", "resources": {"requests": requests}})
    }

    #[test]
    fn pod_requests_count_init_containers_as_kubernetes_does() {
        struct Case {
            name: &'static str,
            spec: serde_json::Value,
            cpu: i64,
            memory: i64,
        }
        let cases = [
            Case {
                name: "sum of containers",
                spec: json!({"containers": [c(json!({"cpu": "100m", "memory": "1Mi"})), c(json!({"cpu": "200m"}))]}),
                cpu: 300,
                memory: 1 << 20,
            },
            Case {
                name: "init container larger than containers wins",
                spec: json!({"containers": [c(json!({"cpu": "100m"}))], "initContainers": [c(json!({"cpu": "1", "memory": "1Ki"}))]}),
                cpu: 1000,
                memory: 1024,
            },
            Case {
                name: "max per resource, not per container",
                spec: json!({"containers": [c(json!({"cpu": "2", "memory": "1Ki"}))], "initContainers": [c(json!({"cpu": "1", "memory": "1Mi"})), c(json!({"cpu": "3"}))]}),
                cpu: 3000,
                memory: 1 << 20,
            },
            Case {
                name: "overhead is added",
                spec: json!({"containers": [c(json!({"cpu": "1"}))], "overhead": {"cpu": "250m", "memory": "10"}}),
                cpu: 1250,
                memory: 10,
            },
            Case {
                name: "sidecar adds to containers and to later init containers",
                spec: json!({"containers": [c(json!({"cpu": "1"}))], "initContainers": [
                    {"name": "s", "image": "i", "restartPolicy": "Always", "resources": {"requests": {"cpu": "500m"}}},
                    c(json!({"cpu": "2"}))]}),
                cpu: 2500,
                memory: 0,
            },
            Case {
                name: "limits stand in for missing requests",
                spec: json!({"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": "300m"}}}]}),
                cpu: 300,
                memory: 0,
            },
        ];
        for case in cases {
            let r = pod_requests(&pod(case.spec));
            assert_eq!(
                (r.milli_cpu, r.memory),
                (case.cpu, case.memory),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn non_zero_requests_default_missing_cpu_and_memory() {
        let r = non_zero_requests(&pod(
            json!({"containers": [c(json!({})), c(json!({"cpu": "1"}))]}),
        ));
        assert_eq!(r.milli_cpu, 1100);
        assert_eq!(r.memory, 2 * DEFAULT_MEMORY_REQUEST);
    }

    #[test]
    fn host_ports_default_protocol_and_ip() {
        let p = pod(json!({"containers": [{"name": "c", "image": "i", "ports": [
            {"containerPort": 80, "hostPort": 8080},
            {"containerPort": 53, "hostPort": 53, "protocol": "UDP", "hostIP": "10.0.0.1"},
            {"containerPort": 90}]}]}));
        assert_eq!(
            host_ports(&p),
            vec![
                HostPort {
                    ip: "0.0.0.0".into(),
                    protocol: "TCP".into(),
                    port: 8080
                },
                HostPort {
                    ip: "10.0.0.1".into(),
                    protocol: "UDP".into(),
                    port: 53
                },
            ]
        );
    }
}
