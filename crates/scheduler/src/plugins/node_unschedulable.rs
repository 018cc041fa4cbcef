//! NodeUnschedulable: a cordoned node (`spec.unschedulable`) only takes
//! pods that tolerate `node.kubernetes.io/unschedulable:NoSchedule`.

use k8s_openapi::api::core::v1::Taint;

use crate::framework::{CycleState, FilterPlugin, NodeInfo, Plugin, PodInfo, Status};
use crate::selectors::tolerations_tolerate;

pub const NAME: &str = "NodeUnschedulable";
pub const ERR_REASON: &str = "node(s) were unschedulable";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        NAME
    }
    fn filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
}

impl FilterPlugin for NodeUnschedulable {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if !node.unschedulable {
            return Status::success();
        }
        let taint = Taint {
            key: TAINT_UNSCHEDULABLE.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let tolerations = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default();
        if tolerations_tolerate(tolerations, &taint) {
            Status::success()
        } else {
            Status::unresolvable(ERR_REASON)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;
    use serde_json::json;

    #[test]
    fn filter() {
        let cases = [
            Case {
                name: "schedulable node",
                pod: pod(json!({})),
                node: node(json!({})),
                want: ok(),
            },
            Case {
                name: "cordoned node",
                pod: pod(json!({})),
                node: node(json!({"spec": {"unschedulable": true}})),
                want: unresolvable(ERR_REASON),
            },
            Case {
                name: "cordoned node, pod tolerates unschedulable",
                pod: pod(
                    json!({"spec": {"tolerations": [{"key": TAINT_UNSCHEDULABLE, "operator": "Exists", "effect": "NoSchedule"}]}}),
                ),
                node: node(json!({"spec": {"unschedulable": true}})),
                want: ok(),
            },
            Case {
                name: "cordoned node, toleration for another effect",
                pod: pod(
                    json!({"spec": {"tolerations": [{"key": TAINT_UNSCHEDULABLE, "operator": "Exists", "effect": "NoExecute"}]}}),
                ),
                node: node(json!({"spec": {"unschedulable": true}})),
                want: unresolvable(ERR_REASON),
            },
        ];
        run_filter_cases(&NodeUnschedulable, &cases);
    }
}
