//! NodeResourcesFit (filter: requests against allocatable; score:
//! LeastAllocated) and NodeResourcesBalancedAllocation (score).

use crate::framework::{
    CycleState, FilterPlugin, MAX_NODE_SCORE, NodeInfo, Plugin, PodInfo, ScorePlugin, Status,
};

pub const FIT_NAME: &str = "NodeResourcesFit";
pub const BALANCED_NAME: &str = "NodeResourcesBalancedAllocation";

pub struct NodeResourcesFit;

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        FIT_NAME
    }
    fn filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
    fn score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
}

/// `fitsRequest`: every insufficient resource is its own reason.
pub fn insufficient_resources(pod: &PodInfo, node: &NodeInfo) -> Vec<String> {
    let mut reasons = Vec::new();
    let alloc = &node.allocatable;
    let used = &node.requested;
    if node.pods.len() as i64 + 1 > alloc.allowed_pod_number {
        reasons.push("Too many pods".to_string());
    }
    let req = &pod.requests;
    if req.is_zero() {
        return reasons;
    }
    if req.milli_cpu > 0 && req.milli_cpu > alloc.milli_cpu - used.milli_cpu {
        reasons.push("Insufficient cpu".into());
    }
    if req.memory > 0 && req.memory > alloc.memory - used.memory {
        reasons.push("Insufficient memory".into());
    }
    if req.ephemeral_storage > 0
        && req.ephemeral_storage > alloc.ephemeral_storage - used.ephemeral_storage
    {
        reasons.push("Insufficient ephemeral-storage".into());
    }
    for (name, &want) in &req.scalar {
        if want == 0 {
            continue;
        }
        let have = alloc.scalar.get(name).copied().unwrap_or(0);
        let taken = used.scalar.get(name).copied().unwrap_or(0);
        if want > have - taken {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    reasons
}

impl FilterPlugin for NodeResourcesFit {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let reasons = insufficient_resources(pod, node);
        if reasons.is_empty() {
            Status::success()
        } else {
            Status {
                code: crate::framework::Code::Unschedulable,
                reasons,
                plugin: "",
            }
        }
    }
}

/// (requested including the pod, allocatable) for cpu and memory, with
/// scoring's non-zero defaults.
fn cpu_memory(pod: &PodInfo, node: &NodeInfo, non_zero: bool) -> [(i64, i64); 2] {
    let (used, req) = if non_zero {
        (&node.non_zero_requested, &pod.non_zero_requests)
    } else {
        (&node.requested, &pod.requests)
    };
    [
        (used.milli_cpu + req.milli_cpu, node.allocatable.milli_cpu),
        (used.memory + req.memory, node.allocatable.memory),
    ]
}

impl ScorePlugin for NodeResourcesFit {
    /// LeastAllocated: `(allocatable - requested) * 100 / allocatable` per
    /// resource (cpu and memory, weight 1 each), averaged.
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let per = cpu_memory(pod, node, true).map(|(requested, capacity)| {
            if capacity == 0 || requested > capacity {
                0
            } else {
                (capacity - requested) * MAX_NODE_SCORE / capacity
            }
        });
        per.iter().sum::<i64>() / per.len() as i64
    }
}

pub struct BalancedAllocation;

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        BALANCED_NAME
    }
    fn score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
}

impl ScorePlugin for BalancedAllocation {
    /// `(1 - std(fractions)) * 100`, where each fraction is requested /
    /// allocatable (capped at 1) after placing the pod.
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        if pod.requests.is_zero() {
            // Upstream skips best-effort pods: every node scores the same.
            return 0;
        }
        let fractions: Vec<f64> = cpu_memory(pod, node, false)
            .iter()
            .filter(|(_, cap)| *cap > 0)
            .map(|&(req, cap)| (req as f64 / cap as f64).min(1.0))
            .collect();
        let std = match fractions.len() {
            0 | 1 => 0.0,
            2 => ((fractions[0] - fractions[1]) / 2.0).abs(),
            n => {
                let mean = fractions.iter().sum::<f64>() / n as f64;
                (fractions.iter().map(|f| (f - mean).powi(2)).sum::<f64>() / n as f64).sqrt()
            }
        };
        ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;
    use serde_json::json;

    fn requesting(name: &str, requests: serde_json::Value) -> serde_json::Value {
        json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": requests}}]}})
    }

    fn sized(cpu: &str, memory: &str, pods: &str) -> serde_json::Value {
        json!({"status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": pods, "example.com/gpu": "2", "ephemeral-storage": "10Gi"}}})
    }

    #[test]
    fn filter() {
        let half = pod(requesting("half", json!({"cpu": "1", "memory": "1Gi"})));
        let cases = [
            Case {
                name: "fits empty node",
                pod: pod(requesting("p", json!({"cpu": "2", "memory": "4Gi"}))),
                node: node(sized("2", "4Gi", "10")),
                want: ok(),
            },
            Case {
                name: "too much cpu",
                pod: pod(requesting("p", json!({"cpu": "2100m"}))),
                node: node(sized("2", "4Gi", "10")),
                want: unschedulable("Insufficient cpu"),
            },
            Case {
                name: "cpu taken by assigned pods",
                pod: pod(requesting("p", json!({"cpu": "1500m"}))),
                node: node_with(sized("2", "4Gi", "10"), std::slice::from_ref(&half)),
                want: unschedulable("Insufficient cpu"),
            },
            Case {
                name: "cpu and memory both short are two reasons",
                pod: pod(requesting("p", json!({"cpu": "3", "memory": "5Gi"}))),
                node: node(sized("2", "4Gi", "10")),
                want: Status {
                    code: crate::framework::Code::Unschedulable,
                    reasons: vec!["Insufficient cpu".into(), "Insufficient memory".into()],
                    plugin: "",
                },
            },
            Case {
                name: "too many pods",
                pod: pod(json!({})),
                node: node_with(sized("2", "4Gi", "1"), std::slice::from_ref(&half)),
                want: unschedulable("Too many pods"),
            },
            Case {
                name: "best-effort pod fits a full node",
                pod: pod(json!({})),
                node: node_with(sized("1", "1Gi", "10"), std::slice::from_ref(&half)),
                want: ok(),
            },
            Case {
                name: "extended resource fits",
                pod: pod(requesting("p", json!({"example.com/gpu": "2"}))),
                node: node(sized("2", "4Gi", "10")),
                want: ok(),
            },
            Case {
                name: "extended resource short",
                pod: pod(requesting("p", json!({"example.com/gpu": "3"}))),
                node: node(sized("2", "4Gi", "10")),
                want: unschedulable("Insufficient example.com/gpu"),
            },
            Case {
                name: "unknown extended resource",
                pod: pod(requesting("p", json!({"example.com/fpga": "1"}))),
                node: node(sized("2", "4Gi", "10")),
                want: unschedulable("Insufficient example.com/fpga"),
            },
            Case {
                name: "ephemeral storage",
                pod: pod(requesting("p", json!({"ephemeral-storage": "11Gi"}))),
                node: node(sized("2", "4Gi", "10")),
                want: unschedulable("Insufficient ephemeral-storage"),
            },
            Case {
                name: "init container counted as the max",
                pod: pod(
                    json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "500m"}}}],
                    "initContainers": [{"name": "i", "image": "i", "resources": {"requests": {"cpu": "2500m"}}}]}}),
                ),
                node: node(sized("2", "4Gi", "10")),
                want: unschedulable("Insufficient cpu"),
            },
            Case {
                name: "overhead counted",
                pod: pod(
                    json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "2"}}}], "overhead": {"cpu": "1m"}}}),
                ),
                node: node(sized("2", "4Gi", "10")),
                want: unschedulable("Insufficient cpu"),
            },
        ];
        run_filter_cases(&NodeResourcesFit, &cases);
    }

    #[test]
    fn least_allocated_prefers_emptier_nodes() {
        let p = pod(requesting("p", json!({"cpu": "1", "memory": "1Gi"})));
        let busy = pod(requesting("busy", json!({"cpu": "2", "memory": "2Gi"})));
        let nodes = [
            node_with_named("empty", sized("4", "4Gi", "10"), &[]),
            node_with_named("busy", sized("4", "4Gi", "10"), &[busy]),
        ];
        // empty: cpu (4-1)/4=75, mem 75 → 75; busy: cpu (4-3)/4=25, mem 25.
        assert_eq!(run_score(&NodeResourcesFit, &p, &nodes), vec![75, 25]);
    }

    #[test]
    fn least_allocated_counts_default_requests_for_best_effort_pods() {
        let p = pod(json!({}));
        let nodes = [node_with_named("n", sized("1", "1000Mi", "10"), &[])];
        // cpu: (1000-100)*100/1000 = 90; memory: (1000-200)*100/1000 = 80.
        assert_eq!(run_score(&NodeResourcesFit, &p, &nodes), vec![85]);
    }

    #[test]
    fn balanced_allocation_prefers_even_use() {
        let p = pod(requesting("p", json!({"cpu": "1", "memory": "1Gi"})));
        let cpu_heavy = pod(requesting("cpu", json!({"cpu": "2"})));
        let nodes = [
            node_with_named("even", sized("4", "4Gi", "10"), &[]),
            node_with_named("skewed", sized("4", "4Gi", "10"), &[cpu_heavy]),
        ];
        // even: 0.25/0.25 → 100; skewed: 0.75/0.25 → std 0.25 → 75.
        assert_eq!(run_score(&BalancedAllocation, &p, &nodes), vec![100, 75]);
    }
}
