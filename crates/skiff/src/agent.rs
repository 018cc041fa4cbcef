//! Wiring of the node agent: the runtime (built-in with the bridge pod
//! network, or a CRI endpoint), image auto-import, the agent's serving
//! certificate, and its [`skiff_node::NodeConfig`]. Used by `skiff agent`
//! and by `skiff server`'s local node.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

/// The zygote that forks this process's container monitors, started by
/// `main` before the async runtime (see `cli::prepare_process`); unset when
/// it could not be started or the node uses a CRI runtime.
pub static MONITOR_ZYGOTE: std::sync::OnceLock<Arc<skiff_runtime::Zygote>> =
    std::sync::OnceLock::new();

/// What the agent is told by flags.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The node's state lives under `<data_dir>/agent`.
    pub data_dir: PathBuf,
    pub node_name: Option<String>,
    pub node_ip: Option<IpAddr>,
    pub node_labels: Vec<String>,
    pub node_taints: Vec<String>,
    /// The cluster's pod range (not masqueraded).
    pub cluster_cidr: String,
    /// Cluster DNS servers written into pods' resolv.conf.
    pub cluster_dns: Vec<IpAddr>,
    /// The port of the agent's HTTPS server (logs, exec).
    pub agent_port: u16,
    /// The token the API server presents to this agent.
    pub token: Option<String>,
    /// `unix:///run/containerd/containerd.sock` to use a CRI runtime
    /// instead of the built-in one.
    pub container_runtime_endpoint: Option<String>,
    /// How pods reach pods on other nodes.
    pub overlay: skiff_node::routes::Overlay,
    /// The service range: the node routes it to the pod bridge (so the
    /// node itself reaches ClusterIPs) whether or not it runs the proxy.
    pub service_cidr: String,
    /// Run the service proxy (else another one, such as `skiff proxy`,
    /// programs the node).
    pub kube_proxy: bool,
    /// Enforce NetworkPolicies on this node's pods.
    pub network_policy: bool,
    /// Rotation of containers' log files.
    pub container_logs: skiff_node::LogRotationPolicy,
    /// Garbage collection of unused images.
    pub image_gc: skiff_node::ImageGcPolicy,
    /// k3s' `registries.yaml`: mirrors, credentials and plain-HTTP
    /// registries for the built-in runtime's pulls (a missing file is an
    /// empty configuration).
    pub private_registry: PathBuf,
}

/// Runs the node agent until it fails.
pub async fn run(client: kube::Client, opts: AgentOptions) -> Result<()> {
    let agent_dir = opts.data_dir.join("agent");
    std::fs::create_dir_all(&agent_dir)
        .with_context(|| format!("creating {}", agent_dir.display()))?;
    let node_name = match &opts.node_name {
        Some(n) => n.clone(),
        None => default_node_name(),
    };
    let node_ip = opts.node_ip.unwrap_or_else(default_node_ip);
    let runtime = runtime(&opts, &agent_dir, &node_name).await?;
    let (cert, key) = serving_certificate(&agent_dir, &node_name, node_ip)?;
    let config = skiff_node::NodeConfig {
        node_name: Some(node_name.clone()),
        data_dir: agent_dir.clone(),
        internal_ip: Some(node_ip),
        labels: parse_labels(&opts.node_labels)?,
        taints: parse_taints(&opts.node_taints)?,
        cluster_dns: opts.cluster_dns.clone(),
        server: Some(skiff_node::ServerConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), opts.agent_port),
            cert_pem: cert,
            key_pem: key,
            client_ca_pem: None,
            token: opts.token.clone(),
        }),
        container_logs: opts.container_logs,
        image_gc: opts.image_gc,
        ..Default::default()
    };
    tracing::info!(node = %node_name, ip = %node_ip, "starting the node agent");
    let routes = tokio::spawn(skiff_node::routes::run(
        client.clone(),
        node_name.clone(),
        node_ip,
        opts.overlay,
    ));
    let _routes = AbortOnDrop(routes);
    let _proxy = match opts.kube_proxy.then_some(&opts.service_cidr) {
        Some(service_cidr) => {
            let config = skiff_proxy::ProxyConfig::new(
                node_name.clone(),
                opts.cluster_cidr.parse().with_context(|| {
                    format!("--cluster-cidr {} is not an IPv4 range", opts.cluster_cidr)
                })?,
                service_cidr.parse().with_context(|| {
                    format!("--service-cidr {service_cidr} is not an IPv4 range")
                })?,
            );
            let proxy = skiff_proxy::Proxy::new(client.clone(), config)
                .context("starting the service proxy")?;
            Some(AbortOnDrop(tokio::spawn(async move {
                if let Err(e) = proxy.run().await {
                    tracing::error!(error = %e, "the service proxy stopped");
                }
            })))
        }
        None => None,
    };
    let _network_policy = opts.network_policy.then(|| {
        let config = skiff_netpol::Config::new(node_name.clone());
        let client = client.clone();
        AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = skiff_netpol::run(client, config).await {
                tracing::error!(error = %e, "network policy enforcement stopped");
            }
        }))
    });
    skiff_node::run(client, config, runtime)
        .await
        .context("the node agent stopped")
}

async fn runtime(
    opts: &AgentOptions,
    agent_dir: &Path,
    node_name: &str,
) -> Result<Arc<dyn skiff_node::ContainerRuntime>> {
    if let Some(endpoint) = &opts.container_runtime_endpoint {
        let cri = skiff_runtime::CriClient::connect(endpoint)
            .await
            .with_context(|| format!("connecting to the CRI runtime at {endpoint}"))?;
        return Ok(Arc::new(cri));
    }
    let cluster_cidr: ipnet::Ipv4Net = opts
        .cluster_cidr
        .parse()
        .with_context(|| format!("--cluster-cidr {} is not an IPv4 range", opts.cluster_cidr))?;
    let service_cidr = &opts.service_cidr;
    let network =
        skiff_node::podnet::BridgeNetwork::new(node_name, cluster_cidr, agent_dir.join("network"))
            .with_service_cidr(
                service_cidr.parse().with_context(|| {
                    format!("--service-cidr {service_cidr} is not an IPv4 range")
                })?,
            );
    let mut config = skiff_runtime::BuiltinConfig::new(agent_dir.join("runtime"));
    config.zygote = MONITOR_ZYGOTE.get().cloned();
    config.pull.registries = skiff_runtime::Registries::load(&opts.private_registry)
        .with_context(|| format!("reading {}", opts.private_registry.display()))?;
    let runtime = skiff_runtime::BuiltinRuntime::new(config, Arc::new(network))
        .context("starting the built-in container runtime")?;
    // Air-gapped images: every archive in <data-dir>/agent/images, as k3s.
    let images = agent_dir.join("images");
    match runtime.import_image_dir(&images).await {
        Ok(imported) if !imported.is_empty() => {
            tracing::info!(count = imported.len(), dir = %images.display(), "imported images")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(dir = %images.display(), error = %e, "importing images"),
    }
    Ok(Arc::new(runtime))
}

/// A self-signed serving certificate for the agent's HTTPS server (the API
/// server does not verify it, as Kubernetes without
/// `--kubelet-certificate-authority`); made once.
fn serving_certificate(dir: &Path, node_name: &str, ip: IpAddr) -> Result<(PathBuf, PathBuf)> {
    let cert_path = dir.join("serving.crt");
    let key_path = dir.join("serving.key");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let mut params = rcgen::CertificateParams::new(vec![node_name.to_string()])
        .context("certificate parameters")?;
    params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
    let key = rcgen::KeyPair::generate().context("generating the agent key")?;
    let cert = params
        .self_signed(&key)
        .context("signing the agent certificate")?;
    std::fs::write(&cert_path, cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    write_private(&key_path, &key.serialize_pem())?;
    Ok((cert_path, key_path))
}

/// Writes a secret readable by root only.
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The node name an agent registers without `--node-name`: the host name,
/// lowercased (node names are DNS subdomains).
pub(crate) fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_else(|_| "skiff-node".into())
}

/// The node's default address: the one the host routes from.
pub(crate) fn default_node_ip() -> IpAddr {
    skiff_apiserver::default_route_ip()
}

fn parse_labels(labels: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--node-label {l:?} is not key=value"))
        })
        .collect()
}

/// `key=value:Effect` or `key:Effect`, as k3s's `--node-taint`.
fn parse_taints(taints: &[String]) -> Result<Vec<k8s_openapi::api::core::v1::Taint>> {
    taints
        .iter()
        .map(|t| {
            let (kv, effect) = t
                .rsplit_once(':')
                .with_context(|| format!("--node-taint {t:?} is not key[=value]:Effect"))?;
            anyhow::ensure!(
                matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute"),
                "--node-taint {t:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute"
            );
            let (key, value) = match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (kv.to_string(), None),
            };
            Ok(k8s_openapi::api::core::v1::Taint {
                key,
                value,
                effect: effect.to_string(),
                time_added: None,
            })
        })
        .collect()
}

/// Stops a background task when the agent stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_and_labels_parse_like_k3s_flags() {
        let taints = parse_taints(&["gpu=true:NoSchedule".into(), "edge:NoExecute".into()])
            .expect("valid taints");
        assert_eq!(taints[0].key, "gpu");
        assert_eq!(taints[0].value.as_deref(), Some("true"));
        assert_eq!(taints[1].effect, "NoExecute");
        assert!(parse_taints(&["x=y:Sometimes".into()]).is_err());
        let labels = parse_labels(&["zone=a".into()]).expect("valid labels");
        assert_eq!(labels["zone"], "a");
        assert!(parse_labels(&["nolabel".into()]).is_err());
    }
}
