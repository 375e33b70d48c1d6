//! The admin's view of each machine: what its Node Manager last said it runs, and when.
//!
//! `ferry status` and `ferry machines` answer from these views instead of waiting on every
//! Node Manager at every call, so a machine that does not answer (dead, cut off, or its
//! Node Manager hung) costs them nothing: it is shown as last seen, marked stale, with the
//! age of what is shown. The views are kept current two ways, each bounded:
//!
//! - a background round ([`keep_polling`]) asks every Node Manager every [`POLL_INTERVAL`],
//!   at most one request in flight per machine, each bounded by [`POLL_TIMEOUT`];
//! - a reader asks for fresh views first ([`Views::refresh`]): machines whose last poll
//!   answered are asked again (or the poll in flight is joined) and waited for until
//!   [`FRESH_DEADLINE`] after that poll started; a machine whose last poll failed, or whose
//!   poll in flight is older than that, is not waited for at all.
//!
//! So a live domain reads fresh truth at every call, and a dead Node Manager delays at most
//! the calls of the first [`FRESH_DEADLINE`] after it stopped answering. Operations that need
//! the truth of one machine ask it directly and record what they learn here too
//! ([`Views::record`]). Nothing is persisted: a restarted admin rebuilds every view from the
//! Node Managers (crash-only).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_api::{NmClient, NmServer};
use ferry_core::{MachineName, Mono};
use ferry_host::clock;

/// How often the background round asks each Node Manager what it runs.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The bound on one poll (connect and answer).
pub(crate) const POLL_TIMEOUT: Duration = Duration::from_millis(1_500);
/// How long a reader waits for a fresh answer from a Node Manager that answered its last
/// poll, counted from the start of the poll it waits for. A live one answers in a few ms.
pub(crate) const FRESH_DEADLINE: Duration = Duration::from_millis(250);
/// A view whose last answer is older than this (a couple of polls and a timeout) is stale.
pub(crate) const STALE_AFTER_MS: u64 = 3_000;

/// What the admin knows of one machine's Node Manager.
#[derive(Debug, Clone)]
pub(crate) struct View {
    /// The Node Manager's address this view is of.
    pub addr: String,
    /// What it said at its last answer.
    pub servers: Vec<NmServer>,
    /// When it last answered.
    pub answered_at: Option<Mono>,
    /// Why the last poll failed; `None` when it answered.
    pub error: Option<String>,
    /// When the poll in flight started.
    polling_since: Option<Mono>,
    /// The start of the poll whose outcome this view holds (an older one finishing later
    /// does not overwrite it).
    outcome_of: Option<Mono>,
    /// Bumped at every recorded outcome, for readers that wait for one.
    outcomes: u64,
}

impl View {
    fn new(addr: &str) -> View {
        View {
            addr: addr.to_string(),
            servers: Vec::new(),
            answered_at: None,
            error: None,
            polling_since: None,
            outcome_of: None,
            outcomes: 0,
        }
    }

    /// A view as a poll left it (tests of what is made of views).
    #[cfg(test)]
    pub fn at(addr: &str, servers: Vec<NmServer>, answered_at: Option<Mono>, error: Option<&str>) -> View {
        View { servers, answered_at, error: error.map(Into::into), ..View::new(addr) }
    }

    /// Milliseconds since the Node Manager last answered; `None` if it never did.
    pub fn age_ms(&self, now: Mono) -> Option<u64> {
        self.answered_at.map(|t| now.since(t))
    }

    /// Older than a couple of polls, or never answered.
    pub fn stale(&self, now: Mono) -> bool {
        self.age_ms(now).is_none_or(|a| a > STALE_AFTER_MS)
    }

    /// What the Node Manager says is current: it answered its last poll, lately.
    pub fn fresh(&self, now: Mono) -> bool {
        self.error.is_none() && !self.stale(now)
    }

    /// Why what is shown may not be current, for a view that is not fresh.
    pub fn problem(&self, now: Mono) -> String {
        match (&self.error, self.age_ms(now)) {
            (Some(e), _) => e.clone(),
            (None, None) => "not answered yet".to_string(),
            (None, Some(age)) => format!("no answer for {age} ms"),
        }
    }
}

/// Every machine's view (a leaf cache: each poll writes its outcome, readers copy).
#[derive(Default)]
pub(crate) struct Views {
    machines: Mutex<BTreeMap<MachineName, View>>,
    /// Wakes readers waiting for an outcome.
    changed: tokio::sync::Notify,
}

impl Views {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<MachineName, View>> {
        self.machines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the view of each of `machines` (name and Node Manager address), in that
    /// order; a machine never asked yet (or whose address changed) has an empty view.
    pub fn snapshot(&self, machines: &[(MachineName, String)]) -> Vec<(MachineName, View)> {
        let views = self.lock();
        machines
            .iter()
            .map(|(m, addr)| {
                let v = views.get(m).filter(|v| &v.addr == addr).cloned().unwrap_or_else(|| View::new(addr));
                (m.clone(), v)
            })
            .collect()
    }

    /// Forgets machines no longer in `machines`, and views of an old address.
    pub fn retain(&self, machines: &[(MachineName, String)]) {
        self.lock().retain(|m, v| machines.iter().any(|(n, a)| n == m && a == &v.addr));
    }

    /// Marks a poll of `machine` as started at `now`, unless one is in flight.
    fn begin(&self, machine: &MachineName, addr: &str, now: Mono) -> bool {
        let mut views = self.lock();
        let v = views.entry(machine.clone()).or_insert_with(|| View::new(addr));
        if v.addr != addr {
            *v = View::new(addr);
        }
        if v.polling_since.is_some() {
            return false;
        }
        v.polling_since = Some(now);
        true
    }

    /// Records what asking `machine`'s Node Manager at `asked` (its address `addr`) gave:
    /// from a poll of this module, or from an operation that asked it directly.
    pub fn record(&self, machine: &MachineName, addr: &str, asked: Mono, result: &Result<Vec<NmServer>, String>) {
        let now = clock::now();
        {
            let mut views = self.lock();
            let v = views.entry(machine.clone()).or_insert_with(|| View::new(addr));
            if v.addr != addr {
                return;
            }
            if v.polling_since == Some(asked) {
                v.polling_since = None;
            }
            if v.outcome_of.is_some_and(|t| t > asked) {
                return;
            }
            v.outcome_of = Some(asked);
            v.outcomes += 1;
            match result {
                Ok(list) => {
                    v.servers = list.clone();
                    v.answered_at = Some(now);
                    v.error = None;
                }
                Err(e) => v.error = Some(e.clone()),
            }
        }
        self.changed.notify_waiters();
    }

    /// Starts a poll of `machine` with `client` in the background, unless one is in flight;
    /// its outcome is recorded. Returns when it started, if it did.
    pub fn poll(self: &Arc<Self>, machine: MachineName, addr: String, client: NmClient) -> Option<Mono> {
        let asked = clock::now();
        if !self.begin(&machine, &addr, asked) {
            return None;
        }
        let views = self.clone();
        tokio::spawn(async move {
            let result = client.servers().await.map_err(|e| e.to_string());
            views.record(&machine, &addr, asked, &result);
        });
        Some(asked)
    }

    /// Asks for fresh views of `machines` (with their clients) and waits, within the bounds
    /// the module doc gives, for those worth waiting for.
    pub async fn refresh(self: &Arc<Self>, machines: Vec<(MachineName, String, NmClient)>) {
        let now = clock::now();
        // For each machine worth waiting for: the outcome count to pass, and until when.
        let mut waits = Vec::new();
        for (m, addr, client) in machines {
            // Worth waiting for: it answered its last poll, or was never asked yet.
            let (answered_last, in_flight_since, outcomes) = {
                let views = self.lock();
                match views.get(&m).filter(|v| v.addr == addr) {
                    Some(v) => (v.error.is_none(), v.polling_since, v.outcomes),
                    None => (true, None, 0),
                }
            };
            let Some(started) = in_flight_since.or_else(|| self.poll(m.clone(), addr, client)) else { continue };
            let until = started + FRESH_DEADLINE.as_millis() as u64;
            if answered_last && until > now {
                waits.push((m, outcomes, until));
            }
        }
        for (m, outcomes, until) in waits {
            loop {
                let notified = self.changed.notified();
                let done = self.lock().get(&m).is_none_or(|v| v.outcomes > outcomes);
                let left = until.since(clock::now());
                if done || left == 0 {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(left), notified).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Node Manager that accepts connections and never answers (as one in SIGSTOP does:
    /// the kernel completes the handshake, nothing more happens): a reader asks it once, waits
    /// at most until the deadline, and the next reader does not wait at all, while the poll
    /// (whose own bound is long here) is still in flight.
    #[tokio::test]
    async fn a_reader_never_waits_for_a_node_manager_that_hangs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ferry_tls::Ca::load_or_create(dir.path(), "t").unwrap();
        let creds = ca.issue(&ferry_tls::Identity::Admin).unwrap();
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let m = MachineName::new("m1").unwrap();
        let client = NmClient::new(&addr, "m1", &creds, Duration::from_secs(600));
        let views = Arc::new(Views::default());
        let in_flight = |views: &Views| {
            let v = views.snapshot(&[(m.clone(), addr.clone())]).remove(0).1;
            (v.polling_since.is_some(), v.outcomes, v.answered_at)
        };

        views.refresh(vec![(m.clone(), addr.clone(), client.clone())]).await;
        assert_eq!(in_flight(&views), (true, 0, None), "the first reader stopped waiting; the poll goes on");
        let started = views.lock()[&m].polling_since;
        views.refresh(vec![(m.clone(), addr.clone(), client.clone())]).await;
        assert_eq!(in_flight(&views), (true, 0, None));
        assert_eq!(views.lock()[&m].polling_since, started, "no second poll while one is in flight");

        // Its poll fails (here: an answer recorded as failed): readers no longer wait for it.
        views.record(&m, &addr, started.unwrap(), &Err("did not answer".into()));
        let v = views.snapshot(&[(m.clone(), addr.clone())]).remove(0).1;
        assert_eq!((v.error.as_deref(), v.polling_since), (Some("did not answer"), None));
        // A result of an older poll does not overwrite a newer one.
        views.record(&m, &addr, Mono(0), &Ok(vec![]));
        assert_eq!(views.snapshot(&[(m.clone(), addr.clone())]).remove(0).1.error.as_deref(), Some("did not answer"));
        drop(silent);
    }
}
