//! The stand-in kubelet: one watch of every pod with a `spec.nodeName`
//! (bound pods; those of other nodes are skipped here), and for the pods of
//! simulated nodes:
//! - bound and Pending: after `running_delay`, Running and Ready through
//!   `pods/status` (conditions, container statuses, pod IP from the node's
//!   range, host IP, start time);
//! - Running and owned by a Job: after `job_duration`, Succeeded;
//! - being deleted: deleted with grace 0, on the condition of its uid.
//!
//! [`decide`] is the pure part: what a pod, as watched, needs. A tracker
//! keyed by uid keeps one action in flight per pod, so the events a pod
//! goes through while its action runs do not repeat it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use crate::{Outcome, Shared, Stats, with_retries};

/// What a pod needs from its (simulated) kubelet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Report it Running and Ready.
    Start,
    /// Report its Job's work done: Succeeded.
    Complete,
    /// Finish its deletion.
    Delete,
}

/// The facts about a pod its action needs.
#[derive(Debug, Clone, PartialEq)]
pub struct PodWork {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Index of its simulated node.
    pub node: usize,
    /// (name, image) of each container.
    pub containers: Vec<(String, String)>,
    pub init_containers: Vec<(String, String)>,
    pub host_network: bool,
    /// Owned by a Job: it finishes.
    pub job: bool,
    /// `status.startTime`, once Running.
    pub start_time: Option<Time>,
}

/// What `pod` (as watched) needs, if it is bound to one of the `count`
/// nodes named `<prefix><i>`.
pub fn decide(pod: &Pod, prefix: &str, count: usize) -> Option<(Action, PodWork)> {
    let spec = pod.spec.as_ref()?;
    let node = crate::node::index_of(spec.node_name.as_deref()?, prefix, count)?;
    let meta = &pod.metadata;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let job = meta.owner_references.iter().flatten().any(|o| {
        o.kind == "Job" && o.api_version.starts_with("batch/") && o.controller == Some(true)
    });
    let action = if meta.deletion_timestamp.is_some() {
        Action::Delete
    } else {
        match phase {
            Some("Succeeded" | "Failed") => return None,
            Some("Running") if job => Action::Complete,
            Some("Running") => return None,
            _ => Action::Start,
        }
    };
    let names = |cs: &[k8s_openapi::api::core::v1::Container]| {
        cs.iter()
            .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
            .collect()
    };
    Some((
        action,
        PodWork {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone()?,
            uid: meta.uid.clone()?,
            node,
            containers: names(&spec.containers),
            init_containers: names(spec.init_containers.as_deref().unwrap_or_default()),
            host_network: spec.host_network == Some(true),
            job,
            start_time: pod.status.as_ref().and_then(|s| s.start_time.clone()),
        },
    ))
}

fn time(t: Timestamp) -> Value {
    serde_json::to_value(Time(t)).unwrap_or(Value::Null)
}

fn container_id(work: &PodWork, container: &str) -> String {
    format!("sim://{}-{container}", work.uid)
}

/// The `pods/status` strategic merge patch that reports `work` Running and
/// Ready (PodScheduled, set by the scheduler, is kept by the merge).
pub fn running_status(work: &PodWork, pod_ip: &str, host_ip: &str, now: Timestamp) -> Value {
    let now = time(now);
    let condition =
        |type_: &str| json!({"type": type_, "status": "True", "lastTransitionTime": now});
    let init: Vec<Value> = work
        .init_containers
        .iter()
        .map(|(name, image)| {
            json!({"name": name, "image": image, "imageID": image, "containerID": container_id(work, name),
                "ready": true, "started": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now,
                    "containerID": container_id(work, name)}}})
        })
        .collect();
    let containers: Vec<Value> = work
        .containers
        .iter()
        .map(|(name, image)| {
            json!({"name": name, "image": image, "imageID": image, "containerID": container_id(work, name),
                "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": now}}})
        })
        .collect();
    let mut status = json!({
        "phase": "Running",
        "conditions": [
            condition("PodReadyToStartContainers"),
            condition("Initialized"),
            condition("ContainersReady"),
            condition("Ready"),
        ],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": now,
        "containerStatuses": containers,
    });
    if !init.is_empty() {
        status["initContainerStatuses"] = Value::Array(init);
    }
    json!({ "status": status })
}

/// The `pods/status` strategic merge patch that reports `work` Succeeded:
/// every container exited 0.
pub fn succeeded_status(work: &PodWork, now: Timestamp) -> Value {
    let finished = time(now);
    let started = work
        .start_time
        .as_ref()
        .map(|t| time(t.0))
        .unwrap_or_else(|| finished.clone());
    let condition = |type_: &str| json!({"type": type_, "status": "False", "reason": "PodCompleted", "lastTransitionTime": finished});
    let containers: Vec<Value> = work
        .containers
        .iter()
        .map(|(name, image)| {
            json!({"name": name, "image": image, "imageID": image, "containerID": container_id(work, name),
                "ready": false, "started": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started,
                    "finishedAt": finished, "containerID": container_id(work, name)}}})
        })
        .collect();
    json!({"status": {
        "phase": "Succeeded",
        "conditions": [
            condition("PodReadyToStartContainers"),
            condition("ContainersReady"),
            condition("Ready"),
        ],
        "containerStatuses": containers,
    }})
}

/// One action in flight per pod uid. `generation` marks entries seen since
/// the watch last (re)listed, so entries of pods deleted while it was
/// disconnected are dropped when the new list is complete.
#[derive(Debug, Default)]
struct Tracker {
    inner: Mutex<HashMap<String, (Action, u64)>>,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Action, u64)>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `action` for `uid`; false when it is already the pod's.
    fn begin(&self, uid: &str, action: Action, generation: u64) -> bool {
        let mut map = self.lock();
        match map.get_mut(uid) {
            Some((a, g)) if *a == action => {
                *g = generation;
                false
            }
            _ => {
                map.insert(uid.to_string(), (action, generation));
                true
            }
        }
    }

    fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }

    /// Forgets `uid` only if `action` is still its current one.
    fn forget_if(&self, uid: &str, action: Action) {
        let mut map = self.lock();
        if map.get(uid).is_some_and(|(a, _)| *a == action) {
            map.remove(uid);
        }
    }

    fn keep_only(&self, generation: u64) {
        self.lock().retain(|_, (_, g)| *g >= generation);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Watches bound pods forever and acts on those of simulated nodes.
pub(crate) async fn run(shared: Arc<Shared>) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let config = watcher::Config::default().fields("spec.nodeName!=");
    let mut events = watcher(api, config).default_backoff().boxed();
    let tracker = Arc::new(Tracker::default());
    let mut generation = 0u64;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => generation += 1,
            Ok(watcher::Event::InitDone) => {
                tracker.keep_only(generation);
                tracing::debug!(tracked = tracker.len(), "pod watch (re)listed");
            }
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                let Some(uid) = pod.metadata.uid.as_deref() else {
                    continue;
                };
                match decide(&pod, &shared.config.name_prefix, shared.config.count) {
                    Some((action, work)) => {
                        if tracker.begin(uid, action, generation) {
                            tokio::spawn(perform(shared.clone(), tracker.clone(), action, work));
                        }
                    }
                    None => tracker.forget(uid),
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    tracker.forget(uid);
                }
            }
            Err(e) => tracing::warn!(error = %e, "watching bound pods"),
        }
    }
}

async fn perform(shared: Arc<Shared>, tracker: Arc<Tracker>, action: Action, work: PodWork) {
    let delay = match action {
        Action::Start => shared.config.running_delay,
        Action::Complete => shared.config.job_duration,
        Action::Delete => Duration::ZERO,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &work.namespace);
    let stats = &shared.stats;
    let result = match action {
        Action::Start => {
            let node = &shared.nodes[work.node];
            let host_ip = node.ip.to_string();
            let pod_ip = if work.host_network {
                host_ip.clone()
            } else {
                let cidr = crate::node::watched_pod_cidr(&shared, &node.name);
                node.next_pod_ip(cidr.as_deref()).to_string()
            };
            let patch = running_status(&work, &pod_ip, &host_ip, Timestamp::now());
            with_retries(stats, "report pod running", || async {
                let _permit = shared.calls.acquire().await;
                api.patch_status(
                    &work.name,
                    &PatchParams::default(),
                    &Patch::Strategic(&patch),
                )
                .await
                .map(|_| ())
            })
            .await
            .inspect(|o| {
                if matches!(o, Outcome::Done(())) {
                    Stats::add(&stats.pods_started);
                }
            })
        }
        Action::Complete => {
            let patch = succeeded_status(&work, Timestamp::now());
            with_retries(stats, "report pod succeeded", || async {
                let _permit = shared.calls.acquire().await;
                api.patch_status(
                    &work.name,
                    &PatchParams::default(),
                    &Patch::Strategic(&patch),
                )
                .await
                .map(|_| ())
            })
            .await
            .inspect(|o| {
                if matches!(o, Outcome::Done(())) {
                    Stats::add(&stats.pods_completed);
                }
            })
        }
        Action::Delete => {
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(work.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            with_retries(stats, "delete pod", || async {
                let _permit = shared.calls.acquire().await;
                api.delete(&work.name, &params).await.map(|_| ())
            })
            .await
            .inspect(|o| {
                if matches!(o, Outcome::Done(())) {
                    Stats::add(&stats.pods_deleted);
                }
            })
        }
    };
    if let Err(e) = result {
        tracing::warn!(
            pod = %format!("{}/{}", work.namespace, work.name),
            ?action,
            error = %e,
            "giving up on a pod for now; its next event retries"
        );
        tracker.forget_if(&work.uid, action);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(node: Option<&str>, phase: Option<&str>, job: bool, deleting: bool) -> Pod {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "pause"}]},
        }))
        .unwrap_or_default();
        if let Some(spec) = p.spec.as_mut() {
            spec.node_name = node.map(str::to_string);
        }
        if let Some(phase) = phase {
            p.status = Some(k8s_openapi::api::core::v1::PodStatus {
                phase: Some(phase.to_string()),
                ..Default::default()
            });
        }
        if job {
            p.metadata.owner_references = Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "Job".into(),
                    name: "j".into(),
                    uid: "j1".into(),
                    controller: Some(true),
                    ..Default::default()
                },
            ]);
        }
        if deleting {
            p.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        }
        p
    }

    #[test]
    fn pods_of_simulated_nodes_get_what_their_state_needs() {
        let n = Some("sim-node-1");
        let cases = [
            ("unbound", pod(None, Some("Pending"), false, false), None),
            (
                "another node",
                pod(Some("real-1"), Some("Pending"), false, false),
                None,
            ),
            (
                "bound, Pending",
                pod(n, Some("Pending"), false, false),
                Some(Action::Start),
            ),
            (
                "bound, no status",
                pod(n, None, false, false),
                Some(Action::Start),
            ),
            ("Running", pod(n, Some("Running"), false, false), None),
            (
                "Job pod Running",
                pod(n, Some("Running"), true, false),
                Some(Action::Complete),
            ),
            (
                "Job pod Succeeded",
                pod(n, Some("Succeeded"), true, false),
                None,
            ),
            ("Failed", pod(n, Some("Failed"), false, false), None),
            (
                "deleting, Running",
                pod(n, Some("Running"), false, true),
                Some(Action::Delete),
            ),
            (
                "deleting, Succeeded",
                pod(n, Some("Succeeded"), true, true),
                Some(Action::Delete),
            ),
        ];
        for (case, p, want) in cases {
            let got = decide(&p, "sim-node-", 2).map(|(a, _)| a);
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn running_status_reports_ready_containers_and_addresses() {
        let (_, work) = decide(&pod(Some("sim-node-0"), None, false, false), "sim-node-", 1)
            .unwrap_or_else(|| panic!("a bound pod needs an action"));
        let s = &running_status(&work, "10.42.0.2", "172.16.0.1", Timestamp::now())["status"];
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.42.0.2");
        assert_eq!(s["hostIPs"][0]["ip"], "172.16.0.1");
        let ready = s["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready");
        assert_eq!(ready.map(|c| c["status"].clone()), Some(json!("True")));
        assert_eq!(s["containerStatuses"][0]["name"], "c");
        assert!(s["containerStatuses"][0]["state"]["running"]["startedAt"].is_string());
        assert!(s.get("initContainerStatuses").is_none());
    }

    #[test]
    fn succeeded_status_reports_every_container_exited_zero() {
        let (_, work) = decide(
            &pod(Some("sim-node-0"), Some("Running"), true, false),
            "sim-node-",
            1,
        )
        .unwrap_or_else(|| panic!("a running Job pod needs an action"));
        let s = &succeeded_status(&work, Timestamp::now())["status"];
        assert_eq!(s["phase"], "Succeeded");
        assert_eq!(
            s["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            0
        );
    }

    #[test]
    fn one_action_per_pod_is_in_flight() {
        let t = Tracker::default();
        assert!(t.begin("u", Action::Start, 1), "first start");
        assert!(!t.begin("u", Action::Start, 1), "repeated start");
        assert!(t.begin("u", Action::Delete, 1), "a new action");
        t.forget_if("u", Action::Start);
        assert!(
            !t.begin("u", Action::Delete, 1),
            "an older action does not forget a newer"
        );
        t.forget("u");
        assert!(t.begin("u", Action::Delete, 1), "forgotten");
    }

    #[test]
    fn a_relist_drops_pods_it_did_not_see_again() {
        let t = Tracker::default();
        t.begin("gone", Action::Start, 1);
        t.begin("kept", Action::Start, 1);
        t.begin("kept", Action::Start, 2);
        t.keep_only(2);
        assert_eq!(t.len(), 1);
        assert!(!t.begin("kept", Action::Start, 2));
    }
}
