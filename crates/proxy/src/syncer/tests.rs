use std::sync::Mutex;

use super::*;
use crate::model::{EndpointInfo, Protocol, ServicePortInfo, SlicePort};
use crate::rules::TableObjects;

/// Records every script; fails the next `fail_next` applies.
#[derive(Default)]
struct FakeNft {
    scripts: Mutex<Vec<String>>,
    fail_next: Mutex<usize>,
    listed: Mutex<TableObjects>,
}

impl Nft for Arc<FakeNft> {
    async fn apply(&self, script: &str) -> Result<(), NftError> {
        let mut fail = self.fail_next.lock().expect("lock");
        if *fail > 0 {
            *fail -= 1;
            return Err(NftError::Failed {
                what: "-f -",
                netns: None,
                status: "exit status: 1".into(),
                stderr: "injected".into(),
            });
        }
        self.scripts.lock().expect("lock").push(script.to_string());
        Ok(())
    }

    async fn list(&self) -> Result<TableObjects, NftError> {
        Ok(self.listed.lock().expect("lock").clone())
    }
}

impl FakeNft {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.scripts.lock().expect("lock"))
    }
}

fn config() -> RuleConfig {
    RuleConfig {
        node_name: "node-a".into(),
        cluster_cidr: "10.42.0.0/16".parse().expect("cidr"),
        service_cidr: "10.43.0.0/16".parse().expect("cidr"),
        nodeport_addresses: Vec::new(),
    }
}

fn svc(i: u8) -> (ServiceName, ServiceInfo) {
    (
        ServiceName::new("default", format!("svc{i}")),
        ServiceInfo {
            cluster_ip: Some(std::net::Ipv4Addr::new(10, 43, 0, i)),
            ports: vec![ServicePortInfo {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
            }],
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            load_balancer_ips: Vec::new(),
            external_ips: Vec::new(),
            health_check_node_port: None,
            created: None,
        },
    )
}

fn slice(i: u8, ready: &[bool]) -> (ServiceName, SliceInfo) {
    (
        ServiceName::new("default", format!("svc{i}")),
        SliceInfo {
            ports: vec![SlicePort {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 8080,
            }],
            endpoints: ready
                .iter()
                .enumerate()
                .map(|(j, r)| EndpointInfo {
                    ip: std::net::Ipv4Addr::new(10, 42, i, j as u8 + 2),
                    ready: *r,
                    serving: *r,
                    terminating: false,
                    node_name: None,
                })
                .collect(),
        },
    )
}

fn syncer_with(n: u8) -> (Syncer<Arc<FakeNft>>, Arc<FakeNft>) {
    let fake = Arc::new(FakeNft::default());
    let mut s = Syncer::new(
        config(),
        fake.clone(),
        Arc::new(SyncMetrics::default()),
        Duration::from_secs(1),
    );
    let now = Instant::now();
    for i in 1..=n {
        let (name, info) = svc(i);
        s.set_service(name, Some(info), now);
        s.set_slice(
            "default",
            &format!("svc{i}-x"),
            Some(slice(i, &[true, true])),
            now,
        );
    }
    (s, fake)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn first_sync_replaces_the_whole_table_in_one_transaction() {
    let (mut s, fake) = syncer_with(3);
    let sample = block_on(s.sync()).expect("sync").expect("sample");
    assert!(sample.full);
    assert_eq!(sample.services, 3);
    let scripts = fake.take();
    assert_eq!(scripts.len(), 1);
    assert!(scripts[0].starts_with("add table ip skiff-proxy\ndelete table ip skiff-proxy\n"));
    for i in 1..=3 {
        assert!(scripts[0].contains(&format!(
            "add chain ip skiff-proxy service-default/svc{i}/tcp/80\n"
        )));
    }
    assert!(!s.pending());
}

#[test]
fn a_changed_endpoint_rewrites_only_its_own_service() {
    let (mut s, fake) = syncer_with(50);
    block_on(s.sync()).expect("sync");
    fake.take();

    s.set_slice(
        "default",
        "svc7-x",
        Some(slice(7, &[true, false])),
        Instant::now(),
    );
    let sample = block_on(s.sync()).expect("sync").expect("sample");
    assert!(!sample.full);
    assert_eq!(sample.services, 1);
    let scripts = fake.take();
    assert_eq!(scripts.len(), 1);
    let script = &scripts[0];
    assert!(
        script.contains("flush chain ip skiff-proxy service-default/svc7/tcp/80\n"),
        "{script}"
    );
    assert!(
        script.contains(
            "delete element ip skiff-proxy hairpin-endpoints { 10.42.7.3 . 10.42.7.3 }\n"
        ),
        "{script}"
    );
    let other_services = script
        .lines()
        .filter(|l| !l.contains("default/svc7/") && !l.contains("10.42.7.3 . 10.42.7.3"))
        .collect::<Vec<_>>();
    assert!(
        other_services.is_empty(),
        "touched others: {other_services:?}"
    );
    assert!(sample.commands <= 5, "{} commands", sample.commands);
}

#[test]
fn an_event_that_changes_nothing_writes_nothing() {
    let (mut s, fake) = syncer_with(2);
    block_on(s.sync()).expect("sync");
    fake.take();
    let (name, info) = svc(1);
    s.set_service(name, Some(info), Instant::now());
    s.set_slice(
        "default",
        "svc1-x",
        Some(slice(1, &[true, true])),
        Instant::now(),
    );
    assert!(!s.pending());
    assert_eq!(block_on(s.sync()).expect("sync"), None);
    assert!(fake.take().is_empty());
}

#[test]
fn a_failed_sync_is_followed_by_a_full_resync_that_deletes_stale_objects() {
    let (mut s, fake) = syncer_with(2);
    block_on(s.sync()).expect("sync");
    fake.take();

    *fake.fail_next.lock().expect("lock") = 1;
    s.set_service(svc(2).0, None, Instant::now());
    assert!(block_on(s.sync()).is_err());
    assert!(s.pending());
    assert_eq!(s.metrics().errors(), 1);

    let mut listed = TableObjects::default();
    listed.chains.insert("service-default/svc2/tcp/80".into());
    listed.chains.insert("service-default/svc1/tcp/80".into());
    *fake.listed.lock().expect("lock") = listed;
    let sample = block_on(s.sync()).expect("resync").expect("sample");
    assert!(sample.full);
    let scripts = fake.take();
    assert_eq!(scripts.len(), 1);
    assert!(!scripts[0].contains("delete table"), "{}", scripts[0]);
    assert!(scripts[0].contains("delete chain ip skiff-proxy service-default/svc2/tcp/80\n"));
    assert!(scripts[0].contains("flush chain ip skiff-proxy service-default/svc1/tcp/80\n"));
}

#[test]
fn a_failed_resync_falls_back_to_replacing_the_table() {
    let (mut s, fake) = syncer_with(1);
    block_on(s.sync()).expect("sync");
    s.request_full(FullSync::Resync);
    *fake.fail_next.lock().expect("lock") = 1;
    assert!(block_on(s.sync()).is_err());
    fake.take();
    block_on(s.sync()).expect("sync");
    let scripts = fake.take();
    assert!(
        scripts[0].contains("delete table ip skiff-proxy"),
        "{}",
        scripts[0]
    );
}

#[test]
fn a_slice_moving_to_another_service_updates_both() {
    let (mut s, fake) = syncer_with(2);
    block_on(s.sync()).expect("sync");
    fake.take();
    // svc1's slice now claims to belong to svc2.
    let (_, info) = slice(1, &[true]);
    s.set_slice("default", "svc1-x", Some((svc(2).0, info)), Instant::now());
    let sample = block_on(s.sync()).expect("sync").expect("sample");
    assert_eq!(sample.services, 2);
    let script = fake.take().join("");
    assert!(
        script.contains("no-endpoint-services { 10.43.0.1 . tcp . 80 : goto reject-chain }"),
        "{script}"
    );
    assert!(
        script.contains("numgen random mod 3 == 0 meta l4proto tcp dnat to"),
        "{script}"
    );
}

#[test]
fn relisting_forgets_services_and_slices_that_are_gone() {
    let (mut s, fake) = syncer_with(3);
    block_on(s.sync()).expect("sync");
    fake.take();
    let now = Instant::now();
    s.replace_services(vec![svc(1), svc(2)], now);
    s.replace_slices(
        vec![(
            ("default".into(), "svc1-x".into()),
            Some(slice(1, &[true, true])),
        )],
        now,
    );
    block_on(s.sync()).expect("sync");
    let script = fake.take().join("");
    assert!(
        script.contains("delete chain ip skiff-proxy service-default/svc3/tcp/80\n"),
        "{script}"
    );
    assert!(
        script.contains("no-endpoint-services { 10.43.0.2 . tcp . 80 : goto reject-chain }"),
        "{script}"
    );
    assert!(!script.contains("svc1/"), "{script}");
    assert_eq!(s.service_count(), 2);
}

#[test]
fn latency_is_measured_from_the_first_event_of_a_batch() {
    let (mut s, _fake) = syncer_with(1);
    block_on(s.sync()).expect("sync");
    let first = Instant::now() - Duration::from_millis(300);
    s.set_slice("default", "svc1-x", Some(slice(1, &[true])), first);
    s.set_slice(
        "default",
        "svc1-x",
        Some(slice(1, &[false])),
        Instant::now(),
    );
    let sample = block_on(s.sync()).expect("sync").expect("sample");
    assert!(
        sample.latency >= Duration::from_millis(300),
        "{:?}",
        sample.latency
    );
    assert_eq!(s.metrics().p50(), Some(sample.latency));
}

/// Lines of `script` that add or delete the element with `key`.
fn element_lines<'a>(script: &'a str, key: &str) -> Vec<&'a str> {
    script
        .lines()
        .filter(|l| l.contains("element") && l.contains(&format!("{{ {key}")))
        .collect()
}

#[test]
fn two_services_with_one_external_ip_and_port_give_it_to_the_older_until_it_goes() {
    let (mut s, fake) = syncer_with(3);
    let now = Instant::now();
    for (i, created) in [(1, 300), (2, 100)] {
        let (name, mut info) = svc(i);
        info.external_ips = vec![std::net::Ipv4Addr::new(10, 99, 0, 1)];
        info.created = Some(created);
        s.set_service(name, Some(info), now);
    }
    // svc3 has no endpoints and lists svc2's cluster IP as an external IP.
    let (name3, mut info3) = svc(3);
    info3.external_ips = vec![std::net::Ipv4Addr::new(10, 43, 0, 2)];
    info3.created = Some(500);
    s.set_service(name3.clone(), Some(info3), now);
    s.set_slice("default", "svc3-x", None, now);
    block_on(s.sync()).expect("sync");
    let script = fake.take().remove(0);
    // One element per key (two would fail the transaction), the older
    // service's.
    assert_eq!(
        element_lines(&script, "10.99.0.1 . tcp . 80"),
        vec![
            "add element ip skiff-proxy service-ips { 10.99.0.1 . tcp . 80 : goto external-default/svc2/tcp/80 }"
        ],
        "{script}"
    );
    assert_eq!(
        element_lines(&script, "10.43.0.2 . tcp . 80"),
        vec![
            "add element ip skiff-proxy service-ips { 10.43.0.2 . tcp . 80 : goto service-default/svc2/tcp/80 }"
        ],
        "{script}"
    );

    // The owner goes: the younger service takes the address over in the
    // same incremental transaction that deletes the owner's element.
    s.set_service(ServiceName::new("default", "svc2"), None, Instant::now());
    let sample = block_on(s.sync()).expect("sync").expect("sample");
    assert!(!sample.full);
    let script = fake.take().remove(0);
    assert_eq!(
        element_lines(&script, "10.99.0.1 . tcp . 80"),
        vec![
            "delete element ip skiff-proxy service-ips { 10.99.0.1 . tcp . 80 }",
            "add element ip skiff-proxy service-ips { 10.99.0.1 . tcp . 80 : goto external-default/svc1/tcp/80 }",
        ],
        "{script}"
    );
    // svc3 now owns svc2's old cluster IP and port, and has no endpoints.
    assert_eq!(
        element_lines(&script, "10.43.0.2 . tcp . 80"),
        vec![
            "delete element ip skiff-proxy service-ips { 10.43.0.2 . tcp . 80 }",
            "add element ip skiff-proxy no-endpoint-services { 10.43.0.2 . tcp . 80 : goto reject-chain }",
        ],
        "{script}"
    );

    // A full resync gives the keys out the same way.
    s.request_full(FullSync::Recreate);
    block_on(s.sync()).expect("sync");
    let script = fake.take().remove(0);
    assert_eq!(element_lines(&script, "10.99.0.1 . tcp . 80").len(), 1);
    assert_eq!(element_lines(&script, "10.43.0.2 . tcp . 80").len(), 1);
}

#[test]
fn health_checks_count_the_ready_endpoints_on_this_node() {
    let (mut s, _fake) = syncer_with(2);
    let now = Instant::now();
    let (name, mut info) = svc(1);
    info.health_check_node_port = Some(32000);
    s.set_service(name.clone(), Some(info), now);
    let (_, mut slice_info) = slice(1, &[true, true, false]);
    // Two ready endpoints here, one of them listed twice (two slices),
    // one unready here, and one ready on another node.
    for (e, node) in slice_info
        .endpoints
        .iter_mut()
        .zip(["node-a", "node-a", "node-a"])
    {
        e.node_name = Some(node.into());
    }
    let mut other = slice_info.clone();
    other.endpoints[0].node_name = Some("node-b".into());
    other.endpoints[0].ip = std::net::Ipv4Addr::new(10, 42, 9, 9);
    s.set_slice("default", "svc1-x", Some((name.clone(), slice_info)), now);
    s.set_slice("default", "svc1-y", Some((name.clone(), other)), now);
    let checks = s.health_checks();
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(
        checks.get(&32000),
        Some(&HealthCheck {
            service: name,
            local_endpoints: 2
        })
    );
}
