//! [`CriClient`] against a real containerd (Debian's `containerd` package):
//! a private containerd on a socket in a temp dir, the test image imported
//! with `ctr` and used as its sandbox image, a host-network pod (no CNI
//! needed) whose container prints a line. Skipped (with a message) without
//! root or without `containerd` on the PATH. No network is used.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skiff_runtime::cri_types as cri;
use skiff_runtime::{CriClient, ImageService, RuntimeService};
use skiff_testing::{ArchiveFormat, TEST_IMAGE, test_image_archive_as};

struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // containerd's shims outlive it; their mounts are under our dir.
        let prefix = self.dir.path().display().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("containerd-shim") && cmdline.contains(&prefix) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The suite needs root and Debian's containerd (scripts/install-deps.sh
/// installs it); without them it fails instead of passing unrun.
fn available() -> bool {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the containerd suite runs containers: run it as root"
    );
    assert!(
        Command::new("containerd").arg("--version").output().is_ok(),
        "containerd is not installed (scripts/install-deps.sh installs it)"
    );
    true
}

fn start_containerd() -> Containerd {
    let dir = tempfile::Builder::new()
        .prefix("skiff-ctrd-")
        .tempdir_in("/var/tmp")
        .expect("temp dir");
    let d = dir.path();
    let config = format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
"#,
        root = d.join("root").display(),
        state = d.join("state").display(),
        sock = d.join("containerd.sock").display(),
        image = TEST_IMAGE,
        d = d.display(),
    );
    std::fs::write(d.join("config.toml"), config).expect("config");
    let log = std::fs::File::create(d.join("containerd.log")).expect("log");
    let child = Command::new("containerd")
        .arg("--config")
        .arg(d.join("config.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn containerd");
    let sock = d.join("containerd.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "containerd did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Containerd { child, dir }
}

fn ctr_import(sock: &Path, archive: &Path) {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(sock)
        .args(["-n", "k8s.io", "images", "import"])
        .arg(archive)
        .output()
        .expect("run ctr");
    assert!(
        out.status.success(),
        "ctr import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cri_client_runs_a_host_network_pod_on_containerd() {
    if !available() {
        return;
    }
    let ctrd = start_containerd();
    let sock = ctrd.dir.path().join("containerd.sock");
    let archive = test_image_archive_as(ArchiveFormat::DockerArchive).expect("test image");
    ctr_import(&sock, &archive);
    let client = CriClient::connect(&format!("unix://{}", sock.display()))
        .await
        .expect("connect");
    let version = client.version().await.expect("version");
    assert_eq!(version.runtime_name, "containerd");
    // This containerd has no CNI configuration, so its NetworkReady
    // condition is false: the node agent reports the node not Ready
    // (host-network pods still run).
    let network = client.network_ready().await;
    assert!(
        network.as_ref().is_err_and(|m| m.contains("cni")),
        "NetworkReady of a containerd without CNI: {network:?}"
    );

    let spec = |image: &str| cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    };
    let image = client
        .image_status(spec(TEST_IMAGE))
        .await
        .expect("image status")
        .expect("imported image");
    assert!(image.repo_tags.iter().any(|t| t == TEST_IMAGE), "{image:?}");
    assert!(
        client
            .image_status(spec("skiff.test/absent:1"))
            .await
            .expect("status")
            .is_none()
    );

    let logs = ctrd.dir.path().join("logs");
    let sandbox_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "cri".into(),
            uid: "uid-cri".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        labels: HashMap::from([("app".to_string(), "cri".to_string())]),
        ..Default::default()
    };
    let sandbox = client
        .run_pod_sandbox(sandbox_config.clone())
        .await
        .expect("run sandbox");
    let container = client
        .create_container(
            &sandbox,
            cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "hello".into(),
                    attempt: 0,
                }),
                image: Some(spec(TEST_IMAGE)),
                args: vec!["print".into(), "hello through containerd".into()],
                log_path: "hello/0.log".into(),
                ..Default::default()
            },
            &sandbox_config,
        )
        .await
        .expect("create container");
    client.start_container(&container).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let s = client.container_status(&container).await.expect("status");
        if s.state == cri::ContainerState::ContainerExited as i32 {
            break s;
        }
        assert!(Instant::now() < deadline, "container did not exit: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.exit_code, 0);
    let log = std::fs::read_to_string(logs.join("hello/0.log")).expect("log file");
    assert!(log.contains(" stdout F hello through containerd"), "{log}");
    let listed = client.list_containers(None).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(
        client.reopen_container_log(&container).await.is_err(),
        "containerd reopens only a running container's log"
    );

    // Log rotation as the agent does it: rename, then ReopenContainerLog.
    let ticker = client
        .create_container(
            &sandbox,
            cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "ticker".into(),
                    attempt: 0,
                }),
                image: Some(spec(TEST_IMAGE)),
                args: vec!["ticker".into(), "20".into(), "tick".into()],
                log_path: "ticker/0.log".into(),
                ..Default::default()
            },
            &sandbox_config,
        )
        .await
        .expect("create container");
    client.start_container(&ticker).await.expect("start");
    let live = logs.join("ticker/0.log");
    let has_ticks = |p: &std::path::Path| {
        std::fs::read_to_string(p).is_ok_and(|l| l.contains(" stdout F tick "))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !has_ticks(&live) {
        assert!(Instant::now() < deadline, "no ticks in {}", live.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rotated = logs.join("ticker/0.log.20240101-000000");
    std::fs::rename(&live, &rotated).expect("rename the live log");
    client
        .reopen_container_log(&ticker)
        .await
        .expect("ReopenContainerLog");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !has_ticks(&live) {
        assert!(Instant::now() < deadline, "no ticks in the reopened log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(has_ticks(&rotated));

    let fs = client.image_fs_info().await.expect("ImageFsInfo");
    let mountpoint = fs
        .image_filesystems
        .first()
        .and_then(|f| f.fs_id.as_ref())
        .map(|i| i.mountpoint.clone())
        .unwrap_or_default();
    assert!(
        std::path::Path::new(&mountpoint).is_dir(),
        "image filesystem {fs:?}"
    );

    client
        .stop_pod_sandbox(&sandbox)
        .await
        .expect("stop sandbox");
    client
        .remove_pod_sandbox(&sandbox)
        .await
        .expect("remove sandbox");
    assert!(
        client
            .list_pod_sandbox(None)
            .await
            .expect("list")
            .is_empty()
    );
}
