use super::*;
use crate::model::{Protocol, SlicePort};

fn config() -> RuleConfig {
    RuleConfig {
        node_name: "node-a".into(),
        cluster_cidr: "10.42.0.0/16".parse().expect("cidr"),
        service_cidr: "10.43.0.0/16".parse().expect("cidr"),
        nodeport_addresses: Vec::new(),
    }
}

fn name() -> ServiceName {
    ServiceName::new("default", "web")
}

fn service() -> ServiceInfo {
    ServiceInfo {
        cluster_ip: Some("10.43.0.50".parse().expect("ip")),
        ports: vec![ServicePortInfo {
            name: "http".into(),
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
    }
}

fn endpoint(ip: &str, ready: bool, node: &str) -> EndpointInfo {
    EndpointInfo {
        ip: ip.parse().expect("ip"),
        ready,
        serving: ready,
        terminating: false,
        node_name: Some(node.into()),
    }
}

fn slice(endpoints: Vec<EndpointInfo>) -> SliceInfo {
    SliceInfo {
        ports: vec![SlicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        }],
        endpoints,
    }
}

fn two_endpoints() -> SliceInfo {
    slice(vec![
        endpoint("10.42.0.3", true, "node-b"),
        endpoint("10.42.0.2", true, "node-a"),
    ])
}

/// The script that creates `service` from nothing.
fn creation(service: &ServiceInfo, slices: &[SliceInfo]) -> String {
    let refs: Vec<&SliceInfo> = slices.iter().collect();
    let rules = service_rules(&name(), service, &refs, &config());
    let mut script = Script::default();
    script.diff_service(None, Some(&rules), &mut HairpinRefs::default());
    script.render()
}

/// Hairpin counts as they are once `services` were written.
fn written(services: &[&ServiceRules]) -> HairpinRefs {
    let mut refs = HairpinRefs::default();
    for rules in services {
        for ip in &rules.hairpin {
            refs.acquire(*ip);
        }
    }
    refs
}

#[track_caller]
fn check(got: String, want: &str) {
    assert_eq!(got, want, "\n--- got ---\n{got}\n--- want ---\n{want}");
}

#[test]
fn cluster_ip_with_two_endpoints_picks_one_at_random_and_masquerades_outside_traffic() {
    check(
        creation(&service(), &[two_endpoints()]),
        "\
add chain ip skiff-proxy service-default/web/tcp/80
add rule ip skiff-proxy service-default/web/tcp/80 ip daddr 10.43.0.50 tcp dport 80 ip saddr != 10.42.0.0/16 jump mark-for-masquerade
add rule ip skiff-proxy service-default/web/tcp/80 numgen random mod 2 == 0 meta l4proto tcp dnat to 10.42.0.2:8080
add rule ip skiff-proxy service-default/web/tcp/80 meta l4proto tcp dnat to 10.42.0.3:8080
add element ip skiff-proxy cluster-ips { 10.43.0.50 }
add element ip skiff-proxy service-ips { 10.43.0.50 . tcp . 80 : goto service-default/web/tcp/80 }
add element ip skiff-proxy hairpin-endpoints { 10.42.0.2 . 10.42.0.2 }
add element ip skiff-proxy hairpin-endpoints { 10.42.0.3 . 10.42.0.3 }
",
    );
}

#[test]
fn hairpin_traffic_from_an_endpoint_to_itself_is_marked_for_masquerade() {
    let base = base_commands(&config(), false);
    assert!(
        base.contains("add set ip skiff-proxy hairpin-endpoints { type ipv4_addr . ipv4_addr; }\n"),
        "{base}"
    );
    assert!(
        base.contains("add rule ip skiff-proxy masquerading ct status dnat ip saddr . ip daddr @hairpin-endpoints meta mark set meta mark | 0x00004000\nadd rule ip skiff-proxy masquerading meta mark & 0x00004000 == 0 return\n"),
        "{base}"
    );
}

#[test]
fn a_hairpin_element_shared_by_two_services_lives_until_the_last_one_goes() {
    let web = rules_for(&[two_endpoints()]);
    let other_name = ServiceName::new("default", "other");
    let mut other_svc = service();
    other_svc.cluster_ip = Some("10.43.0.51".parse().expect("ip"));
    let slices = [slice(vec![endpoint("10.42.0.2", true, "node-a")])];
    let slices: Vec<&SliceInfo> = slices.iter().collect();
    let other = service_rules(&other_name, &other_svc, &slices, &config());
    let mut refs = HairpinRefs::default();

    let mut script = Script::default();
    script.diff_service(None, Some(&web), &mut refs);
    script.diff_service(None, Some(&other), &mut refs);
    let got = script.render();
    assert_eq!(
        got.matches("add element ip skiff-proxy hairpin-endpoints { 10.42.0.2 . 10.42.0.2 }")
            .count(),
        1,
        "{got}"
    );
    assert_eq!(refs.len(), 2);

    let mut script = Script::default();
    script.diff_service(Some(&web), None, &mut refs);
    let got = script.render();
    assert!(
        got.contains("delete element ip skiff-proxy hairpin-endpoints { 10.42.0.3 . 10.42.0.3 }"),
        "{got}"
    );
    assert!(
        !got.contains("10.42.0.2 . 10.42.0.2"),
        "still used by other: {got}"
    );

    let mut script = Script::default();
    script.diff_service(Some(&other), None, &mut refs);
    let got = script.render();
    assert!(
        got.contains("delete element ip skiff-proxy hairpin-endpoints { 10.42.0.2 . 10.42.0.2 }"),
        "{got}"
    );
    assert!(refs.is_empty());
}

#[test]
fn node_port_enters_through_an_external_chain_that_masquerades() {
    let mut svc = service();
    svc.ports[0].node_port = Some(30080);
    check(
        creation(&svc, &[slice(vec![endpoint("10.42.0.2", true, "node-a")])]),
        "\
add chain ip skiff-proxy external-default/web/tcp/80
add chain ip skiff-proxy service-default/web/tcp/80
add rule ip skiff-proxy external-default/web/tcp/80 jump mark-for-masquerade
add rule ip skiff-proxy external-default/web/tcp/80 goto service-default/web/tcp/80
add rule ip skiff-proxy service-default/web/tcp/80 ip daddr 10.43.0.50 tcp dport 80 ip saddr != 10.42.0.0/16 jump mark-for-masquerade
add rule ip skiff-proxy service-default/web/tcp/80 meta l4proto tcp dnat to 10.42.0.2:8080
add element ip skiff-proxy cluster-ips { 10.43.0.50 }
add element ip skiff-proxy service-ips { 10.43.0.50 . tcp . 80 : goto service-default/web/tcp/80 }
add element ip skiff-proxy service-nodeports { tcp . 30080 : goto external-default/web/tcp/80 }
add element ip skiff-proxy hairpin-endpoints { 10.42.0.2 . 10.42.0.2 }
",
    );
}

#[test]
fn service_without_ready_endpoints_is_rejected_not_dropped() {
    let mut svc = service();
    svc.ports[0].node_port = Some(30080);
    let cases = [
        ("no slices", vec![]),
        ("empty slice", vec![slice(vec![])]),
        (
            "only unready endpoints",
            vec![slice(vec![endpoint("10.42.0.2", false, "node-a")])],
        ),
    ];
    for (case, slices) in cases {
        assert_eq!(
            creation(&svc, &slices),
            "\
add element ip skiff-proxy cluster-ips { 10.43.0.50 }
add element ip skiff-proxy no-endpoint-nodeports { tcp . 30080 : goto reject-chain }
add element ip skiff-proxy no-endpoint-services { 10.43.0.50 . tcp . 80 : goto reject-chain }
",
            "{case}"
        );
    }
}

#[test]
fn serving_terminating_endpoints_are_used_only_when_none_is_ready() {
    let terminating = EndpointInfo {
        serving: true,
        terminating: true,
        ..endpoint("10.42.0.9", false, "node-a")
    };
    let only_terminating = creation(&service(), &[slice(vec![terminating.clone()])]);
    assert!(
        only_terminating.contains("dnat to 10.42.0.9:8080"),
        "{only_terminating}"
    );
    let with_ready = creation(
        &service(),
        &[slice(vec![
            terminating,
            endpoint("10.42.0.2", true, "node-b"),
        ])],
    );
    assert!(!with_ready.contains("10.42.0.9"), "{with_ready}");
}

#[test]
fn client_ip_affinity_goes_back_to_the_remembered_endpoint() {
    let mut svc = service();
    svc.affinity_timeout = Some(60);
    check(
        creation(&svc, &[two_endpoints()]),
        "\
add set ip skiff-proxy affinity-default/web/tcp/80__10.42.0.2/8080 { type ipv4_addr; flags dynamic,timeout; }
add set ip skiff-proxy affinity-default/web/tcp/80__10.42.0.3/8080 { type ipv4_addr; flags dynamic,timeout; }
add chain ip skiff-proxy service-default/web/tcp/80
add rule ip skiff-proxy service-default/web/tcp/80 ip daddr 10.43.0.50 tcp dport 80 ip saddr != 10.42.0.0/16 jump mark-for-masquerade
add rule ip skiff-proxy service-default/web/tcp/80 ip saddr @affinity-default/web/tcp/80__10.42.0.2/8080 meta l4proto tcp update @affinity-default/web/tcp/80__10.42.0.2/8080 { ip saddr timeout 60s } dnat to 10.42.0.2:8080
add rule ip skiff-proxy service-default/web/tcp/80 ip saddr @affinity-default/web/tcp/80__10.42.0.3/8080 meta l4proto tcp update @affinity-default/web/tcp/80__10.42.0.3/8080 { ip saddr timeout 60s } dnat to 10.42.0.3:8080
add rule ip skiff-proxy service-default/web/tcp/80 numgen random mod 2 == 0 meta l4proto tcp update @affinity-default/web/tcp/80__10.42.0.2/8080 { ip saddr timeout 60s } dnat to 10.42.0.2:8080
add rule ip skiff-proxy service-default/web/tcp/80 meta l4proto tcp update @affinity-default/web/tcp/80__10.42.0.3/8080 { ip saddr timeout 60s } dnat to 10.42.0.3:8080
add element ip skiff-proxy cluster-ips { 10.43.0.50 }
add element ip skiff-proxy service-ips { 10.43.0.50 . tcp . 80 : goto service-default/web/tcp/80 }
add element ip skiff-proxy hairpin-endpoints { 10.42.0.2 . 10.42.0.2 }
add element ip skiff-proxy hairpin-endpoints { 10.42.0.3 . 10.42.0.3 }
",
    );
}

#[test]
fn external_traffic_policy_local_sends_node_port_traffic_only_to_local_endpoints() {
    let mut svc = service();
    svc.ports[0].node_port = Some(30080);
    svc.external_local = true;
    check(
        creation(&svc, &[two_endpoints()]),
        "\
add chain ip skiff-proxy external-default/web/tcp/80
add chain ip skiff-proxy local-default/web/tcp/80
add chain ip skiff-proxy service-default/web/tcp/80
add rule ip skiff-proxy external-default/web/tcp/80 ip saddr 10.42.0.0/16 goto service-default/web/tcp/80
add rule ip skiff-proxy external-default/web/tcp/80 fib saddr type local jump mark-for-masquerade
add rule ip skiff-proxy external-default/web/tcp/80 fib saddr type local goto service-default/web/tcp/80
add rule ip skiff-proxy external-default/web/tcp/80 goto local-default/web/tcp/80
add rule ip skiff-proxy local-default/web/tcp/80 ip daddr 10.43.0.50 tcp dport 80 ip saddr != 10.42.0.0/16 jump mark-for-masquerade
add rule ip skiff-proxy local-default/web/tcp/80 meta l4proto tcp dnat to 10.42.0.2:8080
add rule ip skiff-proxy service-default/web/tcp/80 ip daddr 10.43.0.50 tcp dport 80 ip saddr != 10.42.0.0/16 jump mark-for-masquerade
add rule ip skiff-proxy service-default/web/tcp/80 numgen random mod 2 == 0 meta l4proto tcp dnat to 10.42.0.2:8080
add rule ip skiff-proxy service-default/web/tcp/80 meta l4proto tcp dnat to 10.42.0.3:8080
add element ip skiff-proxy cluster-ips { 10.43.0.50 }
add element ip skiff-proxy service-ips { 10.43.0.50 . tcp . 80 : goto service-default/web/tcp/80 }
add element ip skiff-proxy service-nodeports { tcp . 30080 : goto external-default/web/tcp/80 }
add element ip skiff-proxy hairpin-endpoints { 10.42.0.2 . 10.42.0.2 }
add element ip skiff-proxy hairpin-endpoints { 10.42.0.3 . 10.42.0.3 }
",
    );
}

#[test]
fn internal_traffic_policy_local_uses_local_endpoints_and_drops_without_any() {
    let mut svc = service();
    svc.internal_local = true;
    let got = creation(&svc, &[two_endpoints()]);
    assert!(
        got.contains("service-ips { 10.43.0.50 . tcp . 80 : goto local-default/web/tcp/80 }"),
        "{got}"
    );
    assert!(got.contains("dnat to 10.42.0.2:8080"), "{got}");
    assert!(!got.contains("10.42.0.3"), "remote endpoint used: {got}");

    let remote_only = creation(&svc, &[slice(vec![endpoint("10.42.0.3", true, "node-b")])]);
    check(
        remote_only,
        "\
add element ip skiff-proxy cluster-ips { 10.43.0.50 }
add element ip skiff-proxy no-endpoint-services { 10.43.0.50 . tcp . 80 : drop }
",
    );
}

#[test]
fn endpoints_match_the_service_port_by_name_and_protocol() {
    let mut other = two_endpoints();
    other.ports[0].name = "metrics".into();
    let mut udp = slice(vec![endpoint("10.42.0.7", true, "node-a")]);
    udp.ports[0].protocol = Protocol::Udp;
    let got = creation(&service(), &[other, udp]);
    assert!(got.contains("no-endpoint-services"), "{got}");
}

fn rules_for(slices: &[SliceInfo]) -> ServiceRules {
    let refs: Vec<&SliceInfo> = slices.iter().collect();
    service_rules(&name(), &service(), &refs, &config())
}

#[test]
fn an_endpoint_going_unready_rewrites_only_the_service_chain_and_drops_its_hairpin_element() {
    let before = rules_for(&[two_endpoints()]);
    let after = rules_for(&[slice(vec![
        endpoint("10.42.0.3", false, "node-b"),
        endpoint("10.42.0.2", true, "node-a"),
    ])]);
    let mut script = Script::default();
    script.diff_service(Some(&before), Some(&after), &mut written(&[&before]));
    check(
        script.render(),
        "\
delete element ip skiff-proxy hairpin-endpoints { 10.42.0.3 . 10.42.0.3 }
flush chain ip skiff-proxy service-default/web/tcp/80
add rule ip skiff-proxy service-default/web/tcp/80 ip daddr 10.43.0.50 tcp dport 80 ip saddr != 10.42.0.0/16 jump mark-for-masquerade
add rule ip skiff-proxy service-default/web/tcp/80 meta l4proto tcp dnat to 10.42.0.2:8080
",
    );
    assert_eq!(script.services_changed, 1);
}

#[test]
fn unchanged_services_write_nothing() {
    let rules = rules_for(&[two_endpoints()]);
    let mut script = Script::default();
    script.diff_service(
        Some(&rules),
        Some(&rules.clone()),
        &mut HairpinRefs::default(),
    );
    assert!(script.is_empty());
    assert_eq!(script.render(), "");
    assert_eq!(script.services_changed, 0);
}

#[test]
fn last_endpoint_going_away_swaps_the_map_element_for_a_reject() {
    let before = rules_for(&[two_endpoints()]);
    let after = rules_for(&[]);
    let mut script = Script::default();
    script.diff_service(Some(&before), Some(&after), &mut HairpinRefs::default());
    let got = script.render();
    let delete = got
        .find("delete element ip skiff-proxy service-ips { 10.43.0.50 . tcp . 80 }")
        .expect("map element deleted");
    let reject = got
        .find("add element ip skiff-proxy no-endpoint-services { 10.43.0.50 . tcp . 80 : goto reject-chain }")
        .expect("reject added");
    let chain_gone = got
        .find("delete chain ip skiff-proxy service-default/web/tcp/80")
        .expect("chain deleted");
    assert!(delete < chain_gone && reject < chain_gone, "order:\n{got}");
}

#[test]
fn deleting_a_service_removes_every_object_it_owned() {
    let mut svc = service();
    svc.affinity_timeout = Some(60);
    svc.ports[0].node_port = Some(30080);
    let refs = [two_endpoints()];
    let refs: Vec<&SliceInfo> = refs.iter().collect();
    let rules = service_rules(&name(), &svc, &refs, &config());
    let mut script = Script::default();
    script.diff_service(Some(&rules), None, &mut written(&[&rules]));
    check(
        script.render(),
        "\
delete element ip skiff-proxy cluster-ips { 10.43.0.50 }
delete element ip skiff-proxy service-ips { 10.43.0.50 . tcp . 80 }
delete element ip skiff-proxy service-nodeports { tcp . 30080 }
delete element ip skiff-proxy hairpin-endpoints { 10.42.0.2 . 10.42.0.2 }
delete element ip skiff-proxy hairpin-endpoints { 10.42.0.3 . 10.42.0.3 }
flush chain ip skiff-proxy external-default/web/tcp/80
flush chain ip skiff-proxy service-default/web/tcp/80
delete chain ip skiff-proxy external-default/web/tcp/80
delete chain ip skiff-proxy service-default/web/tcp/80
delete set ip skiff-proxy affinity-default/web/tcp/80__10.42.0.2/8080
delete set ip skiff-proxy affinity-default/web/tcp/80__10.42.0.3/8080
",
    );
}

#[test]
fn base_table_uses_listed_node_port_addresses_when_given() {
    let mut c = config();
    let all = base_commands(&c, false);
    assert!(all.contains(
        "add rule ip skiff-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
    ));
    c.nodeport_addresses = vec!["192.168.1.10".parse().expect("ip")];
    let listed = base_commands(&c, false);
    assert!(listed.contains("add element ip skiff-proxy nodeport-ips { 192.168.1.10 }"));
    assert!(listed.contains(
        "add rule ip skiff-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"
    ));
}

#[test]
fn recreate_replaces_the_table_and_resync_flushes_it_in_place() {
    let recreate = Script::recreate(&config()).render();
    assert!(recreate.starts_with(
        "add table ip skiff-proxy\ndelete table ip skiff-proxy\nadd table ip skiff-proxy\n"
    ));
    assert!(!recreate.contains("flush"));
    let resync = Script::resync(&config()).render();
    assert!(resync.starts_with("add table ip skiff-proxy\n"));
    assert!(!resync.contains("delete table"));
    assert!(resync.contains("flush map ip skiff-proxy service-ips\n"));
    assert!(resync.contains("flush chain ip skiff-proxy services\n"));
}

#[test]
fn resync_deletes_stale_objects_but_keeps_base_and_owned_ones() {
    let rules = rules_for(&[two_endpoints()]);
    let mut existing = TableObjects::default();
    for chain in [
        "services",
        "service-default/web/tcp/80",
        "service-default/gone/tcp/80",
    ] {
        existing.chains.insert(chain.into());
    }
    existing.sets.insert(SERVICE_IPS.into());
    existing
        .sets
        .insert("affinity-default/gone/tcp/80__10.42.0.9/80".into());
    let mut script = Script::resync(&config());
    script.resync_service(&rules, &mut existing, &mut HairpinRefs::default());
    script.delete_stale(&existing);
    let got = script.render();
    assert!(got.contains("add chain ip skiff-proxy service-default/web/tcp/80\nflush chain ip skiff-proxy service-default/web/tcp/80\n"), "{got}");
    assert!(
        got.contains("delete chain ip skiff-proxy service-default/gone/tcp/80\n"),
        "{got}"
    );
    assert!(
        got.contains("delete set ip skiff-proxy affinity-default/gone/tcp/80__10.42.0.9/80\n"),
        "{got}"
    );
    assert!(
        !got.contains("delete chain ip skiff-proxy services\n"),
        "{got}"
    );
    assert!(
        !got.contains("delete set ip skiff-proxy service-ips"),
        "{got}"
    );
}

fn load_balancer(ips: &[&str]) -> ServiceInfo {
    let mut svc = service();
    svc.ports[0].node_port = Some(30080);
    svc.load_balancer_ips = ips.iter().map(|ip| ip.parse().expect("ip")).collect();
    svc
}

#[test]
fn load_balancer_ingress_with_the_service_port_enters_through_the_external_chain() {
    check(
        creation(
            &load_balancer(&["10.99.0.1"]),
            &[slice(vec![endpoint("10.42.0.2", true, "node-a")])],
        ),
        "\
add chain ip skiff-proxy external-default/web/tcp/80
add chain ip skiff-proxy service-default/web/tcp/80
add rule ip skiff-proxy external-default/web/tcp/80 jump mark-for-masquerade
add rule ip skiff-proxy external-default/web/tcp/80 goto service-default/web/tcp/80
add rule ip skiff-proxy service-default/web/tcp/80 ip daddr 10.43.0.50 tcp dport 80 ip saddr != 10.42.0.0/16 jump mark-for-masquerade
add rule ip skiff-proxy service-default/web/tcp/80 meta l4proto tcp dnat to 10.42.0.2:8080
add element ip skiff-proxy cluster-ips { 10.43.0.50 }
add element ip skiff-proxy service-ips { 10.43.0.50 . tcp . 80 : goto service-default/web/tcp/80 }
add element ip skiff-proxy service-ips { 10.99.0.1 . tcp . 80 : goto external-default/web/tcp/80 }
add element ip skiff-proxy service-nodeports { tcp . 30080 : goto external-default/web/tcp/80 }
add element ip skiff-proxy hairpin-endpoints { 10.42.0.2 . 10.42.0.2 }
",
    );
}

#[test]
fn load_balancer_ingress_without_any_usable_endpoint_is_refused() {
    let got = creation(&load_balancer(&["10.99.0.1"]), &[]);
    let want = "no-endpoint-services { 10.99.0.1 . tcp . 80 : goto reject-chain }";
    assert!(got.contains(want), "want {want} in\n{got}");
    assert!(
        got.contains("no-endpoint-nodeports { tcp . 30080 : goto reject-chain }"),
        "{got}"
    );
    assert!(
        !got.contains("service-ips { 10.99.0.1"),
        "ingress still captured\n{got}"
    );
    assert!(!got.contains("external-"), "{got}");
}

#[test]
fn external_traffic_policy_local_without_a_local_endpoint_drops_only_outside_clients() {
    let mut svc = load_balancer(&["10.99.0.1"]);
    svc.external_local = true;
    let got = creation(&svc, &[slice(vec![endpoint("10.42.0.3", true, "node-b")])]);
    // Pods and the node itself still reach the service's endpoints (as in
    // kube-proxy's iptables mode); anyone else is dropped.
    for want in [
        "service-ips { 10.99.0.1 . tcp . 80 : goto external-default/web/tcp/80 }",
        "service-nodeports { tcp . 30080 : goto external-default/web/tcp/80 }",
        "\
add rule ip skiff-proxy external-default/web/tcp/80 ip saddr 10.42.0.0/16 goto service-default/web/tcp/80
add rule ip skiff-proxy external-default/web/tcp/80 fib saddr type local jump mark-for-masquerade
add rule ip skiff-proxy external-default/web/tcp/80 fib saddr type local goto service-default/web/tcp/80
add rule ip skiff-proxy external-default/web/tcp/80 drop
",
    ] {
        assert!(got.contains(want), "want {want} in\n{got}");
    }
    assert!(!got.contains("no-endpoint"), "{got}");
    assert!(!got.contains("local-default"), "{got}");
}

#[test]
fn external_ips_are_captured_like_load_balancer_ingress_in_any_service_type() {
    let mut svc = service();
    // Listed twice, and once as the service's own cluster IP (which stays
    // internal).
    svc.external_ips = ["10.99.0.7", "10.99.0.7", "10.43.0.50"]
        .iter()
        .map(|ip| ip.parse().expect("ip"))
        .collect();
    check(
        creation(&svc, &[slice(vec![endpoint("10.42.0.2", true, "node-b")])]),
        "\
add chain ip skiff-proxy external-default/web/tcp/80
add chain ip skiff-proxy service-default/web/tcp/80
add rule ip skiff-proxy external-default/web/tcp/80 jump mark-for-masquerade
add rule ip skiff-proxy external-default/web/tcp/80 goto service-default/web/tcp/80
add rule ip skiff-proxy service-default/web/tcp/80 ip daddr 10.43.0.50 tcp dport 80 ip saddr != 10.42.0.0/16 jump mark-for-masquerade
add rule ip skiff-proxy service-default/web/tcp/80 meta l4proto tcp dnat to 10.42.0.2:8080
add element ip skiff-proxy cluster-ips { 10.43.0.50 }
add element ip skiff-proxy service-ips { 10.43.0.50 . tcp . 80 : goto service-default/web/tcp/80 }
add element ip skiff-proxy service-ips { 10.99.0.7 . tcp . 80 : goto external-default/web/tcp/80 }
add element ip skiff-proxy hairpin-endpoints { 10.42.0.2 . 10.42.0.2 }
",
    );
    // Without endpoints the external address is refused like the rest.
    let got = creation(&svc, &[]);
    assert!(
        got.contains("no-endpoint-services { 10.99.0.7 . tcp . 80 : goto reject-chain }"),
        "{got}"
    );
}

#[test]
fn load_balancer_ingress_with_external_traffic_policy_local_goes_to_local_endpoints() {
    let mut svc = load_balancer(&["10.99.0.1"]);
    svc.external_local = true;
    let got = creation(&svc, &[two_endpoints()]);
    assert!(
        got.contains("service-ips { 10.99.0.1 . tcp . 80 : goto external-default/web/tcp/80 }"),
        "{got}"
    );
    assert!(
        got.contains(
            "add rule ip skiff-proxy external-default/web/tcp/80 goto local-default/web/tcp/80"
        ),
        "{got}"
    );
}

#[test]
fn load_balancer_without_node_ports_still_captures_its_ingress() {
    let mut svc = load_balancer(&["10.99.0.1", "10.99.0.2"]);
    svc.ports[0].node_port = None;
    let got = creation(&svc, &[slice(vec![endpoint("10.42.0.2", true, "node-a")])]);
    for ip in ["10.99.0.1", "10.99.0.2"] {
        let want = format!("service-ips {{ {ip} . tcp . 80 : goto external-default/web/tcp/80 }}");
        assert!(got.contains(&want), "missing {want} in\n{got}");
    }
    assert!(
        got.contains("add chain ip skiff-proxy external-default/web/tcp/80"),
        "{got}"
    );
    assert!(!got.contains("service-nodeports"), "{got}");
}

#[test]
fn an_ingress_address_coming_and_going_changes_only_its_map_element() {
    let slices = [slice(vec![endpoint("10.42.0.2", true, "node-a")])];
    let refs: Vec<&SliceInfo> = slices.iter().collect();
    let without = service_rules(&name(), &load_balancer(&[]), &refs, &config());
    let with = service_rules(&name(), &load_balancer(&["10.99.0.1"]), &refs, &config());

    let mut script = Script::default();
    script.diff_service(Some(&without), Some(&with), &mut HairpinRefs::default());
    check(
        script.render(),
        "add element ip skiff-proxy service-ips { 10.99.0.1 . tcp . 80 : goto external-default/web/tcp/80 }\n",
    );
    let mut script = Script::default();
    script.diff_service(Some(&with), Some(&without), &mut HairpinRefs::default());
    check(
        script.render(),
        "delete element ip skiff-proxy service-ips { 10.99.0.1 . tcp . 80 }\n",
    );
}

#[test]
fn the_random_cascade_gives_every_endpoint_the_same_chance() {
    for n in 1..=7usize {
        let infos: Vec<EndpointInfo> = (0..n)
            .map(|i| EndpointInfo {
                ip: Ipv4Addr::new(10, 42, 0, 2 + i as u8),
                ready: true,
                serving: true,
                terminating: false,
                node_name: None,
            })
            .collect();
        let eps: Vec<Ep<'_>> = infos
            .iter()
            .map(|info| Ep {
                ip: info.ip,
                port: 8080,
                info,
            })
            .collect();
        let rules = pick_at_random(&eps, |ep| format!("dnat to {}", ep.ip));
        assert_eq!(rules.len(), n);
        // The chance that rule i is reached and taken, read off the text.
        let mut reach = 1.0f64;
        for (i, rule) in rules.iter().enumerate() {
            let want_target = format!("dnat to {}", eps[i].ip);
            assert!(rule.ends_with(&want_target), "{rule}");
            let taken = match rule.strip_prefix("numgen random mod ") {
                Some(rest) => {
                    let m: f64 = rest
                        .split_whitespace()
                        .next()
                        .and_then(|m| m.parse().ok())
                        .expect("modulus");
                    assert!(rest.contains(" == 0 dnat to "), "{rule}");
                    1.0 / m
                }
                None => {
                    assert_eq!(i, n - 1, "only the last rule is unconditional");
                    1.0
                }
            };
            let p = reach * taken;
            assert!((p - 1.0 / n as f64).abs() < 1e-12, "n={n} rule {i}: {p}");
            reach -= p;
        }
        assert!(reach.abs() < 1e-12, "n={n}: {reach} left over");
    }
}
