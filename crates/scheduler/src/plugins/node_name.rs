//! NodeName: a pod that names a node (`spec.nodeName`) fits only there.
//! (Pods the scheduler sees have it empty; the check matters for
//! preemption dry-runs and for anyone reusing the filters.)

use crate::framework::{CycleState, FilterPlugin, NodeInfo, Plugin, PodInfo, Status};

pub const NAME: &str = "NodeName";
pub const ERR_REASON: &str = "node(s) didn't match the requested node name";

pub struct NodeName;

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        NAME
    }
    fn filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
}

impl FilterPlugin for NodeName {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        match pod.pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            None | Some("") => Status::success(),
            Some(n) if n == node.name() => Status::success(),
            Some(_) => Status::unresolvable(ERR_REASON),
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
                name: "no node name",
                pod: pod(json!({})),
                node: node(json!({})),
                want: ok(),
            },
            Case {
                name: "same node",
                pod: pod(json!({"spec": {"nodeName": "node-1"}})),
                node: node(json!({})),
                want: ok(),
            },
            Case {
                name: "other node",
                pod: pod(json!({"spec": {"nodeName": "node-2"}})),
                node: node(json!({})),
                want: unresolvable(ERR_REASON),
            },
        ];
        run_filter_cases(&NodeName, &cases);
    }
}
