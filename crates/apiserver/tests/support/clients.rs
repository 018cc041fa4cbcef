//! The API clients other than `/usr/bin/kubectl` that the end-to-end tests
//! drive, where `scripts/install-deps.sh` puts them. A missing client fails
//! the test that needs it (never a silent skip): CI runs that script first.

use std::path::PathBuf;

use anyhow::bail;

/// Where `scripts/install-deps.sh` installs them (`$SKIFF_TEST_PREFIX` there
/// and here, `/opt/skiff-test` by default).
pub fn prefix() -> PathBuf {
    std::env::var_os("SKIFF_TEST_PREFIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/skiff-test"))
}

fn installed(path: PathBuf, what: &str) -> anyhow::Result<PathBuf> {
    if !path.is_file() {
        bail!(
            "{what} is not installed at {}: run scripts/install-deps.sh (as root) first",
            path.display()
        );
    }
    Ok(path)
}

/// kubectl v1.35.
pub fn kubectl_1_35() -> anyhow::Result<PathBuf> {
    installed(prefix().join("bin/kubectl-1.35"), "kubectl v1.35")
}

/// helm v4.
pub fn helm() -> anyhow::Result<PathBuf> {
    installed(prefix().join("bin/helm"), "helm v4")
}

/// The Python of the venv that holds the `kubernetes` client.
pub fn python() -> anyhow::Result<PathBuf> {
    installed(
        prefix().join("venv/bin/python"),
        "the Python kubernetes client's venv",
    )
}
