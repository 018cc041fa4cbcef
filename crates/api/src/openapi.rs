//! OpenAPI documents for the served API, generated from the Rust API types
//! (`k8s-openapi` with its `schemars` schemas), not written by hand.
//!
//! - [`v3_document`]: `/openapi/v3/apis/<group>/<version>` (and
//!   `/openapi/v3/api/v1`): `components.schemas` with every type reachable
//!   from the group-version's kinds, each top-level kind tagged with
//!   `x-kubernetes-group-version-kind` (what `kubectl explain` looks for),
//!   and `paths` whose operations carry `x-kubernetes-group-version-kind` and
//!   a `fieldValidation` parameter (what kubectl checks before it leaves
//!   validation to the server).
//! - [`v2_document`]: `/openapi/v2`, one Swagger 2.0 document for everything.
//! - Strategic-merge-patch metadata (`x-kubernetes-patch-merge-key`,
//!   `x-kubernetes-patch-strategy`) from [`crate::patch_meta`].

use std::collections::BTreeMap;

use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use crate::patch_meta;

/// (group, version, kind) → schema definition name.
type KindNames = BTreeMap<(String, String, String), String>;

/// What the documents need to know about one served resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceDoc<'a> {
    pub group: &'a str,
    pub version: &'a str,
    pub kind: &'a str,
    pub plural: &'a str,
    pub namespaced: bool,
    /// Kubernetes verbs: get, list, watch, create, update, patch, delete,
    /// deletecollection.
    pub verbs: &'a [&'a str],
}

macro_rules! kinds {
    ($($group:literal $version:literal $kind:literal => $ty:ty;)*) => {
        /// Adds the schema of a known kind to `generator`; returns the
        /// definition name, or `None` for a kind without Rust types.
        fn add_kind(generator: &mut SchemaGenerator, group: &str, version: &str, kind: &str) -> Option<String> {
            match (group, version, kind) {
                $(($group, $version, $kind) => {
                    generator.subschema_for::<$ty>();
                    Some(<$ty as schemars::JsonSchema>::schema_name().into_owned())
                })*
                _ => None,
            }
        }

        /// Adds a kind's schema (and everything it references) to a generator.
        pub(crate) fn add_kind_to(generator: &mut SchemaGenerator, group: &str, version: &str, kind: &str) {
            let _ = add_kind(generator, group, version, kind);
        }

        /// Every (group, version, kind) with Rust types.
        pub fn known_kinds() -> &'static [(&'static str, &'static str, &'static str)] {
            &[$(($group, $version, $kind),)*]
        }
    };
}

use k8s_openapi::api as k;

kinds! {
    "" "v1" "Namespace" => k::core::v1::Namespace;
    "" "v1" "Pod" => k::core::v1::Pod;
    "" "v1" "Node" => k::core::v1::Node;
    "" "v1" "Service" => k::core::v1::Service;
    "" "v1" "Endpoints" => k::core::v1::Endpoints;
    "" "v1" "ConfigMap" => k::core::v1::ConfigMap;
    "" "v1" "Secret" => k::core::v1::Secret;
    "" "v1" "ServiceAccount" => k::core::v1::ServiceAccount;
    "" "v1" "Event" => k::core::v1::Event;
    "" "v1" "ReplicationController" => k::core::v1::ReplicationController;
    "" "v1" "ResourceQuota" => k::core::v1::ResourceQuota;
    "" "v1" "LimitRange" => k::core::v1::LimitRange;
    "" "v1" "PersistentVolume" => k::core::v1::PersistentVolume;
    "" "v1" "PersistentVolumeClaim" => k::core::v1::PersistentVolumeClaim;
    "" "v1" "Binding" => k::core::v1::Binding;
    "apps" "v1" "Deployment" => k::apps::v1::Deployment;
    "apps" "v1" "ReplicaSet" => k::apps::v1::ReplicaSet;
    "apps" "v1" "StatefulSet" => k::apps::v1::StatefulSet;
    "apps" "v1" "DaemonSet" => k::apps::v1::DaemonSet;
    "apps" "v1" "ControllerRevision" => k::apps::v1::ControllerRevision;
    "batch" "v1" "Job" => k::batch::v1::Job;
    "batch" "v1" "CronJob" => k::batch::v1::CronJob;
    "coordination.k8s.io" "v1" "Lease" => k::coordination::v1::Lease;
    "discovery.k8s.io" "v1" "EndpointSlice" => k::discovery::v1::EndpointSlice;
    "events.k8s.io" "v1" "Event" => k::events::v1::Event;
    "policy" "v1" "PodDisruptionBudget" => k::policy::v1::PodDisruptionBudget;
    "policy" "v1" "Eviction" => k::policy::v1::Eviction;
    "networking.k8s.io" "v1" "Ingress" => k::networking::v1::Ingress;
    "networking.k8s.io" "v1" "IngressClass" => k::networking::v1::IngressClass;
    "networking.k8s.io" "v1" "NetworkPolicy" => k::networking::v1::NetworkPolicy;
    "rbac.authorization.k8s.io" "v1" "Role" => k::rbac::v1::Role;
    "rbac.authorization.k8s.io" "v1" "RoleBinding" => k::rbac::v1::RoleBinding;
    "rbac.authorization.k8s.io" "v1" "ClusterRole" => k::rbac::v1::ClusterRole;
    "rbac.authorization.k8s.io" "v1" "ClusterRoleBinding" => k::rbac::v1::ClusterRoleBinding;
    "scheduling.k8s.io" "v1" "PriorityClass" => k::scheduling::v1::PriorityClass;
    "storage.k8s.io" "v1" "StorageClass" => k::storage::v1::StorageClass;
    "autoscaling" "v1" "Scale" => k::autoscaling::v1::Scale;
    "authentication.k8s.io" "v1" "TokenRequest" => k::authentication::v1::TokenRequest;
}

/// The definition name of a kind's schema (`io.k8s.api.core.v1.Pod`).
pub fn definition_name(group: &str, version: &str, kind: &str) -> Option<String> {
    // Built once: making a schema generator per call cost a fifth of the
    // API server's CPU under write load (it is asked on every write).
    static NAMES: std::sync::OnceLock<
        BTreeMap<(&'static str, &'static str, &'static str), String>,
    > = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        known_kinds()
            .iter()
            .filter_map(|&(g, v, k)| {
                let mut generator = SchemaSettings::openapi3().into_generator();
                add_kind(&mut generator, g, v, k).map(|name| ((g, v, k), name))
            })
            .collect()
    });
    if let Some(name) = names.get(&(group, version, kind)) {
        return Some(name.clone());
    }
    let mut generator = SchemaSettings::openapi3().into_generator();
    add_kind(&mut generator, group, version, kind)
}

/// All schema definitions for the given kinds, with `$ref`s under
/// `ref_prefix` (`/components/schemas` or `/definitions`), tagged with their
/// group-version-kind and patch metadata. Returns (definitions, kind →
/// definition name).
fn definitions(
    resources: &[(String, String, String)],
    settings: SchemaSettings,
) -> (Map<String, Value>, KindNames) {
    let mut generator = settings.into_generator();
    let mut names = BTreeMap::new();
    for (g, v, kd) in resources {
        if let Some(name) = add_kind(&mut generator, g, v, kd) {
            names.insert((g.clone(), v.clone(), kd.clone()), name);
        }
    }
    let mut defs = generator.take_definitions(true);
    for ((g, v, kd), name) in &names {
        if let Some(Value::Object(schema)) = defs.get_mut(name) {
            let entry = schema
                .entry("x-kubernetes-group-version-kind")
                .or_insert_with(|| json!([]));
            if let Value::Array(list) = entry {
                let gvk = json!({"group": g, "version": v, "kind": kd});
                if !list.contains(&gvk) {
                    list.push(gvk);
                }
            }
        }
    }
    for (def, field, strategy, key) in patch_meta::ALL {
        if let Some(Value::Object(schema)) = defs.get_mut(*def)
            && let Some(Value::Object(prop)) =
                schema.get_mut("properties").and_then(|p| p.get_mut(*field))
        {
            prop.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
            if !key.is_empty() {
                prop.insert("x-kubernetes-patch-merge-key".into(), json!(key));
            }
        }
    }
    (defs, names)
}

fn base_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    }
}

fn param(name: &str, location: &str, description: &str, v3: bool) -> Value {
    if v3 {
        json!({"name": name, "in": location, "description": description,
               "required": location == "path", "schema": {"type": "string", "uniqueItems": true}})
    } else {
        json!({"name": name, "in": location, "description": description,
               "required": location == "path", "type": "string", "uniqueItems": true})
    }
}

const FIELD_VALIDATION: &str = "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore - Warn - Strict";
const DRY_RUN: &str = "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed";
const FIELD_MANAGER: &str =
    "fieldManager is a name associated with the actor or entity that is making these changes.";

/// The operations of one resource, keyed by path.
fn paths_for(r: &ResourceDoc<'_>, schema_ref: Option<&str>, v3: bool) -> Vec<(String, Value)> {
    let base = base_path(r.group, r.version);
    let collection = if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{base}/{}", r.plural)
    };
    let item = format!("{collection}/{{name}}");
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let object_schema = match schema_ref {
        Some(reference) => json!({"$ref": reference}),
        None => json!({"type": "object"}),
    };
    let response = |schema: &Value| -> Value {
        if v3 {
            json!({"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}})
        } else {
            json!({"200": {"description": "OK", "schema": schema}})
        }
    };
    let body = |types: &[&str]| -> Value {
        let mut content = Map::new();
        for t in types {
            content.insert((*t).into(), json!({"schema": object_schema}));
        }
        json!({"required": true, "content": content})
    };
    let has = |verb: &str| r.verbs.contains(&verb);
    let op_id = |verb: &str, scope: &str| -> String {
        let group = r.group.split('.').next().unwrap_or("");
        let mut id = format!(
            "{verb}{}",
            capitalise(if group.is_empty() { "core" } else { group })
        );
        id.push_str(&capitalise(r.version));
        id.push_str(scope);
        id.push_str(r.kind);
        id
    };
    let scope = if r.namespaced { "Namespaced" } else { "" };
    let mut write_params = vec![
        param("dryRun", "query", DRY_RUN, v3),
        param("fieldManager", "query", FIELD_MANAGER, v3),
        param("fieldValidation", "query", FIELD_VALIDATION, v3),
    ];
    let mut out = Vec::new();

    let mut coll = Map::new();
    if has("list") {
        coll.insert(
            "get".into(),
            json!({"operationId": op_id("list", scope), "x-kubernetes-action": "list",
                   "x-kubernetes-group-version-kind": gvk, "responses": response(&json!({"type": "object"}))}),
        );
    }
    if has("create") {
        let mut op = json!({"operationId": op_id("create", scope), "x-kubernetes-action": "post",
                            "x-kubernetes-group-version-kind": gvk, "parameters": write_params,
                            "responses": response(&object_schema)});
        if v3 {
            op["requestBody"] = body(&["application/json", "application/yaml"]);
        } else {
            let mut params = write_params.clone();
            params.push(
                json!({"name": "body", "in": "body", "required": true, "schema": object_schema}),
            );
            op["parameters"] = Value::Array(params);
        }
        coll.insert("post".into(), op);
    }
    if has("deletecollection") {
        coll.insert(
            "delete".into(),
            json!({"operationId": op_id("deletecollection", scope), "x-kubernetes-action": "deletecollection",
                   "x-kubernetes-group-version-kind": gvk, "responses": response(&json!({"type": "object"}))}),
        );
    }
    if !coll.is_empty() {
        let mut params = Vec::new();
        if r.namespaced {
            params.push(param(
                "namespace",
                "path",
                "object name and auth scope, such as for teams and projects",
                v3,
            ));
        }
        coll.insert("parameters".into(), Value::Array(params));
        out.push((collection, Value::Object(coll)));
    }

    let mut one = Map::new();
    if has("get") {
        one.insert(
            "get".into(),
            json!({"operationId": op_id("read", scope), "x-kubernetes-action": "get",
                   "x-kubernetes-group-version-kind": gvk, "responses": response(&object_schema)}),
        );
    }
    if has("update") {
        let mut op = json!({"operationId": op_id("replace", scope), "x-kubernetes-action": "put",
                            "x-kubernetes-group-version-kind": gvk, "parameters": write_params,
                            "responses": response(&object_schema)});
        if v3 {
            op["requestBody"] = body(&["application/json", "application/yaml"]);
        }
        one.insert("put".into(), op);
    }
    if has("patch") {
        write_params.push(param(
            "force",
            "query",
            "Force is going to \"force\" Apply requests.",
            v3,
        ));
        let mut op = json!({"operationId": op_id("patch", scope), "x-kubernetes-action": "patch",
                            "x-kubernetes-group-version-kind": gvk, "parameters": write_params,
                            "responses": response(&object_schema)});
        if v3 {
            op["requestBody"] = body(&[
                "application/apply-patch+yaml",
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ]);
        }
        one.insert("patch".into(), op);
    }
    if has("delete") {
        one.insert(
            "delete".into(),
            json!({"operationId": op_id("delete", scope), "x-kubernetes-action": "delete",
                   "x-kubernetes-group-version-kind": gvk, "responses": response(&json!({"type": "object"}))}),
        );
    }
    if !one.is_empty() {
        let mut params = vec![param(
            "name",
            "path",
            &format!("name of the {}", r.kind),
            v3,
        )];
        if r.namespaced {
            params.push(param(
                "namespace",
                "path",
                "object name and auth scope, such as for teams and projects",
                v3,
            ));
        }
        one.insert("parameters".into(), Value::Array(params));
        out.push((item, Value::Object(one)));
    }
    out
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn kinds_of(resources: &[ResourceDoc<'_>]) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = resources
        .iter()
        .map(|r| {
            (
                r.group.to_string(),
                r.version.to_string(),
                r.kind.to_string(),
            )
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The OpenAPI v3 document of one group-version.
pub fn v3_document(
    group: &str,
    version: &str,
    resources: &[ResourceDoc<'_>],
    server_version: &str,
) -> Value {
    let mine: Vec<ResourceDoc<'_>> = resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .copied()
        .collect();
    let (defs, names) = definitions(&kinds_of(&mine), SchemaSettings::openapi3());
    let mut paths = Map::new();
    for r in &mine {
        let reference = names
            .get(&(
                r.group.to_string(),
                r.version.to_string(),
                r.kind.to_string(),
            ))
            .map(|n| format!("#/components/schemas/{n}"));
        for (path, item) in paths_for(r, reference.as_deref(), true) {
            paths.insert(path, item);
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": server_version},
        "paths": paths,
        "components": {"schemas": defs},
    })
}

/// The OpenAPI v2 (Swagger) document of everything served.
pub fn v2_document(resources: &[ResourceDoc<'_>], server_version: &str) -> Value {
    let settings = SchemaSettings::openapi3().with(|s| s.definitions_path = "/definitions".into());
    let (defs, names) = definitions(&kinds_of(resources), settings);
    let mut paths = Map::new();
    for r in resources {
        let reference = names
            .get(&(
                r.group.to_string(),
                r.version.to_string(),
                r.kind.to_string(),
            ))
            .map(|n| format!("#/definitions/{n}"));
        for (path, item) in paths_for(r, reference.as_deref(), false) {
            paths.insert(path, item);
        }
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": server_version},
        "paths": paths,
        "definitions": defs,
    })
}

/// The `/openapi/v3` index: one entry per group-version, pointing at its
/// document with a content hash (clients cache by it).
pub fn v3_index(entries: &[(String, String)]) -> Value {
    let mut paths = Map::new();
    for (path, hash) in entries {
        paths.insert(
            path.trim_start_matches('/').to_string(),
            json!({"serverRelativeURL": format!("/openapi/v3/{}?hash={hash}", path.trim_start_matches('/'))}),
        );
    }
    json!({"paths": paths})
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOY: ResourceDoc<'static> = ResourceDoc {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        namespaced: true,
        verbs: &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ],
    };

    #[test]
    fn v3_document_tags_kinds_and_offers_field_validation() {
        let doc = v3_document("apps", "v1", &[DEPLOY], "v1.33.0");
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let deploy = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deploy["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
        );
        // Nested types are there too, by reference.
        assert!(schemas.contains_key("io.k8s.api.core.v1.PodSpec"));
        assert!(schemas.contains_key("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"));
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        let names: Vec<&str> = patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"fieldValidation"), "{names:?}");
        // Every $ref points at a definition that exists.
        let text = doc.to_string();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(schemas.contains_key(name), "dangling $ref {name}");
        }
    }

    #[test]
    fn every_known_kind_has_a_schema() {
        for (g, v, kd) in known_kinds() {
            assert!(definition_name(g, v, kd).is_some(), "{g}/{v} {kd}");
        }
    }

    #[test]
    fn v2_document_uses_definitions_refs() {
        let doc = v2_document(&[DEPLOY], "v1.33.0");
        assert_eq!(doc["swagger"], "2.0");
        assert!(doc["definitions"]["io.k8s.api.apps.v1.Deployment"].is_object());
        assert!(!doc.to_string().contains("#/components/schemas/"));
    }
}
