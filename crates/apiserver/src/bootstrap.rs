//! Objects the API server keeps in place itself: the `kubernetes` Service
//! in `default` at the first address of the service range, and its
//! Endpoints and EndpointSlice pointing at this server (Kubernetes' master
//! endpoints reconciler, for one server).

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::registry::{self, Ownership};
use crate::resources;

const MANAGER: &str = "kube-apiserver";

/// Creates the `kubernetes` service (if missing) and points its endpoints
/// at `ip:port`.
pub async fn kubernetes_service(state: &AppState, ip: IpAddr, port: u16) -> ApiResult<()> {
    let svc_def = resources::find("", "v1", "services").ok_or(ApiError::UnknownPath)?;
    let ep_def = resources::find("", "v1", "endpoints").ok_or(ApiError::UnknownPath)?;
    let slice_def =
        resources::find("discovery.k8s.io", "v1", "endpointslices").ok_or(ApiError::UnknownPath)?;
    let cluster_ip = state.service_ranges().kubernetes_ip().to_string();
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {
            "clusterIP": cluster_ip,
            "type": "ClusterIP",
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
            "sessionAffinity": "None",
        }
    });
    ensure(state, svc_def, service, |_| false).await?;
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": ip.to_string()}],
                     "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]
    });
    let want = endpoints["subsets"].clone();
    ensure(state, ep_def, endpoints, move |live| {
        live.get("subsets") != Some(&want)
    })
    .await?;
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes",
                                "endpointslice.kubernetes.io/managed-by": "kube-apiserver"}},
        "addressType": if ip.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]
    });
    let want = slice["endpoints"].clone();
    ensure(state, slice_def, slice, move |live| {
        live.get("endpoints") != Some(&want)
    })
    .await
}

/// Creates `obj` if missing; replaces it when `stale(live)`.
async fn ensure(
    state: &AppState,
    def: &'static resources::ResourceDef,
    obj: Value,
    stale: impl Fn(&Value) -> bool,
) -> ApiResult<()> {
    let name = registry::meta(&obj, "name").unwrap_or_default();
    match registry::get(state, def, Some("default"), &name).await {
        Ok(live) if !stale(&live) => Ok(()),
        Ok(live) => {
            let mut obj = obj;
            registry::meta_mut(&mut obj).insert(
                "resourceVersion".into(),
                live.pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null),
            );
            registry::update(
                state,
                def,
                Some("default"),
                &name,
                None,
                obj,
                false,
                MANAGER,
            )
            .await
            .map(|_| ())
        }
        Err(ApiError::NotFound { .. }) => {
            match registry::create(
                state,
                def,
                Some("default"),
                obj,
                false,
                Ownership::Update(MANAGER),
            )
            .await
            {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}
