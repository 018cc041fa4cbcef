//! The node's nftables table, rendered as text and loaded with one atomic
//! `nft -f -` transaction.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;

use ipnet::Ipv4Net;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::Error;

/// Family and name of the table this crate owns; nothing else in it is
/// kept across a reload.
pub const TABLE_FAMILY: &str = "inet";
/// See [`TABLE_FAMILY`].
pub const TABLE_NAME: &str = "skiff-net";

/// The whole `inet skiff-net` table as an `nft -f` script. Adding the
/// table, deleting it and defining it again in one transaction replaces
/// whatever an earlier agent left, so loading it is idempotent, and
/// atomic: packets see either the old table or the new one.
///
/// - `postrouting`: masquerade traffic from this node's pods to anything
///   outside the cluster CIDR (pod-to-pod traffic keeps its source).
/// - `forward`: accept traffic from and to the cluster CIDR, so a default
///   drop policy elsewhere does not cut pods off.
pub fn ruleset(pod_cidr: Ipv4Net, cluster_cidr: Ipv4Net) -> String {
    let pod = pod_cidr.trunc();
    let cluster = cluster_cidr.trunc();
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        "add table {TABLE_FAMILY} {TABLE_NAME}\n\
         delete table {TABLE_FAMILY} {TABLE_NAME}\n\
         table {TABLE_FAMILY} {TABLE_NAME} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {pod} ip daddr != {cluster} masquerade\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip saddr {cluster} accept\n\
         \t\tip daddr {cluster} accept\n\
         \t}}\n\
         }}\n"
    );
    s
}

/// Loads `script` with `nft -f -`, inside the network namespace at
/// `netns` (through `nsenter --net=`) or in the caller's.
pub async fn apply(script: &str, netns: Option<&Path>) -> Result<(), Error> {
    let mut cmd = match netns {
        Some(path) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", path.display()))
                .arg("--")
                .arg("nft");
            c
        }
        None => Command::new("nft"),
    };
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| Error::NftSpawn { source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|source| Error::NftSpawn { source })?;
        // Dropping stdin closes it so nft sees the end of the script.
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| Error::NftSpawn { source })?;
    if !out.status.success() {
        return Err(Error::Nft {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    tracing::debug!(table = TABLE_NAME, "nftables table loaded");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_masquerades_pod_traffic_leaving_the_cluster_and_replaces_the_table() {
        let got = ruleset(
            "10.42.1.0/24".parse().expect("cidr"),
            "10.42.0.0/16".parse().expect("cidr"),
        );
        let want = "\
add table inet skiff-net
delete table inet skiff-net
table inet skiff-net {
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 10.42.1.0/24 ip daddr != 10.42.0.0/16 masquerade
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.42.0.0/16 accept
\t\tip daddr 10.42.0.0/16 accept
\t}
}
";
        assert_eq!(got, want);
    }

    #[test]
    fn ruleset_normalises_host_bits_in_cidrs() {
        let got = ruleset(
            "10.42.1.9/24".parse().expect("cidr"),
            "10.42.3.3/16".parse().expect("cidr"),
        );
        assert!(got.contains("ip saddr 10.42.1.0/24 ip daddr != 10.42.0.0/16 masquerade"));
    }
}
