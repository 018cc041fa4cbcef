//! kube-proxy's service health checks: for every LoadBalancer service with
//! `externalTrafficPolicy: Local`, the proxy answers HTTP on the service's
//! `healthCheckNodePort`, on every address of the node, with how many of
//! the service's ready endpoints run here: `200` when there is one, `503`
//! when there is none. An external load balancer probes it to send
//! traffic only to nodes that keep it (the others drop it, see
//! [`crate::rules`]). The body is kube-proxy's:
//! `{"service":{"namespace":…,"name":…},"localEndpoints":N,"serviceProxyHealthy":true}`.
//!
//! [`HealthServers`] keeps one listener per port in step with what the
//! syncer knows ([`crate::syncer::Syncer::health_checks`]); the answers
//! are read per request, so an endpoint change shows at once.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::model::ServiceName;

/// What one health check port answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub service: ServiceName,
    /// Ready endpoints of the service on this node.
    pub local_endpoints: usize,
}

/// Health check ports and what each answers for.
pub type HealthChecks = BTreeMap<u16, HealthCheck>;

/// The status and JSON body kube-proxy answers for `check`.
pub fn answer(check: &HealthCheck) -> (StatusCode, String) {
    let status = if check.local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "service": {"namespace": check.service.namespace, "name": check.service.name},
        "localEndpoints": check.local_endpoints,
        "serviceProxyHealthy": true,
    });
    (status, body.to_string())
}

/// The listeners of the health check ports.
pub struct HealthServers {
    /// Bind in this network namespace instead of the caller's.
    netns: Option<PathBuf>,
    checks: Arc<RwLock<HealthChecks>>,
    listeners: BTreeMap<u16, JoinHandle<()>>,
}

impl HealthServers {
    pub fn new(netns: Option<PathBuf>) -> Self {
        Self {
            netns,
            checks: Arc::default(),
            listeners: BTreeMap::new(),
        }
    }

    /// Serves exactly `checks`: new ports are opened, ports no longer
    /// wanted closed. A port that cannot be bound (in use) is logged and
    /// tried again at the next update.
    pub async fn update(&mut self, checks: HealthChecks) {
        self.listeners.retain(|port, task| {
            let keep = checks.contains_key(port) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        let wanted: Vec<u16> = checks
            .keys()
            .filter(|p| !self.listeners.contains_key(p))
            .copied()
            .collect();
        *self.checks.write().unwrap_or_else(PoisonError::into_inner) = checks;
        for port in wanted {
            match bind(self.netns.clone(), port).await {
                Ok(listener) => {
                    tracing::info!(port, "serving a service health check");
                    self.listeners.insert(
                        port,
                        tokio::spawn(serve(listener, port, self.checks.clone())),
                    );
                }
                Err(e) => {
                    tracing::warn!(port, error = %e, "cannot serve a service health check");
                }
            }
        }
    }

    /// Ports being served.
    pub fn ports(&self) -> Vec<u16> {
        self.listeners.keys().copied().collect()
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for task in self.listeners.values() {
            task.abort();
        }
    }
}

/// A listener on every address, port `port`, in `netns` when given (a
/// socket stays in the namespace it was made in).
async fn bind(netns: Option<PathBuf>, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let Some(netns) = netns else {
        return tokio::net::TcpListener::bind(addr).await;
    };
    let listener = tokio::task::spawn_blocking(move || {
        // A thread of its own, so no other task runs in the namespace.
        std::thread::spawn(move || -> std::io::Result<std::net::TcpListener> {
            let ns = std::fs::File::open(&netns)?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let listener = std::net::TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .join()
        .map_err(|_| std::io::Error::other("the binding thread panicked"))?
    })
    .await
    .map_err(std::io::Error::other)??;
    tokio::net::TcpListener::from_std(listener)
}

async fn serve(listener: tokio::net::TcpListener, port: u16, checks: Arc<RwLock<HealthChecks>>) {
    let app = axum::Router::new().fallback(move || {
        let checks = checks.clone();
        async move { respond(&checks, port) }
    });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(port, error = %e, "service health check server stopped");
    }
}

fn respond(checks: &RwLock<HealthChecks>, port: u16) -> Response {
    let check = checks
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&port)
        .cloned();
    let Some(check) = check else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let (status, body) = answer(&check);
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "X-Load-Balancing-Endpoint-Weight",
        HeaderValue::from(check.local_endpoints),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_with_local_endpoints_answers_200_and_one_without_503() {
        let check = |n| HealthCheck {
            service: ServiceName::new("default", "web"),
            local_endpoints: n,
        };
        let (status, body) = answer(&check(2));
        assert_eq!(status, StatusCode::OK);
        let body: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            body,
            json!({"service": {"namespace": "default", "name": "web"},
                "localEndpoints": 2, "serviceProxyHealthy": true})
        );
        assert_eq!(answer(&check(0)).0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn ports_open_and_close_with_the_checks_and_answer_what_is_current() {
        let mut servers = HealthServers::new(None);
        // A free port, found by binding one.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let checks = |n| {
            HealthChecks::from([(
                port,
                HealthCheck {
                    service: ServiceName::new("default", "web"),
                    local_endpoints: n,
                },
            )])
        };
        servers.update(checks(1)).await;
        assert_eq!(servers.ports(), vec![port]);
        assert_eq!(get(port).await, 200);
        servers.update(checks(0)).await;
        assert_eq!(get(port).await, 503, "the answer follows the update");
        servers.update(HealthChecks::new()).await;
        assert!(servers.ports().is_empty());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err(),
            "the port is still open"
        );
    }

    /// The status code of `GET /healthz` on 127.0.0.1:`port`.
    async fn get(port: u16) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut reply = String::new();
        conn.read_to_string(&mut reply).await.expect("read");
        reply
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status in {reply:?}"))
    }
}
