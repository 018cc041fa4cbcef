//! Host-local IPAM: one file per allocated address in a state directory,
//! named after the address and holding the sandbox id, like the CNI
//! `host-local` plugin.
//!
//! Safety across processes, threads and restarts:
//! - every operation holds an exclusive `flock` on `<dir>/lock`;
//! - an address is reserved by hard-linking a fully written, fsynced
//!   temporary file to the address's name, which fails if the name exists,
//!   so a crash never leaves a half-written reservation and two callers can
//!   never own one address;
//! - `last_reserved_ip` makes allocation round-robin, so a freed address is
//!   not handed out again at once.
//!
//! Synchronous (blocking file IO); async callers run it on a blocking
//! thread.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};

use crate::addr;

const LOCK_FILE: &str = "lock";
const LAST_RESERVED_FILE: &str = "last_reserved_ip";
const TMP_PREFIX: &str = ".tmp-";

/// Errors of the IPAM store.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("ipam io on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("locking ipam directory {dir}")]
    Lock {
        dir: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("pod cidr {cidr} has no free address ({dir})")]
    Exhausted { cidr: Ipv4Net, dir: PathBuf },
    #[error("pod cidr {0} is too small for a gateway and a pod")]
    TooSmall(Ipv4Net),
    #[error("invalid sandbox id {0:?}: must be non-empty, one line, no NUL")]
    InvalidId(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IpamError + '_ {
    move |source| IpamError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A host-local allocator over one pod CIDR.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
    cidr: Ipv4Net,
    first: u32,
    last: u32,
}

impl Ipam {
    /// An allocator storing its reservations in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>, cidr: Ipv4Net) -> Result<Self, IpamError> {
        let dir = dir.into();
        let cidr = cidr.trunc();
        let (first, last) = addr::pod_range(cidr).ok_or(IpamError::TooSmall(cidr))?;
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Self {
            dir,
            cidr,
            first: first.into(),
            last: last.into(),
        })
    }

    /// The directory holding the reservations.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The address reserved for `id`, reserving a free one if it has none.
    /// Returns the address and whether it was newly reserved.
    pub fn allocate(&self, id: &str) -> Result<(Ipv4Addr, bool), IpamError> {
        validate_id(id)?;
        let _lock = self.lock()?;
        self.remove_stale_temps();
        let owned = self.read_all()?;
        if let Some((ip, _)) = owned.iter().find(|(_, owner)| owner.as_str() == id) {
            return Ok((*ip, false));
        }
        let size = self.last - self.first + 1;
        let start = match self.last_reserved() {
            Some(last) if (self.first..=self.last).contains(&last) => last - self.first + 1,
            _ => 0,
        };
        for step in 0..size {
            let ip = Ipv4Addr::from(self.first + (start + step) % size);
            if owned.contains_key(&ip) {
                continue;
            }
            if self.reserve(ip, id)? {
                self.write_last_reserved(ip)?;
                tracing::debug!(%ip, id, dir = %self.dir.display(), "reserved pod address");
                return Ok((ip, true));
            }
        }
        Err(IpamError::Exhausted {
            cidr: self.cidr,
            dir: self.dir.clone(),
        })
    }

    /// The address reserved for `id`, if any.
    pub fn lookup(&self, id: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        validate_id(id)?;
        let _lock = self.lock()?;
        Ok(self
            .read_all()?
            .into_iter()
            .find(|(_, owner)| owner == id)
            .map(|(ip, _)| ip))
    }

    /// Frees every address reserved for `id`; returns them. Freeing an id
    /// that holds nothing is not an error.
    pub fn release(&self, id: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        validate_id(id)?;
        let _lock = self.lock()?;
        let mut freed = Vec::new();
        for (ip, owner) in self.read_all()? {
            if owner == id {
                let path = self.dir.join(ip.to_string());
                match fs::remove_file(&path) {
                    Ok(()) => freed.push(ip),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
        }
        if !freed.is_empty() {
            sync_dir(&self.dir)?;
            tracing::debug!(?freed, id, dir = %self.dir.display(), "released pod address");
        }
        Ok(freed)
    }

    /// Every reservation: address → sandbox id (empty when a file could
    /// not be read as one). For garbage collection by the agent.
    pub fn allocations(&self) -> Result<BTreeMap<Ipv4Addr, String>, IpamError> {
        let _lock = self.lock()?;
        self.read_all()
    }

    fn lock(&self) -> Result<Flock<File>, IpamError> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, source)| IpamError::Lock {
            dir: self.dir.clone(),
            source,
        })
    }

    /// Reservations in the directory. Files whose names are not addresses
    /// of this CIDR are ignored; an unreadable owner counts as reserved.
    fn read_all(&self) -> Result<BTreeMap<Ipv4Addr, String>, IpamError> {
        let mut out = BTreeMap::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            if !self.cidr.contains(&ip) {
                continue;
            }
            let path = entry.path();
            let owner = match fs::read_to_string(&path) {
                Ok(text) => text.lines().next().unwrap_or_default().trim().to_string(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable ipam reservation kept as reserved");
                    String::new()
                }
            };
            out.insert(ip, owner);
        }
        Ok(out)
    }

    /// Atomically creates `<dir>/<ip>` holding `id`; false if it exists.
    fn reserve(&self, ip: Ipv4Addr, id: &str) -> Result<bool, IpamError> {
        let target = self.dir.join(ip.to_string());
        let tmp = self.dir.join(format!("{TMP_PREFIX}{ip}"));
        write_synced(&tmp, format!("{id}\n").as_bytes())?;
        let linked = match fs::hard_link(&tmp, &target) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(io_err(&target)(e));
            }
        };
        fs::remove_file(&tmp).map_err(io_err(&tmp))?;
        sync_dir(&self.dir)?;
        Ok(linked)
    }

    fn last_reserved(&self) -> Option<u32> {
        let path = self.dir.join(LAST_RESERVED_FILE);
        fs::read_to_string(path)
            .ok()?
            .trim()
            .parse::<Ipv4Addr>()
            .ok()
            .map(u32::from)
    }

    fn write_last_reserved(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let path = self.dir.join(LAST_RESERVED_FILE);
        let tmp = self.dir.join(format!("{TMP_PREFIX}{LAST_RESERVED_FILE}"));
        write_synced(&tmp, ip.to_string().as_bytes())?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// Temporary files left by a crash between write and link.
    fn remove_stale_temps(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

fn validate_id(id: &str) -> Result<(), IpamError> {
    if id.trim().is_empty() || id.trim() != id || id.contains(['\n', '\r', '\0']) {
        return Err(IpamError::InvalidId(id.to_string()));
    }
    Ok(())
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), IpamError> {
    let mut file = File::create(path).map_err(io_err(path))?;
    file.write_all(data).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), IpamError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;

    fn ipam(dir: &Path, cidr: &str) -> Ipam {
        Ipam::new(dir, cidr.parse().expect("test cidr")).expect("ipam")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test ip")
    }

    #[test]
    fn allocate_skips_network_and_gateway_and_persists_one_file_per_address() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ipam = ipam(tmp.path(), "10.42.1.0/24");
        assert_eq!(ipam.allocate("pod-a").expect("a"), (ip("10.42.1.2"), true));
        assert_eq!(ipam.allocate("pod-b").expect("b"), (ip("10.42.1.3"), true));
        let owner = fs::read_to_string(tmp.path().join("10.42.1.2")).expect("file");
        assert_eq!(owner.trim(), "pod-a");
    }

    #[test]
    fn allocate_is_idempotent_for_the_same_sandbox() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ipam = ipam(tmp.path(), "10.42.1.0/24");
        let (first, new) = ipam.allocate("pod-a").expect("first");
        assert!(new);
        assert_eq!(ipam.allocate("pod-a").expect("again"), (first, false));
        assert_eq!(ipam.allocations().expect("list").len(), 1);
    }

    #[test]
    fn reservations_survive_a_restart() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a, _) = ipam(tmp.path(), "10.42.1.0/24")
            .allocate("pod-a")
            .expect("a");
        let reopened = ipam(tmp.path(), "10.42.1.0/24");
        assert_eq!(reopened.lookup("pod-a").expect("lookup"), Some(a));
        let (b, _) = reopened.allocate("pod-b").expect("b");
        assert_ne!(a, b);
    }

    #[test]
    fn release_frees_the_address_and_is_idempotent() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ipam = ipam(tmp.path(), "10.42.1.0/24");
        let (a, _) = ipam.allocate("pod-a").expect("a");
        assert_eq!(ipam.release("pod-a").expect("release"), vec![a]);
        assert_eq!(
            ipam.release("pod-a").expect("again"),
            Vec::<Ipv4Addr>::new()
        );
        assert_eq!(ipam.lookup("pod-a").expect("lookup"), None);
        assert!(!tmp.path().join(a.to_string()).exists());
    }

    #[test]
    fn freed_address_is_not_reused_at_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ipam = ipam(tmp.path(), "10.42.1.0/24");
        let (a, _) = ipam.allocate("pod-a").expect("a");
        ipam.release("pod-a").expect("release");
        let (b, _) = ipam.allocate("pod-b").expect("b");
        assert_ne!(a, b, "round-robin moves past the last reserved address");
    }

    #[test]
    fn exhausted_range_is_an_error_and_wraps_around_after_release() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // /29: network .0, gateway .1, pods .2-.6, broadcast .7
        let ipam = ipam(tmp.path(), "10.0.0.0/29");
        for i in 0..5 {
            ipam.allocate(&format!("pod-{i}")).expect("fits");
        }
        assert!(matches!(
            ipam.allocate("pod-5"),
            Err(IpamError::Exhausted { .. })
        ));
        ipam.release("pod-2").expect("release");
        assert_eq!(
            ipam.allocate("pod-5").expect("after release").0,
            ip("10.0.0.4")
        );
    }

    #[test]
    fn unreadable_or_foreign_files_are_never_handed_out() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(tmp.path().join("10.42.1.2"), "").expect("empty reservation");
        fs::write(tmp.path().join("not-an-ip"), "x").expect("junk");
        fs::write(tmp.path().join("10.99.0.2"), "other").expect("other cidr");
        let ipam = ipam(tmp.path(), "10.42.1.0/24");
        assert_eq!(ipam.allocate("pod-a").expect("a").0, ip("10.42.1.3"));
    }

    #[test]
    fn crash_leftover_temp_files_are_cleaned_and_not_reservations() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(tmp.path().join(".tmp-10.42.1.2"), "ghost\n").expect("leftover");
        let ipam = ipam(tmp.path(), "10.42.1.0/24");
        assert_eq!(ipam.allocate("pod-a").expect("a").0, ip("10.42.1.2"));
        assert!(!tmp.path().join(".tmp-10.42.1.2").exists());
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = Arc::new(tmp.path().to_path_buf());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let dir = Arc::clone(&dir);
                std::thread::spawn(move || {
                    // Each thread opens its own allocator, as separate
                    // processes would.
                    let ipam = Ipam::new(dir.as_path(), "10.42.1.0/24".parse().expect("cidr"))
                        .expect("ipam");
                    (0..10)
                        .map(|i| ipam.allocate(&format!("pod-{t}-{i}")).expect("alloc").0)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for t in threads {
            for ip in t.join().expect("thread") {
                assert!(seen.insert(ip), "{ip} handed out twice");
            }
        }
        assert_eq!(seen.len(), 80);
    }

    #[test]
    fn invalid_sandbox_ids_are_rejected() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ipam = ipam(tmp.path(), "10.42.1.0/24");
        for id in ["", " ", "a\nb", " padded", "nul\0"] {
            assert!(
                matches!(ipam.allocate(id), Err(IpamError::InvalidId(_))),
                "{id:?}"
            );
        }
    }

    #[test]
    fn too_small_cidr_is_rejected() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let err = Ipam::new(tmp.path(), "10.0.0.0/31".parse().expect("cidr"));
        assert!(matches!(err, Err(IpamError::TooSmall(_))));
    }
}
