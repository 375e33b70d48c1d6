//! The local channel (`DATA_DIR/nm.sock`): every server this machine runs connects, says
//! `Hello`, then reports (deadlines, state, events) and hands over its renewals. Each line is
//! parsed once, as a [`Report`], and goes where it belongs: renewals to the batcher (they are
//! lease-critical and never wait on the actor), events to the event sink, certificates are
//! issued here, everything else to the actor. A server started by an earlier Node Manager of
//! this machine says hello too: that is how a restarted Node Manager adopts it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_api::{EventSink, Report};
use ferry_core::nodeman::agent::ServerReport;
use ferry_core::nodeman::Hello;
use ferry_core::{Incarnation, LeaseName, MachineName, Mono, ServerName};
use ferry_host::{clock, process};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::actor::{Handle, Msg};
use crate::plumbing::{Record, ServerDirs};
use crate::renewals::{Batcher, Writer};

/// After a failed accept, how long the listener waits before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long writing a certificate to a server may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest line a server may send (a report is a few hundred bytes).
const MAX_LINE: usize = 64 * 1024;

pub(crate) struct Channel {
    pub actor: Handle,
    pub batcher: Batcher,
    pub events: EventSink,
    pub tls: Arc<crate::pki::NmTls>,
    pub dirs: ServerDirs,
    pub machine: MachineName,
}

/// Listens on `path` (mode 0600) for ever (spawn it).
pub(crate) fn listen(path: &Path, channel: Arc<Channel>) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot create the local channel {}", path.display()))?;
    let _ = std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600));
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(channel.clone().serve(stream));
                }
                Err(e) => {
                    tracing::warn!("local channel: {e}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            }
        }
    });
    Ok(())
}

impl Channel {
    /// One connection: `Hello` first, then reports.
    async fn serve(self: Arc<Self>, stream: tokio::net::UnixStream) {
        let (read, write) = stream.into_split();
        let write: Writer = Arc::new(tokio::sync::Mutex::new(write));
        let mut lines = BufReader::new(read).lines();
        let Ok(Some(first)) = lines.next_line().await else { return };
        let Ok(Report::Hello { server, incarnation, pid, epoch, master }) = serde_json::from_str::<Report>(&first)
        else {
            tracing::warn!("ignoring a channel connection that did not start with hello");
            return;
        };
        let pid = pid as i32;
        let hello = Hello {
            server: server.clone(),
            incarnation: incarnation.clone(),
            pid,
            epoch,
            master,
            // It must really be that server, leading its own session.
            is_server_leader: process::is_server_leader(pid, server.as_str()),
            mounted: self.dirs.recorded(&server, Record::Mount),
        };
        if !self.actor.hello(hello).await {
            tracing::warn!("{server}: not accepting incarnation {incarnation} (pid {pid}) on the local channel");
            return;
        }
        while let Ok(Some(line)) = lines.next_line().await {
            if line.len() > MAX_LINE {
                tracing::warn!("{server}: ignoring a {}-byte line on the local channel", line.len());
                continue;
            }
            let Ok(report) = serde_json::from_str::<Report>(&line) else {
                tracing::debug!(server = %server, "ignoring a line that is not a report: {line}");
                continue;
            };
            self.on_report(&server, &incarnation, report, &write).await;
        }
    }

    async fn on_report(&self, server: &ServerName, incarnation: &Incarnation, report: Report, write: &Writer) {
        let to_actor = |report| Msg::Report { server: server.clone(), incarnation: incarnation.clone(), report };
        match report {
            Report::Renew { id, lease, incarnation: inc, epoch, ttl_ms } => {
                // A server may only renew its own lease.
                if lease != LeaseName::Server(server.clone()) || inc != *incarnation {
                    tracing::warn!("{server}: refusing to renew {lease} for incarnation {inc}");
                    return;
                }
                let renewal =
                    ferry_store::Renewal { name: lease, incarnation: inc, epoch, ttl: Duration::from_millis(ttl_ms) };
                self.batcher.push(id, renewal, write.clone());
            }
            Report::Certificate => {
                // A fresh certificate for the server this connection said hello as.
                match self.tls.issuer.issue_server(server.as_str(), &self.tls.creds.ca_pem) {
                    Ok(credentials) => {
                        if let Ok(mut line) = serde_json::to_vec(&ferry_api::Reply::Certificate { credentials }) {
                            line.push(b'\n');
                            let mut w = write.lock().await;
                            let _ = tokio::time::timeout(ANSWER_TIMEOUT, w.write_all(&line)).await;
                        }
                    }
                    Err(e) => tracing::warn!("cannot issue a fresh certificate for {server}: {e}"),
                }
            }
            Report::Event { kind, message, epoch, server: about } => self.events.push(ferry_api::Event {
                id: 0,
                at_ms: clock::wall_ms(),
                source: format!("server/{server}"),
                kind,
                server: Some(about.unwrap_or_else(|| server.clone())),
                machine: Some(self.machine.clone()),
                epoch,
                message,
                by: None,
            }),
            Report::Deadline { at_ms } => {
                self.actor.send(to_actor(ServerReport::Deadline { at: Mono(at_ms) })).await;
            }
            Report::Acquired { epoch } => self.actor.send(to_actor(ServerReport::Acquired { epoch })).await,
            Report::Running => self.actor.send(to_actor(ServerReport::Running)).await,
            Report::Master { held, .. } => self.actor.send(to_actor(ServerReport::Master { held })).await,
            Report::Released => self.actor.send(to_actor(ServerReport::Released)).await,
            Report::Exiting { code } => self.actor.send(to_actor(ServerReport::Exiting { code })).await,
            Report::Hello { .. } => {}
        }
    }
}
