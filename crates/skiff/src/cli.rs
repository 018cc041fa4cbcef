//! Subcommands and their flags (k3s's names where Kubernetes has none).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use skiff_store::{CompactionConfig, Compactor, StoreConfig};

#[derive(Debug, Parser)]
#[command(
    name = "skiff",
    version,
    about = "A Kubernetes-compatible container orchestrator"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane: the API server on the cluster store (the
    /// scheduler, controllers and a local node agent join in later issues).
    Server(ServerArgs),
    /// Run only the scheduler, against any cluster a kubeconfig points at.
    Scheduler(ComponentArgs),
    /// Run only the controller manager, against any cluster a kubeconfig points at.
    ControllerManager(ControllerManagerArgs),
    /// Run benchmarks and print their figures.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Args)]
pub struct DatastoreArgs {
    /// Empty for the embedded store under --data-dir; or a comma-separated
    /// list of http(s):// etcd endpoints.
    #[arg(long, env = "SKIFF_DATASTORE_ENDPOINT", default_value = "")]
    pub datastore_endpoint: String,
    /// CA file to verify etcd's serving certificates.
    #[arg(long)]
    pub datastore_cafile: Option<PathBuf>,
    /// Client certificate for etcd.
    #[arg(long)]
    pub datastore_certfile: Option<PathBuf>,
    /// Client key for etcd.
    #[arg(long)]
    pub datastore_keyfile: Option<PathBuf>,
    /// How often store history is compacted (seconds).
    #[arg(long, default_value_t = 300)]
    pub compaction_interval_seconds: u64,
    /// Never compact away the newest this-many revisions.
    #[arg(long, default_value_t = 1000)]
    pub compaction_keep_revisions: i64,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Where the server keeps its state.
    #[arg(
        long,
        short = 'd',
        env = "SKIFF_DATA_DIR",
        default_value = "/var/lib/skiff/server"
    )]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub datastore: DatastoreArgs,
    /// Address the API server listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: std::net::IpAddr,
    /// HTTPS port of the API server.
    #[arg(long, default_value_t = 6443)]
    pub https_listen_port: u16,
    /// Extra subject alternative names for the serving certificate.
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
    /// Shared secret that agents (and anyone holding it) use as a bearer token.
    #[arg(long, env = "SKIFF_TOKEN")]
    pub token: Option<String>,
    /// Also write the admin kubeconfig to this path.
    #[arg(long)]
    pub write_kubeconfig: Option<PathBuf>,
    /// Do not run the controller manager in this server.
    #[arg(long)]
    pub disable_controller_manager: bool,
    /// Do not run the scheduler in this server.
    #[arg(long)]
    pub disable_scheduler: bool,
    /// The range nodes' pod CIDRs come from.
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
}

#[derive(Debug, Args)]
pub struct ComponentArgs {
    /// Kubeconfig of the cluster to work on.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
}

#[derive(Debug, Args)]
pub struct ControllerManagerArgs {
    #[command(flatten)]
    pub component: ComponentArgs,
    /// The range nodes' pod CIDRs come from.
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// Seconds without a heartbeat before a node is Unknown.
    #[arg(long, default_value_t = 40)]
    pub node_monitor_grace_period: u64,
    /// Toleration of not-ready/unreachable for pods that declare none.
    #[arg(long, default_value_t = 300)]
    pub default_not_ready_toleration_seconds: i64,
}

impl ControllerManagerArgs {
    pub fn config(&self) -> Result<skiff_controllers::ControllerConfig> {
        let cluster_cidr = skiff_controllers::nodeipam::ClusterCidr::parse(
            &self.cluster_cidr,
            self.node_cidr_mask_size,
        )
        .with_context(|| {
            format!(
                "--cluster-cidr {} with --node-cidr-mask-size {} is not a valid IPv4 range",
                self.cluster_cidr, self.node_cidr_mask_size
            )
        })?;
        let defaults = skiff_controllers::ControllerConfig::default();
        Ok(skiff_controllers::ControllerConfig {
            cluster_cidr,
            node_lifecycle: skiff_controllers::nodelifecycle::NodeLifecycleConfig {
                grace_period: Duration::from_secs(self.node_monitor_grace_period),
                default_toleration_seconds: self.default_not_ready_toleration_seconds,
                ..defaults.node_lifecycle
            },
            ..defaults
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The cluster store: embedded vs a real etcd, side by side.
    Store(BenchStoreArgs),
}

#[derive(Debug, Args)]
pub struct BenchStoreArgs {
    /// Directory on the disk to measure (the scratch data goes below it).
    #[arg(long, default_value = "/var/tmp")]
    pub work_dir: PathBuf,
    /// Use this etcd endpoint instead of starting /usr/bin/etcd.
    #[arg(long)]
    pub etcd_endpoint: Option<String>,
    /// Only the embedded store.
    #[arg(long, conflicts_with = "etcd_only")]
    pub embedded_only: bool,
    /// Only etcd.
    #[arg(long)]
    pub etcd_only: bool,
    /// Sequential writes for the 1-writer figure.
    #[arg(long, default_value_t = 2000)]
    pub serial_writes: usize,
    /// Writes for the concurrent figure.
    #[arg(long, default_value_t = 20_000)]
    pub concurrent_writes: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
    /// Point reads.
    #[arg(long, default_value_t = 100_000)]
    pub reads: usize,
    /// Keys to list.
    #[arg(long, default_value_t = 10_000)]
    pub list_keys: usize,
    /// Writes timed for watch delivery.
    #[arg(long, default_value_t = 2000)]
    pub watch_writes: usize,
}

impl DatastoreArgs {
    pub fn store_config(&self, data_dir: &std::path::Path) -> StoreConfig {
        StoreConfig {
            endpoint: self.datastore_endpoint.clone(),
            data_dir: data_dir.join("db"),
            etcd_ca_file: self.datastore_cafile.clone(),
            etcd_cert_file: self.datastore_certfile.clone(),
            etcd_key_file: self.datastore_keyfile.clone(),
        }
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Server(args) => server(args).await,
        Command::Bench(BenchCommand::Store(args)) => bench_store(args).await,
        Command::Scheduler(args) => {
            let client = skiff_client::client_from_kubeconfig(&args.kubeconfig).await?;
            skiff_scheduler::run(
                client,
                skiff_scheduler::SchedulerConfig {
                    identity: identity("scheduler"),
                    ..Default::default()
                },
            )
            .await;
            Ok(())
        }
        Command::ControllerManager(args) => {
            let config = args.config()?;
            let client = skiff_client::client_from_kubeconfig(&args.component.kubeconfig).await?;
            skiff_controllers::run_with_leader_election(
                client,
                config,
                identity("controller-manager"),
            )
            .await;
            Ok(())
        }
    }
}

async fn server(args: ServerArgs) -> Result<()> {
    let config = args.datastore.store_config(&args.data_dir);
    let store = skiff_store::open(&config)
        .await
        .with_context(|| format!("opening the datastore {:?}", config.endpoint))?;
    let _compactor = Compactor::spawn(
        store.clone(),
        CompactionConfig {
            interval: Duration::from_secs(args.datastore.compaction_interval_seconds.max(1)),
            keep_revisions: args.datastore.compaction_keep_revisions.max(0),
        },
    );
    tracing::info!(
        backend = store.backend_name(),
        revision = store.current_revision().await?,
        "datastore ready"
    );
    let server = skiff_apiserver::Server::bind(
        skiff_apiserver::ServerConfig {
            data_dir: args.data_dir.clone(),
            bind_address: args.bind_address,
            https_listen_port: args.https_listen_port,
            tls_sans: args.tls_san,
            token: args.token,
            write_kubeconfig: args.write_kubeconfig,
        },
        store,
    )
    .await
    .context("starting the API server")?;
    tracing::info!(
        address = %server.local_addr()?,
        kubeconfig = %server.kubeconfig_path().display(),
        "API server listening"
    );
    let kubeconfig = server.kubeconfig_path().to_path_buf();
    let api = tokio::spawn(server.serve(shutdown_signal()));

    // The other control-plane components are API clients of this server.
    let mut components = Vec::new();
    if !args.disable_controller_manager {
        let client = skiff_client::client_from_kubeconfig(&kubeconfig)
            .await
            .context("connecting the controller manager to the API server")?;
        let cluster_cidr = skiff_controllers::nodeipam::ClusterCidr::parse(&args.cluster_cidr, 24)
            .with_context(|| {
                format!(
                    "--cluster-cidr {} is not a valid IPv4 range",
                    args.cluster_cidr
                )
            })?;
        let config = skiff_controllers::ControllerConfig {
            cluster_cidr,
            ..Default::default()
        };
        components.push(tokio::spawn(skiff_controllers::run_with_leader_election(
            client,
            config,
            identity("controller-manager"),
        )));
    }
    if !args.disable_scheduler {
        let client = skiff_client::client_from_kubeconfig(&kubeconfig)
            .await
            .context("connecting the scheduler to the API server")?;
        components.push(tokio::spawn(skiff_scheduler::run(
            client,
            skiff_scheduler::SchedulerConfig {
                identity: identity("scheduler"),
                ..Default::default()
            },
        )));
    }
    let result = api.await;
    for c in components {
        c.abort();
    }
    result.context("the API server task failed")?;
    tracing::info!("server stopped");
    Ok(())
}

/// A leader-election identity unique to this process.
fn identity(component: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "skiff".into());
    format!("{host}_{component}_{}", std::process::id())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn bench_store(args: BenchStoreArgs) -> Result<()> {
    let config = skiff_bench::store::StoreBenchConfig {
        serial_writes: args.serial_writes,
        concurrent_writes: args.concurrent_writes,
        writers: args.writers,
        reads: args.reads,
        list_keys: args.list_keys,
        watch_writes: args.watch_writes,
        work_dir: args.work_dir,
        etcd_endpoint: args.etcd_endpoint,
        embedded: !args.etcd_only,
        etcd: !args.embedded_only,
        ..Default::default()
    };
    skiff_bench::store::run(config).await?;
    Ok(())
}
