//! An event sink: daemons queue events for the Administration Server's audit trail and a
//! background task delivers them, retrying while the admin is down. The queue is bounded
//! (STYLE habit 7): when full, the oldest events are dropped and the loss is counted.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client::AdminClient;
use ferry_core::{Epoch, MachineName, ServerName};

use crate::types::{Event, EventKind};

const CAPACITY: usize = 2_000;
const BATCH: usize = 200;

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Event>,
    dropped: u64,
}

#[derive(Debug, Clone)]
pub struct EventSink {
    source: String,
    queue: Arc<Mutex<Queue>>,
    notify: Arc<tokio::sync::Notify>,
    wall_ms: fn() -> u64,
}

impl EventSink {
    /// A sink for events from `source`; `wall_ms` stamps them (the shell's wall clock).
    pub fn new(source: impl Into<String>, wall_ms: fn() -> u64) -> Self {
        EventSink { source: source.into(), queue: Arc::default(), notify: Arc::default(), wall_ms }
    }

    /// Records an event: logged at once, delivered to the admin when it can be.
    pub fn emit(
        &self,
        kind: EventKind,
        server: Option<&ServerName>,
        machine: Option<&MachineName>,
        epoch: Option<Epoch>,
        message: impl Into<String>,
    ) {
        let message = message.into();
        tracing::info!(
            kind = kind.as_str(),
            server = server.map_or("", |s| s),
            epoch = epoch.map(|e| e.0),
            "{message}"
        );
        self.push(Event {
            id: 0,
            at_ms: (self.wall_ms)(),
            source: self.source.clone(),
            kind,
            server: server.cloned(),
            machine: machine.cloned(),
            epoch,
            message,
            by: None,
        });
    }

    /// Queues an event built elsewhere (a server's report relayed by its Node Manager).
    pub fn push(&self, event: Event) {
        if let Ok(mut q) = self.queue.lock() {
            if q.events.len() >= CAPACITY {
                q.events.pop_front();
                q.dropped += 1;
            }
            q.events.push_back(event);
        }
        self.notify.notify_one();
    }

    /// Delivers queued events to the admin for ever (spawn it).
    pub async fn deliver(self, admin: AdminClient) {
        loop {
            let batch: Vec<Event> = match self.queue.lock() {
                Ok(q) => q.events.iter().take(BATCH).cloned().collect(),
                Err(_) => return,
            };
            if batch.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.notify.notified()).await;
                continue;
            }
            match admin.post_events(&batch).await {
                Ok(_) => {
                    if let Ok(mut q) = self.queue.lock() {
                        let n = batch.len().min(q.events.len());
                        q.events.drain(..n);
                    }
                }
                Err(e) => {
                    tracing::debug!("events not delivered yet: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
