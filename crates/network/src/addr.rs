//! Pure address arithmetic: gateways, allocatable ranges, interface names
//! and VTEP MAC addresses. No IO.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Linux `IFNAMSIZ` minus the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;

/// The gateway of a pod CIDR: its first host address, which the bridge
/// carries. `None` when the CIDR has no room for a gateway and one pod
/// (prefixes longer than /30).
pub fn gateway(pod_cidr: Ipv4Net) -> Option<Ipv4Addr> {
    if pod_cidr.prefix_len() > 30 {
        return None;
    }
    Some(Ipv4Addr::from(u32::from(pod_cidr.network()) + 1))
}

/// The addresses pods may get from a pod CIDR: every host address except
/// the gateway (network and broadcast addresses are never hosts).
/// `None` when the CIDR is too small to hold a gateway and one pod.
pub fn pod_range(pod_cidr: Ipv4Net) -> Option<(Ipv4Addr, Ipv4Addr)> {
    gateway(pod_cidr)?;
    let first = u32::from(pod_cidr.network()) + 2;
    let last = u32::from(pod_cidr.broadcast()) - 1;
    (first <= last).then(|| (Ipv4Addr::from(first), Ipv4Addr::from(last)))
}

/// A 64-bit FNV-1a hash: stable across Rust versions and platforms, unlike
/// `std`'s `DefaultHasher`, so names derived from it survive an upgrade of
/// the agent.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in data {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The host-side veth name for a sandbox: `veth` and 11 hex digits of a
/// stable hash of the id, 15 characters, the longest name Linux accepts.
pub fn host_veth_name(sandbox_id: &str) -> String {
    let hash = fnv1a64(sandbox_id.as_bytes()) & 0x0fff_ffff_ffff;
    format!("veth{hash:011x}")
}

/// The MAC address of a node's VXLAN device, derived from its node IP so
/// that every node can compute every other node's VTEP address from plain
/// data (flannel instead publishes a random MAC in a Node annotation).
/// `0a:73` makes it a locally administered unicast address.
pub fn vtep_mac(node_ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = node_ip.octets();
    [0x0a, 0x73, a, b, c, d]
}

/// Whether an interface name is one Linux accepts.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test cidr")
    }

    #[test]
    fn gateway_is_first_host_of_pod_cidr() {
        let cases = [
            ("slash24", "10.42.1.0/24", Some("10.42.1.1")),
            (
                "unaligned input is normalised",
                "10.42.1.77/24",
                Some("10.42.1.1"),
            ),
            ("slash16", "10.42.0.0/16", Some("10.42.0.1")),
            ("slash30 still has room", "10.0.0.4/30", Some("10.0.0.5")),
            ("slash31 has no room", "10.0.0.4/31", None),
            ("slash32 has no room", "10.0.0.4/32", None),
        ];
        for (name, cidr, want) in cases {
            let want = want.map(|w| w.parse::<Ipv4Addr>().expect("test ip"));
            assert_eq!(gateway(net(cidr)), want, "{name}");
        }
    }

    #[test]
    fn pod_range_excludes_network_gateway_and_broadcast() {
        let cases = [
            (
                "slash24",
                "10.42.1.0/24",
                Some(("10.42.1.2", "10.42.1.254")),
            ),
            (
                "slash30 holds one pod",
                "10.0.0.4/30",
                Some(("10.0.0.6", "10.0.0.6")),
            ),
            ("slash31 holds none", "10.0.0.4/31", None),
        ];
        for (name, cidr, want) in cases {
            let want = want.map(|(a, b)| {
                (
                    a.parse::<Ipv4Addr>().expect("test ip"),
                    b.parse::<Ipv4Addr>().expect("test ip"),
                )
            });
            assert_eq!(pod_range(net(cidr)), want, "{name}");
        }
    }

    #[test]
    fn host_veth_name_is_stable_short_and_distinct() {
        let a = host_veth_name("3f1c0ffee");
        assert_eq!(a, host_veth_name("3f1c0ffee"));
        assert_eq!(a.len(), MAX_IFNAME_LEN);
        assert!(a.starts_with("veth"));
        assert!(valid_ifname(&a));
        assert_ne!(a, host_veth_name("3f1c0ffef"));
        // Pinned: a different name after an upgrade would orphan veths.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn vtep_mac_is_locally_administered_unicast_and_encodes_node_ip() {
        let mac = vtep_mac(Ipv4Addr::new(192, 0, 2, 7));
        assert_eq!(mac, [0x0a, 0x73, 192, 0, 2, 7]);
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
    }

    #[test]
    fn valid_ifname_follows_kernel_rules() {
        let cases = [
            ("bridge default", "skiff0", true),
            ("vxlan default", "skiff.1", true),
            ("empty", "", false),
            ("sixteen chars", "abcdefghijklmnop", false),
            ("slash", "a/b", false),
            ("colon", "a:b", false),
            ("space", "a b", false),
            ("dot", ".", false),
        ];
        for (name, input, want) in cases {
            assert_eq!(valid_ifname(input), want, "{name}");
        }
    }
}
