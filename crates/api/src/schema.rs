//! Navigation over the built-in types' schemas: what the API server needs
//! to find unknown fields (`fieldValidation=Strict|Warn`) and to follow
//! strategic-merge-patch metadata into nested objects.

use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value};

use crate::openapi;

/// Every built-in type's schema, by definition name.
pub struct SchemaIndex {
    defs: Map<String, Value>,
}

/// The shape of a value at some point in a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// An object with known fields (a definition).
    Object(String),
    /// A map with values of this shape (`additionalProperties`).
    Map(Box<Shape>),
    /// A list with items of this shape.
    List(Box<Shape>),
    /// Anything else: scalars, quantities, free-form objects.
    Opaque,
}

impl SchemaIndex {
    /// The index of every known kind, built once.
    pub fn global() -> &'static SchemaIndex {
        static INDEX: OnceLock<SchemaIndex> = OnceLock::new();
        INDEX.get_or_init(|| {
            let mut generator = SchemaSettings::openapi3().into_generator();
            for (g, v, k) in openapi::known_kinds() {
                add(&mut generator, g, v, k);
            }
            SchemaIndex {
                defs: generator.take_definitions(true),
            }
        })
    }

    /// The definition of a kind (`io.k8s.api.core.v1.Pod`), if known.
    pub fn kind_definition(&self, group: &str, version: &str, kind: &str) -> Option<String> {
        openapi::definition_name(group, version, kind).filter(|n| self.defs.contains_key(n))
    }

    /// The shape of `field` inside object definition `definition`; `None`
    /// when the definition has no such field.
    pub fn field(&self, definition: &str, field: &str) -> Option<Shape> {
        let props = self.defs.get(definition)?.get("properties")?.as_object()?;
        props.get(field).map(|s| self.shape(s))
    }

    /// The property names of object definition `definition` (none when the
    /// definition is unknown or not an object).
    pub fn properties(&self, definition: &str) -> impl Iterator<Item = &str> {
        self.defs
            .get(definition)
            .and_then(|d| d.get("properties"))
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|props| props.keys().map(String::as_str))
    }

    fn shape(&self, schema: &Value) -> Shape {
        if let Some(r) = reference(schema) {
            return if self.is_object_definition(&r) {
                Shape::Object(r)
            } else {
                Shape::Opaque
            };
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("array") => Shape::List(Box::new(
                schema
                    .get("items")
                    .map(|i| self.shape(i))
                    .unwrap_or(Shape::Opaque),
            )),
            Some("object") => match schema.get("additionalProperties") {
                Some(ap) if ap.is_object() => Shape::Map(Box::new(self.shape(ap))),
                _ => Shape::Opaque,
            },
            _ => Shape::Opaque,
        }
    }

    fn is_object_definition(&self, name: &str) -> bool {
        self.defs
            .get(name)
            .and_then(|d| d.get("properties"))
            .is_some_and(Value::is_object)
    }

    /// The dotted paths of fields in `obj` that the kind's schema does not
    /// have, as Kubernetes names them (`spec.template.spec.containers[0].foo`).
    pub fn unknown_fields(&self, definition: &str, obj: &Value) -> Vec<String> {
        let mut out = Vec::new();
        self.walk(
            &Shape::Object(definition.to_string()),
            obj,
            String::new(),
            &mut out,
        );
        out
    }

    fn walk(&self, shape: &Shape, value: &Value, path: String, out: &mut Vec<String>) {
        match (shape, value) {
            (Shape::Object(def), Value::Object(map)) => {
                for (k, v) in map {
                    let child = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match self.field(def, k) {
                        Some(s) => self.walk(&s, v, child, out),
                        None => out.push(child),
                    }
                }
            }
            (Shape::Map(inner), Value::Object(map)) => {
                for (k, v) in map {
                    self.walk(inner, v, format!("{path}[{k}]"), out);
                }
            }
            (Shape::List(inner), Value::Array(items)) => {
                for (i, v) in items.iter().enumerate() {
                    self.walk(inner, v, format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
}

fn reference(schema: &Value) -> Option<String> {
    let r = schema
        .get("$ref")
        .or_else(|| schema.get("allOf")?.as_array()?.first()?.get("$ref"))?
        .as_str()?;
    Some(r.rsplit('/').next()?.to_string())
}

fn add(generator: &mut schemars::SchemaGenerator, g: &str, v: &str, k: &str) {
    openapi::add_kind_to(generator, g, v, k);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_named_by_their_path() {
        let index = SchemaIndex::global();
        let def = index.kind_definition("apps", "v1", "Deployment").unwrap();
        let obj = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "x", "labels": {"a": "b"}, "bogus": 1},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}},
                                  "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolcy": "x",
                                                           "resources": {"limits": {"cpu": "1"}}}]}}},
            "extra": true
        });
        let mut got = index.unknown_fields(&def, &obj);
        got.sort();
        assert_eq!(
            got,
            [
                "extra",
                "metadata.bogus",
                "spec.template.spec.containers[0].imagePullPolcy"
            ]
        );
    }

    #[test]
    fn shapes_follow_references_into_lists() {
        let index = SchemaIndex::global();
        assert_eq!(
            index.field("io.k8s.api.core.v1.PodSpec", "containers"),
            Some(Shape::List(Box::new(Shape::Object(
                "io.k8s.api.core.v1.Container".into()
            ))))
        );
        assert_eq!(index.field("io.k8s.api.core.v1.PodSpec", "nope"), None);
    }
}
