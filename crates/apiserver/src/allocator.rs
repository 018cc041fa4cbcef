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
            let field = format!("spec.ports[{i}].nodePort");
            let node_port = take_node_port(state, ranges, ns, name, &field, asked, taken).await?;
            if let Some(m) = port.as_object_mut() {
                m.insert("nodePort".into(), json!(node_port));
            }
            out.push(port);
        }
        spec.insert("ports".into(), Value::Array(out));
        spec.entry("externalTrafficPolicy")
            .or_insert(json!("Cluster"));
    }
    take_health_check_node_port(state, ranges, ns, name, svc, &[], taken).await
}

/// Gives a LoadBalancer service with `externalTrafficPolicy: Local` its
/// `spec.healthCheckNodePort` (the one asked for, or a free one) from the
/// node port range, as upstream does; one it already `held` is kept.
async fn take_health_check_node_port(
    state: &AppState,
    ranges: &ServiceRanges,
    ns: &str,
    name: &str,
    svc: &mut Value,
    held: &[i64],
    taken: &mut Taken,
) -> ApiResult<()> {
    if !needs_health_check_node_port(svc) {
        return Ok(());
    }
    let asked = health_check_node_port(svc);
    if asked.is_some_and(|p| held.contains(&p)) {
        return Ok(());
    }
    let field = "spec.healthCheckNodePort";
    let port = take_node_port(state, ranges, ns, name, field, asked, taken).await?;
    if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("healthCheckNodePort".into(), json!(port));
    }
    Ok(())
}

fn health_check_node_port(svc: &Value) -> Option<i64> {
    svc.pointer("/spec/healthCheckNodePort")
        .and_then(Value::as_i64)
        .filter(|p| *p != 0)
}

/// Takes node port `asked` (422 on `field` if out of range or taken) or,
/// without one, a free one.
async fn take_node_port(
    state: &AppState,
    ranges: &ServiceRanges,
    ns: &str,
    name: &str,
    field: &str,
    asked: Option<i64>,
    taken: &mut Taken,
) -> ApiResult<i64> {
    let Some(p) = asked else {
        let p = take_free_port(state, ranges, ns, name).await?;
        taken.keys.push(format!("{PORTS}{p}"));
        return Ok(i64::from(p));
    };
    if p < i64::from(ranges.node_ports.0) || p > i64::from(ranges.node_ports.1) {
        return Err(invalid(
            name,
            field,
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
        Ok(_) => {
            taken.keys.push(key);
            Ok(p)
        }
        Err(StoreError::AlreadyExists { .. }) => Err(invalid(
            name,
            field,
            json!(p),
            "provided port is already allocated",
        )),
        Err(e) => Err(e.into()),
    }
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

/// The allocation keys a service holds: its cluster IP and node ports.
fn held_keys(svc: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(ip) = svc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .filter(|ip| *ip != "None" && !ip.is_empty())
    {
        keys.push(format!("{IPS}{ip}"));
    }
    for p in node_ports(svc) {
        keys.push(format!("{PORTS}{p}"));
    }
    keys
}

/// The node ports a service holds: its ports' and its health check's.
fn node_ports(svc: &Value) -> Vec<i64> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|port| port.get("nodePort").and_then(Value::as_i64))
        .chain(health_check_node_port(svc))
        .filter(|p| *p != 0)
        .collect()
}

/// Releases what a deleted service held.
pub async fn release_service(state: &AppState, svc: &Value) {
    let ns = registry::meta(svc, "namespace").unwrap_or_default();
    let name = registry::meta(svc, "name").unwrap_or_default();
    release_held(state, &ns, &name, held_keys(svc)).await;
}

/// Releases `keys` that service `ns/name` holds (a key may already belong to
/// a newer service after a repair: that one is left alone).
async fn release_held(state: &AppState, ns: &str, name: &str, keys: Vec<String>) {
    for key in keys {
        if let Ok(Some(kv)) = state.store().get(&key).await
            && let Ok(v) = serde_json::from_slice::<Value>(&kv.value)
            && v["namespace"] == ns
            && v["name"] == name
        {
            let _ = state.store().delete(&key, Some(kv.mod_revision)).await;
        }
    }
}

fn service_type(svc: &Value) -> &str {
    svc.pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
}

/// Every type but ExternalName has a cluster IP (or `None`).
fn needs_cluster_ip(svc: &Value) -> bool {
    service_type(svc) != "ExternalName"
}

fn needs_node_port(svc: &Value) -> bool {
    matches!(service_type(svc), "NodePort" | "LoadBalancer")
}

fn needs_health_check_node_port(svc: &Value) -> bool {
    service_type(svc) == "LoadBalancer"
        && svc
            .pointer("/spec/externalTrafficPolicy")
            .and_then(Value::as_str)
            == Some("Local")
}

fn externally_accessible(svc: &Value) -> bool {
    needs_node_port(svc)
        || svc
            .pointer("/spec/externalIPs")
            .and_then(Value::as_array)
            .is_some_and(|ips| !ips.is_empty())
}

/// What a service update does before validation, as upstream's service
/// strategy and storage do (`dropTypeDependentFields`, then
/// `patchAllocatedValues`): fields the new type no longer uses are dropped
/// when the client left them as they were (a changed value is the client's
/// and meets validation), the load-balancer status goes with the
/// `LoadBalancer` type, and allocated values the client left out (a `PUT`
/// of a manifest without `clusterIP` or `nodePort`) are kept.
pub fn prepare_update(old: &Value, new: &mut Value) {
    let same = |new: &Value, ptr: &str| old.pointer(ptr) == new.pointer(ptr);
    let remove = |new: &mut Value, field: &str| {
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove(field);
        }
    };
    // Dropping what the new type does not use.
    if needs_cluster_ip(old) && !needs_cluster_ip(new) {
        if same(new, "/spec/clusterIP") && same(new, "/spec/clusterIPs") {
            remove(new, "clusterIP");
            remove(new, "clusterIPs");
        }
        if same(new, "/spec/ipFamilies") {
            remove(new, "ipFamilies");
        }
        if same(new, "/spec/ipFamilyPolicy") {
            remove(new, "ipFamilyPolicy");
        }
    }
    if needs_node_port(old)
        && !needs_node_port(new)
        && node_ports_by_index(old) == node_ports_by_index(new)
    {
        for port in ports_mut(new) {
            if let Some(m) = port.as_object_mut() {
                m.remove("nodePort");
            }
        }
    }
    if needs_health_check_node_port(old)
        && !needs_health_check_node_port(new)
        && same(new, "/spec/healthCheckNodePort")
    {
        remove(new, "healthCheckNodePort");
    }
    if service_type(old) == "LoadBalancer" && service_type(new) != "LoadBalancer" {
        for field in ["allocateLoadBalancerNodePorts", "loadBalancerClass"] {
            if same(new, &format!("/spec/{field}")) {
                remove(new, field);
            }
        }
    }
    if externally_accessible(old)
        && !externally_accessible(new)
        && same(new, "/spec/externalTrafficPolicy")
    {
        remove(new, "externalTrafficPolicy");
    }
    if service_type(new) != "LoadBalancer"
        && let Some(status) = new.get_mut("status").and_then(Value::as_object_mut)
        && status.contains_key("loadBalancer")
    {
        status.insert("loadBalancer".into(), json!({}));
    }
    // Keeping allocated values the client left out.
    if needs_cluster_ip(old) && needs_cluster_ip(new) {
        for field in ["clusterIP", "clusterIPs"] {
            let missing = new.pointer(&format!("/spec/{field}")).is_none_or(|v| {
                v.is_null() || v.as_str() == Some("") || v.as_array().is_some_and(Vec::is_empty)
            });
            if missing
                && let Some(v) = old.pointer(&format!("/spec/{field}")).cloned()
                && let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut)
            {
                spec.insert(field.into(), v);
            }
        }
    }
    if needs_node_port(old) && needs_node_port(new) {
        let in_use: Vec<i64> = node_ports(new);
        let by_name: Vec<(String, i64)> = old
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let np = p.get("nodePort").and_then(Value::as_i64)?;
                let name = p.get("name").and_then(Value::as_str).unwrap_or("");
                Some((name.to_string(), np))
            })
            .collect();
        for port in ports_mut(new) {
            let Some(m) = port.as_object_mut() else {
                continue;
            };
            if m.get("nodePort")
                .and_then(Value::as_i64)
                .is_some_and(|p| p != 0)
            {
                continue;
            }
            let name = m
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if let Some((_, np)) = by_name.iter().find(|(n, _)| *n == name)
                && !in_use.contains(np)
            {
                m.insert("nodePort".into(), json!(np));
            }
        }
    }
    if needs_health_check_node_port(old)
        && needs_health_check_node_port(new)
        && new
            .pointer("/spec/healthCheckNodePort")
            .is_none_or(|v| v.as_i64().unwrap_or(0) == 0)
        && let Some(v) = old.pointer("/spec/healthCheckNodePort").cloned()
        && let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.insert("healthCheckNodePort".into(), v);
    }
}

fn node_ports_by_index(svc: &Value) -> Vec<Option<i64>> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| p.get("nodePort").and_then(Value::as_i64))
        .collect()
}

fn ports_mut(svc: &mut Value) -> impl Iterator<Item = &mut Value> {
    svc.pointer_mut("/spec/ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

/// What a service update took and what it gives back once committed.
#[derive(Debug, Default)]
pub struct Reallocation {
    /// Newly taken: released if the update does not commit.
    pub taken: Taken,
    /// Held by the old service and no longer by the new one: released once
    /// the update committed.
    release: Vec<String>,
}

impl Reallocation {
    /// The update committed: frees what the service no longer holds.
    pub async fn committed(self, state: &AppState, ns: &str, name: &str) {
        release_held(state, ns, name, self.release).await;
    }
}

/// Takes what the updated service needs and did not hold (after
/// [`prepare_update`]): a cluster IP when it stops being ExternalName, node
/// ports for ports without one or with one it did not hold (422 if out of
/// range or taken).
pub async fn allocate_update(
    state: &AppState,
    ns: &str,
    old: &Value,
    new: &mut Value,
) -> ApiResult<Reallocation> {
    let ranges = state.service_ranges();
    let name = registry::meta(new, "name").unwrap_or_default();
    let mut taken = Taken::default();
    let result = if !needs_cluster_ip(old) && needs_cluster_ip(new) {
        // An ExternalName service held nothing: allocate as a create does.
        allocate_into(state, &ranges, ns, &name, new, &mut taken).await
    } else if needs_node_port(new) {
        let held = if needs_node_port(old) {
            node_ports(old)
        } else {
            Vec::new()
        };
        let mut result = Ok(());
        let mut i = 0;
        for port in ports_mut(new) {
            let asked = port
                .get("nodePort")
                .and_then(Value::as_i64)
                .filter(|p| *p != 0);
            if asked.is_some_and(|p| held.contains(&p)) {
                i += 1;
                continue;
            }
            let field = format!("spec.ports[{i}].nodePort");
            match take_node_port(state, &ranges, ns, &name, &field, asked, &mut taken).await {
                Ok(p) => {
                    if let Some(m) = port.as_object_mut() {
                        m.insert("nodePort".into(), json!(p));
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            i += 1;
        }
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            spec.entry("externalTrafficPolicy")
                .or_insert(json!("Cluster"));
        }
        match result {
            Ok(()) => {
                take_health_check_node_port(state, &ranges, ns, &name, new, &held, &mut taken).await
            }
            err => err,
        }
    } else {
        Ok(())
    };
    if let Err(e) = result {
        taken.release(state).await;
        return Err(e);
    }
    let still = held_keys(new);
    let release = held_keys(old)
        .into_iter()
        .filter(|k| !still.contains(k))
        .collect();
    Ok(Reallocation { taken, release })
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
                    ip == Some(what) || node_ports(&svc).iter().any(|p| p.to_string() == what)
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

    fn node_port_svc() -> Value {
        json!({
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "10.43.0.20",
                "clusterIPs": ["10.43.0.20"],
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "externalTrafficPolicy": "Cluster",
                "allocateLoadBalancerNodePorts": true,
                "ports": [
                    {"name": "http", "port": 80, "nodePort": 30080},
                    {"name": "https", "port": 443, "nodePort": 30443}
                ]
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "192.168.1.2"}]}}
        })
    }

    #[test]
    fn a_service_update_drops_what_the_new_type_no_longer_uses() {
        let old = node_port_svc();
        // To ClusterIP, the rest as it was: node ports, policy, LB fields
        // and the LB status go; the cluster IP stays.
        let mut new = old.clone();
        new["spec"]["type"] = json!("ClusterIP");
        prepare_update(&old, &mut new);
        assert_eq!(new["spec"]["ports"][0].get("nodePort"), None);
        assert_eq!(new["spec"]["ports"][1].get("nodePort"), None);
        for gone in ["externalTrafficPolicy", "allocateLoadBalancerNodePorts"] {
            assert_eq!(new["spec"].get(gone), None, "{gone}");
        }
        assert_eq!(new["spec"]["clusterIP"], "10.43.0.20");
        assert_eq!(new["status"]["loadBalancer"], json!({}));
        // A node port the client changed is the client's: validation
        // answers it.
        let mut changed = old.clone();
        changed["spec"]["type"] = json!("ClusterIP");
        changed["spec"]["ports"][0]["nodePort"] = json!(30099);
        prepare_update(&old, &mut changed);
        assert_eq!(changed["spec"]["ports"][0]["nodePort"], 30099);
        // To ExternalName: the cluster IP and families go too.
        let mut ext = old.clone();
        ext["spec"]["type"] = json!("ExternalName");
        ext["spec"]["externalName"] = json!("example.com");
        prepare_update(&old, &mut ext);
        for gone in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            assert_eq!(ext["spec"].get(gone), None, "{gone}");
        }
        // LoadBalancer to NodePort keeps the node ports, drops the status.
        let mut np = old.clone();
        np["spec"]["type"] = json!("NodePort");
        prepare_update(&old, &mut np);
        assert_eq!(np["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(np["status"]["loadBalancer"], json!({}));
    }

    #[test]
    fn a_service_update_keeps_allocated_values_the_client_left_out() {
        let old = node_port_svc();
        let mut new = old.clone();
        let spec = new["spec"].as_object_mut().unwrap();
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
        // Ports reordered and one renamed away: node ports follow names,
        // never a port another port still uses.
        new["spec"]["ports"] = json!([
            {"name": "https", "port": 443},
            {"name": "http", "port": 80, "nodePort": 30443},
            {"name": "metrics", "port": 9090}
        ]);
        prepare_update(&old, &mut new);
        assert_eq!(new["spec"]["clusterIP"], "10.43.0.20");
        assert_eq!(new["spec"]["clusterIPs"], json!(["10.43.0.20"]));
        assert_eq!(
            new["spec"]["ports"][0].get("nodePort"),
            None,
            "30443 is taken by http"
        );
        assert_eq!(new["spec"]["ports"][1]["nodePort"], 30443);
        assert_eq!(new["spec"]["ports"][2].get("nodePort"), None);
        // From ClusterIP nothing is carried over.
        let mut cip = json!({"spec": {"type": "ClusterIP", "clusterIP": "10.43.0.7",
            "ports": [{"port": 80}]}});
        let before = cip.clone();
        cip["spec"]["type"] = json!("NodePort");
        prepare_update(&before, &mut cip);
        assert_eq!(cip["spec"]["ports"][0].get("nodePort"), None);
        assert_eq!(cip["spec"]["clusterIP"], "10.43.0.7");
    }

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
