//! Free loopback ports that parallel test processes do not hand out twice.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, bail};

/// Ports are drawn from here: below Linux's default ephemeral range
/// (32768–60999), so an outgoing connection of some other process cannot take
/// a port between the moment we pick it and the moment etcd binds it.
const LOW: u16 = 12000;
const HIGH: u16 = 32000;

/// Ports this process handed out, each with the lock file that reserves it
/// against other processes. Kept until the process exits: ports are plenty,
/// and a port given back could be handed to a second fixture while the first
/// still restarts a member on it.
static HELD: Mutex<Option<HashMap<u16, File>>> = Mutex::new(None);

/// A loopback TCP port that is free now and that no other caller of this
/// function, in this process or another one, will get while this process
/// lives.
///
/// Tests run in parallel processes under nextest, so an in-process registry is
/// not enough: each port is also reserved with an exclusive `flock` on a file
/// under the temp dir, which the kernel releases when the process dies, so a
/// crashed test leaves nothing stale behind.
pub fn free_port() -> anyhow::Result<u16> {
    let dir = lock_dir()?;
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    let held = held.get_or_insert_with(HashMap::new);
    let random = RandomState::new();
    for attempt in 0u64..2000 {
        let span = u64::from(HIGH - LOW);
        let port = LOW + (random.hash_one((std::process::id(), attempt)) % span) as u16;
        if held.contains_key(&port) {
            continue;
        }
        // Something else (not one of our fixtures) may listen there.
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let path = dir.join(format!("{port}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening port lock {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {
                held.insert(port, file);
                return Ok(port);
            }
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
    bail!("found no free loopback port in {LOW}..{HIGH}")
}

fn lock_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join("skiff-test-ports");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_never_repeats_within_a_process() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let port = free_port().unwrap();
            assert!((LOW..HIGH).contains(&port));
            assert!(seen.insert(port), "port {port} handed out twice");
        }
    }

    #[test]
    fn a_port_held_by_another_process_is_skipped() {
        let port = free_port().unwrap();
        // Another open file description of the same lock file stands for
        // another process: flock locks belong to open file descriptions.
        let path = lock_dir().unwrap().join(format!("{port}.lock"));
        let other = File::options().write(true).open(path).unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
    }
}
