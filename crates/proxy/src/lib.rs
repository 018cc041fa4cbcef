//! skiff-proxy: the service proxy, kube-proxy's nftables mode. It watches
//! Services and EndpointSlices (one watch each) and programs the node's
//! kernel so that a connection to a ClusterIP:port, to a NodePort on the
//! node's addresses, or to a LoadBalancer ingress address on the service's
//! port, reaches one of the service's ready endpoints: DNAT to
//! an endpoint picked at random (or by client-IP affinity), masquerade
//! where replies would otherwise miss the way back, and an immediate
//! refusal for services without ready endpoints. IPv4 only: the table is
//! `ip skiff-proxy`, and IPv6 services and slices are ignored.
//!
//! Layout: [`model`] reads the API objects into plain data, [`rules`]
//! renders the table and diffs it into `nft` scripts (pure, tested as
//! golden text), [`syncer`] keeps state and writes one atomic transaction
//! per sync through the narrow [`nft::Nft`] trait, [`metrics`] keeps sync
//! latencies, and [`run`] wires the watches to the syncer. [`bench`]
//! measures sync times on synthetic state.
//!
//! What it must not do: touch the store (it is a Kubernetes API client
//! only and would work against any Kubernetes API server), or change
//! anything in the kernel outside its own nftables table — no sysctls, no
//! routes, no other table. The node must provide what the table relies
//! on: IP forwarding, `bridge-nf-call-iptables` for pods behind a bridge,
//! hairpin mode on bridge ports, and a route for the service CIDR.

pub mod bench;
pub mod claims;
pub mod health;
pub mod metrics;
pub mod model;
pub mod nft;
pub mod rules;
pub mod syncer;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

pub use health::HealthServers;
pub use ipnet::Ipv4Net;
pub use metrics::{SyncMetrics, SyncSample};
pub use model::{ServiceInfo, ServiceName, SliceInfo};
pub use nft::{Nft, NftCli, NftError};
pub use rules::RuleConfig;
pub use syncer::{FullSync, Syncer};

/// How the proxy runs on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// This node's name (for `*TrafficPolicy: Local`).
    pub node_name: String,
    /// The pod range: traffic to a cluster IP from outside it is
    /// masqueraded.
    pub cluster_cidr: Ipv4Net,
    /// The service range: addresses in it that are no service are refused.
    pub service_cidr: Ipv4Net,
    /// Addresses that accept node ports; empty means every local address
    /// but loopback.
    pub nodeport_addresses: Vec<Ipv4Addr>,
    /// Program this network namespace instead of the caller's (tests run a
    /// whole node inside a namespace they created).
    pub host_netns: Option<PathBuf>,
    /// At most one sync per period: events arriving meanwhile are batched
    /// into the next sync. The first change after a quiet period is
    /// written at once.
    pub min_sync_period: Duration,
    /// Period of the full resync (also done after a failed sync).
    pub full_sync_period: Duration,
    /// Syncs slower than this (event to rules in place) are logged at warn
    /// level.
    pub slow_sync_threshold: Duration,
    /// Longest wait before retrying a failed sync (the wait doubles from
    /// one second up to this).
    pub max_retry_backoff: Duration,
}

impl ProxyConfig {
    /// Defaults: every local address for node ports, the caller's network
    /// namespace, syncs at most every 100 ms, a full resync every hour,
    /// slow above 1 s, retries backing off up to 30 s.
    pub fn new(node_name: impl Into<String>, cluster_cidr: Ipv4Net, service_cidr: Ipv4Net) -> Self {
        Self {
            node_name: node_name.into(),
            cluster_cidr,
            service_cidr,
            nodeport_addresses: Vec::new(),
            host_netns: None,
            min_sync_period: Duration::from_millis(100),
            full_sync_period: Duration::from_secs(3600),
            slow_sync_threshold: Duration::from_secs(1),
            max_retry_backoff: Duration::from_secs(30),
        }
    }

    /// The part of the config that shapes rules.
    pub fn rule_config(&self) -> RuleConfig {
        RuleConfig {
            node_name: self.node_name.clone(),
            cluster_cidr: self.cluster_cidr.trunc(),
            service_cidr: self.service_cidr.trunc(),
            nodeport_addresses: self.nodeport_addresses.clone(),
        }
    }
}

/// Why the proxy stopped (it otherwise runs forever: failed syncs and
/// broken watches are logged and retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid proxy config: {0}")]
    Config(String),
    #[error("the {resource} watch ended")]
    WatchEnded { resource: &'static str },
}

/// Runs the proxy until an unrecoverable error. See [`Proxy`] to read its
/// sync metrics while it runs.
pub async fn run(client: kube::Client, config: ProxyConfig) -> Result<(), Error> {
    Proxy::new(client, config)?.run().await
}

/// The proxy, with a handle on its sync metrics.
pub struct Proxy {
    client: kube::Client,
    config: ProxyConfig,
    metrics: Arc<SyncMetrics>,
}

impl Proxy {
    pub fn new(client: kube::Client, config: ProxyConfig) -> Result<Self, Error> {
        if config.node_name.is_empty() {
            return Err(Error::Config("node name is empty".into()));
        }
        if config.min_sync_period > config.full_sync_period {
            return Err(Error::Config(format!(
                "min sync period {:?} exceeds full sync period {:?}",
                config.min_sync_period, config.full_sync_period
            )));
        }
        Ok(Self {
            client,
            config,
            metrics: Arc::new(SyncMetrics::default()),
        })
    }

    /// Sync latencies, shared with the running proxy.
    pub fn metrics(&self) -> Arc<SyncMetrics> {
        self.metrics.clone()
    }

    /// Watches and syncs until a watch ends.
    pub async fn run(self) -> Result<(), Error> {
        let Proxy {
            client,
            config,
            metrics,
        } = self;
        let nft = NftCli::new(config.host_netns.clone());
        let mut health = HealthServers::new(config.host_netns.clone());
        let mut syncer = Syncer::new(
            config.rule_config(),
            nft,
            metrics,
            config.slow_sync_threshold,
        );
        let mut services = pin!(
            watcher(
                Api::<Service>::all(client.clone()),
                watcher::Config::default()
            )
            .default_backoff()
        );
        let mut slices = pin!(
            watcher(
                Api::<EndpointSlice>::all(client),
                watcher::Config::default()
            )
            .default_backoff()
        );
        let mut service_buffer: Option<Vec<(ServiceName, ServiceInfo)>> = None;
        let mut slice_buffer: Option<Vec<SliceEntry>> = None;
        let (mut services_listed, mut slices_listed) = (false, false);
        let mut next_sync = tokio::time::Instant::now();
        let mut next_full = tokio::time::Instant::now() + config.full_sync_period;
        let mut retry = Duration::ZERO;
        tracing::info!(node = %config.node_name, netns = ?config.host_netns, "service proxy starting");

        loop {
            let can_sync = services_listed && slices_listed && syncer.pending();
            tokio::select! {
                biased;
                event = services.next() => {
                    let event = event.ok_or(Error::WatchEnded { resource: "services" })?;
                    let now = Instant::now();
                    match event {
                        Err(e) => tracing::warn!(error = %e, "services watch"),
                        Ok(watcher::Event::Init) => service_buffer = Some(Vec::new()),
                        Ok(watcher::Event::InitApply(s)) => {
                            if let (Some(buf), Some(info)) = (service_buffer.as_mut(), ServiceInfo::from_service(&s)) {
                                buf.push((service_name(&s), info));
                            }
                        }
                        Ok(watcher::Event::InitDone) => {
                            syncer.replace_services(service_buffer.take().unwrap_or_default(), now);
                            services_listed = true;
                        }
                        Ok(watcher::Event::Apply(s)) => {
                            syncer.set_service(service_name(&s), ServiceInfo::from_service(&s), now);
                        }
                        Ok(watcher::Event::Delete(s)) => syncer.set_service(service_name(&s), None, now),
                    }
                }
                event = slices.next() => {
                    let event = event.ok_or(Error::WatchEnded { resource: "endpointslices" })?;
                    let now = Instant::now();
                    match event {
                        Err(e) => tracing::warn!(error = %e, "endpointslices watch"),
                        Ok(watcher::Event::Init) => slice_buffer = Some(Vec::new()),
                        Ok(watcher::Event::InitApply(s)) => {
                            if let Some(buf) = slice_buffer.as_mut() {
                                buf.push(slice_entry(&s));
                            }
                        }
                        Ok(watcher::Event::InitDone) => {
                            syncer.replace_slices(slice_buffer.take().unwrap_or_default(), now);
                            slices_listed = true;
                        }
                        Ok(watcher::Event::Apply(s)) => {
                            let ((ns, name), info) = slice_entry(&s);
                            syncer.set_slice(&ns, &name, info, now);
                        }
                        Ok(watcher::Event::Delete(s)) => {
                            let ((ns, name), _) = slice_entry(&s);
                            syncer.set_slice(&ns, &name, None, now);
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_sync), if can_sync => {
                    let started = tokio::time::Instant::now();
                    let result = syncer.sync().await;
                    // Health checks follow what the proxy knows, whether or
                    // not the rules were written.
                    health.update(syncer.health_checks()).await;
                    match result {
                        Ok(_) => {
                            retry = Duration::ZERO;
                            next_sync = started + config.min_sync_period;
                        }
                        Err(_) => {
                            // Logged by the syncer; the next sync is a full one.
                            retry = (retry * 2).clamp(Duration::from_secs(1), config.max_retry_backoff);
                            next_sync = tokio::time::Instant::now() + retry;
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_full) => {
                    syncer.request_full(FullSync::Resync);
                    next_full = tokio::time::Instant::now() + config.full_sync_period;
                }
            }
        }
    }
}

type SliceEntry = ((String, String), Option<(ServiceName, SliceInfo)>);

fn service_name(s: &Service) -> ServiceName {
    ServiceName::new(s.namespace().unwrap_or_default(), s.name_any())
}

fn slice_entry(s: &EndpointSlice) -> SliceEntry {
    (
        (s.namespace().unwrap_or_default(), s.name_any()),
        SliceInfo::from_slice(s),
    )
}
