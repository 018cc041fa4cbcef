//! The real `skiff server` as a child process of a benchmark, on loopback,
//! so its memory and CPU are its own.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result};

/// A started server child: the process, its log file and its pid.
pub struct ServerChild {
    pub child: tokio::process::Child,
    pub log: PathBuf,
    pub pid: u32,
    /// The HTTPS port it listens on (127.0.0.1).
    pub port: u16,
}

/// Starts `binary server` on a free loopback port with `data_dir` and
/// `endpoint` (empty: the embedded store), logging to `<dir>/server.log`,
/// plus `extra` flags (which components to leave out). Killed on drop.
pub fn spawn_server(
    binary: &Path,
    dir: &Path,
    data_dir: &Path,
    endpoint: &str,
    extra: &[&str],
) -> Result<ServerChild> {
    let port = skiff_testing::free_port()?;
    let log = dir.join("server.log");
    let log_file = std::fs::File::create(&log)?;
    let child = tokio::process::Command::new(binary)
        .arg("server")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--bind-address", "127.0.0.1"])
        .args(["--https-listen-port", &port.to_string()])
        .args(["--datastore-endpoint", endpoint])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {} server", binary.display()))?;
    let pid = child.id().context("the server exited at once")?;
    Ok(ServerChild {
        child,
        log,
        pid,
        port,
    })
}
