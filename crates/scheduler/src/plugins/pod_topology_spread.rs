//! PodTopologySpread: `whenUnsatisfiable: DoNotSchedule` constraints must
//! keep the skew within `maxSkew` (filter); `ScheduleAnyway` constraints
//! prefer the domains with fewer matching pods (score).
//!
//! A pod that declares no constraints of its own is scored against
//! Kubernetes' system default constraints (`defaultingType: System`):
//! `maxSkew: 3` over `kubernetes.io/hostname` and `maxSkew: 5` over
//! `topology.kubernetes.io/zone`, both `ScheduleAnyway`, so they never
//! filter. They count the pods selected by the Services that select the
//! pod and by its ReplicationController, ReplicaSet or StatefulSet
//! ([`default_spread_selector`], upstream's `helper.DefaultSelector`); when
//! nothing selects the pod, no default applies. The caller resolves that
//! selector once per cycle and hands it over in
//! [`Snapshot::default_spread_selector`], so the plugin reads no objects
//! itself. Unlike a pod's own constraints, which leave out of scoring every
//! node missing one of their topology keys, the defaults score a node on
//! the keys it has: a cluster without zone labels spreads by hostname only.
//!
//! Counting is what costs: the defaults apply to every pod of a Deployment,
//! and the zone counts cover every node of the cluster. Pods are counted
//! by label group ([`NodeInfo::label_groups`]), the selector evaluated once
//! per group per cycle, and zone totals are read from the cache's
//! [`ZoneGroups`] when the snapshot has them, instead of visiting every
//! node.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{ReplicationController, Service, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::framework::{
    Code, CycleState, FilterPlugin, HOSTNAME_LABEL, MAX_NODE_SCORE, NodeInfo, Plugin, PodInfo,
    PreFilterPlugin, ScorePlugin, Snapshot, Status, ZONE_LABEL, ZoneGroups,
};
use crate::plugins::node_affinity::{required_matches, restricts_nodes};
use crate::selectors::{label_selector_matches, tolerations_tolerate};

pub const NAME: &str = "PodTopologySpread";
pub const ERR_CONSTRAINTS: &str = "node(s) didn't match pod topology spread constraints";
pub const ERR_MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";
const HOSTNAME: &str = HOSTNAME_LABEL;
const ZONE: &str = ZONE_LABEL;

/// Upstream's `systemDefaultConstraints` as (maxSkew, topologyKey), all
/// `ScheduleAnyway`.
const SYSTEM_DEFAULTS: [(i64, &str); 2] = [(3, HOSTNAME), (5, ZONE)];

/// Where [`default_spread_selector`] looks objects up (upstream's listers):
/// in-memory caches, never the API.
pub trait SelectingObjects {
    /// The Services of a namespace.
    fn services(&self, namespace: &str) -> Vec<Arc<Service>>;
    fn replication_controller(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<ReplicationController>>;
    fn replica_set(&self, namespace: &str, name: &str) -> Option<Arc<ReplicaSet>>;
    fn stateful_set(&self, namespace: &str, name: &str) -> Option<Arc<StatefulSet>>;
}

/// Whether the pod declares topology spread constraints of its own (then
/// the system defaults do not apply, not even for scoring).
fn declares_constraints(pod: &PodInfo) -> bool {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_ref())
        .is_some_and(|cs| !cs.is_empty())
}

/// The selector of the system default constraints for `pod` (upstream's
/// `helper.DefaultSelector`): the selectors of the Services of its namespace
/// that select it, merged, and the selector of its controller (the owner
/// reference with `controller: true`) when that is a ReplicationController
/// (`v1`), ReplicaSet or StatefulSet (`apps/v1`) found in its namespace.
/// Like upstream, the controller is found by the owner reference, not by
/// matching every controller's selector against the pod.
///
/// `None` when the pod declares constraints of its own, or when the
/// selector is empty (nothing selects the pod: upstream then applies no
/// default constraint).
pub fn default_spread_selector(
    pod: &PodInfo,
    objects: &dyn SelectingObjects,
) -> Option<LabelSelector> {
    if declares_constraints(pod) {
        return None;
    }
    let namespace = pod.namespace();
    let labels = pod.labels();
    // Whatever selects the pod agrees with it on the labels it names, so
    // merging cannot conflict.
    let mut match_labels: BTreeMap<String, String> = BTreeMap::new();
    for service in objects.services(namespace) {
        // A Service without a selector selects nothing; an empty one
        // selects every pod and adds nothing.
        let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
            continue;
        };
        if selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            match_labels.extend(selector.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    let mut match_expressions = Vec::new();
    let controller = pod
        .pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true));
    if let Some(owner) = controller {
        match (owner.api_version.as_str(), owner.kind.as_str()) {
            ("v1", "ReplicationController") => {
                if let Some(rc) = objects.replication_controller(namespace, &owner.name) {
                    let selector = rc.spec.as_ref().and_then(|s| s.selector.as_ref());
                    match_labels.extend(
                        selector
                            .into_iter()
                            .flatten()
                            .map(|(k, v)| (k.clone(), v.clone())),
                    );
                }
            }
            ("apps/v1", "ReplicaSet") => {
                if let Some(rs) = objects.replica_set(namespace, &owner.name) {
                    match_expressions.extend(requirements(rs.spec.as_ref().map(|s| &s.selector)));
                }
            }
            ("apps/v1", "StatefulSet") => {
                if let Some(ss) = objects.stateful_set(namespace, &owner.name) {
                    match_expressions.extend(requirements(ss.spec.as_ref().map(|s| &s.selector)));
                }
            }
            // Not a controller whose pods are spread by default.
            _ => {}
        }
    }
    if match_labels.is_empty() && match_expressions.is_empty() {
        return None;
    }
    Some(LabelSelector {
        match_labels: (!match_labels.is_empty()).then_some(match_labels),
        match_expressions: (!match_expressions.is_empty()).then_some(match_expressions),
    })
}

/// A controller's selector as requirements (`matchLabels` as `In` one
/// value), to be ANDed with the Services' labels as upstream's
/// `Selector.Add` does. A missing selector or one that
/// `LabelSelectorAsSelector` rejects (an unknown operator, values where
/// none belong or none where some do) adds nothing, as upstream.
fn requirements(selector: Option<&LabelSelector>) -> Vec<LabelSelectorRequirement> {
    let Some(selector) = selector else {
        return Vec::new();
    };
    let expressions = selector.match_expressions.as_deref().unwrap_or_default();
    let valid = expressions.iter().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" => !values.is_empty(),
            "Exists" | "DoesNotExist" => values.is_empty(),
            _ => false,
        }
    });
    if !valid {
        return Vec::new();
    }
    let labels = selector.match_labels.iter().flatten();
    labels
        .map(|(k, v)| LabelSelectorRequirement {
            key: k.clone(),
            operator: "In".into(),
            values: Some(vec![v.clone()]),
        })
        .chain(expressions.iter().cloned())
        .collect()
}

#[derive(Debug, Clone)]
struct Constraint {
    max_skew: i64,
    topology_key: String,
    selector: Option<LabelSelector>,
    min_domains: i64,
    honor_affinity: bool,
    honor_taints: bool,
}

fn constraints(pod: &PodInfo, action: &str) -> Vec<Constraint> {
    let all: &[TopologySpreadConstraint] = pod
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or_default();
    let labels = pod.labels();
    all.iter()
        .filter(|c| c.when_unsatisfiable == action)
        .map(|c| {
            let mut selector = c.label_selector.clone();
            let extra: Vec<LabelSelectorRequirement> = c
                .match_label_keys
                .iter()
                .flatten()
                .filter_map(|k| {
                    labels.get(k).map(|v| LabelSelectorRequirement {
                        key: k.clone(),
                        operator: "In".into(),
                        values: Some(vec![v.clone()]),
                    })
                })
                .collect();
            if !extra.is_empty()
                && let Some(sel) = selector.as_mut()
            {
                sel.match_expressions
                    .get_or_insert_with(Vec::new)
                    .extend(extra);
            }
            Constraint {
                max_skew: c.max_skew as i64,
                topology_key: c.topology_key.clone(),
                selector,
                min_domains: c.min_domains.unwrap_or(1) as i64,
                honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            }
        })
        .collect()
}

/// The system default constraints over `selector`: no node inclusion
/// policy set, so node affinity is honoured and taints are not.
fn system_defaults(selector: &LabelSelector) -> Vec<Constraint> {
    SYSTEM_DEFAULTS
        .iter()
        .map(|&(max_skew, key)| Constraint {
            max_skew,
            topology_key: key.to_string(),
            selector: Some(selector.clone()),
            min_domains: 1,
            honor_affinity: true,
            honor_taints: false,
        })
        .collect()
}

fn has_all_keys(node: &NodeInfo, cs: &[Constraint]) -> bool {
    cs.iter().all(|c| node.label(&c.topology_key).is_some())
}

/// Whether [`node_included`] holds for every node, whatever its labels and
/// taints.
fn includes_every_node(c: &Constraint, pod: &PodInfo) -> bool {
    !(c.honor_taints || (c.honor_affinity && restricts_nodes(pod)))
}

/// `MatchNodeInclusionPolicies`.
fn node_included(c: &Constraint, pod: &PodInfo, node: &NodeInfo) -> bool {
    if c.honor_affinity && !required_matches(pod, node) {
        return false;
    }
    if c.honor_taints {
        let tolerations = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default();
        let taints = node
            .node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default();
        if taints
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .any(|t| !tolerations_tolerate(tolerations, t))
        {
            return false;
        }
    }
    true
}

/// Label keys are hashes already: the memo hashes them no further.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Counts, node by node, the pods of a namespace that a selector selects,
/// evaluating the selector once per label group (see
/// [`NodeInfo::label_groups`]) and remembering the answer for the cycle,
/// so the nodes' pods themselves are not read. One memo serves one
/// selector and namespace. Terminating pods never count (upstream bypasses
/// them, kubernetes#87621).
#[derive(Default)]
struct Matches(HashMap<u64, bool, BuildHasherDefault<KeyHasher>>);

fn selects(selector: Option<&LabelSelector>, namespace: &str, pod: &PodInfo) -> bool {
    pod.namespace() == namespace && label_selector_matches(selector, pod.labels())
}

impl Matches {
    /// Whether the selector selects the group `key` of which `member` is a
    /// pod.
    fn selects(
        &mut self,
        key: u64,
        member: &PodInfo,
        selector: Option<&LabelSelector>,
        namespace: &str,
    ) -> bool {
        *self
            .0
            .entry(key)
            .or_insert_with(|| selects(selector, namespace, member))
    }

    fn count(&mut self, node: &NodeInfo, selector: Option<&LabelSelector>, namespace: &str) -> i64 {
        let mut n = 0;
        for g in &node.label_groups {
            if self.selects(g.key, &g.member, selector, namespace) {
                n += i64::from(g.count);
            }
        }
        n
    }

    /// [`Matches::count`] without remembering (for Score, which only reads
    /// the cycle state): a group not met before is evaluated each time.
    fn count_known(
        &self,
        node: &NodeInfo,
        selector: Option<&LabelSelector>,
        namespace: &str,
    ) -> i64 {
        node.label_groups
            .iter()
            .filter(|g| match self.0.get(&g.key) {
                Some(&known) => known,
                None => selects(selector, namespace, &g.member),
            })
            .map(|g| i64::from(g.count))
            .sum()
    }
}

/// Adds to `counts` (zone → pods) the pods of `namespace` that `c`
/// selects, by zone group.
fn add_zone_groups(
    counts: &mut HashMap<String, i64>,
    matches: &mut Matches,
    groups: &ZoneGroups,
    c: &Constraint,
    namespace: &str,
) {
    for (key, group) in groups.groups(namespace) {
        if !matches.selects(key, &group.member, c.selector.as_ref(), namespace) {
            continue;
        }
        for (zone, n) in &group.zones {
            if let Some(total) = counts.get_mut(zone) {
                *total += i64::from(*n);
            }
        }
    }
}

struct FilterState {
    constraints: Vec<Constraint>,
    /// Per constraint: topology value → matching pods.
    counts: Vec<HashMap<String, i64>>,
    /// Per constraint: the minimum over domains (0 when fewer domains than
    /// `minDomains`).
    min: Vec<i64>,
}

pub struct PodTopologySpread;

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        NAME
    }
    fn pre_filter(&self) -> Option<&dyn PreFilterPlugin> {
        Some(self)
    }
    fn filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
    fn score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
}

impl PreFilterPlugin for PodTopologySpread {
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, snapshot: &Snapshot) -> Status {
        let cs = constraints(pod, "DoNotSchedule");
        if cs.is_empty() {
            // No hard constraints: nothing for Filter to check.
            return Status::skip();
        }
        let mut counts = vec![HashMap::new(); cs.len()];
        let mut matches: Vec<Matches> = cs.iter().map(|_| Matches::default()).collect();
        for node in snapshot.nodes {
            if !has_all_keys(node, &cs) {
                continue;
            }
            for (i, c) in cs.iter().enumerate() {
                if !node_included(c, pod, node) {
                    continue;
                }
                let Some(value) = node.label(&c.topology_key) else {
                    continue;
                };
                let value = value.clone();
                *counts[i].entry(value).or_insert(0) +=
                    matches[i].count(node, c.selector.as_ref(), pod.namespace());
            }
        }
        let min = cs
            .iter()
            .zip(&counts)
            .map(|(c, m)| {
                if (m.len() as i64) < c.min_domains {
                    0
                } else {
                    m.values().copied().min().unwrap_or(i64::MAX)
                }
            })
            .collect();
        state.write(
            NAME,
            FilterState {
                constraints: cs,
                counts,
                min,
            },
        );
        Status::success()
    }
}

impl FilterPlugin for PodTopologySpread {
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<FilterState>(NAME) else {
            return Status::error("PodTopologySpread: no PreFilter state");
        };
        for (i, c) in s.constraints.iter().enumerate() {
            let Some(value) = node.label(&c.topology_key) else {
                return Status::unresolvable(ERR_MISSING_LABEL);
            };
            let self_match = label_selector_matches(c.selector.as_ref(), pod.labels()) as i64;
            let matching = s.counts[i].get(value).copied().unwrap_or(0);
            let skew = (matching + self_match).saturating_sub(s.min[i]);
            if skew > c.max_skew {
                return Status::new(Code::Unschedulable, ERR_CONSTRAINTS);
            }
        }
        Status::success()
    }
}

const SCORE_KEY: &str = "PodTopologySpread/score";

struct ScoreState {
    constraints: Vec<Constraint>,
    /// Per constraint, what its selector selects, learnt over the
    /// feasible nodes for the hostname counts Score makes.
    matches: Vec<Matches>,
    counts: Vec<HashMap<String, i64>>,
    weights: Vec<f64>,
    ignored: std::collections::HashSet<String>,
}

impl ScorePlugin for PodTopologySpread {
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        feasible: &[&NodeInfo],
        snapshot: &Snapshot,
    ) -> Status {
        // The system defaults have no DoNotSchedule constraint, so they
        // only ever show up here, not in PreFilter.
        let own = declares_constraints(pod);
        let cs = if own {
            constraints(pod, "ScheduleAnyway")
        } else {
            snapshot
                .default_spread_selector
                .map(system_defaults)
                .unwrap_or_default()
        };
        if cs.is_empty() {
            // No soft constraints: every node would score the same.
            return Status::skip();
        }
        // Only a pod's own constraints leave out nodes missing a key
        // (upstream's `requireAllTopologies`).
        let require_all = own;
        let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); cs.len()];
        let mut matches: Vec<Matches> = cs.iter().map(|_| Matches::default()).collect();
        let mut ignored = std::collections::HashSet::new();
        for node in feasible {
            if require_all && !has_all_keys(node, &cs) {
                ignored.insert(node.name().to_string());
                continue;
            }
            for (i, c) in cs.iter().enumerate() {
                if c.topology_key == HOSTNAME {
                    // Score counts per node; learn the node's groups now.
                    matches[i].count(node, c.selector.as_ref(), pod.namespace());
                } else {
                    // As upstream, nodes without the key make one domain
                    // (""): it counts towards the weight, and Score never
                    // reads its count.
                    let value = node.label(&c.topology_key).map_or("", String::as_str);
                    if !counts[i].contains_key(value) {
                        counts[i].insert(value.to_string(), 0);
                    }
                }
            }
        }
        let weights = cs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let size = if c.topology_key == HOSTNAME {
                    feasible.len() - ignored.len()
                } else {
                    counts[i].len()
                };
                ((size + 2) as f64).ln()
            })
            .collect();
        // Zone totals come from the cache's zone groups, when it keeps them
        // and no node is to be left out (by an inclusion policy, or for
        // missing the key of another of the pod's own constraints).
        let by_zone_groups = |c: &Constraint| {
            c.topology_key == ZONE
                && (!require_all || cs.iter().all(|c| c.topology_key == ZONE))
                && includes_every_node(c, pod)
        };
        let mut walk = vec![false; cs.len()];
        for (i, c) in cs.iter().enumerate() {
            if c.topology_key == HOSTNAME {
                // Counted node by node in Score.
                continue;
            }
            match snapshot.zone_groups.filter(|_| by_zone_groups(c)) {
                Some(groups) => {
                    add_zone_groups(&mut counts[i], &mut matches[i], groups, c, pod.namespace())
                }
                None => walk[i] = true,
            }
        }
        if walk.contains(&true) {
            for node in snapshot.nodes {
                if require_all && !has_all_keys(node, &cs) {
                    continue;
                }
                for (i, c) in cs.iter().enumerate() {
                    if !walk[i] {
                        continue;
                    }
                    // Most nodes hold none of the pods: count first, and
                    // look at the node only when it adds something.
                    let n = matches[i].count(node, c.selector.as_ref(), pod.namespace());
                    if n == 0 {
                        continue;
                    }
                    // A node without the key adds to no domain Score reads
                    // (upstream adds it to the "" domain, which only a node
                    // labelled with an empty value would read).
                    let Some(value) = node.label(&c.topology_key) else {
                        continue;
                    };
                    if let Some(total) = counts[i].get_mut(value)
                        && node_included(c, pod, node)
                    {
                        *total += n;
                    }
                }
            }
        }
        state.write(
            SCORE_KEY,
            ScoreState {
                constraints: cs,
                matches,
                counts,
                weights,
                ignored,
            },
        );
        Status::success()
    }

    fn score(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(s) = state.read::<ScoreState>(SCORE_KEY) else {
            return 0;
        };
        if !s.ignored.is_empty() && s.ignored.contains(node.name()) {
            return -1;
        }
        let mut score = 0.0;
        for (i, c) in s.constraints.iter().enumerate() {
            if let Some(value) = node.label(&c.topology_key) {
                let count = if c.topology_key == HOSTNAME {
                    s.matches[i].count_known(node, c.selector.as_ref(), pod.namespace())
                } else {
                    s.counts[i].get(value).copied().unwrap_or(0)
                };
                score += count as f64 * s.weights[i] + (c.max_skew - 1) as f64;
            }
        }
        score.round() as i64
    }

    /// Fewer matching pods is better; ignored nodes (marked -1 by `score`)
    /// get 0.
    fn normalize(&self, state: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        let Some(s) = state.read::<ScoreState>(SCORE_KEY) else {
            return;
        };
        if s.constraints.is_empty() {
            scores.iter_mut().for_each(|x| *x = 0);
            return;
        }
        let valid = || scores.iter().copied().filter(|&x| x >= 0);
        let min = valid().min().unwrap_or(0);
        let max = valid().max().unwrap_or(0);
        for x in scores.iter_mut() {
            *x = if *x < 0 {
                0
            } else if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - *x) / max
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;
    use serde_json::{Value, json};

    fn member(name: &str) -> PodInfo {
        pod(json!({"metadata": {"name": name, "labels": {"app": "web"}}}))
    }

    fn zone_node(name: &str, zone: &str, pods: &[PodInfo]) -> NodeInfo {
        node_with_named(
            name,
            json!({"metadata": {"labels": {"zone": zone, "kubernetes.io/hostname": name}}}),
            pods,
        )
    }

    fn spread(max_skew: i32, key: &str, action: &str, extra: serde_json::Value) -> PodInfo {
        let mut c = json!({"maxSkew": max_skew, "topologyKey": key, "whenUnsatisfiable": action,
            "labelSelector": {"matchLabels": {"app": "web"}}});
        if let (Some(m), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        pod(
            json!({"metadata": {"name": "new", "labels": {"app": "web"}}, "spec": {"topologySpreadConstraints": [c]}}),
        )
    }

    #[test]
    fn filter() {
        struct C {
            name: &'static str,
            pod: PodInfo,
            nodes: Vec<NodeInfo>,
            want: Vec<Status>,
        }
        let cases = vec![
            C {
                name: "zone with more pods exceeds maxSkew 1",
                pod: spread(1, "zone", "DoNotSchedule", json!({})),
                nodes: vec![
                    zone_node("a1", "a", &[member("w1")]),
                    zone_node("b1", "b", &[]),
                ],
                want: vec![unschedulable(ERR_CONSTRAINTS), ok()],
            },
            C {
                name: "balanced zones accept both",
                pod: spread(1, "zone", "DoNotSchedule", json!({})),
                nodes: vec![
                    zone_node("a1", "a", &[member("w1")]),
                    zone_node("b1", "b", &[member("w2")]),
                ],
                want: vec![ok(), ok()],
            },
            C {
                name: "maxSkew 2 tolerates one more",
                pod: spread(2, "zone", "DoNotSchedule", json!({})),
                nodes: vec![
                    zone_node("a1", "a", &[member("w1")]),
                    zone_node("b1", "b", &[]),
                ],
                want: vec![ok(), ok()],
            },
            C {
                name: "node missing the topology key",
                pod: spread(1, "zone", "DoNotSchedule", json!({})),
                nodes: vec![
                    node_with_named("bare", json!({}), &[]),
                    zone_node("b1", "b", &[]),
                ],
                want: vec![unresolvable(ERR_MISSING_LABEL), ok()],
            },
            C {
                name: "pods in other namespaces and non-matching pods do not count",
                pod: spread(1, "zone", "DoNotSchedule", json!({})),
                nodes: vec![
                    zone_node(
                        "a1",
                        "a",
                        &[
                            pod(
                                json!({"metadata": {"name": "x", "namespace": "other", "labels": {"app": "web"}}}),
                            ),
                            pod(json!({"metadata": {"name": "y", "labels": {"app": "db"}}})),
                        ],
                    ),
                    zone_node("b1", "b", &[]),
                ],
                want: vec![ok(), ok()],
            },
            C {
                name: "minDomains above the domain count makes the minimum 0",
                pod: spread(1, "zone", "DoNotSchedule", json!({"minDomains": 3})),
                nodes: vec![
                    zone_node("a1", "a", &[member("w1")]),
                    zone_node("b1", "b", &[member("w2")]),
                ],
                want: vec![
                    unschedulable(ERR_CONSTRAINTS),
                    unschedulable(ERR_CONSTRAINTS),
                ],
            },
            C {
                name: "ScheduleAnyway constraints do not filter",
                pod: spread(1, "zone", "ScheduleAnyway", json!({})),
                nodes: vec![
                    zone_node("a1", "a", &[member("w1"), member("w2")]),
                    zone_node("b1", "b", &[]),
                ],
                want: vec![ok(), ok()],
            },
            C {
                name: "hostname spreading",
                pod: spread(1, "kubernetes.io/hostname", "DoNotSchedule", json!({})),
                nodes: vec![
                    zone_node("a1", "a", &[member("w1")]),
                    zone_node("a2", "a", &[]),
                    zone_node("b1", "b", &[member("w2")]),
                ],
                want: vec![
                    unschedulable(ERR_CONSTRAINTS),
                    ok(),
                    unschedulable(ERR_CONSTRAINTS),
                ],
            },
        ];
        for c in cases {
            assert_eq!(
                run_filter_on(&PodTopologySpread, &c.pod, &c.nodes, &Default::default()),
                c.want,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn soft_spread_prefers_the_emptier_zone() {
        let p = spread(1, "zone", "ScheduleAnyway", json!({}));
        let nodes = [
            zone_node("a1", "a", &[member("w1"), member("w2")]),
            zone_node("b1", "b", &[member("w3")]),
            zone_node("c1", "c", &[]),
            node_with_named("bare", json!({}), &[]),
        ];
        let scores = run_score(&PodTopologySpread, &p, &nodes);
        // weight ln(5): a=2*1.609=3, b=2, c=0 → 100*(3+0-s)/3.
        assert_eq!(scores, vec![0, 33, 100, 0]);
    }

    /// Fixed objects for [`default_spread_selector`].
    #[derive(Default)]
    struct Objects {
        services: Vec<Arc<Service>>,
        replication_controllers: Vec<Arc<ReplicationController>>,
        replica_sets: Vec<Arc<ReplicaSet>>,
        stateful_sets: Vec<Arc<StatefulSet>>,
    }

    fn find<K: kube::Resource>(objects: &[Arc<K>], namespace: &str, name: &str) -> Option<Arc<K>> {
        objects
            .iter()
            .find(|o| {
                o.meta().namespace.as_deref() == Some(namespace)
                    && o.meta().name.as_deref() == Some(name)
            })
            .cloned()
    }

    impl SelectingObjects for Objects {
        fn services(&self, namespace: &str) -> Vec<Arc<Service>> {
            let ns = |s: &&Arc<Service>| s.metadata.namespace.as_deref() == Some(namespace);
            self.services.iter().filter(ns).cloned().collect()
        }
        fn replication_controller(
            &self,
            namespace: &str,
            name: &str,
        ) -> Option<Arc<ReplicationController>> {
            find(&self.replication_controllers, namespace, name)
        }
        fn replica_set(&self, namespace: &str, name: &str) -> Option<Arc<ReplicaSet>> {
            find(&self.replica_sets, namespace, name)
        }
        fn stateful_set(&self, namespace: &str, name: &str) -> Option<Arc<StatefulSet>> {
            find(&self.stateful_sets, namespace, name)
        }
    }

    fn object<K: serde::de::DeserializeOwned>(name: &str, spec: Value) -> Arc<K> {
        let v = json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec});
        Arc::new(serde_json::from_value(v).expect("object"))
    }

    fn service(name: &str, selector: Value) -> Arc<Service> {
        object(name, json!({"selector": selector}))
    }

    fn replica_set(name: &str, selector: Value) -> Arc<ReplicaSet> {
        object(name, json!({"selector": selector}))
    }

    /// A pod named `name` with `labels`, controlled by `owner` (apiVersion,
    /// kind, name) if given.
    fn owned(name: &str, labels: Value, owner: Option<(&str, &str, &str)>) -> PodInfo {
        let refs: Vec<Value> = owner
            .into_iter()
            .map(|(api_version, kind, owner)| {
                json!({"apiVersion": api_version, "kind": kind, "name": owner,
                    "uid": format!("uid-{owner}"), "controller": true})
            })
            .collect();
        pod(json!({"metadata": {"name": name, "labels": labels, "ownerReferences": refs}}))
    }

    const WEB_RS: Option<(&str, &str, &str)> = Some(("apps/v1", "ReplicaSet", "web-abc"));

    fn web_pod(name: &str) -> PodInfo {
        owned(
            name,
            json!({"app": "web", "pod-template-hash": "abc"}),
            WEB_RS,
        )
    }

    fn web_objects() -> Objects {
        Objects {
            replica_sets: vec![replica_set(
                "web-abc",
                json!({"matchLabels": {"app": "web", "pod-template-hash": "abc"}}),
            )],
            ..Default::default()
        }
    }

    fn host(name: &str, pods: &[PodInfo]) -> NodeInfo {
        node_with_named(
            name,
            json!({"metadata": {"labels": {"kubernetes.io/hostname": name}}}),
            pods,
        )
    }

    fn zoned(name: &str, zone: &str, pods: &[PodInfo]) -> NodeInfo {
        node_with_named(
            name,
            json!({"metadata": {"labels": {"kubernetes.io/hostname": name,
                "topology.kubernetes.io/zone": zone}}}),
            pods,
        )
    }

    fn in_(key: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: "In".into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn default_selector_comes_from_what_selects_the_pod() {
        struct C {
            name: &'static str,
            pod: PodInfo,
            objects: Objects,
            want: Option<LabelSelector>,
        }
        let web = json!({"app": "web", "tier": "front"});
        let cases = vec![
            C {
                name: "the ReplicaSet controlling the pod, as requirements",
                pod: web_pod("p"),
                objects: web_objects(),
                want: Some(LabelSelector {
                    match_labels: None,
                    match_expressions: Some(vec![
                        in_("app", &["web"]),
                        in_("pod-template-hash", &["abc"]),
                    ]),
                }),
            },
            C {
                name: "the Services selecting the pod, merged; others and selectorless ones not",
                pod: owned("p", web.clone(), None),
                objects: Objects {
                    services: vec![
                        service("web", json!({"app": "web"})),
                        service("front", json!({"tier": "front"})),
                        service("db", json!({"app": "db"})),
                        object("external", json!({"type": "ExternalName"})),
                    ],
                    ..Default::default()
                },
                want: Some(LabelSelector {
                    match_labels: Some(labels(&[("app", "web"), ("tier", "front")])),
                    match_expressions: None,
                }),
            },
            C {
                name: "Services and the StatefulSet together",
                pod: owned("p", web.clone(), Some(("apps/v1", "StatefulSet", "web"))),
                objects: Objects {
                    services: vec![service("web", json!({"app": "web"}))],
                    stateful_sets: vec![object(
                        "web",
                        json!({"selector": {"matchExpressions": [
                            {"key": "tier", "operator": "Exists"}]},
                            "serviceName": "web", "template": {}}),
                    )],
                    ..Default::default()
                },
                want: Some(LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "tier".into(),
                        operator: "Exists".into(),
                        values: None,
                    }]),
                }),
            },
            C {
                name: "the ReplicationController's labels",
                pod: owned(
                    "p",
                    web.clone(),
                    Some(("v1", "ReplicationController", "web")),
                ),
                objects: Objects {
                    replication_controllers: vec![object(
                        "web",
                        json!({"selector": {"app": "web"}}),
                    )],
                    ..Default::default()
                },
                want: Some(LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    match_expressions: None,
                }),
            },
            C {
                name: "nothing selects the pod",
                pod: owned("p", web.clone(), None),
                objects: Objects {
                    services: vec![service("db", json!({"app": "db"}))],
                    ..web_objects()
                },
                want: None,
            },
            C {
                name: "a controller of another kind adds nothing",
                pod: owned("p", web.clone(), Some(("batch/v1", "Job", "web-abc"))),
                objects: web_objects(),
                want: None,
            },
            C {
                name: "a controller missing from the cache adds nothing",
                pod: owned("p", web.clone(), Some(("apps/v1", "ReplicaSet", "gone"))),
                objects: web_objects(),
                want: None,
            },
            C {
                name: "an invalid controller selector adds nothing",
                pod: owned("p", web.clone(), Some(("apps/v1", "ReplicaSet", "bad"))),
                objects: Objects {
                    replica_sets: vec![replica_set(
                        "bad",
                        json!({"matchLabels": {"app": "web"},
                            "matchExpressions": [{"key": "tier", "operator": "In"}]}),
                    )],
                    ..Default::default()
                },
                want: None,
            },
            C {
                name: "a pod with constraints of its own gets no default",
                pod: pod(json!({"metadata": {"name": "p", "labels": {"app": "web"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "name": "web-abc", "uid": "u", "controller": true}]},
                    "spec": {"topologySpreadConstraints": [{"maxSkew": 1,
                        "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"app": "web"}}}]}})),
                objects: web_objects(),
                want: None,
            },
        ];
        for c in cases {
            assert_eq!(
                default_spread_selector(&c.pod, &c.objects),
                c.want,
                "{}",
                c.name
            );
        }
    }

    /// Scores `p` with the default selector resolved from `objects`.
    fn default_scores(p: &PodInfo, objects: &Objects, nodes: &[NodeInfo]) -> Vec<i64> {
        let selector = default_spread_selector(p, objects);
        run_score_with(&PodTopologySpread, p, nodes, selector.as_ref())
    }

    #[test]
    fn a_replica_set_pod_is_spread_by_hostname_by_default() {
        let other = owned(
            "other",
            json!({"app": "web", "pod-template-hash": "old"}),
            Some(("apps/v1", "ReplicaSet", "web-old")),
        );
        let nodes = [
            host("n1", &[web_pod("w1"), web_pod("w2")]),
            host("n2", &[other.clone(), other]),
            host("n3", &[web_pod("w3")]),
        ];
        // No zone labels: hostname only, weight ln(3 + 2), offset
        // maxSkew - 1 = 2: raw 5, 2, 4 → 100 * (5 + 2 - s) / 5. The other
        // ReplicaSet's pods on n2 do not count.
        assert_eq!(
            default_scores(&web_pod("new"), &web_objects(), &nodes),
            vec![40, 100, 60]
        );
    }

    #[test]
    fn a_pod_nothing_selects_is_not_spread_by_default() {
        let loner = owned("new", json!({"app": "web"}), None);
        let nodes = [host("n1", &[member("w1"), member("w2")]), host("n2", &[])];
        let objects = Objects {
            services: vec![service("db", json!({"app": "db"}))],
            ..web_objects()
        };
        assert_eq!(default_scores(&loner, &objects, &nodes), vec![0, 0]);
    }

    #[test]
    fn a_pod_with_its_own_constraints_gets_no_default_spreading() {
        // A DoNotSchedule constraint only: nothing to score, even when the
        // snapshot carries a default selector for the pod's ReplicaSet.
        let mut p = web_pod("new");
        Arc::make_mut(&mut p.pod)
            .spec
            .get_or_insert_with(Default::default)
            .topology_spread_constraints = Some(vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: ZONE.into(),
            when_unsatisfiable: "DoNotSchedule".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(labels(&[("app", "web")])),
                match_expressions: None,
            }),
            ..Default::default()
        }]);
        let nodes = [
            zoned("a1", "a", &[web_pod("w1"), web_pod("w2")]),
            zoned("b1", "b", &[]),
        ];
        assert_eq!(default_spread_selector(&p, &web_objects()), None);
        let selector = default_spread_selector(&web_pod("new"), &web_objects());
        assert!(selector.is_some());
        assert_eq!(
            run_score_with(&PodTopologySpread, &p, &nodes, selector.as_ref()),
            vec![0, 0]
        );
    }

    #[test]
    fn the_zone_default_counts_only_nodes_with_a_zone_label() {
        let w = web_pod;
        let nodes = [
            zoned("a1", "a", &[w("w1"), w("w2")]),
            zoned("a2", "a", &[]),
            zoned("b1", "b", &[w("w3")]),
            host("bare1", &[]),
            host("bare2", &[w("w4"), w("w5"), w("w6")]),
        ];
        // Hostname: 5 nodes, weight ln 7, offset 2. Zone: domains a, b and
        // the unlabelled nodes' "" (upstream's weight), ln 5, offset 4;
        // zone a holds 2 pods, b 1, and bare2's pods are in no zone.
        // Raw: a1 5.9 + 7.2, a2 2 + 7.2, b1 3.9 + 5.6, bare1 2, bare2 7.8
        // → 13, 9, 10, 2, 8 → 100 * (13 + 2 - s) / 13. The unlabelled
        // nodes are scored on hostname, not left out.
        assert_eq!(
            default_scores(&w("new"), &web_objects(), &nodes),
            vec![15, 46, 38, 100, 53]
        );
    }
}
