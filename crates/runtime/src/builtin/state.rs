//! What the built-in runtime remembers about sandboxes and containers, kept
//! as JSON under its root so a restarted agent still knows them:
//! `sandboxes/<id>/sandbox.json`, `containers/<id>/container.json` (and the
//! monitor's `exit.json` beside it).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spec::SandboxNamespaces;
use crate::api::{Error, Result};
use crate::cri_types as cri;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum SandboxState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub config: cri::PodSandboxConfig,
    pub created_at: i64,
    pub state: SandboxState,
    pub ip: Option<IpAddr>,
    pub host_network: bool,
    pub host_ipc: bool,
    pub netns: Option<PathBuf>,
    pub ipcns: Option<PathBuf>,
    pub utsns: Option<PathBuf>,
    /// Whether the network hook was set up (and so must be torn down).
    pub network_ready: bool,
}

impl SandboxRecord {
    pub fn namespaces(&self) -> SandboxNamespaces {
        SandboxNamespaces {
            net: self.netns.clone(),
            ipc: self.ipcns.clone(),
            uts: self.utsns.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ContainerPhase {
    Created,
    Running,
    Exited,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub config: cri::ContainerConfig,
    /// The image as the caller named it.
    pub image: String,
    /// The image id (config digest).
    pub image_ref: String,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub phase: ContainerPhase,
    pub pid: Option<i32>,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// Absolute path of the CRI log file (empty: no log).
    pub log_path: PathBuf,
    pub stop_signal: Option<String>,
    pub cgroups_path: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub cwd: String,
}

pub fn save<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::Runtime(format!("encoding {}: {e}", path.display())))?;
    crate::images::write_atomic(path, &bytes)
}

/// Loads every `<dir>/*/<file>`; unreadable records are logged and skipped.
pub fn load_all<T: for<'de> Deserialize<'de>>(dir: &Path, file: &str) -> Vec<T> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path().join(file);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(v) => out.push(v),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping corrupt runtime record")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "skipping unreadable runtime record")
            }
        }
    }
    out
}
