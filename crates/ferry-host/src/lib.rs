//! ferry-host: the operating-system edge. Reading the clock (`CLOCK_BOOTTIME`), spawning and
//! killing process sessions, and running the floating-IP and mount hooks.
//!
//! **Architecture Invariant:** this is the only crate allowed `unsafe` (one `pre_exec` that
//! calls `setsid`), and the only place the shells read time.
#![allow(unsafe_code)]

pub mod arp;
pub mod clock;
pub mod files;
pub mod hooks;
pub mod ipaddr;
pub mod process;
