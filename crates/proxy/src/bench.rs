//! `skiff bench proxy`: sync times on synthetic state, inside a network
//! namespace created for the run (and deleted after it), so the machine's
//! own tables are never touched. Needs root and the `nft` and `ip` binaries.
//!
//! For `services` ClusterIP services with `endpoints_per_service` endpoints
//! each (one slice per service) it measures the first full sync (the table
//! replaced), a full resync over the populated table, and the time from one
//! endpoint change (an endpoint turning not ready, or ready again) to
//! rules in place, over [`CHANGES`] changes.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::{SyncMetrics, quantile};
use crate::model::{
    EndpointInfo, Protocol, ServiceInfo, ServiceName, ServicePortInfo, SliceInfo, SlicePort,
};
use crate::nft::{NftCli, NftError};
use crate::rules::RuleConfig;
use crate::syncer::{FullSync, Syncer};

/// Endpoint changes measured.
pub const CHANGES: usize = 200;

/// What can stop a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("benchmark network namespace {name}: {message}")]
    Netns { name: String, message: String },
    #[error("{services} services x {endpoints} endpoints do not fit the synthetic address ranges")]
    TooLarge { services: usize, endpoints: usize },
    #[error("syncing")]
    Nft(#[from] NftError),
}

/// Figures of one run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub services: usize,
    pub endpoints_per_service: usize,
    /// First sync: the table replaced with everything (render + nft).
    pub full_sync: Duration,
    /// Commands in that transaction.
    pub full_sync_commands: usize,
    /// A periodic resync over the populated table (list + flush + rewrite).
    pub resync: Duration,
    /// Endpoint change → rules in place.
    pub change_p50: Duration,
    pub change_p99: Duration,
    pub change_max: Duration,
    /// Commands written per change (median).
    pub change_commands: usize,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "proxy: {} services x {} endpoints",
            self.services, self.endpoints_per_service
        )?;
        writeln!(
            f,
            "  full sync (replace table): {:>10.1?}  ({} commands)",
            self.full_sync, self.full_sync_commands
        )?;
        writeln!(f, "  full resync (flush+write): {:>10.1?}", self.resync)?;
        write!(
            f,
            "  endpoint change -> rules:  p50 {:.1?}  p99 {:.1?}  max {:.1?}  ({} changes, {} commands each)",
            self.change_p50, self.change_p99, self.change_max, CHANGES, self.change_commands
        )
    }
}

/// A network namespace for the run, deleted on drop.
struct BenchNetns {
    name: String,
    path: PathBuf,
}

impl BenchNetns {
    fn new() -> Result<Self, BenchError> {
        let name = format!("skiff-proxy-bench-{:08x}", fastrand::u32(..));
        ip(&["netns", "add", &name]).map_err(|message| BenchError::Netns {
            name: name.clone(),
            message,
        })?;
        Ok(Self {
            path: PathBuf::from("/var/run/netns").join(&name),
            name,
        })
    }
}

impl Drop for BenchNetns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            tracing::warn!(netns = %self.name, error = %e, "deleting benchmark netns");
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

const SERVICE_BASE: u32 = u32::from_be_bytes([10, 96, 0, 0]);
const POD_BASE: u32 = u32::from_be_bytes([10, 128, 0, 0]);

fn synthetic_service(i: usize) -> (ServiceName, ServiceInfo) {
    (
        ServiceName::new("bench", format!("svc-{i}")),
        ServiceInfo {
            cluster_ip: Some(Ipv4Addr::from(SERVICE_BASE + 1 + i as u32)),
            ports: vec![ServicePortInfo {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
            }],
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            load_balancer_ips: Vec::new(),
            external_ips: Vec::new(),
            health_check_node_port: None,
            created: None,
        },
    )
}

fn synthetic_slice(i: usize, endpoints: usize, not_ready: Option<usize>) -> SliceInfo {
    SliceInfo {
        ports: vec![SlicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        }],
        endpoints: (0..endpoints)
            .map(|j| EndpointInfo {
                ip: Ipv4Addr::from(POD_BASE + 1 + (i * endpoints + j) as u32),
                ready: not_ready != Some(j),
                serving: not_ready != Some(j),
                terminating: false,
                node_name: Some(format!("node-{}", j % 8)),
            })
            .collect(),
    }
}

/// Runs the benchmark (see the module doc).
pub async fn run(services: usize, endpoints_per_service: usize) -> Result<BenchReport, BenchError> {
    // 10.96.0.0/12 for services, 10.128.0.0/9 for pods.
    if services >= (1 << 20) - 2 || services.saturating_mul(endpoints_per_service) >= (1 << 23) - 2
    {
        return Err(BenchError::TooLarge {
            services,
            endpoints: endpoints_per_service,
        });
    }
    let netns = BenchNetns::new()?;
    let config = RuleConfig {
        node_name: "node-0".into(),
        cluster_cidr: ipnet::Ipv4Net::new(Ipv4Addr::from(POD_BASE), 9).unwrap_or_default(),
        service_cidr: ipnet::Ipv4Net::new(Ipv4Addr::from(SERVICE_BASE), 12).unwrap_or_default(),
        nodeport_addresses: Vec::new(),
    };
    let mut syncer = Syncer::new(
        config,
        NftCli::new(Some(netns.path.clone())),
        Arc::new(SyncMetrics::default()),
        Duration::from_secs(3600),
    );
    let now = Instant::now();
    for i in 0..services {
        let (name, info) = synthetic_service(i);
        syncer.set_service(name.clone(), Some(info), now);
        syncer.set_slice(
            "bench",
            &format!("svc-{i}-abcde"),
            Some((name, synthetic_slice(i, endpoints_per_service, None))),
            now,
        );
    }

    let t = Instant::now();
    let first = syncer.sync().await?;
    let full_sync = t.elapsed();
    let full_sync_commands = first.map(|s| s.commands).unwrap_or_default();

    syncer.request_full(FullSync::Resync);
    let t = Instant::now();
    syncer.sync().await?;
    let resync = t.elapsed();

    let mut latencies = Vec::with_capacity(CHANGES);
    let mut commands = Vec::with_capacity(CHANGES);
    let mut not_ready: Vec<Option<usize>> = vec![None; services];
    for _ in 0..CHANGES {
        if services == 0 || endpoints_per_service == 0 {
            break;
        }
        let i = fastrand::usize(..services);
        // Alternate: one endpoint goes not ready, then it is ready again.
        not_ready[i] = match not_ready[i] {
            Some(_) => None,
            None => Some(fastrand::usize(..endpoints_per_service)),
        };
        let at = Instant::now();
        syncer.set_slice(
            "bench",
            &format!("svc-{i}-abcde"),
            Some((
                ServiceName::new("bench", format!("svc-{i}")),
                synthetic_slice(i, endpoints_per_service, not_ready[i]),
            )),
            at,
        );
        let sample = syncer.sync().await?;
        latencies.push(at.elapsed());
        commands.push(sample.map(|s| s.commands).unwrap_or_default());
    }
    commands.sort_unstable();
    Ok(BenchReport {
        services,
        endpoints_per_service,
        full_sync,
        full_sync_commands,
        resync,
        change_p50: quantile(latencies.clone(), 0.5).unwrap_or_default(),
        change_p99: quantile(latencies.clone(), 0.99).unwrap_or_default(),
        change_max: quantile(latencies, 1.0).unwrap_or_default(),
        change_commands: commands
            .get(commands.len() / 2)
            .copied()
            .unwrap_or_default(),
    })
}
