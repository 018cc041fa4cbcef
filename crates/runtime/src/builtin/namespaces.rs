//! Pod sandbox namespaces without a pause process, the way CNI's netns
//! helpers make them: a short-lived thread `unshare`s the namespaces, sets
//! the hostname, brings `lo` up, and bind-mounts its
//! `/proc/thread-self/ns/{net,ipc,uts}` onto files in the sandbox's
//! directory, which keep the namespaces alive after the thread is gone.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use super::spec::SandboxNamespaces;
use crate::api::{Error, Result};

/// Which namespaces a sandbox gets of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceRequest {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
}

fn nix_err(context: String) -> impl FnOnce(nix::Error) -> Error {
    move |e| Error::Io {
        context,
        source: io::Error::from(e),
    }
}

/// Creates the requested namespaces under `dir` (`dir/net`, `dir/ipc`,
/// `dir/uts`); sets `hostname` in a new UTS namespace and brings `lo` up in
/// a new network namespace. On error nothing stays mounted.
pub fn create(
    dir: &Path,
    request: NamespaceRequest,
    hostname: Option<&str>,
) -> Result<SandboxNamespaces> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        context: format!("creating {}", dir.display()),
        source,
    })?;
    let kinds: Vec<(&str, bool, CloneFlags)> = vec![
        ("net", request.net, CloneFlags::CLONE_NEWNET),
        ("ipc", request.ipc, CloneFlags::CLONE_NEWIPC),
        ("uts", request.uts, CloneFlags::CLONE_NEWUTS),
    ];
    let mut flags = CloneFlags::empty();
    for (name, wanted, flag) in &kinds {
        if *wanted {
            flags |= *flag;
            let file = dir.join(name);
            std::fs::File::create(&file).map_err(|source| Error::Io {
                context: format!("creating {}", file.display()),
                source,
            })?;
        }
    }
    if flags.is_empty() {
        return Ok(SandboxNamespaces::default());
    }
    let dir_owned = dir.to_path_buf();
    let hostname = hostname.map(str::to_string);
    let wanted: Vec<&'static str> = kinds.iter().filter(|k| k.1).map(|k| k.0).collect();
    let worker = std::thread::Builder::new()
        .name("sandbox-ns".into())
        .spawn(move || -> Result<()> {
            unshare(flags).map_err(nix_err("unshare of the sandbox namespaces".into()))?;
            if flags.contains(CloneFlags::CLONE_NEWUTS)
                && let Some(h) = &hostname
            {
                nix::unistd::sethostname(h).map_err(nix_err(format!("setting hostname {h:?}")))?;
            }
            if flags.contains(CloneFlags::CLONE_NEWNET) {
                loopback_up()?;
            }
            let mut mounted: Vec<PathBuf> = Vec::new();
            for name in &wanted {
                let src = format!("/proc/thread-self/ns/{name}");
                let target = dir_owned.join(name);
                if let Err(e) = mount(
                    Some(src.as_str()),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(nix_err(format!(
                    "bind-mounting {src} on {}",
                    target.display()
                ))) {
                    for m in mounted {
                        let _ = umount2(&m, MntFlags::MNT_DETACH);
                    }
                    return Err(e);
                }
                mounted.push(target);
            }
            Ok(())
        })
        .map_err(|source| Error::Io {
            context: "spawning the namespace thread".into(),
            source,
        })?;
    // The thread dies with its namespaces: they live on through the mounts.
    worker
        .join()
        .map_err(|_| Error::Runtime("namespace thread panicked".into()))??;
    let path = |n: &str, on: bool| on.then(|| dir.join(n));
    Ok(SandboxNamespaces {
        net: path("net", request.net),
        ipc: path("ipc", request.ipc),
        uts: path("uts", request.uts),
    })
}

/// Unmounts and deletes the namespace files under `dir`. Idempotent.
pub fn release(dir: &Path) -> Result<()> {
    for name in ["net", "ipc", "uts"] {
        let file = dir.join(name);
        if !file.exists() {
            continue;
        }
        match umount2(&file, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(nix_err(format!("unmounting {}", file.display()))(e)),
        }
        if let Err(e) = std::fs::remove_file(&file)
            && e.kind() != io::ErrorKind::NotFound
        {
            return Err(Error::Io {
                context: format!("removing {}", file.display()),
                source: e,
            });
        }
    }
    Ok(())
}

/// Sets IFF_UP on `lo` in the calling thread's network namespace.
fn loopback_up() -> Result<()> {
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(Error::Io {
            context: "socket for bringing lo up".into(),
            source: io::Error::last_os_error(),
        });
    }
    let result = (|| {
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        unsafe {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        }
        if unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })();
    unsafe { libc::close(sock) };
    result.map_err(|source| Error::Io {
        context: "bringing lo up in the sandbox network namespace".into(),
        source,
    })
}

/// Mounts a private tmpfs for the pod's `/dev/shm` at `path`.
pub fn mount_shm(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| Error::Io {
        context: format!("creating {}", path.display()),
        source,
    })?;
    mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(nix_err(format!("mounting tmpfs on {}", path.display())))
}

/// Unmounts a mount point if mounted. Idempotent.
pub fn unmount(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(nix_err(format!("unmounting {}", path.display()))(e)),
    }
}
