//! The scheduling framework, in Kubernetes' shape: a [`NodeInfo`] snapshot
//! per node, one small trait per extension point ([`PreFilterPlugin`],
//! [`FilterPlugin`], [`ScorePlugin`] with its normalize step), a closed set
//! of status [`Code`]s, and a [`Registry`] of plugins by name. Everything
//! here is pure: no IO, no clock.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, PodStatus, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::resources::{HostPort, Resource, host_ports, non_zero_requests, pod_requests};

/// The highest score a score plugin may give after normalizing.
pub const MAX_NODE_SCORE: i64 = 100;

/// What a plugin decided. Each code says what happens to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// The plugin has no objection; the next one runs.
    Success,
    /// The node does not fit now, but preempting pods on it may help: the
    /// pod goes to the unschedulable queue and preemption considers the
    /// node.
    Unschedulable,
    /// The node does not fit and preemption cannot change that (labels,
    /// taints, cordon): preemption skips the node.
    UnschedulableAndUnresolvable,
    /// Something went wrong inside the plugin: the pod is retried with
    /// backoff.
    Error,
    /// From a PreFilter: nothing to check for this pod, so the plugin's
    /// Filter is not run this cycle; from a PreScore: the same for Score
    /// (upstream's `Skip`).
    Skip,
}

/// A plugin's answer: a code, the reasons (each counted separately in the
/// `0/N nodes are available` message), and the plugin that gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub reasons: Vec<String>,
    pub plugin: &'static str,
}

impl Status {
    pub fn success() -> Status {
        Status {
            code: Code::Success,
            reasons: Vec::new(),
            plugin: "",
        }
    }

    pub fn new(code: Code, reason: impl Into<String>) -> Status {
        Status {
            code,
            reasons: vec![reason.into()],
            plugin: "",
        }
    }

    pub fn unschedulable(reason: impl Into<String>) -> Status {
        Status::new(Code::Unschedulable, reason)
    }

    pub fn unresolvable(reason: impl Into<String>) -> Status {
        Status::new(Code::UnschedulableAndUnresolvable, reason)
    }

    pub fn error(reason: impl Into<String>) -> Status {
        Status::new(Code::Error, reason)
    }

    pub fn skip() -> Status {
        Status {
            code: Code::Skip,
            reasons: Vec::new(),
            plugin: "",
        }
    }

    pub fn is_success(&self) -> bool {
        self.code == Code::Success
    }

    pub fn with_plugin(mut self, plugin: &'static str) -> Status {
        self.plugin = plugin;
        self
    }

    /// The reasons joined the way `Status.Message()` joins them.
    pub fn message(&self) -> String {
        self.reasons.join(", ")
    }
}

/// A pod with what the plugins need precomputed.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    /// Effective requests: `max(sum(containers), max(init))` plus overhead.
    pub requests: Resource,
    /// The same with 100m cpu / 200Mi memory for containers that ask for
    /// none (used by scoring only).
    pub non_zero_requests: Resource,
    pub host_ports: Vec<HostPort>,
    /// `spec.priority`, resolved by whoever built this (see
    /// [`PodInfo::with_priority`]).
    pub priority: i32,
    /// The pod has pod affinity or anti-affinity terms.
    pub has_pod_affinity: bool,
    /// A hash of the namespace and labels, which is all a label selector
    /// looks at (see [`NodeInfo::label_groups`]).
    pub label_key: u64,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> PodInfo {
        let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        PodInfo {
            requests: pod_requests(&pod),
            non_zero_requests: non_zero_requests(&pod),
            host_ports: host_ports(&pod),
            priority,
            has_pod_affinity: pod
                .spec
                .as_ref()
                .and_then(|s| s.affinity.as_ref())
                .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some()),
            label_key: label_key(&pod),
            pod,
        }
    }

    pub fn with_priority(mut self, priority: i32) -> PodInfo {
        self.priority = priority;
        self
    }

    /// The same pod as the cache keeps one assigned to a node: its
    /// requests, host ports and priority are computed already, and of the
    /// object only what plugins and preemption read of *other* pods stays
    /// (identity, labels, owners, deletion, the scheduling fields of the
    /// spec, phase and start time). Containers, volumes, annotations and
    /// the rest of the status go: a typed `Pod` with one container is
    /// 6–7 KB, and the cache holds every pod of the cluster.
    pub fn assigned(mut self) -> PodInfo {
        self.pod = Arc::new(assigned_view(&self.pod));
        self
    }

    pub fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }

    pub fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn uid(&self) -> &str {
        self.pod.metadata.uid.as_deref().unwrap_or_default()
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.pod.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    pub fn is_terminating(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }
}

/// What [`PodInfo::assigned`] keeps of a pod.
fn assigned_view(pod: &Pod) -> Pod {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            labels: meta.labels.clone(),
            owner_references: meta.owner_references.clone(),
            creation_timestamp: meta.creation_timestamp.clone(),
            deletion_timestamp: meta.deletion_timestamp.clone(),
            resource_version: meta.resource_version.clone(),
            ..Default::default()
        },
        spec: spec.map(|s| PodSpec {
            node_name: s.node_name.clone(),
            scheduler_name: s.scheduler_name.clone(),
            priority: s.priority,
            priority_class_name: s.priority_class_name.clone(),
            preemption_policy: s.preemption_policy.clone(),
            node_selector: s.node_selector.clone(),
            affinity: s.affinity.clone(),
            tolerations: s.tolerations.clone(),
            topology_spread_constraints: s.topology_spread_constraints.clone(),
            ..Default::default()
        }),
        status: status.map(|s| PodStatus {
            phase: s.phase.clone(),
            start_time: s.start_time.clone(),
            nominated_node_name: s.nominated_node_name.clone(),
            ..Default::default()
        }),
    }
}

/// One node and what is assigned to it: the snapshot a filter or score
/// plugin judges.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub pods: Vec<Arc<PodInfo>>,
    /// The subset of `pods` with pod (anti-)affinity terms, so inter-pod
    /// affinity does not look at every pod of the cluster for every pod
    /// (upstream's `PodsWithAffinity`).
    pub pods_with_affinity: Vec<Arc<PodInfo>>,
    /// Sum of the assigned pods' effective requests.
    pub requested: Resource,
    /// The same with non-zero defaults (for scoring).
    pub non_zero_requested: Resource,
    pub allocatable: Resource,
    /// The node's `Ready` condition, read once per node update: the
    /// filters that look at it run for hundreds of nodes per pod, and
    /// reaching into the node object each time was 7 % of the scheduler's
    /// CPU at 5,000 nodes.
    pub ready: Readiness,
    /// `spec.unschedulable` (cordoned), read once per node update.
    pub unschedulable: bool,
    /// `spec.taints`, copied once per node update for the same reason
    /// (empty for most nodes, so the filter touches no other memory).
    pub taints: Vec<Taint>,
    /// The pods that are not terminating, grouped by namespace and labels
    /// ([`PodInfo::label_key`]). Counting the pods a selector selects
    /// evaluates it once per group rather than once per pod: a
    /// Deployment's pods share their labels, and topology spreading counts
    /// on thousands of nodes each cycle (reading every pod took ~70 ms a
    /// cycle at 5,000 nodes and 150,000 pods).
    pub label_groups: Vec<LabelGroup>,
    /// The hostname and zone labels, read once per node update: topology
    /// spreading looks them up on nodes by the thousand each cycle, and
    /// reaching through the node object into its label map was most of
    /// that (see [`NodeInfo::label`]).
    hostname: Option<String>,
    zone: Option<String>,
}

/// The node labels [`NodeInfo`] keeps at hand.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Pods of one node with the same [`PodInfo::label_key`].
#[derive(Debug, Clone)]
pub struct LabelGroup {
    pub key: u64,
    pub count: u32,
    /// A pod with the group's namespace and labels (the first one added,
    /// which may have gone since).
    pub member: Arc<PodInfo>,
}

/// The assigned pods that are not terminating on the nodes of the
/// scheduler's cache, counted by label group ([`PodInfo::label_key`]) and
/// by the nodes' `topology.kubernetes.io/zone` label, kept up to date as
/// pods and nodes change. Spreading over zones sums these instead of
/// visiting every node of the cluster each cycle: a Deployment's pods are
/// one group, so a cycle reads a few numbers instead of thousands of
/// nodes.
#[derive(Debug, Clone, Default)]
pub struct ZoneGroups {
    /// Namespace → label key → group.
    namespaces: HashMap<String, HashMap<u64, ZoneGroup>>,
}

#[derive(Debug, Clone)]
pub struct ZoneGroup {
    /// A pod with the group's namespace and labels (the first one added,
    /// which may have gone since).
    pub member: Arc<PodInfo>,
    /// Zone → pods of the group on the nodes of that zone.
    pub zones: HashMap<String, u32>,
}

impl ZoneGroups {
    /// Counts `pod` on a node of `zone` (terminating pods are not counted).
    pub fn add(&mut self, pod: &Arc<PodInfo>, zone: &str) {
        if pod.is_terminating() {
            return;
        }
        let group = self
            .namespaces
            .entry(pod.namespace().to_string())
            .or_default()
            .entry(pod.label_key)
            .or_insert_with(|| ZoneGroup {
                member: pod.clone(),
                zones: HashMap::new(),
            });
        match group.zones.get_mut(zone) {
            Some(n) => *n += 1,
            None => {
                group.zones.insert(zone.to_string(), 1);
            }
        }
    }

    /// Undoes [`ZoneGroups::add`].
    pub fn remove(&mut self, pod: &Arc<PodInfo>, zone: &str) {
        if pod.is_terminating() {
            return;
        }
        let Some(groups) = self.namespaces.get_mut(pod.namespace()) else {
            return;
        };
        let Some(group) = groups.get_mut(&pod.label_key) else {
            return;
        };
        if let Some(n) = group.zones.get_mut(zone) {
            *n -= 1;
            if *n == 0 {
                group.zones.remove(zone);
            }
        }
        if group.zones.is_empty() {
            groups.remove(&pod.label_key);
            if groups.is_empty() {
                self.namespaces.remove(pod.namespace());
            }
        }
    }

    /// The groups of a namespace, with their label keys.
    pub fn groups(&self, namespace: &str) -> impl Iterator<Item = (u64, &ZoneGroup)> {
        self.namespaces
            .get(namespace)
            .into_iter()
            .flatten()
            .map(|(key, group)| (*key, group))
    }

    /// (namespace, label key, zone) → pods, for comparing in tests.
    #[cfg(test)]
    pub fn totals(&self) -> BTreeMap<(String, u64, String), u32> {
        let mut out = BTreeMap::new();
        for (ns, groups) in &self.namespaces {
            for (key, group) in groups {
                for (zone, n) in &group.zones {
                    out.insert((ns.clone(), *key, zone.clone()), *n);
                }
            }
        }
        out
    }

    /// What the cache keeps for `nodes`, built at once (for tests).
    #[cfg(test)]
    pub fn of(nodes: &[&NodeInfo]) -> ZoneGroups {
        let mut groups = ZoneGroups::default();
        for node in nodes {
            if let Some(zone) = node.label(ZONE_LABEL) {
                for pod in &node.pods {
                    groups.add(pod, zone);
                }
            }
        }
        groups
    }
}

/// The hash behind [`PodInfo::label_key`]: two label sets are told apart
/// by it alone, so a collision (odds about 2^-64 per pair) would count one
/// group's pods as the other's.
fn label_key(pod: &Pod) -> u64 {
    static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
    let mut h = std::hash::DefaultHasher::new();
    let meta = &pod.metadata;
    meta.namespace.as_deref().unwrap_or("default").hash(&mut h);
    meta.labels.as_ref().unwrap_or(&NO_LABELS).hash(&mut h);
    h.finish()
}

/// The status of a node's `Ready` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    True,
    False,
    /// `Unknown`, or no `Ready` condition at all.
    Unknown,
}

impl Readiness {
    pub fn of(node: &Node) -> Readiness {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str());
        match ready {
            Some("True") => Readiness::True,
            Some("False") => Readiness::False,
            _ => Readiness::Unknown,
        }
    }
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> NodeInfo {
        let allocatable = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()))
            .map(Resource::from_list)
            .unwrap_or_default();
        let ready = Readiness::of(&node);
        let unschedulable = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let label = |key: &str| node.metadata.labels.as_ref()?.get(key).cloned();
        let (hostname, zone) = (label(HOSTNAME_LABEL), label(ZONE_LABEL));
        NodeInfo {
            node,
            pods: Vec::new(),
            pods_with_affinity: Vec::new(),
            requested: Resource::default(),
            non_zero_requested: Resource::default(),
            allocatable,
            ready,
            unschedulable,
            taints,
            label_groups: Vec::new(),
            hostname,
            zone,
        }
    }

    /// A node info with `pods` assigned.
    pub fn with_pods(node: Arc<Node>, pods: impl IntoIterator<Item = Arc<PodInfo>>) -> NodeInfo {
        let mut info = NodeInfo::new(node);
        for p in pods {
            info.add_pod(p);
        }
        info
    }

    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.node.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    /// The value of one node label; the hostname and zone without reading
    /// the node object.
    pub fn label(&self, key: &str) -> Option<&String> {
        match key {
            HOSTNAME_LABEL => self.hostname.as_ref(),
            ZONE_LABEL => self.zone.as_ref(),
            _ => self.labels().get(key),
        }
    }

    /// Replaces the node object, keeping the pods.
    pub fn set_node(&mut self, node: Arc<Node>) {
        let pods = std::mem::take(&mut self.pods);
        *self = NodeInfo::with_pods(node, pods);
    }

    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.non_zero_requested.add(&pod.non_zero_requests);
        if pod.has_pod_affinity {
            self.pods_with_affinity.push(pod.clone());
        }
        if !pod.is_terminating() {
            match self
                .label_groups
                .iter_mut()
                .find(|g| g.key == pod.label_key)
            {
                Some(g) => g.count += 1,
                None => self.label_groups.push(LabelGroup {
                    key: pod.label_key,
                    count: 1,
                    member: pod.clone(),
                }),
            }
        }
        self.pods.push(pod);
    }

    /// Removes the pod with `uid` and returns it, if it was there.
    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let i = self.pods.iter().position(|p| p.uid() == uid)?;
        let pod = self.pods.swap_remove(i);
        if pod.has_pod_affinity {
            self.pods_with_affinity.retain(|p| p.uid() != uid);
        }
        if !pod.is_terminating() {
            let groups = &mut self.label_groups;
            if let Some(i) = groups.iter().position(|g| g.key == pod.label_key) {
                groups[i].count -= 1;
                if groups[i].count == 0 {
                    groups.swap_remove(i);
                }
            }
        }
        self.requested.sub(&pod.requests);
        self.non_zero_requested.sub(&pod.non_zero_requests);
        Some(pod)
    }
}

/// Cluster data plugins may read besides nodes: namespace labels (for
/// `namespaceSelector` in pod affinity terms).
#[derive(Debug, Clone, Default)]
pub struct ClusterInfo {
    pub namespace_labels: HashMap<String, BTreeMap<String, String>>,
}

/// The nodes of one scheduling cycle, and what the caller resolved for the
/// pod of that cycle from objects plugins do not read themselves.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    pub nodes: &'a [&'a NodeInfo],
    pub cluster: &'a ClusterInfo,
    /// The selector of the system default topology spread constraints for
    /// the pod (see
    /// [`default_spread_selector`](crate::plugins::pod_topology_spread::default_spread_selector)):
    /// `None` when the pod declares constraints of its own or nothing
    /// selects it. Only PodTopologySpread's scoring reads it.
    pub default_spread_selector: Option<&'a LabelSelector>,
    /// The pods of `nodes` by label group and zone, when the caller keeps
    /// them (the cache does); PodTopologySpread's scoring otherwise counts
    /// node by node.
    pub zone_groups: Option<&'a ZoneGroups>,
}

/// Data a plugin computed in PreFilter or PreScore for its later steps,
/// keyed by plugin name.
#[derive(Default)]
pub struct CycleState {
    data: HashMap<&'static str, Box<dyn Any + Send + Sync>>,
    /// Per filter plugin of the profile: its PreFilter answered Skip.
    skipped_filters: Vec<bool>,
}

impl CycleState {
    pub fn write<T: Any + Send + Sync>(&mut self, key: &'static str, value: T) {
        self.data.insert(key, Box::new(value));
    }

    pub fn read<T: Any>(&self, key: &'static str) -> Option<&T> {
        self.data.get(key).and_then(|v| v.downcast_ref())
    }
}

/// Runs once per cycle before filtering, with every node in view; returns
/// non-success to reject the pod on all nodes.
pub trait PreFilterPlugin: Send + Sync {
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, snapshot: &Snapshot) -> Status;
}

/// Judges one node: Success, or why the pod cannot go there.
pub trait FilterPlugin: Send + Sync {
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status;
}

/// Ranks feasible nodes. `pre_score` sees them all first, and answers
/// Skip when the plugin would score every node the same (its Score and
/// Normalize then do not run and it adds nothing, as upstream);
/// `normalize` brings raw scores to `0..=MAX_NODE_SCORE`.
pub trait ScorePlugin: Send + Sync {
    fn pre_score(
        &self,
        _state: &mut CycleState,
        _pod: &PodInfo,
        _feasible: &[&NodeInfo],
        _snapshot: &Snapshot,
    ) -> Status {
        Status::success()
    }
    fn score(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64;
    fn normalize(&self, _state: &CycleState, _pod: &PodInfo, _scores: &mut [i64]) {}
}

/// A plugin: a name and the extension points it implements.
pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;
    fn pre_filter(&self) -> Option<&dyn PreFilterPlugin> {
        None
    }
    fn filter(&self) -> Option<&dyn FilterPlugin> {
        None
    }
    fn score(&self) -> Option<&dyn ScorePlugin> {
        None
    }
}

/// Plugins by name.
#[derive(Default, Clone)]
pub struct Registry {
    plugins: BTreeMap<&'static str, Arc<dyn Plugin>>,
}

impl Registry {
    pub fn register(&mut self, plugin: Arc<dyn Plugin>) {
        self.plugins.insert(plugin.name(), plugin);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Plugin>> {
        self.plugins.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.plugins.keys().copied()
    }
}

/// Why building a profile failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("plugin {0:?} is not registered")]
    Unknown(String),
    #[error("plugin {name:?} does not implement {point}")]
    NotImplemented { name: String, point: &'static str },
}

/// Which plugins run at each extension point, in order, and the score
/// weights.
#[derive(Clone)]
pub struct Profile {
    /// With the index of the plugin in `filters`.
    pre_filters: Vec<(&'static str, Arc<dyn Plugin>, usize)>,
    filters: Vec<(&'static str, Arc<dyn Plugin>)>,
    scores: Vec<(&'static str, Arc<dyn Plugin>, i64)>,
}

impl Profile {
    /// A profile of registered plugins: PreFilter runs for every filter
    /// plugin that implements it.
    pub fn new(
        registry: &Registry,
        filters: &[&str],
        scores: &[(&str, i64)],
    ) -> Result<Profile, ProfileError> {
        let get = |name: &str| {
            registry
                .get(name)
                .cloned()
                .ok_or_else(|| ProfileError::Unknown(name.to_string()))
        };
        let mut profile = Profile {
            pre_filters: Vec::new(),
            filters: Vec::new(),
            scores: Vec::new(),
        };
        for name in filters {
            let p = get(name)?;
            if p.filter().is_none() {
                return Err(ProfileError::NotImplemented {
                    name: name.to_string(),
                    point: "Filter",
                });
            }
            if p.pre_filter().is_some() {
                let index = profile.filters.len();
                profile.pre_filters.push((p.name(), p.clone(), index));
            }
            profile.filters.push((p.name(), p));
        }
        for (name, weight) in scores {
            let p = get(name)?;
            if p.score().is_none() {
                return Err(ProfileError::NotImplemented {
                    name: name.to_string(),
                    point: "Score",
                });
            }
            profile.scores.push((p.name(), p, *weight));
        }
        Ok(profile)
    }

    pub fn run_pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
    ) -> Status {
        state.skipped_filters.clear();
        state.skipped_filters.resize(self.filters.len(), false);
        for (name, p, index) in &self.pre_filters {
            if let Some(pf) = p.pre_filter() {
                let s = pf.pre_filter(state, pod, snapshot);
                if s.code == Code::Skip {
                    state.skipped_filters[*index] = true;
                    continue;
                }
                if !s.is_success() {
                    return s.with_plugin(name);
                }
            }
        }
        Status::success()
    }

    /// The first failing filter's status, or Success.
    pub fn run_filters(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        for (i, (name, p)) in self.filters.iter().enumerate() {
            if state.skipped_filters.get(i).copied().unwrap_or(false) {
                continue;
            }
            if let Some(f) = p.filter() {
                let s = f.filter(state, pod, node);
                if !s.is_success() {
                    return s.with_plugin(name);
                }
            }
        }
        Status::success()
    }

    /// Weighted, normalized total score of each feasible node.
    pub fn run_scores(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        feasible: &[&NodeInfo],
        snapshot: &Snapshot,
    ) -> Vec<i64> {
        let mut totals = vec![0i64; feasible.len()];
        for (_, p, weight) in &self.scores {
            let Some(sp) = p.score() else { continue };
            if sp.pre_score(state, pod, feasible, snapshot).code == Code::Skip {
                continue;
            }
            let mut scores: Vec<i64> = feasible.iter().map(|n| sp.score(state, pod, n)).collect();
            sp.normalize(state, pod, &mut scores);
            for (t, s) in totals.iter_mut().zip(scores) {
                *t += s.clamp(0, MAX_NODE_SCORE) * weight;
            }
        }
        totals
    }
}

/// Why no node fits: the per-node statuses, and what preemption said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    pub num_all_nodes: usize,
    /// Set when a PreFilter rejected the pod outright.
    pub pre_filter_msg: Option<String>,
    /// Node name → the filter status that rejected it.
    pub node_to_status: BTreeMap<String, Status>,
    pub post_filter_msg: Option<String>,
}

impl std::fmt::Display for FitError {
    /// Kubernetes' `FitError.Error()`: `0/N nodes are available: <count>
    /// <reason>, ... .` with the reasons sorted as strings, then the
    /// PostFilter (preemption) message.
    /// With no nodes at all it is upstream's `ErrNoNodesAvailable`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.num_all_nodes == 0 {
            return write!(f, "no nodes available to schedule pods");
        }
        write!(f, "0/{} nodes are available:", self.num_all_nodes)?;
        if let Some(msg) = &self.pre_filter_msg {
            write!(f, " {msg}.")?;
        } else {
            let histogram = reason_histogram(self.node_to_status.values());
            if !histogram.is_empty() {
                write!(f, " {}.", histogram.join(", "))?;
            }
        }
        if let Some(msg) = &self.post_filter_msg {
            write!(f, " {}.", msg.trim_end_matches('.'))?;
        }
        Ok(())
    }
}

/// `"<count> <reason>"` per distinct reason, sorted as strings (as upstream
/// does, so "10 x" sorts before "2 y").
pub fn reason_histogram<'a>(statuses: impl IntoIterator<Item = &'a Status>) -> Vec<String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in statuses {
        for r in &s.reasons {
            *counts.entry(r.as_str()).or_default() += 1;
        }
    }
    let mut out: Vec<String> = counts
        .into_iter()
        .map(|(r, n)| format!("{n} {r}"))
        .collect();
    out.sort();
    out
}

/// The outcome of one scheduling attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleResult {
    pub node: String,
    /// Nodes filtered before enough were feasible.
    pub evaluated_nodes: usize,
    pub feasible_nodes: usize,
}

/// Upstream's `numFeasibleNodesToFind` with the adaptive default
/// `percentageOfNodesToScore`: every node below 100 nodes, else
/// `50 - nodes/125` percent (at least 5 %) but at least 100 nodes. A large
/// cluster is not filtered and scored whole for every pod.
pub fn feasible_nodes_to_find(num_all_nodes: usize) -> usize {
    const MIN_NODES: usize = 100;
    const MIN_PERCENT: usize = 5;
    if num_all_nodes < MIN_NODES {
        return num_all_nodes;
    }
    let percent = 50usize.saturating_sub(num_all_nodes / 125).max(MIN_PERCENT);
    (num_all_nodes * percent / 100).max(MIN_NODES)
}

/// `schedulePod`: PreFilter, Filter nodes from `start` round the list until
/// [`feasible_nodes_to_find`] fit (upstream's rotating
/// `nextStartNodeIndex`: the caller passes the previous start plus the
/// previous `evaluated_nodes`), Score the feasible ones, pick the highest
/// (ties broken by `tie_break`, which is handed the number of tied nodes
/// and returns an index below it).
pub fn schedule_pod(
    profile: &Profile,
    pod: &PodInfo,
    snapshot: &Snapshot,
    start: usize,
    tie_break: &mut dyn FnMut(usize) -> usize,
) -> Result<ScheduleResult, FitError> {
    let num_all_nodes = snapshot.nodes.len();
    let mut fit_error = FitError {
        num_all_nodes,
        pre_filter_msg: None,
        node_to_status: BTreeMap::new(),
        post_filter_msg: None,
    };
    if num_all_nodes == 0 {
        return Err(fit_error);
    }
    let mut state = CycleState::default();
    let pre = profile.run_pre_filter(&mut state, pod, snapshot);
    if !pre.is_success() {
        for n in snapshot.nodes {
            fit_error
                .node_to_status
                .insert(n.name().to_string(), pre.clone());
        }
        fit_error.pre_filter_msg = Some(pre.message());
        return Err(fit_error);
    }
    let want = feasible_nodes_to_find(num_all_nodes);
    let mut feasible: Vec<&NodeInfo> = Vec::new();
    let mut evaluated_nodes = 0;
    for i in 0..num_all_nodes {
        let n = snapshot.nodes[(start + i) % num_all_nodes];
        evaluated_nodes += 1;
        let s = profile.run_filters(&state, pod, n);
        if s.is_success() {
            feasible.push(n);
            if feasible.len() >= want {
                break;
            }
        } else {
            fit_error.node_to_status.insert(n.name().to_string(), s);
        }
    }
    if feasible.is_empty() {
        return Err(fit_error);
    }
    let feasible_nodes = feasible.len();
    if feasible.len() == 1 {
        return Ok(ScheduleResult {
            node: feasible[0].name().to_string(),
            evaluated_nodes,
            feasible_nodes,
        });
    }
    let scores = profile.run_scores(&mut state, pod, &feasible, snapshot);
    let best = scores.iter().copied().max().unwrap_or(0);
    let tied: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] == best).collect();
    let pick = tied[tie_break(tied.len()).min(tied.len() - 1)];
    Ok(ScheduleResult {
        node: feasible[pick].name().to_string(),
        evaluated_nodes,
        feasible_nodes,
    })
}

/// Upstream's `DefaultNormalizeScore`: scales so the best is
/// `MAX_NODE_SCORE`; `reverse` makes the lowest raw score the best.
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        let v = MAX_NODE_SCORE * *s / max;
        *s = if reverse { MAX_NODE_SCORE - v } else { v };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::default_profile;
    use crate::plugins::testing::{node_named, pod};
    use serde_json::json;

    #[test]
    fn an_assigned_pod_keeps_what_other_pods_are_judged_by() {
        let affinity = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}});
        let full = pod(json!({
            "metadata": {"labels": {"app": "web"}, "annotations": {"big": "x".repeat(1000)},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "o", "controller": true}]},
            "spec": {"nodeName": "n1", "priority": 7, "affinity": affinity,
                "containers": [{"name": "c", "image": "i", "env": [{"name": "A", "value": "b"}],
                    "ports": [{"containerPort": 80, "hostPort": 8080}],
                    "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}],
                "volumes": [{"name": "v", "emptyDir": {}}]},
            "status": {"phase": "Running", "startTime": "2026-01-01T00:00:00Z",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0}]}
        }));
        let slim = full.clone().assigned();
        assert_eq!(slim.requests, full.requests);
        assert_eq!(slim.non_zero_requests, full.non_zero_requests);
        assert_eq!(slim.host_ports, full.host_ports);
        assert_eq!(
            (slim.priority, slim.has_pod_affinity, slim.label_key),
            (full.priority, true, full.label_key)
        );
        assert_eq!(
            (slim.namespace(), slim.name(), slim.uid()),
            (full.namespace(), full.name(), full.uid())
        );
        assert_eq!(slim.labels(), full.labels());
        let (spec, status) = (
            slim.pod.spec.as_ref().unwrap(),
            slim.pod.status.as_ref().unwrap(),
        );
        assert_eq!(spec.affinity, full.pod.spec.as_ref().unwrap().affinity);
        assert_eq!(
            (spec.node_name.as_deref(), spec.priority),
            (Some("n1"), Some(7))
        );
        assert_eq!(
            slim.pod.metadata.owner_references,
            full.pod.metadata.owner_references
        );
        assert_eq!(
            status.start_time,
            full.pod.status.as_ref().unwrap().start_time
        );
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(spec.containers.is_empty() && spec.volumes.is_none());
        assert!(slim.pod.metadata.annotations.is_none());
        assert!(status.conditions.is_none() && status.container_statuses.is_none());
    }

    #[test]
    fn large_clusters_are_searched_only_until_enough_nodes_fit() {
        let cases = [
            (0, 0),
            (99, 99),
            (100, 100),
            (200, 100),
            (1000, 420),
            (5000, 500),
            (10000, 500),
        ];
        for (nodes, want) in cases {
            assert_eq!(feasible_nodes_to_find(nodes), want, "{nodes} nodes");
        }
        let nodes: Vec<NodeInfo> = (0..1000)
            .map(|i| {
                let over = if i % 2 == 0 {
                    json!({"spec": {"unschedulable": true}})
                } else {
                    json!({})
                };
                node_named(&format!("n{i:04}"), over)
            })
            .collect();
        let refs: Vec<&NodeInfo> = nodes.iter().collect();
        let cluster = ClusterInfo::default();
        let snapshot = Snapshot {
            nodes: &refs,
            cluster: &cluster,
            default_spread_selector: None,
            zone_groups: None,
        };
        let profile = default_profile();
        let p = pod(json!({}));
        let r = schedule_pod(&profile, &p, &snapshot, 990, &mut |_| 0).expect("fits");
        // 420 feasible among every other node, starting at 990 and wrapping.
        assert_eq!((r.feasible_nodes, r.evaluated_nodes), (420, 840));
        let idx: usize = r.node[1..].parse().unwrap();
        assert!(idx % 2 == 1 && !(830..990).contains(&idx), "{}", r.node);
    }

    /// PreFilter answers Skip when the pod is labelled `skip`; Filter
    /// rejects every node.
    struct Picky;
    impl Plugin for Picky {
        fn name(&self) -> &'static str {
            "Picky"
        }
        fn pre_filter(&self) -> Option<&dyn PreFilterPlugin> {
            Some(self)
        }
        fn filter(&self) -> Option<&dyn FilterPlugin> {
            Some(self)
        }
    }
    impl PreFilterPlugin for Picky {
        fn pre_filter(&self, _: &mut CycleState, pod: &PodInfo, _: &Snapshot) -> Status {
            if pod.labels().contains_key("skip") {
                Status::skip()
            } else {
                Status::success()
            }
        }
    }
    impl FilterPlugin for Picky {
        fn filter(&self, _: &CycleState, _: &PodInfo, _: &NodeInfo) -> Status {
            Status::unschedulable("picky")
        }
    }

    #[test]
    fn a_filter_whose_pre_filter_skipped_does_not_run_that_cycle() {
        let mut registry = Registry::default();
        registry.register(Arc::new(Picky));
        let profile = Profile::new(&registry, &["Picky"], &[]).unwrap();
        let nodes = [node_named("n1", json!({}))];
        let refs: Vec<&NodeInfo> = nodes.iter().collect();
        let cluster = ClusterInfo::default();
        let snapshot = Snapshot {
            nodes: &refs,
            cluster: &cluster,
            default_spread_selector: None,
            zone_groups: None,
        };
        let skipping = pod(json!({"metadata": {"labels": {"skip": "yes"}}}));
        let r = schedule_pod(&profile, &skipping, &snapshot, 0, &mut |_| 0);
        assert_eq!(r.map(|r| r.node).ok().as_deref(), Some("n1"));
        let checked = pod(json!({}));
        let err = schedule_pod(&profile, &checked, &snapshot, 0, &mut |_| 0).unwrap_err();
        assert_eq!(err.to_string(), "0/1 nodes are available: 1 picky.");
        // The skip does not outlive its cycle's state.
        let mut state = CycleState::default();
        assert!(
            profile
                .run_pre_filter(&mut state, &skipping, &snapshot)
                .is_success()
        );
        assert!(
            profile
                .run_pre_filter(&mut state, &checked, &snapshot)
                .is_success()
        );
        assert!(
            !profile
                .run_filters(&state, &checked, &nodes[0])
                .is_success()
        );
    }

    fn st(code: Code, reasons: &[&str]) -> Status {
        Status {
            code,
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
            plugin: "",
        }
    }

    #[test]
    fn fit_error_message_matches_upstream_form() {
        let mut node_to_status = BTreeMap::new();
        node_to_status.insert(
            "cp".to_string(),
            st(
                Code::UnschedulableAndUnresolvable,
                &["node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }"],
            ),
        );
        node_to_status.insert(
            "a".to_string(),
            st(Code::Unschedulable, &["Insufficient cpu"]),
        );
        node_to_status.insert(
            "b".to_string(),
            st(Code::Unschedulable, &["Insufficient cpu"]),
        );
        let e = FitError {
            num_all_nodes: 3,
            pre_filter_msg: None,
            node_to_status,
            post_filter_msg: Some(
                "preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.".into(),
            ),
        };
        assert_eq!(
            e.to_string(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, \
             2 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
        );
    }

    #[test]
    fn fit_error_counts_every_reason_of_a_node_and_sorts_as_strings() {
        let mut node_to_status = BTreeMap::new();
        for i in 0..10 {
            node_to_status.insert(
                format!("n{i}"),
                st(Code::Unschedulable, &["Insufficient memory"]),
            );
        }
        node_to_status.insert(
            "x".into(),
            st(
                Code::Unschedulable,
                &["Insufficient cpu", "Insufficient memory"],
            ),
        );
        node_to_status.insert("y".into(), st(Code::Unschedulable, &["Insufficient cpu"]));
        let e = FitError {
            num_all_nodes: 12,
            pre_filter_msg: None,
            node_to_status,
            post_filter_msg: None,
        };
        assert_eq!(
            e.to_string(),
            "0/12 nodes are available: 11 Insufficient memory, 2 Insufficient cpu."
        );
    }

    #[test]
    fn fit_error_with_no_nodes() {
        let e = FitError {
            num_all_nodes: 0,
            pre_filter_msg: None,
            node_to_status: BTreeMap::new(),
            post_filter_msg: None,
        };
        assert_eq!(e.to_string(), "no nodes available to schedule pods");
    }

    #[test]
    fn default_normalize_scales_and_reverses() {
        struct Case {
            name: &'static str,
            input: Vec<i64>,
            reverse: bool,
            want: Vec<i64>,
        }
        let cases = [
            Case {
                name: "scale to max",
                input: vec![1, 2, 4],
                reverse: false,
                want: vec![25, 50, 100],
            },
            Case {
                name: "all zero stays zero",
                input: vec![0, 0],
                reverse: false,
                want: vec![0, 0],
            },
            Case {
                name: "reverse",
                input: vec![0, 1, 2],
                reverse: true,
                want: vec![100, 50, 0],
            },
            Case {
                name: "reverse all zero is best",
                input: vec![0, 0],
                reverse: true,
                want: vec![100, 100],
            },
        ];
        for mut c in cases {
            default_normalize(&mut c.input, c.reverse);
            assert_eq!(c.input, c.want, "{}", c.name);
        }
    }
}
