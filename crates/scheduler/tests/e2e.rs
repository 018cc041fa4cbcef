//! End to end: the real API server in-process over the embedded store, the
//! scheduler as an API client under leader election, fake nodes created
//! through the API.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use skiff_scheduler::SchedulerConfig;

struct Cluster {
    client: kube::Client,
    _dir: tempfile::TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    scheduler: tokio::task::JoinHandle<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.scheduler.abort();
    }
}

async fn start() -> anyhow::Result<Cluster> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("skiff_scheduler=debug")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir()?;
    let store = skiff_store::open(&skiff_store::StoreConfig {
        data_dir: dir.path().join("db"),
        ..Default::default()
    })
    .await?;
    let server = skiff_apiserver::Server::bind(
        skiff_apiserver::ServerConfig {
            data_dir: dir.path().to_path_buf(),
            https_listen_port: 0,
            ..Default::default()
        },
        store,
    )
    .await?;
    let client = skiff_client::client_from_kubeconfig(server.kubeconfig_path()).await?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    let config = SchedulerConfig {
        identity: "test-scheduler".into(),
        ..Default::default()
    };
    let scheduler = tokio::spawn(skiff_scheduler::run(client.clone(), config));
    Ok(Cluster {
        client,
        _dir: dir,
        _shutdown: tx,
        scheduler,
    })
}

/// A Ready node with `cpu` cores, 8Gi and 110 pods; `extra` is merged into
/// its metadata/spec.
async fn add_node(
    c: &Cluster,
    name: &str,
    cpu: &str,
    labels: Value,
    spec: Value,
) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(c.client.clone());
    let mut all_labels = json!({"kubernetes.io/hostname": name});
    if let (Some(m), Some(extra)) = (all_labels.as_object_mut(), labels.as_object()) {
        m.extend(extra.clone());
    }
    let status = json!({
        "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake node"}],
    });
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": all_labels},
        "spec": spec,
        "status": status,
    }))?;
    api.create(&PostParams::default(), &node)
        .await
        .context("creating node")?;
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .context("setting node status")?;
    Ok(())
}

async fn add_pod(c: &Cluster, name: &str, cpu: &str, spec_extra: Value) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let mut spec = json!({"containers": [{"name": "c", "image": "nginx", "resources": {"requests": {"cpu": cpu}}}]});
    if let (Some(m), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
        m.extend(extra.clone());
    }
    let pod: Pod = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}),
    )?;
    api.create(&PostParams::default(), &pod)
        .await
        .context("creating pod")?;
    Ok(())
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn node_of(c: &Cluster, pod: &str) -> anyhow::Result<String> {
    let api: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    eventually(&format!("{pod} to be bound"), || async {
        let p = api.get(pod).await?;
        Ok(p.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty()))
    })
    .await
}

async fn events_for(c: &Cluster, pod: &str, reason: &str) -> anyhow::Result<Vec<Event>> {
    let api: Api<Event> = Api::namespaced(c.client.clone(), "default");
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(pod) && e.reason.as_deref() == Some(reason)
        })
        .collect())
}

/// Waits until the scheduler deletes `pod` as a preemption victim, acting
/// as the kubelet: a graceful deletion is finished at once.
async fn victim_deleted(c: &Cluster, pod: &str) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    eventually(&format!("the victim {pod} to be deleted"), || async {
        match api.get_opt(pod).await? {
            None => Ok(Some(())),
            Some(p) if p.metadata.deletion_timestamp.is_some() => {
                let _ = api
                    .delete(
                        pod,
                        &DeleteParams {
                            grace_period_seconds: Some(0),
                            ..Default::default()
                        },
                    )
                    .await;
                Ok(None)
            }
            Some(_) => Ok(None),
        }
    })
    .await
}

#[tokio::test]
async fn pods_land_on_nodes_that_fit_and_spread_by_score() -> anyhow::Result<()> {
    let c = start().await?;
    for n in ["n1", "n2", "n3"] {
        add_node(&c, n, "2", json!({}), json!({})).await?;
    }
    add_node(&c, "tiny", "100m", json!({}), json!({})).await?;
    for i in 0..3 {
        add_pod(&c, &format!("web-{i}"), "1", json!({})).await?;
    }
    let mut placed = Vec::new();
    for i in 0..3 {
        placed.push(node_of(&c, &format!("web-{i}")).await?);
    }
    placed.sort();
    assert_eq!(
        placed,
        vec!["n1", "n2", "n3"],
        "least-allocated spreads equal pods"
    );

    // Three more fill every big node exactly; none fits on `tiny`.
    for i in 3..6 {
        add_pod(&c, &format!("web-{i}"), "1", json!({})).await?;
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..6 {
        *per_node
            .entry(node_of(&c, &format!("web-{i}")).await?)
            .or_default() += 1;
    }
    assert_eq!(
        per_node,
        BTreeMap::from([("n1".into(), 2), ("n2".into(), 2), ("n3".into(), 2)])
    );

    let ev = eventually("a Scheduled event", || async {
        let evs = events_for(&c, "web-0", "Scheduled").await?;
        Ok(evs.into_iter().next())
    })
    .await?;
    let node = node_of(&c, "web-0").await?;
    assert_eq!(
        ev.message.as_deref(),
        Some(format!("Successfully assigned default/web-0 to {node}").as_str())
    );
    assert_eq!(
        ev.source.and_then(|s| s.component).as_deref(),
        Some("default-scheduler")
    );
    assert_eq!(ev.type_.as_deref(), Some("Normal"));
    Ok(())
}

#[tokio::test]
async fn a_pod_that_fits_nowhere_gets_pod_scheduled_false_and_failed_scheduling()
-> anyhow::Result<()> {
    let c = start().await?;
    add_node(
        &c,
        "cp",
        "8",
        json!({}),
        json!({"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}),
    )
    .await?;
    add_node(&c, "w1", "1", json!({}), json!({})).await?;
    add_node(&c, "w2", "1", json!({}), json!({})).await?;
    add_pod(&c, "big", "2", json!({})).await?;
    let want = "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, \
                2 Insufficient cpu. preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, \
                2 No preemption victims found for incoming pod.";
    let api: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let cond = eventually("PodScheduled=False", || async {
        let p = api.get("big").await?;
        Ok(p.status
            .and_then(|s| s.conditions)
            .and_then(|cs| cs.into_iter().find(|c| c.type_ == "PodScheduled")))
    })
    .await?;
    assert_eq!(cond.status, "False");
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(cond.message.as_deref(), Some(want));
    let ev = eventually("a FailedScheduling event", || async {
        Ok(events_for(&c, "big", "FailedScheduling")
            .await?
            .into_iter()
            .next())
    })
    .await?;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.message.as_deref(), Some(want));

    // A node that fits makes the parked pod schedulable.
    add_node(&c, "w3", "4", json!({}), json!({})).await?;
    assert_eq!(node_of(&c, "big").await?, "w3");
    Ok(())
}

#[tokio::test]
async fn cordoned_and_tainted_nodes_and_node_selectors_are_respected() -> anyhow::Result<()> {
    let c = start().await?;
    add_node(
        &c,
        "cordoned",
        "64",
        json!({}),
        json!({"unschedulable": true}),
    )
    .await?;
    add_node(
        &c,
        "gpu",
        "64",
        json!({"dedicated": "gpu"}),
        json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}),
    )
    .await?;
    add_node(&c, "hdd", "4", json!({"disk": "hdd"}), json!({})).await?;
    add_node(&c, "ssd", "4", json!({"disk": "ssd"}), json!({})).await?;

    for i in 0..6 {
        add_pod(&c, &format!("plain-{i}"), "100m", json!({})).await?;
    }
    add_pod(
        &c,
        "trainer",
        "1",
        json!({"nodeSelector": {"dedicated": "gpu"},
               "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
    )
    .await?;
    add_pod(&c, "db", "100m", json!({"nodeSelector": {"disk": "ssd"}})).await?;
    add_pod(
        &c,
        "nowhere",
        "100m",
        json!({"nodeSelector": {"disk": "nvme"}}),
    )
    .await?;

    for i in 0..6 {
        let n = node_of(&c, &format!("plain-{i}")).await?;
        assert!(n == "hdd" || n == "ssd", "plain-{i} went to {n}");
    }
    assert_eq!(node_of(&c, "trainer").await?, "gpu");
    assert_eq!(node_of(&c, "db").await?, "ssd");
    let ev = eventually("FailedScheduling for nowhere", || async {
        Ok(events_for(&c, "nowhere", "FailedScheduling")
            .await?
            .into_iter()
            .next())
    })
    .await?;
    assert_eq!(
        ev.message.as_deref(),
        Some(
            "0/4 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were unschedulable, \
             2 node(s) didn't match Pod's node affinity/selector. preemption: 0/4 nodes are available: \
             4 Preemption is not helpful for scheduling."
        )
    );
    Ok(())
}

#[tokio::test]
async fn a_higher_priority_pod_preempts_a_lower_one() -> anyhow::Result<()> {
    let c = start().await?;
    add_node(&c, "only", "1", json!({}), json!({})).await?;
    add_pod(&c, "low", "1", json!({"priority": 0})).await?;
    assert_eq!(node_of(&c, "low").await?, "only");
    add_pod(&c, "high", "1", json!({"priority": 1000})).await?;
    victim_deleted(&c, "low").await?;
    assert_eq!(node_of(&c, "high").await?, "only");
    let preempted = events_for(&c, "low", "Preempted").await?;
    assert_eq!(preempted.len(), 1);
    Ok(())
}

#[tokio::test]
async fn preemption_spares_a_pod_protected_by_a_disruption_budget() -> anyhow::Result<()> {
    let c = start().await?;
    // No disruption controller runs here, so the budget never gets a
    // status: no disruptions are allowed.
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "guarded", "namespace": "default"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}},
    }))?;
    Api::<PodDisruptionBudget>::namespaced(c.client.clone(), "default")
        .create(&PostParams::default(), &pdb)
        .await
        .context("creating the budget")?;
    add_node(&c, "n1", "1", json!({}), json!({})).await?;
    add_node(&c, "n2", "1", json!({}), json!({})).await?;
    let guarded: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "guarded", "labels": {"app": "guarded"}},
        "spec": {"priority": 0, "containers": [{"name": "c", "image": "nginx",
            "resources": {"requests": {"cpu": "1"}}}]},
    }))?;
    let api: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    api.create(&PostParams::default(), &guarded).await?;
    let guarded_node = node_of(&c, "guarded").await?;
    add_pod(&c, "other", "1", json!({"priority": 100})).await?;
    let other_node = node_of(&c, "other").await?;
    assert_ne!(guarded_node, other_node);

    // Without the budget the lower-priority `guarded` would be the victim.
    add_pod(&c, "high", "1", json!({"priority": 1000})).await?;
    victim_deleted(&c, "other").await?;
    assert_eq!(node_of(&c, "high").await?, other_node);
    let g = api.get("guarded").await?;
    assert!(
        g.metadata.deletion_timestamp.is_none(),
        "guarded was preempted"
    );
    assert!(events_for(&c, "guarded", "Preempted").await?.is_empty());
    Ok(())
}
