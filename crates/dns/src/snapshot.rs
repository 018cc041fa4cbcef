//! The in-memory view the answers are computed from: every Service and the
//! ready endpoints of its EndpointSlices, indexed by name, built whole from
//! the watched objects. Pure: no IO, no clock but the SOA serial passed in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use hickory_proto::rr::Name;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::Error;

/// The label an EndpointSlice names its Service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The cluster domain this server is authoritative for, and the TTL of
/// everything it answers from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    /// `cluster.local.`, lowercase, fully qualified.
    pub(crate) name: Name,
    /// `cluster.local`, lowercase, without the trailing dot.
    pub(crate) domain: String,
    /// Seconds.
    pub(crate) ttl: u32,
}

impl Zone {
    /// `domain` is the cluster domain (`cluster.local`, with or without the
    /// trailing dot); `ttl` is rounded down to whole seconds.
    pub fn new(domain: &str, ttl: Duration) -> Result<Zone, Error> {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let name = Name::from_ascii(format!("{domain}."))
            .ok()
            .filter(|n| !domain.is_empty() && !n.is_root())
            .ok_or_else(|| Error::InvalidDomain(domain.clone()))?;
        let ttl = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX);
        Ok(Zone { name, domain, ttl })
    }

    /// The zone's name, `cluster.local.`.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// A name under the zone from its labels joined by dots (`web.default.svc`).
    pub(crate) fn fqdn(&self, relative: &str) -> Option<Name> {
        Name::from_ascii(format!("{relative}.{}.", self.domain)).ok()
    }
}

/// What a Service answers with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ServiceKind {
    /// A virtual IP per family (none yet if not allocated).
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: the ready endpoints' addresses.
    Headless,
    /// `type: ExternalName`: a CNAME to this name.
    ExternalName(Name),
}

/// A port of a Service or an EndpointSlice: name and protocol lowercase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PortRecord {
    pub(crate) name: Option<String>,
    pub(crate) protocol: String,
    pub(crate) port: u16,
}

/// One endpoint's address, the label it is known by under its Service (its
/// `hostname`, else its address with dashes) and its slice's ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EndpointRecord {
    pub(crate) address: IpAddr,
    pub(crate) name: String,
    pub(crate) ports: Vec<PortRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceRecord {
    pub(crate) kind: ServiceKind,
    pub(crate) ports: Vec<PortRecord>,
    /// Ready endpoints (all of them for `publishNotReadyAddresses`), in a
    /// stable order; an address may repeat across slices.
    pub(crate) endpoints: Vec<EndpointRecord>,
    pub(crate) publish_not_ready_addresses: bool,
}

/// Everything the answers need, built whole from the watched objects and
/// swapped in atomically, so one query never sees half an update.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub(crate) zone: Zone,
    /// False until the watches listed everything once: until then names in
    /// the zone are answered SERVFAIL, never a (cacheable) NXDOMAIN.
    pub(crate) synced: bool,
    pub(crate) serial: u32,
    /// By (namespace, name).
    pub(crate) services: BTreeMap<(String, String), ServiceRecord>,
    pub(crate) namespaces: HashSet<String>,
    /// IP → the names its PTR answers with.
    pub(crate) reverse: HashMap<IpAddr, Vec<Name>>,
}

impl Snapshot {
    /// What is served before the first list completes: nothing, unsynced.
    pub fn empty(zone: Zone) -> Snapshot {
        Snapshot {
            zone,
            synced: false,
            serial: 0,
            services: BTreeMap::new(),
            namespaces: HashSet::new(),
            reverse: HashMap::new(),
        }
    }

    /// The snapshot of these objects; `serial` is the SOA serial (the
    /// server passes the build time in seconds).
    pub fn build<'a>(
        zone: Zone,
        serial: u32,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Snapshot {
        let mut snapshot = Snapshot {
            synced: true,
            serial,
            ..Snapshot::empty(zone)
        };
        for svc in services {
            let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
                continue;
            };
            let Some(record) = service_record(svc) else {
                continue;
            };
            snapshot.namespaces.insert(ns.to_ascii_lowercase());
            snapshot
                .services
                .insert((ns.to_ascii_lowercase(), name.to_ascii_lowercase()), record);
        }
        snapshot.add_slices(slices);
        snapshot.index_reverse();
        snapshot
    }

    fn add_slices<'a>(&mut self, slices: impl IntoIterator<Item = &'a EndpointSlice>) {
        let mut slices: Vec<&EndpointSlice> = slices.into_iter().collect();
        slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for slice in slices {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let Some(ns) = &slice.metadata.namespace else {
                continue;
            };
            let Some(svc) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            let key = (ns.to_ascii_lowercase(), svc.to_ascii_lowercase());
            let Some(service) = self.services.get_mut(&key) else {
                continue;
            };
            if matches!(service.kind, ServiceKind::ExternalName(_)) {
                continue;
            }
            let ports: Vec<PortRecord> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    port_record(
                        p.name.as_deref(),
                        p.protocol.as_deref(),
                        p.port.unwrap_or(-1),
                    )
                })
                .collect();
            for ep in &slice.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                if !ready && !service.publish_not_ready_addresses {
                    continue;
                }
                // Consumers use the first address (the API's contract).
                let Some(address) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok())
                else {
                    continue;
                };
                let name = ep
                    .hostname
                    .as_deref()
                    .filter(|h| !h.is_empty())
                    .map(str::to_ascii_lowercase)
                    .unwrap_or_else(|| dashed(address));
                service.endpoints.push(EndpointRecord {
                    address,
                    name,
                    ports: ports.clone(),
                });
            }
        }
    }

    fn index_reverse(&mut self) {
        let mut reverse: HashMap<IpAddr, Vec<Name>> = HashMap::new();
        for ((ns, name), svc) in &self.services {
            match &svc.kind {
                ServiceKind::ClusterIp(ips) => {
                    if let Some(fqdn) = self.zone.fqdn(&format!("{name}.{ns}.svc")) {
                        for ip in ips {
                            reverse.entry(*ip).or_default().push(fqdn.clone());
                        }
                    }
                }
                ServiceKind::Headless => {
                    for ep in &svc.endpoints {
                        if let Some(fqdn) = self.zone.fqdn(&format!("{}.{name}.{ns}.svc", ep.name))
                        {
                            let names = reverse.entry(ep.address).or_default();
                            if !names.contains(&fqdn) {
                                names.push(fqdn);
                            }
                        }
                    }
                }
                ServiceKind::ExternalName(_) => {}
            }
        }
        self.reverse = reverse;
    }

    /// Whether the watches have listed everything once.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The zone this snapshot answers for.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }
}

/// A Service's record, or `None` for one DNS cannot serve (an ExternalName
/// that is not a name).
fn service_record(svc: &Service) -> Option<ServiceRecord> {
    let spec = svc.spec.as_ref()?;
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| port_record(p.name.as_deref(), p.protocol.as_deref(), p.port))
        .collect();
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        let target = spec.external_name.as_deref()?.trim_end_matches('.');
        ServiceKind::ExternalName(Name::from_ascii(format!("{target}.")).ok()?)
    } else if spec.cluster_ip.as_deref() == Some("None") {
        ServiceKind::Headless
    } else {
        let ips = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ips.clone(),
            _ => spec.cluster_ip.iter().cloned().collect(),
        };
        ServiceKind::ClusterIp(ips.iter().filter_map(|ip| ip.parse().ok()).collect())
    };
    Some(ServiceRecord {
        kind,
        ports,
        endpoints: Vec::new(),
        publish_not_ready_addresses: spec.publish_not_ready_addresses == Some(true),
    })
}

fn port_record(name: Option<&str>, protocol: Option<&str>, port: i32) -> Option<PortRecord> {
    Some(PortRecord {
        name: name.filter(|n| !n.is_empty()).map(str::to_ascii_lowercase),
        protocol: protocol.unwrap_or("TCP").to_ascii_lowercase(),
        port: u16::try_from(port).ok().filter(|p| *p != 0)?,
    })
}

/// An address as one DNS label: `10-42-0-9`, `fd00--1`.
pub(crate) fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}
