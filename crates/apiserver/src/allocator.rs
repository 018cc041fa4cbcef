//! ClusterIP and NodePort allocation for Services.
//!
//! Each allocated address or port is one key in the store
//! (`/registry/allocations/clusterips/<ip>`, `/registry/allocations/nodeports/<port>`)
//! created with the store's create-if-absent, so two concurrent creates can
//! never get the same one, on any backend and across several API servers.
//! The value names the owning service. Allocations are released when their
//! service is deleted, and a repair pass (at start and periodically)
//! releases those whose service is gone — an allocation whose service create
//! failed, or a release lost in a crash — after a grace period that covers
//! creates in flight, as Kubernetes' repair controllers do.

use std::net::Ipv4Addr;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use skiff_store::{Error as StoreError, ListOptions, PutOptions};

use crate::AppState;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::registry;
use crate::resources::{self, ResourceDef};

const IPS: &str = "/registry/allocations/clusterips/";
const PORTS: &str = "/registry/allocations/nodeports/";

/// The service ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceRanges {
    /// `--service-cidr` (IPv4): network address and prefix length.
    pub cidr: (Ipv4Addr, u8),
    /// `--service-node-port-range`, inclusive.
    pub node_ports: (u16, u16),
}

impl Default for ServiceRanges {
    fn default() -> Self {
        ServiceRanges {
            cidr: (Ipv4Addr::new(10, 43, 0, 0), 16),
            node_ports: (30000, 32767),
        }
    }
}

impl ServiceRanges {
    /// Parses `10.43.0.0/16`.
    pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
        let (ip, len) = s.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let len: u8 = len.parse().ok()?;
        (8..=30).contains(&len).then(|| {
            let mask = u32::MAX << (32 - len);
            (Ipv4Addr::from(u32::from(ip) & mask), len)
        })
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.cidr.1)
    }

    /// The `n`th address of the range (0 is the network address).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.0) + n)
    }

    /// Whether `ip` is a usable address of the range (not the network or
    /// broadcast address).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let off = u32::from(ip).wrapping_sub(u32::from(self.cidr.0));
        off > 0 && off < self.size() - 1 && u32::from(ip) >= u32::from(self.cidr.0)
    }

    /// The `kubernetes` service's address: the first of the range.
    pub fn kubernetes_ip(&self) -> Ipv4Addr {
        self.nth(1)
    }
}

fn owner(ns: &str, name: &str) -> Bytes {
    Bytes::from(json!({"namespace": ns, "name": name, "at": registry::now_rfc3339()}).to_string())
}

fn services_def() -> ApiResult<&'static ResourceDef> {
    resources::find("", "v1", "services").ok_or(ApiError::UnknownPath)
}

fn invalid(name: &str, field: &str, value: Value, detail: &str) -> ApiError {
    let def = services_def();
    match def {
        Ok(def) => registry::invalid(
            def,
            name,
            vec![FieldError::invalid_value(field, &value, detail)],
        ),
        Err(e) => e,
    }
}

/// What a service create took, to give back if the create fails.
#[derive(Debug, Default)]
pub struct Taken {
    keys: Vec<String>,
}

impl Taken {
    pub async fn release(self, state: &AppState) {
        for key in self.keys {
            if let Err(e) = state.store().delete(&key, None).await {
                tracing::warn!(key, error = %e, "releasing a service allocation");
            }
        }
    }
}

/// Fills in `spec.clusterIP(s)` and node ports of a service being created,
/// taking them in the store. Explicit values are honoured if free.
pub async fn allocate(state: &AppState, ns: &str, svc: &mut Value) -> ApiResult<Taken> {
    let ranges = state.service_ranges();
    let name = registry::meta(svc, "name").unwrap_or_default();
    let mut taken = Taken::default();
    let result = allocate_into(state, &ranges, ns, &name, svc, &mut taken).await;
    if let Err(e) = result {
        taken.release(state).await;
        return Err(e);
    }
    Ok(taken)
}

async fn allocate_into(
    state: &AppState,
    ranges: &ServiceRanges,
    ns: &str,
    name: &str,
    svc: &mut Value,
    taken: &mut Taken,
) -> ApiResult<()> {
    let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    spec.entry("type").or_insert(json!(ty));
    if ty == "ExternalName" {
        return Ok(());
    }
    spec.entry("sessionAffinity").or_insert(json!("None"));
    spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
    spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
    spec.entry("internalTrafficPolicy")
        .or_insert(json!("Cluster"));
    let requested = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .or_else(|| {
            spec.get("clusterIPs")
                .and_then(|v| v.get(0))
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    let ip = match requested.as_deref() {
        Some("None") => "None".to_string(),
        Some(ip) => {
            let parsed: Ipv4Addr = ip.parse().map_err(|_| {
                invalid(
                    name,
                    "spec.clusterIPs[0]",
                    json!(ip),
                    "must be a valid IP address",
                )
            })?;
            if !ranges.contains(parsed) {
                return Err(invalid(
                    name,
                    "spec.clusterIPs[0]",
                    json!(ip),
                    &format!(
                        "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}/{}",
                        ranges.cidr.0, ranges.cidr.1
                    ),
                ));
            }
            let key = format!("{IPS}{parsed}");
            match state
                .store()
                .create(&key, owner(ns, name), PutOptions::default())
                .await
            {
                Ok(_) => taken.keys.push(key),
                Err(StoreError::AlreadyExists { .. }) => {
                    return Err(invalid(
                        name,
                        "spec.clusterIPs[0]",
                        json!(ip),
                        &format!("failed to allocate IP {ip}: provided IP is already allocated"),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
            parsed.to_string()
        }
        None => {
            let ip = take_free_ip(state, ranges, ns, name).await?;
            taken.keys.push(format!("{IPS}{ip}"));
            ip.to_string()
        }
    };
    spec.insert("clusterIP".into(), json!(ip));
    spec.insert("clusterIPs".into(), json!([ip]));

    if ty == "NodePort" || ty == "LoadBalancer" {
        let ports = spec
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .map(std::mem::take)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(ports.len());
        for (i, mut port) in ports.into_iter().enumerate() {
            let asked = port
                .get("nodePort")
                .and_then(Value::as_i64)
                .filter(|p| *p != 0);
            let node_port = match asked {
                Some(p) => {
                    let field = format!("spec.ports[{i}].nodePort");
                    if p < i64::from(ranges.node_ports.0) || p > i64::from(ranges.node_ports.1) {
                        return Err(invalid(
                            name,
                            &field,
                            json!(p),
                            &format!(
                                "provided port is not in the valid range. The range of valid ports is {}-{}",
                                ranges.node_ports.0, ranges.node_ports.1
                            ),
                        ));
                    }
                    let key = format!("{PORTS}{p}");
                    match state
                        .store()
                        .create(&key, owner(ns, name), PutOptions::default())
                        .await
                    {
                        Ok(_) => taken.keys.push(key),
                        Err(StoreError::AlreadyExists { .. }) => {
                            return Err(invalid(
                                name,
                                &field,
                                json!(p),
                                "provided port is already allocated",
                            ));
                        }
                        Err(e) => return Err(e.into()),
                    }
                    p
                }
                None => {
                    let p = take_free_port(state, ranges, ns, name).await?;
                    taken.keys.push(format!("{PORTS}{p}"));
                    i64::from(p)
                }
            };
            if let Some(m) = port.as_object_mut() {
                m.insert("nodePort".into(), json!(node_port));
            }
            out.push(port);
        }
        spec.insert("ports".into(), Value::Array(out));
        spec.entry("externalTrafficPolicy")
            .or_insert(json!("Cluster"));
    }
    Ok(())
}

/// A random free address, tried against the store; the range is scanned
/// from a random offset so concurrent creates rarely collide.
async fn take_free_ip(
    state: &AppState,
    ranges: &ServiceRanges,
    ns: &str,
    name: &str,
) -> ApiResult<Ipv4Addr> {
    // Usable offsets: 1..size-1, minus the first (the `kubernetes`
    // service) and the tenth (cluster DNS), which are only ever asked for
    // explicitly.
    let size = ranges.size();
    let start = 2 + fastrand::u32(..size.saturating_sub(3).max(1));
    for i in 0..size {
        let off = 1 + (start + i - 1) % (size - 2);
        if off == 1 || off == 10 {
            continue;
        }
        let ip = ranges.nth(off);
        let key = format!("{IPS}{ip}");
        match state
            .store()
            .create(&key, owner(ns, name), PutOptions::default())
            .await
        {
            Ok(_) => return Ok(ip),
            Err(StoreError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Internal(
        "failed to allocate a serviceIP: range is full".into(),
    ))
}

async fn take_free_port(
    state: &AppState,
    ranges: &ServiceRanges,
    ns: &str,
    name: &str,
) -> ApiResult<u16> {
    let (lo, hi) = ranges.node_ports;
    let span = u32::from(hi - lo) + 1;
    let start = fastrand::u32(..span);
    for i in 0..span {
        let p = lo + ((start + i) % span) as u16;
        let key = format!("{PORTS}{p}");
        match state
            .store()
            .create(&key, owner(ns, name), PutOptions::default())
            .await
        {
            Ok(_) => return Ok(p),
            Err(StoreError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Internal(
        "failed to allocate a nodePort: range is full".into(),
    ))
}

/// Releases what a deleted service held.
pub async fn release_service(state: &AppState, svc: &Value) {
    let mut keys = Vec::new();
    if let Some(ip) = svc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .filter(|ip| *ip != "None" && !ip.is_empty())
    {
        keys.push(format!("{IPS}{ip}"));
    }
    for port in svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(p) = port.get("nodePort").and_then(Value::as_i64) {
            keys.push(format!("{PORTS}{p}"));
        }
    }
    let ns = registry::meta(svc, "namespace").unwrap_or_default();
    let name = registry::meta(svc, "name").unwrap_or_default();
    for key in keys {
        // Only what this service holds (the key may already belong to a
        // newer service after a repair).
        if let Ok(Some(kv)) = state.store().get(&key).await
            && let Ok(v) = serde_json::from_slice::<Value>(&kv.value)
            && v["namespace"] == ns.as_str()
            && v["name"] == name.as_str()
        {
            let _ = state.store().delete(&key, Some(kv.mod_revision)).await;
        }
    }
}

/// Releases allocations whose service no longer exists (or no longer holds
/// them), if older than `grace`.
pub async fn repair(state: &AppState, grace: Duration) -> ApiResult<usize> {
    let def = services_def()?;
    let mut released = 0;
    for prefix in [IPS, PORTS] {
        let page = state.store().list(prefix, ListOptions::default()).await?;
        for kv in page.items {
            let Ok(owner) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            let at = owner["at"].as_str().unwrap_or_default();
            let old_enough =
                time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                    .map(|t| time::OffsetDateTime::now_utc() - t > grace)
                    .unwrap_or(true);
            if !old_enough {
                continue;
            }
            let ns = owner["namespace"].as_str().unwrap_or_default();
            let name = owner["name"].as_str().unwrap_or_default();
            let held = match registry::get(state, def, Some(ns), name).await {
                Ok(svc) => {
                    let what = kv.key.trim_start_matches(prefix);
                    let ip = svc.pointer("/spec/clusterIP").and_then(Value::as_str);
                    let ports: Vec<String> = svc
                        .pointer("/spec/ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
                        .map(|p| p.to_string())
                        .collect();
                    ip == Some(what) || ports.iter().any(|p| p == what)
                }
                Err(ApiError::NotFound { .. }) => false,
                Err(e) => return Err(e),
            };
            if !held
                && state
                    .store()
                    .delete(&kv.key, Some(kv.mod_revision))
                    .await
                    .is_ok()
            {
                tracing::info!(key = %kv.key, "released a leaked service allocation");
                released += 1;
            }
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_bound_addresses() {
        let r = ServiceRanges {
            cidr: ServiceRanges::parse_cidr("10.43.7.9/16").unwrap(),
            node_ports: (30000, 32767),
        };
        assert_eq!(r.cidr, (Ipv4Addr::new(10, 43, 0, 0), 16));
        assert_eq!(r.kubernetes_ip(), Ipv4Addr::new(10, 43, 0, 1));
        assert!(r.contains(Ipv4Addr::new(10, 43, 0, 10)));
        assert!(!r.contains(Ipv4Addr::new(10, 43, 0, 0)));
        assert!(!r.contains(Ipv4Addr::new(10, 43, 255, 255)));
        assert!(!r.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert!(ServiceRanges::parse_cidr("10.43.0.0/33").is_none());
    }
}
