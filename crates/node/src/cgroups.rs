//! Pod-level cgroups: the kubelet's pod container manager keeps one cgroup
//! per pod (`<root>/<qos>/pod<uid>`, see [`crate::spec::cgroup_parent`])
//! as the parent of the pod's container cgroups. The runtime creates it
//! with the first container; the agent removes it when the pod is gone,
//! as the kubelet does, or every pod would leave an empty directory in
//! each hierarchy, and cgroup operations slow down as they pile up.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::mountinfo::{self, Mount};

/// The mount points of the cgroup hierarchies (every v1 hierarchy, or the
/// v2 root), read once per process: they do not move while the agent runs.
fn hierarchies() -> &'static [PathBuf] {
    static MOUNTS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    MOUNTS.get_or_init(|| cgroup_mounts(&mountinfo::read()))
}

/// The cgroup and cgroup2 mount points among `mounts`.
fn cgroup_mounts(mounts: &[Mount]) -> Vec<PathBuf> {
    mounts
        .iter()
        .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
        .map(|m| m.point.clone())
        .collect()
}

/// Removes the pod cgroup `parent` (e.g. `/kubepods/besteffort/pod<uid>`)
/// from every hierarchy. A hierarchy where it does not exist is skipped;
/// one where it still has processes or children keeps it (and says so).
/// Returns how many directories were removed.
pub fn remove_pod_cgroup(parent: &str) -> usize {
    remove_under(hierarchies(), parent)
}

fn remove_under(hierarchies: &[PathBuf], parent: &str) -> usize {
    let relative = parent.trim_start_matches('/');
    if relative.is_empty() || relative.split('/').any(|c| c == ".." || c == ".") {
        return 0;
    }
    let mut removed = 0;
    for root in hierarchies {
        let dir: PathBuf = Path::new(root).join(relative);
        match std::fs::remove_dir(&dir) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(cgroup = %dir.display(), error = %e, "pod cgroup not removed")
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_mounts_are_read_from_mountinfo() {
        let text = "\
22 1 0:21 / / rw - ext4 /dev/root rw
30 22 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw
31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
33 22 0:29 / /mnt/with\\040space rw - cgroup cgroup rw,pids
";
        assert_eq!(
            cgroup_mounts(&mountinfo::parse(text)),
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu"),
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/mnt/with space"),
            ]
        );
    }

    #[test]
    fn removal_takes_empty_pod_directories_and_keeps_busy_ones() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        let c = tempfile::tempdir().expect("tempdir");
        let pod = "kubepods/besteffort/podu1";
        std::fs::create_dir_all(a.path().join(pod)).expect("mkdir");
        // Still has a child (a container cgroup): kept.
        std::fs::create_dir_all(b.path().join(pod).join("c1")).expect("mkdir");
        // `c` has no such cgroup at all.
        let roots = vec![
            a.path().to_path_buf(),
            b.path().to_path_buf(),
            c.path().to_path_buf(),
        ];
        assert_eq!(remove_under(&roots, &format!("/{pod}")), 1);
        assert!(!a.path().join(pod).exists());
        assert!(
            a.path().join("kubepods/besteffort").exists(),
            "QoS parent stays"
        );
        assert!(b.path().join(pod).exists());
        // Nothing outside the hierarchy is touched.
        assert_eq!(remove_under(&roots, "/"), 0);
        assert_eq!(remove_under(&roots, "/kubepods/../x"), 0);
    }
}
