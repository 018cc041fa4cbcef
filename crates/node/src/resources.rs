//! Pure resource arithmetic: a pod's QoS class as Kubernetes computes it
//! (`pkg/apis/core/v1/helper/qos`), and a container's resources turned into
//! the CRI's `LinuxContainerResources` the way the kubelet does
//! (`kuberuntime_container_linux.go`): CPU shares from the request, CFS
//! quota from the limit, memory limit, OOM score adjustment from the QoS.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use skiff_runtime::cri_types as cri;
use skiff_scheduler::quantity;

/// `MinShares` of the kubelet.
const MIN_SHARES: i64 = 2;
const SHARES_PER_CPU: i64 = 1024;
const MILLI_CPU_TO_CPU: i64 = 1000;
/// The CFS period the kubelet uses (100 ms, in µs).
pub const QUOTA_PERIOD_US: i64 = 100_000;
/// `MinQuotaPeriod`: the smallest quota the kernel accepts (1 ms, in µs).
const MIN_QUOTA_US: i64 = 1_000;

/// A pod's quality-of-service class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }

    /// The cgroupfs directory the kubelet uses under the pods' root.
    pub fn cgroup_dir(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }
}

fn list(r: Option<&ResourceRequirements>, limits: bool) -> Option<&BTreeMap<String, Quantity>> {
    let r = r?;
    if limits {
        r.limits.as_ref()
    } else {
        r.requests.as_ref()
    }
}

fn positive(q: &Quantity) -> bool {
    quantity::milli_value(q) > 0
}

/// `GetPodQOS`: BestEffort when no container asks for or limits any
/// resource; Guaranteed when every container limits cpu and memory and the
/// summed requests equal the summed limits; Burstable otherwise. Unset
/// requests default to the limits, as API defaulting does.
pub fn qos_class(pod: &Pod) -> QosClass {
    let Some(spec) = pod.spec.as_ref() else {
        return QosClass::BestEffort;
    };
    let supported = |name: &str| name == "cpu" || name == "memory";
    let mut requests: BTreeMap<&str, i64> = BTreeMap::new();
    let mut limits: BTreeMap<&str, i64> = BTreeMap::new();
    let mut guaranteed = true;
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in all {
        let r = c.resources.as_ref();
        let own_requests = list(r, false);
        let own_limits = list(r, true);
        let defaulted = own_limits
            .into_iter()
            .flatten()
            .filter(|(name, _)| !own_requests.is_some_and(|req| req.contains_key(*name)));
        for (name, q) in own_requests.into_iter().flatten().chain(defaulted) {
            if supported(name) && positive(q) {
                *requests.entry(name.as_str()).or_default() += quantity::milli_value(q);
            }
        }
        let mut found = 0;
        for (name, q) in own_limits.into_iter().flatten() {
            if supported(name) && positive(q) {
                found += 1;
                *limits.entry(name.as_str()).or_default() += quantity::milli_value(q);
            }
        }
        if found != 2 {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return QosClass::BestEffort;
    }
    if guaranteed
        && requests
            .iter()
            .all(|(name, req)| limits.get(name) == Some(req))
    {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// A container's effective request for `name` in milli-units: the request,
/// else the limit (API defaulting), else 0.
pub fn request_milli(c: &Container, name: &str) -> i64 {
    let r = c.resources.as_ref();
    list(r, false)
        .and_then(|l| l.get(name))
        .or_else(|| list(r, true).and_then(|l| l.get(name)))
        .map(quantity::milli_value)
        .unwrap_or(0)
}

/// A container's limit for `name` in milli-units (0 when unset).
pub fn limit_milli(c: &Container, name: &str) -> i64 {
    list(c.resources.as_ref(), true)
        .and_then(|l| l.get(name))
        .map(quantity::milli_value)
        .unwrap_or(0)
}

/// Integer value (bytes for memory) of a request, defaulted to the limit.
pub fn request_value(c: &Container, name: &str) -> i64 {
    let r = c.resources.as_ref();
    list(r, false)
        .and_then(|l| l.get(name))
        .or_else(|| list(r, true).and_then(|l| l.get(name)))
        .map(quantity::value)
        .unwrap_or(0)
}

/// Integer value of a limit (0 when unset).
pub fn limit_value(c: &Container, name: &str) -> i64 {
    list(c.resources.as_ref(), true)
        .and_then(|l| l.get(name))
        .map(quantity::value)
        .unwrap_or(0)
}

/// `MilliCPUToShares`.
pub fn milli_cpu_to_shares(milli: i64) -> i64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    (milli * SHARES_PER_CPU / MILLI_CPU_TO_CPU).max(MIN_SHARES)
}

/// `MilliCPUToQuota` for the kubelet's 100 ms period.
pub fn milli_cpu_to_quota(milli: i64) -> i64 {
    if milli <= 0 {
        return 0;
    }
    (milli * QUOTA_PERIOD_US / MILLI_CPU_TO_CPU).max(MIN_QUOTA_US)
}

/// The kubelet's OOM score adjustment (`GetContainerOOMScoreAdjust`),
/// floored at 0: this project's machines lack CAP_SYS_RESOURCE, so a
/// negative value (Guaranteed pods get −997 from the kubelet) would make
/// every container start fail.
pub fn oom_score_adj(qos: QosClass, memory_request: i64, memory_capacity: i64) -> i64 {
    match qos {
        QosClass::Guaranteed => 0,
        QosClass::BestEffort => 1000,
        QosClass::Burstable => {
            if memory_capacity <= 0 {
                return 999;
            }
            let adj = 1000 - (1000 * memory_request) / memory_capacity;
            adj.clamp(2, 999)
        }
    }
}

/// The CRI resources of one container of a pod of class `qos` on a node with
/// `memory_capacity` bytes.
pub fn linux_resources(
    c: &Container,
    qos: QosClass,
    memory_capacity: i64,
) -> cri::LinuxContainerResources {
    let cpu_request = request_milli(c, "cpu");
    let cpu_limit = limit_milli(c, "cpu");
    let memory_limit = limit_value(c, "memory");
    let memory_request = request_value(c, "memory");
    cri::LinuxContainerResources {
        cpu_period: QUOTA_PERIOD_US,
        cpu_quota: milli_cpu_to_quota(cpu_limit),
        cpu_shares: milli_cpu_to_shares(cpu_request),
        memory_limit_in_bytes: memory_limit.max(0),
        oom_score_adj: oom_score_adj(qos, memory_request, memory_capacity),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn rl(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, Quantity>> {
        if pairs.is_empty() {
            return None;
        }
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect(),
        )
    }

    fn container(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: rl(requests),
                limits: rl(limits),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(containers: Vec<Container>, init: Vec<Container>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers,
                init_containers: Some(init),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn qos_class_follows_kubernetes_rules() {
        let both = &[("cpu", "500m"), ("memory", "128Mi")][..];
        let cases = [
            (
                "no resources",
                pod(vec![container(&[], &[])], vec![]),
                QosClass::BestEffort,
            ),
            (
                "limits only for cpu and memory",
                pod(vec![container(&[], both)], vec![]),
                QosClass::Guaranteed,
            ),
            (
                "requests equal limits",
                pod(vec![container(both, both)], vec![]),
                QosClass::Guaranteed,
            ),
            (
                "request below limit",
                pod(
                    vec![container(&[("cpu", "100m"), ("memory", "128Mi")], both)],
                    vec![],
                ),
                QosClass::Burstable,
            ),
            (
                "only a cpu request",
                pod(vec![container(&[("cpu", "100m")], &[])], vec![]),
                QosClass::Burstable,
            ),
            (
                "one guaranteed container and one best effort",
                pod(vec![container(both, both), container(&[], &[])], vec![]),
                QosClass::Burstable,
            ),
            (
                "init container without limits breaks guaranteed",
                pod(
                    vec![container(both, both)],
                    vec![container(&[("cpu", "1")], &[])],
                ),
                QosClass::Burstable,
            ),
            (
                "only non-cpu/memory resources",
                pod(
                    vec![container(&[("ephemeral-storage", "1Gi")], &[])],
                    vec![],
                ),
                QosClass::BestEffort,
            ),
            (
                "equal values written differently",
                pod(
                    vec![container(
                        &[("cpu", "1"), ("memory", "1Gi")],
                        &[("cpu", "1000m"), ("memory", "1073741824")],
                    )],
                    vec![],
                ),
                QosClass::Guaranteed,
            ),
        ];
        for (name, pod, want) in cases {
            assert_eq!(qos_class(&pod), want, "{name}");
        }
    }

    #[test]
    fn resources_become_cri_resources_as_the_kubelet_computes_them() {
        let gib = 1i64 << 30;
        struct Case {
            name: &'static str,
            c: Container,
            qos: QosClass,
            shares: i64,
            quota: i64,
            memory: i64,
            oom: i64,
        }
        let cases = [
            Case {
                name: "best effort",
                c: container(&[], &[]),
                qos: QosClass::BestEffort,
                shares: 2,
                quota: 0,
                memory: 0,
                oom: 1000,
            },
            Case {
                name: "half a cpu limited to one",
                c: container(&[("cpu", "500m")], &[("cpu", "1")]),
                qos: QosClass::Burstable,
                shares: 512,
                quota: 100_000,
                memory: 0,
                oom: 999,
            },
            Case {
                name: "limit defaults the request",
                c: container(&[], &[("cpu", "250m"), ("memory", "256Mi")]),
                qos: QosClass::Guaranteed,
                shares: 256,
                quota: 25_000,
                memory: 256 << 20,
                oom: 0,
            },
            Case {
                name: "tiny cpu gets minimum shares and quota",
                c: container(&[("cpu", "1m")], &[("cpu", "1m")]),
                qos: QosClass::Burstable,
                shares: 2,
                quota: 1_000,
                memory: 0,
                oom: 999,
            },
            Case {
                name: "memory request lowers the oom score",
                c: container(&[("memory", "512Mi")], &[]),
                qos: QosClass::Burstable,
                shares: 2,
                quota: 0,
                memory: 0,
                oom: 500,
            },
        ];
        for case in cases {
            let r = linux_resources(&case.c, case.qos, gib);
            assert_eq!(r.cpu_shares, case.shares, "{} shares", case.name);
            assert_eq!(r.cpu_quota, case.quota, "{} quota", case.name);
            assert_eq!(r.cpu_period, QUOTA_PERIOD_US, "{} period", case.name);
            assert_eq!(r.memory_limit_in_bytes, case.memory, "{} memory", case.name);
            assert_eq!(r.oom_score_adj, case.oom, "{} oom", case.name);
        }
    }
}
