//! `fieldValidation=Strict|Warn|Ignore`: what happens to fields a kind's
//! schema does not have. As in Kubernetes, unknown fields of a built-in kind
//! are never stored (they are pruned); `Strict` rejects the request, `Warn`
//! (the default) answers with one `Warning` header per field, `Ignore` is
//! silent.

use axum::http::{HeaderValue, header};
use axum::response::Response;
use serde_json::Value;
use skiff_api::schema::{SchemaIndex, Shape};

use crate::error::{ApiError, ApiResult};
use crate::resources::ResourceDef;

/// The `fieldValidation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> ApiResult<FieldValidation> {
        match s {
            None | Some("") => Ok(FieldValidation::default()),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// What the request is, for the wording of a strict rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoding {
    /// A create or update body.
    Body,
    /// The result of applying a patch.
    Patch,
}

/// Prunes the fields of `obj` that `def`'s kind does not have. Under
/// `Strict` an unknown field is a 400 and `obj` is left alone; otherwise
/// the warnings to send (none under `Ignore`) are returned.
pub fn check(
    def: &ResourceDef,
    obj: &mut Value,
    mode: FieldValidation,
    decoding: Decoding,
) -> ApiResult<Vec<String>> {
    let index = SchemaIndex::global();
    let Some(definition) = index.kind_definition(def.group, def.version, def.kind) else {
        // A kind without a schema is stored as sent.
        return Ok(Vec::new());
    };
    let unknown = index.unknown_fields(&definition, obj);
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    let list = unknown
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .collect::<Vec<_>>();
    if mode == FieldValidation::Strict {
        let detail = format!("strict decoding error: {}", list.join(", "));
        return Err(ApiError::BadRequest(match decoding {
            Decoding::Body => format!(
                "{kind} in version {version:?} cannot be handled as a {kind}: {detail}",
                kind = def.kind,
                version = def.version,
            ),
            Decoding::Patch => detail,
        }));
    }
    prune(index, &Shape::Object(definition), obj);
    Ok(if mode == FieldValidation::Warn {
        list
    } else {
        Vec::new()
    })
}

/// Removes every field the schema does not have, the same fields
/// [`SchemaIndex::unknown_fields`] reports.
fn prune(index: &SchemaIndex, shape: &Shape, value: &mut Value) {
    match (shape, value) {
        (Shape::Object(def), Value::Object(map)) => {
            map.retain(|k, _| index.field(def, k).is_some());
            for (k, v) in map.iter_mut() {
                if let Some(s) = index.field(def, k) {
                    prune(index, &s, v);
                }
            }
        }
        (Shape::Map(inner), Value::Object(map)) => {
            for v in map.values_mut() {
                prune(index, inner, v);
            }
        }
        (Shape::List(inner), Value::Array(items)) => {
            for v in items {
                prune(index, inner, v);
            }
        }
        _ => {}
    }
}

/// Adds `Warning: 299 - "<text>"` headers to a response.
pub fn add_warnings(response: &mut Response, warnings: &[String]) {
    for w in warnings {
        let text = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resources;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app.kubernetes.io/name": "web"}},
            "spec": {
                "foo": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [
                    {"name": "a", "image": "x", "imagePullPolcy": "Always"},
                    {"name": "b", "image": "y", "resources": {"limits": {"cpu": "1"}}},
                ]}},
            },
        })
    }

    #[test]
    fn unknown_fields_by_mode() {
        let def = resources::find("apps", "v1", "deployments").unwrap();
        let fields = [
            r#"unknown field "spec.foo""#,
            r#"unknown field "spec.template.spec.containers[0].imagePullPolcy""#,
        ];
        // (name, mode, decoding, want warnings, want error message)
        type Case = (
            &'static str,
            FieldValidation,
            Decoding,
            Vec<&'static str>,
            Option<String>,
        );
        let cases: Vec<Case> = vec![
            (
                "warn",
                FieldValidation::Warn,
                Decoding::Body,
                fields.to_vec(),
                None,
            ),
            (
                "ignore",
                FieldValidation::Ignore,
                Decoding::Body,
                vec![],
                None,
            ),
            (
                "strict body",
                FieldValidation::Strict,
                Decoding::Body,
                vec![],
                Some(format!(
                    r#"Deployment in version "v1" cannot be handled as a Deployment: strict decoding error: {}, {}"#,
                    fields[0], fields[1]
                )),
            ),
            (
                "strict patch",
                FieldValidation::Strict,
                Decoding::Patch,
                vec![],
                Some(format!(
                    "strict decoding error: {}, {}",
                    fields[0], fields[1]
                )),
            ),
        ];
        for (name, mode, decoding, want_warnings, want_err) in cases {
            let mut obj = deployment();
            match (check(def, &mut obj, mode, decoding), want_err) {
                (Ok(warnings), None) => {
                    assert_eq!(warnings, want_warnings, "{name}");
                    assert!(obj["spec"].get("foo").is_none(), "{name}: pruned");
                    let c0 = &obj["spec"]["template"]["spec"]["containers"][0];
                    assert_eq!(c0, &json!({"name": "a", "image": "x"}), "{name}");
                    assert_eq!(
                        obj["spec"]["template"]["spec"]["containers"][1]["resources"],
                        json!({"limits": {"cpu": "1"}}),
                        "{name}: known fields kept"
                    );
                    assert_eq!(
                        obj["metadata"]["labels"]["app.kubernetes.io/name"], "web",
                        "{name}"
                    );
                }
                (Err(e), Some(msg)) => {
                    assert_eq!(e.to_string(), msg, "{name}");
                    assert_eq!(e.code(), 400, "{name}");
                    assert_eq!(obj, deployment(), "{name}: untouched");
                }
                (got, want) => panic!("{name}: got {got:?}, want error {want:?}"),
            }
        }
    }

    #[test]
    fn known_objects_pass_untouched() {
        let def = resources::find("", "v1", "configmaps").unwrap();
        let mut obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "annotations": {"a": "b"}}, "data": {"k": "v"}});
        let before = obj.clone();
        let warnings = check(def, &mut obj, FieldValidation::Strict, Decoding::Body).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(obj, before);
    }

    #[test]
    fn field_validation_parses_kubernetes_values() {
        let cases = [
            (None, Some(FieldValidation::Warn)),
            (Some(""), Some(FieldValidation::Warn)),
            (Some("Strict"), Some(FieldValidation::Strict)),
            (Some("Warn"), Some(FieldValidation::Warn)),
            (Some("Ignore"), Some(FieldValidation::Ignore)),
            (Some("strict"), None),
        ];
        for (input, want) in cases {
            assert_eq!(FieldValidation::parse(input).ok(), want, "{input:?}");
        }
    }
}
