//! One cgroup v2 group per lab node, so a whole machine can be frozen (`cgroup.freeze`) and
//! killed (`cgroup.kill`) at once, including processes it forks while being frozen.
//!
//! Where cgroup v2 lives depends on the host: `/sys/fs/cgroup` on a unified (v2-only)
//! system, `/sys/fs/cgroup/unified` in systemd's hybrid mode (v1 controllers plus a v2
//! hierarchy without controllers; the Debian 12 test machines run this way). The freezer
//! of v2 is a core file, not a controller, so it works in the hybrid hierarchy too. The
//! mount point is read from `/proc/self/mountinfo`. The lab's groups are
//! `<v2 mount>/ferry-lab/<namespace name>`; when no writable v2 hierarchy exists (a
//! container with a read-only `/sys/fs/cgroup`, a v1-only host), the lab falls back to
//! SIGSTOP/SIGCONT (see `Freezer` in lab.rs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{LabError, Result};

/// The directory under the v2 mount that holds every lab's groups.
pub(crate) const PARENT: &str = "ferry-lab";

/// The parent of the lab's groups, known to be writable and to support `cgroup.freeze`.
#[derive(Debug, Clone)]
pub(crate) struct Cgroups {
    base: PathBuf,
}

impl Cgroups {
    /// Finds the v2 hierarchy and prepares `ferry-lab/` in it, or says why not.
    pub(crate) fn prepare() -> std::result::Result<Cgroups, String> {
        let mount = v2_mount().ok_or_else(|| "no cgroup v2 hierarchy is mounted".to_string())?;
        let base = mount.join(PARENT);
        std::fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
        if !base.join("cgroup.freeze").is_file() {
            return Err(format!("{} has no cgroup.freeze (kernel older than 5.2)", base.display()));
        }
        Ok(Cgroups { base })
    }

    /// Like [`Cgroups::prepare`] but never creates anything (for stale cleanup).
    pub(crate) fn existing() -> Option<Cgroups> {
        let base = v2_mount()?.join(PARENT);
        base.is_dir().then_some(Cgroups { base })
    }

    /// The directory holding every lab's groups.
    pub(crate) fn base(&self) -> &Path {
        &self.base
    }

    /// The group of the node whose namespace is `ns`.
    pub(crate) fn dir(&self, ns: &str) -> PathBuf {
        self.base.join(ns)
    }

    /// The names of existing groups (= namespace names).
    pub(crate) fn names(&self) -> Vec<String> {
        std::fs::read_dir(&self.base)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    pub(crate) fn create(&self, ns: &str) -> Result<()> {
        let dir = self.dir(ns);
        std::fs::create_dir(&dir)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(LabError::io(format!("cannot create cgroup {}", dir.display())))
    }

    /// Whether `pid` is in the group of `ns` (read from `/proc/PID/cgroup`).
    pub(crate) fn contains(&self, ns: &str, pid: i32) -> bool {
        let suffix = format!("/{PARENT}/{ns}");
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|text| text.lines().filter_map(|l| l.strip_prefix("0::")).any(|path| path.ends_with(&suffix)))
            .unwrap_or(false)
    }

    /// Sets `cgroup.freeze` (1 or 0) and waits until `cgroup.events` agrees.
    pub(crate) async fn set_frozen(&self, ns: &str, frozen: bool) -> Result<()> {
        let dir = self.dir(ns);
        write(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
        for _ in 0..2000 {
            if is_frozen(&dir) == Some(frozen) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Err(LabError::Stuck(format!(
            "cgroup {} did not become {} within 2 s",
            dir.display(),
            if frozen { "frozen" } else { "thawed" }
        )))
    }

    /// Thaws the group without waiting (teardown: killed tasks must be able to exit).
    pub(crate) fn thaw_now(&self, ns: &str) {
        let _ = write(&self.dir(ns).join("cgroup.freeze"), "0");
    }

    /// SIGKILLs every process in the group at once (`cgroup.kill`, Linux 5.14+); false when
    /// the kernel lacks it (the caller kills by namespace anyway).
    pub(crate) fn kill_all(&self, ns: &str) -> bool {
        let file = self.dir(ns).join("cgroup.kill");
        file.is_file() && write(&file, "1").is_ok()
    }

    /// Removes the group; retries while the last killed processes are still exiting.
    pub(crate) fn remove_blocking(&self, ns: &str) -> Result<()> {
        let dir = self.dir(ns);
        let mut last = None;
        for _ in 0..200 {
            match std::fs::remove_dir(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => last = Some(e),
            }
            blocking_pause();
        }
        Err(LabError::Io {
            what: format!("cannot remove cgroup {}", dir.display()),
            source: last.unwrap_or_else(|| std::io::Error::other("unknown")),
        })
    }
}

/// Ten milliseconds of blocking wait, for teardown paths that cannot await.
#[allow(clippy::disallowed_methods)] // reason: Drop and stale cleanup cannot await; the wait is bounded by the callers' loops
pub(crate) fn blocking_pause() {
    std::thread::sleep(Duration::from_millis(10));
}

fn write(file: &Path, value: &str) -> Result<()> {
    std::fs::write(file, value).map_err(LabError::io(format!("cannot write {value} to {}", file.display())))
}

/// `frozen` from `cgroup.events`.
fn is_frozen(dir: &Path) -> Option<bool> {
    let events = std::fs::read_to_string(dir.join("cgroup.events")).ok()?;
    events.lines().find_map(|l| l.strip_prefix("frozen ")).map(|v| v.trim() == "1")
}

/// The mount point of the cgroup v2 hierarchy, from `/proc/self/mountinfo`.
fn v2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    v2_mount_in(&info)
}

/// Parses mountinfo lines: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS...] - FSTYPE SRC OPTS`.
fn v2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        let opts = left.split_whitespace().nth(5).unwrap_or("");
        if opts.split(',').any(|o| o == "ro") {
            return None;
        }
        Some(PathBuf::from(mount_point.replace("\\040", " ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755\n\
                      31 30 0:27 / /sys/fs/cgroup/unified rw,relatime shared:5 - cgroup2 cgroup2 rw\n\
                      32 30 0:28 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n";
        assert_eq!(v2_mount_in(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(v2_mount_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let read_only = "30 25 0:26 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(v2_mount_in(read_only), None);
        let v1 = "32 30 0:28 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer\n";
        assert_eq!(v2_mount_in(v1), None);
    }
}
