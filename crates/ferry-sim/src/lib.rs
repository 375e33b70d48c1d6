//! ferry-sim: a seeded, deterministic discrete-event simulation of ferry's core state
//! machines (DESIGN §5, "simulation"): the lease `Keeper`, the cluster-master `Planner` and
//! the `NodeManager`, driven by simulated clocks, a simulated lease store and a
//! simulated network with crashes, hangs, freezes, partitions, delays and store outages.
//! The core is sans-IO, so no runtime is involved: the simulator feeds the very same code the
//! shells run, under a clock it controls.
//!
//! Entry points: [`run`] one seed, or [`run_scenario`] a hand-edited [`Scenario`]; the
//! [`Outcome`] lists the [`Violation`]s of the properties in [`check`]. See the crate's
//! README for what is modeled and what is not, and for how to replay a seed.
//!
//! **Architecture Invariant:** one seed, one run. Nothing reads a real clock, iterates a hash
//! map, or depends on thread timing; the trace of a seed is the same on every machine.

pub mod check;
pub mod clock;
pub mod net;
pub mod scenario;
pub mod sim;
pub mod store;

pub use check::{Property, Run, Violation};
pub use scenario::{Fault, Links, ProcTarget, Scenario, ServerSpec, SimConfig, Target, FAULTS_FROM_MS};
pub use sim::{run, run_scenario, Outcome, Stats};
