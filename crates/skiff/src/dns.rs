//! Cluster DNS in `skiff server`: the `skiff-dns` server on the node's
//! address, port 53, published as the `kube-system/kube-dns` Service at the
//! cluster DNS address (the tenth of the service range, 10.43.0.10) whose
//! endpoints point at it, so the service proxy on every node routes pods'
//! queries there — what k3s does with its CoreDNS deployment, without a pod.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

const MANAGER: &str = "skiff-dns";

/// Publishes `kube-dns` at `cluster_dns` → `node_ip:53`, then serves DNS
/// until it fails.
pub async fn run(client: kube::Client, cluster_dns: IpAddr, node_ip: IpAddr) -> Result<()> {
    let server = skiff_dns::DnsServer::bind(skiff_dns::DnsConfig {
        listen: vec![SocketAddr::new(node_ip, 53)],
        ..Default::default()
    })
    .await
    .with_context(|| format!("binding the cluster DNS on {node_ip}:53"))?;
    publish(&client, cluster_dns, node_ip).await?;
    tracing::info!(%cluster_dns, %node_ip, "cluster DNS serving");
    server.run(client).await.context("the cluster DNS stopped")
}

async fn publish(client: &kube::Client, cluster_dns: IpAddr, node_ip: IpAddr) -> Result<()> {
    let ns = skiff_netpol::model::DNS_NAMESPACE;
    let params = PatchParams::apply(MANAGER).force();
    let ports = json!([
        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
    ]);
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": ns,
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
        "spec": {"clusterIP": cluster_dns.to_string(), "ports": ports},
    });
    Api::<Service>::namespaced(client.clone(), ns)
        .patch("kube-dns", &params, &Patch::Apply(&service))
        .await
        .context("publishing the kube-dns service")?;
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kube-dns", "namespace": ns},
        "subsets": [{"addresses": [{"ip": node_ip.to_string()}],
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                               {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}],
    });
    Api::<Endpoints>::namespaced(client.clone(), ns)
        .patch("kube-dns", &params, &Patch::Apply(&endpoints))
        .await
        .context("publishing the kube-dns endpoints")?;
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kube-dns", "namespace": ns,
                     "labels": {"kubernetes.io/service-name": "kube-dns",
                                "endpointslice.kubernetes.io/managed-by": skiff_netpol::model::DNS_MANAGED_BY}},
        "addressType": if node_ip.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{"addresses": [node_ip.to_string()],
                       "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                  {"name": "dns-tcp", "port": 53, "protocol": "TCP"}],
    });
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .patch("kube-dns", &params, &Patch::Apply(&slice))
        .await
        .context("publishing the kube-dns endpoint slice")?;
    Ok(())
}
