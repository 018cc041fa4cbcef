//! The pure heart of the proxy: the nftables objects a service needs
//! (`desired = f(service, its endpoint slices, node, config)`), and the
//! `nft -f` script that takes the kernel from what was last written to what
//! is desired. No IO here.
//!
//! The table (`ip skiff-proxy`, IPv4 only) follows kube-proxy's nftables
//! mode:
//!
//! - `nat-prerouting` / `nat-output` jump to `services`, which looks the
//!   packet up in the `service-ips` verdict map (`ip daddr . meta l4proto .
//!   th dport`) and, for the node's addresses, in `service-nodeports`
//!   (`meta l4proto . th dport`).
//! - Per service port, `service-<ns>/<name>/<proto>/<port>` picks one of
//!   the ready endpoints at random (a cascade of `numgen random mod N-i`
//!   rules, see [`pick_at_random`]; no anonymous maps), after the
//!   client-IP affinity sets when `sessionAffinity: ClientIP`;
//!   `local-…` is the same over this node's endpoints only (Local traffic
//!   policies); `external-…` is where node-port traffic enters (marks it for
//!   masquerade, then goes to `service-…` or `local-…`). A LoadBalancer
//!   service's ingress addresses and any service's `externalIPs` are keys
//!   of `service-ips` too (with the service's port) and lead to
//!   `external-…`, as in kube-proxy. With `externalTrafficPolicy: Local`,
//!   external traffic from pods or from the node itself may use any
//!   endpoint; other clients are dropped when this node has none.
//! - The rule that picks an endpoint DNATs to it in place: there is no chain
//!   per endpoint (kube-proxy has one), because `nft` 1.0.6 lists every
//!   chain of the table before each transaction that adds a rule or an
//!   element, and at 10,000 services x 10 endpoints the 100,000 endpoint
//!   chains made each one-endpoint change cost over a second
//!   (docs/benchmarks.md).
//! - Hairpin traffic (an endpoint reaching itself through its service)
//!   must be masqueraded or the endpoint answers itself directly and the
//!   connection fails. kube-proxy marks it in the endpoint chain (`ip saddr
//!   <ep>`); here `hairpin-endpoints` holds `ip . ip` for every endpoint
//!   address in use and `masquerading` marks `ip saddr . ip daddr` found in
//!   it, after DNAT. An address shared by several services is one element,
//!   counted by [`HairpinRefs`].
//! - `nat-postrouting` masquerades marked packets (mark `0x4000`).
//! - Filter chains before DNAT reject new connections to services with no
//!   ready endpoints (`no-endpoint-services`, `no-endpoint-nodeports`), so
//!   clients are refused at once instead of timing out;
//!   `internalTrafficPolicy: Local` with no local endpoint drops instead, as
//!   in Kubernetes (the external policy drops in `external-…`). After
//!   DNAT, traffic still addressed to a cluster IP (an unknown port) or to
//!   an unallocated address of the service CIDR is rejected as well
//!   (kube-proxy drops the latter; refusing makes a deleted service fail
//!   fast).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::model::{EndpointInfo, ServiceInfo, ServiceName, ServicePortInfo, SliceInfo};

/// Family of the proxy's table.
pub const FAMILY: &str = "ip";
/// Name of the proxy's table: the only kernel object it writes.
pub const TABLE: &str = "skiff-proxy";
/// Packet mark meaning "masquerade in postrouting" (kube-proxy's).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// Verdict maps and sets of the base table.
pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub const CLUSTER_IPS: &str = "cluster-ips";
pub const NODEPORT_IPS: &str = "nodeport-ips";
pub const HAIRPIN_ENDPOINTS: &str = "hairpin-endpoints";

/// The inputs of rule rendering that do not come from the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleConfig {
    /// This node's name: endpoints with this `nodeName` are local.
    pub node_name: String,
    /// The pod range: traffic to a cluster IP from outside it is
    /// masqueraded.
    pub cluster_cidr: Ipv4Net,
    /// The service range: addresses in it that are no service are refused.
    pub service_cidr: Ipv4Net,
    /// Addresses that accept node ports; empty means every local address
    /// but loopback.
    pub nodeport_addresses: Vec<Ipv4Addr>,
}

/// One element of a set or verdict map of the base table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Element {
    pub set: &'static str,
    pub key: String,
    /// The verdict, for maps.
    pub value: Option<String>,
}

/// Everything one service owns in the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// Chain name → its rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Client-IP affinity sets (all with the same definition,
    /// [`AFFINITY_SET_TYPE`]).
    pub sets: BTreeSet<String>,
    /// Elements of the base table's sets and maps.
    pub elements: BTreeSet<Element>,
    /// Endpoint addresses this service DNATs to: each needs its element in
    /// [`HAIRPIN_ENDPOINTS`], shared with other services (see
    /// [`HairpinRefs`]).
    pub hairpin: BTreeSet<Ipv4Addr>,
}

/// How many written services DNAT to each endpoint address: its
/// [`HAIRPIN_ENDPOINTS`] element exists while the count is above zero.
/// Kept by the syncer across incremental syncs and rebuilt by every full
/// sync (which is also what follows a failed one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HairpinRefs(BTreeMap<Ipv4Addr, u32>);

impl HairpinRefs {
    /// Counts one more user of `ip`; true when it is the first.
    fn acquire(&mut self, ip: Ipv4Addr) -> bool {
        let n = self.0.entry(ip).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Counts one user of `ip` less; true when it was the last.
    fn release(&mut self, ip: Ipv4Addr) -> bool {
        match self.0.get_mut(&ip) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.0.remove(&ip);
                true
            }
            None => false,
        }
    }

    /// Addresses with an element.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn hairpin_key(ip: Ipv4Addr) -> String {
    format!("{ip} . {ip}")
}

impl ServiceRules {
    /// Number of rules and elements: a rough size of what it writes.
    pub fn size(&self) -> usize {
        self.chains.values().map(Vec::len).sum::<usize>() + self.elements.len() + self.hairpin.len()
    }
}

/// Definition of every affinity set. The timeout is per element (written
/// by the `update` in the endpoint chain), so a changed timeout rewrites a
/// chain, never a set.
pub const AFFINITY_SET_TYPE: &str = "type ipv4_addr; flags dynamic,timeout;";

#[derive(Debug, Clone, Copy)]
struct Ep<'a> {
    ip: Ipv4Addr,
    port: u16,
    info: &'a EndpointInfo,
}

/// The endpoints of one service port, from every slice of the service,
/// matched on port name and protocol, sorted and without duplicates.
fn port_endpoints<'a>(port: &ServicePortInfo, slices: &[&'a SliceInfo]) -> Vec<Ep<'a>> {
    let mut out: Vec<Ep<'a>> = Vec::new();
    for slice in slices {
        let Some(sp) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        out.extend(slice.endpoints.iter().map(|info| Ep {
            ip: info.ip,
            port: sp.port,
            info,
        }));
    }
    out.sort_by_key(|e| (e.ip, e.port));
    out.dedup_by_key(|e| (e.ip, e.port));
    out
}

/// Ready endpoints, or (when none is ready) the serving terminating ones,
/// as kube-proxy falls back to them.
fn usable<'a>(eps: impl Iterator<Item = Ep<'a>> + Clone) -> Vec<Ep<'a>> {
    let ready: Vec<_> = eps.clone().filter(|e| e.info.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    eps.filter(|e| e.info.serving && e.info.terminating)
        .collect()
}

fn verdict_goto(chain: &str) -> String {
    format!("goto {chain}")
}

const REJECT: &str = "goto reject-chain";
const DROP: &str = "drop";

/// The table objects `service` needs, given its slices.
pub fn service_rules(
    name: &ServiceName,
    service: &ServiceInfo,
    slices: &[&SliceInfo],
    config: &RuleConfig,
) -> ServiceRules {
    let mut out = ServiceRules::default();
    if let Some(ip) = service.cluster_ip {
        out.elements.insert(Element {
            set: CLUSTER_IPS,
            key: ip.to_string(),
            value: None,
        });
    }
    for port in &service.ports {
        port_rules(name, service, port, slices, config, &mut out);
    }
    out
}

fn port_rules(
    name: &ServiceName,
    service: &ServiceInfo,
    port: &ServicePortInfo,
    slices: &[&SliceInfo],
    config: &RuleConfig,
    out: &mut ServiceRules,
) {
    let proto = port.protocol.as_str();
    let id = format!("{}/{}/{}/{}", name.namespace, name.name, proto, port.port);
    let all = port_endpoints(port, slices);
    let cluster = usable(all.iter().copied());
    let local = usable(
        all.iter()
            .copied()
            .filter(|e| e.info.node_name.as_deref() == Some(config.node_name.as_str())),
    );
    let cluster_chain = format!("service-{id}");
    let local_chain = format!("local-{id}");
    let external_chain = format!("external-{id}");

    let internal = if service.internal_local {
        &local
    } else {
        &cluster
    };
    let internal_chain = if service.internal_local {
        &local_chain
    } else {
        &cluster_chain
    };
    let cluster_ip = service.cluster_ip;
    let node_port = port.node_port;
    // Load-balancer ingress and external IPs: addresses whose traffic on
    // the service port is external, as node-port traffic is. The cluster
    // IP is internal even when it is listed again.
    let external_ips: BTreeSet<Ipv4Addr> = service
        .load_balancer_ips
        .iter()
        .chain(&service.external_ips)
        .copied()
        .filter(|ip| Some(*ip) != cluster_ip)
        .collect();
    // External traffic enters through the external chain. It exists while
    // the service has any usable endpoint: with a Local policy and no
    // endpoint here, traffic from pods and from the node itself still goes
    // to the cluster's endpoints and only the rest is dropped (kube-proxy's
    // iptables mode; its nftables mode drops pods' traffic as well,
    // kubernetes/kubernetes#131765).
    let has_external = node_port.is_some() || !external_ips.is_empty();
    let external_ok = has_external && !cluster.is_empty();

    // Which policy chains something jumps to.
    let mut use_cluster = false;
    let mut use_local = false;
    if cluster_ip.is_some() && !internal.is_empty() {
        if service.internal_local {
            use_local = true;
        } else {
            use_cluster = true;
        }
    }
    if external_ok {
        use_cluster = true;
        use_local |= service.external_local && !local.is_empty();
    }

    if let Some(ip) = cluster_ip {
        let key = format!("{ip} . {proto} . {}", port.port);
        let (set, value) = if !internal.is_empty() {
            (SERVICE_IPS, verdict_goto(internal_chain))
        } else if cluster.is_empty() {
            (NO_ENDPOINT_SERVICES, REJECT.to_string())
        } else {
            // internalTrafficPolicy: Local without an endpoint here.
            (NO_ENDPOINT_SERVICES, DROP.to_string())
        };
        out.elements.insert(Element {
            set,
            key,
            value: Some(value),
        });
    }
    let external_keys = node_port
        .map(|np| {
            (
                SERVICE_NODEPORTS,
                NO_ENDPOINT_NODEPORTS,
                format!("{proto} . {np}"),
            )
        })
        .into_iter()
        .chain(external_ips.iter().map(|ip| {
            (
                SERVICE_IPS,
                NO_ENDPOINT_SERVICES,
                format!("{ip} . {proto} . {}", port.port),
            )
        }));
    for (map, no_endpoint_map, key) in external_keys {
        let (set, value) = if external_ok {
            (map, verdict_goto(&external_chain))
        } else {
            (no_endpoint_map, REJECT.to_string())
        };
        out.elements.insert(Element {
            set,
            key,
            value: Some(value),
        });
    }
    if external_ok {
        let rules = if service.external_local {
            let mut r = vec![
                format!(
                    "ip saddr {} goto {cluster_chain}",
                    config.cluster_cidr.trunc()
                ),
                "fib saddr type local jump mark-for-masquerade".to_string(),
                format!("fib saddr type local goto {cluster_chain}"),
            ];
            r.push(if local.is_empty() {
                DROP.to_string()
            } else {
                format!("goto {local_chain}")
            });
            r
        } else {
            vec![
                "jump mark-for-masquerade".to_string(),
                format!("goto {cluster_chain}"),
            ]
        };
        out.chains.insert(external_chain, rules);
    }

    for (used, chain, eps) in [
        (use_cluster, &cluster_chain, &cluster),
        (use_local, &local_chain, &local),
    ] {
        if !used {
            continue;
        }
        let mut rules = Vec::with_capacity(2 * eps.len() + 1);
        if let Some(ip) = cluster_ip {
            rules.push(format!(
                "ip daddr {ip} {proto} dport {} ip saddr != {} jump mark-for-masquerade",
                port.port,
                config.cluster_cidr.trunc()
            ));
        }
        // With affinity, a client found in an endpoint's set goes back to
        // it; everyone else is picked at random (and remembered).
        let target = |ep: &Ep<'_>| to_endpoint(proto, ep, service.affinity_timeout, &id);
        if service.affinity_timeout.is_some() {
            for ep in eps {
                let set = affinity_set(&id, ep);
                rules.push(format!("ip saddr @{set} {}", target(ep)));
                out.sets.insert(set);
            }
        }
        rules.extend(pick_at_random(eps, target));
        out.chains.insert(chain.clone(), rules);
        out.hairpin.extend(eps.iter().map(|ep| ep.ip));
    }
}

/// The statements that send a connection to `ep` of the service port `id`:
/// remember the client in the endpoint's affinity set for
/// `affinity_timeout` seconds when the service has client-IP affinity, then
/// DNAT.
fn to_endpoint(proto: &str, ep: &Ep<'_>, affinity_timeout: Option<u32>, id: &str) -> String {
    let remember = affinity_timeout
        .map(|timeout| {
            format!(
                "update @{} {{ ip saddr timeout {timeout}s }} ",
                affinity_set(id, ep)
            )
        })
        .unwrap_or_default();
    format!(
        "meta l4proto {proto} {remember}dnat to {}:{}",
        ep.ip, ep.port
    )
}

/// Rules that go to one of `eps` (not empty) with equal chances, as
/// iptables' `statistic` cascade: the i-th of N endpoints is taken with
/// probability 1/(N-i) when none before it was, and the last one
/// otherwise. Each rule draws its own number. kube-proxy's single
/// `numgen random mod N vmap { … }` needs an anonymous map per service
/// instead, and the kernel's cost of creating and listing thousands of
/// those grows faster than linearly: at 4,000 services a full sync took
/// 21.8 s with them and 3.2 s without (docs/benchmarks.md).
fn pick_at_random(eps: &[Ep<'_>], to: impl Fn(&Ep<'_>) -> String) -> Vec<String> {
    let n = eps.len();
    eps.iter()
        .enumerate()
        .map(|(i, ep)| {
            if i + 1 == n {
                to(ep)
            } else {
                format!("numgen random mod {} == 0 {}", n - i, to(ep))
            }
        })
        .collect()
}

fn affinity_set(id: &str, ep: &Ep<'_>) -> String {
    format!("affinity-{id}__{}/{}", ep.ip, ep.port)
}

/// The fixed part of the table as `nft` commands: sets, maps, helper and
/// hook chains. With `flush`, every chain and map is flushed first (a
/// resync over an existing table).
pub fn base_commands(config: &RuleConfig, flush: bool) -> String {
    let t = format!("{FAMILY} {TABLE}");
    let mut s = String::new();
    let sets = [
        (CLUSTER_IPS, "type ipv4_addr;"),
        (NODEPORT_IPS, "type ipv4_addr;"),
        (HAIRPIN_ENDPOINTS, "type ipv4_addr . ipv4_addr;"),
    ];
    for (name, def) in sets {
        let _ = writeln!(s, "add set {t} {name} {{ {def} }}");
        if flush {
            let _ = writeln!(s, "flush set {t} {name}");
        }
    }
    if !config.nodeport_addresses.is_empty() {
        let addrs: Vec<String> = config
            .nodeport_addresses
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(
            s,
            "add element {t} {NODEPORT_IPS} {{ {} }}",
            addrs.join(", ")
        );
    }
    let maps = [
        (SERVICE_IPS, "ipv4_addr . inet_proto . inet_service"),
        (SERVICE_NODEPORTS, "inet_proto . inet_service"),
        (
            NO_ENDPOINT_SERVICES,
            "ipv4_addr . inet_proto . inet_service",
        ),
        (NO_ENDPOINT_NODEPORTS, "inet_proto . inet_service"),
    ];
    for (name, key) in maps {
        let _ = writeln!(s, "add map {t} {name} {{ type {key} : verdict; }}");
        if flush {
            let _ = writeln!(s, "flush map {t} {name}");
        }
    }
    let nodeport_match = if config.nodeport_addresses.is_empty() {
        "fib daddr type local ip daddr != 127.0.0.0/8".to_string()
    } else {
        format!("ip daddr @{NODEPORT_IPS}")
    };
    let service_cidr = config.service_cidr.trunc();
    // Helper chains first: later rules jump to them.
    let chains: Vec<(&str, Option<&str>, Vec<String>)> = vec![
        // A TCP reset for TCP: ICMP errors are rate-limited per
        // destination, so the first refusals to a client would be lost.
        (
            "reject-chain",
            None,
            vec![
                "meta l4proto tcp reject with tcp reset".into(),
                "reject".into(),
            ],
        ),
        (
            "mark-for-masquerade",
            None,
            vec![format!("meta mark set meta mark | {MASQUERADE_MARK:#010x}")],
        ),
        (
            "masquerading",
            None,
            vec![
                format!(
                    "ct status dnat ip saddr . ip daddr @{HAIRPIN_ENDPOINTS} meta mark set meta mark | {MASQUERADE_MARK:#010x}"
                ),
                format!("meta mark & {MASQUERADE_MARK:#010x} == 0 return"),
                format!("meta mark set meta mark ^ {MASQUERADE_MARK:#010x}"),
                "masquerade fully-random".into(),
            ],
        ),
        (
            "service-endpoints-check",
            None,
            vec![format!(
                "ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"
            )],
        ),
        (
            "nodeport-endpoints-check",
            None,
            vec![format!(
                "{nodeport_match} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"
            )],
        ),
        (
            "cluster-ips-check",
            None,
            vec![
                format!("ip daddr @{CLUSTER_IPS} goto reject-chain"),
                format!("ip daddr {service_cidr} goto reject-chain"),
            ],
        ),
        (
            "services",
            None,
            vec![
                format!("ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
                format!("{nodeport_match} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"),
            ],
        ),
        (
            "filter-input",
            Some("type filter hook input priority -110; policy accept;"),
            vec![
                "ct state new jump nodeport-endpoints-check".into(),
                "ct state new jump service-endpoints-check".into(),
            ],
        ),
        (
            "filter-forward",
            Some("type filter hook forward priority -110; policy accept;"),
            vec![
                "ct state new jump service-endpoints-check".into(),
                "ct state new jump cluster-ips-check".into(),
            ],
        ),
        (
            "filter-output",
            Some("type filter hook output priority -110; policy accept;"),
            vec![
                "ct state new jump service-endpoints-check".into(),
                "ct state new jump nodeport-endpoints-check".into(),
            ],
        ),
        (
            "filter-output-post-dnat",
            Some("type filter hook output priority -90; policy accept;"),
            vec!["ct state new jump cluster-ips-check".into()],
        ),
        (
            "nat-prerouting",
            Some("type nat hook prerouting priority dstnat; policy accept;"),
            vec!["jump services".into()],
        ),
        (
            "nat-output",
            Some("type nat hook output priority -100; policy accept;"),
            vec!["jump services".into()],
        ),
        (
            "nat-postrouting",
            Some("type nat hook postrouting priority srcnat; policy accept;"),
            vec!["jump masquerading".into()],
        ),
    ];
    for (name, hook, rules) in &chains {
        match hook {
            Some(h) => {
                let _ = writeln!(s, "add chain {t} {name} {{ {h} }}");
            }
            None => {
                let _ = writeln!(s, "add chain {t} {name}");
            }
        }
        if flush {
            let _ = writeln!(s, "flush chain {t} {name}");
        }
        for rule in rules {
            let _ = writeln!(s, "add rule {t} {name} {rule}");
        }
    }
    s
}

/// Names of the base table's own chains, sets and maps (never stale).
pub fn is_base_object(name: &str) -> bool {
    matches!(
        name,
        "reject-chain"
            | "mark-for-masquerade"
            | "masquerading"
            | "service-endpoints-check"
            | "nodeport-endpoints-check"
            | "cluster-ips-check"
            | "services"
            | "filter-input"
            | "filter-forward"
            | "filter-output"
            | "filter-output-post-dnat"
            | "nat-prerouting"
            | "nat-output"
            | "nat-postrouting"
            | CLUSTER_IPS
            | NODEPORT_IPS
            | HAIRPIN_ENDPOINTS
            | SERVICE_IPS
            | SERVICE_NODEPORTS
            | NO_ENDPOINT_SERVICES
            | NO_ENDPOINT_NODEPORTS
    )
}

/// The chains and sets found in the kernel's table (for a resync).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableObjects {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

/// An `nft -f` script under construction: changes are collected in phases
/// and rendered in an order the kernel accepts inside one transaction
/// (elements that go away before chains they point to; chains created
/// before rules jump to them; chains and sets deleted last).
#[derive(Debug, Default)]
pub struct Script {
    prelude: String,
    delete_elements: Vec<String>,
    add_sets: Vec<String>,
    create_chains: Vec<String>,
    rules: Vec<String>,
    add_elements: Vec<String>,
    flush_gone: Vec<String>,
    delete_gone: Vec<String>,
    delete_sets: Vec<String>,
    /// Services whose objects changed.
    pub services_changed: usize,
}

impl Script {
    /// A script that replaces the whole table atomically: anything an
    /// earlier run left is gone, even with another layout.
    pub fn recreate(config: &RuleConfig) -> Self {
        Self {
            prelude: format!(
                "add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\nadd table {FAMILY} {TABLE}\n{}",
                base_commands(config, false)
            ),
            ..Default::default()
        }
    }

    /// A script that brings an existing table (holding `existing`) to the
    /// desired state without deleting it, so affinity sets keep their
    /// entries: every chain and map is flushed and written again, and
    /// objects no service owns are deleted. Add services with
    /// [`Script::resync_service`].
    pub fn resync(config: &RuleConfig) -> Self {
        Self {
            prelude: format!(
                "add table {FAMILY} {TABLE}\n{}",
                base_commands(config, true)
            ),
            ..Default::default()
        }
    }

    /// Adds `rules` to a resync script; `existing` loses the objects it
    /// owns, so what remains at the end is stale (see
    /// [`Script::delete_stale`]).
    /// `refs` starts empty for a resync (the set was flushed).
    pub fn resync_service(
        &mut self,
        rules: &ServiceRules,
        existing: &mut TableObjects,
        refs: &mut HairpinRefs,
    ) {
        let t = format!("{FAMILY} {TABLE}");
        for set in &rules.sets {
            existing.sets.remove(set);
            self.add_sets
                .push(format!("add set {t} {set} {{ {AFFINITY_SET_TYPE} }}"));
        }
        for (chain, body) in &rules.chains {
            self.create_chains.push(format!("add chain {t} {chain}"));
            if existing.chains.remove(chain) {
                self.create_chains.push(format!("flush chain {t} {chain}"));
            }
            self.push_rules(chain, body);
        }
        for e in &rules.elements {
            self.add_elements.push(add_element(e));
        }
        for ip in &rules.hairpin {
            if refs.acquire(*ip) {
                self.add_elements.push(add_hairpin(*ip));
            }
        }
        self.services_changed += 1;
    }

    /// Deletes what is left in `existing` after every service was added.
    pub fn delete_stale(&mut self, existing: &TableObjects) {
        let t = format!("{FAMILY} {TABLE}");
        for chain in existing.chains.iter().filter(|c| !is_base_object(c)) {
            self.flush_gone.push(format!("flush chain {t} {chain}"));
            self.delete_gone.push(format!("delete chain {t} {chain}"));
        }
        for set in existing.sets.iter().filter(|s| !is_base_object(s)) {
            self.delete_sets.push(format!("delete set {t} {set}"));
        }
    }

    /// Adds what it takes to go from `old` to `new` for one service (either
    /// may be absent: a new or a deleted service). Unchanged chains and
    /// elements are not touched. `refs` counts the services that use each
    /// hairpin element: it is updated here, before the script is applied,
    /// so after a failed apply only a full sync may follow.
    pub fn diff_service(
        &mut self,
        old: Option<&ServiceRules>,
        new: Option<&ServiceRules>,
        refs: &mut HairpinRefs,
    ) {
        let empty = ServiceRules::default();
        let old = old.unwrap_or(&empty);
        let new = new.unwrap_or(&empty);
        if old == new {
            return;
        }
        self.services_changed += 1;
        let t = format!("{FAMILY} {TABLE}");
        for e in old.elements.difference(&new.elements) {
            self.delete_elements
                .push(format!("delete element {t} {} {{ {} }}", e.set, e.key));
        }
        for ip in old.hairpin.difference(&new.hairpin) {
            if refs.release(*ip) {
                self.delete_elements.push(format!(
                    "delete element {t} {HAIRPIN_ENDPOINTS} {{ {} }}",
                    hairpin_key(*ip)
                ));
            }
        }
        for set in new.sets.difference(&old.sets) {
            self.add_sets
                .push(format!("add set {t} {set} {{ {AFFINITY_SET_TYPE} }}"));
        }
        for (chain, body) in &new.chains {
            match old.chains.get(chain) {
                Some(old_body) if old_body == body => continue,
                Some(_) => self.create_chains.push(format!("flush chain {t} {chain}")),
                None => self.create_chains.push(format!("add chain {t} {chain}")),
            }
            self.push_rules(chain, body);
        }
        for e in new.elements.difference(&old.elements) {
            self.add_elements.push(add_element(e));
        }
        for ip in new.hairpin.difference(&old.hairpin) {
            if refs.acquire(*ip) {
                self.add_elements.push(add_hairpin(*ip));
            }
        }
        for chain in old.chains.keys().filter(|c| !new.chains.contains_key(*c)) {
            self.flush_gone.push(format!("flush chain {t} {chain}"));
            self.delete_gone.push(format!("delete chain {t} {chain}"));
        }
        for set in old.sets.difference(&new.sets) {
            self.delete_sets.push(format!("delete set {t} {set}"));
        }
    }

    fn push_rules(&mut self, chain: &str, body: &[String]) {
        for rule in body {
            self.rules
                .push(format!("add rule {FAMILY} {TABLE} {chain} {rule}"));
        }
    }

    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.prelude.is_empty()
            && self.delete_elements.is_empty()
            && self.add_sets.is_empty()
            && self.create_chains.is_empty()
            && self.rules.is_empty()
            && self.add_elements.is_empty()
            && self.flush_gone.is_empty()
            && self.delete_gone.is_empty()
            && self.delete_sets.is_empty()
    }

    /// Number of commands (a measure of how much a sync wrote).
    pub fn commands(&self) -> usize {
        self.prelude.lines().count()
            + self.delete_elements.len()
            + self.add_sets.len()
            + self.create_chains.len()
            + self.rules.len()
            + self.add_elements.len()
            + self.flush_gone.len()
            + self.delete_gone.len()
            + self.delete_sets.len()
    }

    /// The script text for `nft -f -`.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(self.commands() * 96);
        s.push_str(&self.prelude);
        for part in [
            &self.delete_elements,
            &self.add_sets,
            &self.create_chains,
            &self.rules,
            &self.add_elements,
            &self.flush_gone,
            &self.delete_gone,
            &self.delete_sets,
        ] {
            for line in part {
                s.push_str(line);
                s.push('\n');
            }
        }
        s
    }
}

fn add_hairpin(ip: Ipv4Addr) -> String {
    format!(
        "add element {FAMILY} {TABLE} {HAIRPIN_ENDPOINTS} {{ {} }}",
        hairpin_key(ip)
    )
}

fn add_element(e: &Element) -> String {
    match &e.value {
        Some(v) => format!(
            "add element {FAMILY} {TABLE} {} {{ {} : {v} }}",
            e.set, e.key
        ),
        None => format!("add element {FAMILY} {TABLE} {} {{ {} }}", e.set, e.key),
    }
}

#[cfg(test)]
mod tests;
