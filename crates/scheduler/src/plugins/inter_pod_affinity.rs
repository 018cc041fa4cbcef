//! InterPodAffinity: required pod affinity and anti-affinity of the
//! incoming pod, and required anti-affinity of the pods already placed
//! (filter); preferred terms of both sides (score), each by topology
//! domain (`topologyKey`), with `namespaces` / `namespaceSelector`.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::{PodAffinityTerm, WeightedPodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::framework::{
    ClusterInfo, Code, CycleState, FilterPlugin, MAX_NODE_SCORE, NodeInfo, Plugin, PodInfo,
    PreFilterPlugin, ScorePlugin, Snapshot, Status,
};
use crate::selectors::label_selector_matches;

pub const NAME: &str = "InterPodAffinity";
pub const ERR_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const ERR_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const ERR_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";
/// Weight of an existing pod's required affinity term that the incoming
/// pod matches (upstream `hardPodAffinityWeight` default).
pub const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// A pod affinity term with its namespaces resolved against its owner.
#[derive(Debug, Clone)]
pub struct AffinityTerm {
    pub namespaces: HashSet<String>,
    pub namespace_selector: Option<LabelSelector>,
    pub selector: Option<LabelSelector>,
    pub topology_key: String,
    pub weight: i64,
}

impl AffinityTerm {
    /// `owner` is the pod declaring the term: its namespace is the default,
    /// and `matchLabelKeys` / `mismatchLabelKeys` take its label values.
    pub fn new(term: &PodAffinityTerm, owner: &PodInfo, weight: i64) -> AffinityTerm {
        let mut namespaces: HashSet<String> = term.namespaces.iter().flatten().cloned().collect();
        if namespaces.is_empty() && term.namespace_selector.is_none() {
            namespaces.insert(owner.namespace().to_string());
        }
        let mut selector = term.label_selector.clone();
        let labels = owner.labels();
        let mut extra = Vec::new();
        for (keys, op) in [
            (&term.match_label_keys, "In"),
            (&term.mismatch_label_keys, "NotIn"),
        ] {
            for k in keys.iter().flatten() {
                if let Some(v) = labels.get(k) {
                    extra.push(LabelSelectorRequirement {
                        key: k.clone(),
                        operator: op.into(),
                        values: Some(vec![v.clone()]),
                    });
                }
            }
        }
        if !extra.is_empty()
            && let Some(sel) = selector.as_mut()
        {
            sel.match_expressions
                .get_or_insert_with(Vec::new)
                .extend(extra);
        }
        AffinityTerm {
            namespaces,
            namespace_selector: term.namespace_selector.clone(),
            selector,
            topology_key: term.topology_key.clone(),
            weight,
        }
    }

    pub fn matches(&self, pod: &PodInfo, cluster: &ClusterInfo) -> bool {
        let ns = pod.namespace();
        let ns_ok = self.namespaces.contains(ns)
            || self.namespace_selector.as_ref().is_some_and(|sel| {
                static EMPTY: BTreeMap<String, String> = BTreeMap::new();
                let labels = cluster.namespace_labels.get(ns).unwrap_or(&EMPTY);
                label_selector_matches(Some(sel), labels)
            });
        ns_ok && label_selector_matches(self.selector.as_ref(), pod.labels())
    }
}

/// A pod's affinity terms by kind.
#[derive(Debug, Clone, Default)]
pub struct PodTerms {
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<AffinityTerm>,
    pub preferred_anti_affinity: Vec<AffinityTerm>,
}

impl PodTerms {
    pub fn of(pod: &PodInfo) -> PodTerms {
        let mut t = PodTerms::default();
        let Some(aff) = pod.pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else {
            return t;
        };
        let required = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
            terms
                .into_iter()
                .flatten()
                .map(|x| AffinityTerm::new(x, pod, 1))
                .collect()
        };
        let preferred = |terms: Option<&Vec<WeightedPodAffinityTerm>>| -> Vec<AffinityTerm> {
            terms
                .into_iter()
                .flatten()
                .map(|x| AffinityTerm::new(&x.pod_affinity_term, pod, x.weight as i64))
                .collect()
        };
        if let Some(a) = &aff.pod_affinity {
            t.required_affinity = required(
                a.required_during_scheduling_ignored_during_execution
                    .as_ref(),
            );
            t.preferred_affinity = preferred(
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref(),
            );
        }
        if let Some(a) = &aff.pod_anti_affinity {
            t.required_anti_affinity = required(
                a.required_during_scheduling_ignored_during_execution
                    .as_ref(),
            );
            t.preferred_anti_affinity = preferred(
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref(),
            );
        }
        t
    }

    fn is_empty(&self) -> bool {
        self.required_affinity.is_empty()
            && self.required_anti_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty()
    }
}

type TopologyCounts = HashMap<(String, String), i64>;

struct FilterState {
    terms: PodTerms,
    matches_own_affinity: bool,
    existing_anti: TopologyCounts,
    affinity: TopologyCounts,
    anti_affinity: TopologyCounts,
}

pub struct InterPodAffinity;

impl Plugin for InterPodAffinity {
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

fn add(counts: &mut TopologyCounts, node: &NodeInfo, key: &str, n: i64) {
    if let Some(v) = node.labels().get(key) {
        *counts.entry((key.to_string(), v.clone())).or_default() += n;
    }
}

impl PreFilterPlugin for InterPodAffinity {
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, snapshot: &Snapshot) -> Status {
        let terms = PodTerms::of(pod);
        let cluster = snapshot.cluster;
        let mut s = FilterState {
            matches_own_affinity: terms
                .required_affinity
                .iter()
                .all(|t| t.matches(pod, cluster)),
            terms,
            existing_anti: HashMap::new(),
            affinity: HashMap::new(),
            anti_affinity: HashMap::new(),
        };
        // Without terms of its own, only pods with terms can matter.
        let all_pods =
            !s.terms.required_affinity.is_empty() || !s.terms.required_anti_affinity.is_empty();
        for node in snapshot.nodes {
            let candidates = if all_pods {
                &node.pods
            } else {
                &node.pods_with_affinity
            };
            for existing in candidates {
                if existing.uid() == pod.uid() {
                    continue;
                }
                if existing.has_pod_affinity {
                    for t in PodTerms::of(existing).required_anti_affinity {
                        if t.matches(pod, cluster) {
                            add(&mut s.existing_anti, node, &t.topology_key, 1);
                        }
                    }
                }
                if !s.terms.required_affinity.is_empty()
                    && s.terms
                        .required_affinity
                        .iter()
                        .all(|t| t.matches(existing, cluster))
                {
                    for t in &s.terms.required_affinity {
                        add(&mut s.affinity, node, &t.topology_key, 1);
                    }
                }
                for t in &s.terms.required_anti_affinity {
                    if t.matches(existing, cluster) {
                        add(&mut s.anti_affinity, node, &t.topology_key, 1);
                    }
                }
            }
        }
        if s.terms.required_affinity.is_empty()
            && s.terms.required_anti_affinity.is_empty()
            && s.existing_anti.is_empty()
        {
            // Nothing for Filter to check on any node.
            return Status::skip();
        }
        state.write(NAME, s);
        Status::success()
    }
}

impl FilterPlugin for InterPodAffinity {
    fn filter(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<FilterState>(NAME) else {
            return Status::error("InterPodAffinity: no PreFilter state");
        };
        let labels = node.labels();
        // Required affinity.
        let mut pods_exist = true;
        for t in &s.terms.required_affinity {
            match labels.get(&t.topology_key) {
                None => return Status::unresolvable(ERR_AFFINITY),
                Some(v) => {
                    if s.affinity
                        .get(&(t.topology_key.clone(), v.clone()))
                        .copied()
                        .unwrap_or(0)
                        <= 0
                    {
                        pods_exist = false;
                    }
                }
            }
        }
        // The first pod of a group with affinity to itself may go anywhere
        // the topology exists.
        let first_of_group = s.affinity.is_empty() && s.matches_own_affinity;
        if !pods_exist && !first_of_group {
            return Status::unresolvable(ERR_AFFINITY);
        }
        for t in &s.terms.required_anti_affinity {
            if let Some(v) = labels.get(&t.topology_key)
                && s.anti_affinity
                    .get(&(t.topology_key.clone(), v.clone()))
                    .copied()
                    .unwrap_or(0)
                    > 0
            {
                return Status::new(Code::Unschedulable, ERR_ANTI_AFFINITY);
            }
        }
        if !s.existing_anti.is_empty() {
            for (k, v) in labels {
                if s.existing_anti
                    .get(&(k.clone(), v.clone()))
                    .copied()
                    .unwrap_or(0)
                    > 0
                {
                    return Status::new(Code::Unschedulable, ERR_EXISTING_ANTI_AFFINITY);
                }
            }
        }
        Status::success()
    }
}

const SCORE_KEY: &str = "InterPodAffinity/score";

/// topology key → value → score.
struct ScoreState(HashMap<String, HashMap<String, i64>>);

impl ScorePlugin for InterPodAffinity {
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        _feasible: &[&NodeInfo],
        snapshot: &Snapshot,
    ) -> Status {
        let terms = PodTerms::of(pod);
        let cluster = snapshot.cluster;
        let mut scores: HashMap<String, HashMap<String, i64>> = HashMap::new();
        let mut bump = |node: &NodeInfo, key: &str, w: i64| {
            if let Some(v) = node.labels().get(key) {
                *scores
                    .entry(key.to_string())
                    .or_default()
                    .entry(v.clone())
                    .or_default() += w;
            }
        };
        let own = !terms.preferred_affinity.is_empty() || !terms.preferred_anti_affinity.is_empty();
        for node in snapshot.nodes {
            let candidates = if own {
                &node.pods
            } else {
                &node.pods_with_affinity
            };
            for existing in candidates {
                if own {
                    for t in &terms.preferred_affinity {
                        if t.matches(existing, cluster) {
                            bump(node, &t.topology_key, t.weight);
                        }
                    }
                    for t in &terms.preferred_anti_affinity {
                        if t.matches(existing, cluster) {
                            bump(node, &t.topology_key, -t.weight);
                        }
                    }
                }
                if !existing.has_pod_affinity {
                    continue;
                }
                let et = PodTerms::of(existing);
                if et.is_empty() {
                    continue;
                }
                for t in &et.required_affinity {
                    if t.matches(pod, cluster) {
                        bump(node, &t.topology_key, HARD_POD_AFFINITY_WEIGHT);
                    }
                }
                for t in &et.preferred_affinity {
                    if t.matches(pod, cluster) {
                        bump(node, &t.topology_key, t.weight);
                    }
                }
                for t in &et.preferred_anti_affinity {
                    if t.matches(pod, cluster) {
                        bump(node, &t.topology_key, -t.weight);
                    }
                }
            }
        }
        if scores.is_empty() {
            // Every node would score the same.
            return Status::skip();
        }
        state.write(SCORE_KEY, ScoreState(scores));
        Status::success()
    }

    fn score(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(ScoreState(scores)) = state.read::<ScoreState>(SCORE_KEY) else {
            return 0;
        };
        let labels = node.labels();
        scores
            .iter()
            .filter_map(|(key, values)| labels.get(key).and_then(|v| values.get(v)))
            .sum()
    }

    fn normalize(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        let (Some(&min), Some(&max)) = (scores.iter().min(), scores.iter().max()) else {
            return;
        };
        let diff = max - min;
        for s in scores.iter_mut() {
            *s = if diff > 0 {
                (MAX_NODE_SCORE as f64 * ((*s - min) as f64 / diff as f64)) as i64
            } else {
                0
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;
    use serde_json::json;

    fn labelled_pod(
        name: &str,
        ns: &str,
        labels: serde_json::Value,
        affinity: serde_json::Value,
    ) -> PodInfo {
        pod(
            json!({"metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": {"affinity": affinity}}),
        )
    }

    fn zone_node(name: &str, zone: &str, pods: &[PodInfo]) -> NodeInfo {
        node_with_named(name, json!({"metadata": {"labels": {"zone": zone}}}), pods)
    }

    fn term(selector: serde_json::Value, key: &str) -> serde_json::Value {
        json!({"labelSelector": {"matchLabels": selector}, "topologyKey": key})
    }

    #[test]
    fn filter() {
        let web = labelled_pod("web-0", "default", json!({"app": "web"}), json!(null));
        let db_other_ns = labelled_pod("db-0", "other", json!({"app": "db"}), json!(null));
        let anti_web = labelled_pod(
            "guard",
            "default",
            json!({"app": "guard"}),
            json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term(json!({"app": "web"}), "zone")]}}),
        );
        let cluster = || cluster_with_namespaces(&[("other", &[("team", "db")]), ("default", &[])]);

        struct C {
            name: &'static str,
            pod: PodInfo,
            nodes: Vec<NodeInfo>,
            want: Vec<Status>,
        }
        let cases = vec![
            C {
                name: "affinity satisfied in the same zone only",
                pod: labelled_pod(
                    "p",
                    "default",
                    json!({}),
                    json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term(json!({"app": "web"}), "zone")]}}),
                ),
                nodes: vec![
                    zone_node("a1", "a", std::slice::from_ref(&web)),
                    zone_node("a2", "a", &[]),
                    zone_node("b1", "b", &[]),
                ],
                want: vec![ok(), ok(), unresolvable(ERR_AFFINITY)],
            },
            C {
                name: "affinity to nothing, pod does not match itself",
                pod: labelled_pod(
                    "p",
                    "default",
                    json!({}),
                    json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term(json!({"app": "web"}), "zone")]}}),
                ),
                nodes: vec![zone_node("a1", "a", &[]), zone_node("b1", "b", &[])],
                want: vec![unresolvable(ERR_AFFINITY), unresolvable(ERR_AFFINITY)],
            },
            C {
                name: "first pod of a self-affine group may go anywhere with the key",
                pod: labelled_pod(
                    "p",
                    "default",
                    json!({"app": "web"}),
                    json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term(json!({"app": "web"}), "zone")]}}),
                ),
                nodes: vec![
                    zone_node("a1", "a", &[]),
                    node_with_named("nolabel", json!({}), &[]),
                ],
                want: vec![ok(), unresolvable(ERR_AFFINITY)],
            },
            C {
                name: "anti-affinity keeps the pod out of the zone",
                pod: labelled_pod(
                    "p",
                    "default",
                    json!({}),
                    json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term(json!({"app": "web"}), "zone")]}}),
                ),
                nodes: vec![
                    zone_node("a1", "a", std::slice::from_ref(&web)),
                    zone_node("a2", "a", &[]),
                    zone_node("b1", "b", &[]),
                ],
                want: vec![
                    unschedulable(ERR_ANTI_AFFINITY),
                    unschedulable(ERR_ANTI_AFFINITY),
                    ok(),
                ],
            },
            C {
                name: "existing pod's anti-affinity keeps a matching pod out",
                pod: labelled_pod("p", "default", json!({"app": "web"}), json!(null)),
                nodes: vec![
                    zone_node("a1", "a", std::slice::from_ref(&anti_web)),
                    zone_node("b1", "b", &[]),
                ],
                want: vec![unschedulable(ERR_EXISTING_ANTI_AFFINITY), ok()],
            },
            C {
                name: "terms default to the pod's own namespace",
                pod: labelled_pod(
                    "p",
                    "default",
                    json!({}),
                    json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term(json!({"app": "db"}), "zone")]}}),
                ),
                nodes: vec![zone_node("a1", "a", std::slice::from_ref(&db_other_ns))],
                want: vec![unresolvable(ERR_AFFINITY)],
            },
            C {
                name: "namespaces list",
                pod: labelled_pod(
                    "p",
                    "default",
                    json!({}),
                    json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone", "namespaces": ["other"]}]}}),
                ),
                nodes: vec![
                    zone_node("a1", "a", std::slice::from_ref(&db_other_ns)),
                    zone_node("b1", "b", &[]),
                ],
                want: vec![ok(), unresolvable(ERR_AFFINITY)],
            },
            C {
                name: "namespaceSelector",
                pod: labelled_pod(
                    "p",
                    "default",
                    json!({}),
                    json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone", "namespaceSelector": {"matchLabels": {"team": "db"}}}]}}),
                ),
                nodes: vec![
                    zone_node("a1", "a", std::slice::from_ref(&db_other_ns)),
                    zone_node("b1", "b", &[]),
                ],
                want: vec![ok(), unresolvable(ERR_AFFINITY)],
            },
            C {
                name: "empty namespaceSelector means all namespaces",
                pod: labelled_pod(
                    "p",
                    "default",
                    json!({}),
                    json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone", "namespaceSelector": {}}]}}),
                ),
                nodes: vec![
                    zone_node("a1", "a", &[db_other_ns]),
                    zone_node("b1", "b", &[]),
                ],
                want: vec![unschedulable(ERR_ANTI_AFFINITY), ok()],
            },
        ];
        for c in cases {
            let got = run_filter_on(&InterPodAffinity, &c.pod, &c.nodes, &cluster());
            assert_eq!(got, c.want, "{}", c.name);
        }
    }

    #[test]
    fn score_prefers_zones_with_preferred_pods_and_avoids_anti() {
        let web = labelled_pod("web-0", "default", json!({"app": "web"}), json!(null));
        let cache = labelled_pod("cache-0", "default", json!({"app": "cache"}), json!(null));
        let p = labelled_pod(
            "p",
            "default",
            json!({}),
            json!({
            "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "podAffinityTerm": term(json!({"app": "web"}), "zone")}]},
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 5, "podAffinityTerm": term(json!({"app": "cache"}), "zone")}]}}),
        );
        let nodes = [
            zone_node("a", "a", &[web]),
            zone_node("b", "b", &[]),
            zone_node("c", "c", &[cache]),
        ];
        // raw: a=10, b=0, c=-5 → (s+5)*100/15.
        assert_eq!(run_score(&InterPodAffinity, &p, &nodes), vec![100, 33, 0]);
    }

    #[test]
    fn score_counts_existing_pods_preferences_toward_the_incoming_pod() {
        let likes_web = labelled_pod(
            "fan",
            "default",
            json!({}),
            json!({
            "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 7, "podAffinityTerm": term(json!({"app": "web"}), "zone")}]}}),
        );
        let p = labelled_pod("p", "default", json!({"app": "web"}), json!(null));
        let nodes = [zone_node("a", "a", &[]), zone_node("b", "b", &[likes_web])];
        assert_eq!(run_score(&InterPodAffinity, &p, &nodes), vec![0, 100]);
    }
}
