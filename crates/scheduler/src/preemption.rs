//! Basic preemption (upstream DefaultPreemption's PostFilter): when no node
//! fits, find a node where removing lower-priority pods makes the pod fit,
//! keeping as many of them as still allows it (reprieve). Pure: the caller
//! deletes the victims and sets `nominatedNodeName`. PodDisruptionBudgets
//! are not considered.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::framework::{
    ClusterInfo, Code, CycleState, FitError, NodeInfo, PodInfo, Profile, Snapshot, Status,
};

pub const ERR_NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
pub const ERR_NO_VICTIMS: &str = "No preemption victims found for incoming pod";

/// Where the pod may go once the victims are gone.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub node: String,
    pub victims: Vec<Arc<PodInfo>>,
}

/// A candidate, or the message preemption failed with (without the
/// `preemption: ` prefix).
pub fn preempt(
    profile: &Profile,
    pod: &PodInfo,
    nodes: &[&NodeInfo],
    cluster: &ClusterInfo,
    fit: &FitError,
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

    let mut statuses: BTreeMap<String, Status> = BTreeMap::new();
    let mut candidates = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let name = node.name().to_string();
        match fit.node_to_status.get(&name) {
            Some(s) if s.code == Code::UnschedulableAndUnresolvable => {
                statuses.insert(name, Status::unresolvable(ERR_NOT_HELPFUL));
                continue;
            }
            _ => {}
        }
        match select_victims(profile, pod, nodes, i, cluster) {
            Ok(victims) => candidates.push(Candidate {
                node: name,
                victims,
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
    // Upstream's pickOneNodeForPreemption (without PDBs): lowest highest
    // victim priority, then lowest sum of priorities, then fewest victims.
    candidates.sort_by_key(|c| {
        let highest = c
            .victims
            .iter()
            .map(|v| v.priority)
            .max()
            .unwrap_or(i32::MIN);
        let sum: i64 = c
            .victims
            .iter()
            .map(|v| v.priority as i64 + i32::MAX as i64 + 1)
            .sum();
        (highest, sum, c.victims.len())
    });
    Ok(candidates.swap_remove(0))
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
    };
    let mut state = CycleState::default();
    let s = profile.run_pre_filter(&mut state, pod, &snapshot);
    if !s.is_success() {
        return s;
    }
    profile.run_filters(&state, pod, modified)
}

/// `SelectVictimsOnNode`: remove every lower-priority pod; if the pod then
/// fits, add them back from the most important down while it still fits.
fn select_victims(
    profile: &Profile,
    pod: &PodInfo,
    nodes: &[&NodeInfo],
    index: usize,
    cluster: &ClusterInfo,
) -> Result<Vec<Arc<PodInfo>>, Status> {
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
    lower.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.name().cmp(b.name()))
    });
    let mut victims = Vec::new();
    for p in lower {
        info.add_pod(p.clone());
        if !fits(profile, pod, nodes, index, &info, cluster).is_success() {
            info.remove_pod(p.uid());
            victims.push(p);
        }
    }
    Ok(victims)
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

    fn run(p: &PodInfo, nodes: &[NodeInfo]) -> Result<Candidate, String> {
        let profile = default_profile();
        let refs: Vec<&NodeInfo> = nodes.iter().collect();
        let cluster = ClusterInfo::default();
        let fit = schedule_pod(
            &profile,
            p,
            &Snapshot {
                nodes: &refs,
                cluster: &cluster,
            },
            0,
            &mut |_| 0,
        )
        .expect_err("nothing fits");
        preempt(&profile, p, &refs, &cluster, &fit)
    }

    fn victims(c: &Candidate) -> Vec<&str> {
        let mut v: Vec<&str> = c.victims.iter().map(|v| v.name()).collect();
        v.sort();
        v
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
}
