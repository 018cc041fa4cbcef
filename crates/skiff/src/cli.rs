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
    /// Run the control plane (API server on the cluster store, scheduler,
    /// controller manager) and a local node agent.
    Server(ServerArgs),
    /// Run a node agent that joins a server.
    Agent(AgentArgs),
    /// Run only the scheduler, against any cluster a kubeconfig points at.
    Scheduler(ComponentArgs),
    /// Run only the controller manager, against any cluster a kubeconfig points at.
    ControllerManager(ControllerManagerArgs),
    /// Run only the service proxy for one node (what every agent runs
    /// unless --disable-kube-proxy), against any cluster a kubeconfig
    /// points at.
    Proxy(ProxyArgs),
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
    /// The range ClusterIPs come from (the first address is the
    /// `kubernetes` service's, the tenth the cluster DNS's).
    #[arg(long, default_value = "10.43.0.0/16")]
    pub service_cidr: String,
    /// The range NodePorts come from, `LOW-HIGH`.
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: String,
    /// Terminated pods kept before the pod garbage collector deletes the
    /// oldest (0 keeps all).
    #[arg(long, default_value_t = 12_500)]
    pub terminated_pod_gc_threshold: usize,
    /// Do not run a node agent in this server.
    #[arg(long)]
    pub disable_agent: bool,
    /// Do not serve cluster DNS (the `kube-dns` service) from this server.
    #[arg(long)]
    pub disable_dns: bool,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Flags of the node agent, shared by `server` and `agent`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The Node's name (default: the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The node's InternalIP (default: the address of the default route).
    #[arg(long)]
    pub node_ip: Option<std::net::IpAddr>,
    /// Extra node labels, key=value (repeatable).
    #[arg(long = "node-label")]
    pub node_label: Vec<String>,
    /// Taints to register with, key[=value]:Effect (repeatable).
    #[arg(long = "node-taint")]
    pub node_taint: Vec<String>,
    /// Cluster DNS server written into pods' resolv.conf.
    #[arg(long, default_value = "10.43.0.10")]
    pub cluster_dns: Vec<std::net::IpAddr>,
    /// Port of the agent's HTTPS server (logs, exec), the kubelet's 10250.
    #[arg(long, default_value_t = 10250)]
    pub agent_port: u16,
    /// A CRI endpoint (e.g. unix:///run/containerd/containerd.sock) to run
    /// pods with instead of the built-in runtime.
    #[arg(long)]
    pub container_runtime_endpoint: Option<String>,
    /// Registry configuration in k3s' `registries.yaml` format (mirrors,
    /// `configs` with credentials and TLS; an `http://` endpoint makes a
    /// registry plain HTTP). A missing file means none.
    #[arg(long, default_value = "/etc/skiff/registries.yaml")]
    pub private_registry: PathBuf,
    /// How pods reach pods on other nodes: vxlan, host-gw or none.
    #[arg(long, default_value = "vxlan")]
    pub flannel_backend: skiff_node::routes::Overlay,
    /// Do not run the service proxy on this node.
    #[arg(long)]
    pub disable_kube_proxy: bool,
    /// Do not enforce NetworkPolicies on this node's pods.
    #[arg(long)]
    pub disable_network_policy: bool,
    /// A container's log file is rotated when it reaches this size (a
    /// quantity, e.g. 10Mi), as the kubelet's containerLogMaxSize.
    #[arg(long, default_value = "10Mi")]
    pub container_log_max_size: String,
    /// Log files kept per container, the live one included (at least 2);
    /// older rotated files are gzipped.
    #[arg(long, default_value_t = 5)]
    pub container_log_max_files: usize,
    /// Percent of the image filesystem in use at which unused images are
    /// garbage-collected (100 turns image GC off).
    #[arg(long, default_value_t = 85)]
    pub image_gc_high_threshold: u8,
    /// Percent of the image filesystem in use that image GC frees down to.
    #[arg(long, default_value_t = 80)]
    pub image_gc_low_threshold: u8,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The server to join, https://HOST:6443.
    #[arg(long, env = "SKIFF_URL", required_unless_present = "kubeconfig")]
    pub server: Option<String>,
    /// The cluster's shared token.
    #[arg(long, env = "SKIFF_TOKEN")]
    pub token: Option<String>,
    /// CA certificate to verify the server with (default: not verified,
    /// with a warning).
    #[arg(long)]
    pub server_ca: Option<PathBuf>,
    /// A kubeconfig to use instead of --server and --token.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Where the agent keeps its state.
    #[arg(
        long,
        short = 'd',
        env = "SKIFF_DATA_DIR",
        default_value = "/var/lib/skiff"
    )]
    pub data_dir: PathBuf,
    /// The cluster's pod range (traffic inside it is not masqueraded).
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// The cluster's service range (what the service proxy routes).
    #[arg(long, default_value = "10.43.0.0/16")]
    pub service_cidr: String,
    /// Simulate N nodes instead of running this machine's agent: Node
    /// objects that stay Ready, their Leases, and pods reported Running
    /// without containers (kwok/kubemark-style hollow nodes).
    #[arg(long, value_name = "N")]
    pub simulate: Option<usize>,
    /// Name prefix of the simulated nodes (`<prefix>0`, `<prefix>1`, …).
    #[arg(long, default_value = "sim-node-", value_name = "P")]
    pub simulate_prefix: String,
    #[command(flatten)]
    pub node: NodeArgs,
}

impl NodeArgs {
    /// Log rotation and image GC policies from the flags, validated as the
    /// kubelet validates its configuration.
    fn housekeeping(&self) -> Result<(skiff_node::LogRotationPolicy, skiff_node::ImageGcPolicy)> {
        let size = skiff_client::quantity::Quantity::parse(&self.container_log_max_size)
            .with_context(|| {
                format!(
                    "--container-log-max-size {:?} is not a quantity",
                    self.container_log_max_size
                )
            })?
            .value();
        anyhow::ensure!(
            size > 0,
            "--container-log-max-size {:?} must be positive",
            self.container_log_max_size
        );
        let logs = skiff_node::LogRotationPolicy {
            max_size: size as u64,
            max_files: self.container_log_max_files,
            ..Default::default()
        };
        logs.validate()
            .map_err(|e| anyhow::anyhow!("--container-log-max-files: {e}"))?;
        let gc = skiff_node::ImageGcPolicy {
            high_threshold_percent: self.image_gc_high_threshold,
            low_threshold_percent: self.image_gc_low_threshold,
            ..Default::default()
        };
        gc.validate().map_err(|e| {
            anyhow::anyhow!("--image-gc-high-threshold/--image-gc-low-threshold: {e}")
        })?;
        Ok((logs, gc))
    }

    fn options(
        &self,
        data_dir: &std::path::Path,
        cluster_cidr: &str,
        service_cidr: &str,
        token: Option<String>,
    ) -> Result<crate::agent::AgentOptions> {
        let (container_logs, image_gc) = self.housekeeping()?;
        Ok(crate::agent::AgentOptions {
            container_logs,
            image_gc,
            data_dir: data_dir.to_path_buf(),
            node_name: self.node_name.clone(),
            node_ip: self.node_ip,
            node_labels: self.node_label.clone(),
            node_taints: self.node_taint.clone(),
            cluster_cidr: cluster_cidr.to_string(),
            cluster_dns: self.cluster_dns.clone(),
            agent_port: self.agent_port,
            token,
            container_runtime_endpoint: self.container_runtime_endpoint.clone(),
            overlay: self.flannel_backend,
            service_cidr: service_cidr.to_string(),
            kube_proxy: !self.disable_kube_proxy,
            network_policy: !self.disable_network_policy,
            private_registry: self.private_registry.clone(),
        })
    }
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

#[derive(Debug, Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub component: ComponentArgs,
    /// The node this proxy runs on (endpoints on it are local); the host
    /// name, lowercased, as an agent registers without --node-name.
    #[arg(long = "hostname-override", visible_alias = "node-name")]
    pub hostname_override: Option<String>,
    /// The pod range: traffic to a cluster IP from outside it is
    /// masqueraded.
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// The service range: addresses in it that are no service are refused.
    #[arg(long, default_value = "10.43.0.0/16")]
    pub service_cidr: String,
    /// Addresses that accept node ports (comma-separated); every local
    /// address but loopback when empty.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<std::net::Ipv4Addr>,
}

impl ProxyArgs {
    pub fn config(&self) -> Result<skiff_proxy::ProxyConfig> {
        let node = self
            .hostname_override
            .clone()
            .unwrap_or_else(crate::agent::default_node_name);
        let mut config = skiff_proxy::ProxyConfig::new(
            node,
            self.cluster_cidr.parse().with_context(|| {
                format!("--cluster-cidr {} is not an IPv4 range", self.cluster_cidr)
            })?,
            self.service_cidr.parse().with_context(|| {
                format!("--service-cidr {} is not an IPv4 range", self.service_cidr)
            })?,
        );
        config.nodeport_addresses = self.nodeport_addresses.clone();
        Ok(config)
    }
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
    /// The Kubernetes API over HTTPS: creates, gets, lists, watch fan-out
    /// and the server's memory.
    Api(BenchApiArgs),
    /// The whole control plane under a density load on simulated nodes:
    /// pods/s to bound and Running, startup latency, memory, CPU, store size.
    Scale(BenchScaleArgs),
    /// Pod startup latency (creation to Running, image present) on one real
    /// node with the built-in runtime, and the agent's memory. Runs its
    /// server and agent in a network namespace it creates (needs root).
    Startup(BenchStartupArgs),
    /// The service proxy's sync times on synthetic services (full sync,
    /// resync, endpoint change to rules in place), in a network namespace
    /// it creates (needs root and `nft`).
    Proxy(BenchProxyArgs),
    /// TCP connections per second from one pod to another through a
    /// ClusterIP and straight to the pod IP, on one real node. Runs its
    /// server and agent in a network namespace it creates (needs root).
    Connections(BenchConnectionsArgs),
}

#[derive(Debug, Args)]
pub struct BenchConnectionsArgs {
    /// Seconds each client pod connects.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Rounds; each measures both targets once.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The image archive to run (default: the project's test image, built
    /// from `crates/testbin` with cargo).
    #[arg(long)]
    pub image_archive: Option<PathBuf>,
    /// Scratch data goes below this directory.
    #[arg(long, default_value = "/var/tmp")]
    pub work_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct BenchProxyArgs {
    /// Services per round, comma-separated; each round starts on an empty
    /// table.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000])]
    pub services: Vec<usize>,
    /// Ready endpoints per service.
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
}

#[derive(Debug, Args)]
pub struct BenchStartupArgs {
    /// Pods per round, comma-separated; each round starts on an empty node.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 10, 100])]
    pub pods: Vec<usize>,
    /// The image archive to run (default: the project's test image, built
    /// from `crates/testbin` with cargo).
    #[arg(long)]
    pub image_archive: Option<PathBuf>,
    /// Give up on a round after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_seconds: u64,
    /// Scratch data goes below this directory.
    #[arg(long, default_value = "/var/tmp")]
    pub work_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct BenchScaleArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 1_000)]
    pub nodes: usize,
    /// Pods in total (in Deployments of --pods-per-deployment).
    #[arg(long, default_value_t = 30_000)]
    pub pods: usize,
    /// Replicas of each Deployment.
    #[arg(long, default_value_t = 100)]
    pub pods_per_deployment: usize,
    /// Deployments created per second.
    #[arg(long, default_value_t = 10.0)]
    pub deployments_per_second: f64,
    /// Give up waiting for all pods to run, or to go, after this many seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout_seconds: u64,
    /// Run the server on an etcd the benchmark starts (/usr/bin/etcd, data
    /// under a temp dir) instead of the embedded store.
    #[arg(long, conflicts_with = "datastore_endpoint")]
    pub etcd: bool,
    /// Run the server on this running etcd instead of the embedded store.
    #[arg(long)]
    pub datastore_endpoint: Option<String>,
    /// Directory on the disk to measure (the scratch data goes below it).
    #[arg(long, default_value = "/var/tmp")]
    pub work_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct BenchApiArgs {
    /// Directory on the disk to measure (the scratch data goes below it).
    #[arg(long, default_value = "/var/tmp")]
    pub work_dir: PathBuf,
    /// Run the server on an etcd the benchmark starts (/usr/bin/etcd, data
    /// under a temp dir) instead of the embedded store.
    #[arg(long, conflicts_with = "datastore_endpoint")]
    pub etcd: bool,
    /// Run the server on this running etcd instead of the embedded store.
    #[arg(long)]
    pub datastore_endpoint: Option<String>,
    /// Serve from this process instead of a `skiff server` child process
    /// (memory figures then include the benchmark's clients).
    #[arg(long)]
    pub in_process: bool,
    /// Concurrent clients for creates and gets.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// ConfigMaps created.
    #[arg(long, default_value_t = 5_000)]
    pub creates: usize,
    /// Gets of created ConfigMaps.
    #[arg(long, default_value_t = 20_000)]
    pub gets: usize,
    /// Objects in the listed namespace.
    #[arg(long, default_value_t = 10_000)]
    pub list_objects: usize,
    /// Watchers for the fan-out figure.
    #[arg(long, default_value_t = 1_000)]
    pub watchers: usize,
    /// Writes timed for the fan-out figure.
    #[arg(long, default_value_t = 50)]
    pub watch_writes: usize,
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

/// Process-wide set-up that must happen while `main` is still
/// single-threaded, before the async runtime starts: transparent huge pages
/// off for the long-running commands (inherited by every fork), then, where
/// this process runs the built-in container runtime, the zygote that forks
/// its container monitors (see `skiff_runtime::Zygote`).
pub fn prepare_process(cli: &Cli) {
    let node = match &cli.command {
        Command::Server(args) => (!args.disable_agent).then_some(&args.node),
        // Simulated nodes run no containers.
        Command::Agent(args) => args.simulate.is_none().then_some(&args.node),
        _ => return,
    };
    no_transparent_huge_pages();
    let Some(node) = node else { return };
    if node.container_runtime_endpoint.is_some() {
        return;
    }
    match skiff_runtime::Zygote::fork() {
        Ok(zygote) => {
            tracing::debug!(pid = zygote.pid(), "monitor zygote started");
            let _ = crate::agent::MONITOR_ZYGOTE.set(std::sync::Arc::new(zygote));
        }
        Err(e) => {
            tracing::warn!(error = %e, "no monitor zygote: container monitors are forked from the agent")
        }
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Server(args) => server(args).await,
        Command::Agent(args) => agent(args).await,
        Command::Bench(BenchCommand::Store(args)) => bench_store(args).await,
        Command::Bench(BenchCommand::Api(args)) => bench_api(args).await,
        Command::Bench(BenchCommand::Scale(args)) => bench_scale(args).await,
        Command::Bench(BenchCommand::Startup(args)) => bench_startup(args).await,
        Command::Bench(BenchCommand::Proxy(args)) => bench_proxy(args).await,
        Command::Bench(BenchCommand::Connections(args)) => bench_connections(args).await,
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
        Command::Proxy(args) => {
            let config = args.config()?;
            let client = skiff_client::client_from_kubeconfig(&args.component.kubeconfig).await?;
            tracing::info!(node = %config.node_name, "service proxy starting");
            tokio::select! {
                result = skiff_proxy::run(client, config) => result.context("the service proxy stopped"),
                () = shutdown_signal() => Ok(()),
            }
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
    if !args.disable_agent {
        // Bad agent flags fail the start, not the agent later on.
        args.node.housekeeping()?;
    }
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
    let token = match args.token.clone() {
        Some(t) => t,
        None => server_token(&args.data_dir)?,
    };
    let server = skiff_apiserver::Server::bind(
        skiff_apiserver::ServerConfig {
            data_dir: args.data_dir.clone(),
            bind_address: args.bind_address,
            https_listen_port: args.https_listen_port,
            tls_sans: args.tls_san,
            token: Some(token.clone()),
            service_ranges: service_ranges(&args.service_cidr, &args.service_node_port_range)?,
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
    // The other components are API clients of this server, reaching it
    // through the in-process transport (no TCP, TLS or HTTP framing).
    let client_as = |name: String, groups: &[&str]| {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        groups.push("system:authenticated".into());
        kube::Client::new(
            server.loopback(skiff_apiserver::User { name, groups }),
            "default",
        )
    };
    let mut components = Vec::new();
    if !args.disable_controller_manager {
        let client = client_as("system:kube-controller-manager".into(), &[]);
        let cluster_cidr = skiff_controllers::nodeipam::ClusterCidr::parse(&args.cluster_cidr, 24)
            .with_context(|| {
                format!(
                    "--cluster-cidr {} is not a valid IPv4 range",
                    args.cluster_cidr
                )
            })?;
        let root_ca_pem = std::fs::read_to_string(args.data_dir.join("tls").join("server-ca.crt"))
            .map_err(|e| tracing::warn!(error = %e, "reading the cluster CA to publish"))
            .ok();
        let mut config = skiff_controllers::ControllerConfig {
            cluster_cidr,
            root_ca_pem,
            ..Default::default()
        };
        config.pod_gc.terminated_pod_threshold = args.terminated_pod_gc_threshold;
        components.push(tokio::spawn(skiff_controllers::run_with_leader_election(
            client,
            config,
            identity("controller-manager"),
        )));
    }
    if !args.disable_scheduler {
        let client = client_as("system:kube-scheduler".into(), &[]);
        components.push(tokio::spawn(skiff_scheduler::run(
            client,
            skiff_scheduler::SchedulerConfig {
                identity: identity("scheduler"),
                ..Default::default()
            },
        )));
    }
    if !args.disable_dns {
        let client = client_as("system:serviceaccount:kube-system:kube-dns".into(), &[]);
        let node_ip = args
            .node
            .node_ip
            .unwrap_or_else(crate::agent::default_node_ip);
        let cluster_dns = args
            .node
            .cluster_dns
            .first()
            .copied()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 43, 0, 10)));
        components.push(tokio::spawn(async move {
            if let Err(e) = crate::dns::run(client, cluster_dns, node_ip).await {
                tracing::error!(error = format!("{e:#}"), "the cluster DNS stopped");
            }
        }));
    }
    if !args.disable_agent {
        let node = args
            .node
            .node_name
            .clone()
            .unwrap_or_else(crate::agent::default_node_name);
        let client = client_as(format!("system:node:{node}"), &["system:nodes"]);
        let opts = args.node.options(
            &args.data_dir,
            &args.cluster_cidr,
            &args.service_cidr,
            Some(token.clone()),
        )?;
        components.push(tokio::spawn(async move {
            if let Err(e) = crate::agent::run(client, opts).await {
                tracing::error!(error = format!("{e:#}"), "the node agent stopped");
            }
        }));
    }
    let api = tokio::spawn(server.serve(shutdown_signal()));
    let result = api.await;
    for c in components {
        c.abort();
    }
    result.context("the API server task failed")?;
    tracing::info!("server stopped");
    Ok(())
}

fn service_ranges(cidr: &str, ports: &str) -> Result<skiff_apiserver::allocator::ServiceRanges> {
    let cidr = skiff_apiserver::allocator::ServiceRanges::parse_cidr(cidr)
        .with_context(|| format!("--service-cidr {cidr} is not an IPv4 range of /8 to /30"))?;
    let node_ports = ports
        .split_once('-')
        .and_then(|(lo, hi)| {
            Some((
                lo.trim().parse::<u16>().ok()?,
                hi.trim().parse::<u16>().ok()?,
            ))
        })
        .filter(|(lo, hi)| lo <= hi)
        .with_context(|| format!("--service-node-port-range {ports} is not LOW-HIGH"))?;
    Ok(skiff_apiserver::allocator::ServiceRanges { cidr, node_ports })
}

/// The cluster's shared token: `<data-dir>/token`, made on first start
/// (k3s keeps its own in the same way).
fn server_token(data_dir: &std::path::Path) -> Result<String> {
    let path = data_dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    crate::agent::write_private(&path, &token)?;
    Ok(token)
}

/// `skiff agent`: a node agent joining a server.
async fn agent(args: AgentArgs) -> Result<()> {
    let kubeconfig = match (&args.kubeconfig, &args.server) {
        (Some(k), _) => k.clone(),
        (None, Some(server)) => {
            let token = args
                .token
                .clone()
                .context("--token is needed with --server")?;
            let dir = args.data_dir.join("agent");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let tls = match &args.server_ca {
                Some(ca) => format!("certificate-authority: {}", ca.display()),
                None => {
                    tracing::warn!(
                        "--server-ca not given: the server's certificate is not verified"
                    );
                    "insecure-skip-tls-verify: true".to_string()
                }
            };
            let path = dir.join("agent.kubeconfig");
            let contents = format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n    {tls}\nusers:\n- name: agent\n  user:\n    token: {token}\ncontexts:\n- name: skiff\n  context: {{cluster: skiff, user: agent}}\ncurrent-context: skiff\n"
            );
            std::fs::write(&path, contents)
                .with_context(|| format!("writing {}", path.display()))?;
            path
        }
        (None, None) => anyhow::bail!("either --server and --token, or --kubeconfig"),
    };
    let client = skiff_client::client_from_kubeconfig(&kubeconfig)
        .await
        .context("connecting to the server")?;
    if let Some(count) = args.simulate {
        return simulate(client, count, args.simulate_prefix, &args.node).await;
    }
    let opts = args.node.options(
        &args.data_dir,
        &args.cluster_cidr,
        &args.service_cidr,
        args.token.clone(),
    )?;
    tokio::select! {
        r = crate::agent::run(client, opts) => r,
        _ = shutdown_signal() => {
            tracing::info!("agent stopped");
            Ok(())
        }
    }
}

/// `skiff agent --simulate N`: simulated nodes instead of this machine's.
async fn simulate(
    client: kube::Client,
    count: usize,
    name_prefix: String,
    node: &NodeArgs,
) -> Result<()> {
    if !node.node_label.is_empty() || !node.node_taint.is_empty() || node.node_name.is_some() {
        tracing::warn!(
            "--node-name, --node-label and --node-taint do not apply to simulated nodes"
        );
    }
    let config = skiff_sim::SimConfig {
        count,
        name_prefix,
        ..Default::default()
    };
    tracing::info!(count, prefix = %config.name_prefix, "simulating nodes");
    tokio::select! {
        r = skiff_sim::run(client, config) => r.context("simulating nodes"),
        _ = shutdown_signal() => {
            tracing::info!("simulated nodes stopped");
            Ok(())
        }
    }
}

/// A leader-election identity unique to this process.
fn identity(component: &str) -> String {
    format!(
        "{}_{component}_{}",
        crate::agent::default_node_name(),
        std::process::id()
    )
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

async fn bench_api(args: BenchApiArgs) -> Result<()> {
    let server = if args.in_process {
        skiff_bench::api::ServerMode::InProcess
    } else {
        skiff_bench::api::ServerMode::Binary(
            std::env::current_exe().context("finding the skiff binary")?,
        )
    };
    let datastore = match (args.etcd, args.datastore_endpoint) {
        (_, Some(endpoint)) => skiff_bench::api::Datastore::Endpoint(endpoint),
        (true, None) => skiff_bench::api::Datastore::StartEtcd,
        (false, None) => skiff_bench::api::Datastore::Embedded,
    };
    let config = skiff_bench::api::ApiBenchConfig {
        clients: args.clients,
        creates: args.creates,
        gets: args.gets,
        list_objects: args.list_objects,
        watchers: args.watchers,
        watch_writes: args.watch_writes,
        work_dir: args.work_dir,
        server,
        datastore,
        ..Default::default()
    };
    skiff_bench::api::run(config).await?;
    Ok(())
}

/// Turns transparent huge pages off for this process and its forks.
/// mimalloc madvises its arenas for them, so every page it initialises or
/// takes back after a purge faulted in (and had the kernel zero) a whole
/// 2 MiB page:
/// - in a node agent, every container monitor is a fork of the agent that
///   then paid 2 MiB for a few KiB (an agent with 100 pods held 585 MiB and
///   each monitor 13.7 MiB PSS; docs/benchmarks.md, pod startup);
/// - in the control plane, zeroing huge pages was 9 % of the server's CPU
///   at 5,000 nodes, and without them the server used 8 % less CPU and
///   bound pods 5 % faster (docs/benchmarks.md, scale).
fn no_transparent_huge_pages() {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::warn!(error = %e, "could not turn off transparent huge pages");
    }
}

async fn bench_proxy(args: BenchProxyArgs) -> Result<()> {
    for services in args.services {
        let report = skiff_proxy::bench::run(services, args.endpoints)
            .await
            .with_context(|| {
                format!(
                    "proxy benchmark, {services} services x {} endpoints",
                    args.endpoints
                )
            })?;
        println!("{report}");
    }
    Ok(())
}

/// For the benchmarks that run a real node: the skiff binary and the image
/// archive, or `None` when this process is the outer one, which has just
/// run the benchmark again inside a network namespace of its own (with the
/// image already built).
async fn bench_node_inputs(image_archive: Option<PathBuf>) -> Result<Option<(PathBuf, PathBuf)>> {
    use skiff_bench::startup::{NETNS_ENV, run_isolated};
    let binary = std::env::current_exe().context("finding the skiff binary")?;
    let image_archive = match image_archive {
        Some(path) => path,
        None => tokio::task::spawn_blocking(skiff_bench::startup::test_image_archive).await??,
    };
    if std::env::var_os(NETNS_ENV).is_none() {
        let mut again: Vec<String> = std::env::args().skip(1).collect();
        again.push("--image-archive".into());
        again.push(image_archive.to_string_lossy().into_owned());
        tokio::task::spawn_blocking(move || run_isolated(&binary, &again)).await??;
        return Ok(None);
    }
    Ok(Some((binary, image_archive)))
}

async fn bench_connections(args: BenchConnectionsArgs) -> Result<()> {
    use skiff_bench::connections::{ConnectionsBenchConfig, print_table, run};
    let Some((binary, image_archive)) = bench_node_inputs(args.image_archive).await? else {
        return Ok(());
    };
    let figures = run(ConnectionsBenchConfig::new(
        binary,
        image_archive,
        args.work_dir,
        args.seconds,
        args.rounds,
    ))
    .await?;
    print_table(&figures);
    Ok(())
}

async fn bench_startup(args: BenchStartupArgs) -> Result<()> {
    use skiff_bench::startup::{StartupBenchConfig, print_table, run};
    let Some((binary, image_archive)) = bench_node_inputs(args.image_archive).await? else {
        return Ok(());
    };
    let figures = run(StartupBenchConfig {
        rounds: args.pods,
        binary,
        image_archive,
        work_dir: args.work_dir,
        timeout: Duration::from_secs(args.timeout_seconds),
    })
    .await?;
    print_table(&figures);
    Ok(())
}

async fn bench_scale(args: BenchScaleArgs) -> Result<()> {
    use skiff_bench::scale::{Datastore, ScaleBenchConfig, ServerMode};
    let datastore = match (args.etcd, args.datastore_endpoint) {
        (_, Some(endpoint)) => Datastore::Endpoint(endpoint),
        (true, None) => Datastore::StartEtcd,
        (false, None) => Datastore::Embedded,
    };
    let config = ScaleBenchConfig {
        nodes: args.nodes,
        pods: args.pods,
        pods_per_deployment: args.pods_per_deployment,
        deployments_per_second: args.deployments_per_second,
        phase_timeout: Duration::from_secs(args.timeout_seconds),
        work_dir: args.work_dir,
        server: ServerMode::Binary(std::env::current_exe().context("finding the skiff binary")?),
        datastore,
        ..Default::default()
    };
    let figures = skiff_bench::scale::run(config).await?;
    if let Some(e) = figures.failure {
        anyhow::bail!("the scale benchmark failed: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_flags(extra: &[&str]) -> NodeArgs {
        let mut argv = vec!["skiff", "agent", "--server", "https://127.0.0.1:6443"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Agent(a)) => a.node,
            other => panic!("not parsed as an agent command: {other:?}"),
        }
    }

    #[test]
    fn housekeeping_flags_become_the_agents_policies_with_the_kubelets_defaults() {
        let (logs, gc) = agent_flags(&[]).housekeeping().expect("defaults are valid");
        assert_eq!((logs.max_size, logs.max_files), (10 << 20, 5));
        assert_eq!(
            (gc.high_threshold_percent, gc.low_threshold_percent),
            (85, 80)
        );
        let (logs, gc) = agent_flags(&[
            "--container-log-max-size",
            "1M",
            "--container-log-max-files",
            "3",
            "--image-gc-high-threshold",
            "90",
            "--image-gc-low-threshold",
            "70",
        ])
        .housekeeping()
        .expect("valid flags");
        assert_eq!((logs.max_size, logs.max_files), (1_000_000, 3));
        assert_eq!(
            (gc.high_threshold_percent, gc.low_threshold_percent),
            (90, 70)
        );
        for bad in [
            &["--container-log-max-size", "ten"][..],
            &["--container-log-max-size", "0"],
            &["--container-log-max-files", "1"],
            &["--image-gc-low-threshold", "85"],
            &["--image-gc-high-threshold", "101"],
        ] {
            assert!(agent_flags(bad).housekeeping().is_err(), "{bad:?}");
        }
    }
}
