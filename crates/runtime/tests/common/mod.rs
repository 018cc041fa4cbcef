//! The built-in runtime fixture shared by this crate's test binaries: a
//! runtime on a temp dir under /var/tmp with its own parent cgroup, torn
//! down (containers killed, mounts lifted, cgroups removed) even when a
//! test fails.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_runtime::cri_types as cri;
use skiff_runtime::{BuiltinConfig, BuiltinRuntime, NoNetwork, PullConfig, RuntimeService, Zygote};
use skiff_testing::{ArchiveFormat, TEST_IMAGE, test_image_archive_as};

pub struct Fixture {
    pub rt: BuiltinRuntime,
    pub dir: tempfile::TempDir,
    pub cgroup_root: String,
}

pub fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipped: the built-in runtime tests need root");
        false
    }
}

/// A runtime in a fresh temp dir with the test image imported.
pub async fn fixture() -> Fixture {
    let f = fixture_with(PullConfig::default()).await;
    let archive = test_image_archive_as(ArchiveFormat::DockerArchive).expect("test image");
    f.rt.import_image_archive(&archive)
        .await
        .expect("import test image");
    f
}

/// A runtime whose container monitors `zygote` forks, with the test image
/// imported.
pub async fn fixture_with_zygote(zygote: Arc<Zygote>) -> Fixture {
    let mut f = fixture_with(PullConfig::default()).await;
    let mut config = BuiltinConfig::new(f.dir.path().join("runtime"));
    config.cgroup_root = f.cgroup_root.clone();
    config.zygote = Some(zygote);
    f.rt = BuiltinRuntime::new(config, Arc::new(NoNetwork)).expect("open runtime");
    let archive = test_image_archive_as(ArchiveFormat::DockerArchive).expect("test image");
    f.rt.import_image_archive(&archive)
        .await
        .expect("import test image");
    f
}

/// A runtime in a fresh temp dir with no image, pulling as `pull` says.
pub async fn fixture_with(pull: PullConfig) -> Fixture {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("skiff_runtime=debug")
        .with_test_writer()
        .try_init();
    let dir = tempfile::Builder::new()
        .prefix("skiff-rt-")
        .tempdir_in("/var/tmp")
        .expect("temp dir");
    let cgroup_root = format!("/skiff-test-{}", uuid_like());
    let rt = open_with(dir.path(), &cgroup_root, pull);
    Fixture {
        rt,
        dir,
        cgroup_root,
    }
}

pub fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{}-{nanos}", std::process::id())
}

pub fn open(root: &Path, cgroup_root: &str) -> BuiltinRuntime {
    open_with(root, cgroup_root, PullConfig::default())
}

pub fn open_with(root: &Path, cgroup_root: &str, pull: PullConfig) -> BuiltinRuntime {
    let mut config = BuiltinConfig::new(root.join("runtime"));
    config.cgroup_root = cgroup_root.to_string();
    config.pull = pull;
    BuiltinRuntime::new(config, Arc::new(NoNetwork)).expect("open runtime")
}

impl Fixture {
    pub fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    pub fn sandbox_config(&self, name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.logs().join(name).display().to_string(),
            labels: HashMap::from([("app".to_string(), name.to_string())]),
            ..Default::default()
        }
    }

    pub async fn sandbox(&self, name: &str) -> (String, cri::PodSandboxConfig) {
        let config = self.sandbox_config(name);
        let id = self
            .rt
            .run_pod_sandbox(config.clone())
            .await
            .expect("run sandbox");
        (id, config)
    }

    pub async fn container(
        &self,
        sandbox: &(String, cri::PodSandboxConfig),
        name: &str,
        args: &[&str],
        customize: impl FnOnce(&mut cri::ContainerConfig),
    ) -> String {
        let mut config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: TEST_IMAGE.into(),
                ..Default::default()
            }),
            args: args.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}/0.log"),
            ..Default::default()
        };
        customize(&mut config);
        let id = self
            .rt
            .create_container(&sandbox.0, config, &sandbox.1)
            .await
            .expect("create container");
        self.rt.start_container(&id).await.expect("start container");
        id
    }

    /// The pid of a started container's init process, from its record.
    pub fn container_pid(&self, id: &str) -> i32 {
        let path = self
            .dir
            .path()
            .join("runtime/containers")
            .join(id)
            .join("container.json");
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("container record"))
                .expect("container record json");
        record["pid"]
            .as_i64()
            .expect("a started container has a pid") as i32
    }

    pub async fn wait_exited(&self, id: &str, limit: Duration) -> cri::ContainerStatus {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.rt.container_status(id).await.expect("status");
            if status.state == cri::ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} still running: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn cleanup(self) {
        for s in self.rt.list_pod_sandbox(None).await.unwrap_or_default() {
            if let Err(e) = self.rt.remove_pod_sandbox(&s.id).await {
                eprintln!("cleanup of sandbox {}: {e}", s.id);
            }
        }
    }
}

impl Drop for Fixture {
    /// Best effort after a failed test: kill the containers and lift the
    /// mounts so the temp dir can go.
    fn drop(&mut self) {
        let containers = self.dir.path().join("runtime/containers");
        for entry in std::fs::read_dir(&containers)
            .into_iter()
            .flatten()
            .flatten()
        {
            let record: serde_json::Value = std::fs::read(entry.path().join("container.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            if let Some(pid) = record["pid"].as_i64()
                && !entry.path().join("exit.json").exists()
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let prefix = self.dir.path().display().to_string();
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
        // The per-test parent cgroup, and the containers' own when a failed
        // test left them behind.
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let parent = hierarchy.path().join(&self.cgroup_root[1..]);
            for child in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                if child.path().is_dir() {
                    let _ = std::fs::remove_dir(child.path());
                }
            }
            let _ = std::fs::remove_dir(parent);
        }
    }
}

pub async fn wait_for_log_line(path: &str, content: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log_lines(path)
        .iter()
        .any(|l| l.ends_with(&format!(" F {content}")))
    {
        assert!(Instant::now() < deadline, "no {content:?} in {path}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn log_lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}
