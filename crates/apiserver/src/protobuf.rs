//! Decoding of Kubernetes' protobuf request bodies for the few kinds whose
//! schema is written out here.
//!
//! kubectl 1.32 sends `application/vnd.kubernetes.protobuf` bodies from its
//! typed client (`kubectl create namespace|configmap|secret …`) and does not
//! fall back to JSON on a 415. Until the API types (and their protobuf
//! schemas) exist as Rust types, this module decodes the envelope
//! (`k8s\0` + `runtime.Unknown`) and the kinds in [`decode`] by hand, field
//! numbers taken from `k8s.io/api/*/generated.proto`. Other kinds answer 415.
//! Responses are always JSON, which client-go accepts.

use base64::Engine;
use serde_json::{Map, Value, json};

/// Why a protobuf body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtobufError {
    #[error("protobuf body is malformed: {0}")]
    Malformed(&'static str),
    #[error("protobuf bodies of kind {0} are not supported yet; send JSON")]
    UnsupportedKind(String),
}

type Result<T> = std::result::Result<T, ProtobufError>;

const MAGIC: &[u8] = b"k8s\x00";

/// One field of a message: number and raw value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf
            .get(*pos)
            .ok_or(ProtobufError::Malformed("truncated varint"))?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err(ProtobufError::Malformed("varint too long"))
}

/// The fields of one message, in order.
fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let tag = varint(buf, &mut pos)?;
        let (number, wire) = (tag >> 3, tag & 7);
        let field = match wire {
            0 => Field::Varint(varint(buf, &mut pos)?),
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?)
                    .map_err(|_| ProtobufError::Malformed("length overflow"))?;
                let end = pos.checked_add(len).filter(|e| *e <= buf.len());
                let end = end.ok_or(ProtobufError::Malformed("truncated field"))?;
                let bytes = &buf[pos..end];
                pos = end;
                Field::Bytes(bytes)
            }
            1 => {
                pos += 8;
                continue;
            }
            5 => {
                pos += 4;
                continue;
            }
            _ => return Err(ProtobufError::Malformed("unsupported wire type")),
        };
        out.push((number, field));
    }
    if pos > buf.len() {
        return Err(ProtobufError::Malformed("truncated fixed field"));
    }
    Ok(out)
}

fn string(f: &Field<'_>) -> Result<String> {
    match f {
        Field::Bytes(b) => std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| ProtobufError::Malformed("string is not UTF-8")),
        Field::Varint(_) => Err(ProtobufError::Malformed("expected a string")),
    }
}

fn bytes<'a>(f: &Field<'a>) -> Result<&'a [u8]> {
    match f {
        Field::Bytes(b) => Ok(b),
        Field::Varint(_) => Err(ProtobufError::Malformed("expected bytes")),
    }
}

/// A `map<string, string>` entry (key 1, value 2); `binary` base64-encodes
/// the value as JSON does for `[]byte`.
fn map_entry(f: &Field<'_>, binary: bool) -> Result<(String, Value)> {
    let mut key = String::new();
    let mut value = Value::String(String::new());
    for (n, f) in fields(bytes(f)?)? {
        match n {
            1 => key = string(&f)?,
            2 if binary => {
                value = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes(&f)?))
            }
            2 => value = Value::String(string(&f)?),
            _ => {}
        }
    }
    Ok((key, value))
}

fn insert_map_entry(obj: &mut Map<String, Value>, field: &str, entry: (String, Value)) {
    let slot = obj.entry(field).or_insert_with(|| json!({}));
    if let Some(m) = slot.as_object_mut() {
        m.insert(entry.0, entry.1);
    }
}

fn push_string(obj: &mut Map<String, Value>, field: &str, s: String) {
    let slot = obj.entry(field).or_insert_with(|| json!([]));
    if let Some(a) = slot.as_array_mut() {
        a.push(Value::String(s));
    }
}

/// `ObjectMeta`, the fields a client may set on create.
fn object_meta(buf: &[u8]) -> Result<Value> {
    let mut m = Map::new();
    for (n, f) in fields(buf)? {
        match n {
            1 => {
                m.insert("name".into(), Value::String(string(&f)?));
            }
            2 => {
                m.insert("generateName".into(), Value::String(string(&f)?));
            }
            3 => {
                m.insert("namespace".into(), Value::String(string(&f)?));
            }
            5 => {
                m.insert("uid".into(), Value::String(string(&f)?));
            }
            6 => {
                m.insert("resourceVersion".into(), Value::String(string(&f)?));
            }
            11 => insert_map_entry(&mut m, "labels", map_entry(&f, false)?),
            12 => insert_map_entry(&mut m, "annotations", map_entry(&f, false)?),
            14 => push_string(&mut m, "finalizers", string(&f)?),
            // creationTimestamp, ownerReferences, managedFields, …: the
            // server sets or does not accept them on create.
            _ => {}
        }
    }
    // Empty strings are how protobuf omits nothing; JSON clients omit them.
    m.retain(|_, v| v.as_str() != Some(""));
    Ok(Value::Object(m))
}

fn bool_field(f: &Field<'_>) -> Result<bool> {
    match f {
        Field::Varint(v) => Ok(*v != 0),
        Field::Bytes(_) => Err(ProtobufError::Malformed("expected a bool")),
    }
}

/// Decodes a protobuf request body into the JSON object it encodes.
pub fn decode(body: &[u8]) -> Result<Value> {
    let inner = body
        .strip_prefix(MAGIC)
        .ok_or(ProtobufError::Malformed("missing k8s protobuf magic"))?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in fields(inner)? {
        match n {
            1 => {
                for (n, f) in fields(bytes(&f)?)? {
                    match n {
                        1 => api_version = string(&f)?,
                        2 => kind = string(&f)?,
                        _ => {}
                    }
                }
            }
            2 => raw = bytes(&f)?,
            _ => {}
        }
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), Value::String(api_version.clone()));
    obj.insert("kind".into(), Value::String(kind.clone()));
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            for (n, f) in fields(raw)? {
                match n {
                    1 => {
                        obj.insert("metadata".into(), object_meta(bytes(&f)?)?);
                    }
                    2 => {
                        let mut spec = Map::new();
                        for (n, f) in fields(bytes(&f)?)? {
                            if n == 1 {
                                push_string(&mut spec, "finalizers", string(&f)?);
                            }
                        }
                        obj.insert("spec".into(), Value::Object(spec));
                    }
                    _ => {}
                }
            }
        }
        ("v1", "ConfigMap") => {
            for (n, f) in fields(raw)? {
                match n {
                    1 => {
                        obj.insert("metadata".into(), object_meta(bytes(&f)?)?);
                    }
                    2 => insert_map_entry(&mut obj, "data", map_entry(&f, false)?),
                    3 => insert_map_entry(&mut obj, "binaryData", map_entry(&f, true)?),
                    4 => {
                        obj.insert("immutable".into(), Value::Bool(bool_field(&f)?));
                    }
                    _ => {}
                }
            }
        }
        ("v1", "Secret") => {
            for (n, f) in fields(raw)? {
                match n {
                    1 => {
                        obj.insert("metadata".into(), object_meta(bytes(&f)?)?);
                    }
                    2 => insert_map_entry(&mut obj, "data", map_entry(&f, true)?),
                    3 => {
                        obj.insert("type".into(), Value::String(string(&f)?));
                    }
                    4 => {
                        obj.insert("immutable".into(), Value::Bool(bool_field(&f)?));
                    }
                    5 => insert_map_entry(&mut obj, "stringData", map_entry(&f, false)?),
                    _ => {}
                }
            }
        }
        (_, "DeleteOptions") => {
            // meta.k8s.io/v1 DeleteOptions: 1 gracePeriodSeconds, 2
            // preconditions {1 uid, 2 resourceVersion}, 3 orphanDependents,
            // 4 propagationPolicy, 5 dryRun.
            for (n, f) in fields(raw)? {
                match (n, &f) {
                    (1, Field::Varint(v)) => {
                        obj.insert("gracePeriodSeconds".into(), json!(*v as i64));
                    }
                    (2, _) => {
                        let mut pre = Map::new();
                        for (n, f) in fields(bytes(&f)?)? {
                            match n {
                                1 => {
                                    pre.insert("uid".into(), Value::String(string(&f)?));
                                }
                                2 => {
                                    pre.insert(
                                        "resourceVersion".into(),
                                        Value::String(string(&f)?),
                                    );
                                }
                                _ => {}
                            }
                        }
                        obj.insert("preconditions".into(), Value::Object(pre));
                    }
                    (3, _) => {
                        obj.insert("orphanDependents".into(), Value::Bool(bool_field(&f)?));
                    }
                    (4, _) => {
                        obj.insert("propagationPolicy".into(), Value::String(string(&f)?));
                    }
                    (5, _) => push_string(&mut obj, "dryRun", string(&f)?),
                    _ => {}
                }
            }
        }
        _ => {
            return Err(ProtobufError::UnsupportedKind(
                if api_version.contains('/') {
                    format!("{kind}.{api_version}")
                } else {
                    kind
                },
            ));
        }
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(n: u64, wire: u64) -> Vec<u8> {
        encode_varint((n << 3) | wire)
    }

    fn encode_varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(n: u64, b: &[u8]) -> Vec<u8> {
        let mut out = tag(n, 2);
        out.extend(encode_varint(b.len() as u64));
        out.extend_from_slice(b);
        out
    }

    fn entry(n: u64, k: &str, v: &[u8]) -> Vec<u8> {
        bytes_field(
            n,
            &[bytes_field(1, k.as_bytes()), bytes_field(2, v)].concat(),
        )
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = [
            bytes_field(1, api_version.as_bytes()),
            bytes_field(2, kind.as_bytes()),
        ]
        .concat();
        [
            MAGIC.to_vec(),
            bytes_field(1, &type_meta),
            bytes_field(2, raw),
            bytes_field(4, b"application/vnd.kubernetes.protobuf"),
        ]
        .concat()
    }

    #[test]
    fn decodes_the_kinds_kubectl_create_sends() {
        let meta = [
            bytes_field(1, b"c"),
            bytes_field(3, b"ns"),
            entry(11, "app", b"web"),
        ]
        .concat();
        let cases: Vec<(&str, Vec<u8>, Value)> = vec![
            (
                "configmap with data and binary data",
                envelope(
                    "v1",
                    "ConfigMap",
                    &[
                        bytes_field(1, &meta),
                        entry(2, "k", b"v"),
                        entry(3, "b", b"\x00\x01"),
                    ]
                    .concat(),
                ),
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "c", "namespace": "ns", "labels": {"app": "web"}},
                       "data": {"k": "v"}, "binaryData": {"b": "AAE="}}),
            ),
            (
                "namespace with finalizers",
                envelope(
                    "v1",
                    "Namespace",
                    &[
                        bytes_field(1, &bytes_field(1, b"demo")),
                        bytes_field(2, &bytes_field(1, b"kubernetes")),
                    ]
                    .concat(),
                ),
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}, "spec": {"finalizers": ["kubernetes"]}}),
            ),
            (
                "secret with type and immutable",
                envelope(
                    "v1",
                    "Secret",
                    &[
                        bytes_field(1, &bytes_field(1, b"s")),
                        entry(2, "p", b"pw"),
                        bytes_field(3, b"Opaque"),
                        [tag(4, 0), vec![1]].concat(),
                    ]
                    .concat(),
                ),
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"p": "cHc="}, "type": "Opaque", "immutable": true}),
            ),
        ];
        for (name, body, want) in cases {
            assert_eq!(decode(&body), Ok(want), "{name}");
        }
    }

    #[test]
    fn decodes_delete_options_as_helm_sends_them() {
        let mut raw = tag(1, 0);
        raw.extend(encode_varint(30));
        raw.extend(bytes_field(4, b"Background"));
        raw.extend(bytes_field(5, b"All"));
        let body = envelope("meta.k8s.io/v1", "DeleteOptions", &raw);
        let obj = decode(&body).unwrap();
        assert_eq!(obj["gracePeriodSeconds"], 30);
        assert_eq!(obj["propagationPolicy"], "Background");
        assert_eq!(obj["dryRun"], json!(["All"]));
    }

    #[test]
    fn rejects_malformed_and_unsupported_bodies() {
        let cases: Vec<(&str, Vec<u8>, ProtobufError)> = vec![
            (
                "no magic",
                b"{}".to_vec(),
                ProtobufError::Malformed("missing k8s protobuf magic"),
            ),
            (
                "truncated",
                [MAGIC.to_vec(), vec![0x0a, 0x10, 0x01]].concat(),
                ProtobufError::Malformed("truncated field"),
            ),
            (
                "unsupported kind",
                envelope("apps/v1", "Deployment", &[]),
                ProtobufError::UnsupportedKind("Deployment.apps/v1".into()),
            ),
        ];
        for (name, body, want) in cases {
            assert_eq!(decode(&body), Err(want), "{name}");
        }
    }
}
