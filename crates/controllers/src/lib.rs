//! The controller manager: controllers that keep the declared state true.
//!
//! Each controller is a Kubernetes API client built on `kube`'s runtime
//! (watcher → reflector → `Controller`): event handlers only enqueue keys,
//! `reconcile` is told *that* something changed, never *what*, and is
//! idempotent. The decision of each controller is a pure function of what
//! it observed (`plan` functions, unit-tested without a server); the
//! reconcile step only applies that plan through the API.
//!
//! Controllers: workloads ([`replicaset`] and [`replicationcontroller`]
//! over the shared [`replicas`] decision, [`deployment`], [`daemonset`],
//! [`statefulset`] — the last two record templates as ControllerRevisions
//! through [`revisions`] —, [`job`], [`cronjob`]), [`endpoints`],
//! [`disruption`] (PodDisruptionBudget status), [`namespace`], [`gc`]
//! (owner references), [`podgc`] (terminated and orphaned pods),
//! [`serviceaccount`], [`servicelb`] (`type: LoadBalancer` ingress from
//! the nodes' addresses), [`nodelifecycle`] and [`nodeipam`]; [`events`]
//! records core/v1 Events for them.
//!
//! Must not touch the store or the API server's internals: everything here
//! would work against a real Kubernetes cluster.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod events;
pub mod expectations;
pub mod gc;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podgc;
pub mod pods;
pub mod replicas;
pub mod replicaset;
pub mod replicationcontroller;
pub mod resourcequota;
pub mod revisions;
pub mod selector;
pub mod serviceaccount;
pub mod servicelb;
pub mod statefulset;

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::runtime::watcher;
use skiff_client::informer::Informer;

/// What a reconcile can fail with; the controller retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    #[error("invalid object {0}: {1}")]
    Invalid(String, String),
    #[error("serializing: {0}")]
    Json(#[from] serde_json::Error),
}

/// Settings shared by the controllers.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How often every object is reconciled even without events.
    pub resync: Duration,
    pub node_lifecycle: nodelifecycle::NodeLifecycleConfig,
    /// Where nodes' pod CIDRs come from.
    pub cluster_cidr: nodeipam::ClusterCidr,
    /// Pod garbage collection (`--terminated-pod-gc-threshold`).
    pub pod_gc: podgc::PodGcConfig,
    /// The cluster CA (PEM) published as `kube-root-ca.crt` in every
    /// namespace; `None` publishes nothing.
    pub root_ca_pem: Option<String>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            resync: Duration::from_secs(300),
            node_lifecycle: Default::default(),
            cluster_cidr: Default::default(),
            pod_gc: Default::default(),
            root_ca_pem: None,
        }
    }
}

/// The caches the controllers share: one watch per resource type that
/// several controllers read, instead of a list per reconcile.
#[derive(Clone)]
pub struct Informers {
    pub pods: Informer<Pod>,
    pub replica_sets: Informer<ReplicaSet>,
    pub nodes: Informer<Node>,
}

impl Informers {
    /// Starts the watches on the current runtime.
    pub fn start(client: &kube::Client) -> Self {
        Informers {
            pods: Informer::spawn(Api::all(client.clone()), watcher::Config::default()),
            replica_sets: Informer::spawn(Api::all(client.clone()), watcher::Config::default()),
            nodes: Informer::spawn(Api::all(client.clone()), watcher::Config::default()),
        }
    }

    /// Waits until every cache holds its first list.
    pub async fn wait_synced(&self) {
        tokio::join!(
            self.pods.wait_synced(),
            self.replica_sets.wait_synced(),
            self.nodes.wait_synced()
        );
    }
}

/// Runs every controller until they stop (they do not, unless the API goes
/// away for good). Meant to run under leader election
/// (`kube-system/kube-controller-manager`).
pub async fn run(client: kube::Client, config: ControllerConfig) {
    let informers = Informers::start(&client);
    informers.wait_synced().await;
    tokio::join!(
        replicaset::run(client.clone(), config.clone(), informers.clone()),
        replicationcontroller::run(client.clone(), config.clone(), informers.clone()),
        daemonset::run(client.clone(), config.clone(), informers.clone()),
        statefulset::run(client.clone(), config.clone(), informers.clone()),
        deployment::run(client.clone(), config.clone(), informers.clone()),
        namespace::run(client.clone(), config.clone()),
        endpoints::run(client.clone(), config.clone(), informers.clone()),
        gc::run(client.clone(), config.clone()),
        serviceaccount::run(client.clone(), config.clone()),
        nodelifecycle::run(client.clone(), config.clone(), informers.clone()),
        job::run(client.clone(), config.clone(), informers.clone()),
        cronjob::run(client.clone(), config.clone()),
        nodeipam::run(client.clone(), config.clone()),
        podgc::run(client.clone(), config.clone(), informers.clone()),
        disruption::run(client.clone(), config.clone(), informers.clone()),
        resourcequota::run(client.clone(), config.clone(), informers.clone()),
        servicelb::run(client.clone(), config.clone(), informers.clone()),
    );
}

/// Runs [`run`] under leader election.
pub async fn run_with_leader_election(
    client: kube::Client,
    config: ControllerConfig,
    identity: String,
) {
    let leader = skiff_client::leader::LeaderConfig::new(
        "kube-system",
        "kube-controller-manager",
        &identity,
    );
    skiff_client::leader::run_as_leader(client.clone(), leader, || {
        run(client.clone(), config.clone())
    })
    .await;
}
