//! A real image registry on loopback: Debian's `docker-registry`
//! (distribution 2.8) on a free port over plain HTTP, optionally behind
//! htpasswd basic auth, optionally inside a network namespace, and a small
//! push client for the OCI distribution API (blob uploads, manifest puts) so
//! no other tool is needed to fill it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use base64::Engine;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::free_port;
use crate::image::{ArchiveFormat, test_image_archive_as};

pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The registry binary: `$SKIFF_REGISTRY_BIN`, else `/usr/bin/docker-registry`
/// (Debian's `docker-registry`, installed by `scripts/install-deps.sh`).
fn registry_binary() -> PathBuf {
    std::env::var_os("SKIFF_REGISTRY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"))
}

/// How to start the registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Require HTTP basic auth with this (user, password). The htpasswd file
    /// is written with `htpasswd -B` (Debian's `apache2-utils`): the registry
    /// accepts bcrypt only.
    pub basic_auth: Option<(String, String)>,
    /// Run inside this network namespace (`/var/run/netns/NAME`): the
    /// registry is started through `nsenter --net`, and the fixture's own
    /// requests are made from a thread that entered the namespace.
    pub netns: Option<PathBuf>,
}

/// A running registry, killed on drop with its storage.
pub struct Registry {
    child: Child,
    dir: TempDir,
    port: u16,
    options: RegistryOptions,
}

/// One HTTP response (the body read whole).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Runs `f` on a thread inside the network namespace at `netns` (a
/// namespace entered by one thread only, so the caller's stays as it was),
/// or right here without one.
fn in_netns<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    let Some(path) = netns else {
        return f();
    };
    std::thread::scope(|s| {
        s.spawn(move || {
            let file = std::fs::File::open(path)
                .with_context(|| format!("opening network namespace {}", path.display()))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering network namespace {}", path.display()))?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("registry client thread panicked"))?
    })
}

/// A minimal HTTP/1.1 exchange (one request per connection).
fn http(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> anyhow::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to {method} {target}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("{method} {target}: no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method} {target}: bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut response = Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    };
    if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        response.body = dechunk(&response.body)?;
    }
    Ok(response)
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunked body: no chunk size line")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("chunked body: bad size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(data.len() >= size + 2, "chunked body: truncated chunk");
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

impl Registry {
    /// Starts a registry on a free loopback port and waits until it answers.
    pub fn start(options: RegistryOptions) -> anyhow::Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("skiff-registry-")
            .tempdir()
            .context("creating the registry's temp dir")?;
        let port = free_port()?;
        let mut auth = String::new();
        if let Some((user, password)) = &options.basic_auth {
            let out = Command::new("htpasswd")
                .args(["-B", "-b", "-n", user, password])
                .output()
                .context("running htpasswd (Debian package apache2-utils)")?;
            ensure!(
                out.status.success(),
                "htpasswd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, &out.stdout)
                .with_context(|| format!("writing {}", path.display()))?;
            auth = format!(
                "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                path.display()
            );
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let mut cmd = match &options.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg(registry_binary());
                c
            }
            None => Command::new(registry_binary()),
        };
        cmd.arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (Debian package docker-registry)",
                registry_binary().display()
            )
        })?;
        let mut registry = Registry {
            child,
            dir,
            port,
            options,
        };
        registry.wait_ready(Duration::from_secs(30))?;
        Ok(registry)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("the registry exited ({status}): {}", self.log());
            }
            match self.request("GET", "/v2/", &[], b"", false) {
                // 401: the registry is up and wants credentials.
                Ok(r) if r.status == 200 || r.status == 401 => return Ok(()),
                Ok(r) => last = format!("status {}", r.status),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the registry did not answer within {timeout:?} ({last}): {}",
            self.log()
        )
    }

    /// `127.0.0.1:PORT`, the registry part of image names.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// One request to the registry, with the fixture's credentials when
    /// `authenticate` (and the registry has any).
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, String)],
        body: &[u8],
        authenticate: bool,
    ) -> anyhow::Result<Response> {
        let mut all: Vec<(&str, String)> = headers.to_vec();
        if authenticate && let Some((user, password)) = &self.options.basic_auth {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            all.push(("Authorization", format!("Basic {token}")));
        }
        let port = self.port;
        in_netns(self.options.netns.as_deref(), || {
            http(port, method, target, &all, body)
        })
    }

    /// Uploads a blob to `repository` (skipped when the registry has it);
    /// returns its digest.
    pub fn push_blob(&self, repository: &str, data: &[u8]) -> anyhow::Result<String> {
        let digest = sha256_digest(data);
        let head = self.request(
            "HEAD",
            &format!("/v2/{repository}/blobs/{digest}"),
            &[],
            b"",
            true,
        )?;
        if head.status == 200 {
            return Ok(digest);
        }
        let start = self.request(
            "POST",
            &format!("/v2/{repository}/blobs/uploads/"),
            &[],
            b"",
            true,
        )?;
        ensure!(
            start.status == 202,
            "starting an upload to {repository}: status {}: {}",
            start.status,
            String::from_utf8_lossy(&start.body)
        );
        let location = start
            .header("location")
            .context("upload answer without Location")?;
        // Absolute (`http://127.0.0.1:PORT/v2/…`) or a path.
        let path = match location.split_once("://") {
            Some((_, rest)) => rest.find('/').map(|i| &rest[i..]).unwrap_or("/"),
            None => location,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let done = self.request(
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream".into())],
            data,
            true,
        )?;
        ensure!(
            done.status == 201,
            "uploading blob {digest} to {repository}: status {}: {}",
            done.status,
            String::from_utf8_lossy(&done.body)
        );
        Ok(digest)
    }

    /// Puts a manifest (or index) under `reference` (a tag or its digest);
    /// returns its digest.
    pub fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> anyhow::Result<String> {
        let r = self.request(
            "PUT",
            &format!("/v2/{repository}/manifests/{reference}"),
            &[("Content-Type", media_type.to_string())],
            body,
            true,
        )?;
        ensure!(
            r.status == 201,
            "putting manifest {repository}:{reference}: status {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        Ok(sha256_digest(body))
    }

    /// Pushes the image of an OCI layout tar (its first `index.json`
    /// entry, with everything it references) as `repository:tag`; returns
    /// the digest of what the tag names.
    pub fn push_oci_layout(
        &self,
        archive: &Path,
        repository: &str,
        tag: &str,
    ) -> anyhow::Result<String> {
        let blobs = read_layout(archive)?;
        let index: serde_json::Value = serde_json::from_slice(
            blobs
                .get("index.json")
                .with_context(|| format!("{}: no index.json", archive.display()))?,
        )?;
        let top = index["manifests"]
            .get(0)
            .with_context(|| format!("{}: empty index.json", archive.display()))?;
        let digest = top["digest"]
            .as_str()
            .context("index entry without digest")?;
        let media_type = top["mediaType"].as_str().unwrap_or(MEDIA_OCI_MANIFEST);
        self.push_layout_manifest(&blobs, repository, digest, media_type, tag)
    }

    fn push_layout_manifest(
        &self,
        blobs: &BTreeMap<String, Vec<u8>>,
        repository: &str,
        digest: &str,
        media_type: &str,
        reference: &str,
    ) -> anyhow::Result<String> {
        let blob = |d: &str| -> anyhow::Result<&Vec<u8>> {
            let hex = d.strip_prefix("sha256:").context("not a sha256 digest")?;
            blobs
                .get(&format!("blobs/sha256/{hex}"))
                .with_context(|| format!("blob {d} missing from the layout"))
        };
        let bytes = blob(digest)?;
        let doc: serde_json::Value = serde_json::from_slice(bytes)?;
        if let Some(children) = doc["manifests"].as_array() {
            for child in children {
                let d = child["digest"]
                    .as_str()
                    .context("index entry without digest")?;
                let m = child["mediaType"].as_str().unwrap_or(MEDIA_OCI_MANIFEST);
                self.push_layout_manifest(blobs, repository, d, m, d)?;
            }
        } else {
            let config = doc["config"]["digest"]
                .as_str()
                .context("manifest without config")?;
            self.push_blob(repository, blob(config)?)?;
            for layer in doc["layers"].as_array().into_iter().flatten() {
                let d = layer["digest"].as_str().context("layer without digest")?;
                self.push_blob(repository, blob(d)?)?;
            }
        }
        self.push_manifest(repository, reference, media_type, bytes)
    }

    /// Pushes the project's test image (see [`test_image_archive_as`]) as
    /// `repository:tag`; returns its manifest digest.
    pub fn push_test_image(&self, repository: &str, tag: &str) -> anyhow::Result<String> {
        let archive = test_image_archive_as(ArchiveFormat::OciLayout)?;
        self.push_oci_layout(&archive, repository, tag)
    }
}

/// The files of an OCI layout tar, by path.
fn read_layout(archive: &Path) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let file =
        std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut tar = tar::Archive::new(file);
    let mut out = BTreeMap::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        out.insert(path, data);
    }
    Ok(out)
}

impl Drop for Registry {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
