//! The built-in runtime's side of the agent's housekeeping, against the real
//! kernel: a container's log rotated (renamed, then `ReopenContainerLog`)
//! while the container keeps writing, without losing a line; and
//! `ImageFsInfo` for image garbage collection. Needs root; as another user
//! every test says so and passes without running.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{fixture, is_root};
use skiff_runtime::{ImageService, RuntimeService};

/// Waits until `path` holds at least `bytes`.
async fn wait_for_bytes(path: &Path, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len >= bytes {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {len} of {bytes} bytes",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The numbers of the `tick N` lines of a CRI log file, in order.
fn ticks(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (_, n) = l
                .rsplit_once(" stdout F tick ")
                .unwrap_or_else(|| panic!("not a tick line in {}: {l:?}", path.display()));
            n.parse()
                .unwrap_or_else(|e| panic!("tick number in {l:?}: {e}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_rotated_while_the_container_writes_is_reopened_without_losing_a_line() {
    if !is_root() {
        return;
    }
    let f = fixture().await;
    let sb = f.sandbox("rotor").await;
    // A line every millisecond, as fast as a chatty container.
    let id = f
        .container(&sb, "ticker", &["ticker", "1", "tick"], |_| {})
        .await;
    let log = PathBuf::from(f.rt.container_status(&id).await.expect("status").log_path);
    const LIMIT: u64 = 16 * 1024;
    let mut files = Vec::new();
    for round in 0..3 {
        wait_for_bytes(&log, LIMIT).await;
        // What the agent's ContainerLogManager does.
        let rotated = log.with_file_name(format!("0.log.2024010{round}-000000"));
        std::fs::rename(&log, &rotated).expect("rename the live log");
        f.rt.reopen_container_log(&id)
            .await
            .expect("reopen the log");
        assert!(log.exists(), "the reopen makes a new live file");
        files.push(rotated);
    }
    wait_for_bytes(&log, 1024).await;
    f.rt.stop_container(&id, Duration::from_secs(1))
        .await
        .expect("stop");
    f.wait_exited(&id, Duration::from_secs(20)).await;
    files.push(log.clone());

    let mut all = Vec::new();
    for file in &files {
        let numbers = ticks(file);
        assert!(!numbers.is_empty(), "{} is empty", file.display());
        all.extend(numbers);
    }
    let expected: Vec<u64> = (0..all.len() as u64).collect();
    assert!(
        all == expected,
        "lines lost or repeated across the rotations: {} lines, first gap after {:?}",
        all.len(),
        all.windows(2).find(|w| w[1] != w[0] + 1)
    );
    assert!(
        f.rt.reopen_container_log(&id).await.is_err(),
        "an exited container's log cannot be reopened"
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn image_fs_info_names_the_image_store_and_what_it_uses() {
    if !is_root() {
        return;
    }
    let f = fixture().await;
    let info = f.rt.image_fs_info().await.expect("image fs info");
    let fs = info
        .image_filesystems
        .first()
        .expect("one image filesystem");
    let mountpoint = fs.fs_id.as_ref().map(|i| i.mountpoint.clone());
    assert_eq!(
        mountpoint.map(PathBuf::from),
        Some(f.rt.images().root().to_path_buf())
    );
    let images = f.rt.list_images(None).await.expect("images");
    let image_bytes: u64 = images.iter().map(|i| i.size).sum();
    let used = fs.used_bytes.as_ref().map(|u| u.value).unwrap_or(0);
    // Compressed blobs plus the unpacked layers: more than the images'
    // (compressed) sizes.
    assert!(
        used > image_bytes && image_bytes > 0,
        "used {used}, images {image_bytes}"
    );
    assert!(fs.inodes_used.as_ref().is_some_and(|i| i.value > 1));
    assert!(fs.timestamp > 0);
    f.cleanup().await;
}
