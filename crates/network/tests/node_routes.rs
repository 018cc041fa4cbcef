//! Two nodes: two network namespaces joined by a veth link (no other
//! link, so nothing routes off the machine), each with a pod network and
//! routes to the other's pod CIDR. Runs as root; skips otherwise.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use anyhow::ensure;
use common::{Netns, join, privileged, run_in, tcp_round_trip};
use skiff_network::{
    Backend, PodAddress, PodNetwork, PodNetworkConfig, RemoteNode, Routes, RoutesConfig,
    VxlanConfig,
};

const A_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

struct Cluster {
    node_a: Netns,
    node_b: Netns,
    pod_a: Netns,
    pod_b: Netns,
    state: tempfile::TempDir,
}

impl Cluster {
    fn new() -> anyhow::Result<Self> {
        let node_a = Netns::new("node-a")?;
        let node_b = Netns::new("node-b")?;
        join(&node_a, "192.0.2.1/24", &node_b, "192.0.2.2/24")?;
        Ok(Self {
            node_a,
            node_b,
            pod_a: Netns::new("pod-a")?,
            pod_b: Netns::new("pod-b")?,
            state: tempfile::tempdir()?,
        })
    }

    fn nodes() -> anyhow::Result<Vec<RemoteNode>> {
        Ok(vec![
            RemoteNode {
                name: "a".into(),
                ip: A_IP,
                pod_cidr: "10.42.1.0/24".parse()?,
            },
            RemoteNode {
                name: "b".into(),
                ip: B_IP,
                pod_cidr: "10.42.2.0/24".parse()?,
            },
        ])
    }

    fn routes(&self, node: &str, backend: &Backend) -> anyhow::Result<Routes> {
        let (ip, cidr, ns) = match node {
            "a" => (A_IP, "10.42.1.0/24", &self.node_a),
            _ => (B_IP, "10.42.2.0/24", &self.node_b),
        };
        Ok(Routes::new(RoutesConfig {
            node_name: node.into(),
            node_ip: ip,
            pod_cidr: cidr.parse()?,
            backend: backend.clone(),
            host_netns: Some(ns.path.clone()),
        })?)
    }

    /// Both nodes' pod networks, one pod on each.
    async fn pods(&self) -> anyhow::Result<(PodAddress, PodAddress)> {
        let mut addrs = Vec::new();
        for (name, cidr, node, pod) in [
            ("a", "10.42.1.0/24", &self.node_a, &self.pod_a),
            ("b", "10.42.2.0/24", &self.node_b, &self.pod_b),
        ] {
            let mut config =
                PodNetworkConfig::new(name, cidr.parse()?, self.state.path().join(name));
            config.host_netns = Some(node.path.clone());
            config.mtu = 1400; // room for the vxlan header on a 1500 link
            let net = PodNetwork::new(config)?;
            net.ensure_node().await?;
            addrs.push(net.setup(&format!("sandbox-{name}"), &pod.path).await?);
        }
        let b = addrs.pop().ok_or_else(|| anyhow::anyhow!("pod b"))?;
        let a = addrs.pop().ok_or_else(|| anyhow::anyhow!("pod a"))?;
        Ok((a, b))
    }

    /// TCP both ways between the pods; each side sees the other's pod IP.
    fn pods_talk(&self, a: &PodAddress, b: &PodAddress) -> anyhow::Result<()> {
        let seen = tcp_round_trip(&self.pod_b.path, b.ip(), &self.pod_a.path)?;
        ensure!(seen.ip() == IpAddr::V4(a.ip()), "pod b saw {seen}");
        let seen = tcp_round_trip(&self.pod_a.path, a.ip(), &self.pod_b.path)?;
        ensure!(seen.ip() == IpAddr::V4(b.ip()), "pod a saw {seen}");
        Ok(())
    }
}

#[test]
fn pods_on_two_nodes_reach_each_other_over_host_gw_routes() -> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let c = Cluster::new()?;
    run_in(&c.node_a.path, || async {
        let (a, b) = c.pods().await?;
        let backend = Backend::HostGw;
        let (ra, rb) = (c.routes("a", &backend)?, c.routes("b", &backend)?);
        // The full node list, this node included: sync skips itself.
        ra.sync(&Cluster::nodes()?).await?;
        rb.sync(&Cluster::nodes()?).await?;
        c.pods_talk(&a, &b)?;

        let routes = c.node_a.ip(&["route", "show", "10.42.2.0/24"])?;
        ensure!(
            routes.contains("via 192.0.2.2") && routes.contains("proto 83"),
            "node a: {routes}"
        );
        // Idempotent: a second sync changes nothing and traffic still flows.
        ra.sync(&Cluster::nodes()?).await?;
        let again = c.node_a.ip(&["route", "show", "10.42.2.0/24"])?;
        ensure!(routes == again, "{routes} vs {again}");
        c.pods_talk(&a, &b)?;
        Ok(())
    })
}

#[test]
fn host_gw_sync_removes_routes_of_nodes_that_left_and_keeps_foreign_routes() -> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let c = Cluster::new()?;
    run_in(&c.node_a.path, || async {
        // A route the operator made, not ours: sync must leave it alone.
        c.node_a
            .ip(&["route", "add", "10.99.0.0/24", "via", "192.0.2.2"])?;
        let ra = c.routes("a", &Backend::HostGw)?;
        let mut nodes = Cluster::nodes()?;
        nodes.push(RemoteNode {
            name: "c".into(),
            ip: Ipv4Addr::new(192, 0, 2, 3),
            pod_cidr: "10.42.3.0/24".parse()?,
        });
        ra.sync(&nodes).await?;
        let table = c.node_a.ip(&["route", "show", "proto", "83"])?;
        ensure!(
            table.contains("10.42.2.0/24") && table.contains("10.42.3.0/24"),
            "{table}"
        );

        nodes.retain(|n| n.name != "c");
        ra.sync(&nodes).await?;
        let table = c.node_a.ip(&["route", "show", "proto", "83"])?;
        ensure!(
            table.contains("10.42.2.0/24") && !table.contains("10.42.3.0/24"),
            "{table}"
        );

        ra.sync(&[]).await?;
        let ours = c.node_a.ip(&["route", "show", "proto", "83"])?;
        ensure!(ours.trim().is_empty(), "stale routes left: {ours}");
        let all = c.node_a.ip(&["route", "show"])?;
        ensure!(
            all.contains("10.99.0.0/24 via 192.0.2.2"),
            "foreign route removed: {all}"
        );
        Ok(())
    })
}

#[test]
fn pods_on_two_nodes_reach_each_other_over_vxlan() -> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let c = Cluster::new()?;
    run_in(&c.node_a.path, || async {
        let (a, b) = c.pods().await?;
        let backend = Backend::Vxlan(VxlanConfig::default());
        let (ra, rb) = (c.routes("a", &backend)?, c.routes("b", &backend)?);
        ra.sync(&Cluster::nodes()?).await?;
        rb.sync(&Cluster::nodes()?).await?;
        c.pods_talk(&a, &b)?;

        let dev = c.node_a.ip(&["-d", "-o", "link", "show", "skiff.1"])?;
        ensure!(
            dev.contains("vxlan id 1")
                && dev.contains("local 192.0.2.1")
                && dev.contains("dstport 8472"),
            "vxlan device: {dev}"
        );
        ensure!(
            dev.contains("0a:73:c0:00:02:01"),
            "vtep mac derived from node ip: {dev}"
        );
        let route = c.node_a.ip(&["route", "show", "10.42.2.0/24"])?;
        ensure!(
            route.contains("via 10.42.2.0 dev skiff.1") && route.contains("onlink"),
            "route: {route}"
        );
        let neigh = c.node_a.ip(&["neigh", "show", "dev", "skiff.1"])?;
        ensure!(
            neigh.contains("10.42.2.0 lladdr 0a:73:c0:00:02:02 PERMANENT"),
            "neigh: {neigh}"
        );
        let fdb = c.node_a.run(&["bridge", "fdb", "show", "dev", "skiff.1"])?;
        ensure!(
            fdb.contains("0a:73:c0:00:02:02 dst 192.0.2.2"),
            "fdb: {fdb}"
        );

        // Idempotent: the device is kept (same index), traffic still flows.
        ra.sync(&Cluster::nodes()?).await?;
        let dev_again = c.node_a.ip(&["-d", "-o", "link", "show", "skiff.1"])?;
        ensure!(
            dev.split(':').next() == dev_again.split(':').next(),
            "device recreated"
        );
        c.pods_talk(&a, &b)?;

        // Node b leaves: its route, neighbour and fdb entry go.
        ra.sync(&[]).await?;
        let route = c.node_a.ip(&["route", "show", "proto", "83"])?;
        ensure!(route.trim().is_empty(), "route left: {route}");
        let neigh = c
            .node_a
            .ip(&["neigh", "show", "dev", "skiff.1", "nud", "permanent"])?;
        ensure!(neigh.trim().is_empty(), "neigh left: {neigh}");
        let fdb = c.node_a.run(&["bridge", "fdb", "show", "dev", "skiff.1"])?;
        ensure!(!fdb.contains("dst 192.0.2.2"), "fdb left: {fdb}");

        // remove_all takes the overlay down entirely.
        ra.sync(&Cluster::nodes()?).await?;
        ra.remove_all().await?;
        let links = c.node_a.ip(&["-o", "link", "show"])?;
        ensure!(!links.contains("skiff.1"), "vxlan device left: {links}");
        let route = c.node_a.ip(&["route", "show", "proto", "83"])?;
        ensure!(route.trim().is_empty(), "route left: {route}");
        Ok(())
    })
}

#[test]
fn switching_backend_from_vxlan_to_host_gw_removes_the_overlay() -> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let c = Cluster::new()?;
    run_in(&c.node_a.path, || async {
        let (a, b) = c.pods().await?;
        let vxlan = Backend::Vxlan(VxlanConfig::default());
        c.routes("a", &vxlan)?.sync(&Cluster::nodes()?).await?;
        c.routes("b", &vxlan)?.sync(&Cluster::nodes()?).await?;
        c.routes("a", &Backend::HostGw)?
            .sync(&Cluster::nodes()?)
            .await?;
        c.routes("b", &Backend::HostGw)?
            .sync(&Cluster::nodes()?)
            .await?;
        let links = c.node_a.ip(&["-o", "link", "show"])?;
        ensure!(!links.contains("skiff.1"), "vxlan device left: {links}");
        let route = c.node_a.ip(&["route", "show", "10.42.2.0/24"])?;
        ensure!(
            route.contains("via 192.0.2.2") && !route.contains("skiff.1"),
            "route: {route}"
        );
        c.pods_talk(&a, &b)?;
        Ok(())
    })
}
