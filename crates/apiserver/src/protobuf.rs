//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`).
//!
//! client-go's typed clients (kubectl's generators, `kubectl run`, helm's
//! deletes, Go controllers) send them and do not fall back to JSON on a
//! 415. [`skiff_api::protobuf`] decodes every kind the server knows into
//! the JSON object it encodes, from a table generated out of `k8s-pb`;
//! this module is the API server's entry point to it. Responses are always
//! JSON, which client-go accepts.

use serde_json::Value;

pub use skiff_api::protobuf::ProtobufError;

/// Decodes a protobuf request body (`k8s\0` + `runtime.Unknown`) into the
/// JSON object it encodes, `apiVersion` and `kind` included.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    skiff_api::protobuf::decode(body)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const MAGIC: &[u8] = b"k8s\x00";

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

    fn tag(n: u64, wire: u64) -> Vec<u8> {
        encode_varint((n << 3) | wire)
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
                        [tag(5, 0), vec![1]].concat(),
                    ]
                    .concat(),
                ),
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"p": "cHc="}, "type": "Opaque", "immutable": true}),
            ),
            (
                "service account",
                envelope(
                    "v1",
                    "ServiceAccount",
                    &[bytes_field(1, &bytes_field(1, b"builder"))].concat(),
                ),
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder"}}),
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
        let obj = decode(&envelope("meta.k8s.io/v1", "DeleteOptions", &raw));
        assert_eq!(
            obj,
            Ok(
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions",
                      "gracePeriodSeconds": 30, "propagationPolicy": "Background", "dryRun": ["All"]})
            )
        );
    }

    #[test]
    fn malformed_bodies_and_unknown_kinds_are_refused() {
        assert!(matches!(
            decode(b"{}"),
            Err(ProtobufError::Malformed { .. })
        ));
        assert!(matches!(
            decode(&[MAGIC, &[0x0a, 0x10, 0x01]].concat()),
            Err(ProtobufError::Malformed { .. })
        ));
        assert_eq!(
            decode(&envelope("example.com/v1", "Widget", &[])),
            Err(ProtobufError::UnsupportedKind(
                "Widget.example.com/v1".into()
            ))
        );
    }
}
