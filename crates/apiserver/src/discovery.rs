//! Discovery documents, generated from the resource table: `/version`,
//! `/api`, `/apis`, the per-group-version resource lists and the aggregated
//! `apidiscovery.k8s.io/v2` documents kubectl 1.32 asks for first.

use axum::http::HeaderMap;
use serde_json::{Value, json};

use crate::resources::{self, ResourceDef, VERBS};

/// The Kubernetes version skiff's API corresponds to.
pub const KUBERNETES_MAJOR: &str = "1";
pub const KUBERNETES_MINOR: &str = "32";

/// The media type of the aggregated discovery document (v2).
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// True when `Accept` lists the v2 aggregated discovery media type.
pub fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let params: Vec<&str> = parts.collect();
            media == "application/json"
                && params.contains(&"g=apidiscovery.k8s.io")
                && params.contains(&"v=v2")
                && params.contains(&"as=APIGroupDiscoveryList")
        })
}

pub fn version() -> Value {
    json!({
        "major": KUBERNETES_MAJOR,
        "minor": KUBERNETES_MINOR,
        "gitVersion": format!("v{KUBERNETES_MAJOR}.{KUBERNETES_MINOR}.0+skiff"),
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `GET /api`: the legacy group's versions.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_doc(group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
    })
}

/// `GET /apis`: every named group.
pub fn api_groups() -> Value {
    let groups: Vec<Value> = resources::groups()
        .iter()
        .map(|(g, versions)| group_doc(g, versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`.
pub fn api_group(group: &str) -> Option<Value> {
    let (g, versions) = resources::groups().into_iter().find(|(g, _)| *g == group)?;
    let mut doc = group_doc(g, &versions);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `GET /api/v1`, `GET /apis/<group>/<version>`.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = resources::in_group_version(group, version).collect();
    if defs.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for d in defs {
        let mut r = json!({
            "name": d.plural,
            "singularName": d.singular,
            "namespaced": d.namespaced,
            "kind": d.kind,
            "verbs": VERBS,
        });
        if !d.short_names.is_empty() {
            r["shortNames"] = json!(d.short_names);
        }
        if !d.categories.is_empty() {
            r["categories"] = json!(d.categories);
        }
        list.push(r);
        for sub in d.subresources {
            let (group, version, kind) = sub.response_kind(d);
            let mut r = json!({
                "name": format!("{}/{}", d.plural, sub.name()),
                "singularName": "",
                "namespaced": d.namespaced,
                "kind": kind,
                "verbs": sub.verbs(),
            });
            if (group, version) != (d.group, d.version) {
                r["group"] = json!(group);
                r["version"] = json!(version);
            }
            list.push(r);
        }
    }
    if (group, version) == ("", "v1") {
        // `bindings` is create-only and has no stored objects, so it is
        // not in the resource table.
        list.push(json!({
            "name": "bindings",
            "singularName": "binding",
            "namespaced": true,
            "kind": "Binding",
            "verbs": ["create"],
        }));
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": list,
    }))
}

fn aggregated_resource(d: &ResourceDef) -> Value {
    let mut r = json!({
        "resource": d.plural,
        "responseKind": {"group": d.group, "version": d.version, "kind": d.kind},
        "scope": if d.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": d.singular,
        "verbs": VERBS,
    });
    if !d.short_names.is_empty() {
        r["shortNames"] = json!(d.short_names);
    }
    if !d.categories.is_empty() {
        r["categories"] = json!(d.categories);
    }
    if !d.subresources.is_empty() {
        r["subresources"] = Value::Array(
            d.subresources
                .iter()
                .map(|s| {
                    let (group, version, kind) = s.response_kind(d);
                    json!({
                        "subresource": s.name(),
                        "responseKind": {"group": group, "version": version, "kind": kind},
                        "verbs": s.verbs(),
                    })
                })
                .collect(),
        );
    }
    r
}

fn aggregated_group(group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let mut resources: Vec<Value> = resources::in_group_version(group, v)
                .map(aggregated_resource)
                .collect();
            if (group, *v) == ("", "v1") {
                resources.push(json!({
                    "resource": "bindings",
                    "responseKind": {"group": "", "version": "v1", "kind": "Binding"},
                    "scope": "Namespaced",
                    "singularResource": "binding",
                    "verbs": ["create"],
                }));
            }
            json!({
                "version": v,
                "resources": resources,
                "freshness": "Current",
            })
        })
        .collect();
    json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
}

fn aggregated_list(items: Vec<Value>) -> Value {
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

/// The aggregated document of `/api` (the core group).
pub fn aggregated_core() -> Value {
    aggregated_list(vec![aggregated_group("", &["v1"])])
}

/// The aggregated document of `/apis` (every named group).
pub fn aggregated_groups() -> Value {
    aggregated_list(
        resources::groups()
            .iter()
            .map(|(g, versions)| aggregated_group(g, versions))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn aggregated_discovery_is_chosen_only_for_the_v2_media_type() {
        let cases = [
            (
                "kubectl 1.32",
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json",
                true,
            ),
            (
                "only v2beta1",
                "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json",
                false,
            ),
            ("plain json", "application/json", false),
            (
                "with spaces",
                "application/json; g=apidiscovery.k8s.io; v=v2; as=APIGroupDiscoveryList",
                true,
            ),
        ];
        for (name, accept, want) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(axum::http::header::ACCEPT, HeaderValue::from_static(accept));
            assert_eq!(wants_aggregated(&headers), want, "{name}");
        }
    }

    #[test]
    fn discovery_lists_every_table_resource_once() {
        let core = aggregated_core();
        let groups = aggregated_groups();
        let mut count = 0;
        for doc in [&core, &groups] {
            for item in doc["items"].as_array().into_iter().flatten() {
                for v in item["versions"].as_array().into_iter().flatten() {
                    count += v["resources"].as_array().map_or(0, Vec::len);
                }
            }
        }
        // Every table resource, and the create-only `bindings`.
        assert_eq!(count, resources::RESOURCES.len() + 1);
        let apps = resource_list("apps", "v1").expect("apps/v1");
        assert!(
            apps["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["name"] == "deployments/status")
        );
        assert!(resource_list("nope", "v1").is_none());
    }
}
