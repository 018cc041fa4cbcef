//! Container log rotation, as the kubelet's `ContainerLogManager`: every
//! `monitor_interval` the log of each running container that reached
//! `max_size` is renamed to `<log>.<YYYYmmdd-HHMMSS>` (UTC) and the runtime
//! is asked to reopen the log path (the CRI's `ReopenContainerLog`); older
//! rotated files are gzipped (`<rotated>.gz`) and the oldest removed, so at
//! most `max_files` files exist per container, the live one included.
//!
//! [`plan_rotation`] is the pure part (which files go, which are compressed,
//! what the live log becomes), table-tested; [`ContainerLogManager`] does
//! the IO. `kubectl logs` reads only the live file, as the kubelet's does;
//! a follow moves on to the new file after a rotation (see
//! [`crate::logs::follow_file`]).

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use skiff_runtime::ContainerRuntime;
use skiff_runtime::cri_types as cri;

/// Rotated files' time suffix, Go's `20060102-150405` as the kubelet writes it.
pub const TIMESTAMP_FORMAT: &str = "%Y%m%d-%H%M%S";
/// Suffix of compressed rotated files.
pub const COMPRESS_SUFFIX: &str = ".gz";
/// Suffix of a compression in progress (left behind if it was interrupted).
pub const TMP_SUFFIX: &str = ".tmp";

/// The kubelet's `containerLogMaxSize`, `containerLogMaxFiles` and
/// `containerLogMonitorInterval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotationPolicy {
    /// A live log of at least this many bytes is rotated.
    pub max_size: u64,
    /// Files kept per container, the live one included (at least 2).
    pub max_files: usize,
    /// How often logs are checked.
    pub monitor_interval: Duration,
}

impl Default for LogRotationPolicy {
    fn default() -> Self {
        LogRotationPolicy {
            max_size: 10 << 20,
            max_files: 5,
            monitor_interval: Duration::from_secs(10),
        }
    }
}

impl LogRotationPolicy {
    /// The kubelet's validation: files > 1, a positive size and interval.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_files < 2 {
            return Err(format!(
                "container log max files {} must be greater than 1",
                self.max_files
            ));
        }
        if self.max_size == 0 {
            return Err("container log max size must be positive".into());
        }
        if self.monitor_interval.is_zero() {
            return Err("container log monitor interval must be positive".into());
        }
        Ok(())
    }
}

/// What one rotation of a container's log does; names are file names in
/// the log's directory, the steps run in field order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotationPlan {
    /// Leftovers of an interrupted rotation (`.tmp` files, rotated files
    /// whose `.gz` exists already), then the oldest rotated files beyond
    /// the `max_files - 2` kept besides the live log and the one rotated now.
    pub remove: Vec<String>,
    /// Kept rotated files still uncompressed: each becomes `<name>.gz`.
    pub compress: Vec<String>,
    /// The name the live log is renamed to; `None` when a rotated file of
    /// that second exists already (rotated again within one second): the
    /// log is left alone until the next round, nothing is done.
    pub rotate_to: Option<String>,
}

/// Plans the rotation of the log file `log` given every file name in its
/// directory (`siblings`), the way the kubelet's `rotateLog` goes: clean up
/// unused files, remove excess ones oldest first (names sort by time),
/// compress the rest, rotate the live log to `<log>.<now>`.
pub fn plan_rotation(
    log: &str,
    siblings: &[String],
    max_files: usize,
    now: Timestamp,
) -> RotationPlan {
    let prefix = format!("{log}.");
    let rotate_to = format!("{log}.{}", now.strftime(TIMESTAMP_FORMAT));
    let mut rotated: Vec<&str> = siblings
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with(&prefix))
        .collect();
    rotated.sort_unstable();
    rotated.dedup();
    let taken = [
        rotate_to.clone(),
        format!("{rotate_to}{COMPRESS_SUFFIX}"),
        format!("{rotate_to}{TMP_SUFFIX}"),
    ];
    if rotated.iter().any(|n| taken.iter().any(|t| t == n)) {
        return RotationPlan::default();
    }
    let all: HashSet<&str> = rotated.iter().copied().collect();
    let (in_use, unused): (Vec<&str>, Vec<&str>) = rotated.into_iter().partition(|n| {
        !n.ends_with(TMP_SUFFIX)
            && (n.ends_with(COMPRESS_SUFFIX)
                || !all.contains(format!("{n}{COMPRESS_SUFFIX}").as_str()))
    });
    let keep = max_files.saturating_sub(2);
    let excess = in_use.len().saturating_sub(keep);
    let mut remove: Vec<String> = unused.into_iter().map(str::to_string).collect();
    remove.extend(in_use[..excess].iter().map(|n| n.to_string()));
    let compress = in_use[excess..]
        .iter()
        .filter(|n| !n.ends_with(COMPRESS_SUFFIX))
        .map(|n| n.to_string())
        .collect();
    RotationPlan {
        remove,
        compress,
        rotate_to: Some(rotate_to),
    }
}

/// Why a container's log could not be rotated (the round goes on with the
/// other containers).
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("container runtime: {0}")]
    Runtime(#[from] skiff_runtime::Error),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("log path {0} has no directory or file name")]
    BadPath(PathBuf),
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> RotationError + 'a {
    move |source| RotationError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Gzips `path` into `<path>.gz` through `<path>.tmp`, then removes `path`
/// (the kubelet's `compressLog`). Blocking.
pub fn compress_file(path: &Path) -> Result<(), RotationError> {
    use flate2::{Compression, write::GzEncoder};
    let with_suffix = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    let (tmp, gz) = (with_suffix(TMP_SUFFIX), with_suffix(COMPRESS_SUFFIX));
    let mut src = std::fs::File::open(path).map_err(io_err("opening", path))?;
    let dst = std::fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
    let mut encoder = GzEncoder::new(io::BufWriter::new(dst), Compression::default());
    let written = io::copy(&mut src, &mut encoder)
        .and_then(|_| encoder.finish())
        .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err("compressing", path)(e));
    }
    std::fs::rename(&tmp, &gz).map_err(io_err("renaming", &tmp))?;
    std::fs::remove_file(path).map_err(io_err("removing", path))
}

fn remove_if_present(path: &Path) -> Result<(), RotationError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
        _ => Ok(()),
    }
}

/// Removes a container's log and its rotated files, when the container is
/// removed (the kubelet's `ContainerLogManager.Clean`).
pub async fn clean(log: &Path) -> Result<(), RotationError> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) else {
        return Err(RotationError::BadPath(log.to_path_buf()));
    };
    let prefix = format!("{name}.");
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("listing", dir)(e)),
    };
    while let Some(entry) = entries.next_entry().await.map_err(io_err("listing", dir))? {
        let file_name = entry.file_name();
        let Some(n) = file_name.to_str() else {
            continue;
        };
        if n == name || n.starts_with(&prefix) {
            remove_if_present(&entry.path())?;
        }
    }
    Ok(())
}

/// Rotates the logs of the runtime's running containers; see the module
/// docs.
pub struct ContainerLogManager {
    runtime: Arc<dyn ContainerRuntime>,
    policy: LogRotationPolicy,
}

impl ContainerLogManager {
    pub fn new(runtime: Arc<dyn ContainerRuntime>, policy: LogRotationPolicy) -> Self {
        ContainerLogManager { runtime, policy }
    }

    /// Rotates every `monitor_interval`, forever.
    pub async fn run(self) {
        let mut tick =
            tokio::time::interval(self.policy.monitor_interval.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.rotate_logs().await {
                tracing::warn!(error = %e, "container log rotation");
            }
        }
    }

    /// One round over the running containers; returns the ids of those
    /// whose log was rotated. A failure with one container is logged and
    /// does not stop the others.
    pub async fn rotate_logs(&self) -> Result<Vec<String>, RotationError> {
        let containers = self.runtime.list_containers(None).await?;
        let mut rotated = Vec::new();
        for c in containers
            .iter()
            .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
        {
            match self.check(&c.id).await {
                Ok(true) => rotated.push(c.id.clone()),
                Ok(false) => {}
                Err(e) => tracing::warn!(container = %c.id, error = %e, "rotating a container log"),
            }
        }
        Ok(rotated)
    }

    /// Rotates one container's log if it is too big; `true` if it did.
    async fn check(&self, id: &str) -> Result<bool, RotationError> {
        let status = self.runtime.container_status(id).await?;
        if status.log_path.is_empty() {
            return Ok(false);
        }
        let path = PathBuf::from(&status.log_path);
        let size = match tokio::fs::metadata(&path).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A rotation whose reopen failed, then whose rename back
                // failed too, loses the live file: have it made again.
                self.runtime.reopen_container_log(id).await?;
                tokio::fs::metadata(&path)
                    .await
                    .map_err(io_err("reading", &path))?
                    .len()
            }
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        if size < self.policy.max_size {
            return Ok(false);
        }
        self.rotate(id, &path).await
    }

    async fn rotate(&self, id: &str, path: &Path) -> Result<bool, RotationError> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(RotationError::BadPath(path.to_path_buf()));
        };
        let mut siblings = Vec::new();
        let mut entries = tokio::fs::read_dir(dir)
            .await
            .map_err(io_err("listing", dir))?;
        while let Some(entry) = entries.next_entry().await.map_err(io_err("listing", dir))? {
            if let Some(n) = entry.file_name().to_str() {
                siblings.push(n.to_string());
            }
        }
        let plan = plan_rotation(name, &siblings, self.policy.max_files, Timestamp::now());
        let Some(rotate_to) = plan.rotate_to else {
            tracing::debug!(container = id, log = %path.display(), "rotated this second already; next round");
            return Ok(false);
        };
        for n in &plan.remove {
            remove_if_present(&dir.join(n))?;
        }
        for n in plan.compress {
            let p = dir.join(n);
            tokio::task::spawn_blocking(move || compress_file(&p))
                .await
                .map_err(|e| RotationError::Io {
                    action: "compressing",
                    path: dir.to_path_buf(),
                    source: io::Error::other(e),
                })??;
        }
        let target = dir.join(&rotate_to);
        tokio::fs::rename(path, &target)
            .await
            .map_err(io_err("renaming", path))?;
        if let Err(e) = self.runtime.reopen_container_log(id).await {
            // Put it back so the next round tries again; should that fail,
            // the next round's reopen makes a new live file.
            if let Err(back) = tokio::fs::rename(&target, path).await {
                tracing::error!(container = id, rotated = %target.display(), error = %back, "renaming a rotated log back");
            }
            return Err(e.into());
        }
        tracing::info!(container = id, log = %path.display(), rotated = %target.display(), "container log rotated");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rotation_plans_follow_the_kubelets_steps() {
        let now: Timestamp = "2024-03-05T06:07:08.5Z".parse().expect("timestamp");
        let rotated = Some("0.log.20240305-060708".to_string());
        struct Case {
            name: &'static str,
            siblings: Vec<String>,
            max_files: usize,
            want: RotationPlan,
        }
        let cases = [
            Case {
                name: "first rotation",
                siblings: names(&["0.log"]),
                max_files: 5,
                want: RotationPlan {
                    rotate_to: rotated.clone(),
                    ..Default::default()
                },
            },
            Case {
                name: "the last rotated file is compressed",
                siblings: names(&["0.log", "0.log.20240305-060000"]),
                max_files: 5,
                want: RotationPlan {
                    compress: names(&["0.log.20240305-060000"]),
                    rotate_to: rotated.clone(),
                    ..Default::default()
                },
            },
            Case {
                name: "oldest beyond max files minus two go",
                siblings: names(&[
                    "0.log.20240305-060300",
                    "0.log",
                    "0.log.20240305-060100.gz",
                    "0.log.20240305-060200.gz",
                    "0.log.20240305-060000.gz",
                ]),
                max_files: 4,
                want: RotationPlan {
                    remove: names(&["0.log.20240305-060000.gz", "0.log.20240305-060100.gz"]),
                    compress: names(&["0.log.20240305-060300"]),
                    rotate_to: rotated.clone(),
                },
            },
            Case {
                name: "two files keep no rotated one beyond the newest",
                siblings: names(&["0.log", "0.log.20240305-060000"]),
                max_files: 2,
                want: RotationPlan {
                    remove: names(&["0.log.20240305-060000"]),
                    rotate_to: rotated.clone(),
                    ..Default::default()
                },
            },
            Case {
                name: "leftovers of an interrupted compression are cleaned up",
                siblings: names(&[
                    "0.log",
                    "0.log.20240305-060000",
                    "0.log.20240305-060000.gz",
                    "0.log.20240305-060100",
                    "0.log.20240305-060100.tmp",
                ]),
                max_files: 5,
                want: RotationPlan {
                    remove: names(&["0.log.20240305-060000", "0.log.20240305-060100.tmp"]),
                    compress: names(&["0.log.20240305-060100"]),
                    rotate_to: rotated.clone(),
                },
            },
            Case {
                name: "other containers' and attempts' files are not touched",
                siblings: names(&["0.log", "1.log", "1.log.20240305-060000", "0.logx"]),
                max_files: 2,
                want: RotationPlan {
                    rotate_to: rotated.clone(),
                    ..Default::default()
                },
            },
            Case {
                name: "a second rotation within one second waits",
                siblings: names(&["0.log", "0.log.20240305-060000.gz", "0.log.20240305-060708"]),
                max_files: 5,
                want: RotationPlan::default(),
            },
        ];
        for c in cases {
            assert_eq!(
                plan_rotation("0.log", &c.siblings, c.max_files, now),
                c.want,
                "{}",
                c.name
            );
        }
    }

    #[tokio::test]
    async fn cleaning_removes_a_log_and_its_rotated_files_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        for n in [
            "0.log",
            "0.log.20240101-000000.gz",
            "0.log.20240101-000001",
            "1.log",
            "10.log",
        ] {
            std::fs::write(dir.path().join(n), "x").expect("write");
        }
        clean(&dir.path().join("0.log")).await.expect("clean");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        left.sort();
        assert_eq!(left, ["1.log", "10.log"]);
        clean(&dir.path().join("gone/0.log"))
            .await
            .expect("nothing to clean");
    }

    #[test]
    fn compressed_logs_decompress_to_the_original_and_replace_it() {
        use std::io::Read;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("0.log.20240305-060000");
        let content = "2024-03-05T06:00:00.000000000Z stdout F hello\n".repeat(100);
        std::fs::write(&path, &content).expect("write");
        compress_file(&path).expect("compress");
        assert!(!path.exists());
        assert!(!dir.path().join("0.log.20240305-060000.tmp").exists());
        let gz = std::fs::File::open(dir.path().join("0.log.20240305-060000.gz")).expect("gz");
        let mut out = String::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_string(&mut out)
            .expect("gunzip");
        assert_eq!(out, content);
    }

    #[test]
    fn policies_are_validated_as_the_kubelet_does() {
        assert!(LogRotationPolicy::default().validate().is_ok());
        let one_file = LogRotationPolicy {
            max_files: 1,
            ..Default::default()
        };
        assert!(one_file.validate().is_err());
        let no_size = LogRotationPolicy {
            max_size: 0,
            ..Default::default()
        };
        assert!(no_size.validate().is_err());
    }
}
