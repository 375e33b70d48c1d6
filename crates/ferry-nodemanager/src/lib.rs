//! ferry-nodemanager: the Node Manager (DESIGN §1). The only thing that starts, stops and
//! kills servers on its machine. It runs each `ferry server` as a session leader, relays its
//! reports, fences it when its lease deadline passes (rule 3), restarts it at once when it
//! crashes (handing the lease over, rule 4), moves floating IPs and mounts through hooks, and
//! refuses callers without the domain secret and commands from deposed masters (rule 5).

mod http;
mod manager;
pub mod pki;

pub use manager::{run, NmOptions};
