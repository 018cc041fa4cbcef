//! What the proxy keeps of Services and EndpointSlices: plain data, read
//! from the API objects without IO. Objects the proxy cannot serve (an
//! ExternalName or headless service, an IPv6 slice, a port it cannot parse)
//! are left out here, so the rule renderer never sees them.

use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

/// A service's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Transport protocol of a service port, as nftables names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses a Kubernetes protocol (`TCP` when absent).
    pub fn parse(value: Option<&str>) -> Option<Self> {
        match value.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortInfo {
    /// The port's name (empty for the single unnamed port).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// Only kept for NodePort and LoadBalancer services.
    pub node_port: Option<u16>,
}

/// What the proxy needs of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// The IPv4 cluster IP; `None` when the service has none the proxy can
    /// serve (only its node ports are then programmed).
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePortInfo>,
    /// `sessionAffinity: ClientIP` with this timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// The IPv4 load-balancer ingress addresses the proxy captures
    /// (`status.loadBalancer.ingress[].ip` of a LoadBalancer service whose
    /// `ipMode` is `VIP` or unset), sorted, without duplicates. Traffic to
    /// them on a service port is external traffic, as to a node port.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// The IPv4 addresses of `spec.externalIPs`, sorted, without
    /// duplicates: traffic to them on a service port is external traffic,
    /// as to a load-balancer address (kube-proxy captures them in every
    /// service type but ExternalName).
    pub external_ips: Vec<Ipv4Addr>,
    /// `spec.healthCheckNodePort` of a LoadBalancer service with
    /// `externalTrafficPolicy: Local`: the proxy answers health checks
    /// there (see [`crate::health`]).
    pub health_check_node_port: Option<u16>,
    /// `metadata.creationTimestamp` in seconds since the epoch: when two
    /// services claim one address and port, the older one gets it.
    pub created: Option<i64>,
}

impl ServiceInfo {
    /// Reads a Service. `None` for services the proxy does not program:
    /// ExternalName, headless (`clusterIP: None`) or IPv6-only services.
    pub fn from_service(service: &Service) -> Option<Self> {
        let spec = service.spec.as_ref()?;
        let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
        if type_ == "ExternalName" {
            return None;
        }
        let node_ports = matches!(type_, "NodePort" | "LoadBalancer");
        let cluster_ip = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
            .filter(|ip| !ip.is_unspecified());
        let ports: Vec<ServicePortInfo> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(ServicePortInfo {
                    name: p.name.clone().unwrap_or_default(),
                    protocol: Protocol::parse(p.protocol.as_deref())?,
                    port: u16::try_from(p.port).ok().filter(|p| *p != 0)?,
                    node_port: p
                        .node_port
                        .and_then(|n| u16::try_from(n).ok())
                        .filter(|n| node_ports && *n != 0),
                })
            })
            .collect();
        let mut load_balancer_ips: Vec<Ipv4Addr> = if type_ == "LoadBalancer" {
            service
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                // kube-proxy leaves `Proxy` addresses to the balancer.
                .filter(|i| i.ip_mode.as_deref().is_none_or(|m| m == "VIP"))
                .filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok())
                .filter(|ip| !ip.is_unspecified())
                .collect()
        } else {
            Vec::new()
        };
        load_balancer_ips.sort();
        load_balancer_ips.dedup();
        let mut external_ips: Vec<Ipv4Addr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse::<Ipv4Addr>().ok())
            .filter(|ip| !ip.is_unspecified())
            .collect();
        external_ips.sort();
        external_ips.dedup();
        if cluster_ip.is_none()
            && ports.iter().all(|p| p.node_port.is_none())
            && load_balancer_ips.is_empty()
            && external_ips.is_empty()
        {
            return None;
        }
        let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS)
        });
        let external_local = node_ports && spec.external_traffic_policy.as_deref() == Some("Local");
        let health_check_node_port = spec
            .health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| type_ == "LoadBalancer" && external_local && *p != 0);
        Some(Self {
            cluster_ip,
            ports,
            affinity_timeout,
            external_local,
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            load_balancer_ips,
            external_ips,
            health_check_node_port,
            created: service
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
        })
    }
}

/// A port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One endpoint of a slice, with its conditions resolved as the API
/// defines them (`ready` absent = ready, `serving` absent = `ready`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    pub ip: Ipv4Addr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
}

/// What the proxy needs of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<EndpointInfo>,
}

impl SliceInfo {
    /// Reads an EndpointSlice: the service it belongs to (from its
    /// `kubernetes.io/service-name` label) and its IPv4 endpoints. `None`
    /// for a slice of another address type or without the label.
    pub fn from_slice(slice: &EndpointSlice) -> Option<(ServiceName, SliceInfo)> {
        if slice.address_type != "IPv4" {
            return None;
        }
        let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(SlicePort {
                    name: p.name.clone().unwrap_or_default(),
                    protocol: Protocol::parse(p.protocol.as_deref())?,
                    port: p.port.and_then(|p| u16::try_from(p).ok())?,
                })
            })
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .filter_map(|e| {
                let ip = e.addresses.first()?.parse::<Ipv4Addr>().ok()?;
                let c = e.conditions.as_ref();
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                Some(EndpointInfo {
                    ip,
                    ready,
                    serving: c.and_then(|c| c.serving).unwrap_or(ready),
                    terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                    node_name: e.node_name.clone(),
                })
            })
            .collect();
        Some((
            ServiceName::new(namespace, service.clone()),
            SliceInfo { ports, endpoints },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec}),
        )
        .expect("service")
    }

    #[test]
    fn services_the_proxy_cannot_serve_are_left_out() {
        let cases = [
            (
                "external name",
                json!({"type": "ExternalName", "externalName": "example.com"}),
            ),
            (
                "headless",
                json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            ),
            (
                "ipv6 only",
                json!({"clusterIP": "fd00::1", "ports": [{"port": 80}]}),
            ),
            ("no spec", serde_json::Value::Null),
        ];
        for (name, spec) in cases {
            assert_eq!(ServiceInfo::from_service(&service(spec)), None, "{name}");
        }
    }

    #[test]
    fn node_ports_are_kept_only_for_node_port_and_load_balancer_services() {
        let cases = [
            ("ClusterIP", None, false),
            ("NodePort", Some(30080), false),
            ("LoadBalancer", Some(30080), false),
        ];
        for (type_, want, _) in cases {
            let svc = service(json!({"type": type_, "clusterIP": "10.43.0.5",
                "externalTrafficPolicy": "Local",
                "ports": [{"port": 80, "nodePort": 30080}]}));
            let info = ServiceInfo::from_service(&svc).expect(type_);
            assert_eq!(info.ports[0].node_port, want, "{type_}");
            assert_eq!(info.external_local, want.is_some(), "{type_}");
        }
    }

    #[test]
    fn load_balancer_ips_are_kept_only_for_load_balancer_services_in_vip_mode() {
        let status = json!({"loadBalancer": {"ingress": [
            {"ip": "10.99.0.2", "ipMode": "VIP"},
            {"ip": "10.99.0.1"},
            {"ip": "10.99.0.1", "ipMode": "VIP"},
            {"ip": "203.0.113.9", "ipMode": "Proxy"},
            {"ip": "fd00::1", "ipMode": "VIP"},
            {"hostname": "lb.example.com"},
        ]}});
        // (name, type, want)
        let cases = [
            ("LoadBalancer", vec!["10.99.0.1", "10.99.0.2"]),
            ("NodePort", vec![]),
            ("ClusterIP", vec![]),
        ];
        for (type_, want) in cases {
            let svc: Service = serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"type": type_, "clusterIP": "10.43.0.5",
                    "ports": [{"port": 80, "nodePort": 30080}]},
                "status": status,
            }))
            .expect("service");
            let info = ServiceInfo::from_service(&svc).expect(type_);
            let got: Vec<String> = info
                .load_balancer_ips
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(got, want, "{type_}");
        }
        // A load balancer without cluster IP or node ports is still served
        // on its ingress addresses.
        let bare: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "clusterIP": "None",
                "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.99.0.1"}]}},
        }))
        .expect("service");
        let info = ServiceInfo::from_service(&bare).expect("served");
        assert_eq!(info.load_balancer_ips, vec![Ipv4Addr::new(10, 99, 0, 1)]);
    }

    #[test]
    fn external_ips_are_kept_for_every_type_but_external_name() {
        for type_ in ["ClusterIP", "NodePort", "LoadBalancer"] {
            let svc = service(json!({"type": type_, "clusterIP": "10.43.0.5",
                "externalIPs": ["10.99.0.9", "fd00::9", "10.99.0.8", "10.99.0.9", "junk"],
                "ports": [{"port": 80, "nodePort": 30080}]}));
            let info = ServiceInfo::from_service(&svc).expect(type_);
            let got: Vec<String> = info.external_ips.iter().map(ToString::to_string).collect();
            assert_eq!(got, vec!["10.99.0.8", "10.99.0.9"], "{type_}");
        }
        let name_only = service(
            json!({"type": "ExternalName", "externalName": "example.com",
            "externalIPs": ["10.99.0.9"], "ports": [{"port": 80}]}),
        );
        assert_eq!(ServiceInfo::from_service(&name_only), None);
        // Without a cluster IP it is still served on its external IPs.
        let bare = service(json!({"clusterIP": "None", "externalIPs": ["10.99.0.9"],
            "ports": [{"port": 80}]}));
        assert!(ServiceInfo::from_service(&bare).is_some());
    }

    #[test]
    fn a_health_check_node_port_is_kept_only_for_local_load_balancers() {
        let cases = [
            ("LoadBalancer", "Local", Some(32000)),
            ("LoadBalancer", "Cluster", None),
            ("NodePort", "Local", None),
        ];
        for (type_, policy, want) in cases {
            let svc = service(json!({"type": type_, "clusterIP": "10.43.0.5",
                "externalTrafficPolicy": policy, "healthCheckNodePort": 32000,
                "ports": [{"port": 80, "nodePort": 30080}]}));
            let info = ServiceInfo::from_service(&svc).expect(type_);
            assert_eq!(info.health_check_node_port, want, "{type_} {policy}");
        }
    }

    #[test]
    fn the_creation_time_is_kept_in_seconds() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default",
                "creationTimestamp": "2026-12-07T10:00:00Z"},
            "spec": {"clusterIP": "10.43.0.5", "ports": [{"port": 80}]},
        }))
        .expect("service");
        let info = ServiceInfo::from_service(&svc).expect("served");
        assert_eq!(info.created, Some(1_796_637_600));
    }

    #[test]
    fn client_ip_affinity_defaults_to_three_hours() {
        let plain = service(
            json!({"clusterIP": "10.43.0.5", "sessionAffinity": "ClientIP", "ports": [{"port": 80}]}),
        );
        let custom = service(
            json!({"clusterIP": "10.43.0.5", "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}, "ports": [{"port": 80}]}),
        );
        let none = service(json!({"clusterIP": "10.43.0.5", "ports": [{"port": 80}]}));
        assert_eq!(
            ServiceInfo::from_service(&plain).and_then(|s| s.affinity_timeout),
            Some(10_800)
        );
        assert_eq!(
            ServiceInfo::from_service(&custom).and_then(|s| s.affinity_timeout),
            Some(60)
        );
        assert_eq!(
            ServiceInfo::from_service(&none).and_then(|s| s.affinity_timeout),
            None
        );
    }

    #[test]
    fn endpoint_conditions_default_as_the_api_defines_them() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "default", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.0.2"]},
                {"addresses": ["10.42.0.3"], "conditions": {"ready": false}},
                {"addresses": ["10.42.0.4"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "n1"},
                {"addresses": ["not-an-ip"]},
            ]
        }))
        .expect("slice");
        let (svc, info) = SliceInfo::from_slice(&slice).expect("slice info");
        assert_eq!(svc, ServiceName::new("default", "web"));
        assert_eq!(info.endpoints.len(), 3);
        let flags: Vec<_> = info
            .endpoints
            .iter()
            .map(|e| (e.ready, e.serving, e.terminating))
            .collect();
        assert_eq!(
            flags,
            vec![
                (true, true, false),
                (false, false, false),
                (false, true, true)
            ]
        );
        assert_eq!(info.endpoints[2].node_name.as_deref(), Some("n1"));
    }
}
