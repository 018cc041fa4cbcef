//! NodePorts: a pod's host ports must be free on the node.

use crate::framework::{CycleState, FilterPlugin, NodeInfo, Plugin, PodInfo, Status};

pub const NAME: &str = "NodePorts";
pub const ERR_REASON: &str = "node(s) didn't have free ports for the requested pod ports";

pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        NAME
    }
    fn filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
}

impl FilterPlugin for NodePorts {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if pod.host_ports.is_empty() {
            return Status::success();
        }
        let conflict = node
            .pods
            .iter()
            .flat_map(|p| p.host_ports.iter())
            .any(|used| pod.host_ports.iter().any(|want| want.conflicts(used)));
        if conflict {
            Status::unschedulable(ERR_REASON)
        } else {
            Status::success()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;
    use serde_json::json;

    fn port_pod(name: &str, port: i32, protocol: &str, ip: &str) -> serde_json::Value {
        json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "i",
            "ports": [{"containerPort": 1, "hostPort": port, "protocol": protocol, "hostIP": ip}]}]}})
    }

    #[test]
    fn filter() {
        let used = pod(port_pod("used", 8080, "TCP", ""));
        let cases = [
            Case {
                name: "no host ports",
                pod: pod(json!({})),
                node: node_with(json!({}), std::slice::from_ref(&used)),
                want: ok(),
            },
            Case {
                name: "same port and protocol",
                pod: pod(port_pod("p", 8080, "TCP", "")),
                node: node_with(json!({}), std::slice::from_ref(&used)),
                want: unschedulable(ERR_REASON),
            },
            Case {
                name: "other protocol",
                pod: pod(port_pod("p", 8080, "UDP", "")),
                node: node_with(json!({}), std::slice::from_ref(&used)),
                want: ok(),
            },
            Case {
                name: "other port",
                pod: pod(port_pod("p", 8081, "TCP", "")),
                node: node_with(json!({}), std::slice::from_ref(&used)),
                want: ok(),
            },
            Case {
                name: "specific ip vs wildcard",
                pod: pod(port_pod("p", 8080, "TCP", "10.0.0.1")),
                node: node_with(json!({}), &[used]),
                want: unschedulable(ERR_REASON),
            },
            Case {
                name: "different specific ips",
                pod: pod(port_pod("p", 8080, "TCP", "10.0.0.1")),
                node: node_with(json!({}), &[pod(port_pod("u", 8080, "TCP", "10.0.0.2"))]),
                want: ok(),
            },
        ];
        run_filter_cases(&NodePorts, &cases);
    }
}
