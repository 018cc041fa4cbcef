//! `/proc/self/mountinfo`, as far as the agent needs it: each mount's
//! point and file system type.

use std::path::PathBuf;

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The mount point, unescaped.
    pub point: PathBuf,
    /// The file system type (`tmpfs`, `cgroup`, …).
    pub fs_type: String,
}

/// The mounts of this process's mount namespace (none if the file cannot
/// be read).
pub fn read() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| parse(&text))
        .unwrap_or_default()
}

/// The mounts listed in a mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let fs_type = right.split(' ').next()?;
            Some(Mount {
                point: PathBuf::from(unescape(point)),
                fs_type: fs_type.to_string(),
            })
        })
        .collect()
}

/// Mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Some(Ok(v)) = field.get(i + 1..i + 4).map(|s| u8::from_str_radix(s, 8))
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_and_types_are_read_and_unescaped() {
        let text = "\
22 1 0:21 / / rw - ext4 /dev/root rw
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime shared:5 - cgroup cgroup rw,cpu
33 22 0:29 / /mnt/with\\040space\\011tab rw - tmpfs tmpfs rw
not a mount line
";
        let mounts = parse(text);
        let got: Vec<(&str, &str)> = mounts
            .iter()
            .map(|m| (m.point.to_str().unwrap_or(""), m.fs_type.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("/", "ext4"),
                ("/sys/fs/cgroup/cpu", "cgroup"),
                ("/mnt/with space\ttab", "tmpfs"),
            ]
        );
    }
}
