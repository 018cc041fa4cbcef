//! Importing image archives: an OCI image layout in a tar (`skopeo copy …
//! oci-archive:`, `docker save` of recent Docker, `ctr export`) or a
//! docker-archive (`docker save`: `manifest.json` + config + layer tars).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::oci::{self, Descriptor, Index, Manifest};
use super::{ImageRecord, ImageStore, io_err};
use crate::api::{Error, Result};
use crate::reference::Reference;

/// `manifest.json` of a docker-archive.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl ImageStore {
    /// Imports every image of an archive file (OCI layout or docker-archive,
    /// detected from its contents). Returns the imported images.
    pub fn import_archive(&self, archive: &Path) -> Result<Vec<ImageRecord>> {
        let work = self.tmp_dir()?;
        let file = std::fs::File::open(archive)
            .map_err(io_err(format!("opening {}", archive.display())))?;
        let mut tar = tar::Archive::new(std::io::BufReader::new(file));
        tar.set_preserve_permissions(false);
        tar.unpack(work.path())
            .map_err(io_err(format!("extracting {}", archive.display())))?;
        let dir = work.path();
        let image_err = |message: String| Error::Image {
            image: archive.display().to_string(),
            message,
        };
        let records = if dir.join("oci-layout").is_file() && dir.join("index.json").is_file() {
            self.import_oci_layout(dir)?
        } else if dir.join("manifest.json").is_file() {
            self.import_docker_archive(dir)?
        } else {
            return Err(image_err(
                "neither an OCI image layout nor a docker-archive".into(),
            ));
        };
        if records.is_empty() {
            return Err(image_err(
                "no image for this platform in the archive".into(),
            ));
        }
        Ok(records)
    }

    fn copy_blob_from_layout(&self, layout: &Path, digest: &str) -> Result<()> {
        if self.has_blob(digest) {
            return Ok(());
        }
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| Error::InvalidArgument(format!("unsupported digest {digest}")))?;
        self.put_blob_file(&layout.join("blobs/sha256").join(hex), digest)
    }

    fn import_oci_layout(&self, dir: &Path) -> Result<Vec<ImageRecord>> {
        let index_path = dir.join("index.json");
        let index: Index = serde_json::from_slice(
            &std::fs::read(&index_path)
                .map_err(io_err(format!("reading {}", index_path.display())))?,
        )
        .map_err(|e| Error::Runtime(format!("{}: {e}", index_path.display())))?;
        let mut records = Vec::new();
        for desc in &index.manifests {
            let names = names_from_annotations(&desc.annotations);
            if let Some(manifest_digest) = self.import_layout_manifest(dir, desc)? {
                records.push(self.register(&manifest_digest, &names, None)?);
            }
        }
        Ok(records)
    }

    /// Copies one manifest (resolving a nested index to this platform) and
    /// its blobs; returns the digest of the image manifest.
    fn import_layout_manifest(&self, dir: &Path, desc: &Descriptor) -> Result<Option<String>> {
        self.copy_blob_from_layout(dir, &desc.digest)?;
        let bytes = self.read_blob(&desc.digest)?;
        let is_index = matches!(
            desc.media_type.as_str(),
            oci::MEDIA_OCI_INDEX | oci::MEDIA_DOCKER_LIST
        ) || serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .is_some_and(|v| v.get("manifests").is_some());
        if is_index {
            let index: Index = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Runtime(format!("index {}: {e}", desc.digest)))?;
            return match index.manifests.iter().find(|m| oci::matches_host(m)) {
                Some(m) => self.import_layout_manifest(dir, m),
                None => Ok(None),
            };
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Runtime(format!("manifest {}: {e}", desc.digest)))?;
        self.copy_blob_from_layout(dir, &manifest.config.digest)?;
        for layer in &manifest.layers {
            self.copy_blob_from_layout(dir, &layer.digest)?;
        }
        Ok(Some(desc.digest.clone()))
    }

    fn import_docker_archive(&self, dir: &Path) -> Result<Vec<ImageRecord>> {
        let manifest_path = dir.join("manifest.json");
        let entries: Vec<DockerArchiveEntry> = serde_json::from_slice(
            &std::fs::read(&manifest_path)
                .map_err(io_err(format!("reading {}", manifest_path.display())))?,
        )
        .map_err(|e| Error::Runtime(format!("{}: {e}", manifest_path.display())))?;
        let mut records = Vec::new();
        for entry in entries {
            let inside = |rel: &str| -> Result<PathBuf> {
                let p = Path::new(rel);
                if p.is_absolute()
                    || p.components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(Error::InvalidArgument(format!(
                        "docker-archive path {rel:?} escapes the archive"
                    )));
                }
                Ok(dir.join(p))
            };
            let config_path = inside(&entry.config)?;
            let config_bytes = std::fs::read(&config_path)
                .map_err(io_err(format!("reading {}", config_path.display())))?;
            let config_digest = self.put_blob(&config_bytes, None)?;
            let mut layers = Vec::new();
            for layer in &entry.layers {
                let path = inside(layer)?;
                let digest = super::hash_file(&path)?;
                let size = std::fs::metadata(&path)
                    .map_err(io_err(format!("stat {}", path.display())))?
                    .len();
                let mut head = [0u8; 4];
                let n = {
                    use std::io::Read;
                    let mut f = std::fs::File::open(&path)
                        .map_err(io_err(format!("opening {}", path.display())))?;
                    f.read(&mut head)
                        .map_err(io_err(format!("reading {}", path.display())))?
                };
                let media_type = if super::unpack::is_gzip(&head[..n]) {
                    oci::MEDIA_OCI_LAYER_GZIP
                } else {
                    oci::MEDIA_OCI_LAYER_TAR
                };
                self.put_blob_file(&path, &digest)?;
                layers.push(Descriptor {
                    media_type: media_type.into(),
                    digest,
                    size: size as i64,
                    annotations: BTreeMap::new(),
                    platform: None,
                });
            }
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(oci::MEDIA_OCI_MANIFEST.into()),
                config: Descriptor {
                    media_type: oci::MEDIA_OCI_CONFIG.into(),
                    digest: config_digest,
                    size: config_bytes.len() as i64,
                    annotations: BTreeMap::new(),
                    platform: None,
                },
                layers,
            };
            let manifest_bytes = serde_json::to_vec(&manifest)
                .map_err(|e| Error::Runtime(format!("encoding manifest: {e}")))?;
            let manifest_digest = self.put_blob(&manifest_bytes, None)?;
            let names: Vec<Reference> = entry
                .repo_tags
                .unwrap_or_default()
                .iter()
                .filter_map(|t| match Reference::parse(t) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(tag = %t, error = %e, "ignoring bad tag in docker-archive");
                        None
                    }
                })
                .collect();
            records.push(self.register(&manifest_digest, &names, None)?);
        }
        Ok(records)
    }
}

/// Image names from an OCI layout's index annotations: the containerd name
/// annotation, else `ref.name` when it is a full reference (not a bare tag).
fn names_from_annotations(annotations: &BTreeMap<String, String>) -> Vec<Reference> {
    if let Some(name) = annotations.get(oci::ANNOTATION_IMAGE_NAME)
        && let Ok(r) = Reference::parse(name)
    {
        return vec![r];
    }
    match annotations.get(oci::ANNOTATION_REF_NAME) {
        Some(name) if name.contains('/') || name.contains(':') => {
            Reference::parse(name).into_iter().collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_names_prefer_the_containerd_annotation_and_ignore_bare_tags() {
        let ann = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let names = names_from_annotations(&ann(&[
            (oci::ANNOTATION_IMAGE_NAME, "skiff.test/app:1"),
            (oci::ANNOTATION_REF_NAME, "1"),
        ]));
        assert_eq!(names[0].to_string(), "skiff.test/app:1");
        assert!(names_from_annotations(&ann(&[(oci::ANNOTATION_REF_NAME, "latest")])).is_empty());
        assert_eq!(
            names_from_annotations(&ann(&[(
                oci::ANNOTATION_REF_NAME,
                "docker.io/library/busybox:1"
            )]))[0]
                .to_string(),
            "docker.io/library/busybox:1"
        );
    }
}
