//! Pod spec → CRI configuration, pure: the sandbox config (metadata, DNS,
//! port mappings, namespaces, cgroup parent, security context) and each
//! container's config (command, env, mounts, security context, resources,
//! log path), with the labels and annotations by which the agent finds its
//! sandboxes and containers again after a restart.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Container, Pod, PodSecurityContext, SeccompProfile, SecurityContext,
};
use skiff_runtime::cri_types as cri;

use crate::env;
use crate::resources::{self, QosClass};

pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
pub const ANNOTATION_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
pub const ANNOTATION_HASH: &str = "io.kubernetes.container.hash";
pub const ANNOTATION_TERMINATION_MESSAGE_PATH: &str =
    "io.kubernetes.container.terminationMessagePath";
pub const ANNOTATION_GRACE_PERIOD: &str = "io.kubernetes.pod.terminationGracePeriod";

/// Paths hidden from unprivileged containers (`defaultMaskedPaths`).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// Paths read-only in unprivileged containers (`defaultReadonlyPaths`).
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Errors turning a spec into a container config
/// (`CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("cannot find volume {volume:?} to mount into container {container:?}")]
    NoVolume { volume: String, container: String },
    #[error("container has runAsNonRoot and image will run as root")]
    RunsAsRoot,
    #[error(
        "container has runAsNonRoot and image has non-numeric user ({0}), cannot verify user is non-root"
    )]
    NonNumericUser(String),
    #[error(transparent)]
    Env(#[from] env::EnvError),
}

/// The host's resolver configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostDns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl HostDns {
    /// Parses resolv.conf content.
    pub fn parse(text: &str) -> HostDns {
        let mut dns = HostDns::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => dns.servers.extend(words.next().map(str::to_string)),
                Some("search") | Some("domain") => {
                    dns.searches = words.map(str::to_string).collect()
                }
                Some("options") => dns.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        dns
    }
}

/// The cluster's DNS settings.
#[derive(Debug, Clone, Default)]
pub struct ClusterDns {
    pub servers: Vec<String>,
    pub domain: String,
}

/// How a pod's DNS was resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsResult {
    pub config: cri::DnsConfig,
    /// ClusterFirst without cluster DNS configured: the host's resolver was
    /// used instead (the kubelet's `MissingClusterDNS` event).
    pub missing_cluster_dns: bool,
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}

/// `dnsPolicy` and `dnsConfig` → the sandbox's resolver (kubelet's
/// `GetPodDNS`).
pub fn dns_config(pod: &Pod, cluster: &ClusterDns, host: &HostDns) -> DnsResult {
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let host_network = spec.host_network == Some(true);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let effective = match policy {
        "ClusterFirst" if host_network => "Default",
        "ClusterFirstWithHostNet" => "ClusterFirst",
        p => p,
    };
    let mut missing_cluster_dns = false;
    let mut cfg = cri::DnsConfig::default();
    match effective {
        "ClusterFirst" if !cluster.servers.is_empty() => {
            cfg.servers = cluster.servers.clone();
            let d = &cluster.domain;
            cfg.searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
            for s in &host.searches {
                push_unique(&mut cfg.searches, s);
            }
            cfg.options = vec!["ndots:5".to_string()];
        }
        "None" => {}
        other => {
            missing_cluster_dns = other == "ClusterFirst";
            cfg.servers = host.servers.clone();
            cfg.searches = host.searches.clone();
            cfg.options = host.options.clone();
        }
    }
    if let Some(extra) = &spec.dns_config {
        for s in extra.nameservers.iter().flatten() {
            push_unique(&mut cfg.servers, s);
        }
        for s in extra.searches.iter().flatten() {
            push_unique(&mut cfg.searches, s);
        }
        for o in extra.options.iter().flatten() {
            let opt = match &o.value {
                Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            };
            let name = opt.split(':').next().unwrap_or_default().to_string();
            cfg.options
                .retain(|x| x.split(':').next().unwrap_or_default() != name);
            cfg.options.push(opt);
        }
    }
    cfg.servers.truncate(3);
    cfg.searches.truncate(32);
    DnsResult {
        config: cfg,
        missing_cluster_dns,
    }
}

/// The pod's hostname: `spec.hostname` or its name, at most 63 characters.
pub fn hostname(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    let name = spec
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let mut h: String = name.chars().take(63).collect();
    while h.ends_with('-') || h.ends_with('.') {
        h.pop();
    }
    h
}

/// The pod's log directory under `log_root`: `<ns>_<name>_<uid>`.
pub fn log_directory(log_root: &Path, pod: &Pod) -> PathBuf {
    log_root.join(format!(
        "{}_{}_{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default()
    ))
}

/// A container's log file relative to the sandbox's log directory.
pub fn log_path(container: &str, restart_count: i32) -> String {
    format!("{container}/{restart_count}.log")
}

/// The pod's cgroup parent (cgroupfs layout, as the kubelet's).
pub fn cgroup_parent(root: &str, qos: QosClass, uid: &str) -> String {
    let root = root.trim_end_matches('/');
    match qos.cgroup_dir() {
        Some(dir) => format!("{root}/{dir}/pod{uid}"),
        None => format!("{root}/pod{uid}"),
    }
}

fn namespace_options(pod: &Pod) -> cri::NamespaceOption {
    let spec = pod.spec.clone().unwrap_or_default();
    let mode = |host: Option<bool>, default: cri::NamespaceMode| {
        if host == Some(true) {
            cri::NamespaceMode::Node as i32
        } else {
            default as i32
        }
    };
    let pid_default = if spec.share_process_namespace == Some(true) {
        cri::NamespaceMode::Pod
    } else {
        cri::NamespaceMode::Container
    };
    cri::NamespaceOption {
        network: mode(spec.host_network, cri::NamespaceMode::Pod),
        pid: mode(spec.host_pid, pid_default),
        ipc: mode(spec.host_ipc, cri::NamespaceMode::Pod),
        ..Default::default()
    }
}

fn seccomp(profile: Option<&SeccompProfile>, privileged: bool) -> cri::SecurityProfile {
    use cri::security_profile::ProfileType;
    if privileged {
        return cri::SecurityProfile {
            profile_type: ProfileType::Unconfined as i32,
            localhost_ref: String::new(),
        };
    }
    match profile.map(|p| (p.type_.as_str(), p.localhost_profile.clone())) {
        Some(("RuntimeDefault", _)) => cri::SecurityProfile {
            profile_type: ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        },
        Some(("Localhost", path)) => cri::SecurityProfile {
            profile_type: ProfileType::Localhost as i32,
            localhost_ref: path.unwrap_or_default(),
        },
        // The kubelet's default is unconfined.
        _ => cri::SecurityProfile {
            profile_type: ProfileType::Unconfined as i32,
            localhost_ref: String::new(),
        },
    }
}

fn any_privileged(pod: &Pod) -> bool {
    let spec = pod.spec.clone().unwrap_or_default();
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| {
            c.security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false)
        })
}

/// Inputs to [`sandbox_config`] besides the pod.
#[derive(Debug, Clone)]
pub struct SandboxParams {
    pub attempt: u32,
    pub log_directory: PathBuf,
    pub dns: cri::DnsConfig,
    pub cgroup_root: String,
}

/// The CRI sandbox config of `pod`.
pub fn sandbox_config(pod: &Pod, p: &SandboxParams) -> cri::PodSandboxConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let meta = &pod.metadata;
    let uid = meta.uid.clone().unwrap_or_default();
    let psc = spec.security_context.clone().unwrap_or_default();
    let mut labels: HashMap<String, String> = meta
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.insert(
        LABEL_POD_NAME.to_string(),
        meta.name.clone().unwrap_or_default(),
    );
    labels.insert(
        LABEL_POD_NAMESPACE.to_string(),
        meta.namespace.clone().unwrap_or_default(),
    );
    labels.insert(LABEL_POD_UID.to_string(), uid.clone());
    let annotations: HashMap<String, String> = meta
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|port| port.host_port.unwrap_or(0) > 0)
        .map(|port| cri::PortMapping {
            protocol: match port.protocol.as_deref() {
                Some("UDP") => cri::Protocol::Udp as i32,
                Some("SCTP") => cri::Protocol::Sctp as i32,
                _ => cri::Protocol::Tcp as i32,
            },
            container_port: port.container_port,
            host_port: port.host_port.unwrap_or(0),
            host_ip: port.host_ip.clone().unwrap_or_default(),
        })
        .collect();
    let host_network = spec.host_network == Some(true);
    let privileged = any_privileged(pod);
    let sysctls = psc
        .sysctls
        .iter()
        .flatten()
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    let mut supplemental: Vec<i64> = psc.supplemental_groups.clone().unwrap_or_default();
    supplemental.extend(psc.fs_group);
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: meta.name.clone().unwrap_or_default(),
            uid: uid.clone(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            attempt: p.attempt,
        }),
        // A host-network pod shares the node's UTS namespace: no hostname.
        hostname: if host_network {
            String::new()
        } else {
            hostname(pod)
        },
        log_directory: p.log_directory.display().to_string(),
        dns_config: Some(p.dns.clone()),
        port_mappings,
        labels,
        annotations,
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent(&p.cgroup_root, resources::qos_class(pod), &uid),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(pod)),
                run_as_user: psc.run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: psc.run_as_group.map(|value| cri::Int64Value { value }),
                supplemental_groups: supplemental,
                privileged,
                seccomp: Some(seccomp(psc.seccomp_profile.as_ref(), privileged)),
                ..Default::default()
            }),
            sysctls,
            ..Default::default()
        }),
        windows: None,
    }
}

/// The effective security settings of a container: its own, else the pod's.
fn effective_security(
    pod_sc: &PodSecurityContext,
    sc: &SecurityContext,
) -> (Option<i64>, Option<i64>, Option<bool>) {
    (
        sc.run_as_user.or(pod_sc.run_as_user),
        sc.run_as_group.or(pod_sc.run_as_group),
        sc.run_as_non_root.or(pod_sc.run_as_non_root),
    )
}

/// The image's configured user, as the runtime's `image_status` reports it.
#[derive(Debug, Clone, Default)]
pub struct ImageUser {
    pub uid: Option<i64>,
    pub username: String,
}

/// A volume's location on the host, by volume name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePath {
    pub host_path: PathBuf,
    /// The volume is read-only whatever the mount says (configMap, secret,
    /// downwardAPI, projected, PVC with readOnly).
    pub read_only: bool,
}

/// Inputs to [`container_config`] besides the pod and container.
#[derive(Debug, Clone)]
pub struct ContainerParams<'a> {
    pub env: Vec<(String, String)>,
    pub volumes: &'a BTreeMap<String, VolumePath>,
    /// Mounts the agent adds (`/etc/hosts`, the termination log).
    pub extra_mounts: Vec<cri::Mount>,
    pub restart_count: i32,
    pub image_ref: String,
    pub image_user: ImageUser,
    pub memory_capacity: i64,
}

/// A hash of the container fields that, changed, require a restart (the
/// API lets only `image` change in place).
pub fn container_hash(c: &Container) -> String {
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in c.image.as_deref().unwrap_or_default().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// The volume mounts of `c` as CRI mounts (`subPathExpr` expanded with the
/// container's environment).
pub fn mounts(
    c: &Container,
    volumes: &BTreeMap<String, VolumePath>,
    env: &[(String, String)],
) -> Result<Vec<cri::Mount>, SpecError> {
    let vars: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = volumes.get(&m.name).ok_or_else(|| SpecError::NoVolume {
            volume: m.name.clone(),
            container: c.name.clone(),
        })?;
        let sub = match (&m.sub_path, &m.sub_path_expr) {
            (Some(s), _) if !s.is_empty() => s.clone(),
            (_, Some(e)) if !e.is_empty() => env::expand(e, &vars),
            _ => String::new(),
        };
        let host_path = if sub.is_empty() {
            v.host_path.clone()
        } else {
            v.host_path.join(sub.trim_start_matches('/'))
        };
        let propagation = match m.mount_propagation.as_deref() {
            Some("HostToContainer") => cri::MountPropagation::PropagationHostToContainer,
            Some("Bidirectional") => cri::MountPropagation::PropagationBidirectional,
            _ => cri::MountPropagation::PropagationPrivate,
        };
        out.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host_path.display().to_string(),
            readonly: v.read_only || m.read_only == Some(true),
            propagation: propagation as i32,
            ..Default::default()
        });
    }
    Ok(out)
}

/// The CRI config of container `c` of `pod`.
pub fn container_config(
    pod: &Pod,
    c: &Container,
    p: &ContainerParams<'_>,
) -> Result<cri::ContainerConfig, SpecError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let meta = &pod.metadata;
    let pod_sc = spec.security_context.clone().unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    let (run_as_user, run_as_group, non_root) = effective_security(&pod_sc, &sc);
    if non_root == Some(true) {
        match run_as_user.or(p.image_user.uid) {
            Some(0) => return Err(SpecError::RunsAsRoot),
            Some(_) => {}
            None if !p.image_user.username.is_empty() => {
                return Err(SpecError::NonNumericUser(p.image_user.username.clone()));
            }
            // No user in the image: it runs as root.
            None => return Err(SpecError::RunsAsRoot),
        }
    }
    let vars: BTreeMap<&str, &str> = p
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let expand_all = |v: &Option<Vec<String>>| -> Vec<String> {
        v.iter().flatten().map(|s| env::expand(s, &vars)).collect()
    };
    let mut mounts = mounts(c, p.volumes, &p.env)?;
    mounts.extend(p.extra_mounts.iter().cloned());
    let privileged = sc.privileged == Some(true);
    let unmasked = sc.proc_mount.as_deref() == Some("Unmasked");
    let mut supplemental = pod_sc.supplemental_groups.clone().unwrap_or_default();
    supplemental.extend(pod_sc.fs_group);
    let labels: HashMap<String, String> = [
        (LABEL_POD_NAME, meta.name.clone().unwrap_or_default()),
        (
            LABEL_POD_NAMESPACE,
            meta.namespace.clone().unwrap_or_default(),
        ),
        (LABEL_POD_UID, meta.uid.clone().unwrap_or_default()),
        (LABEL_CONTAINER_NAME, c.name.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let annotations: HashMap<String, String> = [
        (ANNOTATION_RESTART_COUNT, p.restart_count.to_string()),
        (ANNOTATION_HASH, container_hash(c)),
        (
            ANNOTATION_TERMINATION_MESSAGE_PATH,
            c.termination_message_path
                .clone()
                .unwrap_or_else(|| "/dev/termination-log".to_string()),
        ),
        (
            ANNOTATION_GRACE_PERIOD,
            spec.termination_grace_period_seconds
                .unwrap_or(30)
                .to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let caps = sc.capabilities.clone().unwrap_or_default();
    Ok(cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt: p.restart_count.max(0) as u32,
        }),
        image: Some(cri::ImageSpec {
            image: if p.image_ref.is_empty() {
                c.image.clone().unwrap_or_default()
            } else {
                p.image_ref.clone()
            },
            user_specified_image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: expand_all(&c.command),
        args: expand_all(&c.args),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: p
            .env
            .iter()
            .map(|(k, v)| cri::KeyValue {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        mounts,
        labels,
        annotations,
        log_path: log_path(&c.name, p.restart_count),
        stdin: c.stdin == Some(true),
        stdin_once: c.stdin_once == Some(true),
        tty: c.tty == Some(true),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(resources::linux_resources(
                c,
                resources::qos_class(pod),
                p.memory_capacity,
            )),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: caps.add.unwrap_or_default(),
                    drop_capabilities: caps.drop.unwrap_or_default(),
                    ..Default::default()
                }),
                privileged,
                namespace_options: Some(namespace_options(pod)),
                run_as_user: run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: run_as_group.map(|value| cri::Int64Value { value }),
                readonly_rootfs: sc.read_only_root_filesystem == Some(true),
                supplemental_groups: supplemental,
                no_new_privs: sc.allow_privilege_escalation == Some(false),
                masked_paths: if privileged || unmasked {
                    Vec::new()
                } else {
                    MASKED_PATHS.iter().map(|s| s.to_string()).collect()
                },
                readonly_paths: if privileged || unmasked {
                    Vec::new()
                } else {
                    READONLY_PATHS.iter().map(|s| s.to_string()).collect()
                },
                seccomp: Some(seccomp(
                    sc.seccomp_profile
                        .as_ref()
                        .or(pod_sc.seccomp_profile.as_ref()),
                    privileged,
                )),
                ..Default::default()
            }),
        }),
        ..Default::default()
    })
}

/// The `/etc/hosts` the kubelet writes for non-host-network pods.
pub fn etc_hosts(pod: &Pod, pod_ips: &[String], cluster_domain: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut s = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let host = hostname(pod);
    for ip in pod_ips {
        match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
                s.push_str(&format!(
                    "{ip}\t{host}.{sub}.{ns}.svc.{cluster_domain}\t{host}\n"
                ));
            }
            None => s.push_str(&format!("{ip}\t{host}\n")),
        }
    }
    let aliases = spec.host_aliases.unwrap_or_default();
    if !aliases.is_empty() {
        s.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            s.push_str(&format!(
                "{}\t{}\n",
                a.ip,
                a.hostnames.unwrap_or_default().join("\t")
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Capabilities, ContainerPort, PodDNSConfig, PodDNSConfigOption, PodSpec, VolumeMount,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(spec: PodSpec) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                uid: Some("u1".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(spec),
            ..Default::default()
        }
    }

    #[test]
    fn dns_follows_the_pod_dns_policy() {
        let cluster = ClusterDns {
            servers: vec!["10.43.0.10".into()],
            domain: "cluster.local".into(),
        };
        let host = HostDns::parse("nameserver 1.1.1.1\nsearch corp.example\noptions edns0\n");
        /// (name, spec, cluster, servers, searches, options, missing cluster DNS)
        type Case<'a> = (
            &'a str,
            PodSpec,
            ClusterDns,
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            bool,
        );
        let cases: Vec<Case> = vec![
            (
                "cluster first",
                PodSpec::default(),
                cluster.clone(),
                &["10.43.0.10"],
                &[
                    "shop.svc.cluster.local",
                    "svc.cluster.local",
                    "cluster.local",
                    "corp.example",
                ],
                &["ndots:5"],
                false,
            ),
            (
                "cluster first without cluster dns falls back to the host",
                PodSpec::default(),
                ClusterDns::default(),
                &["1.1.1.1"],
                &["corp.example"],
                &["edns0"],
                true,
            ),
            (
                "host network uses the host",
                PodSpec {
                    host_network: Some(true),
                    ..Default::default()
                },
                cluster.clone(),
                &["1.1.1.1"],
                &["corp.example"],
                &["edns0"],
                false,
            ),
            (
                "none with a dns config",
                PodSpec {
                    dns_policy: Some("None".into()),
                    dns_config: Some(PodDNSConfig {
                        nameservers: Some(vec!["9.9.9.9".into()]),
                        searches: Some(vec!["a.example".into()]),
                        options: Some(vec![PodDNSConfigOption {
                            name: Some("ndots".into()),
                            value: Some("2".into()),
                        }]),
                    }),
                    ..Default::default()
                },
                cluster.clone(),
                &["9.9.9.9"],
                &["a.example"],
                &["ndots:2"],
                false,
            ),
        ];
        for (name, spec, cluster, servers, searches, options, missing) in cases {
            let got = dns_config(&pod(spec), &cluster, &host);
            assert_eq!(got.config.servers, servers, "{name}: servers");
            assert_eq!(got.config.searches, searches, "{name}: searches");
            assert_eq!(got.config.options, options, "{name}: options");
            assert_eq!(got.missing_cluster_dns, missing, "{name}: missing");
        }
    }

    #[test]
    fn sandbox_config_carries_identity_ports_and_namespaces() {
        let p = pod(PodSpec {
            host_network: Some(true),
            containers: vec![Container {
                name: "c".into(),
                ports: Some(vec![
                    ContainerPort {
                        container_port: 80,
                        host_port: Some(8080),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    },
                    ContainerPort {
                        container_port: 9090,
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }],
            ..Default::default()
        });
        let cfg = sandbox_config(
            &p,
            &SandboxParams {
                attempt: 2,
                log_directory: PathBuf::from("/d/log/pods/shop_web_u1"),
                dns: cri::DnsConfig::default(),
                cgroup_root: "/kubepods".into(),
            },
        );
        let meta = cfg.metadata.clone().unwrap_or_default();
        assert_eq!(
            (meta.name.as_str(), meta.uid.as_str(), meta.attempt),
            ("web", "u1", 2)
        );
        assert_eq!(cfg.hostname, "", "host network sets no hostname");
        assert_eq!(cfg.log_directory, "/d/log/pods/shop_web_u1");
        assert_eq!(cfg.port_mappings.len(), 1);
        assert_eq!(cfg.port_mappings[0].host_port, 8080);
        assert_eq!(
            cfg.labels.get(LABEL_POD_UID).map(String::as_str),
            Some("u1")
        );
        assert_eq!(cfg.labels.get("app").map(String::as_str), Some("web"));
        let linux = cfg.linux.unwrap_or_default();
        assert_eq!(linux.cgroup_parent, "/kubepods/besteffort/podu1");
        let ns = linux
            .security_context
            .and_then(|s| s.namespace_options)
            .unwrap_or_default();
        assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
        assert_eq!(ns.pid, cri::NamespaceMode::Container as i32);
    }

    #[test]
    fn container_config_expands_args_and_maps_security_and_mounts() {
        let c = Container {
            name: "app".into(),
            image: Some("busybox:1".into()),
            command: Some(vec!["sh".into(), "-c".into()]),
            args: Some(vec!["echo $(GREETING) $$(HOME)".into()]),
            volume_mounts: Some(vec![VolumeMount {
                name: "data".into(),
                mount_path: "/data".into(),
                sub_path: Some("sub".into()),
                ..Default::default()
            }]),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    add: Some(vec!["NET_ADMIN".into()]),
                    drop: Some(vec!["ALL".into()]),
                }),
                run_as_user: Some(1000),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = pod(PodSpec {
            containers: vec![c.clone()],
            ..Default::default()
        });
        let volumes: BTreeMap<String, VolumePath> = [(
            "data".to_string(),
            VolumePath {
                host_path: PathBuf::from("/v/data"),
                read_only: false,
            },
        )]
        .into();
        let cfg = container_config(
            &p,
            &c,
            &ContainerParams {
                env: vec![("GREETING".into(), "hi".into())],
                volumes: &volumes,
                extra_mounts: vec![],
                restart_count: 3,
                image_ref: "sha256:abc".into(),
                image_user: ImageUser::default(),
                memory_capacity: 1 << 30,
            },
        );
        let cfg = match cfg {
            Ok(cfg) => cfg,
            Err(e) => panic!("container config: {e}"),
        };
        assert_eq!(cfg.args, vec!["echo hi $(HOME)".to_string()]);
        assert_eq!(cfg.log_path, "app/3.log");
        assert_eq!(cfg.mounts[0].host_path, "/v/data/sub");
        assert_eq!(cfg.mounts[0].container_path, "/data");
        assert_eq!(
            cfg.annotations
                .get(ANNOTATION_RESTART_COUNT)
                .map(String::as_str),
            Some("3")
        );
        let sc = cfg
            .linux
            .and_then(|l| l.security_context)
            .unwrap_or_default();
        assert!(sc.no_new_privs);
        assert_eq!(sc.run_as_user.map(|u| u.value), Some(1000));
        assert!(!sc.masked_paths.is_empty());
        let caps = sc.capabilities.unwrap_or_default();
        assert_eq!(caps.add_capabilities, vec!["NET_ADMIN".to_string()]);
        assert_eq!(caps.drop_capabilities, vec!["ALL".to_string()]);
    }

    #[test]
    fn run_as_non_root_rejects_root_images() {
        let c = Container {
            name: "app".into(),
            security_context: Some(SecurityContext {
                run_as_non_root: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = pod(PodSpec {
            containers: vec![c.clone()],
            ..Default::default()
        });
        let volumes = BTreeMap::new();
        let params = |uid: Option<i64>, username: &str| ContainerParams {
            env: vec![],
            volumes: &volumes,
            extra_mounts: vec![],
            restart_count: 0,
            image_ref: String::new(),
            image_user: ImageUser {
                uid,
                username: username.into(),
            },
            memory_capacity: 0,
        };
        assert_eq!(
            container_config(&p, &c, &params(Some(0), "")).err(),
            Some(SpecError::RunsAsRoot)
        );
        assert_eq!(
            container_config(&p, &c, &params(None, "nobody")).err(),
            Some(SpecError::NonNumericUser("nobody".into()))
        );
        assert!(container_config(&p, &c, &params(Some(65534), "")).is_ok());
    }

    #[test]
    fn etc_hosts_names_the_pod_and_its_aliases() {
        let p = pod(PodSpec {
            subdomain: Some("svc1".into()),
            host_aliases: Some(vec![k8s_openapi::api::core::v1::HostAlias {
                ip: "1.2.3.4".into(),
                hostnames: Some(vec!["foo".into(), "bar".into()]),
            }]),
            ..Default::default()
        });
        let hosts = etc_hosts(&p, &["10.0.0.5".to_string()], "cluster.local");
        assert!(hosts.contains("10.0.0.5\tweb.svc1.shop.svc.cluster.local\tweb\n"));
        assert!(hosts.contains("1.2.3.4\tfoo\tbar\n"));
    }
}
