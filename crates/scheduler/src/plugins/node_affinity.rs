//! NodeAffinity: `spec.nodeSelector` and required node affinity must match
//! the node (filter); preferred node affinity terms add their weights
//! (score, normalized so the best node gets 100).

use k8s_openapi::api::core::v1::{NodeSelector, PodSpec};

use crate::framework::{
    CycleState, FilterPlugin, NodeInfo, Plugin, PodInfo, ScorePlugin, Status, default_normalize,
};
use crate::selectors::{node_selector_matches, node_selector_term_matches};

pub const NAME: &str = "NodeAffinity";
pub const ERR_REASON: &str = "node(s) didn't match Pod's node affinity/selector";

pub struct NodeAffinity;

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        NAME
    }
    fn filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
    fn score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
}

/// `nodeSelector` and required node affinity both match (used by topology
/// spread too).
pub fn required_matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    let Some(spec) = pod.pod.spec.as_ref() else {
        return true;
    };
    // The node's labels only when the pod asks: this runs for hundreds of
    // nodes per pod, and most pods ask nothing of them.
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| node.labels().get(k) == Some(v))
    {
        return false;
    }
    match required_affinity(spec) {
        None => true,
        Some(sel) => node_selector_matches(sel, node.name(), node.labels()),
    }
}

/// The pod's required node affinity, if it declares one.
pub fn required_affinity(spec: &PodSpec) -> Option<&NodeSelector> {
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
}

/// Whether the pod restricts its nodes at all (a non-empty `nodeSelector`
/// or required node affinity): [`required_matches`] holds on every node
/// otherwise.
pub fn restricts_nodes(pod: &PodInfo) -> bool {
    pod.pod.spec.as_ref().is_some_and(|spec| {
        spec.node_selector.as_ref().is_some_and(|s| !s.is_empty())
            || required_affinity(spec).is_some()
    })
}

impl FilterPlugin for NodeAffinity {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if required_matches(pod, node) {
            Status::success()
        } else {
            Status::unresolvable(ERR_REASON)
        }
    }
}

impl ScorePlugin for NodeAffinity {
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let preferred = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| {
                na.preferred_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default();
        preferred
            .iter()
            .filter(|t| {
                t.weight != 0
                    && node_selector_term_matches(&t.preference, node.name(), node.labels())
            })
            .map(|t| t.weight as i64)
            .sum()
    }

    fn normalize(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        default_normalize(scores, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;
    use serde_json::json;

    fn required(exprs: serde_json::Value) -> PodInfoJson {
        json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": exprs}]}}}}})
    }

    fn labelled(labels: serde_json::Value) -> serde_json::Value {
        json!({"metadata": {"labels": labels}})
    }

    type PodInfoJson = serde_json::Value;

    #[test]
    fn filter() {
        let zone_a = labelled(json!({"zone": "a", "cores": "8"}));
        let cases = [
            Case {
                name: "no constraints",
                pod: pod(json!({})),
                node: node(zone_a.clone()),
                want: ok(),
            },
            Case {
                name: "nodeSelector matches",
                pod: pod(json!({"spec": {"nodeSelector": {"zone": "a"}}})),
                node: node(zone_a.clone()),
                want: ok(),
            },
            Case {
                name: "nodeSelector mismatch",
                pod: pod(json!({"spec": {"nodeSelector": {"zone": "b"}}})),
                node: node(zone_a.clone()),
                want: unresolvable(ERR_REASON),
            },
            Case {
                name: "nodeSelector missing label",
                pod: pod(json!({"spec": {"nodeSelector": {"disk": "ssd"}}})),
                node: node(zone_a.clone()),
                want: unresolvable(ERR_REASON),
            },
            Case {
                name: "In",
                pod: pod(required(
                    json!([{"key": "zone", "operator": "In", "values": ["a", "b"]}]),
                )),
                node: node(zone_a.clone()),
                want: ok(),
            },
            Case {
                name: "In mismatch",
                pod: pod(required(
                    json!([{"key": "zone", "operator": "In", "values": ["b"]}]),
                )),
                node: node(zone_a.clone()),
                want: unresolvable(ERR_REASON),
            },
            Case {
                name: "NotIn",
                pod: pod(required(
                    json!([{"key": "zone", "operator": "NotIn", "values": ["b"]}]),
                )),
                node: node(zone_a.clone()),
                want: ok(),
            },
            Case {
                name: "NotIn mismatch",
                pod: pod(required(
                    json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}]),
                )),
                node: node(zone_a.clone()),
                want: unresolvable(ERR_REASON),
            },
            Case {
                name: "Exists",
                pod: pod(required(json!([{"key": "zone", "operator": "Exists"}]))),
                node: node(zone_a.clone()),
                want: ok(),
            },
            Case {
                name: "Exists mismatch",
                pod: pod(required(json!([{"key": "gpu", "operator": "Exists"}]))),
                node: node(zone_a.clone()),
                want: unresolvable(ERR_REASON),
            },
            Case {
                name: "DoesNotExist",
                pod: pod(required(
                    json!([{"key": "gpu", "operator": "DoesNotExist"}]),
                )),
                node: node(zone_a.clone()),
                want: ok(),
            },
            Case {
                name: "DoesNotExist mismatch",
                pod: pod(required(
                    json!([{"key": "zone", "operator": "DoesNotExist"}]),
                )),
                node: node(zone_a.clone()),
                want: unresolvable(ERR_REASON),
            },
            Case {
                name: "Gt",
                pod: pod(required(
                    json!([{"key": "cores", "operator": "Gt", "values": ["4"]}]),
                )),
                node: node(zone_a.clone()),
                want: ok(),
            },
            Case {
                name: "Gt mismatch",
                pod: pod(required(
                    json!([{"key": "cores", "operator": "Gt", "values": ["8"]}]),
                )),
                node: node(zone_a.clone()),
                want: unresolvable(ERR_REASON),
            },
            Case {
                name: "Lt",
                pod: pod(required(
                    json!([{"key": "cores", "operator": "Lt", "values": ["16"]}]),
                )),
                node: node(zone_a.clone()),
                want: ok(),
            },
            Case {
                name: "Lt non-integer label",
                pod: pod(required(
                    json!([{"key": "zone", "operator": "Lt", "values": ["16"]}]),
                )),
                node: node(zone_a.clone()),
                want: unresolvable(ERR_REASON),
            },
            Case {
                name: "expressions in a term are ANDed",
                pod: pod(required(
                    json!([{"key": "zone", "operator": "In", "values": ["a"]}, {"key": "gpu", "operator": "Exists"}]),
                )),
                node: node(zone_a.clone()),
                want: unresolvable(ERR_REASON),
            },
            Case {
                name: "terms are ORed",
                pod: pod(
                    json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]},
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}}}),
                ),
                node: node(zone_a.clone()),
                want: ok(),
            },
            Case {
                name: "empty term matches nothing",
                pod: pod(
                    json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{}]}}}}}),
                ),
                node: node(zone_a.clone()),
                want: unresolvable(ERR_REASON),
            },
            Case {
                name: "matchFields metadata.name",
                pod: pod(
                    json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-1"]}]}]}}}}}),
                ),
                node: node(zone_a.clone()),
                want: ok(),
            },
            Case {
                name: "matchFields other name",
                pod: pod(
                    json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-2"]}]}]}}}}}),
                ),
                node: node(zone_a.clone()),
                want: unresolvable(ERR_REASON),
            },
            Case {
                name: "nodeSelector and affinity must both match",
                pod: pod(
                    json!({"spec": {"nodeSelector": {"zone": "b"}, "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}]}}}}}),
                ),
                node: node(zone_a),
                want: unresolvable(ERR_REASON),
            },
        ];
        run_filter_cases(&NodeAffinity, &cases);
    }

    #[test]
    fn score_sums_matching_preferred_weights_and_normalizes() {
        let p = pod(
            json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 2, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
            {"weight": 6, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}}}}),
        );
        let nodes = [
            node_named("none", json!({})),
            node_named("zone", labelled(json!({"zone": "a"}))),
            node_named("ssd", labelled(json!({"disk": "ssd"}))),
            node_named("both", labelled(json!({"zone": "a", "disk": "ssd"}))),
        ];
        assert_eq!(run_score(&NodeAffinity, &p, &nodes), vec![0, 25, 75, 100]);
    }
}
