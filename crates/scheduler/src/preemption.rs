//! Preemption (upstream DefaultPreemption's PostFilter): when no node fits,
//! find a node where removing lower-priority pods makes the pod fit,
//! keeping as many of them as still allows it (reprieve). Pure: the caller
//! passes the PodDisruptionBudgets it watches, deletes the victims and sets
//! `nominatedNodeName`.
//!
//! PodDisruptionBudgets are a preference, not a guarantee, as upstream:
//! on each node the victims whose eviction would exceed a budget's
//! `status.disruptionsAllowed` are reprieved first, and among candidate
//! nodes the one with the fewest such violations wins. When every candidate
//! violates a budget, preemption still happens (the scheduler deletes
//! victims; it does not go through the eviction subresource).

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;

use crate::framework::{
    ClusterInfo, Code, CycleState, FitError, NodeInfo, PodInfo, Profile, Snapshot, Status,
};
use crate::selectors::label_selector_matches;

pub const ERR_NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
pub const ERR_NO_VICTIMS: &str = "No preemption victims found for incoming pod";

/// Where the pod may go once the victims are gone.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub node: String,
    /// Most important first (see [`more_important`]).
    pub victims: Vec<Arc<PodInfo>>,
    /// How many victims are evicted against a PodDisruptionBudget
    /// (upstream's `NumPDBViolations`).
    pub num_pdb_violations: usize,
}

/// A candidate, or the message preemption failed with (without the
/// `preemption: ` prefix). `pdbs` are all the cluster's policy/v1
/// PodDisruptionBudgets as last seen.
pub fn preempt(
    profile: &Profile,
    pod: &PodInfo,
    nodes: &[&NodeInfo],
    cluster: &ClusterInfo,
    pdbs: &[&PodDisruptionBudget],
    fit: &FitError,
    offset: usize,
) -> Result<Candidate, String> {
    let spec = pod.pod.spec.as_ref();
    if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Err("not eligible due to preemptionPolicy=Never".into());
    }
    let nominated = pod
        .pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref())
        .unwrap_or_default();
    if !nominated.is_empty()
        && fit
            .node_to_status
            .get(nominated)
            .is_none_or(|s| s.code != Code::UnschedulableAndUnresolvable)
        && let Some(n) = nodes.iter().find(|n| n.name() == nominated)
        && n.pods
            .iter()
            .any(|p| p.is_terminating() && p.priority < pod.priority)
    {
        return Err("not eligible due to a terminating pod on the nominated node".into());
    }

    let budgets: Vec<Budget> = pdbs.iter().map(|b| Budget::new(b)).collect();
    let mut statuses: BTreeMap<String, Status> = BTreeMap::new();
    let mut candidates = Vec::new();
    let want = candidates_to_find(nodes.len());
    for k in 0..nodes.len() {
        if candidates.len() >= want {
            break;
        }
        let i = (offset + k) % nodes.len();
        let node = nodes[i];
        let name = node.name().to_string();
        match fit.node_to_status.get(&name) {
            Some(s) if s.code == Code::UnschedulableAndUnresolvable => {
                statuses.insert(name, Status::unresolvable(ERR_NOT_HELPFUL));
                continue;
            }
            _ => {}
        }
        match select_victims(profile, pod, nodes, i, cluster, &budgets) {
            Ok((victims, num_pdb_violations)) => candidates.push(Candidate {
                node: name,
                victims,
                num_pdb_violations,
            }),
            Err(s) => {
                statuses.insert(name, s);
            }
        }
    }
    if candidates.is_empty() {
        let e = FitError {
            num_all_nodes: nodes.len(),
            pre_filter_msg: None,
            node_to_status: statuses,
            post_filter_msg: None,
        };
        return Err(e.to_string());
    }
    candidates.sort_by_key(pick_key);
    Ok(candidates.swap_remove(0))
}

/// Upstream's `MinCandidateNodesPercentage` and `MinCandidateNodesAbsolute`:
/// the dry run stops once this many nodes are candidates.
const MIN_CANDIDATE_NODES_PERCENTAGE: usize = 10;
const MIN_CANDIDATE_NODES_ABSOLUTE: usize = 100;

/// How many candidates the dry run looks for among `nodes` nodes (upstream's
/// `GetOffsetAndNumCandidates`): 10 %, at least 100, at most all.
fn candidates_to_find(nodes: usize) -> usize {
    (nodes * MIN_CANDIDATE_NODES_PERCENTAGE / 100)
        .max(MIN_CANDIDATE_NODES_ABSOLUTE)
        .min(nodes)
}

/// Upstream's `pickOneNodeForPreemption`, as a sort key (smallest wins;
/// the sort is stable, so remaining ties go to the first node evaluated):
/// fewest PodDisruptionBudget violations, then the lowest highest victim
/// priority, then the lowest sum of priorities, then the fewest victims,
/// then the latest start among the highest-priority victims (they lose
/// the least work).
fn pick_key(c: &Candidate) -> (usize, i32, i64, usize, Reverse<StartKey>) {
    let highest = c
        .victims
        .iter()
        .map(|v| v.priority)
        .max()
        .unwrap_or(i32::MIN);
    // Shifted to be non-negative, so that more victims never make a
    // smaller sum (upstream adds MaxInt32+1 too).
    let sum: i64 = c
        .victims
        .iter()
        .map(|v| v.priority as i64 + i32::MAX as i64 + 1)
        .sum();
    let earliest = c
        .victims
        .iter()
        .filter(|v| v.priority == highest)
        .map(|v| start_key(v))
        .min()
        .unwrap_or(StartKey::NotStarted);
    (
        c.num_pdb_violations,
        highest,
        sum,
        c.victims.len(),
        Reverse(earliest),
    )
}

/// When a pod started, ordered so that a pod without `status.startTime`
/// (not started yet) counts as the latest, as upstream treats it as
/// starting now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum StartKey {
    At(Timestamp),
    NotStarted,
}

fn start_key(p: &PodInfo) -> StartKey {
    match p.pod.status.as_ref().and_then(|s| s.start_time.as_ref()) {
        Some(t) => StartKey::At(t.0),
        None => StartKey::NotStarted,
    }
}

/// Upstream's `MoreImportantPod`: higher priority first, then the pod that
/// has run longer; the name makes the order total, so results do not
/// depend on the order pods sit on a node.
fn more_important(a: &PodInfo, b: &PodInfo) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then_with(|| start_key(a).cmp(&start_key(b)))
        .then_with(|| a.namespace().cmp(b.namespace()))
        .then_with(|| a.name().cmp(b.name()))
}

/// What victim selection reads of one PodDisruptionBudget.
struct Budget<'a> {
    namespace: &'a str,
    selector: Option<&'a LabelSelector>,
    /// `status.disruptionsAllowed`; 0 while the disruption controller has
    /// not written a status yet (as upstream reads the zero value).
    allowed: i32,
    /// `status.disruptedPods`: pods whose eviction the API server already
    /// counted against the budget.
    disrupted: Option<&'a BTreeMap<String, Time>>,
}

impl<'a> Budget<'a> {
    fn new(pdb: &'a PodDisruptionBudget) -> Budget<'a> {
        let status = pdb.status.as_ref();
        Budget {
            namespace: pdb.metadata.namespace.as_deref().unwrap_or("default"),
            selector: pdb.spec.as_ref().and_then(|s| s.selector.as_ref()),
            allowed: status.map_or(0, |s| s.disruptions_allowed),
            disrupted: status.and_then(|s| s.disrupted_pods.as_ref()),
        }
    }

    /// policy/v1 semantics: no selector selects nothing, an empty one every
    /// pod of the namespace (labelled or not). Upstream's scheduler treated
    /// an empty selector as matching nothing until kubernetes#141785; this
    /// follows the fix, and agrees with the eviction subresource and the
    /// disruption controller.
    fn selects(&self, pod: &PodInfo) -> bool {
        self.namespace == pod.namespace() && label_selector_matches(self.selector, pod.labels())
    }
}

/// Upstream's `filterPodsWithPDBViolation`: splits `pods` (kept in order)
/// into those whose eviction, together with the evictions of the pods
/// before them, would exceed a budget they are selected by, and the rest.
/// A pod already in a budget's `disruptedPods` was counted by the API
/// server and is not counted again.
fn split_by_pdb_violation(
    pods: Vec<Arc<PodInfo>>,
    budgets: &[Budget],
) -> (Vec<Arc<PodInfo>>, Vec<Arc<PodInfo>>) {
    let mut allowed: Vec<i32> = budgets.iter().map(|b| b.allowed).collect();
    let mut violating = Vec::new();
    let mut non_violating = Vec::new();
    for p in pods {
        let mut violates = false;
        for (b, left) in budgets.iter().zip(allowed.iter_mut()) {
            if !b.selects(&p) || b.disrupted.is_some_and(|d| d.contains_key(p.name())) {
                continue;
            }
            *left -= 1;
            violates |= *left < 0;
        }
        if violates {
            violating.push(p);
        } else {
            non_violating.push(p);
        }
    }
    (violating, non_violating)
}

/// Whether `pod` fits node `index` as `modified` (PreFilter rerun over the
/// snapshot with the node replaced, so affinity and spreading see the
/// change).
fn fits(
    profile: &Profile,
    pod: &PodInfo,
    nodes: &[&NodeInfo],
    index: usize,
    modified: &NodeInfo,
    cluster: &ClusterInfo,
) -> Status {
    let mut view: Vec<&NodeInfo> = nodes.to_vec();
    view[index] = modified;
    let snapshot = Snapshot {
        nodes: &view,
        cluster,
        default_spread_selector: None,
        zone_groups: None,
    };
    let mut state = CycleState::default();
    let s = profile.run_pre_filter(&mut state, pod, &snapshot);
    if !s.is_success() {
        return s;
    }
    profile.run_filters(&state, pod, modified)
}

/// `SelectVictimsOnNode`: remove every lower-priority pod; if the pod then
/// fits, add them back from the most important down while it still fits,
/// first those whose eviction would violate a PodDisruptionBudget, then the
/// others. Returns the victims (most important first) and how many of them
/// violate a budget.
fn select_victims(
    profile: &Profile,
    pod: &PodInfo,
    nodes: &[&NodeInfo],
    index: usize,
    cluster: &ClusterInfo,
    budgets: &[Budget],
) -> Result<(Vec<Arc<PodInfo>>, usize), Status> {
    let mut info = nodes[index].clone();
    let mut lower: Vec<Arc<PodInfo>> = info
        .pods
        .iter()
        .filter(|p| p.priority < pod.priority)
        .cloned()
        .collect();
    if lower.is_empty() {
        return Err(Status::unresolvable(ERR_NO_VICTIMS));
    }
    for p in &lower {
        info.remove_pod(p.uid());
    }
    let s = fits(profile, pod, nodes, index, &info, cluster);
    if !s.is_success() {
        return Err(s);
    }
    lower.sort_by(|a, b| more_important(a, b));
    let (violating, non_violating) = split_by_pdb_violation(lower, budgets);
    let mut victims = Vec::new();
    let mut num_violating = 0;
    for (group, violates) in [(violating, true), (non_violating, false)] {
        for p in group {
            info.add_pod(p.clone());
            if !fits(profile, pod, nodes, index, &info, cluster).is_success() {
                info.remove_pod(p.uid());
                victims.push(p);
                num_violating += usize::from(violates);
            }
        }
    }
    victims.sort_by(|a, b| more_important(a, b));
    Ok((victims, num_violating))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::schedule_pod;
    use crate::plugins::default_profile;
    use crate::plugins::testing::*;
    use serde_json::json;

    fn prio_pod(name: &str, cpu: &str, priority: i32) -> PodInfo {
        pod(
            json!({"metadata": {"name": name}, "spec": {"priority": priority,
            "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu}}}]}}),
        )
    }

    /// A pod like [`prio_pod`] with `over` (labels, namespace, status…)
    /// merged into its object.
    fn pod_with(name: &str, cpu: &str, priority: i32, over: serde_json::Value) -> PodInfo {
        let mut v = json!({"metadata": {"name": name}, "spec": {"priority": priority,
            "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu}}}]}});
        for (k, o) in over.as_object().into_iter().flatten() {
            for (kk, vv) in o.as_object().into_iter().flatten() {
                v[k][kk] = vv.clone();
            }
        }
        pod(v)
    }

    /// A pod labelled `app: guarded` (selected by [`guard`]).
    fn guarded(name: &str, cpu: &str, priority: i32) -> PodInfo {
        pod_with(
            name,
            cpu,
            priority,
            json!({"metadata": {"labels": {"app": "guarded"}}}),
        )
    }

    /// A budget in `default` with `selector` and
    /// `status.disruptionsAllowed: allowed`.
    fn budget(selector: serde_json::Value, allowed: i32) -> PodDisruptionBudget {
        let mut v = json!({"metadata": {"name": "pdb", "namespace": "default"},
            "spec": {"minAvailable": 1},
            "status": {"disruptionsAllowed": allowed, "currentHealthy": 0,
                "desiredHealthy": 0, "expectedPods": 0}});
        if !selector.is_null() {
            v["spec"]["selector"] = selector;
        }
        serde_json::from_value(v).expect("pdb")
    }

    /// A budget selecting `app: guarded`.
    fn guard(allowed: i32) -> PodDisruptionBudget {
        budget(json!({"matchLabels": {"app": "guarded"}}), allowed)
    }

    fn run(p: &PodInfo, nodes: &[NodeInfo]) -> Result<Candidate, String> {
        run_with(p, nodes, &[])
    }

    fn run_with(
        p: &PodInfo,
        nodes: &[NodeInfo],
        pdbs: &[PodDisruptionBudget],
    ) -> Result<Candidate, String> {
        let profile = default_profile();
        let refs: Vec<&NodeInfo> = nodes.iter().collect();
        let cluster = ClusterInfo::default();
        let fit = schedule_pod(
            &profile,
            p,
            &Snapshot {
                nodes: &refs,
                cluster: &cluster,
                default_spread_selector: None,
                zone_groups: None,
            },
            0,
            &mut |_| 0,
        )
        .expect_err("nothing fits");
        let pdbs: Vec<&PodDisruptionBudget> = pdbs.iter().collect();
        preempt(&profile, p, &refs, &cluster, &pdbs, &fit, 0)
    }

    fn victims(c: &Candidate) -> Vec<&str> {
        let mut v: Vec<&str> = c.victims.iter().map(|v| v.name()).collect();
        v.sort();
        v
    }

    #[test]
    fn the_dry_run_stops_after_enough_candidates_from_a_random_offset() {
        assert_eq!(candidates_to_find(50), 50);
        assert_eq!(candidates_to_find(500), 100);
        assert_eq!(candidates_to_find(5000), 500);
        // 150 nodes: n000..n149 need two victims each, except n120 which
        // needs one (the best candidate). From offset 0 the dry run stops
        // after 100 candidates and never sees n120; from offset 110 it does.
        let nodes: Vec<NodeInfo> = (0..150)
            .map(|i| {
                let name = format!("n{i:03}");
                // Nodes have 4 cpu; the preemptor asks for all of it.
                let pods = if i == 120 {
                    vec![prio_pod(&format!("{name}-a"), "4", 0)]
                } else {
                    vec![
                        prio_pod(&format!("{name}-a"), "2", 0),
                        prio_pod(&format!("{name}-b"), "2", 0),
                    ]
                };
                node_with_named(&name, json!({}), &pods)
            })
            .collect();
        let p = prio_pod("p", "4", 10);
        let profile = default_profile();
        let refs: Vec<&NodeInfo> = nodes.iter().collect();
        let cluster = ClusterInfo::default();
        let snapshot = Snapshot {
            nodes: &refs,
            cluster: &cluster,
            default_spread_selector: None,
            zone_groups: None,
        };
        let fit = schedule_pod(&profile, &p, &snapshot, 0, &mut |_| 0).expect_err("nothing fits");
        let from = |offset| preempt(&profile, &p, &refs, &cluster, &[], &fit, offset).unwrap();
        let c = from(0);
        assert!(c.node.as_str() < "n100", "{}", c.node);
        assert_eq!(c.victims.len(), 2);
        let c = from(110);
        assert_eq!(c.node, "n120");
        assert_eq!(c.victims.len(), 1);
    }

    #[test]
    fn evicts_the_fewest_lower_priority_pods() {
        let nodes = [node_with_named(
            "n1",
            json!({}),
            &[
                prio_pod("a", "2", 0),
                prio_pod("b", "1", 0),
                prio_pod("c", "1", 5),
            ],
        )];
        let c = run(&prio_pod("p", "2", 10), &nodes).unwrap();
        assert_eq!(c.node, "n1");
        // Removing all three frees 4 cpu; c (priority 5) is reprieved first,
        // then a (2 cpu) does not fit back, b does... only 2 cpu are needed.
        assert_eq!(victims(&c), vec!["a"]);
    }

    #[test]
    fn prefers_the_node_with_lower_priority_victims() {
        let nodes = [
            node_with_named("n1", json!({}), &[prio_pod("a", "4", 5)]),
            node_with_named("n2", json!({}), &[prio_pod("b", "4", 1)]),
        ];
        let c = run(&prio_pod("p", "1", 10), &nodes).unwrap();
        assert_eq!((c.node.as_str(), victims(&c)), ("n2", vec!["b"]));
    }

    #[test]
    fn equal_or_higher_priority_pods_are_not_victims() {
        let nodes = [node_with_named("n1", json!({}), &[prio_pod("a", "4", 10)])];
        assert_eq!(
            run(&prio_pod("p", "1", 10), &nodes).unwrap_err(),
            "0/1 nodes are available: 1 No preemption victims found for incoming pod."
        );
    }

    #[test]
    fn unresolvable_nodes_are_not_helpful() {
        let nodes = [
            node_with_named(
                "n1",
                json!({"spec": {"unschedulable": true}}),
                &[prio_pod("a", "4", 0)],
            ),
            node_with_named("n2", json!({}), &[prio_pod("b", "4", 0)]),
        ];
        let c = run(&prio_pod("p", "1", 10), &nodes).unwrap();
        assert_eq!(c.node, "n2");
        let nodes = [node_with_named(
            "n1",
            json!({"spec": {"unschedulable": true}}),
            &[prio_pod("a", "4", 0)],
        )];
        assert_eq!(
            run(&prio_pod("p", "1", 10), &nodes).unwrap_err(),
            "0/1 nodes are available: 1 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn still_not_fitting_after_evicting_everything_reports_the_filter() {
        let nodes = [node_with_named("n1", json!({}), &[prio_pod("a", "1", 0)])];
        assert_eq!(
            run(&prio_pod("p", "5", 10), &nodes).unwrap_err(),
            "0/1 nodes are available: 1 Insufficient cpu."
        );
    }

    #[test]
    fn preemption_policy_never() {
        let p = pod(json!({"spec": {"priority": 10, "preemptionPolicy": "Never",
            "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "5"}}}]}}));
        let nodes = [node_with_named("n1", json!({}), &[])];
        assert_eq!(
            run(&p, &nodes).unwrap_err(),
            "not eligible due to preemptionPolicy=Never"
        );
    }

    struct PdbCase {
        name: &'static str,
        nodes: Vec<NodeInfo>,
        pdbs: Vec<PodDisruptionBudget>,
        pod: PodInfo,
        /// The chosen node, its victims (sorted by name) and how many of
        /// them violate a budget.
        want: (&'static str, Vec<&'static str>, usize),
    }

    fn run_pdb_cases(cases: Vec<PdbCase>) {
        for c in cases {
            let got = run_with(&c.pod, &c.nodes, &c.pdbs)
                .unwrap_or_else(|e| panic!("{}: no candidate: {e}", c.name));
            assert_eq!(
                (got.node.as_str(), victims(&got), got.num_pdb_violations),
                c.want,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn nodes_whose_victims_violate_fewer_budgets_win() {
        run_pdb_cases(vec![
            PdbCase {
                name: "without budgets the lower-priority victim's node wins",
                nodes: vec![
                    node_with_named("n1", json!({}), &[guarded("a", "4", 1)]),
                    node_with_named("n2", json!({}), &[prio_pod("b", "4", 5)]),
                ],
                pdbs: vec![],
                pod: prio_pod("p", "1", 10),
                want: ("n1", vec!["a"], 0),
            },
            PdbCase {
                name: "a budget with no disruptions left protects the lower-priority victim",
                nodes: vec![
                    node_with_named("n1", json!({}), &[guarded("a", "4", 1)]),
                    node_with_named("n2", json!({}), &[prio_pod("b", "4", 5)]),
                ],
                pdbs: vec![guard(0)],
                pod: prio_pod("p", "1", 10),
                want: ("n2", vec!["b"], 0),
            },
            PdbCase {
                name: "a budget with a disruption left does not",
                nodes: vec![
                    node_with_named("n1", json!({}), &[guarded("a", "4", 1)]),
                    node_with_named("n2", json!({}), &[prio_pod("b", "4", 5)]),
                ],
                pdbs: vec![guard(1)],
                pod: prio_pod("p", "1", 10),
                want: ("n1", vec!["a"], 0),
            },
            PdbCase {
                name: "every candidate violates: preempt anyway, on the node with the fewest violations",
                nodes: vec![
                    node_with_named(
                        "n1",
                        json!({}),
                        &[guarded("a1", "2", 1), guarded("a2", "2", 1)],
                    ),
                    node_with_named("n2", json!({}), &[guarded("b", "4", 5)]),
                ],
                pdbs: vec![guard(0)],
                pod: prio_pod("p", "4", 10),
                want: ("n2", vec!["b"], 1),
            },
            PdbCase {
                name: "a budget in another namespace does not protect",
                nodes: vec![
                    node_with_named("n1", json!({}), &[guarded("a", "4", 1)]),
                    node_with_named("n2", json!({}), &[prio_pod("b", "4", 5)]),
                ],
                pdbs: vec![{
                    let mut b = guard(0);
                    b.metadata.namespace = Some("other".into());
                    b
                }],
                pod: prio_pod("p", "1", 10),
                want: ("n1", vec!["a"], 0),
            },
        ]);
    }

    #[test]
    fn reprieve_keeps_budget_protected_pods_before_more_important_ones() {
        let node = || {
            node_with_named(
                "n1",
                json!({}),
                &[guarded("a", "2", 1), prio_pod("b", "2", 5)],
            )
        };
        run_pdb_cases(vec![
            PdbCase {
                name: "without budgets the higher-priority pod is reprieved",
                nodes: vec![node()],
                pdbs: vec![],
                pod: prio_pod("p", "2", 10),
                want: ("n1", vec!["a"], 0),
            },
            PdbCase {
                name: "the protected pod is reprieved first",
                nodes: vec![node()],
                pdbs: vec![guard(0)],
                pod: prio_pod("p", "2", 10),
                want: ("n1", vec!["b"], 0),
            },
            PdbCase {
                name: "a protected pod that must go counts as a violation",
                nodes: vec![node()],
                pdbs: vec![guard(0)],
                pod: prio_pod("p", "4", 10),
                want: ("n1", vec!["a", "b"], 1),
            },
        ]);
    }

    #[test]
    fn disruptions_allowed_are_spent_from_the_most_important_victim_down() {
        let node = || {
            node_with_named(
                "n1",
                json!({}),
                &[guarded("g1", "2", 2), guarded("g2", "2", 1)],
            )
        };
        let cases = [(0, 2), (1, 1), (2, 0), (5, 0)];
        run_pdb_cases(
            cases
                .into_iter()
                .map(|(allowed, violations)| PdbCase {
                    name: "both guarded pods must go",
                    nodes: vec![node()],
                    pdbs: vec![guard(allowed)],
                    pod: prio_pod("p", "4", 10),
                    want: ("n1", vec!["g1", "g2"], violations),
                })
                .collect(),
        );
        // With one disruption left, the more important g1 takes it: g2 is
        // the violating one and is reprieved first, so g1 goes.
        run_pdb_cases(vec![PdbCase {
            name: "the violating pod is the less important one",
            nodes: vec![node()],
            pdbs: vec![guard(1)],
            pod: prio_pod("p", "2", 10),
            want: ("n1", vec!["g1"], 0),
        }]);
    }

    #[test]
    fn pods_already_in_disrupted_pods_are_not_counted_again() {
        let mut counted = guard(0);
        counted.status.as_mut().expect("status").disrupted_pods = Some(BTreeMap::from([(
            "a".to_string(),
            Time("2024-01-01T00:00:00Z".parse().expect("time")),
        )]));
        let nodes = || {
            vec![
                node_with_named("n1", json!({}), &[guarded("a", "4", 1)]),
                node_with_named("n2", json!({}), &[prio_pod("b", "4", 5)]),
            ]
        };
        run_pdb_cases(vec![
            PdbCase {
                name: "a pod the API server already evicted is not a violation",
                nodes: nodes(),
                pdbs: vec![counted],
                pod: prio_pod("p", "1", 10),
                want: ("n1", vec!["a"], 0),
            },
            PdbCase {
                name: "another pod is",
                nodes: nodes(),
                pdbs: vec![guard(0)],
                pod: prio_pod("p", "1", 10),
                want: ("n2", vec!["b"], 0),
            },
        ]);
    }

    #[test]
    fn budget_selectors_follow_policy_v1() {
        let nodes = || {
            vec![
                node_with_named("n1", json!({}), &[prio_pod("a", "4", 1)]),
                node_with_named("n2", json!({}), &[prio_pod("b", "4", 1)]),
            ]
        };
        run_pdb_cases(vec![
            PdbCase {
                name: "no selector selects nothing",
                nodes: nodes(),
                pdbs: vec![budget(serde_json::Value::Null, 0)],
                pod: prio_pod("p", "1", 10),
                want: ("n1", vec!["a"], 0),
            },
            PdbCase {
                name: "an empty selector selects every pod of the namespace, unlabelled too",
                nodes: nodes(),
                pdbs: vec![budget(json!({}), 0)],
                pod: prio_pod("p", "1", 10),
                want: ("n1", vec!["a"], 1),
            },
            PdbCase {
                name: "match expressions",
                nodes: vec![
                    node_with_named("n1", json!({}), &[guarded("a", "4", 1)]),
                    node_with_named("n2", json!({}), &[prio_pod("b", "4", 1)]),
                ],
                pdbs: vec![budget(
                    json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["guarded"]}]}),
                    0,
                )],
                pod: prio_pod("p", "1", 10),
                want: ("n2", vec!["b"], 0),
            },
        ]);
    }

    #[test]
    fn ties_go_to_the_node_whose_top_victims_started_last() {
        let started =
            |name: &str, at: &str| pod_with(name, "4", 1, json!({"status": {"startTime": at}}));
        run_pdb_cases(vec![
            PdbCase {
                name: "the more recently started victim loses less work",
                nodes: vec![
                    node_with_named("n1", json!({}), &[started("old", "2024-01-01T00:00:00Z")]),
                    node_with_named("n2", json!({}), &[started("new", "2024-06-01T00:00:00Z")]),
                ],
                pdbs: vec![],
                pod: prio_pod("p", "1", 10),
                want: ("n2", vec!["new"], 0),
            },
            PdbCase {
                name: "a victim that has not started counts as the latest",
                nodes: vec![
                    node_with_named("n1", json!({}), &[started("old", "2024-01-01T00:00:00Z")]),
                    node_with_named("n2", json!({}), &[prio_pod("pending", "4", 1)]),
                ],
                pdbs: vec![],
                pod: prio_pod("p", "1", 10),
                want: ("n2", vec!["pending"], 0),
            },
        ]);
    }

    #[test]
    fn reprieve_keeps_the_longer_running_of_equal_priority_pods() {
        let nodes = vec![node_with_named(
            "n1",
            json!({}),
            &[
                pod_with(
                    "new",
                    "2",
                    1,
                    json!({"status": {"startTime": "2024-06-01T00:00:00Z"}}),
                ),
                pod_with(
                    "old",
                    "2",
                    1,
                    json!({"status": {"startTime": "2024-01-01T00:00:00Z"}}),
                ),
            ],
        )];
        let c = run(&prio_pod("p", "2", 10), &nodes).unwrap();
        assert_eq!(victims(&c), vec!["new"]);
    }
}
