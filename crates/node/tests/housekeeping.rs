//! The agent's housekeeping against the fake runtime: container log
//! rotation (rename, reopen through the runtime, gzip and removal of older
//! files) and image garbage collection (thresholds, least recently used
//! first, images in use and young ones kept). The managers run one round
//! at a time here; no agent (and so no network) is started.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::FakeRuntime;
use common::fake_runtime::{IMAGE_FS, image_ref};
use skiff_node::imagegc::{FilesystemStats, FsUsage, ImageGcManager};
use skiff_node::logrotate::ContainerLogManager;
use skiff_node::{ImageGcPolicy, LogRotationPolicy};
use skiff_runtime::cri_types as cri;
use skiff_runtime::{ImageService, RuntimeService};

const MIB: u64 = 1 << 20;

/// Runs a sandbox with one container of `image` whose log goes to
/// `<dir>/<name>/0.log`; returns the container id and log path.
async fn running_container(
    rt: &FakeRuntime,
    dir: &Path,
    name: &str,
    image: &str,
) -> Result<(String, PathBuf)> {
    let sandbox_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: format!("pod-{name}"),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: dir.display().to_string(),
        ..Default::default()
    };
    let sandbox = rt.run_pod_sandbox(sandbox_config.clone()).await?;
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        log_path: format!("{name}/0.log"),
        ..Default::default()
    };
    let id = rt
        .create_container(&sandbox, config, &sandbox_config)
        .await?;
    rt.start_container(&id).await?;
    Ok((id, dir.join(name).join("0.log")))
}

/// Appends CRI lines `line <from>..<to>` to `path`.
fn write_lines(path: &Path, from: usize, to: usize) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    for n in from..to {
        writeln!(f, "2024-01-01T00:00:00.000000000Z stdout F line {n}")?;
    }
    Ok(())
}

fn files_in(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

fn rotation(max_size: u64, max_files: usize) -> LogRotationPolicy {
    LogRotationPolicy {
        max_size,
        max_files,
        monitor_interval: Duration::from_secs(1),
    }
}

#[tokio::test]
async fn an_oversized_log_is_renamed_reopened_and_older_files_compressed_or_removed() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let rt = FakeRuntime::new();
    let (id, log) = running_container(&rt, dir.path(), "app", "example.com/app:1").await?;
    let logs = log.parent().context("log dir")?.to_path_buf();
    // Two earlier rotations, and a live log over the limit.
    write_lines(&logs.join("0.log.20200101-000000"), 0, 10)?;
    write_lines(&logs.join("0.log.20200101-000001"), 10, 20)?;
    write_lines(&log, 20, 200)?;
    let manager = ContainerLogManager::new(Arc::new(rt.clone()), rotation(4096, 3));

    let rotated = manager.rotate_logs().await?;
    assert_eq!(rotated, vec![id.clone()]);
    assert_eq!(rt.reopens(), vec![id.clone()]);
    let files = files_in(&logs)?;
    assert_eq!(files.len(), 3, "{files:?}");
    assert_eq!(files[0], "0.log");
    assert_eq!(files[1], "0.log.20200101-000001.gz");
    ensure!(
        files[2].starts_with("0.log.2") && files[2].len() == "0.log.20240101-000000".len(),
        "rotated name {}",
        files[2]
    );
    // The live file is the reopened one, empty; nothing was lost.
    assert_eq!(std::fs::metadata(&log)?.len(), 0);
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(logs.join(&files[1]))?)
        .read_to_string(&mut unzipped)?;
    assert_eq!(unzipped.lines().count(), 10);
    assert!(unzipped.ends_with("F line 19\n"), "{unzipped}");
    // The fake runtime's start line, then what was written.
    let rotated = std::fs::read_to_string(logs.join(&files[2]))?;
    assert_eq!(rotated.lines().count(), 1 + 180);
    assert!(rotated.ends_with("F line 199\n"));

    // Under the limit: left alone.
    write_lines(&log, 200, 210)?;
    assert!(manager.rotate_logs().await?.is_empty());
    assert_eq!(rt.reopens().len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_failed_reopen_puts_the_log_back_and_stopped_containers_are_not_rotated() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rt = FakeRuntime::new();
    let (id, log) = running_container(&rt, dir.path(), "app", "example.com/app:1").await?;
    write_lines(&log, 0, 200)?;
    let size = std::fs::metadata(&log)?.len();
    let manager = ContainerLogManager::new(Arc::new(rt.clone()), rotation(1024, 5));

    rt.set_reopen_fails(true);
    assert!(manager.rotate_logs().await?.is_empty());
    assert_eq!(files_in(log.parent().context("log dir")?)?, vec!["0.log"]);
    assert_eq!(std::fs::metadata(&log)?.len(), size);

    rt.set_reopen_fails(false);
    rt.stop_container(&id, Duration::ZERO).await?;
    assert!(manager.rotate_logs().await?.is_empty());
    assert_eq!(files_in(log.parent().context("log dir")?)?, vec!["0.log"]);
    assert!(rt.reopens().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_live_log_that_went_missing_is_reopened() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rt = FakeRuntime::new();
    let (id, log) = running_container(&rt, dir.path(), "app", "example.com/app:1").await?;
    std::fs::remove_file(&log)?;
    let manager = ContainerLogManager::new(Arc::new(rt.clone()), rotation(1024, 5));
    assert!(manager.rotate_logs().await?.is_empty());
    assert_eq!(rt.reopens(), vec![id]);
    assert!(log.exists());
    Ok(())
}

/// A disk of `capacity` bytes holding `other` bytes besides the fake
/// runtime's images.
struct FakeDisk {
    runtime: FakeRuntime,
    capacity: u64,
    other: u64,
}

impl FilesystemStats for FakeDisk {
    fn usage(&self, path: &Path) -> std::io::Result<FsUsage> {
        if path != Path::new(IMAGE_FS) {
            return Err(std::io::ErrorKind::NotFound.into());
        }
        let used = self.other + self.runtime.image_bytes();
        Ok(FsUsage {
            capacity: self.capacity,
            available: self.capacity.saturating_sub(used),
        })
    }
}

#[tokio::test]
async fn image_gc_frees_unused_images_down_to_the_low_threshold_and_keeps_used_and_young_ones()
-> Result<()> {
    let rt = FakeRuntime::new();
    rt.add_image("example.com/a:1", 100 * MIB);
    rt.add_image("example.com/b:1", 200 * MIB);
    rt.add_image("example.com/used:1", 300 * MIB);
    let dir = tempfile::tempdir()?;
    running_container(&rt, dir.path(), "app", "example.com/used:1").await?;
    let (old, _) = running_container(&rt, dir.path(), "old", "example.com/b:1").await?;
    let disk = Arc::new(FakeDisk {
        runtime: rt.clone(),
        capacity: 1000 * MIB,
        other: 300 * MIB,
    });
    let mut gc =
        ImageGcManager::with_fs_stats(Arc::new(rt.clone()), ImageGcPolicy::default(), disk.clone());
    // Images present when the agent starts count as old; b is seen in use.
    gc.detect_images().await?;
    rt.remove_container(&old).await?;

    // 90 % used: free 100 MiB to get to 80 %. The never used image goes
    // before the one used a moment ago.
    let outcome = gc.garbage_collect().await?;
    assert_eq!(outcome.plan.usage_percent, 90);
    assert_eq!(outcome.plan.bytes_to_free, 100 * MIB);
    assert_eq!(outcome.removed, vec![image_ref("example.com/a:1")]);
    assert_eq!(outcome.freed, 100 * MIB);
    assert_eq!(
        rt.image_names(),
        vec!["example.com/b:1", "example.com/used:1"]
    );

    // 80 %: under the high threshold, nothing goes.
    let outcome = gc.garbage_collect().await?;
    assert!(outcome.removed.is_empty());
    assert_eq!(outcome.plan.bytes_to_free, 0);

    // A new image pushes usage to 95 %: the young one stays, the old unused
    // one goes, the one in use stays.
    rt.add_image("example.com/new:1", 150 * MIB);
    let outcome = gc.garbage_collect().await?;
    assert_eq!(outcome.removed, vec![image_ref("example.com/b:1")]);
    assert_eq!(
        rt.image_names(),
        vec!["example.com/new:1", "example.com/used:1"]
    );

    // Only young and used images left at 95 %: nothing eligible, an error
    // says how much could not be freed.
    rt.add_image("example.com/newer:1", 200 * MIB);
    let err = gc
        .garbage_collect()
        .await
        .expect_err("not enough eligible images");
    assert!(
        err.to_string().contains("only found 0 bytes eligible"),
        "{err}"
    );
    assert_eq!(rt.image_names().len(), 3);

    // Removal goes through the runtime's ImageService.
    assert!(
        rt.image_status(cri::ImageSpec {
            image: "example.com/used:1".into(),
            ..Default::default()
        })
        .await?
        .is_some()
    );
    Ok(())
}

#[tokio::test]
async fn the_agent_refuses_policies_the_kubelet_would_refuse() -> Result<()> {
    let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse()?))?;
    let bad = [
        skiff_node::NodeConfig {
            container_logs: rotation(MIB, 1),
            ..Default::default()
        },
        skiff_node::NodeConfig {
            image_gc: ImageGcPolicy {
                high_threshold_percent: 80,
                low_threshold_percent: 80,
                ..Default::default()
            },
            ..Default::default()
        },
    ];
    for config in bad {
        let started =
            skiff_node::Agent::start(client.clone(), config, Arc::new(FakeRuntime::new())).await;
        assert!(
            matches!(started, Err(skiff_node::Error::Config(_))),
            "started: {:?}",
            started.err()
        );
    }
    Ok(())
}
