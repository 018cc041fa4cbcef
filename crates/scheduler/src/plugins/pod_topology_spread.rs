//! PodTopologySpread: `whenUnsatisfiable: DoNotSchedule` constraints must
//! keep the skew within `maxSkew` (filter); `ScheduleAnyway` constraints
//! prefer the domains with fewer matching pods (score). Kubernetes' system
//! default constraints (derived from Services and ReplicaSets) are not
//! applied: only constraints the pod declares count.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::framework::{
    Code, CycleState, FilterPlugin, MAX_NODE_SCORE, NodeInfo, Plugin, PodInfo, PreFilterPlugin,
    ScorePlugin, Snapshot, Status,
};
use crate::plugins::node_affinity::required_matches;
use crate::selectors::{label_selector_matches, tolerations_tolerate};

pub const NAME: &str = "PodTopologySpread";
pub const ERR_CONSTRAINTS: &str = "node(s) didn't match pod topology spread constraints";
pub const ERR_MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";
const HOSTNAME: &str = "kubernetes.io/hostname";

#[derive(Debug, Clone)]
struct Constraint {
    max_skew: i64,
    topology_key: String,
    selector: Option<LabelSelector>,
    min_domains: i64,
    honor_affinity: bool,
    honor_taints: bool,
}

fn constraints(pod: &PodInfo, action: &str) -> Vec<Constraint> {
    let all: &[TopologySpreadConstraint] = pod
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or_default();
    let labels = pod.labels();
    all.iter()
        .filter(|c| c.when_unsatisfiable == action)
        .map(|c| {
            let mut selector = c.label_selector.clone();
            let extra: Vec<LabelSelectorRequirement> = c
                .match_label_keys
                .iter()
                .flatten()
                .filter_map(|k| {
                    labels.get(k).map(|v| LabelSelectorRequirement {
                        key: k.clone(),
                        operator: "In".into(),
                        values: Some(vec![v.clone()]),
                    })
                })
                .collect();
            if !extra.is_empty()
                && let Some(sel) = selector.as_mut()
            {
                sel.match_expressions
                    .get_or_insert_with(Vec::new)
                    .extend(extra);
            }
            Constraint {
                max_skew: c.max_skew as i64,
                topology_key: c.topology_key.clone(),
                selector,
                min_domains: c.min_domains.unwrap_or(1) as i64,
                honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            }
        })
        .collect()
}

fn has_all_keys(node: &NodeInfo, cs: &[Constraint]) -> bool {
    let labels = node.labels();
    cs.iter().all(|c| labels.contains_key(&c.topology_key))
}

/// `MatchNodeInclusionPolicies`.
fn node_included(c: &Constraint, pod: &PodInfo, node: &NodeInfo) -> bool {
    if c.honor_affinity && !required_matches(pod, node) {
        return false;
    }
    if c.honor_taints {
        let tolerations = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default();
        let taints = node
            .node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default();
        if taints
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .any(|t| !tolerations_tolerate(tolerations, t))
        {
            return false;
        }
    }
    true
}

fn count_matching(node: &NodeInfo, selector: Option<&LabelSelector>, namespace: &str) -> i64 {
    node.pods
        .iter()
        .filter(|p| {
            !p.is_terminating()
                && p.namespace() == namespace
                && label_selector_matches(selector, p.labels())
        })
        .count() as i64
}

struct FilterState {
    constraints: Vec<Constraint>,
    /// Per constraint: topology value → matching pods.
    counts: Vec<HashMap<String, i64>>,
    /// Per constraint: the minimum over domains (0 when fewer domains than
    /// `minDomains`).
    min: Vec<i64>,
}

pub struct PodTopologySpread;

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        NAME
    }
    fn pre_filter(&self) -> Option<&dyn PreFilterPlugin> {
        Some(self)
    }
    fn filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
    fn score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
}

impl PreFilterPlugin for PodTopologySpread {
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, snapshot: &Snapshot) -> Status {
        let cs = constraints(pod, "DoNotSchedule");
        if cs.is_empty() {
            // No hard constraints: nothing for Filter to check.
            return Status::skip();
        }
        let mut counts = vec![HashMap::new(); cs.len()];
        {
            for node in snapshot.nodes {
                if !has_all_keys(node, &cs) {
                    continue;
                }
                for (i, c) in cs.iter().enumerate() {
                    if !node_included(c, pod, node) {
                        continue;
                    }
                    let value = node.labels()[&c.topology_key].clone();
                    *counts[i].entry(value).or_insert(0) +=
                        count_matching(node, c.selector.as_ref(), pod.namespace());
                }
            }
        }
        let min = cs
            .iter()
            .zip(&counts)
            .map(|(c, m)| {
                if (m.len() as i64) < c.min_domains {
                    0
                } else {
                    m.values().copied().min().unwrap_or(i64::MAX)
                }
            })
            .collect();
        state.write(
            NAME,
            FilterState {
                constraints: cs,
                counts,
                min,
            },
        );
        Status::success()
    }
}

impl FilterPlugin for PodTopologySpread {
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<FilterState>(NAME) else {
            return Status::error("PodTopologySpread: no PreFilter state");
        };
        for (i, c) in s.constraints.iter().enumerate() {
            let Some(value) = node.labels().get(&c.topology_key) else {
                return Status::unresolvable(ERR_MISSING_LABEL);
            };
            let self_match = label_selector_matches(c.selector.as_ref(), pod.labels()) as i64;
            let matching = s.counts[i].get(value).copied().unwrap_or(0);
            let skew = (matching + self_match).saturating_sub(s.min[i]);
            if skew > c.max_skew {
                return Status::new(Code::Unschedulable, ERR_CONSTRAINTS);
            }
        }
        Status::success()
    }
}

const SCORE_KEY: &str = "PodTopologySpread/score";

struct ScoreState {
    constraints: Vec<Constraint>,
    counts: Vec<HashMap<String, i64>>,
    weights: Vec<f64>,
    ignored: std::collections::HashSet<String>,
}

impl ScorePlugin for PodTopologySpread {
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        feasible: &[&NodeInfo],
        snapshot: &Snapshot,
    ) -> Status {
        let cs = constraints(pod, "ScheduleAnyway");
        if cs.is_empty() {
            // No soft constraints: every node would score the same.
            return Status::skip();
        }
        let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); cs.len()];
        let mut ignored = std::collections::HashSet::new();
        for node in feasible {
            if !has_all_keys(node, &cs) {
                ignored.insert(node.name().to_string());
                continue;
            }
            for (i, c) in cs.iter().enumerate() {
                if c.topology_key != HOSTNAME {
                    counts[i]
                        .entry(node.labels()[&c.topology_key].clone())
                        .or_insert(0);
                }
            }
        }
        let weights = cs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let size = if c.topology_key == HOSTNAME {
                    feasible.len() - ignored.len()
                } else {
                    counts[i].len()
                };
                ((size + 2) as f64).ln()
            })
            .collect();
        for node in snapshot.nodes {
            if !has_all_keys(node, &cs) {
                continue;
            }
            for (i, c) in cs.iter().enumerate() {
                if c.topology_key == HOSTNAME || !node_included(c, pod, node) {
                    continue;
                }
                if let Some(n) = counts[i].get_mut(&node.labels()[&c.topology_key]) {
                    *n += count_matching(node, c.selector.as_ref(), pod.namespace());
                }
            }
        }
        state.write(
            SCORE_KEY,
            ScoreState {
                constraints: cs,
                counts,
                weights,
                ignored,
            },
        );
        Status::success()
    }

    fn score(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(s) = state.read::<ScoreState>(SCORE_KEY) else {
            return 0;
        };
        if !s.ignored.is_empty() && s.ignored.contains(node.name()) {
            return -1;
        }
        let mut score = 0.0;
        for (i, c) in s.constraints.iter().enumerate() {
            if let Some(value) = node.labels().get(&c.topology_key) {
                let count = if c.topology_key == HOSTNAME {
                    count_matching(node, c.selector.as_ref(), pod.namespace())
                } else {
                    s.counts[i].get(value).copied().unwrap_or(0)
                };
                score += count as f64 * s.weights[i] + (c.max_skew - 1) as f64;
            }
        }
        score.round() as i64
    }

    /// Fewer matching pods is better; ignored nodes (marked -1 by `score`)
    /// get 0.
    fn normalize(&self, state: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        let Some(s) = state.read::<ScoreState>(SCORE_KEY) else {
            return;
        };
        if s.constraints.is_empty() {
            scores.iter_mut().for_each(|x| *x = 0);
            return;
        }
        let valid = || scores.iter().copied().filter(|&x| x >= 0);
        let min = valid().min().unwrap_or(0);
        let max = valid().max().unwrap_or(0);
        for x in scores.iter_mut() {
            *x = if *x < 0 {
                0
            } else if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - *x) / max
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;
    use serde_json::json;

    fn member(name: &str) -> PodInfo {
        pod(json!({"metadata": {"name": name, "labels": {"app": "web"}}}))
    }

    fn zone_node(name: &str, zone: &str, pods: &[PodInfo]) -> NodeInfo {
        node_with_named(
            name,
            json!({"metadata": {"labels": {"zone": zone, "kubernetes.io/hostname": name}}}),
            pods,
        )
    }

    fn spread(max_skew: i32, key: &str, action: &str, extra: serde_json::Value) -> PodInfo {
        let mut c = json!({"maxSkew": max_skew, "topologyKey": key, "whenUnsatisfiable": action,
            "labelSelector": {"matchLabels": {"app": "web"}}});
        if let (Some(m), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        pod(
            json!({"metadata": {"name": "new", "labels": {"app": "web"}}, "spec": {"topologySpreadConstraints": [c]}}),
        )
    }

    #[test]
    fn filter() {
        struct C {
            name: &'static str,
            pod: PodInfo,
            nodes: Vec<NodeInfo>,
            want: Vec<Status>,
        }
        let cases = vec![
            C {
                name: "zone with more pods exceeds maxSkew 1",
                pod: spread(1, "zone", "DoNotSchedule", json!({})),
                nodes: vec![
                    zone_node("a1", "a", &[member("w1")]),
                    zone_node("b1", "b", &[]),
                ],
                want: vec![unschedulable(ERR_CONSTRAINTS), ok()],
            },
            C {
                name: "balanced zones accept both",
                pod: spread(1, "zone", "DoNotSchedule", json!({})),
                nodes: vec![
                    zone_node("a1", "a", &[member("w1")]),
                    zone_node("b1", "b", &[member("w2")]),
                ],
                want: vec![ok(), ok()],
            },
            C {
                name: "maxSkew 2 tolerates one more",
                pod: spread(2, "zone", "DoNotSchedule", json!({})),
                nodes: vec![
                    zone_node("a1", "a", &[member("w1")]),
                    zone_node("b1", "b", &[]),
                ],
                want: vec![ok(), ok()],
            },
            C {
                name: "node missing the topology key",
                pod: spread(1, "zone", "DoNotSchedule", json!({})),
                nodes: vec![
                    node_with_named("bare", json!({}), &[]),
                    zone_node("b1", "b", &[]),
                ],
                want: vec![unresolvable(ERR_MISSING_LABEL), ok()],
            },
            C {
                name: "pods in other namespaces and non-matching pods do not count",
                pod: spread(1, "zone", "DoNotSchedule", json!({})),
                nodes: vec![
                    zone_node(
                        "a1",
                        "a",
                        &[
                            pod(
                                json!({"metadata": {"name": "x", "namespace": "other", "labels": {"app": "web"}}}),
                            ),
                            pod(json!({"metadata": {"name": "y", "labels": {"app": "db"}}})),
                        ],
                    ),
                    zone_node("b1", "b", &[]),
                ],
                want: vec![ok(), ok()],
            },
            C {
                name: "minDomains above the domain count makes the minimum 0",
                pod: spread(1, "zone", "DoNotSchedule", json!({"minDomains": 3})),
                nodes: vec![
                    zone_node("a1", "a", &[member("w1")]),
                    zone_node("b1", "b", &[member("w2")]),
                ],
                want: vec![
                    unschedulable(ERR_CONSTRAINTS),
                    unschedulable(ERR_CONSTRAINTS),
                ],
            },
            C {
                name: "ScheduleAnyway constraints do not filter",
                pod: spread(1, "zone", "ScheduleAnyway", json!({})),
                nodes: vec![
                    zone_node("a1", "a", &[member("w1"), member("w2")]),
                    zone_node("b1", "b", &[]),
                ],
                want: vec![ok(), ok()],
            },
            C {
                name: "hostname spreading",
                pod: spread(1, "kubernetes.io/hostname", "DoNotSchedule", json!({})),
                nodes: vec![
                    zone_node("a1", "a", &[member("w1")]),
                    zone_node("a2", "a", &[]),
                    zone_node("b1", "b", &[member("w2")]),
                ],
                want: vec![
                    unschedulable(ERR_CONSTRAINTS),
                    ok(),
                    unschedulable(ERR_CONSTRAINTS),
                ],
            },
        ];
        for c in cases {
            assert_eq!(
                run_filter_on(&PodTopologySpread, &c.pod, &c.nodes, &Default::default()),
                c.want,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn soft_spread_prefers_the_emptier_zone() {
        let p = spread(1, "zone", "ScheduleAnyway", json!({}));
        let nodes = [
            zone_node("a1", "a", &[member("w1"), member("w2")]),
            zone_node("b1", "b", &[member("w3")]),
            zone_node("c1", "c", &[]),
            node_with_named("bare", json!({}), &[]),
        ];
        let scores = run_score(&PodTopologySpread, &p, &nodes);
        // weight ln(5): a=2*1.609=3, b=2, c=0 → 100*(3+0-s)/3.
        assert_eq!(scores, vec![0, 33, 100, 0]);
    }
}
