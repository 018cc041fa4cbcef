//! TaintToleration: a node's `NoSchedule` and `NoExecute` taints must be
//! tolerated (filter); untolerated `PreferNoSchedule` taints make a node
//! less attractive (score, reversed: fewer is better).

use k8s_openapi::api::core::v1::Toleration;

use crate::framework::{
    CycleState, FilterPlugin, NodeInfo, Plugin, PodInfo, ScorePlugin, Status, default_normalize,
};
use crate::selectors::tolerations_tolerate;

pub const NAME: &str = "TaintToleration";

pub struct TaintToleration;

fn tolerations(pod: &PodInfo) -> &[Toleration] {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

impl Plugin for TaintToleration {
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

impl FilterPlugin for TaintToleration {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let tolerations = tolerations(pod);
        let untolerated = node
            .taints
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .find(|t| !tolerations_tolerate(tolerations, t));
        match untolerated {
            None => Status::success(),
            Some(t) => Status::unresolvable(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or_default()
            )),
        }
    }
}

impl ScorePlugin for TaintToleration {
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        // Only tolerations that can tolerate PreferNoSchedule count.
        let prefer: Vec<Toleration> = tolerations(pod)
            .iter()
            .filter(|t| {
                matches!(
                    t.effect.as_deref(),
                    None | Some("") | Some("PreferNoSchedule")
                )
            })
            .cloned()
            .collect();
        node.taints
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule" && !tolerations_tolerate(&prefer, t))
            .count() as i64
    }

    fn normalize(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        default_normalize(scores, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;
    use serde_json::json;

    fn tainted(taints: serde_json::Value) -> serde_json::Value {
        json!({"spec": {"taints": taints}})
    }

    #[test]
    fn filter() {
        let cp = tainted(
            json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]),
        );
        let cases = [
            Case {
                name: "no taints",
                pod: pod(json!({})),
                node: node(json!({})),
                want: ok(),
            },
            Case {
                name: "untolerated NoSchedule taint with empty value",
                pod: pod(json!({})),
                node: node(cp.clone()),
                want: unresolvable(
                    "node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }",
                ),
            },
            Case {
                name: "untolerated NoExecute taint with a value",
                pod: pod(json!({})),
                node: node(tainted(
                    json!([{"key": "dedicated", "value": "gpu", "effect": "NoExecute"}]),
                )),
                want: unresolvable("node(s) had untolerated taint {dedicated: gpu}"),
            },
            Case {
                name: "PreferNoSchedule does not filter",
                pod: pod(json!({})),
                node: node(tainted(json!([{"key": "k", "effect": "PreferNoSchedule"}]))),
                want: ok(),
            },
            Case {
                name: "tolerated by Exists",
                pod: pod(
                    json!({"spec": {"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]}}),
                ),
                node: node(cp),
                want: ok(),
            },
            Case {
                name: "one of two taints untolerated",
                pod: pod(
                    json!({"spec": {"tolerations": [{"key": "a", "value": "1", "effect": "NoSchedule"}]}}),
                ),
                node: node(tainted(
                    json!([{"key": "a", "value": "1", "effect": "NoSchedule"}, {"key": "b", "value": "2", "effect": "NoExecute"}]),
                )),
                want: unresolvable("node(s) had untolerated taint {b: 2}"),
            },
            Case {
                name: "NoSchedule toleration does not cover NoExecute",
                pod: pod(
                    json!({"spec": {"tolerations": [{"key": "b", "operator": "Exists", "effect": "NoSchedule"}]}}),
                ),
                node: node(tainted(
                    json!([{"key": "b", "value": "2", "effect": "NoExecute"}]),
                )),
                want: unresolvable("node(s) had untolerated taint {b: 2}"),
            },
        ];
        run_filter_cases(&TaintToleration, &cases);
    }

    #[test]
    fn score_prefers_fewer_untolerated_prefer_no_schedule_taints() {
        let p = pod(
            json!({"spec": {"tolerations": [{"key": "ok", "operator": "Exists", "effect": "PreferNoSchedule"}]}}),
        );
        let nodes = [
            node_named("clean", json!({})),
            node_named(
                "tolerated",
                tainted(json!([{"key": "ok", "effect": "PreferNoSchedule"}])),
            ),
            node_named(
                "one",
                tainted(json!([{"key": "x", "effect": "PreferNoSchedule"}])),
            ),
            node_named(
                "two",
                tainted(
                    json!([{"key": "x", "effect": "PreferNoSchedule"}, {"key": "y", "effect": "PreferNoSchedule"}]),
                ),
            ),
        ];
        assert_eq!(
            run_score(&TaintToleration, &p, &nodes),
            vec![100, 100, 50, 0]
        );
    }
}
