//! NodeReady: only nodes whose `Ready` condition is `True` take pods,
//! unless the pod tolerates the taint the node lifecycle controller would
//! put on such a node (`node.kubernetes.io/not-ready` for `False`,
//! `node.kubernetes.io/unreachable` for `Unknown` or no condition), as
//! DaemonSet pods do. Kubernetes relies on those taints alone; checking the
//! condition too means a node is not used before the controller catches up.

use k8s_openapi::api::core::v1::Taint;

use crate::framework::{CycleState, FilterPlugin, NodeInfo, Plugin, PodInfo, Readiness, Status};
use crate::selectors::tolerations_tolerate;

pub const NAME: &str = "NodeReady";
pub const ERR_REASON: &str = "node(s) were not ready";
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";

pub struct NodeReady;

impl Plugin for NodeReady {
    fn name(&self) -> &'static str {
        NAME
    }
    fn filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
}

impl FilterPlugin for NodeReady {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let key = match node.ready {
            Readiness::True => return Status::success(),
            Readiness::False => TAINT_NOT_READY,
            Readiness::Unknown => TAINT_UNREACHABLE,
        };
        let taint = Taint {
            key: key.into(),
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

    fn with_ready(status: &str) -> serde_json::Value {
        json!({"status": {"conditions": [{"type": "Ready", "status": status}]}})
    }

    #[test]
    fn filter() {
        let tolerate_all = pod(json!({"spec": {"tolerations": [{"operator": "Exists"}]}}));
        let cases = [
            Case {
                name: "ready node",
                pod: pod(json!({})),
                node: node(with_ready("True")),
                want: ok(),
            },
            Case {
                name: "not ready node",
                pod: pod(json!({})),
                node: node(with_ready("False")),
                want: unresolvable(ERR_REASON),
            },
            Case {
                name: "unknown readiness",
                pod: pod(json!({})),
                node: node(with_ready("Unknown")),
                want: unresolvable(ERR_REASON),
            },
            Case {
                name: "no conditions at all",
                pod: pod(json!({})),
                node: node(json!({"status": {"conditions": []}})),
                want: unresolvable(ERR_REASON),
            },
            Case {
                name: "pod tolerating everything goes to a not ready node",
                pod: tolerate_all,
                node: node(with_ready("False")),
                want: ok(),
            },
            Case {
                name: "not-ready toleration does not cover unreachable",
                pod: pod(
                    json!({"spec": {"tolerations": [{"key": TAINT_NOT_READY, "operator": "Exists"}]}}),
                ),
                node: node(with_ready("Unknown")),
                want: unresolvable(ERR_REASON),
            },
        ];
        run_filter_cases(&NodeReady, &cases);
    }
}
