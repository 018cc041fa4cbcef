//! Pod garbage collection (upstream `pkg/controller/podgc`), every
//! `period`: deletes the oldest terminated (Succeeded/Failed) pods above
//! `--terminated-pod-gc-threshold` (default 12500, 0 disables), pods bound
//! to nodes that no longer exist (confirmed with a live lookup of the
//! node), and terminating pods that were never scheduled (no kubelet will
//! finish their deletion). Orphaned and unscheduled pods are deleted with
//! grace period 0, as upstream force-deletes them.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use skiff_client::informer::Informer;

use crate::{ControllerConfig, Error, Informers};

/// Settings of pod garbage collection.
#[derive(Debug, Clone)]
pub struct PodGcConfig {
    /// Terminated pods kept at most (`--terminated-pod-gc-threshold`);
    /// 0 disables that part.
    pub terminated_pod_threshold: usize,
    /// How often to look (upstream: 20 s).
    pub period: Duration,
}

impl Default for PodGcConfig {
    fn default() -> Self {
        PodGcConfig {
            terminated_pod_threshold: 12_500,
            period: Duration::from_secs(20),
        }
    }
}

/// Pods to delete, by (namespace, name).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// The oldest terminated pods above the threshold.
    pub terminated: Vec<(String, String)>,
    /// Pods bound to a node that does not exist.
    pub orphaned: Vec<(String, String)>,
    /// Terminating pods never bound to a node.
    pub unscheduled_terminating: Vec<(String, String)>,
}

fn key(p: &Pod) -> (String, String) {
    (p.namespace().unwrap_or_default(), p.name_any())
}

fn terminated(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn node_of(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()?
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())
}

/// The pure decision over all pods and the names of the nodes that exist.
pub fn plan<P: Borrow<Pod>>(pods: &[P], nodes: &BTreeSet<String>, threshold: usize) -> Plan {
    let mut plan = Plan::default();
    if threshold > 0 {
        let mut done: Vec<&Pod> = pods
            .iter()
            .map(Borrow::borrow)
            .filter(|p| terminated(p) && p.metadata.deletion_timestamp.is_none())
            .collect();
        if done.len() > threshold {
            // Evicted pods first (upstream), then the oldest.
            done.sort_by_key(|p| {
                let evicted =
                    p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted");
                (
                    !evicted,
                    p.metadata
                        .creation_timestamp
                        .as_ref()
                        .map_or(0, |t| t.0.as_second()),
                    p.name_any(),
                )
            });
            plan.terminated = done[..done.len() - threshold]
                .iter()
                .map(|p| key(p))
                .collect();
        }
    }
    let terminated: HashSet<&(String, String)> = plan.terminated.iter().collect();
    let mut orphaned = Vec::new();
    let mut unscheduled_terminating = Vec::new();
    for p in pods {
        let p: &Pod = p.borrow();
        if terminated.contains(&key(p)) {
            continue;
        }
        match node_of(p) {
            Some(node) if !nodes.contains(node) => orphaned.push(key(p)),
            None if p.metadata.deletion_timestamp.is_some() => unscheduled_terminating.push(key(p)),
            _ => {}
        }
    }
    plan.orphaned = orphaned;
    plan.unscheduled_terminating = unscheduled_terminating;
    plan
}

async fn delete(
    client: &kube::Client,
    (ns, name): &(String, String),
    force: bool,
) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let params = if force {
        DeleteParams::default().grace_period(0)
    } else {
        DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn sweep(
    client: &kube::Client,
    cache: &Informer<Pod>,
    threshold: usize,
) -> Result<(), Error> {
    let pods = cache.list();
    let nodes_api = Api::<Node>::all(client.clone());
    let nodes: BTreeSet<String> = nodes_api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    let plan = plan(&pods, &nodes, threshold);
    for pod in &plan.terminated {
        delete(client, pod, false).await?;
    }
    if !plan.terminated.is_empty() {
        tracing::info!(
            count = plan.terminated.len(),
            "deleted terminated pods above the threshold"
        );
    }
    // The node list may be stale: confirm each missing node live.
    let mut confirmed_missing = BTreeSet::new();
    for pod in &plan.orphaned {
        let Some(node) = pods
            .iter()
            .find(|p| key(p) == *pod)
            .and_then(|p| node_of(p))
            .map(str::to_string)
        else {
            continue;
        };
        if !confirmed_missing.contains(&node) {
            if nodes_api.get_opt(&node).await?.is_some() {
                continue;
            }
            confirmed_missing.insert(node.clone());
        }
        tracing::info!(namespace = %pod.0, pod = %pod.1, %node, "deleting pod of a node that no longer exists");
        delete(client, pod, true).await?;
    }
    for pod in &plan.unscheduled_terminating {
        tracing::info!(namespace = %pod.0, pod = %pod.1, "deleting unscheduled terminating pod");
        delete(client, pod, true).await?;
    }
    Ok(())
}

/// Runs pod garbage collection until the task is dropped.
pub async fn run(client: kube::Client, config: ControllerConfig, informers: Informers) {
    let mut tick = tokio::time::interval(config.pod_gc.period);
    loop {
        tick.tick().await;
        let threshold = config.pod_gc.terminated_pod_threshold;
        if let Err(e) = sweep(&client, &informers.pods, threshold).await {
            tracing::warn!(error = %e, "pod garbage collection failed; retrying next period");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::testing::pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn aged(mut p: Pod, created: i64) -> Pod {
        p.metadata.namespace = Some("ns".into());
        p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        p
    }

    fn names(keys: &[(String, String)]) -> Vec<&str> {
        keys.iter().map(|(_, n)| n.as_str()).collect()
    }

    #[test]
    fn collects_terminated_orphaned_and_unscheduled_terminating_pods() {
        let nodes: BTreeSet<String> = ["n1".to_string()].into();
        let mut terminating = aged(pod("stuck", None, "Pending", None), 5);
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(9).unwrap()));
        let pods = vec![
            aged(pod("done-old", Some("n1"), "Succeeded", None), 1),
            aged(pod("failed-mid", Some("n1"), "Failed", None), 2),
            aged(pod("done-new", Some("n1"), "Succeeded", None), 3),
            aged(pod("running", Some("n1"), "Running", None), 1),
            aged(pod("ghost", Some("gone"), "Running", None), 1),
            aged(pod("pending", None, "Pending", None), 1),
            terminating,
        ];
        struct Case {
            name: &'static str,
            threshold: usize,
            terminated: Vec<&'static str>,
        }
        let cases = [
            Case {
                name: "above the threshold the oldest go",
                threshold: 1,
                terminated: vec!["done-old", "failed-mid"],
            },
            Case {
                name: "at the threshold nothing goes",
                threshold: 3,
                terminated: vec![],
            },
            Case {
                name: "zero disables",
                threshold: 0,
                terminated: vec![],
            },
        ];
        for c in cases {
            let p = plan(&pods, &nodes, c.threshold);
            assert_eq!(names(&p.terminated), c.terminated, "{}", c.name);
            assert_eq!(names(&p.orphaned), ["ghost"], "{}", c.name);
            assert_eq!(names(&p.unscheduled_terminating), ["stuck"], "{}", c.name);
        }
    }
}
