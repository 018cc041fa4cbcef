//! The node agent (the kubelet's job): registers this machine as a Node,
//! keeps its Lease and status fresh, runs the pods bound to it through a
//! CRI-shaped [`ContainerRuntime`], reports their status, and serves their
//! logs, exec and attach sessions and port forwarding to the API server.
//!
//! What it must not do: touch the store, or run containers any other way
//! than through [`ContainerRuntime`]. It is a Kubernetes API client only and
//! would work against any Kubernetes API server.
//!
//! Layout: pure logic ([`status`], [`resources`], [`env`], [`spec`],
//! [`backoff`], [`logs`], probe thresholds in [`probe`], the rotation plan
//! in [`logrotate`] and the collection plan in [`imagegc`]) is unit-tested
//! in tables; [`node`] (registration, lease, node status), [`pods`] (the
//! watch and one [`worker`] per pod), [`volumes`], [`server`] and the
//! housekeeping loops (log rotation, image garbage collection) do the IO;
//! [`spdy`] is SPDY/3.1 framing (pure, unit-tested) under [`portforward`]'s
//! `portforward.k8s.io` sessions.

pub mod backoff;
pub mod cgroups;
pub mod config;
pub mod env;
pub mod events;
pub mod imagegc;
pub mod logrotate;
pub mod logs;
pub mod machine;
pub mod mountinfo;
pub mod node;
pub mod podnet;
pub mod pods;
pub mod portforward;
pub mod portforward_ws;
pub mod probe;
pub mod remotecommand_spdy;
pub mod resources;
pub mod routes;
pub mod server;
pub mod spdy;
pub mod spec;
pub mod status;
pub mod tls;
pub mod volumes;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use config::{
    Backoff, ImageGcPolicy, LogRotationPolicy, NodeConfig, Reserved, ServerConfig, Timing,
};
pub use skiff_runtime::ContainerRuntime;

/// What starting the agent can fail with (once started, it runs until
/// dropped: failures of the API or the runtime are logged and retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("creating data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("agent server TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("binding the agent server to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("agent task {task} ended unexpectedly")]
    TaskEnded { task: &'static str },
}

/// A started agent: its node name and server address, and its tasks
/// (aborted when dropped).
pub struct Agent {
    node_name: String,
    server_addr: Option<SocketAddr>,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        for (_, t) in &self.tasks {
            t.abort();
        }
    }
}

impl Agent {
    /// Binds the server, then starts registration, heartbeats, the pod
    /// manager and the server as tasks.
    pub async fn start(
        client: kube::Client,
        config: NodeConfig,
        runtime: Arc<dyn ContainerRuntime>,
    ) -> Result<Agent, Error> {
        config.container_logs.validate().map_err(Error::Config)?;
        config.image_gc.validate().map_err(Error::Config)?;
        for dir in [
            config.data_dir.clone(),
            config.data_dir.join("pods"),
            config.data_dir.join("log").join("pods"),
        ] {
            std::fs::create_dir_all(&dir).map_err(|source| Error::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let machine = machine::machine_info(&config.data_dir);
        let node_name = config
            .node_name
            .clone()
            .unwrap_or_else(|| machine.hostname.clone());
        let mut tasks = Vec::new();
        let index = pods::PodIndex::default();
        let log_root = config.data_dir.join("log").join("pods");
        let mut server_addr = None;
        if let Some(s) = &config.server {
            let tls = tls::server_config(&s.cert_pem, &s.key_pem, s.client_ca_pem.as_deref())?;
            let listener = server::bind(s.listen).await.map_err(|source| Error::Bind {
                addr: s.listen,
                source,
            })?;
            let addr = listener.local_addr().map_err(|source| Error::Bind {
                addr: s.listen,
                source,
            })?;
            server_addr = Some(addr);
            let app = server::app(server::ServerState {
                runtime: runtime.clone(),
                pods: index.clone(),
                log_root: log_root.clone(),
                token: s.token.clone(),
            });
            tasks.push(("server", tokio::spawn(server::serve(listener, tls, app))));
        }
        let identity = node::NodeIdentity {
            name: node_name.clone(),
            machine,
            internal_ip: config.internal_ip.map(|ip| ip.to_string()),
            port: server_addr.map(|a| a.port()).unwrap_or(0),
        };
        {
            let client = client.clone();
            let id = identity.clone();
            let config = config.clone();
            let runtime = runtime.clone();
            tasks.push((
                "node",
                tokio::spawn(async move {
                    node::register(&client, &id, &config).await;
                    let lease =
                        tokio::spawn(node::lease_loop(client.clone(), id.clone(), config.clone()));
                    let cidr = tokio::spawn(node::pod_cidr_loop(
                        client.clone(),
                        id.clone(),
                        runtime.clone(),
                    ));
                    node::status_loop(client, id, config, runtime).await;
                    lease.abort();
                    cidr.abort();
                }),
            ));
        }
        let recorder = events::Recorder::start(client.clone(), node_name.clone());
        tasks.push((
            "container-logs",
            tokio::spawn(
                logrotate::ContainerLogManager::new(runtime.clone(), config.container_logs).run(),
            ),
        ));
        if config.image_gc.enabled() {
            let gc = imagegc::ImageGcManager::new(runtime.clone(), config.image_gc)
                .with_events(recorder.clone(), node_name.clone());
            tasks.push(("image-gc", tokio::spawn(gc.run())));
        } else {
            tracing::info!("image garbage collection off (high threshold 100)");
        }
        {
            let volumes = volumes::VolumeManager::new(client.clone(), config.data_dir.clone());
            let runtime = runtime.clone();
            let client = client.clone();
            tasks.push((
                "pods",
                tokio::spawn(async move {
                    // Container IDs carry the runtime's name as their scheme.
                    let scheme = loop {
                        match node::runtime_version(runtime.as_ref()).await {
                            Ok((name, _)) => break name,
                            Err(e) => {
                                tracing::warn!(error = %e, "container runtime not answering; pods wait");
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            }
                        }
                    };
                    let ctx = Arc::new(worker::Context {
                        client,
                        runtime,
                        config,
                        node: identity,
                        recorder,
                        volumes,
                        runtime_scheme: scheme,
                    });
                    pods::run(ctx, index).await;
                }),
            ));
        }
        tracing::info!(node = %node_name, server = ?server_addr, "node agent started");
        Ok(Agent {
            node_name,
            server_addr,
            tasks,
        })
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Where the agent server listens (`None` without a server config).
    pub fn server_addr(&self) -> Option<SocketAddr> {
        self.server_addr
    }

    /// Waits until one of the agent's tasks ends, which only happens on a
    /// bug (they loop forever); reports which.
    pub async fn wait(mut self) -> Error {
        let tasks = std::mem::take(&mut self.tasks);
        let names: Vec<&'static str> = tasks.iter().map(|(n, _)| *n).collect();
        let handles: Vec<_> = tasks.into_iter().map(|(_, h)| h).collect();
        if handles.is_empty() {
            std::future::pending::<()>().await;
        }
        let (result, i, rest) = futures::future::select_all(handles).await;
        for h in rest {
            h.abort();
        }
        let task = names.get(i).copied().unwrap_or("unknown");
        if let Err(e) = result {
            tracing::error!(task, error = %e, "agent task failed");
        }
        Error::TaskEnded { task }
    }
}

/// Runs the node agent until one of its tasks ends (a bug) or starting it
/// fails.
pub async fn run(
    client: kube::Client,
    config: NodeConfig,
    runtime: Arc<dyn ContainerRuntime>,
) -> Result<(), Error> {
    let agent = Agent::start(client, config, runtime).await?;
    Err(agent.wait().await)
}
