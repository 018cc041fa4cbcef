//! Simulated nodes against the real API server (embedded store, in this
//! process), the real scheduler and controllers: nodes register and stay
//! Ready, pods of a Deployment go Running with pod IPs, a Job completes,
//! deleted pods go away.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use skiff_sim::{SimConfig, Simulator};

struct Cluster {
    client: kube::Client,
    _dir: tempfile::TempDir,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _sim: Simulator,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

const NODES: usize = 20;

/// API server, controllers (node heartbeat grace 3 s), scheduler, and
/// 20 simulated nodes renewing their Leases every 500 ms.
async fn cluster() -> Result<Cluster> {
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
    let kubeconfig = server.kubeconfig_path().to_path_buf();
    let mut tasks = vec![tokio::spawn(server.serve(std::future::pending()))];
    let client = skiff_client::client_from_kubeconfig(&kubeconfig).await?;
    let mut config = skiff_controllers::ControllerConfig::default();
    config.node_lifecycle.grace_period = Duration::from_secs(3);
    config.node_lifecycle.monitor_period = Duration::from_millis(500);
    tasks.push(tokio::spawn(skiff_controllers::run(client.clone(), config)));
    tasks.push(tokio::spawn(skiff_scheduler::run(
        client.clone(),
        skiff_scheduler::SchedulerConfig {
            leader_election: false,
            ..Default::default()
        },
    )));
    let sim = skiff_sim::start(
        client.clone(),
        SimConfig {
            count: NODES,
            lease_renew: Duration::from_millis(500),
            running_delay: Duration::from_millis(50),
            job_duration: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await?;
    Ok(Cluster {
        client,
        _dir: dir,
        tasks,
        _sim: sim,
    })
}

/// Polls `check` until it returns `Some`, for up to 60 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{what}: not within 60 s {last}")
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_nodes_register_and_stay_ready() -> Result<()> {
    let c = cluster().await?;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let listed = nodes
        .list(&ListParams::default().labels("skiff.dev/simulated=true"))
        .await?;
    assert_eq!(listed.items.len(), NODES);
    let zones: BTreeSet<String> = listed
        .items
        .iter()
        .filter_map(|n| {
            n.metadata
                .labels
                .as_ref()?
                .get(skiff_sim::ZONE_LABEL)
                .cloned()
        })
        .collect();
    assert_eq!(zones.len(), 3, "round-robin over three zones");
    // Several heartbeat grace periods (3 s) later, every node is still
    // Ready and untainted: the Leases are being renewed.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let listed = nodes.list(&ListParams::default()).await?;
    for n in &listed.items {
        let name = n.metadata.name.clone().unwrap_or_default();
        assert!(ready(n), "{name} is not Ready");
        let taints = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        assert!(taints.is_empty(), "{name} was tainted: {taints:?}");
    }
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-node-lease");
    let lease = leases.get("sim-node-7").await?;
    let renewed = lease
        .spec
        .and_then(|s| s.renew_time)
        .context("lease without renewTime")?;
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(renewed.0);
    assert!(
        age < k8s_openapi::jiff::SignedDuration::from_secs(3),
        "lease renewed {age:?} ago"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_pods_run_jobs_complete_and_deleted_pods_go_away() -> Result<()> {
    let c = cluster().await?;
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 30,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
    }))?;
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let running = eventually("30 web pods Running", || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        let running: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| phase(p) == Some("Running"))
            .collect();
        Ok((running.len() == 30).then_some(running))
    })
    .await?;
    let mut ips = BTreeSet::new();
    for p in &running {
        let name = p.metadata.name.clone().unwrap_or_default();
        let status = p.status.clone().unwrap_or_default();
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert!(node.starts_with("sim-node-"), "{name} on {node}");
        let ip = status
            .pod_ip
            .with_context(|| format!("{name} has no pod IP"))?;
        assert!(ip.starts_with("10."), "{name}: pod IP {ip}");
        ips.insert(ip);
        assert!(
            status.host_ip.is_some() && status.start_time.is_some(),
            "{name}"
        );
        let conditions = status.conditions.unwrap_or_default();
        for t in ["Ready", "ContainersReady", "PodScheduled"] {
            assert!(
                conditions
                    .iter()
                    .any(|c| c.type_ == t && c.status == "True"),
                "{name}: {t} is not True"
            );
        }
        let containers = status.container_statuses.unwrap_or_default();
        assert!(
            containers.len() == 1
                && containers[0].ready
                && containers[0]
                    .state
                    .as_ref()
                    .and_then(|s| s.running.as_ref())
                    .is_some(),
            "{name}: {containers:?}"
        );
    }
    assert_eq!(ips.len(), 30, "every pod has its own IP");
    eventually("the deployment reports 30 ready replicas", || async {
        let d = deployments.get("web").await?;
        Ok((d.status.and_then(|s| s.ready_replicas) == Some(30)).then_some(()))
    })
    .await?;

    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "batch"},
        "spec": {
            "completions": 3,
            "parallelism": 3,
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "work", "image": "busybox"}],
            }},
        },
    }))?;
    jobs.create(&PostParams::default(), &job).await?;
    eventually("the job completes", || async {
        let j = jobs.get("batch").await?;
        let status = j.status.unwrap_or_default();
        let complete = status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True");
        Ok((complete && status.succeeded == Some(3)).then_some(()))
    })
    .await?;

    // A pod deleted with the default grace period goes away (the
    // simulated kubelet finishes the deletion), and is replaced.
    let victim = running[0].metadata.name.clone().unwrap_or_default();
    pods.delete(&victim, &DeleteParams::default()).await?;
    eventually("the deleted pod is gone", || async {
        Ok(pods.get_opt(&victim).await?.is_none().then_some(()))
    })
    .await?;
    // Deleting the Deployment deletes its pods, all the way.
    deployments
        .delete("web", &DeleteParams::foreground())
        .await?;
    eventually("every web pod is gone", || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        Ok(list.items.is_empty().then_some(()))
    })
    .await?;
    Ok(())
}
