use serde_json::json;

use super::*;

/// A tiny protobuf encoder: fields appended in the order written, as
/// client-go's generated marshallers do.
#[derive(Default, Clone)]
struct Pb(Vec<u8>);

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

impl Pb {
    fn new() -> Self {
        Pb::default()
    }

    fn key(mut self, n: u32, wire: u64) -> Self {
        put_varint(&mut self.0, (u64::from(n) << 3) | wire);
        self
    }

    fn int(self, n: u32, v: i64) -> Self {
        let mut s = self.key(n, 0);
        put_varint(&mut s.0, v as u64);
        s
    }

    fn bool(self, n: u32, v: bool) -> Self {
        self.int(n, i64::from(v))
    }

    fn bytes(self, n: u32, b: &[u8]) -> Self {
        let mut s = self.key(n, 2);
        put_varint(&mut s.0, b.len() as u64);
        s.0.extend_from_slice(b);
        s
    }

    fn str(self, n: u32, v: &str) -> Self {
        self.bytes(n, v.as_bytes())
    }

    fn msg(self, n: u32, m: Pb) -> Self {
        self.bytes(n, &m.0)
    }

    /// A `map<string, string>` entry.
    fn entry(self, n: u32, k: &str, v: &str) -> Self {
        self.msg(n, Pb::new().str(1, k).str(2, v))
    }

    /// A `map<string, Message>` entry.
    fn entry_msg(self, n: u32, k: &str, v: Pb) -> Self {
        self.msg(n, Pb::new().str(1, k).msg(2, v))
    }

    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
}

fn envelope(api_version: &str, kind: &str, raw: Pb) -> Vec<u8> {
    let type_meta = Pb::new().str(1, api_version).str(2, kind);
    let env = Pb::new()
        .msg(1, type_meta)
        .msg(2, raw)
        .str(4, "application/vnd.kubernetes.protobuf");
    [MAGIC, &env.0].concat()
}

fn quantity(s: &str) -> Pb {
    Pb::new().str(1, s)
}

fn int_or_string_int(v: i64) -> Pb {
    Pb::new().int(1, 0).int(2, v).str(3, "")
}

fn int_or_string_str(v: &str) -> Pb {
    Pb::new().int(1, 1).int(2, 0).str(3, v)
}

/// ObjectMeta as Go writes it: every non-pointer field, empty or not, and
/// the zero `creationTimestamp` as an empty message.
fn object_meta(name: &str, labels: &[(&str, &str)]) -> Pb {
    let mut m = Pb::new()
        .str(1, name)
        .str(2, "")
        .str(3, "")
        .str(4, "")
        .str(5, "")
        .str(6, "")
        .msg(8, Pb::new());
    for (k, v) in labels {
        m = m.entry(11, k, v);
    }
    m
}

fn check(name: &str, body: &[u8], want: Value) {
    assert_eq!(decode(body), Ok(want), "{name}");
}

#[test]
fn deployment_decodes_like_kubectl_create_deployments_json() {
    // kubectl create deployment web --image=nginx --replicas=2 --port=80,
    // plus resources and a status condition with a Time.
    let container = Pb::new()
        .str(1, "nginx")
        .str(2, "nginx")
        .msg(6, Pb::new().str(1, "").int(3, 80).str(4, "TCP"))
        .msg(
            8,
            Pb::new().entry_msg(1, "cpu", quantity("500m")).entry_msg(
                2,
                "memory",
                quantity("64Mi"),
            ),
        )
        .str(5, "")
        .str(14, "");
    let pod_spec = Pb::new().msg(2, container).str(3, "");
    let template = Pb::new()
        .msg(1, object_meta("", &[("app", "web")]))
        .msg(2, pod_spec);
    let spec = Pb::new()
        .int(1, 2)
        .msg(2, Pb::new().entry(1, "app", "web"))
        .msg(3, template)
        .msg(4, Pb::new().str(1, ""));
    let condition = Pb::new()
        .str(1, "Available")
        .str(2, "True")
        .msg(6, Pb::new().int(1, 1_700_000_000).int(2, 123));
    let body = envelope(
        "apps/v1",
        "Deployment",
        Pb::new()
            .msg(1, object_meta("web", &[("app", "web")]))
            .msg(2, spec)
            .msg(3, Pb::new().msg(6, condition)),
    );
    check(
        "deployment",
        &body,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{
                        "name": "nginx", "image": "nginx",
                        "ports": [{"containerPort": 80, "protocol": "TCP"}],
                        "resources": {"limits": {"cpu": "500m"}, "requests": {"memory": "64Mi"}},
                    }]},
                },
                "strategy": {},
            },
            "status": {"conditions": [{
                "type": "Available", "status": "True",
                "lastUpdateTime": "2023-11-14T22:13:20Z",
            }]},
        }),
    );
}

#[test]
fn service_ports_decode_int_or_string_target_ports() {
    let port = |name: &str, port: i64, target: Pb| {
        Pb::new()
            .str(1, name)
            .str(2, "TCP")
            .int(3, port)
            .msg(4, target)
            .int(5, 0)
    };
    let body = envelope(
        "v1",
        "Service",
        Pb::new().msg(1, object_meta("s", &[("app", "s")])).msg(
            2,
            Pb::new()
                .msg(1, port("80-8080", 80, int_or_string_int(8080)))
                .msg(1, port("web", 443, int_or_string_str("https")))
                .entry(2, "app", "s")
                .str(3, "")
                .str(4, "ClusterIP"),
        ),
    );
    check(
        "service",
        &body,
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s", "labels": {"app": "s"}},
            "spec": {
                "ports": [
                    {"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 0},
                    {"name": "web", "protocol": "TCP", "port": 443, "targetPort": "https", "nodePort": 0},
                ],
                "selector": {"app": "s"},
                "type": "ClusterIP",
            },
        }),
    );
}

#[test]
fn secret_bytes_become_base64_and_string_data_stays_text() {
    let body = envelope(
        "v1",
        "Secret",
        Pb::new()
            .msg(1, object_meta("s", &[]))
            .msg(2, Pb::new().str(1, "a").bytes(2, b"b"))
            .msg(2, Pb::new().str(1, "bin").bytes(2, &[0, 1, 0xff]))
            .msg(2, Pb::new().str(1, "empty"))
            .str(3, "Opaque")
            .entry(4, "plain", "text")
            .bool(5, true),
    );
    check(
        "secret",
        &body,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s"},
            "data": {"a": "Yg==", "bin": "AAH/", "empty": ""},
            "type": "Opaque",
            "stringData": {"plain": "text"},
            "immutable": true,
        }),
    );
}

#[test]
fn service_account_keeps_an_explicit_false() {
    let body = envelope(
        "v1",
        "ServiceAccount",
        Pb::new()
            .msg(1, object_meta("builder", &[]))
            .msg(2, Pb::new().str(1, "").str(3, "builder-token"))
            .msg(3, Pb::new().str(1, "registry"))
            .bool(4, false),
    );
    check(
        "serviceaccount",
        &body,
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "builder"},
            "secrets": [{"name": "builder-token"}],
            "imagePullSecrets": [{"name": "registry"}],
            "automountServiceAccountToken": false,
        }),
    );
}

#[test]
fn token_request_decodes_with_lossy_rust_names_mapped_to_json() {
    // BoundObjectReference's `uid` is `u_id` in k8s-pb.
    let body = envelope(
        "authentication.k8s.io/v1",
        "TokenRequest",
        Pb::new().msg(1, object_meta("default", &[])).msg(
            2,
            Pb::new()
                .str(1, "https://kubernetes.default.svc")
                .msg(
                    3,
                    Pb::new()
                        .str(1, "Pod")
                        .str(2, "v1")
                        .str(3, "p")
                        .str(4, "1234"),
                )
                .int(4, 3600),
        ),
    );
    check(
        "tokenrequest",
        &body,
        json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "metadata": {"name": "default"},
            "spec": {
                "audiences": ["https://kubernetes.default.svc"],
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "1234"},
                "expirationSeconds": 3600,
            },
        }),
    );
}

#[test]
fn delete_options_decode_under_any_group_version() {
    let raw = || {
        Pb::new()
            .int(1, 0)
            .msg(2, Pb::new().str(1, "u-1").str(2, "42"))
            .str(4, "Foreground")
            .str(5, "All")
    };
    let want = |api_version: &str| {
        json!({
            "apiVersion": api_version, "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": "u-1", "resourceVersion": "42"},
            "propagationPolicy": "Foreground",
            "dryRun": ["All"],
        })
    };
    for api_version in ["meta.k8s.io/v1", "apps/v1", "v1"] {
        check(
            api_version,
            &envelope(api_version, "DeleteOptions", raw()),
            want(api_version),
        );
    }
}

#[test]
fn lossy_rust_names_and_inline_structs_take_their_json_form() {
    // PodSpec.hostPID, ContainerPort.hostIP, a Probe's inlined
    // ProbeHandler and a Volume's inlined VolumeSource.
    let probe = Pb::new()
        .msg(
            1,
            Pb::new().msg(
                2,
                Pb::new().str(1, "/healthz").msg(2, int_or_string_int(8080)),
            ),
        )
        .int(2, 5);
    let env = Pb::new().str(1, "MODE").msg(
        3,
        Pb::new().msg(3, Pb::new().msg(1, Pb::new().str(1, "cm")).str(2, "mode")),
    );
    let container = Pb::new()
        .str(1, "c")
        .msg(6, Pb::new().int(3, 80).str(5, "0.0.0.0"))
        .msg(7, env)
        .msg(10, probe);
    let volume = Pb::new()
        .str(1, "data")
        .msg(2, Pb::new().msg(2, Pb::new().str(1, "Memory")));
    let body = envelope(
        "v1",
        "Pod",
        Pb::new()
            .msg(1, object_meta("p", &[]))
            .msg(2, Pb::new().msg(1, volume).msg(2, container).bool(12, true)),
    );
    check(
        "pod",
        &body,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p"},
            "spec": {
                "volumes": [{"name": "data", "emptyDir": {"medium": "Memory"}}],
                "containers": [{
                    "name": "c",
                    "ports": [{"containerPort": 80, "hostIP": "0.0.0.0"}],
                    "env": [{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "mode"}}}],
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "initialDelaySeconds": 5},
                }],
                "hostPID": true,
            },
        }),
    );
    let node = envelope(
        "v1",
        "Node",
        Pb::new().msg(1, object_meta("n", &[])).msg(
            2,
            Pb::new()
                .str(1, "10.0.0.0/24")
                .str(7, "10.0.0.0/24")
                .str(7, "fd00::/64"),
        ),
    );
    check(
        "node",
        &node,
        json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"},
            "spec": {"podCIDR": "10.0.0.0/24", "podCIDRs": ["10.0.0.0/24", "fd00::/64"]},
        }),
    );
}

#[test]
fn special_types_take_their_json_forms() {
    // Lease: MicroTime; ControllerRevision: RawExtension (JSON and a nested
    // protobuf object) and managedFields' Time and FieldsV1.
    let lease = envelope(
        "coordination.k8s.io/v1",
        "Lease",
        Pb::new().msg(1, object_meta("l", &[])).msg(
            2,
            Pb::new()
                .str(1, "me")
                .int(2, 15)
                .msg(4, Pb::new().int(1, 1_700_000_000).int(2, 123_456_789)),
        ),
    );
    check(
        "lease",
        &lease,
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
            "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15,
                     "renewTime": "2023-11-14T22:13:20.123456Z"},
        }),
    );
    let managed = Pb::new()
        .str(1, "kubectl")
        .str(2, "Update")
        .msg(4, Pb::new().int(1, 0))
        .str(6, "FieldsV1")
        .msg(7, Pb::new().bytes(1, br#"{"f:data":{}}"#));
    let nested = envelope("v1", "ConfigMap", Pb::new().entry(2, "k", "v"));
    let revision = |data: &[u8]| {
        envelope(
            "apps/v1",
            "ControllerRevision",
            Pb::new()
                .msg(1, Pb::new().str(1, "r").msg(17, managed.clone()))
                .msg(2, Pb::new().bytes(1, data))
                .int(3, 3),
        )
    };
    let meta = json!({"name": "r", "managedFields": [{
        "manager": "kubectl", "operation": "Update", "time": "1970-01-01T00:00:00Z",
        "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {}},
    }]});
    check(
        "json raw extension",
        &revision(br#"{"spec":{"a":1}}"#),
        json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": meta,
               "data": {"spec": {"a": 1}}, "revision": 3}),
    );
    check(
        "protobuf raw extension",
        &revision(&nested),
        json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": meta,
               "data": {"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"}}, "revision": 3}),
    );
}

#[test]
fn go_durations_are_written_as_go_prints_them() {
    let cases = [
        (0, "0s"),
        (1, "1ns"),
        (1_500, "1.5µs"),
        (1_500_000, "1.5ms"),
        (1_500_000_000, "1.5s"),
        (90_000_000_000, "1m30s"),
        (3_600_000_000_000, "1h0m0s"),
        (-2_000_000_000, "-2s"),
        (i64::MIN, "-2562047h47m16.854775808s"),
    ];
    for (nanos, want) in cases {
        assert_eq!(go_duration(nanos), want, "{nanos}");
    }
}

#[test]
fn repeated_numbers_decode_packed_or_not() {
    let job = |values: Pb| {
        let rule = Pb::new()
            .str(1, "FailJob")
            .msg(2, Pb::new().str(2, "In").raw(&values.0));
        envelope(
            "batch/v1",
            "Job",
            Pb::new()
                .msg(1, object_meta("j", &[]))
                .msg(2, Pb::new().msg(11, Pb::new().msg(1, rule))),
        )
    };
    let want = json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
        "spec": {"podFailurePolicy": {"rules": [{"action": "FailJob",
                  "onExitCodes": {"operator": "In", "values": [1, 2, -1]}}]}},
    });
    let unpacked = Pb::new().int(3, 1).int(3, 2).int(3, -1);
    let mut packed = Vec::new();
    for v in [1i64, 2, -1] {
        put_varint(&mut packed, v as u64);
    }
    check("unpacked", &job(unpacked), want.clone());
    check("packed", &job(Pb::new().bytes(3, &packed)), want);
}

#[test]
fn unknown_fields_of_every_wire_type_are_skipped() {
    let raw = Pb::new()
        .msg(1, Pb::new().str(1, "c").int(99, 7))
        .key(100, 1)
        .raw(&[0; 8])
        .key(101, 5)
        .raw(&[0; 4])
        .str(102, "x")
        .entry(2, "k", "v");
    check(
        "configmap",
        &envelope("v1", "ConfigMap", raw),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}),
    );
}

#[test]
fn repeated_singular_messages_merge() {
    let raw = Pb::new()
        .msg(1, Pb::new().str(1, "c"))
        .msg(1, Pb::new().entry(11, "a", "b"));
    check(
        "configmap",
        &envelope("v1", "ConfigMap", raw),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "b"}}}),
    );
}

fn malformed(reason: &'static str, field: &str) -> ProtobufError {
    ProtobufError::Malformed {
        reason,
        field: field.into(),
    }
}

#[test]
fn malformed_bodies_are_errors_naming_the_field() {
    let deployment = |spec: Pb| envelope("apps/v1", "Deployment", Pb::new().msg(2, spec));
    let cases: Vec<(&str, Vec<u8>, ProtobufError)> = vec![
        (
            "no magic",
            b"{}".to_vec(),
            malformed("missing k8s protobuf magic", ""),
        ),
        (
            "truncated envelope",
            [MAGIC, &[0x0a, 0x10, 0x01]].concat(),
            malformed("truncated field", ""),
        ),
        (
            "truncated varint",
            [MAGIC, &[0x08, 0x80]].concat(),
            malformed("truncated varint", ""),
        ),
        (
            "varint longer than 10 bytes",
            [MAGIC, &[0x08], &[0xff; 11][..]].concat(),
            malformed("varint is longer than 10 bytes", ""),
        ),
        (
            "field number zero",
            [MAGIC, &[0x00, 0x00]].concat(),
            malformed("invalid field number", ""),
        ),
        (
            "group wire type",
            [MAGIC, &[0x0b]].concat(),
            malformed("unsupported wire type", ""),
        ),
        (
            "string sent as a varint",
            deployment(Pb::new().msg(3, Pb::new().msg(2, Pb::new().msg(2, Pb::new().int(1, 5))))),
            malformed(
                "wire type does not match the field's type",
                "spec.template.spec.containers[0].name",
            ),
        ),
        (
            "invalid UTF-8",
            deployment(Pb::new().msg(3, Pb::new().msg(1, Pb::new().bytes(1, &[0xff])))),
            malformed("string is not UTF-8", "spec.template.metadata.name"),
        ),
        (
            "time out of range",
            envelope(
                "v1",
                "ConfigMap",
                Pb::new().msg(1, Pb::new().msg(8, Pb::new().int(1, i64::MAX))),
            ),
            malformed("time out of range", "metadata.creationTimestamp"),
        ),
        (
            "raw extension that is not JSON",
            envelope(
                "apps/v1",
                "ControllerRevision",
                Pb::new().msg(2, Pb::new().bytes(1, b"{nope")),
            ),
            malformed("embedded object is not JSON", "data"),
        ),
        (
            "unknown kind",
            envelope("example.com/v1", "Widget", Pb::new()),
            ProtobufError::UnsupportedKind("Widget.example.com/v1".into()),
        ),
        (
            "content encoding",
            [
                MAGIC,
                &Pb::new()
                    .msg(1, Pb::new().str(1, "v1").str(2, "ConfigMap"))
                    .str(3, "gzip")
                    .0,
            ]
            .concat(),
            ProtobufError::UnsupportedEncoding("gzip".into()),
        ),
    ];
    for (name, body, want) in cases {
        assert_eq!(decode(&body), Err(want), "{name}");
    }
}

#[test]
fn deeply_nested_raw_extensions_are_refused() {
    let mut body = envelope("apps/v1", "ControllerRevision", Pb::new());
    for _ in 0..MAX_DEPTH {
        body = envelope(
            "apps/v1",
            "ControllerRevision",
            Pb::new().msg(2, Pb::new().bytes(1, &body)),
        );
    }
    assert_eq!(decode(&body), Err(ProtobufError::TooDeep));
}

#[test]
fn corrupted_bodies_never_panic() {
    let body = envelope(
        "v1",
        "Service",
        Pb::new().msg(1, object_meta("s", &[("a", "b")])).msg(
            2,
            Pb::new()
                .msg(
                    1,
                    Pb::new()
                        .str(1, "p")
                        .int(3, 80)
                        .msg(4, int_or_string_int(8080)),
                )
                .str(4, "ClusterIP"),
        ),
    );
    // A deterministic xorshift: flip, truncate and splice bytes.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..5000 {
        let mut b = body.clone();
        for _ in 0..=(next() % 4) {
            let i = MAGIC.len() + (next() as usize) % (b.len() - MAGIC.len());
            match next() % 3 {
                0 => b[i] = next() as u8,
                1 => b.truncate(i),
                _ => b.insert(i, next() as u8),
            }
            if b.len() <= MAGIC.len() {
                break;
            }
        }
        let _ = decode(&b);
    }
}

#[test]
fn every_known_kind_has_a_message() {
    let catalog = Catalog::global();
    for &(g, v, k) in openapi::known_kinds() {
        let api_version = if g.is_empty() {
            v.to_string()
        } else {
            format!("{g}/{v}")
        };
        assert!(catalog.kind(&api_version, k).is_some(), "{api_version} {k}");
    }
}

#[test]
fn table_messages_and_fields_match_the_openapi_schemas() {
    // Everything the table has that the schemas (k8s-openapi, one minor
    // version behind k8s-pb) do not: newer fields and types, which decode
    // under their lowerCamelCase names, and inlined Go structs.
    let schemas = SchemaIndex::global();
    let mut unmatched = Vec::new();
    let mut inline = Vec::new();
    for (message, resolved) in MESSAGES.iter().zip(&Catalog::global().messages) {
        let props: Vec<&str> = schemas.properties(message.name).collect();
        if resolved.special.is_some() || props.is_empty() {
            continue;
        }
        for (field, r) in message.fields.iter().zip(&resolved.fields) {
            assert_eq!(field.tag, r.tag, "{} is sorted by tag", message.name);
            if r.inline {
                inline.push(format!("{}.{}", message.name, field.rust_name));
            } else if json_name(&props, field.rust_name).is_none() {
                unmatched.push(format!("{}.{}", message.name, field.rust_name));
            }
        }
    }
    assert_eq!(
        inline,
        [
            "io.k8s.api.core.v1.ConfigMapEnvSource.local_object_reference",
            "io.k8s.api.core.v1.ConfigMapKeySelector.local_object_reference",
            "io.k8s.api.core.v1.ConfigMapProjection.local_object_reference",
            "io.k8s.api.core.v1.ConfigMapVolumeSource.local_object_reference",
            "io.k8s.api.core.v1.EphemeralContainer.ephemeral_container_common",
            "io.k8s.api.core.v1.PersistentVolumeSpec.persistent_volume_source",
            "io.k8s.api.core.v1.Probe.handler",
            "io.k8s.api.core.v1.SecretEnvSource.local_object_reference",
            "io.k8s.api.core.v1.SecretKeySelector.local_object_reference",
            "io.k8s.api.core.v1.SecretProjection.local_object_reference",
            "io.k8s.api.core.v1.Volume.volume_source",
            "io.k8s.api.networking.v1.IngressRule.ingress_rule_value",
        ]
    );
    // Fields newer than the schemas; update when k8s-openapi or k8s-pb moves.
    assert_eq!(
        unmatched,
        [
            "io.k8s.api.core.v1.Container.restart_policy_rules",
            "io.k8s.api.core.v1.EnvVarSource.file_key_ref",
            "io.k8s.api.core.v1.NodeStatus.declared_features",
            "io.k8s.api.core.v1.PodSpec.hostname_override",
            "io.k8s.api.core.v1.PodSpec.workload_ref",
            "io.k8s.api.core.v1.PodStatus.extended_resource_claim_status",
            "io.k8s.api.core.v1.PodStatus.allocated_resources",
            "io.k8s.api.core.v1.PodStatus.resources",
            "io.k8s.api.core.v1.VolumeProjection.pod_certificate",
        ]
    );
}
