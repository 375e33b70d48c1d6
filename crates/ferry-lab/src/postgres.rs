//! PostgreSQL inside the lab: one server in the switch namespace on 198.18.1.1:5432, so
//! every machine reaches it over the bridge and a partition can cut a machine off from it.
//!
//! (Machine namespaces cannot reach 127.0.0.1 of the root namespace, so the loopback test
//! server of `ferry_store::testing` is no use here; this module borrows its ideas but stays
//! self-contained.) PostgreSQL refuses to run as root, so every server command runs as the
//! `postgres` OS user (`runuser -u postgres --`). `initdb` costs ~0.6 s, so one initialised
//! cluster is kept as a template in the temporary directory (built once per machine and
//! version, shared by test processes) and copied for each lab (~75 ms). `pg_hba.conf` trusts
//! `198.18.0.0/15`; the superuser and database are both `ferry`.

use std::io::Write as _;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd::{checked, checked_blocking, COMMAND_TIMEOUT};
use crate::lab::ns_command;
use crate::node::SWITCH;
use crate::{which, Lab, LabError, Result, SWITCH_ADDR};

/// The superuser, and owner of [`DATABASE`]; logs in from the lab without a password.
pub const SUPERUSER: &str = "ferry";
/// The database every lab server has.
pub const DATABASE: &str = "ferry";
/// The port on 198.18.1.1 (each lab has its own switch namespace, so it is always free).
pub const PORT: u16 = 5432;
/// Changes whenever the template's contents change, so an old cached one is not used.
const TEMPLATE_FORMAT: u32 = 1;
/// `pg_ctl start -w` waits up to this long (seconds) for the server.
const START_WAIT_S: u64 = 60;

static TEMPLATE: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
static BUILDS: AtomicUsize = AtomicUsize::new(0);

/// The lab's PostgreSQL server. Stopped on drop (and killed with the lab in any case).
#[derive(Debug)]
pub struct PgInLab {
    ip: PathBuf,
    sw_ns: String,
    cgroup_procs: Option<PathBuf>,
    bin: PathBuf,
    runuser: PathBuf,
    /// `data/`, `sock/`, `log`, inside the lab's state directory.
    dir: PathBuf,
    running: bool,
    frozen: bool,
}

impl Lab {
    /// Starts PostgreSQL in the switch namespace on 198.18.1.1:5432 (~0.2 s; the first time
    /// on a machine ~1 s more to build the template). [`LabError::Unavailable`] when the
    /// server binaries, `runuser` or the `postgres` user are missing.
    pub async fn start_postgres(&self) -> Result<PgInLab> {
        let bin = find_binaries()?;
        let runuser = which("runuser")
            .ok_or_else(|| LabError::unavailable("runuser (Debian package util-linux) is not installed"))?;
        let owner = postgres_user()?;
        let template = TEMPLATE.get_or_try_init(|| build_template(&bin, &runuser, owner)).await?.clone();
        let dir = self.state_dir.join("pg");
        make_owned_dir(&dir, owner)?;
        checked(
            tokio::process::Command::new("cp")
                .arg("-a")
                .arg(template.join("data"))
                .arg(dir.join("data"))
                .stdin(Stdio::null()),
            COMMAND_TIMEOUT,
        )
        .await?;
        make_owned_dir(&dir.join("sock"), owner)?;
        let sw = self.node(SWITCH)?;
        let mut pg = PgInLab {
            ip: self.ip.clone(),
            cgroup_procs: self.cgroups.as_ref().map(|cg| cg.dir(&sw.ns).join("cgroup.procs")),
            sw_ns: sw.ns,
            bin,
            runuser,
            dir,
            running: false,
            frozen: false,
        };
        pg.start().await?;
        Ok(pg)
    }
}

impl PgInLab {
    /// `postgres://ferry@198.18.1.1:5432/ferry`
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@{SWITCH_ADDR}:{PORT}/{DATABASE}")
    }

    /// 198.18.1.1:5432
    pub fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(SWITCH_ADDR, PORT)
    }

    /// The directory of the PostgreSQL programs (`psql`, `pg_isready`, ...), to run them in
    /// a machine with [`Lab::exec`].
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The server's log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// Whether the server is running (a frozen server counts as running).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Starts the server (again) inside the switch namespace and its cgroup; returns when it
    /// accepts connections.
    pub async fn start(&mut self) -> Result<()> {
        if self.running {
            return Ok(());
        }
        let options = format!(
            "-c listen_addresses={SWITCH_ADDR} -p {PORT} -k {} -c fsync=on \
             -c shared_buffers=16MB -c max_connections=100",
            self.dir.join("sock").display()
        );
        let mut cmd = ns_command(&self.ip, &self.sw_ns, self.cgroup_procs.as_deref(), &self.runuser);
        cmd.args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.log_file())
            .args(["-w", "-t", &START_WAIT_S.to_string(), "-o", &options, "start"]);
        match checked(&mut cmd, Duration::from_secs(START_WAIT_S + 10)).await {
            Ok(_) => {
                self.running = true;
                Ok(())
            }
            Err(LabError::Command { command, status, stderr }) => {
                let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                Err(LabError::Command {
                    command,
                    status,
                    stderr: format!("{stderr}; server log:\n{}", tail.join("\n")),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`, like a crash; committed data
    /// survives). Connections fail from now on.
    pub async fn stop(&mut self) -> Result<()> {
        self.thaw()?;
        if self.running {
            let mut cmd = tokio::process::Command::new(&self.runuser);
            cmd.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"])
                .stdin(Stdio::null());
            checked(&mut cmd, COMMAND_TIMEOUT).await?;
            self.running = false;
        }
        Ok(())
    }

    /// Suspends every server process (SIGSTOP): connections stay open, nothing answers, like
    /// a hung database host.
    pub fn freeze(&mut self) -> Result<()> {
        if self.running && !self.frozen {
            self.signal_all(Signal::SIGSTOP)?;
            self.frozen = true;
        }
        Ok(())
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&mut self) -> Result<()> {
        if self.frozen {
            self.signal_all(Signal::SIGCONT)?;
            self.frozen = false;
        }
        Ok(())
    }

    fn signal_all(&self, signal: Signal) -> Result<()> {
        let pid_file = self.dir.join("data").join("postmaster.pid");
        let text =
            std::fs::read_to_string(&pid_file).map_err(LabError::io(format!("cannot read {}", pid_file.display())))?;
        let postmaster: i32 = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| LabError::Stuck(format!("{} holds no pid", pid_file.display())))?;
        let mut pids = vec![postmaster];
        pids.extend(children_of(postmaster));
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), signal);
        }
        Ok(())
    }
}

impl Drop for PgInLab {
    fn drop(&mut self) {
        let _ = self.thaw();
        if self.running {
            let mut cmd = std::process::Command::new(&self.runuser);
            cmd.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"]);
            // Fails harmlessly when the lab (and the server with it) is already gone.
            let _ = checked_blocking(&mut cmd, COMMAND_TIMEOUT);
        }
    }
}

/// The child processes of `parent`, from /proc.
fn children_of(parent: i32) -> Vec<i32> {
    let parent = parent.to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// The directory with `initdb`, `pg_ctl` and `postgres` (ferry-store's search).
fn find_binaries() -> Result<PathBuf> {
    ferry_store::testing::postgres_bin_dir().ok_or_else(|| {
        LabError::unavailable(
            "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin and \
             PATH); apt-get install postgresql",
        )
    })
}

/// The uid and gid of the `postgres` OS user, from /etc/passwd.
fn postgres_user() -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(LabError::io("cannot read /etc/passwd"))?;
    passwd
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            if f.next()? != "postgres" {
                return None;
            }
            let uid = f.nth(1)?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            Some((uid, gid))
        })
        .ok_or_else(|| LabError::unavailable("there is no postgres user; apt-get install postgresql"))
}

fn make_owned_dir(dir: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(LabError::io(format!("cannot create {}", dir.display())))?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .map_err(LabError::io(format!("cannot hand {} to the postgres user", dir.display())))
}

/// Builds (once per machine, version and format) an initialised cluster with the `ferry`
/// superuser and database and a `pg_hba.conf` trusting the lab network.
async fn build_template(bin: &Path, runuser: &Path, owner: (u32, u32)) -> Result<PathBuf> {
    let version = checked(
        tokio::process::Command::new(bin.join("pg_ctl")).arg("--version").stdin(Stdio::null()),
        COMMAND_TIMEOUT,
    )
    .await?;
    let version: String = version
        .split_whitespace()
        .nth(2)
        .unwrap_or("unknown")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    let target = std::env::temp_dir().join(format!("ferry-lab-pg-template-{version}-f{TEMPLATE_FORMAT}-u{}", owner.0));
    if target.join("ready").is_file() {
        return Ok(target);
    }
    let build = std::env::temp_dir().join(format!(
        "ferry-lab-pg-build-{}-{}",
        std::process::id(),
        BUILDS.fetch_add(1, Ordering::Relaxed)
    ));
    let result = fill_template(&build, bin, runuser, owner).await;
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&build);
        return Err(e);
    }
    match std::fs::rename(&build, &target) {
        Ok(()) => Ok(target),
        // Another test process built one at the same time: use theirs.
        Err(_) if target.join("ready").is_file() => {
            let _ = std::fs::remove_dir_all(&build);
            Ok(target)
        }
        Err(source) => {
            let _ = std::fs::remove_dir_all(&build);
            Err(LabError::Io { what: format!("cannot move the template cluster to {}", target.display()), source })
        }
    }
}

async fn fill_template(build: &Path, bin: &Path, runuser: &Path, owner: (u32, u32)) -> Result<()> {
    make_owned_dir(build, owner)?;
    let data = build.join("data");
    let as_postgres = |program: &str| {
        let mut cmd = tokio::process::Command::new(runuser);
        cmd.args(["-u", "postgres", "--"]).arg(bin.join(program)).stdin(Stdio::null());
        cmd
    };
    let mut initdb = as_postgres("initdb");
    initdb.arg("-D").arg(&data).args(["-N", "-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C"]);
    checked(&mut initdb, Duration::from_secs(120)).await?;
    let hba = data.join("pg_hba.conf");
    std::fs::write(
        &hba,
        "# ferry lab server: trust the lab network (198.18.0.0/15) and local sockets\n\
         local all all trust\n\
         host all all 198.18.0.0/15 trust\n",
    )
    .map_err(LabError::io(format!("cannot write {}", hba.display())))?;
    std::os::unix::fs::chown(&hba, Some(owner.0), Some(owner.1))
        .map_err(LabError::io(format!("cannot hand {} to postgres", hba.display())))?;
    // Single-user mode reads one statement per line from stdin.
    let script = build.join("create.sql");
    {
        let mut f =
            std::fs::File::create(&script).map_err(LabError::io(format!("cannot write {}", script.display())))?;
        writeln!(f, "CREATE DATABASE {DATABASE} OWNER {SUPERUSER}")
            .map_err(LabError::io(format!("cannot write {}", script.display())))?;
    }
    let stdin = std::fs::File::open(&script).map_err(LabError::io(format!("cannot read {}", script.display())))?;
    let mut single = as_postgres("postgres");
    single.arg("--single").arg("-D").arg(&data).args(["-c", "fsync=off", "postgres"]).stdin(stdin);
    checked(&mut single, Duration::from_secs(120)).await?;
    std::fs::write(build.join("ready"), b"ok\n").map_err(LabError::io("cannot mark the template cluster ready"))
}
