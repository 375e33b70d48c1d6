//! ferry: the command line (clap subcommands for every role and client command), the live
//! demo of the seed's Figures 7-1, 7-2 and 7-3, and the harness that starts a whole domain
//! of real processes on one host (shared by the demo, the process tests and the benchmark).

// Output goes through `out!`, `outln!` and `errln!`, which survive a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

#[macro_use]
pub mod out;
pub mod args;
pub mod cli;
mod client;
pub mod demo;
pub mod demo_service;
pub mod harness;
pub mod labdomain;
