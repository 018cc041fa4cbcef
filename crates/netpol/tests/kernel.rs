//! The rendered table against the real kernel, as root: in a network
//! namespace the test creates (and deletes), `nft` loads the script of a
//! table that uses every kind of line the renderer writes, lists it back,
//! replaces it, and removes it when no pod is isolated any more.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use skiff_netpol::model::PodInfo;
use skiff_netpol::{Policy, State, Table};
use skiff_proxy::{Nft, NftCli};

/// A network namespace created with `ip netns add`, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Result<Self> {
        let name = format!("skiffnetpol-{:08x}", std::process::id());
        let out = Command::new("ip").args(["netns", "add", &name]).output()?;
        ensure!(
            out.status.success(),
            "ip netns add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self { name })
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    fn list(&self) -> Result<Option<String>> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .args(["--", "nft", "list", "table", "ip", "skiff-netpol"])
            .output()
            .context("nft list")?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn pod(ns: &str, name: &str, ip: &str, labels: Value) -> PodInfo {
    serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
        ]}]},
        "status": {"phase": "Running", "podIP": ip},
    }))
    .ok()
    .as_ref()
    .and_then(PodInfo::from_pod)
    .expect("pod")
}

fn state() -> State {
    let mut s = State::default();
    for p in [
        pod("shop", "web", "10.42.1.2", json!({"app": "web"})),
        pod("shop", "client", "10.42.1.3", json!({"app": "client"})),
        pod("lab", "other", "10.42.2.3", json!({})),
    ] {
        s.pods.insert((p.namespace.clone(), p.name.clone()), p);
    }
    s.namespaces
        .insert("shop".into(), [("team".into(), "a".into())].into());
    s.namespaces
        .insert("lab".into(), [("team".into(), "b".into())].into());
    let policy: Policy = Policy::from_api(
        &serde_json::from_value(json!({
            "metadata": {"name": "all-kinds", "namespace": "shop"},
            "spec": {
                "podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                     "ports": [{"port": "http"}, {"protocol": "UDP", "port": 5000, "endPort": 5010}]},
                    {"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}},
                              {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]},
                    {"ports": [{"protocol": "SCTP"}]},
                ],
                "egress": [
                    {"to": [{"podSelector": {}}], "ports": [{"protocol": "UDP", "port": "dns"}]},
                    {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]},
                    {}
                ],
            },
        }))
        .expect("policy"),
    );
    s.policies
        .insert(("shop".into(), "all-kinds".into()), policy);
    s
}

#[tokio::test]
async fn the_kernel_takes_the_rendered_table_replaces_it_and_drops_it() -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "this test creates a network namespace: run it as root"
    );
    let netns = Netns::new()?;
    let nft = NftCli::new(Some(netns.path()));

    let mut s = state();
    let table = Table::build(&s, "n1");
    ensure!(table.chains.len() == 4, "{table:?}");
    nft.apply(&table.script()).await?;
    let listed = netns.list()?.context("no table after the first write")?;
    for want in [
        "chain forward",
        "in/shop/web",
        "out/shop/client",
        "5000-5010",
        "192.168.0.0/16",
        "sctp",
        "10.42.1.2 : jump",
    ] {
        ensure!(listed.contains(want), "no {want:?} in:\n{listed}");
    }

    // Writing the same script again, and a changed one, replaces the table.
    nft.apply(&table.script()).await?;
    s.pods.remove(&("shop".to_string(), "client".to_string()));
    nft.apply(&Table::build(&s, "n1").script()).await?;
    let listed = netns.list()?.context("no table after the rewrite")?;
    ensure!(!listed.contains("out/shop/client"), "{listed}");

    // No isolated pod: no table.
    s.policies.clear();
    nft.apply(&Table::build(&s, "n1").script()).await?;
    ensure!(netns.list()?.is_none(), "the table stayed");
    // And removing what is not there is fine too.
    nft.apply(&Table::build(&s, "n1").script()).await?;
    Ok(())
}
