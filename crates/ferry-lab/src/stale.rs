//! Tearing a lab down, and finding labs whose creator died without tearing them down.
//!
//! A lab is everything whose name starts with its prefix `TAG-PID-N-`: network namespaces
//! (`ip netns list`), cgroups (`<v2>/ferry-lab/`), and a state directory
//! (`$TMPDIR/ferry-lab/PREFIX`, holding an `owner` file and PostgreSQL's data). Teardown is
//! blocking because `Drop` runs it. A lab is stale when the process named by its PID is gone
//! (or the pid was reused: the `owner` file records the process start time). Labs created in
//! another pid namespace are never judged stale from here: their pids mean nothing to us.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cgroup::{blocking_pause, Cgroups};
use crate::cmd::{checked_blocking, COMMAND_TIMEOUT};
use crate::{which, LabError, Result};

/// Where the state directories of all labs live.
pub(crate) fn state_root() -> PathBuf {
    std::env::temp_dir().join("ferry-lab")
}

/// Validates a lab tag (the `TAG` of `TAG-PID-N-`): 1-8 lowercase letters or digits.
pub(crate) fn check_tag(tag: &str) -> Result<()> {
    let ok = !tag.is_empty() && tag.len() <= 8 && tag.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(LabError::Spec(format!("lab prefix {tag:?} must be 1-8 lowercase letters or digits")))
    }
}

/// For a name that starts with `TAG-PID-N-`, the prefix `TAG-PID-N-` and the PID.
pub(crate) fn parse_prefix(name: &str, tag: &str) -> Option<(String, u32)> {
    let rest = name.strip_prefix(tag)?.strip_prefix('-')?;
    let (pid, rest) = rest.split_once('-')?;
    let (n, _) = rest.split_once('-')?;
    let all_digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if !all_digits(pid) || !all_digits(n) {
        return None;
    }
    Some((format!("{tag}-{pid}-{n}-"), pid.parse().ok()?))
}

/// Removes every lab with tag `tag` whose creating process is dead: kills the processes in
/// its namespaces, deletes the namespaces, its cgroups and its state directory. Returns the
/// prefixes removed. [`crate::Lab::up`] calls this for its own tag.
pub fn cleanup_stale(tag: &str) -> Result<Vec<String>> {
    check_tag(tag)?;
    let ip = which("ip").ok_or_else(|| LabError::unavailable("ip (Debian package iproute2) is not installed"))?;
    let mut names: Vec<String> = list_namespaces_blocking(&ip)?;
    if let Some(cg) = Cgroups::existing() {
        names.extend(cg.names());
    }
    names.extend(
        std::fs::read_dir(state_root())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned()),
    );
    let me = std::process::id();
    let stale: BTreeSet<String> = names
        .iter()
        .filter_map(|name| parse_prefix(name, tag))
        .filter(|(prefix, pid)| *pid != me && !owner_alive(prefix, *pid))
        .map(|(prefix, _)| prefix)
        .collect();
    let mut first_error = None;
    for prefix in &stale {
        if let Err(e) = teardown(&ip, prefix) {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(stale.into_iter().collect()),
    }
}

/// Kills, deletes and removes everything of the lab with `prefix`. Goes on after errors and
/// reports the first one.
pub(crate) fn teardown(ip: &Path, prefix: &str) -> Result<()> {
    // Never let a malformed prefix (say, an empty one) match other people's namespaces.
    let valid = prefix.split_once('-').and_then(|(tag, _)| parse_prefix(prefix, tag)).is_some_and(|(p, _)| p == prefix);
    if !valid {
        return Err(LabError::Spec(format!("refusing to tear down {prefix:?}: not a lab prefix TAG-PID-N-")));
    }
    let mut first_error: Option<LabError> = None;
    let mut note = |r: Result<()>| {
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
    };
    let namespaces: Vec<String> = match list_namespaces_blocking(ip) {
        Ok(all) => all.into_iter().filter(|n| n.starts_with(prefix)).collect(),
        Err(e) => {
            note(Err(e));
            Vec::new()
        }
    };
    let cgroups = Cgroups::existing();
    let groups: Vec<String> = cgroups
        .as_ref()
        .map(|cg| cg.names())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    if let Some(cg) = &cgroups {
        for g in &groups {
            // A frozen task cannot exit: thaw, then kill the whole group at once.
            cg.thaw_now(g);
            cg.kill_all(g);
        }
    }
    for ns in &namespaces {
        note(kill_namespace_blocking(ip, ns));
    }
    for ns in &namespaces {
        // Deleting a namespace destroys its veth ends, and with them the peers in the switch.
        note(checked_blocking(std::process::Command::new(ip).args(["netns", "del", ns]), COMMAND_TIMEOUT).map(drop));
    }
    if let Some(cg) = &cgroups {
        for g in &groups {
            note(cg.remove_blocking(g));
        }
    }
    let dir = state_root().join(prefix);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => note(Err(LabError::Io { what: format!("cannot remove {}", dir.display()), source })),
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The names of all network namespaces (`ip netns list`: `NAME` or `NAME (id: N)`).
pub(crate) fn list_namespaces_blocking(ip: &Path) -> Result<Vec<String>> {
    let out = checked_blocking(std::process::Command::new(ip).args(["netns", "list"]), COMMAND_TIMEOUT)?;
    Ok(parse_netns_list(&out))
}

pub(crate) fn parse_netns_list(out: &str) -> Vec<String> {
    out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

pub(crate) fn parse_pids(out: &str) -> Vec<i32> {
    out.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// SIGKILLs every process in `ns` until none is left (up to ~5 s).
fn kill_namespace_blocking(ip: &Path, ns: &str) -> Result<()> {
    for _ in 0..500 {
        let out = checked_blocking(std::process::Command::new(ip).args(["netns", "pids", ns]), COMMAND_TIMEOUT)?;
        let pids = parse_pids(&out);
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        blocking_pause();
    }
    Err(LabError::Stuck(format!("processes in namespace {ns} survived SIGKILL for 5 s")))
}

/// Records who owns the lab in `dir/owner`: `PID STARTTIME PIDNS`.
pub(crate) fn write_owner(dir: &Path) -> Result<()> {
    let pid = std::process::id();
    let text = format!(
        "{pid} {} {}\n",
        start_time(pid).unwrap_or_else(|| "?".into()),
        own_pid_namespace().unwrap_or_else(|| "?".into())
    );
    let file = dir.join("owner");
    std::fs::write(&file, text).map_err(LabError::io(format!("cannot write {}", file.display())))
}

/// Whether the process that made the lab `prefix` (pid `pid`) may still be alive.
fn owner_alive(prefix: &str, pid: u32) -> bool {
    let exists = Path::new(&format!("/proc/{pid}")).exists();
    let Ok(owner) = std::fs::read_to_string(state_root().join(prefix).join("owner")) else {
        return exists;
    };
    let mut fields = owner.split_whitespace().skip(1);
    let (started, pid_ns) = (fields.next(), fields.next());
    if let (Some(theirs), Some(ours)) = (pid_ns, own_pid_namespace()) {
        if theirs != "?" && theirs != ours {
            return true; // another pid namespace: its pids are not ours to judge
        }
    }
    match started {
        Some(s) if s != "?" => exists && start_time(pid).as_deref() == Some(s),
        _ => exists,
    }
}

/// Field 22 of `/proc/PID/stat` (start time in clock ticks since boot).
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces, so count fields after the ')'.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19).map(str::to_string)
}

fn own_pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid").ok().map(|p| p.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_only_when_well_formed() {
        assert_eq!(parse_prefix("fl-123-4-sw", "fl"), Some(("fl-123-4-".into(), 123)));
        assert_eq!(parse_prefix("fl-123-4-", "fl"), Some(("fl-123-4-".into(), 123)));
        assert_eq!(parse_prefix("fl-123-sw", "fl"), None);
        assert_eq!(parse_prefix("fl-x-4-sw", "fl"), None);
        assert_eq!(parse_prefix("flx-123-4-sw", "fl"), None);
        assert_eq!(parse_prefix("other", "fl"), None);
    }

    #[test]
    fn tags_are_short_and_plain() {
        assert!(check_tag("fl").is_ok());
        assert!(check_tag("").is_err());
        assert!(check_tag("a-b").is_err());
        assert!(check_tag("toolongtag").is_err());
    }

    #[test]
    fn teardown_refuses_a_malformed_prefix() {
        let e = teardown(Path::new("/nonexistent/ip"), "").unwrap_err();
        assert!(e.to_string().contains("refusing"), "{e}");
        assert!(teardown(Path::new("/nonexistent/ip"), "fl-").is_err());
    }

    #[test]
    fn netns_list_and_pids_parse() {
        assert_eq!(
            parse_netns_list("fl-1-0-a (id: 3)\nfl-1-0-sw\n"),
            vec!["fl-1-0-a".to_string(), "fl-1-0-sw".to_string()]
        );
        assert_eq!(parse_pids("12\n34\n"), vec![12, 34]);
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(start_time(std::process::id()).is_some());
    }
}
