//! The OCI runtime spec of a container, built as a pure function of the CRI
//! container and sandbox configs, the image's defaults and where the
//! sandbox's namespaces and files live. No IO here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use oci_spec::runtime::Spec;
use serde_json::{Value, json};

use crate::api::{Error, Result};
use crate::cri_types as cri;
use crate::images::oci::ContainerDefaults;

/// Docker's default capability set, which containerd's CRI also uses.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability (`privileged`, or `add: ["ALL"]`).
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
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
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Where a container's namespaces come from: a sandbox's bind-mounted
/// namespace file, or (`None`) the host's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxNamespaces {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

/// Files of the sandbox bind-mounted into each container unless a CRI mount
/// already covers the path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxFiles {
    pub hosts: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    pub hostname: Option<PathBuf>,
    /// A tmpfs shared by the pod's containers as `/dev/shm`.
    pub shm: Option<PathBuf>,
}

/// Everything [`build_spec`] needs.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    pub config: &'a cri::ContainerConfig,
    pub sandbox: &'a cri::PodSandboxConfig,
    pub image: &'a ContainerDefaults,
    /// The container's root file system (already mounted).
    pub rootfs: PathBuf,
    pub namespaces: SandboxNamespaces,
    pub files: SandboxFiles,
    /// Resolved user: uid, gid, supplementary gids.
    pub user: (u32, u32, Vec<u32>),
    /// cgroup path (cgroupfs driver, relative to each hierarchy's root).
    pub cgroups_path: String,
    /// The lowest `oom_score_adj` this process may set (its own: lowering
    /// it needs CAP_SYS_RESOURCE, which this machine does not grant).
    pub min_oom_score_adj: i64,
}

/// The process a container runs, by Kubernetes' rules: `command` replaces
/// the image's entrypoint (and drops its cmd), `args` replace the image's cmd.
pub fn process_args(
    config: &cri::ContainerConfig,
    image: &ContainerDefaults,
) -> Result<Vec<String>> {
    let entrypoint = image.entrypoint.clone().unwrap_or_default();
    let cmd = image.cmd.clone().unwrap_or_default();
    let args = match (config.command.is_empty(), config.args.is_empty()) {
        (false, _) => config.command.iter().chain(&config.args).cloned().collect(),
        (true, false) => entrypoint
            .into_iter()
            .chain(config.args.iter().cloned())
            .collect(),
        (true, true) => entrypoint.into_iter().chain(cmd).collect::<Vec<_>>(),
    };
    if args.is_empty() {
        return Err(Error::InvalidArgument(
            "no command: the image has no entrypoint or cmd and none was given".into(),
        ));
    }
    Ok(args)
}

/// Image env first, CRI envs override by name; PATH defaulted.
pub fn environment(config: &cri::ContainerConfig, image: &ContainerDefaults) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        if !values.contains_key(k) {
            order.push(k.to_string());
        }
        values.insert(k.to_string(), v.to_string());
    };
    for e in image.env.iter().flatten() {
        match e.split_once('=') {
            Some((k, v)) => set(k, v),
            None => set(e, ""),
        }
    }
    for kv in &config.envs {
        set(&kv.key, &kv.value);
    }
    let has_path = image.env.iter().flatten().any(|e| e.starts_with("PATH="))
        || config.envs.iter().any(|kv| kv.key == "PATH");
    if !has_path {
        set(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    order
        .into_iter()
        .map(|k| format!("{k}={}", values[&k]))
        .collect()
}

fn normalise_cap(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" || upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

/// The capability set after CRI add/drop (with `ALL` in either list).
pub fn capabilities(caps: Option<&cri::Capability>, privileged: bool) -> Vec<String> {
    if privileged {
        return ALL_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    }
    let mut set: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    if let Some(c) = caps {
        let add: Vec<String> = c
            .add_capabilities
            .iter()
            .map(|s| normalise_cap(s))
            .collect();
        let drop: Vec<String> = c
            .drop_capabilities
            .iter()
            .map(|s| normalise_cap(s))
            .collect();
        if drop.iter().any(|d| d == "ALL") {
            set.clear();
        } else {
            set.retain(|s| !drop.contains(s));
        }
        if add.iter().any(|a| a == "ALL") {
            set = ALL_CAPABILITIES.iter().map(|s| s.to_string()).collect();
        } else {
            for a in add {
                if !set.contains(&a) {
                    set.push(a);
                }
            }
        }
    }
    set
}

fn propagation(p: i32) -> &'static str {
    match cri::MountPropagation::try_from(p).unwrap_or(cri::MountPropagation::PropagationPrivate) {
        cri::MountPropagation::PropagationPrivate => "rprivate",
        cri::MountPropagation::PropagationHostToContainer => "rslave",
        cri::MountPropagation::PropagationBidirectional => "rshared",
    }
}

/// Builds the OCI runtime spec (see module docs).
pub fn build_spec(input: &SpecInput<'_>) -> Result<Spec> {
    let config = input.config;
    let linux_cfg = config.linux.as_ref();
    let sc = linux_cfg.and_then(|l| l.security_context.as_ref());
    let privileged = sc.is_some_and(|s| s.privileged);
    let readonly_rootfs = sc.is_some_and(|s| s.readonly_rootfs);
    let caps = capabilities(sc.and_then(|s| s.capabilities.as_ref()), privileged);
    let ns_opts = sc.and_then(|s| s.namespace_options.as_ref());
    let pid_mode = ns_opts
        .map(|n| n.pid)
        .unwrap_or(cri::NamespaceMode::Container as i32);

    let args = process_args(config, input.image)?;
    let env = environment(config, input.image);
    let cwd = match (
        config.working_dir.as_str(),
        input.image.working_dir.as_deref(),
    ) {
        ("", Some(w)) if !w.is_empty() => w.to_string(),
        ("", _) => "/".to_string(),
        (w, _) => w.to_string(),
    };
    if !cwd.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "working dir {cwd:?} is not absolute"
        )));
    }

    // Mounts: defaults first, CRI mounts after; a CRI mount replaces a default
    // at the same destination.
    let cri_dests: Vec<&str> = config
        .mounts
        .iter()
        .map(|m| m.container_path.as_str())
        .collect();
    let mut mounts: Vec<Value> = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if privileged { "rw" } else { "ro" }]}),
    ];
    match &input.files.shm {
        Some(shm) => mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": shm, "options": ["rbind", "rprivate", "rw"]})),
        None => mounts.push(json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]})),
    }
    for (dest, file) in [
        ("/etc/hosts", &input.files.hosts),
        ("/etc/resolv.conf", &input.files.resolv_conf),
        ("/etc/hostname", &input.files.hostname),
    ] {
        if let Some(src) = file
            && !cri_dests.contains(&dest)
        {
            let mode = if readonly_rootfs { "ro" } else { "rw" };
            mounts.push(json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind", "rprivate", mode]}));
        }
    }
    mounts.retain(|m| !cri_dests.iter().any(|d| m["destination"] == *d));
    for m in &config.mounts {
        if !m.container_path.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "mount destination {:?} is not absolute",
                m.container_path
            )));
        }
        if m.host_path.is_empty() {
            if m.image.is_some() {
                return Err(Error::Unsupported("image volume mounts"));
            }
            return Err(Error::InvalidArgument(format!(
                "mount {:?} has no host path",
                m.container_path
            )));
        }
        let mut options = vec!["rbind", propagation(m.propagation)];
        options.push(if m.readonly { "ro" } else { "rw" });
        mounts.push(json!({"destination": m.container_path, "type": "bind", "source": m.host_path, "options": options}));
    }

    let mut namespaces = vec![json!({"type": "mount"})];
    match cri::NamespaceMode::try_from(pid_mode) {
        Ok(cri::NamespaceMode::Node) => {}
        Ok(cri::NamespaceMode::Container) | Err(_) => namespaces.push(json!({"type": "pid"})),
        Ok(cri::NamespaceMode::Pod) => {
            return Err(Error::Unsupported(
                "a PID namespace shared by the pod's containers",
            ));
        }
        Ok(cri::NamespaceMode::Target) => {
            return Err(Error::Unsupported("a PID namespace of a target container"));
        }
    }
    for (kind, path) in [
        ("network", &input.namespaces.net),
        ("ipc", &input.namespaces.ipc),
        ("uts", &input.namespaces.uts),
    ] {
        if let Some(p) = path {
            namespaces.push(json!({"type": kind, "path": p}));
        }
    }

    let res = linux_cfg.and_then(|l| l.resources.as_ref());
    let mut resources = json!({
        "devices": if privileged { json!([{"allow": true, "access": "rwm"}]) } else { default_device_rules() },
    });
    let mut oom_score_adj = None;
    if let Some(r) = res {
        let mut cpu = serde_json::Map::new();
        if r.cpu_shares > 0 {
            cpu.insert("shares".into(), json!(r.cpu_shares));
        }
        if r.cpu_quota > 0 {
            cpu.insert("quota".into(), json!(r.cpu_quota));
        }
        if r.cpu_period > 0 {
            cpu.insert("period".into(), json!(r.cpu_period));
        }
        if !r.cpuset_cpus.is_empty() {
            cpu.insert("cpus".into(), json!(r.cpuset_cpus));
        }
        if !r.cpuset_mems.is_empty() {
            cpu.insert("mems".into(), json!(r.cpuset_mems));
        }
        if !cpu.is_empty() {
            resources["cpu"] = Value::Object(cpu);
        }
        if r.memory_limit_in_bytes > 0 {
            let swap = if r.memory_swap_limit_in_bytes > 0 {
                r.memory_swap_limit_in_bytes
            } else {
                r.memory_limit_in_bytes
            };
            resources["memory"] = json!({"limit": r.memory_limit_in_bytes, "swap": swap});
        }
        if r.oom_score_adj != 0 {
            oom_score_adj = Some(r.oom_score_adj.max(input.min_oom_score_adj));
        }
    }
    // The pod-level pids limit arrives in the sandbox's resources in the CRI;
    // kubelet's podPidsLimit is enforced on the pod cgroup, so nothing here.

    let (uid, gid, ref additional) = input.user;
    let mut process = json!({
        "terminal": config.tty,
        "user": {"uid": uid, "gid": gid, "additionalGids": additional},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": sc.is_some_and(|s| s.no_new_privs),
        // No rlimits: containers inherit the agent's. Raising a hard limit
        // needs CAP_SYS_RESOURCE, which this machine does not grant.
    });
    if let Some(adj) = oom_score_adj {
        process["oomScoreAdj"] = json!(adj);
    }
    let sysctl: BTreeMap<String, String> = input
        .sandbox
        .linux
        .as_ref()
        .map(|l| l.sysctls.clone().into_iter().collect())
        .unwrap_or_default();
    let mut linux = json!({
        "namespaces": namespaces,
        "resources": resources,
        "cgroupsPath": input.cgroups_path,
        "sysctl": sysctl,
    });
    if !privileged {
        let masked: Vec<&str> = MASKED_PATHS
            .iter()
            .copied()
            .chain(
                sc.map(|s| s.masked_paths.iter().map(String::as_str))
                    .into_iter()
                    .flatten(),
            )
            .collect();
        let readonly: Vec<&str> = READONLY_PATHS
            .iter()
            .copied()
            .chain(
                sc.map(|s| s.readonly_paths.iter().map(String::as_str))
                    .into_iter()
                    .flatten(),
            )
            .collect();
        linux["maskedPaths"] = json!(masked);
        linux["readonlyPaths"] = json!(readonly);
    }
    let mut annotations: BTreeMap<String, String> =
        config.annotations.clone().into_iter().collect();
    if let Some(m) = &config.metadata {
        annotations.insert("io.kubernetes.cri.container-name".into(), m.name.clone());
    }
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": input.rootfs, "readonly": readonly_rootfs},
        "mounts": mounts,
        "linux": linux,
        "annotations": annotations,
    });
    serde_json::from_value(spec).map_err(|e| Error::Runtime(format!("building the OCI spec: {e}")))
}

/// Deny all devices but the usual ones (runc's and containerd's default).
fn default_device_rules() -> Value {
    json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
        {"allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
        {"allow": true, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
        {"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
        {"allow": true, "type": "c", "major": 136, "access": "rwm"},
    ])
}

/// Resolves the user a container runs as: CRI `run_as_user`/`run_as_group`/
/// `run_as_username` over the image's `User` (`name`, `uid`, `name:group`,
/// `uid:gid`), names looked up in the image's `/etc/passwd` and
/// `/etc/group` contents.
pub fn resolve_user(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    image_user: Option<&str>,
    passwd: &str,
    group: &str,
) -> Result<(u32, u32, Vec<u32>)> {
    let lookup_user = |name: &str| -> Result<(u32, u32)> {
        if let Ok(uid) = name.parse::<u32>() {
            let gid = passwd_entries(passwd)
                .find(|e| e.1 == uid)
                .map(|e| e.2)
                .unwrap_or(0);
            return Ok((uid, gid));
        }
        passwd_entries(passwd)
            .find(|e| e.0 == name)
            .map(|e| (e.1, e.2))
            .ok_or_else(|| {
                Error::InvalidArgument(format!("user {name:?} is not in the image's /etc/passwd"))
            })
    };
    let lookup_group = |name: &str| -> Result<u32> {
        if let Ok(gid) = name.parse::<u32>() {
            return Ok(gid);
        }
        group
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 3).then(|| (f[0], f[2].parse::<u32>().ok()))
            })
            .find(|(n, _)| *n == name)
            .and_then(|(_, g)| g)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("group {name:?} is not in the image's /etc/group"))
            })
    };
    let (image_user_part, image_group_part) = match image_user.filter(|u| !u.is_empty()) {
        Some(u) => match u.split_once(':') {
            Some((u, g)) => (Some(u), Some(g)),
            None => (Some(u), None),
        },
        None => (None, None),
    };
    let (mut uid, mut gid) = match sc {
        Some(s) if s.run_as_user.is_some() => {
            let uid = s.run_as_user.as_ref().map(|v| v.value).unwrap_or(0);
            let uid = u32::try_from(uid)
                .map_err(|_| Error::InvalidArgument(format!("run_as_user {uid} out of range")))?;
            lookup_user(&uid.to_string())?
        }
        Some(s) if !s.run_as_username.is_empty() => lookup_user(&s.run_as_username)?,
        _ => match image_user_part {
            Some(u) => lookup_user(u)?,
            None => (0, 0),
        },
    };
    if let Some(g) = image_group_part
        && sc.is_none_or(|s| s.run_as_user.is_none() && s.run_as_username.is_empty())
    {
        gid = lookup_group(g)?;
    }
    if let Some(g) = sc.and_then(|s| s.run_as_group.as_ref()) {
        gid = u32::try_from(g.value).map_err(|_| {
            Error::InvalidArgument(format!("run_as_group {} out of range", g.value))
        })?;
    }
    let mut additional: Vec<u32> = Vec::new();
    if let Some(s) = sc {
        for g in &s.supplemental_groups {
            let g = u32::try_from(*g).map_err(|_| {
                Error::InvalidArgument(format!("supplemental group {g} out of range"))
            })?;
            if !additional.contains(&g) {
                additional.push(g);
            }
        }
    }
    uid = uid.min(u32::MAX - 1);
    Ok((uid, gid, additional))
}

/// `(name, uid, gid)` of each well-formed `/etc/passwd` line.
fn passwd_entries(passwd: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        Some((f[0], f[2].parse().ok()?, f[3].parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ContainerDefaults {
        ContainerDefaults {
            entrypoint: Some(vec!["/testbin".into()]),
            cmd: Some(vec!["pause".into()]),
            env: Some(vec!["PATH=/bin".into(), "A=image".into(), "B=image".into()]),
            working_dir: Some("/work".into()),
            ..Default::default()
        }
    }

    fn container(command: &[&str], args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn process_args_follow_kubernetes_command_and_args_rules() {
        type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str]);
        let cases: [Case; 4] = [
            (
                "neither: entrypoint + cmd",
                &[],
                &[],
                &["/testbin", "pause"],
            ),
            (
                "args only: entrypoint + args",
                &[],
                &["sleep", "1"],
                &["/testbin", "sleep", "1"],
            ),
            ("command only: cmd dropped", &["/bin/sh"], &[], &["/bin/sh"]),
            ("both", &["/bin/sh"], &["-c", "x"], &["/bin/sh", "-c", "x"]),
        ];
        for (name, command, args, want) in cases {
            assert_eq!(
                process_args(&container(command, args), &image()).unwrap(),
                want,
                "{name}"
            );
        }
        assert!(process_args(&container(&[], &[]), &ContainerDefaults::default()).is_err());
    }

    #[test]
    fn cri_envs_override_image_envs_in_image_order() {
        let mut c = container(&[], &[]);
        c.envs = vec![
            cri::KeyValue {
                key: "B".into(),
                value: "cri".into(),
            },
            cri::KeyValue {
                key: "C".into(),
                value: "cri".into(),
            },
        ];
        assert_eq!(
            environment(&c, &image()),
            ["PATH=/bin", "A=image", "B=cri", "C=cri"]
        );
        let defaults = environment(&container(&[], &[]), &ContainerDefaults::default());
        assert!(defaults[0].starts_with("PATH=/usr/local/sbin"));
    }

    #[test]
    fn capabilities_start_from_dockers_set_with_add_and_drop() {
        let cap = |add: &[&str], drop: &[&str]| cri::Capability {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            add_ambient_capabilities: vec![],
        };
        let default = capabilities(None, false);
        assert_eq!(default.len(), DEFAULT_CAPABILITIES.len());
        let c = capabilities(Some(&cap(&["NET_ADMIN"], &["CAP_NET_RAW"])), false);
        assert!(
            c.contains(&"CAP_NET_ADMIN".to_string()) && !c.contains(&"CAP_NET_RAW".to_string())
        );
        assert_eq!(
            capabilities(Some(&cap(&["CHOWN"], &["ALL"])), false),
            ["CAP_CHOWN"]
        );
        assert_eq!(
            capabilities(Some(&cap(&["ALL"], &[])), false).len(),
            ALL_CAPABILITIES.len()
        );
        assert_eq!(capabilities(None, true).len(), ALL_CAPABILITIES.len());
    }

    #[test]
    fn users_resolve_from_security_context_then_image_user() {
        let passwd = "root:x:0:0::/:/bin/sh\napp:x:1000:1001::/:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        let sc =
            |uid: Option<i64>, gid: Option<i64>, name: &str| cri::LinuxContainerSecurityContext {
                run_as_user: uid.map(|value| cri::Int64Value { value }),
                run_as_group: gid.map(|value| cri::Int64Value { value }),
                run_as_username: name.into(),
                supplemental_groups: vec![7, 7],
                ..Default::default()
            };
        type Case<'a> = (
            &'a str,
            Option<cri::LinuxContainerSecurityContext>,
            Option<&'a str>,
            (u32, u32),
        );
        let cases: Vec<Case> = vec![
            ("default root", None, None, (0, 0)),
            ("image user by name", None, Some("app"), (1000, 1001)),
            ("image uid:group", None, Some("1234:staff"), (1234, 50)),
            (
                "runAsUser wins over image user",
                Some(sc(Some(1000), None, "")),
                Some("root"),
                (1000, 1001),
            ),
            ("runAsGroup", Some(sc(Some(5), Some(6), "")), None, (5, 6)),
            (
                "runAsUsername",
                Some(sc(None, None, "app")),
                None,
                (1000, 1001),
            ),
        ];
        for (name, sc, image_user, want) in cases {
            let (uid, gid, _) = resolve_user(sc.as_ref(), image_user, passwd, group).unwrap();
            assert_eq!((uid, gid), want, "{name}");
        }
        let (_, _, extra) =
            resolve_user(Some(&sc(Some(1), None, "")), None, passwd, group).unwrap();
        assert_eq!(extra, [7]);
        assert!(resolve_user(None, Some("ghost"), passwd, group).is_err());
    }

    fn spec_for(config: &cri::ContainerConfig) -> Spec {
        let sandbox = cri::PodSandboxConfig::default();
        let img = image();
        build_spec(&SpecInput {
            config,
            sandbox: &sandbox,
            image: &img,
            rootfs: "/rootfs".into(),
            namespaces: SandboxNamespaces {
                net: Some("/ns/net".into()),
                ipc: Some("/ns/ipc".into()),
                uts: None,
            },
            files: SandboxFiles {
                hosts: Some("/sb/hosts".into()),
                shm: Some("/sb/shm".into()),
                ..Default::default()
            },
            user: (0, 0, vec![]),
            cgroups_path: "/skiff/c1".into(),
            min_oom_score_adj: 0,
        })
        .unwrap()
    }

    #[test]
    fn spec_joins_sandbox_namespaces_and_gets_its_own_mount_and_pid() {
        let spec = spec_for(&container(&[], &[]));
        let v = serde_json::to_value(&spec).unwrap();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        let kinds: Vec<(&str, Option<&str>)> = ns
            .iter()
            .map(|n| (n["type"].as_str().unwrap(), n["path"].as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("mount", None),
                ("pid", None),
                ("network", Some("/ns/net")),
                ("ipc", Some("/ns/ipc"))
            ]
        );
        assert_eq!(v["process"]["cwd"], "/work");
        assert_eq!(v["linux"]["cgroupsPath"], "/skiff/c1");
    }

    #[test]
    fn cri_mounts_replace_default_etc_files_and_keep_readonly() {
        let mut c = container(&[], &[]);
        c.mounts = vec![cri::Mount {
            container_path: "/etc/hosts".into(),
            host_path: "/kubelet/hosts".into(),
            readonly: true,
            ..Default::default()
        }];
        let v = serde_json::to_value(spec_for(&c)).unwrap();
        let hosts: Vec<&Value> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["destination"] == "/etc/hosts")
            .collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0]["source"], "/kubelet/hosts");
        assert!(
            hosts[0]["options"]
                .as_array()
                .unwrap()
                .contains(&json!("ro"))
        );
    }

    #[test]
    fn resources_map_to_cgroup_limits_and_negative_oom_score_adj_is_clamped() {
        let mut c = container(&[], &[]);
        c.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: 50_000,
                cpu_shares: 512,
                memory_limit_in_bytes: 64 << 20,
                oom_score_adj: -997,
                ..Default::default()
            }),
            ..Default::default()
        });
        let v = serde_json::to_value(spec_for(&c)).unwrap();
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 512);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["process"]["oomScoreAdj"], 0);
    }

    #[test]
    fn host_network_sandbox_means_no_network_namespace_entry() {
        let sandbox = cri::PodSandboxConfig::default();
        let img = image();
        let c = container(&[], &[]);
        let spec = build_spec(&SpecInput {
            config: &c,
            sandbox: &sandbox,
            image: &img,
            rootfs: "/r".into(),
            namespaces: SandboxNamespaces::default(),
            files: SandboxFiles::default(),
            user: (0, 0, vec![]),
            cgroups_path: "/c".into(),
            min_oom_score_adj: 0,
        })
        .unwrap();
        let v = serde_json::to_value(spec).unwrap();
        assert!(
            v["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["type"] != "network" && n["type"] != "uts")
        );
    }
}
