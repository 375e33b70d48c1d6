//! The server's side of its local channel to its Node Manager (rule 3's deadline reports,
//! state, events): JSON lines over the Node Manager's Unix socket. If the Node Manager
//! restarts, the next report reconnects and introduces itself again with `Hello`, followed
//! by the latest deadline, so the new Node Manager adopts the server and its fence works at
//! once. Writes are short and time-limited so a stuck Node Manager cannot hold the server.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_api::Report;
use ferry_core::Epoch;

/// Lines kept while the Node Manager is away (events mostly; the deadline is kept apart).
const BUFFER: usize = 200;

/// The server's side of the channel; the runtime keeps one and passes it around.
pub(crate) struct Channel {
    path: Option<String>,
    state: Mutex<State>,
    /// Where the Node Manager's replies go (the runtime's channel).
    on_reply: Box<dyn Fn(ferry_api::Reply) + Send + Sync>,
}

#[derive(Default)]
struct State {
    stream: Option<UnixStream>,
    hello: Option<Report>,
    last_deadline: Option<String>,
    pending: VecDeque<String>,
}

impl Channel {
    /// The channel to the Node Manager at `path` (none: reports go to stdout), who the
    /// server is, and what to do with the Node Manager's replies (read on a thread of their
    /// own).
    pub fn new(
        path: Option<String>,
        hello: Report,
        on_reply: Box<dyn Fn(ferry_api::Reply) + Send + Sync>,
    ) -> Arc<Self> {
        Arc::new(Channel { path, state: Mutex::new(State { hello: Some(hello), ..Default::default() }), on_reply })
    }

    /// Updates what the next `Hello` says (epoch and master role), for a reconnect.
    pub fn update_hello(&self, epoch: Option<Epoch>, master: Option<bool>) {
        if let Ok(mut st) = self.state.lock() {
            if let Some(Report::Hello { epoch: e, master: m, .. }) = st.hello.as_mut() {
                if epoch.is_some() {
                    *e = epoch;
                }
                if let Some(v) = master {
                    *m = v;
                }
            }
        }
    }

    /// Sends one report; never blocks for long, never fails the caller. True when it
    /// reached a connected Node Manager (a renewal handed over can then be answered).
    pub fn send(self: &Arc<Self>, r: &Report) -> bool {
        let Ok(line) = serde_json::to_string(r) else {
            return false;
        };
        let Some(path) = self.path.as_deref() else {
            stdout_line(&line);
            return false;
        };
        let Ok(mut st) = self.state.lock() else { return false };
        if matches!(r, Report::Deadline { .. }) {
            st.last_deadline = Some(line.clone());
        }
        if st.stream.is_none() {
            connect(self, &mut st, path);
        }
        let ok = match st.stream.as_mut() {
            Some(s) => write_line(s, &line).is_ok(),
            None => false,
        };
        if !ok {
            st.stream = None;
            // Deadlines are re-sent on reconnect; a renewal is retried by the keeper instead.
            if !matches!(r, Report::Deadline { .. } | Report::Renew { .. }) {
                if st.pending.len() >= BUFFER {
                    st.pending.pop_front();
                }
                st.pending.push_back(line);
            }
        }
        ok
    }
}

fn connect(ch: &Arc<Channel>, st: &mut State, path: &str) {
    let Ok(mut s) = UnixStream::connect(path) else {
        return;
    };
    let _ = s.set_write_timeout(Some(Duration::from_millis(50)));
    let mut lines: Vec<String> = Vec::new();
    if let Some(h) = st.hello.as_ref().and_then(|h| serde_json::to_string(h).ok()) {
        lines.push(h);
    }
    if let Some(d) = st.last_deadline.clone() {
        lines.push(d);
    }
    lines.extend(st.pending.iter().cloned());
    for l in &lines {
        if write_line(&mut s, l).is_err() {
            return;
        }
    }
    st.pending.clear();
    // The Node Manager's replies come back on the same connection.
    if let Ok(reader) = s.try_clone() {
        let ch = ch.clone();
        std::thread::spawn(move || read_replies(&ch, reader));
    }
    st.stream = Some(s);
}

fn read_replies(ch: &Channel, stream: UnixStream) {
    use std::io::BufRead;
    for line in std::io::BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if let Ok(reply) = serde_json::from_str::<ferry_api::Reply>(&line) {
            (ch.on_reply)(reply);
        }
    }
}

fn write_line(s: &mut UnixStream, line: &str) -> std::io::Result<()> {
    s.write_all(line.as_bytes())?;
    s.write_all(b"\n")?;
    s.flush()
}

fn stdout_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
