//! The proxy against real parts: an in-process API server, the `nft`
//! binary, and a node that is a network namespace the test creates, with
//! pods that are namespaces too. Runs as root; skips otherwise.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::{
    BACKEND_PORT, CLUSTER_IP, Node, OUTSIDE_NODE_IP, answers, api_server, connect_many,
    create_service, create_slice, delete_service, privileged, run_in, sock, start_proxy,
    update_slice, wait_until,
};
use serde_json::json;

const SYNC: Duration = Duration::from_secs(10);

#[test]
fn services_reach_ready_endpoints_drop_unready_ones_within_2s_and_vanish_when_deleted()
-> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let net = Node::new(&["pod-a", "pod-b", "client"])?;
    let (a, b) = (net.pod("pod-a").ip, net.pod("pod-b").ip);
    let client_ns = net.pod("client").netns.path.clone();
    run_in(&net.node.path, || async {
        let api = api_server().await?;
        let (metrics, proxy) = start_proxy(api.client.clone(), &net.node)?;
        create_service(&api.client, json!({"type": "NodePort",
            "ports": [{"name": "http", "port": 80, "targetPort": BACKEND_PORT, "protocol": "TCP", "nodePort": 30080}]}))
        .await?;
        create_slice(&api.client, &[(a, true), (b, true)]).await?;
        wait_until("rules for both endpoints", SYNC, || {
            let t = net.node.nft_table();
            t.contains(&format!("dnat to {a}:{BACKEND_PORT}"))
                && t.contains(&format!("dnat to {b}:{BACKEND_PORT}"))
        })
        .await?;

        // ClusterIP from a third pod, from the node itself, and from a pod
        // that is one of the backends (hairpin).
        let vip = sock(CLUSTER_IP, 80);
        for (who, ns) in [
            ("client pod", &client_ns),
            ("node", &net.node.path),
            ("pod-a (hairpin)", &net.pod("pod-a").netns.path),
        ] {
            let seen = answers(ns, vip, 40)
                .await
                .with_context(|| who.to_string())?;
            eprintln!("{who} -> {vip}: {seen:?}");
            ensure!(seen.len() == 2, "{who} reached {seen:?}, not both backends");
        }
        // NodePort on the node's address, from outside the cluster.
        let np = sock(OUTSIDE_NODE_IP, 30080);
        let seen = answers(&net.outside.path, np, 40)
            .await
            .context("node port")?;
        eprintln!("outside -> {np}: {seen:?}");
        ensure!(seen.len() == 2, "node port reached {seen:?}");

        // pod-b goes not ready: out of rotation within 2 s.
        let before = metrics.syncs();
        let t = Instant::now();
        update_slice(&api.client, &[(a, true), (b, false)]).await?;
        let write = t.elapsed();
        wait_until("pod-b out of the rules", Duration::from_secs(2), || {
            !net.node.nft_table().contains(&format!("dnat to {b}:"))
        })
        .await?;
        let took = t.elapsed();
        // The sample is recorded just after nft returns.
        wait_until("sync recorded", Duration::from_secs(2), || {
            metrics.syncs() > before
        })
        .await?;
        let proxy_latency = metrics.last().map(|s| s.latency);
        eprintln!(
            "endpoint not ready -> rules: {took:?} from the API write (the write itself {write:?}; nft polled every 10 ms); proxy watch event -> rules {proxy_latency:?}"
        );
        ensure!(took < Duration::from_secs(2), "took {took:?}");
        let seen = answers(&client_ns, vip, 20).await?;
        ensure!(
            seen.keys().collect::<Vec<_>>() == vec!["pod-a"],
            "still reaching {seen:?}"
        );

        // Deleting the service removes every trace; connections are refused.
        delete_service(&api.client).await?;
        wait_until("service rules gone", SYNC, || {
            let t = net.node.nft_table();
            !t.contains("default/web")
                && !t.contains(&CLUSTER_IP.to_string())
                && !t.contains("30080")
        })
        .await?;
        let table = net.node.nft_table();
        ensure!(
            table.contains("table ip skiff-proxy"),
            "base table kept: {table}"
        );
        for (who, ns, addr) in [
            ("client pod", &client_ns, vip),
            ("outside", &net.outside.path, np),
        ] {
            let start = Instant::now();
            let results = connect_many(ns, addr, 3).await?;
            for r in results {
                match r {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                    other => anyhow::bail!("{who} -> {addr} after delete: {other:?}"),
                }
            }
            ensure!(
                start.elapsed() < Duration::from_secs(1),
                "refusal was not immediate"
            );
        }
        ensure!(!proxy.is_finished(), "proxy stopped: {:?}", proxy);
        eprintln!(
            "sync p50 {:?} p99 {:?} over {} syncs",
            metrics.p50(),
            metrics.p99(),
            metrics.syncs()
        );
        Ok(())
    })
}

#[test]
fn a_service_without_ready_endpoints_refuses_connections_at_once() -> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let net = Node::new(&["pod-a", "client"])?;
    let a = net.pod("pod-a").ip;
    let client_ns = net.pod("client").netns.path.clone();
    run_in(&net.node.path, || async {
        let api = api_server().await?;
        let (_metrics, _proxy) = start_proxy(api.client.clone(), &net.node)?;
        create_service(&api.client, json!({})).await?;
        create_slice(&api.client, &[(a, false)]).await?;
        wait_until("reject element", SYNC, || {
            net.node
                .nft_table()
                .contains("10.43.0.50 . tcp . 80 : goto reject-chain")
        })
        .await?;
        let vip = sock(CLUSTER_IP, 80);
        for (who, ns) in [("client pod", &client_ns), ("node", &net.node.path)] {
            let start = Instant::now();
            for r in connect_many(ns, vip, 3).await? {
                ensure!(
                    matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
                    "{who}: {r:?}"
                );
            }
            ensure!(
                start.elapsed() < Duration::from_secs(1),
                "{who}: refusal was not immediate"
            );
        }
        // The endpoint becomes ready: the service answers.
        update_slice(&api.client, &[(a, true)]).await?;
        wait_until("service rules", SYNC, || {
            net.node.nft_table().contains("dnat to 10.42.0.2:8080")
        })
        .await?;
        let seen = answers(&client_ns, vip, 5).await?;
        ensure!(seen.get("pod-a") == Some(&5), "{seen:?}");
        Ok(())
    })
}

#[test]
fn client_ip_affinity_sends_one_client_to_one_backend() -> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let net = Node::new(&["pod-a", "pod-b", "client"])?;
    let (a, b) = (net.pod("pod-a").ip, net.pod("pod-b").ip);
    let client_ns = net.pod("client").netns.path.clone();
    run_in(&net.node.path, || async {
        let api = api_server().await?;
        let (_metrics, _proxy) = start_proxy(api.client.clone(), &net.node)?;
        create_service(
            &api.client,
            json!({"sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}),
        )
        .await?;
        create_slice(&api.client, &[(a, true), (b, true)]).await?;
        wait_until("affinity rules", SYNC, || {
            let t = net.node.nft_table();
            t.contains("update @affinity-") && t.contains(&format!("dnat to {b}:"))
        })
        .await?;
        let vip = sock(CLUSTER_IP, 80);
        let seen = answers(&client_ns, vip, 30).await?;
        eprintln!("client pod with affinity: {seen:?}");
        ensure!(seen.len() == 1, "one client reached {seen:?}");
        let table = net.node.nft_table();
        ensure!(
            table.contains("10.42.0.4 timeout 10m expires"),
            "client not remembered:\n{table}"
        );
        Ok(())
    })
}
