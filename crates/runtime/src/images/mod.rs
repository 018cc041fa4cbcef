//! The image store: content-addressed blobs, an index of image names, and
//! layers unpacked once for overlayfs.
//!
//! Layout under the store's root:
//! - `blobs/sha256/<hex>`: manifests, configs and layer blobs, verified
//!   against their digest when written;
//! - `index.json`: the images (keyed by config digest, the CRI image id) with
//!   their tags and repo digests;
//! - `layers/<diff-id hex>/`: each layer unpacked (see [`unpack`]).
//!
//! All methods are blocking: async callers run them on a blocking thread.

pub mod archive;
pub mod keyring;
pub mod oci;
pub mod pull;
pub mod registries;
pub mod unpack;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::{Error, Result};
use crate::reference::{Reference, validate_digest};
use oci::{ImageConfigFile, Manifest};

/// One image the store holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// The config digest (`sha256:…`): the CRI image id and image ref.
    pub id: String,
    /// Digest of the stored manifest blob.
    pub manifest_digest: String,
    /// Normalised `registry/repo:tag` names.
    #[serde(default)]
    pub repo_tags: Vec<String>,
    /// `registry/repo@sha256:…` of the manifest as the registry serves it.
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// Config plus compressed layers, in bytes.
    #[serde(default)]
    pub size: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    #[serde(default)]
    images: BTreeMap<String, ImageRecord>,
}

/// See the module docs.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    /// Serialises read-modify-write of `index.json`.
    index_lock: Mutex<()>,
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

pub(crate) fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn digest_hex(digest: &str) -> Result<&str> {
    validate_digest(digest)
        .map_err(|why| Error::InvalidArgument(format!("digest {digest:?}: {why}")))?;
    Ok(&digest["sha256:".len()..])
}

/// Writes `data` to `path` atomically (temp file, fsync, rename).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        uuid::Uuid::new_v4().simple()
    ));
    let write = || -> io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(format!("writing {}", path.display()))(e)
    })
}

impl ImageStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for dir in [
            root.join("blobs/sha256"),
            root.join("layers"),
            root.join("tmp"),
        ] {
            std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        Ok(ImageStore {
            root,
            index_lock: Mutex::new(()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Scratch space on the store's file system (for imports and pulls).
    pub(crate) fn tmp_dir(&self) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("work-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(io_err(format!(
                "creating a temp dir in {}",
                self.root.join("tmp").display()
            )))
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        std::fs::read(&path).map_err(io_err(format!("reading blob {}", path.display())))
    }

    /// Stores bytes under their digest; checks `expected` when given.
    pub fn put_blob(&self, data: &[u8], expected: Option<&str>) -> Result<String> {
        let digest = sha256_digest(data);
        if let Some(want) = expected
            && want != digest
        {
            return Err(Error::Runtime(format!(
                "blob digest mismatch: want {want}, got {digest}"
            )));
        }
        let path = self.blob_path(&digest)?;
        if !path.is_file() {
            write_atomic(&path, data)?;
        }
        Ok(digest)
    }

    /// Moves the file at `src` (on the store's file system) into the blob
    /// store after verifying it hashes to `expected`.
    pub fn put_blob_file(&self, src: &Path, expected: &str) -> Result<()> {
        let path = self.blob_path(expected)?;
        if path.is_file() {
            return Ok(());
        }
        let got = hash_file(src)?;
        if got != expected {
            return Err(Error::Runtime(format!(
                "blob {}: digest mismatch: want {expected}, got {got}",
                src.display()
            )));
        }
        if std::fs::rename(src, &path).is_err() {
            std::fs::copy(src, &path).map_err(io_err(format!(
                "copying {} to {}",
                src.display(),
                path.display()
            )))?;
        }
        Ok(())
    }

    fn load_index(&self) -> Result<IndexFile> {
        let path = self.root.join("index.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Runtime(format!("corrupt image index {}: {e}", path.display()))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(IndexFile::default()),
            Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
        }
    }

    fn save_index(&self, index: &IndexFile) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(index)
            .map_err(|e| Error::Runtime(format!("encoding image index: {e}")))?;
        write_atomic(&self.root.join("index.json"), &bytes)
    }

    /// Records an image whose manifest (and everything it references) is
    /// already in the blob store, moving `names` to it from any other image.
    /// Unpacks its layers. Returns the record.
    pub fn register(
        &self,
        manifest_digest: &str,
        names: &[Reference],
        repo_digest: Option<&str>,
    ) -> Result<ImageRecord> {
        let manifest: Manifest = serde_json::from_slice(&self.read_blob(manifest_digest)?)
            .map_err(|e| Error::Runtime(format!("manifest {manifest_digest}: {e}")))?;
        let config_bytes = self.read_blob(&manifest.config.digest)?;
        let config: ImageConfigFile = serde_json::from_slice(&config_bytes)
            .map_err(|e| Error::Runtime(format!("image config {}: {e}", manifest.config.digest)))?;
        for layer in &manifest.layers {
            if !self.has_blob(&layer.digest) {
                return Err(Error::Runtime(format!(
                    "layer blob {} is missing",
                    layer.digest
                )));
            }
        }
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::Runtime(format!(
                "image config {} lists {} diff_ids for {} layers",
                manifest.config.digest,
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            )));
        }
        self.unpack_layers(&manifest, &config)?;
        let size = config_bytes.len() as u64
            + manifest
                .layers
                .iter()
                .map(|l| l.size.max(0) as u64)
                .sum::<u64>();
        let id = manifest.config.digest.clone();
        let _guard = self.index_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut index = self.load_index()?;
        let tags: Vec<String> = names.iter().filter_map(Reference::tagged).collect();
        for other in index.images.values_mut() {
            if other.id != id {
                other.repo_tags.retain(|t| !tags.contains(t));
            }
        }
        let record = index
            .images
            .entry(id.clone())
            .or_insert_with(|| ImageRecord {
                id: id.clone(),
                manifest_digest: manifest_digest.to_string(),
                repo_tags: Vec::new(),
                repo_digests: Vec::new(),
                size,
            });
        record.manifest_digest = manifest_digest.to_string();
        for t in tags {
            if !record.repo_tags.contains(&t) {
                record.repo_tags.push(t);
            }
        }
        if let Some(d) = repo_digest {
            for name in names {
                let rd = name.with_digest(d);
                if !record.repo_digests.contains(&rd) {
                    record.repo_digests.push(rd);
                }
            }
        }
        let record = record.clone();
        self.save_index(&index)?;
        tracing::info!(image = %id, tags = ?record.repo_tags, "image registered");
        Ok(record)
    }

    /// Unpacks the layers of an image that are not unpacked yet.
    fn unpack_layers(&self, manifest: &Manifest, config: &ImageConfigFile) -> Result<()> {
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            let dest = self.layer_dir(diff_id)?;
            if dest.is_dir() {
                continue;
            }
            let blob = self.blob_path(&layer.digest)?;
            tracing::debug!(layer = %layer.digest, dest = %dest.display(), "unpacking layer");
            unpack::unpack_layer(&blob, &dest, Some(diff_id))?;
        }
        Ok(())
    }

    pub fn layer_dir(&self, diff_id: &str) -> Result<PathBuf> {
        Ok(self.root.join("layers").join(digest_hex(diff_id)?))
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.load_index()?.images.into_values().collect())
    }

    /// Finds an image by id (`sha256:…`, or a unique hex prefix of at least
    /// 12 characters), by name (normalised, `busybox` = `docker.io/library/busybox:latest`)
    /// or by repo digest (`name@sha256:…`).
    pub fn resolve(&self, image: &str) -> Result<Option<ImageRecord>> {
        let index = self.load_index()?;
        if let Some(r) = index.images.get(image) {
            return Ok(Some(r.clone()));
        }
        let bare = image.strip_prefix("sha256:").unwrap_or(image);
        if bare.len() >= 12 && bare.chars().all(|c| c.is_ascii_hexdigit()) {
            let found: Vec<_> = index
                .images
                .values()
                .filter(|r| r.id["sha256:".len()..].starts_with(bare))
                .collect();
            if found.len() == 1 {
                return Ok(Some(found[0].clone()));
            }
        }
        let Ok(reference) = Reference::parse(image) else {
            return Ok(None);
        };
        let found = index
            .images
            .values()
            .find(|r| match (&reference.digest, reference.tagged()) {
                (Some(d), _) => {
                    r.repo_digests.contains(&reference.with_digest(d)) || &r.manifest_digest == d
                }
                (None, Some(tagged)) => r.repo_tags.contains(&tagged),
                (None, None) => false,
            });
        Ok(found.cloned())
    }

    /// The manifest and config of a stored image.
    pub fn manifest_and_config(&self, record: &ImageRecord) -> Result<(Manifest, ImageConfigFile)> {
        let manifest: Manifest = serde_json::from_slice(&self.read_blob(&record.manifest_digest)?)
            .map_err(|e| Error::Runtime(format!("manifest {}: {e}", record.manifest_digest)))?;
        let config: ImageConfigFile = serde_json::from_slice(&self.read_blob(&record.id)?)
            .map_err(|e| Error::Runtime(format!("image config {}: {e}", record.id)))?;
        Ok((manifest, config))
    }

    /// The unpacked layer directories of an image, bottom layer first
    /// (unpacking any that are missing).
    pub fn layer_dirs(&self, record: &ImageRecord) -> Result<Vec<PathBuf>> {
        let (manifest, config) = self.manifest_and_config(record)?;
        self.unpack_layers(&manifest, &config)?;
        config
            .rootfs
            .diff_ids
            .iter()
            .map(|d| self.layer_dir(d))
            .collect()
    }

    /// Removes an image record (`image` as for [`Self::resolve`]), then
    /// deletes blobs and layer directories no remaining image references.
    /// `Ok(false)` when there was no such image.
    pub fn remove(&self, image: &str) -> Result<bool> {
        let Some(record) = self.resolve(image)? else {
            return Ok(false);
        };
        let _guard = self.index_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut index = self.load_index()?;
        index.images.remove(&record.id);
        self.save_index(&index)?;
        // Garbage-collect what no remaining image references.
        let mut keep_blobs = std::collections::BTreeSet::new();
        let mut keep_layers = std::collections::BTreeSet::new();
        for r in index.images.values() {
            keep_blobs.insert(r.manifest_digest.clone());
            keep_blobs.insert(r.id.clone());
            if let Ok((m, c)) = self.manifest_and_config(r) {
                keep_blobs.extend(m.layers.into_iter().map(|l| l.digest));
                keep_layers.extend(c.rootfs.diff_ids);
            }
        }
        if let Ok((m, c)) = self.manifest_and_config(&record) {
            let blobs = [record.manifest_digest.clone(), record.id.clone()]
                .into_iter()
                .chain(m.layers.into_iter().map(|l| l.digest));
            for d in blobs.filter(|d| !keep_blobs.contains(d)) {
                if let Ok(p) = self.blob_path(&d) {
                    let _ = std::fs::remove_file(p);
                }
            }
            for d in c
                .rootfs
                .diff_ids
                .iter()
                .filter(|d| !keep_layers.contains(*d))
            {
                if let Ok(p) = self.layer_dir(d)
                    && let Err(e) = std::fs::remove_dir_all(&p)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %p.display(), error = %e, "removing layer dir");
                }
            }
        }
        tracing::info!(image = %record.id, "image removed");
        Ok(true)
    }
}

pub(crate) fn hash_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io_err(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}
