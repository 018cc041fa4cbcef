//! Routes to other nodes' pod CIDRs: `host-gw` or `vxlan`.
//!
//! [`Routes::sync`] is a reconcile: it computes the wanted kernel entries
//! from plain data ([`desired`], pure), reads what the kernel has, and adds
//! what is missing and removes what is stale. Routes it owns carry the
//! route protocol [`ROUTE_PROTOCOL`], so it never removes a route it did
//! not make.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::{Handle, LinkVxlan, RouteMessageBuilder};

use crate::link::{self, ENOENT, ESRCH, errno, nl};
use crate::{Error, Result, addr, netns};

/// Route protocol number marking routes this crate made (`proto 83` in
/// `ip route`).
pub const ROUTE_PROTOCOL: u8 = 83;

/// How pods on different nodes reach each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A route to each node's pod CIDR via the node's IP. Nodes must share
    /// a layer-2 segment.
    HostGw,
    /// A VXLAN overlay, flannel style.
    Vxlan(VxlanConfig),
}

/// The VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    /// Device name, `skiff.1` by default.
    pub device: String,
    /// VXLAN network identifier, 1 by default.
    pub vni: u32,
    /// UDP port, 8472 by default (flannel's, the Linux default).
    pub port: u16,
    /// MTU; `None` for the MTU of the interface carrying the node IP minus
    /// the 50 bytes of VXLAN encapsulation.
    pub mtu: Option<u32>,
}

impl Default for VxlanConfig {
    fn default() -> Self {
        Self {
            device: "skiff.1".to_string(),
            vni: 1,
            port: 8472,
            mtu: None,
        }
    }
}

/// This node, as the routes see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutesConfig {
    pub node_name: String,
    /// The node's IP on the network between nodes (`InternalIP`).
    pub node_ip: Ipv4Addr,
    /// The node's own pod CIDR (never routed elsewhere).
    pub pod_cidr: Ipv4Net,
    pub backend: Backend,
    /// The network namespace that plays the host; `None` for the caller's.
    pub host_netns: Option<PathBuf>,
}

/// Another node: name, IP, pod CIDR.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemoteNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
}

/// One route this crate owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RouteEntry {
    pub dst: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Through the VXLAN device, onlink.
    pub via_vxlan: bool,
}

/// A static VXLAN forwarding entry: frames for `mac` go to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: Ipv4Addr,
}

/// A permanent ARP entry on the VXLAN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NeighEntry {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// The kernel entries a set of nodes calls for.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Desired {
    pub routes: BTreeSet<RouteEntry>,
    pub fdb: BTreeSet<FdbEntry>,
    pub neigh: BTreeSet<NeighEntry>,
    /// Other nodes left out, with why (this node is left out silently).
    pub skipped: Vec<(String, String)>,
}

/// The entries for `nodes` (pure). This node, nodes with this node's IP,
/// and nodes whose pod CIDR overlaps this node's or an earlier node's
/// (by name) are skipped.
pub(crate) fn desired(config: &RoutesConfig, nodes: &[RemoteNode]) -> Desired {
    let mut sorted: Vec<&RemoteNode> = nodes.iter().collect();
    sorted.sort();
    let own = config.pod_cidr.trunc();
    let mut out = Desired::default();
    let mut taken: Vec<Ipv4Net> = vec![own];
    for node in sorted {
        let cidr = node.pod_cidr.trunc();
        if node.name == config.node_name || node.ip == config.node_ip {
            continue;
        }
        let overlap = taken
            .iter()
            .find(|t| t.contains(&cidr) || cidr.contains(*t))
            .map(|t| format!("pod cidr {cidr} overlaps {t}"));
        if let Some(reason) = overlap {
            out.skipped.push((node.name.clone(), reason));
            continue;
        }
        taken.push(cidr);
        match config.backend {
            Backend::HostGw => {
                out.routes.insert(RouteEntry {
                    dst: cidr,
                    gateway: node.ip,
                    via_vxlan: false,
                });
            }
            Backend::Vxlan(_) => {
                let vtep_ip = cidr.network();
                let mac = addr::vtep_mac(node.ip);
                out.routes.insert(RouteEntry {
                    dst: cidr,
                    gateway: vtep_ip,
                    via_vxlan: true,
                });
                out.neigh.insert(NeighEntry { ip: vtep_ip, mac });
                out.fdb.insert(FdbEntry { mac, dst: node.ip });
            }
        }
    }
    out
}

/// What to add and what to remove to turn `have` into `want`.
pub(crate) fn diff<T: Ord + Clone>(want: &BTreeSet<T>, have: &BTreeSet<T>) -> (Vec<T>, Vec<T>) {
    (
        want.difference(have).cloned().collect(),
        have.difference(want).cloned().collect(),
    )
}

/// Keeps this node's routes to other nodes' pods in step with a node list.
#[derive(Debug, Clone)]
pub struct Routes {
    config: RoutesConfig,
}

impl Routes {
    pub fn new(config: RoutesConfig) -> Result<Self> {
        if let Backend::Vxlan(v) = &config.backend {
            if !addr::valid_ifname(&v.device) {
                return Err(Error::Config(format!(
                    "vxlan device name {:?} is not valid",
                    v.device
                )));
            }
            if v.vni == 0 || v.vni >= 1 << 24 {
                return Err(Error::Config(format!(
                    "vxlan vni {} out of range 1..2^24",
                    v.vni
                )));
            }
        }
        Ok(Self { config })
    }

    pub fn config(&self) -> &RoutesConfig {
        &self.config
    }

    fn host_netns(&self) -> Option<&Path> {
        self.config.host_netns.as_deref()
    }

    /// Adds what `nodes` call for and removes what they no longer do.
    /// Tries every entry; returns the first error after trying the rest.
    #[tracing::instrument(skip_all, fields(node = %self.config.node_name, nodes = nodes.len()))]
    pub async fn sync(&self, nodes: &[RemoteNode]) -> Result<()> {
        let want = desired(&self.config, nodes);
        for (node, reason) in &want.skipped {
            tracing::warn!(remote = %node, %reason, "node left out of pod routes");
        }
        let h = netns::handle(self.host_netns()).await?;
        let vxlan_index = match &self.config.backend {
            Backend::Vxlan(v) => Some(self.ensure_vxlan(&h, v).await?),
            Backend::HostGw => {
                // Switching from vxlan: drop the device with its entries.
                let device = VxlanConfig::default().device;
                if link::delete_by_name(&h, &device).await? {
                    tracing::info!(%device, "removed vxlan device (backend is host-gw)");
                }
                None
            }
        };
        let mut first_error: Option<Error> = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "pod route sync step failed");
                first_error.get_or_insert(e);
            }
        };

        // Neighbour and FDB entries first, so a new route works at once.
        if let Some(index) = vxlan_index {
            let have_fdb = fdb_entries(&h, index).await?;
            let (add, remove) = diff(&want.fdb, &have_fdb.iter().map(|(e, _)| *e).collect());
            for e in add {
                note(add_fdb(&h, index, e).await);
            }
            for (e, msg) in have_fdb {
                if remove.contains(&e) {
                    note(
                        del_neigh(&h, msg, format!("fdb {} dst {}", mac_str(&e.mac), e.dst)).await,
                    );
                }
            }
            let have_neigh = neigh_entries(&h, index).await?;
            let (add, remove) = diff(&want.neigh, &have_neigh.iter().map(|(e, _)| *e).collect());
            for e in add {
                note(add_neigh(&h, index, e).await);
            }
            for (e, msg) in have_neigh {
                if remove.contains(&e) {
                    note(
                        del_neigh(
                            &h,
                            msg,
                            format!("neigh {} lladdr {}", e.ip, mac_str(&e.mac)),
                        )
                        .await,
                    );
                }
            }
        }

        let have_routes = owned_routes(&h, vxlan_index).await?;
        let have: BTreeSet<RouteEntry> = have_routes.iter().filter_map(|(e, _)| *e).collect();
        let (add, _) = diff(&want.routes, &have);
        for (entry, msg) in have_routes {
            let stale = match entry {
                Some(e) => !want.routes.contains(&e),
                None => true,
            };
            if stale {
                note(del_route(&h, msg, entry).await);
            }
        }
        for e in add {
            note(add_route(&h, e, vxlan_index).await);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Removes every route, neighbour and FDB entry this crate made, and the
    /// VXLAN device.
    pub async fn remove_all(&self) -> Result<()> {
        let h = netns::handle(self.host_netns()).await?;
        if let Backend::Vxlan(v) = &self.config.backend {
            link::delete_by_name(&h, &v.device).await?;
        }
        for (entry, msg) in owned_routes(&h, None).await? {
            del_route(&h, msg, entry).await?;
        }
        Ok(())
    }

    async fn ensure_vxlan(&self, h: &Handle, v: &VxlanConfig) -> Result<u32> {
        let node_ip = self.config.node_ip;
        let uplink_index = link::index_with_addr(h, node_ip)
            .await?
            .ok_or_else(|| Error::Node {
                node: self.config.node_name.clone(),
                ip: node_ip,
                reason: "the node ip is on no interface".to_string(),
            })?;
        let uplink = link::by_index(h, uplink_index)
            .await?
            .ok_or_else(|| Error::Vanished {
                device: format!("index {uplink_index}"),
            })?;
        let mtu = match v.mtu {
            Some(m) => m,
            None => link::mtu(&uplink)
                .unwrap_or(1500)
                .saturating_sub(50)
                .max(68),
        };
        let mac = addr::vtep_mac(node_ip);
        let existing = link::by_name(h, &v.device).await?;
        let keep = existing
            .as_ref()
            .is_some_and(|l| vxlan_matches(l, v, node_ip, uplink_index, &mac));
        if let Some(old) = existing.as_ref().filter(|_| !keep) {
            tracing::info!(device = %v.device, index = old.header.index, "recreating vxlan device with new settings");
            link::delete_by_name(h, &v.device).await?;
        }
        if !keep {
            let msg = LinkVxlan::new(&v.device, v.vni)
                .port(v.port)
                .local(node_ip)
                .dev(uplink_index)
                .learning(false)
                .mtu(mtu)
                .address(mac.to_vec())
                .build();
            h.link()
                .add(msg)
                .execute()
                .await
                .map_err(nl("create vxlan device", v.device.as_str()))?;
            tracing::info!(device = %v.device, vni = v.vni, port = v.port, local = %node_ip, "created vxlan device");
        }
        let device = link::by_name(h, &v.device)
            .await?
            .ok_or_else(|| Error::Vanished {
                device: v.device.clone(),
            })?;
        let index = device.header.index;
        // The device carries this node's VTEP address: its pod CIDR's
        // network address, /32 (flannel's layout).
        link::ensure_only_addr_v4(
            h,
            index,
            &v.device,
            self.config.pod_cidr.trunc().network(),
            32,
        )
        .await?;
        link::set_up(h, index, &v.device).await?;
        Ok(index)
    }
}

fn vxlan_matches(
    link: &LinkMessage,
    v: &VxlanConfig,
    local: Ipv4Addr,
    uplink: u32,
    mac: &[u8; 6],
) -> bool {
    let infos: Vec<&InfoVxlan> = link
        .attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        })
        .flatten()
        .filter_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
            _ => None,
        })
        .flatten()
        .collect();
    link::kind(link) == Some(&InfoKind::Vxlan)
        && link::mac(link) == Some(mac.as_slice())
        && infos.contains(&&InfoVxlan::Id(v.vni))
        && infos.contains(&&InfoVxlan::Port(v.port))
        && infos.contains(&&InfoVxlan::Local(local))
        && infos.contains(&&InfoVxlan::Link(uplink))
}

fn mac_str(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn mac6(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

fn protocol() -> RouteProtocol {
    RouteProtocol::from(ROUTE_PROTOCOL)
}

/// Routes in the main table carrying our protocol, parsed where possible
/// (an unparsable one is still ours, and stale).
async fn owned_routes(
    h: &Handle,
    vxlan_index: Option<u32>,
) -> Result<Vec<(Option<RouteEntry>, RouteMessage)>> {
    let msgs: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("list routes", "ipv4 main table"))?;
    Ok(msgs
        .into_iter()
        .filter(|m| {
            m.header.address_family == AddressFamily::Inet && m.header.protocol == protocol()
        })
        .filter(|m| table(m) == u32::from(RouteHeader::RT_TABLE_MAIN))
        .map(|m| (parse_route(&m, vxlan_index), m))
        .collect())
}

fn table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn parse_route(m: &RouteMessage, vxlan_index: Option<u32>) -> Option<RouteEntry> {
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    Some(RouteEntry {
        dst: Ipv4Net::new(dst?, m.header.destination_prefix_length).ok()?,
        gateway: gateway?,
        via_vxlan: oif.is_some() && oif == vxlan_index,
    })
}

async fn add_route(h: &Handle, e: RouteEntry, vxlan_index: Option<u32>) -> Result<()> {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(e.dst.network(), e.dst.prefix_len())
        .gateway(e.gateway)
        .protocol(protocol());
    if e.via_vxlan {
        let Some(index) = vxlan_index else {
            return Err(Error::Vanished {
                device: "vxlan device".to_string(),
            });
        };
        b = b.output_interface(index).onlink();
    }
    h.route()
        .add(b.build())
        .replace()
        .execute()
        .await
        .map_err(nl("add route", format!("{} via {}", e.dst, e.gateway)))?;
    tracing::info!(dst = %e.dst, via = %e.gateway, vxlan = e.via_vxlan, "added pod route");
    Ok(())
}

async fn del_route(h: &Handle, msg: RouteMessage, e: Option<RouteEntry>) -> Result<()> {
    let what = e.map_or_else(
        || "unparsable owned route".to_string(),
        |e| format!("{} via {}", e.dst, e.gateway),
    );
    match h.route().del(msg).execute().await {
        Ok(()) => {
            tracing::info!(route = %what, "removed stale pod route");
            Ok(())
        }
        Err(err) if matches!(errno(&err), Some(ESRCH) | Some(ENOENT)) => Ok(()),
        Err(err) => Err(nl("delete route", what)(err)),
    }
}

async fn fdb_entries(h: &Handle, index: u32) -> Result<Vec<(FdbEntry, NeighbourMessage)>> {
    let msgs: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_collect()
        .await
        .map_err(nl("list fdb", format!("index {index}")))?;
    Ok(msgs
        .into_iter()
        .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent)
        .filter_map(|m| {
            let mut mac = None;
            let mut dst = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(l) => mac = mac6(l),
                    // AF_BRIDGE entries carry NDA_DST as raw bytes.
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => dst = Some(*ip),
                    NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => {
                        dst = <[u8; 4]>::try_from(raw.as_slice()).ok().map(Ipv4Addr::from);
                    }
                    _ => {}
                }
            }
            Some((
                FdbEntry {
                    mac: mac?,
                    dst: dst?,
                },
                m,
            ))
        })
        .collect())
}

async fn neigh_entries(h: &Handle, index: u32) -> Result<Vec<(NeighEntry, NeighbourMessage)>> {
    let msgs: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute()
        .try_collect()
        .await
        .map_err(nl("list neighbours", format!("index {index}")))?;
    Ok(msgs
        .into_iter()
        .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent)
        .filter_map(|m| {
            let mut mac = None;
            let mut ip = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(l) => mac = mac6(l),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => ip = Some(*i),
                    _ => {}
                }
            }
            Some((NeighEntry { ip: ip?, mac: mac? }, m))
        })
        .collect())
}

async fn add_fdb(h: &Handle, index: u32, e: FdbEntry) -> Result<()> {
    h.neighbours()
        .add_bridge(index, &e.mac)
        .destination(IpAddr::V4(e.dst))
        .flags(NeighbourFlags::Own)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(nl("add fdb", format!("{} dst {}", mac_str(&e.mac), e.dst)))
}

async fn add_neigh(h: &Handle, index: u32, e: NeighEntry) -> Result<()> {
    h.neighbours()
        .add(index, IpAddr::V4(e.ip))
        .link_layer_address(&e.mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(nl(
            "add neighbour",
            format!("{} lladdr {}", e.ip, mac_str(&e.mac)),
        ))
}

async fn del_neigh(h: &Handle, msg: NeighbourMessage, what: String) -> Result<()> {
    match h.neighbours().del(msg).execute().await {
        Ok(()) => {
            tracing::info!(entry = %what, "removed stale vxlan entry");
            Ok(())
        }
        Err(err) if matches!(errno(&err), Some(ENOENT) | Some(ESRCH)) => Ok(()),
        Err(err) => Err(nl("delete neighbour", what)(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, cidr: &str) -> RemoteNode {
        RemoteNode {
            name: name.to_string(),
            ip: ip.parse().expect("ip"),
            pod_cidr: cidr.parse().expect("cidr"),
        }
    }

    fn config(backend: Backend) -> RoutesConfig {
        RoutesConfig {
            node_name: "a".to_string(),
            node_ip: "192.0.2.1".parse().expect("ip"),
            pod_cidr: "10.42.1.0/24".parse().expect("cidr"),
            backend,
            host_netns: None,
        }
    }

    fn route(dst: &str, gw: &str, via_vxlan: bool) -> RouteEntry {
        RouteEntry {
            dst: dst.parse().expect("cidr"),
            gateway: gw.parse().expect("ip"),
            via_vxlan,
        }
    }

    #[test]
    fn host_gw_routes_each_remote_pod_cidr_via_its_node_ip() {
        let d = desired(
            &config(Backend::HostGw),
            &[
                node("b", "192.0.2.2", "10.42.2.0/24"),
                node("c", "192.0.2.3", "10.42.3.0/24"),
            ],
        );
        let want: BTreeSet<_> = [
            route("10.42.2.0/24", "192.0.2.2", false),
            route("10.42.3.0/24", "192.0.2.3", false),
        ]
        .into();
        assert_eq!(d.routes, want);
        assert!(d.fdb.is_empty() && d.neigh.is_empty());
    }

    #[test]
    fn vxlan_routes_onlink_via_remote_vtep_with_fdb_and_neighbour() {
        let d = desired(
            &config(Backend::Vxlan(VxlanConfig::default())),
            &[node("b", "192.0.2.2", "10.42.2.0/24")],
        );
        let mac = [0x0a, 0x73, 192, 0, 2, 2];
        assert_eq!(d.routes, [route("10.42.2.0/24", "10.42.2.0", true)].into());
        assert_eq!(
            d.neigh,
            [NeighEntry {
                ip: "10.42.2.0".parse().expect("ip"),
                mac
            }]
            .into()
        );
        assert_eq!(
            d.fdb,
            [FdbEntry {
                mac,
                dst: "192.0.2.2".parse().expect("ip")
            }]
            .into()
        );
    }

    #[test]
    fn desired_skips_self_and_overlapping_pod_cidrs() {
        let cases = [
            ("same name", node("a", "192.0.2.9", "10.42.9.0/24")),
            ("same ip", node("z", "192.0.2.1", "10.42.9.0/24")),
            ("own pod cidr", node("b", "192.0.2.2", "10.42.1.0/24")),
            (
                "containing own pod cidr",
                node("b", "192.0.2.2", "10.42.0.0/16"),
            ),
        ];
        for (name, n) in cases {
            let d = desired(&config(Backend::HostGw), &[n]);
            assert!(d.routes.is_empty(), "{name}");
        }
        let d = desired(
            &config(Backend::HostGw),
            &[node("b", "192.0.2.2", "10.42.1.0/24")],
        );
        assert_eq!(d.skipped.len(), 1, "an overlap is reported");
        // Two remotes claiming one CIDR: the first by name wins.
        let d = desired(
            &config(Backend::HostGw),
            &[
                node("c", "192.0.2.3", "10.42.2.0/24"),
                node("b", "192.0.2.2", "10.42.2.0/24"),
            ],
        );
        assert_eq!(d.routes, [route("10.42.2.0/24", "192.0.2.2", false)].into());
    }

    #[test]
    fn diff_adds_missing_and_removes_stale() {
        let want: BTreeSet<_> = [1, 2, 3].into();
        let have: BTreeSet<_> = [2, 3, 4].into();
        assert_eq!(diff(&want, &have), (vec![1], vec![4]));
        assert_eq!(diff(&want, &want), (vec![], vec![]));
    }

    #[test]
    fn routes_config_rejects_bad_vxlan_settings() {
        for (name, v) in [
            (
                "vni zero",
                VxlanConfig {
                    vni: 0,
                    ..Default::default()
                },
            ),
            (
                "vni too big",
                VxlanConfig {
                    vni: 1 << 24,
                    ..Default::default()
                },
            ),
            (
                "bad device",
                VxlanConfig {
                    device: "x/y".into(),
                    ..Default::default()
                },
            ),
        ] {
            assert!(Routes::new(config(Backend::Vxlan(v))).is_err(), "{name}");
        }
    }
}
