//! A container's environment, resolved the way the kubelet does
//! (`makeEnvironmentVariables`): `envFrom` sources first, then `env`
//! entries overriding them, each value expanded with `$(VAR)` against the
//! variables defined before it; `valueFrom` reads ConfigMaps and Secrets
//! (fetched beforehand by the caller, so this module is pure), pod fields
//! (downward API) and resource fields. The same field readers serve the
//! downward API volume.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ObjectFieldSelector, Pod, ResourceFieldSelector, Secret, Service,
};
use skiff_scheduler::quantity::Quantity;

use crate::resources;

/// Why an environment (or a downward API file) cannot be built; shown as
/// `CreateContainerConfigError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("configmap {0:?} not found")]
    ConfigMapNotFound(String),
    #[error("secret {0:?} not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKey {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKey {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("unsupported fieldPath: {0}")]
    FieldPath(String),
    #[error("unsupported container resource: {0}")]
    Resource(String),
    #[error("container {0:?} not found in the pod")]
    NoSuchContainer(String),
    #[error("invalid divisor {0:?}")]
    Divisor(String),
}

/// The ConfigMaps and Secrets of the pod's namespace a container refers
/// to; `None` for one that does not exist.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub config_maps: BTreeMap<String, Option<ConfigMap>>,
    pub secrets: BTreeMap<String, Option<Secret>>,
    /// Service environment variables ([`service_env`]): usable in `$(VAR)`
    /// and added after the container's own unless it defines them.
    pub services: Vec<(String, String)>,
}

/// Node and sandbox facts the downward API exposes.
#[derive(Debug, Default, Clone)]
pub struct PodFacts {
    pub pod_ips: Vec<String>,
    pub host_ips: Vec<String>,
    /// The node's allocatable resources, for unset limits.
    pub allocatable_cpu_milli: i64,
    pub allocatable_memory: i64,
    pub allocatable_ephemeral_storage: i64,
}

/// The names of the ConfigMaps and Secrets `c`'s environment reads.
pub fn referenced(c: &Container) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    for e in c.env_from.iter().flatten() {
        if let Some(r) = &e.config_map_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &e.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    for e in c.env.iter().flatten() {
        let Some(from) = &e.value_from else { continue };
        if let Some(r) = &from.config_map_key_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &from.secret_key_ref {
            secrets.push(r.name.clone());
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

fn secret_value(s: &Secret, key: &str) -> Option<String> {
    if let Some(v) = s.data.as_ref().and_then(|d| d.get(key)) {
        return Some(String::from_utf8_lossy(&v.0).into_owned());
    }
    s.string_data.as_ref().and_then(|d| d.get(key)).cloned()
}

/// Resolves `c`'s environment, in order, later definitions of a name
/// replacing earlier ones in place.
pub fn container_env(
    pod: &Pod,
    c: &Container,
    facts: &PodFacts,
    sources: &Sources,
) -> Result<Vec<(String, String)>, EnvError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(slot) = env.iter_mut().find(|(name, _)| *name == k) {
            slot.1 = v;
        } else {
            env.push((k, v));
        }
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match sources.config_maps.get(&r.name).cloned().flatten() {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        set(&mut env, format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(EnvError::ConfigMapNotFound(r.name.clone())),
            }
        }
        if let Some(r) = &from.secret_ref {
            match sources.secrets.get(&r.name).cloned().flatten() {
                Some(s) => {
                    for (k, v) in s.data.iter().flatten() {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(EnvError::SecretNotFound(r.name.clone())),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            if let Some(r) = &from.config_map_key_ref {
                let optional = r.optional == Some(true);
                match sources.config_maps.get(&r.name).cloned().flatten() {
                    None if optional => continue,
                    None => return Err(EnvError::ConfigMapNotFound(r.name.clone())),
                    Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(v) => v.clone(),
                        None if optional => continue,
                        None => {
                            return Err(EnvError::ConfigMapKey {
                                key: r.key.clone(),
                                namespace: ns.clone(),
                                name: r.name.clone(),
                            });
                        }
                    },
                }
            } else if let Some(r) = &from.secret_key_ref {
                let optional = r.optional == Some(true);
                match sources.secrets.get(&r.name).cloned().flatten() {
                    None if optional => continue,
                    None => return Err(EnvError::SecretNotFound(r.name.clone())),
                    Some(s) => match secret_value(&s, &r.key) {
                        Some(v) => v,
                        None if optional => continue,
                        None => {
                            return Err(EnvError::SecretKey {
                                key: r.key.clone(),
                                namespace: ns.clone(),
                                name: r.name.clone(),
                            });
                        }
                    },
                }
            } else if let Some(f) = &from.field_ref {
                field_value(pod, f, facts)?
            } else if let Some(r) = &from.resource_field_ref {
                resource_value(pod, Some(c), r, facts)?
            } else {
                String::new()
            }
        } else {
            let mut defined: BTreeMap<&str, &str> = sources
                .services
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            defined.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            expand(e.value.as_deref().unwrap_or_default(), &defined)
        };
        set(&mut env, e.name.clone(), value);
    }
    for (k, v) in &sources.services {
        if !env.iter().any(|(name, _)| name == k) {
            env.push((k.clone(), v.clone()));
        }
    }
    Ok(env)
}

fn env_name(s: &str) -> String {
    s.to_uppercase().replace('-', "_")
}

/// The kubelet's service environment variables (`FromServices` plus the
/// Docker link variables) for services with a cluster IP, in order.
pub fn service_env(services: &[Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for svc in services {
        let spec = svc.spec.clone().unwrap_or_default();
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        let ports = spec.ports.clone().unwrap_or_default();
        if ip.is_empty() || ip == "None" || ports.is_empty() {
            continue;
        }
        let prefix = env_name(svc.metadata.name.as_deref().unwrap_or_default());
        out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{prefix}_SERVICE_PORT"), ports[0].port.to_string()));
        for p in &ports {
            if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!("{prefix}_SERVICE_PORT_{}", env_name(name)),
                    p.port.to_string(),
                ));
            }
        }
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.clone()
        };
        for (i, p) in ports.iter().enumerate() {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".to_string());
            let lower = proto.to_lowercase();
            let url = format!("{lower}://{host}:{}", p.port);
            if i == 0 {
                out.push((format!("{prefix}_PORT"), url.clone()));
            }
            let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
            out.push((pp.clone(), url));
            out.push((format!("{pp}_PROTO"), lower));
            out.push((format!("{pp}_PORT"), p.port.to_string()));
            out.push((format!("{pp}_ADDR"), ip.clone()));
        }
    }
    out
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an
/// undefined reference is kept as written, `$$` is a literal `$`.
pub fn expand(input: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `metadata.labels['key']` → `Some("key")`.
fn subscript<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let inner = path.strip_prefix(prefix)?.strip_prefix("['")?;
    inner.strip_suffix("']")
}

/// Labels or annotations in the downward API's file format: sorted
/// `key="value"` lines, values quoted like Go's `%q`.
pub fn format_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of a `fieldRef` (env vars and downward API files).
pub fn field_value(
    pod: &Pod,
    f: &ObjectFieldSelector,
    facts: &PodFacts,
) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let path = f.field_path.as_str();
    let empty = BTreeMap::new();
    if let Some(key) = subscript(path, "metadata.labels") {
        return Ok(meta
            .labels
            .as_ref()
            .and_then(|l| l.get(key))
            .cloned()
            .unwrap_or_default());
    }
    if let Some(key) = subscript(path, "metadata.annotations") {
        return Ok(meta
            .annotations
            .as_ref()
            .and_then(|l| l.get(key))
            .cloned()
            .unwrap_or_default());
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref().unwrap_or(&empty)),
        "metadata.annotations" => format_map(meta.annotations.as_ref().unwrap_or(&empty)),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.hostIP" => facts.host_ips.first().cloned().unwrap_or_default(),
        "status.hostIPs" => facts.host_ips.join(","),
        "status.podIP" => facts.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => facts.pod_ips.join(","),
        other => return Err(EnvError::FieldPath(other.to_string())),
    })
}

fn ceil_div(a: i64, b: i64) -> i64 {
    if b <= 0 {
        return a;
    }
    (a + b - 1).div_euclid(b)
}

/// The value of a `resourceFieldRef`: the container's request or limit
/// divided by the divisor, rounded up; unset limits are the node's
/// allocatable, unset requests 0.
pub fn resource_value(
    pod: &Pod,
    own: Option<&Container>,
    r: &ResourceFieldSelector,
    facts: &PodFacts,
) -> Result<String, EnvError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let c = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == name)
            .cloned()
            .ok_or_else(|| EnvError::NoSuchContainer(name.to_string()))?,
        None => own
            .cloned()
            .ok_or_else(|| EnvError::NoSuchContainer(String::new()))?,
    };
    let divisor = r.divisor.as_ref().map(|q| q.0.as_str()).unwrap_or("1");
    let divisor = Quantity::parse(divisor).map_err(|_| EnvError::Divisor(divisor.to_string()))?;
    let (kind, name) = r
        .resource
        .split_once('.')
        .ok_or_else(|| EnvError::Resource(r.resource.clone()))?;
    let value = match (kind, name) {
        ("limits", "cpu") => {
            let v = resources::limit_milli(&c, "cpu");
            let v = if v == 0 {
                facts.allocatable_cpu_milli
            } else {
                v
            };
            ceil_div(v, divisor.milli_value().max(1))
        }
        ("requests", "cpu") => ceil_div(
            resources::request_milli(&c, "cpu"),
            divisor.milli_value().max(1),
        ),
        ("limits", "memory") | ("limits", "ephemeral-storage") => {
            let v = resources::limit_value(&c, name);
            let v = match (v, name) {
                (0, "memory") => facts.allocatable_memory,
                (0, _) => facts.allocatable_ephemeral_storage,
                (v, _) => v,
            };
            ceil_div(v, divisor.value().max(1))
        }
        ("requests", "memory") | ("requests", "ephemeral-storage") => {
            ceil_div(resources::request_value(&c, name), divisor.value().max(1))
        }
        _ => return Err(EnvError::Resource(r.resource.clone())),
    };
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource, PodSpec,
        ResourceRequirements, SecretKeySelector,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity as Q;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn from(name: &str, src: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(src),
        }
    }

    fn pod_with(c: Container) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                uid: Some("u-1".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![c],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn sources() -> Sources {
        let cm = ConfigMap {
            data: Some(
                [
                    ("COLOR".to_string(), "blue".to_string()),
                    ("SIZE".to_string(), "xl".to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let secret = Secret {
            data: Some([("password".to_string(), ByteString(b"hunter2".to_vec()))].into()),
            ..Default::default()
        };
        Sources {
            config_maps: [("cfg".to_string(), Some(cm)), ("gone".to_string(), None)].into(),
            secrets: [("creds".to_string(), Some(secret))].into(),
            services: Vec::new(),
        }
    }

    fn facts() -> PodFacts {
        PodFacts {
            pod_ips: vec!["10.88.0.7".into()],
            host_ips: vec!["192.168.1.2".into()],
            allocatable_cpu_milli: 2000,
            allocatable_memory: 4 << 30,
            allocatable_ephemeral_storage: 10 << 30,
        }
    }

    #[test]
    fn env_resolves_values_references_and_expansions() {
        struct Case {
            name: &'static str,
            env: Vec<EnvVar>,
            env_from: Vec<EnvFromSource>,
            want: Result<Vec<(&'static str, &'static str)>, EnvError>,
        }
        let cm_key = |name: &str, key: &str, optional: Option<bool>| EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: name.into(),
                key: key.into(),
                optional,
            }),
            ..Default::default()
        };
        let field = |path: &str| EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..Default::default()
        };
        let res = |r: &str, divisor: Option<&str>| EnvVarSource {
            resource_field_ref: Some(ResourceFieldSelector {
                resource: r.into(),
                divisor: divisor.map(|d| Q(d.into())),
                container_name: None,
            }),
            ..Default::default()
        };
        let cases = vec![
            Case {
                name: "plain values and expansion of earlier ones",
                env: vec![
                    var("A", "x"),
                    var("B", "$(A)-y"),
                    var("C", "$(NOPE) $$(A) $"),
                ],
                env_from: vec![],
                want: Ok(vec![("A", "x"), ("B", "x-y"), ("C", "$(NOPE) $(A) $")]),
            },
            Case {
                name: "configmap and secret keys",
                env: vec![
                    from("COLOR", cm_key("cfg", "COLOR", None)),
                    from(
                        "PW",
                        EnvVarSource {
                            secret_key_ref: Some(SecretKeySelector {
                                name: "creds".into(),
                                key: "password".into(),
                                optional: None,
                            }),
                            ..Default::default()
                        },
                    ),
                ],
                env_from: vec![],
                want: Ok(vec![("COLOR", "blue"), ("PW", "hunter2")]),
            },
            Case {
                name: "missing optional key is skipped",
                env: vec![
                    from("X", cm_key("cfg", "nope", Some(true))),
                    from("Y", cm_key("gone", "k", Some(true))),
                ],
                env_from: vec![],
                want: Ok(vec![]),
            },
            Case {
                name: "missing required key is an error",
                env: vec![from("X", cm_key("cfg", "nope", None))],
                env_from: vec![],
                want: Err(EnvError::ConfigMapKey {
                    key: "nope".into(),
                    namespace: "shop".into(),
                    name: "cfg".into(),
                }),
            },
            Case {
                name: "missing required configmap is an error",
                env: vec![from("X", cm_key("gone", "k", None))],
                env_from: vec![],
                want: Err(EnvError::ConfigMapNotFound("gone".into())),
            },
            Case {
                name: "envFrom with prefix, overridden by env",
                env: vec![var("P_SIZE", "s")],
                env_from: vec![EnvFromSource {
                    prefix: Some("P_".into()),
                    config_map_ref: Some(ConfigMapEnvSource {
                        name: "cfg".into(),
                        optional: None,
                    }),
                    secret_ref: None,
                }],
                want: Ok(vec![("P_COLOR", "blue"), ("P_SIZE", "s")]),
            },
            Case {
                name: "downward api fields",
                env: vec![
                    from("NAME", field("metadata.name")),
                    from("NS", field("metadata.namespace")),
                    from("APP", field("metadata.labels['app']")),
                    from("NODE", field("spec.nodeName")),
                    from("IP", field("status.podIP")),
                    from("HOST", field("status.hostIP")),
                ],
                env_from: vec![],
                want: Ok(vec![
                    ("NAME", "web"),
                    ("NS", "shop"),
                    ("APP", "web"),
                    ("NODE", "n1"),
                    ("IP", "10.88.0.7"),
                    ("HOST", "192.168.1.2"),
                ]),
            },
            Case {
                name: "unknown field path",
                env: vec![from("X", field("spec.bogus"))],
                env_from: vec![],
                want: Err(EnvError::FieldPath("spec.bogus".into())),
            },
            Case {
                name: "resource fields with divisors and allocatable fallback",
                env: vec![
                    from("CPU_LIMIT", res("limits.cpu", None)),
                    from("CPU_REQ_M", res("requests.cpu", Some("1m"))),
                    from("MEM_LIMIT_MI", res("limits.memory", Some("1Mi"))),
                ],
                env_from: vec![],
                want: Ok(vec![
                    ("CPU_LIMIT", "2"),
                    ("CPU_REQ_M", "250"),
                    ("MEM_LIMIT_MI", "4096"),
                ]),
            },
        ];
        for case in cases {
            let c = Container {
                name: "app".into(),
                env: Some(case.env),
                env_from: Some(case.env_from),
                resources: Some(ResourceRequirements {
                    requests: Some([("cpu".to_string(), Q("250m".into()))].into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let pod = pod_with(c.clone());
            let got = container_env(&pod, &c, &facts(), &sources());
            let want = case.want.map(|v| {
                v.into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>()
            });
            assert_eq!(got, want, "{}", case.name);
        }
    }

    #[test]
    fn services_become_kubelet_style_variables_after_the_containers_own() {
        let svc: Service = match serde_json::from_value(serde_json::json!({
            "metadata": {"name": "my-db"},
            "spec": {"clusterIP": "10.43.0.9", "ports": [
                {"name": "sql", "port": 5432},
                {"port": 9187, "protocol": "UDP"}
            ]}
        })) {
            Ok(s) => s,
            Err(e) => panic!("service: {e}"),
        };
        let headless: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "headless"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}
        }))
        .unwrap_or_default();
        let vars = service_env(&[svc, headless]);
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("MY_DB_SERVICE_HOST"), Some("10.43.0.9"));
        assert_eq!(get("MY_DB_SERVICE_PORT"), Some("5432"));
        assert_eq!(get("MY_DB_SERVICE_PORT_SQL"), Some("5432"));
        assert_eq!(get("MY_DB_PORT"), Some("tcp://10.43.0.9:5432"));
        assert_eq!(get("MY_DB_PORT_9187_UDP"), Some("udp://10.43.0.9:9187"));
        assert_eq!(get("MY_DB_PORT_9187_UDP_PROTO"), Some("udp"));
        assert_eq!(get("MY_DB_PORT_5432_TCP_ADDR"), Some("10.43.0.9"));
        assert!(vars.iter().all(|(k, _)| !k.starts_with("HEADLESS")));

        let c = Container {
            name: "app".into(),
            env: Some(vec![
                var("URL", "http://$(MY_DB_SERVICE_HOST)"),
                var("MY_DB_SERVICE_PORT", "1"),
            ]),
            ..Default::default()
        };
        let pod = pod_with(c.clone());
        let sources = Sources {
            services: vars.clone(),
            ..Default::default()
        };
        let env = container_env(&pod, &c, &facts(), &sources).unwrap_or_default();
        assert_eq!(env[0], ("URL".to_string(), "http://10.43.0.9".to_string()));
        assert_eq!(env[1], ("MY_DB_SERVICE_PORT".to_string(), "1".to_string()));
        assert_eq!(
            env.iter()
                .filter(|(k, _)| k == "MY_DB_SERVICE_PORT")
                .count(),
            1,
            "the container's own definition wins"
        );
        assert_eq!(env.len(), 1 + vars.len());
    }

    #[test]
    fn downward_api_maps_are_sorted_quoted_lines() {
        let m: BTreeMap<String, String> = [
            ("b".to_string(), "two \"2\"".to_string()),
            ("a".to_string(), "one".to_string()),
        ]
        .into();
        assert_eq!(format_map(&m), "a=\"one\"\nb=\"two \\\"2\\\"\"");
    }
}
