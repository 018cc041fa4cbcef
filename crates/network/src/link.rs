//! Small netlink steps over an `rtnetlink::Handle`, each idempotent and
//! each error naming the device or address it was about.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};

use crate::Error;

pub const ENOENT: i32 = 2;
pub const ESRCH: i32 = 3;
pub const ENODEV: i32 = 19;
pub const EEXIST: i32 = 17;
pub const EADDRNOTAVAIL: i32 = 99;

/// The errno of a netlink NACK, if the error is one.
pub fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

pub fn nl(op: &'static str, target: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let target = target.into();
    move |source| Error::Netlink { op, target, source }
}

/// A link by name, `None` if there is none.
pub async fn by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, Error> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(nl("get link", name)(e)),
    }
}

/// A link by index, `None` if there is none.
pub async fn by_index(h: &Handle, index: u32) -> Result<Option<LinkMessage>, Error> {
    match h.link().get().match_index(index).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(nl("get link", format!("index {index}"))(e)),
    }
}

pub fn kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

pub fn mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

pub fn mac(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.as_slice()),
        _ => None,
    })
}

/// Sets a link administratively up.
pub async fn set_up(h: &Handle, index: u32, name: &str) -> Result<(), Error> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl("set up", name))
}

/// Deletes a link by name; a missing link is not an error. Returns whether
/// one was deleted.
pub async fn delete_by_name(h: &Handle, name: &str) -> Result<bool, Error> {
    let Some(link) = by_name(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
        Err(e) => Err(nl("delete link", name)(e)),
    }
}

/// The IPv4 addresses on a link with their prefix lengths.
pub async fn addrs_v4(
    h: &Handle,
    index: u32,
    name: &str,
) -> Result<Vec<(Ipv4Addr, u8, AddressMessage)>, Error> {
    let msgs: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl("list addresses", name))?;
    Ok(msgs
        .into_iter()
        .filter(|m| m.header.family == AddressFamily::Inet && m.header.index == index)
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })?;
            Some((ip, m.header.prefix_len, m))
        })
        .collect())
}

/// Makes `ip/prefix` the only IPv4 address on the link.
pub async fn ensure_only_addr_v4(
    h: &Handle,
    index: u32,
    name: &str,
    ip: Ipv4Addr,
    prefix: u8,
) -> Result<(), Error> {
    let mut present = false;
    for (have, have_prefix, msg) in addrs_v4(h, index, name).await? {
        if have == ip && have_prefix == prefix {
            present = true;
            continue;
        }
        tracing::info!(device = name, address = %format!("{have}/{have_prefix}"), "removing stale address");
        match h.address().del(msg).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(EADDRNOTAVAIL) => {}
            Err(e) => {
                return Err(nl(
                    "delete address",
                    format!("{have}/{have_prefix} on {name}"),
                )(e));
            }
        }
    }
    if !present {
        match h
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(EEXIST) => {}
            Err(e) => return Err(nl("add address", format!("{ip}/{prefix} on {name}"))(e)),
        }
    }
    Ok(())
}

/// The index of the link that carries `ip`, if any.
pub async fn index_with_addr(h: &Handle, ip: Ipv4Addr) -> Result<Option<u32>, Error> {
    let msgs: Vec<AddressMessage> = h
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("list addresses", ip.to_string()))?;
    Ok(msgs.into_iter().find_map(|m| {
        m.attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(have)) if *have == ip))
            .then_some(m.header.index)
    }))
}
