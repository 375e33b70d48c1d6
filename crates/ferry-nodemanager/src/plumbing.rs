//! The Node Manager's hands: what the core's actions do to the machine. Floating IPs and
//! mounts (through the hooks or the built-in action, with a record on disk of what is in
//! place), spawning `ferry server` with its bootstrap, killing an earlier instance nobody
//! supervises, and the files the seed's Node Manager keeps per server (`state`, `pid`).
//! Nothing here decides anything: ferry-core's `NodeManager` does.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ferry_api::{Bootstrap, VersionedDomain};
use ferry_core::domain::{Domain, Machine};
use ferry_core::nodeman::{ServerState, Teardown};
use ferry_core::{Incarnation, MachineName, ServerName};
use ferry_host::hooks::{self, IpAction};
use ferry_host::{files, process};

/// How long killing an unsupervised earlier instance may take.
pub(crate) const ORPHAN_KILL_PATIENCE: Duration = Duration::from_secs(1);

/// Where a Node Manager keeps what it knows of each server (`DATA/servers/NAME/`).
#[derive(Debug, Clone)]
pub(crate) struct ServerDirs {
    root: PathBuf,
}

/// What is recorded as in place for a server.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Record {
    Ip,
    Mount,
}

impl Record {
    fn file(self) -> &'static str {
        match self {
            Record::Ip => "plumbed",
            Record::Mount => "mounted",
        }
    }
}

impl ServerDirs {
    pub fn new(data_dir: &Path) -> Self {
        ServerDirs { root: data_dir.join("servers") }
    }

    pub fn dir(&self, server: &ServerName) -> PathBuf {
        self.root.join(server.as_str())
    }

    /// The seed's `server.state` file: the first line is the state.
    pub fn write_state(&self, server: &ServerName, state: ServerState) {
        let _ = files::write_atomic(&self.dir(server).join("state"), format!("{state}\n").as_bytes(), 0o644);
    }

    pub fn recorded(&self, server: &ServerName, what: Record) -> bool {
        self.dir(server).join(what.file()).exists()
    }

    /// Records that the floating IP or the mount is (or is no longer) in place, so a
    /// restarted Node Manager removes what it left behind.
    pub fn record(&self, server: &ServerName, what: Record, on: bool) {
        let path = self.dir(server).join(what.file());
        let r = if on {
            std::fs::create_dir_all(self.dir(server)).and_then(|()| files::write_atomic(&path, b"", 0o644))
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            }
        };
        if let Err(e) = r {
            tracing::warn!("cannot record {} of {server} in {}: {e}", what.file(), path.display());
        }
    }

    /// The pid in `servers/NAME/pid` if it is a live `ferry server NAME` session leader
    /// (supervised or not).
    pub fn recorded_pid(&self, server: &ServerName) -> Option<i32> {
        let text = std::fs::read_to_string(self.dir(server).join("pid")).ok()?;
        let pid: i32 = text.split_whitespace().next()?.parse().ok()?;
        process::is_server_leader(pid, server.as_str()).then_some(pid)
    }
}

/// The machine of this Node Manager in `domain`.
fn machine_of<'a>(domain: &'a Domain, machine: &MachineName) -> Option<&'a Machine> {
    domain.machine(machine)
}

/// `addif`: a line for the log, or why not and whether another host still answers for the
/// address (a refusal worth another try).
pub(crate) async fn plumb(
    dirs: &ServerDirs,
    domain: &Domain,
    machine: &MachineName,
    server: &ServerName,
    ip: Ipv4Addr,
) -> Result<String, (String, bool)> {
    let Some(m) = machine_of(domain, machine) else {
        return Err((format!("machine {machine} is not defined in the domain"), false));
    };
    match hooks::floating_ip(m, IpAction::Add, ip).await {
        Ok(line) => {
            dirs.record(server, Record::Ip, true);
            Ok(line)
        }
        Err(e) => Err((ferry_store::chain(&e), e.is_address_in_use())),
    }
}

/// The mount hook's `mount`.
pub(crate) async fn mount(
    dirs: &ServerDirs,
    domain: &Domain,
    machine: &MachineName,
    server: &ServerName,
) -> Result<String, String> {
    let Some(m) = machine_of(domain, machine) else {
        return Err(format!("machine {machine} is not defined in the domain"));
    };
    match hooks::mount(m, true, server.as_str()).await {
        Ok(line) => {
            dirs.record(server, Record::Mount, true);
            Ok(line.unwrap_or_default())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Undoes what is in place: each part's line for the log or why not (`None`: nothing to do).
pub(crate) async fn teardown(
    dirs: &ServerDirs,
    domain: &Domain,
    machine: &MachineName,
    server: &ServerName,
    t: &Teardown,
) -> (Option<Result<String, String>>, Option<Result<String, String>>) {
    let Some(m) = machine_of(domain, machine) else {
        return (None, None);
    };
    let ip = match t.ip {
        Some(ip) => Some(match hooks::floating_ip(m, IpAction::Remove, ip).await {
            Ok(line) => {
                dirs.record(server, Record::Ip, false);
                Ok(line)
            }
            Err(e) => Err(ferry_store::chain(&e)),
        }),
        None => None,
    };
    let unmount = if t.unmount {
        let r = match hooks::mount(m, false, server.as_str()).await {
            Ok(line) => Ok(line.unwrap_or_default()),
            Err(e) => Err(e.to_string()),
        };
        dirs.record(server, Record::Mount, false);
        Some(r)
    } else {
        None
    };
    (ip, unmount)
}

/// Kills an earlier instance of `server` that this Node Manager does not supervise
/// (`supervised`), if one runs; its pid.
pub(crate) async fn kill_orphan(dirs: &ServerDirs, server: &ServerName, supervised: Option<i32>) -> Option<i32> {
    let pid = dirs.recorded_pid(server).filter(|p| Some(*p) != supervised)?;
    process::kill_session_and_wait(pid, ORPHAN_KILL_PATIENCE).await;
    Some(pid)
}

/// What an earlier Node Manager of this machine left in place for servers that no longer
/// run here: `(server, floating IP, mount)`. A server that still runs is left alone: it says
/// hello and is adopted, or is killed as an orphan before another copy starts.
pub(crate) async fn leftovers(
    dirs: &ServerDirs,
    domain: &Domain,
    machine: &MachineName,
) -> Vec<(ServerName, bool, bool)> {
    let Some(m) = machine_of(domain, machine) else { return vec![] };
    let mut out = Vec::new();
    for cfg in &domain.servers {
        let marked_ip = dirs.recorded(&cfg.name, Record::Ip);
        let marked_mount = dirs.recorded(&cfg.name, Record::Mount);
        // The built-in action can look: an address of this server on the interface with no
        // record (a record lost with the data directory) is left over too.
        let present = match (cfg.floating_ip, &m.hooks.ifconfig) {
            (Some(ip), None) if !m.node_manager.ip().is_loopback() => {
                let iface = m.interface.clone().unwrap_or_else(|| "eth0".into());
                ferry_host::ipaddr::present(&iface, ip).await.unwrap_or(false)
            }
            _ => false,
        };
        if !(marked_ip || marked_mount || present) {
            continue;
        }
        if let Some(pid) = dirs.recorded_pid(&cfg.name) {
            tracing::info!("{} still runs here (pid {pid}); keeping its floating IP and mounts", cfg.name);
            continue;
        }
        out.push((cfg.name.clone(), cfg.floating_ip.is_some() && (marked_ip || present), marked_mount));
    }
    out
}

/// What a server needs to be started: its bootstrap, minus the certificate.
pub(crate) struct SpawnPlan<'a> {
    pub ferry_exe: &'a Path,
    pub machine: &'a MachineName,
    pub admin_url: String,
    pub channel: PathBuf,
    pub domain: &'a VersionedDomain,
    pub credentials: Option<ferry_tls::Credentials>,
}

/// Starts `ferry server NAME` as the leader of a new session, writes its bootstrap to its
/// standard input, and records its pid. The child, for the caller to wait on.
pub(crate) fn spawn_server(
    dirs: &ServerDirs,
    plan: SpawnPlan<'_>,
    server: &ServerName,
    incarnation: &Incarnation,
    handover_from: Option<&Incarnation>,
) -> anyhow::Result<(tokio::process::Child, Vec<u8>)> {
    let dir = dirs.dir(server);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let spec = process::SpawnSpec {
        program: plan.ferry_exe.to_path_buf(),
        args: vec!["server".into(), server.to_string()],
        env: vec![("FERRY_LOG_TARGET".into(), "stderr".into())],
        env_remove: vec!["FERRY_SECRET".into()],
        log_file: Some(dir.join("server.log")),
        stdout_piped: false,
        stdin_piped: true,
        new_session: true,
        new_group: false,
        cwd: Some(dir.clone()),
    };
    let child = process::spawn(&spec).context("spawn failed")?;
    let boot = Bootstrap {
        machine: plan.machine.clone(),
        incarnation: incarnation.clone(),
        handover_from: handover_from.cloned(),
        admin_url: plan.admin_url,
        credentials: plan.credentials,
        cache_dir: dir.display().to_string(),
        domain: Some(plan.domain.clone()),
        channel: Some(plan.channel.display().to_string()),
    };
    let mut line = serde_json::to_vec(&boot)?;
    line.push(b'\n');
    if let Some(pid) = child.id() {
        let _ = files::write_atomic(&dir.join("pid"), format!("{pid} {incarnation}\n").as_bytes(), 0o644);
    }
    Ok((child, line))
}

/// The exit code (if it exited) and a description of how a process ended.
pub(crate) fn describe_exit(status: &std::io::Result<std::process::ExitStatus>) -> (Option<i32>, String) {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => (
            s.code(),
            s.code()
                .map_or_else(|| format!("killed by signal {}", s.signal().unwrap_or(0)), |c| format!("exit code {c}")),
        ),
        Err(e) => (None, format!("wait failed: {e}")),
    }
}
