//! Node IPAM: gives every node a `spec.podCIDR` (and `podCIDRs`) from the
//! cluster CIDR (`--cluster-cidr`, default 10.42.0.0/16), one /24 per node
//! by default, never the same range twice. The allocation is recomputed
//! from the nodes themselves, so it survives restarts and leader changes.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::{ControllerConfig, Error};

/// An IPv4 range split into equal subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
    pub node_prefix: u8,
}

impl Default for ClusterCidr {
    fn default() -> Self {
        ClusterCidr {
            base: Ipv4Addr::new(10, 42, 0, 0),
            prefix: 16,
            node_prefix: 24,
        }
    }
}

impl ClusterCidr {
    /// Parses `a.b.c.d/p`, with the per-node prefix given separately.
    pub fn parse(cidr: &str, node_prefix: u8) -> Option<ClusterCidr> {
        let (ip, prefix) = cidr.split_once('/')?;
        let base: Ipv4Addr = ip.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        if prefix > node_prefix || node_prefix > 30 {
            return None;
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Some(ClusterCidr {
            base: Ipv4Addr::from(u32::from(base) & mask),
            prefix,
            node_prefix,
        })
    }

    pub fn subnets(&self) -> u32 {
        1u32 << (self.node_prefix - self.prefix)
    }

    pub fn subnet(&self, i: u32) -> String {
        let ip = u32::from(self.base) + (i << (32 - self.node_prefix));
        format!("{}/{}", Ipv4Addr::from(ip), self.node_prefix)
    }

    fn index_of(&self, cidr: &str) -> Option<u32> {
        let (ip, prefix) = cidr.split_once('/')?;
        if prefix.parse::<u8>().ok()? != self.node_prefix {
            return None;
        }
        let ip = u32::from(ip.parse::<Ipv4Addr>().ok()?);
        let offset = ip.checked_sub(u32::from(self.base))?;
        let i = offset >> (32 - self.node_prefix);
        (i < self.subnets()).then_some(i)
    }
}

/// The pure decision: a podCIDR for each node that has none, avoiding the
/// ranges already in use. Nodes are served in name order.
pub fn plan(cidr: &ClusterCidr, nodes: &[Node]) -> Vec<(String, String)> {
    let used: BTreeSet<u32> = nodes
        .iter()
        .filter_map(|n| n.spec.as_ref()?.pod_cidr.as_deref())
        .filter_map(|c| cidr.index_of(c))
        .collect();
    let mut names: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_none())
        .collect();
    names.sort_by_key(|n| n.name_any());
    let mut free = (0..cidr.subnets()).filter(|i| !used.contains(i));
    names
        .into_iter()
        .filter_map(|n| free.next().map(|i| (n.name_any(), cidr.subnet(i))))
        .collect()
}

async fn sweep(client: &kube::Client, cidr: &ClusterCidr) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    let nodes = api.list(&ListParams::default()).await?.items;
    let unassigned = nodes
        .iter()
        .filter(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_none())
        .count();
    let plan = plan(cidr, &nodes);
    if plan.len() < unassigned {
        tracing::warn!(cluster_cidr = ?cidr, "cluster CIDR exhausted: some nodes get no pod CIDR");
    }
    for (node, range) in plan {
        let patch = json!({"spec": {"podCIDR": range, "podCIDRs": [range]}});
        api.patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::info!(%node, %range, "assigned pod CIDR");
    }
    Ok(())
}

/// Runs the allocator forever (a sweep every second: node joins are rare).
pub async fn run(client: kube::Client, config: ControllerConfig) {
    loop {
        if let Err(e) = sweep(&client, &config.cluster_cidr).await {
            tracing::warn!(error = %e, "node ipam sweep failed");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, cidr: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(str::to_string),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn new_nodes_get_the_lowest_free_ranges() {
        let cidr = ClusterCidr::default();
        let nodes = [
            node("c", None),
            node("a", Some("10.42.0.0/24")),
            node("b", None),
            node("d", Some("10.42.2.0/24")),
        ];
        assert_eq!(
            plan(&cidr, &nodes),
            vec![
                ("b".into(), "10.42.1.0/24".into()),
                ("c".into(), "10.42.3.0/24".into())
            ]
        );
    }

    #[test]
    fn cluster_cidr_parses_and_exhausts() {
        let small = ClusterCidr::parse("10.99.7.9/23", 24).unwrap();
        assert_eq!(small.subnet(0), "10.99.6.0/24");
        assert_eq!(small.subnets(), 2);
        let nodes = [node("a", None), node("b", None), node("c", None)];
        assert_eq!(plan(&small, &nodes).len(), 2, "only two /24s fit in a /23");
        assert!(ClusterCidr::parse("10.0.0.0/24", 16).is_none());
        assert!(ClusterCidr::parse("nonsense", 24).is_none());
    }
}
