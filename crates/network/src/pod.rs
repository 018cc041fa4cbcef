//! The node bridge and per-sandbox veth pairs.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use crate::link::{self, EEXIST, errno, nl};
use crate::{Error, Ipam, Result, addr, netns, nft};

/// The interface name a pod sees.
pub const POD_IFNAME: &str = "eth0";

/// How the node's pod network is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetworkConfig {
    /// This node's name (for logs).
    pub node_name: String,
    /// The node's pod CIDR (`Node.spec.podCIDR`); the bridge carries its
    /// first host address.
    pub pod_cidr: Ipv4Net,
    /// The whole cluster's pod CIDR: traffic to it is not masqueraded.
    pub cluster_cidr: Ipv4Net,
    /// The bridge's name.
    pub bridge: String,
    /// Where the IPAM store lives (`<state_dir>/ipam/`).
    pub state_dir: PathBuf,
    /// MTU of the bridge and of both ends of every veth.
    pub mtu: u32,
    /// Hairpin mode on every bridge port, so a pod can reach itself through
    /// a service address.
    pub hairpin: bool,
    /// The network namespace that plays the host: `None` for the caller's
    /// own (production), a path for a namespace the caller created (tests).
    pub host_netns: Option<PathBuf>,
}

impl PodNetworkConfig {
    /// Defaults: cluster CIDR 10.42.0.0/16, bridge `skiff0`, MTU 1500,
    /// hairpin on, the caller's namespace as host.
    pub fn new(
        node_name: impl Into<String>,
        pod_cidr: Ipv4Net,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            node_name: node_name.into(),
            pod_cidr,
            cluster_cidr: Ipv4Net::new(Ipv4Addr::new(10, 42, 0, 0), 16).unwrap_or_default(),
            bridge: "skiff0".to_string(),
            state_dir: state_dir.into(),
            mtu: 1500,
            hairpin: true,
            host_netns: None,
        }
    }

    fn validate(&self) -> Result<()> {
        if !addr::valid_ifname(&self.bridge) {
            return Err(Error::Config(format!(
                "bridge name {:?} is not a valid interface name",
                self.bridge
            )));
        }
        if addr::pod_range(self.pod_cidr.trunc()).is_none() {
            return Err(Error::Config(format!(
                "pod cidr {} is too small",
                self.pod_cidr
            )));
        }
        if !self.cluster_cidr.trunc().contains(&self.pod_cidr.trunc()) {
            return Err(Error::Config(format!(
                "pod cidr {} is not inside cluster cidr {}",
                self.pod_cidr, self.cluster_cidr
            )));
        }
        if !(68..=65535).contains(&self.mtu) {
            return Err(Error::Config(format!(
                "mtu {} out of range 68..=65535",
                self.mtu
            )));
        }
        Ok(())
    }
}

/// What a sandbox got from [`PodNetwork::setup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAddress {
    /// The pod's address with the pod CIDR's prefix length.
    pub address: Ipv4Net,
    /// The default gateway (the bridge's address).
    pub gateway: Ipv4Addr,
    /// The interface inside the sandbox.
    pub interface: String,
    /// The host end of the veth pair.
    pub host_veth: String,
}

impl PodAddress {
    /// The pod IP, as reported in `PodStatus.podIP`.
    pub fn ip(&self) -> Ipv4Addr {
        self.address.addr()
    }
}

/// The node's pod network. Cheap to clone; every method is idempotent.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    config: PodNetworkConfig,
    pod_cidr: Ipv4Net,
    gateway: Ipv4Addr,
    ipam: Ipam,
}

impl PodNetwork {
    /// Validates the config and opens the IPAM store; touches no kernel state.
    pub fn new(config: PodNetworkConfig) -> Result<Self> {
        config.validate()?;
        let pod_cidr = config.pod_cidr.trunc();
        let gateway = addr::gateway(pod_cidr)
            .ok_or_else(|| Error::Config(format!("pod cidr {pod_cidr} has no gateway")))?;
        let ipam = Ipam::new(config.state_dir.join("ipam"), pod_cidr)?;
        Ok(Self {
            config,
            pod_cidr,
            gateway,
            ipam,
        })
    }

    /// The config this network was built from.
    pub fn config(&self) -> &PodNetworkConfig {
        &self.config
    }

    /// The bridge's address and the pods' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The IPAM store, for garbage collection of sandboxes that vanished.
    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    fn host_netns(&self) -> Option<&Path> {
        self.config.host_netns.as_deref()
    }

    /// Bridge with the gateway address, up; IPv4 forwarding on; the
    /// `inet skiff-net` nftables table loaded. Safe at every agent start.
    #[tracing::instrument(skip(self), fields(node = %self.config.node_name, bridge = %self.config.bridge))]
    pub async fn ensure_node(&self) -> Result<()> {
        let host = netns::handle(self.host_netns()).await?;
        let name = &self.config.bridge;
        let bridge = match link::by_name(&host, name).await? {
            Some(existing) => existing,
            None => {
                let [a, b, c, d] = self.gateway.octets();
                let msg = LinkBridge::new(name)
                    .mtu(self.config.mtu)
                    .address(vec![0x0a, 0x58, a, b, c, d])
                    .build();
                match host.link().add(msg).execute().await {
                    Ok(()) => tracing::info!("created bridge"),
                    Err(e) if errno(&e) == Some(EEXIST) => {}
                    Err(e) => return Err(nl("create bridge", name.as_str())(e)),
                }
                link::by_name(&host, name)
                    .await?
                    .ok_or_else(|| Error::Vanished {
                        device: name.clone(),
                    })?
            }
        };
        if link::kind(&bridge) != Some(&InfoKind::Bridge) {
            return Err(Error::WrongKind {
                device: name.clone(),
                want: "bridge",
            });
        }
        let index = bridge.header.index;
        link::ensure_only_addr_v4(&host, index, name, self.gateway, self.pod_cidr.prefix_len())
            .await?;
        link::set_up(&host, index, name).await?;
        netns::write_sysctl(self.host_netns(), "net.ipv4.ip_forward", "1")?;
        nft::apply(
            &nft::ruleset(self.pod_cidr, self.config.cluster_cidr),
            self.host_netns(),
        )
        .await?;
        Ok(())
    }

    /// Gives the sandbox whose network namespace is at `netns_path` an
    /// address and an `eth0` on the bridge. Calling it again for the same
    /// sandbox returns the same address and repairs what is missing.
    #[tracing::instrument(skip(self), fields(node = %self.config.node_name))]
    pub async fn setup(&self, sandbox_id: &str, netns_path: &Path) -> Result<PodAddress> {
        let id = sandbox_id.to_string();
        let (ip, newly_reserved) = self.blocking_ipam(move |ipam| ipam.allocate(&id)).await?;
        match self.setup_links(sandbox_id, netns_path, ip).await {
            Ok(address) => {
                tracing::info!(ip = %address.address, veth = %address.host_veth, "pod network set up");
                Ok(address)
            }
            Err(error) if newly_reserved => {
                // Undo only what this call created: a repeated setup of a
                // running pod must not tear it down.
                match self.teardown(sandbox_id, netns_path).await {
                    Ok(()) => Err(error),
                    Err(cleanup) => Err(Error::WithCleanup {
                        error: Box::new(error),
                        cleanup: Box::new(cleanup),
                    }),
                }
            }
            Err(error) => Err(error),
        }
    }

    async fn setup_links(
        &self,
        sandbox_id: &str,
        netns_path: &Path,
        ip: Ipv4Addr,
    ) -> Result<PodAddress> {
        let host = netns::handle(self.host_netns()).await?;
        let bridge_name = &self.config.bridge;
        let bridge =
            link::by_name(&host, bridge_name)
                .await?
                .ok_or_else(|| Error::BridgeMissing {
                    bridge: bridge_name.clone(),
                })?;
        let ns_file = netns::open(netns_path)?;
        let pod = netns::handle(Some(netns_path)).await?;
        let host_veth = addr::host_veth_name(sandbox_id);
        let pod_target = || format!("{POD_IFNAME} in {}", netns_path.display());

        let host_link = link::by_name(&host, &host_veth).await?;
        let pod_link = link::by_name(&pod, POD_IFNAME).await?;
        let reuse = matches!((&host_link, &pod_link), (Some(h), Some(p))
            if link::kind(h) == Some(&InfoKind::Veth) && link::kind(p) == Some(&InfoKind::Veth));
        if !reuse {
            if host_link.is_some() {
                link::delete_by_name(&host, &host_veth).await?;
            }
            if pod_link.is_some() {
                link::delete_by_name(&pod, POD_IFNAME).await?;
            }
            let peer = LinkMessageBuilder::<LinkUnspec>::new()
                .name(POD_IFNAME)
                .mtu(self.config.mtu)
                .setns_by_fd(ns_file.as_raw_fd())
                .build();
            let msg = LinkVeth::new(&host_veth, POD_IFNAME)
                .mtu(self.config.mtu)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build();
            host.link().add(msg).execute().await.map_err(nl(
                "create veth pair",
                format!("{host_veth} / {}", pod_target()),
            ))?;
            tracing::debug!(veth = %host_veth, "created veth pair");
        }
        drop(ns_file);

        // Host end: on the bridge, hairpin, up.
        let host_index = link::by_name(&host, &host_veth)
            .await?
            .ok_or_else(|| Error::Vanished {
                device: host_veth.clone(),
            })?
            .header
            .index;
        host.link()
            .set(
                LinkUnspec::new_with_index(host_index)
                    .controller(bridge.header.index)
                    .mtu(self.config.mtu)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(
                "attach to bridge",
                format!("{host_veth} -> {bridge_name}"),
            ))?;
        host.link()
            .set_port(
                LinkBridgePort::new(host_index)
                    .hairpin(self.config.hairpin)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("set hairpin", host_veth.as_str()))?;

        // Pod end: address, up, default route; loopback up.
        let prefix = self.pod_cidr.prefix_len();
        self.configure_pod_side(&pod, ip, prefix, &pod_target())
            .await?;

        let address = Ipv4Net::new(ip, prefix).map_err(|e| Error::Config(e.to_string()))?;
        Ok(PodAddress {
            address,
            gateway: self.gateway,
            interface: POD_IFNAME.to_string(),
            host_veth,
        })
    }

    async fn configure_pod_side(
        &self,
        pod: &Handle,
        ip: Ipv4Addr,
        prefix: u8,
        target: &str,
    ) -> Result<()> {
        if let Some(lo) = link::by_name(pod, "lo").await? {
            link::set_up(pod, lo.header.index, "lo").await?;
        }
        let eth0 = link::by_name(pod, POD_IFNAME)
            .await?
            .ok_or_else(|| Error::Vanished {
                device: target.to_string(),
            })?;
        let index = eth0.header.index;
        link::ensure_only_addr_v4(pod, index, target, ip, prefix).await?;
        link::set_up(pod, index, target).await?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(self.gateway)
            .output_interface(index)
            .build();
        pod.route().add(route).replace().execute().await.map_err(nl(
            "add default route",
            format!("via {} dev {target}", self.gateway),
        ))
    }

    /// Removes the sandbox's veth pair and frees its address. Safe to call
    /// again, and when the namespace is already gone.
    #[tracing::instrument(skip(self), fields(node = %self.config.node_name))]
    pub async fn teardown(&self, sandbox_id: &str, netns_path: &Path) -> Result<()> {
        let host = netns::handle(self.host_netns()).await?;
        let host_veth = addr::host_veth_name(sandbox_id);
        let deleted = link::delete_by_name(&host, &host_veth).await?;
        // Deleting one end deletes both; look inside only if the host end
        // was already gone (say, renamed) and the namespace still exists.
        if !deleted && netns_path.exists() {
            match netns::handle(Some(netns_path)).await {
                Ok(pod) => {
                    if let Some(eth0) = link::by_name(&pod, POD_IFNAME).await?
                        && link::kind(&eth0) == Some(&InfoKind::Veth)
                    {
                        link::delete_by_name(&pod, POD_IFNAME).await?;
                    }
                }
                Err(e) => {
                    tracing::debug!(netns = %netns_path.display(), error = %e, "sandbox namespace not usable; nothing to remove inside");
                }
            }
        }
        let id = sandbox_id.to_string();
        let freed = self.blocking_ipam(move |ipam| ipam.release(&id)).await?;
        tracing::info!(veth = %host_veth, ?freed, "pod network torn down");
        Ok(())
    }

    async fn blocking_ipam<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Ipam) -> Result<T, crate::IpamError> + Send + 'static,
    {
        let ipam = self.ipam.clone();
        tokio::task::spawn_blocking(move || f(&ipam))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
            .map_err(Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pod: &str) -> PodNetworkConfig {
        PodNetworkConfig::new("node-a", pod.parse().expect("cidr"), "/nonexistent")
    }

    #[test]
    fn config_defaults_match_the_cluster_conventions() {
        let c = config("10.42.1.0/24");
        assert_eq!(
            c.cluster_cidr,
            "10.42.0.0/16".parse::<Ipv4Net>().expect("cidr")
        );
        assert_eq!(c.bridge, "skiff0");
        assert!(c.hairpin);
        assert_eq!(c.host_netns, None);
    }

    #[test]
    fn config_validation_rejects_inconsistent_layouts() {
        let cases: Vec<(&str, PodNetworkConfig)> = vec![
            ("pod cidr outside cluster cidr", config("10.99.1.0/24")),
            ("pod cidr too small", config("10.42.1.0/31")),
            (
                "bridge name too long",
                PodNetworkConfig {
                    bridge: "a-very-long-bridge-name".into(),
                    ..config("10.42.1.0/24")
                },
            ),
            (
                "mtu too small",
                PodNetworkConfig {
                    mtu: 10,
                    ..config("10.42.1.0/24")
                },
            ),
        ];
        for (name, c) in cases {
            assert!(matches!(c.validate(), Err(Error::Config(_))), "{name}");
        }
        assert!(config("10.42.1.0/24").validate().is_ok());
    }
}
