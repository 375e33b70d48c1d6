//! Operations: start cluster, start, stop and migrate as the API sees them, with their
//! steps (for `ferry migrate --wait` and `GET /api/v1/operations/ID`), kept for the last
//! thousand; and the refusal a request gets before anything is touched.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ferry_api::Operation;
use ferry_core::TokenName;

/// A refusal answered to the caller.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub error: String,
}

impl ApiError {
    pub fn new(status: u16, error: impl Into<String>) -> Self {
        ApiError { status, error: error.into() }
    }
}

#[derive(Default)]
pub(crate) struct Operations {
    next: AtomicU64,
    ops: Mutex<BTreeMap<u64, Operation>>,
}

const KEEP_OPS: usize = 1_000;

impl Operations {
    pub fn create(&self, kind: &str, target: &str, by: &TokenName) -> u64 {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops.insert(
            id,
            Operation {
                id,
                kind: kind.into(),
                target: target.into(),
                state: "running".into(),
                steps: vec![],
                error: None,
                by: Some(by.to_string()),
            },
        );
        while ops.len() > KEEP_OPS {
            let first = *ops.keys().next().unwrap_or(&0);
            ops.remove(&first);
        }
        id
    }

    pub fn get(&self, id: u64) -> Option<Operation> {
        self.ops.lock().ok()?.get(&id).cloned()
    }

    /// The name of the operator token that asked for operation `id`.
    pub fn by(&self, id: u64) -> Option<String> {
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
