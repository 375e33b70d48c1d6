//! The nodes of a lab and what is done to them: node names, namespaces, addresses and MACs
//! (198.18.1.1 the switch, .2 the client, .11 up the machines), and the faults in force.
//!
//! Shared by `lab.rs` (which builds the nodes and runs programs in them) and `faults.rs`
//! (which breaks them), so neither needs the other's internals.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::{in_lab_net, LabError, Result, SUBNET_PREFIX_LEN};

/// The node name of the switch (namespace `{prefix}sw`, bridge `br0`, 198.18.1.1).
pub const SWITCH: &str = "sw";
/// The node name of the client (namespace `{prefix}client`, 198.18.1.2).
pub const CLIENT: &str = "client";
/// The last octet of the first machine's address (198.18.1.11); floating IPs start at .100.
const FIRST_MACHINE_OCTET: u8 = 11;
const LAST_MACHINE_OCTET: u8 = 99;
/// Interface names are limited to 15 bytes (IFNAMSIZ - 1); ports are `sw-<machine>`.
const MAX_MACHINE_NAME: usize = 15 - "sw-".len();

/// A resolved node name.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) ns: String,
    pub(crate) addr: Ipv4Addr,
    pub(crate) is_switch: bool,
}

impl Node {
    /// The node's port on the bridge (`sw-NAME`, in the switch namespace).
    pub(crate) fn port(&self) -> String {
        format!("sw-{}", self.name)
    }
}

/// The address of the `i`th machine (198.18.1.11 + i), if it has one.
pub(crate) fn machine_addr(i: usize) -> Option<Ipv4Addr> {
    let i = u8::try_from(i).ok()?;
    let last = FIRST_MACHINE_OCTET.checked_add(i).filter(|o| *o <= LAST_MACHINE_OCTET)?;
    Some(Ipv4Addr::new(198, 18, 1, last))
}

/// A partition of one host (a machine or the client) at the switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cut {
    /// Nothing in or out, ARP included ([`crate::Lab::partition`]).
    Isolated,
    /// Reaches the switch (198.18.1.1) but no other machine; the client still reaches it
    /// ([`crate::Lab::partition_from_peers`]).
    FromPeers,
    /// Reaches the other machines and the client but not the switch's address
    /// ([`crate::Lab::partition_from_switch`]).
    FromSwitch,
    /// Reaches everything but these other hosts ([`crate::Lab::split`]).
    FromHosts(BTreeSet<String>),
}

/// The faults in force.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub(crate) cuts: BTreeMap<String, Cut>,
    pub(crate) frozen: BTreeSet<String>,
    /// Per frozen node, the processes it SIGSTOPped (to SIGCONT on thaw).
    pub(crate) stopped: BTreeMap<String, Vec<i32>>,
}

/// The `A/P` after each `inet` of `ip -o -4 addr show` output.
pub(crate) fn inet_addresses(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next().map(str::to_string)
        })
        .collect()
}

/// `A/24`, refusing addresses outside 198.18.0.0/15.
pub(crate) fn cidr(addr: Ipv4Addr) -> Result<String> {
    guard(addr)?;
    Ok(format!("{addr}/{SUBNET_PREFIX_LEN}"))
}

pub(crate) fn guard(addr: Ipv4Addr) -> Result<()> {
    if in_lab_net(addr) {
        Ok(())
    } else {
        Err(LabError::AddressOutsideLab { addr })
    }
}

pub(crate) fn mac_of(addr: Ipv4Addr) -> String {
    format!("02:00:c6:12:01:{:02x}", addr.octets()[3])
}

pub(crate) fn machine_octets(count: usize) -> impl Iterator<Item = u8> {
    (0..count).map(|i| u8::try_from(i).ok().and_then(|i| FIRST_MACHINE_OCTET.checked_add(i)).unwrap_or(u8::MAX))
}

pub(crate) fn check_machines(machines: &[String]) -> Result<()> {
    let max = usize::from(LAST_MACHINE_OCTET - FIRST_MACHINE_OCTET) + 1;
    if machines.len() > max {
        return Err(LabError::Spec(format!(
            "{} machines are too many: addresses 198.18.1.{FIRST_MACHINE_OCTET}-{LAST_MACHINE_OCTET} hold {max}",
            machines.len()
        )));
    }
    for (i, m) in machines.iter().enumerate() {
        let ok = !m.is_empty()
            && m.len() <= MAX_MACHINE_NAME
            && m.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !m.starts_with('-');
        if !ok {
            return Err(LabError::Spec(format!(
                "machine name {m:?} must be 1-{MAX_MACHINE_NAME} lowercase letters, digits or '-' \
                 (its switch port sw-{m} must fit in 15 characters)"
            )));
        }
        if m == SWITCH || m == CLIENT {
            return Err(LabError::Spec(format!(
                "machine name {m:?} is reserved for the lab's {} namespace",
                if m == SWITCH { "switch" } else { "client" }
            )));
        }
        if machines[..i].contains(m) {
            return Err(LabError::Spec(format!("machine name {m:?} appears twice")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn machine_names_must_fit_a_port_name() {
        assert!(check_machines(&names(&["a", "machine-b", "m12345678901"])).is_ok());
        assert!(check_machines(&names(&["m123456789012"])).is_err());
        assert!(check_machines(&names(&["A"])).is_err());
        assert!(check_machines(&names(&["sw"])).is_err());
        assert!(check_machines(&names(&["client"])).is_err());
        assert!(check_machines(&names(&["a", "a"])).is_err());
        assert!(check_machines(&names(&["-a"])).is_err());
        assert!(check_machines(&names(&[""])).is_err());
    }

    #[test]
    fn at_most_89_machines() {
        let many: Vec<String> = (0..90).map(|i| format!("m{i}")).collect();
        let e = check_machines(&many).unwrap_err();
        assert!(e.to_string().contains("too many"), "{e}");
        assert!(check_machines(&many[..89]).is_ok());
    }

    #[test]
    fn addresses_outside_the_lab_net_are_refused() {
        assert!(cidr(Ipv4Addr::new(198, 18, 1, 11)).is_ok());
        let e = cidr(Ipv4Addr::new(10, 0, 0, 1)).unwrap_err();
        assert!(matches!(e, LabError::AddressOutsideLab { .. }), "{e}");
    }

    #[test]
    fn macs_are_fixed() {
        assert_eq!(mac_of(Ipv4Addr::new(198, 18, 1, 11)), "02:00:c6:12:01:0b");
    }

    #[test]
    fn inet_lines_parse() {
        let out = "2: eth0    inet 198.18.1.11/24 brd 198.18.1.255 scope global eth0\\       valid_lft forever preferred_lft forever\n\
                   2: eth0    inet 198.18.1.100/24 scope global secondary eth0\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(inet_addresses(out), vec!["198.18.1.11/24".to_string(), "198.18.1.100/24".to_string()]);
    }
}
