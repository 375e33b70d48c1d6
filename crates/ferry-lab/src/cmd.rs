//! Running the lab's external commands (`ip`, `nft`, `pg_ctl`, ...) with a time limit, so a
//! wedged command fails a test with its command line instead of hanging it.
//!
//! Two flavours: async (tokio) for everything a test awaits, and blocking for `Drop` and
//! stale cleanup, which cannot await. The blocking one waits on a helper thread and a
//! channel with a timeout, so no polling sleep is needed.

use std::process::{Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{LabError, Result};

/// The time limit of one command (generous: the machine may be shared and busy).
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// `program arg arg ...`, for error messages.
pub(crate) fn describe(cmd: &std::process::Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs `cmd` to completion (stdout and stderr captured) within `timeout`; kills it after.
/// Does not look at the exit status. Stdin is whatever `cmd` was given (inherit if unset).
pub(crate) async fn output(cmd: &mut tokio::process::Command, timeout: Duration) -> Result<Output> {
    let command = describe(cmd.as_std());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| LabError::Spawn { command: command.clone(), source })?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(source)) => Err(LabError::Io { what: format!("waiting for `{command}`"), source }),
        // Dropping the future dropped the child, and `kill_on_drop` killed it.
        Err(_) => Err(LabError::Timeout { command, timeout_ms: millis(timeout) }),
    }
}

/// [`output`], then an error unless the command exited 0; gives its stdout.
pub(crate) async fn checked(cmd: &mut tokio::process::Command, timeout: Duration) -> Result<String> {
    let command = describe(cmd.as_std());
    let out = output(cmd, timeout).await?;
    into_stdout(command, out)
}

/// The blocking twin of [`output`], for `Drop` and stale cleanup.
pub(crate) fn output_blocking(cmd: &mut std::process::Command, timeout: Duration) -> Result<Output> {
    let command = describe(cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().map_err(|source| LabError::Spawn { command: command.clone(), source })?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(result) => result.map_err(|source| LabError::Io { what: format!("waiting for `{command}`"), source }),
        Err(_) => {
            // Not reaped yet (the helper thread still waits), so the pid is still ours.
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = rx.recv_timeout(Duration::from_secs(1));
            Err(LabError::Timeout { command, timeout_ms: millis(timeout) })
        }
    }
}

/// [`output_blocking`], then an error unless the command exited 0; gives its stdout.
pub(crate) fn checked_blocking(cmd: &mut std::process::Command, timeout: Duration) -> Result<String> {
    let command = describe(cmd);
    let out = output_blocking(cmd, timeout)?;
    into_stdout(command, out)
}

fn into_stdout(command: String, out: Output) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command { command, status: out.status.to_string(), stderr: stderr_of(&out) })
    }
}

/// The trimmed stderr (or stdout when stderr is empty) of a command, at most 2000 chars.
pub(crate) fn stderr_of(out: &Output) -> String {
    let text = if out.stderr.is_empty() { &out.stdout } else { &out.stderr };
    String::from_utf8_lossy(text).trim().chars().take(2000).collect()
}
