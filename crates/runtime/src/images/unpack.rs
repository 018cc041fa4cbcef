//! Layer unpacking into overlayfs-ready directories.
//!
//! Each layer is unpacked once into its own directory and used as an overlay
//! lowerdir as is, so OCI whiteouts are translated into overlayfs' own
//! encoding: `dir/.wh.name` becomes a 0:0 character device `dir/name`, and
//! `dir/.wh..wh..opq` becomes the `trusted.overlay.opaque=y` xattr on `dir`.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::api::{Error, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What a tar entry means for the unpacked layer directory.
#[derive(Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular entry: unpack it.
    Normal,
    /// `dir/.wh..wh..opq`: the directory hides everything below it.
    Opaque { dir: PathBuf },
    /// `dir/.wh.name`: `dir/name` is deleted.
    Whiteout { path: PathBuf },
}

/// Classifies an entry path (relative, as found in the tar).
pub fn classify(path: &Path) -> EntryKind {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return EntryKind::Normal;
    };
    let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
    if name == OPAQUE_MARKER {
        EntryKind::Opaque { dir: parent }
    } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
        EntryKind::Whiteout {
            path: parent.join(hidden),
        }
    } else {
        EntryKind::Normal
    }
}

/// A relative path made safe: no root, no `..`, no `.` components.
fn sanitize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Whether `bytes` start like a gzip stream.
pub fn is_gzip(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b])
}

/// Whether `bytes` start like a zstd frame.
pub fn is_zstd(head: &[u8]) -> bool {
    head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
}

/// Reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Unpacks the layer blob at `blob` (tar, optionally gzip) into `dest`,
/// which must not exist; the uncompressed stream must hash to `diff_id`
/// when one is given. On error nothing is left at `dest`.
pub fn unpack_layer(blob: &Path, dest: &Path, diff_id: Option<&str>) -> Result<()> {
    let tmp = dest.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = unpack_into(blob, &tmp, diff_id);
    match result {
        Ok(()) => match std::fs::rename(&tmp, dest) {
            Ok(()) => Ok(()),
            // Someone else unpacked the same layer meanwhile: theirs wins.
            Err(_) if dest.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(io_err(format!(
                    "renaming {} to {}",
                    tmp.display(),
                    dest.display()
                ))(e))
            }
        },
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn unpack_into(blob: &Path, dir: &Path, diff_id: Option<&str>) -> Result<()> {
    let mut file =
        std::fs::File::open(blob).map_err(io_err(format!("opening layer {}", blob.display())))?;
    let mut head = [0u8; 4];
    let n = file
        .read(&mut head)
        .map_err(io_err(format!("reading {}", blob.display())))?;
    let file =
        std::fs::File::open(blob).map_err(io_err(format!("opening layer {}", blob.display())))?;
    let decompressed: Box<dyn Read> = if is_gzip(&head[..n]) {
        Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(file)))
    } else if is_zstd(&head[..n]) {
        return Err(Error::Unsupported("zstd-compressed layers"));
    } else {
        Box::new(io::BufReader::new(file))
    };
    let mut hashing = HashingReader {
        inner: decompressed,
        hasher: Sha256::new(),
    };
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    unpack_tar(&mut hashing, dir).map_err(|e| match e {
        Error::Io { context, source } => Error::Io {
            context: format!("unpacking {}: {context}", blob.display()),
            source,
        },
        other => other,
    })?;
    // Read to the end so the digest covers the whole stream (tar padding).
    io::copy(&mut hashing, &mut io::sink())
        .map_err(io_err(format!("reading {}", blob.display())))?;
    if let Some(want) = diff_id {
        let got = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
        if got != want {
            return Err(Error::Runtime(format!(
                "layer {}: uncompressed digest {got} does not match diff_id {want}",
                blob.display()
            )));
        }
    }
    Ok(())
}

/// Unpacks a tar stream into `dir`, translating whiteouts (see module docs).
pub fn unpack_tar(reader: &mut dyn Read, dir: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let entries = archive.entries().map_err(io_err("reading tar entries"))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err("reading tar entry"))?;
        let raw = entry
            .path()
            .map_err(io_err("reading tar entry path"))?
            .into_owned();
        let Some(path) = sanitize(&raw) else {
            tracing::warn!(path = %raw.display(), "skipping tar entry escaping the layer");
            continue;
        };
        if path.as_os_str().is_empty() {
            continue;
        }
        match classify(&path) {
            EntryKind::Normal => {
                entry
                    .unpack_in(dir)
                    .map_err(io_err(format!("unpacking {}", path.display())))?;
            }
            EntryKind::Opaque { dir: opaque } => {
                let target = dir.join(&opaque);
                std::fs::create_dir_all(&target)
                    .map_err(io_err(format!("creating {}", target.display())))?;
                set_opaque(&target)?;
            }
            EntryKind::Whiteout { path: hidden } => {
                let target = dir.join(&hidden);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(io_err(format!("creating {}", parent.display())))?;
                }
                if target.symlink_metadata().is_ok() {
                    remove_any(&target)?;
                }
                make_whiteout(&target)?;
            }
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> Result<()> {
    let meta = path
        .symlink_metadata()
        .map_err(io_err(format!("stat {}", path.display())))?;
    if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
    .map_err(io_err(format!("removing {}", path.display())))
}

/// An overlayfs whiteout: a character device with device number 0/0.
fn make_whiteout(path: &Path) -> Result<()> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
        .map_err(|e| io_err(format!("creating whiteout {}", path.display()))(e.into()))
}

fn set_opaque(dir: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("path with NUL: {}", dir.display())))?;
    let rc = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if rc != 0 {
        return Err(io_err(format!("marking {} opaque", dir.display()))(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    #[test]
    fn whiteout_names_are_classified() {
        let cases: [(&str, EntryKind); 5] = [
            ("etc/passwd", EntryKind::Normal),
            (
                "etc/.wh.passwd",
                EntryKind::Whiteout {
                    path: "etc/passwd".into(),
                },
            ),
            (".wh.tmp", EntryKind::Whiteout { path: "tmp".into() }),
            (
                "var/cache/.wh..wh..opq",
                EntryKind::Opaque {
                    dir: "var/cache".into(),
                },
            ),
            ("a/.whatever", EntryKind::Normal),
        ];
        for (path, want) in cases {
            assert_eq!(classify(Path::new(path)), want, "path {path}");
        }
    }

    #[test]
    fn paths_escaping_the_layer_are_refused() {
        assert_eq!(
            sanitize(Path::new("/etc/./passwd")),
            Some(PathBuf::from("etc/passwd"))
        );
        assert_eq!(sanitize(Path::new("a/../../etc")), None);
    }

    fn tar_with(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, path, io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn unpacking_turns_whiteouts_into_overlay_devices_and_opaque_xattrs() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root for mknod and trusted xattrs");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let layer = tar_with(&[
            ("etc/", None),
            ("etc/hostname", Some(b"x\n")),
            ("etc/.wh.passwd", Some(b"")),
            ("var/cache/", None),
            ("var/cache/.wh..wh..opq", Some(b"")),
        ]);
        unpack_tar(&mut layer.as_slice(), tmp.path()).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("etc/hostname")).unwrap(),
            b"x\n"
        );
        let wh = std::fs::symlink_metadata(tmp.path().join("etc/passwd")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        assert!(!tmp.path().join("etc/.wh.passwd").exists());
        let value = xattr_get(&tmp.path().join("var/cache"), "trusted.overlay.opaque");
        assert_eq!(value.as_deref(), Some(&b"y"[..]));
    }

    #[test]
    fn a_layer_whose_content_does_not_match_its_diff_id_is_rejected_and_not_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let blob = tmp.path().join("blob");
        std::fs::write(&blob, tar_with(&[("a", Some(b"1"))])).unwrap();
        let dest = tmp.path().join("layer");
        let wrong = format!("sha256:{}", "0".repeat(64));
        assert!(unpack_layer(&blob, &dest, Some(&wrong)).is_err());
        assert!(!dest.exists());
        let right = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(std::fs::read(&blob).unwrap()))
        );
        unpack_layer(&blob, &dest, Some(&right)).unwrap();
        assert_eq!(std::fs::read(dest.join("a")).unwrap(), b"1");
    }

    fn xattr_get(path: &Path, name: &str) -> Option<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        let mut buf = [0u8; 64];
        let rc =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (rc >= 0).then(|| buf[..rc as usize].to_vec())
    }
}
