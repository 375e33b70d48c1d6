//! The state of a server on its machine, as its Node Manager knows it: the first line of
//! the seed's `server.state` file, `GET /nm/v1/servers`, and (with the lease table) the
//! state word of `ferry status`.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerState {
    /// Started; its services do not answer their health checks yet.
    Starting,
    /// Its services answered their health checks.
    Running,
    /// Crashed; to be started again here at once (a lease handover).
    Restarting,
    /// Being stopped (graceful, then forced).
    Stopping,
    /// Not running: never started here, stopped, or it exited cleanly.
    #[default]
    Shutdown,
    /// It fenced itself, or this Node Manager fenced it (rule 3).
    Fenced,
    /// It could not be started here, or crashed too often in a row (rule 9).
    Failed,
    /// It exited with a configuration error (exit 78): starting it again will not help.
    FailedConfig,
}

impl ServerState {
    /// The word as the seed's `server.state` file and the APIs write it.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Starting => "STARTING",
            ServerState::Running => "RUNNING",
            ServerState::Restarting => "RESTARTING",
            ServerState::Stopping => "STOPPING",
            ServerState::Shutdown => "SHUTDOWN",
            ServerState::Fenced => "FENCED",
            ServerState::Failed => "FAILED",
            ServerState::FailedConfig => "FAILED_CONFIG",
        }
    }

    /// Parses [`ServerState::as_str`]'s words.
    pub fn parse(word: &str) -> Option<ServerState> {
        [
            ServerState::Starting,
            ServerState::Running,
            ServerState::Restarting,
            ServerState::Stopping,
            ServerState::Shutdown,
            ServerState::Fenced,
            ServerState::Failed,
            ServerState::FailedConfig,
        ]
        .into_iter()
        .find(|s| s.as_str() == word)
    }
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A server's state in the domain's run-time view (`ferry status`, `GET /api/v1/servers`):
/// what its Node Manager says ([`ServerState`]), judged with the lease table, and the two
/// states only the lease table can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ViewState {
    Starting,
    /// It holds its lease and its Node Manager says its services answer.
    Running,
    Restarting,
    Stopping,
    Shutdown,
    Fenced,
    Failed,
    FailedConfig,
    /// Its lease ran out and no Node Manager runs it.
    Expired,
    /// It holds its lease but its machine's Node Manager does not list it.
    Unknown,
}

impl ViewState {
    /// The word `ferry status` prints.
    pub fn as_str(self) -> &'static str {
        match self.node_state() {
            Some(s) => s.as_str(),
            None if self == ViewState::Expired => "EXPIRED",
            None => "UNKNOWN",
        }
    }

    /// The Node Manager's state this view state repeats, if it is one.
    pub fn node_state(self) -> Option<ServerState> {
        Some(match self {
            ViewState::Starting => ServerState::Starting,
            ViewState::Running => ServerState::Running,
            ViewState::Restarting => ServerState::Restarting,
            ViewState::Stopping => ServerState::Stopping,
            ViewState::Shutdown => ServerState::Shutdown,
            ViewState::Fenced => ServerState::Fenced,
            ViewState::Failed => ServerState::Failed,
            ViewState::FailedConfig => ServerState::FailedConfig,
            ViewState::Expired | ViewState::Unknown => return None,
        })
    }
}

impl From<ServerState> for ViewState {
    fn from(s: ServerState) -> ViewState {
        match s {
            ServerState::Starting => ViewState::Starting,
            ServerState::Running => ViewState::Running,
            ServerState::Restarting => ViewState::Restarting,
            ServerState::Stopping => ViewState::Stopping,
            ServerState::Shutdown => ViewState::Shutdown,
            ServerState::Fenced => ViewState::Fenced,
            ServerState::Failed => ViewState::Failed,
            ServerState::FailedConfig => ViewState::FailedConfig,
        }
    }
}

impl fmt::Display for ViewState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_match_serde() {
        for s in [ServerState::Starting, ServerState::FailedConfig, ServerState::Shutdown] {
            assert_eq!(ServerState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{}\"", s.as_str()));
        }
        assert_eq!(ServerState::parse("running"), None);
        for s in [ViewState::Expired, ViewState::Unknown, ViewState::FailedConfig, ViewState::Running] {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{}\"", s.as_str()));
            assert_eq!(s.node_state().map(ViewState::from).unwrap_or(s), s);
        }
    }
}
