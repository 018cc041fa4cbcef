//! The in-tree plugins, one module each, and the default profile.

pub mod inter_pod_affinity;
pub mod node_affinity;
pub mod node_name;
pub mod node_ports;
pub mod node_ready;
pub mod node_resources;
pub mod node_unschedulable;
pub mod pod_topology_spread;
pub mod taint_toleration;

use std::sync::Arc;

use crate::framework::{Profile, Registry};

/// Every in-tree plugin by name.
pub fn registry() -> Registry {
    let mut r = Registry::default();
    r.register(Arc::new(node_unschedulable::NodeUnschedulable));
    r.register(Arc::new(node_ready::NodeReady));
    r.register(Arc::new(node_name::NodeName));
    r.register(Arc::new(taint_toleration::TaintToleration));
    r.register(Arc::new(node_affinity::NodeAffinity));
    r.register(Arc::new(node_ports::NodePorts));
    r.register(Arc::new(node_resources::NodeResourcesFit));
    r.register(Arc::new(node_resources::BalancedAllocation));
    r.register(Arc::new(inter_pod_affinity::InterPodAffinity));
    r.register(Arc::new(pod_topology_spread::PodTopologySpread));
    r
}

/// Filters in upstream's default order (with NodeReady after
/// NodeUnschedulable).
pub const DEFAULT_FILTERS: &[&str] = &[
    node_unschedulable::NAME,
    node_ready::NAME,
    node_name::NAME,
    taint_toleration::NAME,
    node_affinity::NAME,
    node_ports::NAME,
    node_resources::FIT_NAME,
    pod_topology_spread::NAME,
    inter_pod_affinity::NAME,
];

/// Scores with upstream's default weights.
pub const DEFAULT_SCORES: &[(&str, i64)] = &[
    (taint_toleration::NAME, 3),
    (node_affinity::NAME, 2),
    (node_resources::FIT_NAME, 1),
    (pod_topology_spread::NAME, 2),
    (inter_pod_affinity::NAME, 2),
    (node_resources::BALANCED_NAME, 1),
];

/// The default profile (`default-scheduler`).
pub fn default_profile() -> Profile {
    Profile::new(&registry(), DEFAULT_FILTERS, DEFAULT_SCORES)
        .expect("the default plugins are registered")
}

#[cfg(test)]
pub(crate) mod testing {
    //! Building pods and nodes from JSON fragments for table tests.

    use std::collections::BTreeMap;
    use std::sync::Arc;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use serde_json::{Value, json};

    use crate::framework::{
        ClusterInfo, Code, CycleState, NodeInfo, Plugin, PodInfo, Snapshot, Status, ZoneGroups,
    };

    pub struct Case {
        pub name: &'static str,
        pub pod: PodInfo,
        pub node: NodeInfo,
        pub want: Status,
    }

    fn merge(base: &mut Value, over: Value) {
        match (base, over) {
            (Value::Object(b), Value::Object(o)) => {
                for (k, v) in o {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
            (b, o) => *b = o,
        }
    }

    /// A pod named `p` in `default` with one container, `over` merged in.
    pub fn pod(over: Value) -> PodInfo {
        let mut v = json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        merge(&mut v, over);
        if v.pointer("/metadata/uid").is_none() {
            let uid = format!(
                "uid-{}-{}",
                v["metadata"]["namespace"].as_str().unwrap(),
                v["metadata"]["name"].as_str().unwrap()
            );
            v["metadata"]["uid"] = json!(uid);
        }
        PodInfo::new(Arc::new(serde_json::from_value(v).expect("pod")))
    }

    /// A node `name` with 4 cpu, 8Gi, 110 pods, `over` merged in.
    pub fn node_named(name: &str, over: Value) -> NodeInfo {
        node_with_named(name, over, &[])
    }

    pub fn node(over: Value) -> NodeInfo {
        node_named("node-1", over)
    }

    pub fn node_with(over: Value, pods: &[PodInfo]) -> NodeInfo {
        node_with_named("node-1", over, pods)
    }

    pub fn node_with_named(name: &str, over: Value, pods: &[PodInfo]) -> NodeInfo {
        let mut v = json!({"metadata": {"name": name},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]}});
        merge(&mut v, over);
        NodeInfo::with_pods(
            Arc::new(serde_json::from_value(v).expect("node")),
            pods.iter().cloned().map(Arc::new),
        )
    }

    pub fn cluster_with_namespaces(ns: &[(&str, &[(&str, &str)])]) -> ClusterInfo {
        ClusterInfo {
            namespace_labels: ns
                .iter()
                .map(|(n, l)| {
                    (
                        n.to_string(),
                        l.iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect::<BTreeMap<_, _>>(),
                    )
                })
                .collect(),
        }
    }

    pub fn ok() -> Status {
        Status::success()
    }

    pub fn unschedulable(r: &str) -> Status {
        Status::new(Code::Unschedulable, r)
    }

    pub fn unresolvable(r: &str) -> Status {
        Status::new(Code::UnschedulableAndUnresolvable, r)
    }

    /// PreFilter (if any) over `nodes`, then Filter on each node.
    pub fn run_filter_on(
        plugin: &dyn Plugin,
        pod: &PodInfo,
        nodes: &[NodeInfo],
        cluster: &ClusterInfo,
    ) -> Vec<Status> {
        let refs: Vec<&NodeInfo> = nodes.iter().collect();
        let snapshot = Snapshot {
            nodes: &refs,
            cluster,
            default_spread_selector: None,
            zone_groups: None,
        };
        let mut state = CycleState::default();
        if let Some(pf) = plugin.pre_filter() {
            let s = pf.pre_filter(&mut state, pod, &snapshot);
            if s.code == crate::framework::Code::Skip {
                // As the framework does: Filter does not run, every node passes.
                return vec![Status::success(); nodes.len()];
            }
            if !s.is_success() {
                return vec![s; nodes.len()];
            }
        }
        let f = plugin.filter().expect("a filter plugin");
        nodes.iter().map(|n| f.filter(&state, pod, n)).collect()
    }

    pub fn run_filter_cases(plugin: &dyn Plugin, cases: &[Case]) {
        for c in cases {
            let got = run_filter_on(
                plugin,
                &c.pod,
                std::slice::from_ref(&c.node),
                &ClusterInfo::default(),
            );
            assert_eq!(got[0], c.want, "{}", c.name);
        }
    }

    /// PreScore, Score and Normalize with every node feasible.
    pub fn run_score(plugin: &dyn Plugin, pod: &PodInfo, nodes: &[NodeInfo]) -> Vec<i64> {
        run_score_with(plugin, pod, nodes, None)
    }

    /// [`run_score`] with the snapshot's default spread selector set. Runs
    /// twice, without and with the zone groups a cache would keep, and
    /// checks both give the same.
    pub fn run_score_with(
        plugin: &dyn Plugin,
        pod: &PodInfo,
        nodes: &[NodeInfo],
        default_spread_selector: Option<&LabelSelector>,
    ) -> Vec<i64> {
        let refs: Vec<&NodeInfo> = nodes.iter().collect();
        let cluster = ClusterInfo::default();
        let groups = ZoneGroups::of(&refs);
        let run = |zone_groups| {
            let snapshot = Snapshot {
                nodes: &refs,
                cluster: &cluster,
                default_spread_selector,
                zone_groups,
            };
            let mut state = CycleState::default();
            let sp = plugin.score().expect("a score plugin");
            if sp.pre_score(&mut state, pod, &refs, &snapshot).code == Code::Skip {
                // As the framework does: the plugin adds nothing.
                return vec![0; nodes.len()];
            }
            let mut scores: Vec<i64> = refs.iter().map(|n| sp.score(&state, pod, n)).collect();
            sp.normalize(&state, pod, &mut scores);
            scores
        };
        let scores = run(None);
        assert_eq!(run(Some(&groups)), scores, "with zone groups");
        scores
    }
}
