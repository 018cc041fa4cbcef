//! Simulated nodes, like kwok's or kubemark's hollow nodes: `count` Node
//! objects that look Ready to the rest of the cluster, each with its Lease
//! in `kube-node-lease` renewed every `lease_renew`, and a stand-in kubelet
//! that reports the pods bound to them Running (Job pods Succeeded after
//! `job_duration`) and finishes their deletion. No container ever runs.
//!
//! It is what scale tests put under the control plane: thousands of nodes
//! cost one process, one pod watch (all pods with a `spec.nodeName`,
//! filtered by name prefix here) and one node watch, and every API call
//! goes through a bounded number of in-flight requests. Lease renewals have
//! their own small budget and are spread evenly over the renew period, so a
//! burst of pod work never starves the heartbeats.
//!
//! A Kubernetes API client only: no store, no API server internals, no
//! kernel work. It would run against a real cluster.

mod lease;
pub mod node;
pub mod pods;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::runtime::reflector;
use tokio::sync::Semaphore;

pub use node::Capacity;

/// What can stop the simulator before it starts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid simulator configuration: {0}")]
    Config(String),
}

/// The label every simulated node carries (value `"true"`).
pub const SIMULATED_LABEL: &str = "skiff.dev/simulated";

/// The zone label, set round-robin over `zones` zones.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// How many nodes to simulate and how they behave.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Nodes to register: `<name_prefix>0` … `<name_prefix><count-1>`.
    pub count: usize,
    pub name_prefix: String,
    /// Capacity, also reported as allocatable.
    pub capacity: Capacity,
    /// Extra labels on every node.
    pub labels: BTreeMap<String, String>,
    /// Taints every node registers with.
    pub taints: Vec<Taint>,
    /// Nodes are spread round-robin over this many zones (`zone-0` …);
    /// 0 sets no zone label.
    pub zones: usize,
    /// Node `i` derives the pod range `pod_cidr_base + i·256` /24 when the
    /// controller manager assigned it no `spec.podCIDR`.
    pub pod_cidr_base: Ipv4Addr,
    /// Node `i`'s InternalIP is `node_ip_base + i`.
    pub node_ip_base: Ipv4Addr,
    /// From seeing a pod bound to a node until reporting it Running.
    pub running_delay: Duration,
    /// From seeing a Job's pod Running until reporting it Succeeded.
    pub job_duration: Duration,
    /// How often each node's Lease is renewed.
    pub lease_renew: Duration,
    /// The Leases' `leaseDurationSeconds`.
    pub lease_duration: Duration,
    /// API calls in flight at once for registration and pods.
    pub max_in_flight: usize,
    /// API calls in flight at once for Lease renewals (on top).
    pub lease_in_flight: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            count: 1,
            name_prefix: "sim-node-".to_string(),
            capacity: Capacity::default(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            zones: 3,
            pod_cidr_base: Ipv4Addr::new(10, 128, 0, 0),
            node_ip_base: Ipv4Addr::new(172, 16, 0, 1),
            running_delay: Duration::ZERO,
            job_duration: Duration::from_secs(5),
            lease_renew: Duration::from_secs(10),
            lease_duration: Duration::from_secs(40),
            max_in_flight: 96,
            lease_in_flight: 64,
        }
    }
}

impl SimConfig {
    fn validate(&self) -> Result<(), Error> {
        if self.count == 0 {
            return Err(Error::Config("count must be at least 1".into()));
        }
        if self.name_prefix.is_empty() {
            return Err(Error::Config("name_prefix must not be empty".into()));
        }
        if self.max_in_flight == 0 || self.lease_in_flight == 0 {
            return Err(Error::Config("in-flight limits must be at least 1".into()));
        }
        if self.lease_renew.is_zero() {
            return Err(Error::Config("lease_renew must be positive".into()));
        }
        let last = (self.count - 1) as u64;
        if u64::from(u32::from(self.pod_cidr_base)) + (last << 8) + 255 > u64::from(u32::MAX) {
            return Err(Error::Config(format!(
                "{} nodes' /24 pod ranges do not fit above {}",
                self.count, self.pod_cidr_base
            )));
        }
        if u64::from(u32::from(self.node_ip_base)) + last > u64::from(u32::MAX) {
            return Err(Error::Config(format!(
                "{} node IPs do not fit above {}",
                self.count, self.node_ip_base
            )));
        }
        Ok(())
    }
}

/// Counters of what the simulator did, for benchmarks and logs.
#[derive(Debug, Default)]
pub struct Stats {
    nodes_registered: AtomicU64,
    leases_renewed: AtomicU64,
    pods_started: AtomicU64,
    pods_completed: AtomicU64,
    pods_deleted: AtomicU64,
    api_errors: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub nodes_registered: u64,
    pub leases_renewed: u64,
    pub pods_started: u64,
    pub pods_completed: u64,
    pub pods_deleted: u64,
    /// Failed API calls (each retry counts).
    pub api_errors: u64,
}

impl Stats {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            nodes_registered: self.nodes_registered.load(Ordering::Relaxed),
            leases_renewed: self.leases_renewed.load(Ordering::Relaxed),
            pods_started: self.pods_started.load(Ordering::Relaxed),
            pods_completed: self.pods_completed.load(Ordering::Relaxed),
            pods_deleted: self.pods_deleted.load(Ordering::Relaxed),
            api_errors: self.api_errors.load(Ordering::Relaxed),
        }
    }
}

/// What every task of one simulator shares.
pub(crate) struct Shared {
    pub client: kube::Client,
    pub config: SimConfig,
    /// Budget of in-flight calls for registration and pods.
    pub calls: Semaphore,
    /// Budget of in-flight Lease calls.
    pub lease_calls: Semaphore,
    pub stats: Arc<Stats>,
    pub nodes: Vec<node::SimNode>,
    /// The simulated Node objects as watched (for `spec.podCIDR`).
    pub watched: reflector::Store<Node>,
}

/// Running simulated nodes; dropping it stops them.
pub struct Simulator {
    stats: Arc<Stats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Simulator {
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Runs until the tasks end (they do not, short of a panic).
    pub async fn wait(mut self) {
        for t in std::mem::take(&mut self.tasks) {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "a simulator task ended");
            }
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Registers the nodes and their Leases, then returns while the heartbeats
/// and the stand-in kubelet run in the background.
pub async fn start(client: kube::Client, config: SimConfig) -> Result<Simulator, Error> {
    config.validate()?;
    let stats = Arc::new(Stats::default());
    let (watched, writer) = reflector::store();
    let nodes = (0..config.count)
        .map(|i| node::SimNode::new(&config, i))
        .collect();
    let shared = Arc::new(Shared {
        client,
        calls: Semaphore::new(config.max_in_flight),
        lease_calls: Semaphore::new(config.lease_in_flight),
        stats: stats.clone(),
        nodes,
        watched,
        config,
    });
    let mut tasks = vec![tokio::spawn(node::watch_nodes(shared.clone(), writer))];
    let started = std::time::Instant::now();
    node::register_all(&shared).await;
    lease::create_all(&shared).await;
    tracing::info!(
        nodes = shared.config.count,
        prefix = %shared.config.name_prefix,
        seconds = started.elapsed().as_secs_f64(),
        "simulated nodes registered"
    );
    tasks.push(tokio::spawn(lease::renew_loop(shared.clone())));
    tasks.push(tokio::spawn(pods::run(shared)));
    Ok(Simulator { stats, tasks })
}

/// [`start`], then runs forever.
pub async fn run(client: kube::Client, config: SimConfig) -> Result<(), Error> {
    start(client, config).await?.wait().await;
    Ok(())
}

/// How a call through [`with_retries`] ended.
#[derive(Debug)]
pub(crate) enum Outcome<T> {
    Done(T),
    /// 404: the object is gone.
    NotFound,
    /// Refused for good: a conflict, a failed precondition, invalid.
    Refused,
}

/// Runs `call` up to 8 times while it fails with what may pass (transport
/// errors, 429, 5xx), counting every failure; other 4xx answers end it.
pub(crate) async fn with_retries<T, F, Fut>(
    stats: &Stats,
    what: &str,
    mut call: F,
) -> Result<Outcome<T>, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Ok(v) => return Ok(Outcome::Done(v)),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Outcome::NotFound),
            Err(kube::Error::Api(s)) if (400..500).contains(&s.code) && s.code != 429 => {
                if s.code != 409 {
                    Stats::add(&stats.api_errors);
                    tracing::warn!(what, code = s.code, message = %s.message, "call refused");
                }
                return Ok(Outcome::Refused);
            }
            Err(e) => {
                Stats::add(&stats.api_errors);
                if attempt >= 8 {
                    return Err(e);
                }
                tracing::debug!(what, error = %e, attempt, "call failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
