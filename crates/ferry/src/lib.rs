//! ferry: the command line (clap subcommands for every role and client command) and the live
//! demo of the seed's Figures 7-1, 7-2 and 7-3, which runs its domain with ferry-testkit's
//! `Harness` (one host) or `LabDomain` (network-namespace hosts), as the tests do.

// Output goes through `out!`, `outln!` and `errln!`, which survive a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

#[macro_use]
pub mod out;
pub mod args;
pub mod cli;
mod client;
pub mod demo;
pub mod demo_service;
