//! What NetworkPolicy enforcement keeps of Pods, Namespaces and
//! NetworkPolicies: plain data, read from the API objects without IO.
//! IPv4 only, like the rest of skiff's networking: IPv6 pod addresses and
//! `ipBlock`s are left out here (a rule whose only peers are left out
//! allows nothing, never everything).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Transport protocol of a policy port or container port, as nftables
/// names it (the service proxy's).
pub use skiff_proxy::model::Protocol;

/// A named container port of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A pod that policies can select or be about: it has an IPv4 address of
/// its own (not the host's) and has not terminated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    pub node: String,
    pub ports: Vec<NamedPort>,
}

impl PodInfo {
    /// `None` for pods traffic cannot be told apart by (host network, no
    /// IPv4 address yet) and for terminated pods, whose address may
    /// already belong to another pod.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let spec = pod.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let status = pod.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let ip = status.pod_ip.as_deref()?.parse::<Ipv4Addr>().ok()?;
        let ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone()?,
                    protocol: Protocol::parse(p.protocol.as_deref())?,
                    port: u16::try_from(p.container_port).ok()?,
                })
            })
            .collect();
        Some(Self {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ip,
            node: spec.node_name.clone().unwrap_or_default(),
            ports,
        })
    }

    /// The pod's container port named `name` for `protocol`.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// The label skiff's cluster DNS sets on its EndpointSlice
/// (`endpointslice.kubernetes.io/managed-by`).
pub const DNS_MANAGED_BY: &str = "skiff-dns";

/// Where the cluster DNS's EndpointSlice lives.
pub const DNS_NAMESPACE: &str = "kube-system";

/// The labels upstream's cluster DNS pods carry (CoreDNS's).
pub const DNS_POD_LABELS: [(&str, &str); 1] = [("k8s-app", "kube-dns")];

/// The cluster DNS's addresses read as the pods it would run in upstream.
/// skiff serves DNS from its servers' host network, so a policy allowing
/// egress to the DNS pods (`k8s-app: kube-dns` in `kube-system`, the usual
/// rule) would otherwise select nothing, and pods on other nodes could
/// not resolve names. Each IPv4 address of the DNS's EndpointSlice becomes
/// a pod of the slice's namespace with [`DNS_POD_LABELS`] and the slice's
/// named ports, on no node (so never isolated itself).
pub fn dns_pods(slice: &EndpointSlice) -> Option<Vec<PodInfo>> {
    if slice.address_type != "IPv4" {
        return None;
    }
    let namespace = slice.metadata.namespace.clone().unwrap_or_default();
    let ports: Vec<NamedPort> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone()?,
                protocol: Protocol::parse(p.protocol.as_deref())?,
                port: u16::try_from(p.port?).ok()?,
            })
        })
        .collect();
    let labels: BTreeMap<String, String> = DNS_POD_LABELS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let pods = slice
        .endpoints
        .iter()
        .flat_map(|e| &e.addresses)
        .filter_map(|a| a.parse::<Ipv4Addr>().ok())
        .map(|ip| PodInfo {
            namespace: namespace.clone(),
            name: format!("cluster-dns@{ip}"),
            labels: labels.clone(),
            ip,
            node: String::new(),
            ports: ports.clone(),
        })
        .collect();
    Some(pods)
}

/// A namespace's labels, for namespace selectors.
pub fn namespace_labels(ns: &Namespace) -> BTreeMap<String, String> {
    ns.metadata.labels.clone().unwrap_or_default()
}

/// The port of a policy port: a number, or a container port's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    /// `port` through `end_port` (the same when no range).
    Range(u16, u16),
    Named(String),
}

/// One entry of a rule's `ports`: a protocol and optionally a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub protocol: Protocol,
    /// `None`: every port of the protocol.
    pub port: Option<PortRef>,
}

impl PortSpec {
    /// `None` for a protocol nftables cannot match or a port out of range:
    /// such an entry allows nothing.
    fn from_api(p: &NetworkPolicyPort) -> Option<Self> {
        let protocol = Protocol::parse(p.protocol.as_deref())?;
        let port = match &p.port {
            None => None,
            Some(IntOrString::Int(n)) => {
                let start = u16::try_from(*n).ok().filter(|n| *n > 0)?;
                let end = match p.end_port {
                    Some(end) => u16::try_from(end).ok().filter(|e| *e >= start)?,
                    None => start,
                };
                Some(PortRef::Range(start, end))
            }
            Some(IntOrString::String(name)) => Some(PortRef::Named(name.clone())),
        };
        Some(Self { protocol, port })
    }
}

/// Which namespaces a pod peer's pods are in.
#[derive(Debug, Clone, PartialEq)]
pub enum Namespaces {
    /// The policy's own namespace (no `namespaceSelector`).
    Own(String),
    /// Namespaces whose labels match.
    Matching(LabelSelector),
}

/// One entry of a rule's `from` / `to`.
#[derive(Debug, Clone, PartialEq)]
pub enum Peer {
    /// Pods matching `pods` (every pod when `None`) in `namespaces`.
    Pods {
        namespaces: Namespaces,
        pods: Option<LabelSelector>,
    },
    /// Addresses in `cidr` but not in any of `except`.
    Block { cidr: Ipv4Net, except: Vec<Ipv4Net> },
}

impl Peer {
    /// `None` for an IPv6 or unparsable block, or a peer with no selector
    /// at all (the API rejects those).
    fn from_api(namespace: &str, p: &NetworkPolicyPeer) -> Option<Self> {
        if let Some(block) = &p.ip_block {
            let cidr = block.cidr.parse::<Ipv4Net>().ok()?.trunc();
            let except = block
                .except
                .iter()
                .flatten()
                .filter_map(|e| e.parse::<Ipv4Net>().ok().map(|n| n.trunc()))
                .collect();
            return Some(Self::Block { cidr, except });
        }
        let namespaces = match &p.namespace_selector {
            Some(sel) => Namespaces::Matching(sel.clone()),
            None if p.pod_selector.is_some() => Namespaces::Own(namespace.to_string()),
            None => return None,
        };
        Some(Self::Pods {
            namespaces,
            pods: p.pod_selector.clone(),
        })
    }
}

/// One ingress or egress rule: traffic matching one of the peers and one of
/// the ports is allowed.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// `None`: any peer (the rule had no `from`/`to`).
    pub peers: Option<Vec<Peer>>,
    /// `None`: any port and protocol (the rule had no `ports`).
    pub ports: Option<Vec<PortSpec>>,
}

impl Rule {
    fn from_api(
        namespace: &str,
        peers: Option<&Vec<NetworkPolicyPeer>>,
        ports: Option<&Vec<NetworkPolicyPort>>,
    ) -> Self {
        Self {
            peers: peers.filter(|p| !p.is_empty()).map(|p| {
                p.iter()
                    .filter_map(|p| Peer::from_api(namespace, p))
                    .collect()
            }),
            ports: ports
                .filter(|p| !p.is_empty())
                .map(|p| p.iter().filter_map(PortSpec::from_api).collect()),
        }
    }
}

/// A NetworkPolicy: which pods of its namespace it selects, and for each
/// direction it isolates (its `policyTypes`), the rules that allow traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: LabelSelector,
    /// `Some` when the policy isolates the pods for ingress.
    pub ingress: Option<Vec<Rule>>,
    /// `Some` when the policy isolates the pods for egress.
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    /// `policyTypes` defaults as the API does: Ingress always, Egress when
    /// the policy has egress rules.
    pub fn from_api(np: &NetworkPolicy) -> Self {
        let namespace = np.metadata.namespace.clone().unwrap_or_default();
        let spec = np.spec.clone().unwrap_or_default();
        let types: Vec<String> = match &spec.policy_types {
            Some(types) => types.clone(),
            None => {
                let mut t = vec!["Ingress".to_string()];
                if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                    t.push("Egress".to_string());
                }
                t
            }
        };
        let ingress = types.iter().any(|t| t == "Ingress").then(|| {
            spec.ingress
                .iter()
                .flatten()
                .map(|r| Rule::from_api(&namespace, r.from.as_ref(), r.ports.as_ref()))
                .collect()
        });
        let egress = types.iter().any(|t| t == "Egress").then(|| {
            spec.egress
                .iter()
                .flatten()
                .map(|r| Rule::from_api(&namespace, r.to.as_ref(), r.ports.as_ref()))
                .collect()
        });
        Self {
            name: np.metadata.name.clone().unwrap_or_default(),
            pod_selector: spec.pod_selector.clone().unwrap_or_default(),
            namespace,
            ingress,
            egress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(spec: serde_json::Value) -> Policy {
        let np: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "demo"},
            "spec": spec,
        }))
        .expect("policy");
        Policy::from_api(&np)
    }

    #[test]
    fn policy_types_default_to_ingress_and_to_egress_when_there_are_egress_rules() {
        let p = policy(json!({"podSelector": {}}));
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(p.egress, None);

        let p = policy(json!({"podSelector": {}, "egress": [{}]}));
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(
            p.egress,
            Some(vec![Rule {
                peers: None,
                ports: None
            }])
        );

        let p = policy(json!({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}));
        assert_eq!(p.ingress, None);
        assert_eq!(p.egress, Some(vec![]));
    }

    #[test]
    fn peers_read_as_the_api_defines_them() {
        let p = policy(json!({"podSelector": {}, "ingress": [{"from": [
            {"podSelector": {"matchLabels": {"app": "a"}}},
            {"namespaceSelector": {"matchLabels": {"team": "x"}}},
            {"ipBlock": {"cidr": "10.0.0.7/8", "except": ["10.1.0.0/16"]}},
            {"ipBlock": {"cidr": "fd00::/8"}},
        ]}]}));
        let rules = p.ingress.expect("ingress");
        let peers = rules[0].peers.clone().expect("peers");
        assert_eq!(peers.len(), 3, "the IPv6 block is left out: {peers:?}");
        assert!(
            matches!(&peers[0], Peer::Pods { namespaces: Namespaces::Own(ns), pods: Some(_) } if ns == "demo")
        );
        assert!(matches!(
            &peers[1],
            Peer::Pods {
                namespaces: Namespaces::Matching(_),
                pods: None
            }
        ));
        assert_eq!(
            peers[2],
            Peer::Block {
                cidr: "10.0.0.0/8".parse().expect("net"),
                except: vec!["10.1.0.0/16".parse().expect("net")],
            }
        );
    }

    #[test]
    fn a_rule_whose_only_peer_is_left_out_allows_no_peer_rather_than_all() {
        let p = policy(json!({"podSelector": {}, "ingress": [
            {"from": [{"ipBlock": {"cidr": "fd00::/8"}}]},
            {"from": []},
        ]}));
        let rules = p.ingress.expect("ingress");
        assert_eq!(rules[0].peers, Some(vec![]));
        assert_eq!(rules[1].peers, None, "an empty `from` is any peer");
    }

    #[test]
    fn ports_read_numbers_ranges_names_and_protocols() {
        let p = policy(json!({"podSelector": {}, "ingress": [{"ports": [
            {"port": 80},
            {"protocol": "UDP", "port": 53, "endPort": 60},
            {"port": "http"},
            {"protocol": "SCTP"},
            {"protocol": "ICMP"},
        ]}]}));
        let ports = p.ingress.expect("ingress")[0].ports.clone().expect("ports");
        assert_eq!(
            ports,
            vec![
                PortSpec {
                    protocol: Protocol::Tcp,
                    port: Some(PortRef::Range(80, 80))
                },
                PortSpec {
                    protocol: Protocol::Udp,
                    port: Some(PortRef::Range(53, 60))
                },
                PortSpec {
                    protocol: Protocol::Tcp,
                    port: Some(PortRef::Named("http".into()))
                },
                PortSpec {
                    protocol: Protocol::Sctp,
                    port: None
                },
            ]
        );
    }

    #[test]
    fn the_cluster_dns_slice_reads_as_dns_pods_on_no_node() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "kube-dns", "namespace": "kube-system"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.99.0.1"]}, {"addresses": ["junk"]}],
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                      {"name": "dns-tcp", "port": 53, "protocol": "TCP"}],
        }))
        .expect("slice");
        let pods = dns_pods(&slice).expect("ipv4");
        assert_eq!(pods.len(), 1);
        let dns = &pods[0];
        assert_eq!(dns.namespace, "kube-system");
        assert_eq!(dns.ip, Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(
            dns.labels.get("k8s-app").map(String::as_str),
            Some("kube-dns")
        );
        assert_eq!(dns.node, "");
        assert_eq!(dns.named_port("dns-tcp", Protocol::Tcp), Some(53));
        let mut v6 = slice.clone();
        v6.address_type = "IPv6".into();
        assert_eq!(dns_pods(&v6), None);
    }

    #[test]
    fn only_running_pods_with_their_own_ipv4_address_count() {
        let pod = |extra: serde_json::Value| -> Option<PodInfo> {
            let mut v = json!({
                "metadata": {"name": "web", "namespace": "demo", "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
                    {"name": "http", "containerPort": 8080},
                    {"containerPort": 9090},
                ]}]},
                "status": {"phase": "Running", "podIP": "10.42.0.5"},
            });
            if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                for (k, val) in e {
                    m.insert(k.clone(), val.clone());
                }
            }
            PodInfo::from_pod(&serde_json::from_value(v).expect("pod"))
        };
        let web = pod(json!({})).expect("a running pod");
        assert_eq!(web.ip, Ipv4Addr::new(10, 42, 0, 5));
        assert_eq!(web.named_port("http", Protocol::Tcp), Some(8080));
        assert_eq!(web.named_port("http", Protocol::Udp), None);
        assert_eq!(web.ports.len(), 1, "unnamed ports are not kept");
        assert!(pod(json!({"status": {"phase": "Succeeded", "podIP": "10.42.0.5"}})).is_none());
        assert!(pod(json!({"status": {"phase": "Pending"}})).is_none());
        assert!(pod(json!({"status": {"phase": "Running", "podIP": "fd00::5"}})).is_none());
        assert!(
            pod(json!({"spec": {"hostNetwork": true, "containers": []}})).is_none(),
            "host-network pods share the node's address"
        );
    }
}
