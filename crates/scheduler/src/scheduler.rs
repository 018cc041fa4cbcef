//! The scheduling loop: watches nodes, pods, namespaces, priority classes,
//! PodDisruptionBudgets (for preemption) and the Services,
//! ReplicationControllers, ReplicaSets and StatefulSets (for default
//! topology spreading), keeps the [`Cache`] and the [`SchedulingQueue`] up
//! to date, schedules one pod at a time, binds in the background, and
//! reports failures the way Kubernetes does (`PodScheduled=False` condition
//! and a `FailedScheduling` event).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{
    Binding, Event, Namespace, Node, ObjectReference, Pod, PodCondition, ReplicationController,
    Service,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use serde_json::json;
use skiff_client::informer::Informer;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cache::Cache;
use crate::framework::{ClusterInfo, PodInfo, Profile, Snapshot, schedule_pod};
use crate::plugins::default_profile;
use crate::plugins::pod_topology_spread::{SelectingObjects, default_spread_selector};
use crate::preemption::preempt;
use crate::queue::{QueueConfig, SchedulingQueue};

/// The scheduler's settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Pods with this `spec.schedulerName` are ours.
    pub scheduler_name: String,
    /// This process's identity in the lease and in events.
    pub identity: String,
    /// Run only while holding the `kube-system/kube-scheduler` Lease.
    pub leader_election: bool,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
    pub queue: QueueConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "skiff".into());
        SchedulerConfig {
            scheduler_name: "default-scheduler".into(),
            identity: format!("{host}_{}", std::process::id()),
            leader_election: true,
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(2),
            queue: QueueConfig::default(),
        }
    }
}

/// Runs the scheduler until the process ends: under leader election
/// (`kube-system/kube-scheduler`) unless `config.leader_election` is off.
pub async fn run(client: kube::Client, config: SchedulerConfig) {
    if !config.leader_election {
        return Scheduler::new(client, config).run().await;
    }
    let mut leader =
        skiff_client::leader::LeaderConfig::new("kube-system", "kube-scheduler", &config.identity);
    leader.lease_duration = config.lease_duration;
    leader.renew_interval = config.renew_interval;
    let c = client.clone();
    skiff_client::leader::run_as_leader(client, leader, move || {
        let scheduler = Scheduler::new(c.clone(), config.clone());
        scheduler.run()
    })
    .await
}

#[derive(Debug)]
struct BindOutcome {
    key: String,
    uid: String,
    node: String,
    pod: Arc<Pod>,
    result: Result<(), kube::Error>,
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn assigned_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

struct Scheduler {
    client: kube::Client,
    config: SchedulerConfig,
    profile: Profile,
    /// Where the next cycle starts filtering (upstream's
    /// `nextStartNodeIndex`), so every node gets its turn.
    next_start_node: usize,
    cache: Cache,
    queue: SchedulingQueue,
    /// Pending pods that are ours, by key.
    pending: HashMap<String, Arc<Pod>>,
    cluster: ClusterInfo,
    /// PriorityClass name → (value, globalDefault).
    priority_classes: HashMap<String, (i32, bool)>,
    /// policy/v1 PodDisruptionBudgets, which preemption prefers not to
    /// violate. A budget change requeues no pod: budgets only steer which
    /// victims preemption picks, never whether a pod fits (as upstream,
    /// which registers no PDB events).
    pdbs: Informer<PodDisruptionBudget>,
    /// What gives a pod without spread constraints of its own its default
    /// spreading. A change requeues no pod: the defaults only score (as
    /// upstream, whose PodTopologySpread registers no events for these
    /// kinds).
    selecting: SelectingCaches,
    nodes_synced: bool,
    pods_synced: bool,
    relist_nodes: Option<HashSet<String>>,
    relist_pods: Option<HashSet<String>>,
    bind_tx: mpsc::UnboundedSender<BindOutcome>,
    bind_rx: Option<mpsc::UnboundedReceiver<BindOutcome>>,
}

/// The caches the default spreading selector is read from (upstream's
/// listers for `helper.DefaultSelector`).
struct SelectingCaches {
    services: Informer<Service>,
    replication_controllers: Informer<ReplicationController>,
    replica_sets: Informer<ReplicaSet>,
    stateful_sets: Informer<StatefulSet>,
}

impl SelectingCaches {
    fn spawn(client: &kube::Client) -> SelectingCaches {
        let config = watcher::Config::default;
        SelectingCaches {
            services: Informer::spawn(Api::all(client.clone()), config()),
            replication_controllers: Informer::spawn(Api::all(client.clone()), config()),
            replica_sets: Informer::spawn(Api::all(client.clone()), config()),
            stateful_sets: Informer::spawn(Api::all(client.clone()), config()),
        }
    }

    fn is_synced(&self) -> bool {
        self.services.is_synced()
            && self.replication_controllers.is_synced()
            && self.replica_sets.is_synced()
            && self.stateful_sets.is_synced()
    }
}

impl SelectingObjects for SelectingCaches {
    fn services(&self, namespace: &str) -> Vec<Arc<Service>> {
        self.services.list_namespace(namespace)
    }

    fn replication_controller(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<ReplicationController>> {
        self.replication_controllers.get(namespace, name)
    }

    fn replica_set(&self, namespace: &str, name: &str) -> Option<Arc<ReplicaSet>> {
        self.replica_sets.get(namespace, name)
    }

    fn stateful_set(&self, namespace: &str, name: &str) -> Option<Arc<StatefulSet>> {
        self.stateful_sets.get(namespace, name)
    }
}

fn watch<K>(api: Api<K>) -> impl Stream<Item = Result<WatchEvent<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(skiff_client::informer::strip_managed_fields)
}

impl Scheduler {
    fn new(client: kube::Client, config: SchedulerConfig) -> Scheduler {
        let (bind_tx, bind_rx) = mpsc::unbounded_channel();
        Scheduler {
            queue: SchedulingQueue::new(config.queue.clone()),
            config,
            profile: default_profile(),
            next_start_node: 0,
            cache: Cache::default(),
            pending: HashMap::new(),
            cluster: ClusterInfo::default(),
            priority_classes: HashMap::new(),
            pdbs: Informer::spawn(Api::all(client.clone()), watcher::Config::default()),
            selecting: SelectingCaches::spawn(&client),
            client,
            nodes_synced: false,
            pods_synced: false,
            relist_nodes: None,
            relist_pods: None,
            bind_tx,
            bind_rx: Some(bind_rx),
        }
    }

    async fn run(mut self) {
        let c = &self.client;
        let mut nodes = Box::pin(watch(Api::<Node>::all(c.clone())));
        let mut pods = Box::pin(watch(Api::<Pod>::all(c.clone())));
        let mut namespaces = Box::pin(watch(Api::<Namespace>::all(c.clone())));
        let mut classes = Box::pin(watch(Api::<PriorityClass>::all(c.clone())));
        let mut bind_rx = self.bind_rx.take().expect("run is called once");
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(scheduler = %self.config.scheduler_name, "scheduler started");
        loop {
            // As upstream waits for its informers: a pod scheduled before
            // the Services and controllers are known would not be spread.
            let can_schedule = self.nodes_synced
                && self.pods_synced
                && self.selecting.is_synced()
                && self.queue.has_active();
            tokio::select! {
                biased;
                Some(out) = bind_rx.recv() => self.on_bound(out),
                Some(ev) = nodes.next() => match ev {
                    Ok(ev) => self.on_node_event(ev),
                    Err(e) => tracing::warn!(error = %e, "watching nodes"),
                },
                Some(ev) = pods.next() => match ev {
                    Ok(ev) => self.on_pod_event(ev),
                    Err(e) => tracing::warn!(error = %e, "watching pods"),
                },
                Some(ev) = namespaces.next() => match ev {
                    Ok(ev) => self.on_namespace_event(ev),
                    Err(e) => tracing::debug!(error = %e, "watching namespaces"),
                },
                Some(ev) = classes.next() => match ev {
                    Ok(ev) => self.on_priority_class_event(ev),
                    Err(e) => tracing::debug!(error = %e, "watching priority classes"),
                },
                _ = tick.tick() => self.queue.flush(Instant::now()),
                _ = std::future::ready(()), if can_schedule => self.schedule_one(),
            }
        }
    }

    fn on_node_event(&mut self, ev: WatchEvent<Node>) {
        let now = Instant::now();
        match ev {
            WatchEvent::Init => self.relist_nodes = Some(HashSet::new()),
            WatchEvent::InitApply(n) | WatchEvent::Apply(n) => {
                if let Some(seen) = self.relist_nodes.as_mut() {
                    seen.insert(n.metadata.name.clone().unwrap_or_default());
                }
                if self.cache.set_node(Arc::new(n)) {
                    self.queue.move_all_to_active(now);
                }
            }
            WatchEvent::Delete(n) => self
                .cache
                .delete_node(n.metadata.name.as_deref().unwrap_or_default()),
            WatchEvent::InitDone => {
                if let Some(seen) = self.relist_nodes.take() {
                    for name in self.cache.node_names() {
                        if !seen.contains(&name) {
                            self.cache.delete_node(&name);
                        }
                    }
                }
                self.nodes_synced = true;
            }
        }
    }

    fn on_pod_event(&mut self, ev: WatchEvent<Pod>) {
        match ev {
            WatchEvent::Init => self.relist_pods = Some(HashSet::new()),
            WatchEvent::InitApply(p) | WatchEvent::Apply(p) => {
                if let Some(seen) = self.relist_pods.as_mut() {
                    seen.insert(p.metadata.uid.clone().unwrap_or_default());
                }
                self.on_pod(p);
            }
            WatchEvent::Delete(p) => self.on_pod_deleted(&p),
            WatchEvent::InitDone => {
                if let Some(seen) = self.relist_pods.take() {
                    let mut moved = false;
                    for uid in self.cache.pod_uids() {
                        if !seen.contains(&uid) && !self.cache.is_assumed(&uid) {
                            moved |= self.cache.remove_pod(&uid);
                        }
                    }
                    let gone: Vec<String> = self
                        .pending
                        .iter()
                        .filter(|(_, p)| {
                            !seen.contains(p.metadata.uid.as_deref().unwrap_or_default())
                        })
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in gone {
                        self.pending.remove(&k);
                        self.queue.delete(&k);
                    }
                    if moved {
                        self.queue.move_all_to_active(Instant::now());
                    }
                }
                self.pods_synced = true;
            }
        }
    }

    fn priority_of(&self, pod: &Pod) -> i32 {
        let spec = pod.spec.as_ref();
        if let Some(p) = spec.and_then(|s| s.priority) {
            return p;
        }
        match spec
            .and_then(|s| s.priority_class_name.as_deref())
            .filter(|n| !n.is_empty())
        {
            Some(name) => self
                .priority_classes
                .get(name)
                .map(|(v, _)| *v)
                .unwrap_or(0),
            None => self
                .priority_classes
                .values()
                .filter(|(_, global)| *global)
                .map(|(v, _)| *v)
                .max()
                .unwrap_or(0),
        }
    }

    fn pod_info(&self, pod: Arc<Pod>) -> PodInfo {
        let priority = self.priority_of(&pod);
        PodInfo::new(pod).with_priority(priority)
    }

    fn on_pod(&mut self, pod: Pod) {
        let now = Instant::now();
        let key = pod_key(&pod);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if is_terminal(&pod) {
            if self.cache.remove_pod(&uid) {
                self.queue.move_all_to_active(now);
            }
            self.pending.remove(&key);
            self.queue.delete(&key);
            return;
        }
        if let Some(node) = assigned_node(&pod).map(str::to_string) {
            let info = Arc::new(self.pod_info(Arc::new(pod)).assigned());
            let ours = self.cache.add_or_update_pod(info, &node);
            self.pending.remove(&key);
            self.queue.delete(&key);
            if !ours {
                self.queue.move_all_to_active(now);
            }
            return;
        }
        let spec = pod.spec.as_ref();
        let responsible = spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("default-scheduler")
            == self.config.scheduler_name;
        let gated = spec
            .and_then(|s| s.scheduling_gates.as_ref())
            .is_some_and(|g| !g.is_empty());
        if !responsible || gated || pod.metadata.deletion_timestamp.is_some() {
            self.pending.remove(&key);
            self.queue.delete(&key);
            return;
        }
        if self.cache.is_assumed(&uid) {
            // A stale pending copy of a pod being bound.
            return;
        }
        let changed = self
            .pending
            .get(&key)
            .is_none_or(|old| old.spec != pod.spec || old.metadata.labels != pod.metadata.labels);
        let priority = self.priority_of(&pod);
        self.pending.insert(key.clone(), Arc::new(pod));
        self.queue.add_or_update(&key, priority, changed, now);
    }

    fn on_pod_deleted(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        if self
            .cache
            .remove_pod(pod.metadata.uid.as_deref().unwrap_or_default())
        {
            self.queue.move_all_to_active(Instant::now());
        }
        self.pending.remove(&key);
        self.queue.delete(&key);
    }

    fn on_namespace_event(&mut self, ev: WatchEvent<Namespace>) {
        match ev {
            WatchEvent::InitApply(ns) | WatchEvent::Apply(ns) => {
                let name = ns.metadata.name.unwrap_or_default();
                let labels = ns.metadata.labels.unwrap_or_default();
                if self.cluster.namespace_labels.get(&name) != Some(&labels) {
                    self.cluster.namespace_labels.insert(name, labels);
                    self.queue.move_all_to_active(Instant::now());
                }
            }
            WatchEvent::Delete(ns) => {
                self.cluster
                    .namespace_labels
                    .remove(ns.metadata.name.as_deref().unwrap_or_default());
            }
            WatchEvent::Init | WatchEvent::InitDone => {}
        }
    }

    fn on_priority_class_event(&mut self, ev: WatchEvent<PriorityClass>) {
        match ev {
            WatchEvent::InitApply(pc) | WatchEvent::Apply(pc) => {
                self.priority_classes.insert(
                    pc.metadata.name.unwrap_or_default(),
                    (pc.value, pc.global_default.unwrap_or(false)),
                );
            }
            WatchEvent::Delete(pc) => {
                self.priority_classes
                    .remove(pc.metadata.name.as_deref().unwrap_or_default());
            }
            WatchEvent::Init | WatchEvent::InitDone => {}
        }
    }

    /// One scheduling attempt for the next active pod.
    fn schedule_one(&mut self) {
        let now = Instant::now();
        let Some(key) = self.queue.pop(now) else {
            return;
        };
        let Some(pod) = self.pending.get(&key).cloned() else {
            self.queue.delete(&key);
            return;
        };
        let info = self.pod_info(pod.clone());
        let spread_selector = default_spread_selector(&info, &self.selecting);
        let infos = self.cache.node_infos();
        let snapshot = Snapshot {
            nodes: &infos,
            cluster: &self.cluster,
            default_spread_selector: spread_selector.as_ref(),
            zone_groups: Some(self.cache.zone_groups()),
        };
        let start = self.next_start_node;
        let result = schedule_pod(&self.profile, &info, &snapshot, start, &mut |n| {
            fastrand::usize(..n)
        });
        match result {
            Ok(r) => {
                self.next_start_node = (start + r.evaluated_nodes) % infos.len().max(1);
                drop(infos);
                // The attempt's requests, ports and priority stand; only the
                // cached copy (fresh from `assigned`) learns its node.
                let mut assumed = info.assigned();
                Arc::make_mut(&mut assumed.pod)
                    .spec
                    .get_or_insert_with(Default::default)
                    .node_name = Some(r.node.clone());
                self.cache.assume(Arc::new(assumed), &r.node);
                tokio::spawn(bind(
                    self.client.clone(),
                    pod,
                    key,
                    r.node,
                    self.bind_tx.clone(),
                ));
            }
            Err(mut fit) => {
                let mut nominated = None;
                if fit.num_all_nodes > 0 {
                    let budgets = self.pdbs.list();
                    let pdbs: Vec<&PodDisruptionBudget> =
                        budgets.iter().map(AsRef::as_ref).collect();
                    let offset = fastrand::usize(..infos.len());
                    match preempt(
                        &self.profile,
                        &info,
                        &infos,
                        &self.cluster,
                        &pdbs,
                        &fit,
                        offset,
                    ) {
                        Ok(candidate) => {
                            tracing::info!(
                                pod = %key,
                                node = %candidate.node,
                                victims = candidate.victims.len(),
                                pdb_violations = candidate.num_pdb_violations,
                                "preempting"
                            );
                            tokio::spawn(evict(
                                self.client.clone(),
                                pod.clone(),
                                candidate.node.clone(),
                                candidate.victims.iter().map(|v| v.pod.clone()).collect(),
                                self.config.identity.clone(),
                            ));
                            nominated = Some(candidate.node);
                        }
                        Err(msg) => fit.post_filter_msg = Some(format!("preemption: {msg}")),
                    }
                }
                drop(infos);
                let message = fit.to_string();
                let reason = if fit.num_all_nodes == 0 {
                    "SchedulerError"
                } else {
                    "Unschedulable"
                };
                tracing::debug!(pod = %key, %message, "unschedulable");
                tokio::spawn(report_failure(
                    self.client.clone(),
                    pod,
                    reason,
                    message,
                    nominated,
                    self.config.identity.clone(),
                ));
                if fit.num_all_nodes == 0 {
                    self.queue.done_error(&key, now);
                } else {
                    self.queue.done_unschedulable(&key, now);
                }
            }
        }
    }

    fn on_bound(&mut self, out: BindOutcome) {
        match out.result {
            Ok(()) => {
                self.queue.done_bound(&out.key);
                let message = format!("Successfully assigned {} to {}", out.key, out.node);
                tokio::spawn(record_event(
                    self.client.clone(),
                    out.pod,
                    "Normal",
                    "Scheduled",
                    message,
                    self.config.identity.clone(),
                ));
            }
            Err(e) => {
                self.cache.forget(&out.uid);
                match &e {
                    // Gone, or bound meanwhile: the watch tells the rest.
                    kube::Error::Api(s) if s.code == 404 || s.code == 409 => {
                        tracing::debug!(pod = %out.key, error = %e, "binding not needed");
                        self.queue.delete(&out.key);
                        self.pending.remove(&out.key);
                    }
                    _ => {
                        tracing::warn!(pod = %out.key, error = %e, "binding failed");
                        self.queue.done_error(&out.key, Instant::now());
                        tokio::spawn(record_event(
                            self.client.clone(),
                            out.pod,
                            "Warning",
                            "FailedScheduling",
                            format!("Binding rejected: {e}"),
                            self.config.identity.clone(),
                        ));
                    }
                }
            }
        }
    }
}

/// `POST pods/<name>/binding`.
async fn bind(
    client: kube::Client,
    pod: Arc<Pod>,
    key: String,
    node: String,
    tx: mpsc::UnboundedSender<BindOutcome>,
) {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: Some(uid.clone()),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.clone()),
            ..Default::default()
        },
    };
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let result = api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await
        .map(|_| ());
    let _ = tx.send(BindOutcome {
        key,
        uid,
        node,
        pod,
        result,
    });
}

fn now_time() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Sets `PodScheduled=False` (and `nominatedNodeName`) through the status
/// subresource when they differ from what the pod has, and records a
/// `FailedScheduling` event.
async fn report_failure(
    client: kube::Client,
    pod: Arc<Pod>,
    reason: &'static str,
    message: String,
    nominated: Option<String>,
    identity: String,
) {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.as_ref();
    let current: Option<&PodCondition> = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
    let condition_same = current.is_some_and(|c| {
        c.status == "False"
            && c.reason.as_deref() == Some(reason)
            && c.message.as_deref() == Some(message.as_str())
    });
    let current_nominated = status.and_then(|s| s.nominated_node_name.clone());
    let nominated_same = nominated.is_none() || nominated == current_nominated;
    if !condition_same || !nominated_same {
        let mut patch = json!({"status": {"conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": reason,
            "message": message,
            "lastProbeTime": null,
            "lastTransitionTime": now_time(),
        }]}});
        if let Some(n) = &nominated {
            patch["status"]["nominatedNodeName"] = json!(n);
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            tracing::warn!(pod = %name, namespace = %ns, error = %e, "updating PodScheduled condition");
        }
    }
    record_event(
        client,
        pod,
        "Warning",
        "FailedScheduling",
        message,
        identity,
    )
    .await;
}

/// Deletes the victims (gracefully) after recording `Preempted` on each.
async fn evict(
    client: kube::Client,
    preemptor: Arc<Pod>,
    node: String,
    victims: Vec<Arc<Pod>>,
    identity: String,
) {
    let uid = preemptor.metadata.uid.clone().unwrap_or_default();
    for v in victims {
        let ns = v
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = v.metadata.name.clone().unwrap_or_default();
        let message = format!("Preempted by pod {uid} on node {node}");
        record_event(
            client.clone(),
            v.clone(),
            "Normal",
            "Preempted",
            message,
            identity.clone(),
        )
        .await;
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                tracing::warn!(pod = %name, namespace = %ns, error = %e, "deleting preemption victim")
            }
        }
    }
}

/// Records a core/v1 Event about `pod` from `default-scheduler`.
async fn record_event(
    client: kube::Client,
    pod: Arc<Pod>,
    type_: &str,
    reason: &str,
    message: String,
    identity: String,
) {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message),
        type_: Some(type_.into()),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some("default-scheduler".into()),
            host: None,
        }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        reporting_component: Some("default-scheduler".into()),
        reporting_instance: Some(identity),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(client, &ns);
    if let Err(e) = api.create(&PostParams::default(), &event).await {
        tracing::warn!(pod = %name, namespace = %ns, %reason, error = %e, "recording event");
    }
}
