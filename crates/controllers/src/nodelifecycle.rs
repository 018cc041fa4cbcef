//! The node lifecycle controller: a node whose heartbeat (its Lease in
//! `kube-node-lease`, or its Ready condition's `lastHeartbeatTime`) is older
//! than the grace period gets `Ready=Unknown` and the
//! `node.kubernetes.io/unreachable` taints; a node reporting `Ready=False`
//! gets the `not-ready` taints; a healthy node loses both. Pods on a node
//! with a `NoExecute` taint they do not tolerate are evicted (deleted
//! gracefully) after their `tolerationSeconds`, so their controllers
//! recreate them elsewhere.
//!
//! Kubernetes' `DefaultTolerationSeconds` admission plugin gives every pod a
//! 300 s toleration of the not-ready and unreachable taints; skiff has no
//! such admission step, so a pod without its own toleration of those two
//! taints is treated as tolerating them for `default_toleration_seconds`.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::{ControllerConfig, Error, Informers};
use kube::runtime::watcher;
use skiff_client::informer::Informer;

pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";

/// Timing of the controller.
#[derive(Debug, Clone)]
pub struct NodeLifecycleConfig {
    pub monitor_period: Duration,
    /// A heartbeat older than this makes the node Unknown (upstream 40 s).
    pub grace_period: Duration,
    /// Toleration of not-ready/unreachable for pods that declare none.
    pub default_toleration_seconds: i64,
}

impl Default for NodeLifecycleConfig {
    fn default() -> Self {
        NodeLifecycleConfig {
            monitor_period: Duration::from_secs(5),
            grace_period: Duration::from_secs(40),
            default_toleration_seconds: 300,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ready,
    NotReady,
    Unknown,
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The newest sign of life: the Lease's renew time or the Ready heartbeat.
pub fn last_heartbeat(node: &Node, lease: Option<&Lease>) -> Option<i64> {
    let from_lease = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0.as_second());
    let from_status = ready_condition(node)
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0.as_second());
    from_lease.max(from_status)
}

/// The node's health as the controller sees it at `now`.
pub fn health(node: &Node, lease: Option<&Lease>, now: i64, grace: Duration) -> Health {
    let created = node
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(now);
    let beat = last_heartbeat(node, lease).unwrap_or(created);
    if now - beat > grace.as_secs() as i64 {
        return Health::Unknown;
    }
    match ready_condition(node).map(|c| c.status.as_str()) {
        Some("True") => Health::Ready,
        Some("False") => Health::NotReady,
        _ => Health::Unknown,
    }
}

/// The node's taints after applying `health`, or `None` when unchanged.
pub fn desired_taints(node: &Node, health: Health, now: Timestamp) -> Option<Vec<Taint>> {
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut taints: Vec<Taint> = current
        .iter()
        .filter(|t| t.key != TAINT_UNREACHABLE && t.key != TAINT_NOT_READY)
        .cloned()
        .collect();
    let key = match health {
        Health::Ready => None,
        Health::NotReady => Some(TAINT_NOT_READY),
        Health::Unknown => Some(TAINT_UNREACHABLE),
    };
    if let Some(key) = key {
        for effect in ["NoSchedule", "NoExecute"] {
            // Keep the original timeAdded of a taint that is already there.
            let existing = current.iter().find(|t| t.key == key && t.effect == effect);
            taints.push(existing.cloned().unwrap_or(Taint {
                key: key.into(),
                effect: effect.into(),
                value: None,
                time_added: (effect == "NoExecute").then_some(Time(now)),
            }));
        }
    }
    let norm = |v: &[Taint]| {
        let mut v: Vec<(String, String)> = v
            .iter()
            .map(|t| (t.key.clone(), t.effect.clone()))
            .collect();
        v.sort();
        v
    };
    (norm(&taints) != norm(&current)).then_some(taints)
}

/// When `pod` must leave a node with these NoExecute `taints`: `Some(0)`
/// now, `Some(n)` in n seconds, `None` never.
pub fn eviction_in(pod: &Pod, taints: &[Taint], now: i64, default_secs: i64) -> Option<i64> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut deadline: Option<i64> = None; // seconds from now; None = forever
    let mut forever = true;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let added = taint
            .time_added
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(now);
        let matching: Vec<&Toleration> = tolerations
            .iter()
            .filter(|t| skiff_client::selectors::tolerates(t, taint))
            .collect();
        let seconds = if matching.is_empty() {
            if taint.key == TAINT_UNREACHABLE || taint.key == TAINT_NOT_READY {
                Some(default_secs)
            } else {
                Some(0)
            }
        } else if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            None
        } else {
            matching.iter().filter_map(|t| t.toleration_seconds).min()
        };
        if let Some(s) = seconds {
            forever = false;
            let left = (added + s.max(0) - now).max(0);
            deadline = Some(deadline.map_or(left, |d| d.min(left)));
        }
    }
    if forever { None } else { deadline }
}

/// Where node heartbeats are kept.
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// What a sweep reads.
struct Caches {
    nodes: Informer<Node>,
    leases: Informer<Lease>,
    pods: Informer<Pod>,
}

/// One look at every node, from the caches: mark the silent ones Unknown,
/// keep their taints, evict pods whose toleration ran out. Returns when to
/// look again at the latest.
async fn sweep(
    client: &kube::Client,
    config: &NodeLifecycleConfig,
    caches: &Caches,
) -> Result<Option<Duration>, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = Timestamp::now();
    let mut next: Option<Duration> = None;
    for node in caches.nodes.list() {
        let name = node.name_any();
        let lease = caches.leases.get(LEASE_NAMESPACE, &name);
        let h = health(
            &node,
            lease.as_deref(),
            now.as_second(),
            config.grace_period,
        );
        if h == Health::Unknown
            && ready_condition(&node).map(|c| c.status.as_str()) != Some("Unknown")
        {
            let conditions: Vec<_> = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"]
                .iter()
                .map(|t| {
                    json!({
                        "type": t, "status": "Unknown", "reason": "NodeStatusUnknown",
                        "message": "Kubelet stopped posting node status.",
                        "lastTransitionTime": now.to_string(),
                    })
                })
                .collect();
            nodes
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Strategic(json!({"status": {"conditions": conditions}})),
                )
                .await?;
            tracing::warn!(node = %name, "node stopped posting status; marked Unknown");
        }
        let taints = match desired_taints(&node, h, now) {
            Some(t) => {
                nodes
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"taints": t}})),
                    )
                    .await?;
                t
            }
            None => node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default(),
        };
        if !taints.iter().any(|t| t.effect == "NoExecute") {
            continue;
        }
        let on_node = caches
            .pods
            .list()
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&name));
        for pod in on_node {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            match eviction_in(
                &pod,
                &taints,
                now.as_second(),
                config.default_toleration_seconds,
            ) {
                Some(0) => {
                    let api: Api<Pod> =
                        Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
                    match api.delete(&pod.name_any(), &DeleteParams::default()).await {
                        Ok(_) => {
                            tracing::info!(pod = %pod.name_any(), node = %name, "evicted pod from tainted node")
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(s) => {
                    let d = Duration::from_secs(s as u64);
                    next = Some(next.map_or(d, |n: Duration| n.min(d)));
                }
                None => {}
            }
        }
    }
    Ok(next)
}

/// Runs the controller forever.
pub async fn run(client: kube::Client, config: ControllerConfig, informers: Informers) {
    let lc = config.node_lifecycle.clone();
    let caches = Caches {
        leases: Informer::spawn(
            Api::namespaced(client.clone(), LEASE_NAMESPACE),
            watcher::Config::default(),
        ),
        nodes: informers.nodes,
        pods: informers.pods,
    };
    caches.leases.wait_synced().await;
    loop {
        let wait = match sweep(&client, &lc, &caches).await {
            Ok(next) => next
                .map_or(lc.monitor_period, |n| n.min(lc.monitor_period))
                .max(Duration::from_millis(200)),
            Err(e) => {
                tracing::warn!(error = %e, "node lifecycle sweep failed");
                lc.monitor_period
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    const NOW: i64 = 1_000_000;

    fn ts(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn node(ready: &str, heartbeat: i64) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n".into()),
                creation_timestamp: Some(ts(0)),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    last_heartbeat_time: Some(ts(heartbeat)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn health_follows_heartbeats_and_the_ready_condition() {
        let grace = Duration::from_secs(40);
        let cases = [
            ("fresh and ready", node("True", NOW - 5), Health::Ready),
            (
                "fresh and not ready",
                node("False", NOW - 5),
                Health::NotReady,
            ),
            ("stale heartbeat", node("True", NOW - 100), Health::Unknown),
        ];
        for (name, n, want) in cases {
            assert_eq!(health(&n, None, NOW, grace), want, "{name}");
        }
        let lease = Lease {
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                    Timestamp::from_second(NOW - 3).unwrap(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            health(&node("True", NOW - 100), Some(&lease), NOW, grace),
            Health::Ready,
            "a renewed lease counts"
        );
    }

    #[test]
    fn taints_follow_health() {
        let now = Timestamp::from_second(NOW).unwrap();
        let unreachable = desired_taints(&node("True", 0), Health::Unknown, now).unwrap();
        let keys: Vec<_> = unreachable
            .iter()
            .map(|t| (t.key.as_str(), t.effect.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                (TAINT_UNREACHABLE, "NoSchedule"),
                (TAINT_UNREACHABLE, "NoExecute")
            ]
        );
        let mut tainted = node("True", 0);
        tainted.spec.as_mut().unwrap().taints = Some(unreachable);
        assert_eq!(
            desired_taints(&tainted, Health::Unknown, now),
            None,
            "unchanged"
        );
        assert_eq!(
            desired_taints(&tainted, Health::Ready, now),
            Some(vec![]),
            "recovered"
        );
    }

    #[test]
    fn pods_leave_after_their_toleration_seconds() {
        let taint = Taint {
            key: TAINT_UNREACHABLE.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: Some(ts(NOW - 10)),
        };
        let other = Taint {
            key: "dedicated".into(),
            effect: "NoExecute".into(),
            value: Some("x".into()),
            time_added: Some(ts(NOW)),
        };
        let pod = |tols: Vec<Toleration>| Pod {
            spec: Some(PodSpec {
                tolerations: Some(tols),
                ..Default::default()
            }),
            ..Default::default()
        };
        let tol = |key: &str, secs: Option<i64>| Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: secs,
            value: None,
        };
        let cases = [
            (
                "default toleration",
                pod(vec![]),
                vec![taint.clone()],
                Some(290),
            ),
            (
                "own toleration seconds",
                pod(vec![tol(TAINT_UNREACHABLE, Some(30))]),
                vec![taint.clone()],
                Some(20),
            ),
            (
                "expired",
                pod(vec![tol(TAINT_UNREACHABLE, Some(5))]),
                vec![taint.clone()],
                Some(0),
            ),
            (
                "tolerates forever",
                pod(vec![tol(TAINT_UNREACHABLE, None)]),
                vec![taint.clone()],
                None,
            ),
            (
                "untolerated custom taint",
                pod(vec![]),
                vec![other.clone()],
                Some(0),
            ),
        ];
        for (name, p, taints, want) in cases {
            assert_eq!(eviction_in(&p, &taints, NOW, 300), want, "{name}");
        }
    }
}
