//! The `scale` subresource: an `autoscaling/v1` Scale view of a workload's
//! `spec.replicas` (deployments, replicasets, statefulsets,
//! replicationcontrollers). Pure conversions; the registry reads and writes.

use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult, FieldError};
use crate::resources::ResourceDef;

/// The Scale of a workload object.
pub fn to_scale(def: &ResourceDef, obj: &Value) -> Value {
    let mut metadata = Map::new();
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = obj.pointer(&format!("/metadata/{field}")) {
            metadata.insert(field.into(), v.clone());
        }
    }
    let spec_replicas = obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let status_replicas = obj
        .pointer("/status/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": {"replicas": spec_replicas},
        "status": {"replicas": status_replicas, "selector": selector_string(def, obj)},
    })
}

/// The workload's pod selector in label-selector syntax, as
/// `metav1.LabelSelectorAsSelector(...).String()` prints it: requirements
/// sorted by key, `k=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`.
pub fn selector_string(def: &ResourceDef, obj: &Value) -> String {
    let Some(selector) = obj.pointer("/spec/selector") else {
        return String::new();
    };
    // ReplicationControllers select with a plain map.
    let (labels, expressions) = if def.group.is_empty() {
        (selector.as_object(), None)
    } else {
        (
            selector.get("matchLabels").and_then(Value::as_object),
            selector.get("matchExpressions").and_then(Value::as_array),
        )
    };
    let mut reqs: Vec<(String, String)> = Vec::new();
    for (k, v) in labels.into_iter().flatten() {
        reqs.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or_default())));
    }
    for e in expressions.into_iter().flatten() {
        let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
        let mut values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        values.sort_unstable();
        values.dedup();
        let text = match e
            .get("operator")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => continue,
        };
        reqs.push((key.to_string(), text));
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    reqs.into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join(",")
}

/// The replicas a client's Scale asks for; a 422 unless a non-negative
/// integer.
pub fn requested_replicas(name: &str, scale: &Value) -> ApiResult<i64> {
    let invalid = |value: String, detail: &str| ApiError::Invalid {
        kind: "Scale".into(),
        group: "autoscaling".into(),
        name: name.to_string(),
        causes: vec![FieldError {
            reason: "FieldValueInvalid",
            field: "spec.replicas".into(),
            message: format!("Invalid value: {value}: {detail}"),
        }],
    };
    match scale.pointer("/spec/replicas") {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(r) if r >= 0 && r <= i64::from(i32::MAX) => Ok(r),
            Some(r) if r < 0 => Err(invalid(r.to_string(), "must be greater than or equal to 0")),
            _ => Err(invalid(n.to_string(), "must be a 32-bit integer")),
        },
        Some(other) => Err(invalid(other.to_string(), "must be an integer")),
    }
}

/// Checks a Scale body's type meta (`autoscaling/v1` `Scale`).
pub fn check_type_meta(scale: &Value) -> ApiResult<()> {
    let kind = scale
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let api_version = scale
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind != "Scale" || api_version != "autoscaling/v1" {
        return Err(ApiError::BadRequest(format!(
            "the body of a scale request must be an autoscaling/v1 Scale, got {api_version} {kind}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    #[test]
    fn scale_reflects_replicas_and_selector() {
        let deploy = resources::find("apps", "v1", "deployments").unwrap();
        let rc = resources::find("", "v1", "replicationcontrollers").unwrap();
        // (name, def, object, want spec.replicas, status.replicas, selector)
        let cases = [
            (
                "deployment",
                deploy,
                json!({"metadata": {"name": "web", "namespace": "d", "resourceVersion": "5"},
                    "spec": {"replicas": 2, "selector": {
                        "matchLabels": {"tier": "front", "app": "web"},
                        "matchExpressions": [
                            {"key": "env", "operator": "In", "values": ["prod", "dev"]},
                            {"key": "zz", "operator": "DoesNotExist"},
                            {"key": "b", "operator": "Exists"},
                            {"key": "c", "operator": "NotIn", "values": ["x"]},
                        ]}},
                    "status": {"replicas": 1}}),
                2,
                1,
                "app=web,b,c notin (x),env in (dev,prod),tier=front,!zz",
            ),
            (
                "defaults",
                deploy,
                json!({"metadata": {"name": "web"}, "spec": {}}),
                1,
                0,
                "",
            ),
            (
                "replication controller map selector",
                rc,
                json!({"metadata": {"name": "r"}, "spec": {"replicas": 3, "selector": {"b": "2", "a": "1"}}}),
                3,
                0,
                "a=1,b=2",
            ),
        ];
        for (name, def, obj, spec, status, selector) in cases {
            let scale = to_scale(def, &obj);
            assert_eq!(scale["kind"], "Scale", "{name}");
            assert_eq!(scale["apiVersion"], "autoscaling/v1", "{name}");
            assert_eq!(scale["metadata"]["name"], obj["metadata"]["name"], "{name}");
            assert_eq!(scale["spec"]["replicas"], spec, "{name}");
            assert_eq!(scale["status"]["replicas"], status, "{name}");
            assert_eq!(scale["status"]["selector"], selector, "{name}");
        }
    }

    #[test]
    fn requested_replicas_must_be_non_negative_integers() {
        let cases = [
            ("three", json!({"spec": {"replicas": 3}}), Ok(3)),
            ("zero", json!({"spec": {"replicas": 0}}), Ok(0)),
            ("missing", json!({"spec": {}}), Ok(0)),
            (
                "negative",
                json!({"spec": {"replicas": -1}}),
                Err(
                    "Scale.autoscaling \"web\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0",
                ),
            ),
            (
                "string",
                json!({"spec": {"replicas": "3"}}),
                Err(
                    "Scale.autoscaling \"web\" is invalid: spec.replicas: Invalid value: \"3\": must be an integer",
                ),
            ),
        ];
        for (name, scale, want) in cases {
            let got = requested_replicas("web", &scale).map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(str::to_string), "{name}");
        }
    }
}
