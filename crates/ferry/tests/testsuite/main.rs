//! ferry's one integration test binary (STYLE habit 11): whole domains of real processes.
//!
//! * `process`: on loopback (DESIGN §5 "processes"): an Administration Server and three Node
//!   Managers with fast timings, failures injected with real signals, the safety property
//!   checked on the services' own journals.
//! * `hosts`: on lab hosts (DESIGN §5 "hosts"): every machine a network namespace, floating
//!   IPs that really move, a client namespace asking who answers. Needs root and the lab's
//!   tools; without them a test says why it did not run (and fails under `CI=true`).
//!
//! Every test that starts a domain holds [`SERIAL`]: one domain at a time, loopback or lab.
//! One part at a time: `cargo test -p ferry --test testsuite process::` (or `hosts::`, or a
//! test's name).

use std::path::Path;
use std::time::Duration;

mod hosts;
mod process;

/// One domain at a time, across both parts: two cores shared by parallel domains would make
/// leases of a few hundred milliseconds flap for reasons that have nothing to do with the
/// test. (Before the parts shared a binary, cargo ran them one after the other.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a test waits for what should happen in a second or two.
const PATIENCE: Duration = Duration::from_secs(30);

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}
