//! The event log: the audit trail of the domain. Appended to `events.jsonl` in the data
//! directory (so it survives restarts), the newest [`KEEP`] kept in memory (what the API
//! serves, page by page), and broadcast to `GET /api/v1/events/stream` subscribers.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use ferry_api::Event;

/// How many events the admin keeps in memory; older ones are only in `events.jsonl`.
pub(crate) const KEEP: usize = ferry_api::EVENTS_KEPT;

pub(crate) struct EventLog {
    inner: Mutex<Inner>,
    pub tx: tokio::sync::broadcast::Sender<Event>,
}

struct Inner {
    events: VecDeque<Event>,
    next_id: u64,
    file: Option<std::fs::File>,
    path: PathBuf,
}

impl EventLog {
    pub fn open(path: PathBuf) -> EventLog {
        let mut events = VecDeque::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                if let Ok(e) = serde_json::from_str::<Event>(line) {
                    events.push_back(e);
                    if events.len() > KEEP {
                        events.pop_front();
                    }
                }
            }
        }
        let next_id = events.back().map_or(1, |e| e.id + 1);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path).ok();
        let (tx, _) = tokio::sync::broadcast::channel(1024);
        EventLog { inner: Mutex::new(Inner { events, next_id, file, path }), tx }
    }

    pub fn append(&self, mut e: Event) -> u64 {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        e.id = g.next_id;
        g.next_id += 1;
        if let Some(f) = g.file.as_mut() {
            if let Ok(line) = serde_json::to_string(&e) {
                if writeln!(f, "{line}").is_err() {
                    tracing::warn!("cannot append to {}", g.path.display());
                }
            }
        }
        g.events.push_back(e.clone());
        if g.events.len() > KEEP {
            g.events.pop_front();
        }
        let id = e.id;
        drop(g);
        let _ = self.tx.send(e);
        id
    }

    pub fn since(&self, since: u64, limit: usize) -> Vec<Event> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.events.iter().filter(|e| e.id > since).take(limit).cloned().collect()
    }

    /// The oldest event held in memory (`None` when none is) and the newest id recorded.
    pub fn bounds(&self) -> (Option<u64>, u64) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (g.events.front().map(|e| e.id), g.next_id - 1)
    }

    pub fn count(&self) -> u64 {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.next_id - 1
    }
}
