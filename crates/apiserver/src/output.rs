//! How a read is rendered: the objects themselves, or the server-side
//! `meta.k8s.io/v1` Table that `kubectl get` asks for with
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`.

use axum::body::Bytes;
use axum::http::{HeaderMap, header};
use serde_json::{Value, json};
use skiff_api::table::{self, IncludeObject};

use crate::error::{ApiError, ApiResult};
use crate::resources::ResourceDef;

/// What a get, list or watch answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Object,
    Table(IncludeObject),
}

impl Output {
    /// From the `Accept` header and the `includeObject` parameter. A Table
    /// is chosen when the client lists it (`as=Table;v=v1;g=meta.k8s.io`)
    /// before any plain media type.
    pub fn negotiate(headers: &HeaderMap, include_object: Option<&str>) -> ApiResult<Output> {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        for media in accept.split(',') {
            let mut parts = media.split(';').map(str::trim);
            let base = parts.next().unwrap_or_default();
            let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
            let param = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
            match param("as") {
                Some("Table")
                    if param("v") == Some("v1")
                        && param("g") == Some("meta.k8s.io")
                        && matches!(base, "application/json" | "*/*" | "application/*") =>
                {
                    let include = match include_object {
                        None => IncludeObject::default(),
                        Some(s) => IncludeObject::parse(s).ok_or_else(|| {
                            ApiError::BadRequest(format!(
                                "includeObject: Unsupported value: {s:?}: supported values: \"None\", \"Metadata\", \"Object\""
                            ))
                        })?,
                    };
                    return Ok(Output::Table(include));
                }
                // Another `as=` we do not serve (v1beta1 Tables,
                // PartialObjectMetadata): try the next media type.
                Some(_) => continue,
                None => return Ok(Output::Object),
            }
        }
        Ok(Output::Object)
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// One object as asked for.
pub fn object(def: &ResourceDef, output: Output, obj: Value) -> Value {
    match output {
        Output::Object => obj,
        Output::Table(include) => {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or_else(|| json!(""));
            table::table(
                def.group,
                def.plural,
                &[obj],
                now(),
                include,
                json!({"resourceVersion": rv}),
            )
        }
    }
}

/// A list (`{kind, apiVersion, metadata, items}`) as asked for; a Table
/// keeps the list's metadata (resourceVersion, continue).
pub fn list(def: &ResourceDef, output: Output, mut list: Value) -> Value {
    match output {
        Output::Object => list,
        Output::Table(include) => {
            let items = match list.get_mut("items").map(Value::take) {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            };
            let metadata = list.get("metadata").cloned().unwrap_or_else(|| json!({}));
            table::table(def.group, def.plural, &items, now(), include, metadata)
        }
    }
}

/// Encodes watch events, turning each object into a one-row Table when
/// asked; as in Kubernetes, only the first Table carries the column
/// definitions.
pub struct WatchEncoder {
    def: &'static ResourceDef,
    output: Output,
    first: bool,
}

impl WatchEncoder {
    pub fn new(def: &'static ResourceDef, output: Output) -> WatchEncoder {
        WatchEncoder {
            def,
            output,
            first: true,
        }
    }

    /// One JSON line. `ERROR` events carry a Status and `BOOKMARK` events
    /// only a resourceVersion: neither is converted.
    pub fn encode(&mut self, kind: &str, object: Value) -> Bytes {
        let object = if kind == "ERROR" || kind == "BOOKMARK" {
            object
        } else {
            let mut obj = self::object(self.def, self.output, object);
            if matches!(self.output, Output::Table(_)) {
                if !self.first
                    && let Some(map) = obj.as_object_mut()
                {
                    map.insert("columnDefinitions".into(), json!([]));
                }
                self.first = false;
            }
            obj
        };
        let mut line =
            serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    /// One JSON line for an object of the watch cache: plain objects reuse
    /// the cache's serialisation, shared by every watcher.
    pub fn encode_cached(
        &mut self,
        kind: &str,
        object: &crate::watchcache::CachedObject,
    ) -> crate::error::ApiResult<Bytes> {
        if self.output != Output::Object {
            return Ok(self.encode(kind, object.to_value()?));
        }
        let json = object.presented_json();
        let mut line = Vec::with_capacity(json.len() + 32);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(kind.as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        line.extend_from_slice(&json);
        line.extend_from_slice(b"}\n");
        Ok(Bytes::from(line))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::resources;

    #[test]
    fn tables_are_negotiated_from_accept() {
        let kubectl_get = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        let cases: &[(&str, &str, Option<&str>, Option<Output>)] = &[
            ("none", "", None, Some(Output::Object)),
            ("json", "application/json", None, Some(Output::Object)),
            (
                "kubectl get",
                kubectl_get,
                None,
                Some(Output::Table(IncludeObject::Metadata)),
            ),
            (
                "include object",
                kubectl_get,
                Some("Object"),
                Some(Output::Table(IncludeObject::Object)),
            ),
            (
                "include none",
                kubectl_get,
                Some("None"),
                Some(Output::Table(IncludeObject::None)),
            ),
            ("bad include", kubectl_get, Some("All"), None),
            (
                "only v1beta1 falls back",
                "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
                None,
                Some(Output::Object),
            ),
            (
                "json first wins",
                "application/json,application/json;as=Table;v=v1;g=meta.k8s.io",
                None,
                Some(Output::Object),
            ),
        ];
        for (name, accept, include, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
            assert_eq!(Output::negotiate(&h, *include).ok(), *want, "{name}");
        }
    }

    #[test]
    fn list_tables_keep_list_metadata_and_watch_tables_send_columns_once() {
        let def = resources::find("", "v1", "configmaps").unwrap();
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "resourceVersion": "7"}, "data": {"a": "b"}});
        let l = json!({"kind": "ConfigMapList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "9", "continue": "abc"}, "items": [cm.clone()]});
        let t = list(def, Output::Table(IncludeObject::Metadata), l);
        assert_eq!(t["kind"], "Table");
        assert_eq!(
            t["metadata"],
            json!({"resourceVersion": "9", "continue": "abc"})
        );
        assert_eq!(t["rows"][0]["cells"][0], "c");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");

        let mut enc = WatchEncoder::new(def, Output::Table(IncludeObject::Metadata));
        let first: Value = serde_json::from_slice(&enc.encode("ADDED", cm.clone())).unwrap();
        let second: Value = serde_json::from_slice(&enc.encode("MODIFIED", cm)).unwrap();
        assert_eq!(first["object"]["kind"], "Table");
        assert!(
            !first["object"]["columnDefinitions"]
                .as_array()
                .unwrap()
                .is_empty()
        );
        assert_eq!(second["object"]["columnDefinitions"], json!([]));
        assert_eq!(second["object"]["rows"].as_array().unwrap().len(), 1);
    }
}
