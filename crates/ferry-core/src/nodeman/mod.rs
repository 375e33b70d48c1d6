//! The Node Manager's decisions (DESIGN §1: "the only thing that starts, stops and kills
//! servers on its machine"), sans-IO like the rest of the core:
//!
//! * [`supervisor`]: what to do when a server exits, when its lease deadline passes (rule
//!   3), whether a cluster master's command is stale (rule 5), and who brings back a server
//!   that fenced itself ([`after_fence`]).
//! * [`agent`]: the whole Node Manager as one state machine ([`NodeManager`]): a command
//!   (start, stop), what the lease table says and what runs on the machine go in; what to do
//!   (read the table, kill, plumb, spawn, answer) comes out. ferry-nodemanager performs the
//!   actions and feeds their outcomes back; ferry-sim does the same under a simulated clock,
//!   so the simulation proves the code that runs.
//! * [`refusal`]: why a command is refused, with its HTTP status in one place.
//! * [`state`]: the state words of a server on its machine.

pub mod agent;
pub mod refusal;
pub mod state;
pub mod supervisor;

pub use agent::{Ack, Action, Command, Hello, NodeManager, NodeManagerTiming, Origin, ServerView, Teardown};
pub use refusal::Refusal;
pub use state::{ServerState, ViewState};
pub use supervisor::{after_fence, AfterFence, ExitKind, RestartPolicy, StaleMaster, Supervisor, SupervisorAction};
