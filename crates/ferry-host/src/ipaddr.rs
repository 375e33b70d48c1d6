//! The built-in floating-IP action (DESIGN §4, "Hooks": what runs when a machine names no
//! `ifconfig` hook): plumb a server's floating IP onto the machine's interface before the
//! server starts, unplumb it when the server stops or is fenced.
//!
//! Why each step:
//! * [`probe`] first: an ARP duplicate-address probe (`arping -D`). If another host answers
//!   for the address, a previous holder still has it (not fenced yet, or a misconfiguration),
//!   and plumbing it here would split clients between two servers: refuse instead.
//! * [`add`]: `ip addr add IP/PREFIX dev IFACE`, only for an address inside one of the
//!   interface's configured IPv4 subnets (otherwise nobody on the segment could reach it).
//! * [`announce`]: the kernel sends **no** gratuitous ARP when an address is added, and
//!   clients keep the old holder's MAC for ~30 s without one (measured in the lab); with one
//!   they switch within milliseconds. It goes out on a raw packet socket (so ferry knows it
//!   was sent); only where raw sockets are refused does `arping -U` send it, in the
//!   background (it lingers ~1 s after sending).
//! * [`remove`]: `ip addr del`, idempotent.
//!
//! Everything runs in the caller's own network namespace (the Node Manager's machine) through
//! `ip` (iproute2) and `arping` (iputils-arping), each with a time limit. The tests live in
//! `crates/ferry-lab/tests/ipaddr.rs` and run these functions inside lab namespaces.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The time limit of one `ip` command.
pub const IP_TIMEOUT: Duration = Duration::from_secs(5);
/// The time limit of the duplicate-address probe (`arping -D -c 2 -w 1` takes ~1 s when
/// nobody answers, a few ms when somebody does).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the background gratuitous-ARP sender may run before it is killed.
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong moving a floating IP.
#[derive(Debug, thiserror::Error)]
pub enum IpAddrError {
    #[error("{iface:?} is not a valid interface name")]
    BadInterfaceName { iface: String },
    #[error("interface {iface} does not exist in this network namespace; check the machine's `interface` setting")]
    NoSuchInterface { iface: String },
    #[error("prefix length /{prefix_len} for {ip} on {iface} is invalid (1-32)")]
    BadPrefixLength { iface: String, ip: Ipv4Addr, prefix_len: u8 },
    #[error("{ip} is outside every IPv4 subnet of {iface} ({subnets}); a floating IP must belong to a subnet the interface is on")]
    OutsideSubnets { iface: String, ip: Ipv4Addr, subnets: String },
    #[error("cannot announce {ip} on {iface}: the address is not on the interface")]
    NotPresent { iface: String, ip: Ipv4Addr },
    #[error("another host answers for {ip} on {iface} (arp probe); not adding it")]
    InUse { iface: String, ip: Ipv4Addr },
    #[error("{tool} is not installed (Debian package {package})")]
    ToolMissing { tool: &'static str, package: &'static str },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {timeout_ms} ms and was killed")]
    Timeout { command: String, timeout_ms: u64 },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed { command: String, status: String, stderr: String },
}

type Result<T, E = IpAddrError> = std::result::Result<T, E>;

/// What [`plumb`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plumbed {
    /// The address was added (after a clean probe) and announced.
    Added(Announced),
    /// The address was already on the interface; it was announced again.
    AlreadyPresent(Announced),
}

impl std::fmt::Display for Plumbed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, how) = match self {
            Plumbed::Added(how) => ("added", how),
            Plumbed::AlreadyPresent(how) => ("already present", how),
        };
        match how {
            Announced::Sent => write!(f, "{what}, announced with a gratuitous ARP"),
            Announced::ViaArping => {
                write!(f, "{what}, gratuitous ARP handed to arping in the background (a failure is logged)")
            }
        }
    }
}

/// The prefix length of a contiguous netmask (`255.255.255.0` → 24); `None` otherwise.
pub fn prefix_len(netmask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(netmask);
    let len = bits.leading_ones();
    (bits.checked_shl(len).unwrap_or(0) == 0).then_some(len as u8)
}

/// The whole built-in "addif": if the address is already here, announce it again;
/// otherwise probe (refusing with [`IpAddrError::InUse`] if another host answers), add it
/// and announce it.
pub async fn plumb(iface: &str, ip: Ipv4Addr, prefix_len: u8) -> Result<Plumbed> {
    if present(iface, ip).await? {
        return Ok(Plumbed::AlreadyPresent(announce(iface, ip).await?));
    }
    check_prefix_len(iface, ip, prefix_len)?;
    check_subnet(iface, ip, &addresses(iface).await?)?;
    if probe(iface, ip).await? {
        return Err(IpAddrError::InUse { iface: iface.into(), ip });
    }
    add(iface, ip, prefix_len).await?;
    Ok(Plumbed::Added(announce(iface, ip).await?))
}

/// How long the built-in probe listens for a host that holds the address. A host answers
/// ARP from its kernel, on a LAN in well under a millisecond (measured in the lab: ~0.1 ms);
/// two probes 10 ms apart and a 30 ms window leave room for a busy host while keeping the
/// check off the failover's critical path (the failover benchmark measured 100 ms of a
/// 520 ms outage spent here before).
pub const PROBE_WINDOW: Duration = Duration::from_millis(30);

/// Whether another host on `iface`'s segment answers for `ip` (an ARP duplicate-address
/// probe, sender 0.0.0.0). Uses a raw packet socket listening for [`PROBE_WINDOW`]; falls
/// back to `arping -D -c 2 -w 1` (~1 s when nobody answers) if raw sockets are refused.
/// This host's own addresses do not count: check [`present`] for those.
pub async fn probe(iface: &str, ip: Ipv4Addr) -> Result<bool> {
    check_iface(iface)?;
    // A clear error for a missing interface, rather than arping's exit status 2.
    addresses(iface).await?;
    let name = iface.to_string();
    let fast = tokio::task::spawn_blocking(move || crate::arp::probe_blocking(&name, ip, PROBE_WINDOW)).await;
    match fast {
        Ok(Ok(answer)) => return Ok(answer),
        Ok(Err(e)) => tracing::debug!("raw ARP probe on {iface} unavailable ({e}); using arping"),
        Err(e) => tracing::debug!("raw ARP probe on {iface} failed ({e}); using arping"),
    }
    let arping = tool("arping")?;
    let mut cmd = tokio::process::Command::new(arping);
    cmd.args(["-D", "-c", "2", "-w", "1", "-I", iface]).arg(ip.to_string());
    let command = describe(&cmd);
    let out = run(&mut cmd, PROBE_TIMEOUT).await?;
    // iputils arping -D: 0 = no reply (address free), 1 = a reply (in use), 2 = error.
    match out.status.code() {
        Some(0) => Ok(false),
        Some(1) => Ok(true),
        _ => Err(failed(command, &out)),
    }
}

/// Adds `ip/prefix_len` to `iface`; nothing to do when `ip` is already there. Refuses an
/// address outside all of the interface's IPv4 subnets.
pub async fn add(iface: &str, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
    check_prefix_len(iface, ip, prefix_len)?;
    let current = addresses(iface).await?;
    if current.iter().any(|(a, _)| *a == ip) {
        return Ok(());
    }
    check_subnet(iface, ip, &current)?;
    let mut cmd = ip_command()?;
    cmd.args(["addr", "add", &format!("{ip}/{prefix_len}"), "dev", iface]);
    let command = describe(&cmd);
    let out = run(&mut cmd, IP_TIMEOUT).await?;
    // "File exists": added by someone else meanwhile; the goal is reached.
    if out.status.success() || stderr(&out).contains("File exists") {
        Ok(())
    } else {
        Err(failed(command, &out))
    }
}

/// How a gratuitous ARP went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// Sent on a raw packet socket: the frame is on the wire.
    Sent,
    /// Raw sockets are refused here: handed to `arping -U`, which runs in the background;
    /// its outcome goes to the log.
    ViaArping,
}

/// Sends one gratuitous ARP for `ip` from `iface` so neighbours update their caches at once:
/// on a raw packet socket (the frame is sent before this returns), else with `arping -q -U
/// -c 1`, which lingers ~1 s and so runs in the background (killed after
/// [`ANNOUNCE_TIMEOUT`]). `ip` must be on `iface`. An error means nothing was sent.
pub async fn announce(iface: &str, ip: Ipv4Addr) -> Result<Announced> {
    if !present(iface, ip).await? {
        return Err(IpAddrError::NotPresent { iface: iface.into(), ip });
    }
    let name = iface.to_string();
    match tokio::task::spawn_blocking(move || crate::arp::announce_blocking(&name, ip)).await {
        Ok(Ok(())) => return Ok(Announced::Sent),
        Ok(Err(e)) => tracing::debug!("raw gratuitous ARP on {iface} unavailable ({e}); using arping"),
        Err(e) => tracing::debug!("raw gratuitous ARP on {iface} failed ({e}); using arping"),
    }
    let arping = tool("arping")?;
    let mut cmd = tokio::process::Command::new(arping);
    cmd.args(["-q", "-U", "-c", "1", "-I", iface])
        .arg(ip.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let command = describe(&cmd);
    let child = cmd.spawn().map_err(|source| IpAddrError::Spawn { command: command.clone(), source })?;
    tokio::spawn(async move {
        match tokio::time::timeout(ANNOUNCE_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(out)) if out.status.success() => {}
            Ok(Ok(out)) => tracing::warn!("gratuitous arp failed: {}", failed(command, &out)),
            Ok(Err(e)) => tracing::warn!("gratuitous arp `{command}` failed: {e}"),
            Err(_) => tracing::warn!("gratuitous arp `{command}` did not finish; killed"),
        }
    });
    Ok(Announced::ViaArping)
}

/// Removes `ip` from `iface` (with whatever prefix length it has); nothing to do when it
/// is not there.
pub async fn remove(iface: &str, ip: Ipv4Addr) -> Result<()> {
    let Some((_, len)) = addresses(iface).await?.into_iter().find(|(a, _)| *a == ip) else {
        return Ok(());
    };
    let mut cmd = ip_command()?;
    cmd.args(["addr", "del", &format!("{ip}/{len}"), "dev", iface]);
    let command = describe(&cmd);
    let out = run(&mut cmd, IP_TIMEOUT).await?;
    // "Cannot assign requested address": removed by someone else meanwhile.
    if out.status.success() || stderr(&out).contains("Cannot assign requested address") {
        Ok(())
    } else {
        Err(failed(command, &out))
    }
}

/// Whether `ip` is on `iface`.
pub async fn present(iface: &str, ip: Ipv4Addr) -> Result<bool> {
    Ok(addresses(iface).await?.iter().any(|(a, _)| *a == ip))
}

/// The IPv4 addresses on `iface` with their prefix lengths, read in-process with
/// `getifaddrs(3)` (no `ip` to spawn on the failover path).
pub async fn addresses(iface: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
    check_iface(iface)?;
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| IpAddrError::Spawn { command: "getifaddrs".into(), source: std::io::Error::from(e) })?;
    let mut seen = false;
    let mut out = Vec::new();
    for a in addrs.filter(|a| a.interface_name == iface) {
        seen = true;
        let (Some(addr), Some(mask)) = (a.address, a.netmask) else { continue };
        let (Some(addr), Some(mask)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) else { continue };
        out.push((addr.ip(), u32::from(mask.ip()).count_ones() as u8));
    }
    if !seen {
        return Err(IpAddrError::NoSuchInterface { iface: iface.into() });
    }
    Ok(out)
}

/// `A/P` after each `inet` of `ip -o -4 addr show` output (what `getifaddrs` replaced; kept
/// to check the two agree in the tests).
#[cfg(test)]
fn parse_addresses(out: &str) -> Vec<(Ipv4Addr, u8)> {
    out.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            let (a, p) = words.next()?.split_once('/')?;
            Some((a.parse().ok()?, p.parse().ok()?))
        })
        .collect()
}

fn in_subnet(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn check_subnet(iface: &str, ip: Ipv4Addr, current: &[(Ipv4Addr, u8)]) -> Result<()> {
    if current.iter().any(|(a, len)| in_subnet(ip, *a, *len)) {
        return Ok(());
    }
    let subnets = if current.is_empty() {
        "it has none".to_string()
    } else {
        current
            .iter()
            .map(|(a, len)| {
                let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                format!("{}/{len}", Ipv4Addr::from(u32::from(*a) & mask))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(IpAddrError::OutsideSubnets { iface: iface.into(), ip, subnets })
}

fn check_prefix_len(iface: &str, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
    if (1..=32).contains(&prefix_len) {
        Ok(())
    } else {
        Err(IpAddrError::BadPrefixLength { iface: iface.into(), ip, prefix_len })
    }
}

/// Interface names are at most 15 bytes; refuse anything `ip` could read as an option or
/// that is not a plain name.
fn check_iface(iface: &str) -> Result<()> {
    let ok = !iface.is_empty()
        && iface.len() <= 15
        && !iface.starts_with('-')
        && iface.chars().all(|c| c.is_ascii_graphic() && c != '/' && c != ':');
    if ok {
        Ok(())
    } else {
        Err(IpAddrError::BadInterfaceName { iface: iface.into() })
    }
}

fn ip_command() -> Result<tokio::process::Command> {
    Ok(tokio::process::Command::new(tool("ip")?))
}

/// The absolute path of `ip` or `arping`: `PATH` first, then the system directories (a
/// daemon's `PATH` often lacks `/usr/sbin`). Looked up once per process.
fn tool(name: &'static str) -> Result<PathBuf> {
    static IP: OnceLock<Option<PathBuf>> = OnceLock::new();
    static ARPING: OnceLock<Option<PathBuf>> = OnceLock::new();
    let (cell, package) = match name {
        "ip" => (&IP, "iproute2"),
        _ => (&ARPING, "iputils-arping"),
    };
    cell.get_or_init(|| find_on_path(name)).clone().ok_or(IpAddrError::ToolMissing { tool: name, package })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| Path::new(p).is_file())
}

fn describe(cmd: &tokio::process::Command) -> String {
    let std = cmd.as_std();
    std::iter::once(std.get_program())
        .chain(std.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with output captured, killed after `timeout`.
async fn run(cmd: &mut tokio::process::Command, timeout: Duration) -> Result<Output> {
    let command = describe(cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| IpAddrError::Spawn { command: command.clone(), source })?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(source)) => Err(IpAddrError::Spawn { command, source }),
        Err(_) => {
            Err(IpAddrError::Timeout { command, timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX) })
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

fn failed(command: String, out: &Output) -> IpAddrError {
    let mut text = stderr(out);
    if text.is_empty() {
        text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    IpAddrError::Failed { command, status: out.status.to_string(), stderr: text.chars().take(2000).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks_give_prefix_lengths() {
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(prefix_len(Ipv4Addr::new(255, 254, 0, 0)), Some(15));
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(prefix_len(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(prefix_len(Ipv4Addr::new(255, 0, 255, 0)), None);
    }

    #[test]
    fn subnets_contain_their_addresses() {
        let eth0 = [(Ipv4Addr::new(198, 18, 1, 11), 24)];
        assert!(check_subnet("eth0", Ipv4Addr::new(198, 18, 1, 100), &eth0).is_ok());
        let e = check_subnet("eth0", Ipv4Addr::new(198, 19, 5, 5), &eth0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "198.19.5.5 is outside every IPv4 subnet of eth0 (198.18.1.0/24); a floating IP \
             must belong to a subnet the interface is on"
        );
        let e = check_subnet("eth0", Ipv4Addr::new(198, 18, 1, 100), &[]).unwrap_err();
        assert!(e.to_string().contains("it has none"), "{e}");
    }

    #[test]
    fn address_lines_parse() {
        let out = "2: eth0    inet 198.18.1.11/24 brd 198.18.1.255 scope global eth0\\       valid_lft forever preferred_lft forever\n\
                   2: eth0    inet 198.18.1.100/32 scope global eth0\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(
            parse_addresses(out),
            vec![(Ipv4Addr::new(198, 18, 1, 11), 24), (Ipv4Addr::new(198, 18, 1, 100), 32)]
        );
    }

    #[tokio::test]
    async fn addresses_come_from_getifaddrs_and_agree_with_ip() {
        let lo = addresses("lo").await.expect("lo exists");
        assert!(lo.contains(&(Ipv4Addr::LOCALHOST, 8)), "{lo:?}");
        let e = addresses("nosuch0").await.unwrap_err();
        assert!(matches!(e, IpAddrError::NoSuchInterface { .. }), "{e}");
        if let Ok(mut cmd) = ip_command() {
            cmd.args(["-o", "-4", "addr", "show", "dev", "lo"]);
            let out = run(&mut cmd, IP_TIMEOUT).await.expect("ip runs");
            assert_eq!(parse_addresses(&String::from_utf8_lossy(&out.stdout)), lo);
        }
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(check_iface("eth0").is_ok());
        assert!(check_iface("").is_err());
        assert!(check_iface("-6").is_err());
        assert!(check_iface("a/b").is_err());
        assert!(check_iface("eth0:1").is_err());
        assert!(check_iface("a-very-long-name0").is_err());
    }
}
