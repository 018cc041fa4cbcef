//! The kernel side: loading an `nft -f -` script (one atomic transaction)
//! and listing the proxy's table, behind the narrow [`Nft`] trait so the
//! sync logic is tested without root. [`NftCli`] runs the `nft` binary
//! (Debian package `nftables`), inside a given network namespace through
//! `nsenter --net=` when configured.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::rules::{FAMILY, TABLE, TableObjects};

/// Errors of the nft boundary.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running nft (Debian package nftables){}", netns_suffix(.netns))]
    Spawn {
        netns: Option<PathBuf>,
        #[source]
        source: io::Error,
    },
    #[error("nft {what} failed ({status}){}: {stderr}", netns_suffix(.netns))]
    Failed {
        what: &'static str,
        netns: Option<PathBuf>,
        status: String,
        stderr: String,
    },
    #[error("parsing `nft -j list` output")]
    Parse(#[source] serde_json::Error),
}

fn netns_suffix(netns: &Option<PathBuf>) -> String {
    netns
        .as_ref()
        .map(|p| format!(" in network namespace {}", p.display()))
        .unwrap_or_default()
}

/// What the proxy asks of nftables.
pub trait Nft: Send + Sync {
    /// Loads `script` as one transaction: all of it applies, or none.
    fn apply(&self, script: &str) -> impl Future<Output = Result<(), NftError>> + Send;
    /// The chains and sets of the proxy's table (empty when it does not
    /// exist).
    fn list(&self) -> impl Future<Output = Result<TableObjects, NftError>> + Send;
}

/// [`Nft`] through the `nft` binary.
#[derive(Debug, Clone, Default)]
pub struct NftCli {
    /// Run inside this network namespace (`nsenter --net=`) instead of the
    /// caller's.
    pub netns: Option<PathBuf>,
}

impl NftCli {
    pub fn new(netns: Option<PathBuf>) -> Self {
        Self { netns }
    }

    fn command(&self) -> Command {
        let mut cmd = match &self.netns {
            Some(path) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", path.display()))
                    .arg("--")
                    .arg("nft");
                c
            }
            None => Command::new("nft"),
        };
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    fn spawn_error(&self, source: io::Error) -> NftError {
        NftError::Spawn {
            netns: self.netns.clone(),
            source,
        }
    }

    fn failed(&self, what: &'static str, out: &std::process::Output) -> NftError {
        NftError::Failed {
            what,
            netns: self.netns.clone(),
            status: out.status.to_string(),
            stderr: truncate(String::from_utf8_lossy(&out.stderr).trim(), 4000),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl Nft for NftCli {
    async fn apply(&self, script: &str) -> Result<(), NftError> {
        let mut cmd = self.command();
        cmd.args(["-f", "-"]).stdin(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        if let Some(mut stdin) = child.stdin.take() {
            match stdin.write_all(script.as_bytes()).await {
                // nft stops reading at the first error: its stderr says why.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                Err(e) => return Err(self.spawn_error(e)),
                Ok(()) => {}
            }
            // Dropping stdin closes it: nft sees the end of the script.
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| self.spawn_error(e))?;
        if !out.status.success() {
            return Err(self.failed("-f -", &out));
        }
        Ok(())
    }

    async fn list(&self) -> Result<TableObjects, NftError> {
        // `list chains` and `list sets` (names only) instead of `list
        // table`: listing every rule of a table of 10,000 services took
        // longer than rewriting it.
        let mut objects = TableObjects::default();
        for what in ["chains", "sets"] {
            let mut cmd = self.command();
            cmd.args(["-j", "list", what, FAMILY]).stdin(Stdio::null());
            let out = cmd.output().await.map_err(|e| self.spawn_error(e))?;
            if !out.status.success() {
                return Err(self.failed("list", &out));
            }
            let found = parse_objects(&out.stdout)?;
            objects.chains.extend(found.chains);
            objects.sets.extend(found.sets);
        }
        Ok(objects)
    }
}

/// Names of the proxy table's chains and sets (maps count as sets) in
/// `nft -j list …` output; objects of other tables are skipped.
pub fn parse_objects(json: &[u8]) -> Result<TableObjects, NftError> {
    let value: serde_json::Value = serde_json::from_slice(json).map_err(NftError::Parse)?;
    let mut objects = TableObjects::default();
    let items = value
        .get("nftables")
        .and_then(|v| v.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for item in items {
        for kind in ["chain", "set", "map"] {
            let Some(object) = item.get(kind) else {
                continue;
            };
            let ours = object.get("family").and_then(|f| f.as_str()) == Some(FAMILY)
                && object.get("table").and_then(|t| t.as_str()) == Some(TABLE);
            if let Some(name) = object.get("name").and_then(|n| n.as_str()).filter(|_| ours) {
                let bucket = if kind == "chain" {
                    &mut objects.chains
                } else {
                    &mut objects.sets
                };
                bucket.insert(name.to_string());
            }
        }
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_collects_the_tables_chain_set_and_map_names_only() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "skiff-proxy", "handle": 2}},
            {"set": {"family": "ip", "name": "cluster-ips", "table": "skiff-proxy", "elem": ["10.43.0.50"]}},
            {"map": {"family": "ip", "name": "service-ips", "table": "skiff-proxy", "map": "verdict"}},
            {"chain": {"family": "ip", "table": "skiff-proxy", "name": "services", "handle": 1}},
            {"chain": {"family": "ip", "table": "skiff-netpol", "name": "forward", "handle": 1}},
            {"set": {"family": "inet", "table": "skiff-proxy", "name": "other-family"}},
            {"rule": {"family": "ip", "table": "skiff-proxy", "chain": "services", "expr": []}}]}"#;
        let got = parse_objects(json).expect("parse");
        assert_eq!(
            got.chains.into_iter().collect::<Vec<_>>(),
            vec!["services".to_string()]
        );
        assert_eq!(
            got.sets.into_iter().collect::<Vec<_>>(),
            vec!["cluster-ips".to_string(), "service-ips".to_string()]
        );
    }

    #[test]
    fn listing_rejects_output_that_is_not_json() {
        assert!(parse_objects(b"table ip skiff-proxy {").is_err());
    }
}
