//! Routes between nodes' pod CIDRs (issue "Services and cluster
//! networking"): every Node with an `InternalIP` and a `spec.podCIDR` other
//! than this one is reached by host-gw routes or a VXLAN overlay
//! (`skiff-network`'s [`Routes`]), kept in step with the Node objects as
//! nodes come, change and go.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::watcher;
use skiff_network::{Backend, RemoteNode, Routes, RoutesConfig, VxlanConfig};

/// How pods on different nodes reach each other (k3s's `--flannel-backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlay {
    Vxlan,
    HostGw,
    /// No routes between nodes (one-node clusters, or another network).
    None,
}

impl std::str::FromStr for Overlay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vxlan" => Ok(Overlay::Vxlan),
            "host-gw" => Ok(Overlay::HostGw),
            "none" => Ok(Overlay::None),
            other => Err(format!("unknown backend {other:?}: vxlan, host-gw or none")),
        }
    }
}

/// A node as routing needs it: (InternalIP, podCIDR).
fn route_target(node: &Node) -> Option<(Ipv4Addr, Ipv4Net)> {
    let ip = node
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse::<Ipv4Addr>()
        .ok()?;
    let cidr = node
        .spec
        .as_ref()?
        .pod_cidr
        .as_ref()?
        .parse::<Ipv4Net>()
        .ok()?;
    Some((ip, cidr))
}

/// The other nodes to route to, from what the watch has seen.
pub fn remotes(nodes: &BTreeMap<String, Node>, me: &str) -> Vec<RemoteNode> {
    nodes
        .iter()
        .filter(|(name, _)| name.as_str() != me)
        .filter_map(|(name, node)| {
            route_target(node).map(|(ip, pod_cidr)| RemoteNode {
                name: name.clone(),
                ip,
                pod_cidr,
            })
        })
        .collect()
}

/// Watches Nodes and keeps this node's routes to the others; runs until
/// the task is dropped. Waits for this node's own pod CIDR first.
pub async fn run(client: kube::Client, node_name: String, node_ip: IpAddr, overlay: Overlay) {
    if overlay == Overlay::None {
        return;
    }
    let IpAddr::V4(node_ip) = node_ip else {
        tracing::warn!(%node_ip, "pod routes need an IPv4 node address; none set up");
        return;
    };
    let api: Api<Node> = Api::all(client);
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut routes: Option<Routes> = None;
    let mut applied: Option<Vec<RemoteNode>> = None;
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    let mut init: BTreeMap<String, Node> = BTreeMap::new();
    loop {
        let event = match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(Ok(e))) => Some(e),
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "node watch for routes");
                tokio::time::sleep(Duration::from_secs(1)).await;
                None
            }
            Ok(None) => return,
            // A periodic pass re-applies the routes (repairs drift).
            Err(_) => {
                applied = None;
                None
            }
        };
        match event {
            Some(watcher::Event::Init) => init.clear(),
            Some(watcher::Event::InitApply(n)) => {
                init.insert(n.metadata.name.clone().unwrap_or_default(), n);
                continue;
            }
            Some(watcher::Event::InitDone) => nodes = std::mem::take(&mut init),
            Some(watcher::Event::Apply(n)) => {
                nodes.insert(n.metadata.name.clone().unwrap_or_default(), n);
            }
            Some(watcher::Event::Delete(n)) => {
                nodes.remove(n.metadata.name.as_deref().unwrap_or_default());
            }
            None => {}
        }
        if routes.is_none() {
            let Some(pod_cidr) = nodes.get(&node_name).and_then(route_target).map(|(_, c)| c)
            else {
                continue;
            };
            let backend = match overlay {
                Overlay::Vxlan => Backend::Vxlan(VxlanConfig::default()),
                Overlay::HostGw | Overlay::None => Backend::HostGw,
            };
            match Routes::new(RoutesConfig {
                node_name: node_name.clone(),
                node_ip,
                pod_cidr,
                backend,
                host_netns: None,
            }) {
                Ok(r) => routes = Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "pod routes between nodes cannot be set up");
                    return;
                }
            }
        }
        let want = remotes(&nodes, &node_name);
        if applied.as_ref() == Some(&want) {
            continue;
        }
        if let Some(r) = &routes {
            match r.sync(&want).await {
                Ok(()) => {
                    tracing::info!(
                        nodes = want.len(),
                        ?overlay,
                        "pod routes to other nodes in step"
                    );
                    applied = Some(want);
                }
                Err(e) => tracing::warn!(error = %e, "syncing pod routes; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, cidr: Option<&str>) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
        }))
        .unwrap()
    }

    #[test]
    fn routes_go_to_every_other_node_with_an_address_and_a_pod_cidr() {
        let nodes: BTreeMap<String, Node> = [
            node("a", "10.0.0.1", Some("10.42.0.0/24")),
            node("b", "10.0.0.2", Some("10.42.1.0/24")),
            node("c", "10.0.0.3", None),
        ]
        .into_iter()
        .map(|n| (n.metadata.name.clone().unwrap(), n))
        .collect();
        let r = remotes(&nodes, "a");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].name, "b");
        assert_eq!(r[0].ip, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!("vxlan".parse::<Overlay>(), Ok(Overlay::Vxlan));
        assert!("flannel".parse::<Overlay>().is_err());
    }
}
