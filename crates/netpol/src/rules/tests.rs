use serde_json::{Value, json};

use super::*;
use crate::model::{NamedPort, PodInfo, Policy};

fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: Value) -> PodInfo {
    PodInfo {
        namespace: ns.into(),
        name: name.into(),
        labels: serde_json::from_value(labels).expect("labels"),
        ip: ip.parse().expect("ip"),
        node: node.into(),
        ports: vec![NamedPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: if name.starts_with("db") { 5432 } else { 8080 },
        }],
    }
}

fn policy(ns: &str, name: &str, spec: Value) -> Policy {
    Policy::from_api(
        &serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }))
        .expect("policy"),
    )
}

/// Pods: web (node n1) and db-0 in `shop` (labels team=a); client on n2;
/// other in `lab` (team=b), on n2.
fn state(policies: Vec<Policy>) -> State {
    let mut s = State::default();
    for p in [
        pod("shop", "web", "n1", "10.42.1.2", json!({"app": "web"})),
        pod("shop", "db-0", "n1", "10.42.1.3", json!({"app": "db"})),
        pod(
            "shop",
            "client",
            "n2",
            "10.42.2.2",
            json!({"app": "client"}),
        ),
        pod("lab", "other", "n2", "10.42.2.3", json!({"app": "client"})),
    ] {
        s.pods.insert((p.namespace.clone(), p.name.clone()), p);
    }
    for (ns, team) in [("shop", "a"), ("lab", "b")] {
        s.namespaces.insert(
            ns.into(),
            [
                ("team".to_string(), team.to_string()),
                ("kubernetes.io/metadata.name".to_string(), ns.to_string()),
            ]
            .into(),
        );
    }
    for p in policies {
        s.policies.insert((p.namespace.clone(), p.name.clone()), p);
    }
    s
}

fn allow_lines(table: &Table, chain: &str) -> Vec<String> {
    table
        .chains
        .iter()
        .find(|c| c.name == chain)
        .unwrap_or_else(|| panic!("no chain {chain} in {table:?}"))
        .allow
        .clone()
}

#[test]
fn a_node_without_isolated_pods_has_no_table() {
    let table = Table::build(&state(vec![]), "n1");
    assert_eq!(table, Table::default());
    assert_eq!(
        table.script(),
        "add table ip skiff-netpol\ndelete table ip skiff-netpol\n"
    );
    // A policy about pods of another node leaves this one alone.
    let s = state(vec![policy(
        "shop",
        "deny",
        json!({"podSelector": {"matchLabels": {"app": "client"}}}),
    )]);
    assert_eq!(Table::build(&s, "n1"), Table::default());
}

#[test]
fn deny_all_ingress_isolates_every_local_pod_of_the_namespace_but_lets_it_reach_itself() {
    let s = state(vec![policy("shop", "deny", json!({"podSelector": {}}))]);
    let table = Table::build(&s, "n1");
    let names: Vec<&str> = table.chains.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["in/shop/db-0", "in/shop/web"]);
    assert_eq!(
        allow_lines(&table, "in/shop/web"),
        vec!["ip saddr 10.42.1.2 return"]
    );
}

#[test]
fn pod_and_namespace_peers_become_address_sets_with_ports() {
    let s = state(vec![policy(
        "shop",
        "web",
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                 "ports": [{"port": 8080}, {"protocol": "UDP", "port": 53, "endPort": 60}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]},
                {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "client"}}}],
                 "ports": [{"port": "http"}]},
            ],
        }),
    )]);
    let table = Table::build(&s, "n1");
    assert_eq!(table.chains.len(), 1, "{table:?}");
    assert_eq!(
        allow_lines(&table, "in/shop/web"),
        vec![
            "ip saddr 10.42.1.2 return",
            // Pods of the policy's namespace only.
            "ip saddr { 10.42.2.2 } meta l4proto tcp th dport 8080 return",
            "ip saddr { 10.42.2.2 } meta l4proto udp th dport 53-60 return",
            // Every pod of the matching namespaces, any port.
            "ip saddr { 10.42.2.3 } return",
            // Pods matching in every namespace; `http` is web's 8080.
            "ip saddr { 10.42.2.2, 10.42.2.3 } meta l4proto tcp th dport 8080 return",
        ]
    );
}

#[test]
fn ip_blocks_keep_their_exceptions_and_empty_selections_allow_nothing() {
    let s = state(vec![policy(
        "shop",
        "web",
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [
                {"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24", "192.168.2.0/24"]}}]},
                {"from": [{"podSelector": {"matchLabels": {"app": "nobody"}}}]},
                {"from": [{"ipBlock": {"cidr": "fd00::/8"}}]},
                {"ports": [{"protocol": "ICMP"}]},
            ],
        }),
    )]);
    let table = Table::build(&s, "n1");
    assert_eq!(
        allow_lines(&table, "in/shop/web"),
        vec![
            "ip saddr 10.42.1.2 return",
            "ip saddr 192.168.0.0/16 ip saddr != { 192.168.1.0/24, 192.168.2.0/24 } return",
        ]
    );
}

#[test]
fn an_empty_rule_allows_everything_and_policies_add_up() {
    let s = state(vec![
        policy("shop", "deny", json!({"podSelector": {}})),
        policy(
            "shop",
            "open-web",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]}),
        ),
    ]);
    let table = Table::build(&s, "n1");
    assert_eq!(
        allow_lines(&table, "in/shop/web"),
        vec!["ip saddr 10.42.1.2 return", "return"]
    );
    assert_eq!(
        allow_lines(&table, "in/shop/db-0"),
        vec!["ip saddr 10.42.1.3 return"]
    );
}

#[test]
fn egress_named_ports_resolve_on_each_destination_pod() {
    let s = state(vec![policy(
        "shop",
        "web-out",
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"podSelector": {}}], "ports": [{"port": "http"}]},
                {"ports": [{"protocol": "UDP", "port": 53}]},
                {"to": [{"ipBlock": {"cidr": "10.42.2.0/24"}}], "ports": [{"port": "http"}]},
            ],
        }),
    )]);
    let table = Table::build(&s, "n1");
    assert_eq!(table.chains.len(), 1, "egress only: {table:?}");
    assert_eq!(
        allow_lines(&table, "out/shop/web"),
        vec![
            // db-0 serves `http` on 5432, the others on 8080.
            "ip daddr { 10.42.1.3 } meta l4proto tcp th dport 5432 return",
            "ip daddr { 10.42.1.2, 10.42.2.2 } meta l4proto tcp th dport 8080 return",
            "meta l4proto udp th dport 53 return",
            "ip daddr { 10.42.2.2, 10.42.2.3 } meta l4proto tcp th dport 8080 return",
        ]
    );
}

#[test]
fn the_script_replaces_the_table_with_maps_forward_and_one_chain_per_isolated_pod() {
    let s = state(vec![
        policy(
            "shop",
            "deny",
            json!({"podSelector": {"matchLabels": {"app": "web"}}}),
        ),
        policy(
            "shop",
            "db-out",
            json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Egress"]}),
        ),
    ]);
    let want = "add table ip skiff-netpol
delete table ip skiff-netpol
table ip skiff-netpol {
\tmap ingress-pods {
\t\ttype ipv4_addr : verdict
\t\telements = { 10.42.1.2 : jump in/shop/web }
\t}
\tmap egress-pods {
\t\ttype ipv4_addr : verdict
\t\telements = { 10.42.1.3 : jump out/shop/db-0 }
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established,related accept
\t\tip saddr vmap @egress-pods
\t\tip daddr vmap @ingress-pods
\t}
\tchain out/shop/db-0 {
\t\tdrop
\t}
\tchain in/shop/web {
\t\tip saddr 10.42.1.2 return
\t\tdrop
\t}
}
";
    assert_eq!(Table::build(&s, "n1").script(), want);
}

#[test]
fn a_leftover_pod_on_a_reused_address_does_not_get_a_second_map_entry() {
    let mut s = state(vec![policy("shop", "deny", json!({"podSelector": {}}))]);
    let mut old = pod("shop", "a-old", "n1", "10.42.1.2", json!({}));
    old.name = "a-old".into();
    s.pods.insert(("shop".into(), "a-old".into()), old);
    let table = Table::build(&s, "n1");
    let on_web_ip: Vec<&str> = table
        .chains
        .iter()
        .filter(|c| c.pod_ip == "10.42.1.2".parse::<Ipv4Addr>().expect("ip"))
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(on_web_ip, vec!["in/shop/a-old"]);
}

#[test]
fn very_long_names_fall_back_to_an_indexed_chain() {
    let long = "x".repeat(253);
    let p = pod("shop", &long, "n1", "10.42.1.9", json!({}));
    assert_eq!(chain_name(Direction::Ingress, &p, 3), "in/#3");
    let short = pod("shop", "web", "n1", "10.42.1.9", json!({}));
    assert_eq!(chain_name(Direction::Egress, &short, 3), "out/shop/web");
}

#[test]
fn egress_to_the_dns_pods_reaches_the_cluster_dns_on_the_host_network() {
    let mut s = state(vec![policy(
        "shop",
        "web-dns-only",
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Egress"],
            "egress": [{
                "to": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": "dns-tcp"}],
            }],
        }),
    )]);
    s.namespaces.insert(
        "kube-system".into(),
        [(
            "kubernetes.io/metadata.name".to_string(),
            "kube-system".to_string(),
        )]
        .into(),
    );
    let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "kube-dns", "namespace": "kube-system"},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.99.0.1"]}],
        "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                  {"name": "dns-tcp", "port": 53, "protocol": "TCP"}],
    }))
    .expect("slice");
    s.host_pods.insert(
        ("kube-system".into(), "kube-dns".into()),
        crate::model::dns_pods(&slice).expect("dns pods"),
    );
    let table = Table::build(&s, "n1");
    assert_eq!(
        allow_lines(&table, "out/shop/web"),
        vec![
            "ip daddr { 10.99.0.1 } meta l4proto udp th dport 53 return",
            "ip daddr { 10.99.0.1 } meta l4proto tcp th dport 53 return",
        ]
    );
    // The DNS is never isolated itself, whatever selects it.
    s.policies.clear();
    let deny_dns = policy("kube-system", "deny", json!({"podSelector": {}}));
    s.policies
        .insert(("kube-system".into(), "deny".into()), deny_dns);
    for node in ["n1", "n2", ""] {
        assert!(Table::build(&s, node).chains.is_empty(), "{node}");
    }
}
