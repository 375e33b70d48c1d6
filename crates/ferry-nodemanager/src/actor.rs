//! The Node Manager's one owner of state (STYLE habit 17): a task that holds ferry-core's
//! `NodeManager` (the decisions), the domain, the children it waits for and the answers it
//! owes, fed by [`Msg`]. HTTP handlers and the local channel send it messages and await
//! answers; every action that does I/O runs as a side task that reports back with a message,
//! so the loop never waits on a hook, the lease table or a process while a deadline is due.
//! Kills, signals and spawns are immediate and happen in the loop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_api::{EventSink, NmAck, NmServer, VersionedDomain};
use ferry_core::lease::Lease;
use ferry_core::nodeman::agent::{CommandId, ServerReport};
use ferry_core::nodeman::{Action, Command, Hello, NodeManager, Origin, Refusal};
use ferry_core::{ClusterName, Epoch, Incarnation, LeaseName, MachineName, Mono, ServerName};
use ferry_host::{clock, files, process};
use ferry_store::LeaseStore;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use crate::plumbing::{self, ServerDirs, SpawnPlan};

/// The fence loop woke this much later than the deadline it slept for: the Node Manager was
/// not running (stopped, frozen, starved); see [`Actor::run`].
const LATE_WAKE: Duration = Duration::from_millis(100);
/// How long it then lets the local channel's readers deliver what queued up before it judges
/// any deadline.
const CATCH_UP: Duration = Duration::from_millis(20);
/// How often an adopted server (not a child) is checked for its end.
const WATCH_EVERY: Duration = Duration::from_millis(20);
/// The queue of messages to the actor (STYLE habit 7).
const QUEUE: usize = 4_096;

/// What the actor is told.
pub(crate) enum Msg {
    /// A command from the admin or a cluster master.
    Command {
        server: ServerName,
        origin: Origin,
        command: Command,
        reply: oneshot::Sender<Result<NmAck, Refusal>>,
    },
    /// What runs here (`GET /nm/v1/servers`).
    Servers {
        reply: oneshot::Sender<Vec<NmServer>>,
    },
    /// A server said hello on the local channel; whether it is accepted.
    Hello {
        hello: Hello,
        reply: oneshot::Sender<bool>,
    },
    Report {
        server: ServerName,
        incarnation: Incarnation,
        report: ServerReport,
    },
    /// A newer configuration from the admin.
    Domain(VersionedDomain),
    // Outcomes of the side tasks.
    LeaseRead {
        server: ServerName,
        result: Result<Option<Lease>, String>,
    },
    LeasesRead {
        server: ServerName,
        result: Result<(Option<Lease>, Option<Lease>), String>,
    },
    OrphanKilled {
        server: ServerName,
        pid: Option<i32>,
    },
    Plumbed {
        server: ServerName,
        result: Result<String, (String, bool)>,
    },
    Mounted {
        server: ServerName,
        result: Result<String, String>,
    },
    TornDown {
        server: ServerName,
        ip: Option<Result<String, String>>,
        unmount: Option<Result<String, String>>,
    },
    Released {
        server: ServerName,
        result: Result<(), String>,
    },
    Exited {
        server: ServerName,
        incarnation: Incarnation,
        code: Option<i32>,
        description: String,
    },
}

/// How the rest of the Node Manager talks to the actor.
#[derive(Clone)]
pub(crate) struct Handle {
    tx: mpsc::Sender<Msg>,
}

impl Handle {
    pub async fn send(&self, msg: Msg) {
        let _ = self.tx.send(msg).await;
    }

    /// A command's answer (or that the Node Manager is shutting down).
    pub async fn command(
        &self,
        server: ServerName,
        origin: Origin,
        command: Command,
    ) -> Option<Result<NmAck, Refusal>> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Command { server, origin, command, reply }).await;
        rx.await.ok()
    }

    pub async fn servers(&self) -> Vec<NmServer> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Servers { reply }).await;
        rx.await.unwrap_or_default()
    }

    pub async fn hello(&self, hello: Hello) -> bool {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Hello { hello, reply }).await;
        rx.await.unwrap_or(false)
    }
}

/// What the actor needs from the daemon around it.
pub(crate) struct Env {
    pub machine: MachineName,
    pub ferry_exe: PathBuf,
    pub admin_url: String,
    pub channel: PathBuf,
    pub data_dir: PathBuf,
    pub tls: Arc<crate::pki::NmTls>,
    pub store: Arc<dyn LeaseStore>,
    pub events: EventSink,
}

pub(crate) struct Actor {
    env: Arc<Env>,
    nm: NodeManager,
    domain: VersionedDomain,
    dirs: ServerDirs,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    next_id: CommandId,
    replies: BTreeMap<CommandId, oneshot::Sender<Result<NmAck, Refusal>>>,
    /// The state files are written off the loop, newest state last.
    states: mpsc::UnboundedSender<(ServerName, ferry_core::nodeman::ServerState)>,
    epochs: mpsc::UnboundedSender<BTreeMap<ClusterName, Epoch>>,
}

impl Actor {
    pub fn new(env: Env, nm: NodeManager, domain: VersionedDomain) -> (Actor, Handle) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dirs = ServerDirs::new(&env.data_dir);
        let (states, mut state_rx) = mpsc::unbounded_channel::<(ServerName, ferry_core::nodeman::ServerState)>();
        let writer = dirs.clone();
        tokio::spawn(async move {
            while let Some((server, state)) = state_rx.recv().await {
                let w = writer.clone();
                let _ = tokio::task::spawn_blocking(move || w.write_state(&server, state)).await;
            }
        });
        let (epochs, mut epochs_rx) = mpsc::unbounded_channel::<BTreeMap<ClusterName, Epoch>>();
        let path = env.data_dir.join("master-epochs.json");
        tokio::spawn(async move {
            // Rule 5 must survive a restart of this Node Manager. Written off the command's
            // path (an fsync): the command was already checked against the master lease.
            while let Some(mut latest) = epochs_rx.recv().await {
                while let Ok(newer) = epochs_rx.try_recv() {
                    latest = newer;
                }
                let map: BTreeMap<String, u64> = latest.iter().map(|(c, e)| (c.to_string(), e.0)).collect();
                let path = path.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let bytes = serde_json::to_vec(&map).map_err(std::io::Error::other)?;
                    files::write_atomic(&path, &bytes, 0o600)
                })
                .await;
                if !matches!(r, Ok(Ok(()))) {
                    tracing::warn!("cannot persist master epochs: {r:?}");
                }
            }
        });
        let handle = Handle { tx: tx.clone() };
        (
            Actor {
                env: Arc::new(env),
                nm,
                domain,
                dirs,
                tx,
                rx,
                next_id: 0,
                replies: BTreeMap::new(),
                states,
                epochs,
            },
            handle,
        )
    }

    /// Removes what an earlier Node Manager left in place for servers gone (before commands
    /// are taken).
    pub async fn remove_leftovers(&mut self) {
        let found = plumbing::leftovers(&self.dirs, &self.domain.domain, &self.env.machine).await;
        let actions = self.nm.leftovers(clock::now(), &self.domain.domain, found);
        self.perform(actions);
    }

    /// Runs until every handle is dropped.
    pub async fn run(mut self) {
        // The deadline this loop last woke late for and let the readers catch up on.
        let mut caught_up: Option<Mono> = None;
        loop {
            let next = self.nm.next_wakeup();
            let wake = async {
                match next {
                    Some(at) => clock::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(m) => self.handle(m),
                    None => return,
                },
                _ = wake => {
                    // Woken long after the deadline it slept for: this Node Manager itself
                    // did not run. Its servers' newer deadlines may wait unread on the local
                    // channel: let the readers deliver them before any deadline is judged,
                    // or a healthy server would be killed for this process's pause.
                    if next != caught_up && next.is_some_and(|at| clock::now().since(at) > LATE_WAKE.as_millis() as u64) {
                        caught_up = next;
                        let until = clock::now() + CATCH_UP;
                        while clock::now() < until {
                            match tokio::time::timeout(Duration::from_millis(until.since(clock::now()).max(1)), self.rx.recv()).await {
                                Ok(Some(m)) => self.handle(m),
                                Ok(None) => return,
                                Err(_) => break,
                            }
                        }
                        continue;
                    }
                    let actions = self.nm.tick(clock::now(), &self.domain.domain);
                    self.perform(actions);
                }
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        let now = clock::now();
        let d = self.domain.domain.clone();
        let actions = match msg {
            Msg::Command { server, origin, command, reply } => {
                self.next_id += 1;
                let id = self.next_id;
                self.replies.insert(id, reply);
                self.nm.command(now, &d, id, &server, origin, command)
            }
            Msg::Servers { reply } => {
                let _ = reply.send(self.servers(now));
                return;
            }
            Msg::Hello { hello, reply } => {
                let (ok, actions) = self.nm.hello(now, &d, hello);
                let _ = reply.send(ok);
                actions
            }
            Msg::Report { server, incarnation, report } => self.nm.report(now, &d, &server, &incarnation, report),
            Msg::Domain(v) => {
                self.domain = v;
                return;
            }
            Msg::LeaseRead { server, result } => self.nm.lease_read(now, &d, &server, result),
            Msg::LeasesRead { server, result } => self.nm.leases_read(now, &d, &server, result),
            Msg::OrphanKilled { server, pid } => self.nm.orphan_killed(now, &d, &server, pid),
            Msg::Plumbed { server, result } => self.nm.plumbed(now, &d, &server, result),
            Msg::Mounted { server, result } => self.nm.mounted(now, &d, &server, result),
            Msg::TornDown { server, ip, unmount } => self.nm.torn_down(now, &d, &server, ip, unmount),
            Msg::Released { server, result } => self.nm.released(now, &d, &server, result),
            Msg::Exited { server, incarnation, code, description } => {
                self.nm.exited(now, &d, &server, &incarnation, code, description)
            }
        };
        self.perform(actions);
    }

    fn servers(&self, now: Mono) -> Vec<NmServer> {
        self.nm
            .servers()
            .into_iter()
            .map(|v| NmServer {
                name: v.server,
                state: v.state,
                pid: v.pid,
                incarnation: v.incarnation,
                epoch: v.epoch,
                deadline_in_ms: v.deadline.map(|d| d.0 as i64 - now.0 as i64),
                restarts: v.restarts,
                last_exit: v.last_exit,
                master: v.master,
            })
            .collect()
    }

    /// Performs the core's actions: immediate ones here, I/O as side tasks that answer with
    /// a [`Msg`]. An action answered at once (a spawn) feeds its outcome back before the next.
    fn perform(&mut self, actions: Vec<Action>) {
        let mut queue = std::collections::VecDeque::from(actions);
        while let Some(a) = queue.pop_front() {
            let more = self.perform_one(a);
            queue.extend(more);
        }
    }

    fn perform_one(&mut self, a: Action) -> Vec<Action> {
        let env = self.env.clone();
        let machine = env.machine.clone();
        match a {
            Action::Reply { id, result } => {
                if let Some(reply) = self.replies.remove(&id) {
                    let _ = reply.send(result.map(|ack| NmAck {
                        server: ack.server,
                        state: ack.state,
                        pid: ack.pid,
                        message: ack.message,
                    }));
                }
            }
            Action::Event { kind, server, epoch, message } => {
                env.events.emit(kind, Some(&server), Some(&machine), epoch, message)
            }
            Action::SetState { server, state } => {
                let _ = self.states.send((server, state));
            }
            Action::PersistMasterEpochs { epochs } => {
                let _ = self.epochs.send(epochs);
            }
            Action::KillSession { server, pid, fence } => {
                let n = process::kill_session(pid);
                if fence {
                    self.nm.fence_killed(&server, n);
                }
            }
            Action::Terminate { pid, .. } => {
                process::signal(pid, nix::sys::signal::Signal::SIGTERM);
            }
            Action::Spawn { server, handover_from } => return self.spawn(&server, handover_from),
            Action::Watch { server, incarnation, pid } => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    while process::alive(pid) {
                        tokio::time::sleep(WATCH_EVERY).await;
                    }
                    let description = "ended (adopted; its exit status is what it announced)".to_string();
                    let _ = tx.send(Msg::Exited { server, incarnation, code: None, description }).await;
                });
            }
            Action::ReadLease { server } => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let result =
                        env.store.get(&LeaseName::Server(server.clone())).await.map_err(|e| ferry_store::chain(&e));
                    let _ = tx.send(Msg::LeaseRead { server, result }).await;
                });
            }
            Action::ReadLeases { server, cluster } => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let read = async {
                        let lease = env.store.get(&LeaseName::Server(server.clone())).await?;
                        let master = env.store.get(&LeaseName::Master(cluster)).await?;
                        Ok::<_, ferry_store::StoreError>((lease, master))
                    };
                    let result = read.await.map_err(|e| ferry_store::chain(&e));
                    let _ = tx.send(Msg::LeasesRead { server, result }).await;
                });
            }
            Action::KillOrphan { server } => {
                let (tx, dirs, supervised) = (self.tx.clone(), self.dirs.clone(), self.nm.pid_of(&server));
                tokio::spawn(async move {
                    let pid = plumbing::kill_orphan(&dirs, &server, supervised).await;
                    let _ = tx.send(Msg::OrphanKilled { server, pid }).await;
                });
            }
            Action::Plumb { server, ip } => {
                let (tx, dirs, domain) = (self.tx.clone(), self.dirs.clone(), self.domain.domain.clone());
                tokio::spawn(async move {
                    let result = plumbing::plumb(&dirs, &domain, &machine, &server, ip).await;
                    let _ = tx.send(Msg::Plumbed { server, result }).await;
                });
            }
            Action::Mount { server } => {
                let (tx, dirs, domain) = (self.tx.clone(), self.dirs.clone(), self.domain.domain.clone());
                tokio::spawn(async move {
                    let result = plumbing::mount(&dirs, &domain, &machine, &server).await;
                    let _ = tx.send(Msg::Mounted { server, result }).await;
                });
            }
            Action::Teardown { server, teardown } => {
                let (tx, dirs, domain) = (self.tx.clone(), self.dirs.clone(), self.domain.domain.clone());
                tokio::spawn(async move {
                    let (ip, unmount) = plumbing::teardown(&dirs, &domain, &machine, &server, &teardown).await;
                    let _ = tx.send(Msg::TornDown { server, ip, unmount }).await;
                });
            }
            Action::ReleaseLease { server, incarnation, epoch } => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let result = env
                        .store
                        .release(&LeaseName::Server(server.clone()), &incarnation, epoch)
                        .await
                        .map_err(|e| ferry_store::chain(&e));
                    if let Err(e) = &result {
                        tracing::info!("lease of {server} not released after kill: {e}");
                    }
                    let _ = tx.send(Msg::Released { server, result }).await;
                });
            }
        }
        vec![]
    }

    /// Starts `ferry server NAME` and feeds the outcome back at once.
    fn spawn(&mut self, server: &ServerName, handover_from: Option<Incarnation>) -> Vec<Action> {
        let now = clock::now();
        let incarnation = Incarnation::from_random(rand::random());
        let credentials = match self.env.tls.issuer.issue_server(server.as_str(), &self.env.tls.creds.ca_pem) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(
                    "cannot issue a certificate for {server}: {e}; it will run without one (it cannot act as cluster master)"
                );
                None
            }
        };
        let plan = SpawnPlan {
            ferry_exe: &self.env.ferry_exe,
            machine: &self.env.machine,
            admin_url: self.env.admin_url.clone(),
            channel: self.env.channel.clone(),
            domain: &self.domain,
            credentials,
        };
        let spawned = plumbing::spawn_server(&self.dirs, plan, server, &incarnation, handover_from.as_ref());
        let d = self.domain.domain.clone();
        match spawned {
            Ok((mut child, bootstrap)) => {
                let pid = child.id().map(|p| p as i32).unwrap_or(0);
                let stdin = child.stdin.take();
                let tx = self.tx.clone();
                let (name, inc) = (server.clone(), incarnation.clone());
                tokio::spawn(async move {
                    if let Some(mut stdin) = stdin {
                        let _ = stdin.write_all(&bootstrap).await;
                        drop(stdin);
                    }
                    let status = child.wait().await;
                    let (code, description) = plumbing::describe_exit(&status);
                    let _ = tx.send(Msg::Exited { server: name, incarnation: inc, code, description }).await;
                });
                self.nm.spawned(now, &d, server, incarnation, Ok(pid))
            }
            Err(e) => self.nm.spawned(now, &d, server, incarnation, Err(format!("{e:#}"))),
        }
    }
}
