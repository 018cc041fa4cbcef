//! The pod manager: watches the pods bound to this node
//! (`fieldSelector=spec.nodeName=<node>`), keeps one [`Worker`] per pod UID,
//! tells workers about new versions or that their pod vanished, and
//! removes orphans: sandboxes and pod directories of pods this node no
//! longer has (checked once the first list is complete, then every
//! minute). Also the index by namespace/name the agent server reads.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use skiff_runtime::cri_types as cri;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::spec;
use crate::worker::{Context, Input, Worker};

/// The pods this node runs, by namespace and name (for the agent server).
#[derive(Debug, Clone, Default)]
pub struct PodIndex {
    inner: Arc<RwLock<PodsByName>>,
}

/// Pods by (namespace, name).
type PodsByName = HashMap<(String, String), Arc<Pod>>;

impl PodIndex {
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        map.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    fn insert(&self, pod: Arc<Pod>) {
        let key = key_of(&pod);
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        map.insert(key, pod);
    }

    fn remove(&self, pod: &Pod) {
        let key = key_of(pod);
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&key)
            .is_some_and(|p| p.metadata.uid == pod.metadata.uid)
        {
            map.remove(&key);
        }
    }
}

fn key_of(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

struct Handle {
    tx: watch::Sender<Input>,
    task: JoinHandle<()>,
    pod: Arc<Pod>,
    /// Told its pod vanished; kept until it finished cleaning up, so that
    /// orphan removal leaves its sandbox alone meanwhile.
    vanished: bool,
}

/// Runs the manager forever.
pub async fn run(ctx: Arc<Context>, index: PodIndex) {
    let node = ctx.node.name.clone();
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let mut listed: HashSet<String> = HashSet::new();
    let mut synced = false;
    let mut housekeeping = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else {
                    tracing::error!("pod watch ended");
                    return;
                };
                match event {
                    Ok(Event::Init) => listed.clear(),
                    Ok(Event::InitApply(pod)) => {
                        if let Some(uid) = pod.metadata.uid.clone() {
                            listed.insert(uid);
                        }
                        dispatch(&ctx, &index, &mut workers, pod);
                    }
                    Ok(Event::Apply(pod)) => dispatch(&ctx, &index, &mut workers, pod),
                    Ok(Event::Delete(pod)) => {
                        if let Some(uid) = pod.metadata.uid.clone() {
                            vanish(&index, &mut workers, &uid);
                        }
                    }
                    Ok(Event::InitDone) => {
                        let gone: Vec<String> = workers
                            .iter()
                            .filter(|(uid, h)| !h.vanished && !listed.contains(*uid))
                            .map(|(uid, _)| uid.clone())
                            .collect();
                        for uid in gone {
                            vanish(&index, &mut workers, &uid);
                        }
                        if !synced {
                            synced = true;
                            remove_orphans(&ctx, &workers).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "watching pods"),
                }
            }
            _ = housekeeping.tick() => {
                workers.retain(|_, h| !h.task.is_finished());
                if synced {
                    remove_orphans(&ctx, &workers).await;
                }
            }
        }
    }
}

fn dispatch(ctx: &Arc<Context>, index: &PodIndex, workers: &mut HashMap<String, Handle>, pod: Pod) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&ctx.node.name);
    if !on_node {
        vanish(index, workers, &uid);
        return;
    }
    let pod = Arc::new(pod);
    index.insert(pod.clone());
    if let Some(h) = workers.get_mut(&uid) {
        if h.vanished && !h.task.is_finished() {
            // Still cleaning up after a vanish; the pod cannot come back
            // under the same UID meanwhile.
            return;
        }
        if !h.task.is_finished() {
            h.pod = pod.clone();
            let _ = h.tx.send(Input::Pod(pod));
            return;
        }
    }
    let (tx, rx) = watch::channel(Input::Pod(pod.clone()));
    let worker = Worker::new(ctx.clone(), pod.clone());
    let task = tokio::spawn(worker.run(rx));
    workers.insert(
        uid,
        Handle {
            tx,
            task,
            pod,
            vanished: false,
        },
    );
}

fn vanish(index: &PodIndex, workers: &mut HashMap<String, Handle>, uid: &str) {
    if let Some(h) = workers.get_mut(uid)
        && !h.vanished
    {
        index.remove(&h.pod);
        h.vanished = true;
        let _ = h.tx.send(Input::Vanished);
    }
}

/// Stops and removes sandboxes (and pod directories) of pods this node
/// does not run.
async fn remove_orphans(ctx: &Context, workers: &HashMap<String, Handle>) {
    let known: HashSet<&str> = workers.keys().map(String::as_str).collect();
    match ctx.runtime.list_pod_sandbox(None).await {
        Ok(list) => {
            for sb in list {
                let Some(uid) = sb.labels.get(spec::LABEL_POD_UID) else {
                    continue;
                };
                if known.contains(uid.as_str()) {
                    continue;
                }
                tracing::info!(sandbox = %sb.id, pod_uid = %uid, "removing orphaned sandbox");
                stop_containers_of(ctx, &sb.id).await;
                if let Err(e) = ctx.runtime.stop_pod_sandbox(&sb.id).await {
                    tracing::warn!(sandbox = %sb.id, error = %e, "stopping orphaned sandbox");
                }
                if let Err(e) = ctx.runtime.remove_pod_sandbox(&sb.id).await {
                    tracing::warn!(sandbox = %sb.id, error = %e, "removing orphaned sandbox");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing sandboxes for orphans"),
    }
    let pods_dir = ctx.config.data_dir.join("pods");
    if let Ok(entries) = std::fs::read_dir(&pods_dir) {
        for e in entries.flatten() {
            let uid = e.file_name().to_string_lossy().into_owned();
            if !known.contains(uid.as_str())
                && let Err(err) = ctx.volumes.teardown(&uid)
            {
                tracing::warn!(pod_uid = %uid, error = %err, "removing orphaned pod directory");
            }
        }
    }
}

async fn stop_containers_of(ctx: &Context, sandbox: &str) {
    let filter = cri::ContainerFilter {
        pod_sandbox_id: sandbox.to_string(),
        ..Default::default()
    };
    if let Ok(list) = ctx.runtime.list_containers(Some(filter)).await {
        for c in list {
            if c.state == cri::ContainerState::ContainerRunning as i32 {
                let _ = ctx.runtime.stop_container(&c.id, Duration::ZERO).await;
            }
        }
    }
}
