//! Operations: start cluster, start, stop and migrate as the API sees them, with their
//! steps (for `ferry migrate --wait` and `GET /api/v1/operations/ID`), kept for the last
//! thousand; and the refusal a request gets before anything is touched.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ferry_api::{Operation, OperationKind, OperationState};
use ferry_core::TokenName;

/// Why a request is refused before anything is touched, each with its HTTP status
/// ([`ApiError::status`], the one place that maps them; `errors.rs` answers with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    BadName(#[from] ferry_core::ids::NameError),
    #[error("unknown {what} {name}: domain {domain} defines {known}")]
    Unknown { what: &'static str, name: String, domain: String, known: String },
    #[error("cannot read the lease table: {0}")]
    TableUnreadable(String),
    #[error(
        "{server} is already running on {machine} (epoch {epoch}, lease {remaining_ms} ms left); to move it use `ferry migrate {server} --to MACHINE`"
    )]
    AlreadyRunning { server: String, machine: String, epoch: u64, remaining_ms: i64 },
    #[error("{0} is not running")]
    NotRunning(String),
    #[error("{target} is not a candidate machine for {server}: it may run on {allowed}")]
    NotACandidate { target: String, server: String, allowed: String },
    #[error("{server} is already running on {target}")]
    AlreadyThere { server: String, target: String },
}

impl ApiError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadName(_) => 400,
            ApiError::Unknown { .. } => 404,
            ApiError::TableUnreadable(_) => 503,
            ApiError::AlreadyRunning { .. }
            | ApiError::NotRunning(_)
            | ApiError::NotACandidate { .. }
            | ApiError::AlreadyThere { .. } => 409,
        }
    }

    /// An unknown `what` (server, cluster, machine) of `domain`, naming those it defines.
    pub fn unknown<'a>(what: &'static str, name: &str, domain: &str, known: impl Iterator<Item = &'a str>) -> Self {
        ApiError::Unknown {
            what,
            name: name.to_string(),
            domain: domain.to_string(),
            known: known.collect::<Vec<_>>().join(", "),
        }
    }
}

#[derive(Default)]
pub(crate) struct Operations {
    next: AtomicU64,
    ops: Mutex<BTreeMap<u64, Operation>>,
}

const KEEP_OPS: usize = 1_000;

impl Operations {
    /// A new operation, running: what the caller answers at once (it is then carried out
    /// in the background, its steps and outcome recorded under its `id`).
    pub fn create(&self, kind: OperationKind, target: &str, by: &TokenName) -> Operation {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let op = Operation {
            id,
            kind,
            target: target.into(),
            state: OperationState::Running,
            steps: vec![],
            error: None,
            by: Some(by.clone()),
        };
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops.insert(id, op.clone());
        while ops.len() > KEEP_OPS {
            let first = *ops.keys().next().unwrap_or(&0);
            ops.remove(&first);
        }
        op
    }

    pub fn get(&self, id: u64) -> Option<Operation> {
        self.ops.lock().ok()?.get(&id).cloned()
    }

    /// The name of the operator token that asked for operation `id`.
    pub fn by(&self, id: u64) -> Option<TokenName> {
        self.ops.lock().ok()?.get(&id).and_then(|o| o.by.clone())
    }

    pub fn update(&self, id: u64, f: impl FnOnce(&mut Operation)) {
        if let Ok(mut ops) = self.ops.lock() {
            if let Some(op) = ops.get_mut(&id) {
                f(op);
            }
        }
    }
}
