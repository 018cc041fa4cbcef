//! The test image: `skiff-testbin` (see `crates/testbin`) in an image archive
//! built offline from the compiled binary and the shared libraries it needs.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// The name the test image archives carry.
pub const TEST_IMAGE: &str = "skiff.test/testbin:1";

/// The two archive formats the runtime imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// `docker save` output: `manifest.json`, config and layer tarballs.
    DockerArchive,
    /// An OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) in a tar.
    OciLayout,
}

/// A docker-archive tarball of [`TEST_IMAGE`] (see [`test_image_archive_as`]).
pub fn test_image_archive() -> PathBuf {
    match test_image_archive_as(ArchiveFormat::DockerArchive) {
        Ok(path) => path,
        Err(err) => panic!("building the test image archive: {err:#}"),
    }
}

/// Writes (once per process and format) an image archive named
/// [`TEST_IMAGE`] whose single gzip layer holds `/testbin` (entrypoint),
/// `/bin/tar` and `/bin/test` linked to it (it dispatches on its name, for
/// `kubectl cp`), the shared libraries `ldd` lists for it, `/etc/passwd`,
/// `/etc/group`, and a world-writable `/tmp`. The default command is
/// `pause`; `PATH` includes `/bin`.
///
/// The binary is built with `cargo build -p skiff-testbin` first; no network
/// is needed.
pub fn test_image_archive_as(format: ArchiveFormat) -> anyhow::Result<PathBuf> {
    static BUILT: Mutex<BTreeMap<&'static str, PathBuf>> = Mutex::new(BTreeMap::new());
    let key = match format {
        ArchiveFormat::DockerArchive => "docker",
        ArchiveFormat::OciLayout => "oci",
    };
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(key) {
        return Ok(path.clone());
    }
    let binary = testbin_binary()?;
    let layer = build_layer(&binary)?;
    let out_dir = target_dir().join("skiff-test-images");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let archive = build_archive(format, &layer)?;
    let path = out_dir.join(format!("testbin-{key}-{}.tar", &sha256_hex(&archive)[..16]));
    if !path.exists() {
        let tmp = out_dir.join(format!(".tmp-{}-{key}", std::process::id()));
        std::fs::write(&tmp, &archive).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    }
    built.insert(key, path.clone());
    Ok(path)
}

/// The workspace's target dir: `CARGO_TARGET_DIR` or `<workspace>/target`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_dir().join(dir)
            }
        }
        None => workspace_dir().join("target"),
    }
}

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Path of the `skiff-testbin` binary, built (once per process) with cargo.
pub fn testbin_binary() -> anyhow::Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--quiet", "-p", "skiff-testbin"])
                .current_dir(workspace_dir())
                .status();
            let path = target_dir().join("debug").join("skiff-testbin");
            match status {
                Ok(s) if s.success() => Ok(path),
                _ if path.exists() => Ok(path),
                Ok(s) => Err(format!("cargo build -p skiff-testbin: {s}")),
                Err(e) => Err(format!("running cargo build -p skiff-testbin: {e}")),
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The shared libraries `ldd` lists for `binary` (absolute paths only).
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        // A static binary: ldd says "not a dynamic executable".
        return Ok(Vec::new());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// The image's one layer, gzip-compressed: (compressed bytes, uncompressed tar digest).
struct Layer {
    gz: Vec<u8>,
    diff_id: String,
}

fn build_layer(binary: &Path) -> anyhow::Result<Layer> {
    let mut builder = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| -> anyhow::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(0);
        b.append_data(&mut h, path, std::io::empty())?;
        Ok(())
    };
    let file =
        |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]| -> anyhow::Result<()> {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_mtime(0);
            b.append_data(&mut h, path, data)?;
            Ok(())
        };
    for (d, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("proc", 0o755),
        ("sys", 0o755),
        ("dev", 0o755),
    ] {
        dir(&mut builder, d, mode)?;
    }
    let bin = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    file(&mut builder, "testbin", 0o755, &bin)?;
    for applet in ["bin/tar", "bin/test"] {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(0);
        builder.append_link(&mut h, applet, "/testbin")?;
    }
    let mut dirs_done = std::collections::BTreeSet::new();
    for lib in shared_libraries(binary)? {
        let data = std::fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
        let rel = lib.strip_prefix("/").unwrap_or(&lib);
        let mut parent = PathBuf::new();
        for comp in rel.parent().into_iter().flat_map(|p| p.components()) {
            parent.push(comp);
            if dirs_done.insert(parent.clone()) {
                dir(&mut builder, &parent.to_string_lossy(), 0o755)?;
            }
        }
        file(&mut builder, &rel.to_string_lossy(), 0o755, &data)?;
    }
    file(
        &mut builder,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/testbin\nnobody:x:65534:65534:nobody:/nonexistent:/testbin\n",
    )?;
    file(
        &mut builder,
        "etc/group",
        0o644,
        b"root:x:0:\nnogroup:x:65534:\n",
    )?;
    let tar_bytes = builder.into_inner()?;
    let diff_id = format!("sha256:{}", sha256_hex(&tar_bytes));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar_bytes)?;
    Ok(Layer {
        gz: gz.finish()?,
        diff_id,
    })
}

fn image_config(layer: &Layer) -> Vec<u8> {
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/testbin"],
            "Cmd": ["pause"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SKIFF_TEST_IMAGE=1"],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [layer.diff_id] },
        "history": [{ "created_by": "skiff-testing test_image_archive" }],
    });
    config.to_string().into_bytes()
}

fn build_archive(format: ArchiveFormat, layer: &Layer) -> anyhow::Result<Vec<u8>> {
    let config = image_config(layer);
    let config_hex = sha256_hex(&config);
    let layer_hex = sha256_hex(&layer.gz);
    let mut out = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| -> anyhow::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        out.append_data(&mut h, path, data)?;
        Ok(())
    };
    match format {
        ArchiveFormat::DockerArchive => {
            add(&format!("{config_hex}.json"), &config)?;
            add(&format!("{layer_hex}/layer.tar"), &layer.gz)?;
            let manifest = serde_json::json!([{
                "Config": format!("{config_hex}.json"),
                "RepoTags": [TEST_IMAGE],
                "Layers": [format!("{layer_hex}/layer.tar")],
            }]);
            add("manifest.json", manifest.to_string().as_bytes())?;
        }
        ArchiveFormat::OciLayout => {
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": format!("sha256:{config_hex}"),
                    "size": config.len(),
                },
                "layers": [{
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": format!("sha256:{layer_hex}"),
                    "size": layer.gz.len(),
                }],
            })
            .to_string()
            .into_bytes();
            let manifest_hex = sha256_hex(&manifest);
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [{
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": format!("sha256:{manifest_hex}"),
                    "size": manifest.len(),
                    "annotations": {
                        "io.containerd.image.name": TEST_IMAGE,
                        "org.opencontainers.image.ref.name": "1",
                    },
                }],
            });
            add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            add(&format!("blobs/sha256/{config_hex}"), &config)?;
            add(&format!("blobs/sha256/{layer_hex}"), &layer.gz)?;
            add(&format!("blobs/sha256/{manifest_hex}"), &manifest)?;
            add("index.json", index.to_string().as_bytes())?;
        }
    }
    let bytes = out.into_inner()?;
    if bytes.is_empty() {
        bail!("empty archive");
    }
    Ok(bytes)
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}
