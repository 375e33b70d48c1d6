//! Spawning and killing processes. A Node Manager starts each `ferry server` as the leader of
//! a new session; the server starts each hosted service in a process group of its own inside
//! that session. Killing "a server and everything it started" is then killing its session,
//! which stays correct even when the server itself is hung or already dead.

use std::io;
use std::path::PathBuf;
use std::process::Stdio;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct SpawnSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Variables removed from the inherited environment (secrets).
    pub env_remove: Vec<String>,
    /// stdout and stderr are appended to this file when set; otherwise inherited.
    pub log_file: Option<PathBuf>,
    /// Keep stdout as a pipe to the parent (the server's local channel to its Node Manager).
    pub stdout_piped: bool,
    /// Give the child a pipe on stdin (for a bootstrap message); otherwise /dev/null.
    pub stdin_piped: bool,
    /// Start the child as the leader of a new session (`setsid`).
    pub new_session: bool,
    /// Start the child in a new process group of its own (ignored with `new_session`).
    pub new_group: bool,
    pub cwd: Option<PathBuf>,
}

/// Starts a process as `spec` says.
pub fn spawn(spec: &SpawnSpec) -> io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args);
    for k in &spec.env_remove {
        cmd.env_remove(k);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    cmd.stdin(if spec.stdin_piped { Stdio::piped() } else { Stdio::null() });
    match &spec.log_file {
        Some(path) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let log = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            let err = log.try_clone()?;
            if spec.stdout_piped {
                cmd.stdout(Stdio::piped());
            } else {
                cmd.stdout(log);
            }
            cmd.stderr(err);
        }
        None => {
            if spec.stdout_piped {
                cmd.stdout(Stdio::piped());
            }
        }
    }
    if spec.new_session {
        // SAFETY: `setsid` is async-signal-safe and touches no memory of the parent; it is
        // the only thing done between fork and exec.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(io::Error::from));
        }
    } else if spec.new_group {
        cmd.process_group(0);
    }
    cmd.kill_on_drop(false);
    cmd.spawn()
}

/// The fields of `/proc/PID/stat` ferry uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
}

/// Reads `/proc/PID/stat`; `None` if the process is gone.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    let session = f.next()?.parse().ok()?;
    Some(ProcStat { state, ppid, pgrp, session })
}

fn all_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Live (not zombie) members of session `sid`.
pub fn session_members(sid: i32) -> Vec<i32> {
    all_pids().into_iter().filter(|&p| proc_stat(p).is_some_and(|s| s.session == sid && s.state != 'Z')).collect()
}

/// SIGKILLs every process of session `sid`: stops them all first so none can fork a
/// replacement between the scan and the kill, then kills, until the session is empty.
/// Returns how many distinct processes were signalled (a process the kernel has not yet
/// finished off is seen again by the next scan; it is counted once).
pub fn kill_session(sid: i32) -> usize {
    let mut signalled = std::collections::BTreeSet::new();
    kill_session_into(sid, &mut signalled);
    signalled.len()
}

fn kill_session_into(sid: i32, signalled: &mut std::collections::BTreeSet<i32>) {
    if sid <= 1 {
        return;
    }
    for _ in 0..10 {
        let members = session_members(sid);
        if members.is_empty() {
            break;
        }
        for &p in &members {
            let _ = kill(Pid::from_raw(p), Signal::SIGSTOP);
        }
        for &p in &members {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        signalled.extend(members);
    }
}

/// Sends `sig` to process group `pgid`; false if there was no such group.
pub fn signal_group(pgid: i32, sig: Signal) -> bool {
    pgid > 1 && killpg(Pid::from_raw(pgid), sig).is_ok()
}

/// Sends `sig` to one process; false if there was no such process.
pub fn signal(pid: i32, sig: Signal) -> bool {
    pid > 1 && kill(Pid::from_raw(pid), sig).is_ok()
}

/// Whether `pid` is a live `ferry server NAME` process leading its own session: what a Node
/// Manager starts, and all it will adopt or kill as an earlier instance of that server.
pub fn is_server_leader(pid: i32, server: &str) -> bool {
    if !alive(pid) || proc_stat(pid).is_none_or(|s| s.session != pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.windows(2).any(|w| w[0] == b"server" && w[1] == server.as_bytes())
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != 'Z')
}

/// Pids whose environment holds `key=value` (how tests and the demo find every process of
/// one simulated machine, whoever its parent is now).
pub fn pids_with_env(key: &str, value: &str) -> Vec<i32> {
    let needle = format!("{key}={value}");
    all_pids()
        .into_iter()
        .filter(|&p| {
            std::fs::read(format!("/proc/{p}/environ"))
                .map(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// Kills every process whose environment holds `key=value` (stop all, then kill all).
pub fn kill_tagged(key: &str, value: &str) -> usize {
    let mut total = 0;
    for _ in 0..10 {
        let pids: Vec<i32> = pids_with_env(key, value).into_iter().filter(|&p| alive(p)).collect();
        if pids.is_empty() {
            break;
        }
        for &p in &pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGSTOP);
        }
        for &p in &pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        total += pids.len();
    }
    total
}

/// [`kill_session`], then waits (up to `patience`) until the kernel has finished them off.
/// Returns how many distinct processes were signalled.
pub async fn kill_session_and_wait(sid: i32, patience: std::time::Duration) -> usize {
    let mut signalled = std::collections::BTreeSet::new();
    kill_session_into(sid, &mut signalled);
    let until = crate::clock::now() + patience;
    while !session_members(sid).is_empty() && crate::clock::now() < until {
        kill_session_into(sid, &mut signalled);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    signalled.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell leading its own session with two children: three processes, counted once
    /// each however many scans it takes the kernel to finish them off.
    #[tokio::test]
    async fn killing_a_session_counts_each_process_once() {
        let spec = SpawnSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "sleep 30 & sleep 30 & wait".into()],
            new_session: true,
            ..Default::default()
        };
        let mut child = spawn(&spec).expect("sh starts");
        let sid = child.id().expect("a pid") as i32;
        let until = crate::clock::now() + 5_000;
        while session_members(sid).len() < 3 {
            assert!(crate::clock::now() < until, "the shell's children never appeared: {:?}", session_members(sid));
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(kill_session_and_wait(sid, std::time::Duration::from_secs(5)).await, 3);
        let _ = child.wait().await;
        assert!(session_members(sid).is_empty());
        assert_eq!(kill_session(sid), 0, "an empty session has nothing to kill");
    }

    #[tokio::test]
    async fn a_server_leader_is_recognised_by_its_command_line_and_session() {
        // `sh -c '...' server ms1`: argv holds "server" "ms1", and the shell leads its session.
        let spec = SpawnSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "sleep 30; true".into(), "server".into(), "ms1".into()],
            new_session: true,
            ..Default::default()
        };
        let mut child = spawn(&spec).expect("sh starts");
        let pid = child.id().expect("a pid") as i32;
        assert!(is_server_leader(pid, "ms1"));
        assert!(!is_server_leader(pid, "ms2"), "another server's name");
        assert!(!is_server_leader(std::process::id() as i32, "ms1"), "not this test");
        kill_session_and_wait(pid, std::time::Duration::from_secs(5)).await;
        let _ = child.wait().await;
        assert!(!is_server_leader(pid, "ms1"), "gone");
    }
}
