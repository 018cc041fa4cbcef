//! The DNS server against the real API server: objects created through the
//! API are answered over UDP and TCP, changes show within a second, large
//! answers are truncated over UDP, malformed queries do not stop it, and
//! names outside the cluster domain go to an upstream the test runs.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::{Cluster, answers, query_tcp, query_udp, wait_for_answers};
use hickory_proto::op::{Edns, ResponseCode};
use hickory_proto::rr::RecordType;
use serde_json::json;

const A: RecordType = RecordType::A;

/// A ClusterIP service, a headless one with an EndpointSlice of two
/// StatefulSet-style endpoints (web-0, web-1), and an ExternalName one.
async fn create_fixture(cluster: &Cluster) -> Result<()> {
    cluster
        .create(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "api", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.77", "ports": [{"name": "http", "port": 80}]}}))
        .await?;
    cluster
        .create(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "None", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80}]}}))
        .await?;
    cluster
        .create(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1abcd", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.42.0.10"], "hostname": "web-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.0.11"], "hostname": "web-1", "conditions": {"ready": true}},
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
        )
        .await?;
    cluster
        .create(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "ext", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "db.example.com"}}))
        .await?;
    Ok(())
}

/// A resolv.conf in the cluster's temp dir naming `nameserver`, or none
/// (then nothing is forwarded anywhere: such names are SERVFAIL).
fn resolv_conf(cluster: &Cluster, nameserver: Option<&str>) -> Result<std::path::PathBuf> {
    let path = cluster.dir.path().join("resolv.conf");
    let nameserver = nameserver
        .map(|n| format!("nameserver {n}\n"))
        .unwrap_or_default();
    std::fs::write(
        &path,
        format!("search example.com\n{nameserver}options ndots:1\n"),
    )?;
    Ok(path)
}

/// Starts everything and waits until the fixture is served.
async fn serve_fixture(cluster: &mut Cluster, nameserver: Option<&str>) -> Result<SocketAddr> {
    create_fixture(cluster).await?;
    let dns = cluster.start_dns(resolv_conf(cluster, nameserver)?).await?;
    wait_for_answers(
        dns,
        "web.default.svc.cluster.local.",
        A,
        &["A 10.42.0.10", "A 10.42.0.11"],
        Duration::from_secs(20),
    )
    .await?;
    Ok(dns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_endpoints_and_pods_resolve_like_coredns() -> Result<()> {
    let mut cluster = Cluster::start().await?;
    // No upstream in this test: the machine's port 53 is not ours to use.
    let dns = serve_fixture(&mut cluster, None).await?;

    let got = query_udp(dns, "api.default.svc.cluster.local.", A).await?;
    assert_eq!(got.metadata.response_code, ResponseCode::NoError);
    assert!(
        got.metadata.authoritative,
        "cluster answers are authoritative"
    );
    assert_eq!(answers(&got), ["A 10.43.0.77"], "cluster ip");
    assert_eq!(got.answers[0].ttl, 5, "ttl");

    let mut headless = answers(&query_udp(dns, "web.default.svc.cluster.local.", A).await?);
    headless.sort();
    assert_eq!(headless, ["A 10.42.0.10", "A 10.42.0.11"], "headless");

    let got = query_udp(dns, "web-1.web.default.svc.cluster.local.", A).await?;
    assert_eq!(answers(&got), ["A 10.42.0.11"], "endpoint hostname");

    let got = query_udp(
        dns,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await?;
    let mut srv = answers(&got);
    srv.sort();
    assert_eq!(
        srv,
        [
            "SRV 0 50 8080 web-0.web.default.svc.cluster.local.",
            "SRV 0 50 8080 web-1.web.default.svc.cluster.local.",
        ],
        "headless srv"
    );
    assert_eq!(
        got.additionals.len(),
        2,
        "srv targets' addresses as additionals"
    );

    let got = query_udp(
        dns,
        "_http._tcp.api.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await?;
    assert_eq!(
        answers(&got),
        ["SRV 0 100 80 api.default.svc.cluster.local."],
        "cluster ip srv"
    );

    let got = query_udp(dns, "ext.default.svc.cluster.local.", RecordType::CNAME).await?;
    assert_eq!(answers(&got), ["CNAME db.example.com."], "external name");

    let got = query_udp(dns, "10-42-3-4.default.pod.cluster.local.", A).await?;
    assert_eq!(answers(&got), ["A 10.42.3.4"], "pod");

    let got = query_udp(dns, "77.0.43.10.in-addr.arpa.", RecordType::PTR).await?;
    assert_eq!(answers(&got), ["PTR api.default.svc.cluster.local."], "ptr");

    let got = query_udp(dns, "nope.default.svc.cluster.local.", A).await?;
    assert_eq!(
        got.metadata.response_code,
        ResponseCode::NXDomain,
        "missing"
    );
    assert!(got.answers.is_empty());
    assert_eq!(got.authorities.len(), 1, "soa in authority");
    assert_eq!(got.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(got.authorities[0].name.to_ascii(), "cluster.local.");

    let got = query_tcp(dns, "web-0.web.default.svc.cluster.local.", A).await?;
    assert_eq!(answers(&got), ["A 10.42.0.10"], "over tcp");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_endpoint_disappears_within_a_second() -> Result<()> {
    let mut cluster = Cluster::start().await?;
    let dns = serve_fixture(&mut cluster, None).await?;

    let slices: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        kube::Api::namespaced(cluster.client.clone(), "default");
    let patch = json!({"endpoints": [
        {"addresses": ["10.42.0.10"], "hostname": "web-0", "conditions": {"ready": true}},
    ]});
    slices
        .patch(
            "web-1abcd",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    let took = wait_for_answers(
        dns,
        "web.default.svc.cluster.local.",
        A,
        &["A 10.42.0.10"],
        Duration::from_secs(1),
    )
    .await?;
    eprintln!("endpoint removal served after {took:?}");
    let got = query_udp(dns, "web-1.web.default.svc.cluster.local.", A).await?;
    assert_eq!(got.metadata.response_code, ResponseCode::NXDomain);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_are_truncated_over_udp_and_complete_over_tcp() -> Result<()> {
    let mut cluster = Cluster::start().await?;
    let dns = serve_fixture(&mut cluster, None).await?;
    let endpoints: Vec<_> = (1..=100)
        .map(|i| json!({"addresses": [format!("10.42.1.{i}")]}))
        .collect();
    cluster
        .create(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "big", "namespace": "default"},
            "spec": {"clusterIP": "None"}}))
        .await?;
    cluster
        .create(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "big-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "big"}},
            "addressType": "IPv4", "endpoints": endpoints}),
        )
        .await?;
    let name = "big.default.svc.cluster.local.";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let full = loop {
        let got = query_tcp(dns, name, A).await?;
        if got.answers.len() == 100 || tokio::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(full.answers.len(), 100, "tcp carries all 100 addresses");
    assert!(!full.metadata.truncation);

    let got = query_udp(dns, name, A).await?;
    assert!(
        got.metadata.truncation,
        "udp without edns is cut at 512 bytes"
    );
    assert!(got.answers.len() < 100);

    let mut large = common::query_message(name, A)?;
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    large.set_edns(edns);
    let got = common::exchange_udp(dns, &large).await?;
    assert!(!got.metadata.truncation, "edns 4096 fits 100 addresses");
    assert_eq!(got.answers.len(), 100);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queries_get_formerr_and_serving_goes_on() -> Result<()> {
    let mut cluster = Cluster::start().await?;
    let dns = serve_fixture(&mut cluster, None).await?;
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;

    // A header claiming one question, followed by garbage.
    let mut garbage = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    garbage.extend_from_slice(&[0xff; 7]);
    socket.send_to(&garbage, dns).await?;
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
        .await
        .context("no answer to a malformed query")??;
    let got = hickory_proto::op::Message::from_vec(&buf[..n])?;
    assert_eq!(got.metadata.id, 0x1234);
    assert_eq!(got.metadata.response_code, ResponseCode::FormErr);

    // Shorter than a header: dropped. Two questions: FORMERR.
    socket.send_to(&[1, 2, 3], dns).await?;
    let mut two = common::query_message("api.default.svc.cluster.local.", A)?;
    two.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::from_ascii("web.default.svc.cluster.local.")?,
        A,
    ));
    let got = common::exchange_udp(dns, &two).await?;
    assert_eq!(got.metadata.response_code, ResponseCode::FormErr);

    let got = query_udp(dns, "api.default.svc.cluster.local.", A).await?;
    ensure!(answers(&got) == ["A 10.43.0.77"], "still serving: {got:?}");
    Ok(())
}

/// Forwarding needs an upstream on port 53 (resolv.conf has no ports), so
/// this test runs wholly inside its own network namespace, where the fake
/// upstream owns 127.0.0.1:53.
#[test]
fn names_outside_the_cluster_domain_are_forwarded_upstream() -> Result<()> {
    if !common::privileged() {
        return Ok(());
    }
    let netns = common::Netns::new("fwd")?;
    common::run_in(&netns.path, || async {
        let upstream = common::fake_upstream(SocketAddr::from((Ipv4Addr::LOCALHOST, 53))).await?;
        let mut cluster = Cluster::start().await?;
        let dns = serve_fixture(&mut cluster, Some("127.0.0.1")).await?;

        let got = query_udp(dns, "www.example.com.", A).await?;
        assert_eq!(got.metadata.response_code, ResponseCode::NoError);
        assert!(
            !got.metadata.authoritative,
            "forwarded answers are not ours"
        );
        assert_eq!(answers(&got), ["A 192.0.2.1"], "forwarded over udp");

        let got = query_tcp(dns, "www.example.com.", A).await?;
        assert_eq!(answers(&got), ["A 192.0.2.1"], "forwarded for a tcp client");

        let got = query_udp(dns, "missing.example.com.", A).await?;
        assert_eq!(
            got.metadata.response_code,
            ResponseCode::NXDomain,
            "upstream nxdomain"
        );

        let got = query_udp(dns, "ext.default.svc.cluster.local.", A).await?;
        assert_eq!(
            answers(&got),
            ["CNAME db.example.com.", "A 192.0.2.1"],
            "external name followed upstream"
        );

        // The node's resolv.conf changes: the next query uses the new list.
        std::fs::write(
            cluster.dir.path().join("resolv.conf"),
            "nameserver 127.0.0.2\n",
        )?;
        let got = query_udp(dns, "www.example.com.", A).await?;
        assert_eq!(
            got.metadata.response_code,
            ResponseCode::ServFail,
            "no upstream answers: servfail"
        );
        upstream.abort();
        Ok(())
    })
}
