//! End-to-end: the real `skiff server` binary, driven by the real kubectl,
//! on the embedded store and on a real etcd; state survives a restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

struct SkiffServer {
    child: Child,
    kubeconfig: PathBuf,
}

impl SkiffServer {
    fn start(data_dir: &Path, port: u16, extra: &[&str]) -> Result<SkiffServer> {
        let log = std::fs::File::create(data_dir.with_extension("log"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--bind-address", "127.0.0.1", "--https-listen-port"])
            .arg(port.to_string())
            // These tests run on the host's network: no node agent (it
            // would program the host's network) and no DNS (it would bind
            // the host's address). Nodes are tested in
            // network namespaces (tests/node.rs).
            .args(["--disable-agent", "--disable-dns"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting skiff server")?;
        let server = SkiffServer {
            child,
            kubeconfig: data_dir.join("cred/admin.kubeconfig"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if server.kubeconfig.exists()
                && let Ok(out) = server.kubectl(&["get", "--raw", "/readyz"])
                && out.status.success()
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
                bail!("skiff server not ready within 30 s; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kubectl(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()?)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGTERM, then wait: a clean shutdown.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("skiff server did not stop within 10 s of SIGTERM");
    }
}

impl Drop for SkiffServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn exercise(data_dir: &Path, extra: &[&str]) {
    let port = skiff_testing::free_port().unwrap();
    let server = SkiffServer::start(data_dir, port, extra).unwrap();
    let namespaces = server.ok(&["get", "namespaces", "-o", "name"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            namespaces.contains(&format!("namespace/{ns}")),
            "{namespaces}"
        );
    }
    server.ok(&["create", "configmap", "survivor", "--from-literal=k=v"]);
    let uid = server.ok(&[
        "get",
        "configmap",
        "survivor",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    assert!(!uid.is_empty());
    server.stop();

    // Same data dir (and datastore): same CA, same objects.
    let server = SkiffServer::start(data_dir, port, extra).unwrap();
    let again = server.ok(&[
        "get",
        "configmap",
        "survivor",
        "-o",
        "jsonpath={.metadata.uid} {.data.k}",
    ]);
    assert_eq!(again, format!("{uid} v"));
    server.stop();
}

#[test]
fn server_on_the_embedded_store_keeps_objects_and_ca_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    exercise(&dir.path().join("server"), &[]);
}

#[test]
fn server_on_a_real_etcd_keeps_objects_across_restarts() {
    let etcd = skiff_testing::EtcdProcess::start_with(skiff_testing::EtcdOptions {
        data_in_memory: true,
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = etcd.client_url();
    exercise(
        &dir.path().join("server"),
        &["--datastore-endpoint", &endpoint],
    );
}

#[test]
fn server_runs_the_controller_manager_so_a_deployment_gets_its_pods() {
    let dir = tempfile::tempdir().unwrap();
    let port = skiff_testing::free_port().unwrap();
    let server = SkiffServer::start(&dir.path().join("server"), port, &[]).unwrap();
    let manifest = dir.path().join("web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: skiff-test:1}]}\n",
    )
    .unwrap();
    server.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pods = server.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
        if pods.lines().count() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "3 pods not created within 30 s: {pods}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let rs = server.ok(&[
        "get",
        "rs",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].spec.replicas}",
    ]);
    assert_eq!(rs, "3");
    let lease = server.ok(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "kube-controller-manager",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert!(lease.contains("controller-manager"), "{lease}");
    server.stop();
}

#[test]
fn standalone_controller_manager_and_scheduler_work_against_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let port = skiff_testing::free_port().unwrap();
    let server = SkiffServer::start(
        &dir.path().join("server"),
        port,
        &["--disable-controller-manager", "--disable-scheduler"],
    )
    .unwrap();
    // Killed on drop, also when an assertion below fails.
    let _components = Children(
        ["controller-manager", "scheduler"]
            .iter()
            .map(|c| {
                Command::new(env!("CARGO_BIN_EXE_skiff"))
                    .arg(c)
                    .arg("--kubeconfig")
                    .arg(&server.kubeconfig)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    let manifest = dir.path().join("web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: skiff-test:1}]}
",
    )
    .unwrap();
    server.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let msgs = server.ok(&[
            "get", "pods", "-l", "app=web",
            "-o", "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"PodScheduled\")].reason} {end}",
        ]);
        if msgs.trim() == "SchedulerError SchedulerError"
            || msgs.trim() == "Unschedulable Unschedulable"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pods not created and judged by the scheduler: {msgs:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    server.stop();
}

/// Child processes killed and reaped on drop.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
