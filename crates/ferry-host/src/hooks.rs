//! The floating-IP and mount hooks (the `wlsifconfig.sh` equivalents, DESIGN §4). A hook is an
//! executable run with a timeout; its output goes to the Node Manager's log. Without an
//! `ifconfig` hook the built-in action applies: on one host (no interface configured) it
//! is a logged no-op; moving addresses for real between hosts is part 3's built-in action.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use ferry_core::domain::Machine;
use tokio::io::AsyncReadExt;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook {hook} could not be started")]
    Spawn {
        hook: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hook {hook} {args} did not finish within {timeout_ms} ms and was killed")]
    Timeout { hook: String, args: String, timeout_ms: u64 },
    #[error("hook {hook} {args} failed with {status}: {output}")]
    Failed { hook: String, args: String, status: String, code: Option<i32>, output: String },
    /// The built-in floating-IP action failed (address in use, no such interface, ...).
    #[error("built-in {verb} of {ip} on {iface} failed")]
    Builtin {
        verb: &'static str,
        iface: String,
        ip: Ipv4Addr,
        #[source]
        source: crate::ipaddr::IpAddrError,
    },
}

/// The exit status with which an `ifconfig` hook's `addif` says that another host holds
/// the address (as the built-in probe finds it): the server is then not started there, and
/// whoever asked may try again once the old holder has let the address go.
pub const ADDRESS_IN_USE_EXIT: i32 = 3;

impl HookError {
    /// Whether the floating IP could not be added because another host still answers for
    /// it: the built-in probe saw it, or the hook exited with [`ADDRESS_IN_USE_EXIT`]. Such
    /// a refusal may pass by itself (the old holder is removing the address).
    pub fn is_address_in_use(&self) -> bool {
        match self {
            HookError::Builtin { source: crate::ipaddr::IpAddrError::InUse { .. }, .. } => true,
            HookError::Failed { code, .. } => *code == Some(ADDRESS_IN_USE_EXIT),
            _ => false,
        }
    }
}

/// Runs `hook ARGS...` with a timeout; returns its combined output.
pub async fn run_hook(hook: &str, args: &[String], timeout: Duration) -> Result<String, HookError> {
    let mut cmd = tokio::process::Command::new(hook);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.kill_on_drop(true);
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn { hook: hook.into(), source })?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let joined = args.join(" ");
    let work = async {
        let mut out = String::new();
        let mut err = String::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_string(&mut out).await;
        }
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_string(&mut err).await;
        }
        let status = child.wait().await;
        (out + &err, status)
    };
    match tokio::time::timeout(timeout, work).await {
        Err(_) => Err(HookError::Timeout { hook: hook.into(), args: joined, timeout_ms: timeout.as_millis() as u64 }),
        Ok((output, Ok(status))) if status.success() => Ok(output),
        Ok((output, status)) => Err(HookError::Failed {
            hook: hook.into(),
            args: joined,
            code: status.as_ref().ok().and_then(|s| s.code()),
            status: status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            output: output.trim().chars().take(2000).collect(),
        }),
    }
}

/// `addif` or `removeif`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpAction {
    Add,
    Remove,
}

/// Moves a floating IP onto or off `machine`. Returns a line for the log saying what was done.
pub async fn floating_ip(machine: &Machine, action: IpAction, ip: Ipv4Addr) -> Result<String, HookError> {
    let verb = match action {
        IpAction::Add => "addif",
        IpAction::Remove => "removeif",
    };
    let mask = machine.netmask.unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
    if let Some(hook) = &machine.hooks.ifconfig {
        let iface = machine.interface.clone().unwrap_or_else(|| "eth0".into());
        let args = vec![verb.to_string(), iface.clone(), ip.to_string(), mask.to_string()];
        let out = run_hook(hook, &args, machine.hooks.timeout).await?;
        return Ok(format!("{hook} {verb} {iface} {ip} {mask}: ok {}", out.trim()));
    }
    // Machines whose Node Manager listens on loopback share one host (the demo, the
    // process tests): moving an address between them means nothing, and adding it to the
    // host's real interface would be wrong. The built-in action only says what it would do.
    if machine.node_manager.ip().is_loopback() {
        return Ok(format!(
            "floating IP {ip}: built-in {verb} skipped, machine {} shares this host (its Node Manager listens on loopback)",
            machine.name
        ));
    }
    let iface = machine.interface.clone().unwrap_or_else(|| "eth0".into());
    let builtin = |source| HookError::Builtin { verb, iface: iface.clone(), ip, source };
    match action {
        IpAction::Add => {
            let len = crate::ipaddr::prefix_len(mask).unwrap_or(24);
            let how = crate::ipaddr::plumb(&iface, ip, len).await.map_err(builtin)?;
            Ok(format!("floating IP {ip}/{len} on {iface}: {how}"))
        }
        IpAction::Remove => {
            crate::ipaddr::remove(&iface, ip).await.map_err(builtin)?;
            Ok(format!("floating IP {ip} removed from {iface}"))
        }
    }
}

/// `mount` or `unmount` for a server, when the machine has a mount hook.
pub async fn mount(machine: &Machine, mount: bool, server: &str) -> Result<Option<String>, HookError> {
    let Some(hook) = &machine.hooks.mount else {
        return Ok(None);
    };
    let verb = if mount { "mount" } else { "unmount" };
    let out = run_hook(hook, &[verb.to_string(), server.to_string()], machine.hooks.timeout).await?;
    Ok(Some(format!("{hook} {verb} {server}: ok {}", out.trim())))
}
