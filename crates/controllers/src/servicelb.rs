//! The service load balancer, k3s's servicelb without its svclb pods: every
//! Service of `type: LoadBalancer` without a `spec.loadBalancerClass` (a
//! class means another implementation owns it, as in k3s) gets the
//! addresses of the nodes that serve it in `status.loadBalancer.ingress`,
//! written through `services/status`. The nodes that serve it are the
//! Ready, schedulable ones not labelled
//! `node.kubernetes.io/exclude-from-external-load-balancers`: every node's
//! proxy captures the ingress addresses with the service's port (k3s uses
//! the nodes running its svclb pods, which forward the port the same way).
//! As in k3s, the nodes' ExternalIPs are used when some node has one, their
//! InternalIPs otherwise, filtered and ordered by the service's
//! `ipFamilies`, each family sorted. With `externalTrafficPolicy: Local`
//! only serving nodes that run a ready endpoint of the service count (what
//! a cloud balancer's health check on `healthCheckNodePort` finds), since
//! the other nodes' proxies drop that traffic. No serving node, no
//! ingress. A service that stops being a LoadBalancer has its ingress
//! cleared.
//!
//! The addresses are the nodes' own, shared by every load balancer, so a
//! port (with its protocol) can serve one service only: as with k3s's
//! svclb pods, whose host ports collide, a service that already has its
//! ingress keeps the port (else the oldest), and another one stays without
//! ingress (with a `PortInUse` warning) until the port is free. Two
//! services given the same address and port would also make every node's
//! proxy fail its rule transaction. For the same reason a load balancer
//! never gets a port the node addresses already serve: the API server's
//! (the `default/kubernetes` service's target port), the kubelet's
//! (`status.daemonEndpoints`) and other services' node ports. Every node's
//! proxy would capture `<node address>:6443` and cut the agents off from
//! the API server.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::events::{self, Note};
use crate::{ControllerConfig, Error, Informers};
use skiff_client::informer::Informer;

/// Nodes with this label never serve load balancers (upstream's label).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The `ipMode` written: the address is captured by every node's proxy
/// (kube-proxy's meaning of `VIP`, also what the API server defaults).
pub const IP_MODE_VIP: &str = "VIP";

const COMPONENT: &str = "service-lb-controller";

/// Whether this controller manages the service's load balancer: its type
/// is `LoadBalancer` and it names no `loadBalancerClass`.
pub fn is_managed(service: &Service) -> bool {
    service.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_none()
    })
}

/// Whether this controller leaves the service alone entirely: its load
/// balancer belongs to another implementation (a `loadBalancerClass`).
pub fn is_foreign(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .is_some_and(|s| s.load_balancer_class.is_some())
}

/// Whether `node` serves load balancers: Ready, schedulable, not excluded.
pub fn serves(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let schedulable = !node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let excluded = node
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(EXCLUDE_LABEL));
    ready && schedulable && !excluded
}

/// The (InternalIP, ExternalIP) addresses of a serving node; both empty
/// for a node that does not serve.
fn node_addresses(node: &Node) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let (mut internal, mut external) = (Vec::new(), Vec::new());
    if !serves(node) {
        return (internal, external);
    }
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for a in addresses.into_iter().flatten() {
        let Ok(ip) = a.address.parse::<IpAddr>() else {
            continue;
        };
        match a.type_.as_str() {
            "InternalIP" => internal.push(ip),
            "ExternalIP" => external.push(ip),
            _ => {}
        }
    }
    (internal, external)
}

/// Whether only nodes with a local endpoint receive the service's external
/// traffic (`externalTrafficPolicy: Local`).
pub fn is_local(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.external_traffic_policy.as_deref())
        == Some("Local")
}

/// The label that ties an EndpointSlice to its service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The nodes running a ready endpoint in `slices` (a missing `ready`
/// condition means ready, as in the API).
pub fn nodes_with_ready_endpoints(slices: &[EndpointSlice]) -> BTreeSet<String> {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .filter_map(|e| e.node_name.clone())
        .collect()
}

/// The pure decision: the ingress `service` should show, given every node
/// and, for a `Local` external traffic policy, the nodes with a ready
/// endpoint (`None` counts as no node). Empty for a service this
/// controller does not manage.
pub fn desired_ingress<N: Borrow<Node>>(
    service: &Service,
    nodes: &[N],
    endpoint_nodes: Option<&BTreeSet<String>>,
) -> Vec<LoadBalancerIngress> {
    if !is_managed(service) {
        return Vec::new();
    }
    let local = is_local(service);
    let (mut internal, mut external) = (BTreeSet::new(), BTreeSet::new());
    for node in nodes {
        let node = node.borrow();
        if local
            && !endpoint_nodes.is_some_and(|names| {
                node.metadata
                    .name
                    .as_ref()
                    .is_some_and(|n| names.contains(n))
            })
        {
            continue;
        }
        let (i, e) = node_addresses(node);
        internal.extend(i);
        external.extend(e);
    }
    let ips = if external.is_empty() {
        internal
    } else {
        external
    };
    let families: Vec<&str> = match service.spec.as_ref().and_then(|s| s.ip_families.as_ref()) {
        Some(f) if !f.is_empty() => f.iter().map(String::as_str).collect(),
        _ => vec!["IPv4"],
    };
    let mut out = Vec::new();
    for family in families {
        let v6 = match family {
            "IPv4" => false,
            "IPv6" => true,
            _ => continue,
        };
        out.extend(
            ips.iter()
                .filter(|ip| ip.is_ipv6() == v6)
                .map(|ip| LoadBalancerIngress {
                    ip: Some(ip.to_string()),
                    ip_mode: Some(IP_MODE_VIP.into()),
                    ..Default::default()
                }),
        );
    }
    out
}

/// The `(protocol, port)` pairs a service's load balancer listens on.
fn lb_ports(service: &Service) -> BTreeSet<(String, i32)> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.port))
        .collect()
}

/// Which of two services has the better claim on a port: one that shows
/// an ingress already (so a newcomer never takes a working balancer's
/// port), then creation time (whole seconds), then namespace and name (a
/// total order, so every reconcile agrees).
fn age_key(service: &Service) -> (bool, Option<jiff::Timestamp>, String, String) {
    let has_ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .is_some_and(|i| !i.is_empty());
    (
        !has_ingress,
        service.metadata.creation_timestamp.as_ref().map(|t| t.0),
        service.namespace().unwrap_or_default(),
        service.name_any(),
    )
}

/// The pure port rule. Managed services are served in [`age_key`] order; each
/// takes its ports unless one is already taken or `reserved` (see
/// [`reserved_ports`]; those win even over a balancer that had the port
/// first, since they are what the node addresses serve), in which case it
/// takes none. Returns who holds a port `service` wants, as
/// `(namespace/name, PORT/PROTOCOL)`, or `None` when `service` gets its
/// ports (or is not managed). `others` may include `service` itself.
pub fn port_holder<'a, S: Borrow<Service> + 'a>(
    service: &Service,
    others: impl IntoIterator<Item = &'a S>,
    reserved: &BTreeMap<(String, i32), String>,
) -> Option<(String, String)> {
    if !is_managed(service) {
        return None;
    }
    let me = age_key(service);
    let mut managed: Vec<_> = others
        .into_iter()
        .map(Borrow::borrow)
        .filter(|o| is_managed(o))
        .map(|o| (age_key(o), o))
        .filter(|(key, _)| *key < me)
        .collect();
    managed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut taken: BTreeMap<(String, i32), &Service> = BTreeMap::new();
    for (_, older) in managed {
        let ports = lb_ports(older);
        if ports
            .iter()
            .any(|p| taken.contains_key(p) || reserved.contains_key(p))
        {
            continue;
        }
        for p in ports {
            taken.insert(p, older);
        }
    }
    lb_ports(service).into_iter().find_map(|p| {
        taken.get(&p).map(|holder| {
            (
                format!(
                    "{}/{}",
                    holder.namespace().unwrap_or_default(),
                    holder.name_any()
                ),
                format!("{}/{}", p.1, p.0),
            )
        })
    })
}

/// The service that points at the API servers.
const API_SERVICE: (&str, &str) = ("default", "kubernetes");

/// The `(protocol, port)` pairs the nodes' addresses already serve, each
/// with who serves it: the API server's target ports (from the
/// `default/kubernetes` service among `services`), every kubelet's port,
/// and the node ports of the services (every node's proxy captures those
/// on the node addresses too).
pub fn reserved_ports<'a, S: Borrow<Service> + 'a, N: Borrow<Node>>(
    services: impl IntoIterator<Item = &'a S>,
    nodes: &[N],
) -> BTreeMap<(String, i32), String> {
    let mut out = BTreeMap::new();
    for svc in services.into_iter().map(Borrow::borrow) {
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten();
        let is_api =
            svc.namespace().as_deref() == Some(API_SERVICE.0) && svc.name_any() == API_SERVICE.1;
        for p in ports {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            if is_api {
                let port = match &p.target_port {
                    Some(IntOrString::Int(port)) => *port,
                    // A named target port is resolved by the endpoints;
                    // the service port stands in.
                    _ => p.port,
                };
                out.insert((proto.clone(), port), "the API server".to_string());
            }
            if let Some(node_port) = p.node_port.filter(|n| *n > 0) {
                out.entry((proto, node_port)).or_insert_with(|| {
                    format!(
                        "the node port of service {}/{}",
                        svc.namespace().unwrap_or_default(),
                        svc.name_any()
                    )
                });
            }
        }
    }
    for node in nodes {
        let port = node
            .borrow()
            .status
            .as_ref()
            .and_then(|s| s.daemon_endpoints.as_ref())
            .and_then(|d| d.kubelet_endpoint.as_ref())
            .map(|e| e.port)
            .filter(|p| *p > 0);
        if let Some(port) = port {
            out.entry(("TCP".to_string(), port))
                .or_insert_with(|| "the kubelet".to_string());
        }
    }
    out
}

/// Who holds a port `service` wants: the nodes themselves (see
/// [`reserved_ports`]; the service's own node ports aside) or, by the port
/// rule ([`port_holder`]), another load balancer; as `(who,
/// PORT/PROTOCOL)`.
fn port_taken<N: Borrow<Node>>(
    service: &Service,
    services: &[Arc<Service>],
    nodes: &[N],
) -> Option<(String, String)> {
    if !is_managed(service) {
        return None;
    }
    let me = (service.namespace(), service.name_any());
    let others = services
        .iter()
        .filter(|s| (s.namespace(), s.name_any()) != me)
        .map(|s| &**s);
    let reserved = reserved_ports(others, nodes);
    lb_ports(service)
        .into_iter()
        .find_map(|p| {
            reserved
                .get(&p)
                .map(|who| (who.clone(), format!("{}/{}", p.1, p.0)))
        })
        .or_else(|| {
            port_holder(service, services.iter().map(|s| &**s), &reserved)
                .map(|(by, port)| (format!("load balancer service {by}"), port))
        })
}

/// What a service shows now.
fn current_ingress(service: &Service) -> Vec<LoadBalancerIngress> {
    service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default()
}

fn ingress_ips(ingress: &[LoadBalancerIngress]) -> String {
    let ips: Vec<&str> = ingress
        .iter()
        .map(|i| i.ip.as_deref().or(i.hostname.as_deref()).unwrap_or(""))
        .collect();
    format!("[{}]", ips.join(" "))
}

fn service_ref(svc: &Service) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: svc.metadata.name.clone(),
        namespace: svc.metadata.namespace.clone(),
        uid: svc.metadata.uid.clone(),
        resource_version: svc.metadata.resource_version.clone(),
        ..Default::default()
    }
}

struct Context {
    client: kube::Client,
    config: ControllerConfig,
    nodes: Informer<Node>,
    /// Every service (the controller's own cache), for the port rule.
    services: Store<Service>,
    /// Services told that their port is taken (uid → holder), so the
    /// warning is recorded once per holder, not on every retry.
    warned: Mutex<BTreeMap<String, String>>,
}

/// How often a service whose port is taken looks again (its holder may
/// have gone or changed its ports).
const PORT_RETRY: Duration = Duration::from_secs(5);

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    if is_foreign(&svc) {
        return Ok(Action::await_change());
    }
    let nodes = ctx.nodes.list();
    let holder = port_taken(&svc, &ctx.services.state(), &nodes);
    let endpoint_nodes = if holder.is_none() && is_managed(&svc) && is_local(&svc) {
        let ns = svc.namespace().unwrap_or_default();
        let slices = Api::<EndpointSlice>::namespaced(ctx.client.clone(), &ns)
            .list(
                &ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={}", svc.name_any())),
            )
            .await?;
        Some(nodes_with_ready_endpoints(&slices.items))
    } else {
        None
    };
    let desired = match &holder {
        Some(_) => Vec::new(),
        None => desired_ingress(&svc, &nodes, endpoint_nodes.as_ref()),
    };
    let uid = svc.metadata.uid.clone().unwrap_or_default();
    let newly_blocked = {
        let mut warned = ctx.warned.lock().unwrap_or_else(|p| p.into_inner());
        match &holder {
            Some((by, _)) => {
                let newly = warned.insert(uid, by.clone()).as_ref() != Some(by);
                if newly {
                    // Forget services deleted while they waited.
                    let live: BTreeSet<String> = ctx
                        .services
                        .state()
                        .iter()
                        .filter_map(|s| s.metadata.uid.clone())
                        .collect();
                    warned.retain(|u, _| live.contains(u));
                }
                newly
            }
            None => {
                warned.remove(&uid);
                false
            }
        }
    };
    if newly_blocked && let Some((by, port)) = &holder {
        tracing::info!(service = %svc.name_any(), namespace = %svc.namespace().unwrap_or_default(), holder = %by, %port, "load balancer port in use");
        let note = Note::warning(
            "PortInUse",
            format!("port {port} is already used by {by}; no ingress until it is free"),
        );
        events::record(&ctx.client, &service_ref(&svc), COMPONENT, &note).await;
    }
    let current = current_ingress(&svc);
    if desired != current {
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        // A merge patch replaces the list; null removes it.
        let ingress = if desired.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::to_value(&desired)?
        };
        Api::<Service>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": ingress}}})),
            )
            .await?;
        tracing::info!(service = %name, namespace = %ns, from = %ingress_ips(&current), to = %ingress_ips(&desired), "load balancer ingress updated");
        // k3s's events: an unavailable balancer is worth a warning only
        // while the service still asks for one.
        let note = if !desired.is_empty() {
            Some(Note::normal(
                "UpdatedLoadBalancer",
                format!(
                    "Updated LoadBalancer with new IPs: {} -> {}",
                    ingress_ips(&current),
                    ingress_ips(&desired)
                ),
            ))
        } else if is_managed(&svc) && holder.is_none() {
            Some(Note::warning(
                "UnAvailableLoadBalancer",
                "There are no available nodes for LoadBalancer",
            ))
        } else {
            None
        };
        if let Some(note) = note {
            events::record(&ctx.client, &service_ref(&svc), COMPONENT, &note).await;
        }
    }
    if holder.is_some() {
        return Ok(Action::requeue(PORT_RETRY));
    }
    Ok(Action::requeue(ctx.config.resync))
}

fn error_policy(svc: Arc<Service>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(service = %svc.name_any(), error = %err, "load balancer reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// What a node contributes to load balancers; a node event that leaves it
/// unchanged (a heartbeat) wakes no service.
type Contribution = (Vec<IpAddr>, Vec<IpAddr>);

/// Records what the node `name` contributes now (`None`: it is gone) and
/// tells whether that differs from what was recorded before.
fn contribution_changed(
    seen: &mut BTreeMap<String, Contribution>,
    name: String,
    now: Option<&Node>,
) -> bool {
    let now = now.map(node_addresses);
    let before = match &now {
        Some(c) => seen.insert(name, c.clone()),
        None => seen.remove(&name),
    };
    before != now
}

/// Runs the service load balancer controller until its watches end.
pub async fn run(client: kube::Client, config: ControllerConfig, informers: Informers) {
    let controller = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let services = controller.store();
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        nodes: informers.nodes.clone(),
        services: services.clone(),
        warned: Mutex::new(BTreeMap::new()),
    });
    let local_services = services.clone();
    let nodes = informers.nodes.clone();
    // Subscribed before the snapshot below, so no change falls between.
    let node_events = informers.nodes.subscribe();
    let seen: Mutex<BTreeMap<String, Contribution>> = Mutex::new(
        nodes
            .list()
            .iter()
            .map(|n| (n.name_any(), node_addresses(n)))
            .collect(),
    );
    let port_sharers = services.clone();
    controller
        // A service changed (its ports, its ingress) or went: the managed
        // services sharing one of its ports look again, so a port has one
        // holder and a freed one is taken at once.
        .watches(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            move |changed| {
                let ports = lb_ports(&changed);
                port_sharers
                    .state()
                    .into_iter()
                    .filter(|s| {
                        is_managed(s)
                            && !(s.namespace() == changed.namespace()
                                && s.name_any() == changed.name_any())
                            && lb_ports(s).iter().any(|p| ports.contains(p))
                    })
                    .map(|s| ObjectRef::from_obj(&*s))
                    .collect::<Vec<_>>()
            },
        )
        // A node came, went, or changed readiness or addresses: every
        // managed service looks again. The event carries the node after
        // the change (or the last one seen for a deletion), so the cache
        // tells which it was.
        .watches_shared_stream(node_events, move |node| {
            let name = node.name_any();
            let now = nodes.get("", &name);
            let changed = {
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                contribution_changed(&mut seen, name, now.as_deref())
            };
            if !changed {
                return Vec::new();
            }
            services
                .state()
                .into_iter()
                .filter(|s| is_managed(s))
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        // An endpoint slice changed: a Local service may gain or lose a
        // node (slices of other services wake nothing).
        .watches(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
            move |slice| {
                let ns = slice.namespace()?;
                let service = slice.labels().get(SERVICE_NAME_LABEL)?.clone();
                let key = ObjectRef::<Service>::new(&service).within(&ns);
                local_services
                    .get(&key)
                    .filter(|s| is_managed(s) && is_local(s))
                    .map(|_| key)
            },
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerStatus, NodeAddress, NodeCondition, NodeSpec, NodeStatus, ServiceSpec,
        ServiceStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, ready: &str, addresses: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: t.to_string(),
                            address: a.to_string(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
        }
    }

    fn cordoned(mut n: Node) -> Node {
        n.spec.as_mut().unwrap().unschedulable = Some(true);
        n
    }

    fn excluded(mut n: Node) -> Node {
        n.metadata.labels = Some([(EXCLUDE_LABEL.to_string(), String::new())].into());
        n
    }

    fn service(type_: &str, class: Option<&str>, families: &[&str]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                load_balancer_class: class.map(str::to_string),
                ip_families: (!families.is_empty())
                    .then(|| families.iter().map(|f| f.to_string()).collect()),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn ips(ingress: &[LoadBalancerIngress]) -> Vec<&str> {
        ingress.iter().map(|i| i.ip.as_deref().unwrap()).collect()
    }

    #[test]
    fn ingress_is_the_serving_nodes_addresses() {
        let lb = service("LoadBalancer", None, &["IPv4"]);
        let internal = |name: &str, ip: &str| node(name, "True", &[("InternalIP", ip)]);
        // (name, service, nodes, want)
        let cases: Vec<(&str, Service, Vec<Node>, Vec<&str>)> = vec![
            (
                "one ready node",
                lb.clone(),
                vec![internal("a", "10.99.0.1")],
                vec!["10.99.0.1"],
            ),
            (
                "sorted numerically and deduplicated",
                lb.clone(),
                vec![
                    internal("a", "10.0.0.10"),
                    internal("b", "10.0.0.9"),
                    node(
                        "c",
                        "True",
                        &[("InternalIP", "10.0.0.9"), ("Hostname", "c")],
                    ),
                ],
                vec!["10.0.0.9", "10.0.0.10"],
            ),
            (
                "not ready, unknown, cordoned and excluded nodes do not serve",
                lb.clone(),
                vec![
                    internal("a", "10.0.0.1"),
                    node("b", "False", &[("InternalIP", "10.0.0.2")]),
                    node("c", "Unknown", &[("InternalIP", "10.0.0.3")]),
                    cordoned(internal("d", "10.0.0.4")),
                    excluded(internal("e", "10.0.0.5")),
                ],
                vec!["10.0.0.1"],
            ),
            (
                "no ready node: no ingress",
                lb.clone(),
                vec![node("a", "False", &[("InternalIP", "10.0.0.1")])],
                vec![],
            ),
            ("no nodes: no ingress", lb.clone(), vec![], vec![]),
            (
                "external addresses win when some node has one (k3s)",
                lb.clone(),
                vec![
                    node(
                        "a",
                        "True",
                        &[("InternalIP", "10.0.0.1"), ("ExternalIP", "203.0.113.7")],
                    ),
                    internal("b", "10.0.0.2"),
                ],
                vec!["203.0.113.7"],
            ),
            (
                "an external address of a node that does not serve is not used",
                lb.clone(),
                vec![
                    node(
                        "a",
                        "False",
                        &[("InternalIP", "10.0.0.1"), ("ExternalIP", "203.0.113.7")],
                    ),
                    internal("b", "10.0.0.2"),
                ],
                vec!["10.0.0.2"],
            ),
            (
                "only the service's families, in its order",
                service("LoadBalancer", None, &["IPv6", "IPv4"]),
                vec![node(
                    "a",
                    "True",
                    &[("InternalIP", "10.0.0.1"), ("InternalIP", "fd00::1")],
                )],
                vec!["fd00::1", "10.0.0.1"],
            ),
            (
                "IPv4 when the service names no family",
                service("LoadBalancer", None, &[]),
                vec![node(
                    "a",
                    "True",
                    &[("InternalIP", "10.0.0.1"), ("InternalIP", "fd00::1")],
                )],
                vec!["10.0.0.1"],
            ),
            (
                "a ClusterIP service gets none",
                service("ClusterIP", None, &["IPv4"]),
                vec![internal("a", "10.0.0.1")],
                vec![],
            ),
            (
                "a NodePort service gets none",
                service("NodePort", None, &["IPv4"]),
                vec![internal("a", "10.0.0.1")],
                vec![],
            ),
            (
                "a service with a load balancer class is someone else's",
                service("LoadBalancer", Some("example.com/lb"), &["IPv4"]),
                vec![internal("a", "10.0.0.1")],
                vec![],
            ),
        ];
        for (name, svc, nodes, want) in cases {
            let got = desired_ingress(&svc, &nodes, None);
            assert_eq!(ips(&got), want, "{name}");
            assert!(
                got.iter().all(|i| i.ip_mode.as_deref() == Some("VIP")
                    && i.hostname.is_none()
                    && i.ports.is_none()),
                "{name}: {got:?}"
            );
        }
    }

    fn slice(endpoints: &[(&str, Option<bool>)]) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "web-x", "namespace": "default",
                         "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "endpoints": endpoints.iter().enumerate().map(|(i, (node, ready))| json!({
                "addresses": [format!("10.42.0.{}", i + 2)],
                "nodeName": node,
                "conditions": match ready {
                    Some(r) => json!({"ready": r}),
                    None => json!({}),
                },
            })).collect::<Vec<_>>(),
        }))
        .expect("slice")
    }

    #[test]
    fn local_traffic_policy_lists_only_nodes_with_a_ready_endpoint() {
        let mut lb = service("LoadBalancer", None, &["IPv4"]);
        let nodes = vec![
            node("a", "True", &[("InternalIP", "10.0.0.1")]),
            node("b", "True", &[("InternalIP", "10.0.0.2")]),
            node("c", "True", &[("InternalIP", "10.0.0.3")]),
            node("d", "False", &[("InternalIP", "10.0.0.4")]),
        ];
        // b: ready; c: not ready; a: ready by default (no condition); d:
        // ready but the node itself is not.
        let slices = [
            slice(&[("b", Some(true)), ("c", Some(false))]),
            slice(&[("a", None), ("d", Some(true))]),
        ];
        let with_endpoints = nodes_with_ready_endpoints(&slices);
        assert_eq!(
            with_endpoints
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            vec!["a", "b", "d"]
        );
        // Cluster policy: every serving node, endpoints or not.
        assert_eq!(
            ips(&desired_ingress(&lb, &nodes, Some(&with_endpoints))),
            vec!["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        );
        lb.spec.as_mut().expect("spec").external_traffic_policy = Some("Local".into());
        assert!(is_local(&lb));
        assert_eq!(
            ips(&desired_ingress(&lb, &nodes, Some(&with_endpoints))),
            vec!["10.0.0.1", "10.0.0.2"]
        );
        // No ready endpoint anywhere (or none known): no ingress.
        assert!(desired_ingress(&lb, &nodes, Some(&BTreeSet::new())).is_empty());
        assert!(desired_ingress(&lb, &nodes, None).is_empty());
    }

    #[test]
    fn only_classless_load_balancers_are_managed_and_classed_ones_left_alone() {
        let cases = [
            ("LoadBalancer", None, true, false),
            ("LoadBalancer", Some("example.com/lb"), false, true),
            ("ClusterIP", None, false, false),
            ("NodePort", None, false, false),
        ];
        for (type_, class, managed, foreign) in cases {
            let svc = service(type_, class, &[]);
            assert_eq!(is_managed(&svc), managed, "{type_} {class:?}");
            assert_eq!(is_foreign(&svc), foreign, "{type_} {class:?}");
        }
    }

    #[test]
    fn only_node_changes_that_move_an_address_wake_the_services() {
        let mut seen = BTreeMap::new();
        let ready = node("a", "True", &[("InternalIP", "10.0.0.1")]);
        let mut heartbeat = ready.clone();
        heartbeat.metadata.resource_version = Some("2".into());
        let other_ip = node("a", "True", &[("InternalIP", "10.0.0.2")]);
        let not_ready = node("a", "False", &[("InternalIP", "10.0.0.2")]);
        // (case, the node after the event, changed)
        let steps = [
            ("node added", Some(&ready), true),
            ("heartbeat", Some(&heartbeat), false),
            ("address changed", Some(&other_ip), true),
            ("turned not ready", Some(&not_ready), true),
            (
                "cordoned while not ready",
                Some(&cordoned(not_ready.clone())),
                false,
            ),
            ("ready again", Some(&other_ip), true),
            ("cordoned", Some(&cordoned(other_ip.clone())), true),
            ("deleted", None, true),
            ("deleted again", None, false),
        ];
        for (case, now, want) in steps {
            assert_eq!(
                contribution_changed(&mut seen, "a".into(), now),
                want,
                "{case}"
            );
        }
    }

    #[test]
    fn a_service_that_is_no_longer_a_load_balancer_is_cleared() {
        let mut svc = service("ClusterIP", None, &["IPv4"]);
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("10.0.0.1".into()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        });
        let nodes = [node("a", "True", &[("InternalIP", "10.0.0.1")])];
        assert!(desired_ingress(&svc, &nodes, None).is_empty());
        assert_ne!(current_ingress(&svc), desired_ingress(&svc, &nodes, None));
    }

    fn lb_service(name: &str, created: i64, ports: &[(i32, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                creation_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::from_second(created).expect("timestamp"),
                )),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(port, proto)| k8s_openapi::api::core::v1::ServicePort {
                            port: *port,
                            protocol: Some(proto.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ports_the_api_server_and_kubelets_listen_on_are_never_given_out() {
        let mut api = lb_service("kubernetes", 1, &[(443, "TCP")]);
        if let Some(spec) = api.spec.as_mut() {
            spec.type_ = Some("ClusterIP".into());
            if let Some(ports) = spec.ports.as_mut() {
                ports[0].target_port = Some(IntOrString::Int(6443));
            }
        }
        let mut kubelet_node = node("a", "True", &[("InternalIP", "10.0.0.1")]);
        if let Some(status) = kubelet_node.status.as_mut() {
            status.daemon_endpoints = Some(k8s_openapi::api::core::v1::NodeDaemonEndpoints {
                kubelet_endpoint: Some(k8s_openapi::api::core::v1::DaemonEndpoint { port: 10250 }),
            });
        }
        let nodes = [kubelet_node];
        let steal_api = Arc::new(lb_service("steal-api", 100, &[(6443, "TCP")]));
        let steal_kubelet = Arc::new(lb_service(
            "steal-kubelet",
            100,
            &[(80, "TCP"), (10250, "TCP")],
        ));
        let udp = Arc::new(lb_service("udp", 100, &[(6443, "UDP")]));
        let https = Arc::new(lb_service("https", 100, &[(443, "TCP")]));
        let all = vec![
            Arc::new(api),
            steal_api.clone(),
            steal_kubelet.clone(),
            udp.clone(),
            https.clone(),
        ];
        assert_eq!(
            port_taken(&steal_api, &all, &nodes),
            Some(("the API server".to_string(), "6443/TCP".to_string()))
        );
        assert_eq!(
            port_taken(&steal_kubelet, &all, &nodes),
            Some(("the kubelet".to_string(), "10250/TCP".to_string()))
        );
        // Other protocols, and the API service's own port (not listened on
        // at node addresses), are free.
        assert_eq!(port_taken(&udp, &all, &nodes), None);
        assert_eq!(port_taken(&https, &all, &nodes), None);
        // A blocked service holds nothing, so port 80 stays free for
        // another one, and the rule between balancers still applies.
        let web = Arc::new(lb_service("web", 200, &[(80, "TCP")]));
        let web2 = Arc::new(lb_service("web2", 300, &[(443, "TCP")]));
        let mut all = all;
        all.extend([web.clone(), web2.clone()]);
        assert_eq!(port_taken(&web, &all, &nodes), None);
        assert_eq!(
            port_taken(&web2, &all, &nodes),
            Some((
                "load balancer service default/https".to_string(),
                "443/TCP".to_string()
            ))
        );

        // Another service's node port is taken on every node address; the
        // service's own node port is not in its way.
        let with_node_port = |name: &str, created: i64, port: i32, node_port: i32| {
            let mut svc = lb_service(name, created, &[(port, "TCP")]);
            if let Some(p) = svc.spec.as_mut().and_then(|s| s.ports.as_mut()) {
                p[0].node_port = Some(node_port);
            }
            Arc::new(svc)
        };
        let np = with_node_port("np", 50, 80, 30080);
        let on_node_port = Arc::new(lb_service("on-node-port", 400, &[(30080, "TCP")]));
        let own = with_node_port("own", 400, 30081, 30081);
        all.extend([np, on_node_port.clone(), own.clone()]);
        assert_eq!(
            port_taken(&on_node_port, &all, &nodes),
            Some((
                "the node port of service default/np".to_string(),
                "30080/TCP".to_string()
            ))
        );
        assert_eq!(port_taken(&own, &all, &nodes), None);
    }

    #[test]
    fn a_port_serves_the_oldest_load_balancer_that_can_take_all_its_ports() {
        let none = BTreeMap::new();
        let a = lb_service("a", 100, &[(80, "TCP")]);
        let b = lb_service("b", 200, &[(80, "TCP"), (443, "TCP")]);
        let c = lb_service("c", 300, &[(443, "TCP")]);
        let udp = lb_service("udp", 400, &[(80, "UDP")]);
        let all = [a.clone(), b.clone(), c.clone(), udp.clone()];
        // The list may hold the service itself; it never blocks itself.
        assert_eq!(port_holder(&a, all.iter(), &none), None);
        assert_eq!(
            port_holder(&b, all.iter(), &none),
            Some(("default/a".to_string(), "80/TCP".to_string()))
        );
        // b holds nothing while blocked, so 443 is free for c.
        assert_eq!(port_holder(&c, all.iter(), &none), None);
        // Same number, other protocol.
        assert_eq!(port_holder(&udp, all.iter(), &none), None);
        // Once a is gone, b takes both ports and c waits for b.
        let rest = [b.clone(), c.clone()];
        assert_eq!(port_holder(&b, rest.iter(), &none), None);
        assert_eq!(
            port_holder(&c, rest.iter(), &none),
            Some(("default/b".to_string(), "443/TCP".to_string()))
        );
        // One that already shows an ingress keeps its port, even against
        // an older one (which then waits).
        let mut serving = lb_service("z-serving", 500, &[(80, "TCP")]);
        serving.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("10.0.0.1".into()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        });
        let contest = [a.clone(), serving.clone()];
        assert_eq!(port_holder(&serving, contest.iter(), &none), None);
        assert_eq!(
            port_holder(&a, contest.iter(), &none),
            Some(("default/z-serving".to_string(), "80/TCP".to_string()))
        );
        // Created in the same second: the name decides.
        let twin = lb_service("a-twin", 100, &[(80, "TCP")]);
        let pair = [a.clone(), twin.clone()];
        assert_eq!(port_holder(&a, pair.iter(), &none), None);
        assert!(port_holder(&twin, pair.iter(), &none).is_some());
        // Services this controller does not manage hold no port.
        let mut cluster_ip = lb_service("old-cluster-ip", 1, &[(443, "TCP")]);
        if let Some(spec) = cluster_ip.spec.as_mut() {
            spec.type_ = Some("ClusterIP".into());
        }
        let mut classed = lb_service("old-classed", 2, &[(443, "TCP")]);
        if let Some(spec) = classed.spec.as_mut() {
            spec.load_balancer_class = Some("example.com/lb".into());
        }
        let others = [cluster_ip, classed.clone(), c.clone()];
        assert_eq!(port_holder(&c, others.iter(), &none), None);
        assert_eq!(port_holder(&classed, others.iter(), &none), None);
    }
}
