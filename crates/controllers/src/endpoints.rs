//! The Endpoints and EndpointSlice controllers (upstream
//! `pkg/controller/endpoint` and `pkg/controller/endpointslice`), run as one
//! reconcile per Service: for each service with a selector, the ready and
//! not-ready addresses of the matching pods, with named target ports
//! resolved per pod, written as a core/v1 `Endpoints` of the service's name
//! and as `discovery.k8s.io/v1` `EndpointSlice`s owned by the service.
//!
//! A service is reconciled when it changes and when any pod of its namespace
//! changes, so a readiness change shows within one round trip. Services
//! without a selector (their Endpoints are the user's) and `ExternalName`
//! services are left alone. When a service is gone its Endpoints is deleted
//! (it has no owner reference, as upstream) together with its slices.
//!
//! Must not decide anything in the reconcile step: what should exist is
//! computed by the pure functions [`desired_endpoints`], [`desired_slices`]
//! and [`plan_slices`]; the reconcile only writes what differs.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, Node, ObjectReference,
    Pod, Service, ServicePort,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use crate::pods::{is_ready, owner_ref};
use crate::{ControllerConfig, Error, Informers};
use skiff_client::informer::Informer;

/// Label naming the service of an EndpointSlice.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`MANAGED_BY_LABEL`], upstream's.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Label set on the Endpoints and slices of a headless service.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// When the last change the Endpoints reflects happened.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// The node label giving an endpoint's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Upstream's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// The selector of a service whose endpoints this controller manages:
/// `None` for services without a (non-empty) selector and `ExternalName`.
pub fn managed_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

fn publish_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

fn service_ports(svc: &Service) -> &[ServicePort] {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

fn pod_ip(pod: &Pod) -> Option<&str> {
    let status = pod.status.as_ref()?;
    status
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
        .or_else(|| {
            status
                .pod_ips
                .as_ref()?
                .first()
                .map(|p| p.ip.as_str())
                .filter(|ip| !ip.is_empty())
        })
}

fn pod_ipv4(pod: &Pod) -> Option<&str> {
    let status = pod.status.as_ref()?;
    let candidates = status
        .pod_ip
        .iter()
        .map(String::as_str)
        .chain(status.pod_ips.iter().flatten().map(|p| p.ip.as_str()));
    candidates
        .into_iter()
        .find(|ip| ip.parse::<Ipv4Addr>().is_ok())
}

/// The pods of the service: same namespace, labels matching the selector.
fn selected<'a, P: Borrow<Pod>>(
    svc: &Service,
    selector: &BTreeMap<String, String>,
    pods: &'a [P],
) -> impl Iterator<Item = &'a Pod> {
    let ns = svc.metadata.namespace.clone();
    let selector = selector.clone();
    pods.iter().map(Borrow::borrow).filter(move |p: &&Pod| {
        p.metadata.namespace == ns
            && selector.iter().all(|(k, v)| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(k))
                    .is_some_and(|have| have == v)
            })
    })
}

/// The container port a service port reaches on `pod` (upstream
/// `podutil.FindPort`): a named `targetPort` is looked up among the pod's
/// container ports with the same protocol; a number is used as is; unset
/// means the service port.
pub fn resolve_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) if *n == 0 => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            let spec = pod.spec.as_ref()?;
            let restartable_init = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(restartable_init)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// The ports of the service as `pod` serves them; ports the pod lacks are
/// left out.
fn pod_ports(svc: &Service, pod: &Pod) -> Vec<CorePort> {
    service_ports(svc)
        .iter()
        .filter_map(|sp| {
            Some(CorePort {
                name: sp.name.clone().filter(|n| !n.is_empty()),
                port: resolve_port(pod, sp)?,
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect()
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// `pod.spec.hostname` when the pod's subdomain is the service.
fn hostname(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let name = spec.hostname.as_ref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == svc.metadata.name.as_deref()).then(|| name.clone())
}

/// The labels of the service's Endpoints: the service's own, plus the
/// headless marker.
fn endpoints_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    if is_headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

/// The latest change the endpoints reflect: the service's creation or a
/// selected pod's creation or readiness transition.
fn trigger_time<'a>(svc: &Service, pods: impl Iterator<Item = &'a Pod>) -> Option<Timestamp> {
    let pod_times = pods.filter_map(|p| {
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_transition_time.as_ref());
        ready
            .or(p.metadata.creation_timestamp.as_ref())
            .map(|t| t.0)
    });
    svc.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .into_iter()
        .chain(pod_times)
        .max()
}

fn none_if_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

type SubsetGroup = (Vec<CorePort>, Vec<EndpointAddress>, Vec<EndpointAddress>);

/// The subsets of the service's Endpoints (upstream `syncService` followed
/// by `RepackSubsets`): pods with an IP, not terminal and not being deleted
/// (both allowed with `publishNotReadyAddresses`), grouped by the set of
/// ports they serve; ready pods in `addresses`, the others in
/// `notReadyAddresses`. Addresses are sorted by IP, subsets by ports.
pub fn desired_subsets<P: Borrow<Pod>>(svc: &Service, pods: &[P]) -> Vec<EndpointSubset> {
    let Some(selector) = managed_selector(svc) else {
        return Vec::new();
    };
    let tolerate_unready = publish_not_ready(svc);
    let has_ports = !service_ports(svc).is_empty();
    // Keyed by the ports: the ports, ready and not ready addresses.
    let mut groups: BTreeMap<String, SubsetGroup> = BTreeMap::new();
    for pod in selected(svc, selector, pods) {
        let Some(ip) = pod_ip(pod) else { continue };
        if is_terminal(pod) || (pod.metadata.deletion_timestamp.is_some() && !tolerate_unready) {
            continue;
        }
        let ports = pod_ports(svc, pod);
        if ports.is_empty() && has_ports {
            continue;
        }
        let address = EndpointAddress {
            ip: ip.to_string(),
            hostname: hostname(svc, pod),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(target_ref(pod)),
        };
        let key = ports_key(&ports);
        let entry = groups
            .entry(key)
            .or_insert_with(|| (ports, Vec::new(), Vec::new()));
        if tolerate_unready || is_ready(pod) {
            entry.1.push(address);
        } else {
            entry.2.push(address);
        }
    }
    groups
        .into_values()
        .map(|(ports, mut ready, mut not_ready)| {
            let by_ip = |a: &EndpointAddress, b: &EndpointAddress| {
                (&a.ip, target_name(a)).cmp(&(&b.ip, target_name(b)))
            };
            ready.sort_by(by_ip);
            not_ready.sort_by(by_ip);
            EndpointSubset {
                addresses: none_if_empty(ready),
                not_ready_addresses: none_if_empty(not_ready),
                ports: none_if_empty(ports),
            }
        })
        .collect()
}

fn target_name(a: &EndpointAddress) -> Option<&str> {
    a.target_ref.as_ref().and_then(|r| r.name.as_deref())
}

fn ports_key(ports: &[CorePort]) -> String {
    let mut parts: Vec<String> = ports
        .iter()
        .map(|p| {
            format!(
                "{:05}/{}/{}/{}",
                p.port,
                p.protocol.as_deref().unwrap_or_default(),
                p.name.as_deref().unwrap_or_default(),
                p.app_protocol.as_deref().unwrap_or_default()
            )
        })
        .collect();
    parts.sort();
    parts.join(",")
}

/// Drops empty lists, so objects read back from the API compare equal to
/// computed ones.
fn normalize_subsets(subsets: Option<&Vec<EndpointSubset>>) -> Vec<EndpointSubset> {
    subsets
        .into_iter()
        .flatten()
        .map(|s| EndpointSubset {
            addresses: s.addresses.clone().filter(|v| !v.is_empty()),
            not_ready_addresses: s.not_ready_addresses.clone().filter(|v| !v.is_empty()),
            ports: s.ports.clone().filter(|v| !v.is_empty()),
        })
        .filter(|s| s.addresses.is_some() || s.not_ready_addresses.is_some())
        .collect()
}

/// The Endpoints object to write for `svc`, or `None` when nothing is to be
/// written: the service is not managed, or `existing` already says the same
/// (same subsets and labels). An update keeps `existing`'s other metadata
/// (and its resourceVersion, for optimistic concurrency).
pub fn desired_endpoints<P: Borrow<Pod>>(
    svc: &Service,
    pods: &[P],
    existing: Option<&Endpoints>,
) -> Option<Endpoints> {
    let selector = managed_selector(svc)?;
    let subsets = desired_subsets(svc, pods);
    let labels = endpoints_labels(svc);
    if let Some(e) = existing {
        let same_labels = e.metadata.labels.clone().unwrap_or_default() == labels;
        if same_labels && normalize_subsets(e.subsets.as_ref()) == subsets {
            return None;
        }
    }
    let mut meta = existing.map(|e| e.metadata.clone()).unwrap_or(ObjectMeta {
        name: svc.metadata.name.clone(),
        namespace: svc.metadata.namespace.clone(),
        ..Default::default()
    });
    meta.labels = Some(labels);
    let mut annotations = meta.annotations.take().unwrap_or_default();
    annotations.remove("endpoints.kubernetes.io/over-capacity");
    match trigger_time(svc, selected(svc, selector, pods)) {
        Some(t) => annotations.insert(TRIGGER_TIME_ANNOTATION.into(), t.to_string()),
        None => annotations.remove(TRIGGER_TIME_ANNOTATION),
    };
    meta.annotations = (!annotations.is_empty()).then_some(annotations);
    Some(Endpoints {
        metadata: meta,
        subsets: none_if_empty(subsets),
    })
}

/// The content of one EndpointSlice: its ports and endpoints.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SliceContent {
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

/// The IPv4 EndpointSlices of `svc` (upstream `reconcileByAddressType`):
/// every selected pod with an IPv4 address that is not terminal, including
/// terminating ones, grouped by the ports it serves, sorted by address and
/// split into slices of at most [`MAX_ENDPOINTS_PER_SLICE`]. A service
/// without endpoints keeps one empty placeholder slice, as upstream.
/// `zones` maps node names to their `topology.kubernetes.io/zone`.
pub fn desired_slices<P: Borrow<Pod>>(
    svc: &Service,
    pods: &[P],
    zones: &BTreeMap<String, String>,
) -> Vec<SliceContent> {
    let Some(selector) = managed_selector(svc) else {
        return Vec::new();
    };
    let publish = publish_not_ready(svc);
    let has_ports = !service_ports(svc).is_empty();
    let mut groups: BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
    for pod in selected(svc, selector, pods) {
        let Some(ip) = pod_ipv4(pod) else { continue };
        if is_terminal(pod) {
            continue;
        }
        let core_ports = pod_ports(svc, pod);
        if core_ports.is_empty() && has_ports {
            continue;
        }
        let serving = publish || is_ready(pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ready = if publish {
            true
        } else {
            serving && !terminating
        };
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let endpoint = Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            hostname: hostname(svc, pod),
            zone: node_name.as_ref().and_then(|n| zones.get(n)).cloned(),
            node_name,
            target_ref: Some(target_ref(pod)),
            ..Default::default()
        };
        let key = ports_key(&core_ports);
        let ports = core_ports
            .into_iter()
            .map(|p| EndpointPort {
                name: p.name,
                port: Some(p.port),
                protocol: p.protocol,
                app_protocol: p.app_protocol,
            })
            .collect();
        groups
            .entry(key)
            .or_insert_with(|| (ports, Vec::new()))
            .1
            .push(endpoint);
    }
    let mut slices = Vec::new();
    for (ports, mut endpoints) in groups.into_values() {
        endpoints.sort_by(|a, b| {
            let name = |e: &Endpoint| e.target_ref.as_ref().and_then(|r| r.name.clone());
            (&a.addresses, name(a)).cmp(&(&b.addresses, name(b)))
        });
        for chunk in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
            slices.push(SliceContent {
                ports: ports.clone(),
                endpoints: chunk.to_vec(),
            });
        }
    }
    if slices.is_empty() {
        slices.push(SliceContent::default());
    }
    slices
}

/// The labels of the service's slices: the service's own (as upstream,
/// minus the reserved ones), the service name and the manager.
fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = endpoints_labels(svc);
    labels.insert(
        SERVICE_NAME_LABEL.into(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels
}

fn content_of(slice: &EndpointSlice) -> SliceContent {
    SliceContent {
        ports: slice.ports.clone().unwrap_or_default(),
        endpoints: slice.endpoints.clone(),
    }
}

/// Whether `slice` is exactly what we would write for `content`.
fn slice_up_to_date(svc: &Service, slice: &EndpointSlice, content: &SliceContent) -> bool {
    let owned = slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && Some(&r.uid) == svc.metadata.uid.as_ref());
    owned
        && slice.address_type == "IPv4"
        && slice.metadata.labels.clone().unwrap_or_default() == slice_labels(svc)
        && &content_of(slice) == content
}

/// What to do with the service's existing slices.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SlicePlan {
    /// Existing slices (by name) to rewrite in place with new content.
    pub update: Vec<(String, SliceContent)>,
    /// New slices to create.
    pub create: Vec<SliceContent>,
    /// Existing slices (by name) no longer needed.
    pub delete: Vec<String>,
}

impl SlicePlan {
    pub fn is_empty(&self) -> bool {
        self.update.is_empty() && self.create.is_empty() && self.delete.is_empty()
    }
}

/// Matches the desired slices with the `existing` ones of the service:
/// slices already right are kept untouched, the others are reused in place
/// (in name order) before any is created, and the leftovers deleted.
pub fn plan_slices(
    svc: &Service,
    desired: Vec<SliceContent>,
    existing: &[EndpointSlice],
) -> SlicePlan {
    let mut spare: Vec<&EndpointSlice> = existing.iter().collect();
    spare.sort_by_key(|s| s.metadata.name.clone());
    let mut todo = Vec::new();
    for content in desired {
        match spare
            .iter()
            .position(|s| slice_up_to_date(svc, s, &content))
        {
            Some(i) => {
                spare.remove(i);
            }
            None => todo.push(content),
        }
    }
    let mut plan = SlicePlan::default();
    let mut spare = spare.into_iter();
    for content in todo {
        match spare.next() {
            Some(s) => plan.update.push((s.name_any(), content)),
            None => plan.create.push(content),
        }
    }
    plan.delete = spare.map(|s| s.name_any()).collect();
    plan
}

/// The slice object for `content`, based on `base` (an existing slice being
/// rewritten) or new with `generateName: <service>-`.
pub fn slice_object(
    svc: &Service,
    content: SliceContent,
    base: Option<&EndpointSlice>,
) -> Result<EndpointSlice, Error> {
    let owner = owner_ref("v1", "Service", &svc.metadata)
        .ok_or_else(|| Error::Invalid(svc.name_any(), "service without uid".into()))?;
    let mut meta = base.map(|b| b.metadata.clone()).unwrap_or(ObjectMeta {
        generate_name: Some(format!("{}-", svc.name_any())),
        namespace: svc.metadata.namespace.clone(),
        ..Default::default()
    });
    meta.labels = Some(slice_labels(svc));
    meta.owner_references = Some(vec![owner]);
    Ok(EndpointSlice {
        metadata: meta,
        address_type: "IPv4".into(),
        endpoints: content.endpoints,
        ports: Some(content.ports),
    })
}

struct Context {
    client: kube::Client,
    config: ControllerConfig,
    nodes: Informer<Node>,
    pods: Informer<Pod>,
}

fn slice_selector(service: &str) -> ListParams {
    ListParams::default().labels(&format!(
        "{SERVICE_NAME_LABEL}={service},{MANAGED_BY_LABEL}={MANAGED_BY}"
    ))
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Some(selector) = managed_selector(&svc) else {
        return Ok(Action::await_change());
    };
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    // The namespace's pods from the cache; the desired_* functions select
    // the service's own.
    let pods = ctx.pods.list_namespace(&ns);

    let endpoints: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = endpoints.get_opt(&name).await?;
    if let Some(ep) = desired_endpoints(&svc, &pods, existing.as_ref()) {
        if existing.is_some() {
            endpoints
                .replace(&name, &PostParams::default(), &ep)
                .await?;
        } else {
            endpoints.create(&PostParams::default(), &ep).await?;
        }
        tracing::debug!(service = %name, namespace = %ns, "wrote endpoints");
    }

    let zones: BTreeMap<String, String> = selected(&svc, selector, &pods)
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .filter_map(|n| {
            let node = ctx.nodes.get("", &n)?;
            let zone = node.labels().get(ZONE_LABEL)?.clone();
            Some((n, zone))
        })
        .collect();
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = slices.list(&slice_selector(&name)).await?.items;
    let plan = plan_slices(&svc, desired_slices(&svc, &pods, &zones), &existing);
    for (slice_name, content) in plan.update.iter().cloned() {
        let base = existing.iter().find(|s| s.name_any() == slice_name);
        let slice = slice_object(&svc, content, base)?;
        slices
            .replace(&slice_name, &PostParams::default(), &slice)
            .await?;
    }
    for content in plan.create.iter().cloned() {
        let slice = slice_object(&svc, content, None)?;
        slices.create(&PostParams::default(), &slice).await?;
    }
    for slice_name in &plan.delete {
        delete_ignoring_missing(&slices, slice_name).await?;
    }
    if !plan.is_empty() {
        tracing::debug!(service = %name, namespace = %ns, ?plan, "wrote endpoint slices");
    }
    Ok(Action::requeue(ctx.config.resync))
}

async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reconciles a service that is gone: deletes its Endpoints (which has no
/// owner reference) and its managed slices (also collected through their
/// owner reference), after checking with the API that it is really gone.
async fn reconcile_missing(client: kube::Client, ns: String, name: String) -> Result<(), Error> {
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    if services.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
    delete_ignoring_missing(&endpoints, &name).await?;
    let slices: Api<EndpointSlice> = Api::namespaced(client, &ns);
    for slice in slices.list(&slice_selector(&name)).await?.items {
        delete_ignoring_missing(&slices, &slice.name_any()).await?;
    }
    tracing::debug!(service = %name, namespace = %ns, "deleted endpoints of a deleted service");
    Ok(())
}

fn error_policy(svc: Arc<Service>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(service = %svc.name_any(), error = %err, "endpoints reconcile failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// Runs the Endpoints and EndpointSlice controllers until their watches end.
pub async fn run(client: kube::Client, config: ControllerConfig, informers: Informers) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        nodes: informers.nodes.clone(),
        pods: informers.pods.clone(),
    });

    let controller = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let services = controller.store();
    let for_pods = services.clone();
    let controller = controller
        .owns(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
        )
        // Any pod change may add, remove or move an address of any service of
        // its namespace (labels can change), so all of them look again.
        .watches_shared_stream(informers.pods.subscribe(), move |pod| {
            let ns = pod.namespace();
            for_pods
                .state()
                .into_iter()
                .filter(|s| s.namespace() == ns && managed_selector(s).is_some())
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        // Someone else changed or deleted an Endpoints we manage.
        .watches(
            Api::<Endpoints>::all(client.clone()),
            watcher::Config::default(),
            move |ep| {
                let r = ObjectRef::<Service>::new(&ep.name_any()).within(&ep.namespace()?);
                services
                    .get(&r)
                    .filter(|s| managed_selector(s).is_some())
                    .map(|_| r)
            },
        );
    let run = controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            if let Err(controller::Error::ObjectNotFound(r)) = result {
                let (client, name) = (client.clone(), r.name.clone());
                if let Some(ns) = r.namespace.clone() {
                    tokio::spawn(async move {
                        if let Err(e) = reconcile_missing(client, ns, name.clone()).await {
                            tracing::warn!(service = %name, error = %e, "cleaning up endpoints failed");
                        }
                    });
                }
            }
            async {}
        });
    run.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};

    fn svc(ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("svc-uid".into()),
                labels: Some([("tier".to_string(), "front".to_string())].into()),
                creation_timestamp: Some(Time(Timestamp::from_second(1000).unwrap())),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_string(), "web".to_string())].into()),
                ports: Some(ports),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn named_port(name: &str, port: i32, target: &str) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            port,
            target_port: Some(IntOrString::String(target.into())),
            ..Default::default()
        }
    }

    fn number_port(port: i32, target: Option<i32>) -> ServicePort {
        ServicePort {
            port,
            target_port: target.map(IntOrString::Int),
            ..Default::default()
        }
    }

    /// A pod of the service: `ports` are its container ports by name.
    fn pod(name: &str, ip: Option<&str>, ready: bool, ports: &[(&str, i32)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("{name}-uid")),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                creation_timestamp: Some(Time(Timestamp::from_second(2000).unwrap())),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(
                        ports
                            .iter()
                            .map(|(n, p)| ContainerPort {
                                name: Some(n.to_string()),
                                container_port: *p,
                                ..Default::default()
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: ip.map(str::to_string),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(Time(Timestamp::from_second(3000).unwrap())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn with<T>(mut x: T, f: impl FnOnce(&mut T)) -> T {
        f(&mut x);
        x
    }

    /// A subset as `ready IPs | not ready IPs | ports`.
    fn render(subsets: &[EndpointSubset]) -> Vec<String> {
        subsets
            .iter()
            .map(|s| {
                let ips = |a: &Option<Vec<EndpointAddress>>| {
                    a.iter()
                        .flatten()
                        .map(|a| a.ip.clone())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let ports = s
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| format!("{}:{}", p.name.as_deref().unwrap_or("-"), p.port))
                    .collect::<Vec<_>>()
                    .join(",");
                format!(
                    "{} | {} | {}",
                    ips(&s.addresses),
                    ips(&s.not_ready_addresses),
                    ports
                )
            })
            .collect()
    }

    #[test]
    fn subsets_hold_ready_and_not_ready_addresses_with_resolved_ports() {
        let http = || named_port("http", 80, "http");
        let deleting = |p: &mut Pod| {
            p.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(4000).unwrap()))
        };
        let cases: Vec<(&str, Service, Vec<Pod>, Vec<&str>)> = vec![
            (
                "named target port resolved per pod",
                svc(vec![http()]),
                vec![
                    pod("a", Some("10.0.0.1"), true, &[("http", 8080)]),
                    pod("b", Some("10.0.0.2"), true, &[("http", 9090)]),
                ],
                vec!["10.0.0.1 |  | http:8080", "10.0.0.2 |  | http:9090"],
            ),
            (
                "ready and not ready pods",
                svc(vec![http()]),
                vec![
                    pod("a", Some("10.0.0.2"), true, &[("http", 8080)]),
                    pod("b", Some("10.0.0.1"), false, &[("http", 8080)]),
                    pod("c", Some("10.0.0.3"), true, &[("http", 8080)]),
                ],
                vec!["10.0.0.2,10.0.0.3 | 10.0.0.1 | http:8080"],
            ),
            (
                "publishNotReadyAddresses makes every pod ready, even terminating ones",
                with(svc(vec![http()]), |s| {
                    s.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true)
                }),
                vec![
                    pod("a", Some("10.0.0.1"), false, &[("http", 8080)]),
                    with(
                        pod("b", Some("10.0.0.2"), true, &[("http", 8080)]),
                        deleting,
                    ),
                ],
                vec!["10.0.0.1,10.0.0.2 |  | http:8080"],
            ),
            (
                "pods without IP, terminal, being deleted or not selected are skipped",
                svc(vec![http()]),
                vec![
                    pod("noip", None, true, &[("http", 8080)]),
                    with(
                        pod("done", Some("10.0.0.2"), true, &[("http", 8080)]),
                        |p| p.status.as_mut().unwrap().phase = Some("Succeeded".into()),
                    ),
                    with(
                        pod("gone", Some("10.0.0.3"), true, &[("http", 8080)]),
                        deleting,
                    ),
                    with(
                        pod("other", Some("10.0.0.4"), true, &[("http", 8080)]),
                        |p| {
                            p.metadata.labels = Some([("app".to_string(), "db".to_string())].into())
                        },
                    ),
                    with(
                        pod("elsewhere", Some("10.0.0.5"), true, &[("http", 8080)]),
                        |p| p.metadata.namespace = Some("other".into()),
                    ),
                    pod("ok", Some("10.0.0.6"), true, &[("http", 8080)]),
                ],
                vec!["10.0.0.6 |  | http:8080"],
            ),
            (
                "subsets group pods by the ports they serve",
                svc(vec![http(), named_port("metrics", 9100, "metrics")]),
                vec![
                    pod(
                        "a",
                        Some("10.0.0.1"),
                        true,
                        &[("http", 8080), ("metrics", 9100)],
                    ),
                    pod("b", Some("10.0.0.2"), false, &[("http", 8080)]),
                    pod("c", Some("10.0.0.3"), true, &[("http", 8080)]),
                    pod("d", Some("10.0.0.4"), true, &[("other", 1)]),
                ],
                vec![
                    "10.0.0.3 | 10.0.0.2 | http:8080",
                    "10.0.0.1 |  | http:8080,metrics:9100",
                ],
            ),
            (
                "numeric and unset target ports",
                svc(vec![number_port(80, Some(8080)), number_port(443, None)]),
                vec![pod("a", Some("10.0.0.1"), true, &[])],
                vec!["10.0.0.1 |  | -:8080,-:443"],
            ),
            (
                "headless service without ports lists addresses",
                with(svc(vec![]), |s| {
                    s.spec.as_mut().unwrap().cluster_ip = Some("None".into())
                }),
                vec![pod("a", Some("10.0.0.1"), true, &[])],
                vec!["10.0.0.1 |  | "],
            ),
            (
                "service without selector is not managed",
                with(svc(vec![http()]), |s| {
                    s.spec.as_mut().unwrap().selector = None
                }),
                vec![pod("a", Some("10.0.0.1"), true, &[("http", 8080)])],
                vec![],
            ),
            (
                "ExternalName service is not managed",
                with(svc(vec![http()]), |s| {
                    s.spec.as_mut().unwrap().type_ = Some("ExternalName".into())
                }),
                vec![pod("a", Some("10.0.0.1"), true, &[("http", 8080)])],
                vec![],
            ),
        ];
        for (name, s, pods, want) in cases {
            assert_eq!(render(&desired_subsets(&s, &pods)), want, "{name}");
        }
    }

    #[test]
    fn addresses_carry_pod_reference_node_and_hostname() {
        let s = svc(vec![named_port("http", 80, "http")]);
        let p = with(pod("a", Some("10.0.0.1"), true, &[("http", 8080)]), |p| {
            let spec = p.spec.as_mut().unwrap();
            spec.hostname = Some("alpha".into());
            spec.subdomain = Some("web".into());
        });
        let subsets = desired_subsets(&s, &[p]);
        let a = &subsets[0].addresses.as_ref().unwrap()[0];
        assert_eq!(a.hostname.as_deref(), Some("alpha"));
        assert_eq!(a.node_name.as_deref(), Some("n1"));
        let r = a.target_ref.as_ref().unwrap();
        assert_eq!(
            (r.kind.as_deref(), r.name.as_deref(), r.uid.as_deref()),
            (Some("Pod"), Some("a"), Some("a-uid"))
        );
        let port = &subsets[0].ports.as_ref().unwrap()[0];
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
        assert_eq!(port.name.as_deref(), Some("http"));
    }

    #[test]
    fn endpoints_are_written_only_when_they_differ() {
        let s = svc(vec![named_port("http", 80, "http")]);
        let pods = vec![pod("a", Some("10.0.0.1"), true, &[("http", 8080)])];
        let created = desired_endpoints(&s, &pods, None).expect("creates");
        assert_eq!(created.metadata.name.as_deref(), Some("web"));
        assert_eq!(created.metadata.labels, s.metadata.labels);
        assert_eq!(
            created.metadata.annotations.as_ref().unwrap()[TRIGGER_TIME_ANNOTATION],
            "1970-01-01T00:50:00Z"
        );
        assert_eq!(desired_endpoints(&s, &pods, Some(&created)), None);

        let unready = vec![pod("a", Some("10.0.0.1"), false, &[("http", 8080)])];
        let updated = desired_endpoints(&s, &unready, Some(&created)).expect("updates");
        assert_eq!(
            render(updated.subsets.as_deref().unwrap()),
            [" | 10.0.0.1 | http:8080"]
        );
        let relabelled = with(s.clone(), |s| s.metadata.labels = None);
        assert!(desired_endpoints(&relabelled, &pods, Some(&created)).is_some());

        let no_pods = desired_endpoints::<Pod>(&s, &[], Some(&created)).expect("empties");
        assert_eq!(no_pods.subsets, None);
        let unmanaged = with(s, |s| {
            s.spec.as_mut().unwrap().selector = Some(BTreeMap::new())
        });
        assert_eq!(desired_endpoints(&unmanaged, &pods, None), None);
    }

    fn slice_summary(slices: &[SliceContent]) -> Vec<String> {
        slices
            .iter()
            .map(|s| {
                let eps = s
                    .endpoints
                    .iter()
                    .map(|e| {
                        let c = e.conditions.as_ref().unwrap();
                        format!(
                            "{}{}{}{}@{}",
                            e.addresses.join(","),
                            if c.ready == Some(true) { "+r" } else { "" },
                            if c.serving == Some(true) { "+s" } else { "" },
                            if c.terminating == Some(true) {
                                "+t"
                            } else {
                                ""
                            },
                            e.zone.as_deref().unwrap_or("-")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                let ports = s
                    .ports
                    .iter()
                    .map(|p| p.port.unwrap_or_default().to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                format!("{eps} | {ports}")
            })
            .collect()
    }

    #[test]
    fn slices_carry_conditions_zones_and_ports() {
        let zones: BTreeMap<String, String> = [("n1".to_string(), "z1".to_string())].into();
        let http = || named_port("http", 80, "http");
        let cases: Vec<(&str, Service, Vec<Pod>, Vec<&str>)> = vec![
            (
                "ready, not ready and terminating pods",
                svc(vec![http()]),
                vec![
                    pod("a", Some("10.0.0.1"), true, &[("http", 8080)]),
                    pod("b", Some("10.0.0.2"), false, &[("http", 8080)]),
                    with(pod("c", Some("10.0.0.3"), true, &[("http", 8080)]), |p| {
                        p.metadata.deletion_timestamp =
                            Some(Time(Timestamp::from_second(4000).unwrap()));
                        p.spec.as_mut().unwrap().node_name = Some("n2".into());
                    }),
                    pod("v6", Some("fd00::1"), true, &[("http", 8080)]),
                    pod("noip", None, true, &[("http", 8080)]),
                ],
                vec!["10.0.0.1+r+s@z1 10.0.0.2@z1 10.0.0.3+s+t@- | 8080"],
            ),
            (
                "pods grouped by ports",
                svc(vec![http()]),
                vec![
                    pod("a", Some("10.0.0.1"), true, &[("http", 8080)]),
                    pod("b", Some("10.0.0.2"), true, &[("http", 9090)]),
                ],
                vec!["10.0.0.1+r+s@z1 | 8080", "10.0.0.2+r+s@z1 | 9090"],
            ),
            (
                "empty placeholder without pods",
                svc(vec![http()]),
                vec![],
                vec![" | "],
            ),
        ];
        for (name, s, pods, want) in cases {
            assert_eq!(
                slice_summary(&desired_slices(&s, &pods, &zones)),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn slices_split_at_the_maximum_size() {
        let s = svc(vec![named_port("http", 80, "http")]);
        let pods: Vec<Pod> = (0..250)
            .map(|i| {
                let ip = format!("10.0.{}.{}", i / 200, i % 200);
                pod(&format!("p{i}"), Some(&ip), true, &[("http", 8080)])
            })
            .collect();
        let slices = desired_slices(&s, &pods, &BTreeMap::new());
        let sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
    }

    fn existing(svc: &Service, name: &str, content: SliceContent) -> EndpointSlice {
        let mut slice = slice_object(svc, content, None).unwrap();
        slice.metadata.name = Some(name.into());
        slice
    }

    #[test]
    fn slice_plans_keep_matching_slices_and_reuse_the_others() {
        let s = svc(vec![named_port("http", 80, "http")]);
        let one = desired_slices(
            &s,
            &[pod("a", Some("10.0.0.1"), true, &[("http", 8080)])],
            &BTreeMap::new(),
        );
        let other = desired_slices(
            &s,
            &[pod("b", Some("10.0.0.2"), false, &[("http", 8080)])],
            &BTreeMap::new(),
        );
        let stale_owner = with(existing(&s, "web-old", one[0].clone()), |e| {
            e.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: "web".into(),
                uid: "previous-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }])
        });
        type Case = (
            &'static str,
            Vec<SliceContent>,
            Vec<EndpointSlice>,
            SlicePlan,
        );
        let cases: Vec<Case> = vec![
            (
                "creates the first slice",
                one.clone(),
                vec![],
                SlicePlan {
                    create: one.clone(),
                    ..Default::default()
                },
            ),
            (
                "leaves an up-to-date slice alone",
                one.clone(),
                vec![existing(&s, "web-abcde", one[0].clone())],
                SlicePlan::default(),
            ),
            (
                "updates a changed slice in place",
                other.clone(),
                vec![existing(&s, "web-abcde", one[0].clone())],
                SlicePlan {
                    update: vec![("web-abcde".into(), other[0].clone())],
                    ..Default::default()
                },
            ),
            (
                "rewrites a slice of a previous service of the same name",
                one.clone(),
                vec![stale_owner],
                SlicePlan {
                    update: vec![("web-old".into(), one[0].clone())],
                    ..Default::default()
                },
            ),
            (
                "deletes extra slices",
                one.clone(),
                vec![
                    existing(&s, "web-b", other[0].clone()),
                    existing(&s, "web-a", one[0].clone()),
                ],
                SlicePlan {
                    delete: vec!["web-b".into()],
                    ..Default::default()
                },
            ),
        ];
        for (name, desired, have, want) in cases {
            assert_eq!(plan_slices(&s, desired, &have), want, "{name}");
        }
    }

    #[test]
    fn slices_are_labelled_and_owned_by_the_service() {
        let s = svc(vec![]);
        let slice = slice_object(&s, SliceContent::default(), None).unwrap();
        let labels = slice.metadata.labels.unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels["tier"], "front");
        assert_eq!(slice.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(slice.address_type, "IPv4");
        let owner = &slice.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.uid.as_str(),
                owner.controller,
                owner.block_owner_deletion
            ),
            ("Service", "svc-uid", Some(true), Some(true))
        );
    }
}
