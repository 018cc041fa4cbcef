//! The three patch types kubectl sends, applied to an object as JSON. Pure
//! functions, no IO.
//!
//! Strategic merge patch is approximated without per-type schemas: lists are
//! merged by a merge key chosen from the field name (the keys Kubernetes'
//! types declare for the commonly patched lists: `containers` by `name`,
//! `volumeMounts` by `mountPath`, …); other lists are replaced, as merge patch
//! does. The directives kubectl emits (`$patch`, `$setElementOrder/…`,
//! `$retainKeys`, `$deleteFromPrimitiveList/…`) are honoured or removed so they
//! never reach storage.

use serde_json::{Map, Value};

/// The patch formats, by request `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    StrategicMerge,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let media = ct.split(';').next().unwrap_or_default().trim();
        match media {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            _ => None,
        }
    }
}

/// Why a patch could not be applied; rendered as 400 or 422 by the caller.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("error decoding patch: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("the server rejected our request due to an error in our request: {0}")]
    Apply(#[source] json_patch::PatchError),
    #[error("invalid patch: {0}")]
    Invalid(String),
}

/// Applies `patch` (the request body) of type `ty` to `target`.
pub fn apply(ty: PatchType, target: &Value, patch: &[u8]) -> Result<Value, PatchError> {
    match ty {
        PatchType::Json => {
            let ops: json_patch::Patch =
                serde_json::from_slice(patch).map_err(PatchError::Decode)?;
            let mut doc = target.clone();
            json_patch::patch(&mut doc, &ops).map_err(PatchError::Apply)?;
            Ok(doc)
        }
        PatchType::Merge => {
            let patch: Value = serde_json::from_slice(patch).map_err(PatchError::Decode)?;
            if !patch.is_object() {
                return Err(PatchError::Invalid(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            let mut doc = target.clone();
            json_patch::merge(&mut doc, &patch);
            Ok(doc)
        }
        PatchType::StrategicMerge => {
            let patch: Value = serde_json::from_slice(patch).map_err(PatchError::Decode)?;
            let Value::Object(patch) = patch else {
                return Err(PatchError::Invalid(
                    "a strategic merge patch must be a JSON object".into(),
                ));
            };
            let mut doc = target.clone();
            strategic_merge_object(&mut doc, &patch)?;
            Ok(doc)
        }
    }
}

/// The merge key of list field `field` whose elements look like `sample`,
/// from Kubernetes' `patchMergeKey` tags.
pub(crate) fn merge_key(field: &str, sample: &Map<String, Value>) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "hostAliases" => Some("ip"),
        "conditions" => Some("type"),
        "addresses" if sample.contains_key("type") && sample.contains_key("address") => {
            Some("type")
        }
        "ownerReferences" => Some("uid"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "taints" => Some("key"),
        // Container ports merge on containerPort; service ports on port.
        "ports" if sample.contains_key("containerPort") => Some("containerPort"),
        "ports" if sample.contains_key("port") => Some("port"),
        _ => None,
    }
}

/// Lists of scalars that strategic merge unions instead of replacing.
pub(crate) fn is_merged_primitive_list(field: &str) -> bool {
    field == "finalizers"
}

fn strategic_merge_object(
    target: &mut Value,
    patch: &Map<String, Value>,
) -> Result<(), PatchError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = Value::Object(strip_directives(patch));
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) if other != "merge" => {
            return Err(PatchError::Invalid(format!(
                "unknown patch directive {other:?}"
            )));
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else {
        return Ok(());
    };
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Some(remove)) =
                (map.get_mut(field), value.as_array())
            {
                items.retain(|v| !remove.contains(v));
            }
            continue;
        }
        match value {
            Value::Null => {
                map.remove(key);
            }
            Value::Object(sub) => {
                let slot = map.entry(key.clone()).or_insert(Value::Null);
                strategic_merge_object(slot, sub)?;
                if slot.is_null() {
                    map.remove(key);
                }
            }
            Value::Array(items) => {
                let merged = merge_list(key, map.get(key), items)?;
                map.insert(key.clone(), merged);
            }
            scalar => {
                map.insert(key.clone(), scalar.clone());
            }
        }
    }
    if let Some(Value::Array(retain)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        map.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn merge_list(field: &str, current: Option<&Value>, patch: &[Value]) -> Result<Value, PatchError> {
    let replace = patch
        .iter()
        .any(|v| v.get("$patch").and_then(Value::as_str) == Some("replace"));
    let patch_items: Vec<&Value> = patch
        .iter()
        .filter(|v| v.get("$patch").and_then(Value::as_str) != Some("replace"))
        .collect();
    let current_items = match current {
        Some(Value::Array(items)) if !replace => items.clone(),
        _ => Vec::new(),
    };

    if is_merged_primitive_list(field) && patch_items.iter().all(|v| !v.is_object()) {
        let mut out = current_items;
        for v in patch_items {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        return Ok(Value::Array(out));
    }

    let key = patch_items
        .iter()
        .find_map(|v| v.as_object())
        .and_then(|sample| merge_key(field, sample));
    let Some(key) = key else {
        // No merge key: the list is replaced, with directives stripped.
        return Ok(Value::Array(
            patch_items
                .into_iter()
                .map(strip_directives_value)
                .collect(),
        ));
    };

    let mut out = current_items;
    for item in patch_items {
        let Some(obj) = item.as_object() else {
            return Err(PatchError::Invalid(format!(
                "list {field:?} merges on {key:?} but has a non-object element"
            )));
        };
        let Some(id) = obj.get(key) else {
            return Err(PatchError::Invalid(format!(
                "list {field:?} element lacks its merge key {key:?}"
            )));
        };
        let pos = out.iter().position(|e| e.get(key) == Some(id));
        let delete = obj.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge_object(&mut out[i], obj)?,
            (None, false) => out.push(Value::Object(strip_directives(obj))),
        }
    }
    Ok(Value::Array(out))
}

fn strip_directives(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), strip_directives_value(v)))
        .collect()
}

fn strip_directives_value(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip_directives(m)),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives_value).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a"]},
            "spec": {
                "replicas": 1,
                "template": {"spec": {"containers": [
                    {"name": "app", "image": "nginx:1", "env": [{"name": "A", "value": "1"}],
                     "ports": [{"containerPort": 80}]},
                    {"name": "sidecar", "image": "busybox"}
                ]}}
            }
        })
    }

    #[test]
    fn patches_apply_like_kubernetes() {
        // (name, type, patch, pointer, expected value at pointer)
        let cases: Vec<(&str, PatchType, Value, &str, Value)> = vec![
            (
                "merge sets a label",
                PatchType::Merge,
                json!({"metadata": {"labels": {"tier": "front"}}}),
                "/metadata/labels",
                json!({"app": "web", "tier": "front"}),
            ),
            (
                "merge null removes a label",
                PatchType::Merge,
                json!({"metadata": {"labels": {"app": null}}}),
                "/metadata/labels",
                json!({}),
            ),
            (
                "merge replaces lists",
                PatchType::Merge,
                json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:2"}]}}}}),
                "/spec/template/spec/containers",
                json!([{"name": "app", "image": "nginx:2"}]),
            ),
            (
                "json patch replaces a field",
                PatchType::Json,
                json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]),
                "/spec/replicas",
                json!(3),
            ),
            (
                "json patch adds to a list",
                PatchType::Json,
                json!([{"op": "add", "path": "/metadata/finalizers/-", "value": "b"}]),
                "/metadata/finalizers",
                json!(["a", "b"]),
            ),
            (
                "strategic merges containers by name",
                PatchType::StrategicMerge,
                json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:2"}]}}}}),
                "/spec/template/spec/containers/1/image",
                json!("busybox"),
            ),
            (
                "strategic updates matching container",
                PatchType::StrategicMerge,
                json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:2"}]}}}}),
                "/spec/template/spec/containers/0/image",
                json!("nginx:2"),
            ),
            (
                "strategic merges env by name",
                PatchType::StrategicMerge,
                json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "B", "value": "2"}]}]}}}}),
                "/spec/template/spec/containers/0/env",
                json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]),
            ),
            (
                "strategic merges ports by containerPort",
                PatchType::StrategicMerge,
                json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443}]}]}}}}),
                "/spec/template/spec/containers/0/ports",
                json!([{"containerPort": 80, "name": "http"}, {"containerPort": 443}]),
            ),
            (
                "strategic delete directive removes an element",
                PatchType::StrategicMerge,
                json!({"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}}),
                "/spec/template/spec/containers/0/name",
                json!("app"),
            ),
            (
                "strategic set element order is dropped",
                PatchType::StrategicMerge,
                json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
                    "containers": [{"name": "app", "image": "nginx:3"}]}}}}),
                "/spec/template/spec",
                json!({"containers": [
                    {"name": "app", "image": "nginx:3", "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80}]},
                    {"name": "sidecar", "image": "busybox"}]}),
            ),
            (
                "strategic unions finalizers",
                PatchType::StrategicMerge,
                json!({"metadata": {"finalizers": ["b", "a"]}}),
                "/metadata/finalizers",
                json!(["a", "b"]),
            ),
            (
                "strategic deletes from primitive list",
                PatchType::StrategicMerge,
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
                "/metadata/finalizers",
                json!([]),
            ),
            (
                "strategic null removes a field",
                PatchType::StrategicMerge,
                json!({"metadata": {"labels": null}}),
                "/metadata",
                json!({"name": "web", "finalizers": ["a"]}),
            ),
            (
                "strategic replace directive replaces a map",
                PatchType::StrategicMerge,
                json!({"metadata": {"labels": {"x": "y", "$patch": "replace"}}}),
                "/metadata/labels",
                json!({"x": "y"}),
            ),
            (
                "strategic replaces lists without merge key",
                PatchType::StrategicMerge,
                json!({"spec": {"template": {"spec": {"tolerations": [{"key": "k"}]}}}}),
                "/spec/template/spec/tolerations",
                json!([{"key": "k"}]),
            ),
        ];
        for (name, ty, patch, pointer, want) in cases {
            let body = serde_json::to_vec(&patch).expect("serialize");
            let got = apply(ty, &deployment(), &body).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got.pointer(pointer), Some(&want), "{name}: {got}");
        }
    }

    #[test]
    fn malformed_patches_are_rejected() {
        let cases: &[(&str, PatchType, &str)] = &[
            ("json patch not a list", PatchType::Json, r#"{"op":"add"}"#),
            (
                "json patch bad path",
                PatchType::Json,
                r#"[{"op":"remove","path":"/nope"}]"#,
            ),
            (
                "json patch test fails",
                PatchType::Json,
                r#"[{"op":"test","path":"/spec/replicas","value":9}]"#,
            ),
            ("merge not an object", PatchType::Merge, "[1]"),
            ("merge not json", PatchType::Merge, "{"),
            ("strategic not an object", PatchType::StrategicMerge, "3"),
            (
                "strategic unknown directive",
                PatchType::StrategicMerge,
                r#"{"$patch":"explode"}"#,
            ),
        ];
        for (name, ty, body) in cases {
            assert!(
                apply(*ty, &deployment(), body.as_bytes()).is_err(),
                "{name}"
            );
        }
    }

    #[test]
    fn patch_type_follows_content_type() {
        let cases = [
            ("application/merge-patch+json", Some(PatchType::Merge)),
            (
                "application/json-patch+json; charset=utf-8",
                Some(PatchType::Json),
            ),
            (
                "application/strategic-merge-patch+json",
                Some(PatchType::StrategicMerge),
            ),
            ("application/apply-patch+yaml", None),
            ("application/json", None),
        ];
        for (ct, want) in cases {
            assert_eq!(PatchType::from_content_type(ct), want, "{ct}");
        }
    }
}
