//! The answers, as a pure function of one question and a [`Snapshot`]: the
//! names CoreDNS's `kubernetes` plugin serves (with `pods insecure` and the
//! reverse zones it falls through from), and [`Answer::Forward`] for every
//! other name.
//!
//! Names under the cluster domain (`<zone>`):
//! - `<svc>.<ns>.svc.<zone>`: A/AAAA of the ClusterIPs; of the ready
//!   endpoints for a headless service; CNAME for an ExternalName service;
//!   SRV for every port.
//! - `<ep>.<svc>.<ns>.svc.<zone>`: A/AAAA of the endpoints whose `hostname`
//!   (or dashed address) is `<ep>`.
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>`: SRV for a named port,
//!   targeting the service name, or each endpoint's name when headless.
//! - `<a-b-c-d>.<ns>.pod.<zone>`: A (AAAA for a dashed IPv6 address).
//! - Anything else in the zone: NXDOMAIN; a name that exists without the
//!   asked type: NOERROR without answers. Both carry the zone's SOA in the
//!   authority section, so resolvers cache the negative answer for a TTL.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::snapshot::{EndpointRecord, PortRecord, ServiceKind, ServiceRecord, Snapshot};

/// SOA timers, CoreDNS's: refresh, retry, expire.
const SOA_REFRESH: i32 = 7200;
const SOA_RETRY: i32 = 1800;
const SOA_EXPIRE: i32 = 86400;

/// What to do with one question.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// The name is ours (the cluster domain, or the reverse name of an IP we
    /// know): this is the whole response.
    Zone(Response),
    /// Not ours: ask the upstream servers.
    Forward,
}

/// An authoritative response's code and sections.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub code: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

impl Response {
    fn code(code: ResponseCode) -> Response {
        Response {
            code,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

/// The answer to `query` from `snapshot`.
pub fn answer(query: &Query, snapshot: &Snapshot) -> Answer {
    let lower = query.name().to_lowercase();
    if snapshot.zone.name.zone_of(&lower) {
        return Answer::Zone(Zone { snapshot, query }.answer(&lower));
    }
    if query.query_type() == RecordType::PTR
        && query.query_class() == DNSClass::IN
        && snapshot.synced
        && let Some(response) = reverse(query, &lower, snapshot)
    {
        return Answer::Zone(response);
    }
    Answer::Forward
}

/// PTR for a ClusterIP or a headless endpoint; `None` (forward) for any
/// other address, as CoreDNS falls through for the reverse zones.
fn reverse(query: &Query, lower: &Name, snapshot: &Snapshot) -> Option<Response> {
    let net = lower.parse_arpa_name().ok()?;
    if net.prefix_len() != net.max_prefix_len() {
        return None;
    }
    let names = snapshot.reverse.get(&net.addr())?;
    let answers = names
        .iter()
        .map(|n| {
            Record::from_rdata(
                query.name().clone(),
                snapshot.zone.ttl,
                RData::PTR(PTR(n.clone())),
            )
        })
        .collect();
    Some(Response {
        answers,
        ..Response::code(ResponseCode::NoError)
    })
}

/// One question under the cluster domain.
struct Zone<'a> {
    snapshot: &'a Snapshot,
    query: &'a Query,
}

impl Zone<'_> {
    fn answer(&self, lower: &Name) -> Response {
        if !self.snapshot.synced {
            return Response::code(ResponseCode::ServFail);
        }
        if self.query.query_class() != DNSClass::IN
            || matches!(self.qtype(), RecordType::AXFR | RecordType::IXFR)
        {
            return Response::code(ResponseCode::Refused);
        }
        let zone_labels = self.snapshot.zone.name.iter().count();
        let all: Vec<String> = lower
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let labels: Vec<&str> = all[..all.len().saturating_sub(zone_labels)]
            .iter()
            .map(String::as_str)
            .collect();
        match labels.as_slice() {
            [] => self.apex(),
            ["svc"] | ["pod"] | [_, "pod"] => self.nodata(),
            [ns, "svc"] => {
                if self.snapshot.namespaces.contains(*ns) {
                    self.nodata()
                } else {
                    self.nxdomain()
                }
            }
            [svc, ns, "svc"] => self.service(ns, svc),
            [ep, svc, ns, "svc"] => self.endpoint(ns, svc, ep),
            [port, proto, svc, ns, "svc"] => self.port(ns, svc, port, proto),
            [ip, _ns, "pod"] => self.pod(ip),
            _ => self.nxdomain(),
        }
    }

    fn qtype(&self) -> RecordType {
        self.query.query_type()
    }

    fn ttl(&self) -> u32 {
        self.snapshot.zone.ttl
    }

    fn owner(&self) -> Name {
        self.query.name().clone()
    }

    fn soa(&self) -> Record {
        let zone = &self.snapshot.zone;
        let mname = zone.fqdn("ns.dns").unwrap_or_else(|| zone.name.clone());
        let rname = zone.fqdn("hostmaster").unwrap_or_else(|| zone.name.clone());
        Record::from_rdata(
            zone.name.clone(),
            zone.ttl,
            RData::SOA(SOA::new(
                mname,
                rname,
                self.snapshot.serial,
                SOA_REFRESH,
                SOA_RETRY,
                SOA_EXPIRE,
                zone.ttl,
            )),
        )
    }

    /// The SOA as the answer to the asked name (its case kept).
    fn owned_soa(&self) -> Record {
        let mut soa = self.soa();
        soa.name = self.owner();
        soa
    }

    fn negative(&self, code: ResponseCode) -> Response {
        Response {
            authorities: vec![self.soa()],
            ..Response::code(code)
        }
    }

    fn nxdomain(&self) -> Response {
        self.negative(ResponseCode::NXDomain)
    }

    fn nodata(&self) -> Response {
        self.negative(ResponseCode::NoError)
    }

    /// `answers` for a name that exists: NODATA when there are none.
    fn found(&self, answers: Vec<Record>, additionals: Vec<Record>) -> Response {
        if answers.is_empty() {
            return self.nodata();
        }
        Response {
            answers,
            additionals,
            ..Response::code(ResponseCode::NoError)
        }
    }

    fn apex(&self) -> Response {
        let zone = &self.snapshot.zone;
        let ns = || {
            zone.fqdn("ns.dns")
                .map(|n| Record::from_rdata(self.owner(), zone.ttl, RData::NS(NS(n))))
        };
        let answers = match self.qtype() {
            RecordType::SOA => vec![self.owned_soa()],
            RecordType::NS => ns().into_iter().collect(),
            RecordType::ANY => {
                let mut all = vec![self.owned_soa()];
                all.extend(ns());
                all
            }
            _ => Vec::new(),
        };
        self.found(answers, Vec::new())
    }

    fn lookup(&self, ns: &str, svc: &str) -> Option<&ServiceRecord> {
        self.snapshot
            .services
            .get(&(ns.to_string(), svc.to_string()))
    }

    fn service(&self, ns: &str, name: &str) -> Response {
        let Some(svc) = self.lookup(ns, name) else {
            return self.nxdomain();
        };
        if let ServiceKind::ExternalName(target) = &svc.kind {
            let cname = Record::from_rdata(
                self.owner(),
                self.ttl(),
                RData::CNAME(CNAME(target.clone())),
            );
            return self.found(vec![cname], Vec::new());
        }
        if self.qtype() == RecordType::SRV {
            let (answers, additionals) = self.srv(ns, name, svc, None);
            return self.found(answers, additionals);
        }
        let answers = match &svc.kind {
            ServiceKind::ClusterIp(ips) => self.addresses(self.owner(), ips.iter().copied()),
            _ => self.addresses(self.owner(), svc.endpoints.iter().map(|e| e.address)),
        };
        self.found(answers, Vec::new())
    }

    fn endpoint(&self, ns: &str, name: &str, ep: &str) -> Response {
        let Some(svc) = self.lookup(ns, name) else {
            return self.nxdomain();
        };
        let matching: Vec<&EndpointRecord> =
            svc.endpoints.iter().filter(|e| e.name == ep).collect();
        if matching.is_empty() {
            return self.nxdomain();
        }
        let answers = self.addresses(self.owner(), matching.iter().map(|e| e.address));
        self.found(answers, Vec::new())
    }

    fn port(&self, ns: &str, name: &str, port: &str, proto: &str) -> Response {
        let (Some(port), Some(proto)) = (port.strip_prefix('_'), proto.strip_prefix('_')) else {
            return self.nxdomain();
        };
        let Some(svc) = self.lookup(ns, name) else {
            return self.nxdomain();
        };
        let filter = (port, proto);
        let exists = svc
            .ports
            .iter()
            .chain(svc.endpoints.iter().flat_map(|e| &e.ports))
            .any(|p| matches_port(p, filter));
        if !exists || matches!(svc.kind, ServiceKind::ExternalName(_)) {
            return self.nxdomain();
        }
        if self.qtype() != RecordType::SRV {
            return self.nodata();
        }
        let (answers, additionals) = self.srv(ns, name, svc, Some(filter));
        self.found(answers, additionals)
    }

    /// SRV records (and the targets' addresses, as additionals) for the
    /// ports of `svc` that pass `filter` (every port when `None`).
    fn srv(
        &self,
        ns: &str,
        name: &str,
        svc: &ServiceRecord,
        filter: Option<(&str, &str)>,
    ) -> (Vec<Record>, Vec<Record>) {
        let wanted = |p: &PortRecord| filter.is_none_or(|f| matches_port(p, f));
        // (target, port), then the target's addresses.
        let mut targets: Vec<(Name, u16)> = Vec::new();
        let mut additionals = Vec::new();
        let zone = &self.snapshot.zone;
        match &svc.kind {
            ServiceKind::ClusterIp(ips) => {
                let Some(target) = zone.fqdn(&format!("{name}.{ns}.svc")) else {
                    return (Vec::new(), Vec::new());
                };
                for p in svc.ports.iter().filter(|p| wanted(p)) {
                    push_unique(&mut targets, (target.clone(), p.port));
                }
                if !targets.is_empty() {
                    additionals = self.addresses_of_any(target, ips.iter().copied());
                }
            }
            ServiceKind::Headless => {
                for ep in &svc.endpoints {
                    let Some(target) = zone.fqdn(&format!("{}.{name}.{ns}.svc", ep.name)) else {
                        continue;
                    };
                    let mut any = false;
                    for p in ep.ports.iter().filter(|p| wanted(p)) {
                        push_unique(&mut targets, (target.clone(), p.port));
                        any = true;
                    }
                    if any {
                        for r in self.addresses_of_any(target, [ep.address].into_iter()) {
                            if !additionals.contains(&r) {
                                additionals.push(r);
                            }
                        }
                    }
                }
            }
            ServiceKind::ExternalName(_) => {}
        }
        let weight = u16::try_from(100 / targets.len().max(1))
            .unwrap_or(1)
            .max(1);
        let answers = targets
            .into_iter()
            .map(|(target, port)| {
                Record::from_rdata(
                    self.owner(),
                    self.ttl(),
                    RData::SRV(SRV::new(0, weight, port, target)),
                )
            })
            .collect();
        (answers, additionals)
    }

    fn pod(&self, label: &str) -> Response {
        let Some(ip) = undashed(label) else {
            return self.nxdomain();
        };
        let answers = self.addresses(self.owner(), [ip].into_iter());
        self.found(answers, Vec::new())
    }

    /// Address records of the asked family (both for ANY), deduplicated.
    fn addresses(&self, owner: Name, ips: impl Iterator<Item = IpAddr>) -> Vec<Record> {
        let (v4, v6) = match self.qtype() {
            RecordType::A => (true, false),
            RecordType::AAAA => (false, true),
            RecordType::ANY => (true, true),
            _ => (false, false),
        };
        address_records(owner, ips, v4, v6, self.ttl())
    }

    /// Address records of both families (for SRV additionals).
    fn addresses_of_any(&self, owner: Name, ips: impl Iterator<Item = IpAddr>) -> Vec<Record> {
        address_records(owner, ips, true, true, self.ttl())
    }
}

fn address_records(
    owner: Name,
    ips: impl Iterator<Item = IpAddr>,
    v4: bool,
    v6: bool,
    ttl: u32,
) -> Vec<Record> {
    let mut seen = Vec::new();
    for ip in ips {
        let wanted = if ip.is_ipv4() { v4 } else { v6 };
        if wanted && !seen.contains(&ip) {
            seen.push(ip);
        }
    }
    seen.into_iter()
        .map(|ip| {
            let data = match ip {
                IpAddr::V4(v4) => RData::A(A(v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
            };
            Record::from_rdata(owner.clone(), ttl, data)
        })
        .collect()
}

fn matches_port(p: &PortRecord, (name, proto): (&str, &str)) -> bool {
    p.name.as_deref() == Some(name) && p.protocol == proto
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, item: T) {
    if !v.contains(&item) {
        v.push(item);
    }
}

/// `10-42-0-9` → 10.42.0.9; `fd00--1` → fd00::1.
fn undashed(label: &str) -> Option<IpAddr> {
    if label.matches('-').count() == 3
        && let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>()
    {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    use super::*;
    use crate::snapshot::Zone;

    fn service(ns: &str, name: &str, spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": spec,
        }))
        .unwrap()
    }

    fn slice(
        ns: &str,
        name: &str,
        svc: &str,
        family: &str,
        endpoints: serde_json::Value,
        ports: serde_json::Value,
    ) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name,
                "labels": {"kubernetes.io/service-name": svc}},
            "addressType": family,
            "endpoints": endpoints,
            "ports": ports,
        }))
        .unwrap()
    }

    /// The cluster every table row asks about.
    fn fixture() -> Snapshot {
        let services = [
            service(
                "default",
                "web",
                json!({"clusterIP": "10.43.0.77", "clusterIPs": ["10.43.0.77", "fd00:43::77"],
                    "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"},
                              {"port": 8080}]}),
            ),
            service(
                "other",
                "web",
                json!({"clusterIP": "10.43.0.88", "ports": [{"name": "http", "port": 80}]}),
            ),
            service(
                "default",
                "db",
                json!({"clusterIP": "None", "ports": [{"name": "mysql", "port": 3306}]}),
            ),
            service("default", "empty", json!({"clusterIP": "None"})),
            service(
                "default",
                "ext",
                json!({"type": "ExternalName", "externalName": "db.example.com"}),
            ),
            service(
                "default",
                "late",
                json!({"clusterIP": "None", "publishNotReadyAddresses": true}),
            ),
            service("default", "v6", json!({"clusterIP": "None"})),
        ];
        let slices = [
            slice(
                "default",
                "db-abc",
                "db",
                "IPv4",
                json!([
                    {"addresses": ["10.42.0.10"], "hostname": "db-0", "conditions": {"ready": true}},
                    {"addresses": ["10.42.0.11"], "hostname": "db-1", "conditions": {"ready": true}},
                    {"addresses": ["10.42.0.12"], "hostname": "db-2", "conditions": {"ready": false}},
                    {"addresses": ["10.42.0.13"]},
                ]),
                json!([{"name": "mysql", "port": 3306, "protocol": "TCP"}]),
            ),
            // The same endpoint in a second slice (a transition): answered once.
            slice(
                "default",
                "db-def",
                "db",
                "IPv4",
                json!([{"addresses": ["10.42.0.10"], "hostname": "db-0"}]),
                json!([{"name": "mysql", "port": 3306, "protocol": "TCP"}]),
            ),
            slice(
                "default",
                "late-1",
                "late",
                "IPv4",
                json!([{"addresses": ["10.42.0.20"], "conditions": {"ready": false}}]),
                json!([]),
            ),
            slice(
                "default",
                "v6-1",
                "v6",
                "IPv6",
                json!([{"addresses": ["fd00:42::5"], "hostname": "h"}]),
                json!([]),
            ),
            slice(
                "default",
                "gone-1",
                "gone",
                "IPv4",
                json!([{"addresses": ["10.42.0.99"]}]),
                json!([]),
            ),
            slice(
                "default",
                "fqdn-1",
                "db",
                "FQDN",
                json!([{"addresses": ["db.example.com"]}]),
                json!([]),
            ),
        ];
        let zone = Zone::new("cluster.local", Duration::from_secs(5)).unwrap();
        Snapshot::build(zone, 42, &services, &slices)
    }

    fn render(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data))
            .collect()
    }

    const SOA: &str =
        "cluster.local. 5 SOA ns.dns.cluster.local. hostmaster.cluster.local. 42 7200 1800 86400 5";

    struct Case {
        name: &'static str,
        qname: &'static str,
        qtype: RecordType,
        code: ResponseCode,
        answers: &'static [&'static str],
        /// The SOA in the authority section (negative answers).
        soa: bool,
        additionals: &'static [&'static str],
    }

    fn ok(
        name: &'static str,
        qname: &'static str,
        qtype: RecordType,
        answers: &'static [&'static str],
    ) -> Case {
        Case {
            name,
            qname,
            qtype,
            code: ResponseCode::NoError,
            answers,
            soa: false,
            additionals: &[],
        }
    }

    fn nodata(name: &'static str, qname: &'static str, qtype: RecordType) -> Case {
        Case {
            soa: true,
            ..ok(name, qname, qtype, &[])
        }
    }

    fn nxdomain(name: &'static str, qname: &'static str, qtype: RecordType) -> Case {
        Case {
            code: ResponseCode::NXDomain,
            ..nodata(name, qname, qtype)
        }
    }

    fn check(snapshot: &Snapshot, cases: &[Case]) {
        for case in cases {
            let query = Query::query(Name::from_ascii(case.qname).unwrap(), case.qtype);
            let Answer::Zone(got) = answer(&query, snapshot) else {
                panic!("{}: forwarded, want an answer", case.name);
            };
            assert_eq!(got.code, case.code, "{}: code", case.name);
            assert_eq!(render(&got.answers), case.answers, "{}: answers", case.name);
            let want_soa: Vec<&str> = if case.soa { vec![SOA] } else { vec![] };
            assert_eq!(
                render(&got.authorities),
                want_soa,
                "{}: authorities",
                case.name
            );
            assert_eq!(
                render(&got.additionals),
                case.additionals,
                "{}: additionals",
                case.name
            );
        }
    }

    use RecordType::{A, AAAA, ANY, CNAME, MX, NS, PTR, SOA as SOA_TYPE, SRV, TXT};

    #[test]
    fn service_names_answer_cluster_ips_and_endpoints() {
        check(
            &fixture(),
            &[
                ok(
                    "cluster ip",
                    "web.default.svc.cluster.local.",
                    A,
                    &["web.default.svc.cluster.local. 5 A 10.43.0.77"],
                ),
                ok(
                    "cluster ip, ipv6 family",
                    "web.default.svc.cluster.local.",
                    AAAA,
                    &["web.default.svc.cluster.local. 5 AAAA fd00:43::77"],
                ),
                ok(
                    "any gives both families",
                    "web.default.svc.cluster.local.",
                    ANY,
                    &[
                        "web.default.svc.cluster.local. 5 A 10.43.0.77",
                        "web.default.svc.cluster.local. 5 AAAA fd00:43::77",
                    ],
                ),
                ok(
                    "names are case-insensitive and keep the asked case",
                    "Web.Default.SVC.Cluster.Local.",
                    A,
                    &["Web.Default.SVC.Cluster.Local. 5 A 10.43.0.77"],
                ),
                ok(
                    "same name in another namespace",
                    "web.other.svc.cluster.local.",
                    A,
                    &["web.other.svc.cluster.local. 5 A 10.43.0.88"],
                ),
                ok(
                    "headless gives ready endpoints once each",
                    "db.default.svc.cluster.local.",
                    A,
                    &[
                        "db.default.svc.cluster.local. 5 A 10.42.0.10",
                        "db.default.svc.cluster.local. 5 A 10.42.0.11",
                        "db.default.svc.cluster.local. 5 A 10.42.0.13",
                    ],
                ),
                ok(
                    "headless with publishNotReadyAddresses includes not ready",
                    "late.default.svc.cluster.local.",
                    A,
                    &["late.default.svc.cluster.local. 5 A 10.42.0.20"],
                ),
                ok(
                    "headless ipv6 endpoints answer aaaa",
                    "v6.default.svc.cluster.local.",
                    AAAA,
                    &["v6.default.svc.cluster.local. 5 AAAA fd00:42::5"],
                ),
                nodata(
                    "headless ipv6 endpoints have no a",
                    "v6.default.svc.cluster.local.",
                    A,
                ),
                nodata(
                    "headless without endpoints exists without data",
                    "empty.default.svc.cluster.local.",
                    A,
                ),
                nodata(
                    "a type services do not have",
                    "web.default.svc.cluster.local.",
                    TXT,
                ),
                nxdomain("missing service", "nope.default.svc.cluster.local.", A),
                nxdomain(
                    "service in a namespace it is not in",
                    "db.other.svc.cluster.local.",
                    A,
                ),
            ],
        );
    }

    #[test]
    fn endpoint_names_answer_hostnames_and_dashed_addresses() {
        check(
            &fixture(),
            &[
                ok(
                    "statefulset pod hostname",
                    "db-0.db.default.svc.cluster.local.",
                    A,
                    &["db-0.db.default.svc.cluster.local. 5 A 10.42.0.10"],
                ),
                ok(
                    "endpoint without hostname by dashed address",
                    "10-42-0-13.db.default.svc.cluster.local.",
                    A,
                    &["10-42-0-13.db.default.svc.cluster.local. 5 A 10.42.0.13"],
                ),
                ok(
                    "ipv6 endpoint hostname",
                    "h.v6.default.svc.cluster.local.",
                    AAAA,
                    &["h.v6.default.svc.cluster.local. 5 AAAA fd00:42::5"],
                ),
                nxdomain(
                    "not ready endpoint is not a name",
                    "db-2.db.default.svc.cluster.local.",
                    A,
                ),
                nxdomain("unknown hostname", "db-9.db.default.svc.cluster.local.", A),
                nodata(
                    "hostname without the asked family",
                    "db-1.db.default.svc.cluster.local.",
                    AAAA,
                ),
            ],
        );
    }

    #[test]
    fn srv_names_answer_named_ports() {
        check(
            &fixture(),
            &[
                Case {
                    additionals: &[
                        "web.default.svc.cluster.local. 5 A 10.43.0.77",
                        "web.default.svc.cluster.local. 5 AAAA fd00:43::77",
                    ],
                    ..ok(
                        "named port of a cluster ip service targets the service",
                        "_http._tcp.web.default.svc.cluster.local.",
                        SRV,
                        &[
                            "_http._tcp.web.default.svc.cluster.local. 5 SRV 0 100 80 web.default.svc.cluster.local.",
                        ],
                    )
                },
                Case {
                    additionals: &[
                        "web.default.svc.cluster.local. 5 A 10.43.0.77",
                        "web.default.svc.cluster.local. 5 AAAA fd00:43::77",
                    ],
                    ..ok(
                        "udp port",
                        "_dns._udp.web.default.svc.cluster.local.",
                        SRV,
                        &[
                            "_dns._udp.web.default.svc.cluster.local. 5 SRV 0 100 53 web.default.svc.cluster.local.",
                        ],
                    )
                },
                Case {
                    additionals: &[
                        "db-0.db.default.svc.cluster.local. 5 A 10.42.0.10",
                        "db-1.db.default.svc.cluster.local. 5 A 10.42.0.11",
                        "10-42-0-13.db.default.svc.cluster.local. 5 A 10.42.0.13",
                    ],
                    ..ok(
                        "headless named port targets each ready endpoint",
                        "_mysql._tcp.db.default.svc.cluster.local.",
                        SRV,
                        &[
                            "_mysql._tcp.db.default.svc.cluster.local. 5 SRV 0 33 3306 db-0.db.default.svc.cluster.local.",
                            "_mysql._tcp.db.default.svc.cluster.local. 5 SRV 0 33 3306 db-1.db.default.svc.cluster.local.",
                            "_mysql._tcp.db.default.svc.cluster.local. 5 SRV 0 33 3306 10-42-0-13.db.default.svc.cluster.local.",
                        ],
                    )
                },
                Case {
                    additionals: &[
                        "web.default.svc.cluster.local. 5 A 10.43.0.77",
                        "web.default.svc.cluster.local. 5 AAAA fd00:43::77",
                    ],
                    ..ok(
                        "srv on the service name lists every port",
                        "web.default.svc.cluster.local.",
                        SRV,
                        &[
                            "web.default.svc.cluster.local. 5 SRV 0 33 80 web.default.svc.cluster.local.",
                            "web.default.svc.cluster.local. 5 SRV 0 33 53 web.default.svc.cluster.local.",
                            "web.default.svc.cluster.local. 5 SRV 0 33 8080 web.default.svc.cluster.local.",
                        ],
                    )
                },
                nxdomain(
                    "wrong protocol",
                    "_http._udp.web.default.svc.cluster.local.",
                    SRV,
                ),
                nxdomain(
                    "unknown port name",
                    "_https._tcp.web.default.svc.cluster.local.",
                    SRV,
                ),
                nxdomain(
                    "labels without underscores",
                    "http.tcp.web.default.svc.cluster.local.",
                    SRV,
                ),
                nodata(
                    "port name asked for an address",
                    "_http._tcp.web.default.svc.cluster.local.",
                    A,
                ),
            ],
        );
    }

    #[test]
    fn external_name_services_answer_cname() {
        check(
            &fixture(),
            &[
                ok(
                    "cname asked",
                    "ext.default.svc.cluster.local.",
                    CNAME,
                    &["ext.default.svc.cluster.local. 5 CNAME db.example.com."],
                ),
                ok(
                    "cname for an address question",
                    "ext.default.svc.cluster.local.",
                    A,
                    &["ext.default.svc.cluster.local. 5 CNAME db.example.com."],
                ),
            ],
        );
    }

    #[test]
    fn pod_names_answer_their_dashed_address() {
        check(
            &fixture(),
            &[
                ok(
                    "ipv4 pod",
                    "10-42-0-9.default.pod.cluster.local.",
                    A,
                    &["10-42-0-9.default.pod.cluster.local. 5 A 10.42.0.9"],
                ),
                ok(
                    "any namespace (pods insecure)",
                    "10-42-0-9.whatever.pod.cluster.local.",
                    A,
                    &["10-42-0-9.whatever.pod.cluster.local. 5 A 10.42.0.9"],
                ),
                ok(
                    "ipv6 pod",
                    "fd00-42--9.default.pod.cluster.local.",
                    AAAA,
                    &["fd00-42--9.default.pod.cluster.local. 5 AAAA fd00:42::9"],
                ),
                nodata(
                    "ipv4 pod has no aaaa",
                    "10-42-0-9.default.pod.cluster.local.",
                    AAAA,
                ),
                nxdomain("not an address", "not-an-ip.default.pod.cluster.local.", A),
                nxdomain(
                    "out of range octet",
                    "10-42-0-999.default.pod.cluster.local.",
                    A,
                ),
            ],
        );
    }

    #[test]
    fn other_names_in_the_zone_are_nxdomain_or_nodata_with_soa() {
        check(
            &fixture(),
            &[
                Case {
                    answers: &[
                        "cluster.local. 5 SOA ns.dns.cluster.local. hostmaster.cluster.local. 42 7200 1800 86400 5",
                    ],
                    ..ok("apex soa", "cluster.local.", SOA_TYPE, &[])
                },
                ok(
                    "apex ns",
                    "cluster.local.",
                    NS,
                    &["cluster.local. 5 NS ns.dns.cluster.local."],
                ),
                nodata("apex without the type", "cluster.local.", A),
                nodata("svc subdomain", "svc.cluster.local.", A),
                nodata("namespace with services", "default.svc.cluster.local.", A),
                nxdomain(
                    "namespace without services",
                    "empty-ns.svc.cluster.local.",
                    A,
                ),
                nodata("pod subdomain", "pod.cluster.local.", A),
                nxdomain("unknown subdomain", "foo.cluster.local.", A),
                nxdomain(
                    "search-path expansion of an external name",
                    "example.com.default.svc.cluster.local.",
                    A,
                ),
                nxdomain("too many labels", "a.b.c.web.default.svc.cluster.local.", A),
                nodata("mx for a service", "web.default.svc.cluster.local.", MX),
            ],
        );
    }

    #[test]
    fn names_outside_the_zone_are_forwarded() {
        let snapshot = fixture();
        for (qname, qtype) in [
            ("example.com.", A),
            ("cluster.local.example.com.", A),
            ("local.", SOA_TYPE),
            (".", NS),
            // Reverse names of addresses the cluster does not know.
            ("9.0.42.10.in-addr.arpa.", PTR),
            // Only PTR is answered from the reverse zones.
            ("77.0.43.10.in-addr.arpa.", TXT),
        ] {
            let query = Query::query(Name::from_ascii(qname).unwrap(), qtype);
            assert_eq!(
                answer(&query, &snapshot),
                Answer::Forward,
                "{qname} {qtype}"
            );
        }
    }

    #[test]
    fn reverse_names_of_cluster_ips_and_headless_endpoints_answer_ptr() {
        let snapshot = fixture();
        for (qname, want) in [
            (
                "77.0.43.10.in-addr.arpa.",
                "77.0.43.10.in-addr.arpa. 5 PTR web.default.svc.cluster.local.",
            ),
            (
                "10.0.42.10.in-addr.arpa.",
                "10.0.42.10.in-addr.arpa. 5 PTR db-0.db.default.svc.cluster.local.",
            ),
            (
                "7.7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.4.0.0.0.0.d.f.ip6.arpa.",
                "7.7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.4.0.0.0.0.d.f.ip6.arpa. 5 PTR web.default.svc.cluster.local.",
            ),
        ] {
            let query = Query::query(Name::from_ascii(qname).unwrap(), PTR);
            let Answer::Zone(got) = answer(&query, &snapshot) else {
                panic!("{qname}: forwarded");
            };
            assert_eq!(render(&got.answers), vec![want], "{qname}");
        }
    }

    #[test]
    fn before_the_first_sync_zone_names_are_servfail_not_nxdomain() {
        let zone = Zone::new("cluster.local", Duration::from_secs(5)).unwrap();
        let snapshot = Snapshot::empty(zone);
        let query = Query::query(
            Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
            A,
        );
        let Answer::Zone(got) = answer(&query, &snapshot) else {
            panic!("forwarded");
        };
        assert_eq!(got.code, ResponseCode::ServFail);
        let outside = Query::query(Name::from_ascii("example.com.").unwrap(), A);
        assert_eq!(answer(&outside, &snapshot), Answer::Forward);
    }

    #[test]
    fn zone_transfers_and_other_classes_are_refused() {
        let snapshot = fixture();
        let mut chaos = Query::query(
            Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
            A,
        );
        chaos.set_query_class(DNSClass::CH);
        let axfr = Query::query(
            Name::from_ascii("cluster.local.").unwrap(),
            RecordType::AXFR,
        );
        for query in [chaos, axfr] {
            let Answer::Zone(got) = answer(&query, &snapshot) else {
                panic!("forwarded");
            };
            assert_eq!(got.code, ResponseCode::Refused, "{query}");
        }
    }

    #[test]
    fn cluster_domain_is_configurable() {
        let zone = Zone::new("Skiff.Internal.", Duration::from_secs(30)).unwrap();
        let services = [service(
            "default",
            "web",
            json!({"clusterIP": "10.43.0.77"}),
        )];
        let snapshot = Snapshot::build(zone, 1, &services, &[]);
        let query = Query::query(
            Name::from_ascii("web.default.svc.skiff.internal.").unwrap(),
            A,
        );
        let Answer::Zone(got) = answer(&query, &snapshot) else {
            panic!("forwarded");
        };
        assert_eq!(
            render(&got.answers),
            vec!["web.default.svc.skiff.internal. 30 A 10.43.0.77"]
        );
        let old = Query::query(
            Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
            A,
        );
        assert_eq!(answer(&old, &snapshot), Answer::Forward);
        assert!(Zone::new("", Duration::from_secs(5)).is_err());
        assert!(Zone::new(".", Duration::from_secs(5)).is_err());
    }
}
