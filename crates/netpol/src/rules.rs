//! The pure heart of NetworkPolicy enforcement: the whole `ip skiff-netpol`
//! table for one node (`table = f(pods, namespaces, policies, node)`),
//! rendered as an `nft -f` script. No IO here.
//!
//! The node enforces policies for its own pods, in both directions, in the
//! `forward` hook, so it sees pod-to-pod traffic on the node's bridge
//! (with `bridge-nf-call-iptables`) and traffic routed to and from other
//! nodes, after the service proxy's DNAT (policies are about pods, not
//! service addresses):
//!
//! ```text
//! chain forward   (filter hook forward, policy accept)
//!     ct state established,related accept      replies of allowed traffic
//!     ip saddr vmap @egress-pods               egress-isolated local pods
//!     ip daddr vmap @ingress-pods              ingress-isolated local pods
//! chain in/<ns>/<pod>                          one per isolated pod
//!     ip saddr <pod ip> return                 a pod may always reach itself
//!     <peer> <port> return                     one line per allowed peer x port
//!     drop
//! chain out/<ns>/<pod>                         the same, for egress
//! ```
//!
//! `return` hands the packet back to `forward`, so a connection between two
//! isolated pods must be allowed by the source's egress and by the
//! destination's ingress, as Kubernetes defines it. Traffic between a pod
//! and its own node never passes `forward` (the node's `input`/`output`),
//! which makes it always allowed, again as Kubernetes requires. A node with
//! no isolated pod has no table at all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use skiff_client::selectors::label_selector_matches;

use crate::model::{Namespaces, Peer, PodInfo, Policy, PortRef, PortSpec, Protocol, Rule};

/// Family of the table.
pub const FAMILY: &str = "ip";
/// Name of the table: the only kernel object NetworkPolicy enforcement
/// writes.
pub const TABLE: &str = "skiff-netpol";
/// Verdict map from an ingress-isolated local pod's address to its chain.
pub const INGRESS_PODS: &str = "ingress-pods";
/// Verdict map from an egress-isolated local pod's address to its chain.
pub const EGRESS_PODS: &str = "egress-pods";

/// Longest chain name nftables takes (`NFT_CHAIN_MAXNAMELEN` less the NUL).
const MAX_CHAIN_NAME: usize = 255;

/// Everything the table depends on, keyed by (namespace, name).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub pods: BTreeMap<(String, String), PodInfo>,
    /// Addresses that policies select as if they were pods, though they
    /// are not (the cluster DNS, see [`crate::model::dns_pods`]), keyed by
    /// the object they come from.
    pub host_pods: BTreeMap<(String, String), Vec<PodInfo>>,
    /// Namespace name to its labels.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub policies: BTreeMap<(String, String), Policy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The packet field that holds the peer's address.
    fn peer_field(self) -> &'static str {
        match self {
            Self::Ingress => "ip saddr",
            Self::Egress => "ip daddr",
        }
    }

    fn chain_prefix(self) -> &'static str {
        match self {
            Self::Ingress => "in",
            Self::Egress => "out",
        }
    }
}

/// What the table for `node` amounts to: per direction, each isolated
/// local pod's chain name, address and allow lines.
#[derive(Debug, Default, PartialEq)]
pub struct Table {
    pub chains: Vec<Chain>,
}

/// One isolated pod's chain in one direction.
#[derive(Debug, PartialEq)]
pub struct Chain {
    pub name: String,
    pub ingress: bool,
    pub pod_ip: Ipv4Addr,
    /// The `return` lines, without the final `drop`.
    pub allow: Vec<String>,
}

impl Table {
    /// The table for the pods of `node`.
    pub fn build(state: &State, node: &str) -> Self {
        let mut chains = Vec::new();
        let mut seen_ips = [BTreeSet::new(), BTreeSet::new()];
        for pod in state.pods.values().filter(|p| p.node == node) {
            let policies: Vec<&Policy> = state
                .policies
                .values()
                .filter(|p| {
                    p.namespace == pod.namespace
                        && label_selector_matches(Some(&p.pod_selector), &pod.labels)
                })
                .collect();
            for (i, dir) in [Direction::Ingress, Direction::Egress]
                .into_iter()
                .enumerate()
            {
                let rules: Vec<&Rule> = policies
                    .iter()
                    .filter_map(|p| match dir {
                        Direction::Ingress => p.ingress.as_ref(),
                        Direction::Egress => p.egress.as_ref(),
                    })
                    .flatten()
                    .collect();
                let isolated = policies.iter().any(|p| match dir {
                    Direction::Ingress => p.ingress.is_some(),
                    Direction::Egress => p.egress.is_some(),
                });
                // Two local pods on one address: one is a leftover whose
                // deletion has not arrived yet; the first one wins.
                if !isolated || !seen_ips[i].insert(pod.ip) {
                    continue;
                }
                let mut allow = Vec::new();
                if dir == Direction::Ingress {
                    allow.push(format!("ip saddr {} return", pod.ip));
                }
                for rule in rules {
                    render_rule(state, pod, rule, dir, &mut allow);
                }
                let mut seen = BTreeSet::new();
                allow.retain(|line| seen.insert(line.clone()));
                chains.push(Chain {
                    name: chain_name(dir, pod, chains.len()),
                    ingress: dir == Direction::Ingress,
                    pod_ip: pod.ip,
                    allow,
                });
            }
        }
        Self { chains }
    }

    /// The `nft -f` script that replaces the table with this one (or
    /// removes it when no pod is isolated) in one transaction.
    pub fn script(&self) -> String {
        let mut s = format!("add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n");
        if self.chains.is_empty() {
            return s;
        }
        let _ = writeln!(s, "table {FAMILY} {TABLE} {{");
        for (map, ingress) in [(INGRESS_PODS, true), (EGRESS_PODS, false)] {
            let _ = writeln!(s, "\tmap {map} {{\n\t\ttype ipv4_addr : verdict");
            let elements: Vec<String> = self
                .chains
                .iter()
                .filter(|c| c.ingress == ingress)
                .map(|c| format!("{} : jump {}", c.pod_ip, c.name))
                .collect();
            if !elements.is_empty() {
                let _ = writeln!(s, "\t\telements = {{ {} }}", elements.join(", "));
            }
            let _ = writeln!(s, "\t}}");
        }
        let _ = writeln!(
            s,
            "\tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tct state established,related accept\n\
             \t\tip saddr vmap @{EGRESS_PODS}\n\
             \t\tip daddr vmap @{INGRESS_PODS}\n\
             \t}}"
        );
        for chain in &self.chains {
            let _ = writeln!(s, "\tchain {} {{", chain.name);
            for line in &chain.allow {
                let _ = writeln!(s, "\t\t{line}");
            }
            let _ = writeln!(s, "\t\tdrop\n\t}}");
        }
        let _ = writeln!(s, "}}");
        s
    }
}

/// `in/<ns>/<pod>` or `out/<ns>/<pod>`; an index instead when that would
/// be too long for nftables.
fn chain_name(dir: Direction, pod: &PodInfo, index: usize) -> String {
    let name = format!("{}/{}/{}", dir.chain_prefix(), pod.namespace, pod.name);
    if name.len() <= MAX_CHAIN_NAME {
        name
    } else {
        format!("{}/#{index}", dir.chain_prefix())
    }
}

/// A resolved peer of a rule.
enum PeerMatch<'a> {
    Any,
    Pods(Vec<&'a PodInfo>),
    Block {
        cidr: &'a Ipv4Net,
        except: &'a [Ipv4Net],
    },
}

/// The pods a pod peer selects.
fn selected_pods<'a>(state: &'a State, peer: &Peer) -> Vec<&'a PodInfo> {
    let Peer::Pods { namespaces, pods } = peer else {
        return Vec::new();
    };
    state
        .pods
        .values()
        .chain(state.host_pods.values().flatten())
        .filter(|p| match namespaces {
            Namespaces::Own(ns) => &p.namespace == ns,
            Namespaces::Matching(sel) => state
                .namespaces
                .get(&p.namespace)
                .is_some_and(|labels| label_selector_matches(Some(sel), labels)),
        })
        .filter(|p| {
            pods.as_ref()
                .is_none_or(|sel| label_selector_matches(Some(sel), &p.labels))
        })
        .collect()
}

fn in_block(ip: Ipv4Addr, cidr: &Ipv4Net, except: &[Ipv4Net]) -> bool {
    cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
}

/// `<field> { a, b }` for a non-empty list of addresses.
fn address_set(field: &str, ips: impl IntoIterator<Item = Ipv4Addr>) -> Option<String> {
    let ips: BTreeSet<Ipv4Addr> = ips.into_iter().collect();
    if ips.is_empty() {
        return None;
    }
    let list: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
    Some(format!("{field} {{ {} }}", list.join(", ")))
}

fn protocol_match(protocol: Protocol) -> String {
    format!("meta l4proto {}", protocol.as_str())
}

/// The allow lines of one rule for `pod`'s chain in direction `dir`.
fn render_rule(state: &State, pod: &PodInfo, rule: &Rule, dir: Direction, out: &mut Vec<String>) {
    let field = dir.peer_field();
    let peers: Vec<PeerMatch> = match &rule.peers {
        None => vec![PeerMatch::Any],
        Some(peers) => peers
            .iter()
            .map(|peer| match peer {
                Peer::Pods { .. } => PeerMatch::Pods(selected_pods(state, peer)),
                Peer::Block { cidr, except } => PeerMatch::Block { cidr, except },
            })
            .collect(),
    };
    let any_port = [None];
    let ports: Vec<Option<&PortSpec>> = match &rule.ports {
        None => any_port.to_vec(),
        Some(ports) => ports.iter().map(Some).collect(),
    };
    for peer in &peers {
        let peer_expr = match peer {
            PeerMatch::Any => Some(String::new()),
            PeerMatch::Pods(pods) => address_set(field, pods.iter().map(|p| p.ip)),
            PeerMatch::Block { cidr, except } => {
                let mut e = format!("{field} {cidr}");
                if let Some(except) = (!except.is_empty()).then(|| {
                    let list: Vec<String> = except.iter().map(ToString::to_string).collect();
                    list.join(", ")
                }) {
                    let _ = write!(e, " {field} != {{ {except} }}");
                }
                Some(e)
            }
        };
        // A peer that selects no pod allows nothing.
        let Some(peer_expr) = peer_expr else { continue };
        for port in &ports {
            let Some(spec) = port else {
                out.push(join(&[&peer_expr, "return"]));
                continue;
            };
            let proto = protocol_match(spec.protocol);
            match &spec.port {
                None => out.push(join(&[&peer_expr, &proto, "return"])),
                Some(PortRef::Range(start, end)) => {
                    let dport = if start == end {
                        format!("th dport {start}")
                    } else {
                        format!("th dport {start}-{end}")
                    };
                    out.push(join(&[&peer_expr, &proto, &dport, "return"]));
                }
                // Ingress: the port of that name on the isolated pod itself.
                Some(PortRef::Named(name)) if dir == Direction::Ingress => {
                    if let Some(port) = pod.named_port(name, spec.protocol) {
                        let dport = format!("th dport {port}");
                        out.push(join(&[&peer_expr, &proto, &dport, "return"]));
                    }
                }
                // Egress: the port of that name on each destination pod,
                // which differs from pod to pod.
                Some(PortRef::Named(name)) => {
                    let destinations: Vec<&PodInfo> = match peer {
                        PeerMatch::Any => state.pods.values().collect(),
                        PeerMatch::Pods(pods) => pods.clone(),
                        PeerMatch::Block { cidr, except } => state
                            .pods
                            .values()
                            .filter(|p| in_block(p.ip, cidr, except))
                            .collect(),
                    };
                    let mut by_port: BTreeMap<u16, Vec<Ipv4Addr>> = BTreeMap::new();
                    for dest in destinations {
                        if let Some(port) = dest.named_port(name, spec.protocol) {
                            by_port.entry(port).or_default().push(dest.ip);
                        }
                    }
                    for (port, ips) in by_port {
                        if let Some(set) = address_set(field, ips) {
                            let dport = format!("th dport {port}");
                            out.push(join(&[&set, &proto, &dport, "return"]));
                        }
                    }
                }
            }
        }
    }
}

/// The non-empty parts, space-separated.
fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
