//! A fast ARP duplicate-address probe (RFC 5227) over a raw packet socket. `arping -D`
//! waits whole seconds for answers; on a LAN a host that holds an address answers within a
//! millisecond, so ferry sends two probes and listens for a short, explicit window. This
//! keeps the seed's check ("the migratable IP address should not be present on ... any of
//! the candidate machines") off the critical path of a sub-second failover.

use std::net::Ipv4Addr;
use std::time::Duration;

const ETH_P_ARP: u16 = 0x0806;

/// Sends ARP probes for `ip` on `iface` and reports whether any host answers for it within
/// `window` (probes at the start and at a third of the window). Blocking: run it on the
/// blocking pool.
pub fn probe_blocking(iface: &str, ip: Ipv4Addr, window: Duration) -> std::io::Result<bool> {
    let (index, mac) = interface(iface)?;
    let socket = RawSocket::open(index)?;
    let frame = probe_frame(mac, ip);
    let start = crate::clock::now();
    let window_ms = window.as_millis() as u64;
    let mut sent = 0;
    let mut buf = [0u8; 128];
    loop {
        let elapsed = crate::clock::now().since(start);
        if elapsed >= window_ms {
            return Ok(false);
        }
        if sent == 0 || (sent == 1 && elapsed >= window_ms / 3) {
            socket.send_broadcast(&frame)?;
            sent += 1;
        }
        let wait = Duration::from_millis((window_ms - elapsed).min(window_ms / 3).max(1));
        if let Some(n) = socket.recv(&mut buf, wait)? {
            if claims(&buf[..n], ip, mac) {
                return Ok(true);
            }
        }
    }
}

/// Sends a gratuitous ARP for `ip` from `iface` (an ARP request whose sender and target
/// address are both `ip`, broadcast), so neighbours point their caches at this host at once.
/// The kernel sends none when an address is added. Returns once the frame is handed to the
/// interface: an error here means no announcement went out. Blocking (one `sendto`).
pub fn announce_blocking(iface: &str, ip: Ipv4Addr) -> std::io::Result<()> {
    let (index, mac) = interface(iface)?;
    let socket = RawSocket::open(index)?;
    socket.send_broadcast(&gratuitous_frame(mac, ip))
}

fn interface(iface: &str) -> std::io::Result<(i32, [u8; 6])> {
    let index = read_sys(iface, "ifindex")?
        .trim()
        .parse::<i32>()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("ifindex of {iface}: {e}")))?;
    let mac = parse_mac(read_sys(iface, "address")?.trim())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("no MAC address on {iface}")))?;
    Ok((index, mac))
}

fn read_sys(iface: &str, what: &str) -> std::io::Result<String> {
    if iface.is_empty() || iface.contains('/') || iface.contains("..") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{iface:?} is not an interface name"),
        ));
    }
    std::fs::read_to_string(format!("/sys/class/net/{iface}/{what}"))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// An Ethernet broadcast ARP request from `mac` for `ip` with sender address 0.0.0.0.
fn probe_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    // sender protocol address 0.0.0.0 (f[28..32]), target hardware unknown (f[32..38]).
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// A gratuitous ARP request: sender and target protocol address both `ip`, from `mac`.
fn gratuitous_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = probe_frame(mac, ip);
    f[28..32].copy_from_slice(&ip.octets());
    f
}

/// Whether an ARP frame shows another host using `ip`: a reply or request whose sender
/// address is `ip`, or another host's probe for it, from a MAC that is not ours.
fn claims(frame: &[u8], ip: Ipv4Addr, ours: [u8; 6]) -> bool {
    if frame.len() < 42 || frame[12..14] != ETH_P_ARP.to_be_bytes() {
        return false;
    }
    let sha = &frame[22..28];
    let spa = &frame[28..32];
    let tpa = &frame[38..42];
    if sha == ours {
        return false;
    }
    spa == ip.octets() || (spa == [0, 0, 0, 0] && tpa == ip.octets())
}

struct RawSocket {
    fd: i32,
    index: i32,
}

impl RawSocket {
    fn open(index: i32) -> std::io::Result<RawSocket> {
        // SAFETY: plain socket(2) and bind(2) calls with a zeroed, fully initialised
        // sockaddr_ll of the right size; the descriptor is owned by the returned value.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(ETH_P_ARP.to_be()));
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let socket = RawSocket { fd, index };
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ETH_P_ARP.to_be();
            addr.sll_ifindex = index;
            let rc = libc::bind(
                fd,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(socket)
        }
    }

    fn send_broadcast(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: sendto(2) with a valid buffer and a zeroed, fully initialised sockaddr_ll.
        unsafe {
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ETH_P_ARP.to_be();
            addr.sll_ifindex = self.index;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
            let rc = libc::sendto(
                self.fd,
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// One frame, or `None` if none arrived within `wait`.
    fn recv(&self, buf: &mut [u8], wait: Duration) -> std::io::Result<Option<usize>> {
        let mut pfd = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: poll(2) on one valid pollfd; recv(2) into a buffer we own, within its length.
        unsafe {
            let rc = libc::poll(&mut pfd, 1, wait.as_millis().min(i32::MAX as u128) as i32);
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                return if e.kind() == std::io::ErrorKind::Interrupted { Ok(None) } else { Err(e) };
            }
            if rc == 0 {
                return Ok(None);
            }
            let n = libc::recv(self.fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Some(n as usize))
        }
    }
}

impl Drop for RawSocket {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this value owns, once.
        unsafe {
            libc::close(self.fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_claims() {
        let ours = [2, 0, 0, 0, 0, 1];
        let theirs = [2, 0, 0, 0, 0, 2];
        let ip = Ipv4Addr::new(198, 18, 1, 100);
        let probe = probe_frame(ours, ip);
        assert!(!claims(&probe, ip, ours), "our own probe is not a claim");
        let mut reply = probe;
        reply[20..22].copy_from_slice(&2u16.to_be_bytes());
        reply[22..28].copy_from_slice(&theirs);
        reply[28..32].copy_from_slice(&ip.octets());
        assert!(claims(&reply, ip, ours));
        assert!(!claims(&reply, Ipv4Addr::new(198, 18, 1, 101), ours));
        let mut their_probe = probe;
        their_probe[22..28].copy_from_slice(&theirs);
        assert!(claims(&their_probe, ip, ours), "someone else probing for it is a conflict too");
        let announce = gratuitous_frame(ours, ip);
        assert_eq!(&announce[28..32], &ip.octets(), "the sender address is the floating IP");
        assert_eq!(&announce[38..42], &ip.octets(), "so is the target address");
        assert_eq!(&announce[22..28], &ours, "from our MAC");
        assert!(!claims(&announce, ip, ours), "our own announcement is not a claim");
        let mut theirs_announce = announce;
        theirs_announce[22..28].copy_from_slice(&theirs);
        assert!(claims(&theirs_announce, ip, ours), "another host announcing it is");
        assert_eq!(parse_mac("02:00:c6:12:01:0b"), Some([2, 0, 0xc6, 0x12, 1, 0x0b]));
        assert_eq!(parse_mac("zz"), None);
    }
}
