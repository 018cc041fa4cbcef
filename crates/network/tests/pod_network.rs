//! One node: the node is a network namespace the test creates, pods are
//! namespaces too. Runs as root; skips otherwise.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, ensure};
use common::{Netns, join, privileged, run_in, tcp_round_trip};
use skiff_network::{PodNetwork, PodNetworkConfig};

fn network(node: &Netns, state: &std::path::Path, pod_cidr: &str) -> anyhow::Result<PodNetwork> {
    let mut config = PodNetworkConfig::new("node-a", pod_cidr.parse()?, state);
    config.host_netns = Some(node.path.clone());
    Ok(PodNetwork::new(config)?)
}

#[test]
fn pods_on_one_node_reach_each_other_and_the_gateway() -> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let node = Netns::new("node")?;
    let pod1 = Netns::new("pod1")?;
    let pod2 = Netns::new("pod2")?;
    let state = tempfile::tempdir()?;
    run_in(&node.path, || async {
        let net = network(&node, state.path(), "10.42.1.0/24")?;
        net.ensure_node().await?;
        let a = net.setup("sandbox-1", &pod1.path).await?;
        let b = net.setup("sandbox-2", &pod2.path).await?;
        ensure!(a.ip() != b.ip(), "distinct addresses");
        ensure!(a.gateway == Ipv4Addr::new(10, 42, 1, 1));
        ensure!(
            a.address.to_string() == "10.42.1.2/24",
            "first pod address: {}",
            a.address
        );

        // pod -> pod, both ways, sources kept (no masquerade inside the cluster)
        let seen = tcp_round_trip(&pod2.path, b.ip(), &pod1.path)?;
        ensure!(seen.ip() == IpAddr::V4(a.ip()), "pod2 saw {seen}");
        let seen = tcp_round_trip(&pod1.path, a.ip(), &pod2.path)?;
        ensure!(seen.ip() == IpAddr::V4(b.ip()), "pod1 saw {seen}");
        // pod -> gateway (a listener in the node namespace)
        let seen = tcp_round_trip(&node.path, a.gateway, &pod1.path)?;
        ensure!(seen.ip() == IpAddr::V4(a.ip()), "node saw {seen}");

        // kernel state as configured
        let eth0 = pod1.ip(&["-4", "addr", "show", "dev", "eth0"])?;
        ensure!(eth0.contains("10.42.1.2/24"), "eth0: {eth0}");
        let routes = pod1.ip(&["route", "show", "default"])?;
        ensure!(
            routes.contains("via 10.42.1.1 dev eth0"),
            "pod routes: {routes}"
        );
        let port = node.ip(&["-d", "link", "show", &a.host_veth])?;
        ensure!(port.contains("master skiff0"), "host veth: {port}");
        ensure!(port.contains("hairpin on"), "hairpin: {port}");
        let bridge = node.ip(&["-4", "addr", "show", "dev", "skiff0"])?;
        ensure!(bridge.contains("10.42.1.1/24"), "bridge: {bridge}");
        Ok(())
    })
}

#[test]
fn ensure_node_is_idempotent_and_loads_forwarding_and_nft_table() -> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let node = Netns::new("node")?;
    let state = tempfile::tempdir()?;
    run_in(&node.path, || async {
        let net = network(&node, state.path(), "10.42.7.0/24")?;
        net.ensure_node().await?;
        let index_before = node.ip(&["-o", "link", "show", "skiff0"])?;
        net.ensure_node().await?;
        let index_after = node.ip(&["-o", "link", "show", "skiff0"])?;
        ensure!(
            index_before.split(':').next() == index_after.split(':').next(),
            "bridge recreated: {index_before} vs {index_after}"
        );
        let addrs = node.ip(&["-4", "-o", "addr", "show", "dev", "skiff0"])?;
        ensure!(
            addrs.lines().count() == 1 && addrs.contains("10.42.7.1/24"),
            "bridge addresses: {addrs}"
        );
        let forward = node.run(&["cat", "/proc/sys/net/ipv4/ip_forward"])?;
        ensure!(forward.trim() == "1", "ip_forward in node netns: {forward}");
        let table = node.run(&["nft", "list", "table", "inet", "skiff-net"])?;
        ensure!(
            table.contains("ip saddr 10.42.7.0/24 ip daddr != 10.42.0.0/16 masquerade"),
            "table: {table}"
        );
        ensure!(
            table.matches("masquerade").count() == 1,
            "rules duplicated: {table}"
        );
        Ok(())
    })
}

#[test]
fn ensure_node_replaces_a_stale_gateway_after_pod_cidr_change() -> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let node = Netns::new("node")?;
    let state = tempfile::tempdir()?;
    run_in(&node.path, || async {
        network(&node, state.path(), "10.42.3.0/24")?
            .ensure_node()
            .await?;
        network(&node, state.path(), "10.42.4.0/24")?
            .ensure_node()
            .await?;
        let addrs = node.ip(&["-4", "-o", "addr", "show", "dev", "skiff0"])?;
        ensure!(
            addrs.lines().count() == 1 && addrs.contains("10.42.4.1/24"),
            "bridge addresses: {addrs}"
        );
        Ok(())
    })
}

#[test]
fn setup_twice_for_one_sandbox_returns_the_same_address() -> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let node = Netns::new("node")?;
    let pod = Netns::new("pod")?;
    let state = tempfile::tempdir()?;
    run_in(&node.path, || async {
        let net = network(&node, state.path(), "10.42.1.0/24")?;
        net.ensure_node().await?;
        let first = net.setup("sandbox-1", &pod.path).await?;
        let again = net.setup("sandbox-1", &pod.path).await?;
        ensure!(first == again, "{first:?} vs {again:?}");
        ensure!(net.ipam().allocations()?.len() == 1, "one reservation");
        let links = pod.ip(&["-o", "link", "show"])?;
        ensure!(links.matches("eth0").count() == 1, "one eth0: {links}");
        // A fresh PodNetwork (an agent restart) sees the same reservation.
        let restarted = network(&node, state.path(), "10.42.1.0/24")?;
        ensure!(restarted.setup("sandbox-1", &pod.path).await? == first);
        Ok(())
    })
}

#[test]
fn teardown_removes_the_veth_and_frees_the_address_and_is_idempotent() -> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let node = Netns::new("node")?;
    let pod = Netns::new("pod")?;
    let state = tempfile::tempdir()?;
    run_in(&node.path, || async {
        let net = network(&node, state.path(), "10.42.1.0/24")?;
        net.ensure_node().await?;
        let a = net.setup("sandbox-1", &pod.path).await?;
        net.teardown("sandbox-1", &pod.path).await?;
        ensure!(net.ipam().lookup("sandbox-1")?.is_none(), "address freed");
        ensure!(
            !state.path().join("ipam").join(a.ip().to_string()).exists(),
            "reservation file removed"
        );
        let host = node.ip(&["-o", "link", "show"])?;
        ensure!(!host.contains(&a.host_veth), "host veth gone: {host}");
        let inside = pod.ip(&["-o", "link", "show"])?;
        ensure!(!inside.contains("eth0"), "eth0 gone: {inside}");
        net.teardown("sandbox-1", &pod.path)
            .await
            .context("second teardown")?;
        Ok(())
    })
}

#[test]
fn teardown_works_when_the_sandbox_namespace_is_already_gone() -> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let node = Netns::new("node")?;
    let pod = Netns::new("pod")?;
    let state = tempfile::tempdir()?;
    let pod_path = pod.path.clone();
    run_in(&node.path, || async {
        let net = network(&node, state.path(), "10.42.1.0/24")?;
        net.ensure_node().await?;
        let a = net.setup("sandbox-1", &pod_path).await?;
        drop(pod); // deletes the namespace, and with it the veth pair
        net.teardown("sandbox-1", &pod_path).await?;
        ensure!(net.ipam().lookup("sandbox-1")?.is_none(), "address freed");
        let host = node.ip(&["-o", "link", "show"])?;
        ensure!(!host.contains(&a.host_veth), "host veth gone: {host}");
        Ok(())
    })
}

#[test]
fn setup_fails_cleanly_before_ensure_node_and_keeps_no_address() -> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let node = Netns::new("node")?;
    let pod = Netns::new("pod")?;
    let state = tempfile::tempdir()?;
    run_in(&node.path, || async {
        let net = network(&node, state.path(), "10.42.1.0/24")?;
        let err = net
            .setup("sandbox-1", &pod.path)
            .await
            .expect_err("no bridge yet");
        ensure!(
            matches!(err, skiff_network::Error::BridgeMissing { .. }),
            "{err}"
        );
        ensure!(net.ipam().allocations()?.is_empty(), "reservation undone");
        Ok(())
    })
}

#[test]
fn pod_traffic_leaving_the_cluster_is_masqueraded_to_the_node_address() -> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    // "outside" is a namespace standing in for a host outside the cluster,
    // on a link to the node; it has no other link.
    let node = Netns::new("node")?;
    let outside = Netns::new("outside")?;
    let pod = Netns::new("pod")?;
    join(&node, "192.0.2.1/24", &outside, "192.0.2.254/24")?;
    let state = tempfile::tempdir()?;
    run_in(&node.path, || async {
        let net = network(&node, state.path(), "10.42.1.0/24")?;
        net.ensure_node().await?;
        net.setup("sandbox-1", &pod.path).await?;
        let seen = tcp_round_trip(&outside.path, Ipv4Addr::new(192, 0, 2, 254), &pod.path)?;
        ensure!(
            seen.ip() == IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            "outside saw {seen}"
        );
        Ok(())
    })
}

#[test]
fn concurrent_setups_get_distinct_addresses_and_concurrent_teardowns_free_them()
-> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let node = Netns::new("node")?;
    let pods = (0..6)
        .map(|i| Netns::new(&format!("pod{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let state = tempfile::tempdir()?;
    run_in(&node.path, || async {
        let net = network(&node, state.path(), "10.42.1.0/24")?;
        net.ensure_node().await?;
        let setups = pods.iter().enumerate().map(|(i, pod)| {
            let net = net.clone();
            async move { net.setup(&format!("sandbox-{i}"), &pod.path).await }
        });
        let addrs = futures::future::try_join_all(setups).await?;
        let distinct: std::collections::HashSet<_> = addrs.iter().map(|a| a.ip()).collect();
        ensure!(distinct.len() == pods.len(), "addresses: {addrs:?}");
        // every pod reaches the first one
        for pod in &pods[1..] {
            tcp_round_trip(&pods[0].path, addrs[0].ip(), &pod.path)?;
        }
        let teardowns = pods.iter().enumerate().map(|(i, pod)| {
            let net = net.clone();
            async move { net.teardown(&format!("sandbox-{i}"), &pod.path).await }
        });
        futures::future::try_join_all(teardowns).await?;
        ensure!(net.ipam().allocations()?.is_empty(), "all freed");
        Ok(())
    })
}
