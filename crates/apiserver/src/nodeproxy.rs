//! `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward`: proxied to
//! the node agent that runs the pod.
//!
//! As in Kubernetes, the API server finds the pod's node, reads the node's
//! address (`InternalIP`, else the first address) and agent port
//! (`status.daemonEndpoints.kubeletEndpoint.Port`, default 10250) from the
//! Node object, and forwards the request over HTTPS to the agent's
//! kubelet-style paths:
//!
//! - `GET pods/<name>/log?container=…` → `GET /containerLogs/<ns>/<pod>/<container>?…`
//! - `GET|POST pods/<name>/exec?container=…&command=…` →
//!   `/exec/<ns>/<pod>/<container>?…`, an upgraded (WebSocket `v5.channel.k8s.io`
//!   or SPDY) connection whose bytes are copied both ways;
//! - `GET|POST pods/<name>/attach?container=…` → `/attach/<ns>/<pod>/<container>?…`,
//!   upgraded the same way;
//! - `GET|POST pods/<name>/portforward` → `/portForward/<ns>/<pod>?…` (no
//!   container: the pod's network namespace is shared), upgraded to SPDY or
//!   to a WebSocket tunnelling SPDY (`SPDY/3.1+portforward.k8s.io`).
//!
//! The agent is authenticated to with the cluster's shared token. Like
//! Kubernetes without `--kubelet-certificate-authority`, the agent's serving
//! certificate is not verified.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::registry;
use crate::resources::{self, Subresource};

/// The agent port Kubernetes assumes when a Node does not say.
const DEFAULT_AGENT_PORT: i64 = 10250;

pub async fn proxy(
    state: &AppState,
    ns: &str,
    pod_name: &str,
    sub: Subresource,
    mut req: Request,
) -> ApiResult<Response> {
    let pods = resources::find("", "v1", "pods").ok_or(ApiError::UnknownPath)?;
    let nodes = resources::find("", "v1", "nodes").ok_or(ApiError::UnknownPath)?;
    let pod = registry::get(state, pods, Some(ns), pod_name).await?;
    let query = req.uri().query().unwrap_or_default().to_string();
    let container = match sub {
        Subresource::PortForward => None,
        _ => Some(container_name(&pod, &query)?),
    };
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::BadRequest(format!("pod {pod_name} does not have a host assigned"))
        })?;
    let node = registry::get(state, nodes, None, node_name).await?;
    let (host, port) = agent_address(&node).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "node {node_name} has no address to reach its agent"
        ))
    })?;
    let path = match sub {
        Subresource::Log => "containerLogs",
        Subresource::Exec => "exec",
        Subresource::Attach => "attach",
        Subresource::PortForward => "portForward",
        _ => return Err(ApiError::MethodNotAllowed),
    };
    let forwarded_query = query
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("container="))
        .collect::<Vec<_>>()
        .join("&");
    let uri = match container {
        Some(container) => format!("/{path}/{ns}/{pod_name}/{container}?{forwarded_query}"),
        None => format!("/{path}/{ns}/{pod_name}?{forwarded_query}"),
    };

    let stream = connect(&host, port).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unavailable(node_name, e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "agent connection ended");
        }
    });

    let mut upstream = hyper::Request::builder()
        .method(req.method().clone())
        .uri(&uri)
        .header(header::HOST, format!("{host}:{port}"));
    for (name, value) in req.headers() {
        let forwarded = matches!(
            name.as_str(),
            "upgrade"
                | "connection"
                | "x-stream-protocol-version"
                | "accept"
                | "content-type"
                | "content-length"
        ) || name.as_str().starts_with("sec-websocket-");
        if forwarded {
            upstream = upstream.header(name, value);
        }
    }
    if let Some(token) = state.token() {
        upstream = upstream.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let upgrade_requested = req.headers().contains_key(header::UPGRADE);
    let client_upgrade = upgrade_requested.then(|| hyper::upgrade::on(&mut req));
    let body = std::mem::replace(req.body_mut(), Body::empty());
    let upstream = upstream
        .body(body)
        .map_err(|e| ApiError::Internal(format!("building agent request: {e}")))?;
    let mut response = sender
        .send_request(upstream)
        .await
        .map_err(|e| unavailable(node_name, e))?;

    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let agent_upgrade = hyper::upgrade::on(&mut response);
        let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (name, value) in response.headers() {
            out = out.header(name, value);
        }
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, agent_upgrade) {
                Ok((client, agent)) => {
                    let mut client = TokioIo::new(client);
                    let mut agent = TokioIo::new(agent);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut agent).await {
                        tracing::debug!(error = %e, "exec stream ended");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "exec upgrade failed"),
            }
        });
        return out
            .body(Body::empty())
            .map_err(|e| ApiError::Internal(e.to_string()));
    }

    let (parts, body) = response.into_parts();
    let mut out = Response::builder().status(parts.status);
    for (name, value) in &parts.headers {
        if name != header::CONNECTION && name != header::TRANSFER_ENCODING {
            out = out.header(name, value);
        }
    }
    if !parts.headers.contains_key(header::CONTENT_TYPE) {
        out = out.header(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    out.body(Body::new(body))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// `container=` from the query, else the pod's only container; Kubernetes'
/// message when a choice is needed.
fn container_name(pod: &Value, query: &str) -> ApiResult<String> {
    let asked = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.into_owned());
    let names: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    let init: Vec<&str> = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match asked {
        Some(c) if names.contains(&c.as_str()) || init.contains(&c.as_str()) => Ok(c),
        Some(c) => Err(ApiError::BadRequest(format!(
            "container {c} is not valid for pod {pod_name}"
        ))),
        None if names.len() == 1 => Ok(names[0].to_string()),
        None => Err(ApiError::BadRequest(format!(
            "a container name must be specified for pod {pod_name}, choose one of: [{}]",
            names.join(" ")
        ))),
    }
}

/// The node's agent address: `InternalIP`, else the first address.
fn agent_address(node: &Value) -> Option<(String, u16)> {
    let addresses = node.pointer("/status/addresses")?.as_array()?;
    let pick = addresses
        .iter()
        .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        .or_else(|| addresses.first())?;
    let host = pick.get("address")?.as_str()?.to_string();
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_i64)
        .filter(|p| (1..=65535).contains(p))
        .unwrap_or(DEFAULT_AGENT_PORT);
    Some((host, u16::try_from(port).ok()?))
}

fn unavailable(node: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::ServiceUnavailable(format!("error dialing the agent of node {node}: {e}"))
}

async fn connect(
    host: &str,
    port: u16,
) -> ApiResult<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| unavailable(host, e))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyAgentCertificate))
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| unavailable(host, e))
}

/// Accepts the agent's serving certificate unverified (Kubernetes' default
/// without `--kubelet-certificate-authority`); signatures are still checked
/// so the TLS session itself is sound.
#[derive(Debug)]
struct AnyAgentCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyAgentCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_asked_for_or_the_only_one() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(container_name(&one, "").unwrap(), "a");
        let two = json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let err = container_name(&two, "follow=true").unwrap_err();
        assert_eq!(
            err.to_string(),
            "a container name must be specified for pod p, choose one of: [a b]"
        );
        assert_eq!(container_name(&two, "container=b&follow=1").unwrap(), "b");
        assert!(container_name(&two, "container=c").is_err());
    }

    #[test]
    fn the_agent_is_reached_at_its_internal_ip_and_port() {
        let node = json!({"status": {
            "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10251}}
        }});
        assert_eq!(agent_address(&node), Some(("10.0.0.5".into(), 10251)));
        let bare = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}]}});
        assert_eq!(agent_address(&bare), Some(("n1".into(), 10250)));
    }
}
