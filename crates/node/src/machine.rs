//! Facts about this machine: capacity (CPUs, memory, disk of the data dir),
//! identity (hostname, OS image, kernel, machine and boot IDs) and the
//! pressure signals (available memory, disk and PIDs). Reads `/proc`,
//! `/etc` and `statvfs`; everything else in the crate gets these as values.

use std::path::Path;

/// What this node registers with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineInfo {
    pub hostname: String,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub ephemeral_storage_bytes: i64,
    pub kernel_version: String,
    pub os_image: String,
    /// Kubernetes' name: `amd64`, `arm64`, …
    pub architecture: String,
    pub machine_id: String,
    pub boot_id: String,
}

/// Current availability, for the pressure conditions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Availability {
    pub memory_available: Option<i64>,
    pub memory_total: Option<i64>,
    pub disk_available: Option<i64>,
    pub disk_total: Option<i64>,
    pub pids_used: Option<i64>,
    pub pid_max: Option<i64>,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A `/proc/meminfo` field in bytes.
pub fn meminfo_field(text: &str, field: &str) -> Option<i64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: i64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// `PRETTY_NAME` of an os-release file.
pub fn os_release_pretty_name(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix("PRETTY_NAME=")?;
        Some(v.trim_matches('"').to_string())
    })
}

/// Rust's architecture name → Kubernetes' (`GOARCH`).
pub fn k8s_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "arm" => "arm",
        other => other,
    }
}

/// Capacity and available bytes (to unprivileged users, as `df`) of the
/// file system holding `path`.
pub fn fs_usage(path: &Path) -> std::io::Result<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let frag = s.fragment_size() as u64;
    Ok((
        (s.blocks() as u64).saturating_mul(frag),
        (s.blocks_available() as u64).saturating_mul(frag),
    ))
}

fn disk(path: &Path) -> (Option<i64>, Option<i64>) {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let frag = s.fragment_size() as i64;
            (
                Some(s.blocks() as i64 * frag),
                Some(s.blocks_available() as i64 * frag),
            )
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "statvfs");
            (None, None)
        }
    }
}

/// Reads the machine's facts; `data_dir` is the file system whose size is
/// the ephemeral-storage capacity.
pub fn machine_info(data_dir: &Path) -> MachineInfo {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as i64)
        .unwrap_or(1);
    let meminfo = read("/proc/meminfo");
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
        .to_lowercase();
    let kernel_version = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let os_image =
        os_release_pretty_name(&read("/etc/os-release")).unwrap_or_else(|| "Linux".to_string());
    MachineInfo {
        hostname,
        cpu_millis: cpus * 1000,
        memory_bytes: meminfo_field(&meminfo, "MemTotal").unwrap_or(0),
        ephemeral_storage_bytes: disk(data_dir).0.unwrap_or(0),
        kernel_version,
        os_image,
        architecture: k8s_arch(std::env::consts::ARCH).to_string(),
        machine_id: read("/etc/machine-id").trim().to_string(),
        boot_id: read("/proc/sys/kernel/random/boot_id").trim().to_string(),
    }
}

/// Reads the current availability of memory, disk and PIDs.
pub fn availability(data_dir: &Path) -> Availability {
    let meminfo = read("/proc/meminfo");
    let (disk_total, disk_available) = disk(data_dir);
    let pids_used = std::fs::read_dir("/proc").ok().map(|d| {
        d.filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            })
            .count() as i64
    });
    Availability {
        memory_available: meminfo_field(&meminfo, "MemAvailable"),
        memory_total: meminfo_field(&meminfo, "MemTotal"),
        disk_available,
        disk_total,
        pids_used,
        pid_max: read("/proc/sys/kernel/pid_max").trim().parse().ok(),
    }
}

/// Thresholds of the pressure conditions (the kubelet's default hard
/// eviction thresholds for memory and disk; PIDs: under 5 % left).
pub const MEMORY_AVAILABLE_MIN: i64 = 100 << 20;
pub const DISK_AVAILABLE_MIN_PERCENT: i64 = 10;
pub const PIDS_AVAILABLE_MIN_PERCENT: i64 = 5;

/// (memory, disk, pid) pressure.
pub fn pressure(a: &Availability) -> (bool, bool, bool) {
    let memory = a.memory_available.is_some_and(|m| m < MEMORY_AVAILABLE_MIN);
    let disk = match (a.disk_available, a.disk_total) {
        (Some(avail), Some(total)) if total > 0 => avail * 100 < total * DISK_AVAILABLE_MIN_PERCENT,
        _ => false,
    };
    let pid = match (a.pids_used, a.pid_max) {
        (Some(used), Some(max)) if max > 0 => (max - used) * 100 < max * PIDS_AVAILABLE_MIN_PERCENT,
        _ => false,
    };
    (memory, disk, pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_and_etc_files_parse() {
        let meminfo = "MemTotal:        2048 kB\nMemFree:  10 kB\nMemAvailable:    1024 kB\n";
        assert_eq!(meminfo_field(meminfo, "MemTotal"), Some(2048 * 1024));
        assert_eq!(meminfo_field(meminfo, "MemAvailable"), Some(1024 * 1024));
        assert_eq!(meminfo_field(meminfo, "Nope"), None);
        let os = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            os_release_pretty_name(os).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(k8s_arch("x86_64"), "amd64");
        assert_eq!(k8s_arch("aarch64"), "arm64");
    }

    #[test]
    fn pressure_follows_the_eviction_thresholds() {
        let ok = Availability {
            memory_available: Some(1 << 30),
            memory_total: Some(4 << 30),
            disk_available: Some(50),
            disk_total: Some(100),
            pids_used: Some(100),
            pid_max: Some(32768),
        };
        assert_eq!(pressure(&ok), (false, false, false));
        let low = Availability {
            memory_available: Some(50 << 20),
            disk_available: Some(5),
            pids_used: Some(32000),
            ..ok
        };
        assert_eq!(pressure(&low), (true, true, true));
        assert_eq!(pressure(&Availability::default()), (false, false, false));
    }
}
