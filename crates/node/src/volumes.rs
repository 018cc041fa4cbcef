//! Pod volumes under `<data-dir>/pods/<uid>/volumes/<plugin>/<name>`:
//! emptyDir (tmpfs for `medium: Memory`), configMap, secret, downwardAPI and
//! projected (service-account tokens through the TokenRequest API) written
//! with the kubelet's atomic writer (`..data` symlink swap, so updates reach
//! running containers), hostPath with its type checks, and
//! persistentVolumeClaim bound to a PV with a `hostPath` or `local` path.
//! Also the automatic service-account volume.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapProjection, DownwardAPIVolumeFile, KeyToPath, PersistentVolume,
    PersistentVolumeClaim, Pod, ProjectedVolumeSource, Secret, ServiceAccount, Volume, VolumeMount,
    VolumeProjection,
};
use kube::api::{Api, PostParams};

use crate::env::{self, PodFacts};
use crate::spec::VolumePath;

/// Where the automatic service-account volume is mounted.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The name of the automatic service-account volume.
pub const SERVICE_ACCOUNT_VOLUME: &str = "kube-api-access-skiff";

/// A volume that could not be set up (a `FailedMount` event).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume {volume:?} : {message}")]
pub struct MountError {
    pub volume: String,
    pub message: String,
}

fn io_err(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

/// One file of a configMap/secret/downwardAPI/projected volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// A cached service-account token.
#[derive(Debug, Clone)]
struct Token {
    token: String,
    fetched: Instant,
    ttl: Duration,
}

/// Per-pod volume state kept by the pod worker between syncs.
#[derive(Debug, Default)]
pub struct PodVolumes {
    tokens: HashMap<(String, Vec<String>, i64), Token>,
}

/// Sets up and tears down pod volumes.
#[derive(Clone)]
pub struct VolumeManager {
    client: kube::Client,
    data_dir: PathBuf,
}

fn plugin_dir(v: &Volume) -> Option<&'static str> {
    if v.empty_dir.is_some() {
        Some("kubernetes.io~empty-dir")
    } else if v.config_map.is_some() {
        Some("kubernetes.io~configmap")
    } else if v.secret.is_some() {
        Some("kubernetes.io~secret")
    } else if v.downward_api.is_some() {
        Some("kubernetes.io~downward-api")
    } else if v.projected.is_some() {
        Some("kubernetes.io~projected")
    } else {
        None
    }
}

/// The kind of an unsupported volume, for the error message.
fn volume_kind(v: &Volume) -> String {
    let value = serde_json::to_value(v).unwrap_or_default();
    value
        .as_object()
        .and_then(|o| o.keys().find(|k| *k != "name").cloned())
        .unwrap_or_else(|| "unknown".to_string())
}

impl VolumeManager {
    pub fn new(client: kube::Client, data_dir: PathBuf) -> Self {
        VolumeManager { client, data_dir }
    }

    /// `<data-dir>/pods/<uid>`.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.data_dir.join("pods").join(uid)
    }

    /// Sets up (or refreshes) every volume of `pod`; returns where each
    /// lives on the host.
    pub async fn setup(
        &self,
        pod: &Pod,
        state: &mut PodVolumes,
        facts: &PodFacts,
    ) -> Result<BTreeMap<String, VolumePath>, MountError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let mut out = BTreeMap::new();
        for v in &volumes {
            let fail = |message: String| MountError {
                volume: v.name.clone(),
                message,
            };
            let dir =
                plugin_dir(v).map(|p| self.pod_dir(&uid).join("volumes").join(p).join(&v.name));
            let path = if let Some(ed) = &v.empty_dir {
                let dir = dir.unwrap_or_default();
                ensure_dir(&dir, 0o777).map_err(fail)?;
                if ed.medium.as_deref() == Some("Memory") {
                    mount_tmpfs(&dir, ed.size_limit.as_ref().map(|q| q.0.as_str()))
                        .map_err(fail)?;
                }
                VolumePath {
                    host_path: dir,
                    read_only: false,
                }
            } else if let Some(cm) = &v.config_map {
                let files = self
                    .config_map_files(
                        &ns,
                        &cm.name,
                        cm.items.as_deref(),
                        cm.default_mode,
                        cm.optional == Some(true),
                    )
                    .await
                    .map_err(fail)?;
                let dir = dir.unwrap_or_default();
                write_atomic(&dir, &files).map_err(fail)?;
                VolumePath {
                    host_path: dir,
                    read_only: true,
                }
            } else if let Some(s) = &v.secret {
                let name = s.secret_name.clone().unwrap_or_default();
                let files = self
                    .secret_files(
                        &ns,
                        &name,
                        s.items.as_deref(),
                        s.default_mode,
                        s.optional == Some(true),
                    )
                    .await
                    .map_err(fail)?;
                let dir = dir.unwrap_or_default();
                write_atomic(&dir, &files).map_err(fail)?;
                VolumePath {
                    host_path: dir,
                    read_only: true,
                }
            } else if let Some(d) = &v.downward_api {
                let files = downward_files(
                    pod,
                    d.items.as_deref().unwrap_or_default(),
                    d.default_mode,
                    facts,
                )
                .map_err(fail)?;
                let dir = dir.unwrap_or_default();
                write_atomic(&dir, &files).map_err(fail)?;
                VolumePath {
                    host_path: dir,
                    read_only: true,
                }
            } else if let Some(p) = &v.projected {
                let files = self
                    .projected_files(pod, p, state, facts)
                    .await
                    .map_err(fail)?;
                let dir = dir.unwrap_or_default();
                write_atomic(&dir, &files).map_err(fail)?;
                VolumePath {
                    host_path: dir,
                    read_only: true,
                }
            } else if let Some(hp) = &v.host_path {
                let path = PathBuf::from(&hp.path);
                check_host_path(&path, hp.type_.as_deref().unwrap_or_default()).map_err(fail)?;
                VolumePath {
                    host_path: path,
                    read_only: false,
                }
            } else if let Some(pvc) = &v.persistent_volume_claim {
                let path = self.claim_path(&ns, &pvc.claim_name).await.map_err(fail)?;
                VolumePath {
                    host_path: path,
                    read_only: pvc.read_only == Some(true),
                }
            } else {
                return Err(fail(format!(
                    "volume type {} is not supported by skiff-node",
                    volume_kind(v)
                )));
            };
            out.insert(v.name.clone(), path);
        }
        Ok(out)
    }

    async fn config_map_files(
        &self,
        ns: &str,
        name: &str,
        items: Option<&[KeyToPath]>,
        default_mode: Option<i32>,
        optional: bool,
    ) -> Result<BTreeMap<String, Payload>, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let cm = api.get_opt(name).await.map_err(|e| e.to_string())?;
        let Some(cm) = cm else {
            return if optional {
                Ok(BTreeMap::new())
            } else {
                Err(format!("configmap {name:?} not found"))
            };
        };
        let mut data: BTreeMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        data.extend(
            cm.binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        project_keys(&data, items, default_mode, optional, "configmap", name)
    }

    async fn secret_files(
        &self,
        ns: &str,
        name: &str,
        items: Option<&[KeyToPath]>,
        default_mode: Option<i32>,
        optional: bool,
    ) -> Result<BTreeMap<String, Payload>, String> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let s = api.get_opt(name).await.map_err(|e| e.to_string())?;
        let Some(s) = s else {
            return if optional {
                Ok(BTreeMap::new())
            } else {
                Err(format!("secret {name:?} not found"))
            };
        };
        let data: BTreeMap<String, Vec<u8>> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        project_keys(&data, items, default_mode, optional, "secret", name)
    }

    async fn projected_files(
        &self,
        pod: &Pod,
        p: &ProjectedVolumeSource,
        state: &mut PodVolumes,
        facts: &PodFacts,
    ) -> Result<BTreeMap<String, Payload>, String> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let mut files = BTreeMap::new();
        for source in p.sources.iter().flatten() {
            let VolumeProjection {
                config_map,
                secret,
                downward_api,
                service_account_token,
                cluster_trust_bundle,
            } = source;
            if let Some(cm) = config_map {
                files.extend(
                    self.config_map_files(
                        &ns,
                        &cm.name,
                        cm.items.as_deref(),
                        p.default_mode,
                        cm.optional == Some(true),
                    )
                    .await?,
                );
            }
            if let Some(s) = secret {
                files.extend(
                    self.secret_files(
                        &ns,
                        &s.name,
                        s.items.as_deref(),
                        p.default_mode,
                        s.optional == Some(true),
                    )
                    .await?,
                );
            }
            if let Some(d) = downward_api {
                files.extend(downward_files(
                    pod,
                    d.items.as_deref().unwrap_or_default(),
                    p.default_mode,
                    facts,
                )?);
            }
            if let Some(t) = service_account_token {
                let token = self
                    .token(
                        pod,
                        t.audience.clone(),
                        t.expiration_seconds.unwrap_or(3600),
                        state,
                    )
                    .await?;
                files.insert(
                    t.path.clone(),
                    Payload {
                        data: token.into_bytes(),
                        mode: mode_of(None, p.default_mode),
                    },
                );
            }
            if cluster_trust_bundle.is_some() {
                return Err(
                    "clusterTrustBundle projections are not supported by skiff-node".to_string(),
                );
            }
        }
        Ok(files)
    }

    /// A token for the pod's service account from the TokenRequest API,
    /// cached until 80 % of its lifetime passed.
    async fn token(
        &self,
        pod: &Pod,
        audience: Option<String>,
        expiration: i64,
        state: &mut PodVolumes,
    ) -> Result<String, String> {
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let audiences: Vec<String> = audience.into_iter().filter(|a| !a.is_empty()).collect();
        let key = (sa.clone(), audiences.clone(), expiration);
        if let Some(t) = state.tokens.get(&key)
            && t.fetched.elapsed() < t.ttl.mul_f64(0.8)
        {
            return Ok(t.token.clone());
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences,
                expiration_seconds: Some(expiration),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".to_string()),
                    kind: Some("Pod".to_string()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let answer: TokenRequest = api
            .create_subresource("token", &sa, &PostParams::default(), &request)
            .await
            .map_err(|e| format!("failed to fetch token: {e}"))?;
        let token = answer
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or("failed to fetch token: the API answered without a token")?;
        state.tokens.insert(
            key,
            Token {
                token: token.clone(),
                fetched: Instant::now(),
                ttl: Duration::from_secs(expiration.max(1) as u64),
            },
        );
        Ok(token)
    }

    /// The host directory of a claim bound to a `hostPath` or `local` PV.
    async fn claim_path(&self, ns: &str, claim: &str) -> Result<PathBuf, String> {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let pvc = claims
            .get_opt(claim)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("persistentvolumeclaim {claim:?} not found"))?;
        let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let pv_name = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|n| !n.is_empty() && bound)
            .ok_or_else(|| format!("persistentvolumeclaim {claim:?} is not bound"))?;
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let pv = pvs
            .get_opt(&pv_name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("persistentvolume {pv_name:?} not found"))?;
        let spec = pv.spec.unwrap_or_default();
        if let Some(hp) = spec.host_path {
            let path = PathBuf::from(hp.path);
            check_host_path(&path, hp.type_.as_deref().unwrap_or("DirectoryOrCreate"))?;
            return Ok(path);
        }
        if let Some(local) = spec.local {
            let path = PathBuf::from(local.path);
            check_host_path(&path, "Directory")?;
            return Ok(path);
        }
        Err(format!(
            "persistentvolume {pv_name:?} is neither hostPath nor local; skiff-node mounts only those"
        ))
    }

    /// Unmounts the pod's tmpfs volumes and removes its directory.
    pub fn teardown(&self, uid: &str) -> Result<(), String> {
        let dir = self.pod_dir(uid);
        if !dir.exists() {
            return Ok(());
        }
        for mount in mounts_under(&dir) {
            if let Err(e) = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH) {
                return Err(format!("unmounting {}: {e}", mount.display()));
            }
        }
        std::fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))
    }
}

fn mode_of(item: Option<i32>, default: Option<i32>) -> u32 {
    item.or(default).unwrap_or(0o644) as u32 & 0o7777
}

/// Keys → files: all keys, or the listed items (a missing key is an error
/// unless the volume is optional).
fn project_keys(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
    kind: &str,
    name: &str,
) -> Result<BTreeMap<String, Payload>, String> {
    let mut files = BTreeMap::new();
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                match data.get(&item.key) {
                    Some(d) => {
                        files.insert(
                            item.path.clone(),
                            Payload {
                                data: d.clone(),
                                mode: mode_of(item.mode, default_mode),
                            },
                        );
                    }
                    None if optional => {}
                    None => {
                        return Err(format!(
                            "configured to use key {} of {kind} {name:?}, but the key does not exist",
                            item.key
                        ));
                    }
                }
            }
        }
        _ => {
            for (k, d) in data {
                files.insert(
                    k.clone(),
                    Payload {
                        data: d.clone(),
                        mode: mode_of(None, default_mode),
                    },
                );
            }
        }
    }
    Ok(files)
}

/// The files of a downward API volume.
pub fn downward_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    facts: &PodFacts,
) -> Result<BTreeMap<String, Payload>, String> {
    let mut files = BTreeMap::new();
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            env::field_value(pod, f, facts).map_err(|e| e.to_string())?
        } else if let Some(r) = &item.resource_field_ref {
            env::resource_value(pod, None, r, facts).map_err(|e| e.to_string())?
        } else {
            String::new()
        };
        files.insert(
            item.path.clone(),
            Payload {
                data: value.into_bytes(),
                mode: mode_of(item.mode, default_mode),
            },
        );
    }
    Ok(files)
}

fn ensure_dir(dir: &Path, mode: u32) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(|e| io_err(dir, e))
}

/// The mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = crate::mountinfo::read()
        .into_iter()
        .map(|m| m.point)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn mount_tmpfs(dir: &Path, size: Option<&str>) -> Result<(), String> {
    if mounts_under(dir).iter().any(|m| m == dir) {
        return Ok(());
    }
    let data = size
        .map(|s| {
            format!(
                "size={}",
                skiff_scheduler::quantity::Quantity::parse(s)
                    .map(|q| q.value())
                    .unwrap_or(0)
            )
        })
        .filter(|s| s != "size=0");
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        data.as_deref(),
    )
    .map_err(|e| format!("mounting tmpfs on {}: {e}", dir.display()))
}

/// The `hostPath` type checks (`DirectoryOrCreate`, `Directory`,
/// `FileOrCreate`, `File`, `Socket`, `CharDevice`, `BlockDevice`).
pub fn check_host_path(path: &Path, type_: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path);
    let fail = |what: &str| {
        Err(format!(
            "hostPath type check failed: {} is not a {what}",
            path.display()
        ))
    };
    match type_ {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_err() {
                return ensure_dir(path, 0o755);
            }
            if meta.is_ok_and(|m| m.is_dir()) {
                Ok(())
            } else {
                fail("directory")
            }
        }
        "Directory" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            _ => fail("directory"),
        },
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| io_err(path, e))?;
                return std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
                    .map_err(|e| io_err(path, e));
            }
            if meta.is_ok_and(|m| m.is_file()) {
                Ok(())
            } else {
                fail("file")
            }
        }
        "File" => match meta {
            Ok(m) if m.is_file() => Ok(()),
            _ => fail("file"),
        },
        "Socket" => match meta {
            Ok(m) if m.file_type().is_socket() => Ok(()),
            _ => fail("socket file"),
        },
        "CharDevice" => match meta {
            Ok(m) if m.file_type().is_char_device() => Ok(()),
            _ => fail("character device"),
        },
        "BlockDevice" => match meta {
            Ok(m) if m.file_type().is_block_device() => Ok(()),
            _ => fail("block device"),
        },
        other => Err(format!("hostPath type {other:?} is not known")),
    }
}

fn safe_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && !p.starts_with("..")
        && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// The kubelet's atomic writer: the payload goes into a fresh
/// `..<timestamp>` directory, `..data` is swapped to it by rename, and each
/// top-level name is a symlink through `..data`. A payload equal to the
/// current one changes nothing.
pub fn write_atomic(dir: &Path, files: &BTreeMap<String, Payload>) -> Result<(), String> {
    for p in files.keys() {
        if !safe_relative(p) {
            return Err(format!("invalid path {p:?} in volume payload"));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let data_link = dir.join("..data");
    let current = std::fs::read_link(&data_link).ok();
    if let Some(cur) = &current
        && same_payload(&dir.join(cur), files)
    {
        return Ok(());
    }
    let stamp = k8s_openapi::jiff::Timestamp::now()
        .strftime("..%Y_%m_%d_%H_%M_%S.%9f")
        .to_string();
    let ts_dir = dir.join(&stamp);
    std::fs::create_dir(&ts_dir).map_err(|e| io_err(&ts_dir, e))?;
    for (rel, payload) in files {
        let path = ts_dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        }
        std::fs::write(&path, &payload.data).map_err(|e| io_err(&path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(payload.mode))
            .map_err(|e| io_err(&path, e))?;
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link).map_err(|e| io_err(&tmp_link, e))?;
    std::fs::rename(&tmp_link, &data_link).map_err(|e| io_err(&data_link, e))?;
    let top: BTreeSet<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_string))
        .collect();
    for name in &top {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link)
                .map_err(|e| io_err(&link, e))?;
        }
    }
    // Remove names that left the payload, and the previous payload.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("..") {
                continue;
            }
            if !top.contains(&name) && e.file_type().is_ok_and(|t| t.is_symlink()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Some(cur) = current {
        let old = dir.join(cur);
        if old != ts_dir {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(())
}

fn same_payload(dir: &Path, files: &BTreeMap<String, Payload>) -> bool {
    let mut on_disk = Vec::new();
    collect_files(dir, dir, &mut on_disk);
    if on_disk.len() != files.len() {
        return false;
    }
    files.iter().all(|(rel, p)| {
        let path = dir.join(rel);
        let mode_ok = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o7777 == p.mode)
            .unwrap_or(false);
        mode_ok && std::fs::read(&path).is_ok_and(|d| d == p.data)
    })
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_files(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_path_buf());
        }
    }
}

/// Adds the automatic service-account volume (`kube-api-access-*`: token,
/// `kube-root-ca.crt`'s `ca.crt`, namespace) and its mount in every
/// container, as the ServiceAccount admission plugin does, unless
/// `automountServiceAccountToken` is false on the pod (or, when the pod
/// does not say, on the service account) or a container already mounts
/// something there.
pub fn with_service_account_volume(pod: &Pod, account_automount: Option<bool>) -> Pod {
    let mut pod = pod.clone();
    let Some(spec) = pod.spec.as_mut() else {
        return pod;
    };
    let automount = spec
        .automount_service_account_token
        .or(account_automount)
        .unwrap_or(true);
    let has_volume = spec
        .volumes
        .iter()
        .flatten()
        .any(|v| v.name.starts_with("kube-api-access-"));
    if !automount || has_volume {
        return pod;
    }
    let volume = Volume {
        name: SERVICE_ACCOUNT_VOLUME.to_string(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o644),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(
                        k8s_openapi::api::core::v1::ServiceAccountTokenProjection {
                            path: "token".to_string(),
                            expiration_seconds: Some(3607),
                            audience: None,
                        },
                    ),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".to_string(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".to_string(),
                            path: "ca.crt".to_string(),
                            mode: None,
                        }]),
                        optional: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(k8s_openapi::api::core::v1::DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".to_string(),
                            field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                                api_version: Some("v1".to_string()),
                                field_path: "metadata.namespace".to_string(),
                            }),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
        }),
        ..Default::default()
    };
    spec.volumes.get_or_insert_with(Vec::new).push(volume);
    let mount = VolumeMount {
        name: SERVICE_ACCOUNT_VOLUME.to_string(),
        mount_path: SERVICE_ACCOUNT_MOUNT.to_string(),
        read_only: Some(true),
        ..Default::default()
    };
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
        if !mounts.iter().any(|m| m.mount_path == SERVICE_ACCOUNT_MOUNT) {
            mounts.push(mount.clone());
        }
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn payload(s: &str, mode: u32) -> Payload {
        Payload {
            data: s.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn atomic_writer_swaps_payloads_and_drops_removed_keys() -> Result<(), String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = tmp.path().join("vol");
        let first = BTreeMap::from([
            ("a".to_string(), payload("1", 0o644)),
            ("sub/b".to_string(), payload("2", 0o400)),
        ]);
        write_atomic(&dir, &first)?;
        let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap_or_default();
        assert_eq!(read("a"), "1");
        assert_eq!(read("sub/b"), "2");
        let mode = std::fs::metadata(dir.join("sub/b"))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o400);
        let link_before = std::fs::read_link(dir.join("..data")).map_err(|e| e.to_string())?;
        write_atomic(&dir, &first)?;
        let link_same = std::fs::read_link(dir.join("..data")).map_err(|e| e.to_string())?;
        assert_eq!(
            link_before, link_same,
            "an unchanged payload is not rewritten"
        );
        let second = BTreeMap::from([("a".to_string(), payload("3", 0o644))]);
        write_atomic(&dir, &second)?;
        assert_eq!(read("a"), "3");
        assert!(!dir.join("sub").exists(), "removed keys disappear");
        assert!(
            !dir.join(&link_before).exists(),
            "the old payload is removed"
        );
        assert!(
            write_atomic(
                &dir,
                &BTreeMap::from([("../x".to_string(), payload("", 0o644))])
            )
            .is_err()
        );
        Ok(())
    }

    #[test]
    fn keys_project_to_items_with_modes() {
        let data = BTreeMap::from([
            ("k1".to_string(), b"v1".to_vec()),
            ("k2".to_string(), b"v2".to_vec()),
        ]);
        let all = project_keys(&data, None, Some(0o600), false, "configmap", "c");
        assert_eq!(
            all.map(|f| f.into_iter().map(|(k, p)| (k, p.mode)).collect::<Vec<_>>()),
            Ok(vec![("k1".to_string(), 0o600), ("k2".to_string(), 0o600)])
        );
        let items = [KeyToPath {
            key: "k2".into(),
            path: "dir/two".into(),
            mode: Some(0o755),
        }];
        let some = project_keys(&data, Some(&items), None, false, "configmap", "c");
        assert_eq!(
            some.map(|f| f
                .into_iter()
                .map(|(k, p)| (k, p.mode, p.data))
                .collect::<Vec<_>>()),
            Ok(vec![("dir/two".to_string(), 0o755, b"v2".to_vec())])
        );
        let missing = [KeyToPath {
            key: "nope".into(),
            path: "x".into(),
            mode: None,
        }];
        assert!(project_keys(&data, Some(&missing), None, false, "configmap", "c").is_err());
        assert_eq!(
            project_keys(&data, Some(&missing), None, true, "configmap", "c").map(|f| f.len()),
            Ok(0)
        );
    }

    #[test]
    fn host_path_types_are_checked() -> Result<(), String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = tmp.path().join("made/dir");
        check_host_path(&d, "DirectoryOrCreate")?;
        assert!(d.is_dir());
        check_host_path(&d, "Directory")?;
        assert!(check_host_path(&d, "File").is_err());
        let f = tmp.path().join("made/file");
        check_host_path(&f, "FileOrCreate")?;
        assert!(f.is_file());
        check_host_path(&f, "File")?;
        assert!(check_host_path(&f, "Directory").is_err());
        assert!(check_host_path(&tmp.path().join("nope"), "Directory").is_err());
        assert!(check_host_path(&f, "Socket").is_err());
        check_host_path(&tmp.path().join("anything"), "")?;
        Ok(())
    }

    #[test]
    fn service_account_volume_is_added_unless_opted_out() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let with = with_service_account_volume(&pod, None);
        let spec = with.spec.unwrap_or_default();
        assert!(
            spec.volumes
                .iter()
                .flatten()
                .any(|v| v.name == SERVICE_ACCOUNT_VOLUME)
        );
        let mounts = spec.containers[0].volume_mounts.clone().unwrap_or_default();
        assert_eq!(mounts[0].mount_path, SERVICE_ACCOUNT_MOUNT);
        assert_eq!(mounts[0].read_only, Some(true));

        let mut opted_out = pod.clone();
        if let Some(s) = opted_out.spec.as_mut() {
            s.automount_service_account_token = Some(false);
        }
        let without = with_service_account_volume(&opted_out, Some(true));
        assert!(without.spec.unwrap_or_default().volumes.is_none());
        let account_says_no = with_service_account_volume(&pod, Some(false));
        assert!(account_says_no.spec.unwrap_or_default().volumes.is_none());
    }
}
