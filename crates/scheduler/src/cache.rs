//! The scheduler's view of the cluster: a [`NodeInfo`] per node with the
//! pods assigned to it, including pods *assumed* on a node (bound by this
//! scheduler, not yet seen bound through the watch) so that the next
//! attempt already counts them.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::framework::{NodeInfo, PodInfo, ZONE_LABEL, ZoneGroups};

#[derive(Debug, Clone)]
struct PodEntry {
    node: String,
    assumed: bool,
}

#[derive(Debug, Default)]
pub struct Cache {
    /// Nodes that exist, in no particular order: every scheduling cycle
    /// walks hundreds of them, and a vector walks faster than a tree.
    nodes: Vec<NodeInfo>,
    /// Each node's index in `nodes`.
    index: HashMap<String, usize>,
    /// Pods on nodes with no Node object (seen before their node, or left
    /// after it was deleted), on placeholder nodes.
    orphans: HashMap<String, NodeInfo>,
    pods: HashMap<String, PodEntry>,
    /// The pods of `nodes` by label group and zone.
    zone_groups: ZoneGroups,
}

fn placeholder(name: &str) -> Arc<Node> {
    Arc::new(Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    })
}

impl Cache {
    pub fn set_node(&mut self, node: Arc<Node>) -> bool {
        let name = node.metadata.name.clone().unwrap_or_default();
        if let Some(&i) = self.index.get(&name) {
            let info = &mut self.nodes[i];
            let old = info.node.clone();
            let old_zone = info.label(ZONE_LABEL).cloned();
            info.set_node(node.clone());
            let zone = info.label(ZONE_LABEL);
            if zone != old_zone.as_ref() {
                let groups = &mut self.zone_groups;
                count_zone(groups, info, old_zone.as_deref(), ZoneGroups::remove);
                count_zone(groups, info, zone.map(String::as_str), ZoneGroups::add);
            }
            return scheduling_relevant_change(&old, &node);
        }
        let info = match self.orphans.remove(&name) {
            Some(mut info) => {
                info.set_node(node);
                info
            }
            None => NodeInfo::new(node),
        };
        let zone = info.label(ZONE_LABEL).map(String::as_str);
        count_zone(&mut self.zone_groups, &info, zone, ZoneGroups::add);
        self.index.insert(name, self.nodes.len());
        self.nodes.push(info);
        true
    }

    pub fn delete_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let mut info = self.nodes.swap_remove(i);
        let zone = info.label(ZONE_LABEL).map(String::as_str);
        count_zone(&mut self.zone_groups, &info, zone, ZoneGroups::remove);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name().to_string(), i);
        }
        if !info.pods.is_empty() {
            info.set_node(placeholder(name));
            self.orphans.insert(name.to_string(), info);
        }
    }

    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name().to_string()).collect()
    }

    fn place(&mut self, pod: Arc<PodInfo>, node: &str, assumed: bool) {
        let uid = pod.uid().to_string();
        self.remove_pod(&uid);
        match self.index.get(node) {
            Some(&i) => {
                let info = &mut self.nodes[i];
                if let Some(zone) = info.label(ZONE_LABEL) {
                    self.zone_groups.add(&pod, zone);
                }
                info.add_pod(pod);
            }
            None => self
                .orphans
                .entry(node.to_string())
                .or_insert_with(|| NodeInfo::new(placeholder(node)))
                .add_pod(pod),
        }
        self.pods.insert(
            uid,
            PodEntry {
                node: node.to_string(),
                assumed,
            },
        );
    }

    pub fn add_or_update_pod(&mut self, pod: Arc<PodInfo>, node: &str) -> bool {
        let was_assumed = self
            .pods
            .get(pod.uid())
            .is_some_and(|e| e.assumed && e.node == node);
        self.place(pod, node, false);
        was_assumed
    }

    pub fn assume(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.place(pod, node, true);
    }

    pub fn forget(&mut self, uid: &str) {
        if self.pods.get(uid).is_some_and(|e| e.assumed) {
            self.remove_pod(uid);
        }
    }

    pub fn is_assumed(&self, uid: &str) -> bool {
        self.pods.get(uid).is_some_and(|e| e.assumed)
    }

    pub fn remove_pod(&mut self, uid: &str) -> bool {
        let Some(e) = self.pods.remove(uid) else {
            return false;
        };
        if let Some(&i) = self.index.get(&e.node) {
            let info = &mut self.nodes[i];
            if let Some(pod) = info.remove_pod(uid)
                && let Some(zone) = info.label(ZONE_LABEL)
            {
                self.zone_groups.remove(&pod, zone);
            }
        } else if let Some(info) = self.orphans.get_mut(&e.node) {
            info.remove_pod(uid);
            if info.pods.is_empty() {
                self.orphans.remove(&e.node);
            }
        }
        true
    }

    pub fn pod_uids(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }

    /// The nodes that exist, in the order they were first seen.
    pub fn node_infos(&self) -> Vec<&NodeInfo> {
        self.nodes.iter().collect()
    }

    pub fn node_info(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    /// The pods of [`Cache::node_infos`] by label group and zone.
    pub fn zone_groups(&self) -> &ZoneGroups {
        &self.zone_groups
    }
}

/// Adds or removes (`count`) the pods of `info` in `zone`, if any.
fn count_zone(
    groups: &mut ZoneGroups,
    info: &NodeInfo,
    zone: Option<&str>,
    count: fn(&mut ZoneGroups, &Arc<PodInfo>, &str),
) {
    if let Some(zone) = zone {
        for pod in &info.pods {
            count(groups, pod, zone);
        }
    }
}

fn scheduling_relevant_change(old: &Node, new: &Node) -> bool {
    let alloc = |n: &Node| n.status.as_ref().and_then(|s| s.allocatable.clone());
    let taints = |n: &Node| n.spec.as_ref().and_then(|s| s.taints.clone());
    let unsched = |n: &Node| n.spec.as_ref().and_then(|s| s.unschedulable);
    let conds = |n: &Node| -> Vec<(String, String)> {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(|cs| {
                cs.iter()
                    .map(|c| (c.type_.clone(), c.status.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    alloc(old) != alloc(new)
        || old.metadata.labels != new.metadata.labels
        || taints(old) != taints(new)
        || unsched(old) != unsched(new)
        || conds(old) != conds(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn node(name: &str, cpu: &str) -> Arc<Node> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name}, "status": {"allocatable": {"cpu": cpu, "pods": "10"}}})).unwrap())
    }

    fn pod(name: &str, cpu: &str) -> Arc<PodInfo> {
        Arc::new(PodInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "uid": name},
                "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu}}}]}}))
            .unwrap(),
        )))
    }

    #[test]
    fn assumed_pods_count_until_confirmed_or_forgotten() {
        let mut c = Cache::default();
        c.set_node(node("n1", "4"));
        c.assume(pod("a", "1"), "n1");
        assert_eq!(c.node_info("n1").unwrap().requested.milli_cpu, 1000);
        assert!(
            c.add_or_update_pod(pod("a", "1"), "n1"),
            "the watch confirms our binding"
        );
        assert!(!c.is_assumed("a"));
        assert_eq!(c.node_info("n1").unwrap().requested.milli_cpu, 1000);
        c.assume(pod("b", "2"), "n1");
        c.forget("b");
        assert_eq!(c.node_info("n1").unwrap().requested.milli_cpu, 1000);
        c.forget("a");
        assert_eq!(
            c.node_info("n1").unwrap().pods.len(),
            1,
            "confirmed pods are not forgotten"
        );
    }

    #[test]
    fn pods_seen_before_their_node_are_kept() {
        let mut c = Cache::default();
        c.add_or_update_pod(pod("a", "1"), "n1");
        assert!(c.node_infos().is_empty());
        c.set_node(node("n1", "4"));
        assert_eq!(c.node_info("n1").unwrap().requested.milli_cpu, 1000);
        assert_eq!(c.node_info("n1").unwrap().allocatable.milli_cpu, 4000);
        c.delete_node("n1");
        assert!(c.node_infos().is_empty());
        c.remove_pod("a");
        assert!(c.nodes.is_empty() && c.orphans.is_empty());
    }

    #[test]
    fn deleting_a_node_keeps_the_others_reachable_by_name() {
        let mut c = Cache::default();
        for n in ["n1", "n2", "n3"] {
            c.set_node(node(n, "4"));
        }
        c.delete_node("n1");
        c.assume(pod("a", "1"), "n3");
        assert_eq!(c.node_info("n3").unwrap().requested.milli_cpu, 1000);
        assert_eq!(c.node_info("n2").unwrap().requested.milli_cpu, 0);
        assert!(c.node_info("n1").is_none());
        let mut names = c.node_names();
        names.sort();
        assert_eq!(names, ["n2", "n3"]);
        c.delete_node("n3");
        assert!(c.remove_pod("a"), "the pod stayed, on a placeholder node");
        assert_eq!(c.node_infos().len(), 1);
    }

    #[test]
    fn heartbeats_are_not_scheduling_changes() {
        let mut c = Cache::default();
        assert!(c.set_node(node("n1", "4")));
        assert!(!c.set_node(node("n1", "4")));
        assert!(c.set_node(node("n1", "8")));
    }

    fn zoned(name: &str, zone: Option<&str>) -> Arc<Node> {
        let labels = zone.map(|z| json!({"topology.kubernetes.io/zone": z}));
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap(),
        )
    }

    fn labelled(name: &str, app: &str, over: serde_json::Value) -> Arc<PodInfo> {
        let mut v = json!({"metadata": {"name": name, "namespace": "default", "uid": name,
            "labels": {"app": app}}});
        if let (Some(m), Some(o)) = (v["metadata"].as_object_mut(), over.as_object()) {
            m.extend(o.clone());
        }
        Arc::new(PodInfo::new(Arc::new(serde_json::from_value(v).unwrap())))
    }

    /// Per zone, the pods of the cache's zone groups, after checking they
    /// are what its nodes hold.
    fn zone_totals(c: &Cache, what: &str) -> BTreeMap<String, u32> {
        let kept = c.zone_groups().totals();
        let nodes = c.node_infos();
        assert_eq!(kept, ZoneGroups::of(&nodes).totals(), "{what}");
        let mut per_zone = BTreeMap::new();
        for ((_, _, zone), n) in kept {
            *per_zone.entry(zone).or_default() += n;
        }
        per_zone
    }

    fn zones(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(z, n)| (z.to_string(), *n)).collect()
    }

    #[test]
    fn zone_groups_follow_pods_and_nodes() {
        let mut c = Cache::default();
        c.set_node(zoned("n1", Some("a")));
        c.set_node(zoned("n2", Some("b")));
        c.set_node(zoned("n3", None));
        c.add_or_update_pod(labelled("p1", "web", json!({})), "n1");
        c.add_or_update_pod(labelled("p2", "web", json!({})), "n1");
        c.add_or_update_pod(labelled("p3", "db", json!({})), "n2");
        c.add_or_update_pod(labelled("p4", "web", json!({})), "n3");
        c.add_or_update_pod(labelled("p5", "web", json!({})), "unknown");
        c.assume(labelled("p6", "web", json!({})), "n2");
        let totals = zone_totals(&c, "pods placed and assumed");
        assert_eq!(totals, zones(&[("a", 2), ("b", 2)]));
        c.forget("p6");
        c.add_or_update_pod(labelled("p1", "db", json!({})), "n1");
        c.add_or_update_pod(
            labelled(
                "p2",
                "web",
                json!({"deletionTimestamp": "2026-01-01T00:00:00Z"}),
            ),
            "n1",
        );
        let totals = zone_totals(&c, "forgotten, relabelled, terminating");
        assert_eq!(totals, zones(&[("a", 1), ("b", 1)]));
        c.set_node(zoned("n1", Some("c")));
        c.set_node(zoned("n3", Some("c")));
        let totals = zone_totals(&c, "nodes change zone");
        assert_eq!(totals, zones(&[("b", 1), ("c", 2)]));
        c.delete_node("n2");
        let totals = zone_totals(&c, "node deleted");
        assert_eq!(totals, zones(&[("c", 2)]));
        c.set_node(zoned("n2", Some("b")));
        c.set_node(zoned("unknown", Some("b")));
        let totals = zone_totals(&c, "nodes (re)appear under their pods");
        assert_eq!(totals, zones(&[("b", 2), ("c", 2)]));
        for uid in ["p1", "p2", "p3", "p4", "p5"] {
            c.remove_pod(uid);
        }
        assert!(zone_totals(&c, "pods removed").is_empty());
        assert!(c.zone_groups().groups("default").next().is_none());
    }
}
