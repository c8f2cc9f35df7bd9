//! Network interfaces: which ones exist, which are usable for beacons, and a cheap
//! notification when anything about them changes.
//!
//! [`scan`] lists interfaces with `getifaddrs(3)` (netlink underneath, so it sees the calling
//! thread's network namespace; `/sys/class/net` would show the namespace of the sysfs mount).
//! [`LinkWatch`] is an rtnetlink socket subscribed to link and address groups: it becomes
//! readable when a link goes up or down, gains carrier, or gains or loses an address. The
//! driver then rescans; the messages themselves are not parsed (a rescan is cheaper to get
//! right than an rtnetlink parser, and events are rare).

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// One interface as seen by [`scan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    /// Kernel name (`eth0`).
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier / operational (`IFF_RUNNING`).
    pub running: bool,
    /// Supports multicast.
    pub multicast: bool,
    /// Loopback.
    pub loopback: bool,
    /// First IPv4 address, if any.
    pub v4: Option<Ipv4Addr>,
    /// First IPv6 link-local address, if any.
    pub v6_link_local: Option<Ipv6Addr>,
}

impl Iface {
    /// Usable for beacons: up, multicast-capable and not loopback.
    pub fn eligible(&self) -> bool {
        self.up && self.multicast && !self.loopback
    }
}

/// Lists the interfaces of the calling thread's network namespace, by name.
pub fn scan() -> io::Result<BTreeMap<String, Iface>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free with freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out: BTreeMap<String, Iface> = BTreeMap::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let flags = ifa.ifa_flags;
        let entry = out.entry(name.clone()).or_insert_with(|| {
            let cname = std::ffi::CString::new(name.clone()).unwrap_or_default();
            // SAFETY: cname is a valid NUL-terminated string.
            let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
            Iface {
                name: name.clone(),
                index,
                up: flags & libc::IFF_UP as u32 != 0,
                running: flags & libc::IFF_RUNNING as u32 != 0,
                multicast: flags & libc::IFF_MULTICAST as u32 != 0,
                loopback: flags & libc::IFF_LOOPBACK as u32 != 0,
                v4: None,
                v6_link_local: None,
            }
        });
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says its real type.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
        if family == libc::AF_INET && entry.v4.is_none() {
            // SAFETY: family is AF_INET, so this is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            entry.v4 = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        } else if family == libc::AF_INET6 && entry.v6_link_local.is_none() {
            // SAFETY: family is AF_INET6, so this is a sockaddr_in6.
            let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
            let a = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            if a.is_unicast_link_local() {
                entry.v6_link_local = Some(a);
            }
        }
    }
    // SAFETY: head came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// An rtnetlink socket that becomes readable on link and address changes.
#[derive(Debug)]
pub struct LinkWatch {
    fd: AsyncFd<OwnedFd>,
}

impl LinkWatch {
    /// Opens the socket (must be called inside a tokio runtime).
    pub fn new() -> io::Result<LinkWatch> {
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid start.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups =
            (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
        // SAFETY: sa is a valid sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a valid open descriptor owned by the AsyncFd from now on, and
        // OwnedFd::as_raw_fd always returns that same descriptor.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))?;
        Ok(LinkWatch { fd })
    }

    /// Waits for the next change and drains everything queued (the content is not needed).
    pub async fn changed(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buf = [0u8; 8192];
            let mut got = false;
            loop {
                // SAFETY: buf is valid for writes of its length.
                let n = unsafe {
                    libc::recv(
                        self.fd.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n > 0 {
                    got = true;
                    continue;
                }
                let err = io::Error::last_os_error();
                if n < 0 && err.raw_os_error() == Some(libc::ENOBUFS) {
                    // Overrun: we lost messages, which only means "something changed".
                    got = true;
                    continue;
                }
                break;
            }
            guard.clear_ready();
            if got {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_loopback() {
        let all = scan().unwrap();
        let lo = all
            .values()
            .find(|i| i.loopback)
            .expect("a loopback interface");
        assert!(!lo.eligible());
        assert!(lo.index > 0);
    }
}
