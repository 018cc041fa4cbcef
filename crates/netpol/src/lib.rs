//! skiff-netpol: NetworkPolicy enforcement on one node, the job k3s gives
//! its embedded network policy controller. It watches NetworkPolicies and,
//! while any exists, Pods and Namespaces (cluster-wide: a policy on this
//! node's pods can name pods anywhere) and the cluster DNS's
//! EndpointSlice (its addresses count as the DNS pods, see
//! [`model::dns_pods`]), and keeps one nftables table,
//! `ip skiff-netpol`, in step with them: each of this node's pods that a
//! policy isolates gets a chain that lets through only what the policies
//! selecting it allow, for ingress and egress (see [`rules`]).
//!
//! Layout: [`model`] reads the API objects into plain data, [`rules`]
//! renders the whole table as one `nft -f` script (pure, tested as golden
//! text), and [`run`] wires the watches to the kernel: at most one sync per
//! `min_sync_period`, one atomic transaction each, skipped when the script
//! did not change, retried with backoff when it fails.
//!
//! What it must not do: touch the store (it is a Kubernetes API client
//! only), or change anything in the kernel outside its own table. It relies
//! on what the node agent sets up for the service proxy anyway:
//! `bridge-nf-call-iptables`, so traffic between pods on one bridge passes
//! the `forward` hook.

pub mod model;
pub mod rules;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::{Pin, pin};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use skiff_proxy::{Nft, NftCli};

pub use model::{PodInfo, Policy};
pub use rules::{State, Table};

/// How enforcement runs on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node's name: its pods are the ones it enforces policies for.
    pub node_name: String,
    /// Program this network namespace instead of the caller's (tests run a
    /// whole node inside a namespace they created).
    pub host_netns: Option<PathBuf>,
    /// At most one sync per period; changes meanwhile are batched.
    pub min_sync_period: Duration,
    /// Longest wait before retrying a failed sync (the wait doubles from
    /// one second up to this).
    pub max_retry_backoff: Duration,
}

impl Config {
    /// Defaults: the caller's network namespace, syncs at most every
    /// 100 ms, retries backing off up to 30 s.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            host_netns: None,
            min_sync_period: Duration::from_millis(100),
            max_retry_backoff: Duration::from_secs(30),
        }
    }
}

/// Why enforcement stopped (it otherwise runs forever: failed syncs and
/// broken watches are logged and retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid network policy config: {0}")]
    Config(String),
    #[error("the {resource} watch ended")]
    WatchEnded { resource: &'static str },
}

/// The watcher's relist protocol (`Init`, `InitApply`…, `InitDone`)
/// applied to a map of plain values, the relist swapped in at once.
struct Mirror<Key, V> {
    relisting: Option<BTreeMap<Key, V>>,
    listed: bool,
}

impl<Key: Ord, V: PartialEq> Mirror<Key, V> {
    fn new() -> Self {
        Self {
            relisting: None,
            listed: false,
        }
    }

    /// Applies one watch event to `items`, keeping what `read` makes of an
    /// object under `key` (nothing when `read` answers `None`). True when
    /// `items` changed.
    fn apply<K>(
        &mut self,
        items: &mut BTreeMap<Key, V>,
        event: watcher::Event<K>,
        key: impl Fn(&K) -> Key,
        read: impl Fn(&K) -> Option<V>,
    ) -> bool {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(o) => {
                if let (Some(buf), Some(v)) = (self.relisting.as_mut(), read(&o)) {
                    buf.insert(key(&o), v);
                }
                false
            }
            watcher::Event::InitDone => {
                let fresh = self.relisting.take().unwrap_or_default();
                let changed = !self.listed || fresh != *items;
                *items = fresh;
                self.listed = true;
                changed
            }
            watcher::Event::Apply(o) => {
                let k = key(&o);
                match read(&o) {
                    Some(v) if items.get(&k) == Some(&v) => false,
                    Some(v) => {
                        items.insert(k, v);
                        true
                    }
                    None => items.remove(&k).is_some(),
                }
            }
            watcher::Event::Delete(o) => items.remove(&key(&o)).is_some(),
        }
    }
}

/// (namespace, name) of an object.
fn namespaced_key<K: Resource>(o: &K) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

type Events<K> = Pin<Box<dyn Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send>>;

/// A cluster-wide watch of `K`, with the watcher's default backoff.
fn events<K>(client: &kube::Client) -> Events<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .boxed()
}

/// A watch of the cluster DNS's EndpointSlice (see [`model::dns_pods`]),
/// in `kube-system` only: a slice elsewhere with the same label does not
/// make its addresses DNS pods.
fn dns_slice_events(client: &kube::Client) -> Events<EndpointSlice> {
    let selector = format!(
        "endpointslice.kubernetes.io/managed-by={}",
        model::DNS_MANAGED_BY
    );
    watcher(
        Api::<EndpointSlice>::namespaced(client.clone(), model::DNS_NAMESPACE),
        watcher::Config::default().labels(&selector),
    )
    .default_backoff()
    .boxed()
}

/// The next event of a watch that may not be running: never, when it is
/// not.
async fn next<K>(
    events: &mut Option<Events<K>>,
) -> Option<Result<watcher::Event<K>, watcher::Error>> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

/// Runs enforcement until a watch ends for good.
pub async fn run(client: kube::Client, config: Config) -> Result<(), Error> {
    if config.node_name.is_empty() {
        return Err(Error::Config("node name is empty".into()));
    }
    let nft = NftCli::new(config.host_netns.clone());
    let mut policies = pin!(
        watcher(
            Api::<NetworkPolicy>::all(client.clone()),
            watcher::Config::default()
        )
        .default_backoff()
    );
    // Pods and namespaces are watched only while some policy exists: a
    // cluster without policies costs its nodes no pod watch.
    let mut pods: Option<Events<Pod>> = None;
    let mut namespaces: Option<Events<Namespace>> = None;
    let mut dns_slices: Option<Events<EndpointSlice>> = None;
    let mut state = State::default();
    let (mut pod_mirror, mut ns_mirror, mut dns_mirror, mut policy_mirror) =
        (Mirror::new(), Mirror::new(), Mirror::new(), Mirror::new());
    let mut dirty = false;
    // What the kernel holds: the last script written, `None` after a failure
    // or before the first write (so the first sync always writes).
    let mut written: Option<String> = None;
    let mut next_sync = tokio::time::Instant::now();
    let mut retry = Duration::ZERO;
    tracing::info!(node = %config.node_name, netns = ?config.host_netns, "network policy enforcement starting");

    loop {
        let wanted = !state.policies.is_empty();
        if wanted && pods.is_none() {
            pods = Some(events(&client));
            namespaces = Some(events(&client));
            dns_slices = Some(dns_slice_events(&client));
        } else if !wanted && pods.is_some() {
            (pods, namespaces, dns_slices) = (None, None, None);
            (state.pods, state.namespaces, state.host_pods) = Default::default();
            (pod_mirror, ns_mirror, dns_mirror) = (Mirror::new(), Mirror::new(), Mirror::new());
        }
        let can_sync = dirty
            && policy_mirror.listed
            && (!wanted || (pod_mirror.listed && ns_mirror.listed && dns_mirror.listed));
        tokio::select! {
            event = next(&mut pods) => {
                match event.ok_or(Error::WatchEnded { resource: "pods" })? {
                    Ok(e) => dirty |= pod_mirror.apply(&mut state.pods, e, namespaced_key, PodInfo::from_pod),
                    Err(e) => tracing::warn!(error = %e, "pods watch"),
                }
            }
            event = next(&mut namespaces) => {
                match event.ok_or(Error::WatchEnded { resource: "namespaces" })? {
                    Ok(e) => dirty |= ns_mirror.apply(&mut state.namespaces, e, |ns| ns.name_any(), |ns| Some(model::namespace_labels(ns))),
                    Err(e) => tracing::warn!(error = %e, "namespaces watch"),
                }
            }
            event = next(&mut dns_slices) => {
                match event.ok_or(Error::WatchEnded { resource: "endpointslices" })? {
                    Ok(e) => dirty |= dns_mirror.apply(&mut state.host_pods, e, namespaced_key, model::dns_pods),
                    Err(e) => tracing::warn!(error = %e, "cluster DNS endpointslices watch"),
                }
            }
            event = policies.next() => {
                match event.ok_or(Error::WatchEnded { resource: "networkpolicies" })? {
                    Ok(e) => dirty |= policy_mirror.apply(&mut state.policies, e, namespaced_key, |np| Some(Policy::from_api(np))),
                    Err(e) => tracing::warn!(error = %e, "networkpolicies watch"),
                }
            }
            _ = tokio::time::sleep_until(next_sync), if can_sync => {
                let started = tokio::time::Instant::now();
                dirty = false;
                let table = Table::build(&state, &config.node_name);
                let script = table.script();
                if written.as_deref() == Some(script.as_str()) {
                    next_sync = started + config.min_sync_period;
                    continue;
                }
                match nft.apply(&script).await {
                    Ok(()) => {
                        tracing::debug!(
                            chains = table.chains.len(),
                            took = ?started.elapsed(),
                            "network policy table written"
                        );
                        written = Some(script);
                        retry = Duration::ZERO;
                        next_sync = started + config.min_sync_period;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "writing the network policy table failed; retrying");
                        written = None;
                        dirty = true;
                        retry = (retry * 2).clamp(Duration::from_secs(1), config.max_retry_backoff);
                        next_sync = tokio::time::Instant::now() + retry;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn cm(name: &str, value: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("demo".into()),
                ..Default::default()
            },
            data: Some([("v".to_string(), value.to_string())].into()),
            ..Default::default()
        }
    }

    fn value(c: &ConfigMap) -> Option<String> {
        c.data.as_ref()?.get("v").cloned().filter(|v| v != "skip")
    }

    #[test]
    fn a_mirror_reports_only_changes_and_swaps_a_relist_in_at_once() {
        let mut m = Mirror::new();
        let mut items = BTreeMap::new();
        let mut step = |event: watcher::Event<ConfigMap>| {
            let changed = m.apply(&mut items, event, namespaced_key, value);
            let names: Vec<String> = items.keys().map(|(_, n)| n.clone()).collect();
            (changed, m.listed, names)
        };
        let none: Vec<String> = vec![];
        assert_eq!(step(watcher::Event::Init), (false, false, none.clone()));
        assert_eq!(
            step(watcher::Event::InitApply(cm("a", "1"))),
            (false, false, none.clone()),
            "a relist shows at InitDone, not before"
        );
        assert_eq!(
            step(watcher::Event::InitDone),
            (true, true, vec!["a".to_string()])
        );
        assert!(!step(watcher::Event::Apply(cm("a", "1"))).0, "same value");
        assert!(step(watcher::Event::Apply(cm("a", "2"))).0);
        assert!(!step(watcher::Event::Apply(cm("b", "skip"))).0, "not kept");
        assert!(
            step(watcher::Event::Apply(cm("a", "skip"))).0,
            "no longer kept"
        );
        assert!(!step(watcher::Event::Delete(cm("a", "1"))).0);
        assert!(step(watcher::Event::Apply(cm("c", "3"))).0);
        // A relist that finds the same set changes nothing; a different one
        // replaces everything.
        step(watcher::Event::Init);
        step(watcher::Event::InitApply(cm("c", "3")));
        assert!(!step(watcher::Event::InitDone).0);
        step(watcher::Event::Init);
        step(watcher::Event::InitApply(cm("d", "4")));
        assert_eq!(
            step(watcher::Event::InitDone),
            (true, true, vec!["d".to_string()])
        );
    }
}
