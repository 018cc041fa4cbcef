//! The proxy against real parts: an in-process API server, the `nft`
//! binary, and a node that is a network namespace the test creates, with
//! pods that are namespaces too. Runs as root; skips otherwise.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::{
    BACKEND_PORT, CLUSTER_IP, Node, OUTSIDE_NODE_IP, answers, api_server, connect_many,
    create_named_service, create_named_slice, create_service, create_slice, delete_service,
    http_get, privileged, run_in, sock, start_proxy, update_slice, wait_until,
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

#[test]
fn external_ips_reach_the_service_and_a_shared_one_goes_to_the_older_service() -> anyhow::Result<()>
{
    if !privileged() {
        return Ok(());
    }
    let net = Node::new(&["pod-a", "pod-b", "pod-c", "client"])?;
    let (a, b, c) = (
        net.pod("pod-a").ip,
        net.pod("pod-b").ip,
        net.pod("pod-c").ip,
    );
    let client_ns = net.pod("client").netns.path.clone();
    // The outside client reaches the external address through the node,
    // as a router in front of the cluster would send it.
    net.outside
        .ip(&["route", "add", "10.99.0.0/24", "via", "192.168.77.1"])?;
    let external = sock(std::net::Ipv4Addr::new(10, 99, 0, 1), 80);
    run_in(&net.node.path, || async {
        let api = api_server().await?;
        let (metrics, proxy) = start_proxy(api.client.clone(), &net.node)?;
        create_service(&api.client, json!({"externalIPs": ["10.99.0.1"]})).await?;
        create_slice(&api.client, &[(a, true), (b, true)]).await?;
        wait_until("external IP rules", SYNC, || {
            let t = net.node.nft_table();
            t.contains("10.99.0.1 . tcp . 80") && t.contains(&format!("dnat to {b}:"))
        })
        .await?;
        for (who, ns) in [("outside", &net.outside.path), ("client pod", &client_ns)] {
            let seen = answers(ns, external, 30)
                .await
                .with_context(|| who.to_string())?;
            eprintln!("{who} -> {external}: {seen:?}");
            ensure!(seen.len() == 2, "{who} reached {seen:?}, not both backends");
        }

        // A second, younger service lists the same address and port. Both
        // cannot have it (one nft transaction with both would fail and
        // leave every service unsynced): the older keeps it, and the
        // younger's own cluster IP works.
        create_named_service(
            &api.client,
            "web2",
            json!({"clusterIP": "10.43.0.51", "externalIPs": ["10.99.0.1"],
                "ports": [{"name": "http", "port": 80, "targetPort": BACKEND_PORT}]}),
        )
        .await?;
        create_named_slice(&api.client, "web2", &[(c, true)]).await?;
        wait_until("web2's rules", SYNC, || {
            net.node.nft_table().contains(&format!("dnat to {c}:"))
        })
        .await?;
        let seen = answers(
            &client_ns,
            sock(std::net::Ipv4Addr::new(10, 43, 0, 51), 80),
            5,
        )
        .await?;
        ensure!(
            seen.keys().collect::<Vec<_>>() == vec!["pod-c"],
            "web2: {seen:?}"
        );
        let seen = answers(&net.outside.path, external, 20).await?;
        ensure!(
            !seen.contains_key("pod-c") && seen.len() == 2,
            "the shared address left the older service: {seen:?}"
        );
        ensure!(metrics.errors() == 0, "{} failed syncs", metrics.errors());

        // The older one goes: the younger takes the address over.
        delete_service(&api.client).await?;
        wait_until("web's rules gone", SYNC, || {
            !net.node.nft_table().contains("default/web/")
        })
        .await?;
        let seen = answers(&net.outside.path, external, 5).await?;
        ensure!(
            seen.keys().collect::<Vec<_>>() == vec!["pod-c"],
            "after the owner went: {seen:?}"
        );
        ensure!(metrics.errors() == 0, "{} failed syncs", metrics.errors());
        ensure!(!proxy.is_finished(), "proxy stopped: {:?}", proxy);
        Ok(())
    })
}

#[test]
fn external_traffic_policy_local_without_a_local_endpoint_serves_pods_and_drops_outside_clients()
-> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let net = Node::new(&["pod-a", "client"])?;
    let a = net.pod("pod-a").ip;
    let client_ns = net.pod("client").netns.path.clone();
    net.outside
        .ip(&["route", "add", "10.99.0.0/24", "via", "192.168.77.1"])?;
    let external = sock(std::net::Ipv4Addr::new(10, 99, 0, 1), 80);
    run_in(&net.node.path, || async {
        let api = api_server().await?;
        let (metrics, _proxy) = start_proxy(api.client.clone(), &net.node)?;
        create_service(
            &api.client,
            json!({"type": "NodePort", "externalTrafficPolicy": "Local",
                "externalIPs": ["10.99.0.1"],
                "ports": [{"name": "http", "port": 80, "targetPort": BACKEND_PORT,
                    "protocol": "TCP", "nodePort": 30081}]}),
        )
        .await?;
        // The only endpoint runs on another node.
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(json!({
                "metadata": {"name": "web-1", "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": BACKEND_PORT, "protocol": "TCP"}],
                "endpoints": [{"addresses": [a.to_string()], "nodeName": "node-b",
                    "conditions": {"ready": true}}],
            }))?;
        kube::Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(
            api.client.clone(),
            "default",
        )
        .create(&Default::default(), &slice)
        .await?;
        wait_until("rules for the remote endpoint", SYNC, || {
            net.node.nft_table().contains(&format!("dnat to {a}:"))
        })
        .await?;
        // Pods reach the service on its external IP and node port.
        for addr in [external, sock(common::NODE_IP, 30081)] {
            let seen = answers(&client_ns, addr, 3).await?;
            ensure!(seen.contains_key("pod-a"), "client pod -> {addr}: {seen:?}");
        }
        // Outside clients are dropped: their source address would be lost
        // on the way to another node.
        for addr in [external, sock(OUTSIDE_NODE_IP, 30081)] {
            let results = connect_many(&net.outside.path, addr, 1).await?;
            match &results[..] {
                [Err(e)] if e.kind() == std::io::ErrorKind::TimedOut => {}
                other => anyhow::bail!("outside -> {addr}: {other:?}, not dropped"),
            }
        }
        ensure!(metrics.errors() == 0, "{} failed syncs", metrics.errors());
        Ok(())
    })
}

#[test]
fn a_local_load_balancer_answers_its_health_check_port_with_the_local_endpoints()
-> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let net = Node::new(&["pod-a"])?;
    let a = net.pod("pod-a").ip;
    run_in(&net.node.path, || async {
        let api = api_server().await?;
        let (_metrics, proxy) = start_proxy(api.client.clone(), &net.node)?;
        create_service(
            &api.client,
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                "healthCheckNodePort": 32100,
                "ports": [{"name": "http", "port": 80, "targetPort": BACKEND_PORT,
                    "protocol": "TCP", "nodePort": 30082}]}),
        )
        .await?;
        let svc = kube::Api::<k8s_openapi::api::core::v1::Service>::namespaced(
            api.client.clone(),
            "default",
        )
        .get("web")
        .await?;
        let port = svc
            .spec
            .and_then(|s| s.health_check_node_port)
            .context("no healthCheckNodePort")?;
        let port = u16::try_from(port)?;
        let check = sock(OUTSIDE_NODE_IP, port);
        // The endpoint runs here: 200 with one local endpoint.
        create_slice(&api.client, &[(a, true)]).await?;
        let body = health_answer(&net.outside.path, check, 200).await?;
        let body: serde_json::Value = serde_json::from_str(&body)?;
        ensure!(
            body == json!({"service": {"namespace": "default", "name": "web"},
                "localEndpoints": 1, "serviceProxyHealthy": true}),
            "{body}"
        );
        // Not ready any more: 503 with none.
        update_slice(&api.client, &[(a, false)]).await?;
        let body = health_answer(&net.outside.path, check, 503).await?;
        ensure!(body.contains(r#""localEndpoints":0"#), "{body}");
        ensure!(!proxy.is_finished(), "proxy stopped: {:?}", proxy);
        Ok(())
    })
}

/// Polls the health check at `addr` from `netns` until it answers
/// `status`; returns the body.
async fn health_answer(
    netns: &std::path::Path,
    addr: std::net::SocketAddrV4,
    status: u16,
) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        let last = http_get(netns, addr).await;
        match &last {
            Ok((got, body)) if *got == status => return Ok(body.clone()),
            _ if start.elapsed() > SYNC => {
                anyhow::bail!("{addr} did not answer {status} within {SYNC:?}: {last:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
