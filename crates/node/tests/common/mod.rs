//! The in-process cluster the node agent tests share: the real API server
//! on an embedded store in a temp dir, and the node agent on the fake
//! runtime with its HTTPS server on a free loopback port (a self-signed
//! certificate from rcgen, a bearer token).
#![allow(dead_code)]

pub mod fake_runtime;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

pub use fake_runtime::FakeRuntime;

pub const TOKEN: &str = "agent-test-token";
pub const NODE: &str = "node-1";

pub struct Cluster {
    pub client: kube::Client,
    pub runtime: FakeRuntime,
    pub agent_addr: SocketAddr,
    pub dir: tempfile::TempDir,
    agent: Option<skiff_node::Agent>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.agent.take();
        self.server.abort();
    }
}

/// Short intervals so that tests see heartbeats and back-offs quickly.
pub fn fast_timing() -> skiff_node::Timing {
    let backoff = skiff_node::Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(4),
        reset_after: Duration::from_secs(600),
    };
    skiff_node::Timing {
        lease_renew: Duration::from_secs(1),
        lease_duration: Duration::from_secs(40),
        status_report: Duration::from_secs(2),
        relist: Duration::from_millis(200),
        pod_resync: Duration::from_secs(1),
        crash_loop: backoff,
        image_pull: backoff,
    }
}

impl Cluster {
    /// Starts the API server and the agent on a fresh fake runtime.
    pub async fn start() -> Result<Cluster> {
        Self::start_with(FakeRuntime::new()).await
    }

    /// Starts the API server and the agent on `runtime`.
    pub async fn start_with(runtime: FakeRuntime) -> Result<Cluster> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "skiff_node=info".into()),
            )
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
                data_dir: dir.path().join("server"),
                https_listen_port: 0,
                ..Default::default()
            },
            store,
        )
        .await?;
        let kubeconfig = server.kubeconfig_path().to_path_buf();
        let server = tokio::spawn(server.serve(std::future::pending()));
        let client = skiff_client::client_from_kubeconfig(&kubeconfig).await?;

        let cert = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])?;
        let cert_pem = dir.path().join("agent.crt");
        let key_pem = dir.path().join("agent.key");
        std::fs::write(&cert_pem, cert.cert.pem())?;
        std::fs::write(&key_pem, cert.signing_key.serialize_pem())?;
        let config = skiff_node::NodeConfig {
            node_name: Some(NODE.to_string()),
            data_dir: dir.path().join("agent"),
            internal_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            labels: [("example.com/role".to_string(), "test".to_string())].into(),
            server: Some(skiff_node::ServerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                cert_pem,
                key_pem,
                client_ca_pem: None,
                token: Some(TOKEN.to_string()),
            }),
            timing: fast_timing(),
            ..Default::default()
        };
        let agent =
            skiff_node::Agent::start(client.clone(), config, Arc::new(runtime.clone())).await?;
        let agent_addr = agent.server_addr().context("agent server address")?;
        Ok(Cluster {
            client,
            runtime,
            agent_addr,
            dir,
            agent: Some(agent),
            server,
        })
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Creates a pod from JSON (bound to the test node unless it says
    /// otherwise).
    pub async fn create_pod(&self, mut pod: serde_json::Value) -> Result<Pod> {
        if pod["spec"]["nodeName"].is_null() {
            pod["spec"]["nodeName"] = NODE.into();
        }
        if pod["spec"]["automountServiceAccountToken"].is_null() {
            pod["spec"]["automountServiceAccountToken"] = false.into();
        }
        let pod: Pod = serde_json::from_value(pod)?;
        Ok(self.pods().create(&PostParams::default(), &pod).await?)
    }

    /// Polls `check` on the pod until it returns `Some`, for up to `secs`.
    pub async fn wait_pod<T>(
        &self,
        name: &str,
        secs: u64,
        what: &str,
        check: impl Fn(&Pod) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            if let Some(p) = self.pods().get_opt(name).await? {
                if let Some(v) = check(&p) {
                    return Ok(v);
                }
                last = Some(p.status);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "pod {name}: {what} not seen within {secs} s; last status: {}",
            serde_json::to_string_pretty(&last).unwrap_or_default()
        )
    }

    pub async fn wait_gone(&self, name: &str, secs: u64) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while tokio::time::Instant::now() < deadline {
            if self.pods().get_opt(name).await?.is_none() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("pod {name} still there after {secs} s")
    }

    /// A GET against the agent server over HTTPS; returns (status, body).
    pub async fn agent_get(&self, path: &str, token: Option<&str>) -> Result<(u16, String)> {
        let tcp = tokio::net::TcpStream::connect(self.agent_addr).await?;
        let config = skiff_node::tls::insecure_client_config()?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned(),
                tcp,
            )
            .await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::get(path).header("Host", "127.0.0.1");
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let resp = sender
            .send_request(req.body(Empty::<Bytes>::new())?)
            .await?;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// The state of container `name` in the pod's statuses: `running`,
/// `waiting:<reason>` or `terminated:<reason>`.
pub fn container_state(pod: &Pod, name: &str) -> Option<String> {
    let st = pod.status.as_ref()?;
    let cs = st
        .container_statuses
        .iter()
        .flatten()
        .chain(st.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)?;
    let state = cs.state.as_ref()?;
    if state.running.is_some() {
        Some("running".into())
    } else if let Some(w) = &state.waiting {
        Some(format!("waiting:{}", w.reason.clone().unwrap_or_default()))
    } else {
        state
            .terminated
            .as_ref()
            .map(|t| format!("terminated:{}", t.reason.clone().unwrap_or_default()))
    }
}

/// The status of condition `type_` of the pod.
pub fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}
